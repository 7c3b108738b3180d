//! Password hashing with bcrypt, as etcd stores passwords (Go's `$2a$` format, `--bcrypt-cost`).
//!
//! bcrypt is slow on purpose (tens of milliseconds at the default cost), so it never runs on the
//! async runtime's threads, and only a few hashes run at once: a flood of logins queues up here
//! (each waiting request costs a small future, no thread) instead of taking every CPU of the
//! member from the requests of everyone else. Passwords are never logged.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{EtcdError, EtcdResult};

/// etcd's default cost, and the range Go's bcrypt accepts.
pub const DEFAULT_COST: u32 = 10;
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;

pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    /// etcd replaces a cost outside bcrypt's range by the default, with a warning.
    pub fn new(cost: u32) -> Self {
        let cost = if (MIN_COST..=MAX_COST).contains(&cost) {
            cost
        } else {
            tracing::warn!(
                given_cost = cost,
                default_cost = DEFAULT_COST,
                "use default bcrypt cost instead of the invalid given cost"
            );
            DEFAULT_COST
        };
        // Half the CPUs, at least one: logins get a fair share without starving the rest.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        PasswordHasher {
            cost,
            permits: Arc::new(Semaphore::new((cpus / 2).max(1))),
        }
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> EtcdResult<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| EtcdError::Stopped)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| EtcdError::Internal(format!("password hashing failed: {e}")))
    }

    /// The bcrypt hash of `password` in Go's `$2a$` form.
    pub async fn hash(&self, password: String) -> EtcdResult<String> {
        let cost = self.cost;
        self.run(move || {
            bcrypt::hash_with_result(password.as_bytes(), cost)
                .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        })
        .await?
        .map_err(|e| EtcdError::Internal(format!("failed to bcrypt hash password: {e}")))
    }

    /// Whether `password` matches `hash`; a malformed hash matches nothing.
    pub async fn verify(&self, password: String, hash: String) -> EtcdResult<bool> {
        self.run(move || bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash etcd 3.4 stored for the password "rootpw" (read from its bolt database): hashes
    /// carried over from etcd keep working.
    const ETCD_HASH_OF_ROOTPW: &str =
        "$2a$10$qkEaYesNUJ6LZ1x5IiUKzuohOHPO8d80d2S4Dhj7.lak415KPP6sm";

    #[tokio::test]
    async fn hashes_are_gos_and_verify_both_ways() {
        let hasher = PasswordHasher::new(MIN_COST);
        let hash = hasher.hash("secret".into()).await.expect("hashes");
        assert!(hash.starts_with("$2a$04$"), "{hash}");
        assert!(hasher
            .verify("secret".into(), hash.clone())
            .await
            .expect("runs"));
        assert!(!hasher.verify("Secret".into(), hash).await.expect("runs"));
        assert!(!hasher
            .verify("x".into(), "not a hash".into())
            .await
            .expect("runs"));
    }

    #[tokio::test]
    async fn etcds_hashes_verify() {
        let hasher = PasswordHasher::new(DEFAULT_COST);
        assert!(hasher
            .verify("rootpw".into(), ETCD_HASH_OF_ROOTPW.into())
            .await
            .expect("runs"));
        assert!(!hasher
            .verify("rootpx".into(), ETCD_HASH_OF_ROOTPW.into())
            .await
            .expect("runs"));
    }

    #[tokio::test]
    async fn only_the_first_72_bytes_count_as_in_go() {
        let hasher = PasswordHasher::new(MIN_COST);
        let long = "x".repeat(80);
        let hash = hasher.hash(long.clone()).await.expect("hashes");
        assert!(hasher
            .verify("x".repeat(72), hash.clone())
            .await
            .expect("runs"));
        assert!(!hasher.verify("x".repeat(71), hash).await.expect("runs"));
    }

    #[test]
    fn out_of_range_costs_fall_back_to_the_default() {
        assert_eq!(PasswordHasher::new(3).cost(), DEFAULT_COST);
        assert_eq!(PasswordHasher::new(32).cost(), DEFAULT_COST);
        assert_eq!(PasswordHasher::new(12).cost(), 12);
    }
}
