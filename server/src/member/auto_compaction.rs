//! `--auto-compaction-mode` / `--auto-compaction-retention`, as etcd runs them, on the leader.
//!
//! periodic: keep `retention` of history. Every tenth of the compaction interval (the interval
//! being the retention, at most one hour) the current revision is sampled; every interval the
//! store is compacted to the newest sample at least `retention` old.
//! revision: every five minutes, compact to `current - retention`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Member;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::CompactionRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revision(i64),
}

/// How often revision-mode compaction runs (etcd's).
const REVISION_MODE_EVERY: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);

impl Member {
    pub fn start_auto_compaction(self: &Arc<Self>, mode: AutoCompaction) {
        match mode {
            AutoCompaction::Off => {}
            AutoCompaction::Periodic(retention) => {
                tokio::spawn(periodic(Arc::downgrade(self), retention));
            }
            AutoCompaction::Revision(keep) => {
                tokio::spawn(by_revision(Arc::downgrade(self), keep));
            }
        }
    }

    async fn auto_compact(&self, revision: i64) {
        if revision <= 0
            || revision <= self.store.compacted_revision()
            || !self.raft_status().is_leader
        {
            return;
        }
        let request = CompactionRequest {
            revision,
            physical: false,
        };
        match self.compact(request).await {
            Ok(_) => tracing::info!(revision, "auto compaction done"),
            Err(EtcdError::Compacted) => {}
            Err(e) => tracing::warn!(revision, error = %e, "auto compaction failed"),
        }
    }
}

async fn periodic(member: std::sync::Weak<Member>, retention: Duration) {
    let interval = retention.min(HOUR);
    let sample_every = (interval / 10).max(Duration::from_millis(100));
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut tick = tokio::time::interval(sample_every);
    let mut last_compaction = Instant::now();
    loop {
        tick.tick().await;
        let Some(member) = member.upgrade() else {
            return;
        };
        let now = Instant::now();
        samples.push_back((now, member.store.current_revision()));
        if now.duration_since(last_compaction) < interval {
            continue;
        }
        // The newest sample old enough; everything older is no longer needed.
        let mut target = None;
        while let Some(&(at, rev)) = samples.front() {
            if now.duration_since(at) < retention {
                break;
            }
            target = Some(rev);
            samples.pop_front();
        }
        if let Some(rev) = target {
            last_compaction = now;
            member.auto_compact(rev).await;
        }
    }
}

async fn by_revision(member: std::sync::Weak<Member>, keep: i64) {
    let mut tick = tokio::time::interval(REVISION_MODE_EVERY);
    loop {
        tick.tick().await;
        let Some(member) = member.upgrade() else {
            return;
        };
        let target = member.store.current_revision() - keep;
        member.auto_compact(target).await;
    }
}
