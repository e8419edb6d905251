//! Sockets: UDP heartbeat receivers (one per link) and the TCP peer channel (accepting,
//! dialing, the handshake, and a reader and a writer task per connection).
//!
//! Every task only turns bytes into [`Input`]s for the event loop or [`Input`]s into
//! bytes; none decides anything. Malformed traffic is counted and dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use takeover_core::node::GroupIndex;
use takeover_core::{Incarnation, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::wire::{self, Frame};

/// Frames a connection may queue before it is considered stuck and closed.
pub const WRITE_QUEUE: usize = 4096;

/// What the network tasks tell the event loop.
#[derive(Debug)]
pub enum Input {
    Heartbeat {
        link: usize,
        from: NodeId,
        incarnation: Incarnation,
    },
    ChannelUp {
        channel: Channel,
    },
    ChannelDown {
        peer: NodeId,
        conn: u64,
    },
    Frame {
        peer: NodeId,
        conn: u64,
        group: GroupIndex,
        epoch: takeover_core::Epoch,
        msg: takeover_core::group::Message,
    },
}

/// An established peer channel.
#[derive(Debug)]
pub struct Channel {
    pub peer: NodeId,
    pub incarnation: Incarnation,
    pub link: usize,
    pub conn: u64,
    pub writer: mpsc::Sender<Vec<u8>>,
    pub tasks: [AbortHandle; 2],
}

impl Channel {
    pub fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counters of dropped traffic, shared with the tasks.
#[derive(Debug, Default)]
pub struct Dropped {
    pub heartbeats: AtomicU64,
    pub frames: AtomicU64,
}

/// Who this node is on the wire.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster: u64,
    pub me: NodeId,
    pub incarnation: Incarnation,
    pub peers: Vec<NodeId>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// Receives heartbeats on one link's socket until the socket fails.
pub async fn receive_heartbeats(
    socket: Arc<UdpSocket>,
    link: usize,
    me: Identity,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, _from)) = socket.recv_from(&mut buf).await else { return };
        match wire::decode_heartbeat(&buf[..n]) {
            Ok(hb)
                if hb.cluster == me.cluster
                    && hb.to == me.me
                    && hb.link as usize == link
                    && me.peers.contains(&hb.from) =>
            {
                if inputs.send(Input::Heartbeat { link, from: hb.from, incarnation: hb.incarnation }).is_err() {
                    return;
                }
            }
            _ => {
                dropped.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
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
        let Ok((stream, _)) = listener.accept().await else { return };
        let (me, inputs, dropped) = (me.clone(), inputs.clone(), dropped.clone());
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match handshake(stream, &me, None).await {
                Ok((stream, peer, incarnation)) => {
                    start_channel(stream, peer, incarnation, link, conn, inputs, dropped)
                }
                Err(_) => {
                    dropped.frames.fetch_add(1, Ordering::Relaxed);
                }
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
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        handshake(stream, &me, Some(peer)).await
    };
    match tokio::time::timeout(me.handshake_timeout, attempt).await {
        Ok(Ok((stream, from, incarnation))) => start_channel(stream, from, incarnation, link, conn, inputs, dropped),
        _ => {
            let _ = inputs.send(Input::ChannelDown { peer, conn });
        }
    }
}

/// Both sides send their Hello, then read the other's. `expect` is the peer a dialer meant
/// to reach.
async fn handshake(
    mut stream: TcpStream,
    me: &Identity,
    expect: Option<NodeId>,
) -> Result<(TcpStream, NodeId, Incarnation), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let to = expect.unwrap_or(NodeId(u16::MAX));
    let hello = Frame::Hello { cluster: me.cluster, from: me.me, to, incarnation: me.incarnation };
    let exchange = async {
        stream.write_all(&wire::encode_frame(&hello)).await.map_err(|e| e.to_string())?;
        read_frame(&mut stream).await
    };
    let frame = tokio::time::timeout(me.handshake_timeout, exchange).await.map_err(|_| "handshake timed out")??;
    match frame {
        Frame::Hello { cluster, from, to, incarnation }
            if cluster == me.cluster
                && (to == me.me || to == NodeId(u16::MAX))
                && me.peers.contains(&from)
                && expect.is_none_or(|it| it == from) =>
        {
            Ok((stream, from, incarnation))
        }
        other => Err(format!("unexpected handshake {other:?}")),
    }
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<Frame, String> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.map_err(|e| e.to_string())?;
    let (len, crc) = wire::decode_frame_header(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    wire::decode_frame_body(&body, crc).map_err(|e| e.to_string())
}

fn start_channel(
    stream: TcpStream,
    peer: NodeId,
    incarnation: Incarnation,
    link: usize,
    conn: u64,
    inputs: mpsc::UnboundedSender<Input>,
    dropped: Arc<Dropped>,
) {
    let (mut read, mut write) = stream.into_split();
    let (writer, mut frames) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let down = inputs.clone();
    let write_task = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = down.send(Input::ChannelDown { peer, conn });
    });
    let up = inputs.clone();
    let read_task = tokio::spawn(async move {
        loop {
            match read_frame(&mut read).await {
                Ok(Frame::Group { group, epoch, msg }) => {
                    if inputs.send(Input::Frame { peer, conn, group, epoch, msg }).is_err() {
                        return;
                    }
                }
                Ok(Frame::Hello { .. }) => {
                    dropped.frames.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        let _ = inputs.send(Input::ChannelDown { peer, conn });
    });
    let channel =
        Channel { peer, incarnation, link, conn, writer, tasks: [read_task.abort_handle(), write_task.abort_handle()] };
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
