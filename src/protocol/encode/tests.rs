//! Every expectation is a byte literal written by hand from the
//! specification's figures (fixed header section 2.1, then each packet's
//! variable header and payload), segment by segment, never taken from
//! the encoder's output.

use super::*;
use crate::protocol::decode_packet;
use smallvec::smallvec;

fn id(value: u16) -> PacketId {
    PacketId::new(value).unwrap()
}

fn name(value: &str) -> TopicName {
    TopicName::new(value).unwrap()
}

fn filter(value: &str) -> TopicFilter {
    TopicFilter::new(value).unwrap()
}

fn s(value: &str) -> ByteString {
    ByteString::from(value)
}

fn pair(key: &str, value: &str) -> (ByteString, ByteString) {
    (s(key), s(value))
}

/// Concatenates hand-written segments.
fn cat(segments: &[&[u8]]) -> Vec<u8> {
    segments.concat()
}

/// Encodes after some bytes already in the buffer (encode appends) and
/// checks the bytes, `encoded_len`, and the `Publish` fast path.
fn assert_bytes(packet: &Packet, version: ProtocolVersion, expected: &[u8]) {
    assert_eq!(packet.encoded_len(version), Ok(expected.len()), "encoded_len of {packet:?}");
    let mut buf = BytesMut::from(&b"before"[..]);
    packet.encode(version, &mut buf).unwrap();
    assert_eq!(&buf[..6], b"before");
    assert_eq!(&buf[6..], expected, "bytes of {packet:?}");
    // Through the generic path too: a PUBLISH is also a `Body` of
    // `Packet`, and both must agree.
    let mut generic = BytesMut::new();
    encode_frame(packet, version, &mut generic).unwrap();
    assert_eq!(&generic[..], expected);
    if let Packet::Publish(publish) = packet {
        assert_eq!(publish.encoded_len(version), Ok(expected.len()));
    }
}

/// [`assert_bytes`], and the (independent) decoder reads the bytes back
/// into the same packet.
fn assert_encodes(packet: &Packet, version: ProtocolVersion, expected: &[u8]) {
    assert_bytes(packet, version, expected);
    let decoded = decode_packet(Bytes::copy_from_slice(expected), version).unwrap();
    assert_eq!(&decoded, packet);
}

/// The error, from both `encoded_len` and `encode`, and the buffer is
/// left untouched.
fn assert_error(packet: &Packet, version: ProtocolVersion, error: EncodeError) {
    assert_eq!(packet.encoded_len(version), Err(error.clone()));
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(packet.encode(version, &mut buf), Err(error));
    assert_eq!(&buf[..], b"kept");
}

fn connect(version: ProtocolVersion) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QoS, packet_id: Option<u16>, topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: name(topic),
        packet_id: packet_id.map(id),
        properties: BoxedPublishProperties::none(),
        payload: Bytes::from_static(payload),
    }
}

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---- CONNECT ----

#[test]
fn connect_v311_minimal() {
    // [MQTT-3.1.2-1] name "MQTT", [MQTT-3.1.2-2] level 4; flags: Clean
    // Session 0x02; keep alive 60; payload: client id "a".
    let expected = cat(&[
        &[0x10, 13],
        &[0x00, 0x04, b'M', b'Q', b'T', b'T'],
        &[0x04],
        &[0x02],
        &[0x00, 0x3C],
        &[0x00, 0x01, b'a'],
    ]);
    let packet = Packet::Connect(Box::new(connect(V311)));
    assert_encodes(&packet, V311, &expected);
    // The CONNECT is written in its own version, whatever the argument.
    assert_bytes(&packet, V5, &expected);
}

