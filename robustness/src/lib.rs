//! keelson's robustness suite (docs/robustness.md): random traffic shaped like
//! kube-apiserver's and etcd's own robustness tests, driven through every member of a loopback
//! cluster while one fault is injected, then checked: the key-value history for
//! linearizability against a model of etcd, every watch stream against etcd's watch
//! guarantees, and every member for the durability of acknowledged writes.

pub mod check;
pub mod committed;
pub mod faults;
pub mod history;
pub mod linearize;
pub mod model;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod summary;
pub mod traffic;
pub mod watch;
pub mod watcher;
