//! `takeover status` and `takeover events` for people: compact tables, coloured on a
//! terminal (unless `NO_COLOR` is set), plain text otherwise.

use std::fmt::Write;

use takeover_agent::api::{EventDoc, GroupDoc, StatusDoc};

/// How to paint: ANSI colours or plain text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Plain,
    Ansi,
}

impl Paint {
    /// Colours when `stdout` is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`.
    pub fn for_stdout() -> Paint {
        use std::io::IsTerminal;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|it| !it.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|it| it == "dumb");
        if std::io::stdout().is_terminal() && !no_color && !dumb { Paint::Ansi } else { Paint::Plain }
    }

    fn paint(self, code: &str, text: &str) -> String {
        match self {
            Paint::Plain => text.to_string(),
            Paint::Ansi => format!("\x1b[{code}m{text}\x1b[0m"),
        }
    }

    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    fn red(self, text: &str) -> String {
        self.paint("1;31", text)
    }

    fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }

    fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    fn cyan(self, text: &str) -> String {
        self.paint("36", text)
    }

    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    fn role(self, role: &str) -> String {
        match role {
            "M" | "SM" => self.green(role),
            "SL" => self.cyan(role),
            _ => self.yellow(role),
        }
    }

    fn level(self, level: &str, text: &str) -> String {
        match level {
            "alarm" => self.red(text),
            "warning" => self.yellow(text),
            _ => text.to_string(),
        }
    }
}

/// A table whose columns are as wide as their widest cell; cells may carry colour codes
/// (which take no width).
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str], paint: Paint) -> Table {
        Table { rows: vec![header.iter().map(|it| paint.bold(it)).collect()] }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String, indent: &str) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|it| visible_len(it)).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = indent.to_string();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[c] - visible_len(cell) + 2));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

/// The width of a cell on screen: its characters less the ANSI escape sequences.
fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Where the group runs, as far as this node knows.
fn runs_on(doc: &StatusDoc, g: &GroupDoc) -> String {
    if g.role == "M" || g.role == "SM" {
        doc.node.clone()
    } else if matches!(g.peer_state.role.as_deref(), Some("M" | "SM")) {
        g.peer.clone()
    } else {
        "nowhere".to_string()
    }
}

/// The takeover plan's validity over the group's resources.
fn plan_text(g: &GroupDoc) -> (String, bool) {
    if g.resources.iter().any(|it| it.plan_ok == Some(false)) {
        ("PROBLEM".into(), false)
    } else if g.resources.iter().any(|it| it.plan_ok.is_none()) {
        ("unchecked".into(), true)
    } else {
        ("ok".into(), true)
    }
}

