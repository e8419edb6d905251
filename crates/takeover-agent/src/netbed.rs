//! A network-namespace test bed: the root-only sibling of [`crate::localnet`].
//!
//! [`Netbed::create`] builds, for a short `prefix` and a `slot`:
//!
//! ```text
//!   namespace {prefix}-b0                                   namespace {prefix}-b1
//!   bridge {prefix}-br                                       bridge {prefix}-br
//!     port {prefix}-0-0 ══ eth0 [{prefix}-{node0}] eth1 ══ port {prefix}-0-1
//!     port {prefix}-1-0 ══ eth0 [{prefix}-{node1}] eth1 ══ port {prefix}-1-1
//!     port {prefix}-c-0 ══ eth0 [{prefix}-c]  (the client: link 0 only)
//! ```
//!
//! - One namespace per node (`{prefix}-{node}`), one for the client (`{prefix}-c`) and one
//!   per link (`{prefix}-b0`, `{prefix}-b1`) holding a Linux bridge. The veth pairs are
//!   created directly between a bridge namespace and a node namespace, so nothing ever
//!   lands in the host namespace. Every node has `eth0` on link 0 and `eth1` on link 1;
//!   the client has `eth0` on link 0 only.
//! - Addresses: link `k` of node `i` (its index in `nodes`) is `10.200.{2*slot+k}.{10+i}/24`,
//!   the client is `10.200.{2*slot}.9/24`; beds with different slots never collide.
//!   `lo` is up everywhere, IPv6 is off in every namespace of the bed, unless the bed was
//!   made with [`Netbed::create_ipv6`]: then IPv6 is on in the node and client namespaces
//!   (link-local addresses only; tests add their own) and still off in the bridge ones.
//! - Power-off ([`Netbed::power_off`]): the node's links go down on both ends, then every
//!   process of the node's namespace is SIGKILLed, scan after scan (the scan
//!   `ip netns pids` does, done in-process: `/proc/*/ns/net` against `/run/netns/NS`),
//!   until none is left. Each kill goes through a pidfd checked after opening, so a
//!   reused pid is never signalled. A process that moved itself into another namespace
//!   with `setns` would escape; nothing of takeover does that.
//! - Partitions ([`Netbed::partition_full`], [`Netbed::partition_one_way`],
//!   [`Netbed::cut_link`], [`Netbed::flap_link`], [`Netbed::heal`]) are stateless
//!   nftables rules in one `inet` table named `{prefix}` per namespace, rebuilt atomically
//!   (`nft -f`) from the bed's rule set at every change. ARP still passes; IP does not.
//! - Pauses ([`Netbed::pause`], [`Netbed::resume`]): SIGSTOP and SIGCONT.
//! - The test fence agent ([`fence_agent_main`]) speaks the fence-agents stdin protocol and
//!   powers a node off exactly like [`Netbed::power_off`], from the state file the bed
//!   writes ([`Netbed::state_file`]: `$TMPDIR/{prefix}-netbed.json`, a [`BedState`]).
//! - Probes: [`Netbed::udp_socket`] makes a socket inside a namespace (from a thread
//!   that joined it), [`Netbed::udp_reaches`] checks one direction,
//!   [`Netbed::ping`] a round trip (UDP echo; no `ping` binary needed).
//!
//! Everything is synchronous (`std::process`, `std::thread`): a call returns when the
//! change is in effect. From async code, call it from `spawn_blocking`. A flapping link is
//! the only background activity: one thread per flapping link, stopped by
//! [`Netbed::heal`] and on drop.
//!
//! Clean-up: the bed records every namespace it created; [`Netbed::destroy`] and `Drop`
//! (also while unwinding from a panic) kill every process still in them by pid, delete the
//! nftables tables and the namespaces, and remove the state file. A run killed outright
//! (SIGKILL) leaves them behind: [`Netbed::cleanup_stale`] removes every namespace named
//! `{prefix}-*`.
//!
//! Commands in a namespace are started with `setns(CLONE_NEWNET)` in the child before
//! `exec` (not `ip netns exec`), so `/sys` is still the host's and `/etc/netns` is not
//! applied. Needs root, `ip` (iproute2) and `nft` (nftables).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::fence::kill_verified;
use crate::service::{GROUP_POLL, ProcStat, proc_pids};

/// Links per node.
pub const LINKS: u8 = 2;

/// The name under which the client is addressed where a member of the bed is expected
/// ([`Netbed::exec`], [`Netbed::spawn`], partitions, probes). No node may be called so.
pub const CLIENT: &str = "client";

/// How long a power-off may take to find the namespace empty.
pub const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Longest prefix: `{prefix}-{index}-{link}` must fit an interface name (15 bytes).
pub const MAX_PREFIX: usize = 6;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// How long a probe waits for an answer before sending again.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// The state file
// ---------------------------------------------------------------------------------------

/// What a bed consists of; written as JSON to [`Netbed::state_file`] for the fence agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BedState {
    pub prefix: String,
    pub slot: u8,
    /// Node name → its namespace and links.
    pub nodes: BTreeMap<String, MemberState>,
    pub client: MemberState,
    /// The bridge namespace of each link, by link.
    pub bridges: Vec<String>,
}

/// A node's (or the client's) namespace and links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub namespace: String,
    pub links: Vec<LinkState>,
    /// Filesystems on a shared disk that this node may mount (its mount points): a power-off
    /// stops their I/O at once, as a dead machine's would, and takes them off the host.
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
}

/// One link of a member: a veth pair between its namespace and a bridge namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub link: u8,
    /// The interface in the member's namespace (`eth{link}`).
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub bridge_namespace: String,
    /// The other end of the pair, a port of the bridge.
    pub bridge_ifname: String,
}

impl BedState {
    /// Reads a state file written by [`Netbed::create`].
    pub fn load(path: &Path) -> anyhow::Result<BedState> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read test bed state {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("test bed state {} is not valid", path.display()))
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    }

    /// A node, or the client under [`CLIENT`].
    pub fn member(&self, name: &str) -> anyhow::Result<&MemberState> {
        if name == CLIENT {
            return Ok(&self.client);
        }
        self.nodes.get(name).ok_or_else(|| {
            anyhow!(
                "no node {name:?} in test bed {} (nodes: {}; the client is {CLIENT:?})",
                self.prefix,
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn link(&self, name: &str, link: u8) -> anyhow::Result<&LinkState> {
        let member = self.member(name)?;
        member.links.iter().find(|it| it.link == link).ok_or_else(|| anyhow!("{name} has no link {link}"))
    }

    /// Every namespace of the bed, in creation order.
    fn namespaces(&self) -> Vec<String> {
        let mut all = self.bridges.clone();
        all.extend(self.nodes.values().map(|it| it.namespace.clone()));
        all.push(self.client.namespace.clone());
        all
    }
}

fn validate_prefix(prefix: &str) -> anyhow::Result<()> {
    let ok = (2..=MAX_PREFIX).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        bail!(
            "test bed prefix {prefix:?} must be 2 to {MAX_PREFIX} characters, a lowercase letter and then lowercase \
             letters or digits (interface names are at most 15 bytes; no '-', so prefixes never overlap)"
        );
    }
    Ok(())
}

/// Names and addresses of a bed, checked, before anything is created.
fn plan(prefix: &str, nodes: &[&str], slot: u8) -> anyhow::Result<BedState> {
    validate_prefix(prefix)?;
    if slot > 127 {
        bail!("test bed slot {slot} is out of range: link k uses 10.200.(2*slot+k).0/24, so slot must be at most 127");
    }
    if nodes.is_empty() || nodes.len() > 200 {
        bail!("a test bed needs 1 to 200 nodes, not {}", nodes.len());
    }
    let mut seen = BTreeSet::new();
    for node in nodes {
        let ok = !node.is_empty()
            && node.len() <= 32
            && node.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            bail!("node name {node:?} must be 1 to 32 lowercase letters, digits or '_'");
        }
        if ["c", "b0", "b1", CLIENT].contains(node) {
            bail!("node name {node:?} is reserved (the client and bridge namespaces use it)");
        }
        if !seen.insert(*node) {
            bail!("node {node:?} is listed twice");
        }
    }
    let bridges: Vec<String> = (0..LINKS).map(|k| format!("{prefix}-b{k}")).collect();
    let subnet = |k: u8| 2 * slot + k;
    let mut planned = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let links = (0..LINKS)
            .map(|k| LinkState {
                link: k,
                ifname: format!("eth{k}"),
                addr: Ipv4Addr::new(10, 200, subnet(k), 10 + i as u8),
                bridge_namespace: bridges[k as usize].clone(),
                bridge_ifname: format!("{prefix}-{i}-{k}"),
            })
            .collect();
        planned.insert(node.to_string(), MemberState { namespace: format!("{prefix}-{node}"), links, mounts: vec![] });
    }
    let client = MemberState {
        namespace: format!("{prefix}-c"),
        links: vec![LinkState {
            link: 0,
            ifname: "eth0".into(),
            addr: Ipv4Addr::new(10, 200, subnet(0), 9),
            bridge_namespace: bridges[0].clone(),
            bridge_ifname: format!("{prefix}-c-0"),
        }],
        mounts: vec![],
    };
    Ok(BedState { prefix: prefix.to_string(), slot, nodes: planned, client, bridges })
}

