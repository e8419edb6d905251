//! A virtual IP address (F1.2): an IPv4 or IPv6 address added to an interface through
//! netlink and announced, so that clients switch to this node at once instead of waiting
//! for their neighbour cache to expire.
//!
//! - **start**: resolves the interface (it must exist, be up and have a carrier), adds
//!   `address/prefix_len` with `RTM_NEWADDR` + `NLM_F_REPLACE` (so adding an address that
//!   is already there succeeds), then announces it `announce_count` times,
//!   `announce_interval` apart. IPv6 addresses are added with `IFA_F_NODAD`: a VIP moves
//!   between nodes whose exclusivity the cluster guarantees (fencing), and a tentative
//!   address would neither answer nor be announceable for the ~1 s DAD takes.
//! - **Announcements**: IPv4: a gratuitous ARP request *and* reply per round (sender =
//!   target = the VIP, from the interface's MAC, to the broadcast address; the reply's
//!   target MAC is ours too, as Linux requires to treat a reply as gratuitous), two
//!   28-byte ARP bodies on an `AF_PACKET`/`SOCK_DGRAM` socket (the kernel adds the
//!   Ethernet header). IPv6: an unsolicited neighbour advertisement (ICMPv6 type 136,
//!   override flag set, solicited flag clear, target = the VIP, target link-layer address
//!   option) to ff02::1 with hop limit 255, from the VIP itself, on a raw ICMPv6 socket
//!   (the kernel fills in the checksum). Receivers update an existing neighbour entry
//!   (Linux: `arp_accept`/`accept_untracked_na` only matter for creating one). Interfaces
//!   without ARP (not Ethernet, or `NOARP`) get no announcements.
//! - **When start returns**: once the address is added and the *first* announcement is
//!   sent. The remaining `announce_count - 1` are sent by a tokio task spawned on the
//!   runtime that ran the start (the agent's, which runs all the time) and owned by the
//!   [`Vip`]: stop, a new start and dropping the [`Vip`] abort it. This keeps start short
//!   (a few milliseconds instead of `(count - 1) * interval`, which would eat into the
//!   start timeout and delay the next resource of the group), while the first
//!   announcement, the one that matters, is done when start reports success. The sockets
//!   are made by start, so the task sends from the right network namespace whatever
//!   thread runs it. A send failure after the first is logged, not reported.
//! - **stop**: aborts pending announcements, deletes every instance of the address on the
//!   interface (whatever its prefix length), and checks it is gone. An absent address,
//!   or a missing interface (which takes its addresses with it), is success.
//! - **monitor**: `Failed` if the interface is missing, administratively down or without
//!   carrier (the address could not be reached there), or if IPv6 duplicate address
//!   detection failed on it; otherwise `Ok` if the address is on the interface and
//!   `NotRunning` if it is not.
//! - **check** (F2.3): validates the spec (prefix length for the family, a unicast
//!   address, an interface name), then looks the interface up: it must exist, be up and
//!   have a carrier (and, for IPv6, have IPv6 enabled). Notes the index, the MAC and how
//!   the address will be announced. Changes nothing.
//!
//! Netlink: every operation opens its own rtnetlink socket and drives the connection
//! inside its own future (`select!` against the request), so nothing is spawned for it
//! and dropping the operation's future (a timeout) closes the socket. Everything happens
//! in the network namespace of the thread polling the operation: the agent runs inside the
//! node's namespace. Needs CAP_NET_ADMIN (addresses) and CAP_NET_RAW (announcements).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::time::Instant;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::task::JoinHandle;

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};

/// A virtual IP address (F1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
    /// The interface to add it to (e.g. "eth0").
    pub interface: String,
    /// Gratuitous ARP / unsolicited neighbour advertisements sent after adding it.
    pub announce_count: u32,
    pub announce_interval: std::time::Duration,
}

/// Longest interface name (IFNAMSIZ less the NUL).
const MAX_IFNAME: usize = 15;

impl VipSpec {
    /// What is wrong with the spec itself, without looking at the system; empty if nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let (family, max) = match self.address {
            IpAddr::V4(_) => ("IPv4", 32),
            IpAddr::V6(_) => ("IPv6", 128),
        };
        if self.prefix_len > max {
            problems.push(format!("prefix length {} is too long for {family} (at most {max})", self.prefix_len));
        }
        let address = self.address;
        if address.is_unspecified() || address.is_multicast() || address == IpAddr::V4(Ipv4Addr::BROADCAST) {
            problems.push(format!("{address} is not a unicast address"));
        }
        let name = &self.interface;
        if name.is_empty()
            || name.len() > MAX_IFNAME
            || name == "."
            || name == ".."
            || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            problems.push(format!(
                "{name:?} is not a valid interface name (1 to {MAX_IFNAME} bytes, no '/', ':' or spaces)"
            ));
        }
        problems
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

/// Removes `spec`'s address from its interface if it is there (the guard's clean-up, run
/// outside any group).
pub async fn release(spec: VipSpec) -> Result<(), String> {
    Vip::new(spec).stop_inner().await
}

pub struct Vip {
    spec: VipSpec,
    /// The task sending announcements 2..=count of the last start, if still running.
    announcer: Option<JoinHandle<()>>,
}

impl Vip {
    pub fn new(spec: VipSpec) -> Self {
        Vip { spec, announcer: None }
    }

    fn stop_announcing(&mut self) {
        if let Some(task) = self.announcer.take() {
            task.abort();
        }
    }

