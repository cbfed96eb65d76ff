#!/usr/bin/env python3
"""Side-by-side benchmark of ringmq, Mosquitto and rumqttd.

Runs scenarios a-n of the comparison (listed in SCENARIOS below and in
BENCHMARKS.md) against each broker in turn, over several rounds, with the broker pinned to one CPU and
ringmq-bench to another; writes BENCHMARKS.md and BENCHMARKS.json with the
medians, the ratios ringmq/peer, the losses, the machine, the versions and
the exact commands. Normally started by benches/compare/run.sh, which
installs and builds what this needs.

Only the Python standard library is used. Every process it starts is
stopped by its PID before it returns, and every wait is bounded.
"""

import argparse
import datetime
import difflib
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import retained as retained_driver  # noqa: E402  (the scenario g driver, next to this file)

BROKER_CPUS = "0"
BENCH_CPUS = "1"
ANALYSIS = HERE / "analysis.md"

# Limits every broker gets: the same outgoing QoS 1/2 window (100: rumqttd's
# own ceiling, a constant of its router), and queues large enough that
# scenario g (100,000 retained messages to one subscriber) fits.
MAX_INFLIGHT = 100
MAX_QUEUED = 200_000
# The outgoing window of scenario b: the largest each broker accepts. MQTT
# caps it at 65,535 (the Receive Maximum and packet identifiers); rumqttd
# accepts no more than 100.
LARGEST_WINDOW = {"ringmq": 65_535, "mosquitto": 65_535, "rumqttd": 100}
# The credentials of the password scenarios (l, m).
BENCH_USER, BENCH_PASSWORD = "bench", "bench-secret"


class Variant:
    """What a scenario changes in a broker's configuration: the outgoing
    window, a TLS listener (on the broker's second port) with the
    certificate of the run, a password file, persistence (ringmq's durable
    log in `data_dir` with `durability = "always"`, Mosquitto's
    `persistence true`, in a fresh directory per run). `name` tells the
    variants apart in BENCHMARKS.md."""

    def __init__(self, name="base", window=MAX_INFLIGHT, tls=False, password_file=None, durable=False):
        self.name, self.window, self.tls, self.password_file = name, window, tls, password_file
        self.durable = durable


BASE = Variant()


# ---------------------------------------------------------------- brokers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """How to start one broker configuration."""

    def __init__(self, name, label, kind, cpus, shards=1):
        self.name, self.label, self.kind, self.cpus, self.shards = name, label, kind, cpus, shards

    def config(self, port, extra_port, variant=BASE, files=None, data_dir="DATA_DIR"):
        """The configuration file's text. `files` names the certificate,
        key and password files of the run (placeholders when None);
        `data_dir` the directory of a durable variant."""
        files = files or PLACEHOLDER_FILES
        if self.kind == "mosquitto":
            text = MOSQUITTO_CONF.format(port=port, inflight=variant.window, queued=MAX_QUEUED)
            if variant.durable:
                text = text.replace("persistence false\n", MOSQUITTO_PERSISTENCE.format(dir=data_dir))
            if variant.password_file:
                text += MOSQUITTO_PASSWORDS.format(file=files[variant.password_file])
            if variant.tls:
                text += MOSQUITTO_TLS.format(port=extra_port, cert=files["cert"], key=files["key"])
            return text
        if self.kind == "rumqttd":
            if variant.tls or variant.password_file or variant.durable:
                raise ValueError("rumqttd is not configured for TLS, passwords or persistence here")
            return RUMQTTD_CONF.format(port=port, port5=extra_port, inflight=variant.window, queued=MAX_QUEUED)
        top = ""
        if variant.password_file:
            top = RINGMQ_PASSWORDS.format(file=files[variant.password_file])
        if variant.durable:
            top += RINGMQ_DURABLE.format(dir=data_dir)
        tls = RINGMQ_TLS.format(port=extra_port, cert=files["cert"], key=files["key"]) if variant.tls else ""
        return RINGMQ_CONF.format(port=port, shards=self.shards, inflight=variant.window, queued=MAX_QUEUED,
                                  top=top, tls=tls)

    def argv(self, binaries, config_path):
        if self.kind == "mosquitto":
            cmd = [binaries["mosquitto"], "-c", config_path]
        elif self.kind == "rumqttd":
            cmd = [binaries["rumqttd"], "--quiet", "--config", config_path]
        else:
            cmd = [binaries["ringmq"], "serve", "--config", config_path]
        return ["taskset", "-c", self.cpus] + cmd


MOSQUITTO_CONF = """\
# One listener for MQTT 3.1, 3.1.1 and 5.0 (mosquitto picks the version per
# connection); memory only; the same windows and queues as the others.
per_listener_settings false
listener {port} 127.0.0.1
protocol mqtt
allow_anonymous true
persistence false
max_inflight_messages {inflight}
max_queued_messages {queued}
max_queued_bytes 0
max_connections -1
max_keepalive 65535
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
log_type warning
connection_messages false
"""

# Scenarios l and m: clients with a user name are checked against the file;
# anonymous ones (the readiness probe) are let in.
MOSQUITTO_PASSWORDS = """\
password_file {file}
"""

# Scenarios j and k: a second listener, TLS with the run's certificate.
MOSQUITTO_TLS = """\
listener {port} 127.0.0.1
protocol mqtt
certfile {cert}
keyfile {key}
"""

RUMQTTD_CONF = """\
# rumqttd serves one protocol version per listener: [v4.1] is MQTT 3.1.1
# (the one the benchmark uses), [v5.1] is 5.0. No connection pacing
# (next_connection_delay_ms = 0); max_outgoing_packet_count is also the cap
# on retained messages sent per subscribe, so it is raised to the queue size.
id = 0

[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = {queued}
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = {inflight}
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port5}"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = {inflight}
"""

RINGMQ_CONF = """\
# ringmq serves 3.1, 3.1.1 and 5.0 on one listener; memory only.
shards = {shards}
{top}
[[listener]]
bind = "127.0.0.1:{port}"
listen_backlog = 4096
{tls}
[limits]
max_inflight = {inflight}
max_queued_messages = {queued}
max_queued_bytes = 1073741824

[log]
level = "warn"
"""

# Scenario n: the durable log; every QoS 1 PUBLISH is acknowledged once
# what it queued for the (persistent) subscriber is fdatasync'ed.
RINGMQ_DURABLE = """\
data_dir = "{dir}"
durability = "always"
"""

# Scenario n: Mosquitto's persistence. It keeps its state in memory and
# writes it to {dir}mosquitto.db every autosave_interval (1800 s, its
# default) and at exit: a PUBACK never waits for the disk.
MOSQUITTO_PERSISTENCE = """\
persistence true
persistence_location {dir}
"""

RINGMQ_PASSWORDS = """\
# Clients with a user name are checked against the file; anonymous ones
# (the readiness probe) are let in.
password_file = "{file}"
allow_anonymous = true
"""

RINGMQ_TLS = """\
[[listener]]
bind = "127.0.0.1:{port}"
listen_backlog = 4096
tls = {{ cert = "{cert}", key = "{key}" }}
"""

# The files of the TLS and password scenarios, as BENCHMARKS.md shows them.
PLACEHOLDER_FILES = {"cert": "server.pem", "key": "server.key", "ca": "ca.pem",
                     "argon2id": "passwd-argon2id", "pbkdf2": "passwd-mosquitto"}

BROKERS = {
    "ringmq": Broker("ringmq", "ringmq (1 shard)", "ringmq", BROKER_CPUS, 1),
    "mosquitto": Broker("mosquitto", "Mosquitto", "mosquitto", BROKER_CPUS),
    "rumqttd": Broker("rumqttd", "rumqttd", "rumqttd", BROKER_CPUS),
    "ringmq-2s1c": Broker("ringmq-2s1c", "ringmq, 2 shards on 1 CPU", "ringmq", BROKER_CPUS, 2),
    "ringmq-2s2c": Broker(
        "ringmq-2s2c", "ringmq, 2 shards on 2 CPUs (CPU 1 shared with the bench)", "ringmq",
        f"{BROKER_CPUS},{BENCH_CPUS}", 2,
    ),
}
PEERS = ["mosquitto", "rumqttd"]
SCALING = ["ringmq-2s1c", "ringmq-2s2c"]
# The scenarios the scaling variants run: the throughput ladders whose
# efficiency issue 18 asks for (rate with 2 shards / with 1).
SCALING_SCENARIOS = {"a", "b", "c"}


