//! A cluster of real `takeover agent` processes on this machine's loopback, for the demo
//! and the end-to-end tests (no root needed).
//!
//! Each node's agent runs as the leader of its own session, so `fence-local` can power
//! the node off (every process of the session SIGKILLed at once). Link 0 of every node
//! binds on 127.0.0.2 but is advertised on 127.0.0.3, where a relay run by this process
//! forwards UDP and TCP — so a test can cut link 0 (which carries the peer channel
//! first) without root; link 1 is direct on 127.0.0.1.
//!
//! The cluster's traffic is authenticated with a key generated for it (`cluster.key` in
//! its directory, as `takeover keygen` writes it), unless the spec asks for
//! `auth = "none"`. The relay doubles as an on-path attacker for tests ([`Tap`]): it can
//! record what it forwards and corrupt, duplicate or replay the peer channel's frames.

use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::api::{Client, StatusDoc};
use crate::config::format_duration;
use crate::fence::fence_local;
use crate::journal;
use crate::wire::{self, FrameKind};
use takeover_core::log::DiscardReason;

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub cluster: String,
    pub nodes: Vec<String>,
    pub group: String,
    /// The service argv; `{node}` and `{group}` are replaced by the agent.
    pub service: Option<Vec<String>>,
    pub heartbeat_interval: Duration,
    pub dead_after: Duration,
    pub startup_wait: Duration,
    /// `fence` or `unsafe-assume-crash-stop`.
    pub arbiter: String,
    /// How the cluster's traffic is authenticated.
    pub auth: LocalAuth,
    /// Link 1 through a relay as well (one that is never cut), so the [`Tap`] sees all
    /// traffic whichever link carries the peer channel.
    pub relay_link1: bool,
    /// A `[witness]` table (the test runs `takeover witness` itself).
    pub witness: Option<LocalWitness>,
}

/// The `[witness]` of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalWitness {
    pub address: SocketAddr,
    pub lease: Duration,
    pub margin: Duration,
}

/// The authentication of a local cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAuth {
    /// A key generated for the cluster, in `cluster.key` beside the configuration.
    GeneratedKey,
    /// `auth = "none"`.
    None,
}

impl Spec {
    /// Two nodes, `alpha` (preferred) and `beta`, default timings, fencing by power-off,
    /// running the demo's sample service (`takeover demo-app`) of `binary` on a free
    /// loopback port per node; the service records what it served in `record`.
    /// Returns the spec and where each node's service listens.
    pub fn demo_service(
        cluster: &str,
        group: &str,
        binary: &Path,
        record: &Path,
    ) -> anyhow::Result<(Spec, BTreeMap<String, SocketAddr>)> {
        let mut apps = BTreeMap::new();
        for node in ["alpha", "beta"] {
            apps.insert(node.to_string(), SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?)));
        }
        let listen = apps.iter().map(|(node, addr)| format!("{node}={addr}")).collect::<Vec<_>>().join(",");
        let spec = Spec {
            cluster: cluster.into(),
            nodes: vec!["alpha".into(), "beta".into()],
            group: group.into(),
            service: Some(vec![
                binary.display().to_string(),
                "demo-app".into(),
                "--listen".into(),
                listen,
                "--record".into(),
                record.display().to_string(),
            ]),
            heartbeat_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(500),
            startup_wait: Duration::from_secs(2),
            arbiter: "fence".into(),
            auth: LocalAuth::GeneratedKey,
            relay_link1: false,
            witness: None,
        };
        Ok((spec, apps))
    }
}

/// One node of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalNode {
    pub name: String,
    pub state_dir: PathBuf,
    pub api: PathBuf,
    /// Link addresses the node binds.
    pub links: Vec<SocketAddr>,
    /// Where peers send for each link.
    pub advertise: Vec<SocketAddr>,
}

