//! Sockets: UDP heartbeat receivers (one per link) and the TCP peer channel (accepting,
//! dialing, the authenticated handshake, and a reader and a writer task per connection).
//!
//! Every task only turns bytes into [`Input`]s for the event loop or [`Input`]s into
//! bytes; none decides anything. Whatever does not open under the cluster key, is not
//! addressed to this node and link, or is not fresh ([`crate::auth`]) is counted in
//! [`Dropped`] by reason and dropped right here: it never becomes an [`Input`], so it
//! never reaches the core.
//!
//! The channel handshake: both sides send a Hello (clear, with a fresh random nonce),
//! then a Confirm sealed under keys bound to both Hellos; `ChannelUp` is reported only
//! once the peer's Confirm opened. After that the writer task seals each group message
//! (counter 1, 2, …) and the reader task opens them in order; a frame that fails closes
//! the connection (see [`crate::auth::FrameOpener`]), which the core handles like any
//! lost connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use takeover_core::{Incarnation, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::auth::{self, Auth, DropReason, FrameOpener, FrameSealer, HeartbeatOpener, Opened, Refusal};
use crate::wire::{self, FrameHeader, FrameKind, GroupFrame, Hello};

/// Frames a connection may queue before it is considered stuck and closed.
pub const WRITE_QUEUE: usize = 4096;
/// A warning about dropped traffic of one reason is logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// The largest frame accepted before the handshake completed (Hello and Confirm are
/// smaller): an unauthenticated sender cannot make this node allocate more.
const MAX_HANDSHAKE_FRAME: usize = 64;

/// What the network tasks tell the event loop.
#[derive(Debug)]
pub enum Input {
    /// A fresh, authentic heartbeat.
    Heartbeat {
        link: usize,
        from: NodeId,
        incarnation: Incarnation,
    },
    /// A connection whose handshake completed: the peer proved it holds the key.
    ChannelUp {
        channel: Channel,
    },
    ChannelDown {
        peer: NodeId,
        conn: u64,
    },
    /// An authentic group message, in order.
    Frame {
        peer: NodeId,
        conn: u64,
        group: takeover_core::node::GroupIndex,
        epoch: takeover_core::Epoch,
        msg: takeover_core::group::Message,
    },
    /// Dropped traffic worth telling people about (rate-limited), for the event log.
    Warning(String),
}

/// An established peer channel.
#[derive(Debug)]
pub struct Channel {
    pub peer: NodeId,
    pub incarnation: Incarnation,
    pub link: usize,
    pub conn: u64,
    /// Group messages ([`wire::encode_group`]) to seal and send, in order.
    pub writer: mpsc::Sender<Vec<u8>>,
    pub tasks: [AbortHandle; 2],
    /// A duplicate of the connection's socket, to read its round-trip time.
    pub socket: Option<Arc<std::os::fd::OwnedFd>>,
}

impl Channel {
    /// The kernel's smoothed round-trip time of the connection (TCP_INFO `tcpi_rtt`).
    pub fn rtt(&self) -> Option<Duration> {
        use std::os::fd::AsRawFd;
        let socket = self.socket.as_ref()?;
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(socket.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
        };
        (rc == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
    }

    pub fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which traffic was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Heartbeat,
    Frame,
}

/// Counters of dropped traffic, shared with the tasks.
#[derive(Debug, Default)]
pub struct Dropped {
    pub heartbeats: AtomicU64,
    pub frames: AtomicU64,
    by_reason: [AtomicU64; DropReason::ALL.len()],
    /// When a warning was last given, per traffic and reason.
    last_warning: Mutex<[[Option<tokio::time::Instant>; DropReason::ALL.len()]; 2]>,
}

impl Dropped {
    /// Counts one dropped packet from `source`. Returns the warning for people when one is
    /// due: the first of each traffic and reason, then at most one every [`WARN_EVERY`].
    pub fn count(&self, traffic: Traffic, refusal: &Refusal, source: SocketAddr) -> Option<String> {
        match traffic {
            Traffic::Heartbeat => &self.heartbeats,
            Traffic::Frame => &self.frames,
        }
        .fetch_add(1, Ordering::Relaxed);
        let reason = refusal.reason;
        let total = self.by_reason[reason.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let now = tokio::time::Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|it| it.into_inner());
        let last = &mut last[traffic as usize][reason.index()];
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(format!(
            "WARNING: dropped {} from {source}: {} — {} ({}); {total} packets dropped for this reason so far (`takeover status` counts them; this warning repeats at most every {} s)",
            match traffic {
                Traffic::Heartbeat => "a heartbeat",
                Traffic::Frame => "a channel frame",
            },
            reason.name(),
            reason.explain(),
            refusal.detail,
            WARN_EVERY.as_secs()
        ))
    }