    async fn start_inner(&mut self, ctx: &Ctx) -> Result<(), String> {
        let problems = self.spec.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        // Starting a running VIP announces it afresh.
        self.stop_announcing();
        let spec = self.spec.clone();
        let link = with_netlink(|handle| async move {
            let link = usable_link(&handle, &spec.interface).await?;
            add_address(&handle, link.index, &spec).await?;
            Ok(link)
        })
        .await?;
        let spec = &self.spec;
        if spec.announce_count == 0 {
            return Ok(());
        }
        let Some(mac) = link.announce_mac() else {
            tracing::info!(
                group = %ctx.group, resource = %ctx.resource,
                "{} uses no ARP/neighbour discovery: {} is not announced", spec.interface, spec.address
            );
            return Ok(());
        };
        let announcer = Announcer::new(spec.address, link.index, mac)
            .map_err(|e| format!("cannot open a socket to announce {} on {}: {e}", spec.address, spec.interface))?;
        announcer.send().map_err(|e| {
            format!(
                "{} was added to {} but announcing it ({}) failed: {e}",
                spec.cidr(),
                spec.interface,
                announcer.what
            )
        })?;
        let remaining = spec.announce_count - 1;
        if remaining > 0 {
            let interval = spec.announce_interval;
            let (group, resource) = (ctx.group.clone(), ctx.resource.clone());
            self.announcer = Some(tokio::spawn(async move {
                for _ in 0..remaining {
                    tokio::time::sleep(interval).await;
                    if let Err(e) = announcer.send() {
                        tracing::warn!(%group, %resource, "{} failed: {e}", announcer.what);
                    }
                }
            }));
        }
        Ok(())
    }

    async fn stop_inner(&mut self) -> Result<(), String> {
        self.stop_announcing();
        let spec = self.spec.clone();
        with_netlink(|handle| async move {
            let Some(link) = find_link(&handle, &spec.interface).await? else {
                // The interface took its addresses with it.
                return Ok(());
            };
            for found in vip_addresses(&handle, link.index, spec.address).await? {
                let mut request = AddressMessage::default();
                request.header = found.header.clone();
                request.attributes = found
                    .attributes
                    .into_iter()
                    .filter(|it| matches!(it, AddressAttribute::Address(_) | AddressAttribute::Local(_)))
                    .collect();
                match handle.address().del(request).execute().await {
                    Ok(()) => {}
                    Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot remove {} from {}: {}",
                            spec.address,
                            spec.interface,
                            describe(&e, spec.address)
                        ));
                    }
                }
            }
            if !vip_addresses(&handle, link.index, spec.address).await?.is_empty() {
                return Err(format!("{} is still on {} after removing it", spec.address, spec.interface));
            }
            Ok(())
        })
        .await
    }

    async fn monitor_inner(&self) -> OpOutcome {
        let spec = &self.spec;
        let checked = with_netlink(|handle| async move {
            let link = usable_link(&handle, &spec.interface).await?;
            let found = vip_addresses(&handle, link.index, spec.address).await?;
            if found.iter().any(|it| address_flags(it).contains(AddressFlags::Dadfailed)) {
                return Err(format!("duplicate address detection failed for {} on {}", spec.address, spec.interface));
            }
            Ok(!found.is_empty())
        })
        .await;
        match checked {
            Ok(true) => OpOutcome::Ok,
            Ok(false) => OpOutcome::NotRunning,
            Err(e) => OpOutcome::Failed(e),
        }
    }

    async fn check_inner(&self) -> PlanCheck {
        let spec = &self.spec;
        let mut notes = spec.problems();
        if !notes.is_empty() {
            return PlanCheck { ok: false, notes };
        }
        let looked = with_netlink(|handle| async move {
            let Some(link) = find_link(&handle, &spec.interface).await? else {
                return Ok((None, false));
            };
            let present = !vip_addresses(&handle, link.index, spec.address).await?.is_empty();
            Ok((Some(link), present))
        })
        .await;
        let (link, present) = match looked {
            Ok((Some(link), present)) => (link, present),
            Ok((None, _)) => {
                notes.push(format!("interface {} does not exist", spec.interface));
                return PlanCheck { ok: false, notes };
            }
            Err(e) => {
                notes.push(e);
                return PlanCheck { ok: false, notes };
            }
        };
        let mut ok = true;
        let mac = link.mac.as_ref().map_or_else(|| "no MAC".to_string(), fmt_mac);
        let state = match link.down_reason(&spec.interface) {
            None => "up".to_string(),
            Some(reason) => {
                ok = false;
                reason
            }
        };
        notes.push(format!("interface {}: index {}, MAC {mac}, {state}", spec.interface, link.index));
        if spec.address.is_ipv6() {
            let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.interface);
            match std::fs::read_to_string(&path) {
                Ok(text) if text.trim() == "0" => {}
                Ok(_) => {
                    ok = false;
                    notes.push(format!("IPv6 is disabled on {}", spec.interface));
                }
                Err(e) => {
                    ok = false;
                    notes.push(format!("IPv6 is not available on {} ({path}: {e})", spec.interface));
                }
            }
        }
        let announce = match (spec.announce_count, link.announce_mac()) {
            (0, _) => "not announced (announce_count = 0)".to_string(),
            (_, None) => format!("not announced ({} uses no ARP/neighbour discovery)", spec.interface),
            (count, Some(_)) => {
                let how = if spec.address.is_ipv4() {
                    "gratuitous ARP (request and reply)"
                } else {
                    "unsolicited neighbour advertisement"
                };
                format!("announced by {how} {count} time(s), {:?} apart", spec.announce_interval)
            }
        };
        notes.push(format!("{}: {announce}", spec.cidr()));
        if present {
            notes.push(format!("{} is on {} already", spec.address, spec.interface));
        }
        PlanCheck { ok, notes }
    }
}

impl Drop for Vip {
    fn drop(&mut self) {
        self.stop_announcing();
    }
}

impl Resource for Vip {
    fn start<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            match self.start_inner(ctx).await {
                Ok(()) => {
                    tracing::info!(
                        group = %ctx.group, resource = %ctx.resource,
                        "added {} to {} in {:?}", self.spec.cidr(), self.spec.interface, started.elapsed()
                    );
                    OpOutcome::Ok
                }
                Err(e) => OpOutcome::Failed(e),
            }
        })
    }

    fn stop<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            match self.stop_inner().await {
                Ok(()) => {
                    tracing::info!(
                        group = %ctx.group, resource = %ctx.resource,
                        "{} is not on {}", self.spec.address, self.spec.interface
                    );
                    OpOutcome::Ok
                }
                Err(e) => OpOutcome::Failed(e),
            }
        })
    }

    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(self.monitor_inner())
    }

    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(self.check_inner())
    }
}

// ---------------------------------------------------------------------------------------
// Netlink
// ---------------------------------------------------------------------------------------