#[test]
fn connect_v31_with_will_user_name_and_password() {
    // MQTT 3.1: name "MQIsdp", level 3. Flags: user name 0x80, password
    // 0x40, will retain 0x20, will QoS 1 << 3, will flag 0x04, clean 0x02.
    let expected = cat(&[
        &[0x10, 30],
        &[0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p'],
        &[0x03],
        &[0xEE],
        &[0x00, 0x0A],
        &[0x00, 0x02, b'c', b'1'],
        &[0x00, 0x01, b'w'],
        &[0x00, 0x03, b'b', b'y', b'e'],
        &[0x00, 0x01, b'u'],
        &[0x00, 0x01, b'p'],
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        keep_alive: 10,
        client_id: s("c1"),
        will: Some(Will {
            topic: name("w"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
        ..connect(V31)
    }));
    assert_encodes(&packet, V31, &expected);
}

#[test]
fn connect_v5_with_every_property() {
    let properties = cat(&[
        &[0x11, 0x00, 0x00, 0x0E, 0x10], // Session Expiry Interval 3600
        &[0x21, 0x00, 0x14],             // Receive Maximum 20
        &[0x27, 0x00, 0x01, 0x00, 0x00], // Maximum Packet Size 65536
        &[0x22, 0x00, 0x0A],             // Topic Alias Maximum 10
        &[0x19, 0x01],                   // Request Response Information 1
        &[0x17, 0x00],                   // Request Problem Information 0
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'], // User Property k=v
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'w'], // User Property k=w, in order
        &[0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M'], // Authentication Method
        &[0x16, 0x00, 0x02, 0x01, 0x02], // Authentication Data
    ]);
    assert_eq!(properties.len(), 47);
    let will_properties = cat(&[
        &[0x18, 0x00, 0x00, 0x00, 0x05],             // Will Delay Interval 5
        &[0x01, 0x01],                               // Payload Format Indicator 1
        &[0x02, 0x00, 0x00, 0x00, 0x3C],             // Message Expiry Interval 60
        &[0x03, 0x00, 0x04, b't', b'e', b'x', b't'], // Content Type
        &[0x08, 0x00, 0x01, b'r'],                   // Response Topic
        &[0x09, 0x00, 0x01, 0xAA],                   // Correlation Data
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'], // User Property
    ]);
    assert_eq!(will_properties.len(), 34);
    // [MQTT-3.1.2-22] does not apply to 5.0: a password alone. Flags:
    // password 0x40, will QoS 2 << 3, will flag 0x04, no clean start.
    let expected = cat(&[
        &[0x10, 109],
        &[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x54, 0x01, 0x2C],
        &[47],
        &properties,
        &[0x00, 0x02, b'i', b'd'],
        &[34],
        &will_properties,
        &[0x00, 0x03, b'w', b'/', b't'],
        &[0x00, 0x01, 0xFF],
        &[0x00, 0x02, b'p', b'w'],
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: false,
        keep_alive: 300,
        client_id: s("id"),
        will: Some(Will {
            topic: name("w/t"),
            payload: Bytes::from_static(&[0xFF]),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some(s("text")),
                response_topic: Some(name("r")),
                correlation_data: Some(Bytes::from_static(&[0xAA])),
                user_properties: vec![pair("a", "b")],
            },
        }),
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(20),
            maximum_packet_size: NonZeroU32::new(65536),
            topic_alias_maximum: Some(10),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: vec![pair("k", "v"), pair("k", "w")],
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(&[1, 2])),
        },
    }));
    assert_encodes(&packet, V5, &expected);
}

#[test]
fn connect_password_without_user_name_before_v5() {
    // [MQTT-3.1.2-22]
    for version in [V31, V311] {
        let packet = Packet::Connect(Box::new(Connect {
            password: Some(Bytes::from_static(b"p")),
            ..connect(version)
        }));
        assert_error(&packet, version, EncodeError::PasswordWithoutUsername);
    }
}

#[test]
fn connect_auth_data_without_method() {
    // MQTT 5.0 section 3.1.2.11.10.
    let mut packet = connect(V5);
    packet.properties.authentication_data = Some(Bytes::from_static(b"x"));
    assert_error(&Packet::Connect(Box::new(packet)), V5, EncodeError::AuthDataWithoutMethod);
}

#[test]
fn strings_and_binary_are_at_most_65535_bytes() {
    // Sections 1.5.4 and 1.5.6: a Two Byte Integer length.
    let long = "x".repeat(65_535);
    let packet = Packet::Connect(Box::new(Connect { client_id: s(&long), ..connect(V311) }));
    // Type byte, a three-byte Remaining Length (65,547), the variable
    // header (name 6, level, flags, keep alive 2), the client id.
    assert_eq!(packet.encoded_len(V311), Ok(1 + 3 + 10 + 2 + 65_535));
    let too_long = "x".repeat(65_536);
    let packet = Packet::Connect(Box::new(Connect { client_id: s(&too_long), ..connect(V311) }));
    let error = EncodeError::FieldTooLong { field: Field::ClientId, len: 65_536 };
    assert_error(&packet, V311, error);

    let mut ack = PubResponse::new(id(1));
    ack.properties.user_properties.push(pair("k", &too_long));
    let field = Field::Property(PropertyId::UserProperty);
    assert_error(&Packet::PubAck(ack), V5, EncodeError::FieldTooLong { field, len: 65_536 });

    let mut conn = connect(V311);
    conn.username = Some(s("u"));
    conn.password = Some(Bytes::from(vec![0; 65_536]));
    let error = EncodeError::FieldTooLong { field: Field::Password, len: 65_536 };
    assert_error(&Packet::Connect(Box::new(conn)), V311, error);
}

// ---- CONNACK ----

#[test]
fn connack_v31_has_no_session_present_flag() {
    // MQTT 3.1: the first byte is unused (0), then the return code.
    let refused = ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    };
    assert_encodes(&Packet::ConnAck(Box::new(refused)), V31, &[0x20, 0x02, 0x00, 0x05]);
    let accepted = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    assert_bytes(&Packet::ConnAck(Box::new(accepted)), V31, &[0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn connack_v311() {
    // Session Present bit 0, then the return code (section 3.2.2.3).
    let accepted = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    assert_encodes(&Packet::ConnAck(Box::new(accepted)), V311, &[0x20, 0x02, 0x01, 0x00]);
    let refused = ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: ConnAckProperties::default(),
    };
    assert_encodes(&Packet::ConnAck(Box::new(refused)), V311, &[0x20, 0x02, 0x00, 0x04]);
    // A 5.0-only refusal becomes the closest return code, 3.
    let busy = ConnAck {
        session_present: false,
        reason: ReasonCode::ServerBusy,
        properties: ConnAckProperties::default(),
    };
    assert_bytes(&Packet::ConnAck(Box::new(busy)), V311, &[0x20, 0x02, 0x00, 0x03]);
}

#[test]
fn connack_refusal_never_has_session_present() {
    // [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0).
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    }));
    assert_error(&packet, V311, EncodeError::SessionPresentWithError);
    assert_error(&packet, V5, EncodeError::SessionPresentWithError);
}

