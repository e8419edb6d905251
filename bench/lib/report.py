#!/usr/bin/env python3
"""results.json and results.md from a run directory of bench/lib/runner.py.

usage: report.py DIR [--update-readme]

Rows are (scenario, fault, system, variant). Every figure is min / median / max over the
valid trials of the row. Ratios are takeover / anchor of the medians, for each takeover row
against its comparison anchors of the same scenario and fault (defaults against defaults,
tuned against the fast/tuned anchors), and all of them in results.json.
"""
import datetime
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)

# n2's agent log: wall-clock marks of the takeover (tracing's UTC timestamps)
AGENT_MARKS = [
    ("declared_failed", re.compile(r"declared failed")),
    ("fence_started", re.compile(r"\bfencing n1\b")),
    ("fence_confirmed", re.compile(r"fence confirmed")),
    ("became_active", re.compile(r"group vip: \S+ → SM")),
]
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

METRICS = [
    ("outage_ms", "client-visible outage (ms)"),
    ("takeover_ms", "first success from the new node (ms)"),
    ("failed", "failed requests"),
]
# takeover variant -> the anchors it is compared with
PAIRS = {
    "default": [("keepalived", "default"), ("pacemaker", "default")],
    "default-nofence": [("keepalived", "default"), ("pacemaker", "default")],
    "tuned": [("keepalived", "fast"), ("pacemaker", "token1000")],
    "tuned-nofence": [("keepalived", "fast"), ("pacemaker", "token1000")],
}
FAULT_TEXT = {
    "kill": "kill -9 of the HA agent",
    "poweroff": "power-off of the active node",
    "linkdown": "the active node's link down",
    "hblink-down": "two links: the dedicated link (link 1) of the active down",
    "lan-down": "two links: the client LAN (link 0, with the VIP) of the active down",
}
SCEN_TEXT = {"failover": "Failover (issue 8 item 2)", "redundant": "Redundant links (issue 8 item 3)"}
SYSTEM_ORDER = {"takeover": 0, "keepalived": 1, "pacemaker": 2}
TARGETS = [
    # (fault, variant, limit ms, words)
    ("poweroff", "default", 800.0, "power-off, default settings, with fencing: median outage <= 0.8 s"),
    ("poweroff", "tuned", 100.0, "power-off, tuned, VIP-only group with fencing: median outage <= 0.1 s"),
]


def agent_events(path):
    ev = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line)
                m = TS.match(line)
                if m:
                    ts = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
                        tzinfo=datetime.timezone.utc).timestamp()
                    ev.append((ts, line[m.end():].strip()))
    except OSError:
        pass
    return ev


def mmm(vals, digits=0):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def fmt(x):
    if x is None:
        return "–"
    if isinstance(x, float) and not x.is_integer():
        return "%.0f" % x if abs(x) >= 10 else "%.1f" % x
    return "%d" % x


def fmt3(m):
    if not m:
        return "–"
    return "%s / **%s** / %s" % (fmt(m["min"]), fmt(m["median"]), fmt(m["max"]))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def load(out):
    trials = [json.loads(l) for l in open(os.path.join(out, "trials.jsonl")) if l.strip()] \
        if os.path.exists(os.path.join(out, "trials.jsonl")) else []
    meta = json.load(open(os.path.join(out, "meta.json")))
    return trials, meta


