//! A two-node cluster of real agents inside network namespaces (root only): each node
//! has two links on two bridges, fencing powers a node off through the test bed's fence
//! agent (fence-agents stdin protocol), and partitions are nftables rules.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use takeover_agent::api::{Client, StatusDoc};
use takeover_agent::localnet::{AppClient, Target};
use takeover_agent::netbed::Netbed;

pub const GROUP: &str = "db";
pub const NODES: [&str; 2] = ["alpha", "beta"];

/// How the cluster fences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// One level: power the node off (links down, every process SIGKILLed).
    PowerOff,
    /// Level 1 fails (a command exiting 1), level 2 powers off.
    FailThenPowerOff,
    /// Every level fails: level 1 a failing command, level 2 Debian's fence_dummy --type=fail.
    AllFail,
    /// A fence that says "off" without doing anything (misconfigured): only the fencing
    /// tokens stand between a woken old active and the data.
    Lying,
    /// The poison pill on the `[storage_fence]` device (which the test's config adds).
    Storage,
}

/// Whether this test may run: root, or a loud skip (a failure under CI=true).
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|it| it == "true") {
        panic!("{test} needs root, and CI=true does not allow skipping it");
    }
    println!("SKIPPED (needs root): {test}");
    false
}

pub struct NetCluster {
    pub bed: Netbed,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub binary: PathBuf,
    /// The nodes, in `[[node]]` order.
    pub nodes: Vec<String>,
    /// The group `role`, `wait_role`, `client` and `journal_path` speak of.
    pub group: String,
    agents: HashMap<String, Child>,
    _tmp: tempfile::TempDir,
}

impl NetCluster {
    /// A bed with namespaces `{prefix}-*` and addresses in 10.200.{2 slot, 2 slot + 1}.0/24.
    pub fn create(prefix: &str, slot: u8, fencing: Fencing) -> NetCluster {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().to_path_buf();
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_takeover"));
        let listen: Vec<String> =
            NODES.iter().map(|node| format!("{node}={}:8080", node_addr(slot, node, 0))).collect();
        let group = format!(
            "\n[[group]]\nname = {GROUP:?}\nnodes = [\"alpha\", \"beta\"]\nservice = [{:?}, \"demo-app\", \"--listen\", {:?}, \"--record\", {:?}, \"--tick-ms\", \"20\"]\nstop_timeout = \"2s\"\n",
            binary.display().to_string(),
            listen.join(","),
            dir.join("app-records.log").display().to_string(),
        );
        // These tests follow what a paused or cut-off active does when it wakes (it yields
        // to the newer epoch); its guard would kill it first, so it is off here, and
        // tests/resources.rs checks the guard.
        let group = group + "\n[guard]\nenabled = false\n";
        NetCluster::create_with(prefix, slot, fencing, tmp, &NODES, GROUP, &group, &BTreeMap::new())
    }

