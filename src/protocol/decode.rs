//! The resumable decoder: splits complete packets off a read buffer and
//! parses them, validating every rule the specification puts on the bytes.
//!
//! Incomplete input is `Ok(None)` and consumes nothing. The size of a packet
//! is checked against the maximum as soon as its fixed header is complete,
//! before the rest is buffered. The parsed packet's strings and payload are
//! slices of the read buffer (`Bytes`), not copies.

use super::properties::*;
use super::wire::{peek_var_int, topic_name_at, Reader};
use super::*;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::{NonZeroU16, NonZeroU32};

/// Splits complete packets off a read buffer.
#[derive(Debug)]
pub struct Decoder {
    /// The version non-CONNECT packets are read in.
    version: ProtocolVersion,
    /// The largest packet accepted, fixed header included.
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for packets of `version` no larger than `max_packet_size`
    /// bytes (fixed header included). A decoded CONNECT switches the
    /// decoder to the version it announces, so a server can start with any
    /// version and read the rest of the connection in the client's.
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Self { version, max_packet_size }
    }

    /// The protocol version packets are read in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Sets the protocol version packets are read in.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// The largest packet accepted.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// The total size of the packet at the front of `buf`, once its fixed
    /// header is complete, after checking the first byte and the size limit.
    /// `Ok(None)`: the fixed header is not complete yet.
    pub fn next_packet_size(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(&first) = buf.first() else { return Ok(None) };
        check_first_byte(first, self.version)?;
        let Some((remaining, len_len)) = peek_var_int(&buf[1..])? else { return Ok(None) };
        let size = 1 + len_len + remaining as usize;
        if size > self.max_packet_size as usize {
            // A packet above the maximum is refused before it is buffered
            // (MQTT 5.0 section 3.1.2.11.4: answered with 0x95).
            return Err(DecodeError::PacketTooLarge { size, max: self.max_packet_size });
        }
        Ok(Some(size))
    }

    /// Takes one complete packet off the front of `buf`. `Ok(None)`: more
    /// bytes are needed (nothing is consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(size) = self.next_packet_size(buf)? else { return Ok(None) };
        if buf.len() < size {
            return Ok(None);
        }
        let packet = decode_packet(buf.split_to(size).freeze(), self.version)?;
        if let Packet::Connect(connect) = &packet {
            self.version = connect.version;
        }
        Ok(Some(packet))
    }
}

/// Decodes exactly one complete packet (fixed header included) of
/// `version`. A CONNECT is read in the version it announces.
#[inline]
pub fn decode_packet(mut bytes: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let Some(&first) = bytes.first() else { return Err(DecodeError::Truncated) };
    check_first_byte(first, version)?;
    let (remaining, len_len) = peek_var_int(&bytes[1..])?.ok_or(DecodeError::Truncated)?;
    bytes.advance(1 + len_len);
    let remaining = remaining as usize;
    if bytes.len() < remaining {
        return Err(DecodeError::Truncated);
    }
    if bytes.len() > remaining {
        return Err(DecodeError::TrailingBytes(bytes.len() - remaining));
    }
    let packet_type =
        PacketType::from_u8(first >> 4).ok_or(DecodeError::InvalidPacketType(first >> 4))?;
    let v5 = version.is_v5();
    let mut r = Reader::new(bytes);
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(Box::new(conn_ack(&mut r, version)?)),
        // The payload is the rest of the packet: nothing can trail it.
        PacketType::Publish => {
            return publish(r.into_bytes(), first & 0x0F, v5).map(Packet::Publish)
        }
        PacketType::PubAck => Packet::PubAck(pub_response(&mut r, packet_type, v5)?),
        PacketType::PubRec => Packet::PubRec(pub_response(&mut r, packet_type, v5)?),
        PacketType::PubRel => Packet::PubRel(pub_response(&mut r, packet_type, v5)?),
        PacketType::PubComp => Packet::PubComp(pub_response(&mut r, packet_type, v5)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut r, v5)?),
        PacketType::SubAck => Packet::SubAck(sub_ack(&mut r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsub_ack(&mut r, v5)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(disconnect(&mut r, v5)?),
        PacketType::Auth => Packet::Auth(Box::new(auth(&mut r)?)),
    };
    r.finish()?;
    Ok(packet)
}

/// The fixed-header flags of PUBREL, SUBSCRIBE and UNSUBSCRIBE: QoS 1.
const QOS_1_FLAGS: u8 = 0b0010;