def raise_nofile():
    """Child setup: as many descriptors as the hard limit allows (scenario
    e needs 15,000 connections on each side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proc_status(pid, key):
    """A `kB` field of /proc/PID/status, in KiB (None if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_sched(pid):
    """(CPU seconds, seconds waiting for a CPU) of a process, summed over
    its threads from /proc/PID/task/*/schedstat (nanoseconds), or from
    /proc/PID/stat (CPU time in clock ticks, no waiting) where there is no
    schedstat; None if the process is gone. The waiting time tells a
    process that did not get the CPU it wanted (a shared machine) from one
    that did not want it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    cpu_ns = wait_ns = 0
    try:
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    on_cpu, waiting = f.read().split()[:2]
            except FileNotFoundError:
                continue  # a thread that just ended
            cpu_ns += int(on_cpu)
            wait_ns += int(waiting)
        return cpu_ns / 1e9, wait_ns / 1e9
    except (OSError, ValueError):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), None
        except OSError:
            return None


def proc_cpu_seconds(pid):
    """CPU time of a process (all its threads), in seconds."""
    sched = proc_sched(pid)
    return sched[0] if sched else None


class RunningBroker:
    """A started broker: its PID, port and log; stopped by PID."""

    def __init__(self, broker, binaries, workdir, variant=BASE, files=None, quota=None):
        self.broker = broker
        self.port, self.extra_port = free_port(), free_port()
        self.workdir = workdir
        ext = "conf" if broker.kind == "mosquitto" else "toml"
        self.config_path = str(workdir / f"{broker.name}.{ext}")
        # A durable variant starts from an empty directory of its own.
        data_dir = workdir / f"{broker.name}-data-{self.port}"
        if variant.durable:
            data_dir.mkdir()
            # Mosquitto writes it after dropping root privileges.
            data_dir.chmod(0o777)
            workdir.chmod(0o755)
        Path(self.config_path).write_text(
            broker.config(self.port, self.extra_port, variant, files, f"{data_dir}/"))
        self.argv = broker.argv(binaries, self.config_path)
        self.log_path = workdir / f"{broker.name}.log"
        self.log = open(self.log_path, "ab")
        # The broker starts inside its CPU quota's cgroup (the child joins
        # it before exec), so every thread it makes is held to it.
        self.cgroup = CpuQuota(quota, f"ringmq-compare-{self.port}") if quota else None

        def prepare():
            raise_nofile()
            if self.cgroup:
                self.cgroup.join(os.getpid())

        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            preexec_fn=prepare, start_new_session=True,
        )
        self.pid = self.proc.pid  # taskset execs the broker: same PID

    def wait_ready(self, timeout=20.0):
        """Until an MQTT 3.1.1 CONNECT gets its CONNACK."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.broker.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                sock = retained_driver.open_session("127.0.0.1", self.port, "compare-probe", 60, 2.0)
                sock.sendall(b"\xe0\x00")
                sock.close()
                time.sleep(0.2)
                return
            except (OSError, ConnectionError) as error:
                last = error
                time.sleep(0.1)
        raise RuntimeError(f"{self.broker.name} not ready on port {self.port}: {last}")

    def port_for(self, scenario):
        """The port that serves the scenario's MQTT version (rumqttd has a
        listener per version; the others serve every version on one), or
        its TLS listener."""
        if scenario.tls or (scenario.mqtt5 and self.broker.kind == "rumqttd"):
            return self.extra_port
        return self.port

    def log_tail(self, n=600):
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; by PID only."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        if self.cgroup:
            self.cgroup.remove()


class CpuQuota:
    """A cgroup that holds its processes to `share` of one CPU: cgroup v2
    `cpu.max` where the cpu controller is on the unified hierarchy, else
    v1 `cpu.cfs_quota_us` (hybrid hosts such as this project's VMs). Needs
    root; refuses with what is missing otherwise."""

    V2 = Path("/sys/fs/cgroup")
    V1 = Path("/sys/fs/cgroup/cpu")

    def __init__(self, share, name):
        quota = max(1000, round(share * QUOTA_PERIOD_US))
        try:
            if "cpu" in self._read(self.V2 / "cgroup.controllers").split():
                subtree = self.V2 / "cgroup.subtree_control"
                if "cpu" not in self._read(subtree).split():
                    subtree.write_text("+cpu")
                self.path = self.V2 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.max").write_text(f"{quota} {QUOTA_PERIOD_US}")
            elif (self.V1 / "cpu.cfs_quota_us").exists():
                self.path = self.V1 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                raise RuntimeError("no cgroup cpu controller (cgroup v2 cpu.max or v1 cpu.cfs_quota_us)")
        except OSError as error:
            raise RuntimeError(f"cannot set a CPU quota ({error}): scenarios o and p need root and "
                               "the cgroup cpu controller") from error

    @staticmethod
    def _read(path):
        try:
            return path.read_text()
        except OSError:
            return ""

    def join(self, pid):
        """Moves `pid` (with its threads) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self):
        """Removes the cgroup once its processes are gone."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class Sampler(threading.Thread):
    """Samples a PID's VmRSS and CPU time every 100 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.cpu, self.demand, self.halt = pid, [], [], [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            now = time.monotonic()
            rss = proc_status(self.pid, "VmRSS")
            sched = proc_sched(self.pid)
            if rss is not None:
                self.samples.append((now, rss))
            if sched is not None:
                cpu, wait = sched
                self.cpu.append((now, cpu))
                if wait is not None:
                    self.demand.append((now, cpu + wait))
            self.halt.wait(0.1)

    @staticmethod
    def busiest(samples, window):
        """The largest increase of a cumulative time over `window`
        seconds, in % of the window."""
        best, j = None, 0
        for i, (t, value) in enumerate(samples):
            # j: the latest sample at least `window` before sample i.
            while j + 1 < i and t - samples[j + 1][0] >= window:
                j += 1
            tj, value_j = samples[j]
            if t - tj >= window:
                pct = 100 * (value - value_j) / (t - tj)
                best = pct if best is None else max(best, pct)
        return round(best, 1) if best is not None else None

    def peak_cpu_pct(self, window=1.0):
        """The busiest `window` seconds, in % of one CPU."""
        return self.busiest(self.cpu, window)

    def peak_demand_pct(self, window=1.0):
        """The busiest `window` seconds counting the time spent waiting
        for a CPU as well as on it, in % of one CPU: 100% or more is a
        process that was never idle (it had, or wanted, a whole CPU)."""
        return self.busiest(self.demand, window) if self.demand else None

    def stop(self):
        self.halt.set()
        self.join()


# -------------------------------------------------------------- scenarios

# Offered rates of the throughput scenarios (a, b: messages per second over
# all publishers; c: deliveries per second over all subscribers). Each
# broker climbs the ladder until a step fails (or ringmq-bench cannot keep
# up); the result is the best delivered rate seen.
LADDER = [25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000]
# A step passes when at most this share is lost, this share of the offered
# rate is delivered in the steady seconds, and p99 latency stays below this.
PASS_LOSS_PCT = 0.1
PASS_DELIVERED = 0.9
PASS_P99_US = 1_000_000


class Scenario:
    def __init__(self, key, title, metric, unit, higher_is_better, target, describe, fanout=None,
                 base=None, mqtt5=False, tls=False, auth=None, window=None, kinds=None, persistent=False,
                 durable=False, quota=None):
        self.key, self.title, self.metric, self.unit = key, title, metric, unit
        self.higher_is_better, self.target, self.describe = higher_is_better, target, describe
        # Deliveries per published message, for the ladder scenarios.
        self.fanout = fanout
        # A variant runs the load of scenario `base` (its `kind`, whose
        # load and metrics it has) with MQTT 5.0 clients, over TLS, with
        # passwords or another window.
        self.kind = base or key
        self.mqtt5, self.tls = mqtt5, tls
        # Passwords: "own" (each broker's own hash: argon2id for ringmq,
        # Mosquitto's $7$) or "pbkdf2" (the same $7$ file for every broker).
        self.auth = auth
        # The broker's outgoing window: "largest" (LARGEST_WINDOW) or the
        # common MAX_INFLIGHT.
        self.window = window
        # The broker kinds the scenario runs on (None: all).
        self.kinds = kinds
        # Clients with persistent sessions (Clean Session 0), each step
        # with client ids of its own; and the broker's durable variant.
        self.persistent, self.durable = persistent, durable
        # The share of one CPU the broker may use (a cgroup CPU quota, the
        # same for every broker), for the loads where ringmq-bench on its
        # one CPU cannot offer more than a broker on a whole CPU takes.
        self.quota = quota

    @property
    def ladder(self):
        return LADDER if self.fanout else None

    def runs_on(self, broker):
        if broker.name in SCALING and self.key not in SCALING_SCENARIOS:
            return False
        return self.kinds is None or broker.kind in self.kinds

    def variant(self, broker):
        """What the scenario changes in `broker`'s configuration."""
        if self.window == "largest":
            return Variant(f"window {LARGEST_WINDOW[broker.kind]:,}", window=LARGEST_WINDOW[broker.kind])
        if self.durable:
            name = "persistence true" if broker.kind == "mosquitto" else 'durable log, durability "always"'
            return Variant(name, durable=True)
        if self.tls:
            return Variant("TLS listener", tls=True)
        if self.auth == "own":
            if broker.kind == "mosquitto":
                return Variant("password file ($7$)", password_file="pbkdf2")
            return Variant("password file (argon2id)", password_file="argon2id")
        if self.auth == "pbkdf2":
            return Variant("password file ($7$)", password_file="pbkdf2")
        return BASE

    def bench_args(self, quick, offered=None, files=None):
        """ringmq-bench arguments without --host/--json, or None (g).
        `files`: the run's CA and password files (placeholders if None)."""
        files = files or PLACEHOLDER_FILES
        step = "2s" if quick else "5s"
        args = self.base_args(quick, offered, step)
        if args is not None and self.mqtt5:
            args += ["--mqtt-version", "5"]
        if args is not None and self.tls:
            args += ["--tls", "--cafile", str(files["ca"])]
        if args is not None and self.auth:
            args += ["--username", BENCH_USER, "--password", BENCH_PASSWORD]
        if args is not None and self.persistent:
            # Sessions of one step are not resumed by the next.
            args += ["--clean-start", "false", "--client-id-prefix", f"bench-{offered:g}"]
        return args

    def base_args(self, quick, offered, step):
        k = self.kind
        if self.key == "j":
            # As many TLS handshakes at once as the broker takes.
            return ["conn", "--clients", "2000" if quick else "5000", "--connect-rate", "0",
                    "--duration", "1s", "--connect-timeout", "60s"]
        if self.auth == "own":
            # An argon2id check costs milliseconds (by design): fewer
            # clients than f, all at once.
            return ["conn", "--clients", "100" if quick else "300", "--connect-rate", "0",
                    "--duration", "1s", "--connect-timeout", "120s"]
        if self.auth == "pbkdf2":
            return ["conn", "--clients", "1000" if quick else "2000", "--connect-rate", "0",
                    "--duration", "1s", "--connect-timeout", "120s"]
        # The drain must outlast the backlog of an overloaded step (up to
        # about its own length, since the rate doubles per step), or
        # messages still queued in the broker would count as lost.
        if k in "ab":
            return ["fan-in", "--publishers", "100", "--subscribers", "1", "--qos", "0" if k == "a" else "1",
                    "--payload", "16", "--total-rate", f"{offered:g}", "--duration", step,
                    "--drain", "5s" if k == "a" else "10s", "--connect-rate", "2000",
                    "--connect-timeout", "60s"]
        if k == "c":
            return ["fan-out", "--publishers", "1", "--subscribers", "1000", "--qos", "0", "--payload", "16",
                    "--rate", f"{offered / self.fanout:g}", "--duration", step,
                    "--drain", "5s", "--connect-rate", "5000", "--connect-timeout", "60s"]
        if k == "d":
            return ["p2p", "--clients", "1000", "--qos", "0", "--payload", "16", "--rate", "10",
                    "--duration", "3s" if quick else "10s", "--drain", "5s", "--connect-rate", "5000",
                    "--connect-timeout", "60s"]
        if k == "e":
            return ["conn", "--clients", "15000", "--connect-rate", "5000",
                    "--ifaddr", "127.0.2.1-127.0.2.60", "--duration", "4s" if quick else "10s",
                    "--connect-timeout", "60s"]
        if k == "f":
            return ["conn", "--clients", "10000", "--connect-rate", "0",
                    "--ifaddr", "127.0.3.1-127.0.3.40", "--duration", "1s", "--connect-timeout", "60s"]
        return None

    def retained_args(self):
        return ["--count", "100000", "--payload", "16", "--settle", "0.5", "--idle", "10", "--timeout", "120"]

    def command_template(self, quick):
        if self.key == "g":
            return shlex.join(["taskset", "-c", BENCH_CPUS, "python3", "benches/compare/retained.py",
                               "--port", "PORT", *self.retained_args()])
        offered = LADDER[0] if self.ladder else None
        args = self.bench_args(quick, offered)
        port = "TLS_PORT" if self.tls else "PORT"
        text = shlex.join(["taskset", "-c", BENCH_CPUS, "ringmq-bench", *args, "--host", f"127.0.0.1:{port}"])
        if self.ladder:
            rate_flag = "--total-rate" if self.kind in "ab" else "--rate"
            first = f"{offered:g}" if self.kind in "ab" else f"{offered / self.fanout:g}"
            text = text.replace(f"{rate_flag} {first}", f"{rate_flag} RATE")
            if self.persistent:
                text = text.replace(f"bench-{offered:g}", "bench-RATE")
        return text


THROUGHPUT_TARGET = {"mosquitto": 2.0, "rumqttd": 1.5}
# The CPU quota of scenarios o and p, as a share of one CPU, and its
# period: short, so that the broker is throttled in slices of a few
# milliseconds rather than stopped for most of a 100 ms default period.
HALF_CPU = 0.5
QUOTA_PERIOD_US = 20_000
SCENARIOS = [
    Scenario("a", "fan-in, QoS 0, 16 B: 100 publishers -> 1 subscriber", "delivered_per_s", "msg/s",
             True, THROUGHPUT_TARGET,
             "100 publishers at RATE messages per second in all, one subscriber to `ringmq-bench/+`; "
             "RATE doubles from 25k up to 3.2M until a step fails.", fanout=1),
    Scenario("b", "fan-in, QoS 1, 16 B: 100 publishers -> 1 subscriber, largest window", "delivered_per_s",
             "msg/s", True, THROUGHPUT_TARGET,
             "As a, at QoS 1: each publisher keeps up to 20 PUBLISHes unacknowledged, the subscriber "
             "acknowledges every delivery. The broker's outgoing window to the subscriber is the largest "
             "it accepts: 65,535 for ringmq and Mosquitto (`max_inflight`, `max_inflight_messages`), 100 "
             "for rumqttd (`max_inflight_count`: its ceiling, a constant of its router).",
             fanout=1, window="largest"),
    Scenario("b'", "fan-in, QoS 1, 16 B: 100 publishers -> 1 subscriber, window 100", "delivered_per_s",
             "msg/s", True, None,
             "b with the same outgoing window of 100 for every broker (rumqttd's ceiling): kept for the "
             "record, the way b was measured before.", fanout=1, base="b"),
    Scenario("c", "fan-out, QoS 0, 16 B: 1 publisher -> 1,000 subscribers", "delivered_per_s", "msg/s",
             True, THROUGHPUT_TARGET,
             "One publisher at RATE/1000 messages per second, 1,000 subscribers to its topic; RATE "
             "(deliveries per second) climbs as in a.", fanout=1000),
    Scenario("d", "p2p, 1,000 pairs, 10 msg/s each, QoS 0: latency", "p99_us", "µs",
             False, {"mosquitto": "p99"},
             "1,000 clients in a ring, each publishing 10 msg/s on its own topic and subscribed to "
             "the next one's (1,000 publisher -> subscriber pairs, 10,000 msg/s in all); end-to-end "
             "latency from the intended send time."),
    Scenario("e", "15,000 idle connections: broker RSS per connection", "rss_per_conn_bytes", "B",
             False, {"mosquitto": "rss"},
             "15,000 connections at 5,000/s from 60 source addresses, held idle (keep alive 60 s); "
             "(median broker VmRSS over the second half of the run - VmRSS before) / connections."),
    Scenario("f", "connect rate, 10,000 clients", "connects_per_s", "conn/s", True, None,
             "10,000 clients connecting at once (no pacing) from 40 source addresses; "
             "CONNACKs per second until all are connected."),
    Scenario("g", "100,000 retained messages, one wildcard subscribe", "seconds", "s", False, None,
             "100,000 retained QoS 0 messages (16 B, topics `bench/retained/NNNNNN`, stored through "
             "one connection, confirmed by a QoS 1 PUBACK), then one subscriber to `bench/retained/#`: "
             "time from SUBSCRIBE to the last message."),
    Scenario("h", "fan-in, QoS 0, 16 B, MQTT 5.0: 100 publishers -> 1 subscriber", "delivered_per_s",
             "msg/s", True, THROUGHPUT_TARGET,
             "Scenario a with MQTT 5.0 clients (`--mqtt-version 5`; rumqttd on its [v5.1] listener).",
             fanout=1, base="a", mqtt5=True),
    Scenario("i", "p2p, 1,000 pairs, 10 msg/s each, QoS 0, MQTT 5.0: latency", "p99_us", "µs",
             False, {"mosquitto": "p99"},
             "Scenario d with MQTT 5.0 clients (`--mqtt-version 5`; rumqttd on its [v5.1] listener).",
             base="d", mqtt5=True),
    Scenario("j", "TLS handshakes, 5,000 clients at once", "connects_per_cpu_s", "conn/s", True, None,
             "5,000 clients (2,000 in quick mode) opening TLS connections at once (no pacing) to a second "
             "listener of the broker, TLS with the same ECDSA P-256 certificate for every broker (made "
             "with openssl for the run), ringmq-bench verifying it against the run's CA; TLS 1.3, X25519. "
             "Connections per second until all are connected, and per second of broker CPU (the whole run: "
             "handshakes, CONNECTs and disconnects), which is the rate of one saturated core. rumqttd "
             "is not run (its TLS listener is not set up here).", base="f", tls=True,
             kinds={"ringmq", "mosquitto"}),
    Scenario("k", "fan-in over TLS, QoS 0, 16 B: 100 publishers -> 1 subscriber", "delivered_per_s", "msg/s",
             True, None,
             "Scenario a over TLS (the listener and certificate of j).", fanout=1, base="a", tls=True,
             kinds={"ringmq", "mosquitto"}),
    Scenario("l", "connect rate with passwords, each broker's own hash", "connects_per_cpu_s", "conn/s", True,
             None,
             "300 clients (100 in quick mode) connecting at once with a user name and password, checked "
             "against a password file of one user: argon2id for ringmq (as `ringmq passwd` writes it: "
             "m=19 MiB, t=2, p=1, checked on 2 threads beside the shard, all on the broker's CPU), "
             "PBKDF2-SHA512 `$7$` for Mosquitto (as `mosquitto_passwd` writes it: 101 iterations). "
             "A wrong password is checked to be refused first. Mosquitto listens with a backlog of "
             "100 (fixed in its code), so connections beyond it wait for SYN retransmissions (1 s, "
             "3 s, ...): its wall-clock rate in j, l and m shows that more than its CPU.",
             base="f", auth="own",
             kinds={"ringmq", "mosquitto"}),
    Scenario("m", "connect rate with passwords, the same Mosquitto `$7$` file", "connects_per_cpu_s", "conn/s",
             True, None,
             "As l with 2,000 clients (1,000 in quick mode), every broker reading the file "
             "`mosquitto_passwd` wrote (ringmq reads `$7$` hashes too).",
             base="f", auth="pbkdf2", kinds={"ringmq", "mosquitto"}),
    Scenario("n", "fan-in, QoS 1, 16 B, persistent sessions, on disk: 100 publishers -> 1 subscriber",
             "delivered_per_s", "msg/s", True, None,
             "b' with persistent sessions (Clean Session 0, new client ids at every step) and the broker "
             "keeping them on disk: ringmq with `data_dir` and `durability = \"always\"` (a PUBACK is sent "
             "once the message is fdatasync'ed in the subscriber's queue, one sync per group commit), "
             "Mosquitto with `persistence true` (it writes its state every `autosave_interval`, 1,800 s "
             "by default, and at exit: its PUBACKs never wait for the disk). rumqttd keeps nothing on "
             "disk and is not run. n' is the same load in memory.",
             fanout=1, base="b", kinds={"ringmq", "mosquitto"}, persistent=True, durable=True),
    Scenario("n'", "fan-in, QoS 1, 16 B, persistent sessions, in memory: 100 publishers -> 1 subscriber",
             "delivered_per_s", "msg/s", True, None,
             "n without the disk: ringmq `durability = \"none\"` (no `data_dir`), Mosquitto "
             "`persistence false`.",
             fanout=1, base="b", kinds={"ringmq", "mosquitto"}, persistent=True),
    Scenario("o", "fan-in, QoS 0, 16 B, broker held to half a CPU: 100 publishers -> 1 subscriber",
             "delivered_per_cpu_s", "msg/s", True, None,
             f"Scenario a with the broker held to {HALF_CPU:.0%} of one CPU by a cgroup CPU quota (the same "
             "for every broker: cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` where the cpu controller is "
             f"on v1, {QUOTA_PERIOD_US // 1000} ms period), so that one CPU of ringmq-bench offers more "
             "than the broker takes. The metric is what one second of broker CPU delivers: messages "
             "delivered / the broker's CPU time over the run, at the step where that is highest (the "
             "broker spends its whole quota at every step, so that is the step that saturates it).",
             fanout=1, base="a", quota=HALF_CPU),
    Scenario("p", "fan-out, QoS 0, 16 B, broker held to half a CPU: 1 publisher -> 1,000 subscribers",
             "delivered_per_cpu_s", "msg/s", True, None,
             "Scenario c with the broker held to half a CPU, as in o: c's brokers pass the top of its "
             "ladder or leave ringmq-bench behind its schedule, which measures the bench, not them.",
             fanout=1000, base="c", quota=HALF_CPU),
]
# The durable scenario and its twin in memory: disk / memory per broker
# (issue 15's target for ringmq: at least 0.5).
DURABLE_PAIRS = [("n", "n'")]
# MQTT 5.0 variants and the 3.1.1 scenario each repeats: ringmq's 5.0 / 3.1.1
# ratio is reported for these pairs.
MQTT5_PAIRS = [("h", "a"), ("i", "d")]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}


