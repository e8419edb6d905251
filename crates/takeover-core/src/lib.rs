//! The pure, deterministic decision core of takeover.
//!
//! Nothing here does IO, reads a clock, spawns a task or draws a random number: time
//! comes in as an [`Instant`] value and every side effect goes out as a command that the
//! shell (`takeover-agent`) executes in order. That is what lets the model checker
//! (`takeover-model`) explore the very code that runs in production.
//!
//! - [`group`]: the seed-000 role machine of one service group, with the journal rules.
//! - [`log`]: journal records and the log metadata the rules work on.
//! - [`node`]: one node: failure detector over redundant links, peer channel, fencing
//!   per peer, and the groups' role machines.
//! - [`runner`]: the resources of one group: ordered start/stop, monitors, restarts.
//! - [`types`]: node ids, incarnations, epochs, priorities, roles, time.
//! - [`witness`]: witness leases: the grant rules and the holder's bookkeeping.

pub mod group;
pub mod log;
pub mod node;
pub mod runner;
pub mod types;
pub mod witness;

pub use types::{Epoch, Incarnation, Instant, NodeId, Priority, ReqId, Role};
