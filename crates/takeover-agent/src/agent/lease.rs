//! The witness leases of this node's groups (issue 6, `[witness]`).
//!
//! The rules (see ARCHITECTURE.md, "Witness leases"):
//! - a group's resources start only while this node holds the group's lease: the agent
//!   defers a start the core commands until the lease is granted;
//! - a lease is wanted while the group is active here (M or SM) or has anything up or
//!   starting;
//!   wanted leases are renewed every `lease / 3` (retried sooner while not held), others
//!   are released;
//! - the guard is renewed only while every lease of a group with anything up here covers
//!   the guard's timeout ([`HeldLease::covers`]), so a node that cannot renew — or whose
//!   agent is paused — is stopped by its guard before its lease ends;
//!
//! The witness is not a fence: it cannot stop a node (see `config`). A node that is
//! behind (its peer went on alone after fencing it) is kept waiting by the core's
//! durable priorities, not by the witness.
//!
//! The bookkeeping of one lease is [`HeldLease`] in the core (pure, on this node's clock);
//! this module sends the datagrams and reads the answers.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use takeover_core::node::GroupIndex;
use takeover_core::witness::HeldLease;
use takeover_core::{Instant, Role};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::WitnessConfig;

/// A duration for people: whole milliseconds.
fn format_duration(d: Duration) -> String {
    crate::config::format_duration(Duration::from_millis(d.as_millis() as u64))
}
use crate::witness::{Reply, Request};

/// The longest wait between two requests for a lease that is not held.
const RETRY_MAX: Duration = Duration::from_millis(200);

/// One group's lease.
struct GroupLease {
    index: GroupIndex,
    name: String,
    held: HeldLease,
    /// When the last request went out.
    last_attempt: Option<Instant>,
    /// Not before this instant (a refusal said when the holder's lease ends).
    retry_at: Option<Instant>,
    /// Requests sent since the last release: the witness may hold a lease for us.
    outstanding: bool,
    /// The witness's last refusal: who holds the group, and until when (our clock).
    refused: Option<(Option<String>, Instant)>,
}

/// The witness leases of one node's groups.
pub(super) struct Leases {
    cfg: WitnessConfig,
    node: String,
    incarnation: u64,
    socket: Arc<UdpSocket>,
    auth: Arc<crate::auth::Auth>,
    groups: Vec<GroupLease>,
    retry: Duration,
}

