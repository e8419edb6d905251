//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! Counters and histograms are kept by the event loop in [`Metrics`]; gauges are read
//! from the status document when the page is rendered, so the two never disagree.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `takeover_agent_info` | gauge (1) | `cluster`, `node`, `incarnation` |
//! | `takeover_link_up` | gauge 0/1 | `peer`, `link` |
//! | `takeover_link_last_heard_seconds` | gauge | `peer`, `link` |
//! | `takeover_channel_rtt_seconds` | gauge: the kernel's smoothed round-trip time (TCP_INFO) of the peer channel's connection on a link | `peer`, `link` |
//! | `takeover_heartbeat_gap_seconds` | histogram: time between two heartbeats on a link (heartbeat_interval plus delay and jitter) | `peer`, `link` |
//! | `takeover_peer_alive` | gauge 0/1 | `peer` |
//! | `takeover_peer_state` | gauge, 1 for the current state | `group`, `peer`, `state` (`up`, `down`, `stopped`, `unknown`) |
//! | `takeover_group_role` | gauge, 1 for the current role | `group`, `role` (`M`, `SM`, `SL`, `X`) |
//! | `takeover_group_priority` | gauge 1..3 | `group` |
//! | `takeover_group_failed` | gauge 0/1 | `group` |
//! | `takeover_witness_lease_held` | gauge 0/1 (only with a `[witness]`) | `group` |
//! | `takeover_resource_up` | gauge 0/1 | `group`, `resource` |
//! | `takeover_resource_failures` | gauge | `group`, `resource` |
//! | `takeover_journal_last_index` | gauge | `group` |
//! | `takeover_journal_lag_records` | gauge: records not yet durable on the standby (on an M; on an SL, behind the active as last heard) | `group` |
//! | `takeover_journal_lag_bytes` | gauge: the bytes of those records (on an M) | `group` |
//! | `takeover_journal_pending_appends` | gauge | `group` |
//! | `takeover_append_latency_seconds` | histogram: from the API request to its acknowledgement | `group` |
//! | `takeover_takeovers_total` | counter: takeovers completed here | `group` |
//! | `takeover_move_duration_seconds` | histogram: moves (takeover, switchover, failback, start) from their first step to the end | `group`, `what`, `outcome` |
//! | `takeover_fence_actions_total` | counter | `peer`, `outcome` (`confirmed`, `failed`, `not-configured`, `skipped-own-links-down`) |
//! | `takeover_monitor_failures_total` | counter | `group`, `resource` |
//! | `takeover_dropped_total` | counter | `what` (`heartbeats`, `frames`, `messages`) |
//! | `takeover_dropped_by_reason_total` | counter | `reason` |
//! | `takeover_events_total` | counter: the newest event number (across restarts) | |

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::api::StatusDoc;

/// Bucket bounds (seconds) for moves: a takeover takes from about 100 ms to tens of s.
const MOVE_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Bucket bounds (seconds) for appends: an fdatasync here and one on the standby.
const APPEND_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Bucket bounds (seconds) for the gap between heartbeats.
const GAP_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5];

/// A cumulative histogram.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What the event loop counts.
#[derive(Debug, Default)]
pub struct Metrics {
    takeovers: BTreeMap<String, u64>,
    moves: BTreeMap<(String, String, String), Histogram>,
    fences: BTreeMap<(String, String), u64>,
    monitor_failures: BTreeMap<(String, String), u64>,
    appends: BTreeMap<String, Histogram>,
    heartbeat_gaps: BTreeMap<(String, usize), Histogram>,
    last_heartbeat: BTreeMap<(String, usize), tokio::time::Instant>,
}

impl Metrics {
    /// A move of `group` ended (`what` as in [`crate::api::MoveDoc`]).
    pub fn move_done(&mut self, group: &str, what: &str, outcome: &str, took: Duration) {
        if what == "takeover" && outcome == "done" {
            *self.takeovers.entry(group.to_string()).or_default() += 1;
        }
        self.moves
            .entry((group.to_string(), what.to_string(), outcome.to_string()))
            .or_insert_with(|| Histogram::new(MOVE_BUCKETS))
            .observe(took.as_secs_f64());
    }

