//! The group's application process: start it, watch it, stop it, and clean up after a
//! dead agent.
//!
//! A service group runs one application (an argv from the config) while its node is
//! active. This module owns that process:
//!
//! - **It dies with its agent.** Every service is spawned with
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)` and re-checks `getppid()` right after, so a child
//!   forked just as the agent died exits at once instead of running unsupervised.
//!   `PDEATHSIG` fires when the parent *thread* that forked the child exits, not the
//!   process. Tokio's blocking-pool threads exit when idle, and a request may come from
//!   any thread, so all spawning happens on one dedicated, long-lived thread owned by
//!   [`ServiceSupervisor`]. That thread lives as long as the supervisor or any
//!   [`RunningService`] it started.
//! - **It runs in its own process group** (the child calls `setpgid(0, 0)`), so
//!   [`RunningService::stop`] can signal the whole group, grandchildren included.
//! - **It leaves a pid file**, `<pid> <starttime>\n` written durably before
//!   [`ServiceSupervisor::start`] returns. If the agent dies hard, `PDEATHSIG` kills the
//!   service's main process, but daemonised grandchildren can survive in its process
//!   group. The next agent calls [`kill_leftovers`] before anything else. The start time
//!   (field 22 of `/proc/<pid>/stat`) means a reused pid is never killed.
//!
//! **Exit notification** is by polling. [`RunningService::try_wait`] and the cancel-safe
//! [`RunningService::wait`] report the main process's exit status *without reaping it*
//! (`waitid(WNOWAIT)`), so the zombie keeps the process-group id reserved until
//! [`RunningService::stop`] has cleaned the group. After the service exits by itself the
//! agent should still call `stop`, which kills anything left in the group, reaps the
//! main process and removes the pid file.
//!
//! Dropping a [`RunningService`] without calling `stop` SIGKILLs its process group. The
//! supervisor thread reaps it and the pid file stays for [`kill_leftovers`].
//!
//! The `/proc` helpers here ([`ProcStat`], [`read_pidfile`], [`write_pidfile`]) are also
//! used by [`crate::fence`]. The agent should use [`write_own_pidfile`] for its own pid
//! file, which `takeover fence-local` reads.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How long `stop` and `kill_leftovers` wait for a process group to disappear after
/// SIGKILL. A SIGKILLed process normally dies within milliseconds. Only a process stuck
/// in uninterruptible sleep (`D`, e.g. on a dead NFS server) takes longer.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often process-group and session membership is polled.
pub(crate) const GROUP_POLL: Duration = Duration::from_millis(10);

/// How often [`RunningService::wait`] polls for the main process's exit.
pub const EXIT_POLL: Duration = Duration::from_millis(50);

/// How often the supervisor thread retries reaping services killed by `Drop`.
const REAP_POLL: Duration = Duration::from_millis(50);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service spec has an empty argv.
    #[error("service argv is empty")]
    EmptyArgv,
    /// The log file could not be opened for appending.
    #[error("cannot open service log {path}: {source}")]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The program could not be spawned.
    #[error("cannot spawn {program:?}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// The cause.
        source: io::Error,
    },
    /// `/proc/<pid>/stat` of the new child could not be read.
    #[error("cannot read /proc/{pid}/stat: {source}")]
    ProcStat {
        /// The child.
        pid: i32,
        /// The cause.
        source: io::Error,
    },
    /// The pid file could not be read, written, removed or parsed.
    #[error("pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The cause (`InvalidData` if malformed or naming a forbidden pid).
        source: io::Error,
    },
    /// Scanning `/proc` failed.
    #[error("scanning /proc: {0}")]
    Proc(io::Error),
    /// A process group still had live members when the kill wait ran out.
    #[error("process group {pgid} still has live processes after SIGKILL: {pids:?}")]
    Survivors {
        /// The process group.
        pgid: i32,
        /// Its live members at the last scan.
        pids: Vec<i32>,
    },
    /// The supervisor thread is gone (it panicked). Nothing more can be spawned.
    #[error("service supervisor thread is gone")]
    SupervisorGone,
    /// The supervisor thread could not be created.
    #[error("cannot create service supervisor thread: {0}")]
    Thread(io::Error),
}

/// Result type of this module.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessExit {
    /// It called `exit` with this status.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl ProcessExit {
    /// `true` for `Code(0)`.
    pub fn success(self) -> bool {
        self == ProcessExit::Code(0)
    }

    fn from_siginfo(code: i32, status: i32) -> Self {
        if code == libc::CLD_EXITED { ProcessExit::Code(status) } else { ProcessExit::Signal(status) }
    }
}

impl fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProcessExit::Code(c) => write!(f, "exited with status {c}"),
            ProcessExit::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({sig})"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------

/// The fields of `/proc/<pid>/stat` that takeover uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 1.
    pub pid: i32,
    /// Field 3: `R`, `S`, `D`, `Z`, `T`, ...
    pub state: u8,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: process group id.
    pub pgrp: i32,
    /// Field 6: session id.
    pub session: i32,
    /// Field 20.
    pub num_threads: i64,
    /// Field 22: start time after boot, in clock ticks. With `pid` it identifies a
    /// process: a reused pid has a different start time.
    pub starttime: u64,
}

impl ProcStat {
    /// Read `/proc/<pid>/stat`. `Ok(None)` if there is no such process.
    pub fn read(pid: i32) -> io::Result<Option<ProcStat>> {
        match fs::read(format!("/proc/{pid}/stat")) {
            Ok(bytes) => ProcStat::parse(&bytes)
                .map(Some)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat"))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Parse the contents of a `/proc/<pid>/stat` file. The command name (field 2) may
    /// contain spaces and parentheses, so fields are counted from after the *last* `)`.
    pub fn parse(stat: &[u8]) -> Option<ProcStat> {
        let open = stat.iter().position(|&b| b == b'(')?;
        let close = stat.iter().rposition(|&b| b == b')')?;
        let pid = std::str::from_utf8(&stat[..open]).ok()?.trim().parse().ok()?;
        let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
        // rest[0] is field 3 (state), so field N is rest[N - 3].
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let state = *f.first()?.as_bytes().first()?;
        Some(ProcStat {
            pid,
            state,
            ppid: f.get(1)?.parse().ok()?,
            pgrp: f.get(2)?.parse().ok()?,
            session: f.get(3)?.parse().ok()?,
            num_threads: f.get(17)?.parse().ok()?,
            starttime: f.get(19)?.parse().ok()?,
        })
    }

    /// A zombie (or dead) process whose threads are all gone. Such a process runs no code.
    /// A zombie group leader with live threads (its main thread called `pthread_exit`)
    /// still counts as alive.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x') && self.num_threads <= 1
    }
}

fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// The pids of all processes (thread-group leaders) now listed in `/proc`.
pub(crate) fn proc_pids() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// All live (not [dead](ProcStat::is_dead)) processes matching `pred`, by one `/proc` scan.
pub(crate) fn scan_live(pred: impl Fn(&ProcStat) -> bool) -> io::Result<Vec<ProcStat>> {
    let mut out = Vec::new();
    for pid in proc_pids()? {
        // A process that vanished during the scan or whose stat is unreadable is skipped.
        if let Ok(Some(st)) = ProcStat::read(pid)
            && !st.is_dead()
            && pred(&st)
        {
            out.push(st);
        }
    }
    Ok(out)
}

/// The live members of process group `pgid`: empty if `kill(-pgid, 0)` says ESRCH or
/// only zombies remain.
pub(crate) fn live_group_members(pgid: i32) -> io::Result<Vec<i32>> {
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return Ok(Vec::new());
    }
    Ok(scan_live(|st| st.pgrp == pgid)?.into_iter().map(|st| st.pid).collect())
}

/// Refuse process-group ids whose signalling could hit init, everything or ourselves.
fn check_pgid(pgid: i32) -> io::Result<()> {
    let own = nix::unistd::getpgrp().as_raw();
    if pgid < 2 || pgid == own || pgid == std::process::id() as i32 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("refusing to signal process group {pgid}")));
    }
    Ok(())
}

/// SIGKILL group `pgid` (re-sending every poll) until it has no live member or `wait`
/// has passed. Blocking. Returns the survivors (empty on success).
fn kill_group_blocking(pgid: i32, wait: Duration) -> io::Result<Vec<i32>> {
    let deadline = Instant::now() + wait;
    loop {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let live = live_group_members(pgid)?;
        if live.is_empty() || Instant::now() >= deadline {
            return Ok(live);
        }
        thread::sleep(GROUP_POLL);
    }
}

/// Poll until group `pgid` has no live member or `wait` has passed. If `resend` is given
/// it is sent to the group on every poll. Returns the survivors (empty on success).
pub(crate) async fn wait_group_empty(pgid: i32, wait: Duration, resend: Option<Signal>) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(sig) = resend {
            let _ = killpg(Pid::from_raw(pgid), sig);
        }
        // An unreadable /proc is treated as "still there" until the deadline.
        let live = live_group_members(pgid).unwrap_or_else(|_| vec![pgid]);
        if live.is_empty() || tokio::time::Instant::now() >= deadline {
            return live;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// `waitid(P_PID, pid, WEXITED | WNOHANG | extra)`: `Ok(None)` while the child runs.
fn waitid_exited(pid: i32, extra: libc::c_int) -> io::Result<Option<ProcessExit>> {
    loop {
        // SAFETY: all-zero is a valid siginfo_t. waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall with a valid out pointer.
        let r =
            unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | extra) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed under WNOHANG).
        let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if si_pid == 0 {
            return Ok(None);
        }
        return Ok(Some(ProcessExit::from_siginfo(info.si_code, status)));
    }
}

/// Report the exit of child `pid` without reaping it.
pub(crate) fn peek_exit(pid: i32) -> io::Result<Option<ProcessExit>> {
    waitid_exited(pid, libc::WNOWAIT)
}

/// Reap child `pid` if it has exited.
pub(crate) fn reap(pid: i32) -> io::Result<Option<ProcessExit>> {
    waitid_exited(pid, 0)
}

// ---------------------------------------------------------------------------------------
// pid files
// ---------------------------------------------------------------------------------------

/// The contents of a pid file: `<pid> <starttime>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidFileEntry {
    /// The process id.
    pub pid: i32,
    /// Its start time, field 22 of `/proc/<pid>/stat`.
    pub starttime: u64,
}