#[test]
fn connack_v5_minimal_and_invalid_reason() {
    // Flags, reason code, Property Length 0.
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    }));
    assert_encodes(&packet, V5, &[0x20, 0x03, 0x00, 0x00, 0x00]);
    // [MQTT-3.2.2-8] 0x8B is a DISCONNECT code only.
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason: ReasonCode::ServerShuttingDown,
        properties: ConnAckProperties::default(),
    }));
    let error = EncodeError::InvalidReasonCode {
        packet: PacketType::ConnAck,
        reason: ReasonCode::ServerShuttingDown,
    };
    assert_error(&packet, V5, error);
}

#[test]
fn connack_v5_with_every_property() {
    let properties = cat(&[
        &[0x11, 0x00, 0x00, 0x00, 0x00], // Session Expiry Interval 0
        &[0x21, 0x00, 0x20],             // Receive Maximum 32
        &[0x24, 0x01],                   // Maximum QoS 1
        &[0x25, 0x00],                   // Retain Available 0
        &[0x27, 0x00, 0x10, 0x00, 0x00], // Maximum Packet Size 1 MiB
        &[0x12, 0x00, 0x06, b'a', b'u', b't', b'o', b'-', b'1'], // Assigned Client Id
        &[0x22, 0x00, 0x10],             // Topic Alias Maximum 16
        &[0x1F, 0x00, 0x02, b'o', b'k'], // Reason String
        &[0x26, 0x00, 0x01, b'x', 0x00, 0x01, b'y'], // User Property
        &[0x28, 0x01],                   // Wildcard Subscription Available
        &[0x29, 0x00],                   // Subscription Identifiers Available
        &[0x2A, 0x01],                   // Shared Subscription Available
        &[0x13, 0x00, 0xF0],             // Server Keep Alive 240
        &[0x1A, 0x00, 0x05, b'r', b'e', b's', b'p', b'/'], // Response Information
        &[0x1C, 0x00, 0x05, b'o', b't', b'h', b'e', b'r'], // Server Reference
        &[0x15, 0x00, 0x01, b'm'],       // Authentication Method
        &[0x16, 0x00, 0x01, 0x00],       // Authentication Data
    ]);
    assert_eq!(properties.len(), 74);
    let expected = cat(&[&[0x20, 77, 0x01, 0x00, 74], &properties]);
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(0),
            receive_maximum: NonZeroU16::new(32),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(1 << 20),
            assigned_client_identifier: Some(s("auto-1")),
            topic_alias_maximum: Some(16),
            reason_string: Some(s("ok")),
            user_properties: vec![pair("x", "y")],
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(240),
            response_information: Some(s("resp/")),
            server_reference: Some(s("other")),
            authentication_method: Some(s("m")),
            authentication_data: Some(Bytes::from_static(&[0])),
        },
    }));
    assert_encodes(&packet, V5, &expected);
}

#[test]
fn connack_maximum_qos_is_0_or_1() {
    // MQTT 5.0 section 3.2.2.3.4.
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..ConnAckProperties::default()
        },
    }));
    assert_error(&packet, V5, EncodeError::InvalidPropertyValue(PropertyId::MaximumQoS));
    let packet = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::AtMostOnce),
            ..ConnAckProperties::default()
        },
    }));
    assert_encodes(&packet, V5, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x00]);
}

// ---- PUBLISH ----

#[test]
fn publish_v311_qos0() {
    // [MQTT-2.3.1-5] No packet identifier at QoS 0; the payload has no
    // length prefix (section 3.3.3).
    let packet = Packet::Publish(publish(QoS::AtMostOnce, None, "a/b", b"hi"));
    let expected = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    assert_encodes(&packet, V311, &expected);
    assert_encodes(&packet, V31, &expected);
}

#[test]
fn publish_v311_flags() {
    // [MQTT-3.3.1] DUP 0x08, QoS 1 << 1, RETAIN 0x01.
    let mut p = publish(QoS::AtLeastOnce, Some(10), "t", b"x");
    p.dup = true;
    p.retain = true;
    let expected = [0x3B, 0x06, 0x00, 0x01, b't', 0x00, 0x0A, b'x'];
    assert_encodes(&Packet::Publish(p), V311, &expected);
    // QoS 2, empty payload.
    let p = publish(QoS::ExactlyOnce, Some(0x1234), "t", b"");
    assert_encodes(&Packet::Publish(p), V31, &[0x34, 0x05, 0x00, 0x01, b't', 0x12, 0x34]);
}

