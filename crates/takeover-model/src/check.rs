//! Breadth-first exploration of every world reachable within the bounds, checking the
//! properties on every world and every step, and printing a counter-example as a
//! readable trace when one fails.
//!
//! Properties:
//! - **single active**: never two nodes running the service at once;
//! - **no acknowledged record lost**: every node in an active role holds every
//!   acknowledged record on its disk (so the node that processes next has them all);
//! - **Propositions 1 and 2** (no force start happened): whenever no node is active, the
//!   priorities differ (Lemma 3), the node with the higher priority processed last, and a
//!   node with priority 1 processed last;
//! - **Fig. 2**: every step keeps the pair's seed state or makes a transition of Fig. 2;
//! - **decision**: in every world where nothing can happen without a fault, an operator
//!   or a (re)start, a decision was taken unless none is possible (the node that is up
//!   alone has priority 2 or 3 or is join-only; both are up with equal priorities or both
//!   join-only); when both are up it is (SL M)/(M SL) with no append left waiting;
//! - the core's own invariants, checked after every step.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use takeover_core::group::Mutant;
use takeover_core::{Priority, Role};

use crate::fig2::{self, Seed};
use crate::world::{Bounds, Step, World};

/// What to explore.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub bounds: Bounds,
    pub mutant: Mutant,
    /// Stop (and say so) after this many states.
    pub max_states: usize,
}

/// A property that failed, with the steps that lead there from the initial world.
#[derive(Clone, Debug)]
pub struct Violation {
    pub property: String,
    pub trace: Vec<(Step, String)>,
}

/// The result of one exploration.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub states: u64,
    pub transitions: u64,
    pub max_depth: u32,
    /// How many steps made each Fig. 2 transition.
    pub coverage: BTreeMap<&'static str, u64>,
    pub violation: Option<Violation>,
    /// The exploration stopped at `max_states` before the end.
    pub truncated: bool,
    pub elapsed: Duration,
}

impl Outcome {
    /// The Fig. 2 transitions no step made.
    pub fn missing_transitions(&self) -> Vec<&'static str> {
        fig2::FIG2.iter().map(|it| it.0).filter(|label| !self.coverage.contains_key(label)).collect()
    }
}

/// A 128-bit fingerprint of a world, in one pass: two lanes of wyhash-style
/// multiply-mix over every word the world hashes. Collisions among even 10^8 states are
/// far less likely than a hardware fault.
fn fingerprint(w: &World) -> u128 {
    let mut hasher = Fingerprint { a: 0x243f_6a88_85a3_08d3, b: 0x1319_8a2e_0370_7344, len: 0 };
    w.hash(&mut hasher);
    (u128::from(hasher.a) << 64) | u128::from(hasher.b ^ hasher.len)
}

struct Fingerprint {
    a: u64,
    b: u64,
    len: u64,
}

impl Fingerprint {
    fn mix(x: u64, y: u64) -> u64 {
        let product = u128::from(x) * u128::from(y);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn word(&mut self, x: u64) {
        self.a = Self::mix(self.a ^ x, 0xa076_1d64_78bd_642f);
        self.b = Self::mix(self.b ^ x.rotate_left(29), 0xe703_7ed1_a0b4_28db);
        self.len += 1;
    }
}

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.a
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, x: u8) {
        self.word(u64::from(x));
    }

    fn write_u16(&mut self, x: u16) {
        self.word(u64::from(x));
    }

    fn write_u32(&mut self, x: u32) {
        self.word(u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.word(x);
    }

    fn write_usize(&mut self, x: usize) {
        self.word(x as u64);
    }
}

/// The seen-set keys are already uniform fingerprints: hash them by their low bits.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u128(&mut self, x: u128) {
        self.0 = x as u64;
    }
}

type SeenSet = HashSet<u128, BuildHasherDefault<IdentityHasher>>;

