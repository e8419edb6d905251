//! The bytes on the wire: UDP heartbeats and the framed peer-channel protocol.
//!
//! Every decoder is total: any input either decodes into a well-formed value or yields a
//! [`WireError`] naming what was wrong, so a malformed or unknown packet is dropped and
//! counted, never acted on. Lengths are checked against the bytes actually present
//! before anything is allocated.
//!
//! Heartbeat (one UDP datagram, 40 bytes, little-endian):
//! `"TKHB" | version u8 | link u8 | from u16 | to u16 | 0u16 | cluster u64 | incarnation u64 | seq u64 | crc32 u32`
//!
//! Channel frame: `len u32 | crc32(body) u32 | body`, body = `kind u8 | …`:
//! - kind 1, Hello: `version u8 | cluster u64 | from u16 | to u16 | incarnation u64`
//! - kind 2, Group: `group u16 | epoch (counter u64, node u16, forced u8) | message`, message = `tag u8 | …` (State, Join, Records,
//!   Ack, Promoted; see the encoders).

use takeover_core::group::{HandoverReason, Message, PeerState};
use takeover_core::log::{EpochStart, LogMeta, Record};
use takeover_core::node::GroupIndex;
use takeover_core::{Epoch, Incarnation, NodeId, Priority, Role};

/// The protocol version spoken by this build.
pub const VERSION: u8 = 1;
/// The largest channel frame accepted (a catch-up batch of records).
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes of a heartbeat datagram.
pub const HEARTBEAT_LEN: usize = 40;
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
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u8 },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A decoded heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub link: u8,
    pub from: NodeId,
    pub to: NodeId,
    /// A hash of the cluster name: traffic of another cluster on the same network is
    /// dropped.
    pub cluster: u64,
    pub incarnation: Incarnation,
    pub seq: u64,
}

/// A decoded channel frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        cluster: u64,
        from: NodeId,
        to: NodeId,
        incarnation: Incarnation,
    },
    /// A group message, stamped with the sender's durable epoch (the fencing token).
    Group {
        group: GroupIndex,
        epoch: Epoch,
        msg: Message,
    },
}

/// The cluster id carried by every packet: FNV-1a of the cluster name.
pub fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

