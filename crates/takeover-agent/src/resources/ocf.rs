//! OCF resources: external agents that follow the OCF resource-agent API 1.1
//! (<https://github.com/ClusterLabs/OCF-spec/blob/main/ra/1.1/resource-agent-api.md>), run
//! unchanged. Debian's `resource-agents` (`Dummy`, `IPaddr2`, `Filesystem`, ...) are the
//! agents the tests use.
//!
//! - **Which program.** `$OCF_ROOT/resource.d/<provider>/<agent>`. `OCF_ROOT` is
//!   [`DEFAULT_OCF_ROOT`] unless [`OcfSpec::root`] says otherwise. Provider and agent
//!   names must be single path components.
//! - **How it runs.** `<agent> <action>`, with stdin on `/dev/null`, stdout and stderr
//!   captured, working directory `/`, and its own process group. Its environment is this
//!   process's, minus every `OCF_*` and `HA_*` variable (the spec reserves `OCF_*`, and
//!   `HA_*` steers the agents' shell library), plus:
//!   `OCF_ROOT`, `OCF_RA_VERSION_MAJOR=1`, `OCF_RA_VERSION_MINOR=1`, `OCF_RESOURCE_TYPE`,
//!   `OCF_RESOURCE_PROVIDER` and, for resource actions, `OCF_RESOURCE_INSTANCE=<group>-<resource>`,
//!   `OCF_RESKEY_<name>=<value>` for each parameter, `OCF_RESKEY_CRM_meta_timeout` (the
//!   operation's budget in ms, when known: [`OpBudget`]), `OCF_RESKEY_CRM_meta_interval`
//!   and `HA_RSCTMP`. Agents log to stderr (their shell library does so when no log
//!   facility or file is set).
//! - **Cancellation.** Until the agent's main process has been reaped, dropping the
//!   operation's future (the caller's timeout) SIGKILLs the agent's process group. After
//!   a normal exit, whatever the agent left running in its group (a daemon it started, a
//!   background ARP sender) is left alone: that is the resource.
//! - **`HA_RSCTMP`.** Agents keep small state files there (Dummy's "running" marker,
//!   IPaddr2's ARP sender pid). It is `<state_dir>/ocf/rsctmp`: per node, writable
//!   without root, and kept across restarts of this agent. Pacemaker puts it on a tmpfs,
//!   emptied at boot, and agents rely on that ("a state file means it runs"), so the
//!   directory is emptied when the kernel's boot id differs from the one recorded next to
//!   it.
//! - **Exit codes.** See [`OcfExit`]. `start`: only 0 is success. `stop`: 0 is success,
//!   and so is 7 (not running): the spec says a stop of a stopped resource returns 0, but
//!   an agent that answers 7 also says the resource is down, which is all a stop must
//!   ensure, and a failed stop would get the node fenced. `monitor`: 0 is running, 7
//!   cleanly stopped, anything else failed. 190 (degraded) counts as success everywhere,
//!   with a warning. 8, 9 and 191 (the promoted role) fail: promotable resources are not
//!   supported yet. A failure's text names the code and carries the agent's exit reason
//!   (`ocf-exit-reason:` lines) and the last lines of its stderr.
//! - **Probes.** `OCF_RESKEY_CRM_meta_interval` is 0 (a probe: "is it running here?")
//!   unless this instance started the resource and has not stopped it since; then it is
//!   the configured monitor interval (a recurring monitor). Agents are more lenient in a
//!   probe, e.g. IPaddr2 answers "not running" where it cannot find the interface.
//! - **Plan check** ([`Resource::check`], F2.3). The agent exists and is executable; its
//!   `meta-data` parses; every required parameter is given and every given parameter is
//!   known to the agent (a misspelt name would otherwise be silently ignored); then
//!   `validate-all`, if the agent advertises it. Parameter values are never printed: they
//!   may be passwords.
//! - **Meta-data** ([`metadata`], [`AgentMeta::parse`]). A small hand-written reader of
//!   the XML subset agents print (elements, attributes, text, comments, CDATA, a DOCTYPE,
//!   the predefined and numeric entities): we need a few names and flags out of a
//!   machine-generated document, which does not justify an XML crate.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{AccessFlags, Pid, access};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource, ResourceSpec};

/// Where OCF agents live unless a spec says otherwise.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";

/// How long `meta-data` may take (agents advertise 5 s).
pub const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `validate-all` may take when the agent does not advertise a timeout.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest `validate-all` timeout taken from an agent's meta-data.
const VALIDATE_TIMEOUT_MAX: Duration = Duration::from_secs(120);

/// How much of an agent's stdout is kept (meta-data of the largest agents is ~30 KiB).
const STDOUT_LIMIT: usize = 1 << 20;

/// How many bytes from the end of an agent's stderr are kept.
const STDERR_TAIL: usize = 4096;

/// How many lines of stderr a failure's text quotes.
const STDERR_LINES: usize = 5;

/// After the agent exits, how long to wait for the rest of its output: only something it
/// left running can hold the pipes open that long.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// How often, and how many times, a spawn that fails with ETXTBSY (the agent file is
/// still open for writing somewhere, e.g. by a fork of a thread that was writing it) is
/// retried.
const TXTBSY_RETRY: Duration = Duration::from_millis(10);
const TXTBSY_ATTEMPTS: u32 = 50;

/// The prefix of the line an agent prints (with `ocf_exit_reason`) to say why it failed.
const EXIT_REASON_PREFIX: &str = "ocf-exit-reason:";

/// Parameters every agent built on the `ocf-shellfuncs` library understands, whether or
/// not its meta-data lists them.
const GENERIC_PARAMS: [&str; 3] = ["trace_ra", "trace_file", "trace_dir"];

/// An OCF resource agent, e.g. provider "heartbeat", agent "IPaddr2".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfSpec {
    pub provider: String,
    pub agent: String,
    /// `OCF_RESKEY_<name>=<value>` parameters.
    pub params: Vec<(String, String)>,
    /// `OCF_ROOT`; `None`: [`DEFAULT_OCF_ROOT`].
    pub root: Option<PathBuf>,
}

impl OcfSpec {
    /// An agent under [`DEFAULT_OCF_ROOT`].
    pub fn new(provider: &str, agent: &str, params: &[(&str, &str)]) -> OcfSpec {
        OcfSpec {
            provider: provider.to_string(),
            agent: agent.to_string(),
            params: params.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            root: None,
        }
    }

    /// `OCF_ROOT` for this agent.
    pub fn root(&self) -> &Path {
        self.root.as_deref().unwrap_or(Path::new(DEFAULT_OCF_ROOT))
    }

    /// `ocf:<provider>:<agent>`, the usual way to name an agent.
    pub fn name(&self) -> String {
        format!("ocf:{}:{}", self.provider, self.agent)
    }

    /// `$OCF_ROOT/resource.d/<provider>/<agent>`, after checking the names are single
    /// path components (nothing is looked up).
    pub fn agent_path(&self) -> Result<PathBuf, OcfError> {
        for (what, name) in [("provider", &self.provider), ("agent", &self.agent)] {
            let ok = !name.is_empty()
                && !name.starts_with('.')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
            if !ok {
                return Err(OcfError::Invalid(format!(
                    "OCF {what} name {name:?} must be a file name: letters, digits, '.', '_', '-', '+', not starting \
                     with '.'"
                )));
            }
        }
        Ok(self.root().join("resource.d").join(&self.provider).join(&self.agent))
    }
}

/// The time budget of each operation, from the resource's configuration: agents see it
/// as `OCF_RESKEY_CRM_meta_timeout` (and the monitor interval as
/// `OCF_RESKEY_CRM_meta_interval`), and some size their internal waits by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpBudget {
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub monitor_timeout: Duration,
    /// Zero: never monitored while active.
    pub monitor_interval: Duration,
}

impl OpBudget {
    /// The budget configured for a resource.
    pub fn of(spec: &ResourceSpec) -> OpBudget {
        OpBudget {
            start_timeout: spec.start_timeout,
            stop_timeout: spec.stop_timeout,
            monitor_timeout: spec.monitor_timeout,
            monitor_interval: spec.monitor_interval,
        }
    }
}

/// What can go wrong running an agent outside the start/stop/monitor outcomes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcfError {
    /// A provider, agent or parameter name or value that cannot be passed to an agent.
    #[error("{0}")]
    Invalid(String),
    /// There is no agent where the spec says.
    #[error("OCF agent {name} is not installed: {detail}")]
    NotInstalled { name: String, detail: String },
    /// The agent exists but cannot be executed.
    #[error("OCF agent {} cannot be executed: {detail}", path.display())]
    NotExecutable { path: PathBuf, detail: String },
    /// The agents' state directory (`HA_RSCTMP`) cannot be prepared.
    #[error("cannot prepare the OCF state directory {}: {source}", path.display())]
    StateDir { path: PathBuf, source: io::Error },
    /// Spawning the agent or waiting for it failed.
    #[error("cannot run OCF agent {}: {source}", path.display())]
    Run { path: PathBuf, source: io::Error },
    /// An action this module keeps the time of (`meta-data`, `validate-all`) ran too long;
    /// its process group was killed.
    #[error("{action} did not finish within {after:?}; its process group was killed")]
    TimedOut { action: String, after: Duration },
    /// An action ended with a failure.
    #[error("{action}: {detail}")]
    Failed { action: String, detail: String },
    /// The meta-data is not what the OCF spec describes.
    #[error("meta-data is not valid: {0}")]
    BadMetaData(String),
}

/// The exit codes of the OCF resource-agent API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcfExit {
    /// 0: the action succeeded; for monitor, the resource is running.
    Success,
    /// 1: unspecified error; for monitor, the resource is broken or in doubt.
    ErrGeneric,
    /// 2: invalid parameters (here).
    ErrArgs,
    /// 3: the action is not implemented.
    ErrUnimplemented,
    /// 4: insufficient privileges.
    ErrPerm,
    /// 5: software the agent needs is not installed here.
    ErrInstalled,
    /// 6: the parameters are inherently invalid.
    ErrConfigured,
    /// 7: monitor: cleanly stopped.
    NotRunning,
    /// 8: monitor: running in the promoted role.
    RunningPromoted,
    /// 9: monitor: failed in the promoted role.
    FailedPromoted,
    /// 190: running, but degraded.
    Degraded,
    /// 191: running promoted, but degraded.
    DegradedPromoted,
    /// Any other code.
    Other(i32),
}

