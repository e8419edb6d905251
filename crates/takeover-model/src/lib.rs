//! Exhaustive model check of the seed-000 role machine and the journal rules, run on the
//! production `takeover-core` step functions themselves (F0.7).
//!
//! - [`world`]: a two-node cluster around the production `Group`, one step per command,
//!   delivery, peer event, timer, append, force start, crash or start.
//! - [`check`]: breadth-first search over every reachable world, the properties, traces.
//! - [`fig2`]: the seed's pair-state diagram and the map from worlds onto it.

pub mod check;
pub mod fig2;
pub mod world;
