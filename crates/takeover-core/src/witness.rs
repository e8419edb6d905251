//! Witness leases (issue 6, part 2): the grant rules of `takeover witness` and the
//! holder's bookkeeping, both pure.
//!
//! A witness is a small process on a third machine that grants a lease per group to at
//! most one node at a time. Neither side ever compares its clock with the other's (F0.8):
//! a lease is a *duration*, measured by each side on its own monotonic clock, and the two
//! measurements are arranged so that the holder always believes the lease ended first.
//!
//! - The **holder** counts from the instant it *sent* the request that was granted, and
//!   believes the lease for `lease − margin`: [`HeldLease`].
//! - The **witness** counts from the instant it *received* that request, and considers
//!   the lease taken for `lease + margin`: [`WitnessTable`].
//!
//! Sending happens before receiving, so with equal clock rates the holder's view ends at
//! least `2 × margin` of real time before the witness's; `margin` absorbs the difference
//! between the two clocks' rates (a holder clock slow by a fraction ρ stretches its
//! `lease − margin` to `(lease − margin)(1 + ρ)`, which stays below `lease + margin` for
//! any ρ < 2·margin / (lease − margin)).
//!
//! Restarts of the witness: a grant that changes a group's holder (a new node, or a
//! release) is made durable by the shell *before* the answer is sent
//! ([`Answer::Granted::persist`]). After a restart the table is rebuilt from that file
//! with every recorded holder's lease running again in full from the restart
//! ([`WitnessTable::restore`]): only that holder may renew it before it expires, which
//! covers any lease granted before the crash. If the file cannot be read, the witness
//! grants nothing to anyone for `lease + margin` ([`WitnessTable::amnesiac`]), after which
//! every lease it could have granted has ended in its holder's view.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::types::Instant;

/// One group's lease as the witness holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessLease {
    /// The node holding the lease (its name in the cluster's configuration).
    pub holder: String,
    /// The holder's incarnation at its last grant (a node's newer run kills what its
    /// older run left before it asks, so the node is the unit that holds).
    pub incarnation: u64,
    /// The sequence number of the holder's latest granted request (in `incarnation`).
    pub last_seq: u64,
    /// Restored from the state file after a restart: the grants of the previous run are
    /// unknown, so no release is accepted for this lease (it can only expire).
    pub restored: bool,
    /// On the witness's clock: until this instant nobody else gets the group.
    pub until: Instant,
}

/// The witness's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The lease is the requester's for `lease` from when it sent the request (the
    /// holder subtracts its margin itself). If `persist`, the holder changed: the shell
    /// writes [`WitnessTable::holders`] durably before sending the answer, and does not
    /// send it if that write failed.
    Granted { lease: Duration, persist: bool },
    /// Another node holds the group for at least `remaining` more (on the witness's clock;
    /// a hint for logs, never used in a decision across machines).
    Refused { holder: Option<String>, remaining: Duration },
}

/// The grant rules of the witness: at most one holder per group, ever.
#[derive(Clone, Debug)]
pub struct WitnessTable {
    lease: Duration,
    margin: Duration,
    /// While `now` is before this, nothing is granted (the witness lost its memory).
    quiet_until: Instant,
    leases: BTreeMap<String, WitnessLease>,
}

impl WitnessTable {
    /// A witness starting with a known-empty history (first start: no state file).
    pub fn new(lease: Duration, margin: Duration) -> WitnessTable {
        WitnessTable { lease, margin, quiet_until: Instant(0), leases: BTreeMap::new() }
    }

    /// A witness restarting at `now` from its durable `(group, holder)` list: every
    /// recorded holder holds its group again for a full `lease + margin` from `now`.
    pub fn restore(lease: Duration, margin: Duration, holders: &[(String, String)], now: Instant) -> WitnessTable {
        let mut t = WitnessTable::new(lease, margin);
        let until = now.after(lease + margin);
        for (group, holder) in holders {
            t.leases.insert(
                group.clone(),
                WitnessLease { holder: holder.clone(), incarnation: 0, last_seq: 0, until, restored: true },
            );
        }
        t
    }

