//! The encoder: writes any [`Packet`] in the wire format of MQTT 3.1, 3.1.1
//! or 5.0.
//!
//! A packet is encoded by running one function per packet type twice: a
//! counting pass ([`Counter`]) checks that the packet can be represented in
//! the version and measures it, the output is reserved once, and a writing
//! pass ([`Writer`]) appends the bytes. Both passes run the same code, so
//! [`Packet::encoded_len`] equals the number of bytes [`Packet::encode`]
//! writes by construction, and a packet that cannot be encoded leaves the
//! buffer untouched. Nothing is allocated besides that one reservation.
//!
//! The encoder refuses what a conforming receiver would have to reject
//! (see [`EncodeError`]); fields a version cannot carry (properties and
//! reason codes before 5.0) are not written for it.

use super::properties::*;
use super::wire::{self, MAX_VAR_INT};
use super::*;
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::{NonZeroU16, NonZeroU32};

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes, the largest
    /// Variable Byte Integer [MQTT-1.5.5] (section 2.1.4).
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// A UTF-8 Encoded String or Binary Data field longer than 65,535 bytes
    /// (sections 1.5.4 and 1.5.6: a Two Byte Integer length prefix).
    #[error("{field:?} is {len} bytes long, more than 65535")]
    FieldTooLong {
        /// The field.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
    /// The packet type does not exist in the version: AUTH before 5.0
    /// [MQTT-2.1.2].
    #[error("{packet:?} does not exist in {version:?}")]
    NotInVersion {
        /// The packet type.
        packet: PacketType,
        /// The version it was to be encoded in.
        version: ProtocolVersion,
    },
    /// A PUBLISH carries a packet identifier exactly when its QoS is above 0
    /// [MQTT-2.3.1-5] (3.1.1), [MQTT-2.2.1-2] (5.0).
    #[error("PUBLISH at {qos:?} with a packet identifier present: {present}")]
    PacketIdMismatch {
        /// The QoS of the PUBLISH.
        qos: QoS,
        /// Whether it had a packet identifier.
        present: bool,
    },
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A PUBLISH with an empty topic name, allowed only in 5.0 with a Topic
    /// Alias [MQTT-4.7.3-1] (5.0 section 3.3.2.3.4).
    #[error("empty topic name without a topic alias")]
    EmptyTopic,
    /// A SUBSCRIBE, UNSUBSCRIBE, SUBACK or (5.0) UNSUBACK without entries
    /// [MQTT-3.8.3-3], [MQTT-3.10.3-2], [MQTT-3.9.3-2], [MQTT-3.11.3-2].
    #[error("{0:?} without any entry")]
    NoEntries(PacketType),
    /// A 5.0 reason code that the packet type does not define
    /// [MQTT-3.2.2-8], [MQTT-3.4.2-1] and the like.
    #[error("reason code {reason:?} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The reason code.
        reason: ReasonCode,
    },
    /// Session Present set in a CONNACK that refuses the connection
    /// [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0).
    #[error("session present with a refusing CONNACK")]
    SessionPresentWithError,
    /// A property value out of its range: Maximum QoS 2 (section
    /// 3.2.2.3.4), a Subscription Identifier above 268,435,455 (section
    /// 3.8.2.1.2).
    #[error("invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
    /// Authentication Data without an Authentication Method (section
    /// 3.1.2.11.10).
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A password without a user name before 5.0 [MQTT-3.1.2-22].
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
}

/// A length-prefixed field, named in [`EncodeError::FieldTooLong`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The Client Identifier of CONNECT.
    ClientId,
    /// The Will Topic of CONNECT.
    WillTopic,
    /// The Will Payload of CONNECT.
    WillPayload,
    /// The User Name of CONNECT.
    UserName,
    /// The Password of CONNECT.
    Password,
    /// The Topic Name of PUBLISH.
    TopicName,
    /// A Topic Filter of SUBSCRIBE or UNSUBSCRIBE.
    TopicFilter,
    /// A property value (a User Property name or value included).
    Property(PropertyId),
}

impl Packet {
    /// The exact number of bytes [`Packet::encode`] writes for `version`
    /// (a CONNECT is always measured in its own `version`).
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Self::Publish(publish) => publish.encoded_len(version),
            _ => measure(self, version).map(|(remaining, _)| frame_len(remaining)),
        }
    }

    /// Appends the packet, encoded for `version`, to `buf`; on error `buf`
    /// is left as it was. A CONNECT is always encoded in its own
    /// `version` (the one it announces).
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Publish(publish) => publish.encode(version, buf),
            _ => encode_frame(self, version, buf),
        }
    }
}

