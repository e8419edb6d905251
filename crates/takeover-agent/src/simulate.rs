//! `takeover simulate`: what the cluster would do after one failure, step by step (like
//! Pacemaker's `crm_simulate`), decided by the very core code the agents run.
//!
//! Every node of the configuration gets a real [`takeover_core::node::Node`], booted with
//! the durable state the status document shows (priorities, epochs, incarnations). A
//! deterministic discrete-event world plays the shell: heartbeats on every link, the
//! peer channel, resource operations that succeed, fences that power the node off and
//! confirm, all on a virtual clock. The world first runs until the cluster has settled
//! into the state of the status (and replays the resources' failure counts), then
//! injects the failure and prints every step the nodes take: who suspects whom, fences,
//! role changes with their reasons, resources stopped and started in order.
//!
//! Nothing here touches a machine: no socket, no process, no file is used.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use takeover_core::group::{self, Command, GroupDurable, Message, Report};
use takeover_core::log::{LogMeta, Record};
use takeover_core::node::{ConnId, GroupIndex, GroupSetup, Node, NodeCommand, NodeConfig, NodeEvent, NodeReport};
use takeover_core::runner::{Op, Outcome};
use takeover_core::{Epoch, Incarnation, Instant, NodeId, Priority, Role};

use crate::api::StatusDoc;
use crate::config::{self, ClusterConfig};
use crate::words::{cause_text, reason_name, wait_text};

/// How long a message or heartbeat takes in the simulated world.
const LATENCY: Duration = Duration::from_millis(1);
/// How long every resource operation takes (they all succeed unless a failure is injected).
const OP_TIME: Duration = Duration::from_millis(10);
/// How long a fence takes before it confirms the node off.
const FENCE_TIME: Duration = Duration::from_secs(1);
/// The longest the failure phase runs (a fence that keeps failing would never end).
const MAX_FAILURE_PHASE: Duration = Duration::from_secs(600);

/// The failure to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The node powers off: its agent and its services stop at once, nothing is said.
    Node(String),
    /// Link (network) `k` stops carrying anything, between every pair of nodes.
    Link(usize),
    /// The resource's next `times` monitors fail on the node where its group runs.
    Resource { group: String, resource: String, times: u32 },
}

