//! Sealing and opening with real keys: round trips, tampering with every byte, wrong
//! keys and cluster names, kinds that do not cross-verify, replays, nonces that never
//! repeat across restarts, and the channel's handshake and frame order.

use std::collections::BTreeSet;

use super::*;
use crate::wire::{ANY_NODE, GroupFrame, Hello};

const ALPHA: NodeId = NodeId(0);
const BETA: NodeId = NodeId(1);

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes([byte; KEY_LEN])
}

fn auth(name: &str, byte: u8) -> Arc<Auth> {
    Arc::new(Auth::with_key(name, &key(byte)))
}

/// beta's opener for heartbeats from alpha, beta's run being `beta_run`, two links.
fn beta_opener(auth: &Arc<Auth>, beta_run: u64) -> HeartbeatOpener {
    HeartbeatOpener::new(auth.clone(), BETA, beta_run, vec![ALPHA], 2)
}

fn alpha_sealer(auth: &Arc<Auth>, incarnation: u64, run: u64) -> HeartbeatSealer {
    HeartbeatSealer::new(auth.clone(), ALPHA, Incarnation(incarnation), run)
}

fn reason(result: Result<Opened, Refusal>) -> DropReason {
    result.expect_err("refused").reason
}

#[test]
fn a_heartbeat_opens_fresh_once_it_echoes_the_receivers_run() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    let mut beta = beta_opener(&auth, 0xb1);
    let first = alpha.seal(0, BETA, 0);
    assert_eq!(first.len(), wire::HEARTBEAT_LEN);
    assert_eq!(beta.open(0, &first), Ok(Opened::Unconfirmed { from: ALPHA, incarnation: Incarnation(7) }));
    assert_eq!(beta.echo_for(ALPHA), 0xa1, "beta learnt alpha's run, to echo it");
    let stale_echo = alpha.seal(1, BETA, 0xb0);
    assert_eq!(beta.open(1, &stale_echo), Ok(Opened::Unconfirmed { from: ALPHA, incarnation: Incarnation(7) }));
    let fresh = alpha.seal(1, BETA, 0xb1);
    assert_eq!(beta.open(1, &fresh), Ok(Opened::Fresh { from: ALPHA, incarnation: Incarnation(7) }));
}

#[test]
fn the_echo_is_encrypted_and_the_header_is_clear() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    let echo = 0x0102_0304_0506_0708u64;
    let bytes = alpha.seal(0, BETA, echo);
    let body = &bytes[wire::HEARTBEAT_HEADER_LEN..wire::HEARTBEAT_HEADER_LEN + 8];
    assert_ne!(body, echo.to_le_bytes(), "the body is not sent in the clear");
    let (header, _, _) = wire::decode_heartbeat(&bytes).unwrap();
    assert_eq!(
        (header.from, header.to, header.incarnation, header.run, header.counter),
        (ALPHA, BETA, Incarnation(7), 0xa1, 1)
    );
}

#[test]
fn tampering_with_any_byte_or_bit_of_a_heartbeat_is_refused_and_changes_nothing() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    let mut beta = beta_opener(&auth, 0xb1);
    let good = alpha.seal(0, BETA, 0xb1);
    let mut reasons = BTreeSet::new();
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            let refusal = beta.open(0, &bad).expect_err(&format!("flip of byte {i} bit {bit} accepted"));
            reasons.insert(refusal.reason.name());
            if i >= 20 {
                // Past magic, version, link, sender, addressee, reserved bits and cluster
                // id (each checked on its own): only the tag can tell.
                assert_eq!(refusal.reason, DropReason::BadTag, "byte {i} bit {bit}: {refusal:?}");
            }
        }
    }
    assert_eq!(reasons, BTreeSet::from(["bad_tag", "foreign", "malformed", "unknown_sender"]));
    // None of the forgeries moved the window or replaced alpha's run.
    assert_eq!(beta.open(0, &good), Ok(Opened::Fresh { from: ALPHA, incarnation: Incarnation(7) }));
    // Truncated or extended: malformed.
    assert_eq!(reason(beta.open(0, &good[..good.len() - 1])), DropReason::Malformed);
    let mut long = good.clone();
    long.push(0);
    assert_eq!(reason(beta.open(0, &long)), DropReason::Malformed);
}

#[test]
fn a_heartbeat_sealed_with_another_key_is_refused_as_a_bad_tag() {
    let mut forger = alpha_sealer(&auth("prod", 2), 8, 0xf0);
    let mut beta = beta_opener(&auth("prod", 1), 0xb1);
    let forged = forger.seal(0, BETA, 0xb1);
    assert_eq!(reason(beta.open(0, &forged)), DropReason::BadTag);
    assert_eq!(beta.echo_for(ALPHA), 0, "a forgery teaches nothing");
}