def rows_of(trials):
    rows = {}
    for t in trials:
        key = (t["scenario"], t["fault"], t["system"], t["variant"])
        rows.setdefault(key, []).append(t)
    out = []
    for key, ts in rows.items():
        valid = [t for t in ts if t.get("ok")]
        r = {"scenario": key[0], "fault": key[1], "system": key[2], "variant": key[3],
             "trials": len(ts), "valid": len(valid),
             "discarded": [t.get("error") or t.get("invalid") for t in ts if not t.get("ok")],
             "fencing": next((t.get("fencing") for t in ts if t.get("fencing")), None)}
        for m, _ in METRICS + [("max_gap_ms", "")]:
            r[m] = mmm([t.get(m) for t in valid])
        # trials whose service never came back within the probe's window (no success after the failures)
        r["not_recovered"] = sum(1 for t in valid if t.get("failed") and t.get("outage_ms") is None)
        if key[2] != "pacemaker":
            r["old_node_answers_arp_after"] = sum(1 for t in valid if t.get("old_node_answers_arp_after"))
            r["vip_on_old_node_after"] = sum(1 for t in valid if t.get("vip_on_n1_after"))
            r["vip_moves_after_fault"] = mmm([t.get("vip_moves_after_fault") for t in valid])
            r["served_by_old_node_after_new"] = sum(1 for t in valid if t.get("old_node_served_after_new"))
            arp = {}
            for t in valid:
                a = t.get("arp_replies_after")
                k = "+".join(sorted(a)) if isinstance(a, dict) and a else "none"
                arp[k] = arp.get(k, 0) + 1
            r["arp_after"] = arp
        if key[2] == "takeover":
            r["steps"] = step_summary(valid)
        if key[2] == "pacemaker":
            tl = [t.get("pacemaker_timeline") or {} for t in valid]
            r["pacemaker_timeline"] = {k: mmm([x.get(k) for x in tl]) for k in
                                       ("token_lost_ms", "membership_ms", "dc_elected_ms", "vip_started_ms",
                                        "web_started_ms")}
        out.append(r)
    out.sort(key=lambda r: (r["scenario"] != "failover", list(FAULT_TEXT).index(r["fault"])
                            if r["fault"] in FAULT_TEXT else 99, SYSTEM_ORDER.get(r["system"], 9), r["variant"]))
    return out


def step_summary(valid):
    """Median of each takeover step over the valid trials."""
    marks = {}
    steps = {}
    totals = []
    for t in valid:
        s = t.get("takeover_steps") or {}
        for k, v in s.items():
            if k.endswith("_ms"):
                marks.setdefault(k, []).append(v)
        lm = s.get("last_move")
        if lm and lm.get("at_ms") is not None:
            totals.append(lm.get("total_ms"))
            steps.setdefault("(%s, %s)" % (lm.get("what"), lm.get("outcome")), []).append(lm.get("total_ms"))
            for st in lm.get("steps", []):
                steps.setdefault(st["step"], []).append(st["ms"])
    return {"marks_from_fault": {k: mmm(v) for k, v in marks.items()},
            "move_steps": {k: mmm(v) for k, v in steps.items()},
            "move_total_ms": mmm(totals)}


def add_ratios(rows):
    by = {(r["scenario"], r["fault"], r["system"], r["variant"]): r for r in rows}
    for r in rows:
        if r["system"] != "takeover":
            continue
        r["ratios"] = {}
        for (s, v) in [(a["system"], a["variant"]) for a in rows
                       if a["system"] != "takeover" and a["scenario"] == r["scenario"] and a["fault"] == r["fault"]]:
            a = by[(r["scenario"], r["fault"], s, v)]
            r["ratios"]["%s %s" % (s, v)] = {
                m: ratio((r[m] or {}).get("median"), (a[m] or {}).get("median")) for m, _ in METRICS}
        r["compared_with"] = ["%s %s" % p for p in PAIRS.get(r["variant"], [("keepalived", "fast")])
                              if "%s %s" % p in r["ratios"]]
        # an anchor whose old node kept serving (duplicate VIP) shows no outage: say so
        r["anchor_notes"] = {}
        for k in r["ratios"]:
            s, v = k.split(" ", 1)
            a = by[(r["scenario"], r["fault"], s, v)]
            if (a.get("outage_ms") or {}).get("median", 1e9) < 30 and a.get("old_node_answers_arp_after"):
                r["anchor_notes"][k] = "the anchor's old node kept serving (duplicate VIP), so it shows no outage"