impl Publish {
    /// The exact number of bytes [`Publish::encode`] writes for `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        measure(self, version).map(|(remaining, _)| frame_len(remaining))
    }

    /// Appends this PUBLISH, encoded for `version`, to `buf`: the fast path
    /// for fanning a message out, without wrapping it in a [`Packet`].
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        if v5 && !self.properties.is_empty() {
            return encode_frame(self, version, buf);
        }
        // Without properties (every 3.1 / 3.1.1 PUBLISH, most 5.0 ones) the
        // size is a sum, so the counting pass is skipped: the same checks,
        // then the writing pass alone.
        self.check(v5)?;
        let remaining = 2
            + self.topic.as_str().len()
            + if self.packet_id.is_some() { 2 } else { 0 }
            + usize::from(v5)
            + self.payload.len();
        let remaining = checked_var_int(remaining).ok_or(EncodeError::PacketTooLarge)?;
        buf.reserve(frame_len(remaining));
        buf.put_u8(self.first_byte());
        wire::put_var_int(buf, remaining);
        let mut writer = Writer { buf, plan: Plan::default(), next: 0 };
        self.put_body(version, &mut writer)
    }

    /// The rules the encoder enforces on a PUBLISH.
    fn check(&self, v5: bool) -> Result<(), EncodeError> {
        let qos0 = self.qos == QoS::AtMostOnce;
        // [MQTT-2.3.1-5] / [MQTT-2.2.1-2] A packet identifier exactly when
        // QoS > 0.
        if qos0 != self.packet_id.is_none() {
            return Err(EncodeError::PacketIdMismatch {
                qos: self.qos,
                present: self.packet_id.is_some(),
            });
        }
        // [MQTT-3.3.1-2] DUP is 0 at QoS 0.
        if qos0 && self.dup {
            return Err(EncodeError::DupWithQoS0);
        }
        // [MQTT-4.7.3-1] A topic name has at least one character; 5.0 lets a
        // Topic Alias stand for it (section 3.3.2.3.4). Its length fits
        // the two-byte prefix by the `TopicName` invariant.
        if self.topic.is_empty() && !(v5 && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::EmptyTopic);
        }
        Ok(())
    }
}

/// The size of a whole packet: the first byte, the Remaining Length and the
/// rest [MQTT-2.1.1].
fn frame_len(remaining: u32) -> usize {
    1 + wire::var_int_len(remaining) + remaining as usize
}

/// The counting pass: the Remaining Length and the Property Lengths.
fn measure(body: &impl Body, version: ProtocolVersion) -> Result<(u32, Plan), EncodeError> {
    let mut counter = Counter::default();
    body.put_body(version, &mut counter)?;
    // [MQTT-1.5.5] The Remaining Length is a Variable Byte Integer of at
    // most 268,435,455 (section 2.1.4).
    let remaining = checked_var_int(counter.len).ok_or(EncodeError::PacketTooLarge)?;
    Ok((remaining, counter.plan))
}

/// Both passes: measure, reserve once, write.
fn encode_frame(
    body: &impl Body,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let (remaining, plan) = measure(body, version)?;
    let total = frame_len(remaining);
    buf.reserve(total);
    let start = buf.len();
    // [MQTT-2.1.1] Fixed header: type and flags, then the Remaining Length
    // as a minimal Variable Byte Integer [MQTT-1.5.5-1].
    buf.put_u8(body.first_byte());
    wire::put_var_int(buf, remaining);
    let mut writer = Writer { buf, plan, next: 0 };
    body.put_body(version, &mut writer)?;
    debug_assert_eq!(writer.next, plan.count);
    debug_assert_eq!(writer.buf.len() - start, total);
    Ok(())
}

/// `len` as a Variable Byte Integer value, if it fits.
fn checked_var_int(len: usize) -> Option<u32> {
    u32::try_from(len).ok().filter(|&len| len <= MAX_VAR_INT)
}

/// Something with a fixed header and a body the two passes run over.
trait Body {
    /// The first byte of the fixed header: type << 4 | flags [MQTT-2.1.2].
    fn first_byte(&self) -> u8;

    /// Feeds everything after the Remaining Length to `sink`.
    fn put_body<S: Sink>(&self, version: ProtocolVersion, sink: &mut S) -> Result<(), EncodeError>;
}

/// Where the fields of a packet go: [`Counter`] or [`Writer`].
trait Sink: Sized {
    /// Whether this pass checks the packet. The writing pass runs only
    /// after the counting pass accepted the very same packet, so it skips
    /// the checks and cannot fail.
    const CHECKS: bool;

    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    /// A Variable Byte Integer [MQTT-1.5.5]; at most [`MAX_VAR_INT`],
    /// checked by the caller.
    fn put_var_int(&mut self, value: u32);
    /// Bytes with a Two Byte Integer length prefix; at most 65,535, checked
    /// by the caller.
    fn put_prefixed(&mut self, bytes: &[u8]);
    /// Bytes as they are (a PUBLISH payload).
    fn put_slice(&mut self, bytes: &[u8]);
    /// A Property Length, then the properties [MQTT-2.2.2.1].
    fn put_properties(&mut self, properties: &impl PropertyBlock) -> Result<(), EncodeError>;
}

