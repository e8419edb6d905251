"""The Pacemaker + Corosync anchor (../shared/anchors/pacemaker), run from where it lives.

One block = one corosync configuration, a fresh 3-node cluster, one trial of each chosen
fault, the logs, and the teardown: what the anchor's run.sh does for one configuration with
`TRIALS=1`, called piece by piece (cluster-up.sh, bench.py in pcb-client, down.sh, as the
anchor's README shows under "Manual use") so that a run can choose the faults and interleave
the blocks with the other systems' trials. Nothing is copied: every script runs from the
anchor's directory and writes only under the given output directory (and the anchor's own
runtime state in /tmp/pcb, which down.sh removes).
"""
import json
import os
import shutil
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ANCHORS = os.path.abspath(os.environ.get("TOB_ANCHORS", os.path.join(REPO, "..", "shared", "anchors")))
PCB = os.path.join(ANCHORS, "pacemaker")
PY = "/usr/bin/python3"
STATE = os.environ.get("PCB_STATE", "/tmp/pcb")

# as in the anchor's run.sh
CONFIGS = {
    "default": {},
    "token1000": {"PCB_TOKEN": "1000"},
    "token500c0": {"PCB_TOKEN": "500", "PCB_TOKEN_COEFF": "0"},
}
DESC = {
    "default": "corosync 3.1.7 defaults: token 3000 + coefficient 650 (3650 ms for 3 nodes), consensus 4380 ms; "
               "3 nodes, STONITH off",
    "token1000": "totem.token 1000 (1650 ms for 3 nodes), consensus 1980 ms; 3 nodes, STONITH off",
    "token500c0": "totem.token 500, token_coefficient 0 (500 ms), consensus 600 ms; 3 nodes, STONITH off",
}
# our fault names -> the anchor's
FAULTS = {"kill": "kill-corosync", "poweroff": "power-off", "linkdown": "link-down"}


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def installed():
    return all(shutil.which(b) for b in ("corosync", "pacemakerd", "crm_mon"))


def versions():
    out = subprocess.run([os.path.join(PCB, "versions.sh")], capture_output=True, text=True).stdout
    return {"pacemaker-anchor": " | ".join(l for l in out.splitlines() if not l.startswith("date:"))}


def _env(config):
    env = {k: v for k, v in os.environ.items() if k not in ("PCB_TOKEN", "PCB_TOKEN_COEFF")}
    env.update(CONFIGS[config])
    return env


def _run(cmd, env, logf, timeout):
    with open(logf, "a") as f:
        f.write("$ %s\n" % " ".join(cmd))
        f.flush()
        return subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode


def down():
    subprocess.run([os.path.join(PCB, "down.sh")], capture_output=True, timeout=120)


def run_block(config, faults, rep, outdir):
    """Fresh cluster with `config`, one trial per fault (our names). Returns the anchor's
    trial records (plus {"error"} records for faults that produced none)."""
    os.makedirs(outdir, exist_ok=True)
    env = _env(config)
    logf = os.path.join(outdir, "block.log")
    records = []
    t0 = time.time()
    try:
        down()
        if _run([os.path.join(PCB, "cluster-up.sh")], env, logf, 300) != 0:
            raise RuntimeError("cluster-up.sh failed (see %s)" % logf)
        eff = []
        for key in ("token", "consensus"):
            r = subprocess.run(["bash", "-c", "source %s/lib.sh; nx n1 corosync-cmapctl -g runtime.config.totem.%s"
                                % (PCB, key)], capture_output=True, text=True, env=env, timeout=30)
            eff.append("%s=%sms" % (key, r.stdout.split()[-1] if r.stdout.split() else "?"))
        eff = ",".join(eff)
        log("pacemaker %s (%s) round %d: cluster up in %.0f s" % (config, eff, rep, time.time() - t0))
        for fault in faults:
            before = _count(outdir)
            rc = _run(["ip", "netns", "exec", "pcb-client", PY, os.path.join(PCB, "bench.py"),
                       "--label", config, "--token-desc", eff, "--outdir", outdir,
                       "--fault", FAULTS[fault], "--place", "non-dc", "--trials", "1"], env, logf, 300)
            new = _read(outdir)[before:]
            if rc != 0 or not new:
                records.append({"fault": FAULTS[fault], "error": "bench.py exit %d (see %s)" % (rc, logf)})
                log("pacemaker %s %s: failed (exit %d)" % (config, fault, rc))
                break   # the cluster is in an unknown state: the rest of the block is lost
            for r in new:
                log("pacemaker %-9s %-8s #%d outage=%sms max_gap=%sms failed=%s takeover=%sms" % (
                    config, fault, rep, r.get("outage_ms"), r.get("max_gap_ms"), r.get("failed"),
                    r.get("takeover_ms")))
            records.extend(new)
        logs = os.path.join(outdir, "logs")
        os.makedirs(logs, exist_ok=True)
        for n in ("n1", "n2", "n3"):
            for src, dst in (("var-log-corosync/corosync.log", "corosync"), ("var-log-pacemaker/pacemaker.log",
                                                                             "pacemaker")):
                p = os.path.join(STATE, n, src)
                if os.path.exists(p):
                    shutil.copy(p, os.path.join(logs, "%s-%s.log" % (n, dst)))
    except Exception as e:
        records.append({"error": "%s: %s" % (type(e).__name__, e)})
        log("pacemaker %s round %d: %s" % (config, rep, e))
    finally:
        down()
        subprocess.run("gzip -9f %s/*.csv %s/logs/*.log 2>/dev/null" % (outdir, outdir), shell=True)
    return records


def _read(outdir):
    p = os.path.join(outdir, "trials.jsonl")
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]


def _count(outdir):
    return len(_read(outdir))
