//! The resources of one group on one node: started in order, stopped in reverse,
//! monitored, restarted in place after a failure up to a threshold (F1.5).
//!
//! The group's role machine only says "run the service" or "stop it"
//! ([`crate::group::Command::StartService`] / `StopService`); the runner turns that into
//! one resource operation at a time and reports back what the group must know: the
//! service is fully stopped, or it cannot run here. It never decides where the group
//! runs.
//!
//! ```text
//!  StartService ──► Start(0) ─ok─► Start(1) ─ok─► … all up ──► Monitor(r) at once, then every interval
//!  Monitor(r) failed ──► (within max_restarts per window) Stop(top)…Stop(r), Start(r)…
//!                    └─► (beyond) Stop(top)…Stop(0) ──► ServiceFailed { start: false }
//!  Start(r) failed ──► Stop(r-1)…Stop(0) ──► ServiceFailed { start: true }
//!  StopService ──► Stop(top)…Stop(0) ──► ServiceStopped
//!  Stop(r) failed ──► Halt: the resource may still be up; only fencing this node is safe
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use crate::types::Instant;

/// How one resource is looked after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourcePolicy {
    /// How often it is monitored while up; zero: never.
    pub monitor_interval: Duration,
    /// Restarts in place allowed within `restart_window` before the group moves.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

/// An operation on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Start,
    Stop,
    Monitor,
}

/// How an operation ended, as the shell saw it (a timeout is a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// Monitor: cleanly not running.
    NotRunning,
    Failed,
}

/// What the runner asks for or tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunnerOutput {
    Run {
        resource: usize,
        op: Op,
    },
    /// Every resource is down after a stop request.
    ServiceStopped,
    /// Every resource is down because resource `resource` would not start (`start`) or
    /// kept failing.
    ServiceFailed {
        start: bool,
        resource: usize,
    },
    /// A stop failed: the resource may still be up.
    Halt {
        resource: usize,
    },
    /// Resource `resource` failed its monitor; it is restarted in place (`restart`), or
    /// the group must move.
    MonitorFailed {
        resource: usize,
        restart: bool,
    },
}

/// A snapshot for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerStatus {
    /// How many resources, from the first, are up.
    pub up: usize,
    pub busy: Option<(usize, Op)>,
    /// Failures of each resource within its restart window.
    pub failures: Vec<usize>,
}

/// The resources of one group. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Runner {
    policies: Vec<ResourcePolicy>,
    want_up: bool,
    up: usize,
    busy: Option<(usize, Op)>,
    monitor_at: Vec<Option<Instant>>,
    /// When each resource failed, within its window.
    failures: Vec<VecDeque<Instant>>,
    /// Restart in place from this resource once everything above it is down.
    restart_from: Option<usize>,
    /// Why the service is going down by itself: (start failure, resource).
    failing: Option<(bool, usize)>,
    /// A stop was asked for and ServiceStopped is owed.
    stop_asked: bool,
    out: VecDeque<RunnerOutput>,
}

impl Runner {
    pub fn new(policies: Vec<ResourcePolicy>) -> Runner {
        let n = policies.len();
        Runner {
            policies,
            want_up: false,
            up: 0,
            busy: None,
            monitor_at: vec![None; n],
            failures: vec![VecDeque::new(); n],
            restart_from: None,
            failing: None,
            stop_asked: false,
            out: VecDeque::new(),
        }
    }

    /// StartService: bring every resource up.
    pub fn start(&mut self, now: Instant) {
        self.want_up = true;
        self.failing = None;
        self.stop_asked = false;
        self.drive(now);
    }

    /// StopService: take every resource down, then report ServiceStopped.
    pub fn stop(&mut self, now: Instant) {
        self.want_up = false;
        self.restart_from = None;
        self.stop_asked = true;
        self.drive(now);
    }

    /// Forgets the failures counted so far (the operator's cleanup).
    pub fn clear_failures(&mut self) {
        for it in &mut self.failures {
            it.clear();
        }
    }

