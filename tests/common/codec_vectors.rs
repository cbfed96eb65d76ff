//! Hand-written packet vectors shared by the decode, encode and stream tests.
//!
//! Every byte string here was written by hand from the figures and field
//! tables of the specifications (MQTT 3.1, OASIS MQTT 3.1.1 and OASIS MQTT
//! 5.0), never produced by our encoder; each vector names its source. They are
//! all in the encoder's canonical form, so the encode tests expect exactly
//! these bytes back (decode-only forms live in `codec_decode.rs`).
//!
//! The specification does not fix the order of properties in a property block
//! (MQTT 5.0 section 2.2.2.2); vectors with several properties list them in the
//! order in which the property structs declare them.

use bytes::Bytes;
use bytestring::ByteString;
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;
use smallvec::smallvec;
use std::num::{NonZeroU16, NonZeroU32};

/// One packet and its exact bytes in one protocol version.
#[derive(Debug)]
pub struct Case {
    /// The version the bytes are read and written in.
    pub version: ProtocolVersion,
    /// The whole packet, fixed header included.
    pub bytes: Vec<u8>,
    /// The packet those bytes mean.
    pub packet: Packet,
}

/// Calls `$m! { name, ... }` with the name of every vector. Within a version
/// the first vector is a CONNECT of that version, so a stream of all vectors in
/// this order is what one decoder can read (each CONNECT switches it).
macro_rules! for_each_case {
    ($m:ident) => {
        $m! {
            v31_connect,
            v31_connack_accepted,
            v31_connack_refused_identifier,
            v31_publish_qos1,
            v31_puback,
            v31_pubrec,
            v31_pubrel,
            v31_pubcomp,
            v31_subscribe,
            v31_suback,
            v31_unsubscribe,
            v31_unsuback,
            v31_pingreq,
            v31_pingresp,
            v31_disconnect,
            v311_connect_figure_3_6,
            v311_connect_minimal,
            v311_connack_session_present,
            v311_connack_return_codes,
            v311_publish_figure_3_11,
            v311_publish_qos0_retain,
            v311_publish_qos2_dup_empty_payload,
            v311_publish_two_byte_remaining_length,
            v311_puback,
            v311_pubrec,
            v311_pubrel,
            v311_pubcomp,
            v311_subscribe_figure_3_22,
            v311_suback_figure_3_26,
            v311_unsubscribe_figure_3_30,
            v311_unsuback,
            v311_pingreq,
            v311_pingresp,
            v311_disconnect,
            v5_connect_figure_3_6,
            v5_connect_every_property,
            v5_connect_password_without_user_name,
            v5_connack_every_property,
            v5_connack_refused,
            v5_publish_figure_3_9,
            v5_publish_every_property,
            v5_publish_qos0_no_payload,
            v5_puback_short,
            v5_puback_reason_only,
            v5_puback_every_property,
            v5_pubrec_short,
            v5_pubrec_reason_only,
            v5_pubrel_reason_only,
            v5_pubcomp_success_with_properties,
            v5_subscribe_figure_3_21,
            v5_subscribe_options_and_shared,
            v5_suback,
            v5_unsubscribe,
            v5_unsuback,
            v5_pingreq,
            v5_pingresp,
            v5_disconnect_short,
            v5_disconnect_reason_only,
            v5_disconnect_every_property,
            v5_auth_short,
            v5_auth_every_property,
            v5_auth_reauthenticate_scram,
        }
    };
}
pub(crate) use for_each_case;

macro_rules! collect_cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), $name())),*]
    };
}

/// Every vector, named, in stream order (see [`for_each_case`]).
pub fn all_cases() -> Vec<(&'static str, Case)> {
    for_each_case!(collect_cases)
        .into_iter()
        .flat_map(|(name, cases): (&'static str, Vec<Case>)| {
            cases.into_iter().map(move |c| (name, c))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers to write the expected packets briefly.

/// Concatenates hand-written pieces of a packet.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A packet identifier (never 0 here).
pub fn pid(value: u16) -> PacketId {
    PacketId::new(value).expect("test packet ids are non-zero")
}

/// A static string.
pub fn s(text: &'static str) -> ByteString {
    ByteString::from_static(text)
}

/// Static bytes.
pub fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// A valid topic name.
pub fn topic(name: &'static str) -> TopicName {
    TopicName::new(s(name)).expect("valid test topic name")
}

/// A valid topic filter.
pub fn filter(text: &'static str) -> TopicFilter {
    TopicFilter::new(s(text)).expect("valid test topic filter")
}

/// A User Property pair.
pub fn user(name: &'static str, value: &'static str) -> (ByteString, ByteString) {
    (s(name), s(value))
}

fn nz16(value: u16) -> NonZeroU16 {
    NonZeroU16::new(value).expect("non-zero")
}

fn nz32(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("non-zero")
}

/// Subscription options carrying only a maximum QoS (all that 3.1 / 3.1.1
/// have).
fn qos_only(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
}

fn one(version: ProtocolVersion, bytes: Vec<u8>, packet: Packet) -> Vec<Case> {
    vec![Case { version, bytes, packet }]
}

fn ack(packet_id: u16) -> PubResponse {
    PubResponse::new(pid(packet_id))
}

fn ack_with(packet_id: u16, reason: ReasonCode) -> PubResponse {
    PubResponse { reason, ..PubResponse::new(pid(packet_id)) }
}

// ---------------------------------------------------------------------------
// MQTT 3.1 (protocol name "MQIsdp", version 3), from the IBM/Eurotech MQTT
// V3.1 Protocol Specification. Apart from CONNECT and CONNACK its packets are
// byte for byte those of 3.1.1.

/// MQTT 3.1 section 3.1 CONNECT: protocol name "MQIsdp", version 3, the
/// example Keep Alive of 10 seconds, and every flag but the reserved bit 0.
pub fn v31_connect() -> Vec<Case> {
    let bytes = cat(&[
        &[0x10, 36],       // CONNECT, remaining length 36
        b"\x00\x06MQIsdp", // protocol name
        &[3],              // protocol version 3
        &[0xEE],           // user name, password, will retain, will QoS 1, will, clean session
        &[0x00, 0x0A],     // keep alive 10
        b"\x00\x03cid",    // client identifier
        b"\x00\x03w/t",    // will topic
        b"\x00\x02hi",     // will message
        b"\x00\x04user",   // user name
        b"\x00\x02pw",     // password
    ]);
    let packet = Connect {
        version: V3_1,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: b(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pw")),
        properties: ConnectProperties::default(),
    };
    one(V3_1, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 3.1 section 3.2 CONNACK: byte 1 reserved (not used), byte 2 return
/// code 0, "Connection Accepted".
pub fn v31_connack_accepted() -> Vec<Case> {
    one(
        V3_1,
        vec![0x20, 0x02, 0x00, 0x00],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        })),
    )
}

/// MQTT 3.1 section 3.2 CONNACK: return code 2, "Connection Refused:
/// identifier rejected".
pub fn v31_connack_refused_identifier() -> Vec<Case> {
    one(
        V3_1,
        vec![0x20, 0x02, 0x00, 0x02],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::ClientIdentifierNotValid,
            properties: ConnAckProperties::default(),
        })),
    )
}

