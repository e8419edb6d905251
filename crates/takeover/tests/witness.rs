//! `takeover witness` as a real process on loopback: grants, refusals, expiry with the
//! margin, and both restart behaviours (with its state file; with the file lost); then
//! real agents using it (`[witness]` beside their power fence): a group runs only under
//! its lease, a cut-off active stops before its lease ends, without the witness's grant
//! nobody takes over, and a peer that is behind waits although the lease is free.
//!
//! Uses loopback ports 7450–7457 (one per test).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Bed, WitnessProcess, group};
use takeover_agent::localnet::{LocalWitness, http};
use takeover_agent::witness::{Reply, Request, STATE_FILE};

const LEASE: Duration = Duration::from_millis(1500);
const MARGIN: Duration = Duration::from_millis(200);

/// A witness for cluster "w" with a fresh key beside its state in `dir`.
fn start(addr: SocketAddr, dir: &Path) -> WitnessProcess {
    let key = dir.join("cluster.key");
    if !key.exists() {
        takeover_agent::auth::keyfile::write_new(&key, false).unwrap();
    }
    WitnessProcess::start(addr, dir, (LEASE, MARGIN), "w", &key)
}

fn acquire(w: &WitnessProcess, seq: u64, node: &str) -> Reply {
    let req = Request::Acquire { seq, group: "web".into(), node: node.into(), incarnation: 1 };
    w.ask(&req, Duration::from_secs(2)).unwrap().expect("an answer")
}

fn granted(r: &Reply) -> bool {
    matches!(r, Reply::Grant { lease, .. } if *lease == LEASE)
}

/// Asks as `node` until granted; returns how long that took.
fn acquire_eventually(w: &WitnessProcess, node: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut seq = 100;
    loop {
        seq += 1;
        if granted(&acquire(w, seq, node)) {
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
    let w = start(addr, dir.path());
    // First start: no state file, so nothing is granted for lease + margin.
    assert!(matches!(acquire(&w, 1, "alpha"), Reply::Refuse { holder: None, .. }));
    acquire_eventually(&w, "alpha", Duration::from_secs(5));
    assert!(dir.path().join(STATE_FILE).exists());
    // alpha renews for a while; beta is refused all along.
    let t0 = Instant::now();
    let mut seq = 10;
    while t0.elapsed() < Duration::from_secs(3) {
        seq += 1;
        assert!(granted(&acquire(&w, seq, "alpha")));
        assert!(matches!(acquire(&w, seq, "beta"), Reply::Refuse { holder: Some(ref h), .. } if h == "alpha"));
        std::thread::sleep(LEASE / 3);
    }
    // alpha stops renewing (its last grant just now): beta gets the group only after
    // lease + margin on the witness's clock, never before.
    let last = Instant::now();
    assert!(granted(&acquire(&w, 99, "alpha")));
    acquire_eventually(&w, "beta", Duration::from_secs(5));
    let waited = last.elapsed();
    assert!(waited >= LEASE + MARGIN, "beta granted {waited:?} after alpha's last grant");
    assert!(waited <= LEASE + MARGIN + Duration::from_millis(500), "beta waited {waited:?}");
    assert!(matches!(acquire(&w, 200, "alpha"), Reply::Refuse { .. }));
}

#[test]
fn a_restarted_witness_keeps_the_holder_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7451".parse().unwrap();
    let w = start(addr, dir.path());
    acquire_eventually(&w, "alpha", Duration::from_secs(5));
    drop(w); // SIGKILL
    // Measured before the spawn, so never later than the witness's own start.
    let restarted = Instant::now();
    let w = start(addr, dir.path());
    // beta is refused for a full lease + margin from the restart; alpha may renew at once.
    assert!(matches!(acquire(&w, 1, "beta"), Reply::Refuse { holder: Some(ref h), .. } if h == "alpha"));
    assert!(granted(&acquire(&w, 2, "alpha")));
    acquire_eventually(&w, "beta", Duration::from_secs(5));
    assert!(restarted.elapsed() >= LEASE + MARGIN);
}

#[test]
fn a_witness_that_lost_its_state_grants_nothing_for_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7452".parse().unwrap();
    let w = start(addr, dir.path());
    acquire_eventually(&w, "alpha", Duration::from_secs(5));
    drop(w);
    std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
    let restarted = Instant::now(); // before the spawn: never later than the witness's start
    let w = start(addr, dir.path());
    // Neither the old holder nor anyone else: the witness does not know who held it.
    assert!(matches!(acquire(&w, 1, "alpha"), Reply::Refuse { holder: None, .. }));
    assert!(matches!(acquire(&w, 2, "beta"), Reply::Refuse { holder: None, .. }));
    acquire_eventually(&w, "beta", Duration::from_secs(5));
    assert!(restarted.elapsed() >= LEASE + MARGIN);
    assert!(matches!(acquire(&w, 3, "alpha"), Reply::Refuse { holder: Some(ref h), .. } if h == "beta"));
}

