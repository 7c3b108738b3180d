//! Writes a bbolt file bottom-up in one pass: the caller gives buckets in name order and the
//! pairs of each bucket in key order; leaf pages are written as they fill, and each level of
//! branch pages keeps at most one page of entries in memory. So memory is a few pages per tree
//! level whatever the size of the data.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::{
    page_header, BoltError, Meta, BUCKET_HEADER, DEFAULT_PAGE_SIZE, ELEMENT, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, FLAG_META, LEAF_BUCKET, PAGE_HEADER,
};

/// Pages 0 and 1 are the meta pages, written last.
const FIRST_DATA_PAGE: u64 = 2;

/// One level of a tree under construction: the entries of the page being filled.
#[derive(Default)]
struct Level {
    /// (key, value) on the leaf level; (first key, child page id as 8 LE bytes) above.
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes the page would take with `entries` (header included).
    size: usize,
    /// Whether a page of this level has already been written (then it is not the root).
    flushed: bool,
}

/// The tree of the bucket being written.
struct Tree {
    name: Vec<u8>,
    levels: Vec<Level>,
    last_key: Option<Vec<u8>>,
}

pub struct BoltWriter {
    out: BufWriter<File>,
    page_size: usize,
    next_page: u64,
    /// (bucket name, root page id) of every finished bucket, in name order.
    buckets: Vec<(Vec<u8>, u64)>,
    current: Option<Tree>,
    /// Flags of the leaf elements being written: 0 for data, `LEAF_BUCKET` in the root bucket.
    leaf_flags: u32,
}

