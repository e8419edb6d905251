"""takeover driver for the failover harness of ../shared/anchors/keepalived (lib/bench.py)
and for this project's extension of it (bench/lib/kabx.py: power-off, two links).

The interface is the one documented at the top of the anchor's drivers/keepalived.py:

  NAME, VARIANTS, get_variant(name), versions(), start(node, peer, variant, ctx) -> Popen

start() writes one cluster file (the same on both nodes) and runs
`takeover agent --config FILE --node nX` in the foreground inside node["ns"], in a new
session, so the harness's `kill` fault (SIGKILL to the process group) kills the whole agent.
The group is VIP-only (the harness runs the web servers itself): the like-for-like
comparison with keepalived.

Fencing (arbiter = "fence"): a plain fence command that really powers off the target
namespace: `takeover fence-netns --bed FILE` (the project's test-bed power switch, fence-agents
stdin protocol) with a bed file describing the harness's namespaces, links and bridge ports:
every link of the node goes down at both ends, then every process of its network namespace
is SIGKILLed until none is left (fence confirmed). The `-nofence` variants run with
arbiter = "unsafe-assume-crash-stop" instead: no fence at all, like keepalived and like the
Pacemaker anchor (STONITH off).

Extra keys our own runner may pass (the anchor's bench.py passes none of them):
  node["links"]:  [{"ip", "ifname", "bridge_ns", "bridge_if"}, ...] one per link, link 0 first
                  (default: the anchor's single link: eth0 on kab-br, port p-<name>)
  ctx["api_dir"]: where the API sockets go (default /run/tob-bench; sun_path is short)

Status: after the fault the driver saves `GET /v1/status` of both agents (groups[].last_move
has the step timings of the takeover) to <trial>/<node>/status-after.json, from a thread of the
harness process: it waits until the harness has written <trial>/fault_ts, then waits until
shortly before the probe ends (post_fault_s - 0.6 s). collect(trial_dir) does the same at once.
"""
import json
import os
import re
import socket
import subprocess
import threading
import time

NAME = "takeover"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("TAKEOVER_BIN", os.path.join(REPO, "target", "release", "takeover"))
API_DIR = os.environ.get("TOB_API_DIR", "/run/tob-bench")
PORT = 7101

# Every variant is a VIP-only group on n1 (preferred) and n2. Times: heartbeat_interval,
# dead_after, fence_delay; "fence" says whether the arbiter fences.
VARIANTS = {
    "default": {
        "desc": "takeover defaults: heartbeat 100ms, dead_after 500ms, fence_delay 200ms, arbiter fence "
                "(power switch: links down + every process of the namespace SIGKILLed)",
        "heartbeat_interval": "100ms", "dead_after": "500ms", "fence_delay": "200ms",
        "fence": True, "monitor_interval": "10s", "post_fault_s": 4.0,
    },
    "default-nofence": {
        "desc": "takeover defaults without fencing: arbiter unsafe-assume-crash-stop "
                "(heartbeat 100ms, dead_after 500ms)",
        "heartbeat_interval": "100ms", "dead_after": "500ms", "fence_delay": "200ms",
        "fence": False, "monitor_interval": "10s", "post_fault_s": 4.0,
    },
    "tuned": {
        "desc": "takeover tuned: heartbeat 10ms, dead_after 50ms, fence_delay 0ms, arbiter fence, "
                "vip monitor 1s",
        "heartbeat_interval": "10ms", "dead_after": "50ms", "fence_delay": "0ms",
        "fence": True, "monitor_interval": "1s", "post_fault_s": 3.0,
    },
    "tuned-nofence": {
        "desc": "takeover tuned without fencing: heartbeat 10ms, dead_after 50ms, "
                "arbiter unsafe-assume-crash-stop, vip monitor 1s",
        "heartbeat_interval": "10ms", "dead_after": "50ms", "fence_delay": "0ms",
        "fence": False, "monitor_interval": "1s", "post_fault_s": 3.0,
    },
}

AD_HOC = re.compile(r"^hb(\d+)-da(\d+)(?:-fd(\d+))?(?:-mon(\d+(?:\.\d+)?))?(-nofence)?$")


