//! Round-trip property tests over every packet type of every version:
//! generated valid packets survive encode -> decode unchanged and re-encode to
//! the same bytes; arbitrary and mutated bytes never panic the decoder, and
//! whatever it accepts re-encodes to a packet that decodes the same.
//!
//! The generators only build what the version can carry: before 5.0 the
//! properties are default, the acknowledgements carry Success, SUBACK uses
//! the four 3.1.1 return codes, UNSUBACK has no reasons and DISCONNECT is
//! bare; MQTT 3.1 CONNACK never has Session Present.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use ringmq::protocol::ProtocolVersion::{V3_1, V3_1_1, V5};
use ringmq::protocol::*;
use smallvec::SmallVec;
use std::fmt::Debug;
use std::num::{NonZeroU16, NonZeroU32};

// ---- Generators ----------------------------------------------------------------

fn any_version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![V3_1, V3_1_1, V5])
}

/// A UTF-8 string without U+0000 [MQTT-1.5.4-2], any other code point
/// allowed (multi-byte ones included).
fn text() -> impl Strategy<Value = ByteString> {
    "[^\\x00]{0,6}".prop_map(ByteString::from)
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| PacketId::new(v).expect("non-zero"))
}

fn non_zero_u16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).expect("non-zero"))
}

fn non_zero_u32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))
}

/// Section 3.8.2.1.2: 1 to 268,435,455.
fn subscription_id() -> impl Strategy<Value = NonZeroU32> {
    (1..=MAX_SUBSCRIPTION_ID).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))
}

/// A topic level without wildcards or separators.
fn level() -> impl Strategy<Value = String> {
    "[^\\x00+#/]{0,3}"
}

/// A topic name: levels without wildcards, not empty [MQTT-4.7.3-1].
fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..4)
        .prop_filter_map("empty topic", |levels| TopicName::new(levels.join("/")).ok())
}

/// A topic filter with '+' levels, a trailing '#', or a `$share/` prefix.
fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![Just("+".to_owned()), level()];
    (option::of("[^\\x00+#/]{1,3}"), vec(filter_level, 1..4), any::<bool>()).prop_filter_map(
        "invalid filter",
        |(share, levels, multi)| {
            let mut filter = levels.join("/");
            if multi {
                filter.push_str("/#");
            }
            if let Some(share) = share {
                filter = format!("$share/{share}/{filter}");
            }
            TopicFilter::new(filter).ok()
        },
    )
}

/// The reason codes MQTT 5.0 defines for `packet` (section 2.4).
fn reasons_for(packet: PacketType) -> Vec<ReasonCode> {
    (0..=255u8).filter_map(ReasonCode::from_u8).filter(|r| r.is_valid_for(packet)).collect()
}

/// `strategy` in 5.0, the default otherwise (no properties before 5.0).
fn v5_only<T: Default + Clone + Debug + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

