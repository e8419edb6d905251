//! One node's whole decision core: the failure detector for every peer over every link
//! (F2.1), the choice of link for the peer channel (F1.7), fencing deduplicated per peer,
//! and the seed-000 role machines of the node's groups.
//!
//! Like [`Group`], a [`Node`] takes events with the current local instant and queues
//! [`NodeCommand`]s that the shell executes in order, each to completion.
//!
//! ```text
//!  UDP heartbeat (peer, link, incarnation) ──► link up ──► peer alive ─┐
//!  TCP handshake (peer, incarnation) ───────► channel up ──────────────┴─► groups: PeerConnected
//!  every link silent ≥ dead_after ──────────► peer dead ──► Disconnect ──► groups: PeerDown
//!  heartbeat with a newer incarnation ──────► old run gone ────────────► groups: PeerGone
//!  group FencePeer ──► Fence{peer} (one at a time per peer) ──► FenceResult ──► groups
//! ```
//!
//! A peer is declared dead only when every link has been silent for `dead_after`; losing
//! one link of several is reported and changes nothing else, except that a channel
//! carried by that link moves to a link that is up.

use std::collections::VecDeque;
use std::time::Duration;

use crate::group::{self, Event, FenceTarget, Group, GroupConfig, GroupDurable, GroupStatus, Message};
use crate::log::LogMeta;
use crate::runner::{Op, Outcome, ResourcePolicy, Runner, RunnerOutput, RunnerStatus};
use crate::types::{Epoch, Incarnation, Instant, NodeId, ReqId};

/// Names one peer-channel connection, so that events of a connection the node already
/// gave up on are never taken for the current one. The node names its own dials (ids
/// with the top bit set, [`DIAL_IDS`]); the shell names the connections it accepts (top
/// bit clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// The first id the node gives its dials.
pub const DIAL_IDS: u64 = 1 << 63;

/// Messages a channel may carry before its peer is known alive; past this the channel is
/// dropped (it reconnects, and the groups restart replication from durable positions).
pub const EARLY_MESSAGES: usize = 1024;

/// A group's position in the cluster configuration: the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupIndex(pub u16);

/// The static settings of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub me: NodeId,
    /// This run's incarnation (durable, raised at every start).
    pub incarnation: Incarnation,
    /// The other nodes this node shares a group with.
    pub peers: Vec<NodeId>,
    /// How many links (networks) every node has.
    pub links: usize,
    pub heartbeat_interval: Duration,
    pub dead_after: Duration,
    /// How long the dialing side waits before it retries a failed channel.
    pub reconnect_backoff: Duration,
    /// When the node is called this much later than it asked to be (its process was
    /// paused, or starved), it gives every link a fresh `dead_after` instead of declaring
    /// peers dead for its own silence. `None` turns the check off.
    pub pause_threshold: Option<Duration>,
}

/// One group this node takes part in, as found on disk at start.
#[derive(Clone, Debug)]
pub struct GroupSetup {
    pub index: GroupIndex,
    pub config: GroupConfig,
    pub durable: GroupDurable,
    pub log: LogMeta,
    /// Started with `--join-only`.
    pub join_only: bool,
    /// The group's resources, in start order.
    pub resources: Vec<ResourcePolicy>,
}

/// Inputs of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A heartbeat from `from`'s run `incarnation` arrived on `link`.
    Heartbeat { from: NodeId, link: usize, incarnation: Incarnation },
    /// Connection `conn` to `peer`'s run `incarnation` completed its handshake on `link`
    /// (a dial the node asked for, or a connection the shell accepted).
    ChannelUp { peer: NodeId, incarnation: Incarnation, link: usize, conn: ConnId },
    /// Connection `conn` to `peer` closed or failed to connect.
    ChannelDown { peer: NodeId, conn: ConnId },
    /// A group message that arrived on connection `conn` from `peer`, stamped with the
    /// sender's epoch.
    Message { peer: NodeId, conn: ConnId, group: GroupIndex, epoch: Epoch, msg: Message },
    /// Client appends to a group.
    Append { group: GroupIndex, entries: Vec<(ReqId, Vec<u8>)> },
    /// The operator's force start of a group.
    ForceStart { group: GroupIndex },
    /// The fence action against `peer` finished.
    FenceResult { peer: NodeId, confirmed: bool },
    /// A resource operation asked for by [`NodeCommand::Resource`] finished (a timeout is
    /// a failure).
    ResourceDone { group: GroupIndex, resource: usize, op: Op, outcome: Outcome },
    /// The operator's switchover of a group to its SL.
    Switchover { group: GroupIndex },
    /// The operator clears a group's failure counts.
    ClearFailures { group: GroupIndex },
    /// `now` reached [`Node::poll_timeout`].
    Timeout,
}

