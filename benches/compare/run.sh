#!/usr/bin/env bash
# The comparison of ringmq with Mosquitto and rumqttd: writes BENCHMARKS.md
# and BENCHMARKS.json at the repository root.
#
#   benches/compare/run.sh            # 3 rounds of scenarios a-p (72 minutes on the 2-CPU VM)
#   benches/compare/run.sh --quick --scenarios op --brokers ringmq,mosquitto,rumqttd --no-trie
#                                     # fan-in and fan-out with every broker held to half a
#                                     # CPU (a cgroup CPU quota; needs root)
#   benches/compare/run.sh --quick    # short runs, 1 round: a smoke test
#   benches/compare/run.sh --scenarios ag --brokers ringmq,mosquitto --no-trie
#   benches/compare/run.sh --quick --scenarios "bb'" --brokers ringmq,mosquitto,rumqttd
#   benches/compare/run.sh --quick --scenarios "nn'" --brokers ringmq,mosquitto --no-trie
#                                     # on disk (ringmq durability "always", Mosquitto
#                                     # persistence true) beside in memory
#   benches/compare/run.sh --render-only   # re-render BENCHMARKS.md from the JSON
#
# Needs Linux with io_uring, 2 CPUs or more, bash, python3, cargo and
# taskset. It installs what is missing:
#   * Mosquitto from the distribution (apt-get install -y mosquitto; its
#     system service, if any, is left alone: the benchmark uses its own ports),
#     with mosquitto_passwd for the password scenarios (l, m);
#   * openssl, which makes the certificate of the TLS scenarios (j, k);
#   * rumqttd with `cargo install rumqttd --root $CACHE/rumqttd` (no --locked:
#     its lock file no longer builds on current Rust), once; then reused;
#   * ringmq and ringmq-bench: cargo build --release, in this checkout's target/.
# CACHE is $RINGMQ_BENCH_CACHE, default ~/.cache/ringmq-bench.
# Other flags go to benches/compare/compare.py (see --help there).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${RINGMQ_BENCH_CACHE:-$HOME/.cache/ringmq-bench}"
cd "$ROOT"

say() { printf '[run.sh] %s\n' "$*" >&2; }

for arg in "$@"; do
    if [[ "$arg" == "--render-only" ]]; then
        exec python3 "$ROOT/benches/compare/compare.py" "$@"
    fi
done

for tool in python3 cargo taskset; do
    command -v "$tool" >/dev/null || { say "needs $tool"; exit 2; }
done

MISSING=()
if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
    MISSING+=(mosquitto)
fi
command -v openssl >/dev/null || MISSING+=(openssl)
if [[ ${#MISSING[@]} -gt 0 ]]; then
    say "installing ${MISSING[*]} from the distribution"
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${MISSING[@]}"
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
MOSQUITTO_PASSWD="$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)"

RUMQTTD="$CACHE/rumqttd/bin/rumqttd"
if [[ ! -x "$RUMQTTD" ]]; then
    say "installing rumqttd into $CACHE/rumqttd (once)"
    mkdir -p "$CACHE"
    cargo install rumqttd --root "$CACHE/rumqttd"
fi

say "building ringmq and ringmq-bench (release)"
cargo build --release -q -p ringmq -p ringmq-bench
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

if [[ " $* " != *" --no-trie "* ]]; then
    say "building the criterion benchmark benches/trie.rs"
    cargo bench --bench trie --no-run -q
fi

# The command as BENCHMARKS.md shows it, quoted so that it can be pasted
# back (--scenarios "b'" holds a quote).
COMMAND_LINE="benches/compare/run.sh"
if [[ $# -gt 0 ]]; then
    COMMAND_LINE+="$(printf ' %q' "$@")"
fi

exec python3 "$ROOT/benches/compare/compare.py" \
    --ringmq "$TARGET/release/ringmq" \
    --ringmq-bench "$TARGET/release/ringmq-bench" \
    --mosquitto "$MOSQUITTO" \
    --mosquitto-passwd "$MOSQUITTO_PASSWD" \
    --rumqttd "$RUMQTTD" \
    --command-line "$COMMAND_LINE" \
    "$@"
