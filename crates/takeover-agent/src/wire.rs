//! The bytes on the wire: UDP heartbeats and the framed peer-channel protocol.
//!
//! Every decoder is total: any input either decodes into a well-formed value or yields a
//! [`WireError`] naming what was wrong, so a malformed or unknown packet is dropped and
//! counted, never acted on. Lengths are checked against the bytes actually present
//! before anything is allocated. This module only lays bytes out; sealing and opening
//! (ChaCha20-Poly1305, what is authenticated and how) is [`crate::auth`]'s.
//!
//! Heartbeat (one UDP datagram, [`HEARTBEAT_LEN`] = 68 bytes, little-endian): a clear
//! header that is the AEAD's associated data, then the sealed body:
//! `"TKHB" | version u8 | link u8 | from u16 | to u16 | 0u16 | cluster u64 | incarnation u64 | run u64 | counter u64`
//! then `seal(echo u64)` (8 bytes and the 16-byte tag). `echo` is the run of the
//! receiver as the sender last heard it (its freshness proof, see [`crate::auth`]).
//!
//! Channel frame: `len u32 | kind u8 | counter u64 | payload[len]` ([`FRAME_HEADER_LEN`]
//! = 13 bytes of header):
//! - kind 1, Hello (clear, the first frame each side sends, counter 0):
//!   `version u8 | cluster u64 | from u16 | to u16 | incarnation u64 | nonce [16]`
//! - kind 2, Confirm (the second, counter 0): `seal()` — the 16-byte tag of nothing, under
//!   keys bound to both Hellos: it proves the sender holds the cluster key now.
//! - kind 3, Group (counter 1, 2, …): `seal(group u16 | epoch (counter u64, node u16,
//!   forced u8) | message)`, message = `tag u8 | …` (State, Join, Records, Ack, Promoted,
//!   AskState, Handover; see the encoders).

use takeover_core::group::{HandoverReason, Message, PeerState};
use takeover_core::log::{EpochStart, LogMeta, Record};
use takeover_core::node::GroupIndex;
use takeover_core::{Epoch, Incarnation, NodeId, Priority, Role};

/// The protocol version spoken by this build (2: authenticated and encrypted).
pub const VERSION: u8 = 2;
/// The largest channel frame payload accepted (a catch-up batch of records).
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes of the AEAD tag that ends every sealed body.
pub const TAG_LEN: usize = 16;
/// Bytes of a heartbeat's clear header.
pub const HEARTBEAT_HEADER_LEN: usize = 44;
/// Bytes of a heartbeat's body before sealing (the echo).
pub const HEARTBEAT_BODY_LEN: usize = 8;
/// Bytes of a heartbeat datagram.
pub const HEARTBEAT_LEN: usize = HEARTBEAT_HEADER_LEN + HEARTBEAT_BODY_LEN + TAG_LEN;
/// Bytes of a channel frame's header.
pub const FRAME_HEADER_LEN: usize = 13;
/// Bytes of a Hello payload.
pub const HELLO_LEN: usize = 37;
/// Bytes of the random nonce each side puts in its Hello.
pub const HELLO_NONCE_LEN: usize = 16;
/// The `to` of a Hello sent by the accepting side, which does not know yet who dialed.
pub const ANY_NODE: NodeId = NodeId(u16::MAX);
const HEARTBEAT_MAGIC: &[u8; 4] = b"TKHB";

/// Why bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("protocol version {0} not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u8 },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// The clear header of a heartbeat: what the receiver needs to find the key, and the
/// associated data the tag covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatHeader {
    pub link: u8,
    pub from: NodeId,
    pub to: NodeId,
    /// A hash of the cluster name: traffic of another cluster on the same network is
    /// told apart from forgeries.
    pub cluster: u64,
    pub incarnation: Incarnation,
    /// A random number the sender drew at start (see [`crate::auth`]).
    pub run: u64,
    /// Rises by one with every heartbeat the sender seals in this run; from 1.
    pub counter: u64,
}

/// The kinds of channel frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Confirm = 2,
    Group = 3,
}

/// A channel frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of payload that follow.
    pub len: usize,
    pub kind: FrameKind,
    /// 0 for Hello and Confirm, then 1, 2, … per connection and direction.
    pub counter: u64,
}

