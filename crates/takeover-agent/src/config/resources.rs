//! `[[group.resource]]` tables: the resources of a service group, in start order.
//!
//! ```toml
//! [[group]]
//! name = "web"
//! nodes = ["alpha", "beta"]
//! failback = "auto"              # default "manual"; "auto": return to alpha once it is back and in sync
//! failback_delay = "10s"         # default 10s, only with "auto": how long alpha must be in sync before it gets the group back
//!
//! [[group.resource]]
//! name = "data"
//! type = "disk"                  # exclusive ownership recorded on the device
//! device = { alpha = "/dev/loop3", beta = "/dev/loop4" }   # per node, or one string for all
//!
//! [[group.resource]]
//! name = "fs"
//! type = "mount"
//! device = { alpha = "/dev/loop3", beta = "/dev/loop4" }
//! directory = "/srv/web"           # or per node, like device
//! fstype = "ext4"
//! options = "noatime"            # default none
//! fsck = true                    # default true: check and replay the journal before mounting
//!
//! [[group.resource]]
//! name = "ip"
//! type = "vip"
//! address = "10.200.0.100/24"    # IPv4 or IPv6, a host address with its prefix length (from 1)
//! interface = "eth0"             # or { alpha = "eth0", beta = "ens3" }
//! announce = 5                   # default 5 gratuitous ARPs / unsolicited NAs
//! announce_interval = "100ms"    # default 100ms
//!
//! [[group.resource]]
//! name = "app"
//! type = "process"
//! command = ["/usr/bin/python3", "-m", "http.server", "8080"]   # {node} and {group} are replaced
//! env = { MODE = "primary" }     # optional
//! log = "/var/log/web.log"       # optional; default <state_dir>/<group>.<resource>.log
//!
//! [[group.resource]]
//! name = "ip2"
//! type = "ocf"                   # an OCF resource agent, run unchanged
//! agent = "heartbeat/IPaddr2"    # /usr/lib/ocf/resource.d/<provider>/<agent>
//! params = { ip = "10.200.0.101", cidr_netmask = 24 }   # OCF_RESKEY_*; values may be per node
//! ```
//!
//! Every resource also takes `start_timeout`, `stop_timeout`, `monitor_timeout` (default
//! 20s each), `monitor_interval` (default 10s, 1s for a vip; "0s" never monitors), `max_restarts`
//! (default 3 restarts in place within `restart_window`, default 10m, before the group
//! moves; 0 moves at the first failure).
//!
//! A group's older `service = [...]` (with `stop_timeout`) is a shorthand for one
//! `process` resource named `service`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use takeover_core::group::Failback;
use toml::{Spanned, Value};

use super::{Checker, RawGroup, RawStrings, name_problem};

/// Default of a resource's `start_timeout`, `stop_timeout` and `monitor_timeout`.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default of a resource's `monitor_interval`.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
/// Default of a vip's `monitor_interval`: a netlink lookup is cheap, and a dead
/// interface (no carrier) under the address should move the group within a second or so.
pub const DEFAULT_VIP_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// Default of a resource's `max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// Default of a resource's `restart_window`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(600);
/// Default of a vip's `announce`.
pub const DEFAULT_ANNOUNCE: u32 = 5;
/// Default of a vip's `announce_interval`.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// Default of a group's `failback_delay`.
pub const DEFAULT_FAILBACK_DELAY: Duration = Duration::from_secs(10);
/// The monitor interval of the `service = [...]` shorthand's process.
pub const SERVICE_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// Where OCF agents live.
pub const OCF_ROOT: &str = "/usr/lib/ocf";

/// A value that is the same on every node of the group, or given per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerNode<T> {
    All(T),
    /// One value for each node of the group (validation checks that both are there).
    Each(BTreeMap<String, T>),
}

impl<T> PerNode<T> {
    /// The value on `node`.
    ///
    /// # Panics
    /// If the value is per node and `node` is not one of the group's nodes.
    pub fn on(&self, node: &str) -> &T {
        match self {
            PerNode::All(value) => value,
            PerNode::Each(map) => map.get(node).unwrap_or_else(|| panic!("no value for node `{node}`")),
        }
    }
}