impl Leases {
    /// Binds a UDP socket for the witness and starts reading its answers into `answers`.
    /// `groups`: every group of this node, with the node it shares it with.
    pub fn start(
        cfg: &WitnessConfig,
        node: &str,
        incarnation: u64,
        groups: &[(GroupIndex, String)],
        answers: mpsc::UnboundedSender<Reply>,
        auth: Arc<crate::auth::Auth>,
    ) -> std::io::Result<Leases> {
        let any: SocketAddr = match cfg.address {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let std_socket = std::net::UdpSocket::bind(any)?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let reader = socket.clone();
        let witness = cfg.address;
        let opener = auth.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, from)) = reader.recv_from(&mut buf).await else {
                    // ICMP errors (witness unreachable) surface here: keep reading.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if from != witness {
                    continue;
                }
                // Not sealed with the cluster's key: forged, and dropped.
                if let Some(reply) = opener.open_witness(&buf[..n]).and_then(|plain| Reply::decode(&plain))
                    && answers.send(reply).is_err()
                {
                    return;
                }
            }
        });
        let groups = groups
            .iter()
            .map(|(index, name)| GroupLease {
                index: *index,
                name: name.clone(),
                held: HeldLease::new(cfg.lease, cfg.margin),
                last_attempt: None,
                retry_at: None,
                outstanding: false,
                refused: None,
            })
            .collect();
        Ok(Leases {
            cfg: cfg.clone(),
            node: node.to_string(),
            incarnation,
            socket,
            auth,
            groups,
            retry: (cfg.lease / 10).min(RETRY_MAX),
        })
    }

    fn find(&self, index: GroupIndex) -> Option<&GroupLease> {
        self.groups.iter().find(|it| it.index == index)
    }

    fn send(&self, request: &Request) {
        // A lost or refused datagram is what the lease's timing is made for.
        let _ = self.socket.try_send_to(&self.auth.seal_witness(&request.encode()), self.cfg.address);
    }

    /// Sends the requests and releases due at `now`, given the groups whose lease is
    /// wanted. Returns what to record.
    pub fn tick(&mut self, now: Instant, wanted: &HashSet<GroupIndex>) -> Vec<String> {
        let mut events = Vec::new();
        let mut out = Vec::new();
        for g in &mut self.groups {
            if wanted.contains(&g.index) {
                let due = if g.held.valid(now) {
                    g.held.renew_due(now)
                } else {
                    g.last_attempt.is_none_or(|t| now.since(t) >= self.retry) && g.retry_at.is_none_or(|t| now >= t)
                };
                if due {
                    let seq = g.held.sending(now);
                    g.last_attempt = Some(now);
                    g.outstanding = true;
                    out.push(Request::Acquire {
                        seq,
                        group: g.name.clone(),
                        node: self.node.clone(),
                        incarnation: self.incarnation,
                    });
                }
            } else if g.outstanding {
                let was_held = g.held.valid(now);
                let seq = g.held.release();
                g.outstanding = false;
                g.last_attempt = None;
                g.retry_at = None;
                out.push(Request::Release {
                    seq,
                    group: g.name.clone(),
                    node: self.node.clone(),
                    incarnation: self.incarnation,
                });
                if was_held {
                    events.push(format!("witness: released the lease of group {}", g.name));
                }
            }
        }
        for request in &out {
            self.send(request);
        }
        events
    }

    /// Releases every lease (the agent stops; its services are down).
    pub fn release_all(&mut self, now: Instant) -> Vec<String> {
        self.tick(now, &HashSet::new())
    }

    /// An answer from the witness. Returns what to record.
    pub fn on_reply(&mut self, reply: Reply, now: Instant) -> Option<String> {
        match reply {
            Reply::Grant { seq, group, incarnation, lease } => {
                if incarnation != self.incarnation {
                    return None;
                }
                let g = self.groups.iter_mut().find(|it| it.name == group)?;
                if !g.outstanding {
                    return None;
                }
                let was_held = g.held.valid(now);
                if !g.held.granted(seq, lease) || was_held || !g.held.valid(now) {
                    return None;
                }
                g.refused = None;
                g.retry_at = None;
                let left = g.held.valid_until().map_or(Duration::ZERO, |until| until.since(now));
                Some(format!(
                    "witness: granted the lease of group {group} to this node (held for {})",
                    format_duration(left)
                ))
            }
            Reply::Refuse { group, holder, remaining, .. } => {
                let me = self.node.clone();
                let cap = self.cfg.lease + self.cfg.margin;
                let g = self.groups.iter_mut().find(|it| it.name == group)?;
                if !g.outstanding {
                    return None;
                }
                let ends = now.after(remaining.min(cap));
                g.retry_at = Some(ends);
                let first = g.refused.is_none();
                g.refused = Some((holder.clone(), ends));
                // The witness does not count this node as the holder: whatever this node
                // believed ends now (it can only be shorter than its view).
                let lost = g.held.valid(now) && holder.as_deref() != Some(me.as_str());
                if lost {
                    g.held.drop_lease();
                    g.outstanding = true;
                }
                let by = holder.map_or("nobody yet (the witness restarted without its state)".to_string(), |h| h);
                match (lost, first) {
                    (true, _) => Some(format!(
                        "ALARM: witness: refused to renew the lease of group {group} (held by {by}); this node no longer holds it"
                    )),
                    (false, true) => Some(format!(
                        "witness: lease of group {group} refused: held by {by} for {} more",
                        format_duration(remaining)
                    )),
                    (false, false) => None,
                }
            }
            Reply::Released { .. } => None,
        }
    }

    /// Whether this node holds `index`'s lease at `now`.
    pub fn valid(&self, index: GroupIndex, now: Instant) -> bool {
        self.find(index).is_some_and(|g| g.held.valid(now))
    }

    /// Whether `index`'s lease is held for at least `d` more from `now`.
    pub fn covers(&self, index: GroupIndex, now: Instant, d: Duration) -> bool {
        self.find(index).is_some_and(|g| g.held.covers(now, d))
    }

    /// Whether this node holds the lease of every group it shares with `peer`.
    /// For `status`: the lease of `index` in words.
    pub fn describe(&self, index: GroupIndex, now: Instant) -> Option<String> {
        let g = self.find(index)?;
        Some(match (g.held.valid_until(), &g.refused) {
            (Some(until), _) if now < until => {
                format!("held for {}", format_duration(until.since(now)))
            }
            (_, Some((holder, ends))) if g.outstanding => format!(
                "not held: the witness refused it (holder {}, for {} more)",
                holder.as_deref().unwrap_or("none, the witness restarted"),
                format_duration(if now < *ends { ends.since(now) } else { Duration::ZERO })
            ),
            _ if g.outstanding => "not held: requested from the witness".to_string(),
            _ => "not held (not needed)".to_string(),
        })
    }
}

