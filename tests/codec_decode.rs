//! Byte-literal DECODE tests: every packet type of MQTT 3.1, 3.1.1 and 5.0,
//! written by hand from the specifications' figures (the vectors of
//! `tests/common/codec_vectors.rs`), plus the forms that only a decoder meets
//! (the non-canonical v5 short forms, an aliased PUBLISH with an empty topic,
//! properties in another order).

#[path = "common/codec_vectors.rs"]
mod vectors;

use bytes::{Bytes, BytesMut};
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;
use std::num::NonZeroU32;
use vectors::{b, cat, pid, s, topic, user, Case};

const MAX: u32 = 1 << 20;

/// Decodes `case` both ways (one complete packet, and through a resumable
/// `Decoder` that must consume exactly the packet) and compares.
fn check_decode(name: &str, case: &Case) {
    let got = decode_packet(Bytes::copy_from_slice(&case.bytes), case.version);
    assert_eq!(got.as_ref(), Ok(&case.packet), "{name}: decode_packet");

    let mut decoder = Decoder::new(case.version, MAX);
    let mut buf = BytesMut::from(&case.bytes[..]);
    let got = decoder.decode(&mut buf);
    assert_eq!(got, Ok(Some(case.packet.clone())), "{name}: Decoder::decode");
    assert!(buf.is_empty(), "{name}: {} bytes left unconsumed", buf.len());
    // A decoded CONNECT switches the decoder to its version.
    if let Packet::Connect(connect) = &case.packet {
        assert_eq!(decoder.version(), connect.version, "{name}: decoder version after CONNECT");
    } else {
        assert_eq!(decoder.version(), case.version, "{name}: decoder version");
    }
}

macro_rules! decode_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for case in vectors::$name() {
                    check_decode(stringify!($name), &case);
                }
            }
        )*
    };
}

vectors::for_each_case!(decode_tests);

/// The vectors themselves: each remaining length (MQTT 3.1.1 section 2.2.3 /
/// MQTT 5.0 section 2.1.4) must equal the bytes that follow it, so a wrong
/// hand count cannot hide behind an equally wrong decoder.
#[test]
fn vectors_are_framed_consistently() {
    let cases = vectors::all_cases();
    assert!(cases.len() >= 60);
    for (name, case) in &cases {
        let mut value = 0usize;
        let mut len = 0;
        for (i, byte) in case.bytes[1..].iter().enumerate() {
            value |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                len = i + 1;
                break;
            }
        }
        assert_eq!(value, case.bytes.len() - 1 - len, "{name}: remaining length");
    }
}

/// Every packet type appears in every version that has it (AUTH only in 5.0).
#[test]
fn vectors_cover_every_packet_type_of_every_version() {
    let cases = vectors::all_cases();
    for version in [V3_1, V3_1_1, V5] {
        for type_bits in 1..=15u8 {
            let Some(packet_type) = PacketType::from_u8(type_bits) else { continue };
            let present = cases
                .iter()
                .any(|(_, c)| c.version == version && c.packet.packet_type() == packet_type);
            let expected = packet_type != PacketType::Auth || version == V5;
            assert_eq!(present, expected, "{packet_type:?} in {version:?}");
        }
    }
}

fn decode_v5(bytes: &[u8]) -> Packet {
    decode_packet(Bytes::copy_from_slice(bytes), V5).expect("valid v5 packet")
}

/// MQTT 5.0 section 3.4.2.1: a PUBACK of remaining length 3 with reason
/// Success (the encoder would omit it, but a peer may send it).
#[test]
fn v5_puback_remaining_length_3_with_success() {
    let got = decode_v5(&[0x40, 0x03, 0x00, 0x0A, 0x00]);
    assert_eq!(got, Packet::PubAck(PubResponse::new(pid(10))));
}

/// MQTT 5.0 section 3.4.2.2.1: remaining length 4, reason and an empty
/// property block.
#[test]
fn v5_puback_remaining_length_4_with_empty_properties() {
    let got = decode_v5(&[0x40, 0x04, 0x00, 0x0A, 0x10, 0x00]);
    let expected =
        PubResponse { reason: ReasonCode::NoMatchingSubscribers, ..PubResponse::new(pid(10)) };
    assert_eq!(got, Packet::PubAck(expected));
}

