//! `takeover agent`: the tokio shell around one node's core.
//!
//! Start-up, in this order: write the agent's pid file (for `fence-local`), raise the
//! durable incarnation, load each group's durable state and open its journal (cutting a
//! torn tail), stop every resource a previous run may have left up (in reverse order),
//! then open the sockets and the API and run the event loop. Resource operations, plan
//! checks and step timings are in [`runtime`].
//!
//! The event loop owns the core ([`Node`]) and everything it commands. It turns sockets,
//! API calls, fence results and timers into [`NodeEvent`]s, and executes the commands the
//! core returns strictly in order: a persist or a journal write is fsynced before the
//! next command runs. If a write fails, the agent exits: no action may run without the
//! durable state it depends on (the service dies with the agent).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use takeover_core::group::{self, Arbiter, Command, FenceTarget, RefuseReason, RejectReason, Report};
use takeover_core::log::{DiscardReason, Record};
use takeover_core::node::{
    ConnId, GroupIndex, GroupSetup, Node, NodeCommand, NodeConfig as CoreNodeConfig, NodeEvent, NodeReport,
};
use takeover_core::{Incarnation, Instant, NodeId, ReqId};
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::api::{
    self, ApiCall, ApiError, AppendDoc, ForceStartDoc, MoveDoc, RecordDoc, RecordsDoc, StatusDoc, SwitchoverDoc,
};
use crate::auth::{self, Auth, DropReason, HeartbeatOpener, HeartbeatSealer};
use crate::config::{self, ApiAddr, ClusterConfig, NodeConfig};
use crate::journal::{self, Journal};
use crate::net::{self, Channel, Dropped, Identity, Input};
use crate::resources::{self as res, SpecEnv};
use crate::service;
use crate::store;
use crate::wire::{self, GroupFrame};
use takeover_core::group::SwitchoverRefused;

mod lease;
mod runtime;
use crate::words::{cause_text, wait_text};
use runtime::{OpDone, PlanDone, ResRt, Timeline};

/// How `takeover agent` was started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub node: String,
    /// `--join-only`: after a force start on the peer, this node must not start its
    /// groups by itself until it has rejoined as SL (made durable per group).
    pub join_only: bool,
}

/// Events shown in `status` (the history itself is in [`crate::events`]).
const STATUS_EVENTS: usize = 200;
/// Appends batched into one journal write.
const APPEND_BATCH: usize = 256;

/// Runs the agent until SIGTERM/SIGINT or a fatal error.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let mut agent = Agent::start(opts).await?;
    // Under systemd (`Type=notify`): ready now that the API answers; watchdog from the loop.
    let mut systemd = crate::sdnotify::Notifier::from_env();
    systemd.ready(&agent.systemd_status());
    agent.run(&mut systemd).await
}

struct Agent {
    cfg: ClusterConfig,
    me: NodeConfig,
    incarnation: Incarnation,
    identity: Identity,
    node: Node,
    base: tokio::time::Instant,
    groups: Vec<GroupRt>,
    peers: HashMap<NodeId, PeerRt>,
    udp: Vec<Arc<UdpSocket>>,
    /// Established connections, by id; the core says which one is current.
    conns: HashMap<u64, Channel>,
    /// Dials in progress, by the id the core gave them.
    dials: HashMap<u64, AbortHandle>,
    inputs_tx: mpsc::UnboundedSender<Input>,
    inputs: mpsc::UnboundedReceiver<Input>,
    api_calls: mpsc::UnboundedReceiver<ApiCall>,
    fence_tx: mpsc::UnboundedSender<(NodeId, FenceDone)>,
    fence_rx: mpsc::UnboundedReceiver<(NodeId, FenceDone)>,
    pending: HashMap<u64, AppendReply>,
    next_req: u64,
    /// The bounded event history, shared with the API.
    events: crate::events::SharedLog,
    /// Counters and histograms for `/metrics`.
    metrics: crate::metrics::Metrics,
    /// When each pending append was asked for, and its group (append latency).
    append_started: HashMap<u64, (usize, tokio::time::Instant)>,
    dropped: Arc<Dropped>,
    dropped_messages: u64,
    ops_tx: mpsc::UnboundedSender<OpDone>,
    ops_rx: mpsc::UnboundedReceiver<OpDone>,
    plans_tx: mpsc::UnboundedSender<PlanDone>,
    plans_rx: mpsc::UnboundedReceiver<PlanDone>,
    /// When each peer was last declared failed (a takeover's timeline starts there).
    peer_dead_at: HashMap<NodeId, tokio::time::Instant>,
    /// When the fence of each peer started, and how long the last confirmed one took.
    fence_started_at: HashMap<NodeId, tokio::time::Instant>,
    /// The last confirmed fence of each peer: when it started, how long it took, when
    /// it was confirmed (a takeover's "fence delay", "fence" and "become active" steps).
    fence_took: HashMap<NodeId, (tokio::time::Instant, Duration, tokio::time::Instant)>,
    /// Seals this run's heartbeats.
    heartbeat_sealer: HeartbeatSealer,
    /// Opens the peers' heartbeats (shared with the receive tasks); what to echo.
    heartbeat_opener: Arc<std::sync::Mutex<HeartbeatOpener>>,
    /// Group reports captured while answering an API call.
    captured: Vec<(GroupIndex, Report)>,
    /// The state directory's lock, held while this agent lives.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Renewed from the event loop; stops the services if the loop stalls.
    watchdog: crate::guard::Watchdog,
    /// The `[witness]` leases (inert without one).
    witness: lease::Witnessing,
}

impl Agent {
    fn start_watchdog(&mut self) -> anyhow::Result<()> {
        let scope = crate::resources::node_scope(&self.me.name, &self.me.state_dir);
        let vips: Vec<_> = self
            .cfg
            .groups_of(&self.me.name)
            .flat_map(|g| g.resources.iter())
            .filter_map(|r| match &r.kind {
                config::ResourceKindConfig::Vip { address, prefix_len, interface, .. } => {
                    Some(crate::resources::vip::VipSpec {
                        address: *address,
                        prefix_len: *prefix_len,
                        interface: interface.on(&self.me.name).clone(),
                        announce_count: 0,
                        announce_interval: Duration::ZERO,
                    })
                }
                _ => None,
            })
            .collect();
        let mounts: Vec<PathBuf> = self
            .cfg
            .groups_of(&self.me.name)
            .flat_map(|g| g.resources.iter())
            .filter_map(|r| match &r.kind {
                config::ResourceKindConfig::Mount { directory, .. } => Some(directory.on(&self.me.name).clone()),
                _ => None,
            })
            .collect();
        let storage = match self.cfg.storage_fence.clone() {
            None => None,
            Some(sf) => {
                let device = sf.device.on(&self.me.name).clone();
                let slot = self.cfg.node_id(&self.me.name).expect("declared").0;
                crate::storage_fence::check_header(&device, &self.cfg.name, self.cfg.nodes.len())
                    .map_err(|e| anyhow!("storage fence: {e}"))?;
                let own = crate::storage_fence::read_slot(&device, slot).map_err(|e| anyhow!("storage fence: {e}"))?;
                if own.poison {
                    crate::storage_fence::clear(&device, slot, &self.me.name)
                        .map_err(|e| anyhow!("storage fence: cannot clear this node's slot: {e}"))?;
                    self.record(format!(
                        "this node's previous run was fenced through the storage device by {} (poison message {}); its slot is cleared",
                        own.sender, own.sequence
                    ));
                }
                Some(crate::guard::StorageWatch { device, slot, timeout: sf.timeout })
            }
        };
        let binary = std::env::current_exe().context("cannot find this program's path to start the guard")?;
        self.watchdog =
            crate::guard::Watchdog::start(&self.cfg.guard, &binary, &scope, &vips, &mounts, storage.as_ref())?;
        let text = format!("guard: {}", self.watchdog.describe());
        self.record(text);
        Ok(())
    }
}

