//! The `[[group]]` tables the resource tests and the fault campaign run: a full service
//! on a shared disk (disk, mount, virtual IP, probe service) and a light one (virtual IP
//! and probe service), with their addresses.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;

use super::shared::SharedDisk;

/// The probe service's port (group `n` of a bed listens on `PORT + n` where several run).
pub const PORT: u16 = 7000;

/// The virtual IP of group `n` in a bed of `slot`, on the nodes' link 0.
pub fn vip(slot: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 2 * slot, 100 + n)
}

/// The `[[group]]` of a full service: disk, filesystem, address, process (in this order).
pub fn web_group(
    name: &str,
    nodes: [&str; 2],
    disk: &SharedDisk,
    dir: &Path,
    slot: u8,
    extra: &str,
    app_extra: &str,
) -> String {
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
{app_extra}
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

/// A group of an address (`vip(slot, n)`) and the probe service on `port`, keeping its
/// answers in a node-local directory: for tests about which group moves, not about data.
pub fn light_group(name: &str, nodes: &[&str], dir: &Path, slot: u8, n: u8, port: u16, extra: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_takeover");
    let list: Vec<String> = nodes.iter().map(|it| format!("{it:?}")).collect();
    format!(
        r#"
[[group]]
name = "{name}"
nodes = [{list}]
{extra}
[[group.resource]]
name = "ip"
type = "vip"
address = "{vip}/24"
interface = "eth0"
monitor_interval = "1s"

[[group.resource]]
name = "app"
type = "process"
command = ["{binary}", "probe-app", "--port", "{port}", "--data", "{dir}/{{node}}/{name}", "--record", "{dir}/{name}-records.log"]
monitor_interval = "500ms"
stop_timeout = "4s"
"#,
        list = list.join(", "),
        vip = vip(slot, n),
        dir = dir.display(),
    )
}
