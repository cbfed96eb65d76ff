#!/bin/bash
# Installs ringmq (role "broker") or ringmq-bench (role "loadgen") on a
# fresh Ubuntu/Debian VM. deploy/azure/cloud-init.yaml and
# cloud-init-loadgen.yaml embed this file (deploy/render.py keeps the copies
# in sync) and run it once, after they wrote the configuration, the unit,
# the sysctl file and the limits; it also works by hand:
#   sudo RINGMQ_ENV=/etc/ringmq/install.env bash install-ringmq.sh
#
# The environment file (/etc/ringmq/install.env) sets:
#   RINGMQ_ROLE            broker | loadgen
#   RINGMQ_RELEASE_URL     a release binary or .tar.gz holding it; with
#   RINGMQ_RELEASE_SHA256  its sha256, which is required and checked
#   RINGMQ_SOURCE_REPO     otherwise: build from this git repository
#   RINGMQ_SOURCE_REF      at this branch, tag or commit (rustup + cargo)
# Fails (exit 1, message on stderr: /var/log/cloud-init-output.log and the
# serial console) when io_uring is disabled, the checksum does not match,
# the configuration is refused or the broker does not listen.
set -euo pipefail

ENV_FILE="${RINGMQ_ENV:-/etc/ringmq/install.env}"
# shellcheck source=/dev/null
[[ -r "$ENV_FILE" ]] && source "$ENV_FILE"
ROLE="${RINGMQ_ROLE:-broker}"
RELEASE_URL="${RINGMQ_RELEASE_URL:-}"
RELEASE_SHA256="${RINGMQ_RELEASE_SHA256:-}"
SOURCE_REPO="${RINGMQ_SOURCE_REPO:-https://github.com/ringmq/ringmq.git}"
SOURCE_REF="${RINGMQ_SOURCE_REF:-}"

log() { printf 'ringmq-install: %s\n' "$*" >&2; }
die() {
    printf '\nringmq-install: ERROR: %s\n\n' "$*" >&2
    logger -t ringmq-install "ERROR: $*" 2>/dev/null || true
    exit 1
}

case "$ROLE" in
    broker) BINARY=ringmq ;;
    loadgen) BINARY=ringmq-bench ;;
    *) die "RINGMQ_ROLE must be broker or loadgen, not '$ROLE'" ;;
esac

# --- Kernel settings, and io_uring: refuse loudly ------------------------
sysctl --system >/dev/null || log "sysctl --system reported errors (see above)"
if [[ -r /proc/sys/kernel/io_uring_disabled ]]; then
    disabled="$(cat /proc/sys/kernel/io_uring_disabled)"
    if [[ "$disabled" != 0 ]]; then
        die "kernel.io_uring_disabled is $disabled, not 0: $BINARY needs io_uring \
(glommio has no epoll fallback). /etc/sysctl.d/90-ringmq.conf sets it to 0; \
something later overrides it (grep -r io_uring_disabled /etc/sysctl.d /usr/lib/sysctl.d)."
    fi
fi

# --- The binary ----------------------------------------------------------
install_release() {
    [[ -n "$RELEASE_SHA256" ]] ||
        die "RINGMQ_RELEASE_URL is set but RINGMQ_RELEASE_SHA256 is empty: refusing an unchecked download"
    local tmp
    tmp="$(mktemp -d)"
    log "downloading $RELEASE_URL"
    curl --proto '=https' --tlsv1.2 -fsSL --retry 5 -o "$tmp/download" "$RELEASE_URL" ||
        die "download of $RELEASE_URL failed"
    echo "$RELEASE_SHA256  $tmp/download" | sha256sum --check --strict --status ||
        die "sha256 of $RELEASE_URL is $(sha256sum "$tmp/download" | cut -d' ' -f1), expected $RELEASE_SHA256"
    local binary="$tmp/download"
    case "$RELEASE_URL" in
        *.tar.gz | *.tgz)
            mkdir "$tmp/x" && tar -xzf "$tmp/download" -C "$tmp/x"
            binary="$(find "$tmp/x" -type f -name "$BINARY" | head -n 1)"
            [[ -n "$binary" ]] || die "no $BINARY in $RELEASE_URL"
            ;;
    esac
    install -m 0755 "$binary" "/usr/local/bin/$BINARY"
    rm -rf "$tmp"
}

