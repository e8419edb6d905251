//! Randomized end-to-end test: real agents on loopback, a client appending through the
//! service every 10 ms, and random power-offs (a node's whole session SIGKILLed), kill -9
//! of an agent alone, and restarts, at random moments. After each schedule the cluster
//! heals (every node started), and then:
//! - every record a client saw acknowledged is in the active node's journal;
//! - the service's own CLOCK_MONOTONIC start/ack records show no two instances serving
//!   at overlapping times.
//!
//! CI runs `TAKEOVER_RANDOM_SCHEDULES` schedules (default 20) within
//! `TAKEOVER_RANDOM_BUDGET_S` seconds (default 200). A longer run:
//! `TAKEOVER_RANDOM_SCHEDULES=200 TAKEOVER_RANDOM_BUDGET_S=100000 cargo test --release -p takeover --test random -- --nocapture`.
//! `TAKEOVER_RANDOM_SEED` fixes the first schedule's seed (printed on every run).

mod common;

use std::time::Duration;

use common::{Bed, Rng, env_u64, group};
use tokio::time::Instant;

#[tokio::test]
async fn random_kills_and_restarts_lose_no_acknowledged_record_and_never_overlap() {
    let schedules = env_u64("TAKEOVER_RANDOM_SCHEDULES", 20);
    let budget = Duration::from_secs(env_u64("TAKEOVER_RANDOM_BUDGET_S", 200));
    let clock_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_seed = env_u64("TAKEOVER_RANDOM_SEED", clock_seed);
    println!(
        "random schedules: first seed {first_seed} (rerun one with TAKEOVER_RANDOM_SEED=<seed> TAKEOVER_RANDOM_SCHEDULES=1)"
    );
    let started = Instant::now();
    let (mut ran, mut acked, mut faults) = (0, 0, 0);
    for k in 0..schedules {
        if ran >= 3 && started.elapsed() > budget {
            break;
        }
        let seed = first_seed + k;
        let (n_acked, n_faults) = run_schedule(seed).await;
        println!("schedule seed {seed}: {n_faults} faults, {n_acked} acknowledged, 0 lost, 0 overlaps");
        ran += 1;
        acked += n_acked;
        faults += n_faults;
    }
    println!(
        "schedules: {ran}, faults: {faults}, acknowledged: {acked}, violations: 0, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

async fn run_schedule(seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed);
    let mut bed = Bed::new().await;
    let nodes = ["alpha", "beta"];
    for node in nodes {
        bed.cluster.start(node, false).unwrap();
    }
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client(&format!("s{seed}"));
    client.wait_acks(10, common::WAIT).await.unwrap();
    let mut faults = 0;
    for _ in 0..12 {
        let node = nodes[rng.below(2) as usize];
        match rng.below(10) {
            0..=3 if bed.cluster.is_running(node) => {
                bed.cluster.power_off(node).await.unwrap();
                faults += 1;
            }
            4..=5 if bed.cluster.is_running(node) => {
                bed.cluster.kill_agent(node).await.unwrap();
                faults += 1;
            }
            0..=8 if !bed.cluster.is_running(node) => bed.cluster.start(node, false).unwrap(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(1200))).await;
    }
    // Heal: start whatever is down (a fence may take down a node that restarted quickly,
    // so keep starting) until the pair is formed again.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        for node in nodes {
            if !bed.cluster.is_running(node) {
                bed.cluster.start(node, false).unwrap();
            }
        }
        let (a, b) = (bed.role("alpha").await, bed.role("beta").await);
        if matches!((a.as_deref(), b.as_deref()), (Some("M"), Some("SL")) | (Some("SL"), Some("M"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the cluster did not heal: alpha {a:?}, beta {b:?}\n{}",
            bed.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .wait_acks(client.acks() + 10, common::WAIT)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e:#}\n{}", bed.logs()));
    for node in nodes {
        let status = bed.cluster.status(node).await.unwrap();
        let g = group(&status).unwrap();
        assert!(g.priority == 2 || g.priority == 3, "seed {seed}: after healing the pair holds priorities 2 and 3");
    }
    let acked = bed.check_nothing_lost(&client).await;
    drop(client);
    bed.cluster.shutdown().await;
    (acked, faults)
}
