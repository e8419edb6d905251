//! Fencing and partitions with real agents in network namespaces (issue 4; root only,
//! they run in CI). Each node has two links on two bridges; fencing powers a node off
//! (links down, every process of its namespace SIGKILLed) through the test bed's fence
//! agent, spoken to with the fence-agents stdin protocol; partitions are nftables rules.
//!
//! Every test judges from what clients saw (every acknowledged record must be in the
//! active node's journal) and from the service's own CLOCK_MONOTONIC records (no two
//! instances running at overlapping times), not from `status`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::netcluster::{Fencing, GROUP, NetCluster, journal_records, root_or_skip};
use takeover_agent::localnet::{AppClient, serving_overlaps};

/// Clusters run one at a time: they share two cores and their timing must stay honest.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(20);

async fn up(prefix: &str, slot: u8, fencing: Fencing) -> NetCluster {
    let mut c = NetCluster::create(prefix, slot, fencing);
    c.start("alpha");
    c.start("beta");
    c.wait_role("beta", "SL").await;
    c.wait_role("alpha", "M").await;
    c
}

/// Every acknowledged record is in `active`'s journal; no two service instances overlap.
async fn check_nothing_lost(c: &NetCluster, client: &AppClient, active: &str) -> usize {
    let acked = client.snapshot().acked;
    let held: BTreeSet<String> = journal_payloads(c, active).await;
    let lost: Vec<&String> = acked.keys().filter(|it| !held.contains(*it)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        c.logs()
    );
    let (_, overlaps) = serving_overlaps(&c.records()).expect("the service's records");
    assert_eq!(overlaps, 0, "two service instances ran at overlapping times\n{}", c.logs());
    acked.len()
}

async fn journal_payloads(c: &NetCluster, node: &str) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    let mut from = 1;
    loop {
        let page = c.api(node).read(GROUP, from, 10_000).await.expect("the journal");
        let Some(last) = page.records.last() else { break };
        from = last.index + 1;
        held.extend(page.records.iter().map(|r| String::from_utf8_lossy(&r.payload_bytes().unwrap()).into_owned()));
    }
    held
}

/// Waits for `n` acknowledgements, or panics with both agents' logs.
async fn more_acks(c: &NetCluster, client: &AppClient, n: usize) {
    if let Err(e) = client.wait_acks(n, WAIT).await {
        panic!("{e:#}\n{}", c.logs());
    }
}

