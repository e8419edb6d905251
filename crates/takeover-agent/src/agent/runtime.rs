//! The resources of the agent's groups: operations run as tasks under their timeouts,
//! plan checks ahead of any takeover (F2.3), and the step timings of every move.
//!
//! The core's runner says which operation to run next ([`NodeCommand::Resource`]); the
//! agent moves the resource instance into a task, runs the operation under its timeout
//! and gets the instance back with the outcome ([`OpDone`]), which it feeds to the core.
//! At most one operation per group is in flight, so an instance is never needed twice.
//!
//! Plan checks use fresh instances, so they never wait for or disturb an operation.
//!
//! [`NodeCommand::Resource`]: takeover_core::node::NodeCommand::Resource

use std::time::Duration;

use takeover_core::Role;
use takeover_core::group::{Cause, Report};
use takeover_core::node::{GroupIndex, NodeEvent};
use takeover_core::runner::{Op, Outcome};
use takeover_core::{Epoch, NodeId};

use super::Agent;
use crate::api::{MoveDoc, ResourceDoc, StepDoc};
use crate::config;
use crate::resources::{self, Ctx, OpOutcome, PlanCheck, Resource, ResourceSpec};

/// How often every resource's plan is checked again.
pub(super) const PLAN_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// One resource of a group on this node.
pub(super) struct ResRt {
    pub spec: ResourceSpec,
    /// `None` while an operation runs in a task.
    pub instance: Option<Box<dyn Resource>>,
    pub max_restarts: u32,
    /// The last operation: what, how it ended, how long it took.
    pub last_op: Option<String>,
    pub plan: Option<PlanCheck>,
    /// Started and not yet verified by a monitor (for the step timings).
    pub unverified: bool,
}

impl ResRt {
    pub fn new(spec: ResourceSpec, max_restarts: u32) -> ResRt {
        let instance = resources::instantiate(&spec);
        ResRt { spec, instance: Some(instance), max_restarts, last_op: None, plan: None, unverified: false }
    }
}

/// An operation that ended, with the instance it ran on.
pub(super) struct OpDone {
    group: GroupIndex,
    resource: usize,
    op: Op,
    outcome: OpOutcome,
    took: Duration,
    instance: Box<dyn Resource>,
}

/// A plan check that ended.
pub(super) struct PlanDone {
    group: GroupIndex,
    resource: usize,
    check: PlanCheck,
}

/// The steps of one move of a group (takeover, switchover, failback, start), timed.
pub(super) struct Timeline {
    what: String,
    started: tokio::time::Instant,
    /// When the agent started, for `at_ms`.
    steps: Vec<StepDoc>,
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Stop => "stop",
        Op::Monitor => "monitor",
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs one operation on `instance` under `timeout`.
async fn run_op(instance: &mut Box<dyn Resource>, ctx: &Ctx, op: Op, timeout: Duration) -> OpOutcome {
    let future = match op {
        Op::Start => instance.start(ctx),
        Op::Stop => instance.stop(ctx),
        Op::Monitor => instance.monitor(ctx),
    };
    match tokio::time::timeout(timeout, future).await {
        Ok(outcome) => outcome,
        Err(_) => OpOutcome::Failed(format!("{} timed out after {}", op_name(op), config::format_duration(timeout))),
    }
}

fn timeout_of(spec: &ResourceSpec, op: Op) -> Duration {
    match op {
        Op::Start => spec.start_timeout,
        Op::Stop => spec.stop_timeout,
        Op::Monitor => spec.monitor_timeout,
    }
}

impl Agent {
    fn ctx(&self, g: usize, resource: usize, generation: Epoch) -> Ctx {
        let rt = &self.groups[g];
        Ctx {
            node: self.me.name.clone(),
            scope: resources::node_scope(&self.me.name, &self.me.state_dir),
            node_index: self.cfg.node_id(&self.me.name).map_or(0, |it| it.0),
            group: rt.name.clone(),
            resource: rt.resources[resource].spec.name.clone(),
            state_dir: self.me.state_dir.clone(),
            generation,
        }
    }