fn state_file_path(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-netbed.json"))
}

// ---------------------------------------------------------------------------------------
// Commands and namespaces
// ---------------------------------------------------------------------------------------

fn show(argv: &[impl AsRef<OsStr>]) -> String {
    argv.iter().map(|it| it.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

fn check_output(what: &str, output: Output) -> anyhow::Result<Output> {
    if !output.status.success() {
        bail!("`{what}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

/// `ip ARGS...`, checked. `ip -n NS` joins that namespace, so a power-off of it (the test's
/// or a fence's) may SIGKILL it midway: then it runs again (what it does is idempotent).
fn ip(args: &[&str]) -> anyhow::Result<Output> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    for _ in 0..10 {
        let output = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", show(&argv)))?;
        if output.status.signal() == Some(libc::SIGKILL) {
            continue;
        }
        return check_output(&show(&argv), output);
    }
    bail!("`{}` was killed 10 times in a row (a power-off loop in that namespace?)", show(&argv))
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

fn open_netns(ns: &str) -> anyhow::Result<File> {
    File::open(netns_path(ns)).with_context(|| format!("cannot open network namespace {ns} ({NETNS_DIR}/{ns})"))
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that joined network namespace `ns` (a thread's network
/// namespace is its own; the thread ends with `f`). Sockets made there stay in `ns`.
pub fn in_netns<T: Send>(ns: &str, what: &str, f: impl FnOnce() -> io::Result<T> + Send) -> anyhow::Result<T> {
    let file = open_netns(ns)?;
    let joined = thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file)?;
                f()
            })
            .join()
    });
    match joined {
        Ok(result) => result.with_context(|| format!("{what} in network namespace {ns}")),
        Err(_) => bail!("{what} in network namespace {ns}: the thread panicked"),
    }
}

/// Starts `argv` inside namespace `ns` (`setns` in the child before `exec`), optionally
/// as the leader of a new session. `configure` sets up stdio and the environment.
fn spawn_in(
    ns: &str,
    argv: &[impl AsRef<OsStr>],
    new_session: bool,
    configure: impl FnOnce(&mut Command),
) -> anyhow::Result<Child> {
    let Some((program, args)) = argv.split_first() else { bail!("empty command for namespace {ns}") };
    let file = open_netns(ns)?;
    let fd = file.as_raw_fd();
    let mut command = Command::new(program);
    command.args(args);
    configure(&mut command);
    // SAFETY: setns and setsid are async-signal-safe syscalls; the closure allocates
    // nothing and touches no memory of the parent. The fd stays open until spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("cannot start `{}` in network namespace {ns}", show(argv)));
    drop(file);
    child
}

/// Runs `argv` in namespace `ns` with `stdin`, and checks it succeeded.
fn run_in_unchecked(ns: &str, argv: &[&str], stdin: &str) -> anyhow::Result<Output> {
    let mut child = spawn_in(ns, argv, false, |cmd| {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    })?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let written = input.write_all(stdin.as_bytes());
    drop(input);
    let output = child.wait_with_output().with_context(|| format!("waiting for `{}` in {ns}", show(argv)))?;
    // A process killed while it read its input cannot take it all: that is its exit
    // status, not a write error.
    if output.status.signal().is_none() {
        written.with_context(|| format!("cannot write to `{}` in {ns}", show(argv)))?;
    }
    Ok(output)
}

/// `nft -f -` in namespace `ns`. The `nft` process runs inside the namespace, so a
/// power-off of that node (which kills every process there) may kill it too: the script
/// is one transaction and rewrites the bed's whole table, so it is run again.
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    let what = format!("nft -f - (in network namespace {ns})");
    for _ in 0..10 {
        let output = run_in_unchecked(ns, &["nft", "-f", "-"], script)?;
        if output.status.signal() == Some(libc::SIGKILL) {
            continue;
        }
        return check_output(&what, output).map(drop);
    }
    bail!("`{what}` was killed 10 times in a row (a power-off loop in that namespace?)")
}

/// Identity of a network namespace file: (device, inode) of its nsfs inode.
fn netns_id(path: &Path) -> io::Result<(u64, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn in_namespace(pid: i32, id: (u64, u64)) -> bool {
    // Zombies have no namespaces any more: the link cannot be followed.
    matches!(netns_id(Path::new(&format!("/proc/{pid}/ns/net"))), Ok(found) if found == id)
}

/// Live processes (zombies excluded) whose network namespace is `id`, except this one.
fn scan_netns(id: (u64, u64)) -> io::Result<Vec<i32>> {
    let own = std::process::id() as i32;
    let mut live = Vec::new();
    for pid in proc_pids()? {
        if pid != own
            && in_namespace(pid, id)
            && let Ok(Some(st)) = ProcStat::read(pid)
            && !st.is_dead()
        {
            live.push(pid);
        }
    }
    Ok(live)
}

/// The live processes of namespace `ns` (what `ip netns pids` lists, zombies excluded).
pub fn netns_pids(ns: &str) -> anyhow::Result<Vec<i32>> {
    let id = netns_id(&netns_path(ns)).with_context(|| format!("no network namespace {ns}"))?;
    scan_netns(id).context("cannot scan /proc")
}

/// SIGKILLs every process of namespace `ns`, scan after scan, until a scan finds none;
/// gives up after `deadline`. Returns every pid signalled.
fn kill_netns(ns: &str, deadline: Duration) -> anyhow::Result<Vec<i32>> {
    let started = Instant::now();
    let id = netns_id(&netns_path(ns)).with_context(|| format!("no network namespace {ns}"))?;
    let mut killed = BTreeSet::new();
    loop {
        let live = scan_netns(id).context("cannot scan /proc")?;
        if live.is_empty() {
            return Ok(killed.into_iter().collect());
        }
        for &pid in &live {
            let delivered = kill_verified(pid, |st| st.pid == pid && in_namespace(pid, id))
                .with_context(|| format!("cannot SIGKILL {pid} in network namespace {ns}"))?;
            if delivered {
                killed.insert(pid);
            }
            // A process in a frozen cgroup holds its SIGKILL until thawed: an agent killed
            // while it froze a service's cgroup to kill it leaves it so. Power cuts do not
            // wait for thaws, so the bed thaws it.
            crate::resources::process::cgroup::thaw_cgroups_of(pid);
        }
        if started.elapsed() >= deadline {
            bail!("network namespace {ns} still has live processes after {:?}: {live:?}", started.elapsed());
        }
        thread::sleep(GROUP_POLL);
    }
}

/// Sets a member's links up or down, the bridge end first, then its own end.
fn set_links(member: &MemberState, up: bool) -> anyhow::Result<()> {
    let state = if up { "up" } else { "down" };
    for link in &member.links {
        ip(&["-n", &link.bridge_namespace, "link", "set", "dev", &link.bridge_ifname, state])?;
    }
    for link in &member.links {
        ip(&["-n", &member.namespace, "link", "set", "dev", &link.ifname, state])?;
    }
    Ok(())
}

/// The power-off of [`Netbed::power_off`] and the fence agent: links down, then every
/// process of the namespace SIGKILLed until none is left. The kill happens even if
/// setting a link down failed.
fn power_off_member(member: &MemberState, deadline: Duration) -> anyhow::Result<Vec<i32>> {
    let links = set_links(member, false);
    // The node's filesystems stop writing first, with nothing flushed (a power cut), and a
    // dead machine's mounts are gone (all the namespaces share the host's mount table):
    // the same cut the guard makes.
    let cut: Result<Vec<bool>, String> = member.mounts.iter().map(|it| crate::resources::mount::cut_off(it)).collect();
    let killed = kill_netns(&member.namespace, deadline)?;
    cut.map_err(|e| anyhow::anyhow!("power-off: {e}"))?;
    links?;
    Ok(killed)
}

/// On unless every link of the member is administratively down in its namespace.
fn is_on(member: &MemberState) -> anyhow::Result<bool> {
    for link in &member.links {
        let output = ip(&["-n", &member.namespace, "-o", "link", "show", "dev", &link.ifname])?;
        let text = String::from_utf8_lossy(&output.stdout);
        let flags = text.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(flags, _)| flags);
        let Some(flags) = flags else { bail!("unexpected `ip link show` output: {text}") };
        if flags.split(',').any(|it| it == "UP") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes one namespace: its processes, its nftables table `table`, the namespace.
fn remove_netns(ns: &str, table: &str) -> anyhow::Result<()> {
    let killed = kill_netns(ns, KILL_DEADLINE);
    // Creating the table first makes the delete succeed whether or not it existed.
    let tables = nft(ns, &format!("table inet {table}\ndelete table inet {table}\n"));
    ip(&["netns", "delete", ns])?;
    killed?;
    tables
}

/// Namespaces in `/run/netns` named `{prefix}-*`.
fn stale_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_DIR}")),
    };
    let start = format!("{prefix}-");
    let mut found = Vec::new();
    for entry in entries {
        let name = entry.with_context(|| format!("cannot list {NETNS_DIR}"))?.file_name();
        if let Some(name) = name.to_str()
            && name.starts_with(&start)
        {
            found.push(name.to_string());
        }
    }
    found.sort();
    Ok(found)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Partition rules
// ---------------------------------------------------------------------------------------

/// The partitions in force, by member name; the nftables tables are rendered from it.
#[derive(Default)]
struct Rules {
    /// Unordered pairs, stored (smaller, larger).
    full: BTreeSet<(String, String)>,
    /// (from, to): packets from `from` to `to` are dropped.
    one_way: BTreeSet<(String, String)>,
    /// (member, link): everything through that interface is dropped.
    cut: BTreeSet<(String, u8)>,
    /// Namespaces that have a table now.
    tables: BTreeSet<String>,
}

/// What the bed and its flapping threads share.
struct Shared {
    state: BedState,
    rules: Mutex<Rules>,
}

impl Shared {
    fn addr_set(&self, member: &str) -> anyhow::Result<String> {
        let addrs: Vec<String> = self.state.member(member)?.links.iter().map(|it| it.addr.to_string()).collect();
        Ok(format!("{{ {} }}", addrs.join(", ")))
    }

    /// Rewrites `member`'s table from `rules`, atomically; deletes it when empty.
    fn apply(&self, rules: &mut Rules, member: &str) -> anyhow::Result<()> {
        let ns = self.state.member(member)?.namespace.clone();
        let mut input = Vec::new();
        let mut output = Vec::new();
        for (_, link) in rules.cut.iter().filter(|(m, _)| m == member) {
            input.push(format!("iifname \"eth{link}\" drop"));
            output.push(format!("oifname \"eth{link}\" drop"));
        }
        for (a, b) in &rules.full {
            let other = if a == member {
                b
            } else if b == member {
                a
            } else {
                continue;
            };
            input.push(format!("ip saddr {} drop", self.addr_set(other)?));
            output.push(format!("ip daddr {} drop", self.addr_set(other)?));
        }
        for (from, to) in &rules.one_way {
            if from == member {
                output.push(format!("ip daddr {} drop", self.addr_set(to)?));
            }
            if to == member {
                input.push(format!("ip saddr {} drop", self.addr_set(from)?));
            }
        }
        let table = &self.state.prefix;
        if input.is_empty() && output.is_empty() {
            if rules.tables.contains(&ns) {
                // Declared first, so the deletion holds even if the table is already gone
                // (a long campaign hit that, and the heal failed).
                nft(&ns, &format!("table inet {table}\ndelete table inet {table}\n"))?;
                rules.tables.remove(&ns);
            }
            return Ok(());
        }
        let chain = |name: &str, rules: &[String]| {
            let mut out = format!("  chain {name} {{\n    type filter hook {name} priority filter; policy accept;\n");
            for rule in rules {
                out.push_str(&format!("    {rule}\n"));
            }
            out.push_str("  }\n");
            out
        };
        let script = format!(
            "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{}{}}}\n",
            chain("input", &input),
            chain("output", &output)
        );
        nft(&ns, &script)?;
        rules.tables.insert(ns);
        Ok(())
    }

    fn set_cut(&self, member: &str, link: u8, cut: bool) -> anyhow::Result<()> {
        let mut rules = lock(&self.rules);
        let key = (member.to_string(), link);
        let changed = if cut { rules.cut.insert(key) } else { rules.cut.remove(&key) };
        if changed { self.apply(&mut rules, member) } else { Ok(()) }
    }
}

/// A thread flapping one link.
struct Flapper {
    member: String,
    link: u8,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Flapper {
    fn stop(self) -> anyhow::Result<()> {
        let (flag, wake) = &*self.stop;
        *lock(flag) = true;
        wake.notify_all();
        match self.thread.join() {
            Ok(result) => result.with_context(|| format!("flapping link {} of {} failed", self.link, self.member)),
            Err(_) => bail!("the thread flapping link {} of {} panicked", self.link, self.member),
        }
    }
}

/// Cut for the first half of each `period`, up for the second half, until `duration`
/// passed or `stop` is set; the link is left up.
fn flap(
    shared: &Shared,
    member: &str,
    link: u8,
    period: Duration,
    duration: Duration,
    stop: &(Mutex<bool>, Condvar),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let end = started.checked_add(duration);
    let half = period / 2;
    let mut cut = true;
    let mut next = started;
    loop {
        shared.set_cut(member, link, cut)?;
        next += half;
        let until = end.map_or(next, |end| next.min(end));
        let (flag, wake) = stop;
        let mut stopped = lock(flag);
        while !*stopped {
            let now = Instant::now();
            if now >= until {
                break;
            }
            stopped = wake.wait_timeout(stopped, until - now).unwrap_or_else(|it| it.into_inner()).0;
        }
        if *stopped || end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        cut = !cut;
    }
    shared.set_cut(member, link, false)
}

// ---------------------------------------------------------------------------------------
// The bed
// ---------------------------------------------------------------------------------------

/// Nodes and a client in network namespaces on two bridged links; see the module docs.
/// Dropping it removes everything it created.
pub struct Netbed {
    shared: Arc<Shared>,
    nodes: Vec<String>,
    /// Namespaces created so far, in creation order.
    created: Vec<String>,
    state_file: PathBuf,
    flappers: Mutex<Vec<Flapper>>,
    torn_down: bool,
}

impl Netbed {
    /// Builds the bed (see the module docs). Fails if a namespace of that prefix is left
    /// from an earlier run: call [`Netbed::cleanup_stale`] first. On failure, whatever was
    /// created is removed again.
    pub fn create(prefix: &str, nodes: &[&str], slot: u8) -> anyhow::Result<Netbed> {
        Netbed::create_with_mounts(prefix, nodes, slot, false, &BTreeMap::new())
    }

    /// [`Netbed::create`], with IPv6 on in the node and client namespaces (see the module
    /// docs).
    pub fn create_ipv6(prefix: &str, nodes: &[&str], slot: u8) -> anyhow::Result<Netbed> {
        Netbed::create_with_mounts(prefix, nodes, slot, true, &BTreeMap::new())
    }

    /// [`Netbed::create`] (or `create_ipv6`) where a power-off of a node also cuts the
    /// filesystems mounted at its `mounts` (see [`MemberState::mounts`]).
    pub fn create_with_mounts(
        prefix: &str,
        nodes: &[&str],
        slot: u8,
        ipv6: bool,
        mounts: &BTreeMap<String, Vec<PathBuf>>,
    ) -> anyhow::Result<Netbed> {
        let mut state = plan(prefix, nodes, slot)?;
        for (node, paths) in mounts {
            let member = state.nodes.get_mut(node).ok_or_else(|| anyhow!("no node {node:?} in the bed for mounts"))?;
            member.mounts = paths.clone();
        }
        let leftovers = stale_namespaces(prefix)?;
        if !leftovers.is_empty() {
            bail!(
                "network namespaces {} exist already (an earlier run left them?); call Netbed::cleanup_stale({prefix:?})",
                leftovers.join(", ")
            );
        }
        let mut bed = Netbed {
            shared: Arc::new(Shared { state, rules: Mutex::new(Rules::default()) }),
            nodes: nodes.iter().map(|it| it.to_string()).collect(),
            created: Vec::new(),
            state_file: state_file_path(prefix),
            flappers: Mutex::new(Vec::new()),
            torn_down: false,
        };
        bed.build(ipv6).with_context(|| format!("cannot create test bed {prefix}"))?;
        Ok(bed)
    }

    fn build(&mut self, ipv6: bool) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let state = &shared.state;
        for ns in state.namespaces() {
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let off = !ipv6 || state.bridges.contains(&ns);
            let what = if off { "turning IPv6 off" } else { "turning IPv6 on" };
            in_netns(&ns, what, || {
                for scope in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
                    match fs::write(path, if off { "1" } else { "0" }) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            })?;
            ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        }
        let bridge = format!("{}-br", state.prefix);
        for ns in &state.bridges {
            ip(&["-n", ns, "link", "add", "name", &bridge, "type", "bridge"])?;
            ip(&["-n", ns, "link", "set", "dev", &bridge, "up"])?;
        }
        for member in state.nodes.values().chain([&state.client]) {
            for link in &member.links {
                let (bns, bif) = (&link.bridge_namespace, &link.bridge_ifname);
                ip(&[
                    "-n",
                    bns,
                    "link",
                    "add",
                    "name",
                    bif,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &link.ifname,
                    "netns",
                    &member.namespace,
                ])?;
                ip(&["-n", bns, "link", "set", "dev", bif, "master", &bridge, "up"])?;
                let cidr = format!("{}/24", link.addr);
                ip(&["-n", &member.namespace, "addr", "add", &cidr, "dev", &link.ifname])?;
                ip(&["-n", &member.namespace, "link", "set", "dev", &link.ifname, "up"])?;
            }
        }
        state.save(&self.state_file)
    }

    /// Removes what an earlier run with this prefix left (namespaces `{prefix}-*`, the
    /// processes in them, their nftables tables, the state file). Returns the namespaces
    /// removed.
    pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
        validate_prefix(prefix)?;
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for ns in stale_namespaces(prefix)? {
            match remove_netns(&ns, prefix) {
                Ok(()) => removed.push(ns),
                Err(e) => errors.push(format!("{ns}: {e:#}")),
            }
        }
        match fs::remove_file(state_file_path(prefix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => errors.push(format!("state file: {e}")),
            _ => {}
        }
        if !errors.is_empty() {
            bail!("cleaning up test bed {prefix} failed: {}", errors.join("; "));
        }
        Ok(removed)
    }

    /// Removes everything now, reporting failures (dropping does the same silently,
    /// printing failures to stderr).
    pub fn destroy(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for flapper in lock(&self.flappers).drain(..) {
            if let Err(e) = flapper.stop() {
                errors.push(format!("{e:#}"));
            }
        }
        // Processes first, everywhere, so that nothing runs while the network goes away.
        for ns in &self.created {
            if let Err(e) = kill_netns(ns, KILL_DEADLINE) {
                errors.push(format!("{e:#}"));
            }
        }
        let tables: Vec<String> = std::mem::take(&mut lock(&self.shared.rules).tables).into_iter().collect();
        for ns in tables {
            let table = &self.shared.state.prefix;
            if let Err(e) = nft(&ns, &format!("table inet {table}\ndelete table inet {table}\n")) {
                errors.push(format!("{e:#}"));
            }
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        match fs::remove_file(&self.state_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                errors.push(format!("cannot remove {}: {e}", self.state_file.display()))
            }
            _ => {}
        }
        if !errors.is_empty() {
            bail!("removing test bed {} failed: {}", self.shared.state.prefix, errors.join("; "));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Names and addresses
    // -----------------------------------------------------------------------------------

    pub fn prefix(&self) -> &str {
        &self.shared.state.prefix
    }

    pub fn slot(&self) -> u8 {
        self.shared.state.slot
    }

    /// The node names, in the order given to [`Netbed::create`].
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Everything the bed consists of (the contents of the state file).
    pub fn state(&self) -> &BedState {
        &self.shared.state
    }

    /// The JSON state file for [`fence_agent_main`]; removed with the bed.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// The namespace of a node or of the client ([`CLIENT`]). Panics on an unknown name.
    pub fn namespace(&self, member: &str) -> &str {
        &self.shared.state.member(member).unwrap_or_else(|e| panic!("{e}")).namespace
    }

    /// `10.200.{2*slot+link}.{10+index}`. Panics on an unknown node or link.
    pub fn node_addr(&self, node: &str, link: u8) -> Ipv4Addr {
        assert_ne!(node, CLIENT, "the client's address is client_addr()");
        self.shared.state.link(node, link).unwrap_or_else(|e| panic!("{e}")).addr
    }

    /// `10.200.{2*slot}.9`, on link 0.
    pub fn client_addr(&self) -> Ipv4Addr {
        self.shared.state.client.links[0].addr
    }

    fn member(&self, name: &str) -> anyhow::Result<&MemberState> {
        self.shared.state.member(name)
    }

    fn node(&self, name: &str) -> anyhow::Result<&MemberState> {
        if name == CLIENT {
            bail!("{CLIENT:?} is the client, not a node");
        }
        self.member(name)
    }

    // -----------------------------------------------------------------------------------
    // Processes
    // -----------------------------------------------------------------------------------

    /// Starts `argv` in the namespace of `member` (a node or [`CLIENT`]) as the leader of
    /// a new session, with `env` added to the environment, stdin on `/dev/null` and
    /// stdout and stderr appended to `log_path`. The caller owns the child and reaps it
    /// (`wait`); after [`Netbed::power_off`] it is dead and `wait` returns at once.
    pub fn spawn(
        &self,
        member: &str,
        argv: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
        log_path: &Path,
    ) -> anyhow::Result<Child> {
        let ns = self.member(member)?.namespace.clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open log {}", log_path.display()))?;
        let err = log.try_clone().context("cannot duplicate the log file")?;
        spawn_in(&ns, argv, true, |cmd| {
            cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(log).stderr(err);
        })
    }

    /// [`Netbed::spawn`] in the client's namespace.
    pub fn spawn_client(
        &self,
        argv: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
        log_path: &Path,
    ) -> anyhow::Result<Child> {
        self.spawn(CLIENT, argv, env, log_path)
    }

    /// Runs `argv` to completion in the namespace of `member` (a node or [`CLIENT`]),
    /// stdin on `/dev/null`, and returns its output whatever its exit status. Fails only
    /// if it cannot run.
    pub fn exec(&self, member: &str, argv: &[impl AsRef<OsStr>]) -> anyhow::Result<Output> {
        let ns = self.member(member)?.namespace.clone();
        let child = spawn_in(&ns, argv, false, |cmd| {
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        })?;
        child.wait_with_output().with_context(|| format!("waiting for `{}` in {ns}", show(argv)))
    }

    /// The live processes in the namespace of `member`.
    pub fn pids(&self, member: &str) -> anyhow::Result<Vec<i32>> {
        netns_pids(&self.member(member)?.namespace)
    }

    /// SIGSTOPs `pid` (a process the caller started).
    pub fn pause(&self, pid: u32) -> anyhow::Result<()> {
        signal(pid, Signal::SIGSTOP)
    }

    /// SIGCONTs `pid`.
    pub fn resume(&self, pid: u32) -> anyhow::Result<()> {
        signal(pid, Signal::SIGCONT)
    }

    // -----------------------------------------------------------------------------------
    // Power
    // -----------------------------------------------------------------------------------

    /// Powers `node` off: both ends of its links down (it is unreachable), then every
    /// process of its namespace SIGKILLed until a scan finds none (at most
    /// [`KILL_DEADLINE`]). Returns the pids killed. Children the caller owns are dead
    /// but theirs to reap.
    pub fn power_off(&self, node: &str) -> anyhow::Result<Vec<i32>> {
        let member = self.node(node)?;
        power_off_member(member, KILL_DEADLINE).with_context(|| format!("cannot power off {node}"))
    }

    /// Sets `node`'s links up again; the caller restarts its processes.
    pub fn power_on(&self, node: &str) -> anyhow::Result<()> {
        set_links(self.node(node)?, true).with_context(|| format!("cannot power on {node}"))
    }

    /// Whether `node`'s links are up (what the fence agent's `status` reports).
    pub fn is_powered_on(&self, node: &str) -> anyhow::Result<bool> {
        is_on(self.node(node)?)
    }

    // -----------------------------------------------------------------------------------
    // Partitions
    // -----------------------------------------------------------------------------------

    fn change(&self, members: &[&str], edit: impl FnOnce(&mut Rules)) -> anyhow::Result<()> {
        for member in members {
            self.member(member)?;
        }
        let mut rules = lock(&self.shared.rules);
        edit(&mut rules);
        for member in members {
            self.shared.apply(&mut rules, member)?;
        }
        Ok(())
    }

    /// Nothing passes between `a` and `b`, either way, on any link.
    pub fn partition_full(&self, a: &str, b: &str) -> anyhow::Result<()> {
        if a == b {
            bail!("cannot partition {a} from itself");
        }
        let pair = if a < b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        self.change(&[a, b], |rules| {
            rules.full.insert(pair);
        })
        .with_context(|| format!("cannot partition {a} from {b}"))
    }

    /// Packets from `from` to `to` are dropped on every link; packets from `to` to `from`
    /// still pass (no connection tracking: a reply is just a packet).
    pub fn partition_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        if from == to {
            bail!("cannot partition {from} from itself");
        }
        self.change(&[from, to], |rules| {
            rules.one_way.insert((from.to_string(), to.to_string()));
        })
        .with_context(|| format!("cannot drop packets from {from} to {to}"))
    }

    /// Link `link` of `member` drops every IP packet, both ways.
    pub fn cut_link(&self, member: &str, link: u8) -> anyhow::Result<()> {
        self.shared.state.link(member, link)?;
        self.shared.set_cut(member, link, true).with_context(|| format!("cannot cut link {link} of {member}"))
    }

    /// Undoes [`Netbed::cut_link`].
    pub fn restore_link(&self, member: &str, link: u8) -> anyhow::Result<()> {
        self.shared.state.link(member, link)?;
        self.shared.set_cut(member, link, false).with_context(|| format!("cannot restore link {link} of {member}"))
    }

    /// Whether link `link` of `member` is cut right now (by [`Netbed::cut_link`] or a
    /// flapping thread).
    pub fn link_cut(&self, member: &str, link: u8) -> bool {
        lock(&self.shared.rules).cut.contains(&(member.to_string(), link))
    }

    /// Flaps link `link` of `member` on a background thread: cut for the first half of
    /// every `period`, up for the second half, for `duration` (`Duration::MAX`: until
    /// [`Netbed::heal`] or drop); then the link is left up.
    pub fn flap_link(&self, member: &str, link: u8, period: Duration, duration: Duration) -> anyhow::Result<()> {
        self.shared.state.link(member, link)?;
        if period < Duration::from_millis(2) {
            bail!("flapping period {period:?} is too short");
        }
        let mut flappers = lock(&self.flappers);
        if flappers.iter().any(|it| it.member == member && it.link == link && !it.thread.is_finished()) {
            bail!("link {link} of {member} is flapping already");
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (shared, thread_stop, name) = (self.shared.clone(), stop.clone(), member.to_string());
        let thread = thread::Builder::new()
            .name(format!("{}-flap-{member}-{link}", self.prefix()))
            .spawn(move || flap(&shared, &name, link, period, duration, &thread_stop))
            .context("cannot start the flapping thread")?;
        flappers.push(Flapper { member: member.to_string(), link, stop, thread });
        Ok(())
    }

    /// Whether link `link` of `member` is still flapping.
    pub fn flapping(&self, member: &str, link: u8) -> bool {
        lock(&self.flappers).iter().any(|it| it.member == member && it.link == link && !it.thread.is_finished())
    }

    /// Stops every flapping link and removes every partition rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        let flappers: Vec<Flapper> = lock(&self.flappers).drain(..).collect();
        for flapper in flappers {
            if let Err(e) = flapper.stop() {
                errors.push(format!("{e:#}"));
            }
        }
        let mut rules = lock(&self.shared.rules);
        rules.full.clear();
        rules.one_way.clear();
        rules.cut.clear();
        let members: Vec<String> = self.shared.state.nodes.keys().cloned().chain([CLIENT.to_string()]).collect();
        for member in members {
            if let Err(e) = self.shared.apply(&mut rules, &member) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("healing test bed {} failed: {}", self.prefix(), errors.join("; "));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Probes
    // -----------------------------------------------------------------------------------

    /// A UDP socket made in `member`'s namespace, bound to its address on `link`, port 0.
    pub fn udp_socket(&self, member: &str, link: u8) -> anyhow::Result<UdpSocket> {
        let addr = self.shared.state.link(member, link)?.addr;
        let ns = self.member(member)?.namespace.clone();
        in_netns(&ns, &format!("binding UDP {addr}"), move || UdpSocket::bind(SocketAddrV4::new(addr, 0)))
    }

    /// Whether a datagram from `from`'s address on `link` reaches `to`'s address on
    /// `link` within `within` (one is sent every 20 ms until one arrives).
    pub fn udp_reaches(&self, from: &str, to: &str, link: u8, within: Duration) -> anyhow::Result<bool> {
        let rx = self.udp_socket(to, link)?;
        let tx = self.udp_socket(from, link)?;
        let target = rx.local_addr()?;
        rx.set_read_timeout(Some(PROBE_INTERVAL))?;
        let token = probe_token();
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 128];
        loop {
            // A send error (EPERM from an output drop rule, a link down) is a lost probe.
            let _ = tx.send_to(token.as_bytes(), target);
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == *token.as_bytes() => return Ok(true),
                    Ok(_) => {}
                    // A signal interrupts a receive with a timeout even under SA_RESTART.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                    Err(e) => return Err(e).context("UDP probe receive"),
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// A UDP ping on `link`: whether a datagram from `from` to `to` and its echo back
    /// both arrive within `within`.
    pub fn ping(&self, from: &str, to: &str, link: u8, within: Duration) -> anyhow::Result<bool> {
        let echo = self.udp_socket(to, link)?;
        let tx = self.udp_socket(from, link)?;
        let target = echo.local_addr()?;
        echo.set_read_timeout(Some(PROBE_INTERVAL))?;
        tx.set_read_timeout(Some(PROBE_INTERVAL))?;
        let stop = AtomicBool::new(false);
        let token = probe_token();
        thread::scope(|scope| {
            scope.spawn(|| {
                let mut buf = [0u8; 128];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, peer)) = echo.recv_from(&mut buf) {
                        let _ = echo.send_to(&buf[..n], peer);
                    }
                }
            });
            let deadline = Instant::now() + within;
            let mut buf = [0u8; 128];
            let result = loop {
                let _ = tx.send_to(token.as_bytes(), target);
                let answered = loop {
                    match tx.recv_from(&mut buf) {
                        Ok((n, _)) if buf[..n] == *token.as_bytes() => break Ok(true),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            break Ok(false);
                        }
                        Err(e) => break Err(anyhow::Error::from(e).context("UDP ping receive")),
                    }
                };
                match answered {
                    Ok(false) if Instant::now() < deadline => {}
                    other => break other,
                }
            };
            stop.store(true, Ordering::SeqCst);
            result
        })
    }
}

impl Drop for Netbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("netbed: {e:#}");
        }
    }
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    if raw < 2 || raw == std::process::id() as i32 {
        bail!("refusing to send {sig} to pid {pid}");
    }
    kill(Pid::from_raw(raw), sig).with_context(|| format!("cannot send {sig} to {pid}"))
}

