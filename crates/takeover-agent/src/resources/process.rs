//! The application (F4.1): a program run in a cgroup of its own, so that stop kills every
//! process it started (double-forked daemons and `setsid` children included) and leaves
//! nothing behind.
//!
//! - **One cgroup per group and resource**, named `<scope>.<group>.<resource>`
//!   ([`Ctx::scope`]: the node name plus a hash of its state directory): on cgroup v1 `/sys/fs/cgroup/freezer/takeover/<name>` (and the same under `pids/` when that
//!   controller is mounted); on v2 `/sys/fs/cgroup/takeover.slice/<name>`. Which one is
//!   found at run time, see [`cgroup::Hierarchy::detect`]. The parts are joined with `.`,
//!   which names cannot contain, so one node's cgroups are exactly those starting with
//!   `<scope>.` (names may contain `-`: with `-` as separator, node `a`'s prefix would
//!   also match node `a-b`'s cgroups).
//! - **The child enters the cgroup before exec.** `cgroup.procs` of each of its
//!   directories is opened (close-on-exec) before the fork. Between fork and exec the
//!   child writes `0` ("myself") to each with `libc::write`, which is async-signal-safe
//!   and needs no allocation or formatting. So the program's first instruction already
//!   runs in the cgroup, and nothing it forks can be outside it. (Writing the pid from
//!   the parent after the spawn would leave a window in which the program runs, and may
//!   fork, outside the cgroup.) If the write fails, the spawn fails with its error.
//! - **It dies with its agent**: it is forked by [`ServiceSupervisor::shared`]'s
//!   long-lived thread with `PR_SET_PDEATHSIG` ([`service::die_with_agent`]), as the
//!   services of [`crate::service`] are. It runs in its own process group, with stdin on
//!   `/dev/null` and stdout and stderr appended to the log file
//!   (`<state_dir>/<group>.<resource>.log` unless the spec names one). Its environment is
//!   the agent's, the spec's, and `TAKEOVER_NODE`, `TAKEOVER_GROUP` and
//!   `TAKEOVER_GENERATION` (the group's epoch, e.g. `7.1`).
//! - **stop** sends SIGTERM and SIGCONT to every process of the cgroup and waits up to
//!   the grace period (by default half the stop timeout, [`Process::with_stop_grace`])
//!   for it to empty. Then whatever is left is killed: on v1, freeze the cgroup, SIGKILL
//!   every pid in `cgroup.procs`, thaw, repeat until empty; on v2 `cgroup.kill`. Then the
//!   cgroup is removed and the main process reaped. Stop always works on the cgroup's
//!   *name*, so it also cleans up after a cancelled start or an earlier agent, and stop of
//!   a never-started resource succeeds.
//! - **monitor**: `Ok` while the main process runs; `Failed` once it has exited by
//!   itself (with its exit status, and the stray processes its cgroup still holds); when
//!   not started (or stopped), `NotRunning`, unless the cgroup holds processes (then
//!   `Failed`: something runs that nobody supervises). The main process is not reaped
//!   until stop (its exit is observed with `waitid(WNOWAIT)`), so its pid stays reserved.
//! - **Leftovers**: if the agent dies, `PDEATHSIG` kills the main process, but daemons
//!   survive in the cgroup. [`kill_leftover_cgroups`] empties and removes every cgroup of
//!   a node; the agent calls it at start, before anything else.
//! - **Cancellation**: every operation may be dropped at any await. The cgroup is
//!   recorded before the spawn, so a later stop (or start) cleans it up; a spawn whose
//!   requester has gone is killed by the supervisor thread; a dropped kill loop thaws the
//!   cgroup. Dropping the [`Process`] kills and removes its cgroup on a background thread.

pub mod cgroup;

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use self::cgroup::{Cgroup, Hierarchy, Waiter, block_on};
use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use crate::service::{self, KILL_WAIT, ProcessExit, ServiceSupervisor, peek_exit, reap};

/// The grace period between SIGTERM and SIGKILL when none is given: half the default
/// stop timeout.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_millis(2500);

