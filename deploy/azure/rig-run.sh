#!/usr/bin/env bash
# Runs one ringmq-bench scenario on every load generator of the rig at
# once and merges their JSON reports into one (rates summed, latency
# histograms merged): see deploy/azure/README.md, "Load-testing".
#
#   rig-run.sh [-o OUTDIR] HOST[,HOST...] SCENARIO [ringmq-bench ARGS...]
#
#   deploy/azure/rig-run.sh -o results azureuser@20.1.2.3,azureuser@20.1.2.4 \
#       conn --host 10.40.0.4:1883 --clients 400000 --connect-rate 20000 --duration 5m
#
# Each generator N runs `ringmq-bench SCENARIO ARGS --json ...` with its own
# --client-id-prefix (rigN-) and, for publishing scenarios, its own --topic
# (rigN/%i), so that the runs are independent and their counts add up; and
# with --ifaddr set to its private addresses (/etc/ringmq-bench/ifaddrs,
# written by cloud-init-loadgen.yaml). Every generator starts at the same
# second (clocks are NTP-synchronised on Azure). The reports land in OUTDIR
# (default rig-results-TIMESTAMP) as HOST.json and merged.json; the exit
# status is ringmq-bench merge's: 0 when every run met what its QoS promises.
#
# Environment: SSH (default "ssh -o BatchMode=yes"), SCP (default "scp -q
# -o BatchMode=yes"), RIG_START_DELAY seconds before the common start
# (default 5), RIG_IFADDRS path of the address list on the generators.
# RIG_LOCAL=1 runs every "host" on this machine instead (hosts are then just
# names; deploy/check.sh tests the script that way).
set -euo pipefail

OUT=""
if [[ "${1:-}" == "-o" ]]; then
    OUT="$2"
    shift 2
fi
if [[ $# -lt 2 ]]; then
    sed -n '2,25p' "$0" >&2
    exit 2
fi
IFS=, read -r -a HOSTS <<<"$1"
SCENARIO="$2"
shift 2
OUT="${OUT:-rig-results-$(date +%Y%m%d-%H%M%S)}"
SSH="${SSH:-ssh -o BatchMode=yes}"
SCP="${SCP:-scp -q -o BatchMode=yes}"
IFADDRS="${RIG_IFADDRS:-/etc/ringmq-bench/ifaddrs}"
BENCH="${RIG_BENCH:-ringmq-bench}"
mkdir -p "$OUT"

remote() { # HOST COMMAND
    if [[ "${RIG_LOCAL:-}" == 1 ]]; then bash -c "$2"; else $SSH "$1" "$2"; fi
}
fetch() { # HOST REMOTE_PATH LOCAL_PATH
    if [[ "${RIG_LOCAL:-}" == 1 ]]; then cp "$2" "$3"; else $SCP "$1:$2" "$3"; fi
}

run_id="rig-$$-$(date +%s)"
start=$(($(date +%s) + ${RIG_START_DELAY:-5}))
pids=()
for i in "${!HOSTS[@]}"; do
    host="${HOSTS[$i]}"
    extra=(--client-id-prefix "rig$i-" --quiet)
    case "$SCENARIO" in
        pub | fan-in | fan-out | p2p) extra+=(--topic "rig$i/%i") ;;
    esac
    cmd="$(printf '%q ' "$BENCH" "$SCENARIO" "$@" "${extra[@]}" --json "/tmp/$run_id-$i.json")"
    # --ifaddr from the generator's own address list, when it has one.
    script="set -e; ifa=''; [ -s $IFADDRS ] && ifa=\"--ifaddr \$(cat $IFADDRS)\"; \
now=\$(date +%s); [ \$now -lt $start ] && sleep \$(($start - now)); \
ulimit -n 1048576 2>/dev/null || true; $cmd \$ifa"
    log="$OUT/${host//[^A-Za-z0-9_.-]/_}.log"
    echo "rig-run: $host: $cmd" >&2
    remote "$host" "$script" >"$log" 2>&1 &
    pids+=($!)
done

status=0
for i in "${!HOSTS[@]}"; do
    code=0
    wait "${pids[$i]}" || code=$?
    if [[ $code -ne 0 ]]; then
        # 1: the run did not meet its QoS (still merged); 2 and others: no report.
        echo "rig-run: ${HOSTS[$i]} exited $code (log: $OUT)" >&2
        [[ $code -eq 1 ]] || status=2
    fi
done
reports=()
for i in "${!HOSTS[@]}"; do
    name="$OUT/${HOSTS[$i]//[^A-Za-z0-9_.-]/_}.json"
    if fetch "${HOSTS[$i]}" "/tmp/$run_id-$i.json" "$name"; then
        reports+=("$name")
        remote "${HOSTS[$i]}" "rm -f /tmp/$run_id-$i.json" || true
    else
        echo "rig-run: no report from ${HOSTS[$i]}" >&2
        status=2
    fi
done
[[ $status -eq 0 ]] || exit "$status"

if command -v "$BENCH" >/dev/null; then
    "$BENCH" merge "${reports[@]}" --json "$OUT/merged.json"
else
    # No ringmq-bench here: merge on the first generator.
    first="${HOSTS[0]}"
    for r in "${reports[@]}"; do $SCP "$r" "$first:/tmp/$run_id-merge-$(basename "$r")"; done
    set +e
    $SSH "$first" "$BENCH merge /tmp/$run_id-merge-*.json --json /tmp/$run_id-merged.json"
    code=$?
    set -e
    fetch "$first" "/tmp/$run_id-merged.json" "$OUT/merged.json"
    exit "$code"
fi
