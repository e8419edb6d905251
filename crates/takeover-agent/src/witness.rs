//! `takeover witness`: the lease server for a third machine (issue 6, part 2), and the
//! client side of its protocol.
//!
//! The grant rules are pure and live in [`takeover_core::witness`]; this module is the
//! shell around them: a UDP socket, the durable list of holders, and the datagrams.
//!
//! **Protocol** (one UDP datagram each way, ASCII, fields separated by one space; names
//! are the configuration's node and group names, which contain no spaces):
//!
//! ```text
//! request : TKW1 REQ <seq> <group> <node> <incarnation>
//! release : TKW1 REL <seq> <group> <node> <incarnation>
//! answers : TKW1 GRANT <seq> <group> <incarnation> <lease_ms>
//!           TKW1 REFUSE <seq> <group> <holder or -> <remaining_ms>
//!           TKW1 RELEASED <seq> <group>
//! ```
//!
//! `seq` is the requester's; the answer echoes it, and a grant the incarnation too, so the
//! requester can find the instant its current run sent that request (it counts its lease
//! from there, see [`takeover_core::witness::HeldLease`]; a new run numbers from 1 again).
//! A release carries a `seq` above every request of that run, so a release overtaken by
//! a later renewal frees nothing. `remaining_ms` is informational.
//!
//! **Durability**: a grant that changes a group's holder, and a release, are written to
//! `<state-dir>/witness-holders` (atomic, fsynced, checksummed) before the answer goes
//! out; if that write fails the witness exits (nothing is answered on state it could
//! lose). At start, a readable file restores every holder with a full lease from the
//! start; a missing or unreadable file makes the witness grant nothing for
//! `lease + margin` (it may have granted leases it no longer knows about).
//!
//! **Authentication**: every datagram is sealed with the cluster key
//! ([`crate::auth::Auth::seal_witness`]: ChaCha20-Poly1305 under a key derived for the
//! witness, the cluster's name bound in); the witness is started with the cluster's name
//! and key file and drops anything else, and so do the agents. A forged grant could
//! otherwise make a node believe it holds a group, and a forged release free a lease its
//! holder still uses.

use std::fs;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use takeover_core::Instant;
use takeover_core::witness::{Answer, WitnessTable};

use crate::auth::Auth;
use crate::store::write_atomic;

/// The state file's name in the witness's state directory.
pub const STATE_FILE: &str = "witness-holders";
const STATE_MAGIC: &str = "takeover-witness-holders v1";

/// A message to the witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Acquire { seq: u64, group: String, node: String, incarnation: u64 },
    Release { seq: u64, group: String, node: String, incarnation: u64 },
}

/// A message from the witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Grant { seq: u64, group: String, incarnation: u64, lease: Duration },
    Refuse { seq: u64, group: String, holder: Option<String>, remaining: Duration },
    Released { seq: u64, group: String },
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Acquire { seq, group, node, incarnation } => {
                format!("TKW1 REQ {seq} {group} {node} {incarnation}")
            }
            Request::Release { seq, group, node, incarnation } => {
                format!("TKW1 REL {seq} {group} {node} {incarnation}")
            }
        }
        .into_bytes()
    }

    /// Total decoder: anything malformed is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let text = std::str::from_utf8(bytes).ok()?;
        let f: Vec<&str> = text.split(' ').collect();
        match f.as_slice() {
            ["TKW1", "REQ", seq, group, node, inc] if name_ok(group) && name_ok(node) => Some(Request::Acquire {
                seq: seq.parse().ok()?,
                group: group.to_string(),
                node: node.to_string(),
                incarnation: inc.parse().ok()?,
            }),
            ["TKW1", "REL", seq, group, node, inc] if name_ok(group) && name_ok(node) => Some(Request::Release {
                seq: seq.parse().ok()?,
                group: group.to_string(),
                node: node.to_string(),
                incarnation: inc.parse().ok()?,
            }),
            _ => None,
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Grant { seq, group, incarnation, lease } => {
                format!("TKW1 GRANT {seq} {group} {incarnation} {}", millis(*lease))
            }
            Reply::Refuse { seq, group, holder, remaining } => {
                format!("TKW1 REFUSE {seq} {group} {} {}", holder.as_deref().unwrap_or("-"), millis(*remaining))
            }
            Reply::Released { seq, group } => format!("TKW1 RELEASED {seq} {group}"),
        }
        .into_bytes()
    }

    /// Total decoder: anything malformed is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let text = std::str::from_utf8(bytes).ok()?;
        let f: Vec<&str> = text.split(' ').collect();
        match f.as_slice() {
            ["TKW1", "GRANT", seq, group, inc, ms] if name_ok(group) => Some(Reply::Grant {
                seq: seq.parse().ok()?,
                group: group.to_string(),
                incarnation: inc.parse().ok()?,
                lease: Duration::from_millis(ms.parse().ok()?),
            }),
            ["TKW1", "REFUSE", seq, group, holder, ms] if name_ok(group) && name_ok(holder) => Some(Reply::Refuse {
                seq: seq.parse().ok()?,
                group: group.to_string(),
                holder: (*holder != "-").then(|| holder.to_string()),
                remaining: Duration::from_millis(ms.parse().ok()?),
            }),
            ["TKW1", "RELEASED", seq, group] if name_ok(group) => {
                Some(Reply::Released { seq: seq.parse().ok()?, group: group.to_string() })
            }
            _ => None,
        }
    }
}