/// Real agents on loopback. Dropping it powers every node off.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub nodes: Vec<LocalNode>,
    /// Extra environment of the agents started from now on (e.g. TAKEOVER_EVENT_HISTORY).
    pub agent_env: Vec<(String, String)>,
    agents: std::sync::Mutex<HashMap<String, Child>>,
    relay_cut: Arc<AtomicBool>,
    link1_cut: Arc<AtomicBool>,
    relay_stop: watch::Sender<bool>,
    tap: Arc<Tap>,
}

/// A port free on both TCP and UDP at `ip` right now.
fn free_port(ip: &str) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let tcp = StdTcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if StdUdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip}")
}

impl LocalCluster {
    /// Writes the configuration and starts the relay; no agent runs yet.
    pub async fn create(dir: &Path, binary: &Path, spec: &Spec) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let mut nodes = Vec::new();
        for name in &spec.nodes {
            let state_dir = dir.join(name);
            let port0 = free_port("127.0.0.1")?;
            let port1 = free_port("127.0.0.2")?;
            let relay_port = free_port("127.0.0.3")?;
            nodes.push(LocalNode {
                name: name.clone(),
                api: state_dir.join("api.sock"),
                state_dir,
                links: vec![SocketAddr::from(([127, 0, 0, 2], port1)), SocketAddr::from(([127, 0, 0, 1], port0))],
                advertise: vec![
                    SocketAddr::from(([127, 0, 0, 3], relay_port)),
                    SocketAddr::from(([127, 0, 0, 1], port0)),
                ],
            });
        }
        let relay_cut = Arc::new(AtomicBool::new(false));
        let (relay_stop, stopped) = watch::channel(false);
        let tap = Arc::new(Tap::default());
        let link1_cut = Arc::new(AtomicBool::new(false));
        for node in &mut nodes {
            spawn_relay(node.advertise[0], node.links[0], relay_cut.clone(), stopped.clone(), tap.clone()).await?;
            if spec.relay_link1 {
                node.advertise[1] = SocketAddr::from(([127, 0, 0, 3], free_port("127.0.0.3")?));
                spawn_relay(node.advertise[1], node.links[1], link1_cut.clone(), stopped.clone(), tap.clone()).await?;
            }
        }
        // Written after the relays: `relay_link1` changes where link 1 is advertised.
        let key_file = match spec.auth {
            LocalAuth::GeneratedKey => {
                let path = dir.join("cluster.key");
                crate::auth::keyfile::write_new(&path, false)?;
                Some(path)
            }
            LocalAuth::None => None,
        };
        let config = dir.join("cluster.toml");
        std::fs::write(&config, render_config(spec, &nodes, binary, dir, key_file.as_deref()))?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            config,
            nodes,
            agent_env: Vec::new(),
            agents: std::sync::Mutex::new(HashMap::new()),
            relay_cut,
            link1_cut,
            relay_stop,
            tap,
        })
    }

    /// The on-path attacker on every node's link 0, and link 1 with `relay_link1` (see
    /// [`Tap`]).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn node(&self, name: &str) -> &LocalNode {
        self.nodes.iter().find(|it| it.name == name).expect("a node of the cluster")
    }

    pub fn client(&self, name: &str) -> Client {
        Client::unix(&self.node(name).api)
    }

    /// Starts a node's agent as the leader of a new session.
    pub fn start(&mut self, name: &str, join_only: bool) -> anyhow::Result<()> {
        if let Some(child) = self.agents().get_mut(name)
            && child.try_wait()?.is_none()
        {
            bail!("node {name} is already running");
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.agent.log")))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["agent", "--config"])
            .arg(&self.config)
            .args(["--node", name])
            .env("TAKEOVER_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if join_only {
            command.arg("--join-only");
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.agents().insert(name.to_string(), child);
        Ok(())
    }

    /// Powers a node off: its agent and everything it started, at once.
    pub async fn power_off(&mut self, name: &str) -> anyhow::Result<()> {
        let pidfile = self.node(name).state_dir.join("agent.pid");
        let child = self.agents().remove(name);
        if let Some(mut child) = child {
            let report = tokio::task::spawn_blocking(move || fence_local(&pidfile, Duration::from_secs(10))).await?;
            if let Err(e) = report {
                // The agent may not have written its pid file yet: kill it directly.
                let _ = child.kill();
                tracing::debug!("fence_local: {e}");
            }
            let _ = tokio::task::spawn_blocking(move || child.wait()).await?;
        }
        Ok(())
    }

    /// SIGKILLs only the agent process (its service dies with it).
    pub async fn kill_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let child = self.agents().remove(name);
        if let Some(mut child) = child {
            child.kill()?;
            tokio::task::spawn_blocking(move || child.wait()).await??;
        }
        Ok(())
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.agents().get_mut(name).is_some_and(|it| matches!(it.try_wait(), Ok(None)))
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cuts (or restores) link 0 for every node: the relay drops datagrams and
    /// connections.
    pub fn cut_link0(&self, cut: bool) {
        self.relay_cut.store(cut, Ordering::SeqCst);
    }

    /// Cuts (or restores) link 1 for every node; only with `relay_link1` (otherwise link
    /// 1 runs directly and this changes nothing). With [`LocalCluster::cut_link0`]: a
    /// full partition.
    pub fn cut_link1(&self, cut: bool) {
        self.link1_cut.store(cut, Ordering::SeqCst);
    }

    pub async fn status(&self, name: &str) -> anyhow::Result<StatusDoc> {
        self.client(name).status().await.map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Polls a node's status until `pred` holds or `timeout` passes.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusDoc) -> bool,
    ) -> anyhow::Result<StatusDoc> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(status) = self.status(name).await {
                if pred(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
            let exited = self.agents().get_mut(name).and_then(|child| child.try_wait().ok().flatten());
            if let Some(exit) = exited {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.agent.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                bail!(
                    "node {name}: the agent exited ({exit}) while waiting for {what}; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let state = last.map_or("no answer".to_string(), |s| {
                    s.groups
                        .iter()
                        .map(|g| format!("{} {} p{}", g.name, g.role, g.priority))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                bail!("node {name}: timed out after {timeout:?} waiting for {what} (last: {state})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The role of the cluster's group on `name`, if it answers.
    pub async fn role(&self, name: &str, group: &str) -> Option<String> {
        let status = self.status(name).await.ok()?;
        status.groups.iter().find(|it| it.name == group).map(|it| it.role.clone())
    }

    /// Powers every node off and stops the relay.
    pub async fn shutdown(&mut self) {
        let names: Vec<String> = self.agents().keys().cloned().collect();
        for name in names {
            let _ = self.power_off(&name).await;
        }
        let _ = self.relay_stop.send(true);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let agents: Vec<(String, Child)> = self.agents().drain().collect();
        for (name, mut child) in agents {
            let pidfile = self.dir.join(&name).join("agent.pid");
            if fence_local(&pidfile, Duration::from_secs(10)).is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // The (empty) cgroups of the nodes' services: a powered-off node leaves them, as a
        // machine losing power does until its next boot.
        for node in &self.nodes {
            let scope = crate::resources::node_scope(&node.name, &node.state_dir);
            let _ = crate::resources::process::kill_leftover_cgroups(&scope);
        }
        let _ = self.relay_stop.send(true);
    }
}

fn render_config(spec: &Spec, nodes: &[LocalNode], binary: &Path, dir: &Path, key_file: Option<&Path>) -> String {
    let auth = match key_file {
        Some(path) => format!("key_file = {:?}", path.display().to_string()),
        None => "auth = \"none\"".to_string(),
    };
    let mut out = format!(
        "# Written by takeover's local cluster (demo/tests).\n[cluster]\nname = {:?}\nheartbeat_interval = {:?}\ndead_after = {:?}\nstartup_wait = {:?}\narbiter = {:?}\nfence_retry = \"500ms\"\n{auth}\n\n[fence]\ntimeout = \"10s\"\n",
        spec.cluster,
        format_duration(spec.heartbeat_interval),
        format_duration(spec.dead_after),
        format_duration(spec.startup_wait),
        spec.arbiter,
    );
    let fence_local = format!(
        "{{ command = [{:?}, \"fence-local\", \"--pidfile\", {:?}] }}",
        binary.display().to_string(),
        dir.join("{node}").join("agent.pid").display().to_string(),
    );
    match &spec.witness {
        None => out.push_str(&format!("[[fence.level]]\ndevices = [{fence_local}]\n")),
        Some(w) => {
            out.push_str(&format!(
                "[[fence.level]]\ndevices = [{fence_local}]\n\n[witness]\naddress = {:?}\nlease = {:?}\nmargin = {:?}\n",
                w.address.to_string(),
                format_duration(w.lease),
                format_duration(w.margin),
            ));
        }
    }
    for node in nodes {
        let list = |addrs: &[SocketAddr]| {
            addrs.iter().map(|it| format!("{:?}", it.to_string())).collect::<Vec<_>>().join(", ")
        };
        out.push_str(&format!(
            "\n[[node]]\nname = {:?}\nstate_dir = {:?}\napi = {:?}\nlinks = [{}]\nadvertise = [{}]\n",
            node.name,
            node.state_dir.display().to_string(),
            format!("unix:{}", node.api.display()),
            list(&node.links),
            list(&node.advertise),
        ));
    }
    out.push_str(&format!(
        "\n[[group]]\nname = {:?}\nnodes = [{}]\n",
        spec.group,
        spec.nodes.iter().map(|it| format!("{it:?}")).collect::<Vec<_>>().join(", ")
    ));
    if let Some(service) = &spec.service {
        out.push_str(&format!(
            "service = [{}]\nstop_timeout = \"2s\"\n",
            service.iter().map(|it| format!("{it:?}")).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// An on-path attacker in the relays, for tests: they record what they forward (once
/// asked to) and carry out one [`FrameAttack`] at a time on the peer channel's frames
/// from the dialing node to the accepting one.
#[derive(Debug, Default)]
pub struct Tap {
    recording: AtomicBool,
    datagrams: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    frames: Mutex<VecDeque<TappedFrame>>,
    attack: Mutex<Option<FrameAttack>>,
    attacks_done: AtomicU64,
    next_conn: AtomicU64,
}

/// A channel frame a relay forwarded.
#[derive(Clone, Debug)]
pub struct TappedFrame {
    /// The relayed connection, numbered by the tap.
    pub conn: u64,
    /// From the dialing node to the accepting one (or back).
    pub to_acceptor: bool,
    pub kind: FrameKind,
    /// The whole frame, header included.
    pub bytes: Vec<u8>,
}

/// What the tap does to the next Group frame from the dialer to the acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAttack {
    /// Flip one bit in the middle of its payload.
    Corrupt,
    /// Forward it, then send it again.
    Duplicate,
    /// Send the first Group frame of the same connection and direction again before it.
    ReplayEarlier,
}

/// How many datagrams and frames the tap keeps (the newest).
const TAP_KEEP: usize = 256;

impl Tap {
    /// Starts (or stops) recording what the relays forward.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// The datagrams forwarded to `target`, oldest first.
    pub fn datagrams_to(&self, target: SocketAddr) -> Vec<Vec<u8>> {
        let datagrams = self.datagrams.lock().unwrap_or_else(|it| it.into_inner());
        datagrams.iter().filter(|(to, _)| *to == target).map(|(_, bytes)| bytes.clone()).collect()
    }

    /// The frames forwarded, oldest first.
    pub fn frames(&self) -> Vec<TappedFrame> {
        self.frames.lock().unwrap_or_else(|it| it.into_inner()).iter().cloned().collect()
    }

    /// Arms `attack` for the next Group frame from a dialer to an acceptor.
    pub fn arm(&self, attack: FrameAttack) {
        *self.attack.lock().unwrap_or_else(|it| it.into_inner()) = Some(attack);
    }

    /// How many attacks were carried out.
    pub fn attacks_done(&self) -> u64 {
        self.attacks_done.load(Ordering::SeqCst)
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    fn keep_datagram(&self, target: SocketAddr, bytes: &[u8]) {
        let mut datagrams = self.datagrams.lock().unwrap_or_else(|it| it.into_inner());
        datagrams.push_back((target, bytes.to_vec()));
        while datagrams.len() > TAP_KEEP {
            datagrams.pop_front();
        }
    }

    /// Keeps the newest [`TAP_KEEP`] Group frames, and every handshake frame (a few per
    /// connection), so a whole connection can be replayed.
    fn keep_frame(&self, frame: TappedFrame) {
        let mut frames = self.frames.lock().unwrap_or_else(|it| it.into_inner());
        frames.push_back(frame);
        if frames.iter().filter(|it| it.kind == FrameKind::Group).count() > TAP_KEEP
            && let Some(oldest) = frames.iter().position(|it| it.kind == FrameKind::Group)
        {
            frames.remove(oldest);
        }
    }

    fn first_group_frame(&self, conn: u64, to_acceptor: bool) -> Option<Vec<u8>> {
        let frames = self.frames.lock().unwrap_or_else(|it| it.into_inner());
        frames
            .iter()
            .find(|it| it.conn == conn && it.to_acceptor == to_acceptor && it.kind == FrameKind::Group)
            .map(|it| it.bytes.clone())
    }
}

/// Forwards UDP datagrams and TCP connections from `listen` to `target` unless `cut`.
async fn spawn_relay(
    listen: SocketAddr,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    tap: Arc<Tap>,
) -> anyhow::Result<()> {
    let udp = UdpSocket::bind(listen).await.with_context(|| format!("relay cannot bind UDP {listen}"))?;
    let tcp = TcpListener::bind(listen).await.with_context(|| format!("relay cannot bind TCP {listen}"))?;
    let (udp_cut, mut udp_stop, udp_tap) = (cut.clone(), stop.clone(), tap.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            tokio::select! {
                _ = udp_stop.changed() => return,
                received = udp.recv_from(&mut buf) => {
                    let Ok((n, _)) = received else { return };
                    if !udp_cut.load(Ordering::SeqCst) {
                        if udp_tap.recording() {
                            udp_tap.keep_datagram(target, &buf[..n]);
                        }
                        let _ = udp.send_to(&buf[..n], target).await;
                    }
                }
            }
        }
    });
    let mut tcp_stop = stop;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tcp_stop.changed() => return,
                accepted = tcp.accept() => {
                    let Ok((inbound, _)) = accepted else { return };
                    if cut.load(Ordering::SeqCst) {
                        continue; // Dropping it refuses the connection.
                    }
                    tokio::spawn(pipe(inbound, target, cut.clone(), tap.clone()));
                }
            }
        }
    });
    Ok(())
}

/// Copies both ways, frame by frame, until either side closes or the link is cut.
async fn pipe(mut inbound: TcpStream, target: SocketAddr, cut: Arc<AtomicBool>, tap: Arc<Tap>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let conn = tap.next_conn.fetch_add(1, Ordering::SeqCst);
    let (mut a_read, mut a_write) = inbound.split();
    let (mut b_read, mut b_write) = outbound.split();
    let watch_cut = async {
        while !cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = forward_frames(&mut a_read, &mut b_write, &tap, conn, true) => {}
        _ = forward_frames(&mut b_read, &mut a_write, &tap, conn, false) => {}
        _ = watch_cut => {}
    }
    let _ = a_write.shutdown().await;
    let _ = b_write.shutdown().await;
}

/// Forwards whole channel frames (see [`crate::wire`]), recording them and carrying out
/// an armed attack; bytes that are not frames are passed on as they come.
async fn forward_frames(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    tap: &Tap,
    conn: u64,
    to_acceptor: bool,
) {
    loop {
        let mut header = [0u8; wire::FRAME_HEADER_LEN];
        if from.read_exact(&mut header).await.is_err() {
            return;
        }
        let Ok(parsed) = wire::decode_frame_header(header) else {
            if to.write_all(&header).await.is_ok() {
                let _ = tokio::io::copy(from, to).await;
            }
            return;
        };
        let mut frame = header.to_vec();
        frame.resize(wire::FRAME_HEADER_LEN + parsed.len, 0);
        if from.read_exact(&mut frame[wire::FRAME_HEADER_LEN..]).await.is_err() {
            return;
        }
        let attack = if to_acceptor && parsed.kind == FrameKind::Group {
            tap.attack.lock().unwrap_or_else(|it| it.into_inner()).take()
        } else {
            None
        };
        if tap.recording() || attack.is_some() {
            tap.keep_frame(TappedFrame { conn, to_acceptor, kind: parsed.kind, bytes: frame.clone() });
        }
        let mut out = Vec::with_capacity(frame.len() * 2);
        match attack {
            None => out.extend_from_slice(&frame),
            Some(FrameAttack::Corrupt) => {
                frame[wire::FRAME_HEADER_LEN + parsed.len / 2] ^= 0x01;
                out.extend_from_slice(&frame);
            }
            Some(FrameAttack::Duplicate) => {
                out.extend_from_slice(&frame);
                out.extend_from_slice(&frame);
            }
            Some(FrameAttack::ReplayEarlier) => {
                out.extend_from_slice(&tap.first_group_frame(conn, to_acceptor).unwrap_or_else(|| frame.clone()));
                out.extend_from_slice(&frame);
            }
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
        if attack.is_some() {
            tap.attacks_done.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What an [`AppClient`] saw: every acknowledged append, by payload.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    /// payload → (node whose service acknowledged it, index)
    pub acked: BTreeMap<String, (String, u64)>,
    /// When each node first and last acknowledged.
    pub first_ack: BTreeMap<String, tokio::time::Instant>,
    pub last_ack: BTreeMap<String, tokio::time::Instant>,
    pub failures: u64,
}

/// A client that appends through the demo service of whichever node answers, every
/// `interval`, until dropped.
pub struct AppClient {
    pub log: Arc<Mutex<ClientLog>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a client appends on one node.
#[derive(Clone, Debug)]
pub enum Target {
    /// The demo service's HTTP `/append` (it appends through its agent).
    App(SocketAddr),
    /// The agent's API socket, for a group.
    Agent { socket: PathBuf, group: String },
}

impl Target {
    /// Appends `payload`; the index once acknowledged.
    async fn append(&self, payload: Vec<u8>) -> Option<u64> {
        match self {
            Target::App(addr) => match http(*addr, "POST", "/append", payload).await {
                Ok((200, body)) => Some(body.trim().parse().unwrap_or(0)),
                _ => None,
            },
            Target::Agent { socket, group } => {
                let client = Client::unix(socket);
                let call = client.append(group, payload);
                tokio::time::timeout(Duration::from_secs(2), call).await.ok()?.ok().map(|it| it.index)
            }
        }
    }
}

impl AppClient {
    pub fn start(apps: BTreeMap<String, SocketAddr>, prefix: &str, interval: Duration) -> AppClient {
        let targets = apps.into_iter().map(|(node, addr)| (node, Target::App(addr))).collect();
        AppClient::start_targets(targets, prefix, interval)
    }

    /// A client appending through whichever target acknowledges, every `interval`.
    pub fn start_targets(targets: BTreeMap<String, Target>, prefix: &str, interval: Duration) -> AppClient {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let (shared, prefix) = (log.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let nodes: Vec<(String, Target)> = targets.into_iter().collect();
            let mut target = 0;
            for seq in 0u64.. {
                let payload = format!("{prefix}-{seq}");
                let (node, addr) = &nodes[target];
                match addr.append(payload.clone().into_bytes()).await {
                    Some(index) => {
                        let now = tokio::time::Instant::now();
                        let mut log = shared.lock().unwrap_or_else(|it| it.into_inner());
                        log.acked.insert(payload, (node.clone(), index));
                        log.first_ack.entry(node.clone()).or_insert(now);
                        log.last_ack.insert(node.clone(), now);
                    }
                    _ => {
                        shared.lock().unwrap_or_else(|it| it.into_inner()).failures += 1;
                        target = (target + 1) % nodes.len();
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        AppClient { log, task }
    }

    pub fn acks(&self) -> usize {
        self.snapshot().acked.len()
    }

    pub fn snapshot(&self) -> ClientLog {
        self.log.lock().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// Waits until at least `n` appends were acknowledged.
    pub async fn wait_acks(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acks() < n {
            if tokio::time::Instant::now() > deadline {
                bail!("the client got only {} acknowledgements, expected {n}", self.acks());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The first acknowledgement from `node` after `since`.
    pub async fn first_ack_after(
        &self,
        node: &str,
        since: tokio::time::Instant,
        timeout: Duration,
    ) -> anyhow::Result<tokio::time::Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.snapshot();
            let first = log.first_ack.get(node).copied().filter(|it| *it > since);
            if let Some(at) = first.or_else(|| log.last_ack.get(node).copied().filter(|it| *it > since)) {
                return Ok(at);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the client got no acknowledgement from {node}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for AppClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalCluster {
    /// Every payload in the journal of `group` on `node`.
    pub async fn journal_payloads(&self, node: &str, group: &str) -> anyhow::Result<BTreeSet<String>> {
        let mut held = BTreeSet::new();
        let mut from = 1;
        loop {
            let page = self.client(node).read(group, from, 10_000).await.map_err(|e| anyhow::anyhow!(e.message))?;
            let Some(last) = page.records.last() else { break };
            from = last.index + 1;
            for record in &page.records {
                held.insert(String::from_utf8_lossy(&record.payload_bytes().unwrap_or_default()).into_owned());
            }
        }
        Ok(held)
    }

    /// Every payload any node set aside because a force start abandoned it.
    pub fn force_start_quarantine(&self, group: &str) -> BTreeSet<String> {
        let mut payloads = BTreeSet::new();
        for node in &self.nodes {
            for info in journal::list_quarantine(&node.state_dir.join("quarantine"), group) {
                if info.reason == DiscardReason::ForceStart
                    && let Ok(records) = journal::read_quarantine(&info.path)
                {
                    payloads.extend(records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()));
                }
            }
        }
        payloads
    }
}

/// Reads the demo service's `start`/`ack`/`tick` records (CLOCK_MONOTONIC) and counts
/// pairs of instances whose serving intervals [start, last ack or tick] overlap. Returns (instances,
/// overlapping pairs).
pub fn serving_overlaps(path: &Path) -> anyhow::Result<(usize, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut spans: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["start", node, pid, ns] => {
                let (pid, ns) = (pid.parse()?, ns.parse()?);
                spans.insert((node.to_string(), pid), (ns, ns));
            }
            ["ack", node, pid, ns, _] | ["tick", node, pid, ns] => {
                let (pid, ns): (u32, u64) = (pid.parse()?, ns.parse()?);
                if let Some(span) = spans.get_mut(&(node.to_string(), pid)) {
                    span.1 = span.1.max(ns);
                }
            }
            _ => bail!("unreadable line in {}: {line}", path.display()),
        }
    }
    let mut intervals: Vec<(u64, u64)> = spans.into_values().collect();
    intervals.sort();
    let mut overlaps = 0;
    for i in 0..intervals.len() {
        for j in i + 1..intervals.len() {
            if intervals[j].0 < intervals[i].1 {
                overlaps += 1;
            }
        }
    }
    Ok((intervals.len(), overlaps))
}

/// A port free on 127.0.0.1 right now.
pub fn free_loopback_port() -> anyhow::Result<u16> {
    free_port("127.0.0.1")
}

/// One HTTP/1.1 request over TCP, with a 1 s timeout.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let attempt = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "takeover")
            .body(Full::new(axum::body::Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await?
}
