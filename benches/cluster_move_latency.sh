#!/usr/bin/env bash
# What holding back for order costs a session that moved (issue 17 item 6,
# [MQTT-4.6.0-6]): one nats-server with JetStream, three ringmq nodes. A
# persistent session subscribes on node a, then reconnects on node b (it
# moves); a publisher on node c sends it QoS 1 messages at RATE msg/s for
# SECS seconds, each carrying its send time. Prints the latency of those
# received within the hold (the first node_timeout_ms, 5 s) and of those
# received after it, and whether all came, in order. Needs python3 with
# paho-mqtt (2.x).
#
#   cargo build --release -p ringmq
#   benches/cluster_move_latency.sh [RATE] [SECS]
set -euo pipefail
RATE="${1:-100}"
SECS="${2:-10}"
# shellcheck source=benches/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh"
start_nats
for node in a b c; do start_node "$node"; done
sleep 2
python3 - "${port[a]}" "${port[b]}" "${port[c]}" "$RATE" "$SECS" <<'PY'
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port_a, port_b, port_c, rate, secs = (int(x) for x in sys.argv[1:6])
HOLD = 5.0  # node_timeout_ms's default


def client(client_id, clean):
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)


mover = client("mover", False)
mover.connect("127.0.0.1", port_a)
mover.loop_start()
mover.subscribe("lat/#", qos=1)
time.sleep(0.5)
mover.disconnect()
mover.loop_stop()
received = []


def on_message(_client, _userdata, message):
    sent, number = message.payload.decode().split(",")
    received.append((time.time(), time.time() - float(sent), int(number)))


mover = client("mover", False)
mover.on_message = on_message
mover.connect("127.0.0.1", port_b)
mover.loop_start()
moved_at = time.time()
publisher = client("publisher", True)
publisher.connect("127.0.0.1", port_c)
publisher.loop_start()
total = rate * secs
for number in range(total):
    publisher.publish("lat/x", f"{time.time()},{number}", qos=1)
    time.sleep(1 / rate)
time.sleep(1)
numbers = [n for _, _, n in received]
print(f"received {len(received)} of {total}, in order: {numbers == sorted(numbers)}")


def line(name, latencies):
    if not latencies:
        return print(f"{name}: none")
    latencies.sort()
    p50, p99 = (latencies[int(len(latencies) * p)] * 1000 for p in (0.5, 0.99))
    print(f"{name}: {len(latencies)} messages, p50 {p50:.2f} ms, p99 {p99:.2f} ms")


line("during the hold (first 5 s)", [l for t, l, _ in received if t - moved_at < HOLD])
line("after it (from 6.5 s)", [l for t, l, _ in received if t - moved_at >= HOLD + 1.5])
PY
