//! Tests of the node layer: failure detector over two links, peer channel, fencing per
//! peer and routing to the groups.
//!
//! Two drivers:
//! - [`Solo`] drives one [`Node`] by hand: the test chooses every event and instant, and the
//!   peer's heartbeats arrive at the instants it lists; it names connections like a shell.
//! - [`Sim`] runs two real nodes against each other over an in-memory network (two links,
//!   TCP-like connections with ids, a virtual clock) and executes their commands; groups
//!   reach real roles (M and confirmed SL) through real messages. It also drives the
//!   property tests.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::group::{
    Arbiter, Cause, Command, Failback, FenceTarget, GroupConfig, GroupDurable, Message, PeerState, Report,
};
use crate::group::{PeerStatus as GroupPeer, WaitReason};
use crate::log::{LogMeta, Record};
use crate::runner::{Op, Outcome, ResourcePolicy};
use crate::types::{Epoch, Incarnation, Instant, NodeId, Priority, ReqId, Role};

const HEARTBEAT: Duration = Duration::from_millis(100);
const DEAD_AFTER: Duration = Duration::from_millis(500);
const BACKOFF: Duration = Duration::from_millis(200);
const STARTUP_WAIT: Duration = Duration::from_secs(2);
const FENCE_RETRY: Duration = Duration::from_secs(1);
/// Each group of the simulated cluster has one resource, monitored every second.
const RESOURCE: ResourcePolicy = ResourcePolicy {
    monitor_interval: Duration::from_secs(1),
    max_restarts: 1,
    restart_window: Duration::from_secs(60),
};
/// The fence-race delay of [`Sim::with_fence_delay`] clusters.
const FENCE_DELAY: Duration = Duration::from_millis(700);
/// The session of a run's first join (an SL numbers its joins 1, 2, … per run).
const FIRST_JOIN: u64 = 1;

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const IDS: [NodeId; 2] = [A, B];
const G0: GroupIndex = GroupIndex(0);
const G1: GroupIndex = GroupIndex(1);
const G2: GroupIndex = GroupIndex(2);

fn ms(n: u64) -> Instant {
    Instant(n * 1_000_000)
}

/// An instant in whole milliseconds.
fn in_ms(t: Instant) -> u64 {
    t.0 / 1_000_000
}

fn inc(n: u64) -> Incarnation {
    Incarnation(n)
}

fn other(id: NodeId) -> NodeId {
    if id == A { B } else { A }
}

fn node_config(me: NodeId, peers: &[NodeId], incarnation: u64) -> NodeConfig {
    NodeConfig {
        me,
        incarnation: inc(incarnation),
        peers: peers.to_vec(),
        links: 2,
        heartbeat_interval: HEARTBEAT,
        dead_after: DEAD_AFTER,
        reconnect_backoff: BACKOFF,
        // Off, so that a test's jumps in time are not taken for pauses of the node; the
        // pause tests turn it on.
        pause_threshold: None,
    }
}

/// A group's settings without the fence-race delay (an SL fences its lost M at once,
/// like the M); [`Sim::with_fence_delay`] sets one.
fn group_config(me: NodeId, peer: NodeId, arbiter: Arbiter) -> GroupConfig {
    GroupConfig {
        me,
        peer,
        arbiter,
        startup_wait: STARTUP_WAIT,
        fence_retry: FENCE_RETRY,
        fence_delay: Duration::ZERO,
        catch_up_window: 4,
        preferred: me == NodeId(0),
        failback: Failback::Manual,
        failback_delay: Duration::ZERO,
    }
}

/// A fresh group: node A is the preferred node (priority 2), B starts at 3.
fn group_setup(index: GroupIndex, me: NodeId, peer: NodeId, arbiter: Arbiter) -> GroupSetup {
    GroupSetup {
        index,
        config: group_config(me, peer, arbiter),
        durable: GroupDurable::initial(me == A),
        log: LogMeta::empty(),
        join_only: false,
        resources: vec![RESOURCE],
    }
}

/// A group sends its state, stamped with the epoch it states (its durable one).
fn state_send(to: Incarnation, state: PeerState) -> Command {
    Command::Send { to, epoch: state.epoch, msg: Message::State(state) }
}

fn report(r: NodeReport) -> NodeCommand {
    NodeCommand::Report(r)
}

/// The runner starting the group's one resource: the node serves the group from here on.
fn start_resource(group: GroupIndex) -> NodeCommand {
    NodeCommand::Resource { group, resource: 0, op: Op::Start }
}

fn gcmd(group: GroupIndex, peer: NodeId, command: Command) -> NodeCommand {
    NodeCommand::Group { group, peer, command }
}

fn greport(group: GroupIndex, peer: NodeId, r: Report) -> NodeCommand {
    gcmd(group, peer, Command::Report(r))
}

fn drain(node: &mut Node) -> Vec<NodeCommand> {
    std::iter::from_fn(|| node.poll_command()).collect()
}

/// Everything but the periodic `SendHeartbeats` (asserted in `heartbeats_sent_every_interval`).
fn no_heartbeats(out: &[(Instant, NodeCommand)]) -> Vec<(Instant, NodeCommand)> {
    out.iter().filter(|(_, c)| *c != NodeCommand::SendHeartbeats).cloned().collect()
}

/// Only the channel commands.
fn channel_commands(out: &[(Instant, NodeCommand)]) -> Vec<(Instant, NodeCommand)> {
    out.iter()
        .filter(|(_, c)| matches!(c, NodeCommand::Connect { .. } | NodeCommand::Disconnect { .. }))
        .cloned()
        .collect()
}

/// Only fence commands, fence reports and group commands.
fn fencing_and_groups(out: &[NodeCommand]) -> Vec<NodeCommand> {
    out.iter()
        .filter(|c| {
            matches!(
                c,
                NodeCommand::Fence { .. }
                    | NodeCommand::Group { .. }
                    | NodeCommand::Report(NodeReport::FenceStarted { .. } | NodeReport::FenceFinished { .. })
            )
        })
        .cloned()
        .collect()
}

fn untimed(out: &[(Instant, NodeCommand)]) -> Vec<NodeCommand> {
    out.iter().map(|(_, c)| c.clone()).collect()
}

/// Peer heartbeats every interval from `from` to `to` (inclusive) on `links`.
fn beats(from: u64, to: u64, links: &[usize]) -> Vec<(Instant, usize)> {
    (from..=to).step_by(100).flat_map(|t| links.iter().map(move |&l| (ms(t), l))).collect()
}

/// The id the node gives its `n`th dial (from 1).
fn dial_id(n: u64) -> ConnId {
    ConnId(DIAL_IDS + n)
}

/// The connection an event is about, if any.
fn event_conn(event: &NodeEvent) -> Option<ConnId> {
    match *event {
        NodeEvent::ChannelUp { conn, .. } | NodeEvent::ChannelDown { conn, .. } | NodeEvent::Message { conn, .. } => {
            Some(conn)
        }
        _ => None,
    }
}

/// One node driven by hand. Its peer's side of the channel is played like a careful shell:
/// the node names its dials (checked to be `DIAL_IDS + 1`, `+ 2`, …), accepted connections
/// get ids 1, 2, … (top bit clear), and `at` refuses to deliver an event of a connection
/// the node closed or was told is down; `stale` delivers one anyway, for the tests of the
/// core's own defence against a shell that reports late.
struct Solo {
    node: Node,
    now: Instant,
    /// Dials the node asked for so far.
    dials: u64,
    /// The dial under way: asked for, neither up nor failed nor abandoned yet.
    dialing: Option<ConnId>,
    /// Connections that came up and were not closed since, oldest first.
    open: Vec<ConnId>,
    /// Connections the node closed or was told are down: the shell reports nothing more of them.
    gone: Vec<ConnId>,
    /// The last id the shell gave an accepted connection.
    accepted: u64,
}

impl Solo {
    /// Node `me` with one peer, `groups` groups with that peer (fence arbiter), run 1,
    /// started at 0.
    fn new(me: NodeId, groups: u16) -> Solo {
        Solo::with(node_config(me, &[other(me)], 1), groups, STARTUP_WAIT)
    }

    fn with(cfg: NodeConfig, groups: u16, startup_wait: Duration) -> Solo {
        let (me, peer) = (cfg.me, cfg.peers[0]);
        let setups = (0..groups)
            .map(|g| {
                let mut s = group_setup(GroupIndex(g), me, peer, Arbiter::Fence);
                s.config.startup_wait = startup_wait;
                s
            })
            .collect();
        let mut node = Node::new(cfg, setups, ms(0));
        assert_eq!(drain(&mut node), vec![], "a fresh node in X has nothing to do");
        Solo::from_node(node, ms(0))
    }

    fn from_node(node: Node, now: Instant) -> Solo {
        Solo { node, now, dials: 0, dialing: None, open: Vec::new(), gone: Vec::new(), accepted: 0 }
    }

    fn peer(&self) -> NodeId {
        self.node.config().peers[0]
    }

    /// Whether this node dials its peer (the lower id dials).
    fn dials_peer(&self) -> bool {
        self.node.config().me < self.peer()
    }

    /// Delivers `event` at `t`, as a careful shell would.
    fn at(&mut self, t: Instant, event: NodeEvent) -> Vec<NodeCommand> {
        if let Some(conn) = event_conn(&event) {
            assert!(!self.gone.contains(&conn), "the shell reports nothing of a closed connection: {event:?}");
        }
        self.stale(t, event)
    }

    /// Delivers `event` at `t` even if it is about a connection the node closed (a late
    /// report that a careless shell might still hand over).
    fn stale(&mut self, t: Instant, event: NodeEvent) -> Vec<NodeCommand> {
        assert!(t >= self.now, "time goes forward");
        self.now = t;
        let peer = self.peer();
        match event {
            NodeEvent::ChannelUp { peer: p, conn, .. } if p == peer => {
                if self.dialing == Some(conn) {
                    self.dialing = None;
                }
                if !self.open.contains(&conn) && !self.gone.contains(&conn) {
                    self.open.push(conn);
                }
            }
            NodeEvent::ChannelDown { peer: p, conn } if p == peer => self.forget(conn),
            _ => {}
        }
        self.node.handle(t, event);
        let out = drain(&mut self.node);
        for command in &out {
            match *command {
                NodeCommand::Connect { peer: p, conn, .. } if p == peer => {
                    self.dials += 1;
                    assert_eq!(conn, dial_id(self.dials), "the node names its dials DIAL_IDS + 1, + 2, …");
                    self.dialing = Some(conn);
                }
                NodeCommand::Disconnect { peer: p, conn } if p == peer => self.forget(conn),
                _ => {}
            }
        }
        out
    }

    fn forget(&mut self, conn: ConnId) {
        self.open.retain(|it| *it != conn);
        if self.dialing == Some(conn) {
            self.dialing = None;
        }
        if !self.gone.contains(&conn) {
            self.gone.push(conn);
        }
    }

    fn timeout(&mut self, t: Instant) -> Vec<NodeCommand> {
        self.at(t, NodeEvent::Timeout)
    }

    fn hb(&mut self, t: Instant, link: usize, incarnation: u64) -> Vec<NodeCommand> {
        let from = self.peer();
        self.at(t, NodeEvent::Heartbeat { from, link, incarnation: inc(incarnation) })
    }

    /// The id the node will give its next dial.
    fn next_dial(&self) -> ConnId {
        dial_id(self.dials + 1)
    }

    /// The dial under way.
    fn dialing(&self) -> ConnId {
        self.dialing.expect("a dial is under way")
    }

    /// The newest connection that is up.
    fn conn(&self) -> ConnId {
        *self.open.last().expect("a connection is up")
    }

    /// The id the shell gives the next connection it accepts.
    fn accept(&mut self) -> ConnId {
        self.accepted += 1;
        assert!(self.accepted < DIAL_IDS);
        ConnId(self.accepted)
    }

    /// A handshake with the peer's run `incarnation` completes on `link`: the dial under
    /// way on the dialing side, a newly accepted connection on the other.
    fn channel_up(&mut self, t: Instant, incarnation: u64, link: usize) -> Vec<NodeCommand> {
        let conn = if self.dials_peer() { self.dialing() } else { self.accept() };
        let peer = self.peer();
        self.at(t, NodeEvent::ChannelUp { peer, incarnation: inc(incarnation), link, conn })
    }

    /// The newest connection that is up closes.
    fn channel_down(&mut self, t: Instant) -> Vec<NodeCommand> {
        let (peer, conn) = (self.peer(), self.conn());
        self.at(t, NodeEvent::ChannelDown { peer, conn })
    }

