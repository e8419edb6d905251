//! A filesystem, checked (journal replayed) and mounted; unmounted on release (F1.3,
//! F2.2, F2.3).
//!
//! - **check** resolves the configured device now (a `/dev/disk/by-id/...` symlink to the
//!   real node, recorded for start), and verifies that it is a block device, that the
//!   filesystem type is known (`/proc/filesystems`, or a `fsck.TYPE`/`mount.TYPE` helper or
//!   kernel module that can provide it), that the fsck tool exists when `fsck` is on, that
//!   the mountpoint (or its parent, when it will be created) exists, and that nothing else
//!   is mounted there or has the device mounted elsewhere. It changes nothing.
//! - **start** does nothing if the device is already mounted there. Otherwise it runs
//!   `e2fsck -p` (ext2/3/4) or `fsck -t TYPE -a` when `fsck` is on (exit 0 to 3 go on,
//!   4 and above fail with the tool's own words), creates the mountpoint if missing and
//!   calls mount(2) with the type and options (the generic ones, `ro`, `noatime`, ...,
//!   become flags; the rest is passed to the filesystem; userspace-only ones like `_netdev`
//!   are dropped).
//! - **stop** unmounts. If the filesystem is busy it finds the processes holding it (open
//!   files, working or root directory, executable or mapped files on it, from /proc),
//!   sends them SIGTERM, then SIGKILL, and retries; if it is still busy it fails with the
//!   list. It never detaches lazily: a lazily detached filesystem could still be written
//!   while another node mounts it.
//! - **monitor** reads /proc/self/mountinfo: `Ok` when the top mount on the mountpoint is
//!   the device (compared by major:minor, so /dev/loopN and a by-id link agree),
//!   `NotRunning` when nothing is mounted there, `Failed` when something else is, or when
//!   the kernel remounted it read-only (after I/O errors) though it was mounted read-write.
//!
//! Operations of one resource never overlap: a dropped start's mount(2) (run on the
//! blocking pool, it cannot be interrupted) finishes before a later stop looks, and a
//! dropped fsck is killed.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use crate::service::ProcStat;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{major, makedev, minor};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{info, warn};

/// A filesystem, checked then mounted (F1.3, F2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub device: std::path::PathBuf,
    pub mountpoint: std::path::PathBuf,
    pub fstype: String,
    /// Mount options (`-o`), comma-separated; empty: none.
    pub options: String,
    /// Check (and replay the journal of) the filesystem before mounting.
    pub fsck: bool,
}

/// How long processes holding the filesystem get after SIGTERM before SIGKILL.
pub const DEFAULT_TERM_GRACE: Duration = Duration::from_secs(5);
/// How long killed processes get to go away before the unmount is given up.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a busy filesystem nobody seems to hold gets before the unmount is given up
/// (processes that are exiting release their files a little later).
const SETTLE: Duration = Duration::from_secs(1);
/// How long `blkid`, used to explain a failed mount, may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    pub major: u64,
    pub minor: u64,
    pub mount_point: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo; lines it cannot read are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 3 {
                return None;
            }
            let (maj, min) = fields[2].split_once(':')?;
            Some(MountEntry {
                id: fields[0].parse().ok()?,
                parent: fields[1].parse().ok()?,
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                mount_point: PathBuf::from(unescape(fields[4])),
                options: fields[5].to_string(),
                fstype: fields[sep + 1].to_string(),
                source: unescape(fields[sep + 2]),
            })
        })
        .collect()
}

fn read_mountinfo() -> Result<Vec<MountEntry>, String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))
}

/// The mounts on `mp`, bottom first, and the top one (the one a path lookup sees).
fn mounts_at<'a>(entries: &'a [MountEntry], mp: &Path) -> (Vec<&'a MountEntry>, Option<&'a MountEntry>) {
    let here: Vec<&MountEntry> = entries.iter().filter(|e| e.mount_point == mp).collect();
    let top = here.iter().copied().find(|e| !here.iter().any(|o| o.parent == e.id && o.id != e.id));
    (here, top)
}

/// Cuts this machine off a filesystem the way a power cut would: `FS_IOC_SHUTDOWN` with
/// `NOLOGFLUSH` (ext4 and XFS refuse every further write, and nothing more reaches the
/// disk: what was fsynced is in the journal, the rest is lost), then a lazy unmount. The
/// guard does this when it acts, so a node that stopped itself cannot write the shared
/// disk again (the kernel's writeback included) once its peer has taken the disk over.
/// Nothing to do (Ok(false)) when nothing is mounted there.
pub fn cut_off(mount_point: &Path) -> Result<bool, String> {
    const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d; // _IOR('X', 125, __u32)
    const NOLOGFLUSH: u32 = 2;
    // mountinfo shows canonical paths; a path that does not resolve is not mounted.
    let Ok(mount_point) = std::fs::canonicalize(mount_point) else { return Ok(false) };
    let mount_point = mount_point.as_path();
    if mounts_at(&read_mountinfo()?, mount_point).1.is_none() {
        return Ok(false);
    }
    let dir = std::fs::File::open(mount_point).map_err(|e| format!("cannot open {}: {e}", mount_point.display()))?;
    let flags = NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 from the pointer, which lives across the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), FS_IOC_SHUTDOWN as _, &flags as *const u32) };
    if rc != 0 {
        return Err(format!(
            "cannot shut down the filesystem at {}: {}",
            mount_point.display(),
            std::io::Error::last_os_error()
        ));
    }
    drop(dir);
    nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("cannot detach {}: {e}", mount_point.display()))?;
    Ok(true)
}

/// A block device, resolved: its real path and number.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Device {
    path: PathBuf,
    major: u64,
    minor: u64,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.path.display(), self.major, self.minor)
    }
}

fn resolve_device(configured: &Path) -> Result<Device, String> {
    let path = std::fs::canonicalize(configured).map_err(|e| format!("device {}: {e}", configured.display()))?;
    let meta = std::fs::metadata(&path).map_err(|e| format!("device {}: {e}", path.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!(
            "{} is not a block device (attach an image file with losetup and configure the loop device)",
            path.display()
        ));
    }
    Ok(Device { path, major: major(meta.rdev()), minor: minor(meta.rdev()) })
}

