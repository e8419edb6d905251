//! Authenticated, encrypted cluster traffic: the cluster key, and the sealing and opening
//! of heartbeats and peer-channel frames with ChaCha20-Poly1305 (`ring`).
//!
//! Every node of a cluster holds the same 32-byte cluster key (`[cluster] key_file`,
//! written by `takeover keygen`, checked by [`keyfile`]). Nothing from the network reaches
//! the event loop, let alone the core, unless it opened under that key, is addressed to
//! this node and link, and is fresh; everything else is dropped and counted by
//! [`DropReason`] (`status` → `dropped`). Like Corosync's `authkey`, the key proves
//! membership of the cluster, not which member spoke: every node holds it.
//!
//! ## Keys and nonces
//!
//! ```text
//! prk            = HKDF-SHA256-Extract(salt "takeover cluster key v2", cluster key)
//! heartbeat key  = HKDF-Expand(prk, "takeover/2 heartbeat" | name | sender | incarnation | run)
//! channel keys   = HKDF-Expand(prk, "takeover/2 channel" | name | dialer's Hello | acceptor's Hello | direction)
//! nonce (96 bit) = counter u64 | 0u32
//! associated data = "takeover/2 heartbeat" or "takeover/2 frame" | name | the clear header
//! ```
//!
//! (`name` is the cluster name, length-prefixed.) A (key, nonce) pair is never used twice:
//! - A heartbeat key belongs to one run of one sender: its durable incarnation, which
//!   `store::next_incarnation` raises and fsyncs before anything is sent, and `run`, 64
//!   random bits drawn at every start, so that even a state directory restored from a
//!   backup (an incarnation rolled back) gets a key of its own. The counter rises by one
//!   with every heartbeat sealed in the run.
//! - Channel keys belong to one connection and direction: both sides put 16 fresh random
//!   bytes in their Hello, and the keys depend on both Hellos. Frames count 0 (Confirm),
//!   1, 2, … per direction.
//!
//! The associated data binds the cluster name and the kind (heartbeat or frame), as the
//! key derivation does, so a key shared by two clusters, or a heartbeat replayed as a
//! frame, never verifies. The clear header (sender, addressee, link, incarnation, run,
//! counter, frame length and kind) is covered by the tag; the body (a heartbeat's echo,
//! a frame's group message) is encrypted.
//!
//! ## Freshness
//!
//! Heartbeats: the receiver keeps, per peer, the newest run it authenticated and one
//! [`window::ReplayWindow`] per link (64 counters). A counter already seen, or older than
//! the window, or a run older than the newest, is a replay. Windows live in memory, so a
//! restarted receiver would accept old captured heartbeats: each heartbeat therefore
//! echoes the receiver's `run` as the sender last heard it, and only a heartbeat that
//! echoes the receiver's current run counts as heard ([`Opened::Fresh`]). A peer's
//! heartbeats count from its first heartbeat after it heard this node (one heartbeat
//! interval after a start); a recording made before this node's start never counts.
//!
//! Channel: the Hellos are sent in the clear; each side then sends a Confirm sealed
//! under keys that depend on both Hellos, and the connection is up (reported to the
//! event loop) only once the peer's Confirm opened. A recorded connection replayed to
//! either side fails at its Confirm. After that, frames must come with exactly the next
//! counter: an older counter is a replay and is skipped (the stream stays whole); a
//! newer one means frames were removed or reordered, and a frame that does not open was
//! forged or corrupted: either way the connection is closed, since a message may be
//! missing, and replication resumes from the durable positions on the next connection.
//!
//! ## `auth = "none"`
//!
//! For test and demo clusters on a trusted network the configuration may say
//! `auth = "none"`: the same code runs with a publicly known key (all zeros under a salt
//! of its own, so it never matches a key file), so traffic is
//! still checked for corruption, replays and misrouting, but anyone on the links can
//! forge it. `status` shows it and the agent logs a warning at start.

use std::collections::HashMap;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use takeover_core::{Incarnation, NodeId};

use crate::wire::{self, FrameHeader, FrameKind, HeartbeatHeader, TAG_LEN};

pub mod keyfile;
pub mod window;

use window::{Replay, ReplayWindow};

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// What `status` calls the authenticated mode.
pub const ALGORITHM: &str = "chacha20-poly1305";