fn probe_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("takeover-netbed-probe {} {}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// The test fence agent
// ---------------------------------------------------------------------------------------

const METADATA: &str = r#"<?xml version="1.0" ?>
<resource-agent name="fence_takeover_netns" shortdesc="Fence agent for takeover's network-namespace test bed">
<longdesc>Powers a node of a takeover test bed off: its links go down and every process of its network namespace is SIGKILLed. "on" sets the links up again; processes are not restarted.</longdesc>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="reboot" />
		<shortdesc lang="en">Fencing action</shortdesc>
	</parameter>
	<parameter name="port" unique="0" required="1">
		<getopt mixed="-n, --plug=[name]" />
		<content type="string" />
		<shortdesc lang="en">The node to fence (plug is an alias)</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="on" automatic="0"/>
	<action name="off" />
	<action name="reboot" />
	<action name="status" />
	<action name="list" />
	<action name="monitor" />
	<action name="metadata" />
</actions>
</resource-agent>
"#;

/// The test fence agent, for `takeover fence-netns --bed FILE`: reads a fence-agents
/// request from `stdin` (lines `key=value`; `#` comments; `action=` (alias `option=`),
/// default `reboot`; the node in `port=`, `plug=` or `nodename=`; other keys ignored),
/// acts on the bed described by `bed_state_file`, writes to stdout and stderr and
/// returns the exit code:
///
/// - `off`: power off exactly as [`Netbed::power_off`]; `on`: links up; `reboot`: both.
///   0 on success, 1 on failure.
/// - `status`: 0 if the node's links are up, 2 if it is off, 1 on failure.
/// - `monitor`: 0 if every node's namespace exists; `list`: `node,namespace` lines;
///   `metadata`: the agent's XML description.
pub fn fence_agent_main(stdin: impl Read, bed_state_file: &Path) -> i32 {
    fence_agent(stdin, bed_state_file, &mut io::stdout().lock(), &mut io::stderr().lock())
}

/// [`fence_agent_main`] with its output streams given.
pub fn fence_agent(stdin: impl Read, bed_state_file: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match fence_agent_request(stdin, bed_state_file, out) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "fence-netns: {e:#}");
            1
        }
    }
}