    /// The dial under way fails.
    fn dial_fails(&mut self, t: Instant) -> Vec<NodeCommand> {
        let (peer, conn) = (self.peer(), self.dialing());
        self.at(t, NodeEvent::ChannelDown { peer, conn })
    }

    /// A group message arrives on the newest connection that is up, stamped as an honest
    /// peer stamps it: a State with the epoch it states, a message of the replication
    /// stream with the epoch of this node's group (the two ends of a stream share one
    /// epoch: an SL makes its active's epoch durable before it joins).
    fn msg(&mut self, t: Instant, group: GroupIndex, msg: Message) -> Vec<NodeCommand> {
        let epoch = match &msg {
            Message::State(ps) => ps.epoch,
            _ => self.node.group(group).map_or(Epoch::ZERO, |g| g.durable().epoch),
        };
        self.msg_at(t, group, epoch, msg)
    }

    /// A group message stamped with `epoch` arrives on the newest connection that is up.
    fn msg_at(&mut self, t: Instant, group: GroupIndex, epoch: Epoch, msg: Message) -> Vec<NodeCommand> {
        let (peer, conn) = (self.peer(), self.conn());
        self.at(t, NodeEvent::Message { peer, conn, group, epoch, msg })
    }

    fn connect(&self, link: usize, conn: ConnId) -> NodeCommand {
        NodeCommand::Connect { peer: self.peer(), link, conn }
    }

    fn disconnect(&self, conn: ConnId) -> NodeCommand {
        NodeCommand::Disconnect { peer: self.peer(), conn }
    }

    /// Runs until `until`: the node's timer fires whenever `now` reaches `poll_timeout`
    /// (before a heartbeat of the same instant), and the peer's run `peer_inc` heartbeats
    /// at the listed instants. Returns every command with the instant it was emitted at.
    fn run(&mut self, until: Instant, beats: &[(Instant, usize)], peer_inc: u64) -> Vec<(Instant, NodeCommand)> {
        let mut beats: VecDeque<(Instant, usize)> = beats.iter().copied().filter(|(t, _)| *t >= self.now).collect();
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let timer = self.node.poll_timeout().map(|t| t.max(self.now)).filter(|t| *t <= until);
            let beat = beats.front().copied().filter(|(t, _)| *t <= until);
            let (t, cmds) = match (timer, beat) {
                (Some(t), Some((b, _))) if t <= b => (t, self.timeout(t)),
                (_, Some((b, link))) => {
                    beats.pop_front();
                    (b, self.hb(b, link, peer_inc))
                }
                (Some(t), None) => (t, self.timeout(t)),
                (None, None) => {
                    self.now = self.now.max(until);
                    return out;
                }
            };
            out.extend(cmds.into_iter().map(|c| (t, c)));
        }
        panic!("the node's timer does not move forward (poll_timeout stuck at {:?})", self.node.poll_timeout());
    }
}

/// Node `me` hears run 1 of its peer on both links at 10 ms and the channel comes up on
/// link 0 at 20 ms (the dialer dialed at 10 ms).
fn connected(me: NodeId) -> Solo {
    connected_with(node_config(me, &[other(me)], 1))
}

/// [`connected`] for a node with configuration `cfg` (one peer, one group).
fn connected_with(cfg: NodeConfig) -> Solo {
    let me = cfg.me;
    let mut s = Solo::with(cfg, 1, STARTUP_WAIT);
    let peer = other(me);
    assert_eq!(s.timeout(ms(0)), vec![NodeCommand::SendHeartbeats]);
    let mut first =
        vec![report(NodeReport::LinkUp { peer, link: 0 }), report(NodeReport::PeerAlive { peer, incarnation: inc(1) })];
    if me == A {
        first.push(s.connect(0, dial_id(1)));
    }
    assert_eq!(s.hb(ms(10), 0, 1), first);
    assert_eq!(s.hb(ms(10), 1, 1), vec![report(NodeReport::LinkUp { peer, link: 1 })]);
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.channel_up(ms(20), 1, 0),
        vec![report(NodeReport::ChannelUp { peer, link: 0 }), gcmd(G0, peer, state_send(inc(1), state))]
    );
    s
}

fn group_peer(s: &Solo, g: GroupIndex) -> GroupPeer {
    s.node.group(g).unwrap().status().peer
}

// ---------------------------------------------------------------------------------------
// Failure detector (F2.1) and channel link (F1.7)
// ---------------------------------------------------------------------------------------

#[test]
fn f2_1_peer_declared_dead_only_when_every_link_silent_for_dead_after() {
    for me in IDS {
        let peer = other(me);
        let mut s = connected(me);
        let conn = s.conn();
        // Link 1 falls silent after 10 ms; link 0 keeps carrying heartbeats until 410.
        let out = s.run(ms(909), &beats(110, 410, &[0]), 1);
        assert_eq!(
            no_heartbeats(&out),
            vec![(ms(510), report(NodeReport::LinkDown { peer, link: 1, links_up: 1 }))],
            "{me:?}: one silent link is reported and changes nothing else"
        );
        assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
        assert!(s.node.status(s.now).peers[0].alive);
        // Link 0 has now been silent for dead_after too.
        let out = s.run(ms(2000), &[], 1);
        assert_eq!(
            no_heartbeats(&out),
            vec![
                (ms(910), report(NodeReport::LinkDown { peer, link: 0, links_up: 0 })),
                (ms(910), report(NodeReport::PeerDead { peer, incarnation: inc(1) })),
                (ms(910), s.disconnect(conn)),
                (ms(910), report(NodeReport::ChannelDown { peer })),
                // The group's boot wait ends: alone with priority 2 or 3, it waits.
                (
                    ms(2000),
                    greport(
                        G0,
                        peer,
                        Report::Waiting(WaitReason::Undetermined {
                            own: if me == A { Priority::P2 } else { Priority::P3 }
                        })
                    )
                ),
            ],
            "{me:?}"
        );
        assert_eq!(group_peer(&s, G0), GroupPeer::Down { inc: inc(1), stopped: false }, "{me:?}: PeerDown for run 1");
    }
}

#[test]
fn peer_death_noticed_at_once_on_both_links_does_not_redial() {
    // Both links carried their last heartbeat at the same instant (a crash of the peer,
    // or one batch of packets): at 510 every link is silent for dead_after. The peer is
    // dead; nothing should be dialed over a link that is itself past its deadline.
    for me in IDS {
        let peer = other(me);
        let mut s = connected(me);
        let conn = s.conn();
        let out = s.run(ms(600), &[], 1);
        let at_510: Vec<NodeCommand> = out.iter().filter(|(t, _)| *t == ms(510)).map(|(_, c)| c.clone()).collect();
        assert!(at_510.contains(&report(NodeReport::PeerDead { peer, incarnation: inc(1) })), "{me:?}: {at_510:?}");
        let actions: Vec<&NodeCommand> =
            at_510.iter().filter(|c| !matches!(c, NodeCommand::Report(_) | NodeCommand::SendHeartbeats)).collect();
        assert_eq!(actions, vec![&s.disconnect(conn)], "{me:?}: one Disconnect and no dial: {at_510:?}");
        for c in &at_510 {
            if let NodeCommand::Report(NodeReport::LinkDown { links_up, .. }) = c {
                assert_eq!(*links_up, 0, "{me:?}: no link of the peer is still up: {at_510:?}");
            }
        }
    }
}

#[test]
fn f1_7_channel_moves_to_the_other_link_when_its_link_fails() {
    let mut s = connected(A);
    let (old, new) = (s.conn(), s.next_dial());
    // Link 0 (carrying the channel) falls silent; link 1 keeps working.
    let out = s.run(ms(515), &beats(110, 510, &[1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(510), report(NodeReport::LinkDown { peer: B, link: 0, links_up: 1 })),
            (ms(510), s.disconnect(old)),
            (ms(510), report(NodeReport::ChannelDown { peer: B })),
            (ms(510), s.connect(1, new)),
        ]
    );
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.channel_up(ms(520), 1, 1),
        vec![report(NodeReport::ChannelUp { peer: B, link: 1 }), gcmd(G0, B, state_send(inc(1), state))]
    );
    assert_eq!(s.node.status(s.now).peers[0].channel_link, Some(1));
}

#[test]
fn f1_7_a_dial_on_a_failed_link_moves_to_the_other_link() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    // Link 0 is heard first, so the dial goes over it; then only link 1 keeps working.
    let first = s.next_dial();
    assert!(s.hb(ms(10), 0, 1).contains(&s.connect(0, first)));
    assert_eq!(s.hb(ms(20), 1, 1), vec![report(NodeReport::LinkUp { peer: B, link: 1 })]);
    let second = s.next_dial();
    let out = s.run(ms(515), &beats(120, 520, &[1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(510), report(NodeReport::LinkDown { peer: B, link: 0, links_up: 1 })),
            (ms(510), s.disconnect(first)),
            (ms(510), s.connect(1, second)),
        ]
    );
    assert_eq!(s.dialing(), second);
}

#[test]
fn dialer_connects_only_after_hearing_the_peer() {
    let mut s = Solo::new(A, 1);
    // Two seconds without a word from the peer: heartbeats go out, nothing is dialed.
    let out = s.run(ms(1999), &[], 1);
    assert!(out.iter().all(|(_, c)| *c == NodeCommand::SendHeartbeats), "{out:?}");
    assert_eq!(out.len(), 20);
    assert_eq!(
        s.hb(ms(1999), 1, 1),
        vec![
            report(NodeReport::LinkUp { peer: B, link: 1 }),
            report(NodeReport::PeerAlive { peer: B, incarnation: inc(1) }),
            s.connect(1, dial_id(1)),
        ],
        "dials over the first link that is up"
    );
}

#[test]
fn non_dialer_never_dials() {
    let mut s = connected(B);
    let conn = s.conn();
    let mut all = Vec::new();
    // The channel's link fails: the non-dialer closes its side and waits for the dialer.
    let out = s.run(ms(515), &beats(110, 510, &[1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(510), report(NodeReport::LinkDown { peer: A, link: 0, links_up: 1 })),
            (ms(510), s.disconnect(conn)),
            (ms(510), report(NodeReport::ChannelDown { peer: A })),
        ]
    );
    all.extend(out);
    // The channel fails again, the peer dies, comes back: still no dial.
    all.extend(s.channel_up(ms(600), 1, 1).into_iter().map(|c| (ms(600), c)));
    all.extend(s.channel_down(ms(650)).into_iter().map(|c| (ms(650), c)));
    all.extend(s.run(ms(3000), &beats(610, 1000, &[1]), 1));
    all.extend(s.run(ms(5000), &beats(3010, 5000, &[0, 1]), 1));
    assert!(all.iter().any(|(_, c)| *c == report(NodeReport::PeerDead { peer: A, incarnation: inc(1) })));
    assert!(all.iter().all(|(_, c)| !matches!(c, NodeCommand::Connect { .. })), "{all:?}");
}

#[test]
fn failed_dial_retried_after_backoff() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    assert!(s.hb(ms(10), 0, 1).contains(&s.connect(0, dial_id(1))));
    // The dial fails: nothing to report (the channel never was up), nothing dialed yet.
    assert_eq!(s.dial_fails(ms(20)), vec![]);
    let out = s.run(ms(400), &beats(110, 400, &[0, 1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![(ms(110), report(NodeReport::LinkUp { peer: B, link: 1 })), (ms(220), s.connect(0, dial_id(2)))]
    );
    // Fails again: retried again after the back-off.
    assert_eq!(s.dial_fails(ms(400)), vec![]);
    let out = s.run(ms(700), &beats(410, 700, &[0, 1]), 1);
    assert_eq!(no_heartbeats(&out), vec![(ms(600), s.connect(0, dial_id(3)))]);
}

#[test]
fn dial_abandoned_after_dead_after() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    assert!(s.hb(ms(10), 0, 1).contains(&s.connect(0, dial_id(1))));
    // The dial neither succeeds nor fails; the peer stays alive on both links.
    let out = s.run(ms(800), &beats(110, 800, &[0, 1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(110), report(NodeReport::LinkUp { peer: B, link: 1 })),
            (ms(510), s.disconnect(dial_id(1))),
            (ms(710), s.connect(0, dial_id(2))),
        ]
    );
}