/// The state file's bytes for `holders`.
pub fn encode_holders(holders: &[(String, String)]) -> Vec<u8> {
    let mut body = String::new();
    for (group, node) in holders {
        body.push_str(&format!("{group} {node}\n"));
    }
    let crc = crc32fast::hash(body.as_bytes());
    format!("{STATE_MAGIC} {crc:08x}\n{body}").into_bytes()
}

/// Parses the state file; `None` for anything that is not exactly what
/// [`encode_holders`] writes.
pub fn decode_holders(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once('\n')?;
    let crc = head.strip_prefix(STATE_MAGIC)?.strip_prefix(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) || crc.len() != 8 {
        return None;
    }
    let mut out = Vec::new();
    for line in body.lines() {
        let (g, n) = line.split_once(' ')?;
        if !name_ok(g) || !name_ok(n) {
            return None;
        }
        out.push((g.to_string(), n.to_string()));
    }
    Some(out)
}

/// How the witness started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From its state file: these holders hold their groups for a full lease again.
    Restored(Vec<(String, String)>),
    /// No usable state (first start, or a file it cannot read): nothing is granted for
    /// `lease + margin`. The string says why.
    Quiet(String),
}

/// Loads the witness's table from `state_dir` at `now`.
pub fn load(state_dir: &Path, lease: Duration, margin: Duration, now: Instant) -> (WitnessTable, Start) {
    let path = state_dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => match decode_holders(&bytes) {
            Some(h) => (WitnessTable::restore(lease, margin, &h, now), Start::Restored(h)),
            None => {
                (WitnessTable::amnesiac(lease, margin, now), Start::Quiet(format!("{} is corrupt", path.display())))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (WitnessTable::amnesiac(lease, margin, now), Start::Quiet(format!("no {} (first start)", path.display())))
        }
        Err(e) => {
            (WitnessTable::amnesiac(lease, margin, now), Start::Quiet(format!("cannot read {}: {e}", path.display())))
        }
    }
}

/// The witness: its table, where it persists, and its clock's origin.
pub struct Witness {
    table: WitnessTable,
    state: PathBuf,
}

impl Witness {
    pub fn new(table: WitnessTable, state_dir: &Path) -> Witness {
        Witness { table, state: state_dir.join(STATE_FILE) }
    }

    /// Handles one request that arrived at `now`: the reply to send, after any durable
    /// write it depends on. An `Err` is a failed durable write: the caller must exit
    /// without answering.
    pub fn handle(&mut self, req: Request, now: Instant) -> io::Result<Reply> {
        match req {
            Request::Acquire { seq, group, node, incarnation } => {
                match self.table.request(&group, &node, incarnation, seq, now) {
                    Answer::Granted { lease, persist } => {
                        if persist {
                            write_atomic(&self.state, &encode_holders(&self.table.holders()))?;
                            eprintln!("witness: group {group} granted to {node} (incarnation {incarnation})");
                        }
                        Ok(Reply::Grant { seq, group, incarnation, lease })
                    }
                    Answer::Refused { holder, remaining } => Ok(Reply::Refuse { seq, group, holder, remaining }),
                }
            }
            Request::Release { seq, group, node, incarnation } => {
                if self.table.release(&group, &node, incarnation, seq) {
                    write_atomic(&self.state, &encode_holders(&self.table.holders()))?;
                    eprintln!("witness: group {group} released by {node}");
                }
                Ok(Reply::Released { seq, group })
            }
        }
    }
}