def get_variant(name):
    """A named variant, or an ad-hoc one: hb<ms>-da<ms>[-fd<ms>][-mon<s>][-nofence],
    e.g. hb20-da80-fd10 (heartbeat 20 ms, dead_after 80 ms, fence_delay 10 ms)."""
    if name in VARIANTS:
        return VARIANTS[name]
    m = AD_HOC.match(name)
    if not m:
        raise KeyError("unknown takeover variant %r (known: %s, or hb<ms>-da<ms>[-fd<ms>][-mon<s>][-nofence])"
                       % (name, ", ".join(VARIANTS)))
    hb, da = int(m.group(1)), int(m.group(2))
    fd = int(m.group(3)) if m.group(3) else 200
    mon = m.group(4) or "10"
    fence = not m.group(5)
    return {"desc": "takeover ad hoc: heartbeat %dms, dead_after %dms, fence_delay %dms, %s, vip monitor %ss"
                    % (hb, da, fd, "arbiter fence" if fence else "unsafe-assume-crash-stop", mon),
            "heartbeat_interval": "%dms" % hb, "dead_after": "%dms" % da, "fence_delay": "%dms" % fd,
            "fence": fence, "monitor_interval": mon + "s",
            "post_fault_s": max(3.0, 2.5 + 4 * (da + fd) / 1000.0)}


def versions():
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    v = {"takeover": (out.stdout + out.stderr).strip() or "? (%s missing)" % BIN}
    git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD")
    if commit:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        v["takeover"] += " (git %s%s, %s, release build %s)" % (
            commit[:12], ", uncommitted changes" if dirty else "", git("rev-parse", "--abbrev-ref", "HEAD"), BIN)
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    if rustc:
        v["rustc"] = rustc
    return v


def default_links(node):
    return [{"ip": node["ip"], "ifname": node.get("dev", "eth0"), "bridge_ns": "kab-br",
             "bridge_if": "p-" + node["name"]}]


def node_rundir(ctx_rundir, name):
    # the harness gives each node <trial>/<node>/run: the peer's is its sibling
    return os.path.join(os.path.dirname(os.path.dirname(ctx_rundir)), name, "run")


def api_sock(ctx, name):
    return os.path.join(ctx.get("api_dir", API_DIR), name + ".sock")


def bed_state(nodes, client_ns="kab-client"):
    """A netbed BedState (crates/takeover-agent/src/netbed.rs) for `takeover fence-netns`."""
    def member(ns, links):
        return {"namespace": ns, "mounts": [],
                "links": [{"link": i, "ifname": l["ifname"], "addr": l["ip"], "bridge_namespace": l["bridge_ns"],
                           "bridge_ifname": l["bridge_if"]} for i, l in enumerate(links)]}
    bridges = sorted({l["bridge_ns"] for n in nodes for l in n["links"]})
    return {"prefix": "kab", "slot": 0,
            "nodes": {n["name"]: member(n["ns"], n["links"]) for n in nodes},
            "client": member(client_ns, [{"ifname": "eth0", "ip": "10.200.0.10", "bridge_ns": "kab-br",
                                          "bridge_if": "p-client"}]),
            "bridges": bridges}