#[test]
fn unauthenticated_traffic_does_not_open_under_a_key_and_keyed_traffic_not_under_none() {
    // Even an all-zero key file is a key of its own: only `auth = "none"` is
    // unauthenticated, and the two never mix.
    let keyed = auth("prod", 0);
    let none = Arc::new(Auth::unauthenticated("prod"));
    assert_eq!((keyed.mode(), none.mode()), (ALGORITHM, "none"));
    let from_none = alpha_sealer(&none, 1, 5).seal(0, BETA, 0);
    assert_eq!(reason(beta_opener(&keyed, 6).open(0, &from_none)), DropReason::BadTag);
    let from_keyed = alpha_sealer(&keyed, 1, 5).seal(0, BETA, 0);
    assert_eq!(reason(beta_opener(&none, 6).open(0, &from_keyed)), DropReason::BadTag);
    // Under none, the same checks run.
    let mut beta = beta_opener(&none, 6);
    assert!(beta.open(0, &from_none).is_ok());
    assert_eq!(reason(beta.open(0, &from_none)), DropReason::Replay);
}

#[test]
fn another_clusters_heartbeats_are_foreign_and_the_name_itself_is_bound_not_just_its_hash() {
    let mut other = alpha_sealer(&auth("staging", 1), 7, 0xa1);
    let mut beta = beta_opener(&auth("prod", 1), 0xb1);
    assert_eq!(reason(beta.open(0, &other.seal(0, BETA, 0))), DropReason::Foreign);
    // A cluster whose name hashes like ours (simulated) and shares the key still does not
    // verify: the associated data and the key derivation carry the whole name.
    let mut lookalike = Auth::with_key("staging", &key(1));
    lookalike.cluster_id = wire::cluster_id("prod");
    let mut other = alpha_sealer(&Arc::new(lookalike), 7, 0xa1);
    assert_eq!(reason(beta.open(0, &other.seal(0, BETA, 0))), DropReason::BadTag);
}

#[test]
fn kinds_do_not_cross_verify() {
    let auth = auth("prod", 1);
    let header = [9u8; 20];
    let parts: [&[u8]; 1] = [b"same info"];
    let seal = |key: &LessSafeKey, domain: &[u8]| {
        let mut buf = b"payload".to_vec();
        let ad = auth.associated_data(domain, &header);
        key.seal_in_place_append_tag(nonce(1), Aad::from(&ad), &mut buf).unwrap();
        buf
    };
    let open = |key: &LessSafeKey, domain: &[u8], mut buf: Vec<u8>| {
        let ad = auth.associated_data(domain, &header);
        key.open_in_place(nonce(1), Aad::from(&ad), &mut buf).is_ok()
    };
    let hb_key = auth.key(HEARTBEAT_DOMAIN, &parts);
    let channel_key = auth.key(CHANNEL_DOMAIN, &parts);
    let sealed = seal(&hb_key, HEARTBEAT_DOMAIN);
    assert!(open(&hb_key, HEARTBEAT_DOMAIN, sealed.clone()));
    assert!(!open(&hb_key, FRAME_DOMAIN, sealed.clone()), "the kind is in the associated data");
    assert!(!open(&channel_key, HEARTBEAT_DOMAIN, sealed), "the kind is in the key derivation");
}

#[test]
fn senders_addressees_and_links_are_checked() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    let mut beta = beta_opener(&auth, 0xb1);
    // For gamma (node 2), or sent on link 1 but received on link 0 (a replay across links).
    assert_eq!(reason(beta.open(0, &alpha.seal(0, NodeId(2), 0xb1))), DropReason::Foreign);
    assert_eq!(reason(beta.open(0, &alpha.seal(1, BETA, 0xb1))), DropReason::Foreign);
    // From a node beta does not pair with.
    let mut stranger = HeartbeatSealer::new(auth.clone(), NodeId(5), Incarnation(1), 3);
    assert_eq!(reason(beta.open(0, &stranger.seal(0, BETA, 0xb1))), DropReason::UnknownSender);
    // The same heartbeat cannot be counted on both links.
    let hb = alpha.seal(0, BETA, 0xb1);
    assert!(beta.open(0, &hb).is_ok());
    assert_eq!(reason(beta.open(1, &hb)), DropReason::Foreign);
}

