//! The cluster configuration file: one TOML file, identical on every node of a cluster.
//!
//! [`parse`] (or [`load`]) turns the text into a [`ClusterConfig`] of plain typed values,
//! or into [`ConfigErrors`]: every problem found, each pointing at the offending value
//! with its file, line and column and a snippet of the line, in the style of rustc:
//!
//! ```text
//! error: cluster.dead_after (200ms) must be at least 3 × heartbeat_interval (100ms), or a busy machine will declare a healthy peer dead
//!   --> cluster.toml:4:14
//!    |
//!  4 | dead_after = "200ms"
//!    |              ^^^^^^^
//! ```
//!
//! A syntax error stops at the first problem (the TOML parser cannot go on); once the
//! file is well-formed TOML with the right shape, every semantic rule is checked and all
//! failures are reported together. Unknown keys are errors: a typo must not be silently
//! ignored and leave a setting at its default.
//!
//! The file (see `examples/two-nodes.toml` in the repository for a commented one):
//!
//! ```toml
//! [cluster]
//! name = "demo"
//! heartbeat_interval = "100ms"  # default 100ms
//! dead_after = "500ms"          # default 500ms; every link silent this long = peer failed
//! startup_wait = "3s"           # default 3s (F0.5)
//! arbiter = "fence"             # default; or "unsafe-assume-crash-stop"
//! fence_retry = "1s"            # default 1s
//! fence_delay = "200ms"         # default 200ms; 0 to under 60s (see ClusterConfig::fence_delay)
//! catch_up_window = 4096        # default 4096 records per catch-up batch
//! key_file = "/etc/takeover/cluster.key"  # required, see below; or auth = "none"
//!
//! [guard]                       # optional; see crate::guard
//! enabled = true                # default true
//! timeout = "500ms"             # default cluster.dead_after; at least 3 × heartbeat_interval
//! device = "/dev/watchdog"      # optional: renew this watchdog device instead of a guard process
//!
//! [witness]                     # optional; see crate::witness and the agent's lease module
//! address = "192.0.2.10:7400"   # where `takeover witness --listen` answers (UDP)
//! lease = "6s"                  # default 6s; renewed every lease / 3
//! margin = "500ms"              # default 500ms; < lease / 3; guard.timeout + margin < 2 × lease / 3
//!
//! [fence]                       # required when arbiter = "fence"
//! command = ["takeover", "fence-local", "--pidfile", "/tmp/x/{node}/agent.pid"]
//! timeout = "10s"               # default 10s, per attempt
//! retries = 1                   # default 1: extra attempts per device
//! ```
//!
//! `command` is the shortcut for one level with one plain-command device. Instead of it,
//! `[fence]` may list fence levels, tried in order until one confirms; every device of a
//! level must confirm (like Pacemaker's fencing topology):
//!
//! ```toml
//! [fence]
//! timeout = "10s"
//! retries = 1
//! [[fence.level]]
//! devices = [
//!   { agent = "/usr/sbin/fence_ipmilan", timeout = "20s", options = { ip = "10.0.0.{node_index}", username = "admin", password_script = "/etc/takeover/ipmi-pass", plug = "{node}" } },
//! ]
//! [[fence.level]]
//! devices = [ { command = ["/usr/local/bin/my-fence", "{node}"] } ]   # exit 0 = the node is off
//! ```
//!
//! An `agent` is a fence-agents program given `key=value` lines on stdin (see
//! [`crate::fence::fence_node`]); option values are strings, numbers or booleans (`true`
//! is written `1`, `false` leaves the option out). `{node}` is the name of the node to
//! fence and `{node_index}` its position in the `[[node]]` list, from 0, in option values
//! and command arguments.
//!
//! One device needs no program: `{ storage = true }` writes the poison pill of
//! `[storage_fence]` (for clusters without a power switch). The witness is not a fence
//! device (`{ witness = true }` is refused with the reason).
//!
//! ```toml
//! [[node]]                      # NodeId = position in this list, from 0
//! name = "alpha"
//! state_dir = "/var/lib/takeover/alpha"
//! api = "unix:/run/takeover/alpha.sock"    # or "tcp:127.0.0.1:7400" (loopback only)
//! api_listen = "10.0.0.1:7480"  # optional: the API on TCP too, for clients with the token
//! api_token_file = "/etc/takeover/api.token"  # required with api_listen; mode 0600
//! links = ["127.0.0.1:7101", "127.0.0.2:7101"]  # link k of every node is on network k
//!
//! [[node]]
//! name = "beta"
//! state_dir = "/var/lib/takeover/beta"
//! api = "unix:/run/takeover/beta.sock"
//! links = ["127.0.0.1:7102", "127.0.0.2:7102"]
//!
//! [[group]]
//! name = "web"
//! nodes = ["alpha", "beta"]     # a pair; the first is preferred (initial priority 2)
//! service = ["/usr/bin/python3", "-m", "http.server", "8080"]  # optional shorthand
//! stop_timeout = "5s"           # default 5s
//! ```
//!
//! A group's resources (virtual IP, disk, mount, process, OCF agent), `failback` and
//! `failback_delay` are described in [`resources`].
//!
//! Cluster traffic (heartbeats and the peer channel) is authenticated and encrypted with
//! the key in `key_file` (ChaCha20-Poly1305, see [`crate::auth`]): 32 random bytes written
//! by `takeover keygen`, the same file on every node, mode 0600. A file without
//! `key_file` is refused, like Corosync clusters set up with an `authkey`, unless it says
//! `auth = "none"` explicitly — for test and demo clusters on a trusted network, shown as
//! unauthenticated in `status` and warned about in the log. The configuration names the
//! file; the agent (and `config check`) read and check the file itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use takeover_core::group::{Arbiter, Failback, GroupConfig as CoreGroupConfig};

use crate::fence::{AgentOption, FenceDevice, FenceDeviceKind, FenceLevel, FencePlan};
use takeover_core::types::NodeId;
use toml::{Spanned, Value};

mod resources;
pub use resources::*;

/// Default of `cluster.heartbeat_interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Default of `cluster.dead_after`.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_millis(500);
/// Default of `cluster.startup_wait`.
pub const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(3);
/// Default of `cluster.fence_retry`.
pub const DEFAULT_FENCE_RETRY: Duration = Duration::from_secs(1);
/// Default of `cluster.catch_up_window`.
pub const DEFAULT_CATCH_UP_WINDOW: u64 = 4096;
/// Default of `fence.timeout`.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `fence.retries`.
pub const DEFAULT_FENCE_RETRIES: u32 = 1;
/// The largest accepted `fence.retries`.
pub const MAX_FENCE_RETRIES: u32 = 10;
/// Default of `cluster.fence_delay`.
pub const DEFAULT_FENCE_DELAY: Duration = Duration::from_millis(200);
/// `cluster.fence_delay` must be below this.
pub const MAX_FENCE_DELAY: Duration = Duration::from_secs(60);
/// Default of `group.stop_timeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest accepted `cluster.heartbeat_interval`.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// `cluster.dead_after` must be at least this many heartbeat intervals.
pub const MIN_HEARTBEATS_BEFORE_DEAD: u32 = 3;
/// The placeholder in `fence.command` replaced by the name of the node to fence.
pub const FENCE_NODE_PLACEHOLDER: &str = crate::fence::NODE_PLACEHOLDER;

/// Longest path a Unix socket can bind to (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_SOCKET_PATH: usize = 107;

// ------------------------------------------------------------------------------------
// The validated configuration
// ------------------------------------------------------------------------------------

/// A validated cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `cluster.name`.
    pub name: String,
    /// How often a heartbeat is sent on every link.
    pub heartbeat_interval: Duration,
    /// A peer is declared failed when every link has been silent this long.
    pub dead_after: Duration,
    /// How long a recovering node waits for its peer before deciding alone (F0.5).
    pub startup_wait: Duration,
    /// What authorises acting on a lost peer.
    pub arbiter: Arbiter,
    /// How long after a failed fence the fence is tried again.
    pub fence_retry: Duration,
    /// How long the node that does NOT hold a group waits before fencing its active
    /// peer, so that in a fence race (both sides fencing each other across a partition)
    /// the active node wins, like Pacemaker's `priority-fencing-delay`. From 0 to under
    /// [`MAX_FENCE_DELAY`].
    pub fence_delay: Duration,
    /// How many records one catch-up batch may carry.
    pub catch_up_window: u64,
    /// How cluster traffic is authenticated.
    pub auth: AuthConfig,
    /// The `[fence]` table; always present when `arbiter` is [`Arbiter::Fence`].
    pub fence: Option<FenceConfig>,
    /// The `[guard]` table (defaults when absent).
    pub guard: GuardConfig,
    /// The `[storage_fence]` table, if any.
    pub storage_fence: Option<StorageFenceConfig>,
    /// The `[witness]` table, if any.
    pub witness: Option<WitnessConfig>,
    /// The `[[node]]` tables in file order; a node's [`NodeId`] is its index here.
    pub nodes: Vec<NodeConfig>,
    /// The `[[group]]` tables in file order.
    pub groups: Vec<GroupConfig>,
}

/// The `[guard]` table: what stops this node's services when its agent stops renewing
/// (see [`crate::guard`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// `guard.enabled` (default true).
    pub enabled: bool,
    /// `guard.timeout`: without a renewal for this long, the guard acts. Default
    /// `cluster.dead_after`, so the services are gone by the time the peer declares this
    /// node failed.
    pub timeout: Duration,
    /// `guard.device`: a watchdog device (`/dev/watchdog`) renewed instead of running the
    /// guard process.
    pub device: Option<PathBuf>,
}

/// The `[storage_fence]` table: a poison-pill slot per node on a shared device
/// (see [`crate::storage_fence`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFenceConfig {
    /// The device, as each node sees it.
    pub device: resources::PerNode<PathBuf>,
    /// A node that cannot read its slot this long stops everything (its guard does).
    pub timeout: Duration,
    /// How long a fencing node waits after writing the poison; at least 2 × `timeout`.
    pub msgwait: Duration,
}

/// The `[witness]` table: the lease server on a third machine (see [`crate::witness`]
/// and [`takeover_core::witness`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    /// `witness.address`: where `takeover witness --listen` answers (UDP).
    pub address: std::net::SocketAddr,
    /// `witness.lease`: how long a grant lasts (the witness must be started with the same
    /// `--lease`). Renewed every `lease / 3`.
    pub lease: Duration,
    /// `witness.margin`: clock-rate margin; the holder believes its lease for
    /// `lease − margin` from sending its request, the witness keeps it `lease + margin`
    /// from receiving it. Less than `lease / 3`.
    pub margin: Duration,
}

/// Default of `witness.lease`.
pub const DEFAULT_WITNESS_LEASE: Duration = Duration::from_secs(6);
/// Default of `witness.margin`.
pub const DEFAULT_WITNESS_MARGIN: Duration = Duration::from_millis(500);

/// Default of `storage_fence.timeout`.
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// How cluster traffic is authenticated: `[cluster] key_file` or `auth = "none"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// ChaCha20-Poly1305 under the key in this file (an absolute path).
    Key { key_file: PathBuf },
    /// `auth = "none"`: unauthenticated, for test and demo clusters on a trusted network.
    None,
}

/// The `[fence]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceConfig {
    /// `fence.timeout`: the default bound of one attempt of a device.
    pub timeout: Duration,
    /// `fence.retries`: the default number of extra attempts per device.
    pub retries: u32,
    /// The levels, with every device's timeout and retries resolved. `command = [...]`
    /// becomes one level with one [`FenceDeviceKind::Command`] device.
    pub plan: FencePlan,
}

/// One `[[node]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// Where the node keeps its durable state; unique per node.
    pub state_dir: PathBuf,
    /// Where the node's agent serves its local API.
    pub api: ApiAddr,
    /// `api_listen`: a TCP address where the agent also serves the API, to clients that
    /// send the token of `api_token_file` (both keys or neither).
    pub api_listen: Option<SocketAddr>,
    /// `api_token_file`: the bearer token the TCP listener requires (mode 0600).
    pub api_token_file: Option<PathBuf>,
    /// One address per network: link k of every node is on network k. Never empty, and
    /// every node has the same number of links. The node binds these.
    pub links: Vec<SocketAddr>,
    /// Where peers send to reach each link: `links` unless `advertise` is given (a relay
    /// or NAT in between). Same length as `links`.
    pub advertise: Vec<SocketAddr>,
}

/// The address of a node's local API.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ApiAddr {
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
    /// `tcp:127.0.0.1:7400`; always a loopback address.
    Tcp(SocketAddr),
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ApiAddr::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// One `[[group]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// The pair of nodes running the group, two distinct declared nodes; `nodes[0]` is
    /// the preferred one (initial priority 2).
    pub nodes: [String; 2],
    /// The resources, in start order (`service = [...]` is one process resource).
    pub resources: Vec<ResourceConfig>,
    /// Whether the group returns to its preferred node by itself.
    pub failback: Failback,
    /// How long the preferred node must be back and in sync before it gets the group back.
    pub failback_delay: Duration,
}

impl GroupConfig {
    /// The preferred node of the pair (the first listed).
    pub fn preferred(&self) -> &str {
        &self.nodes[0]
    }

    /// What the core's runner needs of each resource, in start order.
    pub fn resource_policies(&self) -> Vec<takeover_core::runner::ResourcePolicy> {
        self.resources
            .iter()
            .map(|it| takeover_core::runner::ResourcePolicy {
                monitor_interval: it.monitor_interval,
                max_restarts: it.max_restarts,
                restart_window: it.restart_window,
            })
            .collect()
    }

    /// Whether `node` is a member of this group.
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }

    /// The other node of the pair, or `None` if `me` is not a member.
    pub fn peer_of(&self, me: &str) -> Option<&str> {
        if self.nodes[0] == me {
            Some(&self.nodes[1])
        } else if self.nodes[1] == me {
            Some(&self.nodes[0])
        } else {
            None
        }
    }
}

impl ClusterConfig {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The id of the node called `name`: its index in the `[[node]]` list.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        let index = self.nodes.iter().position(|n| n.name == name)?;
        // Validation caps the node count at u16::MAX + 1.
        u16::try_from(index).ok().map(NodeId)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The groups `node_name` is a member of, in file order.
    pub fn groups_of<'a>(&'a self, node_name: &'a str) -> impl Iterator<Item = &'a GroupConfig> {
        self.groups.iter().filter(move |g| g.has_node(node_name))
    }

    /// The core's settings for `group` as run on node `me`.
    ///
    /// # Panics
    /// If `me` is not a member of `group`, or `group` does not come from this
    /// configuration (one of its nodes is not declared).
    pub fn group_core_config(&self, group: &GroupConfig, me: &str) -> CoreGroupConfig {
        let peer = group.peer_of(me).unwrap_or_else(|| {
            panic!("node `{me}` is not a member of group `{}` ({} and {})", group.name, group.nodes[0], group.nodes[1])
        });
        let id = |name: &str| {
            self.node_id(name).unwrap_or_else(|| panic!("group `{}` names undeclared node `{name}`", group.name))
        };
        CoreGroupConfig {
            me: id(me),
            peer: id(peer),
            arbiter: self.arbiter,
            startup_wait: self.startup_wait,
            fence_retry: self.fence_retry,
            fence_delay: self.fence_delay,
            catch_up_window: self.catch_up_window,
            preferred: group.preferred() == me,
            failback: group.failback,
            failback_delay: group.failback_delay,
        }
    }