def steady_rate(report):
    """Delivered messages per second over the steady seconds of the
    publishing window (the first and the last second left out when there
    are more than two), from ringmq-bench's per-second timeline."""
    timeline = report.get("timeline") or []
    publishing = [t for t in timeline if t.get("sent", 0) > 0]
    if len(publishing) > 2:
        publishing = publishing[1:-1]
    if not publishing:
        return report["messages"]["received_per_s"]
    return sum(t["received"] for t in publishing) / len(publishing)


def bench_metrics(scenario, report):
    """The numbers of one ringmq-bench report that the comparison uses."""
    m, c = report["messages"], report["connections"]
    out = {
        "connected": c["connected"],
        "connect_failures": sum(c["failures"].values()),
        "connection_errors": sum(c["errors"].values()),
        "violations": report.get("violations", []),
    }
    if scenario.kind in "abcd":
        expected = m["expected"] or 0
        out.update({
            "sent": m["sent"], "received": m["received"], "expected": expected, "lost": m["lost"],
            "loss_pct": round(100.0 * m["lost"] / expected, 3) if expected else 0.0,
            "duplicates": m["duplicates"],
            "sent_per_s": m["sent_per_s"], "received_per_s": m["received_per_s"],
            "delivered_per_s": round(steady_rate(report), 1),
            "p50_us": m["latency_us"]["p50"], "p99_us": m["latency_us"]["p99"],
            "p999_us": m["latency_us"]["p999"], "max_us": m["latency_us"]["max"],
        })
        if scenario.kind == "b":
            out["acked"] = m["acked"]
    if scenario.kind in "ef":
        out.update({
            "clients": c["clients"],
            "connects_per_s": c["rate_per_s"],
            "connect_p50_us": c["latency_us"]["p50"], "connect_p99_us": c["latency_us"]["p99"],
        })
    return out


