//! Fencing: fence levels of fence-agents devices and plain commands, and the local fence
//! for nodes that share one machine.
//!
//! - [`fence_node`] runs a [`FencePlan`] (from `[fence]`, see
//!   [`crate::config::ClusterConfig::fence_plan`]): levels in order until one confirms,
//!   every device of a level, each with retries and a timeout per attempt. A device is a
//!   fence-agents program spoken to with the stdin protocol (`action=off`, then
//!   `action=status` to verify) or a plain command (exit 0 = off). It returns a
//!   [`FenceReport`] listing every attempt, whose `Display` is one line for the logs.
//!   Values of options whose name contains "pass" never appear in plans, reports or logs.
//! - [`run_fence_command`] runs one fence command (e.g. a power switch client) in its own
//!   process group, with a timeout. Exit 0 means the target is confirmed off.
//! - [`fence_local`] implements `takeover fence-local --pidfile FILE`, a real power-off
//!   of a node that runs on this same machine (test clusters, demos). Such a node's agent
//!   is a session leader (started with `setsid`). Its services are in their own process
//!   groups but in the agent's session. So "power off" means SIGKILLing every process of
//!   that session until none is left. A process that leaves the session with `setsid`
//!   escapes this, as it would not escape a real power switch. Services are not
//!   supposed to do that.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

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
/// The command runs in its own process group with stdin on `/dev/null`. Its stdout and
/// stderr are captured, and the last [`STDERR_TAIL`] bytes of stderr are kept for the
/// outcome. Exit 0 gives [`FenceOutcome::Confirmed`], any other exit gives
/// [`FenceOutcome::Failed`], and the timeout gives [`FenceOutcome::TimedOut`]. Whatever
/// the outcome, anything still left in the command's process group is SIGKILLed before
/// this returns: a fence command is one-shot, and stray helpers must not pile up across
/// retries. The process group is signalled before the command's main process is reaped,
/// so its id cannot have been reused. If this future is dropped, the group is SIGKILLed.
pub async fn run_fence_command(argv: &[String], timeout: Duration) -> FenceOutcome {
    let run = run_process(argv, None, tokio::time::Instant::now() + timeout).await;
    match run.end {
        Ok(Some(exit)) if exit.success() => FenceOutcome::Confirmed,
        Ok(Some(status)) => FenceOutcome::Failed { status, stderr_tail: run.stderr },
        Ok(None) => FenceOutcome::TimedOut { stderr_tail: run.stderr },
        Err(message) => FenceOutcome::Error { message },
    }
}

/// How one run of a process ended, with the tails of its output.
struct ProcessRun {
    /// `Ok(Some(exit))`: it exited. `Ok(None)`: the deadline passed and its process group
    /// was SIGKILLed. `Err`: it could not be run or waited for.
    end: Result<Option<ProcessExit>, String>,
    /// The last [`STDERR_TAIL`] bytes of its stdout (lossy UTF-8, trailing whitespace
    /// trimmed).
    stdout: String,
    /// The same for its stderr.
    stderr: String,
}

/// Read once from an optional pipe; `Ok(0)` means end of file.
async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Run `argv` in its own process group until it exits or `deadline` passes, feeding it
/// `stdin` (then end of file) or `/dev/null`, and capturing the tails of its stdout and
/// stderr. See [`run_fence_command`] for the clean-up guarantees.
async fn run_process(argv: &[String], stdin: Option<Vec<u8>>, deadline: tokio::time::Instant) -> ProcessRun {
    let fail = |message: String| ProcessRun { end: Err(message), stdout: String::new(), stderr: String::new() };
    let Some((program, args)) = argv.split_first() else {
        return fail("empty fence command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot spawn fence command {program:?}: {e}")),
    };
    let Some(pid) = child.id().map(|p| p as i32) else {
        // Only happens after the child was reaped, which we have not done.
        return fail("fence command has no pid".into());
    };
    let mut guard = GroupKillGuard(Some(pid));
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written by its own task so that a process that does not read cannot block the
        // deadline. Once the process group is killed the write fails and the task ends.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out_tail, mut err_tail) = (Tail::default(), Tail::default());
    let (mut out_buf, mut err_buf) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut tick = tokio::time::interval(FENCE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Ok(Some(exit)): exited. Ok(None): timed out.
    let result: io::Result<Option<ProcessExit>> = loop {
        tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                Ok(n) if n > 0 => out_tail.push(&out_buf[..n]),
                _ => stdout = None,
            },
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                Ok(n) if n > 0 => err_tail.push(&err_buf[..n]),
                _ => stderr = None,
            },
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

    // Only a process that left the group can still hold a pipe open: wait for the rest of
    // the output a bounded time.
    let _ = tokio::time::timeout(STDERR_DRAIN, async {
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                    Ok(n) if n > 0 => out_tail.push(&out_buf[..n]),
                    _ => stdout = None,
                },
                r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                    Ok(n) if n > 0 => err_tail.push(&err_buf[..n]),
                    _ => stderr = None,
                },
            }
        }
    })
    .await;
    ProcessRun {
        end: result.map_err(|e| format!("waiting for fence command {program:?}: {e}")),
        stdout: out_tail.into_string(),
        stderr: err_tail.into_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Fence levels: fence-agents devices and plain commands
// ---------------------------------------------------------------------------------------

/// The placeholder, in agent option values and command arguments, for the name of the
/// node to fence.
pub const NODE_PLACEHOLDER: &str = "{node}";
/// The placeholder for the node's index in the configuration's `[[node]]` list (from 0).
pub const NODE_INDEX_PLACEHOLDER: &str = "{node_index}";

/// How a node is fenced: levels tried in order until one confirms (like Pacemaker's
/// fencing topology). Built from the `[fence]` table by
/// [`crate::config::ClusterConfig::fence_plan`]; run by [`fence_node`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencePlan {
    /// Never empty once validated.
    pub levels: Vec<FenceLevel>,
}

