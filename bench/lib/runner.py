#!/usr/bin/env python3
"""takeover side by side with keepalived and Pacemaker, in one run, interleaved.

Called by bench/run.sh (which installs what is missing and builds takeover in release mode).
Run as root. Everything is measured with the anchors' topology, probe and analysis
(../shared/anchors, run from where they live):

scenario `failover` (issue 8, item 2): faults on the active node n1
  kill       SIGKILL of the HA software (keepalived: its process group; takeover: the agent's
             process group; Pacemaker: corosync, the anchor's `kill-corosync`)
  poweroff   the node dies: every link down and every process of its namespace SIGKILLed
             (takeover/keepalived: bench/lib/kabx.py; Pacemaker: the anchor's `power-off`,
             link down + SIGKILL of the node's PID-namespace init)
  linkdown   ip link set eth0 down in the node
  kill and linkdown of takeover and keepalived run in the anchor's own harness
  (keepalived/lib/bench.py, takeover through --driver bench/drivers/takeover.py);
  poweroff, which that harness lacks, runs in bench/lib/kabx.py, built on it.

scenario `redundant` (item 3): two links, link 0 the LAN (clients, VIP), link 1 a dedicated
  interconnect; takeover heartbeats on both, keepalived's VRRP on its single path (eth0).
  hblink-down   n1's link 1 down: nothing may move, no request may fail
  lan-down      n1's link 0 down (informative: the node lost its clients, not its peer)

Interleaving: each round runs one trial of every (system, variant, fault) in an order
shuffled per round (seeded); a Pacemaker block (fresh cluster, one trial per fault) counts
as one item. More scenarios (false takeovers under load, idle cost, journal vs etcd,
1,000 groups: issue 8 items 4-7) are added as entries of SCENARIOS with an `items` and a
`run` function and their own rows in the report.

Output (--out, default bench/results/<UTC time>/): trials.jsonl (one normalised record per
trial, including discarded ones), meta.json (versions, machine, options, command), results.json
and results.md (bench/lib/report.py), and the raw per-trial directories.
"""
import argparse
import fcntl
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
REPO = os.path.dirname(BENCH)
sys.path.insert(0, HERE)
import kabx          # noqa: E402  (loads the anchor's bench.py)
import pacemaker     # noqa: E402
import report        # noqa: E402

PY = "/usr/bin/python3"
KAB = kabx.KAB
TAKEOVER_DRIVER = os.path.join(BENCH, "drivers", "takeover.py")
LOCKFILE = "/run/lock/kab-bench.lock"   # the keepalived anchor's: we use its kab-* names

FENCING = {
    ("takeover", True): "fencing: power switch (links down + every process of the node killed)",
    ("takeover", False): "no fencing (arbiter unsafe-assume-crash-stop)",
    ("keepalived", None): "no fencing (VRRP has none)",
    ("pacemaker", None): "no fencing (STONITH off in the anchor; 3 nodes, quorum)",
}


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def drivers():
    return {"takeover": kabx.kab.load_driver(TAKEOVER_DRIVER), "keepalived": kabx.kab.load_driver("keepalived")}


def fencing(system, variant, drv):
    if system == "takeover":
        return FENCING[("takeover", bool(drv.get_variant(variant)["fence"]))]
    return FENCING[(system, None)]


# ---- items -------------------------------------------------------------------------------

def plan(args):
    """Every item of one round: dicts with scenario, system, variant, fault(s)."""
    items = []
    systems = args.systems.split(",")
    var = {"takeover": args.takeover_variants, "keepalived": args.keepalived_variants}
    if "failover" in args.scenarios.split(","):
        for system in ("takeover", "keepalived"):
            if system not in systems:
                continue
            for v in var[system].split(","):
                for f in args.faults.split(","):
                    items.append({"scenario": "failover", "system": system, "variant": v, "fault": f})
        if "pacemaker" in systems:
            pf = [f for f in args.faults.split(",") if f in pacemaker.FAULTS]
            for cfg in args.pacemaker_configs.split(","):
                items.append({"scenario": "failover", "system": "pacemaker", "variant": cfg, "faults": pf})
    if "redundant" in args.scenarios.split(","):
        for system in ("takeover", "keepalived"):
            if system not in systems:
                continue
            vs = args.redundant_takeover_variants if system == "takeover" else \
                (args.redundant_keepalived_variants or var[system])
            for v in vs.split(","):
                for f in args.redundant_faults.split(","):
                    items.append({"scenario": "redundant", "system": system, "variant": v, "fault": f})
    return items