fn events(status: &takeover_agent::api::StatusDoc) -> String {
    status.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn both_nodes_lose_each_other_at_once_exactly_one_survives() {
    if !root_or_skip("both_nodes_lose_each_other_at_once_exactly_one_survives") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut c = up("tpfull", 10, Fencing::PowerOff).await;
    let client = c.client("full");
    more_acks(&c, &client, 30).await;
    c.bed.partition_full("alpha", "beta").unwrap();
    // The M fences at once; the SL waits fence_delay: the M wins the race.
    c.wait_role("alpha", "SM").await;
    assert!(c.bed.pids("beta").unwrap().is_empty(), "beta was powered off\n{}", c.logs());
    assert!(c.running("alpha"), "exactly one survives: alpha");
    more_acks(&c, &client, client.acks() + 30).await;
    c.bed.heal().unwrap();
    c.power_on_and_start("beta");
    c.wait_role("beta", "SL").await;
    c.wait_role("alpha", "M").await;
    more_acks(&c, &client, client.acks() + 20).await;
    check_nothing_lost(&c, &client, "alpha").await;
}

#[tokio::test]
async fn one_way_partition_the_deaf_side_fences_and_exactly_one_serves() {
    if !root_or_skip("one_way_partition_the_deaf_side_fences_and_exactly_one_serves") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut c = up("tpone", 11, Fencing::PowerOff).await;
    let client = c.client("oneway");
    more_acks(&c, &client, 30).await;
    // beta hears nothing from alpha; alpha still hears beta.
    c.bed.partition_one_way("alpha", "beta").unwrap();
    c.wait_role("beta", "SM").await;
    assert!(c.bed.pids("alpha").unwrap().is_empty(), "alpha was fenced\n{}", c.logs());
    more_acks(&c, &client, client.acks() + 30).await;
    c.bed.heal().unwrap();
    c.power_on_and_start("alpha");
    c.wait_role("alpha", "SL").await;
    c.wait_role("beta", "M").await;
    check_nothing_lost(&c, &client, "beta").await;
}

#[tokio::test]
async fn one_link_of_two_down_no_takeover_and_the_channel_moves() {
    if !root_or_skip("one_link_of_two_down_no_takeover_and_the_channel_moves") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tplink", 12, Fencing::PowerOff).await;
    let client = c.client("link");
    more_acks(&c, &client, 30).await;
    c.bed.cut_link("alpha", 0).unwrap();
    let cut = tokio::time::Instant::now();
    let before = client.acks();
    while cut.elapsed() < Duration::from_secs(3) {
        assert_eq!(c.role("alpha").await.as_deref(), Some("M"), "alpha moved\n{}", c.logs());
        assert_eq!(c.role("beta").await.as_deref(), Some("SL"), "beta moved\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = c.status("alpha").await.unwrap();
    let peer = &status.peers[0];
    assert!(!peer.links[0].up && peer.links[1].up, "{peer:?}");
    assert_eq!(peer.channel_link, Some(1), "the peer channel moved to link 1");
    assert!(client.acks() > before + 50, "appends kept being replicated and acknowledged during the cut");
    c.bed.heal().unwrap();
    check_nothing_lost(&c, &client, "alpha").await;
}

#[tokio::test]
async fn paused_active_is_fenced_and_writes_nothing_after() {
    if !root_or_skip("paused_active_is_fenced_and_writes_nothing_after") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tppaus", 13, Fencing::PowerOff).await;
    let client = c.client("pause");
    more_acks(&c, &client, 30).await;
    c.pause("alpha", true);
    let written = journal_records(&c.journal_path("alpha")).len();
    c.wait_role("beta", "SM").await;
    // SIGCONT after the takeover: the fence's SIGKILL already ended every stopped process.
    c.pause("alpha", false);
    assert!(c.bed.pids("alpha").unwrap().is_empty(), "the paused node was powered off\n{}", c.logs());
    more_acks(&c, &client, client.acks() + 30).await;
    assert_eq!(
        journal_records(&c.journal_path("alpha")).len(),
        written,
        "the paused active wrote after it was taken over"
    );
    check_nothing_lost(&c, &client, "beta").await;
}

#[tokio::test]
async fn paused_active_woken_after_a_lying_fence_stops_before_writing() {
    if !root_or_skip("paused_active_woken_after_a_lying_fence_stops_before_writing") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tplie", 14, Fencing::Lying).await;
    let client = c.client("lie");
    more_acks(&c, &client, 30).await;
    let old_epoch = c.status("alpha").await.unwrap().groups[0].epoch.clone();
    c.pause("alpha", true);
    let before = journal_records(&c.journal_path("alpha")).len() as u64;
    // The fence "confirms" without stopping anything: beta takes over with a newer epoch.
    c.wait_role("beta", "SM").await;
    more_acks(&c, &client, client.acks() + 30).await;
    c.pause("alpha", false);
    // Woken, alpha hears beta's newer generation and stops being active.
    c.wait_for("alpha", WAIT, "alpha to yield", |s| s.groups[0].role == "SL" || s.groups[0].role == "X").await;
    let status = c.status("alpha").await.unwrap();
    assert!(events(&status).contains("newer than this node's"), "the yield is reported\n{}", events(&status));
    // Nothing of alpha's old epoch was written after the pause.
    let records = c.api("alpha").read(GROUP, 1, 100_000).await.unwrap().records;
    let late: Vec<u64> = records.iter().filter(|r| r.epoch == old_epoch && r.index > before).map(|r| r.index).collect();
    assert!(late.is_empty(), "alpha wrote records {late:?} of its old epoch {old_epoch} after waking");
    c.wait_role("alpha", "SL").await;
    c.wait_role("beta", "M").await;
    let acked = client.snapshot().acked;
    let held = journal_payloads(&c, "beta").await;
    assert!(acked.keys().all(|it| held.contains(it)), "an acknowledged record is missing\n{}", c.logs());
}

#[tokio::test]
async fn fence_failing_then_the_next_level_succeeding_takes_over() {
    if !root_or_skip("fence_failing_then_the_next_level_succeeding_takes_over") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tplevl", 15, Fencing::FailThenPowerOff).await;
    let client = c.client("level");
    more_acks(&c, &client, 30).await;
    c.pause("alpha", true);
    c.wait_role("beta", "SM").await;
    let status = c.status("beta").await.unwrap();
    let text = events(&status);
    assert!(
        text.contains("level 1") && text.contains("off failed") && text.contains("confirmed off by level 2"),
        "{text}"
    );
    assert!(c.bed.pids("alpha").unwrap().is_empty(), "level 2 powered alpha off");
    more_acks(&c, &client, client.acks() + 20).await;
    check_nothing_lost(&c, &client, "beta").await;
}

#[tokio::test]
async fn fence_failing_on_every_level_means_no_takeover_and_an_alarm() {
    if !root_or_skip("fence_failing_on_every_level_means_no_takeover_and_an_alarm") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tpfail", 16, Fencing::AllFail).await;
    let client = c.client("fail");
    more_acks(&c, &client, 30).await;
    c.pause("alpha", true);
    c.wait_for("beta", WAIT, "the fence alarm", |s| events(s).contains("ALARM: fence FAILED on every level")).await;
    // Several failed rounds later, beta still has not taken over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = c.status("beta").await.unwrap();
    assert_eq!(status.groups[0].role, "SL", "no takeover without a confirmed fence\n{}", events(&status));
    assert!(
        status.groups[0].resources.iter().all(|it| it.state == "down"),
        "beta's service must not run: {:?}",
        status.groups[0].resources
    );
    // alpha comes back: nothing was done, it is trusted again, and service resumes.
    c.pause("alpha", false);
    c.wait_role("alpha", "M").await;
    c.wait_role("beta", "SL").await;
    more_acks(&c, &client, client.acks() + 20).await;
    check_nothing_lost(&c, &client, "alpha").await;
}

#[tokio::test]
async fn one_link_flapping_no_takeover() {
    if !root_or_skip("one_link_flapping_no_takeover") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = up("tpflap", 17, Fencing::PowerOff).await;
    let client = c.client("flap");
    more_acks(&c, &client, 30).await;
    // Link 0 of alpha is cut for 600 ms (longer than dead_after: the link is declared
    // dead) then restored for 600 ms, for 4 s: link 1 carries everything meanwhile.
    c.bed.flap_link("alpha", 0, Duration::from_millis(1200), Duration::from_secs(4)).unwrap();
    let start = tokio::time::Instant::now();
    let before = client.acks();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(c.role("alpha").await.as_deref(), Some("M"), "alpha moved\n{}", c.logs());
        assert_eq!(c.role("beta").await.as_deref(), Some("SL"), "beta moved\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = events(&c.status("alpha").await.unwrap());
    assert!(text.contains("WARNING: link 0 to beta is silent"), "the flapping link is seen going down\n{text}");
    assert!(client.acks() > before + 100, "appends kept being acknowledged while the link flapped");
    c.bed.heal().unwrap();
    check_nothing_lost(&c, &client, "alpha").await;
}

#[tokio::test]
async fn the_active_losing_every_link_of_its_own_does_not_fence_its_peer() {
    if !root_or_skip("the_active_losing_every_link_of_its_own_does_not_fence_its_peer") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut c = up("tpiso", 18, Fencing::PowerOff).await;
    let client = c.client("isolated");
    more_acks(&c, &client, 30).await;
    // alpha's own interfaces go down (a dead NIC, a pulled cable). The active fences at
    // once in a partition, so without the check it would power off the healthy beta and
    // then serve nobody.
    for ifname in ["eth0", "eth1"] {
        c.bed.exec("alpha", &["ip", "link", "set", "dev", ifname, "down"]).unwrap();
    }
    c.wait_role("beta", "SM").await;
    assert!(c.bed.pids("alpha").unwrap().is_empty(), "beta fenced alpha\n{}", c.logs());
    assert!(c.bed.is_powered_on("beta").unwrap(), "alpha fenced beta\n{}", c.logs());
    let log = std::fs::read_to_string(c.dir.join("alpha.agent.log")).unwrap();
    assert!(log.contains("not fencing beta: every link of this node is down"), "{}", c.logs());
    more_acks(&c, &client, client.acks() + 30).await;
    c.power_on_and_start("alpha");
    c.wait_role("alpha", "SL").await;
    c.wait_role("beta", "M").await;
    check_nothing_lost(&c, &client, "beta").await;
}
