//! Resumable decoding over a byte stream: incomplete input, arbitrary
//! splits, the version switch on CONNECT, zero-copy payloads, and the
//! maximum packet size checked on the fixed header alone.

#[path = "common/codec_vectors.rs"]
mod vectors;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;
use vectors::{cat, Case};

const MAX: u32 = 1 << 20;

/// Every vector in stream order, with the version of the first one (the
/// stream opens with a CONNECT of that version).
fn stream() -> (ProtocolVersion, Vec<u8>, Vec<Packet>) {
    let cases: Vec<Case> = vectors::all_cases().into_iter().map(|(_, c)| c).collect();
    let start = cases[0].version;
    let bytes = cases.iter().flat_map(|c| c.bytes.iter().copied()).collect();
    let packets = cases.into_iter().map(|c| c.packet).collect();
    (start, bytes, packets)
}

/// Feeds `bytes` to one decoder in the given chunk sizes (cycled), draining
/// every complete packet after each chunk.
fn decode_in_chunks(start: ProtocolVersion, bytes: &[u8], chunks: &[usize]) -> Vec<Packet> {
    let mut decoder = Decoder::new(start, MAX);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        while let Some(packet) = decoder.decode(&mut buf).expect("valid stream") {
            packets.push(packet);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packets
}

/// MQTT 3.1.1 section 4.2 / 5.0 section 4.2: the transport is an ordered
/// byte stream with no packet boundaries; reading it a byte at a time gives
/// the same packets (all vectors of all versions, each version opened by its
/// CONNECT, which switches the decoder).
#[test]
fn byte_by_byte_gives_the_same_packets() {
    let (start, bytes, expected) = stream();
    assert_eq!(decode_in_chunks(start, &bytes, &[1]), expected);
}

/// The same stream in one piece: several packets in one buffer come out one
/// per call, in order.
#[test]
fn whole_stream_at_once_gives_the_same_packets() {
    let (start, bytes, expected) = stream();
    assert_eq!(decode_in_chunks(start, &bytes, &[bytes.len()]), expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random splits of the stream give the same packets.
    #[test]
    fn random_splits_give_the_same_packets(chunks in prop::collection::vec(1usize..40, 1..16)) {
        let (start, bytes, expected) = stream();
        prop_assert_eq!(decode_in_chunks(start, &bytes, &chunks), expected);
    }
}

/// Incomplete input is `Ok(None)` and consumes nothing: every proper prefix
/// of a vector (the empty one included, and prefixes that end inside a
/// multi-byte remaining length); then the last byte completes it.
fn check_prefixes(name: &str, case: &Case) {
    let mut decoder = Decoder::new(case.version, MAX);
    let mut buf = BytesMut::new();
    for (len, &byte) in case.bytes.iter().enumerate() {
        assert_eq!(decoder.decode(&mut buf), Ok(None), "{name}: prefix of {len}");
        assert_eq!(&buf[..], &case.bytes[..len], "{name}: prefix of {len} was touched");
        assert_eq!(decoder.version(), case.version, "{name}: version changed early");
        buf.extend_from_slice(&[byte]);
    }
    assert_eq!(decoder.decode(&mut buf), Ok(Some(case.packet.clone())), "{name}: complete");
    assert!(buf.is_empty());
}

macro_rules! prefix_tests {
    ($($name:ident),* $(,)?) => {
        /// One test per vector: see `check_prefixes`.
        mod incomplete_prefix {
            use super::*;
            $(
                #[test]
                fn $name() {
                    for case in vectors::$name() {
                        check_prefixes(stringify!($name), &case);
                    }
                }
            )*
        }
    };
}

vectors::for_each_case!(prefix_tests);

/// MQTT 3.1.1 section 3.1.2.2 / 5.0 section 3.1.2.2: the protocol level of
/// CONNECT decides how the rest of the connection is read. A server decoder
/// starts as 3.1.1; after a 5.0 CONNECT a PUBACK of remaining length 3 is a
/// v5 PUBACK with a reason code, which in 3.1.1 would have a trailing byte.
#[test]
fn connect_switches_the_decoder_version() {
    let puback = [0x40, 0x03, 0x00, 0x0A, 0x10];
    let expected = PubResponse {
        reason: ReasonCode::NoMatchingSubscribers,
        ..PubResponse::new(PacketId::new(10).unwrap())
    };

    let mut decoder = Decoder::new(V3_1_1, MAX);
    assert_eq!(
        decoder.decode(&mut BytesMut::from(&puback[..])),
        Err(DecodeError::TrailingBytes(1)),
        "3.1.1 reading a v5 PUBACK"
    );

    let mut decoder = Decoder::new(V3_1_1, MAX);
    let mut buf = BytesMut::from(&vectors::v5_connect_figure_3_6()[0].bytes[..]);
    buf.extend_from_slice(&puback);
    assert!(matches!(decoder.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(decoder.version(), V5);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PubAck(expected))));
    assert!(buf.is_empty());
}

/// The switch goes both ways: after a 3.1.1 CONNECT, AUTH (type 15) is a
/// reserved packet type again [MQTT-2.1.2], and after a 3.1 CONNECT the
/// CONNACK byte 1 is reserved (MQTT 3.1 section 3.2).
#[test]
fn connect_switches_back_to_older_versions() {
    let mut decoder = Decoder::new(V5, MAX);
    let mut buf = BytesMut::from(&vectors::v311_connect_minimal()[0].bytes[..]);
    buf.extend_from_slice(&[0xF0, 0x00]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(decoder.version(), V3_1_1);
    assert_eq!(decoder.decode(&mut buf), Err(DecodeError::InvalidPacketType(15)));

    let mut decoder = Decoder::new(V5, MAX);
    let mut buf = BytesMut::from(&vectors::v31_connect()[0].bytes[..]);
    buf.extend_from_slice(&[0x20, 0x02, 0x01, 0x00]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(decoder.version(), V3_1);
    assert_eq!(decoder.decode(&mut buf), Err(DecodeError::InvalidConnAckFlags));
}

/// `set_version` is the other way in (a client decoder learns the version
/// from the CONNECT it sent).
#[test]
fn set_version_changes_how_packets_are_read() {
    let mut decoder = Decoder::new(V3_1_1, MAX);
    decoder.set_version(V5);
    assert_eq!(decoder.version(), V5);
    assert_eq!(
        decoder.decode(&mut BytesMut::from(&[0xE0, 0x01, 0x04][..])),
        Ok(Some(Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            properties: DisconnectProperties::default(),
        })))
    );
}

/// The address range of a buffer, taken before the decoder splits it.
#[derive(Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
}

