//! Reads a bbolt file one page at a time (no mmap, nothing held but the pages on the current
//! path from a bucket's root to a leaf), checking every offset against the page it is in: a
//! damaged file is an error, never a panic or a read outside the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use super::{
    le_u16, le_u32, le_u64, BoltError, Meta, BUCKET_HEADER, ELEMENT, FLAG_BRANCH, FLAG_FREELIST,
    FLAG_LEAF, LEAF_BUCKET, META_LEN, NO_FREELIST, PAGE_HEADER,
};

/// Deeper trees than this mean a cycle between pages (bbolt's trees stay a few levels deep).
const MAX_DEPTH: usize = 64;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 1 << 20;
/// Page sizes to look for the second meta page at when the first is damaged.
const CANDIDATE_PAGE_SIZES: [u32; 5] = [4096, 8192, 16384, 32768, 65536];

pub struct BoltReader {
    file: File,
    /// Bytes of the file that belong to the database (a snapshot's trailer excluded).
    len: u64,
    meta: Meta,
}

/// One pair of a bucket; `is_bucket` marks a nested bucket (its value is a bucket header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub is_bucket: bool,
}

impl BoltReader {
    pub fn open(path: &Path) -> Result<Self, BoltError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Self::new(file, len)
    }

    /// Reads the database held in the first `len` bytes of `file`.
    pub fn new(file: File, len: u64) -> Result<Self, BoltError> {
        let first = read_meta_at(&file, len, 0);
        let mut candidates = vec![first];
        if let Ok(meta) = &candidates[0] {
            candidates.push(read_meta_at(&file, len, u64::from(meta.page_size)));
        } else {
            for size in CANDIDATE_PAGE_SIZES {
                candidates.push(read_meta_at(&file, len, u64::from(size)));
            }
        }
        let mut best: Option<Meta> = None;
        let mut first_error = None;
        for candidate in candidates {
            match candidate {
                Ok(meta) if best.is_none_or(|b| meta.txid > b.txid) => best = Some(meta),
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let meta = match (best, first_error) {
            (Some(meta), _) => meta,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(BoltError::NotBolt("no meta page".into())),
        };
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&meta.page_size) {
            return Err(BoltError::Corrupt(format!(
                "page size {} out of range",
                meta.page_size
            )));
        }
        let needed = meta.high_water.saturating_mul(u64::from(meta.page_size));
        if needed > len {
            return Err(BoltError::Corrupt(format!(
                "the file is truncated: {len} bytes, the database needs {needed}"
            )));
        }
        let reader = Self { file, len, meta };
        reader.check_freelist()?;
        Ok(reader)
    }

    /// The freelist page, when stored, must be one (bbolt reads it at open).
    fn check_freelist(&self) -> Result<(), BoltError> {
        if !self.has_freelist() {
            return Ok(());
        }
        let id = self.meta.freelist;
        if id < 2 || id >= self.meta.high_water {
            return Err(BoltError::Corrupt(format!(
                "freelist page {id} outside the database"
            )));
        }
        let mut header = [0u8; PAGE_HEADER];
        self.file
            .read_exact_at(&mut header, id * u64::from(self.meta.page_size))?;
        if le_u16(&header, 8) != FLAG_FREELIST || le_u64(&header, 0) != id {
            return Err(BoltError::Corrupt(format!("page {id} is not the freelist")));
        }
        Ok(())
    }

    pub fn page_size(&self) -> usize {
        self.meta.page_size as usize
    }

    /// The database's size as bbolt reports it (`Tx.Size`): pages up to the high-water mark.
    pub fn size(&self) -> u64 {
        self.meta.high_water * u64::from(self.meta.page_size)
    }

    /// Whether the file stores its freelist (etcd's files may not: NoFreelistSync).
    pub fn has_freelist(&self) -> bool {
        self.meta.freelist != NO_FREELIST
    }

    /// The top-level entries (etcd's buckets), in name order.
    pub fn root(&self) -> Result<BucketIter<'_>, BoltError> {
        BucketIter::at_page(self, self.meta.root)
    }

    /// The pairs of the top-level bucket `name`, or `None` if it does not exist.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketIter<'_>>, BoltError> {
        for entry in self.root()? {
            let entry = entry?;
            if entry.key == name {
                if !entry.is_bucket {
                    return Err(BoltError::Corrupt(format!(
                        "{:?} is not a bucket",
                        String::from_utf8_lossy(name)
                    )));
                }
                return self.nested(&entry.value).map(Some);
            }
        }
        Ok(None)
    }

    /// The pairs of a nested bucket, given the value of its entry.
    pub fn nested(&self, header: &[u8]) -> Result<BucketIter<'_>, BoltError> {
        if header.len() < BUCKET_HEADER {
            return Err(BoltError::Corrupt("bucket header too short".into()));
        }
        let root = le_u64(header, 0);
        if root == 0 {
            // An inline bucket: its only leaf follows the header.
            let node = Node::parse(Rc::new(header[BUCKET_HEADER..].to_vec()))?;
            return Ok(BucketIter::with_node(self, node));
        }
        BucketIter::at_page(self, root)
    }

    fn read_node(&self, id: u64) -> Result<Node, BoltError> {
        if id < 2 || id >= self.meta.high_water {
            return Err(BoltError::Corrupt(format!(
                "page {id} outside the database (high water {})",
                self.meta.high_water
            )));
        }
        let page_size = u64::from(self.meta.page_size);
        let mut header = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut header, id * page_size)?;
        let overflow = u64::from(le_u32(&header, 12));
        if id + overflow >= self.meta.high_water {
            return Err(BoltError::Corrupt(format!(
                "page {id} overflows past the database"
            )));
        }
        let bytes = (1 + overflow) * page_size;
        if id * page_size + bytes > self.len {
            return Err(BoltError::Corrupt(format!(
                "page {id} past the end of the file"
            )));
        }
        let mut page = vec![0u8; bytes as usize];
        self.file.read_exact_at(&mut page, id * page_size)?;
        if le_u64(&page, 0) != id {
            return Err(BoltError::Corrupt(format!(
                "page {id} says it is page {}",
                le_u64(&page, 0)
            )));
        }
        Node::parse(Rc::new(page))
    }
}

