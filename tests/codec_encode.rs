//! Byte-literal ENCODE tests: `Packet::encode` must write exactly the
//! hand-written bytes of every vector (`tests/common/codec_vectors.rs`), and
//! `encoded_len` must equal what it writes. Then what only an encoder does:
//! drop the fields a version cannot carry, map 5.0 reason codes onto 3.x
//! return codes, size the remaining length, and refuse packets no receiver
//! may accept - leaving the buffer untouched.

#[path = "common/codec_vectors.rs"]
mod vectors;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;
use smallvec::smallvec;
use std::num::{NonZeroU16, NonZeroU32};
use vectors::{b, cat, filter, pid, s, topic, user, Case};

fn encode(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf)?;
    Ok(buf.to_vec())
}

/// Encodes `case` and compares with its bytes: alone, appended to bytes
/// already in the buffer, and (PUBLISH) through the `Publish::encode` fast
/// path.
fn check_encode(name: &str, case: &Case) {
    let len = case.packet.encoded_len(case.version);
    assert_eq!(len, Ok(case.bytes.len()), "{name}: encoded_len");

    let mut buf = BytesMut::new();
    case.packet.encode(case.version, &mut buf).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&buf[..], &case.bytes[..], "{name}: encode");

    let mut buf = BytesMut::from(&b"\xAA\xBB"[..]);
    case.packet.encode(case.version, &mut buf).unwrap();
    assert_eq!(&buf[..2], b"\xAA\xBB", "{name}: earlier bytes overwritten");
    assert_eq!(&buf[2..], &case.bytes[..], "{name}: encode after other bytes");

    if let Packet::Publish(publish) = &case.packet {
        assert_eq!(publish.encoded_len(case.version), Ok(case.bytes.len()), "{name}");
        let mut buf = BytesMut::new();
        publish.encode(case.version, &mut buf).unwrap();
        assert_eq!(&buf[..], &case.bytes[..], "{name}: Publish::encode");
    }
}

macro_rules! encode_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for case in vectors::$name() {
                    check_encode(stringify!($name), &case);
                }
            }
        )*
    };
}

vectors::for_each_case!(encode_tests);

/// Every vector: the bytes come out the same however many packets were
/// written before (a connection frames many packets into one buffer, design
/// "glommio notes").
#[test]
fn all_vectors_in_one_buffer() {
    let cases = vectors::all_cases();
    let mut buf = BytesMut::new();
    let mut expected = Vec::new();
    for (_, case) in &cases {
        case.packet.encode(case.version, &mut buf).unwrap();
        expected.extend_from_slice(&case.bytes);
    }
    assert_eq!(&buf[..], &expected[..]);
}

/// MQTT 3.1.1 / 5.0 section 3.1.2.2: a CONNECT announces its own version; the encoder writes it
/// in that version whatever the connection's version is.
#[test]
fn connect_is_written_in_its_own_version() {
    for (name, case) in vectors::all_cases() {
        if let Packet::Connect(_) = case.packet {
            for version in [V3_1, V3_1_1, V5] {
                assert_eq!(encode(&case.packet, version), Ok(case.bytes.clone()), "{name}");
            }
        }
    }
}

/// MQTT 5.0 sections 3.3.2.1 and 3.3.2.3.4: an aliased PUBLISH has a
/// zero-length topic name. A `TopicName` cannot be empty outside the codec,
/// so the packet comes from decoding the hand-written bytes.
#[test]
fn v5_publish_with_alias_and_empty_topic() {
    let bytes = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'x'];
    let packet = decode_packet(Bytes::copy_from_slice(&bytes), V5).unwrap();
    assert_eq!(packet.encoded_len(V5), Ok(bytes.len()));
    assert_eq!(encode(&packet, V5), Ok(bytes.to_vec()));

    // Without the alias, or before 5.0, the empty name is refused
    // ([MQTT-4.7.3-1], MQTT 5.0 section 3.3.2.1).
    let Packet::Publish(mut publish) = packet else { unreachable!() };
    assert_eq!(encode(&Packet::Publish(publish.clone()), V3_1_1), Err(EncodeError::EmptyTopic));
    publish.properties.make_mut().topic_alias = None;
    assert_eq!(encode(&Packet::Publish(publish), V5), Err(EncodeError::EmptyTopic));
}