impl OcfExit {
    pub fn from_code(code: i32) -> OcfExit {
        match code {
            0 => OcfExit::Success,
            1 => OcfExit::ErrGeneric,
            2 => OcfExit::ErrArgs,
            3 => OcfExit::ErrUnimplemented,
            4 => OcfExit::ErrPerm,
            5 => OcfExit::ErrInstalled,
            6 => OcfExit::ErrConfigured,
            7 => OcfExit::NotRunning,
            8 => OcfExit::RunningPromoted,
            9 => OcfExit::FailedPromoted,
            190 => OcfExit::Degraded,
            191 => OcfExit::DegradedPromoted,
            other => OcfExit::Other(other),
        }
    }

    pub fn code(self) -> i32 {
        match self {
            OcfExit::Success => 0,
            OcfExit::ErrGeneric => 1,
            OcfExit::ErrArgs => 2,
            OcfExit::ErrUnimplemented => 3,
            OcfExit::ErrPerm => 4,
            OcfExit::ErrInstalled => 5,
            OcfExit::ErrConfigured => 6,
            OcfExit::NotRunning => 7,
            OcfExit::RunningPromoted => 8,
            OcfExit::FailedPromoted => 9,
            OcfExit::Degraded => 190,
            OcfExit::DegradedPromoted => 191,
            OcfExit::Other(code) => code,
        }
    }

    /// The name the spec and `ocf-shellfuncs` use.
    pub fn name(self) -> &'static str {
        match self {
            OcfExit::Success => "OCF_SUCCESS",
            OcfExit::ErrGeneric => "OCF_ERR_GENERIC",
            OcfExit::ErrArgs => "OCF_ERR_ARGS",
            OcfExit::ErrUnimplemented => "OCF_ERR_UNIMPLEMENTED",
            OcfExit::ErrPerm => "OCF_ERR_PERM",
            OcfExit::ErrInstalled => "OCF_ERR_INSTALLED",
            OcfExit::ErrConfigured => "OCF_ERR_CONFIGURED",
            OcfExit::NotRunning => "OCF_NOT_RUNNING",
            OcfExit::RunningPromoted => "OCF_RUNNING_PROMOTED",
            OcfExit::FailedPromoted => "OCF_FAILED_PROMOTED",
            OcfExit::Degraded => "OCF_DEGRADED",
            OcfExit::DegradedPromoted => "OCF_DEGRADED_PROMOTED",
            OcfExit::Other(_) => "unknown OCF exit code",
        }
    }
}

impl fmt::Display for OcfExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// What an agent says about itself in its `meta-data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentMeta {
    /// The `name` of `<resource-agent>`.
    pub name: String,
    /// The agent's own version (`<resource-agent version=..>`).
    pub version: Option<String>,
    /// The OCF version it claims (`<version>`).
    pub ocf_version: Option<String>,
    pub shortdesc: String,
    pub parameters: Vec<ParamMeta>,
    pub actions: Vec<ActionMeta>,
}

/// One `<parameter>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamMeta {
    pub name: String,
    pub required: bool,
    pub deprecated: bool,
    /// `<content type=..>`: string, integer, boolean, select, ...
    pub content_type: Option<String>,
    pub default: Option<String>,
    pub shortdesc: String,
}

/// One `<action>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionMeta {
    pub name: String,
    pub timeout: Option<Duration>,
    pub interval: Option<Duration>,
    pub depth: Option<u32>,
    pub role: Option<String>,
}

impl AgentMeta {
    /// Reads `meta-data` output.
    pub fn parse(xml: &str) -> Result<AgentMeta, OcfError> {
        parse_meta(xml).map_err(OcfError::BadMetaData)
    }

    pub fn parameter(&self, name: &str) -> Option<&ParamMeta> {
        self.parameters.iter().find(|it| it.name == name)
    }

    /// Whether the agent advertises `action`.
    pub fn supports(&self, action: &str) -> bool {
        self.actions.iter().any(|it| it.name == action)
    }

    /// The timeout advertised for `action` (the first entry that has one).
    pub fn action_timeout(&self, action: &str) -> Option<Duration> {
        self.actions.iter().filter(|it| it.name == action).find_map(|it| it.timeout)
    }
}

/// Runs the agent's `meta-data` (at most [`META_DATA_TIMEOUT`]) and parses it.
pub async fn metadata(spec: &OcfSpec) -> Result<AgentMeta, OcfError> {
    let path = locate(spec)?;
    let env = agent_env(spec, None)?;
    let run = run_with_timeout(&path, "meta-data", &env, META_DATA_TIMEOUT).await?;
    if run.exit != Ok(0) {
        return Err(OcfError::Failed { action: "meta-data".into(), detail: describe_failure(&run) });
    }
    AgentMeta::parse(&String::from_utf8_lossy(&run.stdout))
}

/// [`metadata`] for callers without a runtime (command-line tools). Must not be called
/// from async code: use [`metadata`] there.
pub fn metadata_blocking(spec: &OcfSpec) -> Result<AgentMeta, OcfError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| OcfError::Run { path: spec.root().to_path_buf(), source })?;
    runtime.block_on(metadata(spec))
}

/// An OCF agent as a resource of a group.
pub struct Ocf {
    spec: OcfSpec,
    budget: Option<OpBudget>,
    /// This instance started the resource and has not stopped it (or seen it stopped)
    /// since: monitors are recurring monitors, not probes.
    active: bool,
}

impl Ocf {
    pub fn new(spec: OcfSpec) -> Self {
        Ocf { spec, budget: None, active: false }
    }

    /// Tells the agent each operation's budget ([`OpBudget`]).
    pub fn with_budget(mut self, budget: OpBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn spec(&self) -> &OcfSpec {
        &self.spec
    }

    async fn operate(&mut self, ctx: &Ctx, op: Op) -> OpOutcome {
        let who = format!("{} {}", self.spec.name(), op.name());
        let (path, env) = match self.prepare(ctx, op) {
            Ok(it) => it,
            Err(e) => return OpOutcome::Failed(format!("{who}: {e}")),
        };
        let run = match run_agent(&path, op.name(), &env).await {
            Ok(run) => run,
            Err(e) => return OpOutcome::Failed(format!("{who}: {e}")),
        };
        let outcome = outcome_of(op, &run);
        match (&outcome, run.exit) {
            (OpOutcome::Ok, Ok(190)) => {
                tracing::warn!(group = %ctx.group, resource = %ctx.resource, "{who}: the agent reports OCF_DEGRADED")
            }
            (OpOutcome::Ok, Ok(7)) => tracing::warn!(
                group = %ctx.group, resource = %ctx.resource,
                "{who}: the agent answered OCF_NOT_RUNNING (the spec asks for OCF_SUCCESS); taken as stopped"
            ),
            (OpOutcome::Failed(text), _) => {
                tracing::debug!(group = %ctx.group, resource = %ctx.resource, "{text}")
            }
            _ => {}
        }
        match (op, &outcome) {
            (Op::Start, OpOutcome::Ok) => self.active = true,
            (Op::Stop, OpOutcome::Ok) | (Op::Monitor, OpOutcome::NotRunning) => self.active = false,
            _ => {}
        }
        match outcome {
            OpOutcome::Failed(text) => OpOutcome::Failed(format!("{who}: {text}")),
            other => other,
        }
    }

    fn prepare(&self, ctx: &Ctx, op: Op) -> Result<(PathBuf, Env), OcfError> {
        let path = locate(&self.spec)?;
        let mut env = agent_env(&self.spec, Some(ctx))?;
        if let Some(timeout) = self.timeout(op) {
            env.push(meta_env("CRM_meta_timeout", timeout));
        }
        let interval = match (op, self.budget) {
            (Op::Monitor, Some(budget)) if self.active => budget.monitor_interval,
            _ => Duration::ZERO,
        };
        env.push(meta_env("CRM_meta_interval", interval));
        Ok((path, env))
    }

    fn timeout(&self, op: Op) -> Option<Duration> {
        let budget = self.budget?;
        Some(match op {
            Op::Start => budget.start_timeout,
            Op::Stop => budget.stop_timeout,
            Op::Monitor => budget.monitor_timeout,
        })
    }

    async fn plan(&self, ctx: &Ctx) -> PlanCheck {
        let name = self.spec.name();
        let mut notes = Vec::new();
        let path = match locate(&self.spec) {
            Ok(path) => path,
            Err(e) => return PlanCheck { ok: false, notes: vec![format!("{name}: {e}")] },
        };
        notes.push(format!("{name}: agent {}", path.display()));
        let meta = match metadata(&self.spec).await {
            Ok(meta) => meta,
            Err(e) => {
                notes.push(format!("{name}: meta-data: {e}"));
                return PlanCheck { ok: false, notes };
            }
        };
        notes.push(format!("{name}: {}", summarize(&meta)));
        let mut ok = true;

        let given: Vec<&str> = self.spec.params.iter().map(|(name, _)| name.as_str()).collect();
        if !given.is_empty() {
            notes.push(format!("{name}: parameters given: {}", given.join(", ")));
        }
        for param in meta.parameters.iter().filter(|it| it.required && !given.contains(&it.name.as_str())) {
            ok = false;
            notes.push(format!("{name}: missing required parameter {} ({})", param.name, param.shortdesc));
        }
        for unknown in given.iter().filter(|it| meta.parameter(it).is_none() && !GENERIC_PARAMS.contains(it)) {
            ok = false;
            let known: Vec<&str> = meta.parameters.iter().map(|it| it.name.as_str()).collect();
            notes.push(format!("{name}: unknown parameter {unknown} (the agent takes: {})", known.join(", ")));
        }
        for param in meta.parameters.iter().filter(|it| it.deprecated && given.contains(&it.name.as_str())) {
            notes.push(format!("{name}: parameter {} is deprecated", param.name));
        }
        let missing: Vec<&str> = ["start", "stop", "monitor"].into_iter().filter(|it| !meta.supports(it)).collect();
        if !missing.is_empty() {
            notes.push(format!("{name}: warning: meta-data does not advertise {}", missing.join(", ")));
        }

        if !meta.supports("validate-all") {
            notes.push(format!("{name}: validate-all: not supported by the agent"));
            return PlanCheck { ok, notes };
        }
        let timeout = meta.action_timeout("validate-all").unwrap_or(VALIDATE_TIMEOUT).min(VALIDATE_TIMEOUT_MAX);
        let env = match agent_env(&self.spec, Some(ctx)) {
            Ok(mut env) => {
                env.push(meta_env("CRM_meta_timeout", timeout));
                env.push(meta_env("CRM_meta_interval", Duration::ZERO));
                env
            }
            Err(e) => {
                notes.push(format!("{name}: validate-all: {e}"));
                return PlanCheck { ok: false, notes };
            }
        };
        match run_with_timeout(&path, "validate-all", &env, timeout).await {
            Ok(run) if run.exit == Ok(0) => notes.push(format!("{name}: validate-all: {}", OcfExit::Success)),
            Ok(run) if run.exit == Ok(3) => {
                notes.push(format!("{name}: validate-all: advertised but not implemented ({})", describe_failure(&run)))
            }
            Ok(run) => {
                ok = false;
                notes.push(format!("{name}: validate-all failed: {}", describe_failure(&run)));
            }
            Err(e) => {
                ok = false;
                notes.push(format!("{name}: validate-all: {e}"));
            }
        }
        PlanCheck { ok, notes }
    }
}

impl Resource for Ocf {
    fn start<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.operate(ctx, Op::Start))
    }
    fn stop<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.operate(ctx, Op::Stop))
    }
    fn monitor<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.operate(ctx, Op::Monitor))
    }
    fn check<'a>(&'a mut self, ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(self.plan(ctx))
    }
}