/// One `[[group.resource]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Unique within the group.
    pub name: String,
    pub kind: ResourceKindConfig,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub monitor_timeout: Duration,
    /// Zero: never monitored.
    pub monitor_interval: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
}

/// The type-specific settings of a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceKindConfig {
    Vip { address: IpAddr, prefix_len: u8, interface: PerNode<String>, announce: u32, announce_interval: Duration },
    Process { argv: Vec<String>, env: Vec<(String, String)>, log: Option<PathBuf> },
    Disk { device: PerNode<PathBuf> },
    Mount { device: PerNode<PathBuf>, directory: PerNode<PathBuf>, fstype: String, options: String, fsck: bool },
    Ocf { provider: String, agent: String, params: Vec<(String, PerNode<String>)> },
}

impl ResourceKindConfig {
    /// The `type` as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKindConfig::Vip { .. } => "vip",
            ResourceKindConfig::Process { .. } => "process",
            ResourceKindConfig::Disk { .. } => "disk",
            ResourceKindConfig::Mount { .. } => "mount",
            ResourceKindConfig::Ocf { .. } => "ocf",
        }
    }
}

/// The group-level settings this module checks.
pub(super) struct GroupResources {
    pub resources: Vec<ResourceConfig>,
    pub failback: Failback,
    pub failback_delay: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResource {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    start_timeout: Option<Spanned<Value>>,
    stop_timeout: Option<Spanned<Value>>,
    monitor_timeout: Option<Spanned<Value>>,
    monitor_interval: Option<Spanned<Value>>,
    max_restarts: Option<Spanned<Value>>,
    restart_window: Option<Spanned<Value>>,
    // vip
    address: Option<Spanned<String>>,
    interface: Option<Spanned<Value>>,
    announce: Option<Spanned<Value>>,
    announce_interval: Option<Spanned<Value>>,
    // process
    command: Option<RawStrings>,
    env: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    log: Option<Spanned<String>>,
    // disk, mount
    device: Option<Spanned<Value>>,
    directory: Option<Spanned<Value>>,
    fstype: Option<Spanned<String>>,
    options: Option<Spanned<String>>,
    fsck: Option<Spanned<bool>>,
    // ocf
    agent: Option<Spanned<String>>,
    params: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>,
}

pub(super) const TYPES: &str = "vip, disk, mount, process or ocf";

impl RawResource {
    /// The type-specific keys present, with their spans.
    fn specific_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        let mut keys = Vec::new();
        let mut add = |key: &'static str, span: Option<Range<usize>>| {
            if let Some(span) = span {
                keys.push((key, span));
            }
        };
        add("address", self.address.as_ref().map(|it| it.span()));
        add("interface", self.interface.as_ref().map(|it| it.span()));
        add("announce", self.announce.as_ref().map(|it| it.span()));
        add("announce_interval", self.announce_interval.as_ref().map(|it| it.span()));
        add("command", self.command.as_ref().map(|it| it.span()));
        add("env", self.env.as_ref().map(|it| it.span()));
        add("log", self.log.as_ref().map(|it| it.span()));
        add("device", self.device.as_ref().map(|it| it.span()));
        add("directory", self.directory.as_ref().map(|it| it.span()));
        add("fstype", self.fstype.as_ref().map(|it| it.span()));
        add("options", self.options.as_ref().map(|it| it.span()));
        add("fsck", self.fsck.as_ref().map(|it| it.span()));
        add("agent", self.agent.as_ref().map(|it| it.span()));
        add("params", self.params.as_ref().map(|it| it.span()));
        keys
    }
}

/// The keys each type takes besides the common ones.
pub fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "vip" => &["address", "interface", "announce", "announce_interval"],
        "process" => &["command", "env", "log"],
        "disk" => &["device"],
        "mount" => &["device", "directory", "fstype", "options", "fsck"],
        "ocf" => &["agent", "params"],
        _ => &[],
    }
}

