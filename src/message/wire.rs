//! A [`Message`] in a form that can leave the process (to another node of a
//! cluster, or to the durable log) and come back, with its expiry intact.
//!
//! In the process an expiry is an [`Instant`], which means nothing outside
//! it. On the wire it is the absolute wall-clock time of the expiry, in
//! milliseconds since the Unix epoch: the time a message spends in transit
//! or on disk counts against its Message Expiry Interval, as the spec wants
//! of a server that holds it [MQTT-3.3.2-6]. Nodes are expected to keep
//! their clocks in step (NTP); a skew of S shortens or lengthens a
//! message's life by S.
//!
//! Layout (version 1), integers big-endian:
//!
//! ```text
//! u8   format version (1)
//! u8   flags: bits 0-1 QoS, bit 2 RETAIN, bit 3 publisher, bit 4 expiry
//! u64  expiry, Unix ms                  (if bit 4)
//! u16  length + UTF-8 publisher client id (if bit 3)
//! ...  the message as an MQTT 5.0 PUBLISH packet at QoS 0 (fixed header,
//!      topic, properties, payload), written and read by the codec
//! ```

use super::Message;
use crate::protocol::{decode_packet, Packet, ProtocolVersion, Publish, QoS};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: u8 = 1;
const RETAIN: u8 = 1 << 2;
const PUBLISHER: u8 = 1 << 3;
const EXPIRY: u8 = 1 << 4;

/// The two clocks at one moment: the process's monotonic one and the wall
/// clock, to carry an expiry from one to the other.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    /// Now, on the monotonic clock.
    pub now: Instant,
    /// Now, on the wall clock.
    pub wall: SystemTime,
}

impl Clocks {
    /// Both clocks, read now.
    pub fn read() -> Self {
        Self { now: Instant::now(), wall: SystemTime::now() }
    }

    /// The wall-clock time of `at`, in Unix ms.
    fn wall_ms(self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.now) {
            Some(ahead) => self.wall + ahead,
            None => self.wall - self.now.duration_since(at),
        };
        wall.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
    }

    /// The instant of the wall-clock time `ms` (Unix ms); a time already
    /// past is now.
    fn instant(self, ms: u64) -> Instant {
        let wall = UNIX_EPOCH + Duration::from_millis(ms);
        self.now + wall.duration_since(self.wall).unwrap_or(Duration::ZERO)
    }
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a format this build reads.
    #[error("unknown message format version {0}")]
    Version(u8),
    /// Ends before its header does.
    #[error("truncated message header")]
    Truncated,
    /// The publisher is not UTF-8.
    #[error("publisher client id is not UTF-8")]
    Publisher,
    /// QoS 3.
    #[error("invalid QoS")]
    QoS,
    /// The embedded PUBLISH does not encode or decode.
    #[error("embedded PUBLISH: {0}")]
    Publish(String),
}

/// Appends `message` to `out`. `clocks` turns its expiry into wall time.
/// Fails (writing nothing) only for a message at the very limit of MQTT's
/// packet size, whose 5.0 form is larger than its 3.1.1 one.
pub fn encode(message: &Message, clocks: Clocks, out: &mut BytesMut) -> Result<(), WireError> {
    let start = out.len();
    let mut flags = message.qos as u8;
    if message.retain {
        flags |= RETAIN;
    }
    if message.publisher.is_some() {
        flags |= PUBLISHER;
    }
    if message.expires_at.is_some() {
        flags |= EXPIRY;
    }
    out.put_u8(VERSION);
    out.put_u8(flags);
    if let Some(at) = message.expires_at {
        out.put_u64(clocks.wall_ms(at));
    }
    if let Some(publisher) = &message.publisher {
        // Client ids are MQTT strings: at most 65,535 bytes.
        out.put_u16(publisher.len() as u16);
        out.put_slice(publisher.as_bytes());
    }
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: message.topic.clone(),
        packet_id: None,
        properties: message.properties.clone(),
        payload: message.payload.clone(),
    };
    Packet::Publish(publish).encode(ProtocolVersion::V5, out).map_err(|error| {
        out.truncate(start);
        WireError::Publish(error.to_string())
    })
}