const HKDF_SALT: &[u8] = b"takeover cluster key v2";
/// The salt of `auth = "none"`: its public key never matches a key file, even all zeros.
const HKDF_SALT_NONE: &[u8] = b"takeover no key v2";
const HEARTBEAT_DOMAIN: &[u8] = b"takeover/2 heartbeat";
const WITNESS_DOMAIN: &[u8] = b"takeover/2 witness";
const CHANNEL_DOMAIN: &[u8] = b"takeover/2 channel";
const FRAME_DOMAIN: &[u8] = b"takeover/2 frame";

/// The shared secret of a cluster. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// A new key from the system's random number generator.
    pub fn generate() -> ClusterKey {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes);
        ClusterKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Fills `out` from the system's random number generator (getrandom). A failure of the
/// kernel's generator leaves nothing safe to do: it panics.
pub fn fill_random(out: &mut [u8]) {
    SystemRandom::new().fill(out).expect("the system random number generator failed");
}

/// 64 random bits, never 0 (0 is the echo of "not heard yet").
pub fn random_run() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        fill_random(&mut bytes);
        let run = u64::from_le_bytes(bytes);
        if run != 0 {
            return run;
        }
    }
}

/// Why received traffic was dropped; `status` counts each (`dropped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The bytes are not a well-formed packet of this protocol version.
    Malformed,
    /// Traffic of another cluster, or addressed to another node or link.
    Foreign,
    /// The sender is not a peer of this node in the configuration.
    UnknownSender,
    /// Fails authentication: another cluster key, or forged or corrupted bytes.
    BadTag,
    /// Authentic, but replayed, duplicated, reordered, or from an older run.
    Replay,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [DropReason::Malformed, DropReason::Foreign, DropReason::UnknownSender, DropReason::BadTag, DropReason::Replay];

    /// The key in `status` → `dropped`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Foreign => "foreign",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::BadTag => "bad_tag",
            DropReason::Replay => "replay",
        }
    }

    /// What it means, for people.
    pub fn explain(self) -> &'static str {
        match self {
            DropReason::Malformed => "not a well-formed packet of this protocol version (garbage, or another version)",
            DropReason::Foreign => {
                "another cluster's traffic, or addressed to another node or link (check cluster names and advertise addresses)"
            }
            DropReason::UnknownSender => "the sender is not a peer of this node in the configuration",
            DropReason::BadTag => {
                "fails authentication: the sender uses another cluster key (compare key_file on every node), or the bytes were forged or corrupted"
            }
            DropReason::Replay => "authentic but replayed, duplicated, reordered, or from an older run of the sender",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Traffic refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DropReason,
    pub detail: String,
}

impl Refusal {
    fn new(reason: DropReason, detail: impl Into<String>) -> Refusal {
        Refusal { reason, detail: detail.into() }
    }
}

/// One cluster's key material, derived once from the key and the cluster name.
pub struct Auth {
    name: String,
    cluster_id: u64,
    prk: hkdf::Prk,
    authenticated: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth {{ cluster: {:?}, mode: {} }}", self.name, self.mode())
    }
}

impl Auth {
    /// Traffic of cluster `name` under `key`.
    pub fn with_key(name: &str, key: &ClusterKey) -> Auth {
        Auth::derive_from(name, key, HKDF_SALT, true)
    }

    /// `auth = "none"`: the same checks under a publicly known key (all zeros), so anyone
    /// on the links can forge traffic.
    pub fn unauthenticated(name: &str) -> Auth {
        Auth::derive_from(name, &ClusterKey([0; KEY_LEN]), HKDF_SALT_NONE, false)
    }

