//! `takeover witness` as a real process on loopback: grants, refusals, expiry with the
//! margin, and both restart behaviours (with its state file; with the file lost).
//!
//! Uses loopback ports 7450–7452 (one per test).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use takeover_agent::witness::{Reply, Request, STATE_FILE, ask};

const LEASE: Duration = Duration::from_millis(1500);
const MARGIN: Duration = Duration::from_millis(200);

struct Witness(Child);

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(addr: SocketAddr, dir: &Path) -> Witness {
    let child = Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["witness", "--listen", &addr.to_string(), "--state-dir"])
        .arg(dir)
        .args(["--lease", "1500ms", "--margin", "200ms"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn takeover witness");
    let w = Witness(child);
    // Wait until it answers (a release of nothing is always answered).
    let t0 = Instant::now();
    loop {
        let probe = Request::Release { seq: 0, group: "probe".into(), node: "probe".into(), incarnation: 0 };
        if let Ok(Some(_)) = ask(addr, &probe, Duration::from_millis(100)) {
            return w;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the witness did not come up on {addr}");
    }
}

fn acquire(addr: SocketAddr, seq: u64, node: &str) -> Reply {
    let req = Request::Acquire { seq, group: "web".into(), node: node.into(), incarnation: 1 };
    ask(addr, &req, Duration::from_secs(2)).unwrap().expect("an answer")
}

fn granted(r: &Reply) -> bool {
    matches!(r, Reply::Grant { lease, .. } if *lease == LEASE)
}

/// Asks as `node` until granted; returns how long that took.
fn acquire_eventually(addr: SocketAddr, node: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut seq = 100;
    loop {
        seq += 1;
        if granted(&acquire(addr, seq, node)) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{node} was not granted within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_holder_at_a_time_and_expiry_with_margin() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7450".parse().unwrap();
    let _w = start(addr, dir.path());
    // First start: no state file, so nothing is granted for lease + margin.
    assert!(matches!(acquire(addr, 1, "alpha"), Reply::Refuse { holder: None, .. }));
    acquire_eventually(addr, "alpha", Duration::from_secs(5));
    assert!(dir.path().join(STATE_FILE).exists());
    // alpha renews for a while; beta is refused all along.
    let t0 = Instant::now();
    let mut seq = 10;
    while t0.elapsed() < Duration::from_secs(3) {
        seq += 1;
        assert!(granted(&acquire(addr, seq, "alpha")));
        assert!(matches!(acquire(addr, seq, "beta"), Reply::Refuse { holder: Some(ref h), .. } if h == "alpha"));
        std::thread::sleep(LEASE / 3);
    }
    // alpha stops renewing (its last grant just now): beta gets the group only after
    // lease + margin on the witness's clock, never before.
    let last = Instant::now();
    assert!(granted(&acquire(addr, 99, "alpha")));
    acquire_eventually(addr, "beta", Duration::from_secs(5));
    let waited = last.elapsed();
    assert!(waited >= LEASE + MARGIN, "beta granted {waited:?} after alpha's last grant");
    assert!(waited <= LEASE + MARGIN + Duration::from_millis(500), "beta waited {waited:?}");
    assert!(matches!(acquire(addr, 200, "alpha"), Reply::Refuse { .. }));
}

#[test]
fn a_restarted_witness_keeps_the_holder_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7451".parse().unwrap();
    let w = start(addr, dir.path());
    acquire_eventually(addr, "alpha", Duration::from_secs(5));
    drop(w); // SIGKILL
    // Measured before the spawn, so never later than the witness's own start.
    let restarted = Instant::now();
    let _w = start(addr, dir.path());
    // beta is refused for a full lease + margin from the restart; alpha may renew at once.
    assert!(matches!(acquire(addr, 1, "beta"), Reply::Refuse { holder: Some(ref h), .. } if h == "alpha"));
    assert!(granted(&acquire(addr, 2, "alpha")));
    acquire_eventually(addr, "beta", Duration::from_secs(5));
    assert!(restarted.elapsed() >= LEASE + MARGIN);
}

#[test]
fn a_witness_that_lost_its_state_grants_nothing_for_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7452".parse().unwrap();
    let w = start(addr, dir.path());
    acquire_eventually(addr, "alpha", Duration::from_secs(5));
    drop(w);
    std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
    let restarted = Instant::now(); // before the spawn: never later than the witness's start
    let _w = start(addr, dir.path());
    // Neither the old holder nor anyone else: the witness does not know who held it.
    assert!(matches!(acquire(addr, 1, "alpha"), Reply::Refuse { holder: None, .. }));
    assert!(matches!(acquire(addr, 2, "beta"), Reply::Refuse { holder: None, .. }));
    acquire_eventually(addr, "beta", Duration::from_secs(5));
    assert!(restarted.elapsed() >= LEASE + MARGIN);
    assert!(matches!(acquire(addr, 3, "alpha"), Reply::Refuse { holder: Some(ref h), .. } if h == "beta"));
}