/// MQTT 5.0 section 3.6.2.1: PUBREL and PUBCOMP share the short forms.
#[test]
fn v5_pubrel_and_pubcomp_short_forms() {
    assert_eq!(decode_v5(&[0x62, 0x02, 0x00, 0x01]), Packet::PubRel(PubResponse::new(pid(1))));
    assert_eq!(
        decode_v5(&[0x70, 0x03, 0x00, 0x01, 0x00]),
        Packet::PubComp(PubResponse::new(pid(1)))
    );
}

/// MQTT 5.0 figure 3-24 (DISCONNECT variable header example): reason 0 and
/// property length 0, remaining length 2.
#[test]
fn v5_disconnect_figure_3_24() {
    assert_eq!(decode_v5(&[0xE0, 0x02, 0x00, 0x00]), Packet::Disconnect(Disconnect::default()));
}

/// MQTT 5.0 section 3.14.2.1: remaining length 1 holding reason 0x00.
#[test]
fn v5_disconnect_remaining_length_1_success() {
    assert_eq!(decode_v5(&[0xE0, 0x01, 0x00]), Packet::Disconnect(Disconnect::default()));
}

/// MQTT 5.0 section 3.15.2.1: AUTH with reason 0 and an empty property
/// block.
#[test]
fn v5_auth_remaining_length_2() {
    assert_eq!(decode_v5(&[0xF0, 0x02, 0x00, 0x00]), Packet::Auth(Box::default()));
}

/// MQTT 5.0 section 3.15.2.1: Re-authenticate (0x19) with a method.
#[test]
fn v5_auth_reauthenticate() {
    let bytes = cat(&[&[0xF0, 10, 0x19, 8], b"\x15\x00\x05SCRAM"]);
    let expected = Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            ..AuthProperties::default()
        },
    };
    assert_eq!(decode_v5(&bytes), Packet::Auth(Box::new(expected)));
}

/// MQTT 5.0 sections 3.3.2.1 and 3.3.2.3.4: with a Topic Alias the
/// topic name may be zero length; the session resolves it.
#[test]
fn v5_publish_empty_topic_with_alias() {
    let bytes = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'x'];
    let Packet::Publish(publish) = decode_v5(&bytes) else { panic!("not a PUBLISH") };
    assert!(publish.topic.is_empty());
    assert_eq!(publish.topic.as_str(), "");
    assert_eq!(publish.properties.topic_alias.map(|a| a.get()), Some(7));
    assert_eq!(publish.payload, b(b"x"));
    assert_eq!(publish.packet_id, None);
}

/// MQTT 5.0 section 3.3.2.3.4: a Topic Alias together with a non-empty topic
/// sets up the mapping; both come out.
#[test]
fn v5_publish_topic_and_alias() {
    let bytes = cat(&[&[0x30, 10], b"\x00\x03a/b", &[3, 0x23, 0x00, 0x01], b"p"]);
    let Packet::Publish(publish) = decode_v5(&bytes) else { panic!("not a PUBLISH") };
    assert_eq!(publish.topic, topic("a/b"));
    assert_eq!(publish.properties.topic_alias.map(|a| a.get()), Some(1));
}

/// MQTT 5.0 section 2.2.2.2: properties may come in any order; CONNACK
/// properties in reverse declaration order decode the same.
#[test]
fn v5_properties_in_any_order() {
    let bytes = cat(&[
        &[0x20, 20, 0x00, 0x00, 17],
        b"\x26\x00\x01k\x00\x01v", // user property
        b"\x1F\x00\x02ok",         // reason string
        &[0x22, 0x00, 0x10],       // topic alias maximum 16
        &[0x24, 0x00],             // maximum QoS 0
    ]);
    let expected = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            topic_alias_maximum: Some(16),
            maximum_qos: Some(QoS::AtMostOnce),
            reason_string: Some(s("ok")),
            user_properties: vec![user("k", "v")],
            ..ConnAckProperties::default()
        },
    };
    assert_eq!(decode_v5(&bytes), Packet::ConnAck(Box::new(expected)));
}

/// MQTT 5.0 section 3.8.2.1.2: the largest Subscription Identifier,
/// 268,435,455, a four-byte Variable Byte Integer (table 1.5.5 bound).
#[test]
fn v5_subscribe_largest_subscription_identifier() {
    let bytes =
        cat(&[&[0x82, 12, 0x00, 0x01, 5, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F], b"\x00\x01a", &[0]]);
    let Packet::Subscribe(subscribe) = decode_v5(&bytes) else { panic!("not a SUBSCRIBE") };
    assert_eq!(subscribe.properties.subscription_identifier, NonZeroU32::new(MAX_SUBSCRIPTION_ID));
}