/// MQTT 3.1 section 3.3 PUBLISH: the example topic "a/b" and Message ID 10.
pub fn v31_publish_qos1() -> Vec<Case> {
    let bytes = cat(&[
        &[0x32, 12],    // PUBLISH, QoS 1, remaining length 12
        b"\x00\x03a/b", // topic name
        &[0x00, 0x0A],  // message id 10
        b"hello",       // payload
    ]);
    let packet = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: BoxedPublishProperties::none(),
        payload: b(b"hello"),
    };
    one(V3_1, bytes, Packet::Publish(packet))
}

/// MQTT 3.1 section 3.4 PUBACK: Message ID only.
pub fn v31_puback() -> Vec<Case> {
    one(V3_1, vec![0x40, 0x02, 0x00, 0x0A], Packet::PubAck(ack(10)))
}

/// MQTT 3.1 section 3.5 PUBREC: Message ID only.
pub fn v31_pubrec() -> Vec<Case> {
    one(V3_1, vec![0x50, 0x02, 0x00, 0x0A], Packet::PubRec(ack(10)))
}

/// MQTT 3.1 section 3.6 PUBREL: QoS 1 in the fixed header, Message ID.
pub fn v31_pubrel() -> Vec<Case> {
    one(V3_1, vec![0x62, 0x02, 0x00, 0x0A], Packet::PubRel(ack(10)))
}

/// MQTT 3.1 section 3.7 PUBCOMP: Message ID only.
pub fn v31_pubcomp() -> Vec<Case> {
    one(V3_1, vec![0x70, 0x02, 0x00, 0x0A], Packet::PubComp(ack(10)))
}

/// MQTT 3.1 section 3.8 SUBSCRIBE: the example payload, "a/b" at QoS 1 and
/// "c/d" at QoS 2, Message ID 10.
pub fn v31_subscribe() -> Vec<Case> {
    let bytes = cat(&[
        &[0x82, 14],    // SUBSCRIBE, QoS 1 header bits, remaining length 14
        &[0x00, 0x0A],  // message id 10
        b"\x00\x03a/b", // topic
        &[0x01],        // requested QoS 1
        b"\x00\x03c/d", // topic
        &[0x02],        // requested QoS 2
    ]);
    let packet = Subscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![
            Subscription { filter: filter("a/b"), options: qos_only(QoS::AtLeastOnce) },
            Subscription { filter: filter("c/d"), options: qos_only(QoS::ExactlyOnce) },
        ],
    };
    one(V3_1, bytes, Packet::Subscribe(packet))
}

/// MQTT 3.1 section 3.9 SUBACK: the example granted QoS 0 and 2.
pub fn v31_suback() -> Vec<Case> {
    let packet = SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reasons: smallvec![ReasonCode::GRANTED_QOS_0, ReasonCode::GrantedQoS2],
    };
    one(V3_1, vec![0x90, 0x04, 0x00, 0x0A, 0x00, 0x02], Packet::SubAck(packet))
}

/// MQTT 3.1 section 3.10 UNSUBSCRIBE: the example topics "a/b" and "c/d".
pub fn v31_unsubscribe() -> Vec<Case> {
    let bytes = cat(&[&[0xA2, 12], &[0x00, 0x0A], b"\x00\x03a/b", b"\x00\x03c/d"]);
    let packet = Unsubscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: UnsubscribeProperties::default(),
        filters: smallvec![filter("a/b"), filter("c/d")],
    };
    one(V3_1, bytes, Packet::Unsubscribe(packet))
}