// ---------------------------------------------------------------------------------------
// Operations and exit codes
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Start,
    Stop,
    Monitor,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Monitor => "monitor",
        }
    }
}

/// The outcome of an operation that ran to its end (see the module docs for the table).
fn outcome_of(op: Op, run: &AgentRun) -> OpOutcome {
    let Ok(code) = run.exit else { return OpOutcome::Failed(describe_failure(run)) };
    match (op, OcfExit::from_code(code)) {
        (_, OcfExit::Success | OcfExit::Degraded) => OpOutcome::Ok,
        (Op::Monitor, OcfExit::NotRunning) => OpOutcome::NotRunning,
        (Op::Stop, OcfExit::NotRunning) => OpOutcome::Ok,
        (_, OcfExit::RunningPromoted | OcfExit::FailedPromoted | OcfExit::DegradedPromoted) => {
            OpOutcome::Failed(format!("{}; promotable resources are not supported yet", describe_failure(run)))
        }
        _ => OpOutcome::Failed(describe_failure(run)),
    }
}

/// "OCF_ERR_CONFIGURED (6): <exit reason> [stderr: <last lines>]".
fn describe_failure(run: &AgentRun) -> String {
    let mut text = match run.exit {
        Ok(code) => OcfExit::from_code(code).to_string(),
        Err(signal) => format!("killed by signal {signal}"),
    };
    let stderr = String::from_utf8_lossy(&run.stderr);
    let reason = stderr.lines().rev().find_map(|it| it.strip_prefix(EXIT_REASON_PREFIX)).map(str::trim);
    if let Some(reason) = reason.filter(|it| !it.is_empty()) {
        text.push_str(": ");
        text.push_str(reason);
    }
    let mut lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|it| !it.is_empty() && !it.starts_with(EXIT_REASON_PREFIX))
        .rev()
        .take(STDERR_LINES)
        .collect();
    lines.reverse();
    if !lines.is_empty() {
        text.push_str(&format!(" [stderr: {}]", lines.join(" | ")));
    }
    text
}

fn summarize(meta: &AgentMeta) -> String {
    let required: Vec<&str> = meta.parameters.iter().filter(|it| it.required).map(|it| it.name.as_str()).collect();
    let actions: Vec<&str> = {
        let mut names: Vec<&str> = Vec::new();
        for action in &meta.actions {
            if !names.contains(&action.name.as_str()) {
                names.push(&action.name);
            }
        }
        names
    };
    format!(
        "meta-data: {}{}, {} parameters (required: {}), actions: {}",
        meta.name,
        meta.version.as_deref().map(|it| format!(" {it}")).unwrap_or_default(),
        meta.parameters.len(),
        if required.is_empty() { "none".to_string() } else { required.join(", ") },
        actions.join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// Finding and running agents
// ---------------------------------------------------------------------------------------

/// The agent's path, checked to be an executable file; a clear error otherwise.
fn locate(spec: &OcfSpec) -> Result<PathBuf, OcfError> {
    let path = spec.agent_path()?;
    let not_installed = |detail: String| OcfError::NotInstalled { name: spec.name(), detail };
    let provider_dir = path.parent().expect("the agent path has a provider directory");
    if !provider_dir.is_dir() {
        let providers_dir = spec.root().join("resource.d");
        let providers = list_dir(&providers_dir);
        let known = if providers.is_empty() { "none".to_string() } else { providers.join(", ") };
        return Err(not_installed(format!(
            "no provider directory {} (providers in {}: {known})",
            provider_dir.display(),
            providers_dir.display()
        )));
    }
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let similar = list_dir(provider_dir).into_iter().find(|it| it.eq_ignore_ascii_case(&spec.agent));
            let hint = similar.map(|it| format!("; did you mean {it}?")).unwrap_or_default();
            return Err(not_installed(format!("{} does not exist{hint}", path.display())));
        }
        Err(e) => return Err(not_installed(format!("{}: {e}", path.display()))),
    };
    if !meta.is_file() {
        return Err(OcfError::NotExecutable { path, detail: "not a regular file".into() });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(OcfError::NotExecutable { path, detail: "no execute permission".into() });
    }
    if let Err(e) = access(&path, AccessFlags::X_OK) {
        return Err(OcfError::NotExecutable { path, detail: e.desc().to_string() });
    }
    Ok(path)
}

/// The names in a directory, sorted; empty if it cannot be read.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|it| it.ok()).map(|it| it.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

type Env = Vec<(OsString, OsString)>;

/// `OCF_RESKEY_<name>=<milliseconds>`, how Pacemaker passes its operation attributes.
fn meta_env(name: &str, value: Duration) -> (OsString, OsString) {
    (format!("OCF_RESKEY_{name}").into(), value.as_millis().to_string().into())
}

/// The environment of an action (see the module docs). With a `ctx`, it is a resource
/// action: the instance, the parameters and `HA_RSCTMP` are set, which can fail (a
/// parameter that cannot be an environment variable, an unwritable state dir).
fn agent_env(spec: &OcfSpec, ctx: Option<&Ctx>) -> Result<Env, OcfError> {
    let mut env: Env = std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            name != "PATH" && !name.starts_with("OCF_") && !name.starts_with("HA_")
        })
        .collect();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.push(("PATH".into(), with_sbin(&path)));
    let mut set = |name: &str, value: &OsStr| env.push((name.into(), value.to_os_string()));
    set("OCF_ROOT", spec.root().as_os_str());
    set("OCF_RA_VERSION_MAJOR", "1".as_ref());
    set("OCF_RA_VERSION_MINOR", "1".as_ref());
    set("OCF_RESOURCE_TYPE", spec.agent.as_ref());
    set("OCF_RESOURCE_PROVIDER", spec.provider.as_ref());
    let Some(ctx) = ctx else { return Ok(env) };
    set("OCF_RESOURCE_INSTANCE", format!("{}-{}", ctx.group, ctx.resource).as_ref());
    let rsctmp = prepare_rsctmp(&ctx.state_dir)
        .map_err(|source| OcfError::StateDir { path: ctx.state_dir.join("ocf").join("rsctmp"), source })?;
    set("HA_RSCTMP", rsctmp.as_os_str());
    for (name, value) in &spec.params {
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(OcfError::Invalid(format!(
                "parameter name {name:?} cannot be passed as OCF_RESKEY_{name}: use letters, digits and '_'"
            )));
        }
        if value.contains('\0') {
            return Err(OcfError::Invalid(format!("the value of parameter {name} contains a NUL byte")));
        }
        env.push((format!("OCF_RESKEY_{name}").into(), value.into()));
    }
    Ok(env)
}

/// `PATH` with the sbin directories appended where missing: agents call `ip`, `mount`,
/// `losetup` and friends by name.
fn with_sbin(path: &OsStr) -> OsString {
    let mut out = path.to_os_string();
    let present: Vec<PathBuf> = std::env::split_paths(path).collect();
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !present.iter().any(|it| it == Path::new(dir)) {
            out.push(":");
            out.push(dir);
        }
    }
    out
}

/// One run of an agent, to its end.
#[derive(Debug)]
struct AgentRun {
    /// `Ok(code)` if it exited, `Err(signal)` if a signal killed it.
    exit: Result<i32, i32>,
    /// The first [`STDOUT_LIMIT`] bytes of its stdout.
    stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of its stderr.
    stderr: Vec<u8>,
}

/// SIGKILLs a process group when dropped, unless disarmed. Armed only while the group's
/// leader is unreaped, so the id cannot have been reused.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// [`run_agent`], killed (by dropping it) after `timeout`.
async fn run_with_timeout(path: &Path, action: &str, env: &Env, timeout: Duration) -> Result<AgentRun, OcfError> {
    match tokio::time::timeout(timeout, run_agent(path, action, env)).await {
        Ok(result) => result,
        Err(_) => Err(OcfError::TimedOut { action: action.to_string(), after: timeout }),
    }
}

