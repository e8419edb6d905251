//! What installing takeover relies on: the systemd units (checked by `systemd-analyze
//! verify`), the agent's sd_notify readiness and watchdog (against a fake
//! `NOTIFY_SOCKET`: this machine has no systemd as PID 1), and the man pages and
//! completions generated from the CLI definitions. `packaging/check-deb.sh` checks the
//! same units inside the built .deb.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Bed;
use tokio::net::UnixDatagram;
use tokio::time::Instant;

const UNITS: [&str; 2] = ["takeover.service", "takeover-witness.service"];

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_takeover")
}

/// A scratch root as the .deb would leave it: the binary at /usr/bin/takeover, our units
/// in /usr/lib/systemd/system beside this machine's own (the targets ours refer to).
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::copy(binary(), root.path().join("usr/bin/takeover")).unwrap();
    let system = Path::new("/usr/lib/systemd/system");
    assert!(
        system.join("multi-user.target").exists(),
        "this machine has no systemd units in {} to verify against: apt-get install systemd",
        system.display()
    );
    for entry in std::fs::read_dir(system).unwrap() {
        let entry = entry.unwrap();
        // Symlinks (aliases) are copied as links, as systemd reads them.
        let target = units.join(entry.file_name());
        match std::fs::read_link(entry.path()) {
            Ok(link) => std::os::unix::fs::symlink(link, target).unwrap(),
            Err(_) if entry.file_type().unwrap().is_file() => {
                std::fs::copy(entry.path(), target).unwrap();
            }
            Err(_) => {}
        }
    }
    for unit in UNITS {
        std::fs::copy(packaging().join("systemd").join(unit), units.join(unit)).unwrap();
    }
    root
}

fn verify(root: &Path, unit: &str) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("--man=no")
        .arg(format!("usr/lib/systemd/system/{unit}"))
        .current_dir(root)
        .output()
        .expect("systemd-analyze runs (apt-get install systemd)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify_without_a_warning() {
    let root = scratch_root();
    for unit in UNITS {
        let (ok, text) = verify(root.path(), unit);
        assert!(ok && text.is_empty(), "systemd-analyze verify {unit}:\n{text}");
    }
    // The check is not blind: an unknown key (only a warning to systemd) and a missing
    // binary are both reported.
    let units = root.path().join("usr/lib/systemd/system");
    let good = std::fs::read_to_string(units.join("takeover.service")).unwrap();
    std::fs::write(units.join("takeover.service"), good.replace("KillMode=mixed", "KilMode=mixed")).unwrap();
    let (_, text) = verify(root.path(), "takeover.service");
    assert!(text.contains("Unknown key 'KilMode'"), "{text}");
    std::fs::write(units.join("takeover.service"), &good).unwrap();
    std::fs::remove_file(root.path().join("usr/bin/takeover")).unwrap();
    let (ok, text) = verify(root.path(), "takeover.service");
    assert!(!ok && text.contains("/usr/bin/takeover is not executable"), "{text}");
}