/// MQTT 3.1 section 3.11 UNSUBACK: Message ID only.
pub fn v31_unsuback() -> Vec<Case> {
    let packet =
        UnsubAck { packet_id: pid(10), properties: AckProperties::default(), reasons: smallvec![] };
    one(V3_1, vec![0xB0, 0x02, 0x00, 0x0A], Packet::UnsubAck(packet))
}

/// MQTT 3.1 section 3.12 PINGREQ: fixed header only.
pub fn v31_pingreq() -> Vec<Case> {
    one(V3_1, vec![0xC0, 0x00], Packet::PingReq)
}

/// MQTT 3.1 section 3.13 PINGRESP: fixed header only.
pub fn v31_pingresp() -> Vec<Case> {
    one(V3_1, vec![0xD0, 0x00], Packet::PingResp)
}

/// MQTT 3.1 section 3.14 DISCONNECT: fixed header only.
pub fn v31_disconnect() -> Vec<Case> {
    one(V3_1, vec![0xE0, 0x00], Packet::Disconnect(Disconnect::default()))
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 (OASIS Standard, protocol name "MQTT", level 4).

/// MQTT 3.1.1 figure 3.6 (CONNECT variable header example): protocol name
/// "MQTT", level 4, connect flags 0xCE (user name, password, will QoS 1, will
/// flag, clean session), keep alive 10; the payload in the order of section
/// 3.1.3 [MQTT-3.1.3-1].
pub fn v311_connect_figure_3_6() -> Vec<Case> {
    let bytes = cat(&[
        &[0x10, 34],     // CONNECT, remaining length 34
        b"\x00\x04MQTT", // protocol name
        &[4],            // protocol level 4
        &[0xCE],         // connect flags
        &[0x00, 0x0A],   // keep alive 10
        b"\x00\x03cid",  // client identifier
        b"\x00\x03w/t",  // will topic
        b"\x00\x02hi",   // will message
        b"\x00\x04user", // user name
        b"\x00\x02pw",   // password
    ]);
    let packet = Connect {
        version: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: b(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pw")),
        properties: ConnectProperties::default(),
    };
    one(V3_1_1, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 3.1.1 section 3.1: a zero-byte client identifier with Clean Session
/// set [MQTT-3.1.3-6] [MQTT-3.1.3-7], keep alive 60, no will, no credentials.
pub fn v311_connect_minimal() -> Vec<Case> {
    let bytes = cat(&[&[0x10, 12], b"\x00\x04MQTT", &[4, 0x02, 0x00, 0x3C], b"\x00\x00"]);
    let packet = Connect {
        version: V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: s(""),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    one(V3_1_1, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 3.1.1 figure 3.9 (CONNACK variable header): Session Present 1
/// [MQTT-3.2.2-2], return code 0.
pub fn v311_connack_session_present() -> Vec<Case> {
    let packet = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    one(V3_1_1, vec![0x20, 0x02, 0x01, 0x00], Packet::ConnAck(Box::new(packet)))
}

/// MQTT 3.1.1 table 3.1 (Connect Return code values): every defined code,
/// 1 to 5 with Session Present 0 [MQTT-3.2.2-4].
pub fn v311_connack_return_codes() -> Vec<Case> {
    [
        (1, ReasonCode::UnsupportedProtocolVersion),
        (2, ReasonCode::ClientIdentifierNotValid),
        (3, ReasonCode::ServerUnavailable),
        (4, ReasonCode::BadUserNameOrPassword),
        (5, ReasonCode::NotAuthorized),
    ]
    .into_iter()
    .map(|(code, reason)| Case {
        version: V3_1_1,
        bytes: vec![0x20, 0x02, 0x00, code],
        packet: Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        })),
    })
    .collect()
}

/// MQTT 3.1.1 figure 3.11 (PUBLISH variable header example): topic "a/b",
/// packet identifier 10, at QoS 1.
pub fn v311_publish_figure_3_11() -> Vec<Case> {
    let bytes = cat(&[&[0x32, 12], b"\x00\x03a/b", &[0x00, 0x0A], b"hello"]);
    let packet = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: BoxedPublishProperties::none(),
        payload: b(b"hello"),
    };
    one(V3_1_1, bytes, Packet::Publish(packet))
}

/// MQTT 3.1.1 section 3.3.1: QoS 0 with RETAIN, so no packet identifier
/// [MQTT-2.3.1-5].
pub fn v311_publish_qos0_retain() -> Vec<Case> {
    let bytes = cat(&[&[0x31, 6], b"\x00\x03a/b", b"x"]);
    let packet = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: topic("a/b"),
        packet_id: None,
        properties: BoxedPublishProperties::none(),
        payload: b(b"x"),
    };
    one(V3_1_1, bytes, Packet::Publish(packet))
}

/// MQTT 3.1.1 section 3.3.1: DUP with QoS 2 (0x3C), and a zero-length payload
/// (section 3.3.3).
pub fn v311_publish_qos2_dup_empty_payload() -> Vec<Case> {
    let bytes = cat(&[&[0x3C, 7], b"\x00\x03a/b", &[0x00, 0x0B]]);
    let packet = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: Some(pid(11)),
        properties: BoxedPublishProperties::none(),
        payload: Bytes::new(),
    };
    one(V3_1_1, bytes, Packet::Publish(packet))
}

/// MQTT 3.1.1 table 2.4: a remaining length of 133 takes two bytes,
/// 0x85 0x01.
pub fn v311_publish_two_byte_remaining_length() -> Vec<Case> {
    let payload = [b'x'; 128];
    let bytes = cat(&[&[0x30, 0x85, 0x01], b"\x00\x03a/b", &payload]);
    let packet = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: None,
        properties: BoxedPublishProperties::none(),
        payload: Bytes::copy_from_slice(&payload),
    };
    one(V3_1_1, bytes, Packet::Publish(packet))
}

