//! The model of a two-node cluster around the production [`Group`] machines.
//!
//! Each node is a disk (durable state, journal, incarnation counter) and, while it runs,
//! the production `takeover_core::group::Group` plus the queue of commands it emitted and
//! that the "shell" has not executed yet. Every step of the model is one of:
//! executing one queued command, delivering one message, one peer or fence event, one
//! timer, one client append, one operator force start, a crash or a (re)start.
//! A crash may fall between any two steps: it loses the command queue and everything
//! not yet on the disk. A peer learns of a crash only through a later `PeerDown`,
//! possibly after the crashed node already restarted with a higher incarnation.
//!
//! The peer channel is a FIFO stream per pair of runs, like TCP: a message is delivered
//! only once the receiver is connected to the sender's run, and dropped once the receiver
//! has moved on from that run.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use takeover_core::group::{
    Arbiter, Command, Event, Failback, FenceTarget, Group, GroupConfig, GroupDurable, Message, Mutant, PeerStatus,
};
use takeover_core::log::{LogMeta, Record};
use takeover_core::{Epoch, Incarnation, Instant, NodeId, Priority, ReqId, Role};

/// How much of each kind of fault (and client work) one exploration allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Crashes of a single node.
    pub crashes: u8,
    /// Crashes of both nodes in one step (power loss of the whole cluster).
    pub crash_both: u8,
    /// Client appends.
    pub appends: u8,
    /// Operator force starts.
    pub force_starts: u8,
    /// Times a live peer is declared down (a partition, a pause, a slow link): the node
    /// that suspects it closes the channel.
    pub suspicions: u8,
    /// Times the channel between the two runs drops, losing what is in flight; both
    /// sides reconnect to the same runs.
    pub resets: u8,
    /// Fence actions that fail before powering anything off.
    pub fence_failures: u8,
    /// Operator switchovers (F1.10).
    pub switchovers: u8,
    /// Times the service fails on the active node (a resource would not start or kept
    /// failing; the runner has stopped every resource) (F1.5).
    pub service_failures: u8,
    /// Groups return to their preferred node (node 0) by themselves.
    pub failback: bool,
}

impl Bounds {
    /// Crash-stop faults only, with no deliberate moves: the seed's Fig. 2 describes
    /// exactly this, so every step must follow it.
    pub fn fig2_applies(&self) -> bool {
        self.suspicions + self.resets + self.switchovers + self.service_failures == 0 && !self.failback
    }

    /// Shorthand for the bounds with every count zero.
    pub const NONE: Bounds = Bounds {
        crashes: 0,
        crash_both: 0,
        appends: 0,
        force_starts: 0,
        suspicions: 0,
        resets: 0,
        fence_failures: 0,
        switchovers: 0,
        service_failures: 0,
        failback: false,
    };
}

/// One step of the model; replaying the same steps from the initial world gives the same
/// worlds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Node starts (first start or restart after a crash).
    Boot(u8),
    /// Node's peer channel connects to the peer's current run.
    Connect(u8),
    /// Node's failure detector declares the peer's run down (it crashed).
    Down(u8),
    /// Node hears a heartbeat of a newer run of the peer before its channel reconnects:
    /// the run it knew is gone.
    Gone(u8),
    /// The first message the peer sent to this node arrives (or is dropped).
    Deliver(u8),
    /// Node's shell executes the first queued command.
    Exec(u8),
    /// Node's fence action powers the target off (if it is still up).
    FenceKill(u8),
    /// Node's fence action reports success.
    FenceConfirm(u8),
    /// Node's timer fires.
    Timer(u8),
    /// A client appends a record on this node.
    Append(u8),
    /// The operator force-starts this node.
    Force(u8),
    /// Node crashes.
    Crash(u8),
    /// Both nodes crash at once.
    CrashBoth,
    /// Node declares its live peer down and closes the channel.
    Suspect(u8),
    /// The channel drops: messages in flight are lost; both sides will reconnect.
    Reset,
    /// Node's fence action fails before powering anything off.
    FenceFail(u8),
    /// The operator switches the group over from this node.
    Switchover(u8),
    /// The service fails on this node; its resources are all stopped.
    ServiceFail(u8),
}