#[test]
fn replay_window_of_heartbeats_in_order_out_of_order_duplicates_and_too_old() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    let mut beta = beta_opener(&auth, 0xb1);
    let sent: Vec<Vec<u8>> = (0..100).map(|_| alpha.seal(0, BETA, 0xb1)).collect();
    // In order.
    for hb in &sent[..10] {
        assert!(beta.open(0, hb).is_ok());
    }
    // Out of order within the window: 30 first, then 20..30.
    assert!(beta.open(0, &sent[30]).is_ok());
    for hb in &sent[20..30] {
        assert!(beta.open(0, hb).is_ok());
    }
    // Duplicates.
    for hb in sent[..10].iter().chain(&sent[20..31]) {
        assert_eq!(reason(beta.open(0, hb)), DropReason::Replay);
    }
    // Too old: after counter 99, counter 11 (never received) is beyond the 64 window.
    assert!(beta.open(0, &sent[98]).is_ok());
    let refusal = beta.open(0, &sent[10]).unwrap_err();
    assert_eq!(refusal.reason, DropReason::Replay);
    assert!(refusal.detail.contains("older than the replay window"), "{}", refusal.detail);
    assert!(beta.open(0, &sent[40]).is_ok(), "counter 41 is within 64 of 99 and new");
}

#[test]
fn an_older_run_is_a_replay_once_a_newer_one_was_heard() {
    let auth = auth("prod", 1);
    let mut beta = beta_opener(&auth, 0xb1);
    let mut old = alpha_sealer(&auth, 7, 0xa1);
    let recorded: Vec<Vec<u8>> = (0..5).map(|_| old.seal(0, BETA, 0xb1)).collect();
    assert!(beta.open(0, &recorded[0]).is_ok());
    let mut restarted = alpha_sealer(&auth, 8, 0xa2);
    assert_eq!(
        beta.open(0, &restarted.seal(0, BETA, 0xb1)),
        Ok(Opened::Fresh { from: ALPHA, incarnation: Incarnation(8) })
    );
    for hb in &recorded[1..] {
        let refusal = beta.open(0, hb).unwrap_err();
        assert_eq!(refusal.reason, DropReason::Replay);
        assert!(refusal.detail.contains("older run"), "{}", refusal.detail);
    }
    // Same incarnation, another run (a state directory restored from a backup): not the
    // newest run either.
    let mut rolled_back = alpha_sealer(&auth, 8, 0xa3);
    assert_eq!(reason(beta.open(0, &rolled_back.seal(0, BETA, 0xb1))), DropReason::Replay);
}

#[test]
fn a_restarted_receiver_never_counts_a_recording_as_heard() {
    let auth = auth("prod", 1);
    let mut alpha = alpha_sealer(&auth, 7, 0xa1);
    // Recorded while beta ran as 0xb1 (alpha echoed it).
    let recorded: Vec<Vec<u8>> = (0..5).map(|_| alpha.seal(0, BETA, 0xb1)).collect();
    // beta restarts: a new run, no memory of windows. The recording authenticates but does
    // not echo the new run, so the peer does not count as heard.
    let mut beta = beta_opener(&auth, 0xb2);
    for hb in &recorded {
        assert_eq!(beta.open(0, hb), Ok(Opened::Unconfirmed { from: ALPHA, incarnation: Incarnation(7) }));
    }
}

#[test]
fn nonces_never_repeat_across_restarts_because_the_incarnation_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let node_state = dir.path().join("node.state");
    let auth = auth("prod", 1);
    let mut beta = beta_opener(&auth, 0xb1);
    let mut seen = BTreeSet::new();
    let mut first_bytes = BTreeSet::new();
    for restart in 0..3 {
        // Every start raises the durable incarnation before anything is sent; the run is
        // drawn again. Counters restart at 1.
        let incarnation = crate::store::next_incarnation(&node_state).unwrap();
        assert_eq!(incarnation, Incarnation(restart + 1));
        let mut alpha = HeartbeatSealer::new(auth.clone(), ALPHA, incarnation, random_run());
        for _ in 0..200 {
            let hb = alpha.seal(0, BETA, 0xb1);
            let (header, _, _) = wire::decode_heartbeat(&hb).unwrap();
            assert!(seen.insert((header.incarnation, header.run, header.counter)), "(key, nonce) reused: {header:?}");
            assert!(beta.open(0, &hb).is_ok());
            if header.counter == 1 {
                first_bytes.insert(hb[wire::HEARTBEAT_HEADER_LEN..].to_vec());
            }
        }
    }
    assert_eq!(first_bytes.len(), 3, "the same counter in three runs seals three different ways");
    // The key belongs to the run: a heartbeat whose incarnation is rewritten does not open.
    let mut alpha = alpha_sealer(&auth, 1, 0x77);
    let mut hb = alpha.seal(0, BETA, 0xb1);
    hb[20] = 9; // incarnation (little-endian, bytes 20..28)
    assert_eq!(reason(beta_opener(&auth, 0xb1).open(0, &hb)), DropReason::BadTag);
}

