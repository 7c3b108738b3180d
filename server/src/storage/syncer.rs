//! Group commit: one fsync of the WAL covers every write issued before it.
//!
//! Writers write their batch without syncing, then hand a completion callback to the syncer.
//! The syncer thread takes every callback waiting, fsyncs once, and completes them all, so N
//! concurrent writers share one fsync instead of paying N.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use super::Storage;

type Completion = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

#[derive(Clone)]
pub struct WalSyncer {
    tx: mpsc::Sender<Completion>,
}

impl WalSyncer {
    pub fn start(storage: Arc<Storage>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Completion>();
        thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_loop(&storage, &rx))?;
        Ok(Self { tx })
    }

    /// Runs `done` once every write issued before this call is durable (or the sync failed).
    pub fn after_sync(&self, done: impl FnOnce(Result<(), std::io::Error>) + Send + 'static) {
        if let Err(mpsc::SendError(done)) = self.tx.send(Box::new(done)) {
            done(Err(std::io::Error::other("wal syncer stopped")));
        }
    }
}

fn sync_loop(storage: &Storage, rx: &mpsc::Receiver<Completion>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let outcome = storage.sync_wal().map_err(|e| e.to_string());
        for done in waiting {
            done(outcome.clone().map_err(std::io::Error::other));
        }
    }
}