/// The `PATH` `execvp` uses when the environment has none.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The application, in its own cgroup (F4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go (appended); `None`: the node's state dir.
    pub log: Option<std::path::PathBuf>,
}

/// A process resource. See the module docs.
pub struct Process {
    spec: ProcessSpec,
    stop_grace: Duration,
    /// The hierarchy to use; `None`: detected at each operation.
    hierarchy: Option<Hierarchy>,
    /// The cgroup this instance created and has not removed yet.
    cgroup: Option<Cgroup>,
    /// The main process, started by this instance and not reaped yet.
    main: Option<Main>,
}

#[derive(Debug)]
struct Main {
    pid: i32,
    exit: Option<ProcessExit>,
}

impl Process {
    pub fn new(spec: ProcessSpec) -> Self {
        Process { spec, stop_grace: DEFAULT_STOP_GRACE, hierarchy: None, cgroup: None, main: None }
    }

    /// How long stop waits after SIGTERM before killing: half of the stop timeout the
    /// caller enforces, so the kill loop has the other half.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Use this cgroup hierarchy instead of the detected one (tests use it to run the v2
    /// code on a hybrid machine).
    pub fn with_hierarchy(mut self, hierarchy: Hierarchy) -> Self {
        self.hierarchy = Some(hierarchy);
        self
    }

    /// The main process, while this instance has one (running, or exited and not yet
    /// cleaned up by stop).
    pub fn main_pid(&self) -> Option<i32> {
        self.main.as_ref().map(|it| it.pid)
    }

    fn hierarchy(&self) -> io::Result<Hierarchy> {
        match &self.hierarchy {
            Some(it) => Ok(it.clone()),
            None => Hierarchy::detect(),
        }
    }

    /// The cgroup this resource uses: the one it created, or the one its name maps to.
    /// `None` if there can be none (a bad name, or no cgroups on this machine).
    fn current_cgroup(&self, ctx: &Ctx) -> Option<Cgroup> {
        if let Some(cg) = &self.cgroup {
            return Some(cg.clone());
        }
        let name = cgroup_name(ctx).ok()?;
        Some(self.hierarchy().ok()?.cgroup(&name))
    }

    fn log_path(&self, ctx: &Ctx) -> PathBuf {
        match &self.spec.log {
            Some(it) => it.clone(),
            None => ctx.state_dir.join(format!("{}.{}.log", ctx.group, ctx.resource)),
        }
    }

    /// Empty and remove the cgroup (SIGTERM first if `grace` is non-zero), then reap the
    /// main process. Changes `self` only once that is done, so a dropped teardown is
    /// simply redone by the next one.
    async fn teardown(&mut self, ctx: &Ctx, grace: Duration) -> Result<cgroup::Destroyed, String> {
        let mut report = cgroup::Destroyed::default();
        if let Some(cg) = self.current_cgroup(ctx) {
            report = cg.destroy(grace, KILL_WAIT, Waiter::Async).await.map_err(|e| e.to_string())?;
        }
        self.cgroup = None;
        if let Some(main) = &self.main {
            let exit = finish_main(main.pid).await.or(main.exit);
            tracing::info!(
                group = %ctx.group, resource = %ctx.resource, pid = main.pid,
                exit = %exit.map_or("unknown".to_string(), |it| it.to_string()),
                found = report.found.len(), killed = report.killed, "process stopped"
            );
            self.main = None;
        }
        Ok(report)
    }

