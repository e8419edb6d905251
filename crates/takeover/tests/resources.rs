//! Service groups with real resources in network namespaces (issue 5; root only, they run
//! in CI): a shared disk (one image file, one loop device per node), its ext4 filesystem,
//! a virtual IP on the nodes' link 0, and the probe service in its own cgroup, answering
//! the client through the virtual IP and writing every answered request durably on the
//! shared filesystem. OCF agents from Debian's resource-agents run in groups too.
//!
//! Tests judge from what the client saw (answers through the VIP, its neighbour table),
//! from the shared filesystem (every answered request is on it after a move) and from the
//! service's own CLOCK_MONOTONIC records (no two instances ran at once).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::groups::{PORT, light_group, vip, web_group};
use common::netcluster::{Fencing, NetCluster, root_or_skip};
use common::shared::{Probe, SharedDisk, client_neighbour, has_address, mac, mounted};
use takeover_agent::api::{GroupDoc, StatusDoc};
use takeover_agent::localnet::serving_overlaps;

/// Clusters run one at a time: they share two cores and their timing must stay honest.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(30);

fn group<'a>(status: &'a StatusDoc, name: &str) -> &'a GroupDoc {
    status.groups.iter().find(|it| it.name == name).unwrap_or_else(|| panic!("no group {name} in {status:?}"))
}

fn events(status: &StatusDoc) -> String {
    status.events.iter().map(|e| format!("+{} ms {}", e.t_ms, e.text)).collect::<Vec<_>>().join("\n")
}

struct WebCluster {
    c: NetCluster,
    _disk: SharedDisk,
    slot: u8,
}

impl WebCluster {
    /// alpha and beta running group `web` (alpha preferred), up as (M, SL).
    async fn up(prefix: &str, slot: u8, extra: &str) -> WebCluster {
        WebCluster::up_with(prefix, slot, extra, "", |_| String::new()).await
    }

    /// As `up`, with `app_extra` added to the app's table and `more` (further groups) to
    /// the configuration.
    async fn up_with(
        prefix: &str,
        slot: u8,
        extra: &str,
        app_extra: &str,
        more: impl Fn(&Path) -> String,
    ) -> WebCluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let nodes = ["alpha", "beta"];
        let disk = SharedDisk::create(&dir, &nodes);
        let mounts: BTreeMap<String, Vec<PathBuf>> =
            nodes.iter().map(|n| (n.to_string(), vec![dir.join(n).join("mnt")])).collect();
        let groups = web_group("web", nodes, &disk, &dir, slot, extra, app_extra) + &more(&dir);
        let mut c = NetCluster::create_with(prefix, slot, Fencing::PowerOff, tmp, &nodes, "web", &groups, &mounts);
        c.start("alpha");
        c.start("beta");
        c.wait_role("beta", "SL").await;
        c.wait_role("alpha", "M").await;
        let w = WebCluster { c, _disk: disk, slot };
        w.wait_all_up("alpha", "web").await;
        w
    }

    fn vip(&self) -> Ipv4Addr {
        vip(self.slot, 0)
    }

    fn mnt(&self, node: &str) -> PathBuf {
        self.c.dir.join(node).join("mnt")
    }

    fn probe(&self) -> Probe {
        Probe::start(&self.c.bed, SocketAddrV4::new(self.vip(), PORT), Duration::from_millis(5))
    }

    /// Every resource of `group` up on `node`, and its last move (if any) finished.
    async fn wait_all_up(&self, node: &str, name: &str) -> StatusDoc {
        let name2 = name.to_string();
        self.c
            .wait_for(node, WAIT, &format!("every resource of {name} up"), move |s| {
                s.groups.iter().any(|g| {
                    g.name == name2
                        && !g.resources.is_empty()
                        && g.resources.iter().all(|r| r.state == "up")
                        && g.last_move.is_some()
                })
            })
            .await;
        self.c.status(node).await.unwrap()
    }

    fn context(&self) -> String {
        self.c.logs()
    }

    /// What the service answered is all on the shared filesystem, read where it is
    /// mounted now (`node`).
    fn check_answers_kept(&self, probe: &Probe, node: &str) -> usize {
        // Answers first: the probe keeps asking, and one answered after the file was read
        // would look lost.
        let answered = probe.answered();
        let served = std::fs::read_to_string(self.mnt(node).join("served.log")).expect("served.log on the shared fs");
        let kept: std::collections::BTreeSet<u64> = served.lines().filter_map(|it| it.parse().ok()).collect();
        let lost: Vec<u64> = answered.keys().filter(|seq| !kept.contains(seq)).copied().collect();
        assert!(lost.is_empty(), "answered requests missing from the shared filesystem: {lost:?}\n{}", self.context());
        let (_, overlaps) = serving_overlaps(&self.c.dir.join("app-records.log")).expect("the service's records");
        assert_eq!(overlaps, 0, "two service instances ran at overlapping times\n{}", self.context());
        answered.len()
    }
}

