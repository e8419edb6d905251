//! `takeover demo`: two real agents on loopback (two links each, link 0 through a relay
//! the demo can cut), the sample service appending to the replicated journal, a client
//! that keeps appending through it, and a walk through the seed's operations (1)–(5):
//! the master powered off and taken over; the failed node back as SL and SL → M; one link
//! cut without takeover; both nodes killed and restarted in each order; one node alone
//! (waits or starts by priority); a force start and the [1 1] report.
//!
//! At the end it checks the client's acknowledged records against the final journal and
//! the quarantine, and the service's own CLOCK_MONOTONIC start/ack records for overlap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use takeover_agent::api::StatusDoc;
use takeover_agent::journal;
use takeover_agent::localnet::{LocalCluster, Spec};
use takeover_core::log::DiscardReason;
use tokio::time::Instant;

const GROUP: &str = "journal";
const WAIT: Duration = Duration::from_secs(15);

/// What the client saw: every acknowledged append, by payload.
#[derive(Default)]
struct ClientLog {
    /// payload → (node that acknowledged, index)
    acked: BTreeMap<String, (String, u64)>,
    /// When each node last acknowledged, and when it first did.
    first_ack: BTreeMap<String, Instant>,
    last_ack: BTreeMap<String, Instant>,
    failures: u64,
}

struct Demo {
    cluster: LocalCluster,
    apps: BTreeMap<String, SocketAddr>,
    log: Arc<Mutex<ClientLog>>,
    started: Instant,
    problems: Vec<String>,
    step: usize,
    takeover_ms: Option<u128>,
}

pub async fn run(dir: Option<PathBuf>, keep: bool) -> anyhow::Result<ExitCode> {
    let made_dir = dir.is_none();
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("takeover-demo-{}", std::process::id())));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty; give an empty or new --dir", dir.display());
    }
    let result = demo(&dir).await;
    if made_dir && !keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("demo: files kept in {}", dir.display());
    }
    result
}

