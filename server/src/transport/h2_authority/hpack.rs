//! Just enough HPACK (RFC 7541) to read a client's header blocks and write them again: a
//! decoder that mirrors the client's dynamic table, and an encoder that only writes literals
//! without indexing, so that the table of the decoder it writes for stays empty.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::LazyLock;

/// SETTINGS_HEADER_TABLE_SIZE as the server advertises it (h2's default, which hyper keeps):
/// the largest dynamic table a client may use.
pub const MAX_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("table index {0} out of range")]
    BadIndex(usize),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("dynamic table size update {0} above the allowed {MAX_TABLE_SIZE}")]
    TableSizeTooLarge(usize),
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
}

/// One decoded header field. `never_indexed` keeps the client's "sensitive" marking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub never_indexed: bool,
}

/// The static table (RFC 7541 Appendix A), 1-indexed on the wire.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The bytes a table entry counts for (RFC 7541 section 4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// Decodes the header blocks of one connection, in order, keeping the dynamic table the
/// client's encoder assumes.
pub struct Decoder {
    /// Newest first, as the wire indexes them.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
        }
    }

    /// Decodes one complete header block, calling `field` for every field in order. On an
    /// error the table may be partly updated: the connection's HPACK state is then unknown.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                let (index, used) = decode_integer(&block[pos..], 7)?;
                pos += used;
                let (name, value) = self.lookup(index)?;
                field(Field {
                    name,
                    value,
                    never_indexed: false,
                });
            } else if first & 0xe0 == 0x20 {
                // h2 accepts size updates only before the first field of a block (RFC 7541
                // section 4.2); refusing the same keeps both decoders in step.
                if fields_seen {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let (size, used) = decode_integer(&block[pos..], 5)?;
                pos += used;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSizeTooLarge(size));
                }
                self.max_size = size;
                self.evict();
                continue;
            } else {
                let (indexing, never_indexed, prefix) = if first & 0xc0 == 0x40 {
                    (true, false, 6)
                } else {
                    (false, first & 0xf0 == 0x10, 4)
                };
                let (index, used) = decode_integer(&block[pos..], prefix)?;
                pos += used;
                let name = if index == 0 {
                    let (name, used) = decode_string(&block[pos..])?;
                    pos += used;
                    name
                } else {
                    Cow::Borrowed(self.lookup(index)?.0)
                };
                let (value, used) = decode_string(&block[pos..])?;
                pos += used;
                field(Field {
                    name: &name,
                    value: &value,
                    never_indexed,
                });
                if indexing {
                    let entry = (name.into_owned(), value.into_owned());
                    self.insert(entry.0, entry.1);
                }
            }
            fields_seen = true;
        }
        Ok(())
    }

    fn lookup(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => Ok(STATIC_TABLE[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // RFC 7541 section 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.size += size;
        self.table.push_front((name, value));
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// Entries in the dynamic table.
    #[cfg(test)]
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
}

/// An integer with an N-bit prefix (RFC 7541 section 5.1); returns it and the bytes used.
/// Values are capped well above anything a header block of bounded size can need.
fn decode_integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u16 << prefix) as usize - 1;
    let first = *buf.first().ok_or(HpackError::Truncated)?;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok((value, 1));
    }
    let mut shift = 0u32;
    for (i, &byte) in buf.iter().enumerate().skip(1) {
        // Four continuation bytes carry 28 bits: more than any length or index we accept.
        if i > 4 {
            return Err(HpackError::IntegerOverflow);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::Truncated)
}

