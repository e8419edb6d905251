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

use common::netcluster::{Fencing, NetCluster, root_or_skip};
use common::shared::{Probe, SharedDisk, client_neighbour, has_address, mac, mounted};
use takeover_agent::api::{GroupDoc, StatusDoc};
use takeover_agent::localnet::serving_overlaps;

/// Clusters run one at a time: they share two cores and their timing must stay honest.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 7000;

/// The virtual IP of group `n` in a bed of `slot`, on the nodes' link 0.
fn vip(slot: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 2 * slot, 100 + n)
}

fn group<'a>(status: &'a StatusDoc, name: &str) -> &'a GroupDoc {
    status.groups.iter().find(|it| it.name == name).unwrap_or_else(|| panic!("no group {name} in {status:?}"))
}

fn events(status: &StatusDoc) -> String {
    status.events.iter().map(|e| format!("+{} ms {}", e.t_ms, e.text)).collect::<Vec<_>>().join("\n")
}

/// The `[[group]]` of a full service: disk, filesystem, address, process (in this order).
fn web_group(name: &str, nodes: [&str; 2], disk: &SharedDisk, dir: &Path, slot: u8, extra: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_takeover");
    let mnt = |node: &str| dir.join(node).join("mnt").display().to_string();
    format!(
        r#"
[[group]]
name = "{name}"
nodes = ["{a}", "{b}"]
{extra}
[[group.resource]]
name = "data"
type = "disk"
device = {devices}
monitor_interval = "2s"

[[group.resource]]
name = "fs"
type = "mount"
device = {devices}
directory = {{ {a} = "{ma}", {b} = "{mb}" }}
fstype = "ext4"
monitor_interval = "2s"

[[group.resource]]
name = "ip"
type = "vip"
address = "{vip}/24"
interface = "eth0"
monitor_interval = "1s"

[[group.resource]]
name = "app"
type = "process"
command = ["{binary}", "probe-app", "--port", "{PORT}", "--data", "{dir}/{{node}}/mnt", "--record", "{dir}/app-records.log"]
monitor_interval = "500ms"
stop_timeout = "4s"
"#,
        a = nodes[0],
        b = nodes[1],
        ma = mnt(nodes[0]),
        mb = mnt(nodes[1]),
        devices = disk.per_node(),
        vip = vip(slot, 0),
        dir = dir.display(),
    )
}

struct WebCluster {
    c: NetCluster,
    _disk: SharedDisk,
    slot: u8,
}

impl WebCluster {
    /// alpha and beta running group `web` (alpha preferred), up as (M, SL).
    async fn up(prefix: &str, slot: u8, extra: &str) -> WebCluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let nodes = ["alpha", "beta"];
        let disk = SharedDisk::create(&dir, &nodes);
        let mounts: BTreeMap<String, Vec<PathBuf>> =
            nodes.iter().map(|n| (n.to_string(), vec![dir.join(n).join("mnt")])).collect();
        let groups = web_group("web", nodes, &disk, &dir, slot, extra);
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
        let served = std::fs::read_to_string(self.mnt(node).join("served.log")).expect("served.log on the shared fs");
        let kept: std::collections::BTreeSet<u64> = served.lines().filter_map(|it| it.parse().ok()).collect();
        let answered = probe.answered();
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

    // Step timings of the takeover, in status and in the event log.
    let last = web.last_move.as_ref().expect("the takeover's steps");
    assert_eq!((last.what.as_str(), last.outcome.as_str()), ("takeover", "done"), "{last:?}");
    let steps: Vec<&str> = last.steps.iter().map(|it| it.step.as_str()).collect();
    for step in ["fence wait", "disk data start", "mount fs start", "vip ip start", "process app start"] {
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
    let pid = app_pid(&w.c, "alpha");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The monitor notices, the process alone restarts (nothing below it), alpha keeps
    // the group and beta stays SL.
    w.c.wait_for("alpha", WAIT, "the app's failure counted", |s| {
        s.groups.iter().any(|g| g.resources.iter().any(|r| r.name == "app" && r.failures == 1 && r.state == "up"))
    })
    .await;
    probe.wait_answers_from("alpha", 50, WAIT, || w.context()).await;
    assert_ne!(app_pid(&w.c, "alpha"), pid, "a new instance runs");
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
    // Cleared by the operator's command.
    let answer = w.c.api("alpha").cleanup("web").await.unwrap();
    assert_eq!(answer.outcome, "cleared");
    let status = w.c.status("alpha").await.unwrap();
    assert!(group(&status, "web").resources.iter().all(|r| r.failures == 0));
    assert_eq!(probe.answer_sequence(), ["alpha"]);
    w.check_answers_kept(&probe, "alpha");
}

/// The pid of the probe service of `node` (the one process of its namespace running it).
fn app_pid(c: &NetCluster, node: &str) -> i32 {
    let pids = c.bed.pids(node).unwrap();
    *pids
        .iter()
        .find(|&&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|it| String::from_utf8_lossy(&it).split('\0').any(|arg| arg == "probe-app"))
        })
        .unwrap_or_else(|| panic!("no probe-app among {pids:?} in {node}"))
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

    let answer = w.c.api("alpha").switchover("web", Some("beta")).await.unwrap();
    assert_eq!(answer.outcome, "moving", "{answer:?}");
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
