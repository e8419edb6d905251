//! Fencing: running fence commands, and the local fence for nodes that share one machine.
//!
//! - [`run_fence_command`] runs a configured fence command (e.g. a power switch client)
//!   in its own process group, with a timeout. Exit 0 means the target is confirmed off.
//! - [`fence_local`] implements `takeover fence-local --pidfile FILE`, a real power-off
//!   of a node that runs on this same machine (test clusters, demos). Such a node's agent
//!   is a session leader (started with `setsid`). Its services are in their own process
//!   groups but in the agent's session. So "power off" means SIGKILLing every process of
//!   that session until none is left. A process that leaves the session with `setsid`
//!   escapes this, as it would not escape a real power switch. Services are not
//!   supposed to do that.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::service::{
    GROUP_POLL, KILL_WAIT, ProcStat, ProcessExit, peek_exit, read_pidfile, scan_live, wait_group_empty,
};

/// How many bytes from the end of a fence command's stderr are kept.
pub const STDERR_TAIL: usize = 2048;

/// After a fence command exits, how long to wait for the rest of its stderr. Only a
/// process that left the command's process group can hold the pipe open that long.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// How often a fence command is polled for its exit.
const FENCE_POLL: Duration = Duration::from_millis(10);

/// The result of [`run_fence_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The command exited with status 0: the target is off.
    Confirmed,
    /// The command exited non-zero or was killed by a signal.
    Failed {
        /// How it ended.
        status: ProcessExit,
        /// The last [`STDERR_TAIL`] bytes of its stderr (lossy UTF-8, trailing
        /// whitespace trimmed).
        stderr_tail: String,
    },
    /// The command did not finish within the timeout. Its process group was SIGKILLed.
    TimedOut {
        /// The last bytes of its stderr up to the kill.
        stderr_tail: String,
    },
    /// The command could not be run at all (empty argv, program not found, ...).
    Error {
        /// What went wrong.
        message: String,
    },
}

impl FenceOutcome {
    /// `true` only for [`FenceOutcome::Confirmed`].
    pub fn is_confirmed(&self) -> bool {
        *self == FenceOutcome::Confirmed
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes written to it.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * STDERR_TAIL {
            let cut = self.0.len() - STDERR_TAIL;
            self.0.drain(..cut);
        }
    }

    fn into_string(self) -> String {
        let mut start = self.0.len().saturating_sub(STDERR_TAIL);
        // Do not start in the middle of a UTF-8 sequence.
        while start < self.0.len() && start > 0 && (self.0[start] & 0xC0) == 0x80 {
            start += 1;
        }
        String::from_utf8_lossy(&self.0[start..]).trim_end().to_string()
    }
}

/// SIGKILLs a process group when dropped (e.g. when the fence future is cancelled).
struct GroupKillGuard(Option<i32>);

impl Drop for GroupKillGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Run a fence command and wait at most `timeout` for it.
///
/// The command runs in its own process group with stdin and stdout on `/dev/null`.
/// Its stderr is captured, and the last [`STDERR_TAIL`] bytes are kept for the outcome.
/// Exit 0 gives [`FenceOutcome::Confirmed`], any other exit gives
/// [`FenceOutcome::Failed`], and the timeout gives [`FenceOutcome::TimedOut`]. Whatever
/// the outcome, anything still left in the command's process group is SIGKILLed before
/// this returns: a fence command is one-shot, and stray helpers must not pile up across
/// retries. The process group is signalled before the command's main process is reaped,
/// so its id cannot have been reused. If this future is dropped, the group is SIGKILLed.
pub async fn run_fence_command(argv: &[String], timeout: Duration) -> FenceOutcome {
    let Some((program, args)) = argv.split_first() else {
        return FenceOutcome::Error { message: "empty fence command".into() };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return FenceOutcome::Error { message: format!("cannot spawn fence command {program:?}: {e}") };
        }
    };
    let Some(pid) = child.id().map(|p| p as i32) else {
        // Only happens after the child was reaped, which we have not done.
        return FenceOutcome::Error { message: "fence command has no pid".into() };
    };
    let mut guard = GroupKillGuard(Some(pid));
    let mut stderr = child.stderr.take();
    let mut tail = Tail::default();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(FENCE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Ok(Some(exit)): exited. Ok(None): timed out.
    let result: io::Result<Option<ProcessExit>> = loop {
        tokio::select! {
            r = async { stderr.as_mut().expect("guarded by if").read(&mut buf).await },
                if stderr.is_some() =>
            {
                match r {
                    Ok(n) if n > 0 => tail.push(&buf[..n]),
                    _ => stderr = None,
                }
            }
            _ = tick.tick() => match peek_exit(pid) {
                Ok(Some(exit)) => break Ok(Some(exit)),
                Ok(None) if tokio::time::Instant::now() >= deadline => break Ok(None),
                Ok(None) => {}
                Err(e) => break Err(e),
            },
        }
    };

    // The main process is exited-but-unreaped or still running. Either way the group id
    // is still ours. Kill whatever is left in it, then reap.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    wait_group_empty(pid, KILL_WAIT, Some(Signal::SIGKILL)).await;
    let _ = child.wait().await;
    guard.0 = None;

    if let Some(mut err) = stderr {
        let _ = tokio::time::timeout(STDERR_DRAIN, async {
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push(&buf[..n]);
            }
        })
        .await;
    }
    let stderr_tail = tail.into_string();
    match result {
        Ok(Some(exit)) if exit.success() => FenceOutcome::Confirmed,
        Ok(Some(status)) => FenceOutcome::Failed { status, stderr_tail },
        Ok(None) => FenceOutcome::TimedOut { stderr_tail },
        Err(e) => FenceOutcome::Error { message: format!("waiting for fence command {program:?}: {e}") },
    }
}