/// Explores every world reachable within the bounds.
pub fn explore(opts: Options) -> Outcome {
    let started = Instant::now();
    let initial = World::initial(opts.bounds);
    let mut seen = SeenSet::default();
    // For each state id: its parent id and the step from the parent, for traces.
    let mut parents: Vec<(u32, Step)> = Vec::new();
    let mut depth_of: Vec<u32> = Vec::new();
    let mut frontier: VecDeque<(u32, World)> = VecDeque::new();
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut transitions = 0u64;
    let mut max_depth = 0;

    seen.insert(fingerprint(&initial));
    parents.push((u32::MAX, Step::CrashBoth));
    depth_of.push(0);
    frontier.push_back((0, initial.clone()));

    let fail = |property: String, id: u32, last: Option<Step>, parents: &[(u32, Step)]| {
        let mut steps = Vec::new();
        let mut cursor = id;
        while parents[cursor as usize].0 != u32::MAX {
            steps.push(parents[cursor as usize].1);
            cursor = parents[cursor as usize].0;
        }
        steps.reverse();
        steps.extend(last);
        Violation { property, trace: replay(&initial, &steps, opts.mutant) }
    };

    while let Some((id, world)) = frontier.pop_front() {
        let depth = depth_of[id as usize];
        max_depth = max_depth.max(depth);
        let before = fig2::pair(&world);
        let here = fingerprint(&world);
        let mut progress = false;
        for step in World::steps() {
            // A panic in the core (a failed assertion) is a counter-example like any other.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.apply(step, opts.mutant)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|it| it.to_string()))
                        .unwrap_or_default();
                    Err(format!("the core panicked: {message}"))
                });
            let next = match applied {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(problem) => {
                    let violation = fail(format!("command could not be executed: {problem}"), id, Some(step), &parents);
                    return outcome(seen.len(), transitions, max_depth, coverage, Some(violation), false, started);
                }
            };
            let mut next = next;
            transitions += 1;
            let after = fig2::pair(&next);
            if before != after && opts.bounds.fig2_applies() {
                match fig2::label(before, after, world.ghost.sync_origin) {
                    Some(label) => *coverage.entry(label).or_default() += 1,
                    None => {
                        let property =
                            format!("Fig. 2: the pair moved {before:?} → {after:?}, which the seed does not allow");
                        let violation = fail(property, id, Some(step), &parents);
                        return outcome(seen.len(), transitions, max_depth, coverage, Some(violation), false, started);
                    }
                }
                if matches!(after, (Seed::Sl, Seed::Sm) | (Seed::Sm, Seed::Sl)) {
                    next.ghost.sync_origin = if before == (Seed::X, Seed::X) { 1 } else { 3 };
                }
            }
            let print = fingerprint(&next);
            if !step.is_environment() && print != here {
                progress = true;
            }
            if let Err(property) = check_world(&next) {
                let violation = fail(property, id, Some(step), &parents);
                return outcome(seen.len(), transitions, max_depth, coverage, Some(violation), false, started);
            }
            if seen.insert(print) {
                if seen.len() > opts.max_states {
                    return outcome(seen.len(), transitions, max_depth, coverage, None, true, started);
                }
                let next_id = parents.len() as u32;
                parents.push((id, step));
                depth_of.push(depth + 1);
                frontier.push_back((next_id, next));
            }
        }
        if !progress && let Err(property) = check_quiescent(&world) {
            let violation = fail(property, id, None, &parents);
            return outcome(seen.len(), transitions, max_depth, coverage, Some(violation), false, started);
        }
    }
    outcome(seen.len(), transitions, max_depth, coverage, None, false, started)
}

fn outcome(
    states: usize,
    transitions: u64,
    max_depth: u32,
    coverage: BTreeMap<&'static str, u64>,
    violation: Option<Violation>,
    truncated: bool,
    started: Instant,
) -> Outcome {
    Outcome {
        states: states as u64,
        transitions,
        max_depth,
        coverage,
        violation,
        truncated,
        elapsed: started.elapsed(),
    }
}

/// Re-runs `steps` from `initial`, describing the world after each.
fn replay(initial: &World, steps: &[Step], mutant: Mutant) -> Vec<(Step, String)> {
    let mut world = initial.clone();
    let mut out = Vec::new();
    for &step in steps {
        let before = fig2::pair(&world);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.apply(step, mutant)))
            .unwrap_or_else(|_| Err("the core panicked here".into()));
        match applied {
            Ok(Some(mut next)) => {
                let after = fig2::pair(&next);
                if before != after && matches!(after, (Seed::Sl, Seed::Sm) | (Seed::Sm, Seed::Sl)) {
                    next.ghost.sync_origin = if before == (Seed::X, Seed::X) { 1 } else { 3 };
                }
                let moved = if before != after { format!("  pair {before:?} → {after:?}\n") } else { String::new() };
                out.push((step, format!("{moved}{}", next.describe())));
                world = next;
            }
            Ok(None) => out.push((step, "    (step not enabled on replay)\n".into())),
            Err(problem) => out.push((step, format!("    {problem}\n"))),
        }
    }
    out
}

/// The safety properties of one world.
pub fn check_world(w: &World) -> Result<(), String> {
    let serving: Vec<usize> = (0..2).filter(|&i| w.nodes[i].run.as_ref().is_some_and(|it| it.processing)).collect();
    if serving.len() == 2 {
        return Err("single active: both nodes run the service at once".into());
    }
    for i in 0..2 {
        let Some(run) = &w.nodes[i].run else { continue };
        run.core.check_invariants().map_err(|it| format!("node {i}: core invariant broken: {it}"))?;
        if run.core.role().is_active() {
            let log = &w.nodes[i].disk.log;
            for &(epoch, index) in &w.ghost.acked {
                let held = log.get(index as usize - 1).is_some_and(|r| r.epoch == epoch);
                if !held {
                    return Err(format!(
                        "no acknowledged record lost: node {i} is {} without acknowledged record {index}@{epoch}",
                        run.core.role()
                    ));
                }
            }
        }
    }
    let any_active = (0..2).any(|i| w.core_role(i).is_some_and(Role::is_active));
    if !w.ghost.forced && !any_active {
        let (p0, p1) = (w.priority(0), w.priority(1));
        if p0 == p1 {
            return Err(format!("Lemma 3: no node is active and both hold priority {p0}"));
        }
        if let Some(last) = w.ghost.last_processor {
            let last = last as usize;
            if w.priority(last) > w.priority(1 - last) {
                return Err(format!(
                    "Proposition 1: node {last} processed last but holds the lower priority ({} vs {})",
                    w.priority(last),
                    w.priority(1 - last)
                ));
            }
            if w.priority(1 - last) == Priority::P1 {
                return Err(format!(
                    "Proposition 2: node {} holds priority 1 but node {last} processed last",
                    1 - last
                ));
            }
        }
    }
    Ok(())
}