/// Section 3.1.2.11.10: Authentication Data only with a method.
fn auth_pair() -> impl Strategy<Value = (Option<ByteString>, Option<Bytes>)> {
    (option::of(text()), option::of(binary(6)))
        .prop_map(|(method, data)| (method.clone(), method.and(data)))
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        option::of(non_zero_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        auth_pair(),
    )
        .prop_map(
            |(expiry, receive, size, aliases, response, problem, users, (method, data))| {
                ConnectProperties {
                    session_expiry_interval: expiry,
                    receive_maximum: receive,
                    maximum_packet_size: size,
                    topic_alias_maximum: aliases,
                    request_response_information: response,
                    request_problem_information: problem,
                    user_properties: users,
                    authentication_method: method,
                    authentication_data: data,
                }
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(binary(6)),
        user_properties(),
    )
        .prop_map(|(delay, format, expiry, content, response, correlation, users)| {
            WillProperties {
                will_delay_interval: delay,
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                content_type: content,
                response_topic: response,
                correlation_data: correlation,
                user_properties: users,
            }
        })
}

fn conn_ack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let first = (
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        // Section 3.2.2.3.4: Maximum QoS is 0 or 1.
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        option::of(non_zero_u32()),
        option::of(text()),
        option::of(any::<u16>()),
        option::of(text()),
    );
    let second = (
        user_properties(),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(text()),
        option::of(text()),
        auth_pair(),
    );
    (first, second).prop_map(
        |(
            (expiry, receive, max_qos, retain, size, assigned, aliases, reason),
            (users, wildcard, ids, shared, keep_alive, response, reference, (method, data)),
        )| ConnAckProperties {
            session_expiry_interval: expiry,
            receive_maximum: receive,
            maximum_qos: max_qos,
            retain_available: retain,
            maximum_packet_size: size,
            assigned_client_identifier: assigned,
            topic_alias_maximum: aliases,
            reason_string: reason,
            user_properties: users,
            wildcard_subscription_available: wildcard,
            subscription_identifiers_available: ids,
            shared_subscription_available: shared,
            server_keep_alive: keep_alive,
            response_information: response,
            server_reference: reference,
            authentication_method: method,
            authentication_data: data,
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        option::of(topic_name()),
        option::of(binary(6)),
        user_properties(),
        vec(subscription_id(), 0..3),
        option::of(text()),
    )
        .prop_map(|(format, expiry, alias, response, correlation, users, ids, content)| {
            PublishProperties {
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                topic_alias: alias,
                response_topic: response,
                correlation_data: correlation,
                user_properties: users,
                subscription_identifiers: SmallVec::from_vec(ids),
                content_type: content,
            }
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_properties())
        .prop_map(|(reason, users)| AckProperties { reason_string: reason, user_properties: users })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (topic_name(), binary(8), qos(), any::<bool>(), v5_only(version, will_properties()))
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will),
        option::of(text()),
        option::of(binary(8)),
        v5_only(version, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // [MQTT-3.1.2-22] Before 5.0 a password needs a user name.
                let password = password.filter(|_| version.is_v5() || username.is_some());
                Packet::Connect(Box::new(Connect {
                    version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn conn_ack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if version.is_v5() {
        reasons_for(PacketType::ConnAck)
    } else {
        // MQTT 3.1.1 table 3.1: the six return codes.
        (0..=5).filter_map(ReasonCode::from_v3_connect_return_code).collect()
    };
    (any::<bool>(), select(reasons), v5_only(version, conn_ack_properties())).prop_map(
        move |(session_present, reason, properties)| {
            // [MQTT-3.2.2-4] / [MQTT-3.2.2-6]: only an accepting CONNACK has
            // Session Present; 3.1 has no such flag.
            let session_present =
                session_present && reason == ReasonCode::Success && version != V3_1;
            Packet::ConnAck(Box::new(ConnAck { session_present, reason, properties }))
        },
    )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        v5_only(version, publish_properties()),
        binary(32),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                // [MQTT-3.3.1-2] DUP 0 at QoS 0; [MQTT-2.3.1-5] an id when QoS > 0.
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: (!qos0).then_some(id),
                properties: properties.into(),
                payload,
            })
        })
}

fn pub_response(
    version: ProtocolVersion,
    packet: PacketType,
) -> impl Strategy<Value = PubResponse> {
    let reason = if version.is_v5() {
        select(reasons_for(packet)).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), reason, v5_only(version, ack_properties()))
        .prop_map(|(packet_id, reason, properties)| PubResponse { packet_id, reason, properties })
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    let subscription = (topic_filter(), qos(), any::<bool>(), any::<bool>(), handling).prop_map(
        move |(filter, qos, no_local, retain_as_published, retain_handling)| {
            let options = if version.is_v5() {
                SubscriptionOptions {
                    qos,
                    // [MQTT-3.8.3-4] No Local is not allowed on a shared
                    // subscription.
                    no_local: no_local && !filter.is_shared(),
                    retain_as_published,
                    retain_handling,
                }
            } else {
                SubscriptionOptions { qos, ..SubscriptionOptions::default() }
            };
            Subscription { filter, options }
        },
    );
    let properties = (option::of(subscription_id()), user_properties()).prop_map(|(id, users)| {
        SubscribeProperties { subscription_identifier: id, user_properties: users }
    });
    // [MQTT-3.8.3-3] At least one subscription.
    (packet_id(), v5_only(version, properties), vec(subscription, 1..4)).prop_map(
        |(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                refused: Vec::new(),
                packet_id,
                properties,
                subscriptions: SmallVec::from_vec(subscriptions),
            })
        },
    )
}