    fn derive_from(name: &str, key: &ClusterKey, salt: &[u8], authenticated: bool) -> Auth {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&key.0);
        Auth { name: name.to_string(), cluster_id: wire::cluster_id(name), prk, authenticated }
    }

    /// `chacha20-poly1305`, or `none` for `auth = "none"`.
    pub fn mode(&self) -> &'static str {
        if self.authenticated { ALGORITHM } else { "none" }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn key(&self, domain: &[u8], parts: &[&[u8]]) -> LessSafeKey {
        let name_len = (self.name.len() as u16).to_le_bytes();
        let mut info: Vec<&[u8]> = vec![domain, &name_len, self.name.as_bytes()];
        info.extend_from_slice(parts);
        let okm = self.prk.expand(&info, &CHACHA20_POLY1305).expect("HKDF output of one key length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    fn associated_data(&self, domain: &[u8], header: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(domain.len() + 2 + self.name.len() + header.len());
        ad.extend_from_slice(domain);
        ad.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        ad.extend_from_slice(self.name.as_bytes());
        ad.extend_from_slice(header);
        ad
    }

    /// A witness datagram (`takeover witness` and the agents' lease requests): a random
    /// 96-bit nonce, then `plain` sealed under the cluster's witness key, the cluster's
    /// name as associated data. Replays need no window here: the witness's rules ignore
    /// an old request's release, a renewal only ever extends the lease of the node that
    /// sent it, and a holder counts a grant only for a request it still remembers.
    pub fn seal_witness(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; NONCE_LEN];
        fill_random(&mut out);
        let nonce = Nonce::try_assume_unique_for_key(&out).expect("NONCE_LEN bytes");
        let mut body = plain.to_vec();
        let ad = self.associated_data(WITNESS_DOMAIN, &[]);
        let tag = self
            .key(WITNESS_DOMAIN, &[])
            .seal_in_place_separate_tag(nonce, Aad::from(&ad), &mut body)
            .expect("a witness datagram is far below the AEAD's limit");
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a witness datagram sealed by [`Auth::seal_witness`]; `None` if it was not
    /// sealed with this cluster's key and name, or was changed.
    pub fn open_witness(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN]).ok()?;
        let mut body = bytes[NONCE_LEN..].to_vec();
        let ad = self.associated_data(WITNESS_DOMAIN, &[]);
        let plain = self.key(WITNESS_DOMAIN, &[]).open_in_place(nonce, Aad::from(&ad), &mut body).ok()?;
        Some(plain.to_vec())
    }

    fn heartbeat_key(&self, from: NodeId, incarnation: Incarnation, run: u64) -> LessSafeKey {
        self.key(HEARTBEAT_DOMAIN, &[&from.0.to_le_bytes(), &incarnation.0.to_le_bytes(), &run.to_le_bytes()])
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[..8].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

// ------------------------------------------------------------------------------------
// Heartbeats
// ------------------------------------------------------------------------------------

/// The sending half of heartbeats: this run's key and counter.
pub struct HeartbeatSealer {
    auth: Arc<Auth>,
    me: NodeId,
    incarnation: Incarnation,
    run: u64,
    key: LessSafeKey,
    /// The counter of the last heartbeat sealed.
    counter: u64,
}

impl HeartbeatSealer {
    pub fn new(auth: Arc<Auth>, me: NodeId, incarnation: Incarnation, run: u64) -> HeartbeatSealer {
        let key = auth.heartbeat_key(me, incarnation, run);
        HeartbeatSealer { auth, me, incarnation, run, key, counter: 0 }
    }

    /// Seals the next heartbeat to `to` on `link`; `echo` is `to`'s run as this node last
    /// heard it (0 if never).
    pub fn seal(&mut self, link: u8, to: NodeId, echo: u64) -> Vec<u8> {
        self.counter += 1;
        let header = HeartbeatHeader {
            link,
            from: self.me,
            to,
            cluster: self.auth.cluster_id,
            incarnation: self.incarnation,
            run: self.run,
            counter: self.counter,
        };
        let header_bytes = wire::encode_heartbeat_header(&header);
        let mut out = Vec::with_capacity(wire::HEARTBEAT_LEN);
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(&echo.to_le_bytes());
        let ad = self.auth.associated_data(HEARTBEAT_DOMAIN, &header_bytes);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter), Aad::from(&ad), &mut out[wire::HEARTBEAT_HEADER_LEN..])
            .expect("a heartbeat is far below the AEAD's length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }
}

/// A heartbeat that opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// It echoes this node's current run: the peer's run is alive now.
    Fresh { from: NodeId, incarnation: Incarnation },
    /// Authentic and new, but the sender has not heard this run of this node yet (just
    /// after either side started), or it is a recording older than this run: it counts
    /// for nothing but teaches this node the sender's run, to echo it.
    Unconfirmed { from: NodeId, incarnation: Incarnation },
}

/// The receiving half of heartbeats: per peer, its newest authenticated run and a
/// replay window per link.
pub struct HeartbeatOpener {
    auth: Arc<Auth>,
    me: NodeId,
    run: u64,
    peers: Vec<NodeId>,
    links: usize,
    sessions: HashMap<NodeId, PeerRun>,
}

struct PeerRun {
    incarnation: Incarnation,
    run: u64,
    key: LessSafeKey,
    windows: Vec<ReplayWindow>,
}

