//! The cgroups of process resources: finding the hierarchy, creating a cgroup, listing,
//! signalling and killing its processes, and removing it.
//!
//! Two layouts, chosen at run time by [`Hierarchy::detect`]:
//!
//! - **cgroup v1** (`/sys/fs/cgroup` is a tmpfs of per-controller mounts): the cgroup is
//!   `freezer/takeover/<name>`, plus `pids/takeover/<name>` when the pids controller is
//!   mounted (joined too, so `pids.current` counts the tasks and `pids.max = 0` can forbid
//!   forks while killing). Killing is freeze, SIGKILL every pid of `cgroup.procs`, thaw,
//!   repeated until the cgroup is empty: a frozen process can neither fork nor exit, so
//!   nothing escapes between reading the list and signalling it, and no listed pid can
//!   be reused meanwhile.
//! - **cgroup v2** (`/sys/fs/cgroup` is cgroup2, or, on a hybrid machine without a v1
//!   freezer, `/sys/fs/cgroup/unified`): the cgroup is `takeover.slice/<name>`. Killing
//!   is a write to `cgroup.kill` (Linux 5.14+), which the kernel applies atomically to
//!   the whole subtree; without it, the same freeze/kill/thaw loop with `cgroup.freeze`.
//!
//! Zombies are not members of a cgroup (the kernel unlinks a task at exit, before it is
//! reaped), so a cgroup whose processes all died is empty and can be removed even if its
//! main process is still an unreaped child of the agent.
//!
//! Every loop here polls with a deadline. The same code serves async callers (the
//! resource's operations, cancellation-safe: a dropped freeze is undone by a guard) and
//! blocking ones (start-up leftover cleanup, `Drop`), see [`Waiter`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory holding takeover's cgroups in each v1 hierarchy.
pub const V1_PARENT: &str = "takeover";
/// The directory holding takeover's cgroups in the v2 hierarchy.
pub const V2_PARENT: &str = "takeover.slice";
/// How long a freeze may take before signalling goes ahead anyway. Freezing waits for
/// every task to reach the refrigerator; one in uninterruptible sleep can delay that.
pub const FREEZE_WAIT: Duration = Duration::from_secs(1);
/// How often cgroup state is polled.
pub const CGROUP_POLL: Duration = Duration::from_millis(10);

/// How a loop here waits between polls: on tokio's timer (async callers) or by sleeping
/// the thread (blocking callers, driven by [`block_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    Async,
    Blocking,
}

impl Waiter {
    pub async fn sleep(self, d: Duration) {
        match self {
            Waiter::Async => tokio::time::sleep(d).await,
            Waiter::Blocking => std::thread::sleep(d),
        }
    }
}

/// Run a future whose every wait is [`Waiter::Blocking`] to completion on this thread.
/// Such a future never returns `Pending`, so one poll finishes it; no runtime is needed,
/// and it may be called from inside one (it blocks that thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a Waiter::Blocking future never waits on a waker"),
    }
}

fn is_fs(path: &Path, magic: nix::sys::statfs::FsType) -> bool {
    statfs(path).map(|it| it.filesystem_type() == magic).unwrap_or(false)
}

fn is_gone(e: &io::Error) -> bool {
    // ENODEV: a cgroup file read while its directory is being removed.
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// A cgroup hierarchy takeover can put processes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the mount points of the freezer and pids controllers (at least one).
    V1 { freezer: Option<PathBuf>, pids: Option<PathBuf> },
    /// cgroup v2 mounted at `root`. `use_kill`: use `cgroup.kill` where the kernel has it
    /// (tests turn it off to exercise the freeze loop).
    V2 { root: PathBuf, use_kill: bool },
}

