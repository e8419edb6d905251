//! Tests of the process resource. They need root and cgroups: without root they are
//! skipped with a message on stderr, except under `CI=true`, where they fail. Each test
//! uses its own node name, so tests running in parallel never touch each other's
//! cgroups, and a guard removes the test's cgroups (and kills their processes) even when
//! it fails.

use super::*;
use crate::service::ProcStat;
use crate::service::testutil::{ChildGuard, alive, poll_until, starttime};
use takeover_core::Epoch;

const T: Duration = Duration::from_secs(10);

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Says so on the real stderr: libtest captures `eprintln!` of passing tests.
fn say_skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "SKIPPED {test}: {why}");
}

fn skip(test: &str, why: &str) {
    assert!(!under_ci(), "{test}: {why}, and CI=true: failing instead of skipping");
    say_skipped(test, why);
}

/// The machine's hierarchy, if the test can run (root, cgroups).
fn detected(test: &str) -> Option<Hierarchy> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root");
        return None;
    }
    match Hierarchy::detect() {
        Ok(it) => Some(it),
        Err(e) => {
            skip(test, &format!("no cgroups: {e}"));
            None
        }
    }
}

/// cgroup v1 with a freezer, if the machine has it. Its absence is not a failure, even
/// under CI: the machine simply runs v2.
fn v1(test: &str) -> Option<Hierarchy> {
    detected(test)?;
    match Hierarchy::all_mounted().into_iter().find(|it| matches!(it, Hierarchy::V1 { freezer: Some(_), .. })) {
        Some(it) => Some(it),
        None => {
            say_skipped(test, "this machine has no cgroup v1 freezer");
            None
        }
    }
}

/// cgroup v2 (unified, or the hybrid `unified` mount), if the machine has it.
fn v2(test: &str, use_kill: bool) -> Option<Hierarchy> {
    detected(test)?;
    match Hierarchy::all_mounted().into_iter().find_map(|it| match it {
        Hierarchy::V2 { root, .. } => Some(Hierarchy::V2 { root, use_kill }),
        _ => None,
    }) {
        Some(it) => Some(it),
        None => {
            say_skipped(test, "this machine has no cgroup v2 hierarchy");
            None
        }
    }
}

/// Kills and removes a node's cgroups on drop, so a failing test leaves nothing behind.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = kill_leftover_cgroups(self.0) {
            eprintln!("cleanup of {}: {e}", self.0);
        }
    }
}

/// No cgroup directory of `node` in any hierarchy.
fn assert_no_cgroups(node: &str) {
    for hier in Hierarchy::all_mounted() {
        let left = hier.names_with_prefix(&format!("{node}.")).unwrap();
        assert!(left.is_empty(), "cgroups left in {}: {left:?}", hier.describe());
    }
}

fn ctx(node: &str, resource: &str, dir: &Path) -> Ctx {
    Ctx {
        node: node.into(),
        scope: node.into(),
        node_index: 0,
        group: "web".into(),
        resource: resource.into(),
        state_dir: dir.to_path_buf(),
        generation: Epoch { counter: 7, node: 1, forced: false },
    }
}

/// `sh -c SCRIPT` with `$DIR` set to `dir`.
fn sh(dir: &Path, script: &str) -> ProcessSpec {
    ProcessSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("DIR".into(), dir.display().to_string())],
        log: None,
    }
}

fn process(spec: ProcessSpec, hier: &Hierarchy) -> Process {
    Process::new(spec).with_hierarchy(hier.clone())
}

/// Wait for a pid file the script writes, and parse it.
fn read_pid(path: &Path) -> i32 {
    let mut pid = 0;
    poll_until(&format!("{} written", path.display()), T, || {
        let text = fs::read_to_string(path).unwrap_or_default();
        match text.strip_suffix('\n').and_then(|it| it.parse().ok()) {
            Some(p) => {
                pid = p;
                true
            }
            None => false,
        }
    });
    pid
}

fn in_cgroup(pid: i32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|it| it.contains(&format!("/{name}\n")))
}

/// The main process runs `sleep 600`. Before that it leaves a double-forked daemon (its
/// subshell exits, so the daemon is reparented away from the main process) and a child
/// in a session (and process group) of its own.
const DAEMONS: &str = r#"
(sleep 600 & echo $! > "$DIR/daemon.pid")
setsid sleep 600 & echo $! > "$DIR/session.pid"
exec sleep 600
"#;