/// MQTT 3.1.1 figure 3.12/3.13 (PUBACK): remaining length 2, packet id.
pub fn v311_puback() -> Vec<Case> {
    one(V3_1_1, vec![0x40, 0x02, 0x00, 0x0A], Packet::PubAck(ack(10)))
}

/// MQTT 3.1.1 figure 3.14/3.15 (PUBREC).
pub fn v311_pubrec() -> Vec<Case> {
    one(V3_1_1, vec![0x50, 0x02, 0x00, 0x0A], Packet::PubRec(ack(10)))
}

/// MQTT 3.1.1 figure 3.16 (PUBREL): fixed-header flags 0010 [MQTT-3.6.1-1].
pub fn v311_pubrel() -> Vec<Case> {
    one(V3_1_1, vec![0x62, 0x02, 0x00, 0x0A], Packet::PubRel(ack(10)))
}

/// MQTT 3.1.1 figure 3.18/3.19 (PUBCOMP).
pub fn v311_pubcomp() -> Vec<Case> {
    one(V3_1_1, vec![0x70, 0x02, 0x00, 0x0A], Packet::PubComp(ack(10)))
}

/// MQTT 3.1.1 figures 3.20 (packet identifier 10) and 3.22 (payload example:
/// "a/b" requested QoS 1, "c/d" requested QoS 2); flags 0010
/// [MQTT-3.8.1-1].
pub fn v311_subscribe_figure_3_22() -> Vec<Case> {
    let bytes =
        cat(&[&[0x82, 14], &[0x00, 0x0A], b"\x00\x03a/b", &[0x01], b"\x00\x03c/d", &[0x02]]);
    let packet = Subscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![
            Subscription { filter: filter("a/b"), options: qos_only(QoS::AtLeastOnce) },
            Subscription { filter: filter("c/d"), options: qos_only(QoS::ExactlyOnce) },
        ],
    };
    one(V3_1_1, bytes, Packet::Subscribe(packet))
}

/// MQTT 3.1.1 figure 3.26 (SUBACK payload example): Success QoS 0, Success
/// QoS 2, Failure 0x80 [MQTT-3.9.3-2].
pub fn v311_suback_figure_3_26() -> Vec<Case> {
    let packet = SubAck {
        packet_id: pid(10),
        properties: AckProperties::default(),
        reasons: smallvec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError
        ],
    };
    one(V3_1_1, vec![0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80], Packet::SubAck(packet))
}

/// MQTT 3.1.1 figure 3.30 (UNSUBSCRIBE payload example): "a/b" and "c/d";
/// flags 0010 [MQTT-3.10.1-1].
pub fn v311_unsubscribe_figure_3_30() -> Vec<Case> {
    let bytes = cat(&[&[0xA2, 12], &[0x00, 0x0A], b"\x00\x03a/b", b"\x00\x03c/d"]);
    let packet = Unsubscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: UnsubscribeProperties::default(),
        filters: smallvec![filter("a/b"), filter("c/d")],
    };
    one(V3_1_1, bytes, Packet::Unsubscribe(packet))
}

/// MQTT 3.1.1 figure 3.31/3.32 (UNSUBACK): packet id only, no payload.
pub fn v311_unsuback() -> Vec<Case> {
    let packet =
        UnsubAck { packet_id: pid(10), properties: AckProperties::default(), reasons: smallvec![] };
    one(V3_1_1, vec![0xB0, 0x02, 0x00, 0x0A], Packet::UnsubAck(packet))
}

/// MQTT 3.1.1 figure 3.33 (PINGREQ).
pub fn v311_pingreq() -> Vec<Case> {
    one(V3_1_1, vec![0xC0, 0x00], Packet::PingReq)
}

/// MQTT 3.1.1 figure 3.34 (PINGRESP).
pub fn v311_pingresp() -> Vec<Case> {
    one(V3_1_1, vec![0xD0, 0x00], Packet::PingResp)
}

/// MQTT 3.1.1 figure 3.35 (DISCONNECT).
pub fn v311_disconnect() -> Vec<Case> {
    one(V3_1_1, vec![0xE0, 0x00], Packet::Disconnect(Disconnect::default()))
}

// ---------------------------------------------------------------------------
// MQTT 5.0 (OASIS Standard, protocol name "MQTT", level 5).

