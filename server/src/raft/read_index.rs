//! Linearizable reads, batched: one ReadIndex round serves every read that arrived before it
//! started, as etcd's read loop does, so concurrent readers do not each pay a round.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{EtcdError, EtcdResult};

type Waiter = oneshot::Sender<EtcdResult<()>>;

#[derive(Default)]
struct Pending {
    waiters: Vec<Waiter>,
    round_running: bool,
}

#[derive(Default)]
pub struct ReadIndexBatcher {
    pending: Arc<Mutex<Pending>>,
}

impl ReadIndexBatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves once a round that started after the call completed; `round` runs one round
    /// (confirm the read point with the leader, then wait for the local state to reach it).
    pub async fn wait<F, Fut>(&self, round: F) -> EtcdResult<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = EtcdResult<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_rounds = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| EtcdError::Internal("read index state poisoned".into()))?;
            pending.waiters.push(tx);
            !std::mem::replace(&mut pending.round_running, true)
        };
        if start_rounds {
            tokio::spawn(run_rounds(round, self.pending.clone()));
        }
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

async fn run_rounds<F, Fut>(round: F, pending: Arc<Mutex<Pending>>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = EtcdResult<()>>,
{
    loop {
        let waiters = match pending.lock() {
            Ok(mut p) if p.waiters.is_empty() => {
                p.round_running = false;
                return;
            }
            Ok(mut p) => std::mem::take(&mut p.waiters),
            Err(_) => return,
        };
        let outcome = round().await;
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_readers_share_rounds() {
        let batcher = Arc::new(ReadIndexBatcher::new());
        let rounds = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for _ in 0..50 {
            let batcher = batcher.clone();
            let rounds = rounds.clone();
            readers.push(tokio::spawn(async move {
                batcher
                    .wait(move || {
                        let rounds = rounds.clone();
                        async move {
                            rounds.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok(())
                        }
                    })
                    .await
            }));
        }
        for reader in readers {
            reader.await.expect("reader task").expect("read point");
        }
        let rounds = rounds.load(Ordering::SeqCst);
        assert!((1..50).contains(&rounds), "{rounds} rounds for 50 readers");
    }
}