impl BoltWriter {
    /// Creates (truncating) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, BoltError> {
        Self::with_page_size(path, DEFAULT_PAGE_SIZE)
    }

    pub fn with_page_size(path: &Path, page_size: usize) -> Result<Self, BoltError> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        // Room for the meta pages, filled in by `finish`.
        out.write_all(&vec![0u8; page_size * FIRST_DATA_PAGE as usize])?;
        Ok(Self {
            out,
            page_size,
            next_page: FIRST_DATA_PAGE,
            buckets: Vec::new(),
            current: None,
            leaf_flags: 0,
        })
    }

    /// Starts a top-level bucket; names must come in ascending byte order.
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), BoltError> {
        self.end_bucket()?;
        if let Some((last, _)) = self.buckets.last() {
            if name <= last.as_slice() {
                return Err(BoltError::Order(format!(
                    "bucket {:?} after {:?}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.current = Some(Tree {
            name: name.to_vec(),
            levels: vec![Level::default()],
            last_key: None,
        });
        Ok(())
    }

    /// Adds a pair to the current bucket; keys must come in strictly ascending order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoltError> {
        let tree = self
            .current
            .as_ref()
            .ok_or_else(|| BoltError::Order("put outside a bucket".into()))?;
        if key.is_empty() || tree.last_key.as_deref().is_some_and(|last| key <= last) {
            return Err(BoltError::Order(format!(
                "key {:?} not after the previous one",
                String::from_utf8_lossy(key)
            )));
        }
        let Some(mut tree) = self.current.take() else {
            return Err(BoltError::Order("put outside a bucket".into()));
        };
        tree.last_key = Some(key.to_vec());
        let result = self.add(&mut tree, 0, key.to_vec(), value.to_vec());
        self.current = Some(tree);
        result
    }

    /// Adds an entry to `level`, writing the level's page first when the entry would not fit.
    fn add(
        &mut self,
        tree: &mut Tree,
        level: usize,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), BoltError> {
        if tree.levels.len() == level {
            tree.levels.push(Level::default());
        }
        let grown = ELEMENT + key.len() + value.len();
        let lvl = &tree.levels[level];
        let full = !lvl.entries.is_empty()
            && (PAGE_HEADER + lvl.size + grown > self.page_size
                || lvl.entries.len() == usize::from(u16::MAX));
        if full {
            self.flush_level(tree, level)?;
        }
        let lvl = &mut tree.levels[level];
        lvl.size += grown;
        lvl.entries.push((key, value));
        Ok(())
    }

    /// Writes the page of `level` and hands its first key and id to the level above.
    fn flush_level(&mut self, tree: &mut Tree, level: usize) -> Result<(), BoltError> {
        let entries = std::mem::take(&mut tree.levels[level].entries);
        tree.levels[level].size = 0;
        tree.levels[level].flushed = true;
        let first = entries
            .first()
            .map(|(k, _)| k.clone())
            .ok_or_else(|| BoltError::Order("flush of an empty page".into()))?;
        let id = self.write_node(level == 0, &entries)?;
        self.add(tree, level + 1, first, id.to_le_bytes().to_vec())
    }

    /// Finishes the current bucket's tree: every level's last page, up to a single root.
    pub fn end_bucket(&mut self) -> Result<(), BoltError> {
        let Some(mut tree) = self.current.take() else {
            return Ok(());
        };
        let mut level = 0;
        let root = loop {
            let lvl = &tree.levels[level];
            let is_top = level + 1 == tree.levels.len();
            if is_top && !lvl.flushed {
                // Everything of this level fits in one page: the root (maybe an empty leaf).
                let entries = std::mem::take(&mut tree.levels[level].entries);
                break self.write_node(level == 0, &entries)?;
            }
            if !lvl.entries.is_empty() {
                self.flush_level(&mut tree, level)?;
            }
            level += 1;
        };
        self.buckets.push((tree.name, root));
        Ok(())
    }

    /// Writes one leaf or branch node at the next page id (with overflow pages if needed).
    fn write_node(&mut self, leaf: bool, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, BoltError> {
        let id = self.next_page;
        let data_len: usize = entries
            .iter()
            .map(|(k, v)| k.len() + if leaf { v.len() } else { 0 })
            .sum();
        let len = PAGE_HEADER + ELEMENT * entries.len() + data_len;
        let pages = len.div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1)
            .map_err(|_| BoltError::Order("an entry too large for bbolt".into()))?;
        let count = u16::try_from(entries.len())
            .map_err(|_| BoltError::Order("too many entries in one page".into()))?;
        let mut page = Vec::with_capacity(pages * self.page_size);
        let flags = if leaf { FLAG_LEAF } else { FLAG_BRANCH };
        page.extend_from_slice(&page_header(id, flags, count, overflow));
        let mut data_at = PAGE_HEADER + ELEMENT * entries.len();
        for (i, (key, value)) in entries.iter().enumerate() {
            let element_at = PAGE_HEADER + ELEMENT * i;
            let pos = u32::try_from(data_at - element_at)
                .map_err(|_| BoltError::Order("page too large".into()))?;
            let ksize =
                u32::try_from(key.len()).map_err(|_| BoltError::Order("key too large".into()))?;
            if leaf {
                let vsize = u32::try_from(value.len())
                    .map_err(|_| BoltError::Order("value too large".into()))?;
                page.extend_from_slice(&self.leaf_flags.to_le_bytes());
                page.extend_from_slice(&pos.to_le_bytes());
                page.extend_from_slice(&ksize.to_le_bytes());
                page.extend_from_slice(&vsize.to_le_bytes());
                data_at += key.len() + value.len();
            } else {
                page.extend_from_slice(&pos.to_le_bytes());
                page.extend_from_slice(&ksize.to_le_bytes());
                page.extend_from_slice(value);
                data_at += key.len();
            }
        }
        for (key, value) in entries {
            page.extend_from_slice(key);
            if leaf {
                page.extend_from_slice(value);
            }
        }
        page.resize(pages * self.page_size, 0);
        self.out.write_all(&page)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket, an empty freelist and the meta pages, then fsyncs the file.
    /// Returns the file, positioned at its end.
    pub fn finish(mut self) -> Result<File, BoltError> {
        self.end_bucket()?;
        let buckets = std::mem::take(&mut self.buckets);
        let root = self.write_root(&buckets)?;
        let freelist = self.next_page;
        let mut page = page_header(freelist, FLAG_FREELIST, 0, 0).to_vec();
        page.resize(self.page_size, 0);
        self.out.write_all(&page)?;
        self.next_page += 1;
        let page_size = u32::try_from(self.page_size)
            .map_err(|_| BoltError::Order("page size too large".into()))?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        for txid in 0..2u64 {
            let meta = Meta {
                page_size,
                flags: 0,
                root,
                root_sequence: 0,
                freelist,
                high_water: self.next_page,
                txid,
            };
            let mut page = page_header(txid, FLAG_META, 0, 0).to_vec();
            page.extend_from_slice(&meta.encode());
            file.seek(SeekFrom::Start(txid * self.page_size as u64))?;
            file.write_all(&page)?;
        }
        file.seek(SeekFrom::End(0))?;
        file.sync_all()?;
        Ok(file)
    }

    /// The root bucket: one leaf entry per bucket, each a bucket header naming its root page.
    fn write_root(&mut self, buckets: &[(Vec<u8>, u64)]) -> Result<u64, BoltError> {
        let mut tree = Tree {
            name: Vec::new(),
            levels: vec![Level::default()],
            last_key: None,
        };
        // `finish` is the last step: nothing is written with data flags after the root.
        self.leaf_flags = LEAF_BUCKET;
        for (name, root) in buckets {
            let mut header = Vec::with_capacity(BUCKET_HEADER);
            header.extend_from_slice(&root.to_le_bytes());
            header.extend_from_slice(&0u64.to_le_bytes());
            self.add(&mut tree, 0, name.clone(), header)?;
        }
        self.current = Some(tree);
        let before = self.buckets.len();
        self.end_bucket()?;
        let (_, root) = self
            .buckets
            .pop()
            .ok_or_else(|| BoltError::Order("root bucket not written".into()))?;
        debug_assert_eq!(self.buckets.len(), before);
        Ok(root)
    }

    /// Pages written so far (for progress and size estimates).
    pub fn pages(&self) -> u64 {
        self.next_page
    }
}