/// Parses `--fail`: a node name, `link:K` (or `linkK`), or a resource as `GROUP/RESOURCE`
/// (or a resource name that only one group uses).
pub fn parse_failure(cfg: &ClusterConfig, text: &str, times: u32) -> Result<Failure, String> {
    if cfg.node(text).is_some() {
        return Ok(Failure::Node(text.to_string()));
    }
    let links = cfg.nodes.first().map_or(0, |it| it.links.len());
    if let Some(rest) = text.strip_prefix("link") {
        let number = rest.trim_start_matches([':', '-', ' ']);
        if let Ok(k) = number.parse::<usize>() {
            if k >= links {
                return Err(format!(
                    "there is no link {k}: the nodes have {links} link(s), numbered from 0 (link:0 … link:{})",
                    links.saturating_sub(1)
                ));
            }
            return Ok(Failure::Link(k));
        }
    }
    let resource = |group: &config::GroupConfig, name: &str| {
        group.resources.iter().any(|it| it.name == name).then(|| Failure::Resource {
            group: group.name.clone(),
            resource: name.to_string(),
            times,
        })
    };
    if let Some((group, name)) = text.split_once(['/', ':']) {
        let Some(g) = cfg.group(group) else {
            return Err(format!(
                "there is no group `{group}`; groups: {}",
                names(cfg.groups.iter().map(|it| &it.name))
            ));
        };
        return resource(g, name).ok_or_else(|| {
            format!(
                "group `{group}` has no resource `{name}`; its resources: {}",
                names(g.resources.iter().map(|it| &it.name))
            )
        });
    }
    let found: Vec<Failure> = cfg.groups.iter().filter_map(|g| resource(g, text)).collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(format!(
            "`{text}` is neither a node ({}), a link (link:0 … link:{}) nor a resource (GROUP/RESOURCE)",
            names(cfg.nodes.iter().map(|it| &it.name)),
            links.saturating_sub(1)
        )),
        _ => Err(format!("several groups have a resource `{text}`: say which as GROUP/{text}")),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    it.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Runs the simulation and returns the report for people.
pub fn simulate(cfg: &ClusterConfig, status: &StatusDoc, failure: &Failure) -> Result<String, String> {
    if status.cluster != cfg.name {
        return Err(format!(
            "the status is of cluster `{}` but the configuration is of cluster `{}`: give the configuration of that cluster (--config)",
            status.cluster, cfg.name
        ));
    }
    if cfg.node(&status.node).is_none() {
        return Err(format!("the status is of node `{}`, which the configuration does not declare", status.node));
    }
    let mut world = World::new(cfg, status)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "simulation of cluster {} from the status of {} (incarnation {})",
        cfg.name, status.node, status.incarnation
    );
    let _ = writeln!(
        out,
        "assumed: messages take {} ms, every resource operation succeeds in {} ms, a fence powers the node off and confirms after {} s; \
         the times are those of the rules (dead_after {}, fence_delay {}, startup_wait {}), not of your machines",
        LATENCY.as_millis(),
        OP_TIME.as_millis(),
        FENCE_TIME.as_secs(),
        config::format_duration(cfg.dead_after),
        config::format_duration(cfg.fence_delay),
        config::format_duration(cfg.startup_wait),
    );
    for note in &world.notes {
        let _ = writeln!(out, "note: {note}");
    }

    // Settle into the state of the status, quietly.
    world.settle(cfg.startup_wait + cfg.dead_after * 4 + Duration::from_secs(2));
    world.replay_failure_counts(status);
    out.push_str("\nbefore the failure:\n");
    out.push_str(&world.summary());
    for warning in world.compare(status) {
        let _ = writeln!(out, "WARNING: {warning}");
    }

    // The failure.
    out.push('\n');
    match failure {
        Failure::Node(name) => {
            let _ = writeln!(out, "failure: {name} powers off (agent and services), now:");
        }
        Failure::Link(k) => {
            let _ = writeln!(out, "failure: link {k} stops carrying traffic between every pair of nodes, now:");
        }
        Failure::Resource { group, resource, times } => {
            let _ = writeln!(
                out,
                "failure: resource {resource} of group {group} fails its next {times} monitor(s) where it runs:"
            );
        }
    }
    world.start_printing();
    world.inject(failure)?;
    let quiet = (cfg.dead_after * 4).max(cfg.fence_delay * 2).max(cfg.startup_wait) + Duration::from_secs(5);
    world.run_until_quiet(quiet, MAX_FAILURE_PHASE);
    let steps = std::mem::take(&mut world.lines);
    if steps.is_empty() {
        out.push_str("  nothing happens: no node notices anything\n");
    }
    for (i, line) in steps.iter().enumerate() {
        let _ = writeln!(out, "  {:>3}. {line}", i + 1);
    }
    out.push_str("\nafter:\n");
    out.push_str(&world.summary());
    Ok(out)
}

/// Parses an epoch as shown by `status` (`counter.node`, `!` when forced).
pub fn parse_epoch(text: &str) -> Option<Epoch> {
    let (text, forced) = match text.strip_suffix('!') {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (counter, node) = text.split_once('.')?;
    Some(Epoch { counter: counter.parse().ok()?, node: node.parse().ok()?, forced })
}

fn parse_role(text: &str) -> Option<Role> {
    match text {
        "M" => Some(Role::M),
        "SM" => Some(Role::Sm),
        "SL" => Some(Role::Sl),
        "X" => Some(Role::X),
        _ => None,
    }
}

#[derive(Debug)]
enum Ev {
    /// An event for node `to`, if it still runs incarnation `inc`.
    Deliver { to: usize, inc: u64, event: NodeEvent },
    /// Connection `conn` completed its handshake (if nobody closed it meanwhile).
    Handshake { conn: u64 },
    /// A fence by `by` (incarnation `inc`) of `peer` completes.
    Fenced { by: usize, inc: u64, peer: usize },
}

struct Conn {
    id: u64,
    dialer: usize,
    dialer_conn: ConnId,
    acceptor: usize,
    acceptor_conn: ConnId,
    link: usize,
}

struct SimNode {
    name: String,
    core: Option<Node>,
    incarnation: u64,
    next_accept: u64,
    journals: BTreeMap<u16, Vec<Record>>,
    /// Monitors still to fail, per (group, resource).
    failing: BTreeMap<(u16, usize), u32>,
}

struct World<'a> {
    cfg: &'a ClusterConfig,
    nodes: Vec<SimNode>,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Ev>,
    conns: Vec<Conn>,
    next_conn: u64,
    links_up: Vec<bool>,
    printing: bool,
    t0: Instant,
    last_line_at: Instant,
    lines: Vec<String>,
    notes: Vec<String>,
}