/// The DUP bit of the fixed-header flags.
const DUP_FLAG: u8 = 0b1000;

/// Checks the packet type and the fixed-header flags of the first byte,
/// as `version` has them: a connection's version once its CONNECT is read.
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let type_bits = first >> 4;
    let packet = match PacketType::from_u8(type_bits) {
        // [MQTT-2.1.2] 0 is reserved; 15 is reserved before 5.0.
        Some(PacketType::Auth) if !version.is_v5() => {
            return Err(DecodeError::InvalidPacketType(type_bits))
        }
        Some(packet) => packet,
        None => return Err(DecodeError::InvalidPacketType(type_bits)),
    };
    let flags = first & 0x0F;
    match packet.fixed_flags() {
        Some(expected) if flags == expected => Ok(()),
        // MQTT 3.1 section 2.1: PUBREL, SUBSCRIBE and UNSUBSCRIBE use QoS 1
        // and carry DUP=1 when re-sent. 3.1.1 and 5.0 fix their flags to
        // 0010 ([MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]).
        Some(QOS_1_FLAGS)
            if version == ProtocolVersion::V3_1 && flags == QOS_1_FLAGS | DUP_FLAG =>
        {
            Ok(())
        }
        // [MQTT-2.2.2-2] Flags of other packet types are fixed.
        Some(_) => Err(DecodeError::InvalidFixedHeaderFlags { packet, flags }),
        None => {
            // PUBLISH: [MQTT-3.3.1-4] QoS 3 is malformed; [MQTT-3.3.1-2]
            // DUP is 0 for QoS 0.
            match (flags >> 1) & 0b11 {
                3 => Err(DecodeError::InvalidQoS),
                0 if flags & DUP_FLAG != 0 => Err(DecodeError::DupWithQoS0),
                _ => Ok(()),
            }
        }
    }
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    // [MQTT-2.3.1-1] Packet identifiers are non-zero.
    PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId)
}

fn topic_name(r: &mut Reader) -> Result<TopicName, DecodeError> {
    TopicName::new(r.string()?).map_err(DecodeError::InvalidTopicName)
}

fn topic_filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    TopicFilter::new(r.string()?).map_err(DecodeError::InvalidTopicFilter)
}

/// Reads a v5 reason code allowed in `packet` [MQTT-2.4].
fn reason_code(r: &mut Reader, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    reason_code_of(r.u8()?, packet)
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    // [MQTT-3.1.2-1] Protocol name; [MQTT-3.1.2-2] protocol level.
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (&*name, level) {
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQTT" | "MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let flags = r.u8()?;
    // [MQTT-3.1.2-3] The reserved flag is zero. MQTT 3.1 (section 3.1,
    // Connect flags) marks bit 0 reserved without requiring it to be 0, so
    // a 3.1 client's CONNECT is accepted whatever it holds.
    if flags & 0x01 != 0 && version != ProtocolVersion::V3_1 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]: no Will QoS or Will
    // Retain without a will; [MQTT-3.1.2-14] Will QoS 3 is malformed.
    let will_qos = match (will_flag, QoS::from_u8(will_qos)) {
        (_, None) => return Err(DecodeError::InvalidWillFlags),
        (false, Some(qos)) if qos != QoS::AtMostOnce || will_retain => {
            return Err(DecodeError::InvalidWillFlags)
        }
        (_, Some(qos)) => qos,
    };
    // [MQTT-3.1.2-22] Before 5.0 a password needs a user name.
    if has_password && !has_username && !version.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties =
        if version.is_v5() { connect_properties(r)? } else { ConnectProperties::default() };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties =
            if version.is_v5() { will_properties(r)? } else { WillProperties::default() };
        let topic = topic_name(r)?;
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn conn_ack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // [MQTT-3.2.2-1] Bits 7-1 are reserved; MQTT 3.1 reserves the whole byte.
    let reserved = if version == ProtocolVersion::V3_1 { 0xFF } else { 0xFE };
    if flags & reserved != 0 {
        return Err(DecodeError::InvalidConnAckFlags);
    }
    let code = r.u8()?;
    let reason = if version.is_v5() {
        reason_code_of(code, PacketType::ConnAck)?
    } else {
        ReasonCode::from_v3_connect_return_code(code)
            .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code })?
    };
    let session_present = flags & 0x01 != 0;
    // [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0): a refusal never has
    // Session Present set.
    if session_present && reason != ReasonCode::Success {
        return Err(DecodeError::InvalidConnAckFlags);
    }
    let properties =
        if version.is_v5() { conn_ack_properties(r)? } else { ConnAckProperties::default() };
    Ok(ConnAck { session_present, reason, properties })
}