#[test]
fn publish_v311_leaves_out_properties() {
    let mut p = publish(QoS::AtMostOnce, None, "t", b"x");
    p.properties.make_mut().content_type = Some(s("text/plain"));
    p.properties.make_mut().user_properties.push(pair("a", "b"));
    assert_bytes(&Packet::Publish(p), V311, &[0x30, 0x04, 0x00, 0x01, b't', b'x']);
}

#[test]
fn publish_remaining_length_boundaries() {
    // Section 2.1.4, Table 2.4 / 1.5.5: 127 is one byte, 128 two,
    // 16,383 two, 16,384 three [MQTT-1.5.5-1] minimal encoding.
    for (payload_len, header) in [
        (124, &[0x30, 0x7F][..]),
        (125, &[0x30, 0x80, 0x01][..]),
        (16_380, &[0x30, 0xFF, 0x7F][..]),
        (16_381, &[0x30, 0x80, 0x80, 0x01][..]),
    ] {
        let payload = vec![0x55; payload_len];
        let expected = cat(&[header, &[0x00, 0x01, b't'], &payload]);
        let p =
            Publish { payload: Bytes::from(payload), ..publish(QoS::AtMostOnce, None, "t", b"") };
        assert_encodes(&Packet::Publish(p), V311, &expected);
    }
}

#[test]
fn publish_v5_without_properties() {
    // Property Length 0 is always present in a PUBLISH.
    let packet = Packet::Publish(publish(QoS::AtMostOnce, None, "t", b"x"));
    assert_encodes(&packet, V5, &[0x30, 0x05, 0x00, 0x01, b't', 0x00, b'x']);
}

#[test]
fn publish_v5_with_every_property() {
    let properties = cat(&[
        &[0x01, 0x01],                               // Payload Format Indicator 1
        &[0x02, 0x00, 0x00, 0x00, 0x64],             // Message Expiry Interval 100
        &[0x23, 0x00, 0x03],                         // Topic Alias 3
        &[0x08, 0x00, 0x02, b'r', b'e'],             // Response Topic
        &[0x09, 0x00, 0x03, 0x01, 0x02, 0x03],       // Correlation Data
        &[0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'2'], // User Property b=2
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1'], // User Property a=1: order kept
        &[0x0B, 0x01],                               // Subscription Identifier 1
        &[0x0B, 0xC8, 0x01],                         // Subscription Identifier 200
        &[0x03, 0x00, 0x01, b'c'],                   // Content Type
    ]);
    assert_eq!(properties.len(), 44);
    let expected = cat(&[
        &[0x32, 53],
        &[0x00, 0x03, b's', b'/', b'1'],
        &[0x00, 0x01],
        &[44],
        &properties,
        b"p",
    ]);
    let mut p = publish(QoS::AtLeastOnce, Some(1), "s/1", b"p");
    p.properties = PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(100),
        topic_alias: NonZeroU16::new(3),
        response_topic: Some(name("re")),
        correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
        user_properties: vec![pair("b", "2"), pair("a", "1")],
        subscription_identifiers: smallvec![
            NonZeroU32::new(1).unwrap(),
            NonZeroU32::new(200).unwrap()
        ],
        content_type: Some(s("c")),
    }
    .into();
    assert_encodes(&Packet::Publish(p), V5, &expected);
}

#[test]
fn publish_v5_empty_topic_with_alias() {
    // MQTT 5.0 section 3.3.2.3.4: a zero-length name with a Topic Alias.
    let mut p = publish(QoS::AtMostOnce, None, "t", b"z");
    p.topic = TopicName::new_aliased(s("")).unwrap();
    p.properties.make_mut().topic_alias = NonZeroU16::new(7);
    let expected = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'z'];
    assert_encodes(&Packet::Publish(p.clone()), V5, &expected);
    // [MQTT-4.7.3-1] Not without the alias, and never before 5.0.
    assert_error(&Packet::Publish(p.clone()), V311, EncodeError::EmptyTopic);
    p.properties.make_mut().topic_alias = None;
    assert_error(&Packet::Publish(p), V5, EncodeError::EmptyTopic);
}

#[test]
fn publish_packet_id_exactly_when_qos_above_0() {
    // [MQTT-2.3.1-5] (3.1.1), [MQTT-2.2.1-2] (5.0).
    let missing = publish(QoS::AtLeastOnce, None, "t", b"");
    let error = EncodeError::PacketIdMismatch { qos: QoS::AtLeastOnce, present: false };
    assert_error(&Packet::Publish(missing), V311, error);
    let extra = publish(QoS::AtMostOnce, Some(1), "t", b"");
    let error = EncodeError::PacketIdMismatch { qos: QoS::AtMostOnce, present: true };
    assert_error(&Packet::Publish(extra), V5, error);
}

#[test]
fn publish_dup_only_above_qos_0() {
    // [MQTT-3.3.1-2]
    let mut p = publish(QoS::AtMostOnce, None, "t", b"");
    p.dup = true;
    assert_error(&Packet::Publish(p), V311, EncodeError::DupWithQoS0);
}