async fn stop_kills_daemons_and_session_children(node: &'static str, hier: Hierarchy) {
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let name = cgroup_name(&c).unwrap();
    let mut p = process(sh(dir.path(), DAEMONS), &hier).with_stop_grace(Duration::from_secs(5));
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let main = p.main_pid().unwrap();
    let daemon = read_pid(&dir.path().join("daemon.pid"));
    let session = read_pid(&dir.path().join("session.pid"));
    poll_until("the setsid child has its own session", T, || {
        ProcStat::read(session).unwrap().is_some_and(|st| st.session == session)
    });
    let (dst, sst) = (ProcStat::read(daemon).unwrap().unwrap(), ProcStat::read(session).unwrap().unwrap());
    assert_ne!(dst.ppid, main, "the daemon was double-forked away from the main process");
    assert_ne!(sst.pgrp, main, "the setsid child left the main process's group");
    let procs: Vec<(i32, u64)> = [main, daemon, session].iter().map(|&p| (p, starttime(p))).collect();
    for &(pid, st) in &procs {
        assert!(alive(pid, st), "{pid}");
        assert!(in_cgroup(pid, &name), "{pid} is not in cgroup {name}");
    }
    assert!(hier.cgroup(&name).dirs().iter().all(|it| it.is_dir()));
    assert_eq!(p.monitor(&c).await, OpOutcome::Ok);

    let t0 = Instant::now();
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    // They all heed SIGTERM: no need to wait for the grace period.
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    for &(pid, st) in &procs {
        assert!(!alive(pid, st), "{pid} survived stop");
    }
    // The main process was reaped by stop.
    assert!(ProcStat::read(main).unwrap().is_none_or(|st| st.starttime != procs[0].1));
    assert_no_cgroups(node);
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);
    assert_eq!(p.stop(&c).await, OpOutcome::Ok, "stop is idempotent");
}

#[tokio::test]
async fn process_stop_kills_daemons_and_session_children_v1() {
    let Some(h) = v1("process_stop_kills_daemons_and_session_children_v1") else { return };
    stop_kills_daemons_and_session_children("tproc1", h).await;
}

#[tokio::test]
async fn process_stop_kills_daemons_and_session_children_v2_kill() {
    let Some(h) = v2("process_stop_kills_daemons_and_session_children_v2_kill", true) else { return };
    stop_kills_daemons_and_session_children("tproc2", h).await;
}

#[tokio::test]
async fn process_stop_kills_daemons_and_session_children_v2_freeze() {
    let Some(h) = v2("process_stop_kills_daemons_and_session_children_v2_freeze", false) else { return };
    stop_kills_daemons_and_session_children("tproc3", h).await;
}

/// A shell that ignores SIGTERM, with a child that inherits that, and a grandchild that
/// forks on and on: SIGTERM does nothing, so the kill loop must.
const STUBBORN: &str = r#"
trap "" TERM
sleep 600 & echo $! > "$DIR/child.pid"
(while :; do sleep 0.01 & wait; done) &
echo $$ > "$DIR/main.pid"
wait
"#;

async fn term_ignoring_processes_are_killed(node: &'static str, hier: Hierarchy) {
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let grace = Duration::from_millis(300);
    let mut p = process(sh(dir.path(), STUBBORN), &hier).with_stop_grace(grace);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let main = p.main_pid().unwrap();
    assert_eq!(read_pid(&dir.path().join("main.pid")), main);
    let child = read_pid(&dir.path().join("child.pid"));
    let procs: Vec<(i32, u64)> = [main, child].iter().map(|&p| (p, starttime(p))).collect();
    let cg = hier.cgroup(&cgroup_name(&c).unwrap());
    poll_until("main, child, the forking loop", T, || cg.procs().unwrap().len() >= 3);

    let t0 = Instant::now();
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    let took = t0.elapsed();
    assert!(took >= grace, "stop took {took:?}: SIGTERM cannot have worked");
    assert!(took < grace + KILL_WAIT, "{took:?}");
    for &(pid, st) in &procs {
        assert!(!alive(pid, st), "{pid} survived stop");
    }
    assert_no_cgroups(node);
}

#[tokio::test]
async fn process_term_ignoring_processes_are_killed_v1() {
    let Some(h) = v1("process_term_ignoring_processes_are_killed_v1") else { return };
    term_ignoring_processes_are_killed("tproc4", h).await;
}