#[test]
fn the_run_is_random_and_never_zero() {
    let runs: BTreeSet<u64> = (0..100).map(|_| random_run()).collect();
    assert_eq!(runs.len(), 100);
    assert!(!runs.contains(&0));
}

#[test]
fn the_key_never_shows_in_debug_output() {
    let key = ClusterKey::from_bytes([0x5a; KEY_LEN]);
    assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    let auth = Auth::with_key("prod", &key);
    assert!(!format!("{auth:?}").contains("5a"), "{auth:?}");
}

// ---- the channel ----

fn hello(from: NodeId, to: NodeId, nonce: u8) -> Vec<u8> {
    let frame = wire::encode_hello_frame(&Hello {
        cluster: wire::cluster_id("prod"),
        from,
        to,
        incarnation: Incarnation(3),
        nonce: [nonce; wire::HELLO_NONCE_LEN],
    });
    frame[wire::FRAME_HEADER_LEN..].to_vec()
}

/// Splits a whole frame into its header and payload.
fn split(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
    let header = wire::decode_frame_header(frame[..wire::FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
    (header, frame[wire::FRAME_HEADER_LEN..].to_vec())
}

fn open_frame(opener: &mut FrameOpener, frame: &[u8]) -> Result<Vec<u8>, FrameRefusal> {
    let (header, mut payload) = split(frame);
    opener.open(&header, &mut payload).map(|it| it.to_vec())
}

/// A connection between alpha (dialer) and beta (acceptor), Confirms exchanged.
fn connected(auth: &Arc<Auth>) -> ((FrameSealer, FrameOpener), (FrameSealer, FrameOpener)) {
    let (d, a) = (hello(ALPHA, BETA, 1), hello(BETA, ANY_NODE, 2));
    let (mut alpha_send, mut alpha_recv) = channel_keys(auth, &d, &a, true);
    let (mut beta_send, mut beta_recv) = channel_keys(auth, &d, &a, false);
    assert_eq!(open_frame(&mut beta_recv, &alpha_send.confirm()), Ok(vec![]));
    assert_eq!(open_frame(&mut alpha_recv, &beta_send.confirm()), Ok(vec![]));
    ((alpha_send, alpha_recv), (beta_send, beta_recv))
}

fn group_body(upto: u64) -> Vec<u8> {
    wire::encode_group(&GroupFrame {
        group: takeover_core::node::GroupIndex(0),
        epoch: takeover_core::Epoch::ZERO,
        msg: takeover_core::group::Message::Ack { upto, session: 1 },
    })
}

#[test]
fn frames_seal_and_open_in_both_directions_and_the_body_is_encrypted() {
    let auth = auth("prod", 1);
    let ((mut alpha_send, mut alpha_recv), (mut beta_send, mut beta_recv)) = connected(&auth);
    for n in 1..=5 {
        let frame = alpha_send.seal_group(&group_body(n));
        assert_eq!(split(&frame).0.counter, n);
        assert_eq!(open_frame(&mut beta_recv, &frame), Ok(group_body(n)));
        assert_eq!(open_frame(&mut alpha_recv, &beta_send.seal_group(&group_body(n + 100))), Ok(group_body(n + 100)));
    }
    let secret = 0x1122_3344_5566_7788u64;
    let frame = alpha_send.seal_group(&group_body(secret));
    assert!(!frame.windows(8).any(|w| w == secret.to_le_bytes()), "the group message travels encrypted");
    assert_eq!(open_frame(&mut beta_recv, &frame), Ok(group_body(secret)));
}

#[test]
fn a_replayed_frame_is_skipped_and_the_stream_goes_on() {
    let auth = auth("prod", 1);
    let ((mut alpha_send, _), (_, mut beta_recv)) = connected(&auth);
    let first = alpha_send.seal_group(&group_body(1));
    assert!(open_frame(&mut beta_recv, &first).is_ok());
    let refusal = open_frame(&mut beta_recv, &first).unwrap_err();
    assert_eq!((refusal.refusal.reason, refusal.fatal), (DropReason::Replay, false));
    // A forgery with an old counter is a bad tag, also skipped.
    let mut forged = first.clone();
    *forged.last_mut().unwrap() ^= 1;
    let refusal = open_frame(&mut beta_recv, &forged).unwrap_err();
    assert_eq!((refusal.refusal.reason, refusal.fatal), (DropReason::BadTag, false));
    assert_eq!(open_frame(&mut beta_recv, &alpha_send.seal_group(&group_body(2))), Ok(group_body(2)));
}

#[test]
fn a_missing_or_reordered_frame_closes_the_connection() {
    let auth = auth("prod", 1);
    let ((mut alpha_send, _), (_, mut beta_recv)) = connected(&auth);
    let one = alpha_send.seal_group(&group_body(1));
    let two = alpha_send.seal_group(&group_body(2));
    let refusal = open_frame(&mut beta_recv, &two).unwrap_err();
    assert_eq!((refusal.refusal.reason, refusal.fatal), (DropReason::Replay, true));
    assert!(refusal.refusal.detail.contains("missing or reordered"), "{refusal:?}");
    assert!(open_frame(&mut beta_recv, &one).is_ok(), "the refused frame changed nothing");
}

#[test]
fn tampering_with_any_byte_of_a_frame_is_refused() {
    let auth = auth("prod", 1);
    let ((mut alpha_send, _), _) = connected(&auth);
    let frame = alpha_send.seal_group(&group_body(42));
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x10;
        // A fresh receiver at the same point of the stream for every try.
        let ((_, _), (_, mut beta_recv)) = connected(&auth);
        let result = match wire::decode_frame_header(bad[..wire::FRAME_HEADER_LEN].try_into().unwrap()) {
            Err(_) => continue, // The kind byte: refused by the header decoder (malformed).
            Ok(header) => {
                let mut payload = bad[wire::FRAME_HEADER_LEN..].to_vec();
                if header.len != payload.len() {
                    // A length change puts the stream out of step: the reader then reads
                    // the wrong bytes as payload and they fail like any other forgery.
                    payload.resize(header.len.min(1 << 16), 0);
                }
                beta_recv.open(&header, &mut payload).map(|it| it.to_vec())
            }
        };
        assert!(result.is_err(), "a change of byte {i} was accepted");
    }
}

#[test]
fn a_frame_under_another_key_or_cluster_name_or_reflected_back_does_not_open() {
    let (d, a) = (hello(ALPHA, BETA, 1), hello(BETA, ANY_NODE, 2));
    let (mut alpha_send, _) = channel_keys(&auth("prod", 1), &d, &a, true);
    let confirm = alpha_send.confirm();
    let (_, mut other_key) = channel_keys(&auth("prod", 2), &d, &a, false);
    assert_eq!(open_frame(&mut other_key, &confirm).unwrap_err().refusal.reason, DropReason::BadTag);
    let (_, mut other_name) = channel_keys(&auth("staging", 1), &d, &a, false);
    assert_eq!(open_frame(&mut other_name, &confirm).unwrap_err().refusal.reason, DropReason::BadTag);
    // alpha's own Confirm sent back to it (a reflection) is under the other direction's key.
    let (_, mut alpha_recv) = channel_keys(&auth("prod", 1), &d, &a, true);
    assert_eq!(open_frame(&mut alpha_recv, &confirm).unwrap_err().refusal.reason, DropReason::BadTag);
}

#[test]
fn a_recorded_connection_replayed_to_a_fresh_handshake_fails_at_its_confirm() {
    let auth = auth("prod", 1);
    let d = hello(ALPHA, BETA, 1);
    let (mut alpha_send, _) = channel_keys(&auth, &d, &hello(BETA, ANY_NODE, 2), true);
    let recorded_confirm = alpha_send.confirm();
    // The attacker replays alpha's Hello and Confirm; beta answers with a new nonce.
    let (_, mut beta_recv) = channel_keys(&auth, &d, &hello(BETA, ANY_NODE, 3), false);
    let refusal = open_frame(&mut beta_recv, &recorded_confirm).unwrap_err();
    assert_eq!((refusal.refusal.reason, refusal.fatal), (DropReason::BadTag, true));
}

#[test]
fn the_first_sealed_frame_must_be_the_confirm() {
    let auth = auth("prod", 1);
    let (d, a) = (hello(ALPHA, BETA, 1), hello(BETA, ANY_NODE, 2));
    let (_, mut beta_recv) = channel_keys(&auth, &d, &a, false);
    // A Group frame with counter 0 (made by hand: the sealer refuses to).
    let (mut alpha_send, _) = channel_keys(&auth, &d, &a, true);
    let mut frame = alpha_send.confirm();
    frame[4] = FrameKind::Group as u8;
    let refusal = open_frame(&mut beta_recv, &frame).unwrap_err();
    assert_eq!((refusal.refusal.reason, refusal.fatal), (DropReason::Malformed, true));
}
