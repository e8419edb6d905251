//! The node's event history: every transition, takeover, fence, monitor failure and
//! operator command, each with its cause in its text, kept in a bounded file in the state
//! directory (`events.jsonl`, one JSON [`EventDoc`] per line) so that it survives restarts.
//!
//! The file is appended to (not fsync'ed: it is a history for people, not state; a power
//! cut may lose its last lines, never the journal's) and rewritten with the newest
//! `capacity` events once it holds twice as many. Each event is also logged once through
//! `tracing` as one line with its fields (`kind`, `level`, `group`, `seq`), which is what
//! journald keeps.
//!
//! `seq` numbers events of a node in order, across restarts: `GET /v1/events?after=SEQ`
//! and `takeover events --follow` use it to ask for what is new.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::api::EventDoc;

/// Events kept by default (`TAKEOVER_EVENT_HISTORY` changes it).
pub const DEFAULT_CAPACITY: usize = 1000;
/// The file's name in the state directory.
pub const FILE_NAME: &str = "events.jsonl";

/// The kinds of events (the `kind` field).
pub mod kind {
    /// Agent start and stop, and warnings about the agent itself.
    pub const AGENT: &str = "agent";
    /// A link to a peer up or silent, the peer channel, a pause.
    pub const LINK: &str = "link";
    /// A peer alive, declared failed or restarted.
    pub const PEER: &str = "peer";
    /// A group's role changed (M, SM, SL, X), with its cause.
    pub const TRANSITION: &str = "transition";
    /// A move of a group timed step by step (takeover, switchover, failback, start).
    pub const MOVE: &str = "move";
    /// Fencing: requested, started, confirmed, failed.
    pub const FENCE: &str = "fence";
    /// A resource operation (start, stop, monitor), its plan check.
    pub const RESOURCE: &str = "resource";
    /// A monitor found a running resource failed.
    pub const MONITOR_FAILURE: &str = "monitor-failure";
    /// The journal: records cut, quarantined or discarded.
    pub const JOURNAL: &str = "journal";
    /// An operator command through the API (force start, switchover, cleanup).
    pub const OPERATOR: &str = "operator";
    /// A group waiting, refusing, or anything else a group reports.
    pub const GROUP: &str = "group";
}

/// The kind of a report of the node layer.
pub fn node_report_kind(report: &takeover_core::node::NodeReport) -> &'static str {
    use takeover_core::node::NodeReport as R;
    match report {
        R::LinkUp { .. }
        | R::LinkDown { .. }
        | R::ChannelUp { .. }
        | R::ChannelDown { .. }
        | R::PauseDetected { .. } => kind::LINK,
        R::PeerAlive { .. } | R::PeerDead { .. } | R::PeerRestarted { .. } | R::UnknownGroup { .. } => kind::PEER,
        R::MonitorFailed { .. } => kind::MONITOR_FAILURE,
        R::ServiceFailed { .. } => kind::RESOURCE,
        R::FenceStarted { .. } | R::FenceFinished { .. } => kind::FENCE,
    }
}

/// The kind of a report of a group.
pub fn report_kind(report: &takeover_core::group::Report) -> &'static str {
    use takeover_core::group::Report as R;
    match report {
        R::Transition { .. } => kind::TRANSITION,
        R::FenceRequested { .. }
        | R::FenceFailed { .. }
        | R::FenceDelayed { .. }
        | R::FenceCancelled { .. }
        | R::StoppedRunAlive { .. } => kind::FENCE,
        R::Discarded { .. } => kind::JOURNAL,
        R::ForceStarted { .. }
        | R::ForceStartRefused(_)
        | R::SwitchoverRefused(_)
        | R::FailuresCleared
        | R::HandoverStarted { reason: takeover_core::group::HandoverReason::Switchover } => kind::OPERATOR,
        _ => kind::GROUP,
    }
}

/// `info`, `warning` (the text starts with `WARNING:`) or `alarm` (`ALARM:`).
pub fn level_of(text: &str) -> &'static str {
    if text.starts_with("ALARM") {
        "alarm"
    } else if text.starts_with("WARNING") {
        "warning"
    } else {
        "info"
    }
}

/// The group an event text is about: `group NAME: ...` (after an `ALARM: ` prefix).
pub fn group_of(text: &str) -> Option<String> {
    let text = text.strip_prefix("ALARM: ").or_else(|| text.strip_prefix("WARNING: ")).unwrap_or(text);
    let rest = text.strip_prefix("group ")?;
    let name = rest.split(':').next()?;
    (!name.is_empty() && !name.contains(' ')).then(|| name.to_string())
}