// ---------------------------------------------------------------------------------------
// fence-local
// ---------------------------------------------------------------------------------------

/// Why [`fence_local`] found the node already off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffReason {
    /// The agent process is gone and nothing is left in its session.
    AgentGone,
    /// The pid now belongs to another process (different start time). The agent's
    /// session cannot still exist, because the kernel does not reuse a pid while a
    /// session with that id lives. The other process was left alone.
    PidReused,
}

/// What [`fence_local`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceLocalReport {
    /// Nothing to kill. The node was already off.
    AlreadyOff {
        /// The pid from the pid file.
        pid: i32,
        /// Why the node counts as off.
        reason: OffReason,
    },
    /// Processes were SIGKILLed, and a final scan found none of the session alive.
    PoweredOff {
        /// The agent's pid (also the session id).
        agent_pid: i32,
        /// The session that was killed.
        sid: i32,
        /// `false` if the agent itself was already dead and only processes left in its
        /// session were killed.
        agent_was_running: bool,
        /// Every pid that was sent SIGKILL.
        killed: Vec<i32>,
        /// Time taken.
        elapsed: Duration,
    },
}

/// Errors of [`fence_local`]. Any error means the node is **not** known to be off.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The pid file does not exist. Fencing cannot tell whether the node runs.
    #[error("agent pid file {path} does not exist; cannot tell whether the node runs")]
    NoPidFile {
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file could not be read or is malformed.
    #[error("agent pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The target would include init, the kernel or ourselves.
    #[error("refusing to fence session {sid}: {reason}")]
    Refused {
        /// The session id.
        sid: i32,
        /// Why.
        reason: &'static str,
    },
    /// The agent is not a session leader, so its session is someone else's (a login
    /// shell's, say) and must not be killed.
    #[error("agent pid {pid} is not a session leader (its session is {sid}); refusing")]
    NotSessionLeader {
        /// The agent.
        pid: i32,
        /// Its session.
        sid: i32,
    },
    /// Processes of the session were still alive when the deadline passed.
    #[error("session {sid} still has live processes after {elapsed:?}: {pids:?}")]
    Survivors {
        /// The session.
        sid: i32,
        /// Live members at the last scan.
        pids: Vec<i32>,
        /// Time spent.
        elapsed: Duration,
    },
    /// `/proc` could not be read, or a signal could not be sent.
    #[error("fence-local: {0}")]
    Io(#[from] io::Error),
}

/// Power off a node that runs on this machine: SIGKILL its agent, then every process in
/// the agent's session, until a full `/proc` scan finds none alive (zombies count as
/// dead). Blocking. Gives up with [`FenceError::Survivors`] after `deadline`.
///
/// The pid file holds the agent's `<pid> <starttime>` (see
/// [`crate::service::write_own_pidfile`]):
/// - No process with that pid: the session is swept anyway, in case processes
///   outlived the agent. A crashed agent whose daemons still run is not off. If nothing
///   is found, this is [`FenceLocalReport::AlreadyOff`].
/// - The pid belongs to another process (different start time): already off, and
///   nothing is signalled.
/// - Otherwise the agent must be a session leader (`sid == pid`), and the session must
///   be neither ours nor `< 2`.
///
/// Every kill goes through a pidfd, re-checked after opening, so a pid reused during the
/// scan is never signalled. A missing pid file is an error, not "off": it cannot prove
/// that the node is down.
pub fn fence_local(pidfile: &Path, deadline: Duration) -> Result<FenceLocalReport, FenceError> {
    let started = Instant::now();
    let entry = read_pidfile(pidfile)
        .map_err(|source| FenceError::PidFile { path: pidfile.to_path_buf(), source })?
        .ok_or_else(|| FenceError::NoPidFile { path: pidfile.to_path_buf() })?;
    let pid = entry.pid;
    let own_pid = std::process::id() as i32;
    let own_sid = nix::unistd::getsid(None).map_err(io::Error::from)?.as_raw();

    let (sid, agent_alive) = match ProcStat::read(pid)? {
        Some(st) if st.starttime != entry.starttime => {
            return Ok(FenceLocalReport::AlreadyOff { pid, reason: OffReason::PidReused });
        }
        Some(st) => (st.session, !st.is_dead()),
        // The agent is gone. Its session id was its pid.
        None => (pid, false),
    };
    if sid < 2 {
        return Err(FenceError::Refused { sid, reason: "session id below 2 (kernel threads or init)" });
    }
    if sid == own_sid || pid == own_pid {
        return Err(FenceError::Refused { sid, reason: "it is our own session" });
    }
    if sid != pid {
        return Err(FenceError::NotSessionLeader { pid, sid });
    }

    let mut killed = BTreeSet::new();
    // The agent first, so that it starts nothing new.
    if agent_alive && kill_verified(pid, |st| st.starttime == entry.starttime)? {
        killed.insert(pid);
    }
    loop {
        let live = scan_live(|st| st.session == sid && st.pid != own_pid && st.pid > 1)?;
        if live.is_empty() {
            if killed.is_empty() && !agent_alive {
                return Ok(FenceLocalReport::AlreadyOff { pid, reason: OffReason::AgentGone });
            }
            return Ok(FenceLocalReport::PoweredOff {
                agent_pid: pid,
                sid,
                agent_was_running: agent_alive,
                killed: killed.into_iter().collect(),
                elapsed: started.elapsed(),
            });
        }
        for st in &live {
            if kill_verified(st.pid, |now| now.session == sid)? {
                killed.insert(st.pid);
            }
        }
        if started.elapsed() >= deadline {
            return Err(FenceError::Survivors {
                sid,
                pids: live.iter().map(|st| st.pid).collect(),
                elapsed: started.elapsed(),
            });
        }
        thread::sleep(GROUP_POLL);
    }
}

/// SIGKILL `pid` if its `/proc` stat satisfies `check`, with no pid-reuse race. A pidfd
/// is opened first, and then the stat is checked. If the process died and the pid was
/// reused in between, the check may look at the new process, but the signal goes through
/// the pidfd to the old, dead one and is dropped (ESRCH). Returns whether a signal was
/// delivered. Falls back to plain `kill` on kernels without pidfds (< 5.3).
pub(crate) fn kill_verified(pid: i32, check: impl Fn(&ProcStat) -> bool) -> io::Result<bool> {
    let matches = || -> io::Result<bool> { Ok(ProcStat::read(pid)?.is_some_and(|st| !st.is_dead() && check(&st))) };
    // SAFETY: plain syscall. The result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            Some(libc::ENOSYS) => {
                if !matches()? {
                    return Ok(false);
                }
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) => Ok(true),
                    Err(Errno::ESRCH) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(e),
        };
    }
    // SAFETY: pidfd_open returned a fresh fd that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !matches()? {
        return Ok(false);
    }
    // SAFETY: valid pidfd, null siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testutil::*;
    use crate::service::{PidFileEntry, write_own_pidfile, write_pidfile};
    use std::fs;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    const T: Duration = Duration::from_secs(10);

    /// SIGKILLs every process of a session this test created, on drop.
    pub struct SessionGuard(pub i32);

    impl Drop for SessionGuard {
        fn drop(&mut self) {
            let sid = self.0;
            let own = nix::unistd::getsid(None).map(|p| p.as_raw()).unwrap_or(-1);
            if sid < 2 || sid == own {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(live) = scan_live(|st| st.session == sid) {
                if live.is_empty() || Instant::now() > deadline {
                    break;
                }
                for st in live {
                    let _ = kill(Pid::from_raw(st.pid), Signal::SIGKILL);
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn fence_command_confirmed() {
        let out = run_fence_command(&argv(&["true"]), T).await;
        assert_eq!(out, FenceOutcome::Confirmed);
        assert!(out.is_confirmed());
    }

    #[tokio::test]
    async fn fence_command_failed_keeps_stderr_tail() {
        let out =
            run_fence_command(&argv(&["sh", "-c", "echo starting; echo 'power switch said: no' >&2; exit 3"]), T).await;
        assert_eq!(
            out,
            FenceOutcome::Failed { status: ProcessExit::Code(3), stderr_tail: "power switch said: no".into() }
        );

        // Only the last STDERR_TAIL bytes are kept.
        let out = run_fence_command(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; kill -TERM $$"]),
            T,
        )
        .await;
        let FenceOutcome::Failed { status, stderr_tail } = out else { panic!("{out:?}") };
        assert_eq!(status, ProcessExit::Signal(libc::SIGTERM));
        assert!(stderr_tail.len() <= STDERR_TAIL);
        assert!(stderr_tail.len() > STDERR_TAIL - 20);
        assert!(stderr_tail.ends_with("xxxTHE-END"), "{stderr_tail:?}");
    }

    #[tokio::test]
    async fn fence_command_timed_out_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "echo $$ > {p}.tmp; sleep 600 & echo $! >> {p}.tmp; mv {p}.tmp {p}; echo waiting >&2; wait",
            p = pids.display()
        );
        let out = run_fence_command(&argv(&["sh", "-c", &script]), Duration::from_secs(2)).await;
        assert_eq!(out, FenceOutcome::TimedOut { stderr_tail: "waiting".into() });
        let text = fs::read_to_string(&pids).expect("script ran within the timeout");
        let pids: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        let _g = GroupGuard(pids[0]);
        for p in pids {
            let st = ProcStat::read(p).unwrap();
            assert!(st.is_none_or(|st| st.is_dead()), "{p} survived: {st:?}");
        }
    }

    #[tokio::test]
    async fn fence_command_that_cannot_run() {
        assert!(matches!(run_fence_command(&[], T).await, FenceOutcome::Error { .. }));
        let out = run_fence_command(&argv(&["/nonexistent/fence-agent"]), T).await;
        assert!(matches!(out, FenceOutcome::Error { ref message } if message.contains("nonexistent")), "{out:?}");
    }

    /// Start `sh -c SCRIPT` as a session leader (like an agent started with setsid),
    /// stdout piped, and write its pid file.
    fn spawn_session(script: &str, pidfile: &Path) -> (ChildGuard, SessionGuard) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::piped());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let child = ChildGuard(cmd.spawn().unwrap());
        let pid = child.pid();
        let guard = SessionGuard(pid);
        write_pidfile(pidfile, PidFileEntry { pid, starttime: starttime(pid) }).unwrap();
        (child, guard)
    }

    fn session_members(sid: i32) -> Vec<ProcStat> {
        scan_live(|st| st.session == sid).unwrap()
    }

    #[test]
    fn fence_local_kills_a_whole_session() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");
        // The "agent": a session leader sh with
        // - a child in another process group of the same session (perl setpgrp + exec),
        // - a double-forked grandchild (its parent sh exits at once, so it is orphaned),
        // - a plain child in the leader's own group.
        let script = r#"
            perl -e 'setpgrp(0, 0); exec @ARGV' sleep 600 &
            echo "pg $!"
            sh -c 'sleep 600 & echo "orphan $!"'
            sleep 600 &
            echo "child $!"
            echo ready
            wait
        "#;
        let (mut agent, _session) = spawn_session(script, &pf);
        let sid = agent.pid();
        let mut out = BufReader::new(agent.0.stdout.take().unwrap());
        let mut named = vec![sid];
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "agent script died");
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("ready"), _) => break,
                (Some(_), Some(pid)) => named.push(pid.parse().unwrap()),
                _ => panic!("unexpected line {line:?}"),
            }
        }
        assert_eq!(named.len(), 4);
        // Wait until the tree is as described: the perl child has its own group (it
        // may not have run setpgrp yet when its pid was printed), all in the session.
        poll_until("session tree complete", T, || {
            let m = session_members(sid);
            named.iter().all(|p| m.iter().any(|st| st.pid == *p))
                && m.iter().any(|st| st.pid == named[1] && st.pgrp == named[1])
        });
        let orphan = ProcStat::read(named[2]).unwrap().unwrap();
        assert_ne!(orphan.ppid, sid, "the grandchild is not a child of the leader");
        let starts: Vec<(i32, u64)> = named.iter().map(|&p| (p, starttime(p))).collect();

        let report = fence_local(&pf, T).unwrap();
        let FenceLocalReport::PoweredOff { agent_pid, sid: rsid, agent_was_running, killed, .. } = report else {
            panic!("{report:?}")
        };
        assert_eq!((agent_pid, rsid, agent_was_running), (sid, sid, true));
        for p in &named {
            assert!(killed.contains(p), "{p} not in {killed:?}");
        }
        // When fence_local returns, nothing of the session is alive.
        assert!(session_members(sid).is_empty());
        for (p, st) in starts {
            assert!(!alive(p, st), "{p} survived");
        }
        // Fencing again finds the node off, both while the leader is our unreaped
        // zombie and after it is reaped.
        let off = FenceLocalReport::AlreadyOff { pid: sid, reason: OffReason::AgentGone };
        assert_eq!(fence_local(&pf, T).unwrap(), off);
        agent.0.wait().unwrap();
        assert_eq!(
            fence_local(&pf, T).unwrap(),
            FenceLocalReport::AlreadyOff { pid: sid, reason: OffReason::AgentGone }
        );
    }

    #[test]
    fn fence_local_already_off() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");
        let (mut agent, _session) = spawn_session("exit 0", &pf);
        agent.0.wait().unwrap();
        let pid = agent.pid();
        assert_eq!(fence_local(&pf, T).unwrap(), FenceLocalReport::AlreadyOff { pid, reason: OffReason::AgentGone });
    }

    #[test]
    fn fence_local_sweeps_what_a_dead_agent_left() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");
        let (mut agent, _session) = spawn_session("sleep 600 & echo $!", &pf);
        let mut line = String::new();
        BufReader::new(agent.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let daemon: i32 = line.trim().parse().unwrap();
        let dst = starttime(daemon);
        agent.0.wait().unwrap(); // the agent is gone; its daemon lives on in its session
        let sid = agent.pid();
        assert!(ProcStat::read(sid).unwrap().is_none());
        let report = fence_local(&pf, T).unwrap();
        assert!(
            matches!(report, FenceLocalReport::PoweredOff { agent_was_running: false, ref killed, .. } if *killed == vec![daemon]),
            "{report:?}"
        );
        assert!(!alive(daemon, dst));
    }

    #[test]
    fn fence_local_leaves_a_reused_pid_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");
        let go = dir.path().join("go");
        let script = HANDSHAKE.replace("$1", &go.display().to_string());
        let (mut agent, _session) = spawn_session(&script, &pf);
        let pid = agent.pid();
        // Same pid, another start time: the pid file's agent is long gone.
        write_pidfile(&pf, PidFileEntry { pid, starttime: starttime(pid) - 1 }).unwrap();
        assert_eq!(fence_local(&pf, T).unwrap(), FenceLocalReport::AlreadyOff { pid, reason: OffReason::PidReused });
        fs::write(&go, "").unwrap();
        expect_line(&mut BufReader::new(agent.0.stdout.take().unwrap()), "alive");
    }

    #[test]
    fn fence_local_refuses_dangerous_targets() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");

        assert!(matches!(fence_local(&pf, T), Err(FenceError::NoPidFile { .. })));
        fs::write(&pf, "1 1").unwrap();
        assert!(matches!(fence_local(&pf, T), Err(FenceError::PidFile { .. })));

        // Ourselves (and our session).
        write_own_pidfile(&pf).unwrap();
        assert!(matches!(fence_local(&pf, T), Err(FenceError::Refused { .. })));

        // A process that is not a session leader: its session belongs to someone else.
        let (mut leader, _session) = spawn_session("sleep 600 & echo $!; wait", &dir.path().join("leader.pid"));
        let mut line = String::new();
        BufReader::new(leader.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let member: i32 = line.trim().parse().unwrap();
        write_pidfile(&pf, PidFileEntry { pid: member, starttime: starttime(member) }).unwrap();
        let err = fence_local(&pf, T).unwrap_err();
        assert!(
            matches!(err, FenceError::NotSessionLeader { pid, sid } if pid == member && sid == leader.pid()),
            "{err:?}"
        );
        assert_eq!(session_members(leader.pid()).len(), 2, "nothing was killed");
    }
}