def targets(rows, trials):
    out = []
    by = {(r["scenario"], r["fault"], r["system"], r["variant"]): r for r in rows}
    for fault, variant, limit, words in TARGETS:
        r = by.get(("failover", fault, "takeover", variant))
        if not r or not r["outage_ms"]:
            out.append({"target": words, "status": "not measured in this run"})
            continue
        med = r["outage_ms"]["median"]
        t = {"target": words, "median_ms": med, "limit_ms": limit, "met": med <= limit,
             "by_ms": round(med - limit, 1), "steps": r.get("steps")}
        out.append(t)
    for variant in ("default", "tuned"):
        r = by.get(("failover", "kill", "takeover", variant))
        if r and r["valid"]:
            n_bad = r.get("old_node_answers_arp_after", 0)
            out.append({"target": "kill -9 of the agent never leaves the service answering on the old node "
                                  "(takeover %s)" % variant,
                        "met": n_bad == 0 and r.get("served_by_old_node_after_new", 0) == 0
                        and r.get("vip_moves_after_fault") is not None,
                        "old_node_answers_arp_after": "%d of %d" % (n_bad, r["valid"]),
                        "old_node_served_after_new": "%d of %d" % (r.get("served_by_old_node_after_new", 0),
                                                                   r["valid"])})
    for variant in ("default", "tuned"):
        r = by.get(("redundant", "hblink-down", "takeover", variant))
        if r and r["valid"]:
            moves = r["vip_moves_after_fault"]["max"] if r["vip_moves_after_fault"] else None
            failed = r["failed"]["max"] if r["failed"] else None
            out.append({"target": "two links, one (the dedicated link) down: takeover %s does not move, no request "
                                  "fails" % variant, "met": moves == 0 and failed == 0,
                        "moves_max": moves, "failed_max": failed})
    return out


def outage_cell(r):
    c = fmt3(r["outage_ms"])
    if r.get("not_recovered"):
        c = ("%s; " % c if r["outage_ms"] else "") + "**no recovery within the window in %d of %d**" % (
            r["not_recovered"], r["valid"])
    return c


def ratio_text(r, k):
    q = r["ratios"][k]
    f = lambda x: "–" if x is None else ("%.2f" % x if x < 10 else "%.0f" % x)
    return "×%s, ×%s vs %s%s" % (f(q["outage_ms"]), f(q["takeover_ms"]), k,
                                 " (anchor: no outage, its old node kept serving)" if k in r.get("anchor_notes", {})
                                 else "")


def where_time_goes(r):
    s = r.get("steps") or {}
    parts = []
    for k, v in sorted((s.get("marks_from_fault") or {}).items(), key=lambda kv: (kv[1] or {}).get("median", 0)):
        if v:
            parts.append("%s %s" % (k[:-3].replace("_", " "), fmt(v["median"])))
    steps = ", ".join("%s %s" % (k, fmt(v["median"])) for k, v in (s.get("move_steps") or {}).items() if v)
    return parts, steps