fn publish_a_b(payload: Bytes) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: None,
        properties: BoxedPublishProperties::none(),
        payload,
    }
}

// ---- What 3.1 / 3.1.1 cannot carry ------------------------------------------

/// MQTT 3.1.1 section 3.3.2: no properties before 5.0; the v5 properties of
/// a forwarded message are not written to a 3.1.1 subscriber.
#[test]
fn v311_publish_drops_properties() {
    let mut case = vectors::v5_publish_every_property().remove(0);
    let Packet::Publish(publish) = &mut case.packet else { unreachable!() };
    publish.payload = b(b"hello");
    let expected = cat(&[&[0x3B, 12], b"\x00\x03a/b", &[0x00, 0x0A], b"hello"]);
    assert_eq!(encode(&case.packet, V3_1_1), Ok(expected.clone()));
    assert_eq!(case.packet.encoded_len(V3_1_1), Ok(expected.len()));
}

/// MQTT 3.1.1 sections 3.4-3.7: the acknowledgements are the packet id only
/// (remaining length 2); a 5.0 reason code and properties are not written.
#[test]
fn v311_acks_drop_reason_and_properties() {
    let Packet::PubAck(response) = vectors::v5_puback_every_property().remove(0).packet else {
        unreachable!()
    };
    for (packet, first) in [
        (Packet::PubAck(response.clone()), 0x40),
        (Packet::PubRec(response.clone()), 0x50),
        (Packet::PubRel(response.clone()), 0x62),
        (Packet::PubComp(response), 0x70),
    ] {
        assert_eq!(encode(&packet, V3_1_1), Ok(vec![first, 0x02, 0x00, 0x0A]), "{packet:?}");
        assert_eq!(encode(&packet, V3_1), Ok(vec![first, 0x02, 0x00, 0x0A]), "{packet:?}");
    }
}

/// MQTT 3.1.1 section 3.14: DISCONNECT is a fixed header only.
#[test]
fn v311_disconnect_drops_reason_and_properties() {
    let packet = vectors::v5_disconnect_every_property().remove(0).packet;
    assert_eq!(encode(&packet, V3_1_1), Ok(vec![0xE0, 0x00]));
}

/// MQTT 3.1.1 figure 3.21 / [MQTT-3-8.3-4]: only the requested QoS is
/// written, the upper six bits are 0; no properties.
#[test]
fn v311_subscribe_writes_only_the_qos() {
    let packet = Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: SubscribeProperties {
            subscription_identifier: NonZeroU32::new(7),
            user_properties: vec![user("k", "v")],
        },
        subscriptions: smallvec![Subscription {
            filter: filter("a/+"),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
    });
    let expected = cat(&[&[0x82, 8], &[0x00, 0x0A], b"\x00\x03a/+", &[0x02]]);
    assert_eq!(encode(&packet, V3_1_1), Ok(expected));
}

/// MQTT 3.1.1 section 3.11: UNSUBACK carries no reason codes.
#[test]
fn v311_unsuback_drops_reasons() {
    let packet = vectors::v5_unsuback().remove(0).packet;
    assert_eq!(encode(&packet, V3_1_1), Ok(vec![0xB0, 0x02, 0x00, 0x0C]));
}

/// MQTT 3.1.1 section 3.2: CONNACK is two bytes; the 5.0 properties are not
/// written.
#[test]
fn v311_connack_drops_properties() {
    let packet = vectors::v5_connack_every_property().remove(0).packet;
    assert_eq!(encode(&packet, V3_1_1), Ok(vec![0x20, 0x02, 0x01, 0x00]));
}

/// MQTT 3.1 section 3.2: byte 1 of CONNACK is reserved, so Session Present
/// (3.1.1 and later) is not written.
#[test]
fn v31_connack_has_no_session_present() {
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    }));
    assert_eq!(encode(&packet, V3_1), Ok(vec![0x20, 0x02, 0x00, 0x00]));
    assert_eq!(encode(&packet, V3_1_1), Ok(vec![0x20, 0x02, 0x01, 0x00]));
}