/// Fails with `error()` when the counting pass finds `ok` false.
#[inline(always)]
fn ensure<S: Sink>(ok: bool, error: impl FnOnce() -> EncodeError) -> Result<(), EncodeError> {
    if S::CHECKS && !ok {
        Err(error())
    } else {
        Ok(())
    }
}

/// The Property Lengths found by the counting pass, in the order the
/// writing pass needs them: a CONNECT has two blocks (its own and the
/// will's), other packets at most one.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    lengths: [u32; 2],
    count: usize,
}

/// The counting pass.
#[derive(Debug, Default)]
struct Counter {
    /// Bytes so far.
    len: usize,
    /// Property Lengths so far.
    plan: Plan,
}

impl Sink for Counter {
    const CHECKS: bool = true;

    fn put_u8(&mut self, _: u8) {
        self.len += 1;
    }

    fn put_u16(&mut self, _: u16) {
        self.len += 2;
    }

    fn put_u32(&mut self, _: u32) {
        self.len += 4;
    }

    fn put_var_int(&mut self, value: u32) {
        self.len += wire::var_int_len(value);
    }

    fn put_prefixed(&mut self, bytes: &[u8]) {
        self.len += wire::prefixed_len(bytes.len());
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
    }

    fn put_properties(&mut self, properties: &impl PropertyBlock) -> Result<(), EncodeError> {
        let start = self.len;
        properties.put(self)?;
        // The properties are part of the remaining length, so a block too
        // large for a Variable Byte Integer is a packet too large.
        let len = checked_var_int(self.len - start).ok_or(EncodeError::PacketTooLarge)?;
        self.len += wire::var_int_len(len);
        // At most two blocks per packet (CONNECT), by the packet layouts below.
        self.plan.lengths[self.plan.count] = len;
        self.plan.count += 1;
        Ok(())
    }
}

/// The writing pass.
#[derive(Debug)]
struct Writer<'a> {
    buf: &'a mut BytesMut,
    /// What the counting pass measured.
    plan: Plan,
    /// The next Property Length of `plan` to write.
    next: usize,
}

impl Sink for Writer<'_> {
    const CHECKS: bool = false;

    fn put_u8(&mut self, value: u8) {
        self.buf.put_u8(value);
    }

    fn put_u16(&mut self, value: u16) {
        self.buf.put_u16(value);
    }

    fn put_u32(&mut self, value: u32) {
        self.buf.put_u32(value);
    }

    fn put_var_int(&mut self, value: u32) {
        wire::put_var_int(self.buf, value);
    }

    fn put_prefixed(&mut self, bytes: &[u8]) {
        wire::put_prefixed(self.buf, bytes);
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }

    fn put_properties(&mut self, properties: &impl PropertyBlock) -> Result<(), EncodeError> {
        let len = self.plan.lengths[self.next];
        self.next += 1;
        wire::put_var_int(self.buf, len);
        properties.put(self)
    }
}

/// A UTF-8 Encoded String [MQTT-1.5.4] or Binary Data [MQTT-1.5.6]: a Two
/// Byte Integer length, then at most 65,535 bytes.
fn put_field<S: Sink>(sink: &mut S, field: Field, bytes: &[u8]) -> Result<(), EncodeError> {
    ensure::<S>(bytes.len() <= usize::from(u16::MAX), || EncodeError::FieldTooLong {
        field,
        len: bytes.len(),
    })?;
    sink.put_prefixed(bytes);
    Ok(())
}

/// A v5 reason code byte, one the packet type defines: [MQTT-3.2.2-8]
/// CONNACK, [MQTT-3.4.2-1] PUBACK, [MQTT-3.5.2-1] PUBREC, [MQTT-3.6.2-1]
/// PUBREL, [MQTT-3.7.2-1] PUBCOMP, [MQTT-3.9.3-2] SUBACK, [MQTT-3.11.3-2]
/// UNSUBACK, [MQTT-3.14.2-1] DISCONNECT, [MQTT-3.15.2-1] AUTH.
fn put_reason<S: Sink>(
    sink: &mut S,
    packet: PacketType,
    reason: ReasonCode,
) -> Result<(), EncodeError> {
    ensure::<S>(reason.is_valid_for(packet), || EncodeError::InvalidReasonCode { packet, reason })?;
    sink.put_u8(reason.as_u8());
    Ok(())
}