/// Renders the status document as text.
pub fn status(doc: &StatusDoc, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} · node {} (incarnation {}) · arbiter {}{} · auth {}{}",
        doc.cluster,
        doc.node,
        doc.incarnation,
        doc.arbiter,
        if doc.arbiter == "fence" { String::new() } else { paint.red("  ** UNSAFE under partitions **") },
        doc.auth,
        if doc.auth == "none" {
            paint.red("  ** UNAUTHENTICATED: anyone on the links can forge traffic **")
        } else {
            String::new()
        }
    );

    let _ = writeln!(out, "\n{}", paint.bold("Nodes and links"));
    let links = doc.peers.iter().map(|it| it.links.len()).max().unwrap_or(0);
    let mut header = vec!["NODE", "STATE", "INCARNATION", "CHANNEL"];
    let link_names: Vec<String> = (0..links).map(|k| format!("LINK {k}")).collect();
    header.extend(link_names.iter().map(String::as_str));
    let mut table = Table::new(&header, paint);
    table.row(vec![doc.node.clone(), paint.green("this node"), doc.incarnation.to_string(), "-".into()]);
    for peer in &doc.peers {
        let mut row = vec![
            peer.node.clone(),
            if peer.fencing {
                paint.red("FENCING")
            } else if peer.alive {
                paint.green("alive")
            } else {
                paint.red("DEAD")
            },
            peer.incarnation.map_or("-".into(), |it| it.to_string()),
            peer.channel_link.map_or_else(|| paint.yellow("down"), |it| format!("on link {it}")),
        ];
        for link in &peer.links {
            let heard = link.last_heard_ms.map_or("never heard".into(), |ms| format!("{ms} ms ago"));
            row.push(if link.up { format!("up ({heard})") } else { paint.red(&format!("DOWN ({heard})")) });
        }
        table.row(row);
    }
    table.render(&mut out, "  ");

    let _ = writeln!(out, "\n{}", paint.bold("Groups"));
    let mut table = Table::new(
        &["GROUP", "ROLE", "PRIORITY", "GENERATION", "RUNS ON", "PEER", "JOURNAL", "RESOURCES", "FAILURES", "PLAN"],
        paint,
    );
    for g in &doc.groups {
        let peer = match (&g.peer_state.role, g.peer_state.priority) {
            (Some(role), Some(priority)) => {
                format!("{} {} {} p{priority}", g.peer, g.peer_state.status, paint.role(role))
            }
            _ => format!("{} {}", g.peer, g.peer_state.status),
        };
        let up = g.resources.iter().filter(|it| it.state == "up").count();
        let resources = if g.failed {
            paint.red("FAILED")
        } else if g.resources.is_empty() {
            "none".to_string()
        } else if up == g.resources.len() {
            paint.green(&format!("{up}/{} up", g.resources.len()))
        } else {
            format!("{up}/{} up", g.resources.len())
        };
        let failures: usize = g.resources.iter().map(|it| it.failures).sum();
        let (plan, plan_ok) = plan_text(g);
        let journal = format!(
            "{} (SL durable {}, pending {})",
            g.journal.last_index,
            g.journal.sl_durable.map_or("-".into(), |it| it.to_string()),
            g.journal.pending_appends
        );
        table.row(vec![
            g.name.clone(),
            paint.role(&g.role),
            g.priority.to_string(),
            g.epoch.clone(),
            runs_on(doc, g),
            peer,
            journal,
            resources,
            if failures > 0 { paint.yellow(&failures.to_string()) } else { "0".into() },
            if plan_ok { plan } else { paint.red(&plan) },
        ]);
    }
    table.render(&mut out, "  ");

    for g in &doc.groups {
        let mut notes = Vec::new();
        if g.join_only {
            notes.push("join-only: waits to rejoin its active peer as SL".to_string());
        }
        if let Some(moving) = &g.moving {
            notes.push(paint.yellow(&format!("MOVING ({moving})")));
        }
        if g.failed {
            notes.push(paint.red("FAILED here: fix the cause, then run `takeover cleanup` once fixed"));
        }
        if g.peer_failed {
            notes.push(format!("the group failed on {} before it came here (cleared by `takeover cleanup`)", g.peer));
        }
        if let Some(waiting) = &g.waiting {
            notes.push(paint.yellow(&format!("waiting: {waiting}")));
        }
        if let Some(fencing) = &g.fencing {
            notes.push(paint.red(&format!("fencing {fencing}")));
        }
        if g.journal.quarantined_unreplicated + g.journal.quarantined_force_start > 0 {
            notes.push(format!(
                "quarantined records: {} never replicated, {} abandoned by force start",
                g.journal.quarantined_unreplicated, g.journal.quarantined_force_start
            ));
        }
        if let Some(lease) = &g.lease {
            let _ = writeln!(out, "             witness lease: {lease}");
        }
        if let Some(m) = &g.last_move {
            let steps: Vec<String> = m.steps.iter().map(|it| format!("{} {} ms", it.step, it.ms)).collect();
            notes.push(format!("last move: {} {} in {} ms: {}", m.what, m.outcome, m.total_ms, steps.join(" → ")));
        }
        if g.resources.is_empty() && notes.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n  {} {}",
            paint.bold(&format!("group {}", g.name)),
            paint.dim(&format!("on {}", doc.node))
        );
        let mut table = Table::new(&["RESOURCE", "KIND", "STATE", "FAILURES", "LAST OPERATION", "PLAN"], paint);
        for r in &g.resources {
            let state = match r.state.as_str() {
                "up" => paint.green("up"),
                "down" if g.role == "M" || g.role == "SM" => paint.red("down"),
                other => other.to_string(),
            };
            let plan = match r.plan_ok {
                None => "plan not checked yet".to_string(),
                Some(true) => "plan ok".to_string(),
                Some(false) => paint.red(&format!("PLAN PROBLEM: {}", r.plan.join("; "))),
            };
            let failures = format!("failures {}/{}", r.failures, r.max_restarts);
            table.row(vec![
                r.name.clone(),
                r.kind.clone(),
                state,
                if r.failures > 0 { paint.yellow(&failures) } else { failures },
                r.last_op.clone().unwrap_or_else(|| "-".into()),
                plan,
            ]);
        }
        if !g.resources.is_empty() {
            table.render(&mut out, "    ");
        }
        for note in notes {
            let _ = writeln!(out, "    {note}");
        }
    }

    let _ = writeln!(out, "\n{}", paint.bold("Recent events (UTC)"));
    for event in doc.events.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev() {
        let _ = writeln!(out, "  {}", event_line(event, paint));
    }
    let d = &doc.dropped;
    if d.heartbeats + d.frames + d.messages > 0 {
        let reasons: Vec<String> = [
            ("bad tag (wrong key, forged or corrupted)", d.bad_tag),
            ("replay", d.replay),
            ("unknown sender", d.unknown_sender),
            ("malformed", d.malformed),
            ("foreign (another cluster, node or link)", d.foreign),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
        let _ = writeln!(
            out,
            "\ndropped: {} heartbeats, {} frames, {} messages{}",
            d.heartbeats,
            d.frames,
            d.messages,
            if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join(", ")) }
        );
    }
    out
}