    /// A witness restarting at `now` without a readable state: it grants nothing to
    /// anyone for `lease + margin`.
    pub fn amnesiac(lease: Duration, margin: Duration, now: Instant) -> WitnessTable {
        let mut t = WitnessTable::new(lease, margin);
        t.quiet_until = now.after(lease + margin);
        t
    }

    /// `node` (run `incarnation`, request `seq`) asks for `group`'s lease; the request
    /// arrived at `now`.
    pub fn request(&mut self, group: &str, node: &str, incarnation: u64, seq: u64, now: Instant) -> Answer {
        if now < self.quiet_until {
            return Answer::Refused { holder: None, remaining: self.quiet_until.since(now) };
        }
        let until = now.after(self.lease + self.margin);
        match self.leases.get_mut(group) {
            Some(l) if l.holder == node => {
                if (incarnation, seq) > (l.incarnation, l.last_seq) {
                    (l.incarnation, l.last_seq) = (incarnation, seq);
                }
                // Never shorten: an old duplicate request arriving late must not pull
                // the end earlier than a later grant already promised.
                l.until = l.until.max(until);
                Answer::Granted { lease: self.lease, persist: false }
            }
            Some(l) if now < l.until => {
                Answer::Refused { holder: Some(l.holder.clone()), remaining: l.until.since(now) }
            }
            _ => {
                self.leases.insert(
                    group.to_string(),
                    WitnessLease { holder: node.to_string(), incarnation, last_seq: seq, until, restored: false },
                );
                Answer::Granted { lease: self.lease, persist: true }
            }
        }
    }

    /// `node` gives `group` back (it stopped the group's resources and forgot its grants,
    /// e.g. before a switchover), with release number `seq` of run `incarnation`.
    /// Returns whether the table changed (then the shell persists it).
    ///
    /// Only a release sent after every grant this witness made to that holder counts: a
    /// release delayed in the network past a later renewal must not free a lease the
    /// holder believes it holds. Hence `(incarnation, seq)` must be above the latest
    /// granted request's, and a lease restored after a restart (whose grants are
    /// unknown) is never released, only expires.
    pub fn release(&mut self, group: &str, node: &str, incarnation: u64, seq: u64) -> bool {
        if self
            .leases
            .get(group)
            .is_some_and(|l| l.holder == node && !l.restored && (incarnation, seq) > (l.incarnation, l.last_seq))
        {
            self.leases.remove(group);
            true
        } else {
            false
        }
    }

    /// The durable part: `(group, holder)` for every group with a holder, expired or not
    /// (an expired holder is harmless after a restart: it just holds the group again for
    /// one more lease, which it can only renew if it still asks).
    pub fn holders(&self) -> Vec<(String, String)> {
        self.leases.iter().map(|(g, l)| (g.clone(), l.holder.clone())).collect()
    }

    /// The current lease of `group`, if any (for status).
    pub fn lease_of(&self, group: &str) -> Option<&WitnessLease> {
        self.leases.get(group)
    }

    /// Until when (witness clock) the table grants nothing after an amnesiac restart.
    pub fn quiet_until(&self) -> Instant {
        self.quiet_until
    }
}

/// One group's lease as its (would-be) holder sees it, on the holder's own clock.
///
/// The holder sends a request every `lease / 3` ([`HeldLease::renew_due`]); each request
/// gets a sequence number and its send instant is remembered; a grant for request `seq`
/// makes the lease valid until `sent(seq) + lease − margin`. Grants are never
/// extrapolated from the answer's arrival time.
#[derive(Clone, Debug)]
pub struct HeldLease {
    margin: Duration,
    renew_every: Duration,
    next_seq: u64,
    /// Outstanding requests, oldest first: `(seq, sent at)`. Bounded.
    sent: Vec<(u64, Instant)>,
    last_sent: Option<Instant>,
    valid_until: Option<Instant>,
}