#[tokio::test]
async fn kill_9_of_the_active_moves_disk_mount_address_and_process_and_the_client_follows() {
    if !root_or_skip("kill_9_of_the_active_moves_disk_mount_address_and_process_and_the_client_follows") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut w = WebCluster::up("trkill", 20, "").await;
    assert!(has_address(&w.c.bed, "alpha", w.vip()) && !has_address(&w.c.bed, "beta", w.vip()));
    assert!(mounted(&w.mnt("alpha")) && !mounted(&w.mnt("beta")));
    let probe = w.probe();
    probe.wait_answers_from("alpha", 100, WAIT, || w.context()).await;
    assert_eq!(client_neighbour(&w.c.bed, w.vip()), Some(mac(&w.c.bed, "alpha")));

    // kill -9 of alpha's agent: its process dies with it; beta fences alpha (power-off:
    // links down, processes killed, its filesystem stops writing) and takes over.
    w.c.kill_agent("alpha");
    let status = w.wait_all_up("beta", "web").await;
    // The announcement moved the client at once: its neighbour entry names beta.
    assert_eq!(client_neighbour(&w.c.bed, w.vip()), Some(mac(&w.c.bed, "beta")), "{}", w.context());
    probe.wait_answers_from("beta", 100, WAIT, || w.context()).await;
    let web = group(&status, "web");
    assert_eq!(web.role, "SM");
    assert!(has_address(&w.c.bed, "beta", w.vip()) && mounted(&w.mnt("beta")) && !mounted(&w.mnt("alpha")));
    // alpha's guard saw its agent die and cut alpha off the shared filesystem itself (before
    // any fence: the same protection for a node that stops itself, as with storage fencing).
    let log = std::fs::read_to_string(w.c.dir.join("alpha.agent.log")).unwrap();
    let cut = format!("takeover guard: cut off {} (shut down, detached)", w.mnt("alpha").display());
    assert!(log.contains(&cut), "no `{cut}` in alpha's log\n{}", w.context());

    // Step timings of the takeover, in status and in the event log.
    let last = web.last_move.as_ref().expect("the takeover's steps");
    assert_eq!((last.what.as_str(), last.outcome.as_str()), ("takeover", "done"), "{last:?}");
    let steps: Vec<&str> = last.steps.iter().map(|it| it.step.as_str()).collect();
    for step in [
        "fence delay",
        "fence",
        "become active",
        "disk data start",
        "mount fs start",
        "vip ip start",
        "process app start",
    ] {
        assert!(steps.contains(&step), "step {step} missing from {steps:?}");
    }
    assert!(steps.iter().any(|it| it.starts_with("first monitor")), "{steps:?}");
    assert!(events(&status).contains("takeover done in"), "{}", events(&status));

    let answered = w.check_answers_kept(&probe, "beta");
    let outage = probe.longest_outage();
    assert_eq!(probe.answer_sequence(), ["alpha", "beta"], "the client saw alpha, then beta only");
    println!(
        "kill -9 takeover: {answered} requests answered, client outage {} ms, takeover {} ms: {}",
        outage.as_millis(),
        last.total_ms,
        last.steps.iter().map(|s| format!("{} {} ms", s.step, s.ms)).collect::<Vec<_>>().join(", ")
    );
}

