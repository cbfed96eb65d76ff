"""End-to-end check of ringmq's MQTT 5.0 with Python paho-mqtt 2.x.

Usage: paho_client_v5.py PORT PUB5 SUB5 SUB3 PUB3 (client ids). Exits 0 when every check passes.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])
TIMEOUT = 10


def client(client_id, protocol=mqtt.MQTTv5, expiry=None):
    """A connected client; returns it and its CONNACK properties."""
    connected = threading.Event()
    state = {}

    def on_connect(_c, _u, _flags, reason, properties):
        state["reason"], state["properties"] = reason, properties
        connected.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    c.on_connect = on_connect
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        if expiry is not None:
            props.SessionExpiryInterval = expiry
        c.connect("127.0.0.1", PORT, keepalive=30, clean_start=True, properties=props)
    else:
        c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK"
    assert not state["reason"].is_failure, state["reason"]
    return c, state.get("properties")


def subscriber(client_id, protocol):
    received = []
    got = threading.Event()
    subscribed = threading.Event()
    c, _ = client(client_id, protocol)

    def on_message(_c, _u, msg):
        received.append(msg)
        got.set()

    c.on_message = on_message
    c.on_subscribe = lambda *args: subscribed.set()
    c.subscribe("v5/#", qos=1)
    assert subscribed.wait(TIMEOUT), "no SUBACK"
    return c, received, got


def main():
    pub_id, sub5_id, sub3_id, pub3_id = sys.argv[2:6]
    # CONNACK advertises the broker's limits.
    pub, props = client(pub_id, expiry=3600 * 24 * 365)
    assert props.ReceiveMaximum == 32, props
    assert props.TopicAliasMaximum == 16, props
    assert props.MaximumPacketSize == 1048576, props
    assert props.RetainAvailable == 1, props
    assert props.SessionExpiryInterval == 604800, "capped, and the cap told"

    sub5, got5, event5 = subscriber(sub5_id, mqtt.MQTTv5)
    sub3, got3, event3 = subscriber(sub3_id, mqtt.MQTTv311)

    # 5.0 publisher -> 5.0 and 3.1.1 subscribers; properties forwarded.
    out = Properties(PacketTypes.PUBLISH)
    out.UserProperty = [("k", "v"), ("k2", "v2")]
    out.ContentType = "text/plain"
    out.ResponseTopic = "v5/reply"
    out.CorrelationData = b"corr"
    out.MessageExpiryInterval = 120
    pub.publish("v5/a", b"hello", qos=1, properties=out).wait_for_publish(TIMEOUT)
    assert event5.wait(TIMEOUT) and event3.wait(TIMEOUT), (got5, got3)
    m5 = got5[0]
    assert m5.payload == b"hello"
    assert m5.properties.UserProperty == [("k", "v"), ("k2", "v2")], m5.properties
    assert m5.properties.ContentType == "text/plain"
    assert m5.properties.ResponseTopic == "v5/reply"
    assert m5.properties.CorrelationData == b"corr"
    assert 0 < m5.properties.MessageExpiryInterval <= 120
    assert got3[0].payload == b"hello"

    # 3.1.1 publisher -> 5.0 subscriber.
    event5.clear()
    pub3, _ = client(pub3_id, mqtt.MQTTv311)
    pub3.publish("v5/b", b"from 3.1.1", qos=1).wait_for_publish(TIMEOUT)
    assert event5.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while len(got5) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got5[1].payload == b"from 3.1.1", got5

    # Takeover: the old 5.0 connection is told 0x8E.
    told = threading.Event()
    reasons = []

    def on_disconnect(_c, _u, _flags, reason, _props):
        reasons.append(reason)
        told.set()

    sub5.on_disconnect = on_disconnect
    sub5.reconnect_delay_set(min_delay=60, max_delay=60)
    twin, _ = client(sub5_id)
    assert told.wait(TIMEOUT), "no DISCONNECT"
    assert reasons[0].value == 0x8E, reasons

    for c in (pub, pub3, sub3, twin, sub5):
        c.disconnect()
        c.loop_stop()
    print("paho v5: ok")


if __name__ == "__main__":
    main()