impl Region {
    fn of(bytes: &[u8]) -> Self {
        let start = bytes.as_ptr() as usize;
        Self { start, end: start + bytes.len() }
    }

    /// Whether `part` (non-empty) lies inside this range.
    fn holds(self, part: &[u8]) -> bool {
        let at = part.as_ptr() as usize;
        !part.is_empty() && at >= self.start && at + part.len() <= self.end
    }
}

/// Payloads, strings and binary properties are slices of the read buffer,
/// not copies (design: "payload as `Bytes` (no copy)"); so are topic names
/// longer than `TopicName::INLINE_CAPACITY`, while shorter ones are copied
/// into the name.
#[test]
fn decoded_fields_share_the_read_buffer() {
    let case = &vectors::v5_publish_every_property()[0];
    let mut buf = BytesMut::with_capacity(case.bytes.len() + 2);
    buf.extend_from_slice(&case.bytes);
    buf.extend_from_slice(&[0xC0, 0x00]);
    let region = Region::of(&buf);
    let Ok(Some(Packet::Publish(publish))) = Decoder::new(V5, MAX).decode(&mut buf) else {
        panic!("not a PUBLISH")
    };
    assert!(region.holds(&publish.payload), "payload copied");
    assert!(publish.topic.as_str().len() <= TopicName::INLINE_CAPACITY);
    assert!(!region.holds(publish.topic.as_str().as_bytes()), "short topic not inline");
    let correlation = publish.properties.correlation_data.as_ref().unwrap();
    assert!(region.holds(correlation), "correlation data copied");
    let (name, value) = &publish.properties.user_properties[0];
    assert!(
        region.holds(name.as_bytes()) && region.holds(value.as_bytes()),
        "user property copied"
    );
    // The next packet is still in the buffer, after the PUBLISH.
    assert_eq!(&buf[..], &[0xC0, 0x00]);

    let case = &vectors::v5_connect_every_property()[0];
    let bytes = Bytes::copy_from_slice(&case.bytes);
    let region = Region::of(&bytes);
    let Ok(Packet::Connect(connect)) = decode_packet(bytes.clone(), V5) else {
        panic!("not a CONNECT")
    };
    assert!(region.holds(connect.password.as_ref().unwrap()), "password copied");
    assert!(region.holds(&connect.will.as_ref().unwrap().payload), "will payload copied");
    assert!(region.holds(connect.client_id.as_bytes()), "client id copied");
}