#[test]
fn publish_subscription_identifier_range() {
    // MQTT 5.0 section 3.8.2.1.2: 1 to 268,435,455.
    let mut p = publish(QoS::AtMostOnce, None, "t", b"");
    p.properties.make_mut().subscription_identifiers.push(NonZeroU32::new(268_435_456).unwrap());
    let error = EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier);
    assert_error(&Packet::Publish(p), V5, error);
}

#[test]
fn remaining_length_at_most_268_435_455() {
    // [MQTT-1.5.5] Measured without writing: 4,095 User Properties
    // sharing one 65,535-byte value (no copy), plus a payload that
    // brings the remaining length to exactly the maximum.
    let value = s(&"v".repeat(65_535));
    let one = 1 + 3 + 2 + 65_535;
    let mut p = publish(QoS::AtMostOnce, None, "t", b"");
    p.properties.make_mut().user_properties = vec![(s("k"), value); 4_095];
    let properties_len = 4_095 * one;
    let payload_len = MAX_VAR_INT as usize - (3 + 4 + properties_len);
    p.payload = Bytes::from(vec![0; payload_len]);
    let packet = Packet::Publish(p.clone());
    assert_eq!(packet.encoded_len(V5), Ok(1 + 4 + MAX_VAR_INT as usize));
    p.payload = Bytes::from(vec![0; payload_len + 1]);
    assert_error(&Packet::Publish(p), V5, EncodeError::PacketTooLarge);
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----

#[test]
fn pub_responses_v311() {
    // Sections 3.4-3.7: the packet id only; PUBREL flags 0b0010
    // [MQTT-3.6.1-1].
    let r = PubResponse::new(id(1));
    assert_encodes(&Packet::PubAck(r.clone()), V311, &[0x40, 0x02, 0x00, 0x01]);
    assert_encodes(&Packet::PubRec(r.clone()), V311, &[0x50, 0x02, 0x00, 0x01]);
    assert_encodes(&Packet::PubRel(r.clone()), V31, &[0x62, 0x02, 0x00, 0x01]);
    assert_encodes(&Packet::PubComp(r), V311, &[0x70, 0x02, 0x00, 0x01]);
    // A reason code has no place before 5.0.
    let mut r = PubResponse::new(id(0x0102));
    r.reason = ReasonCode::NoMatchingSubscribers;
    assert_bytes(&Packet::PubAck(r), V311, &[0x40, 0x02, 0x01, 0x02]);
}

#[test]
fn pub_responses_v5_short_forms() {
    // [MQTT-3.4.2.1] Success without properties: remaining length 2.
    let r = PubResponse::new(id(1));
    assert_encodes(&Packet::PubAck(r.clone()), V5, &[0x40, 0x02, 0x00, 0x01]);
    assert_encodes(&Packet::PubRel(r), V5, &[0x62, 0x02, 0x00, 0x01]);
    // Section 3.4.2.2.1: a reason without properties: remaining length 3,
    // no Property Length.
    let mut r = PubResponse::new(id(1));
    r.reason = ReasonCode::NoMatchingSubscribers;
    assert_encodes(&Packet::PubAck(r), V5, &[0x40, 0x03, 0x00, 0x01, 0x10]);
    let mut r = PubResponse::new(id(5));
    r.reason = ReasonCode::PacketIdentifierNotFound;
    assert_encodes(&Packet::PubRel(r), V5, &[0x62, 0x03, 0x00, 0x05, 0x92]);
}

#[test]
fn pub_responses_v5_with_properties() {
    let mut r = PubResponse::new(id(2));
    r.reason = ReasonCode::UnspecifiedError;
    r.properties.reason_string = Some(s("no"));
    let expected = [0x50, 0x09, 0x00, 0x02, 0x80, 0x05, 0x1F, 0x00, 0x02, b'n', b'o'];
    assert_encodes(&Packet::PubRec(r), V5, &expected);
    // Success is written when properties follow.
    let mut r = PubResponse::new(id(3));
    r.properties.user_properties.push(pair("k", "v"));
    let expected = [0x70, 0x0B, 0x00, 0x03, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'];
    assert_encodes(&Packet::PubComp(r), V5, &expected);
}

#[test]
fn pub_responses_v5_reason_codes_per_packet() {
    // [MQTT-3.6.2-1] PUBREL has Success and 0x92 only.
    let mut r = PubResponse::new(id(1));
    r.reason = ReasonCode::NoMatchingSubscribers;
    let error = EncodeError::InvalidReasonCode {
        packet: PacketType::PubRel,
        reason: ReasonCode::NoMatchingSubscribers,
    };
    assert_error(&Packet::PubRel(r.clone()), V5, error);
    // [MQTT-3.7.2-1] and PUBCOMP.
    let error = EncodeError::InvalidReasonCode {
        packet: PacketType::PubComp,
        reason: ReasonCode::NoMatchingSubscribers,
    };
    assert_error(&Packet::PubComp(r), V5, error);
}

// ---- SUBSCRIBE, SUBACK ----

#[test]
fn subscribe_v311() {
    // [MQTT-3.8.1-1] flags 0b0010; options byte = QoS only, reserved bits
    // 0 [MQTT-3.8.3-5] (5.0 options are not written).
    let packet = Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: id(10),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![
            Subscription {
                filter: filter("a/+"),
                options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            },
            Subscription {
                filter: filter("b/#"),
                options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
            },
        ],
    });
    let expected = cat(&[
        &[0x82, 14, 0x00, 0x0A],
        &[0x00, 0x03, b'a', b'/', b'+', 0x01],
        &[0x00, 0x03, b'b', b'/', b'#', 0x02],
    ]);
    assert_encodes(&packet, V311, &expected);

    let mut lossy = packet;
    if let Packet::Subscribe(subscribe) = &mut lossy {
        subscribe.subscriptions[0].options.no_local = true;
        subscribe.subscriptions[0].options.retain_handling = RetainHandling::DoNotSend;
    }
    assert_bytes(&lossy, V31, &expected);
}