impl Step {
    /// Steps the environment takes at will (faults, operator, starts), as opposed to the
    /// steps that make progress on their own.
    pub fn is_environment(self) -> bool {
        matches!(
            self,
            Step::Boot(_)
                | Step::Force(_)
                | Step::Crash(_)
                | Step::CrashBoth
                | Step::Suspect(_)
                | Step::Reset
                | Step::FenceFail(_)
                | Step::Switchover(_)
                | Step::ServiceFail(_)
        )
    }
}

/// The instant every event but a timer carries: deadlines are relative to it, which
/// keeps the state space finite.
const NOW: Instant = Instant(0);

/// The whole cluster plus the ghost variables the properties need.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    pub nodes: [Node; 2],
    /// `chan[i]`: messages sent by node `i`, oldest first.
    pub chan: [VecDeque<Packet>; 2],
    pub ghost: Ghost,
    /// The groups' failback setting (auto when true).
    pub failback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub disk: Disk,
    pub run: Option<Run>,
}

/// What survives a crash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Disk {
    pub durable: GroupDurable,
    pub log: Vec<Record>,
    pub incarnation: u64,
    pub quarantined: u16,
}

/// A running agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    pub inc: Incarnation,
    pub core: Group,
    /// Commands emitted by the core, not executed yet.
    pub queue: VecDeque<Command>,
    /// The service is running (StartService executed, StopService not yet).
    pub processing: bool,
    /// A fence action in flight against the peer, and whether it has already powered
    /// the target off.
    pub fence: Option<(FenceTarget, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub from: Incarnation,
    pub to: Incarnation,
    pub epoch: Epoch,
    pub msg: Message,
}

/// Facts about the history that no node can see, kept for the properties.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ghost {
    pub crashes_left: u8,
    pub crash_both_left: u8,
    pub appends_left: u8,
    pub force_left: u8,
    pub next_req: u8,
    /// Every record acknowledged to a client, as `(epoch, index)`.
    pub acked: BTreeSet<(Epoch, u64)>,
    /// Acknowledged records a force start continued without (counted apart, F0.6).
    pub discarded: u8,
    /// A force start happened: Propositions 1 and 2 no longer apply.
    pub forced: bool,
    /// The node that most recently made an active role (SM or M) durable.
    pub last_processor: Option<u8>,
    /// After a force start, the operator starts the other node with `--join-only` until
    /// it has rejoined (the warning the force start prints).
    pub must_join_only: [bool; 2],
    /// How the pair entered (SL SM)/(SM SL): from (X X) [1] or from (X SM)/(SM X) [3].
    pub sync_origin: u8,
    pub suspicions_left: u8,
    pub resets_left: u8,
    pub fence_failures_left: u8,
    pub switchovers_left: u8,
    pub service_failures_left: u8,
    /// The node's channel dropped and it has not reconnected to the same run yet: its
    /// sends are lost and what is sent to it waits.
    pub reconnect: [bool; 2],
}

impl World {
    /// Both nodes down with their initial disks: node 0 preferred (priority 2), node 1
    /// priority 3.
    pub fn initial(bounds: Bounds) -> World {
        let disk = |preferred| Disk {
            durable: GroupDurable::initial(preferred),
            log: Vec::new(),
            incarnation: 0,
            quarantined: 0,
        };
        World {
            nodes: [Node { disk: disk(true), run: None }, Node { disk: disk(false), run: None }],
            chan: [VecDeque::new(), VecDeque::new()],
            ghost: Ghost {
                crashes_left: bounds.crashes,
                crash_both_left: bounds.crash_both,
                appends_left: bounds.appends,
                force_left: bounds.force_starts,
                next_req: 0,
                acked: BTreeSet::new(),
                discarded: 0,
                forced: false,
                last_processor: None,
                must_join_only: [false, false],
                sync_origin: 0,
                suspicions_left: bounds.suspicions,
                resets_left: bounds.resets,
                fence_failures_left: bounds.fence_failures,
                switchovers_left: bounds.switchovers,
                service_failures_left: bounds.service_failures,
                reconnect: [false, false],
            },
            failback: bounds.failback,
        }
    }

    /// Every step that could be taken here.
    pub fn steps() -> impl Iterator<Item = Step> {
        (0..2u8)
            .flat_map(|i| {
                [
                    Step::Exec(i),
                    Step::Deliver(i),
                    Step::Connect(i),
                    Step::Down(i),
                    Step::Gone(i),
                    Step::FenceKill(i),
                    Step::FenceConfirm(i),
                    Step::Timer(i),
                    Step::Append(i),
                    Step::Boot(i),
                    Step::Force(i),
                    Step::Crash(i),
                    Step::Suspect(i),
                    Step::FenceFail(i),
                    Step::Switchover(i),
                    Step::ServiceFail(i),
                ]
            })
            .chain([Step::CrashBoth, Step::Reset])
    }

