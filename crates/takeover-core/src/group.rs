//! The seed-000 role machine of one service group on one node, with the journal rules.
//!
//! A group is a pair of nodes (F0.1–F0.6). [`Group`] is one node's half: it takes events
//! (the peer connected, went down or was confirmed stopped, a peer message, a client
//! append, a force start, a timeout) with the current local instant, and queues
//! [`Command`]s for the shell to run **in order, each finished before the next starts**.
//! That order is the write-ahead rule: a command that must be durable (a priority, a
//! record) always comes before any command that depends on it, so a crash between two
//! commands never leaves an effect without its cause on disk.
//!
//! Driving contract:
//! 1. Build with [`Group::boot`] from the durable state and the log's metadata.
//! 2. Feed every event through [`Group::handle`]; after each call drain
//!    [`Group::poll_command`] until it returns `None`, executing each command to completion
//!    (a persist or a write is fsynced before the next command runs).
//! 3. Call `handle(now, Event::Timeout)` once `now` reaches [`Group::poll_timeout`].
//!
//! ```text
//!   peer lost while SL of a confirmed M         peer lost while M
//!   ─────────────────────────────────           ─────────────────
//!   PeerDown{inc} ─► FencePeer{inc}              PeerDown{inc} ─► FencePeer{inc}
//!   PeerStopped{inc} ─► Persist{1, SM, e+1}      (appends stay pending)
//!                    ─► StartService             PeerStopped{inc} ─► Persist{1, SM, e+1}
//!                                                                 ─► AckAppend… (pending)
//!   SL joins an SM                               SM → M
//!   ──────────────                               ──────
//!   State{SM} ─► Persist{3, SL}                  Ack{n} with n ≥ every acknowledged index
//!            ─► TruncateLog (quarantine)                ─► Persist{2, M}
//!            ─► Send Join{common}                       ─► Send Promoted
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use crate::log::{DiscardReason, LogMeta, Record};
use crate::types::{Epoch, Incarnation, Instant, NodeId, Priority, ReqId, Role};

/// What authorises acting on a lost peer (taking over as SL, or M → SM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arbiter {
    /// Ask the shell to fence the peer and wait for its confirmation.
    Fence,
    /// Treat a peer that went silent as crashed. Unsafe under partitions and pauses;
    /// shown in status and logs whenever it is on.
    UnsafeAssumeCrashStop,
}

/// The static settings of one group on one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupConfig {
    pub me: NodeId,
    pub peer: NodeId,
    pub arbiter: Arbiter,
    /// How long a recovering node waits for its peer before deciding alone (F0.5).
    pub startup_wait: Duration,
    /// How long after a failed fence the fence is tried again.
    pub fence_retry: Duration,
    /// How long an SL waits before fencing the active it lost, so that in a fence race
    /// (a partition: both lose each other at once) the active, which fences at once,
    /// wins (like Pacemaker's priority-fencing-delay).
    pub fence_delay: Duration,
    /// How many records one catch-up batch may carry to a joining SL.
    pub catch_up_window: u64,
    /// This node is the group's preferred node (listed first).
    pub preferred: bool,
    /// Whether the group returns to its preferred node once that node is a synchronised
    /// SL again (F1.10, F2.4), `failback_delay` after this node became M.
    pub failback: Failback,
    pub failback_delay: Duration,
}

/// Whether a group moves back to its preferred node by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failback {
    /// Only by `switchover`.
    Manual,
    /// As soon as the preferred node is a synchronised SL again.
    Auto,
}

/// Why an active hands its group over to its SL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoverReason {
    /// The operator's switchover.
    Switchover,
    /// Automatic failback to the preferred node.
    Failback,
    /// A resource would not start here.
    StartFailed,
    /// A resource kept failing here beyond its restart threshold (partial failover, F1.5).
    ServiceFailed,
}

impl HandoverReason {
    /// Whether the group could not run on the node handing it over.
    pub fn is_failure(self) -> bool {
        matches!(self, HandoverReason::StartFailed | HandoverReason::ServiceFailed)
    }
}

/// The part of a group's state that lives on the node's own disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupDurable {
    /// The seed-000 server priority (F0.3).
    pub priority: Priority,
    /// The highest epoch this node knows of; a new epoch is created above it.
    pub epoch: Epoch,
    /// The last role entered (X is never written; informational after a restart).
    pub role: Role,
    /// Set by `--join-only` after a force start on the peer: this node must not start the
    /// group by itself until it has rejoined as SL.
    pub join_only: bool,
}

impl GroupDurable {
    /// The state written once at cluster creation: the preferred node starts at
    /// priority 2, the other at 3 (F0.3: distinct initial values).
    pub fn initial(preferred: bool) -> GroupDurable {
        GroupDurable {
            priority: if preferred { Priority::P2 } else { Priority::P3 },
            epoch: Epoch::ZERO,
            role: Role::X,
            join_only: false,
        }
    }
}

/// A node's statement of its own state, sent to the peer on connect and on every change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerState {
    pub role: Role,
    pub priority: Priority,
    pub epoch: Epoch,
    pub join_only: bool,
    /// On an SL: the incarnation of the active it follows.
    pub following: Option<Incarnation>,
    pub log: LogMeta,
}

/// Messages between the two nodes of a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// The sender's role, priority, epoch and log metadata.
    State(PeerState),
    /// SL → active: "my log equals yours up to `from_index` (whose epoch is
    /// `from_epoch`), my priority 3 is durable; send what follows". `session` numbers this
    /// join within the SL's run; acknowledgements and Promoted echo it, so that one left
    /// over from an earlier join (before a cut, or a rejoin) is never taken for this one.
    Join { from_index: u64, from_epoch: Option<Epoch>, session: u64 },
    /// Active → SL: consecutive records.
    Records(Vec<Record>),
    /// SL → active: every record up to `upto` is durable here (join `session`).
    Ack { upto: u64, session: u64 },
    /// M → SL: "I am M: you hold every record I acknowledged" (join `session`). Before
    /// this message an SL that loses its active goes to X, never SM.
    Promoted { session: u64 },
    /// "Tell me your state": sent by a node that takes back a run it had declared down,
    /// whose State it may have dropped meanwhile. Answered with a State.
    AskState,
    /// M → its confirmed SL: "I stopped the service; you hold every record up to `upto`;
    /// take over". A clean move (switchover, failback, partial failover): no fence needed.
    Handover { upto: u64, reason: HandoverReason },
}

/// What a fence action must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FenceTarget {
    /// One run of the peer, declared down.
    Run(Incarnation),
    /// Whatever runs on the peer node now (a force start fences a peer it cannot see).
    /// Runs up to `known`, the newest this node had heard of when it asked, are stopped
    /// once the fence confirms; a newer run may have started after the power-off.
    Node { known: Option<Incarnation> },
}

/// Inputs of the role machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The peer channel to incarnation `inc` is up (its heartbeats are arriving).
    PeerConnected { inc: Incarnation },
    /// Every link to the peer has been silent for the configured time.
    PeerDown { inc: Incarnation },
    /// Run `inc` of the peer is gone and known not processing: a newer run of the peer
    /// exists (its agent kills what the old run left before it announces itself).
    PeerGone { inc: Incarnation },
    /// The arbiter confirmed that the target is not processing.
    PeerStopped { target: FenceTarget },
    /// The arbiter could not confirm that the target stopped.
    FenceFailed { target: FenceTarget },
    /// A message from incarnation `from` of the peer, whose durable epoch was `epoch`
    /// when it sent it (the fencing token every message carries).
    Message { from: Incarnation, epoch: Epoch, msg: Message },
    /// Client appends, in order.
    Append { entries: Vec<(ReqId, Vec<u8>)> },
    /// The operator's force start (F0.6).
    ForceStart,
    /// `now` reached the instant returned by `poll_timeout`.
    Timeout,
    /// Every resource is down after a `StopService`.
    ServiceStopped,
    /// The service could not run here: a resource would not start (`start`), or kept
    /// failing beyond its restart threshold. Every resource is already down.
    ServiceFailed { start: bool },
    /// The operator's switchover: move the group to the SL (F1.10, F2.4).
    Switchover,
    /// The operator clears the group's failures: it may run here (and on the peer) again.
    ClearFailures,
}