/// MQTT 3.1.1 table 3.1: the six return codes; a 5.0-only refusal becomes
/// the closest one (3 Server unavailable, or 5 Not authorized).
#[test]
fn v311_connack_maps_v5_reasons_to_return_codes() {
    for (reason, code) in [
        (ReasonCode::Success, 0),
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerUnavailable, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
        (ReasonCode::NotAuthorized, 5),
        (ReasonCode::ServerBusy, 3),
        (ReasonCode::QuotaExceeded, 3),
        (ReasonCode::Banned, 5),
        (ReasonCode::BadAuthenticationMethod, 5),
    ] {
        let packet = Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        }));
        assert_eq!(encode(&packet, V3_1_1), Ok(vec![0x20, 0x02, 0x00, code]), "{reason:?}");
    }
}

/// [MQTT-3.9.3-2] (3.1.1): SUBACK return codes are 0x00-0x02 or 0x80; every
/// 5.0 failure is written as 0x80.
#[test]
fn v311_suback_maps_failures_to_0x80() {
    let packet = Packet::SubAck(SubAck {
        packet_id: pid(1),
        properties: AckProperties { reason_string: Some(s("no")), user_properties: vec![] },
        reasons: smallvec![
            ReasonCode::GrantedQoS1,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::QuotaExceeded,
            ReasonCode::GRANTED_QOS_0,
        ],
    });
    assert_eq!(encode(&packet, V3_1_1), Ok(vec![0x90, 0x06, 0x00, 0x01, 0x01, 0x80, 0x80, 0x00]));
}

// ---- Remaining length ------------------------------------------------------

/// MQTT 3.1.1 table 2.4 / MQTT 5.0 table 1.5.5: the remaining length takes
/// 1, 2, 3 or 4 bytes at its boundaries, always in the minimal form
/// [MQTT-1.5.5-1]; `encoded_len` counts the header.
#[test]
fn remaining_length_boundaries() {
    let boundaries: [(usize, &[u8]); 6] = [
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    ];
    for (remaining, header) in boundaries {
        // Topic "a/b" is 5 bytes; the payload fills the rest.
        let packet = Packet::Publish(publish_a_b(Bytes::from(vec![b'p'; remaining - 5])));
        let bytes = encode(&packet, V3_1_1).unwrap();
        assert_eq!(bytes[0], 0x30);
        assert_eq!(&bytes[1..1 + header.len()], header, "remaining length {remaining}");
        assert_eq!(&bytes[1 + header.len()..][..5], b"\x00\x03a/b");
        assert_eq!(bytes.len(), 1 + header.len() + remaining);
        assert_eq!(packet.encoded_len(V3_1_1), Ok(bytes.len()));
    }
}

/// MQTT 5.0 section 2.1.4 (table 1.5.5): the remaining length is at most
/// 268,435,455. At the bound the size is known; one byte more cannot be
/// encoded, and nothing is written.
#[test]
fn packet_larger_than_the_largest_remaining_length() {
    // Untouched zeroed memory: the payload is never read by these checks.
    let at_bound = Packet::Publish(publish_a_b(Bytes::from(vec![0u8; 268_435_455 - 5])));
    assert_eq!(at_bound.encoded_len(V3_1_1), Ok(1 + 4 + 268_435_455));
    drop(at_bound);

    let too_large = Packet::Publish(publish_a_b(Bytes::from(vec![0u8; 268_435_456 - 5])));
    assert_eq!(too_large.encoded_len(V3_1_1), Err(EncodeError::PacketTooLarge));
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(too_large.encode(V3_1_1, &mut buf), Err(EncodeError::PacketTooLarge));
    assert_eq!(&buf[..], b"kept");
}

// ---- Packets no receiver may accept ----------------------------------------

/// Each packet is invalid in `version`; encoding fails with `error`, and the
/// buffer keeps exactly what it held.
fn check_refused(packet: Packet, version: ProtocolVersion, error: EncodeError) {
    assert_eq!(packet.encoded_len(version), Err(error.clone()), "{packet:?}");
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(packet.encode(version, &mut buf), Err(error), "{packet:?}");
    assert_eq!(&buf[..], b"kept", "{packet:?}: buffer changed");
}