#[tokio::test]
async fn a_failed_monitor_restarts_the_resource_in_place() {
    if !root_or_skip("a_failed_monitor_restarts_the_resource_in_place") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let w = WebCluster::up("trmon", 21, "").await;
    let probe = w.probe();
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    let pid = app_pid(&w.c, "alpha", PORT);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The monitor notices, the process alone restarts (nothing below it), alpha keeps
    // the group and beta stays SL.
    w.c.wait_for("alpha", WAIT, "the app's failure counted", |s| {
        s.groups.iter().any(|g| g.resources.iter().any(|r| r.name == "app" && r.failures == 1 && r.state == "up"))
    })
    .await;
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    assert_ne!(app_pid(&w.c, "alpha", PORT), pid, "a new instance runs");
    assert_eq!(w.c.role("alpha").await.as_deref(), Some("M"));
    assert_eq!(w.c.role("beta").await.as_deref(), Some("SL"));
    let status = w.c.status("alpha").await.unwrap();
    let web = group(&status, "web");
    for r in &web.resources {
        let expected = if r.name == "app" { 1 } else { 0 };
        assert_eq!(r.failures, expected, "{r:?}");
    }
    assert!(events(&status).contains("restarting it in place"), "{}", events(&status));
    assert!(mounted(&w.mnt("alpha")) && has_address(&w.c.bed, "alpha", w.vip()), "the disk, mount and address stayed");
    // Shown by `takeover status`, cleared by `takeover cleanup`.
    let (code, out) = cli(&w.c, &["status", "--node", "alpha"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.lines().any(|l| l.contains("app") && l.contains("process") && l.contains("failures 1/3")), "{out}");
    let (code, out) = cli(&w.c, &["cleanup", "web", "--node", "alpha"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("cleared:"), "{out}");
    let status = w.c.status("alpha").await.unwrap();
    assert!(group(&status, "web").resources.iter().all(|r| r.failures == 0));
    assert_eq!(probe.answer_sequence(), ["alpha"]);
    w.check_answers_kept(&probe, "alpha");
}

/// Runs `takeover ARGS --config <the cluster's file>`: its exit code and stdout + stderr.
fn cli(c: &NetCluster, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(&c.binary).args(args).arg("--config").arg(&c.config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The pid of the probe service of `node` answering on `port`.
fn app_pid(c: &NetCluster, node: &str, port: u16) -> i32 {
    let pids = c.bed.pids(node).unwrap();
    let port = port.to_string();
    *pids
        .iter()
        .find(|&&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|it| {
                let text = String::from_utf8_lossy(&it).into_owned();
                let args: Vec<&str> = text.split('\0').collect();
                args.contains(&"probe-app") && args.windows(2).any(|w| w == ["--port", port.as_str()])
            })
        })
        .unwrap_or_else(|| panic!("no probe-app on port {port} among {pids:?} in {node}"))
}

#[tokio::test]
async fn switchover_stops_in_reverse_then_starts_on_the_peer() {
    if !root_or_skip("switchover_stops_in_reverse_then_starts_on_the_peer") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let w = WebCluster::up("trswit", 22, "").await;
    let probe = w.probe();
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    // Refused on the standby, and towards a node that does not run the group.
    let refused = w.c.api("beta").switchover("web", None).await.unwrap();
    assert_eq!(refused.outcome, "refused", "{refused:?}");
    assert!(w.c.api("alpha").switchover("web", Some("gamma")).await.is_err());

    // The operator's command, as typed.
    let (code, out) = cli(&w.c, &["switchover", "web", "--to", "beta", "--node", "alpha"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("moving:"), "{out}");
    let status = w.wait_all_up("beta", "web").await;
    probe.wait_answers_from("beta", 50, WAIT, || w.context()).await;
    assert_eq!(client_neighbour(&w.c.bed, w.vip()), Some(mac(&w.c.bed, "beta")));
    assert!(!has_address(&w.c.bed, "alpha", w.vip()) && !mounted(&w.mnt("alpha")));
    w.c.wait_role("alpha", "SL").await;
    w.c.wait_role("beta", "M").await;
    let last = group(&status, "web").last_move.clone().unwrap();
    assert_eq!(last.what, "switchover (arriving)", "{last:?}");
    // On alpha the stop steps ran in reverse order.
    let alpha = w.c.status("alpha").await.unwrap();
    let left = group(&alpha, "web").last_move.clone().expect("alpha's side of the switchover");
    assert_eq!(left.outcome, "handed over", "{left:?}");
    let stops: Vec<&str> = left.steps.iter().map(|it| it.step.as_str()).collect();
    assert_eq!(stops, ["process app stop", "vip ip stop", "mount fs stop", "disk data stop"], "{left:?}");
    // No fence for a switchover.
    assert!(!events(&status).contains("fencing"), "{}", events(&status));
    assert_eq!(probe.answer_sequence(), ["alpha", "beta"]);
    let answered = w.check_answers_kept(&probe, "beta");
    println!(
        "switchover: {answered} answered, client outage {} ms; stop {} ms ({}), start {} ms",
        probe.longest_outage().as_millis(),
        left.total_ms,
        left.steps.iter().map(|s| format!("{} {} ms", s.step, s.ms)).collect::<Vec<_>>().join(", "),
        last.total_ms
    );
}

/// What a group's status says, in one line for assertion messages.
fn brief(status: &StatusDoc, name: &str) -> String {
    let g = group(status, name);
    let resources: Vec<String> =
        g.resources.iter().map(|r| format!("{}={} failures {}", r.name, r.state, r.failures)).collect();
    format!(
        "{name}: role {} failed {} peer_failed {} moving {:?} [{}] last move {:?}",
        g.role,
        g.failed,
        g.peer_failed,
        g.moving,
        resources.join(", "),
        g.last_move.as_ref().map(|m| (&m.what, &m.outcome))
    )
}

/// Every resource of `name` up on `node` and its last move finished as `what`.
async fn wait_group_up(c: &NetCluster, node: &str, name: &str, what: &str) -> StatusDoc {
    let (name2, what2) = (name.to_string(), what.to_string());
    c.wait_for(node, WAIT, &format!("{name} up on {node} after a {what}"), move |s| {
        s.groups.iter().any(|g| {
            g.name == name2
                && !g.resources.is_empty()
                && g.resources.iter().all(|r| r.state == "up")
                && g.last_move.as_ref().is_some_and(|m| m.what == what2 && m.outcome == "done")
        })
    })
    .await;
    c.status(node).await.unwrap()
}

#[tokio::test]
async fn repeated_failures_move_only_the_failing_group() {
    if !root_or_skip("repeated_failures_move_only_the_failing_group") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 23;
    let w = WebCluster::up_with("trrep", slot, "", "max_restarts = 1", |dir| {
        light_group("side", &["alpha", "beta"], dir, slot, 1, PORT + 1, "")
    })
    .await;
    wait_group_up(&w.c, "alpha", "side", "start").await;
    let probe = w.probe();
    let side = Probe::start(&w.c.bed, SocketAddrV4::new(vip(slot, 1), PORT + 1), Duration::from_millis(5));
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    side.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    let side_pid = app_pid(&w.c, "alpha", PORT + 1);
    let side_before = group(&w.c.status("alpha").await.unwrap(), "side").last_move.clone();

    // First failure of web's app: restarted in place (max_restarts = 1).
    let kill = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    kill(app_pid(&w.c, "alpha", PORT)).unwrap();
    w.c.wait_for("alpha", WAIT, "web's app restarted once", |s| {
        s.groups.iter().any(|g| {
            g.name == "web" && g.resources.iter().any(|r| r.name == "app" && r.failures == 1 && r.state == "up")
        })
    })
    .await;
    probe.wait_answers_from("alpha", 20, WAIT, || w.context()).await;
    // Second failure within the window: web moves to beta; side stays on alpha.
    kill(app_pid(&w.c, "alpha", PORT)).unwrap();
    let status = wait_group_up(&w.c, "beta", "web", "failover after a failed resource (arriving)").await;
    probe.wait_answers_from("beta", 50, WAIT, || w.context()).await;
    assert!(group(&status, "web").peer_failed, "{}", brief(&status, "web"));
    // alpha keeps the count of the failures (until `cleanup`) and will not take web back.
    let alpha = w.c.status("alpha").await.unwrap();
    let app = group(&alpha, "web").resources.iter().find(|r| r.name == "app").unwrap();
    assert_eq!((app.failures, app.state.as_str()), (2, "down"), "{}", brief(&alpha, "web"));
    assert_eq!(group(&alpha, "web").role, "SL", "{}", brief(&alpha, "web"));
    assert!(!mounted(&w.mnt("alpha")) && mounted(&w.mnt("beta")));
    assert!(!has_address(&w.c.bed, "alpha", w.vip()) && has_address(&w.c.bed, "beta", w.vip()));

    // side: same process, same role, no failure, no move, answers from alpha only.
    side.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    assert_eq!(app_pid(&w.c, "alpha", PORT + 1), side_pid, "side's service was restarted");
    assert_eq!(group(&alpha, "side").role, "M", "{}", brief(&alpha, "side"));
    assert!(group(&alpha, "side").resources.iter().all(|r| r.failures == 0 && r.state == "up"));
    assert_eq!(group(&alpha, "side").last_move, side_before, "side moved");
    assert_eq!(side.answer_sequence(), ["alpha"]);
    assert_eq!(probe.answer_sequence(), ["alpha", "beta"]);
    let answered = w.check_answers_kept(&probe, "beta");
    println!(
        "failover after repeated failures: {answered} answered, web outage {} ms; side's longest gap {} ms",
        probe.longest_outage().as_millis(),
        side.longest_outage().as_millis()
    );
}

#[tokio::test]
async fn automatic_failback_returns_the_group_when_the_preferred_node_is_back() {
    if !root_or_skip("automatic_failback_returns_the_group_when_the_preferred_node_is_back") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut w = WebCluster::up("trfb", 24, "failback = \"auto\"\nfailback_delay = \"1s\"").await;
    let probe = w.probe();
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    w.c.kill_agent("alpha");
    wait_group_up(&w.c, "beta", "web", "takeover").await;
    probe.wait_answers_from("beta", 50, WAIT, || w.context()).await;
    // alpha comes back (its namespace was powered off by the fence): it joins as SL, and
    // after failback_delay the group returns to it by a switchover (no fence).
    w.c.power_on_and_start("alpha");
    let status = wait_group_up(&w.c, "alpha", "web", "failback (arriving)").await;
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    w.c.wait_role("beta", "SL").await;
    assert_eq!(group(&status, "web").role, "M", "{}", brief(&status, "web"));
    assert!(mounted(&w.mnt("alpha")) && !mounted(&w.mnt("beta")));
    assert_eq!(client_neighbour(&w.c.bed, w.vip()), Some(mac(&w.c.bed, "alpha")));
    let beta = w.c.status("beta").await.unwrap();
    let left = group(&beta, "web").last_move.clone().unwrap();
    assert_eq!((left.what.as_str(), left.outcome.as_str()), ("failback (leaving)", "handed over"), "{left:?}");
    assert_eq!(probe.answer_sequence(), ["alpha", "beta", "alpha"]);
    let answered = w.check_answers_kept(&probe, "alpha");
    let back = group(&status, "web").last_move.clone().unwrap();
    println!(
        "failback: {answered} answered, longest client outage {} ms, failback stop {} ms + start {} ms",
        probe.longest_outage().as_millis(),
        left.total_ms,
        back.total_ms
    );
}

#[tokio::test]
async fn symmetric_groups_a_failure_moves_one_and_leaves_the_survivors_group_alone() {
    if !root_or_skip("symmetric_groups_a_failure_moves_one_and_leaves_the_survivors_group_alone") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 25;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let groups = light_group("left", &["alpha", "beta"], &dir, slot, 0, PORT, "")
        + &light_group("right", &["beta", "alpha"], &dir, slot, 1, PORT + 1, "");
    let nodes = ["alpha", "beta"];
    let mut c =
        NetCluster::create_with("trsym", slot, Fencing::PowerOff, tmp, &nodes, "left", &groups, &BTreeMap::new());
    c.start("alpha");
    c.start("beta");
    wait_group_up(&c, "alpha", "left", "start").await;
    wait_group_up(&c, "beta", "right", "start").await;
    c.wait_group_role("beta", "left", "SL").await;
    c.wait_group_role("alpha", "right", "SL").await;
    let left = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    let right = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 1), PORT + 1), Duration::from_millis(5));
    left.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    right.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    let right_pid = app_pid(&c, "beta", PORT + 1);
    let right_before = group(&c.status("beta").await.unwrap(), "right").last_move.clone();

    c.kill_agent("alpha");
    let status = wait_group_up(&c, "beta", "left", "takeover").await;
    left.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    right.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    // right lost its standby (SM now) but its service ran on undisturbed.
    assert_eq!(group(&status, "right").role, "SM", "{}", brief(&status, "right"));
    assert_eq!(group(&status, "right").last_move, right_before, "right moved: {}", brief(&status, "right"));
    assert!(group(&status, "right").resources.iter().all(|r| r.failures == 0 && r.state == "up"));
    assert_eq!(app_pid(&c, "beta", PORT + 1), right_pid, "right's service was restarted");
    assert_eq!(left.answer_sequence(), ["alpha", "beta"]);
    assert_eq!(right.answer_sequence(), ["beta"]);
    for name in ["left", "right"] {
        let (_, overlaps) = serving_overlaps(&c.dir.join(format!("{name}-records.log"))).unwrap();
        assert_eq!(overlaps, 0, "{name}: two instances at once\n{}", c.logs());
    }
    println!(
        "symmetric: left outage {} ms (takeover {} ms), right's longest gap {} ms",
        left.longest_outage().as_millis(),
        group(&status, "left").last_move.as_ref().unwrap().total_ms,
        right.longest_outage().as_millis()
    );
}

