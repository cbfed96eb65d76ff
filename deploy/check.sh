#!/usr/bin/env bash
# Validates everything under deploy/ with the tools that read it, and boots
# the broker the way a VM would. Called by .ci/run after the tests (it
# needs the ringmq and ringmq-bench binaries they build); by hand:
#   RINGMQ_BIN=target/release/ringmq RINGMQ_BENCH_BIN=target/release/ringmq-bench deploy/check.sh
#
#  1. deploy/render.py --check: cloud-init embeds the current unit, config,
#     sysctl, limits and install script.
#  2. cloud-init schema: both cloud-config documents (Debian's cloud-init).
#  3. ringmq check-config on the configuration cloud-init writes.
#  4. systemd-analyze verify on the unit (binary path substituted), and its
#     offline security exposure score.
#  5. shellcheck on the shell scripts.
#  6. deploy/tests/check_bicep.py: every template parses with pycep-parser,
#     module and .bicepparam parameters match their templates.
#  7. checkov on deploy/azure (Bicep checks, and secrets in every file
#     including the cloud-init documents): every finding fixed or skipped
#     with a reason in the template (deploy/azure/README.md lists them).
#  8. Boot: the unit's ExecStartPre and ExecStart lines, from the unit
#     cloud-init writes, with the config ringmq-configure writes from
#     cloud-init's base (no deployment parameters), under the
#     unit's SystemCallFilter (deploy/tests/seccomp_exec.py), LimitNOFILE
#     and LimitMEMLOCK, on a loopback port; mosquitto_sub receives a
#     retained and a live message; SIGTERM stops it with status 0. Then the
#     same filter without the io_uring calls must kill it (the filter is
#     really applied).
# 8d. A deployment with every parameter: ringmq-configure with a TLS
#     certificate (openssl), a password file (`ringmq passwd`), an ACL,
#     WebSocket and durability = always; booted the same way: anonymous
#     refused, mosquitto_pub/sub over TLS with a user, ws and wss upgrades
#     answered, the ACL applied, a retained message kept across a restart.
#  9. deploy/azure/rig-run.sh with two local "generators" against that
#     broker: the merged report adds up.
# Tools are installed once (apt: cloud-init, python3-seccomp, shellcheck;
# pip: checkov in a virtualenv under RINGMQ_CI_CACHE) and reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE_DIR="${RINGMQ_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringmq-ci}"
VENV="$CACHE_DIR/deploy-venv"
# checkov pins its own pycep-parser (0.5.1 with checkov 3.3.30).
CHECKOV_VERSION="3.3.30"
TARGET="${CARGO_TARGET_DIR:-target}"
RINGMQ_BIN="$(realpath "${RINGMQ_BIN:-$TARGET/debug/ringmq}")"
RINGMQ_BENCH_BIN="$(realpath "${RINGMQ_BENCH_BIN:-$TARGET/debug/ringmq-bench}")"
[[ -x "$RINGMQ_BIN" && -x "$RINGMQ_BENCH_BIN" ]] || {
    echo "deploy/check.sh: no ringmq/ringmq-bench binary at $RINGMQ_BIN / $RINGMQ_BENCH_BIN (cargo build first)" >&2
    exit 1
}

step() { printf '\n--- deploy: %s\n' "$*"; }
as_root() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
    [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

step "tools"
missing=()
command -v cloud-init >/dev/null || missing+=(cloud-init)
/usr/bin/python3 -c 'import seccomp, yaml' 2>/dev/null || missing+=(python3-seccomp python3-yaml)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v openssl >/dev/null || missing+=(openssl)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ "$("$VENV/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]]; then
    echo "installing checkov $CHECKOV_VERSION into $VENV (a few minutes, once)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
echo "cloud-init $(cloud-init --version 2>&1 | awk '{print $2}'), $(systemd-analyze --version | head -n 1)," \
    "shellcheck $(shellcheck --version | sed -n 's/^version: //p'), checkov $("$VENV/bin/checkov" --version)," \
    "pycep-parser $("$VENV/bin/pip" show pycep-parser 2>/dev/null | sed -n 's/^Version: //p')"

step "1. cloud-init documents in sync (deploy/render.py --check)"
python3 deploy/render.py --check
echo "in sync"

step "2. cloud-init schema"
for doc in deploy/azure/cloud-init.yaml deploy/azure/cloud-init-loadgen.yaml; do
    cloud-init schema --config-file "$doc"
done

