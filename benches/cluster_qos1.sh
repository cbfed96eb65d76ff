#!/usr/bin/env bash
# Cross-node vs same-node QoS 1 (issue 17 item 10), and a 3-node fan-out.
# One nats-server, three ringmq nodes a, b, c (SHARDS shards each). PUBS
# publishers on node a at a total of RATE msg/s (16 B payload, QoS QOS) for
# SECS seconds:
#   same   one subscriber to 'ringmq-bench/#' on node a;
#   cross  one subscriber on node b (every PUBACK waits for b's ack);
#   fanout one subscriber on each of a, b and c.
# Prints per subscriber the received rate, loss and latency (ringmq-bench,
# wall clock), and the CPU seconds of each node and of its NATS bridge
# thread (ringmq-nats) over the run, with the bridge's CPU per message.
#
#   cargo build --release -p ringmq -p ringmq-bench
#   benches/cluster_qos1.sh [RATE] [SECS] [SHARDS] [PUBS] [QOS]
set -euo pipefail
RATE="${1:-20000}"
SECS="${2:-10}"
SHARDS="${3:-1}"
PUBS="${4:-10}"
QOS="${5:-1}"
# shellcheck source=benches/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"
# CPU ticks (user + system) of a process, or of its thread named $2.
ticks() {
    python3 - "$@" <<'PY'
import os, sys
pid = sys.argv[1]
def stat(path):
    text = open(path).read()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])
if len(sys.argv) == 2:
    print(stat(f"/proc/{pid}/stat"))
else:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if open(f"/proc/{pid}/task/{tid}/comm").read().strip() == sys.argv[2]:
            total += stat(f"/proc/{pid}/task/{tid}/stat")
    print(total)
PY
}
start_nats
for node in a b c; do start_node "$node" "$SHARDS"; done
sleep 2
hz="$(getconf CLK_TCK)"
for mode in same cross fanout; do
    case $mode in
        same) subs="a" ;;
        cross) subs="b" ;;
        fanout) subs="a b c" ;;
    esac
    sub_pids=()
    for node in $subs; do
        "$BIN/ringmq-bench" sub --host "127.0.0.1:${port[$node]}" --clients 1 --qos "$QOS" \
            --filter 'ringmq-bench/#' --clock realtime --duration "$((SECS + 4))s" \
            --client-id-prefix "sub-$mode-$node" --json "$WORK/$mode-sub-$node.json" --quiet > /dev/null 2>&1 &
        sub_pids+=($!)
    done
    sleep 1.5
    declare -A before bridge_before
    for node in a b c; do
        before[$node]="$(ticks "${pid[$node]}")"
        bridge_before[$node]="$(ticks "${pid[$node]}" ringmq-nats)"
    done
    nats_before="$(ticks "$nats_pid")"
    "$BIN/ringmq-bench" pub --host "127.0.0.1:${port[a]}" --clients "$PUBS" --qos "$QOS" \
        --payload 16 --total-rate "$RATE" --duration "${SECS}s" --clock realtime \
        --client-id-prefix "pub-$mode" --json "$WORK/$mode-pub.json" --quiet > /dev/null 2>&1 || true
    for p in "${sub_pids[@]}"; do wait "$p" || true; done
    cpu=""
    for node in a b c; do
        cpu+="$node=$(( $(ticks "${pid[$node]}") - ${before[$node]} )):$(( $(ticks "${pid[$node]}" ringmq-nats) - ${bridge_before[$node]} )) "
    done
    cpu+="nats=$(( $(ticks "$nats_pid") - nats_before ))"
    python3 - "$WORK" "$mode" "$SECS" "$hz" "$cpu" $subs <<'PY'
import json, sys
work, mode, secs, hz, cpu, subs = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
pub = json.load(open(f"{work}/{mode}-pub.json"))
sent = pub["messages"]["sent"]
total = 0
for node in subs:
    m = json.load(open(f"{work}/{mode}-sub-{node}.json"))["messages"]
    lat = m["latency_us"]
    total += m["received"]
    print(f"{mode:6} sub on {node}: sent {sent} received {m['received']} ({m['received'] / secs:.0f}/s) "
          f"lost {sent - m['received']} p50 {lat['p50']} us p99 {lat['p99']} us")
parts = dict(p.split("=") for p in cpu.split())
line = []
bridge = 0
for node in "abc":
    proc, thread = (int(x) for x in parts[node].split(":"))
    bridge += thread
    line.append(f"{node} {proc / hz:.2f} s (bridge {thread / hz:.2f} s)")
line.append(f"nats-server {int(parts['nats']) / hz:.2f} s")
per = f", bridges {bridge / hz * 1e6 / max(total, 1):.1f} us CPU per message delivered" if mode != "same" else ""
print(f"{mode:6} CPU: " + ", ".join(line) + per)
PY
done