#[test]
fn the_agent_unit_is_type_notify_with_a_watchdog_and_restarts_on_failure() {
    let unit = std::fs::read_to_string(packaging().join("systemd/takeover.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "KillMode=mixed",
        "ExecStart=/usr/bin/takeover agent",
    ] {
        assert!(unit.lines().any(|it| it == line), "takeover.service lacks {line}");
    }
    let watchdog = unit.lines().find_map(|it| it.strip_prefix("WatchdogSec=")).expect("WatchdogSec=");
    assert!(watchdog.ends_with('s') && watchdog.trim_end_matches('s').parse::<u64>().unwrap() >= 2, "{watchdog}");
    // The API socket and the state directory the unit creates are the ones the example
    // configuration and the guide use.
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/quickstart.md")).unwrap();
    assert!(unit.contains("RuntimeDirectory=takeover") && guide.contains("api = \"unix:/run/takeover/api.sock\""));
    assert!(unit.contains("StateDirectory=takeover") && guide.contains("state_dir = \"/var/lib/takeover\""));
}

#[test]
fn man_pages_and_completions_come_from_the_cli_and_cover_what_the_units_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary()).args(["man", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // roff writes a hyphen as `\-`.
    let page =
        |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.1"))).map(|it| it.replace("\\-", "-"));
    let main = page("takeover").unwrap();
    for sub in ["agent", "status", "switchover", "force-start", "cleanup", "journal", "witness", "keygen"] {
        assert!(main.contains(sub), "takeover.1 does not list {sub}");
        assert!(page(&format!("takeover-{sub}")).is_ok(), "no takeover-{sub}.1");
    }
    assert!(page("takeover-journal-append").unwrap().contains("acknowledgement"));
    // The environment the unit sets, and the files, are in the pages.
    let agent = page("takeover-agent").unwrap();
    assert!(agent.contains("TAKEOVER_NODE") && agent.contains("TAKEOVER_JOIN_ONLY"), "{agent}");
    assert!(main.contains("/etc/takeover/cluster.toml") && main.contains("/etc/default/takeover"), "{main}");
    // Hidden internals (the guard, the test services) get no page.
    assert!(page("takeover-guard").is_err() && page("takeover-demo-app").is_err());
    // Every man page a unit's Documentation= names exists.
    for unit in UNITS {
        let text = std::fs::read_to_string(packaging().join("systemd").join(unit)).unwrap();
        let docs = text.lines().find_map(|it| it.strip_prefix("Documentation=")).expect("Documentation=");
        for name in docs.split_whitespace().filter_map(|it| it.strip_prefix("man:")) {
            let name = name.strip_suffix("(1)").expect("section 1");
            assert!(page(name).is_ok(), "{unit} names man:{name}(1), which `takeover man` does not write");
        }
    }
    // The pages are valid roff: man renders them without a warning.
    let render = Command::new("man").args(["--warnings", "-l"]).arg(dir.path().join("takeover-status.1")).output();
    if let Ok(render) = render {
        assert!(render.status.success());
        assert!(String::from_utf8_lossy(&render.stdout).contains("--json"));
        assert!(render.stderr.is_empty(), "{}", String::from_utf8_lossy(&render.stderr));
    }

    for (shell, needle) in
        [("bash", "complete -F _takeover"), ("zsh", "#compdef takeover"), ("fish", "complete -c takeover")]
    {
        let out = Command::new(binary()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle) && text.contains("switchover"), "{shell} completion:\n{text}");
    }
    let out = Command::new(binary()).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

/// Receives the next notification before `deadline`.
async fn next(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn the_agent_tells_a_fake_systemd_ready_then_feeds_its_watchdog_then_stopping() {
    let mut bed = Bed::new().await;
    let path = bed.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let log = std::fs::File::create(bed.dir.join("alpha.agent.log")).unwrap();
    // As systemd starts it: NOTIFY_SOCKET, and WatchdogSec=400ms (send every 200 ms).
    let mut agent = tokio::process::Command::new(binary())
        .args(["agent", "--config"])
        .arg(&bed.cluster.config)
        .args(["--node", "alpha"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap() as i32;

    let started = Instant::now();
    let ready = next(&socket, started + common::WAIT).await.unwrap_or_else(|| panic!("no READY=1\n{}", bed.logs()));
    // Readiness is the first thing said, and it is true: the API answers at once.
    assert!(ready.starts_with("READY=1\nSTATUS=node alpha incarnation "), "{ready:?}");
    assert!(ready.contains("journal X"), "{ready:?}");
    let status = bed.cluster.status("alpha").await.expect("the API answers once READY=1 was sent");
    assert_eq!(status.node, "alpha");

    // The watchdog is fed from the event loop, about every 200 ms; a status line follows
    // each feed.
    let mut feeds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while feeds.len() < 5 {
        let message =
            next(&socket, deadline).await.unwrap_or_else(|| panic!("only {} WATCHDOG=1 in 10 s", feeds.len()));
        if message == "WATCHDOG=1\n" {
            feeds.push(Instant::now());
        } else {
            assert!(message.starts_with("STATUS=node alpha"), "{message:?}");
        }
    }
    let span = *feeds.last().unwrap() - feeds[0];
    assert!(span >= Duration::from_millis(600), "4 intervals of ~200 ms took {span:?}: fed too fast");

    // The group's service, once the peer is up and the group runs here, does not inherit
    // the socket: only the agent speaks for the agent.
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    // The role comes first, the service's start after it: poll for the process.
    let deadline = Instant::now() + common::WAIT;
    let apps = loop {
        let apps = children_running(pid, "demo-app");
        if !apps.is_empty() {
            break apps;
        }
        assert!(Instant::now() < deadline, "the group's service never ran under alpha's agent\n{}", bed.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entry = format!("NOTIFY_SOCKET={}", path.display());
    assert!(environ(pid).contains(&entry), "the agent itself has the variable");
    for app in apps {
        assert!(!environ(app).iter().any(|it| it.starts_with("NOTIFY_SOCKET=")), "the service {app} inherited it");
        assert!(!environ(app).iter().any(|it| it.starts_with("WATCHDOG_USEC=")), "the service {app} inherited it");
    }

    // A clean stop says STOPPING=1 before it stops the resources, and exits 0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + common::WAIT;
    loop {
        let message = next(&socket, deadline).await.unwrap_or_else(|| panic!("no STOPPING=1\n{}", bed.logs()));
        if message.starts_with("STOPPING=1\n") {
            break;
        }
    }
    let exit = tokio::time::timeout(common::WAIT, agent.wait()).await.expect("the agent exits").unwrap();
    assert!(exit.success(), "{exit:?}\n{}", bed.logs());
    bed.cluster.shutdown().await;
}

/// The environment of a process, one `NAME=value` a string.
fn environ(pid: i32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes.split(|b| *b == 0).map(|it| String::from_utf8_lossy(it).into_owned()).collect()
}

/// The children of `parent` whose first argument is `subcommand` (`takeover demo-app`).
fn children_running(parent: i32, subcommand: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = dir.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(dir.path().join("stat")) else { continue };
        // After the parenthesised name: state, then the parent's pid.
        let Some(rest) = stat.rsplit_once(") ").map(|it| it.1) else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|it| it.parse::<i32>().ok());
        let cmdline = std::fs::read_to_string(dir.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split('\0').nth(1) == Some(subcommand) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_environment_of_etc_default_takeover_is_understood() {
    // TAKEOVER_JOIN_ONLY=1 as /etc/default/takeover suggests (and yes/true/0/no/false):
    // parsed, so the agent goes on to read its configuration.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for value in ["1", "yes", "true", "0", "no", "false"] {
        let out = Command::new(binary())
            .arg("agent")
            .env("TAKEOVER_CONFIG", &missing)
            .env("TAKEOVER_NODE", "alpha")
            .env("TAKEOVER_JOIN_ONLY", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("missing.toml") && !stderr.contains("--join-only"), "{value}: {stderr}");
    }
    let out = Command::new(binary()).args(["agent"]).env("TAKEOVER_JOIN_ONLY", "perhaps").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join-only"));
}
