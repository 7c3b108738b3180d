//! Executes committed requests against the store: the deterministic heart of every member.
//!
//! Everything an entry changes, plus whatever the caller records about the entry itself (the
//! applied log id), lands in one RocksDB batch, so a crash replays an entry entirely or not at all.

use std::sync::Arc;

use rocksdb::WriteBatch;

use crate::error::EtcdError;
use crate::mvcc::write::WriteTxn;
use crate::mvcc::{apply, MvccStore};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::raft_response::Response;
use crate::proto::raftpb::{RaftRequest, RaftResponse};
use crate::storage::StorageError;

pub struct Applier {
    store: Arc<MvccStore>,
}

impl Applier {
    pub fn new(store: Arc<MvccStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Applies `request` (or nothing, for raft's own entries) and commits it together with
    /// what `record` adds to the batch. A failed request commits only `record`'s part.
    pub fn apply(
        &self,
        request: Option<&RaftRequest>,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<RaftResponse, StorageError> {
        let mut txn = WriteTxn::new(&self.store);
        let outcome = match request.and_then(|r| r.request.as_ref()) {
            Some(request) => execute(&mut txn, request),
            None => Ok(None),
        };
        let (mut txn, response) = match outcome {
            Ok(response) => (
                txn,
                RaftResponse {
                    response,
                    error: String::new(),
                },
            ),
            Err(EtcdError::Internal(message)) => return Err(StorageError::Corrupt(message)),
            Err(refused) => (
                WriteTxn::new(&self.store),
                RaftResponse {
                    response: None,
                    error: refused.to_string(),
                },
            ),
        };
        record(txn.batch_mut());
        self.store
            .commit(txn.finish())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(response)
    }
}

fn execute(txn: &mut WriteTxn<'_>, request: &Request) -> Result<Option<Response>, EtcdError> {
    let response = match request {
        Request::Put(r) => Response::Put(apply::put(txn, r)?),
        Request::DeleteRange(r) => Response::DeleteRange(apply::delete_range(txn, r)?),
        Request::Txn(r) => Response::Txn(apply::txn(txn, r)?),
        Request::Compaction(r) => Response::Compaction(apply::compaction(txn, r)?),
        Request::LeaseGrant(_) | Request::LeaseRevoke(_) | Request::LeaseCheckpoint(_) => {
            return Err(EtcdError::InvalidArgument(
                "keelson: lease requests are not supported yet".into(),
            ))
        }
    };
    Ok(Some(response))
}