#[tokio::test]
async fn n_plus_one_the_shared_standby_takes_each_failed_nodes_group() {
    if !root_or_skip("n_plus_one_the_shared_standby_takes_each_failed_nodes_group") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 26;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let groups = light_group("a", &["alpha", "gamma"], &dir, slot, 0, PORT, "")
        + &light_group("b", &["beta", "gamma"], &dir, slot, 1, PORT + 1, "");
    let nodes = ["alpha", "beta", "gamma"];
    let mut c = NetCluster::create_with("trn1", slot, Fencing::PowerOff, tmp, &nodes, "a", &groups, &BTreeMap::new());
    for node in nodes {
        c.start(node);
    }
    wait_group_up(&c, "alpha", "a", "start").await;
    wait_group_up(&c, "beta", "b", "start").await;
    c.wait_group_role("gamma", "a", "SL").await;
    c.wait_group_role("gamma", "b", "SL").await;
    let a = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    let b = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 1), PORT + 1), Duration::from_millis(5));
    a.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    b.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    let b_pid = app_pid(&c, "beta", PORT + 1);

    // alpha fails: gamma takes a, b stays on beta untouched.
    c.kill_agent("alpha");
    wait_group_up(&c, "gamma", "a", "takeover").await;
    a.wait_answers_from("gamma", 50, WAIT, || c.logs()).await;
    b.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    assert_eq!(app_pid(&c, "beta", PORT + 1), b_pid, "b's service was restarted");
    assert_eq!(c.status("beta").await.map(|s| group(&s, "b").role.clone()).as_deref(), Some("M"));
    assert_eq!(b.answer_sequence(), ["beta"]);

    // beta fails too: gamma holds both groups.
    c.kill_agent("beta");
    let status = wait_group_up(&c, "gamma", "b", "takeover").await;
    b.wait_answers_from("gamma", 50, WAIT, || c.logs()).await;
    a.wait_answers_from("gamma", 20, WAIT, || c.logs()).await;
    assert_eq!(group(&status, "a").role, "SM", "{}", brief(&status, "a"));
    assert_eq!(group(&status, "b").role, "SM", "{}", brief(&status, "b"));
    assert_eq!(a.answer_sequence(), ["alpha", "gamma"]);
    assert_eq!(b.answer_sequence(), ["beta", "gamma"]);
    for name in ["a", "b"] {
        let (_, overlaps) = serving_overlaps(&c.dir.join(format!("{name}-records.log"))).unwrap();
        assert_eq!(overlaps, 0, "{name}: two instances at once\n{}", c.logs());
    }
    println!(
        "N+1: a outage {} ms, b outage {} ms on gamma",
        a.longest_outage().as_millis(),
        b.longest_outage().as_millis()
    );
}