    /// The world after `step`, or `None` if the step is not enabled here. `Err` when a
    /// command could not be executed because the core asked for something impossible.
    pub fn apply(&self, step: Step, mutant: Mutant) -> Result<Option<World>, String> {
        if !self.may_be_enabled(step) {
            return Ok(None);
        }
        let mut w = self.clone();
        let ok = match step {
            Step::Boot(i) => w.boot(i as usize, mutant),
            Step::Connect(i) => w.connect(i as usize),
            Step::Down(i) => w.down(i as usize),
            Step::Gone(i) => w.gone(i as usize),
            Step::Deliver(i) => w.deliver(i as usize),
            Step::Exec(i) => w.exec(i as usize)?,
            Step::FenceKill(i) => w.fence_kill(i as usize),
            Step::FenceConfirm(i) => w.fence_confirm(i as usize),
            Step::Timer(i) => w.timer(i as usize),
            Step::Append(i) => w.append(i as usize),
            Step::Force(i) => w.force(i as usize),
            Step::Crash(i) => w.crash(i as usize),
            Step::CrashBoth => w.crash_both(),
            Step::Suspect(i) => w.suspect(i as usize),
            Step::Reset => w.reset(),
            Step::FenceFail(i) => w.fence_fail(i as usize),
            Step::Switchover(i) => w.switchover(i as usize),
            Step::ServiceFail(i) => w.service_fail(i as usize),
        };
        Ok(ok.then_some(w))
    }

    /// A cheap test that rules out most disabled steps before the world is cloned.
    fn may_be_enabled(&self, step: Step) -> bool {
        let run = |i: u8| self.nodes[i as usize].run.as_ref();
        match step {
            Step::Boot(i) => run(i).is_none(),
            Step::Connect(i) | Step::Down(i) | Step::Gone(i) => run(i).is_some(),
            Step::Deliver(i) => !self.chan[Self::peer_of(i as usize)].is_empty(),
            Step::Exec(i) => run(i).is_some_and(|it| !it.queue.is_empty()),
            Step::FenceKill(i) => run(i).is_some_and(|it| matches!(it.fence, Some((_, false)))),
            Step::FenceConfirm(i) => run(i).is_some_and(|it| matches!(it.fence, Some((_, true)))),
            Step::Timer(i) => run(i).is_some_and(|it| it.core.poll_timeout().is_some()),
            Step::Append(i) => self.ghost.appends_left > 0 && run(i).is_some_and(|it| it.core.role().is_active()),
            Step::Force(i) => self.ghost.force_left > 0 && run(i).is_some_and(|it| it.core.role() == Role::X),
            Step::Crash(i) => self.ghost.crashes_left > 0 && run(i).is_some(),
            Step::CrashBoth => self.ghost.crash_both_left > 0 && self.nodes.iter().all(|it| it.run.is_some()),
            Step::Suspect(i) => self.ghost.suspicions_left > 0 && run(i).is_some(),
            Step::Reset => self.ghost.resets_left > 0 && self.nodes.iter().all(|it| it.run.is_some()),
            Step::FenceFail(i) => {
                self.ghost.fence_failures_left > 0 && run(i).is_some_and(|it| matches!(it.fence, Some((_, false))))
            }
            Step::Switchover(i) => {
                self.ghost.switchovers_left > 0 && run(i).is_some_and(|it| it.core.role().is_active())
            }
            Step::ServiceFail(i) => self.ghost.service_failures_left > 0 && run(i).is_some_and(|it| it.processing),
        }
    }

    fn peer_of(i: usize) -> usize {
        1 - i
    }

    fn config(i: usize, failback: bool) -> GroupConfig {
        GroupConfig {
            me: NodeId(i as u16),
            peer: NodeId(Self::peer_of(i) as u16),
            arbiter: Arbiter::Fence,
            startup_wait: Duration::from_secs(1),
            fence_retry: Duration::from_secs(1),
            fence_delay: Duration::from_secs(1),
            catch_up_window: 1,
            preferred: i == 0,
            failback: if failback { Failback::Auto } else { Failback::Manual },
            failback_delay: Duration::from_secs(1),
        }
    }