/// One level: every device must confirm (two power supplies, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceLevel {
    /// Run in order; never empty once validated.
    pub devices: Vec<FenceDevice>,
}

/// One fence device with its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceDevice {
    /// What to run.
    pub kind: FenceDeviceKind,
    /// The bound of one attempt (for an agent: `off` and the `status` check together).
    pub timeout: Duration,
    /// Extra attempts after a failed one: a device is tried at most `1 + retries` times.
    pub retries: u32,
}

/// What a [`FenceDevice`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceDeviceKind {
    /// A fence-agents agent (`/usr/sbin/fence_ipmilan`, ...), run without arguments and
    /// given `key=value` lines on stdin: `action=off`, `nodename=<node>` (unless an option
    /// sets it) and `options`. A successful `off` is checked with `action=status`.
    Agent {
        /// Absolute path of the agent.
        path: PathBuf,
        /// In file order. Values may hold [`NODE_PLACEHOLDER`] and
        /// [`NODE_INDEX_PLACEHOLDER`].
        options: Vec<AgentOption>,
    },
    /// A plain command; exit 0 means the node is off. Arguments may hold the
    /// placeholders.
    Command {
        /// Never empty.
        argv: Vec<String>,
    },
    /// The poison pill on the shared device of `[storage_fence]`
    /// ([`crate::storage_fence::fence`]): confirmed once `msgwait` has passed.
    Storage {
        /// This node's path of the device.
        device: PathBuf,
        msgwait: Duration,
        /// This node: its `[[node]]` index and name.
        me: (u16, String),
    },
}

/// One `key=value` option of an agent. Its `Debug` masks the value of a secret (a key
/// containing "pass").
#[derive(Clone, PartialEq, Eq)]
pub struct AgentOption {
    pub key: String,
    pub value: String,
}

impl AgentOption {
    /// Whether the value must never be shown: the key contains "pass" (`password`,
    /// `passwd`, `password_script`, `snmp_priv_passwd`, ...), in any case.
    pub fn is_secret(&self) -> bool {
        self.key.to_ascii_lowercase().contains("pass")
    }

    /// `key=value`, or `key=***` for a secret.
    pub fn shown(&self) -> String {
        if self.is_secret() { format!("{}=***", self.key) } else { format!("{}={}", self.key, self.value) }
    }
}

impl fmt::Debug for AgentOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if self.is_secret() { &"***" } else { &self.value };
        f.debug_struct("AgentOption").field("key", &self.key).field("value", value).finish()
    }
}

/// `text` with the placeholders replaced.
fn substitute(text: &str, node: &str, node_index: usize) -> String {
    text.replace(NODE_INDEX_PLACEHOLDER, &node_index.to_string()).replace(NODE_PLACEHOLDER, node)
}

impl FenceDevice {
    /// A short name for logs: the file name of the agent or of the command's program.
    pub fn name(&self) -> String {
        let program = match &self.kind {
            FenceDeviceKind::Agent { path, .. } => path.as_os_str().to_string_lossy().into_owned(),
            FenceDeviceKind::Command { argv } => argv.first().cloned().unwrap_or_default(),
            FenceDeviceKind::Storage { .. } => return "storage".to_string(),
        };
        match program.rsplit_once('/') {
            Some((_, base)) if !base.is_empty() => base.to_string(),
            _ => program,
        }
    }

    /// The device as configured, secrets masked, placeholders kept.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            FenceDeviceKind::Agent { path, options } => {
                let mut words = vec![format!("agent {}", path.display())];
                words.extend(options.iter().map(AgentOption::shown));
                words.join(" ")
            }
            FenceDeviceKind::Command { argv } => format!("command {}", argv.join(" ")),
            FenceDeviceKind::Storage { device, msgwait, .. } => format!(
                "storage poison pill on {} (msgwait {})",
                device.display(),
                crate::config::format_duration(*msgwait)
            ),
        };
        let attempts = 1 + u64::from(self.retries);
        let attempts = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
        format!("{what} (timeout {} per attempt, {attempts})", crate::config::format_duration(self.timeout))
    }

    /// The stdin of the agent for `action`, placeholders substituted.
    fn agent_stdin(options: &[AgentOption], action: &str, node: &str, node_index: usize) -> Vec<u8> {
        let mut text = format!("action={action}\n");
        if !options.iter().any(|o| o.key == "nodename") {
            text.push_str(&format!("nodename={node}\n"));
        }
        for o in options {
            text.push_str(&format!("{}={}\n", o.key, substitute(&o.value, node, node_index)));
        }
        text.into_bytes()
    }
}