fn put_packet_id<S: Sink>(sink: &mut S, id: PacketId) {
    sink.put_u16(id.get());
}

/// First byte of a packet type with fixed flags: PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry 0b0010 [MQTT-3.6.1-1], [MQTT-3.8.1-1],
/// [MQTT-3.10.1-1], the others 0 [MQTT-2.2.2-1].
fn fixed_first_byte(packet: PacketType) -> u8 {
    (packet as u8) << 4 | packet.fixed_flags().unwrap_or(0)
}

impl Body for Packet {
    fn first_byte(&self) -> u8 {
        match self {
            Self::Publish(publish) => publish.first_byte(),
            _ => fixed_first_byte(self.packet_type()),
        }
    }

    fn put_body<S: Sink>(&self, version: ProtocolVersion, sink: &mut S) -> Result<(), EncodeError> {
        match self {
            // A CONNECT announces its own version.
            Self::Connect(connect) => put_connect(connect, sink),
            Self::ConnAck(conn_ack) => put_conn_ack(conn_ack, version, sink),
            Self::Publish(publish) => publish.put_body(version, sink),
            Self::PubAck(ack) => put_pub_response(ack, PacketType::PubAck, version, sink),
            Self::PubRec(ack) => put_pub_response(ack, PacketType::PubRec, version, sink),
            Self::PubRel(ack) => put_pub_response(ack, PacketType::PubRel, version, sink),
            Self::PubComp(ack) => put_pub_response(ack, PacketType::PubComp, version, sink),
            Self::Subscribe(subscribe) => put_subscribe(subscribe, version, sink),
            Self::SubAck(sub_ack) => put_sub_ack(sub_ack, version, sink),
            Self::Unsubscribe(unsubscribe) => put_unsubscribe(unsubscribe, version, sink),
            Self::UnsubAck(unsub_ack) => put_unsub_ack(unsub_ack, version, sink),
            // [MQTT-3.12.1], [MQTT-3.13.1]: a fixed header only.
            Self::PingReq | Self::PingResp => Ok(()),
            Self::Disconnect(disconnect) => put_disconnect(disconnect, version, sink),
            Self::Auth(auth) => put_auth(auth, version, sink),
        }
    }
}

impl Body for Publish {
    fn first_byte(&self) -> u8 {
        // [MQTT-3.3.1] DUP << 3 | QoS << 1 | RETAIN.
        (PacketType::Publish as u8) << 4
            | u8::from(self.dup) << 3
            | (self.qos as u8) << 1
            | u8::from(self.retain)
    }

    fn put_body<S: Sink>(&self, version: ProtocolVersion, sink: &mut S) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        if S::CHECKS {
            self.check(v5)?;
        }
        put_field(sink, Field::TopicName, self.topic.as_str().as_bytes())?;
        if let Some(id) = self.packet_id {
            put_packet_id(sink, id);
        }
        if v5 {
            if self.properties.is_empty() {
                // [MQTT-2.2.2.1] Property Length 0: no properties.
                sink.put_u8(0);
            } else {
                sink.put_properties(&*self.properties)?;
            }
        }
        // [MQTT-3.3.3] The payload fills the rest, without a length prefix.
        sink.put_slice(&self.payload);
        Ok(())
    }
}

fn put_connect<S: Sink>(connect: &Connect, sink: &mut S) -> Result<(), EncodeError> {
    let version = connect.version;
    // [MQTT-3.1.2-22] Before 5.0 a password needs a user name.
    ensure::<S>(
        version.is_v5() || connect.password.is_none() || connect.username.is_some(),
        || EncodeError::PasswordWithoutUsername,
    )?;
    // [MQTT-3.1.2-1] Protocol name; [MQTT-3.1.2-2] protocol level.
    sink.put_prefixed(version.name().as_bytes());
    sink.put_u8(version.level());
    // [MQTT-3.1.2-3] The reserved bit 0 stays 0. Without a will, Will QoS
    // and Will Retain are 0 [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    flags |= u8::from(connect.password.is_some()) << 6;
    flags |= u8::from(connect.username.is_some()) << 7;
    sink.put_u8(flags);
    sink.put_u16(connect.keep_alive);
    if version.is_v5() {
        sink.put_properties(&connect.properties)?;
    }
    // [MQTT-3.1.3-1] Payload order: client id, will properties (5.0), will
    // topic, will payload, user name, password.
    put_field(sink, Field::ClientId, connect.client_id.as_bytes())?;
    if let Some(will) = &connect.will {
        if version.is_v5() {
            sink.put_properties(&will.properties)?;
        }
        put_field(sink, Field::WillTopic, will.topic.as_str().as_bytes())?;
        put_field(sink, Field::WillPayload, &will.payload)?;
    }
    if let Some(username) = &connect.username {
        put_field(sink, Field::UserName, username.as_bytes())?;
    }
    if let Some(password) = &connect.password {
        // The password is Binary Data (section 3.1.3.6).
        put_field(sink, Field::Password, password)?;
    }
    Ok(())
}