    /// Feeds an event to node `i`'s core and queues what it emits.
    fn feed(&mut self, i: usize, now: Instant, event: Event) {
        let run = self.nodes[i].run.as_mut().expect("feeding a stopped node");
        let was_active = run.core.role().is_active();
        run.core.handle(now, event);
        drain(&mut run.core, &mut run.queue);
        if !was_active && run.core.role().is_active() && run.core.durable().epoch.forced {
            // A force start continues from this node's log: acknowledged records it does
            // not hold are discarded by the force start, not lost.
            let log = &self.nodes[i].disk.log;
            let before = self.ghost.acked.len();
            self.ghost.acked.retain(|&(epoch, index)| log.get(index as usize - 1).is_some_and(|r| r.epoch == epoch));
            self.ghost.discarded += (before - self.ghost.acked.len()) as u8;
            // From here Propositions 1 and 2 no longer hold, and the operator starts the
            // other node with `--join-only` until it has rejoined (the force start's
            // warning).
            self.ghost.forced = true;
            self.ghost.must_join_only[Self::peer_of(i)] = true;
        }
    }

    fn boot(&mut self, i: usize, mutant: Mutant) -> bool {
        let node = &mut self.nodes[i];
        if node.run.is_some() {
            return false;
        }
        node.disk.incarnation += 1;
        let inc = Incarnation(node.disk.incarnation);
        let meta = LogMeta::from_records(node.disk.log.iter().map(|r| (r.epoch, r.index)))
            .expect("the model's disks hold consecutive records");
        let join_only = self.ghost.must_join_only[i];
        let mut core = Group::boot(Self::config(i, self.failback), inc, node.disk.durable, meta, join_only, NOW);
        core.set_mutant(mutant);
        let mut queue = VecDeque::new();
        drain(&mut core, &mut queue);
        node.run = Some(Run { inc, core, queue, processing: false, fence: None });
        true
    }

    fn peer_status(&self, i: usize) -> Option<PeerStatus> {
        self.nodes[i].run.as_ref().map(|it| it.core.status().peer)
    }

    fn connect(&mut self, i: usize) -> bool {
        let Some(peer_inc) = self.nodes[Self::peer_of(i)].run.as_ref().map(|it| it.inc) else { return false };
        match self.peer_status(i) {
            None => return false,
            // After a reset the same run reconnects.
            Some(PeerStatus::Up { inc, .. }) if inc == peer_inc && !self.ghost.reconnect[i] => return false,
            // A run declared down but alive (a false suspicion) is heard again.
            Some(PeerStatus::Down { inc, stopped: false }) if inc == peer_inc => {}
            Some(PeerStatus::Down { inc, .. }) if inc >= peer_inc => return false,
            Some(_) => {}
        }
        self.ghost.reconnect[i] = false;
        self.feed(i, NOW, Event::PeerConnected { inc: peer_inc });
        true
    }

    /// Node `i` declares its live peer down and closes the channel; the peer sees the
    /// channel drop and reconnects later.
    fn suspect(&mut self, i: usize) -> bool {
        let j = Self::peer_of(i);
        let Some(PeerStatus::Up { inc, .. }) = self.peer_status(i) else { return false };
        if self.nodes[j].run.as_ref().map(|it| it.inc) != Some(inc) {
            return false; // Not a suspicion: that run is gone (Down covers it).
        }
        self.ghost.suspicions_left -= 1;
        self.chan = [VecDeque::new(), VecDeque::new()];
        self.ghost.reconnect[j] = true;
        self.feed(i, NOW, Event::PeerDown { inc });
        true
    }

    fn reset(&mut self) -> bool {
        let connected = (0..2).all(|i| {
            let peer = self.nodes[Self::peer_of(i)].run.as_ref().map(|it| it.inc);
            matches!(self.peer_status(i), Some(PeerStatus::Up { inc, .. }) if Some(inc) == peer)
        });
        if !connected {
            return false;
        }
        self.ghost.resets_left -= 1;
        self.chan = [VecDeque::new(), VecDeque::new()];
        self.ghost.reconnect = [true, true];
        true
    }

    fn fence_fail(&mut self, i: usize) -> bool {
        let Some(run) = self.nodes[i].run.as_mut() else { return false };
        let Some((target, false)) = run.fence else { return false };
        run.fence = None;
        self.ghost.fence_failures_left -= 1;
        self.feed(i, NOW, Event::FenceFailed { target });
        true
    }

