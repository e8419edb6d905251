//! Fault campaign (issue 6, part 5; root only): random fault schedules applied with the
//! test bed's real mechanisms (kill -9, power-off, SIGSTOP/SIGCONT, nftables partitions,
//! links cut or flapping) to real agents in network namespaces, while clients append to
//! the journal and ask the services through their virtual IPs.
//!
//! Two layouts, by the seed's parity:
//! - even seeds: alpha and beta running `web` (shared disk, ext4 mount, virtual IP, the
//!   probe service writing every answered request to the shared filesystem) with
//!   power-off fencing, and a journal group `jrnl` a client appends to through the API;
//! - odd seeds: N+1, alpha and beta each running a light group (`a`, `b`: virtual IP and
//!   probe service) with gamma their shared standby.
//!
//! A schedule is one to three faults, each held for a while, then undone (partitions
//! healed, paused nodes continued, stopped nodes powered on and restarted). At the end
//! every fault is healed, every stopped node restarted, and the campaign waits until every
//! group serves again (a deadline, no fixed sleep). Then it checks:
//! - the services' own CLOCK_MONOTONIC start/stop records: no two instances of one group
//!   served at overlapping times;
//! - every record the client saw acknowledged is in the active node's journal;
//! - every request the service answered is on the shared filesystem where it is mounted now;
//! - the disk's reservation record names the node that holds `web` now;
//! - the cluster served again once the faults healed.
//!
//! A schedule follows from its seed (the same faults, targets and holding times).
//! CI runs `TAKEOVER_CAMPAIGN_SCHEDULES` schedules (default 40) within
//! `TAKEOVER_CAMPAIGN_BUDGET_S` seconds (default 200; at least one schedule of each layout
//! runs). `TAKEOVER_CAMPAIGN_SEED` fixes the first seed. The long run:
//! `TAKEOVER_CAMPAIGN_SCHEDULES=1000 TAKEOVER_CAMPAIGN_BUDGET_S=100000 cargo test --release -p takeover --test campaign -- --nocapture`.
//!
//! EXTENSION POINT (not covered yet, on purpose not imitated): forged and replayed peer
//! packets need authenticated traffic, and witness loss needs the witness; both are being
//! built on other branches. Add them as `Fault` variants, drawn in `Fault::draw`, applied in
//! `Rig::apply` with a real mechanism (a forging sender in a namespace; the witness's
//! process killed or its link cut) once those features exist.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use common::groups::{PORT, light_group, vip, web_group};
use common::netcluster::{Fencing, NetCluster, root_or_skip};
use common::shared::{Probe, SharedDisk};
use common::{Rng, env_u64};
use takeover_agent::localnet::{AppClient, serving_overlaps};
use tokio::time::Instant;

/// Namespaces `cpw-*` (two nodes) and `cpn-*` (N+1), beds in slots 40 and 41.
const TWO: (&str, u8) = ("cpw", 40);
const N1: (&str, u8) = ("cpn", 41);
/// How long the cluster may take to serve again once every fault is healed.
const RECOVER: Duration = Duration::from_secs(60);

/// One fault, held for `hold` before it is undone.
#[derive(Clone, Debug)]
enum Fault {
    /// kill -9 of the node's agent (its services die with it; the peer fences the node).
    Kill(String),
    /// The node powered off (links down, every process SIGKILLed), later on again.
    PowerOff(String),
    /// SIGSTOP of every process of the node for longer than `dead_after`, then SIGCONT.
    Pause(String),
    /// Neither node hears the other, on any link.
    Full(String, String),
    /// Packets from the first node to the second are dropped.
    OneWay(String, String),
    /// One link of the node down.
    CutLink(String, u8),
    /// One link of the node flapping with this period (ms).
    Flap(String, u8, u64),
    /// Every node powered off, then all started again.
    RestartAll,
    // EXTENSION POINT: Forged, Replayed (authenticated traffic), WitnessLoss (witness).
}

