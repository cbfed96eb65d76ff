//! Malformed input: one test per broken rule, each asserting the exact
//! `DecodeError` and the reason code the broker answers it with, through both
//! `decode_packet` and the resumable `Decoder`. Every input is a complete
//! packet by its own remaining length (unless the remaining length itself is
//! the fault), written by hand.
//!
//! Reason codes follow MQTT 5.0 section 4.13 and the per-property rules: a
//! "Malformed Packet" is 0x81, a "Protocol Error" is 0x82; some rules name a
//! more specific code (0x84, 0x8F, 0x90, 0x94). For 3.1 / 3.1.1, which have
//! no reason codes, the mapping only decides how the error is counted.

use bytes::{Bytes, BytesMut};
use ringmq::protocol::DecodeError::*;
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;

fn check(version: ProtocolVersion, bytes: &[u8], expected: DecodeError, reason: ReasonCode) {
    let got = decode_packet(Bytes::copy_from_slice(bytes), version);
    assert_eq!(got, Err(expected.clone()), "decode_packet");
    let mut buf = BytesMut::from(bytes);
    let got = Decoder::new(version, 1 << 20).decode(&mut buf);
    assert_eq!(got, Err(expected.clone()), "Decoder::decode");
    assert_eq!(expected.reason_code(), reason, "reason code of {expected:?}");
}

macro_rules! malformed {
    ($($(#[$doc:meta])* $name:ident: $version:ident, $bytes:expr => $error:expr, $reason:ident;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                check($version, $bytes, $error, ReasonCode::$reason);
            }
        )*

        /// The table is at least 40 cases long.
        #[test]
        fn table_has_at_least_40_cases() {
            let names = [$(stringify!($name)),*];
            assert!(names.len() >= 40, "{} cases", names.len());
        }
    };
}