    async fn do_start(&mut self, ctx: &Ctx) -> OpOutcome {
        if let Some(main) = &self.main
            && matches!(peek_exit(main.pid), Ok(None))
        {
            return OpOutcome::Ok;
        }
        let name = match cgroup_name(ctx) {
            Ok(it) => it,
            Err(e) => return OpOutcome::Failed(e),
        };
        let Some((program, args)) = self.spec.argv.split_first() else {
            return OpOutcome::Failed("the process argv is empty".into());
        };
        let (program, args) = (program.clone(), args.to_vec());
        // What an earlier run left goes first: its main process exited (monitor said
        // Failed), a start was cancelled, or an agent crashed without leftover cleanup.
        match self.teardown(ctx, Duration::ZERO).await {
            Ok(d) if !d.found.is_empty() => tracing::warn!(
                group = %ctx.group, resource = %ctx.resource, cgroup = %name, killed = ?d.found,
                "killed what an earlier run left in the cgroup"
            ),
            Ok(_) => {}
            Err(e) => return OpOutcome::Failed(format!("cannot clean up the previous run: {e}")),
        }
        let hier = match self.hierarchy() {
            Ok(it) => it,
            Err(e) => return OpOutcome::Failed(e.to_string()),
        };
        let cg = hier.cgroup(&name);
        if let Err(e) = cg.create() {
            return OpOutcome::Failed(e.to_string());
        }
        // From here on, a dropped start leaves the cgroup to the next stop or start.
        self.cgroup = Some(cg.clone());

        let log_path = self.log_path(ctx);
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))
            .and_then(|log| Ok((log, cg.open_procs().map_err(|e| e.to_string())?)));
        let (log, procs) = match opened {
            Ok(it) => it,
            Err(e) => {
                let _ = self.teardown(ctx, Duration::ZERO).await;
                return OpOutcome::Failed(e);
            }
        };
        let mut env = self.spec.env.clone();
        env.push(("TAKEOVER_NODE".into(), ctx.node.clone()));
        env.push(("TAKEOVER_GROUP".into(), ctx.group.clone()));
        env.push(("TAKEOVER_GENERATION".into(), ctx.generation.to_string()));

        let spawned = match ServiceSupervisor::shared() {
            Ok(sup) => {
                let prog = program.clone();
                let spawn = move || spawn_into_cgroup(&prog, &args, env, log, procs);
                // If this start was dropped meanwhile, nobody owns the process: kill it
                // (the supervisor thread reaps it); the cgroup is left to the next stop.
                let orphan = |spawned: io::Result<i32>| {
                    let pid = spawned.ok()?;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    Some(pid)
                };
                sup.call(spawn, orphan).await.map_err(io::Error::other).and_then(|it| it)
            }
            Err(e) => Err(io::Error::other(e)),
        };
        match spawned {
            Ok(pid) => {
                self.main = Some(Main { pid, exit: None });
                tracing::info!(
                    group = %ctx.group, resource = %ctx.resource, pid, cgroup = %name,
                    hierarchy = %hier.describe(), "process started"
                );
                OpOutcome::Ok
            }
            Err(e) => {
                let _ = self.teardown(ctx, Duration::ZERO).await;
                OpOutcome::Failed(format!("cannot start {program:?}: {e}"))
            }
        }
    }

    async fn do_stop(&mut self, ctx: &Ctx) -> OpOutcome {
        match self.teardown(ctx, self.stop_grace).await {
            Ok(_) => OpOutcome::Ok,
            Err(e) => OpOutcome::Failed(e),
        }
    }

    fn do_monitor(&mut self, ctx: &Ctx) -> OpOutcome {
        let strays = |cg: Option<Cgroup>| cg.and_then(|cg| cg.procs().ok()).unwrap_or_default();
        let Some(main) = &mut self.main else {
            // Not started by this instance, or stopped: clean only if nothing runs in its
            // cgroup.
            let left = strays(self.current_cgroup(ctx));
            if left.is_empty() {
                return OpOutcome::NotRunning;
            }
            return OpOutcome::Failed(format!(
                "not started by this agent, but its cgroup holds {} processes: {left:?}",
                left.len()
            ));
        };
        if main.exit.is_none() {
            match peek_exit(main.pid) {
                Ok(exit) => main.exit = exit,
                Err(e) => return OpOutcome::Failed(format!("cannot wait for the main process {}: {e}", main.pid)),
            }
        }
        let Some(exit) = main.exit else { return OpOutcome::Ok };
        let mut text = format!("the main process {} {exit}", main.pid);
        let left = strays(self.cgroup.clone());
        if !left.is_empty() {
            text.push_str(&format!("; {} stray processes remain in its cgroup: {left:?}", left.len()));
        }
        OpOutcome::Failed(text)
    }

    async fn do_check(&mut self, ctx: &Ctx) -> PlanCheck {
        let mut notes = Vec::new();
        let mut ok = true;
        let mut bad = |notes: &mut Vec<String>, note: String| {
            ok = false;
            notes.push(note);
        };
        match self.spec.argv.first() {
            None => bad(&mut notes, "the process argv is empty".into()),
            Some(program) => {
                let path = self.spec.env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
                let path = path.or_else(|| std::env::var("PATH").ok()).unwrap_or_else(|| DEFAULT_PATH.into());
                match resolve_program(program, &path) {
                    Ok(found) => notes.push(format!("program: {}", found.display())),
                    Err(e) => bad(&mut notes, e),
                }
            }
        }
        let log = self.log_path(ctx);
        match log.parent().filter(|it| !it.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => bad(&mut notes, format!("log: directory {} does not exist", dir.display())),
            _ => notes.push(format!("log: {}", log.display())),
        }
        match (cgroup_name(ctx), self.hierarchy()) {
            (Err(e), _) => bad(&mut notes, e),
            (_, Err(e)) => bad(&mut notes, format!("cgroups: {e}")),
            (Ok(name), Ok(hier)) => match probe(&hier, &name).await {
                Ok(method) => notes.push(format!(
                    "cgroup: {} in {}; stop kills by {method}",
                    hier.cgroup(&name).dirs().first().map_or(String::new(), |it| it.display().to_string()),
                    hier.describe()
                )),
                Err(e) => bad(&mut notes, format!("cgroups ({}) are not usable: {e}", hier.describe())),
            },
        }
        PlanCheck { ok, notes }
    }
}