/// The first frame of each side of a channel connection (sent in the clear; the
/// Confirm that follows authenticates both Hellos).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub cluster: u64,
    pub from: NodeId,
    /// The node the dialer meant to reach; [`ANY_NODE`] from the accepting side.
    pub to: NodeId,
    pub incarnation: Incarnation,
    /// Fresh random bytes: the keys of the connection depend on both sides' nonces, so a
    /// recorded connection cannot be replayed.
    pub nonce: [u8; HELLO_NONCE_LEN],
}

/// A group message as carried by a Group frame, stamped with the sender's durable epoch
/// (the fencing token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFrame {
    pub group: GroupIndex,
    pub epoch: Epoch,
    pub msg: Message,
}

/// The cluster id carried by every packet: FNV-1a of the cluster name.
pub fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

pub fn encode_heartbeat_header(h: &HeartbeatHeader) -> [u8; HEARTBEAT_HEADER_LEN] {
    let mut out = Vec::with_capacity(HEARTBEAT_HEADER_LEN);
    out.extend_from_slice(HEARTBEAT_MAGIC);
    out.push(VERSION);
    out.push(h.link);
    out.extend_from_slice(&h.from.0.to_le_bytes());
    out.extend_from_slice(&h.to.0.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&h.cluster.to_le_bytes());
    out.extend_from_slice(&h.incarnation.0.to_le_bytes());
    out.extend_from_slice(&h.run.to_le_bytes());
    out.extend_from_slice(&h.counter.to_le_bytes());
    out.try_into().expect("heartbeat header length")
}

/// Splits a heartbeat datagram into its decoded header, the header's bytes (the
/// associated data) and the sealed body.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<(HeartbeatHeader, &[u8], &[u8]), WireError> {
    if bytes.len() != HEARTBEAT_LEN {
        return Err(if bytes.len() < HEARTBEAT_LEN {
            WireError::Truncated { what: "heartbeat", needed: HEARTBEAT_LEN - bytes.len() }
        } else {
            WireError::Trailing(bytes.len() - HEARTBEAT_LEN)
        });
    }
    if &bytes[..4] != HEARTBEAT_MAGIC {
        return Err(WireError::BadMagic);
    }
    let (header_bytes, sealed) = bytes.split_at(HEARTBEAT_HEADER_LEN);
    let mut r = Reader::new(&header_bytes[4..]);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let link = r.u8("link")?;
    let from = NodeId(r.u16("from")?);
    let to = NodeId(r.u16("to")?);
    if r.u16("reserved")? != 0 {
        return Err(WireError::Invalid("reserved heartbeat bits set"));
    }
    let header = HeartbeatHeader {
        link,
        from,
        to,
        cluster: r.u64("cluster")?,
        incarnation: Incarnation(r.u64("incarnation")?),
        run: r.u64("run")?,
        counter: r.u64("counter")?,
    };
    r.finish()?;
    Ok((header, header_bytes, sealed))
}

pub fn encode_frame_header(h: &FrameHeader) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[..4].copy_from_slice(&(h.len as u32).to_le_bytes());
    out[4] = h.kind as u8;
    out[5..].copy_from_slice(&h.counter.to_le_bytes());
    out
}

/// Reads a frame header; the payload length is checked against [`MAX_FRAME`] before
/// anything is read or allocated.
pub fn decode_frame_header(header: [u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, WireError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let kind = match header[4] {
        1 => FrameKind::Hello,
        2 => FrameKind::Confirm,
        3 => FrameKind::Group,
        other => return Err(WireError::Unknown { what: "frame kind", value: other }),
    };
    Ok(FrameHeader { len, kind, counter: u64::from_le_bytes(header[5..].try_into().expect("8 bytes")) })
}

/// A whole Hello frame (header and payload).
pub fn encode_hello_frame(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + HELLO_LEN);
    out.extend_from_slice(&encode_frame_header(&FrameHeader { len: HELLO_LEN, kind: FrameKind::Hello, counter: 0 }));
    out.push(VERSION);
    out.extend_from_slice(&hello.cluster.to_le_bytes());
    out.extend_from_slice(&hello.from.0.to_le_bytes());
    out.extend_from_slice(&hello.to.0.to_le_bytes());
    out.extend_from_slice(&hello.incarnation.0.to_le_bytes());
    out.extend_from_slice(&hello.nonce);
    out
}

