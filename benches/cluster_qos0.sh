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
RATE="${1:-50000}"
SECS="${2:-15}"
SHARDS="${3:-1}"
PUBS="${4:-10}"
# shellcheck source=benches/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"
start_nats
for node in a b; do start_node "$node" "$SHARDS"; done
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