malformed! {
    // ---- Fixed header ---------------------------------------------------

    /// MQTT 3.1.1 section 2.2.1 table 2.1: packet type 0 is reserved.
    reserved_packet_type_0_v311: V3_1_1, b"\x00\x00" => InvalidPacketType(0), MalformedPacket;
    /// MQTT 5.0 section 2.1.2 table 2-1: packet type 0 is reserved.
    reserved_packet_type_0_v5: V5, b"\x00\x00" => InvalidPacketType(0), MalformedPacket;
    /// MQTT 3.1.1 table 2.1: 15 is reserved; AUTH exists only in 5.0.
    auth_in_v311: V3_1_1, b"\xF0\x00" => InvalidPacketType(15), MalformedPacket;
    /// MQTT 3.1 section 2.1: type 15 is reserved.
    auth_in_v31: V3_1, b"\xF0\x00" => InvalidPacketType(15), MalformedPacket;
    /// [MQTT-2.2.2-2] (3.1.1) / [MQTT-2.1.3-1] (5.0): CONNECT flags are 0000.
    connect_flags_1: V3_1_1, b"\x11\x0C\x00\x04MQTT\x04\x02\x00\x3C\x00\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::Connect, flags: 1 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: CONNACK flags are 0000.
    connack_flags_8: V5, b"\x28\x03\x00\x00\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::ConnAck, flags: 8 }, MalformedPacket;
    /// [MQTT-2.2.2-2]: PUBACK flags are 0000.
    puback_flags_2: V3_1_1, b"\x42\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubAck, flags: 2 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: PUBREC flags are 0000.
    pubrec_flags_1: V5, b"\x51\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRec, flags: 1 }, MalformedPacket;
    /// [MQTT-3.6.1-1] (3.1.1): PUBREL flags are 0010, not 0000.
    pubrel_flags_0_v311: V3_1_1, b"\x60\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0 }, MalformedPacket;
    /// MQTT 5.0 section 3.6.1: PUBREL flags are 0010.
    pubrel_flags_0_v5: V5, b"\x60\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: PUBCOMP flags are 0000.
    pubcomp_flags_2: V5, b"\x72\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubComp, flags: 2 }, MalformedPacket;
    /// [MQTT-3.8.1-1]: SUBSCRIBE flags are 0010, not 0000.
    subscribe_flags_0: V3_1_1, b"\x80\x06\x00\x01\x00\x01a\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::Subscribe, flags: 0 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: SUBACK flags are 0000.
    suback_flags_2: V5, b"\x92\x04\x00\x01\x00\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::SubAck, flags: 2 }, MalformedPacket;
    /// [MQTT-3.10.1-1]: UNSUBSCRIBE flags are 0010, not 0000.
    unsubscribe_flags_0: V3_1_1, b"\xA0\x05\x00\x01\x00\x01a"
        => InvalidFixedHeaderFlags { packet: PacketType::Unsubscribe, flags: 0 }, MalformedPacket;
    /// [MQTT-2.2.2-2]: UNSUBACK flags are 0000.
    unsuback_flags_1: V3_1_1, b"\xB1\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::UnsubAck, flags: 1 }, MalformedPacket;
    /// [MQTT-2.2.2-2]: PINGREQ flags are 0000.
    pingreq_flags_1: V3_1_1, b"\xC1\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::PingReq, flags: 1 }, MalformedPacket;
    /// [MQTT-3.6.1-1]: a 3.1.1 PUBREL has flags 0010; DUP=1 (0x6A, which
    /// MQTT 3.1 allows on a re-sent PUBREL) is malformed.
    pubrel_dup_v311: V3_1_1, b"\x6A\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0x0A }, MalformedPacket;
    /// MQTT 5.0 section 3.6.1: the same in 5.0.
    pubrel_dup_v5: V5, b"\x6A\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0x0A }, MalformedPacket;
    /// [MQTT-3.8.1-1]: a 3.1.1 SUBSCRIBE with DUP=1 is malformed.
    subscribe_dup_v311: V3_1_1, b"\x8A\x06\x00\x01\x00\x01a\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::Subscribe, flags: 0x0A }, MalformedPacket;
    /// [MQTT-3.10.1-1]: a 5.0 UNSUBSCRIBE with DUP=1 is malformed.
    unsubscribe_dup_v5: V5, b"\xAA\x06\x00\x01\x00\x00\x01a"
        => InvalidFixedHeaderFlags { packet: PacketType::Unsubscribe, flags: 0x0A }, MalformedPacket;
    /// MQTT 3.1 section 3.6: PUBREL uses QoS 1, so QoS 0 stays malformed
    /// in 3.1 too; only DUP is free.
    pubrel_flags_0_v31: V3_1, b"\x60\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubRel, flags: 0 }, MalformedPacket;
    /// MQTT 3.1 allows DUP on a re-sent PUBREL, SUBSCRIBE or UNSUBSCRIBE
    /// only: a 3.1 PUBACK with DUP=1 stays malformed.
    puback_dup_v31: V3_1, b"\x48\x02\x00\x01"
        => InvalidFixedHeaderFlags { packet: PacketType::PubAck, flags: 8 }, MalformedPacket;
    /// [MQTT-2.2.2-2]: PINGRESP flags are 0000.
    pingresp_flags_8: V3_1, b"\xD8\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::PingResp, flags: 8 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: DISCONNECT flags are 0000.
    disconnect_flags_2: V5, b"\xE2\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::Disconnect, flags: 2 }, MalformedPacket;
    /// [MQTT-2.1.3-1]: AUTH flags are 0000.
    auth_flags_1: V5, b"\xF1\x00"
        => InvalidFixedHeaderFlags { packet: PacketType::Auth, flags: 1 }, MalformedPacket;
    /// [MQTT-3.3.1-4]: a PUBLISH must not have both QoS bits set.
    publish_qos_3: V3_1_1, b"\x36\x05\x00\x01a\x00\x01" => InvalidQoS, MalformedPacket;
    /// [MQTT-3.3.1-4] in 5.0, with DUP and RETAIN also set.
    publish_qos_3_v5: V5, b"\x3F\x06\x00\x01a\x00\x01\x00" => InvalidQoS, MalformedPacket;
    /// [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
    publish_dup_with_qos_0: V3_1_1, b"\x38\x03\x00\x01a" => DupWithQoS0, MalformedPacket;
    /// [MQTT-1.5.5-1] (5.0) / section 2.2.3 (3.1.1): at most four bytes of
    /// remaining length.
    remaining_length_five_bytes: V3_1_1, b"\x30\x80\x80\x80\x80\x01"
        => MalformedVarInt, MalformedPacket;
    /// [MQTT-1.5.5-1]: the minimum number of bytes; 0x80 0x00 is a long 0.
    remaining_length_not_minimal: V5, b"\xC0\x80\x00" => MalformedVarInt, MalformedPacket;
    /// [MQTT-1.5.5-1]: 0x85 0x80 0x00 is a long 5.
    remaining_length_not_minimal_three_bytes: V3_1_1, b"\x30\x85\x80\x00"
        => MalformedVarInt, MalformedPacket;

    // ---- Truncated fields and trailing bytes ----------------------------

    /// MQTT 3.1.1 section 1.5.3: the string length runs past the packet.
    truncated_topic_name: V3_1_1, b"\x30\x04\x00\x05a/" => Truncated, MalformedPacket;
    /// Section 2.3.1: a PUBACK of remaining length 1 has half a packet id.
    truncated_packet_id: V3_1_1, b"\x40\x01\x00" => Truncated, MalformedPacket;
    /// Section 3.3.2: a PUBLISH too short for its topic name's length.
    truncated_topic_length: V3_1_1, b"\x30\x01\x00" => Truncated, MalformedPacket;
    /// [MQTT-2.3.1-5]: a QoS 1 PUBLISH ends after half its packet id...
    truncated_publish_packet_id: V3_1_1, b"\x32\x04\x00\x01a\x00" => Truncated, MalformedPacket;
    /// ...or before it.
    missing_publish_packet_id: V3_1_1, b"\x32\x03\x00\x01a" => Truncated, MalformedPacket;
    /// Section 3.3.2.3: a 5.0 PUBLISH ends before its property length.
    missing_publish_property_length_v5: V5, b"\x30\x03\x00\x01t" => Truncated, MalformedPacket;
    /// Section 3.1.2: the CONNECT ends before Keep Alive.
    truncated_connect_keep_alive: V3_1_1, b"\x10\x08\x00\x04MQTT\x04\x02" => Truncated, MalformedPacket;
    /// Section 3.2: a CONNACK of remaining length 1.
    truncated_connack: V3_1_1, b"\x20\x01\x00" => Truncated, MalformedPacket;
    /// [MQTT-3.1.3-1]: the Will Message is shorter than its length prefix.
    truncated_will_payload: V3_1_1,
        b"\x10\x12\x00\x04MQTT\x04\x06\x00\x3C\x00\x00\x00\x01t\x00\x05x"
        => Truncated, MalformedPacket;
    /// [MQTT-3.1.2-21]: the Password Flag is set but no password follows.
    truncated_missing_password: V3_1_1, b"\x10\x0F\x00\x04MQTT\x04\xC2\x00\x3C\x00\x00\x00\x01u"
        => Truncated, MalformedPacket;
    /// MQTT 3.1.1 section 3.8.3 (figure 3.21): each filter is followed by a
    /// requested QoS byte.
    truncated_subscription_options: V3_1_1, b"\x82\x05\x00\x01\x00\x01a"
        => Truncated, MalformedPacket;
    /// [MQTT-3.9.3-1]: a SUBACK with no return code at all.
    suback_without_return_codes: V3_1_1, b"\x90\x02\x00\x01" => Truncated, MalformedPacket;
    /// MQTT 5.0 section 3.11.3: an UNSUBACK with no reason code at all.
    unsuback_without_reason_codes_v5: V5, b"\xB0\x03\x00\x01\x00" => Truncated, MalformedPacket;
    /// Section 3.12: PINGREQ has no variable header or payload.
    trailing_bytes_pingreq: V3_1_1, b"\xC0\x01\x00" => TrailingBytes(1), MalformedPacket;
    /// MQTT 3.1.1 section 3.4: PUBACK has remaining length 2 (no reason code
    /// before 5.0).
    trailing_bytes_v311_puback: V3_1_1, b"\x40\x03\x00\x01\x00" => TrailingBytes(1), MalformedPacket;
    /// MQTT 3.1.1 section 3.2.1: CONNACK has remaining length 2.
    trailing_bytes_v311_connack: V3_1_1, b"\x20\x03\x00\x00\x00" => TrailingBytes(1), MalformedPacket;
    /// MQTT 3.1.1 section 3.14: DISCONNECT has no variable header.
    trailing_bytes_v311_disconnect: V3_1_1, b"\xE0\x01\x00" => TrailingBytes(1), MalformedPacket;
    /// MQTT 3.1.1 section 3.11.3: UNSUBACK has no payload.
    trailing_bytes_v311_unsuback: V3_1_1, b"\xB0\x03\x00\x01\x00" => TrailingBytes(1), MalformedPacket;
    /// MQTT 3.1.1 section 3.1.3: nothing follows the last field the flags
    /// announce.
    trailing_bytes_v311_connect: V3_1_1, b"\x10\x0E\x00\x04MQTT\x04\x02\x00\x3C\x00\x00\xAA\xBB"
        => TrailingBytes(2), MalformedPacket;
    /// MQTT 5.0 section 3.14.2: nothing follows the DISCONNECT properties.
    trailing_bytes_v5_disconnect: V5, b"\xE0\x03\x00\x00\x01" => TrailingBytes(1), MalformedPacket;

    // ---- UTF-8 Encoded Strings ------------------------------------------

    /// [MQTT-1.5.4-1] (5.0) / [MQTT-1.5.3-1] (3.1.1): C3 28 is not UTF-8.
    invalid_utf8_topic: V3_1_1, b"\x30\x04\x00\x02\xC3\x28" => InvalidUtf8, MalformedPacket;
    /// [MQTT-1.5.4-1]: C0 AF is an overlong '/', not well-formed UTF-8.
    overlong_utf8_topic: V5, b"\x30\x05\x00\x02\xC0\xAF\x00" => InvalidUtf8, MalformedPacket;
    /// [MQTT-1.5.4-1]: ED A0 80 encodes the surrogate U+D800.
    surrogate_in_client_id: V3_1_1, b"\x10\x0F\x00\x04MQTT\x04\x02\x00\x3C\x00\x03\xED\xA0\x80"
        => InvalidUtf8, MalformedPacket;
    /// [MQTT-1.5.4-1]: a surrogate in a User Property name (5.0).
    surrogate_in_user_property: V5, b"\x30\x0D\x00\x01t\x09\x26\x00\x03\xED\xA0\x80\x00\x01v"
        => InvalidUtf8, MalformedPacket;
    /// [MQTT-1.5.4-2] (5.0) / [MQTT-1.5.3-2] (3.1.1): no U+0000.
    null_in_topic: V3_1_1, b"\x30\x05\x00\x03a\x00b" => NullCharacter, MalformedPacket;
    /// [MQTT-1.5.4-2]: no U+0000 in the client identifier.
    null_in_client_id: V5, b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3C\x00\x00\x03a\x00b"
        => NullCharacter, MalformedPacket;
    /// [MQTT-1.5.3-2]: no U+0000 in the user name.
    null_in_user_name: V3_1_1, b"\x10\x0F\x00\x04MQTT\x04\x82\x00\x3C\x00\x00\x00\x01\x00"
        => NullCharacter, MalformedPacket;

    // ---- CONNECT ----------------------------------------------------------

    /// [MQTT-3.1.2-1]: the protocol name is "MQTT" (answered with 0x84).
    wrong_protocol_name: V3_1_1, b"\x10\x0C\x00\x04MQTX\x04\x02\x00\x3C\x00\x00"
        => InvalidProtocolName, UnsupportedProtocolVersion;
    /// [MQTT-3.1.2-1]: the name is case sensitive, "MQTT" capitalised.
    lowercase_protocol_name: V5, b"\x10\x0D\x00\x04mqtt\x05\x02\x00\x3C\x00\x00\x00"
        => InvalidProtocolName, UnsupportedProtocolVersion;
    /// [MQTT-3.1.2-2]: level 6 is not supported (CONNACK 0x84 in 5.0,
    /// return code 1 in 3.1.1).
    unsupported_level_6: V3_1_1, b"\x10\x0C\x00\x04MQTT\x06\x02\x00\x3C\x00\x00"
        => UnsupportedProtocolVersion(6), UnsupportedProtocolVersion;
    /// MQTT 3.1 section 3.1: "MQIsdp" goes with version 3 only.
    mqisdp_with_level_4: V3_1, b"\x10\x0E\x00\x06MQIsdp\x04\x02\x00\x3C\x00\x00"
        => UnsupportedProtocolVersion(4), UnsupportedProtocolVersion;
    /// [MQTT-3.1.2-2]: "MQTT" goes with levels 4 and 5 only.
    mqtt_with_level_3: V3_1_1, b"\x10\x0C\x00\x04MQTT\x03\x02\x00\x3C\x00\x00"
        => UnsupportedProtocolVersion(3), UnsupportedProtocolVersion;
    /// [MQTT-3.1.2-3]: the reserved CONNECT flag (bit 0) is 0.
    reserved_connect_flag_v311: V3_1_1, b"\x10\x0C\x00\x04MQTT\x04\x03\x00\x3C\x00\x00"
        => ReservedConnectFlag, MalformedPacket;
    /// [MQTT-3.1.2-3] in 5.0.
    reserved_connect_flag_v5: V5, b"\x10\x0D\x00\x04MQTT\x05\x03\x00\x3C\x00\x00\x00"
        => ReservedConnectFlag, MalformedPacket;
    /// [MQTT-3.1.2-13] (3.1.1): Will QoS is 0 when the Will Flag is 0.
    will_qos_without_will_flag: V3_1_1, b"\x10\x0C\x00\x04MQTT\x04\x0A\x00\x3C\x00\x00"
        => InvalidWillFlags, MalformedPacket;
    /// [MQTT-3.1.2-15] (3.1.1): Will Retain is 0 when the Will Flag is 0.
    will_retain_without_will_flag: V3_1_1, b"\x10\x0C\x00\x04MQTT\x04\x22\x00\x3C\x00\x00"
        => InvalidWillFlags, MalformedPacket;
    /// [MQTT-3.1.2-14] (3.1.1): Will QoS 3 is invalid.
    will_qos_3: V3_1_1, b"\x10\x11\x00\x04MQTT\x04\x1E\x00\x3C\x00\x00\x00\x01t\x00\x00"
        => InvalidWillFlags, MalformedPacket;
    /// [MQTT-3.1.2-12] (5.0): Will QoS 3 is a Malformed Packet.
    will_qos_3_v5: V5, b"\x10\x13\x00\x04MQTT\x05\x1E\x00\x3C\x00\x00\x00\x00\x00\x01t\x00\x00"
        => InvalidWillFlags, MalformedPacket;
    /// [MQTT-3.1.2-22] (3.1.1): no Password Flag without the User Name Flag
    /// (allowed in 5.0, see `password_without_user_name_is_fine_in_v5`).
    password_without_user_name_v311: V3_1_1,
        b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3C\x00\x00\x00\x02pw"
        => PasswordWithoutUsername, MalformedPacket;
    /// [MQTT-3.1.3-11] / [MQTT-3.3.2-2]: the Will Topic is a topic name,
    /// without wildcards.
    will_topic_with_wildcard: V3_1_1,
        b"\x10\x13\x00\x04MQTT\x04\x06\x00\x3C\x00\x00\x00\x03a/#\x00\x00"
        => InvalidTopicName(TopicError::WildcardInName), TopicNameInvalid;

    // ---- Packet identifiers ----------------------------------------------

    /// [MQTT-2.3.1-1] (3.1.1): a QoS 1 PUBLISH needs a non-zero packet id.
    zero_packet_id_publish_qos1: V3_1_1, b"\x32\x05\x00\x01a\x00\x00"
        => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.2.1-3] (5.0): a QoS 2 PUBLISH needs a non-zero packet id.
    zero_packet_id_publish_qos2_v5: V5, b"\x34\x06\x00\x01a\x00\x00\x00"
        => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.3.1-1]: PUBACK packet id 0.
    zero_packet_id_puback: V3_1_1, b"\x40\x02\x00\x00" => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.2.1-3]: PUBREL packet id 0.
    zero_packet_id_pubrel_v5: V5, b"\x62\x02\x00\x00" => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.3.1-1]: SUBSCRIBE packet id 0.
    zero_packet_id_subscribe: V3_1_1, b"\x82\x06\x00\x00\x00\x01a\x00"
        => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.3.1-1]: UNSUBSCRIBE packet id 0.
    zero_packet_id_unsubscribe: V3_1_1, b"\xA2\x05\x00\x00\x00\x01a"
        => ZeroPacketId, MalformedPacket;
    /// [MQTT-2.3.1-1]: SUBACK packet id 0.
    zero_packet_id_suback: V3_1_1, b"\x90\x03\x00\x00\x00" => ZeroPacketId, MalformedPacket;

    // ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------

    /// [MQTT-3.8.3-3] (3.1.1): at least one topic filter.
    subscribe_without_filters_v311: V3_1_1, b"\x82\x02\x00\x01"
        => NoTopicFilters(PacketType::Subscribe), ProtocolError;
    /// [MQTT-3.8.3-2] (5.0): a SUBSCRIBE with no payload is a Protocol Error.
    subscribe_without_filters_v5: V5, b"\x82\x03\x00\x01\x00"
        => NoTopicFilters(PacketType::Subscribe), ProtocolError;
    /// [MQTT-3.10.3-2]: at least one topic filter.
    unsubscribe_without_filters_v311: V3_1_1, b"\xA2\x02\x00\x01"
        => NoTopicFilters(PacketType::Unsubscribe), ProtocolError;
    /// [MQTT-3.10.3-2] (5.0): an UNSUBSCRIBE with no payload is a Protocol
    /// Error.
    unsubscribe_without_filters_v5: V5, b"\xA2\x03\x00\x01\x00"
        => NoTopicFilters(PacketType::Unsubscribe), ProtocolError;
    /// [MQTT-3-8.3-4] (3.1.1, sic): bits 2-7 of the requested QoS byte are
    /// reserved; the packet is malformed.
    subscription_options_reserved_bits_v311: V3_1_1, b"\x82\x06\x00\x01\x00\x01a\x04"
        => InvalidSubscriptionOptions(0x04), MalformedPacket;
    /// [MQTT-3-8.3-4] (3.1.1): QoS 3 is malformed.
    subscription_qos_3_v311: V3_1_1, b"\x82\x06\x00\x01\x00\x01a\x03"
        => InvalidSubscriptionOptions(0x03), MalformedPacket;
    /// [MQTT-3.8.3-5] (5.0): reserved bit 6 set is a Malformed Packet.
    subscription_options_reserved_bit_6_v5: V5, b"\x82\x07\x00\x01\x00\x00\x01a\x40"
        => InvalidSubscriptionOptions(0x40), MalformedPacket;
    /// [MQTT-3.8.3-5] (5.0): reserved bit 7 set is a Malformed Packet.
    subscription_options_reserved_bit_7_v5: V5, b"\x82\x07\x00\x01\x00\x00\x01a\x81"
        => InvalidSubscriptionOptions(0x81), MalformedPacket;
    /// MQTT 5.0 section 3.8.3.1: "It is a Protocol Error to send a Retain
    /// Handling value of 3" - so 0x82, not 0x81.
    retain_handling_3_v5: V5, b"\x82\x07\x00\x01\x00\x00\x01a\x30"
        => InvalidSubscriptionOptionValue(0x30), ProtocolError;
    /// MQTT 5.0 section 3.8.3.1: "It is a Protocol Error if the Maximum QoS
    /// field has the value 3" - so 0x82, not 0x81.
    subscription_qos_3_v5: V5, b"\x82\x07\x00\x01\x00\x00\x01a\x03"
        => InvalidSubscriptionOptionValue(0x03), ProtocolError;
    /// [MQTT-3.8.3-4] (5.0): No Local on a shared subscription is a Protocol
    /// Error.
    no_local_on_shared_subscription: V5, b"\x82\x10\x00\x01\x00\x00\x0A$share/g/a\x04"
        => NoLocalOnSharedSubscription, ProtocolError;

    // ---- Topic names and filters ------------------------------------------

    /// [MQTT-3.3.2-2]: no wildcard in a PUBLISH topic name (0x90 in 5.0).
    publish_topic_with_plus: V3_1_1, b"\x30\x05\x00\x03a/+"
        => InvalidTopicName(TopicError::WildcardInName), TopicNameInvalid;
    /// [MQTT-3.3.2-2] in 5.0, with '#'.
    publish_topic_with_hash_v5: V5, b"\x30\x06\x00\x03a/#\x00"
        => InvalidTopicName(TopicError::WildcardInName), TopicNameInvalid;
    /// [MQTT-3.3.2-2]: a Topic Alias does not excuse a wildcard.
    publish_aliased_topic_with_wildcard_v5: V5, b"\x30\x09\x00\x03a/#\x03\x23\x00\x01"
        => InvalidTopicName(TopicError::WildcardInName), TopicNameInvalid;
    /// [MQTT-4.7.3-1] (3.1.1): topic names are at least one character long.
    publish_empty_topic_v311: V3_1_1, b"\x30\x02\x00\x00"
        => InvalidTopicName(TopicError::Empty), TopicNameInvalid;
    /// MQTT 3.1 section 3.3: the topic name is required.
    publish_empty_topic_v31: V3_1, b"\x30\x02\x00\x00"
        => InvalidTopicName(TopicError::Empty), TopicNameInvalid;
    /// [MQTT-4.7.1-2]: '#' is the last character of the filter.
    filter_hash_not_last: V3_1_1, b"\x82\x0A\x00\x01\x00\x05a/#/b\x00"
        => InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard), TopicFilterInvalid;
    /// [MQTT-4.7.1-2]: '#' follows a separator (alone in its level).
    filter_hash_not_alone: V3_1_1, b"\x82\x07\x00\x01\x00\x02a#\x00"
        => InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard), TopicFilterInvalid;
    /// [MQTT-4.7.1-2] in UNSUBSCRIBE (5.0).
    unsubscribe_filter_hash_not_alone_v311: V3_1_1, b"\xA2\x06\x00\x01\x00\x02#a"
        => InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard), TopicFilterInvalid;
    /// [MQTT-4.7.1-3]: '+' occupies an entire level.
    filter_plus_not_alone: V3_1_1, b"\x82\x09\x00\x01\x00\x04a/b+\x01"
        => InvalidTopicFilter(TopicError::MisplacedSingleLevelWildcard), TopicFilterInvalid;
    /// [MQTT-4.7.1-3] in UNSUBSCRIBE.
    unsubscribe_filter_plus_not_alone: V3_1_1, b"\xA2\x06\x00\x01\x00\x02+a"
        => InvalidTopicFilter(TopicError::MisplacedSingleLevelWildcard), TopicFilterInvalid;
    /// [MQTT-4.7.3-1]: topic filters are at least one character long.
    empty_filter: V3_1_1, b"\x82\x05\x00\x01\x00\x00\x00"
        => InvalidTopicFilter(TopicError::Empty), TopicFilterInvalid;
    /// [MQTT-4.7.3-1] in a 5.0 SUBSCRIBE: an empty filter is still a
    /// malformed packet (the other invalid filters are refused one by one).
    empty_filter_v5: V5, b"\x82\x06\x00\x01\x00\x00\x00\x00"
        => InvalidTopicFilter(TopicError::Empty), TopicFilterInvalid;
    /// [MQTT-4.8.2-2] (5.0, served to 3.1.1 too): the ShareName is followed
    /// by '/' and a filter. (A 5.0 SUBSCRIBE refuses such a filter alone,
    /// with 0x8F in SUBACK: see codec_decode.)
    shared_without_filter: V3_1_1, b"\x82\x0D\x00\x01\x00\x08$share/g\x00"
        => InvalidTopicFilter(TopicError::InvalidSharedSubscription), TopicFilterInvalid;
    /// [MQTT-4.8.2-2]: '/' must be followed by a topic filter.
    shared_with_empty_filter: V3_1_1, b"\x82\x0E\x00\x01\x00\x09$share/g/\x00"
        => InvalidTopicFilter(TopicError::InvalidSharedSubscription), TopicFilterInvalid;
    /// [MQTT-4.8.2-1]: the ShareName is at least one character long.
    shared_with_empty_share_name: V3_1_1, b"\x82\x0E\x00\x01\x00\x09$share//a\x00"
        => InvalidTopicFilter(TopicError::InvalidSharedSubscription), TopicFilterInvalid;
    /// [MQTT-4.8.2-2]: the ShareName has no '+', '#' or '/'.
    shared_share_name_with_plus: V3_1_1, b"\x82\x10\x00\x01\x00\x0B$share/g+/a\x00"
        => InvalidTopicFilter(TopicError::InvalidSharedSubscription), TopicFilterInvalid;

    // ---- Properties (5.0) ---------------------------------------------------

    /// MQTT 5.0 section 2.2.2.2: 0x05 is not a property identifier
    /// (Malformed Packet).
    unknown_property_in_publish: V5, b"\x30\x06\x00\x01t\x02\x05\x00"
        => UnknownProperty(0x05), MalformedPacket;
    /// Section 2.2.2.2: 0x00 is not a property identifier either.
    unknown_property_0_in_disconnect: V5, b"\xE0\x03\x00\x01\x00"
        => UnknownProperty(0x00), MalformedPacket;
    /// Section 2.2.2.2: Topic Alias is a PUBLISH property, not a CONNECT one.
    topic_alias_in_connect: V5, b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3C\x03\x23\x00\x01\x00\x00"
        => PropertyNotAllowed { property: PropertyId::TopicAlias, packet: PacketType::Connect },
        MalformedPacket;
    /// Section 2.2.2.2: Will Delay Interval belongs to the Will Properties.
    will_delay_in_publish: V5, b"\x30\x09\x00\x01t\x05\x18\x00\x00\x00\x0A"
        => PropertyNotAllowed {
            property: PropertyId::WillDelayInterval,
            packet: PacketType::Publish,
        },
        MalformedPacket;
    /// Section 3.1.3.2: Session Expiry Interval is not a Will Property.
    session_expiry_in_will_properties: V5,
        b"\x10\x18\x00\x04MQTT\x05\x06\x00\x3C\x00\x00\x00\x05\x11\x00\x00\x00\x0A\x00\x01t\x00\x00"
        => PropertyNotAllowed {
            property: PropertyId::SessionExpiryInterval,
            packet: PacketType::Connect,
        },
        MalformedPacket;
    /// Section 3.8.2.1: SUBSCRIBE carries no Reason String.
    reason_string_in_subscribe: V5, b"\x82\x0C\x00\x01\x05\x1F\x00\x02ok\x00\x01a\x00"
        => PropertyNotAllowed { property: PropertyId::ReasonString, packet: PacketType::Subscribe },
        MalformedPacket;
    /// Section 3.2.2.3: CONNACK carries no Subscription Identifier.
    subscription_identifier_in_connack: V5, b"\x20\x05\x00\x00\x02\x0B\x01"
        => PropertyNotAllowed {
            property: PropertyId::SubscriptionIdentifier,
            packet: PacketType::ConnAck,
        },
        MalformedPacket;
    /// Section 3.3.2.3.9: "It is a Protocol Error to include the Content Type
    /// more than once".
    duplicate_content_type: V5, b"\x30\x0C\x00\x01t\x08\x03\x00\x01a\x03\x00\x01b"
        => DuplicateProperty(PropertyId::ContentType), ProtocolError;
    /// Section 3.8.2.1.2: at most one Subscription Identifier in SUBSCRIBE.
    duplicate_subscription_identifier_in_subscribe: V5,
        b"\x82\x0B\x00\x01\x04\x0B\x01\x0B\x02\x00\x01a\x00"
        => DuplicateProperty(PropertyId::SubscriptionIdentifier), ProtocolError;
    /// Section 3.1.2.11.2: at most one Session Expiry Interval.
    duplicate_session_expiry_in_connect: V5,
        b"\x10\x17\x00\x04MQTT\x05\x02\x00\x3C\x0A\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02\x00\x00"
        => DuplicateProperty(PropertyId::SessionExpiryInterval), ProtocolError;
    /// Section 3.4.2.2.2: at most one Reason String.
    duplicate_reason_string_in_puback: V5, b"\x40\x0C\x00\x01\x00\x08\x1F\x00\x01a\x1F\x00\x01b"
        => DuplicateProperty(PropertyId::ReasonString), ProtocolError;
    /// Section 3.15.2.2.2: at most one Authentication Method.
    duplicate_authentication_method_in_auth: V5, b"\xF0\x0C\x18\x0A\x15\x00\x02ab\x15\x00\x02cd"
        => DuplicateProperty(PropertyId::AuthenticationMethod), ProtocolError;
    /// Section 3.1.2.11.3: Receive Maximum 0 is a Protocol Error.
    receive_maximum_0_in_connect: V5,
        b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3C\x03\x21\x00\x00\x00\x00"
        => InvalidPropertyValue(PropertyId::ReceiveMaximum), ProtocolError;
    /// Section 3.2.2.3.3: Receive Maximum 0 in CONNACK.
    receive_maximum_0_in_connack: V5, b"\x20\x06\x00\x00\x03\x21\x00\x00"
        => InvalidPropertyValue(PropertyId::ReceiveMaximum), ProtocolError;
    /// [MQTT-3.3.2-8] and section 3.3.4: "A Topic Alias value of 0 ... is a
    /// Protocol Error, the receiver uses DISCONNECT with Reason Code of 0x94
    /// (Topic Alias invalid)".
    topic_alias_0: V5, b"\x30\x07\x00\x01t\x03\x23\x00\x00"
        => InvalidPropertyValue(PropertyId::TopicAlias), TopicAliasInvalid;
    /// Section 3.8.2.1.2: "It is a Protocol Error if the Subscription
    /// Identifier has a value of 0".
    subscription_identifier_0_in_subscribe: V5, b"\x82\x09\x00\x01\x02\x0B\x00\x00\x01a\x00"
        => InvalidPropertyValue(PropertyId::SubscriptionIdentifier), ProtocolError;
    /// Section 3.3.2.3.8: Subscription Identifier 0 in PUBLISH.
    subscription_identifier_0_in_publish: V5, b"\x30\x06\x00\x01t\x02\x0B\x00"
        => InvalidPropertyValue(PropertyId::SubscriptionIdentifier), ProtocolError;
    /// Section 3.3.2.3.2: the Payload Format Indicator is 0 or 1.
    payload_format_indicator_2: V5, b"\x30\x06\x00\x01t\x02\x01\x02"
        => InvalidPropertyValue(PropertyId::PayloadFormatIndicator), ProtocolError;
    /// Section 3.1.3.2.3: the same in the Will Properties.
    payload_format_indicator_2_in_will: V5,
        b"\x10\x15\x00\x04MQTT\x05\x06\x00\x3C\x00\x00\x00\x02\x01\x02\x00\x01t\x00\x00"
        => InvalidPropertyValue(PropertyId::PayloadFormatIndicator), ProtocolError;
    /// Section 3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error.
    maximum_packet_size_0_in_connect: V5,
        b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3C\x05\x27\x00\x00\x00\x00\x00\x00"
        => InvalidPropertyValue(PropertyId::MaximumPacketSize), ProtocolError;
    /// Section 3.2.2.3.6: Maximum Packet Size 0 in CONNACK.
    maximum_packet_size_0_in_connack: V5, b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\x00"
        => InvalidPropertyValue(PropertyId::MaximumPacketSize), ProtocolError;
    /// Section 3.1.2.11.7: Request Problem Information is 0 or 1.
    request_problem_information_2: V5, b"\x10\x0F\x00\x04MQTT\x05\x02\x00\x3C\x02\x17\x02\x00\x00"
        => InvalidPropertyValue(PropertyId::RequestProblemInformation), ProtocolError;
    /// Section 3.1.2.11.6: Request Response Information is 0 or 1.
    request_response_information_2: V5, b"\x10\x0F\x00\x04MQTT\x05\x02\x00\x3C\x02\x19\x02\x00\x00"
        => InvalidPropertyValue(PropertyId::RequestResponseInformation), ProtocolError;
    /// Section 3.2.2.3.4: Maximum QoS is 0 or 1.
    maximum_qos_2_in_connack: V5, b"\x20\x05\x00\x00\x02\x24\x02"
        => InvalidPropertyValue(PropertyId::MaximumQoS), ProtocolError;
    /// Section 3.2.2.3.5: Retain Available is 0 or 1.
    retain_available_2_in_connack: V5, b"\x20\x05\x00\x00\x02\x25\x02"
        => InvalidPropertyValue(PropertyId::RetainAvailable), ProtocolError;
    /// [MQTT-3.3.2-14]: the Response Topic has no wildcards.
    response_topic_with_wildcard: V5, b"\x30\x08\x00\x01t\x04\x08\x00\x01#"
        => InvalidPropertyValue(PropertyId::ResponseTopic), ProtocolError;
    /// Section 3.1.2.11.10: "It is a Protocol Error to include Authentication
    /// Data if there is no Authentication Method".
    auth_data_without_method_in_connect: V5,
        b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3C\x04\x16\x00\x01\xAA\x00\x00"
        => AuthDataWithoutMethod, ProtocolError;
    /// Section 3.15.2.2.3: the same in AUTH.
    auth_data_without_method_in_auth: V5, b"\xF0\x06\x18\x04\x16\x00\x01\xAA"
        => AuthDataWithoutMethod, ProtocolError;
    /// Section 3.2.2.3.18: the same in CONNACK.
    auth_data_without_method_in_connack: V5, b"\x20\x07\x00\x00\x04\x16\x00\x01\xAA"
        => AuthDataWithoutMethod, ProtocolError;
    /// Section 3.3.2.1: "It is a Protocol Error if the Topic Name is zero
    /// length and there is no Topic Alias".
    empty_topic_without_alias_v5: V5, b"\x30\x03\x00\x00\x00"
        => EmptyTopicWithoutAlias, ProtocolError;
    /// Section 2.2.2.1: the property length runs past the packet.
    property_length_past_packet: V5, b"\x30\x05\x00\x01t\x0A\x01" => Truncated, MalformedPacket;
    /// Section 2.2.2.1: a property value runs past its property block.
    property_value_past_property_block: V5, b"\x30\x08\x00\x01t\x02\x02\x00\x00\x00"
        => Truncated, MalformedPacket;
    /// [MQTT-1.5.5-1]: the property length is a Variable Byte Integer of at
    /// most four bytes.
    property_length_five_bytes: V5, b"\x30\x0A\x00\x01t\x80\x80\x80\x80\x01\x00\x00"
        => MalformedVarInt, MalformedPacket;

    // ---- Reason codes ----------------------------------------------------------

    /// MQTT 5.0 section 3.6.2.1: PUBREL allows only 0x00 and 0x92, not 0x10.
    reason_0x10_in_pubrel: V5, b"\x62\x03\x00\x01\x10"
        => InvalidReasonCode { packet: PacketType::PubRel, code: 0x10 }, MalformedPacket;
    /// Section 3.7.2.1: PUBCOMP allows only 0x00 and 0x92.
    reason_0x10_in_pubcomp: V5, b"\x70\x03\x00\x01\x10"
        => InvalidReasonCode { packet: PacketType::PubComp, code: 0x10 }, MalformedPacket;
    /// Section 3.4.2.1: 0x8B Server shutting down is not a PUBACK reason.
    reason_0x8b_in_puback: V5, b"\x40\x03\x00\x01\x8B"
        => InvalidReasonCode { packet: PacketType::PubAck, code: 0x8B }, MalformedPacket;
    /// Section 2.4: 0x03 is not a reason code at all.
    undefined_reason_in_disconnect: V5, b"\xE0\x01\x03"
        => InvalidReasonCode { packet: PacketType::Disconnect, code: 0x03 }, MalformedPacket;
    /// Section 3.15.2.1: AUTH allows 0x00, 0x18 and 0x19 only.
    reason_0x87_in_auth: V5, b"\xF0\x01\x87"
        => InvalidReasonCode { packet: PacketType::Auth, code: 0x87 }, MalformedPacket;
    /// Section 3.9.3: 0x11 No subscription existed is an UNSUBACK reason.
    reason_0x11_in_suback: V5, b"\x90\x04\x00\x01\x00\x11"
        => InvalidReasonCode { packet: PacketType::SubAck, code: 0x11 }, MalformedPacket;
    /// Section 3.11.3: 0x01 Granted QoS 1 is a SUBACK reason.
    reason_0x01_in_unsuback: V5, b"\xB0\x04\x00\x01\x00\x01"
        => InvalidReasonCode { packet: PacketType::UnsubAck, code: 0x01 }, MalformedPacket;
    /// Section 3.2.2.2: 0x04 is a DISCONNECT reason, not a CONNACK one.
    reason_0x04_in_connack: V5, b"\x20\x03\x00\x04\x00"
        => InvalidReasonCode { packet: PacketType::ConnAck, code: 0x04 }, MalformedPacket;
    /// MQTT 3.1.1 table 3.1: return codes 6-255 are reserved.
    v311_connack_return_code_6: V3_1_1, b"\x20\x02\x00\x06"
        => InvalidReasonCode { packet: PacketType::ConnAck, code: 6 }, MalformedPacket;
    /// [MQTT-3.9.3-2] (3.1.1): SUBACK return codes other than 0x00, 0x01,
    /// 0x02 and 0x80 are reserved.
    v311_suback_return_code_3: V3_1_1, b"\x90\x03\x00\x01\x03"
        => InvalidReasonCode { packet: PacketType::SubAck, code: 3 }, MalformedPacket;
    /// [MQTT-3.9.3-2] (3.1.1): the 5.0 code 0x87 is not a 3.1.1 return code.
    v311_suback_return_code_0x87: V3_1_1, b"\x90\x03\x00\x01\x87"
        => InvalidReasonCode { packet: PacketType::SubAck, code: 0x87 }, MalformedPacket;

    // ---- CONNACK flags ----------------------------------------------------------

    /// MQTT 3.1.1 section 3.2.2.1: bits 7-1 of the acknowledge flags are
    /// reserved and 0.
    connack_reserved_flags_v311: V3_1_1, b"\x20\x02\x02\x00" => InvalidConnAckFlags, MalformedPacket;
    /// [MQTT-3.2.2-1] (5.0): bits 7-1 are reserved.
    connack_reserved_flags_v5: V5, b"\x20\x03\x80\x00\x00" => InvalidConnAckFlags, MalformedPacket;
    /// MQTT 3.1 section 3.2: the first CONNACK byte is reserved (no Session
    /// Present before 3.1.1).
    connack_session_present_in_v31: V3_1, b"\x20\x02\x01\x00" => InvalidConnAckFlags, MalformedPacket;
}