impl FencePlan {
    /// One line for `status` and logs: `level 1: A and B; then level 2: C`. Secrets are
    /// masked.
    pub fn describe(&self) -> String {
        if self.levels.is_empty() {
            return "no fence level".to_string();
        }
        self.levels
            .iter()
            .enumerate()
            .map(|(i, level)| {
                let devices: Vec<String> = level.devices.iter().map(FenceDevice::describe).collect();
                let all = if devices.is_empty() { "no device".to_string() } else { devices.join(" and ") };
                format!("{}level {}: {all}", if i == 0 { "" } else { "then " }, i + 1)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A step of an agent attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceStep {
    /// `action=off`, or the whole run of a plain command.
    Off,
    /// `action=status` after a successful `off`.
    Status,
}

/// Why an attempt counts as confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// A plain command exited 0.
    CommandExit0,
    /// The agent's `off` exited 0 and its `status` then exited 2 (off).
    StatusOff,
    /// The agent's `off` exited 0 and it does not support `status`: the off is trusted.
    StatusUnsupported,
    /// The poison pill was written and `msgwait` passed: the node has stopped itself.
    StorageMsgwait,
}

/// How one attempt of one device ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The node is off.
    Confirmed(Confirmation),
    /// `off` (or the plain command) exited non-zero or was killed by a signal.
    OffFailed(ProcessExit),
    /// `off` exited 0 but `status` exited 0: the node still reports on.
    StillOn,
    /// `off` exited 0 but `status` failed (neither 0 nor 2, and not "unsupported").
    StatusFailed(ProcessExit),
    /// The attempt's timeout passed during this step; the process group was SIGKILLed.
    TimedOut(FenceStep),
    /// The device could not be run at all (agent missing, not executable, ...).
    Error(String),
}

/// One attempt of one device, as reported by [`fence_node`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceAttempt {
    /// The level, from 1.
    pub level: usize,
    /// The device within its level, from 1.
    pub device: usize,
    /// [`FenceDevice::name`].
    pub device_name: String,
    /// The attempt of this device, from 1.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// How long the attempt took.
    pub duration: Duration,
    /// The last bytes of stderr of the step that decided the outcome (secret option
    /// values replaced by `***`).
    pub stderr_tail: String,
}

impl FenceAttempt {
    pub fn is_confirmed(&self) -> bool {
        matches!(self.outcome, AttemptOutcome::Confirmed(_))
    }
}

/// What [`fence_node`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceReport {
    /// The node that was fenced.
    pub node: String,
    /// Whether a level confirmed that the node is off.
    pub confirmed: bool,
    /// The level that confirmed, from 1.
    pub confirmed_by_level: Option<usize>,
    /// Every attempt, in the order run.
    pub attempts: Vec<FenceAttempt>,
    /// The time the whole fence took.
    pub elapsed: Duration,
}

impl FenceReport {
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }
}

/// `35 ms`, `1.2 s`, `20 s`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", d.as_secs())
    }
}

/// `line` without a leading `2024-05-01 12:00:00,123 ` (fencing.py's log time stamp).
fn strip_log_time(line: &str) -> &str {
    let b = line.as_bytes();
    let shape = b"0000-00-00 00:00:00,000 ";
    let fits =
        b.len() > shape.len() && shape.iter().zip(b).all(|(s, c)| if *s == b'0' { c.is_ascii_digit() } else { s == c });
    if fits { &line[shape.len()..] } else { line }
}

/// The last non-empty line of `tail` (without a log time stamp), at most 200
/// characters.
fn last_line(tail: &str) -> Option<String> {
    let line = tail.lines().map(|l| strip_log_time(l.trim())).rfind(|l| !l.is_empty())?;
    let n = line.chars().count();
    Some(if n > 200 { format!("…{}", line.chars().skip(n - 199).collect::<String>()) } else { line.to_string() })
}

fn exit_words(status: &ProcessExit, tail: &str) -> String {
    let status = match status {
        ProcessExit::Code(c) => format!("exit {c}"),
        ProcessExit::Signal(s) => match Signal::try_from(*s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
    };
    match last_line(tail) {
        Some(line) => format!("{status}: {line}"),
        None => status,
    }
}

impl fmt::Display for FenceAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {} device {}", self.level, self.device_name)?;
        if self.attempt > 1 {
            write!(f, " (attempt {})", self.attempt)?;
        }
        let took = human(self.duration);
        let tail = &self.stderr_tail;
        match &self.outcome {
            AttemptOutcome::Confirmed(Confirmation::CommandExit0) => write!(f, ": confirmed off in {took}"),
            AttemptOutcome::Confirmed(Confirmation::StatusOff) => {
                write!(f, ": confirmed off in {took} (status says off)")
            }
            AttemptOutcome::Confirmed(Confirmation::StatusUnsupported) => {
                write!(f, ": confirmed off in {took} (off succeeded; the agent does not support status)")
            }
            AttemptOutcome::Confirmed(Confirmation::StorageMsgwait) => {
                write!(f, ": confirmed off in {took} (poison pill written, msgwait passed)")
            }
            AttemptOutcome::OffFailed(status) => write!(f, ": off failed ({}) after {took}", exit_words(status, tail)),
            AttemptOutcome::StillOn => write!(f, ": off exited 0 but status still says on, after {took}"),
            AttemptOutcome::StatusFailed(status) => {
                write!(f, ": off exited 0 but the status check failed ({}) after {took}", exit_words(status, tail))
            }
            AttemptOutcome::TimedOut(step) => {
                let step = match step {
                    FenceStep::Off => "off",
                    FenceStep::Status => "the status check after off",
                };
                write!(f, ": {step} timed out after {took} and was killed")?;
                match last_line(tail) {
                    Some(line) => write!(f, " (last stderr: {line})"),
                    None => Ok(()),
                }
            }
            AttemptOutcome::Error(message) => write!(f, ": could not run ({message})"),
        }
    }
}

