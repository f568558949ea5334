//! Instances that share shards through leases in Redis (`[service]
//! coordination`): the lease thread, the view of what this instance holds
//! that source configs are cut to, and the Redis link both use.

pub mod coordinator;
pub mod leases;
pub mod remote;

pub use coordinator::{CoordinationSettings, CoordinatorHandle, Reshare};
pub use leases::{Leases, TakeOver};