    /// How many packets were dropped for `reason`.
    pub fn by_reason(&self, reason: DropReason) -> u64 {
        self.by_reason[reason.index()].load(Ordering::Relaxed)
    }
}

fn drop_traffic(
    dropped: &Dropped,
    inputs: &mpsc::UnboundedSender<Input>,
    traffic: Traffic,
    refusal: &Refusal,
    source: SocketAddr,
) {
    if let Some(text) = dropped.count(traffic, refusal, source) {
        let _ = inputs.send(Input::Warning(text));
    }
}

/// Who this node is on the wire.
#[derive(Clone, Debug)]
pub struct Identity {
    pub auth: Arc<Auth>,
    pub me: NodeId,
    pub incarnation: Incarnation,
    pub peers: Vec<NodeId>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// Receives heartbeats on one link's socket until the socket fails. `opener` is shared
/// by every link (a peer's newest run is one per peer) and with the sender (the echo).
pub async fn receive_heartbeats(
    socket: Arc<UdpSocket>,
    link: usize,
    opener: Arc<Mutex<HeartbeatOpener>>,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, source)) = socket.recv_from(&mut buf).await else { return };
        let opened = opener.lock().unwrap_or_else(|it| it.into_inner()).open(link, &buf[..n]);
        match opened {
            Ok(Opened::Fresh { from, incarnation }) => {
                if inputs.send(Input::Heartbeat { link, from, incarnation }).is_err() {
                    return;
                }
            }
            // Authentic, but the sender has not heard this run yet: it counts once it has.
            Ok(Opened::Unconfirmed { .. }) => {}
            Err(refusal) => drop_traffic(&dropped, &inputs, Traffic::Heartbeat, &refusal, source),
        }
    }
}

/// Accepts peer channels on one link until the listener fails.
pub async fn accept_channels(
    listener: TcpListener,
    link: usize,
    me: Identity,
    next_conn: Arc<AtomicU64>,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    loop {
        let Ok((stream, source)) = listener.accept().await else { return };
        let (me, inputs, dropped) = (me.clone(), inputs.clone(), dropped.clone());
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match handshake(stream, &me, None).await {
                Ok(established) => start_channel(established, link, conn, source, inputs, dropped),
                Err(NetError::Refused(refusal)) => drop_traffic(&dropped, &inputs, Traffic::Frame, &refusal, source),
                // Closed or stalled before a whole frame came: nothing was received to drop.
                Err(NetError::Io(_)) => {}
            }
        });
    }
}

/// Dials `peer` at `addr`; reports `ChannelUp` or `ChannelDown` with `conn`.
pub async fn dial(
    addr: SocketAddr,
    peer: NodeId,
    link: usize,
    conn: u64,
    me: Identity,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| NetError::Io(e.to_string()))?;
        handshake(stream, &me, Some(peer)).await
    };
    match tokio::time::timeout(me.handshake_timeout, attempt).await {
        Ok(Ok(established)) => start_channel(established, link, conn, addr, inputs, dropped),
        Ok(Err(NetError::Refused(refusal))) => {
            drop_traffic(&dropped, &inputs, Traffic::Frame, &refusal, addr);
            let _ = inputs.send(Input::ChannelDown { peer, conn });
        }
        Ok(Err(NetError::Io(error))) => {
            tracing::debug!("channel to node #{} at {addr} failed: {error}", peer.0);
            let _ = inputs.send(Input::ChannelDown { peer, conn });
        }
        Err(_) => {
            tracing::debug!("channel to node #{} at {addr}: the handshake timed out", peer.0);
            let _ = inputs.send(Input::ChannelDown { peer, conn });
        }
    }
}

/// Why a connection ended or was refused.
#[derive(Debug)]
enum NetError {
    /// The connection closed, failed or stalled: not traffic to drop.
    Io(String),
    /// Bytes that were received and refused: counted.
    Refused(Refusal),
}

fn refused(reason: DropReason, detail: impl Into<String>) -> NetError {
    NetError::Refused(Refusal { reason, detail: detail.into() })
}

/// A connection after a successful handshake.
struct Established {
    stream: TcpStream,
    peer: NodeId,
    incarnation: Incarnation,
    sealer: FrameSealer,
    opener: FrameOpener,
}

