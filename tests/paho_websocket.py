"""MQTT over WebSocket with Python paho-mqtt 2.x (transport="websockets").

Usage: paho_websocket.py PORT PATH CAFILE|- SUB_ID PUB_ID. With a CA file the
connection is wss. A subscriber and a publisher (ids chosen by the test so
that their sessions live on different shards) exchange QoS 0, 1 and 2
messages, one larger than a WebSocket frame's 16-bit length; then an MQTT
3.1 client connects. Exits 0 when every message
arrived intact.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT, PATH, CAFILE, SUB_ID, PUB_ID = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
TIMEOUT = 10


def client(client_id, protocol=mqtt.MQTTv311):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=protocol, transport="websockets")
    c.ws_set_options(path=PATH)
    if CAFILE != "-":
        c.tls_set(ca_certs=CAFILE)
    c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    deadline = time.monotonic() + TIMEOUT
    while not c.is_connected():
        assert time.monotonic() < deadline, f"{client_id}: no CONNACK"
        time.sleep(0.01)
    return c


def main():
    expected = [("ws/a", b"zero", 0), ("ws/b", b"one", 1), ("ws/c", bytes(range(256)) * 300, 2)]
    received = []
    got_all = threading.Event()
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        received.append((msg.topic, msg.payload, msg.qos))
        if len(received) == len(expected):
            got_all.set()

    sub = client(SUB_ID)
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe("ws/#", qos=2)
    assert subscribed.wait(TIMEOUT), "no SUBACK"
    pub = client(PUB_ID)
    for topic, payload, qos in expected:
        pub.publish(topic, payload, qos=qos).wait_for_publish(TIMEOUT)
    assert got_all.wait(TIMEOUT), f"received {[(t, len(p), q) for t, p, q in received]}"
    assert sorted(received) == sorted(expected), "messages differ"
    # MQTT 3.1 (MQIsdp) over WebSocket too (paho offers "mqtt" for every version).
    old = client(PUB_ID + "-31", mqtt.MQTTv31)
    for c in (pub, sub, old):
        c.disconnect()
        c.loop_stop()
    print("ok")


main()
