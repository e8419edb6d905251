//! `takeover status` for people: a compact plain-text view of the status document.

use std::fmt::Write;

use takeover_agent::api::StatusDoc;

/// Renders the status document as text.
pub fn status(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} · node {} (incarnation {}) · arbiter {}{} · auth {}{}",
        doc.cluster,
        doc.node,
        doc.incarnation,
        doc.arbiter,
        if doc.arbiter == "fence" { "" } else { "  ** UNSAFE under partitions **" },
        doc.auth,
        if doc.auth == "none" { "  ** UNAUTHENTICATED: anyone on the links can forge traffic **" } else { "" }
    );
    let _ = writeln!(out, "peers:");
    for peer in &doc.peers {
        let links: Vec<String> = peer
            .links
            .iter()
            .map(|link| {
                let heard = link.last_heard_ms.map_or("never heard".into(), |ms| format!("{ms} ms ago"));
                format!("link {} {} ({heard})", link.index, if link.up { "up" } else { "DOWN" })
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:<10} {:<6} incarnation {:<4} {}  channel {}{}",
            peer.node,
            if peer.alive { "alive" } else { "DEAD" },
            peer.incarnation.map_or("-".into(), |it| it.to_string()),
            links.join(" · "),
            peer.channel_link.map_or("down".into(), |it| format!("on link {it}")),
            if peer.fencing { "  FENCING" } else { "" }
        );
    }
    let _ = writeln!(out, "groups:");
    for g in &doc.groups {
        let peer_state = match (&g.peer_state.role, g.peer_state.priority) {
            (Some(role), Some(priority)) => format!("{} {} {role} p{priority}", g.peer, g.peer_state.status),
            _ => format!("{} {}", g.peer, g.peer_state.status),
        };
        let up = g.resources.iter().filter(|it| it.state == "up").count();
        let service = if g.failed {
            "FAILED (run `takeover cleanup` once fixed)".to_string()
        } else if g.resources.is_empty() {
            "no resources".to_string()
        } else {
            format!("{up}/{} resources up", g.resources.len())
        };
        let _ = writeln!(
            out,
            "  {:<10} {:<2}  priority {}  epoch {:<7} peer {:<18} journal {} (SL durable {}, pending {})  {service}{}{}",
            g.name,
            g.role,
            g.priority,
            g.epoch,
            peer_state,
            g.journal.last_index,
            g.journal.sl_durable.map_or("-".into(), |it| it.to_string()),
            g.journal.pending_appends,
            if g.join_only { "  join-only" } else { "" },
            g.moving.as_ref().map_or(String::new(), |it| format!("  MOVING ({it})")),
        );
        for r in &g.resources {
            let plan = match r.plan_ok {
                None => "plan not checked yet".to_string(),
                Some(true) => "plan ok".to_string(),
                Some(false) => format!("PLAN PROBLEM: {}", r.plan.join("; ")),
            };
            let _ = writeln!(
                out,
                "             {:<8} {:<12} {:<8} failures {}/{}  {}  {plan}",
                r.kind,
                r.name,
                r.state,
                r.failures,
                r.max_restarts,
                r.last_op.as_deref().unwrap_or("-"),
            );
        }
        if let Some(lease) = &g.lease {
            let _ = writeln!(out, "             witness lease: {lease}");
        }
        if let Some(m) = &g.last_move {
            let steps: Vec<String> = m.steps.iter().map(|it| format!("{} {} ms", it.step, it.ms)).collect();
            let _ = writeln!(
                out,
                "             last move: {} {} in {} ms: {}",
                m.what,
                m.outcome,
                m.total_ms,
                steps.join(" → ")
            );
        }
        if g.peer_failed {
            let _ = writeln!(
                out,
                "             the group failed on {} before it came here (cleared by `takeover cleanup`)",
                g.peer
            );
        }
        if let Some(waiting) = &g.waiting {
            let _ = writeln!(out, "             waiting: {waiting}");
        }
        if let Some(fencing) = &g.fencing {
            let _ = writeln!(out, "             fencing {fencing}");
        }
        if g.journal.quarantined_unreplicated + g.journal.quarantined_force_start > 0 {
            let _ = writeln!(
                out,
                "             quarantined records: {} never replicated, {} abandoned by force start",
                g.journal.quarantined_unreplicated, g.journal.quarantined_force_start
            );
        }
    }
    let _ = writeln!(out, "recent events:");
    for event in doc.events.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev() {
        let _ = writeln!(out, "  +{:>8.3}s  {}", event.t_ms as f64 / 1000.0, event.text);
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
            "dropped: {} heartbeats, {} frames, {} messages{}",
            d.heartbeats,
            d.frames,
            d.messages,
            if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join(", ")) }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use takeover_agent::api::{DroppedDoc, StatusDoc};

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
        let text = super::status(&doc(
            "chacha20-poly1305",
            DroppedDoc { heartbeats: 5, frames: 2, bad_tag: 4, replay: 3, ..DroppedDoc::default() },
        ));
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
        let text = super::status(&doc("none", DroppedDoc::default()));
        assert!(text.contains("auth none  ** UNAUTHENTICATED"), "{text}");
        assert!(!text.contains("dropped"), "{text}");
    }
}