/// Takes the state directory's exclusive lock: one agent per state directory, so a second
/// agent for the same node, or two nodes given one directory on one machine, never run
/// (they would share priorities and journals and kill each other's services).
fn lock_state_dir(dir: &std::path::Path, node: &str) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            let holder = std::fs::read_to_string(dir.join("agent.pid"))
                .ok()
                .and_then(|it| it.split_whitespace().next().map(str::to_string))
                .map_or_else(String::new, |pid| format!(" (pid {pid})"));
            anyhow!(
                "another takeover agent{holder} already runs with the state directory {} (node `{node}`): stop it first; if this is a different node on the same machine, give it a state_dir of its own",
                dir.display()
            )
        } else {
            anyhow!("cannot lock {}: {errno}", path.display())
        }
    })
}

/// What a fence action came to.
enum FenceDone {
    Report(crate::fence::FenceReport),
    NotConfigured,
    /// Not attempted: every link of this node is down, so this node is the isolated one.
    OwnLinksDown(String),
}

/// Where an append's outcome goes.
type AppendReply = oneshot::Sender<Result<AppendDoc, ApiError>>;

struct GroupRt {
    index: GroupIndex,
    name: String,
    peer: NodeId,
    state_path: PathBuf,
    journal: Journal,
    quarantine_dir: PathBuf,
    /// In start order.
    resources: Vec<ResRt>,
    /// The move under way, timed step by step.
    timeline: Option<Timeline>,
    last_move: Option<MoveDoc>,
}

struct PeerRt {
    name: String,
    advertise: Vec<SocketAddr>,
}

