#!/usr/bin/env bash
# Broker memory per idle connection: starts the release ringmq (2 shards),
# holds N idle MQTT 3.1.1 connections open with ringmq-bench (spread over
# several loopback source addresses), and reports the broker's RSS growth
# per connection, and its file descriptors before and after.
#
#   cargo build --release --workspace && benches/idle_memory.sh [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-15000}"
BROKER=target/release/ringmq
BENCH=target/release/ringmq-bench
[[ -x $BROKER && -x $BENCH ]] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ulimit -n 20000
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

$BROKER --listen "127.0.0.1:$PORT" --shards 2 --log warn &
broker=$!
trap 'kill -9 $broker 2>/dev/null || true' EXIT
sleep 1
before=$(rss $broker)
fds_before=$(ls /proc/$broker/fd | wc -l)
$BENCH conn --host "127.0.0.1:$PORT" --clients "$N" --connect-rate 5000 --keepalive 120 \
    --duration 8s --ifaddr 127.0.0.2-127.0.0.9 > /dev/null &
bench=$!
# Measure while every connection is open and idle.
sleep $(( N / 5000 + 5 ))
with=$(rss $broker)
fds_with=$(ls /proc/$broker/fd | wc -l)
wait $bench
sleep 1
fds_after=$(ls /proc/$broker/fd | wc -l)
kill -TERM $broker
wait $broker
trap - EXIT
echo "connections=$N rss_before_kib=$before rss_with_kib=$with fds_before=$fds_before fds_with=$fds_with fds_after=$fds_after"
echo "bytes_per_idle_connection=$(( (with - before) * 1024 / N ))"