    fn down(&mut self, i: usize) -> bool {
        let inc = match self.peer_status(i) {
            Some(PeerStatus::Up { inc, .. } | PeerStatus::Down { inc, .. }) => inc,
            _ => return false,
        };
        let peer_running = self.nodes[Self::peer_of(i)].run.as_ref().map(|it| it.inc);
        if peer_running.is_some_and(|it| it >= inc) {
            return false; // Crash-stop: a running peer is never declared down.
        }
        self.feed(i, NOW, Event::PeerDown { inc });
        true
    }

    fn gone(&mut self, i: usize) -> bool {
        let inc = match self.peer_status(i) {
            Some(PeerStatus::Up { inc, .. } | PeerStatus::Down { inc, .. }) => inc,
            _ => return false,
        };
        let peer_running = self.nodes[Self::peer_of(i)].run.as_ref().map(|it| it.inc);
        if peer_running.is_none_or(|it| it <= inc) {
            return false;
        }
        self.feed(i, NOW, Event::PeerGone { inc });
        true
    }

    fn deliver(&mut self, i: usize) -> bool {
        let j = Self::peer_of(i);
        let Some(packet) = self.chan[j].front() else { return false };
        let receiver = self.nodes[i].run.as_ref().map(|it| it.inc);
        if receiver != Some(packet.to) {
            self.chan[j].pop_front(); // The receiving run is gone: the stream is gone.
            return true;
        }
        let from = packet.from;
        match self.peer_status(i) {
            // The receiver has not reconnected yet: what the peer sent on the new
            // connection waits for it.
            Some(PeerStatus::Up { .. }) if self.ghost.reconnect[i] => false,
            Some(PeerStatus::Up { inc, .. }) if inc == from => {
                let packet = self.chan[j].pop_front().expect("checked above");
                self.feed(i, NOW, Event::Message { from, epoch: packet.epoch, msg: packet.msg });
                true
            }
            // A run declared down but not known stopped may come back (a false suspicion):
            // what it sent on its new connection waits, as the node layer holds it.
            Some(PeerStatus::Down { inc, stopped: false }) if inc == from => false,
            Some(PeerStatus::Up { inc, .. } | PeerStatus::Down { inc, .. }) if inc >= from => {
                self.chan[j].pop_front(); // The receiver moved on from that run.
                true
            }
            _ => false, // Not connected to that run yet: the stream waits.
        }
    }

    fn exec(&mut self, i: usize) -> Result<bool, String> {
        let j = Self::peer_of(i);
        let peer_inc = self.nodes[j].run.as_ref().map(|it| it.inc);
        let node = &mut self.nodes[i];
        let Some(run) = node.run.as_mut() else { return Ok(false) };
        let Some(command) = run.queue.pop_front() else { return Ok(false) };
        let from = run.inc;
        // The shell sends only on a channel to that very run: none once this node
        // declared it down, none while the channel is being rebuilt.
        let peer_view = run.core.status().peer;
        let channel_to =
            |to: Incarnation| matches!(peer_view, PeerStatus::Up { inc, .. } if inc == to) && peer_inc == Some(to);
        match command {
            Command::Persist(durable) => {
                let previous = node.disk.durable;
                node.disk.durable = durable;
                // Entering SM (a new epoch) or M (priority 2) makes this node the one that
                // processed last; re-writing the same role (a --join-only flag) does not.
                let entered = (durable.role, durable.epoch, durable.priority)
                    != (previous.role, previous.epoch, previous.priority);
                if durable.role.is_active() && entered {
                    self.ghost.last_processor = Some(i as u8);
                }
                if durable.role == Role::Sl {
                    self.ghost.must_join_only[i] = false;
                }
            }
            Command::WriteRecords(records) => {
                for record in records {
                    if record.index != node.disk.log.len() as u64 + 1 || !record.verify() {
                        return Err(format!(
                            "node {i} asked to write record {} after {}",
                            record.index,
                            node.disk.log.len()
                        ));
                    }
                    node.disk.log.push(record);
                }
            }
            Command::TruncateLog { keep_upto, .. } => {
                let keep = keep_upto as usize;
                if keep < node.disk.log.len() {
                    node.disk.quarantined += (node.disk.log.len() - keep) as u16;
                    node.disk.log.truncate(keep);
                }
            }
            Command::Send { to, epoch, msg } => {
                if channel_to(to) && !self.ghost.reconnect[i] {
                    self.chan[i].push_back(Packet { from, to, epoch, msg });
                }
            }
            Command::SendRecords { to, epoch, from: first, upto } => {
                let records: Vec<Record> = node
                    .disk
                    .log
                    .get(first as usize - 1..upto as usize)
                    .ok_or_else(|| format!("node {i} asked to send records {first}..={upto} it does not hold"))?
                    .to_vec();
                if channel_to(to) && !self.ghost.reconnect[i] {
                    self.chan[i].push_back(Packet { from, to, epoch, msg: Message::Records(records) });
                }
            }
            Command::AckAppend { req, index } => {
                let record = node.disk.log.get(index as usize - 1).ok_or_else(|| {
                    format!("node {i} acknowledged request {} at index {index}, which is not on its disk", req.0)
                })?;
                if record.payload != [req.0 as u8] {
                    return Err(format!("node {i} acknowledged request {} with another record at {index}", req.0));
                }
                self.ghost.acked.insert((record.epoch, index));
            }
            Command::RejectAppend { .. } | Command::Report(_) => {}
            Command::StartService => run.processing = true,
            Command::StopService => {
                // The runner stops every resource; the model takes that as one step.
                run.processing = false;
                self.feed(i, NOW, Event::ServiceStopped);
            }
            Command::FencePeer { target } => run.fence = Some((target, false)),
        }
        Ok(true)
    }