/// Decodes a Hello payload.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, WireError> {
    let mut r = Reader::new(payload);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let hello = Hello {
        cluster: r.u64("cluster")?,
        from: NodeId(r.u16("from")?),
        to: NodeId(r.u16("to")?),
        incarnation: Incarnation(r.u64("incarnation")?),
        nonce: r.bytes("nonce", HELLO_NONCE_LEN)?.try_into().expect("nonce length"),
    };
    r.finish()?;
    Ok(hello)
}

/// The plaintext of a Group frame.
pub fn encode_group(frame: &GroupFrame) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&frame.group.0.to_le_bytes());
    put_epoch(&mut body, frame.epoch);
    encode_message(&frame.msg, &mut body);
    body
}

/// Decodes the plaintext of a Group frame.
pub fn decode_group(body: &[u8]) -> Result<GroupFrame, WireError> {
    let mut r = Reader::new(body);
    let frame = GroupFrame { group: GroupIndex(r.u16("group")?), epoch: r.epoch()?, msg: decode_message(&mut r)? };
    r.finish()?;
    Ok(frame)
}

fn encode_message(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::State(state) => {
            out.push(1);
            out.push(role_code(state.role));
            out.push(state.priority.number());
            put_epoch(out, state.epoch);
            out.push(state.join_only as u8);
            match state.following {
                Some(inc) => {
                    out.push(1);
                    out.extend_from_slice(&inc.0.to_le_bytes());
                }
                None => out.push(0),
            }
            out.extend_from_slice(&(state.log.epochs().len() as u32).to_le_bytes());
            for start in state.log.epochs() {
                put_epoch(out, start.epoch);
                out.extend_from_slice(&start.first_index.to_le_bytes());
            }
            out.extend_from_slice(&state.log.last_index().to_le_bytes());
        }
        Message::Join { from_index, from_epoch, session } => {
            out.push(2);
            out.extend_from_slice(&from_index.to_le_bytes());
            out.extend_from_slice(&session.to_le_bytes());
            match from_epoch {
                Some(epoch) => {
                    out.push(1);
                    put_epoch(out, *epoch);
                }
                None => out.push(0),
            }
        }
        Message::Records(records) => {
            out.push(3);
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for record in records {
                put_epoch(out, record.epoch);
                out.extend_from_slice(&record.index.to_le_bytes());
                out.extend_from_slice(&record.checksum.to_le_bytes());
                out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
                out.extend_from_slice(&record.payload);
            }
        }
        Message::Ack { upto, session } => {
            out.push(4);
            out.extend_from_slice(&upto.to_le_bytes());
            out.extend_from_slice(&session.to_le_bytes());
        }
        Message::Promoted { session } => {
            out.push(5);
            out.extend_from_slice(&session.to_le_bytes());
        }
        Message::AskState => out.push(6),
        Message::Handover { upto, reason } => {
            out.push(7);
            out.extend_from_slice(&upto.to_le_bytes());
            out.push(reason_code(*reason));
        }
    }
}

fn reason_code(reason: HandoverReason) -> u8 {
    match reason {
        HandoverReason::Switchover => 1,
        HandoverReason::Failback => 2,
        HandoverReason::StartFailed => 3,
        HandoverReason::ServiceFailed => 4,
    }
}

fn reason_from_code(code: u8) -> Result<HandoverReason, WireError> {
    Ok(match code {
        1 => HandoverReason::Switchover,
        2 => HandoverReason::Failback,
        3 => HandoverReason::StartFailed,
        4 => HandoverReason::ServiceFailed,
        other => return Err(WireError::Unknown { what: "handover reason", value: other }),
    })
}