async fn demo(dir: &Path) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe().context("cannot find the takeover binary")?;
    let app_ports = [free_port()?, free_port()?];
    let apps: BTreeMap<String, SocketAddr> = [
        ("alpha".to_string(), SocketAddr::from(([127, 0, 0, 1], app_ports[0]))),
        ("beta".to_string(), SocketAddr::from(([127, 0, 0, 1], app_ports[1]))),
    ]
    .into();
    let listen = apps.iter().map(|(node, addr)| format!("{node}={addr}")).collect::<Vec<_>>().join(",");
    let spec = Spec {
        cluster: "demo".into(),
        nodes: vec!["alpha".into(), "beta".into()],
        group: GROUP.into(),
        service: Some(vec![
            binary.display().to_string(),
            "demo-app".into(),
            "--listen".into(),
            listen,
            "--record".into(),
            dir.join("app-records.log").display().to_string(),
        ]),
        heartbeat_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        startup_wait: Duration::from_secs(2),
        arbiter: "fence".into(),
    };
    let cluster = LocalCluster::create(dir, &binary, &spec).await?;
    println!(
        "demo: two agents, alpha and beta, on loopback; link 0 runs through a relay on 127.0.0.3 that the demo can cut, link 1 is direct"
    );
    println!(
        "      heartbeat every 100ms, a peer is failed after 500ms of silence on every link, fencing by powering the node off; files in {}",
        dir.display()
    );
    let mut demo = Demo {
        cluster,
        apps,
        log: Arc::new(Mutex::new(ClientLog::default())),
        started: Instant::now(),
        problems: Vec::new(),
        step: 0,
        takeover_ms: None,
    };
    let outcome = demo.walk().await;
    let summary = demo.summary(dir).await;
    demo.cluster.shutdown().await;
    if let Err(error) = outcome {
        demo.problems.push(format!("step {} failed: {error:#}", demo.step));
    }
    let (acked, lost, discarded) = summary.unwrap_or((0, 0, 0));
    for problem in &demo.problems {
        println!("PROBLEM: {problem}");
    }
    println!(
        "demo: {acked} records acknowledged, {lost} lost, {discarded} discarded by force start, takeover {} ms",
        demo.takeover_ms.map_or("-".into(), |it| it.to_string())
    );
    println!("demo: finished in {:.1} s", demo.started.elapsed().as_secs_f64());
    Ok(if lost > 0 || !demo.problems.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn group(status: &StatusDoc) -> Option<&takeover_agent::api::GroupDoc> {
    status.groups.iter().find(|it| it.name == GROUP)
}

fn role_is(role: &'static str) -> impl Fn(&StatusDoc) -> bool {
    move |status| group(status).is_some_and(|g| g.role == role)
}

impl Demo {
    fn say(&mut self, title: &str) {
        self.step += 1;
        println!("\n[{}] {title}", self.step);
    }

    fn detail(&self, text: impl AsRef<str>) {
        println!("      {}", text.as_ref());
    }

    fn problem(&mut self, text: String) {
        println!("      PROBLEM: {text}");
        self.problems.push(text);
    }

    async fn wait_role(&self, node: &str, role: &'static str) -> anyhow::Result<Duration> {
        let since = Instant::now();
        self.cluster.wait_for(node, WAIT, &format!("{GROUP} to be {role}"), role_is(role)).await?;
        Ok(since.elapsed())
    }

    /// Waits until an SL holds as many records as its active and the active is M.
    async fn wait_synced(&self, active: &str, sl: &str) -> anyhow::Result<Duration> {
        let since = Instant::now();
        self.wait_role(sl, "SL").await?;
        self.wait_role(active, "M").await?;
        Ok(since.elapsed())
    }

    fn acks(&self) -> usize {
        self.log.lock().expect("client log").acked.len()
    }

    /// Starts the client: one append every 10 ms through whichever service answers.
    fn start_client(&self) {
        let (log, apps) = (self.log.clone(), self.apps.clone());
        tokio::spawn(async move {
            let nodes: Vec<(String, SocketAddr)> = apps.into_iter().collect();
            let mut target = 0;
            for seq in 0u64.. {
                let payload = format!("demo-{seq}");
                let (node, addr) = &nodes[target];
                match http(*addr, "POST", "/append", payload.clone().into_bytes()).await {
                    Ok((200, body)) => {
                        let index = body.trim().parse().unwrap_or(0);
                        let now = Instant::now();
                        let mut log = log.lock().expect("client log");
                        log.acked.insert(payload, (node.clone(), index));
                        log.first_ack.entry(node.clone()).or_insert(now);
                        log.last_ack.insert(node.clone(), now);
                    }
                    _ => {
                        log.lock().expect("client log").failures += 1;
                        target = (target + 1) % nodes.len();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    async fn walk(&mut self) -> anyhow::Result<()> {
        self.say("start both nodes (alpha is preferred: initial priorities 2 and 3)");
        let since = Instant::now();
        self.cluster.start("alpha", false)?;
        self.cluster.start("beta", false)?;
        self.wait_synced("alpha", "beta").await?;
        self.detail(format!(
            "alpha M, beta SL after {} ms (F0.4: both up, priority 2 beats 3; SM → M once beta synced)",
            since.elapsed().as_millis()
        ));
        self.start_client();
        self.wait_acks(50).await?;
        self.detail(format!("the client appends through the service on alpha: {} acknowledged so far", self.acks()));

        self.say("operation (4): power off the master alpha (agent and service)");
        let before = self.acks();
        let killed = Instant::now();
        self.cluster.power_off("alpha").await?;
        let took = self.wait_role("beta", "SM").await?;
        let first_ack = self.wait_first_ack_after("beta", killed).await?;
        let takeover = first_ack.duration_since(killed).as_millis();
        self.takeover_ms = Some(takeover);
        self.detail(format!(
            "beta fenced alpha and took over (SL → SM) {} ms after the power-off; the client's first acknowledgement from beta came {} ms after it",
            took.as_millis(),
            takeover
        ));
        self.detail(format!(
            "{} records acknowledged by alpha before it died are all on beta (checked at the end)",
            before
        ));

        self.say("operation (3): alpha comes back");
        let since = Instant::now();
        self.cluster.start("alpha", false)?;
        self.wait_synced("beta", "alpha").await?;
        self.detail(format!(
            "alpha rejoined as SL, caught up, and beta went SM → M in {} ms (records acknowledged meanwhile: {})",
            since.elapsed().as_millis(),
            self.acks()
        ));

        self.say("one link of two cut for 2 s: no takeover");
        let before = self.acks();
        self.cluster.cut_link0(true);
        let cut = Instant::now();
        let mut moved = false;
        while cut.elapsed() < Duration::from_secs(2) {
            let (a, b) = (self.cluster.role("alpha", GROUP).await, self.cluster.role("beta", GROUP).await);
            if a.as_deref() != Some("SL") || b.as_deref() != Some("M") {
                moved = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = self.cluster.status("beta").await?;
        let link0 = status.peers.first().and_then(|p| p.links.first()).is_some_and(|it| it.up);
        let channel = status.peers.first().and_then(|p| p.channel_link);
        self.cluster.cut_link0(false);
        if moved {
            self.problem("a role changed while only one link was cut".into());
        }
        if link0 {
            self.problem("beta still saw link 0 up while it was cut".into());
        }
        self.detail(format!(
            "beta saw link 0 go silent and kept M; alpha kept SL; the peer channel moved to link {}; {} more records acknowledged during the cut",
            channel.map_or("-".into(), |it| it.to_string()),
            self.acks() - before
        ));
        self.cluster
            .wait_for("beta", WAIT, "link 0 up again", |s| {
                s.peers.first().and_then(|p| p.links.first()).is_some_and(|it| it.up)
            })
            .await?;
        self.detail("link 0 restored and heard again");

        self.say("operations (1) and (2): both nodes killed, restarted in each order");
        self.cluster.power_off("beta").await?;
        self.cluster.power_off("alpha").await?;
        self.cluster.start("alpha", false)?;
        let status = self
            .cluster
            .wait_for("alpha", WAIT, "alpha to wait", |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await?;
        self.detail(format!(
            "alpha restarted first, alone, with priority {}: it waits ({})",
            group(&status).map_or(0, |g| g.priority),
            group(&status).and_then(|g| g.waiting.clone()).unwrap_or_default()
        ));
        let since = Instant::now();
        self.cluster.start("beta", false)?;
        self.wait_synced("beta", "alpha").await?;
        self.detail(format!("beta (priority 2) started: beta SM → M, alpha SL in {} ms", since.elapsed().as_millis()));
        self.cluster.power_off("alpha").await?;
        self.cluster.power_off("beta").await?;
        self.cluster.start("beta", false)?;
        let status = self
            .cluster
            .wait_for("beta", WAIT, "beta to wait", |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await?;
        self.detail(format!(
            "beta restarted first, alone, with priority {}: it waits too (only priority 1 may start alone)",
            group(&status).map_or(0, |g| g.priority)
        ));
        let since = Instant::now();
        self.cluster.start("alpha", false)?;
        self.wait_synced("beta", "alpha").await?;
        self.detail(format!(
            "alpha started: beta (priority 2 beats 3) SM → M, alpha SL in {} ms",
            since.elapsed().as_millis()
        ));

        self.say("operation (2): one node restarted alone, by priority");
        self.cluster.power_off("alpha").await?;
        self.wait_role("beta", "SM").await?;
        self.detail("alpha (SL) powered off: beta M → SM after the fence, priority 1");
        self.wait_acks(self.acks() + 20).await?;
        self.cluster.power_off("beta").await?;
        self.cluster.start("alpha", false)?;
        let status = self
            .cluster
            .wait_for("alpha", WAIT, "alpha to wait", |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await?;
        self.detail(format!(
            "alpha alone with priority {}: waits for beta, which processed last",
            group(&status).map_or(0, |g| g.priority)
        ));
        self.cluster.power_off("alpha").await?;
        let since = Instant::now();
        self.cluster.start("beta", false)?;
        self.wait_role("beta", "SM").await?;
        self.detail(format!(
            "beta alone with priority 1: starts after its startup wait ({} ms)",
            since.elapsed().as_millis()
        ));
        self.cluster.start("alpha", false)?;
        self.wait_synced("beta", "alpha").await?;
        self.detail("alpha back as SL; beta M");

        self.say("operation (5) by hand: force start, and the [1 1] report");
        self.cluster.power_off("alpha").await?;
        self.wait_role("beta", "SM").await?;
        let acks = self.acks();
        self.wait_acks(acks + 20).await?;
        let beta_only = self.acks() - acks;
        self.cluster.power_off("beta").await?;
        self.detail(format!(
            "alpha powered off, then beta after acknowledging {beta_only}+ records alone (SM, priority 1)"
        ));
        self.cluster.start("alpha", false)?;
        self.cluster
            .wait_for("alpha", WAIT, "alpha to wait", |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await?;
        let answer = self.cluster.client("alpha").force_start(GROUP).await.map_err(|e| anyhow::anyhow!(e.message))?;
        self.detail(format!(
            "alpha waits; operator: `takeover force-start {GROUP}` on alpha → {}: {}",
            answer.outcome, answer.message
        ));
        if let Some(warning) = &answer.warning {
            self.detail(format!("WARNING printed: {warning}"));
        }
        self.wait_role("alpha", "SM").await?;
        self.wait_acks(self.acks() + 20).await?;
        self.detail("alpha is SM (epoch marked forced); both disks now hold priority 1");
        self.cluster.power_off("alpha").await?;
        self.cluster.start("alpha", false)?;
        self.cluster.start("beta", false)?;
        let status = self
            .cluster
            .wait_for("alpha", WAIT, "the [1 1] report", |s| {
                group(s).and_then(|g| g.waiting.as_deref()).is_some_and(|w| w.starts_with("[1 1]"))
            })
            .await?;
        self.detail(format!("both restarted: {}", group(&status).and_then(|g| g.waiting.clone()).unwrap_or_default()));
        let answer = self.cluster.client("alpha").force_start(GROUP).await.map_err(|e| anyhow::anyhow!(e.message))?;
        self.detail(format!("operator: force-start on alpha → {}: {}", answer.outcome, answer.message));
        self.wait_role("alpha", "SM").await?;
        // The fence powered beta off; the operator restarts it with --join-only as told.
        self.cluster.power_off("beta").await?;
        self.cluster.start("beta", true)?;
        self.wait_synced("alpha", "beta").await?;
        let status = self.cluster.status("beta").await?;
        let g = group(&status).context("no group")?;
        self.detail(format!(
            "beta restarted with --join-only: it rejoined as SL, set aside {} record(s) abandoned by the force start, and alpha is M",
            g.journal.quarantined_force_start
        ));
        self.wait_acks(self.acks() + 20).await?;
        Ok(())
    }

    async fn wait_acks(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while self.acks() < n {
            if Instant::now() > deadline {
                bail!("the client got only {} acknowledgements, expected {n}", self.acks());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn wait_first_ack_after(&self, node: &str, since: Instant) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            let first = {
                let log = self.log.lock().expect("client log");
                log.first_ack
                    .get(node)
                    .copied()
                    .filter(|it| *it > since)
                    .or_else(|| log.last_ack.get(node).copied().filter(|it| *it > since))
            };
            if let Some(at) = first {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!("the client got no acknowledgement from {node}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Counts acknowledged records found in the final journal, lost, and discarded by
    /// force start; checks the service's serving intervals for overlap.
    async fn summary(&mut self, dir: &Path) -> anyhow::Result<(usize, usize, usize)> {
        let acked = std::mem::take(&mut self.log.lock().expect("client log").acked);
        let active = ["alpha", "beta"];
        let mut held: BTreeSet<String> = BTreeSet::new();
        for node in active {
            let Ok(status) = self.cluster.status(node).await else { continue };
            let Some(g) = group(&status) else { continue };
            if g.role != "M" && g.role != "SM" {
                continue;
            }
            let mut from = 1;
            loop {
                let page = self
                    .cluster
                    .client(node)
                    .read(GROUP, from, 10_000)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                if page.records.is_empty() {
                    break;
                }
                for record in &page.records {
                    held.insert(String::from_utf8_lossy(&record.payload_bytes().unwrap_or_default()).into_owned());
                }
                from = page.records.last().map_or(from, |it| it.index + 1);
            }
        }
        let mut forced: BTreeSet<String> = BTreeSet::new();
        for node in &self.cluster.nodes {
            let quarantine = node.state_dir.join("quarantine");
            for info in journal::list_quarantine(&quarantine, GROUP) {
                if info.reason == DiscardReason::ForceStart
                    && let Ok(records) = journal::read_quarantine(&info.path)
                {
                    forced.extend(records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()));
                }
            }
        }
        let (mut lost, mut discarded) = (0, 0);
        for payload in acked.keys() {
            if !held.contains(payload) {
                if forced.contains(payload) {
                    discarded += 1;
                } else {
                    lost += 1;
                    if lost <= 5 {
                        self.problems.push(format!("acknowledged record {payload} is missing"));
                    }
                }
            }
        }
        if held.is_empty() {
            self.problems.push("no active node answered at the end".into());
        }
        match serving_overlaps(&dir.join("app-records.log")) {
            Ok((instances, overlaps)) => {
                println!(
                    "\ndemo: the service ran {instances} times; overlapping serving intervals (CLOCK_MONOTONIC): {overlaps}"
                );
                if overlaps > 0 {
                    self.problems.push(format!("{overlaps} overlapping serving intervals"));
                }
            }
            Err(e) => self.problems.push(format!("cannot read the service's records: {e}")),
        }
        Ok((acked.len(), lost, discarded))
    }
}

/// Reads the service's `start`/`ack` records and counts pairs of instances whose serving
/// intervals [start, last ack] overlap.
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
            ["ack", node, pid, ns, _index] => {
                let (pid, ns): (u32, u64) = (pid.parse()?, ns.parse()?);
                if let Some(span) = spans.get_mut(&(node.to_string(), pid)) {
                    span.1 = span.1.max(ns);
                }
            }
            _ => bail!("unreadable line in {}: {line}", path.display()),
        }
    }
    let mut intervals: Vec<(u64, u64, String)> = spans.into_iter().map(|((node, _), (a, b))| (a, b, node)).collect();
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

/// One HTTP/1.1 request over TCP, with a 1 s timeout.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "demo")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await?
}