impl Agent {
    async fn start(opts: AgentOptions) -> anyhow::Result<Agent> {
        let cfg = config::load(&opts.config)?;
        let me = cfg.node(&opts.node).cloned().ok_or_else(|| {
            let known: Vec<&str> = cfg.nodes.iter().map(|it| it.name.as_str()).collect();
            anyhow!("node `{}` is not in {}; declared nodes: {}", opts.node, opts.config.display(), known.join(", "))
        })?;
        let my_id = cfg.node_id(&me.name).expect("declared");
        // The key is checked before anything is written: a node that cannot authenticate
        // its traffic does not start.
        let auth = Arc::new(match &cfg.auth {
            config::AuthConfig::Key { key_file } => Auth::with_key(&cfg.name, &auth::keyfile::load(key_file)?),
            config::AuthConfig::None => Auth::unauthenticated(&cfg.name),
        });
        std::fs::create_dir_all(&me.state_dir)
            .with_context(|| format!("cannot create the state directory {}", me.state_dir.display()))?;
        let lock = lock_state_dir(&me.state_dir, &me.name)?;
        service::write_own_pidfile(&me.state_dir.join("agent.pid"))
            .with_context(|| format!("cannot write {}", me.state_dir.join("agent.pid").display()))?;

        let my_groups: Vec<config::GroupConfig> = cfg.groups_of(&me.name).cloned().collect();
        let api_text = me.api.to_string();
        let incarnation = store::next_incarnation(&me.state_dir.join("node.state"))?;
        let events = crate::events::EventLog::open(
            &me.state_dir,
            &me.name,
            incarnation.0,
            crate::events::EventLog::capacity_from_env(),
        )
        .with_context(|| format!("cannot open the event history in {}", me.state_dir.display()))?;
        let events: crate::events::SharedLog = Arc::new(std::sync::Mutex::new(events));

        let quarantine_dir = me.state_dir.join("quarantine");
        std::fs::create_dir_all(&quarantine_dir)?;
        let mut setups = Vec::new();
        let mut groups = Vec::new();
        let mut opening_events = Vec::new();
        let mut durables = Vec::new();
        for group in &my_groups {
            let index = GroupIndex(cfg.groups.iter().position(|it| it.name == group.name).expect("declared") as u16);
            let state_path = me.state_dir.join(format!("{}.state", group.name));
            let durable = match store::load_group_state(&state_path)? {
                Some(durable) => durable,
                None => {
                    // First start: the distinct initial priorities of F0.3, written once.
                    let initial = takeover_core::group::GroupDurable::initial(group.preferred() == me.name);
                    store::save_group_state(&state_path, &initial)?;
                    initial
                }
            };
            let (journal, opened) =
                Journal::open(&me.state_dir.join(format!("{}.journal", group.name)), &quarantine_dir)?;
            if opened.torn_records_cut > 0 || opened.torn_bytes_cut > 0 {
                opening_events.push(format!(
                    "group {}: cut a torn journal tail ({} bytes, {} incomplete record(s)) left by a crash; kept in {}",
                    group.name,
                    opened.torn_bytes_cut,
                    opened.torn_records_cut,
                    opened.quarantine_file.as_ref().map_or("-".into(), |it| it.display().to_string())
                ));
            }
            let env = SpecEnv {
                cluster: &cfg.name,
                node: &me.name,
                group: &group.name,
                api: api_text.clone(),
                state_dir: &me.state_dir,
            };
            let resources: Vec<ResRt> =
                group.resources.iter().map(|it| ResRt::new(res::spec_for(it, &env), it.max_restarts)).collect();
            setups.push(GroupSetup {
                index,
                config: cfg.group_core_config(group, &me.name),
                durable,
                log: journal.meta().clone(),
                join_only: opts.join_only,
                resources: group.resource_policies(),
            });
            durables.push((index, durable.epoch));
            groups.push(GroupRt {
                index,
                name: group.name.clone(),
                peer: cfg.node_id(group.peer_of(&me.name).expect("member")).expect("declared"),
                state_path,
                journal,
                quarantine_dir: quarantine_dir.clone(),
                resources,
                timeline: None,
                last_move: None,
            });
        }

        let mut peers = HashMap::new();
        for group in &my_groups {
            let name = group.peer_of(&me.name).expect("member");
            let node = cfg.node(name).expect("declared");
            peers.insert(
                cfg.node_id(name).expect("declared"),
                PeerRt { name: name.to_string(), advertise: node.advertise.clone() },
            );
        }
        let mut peer_ids: Vec<NodeId> = peers.keys().copied().collect();
        peer_ids.sort();

        let base = tokio::time::Instant::now();
        let core_cfg = CoreNodeConfig {
            me: my_id,
            incarnation,
            peers: peer_ids.clone(),
            links: me.links.len(),
            heartbeat_interval: cfg.heartbeat_interval,
            dead_after: cfg.dead_after,
            reconnect_backoff: cfg.heartbeat_interval,
            pause_threshold: Some(cfg.dead_after / 2),
        };
        let node = Node::new(core_cfg, setups, Instant(0));
        // 64 random bits of this run: with the durable incarnation, the heartbeat key of
        // this run is one no earlier run used (see `auth`).
        let run = auth::random_run();
        let heartbeat_sealer = HeartbeatSealer::new(auth.clone(), my_id, incarnation, run);
        let heartbeat_opener = Arc::new(std::sync::Mutex::new(HeartbeatOpener::new(
            auth.clone(),
            my_id,
            run,
            peer_ids.clone(),
            me.links.len(),
        )));
        let identity = Identity { auth, me: my_id, incarnation, peers: peer_ids, handshake_timeout: cfg.dead_after };

        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let (api_tx, api_calls) = mpsc::unbounded_channel();
        let (fence_tx, fence_rx) = mpsc::unbounded_channel();
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (plans_tx, plans_rx) = mpsc::unbounded_channel();
        let dropped = Arc::new(Dropped::default());
        let next_conn = Arc::new(AtomicU64::new(1));
        let mut udp = Vec::new();
        for (link, addr) in me.links.iter().enumerate() {
            let socket =
                Arc::new(UdpSocket::bind(addr).await.with_context(|| format!("cannot bind link {link} (UDP {addr})"))?);
            tokio::spawn(net::receive_heartbeats(
                socket.clone(),
                link,
                heartbeat_opener.clone(),
                inputs_tx.clone(),
                dropped.clone(),
            ));
            udp.push(socket);
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("cannot bind link {link} (TCP {addr})"))?;
            tokio::spawn(net::accept_channels(
                listener,
                link,
                identity.clone(),
                next_conn.clone(),
                inputs_tx.clone(),
                dropped.clone(),
            ));
        }
        let api_state = api::ApiState { calls: api_tx, events: events.clone() };
        match &me.api {
            ApiAddr::Unix(path) => {
                let listener =
                    api::bind_unix(path).with_context(|| format!("cannot serve the API on {}", path.display()))?;
                let router = api::router(api_state.clone());
                tokio::spawn(async move { axum::serve(listener, router).await });
            }
            ApiAddr::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr).await.with_context(|| format!("cannot serve the API on {addr}"))?;
                let router = api::router(api_state.clone());
                tokio::spawn(async move { axum::serve(listener, router).await });
            }
        }
        serve_api_tcp(&me, api_state).await?;

        let mut agent = Agent {
            _lock: lock,
            watchdog: crate::guard::Watchdog::Off,
            witness: lease::Witnessing::new(),
            cfg,
            me,
            incarnation,
            identity,
            node,
            base,
            groups,
            peers,
            udp,
            conns: HashMap::new(),
            dials: HashMap::new(),
            inputs_tx,
            inputs,
            api_calls,
            fence_tx,
            fence_rx,
            pending: HashMap::new(),
            next_req: 1,
            events,
            metrics: crate::metrics::Metrics::default(),
            append_started: HashMap::new(),
            dropped,
            dropped_messages: 0,
            ops_tx,
            ops_rx,
            plans_tx,
            plans_rx,
            peer_dead_at: HashMap::new(),
            fence_started_at: HashMap::new(),
            fence_took: HashMap::new(),
            heartbeat_sealer,
            heartbeat_opener,
            captured: Vec::new(),
        };
        agent.record(format!(
            "agent started: node {} incarnation {} ({} group(s), arbiter {})",
            agent.me.name,
            incarnation.0,
            agent.groups.len(),
            arbiter_name(agent.cfg.arbiter)
        ));
        if agent.cfg.arbiter == Arbiter::UnsafeAssumeCrashStop {
            agent.record(
                "WARNING: arbiter unsafe-assume-crash-stop is on: a silent peer is taken for crashed without fencing; \
                 a partition or a paused node can lead to two actives"
                    .into(),
            );
        }
        if !agent.identity.auth.is_authenticated() {
            agent.record(
                "WARNING: auth = \"none\": cluster traffic is not authenticated; anyone who can send to the links can forge heartbeats and peer messages, and with them make a node take over; use it only for test clusters on a trusted network (see `takeover keygen` and key_file)"
                    .into(),
            );
        }
        for text in opening_events {
            agent.record(text);
        }
        if opts.join_only {
            agent.record("started with --join-only: groups wait to rejoin their active peer as SL".into());
        }
        // Whatever a previous run left up is stopped before the core may start anything.
        agent.stop_leftovers(&durables).await?;
        // From here on, a stalled agent's services are stopped by the guard.
        agent.start_watchdog()?;
        agent.start_witness()?;
        agent.check_plans();
        Ok(agent)
    }

    fn now(&self) -> Instant {
        Instant(self.base.elapsed().as_nanos() as u64)
    }

    fn tokio_instant(&self, at: Instant) -> tokio::time::Instant {
        self.base + Duration::from_nanos(at.0)
    }

    fn record(&mut self, text: String) {
        self.record_as(crate::events::kind::AGENT, text);
    }

    /// Records an event of `kind` (see [`crate::events::kind`]) in the history and the log.
    fn record_as(&mut self, kind: &str, text: String) {
        self.events.lock().unwrap_or_else(|it| it.into_inner()).record(kind, text);
    }

    /// The Prometheus page: the counters, and gauges from the status.
    fn metrics_text(&self) -> String {
        let status = self.status_doc();
        let mut lag_bytes = std::collections::BTreeMap::new();
        for g in &status.groups {
            if g.role == "M"
                && let Some(rt) = self.groups.iter().find(|it| it.name == g.name)
            {
                lag_bytes.insert(g.name.clone(), rt.journal.bytes_after(g.journal.sl_durable.unwrap_or(0)));
            }
        }
        let mut rtts: Vec<(String, usize, Duration)> =
            self.conns.values().filter_map(|it| it.rtt().map(|rtt| (self.peer_name(it.peer), it.link, rtt))).collect();
        rtts.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        rtts.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let newest = self.events.lock().unwrap_or_else(|it| it.into_inner()).newest_seq();
        self.metrics.render(&status, &lag_bytes, &rtts, newest)
    }

    /// One line for `systemctl status`: this node and each group's role.
    fn systemd_status(&self) -> String {
        let doc = self.status_doc();
        let groups: Vec<String> = doc.groups.iter().map(|g| format!("{} {}", g.name, g.role)).collect();
        format!("node {} incarnation {}: {}", doc.node, doc.incarnation, groups.join(", "))
    }

    async fn run(&mut self, systemd: &mut crate::sdnotify::Notifier) -> anyhow::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut plan_check = tokio::time::interval(runtime::PLAN_CHECK_INTERVAL);
        plan_check.reset();
        let mut renew = tokio::time::interval(self.watchdog.every().unwrap_or(Duration::from_secs(3600)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut leases = tokio::time::interval(self.witness.tick_every());
        leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut systemd_watchdog = tokio::time::interval(systemd.watchdog_every().unwrap_or(Duration::from_secs(3600)));
        systemd_watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.execute().await?;
            let deadline = self.node.poll_timeout().map(|at| self.tokio_instant(at));
            let sleep = tokio::time::sleep_until(
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                Some(input) = self.inputs.recv() => self.on_input(input),
                Some(call) = self.api_calls.recv() => self.on_api(call).await?,
                Some((peer, outcome)) = self.fence_rx.recv() => self.on_fence_done(peer, outcome),
                _ = sleep => { let now = self.now(); self.node.handle(now, NodeEvent::Timeout) }
                Some(done) = self.ops_rx.recv() => self.on_op_done(done),
                Some(done) = self.plans_rx.recv() => self.on_plan_checked(done),
                _ = plan_check.tick() => self.check_plans(),
                _ = renew.tick() => self.renew_guard()?,
                _ = leases.tick(), if self.witness.on() => self.lease_tick(),
                Some(answer) = self.witness.answers.recv() => self.on_witness_answer(answer)?,
                _ = systemd_watchdog.tick(), if systemd.watchdog_every().is_some() => {
                    systemd.watchdog();
                    systemd.status(&self.systemd_status());
                }
            }
        }
        systemd.stopping("stopping: SIGTERM/SIGINT received; stopping the resources that are up");
        self.record("stopping: SIGTERM/SIGINT received; stopping the resources that are up".into());
        self.stop_all().await;
        self.release_leases();
        self.watchdog.disarm();
        Ok(())
    }

    fn on_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Heartbeat { link, from, incarnation } => {
                self.metrics.heartbeat(&self.peer_name(from), link);
                self.node.handle(now, NodeEvent::Heartbeat { from, link, incarnation })
            }
            Input::ChannelUp { channel } => {
                // Only a connection the core still waits for, or a fresh inbound one.
                let dialed = self.dials.remove(&channel.conn).is_some();
                if channel.conn >= takeover_core::node::DIAL_IDS && !dialed {
                    channel.close();
                    return;
                }
                let (peer, incarnation, link, conn) = (channel.peer, channel.incarnation, channel.link, channel.conn);
                self.conns.insert(conn, channel);
                self.node.handle(now, NodeEvent::ChannelUp { peer, incarnation, link, conn: ConnId(conn) });
            }
            Input::ChannelDown { peer, conn } => {
                let known =
                    self.conns.remove(&conn).map(|it| it.close()).is_some() || self.dials.remove(&conn).is_some();
                if known {
                    self.node.handle(now, NodeEvent::ChannelDown { peer, conn: ConnId(conn) });
                }
            }
            Input::Frame { peer, conn, group, epoch, msg } => {
                if self.conns.contains_key(&conn) {
                    self.node.handle(now, NodeEvent::Message { peer, conn: ConnId(conn), group, epoch, msg });
                }
            }
            Input::Warning(text) => self.record(text),
        }
    }

    fn on_fence_done(&mut self, peer: NodeId, outcome: FenceDone) {
        let confirmed = matches!(&outcome, FenceDone::Report(report) if report.is_confirmed());
        let metric = match &outcome {
            FenceDone::Report(_) if confirmed => "confirmed",
            FenceDone::Report(_) => "failed",
            FenceDone::NotConfigured => "not-configured",
            FenceDone::OwnLinksDown(_) => "skipped-own-links-down",
        };
        self.metrics.fence_done(&self.peer_name(peer), metric);
        self.record_as(crate::events::kind::FENCE, match &outcome {
            FenceDone::Report(report) if confirmed => format!("fence confirmed: {report}"),
            FenceDone::Report(report) => {
                format!("ALARM: fence FAILED on every level: {report}; nothing moves until a fence succeeds (retrying)")
            }
            FenceDone::NotConfigured => {
                format!("ALARM: cannot fence {}: no [fence] in the configuration; nothing moves", self.peer_name(peer))
            }
            FenceDone::OwnLinksDown(what) => format!(
                "ALARM: not fencing {}: every link of this node is down ({what}); this node is the isolated one and its peer is likely alive; retrying once a link is back",
                self.peer_name(peer)
            ),
        });
        let now = self.now();
        self.node.handle(now, NodeEvent::FenceResult { peer, confirmed });
    }

    async fn on_api(&mut self, call: ApiCall) -> anyhow::Result<()> {
        match call {
            ApiCall::Status { reply } => {
                let _ = reply.send(self.status_doc());
            }
            ApiCall::Metrics { reply } => {
                let _ = reply.send(self.metrics_text());
            }
            ApiCall::ForceStart { group, reply } => {
                if self.group_slot(&group).is_ok() {
                    self.record_as(
                        crate::events::kind::OPERATOR,
                        format!("group {group}: operator: force start asked for through the API"),
                    );
                }
                let answer = self.force_start(&group).await;
                let _ = reply.send(answer);
            }
            ApiCall::Append { group, payload, reply } => {
                // Appends waiting in the queue join this one in a single journal write.
                let mut batch = vec![(payload, reply)];
                let mut others = Vec::new();
                while batch.len() < APPEND_BATCH {
                    match self.api_calls.try_recv() {
                        Ok(ApiCall::Append { group: g, payload, reply }) if g == group => batch.push((payload, reply)),
                        Ok(other) => {
                            others.push(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.append(&group, batch);
                for other in others {
                    Box::pin(self.on_api(other)).await?;
                }
            }
            ApiCall::Read { group, from, limit, reply } => {
                let _ = reply.send(self.read(&group, from, limit));
            }
            ApiCall::Switchover { group, to, reply } => {
                if self.group_slot(&group).is_ok() {
                    self.record_as(
                        crate::events::kind::OPERATOR,
                        format!(
                            "group {group}: operator: switchover{} asked for through the API",
                            to.as_ref().map_or(String::new(), |it| format!(" to {it}"))
                        ),
                    );
                }
                let answer = self.switchover(&group, to.as_deref()).await;
                let _ = reply.send(answer);
            }
            ApiCall::Cleanup { group, reply } => {
                if self.group_slot(&group).is_ok() {
                    self.record_as(
                        crate::events::kind::OPERATOR,
                        format!("group {group}: operator: cleanup (failure-count reset) asked for through the API"),
                    );
                }
                let answer = self.cleanup(&group).await;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    fn group_slot(&self, name: &str) -> Result<usize, ApiError> {
        self.groups.iter().position(|it| it.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.groups.iter().map(|it| it.name.as_str()).collect();
            ApiError::new(404, format!("no group `{name}` on node {}; its groups: {}", self.me.name, known.join(", ")))
        })
    }

    fn append(&mut self, group: &str, batch: Vec<(Vec<u8>, AppendReply)>) {
        let slot = match self.group_slot(group) {
            Ok(slot) => slot,
            Err(error) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut entries = Vec::with_capacity(batch.len());
        for (payload, reply) in batch {
            let req = self.next_req;
            self.next_req += 1;
            self.pending.insert(req, reply);
            self.append_started.insert(req, (slot, tokio::time::Instant::now()));
            entries.push((ReqId(req), payload));
        }
        let now = self.now();
        let index = self.groups[slot].index;
        self.node.handle(now, NodeEvent::Append { group: index, entries });
    }

    fn read(&self, group: &str, from: u64, limit: usize) -> Result<RecordsDoc, ApiError> {
        let slot = self.group_slot(group)?;
        let journal = &self.groups[slot].journal;
        let records = journal
            .read_limited(from, limit, 4 << 20)
            .map_err(|e| ApiError::new(500, format!("cannot read the journal: {e}")))?;
        Ok(RecordsDoc {
            last_index: journal.last_index(),
            records: records
                .iter()
                .map(|r| RecordDoc {
                    index: r.index,
                    epoch: r.epoch.to_string(),
                    payload: api::encode_payload(&r.payload),
                })
                .collect(),
        })
    }

    async fn force_start(&mut self, group: &str) -> Result<ForceStartDoc, ApiError> {
        let slot = self.group_slot(group)?;
        let index = self.groups[slot].index;
        let peer = self.peer_name(self.groups[slot].peer);
        self.captured.clear();
        let now = self.now();
        self.node.handle(now, NodeEvent::ForceStart { group: index });
        self.execute().await.map_err(|e| ApiError::new(500, format!("{e:#}")))?;
        let reports = std::mem::take(&mut self.captured);
        let warning = force_start_warning(group, &peer);
        for report in reports.iter().filter(|(g, _)| *g == index).map(|(_, r)| r) {
            match report {
                Report::ForceStartRefused(reason) => {
                    return Ok(ForceStartDoc {
                        outcome: "refused".into(),
                        message: refuse_text(*reason, group, &peer),
                        warning: None,
                    });
                }
                Report::ForceStarted { .. } => {
                    return Ok(ForceStartDoc {
                        outcome: "started".into(),
                        message: format!("group {group} is SM on {} by force start", self.me.name),
                        warning: Some(warning),
                    });
                }
                Report::FenceRequested { target: FenceTarget::Node { .. } } => {
                    return Ok(ForceStartDoc {
                        outcome: "fencing".into(),
                        message: format!(
                            "fencing {peer} first (it may be running unseen); group {group} starts here once the fence confirms — watch `takeover status`"
                        ),
                        warning: Some(warning),
                    });
                }
                _ => {}
            }
        }
        Err(ApiError::new(500, "the force start produced no decision; see `takeover status` events"))
    }

    async fn switchover(&mut self, group: &str, to: Option<&str>) -> Result<SwitchoverDoc, ApiError> {
        let slot = self.group_slot(group)?;
        let index = self.groups[slot].index;
        let peer = self.peer_name(self.groups[slot].peer);
        if let Some(to) = to
            && to != peer
        {
            let message = if to == self.me.name {
                format!(
                    "group {group} runs on the pair {} and {peer}; switchover moves it from its active node to {peer}, run it on the active node",
                    self.me.name
                )
            } else {
                format!("group {group} runs on {} and {peer} only; it can move to {peer}, not to {to}", self.me.name)
            };
            return Err(ApiError::new(409, message));
        }
        self.captured.clear();
        let now = self.now();
        self.node.handle(now, NodeEvent::Switchover { group: index });
        self.execute().await.map_err(|e| ApiError::new(500, format!("{e:#}")))?;
        let reports = std::mem::take(&mut self.captured);
        for report in reports.iter().filter(|(g, _)| *g == index).map(|(_, r)| r) {
            match report {
                Report::SwitchoverRefused(reason) => {
                    return Ok(SwitchoverDoc {
                        outcome: "refused".into(),
                        message: switchover_refused_text(*reason, group, &peer, &self.me.name),
                    });
                }
                Report::HandoverStarted { .. } => {
                    return Ok(SwitchoverDoc {
                        outcome: "moving".into(),
                        message: format!(
                            "group {group} is stopping on {} (resources in reverse order) and moves to {peer} once {peer} holds every record; watch `takeover status`",
                            self.me.name
                        ),
                    });
                }
                _ => {}
            }
        }
        Err(ApiError::new(500, "the switchover produced no decision; see `takeover status` events"))
    }

    async fn cleanup(&mut self, group: &str) -> Result<SwitchoverDoc, ApiError> {
        let slot = self.group_slot(group)?;
        let index = self.groups[slot].index;
        let now = self.now();
        self.node.handle(now, NodeEvent::ClearFailures { group: index });
        self.execute().await.map_err(|e| ApiError::new(500, format!("{e:#}")))?;
        Ok(SwitchoverDoc {
            outcome: "cleared".into(),
            message: format!(
                "group {group}: failure counts on {} cleared; a group failed here starts again if this node is active",
                self.me.name
            ),
        })
    }

    /// Executes the core's commands in order until there are none left.
    async fn execute(&mut self) -> anyhow::Result<()> {
        while let Some(command) = self.node.poll_command() {
            match command {
                NodeCommand::SendHeartbeats => self.send_heartbeats(),
                NodeCommand::Connect { peer, link, conn } => self.dial(peer, link, conn),
                NodeCommand::Disconnect { conn, .. } => {
                    if let Some(channel) = self.conns.remove(&conn.0) {
                        channel.close();
                    }
                    if let Some(task) = self.dials.remove(&conn.0) {
                        task.abort();
                    }
                }
                NodeCommand::Group { group, peer, command } => self.group_command(group, peer, command).await?,
                NodeCommand::Fence { peer } => self.fence(peer),
                NodeCommand::Resource { group, resource, op } => self.start_or_defer(group, resource, op),
                NodeCommand::Halt { group, resource } => {
                    let (name, label) = match self.groups.iter().find(|it| it.index == group) {
                        Some(rt) => (rt.name.clone(), rt.resources[resource].spec.label()),
                        None => (format!("#{}", group.0), format!("#{resource}")),
                    };
                    let text = format!(
                        "ALARM: group {name}: {label} could not be stopped, so this node may still be serving it; the agent stops here and its peer fences this node"
                    );
                    self.record(text.clone());
                    anyhow::bail!(text);
                }
                NodeCommand::Report(report) => {
                    match report {
                        NodeReport::UnknownGroup { .. } => self.dropped_messages += 1,
                        NodeReport::PeerDead { peer, .. } => self.note_peer_dead(peer),
                        NodeReport::FenceStarted { peer } => {
                            self.fence_started_at.insert(peer, tokio::time::Instant::now());
                        }
                        NodeReport::FenceFinished { peer, confirmed: true } => {
                            if let Some(at) = self.fence_started_at.remove(&peer) {
                                let now = tokio::time::Instant::now();
                                self.fence_took.insert(peer, (at, now - at, now));
                            }
                        }
                        _ => {}
                    }
                    let text = self.node_report_text(&report);
                    self.record_as(crate::events::node_report_kind(&report), text);
                }
            }
        }
        Ok(())
    }

    fn send_heartbeats(&mut self) {
        for (&peer, rt) in &self.peers {
            // The peer's run as last heard: its proof that this heartbeat is fresh.
            let echo = self.heartbeat_opener.lock().unwrap_or_else(|it| it.into_inner()).echo_for(peer);
            for (link, addr) in rt.advertise.iter().enumerate() {
                let bytes = self.heartbeat_sealer.seal(link as u8, peer, echo);
                // A full socket buffer or an unreachable network is what heartbeats detect;
                // the error itself changes nothing.
                let _ = self.udp[link].try_send_to(&bytes, *addr);
            }
        }
    }

    fn dial(&mut self, peer: NodeId, link: usize, conn: ConnId) {
        let Some(addr) = self.peers.get(&peer).and_then(|it| it.advertise.get(link)).copied() else { return };
        let conn = conn.0;
        let task = tokio::spawn(net::dial(
            addr,
            peer,
            link,
            conn,
            self.identity.clone(),
            self.inputs_tx.clone(),
            self.dropped.clone(),
        ));
        self.dials.insert(conn, task.abort_handle());
    }

    fn fence(&mut self, peer: NodeId) {
        let name = self.peer_name(peer);
        let index = self.cfg.node_id(&name).map_or(0, |it| it.0 as usize);
        let plan = self.cfg.fence_plan_for(&self.me.name);
        self.record_as(
            crate::events::kind::FENCE,
            match &plan {
                Some(plan) => format!("fencing {name}: {}", plan.describe()),
                None => format!("ALARM: {name} must be fenced but no [fence] is configured"),
            },
        );
        let done = self.fence_tx.clone();
        // A node that lost every link of its own must not power off a peer that is most
        // likely fine (it would then serve nobody): the fence counts as failed, and the
        // core retries it after fence_retry, while the peer fences this node.
        if let Some(what) = crate::net::own_links_all_down(&self.me.links) {
            let _ = done.send((peer, FenceDone::OwnLinksDown(what)));
            return;
        }
        tokio::spawn(async move {
            let outcome = match plan {
                Some(plan) => FenceDone::Report(crate::fence::fence_node(&plan, &name, index).await),
                None => FenceDone::NotConfigured,
            };
            let _ = done.send((peer, outcome));
        });
    }

    async fn group_command(&mut self, index: GroupIndex, peer: NodeId, command: Command) -> anyhow::Result<()> {
        let Some(g) = self.groups.iter().position(|it| it.index == index) else { return Ok(()) };
        match command {
            Command::Persist(durable) => {
                let rt = &self.groups[g];
                store::save_group_state(&rt.state_path, &durable).with_context(|| {
                    format!(
                        "cannot write {}; stopping so that nothing acts without its durable state",
                        rt.state_path.display()
                    )
                })?;
            }
            Command::WriteRecords(records) => {
                let rt = &mut self.groups[g];
                rt.journal.append(&records).with_context(|| {
                    format!(
                        "cannot write the journal of group {}; stopping so that nothing is acknowledged unwritten",
                        rt.name
                    )
                })?;
            }
            Command::TruncateLog { keep_upto, reason } => {
                let rt = &mut self.groups[g];
                let info = rt
                    .journal
                    .truncate_quarantine(keep_upto, reason)
                    .with_context(|| format!("cannot cut the journal of group {}", rt.name))?;
                if let Some(info) = info {
                    let text = format!(
                        "group {}: records {}..={} ({}) kept aside in {}",
                        rt.name,
                        info.first_index,
                        info.last_index,
                        discard_text(reason),
                        info.path.display()
                    );
                    self.record_as(crate::events::kind::JOURNAL, text);
                }
            }
            Command::Send { to, epoch, msg } => self.send_frame(peer, to, GroupFrame { group: index, epoch, msg }),
            Command::SendRecords { to, epoch, from, upto } => {
                let records: Vec<Record> = self.groups[g]
                    .journal
                    .read(from, upto)
                    .with_context(|| format!("cannot read the journal of group {}", self.groups[g].name))?;
                self.send_frame(peer, to, GroupFrame { group: index, epoch, msg: group::Message::Records(records) });
            }
            Command::AckAppend { req, index } => {
                if let Some((slot, started)) = self.append_started.remove(&req.0) {
                    let group = self.groups[slot].name.clone();
                    self.metrics.append_acknowledged(&group, started.elapsed());
                }
                if let Some(reply) = self.pending.remove(&req.0) {
                    let _ = reply.send(Ok(AppendDoc { index }));
                }
            }
            Command::RejectAppend { req, reason } => {
                self.append_started.remove(&req.0);
                if let Some(reply) = self.pending.remove(&req.0) {
                    let name = &self.groups[g].name;
                    let error = match reason {
                        RejectReason::NotActive { role } => ApiError::new(
                            409,
                            format!(
                                "group {name} is {role} on node {}: only its active node (M or SM) takes appends; see `takeover status`",
                                self.me.name
                            ),
                        ),
                        RejectReason::Moving => ApiError::new(
                            503,
                            format!(
                                "group {name} is moving away from node {} (switchover, failback or a resource failure); append at {} once it is active there",
                                self.me.name,
                                self.peer_name(peer)
                            ),
                        ),
                        RejectReason::Abandoned => ApiError::new(
                            503,
                            format!(
                                "group {name}: node {} stopped being active before the record was acknowledged; it may or may not be kept — check the journal before appending it again",
                                self.me.name
                            ),
                        ),
                    };
                    let _ = reply.send(Err(error));
                }
            }
            Command::StartService | Command::StopService => {
                unreachable!("the node layer hands the service to its runner")
            }
            Command::FencePeer { .. } => unreachable!("the node layer turns fence requests into NodeCommand::Fence"),
            Command::Report(report) => {
                if matches!(report, Report::MalformedMessage { .. }) {
                    self.dropped_messages += 1;
                }
                self.time_moves(g, &report);
                let text = self.group_report_text(g, &report);
                let kind = crate::events::report_kind(&report);
                self.captured.push((index, report));
                self.record_as(kind, text);
            }
        }
        Ok(())
    }

    fn send_frame(&mut self, peer: NodeId, to: Incarnation, frame: GroupFrame) {
        // The newest connection to that run of the peer (an older one is being closed).
        let Some((&conn, channel)) =
            self.conns.iter().filter(|(_, it)| it.peer == peer && it.incarnation == to).max_by_key(|(conn, _)| **conn)
        else {
            return;
        };
        // The connection's writer task seals it (in order, off the event loop).
        if channel.writer.try_send(wire::encode_group(&frame)).is_err() {
            // The peer does not keep up: drop the connection; replication restarts from the
            // durable positions when it reconnects.
            let name = self.peer_name(peer);
            if let Some(channel) = self.conns.remove(&conn) {
                channel.close();
            }
            self.record(format!("peer channel to {name} overloaded or closed; reconnecting"));
            let now = self.now();
            self.node.handle(now, NodeEvent::ChannelDown { peer, conn: ConnId(conn) });
        }
    }

    fn peer_name(&self, peer: NodeId) -> String {
        self.peers.get(&peer).map_or_else(|| format!("node#{}", peer.0), |it| it.name.clone())
    }

    fn node_report_text(&self, report: &NodeReport) -> String {
        match report {
            NodeReport::LinkUp { peer, link } => format!("link {link} to {} is up", self.peer_name(*peer)),
            NodeReport::LinkDown { peer, link, links_up } => {
                let name = self.peer_name(*peer);
                if *links_up > 0 {
                    format!(
                        "WARNING: link {link} to {name} is silent; {links_up} link(s) still up, nothing else changes"
                    )
                } else {
                    format!("link {link} to {name} is silent; no link left")
                }
            }
            NodeReport::PeerAlive { peer, incarnation } => {
                format!("peer {} is alive (incarnation {})", self.peer_name(*peer), incarnation.0)
            }
            NodeReport::PeerDead { peer, incarnation } => format!(
                "peer {} (incarnation {}) declared failed: every link silent for {}",
                self.peer_name(*peer),
                incarnation.0,
                config::format_duration(self.cfg.dead_after)
            ),
            NodeReport::PeerRestarted { peer, old, new } => format!(
                "peer {} restarted (incarnation {} → {}): its previous run has stopped",
                self.peer_name(*peer),
                old.0,
                new.0
            ),
            NodeReport::ChannelUp { peer, link } => {
                format!("peer channel to {} up on link {link}", self.peer_name(*peer))
            }
            NodeReport::ChannelDown { peer } => format!("peer channel to {} down", self.peer_name(*peer)),
            NodeReport::UnknownGroup { peer, group } => {
                format!("dropped a message from {} for unknown group #{}", self.peer_name(*peer), group.0)
            }
            NodeReport::PauseDetected { late } => format!(
                "WARNING: this agent ran {} ms late (paused or starved of CPU); peers get a fresh {} before being declared failed",
                late.as_millis(),
                config::format_duration(self.cfg.dead_after)
            ),
            NodeReport::FenceStarted { peer } => format!("fence of {} started", self.peer_name(*peer)),
            NodeReport::MonitorFailed { group, resource, restart } => {
                let (name, label) = self.resource_label(*group, *resource);
                if *restart {
                    format!(
                        "group {name}: {label} failed its monitor: restarting it in place (with what depends on it)"
                    )
                } else {
                    format!(
                        "ALARM: group {name}: {label} failed its monitor too often (more than max_restarts within restart_window): stopping the group here to move it"
                    )
                }
            }
            NodeReport::ServiceFailed { group, resource, start } => {
                let (name, label) = self.resource_label(*group, *resource);
                if *start {
                    format!("ALARM: group {name}: {label} would not start; every resource of the group is stopped here")
                } else {
                    format!("ALARM: group {name}: {label} kept failing; every resource of the group is stopped here")
                }
            }
            NodeReport::FenceFinished { peer, confirmed } => {
                format!(
                    "fence of {} finished: {}",
                    self.peer_name(*peer),
                    if *confirmed { "confirmed" } else { "FAILED" }
                )
            }
        }
    }

    fn resource_label(&self, group: GroupIndex, resource: usize) -> (String, String) {
        match self.groups.iter().find(|it| it.index == group) {
            Some(rt) => (
                rt.name.clone(),
                rt.resources.get(resource).map_or_else(|| format!("resource #{resource}"), |it| it.spec.label()),
            ),
            None => (format!("#{}", group.0), format!("resource #{resource}")),
        }
    }

    fn group_report_text(&self, g: usize, report: &Report) -> String {
        let rt = &self.groups[g];
        let (group, peer) = (rt.name.as_str(), self.peer_name(rt.peer));
        match report {
            Report::Transition { from, to, cause } => {
                format!("group {group}: {from} → {to} ({})", cause_text(*cause, &peer))
            }
            Report::Waiting(reason) => format!("group {group}: waiting: {}", wait_text(*reason, group, &peer)),
            Report::ForceStarted { .. } => format!("group {group}: FORCE START. {}", force_start_warning(group, &peer)),
            Report::ForceStartRefused(reason) => {
                format!("group {group}: force start refused: {}", refuse_text(*reason, group, &peer))
            }
            Report::ForceStartCancelled => format!(
                "group {group}: force start cancelled: {peer} came up while it was being fenced; the two nodes decide as usual"
            ),
            Report::Discarded { count, reason } => format!(
                "group {group}: rejoining {peer} cuts {count} record(s) from the local journal ({}); they are kept in {}",
                discard_text(*reason),
                rt.quarantine_dir.display()
            ),
            Report::SlaveLost { .. } => format!("group {group}: SL {peer} lost; continuing as SM (5-3/5-7)"),
            Report::FenceRequested { target } => match target {
                FenceTarget::Run(inc) => format!(
                    "group {group}: {peer} (incarnation {}) must be known stopped before anything moves: fencing",
                    inc.0
                ),
                FenceTarget::Node { .. } => format!("group {group}: force start fences {peer} first"),
            },
            Report::FenceFailed { .. } => {
                format!(
                    "ALARM: group {group}: cannot confirm that {peer} stopped; retrying the fence, nothing moves until then"
                )
            }
            Report::TwoActives { own, peer: theirs } => format!(
                "ALARM: group {group}: this node (epoch {own}) and {peer} (epoch {theirs}) were both active; the older epoch stops"
            ),
            Report::NewerGeneration { own, peer: theirs } => format!(
                "ALARM: group {group}: {peer} speaks for epoch {theirs}, newer than this node's {own}: {peer} took over while this node was cut off or paused; stopping the service before writing anything more"
            ),
            Report::FenceDelayed { .. } => format!(
                "group {group}: {peer} (the active) is lost; waiting {} before fencing it so that, if this is a partition, the active wins the fence race",
                config::format_duration(self.node.group(rt.index).map_or(Duration::ZERO, |it| it.config().fence_delay))
            ),
            Report::StoppedRunAlive { inc } => format!(
                "ALARM: group {group}: {peer} (incarnation {}) is alive although a fence confirmed it off: check the fence configuration; it is told about the newer epoch so that it stops",
                inc.0
            ),
            Report::FenceCancelled { .. } => {
                format!(
                    "group {group}: {peer} came back before its fence started; nothing was done, it is trusted again"
                )
            }
            Report::MalformedMessage { what } => format!("group {group}: dropped a message from {peer}: {what}"),
            Report::HandoverStarted { reason } => format!(
                "group {group}: {}: stopping the resources here in reverse order; new appends are refused; the group moves to {peer} once it holds every record",
                runtime::reason_name(*reason)
            ),
            Report::HandedOver { reason } => {
                format!("group {group}: handed over to {peer} ({}); it starts there now", runtime::reason_name(*reason))
            }
            Report::SwitchoverRefused(reason) => format!(
                "group {group}: switchover refused: {}",
                switchover_refused_text(*reason, group, &peer, &self.me.name)
            ),
            Report::GroupFailed { start, peer_failed } => format!(
                "ALARM: group {group}: FAILED on {}: a resource {} and the group cannot move ({}); it stays down here. Fix the cause, then run `takeover cleanup {group}`",
                self.me.name,
                if *start { "would not start" } else { "kept failing" },
                if *peer_failed {
                    format!("it already failed on {peer}")
                } else {
                    format!("{peer} is not a synchronised standby")
                }
            ),
            Report::FailuresCleared => format!("group {group}: failure counts cleared by the operator"),
        }
    }

    fn status_doc(&self) -> StatusDoc {
        let now = self.now();
        let status = self.node.status(now);
        let peers = status
            .peers
            .iter()
            .map(|p| {
                let rt = self.peers.get(&p.id);
                api::PeerDoc {
                    node: self.peer_name(p.id),
                    alive: p.alive,
                    incarnation: p.incarnation.map(|it| it.0),
                    links: p
                        .links
                        .iter()
                        .enumerate()
                        .map(|(index, link)| api::LinkDoc {
                            index,
                            address: rt
                                .and_then(|it| it.advertise.get(index))
                                .map_or(String::new(), |it| it.to_string()),
                            up: link.up,
                            last_heard_ms: link.last_heard.map(|it| it.as_millis() as u64),
                        })
                        .collect(),
                    channel_link: p.channel_link,
                    fencing: p.fencing,
                }
            })
            .collect();
        let groups = status
            .groups
            .iter()
            .filter_map(|(index, peer, gs, runner)| {
                let g = self.groups.iter().position(|it| it.index == *index)?;
                let rt = &self.groups[g];
                let peer_name = self.peer_name(*peer);
                let peer_state = match &gs.peer {
                    group::PeerStatus::Unknown => api::PeerStateDoc {
                        status: "unknown".into(),
                        incarnation: None,
                        role: None,
                        priority: None,
                        last_index: None,
                    },
                    group::PeerStatus::Up { inc, role, priority, last_index } => api::PeerStateDoc {
                        status: "up".into(),
                        incarnation: Some(inc.0),
                        role: role.map(|it| it.to_string()),
                        priority: priority.map(|it| it.number()),
                        last_index: *last_index,
                    },
                    group::PeerStatus::Down { inc, stopped } => api::PeerStateDoc {
                        status: if *stopped { "stopped" } else { "down" }.into(),
                        incarnation: Some(inc.0),
                        role: None,
                        priority: None,
                        last_index: None,
                    },
                };
                let quarantined = journal::list_quarantine(&rt.quarantine_dir, rt.journal.stem());
                let count = |reason: DiscardReason| {
                    quarantined.iter().filter(|it| it.reason == reason).map(|it| it.count).sum::<u64>()
                };
                Some(api::GroupDoc {
                    name: rt.name.clone(),
                    role: gs.role.to_string(),
                    priority: gs.durable.priority.number(),
                    epoch: gs.durable.epoch.to_string(),
                    join_only: gs.durable.join_only,
                    peer: peer_name.clone(),
                    peer_state,
                    journal: api::JournalDoc {
                        last_index: gs.last_index,
                        sl_durable: gs.sl_durable,
                        pending_appends: gs.pending_appends,
                        quarantined_unreplicated: count(DiscardReason::Unreplicated),
                        quarantined_force_start: count(DiscardReason::ForceStart),
                    },
                    fencing: gs.fencing.map(|_| peer_name.clone()),
                    waiting: gs.waiting.map(|it| wait_text(it, &rt.name, &peer_name)),
                    sl_confirmed: gs.sl_confirmed,
                    resources: self.resource_docs(g, runner),
                    failed: gs.failed,
                    peer_failed: gs.peer_failed,
                    moving: gs.moving.map(|it| runtime::reason_name(it).to_string()),
                    last_move: rt.last_move.clone(),
                    lease: self.lease_text(*index),
                })
            })
            .collect();
        StatusDoc {
            cluster: self.cfg.name.clone(),
            node: self.me.name.clone(),
            incarnation: self.incarnation.0,
            arbiter: arbiter_name(self.cfg.arbiter).into(),
            auth: self.identity.auth.mode().into(),
            peers,
            groups,
            events: self.events.lock().unwrap_or_else(|it| it.into_inner()).last(STATUS_EVENTS),
            dropped: api::DroppedDoc {
                heartbeats: self.dropped.heartbeats.load(Ordering::Relaxed),
                frames: self.dropped.frames.load(Ordering::Relaxed),
                messages: self.dropped_messages,
                bad_tag: self.dropped.by_reason(DropReason::BadTag),
                replay: self.dropped.by_reason(DropReason::Replay),
                unknown_sender: self.dropped.by_reason(DropReason::UnknownSender),
                malformed: self.dropped.by_reason(DropReason::Malformed),
                foreign: self.dropped.by_reason(DropReason::Foreign),
            },
        }
    }
}

fn arbiter_name(arbiter: Arbiter) -> &'static str {
    match arbiter {
        Arbiter::Fence => "fence",
        Arbiter::UnsafeAssumeCrashStop => "unsafe-assume-crash-stop",
    }
}

/// The [1 1] warning of F0.6, in plain words.
pub fn force_start_warning(group: &str, peer: &str) -> String {
    format!(
        "{peer} may still hold priority 1 for group {group} and would then start it by itself after its next restart \
         ([1 1]), continuing from older data. Keep {peer} fenced, or start it with `takeover agent --join-only` until \
         it has rejoined as SL. Records only {peer} holds are set aside (counted as discarded by force start)."
    )
}

fn refuse_text(reason: RefuseReason, group: &str, peer: &str) -> String {
    match reason {
        RefuseReason::NotStopped { role } => format!("this node is already {role} for group {group}"),
        RefuseReason::PeerActive => format!("{peer} is active for group {group}; nothing to force"),
        RefuseReason::DecisionPossible => {
            format!("{peer} is up and the priorities decide group {group} without an operator")
        }
        RefuseReason::PeerSettling => format!("{peer} is connecting or settling; try again in a moment"),
        RefuseReason::AlreadyForcing => "a force start is already fencing the peer".into(),
    }
}

fn switchover_refused_text(reason: SwitchoverRefused, group: &str, peer: &str, me: &str) -> String {
    match reason {
        SwitchoverRefused::NotActive { role } => format!(
            "group {group} is {role} on {me}, not active; run the switchover on the active node (see `takeover status`)"
        ),
        SwitchoverRefused::NoSynchronisedSl => format!(
            "{peer} is not a synchronised standby of group {group} (down, or still catching up); moving now would lose records — wait until {peer} is SL and confirmed"
        ),
        SwitchoverRefused::AlreadyMoving => format!("group {group} is already moving"),
        SwitchoverRefused::PeerFailed => format!(
            "group {group} failed on {peer} before it came here; run `takeover cleanup {group}` once the cause is fixed, then switch over"
        ),
    }
}

fn discard_text(reason: DiscardReason) -> &'static str {
    match reason {
        DiscardReason::Unreplicated => "written by a failed active and never replicated, so never acknowledged",
        DiscardReason::ForceStart => "abandoned by a force start; they may have been acknowledged",
    }
}

/// The optional TCP listener of the API (`api_listen`), which needs the token of
/// `api_token_file` on every request.
async fn serve_api_tcp(me: &NodeConfig, state: api::ApiState) -> anyhow::Result<()> {
    let (Some(addr), Some(token_file)) = (me.api_listen, &me.api_token_file) else { return Ok(()) };
    let token = api::load_token(token_file)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve the API on {addr} (api_listen): is the address in use?"))?;
    let router = api::router_with_token(state, token);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(())
}
