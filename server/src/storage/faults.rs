//! Test-only slow disk: a delay before every fsync of the database (the WAL syncs that raft's
//! log appends and votes wait for), in the spirit of etcd's `raftBeforeSave` sleep failpoints.
//!
//! Off unless the member is started with `KEELSON_DISK_FAULTS=1`; then the peer listener answers
//! `GET`/`PUT /keelson/faults/fsync-delay` with a delay in milliseconds (0 turns it off). Without
//! the variable nothing can set the delay and every fsync runs at once. One member per process,
//! so the hook is process-wide: the HTTP route and the storage need no path between them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub const ENABLE_VARIABLE: &str = "KEELSON_DISK_FAULTS";
pub const HTTP_PATH: &str = "/keelson/faults/fsync-delay";
/// A longer delay is refused: a stalled fsync stays bounded.
const MAX_DELAY_MS: u64 = 10_000;

#[derive(Default)]
pub struct DiskFaults {
    enabled: bool,
    fsync_delay_ms: AtomicU64,
}

/// The process's disk fault hook, read from the environment once.
pub fn disk_faults() -> &'static DiskFaults {
    static FAULTS: OnceLock<DiskFaults> = OnceLock::new();
    FAULTS.get_or_init(DiskFaults::from_env)
}

impl DiskFaults {
    fn from_env() -> Self {
        let enabled = std::env::var(ENABLE_VARIABLE).is_ok_and(|v| v == "1" || v == "true");
        if enabled {
            tracing::warn!(
                "{ENABLE_VARIABLE} is set: fsync delays can be injected through the peer listener; never do this in production"
            );
        }
        Self {
            enabled,
            fsync_delay_ms: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn fsync_delay(&self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        Duration::from_millis(self.fsync_delay_ms.load(Ordering::Relaxed))
    }

    /// Sets the delay from a number of milliseconds (`0` removes it).
    pub fn set_fsync_delay(&self, text: &str) -> Result<(), String> {
        let ms: u64 = text
            .trim()
            .parse()
            .map_err(|e| format!("bad delay {:?}: {e}", text.trim()))?;
        if ms > MAX_DELAY_MS {
            return Err(format!("delay {ms} ms is above {MAX_DELAY_MS} ms"));
        }
        self.fsync_delay_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }

    /// Called before an fsync, on a blocking thread (never on the async runtime).
    pub(super) fn before_fsync(&self) {
        let delay = self.fsync_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_hook_never_delays() {
        let faults = DiskFaults::default();
        faults.set_fsync_delay("500").expect("valid");
        assert_eq!(faults.fsync_delay(), Duration::ZERO);
    }

    #[test]
    fn an_enabled_hook_takes_bounded_delays() {
        let faults = DiskFaults {
            enabled: true,
            ..Default::default()
        };
        faults.set_fsync_delay(" 20\n").expect("valid");
        assert_eq!(faults.fsync_delay(), Duration::from_millis(20));
        let started = std::time::Instant::now();
        faults.before_fsync();
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(faults.set_fsync_delay("10001").is_err());
        assert!(faults.set_fsync_delay("-1").is_err());
        assert_eq!(faults.fsync_delay(), Duration::from_millis(20), "kept");
        faults.set_fsync_delay("0").expect("valid");
        assert_eq!(faults.fsync_delay(), Duration::ZERO);
    }
}
