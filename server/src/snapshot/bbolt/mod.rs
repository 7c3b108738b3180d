//! bbolt, the file format of etcd's backend (and so of its snapshots): a writer that builds a
//! file bottom-up in one pass with bounded memory, and a reader that walks one page at a time.
//!
//! The format, as bbolt 1.3 lays it out (all integers little-endian):
//! - the file is a sequence of pages of one size (recorded in the meta pages; 4096 on Linux);
//! - every page starts with a 16-byte header: id (u64), flags (u16: 0x01 branch, 0x02 leaf,
//!   0x04 meta, 0x10 freelist), count (u16), overflow (u32: the page continues over that many
//!   following pages);
//! - pages 0 and 1 are meta pages: magic 0xED0CDAED, version 2, page size, flags, the root
//!   bucket (root page id, sequence), the freelist page id, the high-water page id, the
//!   transaction id, and an FNV-1a 64 checksum of the fields before it. The valid one with the
//!   higher transaction id is current;
//! - a leaf page holds `count` 16-byte elements (flags, pos, key size, value size; `pos` counts
//!   from the element itself) followed by their keys and values; flag 0x01 marks a nested
//!   bucket, whose value is a bucket header (root page id, sequence) and, when the root is 0,
//!   an inline page holding the bucket's only leaf;
//! - a branch page holds `count` 16-byte elements (pos, key size, child page id): each child's
//!   first key;
//! - the freelist page lists free page ids (u64s; a count of 0xFFFF means the first u64 is the
//!   real count).
//!
//! We read bbolt's sources to learn this layout (no bbolt code is copied). A crates.io port
//! exists (`bbolt-rs`), but it publishes no licence, maps the whole file and writes through
//! transactions that keep every dirty node in memory until commit; a snapshot of a large store
//! needs neither, only a sequential writer and a page-at-a-time reader.

mod reader;
mod writer;

pub use reader::{BoltReader, BucketIter, Entry};
pub use writer::BoltWriter;

/// The page size bbolt uses on Linux (the OS page size), and so the one etcd's files have.
pub const DEFAULT_PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;
/// The meta fields covered by the checksum: everything before it.
const META_CHECKSUMMED: usize = 56;
const BUCKET_HEADER: usize = 16;

const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
const LEAF_BUCKET: u32 = 0x01;
/// The freelist's "no freelist stored" page id (bbolt's NoFreelistSync).
const NO_FREELIST: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt file: {0}")]
    NotBolt(String),
    #[error("corrupt bbolt file: {0}")]
    Corrupt(String),
    #[error("bbolt writer misuse: {0}")]
    Order(String),
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The fields of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    flags: u32,
    root: u64,
    root_sequence: u64,
    freelist: u64,
    high_water: u64,
    txid: u64,
}

impl Meta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.high_water.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&out[..META_CHECKSUMMED]);
        out[56..64].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes and validates the meta fields (the bytes after a meta page's header).
    fn decode(b: &[u8]) -> Result<Self, BoltError> {
        if b.len() < META_LEN {
            return Err(BoltError::NotBolt("file too short for a meta page".into()));
        }
        if le_u32(b, 0) != MAGIC {
            return Err(BoltError::NotBolt("no bbolt magic number".into()));
        }
        let version = le_u32(b, 4);
        if version != VERSION {
            return Err(BoltError::NotBolt(format!(
                "bbolt version {version}, expected {VERSION}"
            )));
        }
        let checksum = le_u64(b, 56);
        if checksum != fnv1a64(&b[..META_CHECKSUMMED]) {
            return Err(BoltError::Corrupt("meta page checksum mismatch".into()));
        }
        Ok(Self {
            page_size: le_u32(b, 8),
            flags: le_u32(b, 12),
            root: le_u64(b, 16),
            root_sequence: le_u64(b, 24),
            freelist: le_u64(b, 32),
            high_water: le_u64(b, 40),
            txid: le_u64(b, 48),
        })
    }
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> [u8; PAGE_HEADER] {
    let mut out = [0u8; PAGE_HEADER];
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..10].copy_from_slice(&flags.to_le_bytes());
    out[10..12].copy_from_slice(&count.to_le_bytes());
    out[12..16].copy_from_slice(&overflow.to_le_bytes());
    out
}

#[cfg(test)]
mod tests;