    /// A cluster of `nodes` running the `[[group]]` tables `groups` (TOML text), in
    /// `tmp`; a power-off of a node also cuts its filesystems at `mounts`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_with(
        prefix: &str,
        slot: u8,
        fencing: Fencing,
        tmp: tempfile::TempDir,
        nodes: &[&str],
        group: &str,
        groups: &str,
        mounts: &BTreeMap<String, Vec<PathBuf>>,
    ) -> NetCluster {
        let _ = Netbed::cleanup_stale(prefix);
        let bed = Netbed::create_with_mounts(prefix, nodes, slot, false, mounts).expect("a network-namespace test bed");
        let dir = tmp.path().to_path_buf();
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_takeover"));
        let agent = dir.join("fence-netns");
        std::fs::write(
            &agent,
            format!("#!/bin/sh\nexec {} fence-netns --bed {}\n", binary.display(), bed.state_file().display()),
        )
        .unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let power_off = format!("{{ agent = {:?} }}", agent.display().to_string());
        let levels = match fencing {
            Fencing::PowerOff => vec![power_off],
            Fencing::FailThenPowerOff => vec![r#"{ command = ["/bin/false"] }"#.to_string(), power_off],
            Fencing::AllFail => vec![
                r#"{ command = ["/bin/false"] }"#.to_string(),
                r#"{ agent = "/usr/sbin/fence_dummy", options = { type = "fail", power_timeout = "1" } }"#.to_string(),
            ],
            Fencing::Lying => vec![r#"{ command = ["/bin/true"] }"#.to_string()],
            Fencing::Storage => vec!["{ storage = true }".to_string()],
        };
        // Cluster traffic is authenticated with a key made for this cluster, as
        // `takeover keygen` makes one.
        let key_file = dir.join("cluster.key");
        takeover_agent::auth::keyfile::write_new(&key_file, false).expect("a cluster key");
        let mut text = format!(
            "[cluster]\nname = {prefix:?}\nheartbeat_interval = \"100ms\"\ndead_after = \"500ms\"\nstartup_wait = \"2s\"\nfence_delay = \"200ms\"\nfence_retry = \"500ms\"\nkey_file = {:?}\n\n[fence]\ntimeout = \"10s\"\nretries = 0\n",
            key_file.display().to_string()
        );
        for level in &levels {
            text.push_str(&format!("[[fence.level]]\ndevices = [{level}]\n"));
        }
        for node in nodes {
            text.push_str(&format!(
                "\n[[node]]\nname = {node:?}\nstate_dir = {:?}\napi = \"unix:{}\"\nlinks = [\"{}:7100\", \"{}:7100\"]\n",
                dir.join(node).display().to_string(),
                dir.join(node).join("api.sock").display(),
                bed.node_addr(node, 0),
                bed.node_addr(node, 1),
            ));
        }
        text.push_str(groups);
        let config = dir.join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        NetCluster {
            bed,
            dir,
            config,
            binary,
            nodes: nodes.iter().map(|it| it.to_string()).collect(),
            group: group.to_string(),
            agents: HashMap::new(),
            _tmp: tmp,
        }
    }

    pub fn start(&mut self, node: &str) {
        let log = self.dir.join(format!("{node}.agent.log"));
        let argv = [
            self.binary.display().to_string(),
            "agent".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--node".into(),
            node.into(),
        ];
        let child = self.bed.spawn(node, &argv, &[("TAKEOVER_LOG", "info")], &log).expect("the agent starts");
        self.agents.insert(node.to_string(), child);
    }

    /// kill -9 of the node's agent alone (its namespace and links stay up).
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(child) = self.agents.get_mut(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Power-off by the test itself (not through a fence).
    pub fn power_off(&mut self, node: &str) {
        self.bed.power_off(node).expect("power off");
        self.reap(node);
    }

    /// Links up again and the agent started.
    pub fn power_on_and_start(&mut self, node: &str) {
        self.reap(node);
        self.bed.power_on(node).expect("power on");
        self.start(node);
    }

    fn reap(&mut self, node: &str) {
        if let Some(mut child) = self.agents.remove(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The pid of the node's agent process, while it runs.
    pub fn agent_pid(&mut self, node: &str) -> Option<u32> {
        self.running(node).then(|| self.agents[node].id())
    }

    /// Whether the node's agent process still runs.
    pub fn running(&mut self, node: &str) -> bool {
        self.agents.get_mut(node).is_some_and(|it| matches!(it.try_wait(), Ok(None)))
    }

    /// SIGSTOP (or SIGCONT) every process of the node's namespace.
    pub fn pause(&self, node: &str, stop: bool) -> Vec<i32> {
        let pids = self.bed.pids(node).unwrap_or_default();
        for &pid in &pids {
            let _ = if stop { self.bed.pause(pid as u32) } else { self.bed.resume(pid as u32) };
        }
        pids
    }

    pub fn api(&self, node: &str) -> Client {
        Client::unix(self.dir.join(node).join("api.sock"))
    }

    pub async fn status(&self, node: &str) -> Option<StatusDoc> {
        tokio::time::timeout(Duration::from_secs(1), self.api(node).status()).await.ok()?.ok()
    }

    pub async fn role(&self, node: &str) -> Option<String> {
        let status = self.status(node).await?;
        status.groups.iter().find(|it| it.name == self.group).map(|it| it.role.clone())
    }

    /// Polls until `pred` holds for `node`, or panics with both agents' logs.
    pub async fn wait_for(&self, node: &str, timeout: Duration, what: &str, pred: impl Fn(&StatusDoc) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.status(node).await
                && pred(&status)
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{node}: timed out waiting for {what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_role(&self, node: &str, role: &'static str) {
        let group = self.group.clone();
        self.wait_group_role(node, &group, role).await;
    }

    pub async fn wait_group_role(&self, node: &str, group: &str, role: &'static str) {
        let name = group.to_string();
        let pred = move |s: &StatusDoc| s.groups.iter().any(|g| g.name == name && g.role == role);
        self.wait_for(node, Duration::from_secs(20), &format!("{group} to be {role}"), pred).await;
    }

    /// A client appending through the agents' API sockets every 10 ms.
    pub fn client(&self, prefix: &str) -> AppClient {
        let targets: BTreeMap<String, Target> = self
            .nodes
            .iter()
            .map(|node| {
                let socket = self.dir.join(node).join("api.sock");
                (node.to_string(), Target::Agent { socket, group: self.group.clone() })
            })
            .collect();
        AppClient::start_targets(targets, prefix, Duration::from_millis(10))
    }

    pub fn records(&self) -> PathBuf {
        self.dir.join("app-records.log")
    }

    pub fn journal_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join(format!("{}.journal", self.group))
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(self.dir.join(format!("{node}.agent.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            out.push_str(&format!("--- {node}.agent.log (last 40 lines)\n{}\n", tail.join("\n")));
        }
        out
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for node in self.nodes.clone() {
            let _ = self.bed.power_off(&node);
            self.reap(&node);
        }
        // The services' cgroups a killed agent left (a real machine loses them at reboot).
        for node in &self.nodes {
            let scope = takeover_agent::resources::node_scope(node, &self.dir.join(node));
            if let Err(e) = takeover_agent::resources::process::kill_leftover_cgroups(&scope) {
                eprintln!("netcluster: {e:#}");
            }
        }
    }
}

/// The address of `node` on `link` in a bed of `slot` (the bed's addressing rule).
pub fn node_addr(slot: u8, node: &str, link: u8) -> std::net::Ipv4Addr {
    let i = NODES.iter().position(|it| *it == node).expect("alpha or beta (other beds: Netbed::node_addr)") as u8;
    std::net::Ipv4Addr::new(10, 200, 2 * slot + link, 10 + i)
}

/// The records of a journal file, read from a copy (opening may cut a torn tail, and
/// the node's agent may hold the file).
pub fn journal_records(path: &Path) -> Vec<takeover_core::log::Record> {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("copy.journal");
    if std::fs::copy(path, &copy).is_err() {
        return Vec::new();
    }
    match takeover_agent::journal::Journal::open(&copy, scratch.path()) {
        Ok((journal, _)) => journal.read(1, journal.last_index()).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
