# shellcheck shell=bash
# Shared by the cluster benchmarks (benches/cluster_*.sh), sourced after
# `set -euo pipefail`: a scratch directory removed on exit, one nats-server
# with JetStream (the session directory and the retained bucket, as
# deployed) and ringmq nodes on free loopback ports, stopped in reverse
# order (the nodes first, then NATS). Sets BIN, WORK, nats_port, nats_pid,
# and port[NODE] and pid[NODE] for each node started.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
NATS="$(command -v nats-server || echo /usr/sbin/nats-server)"
WORK="$(mktemp -d)"
pids=()
declare -A port pid
cleanup() {
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; sleep 0.2; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts the nats-server.
start_nats() {
    nats_port="$(free_port)"
    "$NATS" -a 127.0.0.1 -p "$nats_port" -js --store_dir "$WORK/nats" > /dev/null 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
}

# Starts ringmq node $1 with $2 shards (default: one per CPU) on NATS.
start_node() {
    local node="$1" shards="${2:-}"
    port[$node]="$(free_port)"
    {
        if [[ -n $shards ]]; then printf 'shards = %s\n' "$shards"; fi
        printf 'sys_interval_s = 0\n[[listener]]\nbind = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' "${port[$node]}"
        printf '[cluster]\nnode_id = "%s"\nnats = ["nats://127.0.0.1:%s"]\n' "$node" "$nats_port"
    } > "$WORK/$node.toml"
    "$BIN/ringmq" serve --config "$WORK/$node.toml" &
    pid[$node]=$!
    pids+=("${pid[$node]}")
}