/// MQTT 5.0 figure 3-6 (section 3.1.2.12, CONNECT variable header example):
/// level 5, flags 0xCE, keep alive 10, properties length 5 holding Session
/// Expiry Interval (17) = 10; then a payload in the order of section 3.1.3
/// with an empty Will Properties block.
pub fn v5_connect_figure_3_6() -> Vec<Case> {
    let bytes = cat(&[
        &[0x10, 41],                        // CONNECT, remaining length 41
        b"\x00\x04MQTT",                    // protocol name
        &[5],                               // protocol version 5
        &[0xCE],                            // connect flags
        &[0x00, 0x0A],                      // keep alive 10
        &[5, 0x11, 0x00, 0x00, 0x00, 0x0A], // properties: session expiry 10
        b"\x00\x03cid",                     // client identifier
        &[0],                               // will properties: none
        b"\x00\x03w/t",                     // will topic
        b"\x00\x02hi",                      // will payload
        b"\x00\x04user",                    // user name
        b"\x00\x02pw",                      // password
    ]);
    let packet = Connect {
        version: V5,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: b(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval: Some(10),
            ..ConnectProperties::default()
        },
    };
    one(V5, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 5.0 sections 3.1.2.11 and 3.1.3.2: every CONNECT property and every
/// Will property, Will QoS 2 with Will Retain, user name and password.
pub fn v5_connect_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0x10, 126],                    // CONNECT, remaining length 126
        b"\x00\x04MQTT",                 // protocol name
        &[5],                            // protocol version 5
        &[0xF6],       // user, password, will retain, will QoS 2, will, clean start
        &[0x00, 0x3C], // keep alive 60
        &[40],         // property length
        &[0x11, 0x00, 0x00, 0x00, 0x0A], // 3.1.2.11.2 session expiry interval 10
        &[0x21, 0x00, 0x14], // 3.1.2.11.3 receive maximum 20
        &[0x27, 0x00, 0x00, 0x10, 0x00], // 3.1.2.11.4 maximum packet size 4096
        &[0x22, 0x00, 0x05], // 3.1.2.11.5 topic alias maximum 5
        &[0x19, 0x01], // 3.1.2.11.6 request response information 1
        &[0x17, 0x00], // 3.1.2.11.7 request problem information 0
        b"\x26\x00\x01k\x00\x01v", // 3.1.2.11.8 user property k=v
        b"\x15\x00\x05SCRAM", // 3.1.2.11.9 authentication method
        &[0x16, 0x00, 0x02, 0x01, 0x02], // 3.1.2.11.10 authentication data
        b"\x00\x03cid", // client identifier
        &[44],         // will property length
        &[0x18, 0x00, 0x00, 0x00, 0x1E], // 3.1.3.2.2 will delay interval 30
        &[0x01, 0x01], // 3.1.3.2.3 payload format indicator: UTF-8
        &[0x02, 0x00, 0x00, 0x0E, 0x10], // 3.1.3.2.4 message expiry interval 3600
        b"\x03\x00\x0Atext/plain", // 3.1.3.2.5 content type
        b"\x08\x00\x04resp", // 3.1.3.2.6 response topic
        &[0x09, 0x00, 0x02, 0xCA, 0xFE], // 3.1.3.2.7 correlation data
        b"\x26\x00\x01a\x00\x01b", // 3.1.3.2.8 user property a=b
        b"\x00\x03w/t", // will topic
        b"\x00\x04gone", // will payload
        b"\x00\x04user", // user name
        b"\x00\x06secret", // password
    ]);
    let packet = Connect {
        version: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: b(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(3600),
                content_type: Some(s("text/plain")),
                response_topic: Some(topic("resp")),
                correlation_data: Some(b(&[0xCA, 0xFE])),
                user_properties: vec![user("a", "b")],
            },
        }),
        username: Some(s("user")),
        password: Some(b(b"secret")),
        properties: ConnectProperties {
            session_expiry_interval: Some(10),
            receive_maximum: Some(nz16(20)),
            maximum_packet_size: Some(nz32(4096)),
            topic_alias_maximum: Some(5),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: vec![user("k", "v")],
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[0x01, 0x02])),
        },
    };
    one(V5, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 5.0 section 3.1.2.9: unlike 3.1.1, a Password without a User Name
/// is allowed; empty client identifier [MQTT-3.1.3-6].
pub fn v5_connect_password_without_user_name() -> Vec<Case> {
    let bytes = cat(&[
        &[0x10, 17],
        b"\x00\x04MQTT",
        &[5, 0x42, 0x00, 0x00], // level 5, password + clean start, keep alive 0
        &[0],                   // no properties
        b"\x00\x00",            // empty client identifier
        b"\x00\x02pw",          // password
    ]);
    let packet = Connect {
        version: V5,
        clean_start: true,
        keep_alive: 0,
        client_id: s(""),
        will: None,
        username: None,
        password: Some(b(b"pw")),
        properties: ConnectProperties::default(),
    };
    one(V5, bytes, Packet::Connect(Box::new(packet)))
}

/// MQTT 5.0 section 3.2.2.3: every CONNACK property; Session Present 1,
/// reason Success.
pub fn v5_connack_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0x20, 80],                     // CONNACK, remaining length 80
        &[0x01],                         // session present
        &[0x00],                         // reason code: Success
        &[77],                           // property length
        &[0x11, 0x00, 0x00, 0x00, 0x78], // 3.2.2.3.2 session expiry interval 120
        &[0x21, 0x00, 0x0A],             // 3.2.2.3.3 receive maximum 10
        &[0x24, 0x01],                   // 3.2.2.3.4 maximum QoS 1
        &[0x25, 0x00],                   // 3.2.2.3.5 retain available 0
        &[0x27, 0x00, 0x01, 0x00, 0x00], // 3.2.2.3.6 maximum packet size 65536
        b"\x12\x00\x06auto-1",           // 3.2.2.3.7 assigned client identifier
        &[0x22, 0x00, 0x10],             // 3.2.2.3.8 topic alias maximum 16
        b"\x1F\x00\x02ok",               // 3.2.2.3.9 reason string
        b"\x26\x00\x01k\x00\x01v",       // 3.2.2.3.10 user property
        &[0x28, 0x00],                   // 3.2.2.3.11 wildcard subscription available 0
        &[0x29, 0x00],                   // 3.2.2.3.12 subscription identifiers available 0
        &[0x2A, 0x01],                   // 3.2.2.3.13 shared subscription available 1
        &[0x13, 0x00, 0x1E],             // 3.2.2.3.14 server keep alive 30
        b"\x1A\x00\x04resp",             // 3.2.2.3.15 response information
        b"\x1C\x00\x05other",            // 3.2.2.3.16 server reference
        b"\x15\x00\x05SCRAM",            // 3.2.2.3.17 authentication method
        &[0x16, 0x00, 0x01, 0x07],       // 3.2.2.3.18 authentication data
    ]);
    let packet = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(nz16(10)),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(nz32(65536)),
            assigned_client_identifier: Some(s("auto-1")),
            topic_alias_maximum: Some(16),
            reason_string: Some(s("ok")),
            user_properties: vec![user("k", "v")],
            wildcard_subscription_available: Some(false),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(30),
            response_information: Some(s("resp")),
            server_reference: Some(s("other")),
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[0x07])),
        },
    };
    one(V5, bytes, Packet::ConnAck(Box::new(packet)))
}

