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
    let (alpha, beta) = (bed.cluster.status("alpha").await.unwrap(), bed.cluster.status("beta").await.unwrap());
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
    let status = wait_dropped(&bed, "beta", "the forged heartbeats to be counted", |s| {
        s.dropped.bad_tag >= 60 && s.dropped.unknown_sender >= 10
    })
    .await;
    assert!(
        status
            .events
            .iter()
            .any(|e| e.text.contains("WARNING: dropped a heartbeat from") && e.text.contains("bad_tag")),
        "the first bad tag is reported in the events"
    );

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
        let since = before.events.last().map_or(0, |it| it.t_ms);
        for event in after.events.iter().filter(|it| it.t_ms > since) {
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