fn reason_code_of(code: u8, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::from_u8(code) {
        Some(reason) if reason.is_valid_for(packet) => Ok(reason),
        _ => Err(DecodeError::InvalidReasonCode { packet, code }),
    }
}

/// A PUBLISH from its body (the frame after the fixed header), read in
/// place rather than through a [`Reader`]: the payload is the body itself,
/// advanced past the variable header.
// Inlined into `decode_packet`: a PUBLISH is built in place instead of
// being copied out of a `Result` (measured: the copies were most of the
// decode time of small PUBLISH packets).
#[inline(always)]
fn publish(mut body: Bytes, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    // The flags were checked by `check_first_byte`.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let (topic, mut at) = topic_name_at(&body, 0)?;
    // [MQTT-2.3.1-5] A packet identifier only when QoS > 0.
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        let Some(&[high, low]) = body.get(at..at + 2) else { return Err(DecodeError::Truncated) };
        at += 2;
        // [MQTT-2.3.1-1] Packet identifiers are non-zero.
        Some(PacketId::new(u16::from_be_bytes([high, low])).ok_or(DecodeError::ZeroPacketId)?)
    };
    let properties = if v5 {
        let (len, len_len) = peek_var_int(&body[at..])?.ok_or(DecodeError::Truncated)?;
        let end = at + len_len + len as usize;
        if end > body.len() {
            return Err(DecodeError::Truncated);
        }
        let properties = if len == 0 {
            BoxedPublishProperties::none()
        } else {
            publish_properties(&mut Reader::new(body.slice(at..end)))?
        };
        at = end;
        properties
    } else {
        BoxedPublishProperties::none()
    };
    if topic.is_empty() {
        // MQTT 5.0 section 3.3.2.3.4: with a Topic Alias the name may be
        // empty; otherwise it has at least one character [MQTT-4.7.3-1].
        if !v5 {
            return Err(DecodeError::InvalidTopicName(TopicError::Empty));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
    }
    body.advance(at);
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: body,
    })
}

fn pub_response(r: &mut Reader, packet: PacketType, v5: bool) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut response = PubResponse::new(packet_id);
    // [MQTT-3.4.2.1] In 5.0 the reason code and the properties may be
    // omitted (remaining length 2 or 3).
    if v5 && !r.is_empty() {
        response.reason = reason_code(r, packet)?;
        if !r.is_empty() {
            response.properties = ack_properties(r, packet)?;
        }
    }
    Ok(response)
}

/// A topic filter of a 5.0 SUBSCRIBE or UNSUBSCRIBE: `Ok(Err(..))` for a
/// well-formed UTF-8 string that is not a valid filter, which the server
/// refuses alone (see [`RefusedFilter`]). An empty filter stays a malformed
/// packet [MQTT-4.7.3-1], [MQTT-3.8.3-1], [MQTT-3.10.3-1]: the string field
/// itself is missing its content. Before 5.0 every invalid filter is an
/// error (3.1.1 closes the connection on it [MQTT-4.8.0-1 (3.1.1)]).
fn v5_topic_filter(
    r: &mut Reader,
) -> Result<Result<TopicFilter, (ByteString, TopicError)>, DecodeError> {
    let text = r.string()?;
    match TopicFilter::new(text.clone()) {
        Ok(filter) => Ok(Ok(filter)),
        Err(error @ TopicError::Empty) => Err(DecodeError::InvalidTopicFilter(error)),
        Err(error) => Ok(Err((text, error))),
    }
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 { subscribe_properties(r)? } else { SubscribeProperties::default() };
    let mut subscriptions = smallvec::SmallVec::new();
    let mut refused = Vec::new();
    let mut position = 0;
    while !r.is_empty() {
        let filter = if v5 { v5_topic_filter(r)? } else { Ok(topic_filter(r)?) };
        let byte = r.u8()?;
        // [MQTT-3.8.3-5] Reserved bits are zero (bits 2-7 before 5.0,
        // bits 6-7 in 5.0); Retain Handling 3 and QoS 3 are malformed.
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        // In 5.0, Retain Handling 3 and QoS 3 are protocol errors (section
        // 3.8.3.1); in 3.1.1, QoS 3 is malformed [MQTT-3-8.3-4].
        let bad_value = if v5 {
            DecodeError::InvalidSubscriptionOptionValue(byte)
        } else {
            DecodeError::InvalidSubscriptionOptions(byte)
        };
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(bad_value),
        };
        let qos = QoS::from_u8(byte & 0b11).ok_or(bad_value)?;
        let options = SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        };
        match filter {
            Ok(filter) => {
                // [MQTT-3.8.3-4] "It is a Protocol Error to set the No
                // Local bit to 1 on a Shared Subscription".
                if options.no_local && filter.is_shared() {
                    return Err(DecodeError::NoLocalOnSharedSubscription);
                }
                subscriptions.push(Subscription { filter, options });
            }
            Err((text, error)) => refused.push(RefusedFilter { position, text, error, options }),
        }
        position += 1;
    }
    // [MQTT-3.8.3-2] At least one topic filter.
    if position == 0 {
        return Err(DecodeError::NoTopicFilters(PacketType::Subscribe));
    }
    Ok(Subscribe { packet_id, properties, subscriptions, refused })
}