def item_name(it):
    return "%s/%s/%s/%s" % (it["scenario"], it["system"], it["variant"], it.get("fault") or "+".join(it["faults"]))


# ---- running one item ----------------------------------------------------------------------

def run_item(it, rnd, args, drvs, out):
    if it["system"] == "pacemaker":
        d = os.path.join(out, "pacemaker", "%s-r%d" % (it["variant"], rnd))
        recs = pacemaker.run_block(it["variant"], it["faults"], rnd, d)
        back = {v: k for k, v in pacemaker.FAULTS.items()}
        res = []
        for r in recs:
            fault = back.get(r.get("fault"), r.get("fault") or "?")
            n = norm_common(it, fault, rnd, "anchor pacemaker/bench.py", d)
            if r.get("error"):
                n.update(ok=False, error=r["error"])
            else:
                n.update(ok=True, outage_ms=r.get("outage_ms"), max_gap_ms=r.get("max_gap_ms"),
                         takeover_ms=r.get("takeover_ms"), failed=r.get("failed"),
                         failed_before=r.get("failed_before"), served_after=r.get("served_after"),
                         loadavg=r.get("loadavg1"), pacemaker_timeline=r.get("timeline"),
                         victim=r.get("victim"), new_active=r.get("new_active"))
                if r.get("failed_before"):
                    n.update(ok=False, invalid="%d failed requests before the fault" % r["failed_before"])
            n["fencing"] = FENCING[("pacemaker", None)]
            res.append(n)
        if not recs:
            res.append(dict(norm_common(it, "?", rnd, "anchor pacemaker/bench.py", d), ok=False,
                            error="no record"))
        return res
    drv = drvs[it["system"]]
    fault = it["fault"]
    links = kabx.FAULTS[fault][0]
    if it["scenario"] == "redundant":
        links = 2
    d = os.path.join(out, it["scenario"], it["system"], "r%d" % rnd)
    if links == 1 and fault in ("kill", "linkdown") and not args.own_harness:
        recs = run_anchor_harness(it, rnd, args, d)
        source = "anchor keepalived/lib/bench.py"
    else:
        recs = kabx.run_one(drv, it["variant"], fault, rnd, d, args, links=links)
        source = "bench/lib/kabx.py (on the anchor's topology and probe)"
    res = []
    for r in recs:
        n = norm_common(it, fault, rnd, source, r.get("trial_dir"))
        n.update(links=links, fencing=fencing(it["system"], it["variant"], drv))
        for k in ("ok", "invalid", "error", "outage_ms", "outage_from_ms", "max_gap_ms", "takeover_ms", "failed",
                  "failed_before", "fail_reasons", "served_after", "vip_up_backup_ms", "vip_gone_master_ms",
                  "client_arp_ms", "vip_on_n1_after", "vip_on_n2_after", "arp_replies_after",
                  "vip_moves_before_fault", "vip_moves_at_startup", "vip_moves_after_fault", "fault_cmd_ms",
                  "pre_s", "attempt", "trial_s", "ha_n1_alive_after", "ha_n2_alive_after"):
            if k in r:
                n[k] = r[k]
        n["loadavg"] = r.get("loadavg_start")
        arp = r.get("arp_replies_after") or {}
        n["old_node_answers_arp_after"] = bool(arp.get("n1"))
        if r.get("trial_dir") and r.get("fault_ts"):
            n.update(old_node_after_new(r["trial_dir"], r["fault_ts"]))
        if it["system"] == "takeover" and r.get("trial_dir"):
            n["takeover_steps"] = takeover_steps(r["trial_dir"], r)
        if "vip_moves_after_fault" not in n and r.get("trial_dir"):
            kabx.vip_moves(r["trial_dir"], r)
            n["vip_moves_after_fault"] = r.get("vip_moves_after_fault")
        res.append(n)
    return res