impl<'a> World<'a> {
    fn new(cfg: &'a ClusterConfig, status: &StatusDoc) -> Result<World<'a>, String> {
        let me = cfg.node_id(&status.node).expect("checked").0 as usize;
        let mut notes = Vec::new();
        let links = cfg.nodes[me].links.len();
        let mut world = World {
            cfg,
            nodes: Vec::new(),
            now: Instant(0),
            seq: 0,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            conns: Vec::new(),
            next_conn: 1,
            links_up: vec![true; links],
            printing: false,
            t0: Instant(0),
            last_line_at: Instant(0),
            lines: Vec::new(),
            notes: Vec::new(),
        };
        let peer_doc = |name: &str| status.peers.iter().find(|it| it.node == name);
        for (id, node) in cfg.nodes.iter().enumerate() {
            let running = if id == me {
                true
            } else if let Some(peer) = peer_doc(&node.name) {
                peer.alive
            } else {
                notes.push(format!(
                    "{} shares no group with {}: its state is not in the status; assumed running, as configured",
                    node.name, status.node
                ));
                true
            };
            let incarnation = if id == me {
                status.incarnation
            } else {
                peer_doc(&node.name).and_then(|it| it.incarnation).unwrap_or(1)
            };
            let mut setups = Vec::new();
            let mut peers = Vec::new();
            for (g, group) in cfg.groups.iter().enumerate() {
                let Some(peer) = group.peer_of(&node.name) else { continue };
                peers.push(cfg.node_id(peer).expect("declared"));
                let durable = durable_from_status(status, group, &node.name, me == id, &mut notes)?;
                setups.push(GroupSetup {
                    index: GroupIndex(g as u16),
                    config: cfg.group_core_config(group, &node.name),
                    durable,
                    log: LogMeta::empty(),
                    join_only: durable.join_only,
                    resources: group.resource_policies(),
                });
            }
            peers.sort();
            peers.dedup();
            let core_cfg = NodeConfig {
                me: NodeId(id as u16),
                incarnation: Incarnation(incarnation),
                peers,
                links: node.links.len(),
                heartbeat_interval: cfg.heartbeat_interval,
                dead_after: cfg.dead_after,
                reconnect_backoff: cfg.heartbeat_interval,
                pause_threshold: Some(cfg.dead_after / 2),
            };
            let core = running.then(|| Node::new(core_cfg, setups, Instant(0)));
            world.nodes.push(SimNode {
                name: node.name.clone(),
                core,
                incarnation,
                next_accept: 1,
                journals: BTreeMap::new(),
                failing: BTreeMap::new(),
            });
        }
        for (id, node) in world.nodes.iter().enumerate() {
            if node.core.is_none() && id != me {
                notes.push(format!("{} is down in the status: it stays down", node.name));
            }
        }
        world.notes = notes;
        for id in 0..world.nodes.len() {
            world.drain(id);
        }
        Ok(world)
    }

    fn group_name(&self, g: GroupIndex) -> &str {
        self.cfg.groups.get(g.0 as usize).map_or("?", |it| it.name.as_str())
    }

    fn resource_label(&self, g: GroupIndex, r: usize) -> String {
        match self.cfg.groups.get(g.0 as usize).and_then(|it| it.resources.get(r)) {
            Some(res) => format!("{} ({})", res.name, res.kind.type_name()),
            None => format!("resource #{r}"),
        }
    }

    fn name(&self, id: NodeId) -> &str {
        self.nodes.get(id.0 as usize).map_or("?", |it| it.name.as_str())
    }

    fn line(&mut self, node: usize, text: String) {
        if self.printing {
            let ms = self.now.since(self.t0).as_millis();
            let line = format!("+{}.{:03} s  {:<8} {text}", ms / 1000, ms % 1000, self.nodes[node].name);
            self.lines.push(line);
            self.last_line_at = self.now;
        }
    }

    fn start_printing(&mut self) {
        self.printing = true;
        self.t0 = self.now;
        self.last_line_at = self.now;
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now.after(after), self.seq)));
        self.pending.insert(self.seq, ev);
    }

    fn deliver(&mut self, to: usize, event: NodeEvent) {
        let inc = self.nodes[to].incarnation;
        self.schedule(LATENCY, Ev::Deliver { to, inc, event });
    }

    /// Runs every event and timer up to `end`.
    fn run_until(&mut self, end: Instant) {
        loop {
            let next_event = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.core.as_ref().and_then(|c| c.poll_timeout()).map(|at| (at, i)))
                .min();
            let take_event = match (next_event, next_timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => e <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if take_event {
                let at = next_event.expect("some");
                if at > end {
                    break;
                }
                self.now = self.now.max(at);
                let Reverse((_, seq)) = self.queue.pop().expect("peeked");
                let ev = self.pending.remove(&seq).expect("scheduled");
                self.handle_ev(ev);
            } else {
                let (at, node) = next_timer.expect("some");
                if at > end {
                    break;
                }
                self.now = self.now.max(at);
                self.feed(node, NodeEvent::Timeout);
            }
        }
        self.now = self.now.max(end);
    }

    fn settle(&mut self, duration: Duration) {
        self.run_until(self.now.after(duration));
    }

    /// Runs until nothing was printed for `quiet`, at most `max`.
    fn run_until_quiet(&mut self, quiet: Duration, max: Duration) {
        let end = self.t0.after(max);
        while self.now < end {
            let next = self.now.after(Duration::from_millis(100)).min(end);
            self.run_until(next);
            if self.now.since(self.last_line_at) >= quiet {
                break;
            }
        }
        if self.now >= end {
            let ms = max.as_millis() as u64;
            self.lines.push(format!("(the simulation stops after {} s; the cluster had not settled)", ms / 1000));
        }
    }

    fn handle_ev(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, inc, event } => {
                if self.nodes[to].core.is_some() && self.nodes[to].incarnation == inc {
                    self.feed(to, event);
                }
            }
            Ev::Handshake { conn } => {
                let Some(c) = self.conns.iter().find(|it| it.id == conn) else { return };
                let (d, a, link) = (c.dialer, c.acceptor, c.link);
                let (dc, ac) = (c.dialer_conn, c.acceptor_conn);
                if self.nodes[d].core.is_none() || self.nodes[a].core.is_none() {
                    return;
                }
                let (di, ai) = (Incarnation(self.nodes[d].incarnation), Incarnation(self.nodes[a].incarnation));
                self.feed(a, NodeEvent::ChannelUp { peer: NodeId(d as u16), incarnation: di, link, conn: ac });
                self.feed(d, NodeEvent::ChannelUp { peer: NodeId(a as u16), incarnation: ai, link, conn: dc });
            }
            Ev::Fenced { by, inc, peer } => {
                // A fencer that went down meanwhile (fenced itself in a fence race) never
                // finishes its fence.
                if self.nodes[by].core.is_none() || self.nodes[by].incarnation != inc {
                    return;
                }
                if self.nodes[peer].core.is_some() {
                    self.line(peer, "powered off by the fence".into());
                    self.crash(peer);
                }
                self.feed(by, NodeEvent::FenceResult { peer: NodeId(peer as u16), confirmed: true });
            }
        }
    }

    fn feed(&mut self, node: usize, event: NodeEvent) {
        let now = self.now;
        let Some(core) = self.nodes[node].core.as_mut() else { return };
        core.handle(now, event);
        self.drain(node);
    }

    /// Executes a node's commands in order, as the agent does.
    fn drain(&mut self, node: usize) {
        loop {
            let Some(core) = self.nodes[node].core.as_mut() else { return };
            let Some(command) = core.poll_command() else { return };
            self.execute(node, command);
        }
    }

    fn crash(&mut self, node: usize) {
        self.nodes[node].core = None;
        self.conns.retain(|it| it.dialer != node && it.acceptor != node);
    }

    fn link_ok(&self, link: usize) -> bool {
        self.links_up.get(link).copied().unwrap_or(false)
    }

    fn execute(&mut self, node: usize, command: NodeCommand) {
        let me = NodeId(node as u16);
        let inc = Incarnation(self.nodes[node].incarnation);
        match command {
            NodeCommand::SendHeartbeats => {
                let peers = self.nodes[node].core.as_ref().map(|c| c.config().peers.clone()).unwrap_or_default();
                for peer in peers {
                    let p = peer.0 as usize;
                    if self.nodes[p].core.is_none() {
                        continue;
                    }
                    for link in 0..self.links_up.len() {
                        if self.link_ok(link) {
                            self.deliver(p, NodeEvent::Heartbeat { from: me, link, incarnation: inc });
                        }
                    }
                }
            }
            NodeCommand::Connect { peer, link, conn } => {
                let a = peer.0 as usize;
                // A dial to a node that is off, or over a dead link, never completes; the
                // node gives up on it after dead_after.
                if self.nodes[a].core.is_some() && self.link_ok(link) {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let acceptor_conn = ConnId(self.nodes[a].next_accept);
                    self.nodes[a].next_accept += 1;
                    self.conns.push(Conn { id, dialer: node, dialer_conn: conn, acceptor: a, acceptor_conn, link });
                    self.schedule(LATENCY * 2, Ev::Handshake { conn: id });
                }
            }
            NodeCommand::Disconnect { peer: _, conn } => {
                let found = self.conns.iter().position(|it| {
                    (it.dialer == node && it.dialer_conn == conn) || (it.acceptor == node && it.acceptor_conn == conn)
                });
                if let Some(i) = found {
                    let c = self.conns.remove(i);
                    let (other, other_conn) =
                        if c.dialer == node { (c.acceptor, c.acceptor_conn) } else { (c.dialer, c.dialer_conn) };
                    self.deliver(other, NodeEvent::ChannelDown { peer: me, conn: other_conn });
                }
            }
            NodeCommand::Group { group, peer, command } => self.group_command(node, group, peer, command),
            NodeCommand::Fence { peer } => {
                let text = format!(
                    "fences {} (simulated: powered off, confirmed after {} s)",
                    self.name(peer),
                    FENCE_TIME.as_secs()
                );
                self.line(node, text);
                let crossing = self.pending.values().any(|ev| {
                    matches!(ev, Ev::Fenced { by, inc, peer: p } if *by == peer.0 as usize && *p == node
                        && self.nodes[*by].core.is_some() && self.nodes[*by].incarnation == *inc)
                });
                if crossing {
                    let text = format!(
                        "FENCE RACE: {} is fencing {} at the same time; here the fence that started first wins, real machines may both go off",
                        self.name(peer),
                        self.nodes[node].name
                    );
                    self.line(node, text);
                }
                let inc = self.nodes[node].incarnation;
                self.schedule(FENCE_TIME, Ev::Fenced { by: node, inc, peer: peer.0 as usize });
            }
            NodeCommand::Resource { group, resource, op } => {
                let label = self.resource_label(group, resource);
                let gname = self.group_name(group).to_string();
                let outcome = match op {
                    Op::Monitor => {
                        let left = self.nodes[node].failing.entry((group.0, resource)).or_default();
                        if *left > 0 {
                            *left -= 1;
                            self.line(
                                node,
                                format!("group {gname}: monitor of {label}: FAILED (the injected failure)"),
                            );
                            Outcome::Failed
                        } else {
                            Outcome::Ok
                        }
                    }
                    Op::Start => {
                        self.line(node, format!("group {gname}: start {label}"));
                        Outcome::Ok
                    }
                    Op::Stop => {
                        self.line(node, format!("group {gname}: stop {label}"));
                        Outcome::Ok
                    }
                };
                let inc = self.nodes[node].incarnation;
                self.schedule(
                    OP_TIME,
                    Ev::Deliver { to: node, inc, event: NodeEvent::ResourceDone { group, resource, op, outcome } },
                );
            }
            NodeCommand::Halt { group, resource } => {
                let text = format!(
                    "HALT: group {}: {} could not be stopped; the agent stops and waits to be fenced",
                    self.group_name(group),
                    self.resource_label(group, resource)
                );
                self.line(node, text);
                self.crash(node);
            }
            NodeCommand::Report(report) => {
                let text = self.node_report_text(report);
                if !text.is_empty() {
                    self.line(node, text);
                }
            }
        }
    }

    fn group_command(&mut self, node: usize, group: GroupIndex, peer: NodeId, command: Command) {
        let gname = self.group_name(group).to_string();
        let pname = self.name(peer).to_string();
        match command {
            Command::Persist(durable) => {
                self.line(
                    node,
                    format!("group {gname}: writes priority {} and epoch {} to disk", durable.priority, durable.epoch),
                );
            }
            Command::WriteRecords(records) => {
                self.nodes[node].journals.entry(group.0).or_default().extend(records);
            }
            Command::TruncateLog { keep_upto, .. } => {
                self.nodes[node].journals.entry(group.0).or_default().retain(|it| it.index <= keep_upto);
            }
            Command::Send { to, epoch, msg } => self.send(node, group, peer, to, epoch, msg),
            Command::SendRecords { to, epoch, from, upto } => {
                let records: Vec<Record> = self.nodes[node]
                    .journals
                    .get(&group.0)
                    .map(|j| j.iter().filter(|it| it.index >= from && it.index <= upto).cloned().collect())
                    .unwrap_or_default();
                self.send(node, group, peer, to, epoch, Message::Records(records));
            }
            Command::AckAppend { .. } | Command::RejectAppend { .. } => {}
            Command::StartService | Command::StopService | Command::FencePeer { .. } => {
                // The node turns these into resource operations and fences itself.
            }
            Command::Report(report) => {
                if let Some(text) = group_report_text(&gname, &pname, self.cfg, report) {
                    self.line(node, text);
                }
            }
        }
    }

    fn send(&mut self, node: usize, group: GroupIndex, peer: NodeId, to: Incarnation, epoch: Epoch, msg: Message) {
        let p = peer.0 as usize;
        if self.nodes[p].core.is_none() || self.nodes[p].incarnation != to.0 {
            return;
        }
        // The newest connection between the two carries the channel.
        let Some(c) = self
            .conns
            .iter()
            .rev()
            .find(|it| (it.dialer == node && it.acceptor == p) || (it.acceptor == node && it.dialer == p))
        else {
            return;
        };
        if !self.link_ok(c.link) {
            return; // Lost with the link; the nodes move the channel and resume.
        }
        let conn = if c.dialer == p { c.dialer_conn } else { c.acceptor_conn };
        if let Message::Handover { reason, .. } = &msg {
            let text = format!(
                "group {}: hands the group over to {} ({})",
                self.group_name(group),
                self.name(peer),
                reason_name(*reason)
            );
            self.line(node, text);
        }
        self.deliver(p, NodeEvent::Message { peer: NodeId(node as u16), conn, group, epoch, msg });
    }

    fn node_report_text(&self, report: NodeReport) -> String {
        match report {
            NodeReport::LinkUp { peer, link } => format!("link {link} to {} is up", self.name(peer)),
            NodeReport::LinkDown { peer, link, links_up } if links_up > 0 => format!(
                "link {link} to {} is silent for {}; {links_up} link(s) still up: nothing else changes",
                self.name(peer),
                config::format_duration(self.cfg.dead_after)
            ),
            NodeReport::LinkDown { peer, link, .. } => format!(
                "link {link} to {} is silent for {}; no link left",
                self.name(peer),
                config::format_duration(self.cfg.dead_after)
            ),
            NodeReport::PeerAlive { peer, .. } => format!("hears {}", self.name(peer)),
            NodeReport::PeerDead { peer, incarnation } => format!(
                "suspects {} (incarnation {}): every link silent for {}",
                self.name(peer),
                incarnation.0,
                config::format_duration(self.cfg.dead_after)
            ),
            NodeReport::PeerRestarted { peer, old, new } => {
                format!("{} restarted (incarnation {} → {})", self.name(peer), old.0, new.0)
            }
            NodeReport::ChannelUp { peer, link } => format!("peer channel to {} up on link {link}", self.name(peer)),
            NodeReport::ChannelDown { peer } => format!("peer channel to {} down", self.name(peer)),
            NodeReport::UnknownGroup { peer, group } => {
                format!("dropped a message from {} for unknown group #{}", self.name(peer), group.0)
            }
            NodeReport::PauseDetected { late } => format!("ran {} ms late", late.as_millis()),
            NodeReport::MonitorFailed { group, resource, restart: true } => format!(
                "group {}: {} failed: restarting it in place (with the resources after it)",
                self.group_name(group),
                self.resource_label(group, resource)
            ),
            NodeReport::MonitorFailed { group, resource, restart: false } => format!(
                "ALARM: group {}: {} failed more than max_restarts times within restart_window: stopping the group here to move it",
                self.group_name(group),
                self.resource_label(group, resource)
            ),
            NodeReport::ServiceFailed { group, resource, start } => format!(
                "ALARM: group {}: {} {}; every resource of the group is stopped here",
                self.group_name(group),
                self.resource_label(group, resource),
                if start { "would not start" } else { "kept failing" }
            ),
            NodeReport::FenceStarted { .. } => String::new(),
            NodeReport::FenceFinished { peer, confirmed } => {
                format!("fence of {} {}", self.name(peer), if confirmed { "confirmed: it is off" } else { "FAILED" })
            }
        }
    }

    /// Makes the resources' failure counts of the status true in the simulated world by
    /// failing that many monitors, so the restart threshold is where it is on the cluster.
    fn replay_failure_counts(&mut self, status: &StatusDoc) {
        let me = self.cfg.node_id(&status.node).expect("checked").0 as usize;
        let mut longest = Duration::ZERO;
        for group in &status.groups {
            if !matches!(group.role.as_str(), "M" | "SM") {
                continue;
            }
            let Some(g) = self.cfg.groups.iter().position(|it| it.name == group.name) else { continue };
            for res in &group.resources {
                let Some(rc) = self.cfg.groups[g].resources.iter().position(|it| it.name == res.name) else {
                    continue;
                };
                if res.failures > 0 && res.failures <= self.cfg.groups[g].resources[rc].max_restarts as usize {
                    self.nodes[me].failing.insert((g as u16, rc), res.failures as u32);
                    let interval = self.cfg.groups[g].resources[rc].monitor_interval;
                    longest = longest.max(interval * (res.failures as u32 + 1));
                }
            }
        }
        if !longest.is_zero() {
            self.settle(longest + Duration::from_secs(1));
        }
    }

    fn inject(&mut self, failure: &Failure) -> Result<(), String> {
        match failure {
            Failure::Node(name) => {
                let id = self.cfg.node_id(name).expect("parsed").0 as usize;
                if self.nodes[id].core.is_none() {
                    return Err(format!("{name} is already down in the status; nothing to fail"));
                }
                self.line(id, "powers off".into());
                self.crash(id);
            }
            Failure::Link(k) => {
                self.links_up[*k] = false;
            }
            Failure::Resource { group, resource, times } => {
                let g = self.cfg.groups.iter().position(|it| it.name == *group).expect("parsed");
                let r = self.cfg.groups[g].resources.iter().position(|it| it.name == *resource).expect("parsed");
                if self.cfg.groups[g].resources[r].monitor_interval.is_zero() {
                    return Err(format!(
                        "resource {resource} of group {group} is never monitored (monitor_interval = \"0s\"): takeover would not notice it failing"
                    ));
                }
                let active: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| self.role(n, GroupIndex(g as u16)).is_some_and(Role::is_active))
                    .collect();
                let [node] = active.as_slice() else {
                    return Err(format!(
                        "group {group} is not running on exactly one node in the simulated cluster, so there is no {resource} to fail"
                    ));
                };
                self.nodes[*node].failing.insert((g as u16, r), *times);
            }
        }
        Ok(())
    }

    fn role(&self, node: usize, group: GroupIndex) -> Option<Role> {
        self.nodes[node].core.as_ref()?.group(group).map(|it| it.status().role)
    }

    /// One line per group: the role, priority and epoch on each of its nodes, and its resources.
    fn summary(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if n.core.is_none() {
                let _ = writeln!(out, "  node {}: down", n.name);
            }
        }
        for (g, group) in self.cfg.groups.iter().enumerate() {
            let index = GroupIndex(g as u16);
            let mut parts = Vec::new();
            let mut resources = None;
            for name in &group.nodes {
                let id = self.cfg.node_id(name).expect("declared").0 as usize;
                let Some(core) = self.nodes[id].core.as_ref() else {
                    parts.push(format!("{name} down"));
                    continue;
                };
                let status = core.status(self.now);
                let Some((_, _, gs, rs)) = status.groups.iter().find(|it| it.0 == index) else { continue };
                let mut part =
                    format!("{name} {} (priority {}, epoch {})", gs.role, gs.durable.priority, gs.durable.epoch);
                if gs.failed {
                    part.push_str(" FAILED");
                }
                parts.push(part);
                if gs.role.is_active() || rs.up > 0 {
                    let list: Vec<String> = group
                        .resources
                        .iter()
                        .enumerate()
                        .map(|(r, res)| {
                            format!(
                                "{} {} ({}/{} failures)",
                                res.name,
                                if r < rs.up { "up" } else { "down" },
                                rs.failures.get(r).copied().unwrap_or(0),
                                res.max_restarts
                            )
                        })
                        .collect();
                    resources = Some(format!("on {name}: {}", list.join(", ")));
                }
            }
            let _ = writeln!(out, "  group {}: {}", group.name, parts.join(", "));
            if let Some(resources) = resources {
                let _ = writeln!(out, "    resources {resources}");
            }
        }
        out
    }

    /// Where the simulated cluster differs from the status it started from.
    fn compare(&self, status: &StatusDoc) -> Vec<String> {
        let me = self.cfg.node_id(&status.node).expect("checked").0 as usize;
        let mut out = Vec::new();
        for group in &status.groups {
            let Some(g) = self.cfg.groups.iter().position(|it| it.name == group.name) else {
                out.push(format!("group {} of the status is not in the configuration", group.name));
                continue;
            };
            let index = GroupIndex(g as u16);
            let mut check = |node: usize, want: Option<&str>| {
                let Some(want) = want else { return };
                let got = self.role(node, index).map_or("down", Role::as_str);
                if got != want {
                    out.push(format!(
                        "group {}: the status shows {} {want}, the simulation reached {got}; the steps below start from the simulated state",
                        group.name, self.nodes[node].name
                    ));
                }
            };
            check(me, Some(group.role.as_str()));
            if let Some(p) = self.cfg.node_id(&group.peer) {
                check(p.0 as usize, group.peer_state.role.as_deref());
            }
            let epoch = self.nodes[me].core.as_ref().and_then(|c| c.group(index)).map(|it| it.status().durable.epoch);
            if let Some(epoch) = epoch.filter(|it| it.to_string() != group.epoch) {
                out.push(format!(
                    "group {}: the status shows epoch {} on {}, the simulation reached {epoch}",
                    group.name, group.epoch, self.nodes[me].name
                ));
            }
        }
        out
    }
}