    /// A fence is a power-off: if the target is still up, it is now down.
    fn fence_kill(&mut self, i: usize) -> bool {
        let Some(run) = self.nodes[i].run.as_mut() else { return false };
        let Some((target, false)) = run.fence else { return false };
        run.fence = Some((target, true));
        let j = Self::peer_of(i);
        let hit = match target {
            FenceTarget::Run(inc) => self.nodes[j].run.as_ref().is_some_and(|it| it.inc == inc),
            FenceTarget::Node { .. } => true,
        };
        if hit && self.nodes[j].run.is_some() {
            self.nodes[j].run = None;
            self.ghost.reconnect[j] = false;
            self.chan[i].clear();
        }
        true
    }

    fn fence_confirm(&mut self, i: usize) -> bool {
        let Some(run) = self.nodes[i].run.as_mut() else { return false };
        let Some((target, true)) = run.fence else { return false };
        run.fence = None;
        self.feed(i, NOW, Event::PeerStopped { target });
        true
    }

    fn timer(&mut self, i: usize) -> bool {
        let Some(at) = self.nodes[i].run.as_ref().and_then(|it| it.core.poll_timeout()) else { return false };
        self.feed(i, at, Event::Timeout);
        true
    }

    fn append(&mut self, i: usize) -> bool {
        let Some(run) = &self.nodes[i].run else { return false };
        if self.ghost.appends_left == 0 || !run.core.role().is_active() {
            return false;
        }
        self.ghost.appends_left -= 1;
        let req = self.ghost.next_req;
        self.ghost.next_req += 1;
        self.feed(i, NOW, Event::Append { entries: vec![(ReqId(req as u64), vec![req])] });
        true
    }

    fn force(&mut self, i: usize) -> bool {
        let Some(run) = &self.nodes[i].run else { return false };
        if self.ghost.force_left == 0 || run.core.role() != Role::X {
            return false;
        }
        self.feed(i, NOW, Event::ForceStart);
        let core = &self.nodes[i].run.as_ref().expect("running").core;
        if core.role() != Role::Sm && !matches!(core.status().fencing, Some(FenceTarget::Node { .. })) {
            return false; // Refused: nothing happened worth exploring.
        }
        self.ghost.force_left -= 1;
        // The operator was told to keep the peer fenced or start it with --join-only.
        self.ghost.must_join_only[Self::peer_of(i)] = true;
        true
    }

    fn switchover(&mut self, i: usize) -> bool {
        let Some(run) = &self.nodes[i].run else { return false };
        if self.ghost.switchovers_left == 0 || !run.core.role().is_active() {
            return false;
        }
        self.feed(i, NOW, Event::Switchover);
        if self.nodes[i].run.as_ref().expect("running").core.status().moving.is_none() {
            return false; // Refused: nothing happened worth exploring.
        }
        self.ghost.switchovers_left -= 1;
        true
    }

