#!/usr/bin/env python3
"""Times large subscribes against a running broker (no dependencies).

  pipelined HOST PORT N M   N SUBSCRIBE packets of M filters each, written
                            back to back; prints the seconds until the last
                            SUBACK.
  stall HOST PORT M         one SUBSCRIBE of M filters while a canary client
                            publishes to itself (QoS 0) in a loop; prints the
                            canary's median and worst round trip before and
                            during the subscribe, and the SUBACK's delay.

Used for the figures of the "subscribing is linear" fix (CHANGELOG, issue
notes); run the broker with `--shards 1` for `stall` so that both clients
share a shard.
"""

import socket
import statistics
import sys
import threading
import time


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    data = s.encode()
    return len(data).to_bytes(2, "big") + data


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id):
    body = string("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + string(client_id)
    return packet(0x10, body)


def subscribe(packet_id, filters):
    body = packet_id.to_bytes(2, "big") + b"".join(string(f) + b"\x00" for f in filters)
    return packet(0x82, body)


def publish(topic, payload):
    return packet(0x30, string(topic) + payload)


class Client:
    def __init__(self, host, port, client_id):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(connect(client_id))
        kind, _ = self.read_packet()
        assert kind == 0x20, "expected CONNACK"

    def read_packet(self):
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf):
                    byte = self.buf[i]
                    length += (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        if len(self.buf) >= i + length:
                            kind = self.buf[0] & 0xF0
                            body = bytes(self.buf[i:i + length])
                            del self.buf[:i + length]
                            return kind, body
                        break
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk


def pipelined(host, port, n, m):
    client = Client(host, port, "probe-pipelined")
    packets = [subscribe(i + 1, [f"p/{i}-{j}" for j in range(m)]) for i in range(n)]
    start = time.monotonic()
    client.sock.sendall(b"".join(packets))
    acked = 0
    while acked < n:
        kind, _ = client.read_packet()
        acked += kind == 0x90
    print(f"{n} x SUBSCRIBE of {m} filters: {time.monotonic() - start:.3f} s")


def stall(host, port, m):
    canary = Client(host, port, "probe-canary")
    canary.sock.sendall(subscribe(1, ["canary"]))
    assert canary.read_packet()[0] == 0x90
    samples, phase, stop = {"before": [], "during": []}, ["before"], threading.Event()

    def loop():
        while not stop.is_set():
            start = time.monotonic()
            canary.sock.sendall(publish("canary", b"x"))
            while canary.read_packet()[0] != 0x30:
                pass
            samples[phase[0]].append(time.monotonic() - start)
            time.sleep(0.001)

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(1.0)
    big = Client(host, port, "probe-big")
    packet_bytes = subscribe(1, [f"s/{j}" for j in range(m)])
    phase[0] = "during"
    start = time.monotonic()
    big.sock.sendall(packet_bytes)
    while big.read_packet()[0] != 0x90:
        pass
    suback = time.monotonic() - start
    stop.set()
    thread.join()
    for name in ("before", "during"):
        values = samples[name]
        print(f"canary {name}: {len(values)} round trips, median "
              f"{statistics.median(values) * 1e3:.3f} ms, worst {max(values) * 1e3:.3f} ms")
    print(f"SUBACK for {m} filters after {suback:.3f} s")


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "pipelined":
        pipelined(host, port, int(sys.argv[4]), int(sys.argv[5]))
    else:
        stall(host, port, int(sys.argv[4]))