fn put_conn_ack<S: Sink>(
    conn_ack: &ConnAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    // [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0): a refusing CONNACK has
    // Session Present 0. MQTT 3.1 has no Session Present flag.
    let session_present = conn_ack.session_present && version != ProtocolVersion::V3_1;
    ensure::<S>(!session_present || conn_ack.reason == ReasonCode::Success, || {
        EncodeError::SessionPresentWithError
    })?;
    sink.put_u8(u8::from(session_present));
    if version.is_v5() {
        put_reason(sink, PacketType::ConnAck, conn_ack.reason)?;
        sink.put_properties(&conn_ack.properties)
    } else {
        // Section 3.2.2.3 (3.1.1): the six return codes.
        sink.put_u8(conn_ack.reason.to_v3_connect_return_code());
        Ok(())
    }
}

fn put_pub_response<S: Sink>(
    response: &PubResponse,
    packet: PacketType,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    put_packet_id(sink, response.packet_id);
    if !version.is_v5() {
        // Before 5.0 the packet id is all (remaining length 2).
        return Ok(());
    }
    let no_properties = response.properties.is_empty();
    // [MQTT-3.4.2.1] (and 3.5.2.1, 3.6.2.1, 3.7.2.1): Success without
    // properties omits the reason code and the Property Length (remaining
    // length 2).
    if response.reason == ReasonCode::Success && no_properties {
        return Ok(());
    }
    put_reason(sink, packet, response.reason)?;
    // Section 3.4.2.2.1: with a remaining length below 4 there is no
    // Property Length, so it is omitted when empty (remaining length 3).
    if no_properties {
        Ok(())
    } else {
        sink.put_properties(&response.properties)
    }
}

fn put_subscribe<S: Sink>(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    // [MQTT-3.8.3-3] At least one subscription.
    ensure::<S>(!subscribe.subscriptions.is_empty(), || {
        EncodeError::NoEntries(PacketType::Subscribe)
    })?;
    put_packet_id(sink, subscribe.packet_id);
    let v5 = version.is_v5();
    if v5 {
        sink.put_properties(&subscribe.properties)?;
    }
    for subscription in &subscribe.subscriptions {
        let options = subscription.options;
        put_field(sink, Field::TopicFilter, subscription.filter.as_str().as_bytes())?;
        // [MQTT-3.8.3-5] Reserved bits are 0: bits 2-7 before 5.0, bits 6-7
        // in 5.0 (section 3.8.3.1).
        let mut byte = options.qos as u8;
        if v5 {
            // [MQTT-3.8.3-4] No Local on a shared subscription is a
            // Protocol Error.
            ensure::<S>(!(options.no_local && subscription.filter.is_shared()), || {
                EncodeError::NoLocalOnSharedSubscription
            })?;
            byte |= u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | (options.retain_handling as u8) << 4;
        }
        sink.put_u8(byte);
    }
    Ok(())
}

fn put_sub_ack<S: Sink>(
    sub_ack: &SubAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    // [MQTT-3.9.3-2] One code per topic filter received, so at least one.
    ensure::<S>(!sub_ack.reasons.is_empty(), || EncodeError::NoEntries(PacketType::SubAck))?;
    put_packet_id(sink, sub_ack.packet_id);
    if version.is_v5() {
        sink.put_properties(&sub_ack.properties)?;
        for &reason in &sub_ack.reasons {
            put_reason(sink, PacketType::SubAck, reason)?;
        }
    } else {
        // [MQTT-3.9.3-2] (3.1.1) 0x00, 0x01, 0x02 or 0x80 only.
        for reason in &sub_ack.reasons {
            sink.put_u8(reason.to_v3_suback_return_code());
        }
    }
    Ok(())
}

fn put_unsubscribe<S: Sink>(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    // [MQTT-3.10.3-2] At least one topic filter.
    ensure::<S>(!unsubscribe.filters.is_empty(), || {
        EncodeError::NoEntries(PacketType::Unsubscribe)
    })?;
    put_packet_id(sink, unsubscribe.packet_id);
    if version.is_v5() {
        sink.put_properties(&unsubscribe.properties)?;
    }
    for filter in &unsubscribe.filters {
        put_field(sink, Field::TopicFilter, filter.as_str().as_bytes())?;
    }
    Ok(())
}