#[test]
fn traffic_not_sealed_with_the_cluster_key_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.1:7456".parse().unwrap();
    let w = start(addr, dir.path());
    acquire_eventually(&w, "alpha", Duration::from_secs(5));
    let release = Request::Release { seq: 1_000, group: "web".into(), node: "alpha".into(), incarnation: 1 };
    let steal = Request::Acquire { seq: 1_000, group: "web".into(), node: "mallory".into(), incarnation: 1 };
    // Sealed with another key, or with the right key for another cluster: no answer.
    let other_key = takeover_agent::auth::Auth::with_key("w", &takeover_agent::auth::ClusterKey::generate());
    let other_cluster = takeover_agent::auth::Auth::with_key(
        "not-w",
        &takeover_agent::auth::keyfile::load(&dir.path().join("cluster.key")).unwrap(),
    );
    for auth in [&other_key, &other_cluster] {
        for req in [&release, &steal] {
            let answer = takeover_agent::witness::ask(addr, auth, req, Duration::from_millis(300)).unwrap();
            assert_eq!(answer, None, "the witness answered a forged {req:?}");
        }
    }
    // The plain text of a request, unsealed: no answer either.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&release.encode(), addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(socket.recv_from(&mut [0u8; 512]).is_err(), "the witness answered an unsealed release");
    // alpha still holds the group.
    assert!(matches!(acquire(&w, 5, "beta"), Reply::Refuse { holder: Some(ref h), .. } if h == "alpha"));
}

// ---- agents with a witness ----------------------------------------------------------

/// The agents' lease: guard.timeout (dead_after, 500 ms) + margin < 2 × lease / 3.
const AGENT_LEASE: Duration = Duration::from_secs(2);
const AGENT_MARGIN: Duration = Duration::from_millis(200);

/// The demo cluster (power-off fencing with `fence-local`) with `[witness]` on loopback
/// `port`, and the witness running.
async fn witnessed(port: u16, relay_link1: bool) -> (Bed, WitnessProcess) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let bed = Bed::with_spec(|spec| {
        spec.relay_link1 = relay_link1;
        spec.witness = Some(LocalWitness { address, lease: AGENT_LEASE, margin: AGENT_MARGIN });
    })
    .await;
    let witness = WitnessProcess::start(
        address,
        &bed.dir.join("witness"),
        (AGENT_LEASE, AGENT_MARGIN),
        "e2e",
        &bed.dir.join("cluster.key"),
    );
    (bed, witness)
}

fn has_event(status: &takeover_agent::api::StatusDoc, text: &str) -> bool {
    status.events.iter().any(|e| e.text.contains(text))
}