    /// The result of the operation in flight.
    pub fn done(&mut self, now: Instant, resource: usize, op: Op, outcome: Outcome) {
        if self.busy != Some((resource, op)) {
            return; // Not the operation in flight: a late result.
        }
        self.busy = None;
        match (op, outcome) {
            (Op::Start, Outcome::Ok) => {
                self.up = resource + 1;
                // Like Pacemaker, a start is verified by a monitor right away (once every
                // resource is up), then every interval.
                let monitored = !self.policies[resource].monitor_interval.is_zero();
                self.monitor_at[resource] = monitored.then_some(now);
            }
            (Op::Start, _) => {
                // Counted like a failed monitor (shown until the operator's cleanup), but
                // never retried in place: the group moves (Pacemaker's start-failure-is-fatal).
                self.failures[resource].push_back(now);
                // It may be half up: it is stopped with the rest.
                self.up = resource + 1;
                self.fail(true, resource);
            }
            (Op::Stop, Outcome::Failed) => {
                self.out.push_back(RunnerOutput::Halt { resource });
                return;
            }
            (Op::Stop, _) => {
                self.up = resource;
                self.monitor_at[resource] = None;
            }
            (Op::Monitor, Outcome::Ok) => self.schedule_monitor(now, resource),
            (Op::Monitor, _) => self.monitor_failed(now, resource),
        }
        self.drive(now);
    }

    /// Monitors that are due.
    pub fn timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    pub fn poll_output(&mut self) -> Option<RunnerOutput> {
        self.out.pop_front()
    }

