//! End-to-end tests of the seed's operations with real `takeover agent` processes on
//! loopback: real heartbeats over two links, a real peer channel, real fsync'ed state and
//! journals, the real sample service, power-off by SIGKILL of a node's whole session, and
//! kill -9 of the agent alone. No root needed.
//!
//! Every test judges safety from what clients and the service itself saw: every
//! acknowledged record must be in the active node's journal, and the service's own
//! CLOCK_MONOTONIC records must show no two instances serving at overlapping times.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{Bed, group};
use takeover_agent::api::StatusDoc;
use takeover_agent::auth::{Auth, ClusterKey, HeartbeatSealer};
use takeover_agent::localnet::{FrameAttack, LocalAuth};
use takeover_core::{Incarnation, NodeId};
use tokio::time::Instant;

#[tokio::test]
async fn seed_op4_master_powered_off_sl_takes_over_without_losing_acknowledged_records() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("op4");
    client.wait_acks(40, common::WAIT).await.unwrap();
    let killed = Instant::now();
    bed.cluster.power_off("alpha").await.unwrap();
    let status = bed.wait_role("beta", "SM").await;
    let first = client.first_ack_after("beta", killed, common::WAIT).await.unwrap();
    println!("takeover: first acknowledgement from beta {} ms after the power-off", (first - killed).as_millis());
    let g = group(&status).unwrap();
    assert_eq!(g.priority, 1, "an SM holds priority 1 durably");
    assert!(
        status.events.iter().any(|e| e.text.contains("fence confirmed: alpha confirmed off")),
        "takeover only after the fence"
    );
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn seed_op4_agent_killed_alone_its_service_dies_with_it_and_the_sl_takes_over() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("kill9");
    client.wait_acks(30, common::WAIT).await.unwrap();
    let alpha_app = bed.apps["alpha"];
    bed.cluster.kill_agent("alpha").await.unwrap();
    // The service dies with its agent (PR_SET_PDEATHSIG): its port stops answering.
    let deadline = Instant::now() + Duration::from_secs(5);
    while takeover_agent::localnet::http(alpha_app, "GET", "/", Vec::new()).await.is_ok() {
        assert!(Instant::now() < deadline, "alpha's service still answers after its agent was killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bed.wait_role("beta", "SM").await;
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn seed_op3_failed_node_returns_as_sl_catches_up_and_active_becomes_m() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("op3");
    client.wait_acks(20, common::WAIT).await.unwrap();
    bed.cluster.power_off("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    client.wait_acks(client.acks() + 50, common::WAIT).await.unwrap();
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_pair("beta", "alpha").await;
    // beta (the M) first: what it counts as durable on the SL then is on alpha when alpha
    // is read after it (read the other way round, appends in between made it flaky).
    let beta = bed.cluster.status("beta").await.unwrap();
    let alpha = bed.cluster.status("alpha").await.unwrap();
    let (a, b) = (group(&alpha).unwrap(), group(&beta).unwrap());
    assert_eq!((a.priority, b.priority), (3, 2), "SL holds 3, M holds 2 (F0.3)");
    assert!(a.journal.last_index >= b.journal.sl_durable.unwrap_or(0), "the SL holds what the M counts as durable");
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn seed_op1_both_down_then_both_recover_in_each_order_the_last_processor_continues() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("op1");
    client.wait_acks(20, common::WAIT).await.unwrap();
    // Make beta the last processor: alpha fails, beta takes over and acknowledges alone.
    bed.cluster.power_off("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    client.wait_acks(client.acks() + 30, common::WAIT).await.unwrap();
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_pair("beta", "alpha").await;
    for first in ["alpha", "beta"] {
        let second = if first == "alpha" { "beta" } else { "alpha" };
        bed.cluster.power_off("alpha").await.unwrap();
        bed.cluster.power_off("beta").await.unwrap();
        bed.cluster.start(first, false).unwrap();
        // (X X) with priorities [3 2]: whoever comes first alone waits (F0.4).
        bed.wait_waiting(first).await;
        bed.cluster.start(second, false).unwrap();
        bed.wait_pair("beta", "alpha").await;
        client.wait_acks(client.acks() + 10, common::WAIT).await.unwrap();
    }
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn seed_op2_one_node_recovers_alone_and_starts_only_with_priority_1() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("op2");
    client.wait_acks(20, common::WAIT).await.unwrap();
    // The SL fails first: alpha continues alone as SM (priority 1), then fails too.
    bed.cluster.power_off("beta").await.unwrap();
    bed.wait_role("alpha", "SM").await;
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    bed.cluster.power_off("alpha").await.unwrap();
    // beta alone holds priority 3: it must wait, even well past its startup wait.
    bed.cluster.start("beta", false).unwrap();
    let status = bed.wait_waiting("beta").await;
    assert_eq!(group(&status).unwrap().priority, 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.role("beta").await.as_deref(), Some("X"), "a node alone with priority 3 must not start");
    bed.cluster.power_off("beta").await.unwrap();
    // alpha alone holds priority 1: it processed last and starts after its startup wait.
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_role("alpha", "SM").await;
    client.wait_acks(client.acks() + 10, common::WAIT).await.unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    bed.check_nothing_lost(&client).await;
}

#[tokio::test]
async fn one_link_of_two_lost_warns_and_moves_the_channel_without_takeover() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("link");
    client.wait_acks(20, common::WAIT).await.unwrap();
    bed.cluster.cut_link0(true);
    let cut = Instant::now();
    let before = client.acks();
    while cut.elapsed() < Duration::from_secs(3) {
        assert_eq!(bed.role("alpha").await.as_deref(), Some("M"), "alpha moved while one link was cut");
        assert_eq!(bed.role("beta").await.as_deref(), Some("SL"), "beta moved while one link was cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = bed.cluster.status("alpha").await.unwrap();
    let peer = &status.peers[0];
    assert!(!peer.links[0].up && peer.links[1].up, "link 0 down, link 1 up: {peer:?}");
    assert_eq!(peer.channel_link, Some(1), "the peer channel moved to link 1");
    assert!(
        status.events.iter().any(|e| e.text.contains("WARNING: link 0 to beta is silent")),
        "the loss of one link is reported"
    );
    assert!(client.acks() > before + 50, "appends kept being acknowledged (replicated) during the cut");
    bed.cluster.cut_link0(false);
    bed.cluster.wait_for("alpha", common::WAIT, "link 0 back", |s| s.peers[0].links[0].up).await.unwrap();
    bed.check_nothing_lost(&client).await;
    bed.cluster.shutdown().await;
}

#[tokio::test]
async fn malformed_heartbeats_and_frames_are_dropped_and_counted_never_acted_on() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let target = bed.cluster.node("beta").links[1];
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for n in 0..50u8 {
        let mut junk = vec![n; 40];
        junk[..4].copy_from_slice(b"TKHB");
        udp.send_to(&junk, target).await.unwrap();
        udp.send_to(b"hello", target).await.unwrap();
    }
    // A TCP client that sends garbage instead of a handshake.
    for _ in 0..5 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = stream.write_all(&[0xff; 64]).await;
    }
    let status = bed
        .cluster
        .wait_for("beta", common::WAIT, "the junk to be counted", |s| s.dropped.heartbeats >= 100)
        .await
        .unwrap();
    assert!(status.dropped.frames >= 1, "bad handshakes are counted: {:?}", status.dropped);
    assert!(status.dropped.malformed >= 101, "counted as malformed: {:?}", status.dropped);
    assert_eq!(group(&status).unwrap().role, "SL");
    assert_eq!(bed.role("alpha").await.as_deref(), Some("M"));
}

/// Polls both nodes until stopped and keeps every moment a role was not the expected one.
fn watch_roles(
    bed: &Bed,
    expect: [(&'static str, &'static str); 2],
) -> (tokio::task::JoinHandle<Vec<String>>, Arc<std::sync::atomic::AtomicBool>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = expect.iter().map(|(node, role)| (*node, *role, bed.cluster.client(node))).collect();
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut wrong = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            for (node, role, client) in &clients {
                if let Ok(status) = client.status().await {
                    let now = group(&status).map(|g| g.role.clone());
                    if now.as_deref() != Some(*role) {
                        wrong.push(format!("{node} was {now:?}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wrong
    });
    (task, stop)
}

async fn wait_dropped(bed: &Bed, node: &str, what: &str, pred: impl Fn(&StatusDoc) -> bool) -> StatusDoc {
    bed.cluster.wait_for(node, common::WAIT, what, pred).await.unwrap_or_else(|e| panic!("{e:#}\n{}", bed.logs()))
}

#[tokio::test]
async fn forged_replayed_and_corrupted_traffic_is_dropped_counted_by_reason_and_never_acted_on() {
    // Both links through relays: the tap is on path whichever link carries the channel.
    let mut bed = Bed::with(LocalAuth::GeneratedKey, true).await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("attack");
    client.wait_acks(20, common::WAIT).await.unwrap();
    // The relay of link 0 (an on-path attacker) records heartbeats and channel frames
    // (alpha, the M, dials beta: records one way, acknowledgements the other).
    bed.cluster.tap().record(true);
    let beta = bed.cluster.node("beta").clone();
    let deadline = Instant::now() + common::WAIT;
    while bed.cluster.tap().datagrams_to(beta.links[0]).len() < 20 {
        assert!(Instant::now() < deadline, "the tap recorded no heartbeats");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (alpha0, beta0) = (bed.cluster.status("alpha").await.unwrap(), bed.cluster.status("beta").await.unwrap());
    assert_eq!((alpha0.auth.as_str(), beta0.auth.as_str()), ("chacha20-poly1305", "chacha20-poly1305"));
    let alpha_inc = alpha0.incarnation;
    let (watcher, stop) = watch_roles(&bed, [("alpha", "M"), ("beta", "SL")]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // 1. Forged heartbeats: "alpha restarted" (a newer incarnation), which would let beta
    //    take over without a fence if it were believed, sealed under another key.
    let forger = Arc::new(Auth::with_key("e2e", &ClusterKey::generate()));
    let mut forged = HeartbeatSealer::new(forger.clone(), NodeId(0), Incarnation(alpha_inc + 1), 42);
    for _ in 0..30 {
        for link in 0..2u8 {
            udp.send_to(&forged.seal(link, NodeId(1), 0), beta.links[usize::from(link)]).await.unwrap();
        }
    }
    // From a node that is not in the configuration.
    let mut stranger = HeartbeatSealer::new(forger, NodeId(7), Incarnation(1), 43);
    for _ in 0..10 {
        udp.send_to(&stranger.seal(1, NodeId(1), 0), beta.links[1]).await.unwrap();
    }
    wait_dropped(&bed, "beta", "the forged heartbeats to be counted", |s| {
        s.dropped.bad_tag >= 60 && s.dropped.unknown_sender >= 10
    })
    .await;
    // The network task counts at once and reports through the event loop, which may
    // answer a status call first: wait for the report.
    bed.cluster
        .wait_for("beta", common::WAIT, "the first bad tag reported in the events", |s| {
            s.events.iter().any(|e| e.text.contains("WARNING: dropped a heartbeat from") && e.text.contains("bad_tag"))
        })
        .await
        .unwrap();

    // 2. Replayed heartbeats: alpha's real ones, recorded on link 0, sent again to link 0
    //    (replays) and to link 1 (not for that link).
    let recorded = bed.cluster.tap().datagrams_to(beta.links[0]);
    assert!(recorded.len() >= 20, "the tap recorded alpha's heartbeats: {}", recorded.len());
    for datagram in &recorded {
        udp.send_to(datagram, beta.links[0]).await.unwrap();
        udp.send_to(datagram, beta.links[1]).await.unwrap();
    }
    let n = recorded.len() as u64;
    wait_dropped(&bed, "beta", "the replayed heartbeats to be counted", |s| {
        s.dropped.replay >= n && s.dropped.foreign >= n
    })
    .await;

    // 3. A corrupted frame on the live channel: refused, and the connection closes (a
    //    message is missing); the channel comes back and replication goes on.
    let before = bed.cluster.status("beta").await.unwrap().dropped;
    bed.cluster.tap().arm(FrameAttack::Corrupt);
    wait_dropped(&bed, "beta", "the corrupted frame to be counted", |s| {
        s.dropped.frames > before.frames && s.dropped.bad_tag > before.bad_tag
    })
    .await;
    client.wait_acks(client.acks() + 30, common::WAIT).await.unwrap();

    // 4. Frames replayed into the live channel: skipped, and the connection goes on.
    for attack in [FrameAttack::Duplicate, FrameAttack::ReplayEarlier] {
        let before = bed.cluster.status("beta").await.unwrap().dropped;
        let done = bed.cluster.tap().attacks_done();
        bed.cluster.tap().arm(attack);
        wait_dropped(&bed, "beta", "the replayed frame to be counted", |s| s.dropped.replay > before.replay).await;
        assert_eq!(bed.cluster.tap().attacks_done(), done + 1);
        client.wait_acks(client.acks() + 10, common::WAIT).await.unwrap();
    }

    // 5. A recorded connection (alpha's Hello, Confirm and frames) replayed to beta on a
    //    new connection: it fails at its Confirm, bound to beta's fresh nonce.
    let frames = bed.cluster.tap().frames();
    let conn = frames
        .iter()
        .find(|it| it.to_acceptor && it.kind == takeover_agent::wire::FrameKind::Hello)
        .map(|it| it.conn)
        .expect("a recorded connection (the one after the corrupted frame)");
    let stream: Vec<u8> =
        frames.iter().filter(|it| it.conn == conn && it.to_acceptor).flat_map(|it| it.bytes.clone()).collect();
    let before = bed.cluster.status("beta").await.unwrap().dropped;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut replay = tokio::net::TcpStream::connect(beta.links[0]).await.unwrap();
        let _ = replay.write_all(&stream).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(common::WAIT, replay.read_to_end(&mut sink)).await;
    }
    wait_dropped(&bed, "beta", "the replayed connection to be counted", |s| s.dropped.bad_tag > before.bad_tag).await;

    // Nothing moved: the roles held at every poll, no fence, no restart believed.
    client.wait_acks(client.acks() + 20, common::WAIT).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let wrong = watcher.await.unwrap();
    assert!(wrong.is_empty(), "a role changed during the attacks: {wrong:?}\n{}", bed.logs());
    let (alpha1, beta1) = (bed.cluster.status("alpha").await.unwrap(), bed.cluster.status("beta").await.unwrap());
    assert_eq!(beta1.peers[0].incarnation, Some(alpha_inc), "beta still sees alpha's real run");
    assert_eq!(alpha1.incarnation, alpha_inc);
    for (before, after) in [(&alpha0, &alpha1), (&beta0, &beta1)] {
        let since = before.events.last().map_or(0, |it| it.seq);
        for event in after.events.iter().filter(|it| it.seq > since) {
            let text = &event.text;
            assert!(
                !text.contains("fencing")
                    && !text.contains("fence of")
                    && !text.contains("restarted")
                    && !text.contains(" → "),
                "{}: unexpected event {text:?}",
                after.node
            );
        }
    }
    println!("beta dropped: {:?}", beta1.dropped);
    let render = std::process::Command::new(&bed.cluster.binary)
        .args(["status", "--api"])
        .arg(&bed.cluster.node("beta").api)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&render.stdout);
    println!("{text}");
    assert!(text.contains("bad tag (wrong key, forged or corrupted)") && text.contains(" replay"), "{text}");
    bed.check_nothing_lost(&client).await;
    bed.cluster.shutdown().await;
}

#[tokio::test]
async fn keygen_writes_a_private_key_and_an_agent_refuses_a_readable_one() {
    let bed = Bed::new().await;
    let binary = &bed.cluster.binary;
    let key = bed.dir.join("new/cluster.key");
    let run = |args: &[&str]| std::process::Command::new(binary).args(args).output().unwrap();
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Copy it to every node"));
    let first = std::fs::read(&key).unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --force to replace it"));
    assert_eq!(std::fs::read(&key).unwrap(), first, "not overwritten without --force");
    let out = run(&["keygen", "--out", key.to_str().unwrap(), "--force"]);
    assert!(out.status.success());
    assert_ne!(std::fs::read(&key).unwrap(), first);

    // The cluster's own key, made readable by its group: refused by `config check` and by
    // the agent, which then writes nothing.
    let cluster_key = bed.dir.join("cluster.key");
    std::fs::set_permissions(&cluster_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = bed.cluster.config.to_str().unwrap();
    let fix = format!("run `chmod 600 {}`", cluster_key.display());
    let out = run(&["config", "check", config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&fix), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["agent", "--config", config, "--node", "alpha"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&fix), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!bed.dir.join("alpha/node.state").exists(), "nothing was written");
    std::fs::set_permissions(&cluster_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["config", "check", config]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("auth chacha20-poly1305 with the key in"));
}

#[tokio::test]
async fn an_unauthenticated_test_cluster_runs_only_when_written_and_says_so() {
    let mut bed = Bed::with_auth(LocalAuth::None).await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let status = bed.cluster.status("alpha").await.unwrap();
    assert_eq!(status.auth, "none");
    assert!(status.events.iter().any(|e| e.text.contains("WARNING: auth = \"none\"")), "{:?}", status.events);
    bed.cluster.shutdown().await;
}

#[tokio::test]
async fn the_demo_runs_and_reports_nothing_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let _turn = common::turn().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().find(|it| it.starts_with("demo: ") && it.contains("records acknowledged")).unwrap();
    assert!(last.contains(", 0 lost,"), "{last}");
}

#[tokio::test]
async fn a_second_agent_for_a_running_node_is_refused_and_the_first_keeps_running() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let before = bed.cluster.status("alpha").await.unwrap();
    // The same command again (an operator's mistake, or a second unit for the node).
    let second = tokio::process::Command::new(&bed.cluster.binary)
        .args(["agent", "--config"])
        .arg(&bed.cluster.config)
        .args(["--node", "alpha"])
        .output();
    let out = tokio::time::timeout(common::WAIT, second).await.expect("the second agent exits").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second agent ran: {stderr}");
    let pidfile = std::fs::read_to_string(bed.dir.join("alpha/agent.pid")).expect("alpha's pid file");
    let pid = pidfile.split_whitespace().next().expect("a pid");
    assert!(
        stderr.contains(&format!("another takeover agent (pid {pid}) already runs with the state directory")),
        "{stderr}"
    );
    // The first one never noticed: same incarnation, same role, API answering.
    assert!(bed.cluster.is_running("alpha"));
    let after = bed.cluster.status("alpha").await.unwrap();
    assert_eq!(after.incarnation, before.incarnation);
    assert_eq!(group(&after).unwrap().role, "M");
}

/// The samples of a Prometheus text page, `name{labels}` → value; panics (with the line)
/// on anything that is not a comment, a sample of a declared family, or blank.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut families = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "unknown type: {line}");
            families.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty(),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels: {line:?}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|it| families.contains(*it)))
            .unwrap_or(name);
        assert!(families.contains(family), "sample of an undeclared family: {line:?}");
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series: {line:?}");
    }
    samples
}

