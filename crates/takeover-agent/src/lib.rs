//! The shell side of takeover that touches the disk: durable state files and the
//! per-group journal. The decisions live in `takeover-core`; this crate makes them durable.
//!
//! - [`store`]: atomically written, checksummed state files (group state, incarnation,
//!   pid file).
//! - [`journal`]: the append-only journal of handover records, with torn-tail recovery
//!   and quarantine of cut records.

pub mod journal;
pub mod store;