/// One event on one line: `YYYY-MM-DD HH:MM:SS.mmm #SEQ LEVEL KIND TEXT` (UTC).
pub fn event_line(event: &EventDoc, paint: Paint) -> String {
    format!(
        "{}  #{:<5} {:<7} {:<15} {}",
        paint.dim(&utc(event.at_unix_ms)),
        event.seq,
        paint.level(&event.level, &event.level),
        event.kind,
        paint.level(&event.level, &event.text)
    )
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub fn utc(unix_ms: u64) -> String {
    let (days, ms) = ((unix_ms / 86_400_000) as i64, unix_ms % 86_400_000);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::Paint;
    use takeover_agent::api::{DroppedDoc, EventDoc, StatusDoc};

    fn doc(auth: &str, dropped: DroppedDoc) -> StatusDoc {
        StatusDoc {
            cluster: "prod".into(),
            node: "alpha".into(),
            incarnation: 3,
            arbiter: "fence".into(),
            auth: auth.into(),
            peers: vec![],
            groups: vec![],
            events: vec![],
            dropped,
        }
    }

    #[test]
    fn status_shows_auth_and_drops_by_reason() {
        let text = super::status(
            &doc(
                "chacha20-poly1305",
                DroppedDoc { heartbeats: 5, frames: 2, bad_tag: 4, replay: 3, ..DroppedDoc::default() },
            ),
            Paint::Plain,
        );
        assert!(
            text.starts_with("cluster prod · node alpha (incarnation 3) · arbiter fence · auth chacha20-poly1305\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "dropped: 5 heartbeats, 2 frames, 0 messages: 4 bad tag (wrong key, forged or corrupted), 3 replay\n"
            ),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "plain text has no colour codes: {text:?}");
        let text = super::status(&doc("none", DroppedDoc::default()), Paint::Plain);
        assert!(text.contains("auth none  ** UNAUTHENTICATED"), "{text}");
        assert!(!text.contains("dropped"), "{text}");
        let text = super::status(&doc("none", DroppedDoc::default()), Paint::Ansi);
        assert!(text.contains("\x1b[1;31m  ** UNAUTHENTICATED"), "{text:?}");
    }

    #[test]
    fn tables_align_on_visible_width() {
        let mut table = super::Table::new(&["A", "B"], Paint::Ansi);
        table.row(vec![Paint::Ansi.red("xx"), "1".into()]);
        table.row(vec!["yyyy".into(), "2".into()]);
        let mut out = String::new();
        table.render(&mut out, "");
        let plain: Vec<String> = out
            .lines()
            .map(|l| {
                let mut s = String::new();
                let mut esc = false;
                for c in l.chars() {
                    match (esc, c) {
                        (false, '\x1b') => esc = true,
                        (true, 'm') => esc = false,
                        (true, _) => {}
                        (false, c) => s.push(c),
                    }
                }
                s
            })
            .collect();
        assert_eq!(plain, ["A     B", "xx    1", "yyyy  2"]);
    }

    #[test]
    fn event_lines_carry_utc_time_number_level_and_kind() {
        let event = EventDoc {
            seq: 42,
            at_unix_ms: 1_795_000_000_123,
            t_ms: 5,
            incarnation: 2,
            kind: "transition".into(),
            level: "info".into(),
            group: Some("web".into()),
            text: "group web: X → SM (alone, with priority 1: this node processed last)".into(),
        };
        assert_eq!(
            super::event_line(&event, Paint::Plain),
            "2026-11-18 11:06:40.123  #42    info    transition      group web: X → SM (alone, with priority 1: this node processed last)"
        );
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
