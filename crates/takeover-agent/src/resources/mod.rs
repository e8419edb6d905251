//! Resources: what a service group is made of, and how each is started, stopped and
//! monitored on this node (F1.2, F1.3, F2.2, F2.3, F4.1).
//!
//! A group is an ordered list of resources, started in order and stopped in reverse. The
//! core decides when (it emits start/stop/monitor commands one at a time and waits for
//! each result); this module only performs them. Every operation runs under a timeout the
//! caller enforces by dropping the future, so implementations must leave nothing running
//! when dropped (kill the subprocesses they started).
//!
//! - [`vip`]: a virtual IP address on an interface, announced with gratuitous ARP or
//!   unsolicited neighbour advertisements.
//! - [`process`]: the application, in its own cgroup so stop leaves nothing behind.
//! - [`disk`]: exclusive ownership of a shared block device, recorded on the device.
//! - [`mount`]: a filesystem checked (journal replayed) and mounted; unmounted on release.
//! - [`ocf`]: an external agent following the OCF resource-agent API (Debian's
//!   `resource-agents` run unchanged).

pub mod disk;
pub mod mount;
pub mod ocf;
pub mod process;
pub mod vip;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use takeover_core::Epoch;

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// Done: started, stopped, or (monitor) running as it should.
    Ok,
    /// Monitor only: the resource is cleanly not running.
    NotRunning,
    /// It failed; the text says what happened, for people.
    Failed(String),
}

impl OpOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, OpOutcome::Ok)
    }
}

/// What every operation gets to know.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub node: String,
    /// Names this node's agent uniquely on this machine (`<node>-<8 hex digits of its state
    /// directory>`), for operating-system objects shared by every agent on the machine,
    /// such as cgroups: two clusters on one machine (a lab, the tests) never touch each
    /// other's.
    pub scope: String,
    pub node_index: u16,
    pub group: String,
    /// The resource's name within its group.
    pub resource: String,
    /// Where this node keeps its state (resources may keep files under it).
    pub state_dir: PathBuf,
    /// The group's current generation (epoch): the fencing token a resource writes where
    /// others can see it (a disk reservation) and checks before acting.
    pub generation: Epoch,
}

/// The [`Ctx::scope`] of node `node` keeping its state in `state_dir`: stable across
/// restarts of its agent (FNV-1a of the path, so it does not depend on the Rust version).
pub fn node_scope(node: &str, state_dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = state_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{node}-{hash:08x}")
}

/// A boxed future, so resources can be trait objects without an extra crate.
pub type OpFuture<'a> = Pin<Box<dyn Future<Output = OpOutcome> + Send + 'a>>;

/// The result of checking ahead of time that a resource can be started here (F2.3): what
/// it resolved (device paths, interfaces, agent paths), or what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCheck {
    pub ok: bool,
    /// One line per thing resolved or found wrong, for `status`.
    pub notes: Vec<String>,
}

/// One resource instance on this node. Implementations keep what they need between
/// operations (e.g. the running process) and must be cancellation-safe.
pub trait Resource: Send {
    /// Brings the resource up. Idempotent: starting a running resource succeeds.
    fn start<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a>;
    /// Takes it down. Idempotent: stopping a stopped resource succeeds. A failure means
    /// the resource may still be up (the node must then be fenced).
    fn stop<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a>;
    /// Checks it: `Ok` running, `NotRunning` cleanly stopped, `Failed` broken.
    fn monitor<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a>;
    /// Resolves and validates, ahead of any takeover, everything a start will need, and
    /// changes nothing (F2.3).
    fn check<'a>(&'a mut self, ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>>;
}

/// The configured kind of a resource and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceKind {
    Vip(vip::VipSpec),
    Process(process::ProcessSpec),
    Disk(disk::DiskSpec),
    Mount(mount::MountSpec),
    Ocf(ocf::OcfSpec),
}

/// One resource of a group, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSpec {
    pub name: String,
    pub kind: ResourceKind,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub monitor_timeout: Duration,
    /// How often the active node monitors it; zero: never.
    pub monitor_interval: Duration,
}

