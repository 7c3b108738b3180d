//! Test-only fault injection for the peer network, in the spirit of etcd's failpoints.
//!
//! Off unless the member is started with `KEELSON_PEER_FAULTS=1`; then the peer listener answers
//! two paths (docs/clustering.md, docs/robustness.md):
//!
//! - `GET`/`PUT /keelson/faults/blocked-peers`: a comma-separated list of hex member IDs; every
//!   peer RPC to or from a blocked member fails at once, as if the network between them were cut
//!   (both directions, at this member's end).
//! - `GET`/`PUT /keelson/faults/peer-rules`: one rule per line, `<hex member ID> <action>`, for
//!   the calls this member makes to that member (its outbound side only, so that a test can build
//!   asymmetric partitions by giving each end different rules):
//!   - `drop`: the call fails at once, nothing is sent (a refused connection);
//!   - `blackhole`: nothing is sent and the call hangs until its deadline (packets silently lost);
//!   - `noreply`: the call is sent and handled by the peer, but its answer is lost, so the call
//!     ends at its deadline (the peer's packets to this member are lost);
//!   - `delay=<ms>`: the call is sent that much later (a slow link).
//!
//! Tests use it to partition members without network namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

pub const ENABLE_VARIABLE: &str = "KEELSON_PEER_FAULTS";
pub const HTTP_PATH: &str = "/keelson/faults/blocked-peers";
pub const RULES_HTTP_PATH: &str = "/keelson/faults/peer-rules";
/// A delay rule longer than this is refused: every wait the hook adds stays bounded.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What happens to the calls this member makes to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    Drop,
    Blackhole,
    NoReply,
    Delay(Duration),
}

impl fmt::Display for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outbound::Drop => write!(f, "drop"),
            Outbound::Blackhole => write!(f, "blackhole"),
            Outbound::NoReply => write!(f, "noreply"),
            Outbound::Delay(d) => write!(f, "delay={}", d.as_millis()),
        }
    }
}

impl std::str::FromStr for Outbound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Outbound::Drop),
            "blackhole" => Ok(Outbound::Blackhole),
            "noreply" => Ok(Outbound::NoReply),
            other => {
                let ms = other
                    .strip_prefix("delay=")
                    .ok_or_else(|| format!("unknown action {other:?}"))?;
                let ms: u64 = ms.parse().map_err(|e| format!("bad delay {ms:?}: {e}"))?;
                let delay = Duration::from_millis(ms);
                if delay > MAX_DELAY {
                    return Err(format!("delay {ms} ms is above {MAX_DELAY:?}"));
                }
                Ok(Outbound::Delay(delay))
            }
        }
    }
}

#[derive(Default)]
pub struct PeerFaults {
    enabled: bool,
    blocked: RwLock<BTreeSet<u64>>,
    rules: RwLock<BTreeMap<u64, Outbound>>,
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
            ..Default::default()
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
            .map(parse_id)
            .collect::<Result<BTreeSet<u64>, String>>()?;
        if let Ok(mut blocked) = self.blocked.write() {
            *blocked = ids;
        }
        Ok(())
    }

    /// The rule for calls to `member`; a blocked member's calls are dropped.
    pub fn outbound(&self, member: u64) -> Option<Outbound> {
        if !self.enabled {
            return None;
        }
        if self.is_blocked(member) {
            return Some(Outbound::Drop);
        }
        self.rules.read().ok().and_then(|r| r.get(&member).copied())
    }

    /// The rules as `set_rules` takes them.
    pub fn rules_text(&self) -> String {
        self.rules
            .read()
            .map(|r| {
                r.iter()
                    .map(|(id, rule)| format!("{id:x} {rule}\n"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces every outbound rule with those of `text` (`<hex id> <action>` per line); the
    /// whole text is refused if one line is wrong.
    pub fn set_rules(&self, text: &str) -> Result<(), String> {
        let mut rules = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut words = line.split_whitespace();
            let (Some(id), Some(action), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("expected `<member id> <action>`, got {line:?}"));
            };
            rules.insert(parse_id(id)?, action.parse::<Outbound>()?);
        }
        if let Ok(mut current) = self.rules.write() {
            *current = rules;
        }
        Ok(())
    }
}

fn parse_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|e| format!("bad member ID {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> PeerFaults {
        PeerFaults {
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn disabled_faults_block_nothing() {
        let faults = PeerFaults::default();
        faults.set_blocked("a1").expect("valid list");
        faults.set_rules("a2 blackhole").expect("valid rules");
        assert!(!faults.is_blocked(0xa1));
        assert_eq!(faults.outbound(0xa1), None);
        assert_eq!(faults.outbound(0xa2), None);
    }

    #[test]
    fn enabled_faults_parse_hex_lists() {
        let faults = enabled();
        faults
            .set_blocked("a1, 8e9e05c52164694d")
            .expect("valid list");
        assert!(faults.is_blocked(0xa1));
        assert!(faults.is_blocked(0x8e9e05c52164694d));
        assert!(!faults.is_blocked(0xa2));
        assert!(faults.set_blocked("zz").is_err());
    }

    #[test]
    fn rules_parse_and_round_trip() {
        let faults = enabled();
        faults
            .set_rules("a1 drop\n a2 blackhole\na3 noreply\n\na4 delay=250\n")
            .expect("valid rules");
        assert_eq!(faults.outbound(0xa1), Some(Outbound::Drop));
        assert_eq!(faults.outbound(0xa2), Some(Outbound::Blackhole));
        assert_eq!(faults.outbound(0xa3), Some(Outbound::NoReply));
        assert_eq!(
            faults.outbound(0xa4),
            Some(Outbound::Delay(Duration::from_millis(250)))
        );
        assert_eq!(faults.outbound(0xa5), None);
        let text = faults.rules_text();
        let again = enabled();
        again.set_rules(&text).expect("its own text parses");
        assert_eq!(again.rules_text(), text);
    }

    #[test]
    fn a_wrong_line_refuses_the_whole_text() {
        let faults = enabled();
        faults.set_rules("a1 drop").expect("valid");
        for bad in [
            "a1 drop extra",
            "a1",
            "zz drop",
            "a1 fly",
            "a1 delay=x",
            "a1 delay=30001",
        ] {
            assert!(faults.set_rules(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(faults.outbound(0xa1), Some(Outbound::Drop), "rules kept");
        faults.set_rules("").expect("empty clears");
        assert_eq!(faults.outbound(0xa1), None);
    }

    #[test]
    fn a_blocked_member_is_dropped_whatever_its_rule() {
        let faults = enabled();
        faults.set_rules("a1 delay=5").expect("valid");
        faults.set_blocked("a1").expect("valid");
        assert_eq!(faults.outbound(0xa1), Some(Outbound::Drop));
    }
}