#[tokio::test]
async fn ocf_agents_in_a_group_switch_over_and_take_over() {
    if !root_or_skip("ocf_agents_in_a_group_switch_over_and_take_over") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 27;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let nodes = ["alpha", "beta"];
    let disk = SharedDisk::create(&dir, &nodes);
    let mnt = |node: &str| dir.join(node).join("mnt");
    for node in nodes {
        std::fs::create_dir_all(mnt(node)).unwrap();
    }
    let binary = env!("CARGO_BIN_EXE_takeover");
    // Debian's heartbeat agents, run unchanged: Filesystem mounts the shared disk, IPaddr2
    // adds the address (and announces it), Dummy keeps its state on the new filesystem.
    let groups = format!(
        r#"
[[group]]
name = "web"
nodes = ["alpha", "beta"]

[[group.resource]]
name = "fs"
type = "ocf"
agent = "heartbeat/Filesystem"
params = {{ device = {devices}, directory = {{ alpha = "{ma}", beta = "{mb}" }}, fstype = "ext4" }}
monitor_interval = "2s"

[[group.resource]]
name = "ip"
type = "ocf"
agent = "heartbeat/IPaddr2"
params = {{ ip = "{vip}", cidr_netmask = "24", nic = "eth0" }}
monitor_interval = "2s"

[[group.resource]]
name = "marker"
type = "ocf"
agent = "heartbeat/Dummy"
params = {{ state = {{ alpha = "{ma}/dummy.state", beta = "{mb}/dummy.state" }} }}
monitor_interval = "2s"

[[group.resource]]
name = "app"
type = "process"
command = ["{binary}", "probe-app", "--port", "{PORT}", "--data", "{dir}/{{node}}/mnt", "--record", "{dir}/app-records.log"]
monitor_interval = "500ms"
stop_timeout = "4s"
"#,
        devices = disk.per_node(),
        ma = mnt("alpha").display(),
        mb = mnt("beta").display(),
        vip = vip(slot, 0),
        dir = dir.display(),
    );
    let mounts: BTreeMap<String, Vec<PathBuf>> = nodes.iter().map(|n| (n.to_string(), vec![mnt(n)])).collect();
    let mut c = NetCluster::create_with("trocf", slot, Fencing::PowerOff, tmp, &nodes, "web", &groups, &mounts);
    c.start("alpha");
    c.start("beta");
    wait_group_up(&c, "alpha", "web", "start").await;
    c.wait_role("beta", "SL").await;
    let probe = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    assert!(mounted(&mnt("alpha")) && mnt("alpha").join("dummy.state").exists());

    // Switchover: the agents stop in reverse order on alpha, start on beta.
    let answer = c.api("alpha").switchover("web", None).await.unwrap();
    assert_eq!(answer.outcome, "moving", "{answer:?}");
    wait_group_up(&c, "beta", "web", "switchover (arriving)").await;
    probe.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    assert!(!mounted(&mnt("alpha")) && mounted(&mnt("beta")) && mnt("beta").join("dummy.state").exists());
    assert!(!has_address(&c.bed, "alpha", vip(slot, 0)));
    let alpha = c.status("alpha").await.unwrap();
    let stops: Vec<String> =
        group(&alpha, "web").last_move.as_ref().unwrap().steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(stops, ["process app stop", "ocf marker stop", "ocf ip stop", "ocf fs stop"]);
    c.wait_role("alpha", "SL").await;

    // kill -9 of beta's agent: alpha fences it and the agents start there again.
    c.kill_agent("beta");
    let status = wait_group_up(&c, "alpha", "web", "takeover").await;
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    assert!(mounted(&mnt("alpha")) && !mounted(&mnt("beta")));
    assert_eq!(probe.answer_sequence(), ["alpha", "beta", "alpha"]);
    let answered = probe.answered(); // before the file: the probe keeps asking
    let served = std::fs::read_to_string(mnt("alpha").join("served.log")).unwrap();
    let kept: std::collections::BTreeSet<u64> = served.lines().filter_map(|it| it.parse().ok()).collect();
    let lost: Vec<u64> = answered.keys().filter(|it| !kept.contains(it)).copied().collect();
    assert!(lost.is_empty(), "answered but not on the shared filesystem: {lost:?}\n{}", c.logs());
    let (_, overlaps) = serving_overlaps(&c.dir.join("app-records.log")).unwrap();
    assert_eq!(overlaps, 0, "{}", c.logs());
    let last = group(&status, "web").last_move.clone().unwrap();
    println!(
        "OCF group: {} answered, longest outage {} ms; takeover {} ms: {}",
        probe.answered().len(),
        probe.longest_outage().as_millis(),
        last.total_ms,
        last.steps.iter().map(|s| format!("{} {} ms", s.step, s.ms)).collect::<Vec<_>>().join(", ")
    );
    drop(c);
    drop(disk);
}