async fn metrics_of(bed: &Bed, node: &str) -> std::collections::BTreeMap<String, f64> {
    let text = bed.cluster.client(node).metrics().await.unwrap();
    parse_metrics(&text)
}

#[tokio::test]
async fn metrics_parse_and_count_a_takeover_with_its_duration() {
    let mut bed = Bed::new().await;
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let client = bed.client("metrics");
    client.wait_acks(20, common::WAIT).await.unwrap();
    let g = common::GROUP;
    let alpha = metrics_of(&bed, "alpha").await;
    assert_eq!(alpha[&format!("takeover_group_role{{group=\"{g}\",role=\"M\"}}")], 1.0);
    assert_eq!(alpha[&format!("takeover_group_role{{group=\"{g}\",role=\"SL\"}}")], 0.0);
    assert_eq!(alpha[&format!("takeover_peer_state{{group=\"{g}\",peer=\"beta\",state=\"up\"}}")], 1.0);
    assert_eq!(alpha["takeover_link_up{peer=\"beta\",link=\"0\"}"], 1.0);
    assert_eq!(alpha["takeover_link_up{peer=\"beta\",link=\"1\"}"], 1.0);
    assert!(alpha[&format!("takeover_append_latency_seconds_count{{group=\"{g}\"}}")] >= 20.0, "{alpha:?}");
    assert!(alpha.contains_key(&format!("takeover_journal_lag_records{{group=\"{g}\"}}")));
    assert!(alpha.contains_key(&format!("takeover_journal_lag_bytes{{group=\"{g}\"}}")));
    assert!(alpha["takeover_heartbeat_gap_seconds_count{peer=\"beta\",link=\"0\"}"] > 0.0);
    let channel = bed.cluster.status("alpha").await.unwrap().peers[0].channel_link.unwrap();
    let rtt = alpha[&format!("takeover_channel_rtt_seconds{{peer=\"beta\",link=\"{channel}\"}}")];
    assert!(rtt > 0.0 && rtt < 1.0, "loopback round trip {rtt} s");
    let beta = metrics_of(&bed, "beta").await;
    assert_eq!(beta[&format!("takeover_group_role{{group=\"{g}\",role=\"SL\"}}")], 1.0);
    assert_eq!(beta[&format!("takeover_takeovers_total{{group=\"{g}\"}}")], 0.0);
    assert!(beta.contains_key(&format!("takeover_journal_lag_records{{group=\"{g}\"}}")), "an SL knows its lag");

    bed.cluster.power_off("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    // The takeover is counted when its timeline ends (the service up and verified).
    let deadline = Instant::now() + common::WAIT;
    let beta = loop {
        let beta = metrics_of(&bed, "beta").await;
        if beta[&format!("takeover_takeovers_total{{group=\"{g}\"}}")] == 1.0 {
            break beta;
        }
        assert!(Instant::now() < deadline, "the takeover was not counted: {beta:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = format!("takeover_move_duration_seconds_count{{group=\"{g}\",what=\"takeover\",outcome=\"done\"}}");
    let sum = format!("takeover_move_duration_seconds_sum{{group=\"{g}\",what=\"takeover\",outcome=\"done\"}}");
    assert_eq!(beta[&count], 1.0, "{beta:?}");
    assert!(beta[&sum] > 0.0 && beta[&sum] < 20.0, "a takeover of {} s", beta[&sum]);
    assert_eq!(beta[&format!("takeover_group_role{{group=\"{g}\",role=\"SM\"}}")], 1.0);
    assert_eq!(beta[&format!("takeover_peer_state{{group=\"{g}\",peer=\"alpha\",state=\"up\"}}")], 0.0);
    assert_eq!(beta["takeover_peer_alive{peer=\"alpha\"}"], 0.0);
    assert_eq!(beta["takeover_link_up{peer=\"alpha\",link=\"0\"}"], 0.0);
    assert!(beta["takeover_fence_actions_total{peer=\"alpha\",outcome=\"confirmed\"}"] >= 1.0, "{beta:?}");
    assert!(beta["takeover_events_total"] > 0.0);
    client.wait_acks(client.acks() + 10, common::WAIT).await.unwrap();
    bed.check_nothing_lost(&client).await;
    bed.cluster.shutdown().await;
}

#[tokio::test]
async fn events_survive_a_restart_are_bounded_and_takeover_events_prints_and_follows_them() {
    let mut bed = Bed::new().await;
    bed.cluster.agent_env.push(("TAKEOVER_EVENT_HISTORY".into(), "40".into()));
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let g = common::GROUP;
    let api = bed.cluster.client("alpha");
    let first = api.events(0, 1000, 0).await.unwrap();
    assert_eq!(first.node, "alpha");
    assert!(first.events.windows(2).all(|w| w[0].seq < w[1].seq), "numbered in order");
    assert!(
        first.events.iter().any(|e| e.kind == "transition" && e.group.as_deref() == Some(g) && e.text.contains("→ ")),
        "{:?}",
        first.events
    );
    assert!(first.events.iter().any(|e| e.kind == "link"), "{:?}", first.events);
    let run1 = bed.cluster.status("alpha").await.unwrap().incarnation;

    // Operator commands are events; enough of them to go past the bound.
    for _ in 0..30 {
        api.cleanup(g).await.unwrap();
    }
    let events = api.events(0, 1000, 0).await.unwrap();
    assert!(events.newest > 50, "{}", events.newest);
    assert_eq!(events.events.len(), 40, "the history keeps the newest 40");
    assert_eq!(events.events.last().unwrap().seq, events.newest);
    let operator = events.events.iter().filter(|e| e.kind == "operator" && e.group.as_deref() == Some(g)).count();
    assert!(operator >= 15, "{:?}", events.events);
    let file = bed.dir.join("alpha").join("events.jsonl");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!((40..=80).contains(&lines), "the file holds 40..=80 events, not {lines}");

    // Restarted, the node keeps its history and numbers on from it.
    bed.cluster.power_off("alpha").await.unwrap();
    bed.wait_role("beta", "SM").await;
    bed.cluster.start("alpha", false).unwrap();
    bed.wait_pair("beta", "alpha").await;
    let after = api.events(0, 1000, 0).await.unwrap();
    assert!(after.events.len() <= 40);
    assert!(after.events.iter().any(|e| e.incarnation == run1), "events of the first run are kept");
    let run2 = bed.cluster.status("alpha").await.unwrap().incarnation;
    let new: Vec<_> = after.events.iter().filter(|e| e.incarnation == run2).collect();
    assert!(!new.is_empty() && new[0].seq > events.newest, "numbering continues across the restart");
    assert!(new.iter().any(|e| e.kind == "transition" && e.text.contains("SL")), "alpha rejoined as SL: {new:?}");

    // `takeover events` prints them, one per line, the newest last.
    let sock = bed.cluster.node("alpha").api.clone();
    let out = std::process::Command::new(&bed.cluster.binary)
        .args(["events", "-n", "5", "--api"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let newest = api.events(0, 1, 0).await.unwrap().events.pop().unwrap();
    assert!(lines[4].contains(&format!("#{}", newest.seq)) || lines.iter().any(|l| l.contains(&newest.text)), "{text}");
    let out = std::process::Command::new(&bed.cluster.binary)
        .args(["events", "--json", "-n", "3", "--api"])
        .arg(&sock)
        .output()
        .unwrap();
    let parsed: Vec<takeover_agent::api::EventDoc> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(parsed.len(), 3);

    // --follow prints a new event as it happens.
    let mut follow = tokio::process::Command::new(&bed.cluster.binary)
        .args(["events", "--follow", "-n", "1", "--api"])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    // The first line is the newest event so far; then the cleanup's.
    let first_line = tokio::time::timeout(common::WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first_line.contains(&format!("#{}", newest.seq)), "{first_line}");
    api.cleanup(g).await.unwrap();
    let deadline = Instant::now() + common::WAIT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("the followed event").unwrap();
        let line = line.expect("takeover events --follow ended");
        if line.contains("group journal: failure counts cleared by the operator") {
            break;
        }
    }
    follow.kill().await.unwrap();

    // With the agent stopped, `takeover events` reads the history from its state directory.
    bed.cluster.power_off("alpha").await.unwrap();
    let on_disk: Vec<takeover_agent::api::EventDoc> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last3 = &on_disk[on_disk.len() - 3..];
    assert!(last3[2].seq > newest.seq, "the history on disk holds the followed events too");
    let out = std::process::Command::new(&bed.cluster.binary)
        .args(["events", "-n", "3", "--config"])
        .arg(&bed.cluster.config)
        .args(["--node", "alpha"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("events.jsonl"), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    for (line, event) in text.lines().zip(last3) {
        assert!(line.contains(&format!("#{} ", event.seq)) && line.ends_with(&event.text), "{line} / {event:?}");
    }
    bed.cluster.shutdown().await;
}

#[tokio::test]
async fn the_tcp_listener_needs_its_token_and_every_error_is_json() {
    let mut bed = Bed::new().await;
    // alpha also serves its API on TCP, with a token.
    let port = takeover_agent::localnet::free_loopback_port().unwrap();
    let token = "s3cret-token-for-the-test-0123456789";
    let token_file = bed.dir.join("api.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&bed.cluster.config).unwrap();
    let config = config.replacen(
        "name = \"alpha\"\n",
        &format!(
            "name = \"alpha\"\napi_listen = \"127.0.0.1:{port}\"\napi_token_file = {:?}\n",
            token_file.display().to_string()
        ),
        1,
    );
    std::fs::write(&bed.cluster.config, config).unwrap();
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let addr = format!("127.0.0.1:{port}");
    let error_of = |body: &[u8]| -> String {
        let doc: takeover_agent::api::ErrorDoc = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not a JSON error ({e}): {}", String::from_utf8_lossy(body)));
        doc.error
    };

    // No token, a wrong one: 401 with a JSON error that says what to do.
    let (status, body) =
        takeover_agent::api::Client::tcp(&addr, None).raw("GET", "/v1/status", Vec::new()).await.unwrap();
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("needs a token"), "{}", error_of(&body));
    let wrong = takeover_agent::api::Client::tcp(&addr, Some("s3cret-token-for-the-test-0123456788".into()));
    let (status, body) = wrong.raw("POST", "/v1/groups/journal/cleanup", Vec::new()).await.unwrap();
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("wrong API token"), "{}", error_of(&body));
    let (status, _) = wrong.raw("GET", "/metrics", Vec::new()).await.unwrap();
    assert_eq!(status, 401, "metrics need the token too");

    // The right token: the same API as on the socket.
    let tcp = takeover_agent::api::Client::tcp(&addr, Some(token.into()));
    let status = tcp.status().await.unwrap();
    assert_eq!((status.node.as_str(), group(&status).unwrap().role.as_str()), ("alpha", "M"));
    assert!(!tcp.events(0, 10, 0).await.unwrap().events.is_empty());
    let answer = tcp.append(common::GROUP, b"over tcp".to_vec()).await.unwrap();
    let read = tcp.read(common::GROUP, answer.index, 1).await.unwrap();
    assert_eq!(read.records[0].payload_bytes().unwrap(), b"over tcp");
    assert!(tcp.metrics().await.unwrap().contains("takeover_group_role"));
    // Once the SL holds every record, the lag is nothing, in records and in bytes.
    let lag = |name: &str| format!("takeover_journal_lag_{name}{{group=\"{}\"}}", common::GROUP);
    let deadline = Instant::now() + common::WAIT;
    loop {
        let metrics = parse_metrics(&tcp.metrics().await.unwrap());
        if metrics[&lag("records")] == 0.0 {
            assert_eq!(metrics[&lag("bytes")], 0.0, "{metrics:?}");
            break;
        }
        assert!(metrics[&lag("bytes")] > 0.0, "records behind take bytes: {metrics:?}");
        assert!(Instant::now() < deadline, "the SL never caught up: {metrics:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Errors on the socket are JSON too: unknown route, wrong method, bad query, unknown group.
    let unix = bed.cluster.client("alpha");
    for (method, path, code, says) in [
        ("GET", "/v1/nothing", 404, "no such API route: /v1/nothing"),
        ("DELETE", "/v1/status", 405, "DELETE is not allowed on /v1/status"),
        ("GET", "/v1/events?after=soon", 400, "bad query string"),
        ("POST", "/v1/groups/nope/cleanup", 404, "no group `nope` on node alpha"),
    ] {
        let (status, body) = unix.raw(method, path, Vec::new()).await.unwrap();
        assert_eq!(status, code, "{method} {path}");
        assert!(error_of(&body).contains(says), "{method} {path}: {}", error_of(&body));
    }

    // The served OpenAPI document is the checked-in one.
    let served = unix.openapi().await.unwrap();
    let checked_in = include_str!("../../../docs/openapi.json");
    assert!(served == checked_in, "the agent serves another OpenAPI document than docs/openapi.json");

    // The CLI over TCP: with the token it works, without it it says what is missing.
    let cli = |token: Option<&str>| {
        let mut command = std::process::Command::new(&bed.cluster.binary);
        command.args(["status", "--api", &format!("http://{addr}")]).env_remove("TAKEOVER_API_TOKEN");
        if let Some(token) = token {
            command.env("TAKEOVER_API_TOKEN", token);
        }
        command.output().unwrap()
    };
    let out = cli(Some(token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Groups") && text.contains("journal") && !text.contains('\x1b'), "{text}");
    println!("{text}");
    // --watch refreshes: plain text (not a terminal), one screen after another.
    let mut watch = tokio::process::Command::new(&bed.cluster.binary)
        .args(["status", "--watch", "100ms", "--api"])
        .arg(&bed.cluster.node("alpha").api)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let (mut screens, mut headers) = (0, 0);
    let deadline = Instant::now() + common::WAIT;
    while screens < 3 {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("three screens").unwrap();
        let line = line.expect("status --watch ended");
        headers += usize::from(line.starts_with("cluster e2e · node alpha"));
        screens += usize::from(line == "--");
    }
    assert_eq!(headers, 3);
    watch.kill().await.unwrap();

    let out = cli(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"), "{}", String::from_utf8_lossy(&out.stderr));
    bed.cluster.shutdown().await;
}

/// The pid of the child of `parent` whose command line contains `word`.
fn child_with(parent: u32, word: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        (ppid == parent && String::from_utf8_lossy(&cmdline).contains(word)).then_some(pid)
    })
}

#[tokio::test]
async fn a_monitor_failure_is_an_event_and_a_metric() {
    let mut bed = Bed::new().await;
    // The service as a process resource monitored every 200 ms (the shorthand's default
    // monitor interval is 10 s).
    let config = std::fs::read_to_string(&bed.cluster.config).unwrap();
    let (head, service) = config.split_once("service = [").unwrap();
    let (argv, _) = service.split_once("]\n").unwrap();
    let config = format!(
        "{head}\n[[group.resource]]\nname = \"service\"\ntype = \"process\"\ncommand = [{argv}]\nmonitor_interval = \"200ms\"\nstop_timeout = \"2s\"\n"
    );
    std::fs::write(&bed.cluster.config, config).unwrap();
    bed.cluster.start("alpha", false).unwrap();
    bed.cluster.start("beta", false).unwrap();
    bed.wait_pair("alpha", "beta").await;
    let g = common::GROUP;
    let failures = format!("takeover_monitor_failures_total{{group=\"{g}\",resource=\"service\"}}");
    assert!(!metrics_of(&bed, "alpha").await.contains_key(&failures), "no failure yet");
    let agent: u32 = std::fs::read_to_string(bed.dir.join("alpha/agent.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let service = child_with(agent, "demo-app").expect("alpha's service, a child of its agent");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(service as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + common::WAIT;
    loop {
        let metrics = metrics_of(&bed, "alpha").await;
        if metrics.get(&failures) == Some(&1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the monitor failure was not counted: {metrics:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = bed.cluster.client("alpha").events(0, 1000, 0).await.unwrap().events;
    let failure = events.iter().find(|e| e.kind == "monitor-failure").expect("a monitor-failure event");
    assert_eq!((failure.level.as_str(), failure.group.as_deref()), ("alarm", Some(g)), "{failure:?}");
    // Restarted in place: the group stays on alpha.
    bed.cluster
        .wait_for("alpha", common::WAIT, "the service up again", |s| {
            group(s).is_some_and(|g| g.role == "M" && g.resources.iter().all(|r| r.state == "up"))
        })
        .await
        .unwrap();
    bed.cluster.shutdown().await;
}