def what_limits(step, scenario, window):
    """What stopped a ladder step, from the busiest second of the broker
    and of ringmq-bench: a process that was on a CPU, or waiting for one
    (a shared machine), at least 95% of that second was limited by its CPU;
    when neither was, at QoS 1 the windows and round trips were."""
    if "error" in step:
        return "error: " + step["error"][:120]

    def demand(who):
        # Recorded before the waiting time was: CPU time only.
        cpu = step.get(f"{who}_cpu_peak_pct") or step.get(f"{who}_cpu_pct") or 0
        return cpu, step.get(f"{who}_demand_peak_pct") or cpu

    (broker_cpu, broker), (bench_cpu, bench) = demand("broker"), demand("bench")
    busy = 95
    # A broker under a CPU quota is busy at 95% of its quota.
    broker_busy = busy * (scenario.quota or 1)
    cpus = f"broker {broker_cpu:.0f}% CPU, ringmq-bench {bench_cpu:.0f}%"
    if broker > broker_cpu + 5 or bench > bench_cpu + 5:
        cpus += f"; with the time waiting for a CPU {broker:.0f}% and {bench:.0f}%"
    held = f" quota of {scenario.quota:.0%}" if scenario.quota else ""
    if broker >= broker_busy and bench >= busy:
        return f"both CPUs ({cpus})"
    if broker >= broker_busy:
        return f"broker CPU{held} ({cpus})"
    if bench >= busy:
        return f"ringmq-bench CPU ({cpus})"
    if scenario.kind == "b":
        return f"neither CPU: the windows (broker's {window:,}, publishers' 20) and round trips ({cpus})"
    return f"neither CPU ({cpus})"


def holding_rss(samples, start, end):
    """Median VmRSS over the second half of [start, end]: the connections
    of scenario e are all open and idle by then."""
    mid = start + (end - start) / 2
    window = [kib for t, kib in samples if mid <= t <= end - 0.5] or [kib for _, kib in samples]
    return int(statistics.median(window)) if window else None


def measure(running, argv, timeout):
    """Runs one load process against a running broker; returns its exit
    status, output, and the broker's CPU time and RSS meanwhile."""
    before = proc_status(running.pid, "VmRSS")
    cpu0 = proc_cpu_seconds(running.pid)
    sampler = Sampler(running.pid)
    sampler.start()
    t0 = time.monotonic()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"command": shlex.join(argv)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=raise_nofile, start_new_session=True)
    # taskset execs the load process: same PID.
    load_sampler = Sampler(proc.pid)
    load_sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(10)
        out["error"] = f"timed out after {timeout} s"
    t1 = time.monotonic()
    cpu1 = proc_cpu_seconds(running.pid)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    bench_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    out["bench_cpu_pct"] = round(100 * bench_cpu / max(t1 - t0, 1e-3), 1)
    load_sampler.stop()
    out["bench_cpu_peak_pct"] = load_sampler.peak_cpu_pct()
    out["bench_demand_peak_pct"] = load_sampler.peak_demand_pct()
    time.sleep(0.3)
    after = proc_status(running.pid, "VmRSS")
    sampler.stop()
    out.update({
        "exit": proc.returncode, "wall_s": round(t1 - t0, 3),
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_peak_kib": max((kib for _, kib in sampler.samples), default=None),
        "rss_holding_kib": holding_rss(sampler.samples, t0, t1),
    })
    if cpu0 is not None and cpu1 is not None:
        out["broker_cpu_s"] = round(cpu1 - cpu0, 3)
        out["broker_cpu_pct"] = round(100 * (cpu1 - cpu0) / max(t1 - t0, 1e-3), 1)
    out["broker_cpu_peak_pct"] = sampler.peak_cpu_pct()
    out["broker_demand_peak_pct"] = sampler.peak_demand_pct()
    if running.proc.poll() is not None:
        out["error"] = f"broker exited with {running.proc.returncode}: {running.log_tail()}"
    return out, stdout, stderr


def run_bench(running, scenario, binaries, args, workdir, tag):
    """One ringmq-bench run; its metrics merged into the measure dict."""
    json_path = workdir / f"{scenario.key}-{running.broker.name}-{tag}.json"
    json_path.unlink(missing_ok=True)
    argv = ["taskset", "-c", BENCH_CPUS, binaries["ringmq-bench"], *args,
            "--host", f"127.0.0.1:{running.port_for(scenario)}", "--json", str(json_path), "--quiet"]
    out, _, stderr = measure(running, argv, timeout=180)
    if "error" not in out:
        if out["exit"] == 2 or not json_path.exists():
            out["error"] = f"ringmq-bench exit {out['exit']}: " + stderr.decode(errors="replace")[-500:]
        else:
            out.update(bench_metrics(scenario, json.loads(json_path.read_text())))
    return out


