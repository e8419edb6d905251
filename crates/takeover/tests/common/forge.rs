//! An attacker on the test bed's client network (link 0): it records real heartbeats
//! inside a node's namespace (a packet socket sees what the node sends and receives) and
//! sends them again, and sends heartbeats sealed with a key it made up, garbage
//! datagrams, and connections that write garbage to the peer channel's port. The agents
//! must drop all of it, count it, and never act on it.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use takeover_agent::auth::{Auth, ClusterKey, HeartbeatSealer};
use takeover_agent::netbed::{CLIENT, Netbed, in_netns};
use takeover_core::{Incarnation, NodeId};

/// The agents' link port in the test bed.
pub const LINK_PORT: u16 = 7100;

/// What the attacker sent, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub replayed: u64,
    pub forged: u64,
    pub garbage: u64,
    pub connections: u64,
}

pub struct Forger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sent>>,
}

/// Records up to `max` UDP datagrams to `port` seen in `member`'s namespace within
/// `within`: (destination, payload).
pub fn capture(bed: &Netbed, member: &str, port: u16, max: usize, within: Duration) -> Vec<(SocketAddrV4, Vec<u8>)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let ns = bed.namespace(member).to_string();
    let fd = in_netns(&ns, "opening a packet socket", || {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, (libc::ETH_P_IP as u16).to_be() as i32) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .expect("a packet socket in the node's namespace");
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    while out.len() < max && t0.elapsed() < within {
        // SAFETY: recv into a buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if p.len() < ihl + 8 {
            continue;
        }
        let udp = &p[ihl..];
        let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
        if dst_port != port {
            continue;
        }
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        out.push((SocketAddrV4::new(dst, dst_port), udp[8..].to_vec()));
    }
    out
}

impl Forger {
    /// Records real heartbeats in `capture_on`'s namespace, then, until stopped, sends
    /// from the client's namespace: the recorded heartbeats again, heartbeats claiming
    /// to come from each node sealed with a made-up key, garbage datagrams, and a
    /// garbage connection to each node every 200 ms. `nodes`: (id, link 0 address).
    pub fn start(bed: &Netbed, capture_on: &str, cluster: &str, nodes: Vec<(NodeId, Ipv4Addr)>) -> Forger {
        let recorded = capture(bed, capture_on, LINK_PORT, 40, Duration::from_millis(400));
        let socket = bed.udp_socket(CLIENT, 0).expect("a UDP socket on the client's link");
        let client_ns = bed.namespace(CLIENT).to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let cluster = cluster.to_string();
        let thread = std::thread::spawn(move || {
            let fake = Arc::new(Auth::with_key(&cluster, &ClusterKey::generate()));
            let mut sealers: Vec<HeartbeatSealer> = nodes
                .iter()
                .map(|(id, _)| HeartbeatSealer::new(fake.clone(), *id, Incarnation(u64::MAX / 2), 7))
                .collect();
            let mut sent = Sent::default();
            let mut last_connect = Instant::now() - Duration::from_secs(1);
            let mut junk = 0x9e37_79b9_7f4a_7c15u64;
            while !flag.load(Ordering::SeqCst) {
                for (dst, payload) in &recorded {
                    if socket.send_to(payload, *dst).is_ok() {
                        sent.replayed += 1;
                    }
                }
                for (k, sealer) in sealers.iter_mut().enumerate() {
                    for (to, addr) in &nodes {
                        if *to == nodes[k].0 {
                            continue;
                        }
                        let bytes = sealer.seal(0, *to, 0);
                        if socket.send_to(&bytes, SocketAddrV4::new(*addr, LINK_PORT)).is_ok() {
                            sent.forged += 1;
                        }
                    }
                }
                for (_, addr) in &nodes {
                    junk = junk.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let bytes: Vec<u8> = (0..(16 + junk % 200)).map(|i| (junk >> (i % 57)) as u8).collect();
                    if socket.send_to(&bytes, SocketAddrV4::new(*addr, LINK_PORT)).is_ok() {
                        sent.garbage += 1;
                    }
                }
                if last_connect.elapsed() >= Duration::from_millis(200) {
                    last_connect = Instant::now();
                    for (_, addr) in &nodes {
                        let target = SocketAddr::V4(SocketAddrV4::new(*addr, LINK_PORT));
                        let stream = in_netns(&client_ns, "connecting", move || {
                            TcpStream::connect_timeout(&target, Duration::from_millis(100))
                        });
                        if let Ok(mut stream) = stream {
                            let _ = stream.write_all(&[0x5a; 300]);
                            sent.connections += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        Forger { stop, thread: Some(thread) }
    }

    /// Stops sending; what was sent.
    pub fn stop(mut self) -> Sent {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().expect("the forger")).unwrap_or_default()
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