build_from_source() {
    log "building $BINARY from $SOURCE_REPO at $SOURCE_REF (takes a few minutes)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential git curl ca-certificates
    export RUSTUP_HOME=/opt/ringmq-build/rustup CARGO_HOME=/opt/ringmq-build/cargo
    if [[ ! -x "$CARGO_HOME/bin/cargo" ]]; then
        curl --proto '=https' --tlsv1.2 -fsSL https://sh.rustup.rs |
            sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable
    fi
    local src=/opt/ringmq-build/src
    rm -rf "$src" && mkdir -p "$src"
    git -C "$src" init -q
    git -C "$src" fetch -q --depth 1 "$SOURCE_REPO" "$SOURCE_REF"
    git -C "$src" checkout -q FETCH_HEAD
    (cd "$src" && "$CARGO_HOME/bin/cargo" build --release --locked -p "$BINARY")
    install -m 0755 "$src/target/release/$BINARY" "/usr/local/bin/$BINARY"
}

if [[ -n "$RELEASE_URL" ]]; then
    install_release
elif [[ -n "$SOURCE_REF" ]]; then
    build_from_source
else
    die "set RINGMQ_RELEASE_URL and RINGMQ_RELEASE_SHA256, or RINGMQ_SOURCE_REF, in $ENV_FILE"
fi
log "installed /usr/local/bin/$BINARY ($("/usr/local/bin/$BINARY" --version 2>/dev/null || echo '?'))"

if [[ "$ROLE" == loadgen ]]; then
    # The secondary private addresses of this VM's NIC, so that ringmq-bench
    # can open more than 55k connections to one broker address (--ifaddr).
    # Ubuntu's cloud-init usually configures them from the Azure metadata
    # service already; add any that are missing (not persistent: the rig is
    # short-lived) and list them in /etc/ringmq-bench/ifaddrs.
    mkdir -p /etc/ringmq-bench
    addrs="$(curl -fsS -H Metadata:true --noproxy '*' \
        'http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress?api-version=2021-02-01' |
        python3 -c 'import json,sys; print(" ".join(a["privateIpAddress"] for a in json.load(sys.stdin)))')" ||
        die "cannot read this VM's addresses from the Azure metadata service"
    dev="$(ip -o route get 168.63.129.16 | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
    prefix="$(ip -o -4 addr show dev "$dev" | awk '{print $4}' | head -n 1 | cut -d/ -f2)"
    for a in $addrs; do
        ip -o -4 addr show dev "$dev" | grep -q " $a/" || ip addr add "$a/$prefix" dev "$dev"
    done
    echo "$addrs" | tr ' ' ',' >/etc/ringmq-bench/ifaddrs
    log "source addresses: $(cat /etc/ringmq-bench/ifaddrs)"
    exit 0
fi

# --- The broker ----------------------------------------------------------
# The optional data disk (Bicep: dataDiskSizeGB > 0) at LUN 0 becomes
# /var/lib/ringmq, the unit's StateDirectory; ringmq-configure points
# data_dir at /var/lib/ringmq/log on it. The disk is formatted only if it
# holds no filesystem yet.
disk=/dev/disk/azure/scsi1/lun0
if [[ -e "$disk" ]] && ! grep -q ' /var/lib/ringmq ' /etc/fstab; then
    blkid "$disk" >/dev/null || mkfs.ext4 -q -L ringmq-data "$disk"
    mkdir -p /var/lib/ringmq
    echo "LABEL=ringmq-data /var/lib/ringmq ext4 defaults,nofail,noatime 0 2" >>/etc/fstab
    mount /var/lib/ringmq
fi
getent passwd ringmq >/dev/null ||
    useradd --system --no-create-home --home-dir /var/lib/ringmq --shell /usr/sbin/nologin ringmq
# /etc/ringmq/ringmq.toml from the base and the deployment's TLS
# certificate, password and ACL files, WebSocket and durability choices.
/usr/local/sbin/ringmq-configure ||
    die "ringmq-configure failed (see the line above)"
/usr/local/bin/ringmq check-config /etc/ringmq/ringmq.toml ||
    die "/etc/ringmq/ringmq.toml is refused (see the line above)"
systemctl daemon-reload
systemctl enable --now ringmq.service
port="$(sed -n 's/^bind *= *"[^"]*:\([0-9]*\)".*/\1/p' /etc/ringmq/ringmq.toml | head -n 1)"
for _ in $(seq 1 30); do
    if ss -Hltn "sport = :${port:-1883}" | grep -q .; then
        log "ringmq is listening on port ${port:-1883}"
        exit 0
    fi
    sleep 1
done
journalctl -u ringmq --no-pager -n 50 >&2 || true
die "ringmq is not listening on port ${port:-1883} after 30 s (journalctl -u ringmq)"