/// Reads a message written by [`encode`]; its payload shares `bytes`.
pub fn decode(mut bytes: Bytes, clocks: Clocks) -> Result<Message, WireError> {
    if bytes.remaining() < 2 {
        return Err(WireError::Truncated);
    }
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let flags = bytes.get_u8();
    let qos = QoS::from_u8(flags & 0b11).ok_or(WireError::QoS)?;
    let expires_at = if flags & EXPIRY != 0 {
        if bytes.remaining() < 8 {
            return Err(WireError::Truncated);
        }
        Some(clocks.instant(bytes.get_u64()))
    } else {
        None
    };
    let publisher = if flags & PUBLISHER != 0 {
        if bytes.remaining() < 2 {
            return Err(WireError::Truncated);
        }
        let len = usize::from(bytes.get_u16());
        if bytes.remaining() < len {
            return Err(WireError::Truncated);
        }
        let text = bytes.split_to(len);
        Some(ByteString::try_from(text).map_err(|_| WireError::Publisher)?)
    } else {
        None
    };
    match decode_packet(bytes, ProtocolVersion::V5) {
        Ok(Packet::Publish(publish)) => Ok(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos,
            retain: flags & RETAIN != 0,
            properties: publish.properties,
            publisher,
            expires_at,
            id: 0,
        }),
        Ok(other) => Err(WireError::Publish(format!("a {:?}, not a PUBLISH", other.packet_type()))),
        Err(error) => Err(WireError::Publish(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BoxedPublishProperties, PublishProperties, TopicName};

    fn message() -> Message {
        Message {
            topic: TopicName::new("sensors/1/temp").unwrap(),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: BoxedPublishProperties::none(),
            publisher: None,
            expires_at: None,
            id: 0,
        }
    }

    fn round_trip(message: &Message, out_clocks: Clocks, in_clocks: Clocks) -> Message {
        let mut out = BytesMut::new();
        encode(message, out_clocks, &mut out).unwrap();
        decode(out.freeze(), in_clocks).unwrap()
    }

    #[test]
    fn a_plain_message_round_trips() {
        let clocks = Clocks::read();
        let plain = message();
        assert_eq!(round_trip(&plain, clocks, clocks), plain);
    }

    #[test]
    fn every_field_round_trips() {
        let clocks = Clocks::read();
        let properties = PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            response_topic: Some(TopicName::new("replies/1").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::EMPTY
        };
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let full = Message {
                qos,
                retain: true,
                properties: BoxedPublishProperties::from(properties.clone()),
                publisher: Some("device-7".into()),
                expires_at: Some(clocks.now + Duration::from_secs(60)),
                ..message()
            };
            let back = round_trip(&full, clocks, clocks);
            let drift =
                back.expires_at.unwrap().saturating_duration_since(full.expires_at.unwrap())
                    + full.expires_at.unwrap().saturating_duration_since(back.expires_at.unwrap());
            assert!(drift < Duration::from_millis(2), "expiry moved by {drift:?}");
            assert_eq!(Message { expires_at: full.expires_at, ..back }, full);
        }
    }

    #[test]
    fn time_in_transit_counts_against_the_expiry_mqtt_3_3_2_6() {
        // Sent with 60 s left; read 3 s later (wall clock) by a process
        // whose monotonic clock has its own origin: 57 s are left.
        let sender = Clocks::read();
        let sent = Message { expires_at: Some(sender.now + Duration::from_secs(60)), ..message() };
        let receiver = Clocks {
            now: sender.now + Duration::from_secs(1000),
            wall: sender.wall + Duration::from_secs(3),
        };
        let left = round_trip(&sent, sender, receiver).expires_at.unwrap() - receiver.now;
        assert!(
            left > Duration::from_millis(56_990) && left <= Duration::from_secs(57),
            "{left:?}"
        );
        // Arriving after its expiry, it is expired on arrival.
        let late = Clocks { wall: sender.wall + Duration::from_secs(61), ..receiver };
        assert_eq!(round_trip(&sent, sender, late).expires_at, Some(late.now));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let clocks = Clocks::read();
        let mut good = BytesMut::new();
        let full =
            Message { publisher: Some("p".into()), expires_at: Some(clocks.now), ..message() };
        encode(&full, clocks, &mut good).unwrap();
        for len in 0..good.len() {
            assert!(decode(good.clone().freeze().slice(..len), clocks).is_err(), "prefix {len}");
        }
        assert_eq!(decode(Bytes::from_static(&[2, 0]), clocks), Err(WireError::Version(2)));
        assert_eq!(decode(Bytes::from_static(&[1, 3]), clocks).unwrap_err(), WireError::QoS);
        let not_utf8 = Bytes::from_static(&[1, PUBLISHER, 0, 1, 0xFF]);
        assert_eq!(decode(not_utf8, clocks).unwrap_err(), WireError::Publisher);
    }
}