/// MQTT 1.5.4 / 1.5.6: strings and binary data have a Two Byte Integer
/// length, so at most 65,535 bytes; one more cannot be written.
#[test]
fn fields_longer_than_65535_bytes_are_refused() {
    let long = ByteString::from("x".repeat(65_536));
    let mut connect = match vectors::v311_connect_minimal().remove(0).packet {
        Packet::Connect(connect) => *connect,
        _ => unreachable!(),
    };
    connect.client_id = ByteString::from("x".repeat(65_535));
    let packet = Packet::Connect(Box::new(connect.clone()));
    assert_eq!(packet.encoded_len(V3_1_1), Ok(1 + 3 + 10 + 2 + 65_535));

    connect.client_id = long.clone();
    check_refused(
        Packet::Connect(Box::new(connect.clone())),
        V3_1_1,
        EncodeError::FieldTooLong { field: Field::ClientId, len: 65_536 },
    );

    connect.client_id = s("c");
    connect.password = Some(Bytes::from(vec![0u8; 65_536]));
    connect.username = Some(s("u"));
    check_refused(
        Packet::Connect(Box::new(connect)),
        V3_1_1,
        EncodeError::FieldTooLong { field: Field::Password, len: 65_536 },
    );

    let mut publish = publish_a_b(Bytes::new());
    publish.properties.make_mut().user_properties = vec![(s("k"), long)];
    check_refused(
        Packet::Publish(publish),
        V5,
        EncodeError::FieldTooLong { field: Field::Property(PropertyId::UserProperty), len: 65_536 },
    );
}

/// [MQTT-2.1.2] (3.1.1 table 2.1): AUTH does not exist before 5.0.
#[test]
fn auth_before_v5_is_refused() {
    for version in [V3_1, V3_1_1] {
        check_refused(
            Packet::Auth(Box::default()),
            version,
            EncodeError::NotInVersion { packet: PacketType::Auth, version },
        );
    }
}

/// [MQTT-2.3.1-5] (3.1.1) / [MQTT-2.2.1-2] (5.0): a packet identifier exactly
/// when QoS > 0; [MQTT-3.3.1-2]: no DUP at QoS 0.
#[test]
fn publish_flags_and_packet_id_must_agree() {
    let mut publish = publish_a_b(Bytes::new());
    publish.qos = QoS::AtLeastOnce;
    check_refused(
        Packet::Publish(publish.clone()),
        V3_1_1,
        EncodeError::PacketIdMismatch { qos: QoS::AtLeastOnce, present: false },
    );
    publish.qos = QoS::AtMostOnce;
    publish.packet_id = Some(pid(1));
    check_refused(
        Packet::Publish(publish.clone()),
        V5,
        EncodeError::PacketIdMismatch { qos: QoS::AtMostOnce, present: true },
    );
    publish.packet_id = None;
    publish.dup = true;
    check_refused(Packet::Publish(publish), V3_1_1, EncodeError::DupWithQoS0);
}

/// [MQTT-3.8.3-3], [MQTT-3.10.3-2], [MQTT-3.9.3-2] (one code per filter) and
/// MQTT 5.0 section 3.11.3: no empty SUBSCRIBE, UNSUBSCRIBE, SUBACK or (5.0)
/// UNSUBACK.
#[test]
fn empty_lists_are_refused() {
    let subscribe = Subscribe {
        refused: Vec::new(),
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![],
    };
    check_refused(
        Packet::Subscribe(subscribe),
        V3_1_1,
        EncodeError::NoEntries(PacketType::Subscribe),
    );
    let unsubscribe = Unsubscribe {
        refused: Vec::new(),
        packet_id: pid(1),
        properties: UnsubscribeProperties::default(),
        filters: smallvec![],
    };
    check_refused(
        Packet::Unsubscribe(unsubscribe),
        V5,
        EncodeError::NoEntries(PacketType::Unsubscribe),
    );
    let sub_ack =
        SubAck { packet_id: pid(1), properties: AckProperties::default(), reasons: smallvec![] };
    check_refused(Packet::SubAck(sub_ack), V3_1, EncodeError::NoEntries(PacketType::SubAck));
    let unsub_ack =
        UnsubAck { packet_id: pid(1), properties: AckProperties::default(), reasons: smallvec![] };
    check_refused(
        Packet::UnsubAck(unsub_ack.clone()),
        V5,
        EncodeError::NoEntries(PacketType::UnsubAck),
    );
    // Before 5.0 an UNSUBACK has no reason codes to be empty.
    assert_eq!(encode(&Packet::UnsubAck(unsub_ack), V3_1_1), Ok(vec![0xB0, 0x02, 0x00, 0x01]));
}