/// Checks for `window` that `node` neither runs the group's resources nor answers on its
/// service (its journal role may be SM: the peer was fenced; the witness gates the
/// resources).
async fn never_active(bed: &Bed, node: &str, window: Duration) {
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        if let Ok(status) = bed.cluster.status(node).await {
            let g = group(&status).unwrap();
            assert!(
                g.resources.iter().all(|r| r.state != "up"),
                "{node} runs the group without the witness's lease ({:?})\n{}",
                g.lease,
                bed.logs()
            );
        }
        assert!(
            http(bed.apps[node], "GET", "/", Vec::new()).await.is_err(),
            "{node}'s service answers without the witness's lease\n{}",
            bed.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_a_witness_a_group_runs_only_under_its_lease_and_moves_once_the_lease_expired() {
    let (mut bed, _witness) = witnessed(7453, false).await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    // A fresh witness grants nothing for lease + margin: alpha is M but its service
    // waits for the lease.
    let alpha = bed
        .cluster
        .wait_for("alpha", common::WAIT, "the service to run", |s| {
            group(s).is_some_and(|g| g.resources.iter().all(|r| r.state == "up"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", bed.logs()));
    let lease = group(&alpha).unwrap().lease.clone().unwrap_or_default();
    assert!(lease.starts_with("held for"), "alpha runs the group without holding its lease: {lease:?}");
    assert!(has_event(&alpha, "witness: granted the lease of group journal"), "{}", bed.logs());
    assert!(has_event(&alpha, "waits for the witness's lease before it starts"), "{}", bed.logs());
    let beta = bed.cluster.status("beta").await.unwrap();
    assert_eq!(group(&beta).unwrap().lease.as_deref(), Some("not held (not needed)"));
    // The metrics say the same.
    let metrics = bed.cluster.client("alpha").metrics().await.unwrap();
    assert!(metrics.contains("takeover_witness_lease_held{group=\"journal\"} 1"), "{metrics}");
    let metrics = bed.cluster.client("beta").metrics().await.unwrap();
    assert!(metrics.contains("takeover_witness_lease_held{group=\"journal\"} 0"), "{metrics}");

    let client = bed.client("lease");
    client.wait_acks(30, common::WAIT).await.unwrap();
    let killed = tokio::time::Instant::now();
    bed.cluster.kill_agent("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    let first = client.first_ack_after("beta", killed, common::WAIT).await.unwrap();
    let beta = bed.cluster.status("beta").await.unwrap();
    println!(
        "witness takeover: first acknowledgement from beta {} ms after kill -9 of alpha's agent (lease {AGENT_LEASE:?}, margin {AGENT_MARGIN:?})",
        (first - killed).as_millis()
    );
    assert!(has_event(&beta, "witness: granted the lease of group journal"), "{}", bed.logs());
    // alpha renewed every lease / 3 until the kill: its lease ran at the witness for at
    // least lease + margin after a renewal sent no earlier than lease / 3 before it.
    assert!(
        first - killed >= AGENT_LEASE * 2 / 3 + AGENT_MARGIN,
        "beta served {:?} after the kill, before alpha's lease can have expired",
        first - killed
    );
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn a_cut_off_active_stops_before_its_lease_ends_and_nobody_takes_over_without_the_witness() {
    let (mut bed, witness) = witnessed(7454, false).await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("cutoff");
    client.wait_acks(30, common::WAIT).await.unwrap();
    // The witness hangs: alpha's last request reached it before this instant, so the
    // witness's lease ends at most lease + margin from here; alpha's own view ends
    // 2 × margin earlier.
    let paused = tokio::time::Instant::now();
    witness.pause();
    let deadline = paused + AGENT_LEASE + AGENT_MARGIN;
    while http(bed.apps["alpha"], "GET", "/", Vec::new()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alpha still serves {:?} after the witness stopped answering: past its lease\n{}",
            paused.elapsed(),
            bed.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = paused.elapsed();
    println!(
        "cut-off active: alpha's service stopped {} ms after the witness stopped answering (lease {AGENT_LEASE:?}, margin {AGENT_MARGIN:?})",
        stopped.as_millis()
    );
    let log = std::fs::read_to_string(bed.dir.join("alpha.agent.log")).unwrap();
    assert!(log.contains("does not cover the guard's timeout"), "{}", bed.logs());
    // beta lost its peer but cannot get the lease: it never starts, for longer than a
    // whole lease.
    never_active(&bed, "beta", AGENT_LEASE + AGENT_MARGIN + Duration::from_secs(1)).await;
    // The witness is back: alpha's lease is over, beta gets the group.
    witness.resume();
    bed.wait_role("beta", "SM").await;
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn a_peer_the_active_went_on_without_waits_for_it_and_never_starts_from_its_old_copy() {
    let (mut bed, _witness) = witnessed(7457, true).await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("alone");
    client.wait_acks(30, common::WAIT).await.unwrap();
    // Partition: alpha fences beta (power-off) and acknowledges records beta never gets.
    bed.cluster.cut_link0(true);
    bed.cluster.cut_link1(true);
    let alpha = bed.wait_role("alpha", "SM").await;
    assert!(has_event(&alpha, "fence confirmed: beta"), "{}", bed.logs());
    client.wait_acks(client.acks() + 30, common::WAIT).await.unwrap();
    // Then alpha dies, and beta (fenced, now restarted) comes back: its copy is behind,
    // so it waits for alpha (the seed's priorities), although alpha's lease ran out and
    // the witness would grant it the group.
    bed.cluster.kill_agent("alpha").await.unwrap();
    bed.cluster.cut_link0(false);
    bed.cluster.cut_link1(false);
    if !bed.cluster.is_running("beta") {
        bed.cluster.start("beta", false).unwrap();
    }
    never_active(&bed, "beta", AGENT_LEASE + AGENT_MARGIN + Duration::from_secs(1)).await;
    // alpha comes back (the last processor continues); beta rejoins and catches up.
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}