fn put_unsub_ack<S: Sink>(
    unsub_ack: &UnsubAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    put_packet_id(sink, unsub_ack.packet_id);
    if !version.is_v5() {
        // Section 3.11 (3.1.1): the packet id only; no reason codes.
        return Ok(());
    }
    // [MQTT-3.11.3-2] One code per topic filter received, so at least one.
    ensure::<S>(!unsub_ack.reasons.is_empty(), || EncodeError::NoEntries(PacketType::UnsubAck))?;
    sink.put_properties(&unsub_ack.properties)?;
    for &reason in &unsub_ack.reasons {
        put_reason(sink, PacketType::UnsubAck, reason)?;
    }
    Ok(())
}

fn put_disconnect<S: Sink>(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        // Section 3.14 (3.1.1): a fixed header only.
        return Ok(());
    }
    let no_properties = disconnect.properties.is_empty();
    // Section 3.14.2.1: Normal disconnection without properties is
    // remaining length 0.
    if disconnect.reason == ReasonCode::NORMAL_DISCONNECTION && no_properties {
        return Ok(());
    }
    put_reason(sink, PacketType::Disconnect, disconnect.reason)?;
    // Section 3.14.2.2.1: with a remaining length below 2 the Property
    // Length is 0, so it is omitted when empty (remaining length 1).
    if no_properties {
        Ok(())
    } else {
        sink.put_properties(&disconnect.properties)
    }
}

fn put_auth<S: Sink>(
    auth: &Auth,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    // [MQTT-2.1.2] Packet type 15 is reserved before 5.0.
    ensure::<S>(version.is_v5(), || EncodeError::NotInVersion {
        packet: PacketType::Auth,
        version,
    })?;
    // Section 3.15.2.1: Success without properties is remaining length 0.
    // Unlike DISCONNECT, AUTH has no rule for a missing Property Length
    // after a reason code, so it is then always written.
    if auth.reason == ReasonCode::Success && auth.properties.is_empty() {
        return Ok(());
    }
    put_reason(sink, PacketType::Auth, auth.reason)?;
    sink.put_properties(&auth.properties)
}

/// A v5 property struct: writes its properties, in the order of its fields,
/// each as an identifier and a value [MQTT-2.2.2.2]. Absent and empty
/// fields write nothing.
trait PropertyBlock {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError>;
}

/// Section 2.2.2.2: the identifier is a Variable Byte Integer, one byte
/// long for every identifier defined by 5.0 (all below 0x80).
fn put_id<S: Sink>(sink: &mut S, id: PropertyId) {
    sink.put_u8(id as u8);
}

/// A Byte property.
fn put_byte<S: Sink>(sink: &mut S, id: PropertyId, value: Option<u8>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u8(value);
    }
}

/// A Byte property holding a boolean: 0 or 1.
fn put_bool<S: Sink>(sink: &mut S, id: PropertyId, value: Option<bool>) {
    put_byte(sink, id, value.map(u8::from));
}

/// A Two Byte Integer property (big endian, section 1.5.2).
fn put_two<S: Sink>(sink: &mut S, id: PropertyId, value: Option<u16>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u16(value);
    }
}

/// A Four Byte Integer property (big endian, section 1.5.3).
fn put_four<S: Sink>(sink: &mut S, id: PropertyId, value: Option<u32>) {
    if let Some(value) = value {
        put_id(sink, id);
        sink.put_u32(value);
    }
}

/// A UTF-8 Encoded String or Binary Data property.
fn put_bytes<S: Sink>(
    sink: &mut S,
    id: PropertyId,
    value: Option<&[u8]>,
) -> Result<(), EncodeError> {
    match value {
        Some(value) => {
            put_id(sink, id);
            put_field(sink, Field::Property(id), value)
        }
        None => Ok(()),
    }
}

/// A Subscription Identifier: a Variable Byte Integer of 1 to 268,435,455
/// (section 3.8.2.1.2).
fn put_subscription_id<S: Sink>(sink: &mut S, id: NonZeroU32) -> Result<(), EncodeError> {
    let id = id.get();
    ensure::<S>(id <= MAX_SUBSCRIPTION_ID, || {
        EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier)
    })?;
    put_id(sink, PropertyId::SubscriptionIdentifier);
    sink.put_var_int(id);
    Ok(())
}

/// User Properties, in order: each one a UTF-8 String Pair (section
/// 1.5.7), repeated as given [MQTT-3.3.2-18].
fn put_user_properties<S: Sink>(sink: &mut S, pairs: &UserProperties) -> Result<(), EncodeError> {
    let field = Field::Property(PropertyId::UserProperty);
    for (name, value) in pairs {
        put_id(sink, PropertyId::UserProperty);
        put_field(sink, field, name.as_bytes())?;
        put_field(sink, field, value.as_bytes())?;
    }
    Ok(())
}

fn str_bytes(value: &Option<ByteString>) -> Option<&[u8]> {
    value.as_deref().map(str::as_bytes)
}