impl Hierarchy {
    /// The hierarchy this machine offers, in order of preference: cgroup2 at
    /// `/sys/fs/cgroup` (unified), a v1 freezer, cgroup2 at `/sys/fs/cgroup/unified`
    /// (hybrid without a freezer), a v1 pids controller alone.
    pub fn detect() -> io::Result<Hierarchy> {
        let base = Path::new(CGROUP_ROOT);
        if is_fs(base, CGROUP2_SUPER_MAGIC) {
            return Ok(Hierarchy::V2 { root: base.to_path_buf(), use_kill: true });
        }
        let freezer = Some(base.join("freezer")).filter(|it| is_fs(it, CGROUP_SUPER_MAGIC));
        let pids = Some(base.join("pids")).filter(|it| is_fs(it, CGROUP_SUPER_MAGIC));
        if freezer.is_some() {
            return Ok(Hierarchy::V1 { freezer, pids });
        }
        let unified = base.join("unified");
        if is_fs(&unified, CGROUP2_SUPER_MAGIC) {
            return Ok(Hierarchy::V2 { root: unified, use_kill: true });
        }
        if pids.is_some() {
            return Ok(Hierarchy::V1 { freezer: None, pids });
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup hierarchy under {CGROUP_ROOT}: neither cgroup2 nor a v1 freezer or pids mount"),
        ))
    }

    /// Every hierarchy mounted on this machine that takeover might have used: where
    /// leftovers are looked for.
    pub fn all_mounted() -> Vec<Hierarchy> {
        let base = Path::new(CGROUP_ROOT);
        let mut out = Vec::new();
        if is_fs(base, CGROUP2_SUPER_MAGIC) {
            out.push(Hierarchy::V2 { root: base.to_path_buf(), use_kill: true });
            return out;
        }
        let freezer = Some(base.join("freezer")).filter(|it| is_fs(it, CGROUP_SUPER_MAGIC));
        let pids = Some(base.join("pids")).filter(|it| is_fs(it, CGROUP_SUPER_MAGIC));
        if freezer.is_some() || pids.is_some() {
            out.push(Hierarchy::V1 { freezer, pids });
        }
        let unified = base.join("unified");
        if is_fs(&unified, CGROUP2_SUPER_MAGIC) {
            out.push(Hierarchy::V2 { root: unified, use_kill: true });
        }
        out
    }

    /// The directories holding takeover's cgroups (one per mounted controller on v1).
    pub fn parents(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V1 { freezer, pids } => freezer.iter().chain(pids.iter()).map(|it| it.join(V1_PARENT)).collect(),
            Hierarchy::V2 { root, .. } => vec![root.join(V2_PARENT)],
        }
    }

    /// The cgroup called `name` (a single path component) in this hierarchy.
    pub fn cgroup(&self, name: &str) -> Cgroup {
        Cgroup { hier: self.clone(), name: name.to_string() }
    }

    /// For people: "cgroup v1 (freezer ..., pids ...)" or "cgroup v2 at ...".
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V1 { freezer, pids } => {
                let parts: Vec<String> = freezer
                    .iter()
                    .map(|it| format!("freezer at {}", it.display()))
                    .chain(pids.iter().map(|it| format!("pids at {}", it.display())))
                    .collect();
                format!("cgroup v1 ({})", parts.join(", "))
            }
            Hierarchy::V2 { root, .. } => format!("cgroup v2 at {}", root.display()),
        }
    }

    /// The names of takeover's cgroups here that start with `prefix`.
    pub fn names_with_prefix(&self, prefix: &str) -> io::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for parent in self.parents() {
            let entries = match fs::read_dir(&parent) {
                Ok(it) => it,
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir()
                    && let Some(name) = entry.file_name().to_str()
                    && name.starts_with(prefix)
                {
                    out.insert(name.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Remove takeover's parent directories if they hold no cgroup any more. Another
    /// agent may be creating a cgroup in one at the same moment: [`Cgroup::create`]
    /// retries if its parent vanishes.
    pub fn remove_parents_if_unused(&self) {
        for parent in self.parents() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// The freeze control of a cgroup.
#[derive(Clone, Debug)]
enum Freezer {
    /// `freezer.state`: write `FROZEN`/`THAWED`, reads `FREEZING` until done.
    V1(PathBuf),
    /// `cgroup.freeze` (write `1`/`0`) and `cgroup.events` (`frozen 1` once done).
    V2 { freeze: PathBuf, events: PathBuf },
}

impl Freezer {
    fn freeze(&self) -> io::Result<()> {
        match self {
            Freezer::V1(state) => fs::write(state, "FROZEN"),
            Freezer::V2 { freeze, .. } => fs::write(freeze, "1"),
        }
    }

    fn thaw(&self) -> io::Result<()> {
        match self {
            Freezer::V1(state) => fs::write(state, "THAWED"),
            Freezer::V2 { freeze, .. } => fs::write(freeze, "0"),
        }
    }

    fn is_frozen(&self) -> bool {
        match self {
            Freezer::V1(state) => fs::read_to_string(state).is_ok_and(|it| it.trim() == "FROZEN"),
            Freezer::V2 { events, .. } => {
                fs::read_to_string(events).is_ok_and(|it| it.lines().any(|l| l == "frozen 1"))
            }
        }
    }
}

/// Thaws on drop: a frozen cgroup is never left behind, even by a dropped future.
struct Frozen(Option<Freezer>);

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = f.thaw();
        }
    }
}

/// What [`Cgroup::destroy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// The processes found at the start (and sent SIGTERM if there was a grace period).
    pub found: Vec<i32>,
    /// The grace period ran out (or there was none) with processes left, so they were
    /// SIGKILLed.
    pub killed: bool,
}

/// One cgroup: `takeover/<name>` in each v1 hierarchy, or `takeover.slice/<name>` on v2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    hier: Hierarchy,
    name: String,
}