/// Sends `req` to the witness at `addr` and waits up to `wait` for its answer to this
/// request (same `seq` and group; anything else is ignored). Blocking; for tools and
/// tests. `Ok(None)`: no answer in time.
pub fn ask(addr: SocketAddr, auth: &Auth, req: &Request, wait: Duration) -> io::Result<Option<Reply>> {
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(bind)?;
    socket.send_to(&auth.seal_witness(&req.encode()), addr)?;
    let (want_seq, want_group) = match req {
        Request::Acquire { seq, group, .. } | Request::Release { seq, group, .. } => (*seq, group.as_str()),
    };
    let deadline = std::time::Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => n,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let reply = auth.open_witness(&buf[..n]).and_then(|plain| Reply::decode(&plain));
        let matches = match &reply {
            Some(
                Reply::Grant { seq, group, .. } | Reply::Refuse { seq, group, .. } | Reply::Released { seq, group },
            ) => *seq == want_seq && group == want_group,
            None => false,
        };
        if matches {
            return Ok(reply);
        }
    }
}

/// `takeover witness`'s arguments.
#[derive(Debug)]
pub struct WitnessArgs {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub lease: Duration,
    pub margin: Duration,
    /// The cluster's name and key (or the unauthenticated mode of `auth = "none"`).
    pub auth: Auth,
}