/// Makes the resource instance for a spec.
pub fn instantiate(spec: &ResourceSpec) -> Box<dyn Resource> {
    match &spec.kind {
        ResourceKind::Vip(it) => Box::new(vip::Vip::new(it.clone())),
        ResourceKind::Process(it) => {
            // Half the stop budget for SIGTERM, the other half for the kill loop.
            Box::new(process::Process::new(it.clone()).with_stop_grace(spec.stop_timeout / 2))
        }
        ResourceKind::Disk(it) => Box::new(disk::Disk::new(it.clone())),
        ResourceKind::Mount(it) => Box::new(mount::Mount::new(it.clone())),
        ResourceKind::Ocf(it) => Box::new(ocf::Ocf::new(it.clone()).with_budget(ocf::OpBudget::of(spec))),
    }
}

/// What a resource's settings are resolved against on one node.
#[derive(Clone, Debug)]
pub struct SpecEnv<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub group: &'a str,
    /// The node's API address, as `unix:/path` or `tcp:addr`, for processes to call back.
    pub api: String,
    pub state_dir: &'a std::path::Path,
}

/// The resource as it runs on `env.node`: per-node values picked, `{node}` and `{group}`
/// replaced in a process's command, the `TAKEOVER_*` variables set.
pub fn spec_for(cfg: &crate::config::ResourceConfig, env: &SpecEnv) -> ResourceSpec {
    use crate::config::ResourceKindConfig as K;
    let fill = |text: &str| text.replace("{node}", env.node).replace("{group}", env.group);
    let kind = match &cfg.kind {
        K::Vip { address, prefix_len, interface, announce, announce_interval } => ResourceKind::Vip(vip::VipSpec {
            address: *address,
            prefix_len: *prefix_len,
            interface: interface.on(env.node).clone(),
            announce_count: *announce,
            announce_interval: *announce_interval,
        }),
        K::Process { argv, env: vars, log } => {
            let mut all = vec![
                ("TAKEOVER_CLUSTER".to_string(), env.cluster.to_string()),
                ("TAKEOVER_NODE".to_string(), env.node.to_string()),
                ("TAKEOVER_GROUP".to_string(), env.group.to_string()),
                ("TAKEOVER_API".to_string(), env.api.clone()),
            ];
            all.extend(vars.iter().cloned());
            ResourceKind::Process(process::ProcessSpec {
                argv: argv.iter().map(|it| fill(it)).collect(),
                env: all,
                log: Some(log.clone().unwrap_or_else(|| env.state_dir.join(format!("{}.{}.log", env.group, cfg.name)))),
            })
        }
        K::Disk { device } => ResourceKind::Disk(disk::DiskSpec { device: device.on(env.node).clone() }),
        K::Mount { device, directory, fstype, options, fsck } => ResourceKind::Mount(mount::MountSpec {
            device: device.on(env.node).clone(),
            mountpoint: directory.on(env.node).clone(),
            fstype: fstype.clone(),
            options: options.clone(),
            fsck: *fsck,
        }),
        K::Ocf { provider, agent, params } => ResourceKind::Ocf(ocf::OcfSpec {
            provider: provider.clone(),
            agent: agent.clone(),
            params: params.iter().map(|(k, v)| (k.clone(), v.on(env.node).clone())).collect(),
            root: None,
        }),
    };
    ResourceSpec {
        name: cfg.name.clone(),
        kind,
        start_timeout: cfg.start_timeout,
        stop_timeout: cfg.stop_timeout,
        monitor_timeout: cfg.monitor_timeout,
        monitor_interval: cfg.monitor_interval,
    }
}

impl ResourceSpec {
    /// `type name`, e.g. "vip ip", for events.
    pub fn label(&self) -> String {
        let kind = match &self.kind {
            ResourceKind::Vip(_) => "vip",
            ResourceKind::Process(_) => "process",
            ResourceKind::Disk(_) => "disk",
            ResourceKind::Mount(_) => "mount",
            ResourceKind::Ocf(_) => "ocf",
        };
        format!("{kind} {}", self.name)
    }
}