def run_ladder(running, scenario, binaries, quick, workdir, log, files, variant):
    """Climbs the offered rates; returns the steps and their summary."""
    steps = []
    for offered in scenario.ladder:
        # A failed step is run a second time: on a shared machine one bad
        # second must not end the climb.
        for attempt in (1, 2):
            args = scenario.bench_args(quick, offered, files)
            step = run_bench(running, scenario, binaries, args, workdir, f"{offered}-{attempt}")
            step["offered"], step["attempt"] = offered, attempt
            if "error" in step:
                step["passed"] = False
                steps.append(step)
                break
            step["cpu_us_per_msg"] = (round(step["broker_cpu_s"] * 1e6 / step["received"], 3)
                                      if step.get("received") and step.get("broker_cpu_s") else None)
            step["bench_limited"] = step["sent_per_s"] < 0.95 * offered / scenario.fanout
            step["passed"] = (step["loss_pct"] <= PASS_LOSS_PCT
                              and step["delivered_per_s"] >= PASS_DELIVERED * offered
                              and step["p99_us"] <= PASS_P99_US)
            steps.append(step)
            log(f"    {offered:>9,}/s: delivered {step['delivered_per_s']:>11,.0f}/s, "
                f"loss {step['loss_pct']:.2f}%, p99 {step['p99_us'] / 1000:,.1f} ms, "
                f"broker CPU {step.get('broker_cpu_pct', 0):.0f}% (peak {step.get('broker_cpu_peak_pct') or 0:.0f}%), "
                f"bench CPU {step['bench_cpu_pct']:.0f}% (peak {step.get('bench_cpu_peak_pct') or 0:.0f}%)"
                + (" (bench behind schedule)" if step["bench_limited"] else "")
                + ("" if step["passed"] else " FAILED"))
            if step["passed"] or step["bench_limited"]:
                break
        if "error" in step or not step["passed"] or step["bench_limited"]:
            break
    ok = [s for s in steps if "error" not in s]
    passed = [s for s in ok if s["passed"]]
    last = steps[-1]
    summary = {
        "steps": steps,
        "delivered_per_s": max((s["delivered_per_s"] for s in ok), default=None),
        "sustained_per_s": max((s["offered"] for s in passed), default=0),
        # The ladder ended without the broker failing: the result is a lower bound.
        "lower_bound": last.get("passed", False),
        "failed_at": None if last.get("passed", False) else last["offered"],
        # Every message lost at any step (at QoS 1 none may be lost, even
        # in overload), and those lost at the rates below the limit.
        "lost": sum(s.get("lost", 0) for s in ok),
        "lost_below_limit": sum(s.get("lost", 0) for s in ok if s["offered"] < last["offered"] or s["passed"]),
        "loss_pct_last_step": last.get("loss_pct"),
        "duplicates": sum(s.get("duplicates", 0) for s in ok),
        "connect_failures": sum(s.get("connect_failures", 0) for s in ok),
        "connection_errors": sum(s.get("connection_errors", 0) for s in ok),
    }
    if scenario.quota:
        summary["delivered_per_cpu_s"] = delivered_per_cpu_s(steps)
    if passed:
        best = passed[-1]
        summary["cpu_us_per_msg"] = best.get("cpu_us_per_msg")
        summary["broker_cpu_pct"] = best.get("broker_cpu_pct")
        summary["broker_cpu_peak_pct"] = best.get("broker_cpu_peak_pct")
        summary["p99_us_at_sustained"] = best.get("p99_us")
    # What stopped the climb, at the last step run (unless the ladder's top
    # was passed, which says nothing about a limit).
    if not (last.get("passed") and not last.get("bench_limited") and last["offered"] == scenario.ladder[-1]):
        summary["limit"] = what_limits(last, scenario, variant.window)
        summary["limit_step"] = last["offered"]
    summary["window"] = variant.window
    if "error" in last:
        summary["error"] = f"at {last['offered']:,}/s: {last['error']}"
    return summary


def delivered_per_cpu_s(steps):
    """What one second of a broker held to a CPU quota delivers: the most
    messages delivered per second of its CPU at any step of its ladder.
    Under the quota a broker spends its whole quota at every step (on this
    VM even an idle-ish broker does, in wake-ups), so the step where the
    ratio is highest is the broker at saturation: the step that overloads
    it (at most 2x its rate) counts, since its deliveries are what it
    managed; the ladder's doubling would otherwise halve the precision."""
    rates = [s["received"] / s["broker_cpu_s"] for s in steps
             if "error" not in s and s.get("received") and s.get("broker_cpu_s")]
    return round(max(rates), 1) if rates else None


