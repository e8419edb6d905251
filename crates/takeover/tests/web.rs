//! The agent's web status page (`GET /` on its API), rendered by headless Chromium
//! (Debian's `chromium`) against two real agents on loopback after a takeover, and
//! `takeover simulate` reading a live agent's status.
//!
//! The API is a Unix socket, so the test puts a small TCP-to-Unix forwarder in front of
//! it for the browser. The screenshot is kept in `target/test-artefacts/status-page.png`.
//! Without chromium the page test prints that it skipped, except under CI=true, where a
//! skip is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bed, GROUP};

/// Forwards every TCP connection to 127.0.0.1:PORT to the Unix socket `socket`, on
/// threads of its own, for as long as the test process lives. Returns the port.
fn forward_tcp_to_unix(socket: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback TCP port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&socket) else { continue };
            let (tcp2, unix2) = (tcp.try_clone().expect("clone"), unix.try_clone().expect("clone"));
            std::thread::spawn(move || pipe(tcp, unix, |s| s.shutdown(Shutdown::Write)));
            std::thread::spawn(move || pipe(unix2, tcp2, |s| s.shutdown(Shutdown::Write)));
        }
    });
    port
}

fn pipe<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|it| it.is_file())
}

/// Runs chromium headless with `args` (a fresh profile in `profile`), killing it after
/// `limit`; returns its stdout.
fn chromium(binary: &Path, profile: &Path, args: &[String], limit: Duration) -> String {
    let mut child = Command::new(binary)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut stderr);
    let text = reader.join().expect("the reader");
    assert!(
        !text.is_empty() || args.iter().any(|it| it.starts_with("--screenshot")),
        "chromium printed nothing:\n{stderr}"
    );
    text
}

fn artefacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artefacts")
}

#[tokio::test]
async fn web_status_page_renders_nodes_groups_and_the_last_takeover_in_chromium() {
    let Some(browser) = find_chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing under CI=true: .ci/run installs Debian's chromium package"
        );
        println!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    // A takeover, so beta has a move to show on the timeline; then alpha rejoins.
    bed.cluster.power_off("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_pair("beta", "alpha").await;
    let status = bed.cluster.status("beta").await.unwrap();
    let last_move = common::group(&status).and_then(|g| g.last_move.clone()).expect("beta's last move");

    let port = forward_tcp_to_unix(bed.cluster.node("beta").api.clone());
    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir().expect("a profile directory");
    let (browser2, profile_path, url2) = (browser.clone(), profile.path().to_path_buf(), url.clone());
    // --virtual-time-budget lets the page's fetch and timers run before the DOM is dumped.
    let dom = tokio::task::spawn_blocking(move || {
        chromium(
            &browser2,
            &profile_path,
            &["--virtual-time-budget=5000".into(), "--dump-dom".into(), url2],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert!(dom.contains(r#"data-state="ok""#), "the page did not render a status:\n{dom}");
    for node in ["alpha", "beta"] {
        assert!(dom.contains(&format!(r#"data-node="{node}""#)), "node {node} missing:\n{dom}");
    }
    assert!(dom.contains(&format!(r#"data-group="{GROUP}""#)), "group {GROUP} missing:\n{dom}");
    assert!(dom.contains(r#"data-role="M""#) && dom.contains(r#"data-role="SL""#), "roles missing:\n{dom}");
    assert!(dom.contains(&format!(r#"data-move="{GROUP}""#)), "the timeline shows no move:\n{dom}");
    assert!(dom.contains(&format!("{} ms", last_move.total_ms)), "the move's total is not shown:\n{dom}");
    assert!(dom.contains("link 0 up") && dom.contains("link 1 up"), "links missing:\n{dom}");
    let event =
        status.events.last().expect("events").text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(dom.contains(&event), "the last event `{event}` is missing:\n{dom}");

    let dir = artefacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let (browser2, profile_path, png2) = (browser.clone(), profile.path().to_path_buf(), png.clone());
    tokio::task::spawn_blocking(move || {
        chromium(
            &browser2,
            &profile_path,
            &[
                "--virtual-time-budget=5000".into(),
                "--window-size=1280,900".into(),
                format!("--screenshot={}", png2.display()),
                url,
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "not a screenshot: {} bytes", bytes.len());
    println!("screenshot: {}", png.display());
}

/// One HTTP/1.0 GET on the Unix socket: the whole answer, headers included.
fn get_unix(socket: &Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: takeover\r\n\r\n").expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

#[tokio::test]
async fn live_agent_serves_the_page_and_simulate_reads_its_status() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let api = bed.cluster.node("alpha").api.clone();

    // The page itself, without a browser: HTML that polls the status document.
    let socket = api.clone();
    let page = tokio::task::spawn_blocking(move || get_unix(&socket, "/")).await.unwrap();
    let (head, body) = page.split_once("\r\n\r\n").expect("headers and a body");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(body.starts_with("<!doctype html>") && body.contains(r#"fetch("/v1/status""#), "{body}");

    let config = bed.cluster.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_takeover"))
            .args(["simulate", "--fail", "alpha", "--api"])
            .arg(api)
            .arg("--config")
            .arg(config)
            .output()
            .expect("run takeover simulate")
    })
    .await
    .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{plan}\n{}", String::from_utf8_lossy(&out.stderr));
    println!("{plan}");
    assert!(plan.contains("from the status of alpha"), "{plan}");
    assert!(!plan.contains("WARNING"), "the simulation did not reach the live state: {plan}");
    assert!(plan.contains(&format!("group {GROUP}: alpha M")), "{plan}");
    assert!(plan.contains(&format!("beta     group {GROUP}: SL → SM (alpha is known stopped: taking over)")), "{plan}");
    // The live cluster is not touched.
    bed.wait_pair("alpha", "beta").await;
}