/// MQTT 5.0 section 3.2.2.2: reason 0x87 Not authorized, Session Present 0
/// [MQTT-3.2.2-6], and an empty property block (always present in CONNACK).
pub fn v5_connack_refused() -> Vec<Case> {
    let packet = ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    };
    one(V5, vec![0x20, 0x03, 0x00, 0x87, 0x00], Packet::ConnAck(Box::new(packet)))
}

/// MQTT 5.0 figure 3-9 (PUBLISH variable header example): topic "a/b",
/// packet identifier 10, property length 0.
pub fn v5_publish_figure_3_9() -> Vec<Case> {
    let bytes = cat(&[&[0x32, 13], b"\x00\x03a/b", &[0x00, 0x0A], &[0], b"hello"]);
    let packet = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: BoxedPublishProperties::none(),
        payload: b(b"hello"),
    };
    one(V5, bytes, Packet::Publish(packet))
}

/// MQTT 5.0 section 3.3.2.3: every PUBLISH property, with User Property
/// repeated (order preserved, same name twice) [MQTT-3.3.2-18] and two
/// Subscription Identifiers, the second a two-byte Variable Byte Integer
/// [MQTT-3.3.4-3]; DUP, QoS 1, RETAIN.
pub fn v5_publish_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0x3B, 70],                     // PUBLISH, DUP, QoS 1, RETAIN, remaining length 70
        b"\x00\x03a/b",                  // topic name
        &[0x00, 0x0A],                   // packet identifier 10
        &[57],                           // property length
        &[0x01, 0x01],                   // 3.3.2.3.2 payload format indicator: UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x3C], // 3.3.2.3.3 message expiry interval 60
        &[0x23, 0x00, 0x07],             // 3.3.2.3.4 topic alias 7
        b"\x08\x00\x05reply",            // 3.3.2.3.5 response topic
        &[0x09, 0x00, 0x03, 1, 2, 3],    // 3.3.2.3.6 correlation data
        b"\x26\x00\x01x\x00\x011",       // 3.3.2.3.7 user property x=1
        b"\x26\x00\x01a\x00\x012",       // user property a=2
        b"\x26\x00\x01x\x00\x013",       // user property x=3
        &[0x0B, 0x05],                   // 3.3.2.3.8 subscription identifier 5
        &[0x0B, 0x80, 0x01],             // subscription identifier 128
        b"\x03\x00\x04json",             // 3.3.2.3.9 content type
        b"hello",                        // payload
    ]);
    let packet = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            topic_alias: Some(nz16(7)),
            response_topic: Some(topic("reply")),
            correlation_data: Some(b(&[1, 2, 3])),
            user_properties: vec![user("x", "1"), user("a", "2"), user("x", "3")],
            subscription_identifiers: smallvec![nz32(5), nz32(128)],
            content_type: Some(s("json")),
        }
        .into(),
        payload: b(b"hello"),
    };
    one(V5, bytes, Packet::Publish(packet))
}

/// MQTT 5.0 section 3.3: QoS 0 (no packet identifier), no properties, and no
/// payload at all (section 3.3.3: a zero-length payload is valid).
pub fn v5_publish_qos0_no_payload() -> Vec<Case> {
    let packet = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic("t"),
        packet_id: None,
        properties: BoxedPublishProperties::none(),
        payload: Bytes::new(),
    };
    one(V5, vec![0x30, 0x04, 0x00, 0x01, b't', 0x00], Packet::Publish(packet))
}

/// MQTT 5.0 section 3.4.2.1: reason Success and no properties may be omitted,
/// remaining length 2.
pub fn v5_puback_short() -> Vec<Case> {
    one(V5, vec![0x40, 0x02, 0x00, 0x0A], Packet::PubAck(ack(10)))
}

/// MQTT 5.0 section 3.4.2.2: remaining length 3, a reason code (0x10 No
/// matching subscribers) without a property length.
pub fn v5_puback_reason_only() -> Vec<Case> {
    one(
        V5,
        vec![0x40, 0x03, 0x00, 0x0A, 0x10],
        Packet::PubAck(ack_with(10, ReasonCode::NoMatchingSubscribers)),
    )
}