impl PidFileEntry {
    /// Is this exact process (pid *and* start time) still present, possibly as a zombie?
    /// Returns its stat if so.
    pub fn lookup(&self) -> io::Result<Option<ProcStat>> {
        Ok(ProcStat::read(self.pid)?.filter(|st| st.starttime == self.starttime))
    }
}

/// Read a pid file. `Ok(None)` if it does not exist. A malformed file, or one naming
/// pid 0 or 1, is an `InvalidData` error.
pub fn read_pidfile(path: &Path) -> io::Result<Option<PidFileEntry>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut words = text.split_ascii_whitespace();
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some(p), Some(s), None) => p.parse::<i32>().ok().zip(s.parse::<u64>().ok()),
        _ => None,
    };
    match parsed {
        Some((pid, starttime)) if pid >= 2 => Ok(Some(PidFileEntry { pid, starttime })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed pid file (want \"<pid> <starttime>\", pid >= 2): {text:?}"),
        )),
    }
}

/// Write `<pid> <starttime>\n` to `path` durably: write a temporary file next to it,
/// fsync it, rename it over `path`, fsync the directory.
pub fn write_pidfile(path: &Path, entry: PidFileEntry) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid file has no name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        writeln!(f, "{} {}", entry.pid, entry.starttime)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove a pid file durably. A missing file is fine.
pub fn remove_pidfile(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => File::open(d)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Write this process's own `<pid> <starttime>` to `path`, for `takeover fence-local`.
/// The agent should call this at start. It should not remove the file on exit: a stale
/// file is harmless thanks to the start time, and a missing one makes fencing fail.
pub fn write_own_pidfile(path: &Path) -> io::Result<PidFileEntry> {
    let pid = std::process::id() as i32;
    let st = ProcStat::read(pid)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "own /proc entry missing"))?;
    let entry = PidFileEntry { pid, starttime: st.starttime };
    write_pidfile(path, entry)?;
    Ok(entry)
}

