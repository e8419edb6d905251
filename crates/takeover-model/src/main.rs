//! `takeover-model`: runs the exhaustive model check and prints what it explored.
//!
//! Usage: `takeover-model [--crashes N] [--crash-both N] [--appends N] [--force N] [--suspicions N] [--resets N] [--fence-failures N]
//! [--switchovers N] [--service-failures N] [--failback] [--max-states N] [--mutant act-before-persist|ack-before-sl]`.
//! Exits 1 if a property fails, the state limit is hit, or (crash-stop bounds only) a
//! Fig. 2 transition was not reached.

use std::process::ExitCode;

use takeover_core::group::Mutant;
use takeover_model::check::{Options, explore, print_outcome};
use takeover_model::world::Bounds;

fn main() -> ExitCode {
    let mut opts = Options {
        bounds: Bounds {
            crashes: 2,
            crash_both: 1,
            appends: 1,
            force_starts: 0,
            suspicions: 0,
            resets: 0,
            fence_failures: 0,
            ..Bounds::NONE
        },
        mutant: Mutant::None,
        max_states: 50_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage(&format!("not a number: {v}")));
        match flag.as_str() {
            "--crashes" => opts.bounds.crashes = number(value()) as u8,
            "--crash-both" => opts.bounds.crash_both = number(value()) as u8,
            "--appends" => opts.bounds.appends = number(value()) as u8,
            "--force" => opts.bounds.force_starts = number(value()) as u8,
            "--suspicions" => opts.bounds.suspicions = number(value()) as u8,
            "--resets" => opts.bounds.resets = number(value()) as u8,
            "--fence-failures" => opts.bounds.fence_failures = number(value()) as u8,
            "--switchovers" => opts.bounds.switchovers = number(value()) as u8,
            "--service-failures" => opts.bounds.service_failures = number(value()) as u8,
            "--failback" => opts.bounds.failback = true,
            "--max-states" => opts.max_states = number(value()) as usize,
            "--mutant" => {
                opts.mutant = match value().as_str() {
                    "act-before-persist" => Mutant::ActBeforePersist,
                    "ack-before-sl" => Mutant::AckBeforeSlHasRecord,
                    "no-fence-wait" => Mutant::NoFenceWait,
                    other => usage(&format!("unknown mutant {other}")),
                }
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let out = explore(opts);
    print_outcome("seed-000 role machine + journal rules (production takeover-core)", &opts, &out);
    // Fig. 2 coverage is only tracked (and only required) for crash-stop bounds.
    let uncovered = opts.bounds.fig2_applies() && !out.missing_transitions().is_empty();
    if out.violation.is_some() || out.truncated || uncovered { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: takeover-model [--crashes N] [--crash-both N] [--appends N] [--force N] [--suspicions N] [--resets N] [--fence-failures N] [--switchovers N] [--service-failures N] [--failback] [--max-states N] [--mutant act-before-persist|ack-before-sl|no-fence-wait]"
    );
    std::process::exit(2)
}