/// Both sides send their Hello, then their Confirm, and read the other's; see the module
/// docs. `expect` is the peer a dialer meant to reach.
async fn handshake(mut stream: TcpStream, me: &Identity, expect: Option<NodeId>) -> Result<Established, NetError> {
    stream.set_nodelay(true).map_err(|e| NetError::Io(e.to_string()))?;
    let mut nonce = [0u8; wire::HELLO_NONCE_LEN];
    auth::fill_random(&mut nonce);
    let mine = Hello {
        cluster: me.auth.cluster_id(),
        from: me.me,
        to: expect.unwrap_or(wire::ANY_NODE),
        incarnation: me.incarnation,
        nonce,
    };
    let my_frame = wire::encode_hello_frame(&mine);
    let exchange = async {
        stream.write_all(&my_frame).await.map_err(|e| NetError::Io(e.to_string()))?;
        let (header, theirs_bytes) = read_frame(&mut stream, MAX_HANDSHAKE_FRAME).await?;
        if header.kind != FrameKind::Hello || header.counter != 0 {
            return Err(refused(
                DropReason::Malformed,
                format!("a {:?} frame where a Hello was expected", header.kind),
            ));
        }
        let theirs = wire::decode_hello(&theirs_bytes).map_err(|e| refused(DropReason::Malformed, e.to_string()))?;
        if theirs.cluster != me.auth.cluster_id() {
            return Err(refused(DropReason::Foreign, format!("a Hello for cluster id {:016x}", theirs.cluster)));
        }
        if !me.peers.contains(&theirs.from) {
            return Err(refused(DropReason::UnknownSender, format!("a Hello from node #{}", theirs.from.0)));
        }
        if (theirs.to != me.me && theirs.to != wire::ANY_NODE) || expect.is_some_and(|it| it != theirs.from) {
            return Err(refused(
                DropReason::Foreign,
                format!(
                    "a Hello from node #{} to node #{}: not the connection this node meant",
                    theirs.from.0, theirs.to.0
                ),
            ));
        }
        let my_payload = &my_frame[wire::FRAME_HEADER_LEN..];
        let (dialer_hello, acceptor_hello) =
            if expect.is_some() { (my_payload, &theirs_bytes[..]) } else { (&theirs_bytes[..], my_payload) };
        let (mut sealer, mut opener) = auth::channel_keys(&me.auth, dialer_hello, acceptor_hello, expect.is_some());
        stream.write_all(&sealer.confirm()).await.map_err(|e| NetError::Io(e.to_string()))?;
        let (header, mut confirm) = read_frame(&mut stream, MAX_HANDSHAKE_FRAME).await?;
        opener.open(&header, &mut confirm).map_err(|it| NetError::Refused(it.refusal))?;
        Ok((theirs, sealer, opener))
    };
    let (theirs, sealer, opener) = tokio::time::timeout(me.handshake_timeout, exchange)
        .await
        .map_err(|_| NetError::Io("handshake timed out".into()))??;
    Ok(Established { stream, peer: theirs.from, incarnation: theirs.incarnation, sealer, opener })
}