#[test]
fn subscribe_v5_options_and_properties() {
    let properties = cat(&[
        &[0x0B, 0xFF, 0xFF, 0xFF, 0x7F], // Subscription Identifier 268,435,455
        &[0x26, 0x00, 0x01, b'u', 0x00, 0x01, b'v'], // User Property
    ]);
    // Section 3.8.3.1: QoS | No Local << 2 | Retain As Published << 3 |
    // Retain Handling << 4.
    let expected = cat(&[
        &[0x82, 32, 0x00, 0x01, 12],
        &properties,
        &[0x00, 0x0A],
        b"$share/g/t",
        &[0x29],
        &[0x00, 0x01, b'x', 0x14],
    ]);
    let packet = Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: id(1),
        properties: SubscribeProperties {
            subscription_identifier: NonZeroU32::new(268_435_455),
            user_properties: vec![pair("u", "v")],
        },
        subscriptions: smallvec![
            Subscription {
                filter: filter("$share/g/t"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription {
                filter: filter("x"),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
            },
        ],
    });
    assert_encodes(&packet, V5, &expected);
}

#[test]
fn subscribe_errors() {
    // [MQTT-3.8.3-3] At least one subscription.
    let empty = Subscribe {
        refused: Vec::new(),
        packet_id: id(1),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![],
    };
    let error = EncodeError::NoEntries(PacketType::Subscribe);
    assert_error(&Packet::Subscribe(empty.clone()), V311, error);
    // [MQTT-3.8.3-4] No Local on a shared subscription (5.0; before 5.0
    // the bit is not written at all).
    let mut shared = empty.clone();
    shared.subscriptions.push(Subscription {
        filter: filter("$share/g/t"),
        options: SubscriptionOptions { no_local: true, ..Default::default() },
    });
    let packet = Packet::Subscribe(shared);
    assert_error(&packet, V5, EncodeError::NoLocalOnSharedSubscription);
    assert!(packet.encoded_len(V311).is_ok());
    // Section 3.8.2.1.2: at most 268,435,455.
    let mut big = empty;
    big.properties.subscription_identifier = NonZeroU32::new(268_435_456);
    big.subscriptions.push(Subscription { filter: filter("t"), options: Default::default() });
    let error = EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier);
    assert_error(&Packet::Subscribe(big), V5, error);
}

#[test]
fn suback_v311() {
    // [MQTT-3.9.3-2] (3.1.1) 0x00, 0x01, 0x02, 0x80.
    let packet = Packet::SubAck(SubAck {
        packet_id: id(10),
        properties: AckProperties::default(),
        reasons: smallvec![
            ReasonCode::GrantedQoS1,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::UnspecifiedError,
            ReasonCode::GrantedQoS2,
        ],
    });
    assert_encodes(&packet, V311, &[0x90, 0x06, 0x00, 0x0A, 0x01, 0x00, 0x80, 0x02]);
    // Any 5.0 failure is 0x80.
    let packet = Packet::SubAck(SubAck {
        packet_id: id(10),
        properties: AckProperties::default(),
        reasons: smallvec![ReasonCode::NotAuthorized],
    });
    assert_bytes(&packet, V31, &[0x90, 0x03, 0x00, 0x0A, 0x80]);
}

