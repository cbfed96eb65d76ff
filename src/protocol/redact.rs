//! Redaction of secrets in `Debug` output.
//!
//! Packets are formatted with `{:?}` in logs (`tracing::error!(?packet)`) and
//! in test failures, so the `Debug` of every field that may carry a
//! credential (the CONNECT password, the Authentication Data of CONNECT,
//! CONNACK and AUTH) prints only its length, through [`Redacted`].

use bytes::Bytes;
use std::fmt;

/// An optional secret as `Debug` shows it: `None`, or
/// `Some(<redacted N bytes>)`, never the bytes themselves.
pub(crate) struct Redacted<'a>(pub(crate) &'a Option<Bytes>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(secret) => write!(f, "Some(<redacted {} bytes>)", secret.len()),
            None => f.write_str("None"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{
        Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Packet,
        ProtocolVersion, QoS, ReasonCode, TopicName, Will, WillProperties,
    };
    use bytes::Bytes;
    use bytestring::ByteString;

    /// A secret that `Bytes`' own `Debug` prints verbatim (`b"hunter2-..."`).
    const SECRET: &[u8] = b"hunter2-do-not-log";

    /// Formats `packet` both ways and checks that the secret is absent and
    /// its length shown instead.
    fn assert_redacted(packet: &Packet) -> String {
        // The check itself can see a leak: unredacted bytes do show.
        assert!(format!("{:?}", Some(Bytes::from_static(SECRET))).contains("hunter2"));
        let compact = format!("{packet:?}");
        let pretty = format!("{packet:#?}");
        for text in [&compact, &pretty] {
            assert!(!text.contains("hunter2"), "secret in {text}");
            assert!(text.contains("Some(<redacted 18 bytes>)"), "no redaction in {text}");
        }
        compact
    }

    fn connect(version: ProtocolVersion) -> Connect {
        Connect {
            version,
            clean_start: true,
            keep_alive: 30,
            client_id: ByteString::from_static("sensor-7"),
            will: None,
            username: Some(ByteString::from_static("alice")),
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    #[test]
    fn connect_password_is_redacted() {
        let packet = Packet::Connect(Box::new(Connect {
            password: Some(Bytes::from_static(SECRET)),
            ..connect(ProtocolVersion::V3_1_1)
        }));
        let text = assert_redacted(&packet);
        // What helps debugging stays.
        assert!(text.contains("sensor-7") && text.contains("alice"), "{text}");
    }

    #[test]
    fn connect_authentication_data_is_redacted() {
        let properties = ConnectProperties {
            authentication_method: Some(ByteString::from_static("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(SECRET)),
            ..ConnectProperties::default()
        };
        let packet =
            Packet::Connect(Box::new(Connect { properties, ..connect(ProtocolVersion::V5) }));
        let text = assert_redacted(&packet);
        assert!(text.contains("SCRAM-SHA-256") && text.contains("password: None"), "{text}");
    }

    #[test]
    fn will_payload_is_redacted() {
        let will = Will {
            topic: TopicName::new("status/sensor-7").unwrap(),
            payload: Bytes::from_static(SECRET),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        };
        let packet =
            Packet::Connect(Box::new(Connect { will: Some(will), ..connect(ProtocolVersion::V5) }));
        let text = format!("{packet:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("status/sensor-7") && text.contains("payload_len: 18"), "{text}");
    }

    #[test]
    fn auth_data_is_redacted() {
        let packet = Packet::Auth(Box::new(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(ByteString::from_static("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(SECRET)),
                ..AuthProperties::default()
            },
        }));
        let text = assert_redacted(&packet);
        assert!(text.contains("ContinueAuthentication"), "{text}");
    }

    #[test]
    fn connack_authentication_data_is_redacted() {
        let packet = Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties {
                authentication_method: Some(ByteString::from_static("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(SECRET)),
                ..ConnAckProperties::default()
            },
        }));
        assert_redacted(&packet);
    }

    #[test]
    fn absent_secrets_read_as_none() {
        let text = format!("{:?}", connect(ProtocolVersion::V5));
        assert!(text.contains("password: None"), "{text}");
        assert!(text.contains("authentication_data: None"), "{text}");
    }
}