/// How many unanswered requests are remembered (older ones are forgotten, so their late
/// grants are ignored, which only ever shortens the holder's view).
const MAX_OUTSTANDING: usize = 8;

impl HeldLease {
    /// `lease` is the configured witness lease, `margin` the clock-rate margin.
    pub fn new(lease: Duration, margin: Duration) -> HeldLease {
        HeldLease { margin, renew_every: lease / 3, next_seq: 1, sent: Vec::new(), last_sent: None, valid_until: None }
    }

    /// Whether a request should be sent at `now` (none sent yet, or `lease / 3` since
    /// the last one).
    pub fn renew_due(&self, now: Instant) -> bool {
        self.last_sent.is_none_or(|t| now.since(t) >= self.renew_every)
    }

    /// When the next request is due.
    pub fn next_renewal(&self) -> Option<Instant> {
        self.last_sent.map(|t| t.after(self.renew_every))
    }

    /// A request is being sent at `now`: its sequence number, to put in the request.
    pub fn sending(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push((seq, now));
        if self.sent.len() > MAX_OUTSTANDING {
            self.sent.remove(0);
        }
        self.last_sent = Some(now);
        seq
    }

    /// The witness granted request `seq` for `lease` (as the witness states it). Returns
    /// whether the grant was for a request still remembered.
    pub fn granted(&mut self, seq: u64, lease: Duration) -> bool {
        let Some(pos) = self.sent.iter().position(|&(s, _)| s == seq) else {
            return false;
        };
        let sent_at = self.sent[pos].1;
        // Requests before this one can no longer extend anything beyond this grant.
        self.sent.drain(..=pos);
        let until = sent_at.after(lease.saturating_sub(self.margin));
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
        true
    }

    /// Whether the lease is held at `now` (strictly before its end in the holder's view).
    pub fn valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    /// Whether the lease is held for at least `d` more from `now`: the rule for renewing
    /// a guard whose timeout is `d`, so that a holder that stops renewing its guard (paused,
    /// or unable to renew the lease) is stopped by it before the lease ends.
    pub fn covers(&self, now: Instant, d: Duration) -> bool {
        self.valid_until.is_some_and(|v| now.after(d) <= v)
    }

    /// The end of the lease in the holder's view, if ever granted.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// The holder gives the lease up (after stopping the group, or on losing it):
    /// forgets every grant and every outstanding request.
    pub fn drop_lease(&mut self) {
        self.valid_until = None;
        self.sent.clear();
        self.last_sent = None;
    }

