//! openraft's own storage conformance suite, run on keelson's log store and state machine.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

use super::cluster_state::ClusterState;
use super::log_store::LogStore;
use super::peer::faults::PeerFaults;
use super::snapshot::SnapshotStore;
use super::state_machine::StateMachine;
use super::types::TypeConfig;
use crate::auth::tokens::TokenProvider;
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::member::applier::Applier;
use crate::mvcc::MvccStore;
use crate::storage::{Storage, WalSyncer};

struct FreshStores;

fn storage_error(e: impl std::fmt::Display) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_string(e))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FreshStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        let storage = Storage::open(&dir.path().join("db")).map_err(storage_error)?;
        let syncer = WalSyncer::start(storage.clone()).map_err(storage_error)?;
        let store = MvccStore::open(storage.clone()).map_err(storage_error)?;
        let lessor = Arc::new(Lessor::load(storage.clone(), 2).map_err(storage_error)?);
        let auth = Arc::new(
            AuthStore::open(storage.clone(), TokenProvider::None, 4).map_err(storage_error)?,
        );
        let applier = Arc::new(Applier::new(store, lessor, auth).map_err(storage_error)?);
        let snapshots = SnapshotStore::new(dir.path().join("snap")).map_err(storage_error)?;
        let cluster = Arc::new(ClusterState::new(1, 1, Arc::new(PeerFaults::default())));
        let state_machine =
            StateMachine::open(applier, snapshots, cluster).map_err(storage_error)?;
        // As in a running node (RaftNode::start): the suite asks for snapshots as replication
        // does, and expects them to match what was built.
        state_machine
            .checkpoint_on_demand()
            .store(true, std::sync::atomic::Ordering::Release);
        Ok((
            dir,
            LogStore::new(storage, syncer, Default::default()),
            state_machine,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(FreshStores)
        .await
        .expect("keelson's raft storage must pass openraft's conformance suite");
}