pub fn encode_heartbeat(hb: &Heartbeat) -> [u8; HEARTBEAT_LEN] {
    let mut out = Vec::with_capacity(HEARTBEAT_LEN);
    out.extend_from_slice(HEARTBEAT_MAGIC);
    out.push(VERSION);
    out.push(hb.link);
    out.extend_from_slice(&hb.from.0.to_le_bytes());
    out.extend_from_slice(&hb.to.0.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&hb.cluster.to_le_bytes());
    out.extend_from_slice(&hb.incarnation.0.to_le_bytes());
    out.extend_from_slice(&hb.seq.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.try_into().expect("heartbeat length")
}

pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, WireError> {
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
    let (body, crc) = bytes.split_at(HEARTBEAT_LEN - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(WireError::Checksum);
    }
    let mut r = Reader::new(&body[4..]);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let link = r.u8("link")?;
    let from = NodeId(r.u16("from")?);
    let to = NodeId(r.u16("to")?);
    r.u16("reserved")?;
    Ok(Heartbeat {
        link,
        from,
        to,
        cluster: r.u64("cluster")?,
        incarnation: Incarnation(r.u64("incarnation")?),
        seq: r.u64("seq")?,
    })
}

/// Encodes a frame with its length and checksum header.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    match frame {
        Frame::Hello { cluster, from, to, incarnation } => {
            body.push(1);
            body.push(VERSION);
            body.extend_from_slice(&cluster.to_le_bytes());
            body.extend_from_slice(&from.0.to_le_bytes());
            body.extend_from_slice(&to.0.to_le_bytes());
            body.extend_from_slice(&incarnation.0.to_le_bytes());
        }
        Frame::Group { group, epoch, msg } => {
            body.push(2);
            body.extend_from_slice(&group.0.to_le_bytes());
            put_epoch(&mut body, *epoch);
            encode_message(msg, &mut body);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the 8-byte frame header: the body length and its checksum.
pub fn decode_frame_header(header: [u8; 8]) -> Result<(usize, u32), WireError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok((len, u32::from_le_bytes(header[4..].try_into().expect("4 bytes"))))
}

/// Decodes a frame body whose header announced checksum `crc`.
pub fn decode_frame_body(body: &[u8], crc: u32) -> Result<Frame, WireError> {
    if crc32fast::hash(body) != crc {
        return Err(WireError::Checksum);
    }
    let mut r = Reader::new(body);
    let frame = match r.u8("frame kind")? {
        1 => {
            let version = r.u8("version")?;
            if version != VERSION {
                return Err(WireError::Version(version));
            }
            Frame::Hello {
                cluster: r.u64("cluster")?,
                from: NodeId(r.u16("from")?),
                to: NodeId(r.u16("to")?),
                incarnation: Incarnation(r.u64("incarnation")?),
            }
        }
        2 => Frame::Group { group: GroupIndex(r.u16("group")?), epoch: r.epoch()?, msg: decode_message(&mut r)? },
        other => return Err(WireError::Unknown { what: "frame kind", value: other }),
    };
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

    fn roundtrip(frame: Frame) {
        let bytes = encode_frame(&frame);
        let (len, crc) = decode_frame_header(bytes[..8].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 8);
        assert_eq!(decode_frame_body(&bytes[8..], crc).unwrap(), frame);
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

    #[test]
    fn every_message_survives_the_wire() {
        roundtrip(Frame::Hello {
            cluster: cluster_id("demo"),
            from: NodeId(0),
            to: NodeId(1),
            incarnation: Incarnation(9),
        });
        for msg in sample_messages() {
            roundtrip(Frame::Group { group: GroupIndex(3), epoch: ep(4, 1, false), msg });
        }
    }

    #[test]
    fn heartbeat_survives_the_wire_and_any_bit_flip_is_refused() {
        let hb = Heartbeat {
            link: 1,
            from: NodeId(2),
            to: NodeId(0),
            cluster: cluster_id("demo"),
            incarnation: Incarnation(5),
            seq: 77,
        };
        let bytes = encode_heartbeat(&hb);
        assert_eq!(decode_heartbeat(&bytes), Ok(hb));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes;
                bad[i] ^= 1 << bit;
                assert!(decode_heartbeat(&bad).is_err(), "flip of byte {i} bit {bit} accepted");
            }
        }
        assert!(matches!(decode_heartbeat(&bytes[..39]), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn corrupted_frame_refused_by_checksum() {
        let bytes = encode_frame(&Frame::Group {
            group: GroupIndex(0),
            epoch: Epoch::ZERO,
            msg: Message::Ack { upto: 9, session: 1 },
        });
        let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        let mut body = bytes[8..].to_vec();
        body[3] ^= 0x40;
        assert_eq!(decode_frame_body(&body, crc), Err(WireError::Checksum));
    }

    #[test]
    fn oversized_frame_refused_before_reading_it() {
        let header = [0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        assert!(matches!(decode_frame_header(header), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn huge_record_count_refused_without_allocating() {
        let mut body = vec![2, 0, 0];
        put_epoch(&mut body, Epoch::ZERO);
        body.push(3);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&body);
        assert!(matches!(decode_frame_body(&body, crc), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn malformed_state_refused() {
        // A State whose epoch table claims an epoch holding no record.
        let mut body = vec![2, 0, 0];
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
        let crc = crc32fast::hash(&body);
        assert_eq!(decode_frame_body(&body, crc), Err(WireError::Invalid("malformed epoch table")));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let crc = crc32fast::hash(&body);
            let _ = decode_frame_body(&body, crc);
            let _ = decode_heartbeat(&body);
        }

        #[test]
        fn truncating_a_valid_frame_is_refused(cut in 0usize..60, which in 0usize..8) {
            let msg = sample_messages().swap_remove(which);
            let bytes = encode_frame(&Frame::Group { group: GroupIndex(1), epoch: ep(2, 0, true), msg });
            let body = &bytes[8..];
            let cut = cut.min(body.len().saturating_sub(1));
            let short = &body[..cut];
            prop_assert!(decode_frame_body(short, crc32fast::hash(short)).is_err());
        }
    }
}