/// MQTT 5.0 section 2.4 and the per-packet tables ([MQTT-3.2.2-8],
/// [MQTT-3.6.2-1], ...): only reason codes the packet type defines.
#[test]
fn reason_codes_the_packet_does_not_define_are_refused() {
    let pubrel =
        PubResponse { reason: ReasonCode::NoMatchingSubscribers, ..PubResponse::new(pid(1)) };
    check_refused(
        Packet::PubRel(pubrel),
        V5,
        EncodeError::InvalidReasonCode {
            packet: PacketType::PubRel,
            reason: ReasonCode::NoMatchingSubscribers,
        },
    );
    let auth = Auth { reason: ReasonCode::NotAuthorized, properties: AuthProperties::default() };
    check_refused(
        Packet::Auth(Box::new(auth)),
        V5,
        EncodeError::InvalidReasonCode {
            packet: PacketType::Auth,
            reason: ReasonCode::NotAuthorized,
        },
    );
    let disconnect =
        Disconnect { reason: ReasonCode::GrantedQoS1, properties: DisconnectProperties::default() };
    check_refused(
        Packet::Disconnect(disconnect),
        V5,
        EncodeError::InvalidReasonCode {
            packet: PacketType::Disconnect,
            reason: ReasonCode::GrantedQoS1,
        },
    );
}

/// [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0): a refusing CONNACK has
/// Session Present 0.
#[test]
fn session_present_with_a_refusal_is_refused() {
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    }));
    check_refused(packet.clone(), V3_1_1, EncodeError::SessionPresentWithError);
    check_refused(packet, V5, EncodeError::SessionPresentWithError);
}

/// MQTT 5.0 sections 3.2.2.3.4 (Maximum QoS 0 or 1), 3.8.2.1.2 (Subscription
/// Identifier at most 268,435,455), 3.1.2.11.10 (Authentication Data needs a
/// method), [MQTT-3.8.3-4] (No Local on a shared subscription) and, in
/// 3.1.1, [MQTT-3.1.2-22] (a password needs a user name).
#[test]
fn invalid_values_are_refused() {
    let conn_ack = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..ConnAckProperties::default()
        },
    };
    check_refused(
        Packet::ConnAck(Box::new(conn_ack)),
        V5,
        EncodeError::InvalidPropertyValue(PropertyId::MaximumQoS),
    );

    let mut publish = publish_a_b(Bytes::new());
    publish.properties.make_mut().subscription_identifiers =
        smallvec![NonZeroU32::new(MAX_SUBSCRIPTION_ID + 1).unwrap()];
    check_refused(
        Packet::Publish(publish),
        V5,
        EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
    );

    let auth = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_data: Some(b(b"x")),
            ..AuthProperties::default()
        },
    };
    check_refused(Packet::Auth(Box::new(auth)), V5, EncodeError::AuthDataWithoutMethod);

    let subscribe = Subscribe {
        refused: Vec::new(),
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![Subscription {
            filter: filter("$share/g/a"),
            options: SubscriptionOptions { no_local: true, ..SubscriptionOptions::default() },
        }],
    };
    check_refused(
        Packet::Subscribe(subscribe.clone()),
        V5,
        EncodeError::NoLocalOnSharedSubscription,
    );
    // Before 5.0 the option does not exist and is not written.
    assert!(encode(&Packet::Subscribe(subscribe), V3_1_1).is_ok());

    let mut connect = match vectors::v311_connect_minimal().remove(0).packet {
        Packet::Connect(connect) => *connect,
        _ => unreachable!(),
    };
    connect.password = Some(b(b"pw"));
    check_refused(
        Packet::Connect(Box::new(connect.clone())),
        V3_1_1,
        EncodeError::PasswordWithoutUsername,
    );
    connect.version = V5;
    assert!(encode(&Packet::Connect(Box::new(connect)), V5).is_ok());
}

/// MQTT 5.0 section 3.3.2.3.4: a Topic Alias is a non-zero Two Byte
/// Integer; it is written as given.
#[test]
fn v5_topic_alias_maximum_value() {
    let mut publish = publish_a_b(Bytes::new());
    publish.properties.make_mut().topic_alias = NonZeroU16::new(u16::MAX);
    let expected = cat(&[&[0x30, 9], b"\x00\x03a/b", &[3, 0x23, 0xFF, 0xFF]]);
    assert_eq!(encode(&Packet::Publish(publish), V5), Ok(expected));
}