#[tokio::test]
async fn a_group_failing_on_both_nodes_ends_failed_without_flapping() {
    if !root_or_skip("a_group_failing_on_both_nodes_ends_failed_without_flapping") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 28;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let starts = dir.join("starts.log");
    // bad: a service that dies at once wherever it runs (its monitor fails);
    // nostart: Debian's Dummy agent with its state file in a missing directory, so its
    // validate-all fails (the plan shows it ahead of time) and so does every start.
    let groups = format!(
        r#"
[[group]]
name = "bad"
nodes = ["alpha", "beta"]

[[group.resource]]
name = "app"
type = "process"
command = ["/bin/sh", "-c", "echo {{node}} >> {starts}; exit 3"]
monitor_interval = "200ms"
max_restarts = 1

[[group]]
name = "nostart"
nodes = ["alpha", "beta"]

[[group.resource]]
name = "marker"
type = "ocf"
agent = "heartbeat/Dummy"
params = {{ state = "{missing}/dummy.state" }}
monitor_interval = "200ms"
"#,
        starts = starts.display(),
        missing = dir.join("missing").display(),
    );
    let nodes = ["alpha", "beta"];
    let mut c =
        NetCluster::create_with("trboth", slot, Fencing::PowerOff, tmp, &nodes, "bad", &groups, &BTreeMap::new());
    c.start("alpha");
    c.start("beta");
    // alpha: it fails (bad: start, restart, fail again), alpha hands it over to beta;
    // beta: it fails there too and no node is left to move to: failed, down, an alarm.
    for name in ["bad", "nostart"] {
        let n = name.to_string();
        let failed = move |s: &StatusDoc| s.groups.iter().any(|g| g.name == n && g.failed && g.peer_failed);
        c.wait_for("beta", WAIT, &format!("{name} failed on beta after alpha"), failed).await;
        let n = name.to_string();
        let handed = move |s: &StatusDoc| {
            s.groups.iter().any(|g| g.name == n && g.role == "SL" && g.resources.iter().all(|r| r.failures > 0))
        };
        c.wait_for("alpha", WAIT, &format!("alpha handed {name} over after its failure"), handed).await;
    }
    // The plan said so before anything ran: validate-all's reason, on both nodes.
    for node in nodes {
        let s = c.status(node).await.unwrap();
        let marker = &group(&s, "nostart").resources[0];
        assert_eq!(marker.plan_ok, Some(false), "{node}: {marker:?}");
        assert!(marker.plan.iter().any(|it| it.contains("not writable")), "{node}: {marker:?}");
    }
    let count =
        |node: &str| std::fs::read_to_string(&starts).unwrap_or_default().lines().filter(|it| *it == node).count();
    let before = (count("alpha"), count("beta"));
    assert_eq!(before, (2, 2), "bad: one start and one restart on each node\n{}", c.logs());
    let moves = |s: &StatusDoc, name: &str| group(s, name).last_move.clone();
    let (a0, b0) = (c.status("alpha").await.unwrap(), c.status("beta").await.unwrap());
    // They stay failed: nothing starts or moves again for 10 monitor intervals (2 s).
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        let (alpha, beta) = (c.status("alpha").await.unwrap(), c.status("beta").await.unwrap());
        for name in ["bad", "nostart"] {
            for (node, s) in [("alpha", &alpha), ("beta", &beta)] {
                assert!(group(s, name).resources.iter().all(|r| r.state != "up"), "{node}: {}", brief(s, name));
            }
            assert!(group(&beta, name).failed, "{}", brief(&beta, name));
            assert_eq!(group(&alpha, name).role, "SL", "{}", brief(&alpha, name));
            assert_eq!(moves(&alpha, name), moves(&a0, name), "{name} moved again");
            assert_eq!(moves(&beta, name), moves(&b0, name), "{name} moved again");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((count("alpha"), count("beta")), before, "bad was started again\n{}", c.logs());
    let (alpha, beta) = (c.status("alpha").await.unwrap(), c.status("beta").await.unwrap());
    for name in ["bad", "nostart"] {
        assert!(events(&beta).contains(&format!("ALARM: group {name}: FAILED")), "{}", events(&beta));
        println!("failed on both: alpha {} / beta {}", brief(&alpha, name), brief(&beta, name));
    }
    assert!(c.running("alpha") && c.running("beta"), "the agents keep running");

    // The operator fixes the cause and clears the failures: the group starts again.
    std::fs::create_dir(dir.join("missing")).unwrap();
    let answer = c.api("beta").cleanup("nostart").await.unwrap();
    assert_eq!(answer.outcome, "cleared", "{answer:?}");
    let up = |s: &StatusDoc| {
        s.groups.iter().any(|g| g.name == "nostart" && !g.failed && g.resources.iter().all(|r| r.state == "up"))
    };
    c.wait_for("beta", WAIT, "nostart up on beta after cleanup", up).await;
    assert!(dir.join("missing").join("dummy.state").exists());
}

#[tokio::test]
async fn a_paused_agent_is_stopped_by_its_guard_before_the_peer_takes_over() {
    if !root_or_skip("a_paused_agent_is_stopped_by_its_guard_before_the_peer_takes_over") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 29;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // A fence that says "off" and does nothing: only the guard stops alpha's service.
    let groups = light_group("web", &["alpha", "beta"], &dir, slot, 0, PORT, "") + "\n[guard]\ntimeout = \"300ms\"\n";
    let nodes = ["alpha", "beta"];
    let mut c = NetCluster::create_with("trgrd", slot, Fencing::Lying, tmp, &nodes, "web", &groups, &BTreeMap::new());
    c.start("alpha");
    c.start("beta");
    wait_group_up(&c, "alpha", "web", "start").await;
    c.wait_role("beta", "SL").await;
    let probe = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    let status = c.status("alpha").await.unwrap();
    assert!(events(&status).contains("guard: guard process"), "{}", events(&status));

    // SIGSTOP of alpha's agent alone: its service and its guard keep running.
    let agent = c.agent_pid("alpha").expect("alpha's agent");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The guard kills the agent, the service and removes the address.
    let deadline = std::time::Instant::now() + WAIT;
    while c.running("alpha") || !c.bed.pids("alpha").unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "alpha's guard did not act\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!has_address(&c.bed, "alpha", vip(slot, 0)), "alpha still holds the address");
    let log = std::fs::read_to_string(c.dir.join("alpha.agent.log")).unwrap();
    assert!(log.contains(&format!("takeover guard: the agent (pid {agent}) did not renew for")), "{log}");
    // beta takes over after the (lying) fence; the two services never overlapped.
    wait_group_up(&c, "beta", "web", "takeover").await;
    probe.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    assert_eq!(probe.answer_sequence(), ["alpha", "beta"]);
    let (instances, overlaps) = serving_overlaps(&c.dir.join("web-records.log")).unwrap();
    assert_eq!((instances, overlaps), (2, 0), "{}", c.logs());
    println!("guard: alpha's service stopped by its guard; client outage {} ms", probe.longest_outage().as_millis());
}

/// A cluster fenced only through a storage device: one small image attached per node
/// (alpha's path through a symlink the test can remove: its view of the disk dies), the
/// `web` group of an address and the probe service.
async fn storage_fenced(prefix: &str, slot: u8) -> (NetCluster, SharedDisk, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let nodes = ["alpha", "beta"];
    let sbd = SharedDisk::create_raw(&dir, "sbd.img", 1, &nodes);
    let alpha_link = dir.join("alpha-sbd");
    std::os::unix::fs::symlink(&sbd.paths["alpha"], &alpha_link).unwrap();
    let groups = light_group("web", &nodes, &dir, slot, 0, PORT, "")
        + &format!(
            "\n[storage_fence]\ndevice = {{ alpha = {:?}, beta = {:?} }}\ntimeout = \"400ms\"\nmsgwait = \"800ms\"\n",
            alpha_link.display().to_string(),
            sbd.path("beta")
        );
    let mut c = NetCluster::create_with(prefix, slot, Fencing::Storage, tmp, &nodes, "web", &groups, &BTreeMap::new());
    let (code, out) = cli(&c, &["storage-fence", "init", "--node", "beta"]);
    assert_eq!(code, Some(0), "{out}");
    c.start("alpha");
    c.start("beta");
    wait_group_up(&c, "alpha", "web", "start").await;
    c.wait_role("beta", "SL").await;
    (c, sbd, alpha_link)
}

#[tokio::test]
async fn storage_fence_a_node_that_loses_the_device_stops_and_the_peer_takes_over_after_msgwait() {
    if !root_or_skip("storage_fence_a_node_that_loses_the_device_stops_and_the_peer_takes_over_after_msgwait") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 30;
    let (mut c, _sbd, alpha_link) = storage_fenced("trsbd", slot).await;
    let probe = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    // alpha's path to the device disappears: its guard cannot read its slot, stops
    // everything after the storage timeout; beta, hearing nothing, writes the poison and
    // takes over only after msgwait.
    std::fs::remove_file(&alpha_link).unwrap();
    let status = wait_group_up(&c, "beta", "web", "takeover").await;
    assert!(!c.running("alpha"), "alpha's guard killed its agent\n{}", c.logs());
    assert!(c.bed.pids("alpha").unwrap().is_empty(), "nothing of alpha runs\n{}", c.logs());
    let log = std::fs::read_to_string(c.dir.join("alpha.agent.log")).unwrap();
    assert!(log.contains("cannot read this node's storage fence slot for"), "{log}");
    assert!(events(&status).contains("poison pill written, msgwait passed"), "{}", events(&status));
    let fence = group(&status, "web").last_move.as_ref().unwrap().steps.iter().find(|s| s.step == "fence").cloned();
    assert!(fence.as_ref().is_some_and(|f| f.ms >= 800), "the fence waited msgwait: {fence:?}");
    let (code, out) = cli(&c, &["storage-fence", "list", "--node", "beta"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.lines().any(|l| l.starts_with("0\talpha\tPOISON from beta")), "{out}");
    probe.wait_answers_from("beta", 50, WAIT, || c.logs()).await;
    assert_eq!(probe.answer_sequence(), ["alpha", "beta"]);
    let (_, overlaps) = serving_overlaps(&c.dir.join("web-records.log")).unwrap();
    assert_eq!(overlaps, 0, "{}", c.logs());

    // alpha's device is back and its agent restarts: it reports the fence, clears its
    // slot and rejoins as SL.
    std::os::unix::fs::symlink(&_sbd.paths["alpha"], &alpha_link).unwrap();
    c.start("alpha");
    c.wait_role("alpha", "SL").await;
    let alpha = c.status("alpha").await.unwrap();
    assert!(events(&alpha).contains("fenced through the storage device by beta"), "{}", events(&alpha));
    let (_, out) = cli(&c, &["storage-fence", "list", "--node", "beta"]);
    assert!(out.lines().any(|l| l.starts_with("0\talpha\tclear")), "{out}");
    println!(
        "storage fence: alpha lost the device; client outage {} ms, takeover {} ms ({})",
        probe.longest_outage().as_millis(),
        group(&status, "web").last_move.as_ref().unwrap().total_ms,
        group(&status, "web")
            .last_move
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .map(|s| format!("{} {} ms", s.step, s.ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[tokio::test]
async fn storage_fence_in_a_full_partition_the_active_poisons_the_standby_and_keeps_serving() {
    if !root_or_skip("storage_fence_in_a_full_partition_the_active_poisons_the_standby_and_keeps_serving") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let slot = 31;
    let (mut c, _sbd, _link) = storage_fenced("trsbp", slot).await;
    let probe = Probe::start(&c.bed, SocketAddrV4::new(vip(slot, 0), PORT), Duration::from_millis(5));
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    c.bed.partition_full("alpha", "beta").unwrap();
    // alpha fences at once (beta waits fence_delay): beta reads the poison and stops.
    c.wait_role("alpha", "SM").await;
    let deadline = std::time::Instant::now() + WAIT;
    while c.running("beta") {
        assert!(std::time::Instant::now() < deadline, "beta still runs\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = std::fs::read_to_string(c.dir.join("beta.agent.log")).unwrap();
    assert!(log.contains("alpha fenced this node through the storage device"), "{log}");
    let (_, out) = cli(&c, &["storage-fence", "list", "--node", "beta"]);
    assert!(out.lines().any(|l| l.starts_with("0\talpha\tclear")), "alpha was not poisoned: {out}");
    assert!(out.lines().any(|l| l.starts_with("1\tbeta\tPOISON from alpha")), "{out}");
    probe.wait_answers_from("alpha", 50, WAIT, || c.logs()).await;
    assert_eq!(probe.answer_sequence(), ["alpha"], "only alpha ever served");
    c.bed.heal().unwrap();
    println!("storage fence partition: alpha kept serving, longest gap {} ms", probe.longest_outage().as_millis());
}