fn sub_ack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if version.is_v5() {
        reasons_for(PacketType::SubAck)
    } else {
        // [MQTT-3.9.3-2] (3.1.1): 0x00, 0x01, 0x02 and 0x80.
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ]
    };
    (packet_id(), v5_only(version, ack_properties()), vec(select(reasons), 1..4)).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck { packet_id, properties, reasons: SmallVec::from_vec(reasons) })
        },
    )
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties =
        user_properties().prop_map(|users| UnsubscribeProperties { user_properties: users });
    // [MQTT-3.10.3-2] At least one filter.
    (packet_id(), v5_only(version, properties), vec(topic_filter(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                refused: Vec::new(),
                packet_id,
                properties,
                filters: SmallVec::from_vec(filters),
            })
        },
    )
}

fn unsub_ack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // MQTT 5.0 section 3.11.3: one reason per filter; none before 5.0.
    let reasons = v5_only(version, vec(select(reasons_for(PacketType::UnsubAck)), 1..4));
    (packet_id(), v5_only(version, ack_properties()), reasons).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons: SmallVec::from_vec(reasons),
            })
        },
    )
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties =
        (option::of(any::<u32>()), option::of(text()), user_properties(), option::of(text()))
            .prop_map(|(expiry, reason, users, reference)| DisconnectProperties {
                session_expiry_interval: expiry,
                reason_string: reason,
                user_properties: users,
                server_reference: reference,
            });
    let disconnect = (select(reasons_for(PacketType::Disconnect)), properties)
        .prop_map(|(reason, properties)| Disconnect { reason, properties });
    v5_only(version, disconnect).prop_map(Packet::Disconnect)
}

fn auth() -> impl Strategy<Value = Packet> {
    let properties = (auth_pair(), option::of(text()), user_properties()).prop_map(
        |((method, data), reason, users)| AuthProperties {
            authentication_method: method,
            authentication_data: data,
            reason_string: reason,
            user_properties: users,
        },
    );
    (select(reasons_for(PacketType::Auth)), properties)
        .prop_map(|(reason, properties)| Packet::Auth(Box::new(Auth { reason, properties })))
}

/// Any packet `version` can carry: every type, AUTH only in 5.0.
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut types = vec![
        connect(version).boxed(),
        conn_ack(version).boxed(),
        publish(version).boxed(),
        pub_response(version, PacketType::PubAck).prop_map(Packet::PubAck).boxed(),
        pub_response(version, PacketType::PubRec).prop_map(Packet::PubRec).boxed(),
        pub_response(version, PacketType::PubRel).prop_map(Packet::PubRel).boxed(),
        pub_response(version, PacketType::PubComp).prop_map(Packet::PubComp).boxed(),
        subscribe(version).boxed(),
        sub_ack(version).boxed(),
        unsubscribe(version).boxed(),
        unsub_ack(version).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version).boxed(),
    ];
    if version.is_v5() {
        types.push(auth().boxed());
    }
    Union::new(types).boxed()
}

fn version_and_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    any_version().prop_flat_map(|version| (Just(version), packet(version)))
}

// ---- Properties -------------------------------------------------------------------

/// encode -> decode gives the packet back (by `decode_packet` and by a
/// `Decoder`), `encoded_len` is exact, and encode(decode(bytes)) == bytes.
fn check_round_trip(version: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    let len = packet.encoded_len(version);
    let mut buf = BytesMut::new();
    let encoded = packet.encode(version, &mut buf);
    prop_assert_eq!(&encoded, &Ok(()));
    prop_assert_eq!(len, Ok(buf.len()));
    let bytes = buf.freeze();

    let decoded = decode_packet(bytes.clone(), version);
    prop_assert_eq!(decoded.as_ref(), Ok(packet));

    let mut stream = BytesMut::from(&bytes[..]);
    let mut decoder = Decoder::new(version, u32::MAX);
    prop_assert_eq!(decoder.decode(&mut stream), Ok(Some(packet.clone())));
    prop_assert!(stream.is_empty());

    let mut again = BytesMut::new();
    prop_assert_eq!(decoded.expect("checked").encode(version, &mut again), Ok(()));
    prop_assert_eq!(&again[..], &bytes[..]);
    Ok(())
}