#[test]
fn groups_told_connected_only_when_alive_and_channel_up_to_the_same_run() {
    // The channel comes up before any heartbeat: the groups hear nothing yet.
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(s.channel_up(ms(10), 1, 0), vec![report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    let first = s.conn();
    assert_eq!(group_peer(&s, G0), GroupPeer::Unknown);
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.hb(ms(20), 1, 1),
        vec![
            report(NodeReport::LinkUp { peer: A, link: 1 }),
            report(NodeReport::PeerAlive { peer: A, incarnation: inc(1) }),
            gcmd(G0, A, state_send(inc(1), state.clone())),
        ]
    );
    // Further heartbeats of the same run tell the groups nothing new.
    assert_eq!(s.hb(ms(30), 0, 1), vec![report(NodeReport::LinkUp { peer: A, link: 0 })]);
    // A heartbeat of run 2: the channel to run 1 is closed and the groups learn that run 1
    // is gone; run 2 is not "connected" until a channel to run 2 is up.
    assert_eq!(
        s.hb(ms(40), 0, 2),
        vec![
            report(NodeReport::PeerRestarted { peer: A, old: inc(1), new: inc(2) }),
            s.disconnect(first),
            report(NodeReport::ChannelDown { peer: A }),
        ]
    );
    assert_eq!(group_peer(&s, G0), GroupPeer::Down { inc: inc(1), stopped: true });
    assert_eq!(s.hb(ms(50), 1, 2), vec![]);
    assert_eq!(
        s.channel_up(ms(60), 2, 0),
        vec![report(NodeReport::ChannelUp { peer: A, link: 0 }), gcmd(G0, A, state_send(inc(2), state)),]
    );
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(2), role: None, priority: None, last_index: None });
}

#[test]
fn groups_not_told_connected_while_the_peer_is_dead() {
    let mut s = connected(B);
    s.run(ms(600), &[], 1);
    assert_eq!(group_peer(&s, G0), GroupPeer::Down { inc: inc(1), stopped: false });
    // A channel to run 1 while no link hears it: the groups hear nothing.
    assert_eq!(s.channel_up(ms(610), 1, 0), vec![report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    assert_eq!(group_peer(&s, G0), GroupPeer::Down { inc: inc(1), stopped: false });
    // Heard again: now the same run is connected again.
    let out = s.hb(ms(620), 0, 1);
    assert_eq!(
        out[..2],
        [
            report(NodeReport::LinkUp { peer: A, link: 0 }),
            report(NodeReport::PeerAlive { peer: A, incarnation: inc(1) })
        ]
    );
    assert!(
        matches!(
            &out[2..],
            [
                NodeCommand::Group {
                    group: G0,
                    command: Command::Send { to: Incarnation(1), msg: Message::State(_), .. },
                    ..
                },
                NodeCommand::Group {
                    group: G0,
                    command: Command::Send { to: Incarnation(1), msg: Message::AskState, .. },
                    ..
                },
            ]
        ),
        "{out:?}"
    );
}

#[test]
fn channel_reconnect_to_same_run_tells_groups_again() {
    let mut s = connected(A);
    // The channel breaks while heartbeats keep arriving: the groups are not told.
    assert_eq!(s.channel_down(ms(50)), vec![report(NodeReport::ChannelDown { peer: B })]);
    let out = s.run(ms(260), &beats(110, 260, &[0, 1]), 1);
    assert_eq!(no_heartbeats(&out), vec![(ms(250), s.connect(0, dial_id(2)))]);
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
    // The new channel reaches the same run: the groups hear PeerConnected again and
    // restart from there (the group re-sends its state).
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.channel_up(ms(270), 1, 0),
        vec![report(NodeReport::ChannelUp { peer: B, link: 0 }), gcmd(G0, B, state_send(inc(1), state))]
    );
    // Only once per channel.
    assert_eq!(s.hb(ms(280), 0, 1), vec![]);
}

#[test]
fn peer_heard_again_after_death_is_redialed_after_backoff() {
    let mut s = connected(A);
    let out = s.run(ms(600), &[], 1);
    assert!(out.contains(&(ms(510), report(NodeReport::PeerDead { peer: B, incarnation: inc(1) }))));
    // Heard again at 650: alive, dialed once the back-off from the death (510 + 200) ends.
    assert_eq!(
        s.hb(ms(650), 1, 1),
        vec![
            report(NodeReport::LinkUp { peer: B, link: 1 }),
            report(NodeReport::PeerAlive { peer: B, incarnation: inc(1) })
        ]
    );
    let out = s.run(ms(800), &beats(750, 800, &[1]), 1);
    assert_eq!(no_heartbeats(&out), vec![(ms(710), s.connect(1, dial_id(2)))]);
}

#[test]
fn heartbeat_on_unknown_link_or_from_unknown_node_ignored() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    assert_eq!(s.at(ms(10), NodeEvent::Heartbeat { from: B, link: 2, incarnation: inc(1) }), vec![]);
    assert_eq!(s.at(ms(10), NodeEvent::Heartbeat { from: NodeId(7), link: 0, incarnation: inc(1) }), vec![]);
    // A connection from an unknown node is closed, and changes nothing else.
    let conn = s.accept();
    assert_eq!(
        s.at(ms(10), NodeEvent::ChannelUp { peer: NodeId(7), incarnation: inc(1), link: 0, conn }),
        vec![NodeCommand::Disconnect { peer: NodeId(7), conn }]
    );

    let status = s.node.status(ms(10));
    assert!(!status.peers[0].alive);
    assert_eq!(status.peers[0].incarnation, None);
}

// ---------------------------------------------------------------------------------------
// Incarnations
// ---------------------------------------------------------------------------------------

#[test]
fn newer_incarnation_in_heartbeat_tells_groups_old_run_gone_without_fence() {
    // Group 0 is M on `m` and confirmed SL on the other node, which hears a heartbeat from
    // the M's next run: the old run is gone, the SL takes over without any fence.
    for m in [0, 1] {
        let sl = 1 - m;
        let (me, peer) = (IDS[sl], IDS[m]);
        let mut sim = Sim::paired(&[m], Arbiter::Fence);
        let mut s = sim.take(sl);
        let before = s.node.group(G0).unwrap().durable();
        assert_eq!(before.epoch, Epoch { counter: 1, node: peer.0, forced: false });
        let t = s.now.after(Duration::from_millis(10));
        let (conn, next) = (s.conn(), s.next_dial());
        let out = s.hb(t, 0, 2);
        let mut expected = vec![
            report(NodeReport::PeerRestarted { peer, old: inc(1), new: inc(2) }),
            s.disconnect(conn),
            report(NodeReport::ChannelDown { peer }),
        ];
        if me == A {
            expected.push(s.connect(0, next));
        }
        let sm = GroupDurable {
            priority: Priority::P1,
            epoch: Epoch { counter: 2, node: me.0, forced: false },
            role: Role::Sm,
            join_only: false,
        };
        expected.extend([
            gcmd(G0, peer, Command::Persist(sm)),
            greport(G0, peer, Report::Transition { from: Role::Sl, to: Role::Sm, cause: Cause::Takeover }),
            start_resource(G0),
        ]);
        assert_eq!(out, expected, "SL on {me:?}");
        // And nothing more happens on this node for a while: no fence ever.
        let out = s.run(t.after(Duration::from_secs(3)), &beats(in_ms(t) + 100, in_ms(t) + 3000, &[0, 1]), 2);
        assert!(out.iter().all(|(_, c)| !matches!(c, NodeCommand::Fence { .. })), "{out:?}");
    }
}

#[test]
fn late_heartbeat_from_older_run_ignored() {
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(
        s.hb(ms(10), 0, 2),
        vec![
            report(NodeReport::LinkUp { peer: A, link: 0 }),
            report(NodeReport::PeerAlive { peer: A, incarnation: inc(2) })
        ]
    );
    assert_eq!(s.hb(ms(20), 1, 1), vec![], "a packet of run 1 after run 2 was heard");
    let status = s.node.status(ms(20));
    assert_eq!(status.peers[0].incarnation, Some(inc(2)));
    assert_eq!(status.peers[0].links[1], LinkStatus { up: false, last_heard: None });
    // Run 1's packets do not keep the peer alive.
    let out = s.run(ms(600), &beats(120, 600, &[1]), 1);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(510), report(NodeReport::LinkDown { peer: A, link: 0, links_up: 0 })),
            (ms(510), report(NodeReport::PeerDead { peer: A, incarnation: inc(2) })),
        ]
    );
}

#[test]
fn channel_from_older_run_rejected() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    let first = s.next_dial();
    assert!(s.hb(ms(10), 0, 1).contains(&s.connect(0, first)));
    // Run 2 is heard while the dial is under way; then the handshake completes with run 1.
    assert_eq!(s.hb(ms(20), 0, 2), vec![report(NodeReport::PeerRestarted { peer: B, old: inc(1), new: inc(2) })]);
    let second = s.next_dial();
    let out = s.channel_up(ms(30), 1, 0);
    assert_eq!(out.first(), Some(&s.disconnect(first)), "{out:?}");
    assert!(out.iter().all(|c| !matches!(c, NodeCommand::Group { .. } | NodeCommand::Report(_))), "{out:?}");
    assert_eq!(group_peer(&s, G0), GroupPeer::Unknown, "the groups heard nothing of run 1");
    assert_eq!(s.node.status(ms(30)).peers[0].channel_link, None);
    // The rejected channel is a failed channel: the dialer dials again, at the latest after
    // the back-off, and does not close the rejected channel a second time first.
    let mut after: Vec<(Instant, NodeCommand)> = out[1..].iter().map(|c| (ms(30), c.clone())).collect();
    after.extend(s.run(ms(800), &beats(120, 800, &[0]), 2));
    let first = channel_commands(&after).first().cloned();
    assert!(
        matches!(first, Some((t, NodeCommand::Connect { peer: B, link: 0, conn })) if t <= ms(230) && conn == second),
        "next channel command {first:?}, expected a dial by 230 ms: {after:?}"
    );
}

#[test]
fn non_dialer_rejects_a_channel_from_an_older_run() {
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    s.hb(ms(10), 0, 2);
    let out = s.channel_up(ms(20), 1, 0);
    assert_eq!(out, vec![s.disconnect(ConnId(1))]);
    assert_eq!(group_peer(&s, G0), GroupPeer::Unknown);
    assert_eq!(s.node.status(ms(20)).peers[0].channel_link, None);
}

// ---------------------------------------------------------------------------------------
// Connection ids
// ---------------------------------------------------------------------------------------

#[test]
fn stale_channel_up_of_an_abandoned_dial_is_disconnected() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    let first = s.next_dial();
    assert!(s.hb(ms(10), 0, 1).contains(&s.connect(0, first)));
    // The dial hangs: abandoned at 510, dialed again once the back-off ends.
    let out = s.run(ms(720), &beats(110, 720, &[0, 1]), 1);
    let second = s.dialing();
    assert_ne!(second, first);
    assert_eq!(
        no_heartbeats(&out),
        vec![
            (ms(110), report(NodeReport::LinkUp { peer: B, link: 1 })),
            (ms(510), s.disconnect(first)),
            (ms(710), s.connect(0, second)),
        ]
    );
    // The abandoned dial's handshake completes after all and a careless shell reports it:
    // it is closed, not taken for the dial under way.
    let stale = NodeEvent::ChannelUp { peer: B, incarnation: inc(1), link: 0, conn: first };
    assert_eq!(s.stale(ms(720), stale), vec![s.disconnect(first)]);
    assert_eq!(s.node.status(ms(720)).peers[0].channel_link, None);
    assert_eq!(group_peer(&s, G0), GroupPeer::Unknown, "the groups heard nothing of it");
    // Its late failure does not fail the dial under way either.
    assert_eq!(s.stale(ms(725), NodeEvent::ChannelDown { peer: B, conn: first }), vec![]);
    // Nor is a connection the peer dialed (it should not: the lower id dials) taken.
    let inbound = s.accept();
    assert_eq!(
        s.at(ms(727), NodeEvent::ChannelUp { peer: B, incarnation: inc(1), link: 1, conn: inbound }),
        vec![s.disconnect(inbound)]
    );
    assert_eq!(s.node.status(ms(727)).peers[0].channel_link, None);
    // The dial under way completes: that is the channel, and nothing was dialed meanwhile.
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.channel_up(ms(730), 1, 0),
        vec![report(NodeReport::ChannelUp { peer: B, link: 0 }), gcmd(G0, B, state_send(inc(1), state))]
    );
    assert_eq!(s.conn(), second);
    assert_eq!(s.dials, 2);
    assert_eq!(s.node.status(ms(730)).peers[0].channel_link, Some(0));
}