# The files cloud-init writes, as cloud-init's own YAML parser reads them.
ROOT="$WORK/root"
/usr/bin/python3 - deploy/azure/cloud-init.yaml "$ROOT" <<'EOF'
import os, sys, yaml
doc, root = sys.argv[1], sys.argv[2]
for f in yaml.safe_load(open(doc))["write_files"]:
    path = root + f["path"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        out.write(f["content"])
    os.chmod(path, int(f.get("permissions", "0644"), 8))
EOF
UNIT="$ROOT/etc/systemd/system/ringmq.service"
CONFIG="$ROOT/etc/ringmq/ringmq.toml"

step "3. ringmq-configure and ringmq check-config on the configuration cloud-init writes"
# No deployment parameters: the base as it is.
RINGMQ_ENV=/dev/null RINGMQ_ETC="$ROOT/etc/ringmq" RINGMQ_STATE="$WORK/state" \
    bash "$ROOT/usr/local/sbin/ringmq-configure"
"$RINGMQ_BIN" check-config "$CONFIG"

step "4. systemd-analyze verify"
# verify wants the ExecStart binary to exist: point the unit at this build.
mkdir -p "$WORK/unit"
sed "s#/usr/local/bin/ringmq#$RINGMQ_BIN#g; s#/etc/ringmq/ringmq.toml#$CONFIG#g" "$UNIT" >"$WORK/unit/ringmq.service"
out="$(systemd-analyze verify "$WORK/unit/ringmq.service" 2>&1)" || { echo "$out"; exit 1; }
if [[ -n "$out" ]]; then
    echo "$out"
    echo "systemd-analyze verify printed warnings" >&2
    exit 1
fi
echo "verified"
systemd-analyze security --offline=yes --no-pager "$WORK/unit/ringmq.service" | tail -n 1

step "5. shellcheck"
shellcheck deploy/install-ringmq.sh deploy/configure-ringmq.sh deploy/azure/rig-run.sh deploy/check.sh
echo "clean"

step "6. Bicep parse and parameters (pycep-parser)"
"$VENV/bin/python" deploy/tests/check_bicep.py deploy/azure

step "7. checkov (Bicep, secrets)"
"$VENV/bin/checkov" -d deploy/azure --framework bicep secrets --compact --quiet --skip-download

step "8. boot the unit's ExecStart with cloud-init's config, under its seccomp filter"
free_port() { # FROM -> the first port from FROM that nothing listens on
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
# cloud-init's config, its admin listener moved from every interface to a
# free loopback port (traffic here stays on loopback).
admin_port=$(free_port $((18000 + $$ % 500)))
BOOT_CONFIG="$WORK/boot.toml"
sed "s#^listen = \"0.0.0.0:8080\"#listen = \"127.0.0.1:$admin_port\"#" "$CONFIG" >"$BOOT_CONFIG"
grep -q "127.0.0.1:$admin_port" "$BOOT_CONFIG" || { echo "no [admin] listen in $CONFIG" >&2; exit 1; }
exec_line() { # KEY -> the command of KEY= in the unit, paths substituted
    sed -n "s/^$1=//p" "$UNIT" | head -n 1 |
        sed "s#/usr/local/bin/ringmq#$RINGMQ_BIN#g; s#/etc/ringmq/ringmq.toml#$BOOT_CONFIG#g"
}
limit() { sed -n "s/^$1=//p" "$UNIT" | head -n 1 | sed 's/^infinity$/unlimited/'; }
read -r -a pre <<<"$(exec_line ExecStartPre)"
read -r -a start <<<"$(exec_line ExecStart)"
port=$(free_port $((19000 + $$ % 500)))
"${pre[@]}"
boot() { # UNIT_FILE LOG [ARGS]: runs ExecStart under UNIT_FILE's filter, in the background
    local unit_file=$1 log=$2
    shift 2
    local args=("$@")
    [[ ${#args[@]} -gt 0 ]] || args=(--listen "127.0.0.1:$port" --shards 2)
    (
        # The unit's limits; where this host's hard limit is lower (a
        # container without CAP_SYS_RESOURCE), as far as it allows.
        ulimit -n "$(limit LimitNOFILE)" 2>/dev/null || {
            echo "note: LimitNOFILE=$(limit LimitNOFILE) not allowed here, using $(ulimit -Hn)" >&2
            ulimit -n "$(ulimit -Hn)"
        }
        ulimit -l "$(limit LimitMEMLOCK)" 2>/dev/null || {
            echo "note: LimitMEMLOCK=$(limit LimitMEMLOCK) not allowed here, using $(ulimit -Hl)" >&2
            ulimit -l "$(ulimit -Hl)"
        }
        exec /usr/bin/python3 deploy/tests/seccomp_exec.py "$unit_file" -- "${start[@]}" "${args[@]}"
    ) >"$log" 2>&1 &
    BROKER_PID=$!
}
boot "$UNIT" "$WORK/broker.log"
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log"; exit 1; }
    sleep 0.1
done
grep '^note:' "$WORK/broker.log" || true
mosquitto_pub -h 127.0.0.1 -p "$port" -t deploy/retained -m kept -r -q 1
timeout 10 mosquitto_sub -h 127.0.0.1 -p "$port" -t 'deploy/#' -v -C 2 >"$WORK/sub.out" &
sub=$!
sleep 0.5
mosquitto_pub -h 127.0.0.1 -p "$port" -t deploy/live -m hello -q 1
wait "$sub" || { echo "mosquitto_sub failed"; cat "$WORK/broker.log"; exit 1; }
printf 'deploy/retained kept\ndeploy/live hello\n' | diff - "$WORK/sub.out"
echo "mosquitto_sub received the retained and the live message on 127.0.0.1:$port"
wait_healthz() { python3 - "$1" <<'EOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/healthz"
for _ in range(50):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read().decode()
            assert response.status == 200 and body == "ok\n", (response.status, body)
            print(f"{url}: 200 {body.strip()}")
            break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"{url} never answered 200")
EOF
}
wait_healthz "$admin_port"

step "9. rig-run.sh with two local generators, merged"
PATH="$(dirname "$RINGMQ_BENCH_BIN"):$PATH" RIG_LOCAL=1 RIG_START_DELAY=1 RIG_BENCH="$RINGMQ_BENCH_BIN" \
    deploy/azure/rig-run.sh -o "$WORK/rig" lg0,lg1 fan-out --host "127.0.0.1:$port" \
    --publishers 2 --subscribers 2 --count 100 --rate 1000 >/dev/null
python3 - "$WORK/rig" <<'EOF'
import json, sys
d = sys.argv[1]
a, b, m = (json.load(open(f"{d}/{n}.json")) for n in ("lg0", "lg1", "merged"))
for key in ("sent", "received"):
    assert m["messages"][key] == a["messages"][key] + b["messages"][key] == 2 * 2 * 100 * (1 if key == "sent" else 2), key
assert m["messages"]["latency_us"]["count"] == a["messages"]["latency_us"]["count"] + b["messages"]["latency_us"]["count"]
assert m["passed"], m["violations"]
print(f"merged: sent {m['messages']['sent']}, received {m['messages']['received']}, p99 {m['messages']['latency_us']['p99']} us")
EOF

step "8b. SIGTERM stops the broker with status 0"
kill -TERM "$BROKER_PID"
status=0
wait "$BROKER_PID" || status=$?
BROKER_PID=""
[[ $status -eq 0 ]] || { echo "exit status $status"; cat "$WORK/broker.log"; exit 1; }
echo "stopped, status 0"

step "8c. the filter without io_uring kills the broker (SIGSYS)"
sed 's/^SystemCallFilter=io_uring_setup.*$/SystemCallFilter=~@aio/' "$UNIT" >"$WORK/no-io-uring.service"
boot "$WORK/no-io-uring.service" "$WORK/broker-denied.log"
status=0
wait "$BROKER_PID" || status=$?
BROKER_PID=""
if [[ $status -ne $((128 + 31)) ]]; then
    echo "expected death by SIGSYS (159), got status $status" >&2
    cat "$WORK/broker-denied.log" >&2
    exit 1
fi
echo "killed by SIGSYS as expected"

step "8d. every deployment parameter: TLS, password file, ACL, WebSocket, durable log"
FULL="$WORK/full"
ETC="$FULL/etc/ringmq"
mkdir -p "$ETC" "$FULL/src"
cp "$ROOT/etc/ringmq/ringmq.base.toml" "$ETC/"
(
    cd "$FULL/src"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=ringmq-deploy-ca -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile san.ext -out cert.pem 2>/dev/null
    printf 's3cret\n' | "$RINGMQ_BIN" passwd passwd alice --password-stdin
    printf 'user alice\ntopic readwrite deploy/#\n' >acl
    # As a Key Vault certificate's secret (PEM): the key and the chain in
    # one file, given as both parameters.
    cat key.pem cert.pem >keyvault.pem
    {
        echo "RINGMQ_TLS_CERT_B64='$(base64 -w0 keyvault.pem)'"
        echo "RINGMQ_TLS_KEY_B64='$(base64 -w0 keyvault.pem)'"
        echo "RINGMQ_PASSWD_B64='$(base64 -w0 passwd)'"
        echo "RINGMQ_ACL_B64='$(base64 -w0 acl)'"
        echo "RINGMQ_WEBSOCKET='1'"
        echo "RINGMQ_DURABILITY='always'"
    } >install.env
)
RINGMQ_ENV="$FULL/src/install.env" RINGMQ_ETC="$ETC" RINGMQ_STATE="$FULL/state" \
    bash "$ROOT/usr/local/sbin/ringmq-configure"
p_tcp=$(free_port $((port + 1)))
p_tls=$(free_port $((p_tcp + 1)))
p_ws=$(free_port $((p_tls + 1)))
p_wss=$(free_port $((p_ws + 1)))
sed -i "s#\"0.0.0.0:1883\"#\"127.0.0.1:$p_tcp\"#; s#\"0.0.0.0:8883\"#\"127.0.0.1:$p_tls\"#;
        s#\"0.0.0.0:8083\"#\"127.0.0.1:$p_ws\"#; s#\"0.0.0.0:8084\"#\"127.0.0.1:$p_wss\"#;
        s#^listen = \"0.0.0.0:8080\"#listen = \"127.0.0.1:$admin_port\"#" "$ETC/ringmq.toml"
for key in password_file acl_file data_dir 'durability = "always"' 'allow_anonymous = false' \
    "127.0.0.1:$p_tls" "127.0.0.1:$p_ws" "127.0.0.1:$p_wss"; do
    grep -q "$key" "$ETC/ringmq.toml" || { echo "no $key in the configured ringmq.toml" >&2; exit 1; }
done
"$RINGMQ_BIN" check-config "$ETC/ringmq.toml"
read -r -a start <<<"$(sed -n 's/^ExecStart=//p' "$UNIT" | head -n 1 |
    sed "s#/usr/local/bin/ringmq#$RINGMQ_BIN#g; s#/etc/ringmq/ringmq.toml#$ETC/ringmq.toml#g")"
boot_full() { # LOG
    boot "$UNIT" "$1" --shards 2
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p_wss") 2>/dev/null && break
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$1"; exit 1; }
        sleep 0.1
    done
    wait_healthz "$admin_port" >/dev/null
}
boot_full "$WORK/full.log"
tls=(-h localhost -p "$p_tls" --cafile "$FULL/src/ca.pem")
if mosquitto_pub -h 127.0.0.1 -p "$p_tcp" -t deploy/x -m anonymous -q 1 2>/dev/null; then
    echo "an anonymous client was accepted with a password file" >&2
    exit 1
fi
echo "anonymous client refused"
mosquitto_pub "${tls[@]}" -u alice -P s3cret -t deploy/retained -m durable -r -q 1
timeout 10 mosquitto_sub "${tls[@]}" -u alice -P s3cret -t 'deploy/#' -t 'other/#' -v -C 2 \
    >"$WORK/full-sub.out" &
sub=$!
sleep 0.5
# other/ is outside alice's ACL: acknowledged (3.1.1) and dropped.
mosquitto_pub "${tls[@]}" -u alice -P s3cret -t other/x -m denied -q 1
mosquitto_pub -h 127.0.0.1 -p "$p_tcp" -u alice -P s3cret -t deploy/live -m plain -q 1
wait "$sub" || { echo "mosquitto_sub over TLS failed"; cat "$WORK/full.log"; exit 1; }
printf 'deploy/retained durable\ndeploy/live plain\n' | diff - "$WORK/full-sub.out"
echo "TLS (checked against the deployment's CA) and TCP with a password: received; other/x denied by the ACL"
python3 - "$p_ws" "$p_wss" "$FULL/src/ca.pem" <<'EOF'
import socket, ssl, sys
ws, wss, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
request = (b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
for port, secure in ((ws, False), (wss, True)):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if secure:
        sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname="localhost")
    sock.sendall(request)
    answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 101"), (port, answer)
    print(f"{'wss' if secure else 'ws'} on {port}: {answer.splitlines()[0]}")
    sock.close()
EOF
kill -TERM "$BROKER_PID"
wait "$BROKER_PID" || { echo "the broker did not stop with status 0" >&2; cat "$WORK/full.log"; exit 1; }
ls "$FULL/state/log/shard-0" "$FULL/state/log/shard-1" >/dev/null
boot_full "$WORK/full-again.log"
got="$(timeout 10 mosquitto_sub "${tls[@]}" -u alice -P s3cret -t deploy/retained -C 1)"
[[ "$got" == durable ]] || { echo "the retained message did not survive a restart: '$got'" >&2; exit 1; }
echo "the retained message survived a restart (data_dir $FULL/state/log, durability always)"
kill -TERM "$BROKER_PID"
wait "$BROKER_PID"
BROKER_PID=""
echo
echo "deploy: all checks passed"