fn sub_ack(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties =
        if v5 { ack_properties(r, PacketType::SubAck)? } else { AckProperties::default() };
    let mut reasons = smallvec::SmallVec::new();
    while !r.is_empty() {
        let code = r.u8()?;
        let reason = if v5 {
            reason_code_of(code, PacketType::SubAck)?
        } else {
            // [MQTT-3.9.3-2] 0x00, 0x01, 0x02 and 0x80 only.
            match code {
                0 => ReasonCode::Success,
                1 => ReasonCode::GrantedQoS1,
                2 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => {
                    return Err(DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code })
                }
            }
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(SubAck { packet_id, properties, reasons })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 { unsubscribe_properties(r)? } else { UnsubscribeProperties::default() };
    let mut filters = smallvec::SmallVec::new();
    let mut refused = Vec::new();
    let mut position = 0;
    while !r.is_empty() {
        match if v5 { v5_topic_filter(r)? } else { Ok(topic_filter(r)?) } {
            Ok(filter) => filters.push(filter),
            Err((text, error)) => refused.push(RefusedFilter {
                position,
                text,
                error,
                options: SubscriptionOptions::default(),
            }),
        }
        position += 1;
    }
    // [MQTT-3.10.3-2] At least one topic filter.
    if position == 0 {
        return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
    }
    Ok(Unsubscribe { packet_id, properties, filters, refused })
}

fn unsub_ack(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack =
        UnsubAck { packet_id, properties: AckProperties::default(), reasons: Default::default() };
    if v5 {
        ack.properties = ack_properties(r, PacketType::UnsubAck)?;
        while !r.is_empty() {
            ack.reasons.push(reason_code(r, PacketType::UnsubAck)?);
        }
        if ack.reasons.is_empty() {
            return Err(DecodeError::Truncated);
        }
    }
    Ok(ack)
}

fn disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    // [MQTT-3.14.2.1] A remaining length of 0 means Normal disconnection
    // without properties; the properties may be omitted after the reason.
    if v5 && !r.is_empty() {
        disconnect.reason = reason_code(r, PacketType::Disconnect)?;
        if !r.is_empty() {
            disconnect.properties = disconnect_properties(r)?;
        }
    }
    Ok(disconnect)
}

fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    // [MQTT-3.15.2.1] Remaining length 0 means Success without properties.
    if !r.is_empty() {
        auth.reason = reason_code(r, PacketType::Auth)?;
        if !r.is_empty() {
            auth.properties = auth_properties(r)?;
        }
    }
    Ok(auth)
}

/// Reads a property block (length, then properties), handing each
/// property's identifier to `apply`, which reads the value and returns
/// `Ok(false)` when the packet does not allow that property.
///
/// [MQTT-2.2.2.2] A property not valid for the packet is malformed; any
/// property but User Property (and Subscription Identifier in PUBLISH)
/// given twice is a protocol error.
fn read_properties(
    r: &mut Reader,
    packet: PacketType,
    mut apply: impl FnMut(PropertyId, &mut Reader) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.var_int()? as usize;
    let mut block = Reader::new(r.take(len)?);
    let mut seen = 0u64;
    while !block.is_empty() {
        let id = block.var_int()?;
        let property = u8::try_from(id)
            .ok()
            .and_then(PropertyId::from_u8)
            .ok_or(DecodeError::UnknownProperty(id.min(255) as u8))?;
        let repeatable = property == PropertyId::UserProperty
            || (property == PropertyId::SubscriptionIdentifier && packet == PacketType::Publish);
        let bit = 1u64 << (property as u8);
        if seen & bit != 0 && !repeatable {
            return Err(DecodeError::DuplicateProperty(property));
        }
        seen |= bit;
        if !apply(property, &mut block)? {
            return Err(DecodeError::PropertyNotAllowed { property, packet });
        }
    }
    Ok(())
}