/// Outputs of a node, executed by the shell in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeCommand {
    /// Send a heartbeat to every peer on every link.
    SendHeartbeats,
    /// Dial `peer` over `link` as connection `conn` (only the node with the lower id dials).
    Connect {
        peer: NodeId,
        link: usize,
        conn: ConnId,
    },
    /// Close connection `conn` to `peer` (or abandon that dial); no event of it follows.
    Disconnect {
        peer: NodeId,
        conn: ConnId,
    },
    /// A group's command; `peer` is the group's other node (for `Send`/`SendRecords`).
    Group {
        group: GroupIndex,
        peer: NodeId,
        command: group::Command,
    },
    /// Fence (power off) `peer`, then report [`NodeEvent::FenceResult`].
    Fence {
        peer: NodeId,
    },
    /// Run resource operation `op` on resource `resource` of `group`, then report
    /// [`NodeEvent::ResourceDone`]. At most one operation per group is outstanding.
    Resource {
        group: GroupIndex,
        resource: usize,
        op: Op,
    },
    /// Resource `resource` of `group` could not be stopped: the node can no longer guarantee
    /// that it is not serving, so the shell must stop this node (and let the peer fence it).
    Halt {
        group: GroupIndex,
        resource: usize,
    },
    Report(NodeReport),
}

/// Node-level things the operator should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeReport {
    LinkUp {
        peer: NodeId,
        link: usize,
    },
    /// A link went silent; `links_up` of the peer's links remain.
    LinkDown {
        peer: NodeId,
        link: usize,
        links_up: usize,
    },
    PeerAlive {
        peer: NodeId,
        incarnation: Incarnation,
    },
    PeerDead {
        peer: NodeId,
        incarnation: Incarnation,
    },
    PeerRestarted {
        peer: NodeId,
        old: Incarnation,
        new: Incarnation,
    },
    ChannelUp {
        peer: NodeId,
        link: usize,
    },
    ChannelDown {
        peer: NodeId,
    },
    /// A message named a group this node does not share with the sender.
    UnknownGroup {
        peer: NodeId,
        group: GroupIndex,
    },
    /// The node ran this much later than it asked to: its links got a fresh dead_after.
    PauseDetected {
        late: Duration,
    },
    /// A resource failed its monitor; it is restarted in place, or the group moves.
    MonitorFailed {
        group: GroupIndex,
        resource: usize,
        restart: bool,
    },
    /// The group's resources could not run here.
    ServiceFailed {
        group: GroupIndex,
        resource: usize,
        start: bool,
    },
    FenceStarted {
        peer: NodeId,
    },
    FenceFinished {
        peer: NodeId,
        confirmed: bool,
    },
}

/// A snapshot for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub me: NodeId,
    pub incarnation: Incarnation,
    pub peers: Vec<PeerStatus>,
    pub groups: Vec<(GroupIndex, NodeId, GroupStatus, RunnerStatus)>,
}

/// What the node knows of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub alive: bool,
    pub incarnation: Option<Incarnation>,
    pub links: Vec<LinkStatus>,
    /// The link carrying the peer channel, when it is up.
    pub channel_link: Option<usize>,
    pub fencing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Time since the last heartbeat on this link.
    pub last_heard: Option<Duration>,
}

/// One node's decision core. See the module docs.
#[derive(Clone, Debug)]
pub struct Node {
    cfg: NodeConfig,
    peers: Vec<Peer>,
    groups: Vec<Slot>,
    next_heartbeat: Instant,
    next_dial: u64,
    /// The instant [`Node::poll_timeout`] asked for after the previous event.
    expected_wake: Option<Instant>,
    out: VecDeque<NodeCommand>,
}

#[derive(Clone, Debug)]
struct Slot {
    index: GroupIndex,
    peer: usize,
    machine: Group,
    runner: Runner,
}