fn decode_message(r: &mut Reader<'_>) -> Result<Message, WireError> {
    Ok(match r.u8("message tag")? {
        1 => {
            let role = role_from_code(r.u8("role")?)?;
            let priority =
                Priority::from_number(r.u8("priority")?).ok_or(WireError::Invalid("priority not 1, 2 or 3"))?;
            let epoch = r.epoch()?;
            let join_only = r.flag("join_only")?;
            let following = if r.flag("following")? { Some(Incarnation(r.u64("following")?)) } else { None };
            let n = r.count("epoch table", 11 + 8)?;
            let mut epochs = Vec::with_capacity(n);
            for _ in 0..n {
                epochs.push(EpochStart { epoch: r.epoch()?, first_index: r.u64("first index")? });
            }
            let last_index = r.u64("last index")?;
            let log = LogMeta::from_parts(epochs, last_index).ok_or(WireError::Invalid("malformed epoch table"))?;
            Message::State(PeerState { role, priority, epoch, join_only, following, log })
        }
        2 => {
            let from_index = r.u64("join index")?;
            let session = r.u64("join session")?;
            let from_epoch = if r.flag("join epoch")? { Some(r.epoch()?) } else { None };
            Message::Join { from_index, from_epoch, session }
        }
        3 => {
            let n = r.count("records", 11 + 8 + 4 + 4)?;
            let mut records = Vec::with_capacity(n);
            for _ in 0..n {
                let epoch = r.epoch()?;
                let index = r.u64("record index")?;
                let checksum = r.u32("record checksum")?;
                let len = r.u32("payload length")? as usize;
                let payload = r.bytes("payload", len)?.to_vec();
                records.push(Record { epoch, index, checksum, payload });
            }
            Message::Records(records)
        }
        4 => Message::Ack { upto: r.u64("ack")?, session: r.u64("ack session")? },
        5 => Message::Promoted { session: r.u64("promoted session")? },
        6 => Message::AskState,
        7 => Message::Handover { upto: r.u64("handover index")?, reason: reason_from_code(r.u8("handover reason")?)? },
        other => return Err(WireError::Unknown { what: "message tag", value: other }),
    })
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::X => 0,
        Role::Sl => 1,
        Role::Sm => 2,
        Role::M => 3,
    }
}

fn role_from_code(code: u8) -> Result<Role, WireError> {
    match code {
        0 => Ok(Role::X),
        1 => Ok(Role::Sl),
        2 => Ok(Role::Sm),
        3 => Ok(Role::M),
        other => Err(WireError::Unknown { what: "role", value: other }),
    }
}

fn put_epoch(out: &mut Vec<u8>, epoch: Epoch) {
    out.extend_from_slice(&epoch.counter.to_le_bytes());
    out.extend_from_slice(&epoch.node.to_le_bytes());
    out.push(epoch.forced as u8);
}

