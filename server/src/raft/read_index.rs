//! Linearizable reads, batched: one ReadIndex round serves every read that arrived before it
//! started, as etcd's read loop does, so concurrent readers do not each pay a round.

use std::sync::{Arc, Mutex};

use openraft::ReadPolicy;
use tokio::sync::oneshot;

use super::{Raft, TypeConfig};
use crate::error::{EtcdError, EtcdResult};

type Waiter = oneshot::Sender<EtcdResult<()>>;

#[derive(Default)]
struct Pending {
    waiters: Vec<Waiter>,
    round_running: bool,
}

pub struct ReadIndexBatcher {
    raft: Raft,
    pending: Arc<Mutex<Pending>>,
}

impl ReadIndexBatcher {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            pending: Arc::new(Mutex::new(Pending::default())),
        }
    }

    /// Resolves once the local state machine has applied everything committed before the call.
    pub async fn wait(&self) -> EtcdResult<()> {
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| EtcdError::Internal("read index state poisoned".into()))?;
            pending.waiters.push(tx);
            !std::mem::replace(&mut pending.round_running, true)
        };
        if start_round {
            tokio::spawn(run_rounds(self.raft.clone(), self.pending.clone()));
        }
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

async fn run_rounds(raft: Raft, pending: Arc<Mutex<Pending>>) {
    loop {
        let waiters = match pending.lock() {
            Ok(mut p) if p.waiters.is_empty() => {
                p.round_running = false;
                return;
            }
            Ok(mut p) => std::mem::take(&mut p.waiters),
            Err(_) => return,
        };
        let outcome = raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(read_error);
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

fn read_error(
    e: openraft::error::RaftError<TypeConfig, openraft::error::LinearizableReadError<TypeConfig>>,
) -> EtcdError {
    use openraft::error::{LinearizableReadError, RaftError};
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => match f.leader_id {
            Some(_) => EtcdError::NotLeader,
            None => EtcdError::NoLeader,
        },
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)) => EtcdError::Timeout,
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}
