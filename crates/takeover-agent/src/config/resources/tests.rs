//! `[[group.resource]]`, `failback` and the `service` shorthand: what a valid group parses
//! to, and what every operator mistake is told (file:line and what to do).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::super::{ConfigError, GroupConfig, parse};
use super::*;
use crate::resources::{ResourceKind, SpecEnv, disk, mount, ocf, process, spec_for, vip};

/// Three nodes and the start of group `web` on alpha and beta (gamma is declared but not
/// in the group). What a test appends starts at line 26.
const HEAD: &str = r#"[cluster]
name = "demo"
arbiter = "unsafe-assume-crash-stop"
auth = "none"
[[node]]
name = "alpha"
state_dir = "/var/lib/takeover/alpha"
api = "unix:/run/takeover/alpha.sock"
links = ["127.0.0.1:7101"]

[[node]]
name = "beta"
state_dir = "/var/lib/takeover/beta"
api = "unix:/run/takeover/beta.sock"
links = ["127.0.0.1:7102"]

[[node]]
name = "gamma"
state_dir = "/var/lib/takeover/gamma"
api = "unix:/run/takeover/gamma.sock"
links = ["127.0.0.1:7103"]

[[group]]
name = "web"
nodes = ["alpha", "beta"]
"#;

/// HEAD followed by `rest` (from line 26).
fn group(rest: &str) -> String {
    format!("{HEAD}{rest}\n")
}

/// HEAD, then one resource of group `web`: `[[group.resource]]` on line 26, `name = "r"`
/// on 27, then `body` from line 28.
fn resource(body: &str) -> String {
    group(&format!("[[group.resource]]\nname = \"r\"\n{body}"))
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(text, "cluster.toml") {
        Ok(c) => panic!("expected errors, the file parsed to {:#?}:\n{text}", c.groups),
        Err(e) => e.into_iter().collect(),
    }
}

/// Checks that `error` is shown at `cluster.toml:line:` and its message contains every
/// one of `parts`.
fn assert_error(error: &ConfigError, line: usize, parts: &[&str]) {
    let shown = error.to_string();
    assert!(shown.contains(&format!("--> cluster.toml:{line}:")), "not reported at cluster.toml:{line}:\n{shown}");
    for part in parts {
        assert!(error.message.contains(part), "message {:?} does not contain {part:?}", error.message);
    }
}

/// Checks that `text` has exactly one error, at `line`, containing every one of `parts`.
fn assert_single(text: &str, line: usize, parts: &[&str]) {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert_error(&errors[0], line, parts);
}

fn web(text: &str) -> GroupConfig {
    let c = parse(text, "cluster.toml").unwrap_or_else(|e| panic!("{e}"));
    c.group("web").unwrap().clone()
}

// ---- a valid group ----

/// Group `web` with one resource of each type, some values per node, some defaults.
const ALL_TYPES: &str = r#"failback = "auto"
failback_delay = "30s"