impl Device {
    /// Whether a mount is of this device: by number, or (btrfs and others that report an
    /// anonymous number) by its source path.
    fn is_source_of(&self, e: &MountEntry) -> bool {
        if (e.major, e.minor) == (self.major, self.minor) {
            return true;
        }
        std::fs::metadata(&e.source).is_ok_and(|m| {
            m.file_type().is_block_device() && (major(m.rdev()), minor(m.rdev())) == (self.major, self.minor)
        })
    }
}

fn describe(e: &MountEntry) -> String {
    format!("{} ({}, {}:{})", e.source, e.fstype, e.major, e.minor)
}

/// What is on the mountpoint now, as far as this device goes.
enum Found<'a> {
    Nothing,
    Ours(&'a MountEntry),
    /// The device is mounted there but something else is mounted over it.
    Covered(&'a MountEntry),
    Other(&'a MountEntry),
}

fn find<'a>(entries: &'a [MountEntry], mp: &Path, dev: &Device) -> Found<'a> {
    let (here, top) = mounts_at(entries, mp);
    match top {
        None => Found::Nothing,
        Some(t) if dev.is_source_of(t) => Found::Ours(t),
        Some(t) => match here.iter().find(|e| dev.is_source_of(e)) {
            Some(_) => Found::Covered(t),
            None => Found::Other(t),
        },
    }
}

/// The userspace-only options mount(8) understands and the kernel does not.
const USERSPACE_OPTIONS: &[&str] =
    &["defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail"];

/// Splits `-o` options into mount(2) flags and the filesystem's own data.
fn parse_options(options: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (set, clear) = match opt {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            o if USERSPACE_OPTIONS.contains(&o) || o.starts_with("x-") || o.starts_with('_') => continue,
            o => {
                data.push(o.to_string());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

fn ext_family(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4")
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether the kernel knows the filesystem type now.
fn kernel_knows(fstype: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fstype)))
}

/// A kernel module named after the filesystem type, for this kernel.
fn module_for(fstype: &str) -> Option<PathBuf> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?.trim().to_string();
    let dir = Path::new("/lib/modules").join(release).join("kernel/fs").join(fstype);
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{fstype}.ko"))))
}

/// Runs a tool with a deadline; killed if this future is dropped.
async fn run_tool(program: &Path, args: &[&str], timeout: Option<Duration>) -> Result<std::process::Output, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let shown = format!("{} {}", program.display(), args.join(" "));
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, child).await.map_err(|_| format!("{shown}: no answer in {t:?}"))?,
        None => child.await,
    };
    result.map_err(|e| format!("cannot run {shown}: {e}"))
}

/// The last lines of what a tool printed.
fn tail(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join(" | ")
}

/// What `blkid` says the device holds (`None` if it cannot tell).
async fn probe_type(dev: &Path) -> Option<String> {
    let blkid = find_tool("blkid")?;
    let dev = dev.to_str()?;
    let out = run_tool(&blkid, &["-p", "-o", "value", "-s", "TYPE", dev], Some(PROBE_TIMEOUT)).await.ok()?;
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !t.is_empty()).then_some(t)
}

/// A process holding the filesystem, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub comm: String,
    pub starttime: u64,
    /// E.g. `cwd /srv/data`, `fd 3 /srv/data/log`, `mmap /srv/data/lib.so`.
    pub uses: Vec<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}): {}", self.pid, self.comm, self.uses.join(", "))
    }
}

fn list(holders: &[Holder]) -> String {
    holders.iter().map(Holder::to_string).collect::<Vec<_>>().join("; ")
}

fn own_pid() -> i32 {
    std::process::id() as i32
}

/// The processes (this one included) using the filesystem with device number
/// `major:minor`: open files, cwd, root, executable, mapped files.
pub fn holders(fs_major: u64, fs_minor: u64) -> Vec<Holder> {
    let dev = makedev(fs_major, fs_minor);
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let base = entry.path();
        let mut uses = Vec::new();
        let link = |p: &Path| std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default();
        for what in ["cwd", "root", "exe"] {
            let p = base.join(what);
            if std::fs::metadata(&p).is_ok_and(|m| m.dev() == dev) {
                uses.push(format!("{what} {}", link(&p)));
            }
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                let p = fd.path();
                if std::fs::metadata(&p).is_ok_and(|m| m.dev() == dev) {
                    uses.push(format!("fd {} {}", fd.file_name().to_string_lossy(), link(&p)));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
            let mut seen = BTreeSet::new();
            for line in maps.lines() {
                let mut f = line.split_whitespace();
                let (Some(_), Some(_), Some(_), Some(devf), Some(inode)) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let Some((ma, mi)) = devf.split_once(':') else { continue };
                let (Ok(ma), Ok(mi)) = (u64::from_str_radix(ma, 16), u64::from_str_radix(mi, 16)) else { continue };
                if (ma, mi) == (fs_major, fs_minor) && inode != "0" {
                    let path = f.collect::<Vec<_>>().join(" ");
                    if seen.insert(path.clone()) {
                        uses.push(format!("mmap {path}"));
                    }
                }
            }
        }
        if uses.is_empty() {
            continue;
        }
        let Ok(Some(stat)) = ProcStat::read(pid) else { continue };
        if stat.is_dead() {
            continue;
        }
        let comm = std::fs::read_to_string(base.join("comm")).map(|c| c.trim().to_string()).unwrap_or_default();
        found.push(Holder { pid, comm, starttime: stat.starttime, uses });
    }
    found
}

/// Whether this exact process still lives (a zombie has released its files).
fn still_there(h: &Holder) -> bool {
    matches!(ProcStat::read(h.pid), Ok(Some(st)) if st.starttime == h.starttime && !st.is_dead())
}