    pub fn fence_done(&mut self, peer: &str, outcome: &str) {
        *self.fences.entry((peer.to_string(), outcome.to_string())).or_default() += 1;
    }

    pub fn monitor_failed(&mut self, group: &str, resource: &str) {
        *self.monitor_failures.entry((group.to_string(), resource.to_string())).or_default() += 1;
    }

    pub fn append_acknowledged(&mut self, group: &str, took: Duration) {
        self.appends
            .entry(group.to_string())
            .or_insert_with(|| Histogram::new(APPEND_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// A heartbeat from `peer` arrived on `link`.
    pub fn heartbeat(&mut self, peer: &str, link: usize) {
        let now = tokio::time::Instant::now();
        let key = (peer.to_string(), link);
        if let Some(last) = self.last_heartbeat.insert(key.clone(), now) {
            self.heartbeat_gaps
                .entry(key)
                .or_insert_with(|| Histogram::new(GAP_BUCKETS))
                .observe((now - last).as_secs_f64());
        }
    }

    /// The page: the counters kept here, and gauges from `status`. `lag_bytes` gives the
    /// journal lag in bytes of each group where it is known; `events` the newest event number.
    pub fn render(
        &self,
        status: &StatusDoc,
        lag_bytes: &BTreeMap<String, u64>,
        channel_rtt: &[(String, usize, Duration)],
        events: u64,
    ) -> String {
        let mut out = Page::default();
        out.family("takeover_agent_info", "gauge", "The agent: cluster, node and incarnation (always 1).");
        out.sample(
            "takeover_agent_info",
            &[("cluster", &status.cluster), ("node", &status.node), ("incarnation", &status.incarnation.to_string())],
            1.0,
        );

        out.family("takeover_link_up", "gauge", "Whether a link to a peer hears heartbeats (1) or is silent (0).");
        for peer in &status.peers {
            for link in &peer.links {
                out.sample(
                    "takeover_link_up",
                    &[("peer", &peer.node), ("link", &link.index.to_string())],
                    bool(link.up),
                );
            }
        }
        out.family("takeover_link_last_heard_seconds", "gauge", "Seconds since the last heartbeat on a link.");
        for peer in &status.peers {
            for link in &peer.links {
                if let Some(ms) = link.last_heard_ms {
                    out.sample(
                        "takeover_link_last_heard_seconds",
                        &[("peer", &peer.node), ("link", &link.index.to_string())],
                        ms as f64 / 1000.0,
                    );
                }
            }
        }
        out.family(
            "takeover_channel_rtt_seconds",
            "gauge",
            "The kernel's smoothed round-trip time of the peer channel's TCP connection on a link.",
        );
        for (peer, link, rtt) in channel_rtt {
            out.sample(
                "takeover_channel_rtt_seconds",
                &[("peer", peer), ("link", &link.to_string())],
                rtt.as_secs_f64(),
            );
        }
        out.family(
            "takeover_heartbeat_gap_seconds",
            "histogram",
            "Time between two heartbeats received on a link: the heartbeat interval plus network delay and jitter.",
        );
        for ((peer, link), h) in &self.heartbeat_gaps {
            out.histogram("takeover_heartbeat_gap_seconds", &[("peer", peer), ("link", &link.to_string())], h);
        }
        out.family("takeover_peer_alive", "gauge", "Whether a peer is alive (heard on at least one link).");
        for peer in &status.peers {
            out.sample("takeover_peer_alive", &[("peer", &peer.node)], bool(peer.alive));
        }

        out.family("takeover_peer_state", "gauge", "A group's view of its peer: 1 for the current state.");
        for g in &status.groups {
            for state in ["up", "down", "stopped", "unknown"] {
                out.sample(
                    "takeover_peer_state",
                    &[("group", &g.name), ("peer", &g.peer), ("state", state)],
                    bool(g.peer_state.status == state),
                );
            }
        }
        out.family("takeover_group_role", "gauge", "A group's role on this node: 1 for the current role (F0.1).");
        for g in &status.groups {
            for role in ["M", "SM", "SL", "X"] {
                out.sample("takeover_group_role", &[("group", &g.name), ("role", role)], bool(g.role == role));
            }
        }
        out.family("takeover_group_priority", "gauge", "A group's durable priority on this node (1, 2 or 3; F0.3).");
        for g in &status.groups {
            out.sample("takeover_group_priority", &[("group", &g.name)], g.priority as f64);
        }
        out.family("takeover_group_failed", "gauge", "Whether a group failed here and waits for `takeover cleanup`.");
        for g in &status.groups {
            out.sample("takeover_group_failed", &[("group", &g.name)], bool(g.failed));
        }
        if status.groups.iter().any(|g| g.lease.is_some()) {
            out.family(
                "takeover_witness_lease_held",
                "gauge",
                "With a [witness]: whether this node holds the group's lease (its resources run only then).",
            );
            for g in &status.groups {
                let held = g.lease.as_deref().is_some_and(|l| l.starts_with("held for"));
                out.sample("takeover_witness_lease_held", &[("group", &g.name)], bool(held));
            }
        }
        out.family("takeover_resource_up", "gauge", "Whether a resource is up on this node.");
        for g in &status.groups {
            for r in &g.resources {
                out.sample("takeover_resource_up", &[("group", &g.name), ("resource", &r.name)], bool(r.state == "up"));
            }
        }
        out.family(
            "takeover_resource_failures",
            "gauge",
            "A resource's failure count within its window (until cleanup).",
        );
        for g in &status.groups {
            for r in &g.resources {
                out.sample(
                    "takeover_resource_failures",
                    &[("group", &g.name), ("resource", &r.name)],
                    r.failures as f64,
                );
            }
        }

        out.family("takeover_journal_last_index", "gauge", "The last record in the local journal.");
        for g in &status.groups {
            out.sample("takeover_journal_last_index", &[("group", &g.name)], g.journal.last_index as f64);
        }
        out.family(
            "takeover_journal_lag_records",
            "gauge",
            "Records not yet durable on the standby (on an M), or behind the active as last heard (on an SL).",
        );
        for g in &status.groups {
            if let Some(lag) = lag_records(g) {
                out.sample("takeover_journal_lag_records", &[("group", &g.name)], lag as f64);
            }
        }
        out.family(
            "takeover_journal_lag_bytes",
            "gauge",
            "The bytes of the records not yet durable on the standby (on an M).",
        );
        for g in &status.groups {
            if let Some(bytes) = lag_bytes.get(&g.name) {
                out.sample("takeover_journal_lag_bytes", &[("group", &g.name)], *bytes as f64);
            }
        }
        out.family("takeover_journal_pending_appends", "gauge", "Appends waiting for their acknowledgement.");
        for g in &status.groups {
            out.sample("takeover_journal_pending_appends", &[("group", &g.name)], g.journal.pending_appends as f64);
        }
        out.family(
            "takeover_append_latency_seconds",
            "histogram",
            "From an append request to its acknowledgement (durable on both nodes on an M).",
        );
        for (group, h) in &self.appends {
            out.histogram("takeover_append_latency_seconds", &[("group", group)], h);
        }

        out.family(
            "takeover_takeovers_total",
            "counter",
            "Takeovers completed on this node (since the agent started).",
        );
        for g in &status.groups {
            let n = self.takeovers.get(&g.name).copied().unwrap_or(0);
            out.sample("takeover_takeovers_total", &[("group", &g.name)], n as f64);
        }
        out.family(
            "takeover_move_duration_seconds",
            "histogram",
            "Moves of a group (takeover, switchover, failback, start) from their first step to their end.",
        );
        for ((group, what, outcome), h) in &self.moves {
            out.histogram(
                "takeover_move_duration_seconds",
                &[("group", group), ("what", what), ("outcome", outcome)],
                h,
            );
        }
        out.family("takeover_fence_actions_total", "counter", "Fence actions against a peer, by outcome.");
        for ((peer, outcome), n) in &self.fences {
            out.sample("takeover_fence_actions_total", &[("peer", peer), ("outcome", outcome)], *n as f64);
        }
        out.family("takeover_monitor_failures_total", "counter", "Monitors that found a running resource failed.");
        for ((group, resource), n) in &self.monitor_failures {
            out.sample("takeover_monitor_failures_total", &[("group", group), ("resource", resource)], *n as f64);
        }

        let d = &status.dropped;
        out.family("takeover_dropped_total", "counter", "Traffic dropped before it reached the core.");
        for (what, n) in [("heartbeats", d.heartbeats), ("frames", d.frames), ("messages", d.messages)] {
            out.sample("takeover_dropped_total", &[("what", what)], n as f64);
        }
        out.family("takeover_dropped_by_reason_total", "counter", "Dropped heartbeats and frames by reason.");
        for (reason, n) in [
            ("bad_tag", d.bad_tag),
            ("replay", d.replay),
            ("unknown_sender", d.unknown_sender),
            ("malformed", d.malformed),
            ("foreign", d.foreign),
        ] {
            out.sample("takeover_dropped_by_reason_total", &[("reason", reason)], n as f64);
        }
        out.family("takeover_events_total", "counter", "Events recorded by this node (across restarts).");
        out.sample("takeover_events_total", &[], events as f64);
        out.0
    }
}

/// The journal lag in records of a group, where it is known.
pub fn lag_records(g: &crate::api::GroupDoc) -> Option<u64> {
    match g.role.as_str() {
        "M" => Some(g.journal.last_index.saturating_sub(g.journal.sl_durable.unwrap_or(0))),
        "SL" => g.peer_state.last_index.map(|it| it.saturating_sub(g.journal.last_index)),
        _ => None,
    }
}

fn bool(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

#[derive(Default)]
struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.0, "{name}{} {}", labels_text(labels), number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            let le = number(*bound);
            let mut with = labels.to_vec();
            with.push(("le", &le));
            let _ = writeln!(self.0, "{name}_bucket{} {count}", labels_text(&with));
        }
        let mut with = labels.to_vec();
        with.push(("le", "+Inf"));
        let _ = writeln!(self.0, "{name}_bucket{} {}", labels_text(&with), h.count);
        let _ = writeln!(self.0, "{name}_sum{} {}", labels_text(labels), number(h.sum));
        let _ = writeln!(self.0, "{name}_count{} {}", labels_text(labels), h.count);
    }
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut m = Metrics::default();
        m.append_acknowledged("web", Duration::from_millis(3));
        m.append_acknowledged("web", Duration::from_millis(30));
        let mut page = Page::default();
        page.histogram("x", &[("group", "we\"b")], &m.appends["web"]);
        let text = page.0;
        assert!(text.contains("x_bucket{group=\"we\\\"b\",le=\"0.0025\"} 0\n"), "{text}");
        assert!(text.contains("x_bucket{group=\"we\\\"b\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("x_bucket{group=\"we\\\"b\",le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("x_bucket{group=\"we\\\"b\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("x_count{group=\"we\\\"b\"} 2\n"), "{text}");
    }

    #[test]
    fn only_completed_takeovers_count_as_takeovers() {
        let mut m = Metrics::default();
        m.move_done("web", "takeover", "done", Duration::from_millis(700));
        m.move_done("web", "takeover", "interrupted", Duration::from_millis(100));
        m.move_done("web", "switchover (arriving)", "done", Duration::from_millis(300));
        assert_eq!(m.takeovers["web"], 1);
        assert_eq!(m.moves.len(), 3);
    }
}