impl Fault {
    fn draw(rng: &mut Rng, nodes: &[String]) -> Fault {
        match rng.below(8) {
            0 => Fault::Kill(rng.pick(nodes).into()),
            1 => Fault::PowerOff(rng.pick(nodes).into()),
            2 => Fault::Pause(rng.pick(nodes).into()),
            3 => {
                let (a, b) = rng.two(nodes);
                Fault::Full(a.into(), b.into())
            }
            4 => {
                let (a, b) = rng.two(nodes);
                Fault::OneWay(a.into(), b.into())
            }
            5 => Fault::CutLink(rng.pick(nodes).into(), rng.below(2) as u8),
            6 => Fault::Flap(rng.pick(nodes).into(), rng.below(2) as u8, 100 + 100 * rng.below(6)),
            _ => Fault::RestartAll,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill -9 {n}"),
            Fault::PowerOff(n) => write!(f, "power-off {n}"),
            Fault::Pause(n) => write!(f, "SIGSTOP {n}"),
            Fault::Full(a, b) => write!(f, "partition {a}|{b}"),
            Fault::OneWay(a, b) => write!(f, "one-way {a}->{b}"),
            Fault::CutLink(n, l) => write!(f, "link {l} of {n} down"),
            Fault::Flap(n, l, p) => write!(f, "link {l} of {n} flapping {p} ms"),
            Fault::RestartAll => write!(f, "restart all"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Two,
    NPlusOne,
}

/// A service group the probe asks through its virtual IP.
struct Served {
    name: String,
    probe: Probe,
    records: PathBuf,
}

/// One schedule's cluster. Fields drop in order: the probes and the client, then the
/// cluster (nodes powered off, namespaces removed), then the disk (unmounted, detached).
struct Rig {
    served: Vec<Served>,
    client: Option<AppClient>,
    c: NetCluster,
    disk: Option<SharedDisk>,
    layout: Layout,
}

/// What one schedule found.
struct Outcome {
    faults: Vec<String>,
    acked: usize,
    answered: usize,
    recover_ms: u128,
    violations: Vec<String>,
}

#[tokio::test]
async fn fault_campaign_never_overlaps_loses_nothing_and_serves_again() {
    if !root_or_skip("fault_campaign_never_overlaps_loses_nothing_and_serves_again") {
        return;
    }
    let schedules = env_u64("TAKEOVER_CAMPAIGN_SCHEDULES", 40);
    let budget = Duration::from_secs(env_u64("TAKEOVER_CAMPAIGN_BUDGET_S", 200));
    let clock_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_seed = env_u64("TAKEOVER_CAMPAIGN_SEED", clock_seed);
    println!(
        "campaign: first seed {first_seed} (rerun one with TAKEOVER_CAMPAIGN_SEED=<seed> TAKEOVER_CAMPAIGN_SCHEDULES=1); \
         not covered yet: forged and replayed packets, witness loss"
    );
    let started = Instant::now();
    let (mut ran, mut failures) = (0u64, Vec::new());
    for k in 0..schedules {
        if ran >= 2 && started.elapsed() > budget {
            break;
        }
        let seed = first_seed + k;
        let began = Instant::now();
        let out = run_schedule(seed).await;
        ran += 1;
        println!(
            "schedule seed {seed} ({:?}): faults [{}]; {} acknowledged, {} answered, served again {} ms after healing, {} violations, {:.1} s",
            layout_of(seed),
            out.faults.join(", "),
            out.acked,
            out.answered,
            out.recover_ms,
            out.violations.len(),
            began.elapsed().as_secs_f64()
        );
        for v in out.violations {
            println!("VIOLATION seed {seed}: {v}");
            failures.push(format!("seed {seed}: {v}"));
        }
    }
    println!("campaign: {:.0} s", started.elapsed().as_secs_f64());
    println!("schedules: {ran}, violations: {}", failures.len());
    assert!(failures.is_empty(), "{} violations:\n{}", failures.len(), failures.join("\n"));
}

fn layout_of(seed: u64) -> Layout {
    if seed.is_multiple_of(2) { Layout::Two } else { Layout::NPlusOne }
}

async fn run_schedule(seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let mut rig = Rig::up(layout_of(seed)).await;
    let mut out = Outcome { faults: Vec::new(), acked: 0, answered: 0, recover_ms: 0, violations: Vec::new() };
    let n = 1 + rng.below(3);
    for _ in 0..n {
        let fault = Fault::draw(&mut rng, &rig.c.nodes.clone());
        let hold = Duration::from_millis(match fault {
            // Longer than dead_after (500 ms) and the guard's timeout.
            Fault::Pause(_) => 800 + rng.below(1200),
            _ => 300 + rng.below(1700),
        });
        let gap = Duration::from_millis(rng.below(1000));
        out.faults.push(format!("{fault} {} ms", hold.as_millis()));
        rig.apply(&fault);
        tokio::time::sleep(hold).await;
        rig.undo(&fault);
        tokio::time::sleep(gap).await;
    }
    // Heal everything and wait until every group serves again.
    let healed = Instant::now();
    rig.c.bed.heal().expect("heal");
    for node in rig.c.nodes.clone() {
        rig.c.pause(&node, false);
    }
    match rig.recover().await {
        Ok(()) => out.recover_ms = healed.elapsed().as_millis(),
        Err(e) => out.violations.push(format!("the cluster did not serve again within {RECOVER:?}: {e}")),
    }
    let found = rig.check(&mut out).await;
    out.violations.extend(found);
    if !out.violations.is_empty() {
        let logs = rig.c.logs();
        if let Some(first) = out.violations.first_mut() {
            first.push_str(&format!("\n{logs}"));
        }
    }
    out
}

impl Rig {
    async fn up(layout: Layout) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut rig = match layout {
            Layout::Two => {
                let (prefix, slot) = TWO;
                let nodes = ["alpha", "beta"];
                let disk = SharedDisk::create(&dir, &nodes);
                let mounts: BTreeMap<String, Vec<PathBuf>> =
                    nodes.iter().map(|n| (n.to_string(), vec![dir.join(n).join("mnt")])).collect();
                let groups = web_group("web", nodes, &disk, &dir, slot, "", "")
                    + "\n[[group]]\nname = \"jrnl\"\nnodes = [\"alpha\", \"beta\"]\n";
                let c = NetCluster::create_with(prefix, slot, Fencing::PowerOff, tmp, &nodes, "jrnl", &groups, &mounts);
                let probe = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
                let served = vec![Served { name: "web".into(), probe, records: dir.join("app-records.log") }];
                Rig { served, client: None, c, disk: Some(disk), layout }
            }
            Layout::NPlusOne => {
                let (prefix, slot) = N1;
                let nodes = ["alpha", "beta", "gamma"];
                let groups = light_group("a", &["alpha", "gamma"], &dir, slot, 0, PORT, "")
                    + &light_group("b", &["beta", "gamma"], &dir, slot, 1, PORT + 1, "");
                let c = NetCluster::create_with(
                    prefix,
                    slot,
                    Fencing::PowerOff,
                    tmp,
                    &nodes,
                    "a",
                    &groups,
                    &BTreeMap::new(),
                );
                let served = ["a", "b"]
                    .iter()
                    .enumerate()
                    .map(|(n, name)| Served {
                        name: name.to_string(),
                        probe: Probe::start(
                            &c.bed,
                            SocketAddrV4::new(vip(slot, n as u8), PORT + n as u16),
                            Duration::from_millis(5),
                        ),
                        records: dir.join(format!("{name}-records.log")),
                    })
                    .collect();
                Rig { served, client: None, c, disk: None, layout }
            }
        };
        for node in rig.c.nodes.clone() {
            rig.c.start(&node);
        }
        if layout == Layout::Two {
            rig.client = Some(rig.c.client("cp"));
        }
        if let Err(e) = rig.recover().await {
            panic!("the cluster did not start: {e}\n{}", rig.c.logs());
        }
        rig
    }

    fn apply(&mut self, fault: &Fault) {
        let bed = &self.c.bed;
        match fault {
            Fault::Kill(n) => self.c.kill_agent(n),
            Fault::PowerOff(n) => self.c.power_off(n),
            Fault::Pause(n) => {
                self.c.pause(n, true);
            }
            Fault::Full(a, b) => bed.partition_full(a, b).expect("partition"),
            Fault::OneWay(a, b) => bed.partition_one_way(a, b).expect("one-way partition"),
            Fault::CutLink(n, l) => bed.cut_link(n, *l).expect("cut link"),
            Fault::Flap(n, l, p) => bed.flap_link(n, *l, Duration::from_millis(*p), Duration::MAX).expect("flap"),
            Fault::RestartAll => {
                for node in self.c.nodes.clone() {
                    self.c.power_off(&node);
                }
            }
        }
    }

    fn undo(&mut self, fault: &Fault) {
        match fault {
            Fault::Pause(n) => {
                self.c.pause(n, false);
            }
            Fault::Full(..) | Fault::OneWay(..) | Fault::CutLink(..) | Fault::Flap(..) => {
                self.c.bed.heal().expect("heal");
            }
            Fault::Kill(_) | Fault::PowerOff(_) | Fault::RestartAll => {}
        }
        self.restart_stopped();
    }

    /// Every node that is off is powered on, and every agent that is not running started.
    fn restart_stopped(&mut self) {
        for node in self.c.nodes.clone() {
            if !self.c.bed.is_powered_on(&node).unwrap_or(true) {
                self.c.power_on_and_start(&node);
            } else if !self.c.running(&node) {
                self.c.start(&node);
            }
        }
    }

    /// Every group and its nodes.
    fn groups(&self) -> Vec<(&'static str, &'static [&'static str])> {
        match self.layout {
            Layout::Two => vec![("web", &["alpha", "beta"]), ("jrnl", &["alpha", "beta"])],
            Layout::NPlusOne => vec![("a", &["alpha", "gamma"]), ("b", &["beta", "gamma"])],
        }
    }

    /// The node where `group` is active (M or SM) with every resource up.
    async fn holder(&self, group: &str) -> Option<String> {
        for node in &self.c.nodes {
            let Some(status) = self.c.status(node).await else { continue };
            if status.groups.iter().any(|g| {
                g.name == group && matches!(g.role.as_str(), "M" | "SM") && g.resources.iter().all(|r| r.state == "up")
            }) {
                return Some(node.clone());
            }
        }
        None
    }

    /// Polls (restarting nodes that stopped) until every group is active somewhere with
    /// its resources up, its probe got 20 new answers from that node, the client 20 new
    /// acknowledgements, and every node of every group has rejoined (M, SM or SL).
    async fn recover(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + RECOVER;
        let base: Vec<usize> = self.served.iter().map(|s| s.probe.samples().len()).collect();
        let acked = self.client.as_ref().map(|c| c.snapshot().acked.len()).unwrap_or(0);
        loop {
            self.restart_stopped();
            let mut missing = Vec::new();
            for (s, base) in self.served.iter().zip(&base) {
                match self.holder(&s.name).await {
                    None => missing.push(format!("{} active nowhere", s.name)),
                    Some(node) => {
                        let fresh =
                            s.probe.samples()[*base..].iter().filter(|it| it.node.as_deref() == Some(&node)).count();
                        if fresh < 20 {
                            missing.push(format!("{} on {node}: {fresh} fresh answers", s.name));
                        }
                    }
                }
            }
            for (group, members) in self.groups() {
                for node in members {
                    let role = self
                        .c
                        .status(node)
                        .await
                        .and_then(|st| st.groups.iter().find(|g| g.name == group).map(|g| g.role.clone()));
                    if !matches!(role.as_deref(), Some("M" | "SM" | "SL")) {
                        missing.push(format!("{group} on {node}: role {role:?}"));
                    }
                }
            }
            if let Some(client) = &self.client {
                if self.holder("jrnl").await.is_none() {
                    missing.push("jrnl active nowhere".into());
                }
                let now = client.snapshot().acked.len();
                if now < acked + 20 {
                    missing.push(format!("jrnl: {} new acknowledgements", now - acked));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(missing.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The properties, after recovery; one message per violation.
    async fn check(&self, out: &mut Outcome) -> Vec<String> {
        let mut violations = Vec::new();
        for s in &self.served {
            match serving_overlaps(&s.records) {
                Ok((_, 0)) => {}
                Ok((_, n)) => violations.push(format!("{}: {n} overlapping serving intervals", s.name)),
                Err(e) => violations.push(format!("{}: the service's records: {e:#}", s.name)),
            }
            out.answered += s.probe.answered().len();
        }
        if self.layout != Layout::Two {
            return violations;
        }
        // The journal: every acknowledged record is in the active node's journal.
        if let Some(client) = &self.client {
            let acked = client.snapshot().acked;
            out.acked = acked.len();
            match self.holder("jrnl").await {
                None => violations.push("jrnl: no active node to read the journal from".into()),
                Some(node) => match self.journal(&node, "jrnl").await {
                    Err(e) => violations.push(format!("jrnl: reading {node}'s journal: {e}")),
                    Ok(held) => {
                        let lost: Vec<&String> = acked.keys().filter(|it| !held.contains(*it)).collect();
                        if !lost.is_empty() {
                            violations.push(format!(
                                "jrnl: {} acknowledged records lost from {node}'s journal, e.g. {:?}",
                                lost.len(),
                                &lost[..lost.len().min(5)]
                            ));
                        }
                    }
                },
            }
        }
        // The shared filesystem and the disk's reservation, where web runs now.
        let web = &self.served[0];
        match self.holder("web").await {
            None => violations.push("web: active nowhere at the check".into()),
            Some(node) => {
                let mnt = self.c.dir.join(&node).join("mnt").join("served.log");
                match std::fs::read_to_string(&mnt) {
                    Err(e) => violations.push(format!("web: {}: {e}", mnt.display())),
                    Ok(text) => {
                        let kept: BTreeSet<u64> = text.lines().filter_map(|it| it.parse().ok()).collect();
                        let lost: Vec<u64> =
                            web.probe.answered().keys().filter(|seq| !kept.contains(seq)).copied().collect();
                        if !lost.is_empty() {
                            violations.push(format!(
                                "web: {} answered requests missing from the shared filesystem, e.g. {:?}",
                                lost.len(),
                                &lost[..lost.len().min(5)]
                            ));
                        }
                    }
                }
                let disk = self.disk.as_ref().expect("the shared disk");
                match takeover_agent::resources::disk::read_owner(&disk.paths[&node]) {
                    Ok(Some(owner)) if owner.node == node => {}
                    Ok(other) => {
                        violations.push(format!("web runs on {node} but the disk's reservation says {other:?}"))
                    }
                    Err(e) => violations.push(format!("web: reading the reservation: {e}")),
                }
            }
        }
        violations
    }

    async fn journal(&self, node: &str, group: &str) -> Result<BTreeSet<String>, String> {
        let mut held = BTreeSet::new();
        let mut from = 1;
        loop {
            let page = self.c.api(node).read(group, from, 10_000).await.map_err(|e| format!("{e:?}"))?;
            let Some(last) = page.records.last() else { break };
            from = last.index + 1;
            for r in &page.records {
                let bytes = r.payload_bytes().ok_or("a payload that is not base64")?;
                held.insert(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        Ok(held)
    }
}