#[derive(Clone, Debug)]
struct Peer {
    id: NodeId,
    links: Vec<Link>,
    /// The newest run heard of, by heartbeat or handshake.
    heard: Option<Incarnation>,
    alive: bool,
    channel: Channel,
    /// The run the groups were told is connected (they still see it up).
    groups_see: Option<Incarnation>,
    /// The last run the groups were ever told about (up or since declared dead).
    groups_told: Option<Incarnation>,
    /// The channel came up since the groups were last told.
    channel_fresh: bool,
    /// Messages that arrived on the channel before the groups were told it is up.
    early: Vec<(usize, Epoch, Message)>,
    /// Groups waiting on the fence in progress, and on the next one.
    fence_running: Option<Vec<(usize, FenceTarget)>>,
    /// The fence in progress was requested during the current event: the shell has not
    /// started it yet, so later requests of this event share it.
    fence_fresh: bool,
    fence_queued: Vec<(usize, FenceTarget)>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    last_heard: Option<Instant>,
    up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Down { retry_at: Instant },
    Connecting { link: usize, since: Instant, conn: ConnId },
    Up { incarnation: Incarnation, link: usize, conn: ConnId },
}

impl Channel {
    /// The connection this state is about, if any.
    fn conn(&self) -> Option<ConnId> {
        match *self {
            Channel::Down { .. } => None,
            Channel::Connecting { conn, .. } | Channel::Up { conn, .. } => Some(conn),
        }
    }
}

impl Node {
    /// Starts the node's core after a (re)start; the groups begin in X, waiting for
    /// their peers (F0.5).
    pub fn new(cfg: NodeConfig, groups: Vec<GroupSetup>, now: Instant) -> Node {
        let peers: Vec<Peer> = cfg
            .peers
            .iter()
            .map(|&id| Peer {
                id,
                links: vec![Link::default(); cfg.links],
                heard: None,
                alive: false,
                channel: Channel::Down { retry_at: now },
                groups_see: None,
                groups_told: None,
                channel_fresh: false,
                early: Vec::new(),
                fence_running: None,
                fence_fresh: false,
                fence_queued: Vec::new(),
            })
            .collect();
        let mut node = Node {
            cfg,
            peers,
            groups: Vec::new(),
            next_heartbeat: now,
            next_dial: DIAL_IDS,
            expected_wake: None,
            out: VecDeque::new(),
        };
        for setup in groups {
            let peer = node
                .peers
                .iter()
                .position(|it| it.id == setup.config.peer)
                .expect("every group's peer is one of the node's peers");
            let machine =
                Group::boot(setup.config, node.cfg.incarnation, setup.durable, setup.log, setup.join_only, now);
            node.groups.push(Slot { index: setup.index, peer, machine, runner: Runner::new(setup.resources) });
        }
        for slot in 0..node.groups.len() {
            node.drain_group(slot, now);
        }
        node
    }