#[test]
fn accepting_side_replaces_the_previous_connection() {
    // B accepts. A gave up on the connection (say its detector found link 0 silent first)
    // and dialed again over link 1; B has not yet seen the old connection close.
    let mut s = connected(B);
    let old = s.conn();
    let state = s.node.group(G0).unwrap().state_message();
    let out = s.channel_up(ms(30), 1, 1);
    let new = s.conn();
    assert_ne!(new, old);
    assert_eq!(
        out,
        vec![
            s.disconnect(old),
            report(NodeReport::ChannelUp { peer: A, link: 1 }),
            // A new channel: the groups are told again and restart from there.
            gcmd(G0, A, state_send(inc(1), state)),
        ]
    );
    assert_eq!(s.node.status(ms(30)).peers[0].channel_link, Some(1));
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
    // The old connection's close, should a shell still report it, changes nothing.
    assert_eq!(s.stale(ms(40), NodeEvent::ChannelDown { peer: A, conn: old }), vec![]);
    assert_eq!(s.node.status(ms(40)).peers[0].channel_link, Some(1));
    // A connection from the peer's next run replaces it too, and its groups learn that
    // run 1 is gone before they hear of run 2.
    let out = s.channel_up(ms(50), 2, 0);
    assert_eq!(
        out[..3],
        [
            report(NodeReport::PeerRestarted { peer: A, old: inc(1), new: inc(2) }),
            s.disconnect(new),
            report(NodeReport::ChannelDown { peer: A }),
        ],
        "{out:?}"
    );
    assert_eq!(out.iter().filter(|c| matches!(c, NodeCommand::Disconnect { .. })).count(), 1, "{out:?}");
    assert!(out.contains(&report(NodeReport::ChannelUp { peer: A, link: 0 })), "{out:?}");
    assert!(
        matches!(
            out.last(),
            Some(NodeCommand::Group {
                group: G0,
                command: Command::Send { to: Incarnation(2), msg: Message::State(_), .. },
                ..
            })
        ),
        "{out:?}"
    );
    assert_eq!(s.node.status(ms(50)).peers[0].channel_link, Some(0));
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(2), role: None, priority: None, last_index: None });
}

fn x_state(priority: Priority) -> Message {
    Message::State(PeerState {
        role: Role::X,
        priority,
        epoch: Epoch::ZERO,
        join_only: false,
        following: None,
        log: LogMeta::empty(),
    })
}

#[test]
fn messages_of_a_replaced_connection_are_dropped() {
    // The accepting side: a message read from the replaced connection, reported late.
    let mut s = connected(B);
    let old = s.conn();
    s.channel_up(ms(30), 1, 1);
    let late = NodeEvent::Message { peer: A, conn: old, group: G0, epoch: Epoch::ZERO, msg: x_state(Priority::P2) };
    assert_eq!(s.stale(ms(40), late), vec![]);
    let fresh = GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None };
    assert_eq!(group_peer(&s, G0), fresh, "the group never heard it");
    // The same message on the current connection reaches the group.
    s.msg(ms(50), G0, x_state(Priority::P2));
    assert_eq!(
        group_peer(&s, G0),
        GroupPeer::Up { inc: inc(1), role: Some(Role::X), priority: Some(Priority::P2), last_index: Some(0) }
    );

    // The dialing side: a message of the channel that broke, while no channel is up and
    // after the next one came up.
    let mut s = connected(A);
    let old = s.conn();
    s.channel_down(ms(30));
    let late = || NodeEvent::Message { peer: B, conn: old, group: G0, epoch: Epoch::ZERO, msg: x_state(Priority::P3) };
    assert_eq!(s.stale(ms(40), late()), vec![]);
    s.run(ms(230), &beats(110, 230, &[0, 1]), 1);
    s.channel_up(ms(240), 1, 0);
    assert_ne!(s.conn(), old);
    assert_eq!(s.stale(ms(250), late()), vec![]);
    assert_eq!(group_peer(&s, G0), fresh, "the group never heard either");
    s.msg(ms(260), G0, x_state(Priority::P3));
    assert_eq!(
        group_peer(&s, G0),
        GroupPeer::Up { inc: inc(1), role: Some(Role::X), priority: Some(Priority::P3), last_index: Some(0) }
    );
}

