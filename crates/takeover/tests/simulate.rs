//! `takeover simulate` on a saved status document (`tests/data/simulate-status.json`, of
//! node alpha of `tests/data/simulate.toml`: group db active on alpha with beta its SL,
//! app with 2 of 3 failures; group web active on beta): the printed plan for a node
//! failure, a link failure with redundant links, and a resource failure.

use std::path::PathBuf;
use std::process::Command;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// Runs `takeover simulate` with `args` on the saved status; returns (success, stdout, stderr).
fn simulate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_takeover"))
        .arg("simulate")
        .arg("--config")
        .arg(data("simulate.toml"))
        .arg("--status")
        .arg(data("simulate-status.json"))
        .args(args)
        .output()
        .expect("run takeover simulate");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into());
    (out.status.success(), stdout, stderr)
}

/// The numbered steps after the failure, without their numbers and times.
fn plan_steps(plan: &str) -> Vec<String> {
    let start = plan.find("\nfailure: ").expect("a failure section");
    let end = plan.find("\nafter:\n").expect("an after section");
    plan[start..end]
        .lines()
        .filter_map(|line| line.trim_start().split_once(". +").map(|(_, rest)| rest))
        .map(|rest| rest.split_once(" s  ").expect("a time").1.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn after(plan: &str) -> &str {
    &plan[plan.find("\nafter:\n").expect("an after section")..]
}

fn position(steps: &[String], text: &str) -> usize {
    steps.iter().position(|it| it.contains(text)).unwrap_or_else(|| panic!("no step `{text}` in {steps:#?}"))
}

#[test]
fn simulate_starts_from_the_saved_status() {
    let (ok, plan, stderr) = simulate(&["--fail", "link:1"]);
    assert!(ok, "{stderr}");
    assert!(plan.contains("from the status of alpha (incarnation 7)"), "{plan}");
    let before = &plan[plan.find("before the failure:").unwrap()..plan.find("\nfailure: ").unwrap()];
    assert!(before.contains("group db: alpha M (priority 2, epoch 3.0), beta SL (priority 3, epoch 3.0)"), "{before}");
    assert!(before.contains("group web: beta M (priority 2, epoch 2.1), alpha SL (priority 3, epoch 2.1)"), "{before}");
    // The failure count of the status is replayed.
    assert!(before.contains("app up (2/3 failures)"), "{before}");
    assert!(!plan.contains("WARNING"), "{plan}");
}

#[test]
fn simulate_node_failure_fences_and_moves_the_group() {
    let (ok, plan, stderr) = simulate(&["--fail", "alpha"]);
    assert!(ok, "{stderr}");
    let steps = plan_steps(&plan);
    let off = position(&steps, "alpha powers off");
    let suspect = position(&steps, "beta suspects alpha");
    let delay = position(&steps, "beta group db: the active alpha is lost; waits fence_delay 200ms");
    let fence = position(&steps, "beta fences alpha");
    let confirmed = position(&steps, "beta fence of alpha confirmed");
    let takeover = position(&steps, "beta group db: SL → SM (alpha is known stopped: taking over)");
    let start_data = position(&steps, "beta group db: start data");
    let start_app = position(&steps, "beta group db: start app");
    assert!(off < suspect && suspect < delay && delay < confirmed && fence < confirmed, "{steps:#?}");
    assert!(confirmed < takeover && takeover < start_data && start_data < start_app, "{steps:#?}");
    // web was active on beta already: it continues alone once alpha is known off.
    position(&steps, "beta group web: M → SM");
    let after = after(&plan);
    assert!(after.contains("group db: alpha down, beta SM (priority 1"), "{after}");
    assert!(after.contains("resources on beta: data up (0/3 failures), app up (0/3 failures)"), "{after}");
}

#[test]
fn simulate_one_of_two_links_moves_nothing() {
    let (ok, plan, stderr) = simulate(&["--fail", "link:0"]);
    assert!(ok, "{stderr}");
    let steps = plan_steps(&plan);
    position(&steps, "alpha link 0 to beta is silent for 500ms; 1 link(s) still up: nothing else changes");
    position(&steps, "beta link 0 to alpha is silent for 500ms; 1 link(s) still up");
    // The channel was on link 0: it moves to link 1.
    position(&steps, "peer channel to alpha up on link 1");
    for step in &steps {
        assert!(!step.contains('→') && !step.contains("fence") && !step.contains("start "), "{steps:#?}");
    }
    let before = &plan
        [plan.find("before the failure:").unwrap() + "before the failure:".len()..plan.find("\nfailure: ").unwrap()];
    assert_eq!(before.trim(), after(&plan)["\nafter:\n".len()..].trim(), "{plan}");
}

#[test]
fn simulate_resource_failure_restarts_in_place_then_moves() {
    // app holds 2 failures of 3: one more restarts it in place.
    let (ok, plan, stderr) = simulate(&["--fail", "db/app"]);
    assert!(ok, "{stderr}");
    let steps = plan_steps(&plan);
    let failed = position(&steps, "alpha group db: monitor of app (process): FAILED");
    let restart = position(&steps, "alpha group db: app (process) failed: restarting it in place");
    let stop = position(&steps, "alpha group db: stop app");
    let start = position(&steps, "alpha group db: start app");
    assert!(failed < restart && restart < stop && stop < start, "{steps:#?}");
    assert!(!steps.iter().any(|it| it.contains('→') || it.contains("data")), "{steps:#?}");
    assert!(after(&plan).contains("app up (3/3 failures)"), "{plan}");

    // A second failure in a row is one too many: the group stops here in reverse order
    // and moves to beta, which starts it in order.
    let (ok, plan, stderr) = simulate(&["--fail", "app", "--times", "2"]);
    assert!(ok, "{stderr}");
    let steps = plan_steps(&plan);
    let alarm = position(&steps, "ALARM: group db: app (process) failed more than max_restarts");
    let stop_app = alarm + position(&steps[alarm..], "alpha group db: stop app");
    let stop_data = position(&steps, "alpha group db: stop data");
    let handover = position(&steps, "alpha group db: hands the group over to beta (failover after a failed resource)");
    let takeover = position(&steps, "beta group db: SL → SM (failover after a failed resource");
    let start_data = position(&steps, "beta group db: start data");
    let start_app = position(&steps, "beta group db: start app");
    assert!(alarm < stop_app && stop_app < stop_data && stop_data < handover, "{steps:#?}");
    assert!(handover < takeover && takeover < start_data && start_data < start_app, "{steps:#?}");
    position(&steps, "alpha group db: X → SL");
    assert!(!steps.iter().any(|it| it.contains("fences")), "a clean handover needs no fence: {steps:#?}");
    assert!(after(&plan).contains("group db: alpha SL (priority 3"), "{plan}");
}

#[test]
fn simulate_names_what_it_cannot_fail() {
    let (ok, _, stderr) = simulate(&["--fail", "gamma"]);
    assert!(!ok);
    assert!(
        stderr.contains("`gamma` is neither a node (alpha, beta), a link (link:0 … link:1) nor a resource"),
        "{stderr}"
    );
    let (ok, _, stderr) = simulate(&["--fail", "link:2"]);
    assert!(!ok);
    assert!(stderr.contains("there is no link 2"), "{stderr}");
    let (ok, _, stderr) = simulate(&["--fail", "db/www"]);
    assert!(!ok);
    assert!(stderr.contains("group `db` has no resource `www`; its resources: data, app"), "{stderr}");
}

/// The saved status with beta down and alpha running db alone (SM, priority 1) and web
/// taken over (SM), written to a temporary file.
fn status_with_beta_down() -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string(data("simulate-status.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["peers"][0]["alive"] = false.into();
    for link in doc["peers"][0]["links"].as_array_mut().unwrap() {
        link["up"] = false.into();
    }
    doc["peers"][0]["channel_link"] = serde_json::Value::Null;
    for (group, epoch) in [(0, "4.0"), (1, "3.0")] {
        let g = &mut doc["groups"][group];
        g["role"] = "SM".into();
        g["priority"] = 1.into();
        g["epoch"] = epoch.into();
        g["peer_state"] = serde_json::json!({ "status": "stopped", "incarnation": 4, "role": null, "priority": null, "last_index": null });
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&doc).unwrap()).unwrap();
    file
}

#[test]
fn simulate_from_a_node_running_alone() {
    let status = status_with_beta_down();
    let run = |fail: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_takeover"))
            .args(["simulate", "--fail", fail, "--config"])
            .arg(data("simulate.toml"))
            .arg("--status")
            .arg(status.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, plan, stderr) = run("link:0");
    assert!(ok, "{stderr}");
    assert!(plan.contains("note: beta is down in the status: it stays down"), "{plan}");
    assert!(plan.contains("group db: alpha SM (priority 1, epoch 4.0), beta down"), "{plan}");
    assert!(plan.contains("group web: beta down, alpha SM (priority 1, epoch 3.0)"), "{plan}");
    assert!(!plan.contains("WARNING"), "{plan}");
    assert!(plan.contains("nothing happens: no node notices anything"), "{plan}");
    let (ok, _, stderr) = run("beta");
    assert!(!ok);
    assert!(stderr.contains("beta is already down in the status; nothing to fail"), "{stderr}");
    // The last node going down leaves nothing running.
    let (ok, plan, stderr) = run("alpha");
    assert!(ok, "{stderr}");
    assert!(after(&plan).contains("group db: alpha down, beta down"), "{plan}");
}

#[test]
fn simulate_the_only_link_lost_is_a_fence_race_in_a_symmetric_layout() {
    // Each node is active for one group, so both fence at once (no fence_delay for an
    // active): the plan says so, and the survivor takes both groups.
    let out = Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["simulate", "--fail", "link:0", "--config"])
        .arg(data("simulate-one-link.toml"))
        .arg("--status")
        .arg(data("simulate-status.json"))
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let steps = plan_steps(&plan);
    position(&steps, "alpha suspects beta");
    position(&steps, "beta suspects alpha");
    position(&steps, "FENCE RACE");
    let off = position(&steps, "beta powered off by the fence");
    let takeover = position(&steps, "alpha group web: SL → SM (beta is known stopped: taking over)");
    assert!(off < takeover, "{steps:#?}");
    let after = after(&plan);
    assert!(after.contains("group db: alpha SM (priority 1"), "{after}");
    assert!(after.contains("group web: beta down, alpha SM (priority 1"), "{after}");
}