    fn generation(&self, index: GroupIndex) -> Epoch {
        self.node.group(index).map_or(Epoch::ZERO, |it| it.durable().epoch)
    }

    /// Starts operation `op` on resource `resource` of `group` in a task.
    pub(super) fn start_op(&mut self, index: GroupIndex, resource: usize, op: Op) {
        let Some(g) = self.groups.iter().position(|it| it.index == index) else { return };
        let ctx = self.ctx(g, resource, self.generation(index));
        let rt = &mut self.groups[g].resources[resource];
        let Some(mut instance) = rt.instance.take() else {
            // Not reachable: the runner runs one operation per group at a time.
            let now = self.now();
            let outcome = Outcome::Failed;
            self.node.handle(now, NodeEvent::ResourceDone { group: index, resource, op, outcome });
            return;
        };
        let timeout = timeout_of(&rt.spec, op);
        if op == Op::Start {
            rt.unverified = true;
        }
        let done = self.ops_tx.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let outcome = run_op(&mut instance, &ctx, op, timeout).await;
            let took = started.elapsed();
            let _ = done.send(OpDone { group: index, resource, op, outcome, took, instance });
        });
    }

    /// An operation ended: the instance goes back, the outcome to the core.
    pub(super) fn on_op_done(&mut self, done: OpDone) {
        let OpDone { group: index, resource, op, outcome, took, instance } = done;
        let Some(g) = self.groups.iter().position(|it| it.index == index) else { return };
        let group = self.groups[g].name.clone();
        let rt = &mut self.groups[g].resources[resource];
        rt.instance = Some(instance);
        let label = rt.spec.label();
        let verdict = match &outcome {
            OpOutcome::Ok => "ok".to_string(),
            OpOutcome::NotRunning => "not running".to_string(),
            OpOutcome::Failed(why) => format!("FAILED: {why}"),
        };
        rt.last_op = Some(format!("{} {verdict} ({} ms)", op_name(op), ms(took)));
        let first_check = op == Op::Monitor && rt.unverified;
        if op == Op::Monitor {
            rt.unverified = false;
        }
        match (op, &outcome) {
            (Op::Monitor, OpOutcome::Ok) if !first_check => {}
            (Op::Monitor, _) if !first_check => {
                let resource = self.groups[g].resources[resource].spec.name.clone();
                self.metrics.monitor_failed(&group, &resource);
                self.record_as(
                    crate::events::kind::MONITOR_FAILURE,
                    format!("ALARM: group {group}: {label} monitor: {verdict} ({} ms)", ms(took)),
                )
            }
            (Op::Monitor, _) => {
                self.record_as(
                    crate::events::kind::RESOURCE,
                    format!("group {group}: {label} first monitor {verdict} in {} ms", ms(took)),
                );
                self.step(g, format!("first monitor {label}"), took);
            }
            (_, OpOutcome::Failed(_)) => {
                self.record_as(
                    crate::events::kind::RESOURCE,
                    format!("ALARM: group {group}: {label} {}: {verdict} ({} ms)", op_name(op), ms(took)),
                );
                self.step(g, format!("{label} {} FAILED", op_name(op)), took);
            }
            _ => {
                self.record_as(
                    crate::events::kind::RESOURCE,
                    format!("group {group}: {label} {} in {} ms", past(op), ms(took)),
                );
                self.step(g, format!("{label} {}", op_name(op)), took);
            }
        }
        let outcome = match outcome {
            OpOutcome::Ok => Outcome::Ok,
            OpOutcome::NotRunning => Outcome::NotRunning,
            OpOutcome::Failed(_) => Outcome::Failed,
        };
        let now = self.now();
        self.node.handle(now, NodeEvent::ResourceDone { group: index, resource, op, outcome });
        self.maybe_finish_timeline(g);
    }

    /// Checks every resource's plan in the background (fresh instances, nothing changed).
    pub(super) fn check_plans(&mut self) {
        for g in 0..self.groups.len() {
            let index = self.groups[g].index;
            let generation = self.generation(index);
            for resource in 0..self.groups[g].resources.len() {
                let ctx = self.ctx(g, resource, generation);
                let spec = self.groups[g].resources[resource].spec.clone();
                let done = self.plans_tx.clone();
                tokio::spawn(async move {
                    let mut instance = resources::instantiate(&spec);
                    let check = match tokio::time::timeout(spec.monitor_timeout, instance.check(&ctx)).await {
                        Ok(check) => check,
                        Err(_) => PlanCheck {
                            ok: false,
                            notes: vec![format!(
                                "the plan check timed out after {}",
                                config::format_duration(spec.monitor_timeout)
                            )],
                        },
                    };
                    let _ = done.send(PlanDone { group: index, resource, check });
                });
            }
        }
    }

    pub(super) fn on_plan_checked(&mut self, done: PlanDone) {
        let Some(g) = self.groups.iter().position(|it| it.index == done.group) else { return };
        let group = self.groups[g].name.clone();
        let rt = &mut self.groups[g].resources[done.resource];
        let was_ok = rt.plan.as_ref().map(|it| it.ok);
        let label = rt.spec.label();
        let notes = done.check.notes.join("; ");
        let ok = done.check.ok;
        rt.plan = Some(done.check);
        match (was_ok, ok) {
            (Some(true) | None, false) => self.record_as(crate::events::kind::RESOURCE, format!(
                "WARNING: group {group}: the takeover plan of {label} has a problem: {notes}; a takeover to this node would fail there — fix it before it is needed"
            )),
            (Some(false), true) => self.record_as(crate::events::kind::RESOURCE, format!("group {group}: the takeover plan of {label} is fine again")),
            _ => {}
        }
    }

    /// Stops every resource of every group, in reverse order, before the core runs: a
    /// previous run may have died with resources up. Fails if one will not stop.
    pub(super) async fn stop_leftovers(&mut self, durable: &[(GroupIndex, Epoch)]) -> anyhow::Result<()> {
        // Processes first: whatever a previous run started is in this node's cgroups.
        let scope = resources::node_scope(&self.me.name, &self.me.state_dir);
        let removed = tokio::task::spawn_blocking(move || resources::process::kill_leftover_cgroups(&scope)).await??;
        if !removed.is_empty() {
            self.record_as(
                crate::events::kind::RESOURCE,
                format!("killed what a previous run left running and removed its cgroup(s): {}", removed.join(", ")),
            );
        }
        for g in 0..self.groups.len() {
            let generation = durable.iter().find(|(i, _)| *i == self.groups[g].index).map_or(Epoch::ZERO, |it| it.1);
            for resource in (0..self.groups[g].resources.len()).rev() {
                let ctx = self.ctx(g, resource, generation);
                let rt = &mut self.groups[g].resources[resource];
                let timeout = rt.spec.stop_timeout;
                let mut instance = rt.instance.take().expect("idle at start-up");
                let started = tokio::time::Instant::now();
                let outcome = run_op(&mut instance, &ctx, Op::Stop, timeout).await;
                rt.instance = Some(instance);
                let label = rt.spec.label();
                if let OpOutcome::Failed(why) = outcome {
                    anyhow::bail!(
                        "group {}: cannot make sure {label} is stopped before joining the cluster: {why}; stop it by hand (or fix what blocks it), then start the agent again",
                        self.groups[g].name
                    );
                }
                tracing::debug!(group = %self.groups[g].name, %label, took_ms = ms(started.elapsed()), "stopped at start-up");
            }
        }
        Ok(())
    }

    /// On SIGTERM: waits for operations in flight, then stops whatever is up, in reverse.
    pub(super) async fn stop_all(&mut self) {
        let deadline = tokio::time::Instant::now()
            + self
                .groups
                .iter()
                .flat_map(|it| it.resources.iter())
                .map(|it| it.spec.start_timeout.max(it.spec.stop_timeout).max(it.spec.monitor_timeout))
                .max()
                .unwrap_or_default();
        while self.groups.iter().any(|it| it.resources.iter().any(|r| r.instance.is_none())) {
            match tokio::time::timeout_at(deadline, self.ops_rx.recv()).await {
                Ok(Some(done)) => {
                    let Some(g) = self.groups.iter().position(|it| it.index == done.group) else { continue };
                    self.groups[g].resources[done.resource].instance = Some(done.instance);
                }
                _ => break,
            }
        }
        let status = self.node.status(self.now());
        for g in 0..self.groups.len() {
            let index = self.groups[g].index;
            let Some((_, _, _, runner)) = status.groups.iter().find(|it| it.0 == index) else { continue };
            let up = runner.up.max(runner.busy.map_or(0, |(r, _)| r + 1));
            let generation = self.generation(index);
            for resource in (0..up).rev() {
                let ctx = self.ctx(g, resource, generation);
                let rt = &mut self.groups[g].resources[resource];
                let Some(mut instance) = rt.instance.take() else { continue };
                let timeout = rt.spec.stop_timeout;
                let started = tokio::time::Instant::now();
                let outcome = run_op(&mut instance, &ctx, Op::Stop, timeout).await;
                rt.instance = Some(instance);
                let (label, group) = (rt.spec.label(), self.groups[g].name.clone());
                match outcome {
                    OpOutcome::Failed(why) => self.record_as(
                        crate::events::kind::RESOURCE,
                        format!("ALARM: group {group}: {label} did not stop: {why}"),
                    ),
                    _ => self.record_as(
                        crate::events::kind::RESOURCE,
                        format!("group {group}: {label} stopped in {} ms", ms(started.elapsed())),
                    ),
                }
            }
        }
    }

    /// A move of group `g` begins here: its steps are timed from now (or from `since`).
    pub(super) fn begin_timeline(&mut self, g: usize, what: String, since: Option<tokio::time::Instant>) {
        let started = since.unwrap_or_else(tokio::time::Instant::now);
        let mut steps = Vec::new();
        if since.is_some() {
            steps.push(StepDoc { step: "peer declared failed".into(), ms: 0 });
        }
        self.groups[g].timeline = Some(Timeline { what, started, steps });
    }

    pub(super) fn step(&mut self, g: usize, step: String, took: Duration) {
        if let Some(timeline) = &mut self.groups[g].timeline {
            timeline.steps.push(StepDoc { step, ms: ms(took) });
        }
    }

    /// Ends the timeline of group `g` and writes it to the event log and to `status`.
    pub(super) fn finish_timeline(&mut self, g: usize, outcome: &str) {
        let Some(timeline) = self.groups[g].timeline.take() else { return };
        let total = timeline.started.elapsed();
        let steps: Vec<String> = timeline.steps.iter().map(|it| format!("{} {} ms", it.step, it.ms)).collect();
        let group = self.groups[g].name.clone();
        self.metrics.move_done(&group, &timeline.what, outcome, total);
        self.record_as(
            crate::events::kind::MOVE,
            format!(
                "group {group}: {} {outcome} in {} ms: {}",
                timeline.what,
                ms(total),
                if steps.is_empty() { "no steps".to_string() } else { steps.join(" → ") }
            ),
        );
        self.groups[g].last_move = Some(MoveDoc {
            what: timeline.what,
            outcome: outcome.to_string(),
            total_ms: ms(total),
            at_ms: ms(self.base.elapsed()),
            steps: timeline.steps,
        });
    }

    /// The timeline of a group coming up ends once every resource is up and verified.
    fn maybe_finish_timeline(&mut self, g: usize) {
        if self.groups[g].timeline.is_none() {
            return;
        }
        let index = self.groups[g].index;
        let status = self.node.status(self.now());
        let Some((_, _, gs, runner)) = status.groups.iter().find(|it| it.0 == index) else { return };
        let n = self.groups[g].resources.len();
        let all_up = runner.up == n && runner.busy.is_none();
        let verified = self.groups[g].resources.iter().all(|it| !it.unverified || it.spec.monitor_interval.is_zero());
        if gs.role.is_active() && all_up && verified {
            self.finish_timeline(g, "done");
        } else if gs.failed {
            self.finish_timeline(g, "FAILED");
        }
    }

    pub(super) fn resource_docs(&self, g: usize, runner: &takeover_core::runner::RunnerStatus) -> Vec<ResourceDoc> {
        self.groups[g]
            .resources
            .iter()
            .enumerate()
            .map(|(i, rt)| {
                let state = match runner.busy {
                    Some((r, op)) if r == i => match op {
                        Op::Start => "starting",
                        Op::Stop => "stopping",
                        Op::Monitor => "up",
                    },
                    _ if i < runner.up => "up",
                    _ => "down",
                };
                ResourceDoc {
                    name: rt.spec.name.clone(),
                    kind: rt.spec.label().split(' ').next().unwrap_or_default().to_string(),
                    state: state.into(),
                    failures: runner.failures.get(i).copied().unwrap_or(0),
                    max_restarts: rt.max_restarts,
                    last_op: rt.last_op.clone(),
                    plan_ok: rt.plan.as_ref().map(|it| it.ok),
                    plan: rt.plan.as_ref().map_or_else(Vec::new, |it| it.notes.clone()),
                }
            })
            .collect()
    }

    /// Starts and ends the timelines of moves from the group's reports.
    pub(super) fn time_moves(&mut self, g: usize, report: &Report) {
        let peer = self.groups[g].peer;
        match report {
            Report::Transition { to: Role::Sm, cause, .. } => {
                let (what, since) = match cause {
                    Cause::Takeover => ("takeover".to_string(), self.peer_dead_at.get(&peer).copied()),
                    Cause::Handover(reason) => (format!("{} (arriving)", reason_name(*reason)), None),
                    Cause::ForceStart => ("force start".to_string(), None),
                    _ => ("start".to_string(), None),
                };
                self.begin_timeline(g, what, since);
                if let Some((started, took, confirmed)) = self.fence_took.remove(&peer)
                    && *cause == Cause::Takeover
                {
                    // From the peer declared failed: the wait before fencing (fence_delay,
                    // or a retry), the fence itself, then making the new priority and
                    // epoch durable and becoming active.
                    if let Some(dead) = self.peer_dead_at.get(&peer) {
                        self.step(g, "fence delay".into(), started.saturating_duration_since(*dead));
                    }
                    self.step(g, "fence".into(), took);
                    self.step(g, "become active".into(), confirmed.elapsed());
                }
                if self.groups[g].resources.is_empty() {
                    self.finish_timeline(g, "done");
                }
            }
            Report::HandoverStarted { reason } => {
                self.begin_timeline(g, format!("{} (leaving)", reason_name(*reason)), None);
            }
            Report::HandedOver { .. } => self.finish_timeline(g, "handed over"),
            Report::GroupFailed { .. } => self.finish_timeline(g, "FAILED"),
            Report::Transition { to: Role::X | Role::Sl, .. } => self.finish_timeline(g, "interrupted"),
            _ => {}
        }
    }

    /// When the peer was declared failed, for the takeover's timeline.
    pub(super) fn note_peer_dead(&mut self, peer: NodeId) {
        self.peer_dead_at.insert(peer, tokio::time::Instant::now());
    }
}

pub(super) use crate::words::reason_name;

fn past(op: Op) -> &'static str {
    match op {
        Op::Start => "started",
        Op::Stop => "stopped",
        Op::Monitor => "monitored",
    }
}