    /// Gives the lease up ([`HeldLease::drop_lease`]) and returns the sequence number
    /// for the release message: above every request sent before, so the witness can
    /// tell it from a release that was overtaken by a later renewal.
    pub fn release(&mut self) -> u64 {
        self.drop_lease();
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
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

    fn granted(persist: bool) -> Answer {
        Answer::Granted { lease: LEASE, persist }
    }

    #[test]
    fn first_request_is_granted_and_persisted_renewal_is_not() {
        let mut t = WitnessTable::new(LEASE, MARGIN);
        assert_eq!(t.request("web", "a", 1, 1, at(0)), granted(true));
        assert_eq!(t.request("web", "a", 1, 1, at(2000)), granted(false));
        assert_eq!(t.holders(), vec![("web".to_string(), "a".to_string())]);
        assert_eq!(t.lease_of("web").unwrap().until, at(2000).after(LEASE + MARGIN));
    }

    #[test]
    fn never_two_holders_until_lease_plus_margin_passed() {
        let mut t = WitnessTable::new(LEASE, MARGIN);
        assert_eq!(t.request("web", "a", 1, 1, at(1000)), granted(true));
        // b is refused up to and excluding receipt + lease + margin.
        for ms in [1000, 4000, 7000, 7499] {
            match t.request("web", "b", 1, 1, at(ms)) {
                Answer::Refused { holder, remaining } => {
                    assert_eq!(holder.as_deref(), Some("a"));
                    assert_eq!(remaining, at(7500).since(at(ms)));
                }
                other => panic!("granted to b at {ms} ms: {other:?}"),
            }
        }
        assert_eq!(t.request("web", "b", 1, 1, at(7500)), granted(true));
        // Now a is the one refused.
        assert!(matches!(t.request("web", "a", 2, 1, at(7600)), Answer::Refused { .. }));
        // Groups are independent.
        assert_eq!(t.request("db", "a", 2, 1, at(7600)), granted(true));
    }

    #[test]
    fn a_late_duplicate_never_shortens_a_lease() {
        let mut t = WitnessTable::new(LEASE, MARGIN);
        t.request("web", "a", 1, 1, at(5000));
        t.request("web", "a", 1, 1, at(3000)); // cannot happen on one clock, but be total
        assert_eq!(t.lease_of("web").unwrap().until, at(5000).after(LEASE + MARGIN));
    }

    #[test]
    fn release_frees_the_group_only_for_its_holder() {
        let mut t = WitnessTable::new(LEASE, MARGIN);
        t.request("web", "a", 1, 5, at(0));
        assert!(!t.release("web", "b", 1, 6));
        assert!(matches!(t.request("web", "b", 1, 1, at(10)), Answer::Refused { .. }));
        // A release sent before the latest grant (delayed in the network) is ignored.
        assert!(!t.release("web", "a", 1, 4));
        assert!(!t.release("web", "a", 1, 5));
        assert!(t.release("web", "a", 1, 6));
        assert!(t.holders().is_empty());
        assert_eq!(t.request("web", "b", 1, 1, at(20)), granted(true));
    }

    #[test]
    fn restart_with_state_gives_the_recorded_holder_a_full_lease_again() {
        let mut before = WitnessTable::new(LEASE, MARGIN);
        before.request("web", "a", 1, 1, at(0));
        // The witness restarts (its clock's origin is new: 0 again).
        let mut t = WitnessTable::restore(LEASE, MARGIN, &before.holders(), at(0));
        assert!(matches!(t.request("web", "b", 1, 1, at(6499)), Answer::Refused { .. }));
        // The holder may renew across the restart.
        assert_eq!(t.request("web", "a", 1, 1, at(3000)), granted(false));
        assert!(matches!(t.request("web", "b", 1, 1, at(9499)), Answer::Refused { .. }));
        assert_eq!(t.request("web", "b", 1, 1, at(9500)), granted(true));
    }

    #[test]
    fn a_restored_lease_is_never_released_only_expires() {
        let mut t = WitnessTable::restore(LEASE, MARGIN, &[("web".into(), "a".into())], at(0));
        t.request("web", "a", 1, 1, at(10));
        assert!(!t.release("web", "a", 9, 99));
        assert!(matches!(t.request("web", "b", 1, 1, at(6509)), Answer::Refused { .. }));
        assert_eq!(t.request("web", "b", 1, 1, at(6510)), granted(true));
        // The next holder's lease is this run's own: releasable.
        assert!(t.release("web", "b", 1, 2));
    }

    #[test]
    fn restart_without_state_grants_nothing_for_lease_plus_margin() {
        let mut t = WitnessTable::amnesiac(LEASE, MARGIN, at(100));
        for (node, ms) in [("a", 100), ("b", 3000), ("a", 6599)] {
            assert!(
                matches!(t.request("web", node, 1, 1, at(ms)), Answer::Refused { holder: None, .. }),
                "granted to {node} at {ms}"
            );
        }
        assert_eq!(t.request("web", "b", 1, 1, at(6600)), granted(true));
    }

    /// A tiny deterministic generator (xorshift64*), so the random test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    enum Msg {
        Ask { node: usize, inc: u64, seq: u64 },
        Release { node: usize, inc: u64, seq: u64 },
        Grant { node: usize, inc: u64, seq: u64, lease: Duration },
    }