def render_config(nodes, variant, ctx):
    """The cluster file (the same on both nodes). nodes: [n1, n2] with links and rundir."""
    v = get_variant(variant)
    lines = [
        "# written by bench/drivers/takeover.py, variant %s: %s" % (variant, v["desc"]),
        "[cluster]",
        'name = "bench"',
        'heartbeat_interval = "%s"' % v["heartbeat_interval"],
        'dead_after = "%s"' % v["dead_after"],
        'fence_delay = "%s"' % v["fence_delay"],
        'arbiter = "%s"' % ("fence" if v["fence"] else "unsafe-assume-crash-stop"),
        "",
    ]
    if v["fence"]:
        # A plain command: exit 0 = the node is off. The power switch is the test bed's fence
        # agent, given its request on stdin.
        script = "printf 'action=off\\nport=%%s\\n' \"$0\" | exec %s fence-netns --bed %s" % (
            BIN, ctx["bed_file"])
        lines += ["[fence]", "command = %s" % json.dumps(["/bin/sh", "-c", script, "{node}"]),
                  'timeout = "10s"', ""]
    for n in nodes:
        lines += ["[[node]]", 'name = "%s"' % n["name"],
                  'state_dir = "%s"' % os.path.join(n["rundir"], "state"),
                  'api = "unix:%s"' % n["api"],
                  "links = %s" % json.dumps(["%s:%d" % (l["ip"], PORT) for l in n["links"]]), ""]
    lines += ["[[group]]", 'name = "vip"', "nodes = %s" % json.dumps([n["name"] for n in nodes]), "",
              "[[group.resource]]", 'name = "ip"', 'type = "vip"',
              'address = "%s/%d"' % (ctx["vip"], ctx["prefixlen"]),
              'interface = "%s"' % nodes[0]["links"][0]["ifname"],
              'monitor_interval = "%s"' % v["monitor_interval"], ""]
    return "\n".join(lines)


def start(node, peer, variant, ctx):
    v = get_variant(variant)
    rd = ctx["rundir"]
    os.makedirs(rd, exist_ok=True)
    os.makedirs(ctx.get("api_dir", API_DIR), exist_ok=True)
    me = dict(node, links=node.get("links") or default_links(node), rundir=rd, api=api_sock(ctx, node["name"]))
    other = dict(peer, links=peer.get("links") or default_links(peer), rundir=node_rundir(rd, peer["name"]),
                 api=api_sock(ctx, peer["name"]))
    nodes = sorted([me, other], key=lambda n: 0 if n["role"] == "master" else 1)
    ctx = dict(ctx)
    ctx["bed_file"] = os.path.join(rd, "bed.json")
    with open(ctx["bed_file"], "w") as f:
        json.dump(bed_state(nodes), f, indent=1)
    conf = os.path.join(rd, "cluster.toml")
    with open(conf, "w") as f:
        f.write(render_config(nodes, variant, ctx))
    try:
        os.unlink(me["api"])     # left by an agent of an earlier trial (killed)
    except FileNotFoundError:
        pass
    log = open(ctx["logfile"], "w")
    env = dict(os.environ, TAKEOVER_LOG=os.environ.get("TAKEOVER_LOG", "info"), NO_COLOR="1")
    p = subprocess.Popen(["ip", "netns", "exec", node["ns"], BIN, "agent", "--config", conf, "--node", node["name"]],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, env=env)
    if node["role"] == "backup" and not ctx.get("no_status_thread"):
        trial = os.path.dirname(os.path.dirname(rd))
        threading.Thread(target=_collect_after_fault, daemon=True,
                         args=(trial, [me, other], v["post_fault_s"], p)).start()
    return p


# ---- status after the fault ------------------------------------------------------------

def get_status(sock, timeout=1.0):
    """GET /v1/status on an agent's Unix socket; the parsed document, or {"error": ...}."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(b"GET /v1/status HTTP/1.0\r\nHost: takeover\r\n\r\n")
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        s.close()
        head, _, body = buf.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            return {"error": head.split(b"\r\n")[0].decode("latin-1")}
        if b"chunked" in head.lower():
            body = _unchunk(body)
        return json.loads(body)
    except (OSError, ValueError) as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}


def _unchunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


def save_status(trial, nodes):
    for n in nodes:
        with open(os.path.join(trial, n["name"], "status-after.json"), "w") as f:
            json.dump(get_status(n["api"]), f, indent=1)


def _collect_after_fault(trial, nodes, post_fault_s, proc):
    fault_file = os.path.join(trial, "fault_ts")
    deadline = time.time() + 120
    while not os.path.exists(fault_file):
        if time.time() > deadline or proc.poll() is not None:
            return
        time.sleep(0.05)
    time.sleep(max(0.2, post_fault_s - 0.6))
    save_status(trial, nodes)


def collect(trial, names=("n1", "n2"), api_dir=API_DIR):
    """Save both agents' status now (used by bench/lib/kabx.py)."""
    save_status(trial, [{"name": n, "api": os.path.join(api_dir, n + ".sock")} for n in names])
