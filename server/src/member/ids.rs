//! Unique IDs a member hands out (lease IDs), built as etcd builds them: the member's low 16 bits,
//! then a millisecond timestamp taken at start, then a counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const SUFFIX_BITS: u32 = 48;
const TIMESTAMP_BITS: u32 = 40;
const COUNTER_BITS: u32 = 8;

fn low_bits(x: u64, n: u32) -> u64 {
    x & (u64::MAX >> (64 - n))
}

pub struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGenerator {
    pub fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new(low_bits(millis, TIMESTAMP_BITS) << COUNTER_BITS),
        }
    }

    /// A fresh positive ID.
    pub fn next_positive(&self) -> i64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        ((self.prefix | low_bits(suffix, SUFFIX_BITS)) & (i64::MAX as u64)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_distinct_and_carry_the_member() {
        let ids = IdGenerator::new(0x8e9e_05c5_2164_694d);
        let a = ids.next_positive();
        let b = ids.next_positive();
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!((a as u64) >> 48, 0x694d);
    }
}