/// Runs `work` with a fresh rtnetlink connection, driving the connection in this same
/// future: nothing is spawned, and dropping the future closes the socket.
async fn with_netlink<T, F, W>(work: W) -> Result<T, String>
where
    W: FnOnce(Handle) -> F,
    F: Future<Output = Result<T, String>>,
{
    let (connection, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    tokio::select! {
        result = work(handle) => result,
        () = connection => Err("the netlink connection ended unexpectedly".to_string()),
    }
}

/// The positive errno of a netlink error.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// A netlink error, with a hint for the usual causes.
fn describe(e: &rtnetlink::Error, address: IpAddr) -> String {
    let text = match e {
        rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
        other => other.to_string(),
    };
    match errno(e) {
        Some(libc::EPERM) => format!("{text} (needs CAP_NET_ADMIN)"),
        Some(libc::EACCES) if address.is_ipv6() => format!("{text} (is IPv6 disabled on the interface?)"),
        _ => text,
    }
}

/// What the operations need to know of an interface.
#[derive(Clone, Debug)]
struct LinkInfo {
    index: u32,
    up: bool,
    carrier: bool,
    arp: bool,
    mac: Option<[u8; 6]>,
}

impl LinkInfo {
    fn from_message(message: &LinkMessage) -> LinkInfo {
        let flags = message.header.flags;
        let mac = message.attributes.iter().find_map(|it| match it {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        LinkInfo {
            index: message.header.index,
            up: flags.contains(LinkFlags::Up),
            carrier: flags.contains(LinkFlags::LowerUp),
            arp: message.header.link_layer_type == LinkLayerType::Ether && !flags.contains(LinkFlags::Noarp),
            mac,
        }
    }

    /// Why the address could not be reached on it, if it could not.
    fn down_reason(&self, name: &str) -> Option<String> {
        if !self.up {
            Some(format!("interface {name} is down"))
        } else if !self.carrier {
            Some(format!("interface {name} has no carrier"))
        } else {
            None
        }
    }

    /// The MAC to announce with, if the interface does ARP/neighbour discovery.
    fn announce_mac(&self) -> Option<[u8; 6]> {
        if self.arp { self.mac } else { None }
    }
}

/// The interface called `name`, or `None` if there is none.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkInfo>, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(message)) => Ok(Some(LinkInfo::from_message(&message))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(format!("cannot look up interface {name}: {e}")),
    }
}

/// The interface called `name`, which must exist, be up and have a carrier.
async fn usable_link(handle: &Handle, name: &str) -> Result<LinkInfo, String> {
    let link = find_link(handle, name).await?.ok_or_else(|| format!("interface {name} does not exist"))?;
    match link.down_reason(name) {
        Some(reason) => Err(reason),
        None => Ok(link),
    }
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

/// Every instance of `address` on interface `index` (any prefix length).
async fn vip_addresses(handle: &Handle, index: u32, address: IpAddr) -> Result<Vec<AddressMessage>, String> {
    let mut request = handle.address().get();
    request.message_mut().header.family = family(address);
    let found = request.set_link_index_filter(index).set_address_filter(address).execute();
    found.try_collect().await.map_err(|e| format!("cannot list the addresses of interface {index}: {e}"))
}

fn address_flags(message: &AddressMessage) -> AddressFlags {
    let from_header = AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()));
    message.attributes.iter().fold(from_header, |flags, it| match it {
        AddressAttribute::Flags(more) => flags | *more,
        _ => flags,
    })
}