impl fmt::Display for FenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.confirmed_by_level {
            Some(level) if self.confirmed => {
                write!(f, "{} confirmed off by level {level} in {}", self.node, human(self.elapsed))?
            }
            _ => write!(
                f,
                "{} NOT confirmed off: every level failed ({} attempt{} in {})",
                self.node,
                self.attempts.len(),
                if self.attempts.len() == 1 { "" } else { "s" },
                human(self.elapsed)
            )?,
        }
        if self.attempts.is_empty() {
            return write!(f, ": no fence device is configured");
        }
        for (i, attempt) in self.attempts.iter().enumerate() {
            write!(f, "{}{attempt}", if i == 0 { ": " } else { "; " })?;
        }
        Ok(())
    }
}

/// Fence `node` (the `node_index`-th `[[node]]` of the configuration, from 0) with
/// `plan`: the levels in order, until one confirms; within a level every device in
/// order, each tried up to `1 + retries` times, until one fails for good (the level then
/// fails: the rest of its devices are not run). Each attempt is bounded by its device's
/// timeout, and whatever it started is SIGKILLed (its process group) before the next
/// step. If this future is dropped, the running process group is SIGKILLed.
///
/// An agent attempt runs the agent with `action=off`; exit 0 is then checked with
/// `action=status`: exit 2 (off) confirms, exit 0 (on) fails the attempt, and an agent
/// that does not support status (fencing.py's "Unrecognised action", or output saying
/// "not supported"/"unsupported") is trusted. A command attempt confirms on exit 0.
pub async fn fence_node(plan: &FencePlan, node: &str, node_index: usize) -> FenceReport {
    let started = Instant::now();
    let mut attempts = Vec::new();
    for (l, level) in plan.levels.iter().enumerate() {
        let mut level_ok = !level.devices.is_empty();
        for (d, device) in level.devices.iter().enumerate() {
            let mut device_ok = false;
            for attempt in 1..=1 + device.retries {
                let t0 = Instant::now();
                let (outcome, stderr_tail) = attempt_device(device, node, node_index).await;
                let confirmed = matches!(outcome, AttemptOutcome::Confirmed(_));
                attempts.push(FenceAttempt {
                    level: l + 1,
                    device: d + 1,
                    device_name: device.name(),
                    attempt,
                    outcome,
                    duration: t0.elapsed(),
                    stderr_tail,
                });
                if confirmed {
                    device_ok = true;
                    break;
                }
            }
            if !device_ok {
                level_ok = false;
                break;
            }
        }
        if level_ok {
            return FenceReport {
                node: node.to_string(),
                confirmed: true,
                confirmed_by_level: Some(l + 1),
                attempts,
                elapsed: started.elapsed(),
            };
        }
    }
    FenceReport {
        node: node.to_string(),
        confirmed: false,
        confirmed_by_level: None,
        attempts,
        elapsed: started.elapsed(),
    }
}

/// Does this output of a failed `status` say that the agent has no status action?
fn says_status_unsupported(run: &ProcessRun) -> bool {
    let text = format!("{}\n{}", run.stdout, run.stderr).to_ascii_lowercase();
    ["unrecognised action", "unrecognized action", "not supported", "unsupported"].iter().any(|p| text.contains(p))
}

