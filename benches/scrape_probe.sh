#!/usr/bin/env bash
# Does a Prometheus scrape disturb message flow? p50/p99 of a p2p run
# (1,000 pairs x 10 msg/s, QoS 0, 16 B) on a 1-shard broker pinned to CPU 0,
# without and with a GET /metrics every second, alternating, ROUNDS times.
# The scraper is one long-lived Python loop pinned to CPU 1 beside
# ringmq-bench (a curl process per second costs the load generator a few ms
# of CPU and showed as latency that was not the broker's).
#
#   cargo build --release -p ringmq -p ringmq-bench
#   benches/scrape_probe.sh [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
ROUNDS="${1:-3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/scraper.py" <<'PY'
import socket, sys, time
while True:
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n")
        while s.recv(65536):
            pass
        s.close()
    except OSError:
        pass
    time.sleep(1)
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for round in $(seq "$ROUNDS"); do
    for mode in quiet scraped; do
        port="$(free_port)"; admin="$(free_port)"
        printf 'shards = 1\nsys_interval_s = 0\n[[listener]]\nbind = "127.0.0.1:%s"\n[admin]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "error"\n' \
            "$port" "$admin" > "$WORK/broker.toml"
        taskset -c 0 "$BIN/ringmq" serve --config "$WORK/broker.toml" & broker=$!
        sleep 1
        scraper=""
        if [[ $mode == scraped ]]; then
            taskset -c 1 python3 "$WORK/scraper.py" "$admin" & scraper=$!
        fi
        taskset -c 1 "$BIN/ringmq-bench" p2p --host "127.0.0.1:$port" --clients 1000 --qos 0 \
            --payload 16 --rate 10 --duration 15s --drain 3s --connect-rate 5000 \
            --json "$WORK/$mode.json" --quiet > /dev/null 2>&1 || true
        python3 - "$WORK/$mode.json" "$mode" "$round" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["messages"]
print(f"round {sys.argv[3]} {sys.argv[2]:8} p50 {m['latency_us']['p50']} us  p99 {m['latency_us']['p99']} us  lost {m['lost']}")
PY
        [[ -n $scraper ]] && kill "$scraper"
        kill "$broker"; wait "$broker" 2>/dev/null || true
    done
done