[[group.resource]]
name = "data"
type = "disk"
device = { alpha = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", beta = "/dev/mapper/mpatha" }

[[group.resource]]
name = "fs"
type = "mount"
device = { alpha = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", beta = "/dev/mapper/mpatha" }
directory = { beta = "/srv/web-beta", alpha = "/srv/web" }
fstype = "xfs"
options = "noatime,nodev"
fsck = false
stop_timeout = "1m"

[[group.resource]]
name = "ip"
type = "vip"
address = "192.0.2.100/24"
interface = { alpha = "eth0", beta = "ens3" }
announce = 2
announce_interval = "250ms"
monitor_interval = "2s"

[[group.resource]]
name = "app"
type = "process"
command = ["/usr/bin/python3", "-m", "http.server", "--directory", "/srv/{group}/{node}", "8080"]
env = { MODE = "primary", A_FIRST_IN_ABC = "1" }
start_timeout = "45s"
max_restarts = 0
restart_window = "1h"

[[group.resource]]
name = "mail"
type = "ocf"
agent = "heartbeat/MailTo"
params = { email = "ops@example.com", subject = { alpha = "web on alpha", beta = "web on beta" }, count = 2 }
monitor_interval = "0s"
monitor_timeout = "5s""#;

fn each<T: Clone>(alpha: T, beta: T) -> PerNode<T> {
    PerNode::Each([("alpha".to_string(), alpha), ("beta".to_string(), beta)].into())
}

/// The timeouts and restart settings every resource gets by default.
fn defaults(name: &str, kind: ResourceKindConfig) -> ResourceConfig {
    ResourceConfig {
        name: name.into(),
        kind,
        start_timeout: DEFAULT_OP_TIMEOUT,
        stop_timeout: DEFAULT_OP_TIMEOUT,
        monitor_timeout: DEFAULT_OP_TIMEOUT,
        monitor_interval: DEFAULT_MONITOR_INTERVAL,
        max_restarts: DEFAULT_MAX_RESTARTS,
        restart_window: DEFAULT_RESTART_WINDOW,
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    assert_eq!(DEFAULT_OP_TIMEOUT, Duration::from_secs(20));
    assert_eq!(DEFAULT_MONITOR_INTERVAL, Duration::from_secs(10));
    assert_eq!(DEFAULT_VIP_MONITOR_INTERVAL, Duration::from_secs(1));
    assert_eq!(DEFAULT_MAX_RESTARTS, 3);
    assert_eq!(DEFAULT_RESTART_WINDOW, Duration::from_secs(600));
    assert_eq!(DEFAULT_FAILBACK_DELAY, Duration::from_secs(10));
    assert_eq!((DEFAULT_ANNOUNCE, DEFAULT_ANNOUNCE_INTERVAL), (5, Duration::from_millis(100)));
}

#[test]
fn a_group_with_every_resource_type_parses_in_order_with_defaults() {
    let g = web(&group(ALL_TYPES));
    assert_eq!((g.failback, g.failback_delay), (Failback::Auto, Duration::from_secs(30)));
    let device = each(PathBuf::from("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"), PathBuf::from("/dev/mapper/mpatha"));
    let expected = vec![
        defaults("data", ResourceKindConfig::Disk { device: device.clone() }),
        ResourceConfig {
            stop_timeout: Duration::from_secs(60),
            ..defaults(
                "fs",
                ResourceKindConfig::Mount {
                    device,
                    directory: each("/srv/web".into(), "/srv/web-beta".into()),
                    fstype: "xfs".into(),
                    options: "noatime,nodev".into(),
                    fsck: false,
                },
            )
        },
        ResourceConfig {
            monitor_interval: Duration::from_secs(2),
            ..defaults(
                "ip",
                ResourceKindConfig::Vip {
                    address: "192.0.2.100".parse().unwrap(),
                    prefix_len: 24,
                    interface: each("eth0".into(), "ens3".into()),
                    announce: 2,
                    announce_interval: Duration::from_millis(250),
                },
            )
        },
        ResourceConfig {
            start_timeout: Duration::from_secs(45),
            max_restarts: 0,
            restart_window: Duration::from_secs(3600),
            ..defaults(
                "app",
                ResourceKindConfig::Process {
                    argv: ["/usr/bin/python3", "-m", "http.server", "--directory", "/srv/{group}/{node}", "8080"]
                        .map(String::from)
                        .to_vec(),
                    // In file order, not sorted.
                    env: vec![("MODE".into(), "primary".into()), ("A_FIRST_IN_ABC".into(), "1".into())],
                    log: None,
                },
            )
        },
        ResourceConfig {
            monitor_interval: Duration::ZERO,
            monitor_timeout: Duration::from_secs(5),
            ..defaults(
                "mail",
                ResourceKindConfig::Ocf {
                    provider: "heartbeat".into(),
                    agent: "MailTo".into(),
                    // In file order; numbers become their text.
                    params: vec![
                        ("email".into(), PerNode::All("ops@example.com".into())),
                        ("subject".into(), each("web on alpha".into(), "web on beta".into())),
                        ("count".into(), PerNode::All("2".into())),
                    ],
                },
            )
        },
    ];
    assert_eq!(g.resources, expected);
}

#[test]
fn vip_mount_and_mount_options_take_their_defaults() {
    let g = web(&group(
        r#"[[group.resource]]
name = "ip"
type = "vip"
address = "fd00::100/64"
interface = "eth0"

[[group.resource]]
name = "fs"
type = "mount"
device = "/dev/vdb"
directory = "/srv"
fstype = "ext4""#,
    ));
    assert_eq!(
        g.resources,
        [
            ResourceConfig {
                monitor_interval: DEFAULT_VIP_MONITOR_INTERVAL,
                ..defaults(
                    "ip",
                    ResourceKindConfig::Vip {
                        address: "fd00::100".parse().unwrap(),
                        prefix_len: 64,
                        interface: PerNode::All("eth0".into()),
                        announce: DEFAULT_ANNOUNCE,
                        announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
                    },
                )
            },
            defaults(
                "fs",
                ResourceKindConfig::Mount {
                    device: PerNode::All("/dev/vdb".into()),
                    directory: PerNode::All("/srv".into()),
                    fstype: "ext4".into(),
                    options: String::new(),
                    fsck: true,
                },
            ),
        ]
    );
    assert_eq!((g.failback, g.failback_delay), (Failback::Manual, DEFAULT_FAILBACK_DELAY));
}

#[test]
fn per_node_values_resolve_on_each_node() {
    let g = web(&group(ALL_TYPES));
    let on = |node: &str| {
        let state_dir = PathBuf::from(format!("/var/lib/takeover/{node}"));
        let env = SpecEnv {
            cluster: "demo",
            node,
            group: "web",
            api: format!("unix:/run/takeover/{node}.sock"),
            state_dir: &state_dir,
        };
        g.resources.iter().map(|it| spec_for(it, &env)).collect::<Vec<_>>()
    };
    for (node, device, directory, interface) in [
        ("alpha", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "/srv/web", "eth0"),
        ("beta", "/dev/mapper/mpatha", "/srv/web-beta", "ens3"),
    ] {
        let specs = on(node);
        let names: Vec<_> = specs.iter().map(|it| it.label()).collect();
        assert_eq!(names, ["disk data", "mount fs", "vip ip", "process app", "ocf mail"]);
        assert_eq!(specs[0].kind, ResourceKind::Disk(disk::DiskSpec { device: device.into() }));
        assert_eq!(
            specs[1].kind,
            ResourceKind::Mount(mount::MountSpec {
                device: device.into(),
                mountpoint: directory.into(),
                fstype: "xfs".into(),
                options: "noatime,nodev".into(),
                fsck: false,
            })
        );
        assert_eq!((specs[1].stop_timeout, specs[1].start_timeout), (Duration::from_secs(60), DEFAULT_OP_TIMEOUT));
        assert_eq!(
            specs[2].kind,
            ResourceKind::Vip(vip::VipSpec {
                address: "192.0.2.100".parse::<IpAddr>().unwrap(),
                prefix_len: 24,
                interface: interface.into(),
                announce_count: 2,
                announce_interval: Duration::from_millis(250),
            })
        );
        assert_eq!(specs[2].monitor_interval, Duration::from_secs(2));
        let ResourceKind::Process(process::ProcessSpec { argv, env, log }) = &specs[3].kind else {
            panic!("not a process: {:?}", specs[3]);
        };
        assert_eq!(argv[4], format!("/srv/web/{node}"));
        assert_eq!(
            env[..4],
            [
                ("TAKEOVER_CLUSTER".to_string(), "demo".to_string()),
                ("TAKEOVER_NODE".into(), node.into()),
                ("TAKEOVER_GROUP".into(), "web".into()),
                ("TAKEOVER_API".into(), format!("unix:/run/takeover/{node}.sock")),
            ]
        );
        assert_eq!(env[4..], [("MODE".to_string(), "primary".to_string()), ("A_FIRST_IN_ABC".into(), "1".into())]);
        assert_eq!(log.as_deref(), Some(Path::new(&format!("/var/lib/takeover/{node}/web.app.log"))));
        assert_eq!(
            specs[4].kind,
            ResourceKind::Ocf(ocf::OcfSpec {
                provider: "heartbeat".into(),
                agent: "MailTo".into(),
                params: vec![
                    ("email".into(), "ops@example.com".into()),
                    ("subject".into(), format!("web on {node}")),
                    ("count".into(), "2".into()),
                ],
                root: None,
            })
        );
        assert_eq!((specs[4].monitor_interval, specs[4].monitor_timeout), (Duration::ZERO, Duration::from_secs(5)));
    }
}

#[test]
fn service_shorthand_is_one_process_resource_named_service() {
    let g = web(&group("service = [\"/usr/local/bin/my-service\", \"--node\", \"{node}\"]\nstop_timeout = \"8s\""));
    assert_eq!(
        g.resources,
        [ResourceConfig {
            stop_timeout: Duration::from_secs(8),
            monitor_interval: SERVICE_MONITOR_INTERVAL,
            ..defaults(
                "service",
                ResourceKindConfig::Process {
                    argv: vec!["/usr/local/bin/my-service".into(), "--node".into(), "{node}".into()],
                    env: vec![],
                    log: None,
                },
            )
        }]
    );
    let g = web(&group("service = [\"/usr/local/bin/my-service\"]"));
    assert_eq!(g.resources[0].stop_timeout, crate::config::DEFAULT_STOP_TIMEOUT);
}

#[test]
fn zero_monitor_interval_means_never_monitored() {
    let g = web(&resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmonitor_interval = \"0s\""));
    assert_eq!(g.resources[0].monitor_interval, Duration::ZERO);
}

#[test]
fn failback_delay_zero_is_accepted_with_auto() {
    let g = web(&group("failback = \"auto\"\nfailback_delay = \"0s\""));
    assert_eq!((g.failback, g.failback_delay), (Failback::Auto, Duration::ZERO));
}

// ---- type and required fields ----

#[test]
fn unknown_resource_type_lists_the_types() {
    assert_single(
        &resource("type = \"IPaddr2\""),
        28,
        &["group `web`: resource `r`: type \"IPaddr2\" is not a resource type", "use vip, disk, mount, process or ocf"],
    );
}

#[test]
fn resource_without_type_or_name_says_what_to_add() {
    assert_single(
        &resource("device = \"/dev/vdb\""),
        26,
        &["missing field `type`", "add type = \"...\", one of vip, disk, mount, process or ocf"],
    );
    assert_single(
        &group("[[group.resource]]\ntype = \"disk\"\ndevice = \"/dev/vdb\""),
        26,
        &["missing field `name`", "add name = \"...\", a name unique within the group"],
    );
}

#[test]
fn vip_needs_an_address_and_an_interface() {
    assert_single(
        &resource("type = \"vip\"\ninterface = \"eth0\""),
        28,
        &["resource `r`: a vip resource needs `address`", "e.g. \"10.0.0.100/24\""],
    );
    assert_single(
        &resource("type = \"vip\"\naddress = \"10.0.0.100/24\""),
        28,
        &["a vip resource needs `interface`", "e.g. \"eth0\", or { alpha = \"eth0\", beta = \"ens3\" }"],
    );
}

#[test]
fn mount_needs_a_directory_and_a_filesystem_type() {
    let errors = errors_of(&resource("type = \"mount\"\ndevice = \"/dev/vdb\""));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_error(&errors[0], 28, &["a mount resource needs `directory`", "where to mount it, e.g. \"/srv/data\""]);
    assert_error(&errors[1], 28, &["a mount resource needs `fstype`", "e.g. \"ext4\" or \"xfs\""]);
    assert_single(
        &resource("type = \"mount\"\ndirectory = \"/srv\"\nfstype = \"ext4\""),
        28,
        &["a mount resource needs `device`", "the block device"],
    );
}

#[test]
fn disk_needs_a_device() {
    assert_single(&resource("type = \"disk\""), 28, &["a disk resource needs `device`", "e.g. \"/dev/disk/by-id/"]);
}

#[test]
fn process_needs_a_command() {
    assert_single(
        &resource("type = \"process\"\nenv = { A = \"1\" }"),
        28,
        &["a process resource needs `command`", "the program and its arguments"],
    );
    assert_single(
        &resource("type = \"process\"\ncommand = []"),
        29,
        &["resource `r`: command is empty", "give the program and its arguments"],
    );
}

#[test]
fn ocf_needs_a_provider_and_agent() {
    assert_single(
        &resource("type = \"ocf\"\nparams = { ip = \"10.0.0.1\" }"),
        28,
        &["an ocf resource needs `agent`", "e.g. \"heartbeat/IPaddr2\""],
    );
    assert_single(
        &resource("type = \"ocf\"\nagent = \"IPaddr2\""),
        29,
        &["agent \"IPaddr2\" is not provider/agent", "write e.g. \"heartbeat/IPaddr2\""],
    );
}

#[test]
fn settings_of_another_type_are_rejected() {
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nfstype = \"ext4\""),
        30,
        &["`fstype` is not a setting of a disk resource", "a disk takes device"],
    );
}

