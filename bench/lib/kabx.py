"""What the keepalived anchor's harness lacks, built on it (never copied from it).

The anchor (../shared/anchors/keepalived/lib/bench.py, imported here as a module by path)
has the topology (lib/topo.sh: kab-client, kab-n1, kab-n2 on a bridge in kab-br), the
probe (lib/probe.py), the faults `kill`, `killmain` and `linkdown`, and the analysis
(`analyze_trial`). This module runs one trial the same way, step for step, with:

- the fault `poweroff`: the node dies as a whole. Every link of the node goes down (its
  end of each veth, so the bridge port loses carrier too), then every process of its
  network namespace is SIGKILLed, scan after scan (what `ip netns pids` lists, by PID),
  until none is left: the HA software, the web server, everything. The fault time is when
  that call returns, as the anchor does for its faults.
- a second link (`links=2`): a second bridge in our own namespace `tob-br1` (veth ports
  `tob-n1`, `tob-n2`), the nodes' `eth1` at 10.200.10.11/24 and 10.200.10.12/24. The client
  and the VIP stay on link 0 (eth0), so link 1 is the nodes' dedicated interconnect (F1.7).
  Faults: `hblink-down` (n1's eth1 down: the dedicated link is lost), `lan-down` (n1's eth0
  down while eth1 still works: the node loses its clients but not its peer).
- per trial, the takeover driver's `collect()` (status of both agents, with the step
  timings of the move), and the number of VIP moves after the fault.

The result record has the anchor's fields (outage_ms, failed, takeover_ms, ...) computed by
the anchor's own `analyze_trial`, so rows from the anchor's harness and from here compare.
"""
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ANCHORS = os.path.abspath(os.environ.get("TOB_ANCHORS", os.path.join(REPO, "..", "shared", "anchors")))
KAB = os.path.join(ANCHORS, "keepalived")
LINK1_NS = "tob-br1"
LINK1_NET = "10.200.10."