/// A string literal (RFC 7541 section 5.2); returns it and the bytes used.
fn decode_string(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, used) = decode_integer(buf, 7)?;
    let end = used.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(used..end).ok_or(HpackError::Truncated)?;
    let s = if huffman {
        Cow::Owned(huffman_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    Ok((s, end))
}

/// Appends an integer with an N-bit prefix; `flags` fills the bits above the prefix.
fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A dynamic table size update to `size`, which must start a header block.
pub fn encode_table_size_update(out: &mut Vec<u8>, size: usize) {
    encode_integer(out, 0x20, 5, size);
}

/// Appends a field as a literal that the decoder must not add to its table (never-indexed
/// when the client marked it so), naming it by static index when the static table has it.
pub fn encode_literal(out: &mut Vec<u8>, field: Field<'_>) {
    let flags = if field.never_indexed { 0x10 } else { 0x00 };
    match STATIC_TABLE.iter().position(|(n, _)| *n == field.name) {
        Some(i) => encode_integer(out, flags, 4, i + 1),
        None => {
            out.push(flags);
            encode_string(out, field.name);
        }
    }
    encode_string(out, field.value);
}

/// Bit lengths of the canonical Huffman code of RFC 7541 Appendix B, by symbol (256 = EOS).
/// The code is canonical, so the lengths define it (checked against the RFC's examples).
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
/// Marks a trie slot that is a leaf: the low bits are the symbol.
const LEAF: u16 = 0x8000;

/// The Huffman code as a binary trie: node `n` has children `trie[n][0]` and `trie[n][1]`,
/// each another node index or `LEAF | symbol`. Walking it bit by bit decodes a string.
struct HuffmanTrie {
    nodes: Vec<[u16; 2]>,
}

/// Canonical codes from the lengths: (code, length) by symbol.
fn huffman_codes() -> Vec<(u32, u8)> {
    let mut order: Vec<usize> = (0..HUFFMAN_LENGTHS.len()).collect();
    order.sort_by_key(|&s| (HUFFMAN_LENGTHS[s], s));
    let mut codes = vec![(0u32, 0u8); HUFFMAN_LENGTHS.len()];
    let mut code = 0u32;
    let mut prev_len = HUFFMAN_LENGTHS[order[0]];
    for (i, &symbol) in order.iter().enumerate() {
        let len = HUFFMAN_LENGTHS[symbol];
        if i > 0 {
            code = (code + 1) << (len - prev_len);
        }
        prev_len = len;
        codes[symbol] = (code, len);
    }
    codes
}

static HUFFMAN: LazyLock<HuffmanTrie> = LazyLock::new(|| {
    let mut nodes: Vec<[u16; 2]> = vec![[0, 0]];
    for (symbol, (code, len)) in huffman_codes().into_iter().enumerate() {
        let mut node = 0usize;
        for bit_index in (0..len).rev() {
            let bit = ((code >> bit_index) & 1) as usize;
            if bit_index == 0 {
                nodes[node][bit] = LEAF | symbol as u16;
            } else {
                if nodes[node][bit] == 0 {
                    nodes.push([0, 0]);
                    nodes[node][bit] = (nodes.len() - 1) as u16;
                }
                node = usize::from(nodes[node][bit]);
            }
        }
    }
    HuffmanTrie { nodes }
});

/// Decodes a Huffman-coded string, refusing EOS inside it and padding that is longer than
/// 7 bits or not all ones (RFC 7541 section 5.2).
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let trie = &HUFFMAN.nodes;
    let mut out = Vec::with_capacity(raw.len() * 8 / 5 + 1);
    let mut node = 0usize;
    // Bits read since the last symbol, and whether all of them were ones (valid padding).
    let mut pending_bits = 0u32;
    let mut pending_all_ones = true;
    for &byte in raw {
        for shift in (0..8).rev() {
            let bit = usize::from((byte >> shift) & 1);
            let next = trie[node][bit];
            pending_bits += 1;
            pending_all_ones &= bit == 1;
            if next & LEAF != 0 {
                if next & !LEAF == EOS {
                    return Err(HpackError::Huffman);
                }
                out.push((next & !LEAF) as u8);
                node = 0;
                pending_bits = 0;
                pending_all_ones = true;
            } else if next == 0 {
                return Err(HpackError::Huffman);
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending_bits > 7 || !pending_all_ones {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

/// Huffman-encodes `s` (tests only: keelson never needs to compress).
#[cfg(test)]
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let codes = huffman_codes();
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in s {
        let (code, len) = codes[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}
