//! Small value types shared by every core module: node ids, incarnations, epochs,
//! priorities, roles and the core's own notion of time.
//!
//! Time enters the core only as a value ([`Instant`]) passed in by the caller (F0.8):
//! the core never reads a clock and never compares instants that came from two nodes.

use std::fmt;
use std::time::Duration;

/// A node of the cluster, as its index in the configuration's sorted node list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

/// One run of a node's agent. Made durable and raised by one at every agent start, and
/// carried in every heartbeat and peer message, so a peer that sees a higher incarnation
/// knows the previous run has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

/// A local monotonic instant, in nanoseconds from an origin chosen by the shell.
/// Only ever compared with instants of the same node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The instant `d` after `self`, saturating.
    pub fn after(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The generation of a group's history. Raised on every entry to SM; records carry the
/// epoch they were written in. `(counter, node)` is unique cluster-wide because only
/// `node` creates epochs with its own id, each with a counter above every epoch it knows,
/// so two histories never share an epoch. `forced` marks an epoch begun by a force start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch {
    pub counter: u64,
    pub node: u16,
    pub forced: bool,
}

impl Epoch {
    /// The epoch before any node ever processed.
    pub const ZERO: Epoch = Epoch { counter: 0, node: 0, forced: false };
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.counter, self.node)?;
        if self.forced {
            write!(f, "!")?;
        }
        Ok(())
    }
}

/// The seed-000 server priority (F0.3): 1 is written on entry to SM, 2 on entry to M,
/// 3 on entry to SL; a failure (X) leaves it unchanged. A lower number is a higher priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    P1 = 1,
    P2 = 2,
    P3 = 3,
}

impl Priority {
    /// Parses the stored number; anything but 1, 2 or 3 is not a priority.
    pub fn from_number(n: u8) -> Option<Priority> {
        match n {
            1 => Some(Priority::P1),
            2 => Some(Priority::P2),
            3 => Some(Priority::P3),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The seed-000 node state of one group (F0.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Stopped or failed: not processing, not receiving the handover state.
    X,
    /// Slave: not processing, receiving the handover state.
    Sl,
    /// Single master: processing, nobody can take over.
    Sm,
    /// Master: processing, and the SL holds every acknowledged record.
    M,
}

impl Role {
    /// Whether a node in this role processes (runs the service).
    pub fn is_active(self) -> bool {
        matches!(self, Role::Sm | Role::M)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::X => "X",
            Role::Sl => "SL",
            Role::Sm => "SM",
            Role::M => "M",
        }
    }

    /// The priority written on entry to this role (F0.3); `None` for X (unchanged).
    pub fn priority_on_entry(self) -> Option<Priority> {
        match self {
            Role::Sm => Some(Priority::P1),
            Role::M => Some(Priority::P2),
            Role::Sl => Some(Priority::P3),
            Role::X => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's append request, chosen by the shell, echoed in the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);
