//! keelson's peer protocol (proto/keelson/peerpb.proto): openraft's RPCs between members, the
//! requests a follower hands to the leader, and snapshot transfer. See docs/clustering.md.

mod append_stream;
pub mod client;
pub mod faults;
pub mod server;
pub mod snapshot_transfer;
mod wire;