/// The agent's witness state: the leases, the answers' channel, the resource starts
/// waiting for a lease.
pub(super) struct Witnessing {
    leases: Option<Leases>,
    answers_tx: mpsc::UnboundedSender<Reply>,
    pub answers: mpsc::UnboundedReceiver<Reply>,
    /// Starts the core commanded that wait for their group's lease (one per group: a
    /// runner runs one operation at a time).
    deferred: Vec<(GroupIndex, usize)>,
    /// The guard is not being renewed because a lease does not cover it (recorded once).
    guard_held_back: bool,
}

impl Witnessing {
    pub fn new() -> Witnessing {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        Witnessing { leases: None, answers_tx, answers, deferred: Vec::new(), guard_held_back: false }
    }

    /// Whether a `[witness]` is in use.
    pub fn on(&self) -> bool {
        self.leases.is_some()
    }

    /// How often the leases are looked at.
    pub fn tick_every(&self) -> Duration {
        match &self.leases {
            Some(l) => l.retry.min(l.cfg.lease / 12).max(Duration::from_millis(10)),
            None => Duration::from_secs(3600),
        }
    }
}

impl super::Agent {
    /// Opens the witness socket when `[witness]` is configured.
    pub(super) fn start_witness(&mut self) -> anyhow::Result<()> {
        let Some(cfg) = self.cfg.witness.clone() else { return Ok(()) };
        let groups: Vec<(GroupIndex, String)> = self.groups.iter().map(|g| (g.index, g.name.clone())).collect();
        let leases = Leases::start(
            &cfg,
            &self.me.name,
            self.incarnation.0,
            &groups,
            self.witness.answers_tx.clone(),
            self.identity.auth.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot open a UDP socket for the witness at {}: {e}", cfg.address))?;
        self.witness.leases = Some(leases);
        self.record(format!(
            "witness: {} (lease {}, margin {}); a group runs here only while this node holds its lease",
            cfg.address,
            format_duration(cfg.lease),
            format_duration(cfg.margin)
        ));
        Ok(())
    }

    /// The groups with anything up or starting on this node (a deferred start excluded).
    fn groups_running(&self, now: Instant) -> HashSet<GroupIndex> {
        self.node
            .status(now)
            .groups
            .iter()
            .filter(|(index, _, _, runner)| {
                runner.up > 0 || (runner.busy.is_some() && !self.witness.deferred.iter().any(|(g, _)| g == index))
            })
            .map(|(index, ..)| *index)
            .collect()
    }

    /// The leases this node wants now: a group active here (M or SM), or with anything
    /// up or starting.
    fn wanted_leases(&self, now: Instant) -> HashSet<GroupIndex> {
        let mut wanted = self.groups_running(now);
        for (index, _, gs, _) in &self.node.status(now).groups {
            let deferred = self.witness.deferred.iter().any(|(g, _)| g == index);
            if matches!(gs.role, Role::M | Role::Sm) || deferred {
                wanted.insert(*index);
            }
        }
        wanted
    }

    /// Sends what is due to the witness and runs the starts whose lease came.
    pub(super) fn lease_tick(&mut self) {
        let now = self.now();
        if !self.witness.on() {
            return;
        }
        let wanted = self.wanted_leases(now);
        let Some(leases) = self.witness.leases.as_mut() else { return };
        let events = leases.tick(now, &wanted);
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.witness.deferred.drain(..).partition(|(g, _)| leases.valid(*g, now));
        self.witness.deferred = waiting;
        for text in events {
            self.record(text);
        }
        for (group, resource) in ready {
            self.start_op(group, resource, takeover_core::runner::Op::Start);
        }
    }

    /// An answer from the witness.
    pub(super) fn on_witness_answer(&mut self, reply: Reply) -> anyhow::Result<()> {
        let now = self.now();
        let Some(leases) = self.witness.leases.as_mut() else { return Ok(()) };
        if let Some(text) = leases.on_reply(reply, now) {
            self.record(text);
        }
        self.lease_tick();
        // A renewal that came late may let the guard be renewed again at once.
        if self.witness.guard_held_back {
            self.renew_guard()?;
        }
        Ok(())
    }

    /// Runs a resource operation the core commanded; with a witness, a start waits for
    /// its group's lease.
    pub(super) fn start_or_defer(&mut self, group: GroupIndex, resource: usize, op: takeover_core::runner::Op) {
        let now = self.now();
        let waits = op == takeover_core::runner::Op::Start
            && self.witness.leases.as_ref().is_some_and(|l| !l.valid(group, now));
        if !waits {
            self.start_op(group, resource, op);
            return;
        }
        self.witness.deferred.retain(|(g, _)| *g != group);
        self.witness.deferred.push((group, resource));
        if let Some(rt) = self.groups.iter().find(|it| it.index == group) {
            let text = format!(
                "group {}: {} waits for the witness's lease before it starts",
                rt.name,
                rt.resources[resource].spec.label()
            );
            self.record(text);
        }
        self.lease_tick();
    }

    /// Renews the guard, unless a group with anything up here holds a lease that ends
    /// before the guard's timeout would: then the guard stops this node's services
    /// before the lease ends (the witness may grant the group to another node after it).
    pub(super) fn renew_guard(&mut self) -> anyhow::Result<()> {
        if let Some(leases) = &self.witness.leases {
            let now = self.now();
            let timeout = self.cfg.guard.timeout;
            let short: Vec<GroupIndex> =
                self.groups_running(now).into_iter().filter(|g| !leases.covers(*g, now, timeout)).collect();
            if !short.is_empty() {
                if !self.witness.guard_held_back {
                    self.witness.guard_held_back = true;
                    let names: Vec<String> = self
                        .groups
                        .iter()
                        .filter(|it| short.contains(&it.index))
                        .map(|it| format!("{} ({})", it.name, leases.describe(it.index, now).unwrap_or_default()))
                        .collect();
                    self.record(format!(
                        "ALARM: witness: the lease of {} does not cover the guard's timeout ({}); the guard is no longer renewed and stops this node's services before the lease ends",
                        names.join(", "),
                        format_duration(timeout)
                    ));
                }
                return Ok(());
            }
            if self.witness.guard_held_back {
                self.witness.guard_held_back = false;
                self.record("witness: the leases cover the guard again; renewing it".into());
            }
        }
        self.watchdog.renew()
    }

    /// The agent stops (its services are down): gives every lease back.
    pub(super) fn release_leases(&mut self) {
        let now = self.now();
        self.witness.deferred.clear();
        let events = self.witness.leases.as_mut().map(|l| l.release_all(now)).unwrap_or_default();
        for text in events {
            self.record(text);
        }
    }

    /// For `status`: the lease of a group in words (with a witness).
    pub(super) fn lease_text(&self, index: GroupIndex) -> Option<String> {
        self.witness.leases.as_ref().and_then(|l| l.describe(index, self.now()))
    }
}