impl Resource for Process {
    fn start<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.do_start(ctx))
    }
    fn stop<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.do_stop(ctx))
    }
    fn monitor<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { self.do_monitor(ctx) })
    }
    fn check<'a>(&'a mut self, ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(self.do_check(ctx))
    }
}

impl Drop for Process {
    /// Kills what is still running, as `stop` would without the grace period: the main
    /// process at once, the cgroup's other processes and the cgroup itself on a
    /// background thread (the kill loop can take a while). If that thread cannot be
    /// created, the cgroup is left to [`kill_leftover_cgroups`].
    fn drop(&mut self) {
        let cg = self.cgroup.take();
        let main = self.main.take().map(|it| it.pid);
        if cg.is_none() && main.is_none() {
            return;
        }
        if let Some(pid) = main {
            // Our unreaped child: the pid cannot name another process.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let cleanup = move || {
            if let Some(cg) = cg
                && let Err(e) = block_on(cg.destroy(Duration::ZERO, KILL_WAIT, Waiter::Blocking))
            {
                tracing::warn!(cgroup = %cg.name(), "dropped process resource: {e}");
            }
            if let Some(pid) = main {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            }
        };
        let _ = thread::Builder::new().name("takeover-process-drop".into()).spawn(cleanup);
    }
}

/// The cgroup name of a resource: `<scope>.<group>.<resource>`. Each part must be a
/// config name (ASCII letters, digits, `_`, `-`), so that the name is one path component
/// and `<scope>.` prefixes exactly one node's cgroups.
pub fn cgroup_name(ctx: &Ctx) -> Result<String, String> {
    for (what, part) in [("node scope", &ctx.scope), ("group", &ctx.group), ("resource", &ctx.resource)] {
        check_name(what, part)?;
    }
    Ok(format!("{}.{}.{}", ctx.scope, ctx.group, ctx.resource))
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{what} name {name:?} cannot name a cgroup (want ASCII letters, digits, _ and -)"));
    }
    Ok(())
}