/// A node's durable state of `group` as the status shows it.
fn durable_from_status(
    status: &StatusDoc,
    group: &config::GroupConfig,
    node: &str,
    is_status_node: bool,
    notes: &mut Vec<String>,
) -> Result<GroupDurable, String> {
    let initial = GroupDurable::initial(group.preferred() == node);
    let doc = status.groups.iter().find(|it| it.name == group.name);
    let Some(doc) = doc else {
        if is_status_node {
            return Err(format!(
                "the configuration says {node} runs group {}, but its status does not show it: is this the configuration the agent runs?",
                group.name
            ));
        }
        if !group.has_node(&status.node) {
            notes.push(format!(
                "group {} does not involve {}: assumed in its initial state (priority 2 on {}, 3 on the other)",
                group.name,
                status.node,
                group.preferred()
            ));
        }
        return Ok(initial);
    };
    let epoch = parse_epoch(&doc.epoch)
        .ok_or_else(|| format!("group {}: `{}` is not an epoch (counter.node)", doc.name, doc.epoch))?;
    // The simulated boot makes the active node enter SM again, which creates the epoch
    // above every known one: start just below the status's, so it is recreated as shown.
    let someone_active =
        matches!(doc.role.as_str(), "M" | "SM") || matches!(doc.peer_state.role.as_deref(), Some("M" | "SM"));
    let epoch = if someone_active && epoch.counter > 0 {
        Epoch { counter: epoch.counter - 1, node: epoch.node, forced: false }
    } else {
        epoch
    };
    if is_status_node {
        let priority = Priority::from_number(doc.priority)
            .ok_or_else(|| format!("group {}: priority {} is not 1, 2 or 3", doc.name, doc.priority))?;
        let role = parse_role(&doc.role).unwrap_or(Role::X);
        return Ok(GroupDurable { priority, epoch, role, join_only: doc.join_only });
    }
    // The peer's priority as it last stated it; its epoch is at most ours.
    let priority = doc.peer_state.priority.and_then(Priority::from_number).unwrap_or(initial.priority);
    let role = doc.peer_state.role.as_deref().and_then(parse_role).unwrap_or(Role::X);
    Ok(GroupDurable { priority, epoch, role, join_only: false })
}