/// Runs the witness until killed (blocking; one thread: each request is answered, with
/// its durable write, before the next is read).
pub fn main(args: WitnessArgs) -> anyhow::Result<()> {
    if args.margin >= args.lease / 3 {
        bail!("--margin ({:?}) must be less than a third of --lease ({:?})", args.margin, args.lease);
    }
    fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    let origin = std::time::Instant::now();
    let now = || Instant(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let (table, start) = load(&args.state_dir, args.lease, args.margin, now());
    match &start {
        Start::Restored(h) => eprintln!("witness: restored {} holder(s), each holding a full lease again", h.len()),
        Start::Quiet(why) => {
            eprintln!("witness: {why}; granting nothing for {:?} (lease + margin)", args.lease + args.margin)
        }
    }
    let socket = UdpSocket::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    eprintln!("witness: listening on {}", socket.local_addr()?);
    let mut witness = Witness::new(table, &args.state_dir);
    let mut buf = [0u8; 1024];
    let mut dropped = 0u64;
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving"),
        };
        let Some(plain) = args.auth.open_witness(&buf[..n]) else {
            dropped += 1;
            if dropped.is_power_of_two() {
                eprintln!(
                    "witness: dropped a datagram from {from} that is not sealed with this cluster's key ({dropped} so far): a forgery, or a node of another cluster or with another key"
                );
            }
            continue;
        };
        let Some(req) = Request::decode(&plain) else {
            eprintln!("witness: ignored a malformed request from {from}");
            continue;
        };
        let reply = witness
            .handle(req, now())
            .with_context(|| format!("persisting the holders to {}", witness.state.display()))?;
        if let Err(e) = socket.send_to(&args.auth.seal_witness(&reply.encode()), from) {
            eprintln!("witness: cannot answer {from}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(6);
    const MARGIN: Duration = Duration::from_millis(500);

    fn at(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }

    fn acquire(group: &str, node: &str) -> Request {
        Request::Acquire { seq: 7, group: group.into(), node: node.into(), incarnation: 3 }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        for r in
            [acquire("web", "a"), Request::Release { seq: 1, group: "web".into(), node: "b".into(), incarnation: 2 }]
        {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
        for r in [
            Reply::Grant { seq: 1, group: "g".into(), incarnation: 4, lease: LEASE },
            Reply::Refuse { seq: 2, group: "g".into(), holder: Some("a".into()), remaining: MARGIN },
            Reply::Refuse { seq: 2, group: "g".into(), holder: None, remaining: MARGIN },
            Reply::Released { seq: 3, group: "g".into() },
        ] {
            assert_eq!(Reply::decode(&r.encode()), Some(r));
        }
        for bad in ["", "TKW1", "TKW1 REQ x g n 1", "TKW1 REQ 1 g n", "TKW1 REQ 1  n 1", "TKW2 REQ 1 g n 1"] {
            assert_eq!(Request::decode(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(Reply::decode(b"TKW1 GRANT 1 g"), None);
        assert_eq!(Request::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn holders_file_round_trips_and_detects_corruption() {
        let h = vec![("db".to_string(), "b".to_string()), ("web".to_string(), "a".to_string())];
        let bytes = encode_holders(&h);
        assert_eq!(decode_holders(&bytes), Some(h));
        assert_eq!(decode_holders(&encode_holders(&[])), Some(vec![]));
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert_eq!(decode_holders(&bad), None);
        assert_eq!(decode_holders(&bytes[..bytes.len() - 3]), None);
    }

    #[test]
    fn first_start_is_quiet_then_grants_persist_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (table, start) = load(dir.path(), LEASE, MARGIN, at(0));
        assert!(matches!(start, Start::Quiet(_)));
        let mut w = Witness::new(table, dir.path());
        assert!(matches!(w.handle(acquire("web", "a"), at(100)).unwrap(), Reply::Refuse { holder: None, .. }));
        assert!(matches!(w.handle(acquire("web", "a"), at(6500)).unwrap(), Reply::Grant { .. }));
        assert!(dir.path().join(STATE_FILE).exists());

        // Restart: a's lease runs again in full from the restart; b waits for it.
        let (table, start) = load(dir.path(), LEASE, MARGIN, at(0));
        assert_eq!(start, Start::Restored(vec![("web".into(), "a".into())]));
        let mut w = Witness::new(table, dir.path());
        assert!(matches!(w.handle(acquire("web", "b"), at(6499)).unwrap(), Reply::Refuse { .. }));
        assert!(matches!(w.handle(acquire("web", "a"), at(10)).unwrap(), Reply::Grant { .. }));

        // A restored lease is never released (its earlier grants are unknown): it expires.
        let rel = |node: &str, seq| Request::Release { seq, group: "web".into(), node: node.into(), incarnation: 3 };
        assert!(matches!(w.handle(rel("a", 9), at(15)).unwrap(), Reply::Released { .. }));
        assert!(matches!(w.handle(acquire("web", "b"), at(6509)).unwrap(), Reply::Refuse { .. }));
        assert!(matches!(w.handle(acquire("web", "b"), at(6510)).unwrap(), Reply::Grant { .. }));

        // b's release overtaken by its renewal (seq 7) frees nothing; a later one does,
        // durably.
        assert!(matches!(w.handle(rel("b", 5), at(6600)).unwrap(), Reply::Released { .. }));
        assert!(matches!(w.handle(acquire("web", "a"), at(6601)).unwrap(), Reply::Refuse { .. }));
        assert!(matches!(w.handle(rel("b", 9), at(6602)).unwrap(), Reply::Released { .. }));
        let (table, start) = load(dir.path(), LEASE, MARGIN, at(0));
        assert_eq!(start, Start::Restored(vec![]));
        let mut w = Witness::new(table, dir.path());
        assert!(matches!(w.handle(acquire("web", "a"), at(0)).unwrap(), Reply::Grant { .. }));
    }

    #[test]
    fn a_corrupt_state_file_makes_the_witness_quiet() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"garbage").unwrap();
        let (table, start) = load(dir.path(), LEASE, MARGIN, at(0));
        assert!(matches!(start, Start::Quiet(ref why) if why.contains("corrupt")));
        let mut w = Witness::new(table, dir.path());
        assert!(matches!(w.handle(acquire("web", "a"), at(6499)).unwrap(), Reply::Refuse { .. }));
        assert!(matches!(w.handle(acquire("web", "a"), at(6500)).unwrap(), Reply::Grant { .. }));
    }

    #[test]
    fn a_failed_durable_write_answers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Witness::new(WitnessTable::new(LEASE, MARGIN), &dir.path().join("missing-dir"));
        assert!(w.handle(acquire("web", "a"), at(0)).is_err());
    }
}