#[test]
fn suback_v5() {
    let packet = Packet::SubAck(SubAck {
        packet_id: id(2),
        properties: AckProperties { reason_string: Some(s("r")), user_properties: vec![] },
        reasons: smallvec![
            ReasonCode::GrantedQoS2,
            ReasonCode::QuotaExceeded,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
    });
    let expected = [0x90, 0x0A, 0x00, 0x02, 0x04, 0x1F, 0x00, 0x01, b'r', 0x02, 0x97, 0xA2];
    assert_encodes(&packet, V5, &expected);
}

#[test]
fn suback_errors() {
    // [MQTT-3.9.3-2] One code per filter, and only SUBACK codes.
    let mut ack =
        SubAck { packet_id: id(1), properties: AckProperties::default(), reasons: smallvec![] };
    assert_error(&Packet::SubAck(ack.clone()), V5, EncodeError::NoEntries(PacketType::SubAck));
    ack.reasons.push(ReasonCode::NoSubscriptionExisted);
    let error = EncodeError::InvalidReasonCode {
        packet: PacketType::SubAck,
        reason: ReasonCode::NoSubscriptionExisted,
    };
    assert_error(&Packet::SubAck(ack), V5, error);
}

// ---- UNSUBSCRIBE, UNSUBACK ----

#[test]
fn unsubscribe_v311() {
    // [MQTT-3.10.1-1] flags 0b0010.
    let packet = Packet::Unsubscribe(Unsubscribe {
        refused: Vec::new(),
        packet_id: id(3),
        properties: UnsubscribeProperties::default(),
        filters: smallvec![filter("a"), filter("$share/g/#")],
    });
    let expected = cat(&[&[0xA2, 17, 0x00, 0x03, 0x00, 0x01, b'a', 0x00, 0x0A], b"$share/g/#"]);
    assert_encodes(&packet, V311, &expected);
}

#[test]
fn unsubscribe_v5() {
    let packet = Packet::Unsubscribe(Unsubscribe {
        refused: Vec::new(),
        packet_id: id(4),
        properties: UnsubscribeProperties { user_properties: vec![pair("k", "v")] },
        filters: smallvec![filter("f")],
    });
    let expected =
        [0xA2, 0x0D, 0x00, 0x04, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x00, 0x01, b'f'];
    assert_encodes(&packet, V5, &expected);
    // [MQTT-3.10.3-2]
    let empty = Packet::Unsubscribe(Unsubscribe {
        refused: Vec::new(),
        packet_id: id(4),
        properties: UnsubscribeProperties::default(),
        filters: smallvec![],
    });
    assert_error(&empty, V5, EncodeError::NoEntries(PacketType::Unsubscribe));
}

#[test]
fn unsuback() {
    // 3.1.1 section 3.11: the packet id only.
    let v3 =
        UnsubAck { packet_id: id(3), properties: AckProperties::default(), reasons: smallvec![] };
    assert_encodes(&Packet::UnsubAck(v3.clone()), V311, &[0xB0, 0x02, 0x00, 0x03]);
    let mut with_reasons = v3.clone();
    with_reasons.reasons.push(ReasonCode::NoSubscriptionExisted);
    assert_bytes(&Packet::UnsubAck(with_reasons), V31, &[0xB0, 0x02, 0x00, 0x03]);
    // 5.0: Property Length, then one code per filter [MQTT-3.11.3-2].
    let v5 = UnsubAck {
        packet_id: id(5),
        properties: AckProperties::default(),
        reasons: smallvec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    };
    assert_encodes(&Packet::UnsubAck(v5), V5, &[0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11]);
    assert_error(&Packet::UnsubAck(v3), V5, EncodeError::NoEntries(PacketType::UnsubAck));
}

// ---- PINGREQ, PINGRESP, DISCONNECT, AUTH ----

#[test]
fn ping() {
    // Sections 3.12 and 3.13: a fixed header only.
    for version in [V31, V311, V5] {
        assert_encodes(&Packet::PingReq, version, &[0xC0, 0x00]);
        assert_encodes(&Packet::PingResp, version, &[0xD0, 0x00]);
    }
}

#[test]
fn disconnect_v311() {
    assert_encodes(&Packet::Disconnect(Disconnect::default()), V311, &[0xE0, 0x00]);
    let with_reason = Disconnect { reason: ReasonCode::SessionTakenOver, ..Disconnect::default() };
    assert_bytes(&Packet::Disconnect(with_reason), V31, &[0xE0, 0x00]);
}

#[test]
fn disconnect_v5_short_forms() {
    // Section 3.14.2.1: Normal disconnection without properties is
    // remaining length 0.
    assert_encodes(&Packet::Disconnect(Disconnect::default()), V5, &[0xE0, 0x00]);
    // Section 3.14.2.2.1: the Property Length may be left out.
    let taken = Disconnect { reason: ReasonCode::SessionTakenOver, ..Disconnect::default() };
    assert_encodes(&Packet::Disconnect(taken), V5, &[0xE0, 0x01, 0x8E]);
}

#[test]
fn disconnect_v5_with_every_property() {
    let properties = cat(&[
        &[0x11, 0x00, 0x00, 0x00, 0x00],       // Session Expiry Interval 0
        &[0x1F, 0x00, 0x03, b'b', b'y', b'e'], // Reason String
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'], // User Property
        &[0x1C, 0x00, 0x01, b's'],             // Server Reference
    ]);
    let expected = cat(&[&[0xE0, 24, 0x9D, 22], &properties]);
    let packet = Packet::Disconnect(Disconnect {
        reason: ReasonCode::ServerMoved,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("bye")),
            user_properties: vec![pair("a", "b")],
            server_reference: Some(s("s")),
        },
    });
    assert_encodes(&packet, V5, &expected);
    // Normal disconnection is written when properties follow.
    let packet = Packet::Disconnect(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            session_expiry_interval: Some(1),
            ..DisconnectProperties::default()
        },
    });
    assert_encodes(&packet, V5, &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01]);
    // [MQTT-3.14.2-1] DISCONNECT reason codes only.
    let packet =
        Packet::Disconnect(Disconnect { reason: ReasonCode::GrantedQoS1, ..Disconnect::default() });
    let error = EncodeError::InvalidReasonCode {
        packet: PacketType::Disconnect,
        reason: ReasonCode::GrantedQoS1,
    };
    assert_error(&packet, V5, error);
}