#[tokio::test]
async fn process_term_ignoring_processes_are_killed_v2_kill() {
    let Some(h) = v2("process_term_ignoring_processes_are_killed_v2_kill", true) else { return };
    term_ignoring_processes_are_killed("tproc5", h).await;
}

#[tokio::test]
async fn process_term_ignoring_processes_are_killed_v2_freeze() {
    let Some(h) = v2("process_term_ignoring_processes_are_killed_v2_freeze", false) else { return };
    term_ignoring_processes_are_killed("tproc6", h).await;
}

#[tokio::test]
async fn process_monitor_ok_then_failed_when_the_main_process_exits() {
    let Some(h) = detected("process_monitor_ok_then_failed_when_the_main_process_exits") else { return };
    let node = "tproc7";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();

    // Exits with 3, leaving a stray behind.
    let c = ctx(node, "app", dir.path());
    let script = r#"sleep 600 & echo $! > "$DIR/stray.pid"; while [ ! -e "$DIR/go" ]; do sleep 0.01; done; exit 3"#;
    let mut p = process(sh(dir.path(), script), &h);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let stray = read_pid(&dir.path().join("stray.pid"));
    let stray_st = starttime(stray);
    assert_eq!(p.monitor(&c).await, OpOutcome::Ok);
    assert_eq!(p.monitor(&c).await, OpOutcome::Ok);
    fs::write(dir.path().join("go"), "").unwrap();
    let deadline = Instant::now() + T;
    let failed = loop {
        match p.monitor(&c).await {
            OpOutcome::Ok => {}
            OpOutcome::Failed(text) => break text,
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "monitor kept saying Ok");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(failed.contains("exited with status 3"), "{failed}");
    assert!(failed.contains(&format!("1 stray processes remain in its cgroup: [{stray}]")), "{failed}");
    // It stays Failed until stopped.
    assert!(matches!(p.monitor(&c).await, OpOutcome::Failed(_)));
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert!(!alive(stray, stray_st));
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);

    // Exits cleanly, alone: still Failed (it should not have exited), no strays.
    let c = ctx(node, "clean", dir.path());
    let mut p = process(sh(dir.path(), "exit 0"), &h);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let mut outcome = OpOutcome::Ok;
    poll_until("monitor sees the exit", T, || {
        outcome = block_on(p.monitor(&c));
        outcome != OpOutcome::Ok
    });
    let OpOutcome::Failed(text) = outcome else { panic!("{outcome:?}") };
    assert!(text.ends_with("exited with status 0"), "{text}");
    // A restart cleans up the exited run and starts afresh.
    let old = p.main_pid().unwrap();
    p.spec = sh(dir.path(), "exec sleep 600");
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    assert_ne!(p.main_pid(), Some(old));
    assert_eq!(p.monitor(&c).await, OpOutcome::Ok);
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_no_cgroups(node);
}

#[tokio::test]
async fn process_start_sets_env_appends_log_and_is_idempotent() {
    let Some(h) = detected("process_start_sets_env_appends_log_and_is_idempotent") else { return };
    let node = "tproc8";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let log = dir.path().join("web.app.log");
    fs::write(&log, "earlier run\n").unwrap();
    let mut spec = sh(
        dir.path(),
        r#"echo "out $TAKEOVER_NODE $TAKEOVER_GROUP $TAKEOVER_GENERATION $FOO"; echo err >&2; touch "$DIR/ready"; exec sleep 600"#,
    );
    spec.env.push(("FOO".into(), "bar".into()));
    let mut p = process(spec, &h);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let pid = p.main_pid().unwrap();
    poll_until("script ran", T, || dir.path().join("ready").exists());
    let st = ProcStat::read(pid).unwrap().unwrap();
    assert_eq!(st.pgrp, pid, "own process group");
    assert_eq!(st.ppid, std::process::id() as i32);
    // Starting a running resource succeeds and changes nothing.
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    assert_eq!(p.main_pid(), Some(pid));
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("earlier run\n"), "{text:?}");
    assert!(text.contains("out tproc8 web 7.1 bar\n"), "{text:?}");
    assert!(text.contains("err\n"), "{text:?}");

    // An explicit log path.
    let other = dir.path().join("other.log");
    let mut spec = sh(dir.path(), "echo hello");
    spec.log = Some(other.clone());
    let mut p = process(spec, &h);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    poll_until("hello logged", T, || fs::read_to_string(&other).is_ok_and(|it| it == "hello\n"));
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_no_cgroups(node);
}