/// The bounded history of one node.
pub struct EventLog {
    path: PathBuf,
    capacity: usize,
    events: VecDeque<EventDoc>,
    lines_in_file: usize,
    next_seq: u64,
    incarnation: u64,
    node: String,
    base: tokio::time::Instant,
    newest: watch::Sender<u64>,
}

/// The history shared between the event loop (which records) and the API (which reads
/// and waits for new events).
pub type SharedLog = Arc<Mutex<EventLog>>;

impl EventLog {
    /// Opens (or creates) the history in `dir`, keeping at most `capacity` events.
    /// Unreadable lines (a torn last line after a crash) are skipped.
    pub fn open(dir: &Path, node: &str, incarnation: u64, capacity: usize) -> std::io::Result<EventLog> {
        let capacity = capacity.max(1);
        let path = dir.join(FILE_NAME);
        let mut events = VecDeque::new();
        let mut lines_in_file = 0;
        let mut torn = false;
        match std::fs::File::open(&path) {
            Ok(file) => {
                for line in std::io::BufReader::new(file).lines() {
                    let line = line?;
                    lines_in_file += 1;
                    match serde_json::from_str::<EventDoc>(&line) {
                        Ok(event) => {
                            events.push_back(event);
                            if events.len() > capacity {
                                events.pop_front();
                            }
                        }
                        Err(_) => torn = true,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let next_seq = events.back().map_or(1, |it| it.seq + 1);
        let (newest, _) = watch::channel(next_seq - 1);
        let mut log = EventLog {
            path,
            capacity,
            events,
            lines_in_file,
            next_seq,
            incarnation,
            node: node.to_string(),
            base: tokio::time::Instant::now(),
            newest,
        };
        // A torn line is dropped now, so that the next event starts a line of its own.
        if torn || log.lines_in_file > log.capacity {
            log.rewrite()?;
        }
        Ok(log)
    }

    /// The capacity asked for by `TAKEOVER_EVENT_HISTORY`, or the default.
    pub fn capacity_from_env() -> usize {
        std::env::var("TAKEOVER_EVENT_HISTORY").ok().and_then(|it| it.parse().ok()).unwrap_or(DEFAULT_CAPACITY)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records one event: kept, written to the file and logged. A failed write is logged
    /// and otherwise ignored: the history must never stop the agent.
    pub fn record(&mut self, kind: &str, text: String) -> EventDoc {
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64;
        let event = EventDoc {
            seq: self.next_seq,
            at_unix_ms,
            t_ms: self.base.elapsed().as_millis() as u64,
            incarnation: self.incarnation,
            kind: kind.to_string(),
            level: level_of(&text).to_string(),
            group: group_of(&text),
            text,
        };
        self.next_seq += 1;
        let group = event.group.as_deref().unwrap_or("-");
        match event.level.as_str() {
            "alarm" => tracing::error!(node = %self.node, kind, group, seq = event.seq, "{}", event.text),
            "warning" => tracing::warn!(node = %self.node, kind, group, seq = event.seq, "{}", event.text),
            _ => tracing::info!(node = %self.node, kind, group, seq = event.seq, "{}", event.text),
        }
        if let Err(e) = self.write(&event) {
            tracing::warn!(node = %self.node, "cannot write the event history {}: {e}", self.path.display());
        }
        self.events.push_back(event.clone());
        while self.events.len() > self.capacity {
            self.events.pop_front();
        }
        self.newest.send_replace(event.seq);
        event
    }

    fn write(&mut self, event: &EventDoc) -> std::io::Result<()> {
        if self.lines_in_file >= 2 * self.capacity {
            self.rewrite()?;
        }
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)?;
        self.lines_in_file += 1;
        Ok(())
    }

    /// Rewrites the file with the events kept (atomically: a temporary file renamed).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = Vec::new();
        for event in &self.events {
            out.extend(serde_json::to_vec(event).map_err(std::io::Error::other)?);
            out.push(b'\n');
        }
        std::fs::write(&tmp, &out)?;
        std::fs::rename(&tmp, &self.path)?;
        self.lines_in_file = self.events.len();
        Ok(())
    }

    /// Events with `seq > after`, oldest first, at most `limit` (the newest ones when
    /// more are left).
    pub fn after(&self, after: u64, limit: usize) -> Vec<EventDoc> {
        let newer: Vec<&EventDoc> = self.events.iter().filter(|it| it.seq > after).collect();
        let skip = newer.len().saturating_sub(limit);
        newer.into_iter().skip(skip).cloned().collect()
    }

    /// The newest `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<EventDoc> {
        self.events.iter().skip(self.events.len().saturating_sub(n)).cloned().collect()
    }

    pub fn newest_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Changes whenever an event is recorded (to the newest `seq`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// Reads the history a node keeps in `dir` without opening it for writing (for
/// `takeover events` when the agent does not run): the newest `last` events.
pub fn read_dir(dir: &Path, last: usize) -> std::io::Result<Vec<EventDoc>> {
    let file = std::fs::File::open(dir.join(FILE_NAME))?;
    let mut events = VecDeque::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Ok(event) = serde_json::from_str::<EventDoc>(&line?) {
            events.push_back(event);
            if events.len() > last {
                events.pop_front();
            }
        }
    }
    Ok(events.into())
}

/// Waits until the log holds an event newer than `after`, or `wait` has passed; then
/// answers what is newer (possibly nothing).
pub async fn wait_after(log: &SharedLog, after: u64, limit: usize, wait: Duration) -> (Vec<EventDoc>, u64) {
    let mut newest = {
        let log = log.lock().unwrap_or_else(|it| it.into_inner());
        log.subscribe()
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let seq = *newest.borrow_and_update();
        if seq > after || tokio::time::Instant::now() >= deadline {
            break;
        }
        if tokio::time::timeout_at(deadline, newest.changed()).await.is_err() {
            break;
        }
    }
    let log = log.lock().unwrap_or_else(|it| it.into_inner());
    (log.after(after, limit), log.newest_seq())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_and_group_come_from_the_text() {
        assert_eq!(level_of("ALARM: group web: FAILED"), "alarm");
        assert_eq!(level_of("WARNING: link 0 to beta is silent"), "warning");
        assert_eq!(level_of("group web: X → SM (takeover)"), "info");
        assert_eq!(group_of("ALARM: group web: FAILED on alpha").as_deref(), Some("web"));
        assert_eq!(group_of("group db: X → SL (joined)").as_deref(), Some("db"));
        assert_eq!(group_of("peer beta is alive (incarnation 3)"), None);
        assert_eq!(group_of("group of three: no"), None);
    }

    #[tokio::test]
    async fn the_history_is_bounded_survives_reopening_and_numbers_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), "alpha", 1, 5).unwrap();
        for n in 0..23 {
            log.record(kind::AGENT, format!("event {n}"));
        }
        assert_eq!(log.len(), 5);
        let lines = std::fs::read_to_string(log.path()).unwrap().lines().count();
        assert!(lines <= 10, "the file holds at most twice the capacity: {lines} lines");
        drop(log);
        let mut log = EventLog::open(dir.path(), "alpha", 2, 5).unwrap();
        let kept: Vec<String> = log.last(10).into_iter().map(|it| it.text).collect();
        assert_eq!(kept, ["event 18", "event 19", "event 20", "event 21", "event 22"]);
        let event = log.record(kind::OPERATOR, "group web: switchover requested".into());
        assert_eq!((event.seq, event.incarnation, event.group.as_deref()), (24, 2, Some("web")));
        assert_eq!(log.after(22, 10).iter().map(|it| it.seq).collect::<Vec<_>>(), [23, 24]);
        assert_eq!(log.after(0, 2).iter().map(|it| it.seq).collect::<Vec<_>>(), [23, 24], "the newest when limited");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), "alpha", 1, 10).unwrap();
        log.record(kind::AGENT, "one".into());
        drop(log);
        let mut file = std::fs::OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).unwrap();
        file.write_all(b"{\"seq\":2,\"te").unwrap();
        let log = EventLog::open(dir.path(), "alpha", 2, 10).unwrap();
        assert_eq!(log.last(10).len(), 1);
        assert_eq!(log.newest_seq(), 1);
        let mut log = log;
        log.record(kind::AGENT, "two".into());
        drop(log);
        let log = EventLog::open(dir.path(), "alpha", 3, 10).unwrap();
        assert_eq!(log.last(10).iter().map(|it| it.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    }

    #[tokio::test]
    async fn waiting_returns_as_soon_as_an_event_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log: SharedLog = Arc::new(Mutex::new(EventLog::open(dir.path(), "alpha", 1, 10).unwrap()));
        let writer = log.clone();
        let waiter = tokio::spawn(async move { wait_after(&log, 0, 10, Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        writer.lock().unwrap().record(kind::AGENT, "hello".into());
        let (events, newest) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
        assert_eq!((events.len(), newest), (1, 1));
    }
}