fn topic_bytes(value: &Option<TopicName>) -> Option<&[u8]> {
    value.as_ref().map(|t| t.as_str().as_bytes())
}

/// Section 3.1.2.11.10: Authentication Data needs an Authentication Method.
fn check_auth<S: Sink>(
    method: &Option<ByteString>,
    data: &Option<Bytes>,
) -> Result<(), EncodeError> {
    ensure::<S>(data.is_none() || method.is_some(), || EncodeError::AuthDataWithoutMethod)
}

// Each struct is destructured without `..`, so a property added to a
// struct cannot be forgotten here: the pattern stops compiling.

impl PropertyBlock for ConnectProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self {
            session_expiry_interval,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            request_response_information,
            request_problem_information,
            user_properties,
            authentication_method,
            authentication_data,
        } = self;
        check_auth::<S>(authentication_method, authentication_data)?;
        put_four(sink, P::SessionExpiryInterval, *session_expiry_interval);
        put_two(sink, P::ReceiveMaximum, receive_maximum.map(NonZeroU16::get));
        put_four(sink, P::MaximumPacketSize, maximum_packet_size.map(NonZeroU32::get));
        put_two(sink, P::TopicAliasMaximum, *topic_alias_maximum);
        put_bool(sink, P::RequestResponseInformation, *request_response_information);
        put_bool(sink, P::RequestProblemInformation, *request_problem_information);
        put_user_properties(sink, user_properties)?;
        put_bytes(sink, P::AuthenticationMethod, str_bytes(authentication_method))?;
        put_bytes(sink, P::AuthenticationData, authentication_data.as_deref())
    }
}

impl PropertyBlock for WillProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self {
            will_delay_interval,
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        } = self;
        put_four(sink, P::WillDelayInterval, *will_delay_interval);
        put_bool(sink, P::PayloadFormatIndicator, *payload_format_indicator);
        put_four(sink, P::MessageExpiryInterval, *message_expiry_interval);
        put_bytes(sink, P::ContentType, str_bytes(content_type))?;
        put_bytes(sink, P::ResponseTopic, topic_bytes(response_topic))?;
        put_bytes(sink, P::CorrelationData, correlation_data.as_deref())?;
        put_user_properties(sink, user_properties)
    }
}

impl PropertyBlock for ConnAckProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self {
            session_expiry_interval,
            receive_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            assigned_client_identifier,
            topic_alias_maximum,
            reason_string,
            user_properties,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            server_keep_alive,
            response_information,
            server_reference,
            authentication_method,
            authentication_data,
        } = self;
        check_auth::<S>(authentication_method, authentication_data)?;
        // Section 3.2.2.3.4: Maximum QoS is 0 or 1; a server supporting
        // QoS 2 leaves it out.
        ensure::<S>(*maximum_qos != Some(QoS::ExactlyOnce), || {
            EncodeError::InvalidPropertyValue(P::MaximumQoS)
        })?;
        put_four(sink, P::SessionExpiryInterval, *session_expiry_interval);
        put_two(sink, P::ReceiveMaximum, receive_maximum.map(NonZeroU16::get));
        put_byte(sink, P::MaximumQoS, maximum_qos.map(|qos| qos as u8));
        put_bool(sink, P::RetainAvailable, *retain_available);
        put_four(sink, P::MaximumPacketSize, maximum_packet_size.map(NonZeroU32::get));
        put_bytes(sink, P::AssignedClientIdentifier, str_bytes(assigned_client_identifier))?;
        put_two(sink, P::TopicAliasMaximum, *topic_alias_maximum);
        put_bytes(sink, P::ReasonString, str_bytes(reason_string))?;
        put_user_properties(sink, user_properties)?;
        put_bool(sink, P::WildcardSubscriptionAvailable, *wildcard_subscription_available);
        put_bool(sink, P::SubscriptionIdentifierAvailable, *subscription_identifiers_available);
        put_bool(sink, P::SharedSubscriptionAvailable, *shared_subscription_available);
        put_two(sink, P::ServerKeepAlive, *server_keep_alive);
        put_bytes(sink, P::ResponseInformation, str_bytes(response_information))?;
        put_bytes(sink, P::ServerReference, str_bytes(server_reference))?;
        put_bytes(sink, P::AuthenticationMethod, str_bytes(authentication_method))?;
        put_bytes(sink, P::AuthenticationData, authentication_data.as_deref())
    }
}