#[tokio::test]
async fn process_stop_and_monitor_of_a_never_started_resource() {
    let Some(h) = detected("process_stop_and_monitor_of_a_never_started_resource") else { return };
    let node = "tproc9";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let mut p = process(sh(dir.path(), "exit 0"), &h);
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_no_cgroups(node);
    // With the detected hierarchy too (no override).
    let mut p = Process::new(sh(dir.path(), "exit 0"));
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);
}

#[tokio::test]
async fn process_start_failures_leave_no_cgroup() {
    let Some(h) = detected("process_start_failures_leave_no_cgroup") else { return };
    let node = "tproc10";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());

    let mut p = process(ProcessSpec { argv: vec!["/nonexistent/program".into()], env: vec![], log: None }, &h);
    let OpOutcome::Failed(text) = p.start(&c).await else { panic!() };
    assert!(text.contains("/nonexistent/program") && text.contains("No such file"), "{text}");
    assert_eq!(p.main_pid(), None);
    assert_no_cgroups(node);
    assert_eq!(p.monitor(&c).await, OpOutcome::NotRunning);

    let mut p = process(ProcessSpec { argv: vec![], env: vec![], log: None }, &h);
    assert!(matches!(p.start(&c).await, OpOutcome::Failed(t) if t.contains("argv is empty")));

    let mut spec = sh(dir.path(), "exit 0");
    spec.log = Some(dir.path().join("no/such/dir/x.log"));
    let mut p = process(spec, &h);
    assert!(matches!(p.start(&c).await, OpOutcome::Failed(t) if t.contains("cannot open the log")));
    assert_no_cgroups(node);

    let mut bad = c.clone();
    bad.resource = "a/b".into();
    let mut p = process(sh(dir.path(), "exit 0"), &h);
    assert!(matches!(p.start(&bad).await, OpOutcome::Failed(t) if t.contains("cannot name a cgroup")));
    assert_no_cgroups(node);
}

#[tokio::test]
async fn process_a_cancelled_start_is_cleaned_up_by_stop() {
    let Some(h) = detected("process_a_cancelled_start_is_cleaned_up_by_stop") else { return };
    let node = "tproc11";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let mut p = process(sh(dir.path(), DAEMONS), &h);
    // Dropped at its first await: after the cgroup was made, before the spawn reply.
    let r = tokio::time::timeout(Duration::ZERO, p.start(&c)).await;
    assert!(r.is_err(), "the start was not cancelled: {r:?}");
    assert_eq!(p.main_pid(), None);
    // The supervisor thread still spawns it, then kills the orphan. Its daemons may have
    // made it into the cgroup meanwhile; stop kills them.
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_no_cgroups(node);
    // A start after that works normally.
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    assert_eq!(p.stop(&c).await, OpOutcome::Ok);
    assert_no_cgroups(node);
}

async fn leftovers_of_a_forgotten_handle_are_killed(node: &'static str, hier: Hierarchy) {
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let mut p = process(sh(dir.path(), DAEMONS), &hier);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let main = p.main_pid().unwrap();
    let daemon = read_pid(&dir.path().join("daemon.pid"));
    let session = read_pid(&dir.path().join("session.pid"));
    let procs: Vec<(i32, u64)> = [main, daemon, session].iter().map(|&p| (p, starttime(p))).collect();
    // The "crash": the handle is gone, nothing was stopped.
    std::mem::forget(p);
    let name = cgroup_name(&c).unwrap();
    let dirs: Vec<String> = hier.cgroup(&name).dirs().iter().map(|it| it.display().to_string()).collect();

    let removed = kill_leftover_cgroups(node).unwrap();
    assert_eq!(removed, dirs);
    for &(pid, st) in &procs {
        assert!(!alive(pid, st), "{pid} survived");
    }
    assert_no_cgroups(node);
    assert_eq!(kill_leftover_cgroups(node).unwrap(), Vec::<String>::new());
    // The forgotten main process is this test's child: reap it.
    let _ = nix::sys::wait::waitpid(Pid::from_raw(main), None);
}