/// One attempt of `device`: the outcome and the deciding step's stderr tail (secrets
/// masked).
async fn attempt_device(device: &FenceDevice, node: &str, node_index: usize) -> (AttemptOutcome, String) {
    let deadline = tokio::time::Instant::now() + device.timeout;
    match &device.kind {
        FenceDeviceKind::Storage { device: path, msgwait, me } => {
            let fence = crate::storage_fence::fence(path, (me.0, &me.1), (node_index as u16, node), *msgwait);
            match tokio::time::timeout_at(deadline, fence).await {
                Ok(Ok(_done)) => (AttemptOutcome::Confirmed(Confirmation::StorageMsgwait), String::new()),
                Ok(Err(message)) => (AttemptOutcome::Error(message), String::new()),
                Err(_) => (AttemptOutcome::TimedOut(FenceStep::Off), String::new()),
            }
        }
        FenceDeviceKind::Command { argv } => {
            let argv: Vec<String> = argv.iter().map(|a| substitute(a, node, node_index)).collect();
            let run = run_process(&argv, None, deadline).await;
            let outcome = match run.end {
                Ok(Some(exit)) if exit.success() => AttemptOutcome::Confirmed(Confirmation::CommandExit0),
                Ok(Some(exit)) => AttemptOutcome::OffFailed(exit),
                Ok(None) => AttemptOutcome::TimedOut(FenceStep::Off),
                Err(message) => AttemptOutcome::Error(message),
            };
            (outcome, run.stderr)
        }
        FenceDeviceKind::Agent { path, options } => {
            let secrets: Vec<String> = options
                .iter()
                .filter(|o| o.is_secret())
                .map(|o| substitute(&o.value, node, node_index))
                .filter(|v| !v.is_empty())
                .collect();
            let mask = |text: String| secrets.iter().fold(text, |t, s| t.replace(s.as_str(), "***"));
            let argv = [path.as_os_str().to_string_lossy().into_owned()];
            let off =
                run_process(&argv, Some(FenceDevice::agent_stdin(options, "off", node, node_index)), deadline).await;
            match off.end {
                Ok(Some(exit)) if exit.success() => {}
                Ok(Some(exit)) => return (AttemptOutcome::OffFailed(exit), mask(off.stderr)),
                Ok(None) => return (AttemptOutcome::TimedOut(FenceStep::Off), mask(off.stderr)),
                Err(message) => return (AttemptOutcome::Error(mask(message)), String::new()),
            }
            let status =
                run_process(&argv, Some(FenceDevice::agent_stdin(options, "status", node, node_index)), deadline).await;
            let outcome = match status.end {
                Ok(Some(ProcessExit::Code(2))) => AttemptOutcome::Confirmed(Confirmation::StatusOff),
                Ok(Some(ProcessExit::Code(0))) => AttemptOutcome::StillOn,
                Ok(Some(_)) if says_status_unsupported(&status) => {
                    AttemptOutcome::Confirmed(Confirmation::StatusUnsupported)
                }
                Ok(Some(exit)) => AttemptOutcome::StatusFailed(exit),
                Ok(None) => AttemptOutcome::TimedOut(FenceStep::Status),
                Err(message) => AttemptOutcome::Error(mask(message)),
            };
            (outcome, mask(status.stderr))
        }
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
            // A service frozen by a killer that died mid-kill (its guard) holds the SIGKILL.
            crate::resources::process::cgroup::thaw_cgroups_of(st.pid);
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

    // ---- fence levels ----

    const FENCE_DUMMY: &str = "/usr/sbin/fence_dummy";

    fn agent_device(path: &Path, options: &[(&str, &str)]) -> FenceDevice {
        FenceDevice {
            kind: FenceDeviceKind::Agent {
                path: path.to_path_buf(),
                options: options
                    .iter()
                    .map(|(k, v)| AgentOption { key: k.to_string(), value: v.to_string() })
                    .collect(),
            },
            timeout: T,
            retries: 0,
        }
    }

    fn command_device(a: &[&str]) -> FenceDevice {
        FenceDevice { kind: FenceDeviceKind::Command { argv: argv(a) }, timeout: T, retries: 0 }
    }

    fn retried(mut device: FenceDevice, retries: u32) -> FenceDevice {
        device.retries = retries;
        device
    }

    fn plan(levels: Vec<Vec<FenceDevice>>) -> FencePlan {
        FencePlan { levels: levels.into_iter().map(|devices| FenceLevel { devices }).collect() }
    }

    /// fence_dummy keeping the power state of node `{node}` in `dir/{node}.status`.
    fn dummy_file(dir: &Path) -> FenceDevice {
        assert!(Path::new(FENCE_DUMMY).exists(), "fence-agents is not installed: {FENCE_DUMMY} is missing");
        let status_file = format!("{}/{{node}}.status", dir.display());
        agent_device(Path::new(FENCE_DUMMY), &[("type", "file"), ("status_file", &status_file)])
    }

    /// fence_dummy that cannot power anything off. power_timeout = 1 makes its `off` give
    /// up after about a second instead of the default 20.
    fn dummy_fail() -> FenceDevice {
        agent_device(Path::new(FENCE_DUMMY), &[("type", "fail"), ("power_timeout", "1")])
    }

    /// Write an executable script. The file is written by a child `sh`, never opened for
    /// writing in this (multi-threaded) process, so that no fork of another test thread
    /// can hold it open and make its exec fail with ETXTBSY.
    fn write_script(path: &Path, text: &str) {
        use std::io::Write;
        let mut child = Command::new("sh")
            .args(["-c", r#"cat > "$1" && chmod 755 "$1""#, "sh"])
            .arg(path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn outcomes(report: &FenceReport) -> Vec<(usize, usize, u32, AttemptOutcome)> {
        report.attempts.iter().map(|a| (a.level, a.device, a.attempt, a.outcome.clone())).collect()
    }

    #[tokio::test]
    async fn fence_dummy_confirms_and_its_status_file_says_off() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("beta.status");
        // fence_dummy reads a missing file as "off" and then writes nothing: start "on".
        fs::write(&status, "on").unwrap();
        let report = fence_node(&plan(vec![vec![dummy_file(dir.path())]]), "beta", 1).await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.confirmed_by_level, Some(1));
        assert_eq!(outcomes(&report), [(1, 1, 1, AttemptOutcome::Confirmed(Confirmation::StatusOff))]);
        assert_eq!(report.attempts[0].device_name, "fence_dummy");
        assert_eq!(fs::read_to_string(&status).unwrap(), "off");
        let shown = report.to_string();
        assert!(shown.starts_with("beta confirmed off by level 1 in "), "{shown}");
        assert!(shown.contains(": level 1 device fence_dummy: confirmed off in "), "{shown}");
        assert!(shown.ends_with(" ms (status says off)") || shown.ends_with(" s (status says off)"), "{shown}");

        // Already off: fence_dummy says "Success: Already OFF", status confirms.
        let again = fence_node(&plan(vec![vec![dummy_file(dir.path())]]), "beta", 1).await;
        assert!(again.confirmed, "{again}");
        assert_eq!(fs::read_to_string(&status).unwrap(), "off");
    }

    #[tokio::test]
    async fn a_failing_first_level_falls_through_to_the_second() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("beta.status"), "on").unwrap();
        let report = fence_node(&plan(vec![vec![dummy_fail()], vec![dummy_file(dir.path())]]), "beta", 1).await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.confirmed_by_level, Some(2));
        assert_eq!(
            outcomes(&report),
            [
                (1, 1, 1, AttemptOutcome::OffFailed(ProcessExit::Code(1))),
                (2, 1, 1, AttemptOutcome::Confirmed(Confirmation::StatusOff)),
            ]
        );
        let failed = &report.attempts[0];
        assert!(failed.stderr_tail.contains("Failed: Timed out waiting to power OFF"), "{:?}", failed.stderr_tail);
        assert_eq!(fs::read_to_string(dir.path().join("beta.status")).unwrap(), "off");
        let shown = report.to_string();
        // fencing.py's time stamp is left out of the summary.
        assert!(
            shown.contains(": level 1 device fence_dummy: off failed (exit 1: ERROR: Failed: Timed out waiting to power OFF) after "),
            "{shown}"
        );
        assert!(shown.contains("; level 2 device fence_dummy: confirmed off in "), "{shown}");
    }

    #[tokio::test]
    async fn when_every_level_fails_every_attempt_is_listed() {
        let plan = plan(vec![
            vec![retried(dummy_fail(), 1)],
            vec![retried(command_device(&["sh", "-c", "echo 'switch says no' >&2; exit 3"]), 1)],
            vec![agent_device(Path::new("/nonexistent/fence_x"), &[])],
        ]);
        let report = fence_node(&plan, "alpha", 0).await;
        assert!(!report.confirmed && !report.is_confirmed(), "{report}");
        assert_eq!(report.confirmed_by_level, None);
        let outcomes = outcomes(&report);
        assert_eq!(outcomes.len(), 5, "{report}");
        assert_eq!(
            outcomes[..4],
            [
                (1, 1, 1, AttemptOutcome::OffFailed(ProcessExit::Code(1))),
                (1, 1, 2, AttemptOutcome::OffFailed(ProcessExit::Code(1))),
                (2, 1, 1, AttemptOutcome::OffFailed(ProcessExit::Code(3))),
                (2, 1, 2, AttemptOutcome::OffFailed(ProcessExit::Code(3))),
            ]
        );
        assert!(matches!(&outcomes[4], (3, 1, 1, AttemptOutcome::Error(m)) if m.contains("/nonexistent/fence_x")));
        assert_eq!(report.attempts[2].stderr_tail, "switch says no");
        let shown = report.to_string();
        assert!(shown.starts_with("alpha NOT confirmed off: every level failed (5 attempts in "), "{shown}");
        assert!(shown.contains("; level 1 device fence_dummy (attempt 2): off failed (exit 1: "), "{shown}");
        assert!(shown.contains("; level 2 device sh: off failed (exit 3: switch says no) after "), "{shown}");
        assert!(shown.contains("; level 3 device fence_x: could not run (cannot spawn"), "{shown}");
        // Nothing configured: not confirmed, and said so.
        let empty = fence_node(&FencePlan { levels: vec![] }, "alpha", 0).await;
        assert!(!empty.confirmed && empty.attempts.is_empty());
        assert!(empty.to_string().ends_with(": no fence device is configured"), "{empty}");
    }

    #[tokio::test]
    async fn retries_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("count");
        let counter = counter.to_str().unwrap();
        // Fails on its first two runs, succeeds from the third.
        let script =
            r#"n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1"; echo "run $n" >&2; [ $n -ge 3 ]"#;
        let flaky = command_device(&["sh", "-c", script, "sh", counter]);

        let report = fence_node(&plan(vec![vec![retried(flaky.clone(), 1)]]), "beta", 1).await;
        assert!(!report.confirmed, "{report}");
        assert_eq!(
            outcomes(&report),
            [
                (1, 1, 1, AttemptOutcome::OffFailed(ProcessExit::Code(1))),
                (1, 1, 2, AttemptOutcome::OffFailed(ProcessExit::Code(1))),
            ]
        );
        assert_eq!(report.attempts[1].stderr_tail, "run 2");
        assert_eq!(fs::read_to_string(counter).unwrap().trim(), "2");

        fs::remove_file(counter).unwrap();
        let report = fence_node(&plan(vec![vec![retried(flaky, 2)]]), "beta", 1).await;
        assert!(report.confirmed, "{report}");
        let attempts: Vec<u32> = report.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(attempts, [1, 2, 3]);
        assert_eq!(report.attempts[2].outcome, AttemptOutcome::Confirmed(Confirmation::CommandExit0));
        assert_eq!(fs::read_to_string(counter).unwrap().trim(), "3");
    }

    /// `sh -c` script for a device that hangs: it records its pid and a child's in
    /// `pids`, says so on stderr, and waits.
    fn hanging_script(pids: &Path) -> String {
        format!(
            "echo $$ > {p}.tmp; sleep 600 & echo $! >> {p}.tmp; mv {p}.tmp {p}; echo hanging >&2; wait",
            p = pids.display()
        )
    }

    fn assert_all_dead(pids: &Path) {
        let text = fs::read_to_string(pids).expect("the device recorded its pids");
        let pids: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        let _g = GroupGuard(pids[0]);
        for p in pids {
            let st = ProcStat::read(p).unwrap();
            assert!(st.is_none_or(|st| st.is_dead()), "{p} survived: {st:?}");
        }
    }

    #[tokio::test]
    async fn a_hanging_device_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut hang = command_device(&["sh", "-c", &hanging_script(&pids)]);
        hang.timeout = Duration::from_secs(2);
        let report = fence_node(&plan(vec![vec![hang], vec![command_device(&["true"])]]), "beta", 1).await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.confirmed_by_level, Some(2));
        let timed_out = &report.attempts[0];
        assert_eq!(timed_out.outcome, AttemptOutcome::TimedOut(FenceStep::Off));
        assert_eq!(timed_out.stderr_tail, "hanging");
        assert!(timed_out.duration >= Duration::from_secs(2), "{:?}", timed_out.duration);
        // Its whole process group is gone when fence_node returns.
        assert_all_dead(&pids);
        let shown = report.to_string();
        assert!(
            shown.contains("level 1 device sh: off timed out after 2.0 s and was killed (last stderr: hanging)"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_dropped_fence_kills_its_running_device() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let plan = plan(vec![vec![command_device(&["sh", "-c", &hanging_script(&pids)])]]);
        let recorded = async {
            let deadline = Instant::now() + T;
            while !pids.exists() {
                assert!(Instant::now() < deadline, "the device never recorded its pids");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            report = fence_node(&plan, "beta", 1) => panic!("the hanging device finished: {report}"),
            () = recorded => {}
        }
        // The fence future is dropped: its device's process group was SIGKILLed.
        let text = fs::read_to_string(&pids).unwrap();
        let first: i32 = text.lines().next().unwrap().parse().unwrap();
        poll_until("the dropped device's group is gone", T, || {
            crate::service::live_group_members(first).is_ok_and(|live| live.is_empty())
        });
        assert_all_dead(&pids);
    }

    /// A fake agent in `dir`: it appends every stdin it gets to `dir/stdin.log`, and
    /// answers `off` and `status` with the shell code `off` and `status`.
    fn fake_agent(dir: &Path, off: &str, status: &str) -> PathBuf {
        let path = dir.join("fence_fake");
        let script = format!(
            r#"#!/bin/sh
input=$(cat)
printf '%s\n--\n' "$input" >> "$(dirname "$0")/stdin.log"
case "$input" in
  *action=off*) {off} ;;
  *action=status*) {status} ;;
esac
exit 1
"#
        );
        write_script(&path, &script);
        path
    }

    #[tokio::test]
    async fn status_check_catches_an_agent_whose_off_lies() {
        let dir = tempfile::tempdir().unwrap();
        let liar = fake_agent(dir.path(), "echo 'Success: Powered OFF'; exit 0", "echo 'Status: ON'; exit 0");
        let report = fence_node(&plan(vec![vec![retried(agent_device(&liar, &[]), 1)]]), "beta", 1).await;
        assert!(!report.confirmed, "{report}");
        assert_eq!(outcomes(&report), [(1, 1, 1, AttemptOutcome::StillOn), (1, 1, 2, AttemptOutcome::StillOn)]);
        let log = fs::read_to_string(dir.path().join("stdin.log")).unwrap();
        let actions: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("action=")).collect();
        assert_eq!(actions, ["off", "status", "off", "status"]);
        assert!(report.to_string().contains("level 1 device fence_fake: off exited 0 but status still says on"));
    }

    #[tokio::test]
    async fn status_unsupported_trusts_the_off_and_status_errors_fail() {
        let dir = tempfile::tempdir().unwrap();
        // What fencing.py prints for an agent without status (e.g. fence_rcd_serial).
        let no_status =
            fake_agent(dir.path(), "exit 0", r#"echo "ERROR:root:Failed: Unrecognised action 'status'" >&2; exit 1"#);
        let report = fence_node(&plan(vec![vec![agent_device(&no_status, &[])]]), "beta", 1).await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.attempts[0].outcome, AttemptOutcome::Confirmed(Confirmation::StatusUnsupported));

        let broken = fake_agent(dir.path(), "exit 0", "echo 'Connection lost' >&2; exit 1");
        let report = fence_node(&plan(vec![vec![agent_device(&broken, &[])]]), "beta", 1).await;
        assert!(!report.confirmed, "{report}");
        assert_eq!(report.attempts[0].outcome, AttemptOutcome::StatusFailed(ProcessExit::Code(1)));
        assert!(
            report.to_string().contains("off exited 0 but the status check failed (exit 1: Connection lost)"),
            "{report}"
        );
    }

    #[tokio::test]
    async fn options_reach_the_agent_with_the_node_substituted_and_secrets_masked() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(
            dir.path(),
            "exit 0",
            r#"echo "login with password s3cret failed, status anyway" >&2; echo 'Status: OFF'; exit 2"#,
        );
        let device = agent_device(
            &agent,
            &[("plug", "{node}"), ("ip", "10.0.0.{node_index}"), ("password", "s3cret"), ("x", "{node}-{node}")],
        );
        let plan = plan(vec![vec![device]]);
        let report = fence_node(&plan, "beta", 1).await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.attempts[0].outcome, AttemptOutcome::Confirmed(Confirmation::StatusOff));
        let log = fs::read_to_string(dir.path().join("stdin.log")).unwrap();
        let lines = "nodename=beta\nplug=beta\nip=10.0.0.1\npassword=s3cret\nx=beta-beta\n--\n";
        assert_eq!(log, format!("action=off\n{lines}action=status\n{lines}"));
        // The password never shows: not in the stderr tail, the report, or the plan.
        assert_eq!(report.attempts[0].stderr_tail, "login with password *** failed, status anyway");
        for text in [report.to_string(), format!("{report:?}"), plan.describe(), format!("{plan:?}")] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(plan.describe().contains("password=*** x={node}-{node}"), "{}", plan.describe());

        // An explicit nodename option replaces the default line.
        fs::remove_file(dir.path().join("stdin.log")).unwrap();
        let device = agent_device(&agent, &[("nodename", "beta.example.com")]);
        assert!(
            fence_node(&FencePlan { levels: vec![FenceLevel { devices: vec![device] }] }, "beta", 1).await.confirmed
        );
        let log = fs::read_to_string(dir.path().join("stdin.log")).unwrap();
        assert_eq!(log, "action=off\nnodename=beta.example.com\n--\naction=status\nnodename=beta.example.com\n--\n");
    }

    #[tokio::test]
    async fn every_device_of_a_level_must_confirm() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("beta.status"), "on").unwrap();
        let log = dir.path().join("ran");
        let mark = |name: &str| command_device(&["sh", "-c", &format!("echo {name} >> {}", log.display())]);
        // Level 1: the second device fails, so the third is not run and level 2 decides.
        let report = fence_node(
            &plan(vec![
                vec![mark("a"), command_device(&["false"]), mark("never")],
                vec![mark("b"), dummy_file(dir.path())],
            ]),
            "beta",
            1,
        )
        .await;
        assert!(report.confirmed, "{report}");
        assert_eq!(report.confirmed_by_level, Some(2));
        let devices: Vec<(usize, usize)> = report.attempts.iter().map(|a| (a.level, a.device)).collect();
        assert_eq!(devices, [(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(fs::read_to_string(&log).unwrap(), "a\nb\n");
        assert_eq!(fs::read_to_string(dir.path().join("beta.status")).unwrap(), "off");
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
    fn fence_local_thaws_a_service_left_frozen_by_a_killer_that_died() {
        // The guard (or an agent) freezes a service's cgroup to kill it; killed itself at
        // that moment (a power-off kills the whole session), it leaves the service frozen,
        // holding its SIGKILL. fence-local must still get it off.
        if !crate::service::testutil::root_or_skip("fence_local_thaws_a_service_left_frozen_by_a_killer_that_died") {
            return;
        }
        let freezer = Path::new("/sys/fs/cgroup/freezer");
        if !freezer.join("freezer.state").exists() && !freezer.is_dir() {
            println!("SKIPPED (no cgroup v1 freezer here; v2 freezes through cgroup.freeze, thawed the same way)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("agent.pid");
        let (mut agent, _session) = spawn_session("sleep 600 & echo $!; wait", &pf);
        let mut line = String::new();
        BufReader::new(agent.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let service: i32 = line.trim().parse().unwrap();
        let sst = starttime(service);
        let cg = freezer.join(format!("takeover-test-thaw-{}", std::process::id()));
        fs::create_dir(&cg).unwrap();
        fs::write(cg.join("cgroup.procs"), service.to_string()).unwrap();
        fs::write(cg.join("freezer.state"), "FROZEN").unwrap();
        let frozen_by = Instant::now() + T;
        while fs::read_to_string(cg.join("freezer.state")).unwrap().trim() != "FROZEN" {
            assert!(Instant::now() < frozen_by, "the cgroup did not freeze");
            thread::sleep(Duration::from_millis(5));
        }
        let report = fence_local(&pf, Duration::from_secs(3));
        let _ = fs::write(cg.join("freezer.state"), "THAWED");
        let gone_by = Instant::now() + T;
        while alive(service, sst) && Instant::now() < gone_by {
            thread::sleep(Duration::from_millis(5));
        }
        let _ = fs::remove_dir(&cg);
        let report = report.unwrap_or_else(|e| panic!("fence-local left the frozen service: {e}"));
        assert!(matches!(report, FenceLocalReport::PoweredOff { .. }), "{report:?}");
        assert!(!alive(service, sst));
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