fn signal_all(holders: &[Holder], sig: Signal) {
    for h in holders {
        if still_there(h) {
            // The start time was checked just before: the pid was not reused since the scan.
            if let Err(e) = kill(Pid::from_raw(h.pid), sig) {
                warn!("cannot send {sig} to pid {} ({}): {e}", h.pid, h.comm);
            }
        }
    }
}

async fn wait_gone(holders: &[Holder], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !holders.iter().any(still_there) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `f` on the blocking pool, keeping `guard` (the resource's lock) until it ends even
/// if this future is dropped.
async fn blocking<T: Send + 'static>(
    guard: &Arc<OwnedMutexGuard<()>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let guard = guard.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        f()
    })
    .await
    .map_err(|e| format!("the mount operation did not finish: {e}"))
}

pub struct Mount {
    spec: MountSpec,
    /// The device as check (or the last start) resolved it (F2.3).
    resolved: Option<PathBuf>,
    lock: Arc<Mutex<()>>,
    term_grace: Duration,
}

impl Mount {
    pub fn new(spec: MountSpec) -> Self {
        Mount { spec, resolved: None, lock: Arc::new(Mutex::new(())), term_grace: DEFAULT_TERM_GRACE }
    }

    pub fn spec(&self) -> &MountSpec {
        &self.spec
    }

    /// The device path check resolved, if it ran.
    pub fn resolved_device(&self) -> Option<&Path> {
        self.resolved.as_deref()
    }

    /// How long holders get between SIGTERM and SIGKILL on a busy unmount.
    pub fn set_term_grace(&mut self, grace: Duration) {
        self.term_grace = grace;
    }

    /// Resolves the configured path now; if it no longer resolves (a by-id link not yet
    /// recreated), the path check resolved ahead of time.
    fn device(&mut self) -> Result<Device, String> {
        match resolve_device(&self.spec.device) {
            Ok(dev) => {
                if let Some(before) = &self.resolved
                    && *before != dev.path
                {
                    warn!(
                        "mount {}: {} now resolves to {}, not {} as when checked",
                        self.spec.mountpoint.display(),
                        self.spec.device.display(),
                        dev.path.display(),
                        before.display()
                    );
                }
                self.resolved = Some(dev.path.clone());
                Ok(dev)
            }
            Err(e) => match &self.resolved {
                Some(before) => resolve_device(before).map_err(|e2| format!("{e}; and as resolved before: {e2}")),
                None => Err(e),
            },
        }
    }