#[tokio::test]
async fn process_leftovers_of_a_forgotten_handle_are_killed() {
    let Some(h) = detected("process_leftovers_of_a_forgotten_handle_are_killed") else { return };
    leftovers_of_a_forgotten_handle_are_killed("tproc12", h).await;
}

#[tokio::test]
async fn process_leftovers_of_a_forgotten_handle_are_killed_v2() {
    let Some(h) = v2("process_leftovers_of_a_forgotten_handle_are_killed_v2", true) else { return };
    leftovers_of_a_forgotten_handle_are_killed("tproc13", h).await;
}

#[test]
fn process_leftover_cleanup_only_touches_its_own_node() {
    let Some(h) = detected("process_leftover_cleanup_only_touches_its_own_node") else { return };
    let _c = (Cleanup("tproc14"), Cleanup("tproc14-b"));
    // `tproc14-b.web.app` starts with `tproc14-`, not with `tproc14.`.
    let other = h.cgroup("tproc14-b.web.app");
    other.create().unwrap();
    let mine = h.cgroup("tproc14.web.app");
    mine.create().unwrap();
    assert_eq!(kill_leftover_cgroups("tproc14").unwrap().len(), mine.dirs().len());
    assert!(!mine.exists());
    assert!(other.exists());
    assert_eq!(kill_leftover_cgroups("tproc14-b").unwrap().len(), other.dirs().len());
    assert_no_cgroups("tproc14-b");
    assert!(kill_leftover_cgroups("").is_err());
    assert!(kill_leftover_cgroups("../x").is_err());
}

#[tokio::test]
async fn process_dropping_a_running_resource_kills_it() {
    let Some(h) = detected("process_dropping_a_running_resource_kills_it") else { return };
    let node = "tproc15";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());
    let mut p = process(sh(dir.path(), DAEMONS), &h);
    assert_eq!(p.start(&c).await, OpOutcome::Ok);
    let main = p.main_pid().unwrap();
    let daemon = read_pid(&dir.path().join("daemon.pid"));
    let procs: Vec<(i32, u64)> = [main, daemon].iter().map(|&p| (p, starttime(p))).collect();
    drop(p);
    poll_until("everything killed and the cgroup removed", T, || {
        procs.iter().all(|&(p, st)| !alive(p, st)) && !h.cgroup(&cgroup_name(&c).unwrap()).exists()
    });
    poll_until("main process reaped", T, || ProcStat::read(main).unwrap().is_none());
    assert_no_cgroups(node);
}

#[tokio::test]
async fn process_check_resolves_the_program_and_probes_cgroups() {
    let Some(h) = detected("process_check_resolves_the_program_and_probes_cgroups") else { return };
    let node = "tproc16";
    let _c = Cleanup(node);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(node, "app", dir.path());

    let r = process(sh(dir.path(), "exit 0"), &h).check(&c).await;
    assert!(r.ok, "{r:?}");
    assert!(r.notes.iter().any(|it| it.starts_with("program: /") && it.ends_with("/sh")), "{r:?}");
    assert!(r.notes.iter().any(|it| it.starts_with("cgroup: ") && it.contains("tproc16.web.app")), "{r:?}");

    // PATH from the spec's environment, as the spawn would use it.
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("myapp"), "#!/bin/sh\n").unwrap();
    let spec = |argv0: &str| ProcessSpec {
        argv: vec![argv0.into()],
        env: vec![("PATH".into(), bin.display().to_string())],
        log: None,
    };
    let r = process(spec("myapp"), &h).check(&c).await;
    assert!(!r.ok && r.notes.iter().any(|it| it.contains("not an executable in PATH")), "{r:?}");
    fs::set_permissions(bin.join("myapp"), fs::Permissions::from_mode(0o755)).unwrap();
    let r = process(spec("myapp"), &h).check(&c).await;
    assert!(r.ok, "{r:?}");
    let r = process(spec("sh"), &h).check(&c).await;
    assert!(!r.ok, "sh is not in that PATH: {r:?}");
    let r = process(spec("/nonexistent/prog"), &h).check(&c).await;
    assert!(!r.ok && r.notes.iter().any(|it| it.contains("does not exist")), "{r:?}");
    let r = process(spec(&dir.path().display().to_string()), &h).check(&c).await;
    assert!(!r.ok && r.notes.iter().any(|it| it.contains("not an executable file")), "{r:?}");

    let mut s = sh(dir.path(), "exit 0");
    s.log = Some(dir.path().join("no/such/x.log"));
    let r = process(s, &h).check(&c).await;
    assert!(!r.ok && r.notes.iter().any(|it| it.contains("does not exist")), "{r:?}");

    // An unusable hierarchy.
    let nowhere = Hierarchy::V2 { root: dir.path().join("nowhere"), use_kill: true };
    let r = process(sh(dir.path(), "exit 0"), &nowhere).check(&c).await;
    assert!(!r.ok && r.notes.iter().any(|it| it.contains("not usable")), "{r:?}");
    assert_no_cgroups(node);
}

