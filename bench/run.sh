#!/usr/bin/env bash
# takeover side by side with keepalived and Pacemaker + Corosync: one command (as root).
#
#   bench/run.sh                 # the full run: 5 rounds, ~60 min on the 2-core box (see bench/README.md)
#   bench/run.sh --smoke         # end-to-end check in ~1.5 min (1 round, takeover + keepalived fast)
#   bench/run.sh --reps 1 --systems takeover,keepalived --faults poweroff   # any runner option
#
# It installs what is missing (Debian packages: keepalived, pacemaker, corosync,
# pacemaker-cli-utils, resource-agents, nftables), builds takeover in release mode
# (cargo build --release -p takeover), then runs bench/lib/runner.py, which writes
# bench/results/<UTC time>/{results.md,results.json,trials.jsonl,meta.json,...}.
# The anchors are run from ../shared/anchors (TOB_ANCHORS overrides), never copied.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: must run as root (network namespaces)" >&2; exit 1; }
ROOT=$PWD
export TOB_ANCHORS=${TOB_ANCHORS:-$(cd "$ROOT/../shared/anchors" && pwd)}
[ -f "$TOB_ANCHORS/keepalived/lib/bench.py" ] || { echo "bench/run.sh: no anchors at $TOB_ANCHORS" >&2; exit 1; }

# Pacemaker is needed unless --systems leaves it out, or --smoke runs without naming it
systems="" smoke=0 prev=""
for a in "$@"; do
    case $a in --smoke) smoke=1 ;; --systems=*) systems=${a#--systems=} ;; esac
    [ "$prev" = "--systems" ] && systems=$a
    prev=$a
done
if [ -n "$systems" ]; then [[ $systems == *pacemaker* ]] && want_pacemaker=1 || want_pacemaker=0
elif [ $smoke = 1 ]; then want_pacemaker=0
else want_pacemaker=1; fi

need=()
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v stdbuf >/dev/null 2>&1 || need+=(coreutils)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ $want_pacemaker = 1 ]; then
    command -v corosync >/dev/null 2>&1 || need+=(corosync)
    command -v pacemakerd >/dev/null 2>&1 || need+=(pacemaker)
    command -v crm_mon >/dev/null 2>&1 || need+=(pacemaker-cli-utils)
    [ -d /usr/lib/ocf/resource.d/heartbeat ] || need+=(resource-agents)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bench/run.sh: installing ${need[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

case " $* " in
    *" --report-only "*) ;;
    *) echo "bench/run.sh: cargo build --release -p takeover" >&2
       cargo build --release -p takeover ;;
esac
export TAKEOVER_BIN=$ROOT/target/release/takeover
export TOB_COMMAND="bench/run.sh $*"
# the runner always tears down what it made (kab-*, tob-*, pcb-*), also on Ctrl-C
exec /usr/bin/python3 "$ROOT/bench/lib/runner.py" "$@"
