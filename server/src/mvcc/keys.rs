//! On-disk encoding of MVCC versions (documented in docs/storage.md).
//!
//! A version key is `escape(user_key) ++ [0x00, 0x01] ++ !main ++ !sub` (big-endian u64s,
//! bitwise inverted). The escape (`0x00` -> `0x00 0xFF`) keeps the byte order of user keys,
//! so versions of one key sit together, keys ascend as etcd returns them, and inside one key
//! the newest version comes first: "the version visible at revision R" is a single seek.

use bytes::Bytes;

/// A revision: `main` counts committed changes, `sub` numbers the changes inside one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Key of this revision in the revision index (ascending order).
    pub fn index_key(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    pub fn from_index_key(key: &[u8]) -> Option<Self> {
        let main = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let sub = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
        Some(Self::new(main as i64, sub as i64))
    }

    fn inverted(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(!(self.main as u64)).to_be_bytes());
        out[8..].copy_from_slice(&(!(self.sub as u64)).to_be_bytes());
        out
    }

    fn from_inverted(bytes: &[u8]) -> Self {
        let main = !u64::from_be_bytes(bytes[..8].try_into().unwrap_or([0xFF; 8]));
        let sub = !u64::from_be_bytes(bytes[8..16].try_into().unwrap_or([0xFF; 8]));
        Self::new(main as i64, sub as i64)
    }
}

const REVISION_LEN: usize = 16;
const TERMINATOR: [u8; 2] = [0x00, 0x01];
const AFTER_TERMINATOR: [u8; 2] = [0x00, 0x02];

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

fn escaped(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + REVISION_LEN);
    escape_into(&mut out, key);
    out
}

/// The key of one version of `user_key`.
pub fn version_key(user_key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = escaped(user_key);
    out.extend_from_slice(&TERMINATOR);
    out.extend_from_slice(&rev.inverted());
    out
}

/// Seek target for the newest version of `user_key` at or below revision `at_main`.
pub fn visible_at(user_key: &[u8], at_main: i64) -> Vec<u8> {
    version_key(user_key, Revision::new(at_main, i64::MAX))
}

/// Like `visible_at`, for a user key given as its encoded part (see `user_key_part`).
pub fn seek_visible(part: &[u8], at_main: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len() + REVISION_LEN);
    out.extend_from_slice(part);
    out.extend_from_slice(&Revision::new(at_main, i64::MAX).inverted());
    out
}

/// First possible version key of `user_key` (its newest version sorts here or after).
pub fn versions_start(user_key: &[u8]) -> Vec<u8> {
    let mut out = escaped(user_key);
    out.extend_from_slice(&TERMINATOR);
    out
}

/// Lower bound of every version key whose user key is >= `user_key`.
pub fn lower_bound(user_key: &[u8]) -> Vec<u8> {
    escaped(user_key)
}

/// Exclusive upper bound of every version key whose user key is < `end`.
pub fn upper_bound(end: &[u8]) -> Vec<u8> {
    escaped(end)
}

/// The part of a version key that identifies its user key (escaped key plus terminator).
pub fn user_key_part(version_key: &[u8]) -> &[u8] {
    &version_key[..version_key.len().saturating_sub(REVISION_LEN)]
}

/// Seek target just past every version of the user key whose part is `part`.
pub fn after_versions_of(part: &[u8]) -> Vec<u8> {
    let mut out = part[..part.len().saturating_sub(2)].to_vec();
    out.extend_from_slice(&AFTER_TERMINATOR);
    out
}

/// Splits a version key into its user key and revision; `None` if it is not one.
pub fn decode_version_key(key: &[u8]) -> Option<(Bytes, Revision)> {
    if key.len() < REVISION_LEN + TERMINATOR.len() {
        return None;
    }
    let (part, rev) = key.split_at(key.len() - REVISION_LEN);
    let escaped_key = part.strip_suffix(&TERMINATOR)?;
    Some((unescape(escaped_key)?, Revision::from_inverted(rev)))
}

/// Revision of a version key (the key must come from the kv column family).
pub fn revision_of(key: &[u8]) -> Revision {
    Revision::from_inverted(&key[key.len().saturating_sub(REVISION_LEN)..])
}

fn unescape(escaped: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        let b = escaped[i];
        out.push(b);
        if b == 0 {
            if escaped.get(i + 1) != Some(&0xFF) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newer_versions_sort_first() {
        let old = version_key(b"k", Revision::new(3, 0));
        let new = version_key(b"k", Revision::new(7, 1));
        assert!(new < old);
        assert!(visible_at(b"k", 7) <= new);
        assert!(visible_at(b"k", 6) > new && visible_at(b"k", 6) <= old);
    }

    #[test]
    fn round_trip_with_zero_bytes() {
        let key = b"a\x00b\x00\x00";
        let rev = Revision::new(42, 3);
        let (decoded, r) = decode_version_key(&version_key(key, rev)).expect("decodes");
        assert_eq!(&decoded[..], key);
        assert_eq!(r, rev);
        assert_eq!(revision_of(&version_key(key, rev)), rev);
    }

    proptest! {
        /// The storage's bloom-filter prefix must be exactly the part shared by one key's
        /// versions and by no other key's, or point reads would miss versions.
        #[test]
        fn storage_prefix_is_the_versions_of_one_key(
            a in proptest::collection::vec(any::<u8>(), 0..6),
            b in proptest::collection::vec(any::<u8>(), 0..6),
            ra in 1i64..1000, rb in 1i64..1000,
        ) {
            let ka = version_key(&a, Revision::new(ra, 0));
            let kb = version_key(&b, Revision::new(rb, 1));
            let start_a = versions_start(&a);
            let seek_a = visible_at(&a, rb);
            let prefix = crate::storage::kv_version_prefix;
            prop_assert_eq!(prefix(&ka), start_a.as_slice());
            prop_assert_eq!(prefix(&ka) == prefix(&kb), a == b);
            prop_assert_eq!(prefix(&seek_a), start_a.as_slice());
        }

        #[test]
        fn encoding_preserves_user_key_order(
            a in proptest::collection::vec(any::<u8>(), 0..6),
            b in proptest::collection::vec(any::<u8>(), 0..6),
            ra in 1i64..1000, rb in 1i64..1000,
        ) {
            let ka = version_key(&a, Revision::new(ra, 0));
            let kb = version_key(&b, Revision::new(rb, 0));
            if a < b { prop_assert!(ka < kb); }
            if a > b { prop_assert!(ka > kb); }
            // Range bounds: a version of `a` is inside [lower_bound(x), upper_bound(y)) iff x <= a < y.
            prop_assert_eq!(ka >= lower_bound(&b), a >= b);
            prop_assert_eq!(ka < upper_bound(&b), a < b);
            prop_assert!(ka < after_versions_of(user_key_part(&ka)));
            if a < b { prop_assert!(after_versions_of(user_key_part(&ka)) <= kb); }
        }
    }
}