    /// The safety property with both sides together: at no real time do two nodes
    /// believe they hold the group's lease. Three nodes with their own clock origins and
    /// rates (±0.5 %), requests and answers delayed up to 1.5 s (so reordered) or lost,
    /// partitions of one node from the witness for up to 12 s, releases, node restarts (new incarnation, sequence numbers from 1 again) and
    /// witness restarts with its state file or without it.
    #[test]
    fn random_schedules_never_give_two_nodes_the_lease_at_once() {
        const NAMES: [&str; 3] = ["a", "b", "c"];
        let only: Option<u64> = std::env::var("WITNESS_SEED").ok().and_then(|s| s.parse().ok());
        for seed in 1..=300u64 {
            if only.is_some_and(|o| o != seed) {
                continue;
            }
            let trace = only.is_some();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut t: u64 = 0; // real time, ns
            let origins: Vec<u64> = (0..3).map(|_| rng.below(1 << 40)).collect();
            let rates: Vec<u64> = (0..3).map(|_| 995 + rng.below(11)).collect();
            let clock = |n: usize, t: u64| Instant(origins[n] + t / 1000 * rates[n]);
            let mut holders: Vec<HeldLease> = (0..3).map(|_| HeldLease::new(LEASE, MARGIN)).collect();
            let mut inc = [1u64; 3];
            let mut witness = WitnessTable::amnesiac(LEASE, MARGIN, Instant(0));
            let mut w_origin = 0u64;
            // The witness's state file: written on every change of holder, as the shell does.
            let mut disk: Option<Vec<(String, String)>> = None;
            // Until when (real time) each node is cut off from the witness, both ways.
            let mut cut_until = [0u64; 3];
            let mut queue: Vec<(u64, Msg)> = Vec::new();
            let mut grants = 0;
            for _step in 0..600 {
                t += rng.below(300) * 1_000_000;
                // Deliver everything due, in delivery order.
                queue.sort_by_key(|(at, _)| *at);
                let due: Vec<(u64, Msg)> = {
                    let split = queue.iter().position(|(at, _)| *at > t).unwrap_or(queue.len());
                    queue.drain(..split).collect()
                };
                for (at, msg) in due {
                    let wnow = Instant(at.saturating_sub(w_origin)); // answers may land late
                    if trace {
                        let m = match &msg {
                            Msg::Ask { node, inc, seq } => format!("ask {} inc {inc} seq {seq}", NAMES[*node]),
                            Msg::Release { node, inc, seq } => format!("rel {} inc {inc} seq {seq}", NAMES[*node]),
                            Msg::Grant { node, inc, seq, .. } => format!("grant {} inc {inc} seq {seq}", NAMES[*node]),
                        };
                        eprintln!("{} ms: {m}; witness {:?}", at / 1_000_000, witness.lease_of("g"));
                    }
                    match msg {
                        Msg::Ask { node, inc, seq } => {
                            if let Answer::Granted { lease, persist } =
                                witness.request("g", NAMES[node], inc, seq, wnow)
                            {
                                if persist {
                                    disk = Some(witness.holders());
                                }
                                if rng.below(10) != 0 && at >= cut_until[node] {
                                    let back = at + rng.below(1500) * 1_000_000;
                                    queue.push((back, Msg::Grant { node, inc, seq, lease }));
                                }
                            }
                        }
                        Msg::Release { node, inc, seq } => {
                            if witness.release("g", NAMES[node], inc, seq) {
                                disk = Some(witness.holders());
                            }
                        }
                        Msg::Grant { node, inc: i, seq, lease } => {
                            // Replies name the run they answer; another run's are ignored.
                            if i == inc[node] && holders[node].granted(seq, lease) {
                                grants += 1;
                            }
                        }
                    }
                    // The property, at the instant of every delivery.
                    let valid: Vec<&str> =
                        (0..3).filter(|&n| holders[n].valid(clock(n, at))).map(|n| NAMES[n]).collect();
                    assert!(valid.len() <= 1, "seed {seed}: {valid:?} hold the lease at once");
                }
                // One random action.
                let n = rng.below(3) as usize;
                let action = rng.below(100);
                if trace && (70..=88).contains(&action) {
                    eprintln!("{} ms: action {action} node {}", t / 1_000_000, NAMES[n]);
                }
                match action {
                    0..=69 if holders[n].renew_due(clock(n, t)) || rng.below(4) == 0 => {
                        let seq = holders[n].sending(clock(n, t));
                        if rng.below(10) != 0 && t >= cut_until[n] {
                            let at = t + rng.below(1500) * 1_000_000;
                            queue.push((at, Msg::Ask { node: n, inc: inc[n], seq }));
                        }
                    }
                    70..=79 => {
                        let seq = holders[n].release();
                        let at = t + rng.below(1500) * 1_000_000;
                        queue.push((at, Msg::Release { node: n, inc: inc[n], seq }));
                    }
                    80..=84 => {
                        // The node's agent restarts: its old run (and its view) is gone.
                        inc[n] += 1;
                        holders[n] = HeldLease::new(LEASE, MARGIN);
                    }
                    86..=88 => cut_until[n] = t + rng.below(12_000) * 1_000_000,
                    85 => {
                        // Restarts from its file, or finds it lost or corrupt.
                        w_origin = t;
                        if rng.below(3) == 0 {
                            disk = None;
                        }
                        witness = match &disk {
                            Some(holders) => WitnessTable::restore(LEASE, MARGIN, holders, Instant(0)),
                            None => WitnessTable::amnesiac(LEASE, MARGIN, Instant(0)),
                        };
                    }
                    _ => {}
                }
            }
            assert!(grants > 0, "seed {seed}: the schedule never granted anything");
        }
    }