    /// How to fence a node: the `[fence]` levels. `None` when there is no `[fence]`
    /// table (only possible with `arbiter = "unsafe-assume-crash-stop"`). Run it with
    /// [`crate::fence::fence_node`].
    pub fn fence_plan(&self) -> Option<FencePlan> {
        self.fence.as_ref().map(|f| f.plan.clone())
    }

    /// [`ClusterConfig::fence_plan`] as run by node `me`: storage devices get `me`'s path
    /// of the shared device, its slot and `msgwait`.
    pub fn fence_plan_for(&self, me: &str) -> Option<FencePlan> {
        let mut plan = self.fence_plan()?;
        let index = self.node_id(me).map_or(0, |it| it.0);
        for level in &mut plan.levels {
            for device in &mut level.devices {
                if let (FenceDeviceKind::Storage { device, msgwait, me: who }, Some(sf)) =
                    (&mut device.kind, &self.storage_fence)
                {
                    *device = sf.device.on(me).clone();
                    *msgwait = sf.msgwait;
                    *who = (index, me.to_string());
                }
            }
        }
        Some(plan)
    }
}

// ------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`parse`], or the path given to [`load`].
    pub file: String,
    /// 1-based line of the offending value; 0 when the error is not about a place in the
    /// file (it could not be read).
    pub line: usize,
    /// 1-based column, in characters, of the offending value; 0 like `line`.
    pub column: usize,
    /// What is wrong and what to do about it.
    pub message: String,
    /// The offending line and how much of it to underline; `None` when `line` is 0.
    pub snippet: Option<Snippet>,
}

/// The source line of a [`ConfigError`] and the extent of the offending value on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snippet {
    /// The whole line, without its line ending.
    pub source_line: String,
    /// How many characters, from [`ConfigError::column`], to underline (at least 1).
    pub caret_len: usize,
}

impl ConfigError {
    /// The error at byte range `span` of `text`.
    fn at(file: &str, text: &str, span: Range<usize>, message: String) -> ConfigError {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let source_line = text[line_start..line_end].trim_end_matches('\r');
        let visible_end = line_start + source_line.len();
        let end = floor_char_boundary(text, span.end.clamp(start, visible_end.max(start)));
        ConfigError {
            file: file.to_string(),
            line: text[..start].matches('\n').count() + 1,
            column: text[line_start..start].chars().count() + 1,
            message,
            snippet: Some(Snippet {
                source_line: source_line.to_string(),
                caret_len: text[start..end].chars().count().max(1),
            }),
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        let Some(snippet) = &self.snippet else {
            return write!(f, "\n  --> {}", self.file);
        };
        let number = self.line.to_string();
        let w = number.len() + 1;
        write!(f, "\n{:w$}--> {}:{}:{}", "", self.file, self.line, self.column)?;
        write!(f, "\n{:w$} |", "")?;
        if snippet.source_line.is_empty() {
            write!(f, "\n{number:>w$} |")?;
        } else {
            write!(f, "\n{number:>w$} | {}", snippet.source_line)?;
        }
        // Reproduce tabs before the caret so it lines up under the value.
        let pad: String = snippet
            .source_line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "\n{:w$} | {pad}{}", "", "^".repeat(snippet.caret_len))
    }
}

/// Every problem found in a configuration file; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    fn one(error: ConfigError) -> ConfigErrors {
        ConfigErrors { errors: vec![error] }
    }

    /// The errors, in the order of their position in the file.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: there is at least one error.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ------------------------------------------------------------------------------------
// Entry points
// ------------------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError {
            message: format!("cannot read the configuration file {file}: {e}"),
            file: file.clone(),
            line: 0,
            column: 0,
            snippet: None,
        })
    })?;
    parse(&text, &file)
}

/// Validates the configuration `text`; `file_name` is only used in error messages.
pub fn parse(text: &str, file_name: &str) -> Result<ClusterConfig, ConfigErrors> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = explain_toml_error(text, &e, &span);
        ConfigErrors::one(ConfigError::at(file_name, text, span, message))
    })?;
    let mut checker = Checker { text, errors: Vec::new() };
    let config = checker.check(raw);
    if checker.errors.is_empty()
        && let Some(config) = config
    {
        return Ok(config);
    }
    if checker.errors.is_empty() {
        // Not reachable: every rule that leaves a value unset reports an error.
        checker.error(0..0, "internal error: the configuration was rejected without a reason");
    }
    checker.errors.sort_by_key(|(span, _)| span.start);
    Err(ConfigErrors {
        errors: checker
            .errors
            .into_iter()
            .map(|(span, message)| ConfigError::at(file_name, text, span, message))
            .collect(),
    })
}

/// The toml crate's message, with a hint for the mistakes it cannot explain well.
fn explain_toml_error(text: &str, e: &toml::de::Error, span: &Range<usize>) -> String {
    let message = e.message().trim_end().to_string();
    let spanned = text.get(span.clone()).unwrap_or("");
    if message == "missing field `cluster`" {
        return "the file has no [cluster] table; start it with `[cluster]` and `name = \"...\"`".to_string();
    }
    if let Some(field) = message.strip_prefix("missing field `").and_then(|it| it.strip_suffix('`')) {
        // A [[group.resource]] table (or an inline one in `resource = [...]`).
        let resource = spanned.starts_with("[[group.resource") || spanned.starts_with('{');
        let hint = match field {
            "type" if resource => format!("add type = \"...\", one of {}", resources::TYPES),
            "name" if resource => "add name = \"...\", a name unique within the group, e.g. name = \"ip\"".to_string(),
            _ => format!("add `{field} = ...` to this table"),
        };
        return format!("{message}: {hint}");
    }
    if message.contains("expected a sequence") && spanned.starts_with('[') && !spanned.starts_with("[[") {
        let table = spanned.trim_matches(|c| c == '[' || c == ']');
        return format!("{message}: write [[{table}]] with double brackets; each [[{table}]] table adds one {table}");
    }
    message
}

// ------------------------------------------------------------------------------------
// Durations
// ------------------------------------------------------------------------------------

/// Parses a duration written as a number and a unit: `"250ms"`, `"2s"`, `"1.5s"`,
/// `"1m"`. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. The error says what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("it is empty".to_string());
    }
    if t.starts_with('-') {
        return Err("durations cannot be negative".to_string());
    }
    let number_len = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(number_len);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err("it does not start with a number".to_string());
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || number.ends_with('.') || fraction.contains('.') {
        return Err(format!("`{number}` is not a number"));
    }
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("it has no unit".to_string()),
        other => return Err(format!("`{other}` is not a unit")),
    };
    let too_large = || "it is too large".to_string();
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    if fraction.len() > 18 {
        return Err("it has more than 18 decimals".to_string());
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| too_large())? };
    if !(fraction * unit_nanos).is_multiple_of(scale) {
        return Err("it is finer than a nanosecond".to_string());
    }
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction * unit_nanos / scale))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration the way the configuration file does: `100ms`, `2s`, `1.5s`, `1m`.
/// [`parse_duration`] reads it back to the same value.
pub fn format_duration(d: Duration) -> String {
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    const M: u128 = 60 * S;
    const H: u128 = 60 * M;
    let n = d.as_nanos();
    let decimal = |unit: u128, suffix: &str| {
        let whole = n / unit;
        let rest = n % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.ilog10() as usize;
        let fraction = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", fraction.trim_end_matches('0'))
    };
    if n == 0 {
        "0s".to_string()
    } else if n.is_multiple_of(H) {
        format!("{}h", n / H)
    } else if n.is_multiple_of(M) {
        format!("{}m", n / M)
    } else if n >= S {
        decimal(S, "s")
    } else if n >= MS {
        decimal(MS, "ms")
    } else if n.is_multiple_of(1_000) {
        format!("{}us", n / 1_000)
    } else {
        format!("{n}ns")
    }
}

// ------------------------------------------------------------------------------------
// The file as deserialized, before validation
// ------------------------------------------------------------------------------------

type RawStrings = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    fence: Option<Spanned<RawFence>>,
    guard: Option<Spanned<RawGuard>>,
    storage_fence: Option<Spanned<RawStorageFence>>,
    witness: Option<Spanned<RawWitness>>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    // Durations and counts are read as any value so that a wrong type is reported with
    // the other semantic errors instead of stopping the parse.
    heartbeat_interval: Option<Spanned<Value>>,
    dead_after: Option<Spanned<Value>>,
    startup_wait: Option<Spanned<Value>>,
    arbiter: Option<Spanned<String>>,
    fence_retry: Option<Spanned<Value>>,
    fence_delay: Option<Spanned<Value>>,
    catch_up_window: Option<Spanned<Value>>,
    key_file: Option<Spanned<String>>,
    auth: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFence {
    command: Option<RawStrings>,
    timeout: Option<Spanned<Value>>,
    retries: Option<Spanned<Value>>,
    level: Option<Spanned<Vec<Spanned<RawLevel>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    enabled: Option<Spanned<bool>>,
    timeout: Option<Spanned<Value>>,
    device: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    address: Option<Spanned<String>>,
    lease: Option<Spanned<Value>>,
    margin: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorageFence {
    device: Option<Spanned<Value>>,
    timeout: Option<Spanned<Value>>,
    msgwait: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    devices: Option<Spanned<Vec<Spanned<RawDevice>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    storage: Option<Spanned<bool>>,
    witness: Option<Spanned<bool>>,
    agent: Option<Spanned<String>>,
    command: Option<RawStrings>,
    options: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>,
    timeout: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    state_dir: Spanned<String>,
    api: Spanned<String>,
    api_listen: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    links: RawStrings,
    advertise: Option<RawStrings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    nodes: RawStrings,
    service: Option<RawStrings>,
    stop_timeout: Option<Spanned<Value>>,
    failback: Option<Spanned<Value>>,
    failback_delay: Option<Spanned<Value>>,
    resource: Option<Spanned<Vec<Spanned<resources::RawResource>>>>,
}

// ------------------------------------------------------------------------------------
// Validation
// ------------------------------------------------------------------------------------

/// A setting after validation: `value` is `None` when it was invalid (and reported);
/// `span` is `None` when the key was absent and the default applies.
struct Setting<T> {
    value: Option<T>,
    span: Option<Range<usize>>,
}

struct Checker<'t> {
    text: &'t str,
    errors: Vec<(Range<usize>, String)>,
}

