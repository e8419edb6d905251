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
use std::time::Duration;

use anyhow::{Context, bail};
use takeover_agent::api::StatusDoc;
use takeover_agent::localnet::{AppClient, LocalCluster, Spec, serving_overlaps};
use tokio::time::Instant;

const GROUP: &str = "journal";
const WAIT: Duration = Duration::from_secs(15);

struct Demo {
    cluster: LocalCluster,
    apps: BTreeMap<String, SocketAddr>,
    client: Option<AppClient>,
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
    let (spec, apps) = Spec::demo_service("demo", GROUP, &binary, &dir.join("app-records.log"))?;
    let cluster = LocalCluster::create(dir, &binary, &spec).await?;
    println!(
        "demo: two agents, alpha and beta, on loopback; link 0 runs through a relay on 127.0.0.3 that the demo can cut, link 1 is direct"
    );
    println!(
        "      heartbeat every 100ms, a peer is failed after 500ms of silence on every link, fencing by powering the node off; files in {}",
        dir.display()
    );
    let mut demo =
        Demo { cluster, apps, client: None, started: Instant::now(), problems: Vec::new(), step: 0, takeover_ms: None };
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

    /// Waits until `node` reports why it waits (alone, or [1 1]).
    async fn wait_waiting(&self, node: &str) -> anyhow::Result<StatusDoc> {
        self.cluster
            .wait_for(node, WAIT, &format!("{node} to wait"), |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await
    }

    /// Waits until an SL holds as many records as its active and the active is M.
    async fn wait_synced(&self, active: &str, sl: &str) -> anyhow::Result<Duration> {
        let since = Instant::now();
        self.wait_role(sl, "SL").await?;
        self.wait_role(active, "M").await?;
        Ok(since.elapsed())
    }

    fn acks(&self) -> usize {
        self.client.as_ref().map_or(0, |it| it.acks())
    }

    fn client(&self) -> &AppClient {
        self.client.as_ref().expect("the client runs from step 1")
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
        self.client = Some(AppClient::start(self.apps.clone(), "demo", Duration::from_millis(10)));
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
        let status = self.wait_waiting("alpha").await?;
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
        let status = self.wait_waiting("beta").await?;
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
        let status = self.wait_waiting("alpha").await?;
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
        self.wait_waiting("alpha").await?;
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
        self.client().wait_acks(n, WAIT).await
    }

    async fn wait_first_ack_after(&self, node: &str, since: Instant) -> anyhow::Result<Instant> {
        self.client().first_ack_after(node, since, WAIT).await
    }

    /// Counts acknowledged records found in the final journal, lost, and discarded by
    /// force start; checks the service's serving intervals for overlap.
    async fn summary(&mut self, dir: &Path) -> anyhow::Result<(usize, usize, usize)> {
        let acked = self.client.take().map(|it| it.snapshot().acked).unwrap_or_default();
        let mut held: BTreeSet<String> = BTreeSet::new();
        for node in ["alpha", "beta"] {
            let active = self.cluster.role(node, GROUP).await.is_some_and(|role| role == "M" || role == "SM");
            if active {
                held.extend(self.cluster.journal_payloads(node, GROUP).await?);
            }
        }
        let forced = self.cluster.force_start_quarantine(GROUP);
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
