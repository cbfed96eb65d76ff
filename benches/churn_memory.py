#!/usr/bin/env python3
"""Broker memory under subscribe/unsubscribe churn of deep unique filters.

Starts the release ringmq (2 shards) on a free loopback port, connects
CLIENTS MQTT 3.1.1 clients, and in ROUNDS rounds subscribes each client to
FILTERS filters of LEVELS levels, unique across clients and rounds, then
unsubscribes them all. Prints the broker's VmRSS (KiB) at the start, after
the first subscribe round and after each unsubscribe round, and how much
RSS grew per unique filter after the first round (which sizes what the
allocator keeps for reuse).

    cargo build --release && benches/churn_memory.py [--levels 10000]
        [--filters 50] [--rounds 4] [--clients 4] [--settle 0]
        [--broker target/release/ringmq]

Standard library only; the packets are built by hand.
"""

import argparse
import signal
import socket
import struct
import subprocess
import sys
import time


def remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def utf8(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect(client_id):
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + utf8(client_id)
    return packet(0x10, body)


def subscribe(packet_id, filt):
    return packet(0x82, struct.pack("!H", packet_id) + utf8(filt) + b"\x00")


def unsubscribe(packet_id, filt):
    return packet(0xA2, struct.pack("!H", packet_id) + utf8(filt))


def read_packet(sock):
    """Reads one packet and returns its type nibble."""

    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    first = exact(1)[0]
    length, shift = 0, 0
    while True:
        byte = exact(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    exact(length)
    return first >> 4


def expect(sock, kind, count):
    for _ in range(count):
        got = read_packet(sock)
        if got != kind:
            raise RuntimeError(f"expected packet type {kind}, got {got}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_filter(round_, client, index, levels):
    # Unique from the first level on (also across rounds), so every filter
    # is a chain of its own in both the local index and the interest replica.
    head = f"r{round_}c{client}f{index}"
    return "/".join([head] + ["l"] * (levels - 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=10_000)
    parser.add_argument("--filters", type=int, default=50, help="per client and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--settle", type=float, default=0,
                        help="seconds to wait after the last round before the final RSS")
    parser.add_argument("--broker", default="target/release/ringmq")
    args = parser.parse_args()

    port = free_port()
    broker = subprocess.Popen(
        [args.broker, "--listen", f"127.0.0.1:{port}", "--shards", str(args.shards),
         "--log", "warn"])
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(0.5)
        clients = []
        for c in range(args.clients):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(connect(f"churn-{c}"))
            expect(sock, 2, 1)
            clients.append(sock)
        time.sleep(0.5)
        start = rss_kib(broker.pid)
        print(f"rss_start_kib={start}")
        for round_ in range(args.rounds):
            for c, sock in enumerate(clients):
                for i in range(args.filters):
                    sock.sendall(subscribe(i % 65535 + 1, deep_filter(round_, c, i, args.levels)))
                expect(sock, 9, args.filters)
            if round_ == 0:
                print(f"rss_subscribed_kib={rss_kib(broker.pid)}")
            for c, sock in enumerate(clients):
                for i in range(args.filters):
                    sock.sendall(unsubscribe(i % 65535 + 1, deep_filter(round_, c, i, args.levels)))
                expect(sock, 11, args.filters)
            time.sleep(0.3)
            rss = rss_kib(broker.pid)
            if round_ == 0:
                first = rss
            print(f"round={round_ + 1} rss_unsubscribed_kib={rss}")
        if args.settle > 0:
            # Allocators that give memory back on a timer (jemalloc's decay,
            # mimalloc's purge delay) need a moment.
            time.sleep(args.settle)
            print(f"settled_{args.settle}s rss_kib={rss_kib(broker.pid)}")
        end = rss_kib(broker.pid)
        per_round = args.filters * args.clients
        print(f"filters_per_round={per_round} levels={args.levels} rss_end_kib={end}")
        if args.rounds > 1:
            # The first round sizes what the allocator keeps for reuse; any
            # growth after it is memory the broker did not give back.
            growth = (end - first) * 1024 // (per_round * (args.rounds - 1))
            print(f"rss_growth_per_unique_filter_after_round_1_bytes={growth}")
        for sock in clients:
            sock.close()
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