    /// When the next monitor is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.busy.is_some() || !self.want_up || self.restart_from.is_some() {
            return None;
        }
        self.monitor_at.iter().take(self.up).flatten().min().copied()
    }

    pub fn status(&self) -> RunnerStatus {
        RunnerStatus { up: self.up, busy: self.busy, failures: self.failures.iter().map(|it| it.len()).collect() }
    }

    /// Whether any resource is up or being operated on.
    pub fn is_idle_down(&self) -> bool {
        self.up == 0 && self.busy.is_none()
    }

    fn schedule_monitor(&mut self, now: Instant, resource: usize) {
        let interval = self.policies[resource].monitor_interval;
        self.monitor_at[resource] = (!interval.is_zero()).then(|| now.after(interval));
    }

    fn monitor_failed(&mut self, now: Instant, resource: usize) {
        let policy = self.policies[resource];
        let history = &mut self.failures[resource];
        while history.front().is_some_and(|at| at.after(policy.restart_window) <= now) {
            history.pop_front();
        }
        history.push_back(now);
        let restart = history.len() as u64 <= u64::from(policy.max_restarts);
        self.out.push_back(RunnerOutput::MonitorFailed { resource, restart });
        if restart {
            self.restart_from = Some(self.restart_from.map_or(resource, |it| it.min(resource)));
        } else {
            self.fail(false, resource);
        }
    }

    fn fail(&mut self, start: bool, resource: usize) {
        self.want_up = false;
        self.restart_from = None;
        self.failing = Some((start, resource));
    }

    /// One operation at a time, toward what is wanted.
    fn drive(&mut self, now: Instant) {
        if self.busy.is_some() {
            return;
        }
        if let Some(from) = self.restart_from {
            if self.up > from {
                return self.run(self.up - 1, Op::Stop);
            }
            self.restart_from = None;
        }
        if self.want_up {
            if self.up < self.policies.len() {
                return self.run(self.up, Op::Start);
            }
            let due = (0..self.up).find(|&r| self.monitor_at[r].is_some_and(|at| at <= now));
            if let Some(r) = due {
                self.monitor_at[r] = None;
                self.run(r, Op::Monitor);
            }
            return;
        }
        if self.up > 0 {
            return self.run(self.up - 1, Op::Stop);
        }
        if let Some((start, resource)) = self.failing.take() {
            self.stop_asked = false;
            self.out.push_back(RunnerOutput::ServiceFailed { start, resource });
        } else if self.stop_asked {
            self.stop_asked = false;
            self.out.push_back(RunnerOutput::ServiceStopped);
        }
    }

    fn run(&mut self, resource: usize, op: Op) {
        self.busy = Some((resource, op));
        self.out.push_back(RunnerOutput::Run { resource, op });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant(n * 1_000_000)
    }

    fn policy(monitor_ms: u64, max_restarts: u32) -> ResourcePolicy {
        ResourcePolicy {
            monitor_interval: Duration::from_millis(monitor_ms),
            max_restarts,
            restart_window: Duration::from_secs(60),
        }
    }

    fn drain(r: &mut Runner) -> Vec<RunnerOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn run(resource: usize, op: Op) -> RunnerOutput {
        RunnerOutput::Run { resource, op }
    }

    /// Starts every resource and answers the first monitors (right after the starts), Ok.
    fn all_up(r: &mut Runner, n: usize) {
        r.start(ms(0));
        for i in 0..n {
            assert_eq!(drain(r), vec![run(i, Op::Start)]);
            r.done(ms(0), i, Op::Start, Outcome::Ok);
        }
        first_monitors(r, ms(0), 0..n);
    }

    /// The monitors that verify fresh starts of `resources` (those monitored), answered Ok.
    fn first_monitors(r: &mut Runner, at: Instant, resources: std::ops::Range<usize>) {
        for i in resources {
            if r.policies[i].monitor_interval.is_zero() {
                continue;
            }
            assert_eq!(drain(r), vec![run(i, Op::Monitor)], "the start of {i} is verified at once");
            r.done(at, i, Op::Monitor, Outcome::Ok);
        }
        assert_eq!(drain(r), vec![]);
    }

    #[test]
    fn f1_5_resources_start_in_order_and_stop_in_reverse() {
        let mut r = Runner::new(vec![policy(0, 1); 3]);
        all_up(&mut r, 3);
        r.stop(ms(1));
        for i in (0..3).rev() {
            assert_eq!(drain(&mut r), vec![run(i, Op::Stop)]);
            r.done(ms(1), i, Op::Stop, Outcome::Ok);
        }
        assert_eq!(drain(&mut r), vec![RunnerOutput::ServiceStopped]);
        assert!(r.is_idle_down());
    }

    #[test]
    fn stop_of_nothing_reports_stopped_at_once() {
        let mut r = Runner::new(vec![]);
        r.start(ms(0));
        assert_eq!(drain(&mut r), vec![]);
        r.stop(ms(0));
        assert_eq!(drain(&mut r), vec![RunnerOutput::ServiceStopped]);
    }

    #[test]
    fn monitors_run_every_interval_one_at_a_time() {
        let mut r = Runner::new(vec![policy(100, 1), policy(100, 1)]);
        all_up(&mut r, 2);
        assert_eq!(r.poll_timeout(), Some(ms(100)));
        r.timeout(ms(100));
        assert_eq!(drain(&mut r), vec![run(0, Op::Monitor)]);
        assert_eq!(r.poll_timeout(), None, "one operation at a time");
        r.done(ms(101), 0, Op::Monitor, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(1, Op::Monitor)]);
        r.done(ms(102), 1, Op::Monitor, Outcome::Ok);
        assert_eq!(r.poll_timeout(), Some(ms(201)));
    }

    #[test]
    fn f1_5_monitor_failure_restarts_in_place_from_the_failed_resource() {
        let mut r = Runner::new(vec![policy(100, 1), policy(100, 1), policy(100, 1)]);
        all_up(&mut r, 3);
        r.timeout(ms(100));
        assert_eq!(drain(&mut r), vec![run(0, Op::Monitor)]);
        r.done(ms(100), 0, Op::Monitor, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(1, Op::Monitor)]);
        r.done(ms(100), 1, Op::Monitor, Outcome::Failed);
        // Resources above it and it go down in reverse, then come back up in order.
        assert_eq!(drain(&mut r), vec![RunnerOutput::MonitorFailed { resource: 1, restart: true }, run(2, Op::Stop)]);
        r.done(ms(100), 2, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(1, Op::Stop)]);
        r.done(ms(100), 1, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(1, Op::Start)]);
        r.done(ms(100), 1, Op::Start, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(2, Op::Start)]);
        r.done(ms(100), 2, Op::Start, Outcome::Ok);
        first_monitors(&mut r, ms(100), 1..3);
        assert_eq!(r.status().failures, vec![0, 1, 0]);
    }

    #[test]
    fn f1_5_failures_beyond_the_threshold_stop_the_group_to_move_it() {
        let mut r = Runner::new(vec![policy(100, 1), policy(100, 1)]);
        all_up(&mut r, 2);
        for round in 0..2u64 {
            let at = ms(100 + round * 1000);
            r.timeout(at);
            assert_eq!(drain(&mut r), vec![run(0, Op::Monitor)]);
            r.done(at, 0, Op::Monitor, Outcome::Failed);
            if round == 0 {
                assert_eq!(
                    drain(&mut r),
                    vec![RunnerOutput::MonitorFailed { resource: 0, restart: true }, run(1, Op::Stop)]
                );
                r.done(at, 1, Op::Stop, Outcome::Ok);
                assert_eq!(drain(&mut r), vec![run(0, Op::Stop)]);
                r.done(at, 0, Op::Stop, Outcome::Ok);
                assert_eq!(drain(&mut r), vec![run(0, Op::Start)]);
                r.done(at, 0, Op::Start, Outcome::Ok);
                assert_eq!(drain(&mut r), vec![run(1, Op::Start)]);
                r.done(at, 1, Op::Start, Outcome::Ok);
                first_monitors(&mut r, at, 0..2);
            }
        }
        // The second failure within the window: everything down, then ServiceFailed.
        assert_eq!(drain(&mut r), vec![RunnerOutput::MonitorFailed { resource: 0, restart: false }, run(1, Op::Stop)]);
        r.done(ms(1100), 1, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(0, Op::Stop)]);
        r.done(ms(1100), 0, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![RunnerOutput::ServiceFailed { start: false, resource: 0 }]);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let mut r = Runner::new(vec![ResourcePolicy {
            monitor_interval: Duration::from_millis(100),
            max_restarts: 1,
            restart_window: Duration::from_secs(1),
        }]);
        all_up(&mut r, 1);
        for (i, at) in [ms(100), ms(5000)].into_iter().enumerate() {
            r.timeout(at);
            assert_eq!(drain(&mut r), vec![run(0, Op::Monitor)], "round {i}");
            r.done(at, 0, Op::Monitor, Outcome::NotRunning);
            assert_eq!(
                drain(&mut r),
                vec![RunnerOutput::MonitorFailed { resource: 0, restart: true }, run(0, Op::Stop)]
            );
            r.done(at, 0, Op::Stop, Outcome::Ok);
            assert_eq!(drain(&mut r), vec![run(0, Op::Start)]);
            r.done(at, 0, Op::Start, Outcome::Ok);
            first_monitors(&mut r, at, 0..1);
        }
    }

    #[test]
    fn start_failure_stops_what_is_up_and_reports_it() {
        let mut r = Runner::new(vec![policy(0, 1); 3]);
        r.start(ms(0));
        assert_eq!(drain(&mut r), vec![run(0, Op::Start)]);
        r.done(ms(0), 0, Op::Start, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(1, Op::Start)]);
        r.done(ms(0), 1, Op::Start, Outcome::Failed);
        // The failed resource may be half up: it is stopped too.
        assert_eq!(drain(&mut r), vec![run(1, Op::Stop)]);
        r.done(ms(0), 1, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(0, Op::Stop)]);
        r.done(ms(0), 0, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![RunnerOutput::ServiceFailed { start: true, resource: 1 }]);
        // The failed start is counted on its resource until the operator clears it.
        assert_eq!(r.status().failures, vec![0, 1, 0]);
        r.clear_failures();
        assert_eq!(r.status().failures, vec![0, 0, 0]);
    }

    #[test]
    fn a_failed_stop_halts() {
        let mut r = Runner::new(vec![policy(0, 1)]);
        all_up(&mut r, 1);
        r.stop(ms(1));
        assert_eq!(drain(&mut r), vec![run(0, Op::Stop)]);
        r.done(ms(1), 0, Op::Stop, Outcome::Failed);
        assert_eq!(drain(&mut r), vec![RunnerOutput::Halt { resource: 0 }]);
    }

    #[test]
    fn late_results_are_ignored() {
        let mut r = Runner::new(vec![policy(0, 1)]);
        r.start(ms(0));
        drain(&mut r);
        r.done(ms(0), 0, Op::Monitor, Outcome::Failed);
        assert_eq!(drain(&mut r), vec![]);
        assert_eq!(r.status().busy, Some((0, Op::Start)));
    }

    #[test]
    fn stop_asked_while_starting_waits_for_the_start_then_stops() {
        let mut r = Runner::new(vec![policy(0, 1); 2]);
        r.start(ms(0));
        assert_eq!(drain(&mut r), vec![run(0, Op::Start)]);
        r.stop(ms(0));
        assert_eq!(drain(&mut r), vec![]);
        r.done(ms(0), 0, Op::Start, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![run(0, Op::Stop)]);
        r.done(ms(0), 0, Op::Stop, Outcome::Ok);
        assert_eq!(drain(&mut r), vec![RunnerOutput::ServiceStopped]);
    }
}