def norm_common(it, fault, rnd, source, trial_dir):
    return {"scenario": it["scenario"], "system": it["system"], "variant": it["variant"], "fault": fault,
            "rep": rnd, "source": source, "trial_dir": os.path.relpath(trial_dir, ARGS_OUT) if trial_dir else None}


def run_anchor_harness(it, rnd, args, d):
    """One trial in the keepalived anchor's own harness, run from where it lives."""
    drv = "keepalived" if it["system"] == "keepalived" else TAKEOVER_DRIVER
    cmd = [PY, os.path.join(KAB, "lib", "bench.py"), "--driver", drv, "--variants", it["variant"],
           "--faults", it["fault"], "--reps", "1", "--seed", str(args.seed * 1000 + rnd), "--out", d,
           "--retries", str(args.retries), "--pre", str(args.pre), "--jitter", str(args.jitter),
           "--settle", str(args.settle)]
    env = dict(os.environ, KAB_LOCK_HELD="1", KAB_CALLER_PWD=REPO)
    before = 0
    tj = os.path.join(d, "trials.jsonl")
    if os.path.exists(tj):
        before = len(open(tj).readlines())
    with open(os.path.join(ARGS_OUT, "anchor-harness.log"), "a") as f:
        f.write("$ %s\n" % " ".join(shlex.quote(c) for c in cmd))
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    recs = [json.loads(l) for l in open(tj).readlines()[before:]] if os.path.exists(tj) else []
    for r in recs:
        att = r.get("attempt", 1)
        r["trial_dir"] = os.path.join(d, "%s-%s-%d%s" % (r["variant"], r["fault"], r["rep"],
                                                           "" if att == 1 else "-try%d" % att))
        log("%-10s %-14s %-11s #%d valid=%s outage=%sms failed=%s takeover=%sms (anchor harness, %.1fs)" % (
            it["system"], it["variant"], it["fault"], rnd, r["ok"], r.get("outage_ms"), r.get("failed"),
            r.get("takeover_ms"), r.get("trial_s", 0)))
        if not r["ok"]:
            log("   not counted: %s" % (r.get("error") or r.get("invalid")))
    if not recs:
        recs = [{"ok": False, "error": "the anchor harness wrote no trial (see anchor-harness.log)"}]
    return recs


def old_node_after_new(tdir, t_fault):
    """From the probe's CSV: did the old node (n1) answer any request started after the new
    node (n2) had answered one? (both serving: the duplicate VIP the client can still reach)"""
    import gzip
    p = os.path.join(tdir, "probe.csv.gz")
    try:
        with gzip.open(p, "rt") as f:
            next(f)
            rows = [l.rstrip("\n").split(",") for l in f]
    except (OSError, StopIteration):
        return {}
    ok = [(float(r[1]), float(r[2]), r[4]) for r in rows if len(r) >= 5 and r[3] == "1"]
    first_new = min((te for ts, te, srv in ok if srv == "kab-n2" and ts >= t_fault), default=None)
    if first_new is None:
        return {"old_node_served_after_new": 0, "old_node_last_answer_ms": None}
    late = [te for ts, te, srv in ok if srv == "kab-n1" and ts >= first_new]
    last_old = max((te for ts, te, srv in ok if srv == "kab-n1" and ts >= t_fault), default=None)
    return {"old_node_served_after_new": len(late),
            "old_node_last_answer_ms": None if last_old is None else round((last_old - t_fault) * 1000.0, 1)}