impl Cgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hier
    }

    /// Its directories: freezer first, then pids on v1; the one directory on v2.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.hier.parents().into_iter().map(|it| it.join(&self.name)).collect()
    }

    /// Does any of its directories exist?
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|it| it.is_dir())
    }

    fn freezer(&self) -> Option<Freezer> {
        match &self.hier {
            Hierarchy::V1 { freezer: Some(f), .. } => {
                Some(Freezer::V1(f.join(V1_PARENT).join(&self.name).join("freezer.state")))
            }
            Hierarchy::V1 { freezer: None, .. } => None,
            Hierarchy::V2 { root, .. } => {
                let dir = root.join(V2_PARENT).join(&self.name);
                // Linux 5.2+.
                dir.join("cgroup.freeze")
                    .exists()
                    .then(|| Freezer::V2 { freeze: dir.join("cgroup.freeze"), events: dir.join("cgroup.events") })
            }
        }
    }

    /// `cgroup.kill` if this is v2, it is to be used and the kernel has it (5.14+).
    fn kill_file(&self) -> Option<PathBuf> {
        match &self.hier {
            Hierarchy::V2 { root, use_kill: true } => {
                Some(root.join(V2_PARENT).join(&self.name).join("cgroup.kill")).filter(|it| it.exists())
            }
            _ => None,
        }
    }

    /// Which kill method applies, for people.
    pub fn kill_method(&self) -> &'static str {
        if self.kill_file().is_some() {
            "cgroup.kill"
        } else if self.freezer().is_some() {
            "freeze, kill, thaw"
        } else {
            "kill every listed process (no freezer)"
        }
    }

    /// Create its directories (and takeover's parents). Existing ones are fine. On
    /// failure, whatever this call created is removed again.
    pub fn create(&self) -> io::Result<()> {
        let mut made = Vec::new();
        for dir in self.dirs() {
            match mkdir_in_parent(&dir) {
                Ok(true) => made.push(dir),
                Ok(false) => {}
                Err(e) => {
                    for it in made.iter().rev() {
                        let _ = fs::remove_dir(it);
                    }
                    self.hier.remove_parents_if_unused();
                    return Err(io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display())));
                }
            }
        }
        Ok(())
    }

    /// Its `cgroup.procs` files, opened for writing (close-on-exec), one per directory. A
    /// child joins the cgroup by writing `0` (meaning "me") to each.
    pub fn open_procs(&self) -> io::Result<Vec<File>> {
        self.dirs()
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
            })
            .collect()
    }

    /// The processes in it and its descendants (in any of its directories), sorted.
    /// Excludes this process and pids below 2, which are never signalled.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        let mut set = BTreeSet::new();
        for dir in self.dirs() {
            collect_procs(&dir, &mut set)?;
        }
        let own = std::process::id() as i32;
        set.retain(|&pid| pid >= 2 && pid != own);
        Ok(set.into_iter().collect())
    }

    /// No live process in it. An unreadable cgroup counts as populated.
    pub fn is_empty(&self) -> bool {
        self.procs().is_ok_and(|it| it.is_empty())
    }

    /// The number of tasks (threads, zombies not yet reaped included) the v1 pids
    /// controller counts, if it is joined.
    pub fn pids_current(&self) -> Option<u64> {
        let Hierarchy::V1 { pids: Some(p), .. } = &self.hier else { return None };
        fs::read_to_string(p.join(V1_PARENT).join(&self.name).join("pids.current")).ok()?.trim().parse().ok()
    }

    /// Freeze (if it can), send each of `sigs` to every process in it, thaw. Returns the
    /// processes signalled. If the freeze does not complete within [`FREEZE_WAIT`] (a
    /// task in uninterruptible sleep), signals are sent anyway.
    pub async fn signal_all(&self, sigs: &[Signal], w: Waiter) -> io::Result<Vec<i32>> {
        // A freeze that cannot be written (the directory is going away) is skipped.
        let frozen = Frozen(self.freezer().filter(|f| f.freeze().is_ok()));
        if let Some(f) = &frozen.0 {
            let deadline = Instant::now() + FREEZE_WAIT;
            while !f.is_frozen() && Instant::now() < deadline {
                w.sleep(CGROUP_POLL).await;
            }
        }
        let pids = self.procs()?;
        for &pid in &pids {
            for &sig in sigs {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        drop(frozen);
        Ok(pids)
    }

    /// SIGKILL everything in it until it is empty or `wait` has passed (v2: `cgroup.kill`;
    /// otherwise freeze, kill, thaw, repeated). Returns the survivors (empty on success).
    pub async fn kill_all(&self, wait: Duration, w: Waiter) -> io::Result<Vec<i32>> {
        let deadline = Instant::now() + wait;
        if let Hierarchy::V1 { pids: Some(p), .. } = &self.hier {
            // Forks fail from now on, even in a process the freezer has not caught yet.
            let _ = fs::write(p.join(V1_PARENT).join(&self.name).join("pids.max"), "0");
        }
        loop {
            if let Some(k) = self.kill_file() {
                // A failed write shows as survivors at the deadline.
                let _ = fs::write(&k, "1");
            } else {
                self.signal_all(&[Signal::SIGKILL], w).await?;
            }
            w.sleep(CGROUP_POLL).await;
            let left = self.procs()?;
            if left.is_empty() || Instant::now() >= deadline {
                return Ok(left);
            }
        }
    }

    /// Poll until it is empty or `wait` has passed. Returns what is left.
    pub async fn wait_empty(&self, wait: Duration, w: Waiter) -> io::Result<Vec<i32>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = self.procs()?;
            if left.is_empty() || Instant::now() >= deadline {
                return Ok(left);
            }
            w.sleep(CGROUP_POLL).await;
        }
    }

    /// Remove its directories (descendants first), then takeover's parents if unused.
    /// Fails with `EBUSY` if a process is (still) in it.
    fn remove_once(&self) -> io::Result<()> {
        for dir in self.dirs() {
            remove_tree(&dir).map_err(|e| io::Error::new(e.kind(), format!("cannot remove {}: {e}", dir.display())))?;
        }
        self.hier.remove_parents_if_unused();
        Ok(())
    }

    /// Remove its directories, retrying while the kernel still reports them busy, up to
    /// `wait`. For a cgroup no process is meant to be in (a probe).
    pub async fn remove(&self, wait: Duration, w: Waiter) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            match self.remove_once() {
                Err(e) if is_busy(&e) && Instant::now() < deadline => w.sleep(CGROUP_POLL).await,
                other => return other,
            }
        }
    }

    /// Empty it and remove it. With a non-zero `grace`: SIGTERM (and SIGCONT) to every
    /// process, and up to `grace` for them to exit. Then whatever is left is SIGKILLed
    /// ([`kill_all`](Self::kill_all)) and the directories removed, within `kill_wait`.
    /// A process that joins after the cgroup was seen empty (a spawn that was in flight)
    /// makes the removal fail with `EBUSY`, and is killed in turn. An error means
    /// processes survived or a directory could not be removed: the cgroup may still be
    /// populated.
    pub async fn destroy(&self, grace: Duration, kill_wait: Duration, w: Waiter) -> io::Result<Destroyed> {
        let mut report = Destroyed::default();
        if !self.exists() {
            return Ok(report);
        }
        let mut left = if grace.is_zero() {
            report.found = self.procs()?;
            report.found.clone()
        } else {
            report.found = self.signal_all(&[Signal::SIGTERM, Signal::SIGCONT], w).await?;
            self.wait_empty(grace, w).await?
        };
        let deadline = Instant::now() + kill_wait;
        loop {
            if !left.is_empty() {
                report.killed = true;
                for pid in &left {
                    if !report.found.contains(pid) {
                        report.found.push(*pid);
                    }
                }
                left = self.kill_all(deadline.saturating_duration_since(Instant::now()), w).await?;
                if !left.is_empty() {
                    return Err(io::Error::other(format!(
                        "cgroup {} still has live processes after SIGKILL: {left:?}",
                        self.name
                    )));
                }
            }
            match self.remove_once() {
                Ok(()) => return Ok(report),
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    w.sleep(CGROUP_POLL).await;
                    left = self.procs()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// EBUSY, also after [`Cgroup::remove_once`] wrapped it with the path.
fn is_busy(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ResourceBusy || e.raw_os_error() == Some(libc::EBUSY)
}

/// `mkdir dir`, creating its parent (one level) if missing. `Ok(true)` if this call
/// created `dir`. Retries if another agent removes the parent in between.
fn mkdir_in_parent(dir: &Path) -> io::Result<bool> {
    for _ in 0..10 {
        match fs::create_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = dir.parent().ok_or(e)?;
                match fs::create_dir(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("its parent keeps disappearing"))
}

/// Add the pids of `dir/cgroup.procs` and of every descendant cgroup to `out`. A
/// directory that vanished meanwhile contributes nothing.
fn collect_procs(dir: &Path, out: &mut BTreeSet<i32>) -> io::Result<()> {
    match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => out.extend(text.lines().filter_map(|it| it.trim().parse::<i32>().ok())),
        Err(e) if is_gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    for sub in subdirs(dir)? {
        collect_procs(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if is_gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// rmdir `dir` and its descendant cgroups, deepest first. Missing is fine.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Thaws the freezer cgroups (v1 `freezer.state`, v2 `cgroup.freeze`) `pid` is in.
///
/// A process in a frozen cgroup holds a SIGKILL until the cgroup is thawed: whoever kills
/// every process of a node (a power-off, `fence-local`) thaws them, or a killer that was
/// itself killed while it had frozen a cgroup (the guard, an agent) leaves them stuck.
pub fn thaw_cgroups_of(pid: i32) {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return };
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let path = path.trim_start_matches('/');
        let files: Vec<(PathBuf, &str)> = if controllers.split(',').any(|it| it == "freezer") {
            vec![(Path::new("/sys/fs/cgroup/freezer").join(path).join("freezer.state"), "THAWED")]
        } else if controllers.is_empty() {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .map(|root| (Path::new(root).join(path).join("cgroup.freeze"), "0"))
                .collect()
        } else {
            continue;
        };
        for (file, thawed) in files {
            if file.exists() {
                let _ = fs::write(&file, thawed);
            }
        }
    }
}