/// Whatever the decoder accepts can be encoded again and decodes to the same
/// packet (the decode -> encode -> decode fuzz property of design.md).
/// A refusing CONNACK with Session Present is the one known exception; see
/// `decoder_rejects_session_present_with_a_refusing_connack`.
fn check_reencodes(version: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    if let Packet::ConnAck(ack) = packet {
        if ack.session_present && ack.reason != ReasonCode::Success {
            return Ok(());
        }
    }
    let mut buf = BytesMut::new();
    let encoded = packet.encode(version, &mut buf);
    prop_assert_eq!(&encoded, &Ok(()), "{:?}", packet);
    let decoded = decode_packet(buf.freeze(), version);
    prop_assert_eq!(decoded.as_ref(), Ok(packet));
    Ok(())
}

/// A fixed header for a body of `len` bytes: the first byte and a minimal
/// remaining length (MQTT 5.0 section 1.5.5).
fn framed(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if len == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// MQTT 3.1: every packet type round-trips.
    #[test]
    fn round_trip_v3_1(packet in packet(V3_1)) {
        check_round_trip(V3_1, &packet)?;
    }

    /// MQTT 3.1.1: every packet type round-trips.
    #[test]
    fn round_trip_v3_1_1(packet in packet(V3_1_1)) {
        check_round_trip(V3_1_1, &packet)?;
    }

    /// MQTT 5.0: every packet type, with properties, round-trips.
    #[test]
    fn round_trip_v5(packet in packet(V5)) {
        check_round_trip(V5, &packet)?;
    }

    /// Several packets framed back to back in one buffer decode one by one.
    #[test]
    fn many_packets_in_one_buffer((version, packets) in any_version()
        .prop_flat_map(|v| (Just(v), vec(packet(v), 1..6))))
    {
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut buf).expect("valid packet");
        }
        let mut decoder = Decoder::new(version, u32::MAX);
        for packet in &packets {
            let got = decoder.decode(&mut buf);
            prop_assert_eq!(got, Ok(Some(packet.clone())));
            // A CONNECT switches the decoder; generated ones keep `version`.
            prop_assert_eq!(decoder.version(), version);
        }
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic the decoder, whatever the version and the
    /// size limit.
    #[test]
    fn arbitrary_bytes_never_panic(
        version in any_version(),
        bytes in vec(any::<u8>(), 0..128),
        max in 0u32..256,
    ) {
        let mut decoder = Decoder::new(version, max);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let _ = decode_packet(Bytes::from(bytes), version);
    }

    /// Arbitrary bodies behind a well-formed fixed header (so the body is
    /// actually parsed) never panic; what decodes re-encodes.
    #[test]
    fn arbitrary_bodies_never_panic(
        version in any_version(),
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..96),
    ) {
        if let Ok(packet) = decode_packet(Bytes::from(framed(first, &body)), version) {
            check_reencodes(version, &packet)?;
        }
    }

    /// Valid packets with a few bytes overwritten, or cut short, never panic
    /// the decoder; what still decodes re-encodes.
    #[test]
    fn mutated_packets_never_panic(
        (version, packet) in version_and_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in option::of(any::<prop::sample::Index>()),
    ) {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf).expect("valid packet");
        let mut bytes = buf.to_vec();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let mut decoder = Decoder::new(version, 1 << 20);
        let mut stream = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut stream) {}
        if let Ok(decoded) = decode_packet(Bytes::from(bytes), version) {
            check_reencodes(version, &decoded)?;
        }
    }
}

/// [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0): a CONNACK that refuses the
/// connection has Session Present 0, and a receiver treats a violation as a
/// protocol violation ([MQTT-4.8.0-1] in 3.1.1, section 4.13 in 5.0). The
/// encoder refuses to write such a CONNACK (`SessionPresentWithError`); the
/// decoder must not accept one either, or decode -> encode fails.
#[test]
fn decoder_rejects_session_present_with_a_refusing_connack() {
    let v311 = decode_packet(Bytes::from_static(b"\x20\x02\x01\x05"), V3_1_1);
    assert!(v311.is_err(), "3.1.1: session present with return code 5 accepted: {v311:?}");
    let v5 = decode_packet(Bytes::from_static(b"\x20\x03\x01\x87\x00"), V5);
    assert!(v5.is_err(), "5.0: session present with reason 0x87 accepted: {v5:?}");
}