/// MQTT 5.0 section 4.8.2: a shared subscription filter splits into share
/// name and filter.
#[test]
fn v5_shared_subscription_filter_parts() {
    let Packet::Subscribe(subscribe) =
        decode_v5(&vectors::v5_subscribe_options_and_shared()[0].bytes)
    else {
        panic!("not a SUBSCRIBE")
    };
    let shared = &subscribe.subscriptions[1].filter;
    assert!(shared.is_shared());
    assert_eq!(shared.share_name(), Some("g"));
    assert_eq!(shared.filter(), "s/#");
    assert!(!subscribe.subscriptions[0].filter.is_shared());
}

/// [MQTT-3.8.4-5] "If a Server receives a SUBSCRIBE packet that contains
/// multiple Topic Filters it MUST handle that packet as if it had received a
/// sequence of multiple SUBSCRIBE packets": a 5.0 filter that is UTF-8 but no
/// topic filter (`a/#/b`, `a+`, `$share/g`) is kept aside with its position
/// and options, for a 0x8F in its place; the valid ones decode as usual, and
/// the packet encodes back to the same bytes.
#[test]
fn v5_subscribe_keeps_invalid_filters_aside_with_their_positions() {
    let bytes = cat(&[
        &[0x82, 33, 0x00, 0x07, 0x00],
        b"\x00\x05a/#/b",
        &[0x01],
        b"\x00\x03x/y",
        &[0x02],
        b"\x00\x02a+",
        &[0x24],
        b"\x00\x08$share/g",
        &[0x00],
    ]);
    let Packet::Subscribe(subscribe) = decode_v5(&bytes) else { panic!("not a SUBSCRIBE") };
    assert_eq!(subscribe.filter_count(), 4);
    assert_eq!(subscribe.subscriptions.len(), 1);
    assert_eq!(subscribe.subscriptions[0].filter.as_str(), "x/y");
    let refused: Vec<_> =
        subscribe.refused.iter().map(|r| (r.position, &*r.text, r.error)).collect();
    assert_eq!(
        refused,
        [
            (0, "a/#/b", TopicError::MisplacedMultiLevelWildcard),
            (2, "a+", TopicError::MisplacedSingleLevelWildcard),
            (3, "$share/g", TopicError::InvalidSharedSubscription),
        ]
    );
    // Options are kept too: No Local and Retain Handling 2 on "a+".
    assert!(subscribe.refused[1].options.no_local);
    assert_eq!(subscribe.refused[1].options.retain_handling, RetainHandling::DoNotSend);
    let mut out = BytesMut::new();
    Packet::Subscribe(subscribe).encode(V5, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
    // The same filters in 3.1.1 close the connection: the packet is refused.
    let v311 = cat(&[&[0x82, 10, 0x00, 0x07], b"\x00\x05a/#/b", &[0x01]]);
    assert_eq!(
        decode_packet(Bytes::from(v311), V3_1_1),
        Err(DecodeError::InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard))
    );
}

