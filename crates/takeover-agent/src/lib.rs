//! The shell of takeover: everything that touches the disk, the network and processes.
//! The decisions live in `takeover-core`; this crate performs them.
//!
//! - [`config`]: the cluster configuration file, with file:line:column errors.
//! - [`store`]: atomically written, checksummed state files (group state, incarnation,
//!   pid file).
//! - [`journal`]: the append-only journal of handover records, with torn-tail recovery
//!   and quarantine of cut records.
//! - [`service`]: the group's application process: dies with its agent, own process
//!   group, leftovers killed at start.
//! - [`fence`]: running fence commands, and `fence-local`, the power-off of a node that
//!   runs on this machine.

pub mod config;
pub mod fence;
pub mod journal;
pub mod service;
pub mod store;
