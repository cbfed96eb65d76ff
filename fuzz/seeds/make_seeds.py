#!/usr/bin/env python3
"""Writes the hand-built seed corpus of the ringmq fuzz targets.

Each codec seed is one selector byte (0x00 = start in 3.1, 0x01 = 3.1.1,
0x02 = 5.0; see fuzz/src/lib.rs) followed by a stream of valid packets,
written here byte by byte from the specifications, independently of the
ringmq encoder. The same files seed `decode` and `roundtrip`. Topic seeds
are `filter 0xFF name`. WebSocket seeds are a chunk-size byte and client
frames.

Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""

import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return u16(len(data)) + data


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def user(k, v):
    return b"\x26" + s(k) + s(v)


# --- MQTT 3.1 and 3.1.1 ---------------------------------------------------

def connect_v3(name, level, client_id, will=None, username=None, password=None, clean=True):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s(topic) + s(message)
    if username is not None:
        flags |= 0x80
        payload += s(username)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    return packet(0x10, s(name) + bytes([level, flags]) + u16(60) + payload)


def v3_client_stream(name, level):
    return (
        connect_v3(name, level, "client-1", will=("last/will", b"gone", 1, True),
                   username="user", password=b"secret")
        + packet(0x82, u16(1) + s("sport/tennis/+") + b"\x01" + s("sport/#") + b"\x02")
        + packet(0x30, s("sport/tennis/player1") + b"hello")
        + packet(0x32, s("a/b") + u16(2) + b"\x00\x01\x02")
        + packet(0x3D, s("a/b") + u16(3) + b"retained, dup, qos 2")
        + packet(0x40, u16(2))
        + packet(0x50, u16(3))
        + packet(0x62, u16(3))
        + packet(0x70, u16(3))
        + packet(0xA2, u16(4) + s("sport/#"))
        + packet(0xC0, b"")
        + packet(0xE0, b"")
    )


def v3_server_stream():
    return (
        packet(0x20, b"\x00\x00")
        + packet(0x20, b"\x00\x05")
        + packet(0x90, u16(1) + b"\x01\x02\x80")
        + packet(0x30, s("sport/tennis/player1") + b"")
        + packet(0x34, s("$SYS/broker/uptime") + u16(7) + b"42")
        + packet(0xB0, u16(4))
        + packet(0xD0, b"")
    )


# --- MQTT 5.0 --------------------------------------------------------------

def v5_client_stream():
    connect_props = props(
        b"\x11" + u32(3600),          # Session Expiry Interval
        b"\x21" + u16(32),            # Receive Maximum
        b"\x27" + u32(1 << 20),       # Maximum Packet Size
        b"\x22" + u16(16),            # Topic Alias Maximum
        b"\x19\x01",                  # Request Response Information
        b"\x17\x01",                  # Request Problem Information
        user("region", "eu"),
        b"\x15" + s("SCRAM-SHA-256"),  # Authentication Method
        b"\x16" + s(b"\x00\x01"),       # Authentication Data
    )
    will_props = props(
        b"\x18" + u32(10),            # Will Delay Interval
        b"\x01\x01",                  # Payload Format Indicator
        b"\x02" + u32(60),            # Message Expiry Interval
        b"\x03" + s("text/plain"),    # Content Type
        b"\x08" + s("reply/here"),    # Response Topic
        b"\x09" + s(b"corr"),         # Correlation Data
        user("k", "v"),
    )
    flags = 0x02 | 0x04 | (1 << 3) | 0x80 | 0x40
    connect = packet(
        0x10,
        s("MQTT") + bytes([5, flags]) + u16(30) + connect_props
        + s("client-5") + will_props + s("will/topic") + s(b"bye")
        + s("user") + s(b"pass"),
    )
    publish_props = props(
        b"\x01\x01", b"\x02" + u32(120), b"\x23" + u16(1),
        b"\x08" + s("reply/to"), b"\x09" + s(b"id-1"), user("a", "b"),
        b"\x03" + s("application/json"),
    )
    subscribe_props = props(b"\x0B" + varint(1000), user("sub", "prop"))
    return (
        connect
        + packet(0x82, u16(1) + subscribe_props
                 + s("sensors/+/temp") + bytes([0x01 | 0x04 | 0x08 | 0x10])
                 + s("$share/group/alerts/#") + b"\x02")
        + packet(0x32, s("sensors/7/temp") + u16(2) + publish_props + b'{"t":21.5}')
        + packet(0x30, s("") + props(b"\x23" + u16(1)) + b"aliased")
        + packet(0x30, s("plain") + props() + b"")
        + packet(0x40, u16(2))
        + packet(0x40, u16(3) + b"\x10")
        + packet(0x50, u16(4) + b"\x00" + props(b"\x1F" + s("ok"), user("x", "y")))
        + packet(0x62, u16(4) + b"\x92" + props())
        + packet(0x70, u16(4) + b"\x00" + props())
        + packet(0xA2, u16(5) + props(user("u", "v")) + s("sensors/+/temp") + s("a/b"))
        + packet(0xF0, b"\x19" + props(b"\x15" + s("SCRAM-SHA-256"), b"\x16" + s(b"\x01")))
        + packet(0xC0, b"")
        + packet(0xE0, b"\x04" + props(b"\x11" + u32(0), b"\x1F" + s("bye")))
    )


def v5_server_stream():
    connack_props = props(
        b"\x11" + u32(3600), b"\x21" + u16(32), b"\x24\x01", b"\x25\x01",
        b"\x27" + u32(1 << 20), b"\x12" + s("auto-1"), b"\x22" + u16(16),
        b"\x1F" + s("welcome"), user("srv", "ringmq"), b"\x28\x01", b"\x29\x01",
        b"\x2A\x01", b"\x13" + u16(120), b"\x1A" + s("resp/"), b"\x1C" + s("other:1883"),
    )
    return (
        packet(0x20, b"\x01\x00" + connack_props)
        + packet(0x20, b"\x00\x86" + props())
        + packet(0x90, u16(1) + props(b"\x1F" + s("granted")) + b"\x00\x01\x02\x80\x97")
        + packet(0x33, s("sensors/7/temp") + u16(9)
                 + props(b"\x0B" + varint(1000), b"\x0B" + varint(7)) + b"21.5")
        + packet(0xB0, u16(5) + props() + b"\x00\x11")
        + packet(0xD0, b"")
        + packet(0xE0, b"\x8B" + props(b"\x1C" + s("other:1883")))
        + packet(0xE0, b"")
    )


TOPICS = {
    "exact": b"sport/tennis/player1\xffsport/tennis/player1",
    "plus": b"sport/tennis/+\xffsport/tennis/player1",
    "hash": b"sport/#\xffsport",
    "empty-levels": b"+/+\xff/finance",
    "dollar": b"#\xff$SYS/broker/load",
    "dollar-explicit": b"$SYS/#\xff$SYS/broker/load",
    "shared": b"$share/group/a/+\xffa/b",
    "bad-hash": b"a/#/b\xffa/x/b",
    "bad-plus": b"a/b+\xffa/b+",
    "bad-share": b"$share//a\xff$share/g",
    "utf8": "capteurs/température/+\xffcapteurs/température/salon".encode(),
}


def ws_frame(opcode, fin, payload, mask=b"\x01\x02\x03\x04"):
    """A client WebSocket frame (RFC 6455 5.2): masked, short or 16-bit length."""
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + u16(n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([opcode | (0x80 if fin else 0)]) + length + mask + masked


def websocket_seeds():
    """`websocket` seeds: a chunk-size byte, then client frames."""
    stream = v3_client_stream("MQTT", 4)
    return {
        "binary": b"\x00" + ws_frame(0x2, True, stream),
        "fragmented": b"\x03" + ws_frame(0x2, False, stream[:5]) + ws_frame(0x9, True, b"hi")
        + ws_frame(0x0, True, stream[5:]),
        "close": b"\x07" + ws_frame(0x2, True, b"\xc0\x00") + ws_frame(0x8, True, u16(1000)),
        "long": b"\x0b" + ws_frame(0x2, True, bytes(300)),
    }


def main():
    streams = {
        "v3_1-client": b"\x00" + v3_client_stream("MQIsdp", 3),
        "v3_1-server": b"\x00" + v3_server_stream(),
        "v3_1_1-client": b"\x01" + v3_client_stream("MQTT", 4),
        "v3_1_1-server": b"\x01" + v3_server_stream(),
        "v5-client": b"\x02" + v5_client_stream(),
        "v5-server": b"\x02" + v5_server_stream(),
    }
    for target in ("decode", "roundtrip"):
        (HERE / target).mkdir(exist_ok=True)
        for name, data in streams.items():
            (HERE / target / name).write_bytes(data)
    (HERE / "topic").mkdir(exist_ok=True)
    for name, data in TOPICS.items():
        (HERE / "topic" / name).write_bytes(data)
    (HERE / "websocket").mkdir(exist_ok=True)
    for name, data in websocket_seeds().items():
        (HERE / "websocket" / name).write_bytes(data)


if __name__ == "__main__":
    main()