#[test]
fn auth_v5() {
    // Section 3.15.2.1: Success without properties is remaining length 0.
    assert_encodes(&Packet::Auth(Box::default()), V5, &[0xF0, 0x00]);
    // A reason is followed by a Property Length, even 0.
    let re = Auth { reason: ReasonCode::ReAuthenticate, properties: AuthProperties::default() };
    assert_encodes(&Packet::Auth(Box::new(re)), V5, &[0xF0, 0x02, 0x19, 0x00]);
    let properties = cat(&[
        &[0x15, 0x00, 0x01, b'm'],                   // Authentication Method
        &[0x16, 0x00, 0x01, 0x09],                   // Authentication Data
        &[0x1F, 0x00, 0x01, b'c'],                   // Reason String
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'], // User Property
    ]);
    let expected = cat(&[&[0xF0, 21, 0x18, 19], &properties]);
    let packet = Packet::Auth(Box::new(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("m")),
            authentication_data: Some(Bytes::from_static(&[9])),
            reason_string: Some(s("c")),
            user_properties: vec![pair("a", "b")],
        },
    }));
    assert_encodes(&packet, V5, &expected);
    // [MQTT-3.15.2-1] AUTH reason codes only.
    let bad = Auth { reason: ReasonCode::NotAuthorized, properties: AuthProperties::default() };
    let error = EncodeError::InvalidReasonCode { packet: PacketType::Auth, reason: bad.reason };
    assert_error(&Packet::Auth(Box::new(bad)), V5, error);
}

#[test]
fn auth_only_in_v5() {
    // [MQTT-2.1.2] Packet type 15 is reserved before 5.0.
    for version in [V31, V311] {
        let error = EncodeError::NotInVersion { packet: PacketType::Auth, version };
        assert_error(&Packet::Auth(Box::default()), version, error);
    }
}

// ---- The hot path ----

#[test]
fn encode_allocates_nothing_but_the_reservation() {
    let mut p = publish(QoS::AtLeastOnce, Some(7), "sensors/1/temp", b"21.5");
    p.properties.make_mut().user_properties.push(pair("unit", "C"));
    p.properties.make_mut().subscription_identifiers.push(NonZeroU32::new(3).unwrap());
    let len = p.encoded_len(V5).unwrap();
    let mut buf = BytesMut::with_capacity(64 * (len + 4));
    let before = alloc_count::get();
    for _ in 0..64 {
        p.encode(V5, &mut buf).unwrap();
        Packet::PubAck(PubResponse::new(id(7))).encode(V311, &mut buf).unwrap();
    }
    assert_eq!(alloc_count::get(), before);
    // Ensure the loop really wrote (64 PUBLISHes and 64 PUBACKs).
    assert_eq!(buf.len(), 64 * (len + 4));
}

/// Counts the allocations of the current thread, for the test above.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    /// Allocations made by this thread so far.
    pub(super) fn get() -> u64 {
        COUNT.with(Cell::get)
    }

    struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // the counter is a const-initialised thread local without a
    // destructor, so touching it never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|count| count.set(count.get() + 1));
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` was allocated by `System` with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

/// `Publish::encode` skips the counting pass when there are no
/// properties; it must write the same bytes, and fail the same way, as
/// the two passes, on both sides of each Remaining Length boundary.
#[test]
fn publish_fast_path_matches_the_two_passes() {
    static PAYLOAD: [u8; 16_400] = [0x5A; 16_400];
    for version in [V31, V311, V5] {
        for (qos, packet_id) in [
            (QoS::AtMostOnce, None),
            (QoS::AtLeastOnce, Some(1)),
            (QoS::ExactlyOnce, Some(65_535)),
            // Invalid: an id at QoS 0, none at QoS 1.
            (QoS::AtMostOnce, Some(3)),
            (QoS::AtLeastOnce, None),
        ] {
            for len in [0, 1, 115, 116, 117, 16_370, 16_371, 16_372, 16_400] {
                for (dup, retain) in [(false, false), (true, true)] {
                    let mut p = publish(qos, packet_id, "a/b/c", &PAYLOAD[..len]);
                    p.dup = dup;
                    p.retain = retain;
                    let mut fast = BytesMut::new();
                    let mut two_pass = BytesMut::new();
                    let fast_result = p.encode(version, &mut fast);
                    let two_pass_result = encode_frame(&p, version, &mut two_pass);
                    let case = format!("{version:?} {qos:?} {packet_id:?} {len} {dup}");
                    assert_eq!(fast_result, two_pass_result, "{case}");
                    assert_eq!(fast, two_pass, "{case}");
                }
            }
        }
    }
}