/// MQTT 5.0 section 3.1.2.11.4 and [MQTT-3.2.2-15]: a packet above the
/// maximum is refused as soon as its fixed header is complete, before its
/// body is buffered; the fixed header alone is enough.
#[test]
fn packet_too_large_is_refused_on_the_fixed_header() {
    // PUBLISH, remaining length 128 (0x80 0x01): 131 bytes in all.
    let mut decoder = Decoder::new(V5, 100);
    let mut buf = BytesMut::from(&[0x30, 0x80][..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None), "remaining length not complete yet");
    buf.extend_from_slice(&[0x01]);
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(error, DecodeError::PacketTooLarge { size: 131, max: 100 });
    assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);

    // The largest remaining length (table 1.5.5: FF FF FF 7F) with a small
    // maximum: refused without waiting for 256 MiB.
    let mut decoder = Decoder::new(V3_1_1, MAX);
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 268_435_460, max: MAX })
    );
}

/// The maximum counts the whole packet, fixed header included (MQTT 5.0
/// section 3.1.2.11.4: "the total number of bytes in an MQTT Control
/// Packet"): a packet of exactly the maximum passes, one byte more fails.
#[test]
fn packet_size_limit_is_inclusive_and_counts_the_fixed_header() {
    // PUBLISH "a/b" with a 5-byte payload: 2 + 5 + 5 = 12 bytes in all.
    let bytes = cat(&[&[0x30, 10], b"\x00\x03a/b", b"hello"]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(Decoder::new(V3_1_1, 12).decode(&mut buf), Ok(Some(Packet::Publish(_)))));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Decoder::new(V3_1_1, 11).decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 12, max: 11 })
    );
}

/// An invalid first byte is refused at once, before the remaining length
/// arrives [MQTT-2.1.3-1] / MQTT 3.1.1 table 2.1.
#[test]
fn invalid_first_byte_is_refused_at_once() {
    let mut decoder = Decoder::new(V3_1_1, MAX);
    assert_eq!(
        decoder.decode(&mut BytesMut::from(&[0x00][..])),
        Err(DecodeError::InvalidPacketType(0))
    );
    assert_eq!(
        decoder.decode(&mut BytesMut::from(&[0x60][..])),
        Err(DecodeError::InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0 })
    );
}

#[test]
fn long_topic_names_share_the_read_buffer_and_short_ones_are_copied() {
    for len in [1, TopicName::INLINE_CAPACITY, TopicName::INLINE_CAPACITY + 1, 300] {
        let topic = "t".repeat(len);
        // 3.1.1 PUBLISH, QoS 0: topic, then a 2-byte payload.
        let remaining = 2 + len + 2;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x30]);
        if remaining < 128 {
            buf.extend_from_slice(&[remaining as u8]);
        } else {
            buf.extend_from_slice(&[(remaining % 128) as u8 | 0x80, (remaining / 128) as u8]);
        }
        buf.extend_from_slice(&(len as u16).to_be_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(b"hi");
        let region = Region::of(&buf);
        let Ok(Some(Packet::Publish(publish))) =
            Decoder::new(ProtocolVersion::V3_1_1, MAX).decode(&mut buf)
        else {
            panic!("not a PUBLISH")
        };
        assert_eq!(publish.topic.as_str(), topic);
        assert_eq!(&publish.payload[..], b"hi");
        let shared = region.holds(publish.topic.as_str().as_bytes());
        assert_eq!(shared, len > TopicName::INLINE_CAPACITY, "topic of {len} bytes");
    }
}