    /// The mountpoint as mountinfo shows it, or `None` if it does not exist.
    fn mountpoint(&self) -> Result<Option<PathBuf>, String> {
        match std::fs::canonicalize(&self.spec.mountpoint) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("mountpoint {}: {e}", self.spec.mountpoint.display())),
        }
    }

    fn shown(&self, dev: &Device) -> String {
        let opts = if self.spec.options.is_empty() { String::new() } else { format!(" -o {}", self.spec.options) };
        format!("mount -t {}{opts} {} {}", self.spec.fstype, dev.path.display(), self.spec.mountpoint.display())
    }

    async fn fsck(&self, dev: &Device) -> Result<(), String> {
        let device = dev.path.to_str().ok_or("the device path is not UTF-8")?;
        let (tool, args): (&str, Vec<&str>) = if ext_family(&self.spec.fstype) {
            ("e2fsck", vec!["-p", device])
        } else {
            ("fsck", vec!["-T", "-t", &self.spec.fstype, "-a", device])
        };
        let program = find_tool(tool).ok_or_else(|| format!("fsck is on but {tool} is not installed"))?;
        let out = run_tool(&program, &args, None).await?;
        let shown = format!("{tool} {}", args.join(" "));
        match out.status.code() {
            Some(0) => Ok(()),
            Some(code @ 1..=3) => {
                warn!("{shown}: exit {code} (errors corrected): {}", tail(&out));
                Ok(())
            }
            Some(code) => Err(format!(
                "{shown} failed with exit {code} (errors left uncorrected or an operational error), so the \
                 filesystem is not mounted: {}",
                tail(&out)
            )),
            None => Err(format!("{shown} was killed ({}): {}", out.status, tail(&out))),
        }
    }

    async fn explain_mount_error(&self, dev: &Device, errno: Errno) -> String {
        let fstype = &self.spec.fstype;
        let why = match errno {
            Errno::ENODEV => format!("the kernel does not know filesystem type {fstype}"),
            Errno::EINVAL => "wrong filesystem type, bad option or bad superblock".to_string(),
            Errno::EBUSY => "the device is already mounted or in use".to_string(),
            Errno::EACCES | Errno::EROFS => "the device is read-only (mount it with -o ro)".to_string(),
            Errno::ENOTBLK => "not a block device".to_string(),
            Errno::ENOENT => "the device or mountpoint does not exist".to_string(),
            other => other.desc().to_string(),
        };
        let mut text = format!("{} failed: {errno}: {why}", self.shown(dev));
        if matches!(errno, Errno::EINVAL | Errno::ENODEV) {
            match probe_type(&dev.path).await {
                Some(found) if found != *fstype => text.push_str(&format!(
                    "; the device holds a {found} filesystem, not {fstype}: correct the configured type"
                )),
                Some(_) => text.push_str(&format!(
                    "; blkid finds a {fstype} filesystem there: check the options ({:?}) and the kernel log",
                    self.spec.options
                )),
                None => text.push_str("; blkid finds no known filesystem on the device"),
            }
        }
        text
    }

    async fn do_start(&mut self) -> Result<String, String> {
        let dev = self.device()?;
        let guard = Arc::new(self.lock.clone().lock_owned().await);
        let mp_configured = self.spec.mountpoint.clone();
        if self.mountpoint()?.is_none() {
            std::fs::create_dir_all(&mp_configured)
                .map_err(|e| format!("cannot create the mountpoint {}: {e}", mp_configured.display()))?;
            info!("created the mountpoint {}", mp_configured.display());
        }
        let mp = self.mountpoint()?.ok_or_else(|| format!("mountpoint {} vanished", mp_configured.display()))?;
        if !mp.is_dir() {
            return Err(format!("the mountpoint {} is not a directory", mp.display()));
        }
        let entries = read_mountinfo()?;
        match find(&entries, &mp, &dev) {
            Found::Ours(_) => return Ok(format!("{dev} already mounted on {}", mp.display())),
            Found::Covered(top) => {
                return Err(format!("{dev} is mounted on {} but covered by {}", mp.display(), describe(top)));
            }
            Found::Other(top) => {
                return Err(format!("{} is already mounted on {}", describe(top), mp.display()));
            }
            Found::Nothing => {}
        }
        if let Some(elsewhere) = entries.iter().find(|e| dev.is_source_of(e)) {
            return Err(format!(
                "{dev} is already mounted on {}; refusing to check or mount it a second time",
                elsewhere.mount_point.display()
            ));
        }
        if self.spec.fsck {
            self.fsck(&dev).await?;
        }
        let (flags, data) = parse_options(&self.spec.options);
        let (source, target, fstype) = (dev.path.clone(), mp.clone(), self.spec.fstype.clone());
        let result = blocking(&guard, move || {
            nix::mount::mount(Some(&source), &target, Some(fstype.as_str()), flags, Some(data.as_str()))
        })
        .await?;
        if let Err(errno) = result {
            return Err(self.explain_mount_error(&dev, errno).await);
        }
        match find(&read_mountinfo()?, &mp, &dev) {
            Found::Ours(_) => Ok(format!("{dev} mounted on {}", mp.display())),
            _ => Err(format!("{} succeeded but mountinfo does not show it on {}", self.shown(&dev), mp.display())),
        }
    }

    async fn do_stop(&mut self) -> Result<String, String> {
        let guard = Arc::new(self.lock.clone().lock_owned().await);
        let Some(mp) = self.mountpoint()? else { return Ok("the mountpoint does not exist: not mounted".into()) };
        let dev = self.device().ok();
        let entries = read_mountinfo()?;
        let ours = match &dev {
            Some(dev) => match find(&entries, &mp, dev) {
                Found::Nothing | Found::Other(_) => return Ok(format!("{dev} is not mounted on {}", mp.display())),
                Found::Covered(top) => {
                    return Err(format!(
                        "{dev} is mounted on {} under {}: unmount that first",
                        mp.display(),
                        describe(top)
                    ));
                }
                Found::Ours(e) => e.clone(),
            },
            // The device is gone (a lost disk): whatever is mounted from the configured
            // path (or the path resolved before) is ours.
            None => {
                let names: Vec<String> = [Some(self.spec.device.clone()), self.resolved.clone()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.display().to_string())
                    .collect();
                match mounts_at(&entries, &mp).1 {
                    Some(top) if names.contains(&top.source) => top.clone(),
                    _ => return Ok(format!("{} is not mounted on {}", self.spec.device.display(), mp.display())),
                }
            }
        };

        // SIGTERM first, then SIGKILL (a few sweeps, for holders that forked meanwhile),
        // then give up.
        let mut signals = [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGKILL, Signal::SIGKILL].into_iter();
        let mut settle_until = Instant::now() + SETTLE;
        loop {
            let target = mp.clone();
            match blocking(&guard, move || nix::mount::umount2(&target, MntFlags::empty())).await? {
                Ok(()) => return Ok(format!("unmounted {}", mp.display())),
                Err(Errno::EINVAL) if mounts_at(&read_mountinfo()?, &mp).1.is_none_or(|t| t.id != ours.id) => {
                    return Ok(format!("{} was unmounted meanwhile", mp.display()));
                }
                Err(Errno::EBUSY) => {}
                Err(e) => return Err(format!("umount {}: {e}: {}", mp.display(), e.desc())),
            }
            let (ma, mi) = (ours.major, ours.minor);
            let (mine, found): (Vec<Holder>, Vec<Holder>) =
                blocking(&guard, move || holders(ma, mi)).await?.into_iter().partition(|h| h.pid == own_pid());
            if let Some(me) = mine.first() {
                return Err(format!(
                    "umount {}: busy, and this agent itself holds it ({}); not detaching it lazily",
                    mp.display(),
                    me.uses.join(", ")
                ));
            }
            if found.is_empty() {
                // Processes that just exited release the filesystem a moment later.
                if Instant::now() < settle_until {
                    tokio::time::sleep(POLL * 5).await;
                    continue;
                }
                let nested: Vec<String> = read_mountinfo()?
                    .iter()
                    .filter(|e| e.parent == ours.id)
                    .map(|e| format!("{} on {}", describe(e), e.mount_point.display()))
                    .collect();
                return Err(format!(
                    "umount {}: busy, and no process holds a file on it{}; not detaching it lazily",
                    mp.display(),
                    if nested.is_empty() {
                        " (a loop device, swap file or bind mount of it?)".to_string()
                    } else {
                        format!("; mounted below it: {}", nested.join(", "))
                    }
                ));
            }
            let Some(signal) = signals.next() else {
                return Err(format!(
                    "umount {}: still busy after SIGTERM and SIGKILL, held by {}; not detaching it lazily",
                    mp.display(),
                    list(&found)
                ));
            };
            warn!("umount {}: busy; sending {signal} to the processes holding it: {}", mp.display(), list(&found));
            signal_all(&found, signal);
            let grace = if signal == Signal::SIGTERM { self.term_grace } else { KILL_GRACE };
            wait_gone(&found, grace).await;
            settle_until = Instant::now() + SETTLE;
        }
    }

    fn do_monitor(&mut self) -> OpOutcome {
        let mp = match self.mountpoint() {
            Ok(Some(mp)) => mp,
            Ok(None) => return OpOutcome::NotRunning,
            Err(e) => return OpOutcome::Failed(e),
        };
        let entries = match read_mountinfo() {
            Ok(e) => e,
            Err(e) => return OpOutcome::Failed(e),
        };
        let dev = match self.device() {
            Ok(dev) => dev,
            // No device here: fine if nothing is mounted (a node that does not see the
            // disk now), broken otherwise.
            Err(e) => {
                return match mounts_at(&entries, &mp).1 {
                    None => OpOutcome::NotRunning,
                    Some(top) => OpOutcome::Failed(format!("{e}; {} is mounted on {}", describe(top), mp.display())),
                };
            }
        };
        match find(&entries, &mp, &dev) {
            Found::Nothing => OpOutcome::NotRunning,
            Found::Ours(e) => {
                let (flags, _) = parse_options(&self.spec.options);
                if e.read_only() && !flags.contains(MsFlags::MS_RDONLY) {
                    OpOutcome::Failed(format!(
                        "{dev} on {} is mounted read-only, though configured read-write: the kernel probably \
                         remounted it after errors",
                        mp.display()
                    ))
                } else {
                    OpOutcome::Ok
                }
            }
            Found::Covered(top) => {
                OpOutcome::Failed(format!("{dev} on {} is covered by {}", mp.display(), describe(top)))
            }
            Found::Other(top) => {
                OpOutcome::Failed(format!("{} is mounted on {} instead of {dev}", describe(top), mp.display()))
            }
        }
    }

    fn do_check(&mut self) -> PlanCheck {
        let mut notes = Vec::new();
        let mut ok = true;
        let mut fail = |notes: &mut Vec<String>, text: String| {
            ok = false;
            notes.push(text);
        };
        let dev = match resolve_device(&self.spec.device) {
            Ok(dev) => {
                notes.push(format!("device {} resolves to {dev}", self.spec.device.display()));
                self.resolved = Some(dev.path.clone());
                Some(dev)
            }
            Err(e) => {
                fail(&mut notes, e);
                None
            }
        };
        let fstype = &self.spec.fstype;
        if fstype.is_empty() {
            fail(&mut notes, "no filesystem type configured".into());
        } else if kernel_knows(fstype) {
            notes.push(format!("filesystem type {fstype} is known to the kernel"));
        } else if let Some(module) = module_for(fstype) {
            notes.push(format!("filesystem type {fstype} comes with the module {}", module.display()));
        } else if let Some(helper) =
            find_tool(&format!("mount.{fstype}")).or_else(|| find_tool(&format!("fsck.{fstype}")))
        {
            notes.push(format!("filesystem type {fstype}: not loaded, but {} exists", helper.display()));
        } else {
            fail(
                &mut notes,
                format!("unknown filesystem type {fstype}: not in /proc/filesystems, no module, no helper"),
            );
        }
        if self.spec.fsck {
            let tool = if ext_family(fstype) { "e2fsck".to_string() } else { format!("fsck.{fstype}") };
            match find_tool(&tool) {
                Some(p) => notes.push(format!("fsck: {}", p.display())),
                None => fail(&mut notes, format!("fsck is on but {tool} is not installed")),
            }
        }
        let mp = &self.spec.mountpoint;
        match std::fs::metadata(mp) {
            Ok(m) if m.is_dir() => notes.push(format!("mountpoint {} exists", mp.display())),
            Ok(_) => fail(&mut notes, format!("the mountpoint {} is not a directory", mp.display())),
            Err(_) => match mp.parent() {
                Some(parent) if parent.is_dir() => {
                    notes.push(format!("mountpoint {} will be created in {}", mp.display(), parent.display()))
                }
                _ => {
                    fail(&mut notes, format!("neither the mountpoint {} nor its parent directory exists", mp.display()))
                }
            },
        }
        if let (Some(dev), Ok(entries)) = (&dev, read_mountinfo()) {
            let here = self.mountpoint().ok().flatten();
            match here.as_ref().map(|mp| find(&entries, mp, dev)) {
                Some(Found::Ours(_)) => notes.push(format!("{dev} is mounted there now")),
                Some(Found::Covered(top)) | Some(Found::Other(top)) => {
                    fail(&mut notes, format!("{} is mounted on {} now", describe(top), mp.display()))
                }
                None | Some(Found::Nothing) => {
                    if let Some(e) = entries.iter().find(|e| dev.is_source_of(e)) {
                        fail(&mut notes, format!("{dev} is mounted on {} now", e.mount_point.display()));
                    }
                }
            }
        }
        PlanCheck { ok, notes }
    }
}