/// MQTT 5.0 section 3.4.2.2: reason 0x10, Reason String and a repeated User
/// Property (AckProperties fully populated).
pub fn v5_puback_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0x40, 25],
        &[0x00, 0x0A],
        &[0x10],
        &[21],
        b"\x1F\x00\x04none",       // 3.4.2.2.2 reason string
        b"\x26\x00\x01k\x00\x01v", // 3.4.2.2.3 user property k=v
        b"\x26\x00\x01k\x00\x01w", // user property k=w
    ]);
    let packet = PubResponse {
        packet_id: pid(10),
        reason: ReasonCode::NoMatchingSubscribers,
        properties: AckProperties {
            reason_string: Some(s("none")),
            user_properties: vec![user("k", "v"), user("k", "w")],
        },
    };
    one(V5, bytes, Packet::PubAck(packet))
}

/// MQTT 5.0 section 3.5.2.1: PUBREC, remaining length 2.
pub fn v5_pubrec_short() -> Vec<Case> {
    one(V5, vec![0x50, 0x02, 0x00, 0x0B], Packet::PubRec(ack(11)))
}

/// MQTT 5.0 section 3.5.2.1: PUBREC with 0x80 Unspecified error.
pub fn v5_pubrec_reason_only() -> Vec<Case> {
    one(
        V5,
        vec![0x50, 0x03, 0x00, 0x0B, 0x80],
        Packet::PubRec(ack_with(11, ReasonCode::UnspecifiedError)),
    )
}

/// MQTT 5.0 section 3.6.2.1: PUBREL with 0x92 Packet Identifier not found.
pub fn v5_pubrel_reason_only() -> Vec<Case> {
    one(
        V5,
        vec![0x62, 0x03, 0x00, 0x0C, 0x92],
        Packet::PubRel(ack_with(12, ReasonCode::PacketIdentifierNotFound)),
    )
}

/// MQTT 5.0 section 3.7.2: PUBCOMP with reason Success written out because a
/// Reason String follows.
pub fn v5_pubcomp_success_with_properties() -> Vec<Case> {
    let packet = PubResponse {
        packet_id: pid(13),
        reason: ReasonCode::Success,
        properties: AckProperties { reason_string: Some(s("ok")), user_properties: vec![] },
    };
    let bytes = cat(&[&[0x70, 9], &[0x00, 0x0D], &[0x00], &[5], b"\x1F\x00\x02ok"]);
    one(V5, bytes, Packet::PubComp(packet))
}

/// MQTT 5.0 figure 3-21 (SUBSCRIBE payload example): "a/b" options 1, "c/d"
/// options 2, packet identifier 10, no properties.
pub fn v5_subscribe_figure_3_21() -> Vec<Case> {
    let bytes =
        cat(&[&[0x82, 15], &[0x00, 0x0A], &[0], b"\x00\x03a/b", &[0x01], b"\x00\x03c/d", &[0x02]]);
    let packet = Subscribe {
        refused: Vec::new(),
        packet_id: pid(10),
        properties: SubscribeProperties::default(),
        subscriptions: smallvec![
            Subscription { filter: filter("a/b"), options: qos_only(QoS::AtLeastOnce) },
            Subscription { filter: filter("c/d"), options: qos_only(QoS::ExactlyOnce) },
        ],
    };
    one(V5, bytes, Packet::Subscribe(packet))
}

