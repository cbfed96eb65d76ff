#!/usr/bin/env python3
"""MQTT 5.0 enhanced authentication with SCRAM-SHA-256 against ringmq, from
Python: run by tests/e2e_scram.rs as `scram_client.py PORT ID0 ID1` against
a broker whose scram_file has alice/wonderland and bob/builder.

paho-mqtt 2.x has no way to send or receive AUTH packets, so the packets go
over a raw socket; the properties are encoded and decoded with paho-mqtt's
own `Properties` (an independent codec), and SCRAM (RFC 5802) is written
here on hashlib/hmac, independent of ringmq's. Exits 0 when every check
passes."""

import base64
import hashlib
import hmac
import os
import socket
import struct
import sys

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

METHOD = "SCRAM-SHA-256"
CONNECT, CONNACK, DISCONNECT, AUTH = 1, 2, 14, 15
SUCCESS, CONTINUE, REAUTHENTICATE = 0x00, 0x18, 0x19
NOT_AUTHORIZED, BAD_METHOD = 0x87, 0x8C


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def properties(packet_type, data=None, method=METHOD):
    props = Properties(packet_type)
    props.AuthenticationMethod = method
    if data is not None:
        props.AuthenticationData = data.encode()
    return props.pack()


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, first_byte, body):
        self.sock.sendall(bytes([first_byte]) + varint(len(body)) + body)

    def connect(self, client_id, data, method=METHOD):
        header = string("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0)
        props = properties(PacketTypes.CONNECT, data, method)
        self.send(CONNECT << 4, header + props + string(client_id))

    def auth(self, reason, data):
        self.send(AUTH << 4, bytes([reason]) + properties(PacketTypes.AUTH, data))

    def read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """(packet type, reason code, properties) of the next packet."""
        first = self.read(1)[0]
        length, shift = 0, 0
        while True:
            byte = self.read(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = self.read(length)
        kind = first >> 4
        if kind == CONNACK:
            reason, rest, packet_type = body[1], body[2:], PacketTypes.CONNACK
        elif kind == AUTH:
            reason, rest, packet_type = body[0], body[1:], PacketTypes.AUTH
        elif kind == DISCONNECT:
            reason, rest, packet_type = body[0], body[1:], PacketTypes.DISCONNECT
        else:
            raise AssertionError(f"unexpected packet type {kind}")
        props = Properties(packet_type)
        if rest:
            props, _ = props.unpack(rest)
        return kind, reason, props

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


class Scram:
    """The client side of RFC 5802 with SHA-256 (RFC 7677)."""

    def __init__(self, user, password):
        self.user, self.password = user, password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.bare = f"n={user},r={self.nonce}"

    def first(self):
        return "n,," + self.bare

    def final(self, server_first):
        fields = dict(field.split("=", 1) for field in server_first.split(","))
        assert fields["r"].startswith(self.nonce), server_first
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        assert iterations >= 4096, server_first
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.expected = "v=" + base64.b64encode(
            hmac.digest(server_key, auth_message, "sha256")).decode()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"


def data(props):
    return props.AuthenticationData.decode()


def continued(client):
    kind, reason, props = client.recv()
    assert (kind, reason) == (AUTH, CONTINUE), (kind, reason)
    assert props.AuthenticationMethod == METHOD  # [MQTT-4.12.0-5]
    return data(props)


def scram_connect(port, client_id, user, password):
    client, scram = Client(port), Scram(user, password)
    client.connect(client_id, scram.first())
    client.auth(CONTINUE, scram.final(continued(client)))
    kind, reason, props = client.recv()
    assert kind == CONNACK, kind
    if reason == SUCCESS:
        assert props.AuthenticationMethod == METHOD
        assert data(props) == scram.expected, "the server proved it knows the key"
    return client, reason


def reauthenticate(client, user, password):
    scram = Scram(user, password)
    client.auth(REAUTHENTICATE, scram.first())
    client.auth(CONTINUE, scram.final(continued(client)))
    return client.recv(), scram


def main():
    port, ids = int(sys.argv[1]), sys.argv[2:4]
    alice, reason = scram_connect(port, ids[0], "alice", "wonderland")
    assert reason == SUCCESS, hex(reason)
    print("alice connected on shard 0")

    bob, reason = scram_connect(port, ids[1], "bob", "not the password")
    assert reason == NOT_AUTHORIZED, hex(reason)
    assert bob.closed()
    bob, reason = scram_connect(port, ids[1], "bob", "builder")
    assert reason == SUCCESS, hex(reason)
    print("bob refused with a wrong password, then connected on shard 1")

    (kind, reason, props), scram = reauthenticate(alice, "alice", "wonderland")
    assert (kind, reason) == (AUTH, SUCCESS), (kind, reason)
    assert props.AuthenticationMethod == METHOD and data(props) == scram.expected
    print("alice re-authenticated")

    (kind, reason, _), _ = reauthenticate(bob, "bob", "wrong")
    assert (kind, reason) == (DISCONNECT, NOT_AUTHORIZED), (kind, reason)
    assert bob.closed()
    print("bob's failed re-authentication disconnected him with 0x87")

    other = Client(port)
    other.connect("other", "n,,n=alice,r=abc", method="SCRAM-SHA-1")
    kind, reason, _ = other.recv()
    assert (kind, reason) == (CONNACK, BAD_METHOD), (kind, reason)
    print("an unknown method got 0x8C")

    alice.send(DISCONNECT << 4, b"")
    assert alice.closed()


if __name__ == "__main__":
    main()