/// [MQTT-3.10.4-6] the same for UNSUBSCRIBE: the invalid filter is kept
/// aside for a 0x8F in the UNSUBACK.
#[test]
fn v5_unsubscribe_keeps_invalid_filters_aside_with_their_positions() {
    let bytes = cat(&[&[0xA2, 10, 0x00, 0x03, 0x00], b"\x00\x01t", b"\x00\x02#a"]);
    let Packet::Unsubscribe(unsubscribe) = decode_v5(&bytes) else { panic!("not UNSUBSCRIBE") };
    assert_eq!(unsubscribe.filters.len(), 1);
    assert_eq!(unsubscribe.refused.len(), 1);
    assert_eq!((unsubscribe.refused[0].position, &*unsubscribe.refused[0].text), (1, "#a"));
    let mut out = BytesMut::new();
    Packet::Unsubscribe(unsubscribe).encode(V5, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

/// MQTT 3.1.1 section 3.1.2.2: a server reads the CONNECT in the version it
/// announces, whatever version the decoder was created with.
#[test]
fn connect_is_read_in_its_own_version() {
    for case in vectors::all_cases().into_iter().map(|(_, c)| c) {
        let Packet::Connect(connect) = &case.packet else { continue };
        for start in [V3_1, V3_1_1, V5] {
            let got = decode_packet(Bytes::copy_from_slice(&case.bytes), start);
            assert_eq!(got.as_ref(), Ok(&case.packet), "{:?} read by {start:?}", connect.version);
        }
    }
}

/// MQTT 5.0 section 1.5.4 and [MQTT-1.5.4-3]: U+FEFF (EF BB BF) is a valid
/// character and is kept, not stripped; multi-byte UTF-8 in a topic.
#[test]
fn utf8_bom_and_multibyte_characters_are_kept() {
    let bytes = cat(&[&[0x30, 10, 0x00, 0x08], "\u{FEFF}é/ü".as_bytes()]);
    let Packet::Publish(publish) = decode_packet(Bytes::from(bytes), V3_1_1).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.topic.as_str(), "\u{FEFF}é/ü");
    assert!(publish.payload.is_empty());
}

// ---- MQTT 3.1 as 3.1 clients send it ----------------------------------------

/// Decodes `bytes` as the broker does on an MQTT 3.1 connection: through
/// `decode_packet` and through a `Decoder` switched to 3.1 by `set_version`.
fn decode_v31(bytes: &[u8]) -> Packet {
    let got = decode_packet(Bytes::copy_from_slice(bytes), V3_1).expect("valid 3.1 packet");
    let mut decoder = Decoder::new(V3_1_1, MAX);
    decoder.set_version(V3_1);
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(got.clone())), "Decoder::decode");
    assert!(buf.is_empty());
    got
}

/// MQTT 3.1 section 2.1 (DUP) and 3.6 (PUBREL: QoS 1): a re-sent PUBREL
/// carries DUP=1, first byte 0x6A; 3.1.1 forbids it [MQTT-3.6.1-1].
#[test]
fn v31_pubrel_with_dup_is_accepted() {
    assert_eq!(decode_v31(&[0x6A, 0x02, 0x00, 0x01]), Packet::PubRel(PubResponse::new(pid(1))));
}

/// MQTT 3.1 sections 3.8 and 3.10: SUBSCRIBE and UNSUBSCRIBE use QoS 1 and
/// carry DUP=1 when re-sent (0x8A, 0xAA); 3.1.1 forbids it
/// [MQTT-3.8.1-1], [MQTT-3.10.1-1].
#[test]
fn v31_subscribe_and_unsubscribe_with_dup_are_accepted() {
    let Packet::Subscribe(subscribe) = decode_v31(b"\x8A\x06\x00\x07\x00\x01t\x01") else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(subscribe.packet_id, pid(7));
    assert_eq!(subscribe.subscriptions[0].filter.as_str(), "t");
    assert_eq!(subscribe.subscriptions[0].options.qos, QoS::AtLeastOnce);
    let Packet::Unsubscribe(unsubscribe) = decode_v31(b"\xAA\x05\x00\x08\x00\x01t") else {
        panic!("not an UNSUBSCRIBE")
    };
    assert_eq!(unsubscribe.packet_id, pid(8));
    assert_eq!(unsubscribe.filters[0].as_str(), "t");
}

/// MQTT 3.1 section 3.1 (Connect flags): bit 0 is reserved but, unlike
/// 3.1.1 [MQTT-3.1.2-3], not required to be 0. A 3.1 CONNECT with it set is
/// read, by a decoder that starts in 3.1.1 as the broker's does.
#[test]
fn v31_connect_with_the_reserved_flag_is_accepted() {
    let bytes = b"\x10\x11\x00\x06MQIsdp\x03\x03\x00\x3C\x00\x03c31";
    let mut decoder = Decoder::new(V3_1_1, MAX);
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Packet::Connect(connect))) = decoder.decode(&mut buf) else {
        panic!("3.1 CONNECT with bit 0 set refused")
    };
    assert_eq!(connect.version, V3_1);
    assert!(connect.clean_start);
    assert_eq!(&*connect.client_id, "c31");
    assert_eq!(decoder.version(), V3_1);
    // The DUP PUBREL that follows on the same connection is read too.
    buf.extend_from_slice(&[0x6A, 0x02, 0x00, 0x01]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PubRel(PubResponse::new(pid(1))))));
}
