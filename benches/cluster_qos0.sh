#!/usr/bin/env bash
# Cross-node vs same-node QoS 0 (issue 17): one nats-server, two ringmq
# nodes (SHARDS shards each); PUBS publishers on node A at a total of RATE
# msg/s (16 B payload) for SECS seconds, one subscriber to
# 'ringmq-bench/#' on node B (cross) or on node A (same). Prints the
# received rate, loss and latency of each (ringmq-bench sub, wall clock).
#
#   cargo build --release -p ringmq -p ringmq-bench
#   benches/cluster_qos0.sh [RATE] [SECS] [SHARDS] [PUBS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RATE="${1:-50000}"
SECS="${2:-15}"
SHARDS="${3:-1}"
PUBS="${4:-10}"
NATS="$(command -v nats-server || echo /usr/sbin/nats-server)"
WORK="$(mktemp -d)"
pids=()
cleanup() {
    # The nodes first, then NATS.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; sleep 0.2; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port="$(free_port)"
# JetStream: the session directory and the retained bucket, as deployed.
"$NATS" -a 127.0.0.1 -p "$nats_port" -js --store_dir "$WORK/nats" > /dev/null 2>&1 & pids+=($!)
declare -A port
for node in a b; do
    port[$node]="$(free_port)"
    printf 'shards = %s\nsys_interval_s = 0\n[[listener]]\nbind = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n[cluster]\nnode_id = "%s"\nnats = ["nats://127.0.0.1:%s"]\n' \
        "$SHARDS" "${port[$node]}" "$node" "$nats_port" > "$WORK/$node.toml"
    "$BIN/ringmq" serve --config "$WORK/$node.toml" & pids+=($!)
done
sleep 1
for mode in same cross; do
    sub_node=a
    [[ $mode == cross ]] && sub_node=b
    "$BIN/ringmq-bench" sub --host "127.0.0.1:${port[$sub_node]}" --clients 1 \
        --filter 'ringmq-bench/#' --clock realtime --duration "$((SECS + 4))s" \
        --client-id-prefix "sub-$mode" --json "$WORK/$mode-sub.json" --quiet > /dev/null 2>&1 &
    sub=$!
    sleep 1
    "$BIN/ringmq-bench" pub --host "127.0.0.1:${port[a]}" --clients "$PUBS" --qos 0 \
        --payload 16 --total-rate "$RATE" --duration "${SECS}s" --clock realtime \
        --client-id-prefix "pub-$mode" --json "$WORK/$mode-pub.json" --quiet > /dev/null 2>&1 || true
    wait "$sub" || true
    python3 - "$WORK/$mode-pub.json" "$WORK/$mode-sub.json" "$mode" "$SECS" <<'PY'
import json, sys
sent = json.load(open(sys.argv[1]))["messages"]["sent"]
m = json.load(open(sys.argv[2]))["messages"]
secs = float(sys.argv[4])
lat = m["latency_us"]
print(f"{sys.argv[3]:5} sent {sent} received {m['received']} ({m['received'] / secs:.0f}/s over {secs:.0f} s) "
      f"lost {sent - m['received']} p50 {lat['p50']} us p99 {lat['p99']} us")
PY
done