/// The decision property for a world where nothing happens without the environment.
pub fn check_quiescent(w: &World) -> Result<(), String> {
    let up: Vec<usize> = (0..2).filter(|&i| w.nodes[i].run.is_some()).collect();
    // Decided: a node took the group (it serves it, or it failed there and stays put).
    let decided = up.iter().any(|&i| w.nodes[i].run.as_ref().is_some_and(|it| it.core.role().is_active()));
    for &i in &up {
        let run = w.nodes[i].run.as_ref().expect("up");
        if run.core.status().pending_appends > 0 {
            return Err(format!("decision: node {i} is settled with appends neither acknowledged nor refused"));
        }
        // An active node whose group failed here (and could not move) serves nothing.
        if (run.core.role().is_active() && !run.core.status().failed) != run.processing {
            return Err(format!(
                "decision: node {i} is {} but its service running is {}",
                run.core.role(),
                run.processing
            ));
        }
    }
    let durable = |i: usize| w.nodes[i].disk.durable;
    match up.as_slice() {
        [] => Ok(()),
        [i] => {
            let possible = durable(*i).priority == Priority::P1 && !durable(*i).join_only;
            if possible && !decided {
                Err(format!("decision: node {i} is up alone with priority 1 and does not start"))
            } else {
                Ok(())
            }
        }
        _ => {
            let equal = durable(0).priority == durable(1).priority;
            let both_join_only = durable(0).join_only && durable(1).join_only;
            if !decided {
                return if equal || both_join_only {
                    Ok(())
                } else {
                    Err("decision: both nodes are up with different priorities and neither starts".into())
                };
            }
            match fig2::pair(w) {
                (Seed::Sl, Seed::M) | (Seed::M, Seed::Sl) => Ok(()),
                other => Err(format!("decision: both nodes up and settled in {other:?} instead of (SL M)/(M SL)")),
            }
        }
    }
}

/// Prints the outcome the way CI logs show it.
pub fn print_outcome(name: &str, opts: &Options, out: &Outcome) {
    print!("{}", report_text(name, opts, out));
}

/// The outcome as text: bounds, states explored, Fig. 2 coverage, and any trace.
pub fn report_text(name: &str, opts: &Options, out: &Outcome) -> String {
    use std::fmt::Write;
    let b = opts.bounds;
    let mut text = String::new();
    let _ = writeln!(text, "model check: {name}");
    let _ = writeln!(
        text,
        "  bounds: crashes ≤ {}, both-crash ≤ {}, appends ≤ {}, force starts ≤ {}, suspicions ≤ {}, channel resets ≤ {}, fence failures ≤ {}, switchovers ≤ {}, service failures ≤ {}, failback {}, catch-up window 1",
        b.crashes,
        b.crash_both,
        b.appends,
        b.force_starts,
        b.suspicions,
        b.resets,
        b.fence_failures,
        b.switchovers,
        b.service_failures,
        if b.failback { "auto" } else { "manual" }
    );
    let _ = writeln!(
        text,
        "  states explored: {} (transitions {}, depth {}) in {:.1} s{}",
        out.states,
        out.transitions,
        out.max_depth,
        out.elapsed.as_secs_f64(),
        if out.truncated { " — STOPPED at the state limit" } else { "" }
    );
    let reached: Vec<String> = out.coverage.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    if !b.fig2_applies() {
        let _ =
            writeln!(text, "  Fig. 2 (crash-only) not checked: partitions, channel resets or deliberate moves are on");
    } else {
        let _ = writeln!(text, "  Fig. 2 transitions reached: {}/22: {}", out.coverage.len(), reached.join(" "));
    }
    let missing = out.missing_transitions();
    if !missing.is_empty() && b.fig2_applies() {
        let _ = writeln!(text, "  Fig. 2 transitions NOT reached: {}", missing.join(" "));
    }
    match &out.violation {
        None => {
            let _ = writeln!(text, "  properties: all held");
        }
        Some(v) => {
            let _ = writeln!(text, "  VIOLATION: {}", v.property);
            let _ = writeln!(text, "  counter-example ({} steps):", v.trace.len());
            for (n, (step, world)) in v.trace.iter().enumerate() {
                let _ = writeln!(text, "  {:>3}. {step:?}", n + 1);
                text.push_str(world);
            }
        }
    }
    text
}