/// A bounds-checked cursor over received bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn bytes(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated { what, needed: n - self.bytes.len() });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(what, 1)?[0])
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::Unknown { what, value: other }),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.bytes(what, 2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.bytes(what, 4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.bytes(what, 8)?.try_into().expect("8 bytes")))
    }

    fn epoch(&mut self) -> Result<Epoch, WireError> {
        Ok(Epoch { counter: self.u64("epoch")?, node: self.u16("epoch node")?, forced: self.flag("epoch forced")? })
    }

    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.bytes.len() {
            return Err(WireError::Truncated { what, needed: n * min_size - self.bytes.len() });
        }
        Ok(n)
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(WireError::Trailing(self.bytes.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ep(counter: u64, node: u16, forced: bool) -> Epoch {
        Epoch { counter, node, forced }
    }

    fn roundtrip(frame: GroupFrame) {
        let body = encode_group(&frame);
        assert_eq!(decode_group(&body).unwrap(), frame);
    }

    fn sample_messages() -> Vec<Message> {
        let mut log = LogMeta::empty();
        log.push(ep(1, 0, false), 3);
        log.push(ep(2, 1, true), 2);
        vec![
            Message::State(PeerState {
                role: Role::M,
                priority: Priority::P2,
                epoch: ep(2, 1, true),
                join_only: false,
                following: None,
                log: log.clone(),
            }),
            Message::State(PeerState {
                role: Role::Sl,
                priority: Priority::P3,
                epoch: ep(2, 1, true),
                join_only: true,
                following: Some(Incarnation(7)),
                log: LogMeta::empty(),
            }),
            Message::Join { from_index: 0, from_epoch: None, session: 1 },
            Message::Join { from_index: 3, from_epoch: Some(ep(1, 0, false)), session: 2 },
            Message::Records(vec![
                Record::new(ep(2, 1, true), 4, b"hello".to_vec()),
                Record::new(ep(2, 1, true), 5, vec![]),
            ]),
            Message::Ack { upto: 5, session: 2 },
            Message::Promoted { session: 2 },
            Message::AskState,
            Message::Handover { upto: 5, reason: HandoverReason::Switchover },
            Message::Handover { upto: 0, reason: HandoverReason::Failback },
            Message::Handover { upto: 9, reason: HandoverReason::StartFailed },
            Message::Handover { upto: 9, reason: HandoverReason::ServiceFailed },
        ]
    }

    fn sample_header() -> HeartbeatHeader {
        HeartbeatHeader {
            link: 1,
            from: NodeId(2),
            to: NodeId(0),
            cluster: cluster_id("demo"),
            incarnation: Incarnation(5),
            run: 0x1234_5678_9abc_def0,
            counter: 77,
        }
    }

    #[test]
    fn every_message_survives_the_wire() {
        for msg in sample_messages() {
            roundtrip(GroupFrame { group: GroupIndex(3), epoch: ep(4, 1, false), msg });
        }
    }

    #[test]
    fn hello_survives_the_wire() {
        let hello = Hello {
            cluster: cluster_id("demo"),
            from: NodeId(0),
            to: ANY_NODE,
            incarnation: Incarnation(9),
            nonce: [7; HELLO_NONCE_LEN],
        };
        let bytes = encode_hello_frame(&hello);
        let header = decode_frame_header(bytes[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(header, FrameHeader { len: HELLO_LEN, kind: FrameKind::Hello, counter: 0 });
        assert_eq!(bytes.len(), FRAME_HEADER_LEN + HELLO_LEN);
        assert_eq!(decode_hello(&bytes[FRAME_HEADER_LEN..]), Ok(hello));
        let mut old = bytes[FRAME_HEADER_LEN..].to_vec();
        old[0] = 1;
        assert_eq!(decode_hello(&old), Err(WireError::Version(1)));
        assert!(matches!(decode_hello(&bytes[FRAME_HEADER_LEN..bytes.len() - 1]), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn heartbeat_header_survives_the_wire_and_malformed_datagrams_are_refused() {
        let header = sample_header();
        let mut bytes = encode_heartbeat_header(&header).to_vec();
        bytes.extend_from_slice(&[0xaa; HEARTBEAT_BODY_LEN + TAG_LEN]);
        let (decoded, ad, sealed) = decode_heartbeat(&bytes).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(ad, &bytes[..HEARTBEAT_HEADER_LEN]);
        assert_eq!(sealed.len(), HEARTBEAT_BODY_LEN + TAG_LEN);
        assert!(matches!(decode_heartbeat(&bytes[..HEARTBEAT_LEN - 1]), Err(WireError::Truncated { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_heartbeat(&long), Err(WireError::Trailing(1)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(decode_heartbeat(&magic), Err(WireError::BadMagic));
        let mut version = bytes.clone();
        version[4] = 1;
        assert_eq!(decode_heartbeat(&version), Err(WireError::Version(1)));
        let mut reserved = bytes;
        reserved[10] = 1;
        assert_eq!(decode_heartbeat(&reserved), Err(WireError::Invalid("reserved heartbeat bits set")));
    }

    #[test]
    fn frame_header_survives_the_wire_and_unknown_kinds_are_refused() {
        let header = FrameHeader { len: 1234, kind: FrameKind::Group, counter: u64::MAX - 1 };
        assert_eq!(decode_frame_header(encode_frame_header(&header)), Ok(header));
        let mut bad = encode_frame_header(&header);
        bad[4] = 9;
        assert_eq!(decode_frame_header(bad), Err(WireError::Unknown { what: "frame kind", value: 9 }));
    }

    #[test]
    fn oversized_frame_refused_before_reading_it() {
        let header = [0xff, 0xff, 0xff, 0x7f, 3, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode_frame_header(header), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn huge_record_count_refused_without_allocating() {
        let mut body = vec![0, 0];
        put_epoch(&mut body, Epoch::ZERO);
        body.push(3);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_group(&body), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn malformed_state_refused() {
        // A State whose epoch table claims an epoch holding no record.
        let mut body = vec![0, 0];
        put_epoch(&mut body, ep(1, 0, false));
        body.extend_from_slice(&[1, 3, 2]);
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(decode_group(&body), Err(WireError::Invalid("malformed epoch table")));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_group(&body);
            let _ = decode_heartbeat(&body);
            let _ = decode_hello(&body);
            if body.len() >= FRAME_HEADER_LEN {
                let _ = decode_frame_header(body[..FRAME_HEADER_LEN].try_into().unwrap());
            }
        }

        #[test]
        fn truncating_a_valid_frame_is_refused(cut in 0usize..60, which in 0usize..8) {
            let msg = sample_messages().swap_remove(which);
            let body = encode_group(&GroupFrame { group: GroupIndex(1), epoch: ep(2, 0, true), msg });
            let cut = cut.min(body.len().saturating_sub(1));
            prop_assert!(decode_group(&body[..cut]).is_err());
        }
    }
}