impl Resource for Mount {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            match self.do_start().await {
                Ok(note) => {
                    info!("mount start: {note}");
                    OpOutcome::Ok
                }
                Err(e) => OpOutcome::Failed(e),
            }
        })
    }

    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            match self.do_stop().await {
                Ok(note) => {
                    info!("mount stop: {note}");
                    OpOutcome::Ok
                }
                Err(e) => OpOutcome::Failed(e),
            }
        })
    }

    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            // Wait for a start or stop still finishing on the blocking pool.
            let _guard = self.lock.clone().lock_owned().await;
            self.do_monitor()
        })
    }

    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move {
            let mut check = self.do_check();
            if check.ok
                && let Some(dev) = &self.resolved
                && let Some(found) = probe_type(dev).await
            {
                let want = &self.spec.fstype;
                if found == *want || ext_family(&found) && ext_family(want) {
                    check.notes.push(format!("blkid: the device holds a {found} filesystem"));
                } else {
                    check.ok = false;
                    check.notes.push(format!("blkid: the device holds a {found} filesystem, not {want}"));
                }
            }
            check
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::testloop::*;
    use super::super::disk::{self, Disk, DiskSpec};
    use super::*;
    use crate::service::testutil::{ChildGuard, poll_until};
    use std::os::unix::process::ExitStatusExt;
    use takeover_core::Epoch;

    const MIB: u64 = 1 << 20;
    const T: Duration = Duration::from_secs(20);

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    37 36 7:3 / /srv/data ro,relatime shared:5 - ext4 /dev/loop3 rw\n\
                    38 37 0:44 / /srv/data rw - tmpfs tmpfs rw\n\
                    garbage\n";
        let e = parse_mountinfo(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!((e[0].major, e[0].minor, e[0].fstype.as_str()), (98, 0, "ext3"));
        assert_eq!((e[1].source.as_str(), e[1].read_only()), ("/dev/loop3", true));
        let (here, top) = mounts_at(&e, Path::new("/srv/data"));
        assert_eq!(here.len(), 2);
        assert_eq!(top.unwrap().fstype, "tmpfs");
        assert_eq!(unescape("a\\011b\\134c\\0"), "a\tb\\c\\0");
    }

    #[test]
    fn options() {
        let (flags, data) =
            parse_options("ro,noatime,nofail,_netdev,x-systemd.automount,errors=remount-ro,data=ordered");
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOATIME);
        assert_eq!(data, "errors=remount-ro,data=ordered");
        let (flags, data) = parse_options("ro,rw, nodev ,defaults");
        assert_eq!((flags, data.as_str()), (MsFlags::MS_NODEV, ""));
        assert_eq!(parse_options(""), (MsFlags::empty(), String::new()));
    }

    /// An ext4 filesystem on a loop device over an image file, made to leave the disk
    /// resource's reservation area free, and a mountpoint that does not exist yet. Drops
    /// unmount, detach the loop device(s) and remove the files, in that order.
    struct Bed {
        _mounted: MountGuard,
        lp: LoopDev,
        second: Option<LoopDev>,
        mp: PathBuf,
        dir: tempfile::TempDir,
    }

    fn bed(name: &str) -> Option<Bed> {
        if !root_or_skip(name) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 64 * MIB);
        let lp = LoopDev::attach(&img);
        let fs_kib = disk::reservation_offset(64 * MIB).unwrap() / 1024;
        run(&["mkfs.ext4", "-q", "-F", "-b", "4096", lp.path().to_str().unwrap(), &format!("{fs_kib}k")]);
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mp = dir.path().join("mnt").join("data");
        Some(Bed { _mounted: MountGuard(mp.clone()), lp, second: None, mp, dir })
    }

    impl Bed {
        fn spec(&self, fstype: &str, fsck: bool) -> MountSpec {
            MountSpec {
                device: self.lp.path().into(),
                mountpoint: self.mp.clone(),
                fstype: fstype.into(),
                options: String::new(),
                fsck,
            }
        }

        fn dev(&self) -> &str {
            self.lp.path().to_str().unwrap()
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            node: "a".into(),
            scope: "a".into(),
            node_index: 0,
            group: "web".into(),
            resource: "fs".into(),
            state_dir: std::env::temp_dir(),
            generation: Epoch { counter: 1, node: 0, forced: false },
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn failed(o: OpOutcome) -> String {
        match o {
            OpOutcome::Failed(text) => text,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// The mount on `mp` as /proc/self/mountinfo shows it.
    fn top_at(mp: &Path) -> Option<MountEntry> {
        let mp = std::fs::canonicalize(mp).ok()?;
        mounts_at(&read_mountinfo().unwrap(), &mp).1.cloned()
    }

    fn fs_state(dev: &str) -> String {
        let out = run(&["dumpe2fs", "-h", dev]);
        out.lines().find(|l| l.starts_with("Filesystem state:")).unwrap_or_default().to_string()
    }

    #[test]
    fn cut_off_stops_every_write_and_detaches_keeping_what_was_fsynced() {
        use std::io::Write;
        let Some(bed) = bed("cut_off_stops_every_write_and_detaches_keeping_what_was_fsynced") else { return };
        let rt = rt();
        let c = ctx();
        let mut m = Mount::new(bed.spec("ext4", true));
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        let mut kept = std::fs::File::create(bed.mp.join("kept")).unwrap();
        kept.write_all(b"fsynced").unwrap();
        kept.sync_all().unwrap();
        let mut late = std::fs::File::create(bed.mp.join("late")).unwrap();
        assert_eq!(cut_off(&bed.mp), Ok(true));
        assert_eq!(top_at(&bed.mp), None, "detached");
        // A file still open on it can write nothing more (the guard's services, or anything).
        assert!(late.write_all(b"after the cut").and_then(|()| late.sync_all()).is_err());
        assert!(kept.write_all(b"!").and_then(|()| kept.sync_all()).is_err());
        drop((late, kept));
        assert_eq!(cut_off(&bed.mp), Ok(false), "nothing mounted there any more");
        // Mounted again (fsck replays the journal): what was fsynced before the cut is there.
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        assert_eq!(std::fs::read(bed.mp.join("kept")).unwrap(), b"fsynced");
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);
    }

    #[test]
    fn mount_lifecycle() {
        let Some(bed) = bed("mount_lifecycle") else { return };
        let rt = rt();
        let c = ctx();
        let mut spec = bed.spec("ext4", true);
        spec.options = "noatime,nofail,errors=remount-ro".into();
        let mut m = Mount::new(spec);

        let check = rt.block_on(m.check(&c));
        let all = check.notes.join("\n");
        assert!(check.ok, "{all}");
        assert!(all.contains("will be created"), "{all}");
        assert!(all.contains("holds a ext4 filesystem"), "{all}");
        assert_eq!(rt.block_on(m.monitor(&c)), OpOutcome::NotRunning, "no mountpoint yet");
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok, "stopping a stopped mount");

        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        let top = top_at(&bed.mp).expect("mounted");
        assert_eq!((top.fstype.as_str(), top.source.as_str()), ("ext4", bed.dev()));
        assert!(top.options.split(',').any(|o| o == "noatime"), "{top:?}");
        assert_eq!(rt.block_on(m.monitor(&c)), OpOutcome::Ok);
        std::fs::write(bed.mp.join("hello"), b"world").unwrap();
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok, "start is idempotent");
        assert_eq!(read_mountinfo().unwrap().iter().filter(|e| e.mount_point == top.mount_point).count(), 1);
        let check = rt.block_on(m.check(&c));
        assert!(check.ok && check.notes.join("\n").contains("is mounted there now"), "{check:?}");

        // The kernel remounting it read-only (after errors) is a failure.
        nix::mount::mount(None::<&str>, &bed.mp, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
            .unwrap();
        assert!(failed(rt.block_on(m.monitor(&c))).contains("read-only"));
        nix::mount::mount(None::<&str>, &bed.mp, None::<&str>, MsFlags::MS_REMOUNT, None::<&str>).unwrap();
        assert_eq!(rt.block_on(m.monitor(&c)), OpOutcome::Ok);

        // Something mounted over it.
        nix::mount::mount(Some("tmpfs"), &bed.mp, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        assert!(failed(rt.block_on(m.monitor(&c))).contains("covered by tmpfs"));
        assert!(failed(rt.block_on(m.stop(&c))).contains("unmount that first"));
        nix::mount::umount(&bed.mp).unwrap();

        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);
        assert_eq!(top_at(&bed.mp), None);
        assert_eq!(rt.block_on(m.monitor(&c)), OpOutcome::NotRunning);
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok, "stop is idempotent");

        // Something else mounted there instead.
        nix::mount::mount(Some("tmpfs"), &bed.mp, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        assert!(failed(rt.block_on(m.monitor(&c))).contains("is mounted on"));
        assert!(failed(rt.block_on(m.start(&c))).contains("already mounted on"));
        assert!(!rt.block_on(m.check(&c)).ok);
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok, "not ours: nothing to unmount");
        assert!(top_at(&bed.mp).is_some_and(|t| t.fstype == "tmpfs"), "the other mount is left alone");
        nix::mount::umount(&bed.mp).unwrap();

        // The data survived, and the filesystem is clean.
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        assert_eq!(std::fs::read(bed.mp.join("hello")).unwrap(), b"world");
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);
        run(&["e2fsck", "-f", "-n", bed.dev()]);
    }

    #[test]
    fn mount_runs_fsck_first() {
        let Some(bed) = bed("mount_runs_fsck_first") else { return };
        let rt = rt();
        let c = ctx();
        run(&["tune2fs", "-E", "force_fsck", bed.dev()]);
        assert!(fs_state(bed.dev()).contains("with errors"));
        let mut m = Mount::new(bed.spec("ext4", true));
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);
        let state = fs_state(bed.dev());
        assert!(state.ends_with(" clean"), "e2fsck ran before the mount: {state}");

        // Without fsck, nothing checks it (the kernel mounts a filesystem marked with errors).
        run(&["tune2fs", "-E", "force_fsck", bed.dev()]);
        let mut unchecked = Mount::new(bed.spec("ext4", false));
        assert_eq!(rt.block_on(unchecked.start(&c)), OpOutcome::Ok);
        assert_eq!(rt.block_on(unchecked.stop(&c)), OpOutcome::Ok);
        assert!(fs_state(bed.dev()).contains("with errors"));

        // A filesystem e2fsck cannot repair is not mounted; its words are in the failure.
        let zeros = vec![0u8; 1024];
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(bed.lp.path()).unwrap(),
            &zeros,
            1024,
        )
        .unwrap();
        let text = failed(rt.block_on(m.start(&c)));
        assert!(text.contains("e2fsck -p") && text.contains("exit 8"), "{text}");
        assert!(text.contains("Bad magic number in super-block"), "{text}");
        assert_eq!(top_at(&bed.mp), None);
    }

    #[test]
    fn mount_wrong_fstype() {
        let Some(bed) = bed("mount_wrong_fstype") else { return };
        let rt = rt();
        let c = ctx();
        let mut m = Mount::new(bed.spec("xfs", false));
        let check = rt.block_on(m.check(&c));
        assert!(!check.ok && check.notes.join("\n").contains("holds a ext4 filesystem, not xfs"), "{check:?}");
        let text = failed(rt.block_on(m.start(&c)));
        assert!(text.contains("wrong filesystem type"), "{text}");
        assert!(text.contains("the device holds a ext4 filesystem, not xfs"), "{text}");
        assert_eq!(top_at(&bed.mp), None);

        let mut m = Mount::new(bed.spec("nosuchfs", false));
        let check = rt.block_on(m.check(&c));
        assert!(!check.ok && check.notes.join("\n").contains("unknown filesystem type nosuchfs"), "{check:?}");
        let text = failed(rt.block_on(m.start(&c)));
        assert!(text.contains("does not know filesystem type nosuchfs"), "{text}");

        // An image file is not a block device: attach it first.
        let mut m = Mount::new(bed.spec("ext4", true));
        m.spec.device = bed.dir.path().join("shared.img");
        assert!(failed(rt.block_on(m.start(&c))).contains("not a block device"));
    }

    #[test]
    fn mount_busy_unmount_kills_holders() {
        let Some(bed) = bed("mount_busy_unmount_kills_holders") else { return };
        let rt = rt();
        let c = ctx();
        let mut m = Mount::new(bed.spec("ext4", false));
        m.set_term_grace(Duration::from_millis(500));
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        let mp = bed.mp.display().to_string();
        // One sits in it, one holds a file open and ignores SIGTERM.
        let sitter = ChildGuard(
            std::process::Command::new("sh").args(["-c", &format!("cd '{mp}' && exec sleep 1000")]).spawn().unwrap(),
        );
        let stubborn = ChildGuard(
            std::process::Command::new("sh")
                .args(["-c", &format!("trap '' TERM; exec 3>'{mp}/held'; exec sleep 1000")])
                .spawn()
                .unwrap(),
        );
        let entry = top_at(&bed.mp).unwrap();
        poll_until("both hold the filesystem", T, || {
            let pids: Vec<i32> = holders(entry.major, entry.minor).iter().map(|h| h.pid).collect();
            pids.contains(&sitter.pid()) && pids.contains(&stubborn.pid())
        });
        let found = holders(entry.major, entry.minor);
        let s = found.iter().find(|h| h.pid == sitter.pid()).unwrap();
        assert_eq!(s.comm, "sleep");
        assert!(s.uses.iter().any(|u| u.starts_with("cwd ")), "{s}");
        let h = found.iter().find(|h| h.pid == stubborn.pid()).unwrap();
        assert!(h.uses.iter().any(|u| u.starts_with("fd 3 ") && u.ends_with("/held")), "{h}");

        // This process itself holding a file: never signalled, a failure that says so
        // (before anyone else is signalled, since the unmount could not succeed anyway).
        let own = std::fs::File::create(bed.mp.join("mine")).unwrap();
        let text = failed(rt.block_on(m.stop(&c)));
        assert!(text.contains("this agent itself holds it") && text.contains("/mine"), "{text}");
        drop(own);

        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);
        assert_eq!(top_at(&bed.mp), None);
        let mut sitter = sitter;
        let mut stubborn = stubborn;
        let status = |g: &mut ChildGuard| {
            let mut st = None;
            poll_until("the holder is reaped", T, || {
                st = g.0.try_wait().unwrap();
                st.is_some()
            });
            st.unwrap().signal()
        };
        assert_eq!(status(&mut sitter), Some(libc::SIGTERM));
        assert_eq!(status(&mut stubborn), Some(libc::SIGKILL));
    }

    #[test]
    fn mount_check_resolves_symlinks() {
        let Some(bed) = bed("mount_check_resolves_symlinks") else { return };
        let rt = rt();
        let c = ctx();
        let link = bed.dir.path().join("by-id-disk");
        std::os::unix::fs::symlink(bed.lp.path(), &link).unwrap();
        let mut spec = bed.spec("ext4", true);
        spec.device = link.clone();
        let mut m = Mount::new(spec.clone());
        let check = rt.block_on(m.check(&c));
        assert!(check.ok, "{check:?}");
        assert!(check.notes[0].starts_with(&format!("device {} resolves to {} (7:", link.display(), bed.dev())));
        assert_eq!(m.resolved_device(), Some(bed.lp.path()));
        // The link goes away (udev has not recreated it yet): start uses what check resolved.
        std::fs::remove_file(&link).unwrap();
        assert_eq!(rt.block_on(m.start(&c)), OpOutcome::Ok);
        assert_eq!(top_at(&bed.mp).unwrap().source, bed.dev());
        assert_eq!(rt.block_on(m.monitor(&c)), OpOutcome::Ok);
        assert_eq!(rt.block_on(m.stop(&c)), OpOutcome::Ok);

        // A node that does not see the device (and has nothing mounted) is not running it.
        let mut unseen = spec.clone();
        unseen.device = bed.dir.path().join("no-such-device");
        assert_eq!(rt.block_on(Mount::new(unseen).monitor(&c)), OpOutcome::NotRunning);

        let mut bad = spec.clone();
        bad.mountpoint = bed.dir.path().join("no").join("such").join("dir");
        let check = rt.block_on(Mount::new(bad).check(&c));
        assert!(!check.ok && check.notes.join("\n").contains("nor its parent directory exists"), "{check:?}");
        let mut bad = spec;
        bad.device = bed.dir.path().join("shared.img");
        let check = rt.block_on(Mount::new(bad).check(&c));
        assert!(!check.ok && check.notes.join("\n").contains("is not a block device"), "{check:?}");
    }

    /// The group's disk and filesystem move from node A to node B over the two paths to
    /// one disk: the filesystem never touches the reservation, and B sees A's data.
    #[test]
    fn disk_then_mount_fail_over() {
        let Some(mut bed) = bed("disk_then_mount_fail_over") else { return };
        bed.second = Some(LoopDev::attach(&bed.dir.path().join("shared.img")));
        let rt = rt();
        let path_a = bed.lp.path().to_path_buf();
        let path_b = bed.second.as_ref().unwrap().path().to_path_buf();
        let (mut ca, mut cb) = (ctx(), ctx());
        ca.generation = Epoch { counter: 3, node: 0, forced: false };
        (cb.node, cb.node_index, cb.generation) = ("b".into(), 1, Epoch { counter: 4, node: 1, forced: false });

        let mut disk_a = Disk::new(DiskSpec { device: path_a.clone() });
        let mut fs_a = Mount::new(bed.spec("ext4", true));
        assert_eq!(rt.block_on(disk_a.start(&ca)), OpOutcome::Ok);
        assert_eq!(rt.block_on(fs_a.start(&ca)), OpOutcome::Ok);
        let payload: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
        std::fs::write(bed.mp.join("payload"), &payload).unwrap();
        nix::unistd::sync();
        assert_eq!(rt.block_on(disk_a.monitor(&ca)), OpOutcome::Ok);
        assert_eq!(rt.block_on(fs_a.monitor(&ca)), OpOutcome::Ok);
        assert_eq!(disk::read_owner(&path_b).unwrap().unwrap().node, "a");
        assert_eq!(rt.block_on(fs_a.stop(&ca)), OpOutcome::Ok);
        assert_eq!(rt.block_on(disk_a.stop(&ca)), OpOutcome::Ok);

        let mut disk_b = Disk::new(DiskSpec { device: path_b.clone() });
        let mut spec_b = bed.spec("ext4", true);
        spec_b.device = path_b.clone();
        let mut fs_b = Mount::new(spec_b);
        assert!(rt.block_on(fs_b.check(&cb)).ok);
        assert_eq!(rt.block_on(disk_b.start(&cb)), OpOutcome::Ok);
        assert_eq!(rt.block_on(fs_b.start(&cb)), OpOutcome::Ok);
        assert_eq!(std::fs::read(bed.mp.join("payload")).unwrap(), payload);
        assert!(failed(rt.block_on(fs_a.monitor(&ca))).contains("instead of"), "A's path is not the one mounted");
        assert!(failed(rt.block_on(disk_a.monitor(&ca))).contains("now held by node b"));
        assert_eq!(rt.block_on(fs_b.stop(&cb)), OpOutcome::Ok);
        assert_eq!(rt.block_on(disk_b.stop(&cb)), OpOutcome::Ok);
        run(&["e2fsck", "-f", "-n", path_b.to_str().unwrap()]);
    }
}