/// Outputs of the role machine, executed by the shell in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Write the durable state (tmp file, fsync, rename, fsync dir) before going on.
    Persist(GroupDurable),
    /// Append records to the local journal and fsync before going on.
    WriteRecords(Vec<Record>),
    /// Cut the local journal after `keep_upto`, keeping the cut records aside
    /// (quarantined, reported, never silently dropped), durably, before going on.
    TruncateLog { keep_upto: u64, reason: DiscardReason },
    /// Send a message, stamped with this node's durable `epoch`, to incarnation `to` of
    /// the peer; dropped if the channel now leads to another incarnation.
    Send { to: Incarnation, epoch: Epoch, msg: Message },
    /// Read records `from..=upto` from the local journal and send them as one
    /// [`Message::Records`], stamped with `epoch`, to incarnation `to`.
    SendRecords { to: Incarnation, epoch: Epoch, from: u64, upto: u64 },
    /// Tell the client its append is durable at `index`.
    AckAppend { req: ReqId, index: u64 },
    /// Tell the client its append was refused.
    RejectAppend { req: ReqId, reason: RejectReason },
    /// Run the group's service.
    StartService,
    /// Stop the group's service.
    StopService,
    /// Fence the peer and report `PeerStopped` or `FenceFailed` for the same target.
    FencePeer { target: FenceTarget },
    /// Tell the operator.
    Report(Report),
}

/// Why an append was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Only an active node (SM or M) takes appends.
    NotActive { role: Role },
    /// This node stopped being active before the record was acknowledged: it was
    /// written here but may not survive (the outcome is unknown).
    Abandoned,
    /// The group is moving to the peer: append there once it is active.
    Moving,
}

/// Why a node entered a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Both nodes up after (X X): this node's priority was higher (F0.4).
    HigherPriority { own: Priority, peer: Priority },
    /// Both nodes up after (X X): the peer's priority was higher (F0.4).
    LowerPriority { own: Priority, peer: Priority },
    /// Only this node up, and its priority is 1 (F0.4).
    AloneWithPriority1,
    /// The operator's force start (F0.6).
    ForceStart,
    /// The peer was started with `--join-only`.
    PeerJoinOnly,
    /// The peer is active: join it as SL (3-1-1, 3-2-1).
    PeerActive,
    /// The SL holds every acknowledged record (1-x-2, 3-x-2).
    Synchronised,
    /// The active was lost before it confirmed the SL's sync (5-2, 5-6).
    ActiveLostBeforeSync,
    /// The active stopped being active while this node was its SL.
    ActiveStopped,
    /// The M was lost and is known stopped: take over (4-3, 4-4).
    Takeover,
    /// The SL was lost and is known stopped (4-1, 4-2).
    SlaveLost,
    /// Two actives met; this one had the older epoch and stopped.
    YieldToNewerEpoch,
    /// The active handed the group over (switchover, failback, partial failover).
    Handover(HandoverReason),
}

/// Why a node in X does not start the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// Alone with priority 2 or 3: the peer may have processed last (F0.4 "undetermined").
    Undetermined { own: Priority },
    /// Both up with the same priority ([1 1] after a force start): an operator must
    /// force-start one node (F0.6).
    EqualPriorities { both: Priority },
    /// This node was started with `--join-only` and waits for an active peer.
    JoinOnly,
    /// Both nodes were started with `--join-only`: an operator must force-start one.
    BothJoinOnly,
    /// The peer still acts on an older incarnation of this node; waiting for it to settle.
    PeerSettling,
}

/// Why a force start was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// This node is already in this role.
    NotStopped { role: Role },
    /// The peer is up and active: nothing to force.
    PeerActive,
    /// The peer is up and the two priorities decide without an operator.
    DecisionPossible,
    /// The peer is up but its state is not known yet, or it is still settling.
    PeerSettling,
    /// A force start is already waiting for the peer to be fenced.
    AlreadyForcing,
}

/// Why a switchover was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SwitchoverRefused {
    /// Only the active node moves its group.
    NotActive { role: Role },
    /// There is no synchronised SL to take the group (it would lose records).
    NoSynchronisedSl,
    /// The group is already moving.
    AlreadyMoving,
    /// The group failed on the peer; clear its failures first.
    PeerFailed,
}

/// Things the operator should hear about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Report {
    Transition {
        from: Role,
        to: Role,
        cause: Cause,
    },
    Waiting(WaitReason),
    /// A force start happened; the peer may still hold priority 1 and start by itself
    /// later: keep it fenced, or start it with `--join-only` until it has rejoined.
    ForceStarted {
        peer: NodeId,
        peer_up: bool,
    },
    ForceStartRefused(RefuseReason),
    /// The peer came up while the force start was fencing it: the force start was
    /// dropped and the two nodes decide as usual.
    ForceStartCancelled,
    /// This node cut records while rejoining; they were quarantined.
    Discarded {
        count: u64,
        reason: DiscardReason,
    },
    /// The SM lost its SL; it continues alone (5-3, 5-7).
    SlaveLost {
        inc: Incarnation,
    },
    FenceRequested {
        target: FenceTarget,
    },
    FenceFailed {
        target: FenceTarget,
    },
    /// Both nodes were active at once; the one with the older epoch stops.
    TwoActives {
        own: Epoch,
        peer: Epoch,
    },
    /// The peer speaks for a newer generation than this active node's: this node stops
    /// being active before it writes anything more.
    NewerGeneration {
        own: Epoch,
        peer: Epoch,
    },
    /// The SL waits `fence_delay` before fencing its lost active, so that the active wins
    /// a fence race.
    FenceDelayed {
        target: FenceTarget,
    },
    /// A run of the peer that a fence confirmed stopped is alive again.
    StoppedRunAlive {
        inc: Incarnation,
    },
    /// The lost run came back before its fence started: it is trusted again.
    FenceCancelled {
        target: FenceTarget,
    },
    /// The active stops the service to hand the group over.
    HandoverStarted {
        reason: HandoverReason,
    },
    /// The service is stopped and the SL holds everything: it takes over now.
    HandedOver {
        reason: HandoverReason,
    },
    SwitchoverRefused(SwitchoverRefused),
    /// The group cannot run here and will not move: it stays stopped until the operator
    /// clears its failures. `peer_failed`: it failed on the peer too.
    GroupFailed {
        start: bool,
        peer_failed: bool,
    },
    FailuresCleared,
    /// A message broke the protocol and was dropped.
    MalformedMessage {
        what: &'static str,
    },
}

/// A snapshot of the group for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub role: Role,
    pub durable: GroupDurable,
    pub last_index: u64,
    pub peer: PeerStatus,
    /// Known durable position of the SL (on an active) or of this node (on an SL).
    pub sl_durable: Option<u64>,
    /// Appends waiting for their acknowledgement.
    pub pending_appends: usize,
    /// What is being fenced, if anything.
    pub fencing: Option<FenceTarget>,
    pub waiting: Option<WaitReason>,
    /// On an SL: whether its active confirmed the sync (it may take over).
    pub sl_confirmed: bool,
    /// On an active: the group is being handed over to the SL.
    pub moving: Option<HandoverReason>,
    /// On an active: the group cannot run here and waits for the operator.
    pub failed: bool,
    /// The group failed on the peer (it handed the group over for that reason).
    pub peer_failed: bool,
}

/// What the group knows of its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    Unknown,
    Up { inc: Incarnation, role: Option<Role>, priority: Option<Priority>, last_index: Option<u64> },
    Down { inc: Incarnation, stopped: bool },
}

/// One node's half of a group's role machine. See the module docs for the contract.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    cfg: GroupConfig,
    /// This node's own incarnation.
    incarnation: Incarnation,
    durable: GroupDurable,
    log: LogMeta,
    role: RoleState,
    peer: PeerView,
    fence: Option<Fence>,
    /// The highest epoch the peer ever stated in this run; a new epoch goes above it.
    peer_epoch: Epoch,
    /// Joins sent in this run, numbering them.
    joins: u64,
    /// The peer handed the group over because it could not run it there.
    peer_failed: bool,
    out: VecDeque<Command>,
    #[cfg(feature = "mutants")]
    mutant: Mutant,
    /// The priority write a mutant holds back until after the next event's actions.
    #[cfg(feature = "mutants")]
    deferred: Option<Command>,
}