fn ordinal(k: usize) -> String {
    let n = k + 1;
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_string());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        .map(|c| format!("`{name}` contains {c:?}"))
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text.as_bytes()[..start].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// A duration key: absent → `default`; zero is an error.
    fn duration(&mut self, key: &str, raw: &Option<Spanned<Value>>, default: Duration) -> Setting<Duration> {
        self.duration_from(key, raw, default, false)
    }

    /// A duration key: absent → `default`; zero is an error unless `zero_ok`.
    fn duration_from(
        &mut self,
        key: &str,
        raw: &Option<Spanned<Value>>,
        default: Duration,
        zero_ok: bool,
    ) -> Setting<Duration> {
        let Some(raw) = raw else {
            return Setting { value: Some(default), span: None };
        };
        let span = raw.span();
        let example = format_duration(default);
        let value = match raw.get_ref() {
            Value::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() && !zero_ok => {
                    self.error(
                        span.clone(),
                        format!(
                            "{key} is zero, which is meaningless here; give a positive duration such as \"{example}\" (the default)"
                        ),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(reason) => {
                    self.error(
                        span.clone(),
                        format!(
                            "{key} = {s:?} is not a duration: {reason}; write a number followed by a unit (ms, s, m or h), e.g. \"100ms\", \"1.5s\" or \"1m\""
                        ),
                    );
                    None
                }
            },
            Value::Integer(n) => {
                self.error(
                    span.clone(),
                    format!("{key} = {n} has no unit; durations are strings with a unit, e.g. \"{n}ms\" or \"{n}s\""),
                );
                None
            }
            other => {
                self.error(
                    span.clone(),
                    format!("{key} must be a duration string such as \"{example}\", not a {}", other.type_str()),
                );
                None
            }
        };
        Setting { value, span: Some(span) }
    }

    /// A name of a node or group: non-empty, `[A-Za-z0-9_-]+`.
    fn name(&mut self, what: &str, name: &Spanned<String>) -> bool {
        match name_problem(name.get_ref()) {
            None => true,
            Some(problem) => {
                self.error(name.span(), format!("{what} name {problem}; use only ASCII letters, digits, `_` and `-`"));
                false
            }
        }
    }

    /// An argv: non-empty, with a non-empty program.
    fn argv(&mut self, key: &str, raw: &RawStrings, what_to_do: &str) -> Option<Vec<String>> {
        let Some(program) = raw.get_ref().first() else {
            self.error(raw.span(), format!("{key} is empty; {what_to_do}"));
            return None;
        };
        if program.get_ref().trim().is_empty() {
            self.error(program.span(), format!("{key}: the program (first element) is empty; {what_to_do}"));
            return None;
        }
        Some(raw.get_ref().iter().map(|a| a.get_ref().clone()).collect())
    }

    fn uses_storage(fence: &RawFence) -> bool {
        fence.level.as_ref().is_some_and(|levels| {
            levels.get_ref().iter().any(|l| {
                l.get_ref().devices.as_ref().is_some_and(|d| d.get_ref().iter().any(|d| d.get_ref().storage.is_some()))
            })
        })
    }

    fn check_storage_fence(
        &mut self,
        raw: &Spanned<RawStorageFence>,
        nodes: &[String],
        guard: Option<&GuardConfig>,
        (heartbeat, fence_delay): (Option<Duration>, Option<Duration>),
        fence: Option<&FenceConfig>,
    ) -> Option<StorageFenceConfig> {
        let sf = raw.get_ref();
        let device = match &sf.device {
            None => {
                self.error(
                    raw.span(),
                    "[storage_fence] needs `device`: the shared device holding the nodes' slots, e.g. \"/dev/disk/by-id/wwn-...\" (or { alpha = ..., beta = ... })",
                );
                None
            }
            Some(d) => self.per_node_path("storage_fence", "device", d, nodes),
        };
        let timeout = self.duration("storage_fence.timeout", &sf.timeout, DEFAULT_STORAGE_TIMEOUT);
        let default_msgwait = timeout.value.unwrap_or(DEFAULT_STORAGE_TIMEOUT) * 2;
        let msgwait = self.duration("storage_fence.msgwait", &sf.msgwait, default_msgwait);
        let span = |s: &Setting<Duration>| s.span.clone().unwrap_or_else(|| raw.span());
        let mut ok = true;
        if let (Some(t), Some(m)) = (timeout.value, msgwait.value)
            && m < t * 2
        {
            self.error(
                span(&msgwait),
                format!(
                    "storage_fence.msgwait ({}) must be at least twice storage_fence.timeout ({}): a fenced node may need up to `timeout` to notice the poison or give up on the device, and the fencing node must not go on before that",
                    format_duration(m),
                    format_duration(t)
                ),
            );
            ok = false;
        }
        if let (Some(hb), Some(delay)) = (heartbeat, fence_delay)
            && delay < hb
        {
            self.error(
                raw.span(),
                format!(
                    "cluster.fence_delay ({}) must be at least cluster.heartbeat_interval ({}) with a storage fence: the active writes its poison at once, and the standby, which checks its own slot before fencing, must start later than that even when it noticed the silence a heartbeat earlier",
                    format_duration(delay),
                    format_duration(hb)
                ),
            );
            ok = false;
        }
        match guard {
            Some(g) if !g.enabled || g.device.is_some() => {
                self.error(
                    raw.span(),
                    "a storage fence needs the guard process ([guard] enabled, without `device`): it is what reads this node's slot and stops everything on a poison",
                );
                ok = false;
            }
            _ => {}
        }
        if let (Some(m), Some(fence)) = (msgwait.value, fence) {
            for (l, level) in fence.plan.levels.iter().enumerate() {
                for (k, d) in level.devices.iter().enumerate() {
                    if matches!(d.kind, FenceDeviceKind::Storage { .. }) && d.timeout <= m {
                        self.error(
                            raw.span(),
                            format!(
                                "fence level {}, device {} (storage): its timeout ({}) must be longer than storage_fence.msgwait ({}), or every storage fence would time out; raise fence.timeout or the device's timeout",
                                l + 1,
                                k + 1,
                                format_duration(d.timeout),
                                format_duration(m)
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        Some(StorageFenceConfig { device: device?, timeout: timeout.value?, msgwait: msgwait.value? })
    }

    /// The `[witness]` table and the timings it must fit: the holder's view of a lease
    /// (`lease − margin`) must leave room for two renewals (`margin < lease / 3`); a
    /// renewal (every `lease / 3`) comes from the event loop, so not more often than
    /// heartbeats; and the guard, which stops this node's services when the agent stops
    /// renewing it, must be able to act before the lease ends although one renewal was
    /// lost (`guard.timeout < 2 × lease / 3 − margin`).
    fn check_witness(
        &mut self,
        raw: &Spanned<RawWitness>,
        heartbeat: Option<Duration>,
        guard: Option<&GuardConfig>,
    ) -> Option<WitnessConfig> {
        let w = raw.get_ref();
        let address = match &w.address {
            None => {
                self.error(
                    raw.span(),
                    "[witness] needs `address`, the witness's UDP address and port, e.g. address = \"192.0.2.10:7400\" (where `takeover witness --listen` runs)",
                );
                None
            }
            Some(a) => match a.get_ref().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        a.span(),
                        format!(
                            "witness.address {:?} is not an IP address and port, e.g. \"192.0.2.10:7400\"",
                            a.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let lease = self.duration("witness.lease", &w.lease, DEFAULT_WITNESS_LEASE);
        let margin = self.duration_from("witness.margin", &w.margin, DEFAULT_WITNESS_MARGIN, true);
        let (l, m) = (lease.value?, margin.value?);
        let lease_span = lease.span.clone().unwrap_or(raw.span());
        let mut ok = true;
        if m * 3 >= l {
            self.error(
                margin.span.clone().unwrap_or(lease_span.clone()),
                format!(
                    "witness.margin ({}) must be less than a third of witness.lease ({}): the holder believes its lease for lease − margin and renews every lease / 3, so two renewals must fit",
                    format_duration(m),
                    format_duration(l)
                ),
            );
            ok = false;
        }
        if let Some(hb) = heartbeat
            && l / 3 < hb
        {
            self.error(
                lease_span.clone(),
                format!(
                    "witness.lease ({}) is too short: it is renewed every lease / 3 from the loop that sends heartbeats, so lease / 3 must be at least cluster.heartbeat_interval ({})",
                    format_duration(l),
                    format_duration(hb)
                ),
            );
            ok = false;
        }
        match guard {
            Some(g) if !g.enabled => {
                self.error(
                    raw.span(),
                    "[witness] needs the guard ([guard] enabled = true): it is what stops this node's services when the lease cannot be renewed, even if the agent is paused",
                );
                ok = false;
            }
            Some(g) if m * 3 < l && g.timeout + m >= l * 2 / 3 => {
                self.error(
                    lease_span,
                    format!(
                        "witness.lease ({}) is too short for guard.timeout ({}) and witness.margin ({}): an active that cannot renew must be stopped by its guard before its lease ends although one renewal was lost, so guard.timeout + margin must be less than 2 × lease / 3",
                        format_duration(l),
                        format_duration(g.timeout),
                        format_duration(m)
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        if !ok {
            return None;
        }
        Some(WitnessConfig { address: address?, lease: l, margin: m })
    }

    fn check_guard(
        &mut self,
        raw: Option<&Spanned<RawGuard>>,
        heartbeat: Option<Duration>,
        dead_after: Option<Duration>,
    ) -> Option<GuardConfig> {
        let default_timeout = dead_after.unwrap_or(DEFAULT_DEAD_AFTER);
        let Some(raw) = raw else {
            return Some(GuardConfig { enabled: true, timeout: default_timeout, device: None });
        };
        let g = raw.get_ref();
        let enabled = g.enabled.as_ref().is_none_or(|it| *it.get_ref());
        let timeout = self.duration("guard.timeout", &g.timeout, default_timeout);
        if let (Some(t), Some(hb), Some(span)) = (timeout.value, heartbeat, timeout.span.clone())
            && t < hb * MIN_HEARTBEATS_BEFORE_DEAD
        {
            self.error(
                span,
                format!(
                    "guard.timeout ({}) must be at least {MIN_HEARTBEATS_BEFORE_DEAD} × cluster.heartbeat_interval ({}): the agent renews the guard from the loop that sends heartbeats, and a scheduling hiccup must not kill a healthy node's services; leave it out to use cluster.dead_after",
                    format_duration(t),
                    format_duration(hb)
                ),
            );
            return None;
        }
        let device = match &g.device {
            None => None,
            Some(d) if Path::new(d.get_ref()).is_absolute() => Some(PathBuf::from(d.get_ref())),
            Some(d) => {
                self.error(
                    d.span(),
                    format!("guard.device {:?} must be an absolute path, e.g. \"/dev/watchdog\"", d.get_ref()),
                );
                return None;
            }
        };
        Some(GuardConfig { enabled, timeout: timeout.value?, device })
    }

    fn check(&mut self, raw: RawFile) -> Option<ClusterConfig> {
        let cluster_span = raw.cluster.span();
        let cluster = raw.cluster.into_inner();

        if cluster.name.get_ref().trim().is_empty() {
            self.error(cluster.name.span(), "cluster.name is empty; give the cluster a name");
        }

        // ---- timings ----
        let heartbeat =
            self.duration("cluster.heartbeat_interval", &cluster.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        let dead_after = self.duration("cluster.dead_after", &cluster.dead_after, DEFAULT_DEAD_AFTER);
        let startup_wait = self.duration("cluster.startup_wait", &cluster.startup_wait, DEFAULT_STARTUP_WAIT);
        let fence_retry = self.duration("cluster.fence_retry", &cluster.fence_retry, DEFAULT_FENCE_RETRY);
        let mut fence_delay =
            self.duration_from("cluster.fence_delay", &cluster.fence_delay, DEFAULT_FENCE_DELAY, true);
        if let Some(delay) = fence_delay.value
            && delay >= MAX_FENCE_DELAY
        {
            self.error(
                fence_delay.span.clone().unwrap_or_else(|| cluster_span.clone()),
                format!(
                    "cluster.fence_delay ({}) must be below {}: it only has to let the active node's fence win a fence race, and it delays every takeover from an active node; a few hundred milliseconds is enough, e.g. \"{}\" (the default)",
                    format_duration(delay),
                    format_duration(MAX_FENCE_DELAY),
                    format_duration(DEFAULT_FENCE_DELAY)
                ),
            );
            fence_delay.value = None;
        }
        // A rule between two settings points at the first one if it is written in the
        // file, else at the second, else at the [cluster] header.
        let place = |a: &Setting<Duration>, b: &Setting<Duration>| {
            a.span.clone().or_else(|| b.span.clone()).unwrap_or_else(|| cluster_span.clone())
        };
        if let Some(hb) = heartbeat.value
            && hb < MIN_HEARTBEAT_INTERVAL
        {
            self.error(
                place(&heartbeat, &heartbeat),
                format!(
                    "cluster.heartbeat_interval ({}) must be at least {}: a shorter interval only burns CPU and makes scheduling hiccups look like failures",
                    format_duration(hb),
                    format_duration(MIN_HEARTBEAT_INTERVAL)
                ),
            );
        }
        if let (Some(hb), Some(dead)) = (heartbeat.value, dead_after.value)
            && dead < hb * MIN_HEARTBEATS_BEFORE_DEAD
        {
            self.error(
                place(&dead_after, &heartbeat),
                format!(
                    "cluster.dead_after ({}) must be at least {MIN_HEARTBEATS_BEFORE_DEAD} × heartbeat_interval ({}), or a busy machine will declare a healthy peer dead",
                    format_duration(dead),
                    format_duration(hb)
                ),
            );
        }
        if let (Some(wait), Some(dead)) = (startup_wait.value, dead_after.value)
            && wait < dead
        {
            self.error(
                place(&startup_wait, &dead_after),
                format!(
                    "cluster.startup_wait ({}) must be at least cluster.dead_after ({}): a recovering node would decide alone before it could hear a live peer; raise startup_wait",
                    format_duration(wait),
                    format_duration(dead)
                ),
            );
        }

        // ---- catch_up_window ----
        let catch_up_window = match &cluster.catch_up_window {
            None => Some(DEFAULT_CATCH_UP_WINDOW),
            Some(raw) => match raw.get_ref() {
                Value::Integer(n) if *n > 0 => Some(*n as u64),
                other => {
                    self.error(
                        raw.span(),
                        format!(
                            "cluster.catch_up_window = {other} must be a positive whole number of records, e.g. {DEFAULT_CATCH_UP_WINDOW} (the default)"
                        ),
                    );
                    None
                }
            },
        };

        // ---- arbiter and [fence] ----
        let arbiter = match &cluster.arbiter {
            None => Some(Arbiter::Fence),
            Some(raw) => match raw.get_ref().as_str() {
                "fence" => Some(Arbiter::Fence),
                "unsafe-assume-crash-stop" => Some(Arbiter::UnsafeAssumeCrashStop),
                other => {
                    self.error(
                        raw.span(),
                        format!(
                            "cluster.arbiter {other:?} is not an arbiter; use \"fence\" (with a [fence] table) or \"unsafe-assume-crash-stop\""
                        ),
                    );
                    None
                }
            },
        };
        let fence = match &raw.fence {
            None => {
                if arbiter == Some(Arbiter::Fence) {
                    let span = cluster.arbiter.as_ref().map_or(cluster_span.clone(), |a| a.span());
                    self.error(
                        span,
                        "arbiter = \"fence\" (the default) needs a [fence] table whose `command` fences a node, e.g. command = [\"takeover\", \"fence-local\", \"--pidfile\", \"/run/{node}.pid\"]; or set arbiter = \"unsafe-assume-crash-stop\", which is unsafe under partitions and pauses",
                    );
                }
                None
            }
            Some(raw_fence) => self.check_fence(raw_fence),
        };

        // ---- [guard] ----
        let guard = self.check_guard(raw.guard.as_ref(), heartbeat.value, dead_after.value);
        let auth = self.check_auth(&cluster, &cluster_span);

        // ---- nodes ----
        let nodes = self.check_nodes(&raw.node, &cluster_span);

        // ---- [storage_fence] ----
        let node_names: Vec<String> = raw.node.iter().map(|it| it.get_ref().name.get_ref().clone()).collect();
        let storage_fence = match &raw.storage_fence {
            None => {
                if let Some(fence) = &raw.fence
                    && Self::uses_storage(fence.get_ref())
                {
                    self.error(
                        fence.span(),
                        "a fence device is `{ storage = true }` but there is no [storage_fence] table: add one with the shared device, e.g. [storage_fence] device = \"/dev/disk/by-id/...\"",
                    );
                }
                Some(None)
            }
            Some(sf) => self
                .check_storage_fence(
                    sf,
                    &node_names,
                    guard.as_ref(),
                    (heartbeat.value, fence_delay.value),
                    fence.as_ref(),
                )
                .map(Some),
        };

        // ---- [witness] ----
        let witness = match &raw.witness {
            None => Some(None),
            Some(w) => self.check_witness(w, heartbeat.value, guard.as_ref()).map(Some),
        };

        // ---- groups ----
        let groups = self.check_groups(&raw.group, &raw.node);

        Some(ClusterConfig {
            name: cluster.name.into_inner(),
            heartbeat_interval: heartbeat.value?,
            dead_after: dead_after.value?,
            startup_wait: startup_wait.value?,
            arbiter: arbiter?,
            fence_retry: fence_retry.value?,
            fence_delay: fence_delay.value?,
            catch_up_window: catch_up_window?,
            guard: guard?,
            storage_fence: storage_fence?,
            auth: auth?,
            witness: witness?,
            fence: match (arbiter?, fence) {
                (Arbiter::Fence, None) => return None,
                (_, fence) => fence,
            },
            nodes: nodes?,
            groups: groups?,
        })
    }

    /// `key_file` and `auth`: a key file is required unless `auth = "none"` says otherwise.
    fn check_auth(&mut self, cluster: &RawCluster, cluster_span: &Range<usize>) -> Option<AuthConfig> {
        let default_path = crate::auth::keyfile::DEFAULT_PATH;
        let mode = match &cluster.auth {
            None => None,
            Some(raw) => match raw.get_ref().as_str() {
                "none" => Some(false),
                crate::auth::ALGORITHM => Some(true),
                other => {
                    self.error(
                        raw.span(),
                        format!(
                            "cluster.auth {other:?} is not known: give key_file = \"{default_path}\" to authenticate and encrypt cluster traffic (auth = \"{}\", the default), or write auth = \"none\" for an unauthenticated test cluster",
                            crate::auth::ALGORITHM
                        ),
                    );
                    return None;
                }
            },
        };
        match (mode, &cluster.key_file) {
            (Some(false), Some(file)) => {
                self.error(
                    file.span(),
                    "cluster.key_file is given but auth = \"none\" says traffic is not authenticated; remove one of the two",
                );
                None
            }
            (Some(false), None) => Some(AuthConfig::None),
            (_, Some(file)) => {
                let path = PathBuf::from(file.get_ref());
                if !path.is_absolute() {
                    self.error(
                        file.span(),
                        format!(
                            "cluster.key_file {:?} must be an absolute path, the same on every node, e.g. \"{default_path}\"",
                            file.get_ref()
                        ),
                    );
                    return None;
                }
                Some(AuthConfig::Key { key_file: path })
            }
            (_, None) => {
                let span = cluster.auth.as_ref().map_or(cluster_span.clone(), |it| it.span());
                self.error(
                    span,
                    format!(
                        "cluster traffic is authenticated and encrypted with a cluster key, and [cluster] names none: run `takeover keygen` (it writes {default_path}, mode 0600), copy the file to every node, and add key_file = \"{default_path}\" here; only for a test cluster on a trusted network, write auth = \"none\" instead"
                    ),
                );
                None
            }
        }
    }

    fn check_fence(&mut self, raw: &Spanned<RawFence>) -> Option<FenceConfig> {
        let f = raw.get_ref();
        let timeout = self.duration("fence.timeout", &f.timeout, DEFAULT_FENCE_TIMEOUT).value;
        let retries = match &f.retries {
            None => Some(DEFAULT_FENCE_RETRIES),
            Some(r) => match r.get_ref() {
                Value::Integer(n) if (0..=i64::from(MAX_FENCE_RETRIES)).contains(n) => Some(*n as u32),
                other => {
                    self.error(
                        r.span(),
                        format!(
                            "fence.retries = {other} must be a whole number from 0 to {MAX_FENCE_RETRIES}: how many more times each device is tried after a failed attempt (default {DEFAULT_FENCE_RETRIES})"
                        ),
                    );
                    None
                }
            },
        };
        let levels = match (&f.command, &f.level) {
            (Some(command), Some(_)) => {
                self.error(
                    command.span(),
                    "fence.command and [[fence.level]] cannot both be given: `command` is the shortcut for a single level with a single command; put it into a level instead, as devices = [{ command = [...] }]",
                );
                None
            }
            (None, None) => {
                self.error(
                    raw.span(),
                    "the [fence] table needs `command = [...]` (a command that stops a node, with {node} standing for its name) or at least one [[fence.level]] with devices",
                );
                None
            }
            (Some(command), None) => self
                .argv(
                    "fence.command",
                    command,
                    "give the argv of a command that stops a node, with {node} standing for its name",
                )
                .map(|argv| {
                    vec![FenceLevel {
                        devices: vec![FenceDevice {
                            kind: FenceDeviceKind::Command { argv },
                            timeout: timeout.unwrap_or(DEFAULT_FENCE_TIMEOUT),
                            retries: retries.unwrap_or(DEFAULT_FENCE_RETRIES),
                        }],
                    }]
                }),
            (None, Some(levels)) => self.check_levels(levels, timeout, retries),
        };
        Some(FenceConfig { timeout: timeout?, retries: retries?, plan: FencePlan { levels: levels? } })
    }

    /// `[[fence.level]]` tables; `timeout` and `retries` are the `[fence]` defaults
    /// (`None` if invalid, already reported).
    fn check_levels(
        &mut self,
        levels: &Spanned<Vec<Spanned<RawLevel>>>,
        timeout: Option<Duration>,
        retries: Option<u32>,
    ) -> Option<Vec<FenceLevel>> {
        let usage =
            "add devices = [{ agent = \"/usr/sbin/fence_...\", options = { ... } }] or devices = [{ command = [...] }]";
        if levels.get_ref().is_empty() {
            self.error(levels.span(), format!("fence.level is empty; give at least one level: {usage}"));
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        for (l, level) in levels.get_ref().iter().enumerate() {
            let devices = match &level.get_ref().devices {
                None => {
                    self.error(level.span(), format!("fence level {} has no devices; {usage}", l + 1));
                    ok = false;
                    continue;
                }
                Some(devices) if devices.get_ref().is_empty() => {
                    self.error(devices.span(), format!("fence level {}: devices is empty; {usage}", l + 1));
                    ok = false;
                    continue;
                }
                Some(devices) => devices.get_ref(),
            };
            let mut checked = Vec::new();
            for (k, device) in devices.iter().enumerate() {
                let what = format!("fence level {}, device {}", l + 1, k + 1);
                match self.check_device(&what, device, timeout, retries) {
                    Some(device) => checked.push(device),
                    None => ok = false,
                }
            }
            out.push(FenceLevel { devices: checked });
        }
        ok.then_some(out)
    }

    fn check_device(
        &mut self,
        what: &str,
        raw: &Spanned<RawDevice>,
        timeout: Option<Duration>,
        retries: Option<u32>,
    ) -> Option<FenceDevice> {
        let d = raw.get_ref();
        let timeout = match &d.timeout {
            None => timeout,
            Some(_) => {
                self.duration(&format!("{what}: timeout"), &d.timeout, timeout.unwrap_or(DEFAULT_FENCE_TIMEOUT)).value
            }
        };
        let kind = match (&d.agent, &d.command) {
            _ if d.witness.is_some() => {
                let witness = d.witness.as_ref().expect("checked");
                self.error(
                    witness.span(),
                    format!(
                        "{what}: the witness is not a fence device: it cannot stop a node, and a fence must (a standby cut off but still running keeps its old journal and would later take over with it, losing what the active acknowledged alone). Keep a power or storage fence; with a [witness] table every start also waits for the witness's lease"
                    ),
                );
                None
            }
            _ if d.storage.is_some() => {
                let storage = d.storage.as_ref().expect("checked");
                if d.agent.is_some() || d.command.is_some() || d.options.is_some() || !*storage.get_ref() {
                    self.error(
                        storage.span(),
                        format!(
                            "{what}: a storage device is written `{{ storage = true }}` (with an optional timeout), alone: it uses the [storage_fence] table"
                        ),
                    );
                    None
                } else {
                    // The device path and msgwait come from [storage_fence]; see
                    // ClusterConfig::fence_plan_for.
                    Some(FenceDeviceKind::Storage {
                        device: PathBuf::new(),
                        msgwait: Duration::ZERO,
                        me: (0, String::new()),
                    })
                }
            }
            (Some(_), Some(command)) => {
                self.error(
                    command.span(),
                    format!(
                        "{what} has both `agent` and `command`; a device is either a fence agent (agent = \"/usr/sbin/fence_...\" with options) or a plain command (command = [...], exit 0 = the node is off), not both"
                    ),
                );
                None
            }
            (None, None) => {
                self.error(
                    raw.span(),
                    format!(
                        "{what} has neither `agent` nor `command`; give agent = \"/usr/sbin/fence_...\" (a fence-agents program, with options) or command = [...] (exit 0 = the node is off)"
                    ),
                );
                None
            }
            (None, Some(command)) => {
                let argv = self.argv(
                    &format!("{what}: command"),
                    command,
                    "give the argv of a command that stops a node, with {node} standing for its name",
                );
                if let Some(options) = &d.options {
                    self.error(
                        options.span(),
                        format!(
                            "{what}: options are only for `agent` devices; a command gets its arguments in `command`"
                        ),
                    );
                    None
                } else {
                    argv.map(|argv| FenceDeviceKind::Command { argv })
                }
            }
            (Some(agent), None) => {
                let path = agent.get_ref();
                let path_ok = Path::new(path).is_absolute();
                if !path_ok {
                    self.error(
                        agent.span(),
                        format!(
                            "{what}: agent {path:?} is not an absolute path; give the full path of the fence agent, e.g. \"/usr/sbin/fence_ipmilan\""
                        ),
                    );
                }
                let options = self.agent_options(what, d.options.as_ref());
                match (path_ok, options) {
                    (true, Some(options)) => Some(FenceDeviceKind::Agent { path: PathBuf::from(path), options }),
                    _ => None,
                }
            }
        };
        Some(FenceDevice { kind: kind?, timeout: timeout?, retries: retries? })
    }

    /// The `options` of an agent device, in file order. Error messages never quote a
    /// value: it may be a password.
    fn agent_options(
        &mut self,
        what: &str,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>,
    ) -> Option<Vec<AgentOption>> {
        let Some(raw) = raw else { return Some(Vec::new()) };
        let mut entries: Vec<_> = raw.get_ref().iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut ok = true;
        let mut options = Vec::new();
        for (key, value) in entries {
            let k = key.get_ref();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.error(
                    key.span(),
                    format!(
                        "{what}: option name {k:?} is not a fence-agent option; use only ASCII letters, digits, `_` and `-` (see the agent's `-o metadata`)"
                    ),
                );
                ok = false;
                continue;
            }
            if k == "action" {
                self.error(
                    key.span(),
                    format!("{what}: option `action` is set by takeover (off, then status to verify); remove it"),
                );
                ok = false;
                continue;
            }
            let text = match value.get_ref() {
                Value::String(s) => Some(s.clone()),
                Value::Integer(n) => Some(n.to_string()),
                Value::Float(x) if x.is_finite() => Some(x.to_string()),
                Value::Boolean(true) => Some("1".to_string()),
                // fencing.py counts a flag given as 0 as set: leave it out instead.
                Value::Boolean(false) => None,
                other => {
                    let kind = match other {
                        Value::Float(_) => "an infinite or NaN float",
                        Value::Array(_) => "an array",
                        Value::Table(_) => "a table",
                        _ => "a date-time",
                    };
                    self.error(
                        value.span(),
                        format!("{what}: option `{k}` must be a string, a number or a boolean, not {kind}"),
                    );
                    ok = false;
                    continue;
                }
            };
            let Some(text) = text else { continue };
            if text.contains(['\n', '\r', '\0']) {
                self.error(
                    value.span(),
                    format!(
                        "{what}: option `{k}` contains a line break or a NUL; the agent reads one key=value per line on stdin"
                    ),
                );
                ok = false;
                continue;
            }
            options.push(AgentOption { key: k.clone(), value: text });
        }
        ok.then_some(options)
    }

    fn check_nodes(&mut self, raw_nodes: &[Spanned<RawNode>], cluster_span: &Range<usize>) -> Option<Vec<NodeConfig>> {
        let mut ok = true;
        match raw_nodes.len() {
            0 => {
                self.error(
                    cluster_span.clone(),
                    "the cluster declares no node; add a [[node]] table for each of at least 2 machines",
                );
                ok = false;
            }
            1 => {
                self.error(
                    raw_nodes[0].span(),
                    "the cluster declares only 1 node; add a [[node]] table for the second machine (at least 2 are needed)",
                );
                ok = false;
            }
            n if n > usize::from(u16::MAX) + 1 => {
                self.error(
                    raw_nodes[usize::from(u16::MAX) + 1].span(),
                    format!("the cluster declares {n} nodes; at most 65536 are supported"),
                );
                ok = false;
            }
            _ => {}
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        // Every TCP address a node binds: links and tcp APIs.
        let mut addresses: HashMap<SocketAddr, (String, usize)> = HashMap::new();
        let mut advertised: HashMap<SocketAddr, (String, usize)> = HashMap::new();
        // The first node with links: the reference for the count and the families.
        let mut reference: Option<(&str, Vec<Option<SocketAddr>>)> = None;
        let mut nodes = Vec::new();

        for raw_node in raw_nodes {
            let node = raw_node.get_ref();
            let name = node.name.get_ref().as_str();
            let mut node_ok = self.name("node", &node.name);
            if let Some(&first) = names.get(name) {
                self.error(
                    node.name.span(),
                    format!("node name `{name}` is already used (line {first}); node names must be unique"),
                );
                node_ok = false;
            } else {
                names.insert(name, self.line_of(&node.name.span()));
            }

            // state_dir
            let state_dir = PathBuf::from(node.state_dir.get_ref());
            if node.state_dir.get_ref().trim().is_empty() {
                self.error(
                    node.state_dir.span(),
                    format!(
                        "node `{name}`: state_dir is empty; give the directory where this node keeps its durable state"
                    ),
                );
                node_ok = false;
            }
            // The same state_dir (and api socket) on every node is what one file for
            // separate machines gives; two agents sharing one on the same machine are
            // stopped at start-up by the state directory's lock.

            // api
            let api = self.api(name, &node.api);
            if let Some(api) = &api {
                let line = self.line_of(&node.api.span());
                if let ApiAddr::Tcp(addr) = api
                    && let Some((owner, first)) = addresses.get(addr)
                {
                    self.error(
                        node.api.span(),
                        format!(
                            "node `{name}`: api `{api}` is already used by {owner} (line {first}); the api needs an address:port of its own"
                        ),
                    );
                    node_ok = false;
                } else if let ApiAddr::Tcp(addr) = api {
                    addresses.insert(*addr, (format!("the api of node `{name}`"), line));
                }
            } else {
                node_ok = false;
            }

            // api_listen and api_token_file: the optional TCP listener with a token
            let api_listen = match &node.api_listen {
                None => None,
                Some(raw) => match raw.get_ref().parse::<SocketAddr>() {
                    Ok(addr) if addr.port() != 0 => {
                        if let Some((owner, first)) = addresses.get(&addr) {
                            self.error(
                                raw.span(),
                                format!(
                                    "node `{name}`: api_listen {addr} is already used by {owner} (line {first}); give it an address:port of its own"
                                ),
                            );
                            node_ok = false;
                        } else {
                            addresses
                                .insert(addr, (format!("the api_listen of node `{name}`"), self.line_of(&raw.span())));
                        }
                        Some(addr)
                    }
                    _ => {
                        self.error(
                            raw.span(),
                            format!(
                                "node `{name}`: api_listen {:?} is not IP:PORT with a fixed port (host names are not resolved), e.g. \"10.0.0.1:7480\"",
                                raw.get_ref()
                            ),
                        );
                        node_ok = false;
                        None
                    }
                },
            };
            let api_token_file = node.api_token_file.as_ref().map(|it| PathBuf::from(it.get_ref()));
            match (&node.api_listen, &node.api_token_file) {
                (Some(raw), None) => {
                    self.error(
                        raw.span(),
                        format!(
                            "node `{name}`: api_listen needs api_token_file: the TCP listener serves only clients that send its token"
                        ),
                    );
                    node_ok = false;
                }
                (None, Some(raw)) => {
                    self.error(
                        raw.span(),
                        format!(
                            "node `{name}`: api_token_file is given without api_listen; add api_listen or remove it"
                        ),
                    );
                    node_ok = false;
                }
                (_, Some(raw)) if raw.get_ref().trim().is_empty() => {
                    self.error(
                        raw.span(),
                        format!("node `{name}`: api_token_file is empty; give the token file's path"),
                    );
                    node_ok = false;
                }
                _ => {}
            }

            // links
            let links = self.links(name, &node.links, &mut addresses);
            if links.iter().any(Option::is_none) || links.is_empty() {
                node_ok = false;
            }
            match &reference {
                None if !links.is_empty() => reference = Some((name, links.clone())),
                Some((ref_name, ref_links)) if !links.is_empty() => {
                    if ref_links.len() != links.len() {
                        self.error(
                            node.links.span(),
                            format!(
                                "node `{name}` has {} but node `{ref_name}` has {}; link k of every node is on network k, so every node needs the same number of links",
                                plural(links.len(), "link"),
                                plural(ref_links.len(), "link")
                            ),
                        );
                        node_ok = false;
                    }
                    for (k, (mine, theirs)) in links.iter().zip(ref_links).enumerate() {
                        if let (Some(mine), Some(theirs)) = (mine, theirs)
                            && mine.is_ipv4() != theirs.is_ipv4()
                        {
                            let family = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
                            self.error(
                                node.links.get_ref()[k].span(),
                                format!(
                                    "node `{name}`: the {} link ({mine}) is {} but the {} link of node `{ref_name}` ({theirs}) is {}; link k of every node is on network k, so they must use the same address family",
                                    ordinal(k),
                                    family(mine),
                                    ordinal(k),
                                    family(theirs)
                                ),
                            );
                            node_ok = false;
                        }
                    }
                }
                _ => {}
            }

            // advertise: where peers send, one per link
            let advertise = match &node.advertise {
                None => links.clone(),
                Some(raw) => {
                    // Advertised addresses are unique among themselves; one may equal the
                    // node's own link address (no relay on that link).
                    let advertise = self.links(name, raw, &mut advertised);
                    if advertise.len() != links.len() {
                        self.error(
                            raw.span(),
                            format!(
                                "node `{name}` advertises {} address(es) for {}; give one address per link, in the same order",
                                advertise.len(),
                                plural(links.len(), "link")
                            ),
                        );
                        node_ok = false;
                    }
                    if advertise.iter().any(Option::is_none) {
                        node_ok = false;
                    }
                    advertise
                }
            };

            if let (true, Some(api)) = (node_ok, api) {
                nodes.push(NodeConfig {
                    name: name.to_string(),
                    state_dir,
                    api,
                    api_listen,
                    api_token_file,
                    links: links.into_iter().flatten().collect(),
                    advertise: advertise.into_iter().flatten().collect(),
                });
            } else {
                ok = false;
            }
        }
        ok.then_some(nodes)
    }

    fn api(&mut self, node: &str, raw: &Spanned<String>) -> Option<ApiAddr> {
        let text = raw.get_ref();
        let span = raw.span();
        let usage = "write \"unix:/path/to/socket\" or \"tcp:127.0.0.1:PORT\"";
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                self.error(span, format!("node `{node}`: api \"unix:\" has no socket path; {usage}"));
                return None;
            }
            if path.len() > MAX_UNIX_SOCKET_PATH {
                self.error(
                    span,
                    format!(
                        "node `{node}`: api socket path is {} bytes long, but a Unix socket path can have at most {MAX_UNIX_SOCKET_PATH}; choose a shorter path",
                        path.len()
                    ),
                );
                return None;
            }
            return Some(ApiAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                self.error(
                    span,
                    format!("node `{node}`: api {text:?} is not tcp:IP:PORT (host names are not resolved); {usage}"),
                );
                return None;
            };
            if !addr.ip().is_loopback() {
                self.error(
                    span,
                    format!(
                        "node `{node}`: api {text:?} is not a loopback address; the local API must not be reachable from other machines: use 127.0.0.1 or [::1], or a unix: socket"
                    ),
                );
                return None;
            }
            if addr.port() == 0 {
                self.error(
                    span,
                    format!("node `{node}`: api {text:?} has port 0; give the fixed port clients connect to"),
                );
                return None;
            }
            return Some(ApiAddr::Tcp(addr));
        }
        self.error(span, format!("node `{node}`: api {text:?} is neither unix: nor tcp:; {usage}"));
        None
    }

    /// The links of one node; an invalid one is reported and becomes `None`.
    fn links(
        &mut self,
        node: &str,
        raw: &RawStrings,
        addresses: &mut HashMap<SocketAddr, (String, usize)>,
    ) -> Vec<Option<SocketAddr>> {
        if raw.get_ref().is_empty() {
            self.error(
                raw.span(),
                format!(
                    "node `{node}` has no link; give one IP:PORT per network the nodes share, e.g. links = [\"192.0.2.1:7101\"]"
                ),
            );
            return Vec::new();
        }
        let mut links = Vec::new();
        for (k, link) in raw.get_ref().iter().enumerate() {
            let text = link.get_ref();
            let span = link.span();
            let line = self.line_of(&span);
            let addr = match text.parse::<SocketAddr>() {
                Err(_) => {
                    self.error(
                        span,
                        format!(
                            "node `{node}`: link {text:?} is not IP:PORT such as \"192.0.2.1:7101\" or \"[2001:db8::1]:7101\" (host names are not resolved)"
                        ),
                    );
                    None
                }
                Ok(addr) if addr.ip().is_unspecified() || addr.ip().is_multicast() => {
                    self.error(
                        span,
                        format!(
                            "node `{node}`: link {text:?} is not an address the peer can send to; give this node's own address on the {} network",
                            ordinal(k)
                        ),
                    );
                    None
                }
                Ok(addr) if addr.port() == 0 => {
                    self.error(
                        span,
                        format!("node `{node}`: link {text:?} has port 0; give the fixed port the peer sends to"),
                    );
                    None
                }
                Ok(addr) => {
                    if let Some((owner, first)) = addresses.get(&addr) {
                        self.error(
                            span,
                            format!(
                                "node `{node}`: link {text:?} is already used by {owner} (line {first}); every link needs its own address:port"
                            ),
                        );
                        None
                    } else {
                        addresses.insert(addr, (format!("the {} link of node `{node}`", ordinal(k)), line));
                        Some(addr)
                    }
                }
            };
            links.push(addr);
        }
        links
    }

    fn check_groups(
        &mut self,
        raw_groups: &[Spanned<RawGroup>],
        raw_nodes: &[Spanned<RawNode>],
    ) -> Option<Vec<GroupConfig>> {
        let mut declared: Vec<&str> = Vec::new();
        for n in raw_nodes {
            let name = n.get_ref().name.get_ref().as_str();
            if !declared.contains(&name) {
                declared.push(name);
            }
        }
        let declared_list = if declared.is_empty() { "none".to_string() } else { declared.join(", ") };

        let mut ok = true;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut groups = Vec::new();
        for raw_group in raw_groups {
            let group = raw_group.get_ref();
            let name = group.name.get_ref().as_str();
            let mut group_ok = self.name("group", &group.name);
            if let Some(&first) = names.get(name) {
                self.error(
                    group.name.span(),
                    format!("group name `{name}` is already used (line {first}); group names must be unique"),
                );
                group_ok = false;
            } else {
                names.insert(name, self.line_of(&group.name.span()));
            }

            let members = group.nodes.get_ref();
            if members.len() != 2 {
                self.error(
                    group.nodes.span(),
                    format!(
                        "group `{name}` lists {}; a group is a pair: give exactly 2 node names, the preferred one first",
                        plural(members.len(), "node")
                    ),
                );
                group_ok = false;
            }
            for (i, member) in members.iter().enumerate() {
                let m = member.get_ref().as_str();
                if !declared.contains(&m) {
                    self.error(
                        member.span(),
                        format!("unknown node `{m}` in group `{name}`; declared nodes: {declared_list}"),
                    );
                    group_ok = false;
                } else if members[..i].iter().any(|earlier| earlier.get_ref() == m) {
                    self.error(
                        member.span(),
                        format!("group `{name}` lists node `{m}` twice; a group is a pair of two different nodes"),
                    );
                    group_ok = false;
                }
            }

            let names: Vec<String> = members.iter().map(|it| it.get_ref().clone()).collect();
            let checked = self.check_group_resources(name, group, &names);
            match (group_ok, checked) {
                (true, Some(checked)) if members.len() == 2 => {
                    groups.push(GroupConfig {
                        name: name.to_string(),
                        nodes: [names[0].clone(), names[1].clone()],
                        resources: checked.resources,
                        failback: checked.failback,
                        failback_delay: checked.failback_delay,
                    });
                }
                _ => ok = false,
            }
        }
        ok.then_some(groups)
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid file using every key. Line numbers matter: tests replace whole lines.
    const FULL: &str = r#"[cluster]
name = "demo"
heartbeat_interval = "100ms"
dead_after = "500ms"
startup_wait = "3s"
arbiter = "fence"
fence_retry = "1s"
catch_up_window = 4096
key_file = "/etc/takeover/cluster.key"
[fence]
command = ["takeover", "fence-local", "--pidfile", "/tmp/x/{node}/agent.pid"]
timeout = "10s"

[[node]]
name = "alpha"
state_dir = "/var/lib/takeover/alpha"
api = "unix:/run/takeover/alpha.sock"
links = ["127.0.0.1:7101", "127.0.0.2:7101"]

[[node]]
name = "beta"
state_dir = "/var/lib/takeover/beta"
api = "tcp:127.0.0.1:7400"
links = ["127.0.0.1:7102", "127.0.0.2:7102"]

[[group]]
name = "web"
nodes = ["alpha", "beta"]
service = ["/usr/bin/python3", "-m", "http.server", "8080"]
stop_timeout = "5s"
"#;

    /// FULL with line `n` (1-based) replaced by `text` (which may span several lines
    /// or be empty); the lines before `n` keep their numbers.
    fn with(n: usize, text: &str) -> String {
        with_lines(&[(n, text)])
    }

    fn with_lines(changes: &[(usize, &str)]) -> String {
        FULL.lines()
            .enumerate()
            .map(|(i, line)| changes.iter().find(|(n, _)| *n == i + 1).map_or(line, |(_, text)| *text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn errors_of(text: &str) -> Vec<ConfigError> {
        match parse(text, "cluster.toml") {
            Ok(_) => panic!("expected errors, the file parsed:\n{text}"),
            Err(e) => e.into_iter().collect(),
        }
    }

    /// The only error of `text`, as (line, column, caret length, message).
    fn single(text: &str) -> (usize, usize, usize, String) {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        let e = &errors[0];
        let caret = e.snippet.as_ref().map_or(0, |s| s.caret_len);
        (e.line, e.column, caret, e.message.clone())
    }

    fn assert_single(text: &str, line: usize, column: usize, message_part: &str) {
        let (l, c, _, message) = single(text);
        assert_eq!((l, c), (line, column), "position of: {message}");
        assert!(message.contains(message_part), "message {message:?} does not contain {message_part:?}");
    }

    #[test]
    fn full_file_parses_with_every_value() {
        let c = parse(FULL, "cluster.toml").unwrap();
        assert_eq!(c.name, "demo");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.dead_after, Duration::from_millis(500));
        assert_eq!(c.startup_wait, Duration::from_secs(3));
        assert_eq!(c.arbiter, Arbiter::Fence);
        assert_eq!(c.fence_retry, Duration::from_secs(1));
        assert_eq!(c.catch_up_window, 4096);
        assert_eq!(c.auth, AuthConfig::Key { key_file: "/etc/takeover/cluster.key".into() });
        let fence = c.fence.as_ref().unwrap();
        assert_eq!(fence.timeout, Duration::from_secs(10));
        assert_eq!(fence.retries, 1);
        assert_eq!(
            fence.plan,
            FencePlan {
                levels: vec![FenceLevel {
                    devices: vec![FenceDevice {
                        kind: FenceDeviceKind::Command {
                            argv: ["takeover", "fence-local", "--pidfile", "/tmp/x/{node}/agent.pid"]
                                .map(String::from)
                                .to_vec()
                        },
                        timeout: Duration::from_secs(10),
                        retries: 1,
                    }]
                }]
            }
        );
        assert_eq!(c.fence_plan().as_ref(), Some(&fence.plan));
        assert_eq!(c.fence_delay, Duration::from_millis(200));
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(
            c.nodes[0],
            NodeConfig {
                name: "alpha".into(),
                state_dir: "/var/lib/takeover/alpha".into(),
                api: ApiAddr::Unix("/run/takeover/alpha.sock".into()),
                api_listen: None,
                api_token_file: None,
                links: vec!["127.0.0.1:7101".parse().unwrap(), "127.0.0.2:7101".parse().unwrap()],
                advertise: vec!["127.0.0.1:7101".parse().unwrap(), "127.0.0.2:7101".parse().unwrap()],
            }
        );
        assert_eq!(c.nodes[1].name, "beta");
        assert_eq!(c.nodes[1].api, ApiAddr::Tcp("127.0.0.1:7400".parse().unwrap()));
        assert_eq!(
            c.groups,
            [GroupConfig {
                name: "web".into(),
                nodes: ["alpha".into(), "beta".into()],
                resources: vec![ResourceConfig {
                    name: "service".into(),
                    kind: ResourceKindConfig::Process {
                        argv: vec!["/usr/bin/python3".into(), "-m".into(), "http.server".into(), "8080".into()],
                        env: vec![],
                        log: None,
                    },
                    start_timeout: DEFAULT_OP_TIMEOUT,
                    stop_timeout: Duration::from_secs(5),
                    monitor_timeout: DEFAULT_OP_TIMEOUT,
                    monitor_interval: SERVICE_MONITOR_INTERVAL,
                    max_restarts: DEFAULT_MAX_RESTARTS,
                    restart_window: DEFAULT_RESTART_WINDOW,
                }],
                failback: Failback::Manual,
                failback_delay: DEFAULT_FAILBACK_DELAY,
            }]
        );
    }

    #[test]
    fn absent_keys_take_their_defaults() {
        let text = r#"
[cluster]
name = "minimal"
key_file = "/etc/takeover/cluster.key"

[fence]
command = ["fence-it", "{node}"]

[[node]]
name = "a"
state_dir = "/s/a"
api = "unix:/r/a.sock"
links = ["10.0.0.1:7100"]

[[node]]
name = "b"
state_dir = "/s/b"
api = "unix:/r/b.sock"
links = ["10.0.0.2:7100"]

[[group]]
name = "g"
nodes = ["b", "a"]
"#;
        let c = parse(text, "t.toml").unwrap();
        assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.dead_after, Duration::from_millis(500));
        assert_eq!(c.startup_wait, Duration::from_secs(3));
        assert_eq!(c.arbiter, Arbiter::Fence);
        assert_eq!(c.fence_retry, Duration::from_secs(1));
        assert_eq!(c.catch_up_window, 4096);
        assert_eq!(c.fence.as_ref().unwrap().timeout, Duration::from_secs(10));
        assert_eq!(c.fence.as_ref().unwrap().retries, DEFAULT_FENCE_RETRIES);
        assert_eq!(c.fence_delay, DEFAULT_FENCE_DELAY);
        assert_eq!(c.groups[0].resources, vec![]);
        assert_eq!(c.groups[0].failback, Failback::Manual);
        assert_eq!(c.groups[0].preferred(), "b");
    }

    // ---- key_file and auth ----

    #[test]
    fn without_key_file_the_file_is_refused_saying_how_to_make_a_key() {
        let text = with(9, "");
        let (line, column, _, message) = single(&text);
        assert_eq!((line, column), (1, 1), "at [cluster]: {message}");
        assert!(message.contains("run `takeover keygen`"), "{message}");
        assert!(message.contains(r#"key_file = "/etc/takeover/cluster.key""#), "{message}");
        assert!(message.contains(r#"write auth = "none" instead"#), "{message}");
    }

    #[test]
    fn auth_none_is_accepted_only_when_written() {
        let c = parse(&with(9, r#"auth = "none""#), "cluster.toml").unwrap();
        assert_eq!(c.auth, AuthConfig::None);
        let c = parse(&with(9, "key_file = \"/k\"\nauth = \"chacha20-poly1305\""), "cluster.toml").unwrap();
        assert_eq!(c.auth, AuthConfig::Key { key_file: "/k".into() });
    }

    #[test]
    fn auth_mistakes_are_reported_at_the_value() {
        assert_single(
            &with(9, "key_file = \"/k\"\nauth = \"none\""),
            9,
            12,
            r#"cluster.key_file is given but auth = "none""#,
        );
        assert_single(&with(9, r#"key_file = "cluster.key""#), 9, 12, "must be an absolute path");
        assert_single(&with(9, r#"auth = "aes""#), 9, 8, r#"cluster.auth "aes" is not known"#);
        assert_single(&with(9, r#"auth = "chacha20-poly1305""#), 9, 8, "run `takeover keygen`");
    }

    #[test]
    fn unsafe_arbiter_needs_no_fence_table() {
        let text = with_lines(&[(6, r#"arbiter = "unsafe-assume-crash-stop""#), (10, ""), (11, ""), (12, "")]);
        let c = parse(&text, "cluster.toml").unwrap();
        assert_eq!(c.arbiter, Arbiter::UnsafeAssumeCrashStop);
        assert_eq!(c.fence, None);
        assert_eq!(c.fence_plan(), None);
    }

    // ---- [guard] ----

    /// FULL followed by `guard` (a `[guard]` table) at its end.
    fn with_guard(guard: &str) -> String {
        format!("{FULL}\n[guard]\n{guard}\n")
    }

    #[test]
    fn guard_defaults_to_on_with_dead_after() {
        let c = parse(FULL, "cluster.toml").unwrap();
        assert_eq!(c.guard, GuardConfig { enabled: true, timeout: c.dead_after, device: None });
        let c = parse(&with_guard("timeout = \"2s\"\ndevice = \"/dev/watchdog\""), "cluster.toml").unwrap();
        assert_eq!(c.guard.timeout, Duration::from_secs(2));
        assert_eq!(c.guard.device.as_deref(), Some(Path::new("/dev/watchdog")));
        let c = parse(&with_guard("enabled = false"), "cluster.toml").unwrap();
        assert!(!c.guard.enabled);
    }

    #[test]
    fn guard_mistakes_are_reported_where_they_are() {
        let lines = FULL.lines().count();
        assert_single(
            &with_guard("timeout = \"150ms\""),
            lines + 3,
            11,
            "guard.timeout (150ms) must be at least 3 × cluster.heartbeat_interval (100ms)",
        );
        assert_single(
            &with_guard("device = \"watchdog\""),
            lines + 3,
            10,
            "guard.device \"watchdog\" must be an absolute path",
        );
        assert_single(&with_guard("timeout = \"soon\""), lines + 3, 11, "guard.timeout");
        let (line, _, _, message) = single(&with_guard("mode = \"x\""));
        assert_eq!(line, lines + 3, "{message}");
        assert!(message.contains("mode"), "{message}");
    }

    // ---- [witness] ----

    #[test]
    fn witness_parses_with_defaults() {
        let c = parse(&format!("{FULL}\n[witness]\naddress = \"192.0.2.10:7400\"\n"), "cluster.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.witness,
            Some(WitnessConfig {
                address: "192.0.2.10:7400".parse().unwrap(),
                lease: DEFAULT_WITNESS_LEASE,
                margin: DEFAULT_WITNESS_MARGIN
            })
        );
        assert_eq!(parse(FULL, "cluster.toml").unwrap().witness, None);
        let c = parse(
            &format!("{FULL}\n[witness]\naddress = \"[::1]:7400\"\nlease = \"3s\"\nmargin = \"0s\"\n"),
            "cluster.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.witness.map(|w| (w.lease, w.margin)), Some((Duration::from_secs(3), Duration::ZERO)));
    }

    #[test]
    fn witness_timing_mistakes_are_rejected_at_their_line() {
        let line = FULL.lines().count() + 3; // FULL, a blank line, [witness], then `address`
        let with_witness = |table: &str| format!("{FULL}\n[witness]\n{table}\n");
        let (l, _, _, m) = single(&with_witness("address = \"192.0.2.10:7400\"\nlease = \"3s\"\nmargin = \"1s\""));
        assert_eq!(l, line + 2, "{m}");
        assert!(m.contains("witness.margin (1s) must be less than a third of witness.lease (3s)"), "{m}");
        // Too short for heartbeats (and so also for the guard): both are said.
        let e = errors_of(&with_witness("address = \"192.0.2.10:7400\"\nlease = \"200ms\"\nmargin = \"0s\""));
        assert!(e.iter().all(|e| e.line == line + 1), "{e:?}");
        assert!(
            e.iter().any(|e| e.message.contains("lease / 3 must be at least cluster.heartbeat_interval (100ms)")),
            "{e:?}"
        );
        // The guard (default timeout = dead_after = 500ms) must act before the lease ends.
        let (l, _, _, m) =
            single(&with_witness("address = \"192.0.2.10:7400\"\nlease = \"1200ms\"\nmargin = \"300ms\""));
        assert_eq!(l, line + 1, "{m}");
        assert!(m.contains("guard.timeout + margin must be less than 2 × lease / 3"), "{m}");
        let text = with_witness("address = \"192.0.2.10:7400\"") + "\n[guard]\nenabled = false\n";
        let (_, _, _, m) = single(&text);
        assert!(m.contains("[witness] needs the guard"), "{m}");
        let (l, _, _, m) = single(&with_witness("address = \"witness:7400\""));
        assert_eq!(l, line, "{m}");
        assert!(m.contains("is not an IP address and port"), "{m}");
        let (_, _, _, m) = single(&with_witness("lease = \"6s\""));
        assert!(m.contains("[witness] needs `address`"), "{m}");
    }

    /// FULL with its fence replaced by one level of `devices`, and `witness` appended.
    fn with_fence_devices(devices: &str, witness: &str) -> String {
        let fence_start = FULL.find("[fence]").unwrap();
        let fence_end = fence_start + FULL[fence_start..].find("\n[[node]]").unwrap();
        format!(
            "{}[fence]\n[[fence.level]]\ndevices = [{devices}]\n{}\n{witness}\n",
            &FULL[..fence_start],
            &FULL[fence_end..]
        )
    }

    #[test]
    fn the_witness_is_refused_as_a_fence_device_with_the_reason() {
        let witness = "[witness]\naddress = \"192.0.2.10:7400\"";
        let (_, _, _, m) = single(&with_fence_devices("{ witness = true }", witness));
        assert!(m.contains("the witness is not a fence device: it cannot stop a node"), "{m}");
    }

    // ---- [storage_fence] ----

    /// FULL with its fence replaced by a storage level, and `table` as [storage_fence].
    fn with_storage(table: &str) -> String {
        let fence_start = FULL.find("[fence]").unwrap();
        let fence_end = fence_start + FULL[fence_start..].find("\n[[node]]").unwrap();
        format!(
            "{}[fence]\n[[fence.level]]\ndevices = [{{ storage = true }}]\n{}\n[storage_fence]\n{table}\n",
            &FULL[..fence_start],
            &FULL[fence_end..]
        )
    }

    #[test]
    fn storage_fence_parses_with_defaults_and_the_plan_resolves_per_node() {
        let c = parse(&with_storage(r#"device = { alpha = "/dev/sdb", beta = "/dev/sdc" }"#), "cluster.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        let sf = c.storage_fence.as_ref().unwrap();
        assert_eq!((sf.timeout, sf.msgwait), (Duration::from_secs(2), Duration::from_secs(4)));
        let plan = c.fence_plan_for("beta").unwrap();
        let FenceDeviceKind::Storage { device, msgwait, me } = &plan.levels[0].devices[0].kind else {
            panic!("{plan:?}")
        };
        assert_eq!((device.as_path(), *msgwait, me.clone()), (Path::new("/dev/sdc"), sf.msgwait, (1, "beta".into())));
    }

    #[test]
    fn storage_fence_timing_mistakes_are_rejected() {
        let msg = |text: &str| errors_of(&with_storage(text)).into_iter().map(|e| e.message).collect::<Vec<_>>();
        let e = msg("device = \"/dev/sdb\"\ntimeout = \"2s\"\nmsgwait = \"3s\"");
        assert!(
            e.iter()
                .any(|m| m.contains("storage_fence.msgwait (3s) must be at least twice storage_fence.timeout (2s)")),
            "{e:?}"
        );
        // A fence_delay shorter than a heartbeat.
        let text = with_storage("device = \"/dev/sdb\"").replacen(
            "heartbeat_interval = \"100ms\"",
            "heartbeat_interval = \"100ms\"\nfence_delay = \"50ms\"",
            1,
        );
        let e: Vec<String> = errors_of(&text).into_iter().map(|e| e.message).collect();
        assert!(
            e.iter().any(|m| m.contains(
                "cluster.fence_delay (50ms) must be at least cluster.heartbeat_interval (100ms) with a storage fence"
            )),
            "{e:?}"
        );
        // The fence's own timeout (FULL: 10s) must outlast msgwait.
        let e = msg("device = \"/dev/sdb\"\ntimeout = \"400ms\"\nmsgwait = \"12s\"");
        assert!(e.iter().any(|m| m.contains("must be longer than storage_fence.msgwait (12s)")), "{e:?}");
        let e = msg("timeout = \"400ms\"");
        assert!(e.iter().any(|m| m.contains("[storage_fence] needs `device`")), "{e:?}");
        let e = msg("device = \"sdb\"\ntimeout = \"400ms\"");
        assert!(e.iter().any(|m| m.contains("not an absolute path")), "{e:?}");
        let text = with_storage("device = \"/dev/sdb\"\ntimeout = \"400ms\"") + "\n[guard]\nenabled = false\n";
        let e: Vec<String> = errors_of(&text).into_iter().map(|e| e.message).collect();
        assert!(e.iter().any(|m| m.contains("a storage fence needs the guard process")), "{e:?}");
        // A storage device without the table.
        let text = with_storage("device = \"/dev/sdb\"");
        let text = text[..text.find("\n[storage_fence]").unwrap()].to_string();
        let e: Vec<String> = errors_of(&text).into_iter().map(|e| e.message).collect();
        assert!(e.iter().any(|m| m.contains("there is no [storage_fence] table")), "{e:?}");
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in the README") + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").expect("its end")];
        let c = parse(text, "README.md").unwrap_or_else(|e| panic!("{e}"));
        let db = c.group("db").unwrap();
        let kinds: Vec<_> = db.resources.iter().map(|it| it.kind.type_name()).collect();
        assert_eq!(kinds, ["disk", "mount", "vip", "process"]);
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../examples/two-nodes.toml");
        let c = parse(text, "examples/two-nodes.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.groups.len(), 2);
        // The web group shows a full service, in start order; queue runs nothing.
        let web = c.group("web").unwrap();
        let kinds: Vec<_> = web.resources.iter().map(|it| (it.kind.type_name(), it.name.as_str())).collect();
        assert_eq!(kinds, [("disk", "data"), ("mount", "fs"), ("vip", "ip"), ("process", "app")]);
        assert_eq!(web.failback, Failback::Manual);
        let ResourceKindConfig::Vip { interface, .. } = &web.resources[2].kind else { panic!("not a vip") };
        assert_eq!((interface.on("alpha").as_str(), interface.on("beta").as_str()), ("eth0", "ens3"));
        assert!(c.group("queue").unwrap().resources.is_empty());
    }

    #[test]
    fn example_file_ocf_resource_parses_when_uncommented() {
        // The commented OCF example must stay valid: uncomment it (in place of the process).
        let text = include_str!("../../../examples/two-nodes.toml");
        let start = text.find("# [[group.resource]]\n# name = \"apache\"").expect("the commented OCF example");
        let end = start + text[start..].find("\n\n").expect("a blank line after it");
        let ocf: String = text[start..end].lines().map(|it| format!("{}\n", &it[2..])).collect();
        let text = format!("{}{ocf}{}", &text[..start], &text[end..]);
        let c = parse(&text, "examples/two-nodes.toml").unwrap_or_else(|e| panic!("{e}"));
        let web = c.group("web").unwrap();
        let last = web.resources.last().unwrap();
        assert_eq!(last.name, "apache");
        assert!(matches!(&last.kind, ResourceKindConfig::Ocf { provider, agent, params }
            if provider == "heartbeat" && agent == "apache" && params.len() == 2));
    }

    #[test]
    fn load_reads_the_example_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-nodes.toml");
        let c = load(&path).unwrap();
        assert_eq!(c.name, "demo");
    }

    #[test]
    fn load_of_a_missing_file_names_the_file() {
        let path = Path::new("/nonexistent/takeover/cluster.toml");
        let errors: Vec<_> = load(path).unwrap_err().into_iter().collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "/nonexistent/takeover/cluster.toml");
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        assert!(errors[0].message.contains("cannot read the configuration file /nonexistent/takeover/cluster.toml"));
        let shown = errors[0].to_string();
        assert!(shown.ends_with("\n  --> /nonexistent/takeover/cluster.toml"), "{shown}");
    }

    // ---- helpers of ClusterConfig ----

    #[test]
    fn node_ids_are_positions_in_the_node_list() {
        let c = parse(FULL, "cluster.toml").unwrap();
        assert_eq!(c.node_id("alpha"), Some(NodeId(0)));
        assert_eq!(c.node_id("beta"), Some(NodeId(1)));
        assert_eq!(c.node_id("gamma"), None);
        assert_eq!(c.node("beta").unwrap().state_dir, Path::new("/var/lib/takeover/beta"));
        assert!(c.node("gamma").is_none());
    }

    #[test]
    fn groups_of_lists_the_groups_of_a_node() {
        let text = format!("{FULL}\n[[group]]\nname = \"db\"\nnodes = [\"beta\", \"alpha\"]\n");
        let c = parse(&text, "cluster.toml").unwrap();
        let names = |node| c.groups_of(node).map(|g| g.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("alpha"), ["web", "db"]);
        assert_eq!(names("beta"), ["web", "db"]);
        assert!(names("gamma").is_empty());
        assert_eq!(c.group("db").unwrap().peer_of("beta"), Some("alpha"));
    }

    #[test]
    fn group_core_config_maps_me_and_peer_to_node_ids() {
        let text = with_lines(&[(5, r#"startup_wait = "4s""#), (8, "catch_up_window = 17")]);
        let c = parse(&text, "cluster.toml").unwrap();
        let web = c.group("web").unwrap();
        let on_beta = c.group_core_config(web, "beta");
        assert_eq!(
            on_beta,
            CoreGroupConfig {
                me: NodeId(1),
                peer: NodeId(0),
                arbiter: Arbiter::Fence,
                startup_wait: Duration::from_secs(4),
                fence_retry: Duration::from_secs(1),
                fence_delay: Duration::from_millis(200),
                catch_up_window: 17,
                preferred: false,
                failback: Failback::Manual,
                failback_delay: Duration::from_secs(10),
            }
        );
        let on_alpha = c.group_core_config(web, "alpha");
        assert_eq!((on_alpha.me, on_alpha.peer, on_alpha.preferred), (NodeId(0), NodeId(1), true));
    }

    #[test]
    #[should_panic(expected = "node `gamma` is not a member of group `web`")]
    fn group_core_config_panics_for_a_non_member() {
        let c = parse(FULL, "cluster.toml").unwrap();
        let web = c.group("web").unwrap();
        c.group_core_config(web, "gamma");
    }

    #[test]
    fn fence_command_shortcut_is_one_level_with_one_command_device() {
        let c = parse(FULL, "cluster.toml").unwrap();
        let plan = c.fence_plan().unwrap();
        assert_eq!(plan.levels.len(), 1);
        assert!(matches!(
            &plan.levels[0].devices[..],
            [FenceDevice { kind: FenceDeviceKind::Command { argv }, .. }]
                if argv == &["takeover", "fence-local", "--pidfile", "/tmp/x/{node}/agent.pid"]
        ));
    }

    // ---- durations ----

    #[test]
    fn durations_parse_with_units_and_decimals() {
        let ok = [
            ("100ms", Duration::from_millis(100)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("0.25m", Duration::from_secs(15)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["fast", "", "100", "-1s", "1.s", ".5s", "1.2.3s", "5 sec", "1.5ns", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_duration("-1s"), Err("durations cannot be negative".into()));
    }

    #[test]
    fn formatted_durations_read_back_unchanged() {
        for text in ["100ms", "2s", "1.5s", "1m", "2h", "250us", "7ns", "1.001s", "90s", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    }

    #[test]
    fn duration_garbage_is_reported_at_the_value() {
        let (line, column, caret, message) = single(&with(3, r#"heartbeat_interval = "fast""#));
        assert_eq!((line, column, caret), (3, 22, 6));
        assert!(message.starts_with(r#"cluster.heartbeat_interval = "fast" is not a duration"#));
        assert!(message.contains("e.g. \"100ms\""), "{message}");
    }

    #[test]
    fn negative_duration_is_rejected() {
        assert_single(
            &with(7, r#"fence_retry = "-1s""#),
            7,
            15,
            "cluster.fence_retry = \"-1s\" is not a duration: durations cannot be negative",
        );
    }

    #[test]
    fn duration_without_unit_is_rejected() {
        assert_single(
            &with(4, "dead_after = 500"),
            4,
            14,
            "cluster.dead_after = 500 has no unit; durations are strings with a unit, e.g. \"500ms\"",
        );
    }

    #[test]
    fn zero_duration_is_rejected() {
        assert_single(
            &with(7, r#"fence_retry = "0s""#),
            7,
            15,
            "cluster.fence_retry is zero, which is meaningless here",
        );
    }

    #[test]
    fn fence_timeout_zero_is_rejected() {
        assert_single(&with(12, r#"timeout = "0ms""#), 12, 11, "fence.timeout is zero");
    }

    #[test]
    fn group_stop_timeout_is_checked() {
        assert_single(
            &with(30, r#"stop_timeout = "soon""#),
            30,
            16,
            "group `web`: stop_timeout = \"soon\" is not a duration",
        );
    }

    // ---- timings ----

    #[test]
    fn dead_after_below_three_heartbeats_is_rejected() {
        let errors = parse(&with(4, r#"dead_after = "200ms""#), "cluster.toml").unwrap_err();
        assert_eq!(
            errors.to_string(),
            r#"error: cluster.dead_after (200ms) must be at least 3 × heartbeat_interval (100ms), or a busy machine will declare a healthy peer dead
  --> cluster.toml:4:14
   |
 4 | dead_after = "200ms"
   |              ^^^^^^^"#
        );
    }

    #[test]
    fn dead_after_rule_points_at_heartbeat_when_dead_after_is_default() {
        // dead_after absent (500ms default), heartbeat 200ms: 500ms < 600ms.
        assert_single(
            &with_lines(&[(3, r#"heartbeat_interval = "200ms""#), (4, "")]),
            3,
            22,
            "cluster.dead_after (500ms) must be at least 3 × heartbeat_interval (200ms)",
        );
    }

    #[test]
    fn heartbeat_below_10ms_is_rejected() {
        assert_single(
            &with(3, r#"heartbeat_interval = "5ms""#),
            3,
            22,
            "cluster.heartbeat_interval (5ms) must be at least 10ms",
        );
    }

    #[test]
    fn startup_wait_below_dead_after_is_rejected() {
        assert_single(
            &with(5, r#"startup_wait = "400ms""#),
            5,
            16,
            "cluster.startup_wait (400ms) must be at least cluster.dead_after (500ms): a recovering node would decide alone before it could hear a live peer",
        );
    }

    #[test]
    fn catch_up_window_must_be_positive() {
        assert_single(
            &with(8, "catch_up_window = 0"),
            8,
            19,
            "cluster.catch_up_window = 0 must be a positive whole number of records",
        );
        assert_single(
            &with(8, r#"catch_up_window = "big""#),
            8,
            19,
            "cluster.catch_up_window = \"big\" must be a positive",
        );
    }

    // ---- arbiter and fence ----

    #[test]
    fn unknown_arbiter_is_rejected() {
        assert_single(
            &with(6, r#"arbiter = "quorum""#),
            6,
            11,
            "cluster.arbiter \"quorum\" is not an arbiter; use \"fence\" (with a [fence] table) or \"unsafe-assume-crash-stop\"",
        );
    }

    #[test]
    fn fence_arbiter_requires_a_fence_table() {
        let text = with_lines(&[(10, ""), (11, ""), (12, "")]);
        assert_single(&text, 6, 11, "arbiter = \"fence\" (the default) needs a [fence] table");
        // With arbiter absent (fence by default) the error points at [cluster].
        let text = with_lines(&[(6, ""), (10, ""), (11, ""), (12, "")]);
        assert_single(&text, 1, 1, "needs a [fence] table");
    }

    #[test]
    fn empty_fence_command_is_rejected() {
        assert_single(&with(11, "command = []"), 11, 11, "fence.command is empty");
        assert_single(
            &with(11, r#"command = ["", "x"]"#),
            11,
            12,
            "fence.command: the program (first element) is empty",
        );
    }

    // ---- fence levels ----

    /// FULL with the [fence] table (lines 10 to 12) replaced by `fence`: line k of
    /// `fence` is line 9 + k of the file.
    fn with_fence(fence: &str) -> String {
        with_lines(&[(10, fence.trim_end_matches('\n')), (11, ""), (12, "")])
    }

    const LEVELS: &str = r#"[fence]
timeout = "7s"
retries = 2
[[fence.level]]
devices = [
  { agent = "/usr/sbin/fence_ipmilan", options = { ip = "10.0.0.{node_index}", username = "admin", password_script = "/etc/takeover/ipmi-pass", plug = "{node}", lanplus = true, ssl = false, port = 623, wait = 1.5 }, timeout = "20s" },
  { agent = "/usr/sbin/fence_apc", options = { ip = "10.0.1.1", password = "s3cret" } },
]
[[fence.level]]
devices = [ { command = ["/usr/local/bin/my-fence", "{node}"] } ]
"#;

    fn option(key: &str, value: &str) -> AgentOption {
        AgentOption { key: key.into(), value: value.into() }
    }

    #[test]
    fn fence_levels_parse_into_a_plan() {
        let c = parse(&with_fence(LEVELS), "cluster.toml").unwrap();
        let fence = c.fence.as_ref().unwrap();
        assert_eq!((fence.timeout, fence.retries), (Duration::from_secs(7), 2));
        let plan = c.fence_plan().unwrap();
        assert_eq!(
            plan,
            FencePlan {
                levels: vec![
                    FenceLevel {
                        devices: vec![
                            FenceDevice {
                                kind: FenceDeviceKind::Agent {
                                    path: "/usr/sbin/fence_ipmilan".into(),
                                    // In file order; `ssl = false` is left out.
                                    options: vec![
                                        option("ip", "10.0.0.{node_index}"),
                                        option("username", "admin"),
                                        option("password_script", "/etc/takeover/ipmi-pass"),
                                        option("plug", "{node}"),
                                        option("lanplus", "1"),
                                        option("port", "623"),
                                        option("wait", "1.5"),
                                    ],
                                },
                                timeout: Duration::from_secs(20),
                                retries: 2,
                            },
                            FenceDevice {
                                kind: FenceDeviceKind::Agent {
                                    path: "/usr/sbin/fence_apc".into(),
                                    options: vec![option("ip", "10.0.1.1"), option("password", "s3cret")],
                                },
                                timeout: Duration::from_secs(7),
                                retries: 2,
                            },
                        ]
                    },
                    FenceLevel {
                        devices: vec![FenceDevice {
                            kind: FenceDeviceKind::Command {
                                argv: vec!["/usr/local/bin/my-fence".into(), "{node}".into()]
                            },
                            timeout: Duration::from_secs(7),
                            retries: 2,
                        }]
                    },
                ]
            }
        );
        // Secrets are masked in describe() and Debug.
        let described = plan.describe();
        assert_eq!(
            described,
            "level 1: agent /usr/sbin/fence_ipmilan ip=10.0.0.{node_index} username=admin password_script=*** plug={node} lanplus=1 port=623 wait=1.5 (timeout 20s per attempt, 3 attempts) and agent /usr/sbin/fence_apc ip=10.0.1.1 password=*** (timeout 7s per attempt, 3 attempts); then level 2: command /usr/local/bin/my-fence {node} (timeout 7s per attempt, 3 attempts)"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && !debug.contains("ipmi-pass"), "{debug}");
        assert!(debug.contains("admin"));
    }

    #[test]
    fn fence_devices_may_be_tables_of_their_own() {
        let text = with_fence(
            "[fence]\n[[fence.level]]\n[[fence.level.devices]]\nagent = \"/usr/sbin/fence_dummy\"\noptions = { type = \"file\" }\n",
        );
        let plan = parse(&text, "cluster.toml").unwrap().fence_plan().unwrap();
        assert_eq!(plan.levels.len(), 1);
        assert_eq!(plan.levels[0].devices[0].timeout, DEFAULT_FENCE_TIMEOUT);
        assert_eq!(plan.levels[0].devices[0].retries, DEFAULT_FENCE_RETRIES);
    }

    #[test]
    fn fence_command_shortcut_takes_timeout_and_retries() {
        let text = with_lines(&[(12, "timeout = \"3s\"\nretries = 0")]);
        let c = parse(&text, "cluster.toml").unwrap();
        let device = &c.fence_plan().unwrap().levels[0].devices[0];
        assert_eq!((device.timeout, device.retries), (Duration::from_secs(3), 0));
    }

    #[test]
    fn fence_needs_a_command_or_levels_but_not_both() {
        assert_single(&with_fence("[fence]\ntimeout = \"1s\""), 10, 1, "the [fence] table needs `command = [...]`");
        let both = with_fence(
            "[fence]\ncommand = [\"/bin/true\"]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"] }]",
        );
        assert_single(&both, 11, 11, "fence.command and [[fence.level]] cannot both be given");
        assert_single(&with_fence("[fence]\nlevel = []"), 11, 9, "fence.level is empty");
    }

    #[test]
    fn fence_levels_must_have_devices() {
        let (line, column, caret, message) =
            single(&with_fence("[fence]\n[[fence.level]]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"] }]"));
        assert_eq!((line, column, caret), (11, 1, 15));
        assert!(message.starts_with("fence level 1 has no devices; add devices = [{ agent = "), "{message}");
        assert_single(
            &with_fence(
                "[fence]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"] }]\n[[fence.level]]\ndevices = []",
            ),
            14,
            11,
            "fence level 2: devices is empty",
        );
    }

    #[test]
    fn fence_device_needs_exactly_one_of_agent_and_command() {
        let neither = with_fence("[fence]\n[[fence.level]]\ndevices = [{ timeout = \"1s\" }]");
        assert_single(&neither, 12, 12, "fence level 1, device 1 has neither `agent` nor `command`");
        let both = with_fence(
            "[fence]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"] },\n  { agent = \"/usr/sbin/fence_dummy\", command = [\"/bin/true\"] }]",
        );
        assert_single(&both, 13, 48, "fence level 1, device 2 has both `agent` and `command`");
    }

    #[test]
    fn fence_agent_path_must_be_absolute() {
        let text = with_fence("[fence]\n[[fence.level]]\ndevices = [{ agent = \"fence_ipmilan\" }]");
        let (line, column, caret, message) = single(&text);
        assert_eq!((line, column, caret), (12, 22, 15));
        assert_eq!(
            message,
            "fence level 1, device 1: agent \"fence_ipmilan\" is not an absolute path; give the full path of the fence agent, e.g. \"/usr/sbin/fence_ipmilan\""
        );
        assert_single(
            &with_fence("[fence]\n[[fence.level]]\ndevices = [{ agent = \"\" }]"),
            12,
            22,
            "agent \"\" is not an absolute path",
        );
    }

    #[test]
    fn fence_option_values_must_be_strings_numbers_or_booleans() {
        let text = |v: &str| {
            with_fence(&format!(
                "[fence]\n[[fence.level]]\ndevices = [{{ agent = \"/usr/sbin/fence_dummy\", options = {{ password = {v} }} }}]"
            ))
        };
        assert_single(
            &text("[\"a\", \"b\"]"),
            12,
            70,
            "fence level 1, device 1: option `password` must be a string, a number or a boolean, not an array",
        );
        assert_single(&text("{ x = 1 }"), 12, 70, "not a table");
        assert_single(&text("1979-05-27"), 12, 70, "not a date-time");
        assert_single(&text("nan"), 12, 70, "not an infinite or NaN float");
        // A line break would inject a line into the agent's stdin; the value is not quoted.
        let (line, column, _, message) = single(&text("\"pw\\naction=on\""));
        assert_eq!((line, column), (12, 70));
        assert_eq!(
            message,
            "fence level 1, device 1: option `password` contains a line break or a NUL; the agent reads one key=value per line on stdin"
        );
    }

    #[test]
    fn fence_option_names_are_checked() {
        let text = |k: &str| {
            with_fence(&format!(
                "[fence]\n[[fence.level]]\ndevices = [{{ agent = \"/usr/sbin/fence_dummy\", options = {{ {k} = \"x\" }} }}]"
            ))
        };
        assert_single(&text("action"), 12, 59, "option `action` is set by takeover");
        assert_single(&text("\"a b\""), 12, 59, "option name \"a b\" is not a fence-agent option");
        assert_single(&text("\"\""), 12, 59, "option name \"\" is not a fence-agent option");
    }

    #[test]
    fn fence_options_are_only_for_agents() {
        let text =
            with_fence("[fence]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"], options = { a = 1 } }]");
        assert_single(&text, 12, 49, "fence level 1, device 1: options are only for `agent` devices");
        let empty = with_fence("[fence]\n[[fence.level]]\ndevices = [{ command = [] }]");
        assert_single(&empty, 12, 24, "fence level 1, device 1: command is empty");
    }

    #[test]
    fn fence_timeouts_must_be_positive_durations() {
        let device =
            with_fence("[fence]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"], timeout = \"0s\" }]");
        assert_single(&device, 12, 49, "fence level 1, device 1: timeout is zero");
        let device = with_fence("[fence]\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"], timeout = 20 }]");
        assert_single(&device, 12, 49, "fence level 1, device 1: timeout = 20 has no unit");
        let default =
            with_fence("[fence]\ntimeout = \"0s\"\n[[fence.level]]\ndevices = [{ command = [\"/bin/true\"] }]");
        assert_single(&default, 11, 11, "fence.timeout is zero");
    }

    #[test]
    fn fence_retries_must_be_a_small_whole_number() {
        assert_single(&with(12, "retries = -1"), 12, 11, "fence.retries = -1 must be a whole number from 0 to 10");
        assert_single(&with(12, "retries = 11"), 12, 11, "fence.retries = 11 must be a whole number from 0 to 10");
        assert_single(&with(12, "retries = \"2\""), 12, 11, "fence.retries = \"2\" must be a whole number");
    }

    #[test]
    fn fence_level_and_device_unknown_keys_are_reported() {
        let (line, column, _, message) = single(&with_fence("[fence]\n[[fence.level]]\nname = \"ipmi\"\ndevices = []"));
        assert_eq!((line, column), (12, 1));
        assert!(message.starts_with("unknown field `name`, expected `devices`"), "{message}");
        let (line, column, _, message) = single(&with_fence(
            "[fence]\n[[fence.level]]\ndevices = [{ agent = \"/usr/sbin/fence_dummy\", retry = 3 }]",
        ));
        assert_eq!((line, column), (12, 47));
        assert!(message.starts_with("unknown field `retry`"), "{message}");
        let (line, column, _, message) = single(&with(12, "levels = []"));
        assert_eq!((line, column), (12, 1));
        assert!(message.starts_with("unknown field `levels`"), "{message}");
    }

    #[test]
    fn fence_errors_are_all_reported_together() {
        let text = with_fence(
            "[fence]\nretries = 99\n[[fence.level]]\ndevices = [{ agent = \"fence_x\", options = { action = \"off\" } },\n  { }]",
        );
        let errors = errors_of(&text);
        let positions: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(positions, [(11, 11), (13, 22), (13, 45), (14, 3)], "{errors:#?}");
    }

    // ---- fence_delay ----

    #[test]
    fn fence_delay_is_parsed_and_may_be_zero() {
        let c = parse(&with(8, "catch_up_window = 4096\nfence_delay = \"350ms\""), "cluster.toml").unwrap();
        assert_eq!(c.fence_delay, Duration::from_millis(350));
        let c = parse(&with(8, "catch_up_window = 4096\nfence_delay = \"0s\""), "cluster.toml").unwrap();
        assert_eq!(c.fence_delay, Duration::ZERO);
    }

    #[test]
    fn fence_delay_must_be_below_a_minute() {
        let (line, column, caret, message) = single(&with(8, "fence_delay = \"60s\""));
        assert_eq!((line, column, caret), (8, 15, 5));
        assert!(message.starts_with("cluster.fence_delay (1m) must be below 1m: "), "{message}");
        assert_single(&with(8, "fence_delay = \"-1s\""), 8, 15, "cluster.fence_delay = \"-1s\" is not a duration");
        assert_single(&with(8, "fence_delay = 200"), 8, 15, "cluster.fence_delay = 200 has no unit");
        parse(&with(8, "fence_delay = \"59.999s\""), "cluster.toml").unwrap();
    }

    // ---- nodes ----

    #[test]
    fn node_name_must_use_the_allowed_characters() {
        let errors = errors_of(&with(15, r#"name = "al pha""#));
        assert_eq!((errors[0].line, errors[0].column), (15, 8));
        assert_eq!(errors[0].message, "node name `al pha` contains ' '; use only ASCII letters, digits, `_` and `-`");
        // The group naming `alpha` now names an unknown node: reported too.
        assert_eq!(errors.len(), 2);
        assert!(errors[1].message.starts_with("unknown node `alpha` in group `web`"));
    }

    #[test]
    fn node_name_must_not_be_empty() {
        let errors = errors_of(&with(15, r#"name = """#));
        assert_eq!((errors[0].line, errors[0].column), (15, 8));
        assert!(errors[0].message.contains("node name is empty"), "{}", errors[0].message);
    }

    #[test]
    fn node_names_must_be_unique() {
        let errors = errors_of(&with(21, r#"name = "alpha""#));
        let e = &errors[0];
        assert_eq!((e.line, e.column), (21, 8));
        assert_eq!(e.message, "node name `alpha` is already used (line 15); node names must be unique");
    }

    #[test]
    fn at_least_two_nodes_are_needed() {
        let one =
            with_lines(&[(20, ""), (21, ""), (22, ""), (23, ""), (24, ""), (28, r#"nodes = ["alpha", "alpha"]"#)]);
        let errors = errors_of(&one);
        assert_eq!((errors[0].line, errors[0].column), (14, 1));
        assert!(errors[0].message.contains("declares only 1 node"), "{}", errors[0].message);

        let text = "[cluster]\nname = \"x\"\narbiter = \"unsafe-assume-crash-stop\"\nauth = \"none\"\n";
        assert_single(text, 1, 1, "the cluster declares no node");
    }

    #[test]
    fn node_needs_a_link() {
        assert_single(&with(18, "links = []"), 18, 9, "node `alpha` has no link");
    }

    #[test]
    fn advertise_gives_one_send_address_per_link() {
        let text = with(
            24,
            r#"links = ["127.0.0.1:7102", "127.0.0.2:7102"]
advertise = ["127.0.0.3:7102", "127.0.0.4:7102"]"#,
        );
        let c = parse(&text, "cluster.toml").unwrap();
        assert_eq!(
            c.nodes[1].advertise,
            ["127.0.0.3:7102".parse().unwrap(), "127.0.0.4:7102".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.nodes[0].advertise, c.nodes[0].links);
        let short = with(
            24,
            r#"links = ["127.0.0.1:7102", "127.0.0.2:7102"]
advertise = ["127.0.0.3:7102"]"#,
        );
        assert_single(&short, 25, 13, "node `beta` advertises 1 address(es) for 2 links");
    }

    #[test]
    fn nodes_need_the_same_number_of_links() {
        assert_single(
            &with(24, r#"links = ["127.0.0.1:7102"]"#),
            24,
            9,
            "node `beta` has 1 link but node `alpha` has 2 links; link k of every node is on network k",
        );
    }

    #[test]
    fn link_must_be_ip_and_port() {
        assert_single(
            &with(24, r#"links = ["127.0.0.1:7102", "beta.local:7102"]"#),
            24,
            28,
            "node `beta`: link \"beta.local:7102\" is not IP:PORT",
        );
        assert_single(&with(24, r#"links = ["127.0.0.1:7102", "127.0.0.2:0"]"#), 24, 28, "has port 0");
        assert_single(
            &with(24, r#"links = ["127.0.0.1:7102", "0.0.0.0:7102"]"#),
            24,
            28,
            "is not an address the peer can send to",
        );
    }

    #[test]
    fn link_addresses_must_be_unique_across_nodes() {
        assert_single(
            &with(24, r#"links = ["127.0.0.1:7102", "127.0.0.2:7101"]"#),
            24,
            28,
            "node `beta`: link \"127.0.0.2:7101\" is already used by the 2nd link of node `alpha` (line 18)",
        );
    }

    #[test]
    fn links_of_one_network_must_share_an_address_family() {
        assert_single(
            &with(24, r#"links = ["[::1]:7102", "127.0.0.2:7102"]"#),
            24,
            10,
            "node `beta`: the 1st link ([::1]:7102) is IPv6 but the 1st link of node `alpha` (127.0.0.1:7101) is IPv4",
        );
    }

    #[test]
    fn state_dir_and_api_may_be_the_same_on_every_node() {
        // One file for separate machines: the same paths on each (a shared one on a single
        // machine is refused by the agent's lock at start-up instead).
        let text = with_lines(&[
            (22, r#"state_dir = "/var/lib/takeover/alpha/""#),
            (23, r#"api = "unix:/run/takeover/alpha.sock""#),
        ]);
        let c = parse(&text, "cluster.toml").expect("shared state_dir and api accepted");
        assert_eq!(c.nodes[0].state_dir, c.nodes[1].state_dir);
    }

    #[test]
    fn tcp_api_must_be_loopback() {
        assert_single(
            &with(23, r#"api = "tcp:192.0.2.7:7400""#),
            23,
            7,
            "node `beta`: api \"tcp:192.0.2.7:7400\" is not a loopback address",
        );
        let c = parse(&with(23, r#"api = "tcp:[::1]:7400""#), "cluster.toml").unwrap();
        assert_eq!(c.nodes[1].api, ApiAddr::Tcp("[::1]:7400".parse().unwrap()));
    }

    #[test]
    fn api_listen_comes_with_a_token_file_and_an_address_of_its_own() {
        let c = parse(
            &with(23, "api = \"tcp:127.0.0.1:7400\"\napi_listen = \"0.0.0.0:7480\"\napi_token_file = \"/etc/takeover/api.token\""),
            "cluster.toml",
        )
        .unwrap();
        assert_eq!(c.nodes[1].api_listen, Some("0.0.0.0:7480".parse().unwrap()));
        assert_eq!(c.nodes[1].api_token_file.as_deref(), Some(Path::new("/etc/takeover/api.token")));
        assert_single(
            &with(23, "api = \"tcp:127.0.0.1:7400\"\napi_listen = \"0.0.0.0:7480\""),
            24,
            14,
            "node `beta`: api_listen needs api_token_file",
        );
        assert_single(
            &with(23, "api = \"tcp:127.0.0.1:7400\"\napi_token_file = \"/x\""),
            24,
            18,
            "api_token_file is given without api_listen",
        );
        assert_single(
            &with(23, "api = \"tcp:127.0.0.1:7400\"\napi_listen = \"127.0.0.1:7101\"\napi_token_file = \"/x\""),
            24,
            14,
            "api_listen 127.0.0.1:7101 is already used by",
        );
        assert_single(
            &with(23, "api = \"tcp:127.0.0.1:7400\"\napi_listen = \"host:80\"\napi_token_file = \"/x\""),
            24,
            14,
            "is not IP:PORT",
        );
    }

    #[test]
    fn api_must_be_unix_or_tcp() {
        assert_single(
            &with(23, r#"api = "http://localhost:7400""#),
            23,
            7,
            "node `beta`: api \"http://localhost:7400\" is neither unix: nor tcp:",
        );
        assert_single(&with(23, r#"api = "unix:""#), 23, 7, "has no socket path");
        let long = format!("api = \"unix:/{}\"", "s".repeat(120));
        assert_single(&with(23, &long), 23, 7, "a Unix socket path can have at most 107");
    }

    #[test]
    fn tcp_api_must_not_reuse_a_link_address() {
        assert_single(
            &with(23, r#"api = "tcp:127.0.0.1:7101""#),
            23,
            7,
            "node `beta`: api `tcp:127.0.0.1:7101` is already used by the 1st link of node `alpha` (line 18)",
        );
        // A later node's link that reuses an earlier tcp api.
        let text = with_lines(&[(17, r#"api = "tcp:127.0.0.1:7102""#)]);
        assert_single(
            &text,
            24,
            10,
            "node `beta`: link \"127.0.0.1:7102\" is already used by the api of node `alpha` (line 17)",
        );
    }

    // ---- groups ----

    #[test]
    fn group_name_must_use_the_allowed_characters() {
        assert_single(&with(27, r#"name = "web/1""#), 27, 8, "group name `web/1` contains '/'");
    }

    #[test]
    fn group_names_must_be_unique() {
        let text = format!("{FULL}\n[[group]]\nname = \"web\"\nnodes = [\"beta\", \"alpha\"]\n");
        assert_single(&text, 33, 8, "group name `web` is already used (line 27); group names must be unique");
    }

    #[test]
    fn group_needs_exactly_two_nodes() {
        assert_single(
            &with(28, r#"nodes = ["alpha"]"#),
            28,
            9,
            "group `web` lists 1 node; a group is a pair: give exactly 2 node names",
        );
    }

    #[test]
    fn group_nodes_must_be_distinct() {
        assert_single(&with(28, r#"nodes = ["alpha", "alpha"]"#), 28, 19, "group `web` lists node `alpha` twice");
    }

    #[test]
    fn group_unknown_node_lists_declared_nodes() {
        let (line, column, caret, message) = single(&with(28, r#"nodes = ["alpha", "gamma"]"#));
        assert_eq!((line, column, caret), (28, 19, 7));
        assert_eq!(message, "unknown node `gamma` in group `web`; declared nodes: alpha, beta");
    }

    #[test]
    fn group_service_must_not_be_empty() {
        assert_single(
            &with(29, "service = []"),
            29,
            11,
            "group `web`: service is empty; give the program and its arguments, or remove `service`",
        );
    }

    // ---- syntax and shape ----

    #[test]
    fn syntax_error_reports_line_and_column() {
        let (line, column, _, message) = single(&with(17, r#"api = "unix:/run/alpha.sock"#));
        assert_eq!((line, column), (17, 28));
        assert!(message.contains("string"), "{message}");

        let (line, column, _, _) = single(&with(14, "[[node]"));
        assert_eq!((line, column), (14, 8));
    }

    #[test]
    fn unknown_key_is_reported_with_its_position() {
        let (line, column, caret, message) = single(&with(7, r#"fence_rety = "1s""#));
        assert_eq!((line, column, caret), (7, 1, 10));
        assert!(message.starts_with("unknown field `fence_rety`"), "{message}");

        let (line, column, _, message) = single(&with(19, "priority = 2"));
        assert_eq!((line, column), (19, 1));
        assert!(message.starts_with("unknown field `priority`"), "{message}");

        let (line, _, _, message) = single(&format!("{FULL}\n[alerts]\nmail = \"x\"\n"));
        assert_eq!(line, 32);
        assert!(message.starts_with("unknown field `alerts`"), "{message}");
    }

    #[test]
    fn wrong_type_is_reported_at_the_value() {
        assert_single(&with(2, "name = 7"), 2, 8, "invalid type: integer `7`, expected a string");
    }

    #[test]
    fn single_bracket_node_table_gets_a_hint() {
        let text = "[cluster]\nname = \"x\"\n\n[node]\nname = \"a\"\n";
        assert_single(text, 4, 1, "write [[node]] with double brackets");
    }

    #[test]
    fn cluster_name_must_not_be_empty() {
        assert_single(&with(2, r#"name = " ""#), 2, 8, "cluster.name is empty");
    }

    #[test]
    fn missing_cluster_table_is_reported() {
        assert_single("", 1, 1, "the file has no [cluster] table");
    }

    #[test]
    fn multiple_errors_are_all_reported_in_file_order() {
        let text = with_lines(&[
            (4, r#"dead_after = "200ms""#),
            (6, r#"arbiter = "maybe""#),
            (21, r#"name = "be ta""#),
            (24, r#"links = ["127.0.0.1:7101", "127.0.0.2:7102"]"#),
            (28, r#"nodes = ["alpha", "gamma"]"#),
        ]);
        let errors = errors_of(&text);
        let positions: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(positions, [(4, 14), (6, 11), (21, 8), (24, 10), (28, 19)], "{errors:#?}");
        assert!(errors[0].message.contains("dead_after"));
        assert!(errors[1].message.contains("arbiter"));
        assert!(errors[2].message.contains("node name `be ta`"));
        assert!(errors[3].message.contains("already used"));
        assert!(errors[4].message.contains("unknown node `gamma`"));
        // Display prints them all, separated by blank lines.
        let shown = parse(&text, "cluster.toml").unwrap_err().to_string();
        assert_eq!(shown.matches("error: ").count(), 5);
        assert!(shown.contains("^^^^^^^\n\nerror: "), "{shown}");
    }

    #[test]
    fn caret_lines_up_after_tabs_and_wide_characters() {
        let text = with(4, "\tdead_after = \"200ms\" # été");
        let error = &errors_of(&text)[0];
        assert_eq!((error.line, error.column), (4, 15));
        let shown = error.to_string();
        assert!(shown.ends_with("\n   | \t             ^^^^^^^"), "{shown:?}");

        let text = with(2, "name = \"démo\"\nfoo = 1");
        let (line, column, caret, _) = single(&text);
        assert_eq!((line, column, caret), (3, 1, 3));
    }
}