fn fence_agent_request(stdin: impl Read, bed_state_file: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mut text = String::new();
    stdin.take(1 << 16).read_to_string(&mut text).context("cannot read the request from stdin")?;
    let (mut action, mut port, mut nodename) = (None, None, None);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("stdin line {}: expected key=value, got {line:?}", number + 1);
        };
        let value = value.trim().to_string();
        match key.trim() {
            "action" | "option" => action = Some(value),
            "port" | "plug" => port = Some(value),
            "nodename" => nodename = Some(value),
            _ => {}
        }
    }
    let action = action.unwrap_or_else(|| "reboot".into());
    if action == "metadata" {
        out.write_all(METADATA.as_bytes())?;
        return Ok(0);
    }
    let state = BedState::load(bed_state_file)?;
    match action.as_str() {
        "list" => {
            for (name, node) in &state.nodes {
                writeln!(out, "{name},{}", node.namespace)?;
            }
            Ok(0)
        }
        "monitor" => {
            let missing: Vec<&str> =
                state.nodes.values().map(|it| it.namespace.as_str()).filter(|ns| !netns_exists(ns)).collect();
            if !missing.is_empty() {
                bail!("network namespaces missing: {}", missing.join(", "));
            }
            Ok(0)
        }
        "off" | "on" | "reboot" | "status" => {
            let Some(name) = port.or(nodename) else {
                bail!("action {action}: no port= (or plug=, nodename=) names the node");
            };
            let node = state.nodes.get(&name).ok_or_else(|| {
                anyhow!(
                    "no node {name:?} in test bed {} (nodes: {})",
                    state.prefix,
                    state.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            if !netns_exists(&node.namespace) {
                bail!("network namespace {} of {name} does not exist", node.namespace);
            }
            match action.as_str() {
                "status" => {
                    let on = is_on(node)?;
                    writeln!(out, "Status: {}", if on { "ON" } else { "OFF" })?;
                    Ok(if on { 0 } else { 2 })
                }
                "off" => {
                    power_off_member(node, KILL_DEADLINE).with_context(|| format!("cannot power off {name}"))?;
                    writeln!(out, "Success: Powered OFF")?;
                    Ok(0)
                }
                "on" => {
                    set_links(node, true).with_context(|| format!("cannot power on {name}"))?;
                    writeln!(out, "Success: Powered ON")?;
                    Ok(0)
                }
                _ => {
                    power_off_member(node, KILL_DEADLINE).with_context(|| format!("cannot power off {name}"))?;
                    set_links(node, true).with_context(|| format!("cannot power on {name}"))?;
                    writeln!(out, "Success: Rebooted")?;
                    Ok(0)
                }
            }
        }
        other => bail!("unknown action {other:?} (off, on, reboot, status, monitor, list, metadata)"),
    }
}

#[cfg(test)]
mod tests {
    //! Root only: without root each test prints `SKIPPED (needs root): NAME` and passes,
    //! unless `CI=true`, where a skip fails. Every test has its own prefix and slot, so
    //! they run in parallel.

    use super::*;
    use crate::service::testutil::{alive, poll_until, starttime};
    use std::os::unix::process::ExitStatusExt;

    /// Deadline for what must happen.
    const T: Duration = Duration::from_secs(10);
    /// How long a probe must go unanswered to count as blocked.
    const BLOCKED: Duration = Duration::from_millis(300);

    use crate::service::testutil::root_or_skip;

    /// A fresh bed with nodes `a` and `b`, or `None` (skipped) without root.
    fn bed(name: &str, prefix: &str, slot: u8) -> Option<Netbed> {
        if !root_or_skip(name) {
            return None;
        }
        Netbed::cleanup_stale(prefix).unwrap();
        Some(Netbed::create(prefix, &["a", "b"], slot).unwrap())
    }

    /// Destroys the bed and checks nothing of it is left.
    fn finish(bed: Netbed) {
        let prefix = bed.prefix().to_string();
        bed.destroy().unwrap();
        assert_eq!(stale_namespaces(&prefix).unwrap(), Vec::<String>::new());
        let listed = ip(&["netns", "list"]).unwrap();
        assert!(!String::from_utf8_lossy(&listed.stdout).contains(&format!("{prefix}-")));
        assert!(!state_file_path(&prefix).exists());
    }

    fn reaches(bed: &Netbed, from: &str, to: &str, link: u8) -> bool {
        bed.udp_reaches(from, to, link, T).unwrap()
    }

    fn blocked(bed: &Netbed, from: &str, to: &str, link: u8) -> bool {
        !bed.udp_reaches(from, to, link, BLOCKED).unwrap()
    }

    fn pings(bed: &Netbed, from: &str, to: &str, link: u8) -> bool {
        bed.ping(from, to, link, T).unwrap()
    }

    fn ping_fails(bed: &Netbed, from: &str, to: &str, link: u8) -> bool {
        !bed.ping(from, to, link, BLOCKED).unwrap()
    }

    fn all_ping(bed: &Netbed) {
        for link in 0..LINKS {
            assert!(pings(bed, "a", "b", link), "a -> b on link {link}");
            assert!(pings(bed, "b", "a", link), "b -> a on link {link}");
        }
    }

    fn killed_by_sigkill(child: &mut Child) -> bool {
        child.wait().unwrap().signal() == Some(libc::SIGKILL)
    }

    #[test]
    fn plan_checks_names_and_computes_addresses() {
        let state = plan("nbx", &["a", "b"], 5).unwrap();
        let addr = |node: &str, link| state.link(node, link).unwrap().addr;
        assert_eq!(addr("a", 0), Ipv4Addr::new(10, 200, 10, 10));
        assert_eq!(addr("a", 1), Ipv4Addr::new(10, 200, 11, 10));
        assert_eq!(addr("b", 1), Ipv4Addr::new(10, 200, 11, 11));
        assert_eq!(addr(CLIENT, 0), Ipv4Addr::new(10, 200, 10, 9));
        assert!(state.link(CLIENT, 1).is_err());
        assert_eq!(state.member("a").unwrap().namespace, "nbx-a");
        assert_eq!(state.client.namespace, "nbx-c");
        assert_eq!(state.bridges, ["nbx-b0", "nbx-b1"]);
        assert_eq!(state.link("b", 1).unwrap().bridge_ifname, "nbx-1-1");
        assert_eq!(state.link("b", 1).unwrap().bridge_namespace, "nbx-b1");

        // The longest names still fit an interface name.
        let names: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = names.iter().map(|it| it.as_str()).collect();
        let big = plan("abcdef", &names, 127).unwrap();
        for member in big.nodes.values().chain([&big.client]) {
            for link in &member.links {
                assert!(link.bridge_ifname.len() <= 15, "{}", link.bridge_ifname);
            }
        }
        assert_eq!(big.link("n199", 1).unwrap().addr, Ipv4Addr::new(10, 200, 255, 209));

        for prefix in ["abcdefg", "a", "Nb", "n-b", "1nb", ""] {
            assert!(plan(prefix, &["a"], 0).is_err(), "{prefix:?}");
        }
        for nodes in [&["client"][..], &["c"], &["b0"], &["a", "a"], &["A"], &["a-b"], &[]] {
            assert!(plan("nb", nodes, 0).is_err(), "{nodes:?}");
        }
        let err = plan("nb", &["a"], 128).unwrap_err().to_string();
        assert!(err.contains("slot"), "{err}");
        assert!(Netbed::create("toolong", &["a"], 0).is_err());
        assert!(Netbed::cleanup_stale("a-b").is_err());
    }

    #[test]
    fn nodes_reach_each_other_over_both_links() {
        let Some(bed) = bed("nodes_reach_each_other_over_both_links", "nbrch", 10) else { return };
        assert_eq!(bed.node_addr("a", 0), Ipv4Addr::new(10, 200, 20, 10));
        assert_eq!(bed.node_addr("b", 1), Ipv4Addr::new(10, 200, 21, 11));
        assert_eq!(bed.client_addr(), Ipv4Addr::new(10, 200, 20, 9));
        assert_eq!(bed.namespace("a"), "nbrch-a");
        assert_eq!(bed.namespace(CLIENT), "nbrch-c");
        all_ping(&bed);
        assert!(pings(&bed, CLIENT, "a", 0));
        assert!(pings(&bed, "b", CLIENT, 0));

        // Each node has its two addresses, IPv6 is off, and nothing is in the host
        // namespace.
        let out = bed.exec("a", &["ip", "-o", "addr", "show"]).unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("eth0    inet 10.200.20.10/24"), "{text}");
        assert!(text.contains("eth1    inet 10.200.21.10/24"), "{text}");
        assert!(!text.contains("inet6"), "{text}");
        let out = bed.exec("nbrch-b0-is-not-a-member", &["true"]);
        assert!(out.is_err());
        let host = ip(&["-o", "link", "show"]).unwrap();
        assert!(!String::from_utf8_lossy(&host.stdout).contains("nbrch"));
        assert_eq!(&BedState::load(bed.state_file()).unwrap(), bed.state());
        finish(bed);
    }

    #[test]
    fn full_partition_blocks_both_links_both_ways() {
        let Some(bed) = bed("full_partition_blocks_both_links_both_ways", "nbfull", 11) else { return };
        all_ping(&bed);
        bed.partition_full("a", "b").unwrap();
        for link in 0..LINKS {
            assert!(blocked(&bed, "a", "b", link), "a -> b on link {link}");
            assert!(blocked(&bed, "b", "a", link), "b -> a on link {link}");
        }
        // Only a and b are cut from each other.
        assert!(pings(&bed, CLIENT, "a", 0));
        assert!(pings(&bed, CLIENT, "b", 0));
        bed.heal().unwrap();
        all_ping(&bed);
        finish(bed);
    }

    #[test]
    fn one_way_partition_blocks_one_direction() {
        let Some(bed) = bed("one_way_partition_blocks_one_direction", "nbone", 12) else { return };
        all_ping(&bed);
        bed.partition_one_way("a", "b").unwrap();
        for link in 0..LINKS {
            assert!(blocked(&bed, "a", "b", link), "a -> b on link {link}");
            assert!(reaches(&bed, "b", "a", link), "b -> a on link {link}");
            // A round trip needs both directions.
            assert!(ping_fails(&bed, "b", "a", link));
        }
        assert!(pings(&bed, CLIENT, "b", 0));
        bed.heal().unwrap();
        all_ping(&bed);
        finish(bed);
    }

    #[test]
    fn cut_link_blocks_that_link_only() {
        let Some(bed) = bed("cut_link_blocks_that_link_only", "nbcut", 13) else { return };
        all_ping(&bed);
        bed.cut_link("a", 0).unwrap();
        assert!(bed.link_cut("a", 0));
        assert!(blocked(&bed, "a", "b", 0));
        assert!(blocked(&bed, "b", "a", 0));
        assert!(blocked(&bed, CLIENT, "a", 0));
        assert!(pings(&bed, "a", "b", 1));
        assert!(pings(&bed, "b", "a", 1));
        assert!(pings(&bed, CLIENT, "b", 0));
        bed.restore_link("a", 0).unwrap();
        assert!(!bed.link_cut("a", 0));
        all_ping(&bed);
        assert!(bed.cut_link("a", 2).is_err());
        assert!(bed.cut_link("zz", 0).is_err());
        bed.cut_link("b", 1).unwrap();
        assert!(blocked(&bed, "a", "b", 1));
        assert!(pings(&bed, "a", "b", 0));
        bed.heal().unwrap();
        all_ping(&bed);
        finish(bed);
    }

    #[test]
    fn flapping_link_toggles() {
        let Some(bed) = bed("flapping_link_toggles", "nbflap", 14) else { return };
        all_ping(&bed);
        let period = Duration::from_millis(400);
        bed.flap_link("a", 0, period, Duration::MAX).unwrap();
        assert!(bed.flapping("a", 0));
        assert!(bed.flap_link("a", 0, period, Duration::MAX).is_err());

        // A probe every 5 ms: wait until a lost probe lies within one period of a delivered
        // one before it, and a later probe was delivered again (delivered, lost,
        // delivered: the link went down and up).
        let rx = bed.udp_socket("b", 0).unwrap();
        let tx = bed.udp_socket("a", 0).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let target = rx.local_addr().unwrap();
        let mut sent: Vec<Instant> = Vec::new();
        let mut delivered: Vec<bool> = Vec::new();
        let deadline = Instant::now() + T;
        let both_seen = |delivered: &[bool], sent: &[Instant]| {
            let Some(last) = delivered.iter().rposition(|it| *it) else { return false };
            let mut before = None;
            for seq in 0..last {
                if delivered[seq] {
                    before = Some(seq);
                } else if let Some(up) = before
                    && sent[seq] - sent[up] <= period
                {
                    return true;
                }
            }
            false
        };
        loop {
            let seq = sent.len() as u64;
            sent.push(Instant::now());
            delivered.push(false);
            let _ = tx.send_to(&seq.to_be_bytes(), target);
            let mut buf = [0u8; 8];
            while let Ok((8, _)) = rx.recv_from(&mut buf) {
                delivered[u64::from_be_bytes(buf) as usize] = true;
            }
            if both_seen(&delivered, &sent) {
                break;
            }
            assert!(Instant::now() < deadline, "never saw link 0 flap: {delivered:?}");
        }
        bed.heal().unwrap();
        assert!(!bed.flapping("a", 0));
        assert!(!bed.link_cut("a", 0));
        all_ping(&bed);

        // A flap with a duration ends by itself, with the link up.
        bed.flap_link("b", 1, Duration::from_millis(100), Duration::from_millis(300)).unwrap();
        poll_until("the flapping to end", T, || !bed.flapping("b", 1));
        assert!(!bed.link_cut("b", 1));
        all_ping(&bed);
        finish(bed);
    }

    #[test]
    fn power_off_kills_the_namespace_and_unplugs_the_node() {
        let Some(bed) = bed("power_off_kills_the_namespace_and_unplugs_the_node", "nbpow", 15) else { return };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b.log");
        // A session leader with a plain child, a double-forked daemon (its parent exits at
        // once) and a child that left the session with setsid.
        let script = r#"
            sleep 600 &
            echo "child $!"
            sh -c 'sleep 600 </dev/null >/dev/null 2>&1 & echo "orphan $!"'
            setsid sleep 600 &
            echo "session $!"
            echo ready
            wait
        "#;
        let mut leader = bed.spawn("b", &["sh", "-c", script], &[("NETBED", "1")], &log).unwrap();
        let survivor_log = dir.path().join("a.log");
        let mut survivor = bed.spawn("a", &["sleep", "600"], &[], &survivor_log).unwrap();
        poll_until("the script to start its tree", T, || {
            fs::read_to_string(&log).unwrap_or_default().lines().any(|it| it == "ready")
        });
        let text = fs::read_to_string(&log).unwrap();
        let mut named: BTreeMap<String, i32> = BTreeMap::new();
        for line in text.lines().filter(|it| *it != "ready") {
            let (what, pid) = line.split_once(' ').unwrap();
            named.insert(what.into(), pid.parse().unwrap());
        }
        named.insert("leader".into(), leader.id() as i32);
        assert_eq!(named.len(), 4, "{text}");
        let leader_pid = named["leader"];
        let st = ProcStat::read(leader_pid).unwrap().unwrap();
        assert_eq!(st.session, leader_pid, "the spawned command leads its own session");
        assert_ne!(ProcStat::read(named["orphan"]).unwrap().unwrap().ppid, leader_pid);
        poll_until("the setsid child to lead its own session", T, || {
            ProcStat::read(named["session"]).unwrap().is_some_and(|st| st.session == named["session"])
        });
        let in_ns = bed.pids("b").unwrap();
        for (what, pid) in &named {
            assert!(in_ns.contains(pid), "{what} {pid} not in {in_ns:?}");
        }
        let starts: Vec<(i32, u64)> = named.values().map(|&pid| (pid, starttime(pid))).collect();
        all_ping(&bed);
        assert!(bed.is_powered_on("b").unwrap());

        let killed = bed.power_off("b").unwrap();
        for (what, pid) in &named {
            assert!(killed.contains(pid), "{what} {pid} not in {killed:?}");
        }
        for (pid, start) in starts {
            assert!(!alive(pid, start), "{pid} survived");
        }
        assert_eq!(bed.pids("b").unwrap(), Vec::<i32>::new());
        assert!(killed_by_sigkill(&mut leader));
        assert!(!bed.is_powered_on("b").unwrap());
        for link in 0..LINKS {
            assert!(blocked(&bed, "a", "b", link), "a -> b on link {link}");
        }
        assert!(blocked(&bed, CLIENT, "b", 0));
        // The other node is untouched.
        assert!(survivor.try_wait().unwrap().is_none());
        assert!(bed.pids("a").unwrap().contains(&(survivor.id() as i32)));
        assert!(pings(&bed, CLIENT, "a", 0));
        assert!(bed.power_off(CLIENT).is_err());

        bed.power_on("b").unwrap();
        assert!(bed.is_powered_on("b").unwrap());
        all_ping(&bed);
        finish(bed);
        assert!(killed_by_sigkill(&mut survivor), "dropping the bed kills what is left");
    }

    #[test]
    fn pause_stops_and_resume_continues() {
        let Some(bed) = bed("pause_stops_and_resume_continues", "nbpau", 18) else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut child = bed.spawn("a", &["sleep", "600"], &[], &dir.path().join("a.log")).unwrap();
        let pid = child.id();
        let state = || ProcStat::read(pid as i32).unwrap().unwrap().state;
        bed.pause(pid).unwrap();
        poll_until("the process to stop", T, || state() == b'T');
        bed.resume(pid).unwrap();
        poll_until("the process to continue", T, || state() != b'T');
        // A stopped node still powers off.
        bed.pause(pid).unwrap();
        poll_until("the process to stop", T, || state() == b'T');
        assert_eq!(bed.power_off("a").unwrap(), vec![pid as i32]);
        assert!(killed_by_sigkill(&mut child));
        assert!(bed.pause(1).is_err());
        finish(bed);
    }

    #[test]
    fn fence_agent_powers_off_and_reports_status() {
        let Some(bed) = bed("fence_agent_powers_off_and_reports_status", "nbfnc", 16) else { return };
        let dir = tempfile::tempdir().unwrap();
        let state_file = bed.state_file().to_path_buf();
        let agent = |request: &str| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = fence_agent(request.as_bytes(), &state_file, &mut out, &mut err);
            (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let mut child = bed.spawn("b", &["sh", "-c", "sleep 600 & wait"], &[], &dir.path().join("b.log")).unwrap();
        all_ping(&bed);

        assert_eq!(agent("action=status\nport=b\n"), (0, "Status: ON\n".into(), String::new()));
        assert_eq!(agent("action=list\n"), (0, "a,nbfnc-a\nb,nbfnc-b\n".into(), String::new()));
        assert_eq!(agent("action=monitor\n").0, 0);
        let (code, metadata, _) = agent("action=metadata\n");
        assert_eq!(code, 0);
        assert!(metadata.contains("<resource-agent name=\"fence_takeover_netns\""), "{metadata}");

        assert_eq!(agent("# fence b\naction=off\nplug=b\n"), (0, "Success: Powered OFF\n".into(), String::new()));
        assert!(killed_by_sigkill(&mut child));
        assert_eq!(bed.pids("b").unwrap(), Vec::<i32>::new());
        assert_eq!(agent("action=status\nport=b\n"), (2, "Status: OFF\n".into(), String::new()));
        assert!(blocked(&bed, "a", "b", 0));
        assert!(blocked(&bed, "a", "b", 1));
        assert_eq!(fence_agent_main("action=monitor\n".as_bytes(), &state_file), 0);

        assert_eq!(agent("option = on\n port = b\n").0, 0);
        assert_eq!(agent("action=status\nport=b\n").0, 0);
        all_ping(&bed);
        let mut child = bed.spawn("b", &["sleep", "600"], &[], &dir.path().join("b.log")).unwrap();
        assert_eq!(agent("nodename=b\n"), (0, "Success: Rebooted\n".into(), String::new()));
        assert!(killed_by_sigkill(&mut child));
        assert_eq!(agent("action=status\nport=b\n").0, 0);

        for (request, says) in [
            ("action=off\nport=zz\n", "no node \"zz\""),
            ("action=off\nport=client\n", "no node \"client\""),
            ("action=off\n", "no port="),
            ("action=dance\nport=b\n", "unknown action"),
            ("port=b\naction\n", "expected key=value"),
        ] {
            let (code, _, err) = agent(request);
            assert_eq!(code, 1, "{request:?}");
            assert!(err.contains(says), "{request:?}: {err}");
        }
        let missing = dir.path().join("missing.json");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(fence_agent("action=status\nport=b\n".as_bytes(), &missing, &mut out, &mut err), 1);
        assert!(String::from_utf8_lossy(&err).contains("missing.json"));
        all_ping(&bed);
        finish(bed);
        // Once the bed is gone, the agent knows nothing of it.
        assert_eq!(agent("action=status\nport=b\n").0, 1);
    }

    #[test]
    fn drop_after_a_panic_leaves_nothing() {
        if !root_or_skip("drop_after_a_panic_leaves_nothing") {
            return;
        }
        let prefix = "nbpan";
        Netbed::cleanup_stale(prefix).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("daemon");
        let result = std::panic::catch_unwind(|| {
            let bed = Netbed::create(prefix, &["a", "b"], 17).unwrap();
            bed.partition_full("a", "b").unwrap();
            bed.flap_link("a", 1, Duration::from_millis(50), Duration::MAX).unwrap();
            let out = bed.exec("b", &["sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!"]).unwrap();
            let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            fs::write(&record, format!("{pid} {}", starttime(pid))).unwrap();
            panic!("a deliberate panic while the bed is up");
        });
        assert!(result.is_err());
        assert_eq!(stale_namespaces(prefix).unwrap(), Vec::<String>::new());
        let listed = ip(&["netns", "list"]).unwrap();
        assert!(!String::from_utf8_lossy(&listed.stdout).contains("nbpan-"));
        let text = fs::read_to_string(&record).unwrap();
        let (pid, start) = text.split_once(' ').unwrap();
        assert!(!alive(pid.parse().unwrap(), start.parse().unwrap()), "the daemon survived");
        assert!(!state_file_path(prefix).exists());
    }

    #[test]
    fn cleanup_stale_removes_what_a_crashed_run_left() {
        if !root_or_skip("cleanup_stale_removes_what_a_crashed_run_left") {
            return;
        }
        let prefix = "nbstl";
        Netbed::cleanup_stale(prefix).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bed = Netbed::create(prefix, &["a"], 19).unwrap();
        bed.cut_link("a", 0).unwrap();
        let mut child = bed.spawn("a", &["sleep", "600"], &[], &dir.path().join("a.log")).unwrap();
        std::mem::forget(bed); // as if the test process had been killed
        let err = format!("{:#}", Netbed::create(prefix, &["a"], 19).err().unwrap());
        assert!(err.contains("cleanup_stale"), "{err}");
        let removed = Netbed::cleanup_stale(prefix).unwrap();
        assert_eq!(removed, ["nbstl-a", "nbstl-b0", "nbstl-b1", "nbstl-c"]);
        assert!(killed_by_sigkill(&mut child));
        assert_eq!(stale_namespaces(prefix).unwrap(), Vec::<String>::new());
        assert!(!state_file_path(prefix).exists());
        assert_eq!(Netbed::cleanup_stale(prefix).unwrap(), Vec::<String>::new());
    }
}