def markdown(out, rows, tg, meta, trials):
    L = []
    started = meta.get("started", "?")
    L.append("# takeover vs keepalived vs Pacemaker: failover, %s" % started)
    L.append("")
    if meta["args"].get("reps", 0) < 5 or meta["args"].get("smoke"):
        L.append("**Smoke run** (%d round(s)): proves the harness end to end; the figures are single trials, "
                 "not a benchmark." % meta["args"].get("reps", 0))
        L.append("")
    L.append("Command: `%s`  " % meta.get("command"))
    L.append("Started %s, finished %s, %s s. Output: `%s`." % (started, meta.get("finished", "?"),
                                                             meta.get("total_s", "?"), out))
    if meta.get("interrupted"):
        L.append("**Interrupted** (%s): only what was measured is shown." % meta["interrupted"])
    L.append("")
    L.append("Cells are min / **median** / max over the valid trials of the row (n). The outage is the "
             "anchors' probe definition (last success before the outage → first success after it; ~10 ms = "
             "no outage); \"first success from the new node\" is fault → first reply served by the other node; "
             "failed = probe requests (every 10 ms, 100 ms timeout) that failed after the fault. The ratio is "
             "takeover / anchor of the medians.")
    L.append("")
    scen = None
    for r in rows:
        if r["scenario"] != scen:
            scen = r["scenario"]
            L.append("## %s" % SCEN_TEXT.get(scen, scen))
            L.append("")
            L.append("| fault | system | variant | fencing | n | outage ms | first success from new node ms "
                     "| longest gap ms | failed requests | VIP moves | nodes answering ARP for the VIP after | old node served after the new one "
                     "| takeover / anchor (outage) |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        rat = "; ".join(ratio_text(r, k) for k in r.get("compared_with", [])) if r.get("ratios") else ""
        moves = fmt3(r.get("vip_moves_after_fault")) if r["system"] != "pacemaker" else "–"
        arp = ", ".join("%s %d/%d" % (k, v, r["valid"]) for k, v in sorted(r.get("arp_after", {}).items())) \
            if r["system"] != "pacemaker" else "–"
        late = ("%d/%d" % (r["served_by_old_node_after_new"], r["valid"])) if r["system"] != "pacemaker" else "–"
        fence = {"takeover": "yes" if r["fencing"] and r["fencing"].startswith("fencing") else "**no**"}.get(
            r["system"], "**no**")
        L.append("| %s | %s | %s | %s | %d%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["fault"], r["system"], r["variant"], fence, r["valid"],
            "" if r["valid"] == r["trials"] else " (+%d discarded)" % (r["trials"] - r["valid"]),
            outage_cell(r), fmt3(r["takeover_ms"]), fmt3(r["max_gap_ms"]), fmt3(r["failed"]), moves, arp,
            late, rat))
        if scen != (rows[rows.index(r) + 1]["scenario"] if rows.index(r) + 1 < len(rows) else None):
            L.append("")
    L.append("Fencing: takeover's fencing variants power the lost node off through a fence command (the "
             "test-bed power switch: links down, every process of the namespace SIGKILLed) before taking over; "
             "`-nofence` variants use `arbiter = \"unsafe-assume-crash-stop\"`. keepalived has no fencing; the "
             "Pacemaker anchor runs three nodes with STONITH off (quorum decides). Rows without fencing can keep "
             "a duplicate VIP on a node that only lost its agent (see \"old node answers ARP after\").")
    L.append("")
    L.append("## Targets")
    L.append("")
    for t in tg:
        if "met" not in t:
            L.append("- %s: %s" % (t["target"], t["status"]))
            continue
        st = "**met**" if t["met"] else "**missed**"
        extra = ""
        if "median_ms" in t:
            extra = ": median %s ms (limit %s ms, %s by %s ms)" % (
                fmt(t["median_ms"]), fmt(t["limit_ms"]), "under" if t["met"] else "over", fmt(abs(t["by_ms"])))
        elif "old_node_answers_arp_after" in t:
            extra = ": old node answers ARP afterwards in %s trials; served after the new node in %s" % (
                t["old_node_answers_arp_after"], t["old_node_served_after_new"])
        elif "moves_max" in t:
            extra = ": VIP moves max %s, failed requests max %s" % (fmt(t["moves_max"]), fmt(t["failed_max"]))
        if "median_ms" in t and t.get("steps"):
            parts, steps = where_time_goes({"steps": t["steps"]})
            extra += "; where the time goes (medians from the fault): %s; move steps: %s" % (
                ", ".join(parts) or "–", steps or "–")
        L.append("- %s: %s%s" % (t["target"], st, extra))
    L.append("")
    L.append("## Where takeover's time goes (medians, ms)")
    L.append("")
    L.append("Marks from the fault (n2's agent log, wall clock of this one machine): the peer declared failed, "
             "the fence started / confirmed, the group → SM. Steps: `takeover status --json` "
             "groups[].last_move.steps on the new node (timed from \"peer declared failed\"). VIP on n2 and client "
             "ARP: the anchors' `ip monitor` timestamps.")
    L.append("")
    L.append("| scenario | fault | variant | from the fault | move steps (from peer declared failed) | "
             "VIP added on n2 | client ARP → n2 | first success from n2 |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["system"] != "takeover" or not r["valid"]:
            continue
        parts, steps = where_time_goes(r)
        if not parts and not steps:
            continue
        vt = [t for t in trials if t.get("ok") and (t["scenario"], t["fault"], t["system"], t["variant"]) ==
              (r["scenario"], r["fault"], r["system"], r["variant"])]
        vip = mmm([t.get("vip_up_backup_ms") for t in vt])
        arp = mmm([t.get("client_arp_ms") for t in vt])
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["scenario"], r["fault"], r["variant"], ", ".join(parts) or "–", steps or "–",
            fmt(vip and vip["median"]), fmt(arp and arp["median"]), fmt(r["takeover_ms"] and
                                                                       r["takeover_ms"]["median"])))
    pm = [r for r in rows if r["system"] == "pacemaker" and r["valid"]]
    if pm:
        L.append("")
        L.append("Pacemaker (survivors' logs, medians ms from the fault): " + "; ".join(
            "%s %s: %s" % (r["variant"], r["fault"], ", ".join("%s %s" % (k[:-3].replace("_", " "), fmt(v["median"]))
                                                              for k, v in r["pacemaker_timeline"].items() if v))
            for r in pm))
    L.append("")
    L.append("## Versions and machine")
    L.append("")
    for k, v in meta.get("versions", {}).items():
        L.append("- %s: %s" % (k, v))
    m = meta.get("machine", {})
    L.append("- machine: %s, %s cores (%s), %s, kernel %s; load average at start %s" % (
        m.get("os"), m.get("cpus"), m.get("cpu_model"), m.get("memory"), m.get("kernel"), m.get("loadavg_at_start")))
    L.append("")
    L.append("## Variants")
    L.append("")
    for sysname, vs in meta.get("variants", {}).items():
        for v, d in vs.items():
            L.append("- %s %s: %s" % (sysname, v, d if isinstance(d, str) else d.get("desc")))
    L.append("")
    L.append("## Per trial")
    L.append("")
    L.append("| scenario | fault | system | variant | round | valid | outage | first success new | failed | "
             "VIP moves | ARP after | load | dir / why discarded |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in trials:
        arp = t.get("arp_replies_after")
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            t["scenario"], t["fault"], t["system"], t["variant"], t["rep"], "yes" if t.get("ok") else "no",
            fmt(t.get("outage_ms")), fmt(t.get("takeover_ms")), fmt(t.get("failed")),
            fmt(t.get("vip_moves_after_fault")), "+".join(sorted(arp)) if isinstance(arp, dict) else "–",
            t.get("loadavg") or "–",
            (t.get("error") or t.get("invalid") or "") + (" `%s`" % t["trial_dir"] if t.get("trial_dir") else "")))
    return "\n".join(L) + "\n"