fn decode(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_packet(Bytes::copy_from_slice(bytes), version)
}

/// Positive control for the duplicate-property rule: User Property may
/// appear more than once, names repeated, order kept [MQTT-3.3.2-18]
/// (section 2.2.2.2).
#[test]
fn user_property_repeated_is_fine() {
    let bytes = b"\x30\x13\x00\x01t\x0E\x26\x00\x01k\x00\x011\x26\x00\x01k\x00\x012\x00";
    let Ok(Packet::Publish(publish)) = decode(V5, bytes) else { panic!("not decoded") };
    let pairs: Vec<(&str, &str)> =
        publish.properties.user_properties.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(pairs, [("k", "1"), ("k", "2")]);
    assert_eq!(&publish.payload[..], b"\x00");
}

/// Positive control: a PUBLISH may carry several Subscription Identifiers
/// [MQTT-3.3.4-3] (section 3.3.2.3.8).
#[test]
fn subscription_identifier_repeated_in_publish_is_fine() {
    let bytes = b"\x30\x08\x00\x01t\x04\x0B\x01\x0B\x01";
    let Ok(Packet::Publish(publish)) = decode(V5, bytes) else { panic!("not decoded") };
    let ids: Vec<u32> =
        publish.properties.subscription_identifiers.iter().map(|i| i.get()).collect();
    assert_eq!(ids, [1, 1]);
}

