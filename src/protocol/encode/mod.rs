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
    // [MQTT-3.8.3-2] At least one topic filter.
    ensure::<S>(subscribe.filter_count() > 0, || EncodeError::NoEntries(PacketType::Subscribe))?;
    put_packet_id(sink, subscribe.packet_id);
    let v5 = version.is_v5();
    if v5 {
        sink.put_properties(&subscribe.properties)?;
    }
    // Refused (5.0) filters go back at their positions; any past the end
    // go last.
    let mut refused = subscribe.refused.iter().peekable();
    let mut valid = subscribe.subscriptions.iter();
    for position in 0..subscribe.filter_count() {
        let (text, options, shared) = match refused.next_if(|r| r.position <= position) {
            Some(r) => (str::as_bytes(&r.text), r.options, false),
            None => match valid.next() {
                Some(s) => (s.filter.as_str().as_bytes(), s.options, s.filter.is_shared()),
                None => match refused.next() {
                    Some(r) => (str::as_bytes(&r.text), r.options, false),
                    None => break,
                },
            },
        };
        put_field(sink, Field::TopicFilter, text)?;
        // [MQTT-3.8.3-5] Reserved bits are 0: bits 2-7 before 5.0, bits 6-7
        // in 5.0 (section 3.8.3.1).
        let mut byte = options.qos as u8;
        if v5 {
            // [MQTT-3.8.3-4] No Local on a shared subscription is a
            // Protocol Error.
            ensure::<S>(!(options.no_local && shared), || {
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
    let count = unsubscribe.filters.len() + unsubscribe.refused.len();
    // [MQTT-3.10.3-2] At least one topic filter.
    ensure::<S>(count > 0, || EncodeError::NoEntries(PacketType::Unsubscribe))?;
    put_packet_id(sink, unsubscribe.packet_id);
    if version.is_v5() {
        sink.put_properties(&unsubscribe.properties)?;
    }
    // As in SUBSCRIBE: refused filters at their positions.
    let mut refused = unsubscribe.refused.iter().peekable();
    let mut valid = unsubscribe.filters.iter();
    for position in 0..count {
        let text = match refused.next_if(|r| r.position <= position) {
            Some(r) => str::as_bytes(&r.text),
            None => match valid.next() {
                Some(filter) => filter.as_str().as_bytes(),
                None => match refused.next() {
                    Some(r) => str::as_bytes(&r.text),
                    None => break,
                },
            },
        };
        put_field(sink, Field::TopicFilter, text)?;
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
mod tests;