impl Checker<'_> {
    /// The resources, `failback` and `failback_delay` of one group whose nodes are
    /// `members` (already checked).
    pub(super) fn check_group_resources(
        &mut self,
        group: &str,
        raw: &RawGroup,
        members: &[String],
    ) -> Option<GroupResources> {
        let mut ok = true;
        let failback = match &raw.failback {
            None => Some(Failback::Manual),
            Some(value) => match value.get_ref() {
                Value::String(s) if s == "manual" => Some(Failback::Manual),
                Value::String(s) if s == "auto" => Some(Failback::Auto),
                other => {
                    let shown = match other {
                        Value::String(s) => format!("{s:?}"),
                        other => other.to_string(),
                    };
                    self.error(
                        value.span(),
                        format!(
                            "group `{group}`: failback {shown} is not a failback setting; use \"manual\" (the group stays where it is until `takeover switchover`) or \"auto\" (it returns to its preferred node once that node is back and in sync)"
                        ),
                    );
                    None
                }
            },
        };
        let failback_delay = self
            .duration_from(
                &format!("group `{group}`: failback_delay"),
                &raw.failback_delay,
                DEFAULT_FAILBACK_DELAY,
                true,
            )
            .value;
        // The delay only matters when the group moves back by itself: given with
        // "manual" it would be silently ignored.
        if failback == Some(Failback::Manual)
            && let Some(delay) = &raw.failback_delay
        {
            self.error(
                delay.span(),
                format!(
                    "group `{group}`: failback_delay only applies with failback = \"auto\", but failback is \"manual\"{}; add failback = \"auto\" to move the group back to its preferred node by itself, or remove failback_delay",
                    if raw.failback.is_none() { " (the default)" } else { "" }
                ),
            );
            ok = false;
        }

        let mut resources = Vec::new();
        // Where each of `resources` is written: its name (or `service`).
        let mut spans = Vec::new();
        if let Some(service) = &raw.service {
            if let Some(list) = &raw.resource {
                self.error(
                    list.span(),
                    format!(
                        "group `{group}` has both `service` and [[group.resource]] tables; `service` is a shorthand for one process resource: write it as a [[group.resource]] with type = \"process\" instead"
                    ),
                );
                ok = false;
            }
            let argv = self.argv(
                &format!("group `{group}`: service"),
                service,
                "give the program and its arguments, or remove `service` if the group runs nothing",
            );
            let stop_timeout = self
                .duration(&format!("group `{group}`: stop_timeout"), &raw.stop_timeout, super::DEFAULT_STOP_TIMEOUT)
                .value;
            match (argv, stop_timeout) {
                (Some(argv), Some(stop_timeout)) => {
                    spans.push(service.span());
                    resources.push(ResourceConfig {
                        name: "service".into(),
                        kind: ResourceKindConfig::Process { argv, env: Vec::new(), log: None },
                        start_timeout: DEFAULT_OP_TIMEOUT,
                        stop_timeout,
                        monitor_timeout: DEFAULT_OP_TIMEOUT,
                        monitor_interval: SERVICE_MONITOR_INTERVAL,
                        max_restarts: DEFAULT_MAX_RESTARTS,
                        restart_window: DEFAULT_RESTART_WINDOW,
                    });
                }
                _ => ok = false,
            }
        } else if let Some(timeout) = &raw.stop_timeout {
            self.error(
                timeout.span(),
                format!(
                    "group `{group}`: stop_timeout belongs with `service`; give each [[group.resource]] its own stop_timeout"
                ),
            );
            ok = false;
        }

        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for raw_resource in raw.resource.iter().flat_map(|it| it.get_ref()) {
            let r = raw_resource.get_ref();
            let name = r.name.get_ref();
            if let Some(problem) = name_problem(name) {
                self.error(
                    r.name.span(),
                    format!("group `{group}`: resource name {problem}; use only ASCII letters, digits, `_` and `-`"),
                );
                ok = false;
            } else if let Some(line) = names.get(name) {
                self.error(
                    r.name.span(),
                    format!(
                        "group `{group}`: resource name `{name}` is already used (line {line}); names are unique within a group"
                    ),
                );
                ok = false;
            } else {
                names.insert(name.clone(), self.line_of(&r.name.span()));
            }
            match self.check_resource(group, r, members) {
                Some(resource) => {
                    spans.push(r.name.span());
                    resources.push(resource);
                }
                None => ok = false,
            }
        }
        let kinds: Vec<&str> = resources.iter().map(|it| it.kind.type_name()).collect();
        // A mount of the device a disk resource owns must come after it.
        for (i, resource) in resources.iter().enumerate() {
            if let ResourceKindConfig::Mount { device, .. } = &resource.kind {
                let owner = resources
                    .iter()
                    .position(|it| matches!(&it.kind, ResourceKindConfig::Disk { device: d } if d == device));
                if let Some(owner) = owner
                    && owner > i
                {
                    self.error(
                        spans[i].clone(),
                        format!(
                            "group `{group}`: mount `{}` uses the device of disk `{}`, which comes after it; list the disk first: resources start in order ({})",
                            resource.name,
                            resources[owner].name,
                            kinds.join(" → ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        if ok { Some(GroupResources { resources, failback: failback?, failback_delay: failback_delay? }) } else { None }
    }

    fn check_resource(&mut self, group: &str, r: &RawResource, members: &[String]) -> Option<ResourceConfig> {
        let name = r.name.get_ref();
        let what = format!("group `{group}`: resource `{name}`");
        let kind = r.kind.get_ref().as_str();
        if keys_of(kind).is_empty() {
            self.error(r.kind.span(), format!("{what}: type {kind:?} is not a resource type; use {TYPES}"));
            return None;
        }
        let mut ok = true;
        for (key, span) in r.specific_keys() {
            if !keys_of(kind).contains(&key) {
                self.error(
                    span,
                    format!(
                        "{what}: `{key}` is not a setting of a {kind} resource; a {kind} takes {}",
                        keys_of(kind).join(", ")
                    ),
                );
                ok = false;
            }
        }
        let start_timeout =
            self.duration(&format!("{what}: start_timeout"), &r.start_timeout, DEFAULT_OP_TIMEOUT).value;
        let stop_timeout = self.duration(&format!("{what}: stop_timeout"), &r.stop_timeout, DEFAULT_OP_TIMEOUT).value;
        let monitor_timeout =
            self.duration(&format!("{what}: monitor_timeout"), &r.monitor_timeout, DEFAULT_OP_TIMEOUT).value;
        let monitor_interval = self
            .duration_from(
                &format!("{what}: monitor_interval"),
                &r.monitor_interval,
                if kind == "vip" { DEFAULT_VIP_MONITOR_INTERVAL } else { DEFAULT_MONITOR_INTERVAL },
                true,
            )
            .value;
        let restart_window =
            self.duration(&format!("{what}: restart_window"), &r.restart_window, DEFAULT_RESTART_WINDOW).value;
        let max_restarts = self.count(&format!("{what}: max_restarts"), &r.max_restarts, DEFAULT_MAX_RESTARTS, 1000);
        let spec = match kind {
            "vip" => self.check_vip(&what, r, members),
            "process" => self.check_process(&what, r),
            "disk" => self
                .required(
                    &what,
                    "device",
                    &r.kind,
                    &r.device,
                    "the block device or image file, e.g. \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"",
                )
                .and_then(|device| {
                    self.per_node_path(&what, "device", device, members)
                        .map(|device| ResourceKindConfig::Disk { device })
                }),
            "mount" => self.check_mount(&what, r, members),
            "ocf" => self.check_ocf(&what, r, members),
            _ => unreachable!("checked above"),
        };
        if !ok {
            return None;
        }
        Some(ResourceConfig {
            name: name.clone(),
            kind: spec?,
            start_timeout: start_timeout?,
            stop_timeout: stop_timeout?,
            monitor_timeout: monitor_timeout?,
            monitor_interval: monitor_interval?,
            max_restarts: max_restarts?,
            restart_window: restart_window?,
        })
    }

    /// A whole number from 0 to `max`; absent → `default`.
    fn count(&mut self, key: &str, raw: &Option<Spanned<Value>>, default: u32, max: u32) -> Option<u32> {
        let Some(raw) = raw else { return Some(default) };
        match raw.get_ref() {
            Value::Integer(n) if (0..=i64::from(max)).contains(n) => Some(*n as u32),
            other => {
                self.error(raw.span(), format!("{key} must be a whole number from 0 to {max}, not {other}"));
                None
            }
        }
    }

    fn required<'r, T>(
        &mut self,
        what: &str,
        key: &str,
        kind: &Spanned<String>,
        value: &'r Option<T>,
        example: &str,
    ) -> Option<&'r T> {
        if value.is_none() {
            let kind_span = kind.span();
            let kind = kind.get_ref();
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            self.error(kind_span, format!("{what}: {article} {kind} resource needs `{key}`: {example}"));
        }
        value.as_ref()
    }

    /// A string, or a table giving one string per node of the group.
    fn per_node_string(
        &mut self,
        what: &str,
        key: &str,
        raw: &Spanned<Value>,
        members: &[String],
    ) -> Option<PerNode<String>> {
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Float(x) if x.is_finite() => Some(x.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        match raw.get_ref() {
            Value::Table(table) => {
                let mut map = BTreeMap::new();
                let mut ok = true;
                for (node, value) in table {
                    if !members.contains(node) {
                        self.error(
                            raw.span(),
                            format!(
                                "{what}: `{key}` names node `{node}`, which does not run this group; give values only for the group's nodes ({})",
                                members.join(" and ")
                            ),
                        );
                        ok = false;
                    }
                    match text(value) {
                        Some(value) => {
                            map.insert(node.clone(), value);
                        }
                        None => {
                            self.error(
                                raw.span(),
                                format!("{what}: `{key}` for node `{node}` must be a string, not {}", value.type_str()),
                            );
                            ok = false;
                        }
                    }
                }
                for member in members {
                    if !table.contains_key(member) {
                        self.error(
                            raw.span(),
                            format!(
                                "{what}: `{key}` is given per node but not for `{member}`; give every node of the group ({}) a value, or one string for all",
                                members.join(" and ")
                            ),
                        );
                        ok = false;
                    }
                }
                ok.then_some(PerNode::Each(map))
            }
            value => match text(value) {
                Some(value) => Some(PerNode::All(value)),
                None => {
                    self.error(
                        raw.span(),
                        format!(
                            "{what}: `{key}` must be a string, or a table with one string per node, not {}",
                            value.type_str()
                        ),
                    );
                    None
                }
            },
        }
    }

    pub(super) fn per_node_path(
        &mut self,
        what: &str,
        key: &str,
        raw: &Spanned<Value>,
        members: &[String],
    ) -> Option<PerNode<PathBuf>> {
        let value = self.per_node_string(what, key, raw, members)?;
        let values: Vec<&String> = match &value {
            PerNode::All(v) => vec![v],
            PerNode::Each(map) => map.values().collect(),
        };
        for v in values {
            if !Path::new(v).is_absolute() {
                self.error(raw.span(), format!("{what}: `{key}` {v:?} is not an absolute path; give the full path"));
                return None;
            }
        }
        Some(match value {
            PerNode::All(v) => PerNode::All(PathBuf::from(v)),
            PerNode::Each(map) => PerNode::Each(map.into_iter().map(|(k, v)| (k, PathBuf::from(v))).collect()),
        })
    }

    fn check_vip(&mut self, what: &str, r: &RawResource, members: &[String]) -> Option<ResourceKindConfig> {
        let address = self.required(
            what,
            "address",
            &r.kind,
            &r.address,
            "the address with its prefix length, e.g. \"10.0.0.100/24\" or \"fd00::100/64\"",
        );
        let interface = self.required(
            what,
            "interface",
            &r.kind,
            &r.interface,
            "the interface that carries it, e.g. \"eth0\", or { alpha = \"eth0\", beta = \"ens3\" }",
        );
        let parsed = address.and_then(|address| {
            let text = address.get_ref();
            let Some((ip, prefix)) = text.split_once('/') else {
                let example = match text.parse::<IpAddr>() {
                    Ok(IpAddr::V6(_)) => format!("\"{text}/64\""),
                    _ => format!("\"{text}/24\" (netmask 255.255.255.0)"),
                };
                self.error(
                    address.span(),
                    format!(
                        "{what}: address {text:?} has no prefix length; add the prefix length of the interface's network, e.g. {example}"
                    ),
                );
                return None;
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                self.error(
                    address.span(),
                    format!(
                        "{what}: {ip:?} is not an IPv4 or IPv6 address; write the address and its prefix length, e.g. \"10.0.0.100/24\" or \"fd00::100/64\""
                    ),
                );
                return None;
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            // Prefix 0 would put the whole address space on the interface (a second
            // default route), never what a service address means.
            let prefix_len = match prefix.parse::<u8>() {
                Ok(len) if (1..=max).contains(&len) => len,
                _ => {
                    let example = if ip.is_ipv4() {
                        "24 for netmask 255.255.255.0, or 32 for the address alone as keepalived does by default"
                    } else {
                        "64"
                    };
                    self.error(
                        address.span(),
                        format!(
                            "{what}: prefix length {prefix:?} must be a number from 1 to {max}: the prefix length of the interface's network, as in `ip address add` (e.g. {example})"
                        ),
                    );
                    return None;
                }
            };
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                self.error(
                    address.span(),
                    format!(
                        "{what}: {ip} cannot be a service address (unspecified, multicast or loopback); give an unused address of the interface's network"
                    ),
                );
                return None;
            }
            if let IpAddr::V4(v4) = ip
                && prefix_len <= 30
            {
                let host_bits = u32::MAX >> prefix_len;
                let host = u32::from(v4) & host_bits;
                if host == 0 || host == host_bits {
                    let which = if host == 0 { "network" } else { "broadcast" };
                    let network = std::net::Ipv4Addr::from(u32::from(v4) & !host_bits);
                    self.error(
                        address.span(),
                        format!(
                            "{what}: {ip} is the {which} address of {network}/{prefix_len}, not a host address; give an unused host address of that network"
                        ),
                    );
                    return None;
                }
            }
            Some((ip, prefix_len))
        });
        let interface = interface.and_then(|raw| {
            let value = self.per_node_string(what, "interface", raw, members)?;
            let names: Vec<&String> = match &value {
                PerNode::All(name) => vec![name],
                PerNode::Each(map) => map.values().collect(),
            };
            if let Some(bad) = names.iter().find(|it| it.is_empty() || it.len() > 15 || it.contains(['/', ' ', '\0'])) {
                self.error(
                    raw.span(),
                    format!("{what}: {bad:?} is not an interface name (1 to 15 characters, no `/` or space)"),
                );
                return None;
            }
            Some(value)
        });
        let announce = self.count(&format!("{what}: announce"), &r.announce, DEFAULT_ANNOUNCE, 100);
        let announce_interval =
            self.duration(&format!("{what}: announce_interval"), &r.announce_interval, DEFAULT_ANNOUNCE_INTERVAL).value;
        let (address, prefix_len) = parsed?;
        Some(ResourceKindConfig::Vip {
            address,
            prefix_len,
            interface: interface?,
            announce: announce?,
            announce_interval: announce_interval?,
        })
    }

    fn check_process(&mut self, what: &str, r: &RawResource) -> Option<ResourceKindConfig> {
        let command = self.required(
            what,
            "command",
            &r.kind,
            &r.command,
            "the program and its arguments, e.g. [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]",
        )?;
        let argv = self.argv(
            &format!("{what}: command"),
            command,
            "give the program and its arguments; it must stay in the foreground",
        )?;
        let mut env = Vec::new();
        let mut ok = true;
        if let Some(raw_env) = &r.env {
            let mut entries: Vec<_> = raw_env.get_ref().iter().collect();
            entries.sort_by_key(|(key, _)| key.span().start);
            for (key, value) in entries {
                let k = key.get_ref();
                if k.is_empty() || k.contains(['=', '\0']) || value.get_ref().contains('\0') {
                    self.error(key.span(), format!("{what}: env {k:?} is not a valid environment variable"));
                    ok = false;
                } else if k.starts_with("TAKEOVER_") {
                    self.error(
                        key.span(),
                        format!(
                            "{what}: env {k} is set by takeover (TAKEOVER_CLUSTER, _NODE, _GROUP, _API); remove it"
                        ),
                    );
                    ok = false;
                } else {
                    env.push((k.clone(), value.get_ref().clone()));
                }
            }
        }
        let log = match &r.log {
            Some(log) if !Path::new(log.get_ref()).is_absolute() => {
                self.error(log.span(), format!("{what}: log {:?} is not an absolute path", log.get_ref()));
                return None;
            }
            Some(log) => Some(PathBuf::from(log.get_ref())),
            None => None,
        };
        ok.then_some(ResourceKindConfig::Process { argv, env, log })
    }

    fn check_mount(&mut self, what: &str, r: &RawResource, members: &[String]) -> Option<ResourceKindConfig> {
        let device = self
            .required(what, "device", &r.kind, &r.device, "the block device, e.g. \"/dev/disk/by-uuid/…\"")
            .and_then(|raw| self.per_node_path(what, "device", raw, members));
        let directory =
            self.required(what, "directory", &r.kind, &r.directory, "where to mount it, e.g. \"/srv/data\"");
        let directory = directory.and_then(|raw| {
            let value = self.per_node_path(what, "directory", raw, members)?;
            let root = match &value {
                PerNode::All(path) => path == Path::new("/"),
                PerNode::Each(map) => map.values().any(|it| it == Path::new("/")),
            };
            if root {
                self.error(raw.span(), format!("{what}: directory cannot be /"));
                return None;
            }
            Some(value)
        });
        let fstype = self.required(what, "fstype", &r.kind, &r.fstype, "the filesystem type, e.g. \"ext4\" or \"xfs\"");
        let fstype = fstype.and_then(|raw| {
            let t = raw.get_ref();
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
                self.error(raw.span(), format!("{what}: fstype {t:?} is not a filesystem type"));
                return None;
            }
            Some(t.clone())
        });
        let options = r.options.as_ref().map_or_else(String::new, |it| it.get_ref().clone());
        if options.contains([' ', '\n', '\0']) {
            self.error(
                r.options.as_ref().expect("present").span(),
                format!("{what}: options are comma-separated mount options without spaces, e.g. \"noatime,nodev\""),
            );
            return None;
        }
        let fsck = r.fsck.as_ref().is_none_or(|it| *it.get_ref());
        Some(ResourceKindConfig::Mount { device: device?, directory: directory?, fstype: fstype?, options, fsck })
    }

    fn check_ocf(&mut self, what: &str, r: &RawResource, members: &[String]) -> Option<ResourceKindConfig> {
        let agent = self.required(what, "agent", &r.kind, &r.agent, "provider/agent, e.g. \"heartbeat/IPaddr2\"")?;
        let text = agent.get_ref();
        let valid = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        let Some((provider, name)) = text.split_once('/').filter(|(p, a)| valid(p) && valid(a)) else {
            self.error(
                agent.span(),
                format!(
                    "{what}: agent {text:?} is not provider/agent; write e.g. \"heartbeat/IPaddr2\" for {OCF_ROOT}/resource.d/heartbeat/IPaddr2"
                ),
            );
            return None;
        };
        let mut params = Vec::new();
        let mut ok = true;
        if let Some(raw_params) = &r.params {
            let mut entries: Vec<_> = raw_params.get_ref().iter().collect();
            entries.sort_by_key(|(key, _)| key.span().start);
            for (key, value) in entries {
                let k = key.get_ref();
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.error(
                        key.span(),
                        format!("{what}: parameter {k:?} is not an OCF parameter name (letters, digits and `_`)"),
                    );
                    ok = false;
                    continue;
                }
                match self.per_node_string(what, &format!("params.{k}"), value, members) {
                    Some(v) => params.push((k.clone(), v)),
                    None => ok = false,
                }
            }
        }
        ok.then(|| ResourceKindConfig::Ocf { provider: provider.to_string(), agent: name.to_string(), params })
    }
}

#[cfg(test)]
mod tests;
