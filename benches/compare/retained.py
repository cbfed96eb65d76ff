#!/usr/bin/env python3
"""Scenario g of the comparison: N retained messages, then one wildcard
subscribe; how long until the subscriber has all of them.

ringmq-bench has no retained mode, and a paho client is far too slow to
count 100,000 messages, so this speaks MQTT 3.1.1 over a raw socket:

1. A publisher connects and sends N retained QoS 0 PUBLISHes on
   `{prefix}/{i:06d}` (every packet the same size), then one QoS 1 PUBLISH
   (not retained) and waits for its PUBACK: a broker handles a
   connection's packets in order, so the PUBACK means all N were taken.
2. After a short settle, a subscriber connects and subscribes to
   `{prefix}/#` at QoS 0. The clock runs from sending SUBSCRIBE until the
   expected bytes (SUBACK + N equal-size PUBLISHes) have arrived, or until
   the stream is idle for --idle seconds (then the count is short and the
   shortfall is reported as lost).
3. The bytes are parsed afterwards (outside the timed part): packets,
   distinct topics, RETAIN flags.

Only the Python standard library is used. Output: one JSON object.
"""

import argparse
import json
import socket
import sys
import time


def varint(n):
    """MQTT Variable Byte Integer (remaining length)."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


def utf8(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id, keepalive):
    # Protocol name "MQTT", level 4 (3.1.1), flags: Clean Session.
    variable = utf8("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big")
    return packet(0x10, variable + utf8(client_id))


def recv_exact(sock, n, deadline):
    data = bytearray()
    while len(data) < n:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return bytes(data)


def open_session(host, port, client_id, keepalive, timeout):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, keepalive))
    connack = recv_exact(sock, 4, time.monotonic() + timeout)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack.hex()}")
    return sock


def parse_stream(data):
    """Counts the packets of a byte stream by type; returns the PUBLISH
    topics and how many had RETAIN set."""
    pos, n = 0, len(data)
    counts, topics, retained = {}, set(), 0
    while pos < n:
        first = data[pos]
        length, shift, i = 0, 0, pos + 1
        while i < n:
            byte = data[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        end = i + length
        if end > n:
            break  # a partial packet at the end
        kind = first >> 4
        counts[kind] = counts.get(kind, 0) + 1
        if kind == 3:
            topic_len = int.from_bytes(data[i : i + 2], "big")
            topics.add(bytes(data[i + 2 : i + 2 + topic_len]))
            retained += first & 1
        pos = end
    return counts, topics, retained


def run(args):
    deadline_all = time.monotonic() + args.timeout
    prefix = args.prefix
    payload = bytes(range(16)) * (args.payload // 16) + bytes(args.payload % 16)
    publishes = [packet(0x31, utf8(f"{prefix}/{i:06d}") + payload) for i in range(args.count)]
    size = len(publishes[0])
    assert all(len(p) == size for p in publishes), "equal-size packets"

    # 1. Store the retained messages.
    pub = open_session(args.host, args.port, "ringmq-bench-retained-pub", 60, args.timeout)
    t0 = time.monotonic()
    blob = b"".join(publishes)
    pub.sendall(blob)
    sync = packet(0x32, utf8(f"{prefix}-sync") + (1).to_bytes(2, "big") + b"sync")
    pub.sendall(sync)
    puback = recv_exact(pub, 4, deadline_all)
    if puback != b"\x40\x02\x00\x01":
        raise ConnectionError(f"expected PUBACK 1, got {puback.hex()}")
    publish_s = time.monotonic() - t0
    pub.sendall(b"\xe0\x00")  # DISCONNECT
    pub.close()
    time.sleep(args.settle)

    # 2. Subscribe and time the delivery.
    sub = open_session(args.host, args.port, "ringmq-bench-retained-sub", 60, args.timeout)
    subscribe = packet(0x82, (1).to_bytes(2, "big") + utf8(f"{prefix}/#") + b"\x00")
    suback_len = 5
    expected = suback_len + args.count * size
    data = bytearray()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    sub.settimeout(args.idle)
    t_sub = time.monotonic()
    t_last = t_sub
    sub.sendall(subscribe)
    timed_out = False
    while len(data) < expected:
        try:
            n = sub.recv_into(view)
        except socket.timeout:
            timed_out = True
            break
        if n == 0:
            break
        t_last = time.monotonic()
        data += view[:n]
        if t_last > deadline_all:
            timed_out = True
            break
    elapsed = t_last - t_sub
    sub.close()

    # 3. Check what arrived.
    counts, topics, retained = parse_stream(data)
    received = counts.get(3, 0)
    return {
        "count": args.count,
        "packet_bytes": size,
        "publish_s": round(publish_s, 4),
        "suback": counts.get(9, 0),
        "received": received,
        "distinct": len(topics),
        "retain_flag_set": retained,
        "lost": args.count - len(topics),
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(received / elapsed, 1) if elapsed > 0 else None,
        "idle_timeout": timed_out,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=16, help="payload bytes")
    parser.add_argument("--prefix", default="bench/retained")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds between store and subscribe")
    parser.add_argument("--idle", type=float, default=5.0, help="give up after this many idle seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on the whole run")
    args = parser.parse_args()
    try:
        result = run(args)
    except (OSError, ConnectionError) as error:
        print(json.dumps({"error": str(error)}))
        return 2
    print(json.dumps(result))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
