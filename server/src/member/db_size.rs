//! The size of the store as the backend quota and the `etcd_mvcc_db_total_size*` gauges see
//! it: measured in the background, plus what was admitted since the last measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::METRICS;
use crate::storage::{DataSize, Storage};

/// How often the size is measured (a few RocksDB properties, so this is cheap).
const REFRESH: Duration = Duration::from_millis(500);

pub struct DbSize {
    /// `DataSize::total` at the last measurement.
    measured: Arc<AtomicU64>,
    /// Quota cost of the writes admitted since `measured` was taken: without it a burst
    /// faster than the refresh could run far past the quota before the alarm.
    admitted: Arc<AtomicU64>,
}

fn publish(size: DataSize) {
    let total = i64::try_from(size.total).unwrap_or(i64::MAX);
    let in_use = i64::try_from(size.in_use).unwrap_or(i64::MAX);
    METRICS.db_total_size.set(total);
    METRICS.debugging_db_total_size.set(total);
    METRICS.db_total_size_in_use.set(in_use);
}

impl DbSize {
    /// Measures now, then every [`REFRESH`] until dropped.
    pub fn start(storage: Arc<Storage>) -> Self {
        let first = storage.data_size();
        publish(first);
        let measured = Arc::new(AtomicU64::new(first.total));
        let admitted = Arc::new(AtomicU64::new(0));
        let (weak_measured, weak_admitted) = (Arc::downgrade(&measured), Arc::downgrade(&admitted));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                let (Some(measured), Some(admitted)) =
                    (weak_measured.upgrade(), weak_admitted.upgrade())
                else {
                    return;
                };
                let admitted_before = admitted.load(Ordering::Relaxed);
                let storage = storage.clone();
                let Ok(size) = tokio::task::spawn_blocking(move || storage.data_size()).await
                else {
                    continue;
                };
                measured.store(size.total, Ordering::Relaxed);
                // What was admitted before the measurement started is in it (applied, or
                // counted as pending below); later admissions stay pending.
                let _ = admitted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    Some(now.saturating_sub(admitted_before))
                });
                publish(size);
            }
        });
        Self { measured, admitted }
    }

    /// etcd's quota rule: admit a write of `cost` bytes while the store stays below `quota`.
    /// A write that costs nothing (a delete) is always admitted.
    pub fn admit(&self, cost: u64, quota: u64) -> bool {
        let size = self
            .measured
            .load(Ordering::Relaxed)
            .saturating_add(self.admitted.load(Ordering::Relaxed));
        if cost == 0 || size.saturating_add(cost) < quota {
            self.admitted.fetch_add(cost, Ordering::Relaxed);
            return true;
        }
        false
    }
}