fn read_meta_at(file: &File, len: u64, offset: u64) -> Result<Meta, BoltError> {
    let mut buf = [0u8; PAGE_HEADER + META_LEN];
    if offset + buf.len() as u64 > len {
        return Err(BoltError::NotBolt(format!(
            "the file is too short ({len} bytes) for a bbolt database"
        )));
    }
    file.read_exact_at(&mut buf, offset)?;
    Meta::decode(&buf[PAGE_HEADER..])
}

/// A leaf or branch node, its elements checked to lie inside it.
struct Node {
    bytes: Rc<Vec<u8>>,
    leaf: bool,
    count: usize,
}

impl Node {
    fn parse(bytes: Rc<Vec<u8>>) -> Result<Self, BoltError> {
        if bytes.len() < PAGE_HEADER {
            return Err(BoltError::Corrupt("page shorter than its header".into()));
        }
        let flags = le_u16(&bytes, 8);
        let count = usize::from(le_u16(&bytes, 10));
        let leaf = match flags {
            FLAG_LEAF => true,
            FLAG_BRANCH => false,
            other => {
                return Err(BoltError::Corrupt(format!(
                    "page {} has type {other:#x} where a leaf or branch was expected",
                    le_u64(&bytes, 0)
                )))
            }
        };
        if PAGE_HEADER + count * ELEMENT > bytes.len() {
            return Err(BoltError::Corrupt("page elements past its end".into()));
        }
        Ok(Self { bytes, leaf, count })
    }

    /// The bytes `[pos, pos + len)` counted from the element at `at`.
    fn slice(&self, at: usize, pos: u32, len: u32) -> Result<&[u8], BoltError> {
        let start = at
            .checked_add(pos as usize)
            .ok_or_else(|| BoltError::Corrupt("element offset overflows".into()))?;
        let end = start
            .checked_add(len as usize)
            .ok_or_else(|| BoltError::Corrupt("element size overflows".into()))?;
        self.bytes
            .get(start..end)
            .ok_or_else(|| BoltError::Corrupt("element data past its page".into()))
    }

    fn leaf_entry(&self, i: usize) -> Result<Entry, BoltError> {
        let at = PAGE_HEADER + i * ELEMENT;
        let b = &self.bytes;
        let (flags, pos, ksize, vsize) = (
            le_u32(b, at),
            le_u32(b, at + 4),
            le_u32(b, at + 8),
            le_u32(b, at + 12),
        );
        let key = self.slice(at, pos, ksize)?.to_vec();
        let value = self.slice(at, pos.saturating_add(ksize), vsize)?.to_vec();
        Ok(Entry {
            key,
            value,
            is_bucket: flags & LEAF_BUCKET != 0,
        })
    }

    fn child(&self, i: usize) -> u64 {
        le_u64(&self.bytes, PAGE_HEADER + i * ELEMENT + 8)
    }
}

/// Walks a bucket's pairs in key order.
pub struct BucketIter<'a> {
    reader: &'a BoltReader,
    /// The nodes from the root to the current leaf, each with the next element to visit.
    stack: Vec<(Node, usize)>,
    /// Pages read so far: a tree visits each page once, so more reads than the file has pages
    /// means pages shared between branches (a damaged file), not a longer walk.
    reads: u64,
    failed: bool,
}

impl<'a> BucketIter<'a> {
    fn at_page(reader: &'a BoltReader, id: u64) -> Result<Self, BoltError> {
        Ok(Self::with_node(reader, reader.read_node(id)?))
    }

    fn with_node(reader: &'a BoltReader, node: Node) -> Self {
        Self {
            reader,
            stack: vec![(node, 0)],
            reads: 0,
            failed: false,
        }
    }

    fn step(&mut self) -> Result<Option<Entry>, BoltError> {
        loop {
            let Some((node, next)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *next >= node.count {
                self.stack.pop();
                continue;
            }
            let i = *next;
            *next += 1;
            if node.leaf {
                return node.leaf_entry(i).map(Some);
            }
            let child = node.child(i);
            if self.stack.len() >= MAX_DEPTH {
                return Err(BoltError::Corrupt(
                    "pages refer to each other in a cycle".into(),
                ));
            }
            self.reads += 1;
            if self.reads > self.reader.meta.high_water {
                return Err(BoltError::Corrupt(
                    "a page is reached twice in one bucket".into(),
                ));
            }
            let child = self.reader.read_node(child)?;
            self.stack.push((child, 0));
        }
    }
}

impl Iterator for BucketIter<'_> {
    type Item = Result<Entry, BoltError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
