//! Shared set-up for the end-to-end tests: a two-node cluster of real `takeover agent`
//! processes on loopback, running the demo's sample service, and a client appending
//! through it.

#![allow(dead_code)]

pub mod forge;
pub mod groups;
pub mod netcluster;
pub mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use takeover_agent::api::{GroupDoc, StatusDoc};
use takeover_agent::localnet::{AppClient, LocalAuth, LocalCluster, Spec, serving_overlaps};

pub const GROUP: &str = "journal";
pub const WAIT: Duration = Duration::from_secs(20);

/// End-to-end tests share two cores: running clusters one at a time keeps the timing
/// of each honest (a starved agent would be declared dead).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes this test's turn to run a cluster.
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

pub struct Bed {
    pub cluster: LocalCluster,
    pub apps: BTreeMap<String, SocketAddr>,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

pub fn group(status: &StatusDoc) -> Option<&GroupDoc> {
    status.groups.iter().find(|it| it.name == GROUP)
}

impl Bed {
    /// Two nodes whose traffic is authenticated with a key generated for them.
    pub async fn new() -> Bed {
        Bed::with_auth(LocalAuth::GeneratedKey).await
    }

    pub async fn with_auth(auth: LocalAuth) -> Bed {
        Bed::with(auth, false).await
    }

    /// With `relay_link1`, link 1 runs through a relay too, so the tap sees all traffic.
    pub async fn with(auth: LocalAuth, relay_link1: bool) -> Bed {
        Bed::with_spec(|spec| {
            spec.auth = auth;
            spec.relay_link1 = relay_link1;
        })
        .await
    }

    /// The demo cluster, with `adjust` applied to its spec.
    pub async fn with_spec(adjust: impl FnOnce(&mut Spec)) -> Bed {
        let turn = turn().await;
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().to_path_buf();
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_takeover"));
        let (mut spec, apps) =
            Spec::demo_service("e2e", GROUP, &binary, &dir.join("app-records.log")).expect("free ports");
        adjust(&mut spec);
        let cluster = LocalCluster::create(&dir, &binary, &spec).await.expect("a local cluster");
        Bed { cluster, apps, dir, _tmp: tmp, _turn: turn }
    }

    pub fn client(&self, prefix: &str) -> AppClient {
        AppClient::start(self.apps.clone(), prefix, Duration::from_millis(10))
    }

    pub async fn role(&self, node: &str) -> Option<String> {
        self.cluster.role(node, GROUP).await
    }

    pub async fn wait_role(&self, node: &str, role: &'static str) -> StatusDoc {
        self.cluster
            .wait_for(node, WAIT, &format!("{GROUP} to be {role}"), move |s| group(s).is_some_and(|g| g.role == role))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// Waits for (`active` M, `sl` SL).
    pub async fn wait_pair(&self, active: &str, sl: &str) {
        self.wait_role(sl, "SL").await;
        self.wait_role(active, "M").await;
    }

    pub async fn wait_waiting(&self, node: &str) -> StatusDoc {
        self.cluster
            .wait_for(node, WAIT, "the group to wait", |s| group(s).is_some_and(|g| g.waiting.is_some()))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// Every acknowledged record of `client` is in the journal of the active node, and
    /// no two service instances served at overlapping times.
    pub async fn check_nothing_lost(&self, client: &AppClient) -> usize {
        let acked = client.snapshot().acked;
        let mut held = BTreeSet::new();
        for node in ["alpha", "beta"] {
            if matches!(self.role(node).await.as_deref(), Some("M" | "SM")) {
                held = self.cluster.journal_payloads(node, GROUP).await.expect("a journal");
            }
        }
        assert!(!held.is_empty() || acked.is_empty(), "no active node to read from\n{}", self.logs());
        let lost: Vec<&String> = acked.keys().filter(|it| !held.contains(*it)).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged records lost, e.g. {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(5)],
            self.logs()
        );
        let (_, overlaps) = serving_overlaps(&self.dir.join("app-records.log")).expect("the service's records");
        assert_eq!(overlaps, 0, "two service instances served at overlapping times\n{}", self.logs());
        acked.len()
    }

    /// The agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in ["alpha", "beta"] {
            let log = std::fs::read_to_string(self.dir.join(format!("{node}.agent.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            out.push_str(&format!("--- {node}.agent.log (last 40 lines)\n{}\n", tail.join("\n")));
        }
        out
    }

    pub fn app_records(&self) -> PathBuf {
        self.dir.join("app-records.log")
    }
}

/// A `takeover witness` process on loopback, killed when dropped.
pub struct WitnessProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The cluster's seal, to talk to it.
    pub auth: takeover_agent::auth::Auth,
}

impl WitnessProcess {
    /// Starts `takeover witness` for cluster `cluster` with key `key_file` on `addr`,
    /// its state in `dir`, and waits until it answers.
    pub fn start(
        addr: SocketAddr,
        dir: &std::path::Path,
        (lease, margin): (Duration, Duration),
        cluster: &str,
        key_file: &std::path::Path,
    ) -> WitnessProcess {
        use takeover_agent::config::format_duration;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_takeover"))
            .args(["witness", "--listen", &addr.to_string(), "--state-dir"])
            .arg(dir)
            .args(["--lease", &format_duration(lease), "--margin", &format_duration(margin)])
            .args(["--cluster", cluster, "--key-file"])
            .arg(key_file)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn takeover witness");
        let key = takeover_agent::auth::keyfile::load(key_file).expect("the cluster key");
        let w = WitnessProcess { child, addr, auth: takeover_agent::auth::Auth::with_key(cluster, &key) };
        let t0 = std::time::Instant::now();
        loop {
            // A release of nothing is always answered.
            let probe = takeover_agent::witness::Request::Release {
                seq: 0,
                group: "probe".into(),
                node: "probe".into(),
                incarnation: 0,
            };
            if let Ok(Some(_)) = w.ask(&probe, Duration::from_millis(100)) {
                return w;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the witness did not come up on {addr}");
        }
    }

    /// Sends `req` sealed with the cluster's key; its answer, if one came within `wait`.
    pub fn ask(
        &self,
        req: &takeover_agent::witness::Request,
        wait: Duration,
    ) -> std::io::Result<Option<takeover_agent::witness::Reply>> {
        takeover_agent::witness::ask(self.addr, &self.auth, req, wait)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).expect("signal the witness");
    }

    /// SIGSTOP: the witness stops answering (a witness machine that hangs).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// splitmix64: a small, seedable generator, so a randomized schedule follows from its seed
/// (tests/random.rs, tests/campaign.rs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a>(&mut self, items: &'a [String]) -> &'a str {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn two<'a>(&mut self, items: &'a [String]) -> (&'a str, &'a str) {
        let a = self.below(items.len() as u64) as usize;
        let b = (a + 1 + self.below(items.len() as u64 - 1) as usize) % items.len();
        (&items[a], &items[b])
    }
}

/// An unsigned number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|it| it.parse().ok()).unwrap_or(default)
}
