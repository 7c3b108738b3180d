//! Key-range permissions as etcd checks them (its `adt` interval tree over "affine" byte keys).
//!
//! etcd compares key bounds with one twist: an empty bound sorts after every key, so an empty
//! range end means "to the end of the key space". A permission with range end `"\0"` is such an
//! open range; one without a range end covers its key alone (`[key, key + "\0")`). A read or a
//! write of a key needs one permission that contains the key; of a range, permissions whose
//! union covers the range without a gap. The algorithms below are etcd's, written over sorted
//! vectors: a user holds a handful of permissions, and a scan is faster than a tree for that.

use std::cmp::Ordering;

use crate::proto::authpb::permission::Type as PermissionType;
use crate::proto::authpb::Permission;

/// Compares key bounds as etcd's `BytesAffineComparable`: empty is past every key.
fn cmp_bound(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn point(key: &[u8]) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// The keys a stored permission covers.
    fn of_permission(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => Self::point(key),
            [0] => Interval {
                begin: key.to_vec(),
                end: Vec::new(),
            },
            end => Interval {
                begin: key.to_vec(),
                end: end.to_vec(),
            },
        }
    }

    /// Whether the key lies in the interval (etcd's `Intersects` with a point).
    fn contains_key(&self, key: &[u8]) -> bool {
        cmp_bound(&self.begin, key) != Ordering::Greater
            && cmp_bound(key, &self.end) == Ordering::Less
    }
}

/// etcd's `Interval.Compare(other) == 0` with `[begin, end)` on the left: they share a key.
fn overlaps(begin: &[u8], end: &[u8], other: &Interval) -> bool {
    let left_of = cmp_bound(begin, &other.begin) == Ordering::Less
        && cmp_bound(end, &other.begin) != Ordering::Greater;
    let right_of = cmp_bound(begin, &other.end) != Ordering::Less;
    !left_of && !right_of
}

/// Whether a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The merged permissions of one user's roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl UserPermissions {
    /// Merges the permissions of `roles` (etcd's `getMergedPerms`); unknown permission types
    /// grant nothing, as in etcd.
    pub fn merge<'a>(permissions: impl IntoIterator<Item = &'a Permission>) -> Self {
        let mut merged = UserPermissions::default();
        for perm in permissions {
            let interval = Interval::of_permission(&perm.key, &perm.range_end);
            match PermissionType::try_from(perm.perm_type) {
                Ok(PermissionType::Read) => merged.read.push(interval),
                Ok(PermissionType::Write) => merged.write.push(interval),
                Ok(PermissionType::Readwrite) => {
                    merged.read.push(interval.clone());
                    merged.write.push(interval);
                }
                Err(_) => {}
            }
        }
        // etcd's tree visits intervals in the order of their beginnings.
        merged.read.sort_by(|a, b| cmp_bound(&a.begin, &b.begin));
        merged.write.sort_by(|a, b| cmp_bound(&a.begin, &b.begin));
        merged
    }

    /// Whether this user may `access` the key (empty `range_end`) or the range.
    pub fn allows(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let intervals = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            return intervals.iter().any(|i| i.contains_key(key));
        }
        // "\0" asks for everything from the key on.
        let end: &[u8] = if range_end == [0] { b"" } else { range_end };
        covers(intervals, key, end)
    }
}

/// etcd's `IntervalTree.Contains`: the intervals overlapping `[begin, end)`, in order, leave no
/// gap and reach from its beginning to its end.
fn covers(intervals: &[Interval], begin: &[u8], end: &[u8]) -> bool {
    let mut span: Option<(&[u8], &[u8])> = None;
    for interval in intervals.iter().filter(|i| overlaps(begin, end, i)) {
        span = match span {
            None => Some((&interval.begin, &interval.end)),
            Some((begin, end)) => {
                if cmp_bound(end, &interval.begin) == Ordering::Less {
                    return false;
                }
                let end = if cmp_bound(&interval.end, end) == Ordering::Greater {
                    &interval.end[..]
                } else {
                    end
                };
                Some((begin, end))
            }
        };
    }
    span.is_some_and(|(min_begin, max_end)| {
        cmp_bound(max_end, end) != Ordering::Less
            && cmp_bound(min_begin, begin) != Ordering::Greater
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn perm(kind: PermissionType, key: &str, range_end: &str) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
        }
    }

    fn merged(perms: &[Permission]) -> UserPermissions {
        UserPermissions::merge(perms)
    }

    #[test]
    fn a_key_permission_covers_that_key_only() {
        let p = merged(&[perm(PermissionType::Readwrite, "foo", "")]);
        assert!(p.allows(b"foo", b"", Access::Read));
        assert!(p.allows(b"foo", b"", Access::Write));
        assert!(!p.allows(b"foo1", b"", Access::Read));
        assert!(!p.allows(b"fo", b"", Access::Read));
        // A range of exactly that key is covered; anything wider is not.
        assert!(p.allows(b"foo", b"foo\0", Access::Read));
        assert!(!p.allows(b"foo", b"fop", Access::Read));
    }

    #[test]
    fn ranges_prefixes_and_open_ranges() {
        let p = merged(&[
            perm(PermissionType::Read, "a", "c"),
            perm(PermissionType::Write, "p/", "p0"),
            perm(PermissionType::Read, "z", "\0"),
        ]);
        assert!(p.allows(b"a", b"", Access::Read));
        assert!(p.allows(b"b", b"", Access::Read));
        assert!(!p.allows(b"c", b"", Access::Read));
        assert!(p.allows(b"a", b"c", Access::Read));
        assert!(p.allows(b"ab", b"b", Access::Read));
        assert!(!p.allows(b"a", b"d", Access::Read));
        assert!(!p.allows(b"a", b"", Access::Write));
        assert!(p.allows(b"p/x", b"", Access::Write));
        assert!(p.allows(b"p/", b"p0", Access::Write));
        assert!(!p.allows(b"p", b"p0", Access::Write));
        // "\0" as a range end asks for everything from the key on.
        assert!(p.allows(b"z", b"\0", Access::Read));
        assert!(p.allows(b"zz", b"\0", Access::Read));
        assert!(p.allows(b"\xff\xff", b"", Access::Read));
        assert!(!p.allows(b"y", b"\0", Access::Read));
    }

    #[test]
    fn adjacent_permissions_cover_their_union_but_a_gap_does_not() {
        let p = merged(&[
            perm(PermissionType::Read, "a", "c"),
            perm(PermissionType::Read, "c", "e"),
            perm(PermissionType::Read, "f", "h"),
        ]);
        assert!(p.allows(b"a", b"e", Access::Read));
        assert!(p.allows(b"b", b"d", Access::Read));
        assert!(
            !p.allows(b"a", b"g", Access::Read),
            "the gap [e, f) is not granted"
        );
        assert!(!p.allows(b"e", b"", Access::Read));
    }

    #[test]
    fn the_whole_key_space() {
        // etcdctl grants "everything" as key "\0" with range end "\0".
        let p = merged(&[perm(PermissionType::Readwrite, "\0", "\0")]);
        assert!(p.allows(b"anything", b"", Access::Write));
        assert!(p.allows(b"\0", b"\0", Access::Read));
        assert!(p.allows(b"a", b"b", Access::Read));
    }

    #[test]
    fn unknown_permission_types_grant_nothing() {
        let mut odd = perm(PermissionType::Read, "k", "");
        odd.perm_type = 7;
        let p = merged(&[odd]);
        assert!(!p.allows(b"k", b"", Access::Read));
        assert!(!p.allows(b"k", b"", Access::Write));
    }
}