impl HeartbeatOpener {
    /// `run` is this node's own run (what fresh heartbeats echo).
    pub fn new(auth: Arc<Auth>, me: NodeId, run: u64, peers: Vec<NodeId>, links: usize) -> HeartbeatOpener {
        HeartbeatOpener { auth, me, run, peers, links, sessions: HashMap::new() }
    }

    /// The run of `peer` to echo in heartbeats to it: the newest one authenticated, 0 if
    /// none yet.
    pub fn echo_for(&self, peer: NodeId) -> u64 {
        self.sessions.get(&peer).map_or(0, |it| it.run)
    }

    /// Checks a datagram received on `link`. Nothing changes unless it opens: a forgery
    /// cannot move a window or replace a peer's run.
    pub fn open(&mut self, link: usize, bytes: &[u8]) -> Result<Opened, Refusal> {
        let (header, header_bytes, sealed) =
            wire::decode_heartbeat(bytes).map_err(|e| Refusal::new(DropReason::Malformed, e.to_string()))?;
        if header.cluster != self.auth.cluster_id {
            return Err(Refusal::new(
                DropReason::Foreign,
                format!("cluster id {:016x}, not this cluster's {:016x}", header.cluster, self.auth.cluster_id),
            ));
        }
        if !self.peers.contains(&header.from) {
            return Err(Refusal::new(DropReason::UnknownSender, format!("from node #{}", header.from.0)));
        }
        let known =
            self.sessions.get(&header.from).filter(|it| it.incarnation == header.incarnation && it.run == header.run);
        let derived;
        let key = match known {
            Some(session) => &session.key,
            None => {
                derived = self.auth.heartbeat_key(header.from, header.incarnation, header.run);
                &derived
            }
        };
        let ad = self.auth.associated_data(HEARTBEAT_DOMAIN, header_bytes);
        let mut body = [0u8; wire::HEARTBEAT_BODY_LEN + TAG_LEN];
        body.copy_from_slice(sealed);
        let plain = key.open_in_place(nonce(header.counter), Aad::from(&ad), &mut body).map_err(|_| {
            Refusal::new(
                DropReason::BadTag,
                format!("claims node #{} incarnation {}", header.from.0, header.incarnation.0),
            )
        })?;
        let echo = u64::from_le_bytes(plain[..8].try_into().expect("8 bytes"));
        if header.to != self.me || usize::from(header.link) != link {
            return Err(Refusal::new(
                DropReason::Foreign,
                format!(
                    "addressed to node #{} on link {}, received by node #{} on link {link}",
                    header.to.0, header.link, self.me.0
                ),
            ));
        }
        let links = self.links;
        let session = match self.sessions.get_mut(&header.from) {
            Some(s) if s.incarnation == header.incarnation && s.run == header.run => s,
            Some(s) if header.incarnation <= s.incarnation => {
                return Err(Refusal::new(
                    DropReason::Replay,
                    format!(
                        "from an older run of node #{} (incarnation {}; its newest is {})",
                        header.from.0, header.incarnation.0, s.incarnation.0
                    ),
                ));
            }
            _ => {
                let key = self.auth.heartbeat_key(header.from, header.incarnation, header.run);
                let fresh = PeerRun {
                    incarnation: header.incarnation,
                    run: header.run,
                    key,
                    windows: vec![ReplayWindow::default(); links],
                };
                self.sessions.insert(header.from, fresh);
                self.sessions.get_mut(&header.from).expect("just inserted")
            }
        };
        let window = &mut session.windows[link];
        if let Err(replay) = window.check(header.counter) {
            return Err(Refusal::new(
                DropReason::Replay,
                format!(
                    "counter {} of node #{} incarnation {} {}",
                    header.counter,
                    header.from.0,
                    header.incarnation.0,
                    match replay {
                        Replay::Duplicate => "was already received",
                        Replay::TooOld => "is older than the replay window",
                    }
                ),
            ));
        }
        window.accept(header.counter);
        Ok(if echo == self.run {
            Opened::Fresh { from: header.from, incarnation: header.incarnation }
        } else {
            Opened::Unconfirmed { from: header.from, incarnation: header.incarnation }
        })
    }
}

// ------------------------------------------------------------------------------------
// The peer channel
// ------------------------------------------------------------------------------------