def run_once(scenario, broker, binaries, quick, workdir, log, files=None):
    """One round of one scenario against one broker: start a fresh broker,
    run the load, measure, stop the broker. Returns a result dict (with
    "error" when the run could not be made). `files`: the certificates and
    password files of the run (make_files)."""
    result = {"broker": broker.name}
    variant = scenario.variant(broker)
    try:
        running = RunningBroker(broker, binaries, workdir, variant, files, scenario.quota)
    except RuntimeError as error:
        return {**result, "error": str(error)}
    try:
        running.wait_ready()
        if scenario.auth:
            # The load is only a measure if the broker checks the passwords.
            if not connect_refused(running.port, BENCH_USER, BENCH_PASSWORD + "-wrong"):
                raise RuntimeError(f"{broker.name} accepted a wrong password: the password file is not in force")
        if scenario.ladder:
            result.update(run_ladder(running, scenario, binaries, quick, workdir, log, files, variant))
        elif scenario.key != "g":
            out = run_bench(running, scenario, binaries, scenario.bench_args(quick, files=files), workdir, "run")
            result.update(out)
            if scenario.kind == "f" and out.get("broker_cpu_s") and out.get("connected"):
                result["connects_per_cpu_s"] = round(out["connected"] / out["broker_cpu_s"], 1)
            if scenario.key == "e" and out.get("rss_before_kib") and out.get("rss_holding_kib"):
                connected = max(1, out.get("clients", 0) - out.get("connect_failures", 0))
                result["rss_per_conn_bytes"] = round(
                    (out["rss_holding_kib"] - out["rss_before_kib"]) * 1024 / connected, 1)
        else:
            argv = ["taskset", "-c", BENCH_CPUS, sys.executable, str(HERE / "retained.py"),
                    "--port", str(running.port), *scenario.retained_args()]
            out, stdout, stderr = measure(running, argv, timeout=150)
            result.update(out)
            if "error" not in out:
                try:
                    driver = json.loads(stdout.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    driver = {"error": stderr.decode(errors="replace")[-500:]}
                if "error" in driver:
                    result["error"] = "retained.py: " + driver["error"]
                else:
                    result.update(driver)
    except RuntimeError as error:
        result["error"] = str(error)
    finally:
        running.stop()
    result["broker_log"] = running.log_tail(300)
    return result


def connect_refused(port, user, password, timeout=10.0):
    """Whether a 3.1.1 CONNECT with these credentials gets a refusing
    CONNACK (or the connection closed) from the broker on `port`."""
    def utf8(text):
        data = text.encode()
        return len(data).to_bytes(2, "big") + data
    # Protocol "MQTT" level 4; flags: user name, password, Clean Session.
    body = utf8("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += utf8("compare-wrong-password") + utf8(user) + utf8(password)
    packet = bytes([0x10]) + retained_driver.varint(len(body)) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(packet)
            connack = retained_driver.recv_exact(sock, 4, time.monotonic() + timeout)
            return connack[0] != 0x20 or connack[3] != 0
    except (OSError, ConnectionError):
        return True


def make_files(workdir, binaries, log):
    """The files of the TLS and password scenarios, made once per run: a CA
    and a server certificate for 127.0.0.1 signed by it (ECDSA P-256, with
    openssl), an argon2id password file (`ringmq passwd`) and a `$7$` one
    (`mosquitto_passwd`), each for BENCH_USER. Returns their paths."""
    d = workdir / "files"
    d.mkdir(exist_ok=True)
    files = {k: str(d / v) for k, v in PLACEHOLDER_FILES.items()}
    ca_key, csr, ext = d / "ca.key", d / "server.csr", d / "server.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", files["ca"], "-days", "2",
         "-subj", "/CN=ringmq-bench compare CA"],
        ["openssl", "req", *ec, "-keyout", files["key"], "-out", str(csr), "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", files["ca"], "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", files["cert"], "-days", "2", "-extfile", str(ext)],
        [binaries["mosquitto_passwd"], "-c", "-b", files["pbkdf2"], BENCH_USER, BENCH_PASSWORD],
    ]
    for argv in commands:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    subprocess.run([binaries["ringmq"], "passwd", files["argon2id"], BENCH_USER, "--password-stdin"],
                   input=(BENCH_PASSWORD + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)
    # Mosquitto reads its files after dropping root privileges.
    for path in d.iterdir():
        path.chmod(0o644)
    d.chmod(0o755)
    workdir.chmod(0o755)
    log(f"made the CA, the server certificate and the password files in {d}")
    return files


# ----------------------------------------------------------------- trie


def run_trie(quick, log):
    """The criterion benchmark of the trie and the interest table with
    1M filters (benches/trie.rs); medians from target/criterion."""
    argv = ["taskset", "-c", BROKER_CPUS, "cargo", "bench", "--bench", "trie", "--", "--noplot"]
    if quick:
        argv.append("--quick")
    log(f"$ {shlex.join(argv)}")
    started = time.time()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
    if proc.returncode != 0:
        return {"command": shlex.join(argv), "error": proc.stdout.decode(errors="replace")[-800:]}
    results = []
    criterion = ROOT / "target" / "criterion"
    for bench_json in sorted(criterion.glob("**/new/benchmark.json")):
        if bench_json.stat().st_mtime < started:
            continue  # an earlier run, or another benchmark file
        info = json.loads(bench_json.read_text())
        estimates = json.loads((bench_json.parent / "estimates.json").read_text())
        median_ns = estimates["median"]["point_estimate"]
        throughput = info.get("throughput") or {}
        elements = throughput.get("Elements")
        results.append({
            "group": info["group_id"], "function": info["function_id"] or info.get("value_str") or "",
            "median_ns": round(median_ns, 1), "elements": elements,
            "ns_per_element": round(median_ns / elements, 2) if elements else None,
            "elements_per_s": round(elements * 1e9 / median_ns, 1) if elements else None,
        })
    return {"command": shlex.join(argv), "results": results}


# ------------------------------------------------------------ reporting


def median_of(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def summarise(rounds):
    ok = [r for r in rounds if "error" not in r]
    numeric = {}
    for r in ok:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                numeric.setdefault(k, []).append(v)
    median = {k: median_of(v) for k, v in numeric.items()}
    summary = {"median": median, "ok_rounds": len(ok), "errors": [r["error"] for r in rounds if "error" in r]}
    if any("lower_bound" in r for r in ok):
        summary["lower_bound"] = sum(1 for r in ok if r.get("lower_bound")) * 2 > len(ok)
    return summary


def evaluate_targets(scenario, summaries):
    ring = summaries.get("ringmq", {}).get("median", {}).get(scenario.metric)
    notes = {}
    if not scenario.target or ring is None:
        return notes
    for peer, goal in scenario.target.items():
        value = summaries.get(peer, {}).get("median", {}).get(scenario.metric)
        if value is None:
            notes[peer] = {"goal": f"vs {peer}", "met": None}
        elif goal == "p99":
            notes[peer] = {"goal": f"p99 <= {peer}'s", "met": ring <= value}
        elif goal == "rss":
            notes[peer] = {"goal": f"<= {peer}'s + 1024 B", "met": ring <= value + 1024}
        else:
            ratio = ring / value if value else None
            notes[peer] = {"goal": f">= {goal}x {peer}", "met": ratio is not None and ratio >= goal}
    return notes


def fmt(value, unit):
    if value is None:
        return "–"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "µs" and value < 100:
        return f"{value:.2f} µs"
    if unit == "B":
        return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value:.0f} B"
    return f"{value:,.0f} {unit}"


def ratio_text(ring, peer):
    if ring is None or not peer:
        return "–"
    return f"{ring / peer:.2f}"


def loss_text(scenario, summary):
    """What a broker lost or failed, in the medians of its rounds."""
    med = summary.get("median", {})
    parts = []
    lost = med.get("lost")
    if scenario.ladder:
        if scenario.kind == "b" and lost:
            parts.append(f"{lost:,.0f} QoS 1 messages lost")
        elif med.get("lost_below_limit"):
            parts.append(f"{med['lost_below_limit']:,.0f} lost below the limit")
        if med.get("failed_at") and med.get("loss_pct_last_step"):
            parts.append(f"{med['loss_pct_last_step']:.1f}% lost in overload at {med['failed_at']:,.0f}/s")
    elif scenario.kind == "d" and lost:
        parts.append(f"{lost:,.0f} lost ({med.get('loss_pct', 0):.2f}%)")
    elif scenario.key == "g" and lost:
        parts.append(f"{lost:,.0f} of 100,000 not received")
    if med.get("duplicates"):
        parts.append(f"{med['duplicates']:,.0f} duplicates")
    if med.get("connect_failures"):
        parts.append(f"{med['connect_failures']:,.0f} never connected")
    if med.get("connection_errors"):
        parts.append(f"{med['connection_errors']:,.0f} dropped connections")
    if summary.get("errors"):
        parts.append(f"{len(summary['errors'])} failed round(s)")
    return ", ".join(parts) or "none"


# Rows of the results table: (metric key, label, unit, lower is better).
ROWS = {
    "a": [("delivered_per_s", "delivered, best step", "msg/s", False),
          ("sustained_per_s", "highest passing rate", "msg/s", False),
          ("cpu_us_per_msg", "broker CPU per message at that rate", "µs", True)],
    "d": [("p50_us", "latency p50", "µs", True), ("p99_us", "latency p99", "µs", True),
          ("p999_us", "latency p99.9", "µs", True)],
    "e": [("rss_per_conn_bytes", "RSS per connection", "B", True),
          ("rss_before_kib", "RSS before", "KiB", True)],
    "f": [("connects_per_s", "connections per second", "conn/s", False),
          ("connect_p99_us", "connect latency p99", "µs", True)],
    "g": [("seconds", "time to receive all", "s", True), ("publish_s", "time to store all", "s", True)],
}
ROWS["b"] = ROWS["b'"] = ROWS["c"] = ROWS["h"] = ROWS["k"] = ROWS["n"] = ROWS["n'"] = ROWS["a"]
ROWS["i"] = ROWS["d"]
ROWS["o"] = ROWS["p"] = [("delivered_per_cpu_s", "delivered per second of broker CPU", "msg/s", False),
                         *ROWS["a"]]
ROWS["j"] = [("connects_per_s", "TLS connections per second", "conn/s", False),
             ("connects_per_cpu_s", "per second of broker CPU (one core)", "conn/s", False),
             ("connect_p99_us", "connect latency p99", "µs", True)]
ROWS["l"] = ROWS["m"] = [("connects_per_s", "connections per second", "conn/s", False),
                         ("connects_per_cpu_s", "per second of broker CPU", "conn/s", False),
                         ("connect_p99_us", "connect latency p99", "µs", True)]


def scenario_text(scenario, entry):
    """What BENCHMARKS.md says a scenario is: as it was when measured
    (recorded since b changed its window), else as it is now."""
    if "describe" in entry:
        return entry["describe"]
    if scenario.window == "largest":
        return ("As a, at QoS 1: each publisher keeps up to 20 PUBLISHes unacknowledged, the "
                "subscriber acknowledges every delivery. Measured before b used the largest window "
                "each broker accepts: an outgoing window of 100 for every broker (now b').")
    return scenario.describe


def render(data):
    lines = []
    w = lines.append
    meta = data["meta"]
    w("# Benchmarks: ringmq beside Mosquitto and rumqttd")
    w("")
    w(f"<!-- Generated by `benches/compare/run.sh` ({meta['mode']} mode) from BENCHMARKS.json; "
      "the Analysis section is benches/compare/analysis.md. Do not edit by hand. -->")
    w("")
    w(f"Measured {meta['date']} on {meta['machine']['cpu']}, {meta['machine']['cpus']} CPUs, "
      f"{meta['machine']['memory_gib']} GiB, Linux {meta['machine']['kernel']} "
      f"({meta['machine']['os']}); load average {meta['load_before']} before, {meta['load_after']} after. "
      f"Every broker is pinned to CPU {BROKER_CPUS} (`taskset -c {BROKER_CPUS}`) and ringmq-bench to "
      f"CPU {BENCH_CPUS}; ringmq runs with 1 shard. Clients speak MQTT 3.1.1, except in the 5.0 "
      f"variants (h, i) of a and d. {meta['rounds']} round(s), brokers taking turns (the order rotates "
      "every round), a fresh broker process for every run; the tables give the median of the rounds.")
    w("")
    if meta["mode"] == "quick":
        w("**Quick mode: short runs and one round. A smoke test of the script, not a measurement.**")
        w("")
    w("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    w("")
    w("Reproduce (installs Mosquitto from Debian and rumqttd into a cache, builds ringmq; "
      "about an hour and a quarter on 2 CPUs):")
    w("")
    w("```sh")
    w(meta["command"])
    w("```")
    w("")
    w("## Results")
    w("")
    w("Ratios are ringmq / peer: above 1 is better for ringmq on rates, below 1 is better on "
      "latency, memory and time.")
    w("")
    w("| scenario | metric | ringmq | Mosquitto | rumqttd | ringmq/Mosquitto | ringmq/rumqttd | target | losses (ringmq; Mosquitto; rumqttd) |")
    w("| --- | --- | --: | --: | --: | --: | --: | --- | --- |")
    for s in SCENARIOS:
        sc = data["scenarios"].get(s.key)
        if not sc:
            continue
        summ = sc["summary"]
        rows = ROWS[s.key]
        for i, (metric, label, unit, _) in enumerate(rows):
            v = {b: summ.get(b, {}).get("median", {}).get(metric) for b in ["ringmq", *PEERS]}
            cells = {b: fmt(v[b], unit) for b in v}
            if metric == "delivered_per_s":
                for b in v:
                    if summ.get(b, {}).get("lower_bound") and v[b] is not None:
                        cells[b] = "≥ " + cells[b]
            targets = sc.get("targets", {})
            target = ""
            if metric == s.metric and targets:
                target = "; ".join(
                    f"{t['goal']}: " + ("met" if t["met"] else "missed" if t["met"] is not None else "?")
                    for t in targets.values())
            losses = "; ".join(loss_text(s, summ.get(b, {})) for b in ["ringmq", *PEERS]) if i == 0 else ""
            title = f"{s.key}. {sc.get('title', s.title)}" if i == 0 else ""
            w(f"| {title} | {label} | {cells['ringmq']} | {cells['mosquitto']} | {cells['rumqttd']} | "
              f"{ratio_text(v['ringmq'], v['mosquitto'])} | {ratio_text(v['ringmq'], v['rumqttd'])} | "
              f"{target} | {losses} |")
    w("")
    w("A ladder step passes when at most {:g}% is lost, at least {:.0f}% of the offered rate is "
      "delivered in its steady seconds and p99 latency stays under {:,} ms; a broker climbs until a "
      "step fails. ≥: the broker passed the last step run (the top of the ladder, or the step where "
      "ringmq-bench fell behind its schedule), so its limit lies higher.".format(
          PASS_LOSS_PCT, PASS_DELIVERED * 100, PASS_P99_US // 1000))
    w("")
    w("Broker CPU use, % of one CPU, over the whole ringmq-bench run (connecting, publishing, "
      "draining) and in its busiest second; for a-c at the highest passing step. A broker far "
      "from 100% in its busiest second was not the bottleneck:")
    w("")
    w("| scenario | ringmq | Mosquitto | rumqttd |")
    w("| --- | --: | --: | --: |")
    for s in SCENARIOS:
        sc = data["scenarios"].get(s.key)
        if not sc:
            continue
        cells = []
        for b in ["ringmq", *PEERS]:
            med = sc["summary"].get(b, {}).get("median", {})
            pct, peak = med.get("broker_cpu_pct"), med.get("broker_cpu_peak_pct")
            cells.append("–" if pct is None else f"{pct:.0f}% (peak {peak or 0:.0f}%)")
        w(f"| {s.key} | " + " | ".join(cells) + " |")
    w("")
    ladder_keys = [s.key for s in SCENARIOS if s.ladder and s.key in data["scenarios"]]
    if ladder_keys:
        w("Every ladder step (medians over the rounds that ran it): delivered msg/s (loss, broker CPU "
          "in its busiest second / ringmq-bench CPU over the run).")
        w("")
        w("| scenario | broker | " + " | ".join(f"{r // 1000}k/s" for r in LADDER) + " |")
        w("| --- | --- |" + " --: |" * len(LADDER))
        for k in ladder_keys:
            sc = data["scenarios"][k]
            for b, rounds in sc["rounds"].items():
                cells = []
                for rate in LADDER:
                    # The last attempt of the step in each round.
                    steps = [[st for st in r.get("steps", []) if st.get("offered") == rate] for r in rounds]
                    steps = [ss[-1] for ss in steps if ss and "error" not in ss[-1]]
                    if not steps:
                        cells.append("")
                        continue
                    delivered = median_of([st["delivered_per_s"] for st in steps])
                    loss = median_of([st["loss_pct"] for st in steps])
                    cpu = median_of([st.get("broker_cpu_peak_pct") for st in steps])
                    bench_cpu = median_of([st.get("bench_cpu_pct") for st in steps])
                    mark = "" if all(st["passed"] for st in steps) else " ✗"
                    mark += " ⏱" if any(st.get("bench_limited") for st in steps) else ""
                    cells.append(f"{delivered / 1000:,.0f}k ({loss:.1f}%, {cpu or 0:.0f}%/{bench_cpu or 0:.0f}%){mark}")
                w(f"| {k} | {b} | " + " | ".join(cells) + " |")
        w("")
        w("✗: the step failed in at least one round (after one retry). ⏱: ringmq-bench published "
          "less than 95% of the offered rate: its own CPU, or (at QoS 1) the broker acknowledging "
          "too slowly for the publishers' window of 20; the next table tells which.")
        w("")
        w("What stopped each climb, at the last step run (the round shown is the median's): the "
          "process, broker or ringmq-bench, that was on a CPU or waiting for one (on a shared "
          "machine) for 95% or more of its busiest second, or neither, when the limit is elsewhere "
          "(at QoS 1: the windows and round trips). CPU use and waiting come from "
          "/proc/PID/task/*/schedstat.")
        w("")
        w("| scenario | broker | last step | delivered | loss | what limits |")
        w("| --- | --- | --: | --: | --: | --- |")
        for k in ladder_keys:
            for b, rounds in data["scenarios"][k]["rounds"].items():
                ok = sorted((r for r in rounds if r.get("steps")), key=lambda r: r.get("delivered_per_s") or 0)
                if not ok:
                    continue
                r = ok[len(ok) // 2]
                last = r["steps"][-1]
                if "limit" in r:
                    limit = r["limit"]
                elif last.get("passed") and not last.get("bench_limited") and last["offered"] == LADDER[-1]:
                    limit = "nothing: the top of the ladder passed"
                else:
                    # A run recorded before the script named the limit.
                    limit = what_limits(last, SCENARIO_BY_KEY[k], r.get("window", MAX_INFLIGHT))
                delivered = last.get("delivered_per_s")
                w(f"| {k} | {b} | {last['offered']:,}/s | "
                  f"{'–' if delivered is None else f'{delivered:,.0f}/s'} | "
                  f"{last.get('loss_pct', 0) or 0:.1f}% | {limit} |")
        w("")
    pairs = [(v5, v3) for v5, v3 in MQTT5_PAIRS if v5 in data["scenarios"] and v3 in data["scenarios"]]
    if pairs:
        w("## MQTT 5.0 beside 3.1.1")
        w("")
        w("The same load with 5.0 clients (h = a, i = d), per broker: 5.0 / 3.1.1 (target for "
          "ringmq: at least 0.95 on rates, at most 1.05 on latency).")
        w("")
        w("| scenarios | metric | ringmq | Mosquitto | rumqttd |")
        w("| --- | --- | --: | --: | --: |")
        for v5, v3 in pairs:
            metric, label, _, _ = ROWS[v3][0]
            cells = []
            for b in ["ringmq", *PEERS]:
                new = data["scenarios"][v5]["summary"].get(b, {}).get("median", {}).get(metric)
                old = data["scenarios"][v3]["summary"].get(b, {}).get("median", {}).get(metric)
                cells.append(ratio_text(new, old))
            w(f"| {v5} / {v3} | {label} | " + " | ".join(cells) + " |")
        w("")
    durable = [(d, m) for d, m in DURABLE_PAIRS if d in data["scenarios"] and m in data["scenarios"]]
    if durable:
        w("## On disk beside in memory")
        w("")
        w("The same load with the broker's persistence on and off (n = n' on disk), per broker: "
          "disk / memory (target for ringmq: at least 0.5 on the delivered rate).")
        w("")
        w("| scenarios | metric | ringmq | Mosquitto |")
        w("| --- | --- | --: | --: |")
        for d, m in durable:
            for metric, label, _, _ in ROWS[m]:
                cells = []
                for b in ["ringmq", "mosquitto"]:
                    new = data["scenarios"][d]["summary"].get(b, {}).get("median", {}).get(metric)
                    old = data["scenarios"][m]["summary"].get(b, {}).get("median", {}).get(metric)
                    cells.append(ratio_text(new, old))
                w(f"| {d} / {m} | {label} | " + " | ".join(cells) + " |")
        w("")
    w("## Scenarios")
    w("")
    for s in SCENARIOS:
        sc = data["scenarios"].get(s.key)
        if not sc:
            continue
        w(f"* **{s.key}. {sc.get('title', s.title)}.** {scenario_text(s, sc)}  ")
        w(f"  `{sc['command_template']}`")
    w("")
    w("## Scaling: ringmq with 2 shards")
    w("")
    w("This machine has 2 CPUs, one of them taken by the load generator, so a true 2-core run is "
      "not possible. Two runs stand in: 2 shards sharing CPU 0 (what the sharding costs: "
      "hand-offs of connections accepted on the wrong shard and cross-shard message batches, "
      "without a second core to gain from), and 2 shards on CPUs 0 and 1 (the second shard "
      "competes with ringmq-bench for CPU 1).")
    w("")
    scaled = [b for b in SCALING if any(b in sc["summary"] for sc in data["scenarios"].values())]
    if scaled:
        header = ["ringmq, 1 shard"] + [BROKERS[b].label for b in scaled]
        w("| scenario | metric | " + " | ".join(header) + " | " +
          " | ".join(f"{BROKERS[b].name} / 1 shard" for b in scaled) + " |")
        w("| --- | --- |" + " --: |" * (len(header) + len(scaled)))
        for s in SCENARIOS:
            sc = data["scenarios"].get(s.key)
            if not sc or not any(b in sc["summary"] for b in scaled):
                continue
            one = sc["summary"].get("ringmq", {}).get("median", {}).get(s.metric)
            cells = [fmt(one, s.unit)]
            ratios = []
            for b in scaled:
                v = sc["summary"].get(b, {}).get("median", {}).get(s.metric)
                cells.append(fmt(v, s.unit))
                ratios.append(ratio_text(v, one) if v is not None else "–")
            w(f"| {s.key} | {s.metric.replace('_', ' ')} | " + " | ".join(cells + ratios) + " |")
        w("")
    trie = data.get("trie")
    if trie:
        w("## Micro-benchmark: subscription trie and interest table (criterion)")
        w("")
        w(f"`{trie['command']}` (benches/trie.rs), on CPU {BROKER_CPUS}; medians.")
        w("")
        if "error" in trie:
            w(f"Failed: `{trie['error'][-300:]}`")
        else:
            w("| group | benchmark | median per iteration | per element | elements/s |")
            w("| --- | --- | --: | --: | --: |")
            for r in trie["results"]:
                per = f"{r['ns_per_element']:,.1f} ns" if r["ns_per_element"] is not None else "–"
                rate = f"{r['elements_per_s']:,.0f}" if r["elements_per_s"] is not None else "–"
                w(f"| {r['group']} | {r['function']} | {r['median_ns'] / 1e6:,.3f} ms | {per} | {rate} |")
        w("")
    w("## Analysis")
    w("")
    analysis = data.get("analysis", "").strip()
    w(analysis if analysis else "_(benches/compare/analysis.md is empty)_")
    w("")
    w("## Losses, failures and errors by round")
    w("")
    any_issue = False
    for s in SCENARIOS:
        sc = data["scenarios"].get(s.key)
        if not sc:
            continue
        for b, rounds in sc["rounds"].items():
            for i, r in enumerate(rounds, 1):
                issues = []
                if "error" in r:
                    issues.append(f"error: {r['error'][:300]}")
                if r.get("lost"):
                    issues.append(f"lost {r['lost']:,}" + (f" of {r['expected']:,}" if r.get("expected") else ""))
                if r.get("connect_failures"):
                    issues.append(f"{r['connect_failures']:,} never connected")
                if r.get("connection_errors"):
                    issues.append(f"{r['connection_errors']:,} connections dropped")
                if r.get("duplicates"):
                    issues.append(f"{r['duplicates']:,} duplicates")
                if issues:
                    any_issue = True
                    w(f"* {s.key}, {b}, round {i}: " + "; ".join(issues).replace("\n", " "))
    if not any_issue:
        w("None.")
    w("")
    w("## Broker configurations")
    w("")
    w("Written by the script for each run (the port varies); the broker is started as shown. "
      "Scenarios that change the configuration list their changes after it (lines removed and "
      "added). Certificates and password files are made for each run (`make_files` in "
      "benches/compare/compare.py).")
    w("")
    for name, b in data["brokers"].items():
        w(f"### {b['label']}")
        w("")
        w(f"`{b['command']}`")
        w("")
        w("```")
        w(b["config"].rstrip())
        w("```")
        w("")
        for vname, v in b.get("variants", {}).items():
            keys = ", ".join(re.findall(r"[a-z]'?", v["scenarios"]))
            w(f"Scenario(s) {keys}, {vname}:")
            w("")
            w("```diff")
            diff = difflib.unified_diff(b["config"].splitlines(), v["config"].splitlines(), lineterm="", n=0)
            w("\n".join(line for line in diff if not line.startswith(("---", "+++", "@@"))))
            w("```")
            w("")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------- main


def sh(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=30).stdout.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(total_kib / 2**20, 1),
            "kernel": platform.release(), "os": os_name}


def versions(binaries):
    mosq = sh([binaries["mosquitto"], "-h"]).splitlines()
    mosq = next((l.split("version", 1)[1].strip() for l in mosq if "version" in l), "?")
    commit = sh(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "ringmq": f"{sh([binaries['ringmq'], '--version']).split()[-1]} ({commit})",
        "ringmq-bench": sh([binaries["ringmq-bench"], "--version"]).split()[-1],
        "Mosquitto": mosq,
        "rumqttd": sh([binaries["rumqttd"], "--version"]).split()[-1],
        "rustc": sh(["rustc", "--version"]).split()[1],
        "Python": platform.python_version(),
        "OpenSSL": (sh(["openssl", "version"]).split() + ["?", "?"])[1],
    }


def load_average():
    return open("/proc/loadavg").read().split()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 1 round, quick criterion")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument("--scenarios", default="".join(SCENARIO_BY_KEY),
                        help="subset of " + "".join(SCENARIO_BY_KEY) + " (b' is one key)")
    parser.add_argument("--brokers", default=",".join(["ringmq", *PEERS, *SCALING]),
                        help="comma-separated subset of " + ",".join(BROKERS))
    parser.add_argument("--no-trie", action="store_true", help="skip the criterion trie benchmark")
    parser.add_argument("--out", default=str(ROOT), help="directory of BENCHMARKS.md/.json")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render BENCHMARKS.md from BENCHMARKS.json (e.g. after editing analysis.md)")
    parser.add_argument("--ringmq", required=False)
    parser.add_argument("--ringmq-bench", dest="ringmq_bench")
    parser.add_argument("--mosquitto", default="mosquitto")
    parser.add_argument("--mosquitto-passwd", dest="mosquitto_passwd", default="mosquitto_passwd")
    parser.add_argument("--rumqttd")
    parser.add_argument("--command-line", default="benches/compare/run.sh",
                        help="the command recorded in BENCHMARKS.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "BENCHMARKS.md", out / "BENCHMARKS.json"

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.render_only:
        data = json.loads(json_path.read_text())
        # The quota scenarios' rate per CPU-second is derived again from
        # their steps (the measurement), so that its definition applies
        # to runs measured before it changed.
        for key, entry in data["scenarios"].items():
            scenario = SCENARIO_BY_KEY.get(key)
            if scenario is None or not scenario.quota:
                continue
            for rounds in entry["rounds"].values():
                for r in rounds:
                    if "steps" in r:
                        r["delivered_per_cpu_s"] = delivered_per_cpu_s(r["steps"])
            entry["describe"] = scenario.describe
            entry["summary"] = {b: summarise(rs) for b, rs in entry["rounds"].items()}
        data["analysis"] = ANALYSIS.read_text() if ANALYSIS.exists() else ""
        json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        md_path.write_text(render(data))
        log(f"wrote {md_path}")
        return 0

    binaries = {"ringmq": args.ringmq, "ringmq-bench": args.ringmq_bench,
                "mosquitto": args.mosquitto, "rumqttd": args.rumqttd,
                "mosquitto_passwd": args.mosquitto_passwd}
    missing = [k for k, v in binaries.items() if not v]
    if missing:
        parser.error("missing binaries: " + ", ".join(missing))
    if os.cpu_count() < 2:
        parser.error("needs 2 CPUs: one for the brokers, one for ringmq-bench")
    rounds = args.rounds or (1 if args.quick else 3)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in BROKERS:
            parser.error(f"unknown broker {b}")
    keys = re.findall(r"[a-z]'?", args.scenarios)
    unknown = [k for k in keys if k not in SCENARIO_BY_KEY]
    if unknown:
        parser.error("unknown scenario(s) " + ", ".join(unknown))
    scenarios = [s for s in SCENARIOS if s.key in keys]

    data = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if args.quick else "full",
            "rounds": rounds,
            "machine": machine(),
            "versions": versions(binaries),
            "command": args.command_line,
            "broker_cpus": BROKER_CPUS, "bench_cpus": BENCH_CPUS,
            "load_before": load_average(),
        },
        "brokers": {},
        "scenarios": {},
    }
    for name in brokers:
        b = BROKERS[name]
        path = "CONFIG." + ("conf" if b.kind == "mosquitto" else "toml")
        cmd = b.argv({k: Path(v).name for k, v in binaries.items()}, path)
        data["brokers"][name] = {"label": b.label, "command": shlex.join(cmd),
                                 "config": b.config("PORT", "PORT2"), "cpus": b.cpus, "shards": b.shards,
                                 "variants": {}}
        for s in scenarios:
            v = s.variant(b)
            if s.runs_on(b) and v is not BASE:
                variant = data["brokers"][name]["variants"].setdefault(
                    v.name, {"config": b.config("PORT", "PORT2", v), "scenarios": ""})
                variant["scenarios"] += s.key

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ringmq-compare-") as tmp:
        workdir = Path(tmp)
        files = make_files(workdir, binaries, log) if any(s.tls or s.auth for s in scenarios) else None
        for s in scenarios:
            template = s.command_template(args.quick)
            entry = {"title": s.title, "describe": s.describe, "metric": s.metric, "unit": s.unit,
                     "higher_is_better": s.higher_is_better, "command_template": template,
                     "rounds": {b: [] for b in brokers if s.runs_on(BROKERS[b])}}
            data["scenarios"][s.key] = entry
            for r in range(rounds):
                order = brokers[r % len(brokers):] + brokers[:r % len(brokers)]
                for name in order:
                    if not s.runs_on(BROKERS[name]):
                        continue
                    log(f"{s.key} round {r + 1}/{rounds}: {name}")
                    result = run_once(s, BROKERS[name], binaries, args.quick, workdir, log, files)
                    entry["rounds"][name].append(result)
                    shown = {k: result.get(k) for k in (s.metric, "lost", "connect_failures", "broker_cpu_pct", "error")
                             if result.get(k) is not None}
                    log(f"  -> {shown}")
            entry["summary"] = {b: summarise(rs) for b, rs in entry["rounds"].items()}
            entry["targets"] = evaluate_targets(s, entry["summary"])
            data["meta"]["load_after"] = load_average()
            data["analysis"] = ANALYSIS.read_text() if ANALYSIS.exists() else ""
            # Written after every scenario, so a long run leaves its results behind.
            json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            md_path.write_text(render(data))
    if not args.no_trie:
        data["trie"] = run_trie(args.quick, log)
    data["meta"]["load_after"] = load_average()
    data["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    data["analysis"] = ANALYSIS.read_text() if ANALYSIS.exists() else ""
    json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    md_path.write_text(render(data))
    log(f"wrote {md_path} and {json_path} in {data['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