def takeover_steps(tdir, r):
    """The move's steps from n2's status (groups[].last_move), plus the detection time
    from n2's agent log (fault -> the peer declared failed, wall clock of one machine)."""
    out = {}
    try:
        st = json.load(open(os.path.join(tdir, "n2", "status-after.json")))
        for g in st.get("groups", []):
            if g.get("last_move"):
                out["last_move"] = g["last_move"]
                out["role_n2"] = g.get("role")
    except (OSError, ValueError):
        pass
    t_fault = r.get("fault_ts")
    ev = report.agent_events(os.path.join(tdir, "n2", "takeover.log"))
    for key, pat in report.AGENT_MARKS:
        for ts, text in ev:
            if t_fault and ts >= r.get("fault_start_ts", t_fault) - 0.001 and pat.search(text):
                out[key + "_ms"] = round((ts - t_fault) * 1000.0, 1)
                break
    return out


# ---- main -----------------------------------------------------------------------------------

ARGS_OUT = None

SMOKE = {"reps": 1, "systems": "takeover,keepalived", "takeover_variants": "default,tuned",
         "keepalived_variants": "default,fast", "faults": "poweroff,kill", "redundant_faults": "hblink-down",
         "redundant_takeover_variants": "default", "redundant_keepalived_variants": "fast", "retries": 1,
         "pre": 1.5, "jitter": 0.5, "settle": 0.5}


def main():
    global ARGS_OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="rounds: trials per (system, variant, fault)")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick end-to-end check (under 2 min): 1 round of takeover default+tuned and keepalived "
                         "default+fast, faults poweroff+kill, and the two-link hblink-down (takeover default, "
                         "keepalived fast), shorter pre-fault waits; options given as well override these")
    ap.add_argument("--scenarios", default="failover,redundant")
    ap.add_argument("--systems", default="takeover,keepalived,pacemaker")
    ap.add_argument("--takeover-variants", default="default,default-nofence,tuned,tuned-nofence")
    ap.add_argument("--keepalived-variants", default="default,fast")
    ap.add_argument("--pacemaker-configs", default="default,token1000")
    ap.add_argument("--faults", default="kill,poweroff,linkdown", help="faults of the failover scenario")
    ap.add_argument("--redundant-faults", default="hblink-down,lan-down")
    ap.add_argument("--redundant-takeover-variants", default="default,tuned")
    ap.add_argument("--redundant-keepalived-variants", default=None, help="default: --keepalived-variants")
    ap.add_argument("--own-harness", action="store_true",
                    help="run kill/linkdown in bench/lib/kabx.py too instead of the anchor's bench.py")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--retries", type=int, default=2, help="re-runs of a discarded trial (as the anchor)")
    ap.add_argument("--pre", type=float, default=2.0)
    ap.add_argument("--jitter", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--timeout", type=float, default=0.1)
    ap.add_argument("--arp-checks", type=int, default=3)
    ap.add_argument("--nice", type=int, default=-10)
    ap.add_argument("--report-only", metavar="DIR", help="only re-make results.json/results.md of DIR")
    ap.add_argument("--update-readme", action="store_true",
                    help="write the headline rows into bench/README.md (between its markers)")
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.smoke:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
        for k, v in SMOKE.items():
            if k not in given:
                setattr(args, k, v)
    if args.report_only:
        report.write(args.report_only, update_readme=args.update_readme)
        return 0
    if os.geteuid() != 0:
        sys.exit("must run as root (network namespaces)")
    out = os.path.abspath(args.out or os.path.join(BENCH, "results", time.strftime("%Y%m%dT%H%M%SZ",
                                                                                     time.gmtime())))
    ARGS_OUT = out
    os.makedirs(out, exist_ok=True)
    os.makedirs("/run/lock", exist_ok=True)
    lock = open(LOCKFILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("another kab-* benchmark is running (%s is locked)" % LOCKFILE)

    def _stop(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _stop)
    os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    drvs = drivers()
    items = plan(args)
    if "pacemaker" in args.systems.split(",") and not pacemaker.installed():
        sys.exit("Pacemaker/Corosync are not installed (bench/run.sh installs them; or leave out --systems pacemaker)")
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": os.environ.get("TOB_COMMAND") or " ".join([sys.argv[0]] + [shlex.quote(a) for a in argv]),
        "args": vars(args),
        "versions": versions(drvs, args),
        "machine": machine(),
        "items": [item_name(i) for i in items],
        "variants": {k: v for k, v in {
            "takeover": {v: drvs["takeover"].get_variant(v) for v in
                         sorted(set(args.takeover_variants.split(",") + args.redundant_takeover_variants.split(",")))},
            "keepalived": {v: kabx.kab.get_variant(drvs["keepalived"], v) for v in args.keepalived_variants.split(",")},
            "pacemaker": {c: pacemaker.DESC[c] for c in args.pacemaker_configs.split(",")},
        }.items() if k in args.systems.split(",")},
        "faults": {**{f: d for f, (_, d) in kabx.FAULTS.items()},
                   "pacemaker": {k: "anchor fault %s" % v for k, v in pacemaker.FAULTS.items()}},
    }
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)
    log("%d items per round x %d rounds -> %s" % (len(items), args.reps, out))
    t0 = time.time()
    tj = os.path.join(out, "trials.jsonl")
    try:
        for rnd in range(1, args.reps + 1):
            order = list(items)
            random.Random("%d-round-%d" % (args.seed, rnd)).shuffle(order)
            for it in order:
                log("round %d/%d: %s" % (rnd, args.reps, item_name(it)))
                for rec in run_item(it, rnd, args, drvs, out):
                    with open(tj, "a") as f:
                        f.write(json.dumps(rec) + "\n")
    except KeyboardInterrupt as e:
        log("interrupted (%s): cleaning up, writing what was measured" % e)
        meta["interrupted"] = str(e)
    finally:
        subprocess.run([kabx.kab.TOPO, "down"], capture_output=True)
        kabx.down_own()
        subprocess.run(["rm", "-rf", drvs["takeover"].API_DIR])
        if "pacemaker" in args.systems.split(","):
            pacemaker.down()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["total_s"] = round(time.time() - t0, 1)
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)
    md = report.write(out, update_readme=args.update_readme)
    print(md.split("\n## Per trial")[0])
    log("done in %.0f s; results in %s" % (meta["total_s"], out))
    return 0


