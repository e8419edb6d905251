//! The CPU cost of authenticated traffic: sealing and opening heartbeats and channel
//! frames with the production code (`takeover_agent::auth`). Prints figures; asserts
//! nothing about time.
//!
//! ```sh
//! cargo run --release -p takeover-agent --example seal_bench
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use takeover_agent::auth::{Auth, ClusterKey, HeartbeatOpener, HeartbeatSealer, channel_keys};
use takeover_agent::wire::{self, ANY_NODE, FRAME_HEADER_LEN, Hello};
use takeover_core::{Incarnation, NodeId};

const HEARTBEATS: u64 = 200_000;

fn per_op(label: &str, n: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{label:<58} {ns:>9.0} ns");
}

fn main() {
    let auth = Arc::new(Auth::with_key("prod", &ClusterKey::generate()));
    let (alpha, beta) = (NodeId(0), NodeId(1));
    println!("heartbeats ({} bytes on the wire), {HEARTBEATS} each:", wire::HEARTBEAT_LEN);

    let mut sealer = HeartbeatSealer::new(auth.clone(), alpha, Incarnation(7), 0xa1);
    let started = Instant::now();
    for _ in 0..HEARTBEATS {
        black_box(sealer.seal(0, beta, 0xb1));
    }
    per_op("  seal", HEARTBEATS, started);

    let mut sealer = HeartbeatSealer::new(auth.clone(), alpha, Incarnation(8), 0xa2);
    let sealed: Vec<Vec<u8>> = (0..HEARTBEATS).map(|_| sealer.seal(0, beta, 0xb1)).collect();
    let mut opener = HeartbeatOpener::new(auth.clone(), beta, 0xb1, vec![alpha], 2);
    let started = Instant::now();
    for hb in &sealed {
        black_box(opener.open(0, hb).expect("opens"));
    }
    per_op("  open (authentic, fresh, replay window)", HEARTBEATS, started);

    let started = Instant::now();
    for hb in &sealed {
        black_box(opener.open(0, hb).expect_err("a replay"));
    }
    per_op("  open of a replay (authenticated, then refused)", HEARTBEATS, started);

    let forger = Arc::new(Auth::with_key("prod", &ClusterKey::generate()));
    let forged: Vec<Vec<u8>> = (0..HEARTBEATS)
        .map(|n| HeartbeatSealer::new(forger.clone(), alpha, Incarnation(8), 0xf000 + n % 1000).seal(0, beta, 0))
        .collect();
    let started = Instant::now();
    for hb in &forged {
        black_box(opener.open(0, hb).expect_err("a forgery"));
    }
    per_op("  open of a forgery claiming a new run (HKDF, then bad tag)", HEARTBEATS, started);

    let junk = vec![0u8; 40];
    let started = Instant::now();
    for _ in 0..HEARTBEATS {
        black_box(opener.open(0, &junk).expect_err("malformed"));
    }
    per_op("  open of junk (malformed, no crypto)", HEARTBEATS, started);

    println!("channel frames (sealed in the writer task, opened in the reader task):");
    let hello = |from, to, nonce| {
        let frame = wire::encode_hello_frame(&Hello {
            cluster: auth.cluster_id(),
            from,
            to,
            incarnation: Incarnation(1),
            nonce: [nonce; wire::HELLO_NONCE_LEN],
        });
        frame[FRAME_HEADER_LEN..].to_vec()
    };
    let (d, a) = (hello(alpha, beta, 1), hello(beta, ANY_NODE, 2));
    let started = Instant::now();
    for _ in 0..10_000 {
        black_box(channel_keys(&auth, &d, &a, true));
    }
    per_op("  handshake keys (two HKDF expansions)", 10_000, started);
    for size in [64usize, 4 << 10, 1 << 20] {
        let (mut send, _) = channel_keys(&auth, &d, &a, true);
        let (_, mut receive) = channel_keys(&auth, &d, &a, false);
        let confirm = send.confirm();
        let header = wire::decode_frame_header(confirm[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
        receive.open(&header, &mut confirm[FRAME_HEADER_LEN..].to_vec()).unwrap();
        let body = vec![0x5au8; size];
        let n = ((256u64 << 20) / size as u64).clamp(64, 200_000);
        let started = Instant::now();
        let frames: Vec<Vec<u8>> = (0..n).map(|_| send.seal_group(&body)).collect();
        let seal = started.elapsed();
        let started = Instant::now();
        for frame in frames {
            let header = wire::decode_frame_header(frame[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
            let mut payload = frame[FRAME_HEADER_LEN..].to_vec();
            black_box(receive.open(&header, &mut payload).expect("opens").len());
        }
        let open = started.elapsed();
        let mb_s = |t: std::time::Duration| (n as f64 * size as f64) / t.as_secs_f64() / 1e6;
        println!(
            "  {size:>8} B body: seal {:>9.0} ns ({:>6.0} MB/s), open {:>9.0} ns ({:>6.0} MB/s)",
            seal.as_nanos() as f64 / n as f64,
            mb_s(seal),
            open.as_nanos() as f64 / n as f64,
            mb_s(open)
        );
    }
    println!("a pair at the default 100ms heartbeat on 2 links seals 20 and opens 20 heartbeats a second per peer");
}