fn boolean(r: &mut Reader, property: PropertyId) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(property)),
    }
}

fn non_zero_u16(r: &mut Reader, property: PropertyId) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(r.u16()?).ok_or(DecodeError::InvalidPropertyValue(property))
}

fn non_zero_u32(r: &mut Reader, property: PropertyId) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(r.u32()?).ok_or(DecodeError::InvalidPropertyValue(property))
}

fn subscription_id(r: &mut Reader) -> Result<NonZeroU32, DecodeError> {
    // [MQTT-3.8.2.1.2] 1 to 268,435,455; 0 is a protocol error.
    NonZeroU32::new(r.var_int()?)
        .ok_or(DecodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier))
}

fn response_topic(r: &mut Reader) -> Result<TopicName, DecodeError> {
    // [MQTT-3.3.2-14] The Response Topic is a Topic Name: no wildcards.
    TopicName::new(r.string()?)
        .map_err(|_| DecodeError::InvalidPropertyValue(PropertyId::ResponseTopic))
}

fn user_property(
    r: &mut Reader,
) -> Result<(bytestring::ByteString, bytestring::ByteString), DecodeError> {
    Ok((r.string()?, r.string()?))
}

fn check_auth(
    method: &Option<bytestring::ByteString>,
    data: &Option<Bytes>,
) -> Result<(), DecodeError> {
    // [MQTT-3.1.2.11.10] Authentication Data without a method is a
    // protocol error.
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}