/// Deliberate bugs the model checker must catch (feature `mutants`, for the checker's own
/// tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mutant {
    #[default]
    None,
    /// Enter SM and act in it (start, acknowledge the next appends) before the new
    /// priority is durable: the write is held back until after the next event.
    ActBeforePersist,
    /// In M, acknowledge an append after the local fsync, before the SL has it.
    AckBeforeSlHasRecord,
    /// Take over from a lost peer without waiting for the arbiter (no fence).
    NoFenceWait,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PeerView {
    /// Nothing heard since boot.
    Unknown,
    /// Connected to incarnation `inc`; `state` is its last State message.
    Up { inc: Incarnation, state: Option<PeerState> },
    /// Incarnation `inc` was declared down; `stopped` once known not processing.
    Down { inc: Incarnation, stopped: bool },
    /// Run `inc` stopped and a newer run of the peer is alive but not connected yet: the
    /// peer is up, so a node in X waits for it rather than deciding alone.
    Replaced { inc: Incarnation },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RoleState {
    /// `forcing`: a force start waits for the peer node to be fenced.
    X {
        phase: XPhase,
        waiting: Option<WaitReason>,
        forcing: bool,
    },
    Sl(Slave),
    Active(Active),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum XPhase {
    /// Just recovered: waiting up to `until` for the peer (F0.5).
    Booting { until: Instant },
    /// Deciding as soon as the facts allow.
    Ready,
    /// This node handed the group to its SL (run `to`) and waits for it to be active; it
    /// must not decide by priorities meanwhile (the SL's last state is stale).
    HandedOver { to: Incarnation, upto: u64, reason: HandoverReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Slave {
    /// The incarnation of the active this node follows.
    master: Incarnation,
    /// Join sent; records are flowing.
    joined: bool,
    /// The active sent Promoted: this node holds every acknowledged record.
    confirmed: bool,
    /// The active was lost; waiting for the arbiter before taking over.
    taking_over: bool,
    /// The number of the current join (see [`Message::Join`]).
    session: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Active {
    /// M (true) or SM (false).
    master: bool,
    sl: Option<SlLink>,
    /// Appends written locally and waiting for the SL (in order of index).
    pending: VecDeque<(u64, ReqId)>,
    /// Every record up to here may have been acknowledged without the SL.
    local_acked_upto: u64,
    /// M only: the SL was lost; waiting for the arbiter before M → SM.
    lost_sl: Option<Incarnation>,
    /// Where the resources are.
    service: Service,
    /// The group is being handed over.
    handover: Option<HandoverReason>,
    /// Automatic failback to the preferred peer is due at this instant.
    failback_at: Option<Instant>,
}

/// The resources as a whole, as the group sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Service {
    Running,
    Stopping,
    Stopped,
    /// Could not run here; stopped until the operator clears the failures.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SlLink {
    inc: Incarnation,
    /// Its Join arrived on the current channel; cleared when the channel is rebuilt.
    joined: bool,
    /// Promoted was sent after this Join (it is sent again after a rejoin: the first may
    /// have been lost with the channel).
    confirmed: bool,
    /// The SL's durable position.
    durable: u64,
    /// Records up to here were sent to it.
    sent: u64,
    /// The join this link serves.
    session: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Fence {
    target: FenceTarget,
    /// The fence action is under way in the shell (FencePeer emitted, no result yet).
    running: bool,
    /// When to start it (after the fence-race delay, or the retry interval).
    start_at: Option<Instant>,
    /// The fenced run connected again while the fence was running: if the fence fails,
    /// nothing was done to it and it is accepted again.
    returned: bool,
}

impl Group {
    /// Starts the machine after a (re)start of the node, in X, waiting for the peer
    /// (F0.5). `join_only` is the `--join-only` start flag; it is made durable first.
    pub fn boot(
        cfg: GroupConfig,
        incarnation: Incarnation,
        durable: GroupDurable,
        log: LogMeta,
        join_only: bool,
        now: Instant,
    ) -> Group {
        let until = now.after(cfg.startup_wait);
        let mut group = Group {
            cfg,
            incarnation,
            durable,
            log,
            role: RoleState::X { phase: XPhase::Booting { until }, waiting: None, forcing: false },
            peer: PeerView::Unknown,
            fence: None,
            peer_epoch: Epoch::ZERO,
            joins: 0,
            peer_failed: false,
            out: VecDeque::new(),
            #[cfg(feature = "mutants")]
            mutant: Mutant::None,
            #[cfg(feature = "mutants")]
            deferred: None,
        };
        if join_only && !group.durable.join_only {
            group.durable.join_only = true;
            group.emit(Command::Persist(group.durable));
        }
        group
    }

    /// Turns on a deliberate bug (model checker tests only).
    #[cfg(feature = "mutants")]
    pub fn set_mutant(&mut self, mutant: Mutant) {
        self.mutant = mutant;
    }

    fn mutant(&self) -> Mutant {
        #[cfg(feature = "mutants")]
        return self.mutant;
        #[cfg(not(feature = "mutants"))]
        return Mutant::None;
    }

    /// Feeds one event. Commands queue up for [`Group::poll_command`].
    pub fn handle(&mut self, now: Instant, event: Event) {
        #[cfg(feature = "mutants")]
        let held = self.deferred.take();
        match event {
            Event::PeerConnected { inc } => self.on_peer_connected(now, inc),
            Event::PeerDown { inc } => self.on_peer_down(now, inc),
            Event::PeerGone { inc } => self.on_peer_gone(now, inc),
            Event::PeerStopped { target } => self.on_peer_stopped(now, target),
            Event::FenceFailed { target } => self.on_fence_failed(now, target),
            Event::Message { from, epoch, msg } => self.on_message(now, from, epoch, msg),
            Event::Append { entries } => self.on_append(entries),
            Event::ForceStart => self.on_force_start(now),
            Event::Timeout => self.on_timeout(now),
            Event::ServiceStopped => self.on_service_stopped(now),
            Event::ServiceFailed { start } => self.on_service_failed(now, start),
            Event::Switchover => self.on_switchover(now),
            Event::ClearFailures => self.on_clear_failures(now),
        }
        #[cfg(feature = "mutants")]
        if let Some(persist) = held {
            self.out.push_back(persist);
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }

    /// The next command to execute, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// When to call `handle(now, Event::Timeout)`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let boot = match self.role {
            RoleState::X { phase: XPhase::Booting { until }, .. } => Some(until),
            _ => None,
        };
        let fence = self.fence.filter(|it| !it.running).and_then(|it| it.start_at);
        let failback = match &self.role {
            RoleState::Active(a) => a.failback_at,
            _ => None,
        };
        let fence = match (fence, failback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (boot, fence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The seed-000 role of this node.
    pub fn role(&self) -> Role {
        match &self.role {
            RoleState::X { .. } => Role::X,
            RoleState::Sl(_) => Role::Sl,
            RoleState::Active(a) if a.master => Role::M,
            RoleState::Active(_) => Role::Sm,
        }
    }

    /// The durable state as this machine last asked for it to be written.
    pub fn durable(&self) -> GroupDurable {
        self.durable
    }

    /// The metadata of the local log as this machine last asked for it to be written.
    pub fn log(&self) -> &LogMeta {
        &self.log
    }

    pub fn config(&self) -> &GroupConfig {
        &self.cfg
    }

    /// On an SL: the incarnation of the active it follows, and whether that active
    /// confirmed the sync.
    pub fn following(&self) -> Option<(Incarnation, bool)> {
        match &self.role {
            RoleState::Sl(s) => Some((s.master, s.confirmed)),
            _ => None,
        }
    }

    /// On an active: the incarnation of its SL, if one has joined.
    pub fn followed_by(&self) -> Option<Incarnation> {
        match &self.role {
            RoleState::Active(a) => a.sl.map(|it| it.inc),
            _ => None,
        }
    }

    /// A snapshot for `status`.
    pub fn status(&self) -> GroupStatus {
        let peer = match &self.peer {
            PeerView::Unknown => PeerStatus::Unknown,
            PeerView::Up { inc, state } => PeerStatus::Up {
                inc: *inc,
                role: state.as_ref().map(|it| it.role),
                priority: state.as_ref().map(|it| it.priority),
                last_index: state.as_ref().map(|it| it.log.last_index()),
            },
            PeerView::Down { inc, stopped } => PeerStatus::Down { inc: *inc, stopped: *stopped },
            PeerView::Replaced { inc } => PeerStatus::Down { inc: *inc, stopped: true },
        };
        let (sl_durable, pending_appends, waiting, sl_confirmed) = match &self.role {
            RoleState::X { waiting, .. } => (None, 0, *waiting, false),
            RoleState::Sl(s) => (Some(self.log.last_index()), 0, None, s.confirmed),
            RoleState::Active(a) => (a.sl.map(|it| it.durable), a.pending.len(), None, false),
        };
        let (moving, failed) = match &self.role {
            RoleState::Active(a) => (a.handover, a.service == Service::Failed),
            _ => (None, false),
        };
        GroupStatus {
            role: self.role(),
            durable: self.durable,
            last_index: self.log.last_index(),
            peer,
            sl_durable,
            pending_appends,
            fencing: self.fence.map(|it| it.target),
            waiting,
            sl_confirmed,
            moving,
            failed,
            peer_failed: self.peer_failed,
        }
    }

    /// The state statement this node sends to its peer.
    pub fn state_message(&self) -> PeerState {
        PeerState {
            role: self.role(),
            priority: self.durable.priority,
            epoch: self.durable.epoch,
            join_only: self.durable.join_only,
            following: self.following().map(|(inc, _)| inc),
            log: self.log.clone(),
        }
    }

    /// Checks the machine's own invariants; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(p) = self.role().priority_on_entry()
            && self.durable.priority != p
        {
            return Err(format!("role {} with priority {}", self.role(), self.durable.priority));
        }
        if let Some(last) = self.log.last_epoch()
            && last > self.durable.epoch
        {
            return Err(format!("log epoch {last} above durable epoch {}", self.durable.epoch));
        }
        if let RoleState::Active(a) = &self.role {
            if a.local_acked_upto > self.log.last_index() {
                return Err("local acknowledgements past the log".into());
            }
            if let Some(sl) = a.sl
                && (sl.durable > sl.sent || sl.sent > self.log.last_index())
            {
                return Err(format!("SL link durable {} sent {} last {}", sl.durable, sl.sent, self.log.last_index()));
            }
            if a.lost_sl.is_some() && (!a.master || a.sl.is_some()) {
                return Err("lost SL outside M".into());
            }
            let mut prev = a.local_acked_upto;
            for &(index, _) in &a.pending {
                if index <= prev || index > self.log.last_index() {
                    return Err("pending appends out of order".into());
                }
                prev = index;
            }
        }
        Ok(())
    }

    fn emit(&mut self, command: Command) {
        self.out.push_back(command);
    }

    fn report(&mut self, report: Report) {
        self.emit(Command::Report(report));
    }

    fn peer_state(&self) -> Option<&PeerState> {
        match &self.peer {
            PeerView::Up { state, .. } => state.as_ref(),
            _ => None,
        }
    }

    fn send(&mut self, msg: Message) {
        if let PeerView::Up { inc, .. } = self.peer {
            let epoch = self.durable.epoch;
            self.emit(Command::Send { to: inc, epoch, msg });
        }
    }

    fn send_state(&mut self) {
        let state = self.state_message();
        self.send(Message::State(state));
    }

    fn on_peer_connected(&mut self, now: Instant, inc: Incarnation) {
        match self.peer.clone() {
            PeerView::Unknown => {}
            PeerView::Up { inc: cur, .. } if cur == inc => {
                // The channel to the same run was re-established: messages in flight may
                // have been lost, so replication restarts from the durable positions.
                match &mut self.role {
                    RoleState::Sl(s) if s.master == inc => s.joined = false,
                    RoleState::Active(a) => {
                        if let Some(sl) = &mut a.sl
                            && sl.inc == inc
                        {
                            sl.joined = false;
                        }
                    }
                    _ => {}
                }
            }
            PeerView::Up { inc: cur, .. } | PeerView::Down { inc: cur, .. } | PeerView::Replaced { inc: cur }
                if cur > inc =>
            {
                return;
            }
            PeerView::Replaced { .. } => {}
            PeerView::Up { inc: cur, .. } => {
                // A newer run of the peer proves the older one has stopped; the peer is up,
                // so nothing decides as if this node were alone.
                self.peer = PeerView::Replaced { inc: cur };
                self.peer_lost(now, cur, true);
            }
            PeerView::Down { inc: cur, stopped } if cur < inc => {
                if !stopped {
                    self.run_stopped(now, cur);
                }
            }
            PeerView::Down { stopped, .. } => {
                // The same run is back after being declared down. Once it was confirmed
                // stopped, or while a fence is deciding its fate, it is not trusted again.
                let fence = self.fence.filter(|it| it.target == FenceTarget::Run(inc));
                if stopped {
                    // A run confirmed stopped is alive: the fence lied, or the node was
                    // revived. It is accepted, so that it hears this node's newer epoch on
                    // the first message and stops being active if it still is.
                    self.report(Report::StoppedRunAlive { inc });
                }
                if let Some(running) = self.fence.as_mut().filter(|it| it.target == FenceTarget::Run(inc) && it.running)
                {
                    running.returned = true;
                    return;
                }
                // Its fence had not started (the fence-race delay, or waiting for a
                // retry): nothing acted on the loss yet, so the run is trusted again.
                if fence.is_some() {
                    self.fence = None;
                    self.report(Report::FenceCancelled { target: FenceTarget::Run(inc) });
                }
                match &mut self.role {
                    RoleState::Sl(s) if s.master == inc => {
                        s.taking_over = false;
                        s.joined = false;
                    }
                    RoleState::Active(a) if a.lost_sl == Some(inc) => a.lost_sl = None,
                    _ => {}
                }
            }
        }
        let returning = matches!(self.peer, PeerView::Down { inc: cur, .. } if cur == inc);
        self.peer = PeerView::Up { inc, state: None };
        self.send_state();
        if returning {
            self.send(Message::AskState);
        }
        self.try_decide(now);
    }

    fn on_peer_down(&mut self, now: Instant, inc: Incarnation) {
        match self.peer {
            PeerView::Up { inc: cur, .. } if cur == inc => {}
            PeerView::Replaced { inc: cur } if cur == inc => {
                // The newer run died before it connected: the peer is down now.
                self.peer = PeerView::Down { inc, stopped: true };
                self.try_decide(now);
                return;
            }
            _ => return,
        }
        self.peer = PeerView::Down { inc, stopped: false };
        self.peer_lost(now, inc, false);
    }

    fn on_peer_gone(&mut self, now: Instant, inc: Incarnation) {
        match self.peer {
            PeerView::Up { inc: cur, .. } if cur == inc => {
                self.peer = PeerView::Replaced { inc };
                self.peer_lost(now, inc, true);
            }
            PeerView::Down { inc: cur, stopped } if cur == inc => {
                self.peer = PeerView::Replaced { inc };
                if !stopped {
                    self.run_stopped(now, inc);
                }
            }
            _ => {}
        }
    }

    /// The peer's run `inc` is gone; `stopped` if it is already known not processing.
    fn peer_lost(&mut self, now: Instant, inc: Incarnation, stopped: bool) {
        match &mut self.role {
            RoleState::X { phase, .. } => {
                // The SL this node handed the group to is gone before it took over: the
                // ordinary rules decide again (this node still holds priority 2). Only once
                // it is known stopped: a merely suspected SL may still act on the Handover,
                // and deciding by priority then made two actives (found by the model check).
                if stopped && matches!(*phase, XPhase::HandedOver { to, .. } if to == inc) {
                    *phase = XPhase::Ready;
                }
                self.try_decide(now)
            }
            RoleState::Sl(s) => {
                if s.master == inc && s.confirmed {
                    s.taking_over = true;
                    self.arbitrate(now, inc, stopped);
                } else {
                    self.enter_x(now, Cause::ActiveLostBeforeSync);
                }
            }
            RoleState::Active(a) => {
                // An M's peer is its SL, joined or rejoining: whatever the link's state,
                // that peer may hold everything and take over, so it must be known
                // stopped before M → SM.
                if a.master {
                    if a.lost_sl.is_some() {
                        return;
                    }
                    a.sl = None;
                    a.lost_sl = Some(inc);
                    self.arbitrate(now, inc, stopped);
                    return;
                }
                if a.sl.is_none_or(|it| it.inc != inc) {
                    return;
                }
                a.sl = None;
                {
                    // SM keeps processing; appends held for the SL are durable locally.
                    self.ack_all_pending();
                    self.report(Report::SlaveLost { inc });
                }
            }
        }
    }

    /// Asks the arbiter whether `inc` stopped, unless that is already known.
    fn arbitrate(&mut self, now: Instant, inc: Incarnation, stopped: bool) {
        let skip = self.cfg.arbiter == Arbiter::UnsafeAssumeCrashStop || self.mutant() == Mutant::NoFenceWait;
        if stopped || skip {
            self.run_stopped(now, inc);
            return;
        }
        // The SL of a lost M lets the M win a fence race; the M fences at once.
        let delay = matches!(self.role, RoleState::Sl(_)) && !self.cfg.fence_delay.is_zero();
        let start_at = delay.then(|| now.after(self.cfg.fence_delay));
        self.request_fence(FenceTarget::Run(inc), start_at);
    }

    /// Fences `target` now, or at `start_at`.
    fn request_fence(&mut self, target: FenceTarget, start_at: Option<Instant>) {
        if self.fence.is_some_and(|it| it.target == target) {
            return;
        }
        match start_at {
            Some(at) => {
                self.fence = Some(Fence { target, running: false, start_at: Some(at), returned: false });
                self.report(Report::FenceDelayed { target });
            }
            None => {
                self.fence = Some(Fence { target, running: true, start_at: None, returned: false });
                self.emit(Command::FencePeer { target });
                self.report(Report::FenceRequested { target });
            }
        }
    }

    fn on_peer_stopped(&mut self, now: Instant, target: FenceTarget) {
        if self.fence.is_some_and(|it| it.target == target) {
            self.fence = None;
        }
        match target {
            FenceTarget::Run(inc) => self.run_stopped(now, inc),
            FenceTarget::Node { known } => {
                // The node was powered off after the request: every run known then is
                // stopped. A newer run booted after the power-off and is left alone.
                let covered = |inc: Incarnation| known.is_some_and(|it| inc <= it);
                match self.peer {
                    PeerView::Up { inc, .. } if covered(inc) => {
                        self.peer = PeerView::Down { inc, stopped: true };
                        self.peer_lost(now, inc, true);
                    }
                    PeerView::Down { inc, stopped: false } if covered(inc) => self.run_stopped(now, inc),
                    _ => {}
                }
                if let RoleState::X { forcing, .. } = &mut self.role
                    && *forcing
                {
                    if matches!(self.peer, PeerView::Up { .. }) {
                        // A run of the peer booted after the power-off and is up: the
                        // peer is no longer gone, so the normal decision applies.
                        *forcing = false;
                        self.report(Report::ForceStartCancelled);
                        self.try_decide(now);
                    } else {
                        self.finish_force_start(now);
                    }
                }
            }
        }
    }

    /// Run `inc` of the peer is known not to be processing.
    fn run_stopped(&mut self, now: Instant, inc: Incarnation) {
        // A fence of that run, pending or waiting for a retry, has nothing left to prove.
        if self.fence.is_some_and(|it| it.target == FenceTarget::Run(inc)) {
            self.fence = None;
        }
        if let PeerView::Down { inc: cur, stopped } = &mut self.peer
            && *cur == inc
        {
            *stopped = true;
        }
        match &self.role {
            RoleState::Sl(s) if s.master == inc && s.taking_over => self.become_sm(now, Cause::Takeover),
            RoleState::Active(a) if a.lost_sl == Some(inc) => self.become_sm(now, Cause::SlaveLost),
            // The run this node handed the group to is now known stopped (fenced, or a
            // newer incarnation seen) before it took over: decide again.
            RoleState::X { phase: XPhase::HandedOver { to, .. }, .. } if *to == inc => {
                if let RoleState::X { phase, .. } = &mut self.role {
                    *phase = XPhase::Ready;
                }
                self.try_decide(now);
            }
            _ => {}
        }
    }

    fn on_fence_failed(&mut self, now: Instant, target: FenceTarget) {
        if let Some(fence) = &mut self.fence
            && fence.target == target
            && fence.running
        {
            fence.running = false;
            fence.start_at = Some(now.after(self.cfg.fence_retry));
            let returned = fence.returned;
            self.report(Report::FenceFailed { target });
            // The run it aimed at came back meanwhile and the fence did nothing to it:
            // accept it (this cancels the pending retry) rather than fence it forever.
            if returned && let FenceTarget::Run(inc) = target {
                self.on_peer_connected(now, inc);
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let RoleState::X { phase, .. } = &mut self.role
            && let XPhase::Booting { until } = *phase
            && until <= now
        {
            *phase = XPhase::Ready;
            self.try_decide(now);
        }
        if let Some(fence) = &mut self.fence
            && !fence.running
            && fence.start_at.is_some_and(|at| at <= now)
        {
            fence.running = true;
            fence.start_at = None;
            let target = fence.target;
            self.emit(Command::FencePeer { target });
            self.report(Report::FenceRequested { target });
        }
        if let RoleState::Active(a) = &mut self.role
            && a.failback_at.is_some_and(|at| at <= now)
        {
            a.failback_at = None;
            let ready = a.handover.is_none() && a.service == Service::Running && !self.peer_failed;
            if ready && self.synchronised_sl().is_some() {
                self.begin_handover(now, HandoverReason::Failback);
            }
        }
    }

    fn on_message(&mut self, now: Instant, from: Incarnation, epoch: Epoch, msg: Message) {
        match &self.peer {
            PeerView::Up { inc, .. } if *inc == from => {}
            _ => return,
        }
        self.peer_epoch = self.peer_epoch.max(epoch);
        // Fencing token: a peer that speaks for a newer generation (an active, or an SL
        // following one) means this node is a stale active — paused, or cut off while the
        // peer took over. It stops before it writes or acknowledges anything more. A peer
        // merely in X with a newer epoch is not processing and changes nothing.
        let idle = matches!(&msg, Message::State(it) if it.role == Role::X);
        if matches!(self.role, RoleState::Active(_)) && epoch > self.durable.epoch && !idle {
            self.report(Report::NewerGeneration { own: self.durable.epoch, peer: epoch });
            // What the peer said before is outdated by this very message: nothing may be
            // decided on it while yielding (the message itself is handled next).
            if let PeerView::Up { state, .. } = &mut self.peer {
                *state = None;
            }
            self.yield_active(now);
        }
        let PeerView::Up { state, .. } = &mut self.peer else { return };
        match msg {
            Message::State(peer_state) => {
                self.peer_epoch = self.peer_epoch.max(peer_state.epoch);
                *state = Some(peer_state);
                self.on_peer_state(now, from);
            }
            Message::Join { from_index, from_epoch, session } => {
                self.on_join(now, from, from_index, from_epoch, session)
            }
            Message::Handover { upto, reason } => self.on_handover(now, from, upto, reason),
            Message::Records(records) => self.on_records(from, records),
            Message::Ack { upto, session } => self.on_ack(now, from, upto, session),
            Message::AskState => self.send_state(),
            Message::Promoted { session } => {
                if let RoleState::Sl(s) = &mut self.role
                    && s.master == from
                    && s.joined
                    && s.session == session
                    && !s.confirmed
                {
                    s.confirmed = true;
                }
            }
        }
    }

    fn on_peer_state(&mut self, now: Instant, from: Incarnation) {
        let Some(peer_state) = self.peer_state() else {
            return;
        };
        let (peer_role, peer_epoch) = (peer_state.role, peer_state.epoch);
        match &self.role {
            RoleState::X { phase: XPhase::HandedOver { to, upto, reason }, .. } => {
                // The SL still follows this node: the Handover was lost with a channel.
                if *to == from && peer_role == Role::Sl {
                    let (upto, reason) = (*upto, *reason);
                    self.send(Message::Handover { upto, reason });
                }
                self.try_decide(now);
            }
            RoleState::X { .. } => self.try_decide(now),
            RoleState::Sl(s) => {
                if s.master != from {
                    return;
                }
                if peer_role.is_active() {
                    self.try_join();
                } else {
                    self.enter_x(now, Cause::ActiveStopped);
                }
            }
            RoleState::Active(a) => {
                if peer_role.is_active() {
                    let own = self.durable.epoch;
                    // The older generation yields on the message's stamp (on_message); this
                    // node holds the newer or the same epoch.
                    self.report(Report::TwoActives { own, peer: peer_epoch });
                } else if peer_role != Role::Sl && a.sl.is_some_and(|it| it.inc == from) {
                    // Our SL says it stopped following: it will not take over.
                    self.peer_lost(now, from, true);
                }
            }
        }
    }

    fn on_join(&mut self, now: Instant, from: Incarnation, from_index: u64, from_epoch: Option<Epoch>, session: u64) {
        let RoleState::Active(a) = &mut self.role else {
            return;
        };
        if a.lost_sl.is_some() {
            return;
        }
        if from_index > self.log.last_index() || self.log.epoch_at(from_index) != from_epoch {
            self.report(Report::MalformedMessage { what: "join position not in the active's log" });
            return;
        }
        a.sl =
            Some(SlLink { inc: from, joined: true, confirmed: false, durable: from_index, sent: from_index, session });
        // The join position is durable on the SL: appends held for an acknowledgement
        // lost with the previous channel are released by it.
        self.ack_held_by_sl();
        self.continue_catch_up();
        self.check_promotion(now);
        self.try_finish_handover(now);
    }

    fn on_records(&mut self, from: Incarnation, records: Vec<Record>) {
        let RoleState::Sl(s) = &self.role else { return };
        if s.master != from || !s.joined {
            return;
        }
        let Some(active_epoch) = self.peer_state().map(|it| it.epoch) else {
            return;
        };
        let mut last_index = self.log.last_index();
        let mut last_epoch = self.log.last_epoch().unwrap_or(Epoch::ZERO);
        let mut fresh = Vec::with_capacity(records.len());
        for record in records {
            if record.index <= last_index && fresh.is_empty() {
                continue; // Already here (a resend after a rejoin).
            }
            let problem = if !record.verify() {
                Some("record checksum mismatch")
            } else if record.index != last_index + 1 {
                Some("records not consecutive")
            } else if record.epoch < last_epoch || record.epoch > active_epoch {
                Some("record epoch out of order")
            } else {
                None
            };
            if let Some(what) = problem {
                self.report(Report::MalformedMessage { what });
                return;
            }
            last_index = record.index;
            last_epoch = record.epoch;
            fresh.push(record);
        }
        if fresh.is_empty() {
            return;
        }
        for record in &fresh {
            self.log.push(record.epoch, 1);
        }
        // The active may have begun a newer epoch since this node joined: that epoch is
        // made durable here before any record of it is written or acknowledged.
        if last_epoch > self.durable.epoch {
            self.durable.epoch = last_epoch;
            self.emit(Command::Persist(self.durable));
        }
        let upto = self.log.last_index();
        self.emit(Command::WriteRecords(fresh));
        let session = match &self.role {
            RoleState::Sl(s) => s.session,
            _ => 0,
        };
        self.send(Message::Ack { upto, session });
    }

    fn on_ack(&mut self, now: Instant, from: Incarnation, upto: u64, session: u64) {
        let RoleState::Active(a) = &mut self.role else {
            return;
        };
        let Some(sl) = &mut a.sl else { return };
        if sl.inc != from || !sl.joined || sl.session != session {
            return; // An acknowledgement of an earlier join: its positions may since be cut.
        }
        if upto > sl.sent {
            self.report(Report::MalformedMessage { what: "acknowledgement past what was sent" });
            return;
        }
        sl.durable = sl.durable.max(upto);
        self.ack_held_by_sl();
        self.continue_catch_up();
        self.check_promotion(now);
        self.try_finish_handover(now);
    }

    /// Acknowledges, in order, the held appends that the SL now holds durably.
    fn ack_held_by_sl(&mut self) {
        let RoleState::Active(a) = &mut self.role else { return };
        let Some(durable) = a.sl.filter(|it| it.joined).map(|it| it.durable) else { return };
        while let Some(&(index, req)) = a.pending.front() {
            if index > durable {
                break;
            }
            a.pending.pop_front();
            self.out.push_back(Command::AckAppend { req, index });
        }
    }

    /// Sends the next catch-up batch once the SL has everything sent so far.
    fn continue_catch_up(&mut self) {
        let RoleState::Active(a) = &mut self.role else {
            return;
        };
        let Some(sl) = &mut a.sl else { return };
        let last = self.log.last_index();
        if sl.joined && sl.sent < last && sl.durable == sl.sent {
            let from = sl.sent + 1;
            let upto = last.min(sl.sent + self.cfg.catch_up_window.max(1));
            sl.sent = upto;
            let to = sl.inc;
            let epoch = self.durable.epoch;
            self.emit(Command::SendRecords { to, epoch, from, upto });
        }
    }

    /// SM → M once the SL is streaming live and holds every record that may have been
    /// acknowledged without it; then 2 is made durable, then the SL is told. An M tells a
    /// rejoined SL again once it is caught up.
    fn check_promotion(&mut self, now: Instant) {
        let last = self.log.last_index();
        let RoleState::Active(a) = &mut self.role else { return };
        let Some(sl) = &mut a.sl else { return };
        if !sl.joined || sl.confirmed || sl.sent != last || sl.durable < a.local_acked_upto {
            return;
        }
        sl.confirmed = true;
        let session = sl.session;
        let promote = !a.master;
        if promote {
            a.master = true;
            if self.cfg.failback == Failback::Auto && !self.cfg.preferred {
                a.failback_at = Some(now.after(self.cfg.failback_delay));
            }
            self.durable.priority = Priority::P2;
            self.durable.role = Role::M;
            self.emit(Command::Persist(self.durable));
            self.report(Report::Transition { from: Role::Sm, to: Role::M, cause: Cause::Synchronised });
        }
        self.send(Message::Promoted { session });
        if promote {
            self.send_state();
        }
    }

    fn on_append(&mut self, entries: Vec<(ReqId, Vec<u8>)>) {
        if entries.is_empty() {
            return;
        }
        let role = self.role();
        let mutant = self.mutant();
        let moving = matches!(&self.role, RoleState::Active(a) if a.handover.is_some());
        let RoleState::Active(a) = &mut self.role else {
            for (req, _) in entries {
                self.emit(Command::RejectAppend { req, reason: RejectReason::NotActive { role } });
            }
            return;
        };
        if moving {
            for (req, _) in entries {
                self.out.push_back(Command::RejectAppend { req, reason: RejectReason::Moving });
            }
            return;
        }
        let epoch = self.durable.epoch;
        let first = self.log.last_index() + 1;
        let records: Vec<Record> = entries
            .iter()
            .zip(first..)
            .map(|((_, payload), index)| Record::new(epoch, index, payload.clone()))
            .collect();
        self.log.push(epoch, records.len() as u64);
        let last = self.log.last_index();
        // Live streaming: the SL already has (or was sent) everything before these.
        let live = a.sl.filter(|it| it.joined && it.sent == first - 1).map(|it| it.inc);
        if let Some(sl) = &mut a.sl
            && live.is_some()
        {
            sl.sent = last;
        }
        let ack_early = a.master && mutant == Mutant::AckBeforeSlHasRecord;
        let wait_for_sl = (a.master || live.is_some()) && !ack_early;
        // Appends held for an SL whose stream was reset since: in SM they are durable
        // here, so they are acknowledged first, keeping acknowledgements in index order.
        let held = if wait_for_sl { VecDeque::new() } else { std::mem::take(&mut a.pending) };
        if wait_for_sl {
            a.pending.extend(entries.iter().zip(first..).map(|((req, _), index)| (index, *req)));
        } else {
            a.local_acked_upto = last;
        }
        self.out.push_back(Command::WriteRecords(records.clone()));
        for (index, req) in held {
            self.out.push_back(Command::AckAppend { req, index });
        }
        if let Some(to) = live {
            self.out.push_back(Command::Send { to, epoch, msg: Message::Records(records) });
        }
        if !wait_for_sl {
            for ((req, _), index) in entries.iter().zip(first..) {
                self.out.push_back(Command::AckAppend { req: *req, index });
            }
        }
    }

    fn on_force_start(&mut self, now: Instant) {
        let refuse = match &self.role {
            RoleState::X { forcing: true, .. } => Some(RefuseReason::AlreadyForcing),
            RoleState::X { .. } => match &self.peer {
                PeerView::Up { state: None, .. } => Some(RefuseReason::PeerSettling),
                PeerView::Up { state: Some(ps), .. } => match ps.role {
                    Role::Sm | Role::M => Some(RefuseReason::PeerActive),
                    Role::Sl => Some(RefuseReason::PeerSettling),
                    Role::X => {
                        let both_join_only = self.durable.join_only && ps.join_only;
                        let equal = !self.durable.join_only && !ps.join_only && self.durable.priority == ps.priority;
                        (!both_join_only && !equal).then_some(RefuseReason::DecisionPossible)
                    }
                },
                PeerView::Replaced { .. } => Some(RefuseReason::PeerSettling),
                PeerView::Unknown | PeerView::Down { .. } => None,
            },
            _ => Some(RefuseReason::NotStopped { role: self.role() }),
        };
        if let Some(reason) = refuse {
            self.report(Report::ForceStartRefused(reason));
            return;
        }
        // The peer may be running unseen (not heard yet, cut off, or about to be forced
        // by another operator): it is fenced first, as Pacemaker's startup fencing does,
        // unless the unsafe arbiter is configured.
        if self.cfg.arbiter == Arbiter::UnsafeAssumeCrashStop {
            self.finish_force_start(now);
        } else {
            if let RoleState::X { forcing, .. } = &mut self.role {
                *forcing = true;
            }
            let known = match self.peer {
                PeerView::Up { inc, .. } | PeerView::Down { inc, .. } | PeerView::Replaced { inc } => Some(inc),
                PeerView::Unknown => None,
            };
            self.request_fence(FenceTarget::Node { known }, None);
        }
    }

    fn finish_force_start(&mut self, now: Instant) {
        let peer_up = matches!(self.peer, PeerView::Up { .. });
        self.become_sm(now, Cause::ForceStart);
        self.report(Report::ForceStarted { peer: self.cfg.peer, peer_up });
    }

    /// The seed's decision for a node in X (F0.4, F0.5), taken whenever facts change.
    fn try_decide(&mut self, now: Instant) {
        let RoleState::X { phase, forcing: false, .. } = self.role else {
            return;
        };
        if let XPhase::HandedOver { to, .. } = phase {
            // Only the peer's taking over ends this phase (or its loss, via peer_lost).
            if let PeerView::Up { inc, state: Some(ps) } = &self.peer
                && *inc == to
                && ps.role.is_active()
            {
                self.become_sl(to, Cause::PeerActive);
            }
            return;
        }
        let booting = matches!(phase, XPhase::Booting { until } if until > now);
        let own = self.durable.priority;
        match &self.peer {
            PeerView::Up { inc, state: Some(ps) } => {
                let inc = *inc;
                // A peer that already follows this very run decided by the same
                // comparison; it counts as a peer in X.
                let follows_us = ps.role == Role::Sl && ps.following == Some(self.incarnation);
                match ps.role {
                    Role::Sm | Role::M => self.become_sl(inc, Cause::PeerActive),
                    Role::Sl if !follows_us => self.wait(WaitReason::PeerSettling),
                    Role::X | Role::Sl => {
                        let peer = ps.priority;
                        match (self.durable.join_only, ps.join_only) {
                            (true, true) => self.wait(WaitReason::BothJoinOnly),
                            (true, false) => self.wait(WaitReason::JoinOnly),
                            (false, true) => self.become_sm(now, Cause::PeerJoinOnly),
                            (false, false) if own < peer => self.become_sm(now, Cause::HigherPriority { own, peer }),
                            (false, false) if own > peer => self.become_sl(inc, Cause::LowerPriority { own, peer }),
                            (false, false) => self.wait(WaitReason::EqualPriorities { both: own }),
                        }
                    }
                }
            }
            PeerView::Up { state: None, .. } => {}
            // The peer restarted and its new run has not connected yet: it is up.
            PeerView::Replaced { .. } => {}
            PeerView::Unknown | PeerView::Down { .. } if booting => {}
            PeerView::Unknown | PeerView::Down { .. } => {
                if self.durable.join_only {
                    self.wait(WaitReason::JoinOnly);
                } else if own == Priority::P1 {
                    self.become_sm(now, Cause::AloneWithPriority1);
                } else {
                    self.wait(WaitReason::Undetermined { own });
                }
            }
        }
    }

    /// Records (and reports once) why this node in X does not start.
    fn wait(&mut self, reason: WaitReason) {
        if let RoleState::X { waiting, .. } = &mut self.role
            && *waiting != Some(reason)
        {
            *waiting = Some(reason);
            self.report(Report::Waiting(reason));
        }
    }

    /// Enters SM (from X, from an SL taking over, or from M that lost its SL): a new
    /// epoch and priority 1 are made durable before anything else happens.
    fn become_sm(&mut self, _now: Instant, cause: Cause) {
        let from = self.role();
        let known = [self.durable.epoch, self.log.last_epoch().unwrap_or(Epoch::ZERO), self.peer_epoch];
        let counter = known.iter().map(|it| it.counter).max().unwrap_or(0) + 1;
        self.durable = GroupDurable {
            priority: Priority::P1,
            // Entering SM because the operator overrode the seed's rule (a force start, or a
            // peer held back by --join-only) may abandon acknowledged records: such
            // epochs are marked so that what they discard is counted apart.
            epoch: Epoch {
                counter,
                node: self.cfg.me.0,
                forced: matches!(cause, Cause::ForceStart | Cause::PeerJoinOnly),
            },
            role: Role::Sm,
            join_only: false,
        };
        #[cfg(feature = "mutants")]
        let persist_at = self.out.len();
        self.emit(Command::Persist(self.durable));
        self.report(Report::Transition { from, to: Role::Sm, cause });
        let last = self.log.last_index();
        match &mut self.role {
            RoleState::Active(a) => {
                a.master = false;
                a.sl = None;
                a.lost_sl = None;
                a.failback_at = None;
                let pending = std::mem::take(&mut a.pending);
                a.local_acked_upto = last;
                for (index, req) in pending {
                    self.out.push_back(Command::AckAppend { req, index });
                }
                // A move to an SL that is now lost is off: the service runs here again.
                if a.handover.take().is_some() && a.service != Service::Failed {
                    a.service = Service::Running;
                    self.out.push_back(Command::StartService);
                }
            }
            _ => {
                self.role = RoleState::Active(Active {
                    master: false,
                    sl: None,
                    pending: VecDeque::new(),
                    local_acked_upto: last,
                    lost_sl: None,
                    service: Service::Running,
                    handover: None,
                    failback_at: None,
                });
                self.emit(Command::StartService);
            }
        }
        self.send_state();
        #[cfg(feature = "mutants")]
        if self.mutant == Mutant::ActBeforePersist {
            self.deferred = self.out.remove(persist_at);
        }
    }

    /// Acknowledges every pending append on the strength of the local fsync (SM rule).
    fn ack_all_pending(&mut self) {
        let last = self.log.last_index();
        let RoleState::Active(a) = &mut self.role else {
            return;
        };
        a.local_acked_upto = last;
        for (index, req) in std::mem::take(&mut a.pending) {
            self.out.push_back(Command::AckAppend { req, index });
        }
    }

    /// Enters SL following incarnation `master` of the peer: 3 is made durable first.
    fn become_sl(&mut self, master: Incarnation, cause: Cause) {
        let from = self.role();
        let peer_epoch = self.peer_state().map_or(Epoch::ZERO, |it| it.epoch);
        self.durable = GroupDurable {
            priority: Priority::P3,
            epoch: self.durable.epoch.max(peer_epoch),
            role: Role::Sl,
            join_only: false,
        };
        self.emit(Command::Persist(self.durable));
        self.report(Report::Transition { from, to: Role::Sl, cause });
        self.role = RoleState::Sl(Slave { master, joined: false, confirmed: false, taking_over: false, session: 0 });
        self.send_state();
        self.try_join();
    }

    /// An SL whose active is up and active cuts its log to the common prefix
    /// (quarantining the rest) and asks for what follows.
    fn try_join(&mut self) {
        let RoleState::Sl(s) = &self.role else { return };
        if s.joined {
            return;
        }
        let PeerView::Up { inc, state: Some(ps) } = &self.peer else {
            return;
        };
        if *inc != s.master || !ps.role.is_active() {
            return;
        }
        let (active_epoch, common) = (ps.epoch, self.log.common_prefix(&ps.log));
        let forced = ps.log.forced_after(common) || (ps.epoch.forced && ps.log.last_epoch() != Some(ps.epoch));
        if active_epoch > self.durable.epoch {
            // The SL adopts the active's epoch before it acknowledges anything of it, so
            // its own next epoch is created above it.
            self.durable.epoch = active_epoch;
            self.emit(Command::Persist(self.durable));
        }
        let last = self.log.last_index();
        if common < last {
            let reason = if forced { DiscardReason::ForceStart } else { DiscardReason::Unreplicated };
            self.emit(Command::TruncateLog { keep_upto: common, reason });
            self.report(Report::Discarded { count: last - common, reason });
            self.log.truncate(common);
        }
        self.joins += 1;
        let session = self.joins;
        if let RoleState::Sl(s) = &mut self.role {
            s.joined = true;
            s.session = session;
        }
        let from_epoch = self.log.epoch_at(common);
        self.send(Message::Join { from_index: common, from_epoch, session });
    }

    /// The SL this node may hand the group to: joined, confirmed (Promoted sent), and
    /// holding every record.
    fn synchronised_sl(&self) -> Option<SlLink> {
        let RoleState::Active(a) = &self.role else { return None };
        a.sl.filter(|sl| a.master && a.lost_sl.is_none() && sl.joined && sl.confirmed)
    }

    fn on_service_stopped(&mut self, now: Instant) {
        if let RoleState::Active(a) = &mut self.role
            && a.service == Service::Stopping
        {
            a.service = Service::Stopped;
        }
        self.try_finish_handover(now);
    }

    /// Every resource is down because one would not start or kept failing: the group
    /// moves to a synchronised SL that has not failed it, or stays here, failed.
    fn on_service_failed(&mut self, now: Instant, start: bool) {
        let RoleState::Active(a) = &mut self.role else { return };
        if let Some(reason) = a.handover {
            // Already moving: the service is down, which is what the move waits for.
            a.service = Service::Stopped;
            let _ = reason;
            self.try_finish_handover(now);
            return;
        }
        a.service = Service::Failed;
        let movable = self.synchronised_sl().is_some() && !self.peer_failed;
        if movable {
            let reason = if start { HandoverReason::StartFailed } else { HandoverReason::ServiceFailed };
            self.begin_handover(now, reason);
        } else {
            self.report(Report::GroupFailed { start, peer_failed: self.peer_failed });
        }
    }

    fn on_switchover(&mut self, now: Instant) {
        let refuse = match &self.role {
            RoleState::Active(a) if a.handover.is_some() => Some(SwitchoverRefused::AlreadyMoving),
            RoleState::Active(_) if self.peer_failed => Some(SwitchoverRefused::PeerFailed),
            RoleState::Active(_) if self.synchronised_sl().is_none() => Some(SwitchoverRefused::NoSynchronisedSl),
            RoleState::Active(_) => None,
            _ => Some(SwitchoverRefused::NotActive { role: self.role() }),
        };
        match refuse {
            Some(reason) => self.report(Report::SwitchoverRefused(reason)),
            None => self.begin_handover(now, HandoverReason::Switchover),
        }
    }

    fn on_clear_failures(&mut self, _now: Instant) {
        self.peer_failed = false;
        if let RoleState::Active(a) = &mut self.role
            && a.service == Service::Failed
            && a.handover.is_none()
        {
            a.service = Service::Running;
            self.out.push_back(Command::StartService);
        }
        self.report(Report::FailuresCleared);
    }

    /// Stops taking appends and stops the service, to hand the group to the SL once the
    /// service is down and the SL holds every record (F1.10: flush, release, then move).
    fn begin_handover(&mut self, now: Instant, reason: HandoverReason) {
        let RoleState::Active(a) = &mut self.role else { return };
        a.handover = Some(reason);
        a.failback_at = None;
        if a.service == Service::Running {
            a.service = Service::Stopping;
            self.out.push_back(Command::StopService);
        }
        self.report(Report::HandoverStarted { reason });
        self.try_finish_handover(now);
    }

    fn try_finish_handover(&mut self, now: Instant) {
        let last = self.log.last_index();
        let Some(sl) = self.synchronised_sl() else { return };
        let RoleState::Active(a) = &self.role else { return };
        let Some(reason) = a.handover else { return };
        let stopped = matches!(a.service, Service::Stopped | Service::Failed);
        if !stopped || sl.durable != last || !a.pending.is_empty() {
            return;
        }
        self.send(Message::Handover { upto: last, reason });
        self.report(Report::HandedOver { reason });
        let from = self.role();
        self.role = RoleState::X {
            phase: XPhase::HandedOver { to: sl.inc, upto: last, reason },
            waiting: None,
            forcing: false,
        };
        self.report(Report::Transition { from, to: Role::X, cause: Cause::Handover(reason) });
        self.send_state();
        self.try_decide(now);
    }

    /// The M hands the group over: this SL holds every record up to `upto` and takes over
    /// without a fence (the M stopped the service before it asked).
    fn on_handover(&mut self, now: Instant, from: Incarnation, upto: u64, reason: HandoverReason) {
        let RoleState::Sl(s) = &self.role else { return };
        // Not `confirmed`: a Handover resent after a channel reset reaches an SL that
        // rejoined its (stopped) master and is unconfirmed again; what matters is that it is
        // the same run's SL and holds every record up to `upto`, which the old M only names
        // after its SL acknowledged them durably. (Requiring `confirmed` left the group
        // down for good: found by the model check.)
        if s.master != from || self.log.last_index() < upto {
            self.report(Report::MalformedMessage {
                what: "handover to an SL that is not synchronised with the active",
            });
            return;
        }
        self.peer_failed = reason.is_failure();
        self.become_sm(now, Cause::Handover(reason));
    }

    /// A stale active stops: the service first, then its held appends are answered
    /// (their outcome is unknown), then X.
    fn yield_active(&mut self, now: Instant) {
        let RoleState::Active(a) = &mut self.role else { return };
        let pending = std::mem::take(&mut a.pending);
        self.emit(Command::StopService);
        for (_, req) in pending {
            self.out.push_back(Command::RejectAppend { req, reason: RejectReason::Abandoned });
        }
        self.enter_x(now, Cause::YieldToNewerEpoch);
    }

    /// Leaves SL or an active role for X. The priority stays as it is (F0.3).
    fn enter_x(&mut self, now: Instant, cause: Cause) {
        let from = self.role();
        self.role = RoleState::X { phase: XPhase::Ready, waiting: None, forcing: false };
        self.report(Report::Transition { from, to: Role::X, cause });
        self.send_state();
        self.try_decide(now);
    }
}

#[cfg(test)]
#[path = "group_test.rs"]
mod tests;