/// Positive control for [MQTT-3.1.2-22]: 5.0 allows a password without a
/// user name (section 3.1.2.9).
#[test]
fn password_without_user_name_is_fine_in_v5() {
    let bytes = b"\x10\x11\x00\x04MQTT\x05\x42\x00\x3C\x00\x00\x00\x00\x02pw";
    let Ok(Packet::Connect(connect)) = decode(V5, bytes) else { panic!("not decoded") };
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}

/// Positive control for the subscription option checks: every defined bit
/// at once (Retain Handling 2, RAP, No Local, QoS 2) on a non-shared filter.
#[test]
fn every_defined_subscription_option_bit_is_fine() {
    let bytes = b"\x82\x07\x00\x01\x00\x00\x01a\x2E";
    let Ok(Packet::Subscribe(subscribe)) = decode(V5, bytes) else { panic!("not decoded") };
    let options = subscribe.subscriptions[0].options;
    assert_eq!(options.qos, QoS::ExactlyOnce);
    assert!(options.no_local && options.retain_as_published);
    assert_eq!(options.retain_handling, RetainHandling::DoNotSend);
}

/// `decode_packet` is given whole packets: an empty buffer or one shorter
/// than its remaining length is truncated (the `Decoder` would wait instead).
#[test]
fn decode_packet_of_incomplete_input_is_truncated() {
    assert_eq!(decode(V3_1_1, b""), Err(Truncated));
    assert_eq!(decode(V3_1_1, b"\x30"), Err(Truncated));
    assert_eq!(decode(V3_1_1, b"\x30\x80"), Err(Truncated));
    assert_eq!(decode(V3_1_1, b"\x40\x02\x00"), Err(Truncated));
}

/// `decode_packet` takes exactly one packet: bytes after it are an error,
/// not silently dropped.
#[test]
fn decode_packet_rejects_a_second_packet() {
    assert_eq!(decode(V3_1_1, b"\xC0\x00\xC0\x00"), Err(TrailingBytes(2)));
}