    fn service_fail(&mut self, i: usize) -> bool {
        let Some(run) = self.nodes[i].run.as_mut() else { return false };
        // The runner reports a failure of the service it runs; it takes Start/Stop the
        // moment the core emits them, so none is waiting in the shell's queue then.
        let pending = run.queue.iter().any(|it| matches!(it, Command::StartService | Command::StopService));
        if self.ghost.service_failures_left == 0 || !run.processing || pending {
            return false;
        }
        self.ghost.service_failures_left -= 1;
        run.processing = false;
        self.feed(i, NOW, Event::ServiceFailed { start: false });
        true
    }

    fn crash(&mut self, i: usize) -> bool {
        if self.ghost.crashes_left == 0 || self.nodes[i].run.is_none() {
            return false;
        }
        self.ghost.crashes_left -= 1;
        self.ghost.reconnect[i] = false;
        self.nodes[i].run = None;
        self.chan[Self::peer_of(i)].clear();
        true
    }

    fn crash_both(&mut self) -> bool {
        if self.ghost.crash_both_left == 0 || self.nodes.iter().any(|it| it.run.is_none()) {
            return false;
        }
        self.ghost.crash_both_left -= 1;
        self.ghost.reconnect = [false, false];
        for node in &mut self.nodes {
            node.run = None;
        }
        self.chan = [VecDeque::new(), VecDeque::new()];
        true
    }

    /// The running nodes' roles as their cores see them.
    pub fn core_role(&self, i: usize) -> Option<Role> {
        self.nodes[i].run.as_ref().map(|it| it.core.role())
    }

    pub fn priority(&self, i: usize) -> Priority {
        self.nodes[i].disk.durable.priority
    }

    /// One line per node for traces.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let d = node.disk.durable;
            let log: Vec<String> = node.disk.log.iter().map(|r| format!("{}@{}", r.index, r.epoch)).collect();
            let run = match &node.run {
                None => "down".to_string(),
                Some(run) => format!(
                    "inc {} role {}{}{} queue [{}]",
                    run.inc.0,
                    run.core.role(),
                    if run.processing { " SERVING" } else { "" },
                    run.core.following().map(|(m, c)| format!(" follows {} confirmed={c}", m.0)).unwrap_or_default(),
                    run.queue.iter().map(short_command).collect::<Vec<_>>().join(", "),
                ),
            };
            out.push_str(&format!(
                "    node {i}: disk prio {} epoch {} join_only {} log [{}] | {run}\n",
                d.priority,
                d.epoch,
                d.join_only,
                log.join(" ")
            ));
        }
        let acked: Vec<String> = self.ghost.acked.iter().map(|(e, i)| format!("{i}@{e}")).collect();
        out.push_str(&format!(
            "    acked [{}]  in flight 0→1: {}  1→0: {}\n",
            acked.join(" "),
            self.chan[0].len(),
            self.chan[1].len()
        ));
        out
    }
}

/// Moves the core's commands to the shell's queue. Reports change nothing in the model,
/// so they are consumed here rather than being a step of their own (fewer interleavings,
/// same behaviours).
fn drain(core: &mut Group, queue: &mut VecDeque<Command>) {
    while let Some(command) = core.poll_command() {
        if !matches!(command, Command::Report(_)) {
            queue.push_back(command);
        }
    }
}

fn short_command(command: &Command) -> String {
    match command {
        Command::Persist(d) => format!("Persist({}, {})", d.priority, d.role),
        Command::WriteRecords(r) => format!("Write({})", r.len()),
        Command::TruncateLog { keep_upto, .. } => format!("Truncate({keep_upto})"),
        Command::Send { msg, .. } => format!("Send({})", message_name(msg)),
        Command::SendRecords { from, upto, .. } => format!("SendRecords({from}..={upto})"),
        Command::AckAppend { index, .. } => format!("Ack({index})"),
        Command::RejectAppend { .. } => "Reject".into(),
        Command::StartService => "Start".into(),
        Command::StopService => "Stop".into(),
        Command::FencePeer { target } => format!("Fence({target:?})"),
        Command::Report(_) => "Report".into(),
    }
}

pub fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::State(_) => "State",
        Message::Join { .. } => "Join",
        Message::Records(_) => "Records",
        Message::Ack { .. } => "Ack",
        Message::Promoted { .. } => "Promoted",
        Message::AskState => "AskState",
        Message::Handover { .. } => "Handover",
    }
}