// ---------------------------------------------------------------------------------------
// The agent crashes: its main process dies with it (PDEATHSIG), its daemons do not, and
// the next agent's leftover cleanup kills them.
// ---------------------------------------------------------------------------------------

const CRASH_HELPER_DIR: &str = "TAKEOVER_PROCESS_CRASH_HELPER_DIR";
const CRASH_NODE: &str = "tproc-crash";

/// Plays the agent that crashes, in a child process of the test below: starts the
/// resource from a thread that then exits (the spawn happens on the supervisor thread,
/// so the main process must not die with the requesting thread), reports the main pid,
/// and waits to be SIGKILLed (at most a minute).
#[test]
#[ignore = "run by process_agent_crash_... in a child process"]
fn process_crash_helper() {
    let Some(dir) = std::env::var_os(CRASH_HELPER_DIR).map(PathBuf::from) else { return };
    let d = dir.clone();
    let p = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let c = ctx(CRASH_NODE, "app", &d);
        let mut p = Process::new(sh(&d, DAEMONS));
        assert_eq!(rt.block_on(p.start(&c)), OpOutcome::Ok);
        p
    })
    .join()
    .unwrap();
    let pid = p.main_pid().unwrap();
    std::mem::forget(p);
    fs::write(dir.join("tmp"), format!("{pid}\n")).unwrap();
    fs::rename(dir.join("tmp"), dir.join("main.pid")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn process_agent_crash_main_dies_by_pdeathsig_daemons_killed_at_next_start() {
    if detected("process_agent_crash_main_dies_by_pdeathsig_daemons_killed_at_next_start").is_none() {
        return;
    }
    let _c = Cleanup(CRASH_NODE);
    let dir = tempfile::tempdir().unwrap();
    let out = File::create(dir.path().join("helper.out")).unwrap();
    let helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resources::process::tests::process_crash_helper", "--ignored", "--nocapture"])
        .env(CRASH_HELPER_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut helper = ChildGuard(helper);
    let main = read_pid(&dir.path().join("main.pid"));
    let daemon = read_pid(&dir.path().join("daemon.pid"));
    let session = read_pid(&dir.path().join("session.pid"));
    let (main_st, daemon_st, session_st) = (starttime(main), starttime(daemon), starttime(session));
    assert_eq!(ProcStat::read(main).unwrap().unwrap().ppid, helper.pid());
    // The thread that asked for the start has exited; the main process lives on.
    thread::sleep(Duration::from_millis(100));
    assert!(alive(main, main_st), "the main process died with the requesting thread");

    // The crash.
    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    poll_until("the main process dies with its agent (PDEATHSIG)", T, || !alive(main, main_st));
    // The daemons are not its children: they survive, as leftovers.
    assert!(alive(daemon, daemon_st) && alive(session, session_st));

    // The next agent's start.
    let removed = kill_leftover_cgroups(CRASH_NODE).unwrap();
    assert!(!removed.is_empty() && removed.iter().all(|it| it.ends_with("/tproc-crash.web.app")), "{removed:?}");
    assert!(!alive(daemon, daemon_st) && !alive(session, session_st));
    assert_no_cgroups(CRASH_NODE);
}

#[test]
fn process_cgroup_names() {
    let dir = Path::new("/tmp");
    assert_eq!(cgroup_name(&ctx("n1", "app", dir)).unwrap(), "n1.web.app");
    for bad in ["", "a.b", "a/b", "..", "a b", "ü"] {
        assert!(cgroup_name(&ctx(bad, "app", dir)).is_err(), "{bad:?}");
        assert!(cgroup_name(&ctx("n1", bad, dir)).is_err(), "{bad:?}");
    }
}