    /// Feeds one event. Commands queue up for [`Node::poll_command`].
    pub fn handle(&mut self, now: Instant, event: NodeEvent) {
        for peer in &mut self.peers {
            peer.fence_fresh = false;
        }
        self.check_pause(now);
        match event {
            NodeEvent::Heartbeat { from, link, incarnation } => {
                if let Some(p) = self.peer_index(from)
                    && link < self.cfg.links
                {
                    self.on_heartbeat(now, p, link, incarnation);
                }
            }
            NodeEvent::ChannelUp { peer, incarnation, link, conn } => match self.peer_index(peer) {
                Some(p) => self.on_channel_up(now, p, incarnation, link, conn),
                None => self.out.push_back(NodeCommand::Disconnect { peer, conn }),
            },
            NodeEvent::ChannelDown { peer, conn } => {
                if let Some(p) = self.peer_index(peer)
                    && self.peers[p].channel.conn() == Some(conn)
                {
                    self.on_channel_down(now, p);
                }
            }
            NodeEvent::Message { peer, conn, group, epoch, msg } => {
                let Some(p) = self.peer_index(peer) else { return };
                let Channel::Up { incarnation, conn: current, .. } = self.peers[p].channel else { return };
                if current != conn {
                    return; // A connection the node already gave up on.
                }
                let Some(slot) = self.slot_of(group).filter(|&s| self.groups[s].peer == p) else {
                    self.report(NodeReport::UnknownGroup { peer, group });
                    return;
                };
                let told = self.peers[p].groups_see == Some(incarnation) && !self.peers[p].channel_fresh;
                if told {
                    self.feed(slot, now, Event::Message { from: incarnation, epoch, msg });
                } else if self.peers[p].early.len() < EARLY_MESSAGES {
                    // The peer's heartbeats have not been heard yet: hold the message until
                    // the groups are told the channel is up, so none is lost.
                    self.peers[p].early.push((slot, epoch, msg));
                } else {
                    self.close_channel(now, p);
                }
            }
            NodeEvent::Append { group, entries } => {
                if let Some(slot) = self.slot_of(group) {
                    self.feed(slot, now, Event::Append { entries });
                }
            }
            NodeEvent::ForceStart { group } => {
                if let Some(slot) = self.slot_of(group) {
                    self.feed(slot, now, Event::ForceStart);
                }
            }
            NodeEvent::ResourceDone { group, resource, op, outcome } => {
                if let Some(slot) = self.slot_of(group) {
                    self.groups[slot].runner.done(now, resource, op, outcome);
                    self.drain_group(slot, now);
                }
            }
            NodeEvent::Switchover { group } => {
                if let Some(slot) = self.slot_of(group) {
                    self.feed(slot, now, Event::Switchover);
                }
            }
            NodeEvent::ClearFailures { group } => {
                if let Some(slot) = self.slot_of(group) {
                    self.groups[slot].runner.clear_failures();
                    self.feed(slot, now, Event::ClearFailures);
                }
            }
            NodeEvent::FenceResult { peer, confirmed } => {
                if let Some(p) = self.peer_index(peer) {
                    self.on_fence_result(now, p, confirmed);
                }
            }
            NodeEvent::Timeout => self.on_timeout(now),
        }
    }

    /// The next command to execute, in order.
    pub fn poll_command(&mut self) -> Option<NodeCommand> {
        if self.out.is_empty() {
            self.expected_wake = self.poll_timeout();
        }
        self.out.pop_front()
    }

    /// A node woken long after it asked (paused by SIGSTOP, starved of CPU) has not heard
    /// its peers because it was not listening: their silence is its own. Every link gets a
    /// fresh `dead_after`, so a paused active does not fence the peer that may have taken
    /// over; it learns the newer generation from the peer's next messages instead.
    fn check_pause(&mut self, now: Instant) {
        let (Some(threshold), Some(expected)) = (self.cfg.pause_threshold, self.expected_wake) else { return };
        if now <= expected.after(threshold) {
            return;
        }
        for peer in &mut self.peers {
            for link in peer.links.iter_mut().filter(|it| it.up) {
                link.last_heard = Some(now);
            }
        }
        self.report(NodeReport::PauseDetected { late: now.since(expected) });
    }