#[test]
fn early_messages_of_a_replaced_connection_are_not_delivered() {
    // B accepts a channel before it hears A: a message on it is held. A then replaces
    // the connection (its groups send their state again on the new one): the held message
    // belonged to the old connection and never reaches the groups.
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(s.channel_up(ms(10), 1, 0), vec![report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    let old = s.conn();
    assert_eq!(s.msg(ms(15), G0, x_state(Priority::P2)), vec![]);
    assert_eq!(s.channel_up(ms(20), 1, 0), vec![s.disconnect(old), report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    s.hb(ms(30), 0, 1);
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
}

#[test]
fn early_messages_beyond_the_limit_drop_the_channel() {
    // B accepts a channel before it hears A, and A's messages keep coming: B holds up to
    // EARLY_MESSAGES of them, then drops the channel.
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(s.channel_up(ms(10), 1, 0), vec![report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    let conn = s.conn();
    for n in 0..EARLY_MESSAGES {
        assert_eq!(s.msg(ms(20), G0, x_state(Priority::P2)), vec![], "message {n} is held");
    }
    assert_eq!(
        s.msg(ms(20), G0, x_state(Priority::P2)),
        vec![s.disconnect(conn), report(NodeReport::ChannelDown { peer: A })],
        "one message too many"
    );
    assert_eq!(s.node.status(ms(20)).peers[0].channel_link, None);
    // A is heard: no channel, so the groups hear nothing, and the held messages are gone.
    assert_eq!(
        s.hb(ms(30), 0, 1),
        vec![
            report(NodeReport::LinkUp { peer: A, link: 0 }),
            report(NodeReport::PeerAlive { peer: A, incarnation: inc(1) })
        ]
    );
    assert_eq!(group_peer(&s, G0), GroupPeer::Unknown);
    // A reconnects: the groups start afresh on the new channel, without the old messages.
    let state = s.node.group(G0).unwrap().state_message();
    assert_eq!(
        s.channel_up(ms(40), 1, 0),
        vec![report(NodeReport::ChannelUp { peer: A, link: 0 }), gcmd(G0, A, state_send(inc(1), state))]
    );
    assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
}

// ---------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------

#[test]
fn heartbeats_sent_every_interval() {
    let mut s = Solo::new(A, 1);
    assert_eq!(s.node.poll_timeout(), Some(ms(0)), "the first heartbeat goes out at once");
    assert_eq!(s.timeout(ms(0)), vec![NodeCommand::SendHeartbeats]);
    assert_eq!(s.node.poll_timeout(), Some(ms(100)));
    assert_eq!(s.timeout(ms(50)), vec![], "an early timer sends nothing");
    assert_eq!(s.timeout(ms(100)), vec![NodeCommand::SendHeartbeats]);
    // Heartbeats go out whatever the peer does.
    s.hb(ms(110), 0, 1);
    let out = s.run(ms(1000), &beats(210, 1000, &[0, 1]), 1);
    let sent: Vec<Instant> = out.iter().filter(|(_, c)| *c == NodeCommand::SendHeartbeats).map(|(t, _)| *t).collect();
    assert_eq!(sent, (2..=10).map(|n| ms(n * 100)).collect::<Vec<_>>());
    // A late timer: the next heartbeat is one interval after it.
    assert_eq!(s.timeout(ms(1150)), vec![NodeCommand::SendHeartbeats]);
    assert_eq!(s.node.poll_timeout(), Some(ms(1250)));
}

#[test]
fn poll_timeout_is_the_earliest_deadline() {
    // The heartbeat.
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(s.node.poll_timeout(), Some(ms(100)));
    // A link's silence deadline (last heard at 50 on link 0 only).
    s.hb(ms(50), 0, 1);
    s.run(ms(500), &[], 1);
    assert_eq!(s.node.poll_timeout(), Some(ms(550)));
    // A non-dialer has no channel deadline; the dialer's dial deadline.
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    assert!(s.hb(ms(50), 0, 1).contains(&s.connect(0, dial_id(1))));
    s.run(ms(500), &beats(150, 450, &[0]), 1);
    assert_eq!(s.node.poll_timeout(), Some(ms(550)), "dial started at 50, abandoned at 550");
    // The dialer's retry after a failed dial.
    let mut cfg = node_config(A, &[B], 1);
    cfg.reconnect_backoff = Duration::from_millis(30);
    let mut s = Solo::with(cfg, 1, STARTUP_WAIT);
    s.timeout(ms(0));
    s.run(ms(500), &beats(50, 450, &[0]), 1);
    assert_eq!(s.dial_fails(ms(510)), vec![]);
    assert_eq!(s.node.poll_timeout(), Some(ms(540)));
    assert_eq!(s.timeout(ms(540)), vec![s.connect(0, dial_id(2))]);
    assert_eq!(s.node.poll_timeout(), Some(ms(600)));
    // A group's deadline (its boot wait).
    let mut s = Solo::with(node_config(A, &[B], 1), 1, Duration::from_millis(250));
    s.run(ms(200), &[], 1);
    assert_eq!(s.node.poll_timeout(), Some(ms(250)));
    assert_eq!(
        s.timeout(ms(250)),
        vec![greport(G0, B, Report::Waiting(WaitReason::Undetermined { own: Priority::P2 }))]
    );
    assert_eq!(s.node.poll_timeout(), Some(ms(300)));
}

// ---------------------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------------------

#[test]
fn confirmed_sl_fences_the_dead_m_and_takes_over_only_once_confirmed() {
    for m in [0, 1] {
        let sl = 1 - m;
        let (me, peer) = (IDS[sl], IDS[m]);
        let mut sim = Sim::paired(&[m], Arbiter::Fence);
        let mut s = sim.take(sl);
        let t0 = s.now;
        let out = s.run(t0.after(Duration::from_millis(600)), &[], 1);
        let dead = out.iter().find(|(_, c)| matches!(c, NodeCommand::Report(NodeReport::PeerDead { .. }))).unwrap().0;
        assert_eq!(dead, t0.after(DEAD_AFTER));
        assert_eq!(
            fencing_and_groups(&untimed(&out)),
            vec![
                NodeCommand::Fence { peer },
                report(NodeReport::FenceStarted { peer }),
                greport(G0, peer, Report::FenceRequested { target: FenceTarget::Run(inc(1)) }),
            ],
            "SL on {me:?}"
        );
        assert!(s.node.status(s.now).peers[0].fencing);
        // The fence fails: reported, retried by the group after fence_retry.
        let t = s.now;
        assert_eq!(
            s.at(t, NodeEvent::FenceResult { peer, confirmed: false }),
            vec![
                report(NodeReport::FenceFinished { peer, confirmed: false }),
                greport(G0, peer, Report::FenceFailed { target: FenceTarget::Run(inc(1)) }),
            ]
        );
        assert_eq!(s.node.group(G0).unwrap().role(), Role::Sl);
        let out = s.run(t.after(FENCE_RETRY), &[], 1);
        assert_eq!(
            fencing_and_groups(&untimed(&out)),
            vec![
                NodeCommand::Fence { peer },
                report(NodeReport::FenceStarted { peer }),
                greport(G0, peer, Report::FenceRequested { target: FenceTarget::Run(inc(1)) }),
            ]
        );
        // Confirmed: now it takes over.
        let sm = GroupDurable {
            priority: Priority::P1,
            epoch: Epoch { counter: 2, node: me.0, forced: false },
            role: Role::Sm,
            join_only: false,
        };
        let t = s.now;
        assert_eq!(
            s.at(t, NodeEvent::FenceResult { peer, confirmed: true }),
            vec![
                report(NodeReport::FenceFinished { peer, confirmed: true }),
                gcmd(G0, peer, Command::Persist(sm)),
                greport(G0, peer, Report::Transition { from: Role::Sl, to: Role::Sm, cause: Cause::Takeover }),
                start_resource(G0),
            ]
        );
        assert!(!s.node.status(s.now).peers[0].fencing);
    }
}

#[test]
fn one_fence_per_peer_for_several_groups() {
    // Both groups are M on A and confirmed SL on B. A dies: both groups of B want A
    // fenced; one fence serves both, and its confirmation lets both take over.
    let mut sim = Sim::paired(&[0, 0], Arbiter::Fence);
    let mut s = sim.take(1);
    let t0 = s.now;
    let out = s.run(t0.after(Duration::from_millis(600)), &[], 1);
    let requested = |g| greport(g, A, Report::FenceRequested { target: FenceTarget::Run(inc(1)) });
    assert_eq!(
        fencing_and_groups(&untimed(&out)),
        vec![
            NodeCommand::Fence { peer: A },
            report(NodeReport::FenceStarted { peer: A }),
            requested(G0),
            requested(G1)
        ]
    );
    let out = s.at(s.now, NodeEvent::FenceResult { peer: A, confirmed: true });
    let sm = GroupDurable {
        priority: Priority::P1,
        epoch: Epoch { counter: 2, node: 1, forced: false },
        role: Role::Sm,
        join_only: false,
    };
    let takeover = |g| {
        [
            gcmd(g, A, Command::Persist(sm)),
            greport(g, A, Report::Transition { from: Role::Sl, to: Role::Sm, cause: Cause::Takeover }),
            start_resource(g),
        ]
    };
    let mut expected = vec![report(NodeReport::FenceFinished { peer: A, confirmed: true })];
    expected.extend(takeover(G0));
    expected.extend(takeover(G1));
    assert_eq!(out, expected, "one confirmed fence of A covers every group that lost A");
}

#[test]
fn fence_request_during_a_running_fence_gets_a_fresh_round() {
    let mut s = Solo::new(A, 2);
    s.timeout(ms(0));
    let known = FenceTarget::Node { known: None };
    assert_eq!(
        s.at(ms(10), NodeEvent::ForceStart { group: G0 }),
        vec![
            NodeCommand::Fence { peer: B },
            report(NodeReport::FenceStarted { peer: B }),
            greport(G0, B, Report::FenceRequested { target: known })
        ]
    );
    // The fence is running: it may have powered B off before this request, which waits.
    assert_eq!(
        s.at(ms(20), NodeEvent::ForceStart { group: G1 }),
        vec![greport(G1, B, Report::FenceRequested { target: known })]
    );
    assert!(s.node.status(ms(20)).peers[0].fencing);
    let forced = |g: GroupIndex| {
        let sm = GroupDurable {
            priority: Priority::P1,
            epoch: Epoch { counter: 1, node: 0, forced: true },
            role: Role::Sm,
            join_only: false,
        };
        [
            gcmd(g, B, Command::Persist(sm)),
            greport(g, B, Report::Transition { from: Role::X, to: Role::Sm, cause: Cause::ForceStart }),
            start_resource(g),
            greport(g, B, Report::ForceStarted { peer: B, peer_up: false }),
        ]
    };
    let mut expected = vec![report(NodeReport::FenceFinished { peer: B, confirmed: true })];
    expected.extend(forced(G0));
    expected.extend([NodeCommand::Fence { peer: B }, report(NodeReport::FenceStarted { peer: B })]);
    assert_eq!(s.at(ms(30), NodeEvent::FenceResult { peer: B, confirmed: true }), expected);
    assert_eq!(s.node.group(G1).unwrap().role(), Role::X, "group 1 waits for its own round");
    let mut expected = vec![report(NodeReport::FenceFinished { peer: B, confirmed: true })];
    expected.extend(forced(G1));
    assert_eq!(s.at(ms(40), NodeEvent::FenceResult { peer: B, confirmed: true }), expected);
    assert!(!s.node.status(ms(40)).peers[0].fencing);
    // A result with no fence running is ignored.
    assert_eq!(s.at(ms(50), NodeEvent::FenceResult { peer: B, confirmed: true }), vec![]);
}

#[test]
fn fence_result_reaches_every_waiting_group() {
    // Group 0's fence runs; groups 1 and 2 ask meanwhile and wait for the next round,
    // which they share: one fence, and its result reaches both.
    let mut s = Solo::new(A, 3);
    s.timeout(ms(0));
    let known = FenceTarget::Node { known: None };
    assert!(s.at(ms(10), NodeEvent::ForceStart { group: G0 }).contains(&NodeCommand::Fence { peer: B }));
    assert_eq!(
        s.at(ms(20), NodeEvent::ForceStart { group: G1 }),
        vec![greport(G1, B, Report::FenceRequested { target: known })]
    );
    assert_eq!(
        s.at(ms(20), NodeEvent::ForceStart { group: G2 }),
        vec![greport(G2, B, Report::FenceRequested { target: known })]
    );
    let out = s.at(ms(30), NodeEvent::FenceResult { peer: B, confirmed: true });
    assert_eq!(
        out.iter().filter(|c| matches!(c, NodeCommand::Fence { .. })).count(),
        1,
        "one fresh round for both waiting groups: {out:?}"
    );
    assert_eq!(
        s.at(ms(40), NodeEvent::FenceResult { peer: B, confirmed: false }),
        vec![
            report(NodeReport::FenceFinished { peer: B, confirmed: false }),
            greport(G1, B, Report::FenceFailed { target: known }),
            greport(G2, B, Report::FenceFailed { target: known }),
        ]
    );
}

#[test]
fn fence_retry_for_a_run_known_gone_is_not_sent() {
    // B is the confirmed SL of A's run 1. A goes silent, B fences it, the fence fails.
    // Before the retry, A's run 2 is heard: run 1 is known gone, B takes over. The
    // retry would now power off run 2, which did nothing wrong.
    let mut sim = Sim::paired(&[0], Arbiter::Fence);
    let mut s = sim.take(1);
    let t0 = s.now;
    let out = s.run(t0.after(Duration::from_millis(600)), &[], 1);
    assert!(out.iter().any(|(_, c)| *c == NodeCommand::Fence { peer: A }));
    let t = s.now;
    s.at(t, NodeEvent::FenceResult { peer: A, confirmed: false });
    let out = s.hb(t.after(Duration::from_millis(100)), 0, 2);
    assert!(out.contains(&start_resource(G0)), "{out:?}");
    let from = in_ms(t) + 200;
    let out = s.run(t.after(Duration::from_secs(3)), &beats(from, from + 2800, &[0, 1]), 2);
    assert!(out.iter().all(|(_, c)| !matches!(c, NodeCommand::Fence { .. })), "{out:?}");
}

#[test]
fn fence_race_in_a_partition_the_m_fences_first() {
    // Both links fail: each node declares the other dead at the same instant. The M fences
    // at once; the SL only notes the delay. The M's fence powers the SL off first.
    for m in [0, 1] {
        let sl = 1 - m;
        let mut sim = Sim::paired_with_fence_delay(&[m], Arbiter::Fence, FENCE_DELAY);
        sim.links = [false, false];
        sim.advance(ms(10).after(DEAD_AFTER));
        let mut fences = [None, None];
        fences[m] = Some(IDS[sl]);
        assert_eq!(sim.fence, fences, "M on {m}: the M fences at once, the SL waits");
        let target = FenceTarget::Run(inc(1));
        assert_eq!(sim.node(sl).group(G0).unwrap().status().fencing, Some(target));
        assert!(!sim.node(sl).status(sim.now).peers[0].fencing, "no fence action on the SL's node yet");
        sim.finish_fence(m, true);
        assert!(sim.nodes[sl].is_none(), "the SL was powered off");
        assert_eq!(sim.node(m).group(G0).unwrap().role(), Role::Sm);
        assert!(sim.processing[m][0]);
    }
}

#[test]
fn short_partition_cancels_the_delayed_fence_and_the_sl_rejoins() {
    // The links fail for a little longer than dead_after. The M's fence fails; both nodes
    // hear each other again before the SL's delay and the M's retry end: both fences are
    // dropped, nobody is powered off, and the SL rejoins its M and is confirmed again.
    let mut sim = Sim::paired_with_fence_delay(&[0], Arbiter::Fence, FENCE_DELAY);
    sim.links = [false, false];
    sim.advance(ms(600));
    assert_eq!(sim.fence, [Some(B), None]);
    let target = FenceTarget::Run(inc(1));
    assert_eq!(sim.node(1).group(G0).unwrap().status().fencing, Some(target), "the SL's fence waits");
    sim.links = [true, true];
    sim.finish_fence(0, false);
    for t in (600..=3000).step_by(50) {
        sim.advance(ms(t));
        sim.deliver_all();
        assert_eq!(sim.fence, [None, None], "no fence started again at {t} ms");
    }
    assert!(sim.nodes.iter().all(Option::is_some), "nobody was powered off");
    for i in 0..2 {
        assert_eq!(sim.node(i).group(G0).unwrap().status().fencing, None);
    }
    assert_eq!(sim.node(0).group(G0).unwrap().role(), Role::M);
    assert!(sim.processing[0][0] && !sim.processing[1][0]);
    assert_eq!(sim.node(1).group(G0).unwrap().following(), Some((inc(1), true)));
    assert_eq!(sim.check_safety(), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Pauses of the node itself
// ---------------------------------------------------------------------------------------

const PAUSE_THRESHOLD: Duration = Duration::from_millis(200);

/// Node `me` connected to its peer's run 1 (as [`connected`]) with pause detection on;
/// then link 1 falls silent and link 0 carries heartbeats until 1000 ms, and the node
/// asks to be called again at 1100 ms (its next heartbeat).
fn heard_until_1000_with(pause_threshold: Option<Duration>, me: NodeId) -> Solo {
    let peer = other(me);
    let mut s = connected_with(NodeConfig { pause_threshold, ..node_config(me, &[peer], 1) });
    let out = s.run(ms(1000), &beats(110, 1000, &[0]), 1);
    assert_eq!(no_heartbeats(&out), vec![(ms(510), report(NodeReport::LinkDown { peer, link: 1, links_up: 1 }))]);
    assert_eq!(s.node.poll_timeout(), Some(ms(1100)));
    s
}

#[test]
fn pause_gives_every_link_a_fresh_dead_after() {
    for me in IDS {
        let peer = other(me);
        // Called late by no more than the threshold: not a pause.
        let mut s = heard_until_1000_with(Some(PAUSE_THRESHOLD), me);
        assert_eq!(s.timeout(ms(1100).after(PAUSE_THRESHOLD)), vec![NodeCommand::SendHeartbeats]);

        // Called at 3000 ms instead of 1100: the node was paused. Link 0 was last heard at
        // 1000, more than dead_after ago, but that silence is the node's own: the link gets
        // a fresh dead_after from now. The link that was already down stays down.
        let mut s = heard_until_1000_with(Some(PAUSE_THRESHOLD), me);
        let out = s.timeout(ms(3000));
        assert_eq!(
            out,
            vec![report(NodeReport::PauseDetected { late: Duration::from_millis(1900) }), NodeCommand::SendHeartbeats],
            "{me:?}"
        );
        let status = s.node.status(ms(3000));
        assert!(status.peers[0].alive);
        assert_eq!(
            status.peers[0].links,
            vec![
                LinkStatus { up: true, last_heard: Some(Duration::ZERO) },
                LinkStatus { up: false, last_heard: Some(Duration::from_millis(2990)) },
            ]
        );
        assert_eq!(group_peer(&s, G0), GroupPeer::Up { inc: inc(1), role: None, priority: None, last_index: None });
        // Heard again on link 0: nothing happened.
        assert_eq!(s.hb(ms(3010), 0, 1), vec![]);
        // If the peer really stays silent, it is declared dead dead_after after its last
        // heartbeat.
        let out = s.run(ms(4000), &[], 1);
        let dead = out.iter().find(|(_, c)| matches!(c, NodeCommand::Report(NodeReport::PeerDead { .. })));
        assert_eq!(
            dead,
            Some(&(ms(3010).after(DEAD_AFTER), report(NodeReport::PeerDead { peer, incarnation: inc(1) })))
        );

        // Any event shows the pause, not only the timer: here a late heartbeat.
        let mut s = heard_until_1000_with(Some(PAUSE_THRESHOLD), me);
        assert_eq!(
            s.hb(ms(3000), 1, 1),
            vec![
                report(NodeReport::PauseDetected { late: Duration::from_millis(1900) }),
                report(NodeReport::LinkUp { peer, link: 1 }),
            ]
        );
        assert!(s.timeout(ms(3000)).iter().all(|c| !matches!(c, NodeCommand::Report(NodeReport::PeerDead { .. }))));
        assert!(s.node.status(ms(3000)).peers[0].links.iter().all(|it| it.up));
    }
}

#[test]
fn pause_detection_off_when_threshold_is_none() {
    for me in IDS {
        let peer = other(me);
        let mut s = heard_until_1000_with(None, me);
        let conn = s.conn();
        // The same late call: link 0 is past its deadline, so the peer is declared dead.
        let out = s.timeout(ms(3000));
        assert_eq!(
            out,
            vec![
                NodeCommand::SendHeartbeats,
                report(NodeReport::LinkDown { peer, link: 0, links_up: 0 }),
                report(NodeReport::PeerDead { peer, incarnation: inc(1) }),
                s.disconnect(conn),
                report(NodeReport::ChannelDown { peer }),
                greport(
                    G0,
                    peer,
                    Report::Waiting(WaitReason::Undetermined {
                        own: if me == A { Priority::P2 } else { Priority::P3 }
                    })
                ),
            ],
            "{me:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Groups across channel rebuilds
// ---------------------------------------------------------------------------------------

#[test]
fn promoted_lost_with_the_channel_is_sent_again_after_the_rejoin() {
    // A becomes M; its Promoted is in flight when the channel's link fails. The channel
    // moves to link 1 and reaches the same run, B rejoins: B must end up a confirmed SL,
    // or it will not take over when A is lost.
    let mut sim = Sim::new(&[0], Arbiter::Fence);
    sim.advance(ms(0));
    for _ in 0..100 {
        if sim.in_flight(0).any(|msg| matches!(msg, Message::Promoted { .. })) {
            break;
        }
        if !sim.deliver(0) && !sim.deliver(1) {
            break;
        }
    }
    assert_eq!(sim.node(0).group(G0).unwrap().role(), Role::M);
    assert!(sim.in_flight(0).any(|msg| matches!(msg, Message::Promoted { .. })));

    sim.links[0] = false;
    sim.advance(ms(600));
    sim.deliver_all();
    sim.advance(ms(1000));
    sim.deliver_all();
    assert_eq!(sim.node(0).status(sim.now).peers[0].channel_link, Some(1));
    assert_eq!(sim.node(0).group(G0).unwrap().role(), Role::M);
    assert_eq!(sim.node(1).group(G0).unwrap().following(), Some((inc(1), true)), "B is A's confirmed SL");
}

#[test]
fn sm_acknowledgements_stay_in_order_across_a_channel_rebuild() {
    // A is SM with B joined and streaming; record 2 waits for B's acknowledgement when the
    // channel is rebuilt to the same run; record 3 is appended before B rejoins.
    let mut s = connected(A);
    let b_state =
        |role, priority, epoch, following, log| PeerState { role, priority, epoch, join_only: false, following, log };
    let msg = |s: &mut Solo, t, msg| s.msg(ms(t), G0, msg);
    let out = msg(&mut s, 30, Message::State(b_state(Role::X, Priority::P3, Epoch::ZERO, None, LogMeta::empty())));
    assert!(out.contains(&start_resource(G0)), "{out:?}");
    let mut acks = Vec::new();
    let mut append = |s: &mut Solo, t, req| {
        let out = s.at(ms(t), NodeEvent::Append { group: G0, entries: vec![(ReqId(req), vec![req as u8])] });
        acks.extend(out.iter().filter_map(|c| match c {
            NodeCommand::Group { command: Command::AckAppend { index, .. }, .. } => Some(*index),
            _ => None,
        }));
        out
    };
    append(&mut s, 40, 1); // Acknowledged alone: B has not joined.
    let sm_epoch = s.node.group(G0).unwrap().durable().epoch;
    let out =
        msg(&mut s, 50, Message::State(b_state(Role::Sl, Priority::P3, sm_epoch, Some(inc(1)), LogMeta::empty())));
    assert_eq!(out, vec![]);
    let out = msg(&mut s, 60, Message::Join { from_index: 0, from_epoch: None, session: FIRST_JOIN });
    assert_eq!(out, vec![gcmd(G0, B, Command::SendRecords { to: inc(1), epoch: sm_epoch, from: 1, upto: 1 })]);
    append(&mut s, 70, 2); // Streamed live: waits for B.
    s.channel_down(ms(80));
    let next = s.next_dial();
    let out = s.timeout(ms(280));
    assert!(out.contains(&s.connect(0, next)), "{out:?}");
    s.channel_up(ms(290), 1, 0);
    append(&mut s, 300, 3);
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "acknowledgements out of order: {acks:?}");
    assert_eq!(s.node.group(G0).unwrap().check_invariants(), Ok(()));
}

#[test]
fn messages_before_the_groups_are_told_connected_are_not_lost() {
    // B (the non-dialer) restarts or comes back from a partition. A hears B first, dials at
    // once, and A's groups send their state on the new channel right away; A's next
    // heartbeat reaches B up to an interval later. The state that arrived in between must
    // still reach B's group: A sends it only once per channel.
    let mut s = Solo::new(B, 1);
    s.timeout(ms(0));
    assert_eq!(s.channel_up(ms(10), 1, 0), vec![report(NodeReport::ChannelUp { peer: A, link: 0 })]);
    let a_state = PeerState {
        role: Role::X,
        priority: Priority::P2,
        epoch: Epoch::ZERO,
        join_only: false,
        following: None,
        log: LogMeta::empty(),
    };
    s.msg(ms(15), G0, Message::State(a_state));
    s.hb(ms(60), 0, 1);
    assert_eq!(
        group_peer(&s, G0),
        GroupPeer::Up { inc: inc(1), role: Some(Role::X), priority: Some(Priority::P2), last_index: Some(0) }
    );
    assert_eq!(s.node.group(G0).unwrap().role(), Role::Sl, "priority 3 against 2: B follows A");
}

// ---------------------------------------------------------------------------------------
// Routing and status
// ---------------------------------------------------------------------------------------

#[test]
fn message_for_unknown_group_reported_and_dropped() {
    // A shares group 0 with B and group 1 with C.
    const C: NodeId = NodeId(2);
    let groups = vec![group_setup(G0, A, B, Arbiter::Fence), group_setup(G1, A, C, Arbiter::Fence)];
    let mut node = Node::new(node_config(A, &[B, C], 1), groups, ms(0));
    drain(&mut node);
    // Both peers heard and connected (A dials both; its dials are named in order).
    for (n, peer) in [B, C].into_iter().enumerate() {
        node.handle(ms(5), NodeEvent::Heartbeat { from: peer, link: 0, incarnation: inc(1) });
        let conn = dial_id(n as u64 + 1);
        assert!(drain(&mut node).contains(&NodeCommand::Connect { peer, link: 0, conn }));
        node.handle(ms(5), NodeEvent::ChannelUp { peer, incarnation: inc(1), link: 0, conn });
        drain(&mut node);
    }
    let conn_of = |peer| if peer == B { dial_id(1) } else { dial_id(2) };
    let statuses = |node: &Node| [node.group(G0).unwrap().status(), node.group(G1).unwrap().status()];
    let before = statuses(&node);
    let b_state = PeerState {
        role: Role::X,
        priority: Priority::P3,
        epoch: Epoch::ZERO,
        join_only: false,
        following: None,
        log: LogMeta::empty(),
    };
    let msg = Message::State(b_state);
    let cases = [(B, G1), (B, GroupIndex(9)), (C, G0)];
    for (peer, group) in cases {
        let conn = conn_of(peer);
        node.handle(ms(10), NodeEvent::Message { peer, conn, group, epoch: Epoch::ZERO, msg: msg.clone() });
        assert_eq!(drain(&mut node), vec![report(NodeReport::UnknownGroup { peer, group })]);
    }
    assert_eq!(statuses(&node), before, "no group heard any of them");
    // No channel with an unknown node exists (its ChannelUp is answered with Disconnect),
    // so a message claiming to come from one is dropped too.
    node.handle(
        ms(10),
        NodeEvent::Message { peer: NodeId(7), conn: ConnId(1), group: G0, epoch: Epoch::ZERO, msg: msg.clone() },
    );
    assert_eq!(drain(&mut node), vec![]);
    assert_eq!(statuses(&node), before);
    // A known group from its own peer reaches it, and only it.
    node.handle(ms(10), NodeEvent::Message { peer: B, conn: dial_id(1), group: G0, epoch: Epoch::ZERO, msg });
    drain(&mut node);
    assert_eq!(
        node.group(G0).unwrap().status().peer,
        GroupPeer::Up { inc: inc(1), role: Some(Role::X), priority: Some(Priority::P3), last_index: Some(0) }
    );
    assert_eq!(node.group(G1).unwrap().status(), before[1]);
}

#[test]
fn status_reports_links_channel_and_last_heard() {
    let mut s = Solo::new(A, 1);
    let status = s.node.status(ms(0));
    assert_eq!(status.me, A);
    assert_eq!(status.incarnation, inc(1));
    assert_eq!(
        status.peers,
        vec![PeerStatus {
            id: B,
            alive: false,
            incarnation: None,
            links: vec![LinkStatus { up: false, last_heard: None }; 2],
            channel_link: None,
            fencing: false,
        }]
    );
    s.timeout(ms(0));
    s.hb(ms(10), 0, 1);
    s.hb(ms(30), 1, 1);
    s.channel_up(ms(40), 1, 0);
    let status = s.node.status(ms(100));
    assert_eq!(
        status.peers,
        vec![PeerStatus {
            id: B,
            alive: true,
            incarnation: Some(inc(1)),
            links: vec![
                LinkStatus { up: true, last_heard: Some(Duration::from_millis(90)) },
                LinkStatus { up: true, last_heard: Some(Duration::from_millis(70)) },
            ],
            channel_link: Some(0),
            fencing: false,
        }]
    );
    assert_eq!(status.groups.len(), 1);
    assert_eq!(status.groups[0].0, G0);
    assert_eq!(status.groups[0].1, B);
    assert_eq!(status.groups[0].2, s.node.group(G0).unwrap().status());
    // Link 1 goes silent; the channel stays on link 0.
    s.run(ms(600), &beats(110, 600, &[0]), 1);
    let status = s.node.status(ms(620));
    assert_eq!(
        status.peers[0].links,
        vec![
            LinkStatus { up: true, last_heard: Some(Duration::from_millis(110)) },
            LinkStatus { up: false, last_heard: Some(Duration::from_millis(590)) },
        ]
    );
    assert_eq!(status.peers[0].channel_link, Some(0));
    s.channel_down(ms(620));

    assert_eq!(s.node.status(ms(620)).peers[0].channel_link, None);
}

#[test]
fn status_shows_a_running_fence() {
    let mut s = Solo::new(A, 1);
    s.timeout(ms(0));
    s.at(ms(10), NodeEvent::ForceStart { group: G0 });
    assert!(s.node.status(ms(10)).peers[0].fencing);
    assert_eq!(s.node.status(ms(10)).groups[0].2.fencing, Some(FenceTarget::Node { known: None }));
    s.at(ms(20), NodeEvent::FenceResult { peer: B, confirmed: false });
    assert!(!s.node.status(ms(20)).peers[0].fencing);
}

// ---------------------------------------------------------------------------------------
// Two nodes over an in-memory network
// ---------------------------------------------------------------------------------------

/// What survives a power-off.
#[derive(Clone, Debug)]
struct Disk {
    durable: Vec<GroupDurable>,
    journal: Vec<Vec<Record>>,
}

/// A group message on a connection, with its place in the order of every send and the
/// sender's stamp.
#[derive(Clone, Debug)]
struct Packet {
    seq: u64,
    group: GroupIndex,
    epoch: Epoch,
    msg: Message,
}

/// One TCP-like connection between the two nodes, FIFO per direction. Node 0 dialed it
/// (only the lower id dials) and knows it by the id of its `Connect`; node 1's shell
/// accepted it and gave it an id of its own.
#[derive(Clone, Debug)]
struct Conn {
    /// The id each node knows it by.
    ids: [ConnId; 2],
    link: usize,
    /// The run at each end.
    runs: [Incarnation; 2],
    /// The node at this end was handed its ChannelUp (its shell sends on it from then on).
    up: [bool; 2],
    /// This end is closed: its node closed it, was told it is down, or lost power.
    closed: [bool; 2],
    /// This end's node closed it: the other end learns it once the link carries the FIN.
    fin: [bool; 2],
    /// `inflight[i]`: packets node `i` sent on it, oldest first.
    inflight: [VecDeque<Packet>; 2],
}

/// Two nodes, two links, TCP-like connections (FIFO per direction), a virtual clock.
/// Commands run to completion in order, as the shell runs them: Persist and
/// WriteRecords reach the disk at once; Send queues a packet on the newest connection to
/// that run, which a later `deliver` hands over; heartbeats arrive at once; a dial
/// completes at once on both sides if its link is up (else it fails); a close reaches
/// the other end once its link is up (a powered-off node closes nothing: its peer notices
/// by silence). Fences wait for the test. Like a careful shell, it never tells a node
/// about a connection after that node closed it (checked in `flush`).
struct Sim {
    now: Instant,
    arbiter: Arbiter,
    /// The groups' fence-race delay.
    fence_delay: Duration,
    nodes: [Option<Node>; 2],
    runs: [u64; 2],
    disks: [Disk; 2],
    /// Whether each link carries packets (both ways).
    links: [bool; 2],
    /// Connections with an end still open.
    conns: Vec<Conn>,
    /// Dials node `i`'s current run asked for.
    dials: [u64; 2],
    /// The last id node 1's shell gave an accepted connection (restarts with the node).
    accepted: u64,
    /// Connections node `i`'s current run closed.
    disconnected: [Vec<ConnId>; 2],
    next_seq: u64,
    pending: VecDeque<(usize, NodeEvent)>,
    /// The group's service runs (StartService executed, StopService not yet).
    processing: [Vec<bool>; 2],
    /// A Fence command executed by node `i`, waiting for the test to finish it.
    fence: [Option<NodeId>; 2],
    /// Acknowledged appends: (group, index, payload).
    acked: Vec<(usize, u64, Vec<u8>)>,
    next_req: u64,
    payloads: Vec<(ReqId, Vec<u8>)>,
    /// Prints every command and event but heartbeats (for debugging a failing case).
    trace: bool,
}

impl Sim {
    /// Both nodes started at 0 with fresh disks; group `g` prefers node `preferred[g]`.
    fn new(preferred: &[usize], arbiter: Arbiter) -> Sim {
        Sim::with_fence_delay(preferred, arbiter, Duration::ZERO)
    }

    /// [`Sim::new`] with the groups' fence-race delay set to `fence_delay`.
    fn with_fence_delay(preferred: &[usize], arbiter: Arbiter, fence_delay: Duration) -> Sim {
        let disk = |i: usize| Disk {
            durable: preferred.iter().map(|&p| GroupDurable::initial(p == i)).collect(),
            journal: vec![Vec::new(); preferred.len()],
        };
        let mut sim = Sim {
            now: ms(0),
            arbiter,
            fence_delay,
            nodes: [None, None],
            runs: [0, 0],
            disks: [disk(0), disk(1)],
            links: [true, true],
            conns: Vec::new(),
            dials: [0, 0],
            accepted: 0,
            disconnected: [Vec::new(), Vec::new()],
            next_seq: 0,
            pending: VecDeque::new(),
            processing: [vec![false; preferred.len()], vec![false; preferred.len()]],
            fence: [None, None],
            acked: Vec::new(),
            next_req: 0,
            payloads: Vec::new(),
            trace: false,
        };
        sim.boot(0);
        sim.boot(1);
        sim
    }

    /// Both nodes up and connected at 0 (the last heartbeats arrived then); group `g` is M
    /// on `preferred[g]`, confirmed SL on the other node; nothing in flight.
    fn paired(preferred: &[usize], arbiter: Arbiter) -> Sim {
        Sim::paired_with_fence_delay(preferred, arbiter, Duration::ZERO)
    }

    /// [`Sim::paired`] with the groups' fence-race delay set to `fence_delay`.
    fn paired_with_fence_delay(preferred: &[usize], arbiter: Arbiter, fence_delay: Duration) -> Sim {
        let mut sim = Sim::with_fence_delay(preferred, arbiter, fence_delay);
        sim.advance(ms(0));
        sim.deliver_all();
        for (g, &m) in preferred.iter().enumerate() {
            let index = GroupIndex(g as u16);
            assert_eq!(sim.node(m).group(index).unwrap().role(), Role::M);
            assert_eq!(sim.node(1 - m).group(index).unwrap().following(), Some((inc(1), true)));
            assert!(sim.processing[m][g] && !sim.processing[1 - m][g]);
        }
        sim
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is up")
    }

    fn groups(&self) -> usize {
        self.disks[0].durable.len()
    }

    /// Takes node `i` out of the network to drive it by hand; the connections it has up
    /// go with it (the peer's side is then played by the test).
    fn take(&mut self, i: usize) -> Solo {
        assert!(self.pending.is_empty());
        let mut s = Solo::from_node(self.nodes[i].take().expect("node is up"), self.now);
        s.dials = self.dials[i];
        let mut open: Vec<ConnId> = self.conns.iter().filter(|c| c.up[i] && !c.closed[i]).map(|c| c.ids[i]).collect();
        open.sort();
        s.open = open;
        s.gone = self.disconnected[i].clone();
        if i == 1 {
            s.accepted = self.accepted;
        }
        s
    }

    fn inc_of(&self, i: usize) -> Incarnation {
        inc(self.runs[i])
    }

    /// The messages node `i` sent that are still in flight.
    fn in_flight(&self, i: usize) -> impl Iterator<Item = &Message> {
        self.conns.iter().flat_map(move |c| c.inflight[i].iter().map(|p| &p.msg))
    }

    /// (Re)starts node `i` from its disk with the next incarnation.
    fn boot(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        self.runs[i] += 1;
        self.dials[i] = 0;
        self.disconnected[i].clear();
        if i == 1 {
            self.accepted = 0;
        }
        let (me, peer) = (IDS[i], IDS[1 - i]);
        let setups = (0..self.groups())
            .map(|g| GroupSetup {
                index: GroupIndex(g as u16),
                config: GroupConfig { fence_delay: self.fence_delay, ..group_config(me, peer, self.arbiter) },
                durable: self.disks[i].durable[g],
                log: LogMeta::from_records(self.disks[i].journal[g].iter().map(|r| (r.epoch, r.index)))
                    .expect("the journal is consecutive"),
                join_only: false,
                resources: vec![RESOURCE],
            })
            .collect();
        self.nodes[i] = Some(Node::new(node_config(me, &[peer], self.runs[i]), setups, self.now));
        self.drain(i);
        self.flush();
    }

    /// Powers node `i` off: no goodbye on its connections, its peer notices by silence;
    /// every packet in flight is lost.
    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        self.processing[i].iter_mut().for_each(|it| *it = false);
        self.fence[i] = None;
        for c in &mut self.conns {
            c.closed[i] = true;
            c.inflight = [VecDeque::new(), VecDeque::new()];
        }
        self.conns.retain(|c| !c.closed.iter().all(|it| *it));
        self.pending.retain(|(j, _)| *j != i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(command) = self.nodes[i].as_mut().and_then(|n| n.poll_command()) {
            self.exec(i, command);
        }
    }

    /// Closes reach the other end of connections whose link is up.
    fn propagate_closes(&mut self) {
        for c in &mut self.conns {
            for (i, closer) in IDS.into_iter().enumerate() {
                let j = 1 - i;
                if c.fin[i] && !c.closed[j] && self.links[c.link] {
                    c.closed[j] = true;
                    c.inflight = [VecDeque::new(), VecDeque::new()];
                    self.pending.push_back((j, NodeEvent::ChannelDown { peer: closer, conn: c.ids[j] }));
                }
            }
        }
        self.conns.retain(|c| !c.closed.iter().all(|it| *it));
    }

    fn flush(&mut self) {
        loop {
            self.propagate_closes();
            let Some((j, event)) = self.pending.pop_front() else { return };
            let Some(node) = self.nodes[j].as_mut() else { continue };
            if let Some(conn) = event_conn(&event) {
                assert!(
                    !self.disconnected[j].contains(&conn),
                    "the shell reports nothing of a connection the node closed: n{j} <- {event:?}"
                );
            }
            if let NodeEvent::ChannelUp { conn, .. } = event {
                let c = self.conns.iter_mut().find(|c| c.ids[j] == conn && !c.closed[j]).expect("an open connection");
                c.up[j] = true;
            }
            if self.trace && !matches!(event, NodeEvent::Heartbeat { .. }) {
                eprintln!("{:?} n{j} <- {event:?}", self.now);
            }
            node.handle(self.now, event);
            self.drain(j);
        }
    }

    fn send_event(&mut self, i: usize, event: NodeEvent) {
        self.pending.push_back((i, event));
        self.flush();
    }

    /// Queues a packet on the newest connection node `i` has up to run `to` of its peer
    /// (as the agent does); lost if there is none, or if its other end is closed.
    fn push_packet(&mut self, i: usize, group: GroupIndex, to: Incarnation, epoch: Epoch, msg: Message) {
        let j = 1 - i;
        let seq = self.next_seq;
        let Some(c) =
            self.conns.iter_mut().filter(|c| c.up[i] && !c.closed[i] && c.runs[j] == to).max_by_key(|c| c.ids[i])
        else {
            return;
        };
        if !c.closed[j] {
            self.next_seq += 1;
            c.inflight[i].push_back(Packet { seq, group, epoch, msg });
        }
    }

    fn exec(&mut self, i: usize, command: NodeCommand) {
        if self.trace && command != NodeCommand::SendHeartbeats {
            eprintln!("{:?} n{i}: {command:?}", self.now);
        }
        let j = 1 - i;
        let (me, peer) = (IDS[i], IDS[j]);
        match command {
            // The one resource of each group starts and stops at once.
            NodeCommand::Resource { group, resource, op } => {
                match op {
                    Op::Start => self.processing[i][group.0 as usize] = true,
                    Op::Stop => self.processing[i][group.0 as usize] = false,
                    Op::Monitor => assert!(self.processing[i][group.0 as usize], "monitored while not running"),
                }
                self.pending.push_back((i, NodeEvent::ResourceDone { group, resource, op, outcome: Outcome::Ok }));
            }
            NodeCommand::Halt { group, resource } => panic!("n{i} halts: {group:?} resource {resource} would not stop"),
            NodeCommand::SendHeartbeats => {
                if self.nodes[j].is_some() {
                    for link in 0..2 {
                        if self.links[link] {
                            let incarnation = self.inc_of(i);
                            self.pending.push_back((j, NodeEvent::Heartbeat { from: me, link, incarnation }));
                        }
                    }
                }
            }
            NodeCommand::Connect { peer: p, link, conn } => {
                assert_eq!(p, peer);
                assert!(i == 0, "only the lower id dials");
                self.dials[i] += 1;
                assert_eq!(conn, dial_id(self.dials[i]), "the node names its dials DIAL_IDS + 1, + 2, …");
                if self.links[link] && self.nodes[j].is_some() {
                    self.accepted += 1;
                    let mut ids = [conn; 2];
                    ids[j] = ConnId(self.accepted);
                    let mut runs = [self.inc_of(i); 2];
                    runs[j] = self.inc_of(j);
                    self.conns.push(Conn {
                        ids,
                        link,
                        runs,
                        up: [false; 2],
                        closed: [false; 2],
                        fin: [false; 2],
                        inflight: [VecDeque::new(), VecDeque::new()],
                    });
                    self.pending.push_back((i, NodeEvent::ChannelUp { peer, incarnation: runs[j], link, conn }));
                    let event = NodeEvent::ChannelUp { peer: me, incarnation: runs[i], link, conn: ids[j] };
                    self.pending.push_back((j, event));
                } else {
                    self.pending.push_back((i, NodeEvent::ChannelDown { peer, conn }));
                }
            }
            NodeCommand::Disconnect { peer: p, conn } => {
                assert_eq!(p, peer);
                // The shell closes the connection or aborts the dial, and drops whatever it
                // had not told the node yet about it.
                self.disconnected[i].push(conn);
                self.pending.retain(|(k, e)| !(*k == i && event_conn(e) == Some(conn)));
                if let Some(c) = self.conns.iter_mut().find(|c| c.ids[i] == conn && !c.closed[i]) {
                    c.closed[i] = true;
                    c.fin[i] = true;
                    c.inflight = [VecDeque::new(), VecDeque::new()];
                }
            }
            NodeCommand::Fence { peer: p } => {
                assert_eq!(p, peer);
                assert_eq!(self.fence[i], None, "one fence per peer at a time");
                self.fence[i] = Some(p);
            }
            NodeCommand::Report(_) => {}
            NodeCommand::Group { group, peer: p, command } => {
                assert_eq!(p, peer);
                let g = group.0 as usize;
                match command {
                    Command::Persist(durable) => self.disks[i].durable[g] = durable,
                    Command::WriteRecords(records) => {
                        let journal = &mut self.disks[i].journal[g];
                        for record in records {
                            assert_eq!(record.index, journal.len() as u64 + 1, "records written in order");
                            journal.push(record);
                        }
                    }
                    Command::TruncateLog { keep_upto, .. } => self.disks[i].journal[g].truncate(keep_upto as usize),
                    Command::Send { to, epoch, msg } => {
                        assert_eq!(epoch, self.disks[i].durable[g].epoch, "stamped with the durable epoch");
                        self.push_packet(i, group, to, epoch, msg)
                    }
                    Command::SendRecords { to, epoch, from, upto } => {
                        assert_eq!(epoch, self.disks[i].durable[g].epoch, "stamped with the durable epoch");
                        let journal = &self.disks[i].journal[g];
                        assert!(
                            1 <= from && from <= upto && upto as usize <= journal.len(),
                            "records {from}..={upto} exist"
                        );
                        let records = journal[from as usize - 1..upto as usize].to_vec();
                        self.push_packet(i, group, to, epoch, Message::Records(records));
                    }
                    Command::AckAppend { req, index } => {
                        let payload = self.payloads.iter().find(|(r, _)| *r == req).unwrap().1.clone();
                        self.acked.push((g, index, payload));
                    }
                    Command::RejectAppend { .. } => {}
                    Command::StartService | Command::StopService => panic!("the node hands these to its runner"),
                    Command::FencePeer { .. } => panic!("the node turns FencePeer into Fence"),
                    Command::Report(_) => {}
                }
            }
        }
    }

    /// Moves the clock to `to`, firing every node's timer when it is due.
    fn advance(&mut self, to: Instant) {
        self.flush();
        for _ in 0..100_000 {
            let due = (0..2).filter_map(|i| self.nodes[i].as_ref().and_then(|n| n.poll_timeout())).min();
            match due {
                Some(t) if t <= to => {
                    self.now = self.now.max(t);
                    for i in 0..2 {
                        if let Some(node) = self.nodes[i].as_mut()
                            && node.poll_timeout().is_some_and(|at| at <= self.now)
                        {
                            node.handle(self.now, NodeEvent::Timeout);
                            self.drain(i);
                        }
                    }
                    self.flush();
                }
                _ => {
                    self.now = self.now.max(to);
                    return;
                }
            }
        }
        panic!("timers do not move forward");
    }

    /// Delivers the oldest packet node `i` sent on a connection whose link carries it.
    fn deliver(&mut self, i: usize) -> bool {
        self.flush();
        let j = 1 - i;
        let Some(k) = (0..self.conns.len())
            .filter(|&k| self.links[self.conns[k].link])
            .filter_map(|k| self.conns[k].inflight[i].front().map(|p| (p.seq, k)))
            .min()
            .map(|(_, k)| k)
        else {
            return false;
        };
        let c = &mut self.conns[k];
        let packet = c.inflight[i].pop_front().expect("a packet");
        assert!(c.up[j] && !c.closed[j], "packets travel only between open ends");
        let event = NodeEvent::Message {
            peer: IDS[i],
            conn: c.ids[j],
            group: packet.group,
            epoch: packet.epoch,
            msg: packet.msg,
        };
        self.send_event(j, event);
        true
    }

    fn deliver_all(&mut self) {
        for _ in 0..10_000 {
            if !self.deliver(0) && !self.deliver(1) {
                return;
            }
        }
        panic!("messages keep flowing");
    }

    fn append(&mut self, i: usize, g: usize) {
        if self.nodes[i].is_none() {
            return;
        }
        self.next_req += 1;
        let req = ReqId(self.next_req);
        let payload = format!("req {}", self.next_req).into_bytes();
        self.payloads.push((req, payload.clone()));
        let event = NodeEvent::Append { group: GroupIndex(g as u16), entries: vec![(req, payload)] };
        self.send_event(i, event);
    }

    /// The fence node `i` runs finishes: `confirmed` powers the peer off first.
    fn finish_fence(&mut self, i: usize, confirmed: bool) {
        let Some(peer) = self.fence[i].take() else { return };
        if self.nodes[i].is_none() {
            return;
        }
        if confirmed && self.nodes[1 - i].is_some() {
            self.kill(1 - i);
        }
        self.send_event(i, NodeEvent::FenceResult { peer, confirmed });
    }

    fn active(&self, i: usize, g: usize) -> bool {
        self.processing[i][g]
            && self.nodes[i].as_ref().is_some_and(|n| n.group(GroupIndex(g as u16)).unwrap().role().is_active())
    }

    /// No group active on both nodes while both are up; every active node holds every
    /// acknowledged record of its group.
    fn check_safety(&self) -> Result<(), String> {
        for g in 0..self.groups() {
            if self.active(0, g) && self.active(1, g) {
                return Err(format!("group {g} active on both nodes at {:?}", self.now));
            }
            for i in (0..2).filter(|&i| self.active(i, g)) {
                let journal = &self.disks[i].journal[g];
                for (_, index, payload) in self.acked.iter().filter(|it| it.0 == g) {
                    if journal.get(*index as usize - 1).map(|r| &r.payload) != Some(payload) {
                        return Err(format!("group {g}: acknowledged record {index} missing on active node {i}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, action: &Action, mode: Mode) {
        match *action {
            Action::Tick(d) => self.advance(self.now.after(Duration::from_millis(d))),
            Action::Link(l, up) => {
                // Without partitions, at most one link is down at a time.
                if up || mode == Mode::Partitions || self.links[1 - l] {
                    self.links[l] = up;
                }
                self.flush();
            }
            Action::Deliver(i) => {
                self.deliver(i);
            }
            Action::Append(i, g) => self.append(i, g % self.groups()),
            Action::Fence(i, confirmed) => self.finish_fence(i, confirmed),
            Action::Crash(i) => {
                if self.nodes[i].is_some() {
                    self.kill(i);
                }
            }
            Action::Restart(i) => {
                if self.nodes[i].is_none() {
                    self.boot(i);
                }
            }
        }
    }

    /// Repairs everything and lets the cluster settle: links up, running fences confirmed,
    /// powered-off nodes restarted, every message delivered, time passing.
    fn heal(&mut self) {
        self.links = [true, true];
        for _ in 0..30 {
            for i in 0..2 {
                self.finish_fence(i, true);
            }
            for i in 0..2 {
                if self.nodes[i].is_none() {
                    self.boot(i);
                }
            }
            self.deliver_all();
            self.advance(self.now.after(Duration::from_millis(300)));
            self.deliver_all();
        }
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// Time passes (milliseconds); timers fire on the way.
    Tick(u64),
    /// A link goes down or comes back.
    Link(usize, bool),
    /// The oldest packet node `i` sent arrives.
    Deliver(usize),
    /// A client appends on node `i` to group `g`.
    Append(usize, usize),
    /// Node `i`'s running fence finishes (confirmed: the peer is powered off).
    Fence(usize, bool),
    /// A powered-off node starts again.
    Restart(usize),
    /// Node `i` loses power.
    Crash(usize),
}

/// What a property run may do to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Links fail one at a time (never both): nobody is ever declared dead; crash-stop
    /// arbiter.
    LinkFlaps,
    /// Links fail one at a time, nodes lose power and restart: crash-stop arbiter (its
    /// assumption holds: a silent node has stopped).
    Crashes,
    /// Links fail at will (partitions), fences power nodes off, nodes restart: fence
    /// arbiter.
    Partitions,
}

fn actions(mode: Mode) -> impl Strategy<Value = Vec<Action>> {
    let (fence, restart, crash) = match mode {
        Mode::LinkFlaps => (0, 0, 0),
        Mode::Crashes => (0, 2, 1),
        Mode::Partitions => (2, 2, 0),
    };
    let action = prop_oneof![
        // Short steps let packets race heartbeats; long ones let links and peers die.
        2 => (1u64..60).prop_map(Action::Tick),
        3 => (60u64..700).prop_map(Action::Tick),
        3 => (0usize..2, any::<bool>()).prop_map(|(l, up)| Action::Link(l, up)),
        6 => (0usize..2).prop_map(Action::Deliver),
        3 => (0usize..2, 0usize..2).prop_map(|(i, g)| Action::Append(i, g)),
        fence => (0usize..2, any::<bool>()).prop_map(|(i, ok)| Action::Fence(i, ok)),
        restart => (0usize..2).prop_map(Action::Restart),
        crash => (0usize..2).prop_map(Action::Crash),
    ];
    proptest::collection::vec(action, 1..100)
}

/// Runs `actions` on a fresh cluster (group 0 prefers node 0, group 1 node 1), checking
/// after each that no group is active on both nodes while both are up and that every
/// active node holds every acknowledged record; then heals the cluster (every message
/// eventually delivered) and checks again.
fn run_cluster(actions: &[Action], mode: Mode) -> Result<Sim, TestCaseError> {
    run_cluster_with_fence_delay(actions, mode, Duration::ZERO)
}

/// [`run_cluster`] with the groups' fence-race delay set to `fence_delay`.
fn run_cluster_with_fence_delay(actions: &[Action], mode: Mode, fence_delay: Duration) -> Result<Sim, TestCaseError> {
    let arbiter = if mode == Mode::Partitions { Arbiter::Fence } else { Arbiter::UnsafeAssumeCrashStop };
    let mut sim = Sim::with_fence_delay(&[0, 1], arbiter, fence_delay);
    sim.advance(ms(0));
    for (n, action) in actions.iter().enumerate() {
        sim.apply(action, mode);
        if let Err(e) = sim.check_safety() {
            return Err(TestCaseError::fail(format!("after action {n} ({action:?}): {e}")));
        }
        if mode != Mode::Partitions {
            prop_assert_eq!(&sim.fence, &[None, None], "nobody is fenced with the crash-stop arbiter");
        }
    }
    sim.heal();
    if let Err(e) = sim.check_safety() {
        return Err(TestCaseError::fail(format!("after healing: {e}")));
    }
    Ok(sim)
}

/// Every group ends with one M and a confirmed SL following it.
fn check_settled(sim: &Sim) -> Result<(), TestCaseError> {
    for g in 0..sim.groups() {
        let index = GroupIndex(g as u16);
        let roles = [sim.node(0).group(index).unwrap().role(), sim.node(1).group(index).unwrap().role()];
        let Some(m) = roles.iter().position(|r| *r == Role::M) else {
            return Err(TestCaseError::fail(format!("group {g} did not settle: roles {roles:?}")));
        };
        prop_assert!(sim.processing[m][g]);
        prop_assert_eq!(
            sim.node(1 - m).group(index).unwrap().following(),
            Some((sim.inc_of(m), true)),
            "group {}: the SL follows the M and was told it is in sync",
            g
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One link at a time fails: the channel moves between links and reconnects to the
    /// same run, packets in flight are lost with it; the groups never run on both nodes
    /// and never lose an acknowledged record.
    #[test]
    fn link_flaps_never_make_two_actives(actions in actions(Mode::LinkFlaps)) {
        run_cluster(&actions, Mode::LinkFlaps)?;
    }

    /// Nodes lose power and restart (new incarnations) while links flap: with the
    /// crash-stop arbiter, no group is active on both nodes while both are up.
    #[test]
    fn crashes_never_make_two_actives(actions in actions(Mode::Crashes)) {
        run_cluster(&actions, Mode::Crashes)?;
    }

    /// Partitions included: with the fence arbiter, a fence powers the peer off before
    /// anyone takes over, so no group is active on both nodes while both are up.
    #[test]
    fn partitions_with_fencing_never_make_two_actives(actions in actions(Mode::Partitions)) {
        run_cluster(&actions, Mode::Partitions)?;
    }

    /// After link flaps, once every message is delivered, each group is M + confirmed SL.
    #[test]
    fn cluster_settles_as_m_and_confirmed_sl_after_link_flaps(actions in actions(Mode::LinkFlaps)) {
        check_settled(&run_cluster(&actions, Mode::LinkFlaps)?)?;
    }

    /// After crashes and restarts, once every node is up and every message delivered,
    /// each group is M + confirmed SL.
    #[test]
    fn cluster_settles_as_m_and_confirmed_sl_after_crashes(actions in actions(Mode::Crashes)) {
        check_settled(&run_cluster(&actions, Mode::Crashes)?)?;
    }

    /// After partitions and fencing, once the links are repaired, fences confirmed, nodes
    /// restarted and every message delivered, each group is M + confirmed SL.
    #[test]
    fn cluster_settles_as_m_and_confirmed_sl_after_partitions(actions in actions(Mode::Partitions)) {
        check_settled(&run_cluster(&actions, Mode::Partitions)?)?;
    }

    /// Partitions with the fence-race delay: an SL waits before it fences its lost M, and
    /// a lost run heard again before its fence started is trusted again. Still no group is
    /// active on both nodes while both are up, and no acknowledged record is lost.
    #[test]
    fn partitions_with_fence_delay_never_make_two_actives(actions in actions(Mode::Partitions)) {
        run_cluster_with_fence_delay(&actions, Mode::Partitions, FENCE_DELAY)?;
    }

    /// After partitions with the fence-race delay, the cluster settles as M + confirmed SL.
    #[test]
    fn cluster_settles_as_m_and_confirmed_sl_after_partitions_with_fence_delay(actions in actions(Mode::Partitions)) {
        check_settled(&run_cluster_with_fence_delay(&actions, Mode::Partitions, FENCE_DELAY)?)?;
    }
}