// ---------------------------------------------------------------------------------------
// leftovers
// ---------------------------------------------------------------------------------------

/// What [`kill_leftovers`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftoverReport {
    /// There was no pid file: the previous service was stopped cleanly, or never ran.
    NoPidFile,
    /// The process is gone and nothing is left in its process group. The pid file was
    /// removed.
    NotRunning {
        /// The pid from the pid file.
        pid: i32,
    },
    /// The pid now belongs to a different process (a different start time). That process
    /// was left alone and the pid file removed. The old process group cannot still exist:
    /// the kernel does not reuse a pid while a group or session with that id lives.
    PidReused {
        /// The pid from the pid file.
        pid: i32,
    },
    /// Leftover processes were SIGKILLed, and all are gone. The pid file was removed.
    Killed {
        /// The pid from the pid file (the old main process, maybe already dead).
        pid: i32,
        /// Its process group.
        pgid: i32,
        /// The live processes found and killed.
        killed: Vec<i32>,
    },
}

/// Kill what a previous agent's service left behind. Call at agent start, before anything
/// else. Blocking: it waits up to [`KILL_WAIT`] for the killed processes to disappear.
///
/// The pid file's process counts as the leftover service only if its start time matches.
/// If the main process itself is gone (as after `PDEATHSIG`), the live members of its
/// process group are still killed. The group id is the old main pid, and the kernel keeps
/// that number reserved as long as any member lives.
pub fn kill_leftovers(pidfile: &Path) -> Result<LeftoverReport> {
    let pf_err = |source| ServiceError::PidFile { path: pidfile.to_path_buf(), source };
    let Some(entry) = read_pidfile(pidfile).map_err(pf_err)? else {
        return Ok(LeftoverReport::NoPidFile);
    };
    let pid = entry.pid;
    let pgid = pid; // services are spawned as their own group leaders
    check_pgid(pgid).map_err(pf_err)?;

    let leader = ProcStat::read(pid).map_err(ServiceError::Proc)?;
    if let Some(st) = leader {
        if st.starttime != entry.starttime {
            remove_pidfile(pidfile).map_err(pf_err)?;
            return Ok(LeftoverReport::PidReused { pid });
        }
        if st.pgrp != pgid && !st.is_dead() {
            // It moved itself to another group. Kill it individually as well.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    let mut killed = live_group_members(pgid).map_err(ServiceError::Proc)?;
    if let Some(st) = leader
        && !st.is_dead()
        && !killed.contains(&pid)
    {
        killed.push(pid);
    }
    if killed.is_empty() {
        remove_pidfile(pidfile).map_err(pf_err)?;
        return Ok(LeftoverReport::NotRunning { pid });
    }
    let survivors = kill_group_blocking(pgid, KILL_WAIT).map_err(ServiceError::Proc)?;
    if !survivors.is_empty() {
        return Err(ServiceError::Survivors { pgid, pids: survivors });
    }
    remove_pidfile(pidfile).map_err(pf_err)?;
    killed.sort_unstable();
    Ok(LeftoverReport::Killed { pid, pgid, killed })
}

// ---------------------------------------------------------------------------------------
// supervisor
// ---------------------------------------------------------------------------------------

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Program and arguments. `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables (e.g. `TAKEOVER_GROUP`, `TAKEOVER_NODE`,
    /// `TAKEOVER_API`), added to the agent's own environment.
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended to this file (created if missing, mode 0640).
    pub log_path: PathBuf,
    /// `<pid> <starttime>` is written here durably before `start` returns.
    pub pidfile: PathBuf,
}

struct Spawned {
    pid: i32,
    starttime: u64,
}

enum Request {
    Spawn {
        spec: ServiceSpec,
        reply: oneshot::Sender<Result<Spawned>>,
    },
    /// A SIGKILLed service whose main process the thread should reap.
    Reap {
        pid: i32,
    },
    /// Run a closure on the thread (see [`ServiceSupervisor::call`]). It returns the pid
    /// of a child to reap, if any.
    Call(Box<dyn FnOnce() -> Option<i32> + Send>),
}

/// Owns the one thread that forks every service (see the module docs for why). The
/// thread runs until the supervisor and every [`RunningService`] it started are dropped.
#[derive(Debug)]
pub struct ServiceSupervisor {
    tx: mpsc::Sender<Request>,
}

impl ServiceSupervisor {
    /// Start the supervisor thread.
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("takeover-spawner".into())
            .spawn(move || spawner_main(rx))
            .map_err(ServiceError::Thread)?;
        Ok(ServiceSupervisor { tx })
    }

    /// The process-wide supervisor, created on first use. Its thread lives as long as the
    /// process, so children it forks with [`die_with_agent`] get their death signal only
    /// when the agent process dies. Used by the resources (which are created without a
    /// supervisor handle).
    pub fn shared() -> Result<&'static ServiceSupervisor> {
        static SHARED: OnceLock<ServiceSupervisor> = OnceLock::new();
        if let Some(it) = SHARED.get() {
            return Ok(it);
        }
        // A racing caller's extra supervisor is dropped here and its thread exits.
        let fresh = ServiceSupervisor::new()?;
        Ok(SHARED.get_or_init(|| fresh))
    }

    /// Run `f` on the supervisor thread (so that the children it forks are the thread's)
    /// and return its result. `f` runs to completion even if this future is dropped; its
    /// result then has no taker and is handed to `orphan`, also on the supervisor thread,
    /// which cleans up and may return the pid of a child for the thread to reap.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
        orphan: impl FnOnce(T) -> Option<i32> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let job = move || match reply.send(f()) {
            Ok(()) => None,
            Err(unclaimed) => orphan(unclaimed),
        };
        self.tx.send(Request::Call(Box::new(job))).map_err(|_| ServiceError::SupervisorGone)?;
        rx.await.map_err(|_| ServiceError::SupervisorGone)
    }

    /// Have the supervisor thread reap child `pid` once it has exited (after a SIGKILL).
    pub(crate) fn reap_later(&self, pid: i32) {
        let _ = self.tx.send(Request::Reap { pid });
    }

    /// Start a service. The fork happens on the supervisor thread. When this returns
    /// `Ok`, the pid file is on disk. If this future is dropped before the reply arrives,
    /// the supervisor kills the orphaned service.
    pub async fn start(&self, spec: ServiceSpec) -> Result<RunningService> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Spawn { spec: spec.clone(), reply }).map_err(|_| ServiceError::SupervisorGone)?;
        let spawned = rx.await.map_err(|_| ServiceError::SupervisorGone)??;
        Ok(self.running(spec, spawned))
    }

    /// [`start`](Self::start) for non-async callers. Panics if called from within an
    /// async runtime (it blocks).
    pub fn start_blocking(&self, spec: ServiceSpec) -> Result<RunningService> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Spawn { spec: spec.clone(), reply }).map_err(|_| ServiceError::SupervisorGone)?;
        let spawned = rx.blocking_recv().map_err(|_| ServiceError::SupervisorGone)??;
        Ok(self.running(spec, spawned))
    }

    fn running(&self, spec: ServiceSpec, s: Spawned) -> RunningService {
        RunningService {
            pid: s.pid,
            starttime: s.starttime,
            pidfile: spec.pidfile,
            exit: None,
            finished: false,
            supervisor: self.tx.clone(),
        }
    }
}

fn spawner_main(rx: mpsc::Receiver<Request>) {
    let mut to_reap: Vec<i32> = Vec::new();
    loop {
        let msg = if to_reap.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(REAP_POLL) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        match msg {
            Some(Request::Spawn { spec, reply }) => {
                let result = spawn_service(&spec);
                if let Err(Ok(orphan)) = reply.send(result) {
                    // The requester went away: nobody owns this service. Kill it.
                    let _ = killpg(Pid::from_raw(orphan.pid), Signal::SIGKILL);
                    let _ = remove_pidfile(&spec.pidfile);
                    to_reap.push(orphan.pid);
                }
            }
            Some(Request::Reap { pid }) => to_reap.push(pid),
            Some(Request::Call(job)) => to_reap.extend(job()),
            None => {}
        }
        to_reap.retain(|&pid| matches!(reap(pid), Ok(None)));
    }
    // Every handle is gone. Reap what is still pending (all were SIGKILLed), bounded.
    // Anything this thread forked that still runs gets PDEATHSIG when it exits.
    let deadline = Instant::now() + KILL_WAIT;
    while !to_reap.is_empty() && Instant::now() < deadline {
        thread::sleep(REAP_POLL);
        to_reap.retain(|&pid| matches!(reap(pid), Ok(None)));
    }
}

/// Runs on the supervisor thread: fork, exec, write the pid file.
fn spawn_service(spec: &ServiceSpec) -> Result<Spawned> {
    let (program, args) = spec.argv.split_first().ok_or(ServiceError::EmptyArgv)?;
    let log_err = |source| ServiceError::LogFile { path: spec.log_path.clone(), source };
    let log = OpenOptions::new().create(true).append(true).mode(0o640).open(&spec.log_path).map_err(log_err)?;
    let log2 = log.try_clone().map_err(log_err)?;

    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    die_with_agent(&mut cmd);
    // systemd's notification socket is the agent's, not the application's.
    crate::sdnotify::CHILD_ENV.iter().for_each(|name| {
        cmd.env_remove(name);
    });
    let child = cmd.spawn().map_err(|source| ServiceError::Spawn { program: program.clone(), source })?;
    // Dropping a std Child neither kills nor reaps it. From here on the pid is managed
    // with waitid/killpg directly.
    let pid = child.id() as i32;
    drop(child);

    let abort = |err: ServiceError| {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        err
    };
    // The child is unreaped, so its /proc entry exists even if it already exited.
    let starttime = match ProcStat::read(pid) {
        Ok(Some(st)) => st.starttime,
        Ok(None) => {
            let e = io::Error::new(io::ErrorKind::NotFound, "vanished");
            return Err(abort(ServiceError::ProcStat { pid, source: e }));
        }
        Err(source) => return Err(abort(ServiceError::ProcStat { pid, source })),
    };
    if let Err(source) = write_pidfile(&spec.pidfile, PidFileEntry { pid, starttime }) {
        return Err(abort(ServiceError::PidFile { path: spec.pidfile.clone(), source }));
    }
    Ok(Spawned { pid, starttime })
}

/// Make the child of `cmd` get SIGKILL when the thread that forks it exits
/// (`PR_SET_PDEATHSIG`), and exit at once if the agent already died before that was set.
/// Spawn `cmd` only from a long-lived thread: [`ServiceSupervisor`]'s.
pub(crate) fn die_with_agent(cmd: &mut Command) {
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // If the agent died between fork and prctl, we were reparented and the
            // death signal will never come: leave now.
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            Ok(())
        });
    }
}

/// A started service. Its main process is the leader of process group `pgid == pid`.
///
/// The main process is not reaped until [`stop`](Self::stop), so its pid and group id
/// stay reserved and cannot name someone else's processes.
#[derive(Debug)]
pub struct RunningService {
    pid: i32,
    starttime: u64,
    pidfile: PathBuf,
    exit: Option<ProcessExit>,
    finished: bool,
    supervisor: mpsc::Sender<Request>,
}

/// What [`RunningService::stop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// The main process's exit status. `None` if it could not be reaped (still alive
    /// after SIGKILL, or reaped by someone else).
    pub exit: Option<ProcessExit>,
    /// SIGTERM did not empty the group within the timeout, so SIGKILL was sent.
    pub escalated: bool,
    /// Live members of the group left after SIGKILL and [`KILL_WAIT`] (normally empty).
    /// If any are left, the pid file is kept for [`kill_leftovers`].
    pub survivors: Vec<i32>,
    /// Removing the pid file failed.
    pub pidfile_error: Option<String>,
    /// Time from the first signal to the end of the stop.
    pub elapsed: Duration,
}

impl RunningService {
    /// The main process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process group id (equals [`pid`](Self::pid)).
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    /// The main process's start time, as written to the pid file.
    pub fn starttime(&self) -> u64 {
        self.starttime
    }

    /// The main process's exit status if it has exited by itself, without reaping it.
    /// Other processes may remain in its group; call [`stop`](Self::stop) to clean up.
    pub fn try_wait(&mut self) -> io::Result<Option<ProcessExit>> {
        if self.exit.is_none() {
            self.exit = peek_exit(self.pid)?;
        }
        Ok(self.exit)
    }

    /// Wait until the main process exits by itself (polling every [`EXIT_POLL`]).
    /// Cancel-safe, so it can be used in `tokio::select!`.
    pub async fn wait(&mut self) -> io::Result<ProcessExit> {
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Stop the service. SIGTERM (and SIGCONT, in case it is stopped) to the process
    /// group, wait up to `timeout` for the group to empty, then SIGKILL it and wait up to
    /// [`KILL_WAIT`]. Then reap the main process and remove the pid file. Never blocks the
    /// runtime: waiting is by polling with `tokio::time`.
    pub async fn stop(mut self, timeout: Duration) -> StopReport {
        self.finished = true;
        let started = Instant::now();
        let pg = Pid::from_raw(self.pid);
        let _ = killpg(pg, Signal::SIGTERM);
        let _ = killpg(pg, Signal::SIGCONT);
        let mut escalated = false;
        let mut survivors = wait_group_empty(self.pid, timeout, None).await;
        if !survivors.is_empty() {
            escalated = true;
            survivors = wait_group_empty(self.pid, KILL_WAIT, Some(Signal::SIGKILL)).await;
        }
        let mut pidfile_error = None;
        if survivors.is_empty() {
            // Every member is dead, so the main process is a zombie (or already reaped by
            // someone else: ECHILD).
            match reap(self.pid) {
                Ok(Some(exit)) => self.exit = Some(exit),
                Ok(None) => {
                    // Cannot happen for a dead process. Leave it to the supervisor thread.
                    let _ = self.supervisor.send(Request::Reap { pid: self.pid });
                }
                Err(_) => {}
            }
            if let Err(e) = remove_pidfile(&self.pidfile) {
                pidfile_error = Some(e.to_string());
            }
        } else {
            let _ = self.supervisor.send(Request::Reap { pid: self.pid });
        }
        StopReport { exit: self.exit, escalated, survivors, pidfile_error, elapsed: started.elapsed() }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if !matches!(reap(self.pid), Ok(Some(_))) {
            let _ = self.supervisor.send(Request::Reap { pid: self.pid });
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the tests of this crate. Every process a test starts is cleaned
    //! up by a guard, by pid or by the process-group id the test created.

    use super::*;

    /// Whether a root-only test can run: root. Otherwise prints `SKIPPED (needs root):
    /// NAME`, unless `CI=true`, where a skip fails.
    pub fn root_or_skip(name: &str) -> bool {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} needs root; with CI=true a skip is a failure");
        }
        println!("SKIPPED (needs root): {name}");
        false
    }

    /// Poll `cond` until it is true, panicking after `timeout`.
    pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Is this exact process (pid and start time) alive (not a zombie)?
    pub fn alive(pid: i32, starttime: u64) -> bool {
        matches!(ProcStat::read(pid), Ok(Some(st)) if st.starttime == starttime && !st.is_dead())
    }

    pub fn starttime(pid: i32) -> u64 {
        ProcStat::read(pid).unwrap().expect("process exists").starttime
    }

    /// SIGKILLs a process group this test created, on drop.
    pub struct GroupGuard(pub i32);

    impl Drop for GroupGuard {
        fn drop(&mut self) {
            if self.0 >= 2 {
                let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
            }
        }
    }

    /// A direct child of the test. On drop: SIGKILL it (and its group if it leads one),
    /// then reap it.
    pub struct ChildGuard(pub std::process::Child);

    impl ChildGuard {
        pub fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let pid = self.pid();
            if let Ok(Some(st)) = ProcStat::read(pid)
                && st.pgrp == pid
            {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `sh -c SCRIPT sh ARGS...` in its own process group, stdout piped.
    pub fn spawn_sh_group(script: &str, args: &[&str]) -> ChildGuard {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        ChildGuard(child)
    }

    /// A script that proves its process is still alive and able to run code: once the
    /// file `$1` exists it prints "alive". A SIGKILLed process cannot, since it never
    /// returns to user space once the signal is pending. Creating the file *after* the
    /// moment a kill would have happened and then seeing "alive" proves survival
    /// without sleeping.
    pub const HANDSHAKE: &str = r#"while [ ! -e "$1" ]; do sleep 0.01; done; echo alive; exec sleep 600"#;

    /// Read lines from `r` until one is `want`. Panics on EOF: the writer died.
    pub fn expect_line(r: &mut impl io::BufRead, want: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line).expect("read");
            assert!(n > 0, "EOF before {want:?}: the process died");
            if line.trim_end() == want {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use std::io::{BufRead, BufReader};

    fn spec(dir: &Path, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            log_path: dir.join("service.log"),
            pidfile: dir.join("service.pid"),
        }
    }

    fn sh(dir: &Path, script: &str) -> ServiceSpec {
        spec(dir, &["sh", "-c", script])
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn parse_stat_with_awkward_comm() {
        let line = b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 987654 0 0";
        let st = ProcStat::parse(line).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.state, b'S');
        assert_eq!((st.ppid, st.pgrp, st.session), (1, 4242, 4242));
        assert_eq!(st.num_threads, 3);
        assert_eq!(st.starttime, 987654);
        assert!(ProcStat::parse(b"garbage").is_none());
        let own = ProcStat::read(std::process::id() as i32).unwrap().unwrap();
        assert_eq!(own.pid, std::process::id() as i32);
        assert_eq!(own.session, nix::unistd::getsid(None).unwrap().as_raw());
    }

    #[test]
    fn pidfile_roundtrip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        assert_eq!(read_pidfile(&p).unwrap(), None);
        let e = PidFileEntry { pid: 1234, starttime: 5678 };
        write_pidfile(&p, e).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "1234 5678\n");
        assert_eq!(read_pidfile(&p).unwrap(), Some(e));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        for bad in ["", "12", "12 x", "1 5", "0 5", "-5 7", "3 4 5"] {
            fs::write(&p, bad).unwrap();
            let err = read_pidfile(&p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        remove_pidfile(&p).unwrap();
        remove_pidfile(&p).unwrap();
        let own = write_own_pidfile(&p).unwrap();
        assert_eq!(own.pid, std::process::id() as i32);
        assert_eq!(own.lookup().unwrap().unwrap().pid, own.pid);
    }

    #[tokio::test]
    async fn start_writes_pidfile_env_and_appends_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            sh(dir.path(), r#"echo "out $TAKEOVER_GROUP $TAKEOVER_NODE $TAKEOVER_API"; echo "err" >&2; exit 3"#);
        s.env = vec![
            ("TAKEOVER_GROUP".into(), "web".into()),
            ("TAKEOVER_NODE".into(), "n1".into()),
            ("TAKEOVER_API".into(), "http://127.0.0.1:1".into()),
        ];
        fs::write(&s.log_path, "earlier run\n").unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        let mut svc = sup.start(s.clone()).await.unwrap();
        let _g = GroupGuard(svc.pgid());
        assert_eq!(svc.pid(), svc.pgid());

        // The pid file is there as soon as start returns.
        let entry = read_pidfile(&s.pidfile).unwrap().unwrap();
        assert_eq!(entry.pid, svc.pid());
        assert_eq!(entry.starttime, svc.starttime());
        assert_eq!(entry.starttime, starttime(svc.pid()));

        assert_eq!(svc.wait().await.unwrap(), ProcessExit::Code(3));
        // The exit was observed without reaping: the zombie is still there.
        assert_eq!(ProcStat::read(svc.pid()).unwrap().unwrap().state, b'Z');
        let report = svc.stop(Duration::from_secs(5)).await;
        assert_eq!(report.exit, Some(ProcessExit::Code(3)));
        assert!(!report.escalated);
        assert!(report.survivors.is_empty());
        assert_eq!(report.pidfile_error, None);
        assert!(!s.pidfile.exists());

        let log = fs::read_to_string(&s.log_path).unwrap();
        assert!(log.starts_with("earlier run\n"), "{log:?}");
        assert!(log.contains("out web n1 http://127.0.0.1:1\n"), "{log:?}");
        assert!(log.contains("err\n"), "{log:?}");
    }

    #[tokio::test]
    async fn child_is_group_leader_with_pdeathsig() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        let svc = sup.start(spec(dir.path(), &["sleep", "600"])).await.unwrap();
        let _g = GroupGuard(svc.pgid());
        let st = ProcStat::read(svc.pid()).unwrap().unwrap();
        assert_eq!(st.pgrp, svc.pid());
        assert_eq!(st.ppid, std::process::id() as i32);
        // Same session as the agent: fence-local relies on that.
        assert_eq!(st.session, nix::unistd::getsid(None).unwrap().as_raw());
        // exec keeps the death signal: /proc does not show it, but the next tests prove it.
        svc.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn exit_notification_reports_code_and_signal() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();

        let mut svc = sup.start(sh(dir.path(), "exit 7")).await.unwrap();
        let _g = GroupGuard(svc.pgid());
        assert_eq!(svc.wait().await.unwrap(), ProcessExit::Code(7));
        assert_eq!(svc.try_wait().unwrap(), Some(ProcessExit::Code(7)));
        svc.stop(Duration::from_secs(1)).await;

        let mut svc = sup.start(sh(dir.path(), "kill -9 $$")).await.unwrap();
        let _g2 = GroupGuard(svc.pgid());
        let exit = svc.wait().await.unwrap();
        assert_eq!(exit, ProcessExit::Signal(9));
        assert_eq!(exit.to_string(), "killed by signal 9 (SIGKILL)");
        let r = svc.stop(Duration::from_secs(1)).await;
        assert_eq!(r.exit, Some(ProcessExit::Signal(9)));

        // A running service reports nothing yet, and wait() can be raced in select!.
        let mut svc = sup.start(spec(dir.path(), &["sleep", "600"])).await.unwrap();
        let _g3 = GroupGuard(svc.pgid());
        assert_eq!(svc.try_wait().unwrap(), None);
        tokio::select! {
            r = svc.wait() => panic!("sleep 600 exited: {r:?}"),
            _ = std::future::ready(()) => {}
        }
        let r = svc.stop(Duration::from_secs(5)).await;
        assert_eq!(r.exit, Some(ProcessExit::Signal(libc::SIGTERM)));
    }

    #[tokio::test]
    async fn stop_terminates_whole_group_including_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        let svc = sup.start(sh(dir.path(), "sleep 600 & sleep 600 & wait")).await.unwrap();
        let pgid = svc.pgid();
        let _g = GroupGuard(pgid);
        let mut members = vec![];
        poll_until("sh and two sleeps in the group", T, || {
            members = live_group_members(pgid).unwrap();
            members.len() == 3
        });
        let starts: Vec<(i32, u64)> = members.iter().map(|&p| (p, starttime(p))).collect();
        let report = svc.stop(Duration::from_secs(5)).await;
        assert!(!report.escalated, "{report:?}");
        assert!(report.survivors.is_empty());
        assert_eq!(report.exit, Some(ProcessExit::Signal(libc::SIGTERM)));
        assert!(live_group_members(pgid).unwrap().is_empty());
        for (p, st) in starts {
            assert!(!alive(p, st), "{p} survived stop");
        }
        assert!(!dir.path().join("service.pid").exists());
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_when_term_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        // The background sleep inherits the ignored SIGTERM.
        let svc = sup.start(sh(dir.path(), r#"trap "" TERM; sleep 600 & wait; wait"#)).await.unwrap();
        let pgid = svc.pgid();
        let _g = GroupGuard(pgid);
        poll_until("sh and sleep in the group", T, || live_group_members(pgid).unwrap().len() == 2);
        let report = svc.stop(Duration::from_millis(200)).await;
        assert!(report.escalated, "{report:?}");
        assert!(report.survivors.is_empty());
        assert_eq!(report.exit, Some(ProcessExit::Signal(libc::SIGKILL)));
        assert!(report.elapsed >= Duration::from_millis(200));
        assert!(live_group_members(pgid).unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_a_running_service_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        let svc = sup.start(sh(dir.path(), "sleep 600 & wait")).await.unwrap();
        let pgid = svc.pgid();
        let _g = GroupGuard(pgid);
        poll_until("sh and sleep", T, || live_group_members(pgid).unwrap().len() == 2);
        drop(svc);
        poll_until("group gone after drop", T, || live_group_members(pgid).unwrap().is_empty());
        // The supervisor thread reaps the main process.
        poll_until("main process reaped", T, || ProcStat::read(pgid).unwrap().is_none());
    }

    #[test]
    fn start_errors_are_reported_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let sup = ServiceSupervisor::new().unwrap();
        let mut s = spec(dir.path(), &[]);
        assert!(matches!(sup.start_blocking(s.clone()), Err(ServiceError::EmptyArgv)));
        s.argv = vec!["/nonexistent/program".into()];
        assert!(matches!(sup.start_blocking(s.clone()), Err(ServiceError::Spawn { .. })));
        s.argv = vec!["sleep".into(), "600".into()];
        s.pidfile = dir.path().join("no/such/dir/x.pid");
        assert!(matches!(sup.start_blocking(s.clone()), Err(ServiceError::PidFile { .. })));
    }

    /// The PDEATHSIG trap this module is built around: a child whose forking *thread*
    /// exits is killed although the process lives on. This is a negative control: it
    /// proves the effect is real on this kernel, and that the test below would catch a
    /// supervisor that forked on the requesting thread.
    #[test]
    fn control_pdeathsig_fires_when_forking_thread_exits() {
        let child = thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("600").process_group(0);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                    Ok(())
                });
            }
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let mut child = ChildGuard(child);
        let status = child.0.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn service_survives_exit_of_the_thread_that_requested_it() {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let go_arg = go.to_str().unwrap().to_string();
        let sup = ServiceSupervisor::new().unwrap();
        let (tid, svc) = thread::scope(|s| {
            s.spawn(|| {
                let tid = nix::unistd::gettid().as_raw();
                let spec = spec(dir.path(), &["sh", "-c", HANDSHAKE, "sh", &go_arg]);
                (tid, sup.start_blocking(spec).unwrap())
            })
            .join()
            .unwrap()
        });
        let _g = GroupGuard(svc.pgid());
        // The requesting thread is fully gone (it has left our task list). Had it been
        // the forking thread, SIGKILL would have been sent to the child by now.
        poll_until("requesting thread gone", T, || !Path::new(&format!("/proc/self/task/{tid}")).exists());
        fs::write(&go, "").unwrap();
        let log = dir.path().join("service.log");
        let (pid, st) = (svc.pid(), svc.starttime());
        poll_until("service says alive after the thread exited", T, || {
            assert!(alive(pid, st), "service died with its requesting thread");
            fs::read_to_string(&log).unwrap_or_default().contains("alive")
        });
        drop(svc);
    }

    // The service dying with its agent process (SIGKILL of the agent) is proven end to
    // end with the real agent: crates/takeover/tests/e2e.rs,
    // seed_op4_agent_killed_alone_its_service_dies_with_it_and_the_sl_takes_over.

    #[test]
    fn kill_leftovers_kills_a_live_group() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("svc.pid");
        let child = spawn_sh_group("sleep 600 & sleep 600 & wait", &[]);
        let pid = child.pid();
        let mut members = vec![];
        poll_until("three members", T, || {
            members = live_group_members(pid).unwrap();
            members.len() == 3
        });
        let starts: Vec<(i32, u64)> = members.iter().map(|&p| (p, starttime(p))).collect();
        write_pidfile(&pf, PidFileEntry { pid, starttime: starttime(pid) }).unwrap();
        let report = kill_leftovers(&pf).unwrap();
        members.sort_unstable();
        assert_eq!(report, LeftoverReport::Killed { pid, pgid: pid, killed: members });
        for (p, st) in starts {
            assert!(!alive(p, st));
        }
        assert!(!pf.exists());
        assert_eq!(kill_leftovers(&pf).unwrap(), LeftoverReport::NoPidFile);
    }

    #[test]
    fn kill_leftovers_finds_group_members_of_a_dead_leader() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("svc.pid");
        let mut child = spawn_sh_group("sleep 600 & echo $!", &[]);
        let pid = child.pid();
        let leader_start = starttime(pid); // readable: unreaped until we wait
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let orphan: i32 = line.trim().parse().unwrap();
        let _g = GroupGuard(pid);
        assert!(child.0.wait().unwrap().success());
        assert!(ProcStat::read(pid).unwrap().is_none(), "leader reaped");
        let ost = starttime(orphan);
        write_pidfile(&pf, PidFileEntry { pid, starttime: leader_start }).unwrap();
        let report = kill_leftovers(&pf).unwrap();
        assert_eq!(report, LeftoverReport::Killed { pid, pgid: pid, killed: vec![orphan] });
        assert!(!alive(orphan, ost));
    }

    #[test]
    fn kill_leftovers_leaves_a_reused_pid_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("svc.pid");
        let go = dir.path().join("go");
        let mut child = spawn_sh_group(HANDSHAKE, &[go.to_str().unwrap()]);
        let pid = child.pid();
        // Same pid, different start time: some other process now has this pid.
        let st = starttime(pid);
        write_pidfile(&pf, PidFileEntry { pid, starttime: st + 1 }).unwrap();
        assert_eq!(kill_leftovers(&pf).unwrap(), LeftoverReport::PidReused { pid });
        assert!(!pf.exists());
        fs::write(&go, "").unwrap();
        expect_line(&mut BufReader::new(child.0.stdout.take().unwrap()), "alive");
    }

    #[test]
    fn kill_leftovers_of_a_gone_process_just_removes_the_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("svc.pid");
        let mut child = spawn_sh_group("exit 0", &[]);
        let pid = child.pid();
        let st = starttime(pid);
        child.0.wait().unwrap();
        write_pidfile(&pf, PidFileEntry { pid, starttime: st }).unwrap();
        assert_eq!(kill_leftovers(&pf).unwrap(), LeftoverReport::NotRunning { pid });
        assert!(!pf.exists());
    }

    #[test]
    fn kill_leftovers_refuses_bad_pidfiles() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("svc.pid");
        for bad in ["junk".to_string(), "1 1".into(), format!("{} 1", nix::unistd::getpgrp())] {
            fs::write(&pf, &bad).unwrap();
            assert!(matches!(kill_leftovers(&pf), Err(ServiceError::PidFile { .. })), "{bad:?}");
            assert!(pf.exists(), "a refused pid file is kept for the operator");
        }
    }
}