/// Reads one frame: its header, then a payload of at most `max_len` bytes.
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    max_len: usize,
) -> Result<(FrameHeader, Vec<u8>), NetError> {
    let mut header = [0u8; wire::FRAME_HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(|e| NetError::Io(e.to_string()))?;
    let header = wire::decode_frame_header(header).map_err(|e| refused(DropReason::Malformed, e.to_string()))?;
    if header.len > max_len {
        return Err(refused(
            DropReason::Malformed,
            format!("a {:?} frame of {} bytes during the handshake", header.kind, header.len),
        ));
    }
    let mut payload = vec![0u8; header.len];
    stream.read_exact(&mut payload).await.map_err(|e| NetError::Io(e.to_string()))?;
    Ok((header, payload))
}

fn start_channel(
    established: Established,
    link: usize,
    conn: u64,
    source: SocketAddr,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    let Established { stream, peer, incarnation, mut sealer, mut opener } = established;
    let socket = {
        use std::os::fd::AsFd;
        stream.as_fd().try_clone_to_owned().ok().map(Arc::new)
    };
    let (mut read, mut write) = stream.into_split();
    let (writer, mut bodies) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let down = inputs.clone();
    let write_task = tokio::spawn(async move {
        while let Some(body) = bodies.recv().await {
            // Sealed here, off the event loop, in the order the loop sent them.
            if write.write_all(&sealer.seal_group(&body)).await.is_err() {
                break;
            }
        }
        let _ = down.send(Input::ChannelDown { peer, conn });
    });
    let up = inputs.clone();
    let read_task = tokio::spawn(async move {
        loop {
            let (header, mut payload) = match read_frame(&mut read, wire::MAX_FRAME).await {
                Ok(frame) => frame,
                Err(NetError::Refused(refusal)) => {
                    drop_traffic(&dropped, &inputs, Traffic::Frame, &refusal, source);
                    break;
                }
                Err(NetError::Io(_)) => break,
            };
            match opener.open(&header, &mut payload) {
                Ok(plain) => match wire::decode_group(plain) {
                    Ok(GroupFrame { group, epoch, msg }) => {
                        if inputs.send(Input::Frame { peer, conn, group, epoch, msg }).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Authentic but not understood (a peer of another build?): the
                        // stream may be missing a message now, so it ends.
                        let refusal = Refusal { reason: DropReason::Malformed, detail: format!("group message: {e}") };
                        drop_traffic(&dropped, &inputs, Traffic::Frame, &refusal, source);
                        break;
                    }
                },
                Err(refused) => {
                    drop_traffic(&dropped, &inputs, Traffic::Frame, &refused.refusal, source);
                    if refused.fatal {
                        break;
                    }
                }
            }
        }
        let _ = inputs.send(Input::ChannelDown { peer, conn });
    });
    let channel = Channel {
        peer,
        incarnation,
        link,
        conn,
        writer,
        tasks: [read_task.abort_handle(), write_task.abort_handle()],
        socket,
    };
    let _ = up.send(Input::ChannelUp { channel });
}

/// When every link address of this node sits on an interface that is down (not UP, or no
/// carrier), what is down, e.g. `"10.0.0.1 on eth0 (no carrier)"`; `None` when any link
/// is up or cannot be told (a wildcard address, an address not found). A node whose own
/// links are all down is the isolated one: its silent peer is most likely alive.
pub fn own_links_all_down(links: &[std::net::SocketAddr]) -> Option<String> {
    use nix::net::if_::InterfaceFlags;
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().ok()?.collect();
    let mut down = Vec::new();
    for link in links {
        let ip = link.ip();
        let found = addrs.iter().find(|it| {
            it.address.as_ref().is_some_and(|a| {
                a.as_sockaddr_in().map(|v4| std::net::IpAddr::V4(v4.ip())) == Some(ip)
                    || a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())) == Some(ip)
            })
        })?;
        let up = found.flags.contains(InterfaceFlags::IFF_UP);
        let running = found.flags.contains(InterfaceFlags::IFF_RUNNING);
        if up && running {
            return None;
        }
        down.push(format!("{ip} on {} ({})", found.interface_name, if up { "no carrier" } else { "down" }));
    }
    (!down.is_empty()).then(|| down.join(", "))
}

#[cfg(test)]
mod own_links_tests {
    use super::own_links_all_down;

    #[test]
    fn loopback_links_are_up_and_unknown_addresses_are_not_judged() {
        assert_eq!(own_links_all_down(&["127.0.0.1:7100".parse().unwrap()]), None);
        assert_eq!(own_links_all_down(&["0.0.0.0:7100".parse().unwrap()]), None);
        assert_eq!(own_links_all_down(&["192.0.2.77:7100".parse().unwrap()]), None);
        assert_eq!(own_links_all_down(&[]), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: DropReason) -> Refusal {
        Refusal { reason, detail: "test".into() }
    }

    #[tokio::test]
    async fn drops_are_counted_by_traffic_and_reason_and_warned_about_once_in_a_while() {
        let dropped = Dropped::default();
        let source: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let first = dropped.count(Traffic::Heartbeat, &refusal(DropReason::BadTag), source).expect("the first warns");
        assert!(first.contains("a heartbeat from 127.0.0.1:9: bad_tag"), "{first}");
        assert_eq!(dropped.count(Traffic::Heartbeat, &refusal(DropReason::BadTag), source), None, "rate-limited");
        assert!(dropped.count(Traffic::Frame, &refusal(DropReason::BadTag), source).is_some(), "frames warn apart");
        assert!(dropped.count(Traffic::Heartbeat, &refusal(DropReason::Replay), source).is_some());
        assert_eq!(dropped.heartbeats.load(Ordering::Relaxed), 3);
        assert_eq!(dropped.frames.load(Ordering::Relaxed), 1);
        assert_eq!(dropped.by_reason(DropReason::BadTag), 3);
        assert_eq!(dropped.by_reason(DropReason::Replay), 1);
        assert_eq!(dropped.by_reason(DropReason::Malformed), 0);
    }
}