fn group_report_text(group: &str, peer: &str, cfg: &ClusterConfig, report: Report) -> Option<String> {
    Some(match report {
        Report::Transition { from, to, cause } => {
            format!("group {group}: {from} → {to} ({})", cause_text(cause, peer))
        }
        Report::Waiting(reason) => format!("group {group}: waits: {}", wait_text(reason, group, peer)),
        Report::SlaveLost { .. } => format!("group {group}: SL {peer} lost; continuing as SM"),
        Report::FenceRequested { target: group::FenceTarget::Run(inc) } => {
            format!("group {group}: {peer} (incarnation {}) must be known stopped before anything moves", inc.0)
        }
        Report::FenceRequested { .. } => format!("group {group}: force start fences {peer} first"),
        Report::FenceFailed { .. } => format!("ALARM: group {group}: cannot confirm that {peer} stopped; retrying"),
        Report::FenceDelayed { .. } => format!(
            "group {group}: the active {peer} is lost; waits fence_delay {} before fencing it (the active wins a fence race)",
            config::format_duration(cfg.fence_delay)
        ),
        Report::FenceCancelled { .. } => format!("group {group}: {peer} came back before its fence started"),
        Report::HandoverStarted { reason } => format!(
            "group {group}: {}: stopping the resources here in reverse order, then handing over to {peer}",
            reason_name(reason)
        ),
        Report::HandedOver { reason } => format!("group {group}: handed over to {peer} ({})", reason_name(reason)),
        Report::GroupFailed { start, peer_failed } => format!(
            "ALARM: group {group}: FAILED here: a resource {} and the group cannot move ({}); it stays down until `takeover cleanup {group}`",
            if start { "would not start" } else { "kept failing" },
            if peer_failed {
                format!("it already failed on {peer}")
            } else {
                format!("{peer} is not a synchronised standby")
            }
        ),
        Report::TwoActives { own, peer: theirs } => {
            format!("ALARM: group {group}: both active (epochs {own} here, {theirs} on {peer}); the older stops")
        }
        Report::NewerGeneration { own, peer: theirs } => {
            format!("ALARM: group {group}: {peer} holds the newer epoch {theirs} (here {own}): stopping")
        }
        other => format!("group {group}: {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_parse_as_status_prints_them() {
        assert_eq!(parse_epoch("3.1"), Some(Epoch { counter: 3, node: 1, forced: false }));
        assert_eq!(parse_epoch("7.0!"), Some(Epoch { counter: 7, node: 0, forced: true }));
        assert_eq!(parse_epoch("x"), None);
    }
}