impl PropertyBlock for PublishProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self {
            payload_format_indicator,
            message_expiry_interval,
            topic_alias,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers,
            content_type,
        } = self;
        put_bool(sink, P::PayloadFormatIndicator, *payload_format_indicator);
        put_four(sink, P::MessageExpiryInterval, *message_expiry_interval);
        put_two(sink, P::TopicAlias, topic_alias.map(NonZeroU16::get));
        put_bytes(sink, P::ResponseTopic, topic_bytes(response_topic))?;
        put_bytes(sink, P::CorrelationData, correlation_data.as_deref())?;
        put_user_properties(sink, user_properties)?;
        // Section 3.3.2.3.8: one Subscription Identifier property per id.
        for &id in subscription_identifiers {
            put_subscription_id(sink, id)?;
        }
        put_bytes(sink, P::ContentType, str_bytes(content_type))
    }
}

impl PropertyBlock for AckProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let Self { reason_string, user_properties } = self;
        put_bytes(sink, PropertyId::ReasonString, str_bytes(reason_string))?;
        put_user_properties(sink, user_properties)
    }
}

impl AckProperties {
    /// Whether nothing would be written (the short forms of the acks).
    fn is_empty(&self) -> bool {
        let Self { reason_string, user_properties } = self;
        reason_string.is_none() && user_properties.is_empty()
    }
}

impl PropertyBlock for SubscribeProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let Self { subscription_identifier, user_properties } = self;
        if let Some(id) = *subscription_identifier {
            put_subscription_id(sink, id)?;
        }
        put_user_properties(sink, user_properties)
    }
}

impl PropertyBlock for UnsubscribeProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let Self { user_properties } = self;
        put_user_properties(sink, user_properties)
    }
}

impl PropertyBlock for DisconnectProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self { session_expiry_interval, reason_string, user_properties, server_reference } =
            self;
        put_four(sink, P::SessionExpiryInterval, *session_expiry_interval);
        put_bytes(sink, P::ReasonString, str_bytes(reason_string))?;
        put_user_properties(sink, user_properties)?;
        put_bytes(sink, P::ServerReference, str_bytes(server_reference))
    }
}

impl DisconnectProperties {
    /// Whether nothing would be written (the short forms of DISCONNECT).
    fn is_empty(&self) -> bool {
        let Self { session_expiry_interval, reason_string, user_properties, server_reference } =
            self;
        session_expiry_interval.is_none()
            && reason_string.is_none()
            && user_properties.is_empty()
            && server_reference.is_none()
    }
}

impl PropertyBlock for AuthProperties {
    fn put<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        use PropertyId as P;
        let Self { authentication_method, authentication_data, reason_string, user_properties } =
            self;
        check_auth::<S>(authentication_method, authentication_data)?;
        put_bytes(sink, P::AuthenticationMethod, str_bytes(authentication_method))?;
        put_bytes(sink, P::AuthenticationData, authentication_data.as_deref())?;
        put_bytes(sink, P::ReasonString, str_bytes(reason_string))?;
        put_user_properties(sink, user_properties)
    }
}

impl AuthProperties {
    /// Whether nothing would be written (the short form of AUTH).
    fn is_empty(&self) -> bool {
        let Self { authentication_method, authentication_data, reason_string, user_properties } =
            self;
        authentication_method.is_none()
            && authentication_data.is_none()
            && reason_string.is_none()
            && user_properties.is_empty()
    }
}

#[cfg(test)]
mod tests {
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
        let packet =
            Packet::Connect(Box::new(Connect { client_id: s(&too_long), ..connect(V311) }));
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
            let p = Publish {
                payload: Bytes::from(payload),
                ..publish(QoS::AtMostOnce, None, "t", b"")
            };
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
        p.properties
            .make_mut()
            .subscription_identifiers
            .push(NonZeroU32::new(268_435_456).unwrap());
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
        let expected =
            [0x70, 0x0B, 0x00, 0x03, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'];
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
            packet_id: id(4),
            properties: UnsubscribeProperties { user_properties: vec![pair("k", "v")] },
            filters: smallvec![filter("f")],
        });
        let expected = [
            0xA2, 0x0D, 0x00, 0x04, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x00, 0x01,
            b'f',
        ];
        assert_encodes(&packet, V5, &expected);
        // [MQTT-3.10.3-2]
        let empty = Packet::Unsubscribe(Unsubscribe {
            packet_id: id(4),
            properties: UnsubscribeProperties::default(),
            filters: smallvec![],
        });
        assert_error(&empty, V5, EncodeError::NoEntries(PacketType::Unsubscribe));
    }

    #[test]
    fn unsuback() {
        // 3.1.1 section 3.11: the packet id only.
        let v3 = UnsubAck {
            packet_id: id(3),
            properties: AckProperties::default(),
            reasons: smallvec![],
        };
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
        let with_reason =
            Disconnect { reason: ReasonCode::SessionTakenOver, ..Disconnect::default() };
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
        let packet = Packet::Disconnect(Disconnect {
            reason: ReasonCode::GrantedQoS1,
            ..Disconnect::default()
        });
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
}