    /// When to call `handle(now, NodeEvent::Timeout)`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dead_after = self.cfg.dead_after;
        let links = self.peers.iter().flat_map(|p| {
            p.links.iter().filter(|it| it.up).filter_map(move |it| it.last_heard.map(|at| at.after(dead_after)))
        });
        let channels = self.peers.iter().filter(|p| self.dials(p.id) && p.alive).filter_map(|p| match p.channel {
            Channel::Down { retry_at } => Some(retry_at),
            Channel::Connecting { since, .. } => Some(since.after(dead_after)),
            Channel::Up { .. } => None,
        });
        let groups = self.groups.iter().flat_map(|it| [it.machine.poll_timeout(), it.runner.poll_timeout()]).flatten();
        std::iter::once(self.next_heartbeat).chain(links).chain(channels).chain(groups).min()
    }

    /// A snapshot for `status`; durations are measured back from `now`.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let peers = self
            .peers
            .iter()
            .map(|p| PeerStatus {
                id: p.id,
                alive: p.alive,
                incarnation: p.heard,
                links: p
                    .links
                    .iter()
                    .map(|it| LinkStatus { up: it.up, last_heard: it.last_heard.map(|at| now.since(at)) })
                    .collect(),
                channel_link: match p.channel {
                    Channel::Up { link, .. } => Some(link),
                    _ => None,
                },
                fencing: p.fence_running.is_some(),
            })
            .collect();
        let groups = self
            .groups
            .iter()
            .map(|it| (it.index, self.peers[it.peer].id, it.machine.status(), it.runner.status()))
            .collect();
        NodeStatus { me: self.cfg.me, incarnation: self.cfg.incarnation, peers, groups }
    }

    /// The role machine of a group, for read-only inspection.
    pub fn group(&self, group: GroupIndex) -> Option<&Group> {
        self.slot_of(group).map(|slot| &self.groups[slot].machine)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    fn peer_index(&self, id: NodeId) -> Option<usize> {
        self.peers.iter().position(|it| it.id == id)
    }

    fn slot_of(&self, group: GroupIndex) -> Option<usize> {
        self.groups.iter().position(|it| it.index == group)
    }

    /// The node with the lower id dials; the other accepts.
    fn dials(&self, peer: NodeId) -> bool {
        self.cfg.me < peer
    }

    fn report(&mut self, report: NodeReport) {
        self.out.push_back(NodeCommand::Report(report));
    }

    fn feed(&mut self, slot: usize, now: Instant, event: Event) {
        self.groups[slot].machine.handle(now, event);
        self.drain_group(slot, now);
    }

    /// Moves a group's commands to the node's queue, in order: fence requests become one
    /// fence per peer at a time, the service's start and stop go to the group's resource
    /// runner, and what the runner reports goes back to the group.
    fn drain_group(&mut self, slot: usize, now: Instant) {
        let (index, p) = (self.groups[slot].index, self.groups[slot].peer);
        let peer = self.peers[p].id;
        loop {
            // The runner's outputs first, so they follow the command that caused them.
            if let Some(output) = self.groups[slot].runner.poll_output() {
                match output {
                    RunnerOutput::Run { resource, op } => {
                        self.out.push_back(NodeCommand::Resource { group: index, resource, op })
                    }
                    RunnerOutput::ServiceStopped => self.groups[slot].machine.handle(now, Event::ServiceStopped),
                    RunnerOutput::ServiceFailed { start, resource } => {
                        self.report(NodeReport::ServiceFailed { group: index, resource, start });
                        self.groups[slot].machine.handle(now, Event::ServiceFailed { start });
                    }
                    RunnerOutput::Halt { resource } => self.out.push_back(NodeCommand::Halt { group: index, resource }),
                    RunnerOutput::MonitorFailed { resource, restart } => {
                        self.report(NodeReport::MonitorFailed { group: index, resource, restart })
                    }
                }
                continue;
            }
            let Some(command) = self.groups[slot].machine.poll_command() else { break };
            match command {
                group::Command::FencePeer { target } => self.request_fence(p, slot, target),
                group::Command::StartService => self.groups[slot].runner.start(now),
                group::Command::StopService => self.groups[slot].runner.stop(now),
                command => self.out.push_back(NodeCommand::Group { group: index, peer, command }),
            }
        }
    }

    fn request_fence(&mut self, p: usize, slot: usize, target: FenceTarget) {
        let peer = &mut self.peers[p];
        match &mut peer.fence_running {
            // Requested during this same event: the shell has not started it yet.
            Some(waiters) if peer.fence_fresh => waiters.push((slot, target)),
            // A fence already under way may have powered the node off before this request:
            // the request waits for a fresh one.
            Some(_) => peer.fence_queued.push((slot, target)),
            None => {
                peer.fence_running = Some(vec![(slot, target)]);
                peer.fence_fresh = true;
                let id = peer.id;
                self.out.push_back(NodeCommand::Fence { peer: id });
                self.report(NodeReport::FenceStarted { peer: id });
            }
        }
    }

    fn on_fence_result(&mut self, now: Instant, p: usize, confirmed: bool) {
        let Some(waiters) = self.peers[p].fence_running.take() else { return };
        let id = self.peers[p].id;
        self.report(NodeReport::FenceFinished { peer: id, confirmed });
        for (slot, target) in waiters {
            let event = if confirmed { Event::PeerStopped { target } } else { Event::FenceFailed { target } };
            self.feed(slot, now, event);
        }
        // Requests that waited share one fresh round.
        let queued = std::mem::take(&mut self.peers[p].fence_queued);
        self.peers[p].fence_fresh = false;
        for (slot, target) in queued {
            self.request_fence(p, slot, target);
        }
    }

    /// Notes run `incarnation` of peer `p`; a newer run means the older one is gone.
    fn observe_run(&mut self, now: Instant, p: usize, incarnation: Incarnation) -> bool {
        let peer = &mut self.peers[p];
        match peer.heard {
            Some(heard) if incarnation < heard => return false,
            Some(heard) if incarnation > heard => {
                let id = peer.id;
                peer.heard = Some(incarnation);
                self.report(NodeReport::PeerRestarted { peer: id, old: heard, new: incarnation });
                if matches!(self.peers[p].channel, Channel::Up { incarnation: c, .. } if c < incarnation) {
                    self.close_channel(now, p);
                }
                self.peers[p].groups_see = None;
                if let Some(told) = self.peers[p].groups_told
                    && told < incarnation
                {
                    self.feed_peer_groups(p, now, Event::PeerGone { inc: told });
                }
            }
            Some(_) => {}
            None => peer.heard = Some(incarnation),
        }
        true
    }

    fn on_heartbeat(&mut self, now: Instant, p: usize, link: usize, incarnation: Incarnation) {
        if !self.observe_run(now, p, incarnation) {
            return; // A late packet from an older run.
        }
        let peer = &mut self.peers[p];
        let id = peer.id;
        peer.links[link].last_heard = Some(now);
        if !peer.links[link].up {
            peer.links[link].up = true;
            self.report(NodeReport::LinkUp { peer: id, link });
        }
        if !self.peers[p].alive {
            self.peers[p].alive = true;
            self.report(NodeReport::PeerAlive { peer: id, incarnation });
            self.try_connect(now, p);
        }
        self.tell_groups_connected(now, p);
    }

    fn on_channel_up(&mut self, now: Instant, p: usize, incarnation: Incarnation, link: usize, conn: ConnId) {
        let id = self.peers[p].id;
        let dialed = matches!(self.peers[p].channel, Channel::Connecting { conn: c, .. } if c == conn);
        // The dialing side takes only the connection it is dialing; the other side takes
        // any connection the peer dials (the peer gave up on the previous one).
        if self.dials(id) && !dialed {
            self.out.push_back(NodeCommand::Disconnect { peer: id, conn });
            return;
        }
        if !self.observe_run(now, p, incarnation) {
            // A late handshake of an older run: a failed channel.
            self.out.push_back(NodeCommand::Disconnect { peer: id, conn });
            if dialed {
                self.peers[p].channel = Channel::Down { retry_at: now };
                self.try_connect(now, p);
            }
            return;
        }
        if let Channel::Up { conn: old, .. } = self.peers[p].channel
            && old != conn
        {
            self.out.push_back(NodeCommand::Disconnect { peer: id, conn: old });
        }
        self.peers[p].channel = Channel::Up { incarnation, link, conn };
        self.peers[p].channel_fresh = true;
        self.peers[p].early.clear();
        self.report(NodeReport::ChannelUp { peer: id, link });
        self.tell_groups_connected(now, p);
    }

    /// The channel's connection is gone (closed by the peer, failed, or closed by us).
    fn on_channel_down(&mut self, now: Instant, p: usize) {
        let retry_at = now.after(self.cfg.reconnect_backoff);
        let was_up = matches!(self.peers[p].channel, Channel::Up { .. });
        self.peers[p].channel = Channel::Down { retry_at };
        self.peers[p].channel_fresh = false;
        self.peers[p].early.clear();
        if was_up {
            let id = self.peers[p].id;
            self.report(NodeReport::ChannelDown { peer: id });
        }
    }

    /// Groups learn that the peer is connected once its run is alive on some link and the
    /// channel to that same run is up; again after every new channel (replication then
    /// restarts from durable positions).
    fn tell_groups_connected(&mut self, now: Instant, p: usize) {
        let peer = &self.peers[p];
        let Channel::Up { incarnation, .. } = peer.channel else { return };
        if !peer.alive || peer.heard != Some(incarnation) || !peer.channel_fresh {
            return;
        }
        self.peers[p].channel_fresh = false;
        self.peers[p].groups_see = Some(incarnation);
        self.peers[p].groups_told = Some(incarnation);
        self.feed_peer_groups(p, now, Event::PeerConnected { inc: incarnation });
        for (slot, epoch, msg) in std::mem::take(&mut self.peers[p].early) {
            self.feed(slot, now, Event::Message { from: incarnation, epoch, msg });
        }
    }

    fn feed_peer_groups(&mut self, p: usize, now: Instant, event: Event) {
        for slot in 0..self.groups.len() {
            if self.groups[slot].peer == p {
                self.feed(slot, now, event.clone());
            }
        }
    }

    fn close_channel(&mut self, now: Instant, p: usize) {
        let id = self.peers[p].id;
        if let Some(conn) = self.peers[p].channel.conn() {
            self.out.push_back(NodeCommand::Disconnect { peer: id, conn });
        }
        self.on_channel_down(now, p);
        // Retry at once over another link, not after the back-off.
        self.peers[p].channel = Channel::Down { retry_at: now };
        self.try_connect(now, p);
    }

    /// The dialing side opens the channel over the first link that is up.
    fn try_connect(&mut self, now: Instant, p: usize) {
        let peer = &self.peers[p];
        if !self.dials(peer.id) || !peer.alive {
            return;
        }
        let Channel::Down { retry_at } = peer.channel else { return };
        if retry_at > now {
            return;
        }
        let Some(link) = peer.links.iter().position(|it| it.up) else { return };
        let id = peer.id;
        self.next_dial += 1;
        let conn = ConnId(self.next_dial);
        self.peers[p].channel = Channel::Connecting { link, since: now, conn };
        self.out.push_back(NodeCommand::Connect { peer: id, link, conn });
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.next_heartbeat <= now {
            self.out.push_back(NodeCommand::SendHeartbeats);
            self.next_heartbeat = now.after(self.cfg.heartbeat_interval);
        }
        for p in 0..self.peers.len() {
            self.check_links(now, p);
        }
        for slot in 0..self.groups.len() {
            if self.groups[slot].machine.poll_timeout().is_some_and(|at| at <= now) {
                self.feed(slot, now, Event::Timeout);
            }
            if self.groups[slot].runner.poll_timeout().is_some_and(|at| at <= now) {
                self.groups[slot].runner.timeout(now);
                self.drain_group(slot, now);
            }
        }
    }

    fn check_links(&mut self, now: Instant, p: usize) {
        let dead_after = self.cfg.dead_after;
        let id = self.peers[p].id;
        // Every link silent at `now` goes down first, so reports count what truly remains.
        let expired: Vec<usize> = (0..self.cfg.links)
            .filter(|&link| {
                let state = self.peers[p].links[link];
                state.up && state.last_heard.is_some_and(|at| at.after(dead_after) <= now)
            })
            .collect();
        for &link in &expired {
            self.peers[p].links[link].up = false;
        }
        let links_up = self.peers[p].links.iter().filter(|it| it.up).count();
        for link in expired {
            self.report(NodeReport::LinkDown { peer: id, link, links_up });
            // A channel carried by a dead link moves to one that is up.
            let on_link = match self.peers[p].channel {
                Channel::Up { link: l, .. } | Channel::Connecting { link: l, .. } => l == link,
                Channel::Down { .. } => false,
            };
            if on_link && links_up > 0 {
                self.close_channel(now, p);
            }
        }
        let peer = &self.peers[p];
        if peer.alive && peer.links.iter().all(|it| !it.up) {
            let incarnation = peer.heard.expect("an alive peer was heard");
            self.peers[p].alive = false;
            self.report(NodeReport::PeerDead { peer: id, incarnation });
            if let Some(conn) = self.peers[p].channel.conn() {
                self.out.push_back(NodeCommand::Disconnect { peer: id, conn });
            }
            self.on_channel_down(now, p);
            if let Some(seen) = self.peers[p].groups_see.take() {
                self.feed_peer_groups(p, now, Event::PeerDown { inc: seen });
            }
        }
        // A dial that neither succeeded nor failed within dead_after is abandoned.
        if let Channel::Connecting { since, conn, .. } = self.peers[p].channel
            && since.after(dead_after) <= now
        {
            self.out.push_back(NodeCommand::Disconnect { peer: id, conn });
            self.on_channel_down(now, p);
        }
        self.try_connect(now, p);
    }
}

#[cfg(test)]
#[path = "node_test.rs"]
mod tests;