/// Runs `<path> <action>` with exactly `env` until it exits. Cancellation-safe: dropped
/// before the agent exits, it SIGKILLs the agent's process group.
async fn run_agent(path: &Path, action: &str, env: &Env) -> Result<AgentRun, OcfError> {
    let mut command = tokio::process::Command::new(path);
    command
        .arg(action)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let run_error = |source| OcfError::Run { path: path.to_path_buf(), source };
    let mut attempt = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < TXTBSY_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(TXTBSY_RETRY).await;
            }
            Err(e) => return Err(run_error(e)),
        }
    };
    // Unreaped, so it has an id.
    let pid = child.id().expect("an unreaped child has a pid") as i32;
    let mut guard = GroupKill(Some(pid));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 4096]);
    let status = loop {
        tokio::select! {
            status = child.wait() => {
                // Reaped (on success): the group id may be reused from now on.
                if status.is_ok() {
                    guard.0 = None;
                }
                break status.map_err(run_error)?;
            }
            n = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match n {
                Ok(n) if n > 0 => keep_head(&mut out, &out_buf[..n]),
                _ => stdout = None,
            },
            n = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match n {
                Ok(n) if n > 0 => keep_tail(&mut err, &err_buf[..n]),
                _ => stderr = None,
            },
        }
    };
    // Whatever the agent left running may still hold the pipes: read what comes within a
    // bounded time, then close them.
    let _ = tokio::time::timeout(OUTPUT_DRAIN, async {
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                n = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match n {
                    Ok(n) if n > 0 => keep_head(&mut out, &out_buf[..n]),
                    _ => stdout = None,
                },
                n = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match n {
                    Ok(n) if n > 0 => keep_tail(&mut err, &err_buf[..n]),
                    _ => stderr = None,
                },
            }
        }
    })
    .await;
    use std::os::unix::process::ExitStatusExt;
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => Ok(code),
        (None, Some(signal)) => Err(signal),
        (None, None) => Err(0),
    };
    Ok(AgentRun { exit, stdout: out, stderr: err })
}

async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