/// `ip address replace ADDRESS/PREFIX dev INDEX` (`nodad` for IPv6).
async fn add_address(handle: &Handle, index: u32, spec: &VipSpec) -> Result<(), String> {
    let mut request = handle.address().add(index, spec.address, spec.prefix_len);
    if spec.address.is_ipv6() {
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request
        .replace()
        .execute()
        .await
        .map_err(|e| format!("cannot add {} to {}: {}", spec.cidr(), spec.interface, describe(&e, spec.address)))
}

// ---------------------------------------------------------------------------------------
// Announcements
// ---------------------------------------------------------------------------------------

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// `ICMP6_FILTER` of `<netinet/icmp6.h>` (not in the libc crate).
const ICMP6_FILTER: libc::c_int = 1;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINKADDR: u8 = 2;

/// A 28-byte ARP body for Ethernet/IPv4, gratuitous: sender = target = `address`. A reply
/// carries our MAC as target too (Linux treats a reply as gratuitous only then); a request
/// leaves it zero.
fn gratuitous_arp(op: u16, mac: [u8; 6], address: Ipv4Addr) -> [u8; 28] {
    let mut body = [0u8; 28];
    body[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    body[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    body[4] = 6;
    body[5] = 4;
    body[6..8].copy_from_slice(&op.to_be_bytes());
    body[8..14].copy_from_slice(&mac);
    body[14..18].copy_from_slice(&address.octets());
    if op == ARP_REPLY {
        body[18..24].copy_from_slice(&mac);
    }
    body[24..28].copy_from_slice(&address.octets());
    body
}

/// An unsolicited neighbour advertisement (RFC 4861 4.4) for `target`: override set,
/// router and solicited clear, with the target link-layer address option. The checksum
/// is left zero: the kernel computes it for raw ICMPv6 sockets.
fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut message = [0u8; 32];
    message[0] = ND_NEIGHBOR_ADVERT;
    message[4] = ND_NA_FLAG_OVERRIDE;
    message[8..24].copy_from_slice(&target.octets());
    message[24] = ND_OPT_TARGET_LINKADDR;
    message[25] = 1; // in units of 8 bytes
    message[26..32].copy_from_slice(&mac);
    message
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `sockaddr_ll` for the Ethernet broadcast address on interface `index`, ARP.
fn arp_broadcast(index: u32) -> io::Result<SockAddr> {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a sockaddr type of this platform and fits the storage.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    ll.sll_ifindex = i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))?;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    Ok(unsafe { SockAddr::new(storage, len) })
}

/// A socket and the frames of one announcement round.
struct Announcer {
    socket: Socket,
    destination: SockAddr,
    frames: Vec<Vec<u8>>,
    /// What it sends, for messages.
    what: String,
}

impl Announcer {
    /// Opens the socket (in the calling thread's network namespace) and builds the frames.
    fn new(address: IpAddr, index: u32, mac: [u8; 6]) -> io::Result<Announcer> {
        match address {
            IpAddr::V4(address) => {
                // Protocol 0: the socket receives nothing; each send names ETH_P_ARP.
                let socket = Socket::new(Domain::PACKET, Type::DGRAM, None)?;
                socket.set_nonblocking(true)?;
                Ok(Announcer {
                    socket,
                    destination: arp_broadcast(index)?,
                    frames: vec![
                        gratuitous_arp(ARP_REQUEST, mac, address).to_vec(),
                        gratuitous_arp(ARP_REPLY, mac, address).to_vec(),
                    ],
                    what: format!("gratuitous ARP for {address} from {}", fmt_mac(&mac)),
                })
            }
            IpAddr::V6(address) => {
                let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
                socket.set_nonblocking(true)?;
                socket.set_multicast_hops_v6(255)?;
                socket.set_unicast_hops_v6(255)?;
                socket.set_multicast_if_v6(index)?;
                socket.set_multicast_loop_v6(false)?;
                block_all_icmpv6(&socket)?;
                let scope = if address.is_unicast_link_local() { index } else { 0 };
                socket.bind(&SocketAddrV6::new(address, 0, 0, scope).into())?;
                let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                Ok(Announcer {
                    socket,
                    destination: SocketAddrV6::new(all_nodes, 0, 0, index).into(),
                    frames: vec![unsolicited_na(mac, address).to_vec()],
                    what: format!("unsolicited neighbour advertisement for {address} from {}", fmt_mac(&mac)),
                })
            }
        }
    }

    /// Sends one round.
    fn send(&self) -> io::Result<()> {
        for frame in &self.frames {
            self.socket.send_to(frame, &self.destination)?;
        }
        Ok(())
    }
}

/// The announcer only sends: filter out every ICMPv6 message it would otherwise queue.
fn block_all_icmpv6(socket: &Socket) -> io::Result<()> {
    // On Linux a set bit blocks the type.
    let filter = [u32::MAX; 8];
    // SAFETY: setsockopt reads `size_of_val(&filter)` bytes from a live array.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Frame layouts and spec checks run everywhere. The rest needs root: without it each
    //! test prints `SKIPPED (needs root): NAME` and passes, unless `CI=true`, where a skip
    //! fails. Each root test has its own [`Netbed`] (prefix `tvipN`, slot 40 + N), runs
    //! every [`Vip`] on a thread that joined a node's network namespace (like the agent,
    //! which runs inside it) and leaves no namespace behind, also when it fails.

    use super::*;
    use crate::netbed::{CLIENT, Netbed};
    use std::fs::File;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;
    use takeover_core::Epoch;

    /// Deadline for what must happen.
    const T: Duration = Duration::from_secs(10);
    /// How soon after the new node's start the client must use its MAC.
    const SWITCH: Duration = Duration::from_secs(1);

    fn spec(address: IpAddr, prefix_len: u8, interface: &str, count: u32, interval: Duration) -> VipSpec {
        VipSpec { address, prefix_len, interface: interface.into(), announce_count: count, announce_interval: interval }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // -----------------------------------------------------------------------------------
    // Without root
    // -----------------------------------------------------------------------------------

    #[test]
    fn gratuitous_arp_bodies() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip = Ipv4Addr::new(10, 200, 80, 100);
        let request = gratuitous_arp(ARP_REQUEST, mac, ip);
        assert_eq!(
            request,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 200, 80, 100, 0, 0, 0, 0, 0, 0, 10,
                200, 80, 100
            ]
        );
        let reply = gratuitous_arp(ARP_REPLY, mac, ip);
        assert_eq!(reply[6..8], [0, 2]);
        assert_eq!(reply[18..24], mac, "a gratuitous reply names our MAC as target too");
        assert_eq!(reply[24..28], ip.octets());
    }

    #[test]
    fn unsolicited_na_message() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let target: Ipv6Addr = "fd10:200:42::100".parse().unwrap();
        let na = unsolicited_na(mac, target);
        assert_eq!(na[0..4], [136, 0, 0, 0], "type, code, checksum (the kernel's)");
        assert_eq!(na[4], 0x20, "override only: not a router, not solicited");
        assert_eq!(na[5..8], [0, 0, 0]);
        assert_eq!(na[8..24], target.octets());
        assert_eq!(na[24..26], [2, 1], "target link-layer address option, 8 bytes");
        assert_eq!(na[26..32], mac);
    }

    #[test]
    fn arp_broadcast_address() {
        let addr = arp_broadcast(7).unwrap();
        assert_eq!(addr.family(), libc::AF_PACKET as libc::sa_family_t);
        assert_eq!(addr.len() as usize, std::mem::size_of::<libc::sockaddr_ll>());
        // SAFETY: a sockaddr_ll was written there.
        let ll = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_ll) };
        assert_eq!((ll.sll_ifindex, ll.sll_halen, u16::from_be(ll.sll_protocol)), (7, 6, libc::ETH_P_ARP as u16));
        assert_eq!(ll.sll_addr[..6], [0xff; 6]);
    }

    #[test]
    fn spec_problems() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(spec(v4, 32, "eth0", 3, ms(100)).problems().is_empty());
        assert!(spec(v4, 0, "eth0", 0, ms(0)).problems().is_empty());
        assert!(spec(v6, 128, "bond0.100", 3, ms(100)).problems().is_empty());
        let problems = |s: VipSpec| s.problems().join("; ");
        assert!(problems(spec(v4, 33, "eth0", 3, ms(100))).contains("prefix length 33 is too long for IPv4"));
        assert!(problems(spec(v6, 129, "eth0", 3, ms(100))).contains("prefix length 129 is too long for IPv6"));
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            let s = spec(bad.parse().unwrap(), 8, "eth0", 1, ms(1));
            assert!(problems(s).contains("not a unicast address"), "{bad}");
        }
        for bad in ["", "a-very-long-name0", "eth0/1", "eth 0", "eth0:1", ".."] {
            assert!(problems(spec(v4, 24, bad, 1, ms(1))).contains("not a valid interface name"), "{bad:?}");
        }
    }

    // -----------------------------------------------------------------------------------
    // Root helpers
    // -----------------------------------------------------------------------------------

    use crate::service::testutil::root_or_skip;

    /// A fresh bed with nodes `a` and `b` (and the client), or `None` (skipped) without root.
    fn bed(name: &str, prefix: &str, slot: u8, ipv6: bool) -> Option<Netbed> {
        if !root_or_skip(name) {
            return None;
        }
        Netbed::cleanup_stale(prefix).unwrap();
        let bed = if ipv6 {
            Netbed::create_ipv6(prefix, &["a", "b"], slot)
        } else {
            Netbed::create(prefix, &["a", "b"], slot)
        };
        Some(bed.unwrap())
    }

    /// Destroys the bed and checks no namespace of it is left.
    fn finish(bed: Netbed) {
        let prefix = bed.prefix().to_string();
        bed.destroy().unwrap();
        let listed = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&listed.stdout).contains(&format!("{prefix}-")));
    }

    fn join_netns(ns: &str) -> File {
        File::open(Path::new("/run/netns").join(ns)).unwrap_or_else(|e| panic!("cannot open namespace {ns}: {e}"))
    }

    fn setns(file: &File) {
        // SAFETY: plain syscall on a valid fd; it changes only the calling thread.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "{}", io::Error::last_os_error());
    }

    /// Runs `f` on a thread that joined namespace `ns`; sockets made there stay in `ns`.
    fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
        let file = join_netns(ns);
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file);
                    f()
                })
                .join()
                .unwrap()
        })
    }

    fn ctx(node: &str) -> Ctx {
        Ctx {
            node: node.into(),
            scope: node.into(),
            node_index: 0,
            group: "web".into(),
            resource: "vip".into(),
            state_dir: PathBuf::from("/nonexistent"),
            generation: Epoch::default(),
        }
    }

    enum Op {
        Start,
        Stop,
        Monitor,
        Check,
    }

    enum Reply {
        Outcome(OpOutcome),
        Plan(PlanCheck),
    }

    type Request = (Op, mpsc::Sender<(Reply, Duration)>);

    /// One [`Vip`] on its own thread inside a node's namespace, on a current_thread tokio
    /// runtime that runs all the time (as the agent's does), so its background
    /// announcements go on between operations. Dropping it drops the [`Vip`].
    struct VipHost {
        tx: Option<tokio::sync::mpsc::UnboundedSender<Request>>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl VipHost {
        fn new(ns: &str, spec: VipSpec) -> VipHost {
            let file = join_netns(ns);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
            let node = ns.to_string();
            let thread = thread::spawn(move || {
                setns(&file);
                drop(file);
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let mut vip = Vip::new(spec);
                    let ctx = ctx(&node);
                    while let Some((op, reply)) = rx.recv().await {
                        let started = Instant::now();
                        let result = match op {
                            Op::Start => Reply::Outcome(vip.start(&ctx).await),
                            Op::Stop => Reply::Outcome(vip.stop(&ctx).await),
                            Op::Monitor => Reply::Outcome(vip.monitor(&ctx).await),
                            Op::Check => Reply::Plan(vip.check(&ctx).await),
                        };
                        let _ = reply.send((result, started.elapsed()));
                    }
                });
            });
            VipHost { tx: Some(tx), thread: Some(thread) }
        }

        fn call(&self, op: Op) -> (Reply, Duration) {
            let (reply, answer) = mpsc::channel();
            self.tx.as_ref().unwrap().send((op, reply)).expect("the vip thread is gone");
            answer.recv_timeout(T).expect("no answer from the vip thread in time")
        }

        fn outcome(&self, op: Op) -> (OpOutcome, Duration) {
            match self.call(op) {
                (Reply::Outcome(outcome), took) => (outcome, took),
                (Reply::Plan(_), _) => unreachable!(),
            }
        }

        fn start(&self) -> (OpOutcome, Duration) {
            self.outcome(Op::Start)
        }

        fn stop(&self) -> OpOutcome {
            self.outcome(Op::Stop).0
        }

        fn monitor(&self) -> OpOutcome {
            self.outcome(Op::Monitor).0
        }

        fn check(&self) -> PlanCheck {
            match self.call(Op::Check) {
                (Reply::Plan(plan), _) => plan,
                (Reply::Outcome(_), _) => unreachable!(),
            }
        }
    }

    impl Drop for VipHost {
        fn drop(&mut self) {
            drop(self.tx.take());
            if let Some(thread) = self.thread.take() {
                let joined = thread.join();
                if joined.is_err() && !thread::panicking() {
                    panic!("the vip thread panicked");
                }
            }
        }
    }

    /// `ip ARGS` in `member`'s namespace; its stdout.
    fn ip(bed: &Netbed, member: &str, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        let out = bed.exec(member, &argv).unwrap();
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The lines of `ip -o addr show dev IFNAME` that carry exactly `cidr`.
    fn addr_lines(bed: &Netbed, member: &str, ifname: &str, cidr: &str) -> Vec<String> {
        ip(bed, member, &["-o", "addr", "show", "dev", ifname])
            .lines()
            .filter(|line| line.split_whitespace().any(|it| it == cidr))
            .map(str::to_string)
            .collect()
    }

    fn mac(bed: &Netbed, member: &str, ifname: &str) -> String {
        let text = ip(bed, member, &["-o", "link", "show", "dev", ifname]);
        let mut words = text.split_whitespace();
        words.find(|it| *it == "link/ether").unwrap();
        words.next().unwrap().to_string()
    }

    /// The MAC the client's neighbour table has for `addr`, if any.
    fn client_neigh(bed: &Netbed, addr: IpAddr) -> Option<String> {
        let text = ip(bed, CLIENT, &["neigh", "show", "to", &addr.to_string(), "dev", "eth0"]);
        let mut words = text.split_whitespace();
        words.find(|it| *it == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// Sends datagrams from the client to `vip` until its neighbour entry shows `mac`.
    fn client_learns(bed: &Netbed, vip: IpAddr, mac: &str) {
        let socket = in_ns(bed.namespace(CLIENT), move || {
            UdpSocket::bind(if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap()
        });
        let deadline = Instant::now() + T;
        let mut next_send = Instant::now();
        loop {
            if Instant::now() >= next_send {
                let _ = socket.send_to(b"learn", (vip, 9));
                next_send = Instant::now() + ms(50);
            }
            let seen = client_neigh(bed, vip);
            if seen.as_deref() == Some(mac) {
                return;
            }
            assert!(Instant::now() < deadline, "the client never learnt {mac} for {vip} (has {seen:?})");
            thread::sleep(ms(5));
        }
    }

    /// Polls the client's neighbour entry for `vip` until it shows `mac`; how long it took.
    fn client_switches(bed: &Netbed, vip: IpAddr, mac: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let seen = client_neigh(bed, vip);
            if seen.as_deref() == Some(mac) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the client's neighbour entry for {vip} is {seen:?}, not {mac}, {within:?} after the start"
            );
            thread::sleep(ms(5));
        }
    }

    fn accept_within(listener: &TcpListener, within: Duration) -> (TcpStream, SocketAddr) {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + within;
        loop {
            match listener.accept() {
                Ok(accepted) => return accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection within {within:?}");
                    thread::sleep(ms(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// A TCP connection from the client to `vip:port`, served in `node`'s namespace, and
    /// bytes both ways.
    fn client_reaches(bed: &Netbed, node: &str, vip: IpAddr, port: u16, client_addr: IpAddr) {
        let listener = in_ns(bed.namespace(node), move || TcpListener::bind((vip, port)).unwrap());
        let mut client = in_ns(bed.namespace(CLIENT), move || {
            TcpStream::connect_timeout(&SocketAddr::from((vip, port)), T).unwrap()
        });
        let (mut served, peer) = accept_within(&listener, T);
        served.set_nonblocking(false).unwrap();
        assert_eq!(peer.ip(), client_addr);
        client.set_read_timeout(Some(T)).unwrap();
        served.set_read_timeout(Some(T)).unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).unwrap();
        served.write_all(&buf).unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// An ARP capture in a namespace (AF_PACKET, ETH_P_ARP).
    struct ArpCapture(Socket);

    /// A gratuitous ARP seen: operation and sender MAC.
    type Garp = (u16, String);

    impl ArpCapture {
        fn open(ns: &str) -> ArpCapture {
            in_ns(ns, || {
                let protocol = Protocol::from(i32::from((libc::ETH_P_ARP as u16).to_be()));
                let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(protocol)).unwrap();
                socket.set_read_timeout(Some(ms(10))).unwrap();
                ArpCapture(socket)
            })
        }

        /// Gratuitous ARPs for `vip` (sender = target = `vip`) received within `window`,
        /// stopping early once `enough` of them came from `mac`.
        fn collect(&mut self, vip: Ipv4Addr, mac: &str, enough: usize, window: Duration) -> Vec<Garp> {
            let deadline = Instant::now() + window;
            let mut seen = Vec::new();
            let mut buf = [0u8; 128];
            while seen.iter().filter(|(_, from)| from == mac).count() < enough && Instant::now() < deadline {
                match self.0.read(&mut buf) {
                    Ok(n) if n >= 28 && buf[14..18] == vip.octets() && buf[24..28] == vip.octets() => {
                        let op = u16::from_be_bytes([buf[6], buf[7]]);
                        let sender: [u8; 6] = buf[8..14].try_into().unwrap();
                        seen.push((op, fmt_mac(&sender)));
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => panic!("ARP capture: {e}"),
                }
            }
            seen
        }
    }

    // -----------------------------------------------------------------------------------
    // Root tests
    // -----------------------------------------------------------------------------------

    #[test]
    fn vip_start_stop_monitor_and_reach_ipv4() {
        let Some(bed) = bed("vip_start_stop_monitor_and_reach_ipv4", "tvip1", 40, false) else { return };
        let vip = IpAddr::V4(Ipv4Addr::new(10, 200, 80, 100));
        let cidr = "10.200.80.100/24";
        let host = VipHost::new(bed.namespace("a"), spec(vip, 24, "eth0", 3, ms(50)));
        assert_eq!(host.monitor(), OpOutcome::NotRunning);
        assert_eq!(host.stop(), OpOutcome::Ok, "stopping a stopped VIP succeeds");

        let (outcome, took) = host.start();
        assert_eq!(outcome, OpOutcome::Ok);
        println!("vip start (IPv4, address added and first of 3 announcements sent) took {took:?}");
        assert_eq!(addr_lines(&bed, "a", "eth0", cidr).len(), 1);
        assert_eq!(host.monitor(), OpOutcome::Ok);
        let (outcome, took) = host.start();
        assert_eq!(outcome, OpOutcome::Ok, "starting a started VIP succeeds");
        println!("vip start again (already there) took {took:?}");
        assert_eq!(addr_lines(&bed, "a", "eth0", cidr).len(), 1, "no duplicate");
        assert!(addr_lines(&bed, "b", "eth0", cidr).is_empty());

        client_reaches(&bed, "a", vip, 7100, IpAddr::V4(bed.client_addr()));

        assert_eq!(host.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "a", "eth0", cidr).is_empty());
        assert_eq!(host.stop(), OpOutcome::Ok, "stop is idempotent");
        assert_eq!(host.monitor(), OpOutcome::NotRunning);

        // Whatever its prefix, the address on the interface is the VIP: monitor sees it and
        // stop removes it.
        ip(&bed, "a", &["addr", "add", "10.200.80.100/32", "dev", "eth0"]);
        assert_eq!(host.monitor(), OpOutcome::Ok);
        assert_eq!(host.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "a", "eth0", "10.200.80.100/32").is_empty());
        assert_eq!(host.monitor(), OpOutcome::NotRunning);
        drop(host);
        finish(bed);
    }

    #[test]
    fn vip_announcement_moves_the_client_ipv4() {
        let Some(bed) = bed("vip_announcement_moves_the_client_ipv4", "tvip2", 41, false) else { return };
        let v4 = Ipv4Addr::new(10, 200, 82, 100);
        let vip = IpAddr::V4(v4);
        let (mac_a, mac_b) = (mac(&bed, "a", "eth0"), mac(&bed, "b", "eth0"));
        let host_a = VipHost::new(bed.namespace("a"), spec(vip, 24, "eth0", 40, ms(50)));
        let host_b = VipHost::new(bed.namespace("b"), spec(vip, 24, "eth0", 3, ms(100)));
        let mut capture = ArpCapture::open(bed.namespace(CLIENT));

        let (outcome, took) = host_a.start();
        assert_eq!(outcome, OpOutcome::Ok);
        println!("vip start on a (first of 40 announcements) took {took:?}");
        // The announcements go on after start returned: requests and replies from a.
        let seen = capture.collect(v4, &mac_a, 6, T);
        let from_a: Vec<&Garp> = seen.iter().filter(|(_, from)| *from == mac_a).collect();
        assert!(from_a.len() >= 6, "{seen:?}");
        assert!(from_a.iter().any(|(op, _)| *op == ARP_REQUEST) && from_a.iter().any(|(op, _)| *op == ARP_REPLY));

        // The client talks to the VIP and so learns a's MAC for it.
        client_learns(&bed, vip, &mac_a);

        // Stopping a also stops its pending announcements.
        assert_eq!(host_a.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "a", "eth0", "10.200.82.100/24").is_empty());
        capture.collect(v4, &mac_a, usize::MAX, ms(20)); // what was under way before the stop
        let late = capture.collect(v4, &mac_a, usize::MAX, ms(300));
        assert!(late.is_empty(), "announcements after the stop: {late:?}");
        assert_eq!(client_neigh(&bed, vip).as_deref(), Some(mac_a.as_str()), "nothing told the client yet");

        // Control: without announcements, adding the address on b tells the client nothing
        // (the kernel announces nothing by itself).
        let silent_b = VipHost::new(bed.namespace("b"), spec(vip, 24, "eth0", 0, ms(100)));
        assert_eq!(silent_b.start().0, OpOutcome::Ok);
        let quiet = capture.collect(v4, &mac_b, usize::MAX, ms(300));
        assert!(quiet.is_empty(), "{quiet:?}");
        assert_eq!(client_neigh(&bed, vip).as_deref(), Some(mac_a.as_str()));
        assert_eq!(silent_b.stop(), OpOutcome::Ok);
        drop(silent_b);

        // b starts: its first announcement is out when start returns, and the client, which
        // sends nothing, now has b's MAC for the VIP.
        let (outcome, took) = host_b.start();
        assert_eq!(outcome, OpOutcome::Ok);
        println!("vip start on b (first of 3 announcements) took {took:?}");
        let switched = client_switches(&bed, vip, &mac_b, SWITCH);
        println!("the client's neighbour entry showed b's MAC {switched:?} after b's start returned");

        // b sends exactly 3 rounds, a request and a reply each.
        let started = Instant::now();
        let seen = capture.collect(v4, &mac_b, 6, T);
        println!("b's 3 rounds, 100 ms apart, all arrived {:?} after its start returned", started.elapsed() + switched);
        let mut extra = capture.collect(v4, &mac_b, usize::MAX, ms(300));
        let from_b: Vec<u16> = seen.iter().filter(|(_, from)| *from == mac_b).map(|(op, _)| *op).collect();
        assert_eq!(from_b.iter().filter(|op| **op == ARP_REQUEST).count(), 3, "{seen:?}");
        assert_eq!(from_b.iter().filter(|op| **op == ARP_REPLY).count(), 3, "{seen:?}");
        extra.retain(|(_, from)| *from == mac_b);
        assert!(extra.is_empty(), "more than 3 rounds: {extra:?}");
        assert!(seen.iter().all(|(_, from)| *from == mac_b), "{seen:?}");

        client_reaches(&bed, "b", vip, 7200, IpAddr::V4(bed.client_addr()));

        assert_eq!(host_b.stop(), OpOutcome::Ok);

        // Dropping a started Vip (the agent going away) ends its announcements too; the
        // address stays (only stop removes it).
        let host_c = VipHost::new(bed.namespace("a"), spec(vip, 24, "eth0", 100, ms(20)));
        assert_eq!(host_c.start().0, OpOutcome::Ok);
        assert!(capture.collect(v4, &mac_a, 4, T).iter().filter(|(_, from)| *from == mac_a).count() >= 4);
        drop(host_c);
        capture.collect(v4, &mac_a, usize::MAX, ms(20)); // what was under way before the drop
        let late = capture.collect(v4, &mac_a, usize::MAX, ms(300));
        assert!(late.is_empty(), "announcements after the drop: {late:?}");
        assert_eq!(addr_lines(&bed, "a", "eth0", "10.200.82.100/24").len(), 1);
        ip(&bed, "a", &["addr", "del", "10.200.82.100/24", "dev", "eth0"]);
        drop((host_a, host_b));
        finish(bed);
    }

    #[test]
    fn vip_announcement_moves_the_client_ipv6() {
        let Some(bed) = bed("vip_announcement_moves_the_client_ipv6", "tvip3", 42, true) else { return };
        let vip: IpAddr = "fd10:200:42::100".parse().unwrap();
        let cidr = "fd10:200:42::100/64";
        let client_addr: IpAddr = "fd10:200:42::9".parse().unwrap();
        ip(&bed, CLIENT, &["-6", "addr", "add", "fd10:200:42::9/64", "dev", "eth0", "nodad"]);
        let (mac_a, mac_b) = (mac(&bed, "a", "eth0"), mac(&bed, "b", "eth0"));
        let host_a = VipHost::new(bed.namespace("a"), spec(vip, 64, "eth0", 3, ms(100)));
        let host_b = VipHost::new(bed.namespace("b"), spec(vip, 64, "eth0", 3, ms(100)));
        assert_eq!(host_a.monitor(), OpOutcome::NotRunning);
        let plan = host_a.check();
        assert!(plan.ok, "{plan:?}");
        assert!(plan.notes.iter().any(|it| it.contains("unsolicited neighbour advertisement")), "{plan:?}");

        let (outcome, took) = host_a.start();
        assert_eq!(outcome, OpOutcome::Ok);
        println!("vip start (IPv6, address added and first of 3 advertisements sent) took {took:?}");
        let lines = addr_lines(&bed, "a", "eth0", cidr);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(!lines[0].contains("tentative"), "added without DAD: {lines:?}");
        assert_eq!(host_a.start().0, OpOutcome::Ok);
        assert_eq!(addr_lines(&bed, "a", "eth0", cidr).len(), 1);
        assert_eq!(host_a.monitor(), OpOutcome::Ok);
        client_reaches(&bed, "a", vip, 7300, client_addr);
        client_learns(&bed, vip, &mac_a);

        assert_eq!(host_a.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "a", "eth0", cidr).is_empty());
        assert_eq!(host_a.stop(), OpOutcome::Ok);
        assert_eq!(host_a.monitor(), OpOutcome::NotRunning);
        assert_eq!(client_neigh(&bed, vip).as_deref(), Some(mac_a.as_str()));

        // Control: without advertisements, adding the address on b tells the client nothing.
        let silent_b = VipHost::new(bed.namespace("b"), spec(vip, 64, "eth0", 0, ms(100)));
        assert_eq!(silent_b.start().0, OpOutcome::Ok);
        let until = Instant::now() + ms(300);
        while Instant::now() < until {
            assert_eq!(client_neigh(&bed, vip).as_deref(), Some(mac_a.as_str()));
            thread::sleep(ms(20));
        }
        assert_eq!(silent_b.stop(), OpOutcome::Ok);
        drop(silent_b);

        let (outcome, took) = host_b.start();
        assert_eq!(outcome, OpOutcome::Ok);
        println!("vip start on b (IPv6) took {took:?}");
        let switched = client_switches(&bed, vip, &mac_b, SWITCH);
        println!("the client's IPv6 neighbour entry showed b's MAC {switched:?} after b's start returned");
        client_reaches(&bed, "b", vip, 7301, client_addr);
        assert_eq!(host_b.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "b", "eth0", cidr).is_empty());
        drop((host_a, host_b));
        finish(bed);
    }

    #[test]
    fn vip_check_and_failures() {
        let Some(bed) = bed("vip_check_and_failures", "tvip4", 43, false) else { return };
        let vip = IpAddr::V4(Ipv4Addr::new(10, 200, 86, 100));
        let cidr = "10.200.86.100/24";
        let on = |interface: &str, prefix_len: u8| {
            VipHost::new(bed.namespace("a"), spec(vip, prefix_len, interface, 2, ms(10)))
        };

        // A good plan names the interface, its index and MAC, and changes nothing.
        let host = on("eth0", 24);
        let plan = host.check();
        println!("check: {plan:?}");
        assert!(plan.ok, "{plan:?}");
        let mac_a = mac(&bed, "a", "eth0");
        assert!(plan.notes.iter().any(|it| it.contains("interface eth0: index") && it.contains(&mac_a)), "{plan:?}");
        assert!(plan.notes.iter().any(|it| it.contains("gratuitous ARP")), "{plan:?}");
        assert!(addr_lines(&bed, "a", "eth0", cidr).is_empty());
        assert_eq!(host.start().0, OpOutcome::Ok);
        let plan = host.check();
        assert!(plan.ok && plan.notes.iter().any(|it| it.contains("already")), "{plan:?}");
        assert_eq!(host.stop(), OpOutcome::Ok);

        // A missing interface: check and start fail, monitor fails, stop succeeds.
        let missing = on("eth9", 24);
        let plan = missing.check();
        assert!(!plan.ok && plan.notes.iter().any(|it| it.contains("interface eth9 does not exist")), "{plan:?}");
        assert!(matches!(missing.monitor(), OpOutcome::Failed(e) if e.contains("eth9")));
        assert!(matches!(missing.start().0, OpOutcome::Failed(e) if e.contains("eth9 does not exist")));
        assert_eq!(missing.stop(), OpOutcome::Ok);

        // A prefix too long for the family.
        let plan = on("eth0", 33).check();
        assert!(!plan.ok && plan.notes.iter().any(|it| it.contains("prefix length 33")), "{plan:?}");
        assert!(matches!(on("eth0", 33).start().0, OpOutcome::Failed(e) if e.contains("prefix length 33")));
        let v6 = |prefix_len| {
            VipHost::new(bed.namespace("a"), spec("fd10:200:43::100".parse().unwrap(), prefix_len, "eth0", 1, ms(1)))
        };
        let plan = v6(129).check();
        assert!(!plan.ok && plan.notes.iter().any(|it| it.contains("prefix length 129")), "{plan:?}");
        // This bed has IPv6 off.
        let plan = v6(64).check();
        assert!(!plan.ok && plan.notes.iter().any(|it| it.contains("IPv6 is disabled on eth0")), "{plan:?}");
        let outcome = v6(64).start().0;
        println!("start with IPv6 off: {outcome:?}");
        assert!(matches!(outcome, OpOutcome::Failed(e) if e.contains("IPv6 disabled")));
        assert!(addr_lines(&bed, "a", "eth0", cidr).is_empty());

        // A down interface: check and start fail, nothing is added.
        ip(&bed, "a", &["link", "set", "dev", "eth1", "down"]);
        let eth1 = on("eth1", 24);
        let plan = eth1.check();
        assert!(!plan.ok && plan.notes.iter().any(|it| it.contains("eth1 is down")), "{plan:?}");
        assert!(matches!(eth1.start().0, OpOutcome::Failed(e) if e.contains("eth1 is down")));
        assert!(addr_lines(&bed, "a", "eth1", cidr).is_empty());
        assert!(matches!(eth1.monitor(), OpOutcome::Failed(e) if e.contains("eth1 is down")));

        // Up, started, then the interface goes down: monitor fails, stop still removes it.
        ip(&bed, "a", &["link", "set", "dev", "eth1", "up"]);
        assert_eq!(eth1.start().0, OpOutcome::Ok);
        assert_eq!(eth1.monitor(), OpOutcome::Ok);
        ip(&bed, "a", &["link", "set", "dev", "eth1", "down"]);
        assert!(matches!(eth1.monitor(), OpOutcome::Failed(e) if e.contains("eth1 is down")));
        assert_eq!(eth1.stop(), OpOutcome::Ok);
        assert!(addr_lines(&bed, "a", "eth1", cidr).is_empty());
        ip(&bed, "a", &["link", "set", "dev", "eth1", "up"]);

        // The interface vanishes under a started VIP: monitor fails, stop succeeds.
        assert_eq!(eth1.start().0, OpOutcome::Ok);
        ip(&bed, "a", &["link", "del", "dev", "eth1"]);
        assert!(matches!(eth1.monitor(), OpOutcome::Failed(e) if e.contains("eth1 does not exist")));
        assert_eq!(eth1.stop(), OpOutcome::Ok);
        drop((host, missing, eth1));
        finish(bed);
    }
}