/// MQTT 5.0 sections 3.8.2.1 and 3.8.3.1: a Subscription Identifier (129, a
/// two-byte Variable Byte Integer) and a User Property; subscription options
/// using every bit (figure 3-20): No Local, Retain As Published, Retain
/// Handling 1 and 2; a shared subscription `$share/g/s/#` (section 4.8.2).
pub fn v5_subscribe_options_and_shared() -> Vec<Case> {
    let bytes = cat(&[
        &[0x82, 38],               // SUBSCRIBE, remaining length 38
        &[0x00, 0x0B],             // packet identifier 11
        &[10],                     // property length
        &[0x0B, 0x81, 0x01],       // subscription identifier 129
        b"\x26\x00\x01k\x00\x01v", // user property
        b"\x00\x03a/+",            // filter
        &[0x2D],                   // retain handling 2, RAP, no local, QoS 1
        b"\x00\x0C$share/g/s/#",   // shared filter
        &[0x1A],                   // retain handling 1, RAP, QoS 2
        b"\x00\x01#",              // filter
        &[0x00],                   // all defaults, QoS 0
    ]);
    let packet = Subscribe {
        refused: Vec::new(),
        packet_id: pid(11),
        properties: SubscribeProperties {
            subscription_identifier: Some(nz32(129)),
            user_properties: vec![user("k", "v")],
        },
        subscriptions: smallvec![
            Subscription {
                filter: filter("a/+"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription {
                filter: filter("$share/g/s/#"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
            },
            Subscription { filter: filter("#"), options: SubscriptionOptions::default() },
        ],
    };
    one(V5, bytes, Packet::Subscribe(packet))
}

/// MQTT 5.0 section 3.9.3: SUBACK reason codes in order, with a Reason
/// String.
pub fn v5_suback() -> Vec<Case> {
    let bytes = cat(&[
        &[0x90, 13],
        &[0x00, 0x0B],
        &[5],
        b"\x1F\x00\x02ok",
        &[0x01, 0x8F, 0x9E, 0x00, 0xA2],
    ]);
    let packet = SubAck {
        packet_id: pid(11),
        properties: AckProperties { reason_string: Some(s("ok")), user_properties: vec![] },
        reasons: smallvec![
            ReasonCode::GrantedQoS1,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
    };
    one(V5, bytes, Packet::SubAck(packet))
}

/// MQTT 5.0 section 3.10: UNSUBSCRIBE with a User Property, a plain and a
/// shared filter.
pub fn v5_unsubscribe() -> Vec<Case> {
    let bytes = cat(&[
        &[0xA2, 29],
        &[0x00, 0x0C],
        &[7],
        b"\x26\x00\x01k\x00\x01v",
        b"\x00\x03a/+",
        b"\x00\x0C$share/g/s/#",
    ]);
    let packet = Unsubscribe {
        refused: Vec::new(),
        packet_id: pid(12),
        properties: UnsubscribeProperties { user_properties: vec![user("k", "v")] },
        filters: smallvec![filter("a/+"), filter("$share/g/s/#")],
    };
    one(V5, bytes, Packet::Unsubscribe(packet))
}

/// MQTT 5.0 section 3.11.3: UNSUBACK with one reason per filter, in order.
pub fn v5_unsuback() -> Vec<Case> {
    let packet = UnsubAck {
        packet_id: pid(12),
        properties: AckProperties::default(),
        reasons: smallvec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    };
    one(V5, vec![0xB0, 0x05, 0x00, 0x0C, 0x00, 0x00, 0x11], Packet::UnsubAck(packet))
}

/// MQTT 5.0 section 3.12 PINGREQ.
pub fn v5_pingreq() -> Vec<Case> {
    one(V5, vec![0xC0, 0x00], Packet::PingReq)
}

/// MQTT 5.0 section 3.13 PINGRESP.
pub fn v5_pingresp() -> Vec<Case> {
    one(V5, vec![0xD0, 0x00], Packet::PingResp)
}

/// MQTT 5.0 section 3.14.2.1: remaining length 0 means Normal disconnection
/// without properties.
pub fn v5_disconnect_short() -> Vec<Case> {
    one(V5, vec![0xE0, 0x00], Packet::Disconnect(Disconnect::default()))
}

/// MQTT 5.0 section 3.14.2.2.1: remaining length 1, reason 0x04 Disconnect
/// with Will Message, no property length.
pub fn v5_disconnect_reason_only() -> Vec<Case> {
    let packet = Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: DisconnectProperties::default(),
    };
    one(V5, vec![0xE0, 0x01, 0x04], Packet::Disconnect(packet))
}

/// MQTT 5.0 section 3.14.2.2: every DISCONNECT property, reason 0x9C Use
/// another server.
pub fn v5_disconnect_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0xE0, 28],
        &[0x9C],
        &[26],
        &[0x11, 0x00, 0x00, 0x00, 0x00], // 3.14.2.2.2 session expiry interval 0
        b"\x1F\x00\x03bye",              // 3.14.2.2.3 reason string
        b"\x26\x00\x01k\x00\x01v",       // 3.14.2.2.4 user property
        b"\x1C\x00\x05other",            // 3.14.2.2.5 server reference
    ]);
    let packet = Disconnect {
        reason: ReasonCode::UseAnotherServer,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("bye")),
            user_properties: vec![user("k", "v")],
            server_reference: Some(s("other")),
        },
    };
    one(V5, bytes, Packet::Disconnect(packet))
}

/// MQTT 5.0 section 3.15.2.1: remaining length 0 means Success without
/// properties.
pub fn v5_auth_short() -> Vec<Case> {
    one(V5, vec![0xF0, 0x00], Packet::Auth(Box::default()))
}

/// MQTT 5.0 section 3.15.2.2: reason 0x18 Continue authentication and every
/// AUTH property.
pub fn v5_auth_every_property() -> Vec<Case> {
    let bytes = cat(&[
        &[0xF0, 30],
        &[0x18],
        &[28],
        b"\x15\x00\x05SCRAM",         // 3.15.2.2.2 authentication method
        &[0x16, 0x00, 0x03, 1, 2, 3], // 3.15.2.2.3 authentication data
        b"\x1F\x00\x04more",          // 3.15.2.2.4 reason string
        b"\x26\x00\x01k\x00\x01v",    // 3.15.2.2.5 user property
    ]);
    let packet = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2, 3])),
            reason_string: Some(s("more")),
            user_properties: vec![user("k", "v")],
        },
    };
    one(V5, bytes, Packet::Auth(Box::new(packet)))
}

/// MQTT 5.0 section 3.15.2.1: 0x19 Re-authenticate, with SCRAM-SHA-256's
/// client-first-message of RFC 7677 section 3 as Authentication Data.
pub fn v5_auth_reauthenticate_scram() -> Vec<Case> {
    let bytes = cat(&[
        &[0xF0, 53],
        &[0x19],
        &[51],
        b"\x15\x00\x0DSCRAM-SHA-256",                    // 3.15.2.2.2
        b"\x16\x00\x20n,,n=user,r=rOprNGfwEbeRWgbNEkqO", // 3.15.2.2.3
    ]);
    let packet = Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM-SHA-256")),
            authentication_data: Some(b(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")),
            ..AuthProperties::default()
        },
    };
    one(V5, bytes, Packet::Auth(Box::new(packet)))
}
