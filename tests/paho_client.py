"""End-to-end check of ringmq with Python paho-mqtt 2.x (an independent client).

Usage: paho_client.py PORT. Exits 0 when every check passes.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
TIMEOUT = 10


def wait_connected(c):
    """Waits for the CONNACK: paho queues publishes made before it."""
    deadline = time.monotonic() + TIMEOUT
    while not c.is_connected():
        assert time.monotonic() < deadline, "no CONNACK"
        time.sleep(0.01)


def client(client_id, clean=True):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean, protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    wait_connected(c)
    return c


def main():
    received = []
    got_all = threading.Event()
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        received.append((msg.topic, msg.payload, msg.qos, msg.retain))
        if len(received) == 4:
            got_all.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub",
                      protocol=mqtt.MQTTv311)
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", PORT, keepalive=30)
    sub.loop_start()
    wait_connected(sub)

    pub = client("paho-pub")
    # A retained message before the subscription.
    pub.publish("paho/retained", b"r", qos=1, retain=True).wait_for_publish(TIMEOUT)
    time.sleep(0.2)
    sub.subscribe([("paho/#", 2)])
    assert subscribed.wait(TIMEOUT), "no SUBACK"
    for qos in (0, 1, 2):
        info = pub.publish(f"paho/q{qos}", f"m{qos}".encode(), qos=qos)
        info.wait_for_publish(TIMEOUT)
    assert got_all.wait(TIMEOUT), f"received only {received}"
    by_topic = {t: (p, q, r) for t, p, q, r in received}
    assert by_topic["paho/retained"] == (b"r", 1, True), received
    assert len(received) == 4, received
    for qos in (0, 1, 2):
        assert by_topic[f"paho/q{qos}"] == (f"m{qos}".encode(), qos, False), by_topic
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    print("paho: ok")


if __name__ == "__main__":
    main()