def load_kab():
    spec = importlib.util.spec_from_file_location("kab_bench", os.path.join(KAB, "lib", "bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kab = load_kab()
log = kab.log
sh = kab.sh


# ---- our own namespaces ---------------------------------------------------------------

def own_namespaces():
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [l.split()[0] for l in out.splitlines() if l.startswith("tob-")]


def ns_pids(ns):
    """Live processes whose network namespace is /run/netns/NS (by PID; zombies skipped)."""
    try:
        st = os.stat("/run/netns/" + ns)
    except FileNotFoundError:
        return []
    me, pids = os.getpid(), []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            s = os.stat("/proc/%s/ns/net" % p)
            if (s.st_dev, s.st_ino) != (st.st_dev, st.st_ino):
                continue
            with open("/proc/%s/stat" % p) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                pids.append(int(p))
        except (OSError, IndexError):
            pass
    return pids


def down_own():
    """Remove every tob-* namespace (killing what runs in it, by PID)."""
    for ns in own_namespaces():
        for pid in ns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh(["ip", "netns", "del", ns], check=False)


def add_link1():
    """Link 1: a second bridge (in tob-br1) with eth1 of n1 and n2."""
    sh(["ip", "netns", "add", LINK1_NS])
    sh(["ip", "-n", LINK1_NS, "link", "set", "lo", "up"])
    sh(["ip", "netns", "exec", LINK1_NS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1"])
    sh(["ip", "-n", LINK1_NS, "link", "add", "br1", "type", "bridge", "stp_state", "0", "forward_delay", "0",
        "mcast_snooping", "0"])
    sh(["ip", "-n", LINK1_NS, "link", "set", "br1", "up"])
    for n, node in kab.NODES.items():
        port = "tob-" + n
        sh(["ip", "-n", LINK1_NS, "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", node["ns"]])
        sh(["ip", "-n", LINK1_NS, "link", "set", port, "master", "br1"])
        sh(["ip", "-n", LINK1_NS, "link", "set", port, "up"])
        sh(["ip", "-n", node["ns"], "addr", "add", link1_ip(n) + "/24", "dev", "eth1"])
        sh(["ip", "-n", node["ns"], "link", "set", "eth1", "up"])


def link1_ip(n):
    return LINK1_NET + kab.NODES[n]["ip"].rsplit(".", 1)[1]


def node_links(n, links):
    node = kab.NODES[n]
    out = [{"ip": node["ip"], "ifname": "eth0", "bridge_ns": "kab-br", "bridge_if": "p-" + n}]
    if links >= 2:
        out.append({"ip": link1_ip(n), "ifname": "eth1", "bridge_ns": LINK1_NS, "bridge_if": "tob-" + n})
    return out


def power_off(ns, ifnames):
    """Links down, then SIGKILL every process of the namespace until none is left.
    Returns the PIDs killed."""
    for ifn in ifnames:
        sh(["ip", "-n", ns, "link", "set", "dev", ifn, "down"], check=False)
    killed = set()
    deadline = time.time() + 10
    while True:
        live = ns_pids(ns)
        if not live:
            return sorted(killed)
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        if time.time() > deadline:
            raise RuntimeError("namespace %s still has processes %s" % (ns, live))
        time.sleep(0.002)


FAULTS = {
    # fault: (needs links, description)
    "kill": (1, "SIGKILL to the HA software's whole process group on n1 (as the anchor's `kill`)"),
    "linkdown": (1, "ip link set eth0 down in n1 (as the anchor's `linkdown`)"),
    "poweroff": (1, "n1 powered off: every link down, every process of its namespace SIGKILLed"),
    "hblink-down": (2, "two links: n1's dedicated link (eth1) down; clients and VIP on eth0 unaffected"),
    "lan-down": (2, "two links: n1's client link (eth0, with the VIP) down; eth1 to the peer still up"),
}


def run_trial(drv, variant, fault, rep, tdir, args, rng, links=1):
    """One trial, as the anchor's bench.run_trial, with our faults and links."""
    V = dict(kab.get_variant(drv, variant))
    if fault == "lan-down" and V.get("monitor_interval"):
        # the node keeps its peer: only the VIP's monitor can notice; watch long enough for it
        V["post_fault_s"] = max(V["post_fault_s"], seconds(V["monitor_interval"]) + 5.0)
    res_post = V["post_fault_s"]
    os.makedirs(tdir, exist_ok=True)
    res = {"driver": drv.NAME, "variant": variant, "fault": fault, "rep": rep, "ok": False, "links": links,
           "post_fault_s": res_post}
    procs = kab.Procs()
    sh([kab.TOPO, "down"], check=False)
    down_own()
    t_trial = time.time()
    res["loadavg_start"] = open("/proc/loadavg").read().split()[0]
    NODES, VIP = kab.NODES, kab.VIP
    try:
        sh([kab.TOPO, "up"])
        if links >= 2:
            add_link1()
        macs = {n: kab.mac(NODES[n]["ns"]) for n in NODES}
        res["macs"] = macs
        for n, node in NODES.items():
            www = os.path.join(tdir, n, "www")
            os.makedirs(www, exist_ok=True)
            with open(os.path.join(www, "index.html"), "w") as f:
                f.write(kab.SERVER_NAME[n] + "\n")
            procs.start("http-" + n, ["ip", "netns", "exec", node["ns"], kab.PY, "-m", "http.server",
                                      str(kab.PORT), "--bind", "0.0.0.0", "--directory", www])
        for n, node in NODES.items():
            procs.start("mon-" + n, ["stdbuf", "-oL", "ip", "-n", node["ns"], "-ts", "monitor", "address"],
                        os.path.join(tdir, n, "ipmon-addr.log"))
        procs.start("mon-client", ["stdbuf", "-oL", "ip", "-n", kab.CLIENT_NS, "-ts", "monitor", "neigh"],
                    os.path.join(tdir, "client-ipmon-neigh.log"))
        ha = {}
        for n, node in NODES.items():
            peer = NODES["n2" if n == "n1" else "n1"]
            me = dict(node, links=node_links(n, links))
            other = dict(peer, links=node_links(peer["name"], links))
            ctx = {"vip": VIP, "prefixlen": kab.PREFIXLEN, "rundir": os.path.join(tdir, n, "run"),
                   "logfile": os.path.join(tdir, n, drv.NAME + ".log"), "no_status_thread": True}
            ha[n] = procs.add("ha-" + n, drv.start(me, other, variant, ctx))
        t_ha = time.time()
        if not kab.wait_until(lambda: VIP in kab.addrs("kab-n1"), args.ready_timeout):
            raise RuntimeError("VIP never appeared on n1")
        res["vip_on_n1_after_start_s"] = round(time.time() - t_ha, 3)
        time.sleep(args.settle)
        if VIP in kab.addrs("kab-n2") or VIP not in kab.addrs("kab-n1"):
            raise RuntimeError("VIP not on n1 only before the fault")
        for n, p in ha.items():
            if p.poll() is not None:
                raise RuntimeError("HA process on %s exited early" % n)
        fault_file = os.path.join(tdir, "fault_ts")
        duration = args.pre + args.jitter + V["post_fault_s"]
        res["probe_start_ts"] = time.time()
        probe = procs.start("probe", ["ip", "netns", "exec", kab.CLIENT_NS, kab.PY, kab.PROBE, "run", VIP,
                                      str(kab.PORT), "--interval", str(args.interval), "--timeout",
                                      str(args.timeout), "--duration", str(duration), "--out",
                                      os.path.join(tdir, "probe.csv"), "--fault-file", fault_file],
                            os.path.join(tdir, "probe.out"))
        pre = args.pre + rng.uniform(0.0, args.jitter)
        res["pre_s"] = round(pre, 3)
        time.sleep(pre)
        # ---- fault ----
        n1 = NODES["n1"]["ns"]
        t_fault = time.time()
        if fault == "kill":
            os.killpg(ha["n1"].pid, signal.SIGKILL)
        elif fault == "linkdown" or fault == "lan-down":
            sh(["ip", "-n", n1, "link", "set", "dev", "eth0", "down"])
        elif fault == "hblink-down":
            sh(["ip", "-n", n1, "link", "set", "dev", "eth1", "down"])
        elif fault == "poweroff":
            res["poweroff_killed"] = len(power_off(n1, ["eth0", "eth1"] if links >= 2 else ["eth0"]))
        else:
            raise ValueError(fault)
        t_fault_done = time.time()
        res["fault_start_ts"] = t_fault
        res["fault_cmd_ms"] = round((t_fault_done - t_fault) * 1000.0, 2)
        res["fault_ts"] = t_fault_done
        with open(fault_file, "w") as f:
            f.write("%.6f\n" % t_fault_done)
        try:
            probe.wait(timeout=V["post_fault_s"] + 30)
        except subprocess.TimeoutExpired:
            raise RuntimeError("probe did not finish")
        if hasattr(drv, "collect"):
            drv.collect(tdir)
        res["vip_on_n1_after"] = VIP in kab.addrs("kab-n1")
        res["vip_on_n2_after"] = VIP in kab.addrs("kab-n2")
        with open(os.path.join(tdir, "ip-addr-after.txt"), "w") as f:
            for n, node in NODES.items():
                f.write("== %s\n%s\n" % (node["ns"], sh(["ip", "-n", node["ns"], "addr"]).stdout))
        res["ha_n1_alive_after"] = ha["n1"].poll() is None
        res["ha_n2_alive_after"] = ha["n2"].poll() is None
        if args.arp_checks > 0:
            out = sh(["ip", "netns", "exec", kab.CLIENT_NS, kab.PY, kab.PROBE, "arp", VIP, "--count",
                      str(args.arp_checks)], check=False).stdout.strip()
            try:
                by_mac = json.loads(out.splitlines()[-1])
                names = {m: n for n, m in macs.items()}
                res["arp_replies_after"] = {names.get(m, m): c for m, c in by_mac.items()}
            except (ValueError, IndexError):
                res["arp_replies_after"] = {"error": out}
        time.sleep(0.1)
        kab.analyze_trial(tdir, res)
        vip_moves(tdir, res)
    except Exception as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
        log("trial failed: %s" % res["error"])
    finally:
        procs.stop_all()
        sh([kab.TOPO, "down"], check=False)
        down_own()
        res["trial_s"] = round(time.time() - t_trial, 1)
        res["loadavg_end"] = open("/proc/loadavg").read().split()[0]
    csv = os.path.join(tdir, "probe.csv")
    if os.path.exists(csv):
        subprocess.run(["gzip", "-f", csv], check=False)
    for n in kab.NODES:
        subprocess.run(["rm", "-rf", os.path.join(tdir, n, "www")], check=False)
    return res


def seconds(text):
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m)$", text)
    if not m:
        return 10.0
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


def vip_moves(tdir, res):
    """VIP additions on n2 after the fault (a move) and deletions on n1 after it."""
    vip_re = re.compile(r"inet %s/" % re.escape(kab.VIP))
    t = res.get("fault_start_ts", res.get("fault_ts"))
    ev2 = kab.monitor_events(os.path.join(tdir, "n2", "ipmon-addr.log"))
    res["vip_moves_after_fault"] = sum(1 for ts, r in ev2 if ts >= t and vip_re.search(r)
                                       and not r.startswith("Deleted"))


def run_one(drv, variant, fault, rep, out, args, links=1):
    """Like the anchor's run_one: retries a trial that was not valid."""
    results = []
    for attempt in range(1, args.retries + 2):
        rng = random.Random("%d-%s-%s-%d-%d" % (args.seed, variant, fault, rep, attempt))
        tdir = os.path.join(out, "%s-%s-%d%s" % (variant, fault, rep, "" if attempt == 1 else "-try%d" % attempt))
        r = run_trial(drv, variant, fault, rep, tdir, args, rng, links=links)
        r["attempt"] = attempt
        r["trial_dir"] = tdir
        log("%-10s %-14s %-11s #%d valid=%s outage=%sms failed=%s takeover=%sms moves=%s (%.1fs)" % (
            drv.NAME, variant, fault, rep, r["ok"], r.get("outage_ms"), r.get("failed"), r.get("takeover_ms"),
            r.get("vip_moves_after_fault"), r["trial_s"]))
        if not r["ok"]:
            log("   not counted: %s" % (r.get("error") or r.get("invalid")))
        results.append(r)
        if r["ok"]:
            break
    return results
