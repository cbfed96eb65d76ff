#!/usr/bin/env python3
"""Memory a broker holds for unfinished CONNECTs (no dependencies).

  preconnect_memory.py HOST PORT PID [SOCKETS] [BYTES]

Opens SOCKETS connections (default 200), writes the first BYTES (default
983,000) of a CONNECT announcing 1,000,000 bytes on each, waits 2 s, and
prints the broker's VmRSS growth (PID) and how many sockets it closed.
A CONNECT of up to 64 KiB announces BYTES + 100 bytes (within ringmq's
default `max_connect_size`), a larger one 1,000,000.
"""

import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 983_000
    announced = size + 100 if size + 100 <= 65_536 else 1_000_000
    remaining, length = announced - 4, bytearray()
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    head = bytes([0x10]) + bytes(length) + b"\x00\x04MQTT\x04\xc2\x00\x00"
    payload = head + b"p" * (size - len(head))
    before = rss_kib(pid)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        try:
            sock.send(payload)
        except OSError:
            pass
        sockets.append(sock)
    time.sleep(2)
    closed = 0
    for sock in sockets:
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(f"{count} sockets x {size} bytes: RSS +{(rss_kib(pid) - before) / 1024:.1f} MiB, "
          f"{closed} closed by the broker")


if __name__ == "__main__":
    main()
