//! Test-only fault injection for the peer network, in the spirit of etcd's failpoints.
//!
//! Off unless the member is started with `KEELSON_PEER_FAULTS=1`; then the peer listener answers
//! `GET`/`PUT /keelson/faults/blocked-peers` (a comma-separated list of hex member IDs), and every
//! peer RPC to or from a blocked member fails as if the network between them were cut. Tests use
//! it to partition members without network namespaces (docs/clustering.md).

use std::collections::BTreeSet;
use std::sync::RwLock;

pub const ENABLE_VARIABLE: &str = "KEELSON_PEER_FAULTS";
pub const HTTP_PATH: &str = "/keelson/faults/blocked-peers";

#[derive(Default)]
pub struct PeerFaults {
    enabled: bool,
    blocked: RwLock<BTreeSet<u64>>,
}

impl PeerFaults {
    pub fn from_env() -> Self {
        let enabled = std::env::var(ENABLE_VARIABLE).is_ok_and(|v| v == "1" || v == "true");
        if enabled {
            tracing::warn!(
                "{ENABLE_VARIABLE} is set: peer fault injection is enabled on the peer listener; never do this in production"
            );
        }
        Self {
            enabled,
            blocked: RwLock::new(BTreeSet::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether traffic with `member` is cut.
    pub fn is_blocked(&self, member: u64) -> bool {
        self.enabled
            && self
                .blocked
                .read()
                .map(|b| b.contains(&member))
                .unwrap_or(false)
    }

    pub fn blocked(&self) -> BTreeSet<u64> {
        self.blocked.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Replaces the blocked set with the IDs in `list` (hex, comma-separated).
    pub fn set_blocked(&self, list: &str) -> Result<(), String> {
        let ids = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| u64::from_str_radix(s, 16).map_err(|e| format!("bad member ID {s:?}: {e}")))
            .collect::<Result<BTreeSet<u64>, String>>()?;
        if let Ok(mut blocked) = self.blocked.write() {
            *blocked = ids;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_faults_block_nothing() {
        let faults = PeerFaults::default();
        faults.set_blocked("a1").expect("valid list");
        assert!(!faults.is_blocked(0xa1));
    }

    #[test]
    fn enabled_faults_parse_hex_lists() {
        let faults = PeerFaults {
            enabled: true,
            ..Default::default()
        };
        faults
            .set_blocked("a1, 8e9e05c52164694d")
            .expect("valid list");
        assert!(faults.is_blocked(0xa1));
        assert!(faults.is_blocked(0x8e9e05c52164694d));
        assert!(!faults.is_blocked(0xa2));
        assert!(faults.set_blocked("zz").is_err());
    }
}
