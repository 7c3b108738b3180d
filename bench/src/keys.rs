//! Keys and values the load loops write and read.
//!
//! A key is `prefix` followed by its number in decimal, zero-padded so that the whole key is
//! `key_size` bytes (or longer when the number needs more digits): `--key-size 8` gives
//! `00012345`, and `--prefix l/ --key-size 8` gives `l/000123`. Keys therefore sort in numeric
//! order, and every block of 1000 consecutive numbers shares a prefix (the key without its last
//! three digits), which is how the scale run lists "1000 keys of one prefix".

use std::sync::OnceLock;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct KeyGen {
    prefix: String,
    width: usize,
}

impl KeyGen {
    pub fn new(prefix: &str, key_size: usize, key_space: u64) -> KeyGen {
        let digits_needed = digits(key_space.saturating_sub(1));
        let width = key_size.saturating_sub(prefix.len()).max(digits_needed);
        KeyGen {
            prefix: prefix.to_string(),
            width,
        }
    }

    pub fn key(&self, n: u64) -> Vec<u8> {
        format!("{}{:0width$}", self.prefix, n, width = self.width).into_bytes()
    }

    /// The prefix shared by the 1000 keys `group * 1000 .. group * 1000 + 999`
    /// (needs `width >= 3`).
    pub fn group_prefix(&self, group: u64) -> Vec<u8> {
        let mut key = self.key(group * 1000);
        let keep = key.len() - 3.min(self.width);
        key.truncate(keep);
        key
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// The instant the process took as its clock origin; watch values carry the time since it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A value of `size` random bytes. Values are random, and differ from one write to the next,
/// so that a store that compresses its data (RocksDB does) gains nothing a real workload would
/// not give it; etcd's own benchmark tool writes random bytes too.
pub fn random_value(size: usize) -> Vec<u8> {
    let mut value = vec![0u8; size];
    fastrand::fill(&mut value);
    value
}

/// A random value of `size` bytes (at least 8) whose first 8 bytes are the microseconds since
/// [`epoch`] at the moment it was made: a watcher in this process decodes them to measure the
/// put-to-event latency.
pub fn timed_value(size: usize) -> Vec<u8> {
    let micros = epoch().elapsed().as_micros() as u64;
    let mut value = random_value(size.max(8));
    value[..8].copy_from_slice(&micros.to_be_bytes());
    value
}

/// Microseconds between the time stamped into `value` by [`timed_value`] and now.
pub fn value_age_micros(value: &[u8]) -> Option<u64> {
    let stamp = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let now = epoch().elapsed().as_micros() as u64;
    now.checked_sub(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fill_the_key_size() {
        let g = KeyGen::new("", 8, 100_000);
        assert_eq!(g.key(12345), b"00012345");
        let g = KeyGen::new("l/", 8, 1000);
        assert_eq!(g.key(7), b"l/000007");
        assert_eq!(g.group_prefix(0), b"l/000");
        // A key space that needs more digits than the key size allows makes longer keys.
        let g = KeyGen::new("", 4, 1_000_000);
        assert_eq!(g.key(5), b"000005");
        let g = KeyGen::new("", 8, 5_000_000);
        assert_eq!(g.group_prefix(4321), b"04321");
    }

    #[test]
    fn timed_values_round_trip() {
        let v = timed_value(256);
        assert_eq!(v.len(), 256);
        assert!(value_age_micros(&v).expect("decodes") < 10_000_000);
        assert_ne!(random_value(256), random_value(256));
    }
}
