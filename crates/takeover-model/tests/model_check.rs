//! The exhaustive model check run by `cargo test` (F0.7), and the checker's self-test:
//! each deliberate mutant of the production core must yield a counter-example.
//!
//! Each test prints its report (states explored, bounds, Fig. 2 coverage, any trace) and
//! appends it to `target/model-check-report.txt`, which CI prints.

use std::io::Write;

use takeover_core::group::Mutant;
use takeover_model::check::{Options, Outcome, explore, print_outcome, report_text};
use takeover_model::world::Bounds;

fn run(name: &str, bounds: Bounds, mutant: Mutant) -> Outcome {
    let opts = Options { bounds, mutant, max_states: 30_000_000 };
    let outcome = explore(opts);
    print_outcome(name, &opts, &outcome);
    let report = report_text(name, &opts, &outcome);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/model-check-report.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{report}");
    }
    outcome
}

const CRASH_STOP: Bounds = Bounds {
    crashes: 2,
    crash_both: 1,
    appends: 1,
    force_starts: 0,
    suspicions: 0,
    resets: 0,
    fence_failures: 0,
    ..Bounds::NONE
};

#[test]
fn seed_000_crash_stop_reaches_every_fig_2_transition_and_every_property_holds() {
    let out = run("seed-000 crash-stop: role machine + journal rules", CRASH_STOP, Mutant::None);
    assert!(!out.truncated, "the exploration hit the state limit");
    assert!(out.violation.is_none(), "a property failed: {:?}", out.violation.map(|v| v.property));
    assert_eq!(out.missing_transitions(), Vec::<&str>::new(), "Fig. 2 transitions not reached");
}

#[test]
fn seed_000_with_force_start_every_safety_property_holds() {
    let out = run(
        "seed-000 with a force start (F0.6)",
        Bounds {
            crashes: 1,
            crash_both: 0,
            appends: 1,
            force_starts: 1,
            suspicions: 0,
            resets: 0,
            fence_failures: 0,
            ..Bounds::NONE
        },
        Mutant::None,
    );
    assert!(!out.truncated, "the exploration hit the state limit");
    assert!(out.violation.is_none(), "a property failed: {:?}", out.violation.map(|v| v.property));
}

fn assert_caught(name: &str, bounds: Bounds, mutant: Mutant) {
    let out = run(name, bounds, mutant);
    let violation =
        out.violation.unwrap_or_else(|| panic!("the checker found no counter-example for mutant {mutant:?}"));
    assert!(!violation.trace.is_empty(), "a counter-example comes with its trace");
}

#[test]
fn mutant_act_before_persisting_the_priority_is_caught() {
    assert_caught("MUTANT act before persisting the priority", CRASH_STOP, Mutant::ActBeforePersist);
}

#[test]
fn mutant_acknowledge_before_the_sl_has_the_record_is_caught() {
    assert_caught("MUTANT acknowledge before the SL has the record", CRASH_STOP, Mutant::AckBeforeSlHasRecord);
}

fn assert_holds(name: &str, bounds: Bounds) {
    let out = run(name, bounds, Mutant::None);
    assert!(!out.truncated, "the exploration hit the state limit");
    assert!(out.violation.is_none(), "a property failed: {:?}", out.violation.map(|v| v.property));
}

#[test]
fn partitions_channel_resets_and_failing_fences_never_make_two_actives_or_lose_a_record() {
    assert_holds(
        "partitions: a live peer suspected, a channel reset, a fence failing",
        Bounds {
            crashes: 0,
            crash_both: 0,
            appends: 1,
            force_starts: 0,
            suspicions: 1,
            resets: 1,
            fence_failures: 1,
            ..Bounds::NONE
        },
    );
}

#[test]
fn partitions_with_a_crash_and_a_failing_fence_never_make_two_actives_or_lose_a_record() {
    assert_holds(
        "partitions: a live peer suspected, a crash, a fence failing",
        Bounds {
            crashes: 1,
            crash_both: 0,
            appends: 1,
            force_starts: 0,
            suspicions: 1,
            resets: 0,
            fence_failures: 1,
            ..Bounds::NONE
        },
    );
}

#[test]
fn mutant_taking_over_without_the_fence_wait_is_caught() {
    assert_caught(
        "MUTANT take over without waiting for the fence",
        Bounds {
            crashes: 0,
            crash_both: 0,
            appends: 1,
            force_starts: 0,
            suspicions: 1,
            resets: 0,
            fence_failures: 0,
            ..Bounds::NONE
        },
        Mutant::NoFenceWait,
    );
}

#[test]
fn switchovers_and_service_failures_with_a_crash_and_a_power_loss_never_make_two_actives_or_lose_a_record() {
    assert_holds(
        "moves: a switchover (F1.10) and a service failure (F1.5) with a crash and a power loss",
        Bounds { crashes: 1, crash_both: 1, appends: 1, switchovers: 1, service_failures: 1, ..Bounds::NONE },
    );
}

#[test]
fn switchover_and_service_failure_with_automatic_failback_and_a_crash_never_make_two_actives_or_lose_a_record() {
    assert_holds(
        "failback auto: a crash, a switchover (F1.10) and a service failure (F1.5)",
        Bounds { crashes: 1, appends: 1, switchovers: 1, service_failures: 1, failback: true, ..Bounds::NONE },
    );
}

/// Found by the checker: an active that handed the group over and then wrongly suspected
/// its live SL went back to deciding by priority and started next to it (two actives).
#[test]
fn a_switchover_or_service_failure_then_a_false_suspicion_never_makes_two_actives() {
    assert_holds(
        "moves with a partition: a suspicion, a switchover, a service failure",
        Bounds { appends: 1, suspicions: 1, switchovers: 1, service_failures: 1, ..Bounds::NONE },
    );
}

/// Found by the checker: a Handover lost with a channel could never be resent (the SL
/// had rejoined unconfirmed and refused it), so the group stayed down.
#[test]
fn a_handover_lost_with_a_channel_reset_is_resent_and_the_group_starts() {
    assert_holds(
        "moves with a channel reset: a reset, a switchover, a service failure",
        Bounds { appends: 1, resets: 1, switchovers: 1, service_failures: 1, ..Bounds::NONE },
    );
}