/// The keys of one channel connection, after both Hellos: `dialer_hello` and
/// `acceptor_hello` are the Hello payloads as sent; `dialer` says which side this is.
pub fn channel_keys(
    auth: &Arc<Auth>,
    dialer_hello: &[u8],
    acceptor_hello: &[u8],
    dialer: bool,
) -> (FrameSealer, FrameOpener) {
    let direction_key = |direction: u8| auth.key(CHANNEL_DOMAIN, &[dialer_hello, acceptor_hello, &[direction]]);
    let (from_dialer, from_acceptor) = (direction_key(1), direction_key(2));
    let (send, receive) = if dialer { (from_dialer, from_acceptor) } else { (from_acceptor, from_dialer) };
    (FrameSealer { auth: auth.clone(), key: send, next: 0 }, FrameOpener { auth: auth.clone(), key: receive, next: 0 })
}

/// Seals this side's frames of one connection, in order.
pub struct FrameSealer {
    auth: Arc<Auth>,
    key: LessSafeKey,
    next: u64,
}

impl FrameSealer {
    /// The Confirm: the first sealed frame, counter 0.
    pub fn confirm(&mut self) -> Vec<u8> {
        assert_eq!(self.next, 0, "the Confirm is the first sealed frame");
        self.seal(FrameKind::Confirm, &[])
    }

    /// A whole Group frame carrying `body` ([`wire::encode_group`]), counter 1, 2, ….
    pub fn seal_group(&mut self, body: &[u8]) -> Vec<u8> {
        assert!(self.next > 0, "the Confirm goes first");
        self.seal(FrameKind::Group, body)
    }

    fn seal(&mut self, kind: FrameKind, plaintext: &[u8]) -> Vec<u8> {
        let counter = self.next;
        self.next += 1;
        let header = wire::encode_frame_header(&FrameHeader { len: plaintext.len() + TAG_LEN, kind, counter });
        let mut out = Vec::with_capacity(wire::FRAME_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let ad = self.auth.associated_data(FRAME_DOMAIN, &header);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&ad), &mut out[wire::FRAME_HEADER_LEN..])
            .expect("frames are far below the AEAD's length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }
}

/// A frame refused on an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRefusal {
    pub refusal: Refusal,
    /// The connection cannot go on: a message may be missing or the stream is out of step.
    pub fatal: bool,
}

/// Opens the peer's frames of one connection, in order.
pub struct FrameOpener {
    auth: Arc<Auth>,
    key: LessSafeKey,
    next: u64,
}

impl FrameOpener {
    /// Opens a frame's payload in place; the plaintext to act on, or why not. The first
    /// frame must be the Confirm (counter 0), then Group frames with counters 1, 2, ….
    pub fn open<'p>(&mut self, header: &FrameHeader, payload: &'p mut [u8]) -> Result<&'p [u8], FrameRefusal> {
        let header_bytes = wire::encode_frame_header(header);
        let ad = self.auth.associated_data(FRAME_DOMAIN, &header_bytes);
        let refuse = |reason, fatal, detail: String| FrameRefusal { refusal: Refusal::new(reason, detail), fatal };
        if header.counter < self.next {
            // Skipping it leaves the stream whole. An authentic frame with an old counter
            // is a replay; anything else with an old counter was made up.
            if header.kind == FrameKind::Hello {
                return Err(refuse(DropReason::Malformed, false, "a Hello after the handshake".into()));
            }
            let reason = match self.key.open_in_place(nonce(header.counter), Aad::from(&ad), payload) {
                Ok(_) => DropReason::Replay,
                Err(_) => DropReason::BadTag,
            };
            return Err(refuse(reason, false, format!("frame counter {} (expected {})", header.counter, self.next)));
        }
        if header.counter > self.next {
            return Err(refuse(
                DropReason::Replay,
                true,
                format!("frame counter {} but {} expected: frames are missing or reordered", header.counter, self.next),
            ));
        }
        let expected = if self.next == 0 { FrameKind::Confirm } else { FrameKind::Group };
        if header.kind != expected {
            return Err(refuse(
                DropReason::Malformed,
                true,
                format!("a {:?} frame where a {expected:?} was expected", header.kind),
            ));
        }
        let plain = self.key.open_in_place(nonce(header.counter), Aad::from(&ad), payload).map_err(|_| {
            refuse(DropReason::BadTag, true, format!("{:?} frame {} does not open", header.kind, header.counter))
        })?;
        self.next += 1;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests;