#[test]
fn unknown_resource_key_is_reported_at_the_key() {
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\ninterval = \"5s\""),
        30,
        &["unknown field `interval`"],
    );
}

#[test]
fn single_bracket_resource_table_gets_a_hint() {
    assert_single(
        &group("[group.resource]\nname = \"r\"\ntype = \"disk\"\ndevice = \"/dev/vdb\""),
        26,
        &["write [[group.resource]] with double brackets"],
    );
}

// ---- per-node values ----

#[test]
fn per_node_value_missing_a_node_of_the_group() {
    assert_single(
        &resource("type = \"disk\"\ndevice = { alpha = \"/dev/vdb\" }"),
        29,
        &["`device` is given per node but not for `beta`", "give every node of the group (alpha and beta) a value"],
    );
    assert_single(
        &resource("type = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = { beta = \"ens3\" }"),
        30,
        &["`interface` is given per node but not for `alpha`"],
    );
    assert_single(
        &resource("type = \"ocf\"\nagent = \"heartbeat/IPaddr2\"\nparams = { ip = { alpha = \"10.0.0.1\" } }"),
        30,
        &["`params.ip` is given per node but not for `beta`"],
    );
}

#[test]
fn per_node_value_naming_a_node_outside_the_group() {
    // gamma is a declared node, but does not run the group.
    assert_single(
        &resource("type = \"disk\"\ndevice = { alpha = \"/dev/vdb\", beta = \"/dev/vdb\", gamma = \"/dev/vdc\" }"),
        29,
        &["`device` names node `gamma`, which does not run this group", "give values only for the group's nodes"],
    );
    // A misspelt node: both the stranger and the missing node are reported.
    let errors = errors_of(&resource(
        "type = \"mount\"\ndevice = \"/dev/vdb\"\ndirectory = { alpha = \"/srv\", bta = \"/srv\" }\nfstype = \"ext4\"",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_error(&errors[0], 30, &["`directory` names node `bta`, which does not run this group"]);
    assert_error(&errors[1], 30, &["`directory` is given per node but not for `beta`"]);
}

#[test]
fn per_node_values_must_be_strings_and_paths_absolute() {
    assert_single(
        &resource("type = \"disk\"\ndevice = { alpha = \"/dev/vdb\", beta = [\"/dev/vdb\"] }"),
        29,
        &["`device` for node `beta` must be a string, not array"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = [\"/dev/vdb\"]"),
        29,
        &["`device` must be a string, or a table with one string per node, not array"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = { alpha = \"/dev/vdb\", beta = \"vdb\" }"),
        29,
        &["`device` \"vdb\" is not an absolute path", "give the full path"],
    );
}

// ---- names ----

#[test]
fn resource_names_are_unique_within_a_group() {
    let text = group(
        "[[group.resource]]\nname = \"r\"\ntype = \"disk\"\ndevice = \"/dev/vdb\"\n\n[[group.resource]]\nname = \"r\"\ntype = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"",
    );
    assert_single(
        &text,
        32,
        &["group `web`: resource name `r` is already used (line 27)", "names are unique within a group"],
    );
}

#[test]
fn the_same_resource_name_in_two_groups_is_fine() {
    let text = format!(
        "{}\n[[group]]\nname = \"db\"\nnodes = [\"beta\", \"gamma\"]\n[[group.resource]]\nname = \"r\"\ntype = \"disk\"\ndevice = \"/dev/vdc\"\n",
        resource("type = \"disk\"\ndevice = \"/dev/vdb\"")
    );
    let c = parse(&text, "cluster.toml").unwrap();
    assert_eq!(c.group("db").unwrap().resources[0].name, "r");
}

#[test]
fn resource_name_must_use_the_allowed_characters() {
    assert_single(
        &group(
            "[[group.resource]]\nname = \"my ip\"\ntype = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"",
        ),
        27,
        &["resource name `my ip` contains ' '", "use only ASCII letters, digits, `_` and `-`"],
    );
}

// ---- durations and counts ----

#[test]
fn bad_duration_text_is_reported_at_the_value() {
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmonitor_interval = \"often\""),
        30,
        &["resource `r`: monitor_interval = \"often\" is not a duration", "write a number followed by a unit"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nstart_timeout = \"30 seconds\""),
        30,
        &["start_timeout = \"30 seconds\" is not a duration: `seconds` is not a unit"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nrestart_window = 600"),
        30,
        &["restart_window = 600 has no unit", "e.g. \"600ms\" or \"600s\""],
    );
    assert_single(
        &resource("type = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nannounce_interval = \"1 sec\""),
        31,
        &["announce_interval = \"1 sec\" is not a duration: `sec` is not a unit"],
    );
    assert_single(
        &group("failback = \"auto\"\nfailback_delay = \"later\""),
        27,
        &["failback_delay = \"later\" is not a duration"],
    );
}

#[test]
fn negative_monitor_interval_is_rejected() {
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmonitor_interval = \"-10s\""),
        30,
        &["monitor_interval = \"-10s\" is not a duration: durations cannot be negative"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmonitor_interval = -10"),
        30,
        &["monitor_interval = -10 has no unit"],
    );
}

#[test]
fn zero_timeouts_and_windows_are_rejected() {
    for key in ["start_timeout", "stop_timeout", "monitor_timeout", "restart_window"] {
        assert_single(
            &resource(&format!("type = \"disk\"\ndevice = \"/dev/vdb\"\n{key} = \"0s\"")),
            30,
            &[&format!("resource `r`: {key} is zero"), "give a positive duration"],
        );
    }
    assert_single(
        &resource("type = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nannounce_interval = \"0ms\""),
        31,
        &["announce_interval is zero"],
    );
}

#[test]
fn counts_must_be_small_whole_numbers() {
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmax_restarts = -1"),
        30,
        &["resource `r`: max_restarts must be a whole number from 0 to 1000, not -1"],
    );
    assert_single(
        &resource("type = \"disk\"\ndevice = \"/dev/vdb\"\nmax_restarts = \"3\""),
        30,
        &["max_restarts must be a whole number"],
    );
    assert_single(
        &resource("type = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nannounce = 101"),
        31,
        &["announce must be a whole number from 0 to 100, not 101"],
    );
}

// ---- failback ----

#[test]
fn failback_must_be_manual_or_auto() {
    assert_single(
        &group("failback = \"sometimes\""),
        26,
        &["group `web`: failback \"sometimes\" is not a failback setting", "use \"manual\"", "or \"auto\""],
    );
    assert_single(&group("failback = true"), 26, &["failback true is not a failback setting", "use \"manual\""]);
}

#[test]
fn failback_delay_needs_auto_failback() {
    assert_single(
        &group("failback_delay = \"30s\""),
        26,
        &[
            "group `web`: failback_delay only applies with failback = \"auto\", but failback is \"manual\" (the default)",
            "add failback = \"auto\"",
            "or remove failback_delay",
        ],
    );
    assert_single(
        &group("failback = \"manual\"\nfailback_delay = \"30s\""),
        27,
        &["but failback is \"manual\"; add failback = \"auto\""],
    );
}

// ---- service shorthand ----

#[test]
fn service_and_resources_cannot_be_mixed() {
    let text = group(
        "service = [\"/usr/bin/app\"]\n[[group.resource]]\nname = \"ip\"\ntype = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"",
    );
    assert_single(
        &text,
        27,
        &[
            "group `web` has both `service` and [[group.resource]] tables",
            "write it as a [[group.resource]] with type = \"process\" instead",
        ],
    );
}

#[test]
fn stop_timeout_of_the_group_needs_service() {
    assert_single(
        &group("stop_timeout = \"5s\"\n[[group.resource]]\nname = \"r\"\ntype = \"disk\"\ndevice = \"/dev/vdb\""),
        26,
        &["group `web`: stop_timeout belongs with `service`", "give each [[group.resource]] its own stop_timeout"],
    );
}

// ---- vip addresses ----

fn vip_with(address: &str) -> String {
    resource(&format!("type = \"vip\"\ninterface = \"eth0\"\naddress = \"{address}\""))
}

#[test]
fn vip_address_must_be_an_ip_address() {
    assert_single(
        &vip_with("10.0.0.300/24"),
        30,
        &["resource `r`: \"10.0.0.300\" is not an IPv4 or IPv6 address", "e.g. \"10.0.0.100/24\""],
    );
    assert_single(&vip_with("www.example.com/24"), 30, &["\"www.example.com\" is not an IPv4 or IPv6 address"]);
}

#[test]
fn vip_address_needs_a_prefix_length() {
    assert_single(
        &vip_with("10.0.0.100"),
        30,
        &["address \"10.0.0.100\" has no prefix length", "e.g. \"10.0.0.100/24\" (netmask 255.255.255.0)"],
    );
    assert_single(&vip_with("fd00::100"), 30, &["address \"fd00::100\" has no prefix length", "e.g. \"fd00::100/64\""]);
}

#[test]
fn vip_prefix_length_must_fit_the_family() {
    assert_single(
        &vip_with("10.0.0.100/33"),
        30,
        &["prefix length \"33\" must be a number from 1 to 32", "e.g. 24 for netmask 255.255.255.0"],
    );
    assert_single(&vip_with("fd00::100/129"), 30, &["prefix length \"129\" must be a number from 1 to 128"]);
    assert_single(&vip_with("10.0.0.100/255.255.255.0"), 30, &["prefix length \"255.255.255.0\" must be a number"]);
    // A /0 would put the whole address space on the interface.
    assert_single(&vip_with("10.0.0.100/0"), 30, &["prefix length \"0\" must be a number from 1 to 32"]);
    assert_single(&vip_with("fd00::100/0"), 30, &["prefix length \"0\" must be a number from 1 to 128"]);
    // The longest prefixes are fine (keepalived's default /32).
    for address in ["10.0.0.100/32", "10.0.0.0/31", "10.0.0.255/32", "fd00::100/128"] {
        web(&vip_with(address));
    }
}

#[test]
fn vip_address_must_be_a_unicast_host_address() {
    assert_single(
        &vip_with("127.0.0.5/8"),
        30,
        &["127.0.0.5 cannot be a service address (unspecified, multicast or loopback)"],
    );
    assert_single(&vip_with("224.0.0.18/24"), 30, &["224.0.0.18 cannot be a service address"]);
    assert_single(&vip_with("::/64"), 30, &[":: cannot be a service address"]);
    assert_single(
        &vip_with("10.0.0.0/24"),
        30,
        &["10.0.0.0 is the network address of 10.0.0.0/24", "give an unused host address of that network"],
    );
    assert_single(&vip_with("10.0.1.255/23"), 30, &["10.0.1.255 is the broadcast address of 10.0.0.0/23"]);
}

#[test]
fn vip_interface_name_is_checked() {
    assert_single(
        &resource(
            "type = \"vip\"\naddress = \"10.0.0.100/24\"\ninterface = { alpha = \"eth0\", beta = \"a-very-long-interface\" }",
        ),
        30,
        &["\"a-very-long-interface\" is not an interface name (1 to 15 characters"],
    );
}

// ---- other kinds of mistakes ----

#[test]
fn mount_of_a_disk_listed_after_it_is_reported_at_the_mount() {
    let text = group(
        r#"[[group.resource]]
name = "ip"
type = "vip"
address = "10.0.0.100/24"
interface = "eth0"

[[group.resource]]
name = "fs"
type = "mount"
device = "/dev/vdb"
directory = "/srv"
fstype = "ext4"

[[group.resource]]
name = "data"
type = "disk"
device = "/dev/vdb""#,
    );
    assert_single(
        &text,
        33,
        &[
            "mount `fs` uses the device of disk `data`, which comes after it",
            "list the disk first",
            "(vip → mount → disk)",
        ],
    );
}

#[test]
fn mount_and_process_details_are_checked() {
    assert_single(
        &resource("type = \"mount\"\ndevice = \"/dev/vdb\"\ndirectory = \"/\"\nfstype = \"ext4\""),
        30,
        &["directory cannot be /"],
    );
    assert_single(
        &resource(
            "type = \"mount\"\ndevice = \"/dev/vdb\"\ndirectory = \"/srv\"\nfstype = \"ext4\"\noptions = \"noatime, nodev\"",
        ),
        32,
        &["options are comma-separated mount options without spaces"],
    );
    assert_single(
        &resource("type = \"process\"\ncommand = [\"/usr/bin/app\"]\nenv = { TAKEOVER_NODE = \"x\" }"),
        30,
        &["env TAKEOVER_NODE is set by takeover", "remove it"],
    );
    assert_single(
        &resource("type = \"process\"\ncommand = [\"/usr/bin/app\"]\nlog = \"app.log\""),
        30,
        &["log \"app.log\" is not an absolute path"],
    );
}

#[test]
fn every_resource_error_of_a_file_is_reported() {
    let text = group(
        r#"failback = "sometimes"

[[group.resource]]
name = "ip"
type = "vip"
address = "10.0.0.100"
interface = { alpha = "eth0" }

[[group.resource]]
name = "app"
type = "process"
monitor_interval = "often""#,
    );
    let errors = errors_of(&text);
    let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [26, 31, 32, 36, 37], "{errors:#?}");
    assert!(errors[2].message.contains("not for `beta`"));
    assert!(errors[3].message.contains("needs `command`"));
}