def versions(drvs, args):
    v = {}
    for name, drv in drvs.items():
        if name in args.systems.split(","):
            v.update(drv.versions())
    if "pacemaker" in args.systems.split(","):
        v.update(pacemaker.versions())
    sh = lambda *c: subprocess.run(c, capture_output=True, text=True).stdout.strip()
    v["iproute2"] = sh("ip", "-V")
    v["python (probe, web servers, harness)"] = sh(PY, "--version")
    import hashlib
    files = ["keepalived/lib/bench.py", "keepalived/lib/probe.py", "keepalived/lib/topo.sh",
             "keepalived/drivers/keepalived.py", "pacemaker/bench.py", "pacemaker/probe.py", "pacemaker/cluster-up.sh"]
    v["anchors"] = "%s, sha256 of the harness files: %s" % (kabx.ANCHORS, ", ".join(
        "%s %s" % (f, hashlib.sha256(open(os.path.join(kabx.ANCHORS, f), "rb").read()).hexdigest()[:12])
        for f in files if os.path.exists(os.path.join(kabx.ANCHORS, f))))
    return v


def machine():
    sh = lambda *c: subprocess.run(c, capture_output=True, text=True).stdout.strip()
    osr = ""
    try:
        osr = [l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release")
               if l.startswith("PRETTY_NAME=")][0]
    except (OSError, IndexError):
        pass
    mem = ""
    try:
        mem = "%.0f GiB" % (int(open("/proc/meminfo").readline().split()[1]) / 1048576)
    except (OSError, ValueError):
        pass
    return {"kernel": platform.release(), "os": osr, "cpus": os.cpu_count(), "memory": mem,
            "cpu_model": sh("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
            "loadavg_at_start": open("/proc/loadavg").read().strip()}


if __name__ == "__main__":
    sys.exit(main())