fn keep_head(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = STDOUT_LIMIT.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn keep_tail(kept: &mut Vec<u8>, bytes: &[u8]) {
    kept.extend_from_slice(bytes);
    if kept.len() > STDERR_TAIL {
        let cut = kept.len() - STDERR_TAIL;
        kept.drain(..cut);
    }
}

// ---------------------------------------------------------------------------------------
// HA_RSCTMP
// ---------------------------------------------------------------------------------------

/// Serializes the boot check of [`prepare_rsctmp`] between resources of this process.
static RSCTMP_LOCK: Mutex<()> = Mutex::new(());

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// `<state_dir>/ocf/rsctmp`, created if missing and emptied if it was filled during an
/// earlier boot (see the module docs).
fn prepare_rsctmp(state_dir: &Path) -> io::Result<PathBuf> {
    let base = state_dir.join("ocf");
    let dir = base.join("rsctmp");
    let marker = base.join("rsctmp.boot_id");
    let _serial = RSCTMP_LOCK.lock().unwrap_or_else(|it| it.into_inner());
    let boot = fs::read_to_string(BOOT_ID).map(|it| it.trim().to_string()).ok();
    let recorded = fs::read_to_string(&marker).map(|it| it.trim().to_string()).ok();
    if let Some(boot) = boot
        && recorded.as_deref() != Some(boot.as_str())
    {
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(&dir)?;
        let tmp = base.join("rsctmp.boot_id.tmp");
        fs::write(&tmp, format!("{boot}\n"))?;
        fs::rename(&tmp, &marker)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------
// Meta-data
// ---------------------------------------------------------------------------------------

/// An OCF duration ("20s", "20", "500ms", "1m", "1min", "2h"); `None` if not one.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let value: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..].trim();
    Some(match unit {
        "" | "s" | "sec" | "secs" => Duration::from_secs(value),
        "ms" | "msec" | "msecs" => Duration::from_millis(value),
        "us" | "usec" | "usecs" => Duration::from_micros(value),
        "m" | "min" | "mins" => Duration::from_secs(value.checked_mul(60)?),
        "h" | "hr" | "hrs" => Duration::from_secs(value.checked_mul(3600)?),
        _ => return None,
    })
}

fn is_true(value: Option<&str>) -> bool {
    matches!(value.map(str::trim), Some("1" | "true" | "yes" | "on"))
}

fn parse_meta(xml: &str) -> Result<AgentMeta, String> {
    let events = xml_events(xml)?;
    let mut stack: Vec<&str> = Vec::new();
    let mut meta: Option<AgentMeta> = None;
    // Text of the open <shortdesc> or <version>, and the shortdesc's language.
    let mut text = String::new();
    let mut lang: Option<String> = None;
    for event in events {
        match event {
            XmlEvent::Open { name, attrs, empty } => {
                let attr = |key: &str| attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
                match (stack.last().copied(), meta.as_mut()) {
                    (None, None) if name == "resource-agent" => {
                        meta = Some(AgentMeta {
                            name: attr("name").ok_or("<resource-agent> has no name")?,
                            version: attr("version"),
                            ocf_version: None,
                            shortdesc: String::new(),
                            parameters: Vec::new(),
                            actions: Vec::new(),
                        })
                    }
                    (None, None) => return Err(format!("the document is a <{name}>, not a <resource-agent>")),
                    (None, Some(_)) => return Err(format!("a second root element <{name}>")),
                    (Some(_), None) => unreachable!("elements nest in the root, which made the meta-data"),
                    (Some(parent), Some(meta)) => match (parent, name) {
                        ("parameters", "parameter") => meta.parameters.push(ParamMeta {
                            name: attr("name").ok_or("a <parameter> has no name")?,
                            required: is_true(attr("required").as_deref()),
                            deprecated: false,
                            content_type: None,
                            default: None,
                            shortdesc: String::new(),
                        }),
                        ("parameter", "content") => {
                            if let Some(param) = meta.parameters.last_mut() {
                                param.content_type = attr("type");
                                param.default = attr("default");
                            }
                        }
                        ("parameter", "deprecated") => {
                            if let Some(param) = meta.parameters.last_mut() {
                                param.deprecated = true;
                            }
                        }
                        ("actions", "action") => meta.actions.push(ActionMeta {
                            name: attr("name").ok_or("an <action> has no name")?,
                            timeout: attr("timeout").as_deref().and_then(parse_duration),
                            interval: attr("interval").as_deref().and_then(parse_duration),
                            depth: attr("depth").and_then(|it| it.trim().parse().ok()),
                            role: attr("role"),
                        }),
                        (_, "shortdesc") => {
                            text.clear();
                            lang = attr("lang");
                        }
                        (_, "version") => text.clear(),
                        _ => {}
                    },
                }
                stack.push(name);
                if empty {
                    close(&mut stack, name, &mut meta, &text, lang.as_deref())?;
                }
            }
            XmlEvent::Close(name) => close(&mut stack, name, &mut meta, &text, lang.as_deref())?,
            XmlEvent::Text(it) => {
                if matches!(stack.last(), Some(&"shortdesc" | &"version")) {
                    text.push_str(&it);
                } else if stack.is_empty() && !it.trim().is_empty() {
                    return Err(format!("text outside the root element: {:?}", it.trim()));
                }
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{open}> is not closed"));
    }
    meta.ok_or_else(|| "no <resource-agent> element".to_string())
}

/// Closes element `name`, storing the text of a `<shortdesc>` or `<version>`.
fn close(
    stack: &mut Vec<&str>,
    name: &str,
    meta: &mut Option<AgentMeta>,
    text: &str,
    lang: Option<&str>,
) -> Result<(), String> {
    match stack.pop() {
        Some(open) if open == name => {}
        Some(open) => return Err(format!("</{name}> closes <{open}>")),
        None => return Err(format!("</{name}> closes nothing")),
    }
    let Some(meta) = meta.as_mut() else { return Ok(()) };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // The English text wins over translations; otherwise the first one.
    let take = |current: &str| current.is_empty() || lang.is_some_and(|it| it.starts_with("en"));
    match (stack.last().copied(), name) {
        (Some("resource-agent"), "shortdesc") if take(&meta.shortdesc) => meta.shortdesc = text,
        (Some("resource-agent"), "version") => meta.ocf_version = Some(text),
        (Some("parameter"), "shortdesc") => {
            if let Some(param) = meta.parameters.last_mut()
                && take(&param.shortdesc)
            {
                param.shortdesc = text;
            }
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum XmlEvent<'a> {
    Open { name: &'a str, attrs: Vec<(&'a str, String)>, empty: bool },
    Close(&'a str),
    Text(String),
}

/// Splits an XML document into elements and text (see the module docs for the subset).
fn xml_events(xml: &str) -> Result<Vec<XmlEvent<'_>>, String> {
    let mut events = Vec::new();
    let mut at = 0;
    let find = |from: usize, what: &str| xml[from..].find(what).map(|it| from + it);
    while at < xml.len() {
        let rest = &xml[at..];
        if !rest.starts_with('<') {
            let end = find(at, "<").unwrap_or(xml.len());
            events.push(XmlEvent::Text(decode(&xml[at..end])?));
            at = end;
        } else if rest.starts_with("<!--") {
            at = find(at + 4, "-->").ok_or("unterminated comment")? + 3;
        } else if rest.starts_with("<![CDATA[") {
            let end = find(at + 9, "]]>").ok_or("unterminated CDATA section")?;
            events.push(XmlEvent::Text(xml[at + 9..end].to_string()));
            at = end + 3;
        } else if rest.starts_with("<?") {
            at = find(at + 2, "?>").ok_or("unterminated processing instruction")? + 2;
        } else if rest.starts_with("<!") {
            // A DOCTYPE, possibly with an internal subset in brackets.
            let mut depth = 0usize;
            let mut end = None;
            for (i, c) in rest.char_indices().skip(2) {
                match c {
                    '[' => depth += 1,
                    ']' => depth = depth.saturating_sub(1),
                    '>' if depth == 0 => {
                        end = Some(at + i);
                        break;
                    }
                    _ => {}
                }
            }
            at = end.ok_or("unterminated declaration")? + 1;
        } else if let Some(tag) = rest.strip_prefix("</") {
            let end = tag.find('>').ok_or("unterminated closing tag")?;
            let name = tag[..end].trim();
            if name.is_empty() {
                return Err("a closing tag without a name".into());
            }
            events.push(XmlEvent::Close(name));
            at += 2 + end + 1;
        } else {
            let (event, len) = open_tag(rest)?;
            events.push(event);
            at += len;
        }
    }
    Ok(events)
}

/// Parses `<name attr="value" ...>` or `<name .../>` at the start of `tag`; returns the
/// event and the tag's length.
fn open_tag(tag: &str) -> Result<(XmlEvent<'_>, usize), String> {
    let bytes = tag.as_bytes();
    // Names end at an ASCII byte, so every index below is a character boundary.
    let is_name = |c: u8| c.is_ascii_alphanumeric() || b"_-.:".contains(&c) || c >= 0x80;
    let skip = |mut at: usize, pred: &dyn Fn(u8) -> bool| {
        while at < bytes.len() && pred(bytes[at]) {
            at += 1;
        }
        at
    };
    let mut at = skip(1, &is_name);
    let name = &tag[1..at];
    if name.is_empty() {
        return Err(format!("a '<' that starts no tag: {:?}", excerpt(tag)));
    }
    let mut attrs = Vec::new();
    loop {
        at = skip(at, &|c: u8| c.is_ascii_whitespace());
        let rest = &tag[at..];
        if rest.is_empty() {
            return Err(format!("<{name}> is not terminated"));
        }
        if rest.starts_with("/>") {
            return Ok((XmlEvent::Open { name, attrs, empty: true }, at + 2));
        }
        if rest.starts_with('>') {
            return Ok((XmlEvent::Open { name, attrs, empty: false }, at + 1));
        }
        let key_start = at;
        at = skip(at, &is_name);
        if at == key_start {
            return Err(format!("bad attribute in <{name}>: {:?}", excerpt(rest)));
        }
        let key = &tag[key_start..at];
        at = skip(at, &|c: u8| c.is_ascii_whitespace());
        if bytes.get(at) != Some(&b'=') {
            return Err(format!("attribute {key} of <{name}> has no value"));
        }
        at = skip(at + 1, &|c: u8| c.is_ascii_whitespace());
        let quote = match bytes.get(at) {
            Some(&q @ (b'"' | b'\'')) => q as char,
            _ => return Err(format!("attribute {key} of <{name}> is not quoted")),
        };
        let value_start = at + 1;
        let value_end = tag[value_start..]
            .find(quote)
            .map(|it| value_start + it)
            .ok_or_else(|| format!("attribute {key} of <{name}> is not closed"))?;
        attrs.push((key, decode(&tag[value_start..value_end])?));
        at = value_end + 1;
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Replaces the predefined and numeric entities.
fn decode(text: &str) -> Result<String, String> {
    if !text.contains('&') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';').ok_or_else(|| format!("unterminated entity in {:?}", excerpt(rest)))?;
        let entity = &rest[at + 1..at + end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::time::Instant;

    use takeover_core::Epoch;

    use super::*;
    use crate::netbed::{CLIENT, Netbed};
    use crate::resources::{ResourceKind, ResourceSpec, instantiate};
    use crate::service::testutil::{alive, poll_until, starttime};

    const T: Duration = Duration::from_secs(10);

    use crate::service::testutil::root_or_skip;

    fn ctx(state_dir: &Path, group: &str, resource: &str) -> Ctx {
        Ctx {
            node: "n1".into(),
            scope: "n1".into(),
            node_index: 0,
            group: group.into(),
            resource: resource.into(),
            state_dir: state_dir.to_path_buf(),
            generation: Epoch::ZERO,
        }
    }

    fn resource(name: &str, spec: OcfSpec) -> ResourceSpec {
        ResourceSpec {
            name: name.into(),
            kind: ResourceKind::Ocf(spec),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            monitor_timeout: Duration::from_secs(20),
            monitor_interval: Duration::from_secs(10),
        }
    }

    fn path_param(path: &Path) -> String {
        path.to_str().expect("test paths are UTF-8").to_string()
    }

    /// A service group on one node, made through [`instantiate`] like the agent makes
    /// it: started in order, stopped in reverse.
    struct Group {
        members: Vec<(Box<dyn Resource>, Ctx)>,
    }

    impl Group {
        fn new(name: &str, state_dir: &Path, resources: Vec<ResourceSpec>) -> Group {
            let members = resources.iter().map(|it| (instantiate(it), ctx(state_dir, name, &it.name))).collect();
            Group { members }
        }

        async fn start(&mut self) {
            for (res, ctx) in &mut self.members {
                let outcome = res.start(ctx).await;
                assert_eq!(outcome, OpOutcome::Ok, "start {}", ctx.resource);
            }
        }

        async fn stop(&mut self) {
            for (res, ctx) in self.members.iter_mut().rev() {
                let outcome = res.stop(ctx).await;
                assert_eq!(outcome, OpOutcome::Ok, "stop {}", ctx.resource);
            }
        }

        async fn monitor(&mut self) -> Vec<OpOutcome> {
            let mut outcomes = Vec::new();
            for (res, ctx) in &mut self.members {
                outcomes.push(res.monitor(ctx).await);
            }
            outcomes
        }

        async fn check(&mut self) -> Vec<PlanCheck> {
            let mut checks = Vec::new();
            for (res, ctx) in &mut self.members {
                checks.push(res.check(ctx).await);
            }
            checks
        }
    }

    fn write_agent(root: &Path, provider: &str, name: &str, script: &str, mode: u32) {
        let dir = root.join("resource.d").join(provider);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Start, stop and monitor record their environment in `$OCF_RESKEY_dir/env.<action>`
    /// and exit with `$OCF_RESKEY_rc` ("kill": killed by SIGKILL); no validate-all.
    const FAKE: &str = r#"#!/bin/sh
case "$1" in
meta-data)
    cat <<'END'
<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Fake" version="0.1">
<version>1.1</version>
<shortdesc lang="en">A scriptable agent for tests</shortdesc>
<parameters>
<parameter name="dir" required="1">
<shortdesc lang="en">Where to record calls</shortdesc>
<content type="string"/>
</parameter>
<parameter name="rc">
<shortdesc lang="en">Exit code</shortdesc>
<content type="integer" default="0"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s"/>
<action name="stop" timeout="20s"/>
<action name="monitor" timeout="20s" interval="10s"/>
<action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
END
    exit 0;;
esac
env > "$OCF_RESKEY_dir/env.$1"
for i in 1 2 3 4 5; do echo "noise $i" >&2; done
echo "ocf-exit-reason:fake failure reason" >&2
echo "last words" >&2
[ "$OCF_RESKEY_rc" = kill ] && kill -KILL $$
exit "${OCF_RESKEY_rc:-0}"
"#;

    /// Start and validate-all leave a `sleep` in the agent's group, write
    /// "<agent pid> <sleep pid>" to `$OCF_RESKEY_dir/pids.<action>` and wait forever.
    const SLEEPER: &str = r#"#!/bin/sh
case "$1" in
meta-data)
    echo '<resource-agent name="Sleeper"><parameters><parameter name="dir"/></parameters>'
    echo '<actions><action name="start" timeout="2s"/><action name="validate-all" timeout="1s"/></actions>'
    echo '</resource-agent>'
    exit 0;;
start|validate-all)
    sleep 600 &
    echo "$$ $!" > "$OCF_RESKEY_dir/pids.tmp"
    mv "$OCF_RESKEY_dir/pids.tmp" "$OCF_RESKEY_dir/pids.$1"
    wait
    exit 0;;
esac
exit 7
"#;

    fn fake_root(dir: &Path) -> PathBuf {
        let root = dir.join("ocf");
        write_agent(&root, "test", "Fake", FAKE, 0o755);
        write_agent(&root, "test", "Sleeper", SLEEPER, 0o755);
        write_agent(&root, "test", "NoExec", FAKE, 0o644);
        write_agent(&root, "test", "BadMeta", "#!/bin/sh\necho '<resource-agent name=\"x\"><parameters>'\n", 0o755);
        root
    }

    fn fake_spec(root: &Path, agent: &str, params: &[(&str, &str)]) -> OcfSpec {
        OcfSpec { root: Some(root.to_path_buf()), ..OcfSpec::new("test", agent, params) }
    }

    fn env_file(path: &Path) -> Vec<(String, String)> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|it| it.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has_note(check: &PlanCheck, text: &str) -> bool {
        check.notes.iter().any(|it| it.contains(text))
    }

    // -----------------------------------------------------------------------------------
    // Pure parts
    // -----------------------------------------------------------------------------------

    #[test]
    fn ocf_exit_codes_map_to_outcomes() {
        let run = |code: i32| AgentRun { exit: Ok(code), stdout: Vec::new(), stderr: Vec::new() };
        let ok = OpOutcome::Ok;
        let table: &[(Op, i32, Option<OpOutcome>)] = &[
            (Op::Start, 0, Some(ok.clone())),
            (Op::Stop, 0, Some(ok.clone())),
            (Op::Monitor, 0, Some(ok.clone())),
            (Op::Monitor, 7, Some(OpOutcome::NotRunning)),
            (Op::Stop, 7, Some(ok.clone())),
            (Op::Start, 7, None),
            (Op::Monitor, 190, Some(ok.clone())),
            (Op::Start, 190, Some(ok.clone())),
        ];
        for (op, code, expected) in table {
            let outcome = outcome_of(*op, &run(*code));
            match expected {
                Some(expected) => assert_eq!(&outcome, expected, "{op:?} {code}"),
                None => assert!(matches!(outcome, OpOutcome::Failed(_)), "{op:?} {code}: {outcome:?}"),
            }
        }
        for (code, name) in [
            (1, "OCF_ERR_GENERIC (1)"),
            (2, "OCF_ERR_ARGS (2)"),
            (3, "OCF_ERR_UNIMPLEMENTED (3)"),
            (4, "OCF_ERR_PERM (4)"),
            (5, "OCF_ERR_INSTALLED (5)"),
            (6, "OCF_ERR_CONFIGURED (6)"),
            (42, "unknown OCF exit code (42)"),
        ] {
            for op in [Op::Start, Op::Stop, Op::Monitor] {
                assert_eq!(outcome_of(op, &run(code)), OpOutcome::Failed(name.to_string()), "{op:?} {code}");
            }
        }
        for (code, name) in
            [(8, "OCF_RUNNING_PROMOTED (8)"), (9, "OCF_FAILED_PROMOTED (9)"), (191, "OCF_DEGRADED_PROMOTED (191)")]
        {
            let OpOutcome::Failed(text) = outcome_of(Op::Monitor, &run(code)) else { panic!("{code} succeeded") };
            assert_eq!(text, format!("{name}; promotable resources are not supported yet"));
        }
        for code in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 190, 191, 255] {
            assert_eq!(OcfExit::from_code(code).code(), code);
        }
        let killed = AgentRun { exit: Err(9), stdout: Vec::new(), stderr: b"bye\n".to_vec() };
        assert_eq!(outcome_of(Op::Stop, &killed), OpOutcome::Failed("killed by signal 9 [stderr: bye]".into()));
    }

    #[test]
    fn ocf_failure_text_has_the_reason_and_the_last_lines_of_stderr() {
        let stderr = "a\n\nb\nocf-exit-reason:first\nc\nd\ne\nocf-exit-reason: the reason \nf\ng\n";
        let run = AgentRun { exit: Ok(6), stdout: Vec::new(), stderr: stderr.as_bytes().to_vec() };
        assert_eq!(describe_failure(&run), "OCF_ERR_CONFIGURED (6): the reason [stderr: c | d | e | f | g]");
        let mut tail = Vec::new();
        keep_tail(&mut tail, &vec![b'x'; 3 * STDERR_TAIL]);
        keep_tail(&mut tail, b"end");
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with(b"xend"));
        let mut head = Vec::new();
        keep_head(&mut head, &vec![b'y'; STDOUT_LIMIT - 1]);
        keep_head(&mut head, b"zz");
        assert_eq!(head.len(), STDOUT_LIMIT);
        assert_eq!(head.last(), Some(&b'z'));
    }

    #[test]
    fn ocf_durations_parse() {
        for (text, expected) in [
            ("20s", Some(Duration::from_secs(20))),
            ("20", Some(Duration::from_secs(20))),
            (" 5 sec ", Some(Duration::from_secs(5))),
            ("500ms", Some(Duration::from_millis(500))),
            ("2m", Some(Duration::from_secs(120))),
            ("1min", Some(Duration::from_secs(60))),
            ("1h", Some(Duration::from_secs(3600))),
            ("10us", Some(Duration::from_micros(10))),
            ("", None),
            ("s", None),
            ("1.5s", None),
            ("20 parsecs", None),
            ("-1s", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text:?}");
        }
    }

    const META: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd" [ <!ELEMENT x (y)> ]>
<!-- a comment with <tags> inside -->
<resource-agent name="Demo" version="2.5">
<version>1.1</version>
<longdesc lang="en">Long <b>text</b> &amp; more</longdesc>
<shortdesc lang="de">Vorführung</shortdesc>
<shortdesc lang="en">A   demo
   agent &lt;&#x41;&#66;&gt;</shortdesc>
<parameters>
<parameter name="ip" unique-group="addr" required="1" reloadable='0'>
<longdesc lang="en"><![CDATA[Uses <raw> & text]]></longdesc>
<shortdesc lang="en">IPv4 &quot;address&quot;</shortdesc>
<content type="string" default="" />
</parameter>
<parameter name="old" required="0">
<deprecated><replaced-with name="ip"/></deprecated>
<content type="select" default="a"><option value="a"/><option value="b"/></content>
</parameter>
<parameter name="flag"/>
</parameters>
<actions>
<action name="start" timeout="20s"/>
<action name="monitor" timeout="30s" interval="10s" depth="0"/>
<action name="monitor" timeout="60s" interval="1m" depth="10"/>
<action name="promote" timeout="5" role="promoted"/>
<action name="validate-all" timeout="500ms"/>
</actions>
</resource-agent>
"#;

    #[test]
    fn ocf_meta_data_parses() {
        let meta = AgentMeta::parse(META).unwrap();
        assert_eq!(meta.name, "Demo");
        assert_eq!(meta.version.as_deref(), Some("2.5"));
        assert_eq!(meta.ocf_version.as_deref(), Some("1.1"));
        assert_eq!(meta.shortdesc, "A demo agent <AB>");
        assert_eq!(
            meta.parameters,
            vec![
                ParamMeta {
                    name: "ip".into(),
                    required: true,
                    deprecated: false,
                    content_type: Some("string".into()),
                    default: Some(String::new()),
                    shortdesc: "IPv4 \"address\"".into(),
                },
                ParamMeta {
                    name: "old".into(),
                    required: false,
                    deprecated: true,
                    content_type: Some("select".into()),
                    default: Some("a".into()),
                    shortdesc: String::new(),
                },
                ParamMeta {
                    name: "flag".into(),
                    required: false,
                    deprecated: false,
                    content_type: None,
                    default: None,
                    shortdesc: String::new(),
                },
            ]
        );
        let names: Vec<&str> = meta.actions.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, ["start", "monitor", "monitor", "promote", "validate-all"]);
        assert_eq!(meta.actions[2].interval, Some(Duration::from_secs(60)));
        assert_eq!(meta.actions[2].depth, Some(10));
        assert_eq!(meta.actions[3].role.as_deref(), Some("promoted"));
        assert_eq!(meta.action_timeout("monitor"), Some(Duration::from_secs(30)));
        assert_eq!(meta.action_timeout("validate-all"), Some(Duration::from_millis(500)));
        assert!(meta.supports("promote") && !meta.supports("stop"));
        assert!(meta.parameter("ip").is_some_and(|it| it.required));
        assert_eq!(
            summarize(&meta),
            "meta-data: Demo 2.5, 3 parameters (required: ip), actions: start, monitor, promote, validate-all"
        );
    }

    #[test]
    fn ocf_meta_data_errors_are_reported() {
        for (xml, says) in [
            ("", "no <resource-agent>"),
            ("<?xml version=\"1.0\"?>\n<html></html>", "not a <resource-agent>"),
            ("<resource-agent name=\"x\"><parameters></resource-agent>", "</resource-agent> closes <parameters>"),
            ("<resource-agent name=\"x\"><parameters>", "<parameters> is not closed"),
            ("<resource-agent name=\"x\"/><resource-agent name=\"y\"/>", "a second root element"),
            ("<resource-agent><parameters/></resource-agent>", "<resource-agent> has no name"),
            ("<resource-agent name=\"x\"><parameters><parameter/></parameters></resource-agent>", "no name"),
            ("<resource-agent name=\"x\"><actions><action timeout=\"1s\"/></actions></resource-agent>", "no name"),
            ("<resource-agent name=x/>", "is not quoted"),
            ("<resource-agent name=\"x/>", "is not closed"),
            ("<resource-agent name=\"x\" junk/>", "has no value"),
            ("<resource-agent name=\"&bogus;\"/>", "unknown entity &bogus;"),
            ("<resource-agent name=\"x\"", "is not terminated"),
            ("<!-- <resource-agent name=\"x\"/>", "unterminated comment"),
            ("garbage <resource-agent name=\"x\"/>", "text outside the root element"),
            ("<resource-agent name=\"x\"/></x>", "closes nothing"),
            ("< resource-agent/>", "starts no tag"),
        ] {
            match AgentMeta::parse(xml) {
                Err(OcfError::BadMetaData(text)) => assert!(text.contains(says), "{xml:?}: {text}"),
                other => panic!("{xml:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn ocf_meta_data_of_debian_agents() {
        let dummy = metadata(&OcfSpec::new("heartbeat", "Dummy", &[])).await.unwrap();
        assert_eq!(dummy.name, "Dummy");
        let names: Vec<&str> = dummy.parameters.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, ["state", "fake"]);
        assert!(dummy.supports("validate-all"));
        let ipaddr2 = metadata(&OcfSpec::new("heartbeat", "IPaddr2", &[])).await.unwrap();
        let required: Vec<&str> =
            ipaddr2.parameters.iter().filter(|it| it.required).map(|it| it.name.as_str()).collect();
        assert_eq!(required, ["ip"]);
        assert!(ipaddr2.parameter("cidr_netmask").is_some() && ipaddr2.parameter("nic").is_some());
        let filesystem = metadata(&OcfSpec::new("heartbeat", "Filesystem", &[])).await.unwrap();
        let required: Vec<&str> =
            filesystem.parameters.iter().filter(|it| it.required).map(|it| it.name.as_str()).collect();
        assert_eq!(required, ["device", "directory", "fstype"]);
        assert_eq!(filesystem.action_timeout("start"), Some(Duration::from_secs(60)));
        let blocking = tokio::task::spawn_blocking(|| metadata_blocking(&OcfSpec::new("heartbeat", "Dummy", &[])))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(blocking, dummy);
    }

    /// Every agent of Debian's resource-agents has meta-data this module reads, naming
    /// its parameters and the mandatory actions.
    #[tokio::test]
    async fn ocf_meta_data_of_every_installed_heartbeat_agent_parses() {
        // Names starting with '.' are the shell library's files, not agents.
        let mut agents = list_dir(Path::new("/usr/lib/ocf/resource.d/heartbeat"));
        agents.retain(|it| !it.starts_with('.'));
        assert!(agents.len() > 50, "resource-agents is not installed: {agents:?}");
        let mut tasks: tokio::task::JoinSet<(String, Result<AgentMeta, OcfError>)> = tokio::task::JoinSet::new();
        let mut failures = Vec::new();
        let mut parsed = 0;
        for agent in agents {
            // Two at a time: the machine has two cores.
            if tasks.len() >= 2 {
                let (agent, result) = tasks.join_next().await.unwrap().unwrap();
                check_meta(&agent, result, &mut failures, &mut parsed);
            }
            tasks.spawn(async move {
                let result = metadata(&OcfSpec::new("heartbeat", &agent, &[])).await;
                (agent, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (agent, result) = joined.unwrap();
            check_meta(&agent, result, &mut failures, &mut parsed);
        }
        assert!(
            failures.is_empty(),
            "{} of {} agents:\n{}",
            failures.len(),
            parsed + failures.len(),
            failures.join("\n")
        );
    }

    fn check_meta(agent: &str, result: Result<AgentMeta, OcfError>, failures: &mut Vec<String>, parsed: &mut usize) {
        match result {
            Ok(meta) => {
                *parsed += 1;
                let missing: Vec<&str> =
                    ["start", "stop", "monitor"].into_iter().filter(|it| !meta.supports(it)).collect();
                if !missing.is_empty() {
                    failures.push(format!("{agent}: does not advertise {missing:?}"));
                }
            }
            Err(e) => failures.push(format!("{agent}: {e}")),
        }
    }

    // -----------------------------------------------------------------------------------
    // Dummy and fake agents (no root needed)
    // -----------------------------------------------------------------------------------

    #[tokio::test]
    async fn ocf_dummy_starts_monitors_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("dummy.state");
        let spec = OcfSpec::new("heartbeat", "Dummy", &[("state", &path_param(&state))]);
        let mut group = Group::new("g", &dir.path().join("node"), vec![resource("d", spec)]);
        assert_eq!(group.monitor().await, [OpOutcome::NotRunning]);
        group.start().await;
        assert!(state.exists(), "the state parameter reached the agent");
        assert_eq!(group.monitor().await, [OpOutcome::Ok]);
        group.start().await;
        assert_eq!(group.monitor().await, [OpOutcome::Ok]);
        group.stop().await;
        assert!(!state.exists());
        assert_eq!(group.monitor().await, [OpOutcome::NotRunning]);
        group.stop().await;
    }

    #[tokio::test]
    async fn ocf_dummy_keeps_its_default_state_per_node_until_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("n1");
        let spec = OcfSpec::new("heartbeat", "Dummy", &[]);
        let ctx = ctx(&node, "g", "d");
        let mut first = Ocf::new(spec.clone());
        assert_eq!(first.start(&ctx).await, OpOutcome::Ok);
        let state = node.join("ocf/rsctmp/Dummy-g-d.state");
        assert!(state.exists(), "HA_RSCTMP is the node's state dir");
        // Another instance (the agent restarted) still sees it running.
        let mut second = Ocf::new(spec.clone());
        assert_eq!(second.monitor(&ctx).await, OpOutcome::Ok);
        // Another node does not.
        let other = super::super::Ctx { state_dir: dir.path().join("n2"), ..ctx.clone() };
        assert_eq!(Ocf::new(spec.clone()).monitor(&other).await, OpOutcome::NotRunning);
        // After a reboot, HA_RSCTMP starts empty, like Pacemaker's tmpfs.
        fs::write(node.join("ocf/rsctmp.boot_id"), "an-earlier-boot\n").unwrap();
        assert_eq!(second.monitor(&ctx).await, OpOutcome::NotRunning);
        assert!(!state.exists());
        assert!(node.join("ocf/rsctmp").is_dir());
    }

    #[tokio::test]
    async fn ocf_check_reports_parameters_and_validate_all() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let state = path_param(&dir.path().join("x.state"));
        let mut group = Group::new(
            "g",
            &node,
            vec![
                resource("good", OcfSpec::new("heartbeat", "Dummy", &[("state", &state)])),
                resource("unwritable", OcfSpec::new("heartbeat", "Dummy", &[("state", "/nonexistent-ocf-dir/x")])),
                resource("typo", OcfSpec::new("heartbeat", "Dummy", &[("stat", &state)])),
                resource("noip", OcfSpec::new("heartbeat", "IPaddr2", &[("cidr_netmask", "24")])),
                resource("badname", OcfSpec::new("heartbeat", "Dummy", &[("no-dash", "1")])),
            ],
        );
        let checks = group.check().await;
        let [good, unwritable, typo, noip, badname] = &checks[..] else { unreachable!() };

        assert!(good.ok, "{good:?}");
        assert!(has_note(good, "ocf:heartbeat:Dummy: agent /usr/lib/ocf/resource.d/heartbeat/Dummy"), "{good:?}");
        assert!(
            has_note(good, "meta-data: Dummy 1.0, 2 parameters (required: none), actions: start, stop"),
            "{good:?}"
        );
        assert!(has_note(good, "parameters given: state"), "{good:?}");
        assert!(has_note(good, "validate-all: OCF_SUCCESS (0)"), "{good:?}");
        assert!(!good.notes.iter().any(|it| it.contains(&state)), "values are not printed: {good:?}");
        assert!(!dir.path().join("x.state").exists(), "check changes nothing");

        assert!(!unwritable.ok);
        assert!(
            has_note(
                unwritable,
                "validate-all failed: OCF_ERR_ARGS (2): State file \"/nonexistent-ocf-dir/x\" is not writable"
            ),
            "{unwritable:?}"
        );

        assert!(!typo.ok);
        assert!(has_note(typo, "unknown parameter stat (the agent takes: state, fake)"), "{typo:?}");

        assert!(!noip.ok);
        assert!(has_note(noip, "missing required parameter ip (IPv4 or IPv6 address)"), "{noip:?}");

        assert!(!badname.ok);
        assert!(has_note(badname, "parameter name \"no-dash\" cannot be passed"), "{badname:?}");

        // An agent without validate-all, and one with a required parameter missing.
        let root = fake_root(dir.path());
        let mut fake = Ocf::new(fake_spec(&root, "Fake", &[("dir", "/tmp")]));
        let check = fake.check(&ctx(&node, "g", "f")).await;
        assert!(check.ok, "{check:?}");
        assert!(has_note(&check, "ocf:test:Fake: validate-all: not supported by the agent"), "{check:?}");
        let check = Ocf::new(fake_spec(&root, "Fake", &[])).check(&ctx(&node, "g", "f")).await;
        assert!(!check.ok);
        assert!(has_note(&check, "missing required parameter dir (Where to record calls)"), "{check:?}");
        let check = Ocf::new(fake_spec(&root, "BadMeta", &[])).check(&ctx(&node, "g", "f")).await;
        assert!(!check.ok);
        assert!(has_note(&check, "meta-data: meta-data is not valid: <parameters> is not closed"), "{check:?}");
    }

    #[tokio::test]
    async fn ocf_unknown_agents_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let ctx = ctx(&node, "g", "r");
        let root = fake_root(dir.path());
        for (spec, says) in [
            (
                OcfSpec::new("heartbeat", "NoSuchAgent", &[]),
                "OCF agent ocf:heartbeat:NoSuchAgent is not installed: /usr/lib/ocf/resource.d/heartbeat/NoSuchAgent \
                 does not exist",
            ),
            (OcfSpec::new("heartbeat", "dummy", &[]), "does not exist; did you mean Dummy?"),
            (
                OcfSpec::new("nosuchprovider", "Dummy", &[]),
                "no provider directory /usr/lib/ocf/resource.d/nosuchprovider",
            ),
            (fake_spec(&root, "Dummy", &[]), "does not exist"),
            (fake_spec(&root, "NoExec", &[]), "NoExec cannot be executed: no execute permission"),
            (OcfSpec::new("heartbeat", "../heartbeat/Dummy", &[]), "OCF agent name \"../heartbeat/Dummy\" must be"),
            (OcfSpec::new("", "Dummy", &[]), "OCF provider name \"\" must be"),
        ] {
            let mut ocf = Ocf::new(spec.clone());
            let check = ocf.check(&ctx).await;
            assert!(!check.ok, "{spec:?}");
            assert!(has_note(&check, says), "{spec:?}: {check:?}");
            let OpOutcome::Failed(text) = ocf.start(&ctx).await else { panic!("{spec:?} started") };
            assert!(text.contains(says) && text.contains(" start: "), "{text}");
            let err = metadata(&spec).await.unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let check = Ocf::new(OcfSpec::new("nosuchprovider", "Dummy", &[])).check(&ctx).await;
        assert!(has_note(&check, "(providers in /usr/lib/ocf/resource.d: heartbeat"), "{check:?}");
    }

    #[tokio::test]
    async fn ocf_agents_get_the_ocf_environment_and_their_failures_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let root = fake_root(dir.path());
        let calls = dir.path().join("calls");
        fs::create_dir(&calls).unwrap();
        let budget = OpBudget {
            start_timeout: Duration::from_secs(12),
            stop_timeout: Duration::from_secs(13),
            monitor_timeout: Duration::from_millis(14_500),
            monitor_interval: Duration::from_secs(15),
        };
        let ctx = ctx(&node, "grp", "fake");
        let spec = fake_spec(&root, "Fake", &[("dir", &path_param(&calls)), ("rc", "0")]);
        let mut ocf = Ocf::new(spec).with_budget(budget);

        assert_eq!(ocf.monitor(&ctx).await, OpOutcome::Ok);
        let probe = env_file(&calls.join("env.monitor"));
        assert_eq!(env_value(&probe, "OCF_RESKEY_CRM_meta_interval"), Some("0"), "a probe before start");
        assert_eq!(ocf.start(&ctx).await, OpOutcome::Ok);
        let env = env_file(&calls.join("env.start"));
        for (name, value) in [
            ("OCF_ROOT", path_param(&root).as_str()),
            ("OCF_RA_VERSION_MAJOR", "1"),
            ("OCF_RA_VERSION_MINOR", "1"),
            ("OCF_RESOURCE_INSTANCE", "grp-fake"),
            ("OCF_RESOURCE_TYPE", "Fake"),
            ("OCF_RESOURCE_PROVIDER", "test"),
            ("OCF_RESKEY_dir", path_param(&calls).as_str()),
            ("OCF_RESKEY_rc", "0"),
            ("OCF_RESKEY_CRM_meta_timeout", "12000"),
            ("OCF_RESKEY_CRM_meta_interval", "0"),
            ("HA_RSCTMP", path_param(&node.join("ocf/rsctmp")).as_str()),
        ] {
            assert_eq!(env_value(&env, name), Some(value), "{name}");
        }
        let path = env_value(&env, "PATH").unwrap();
        assert!(path.split(':').any(|it| it == "/usr/sbin"), "{path}");
        assert!(node.join("ocf/rsctmp").is_dir());
        assert_eq!(ocf.monitor(&ctx).await, OpOutcome::Ok);
        let recurring = env_file(&calls.join("env.monitor"));
        assert_eq!(env_value(&recurring, "OCF_RESKEY_CRM_meta_interval"), Some("15000"));
        assert_eq!(env_value(&recurring, "OCF_RESKEY_CRM_meta_timeout"), Some("14500"));
        assert_eq!(ocf.stop(&ctx).await, OpOutcome::Ok);
        assert_eq!(env_value(&env_file(&calls.join("env.stop")), "OCF_RESKEY_CRM_meta_timeout"), Some("13000"));

        let with_rc = |rc: &str| Ocf::new(fake_spec(&root, "Fake", &[("dir", &path_param(&calls)), ("rc", rc)]));
        let stderr = "[stderr: noise 2 | noise 3 | noise 4 | noise 5 | last words]";
        assert_eq!(
            with_rc("6").start(&ctx).await,
            OpOutcome::Failed(format!("ocf:test:Fake start: OCF_ERR_CONFIGURED (6): fake failure reason {stderr}"))
        );
        let unbudgeted = env_file(&calls.join("env.start"));
        assert_eq!(env_value(&unbudgeted, "OCF_RESKEY_CRM_meta_timeout"), None, "no budget, no timeout");
        assert_eq!(env_value(&unbudgeted, "OCF_RESKEY_rc"), Some("6"));
        assert_eq!(with_rc("7").monitor(&ctx).await, OpOutcome::NotRunning);
        assert_eq!(with_rc("7").stop(&ctx).await, OpOutcome::Ok);
        assert_eq!(with_rc("190").monitor(&ctx).await, OpOutcome::Ok);
        assert_eq!(
            with_rc("8").monitor(&ctx).await,
            OpOutcome::Failed(format!(
                "ocf:test:Fake monitor: OCF_RUNNING_PROMOTED (8): fake failure reason {stderr}; promotable resources \
                 are not supported yet"
            ))
        );
        assert_eq!(
            with_rc("1").stop(&ctx).await,
            OpOutcome::Failed(format!("ocf:test:Fake stop: OCF_ERR_GENERIC (1): fake failure reason {stderr}"))
        );
        assert_eq!(
            with_rc("kill").start(&ctx).await,
            OpOutcome::Failed(format!("ocf:test:Fake start: killed by signal 9: fake failure reason {stderr}"))
        );
    }

    /// Reads "<agent pid> <sleep pid>" once the sleeper wrote it, driving `op` meanwhile.
    async fn sleeper_pids(op: &mut OpFuture<'_>, file: &Path) -> [(i32, u64); 2] {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Ok(text) = fs::read_to_string(file) {
                let pids: Vec<i32> = text.split_whitespace().map(|it| it.parse().unwrap()).collect();
                return [(pids[0], starttime(pids[0])), (pids[1], starttime(pids[1]))];
            }
            assert!(tokio::time::Instant::now() < deadline, "the sleeper never wrote {}", file.display());
            tokio::select! {
                outcome = &mut *op => panic!("the sleeper ended: {outcome:?}"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    #[tokio::test]
    async fn ocf_a_dropped_operation_kills_the_agents_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = fake_root(dir.path());
        let node = dir.path().join("node");
        let ctx = ctx(&node, "g", "s");
        let mut ocf = Ocf::new(fake_spec(&root, "Sleeper", &[("dir", &path_param(dir.path()))]));

        // The caller's timeout drops the future.
        let mut op = ocf.start(&ctx);
        let pids = sleeper_pids(&mut op, &dir.path().join("pids.start")).await;
        for (pid, start) in pids {
            assert!(alive(pid, start));
        }
        let began = Instant::now();
        let timed_out = tokio::time::timeout(Duration::from_millis(200), &mut op).await;
        assert!(timed_out.is_err());
        drop(op);
        poll_until("the agent and its child to die", T, || pids.iter().all(|(pid, start)| !alive(*pid, *start)));
        assert!(began.elapsed() < T);

        // check() keeps the time of validate-all itself (1 s, from the meta-data).
        let began = Instant::now();
        let check = ocf.check(&ctx).await;
        assert!(!check.ok);
        assert!(
            has_note(&check, "validate-all: validate-all did not finish within 1s; its process group was killed"),
            "{check:?}"
        );
        assert!(began.elapsed() < Duration::from_secs(5), "{:?}", began.elapsed());
        let text = fs::read_to_string(dir.path().join("pids.validate-all")).unwrap();
        for pid in text.split_whitespace().map(|it| it.parse::<i32>().unwrap()) {
            poll_until("validate-all's processes to die", T, || {
                crate::service::ProcStat::read(pid).unwrap().is_none_or(|st| st.is_dead())
            });
        }
    }

    // -----------------------------------------------------------------------------------
    // IPaddr2 and Filesystem (root)
    // -----------------------------------------------------------------------------------

    /// Runs `f` on a thread that joined network namespace `ns`, with a runtime of its own:
    /// the agents it starts are in `ns`.
    fn in_netns<R: Send>(ns: &str, f: impl FnOnce(&tokio::runtime::Runtime) -> R + Send) -> R {
        let file = File::open(Path::new("/run/netns").join(ns)).unwrap();
        std::thread::scope(|scope| {
            let joined = scope
                .spawn(move || {
                    // SAFETY: plain syscall on a valid fd; it changes only this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {ns}: {}", io::Error::last_os_error());
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    f(&runtime)
                })
                .join();
            joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether a datagram from the client reaches `server` and its echo comes back.
    fn round_trip(bed: &Netbed, server: &UdpSocket, within: Duration) -> bool {
        let client = bed.udp_socket(CLIENT, 0).unwrap();
        let target = server.local_addr().unwrap();
        let step = Duration::from_millis(20);
        server.set_read_timeout(Some(step)).unwrap();
        client.set_read_timeout(Some(step)).unwrap();
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 16];
        while Instant::now() < deadline {
            let _ = client.send_to(b"ping", target);
            if let Ok((n, from)) = server.recv_from(&mut buf)
                && &buf[..n] == b"ping"
            {
                let _ = server.send_to(b"pong", from);
            }
            if let Ok((n, _)) = client.recv_from(&mut buf)
                && &buf[..n] == b"pong"
            {
                return true;
            }
        }
        false
    }

    fn has_address(ns: &str, cidr: &str) -> bool {
        let out = Command::new("ip").args(["-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).split_whitespace().any(|it| it == cidr)
    }

    #[test]
    fn ocf_ipaddr2_adds_and_removes_an_address_in_a_node_namespace() {
        if !root_or_skip("ocf_ipaddr2_adds_and_removes_an_address_in_a_node_namespace") {
            return;
        }
        let prefix = "ocfip";
        Netbed::cleanup_stale(prefix).unwrap();
        let bed = Netbed::create(prefix, &["a"], 40).unwrap();
        let ns = bed.namespace("a").to_string();
        let vip = Ipv4Addr::new(10, 200, 80, 100);
        let dir = tempfile::tempdir().unwrap();
        let vip_param = vip.to_string();
        let mut group = Group::new(
            "web",
            &dir.path().join("a"),
            vec![
                resource(
                    "vip",
                    OcfSpec::new(
                        "heartbeat",
                        "IPaddr2",
                        &[("ip", &vip_param), ("cidr_netmask", "24"), ("nic", "eth0")],
                    ),
                ),
                resource("app", OcfSpec::new("heartbeat", "Dummy", &[])),
            ],
        );

        let server = in_netns(&ns, |runtime| {
            for check in runtime.block_on(group.check()) {
                assert!(check.ok, "{check:?}");
            }
            assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::NotRunning, OpOutcome::NotRunning]);
            runtime.block_on(group.start());
            assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::Ok, OpOutcome::Ok]);
            UdpSocket::bind((vip, 0)).unwrap()
        });
        assert!(has_address(&ns, "10.200.80.100/24"));
        assert!(round_trip(&bed, &server, T), "the client does not reach {vip}");

        in_netns(&ns, |runtime| {
            runtime.block_on(group.stop());
            assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::NotRunning, OpOutcome::NotRunning]);
        });
        assert!(!has_address(&ns, "10.200.80.100/24"));
        assert!(has_address(&ns, &format!("{}/24", bed.node_addr("a", 0))));
        assert!(!round_trip(&bed, &server, Duration::from_millis(500)), "{vip} still answers");
        drop(server);
        bed.destroy().unwrap();
        assert_eq!(Netbed::cleanup_stale(prefix).unwrap(), Vec::<String>::new());
    }

    fn run_checked(argv: &[&str]) -> String {
        let out = Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn is_mountpoint(path: &Path) -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path_param(path);
        mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(path.as_str()))
    }

    /// A loop device over a file; unmounts `mountpoint` and detaches on drop.
    struct LoopDevice {
        device: String,
        mountpoint: PathBuf,
    }

    impl LoopDevice {
        fn attach(image: &Path, mountpoint: &Path) -> LoopDevice {
            let device = run_checked(&["losetup", "--find", "--show", &path_param(image)]);
            assert!(device.starts_with("/dev/loop"), "{device}");
            LoopDevice { device, mountpoint: mountpoint.to_path_buf() }
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            if is_mountpoint(&self.mountpoint) {
                let _ = Command::new("umount").arg(&self.mountpoint).status();
            }
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
    }

    #[test]
    fn ocf_filesystem_mounts_an_ext4_loop_device() {
        if !root_or_skip("ocf_filesystem_mounts_an_ext4_loop_device") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let image = base.join("disk.img");
        File::create(&image).unwrap().set_len(32 << 20).unwrap();
        run_checked(&["mkfs.ext4", "-q", "-F", &path_param(&image)]);
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let device = LoopDevice::attach(&image, &mountpoint);
        let marker = mountpoint.join("app.state");
        let mut group = Group::new(
            "data",
            &base.join("node"),
            vec![
                resource(
                    "fs",
                    OcfSpec::new(
                        "heartbeat",
                        "Filesystem",
                        &[("device", &device.device), ("directory", &path_param(&mountpoint)), ("fstype", "ext4")],
                    ),
                ),
                // Started after the mount: its state file lands on the new filesystem.
                resource("app", OcfSpec::new("heartbeat", "Dummy", &[("state", &path_param(&marker))])),
            ],
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for check in runtime.block_on(group.check()) {
            assert!(check.ok, "{check:?}");
        }
        assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::NotRunning, OpOutcome::NotRunning]);
        runtime.block_on(group.start());
        assert!(is_mountpoint(&mountpoint));
        assert!(marker.exists());
        assert!(mountpoint.join("lost+found").is_dir(), "the ext4 filesystem is mounted");
        assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::Ok, OpOutcome::Ok]);
        runtime.block_on(group.stop());
        assert!(!is_mountpoint(&mountpoint));
        assert!(!mountpoint.join("lost+found").exists());
        assert_eq!(runtime.block_on(group.monitor()), [OpOutcome::NotRunning, OpOutcome::NotRunning]);
        let dev = device.device.clone();
        drop(device);
        let attached = run_checked(&["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"]);
        assert!(!attached.lines().any(|it| it.contains(&path_param(&image))), "{dev} is still attached: {attached}");
    }
}