/// Kill what a previous run of this node's agent left in its cgroups, and remove them:
/// every `takeover/<scope>.*` (v1: freezer and pids) and `takeover.slice/<scope>.*` (v2,
/// also the hybrid `unified` mount) cgroup, whichever hierarchy it is in. Returns the
/// cgroup directories removed. Call at agent start, before anything else. Blocking: up
/// to [`KILL_WAIT`] per cgroup. An error means some processes or cgroups could not be
/// removed. No cgroup support at all is not an error: nothing can have been left.
pub fn kill_leftover_cgroups(scope: &str) -> anyhow::Result<Vec<String>> {
    check_name("node scope", scope).map_err(anyhow::Error::msg)?;
    let prefix = format!("{scope}.");
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for hier in Hierarchy::all_mounted() {
        let names = hier
            .names_with_prefix(&prefix)
            .with_context(|| format!("cannot list takeover's cgroups in {}", hier.describe()))?;
        for name in names {
            let cg = hier.cgroup(&name);
            let dirs: Vec<String> =
                cg.dirs().into_iter().filter(|it| it.is_dir()).map(|it| it.display().to_string()).collect();
            match block_on(cg.destroy(Duration::ZERO, KILL_WAIT, Waiter::Blocking)) {
                Ok(d) => {
                    tracing::warn!(cgroup = %name, killed = ?d.found, "removed a cgroup a previous run left");
                    removed.extend(dirs);
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("cannot clean up the cgroups a previous run left: {}", failed.join("; "));
    }
    Ok(removed)
}

/// Runs on the supervisor thread: fork, join the cgroup, exec. Returns the child's pid.
fn spawn_into_cgroup(
    program: &str,
    args: &[String],
    env: Vec<(String, String)>,
    log: File,
    procs: Vec<File>,
) -> io::Result<i32> {
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
    service::die_with_agent(&mut cmd);
    // systemd's notification socket is the agent's, not the application's.
    crate::sdnotify::CHILD_ENV.iter().for_each(|name| {
        cmd.env_remove(name);
    });
    let fds: Vec<RawFd> = procs.iter().map(|it| it.as_raw_fd()).collect();
    // SAFETY: between fork and exec the closure only calls write(2) and reads errno, both
    // async-signal-safe, and iterates a Vec built before the fork (no allocation). The
    // files stay open until after `spawn` returns (`procs` is dropped below); they are
    // close-on-exec, so the program does not inherit them.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                join_cgroup(fd)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(procs);
    // Dropping a std Child neither kills nor reaps it; the pid is managed directly.
    Ok(child.id() as i32)
}

/// In the forked child: move this process into the cgroup whose `cgroup.procs` is `fd`.
fn join_cgroup(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: writes one byte from a static buffer to an open descriptor.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Reap the main process once its cgroup is empty. It left the cgroup when it began to
/// exit, so it may take a moment to become reapable. If it is still alive after that, it
/// moved itself out of the cgroup: SIGKILL it (it is our unreaped child, so the pid is
/// still its own) and let the supervisor thread reap it.
async fn finish_main(pid: i32) -> Option<ProcessExit> {
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut killed = false;
    loop {
        match reap(pid) {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => {}
            // Reaped elsewhere already (e.g. by a dropped teardown's successor).
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            if killed {
                if let Ok(sup) = ServiceSupervisor::shared() {
                    sup.reap_later(pid);
                }
                return None;
            }
            tracing::warn!(pid, "the main process left its cgroup; killing it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed = true;
        }
        tokio::time::sleep(cgroup::CGROUP_POLL).await;
    }
}

/// Find `program` as `execvp` would: as a path if it contains `/`, else in `path`.
fn resolve_program(program: &str, path: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("program {program} is not an executable file"))
        } else {
            Err(format!("program {program} does not exist"))
        };
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program {program:?} is not an executable in PATH={path}"))
}

/// Create and remove a probe cgroup `<name>.probe`. Returns how stop would kill.
async fn probe(hier: &Hierarchy, name: &str) -> io::Result<&'static str> {
    let cg = hier.cgroup(&format!("{name}.probe"));
    cg.create()?;
    let method = cg.kill_method();
    let joinable = cg.open_procs().map(drop);
    cg.remove(Duration::from_secs(1), Waiter::Async).await?;
    joinable?;
    Ok(method)
}

#[cfg(test)]
mod tests;