def headline(out, rows, meta):
    """The rows for the READMEs: power-off, kill, and one link of two down."""
    L = ["Run %s (%s), `%s`:" % (meta.get("started", "?"),
                                 "smoke, 1 round: single trials, not a benchmark"
                                 if meta["args"].get("reps", 0) < 5 or meta["args"].get("smoke")
                                 else "%d rounds" % meta["args"]["reps"], meta.get("command")), "",
         "| fault | system | variant | fencing | n | outage ms (min / **median** / max) | first success from the new "
         "node ms (median) | failed requests (median) | VIP answered by both nodes afterwards | takeover / anchor "
         "(medians: outage, first success from the new node) |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {"poweroff": 0, "kill": 1, "hblink-down": 2}
    pick = [r for r in rows if (r["scenario"] == "failover" and r["fault"] in ("poweroff", "kill"))
            or r["fault"] == "hblink-down"]
    pick.sort(key=lambda r: (order[r["fault"]], SYSTEM_ORDER.get(r["system"], 9), r["variant"]))
    for r in pick:
        rat = "; ".join(ratio_text(r, k) for k in r.get("compared_with", [])) if r.get("ratios") else ""
        fence = "yes" if (r["fencing"] or "").startswith("fencing") else "no"
        both = "%d of %d" % (r.get("arp_after", {}).get("n1+n2", 0), r["valid"]) if r["system"] != "pacemaker" \
            else "–"
        L.append("| %s | %s | %s | %s | %d%s | %s | %s | %s | %s | %s |" % (
            FAULT_TEXT.get(r["fault"], r["fault"]), r["system"], r["variant"], fence, r["valid"],
            "" if r["valid"] == r["trials"] else " (+%d discarded)" % (r["trials"] - r["valid"]),
            outage_cell(r), fmt(r["takeover_ms"] and r["takeover_ms"]["median"]),
            fmt(r["failed"] and r["failed"]["median"]), both, rat))
    return "\n".join(L) + "\n"


BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


def write(out, update_readme=False):
    trials, meta = load(out)
    rows = rows_of(trials)
    add_ratios(rows)
    tg = targets(rows, trials)
    res = {"meta": meta, "rows": rows, "targets": tg}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(out, rows, tg, meta, trials)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    hl = headline(out, rows, meta)
    with open(os.path.join(out, "headline.md"), "w") as f:
        f.write(hl)
    if update_readme:
        for p in (os.path.join(BENCH, "README.md"), os.path.join(os.path.dirname(BENCH), "README.md")):
            text = open(p).read()
            if BEGIN in text and END in text:
                a, rest = text.split(BEGIN, 1)
                _, b = rest.split(END, 1)
                open(p, "w").write(a + BEGIN + "\n" + hl + END + b)
    return md


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(write(sys.argv[1], update_readme="--update-readme" in sys.argv))