    #[test]
    fn holder_counts_from_sending_minus_margin() {
        let mut h = HeldLease::new(LEASE, MARGIN);
        assert!(!h.valid(at(0)));
        assert!(h.renew_due(at(0)));
        let seq = h.sending(at(1000));
        assert!(!h.renew_due(at(2999)));
        assert!(h.renew_due(at(3000)));
        // The answer arrives much later; it still counts from the send.
        assert!(h.granted(seq, LEASE));
        assert_eq!(h.valid_until(), Some(at(6500)));
        assert!(h.valid(at(6499)));
        assert!(!h.valid(at(6500)));
        // A guard with a 500 ms timeout may be renewed until 500 ms before the end.
        assert!(h.covers(at(6000), Duration::from_millis(500)));
        assert!(!h.covers(at(6001), Duration::from_millis(500)));
    }

    #[test]
    fn holder_view_ends_before_witness_view_for_any_delay() {
        // The request takes `d` to arrive; the holder's lease ends 2·margin + d before
        // the witness frees the group (same clock rates).
        for d in [0u64, 1, 400, 5000] {
            let mut h = HeldLease::new(LEASE, MARGIN);
            let mut w = WitnessTable::new(LEASE, MARGIN);
            let seq = h.sending(at(0));
            let Answer::Granted { lease, .. } = w.request("g", "a", 1, 1, at(d)) else { panic!() };
            h.granted(seq, lease);
            let holder_end = h.valid_until().unwrap();
            let witness_end = w.lease_of("g").unwrap().until;
            assert_eq!(witness_end.since(holder_end), 2 * MARGIN + Duration::from_millis(d));
        }
    }

    #[test]
    fn unknown_or_forgotten_grants_are_ignored_and_never_shorten() {
        let mut h = HeldLease::new(LEASE, MARGIN);
        assert!(!h.granted(42, LEASE));
        let s1 = h.sending(at(0));
        let s2 = h.sending(at(2000));
        assert!(h.granted(s2, LEASE));
        assert_eq!(h.valid_until(), Some(at(7500)));
        // s1 was older than the granted s2: forgotten.
        assert!(!h.granted(s1, LEASE));
        assert_eq!(h.valid_until(), Some(at(7500)));
        // Only the last MAX_OUTSTANDING requests are remembered.
        let first = h.sending(at(3000));
        for i in 0..MAX_OUTSTANDING as u64 {
            h.sending(at(3001 + i));
        }
        assert!(!h.granted(first, LEASE));
        h.drop_lease();
        assert!(!h.valid(at(0)));
        assert!(h.renew_due(at(0)));
    }
}