fn connect_properties(r: &mut Reader) -> Result<ConnectProperties, DecodeError> {
    use PropertyId as P;
    let mut p = ConnectProperties::default();
    read_properties(r, PacketType::Connect, |id, r| {
        match id {
            P::SessionExpiryInterval => p.session_expiry_interval = Some(r.u32()?),
            // [MQTT-3.1.2.11.3] Receive Maximum 0 is a protocol error.
            P::ReceiveMaximum => p.receive_maximum = Some(non_zero_u16(r, id)?),
            // [MQTT-3.1.2.11.4] Maximum Packet Size 0 is a protocol error.
            P::MaximumPacketSize => p.maximum_packet_size = Some(non_zero_u32(r, id)?),
            P::TopicAliasMaximum => p.topic_alias_maximum = Some(r.u16()?),
            P::RequestResponseInformation => p.request_response_information = Some(boolean(r, id)?),
            P::RequestProblemInformation => p.request_problem_information = Some(boolean(r, id)?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            P::AuthenticationMethod => p.authentication_method = Some(r.string()?),
            P::AuthenticationData => p.authentication_data = Some(r.binary()?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    check_auth(&p.authentication_method, &p.authentication_data)?;
    Ok(p)
}

fn will_properties(r: &mut Reader) -> Result<WillProperties, DecodeError> {
    use PropertyId as P;
    let mut p = WillProperties::default();
    read_properties(r, PacketType::Connect, |id, r| {
        match id {
            P::WillDelayInterval => p.will_delay_interval = Some(r.u32()?),
            P::PayloadFormatIndicator => p.payload_format_indicator = Some(boolean(r, id)?),
            P::MessageExpiryInterval => p.message_expiry_interval = Some(r.u32()?),
            P::ContentType => p.content_type = Some(r.string()?),
            P::ResponseTopic => p.response_topic = Some(response_topic(r)?),
            P::CorrelationData => p.correlation_data = Some(r.binary()?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

fn conn_ack_properties(r: &mut Reader) -> Result<ConnAckProperties, DecodeError> {
    use PropertyId as P;
    let mut p = ConnAckProperties::default();
    read_properties(r, PacketType::ConnAck, |id, r| {
        match id {
            P::SessionExpiryInterval => p.session_expiry_interval = Some(r.u32()?),
            P::ReceiveMaximum => p.receive_maximum = Some(non_zero_u16(r, id)?),
            // [MQTT-3.2.2.3.4] Maximum QoS is 0 or 1.
            P::MaximumQoS => {
                p.maximum_qos = Some(match r.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue(id)),
                })
            }
            P::RetainAvailable => p.retain_available = Some(boolean(r, id)?),
            P::MaximumPacketSize => p.maximum_packet_size = Some(non_zero_u32(r, id)?),
            P::AssignedClientIdentifier => p.assigned_client_identifier = Some(r.string()?),
            P::TopicAliasMaximum => p.topic_alias_maximum = Some(r.u16()?),
            P::ReasonString => p.reason_string = Some(r.string()?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            P::WildcardSubscriptionAvailable => {
                p.wildcard_subscription_available = Some(boolean(r, id)?)
            }
            P::SubscriptionIdentifierAvailable => {
                p.subscription_identifiers_available = Some(boolean(r, id)?)
            }
            P::SharedSubscriptionAvailable => {
                p.shared_subscription_available = Some(boolean(r, id)?)
            }
            P::ServerKeepAlive => p.server_keep_alive = Some(r.u16()?),
            P::ResponseInformation => p.response_information = Some(r.string()?),
            P::ServerReference => p.server_reference = Some(r.string()?),
            P::AuthenticationMethod => p.authentication_method = Some(r.string()?),
            P::AuthenticationData => p.authentication_data = Some(r.binary()?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    check_auth(&p.authentication_method, &p.authentication_data)?;
    Ok(p)
}

/// Allocates only when the block holds a property.
fn publish_properties(r: &mut Reader) -> Result<BoxedPublishProperties, DecodeError> {
    use PropertyId as P;
    let mut properties = BoxedPublishProperties::none();
    read_properties(r, PacketType::Publish, |id, r| {
        let p = properties.make_mut();
        match id {
            P::PayloadFormatIndicator => p.payload_format_indicator = Some(boolean(r, id)?),
            P::MessageExpiryInterval => p.message_expiry_interval = Some(r.u32()?),
            // [MQTT-3.3.2-8] Topic Alias 0 is a protocol error.
            P::TopicAlias => p.topic_alias = Some(non_zero_u16(r, id)?),
            P::ResponseTopic => p.response_topic = Some(response_topic(r)?),
            P::CorrelationData => p.correlation_data = Some(r.binary()?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            P::SubscriptionIdentifier => p.subscription_identifiers.push(subscription_id(r)?),
            P::ContentType => p.content_type = Some(r.string()?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(properties)
}

fn ack_properties(r: &mut Reader, packet: PacketType) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    read_properties(r, packet, |id, r| {
        match id {
            PropertyId::ReasonString => p.reason_string = Some(r.string()?),
            PropertyId::UserProperty => p.user_properties.push(user_property(r)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

fn subscribe_properties(r: &mut Reader) -> Result<SubscribeProperties, DecodeError> {
    let mut p = SubscribeProperties::default();
    read_properties(r, PacketType::Subscribe, |id, r| {
        match id {
            PropertyId::SubscriptionIdentifier => {
                p.subscription_identifier = Some(subscription_id(r)?)
            }
            PropertyId::UserProperty => p.user_properties.push(user_property(r)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

fn unsubscribe_properties(r: &mut Reader) -> Result<UnsubscribeProperties, DecodeError> {
    let mut p = UnsubscribeProperties::default();
    read_properties(r, PacketType::Unsubscribe, |id, r| {
        match id {
            PropertyId::UserProperty => p.user_properties.push(user_property(r)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

fn disconnect_properties(r: &mut Reader) -> Result<DisconnectProperties, DecodeError> {
    use PropertyId as P;
    let mut p = DisconnectProperties::default();
    read_properties(r, PacketType::Disconnect, |id, r| {
        match id {
            P::SessionExpiryInterval => p.session_expiry_interval = Some(r.u32()?),
            P::ReasonString => p.reason_string = Some(r.string()?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            P::ServerReference => p.server_reference = Some(r.string()?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

fn auth_properties(r: &mut Reader) -> Result<AuthProperties, DecodeError> {
    use PropertyId as P;
    let mut p = AuthProperties::default();
    read_properties(r, PacketType::Auth, |id, r| {
        match id {
            P::AuthenticationMethod => p.authentication_method = Some(r.string()?),
            P::AuthenticationData => p.authentication_data = Some(r.binary()?),
            P::ReasonString => p.reason_string = Some(r.string()?),
            P::UserProperty => p.user_properties.push(user_property(r)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    check_auth(&p.authentication_method, &p.authentication_data)?;
    Ok(p)
}
