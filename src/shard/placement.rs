//! Where a new connection goes, decided once by the shard that has its
//! CONNECT: attached to its session here, moved to its home shard, or
//! refused. What any shard would refuse is refused where the CONNECT was
//! read, so no socket moves only to be refused.

use super::limit_log::LimitCause;
use super::state::{ConnectOutcome, ConnectionId, SessionKey, Shard};
use crate::auth::pool::Verified;
use crate::protocol::{Connect, ProtocolVersion, ReasonCode};
use crate::router::ShardId;
use crate::session::SessionLimits;
use std::time::Instant;

/// The shard's decision on a CONNECT ([`Shard::place`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// Homed here and accepted: the connection is attached to its session,
    /// whose output starts with the CONNACK.
    Attached {
        /// The session.
        key: SessionKey,
        /// The connection's identity, for every later call.
        connection: ConnectionId,
    },
    /// Homed on this other shard, which takes the connection with its
    /// CONNECT. Nothing this shard can see would make it refuse it.
    HandOff(ShardId),
    /// Refused with a CONNACK carrying this code.
    Refused(ReasonCode),
}

impl Shard {
    /// Places a connection whose CONNECT this shard has read (accepted
    /// here, or handed off to this shard as its home). A client without a
    /// client id gets one homed here, so it never moves. `verified`: its
    /// password check, when it had one (see [`Shard::set_verifier`]).
    pub fn place(
        &mut self,
        now: Instant,
        connect: &Connect,
        verified: Option<Verified>,
    ) -> Placement {
        if let Some(reason) = connect_refusal(connect, self.is_shutting_down(), self.limits()) {
            self.count_refusal(reason, connect, now);
            return Placement::Refused(reason);
        }
        // A reload removed the user or changed its password after the
        // check: a shard tick may already have closed that user's
        // connections (`close_revoked`), and this one, placed after it,
        // would stay open on credentials the file no longer accepts. It is
        // refused as the same CONNECT sent now would be: CONNACK 0x86 Bad
        // User Name or Password (3.1.1: return code 4, "Connection Refused,
        // bad user name or password"), then the connection closes
        // [MQTT-3.2.2-7] ([MQTT-3.2.2-5] in 3.1.1). Like the tick's close,
        // it leaves the session as it was. Checked here and again on the
        // home shard after a hand-off, so no revocation slips in between.
        if self.revoked_since_checked(connect, verified) {
            // Counted as the password check's refusals are.
            self.net_counters().auth_failed += 1;
            // Rare: only CONNECTs checked while a reload revoked their user.
            tracing::info!(
                client_id = &*connect.client_id,
                username = connect.username.as_deref().unwrap_or(""),
                "reload: refused a CONNECT whose user was removed from password_file, or \
                 whose password changed, after its password was checked"
            );
            return Placement::Refused(ReasonCode::BadUserNameOrPassword);
        }
        let client_id = if connect.client_id.is_empty() {
            self.assign_client_id()
        } else {
            connect.client_id.clone()
        };
        if let Some(reason) = self.will_refusal(connect, &client_id) {
            return Placement::Refused(reason);
        }
        let home = self.home_of(&client_id);
        if home != self.id() {
            return Placement::HandOff(home);
        }
        let connection = self.new_connection_id();
        match self.handle_connect(now, connect, client_id, connection) {
            ConnectOutcome::Accepted(key) => Placement::Attached { key, connection },
            ConnectOutcome::Refused(reason) => Placement::Refused(reason),
        }
    }
}

impl Shard {
    /// Counts (and logs, rate-limited) a CONNECT refused by
    /// [`connect_refusal`] where a counter says why.
    fn count_refusal(&mut self, reason: ReasonCode, connect: &Connect, now: Instant) {
        match reason {
            ReasonCode::PayloadFormatInvalid => self.count_payload_format_invalid(),
            // An empty client id is refused with the same code; only a
            // long one is a limit hit.
            ReasonCode::ClientIdentifierNotValid if !connect.client_id.is_empty() => {
                self.counters_mut().session.client_id_too_long += 1;
                self.count_limit(LimitCause::ClientIdTooLong, 1, now);
            }
            ReasonCode::TopicNameInvalid => {
                self.counters_mut().session.topic_limit_exceeded += 1;
                self.count_limit(LimitCause::TopicTooLong, 1, now);
            }
            _ => {}
        }
    }
}

/// Why a CONNECT is refused, whichever shard is its home; `None` when
/// it is not.
pub(super) fn connect_refusal(
    connect: &Connect,
    shutting_down: bool,
    limits: &SessionLimits,
) -> Option<ReasonCode> {
    if shutting_down {
        return Some(ReasonCode::ServerUnavailable);
    }
    let retain_available = limits.retain_available;
    // [MQTT-3.2.2-13] "If a Server receives a CONNECT packet containing a
    // Will Message with the Will Retain set to 1, and it does not support
    // retained messages, the Server MUST reject the connection request. It
    // SHOULD send CONNACK with Reason Code 0x9A (Retain not supported) and
    // then it MUST close the Network Connection". (3.1.1: return code 3,
    // Server unavailable, the closest it has.)
    if !retain_available && connect.will.as_ref().is_some_and(|will| will.retain) {
        return Some(ReasonCode::RetainNotSupported);
    }
    // [MQTT-3.1.3-8] An empty client id needs Clean Session = 1; MQTT
    // 3.1 requires an id of 1 to 23 characters.
    if connect.client_id.is_empty()
        && (!connect.clean_start || connect.version == ProtocolVersion::V3_1)
    {
        return Some(ReasonCode::ClientIdentifierNotValid);
    }
    // `max_client_id_length`. [MQTT-3.1.3-5] "The Server MUST allow
    // ClientIds which are between 1 and 23 UTF-8 encoded bytes in length"
    // and MAY allow more; one it does not allow gets 0x85 Client Identifier
    // not valid [MQTT-3.1.3-8] (3.1.1: return code 2, "Identifier
    // rejected" [MQTT-3.1.3-9]). The configured maximum is at least 23.
    if connect.client_id.len() > limits.max_client_id_length {
        return Some(ReasonCode::ClientIdentifierNotValid);
    }
    // A will topic past `max_topic_length` / `max_topic_levels`: CONNACK
    // 0x90 Topic Name invalid, "The Will Topic Name is not malformed, but
    // is not accepted by this Server" (table 3-6). 3.1.1 has no such
    // return code: 3, Server unavailable, the closest (as for 0x9A).
    if connect.will.as_ref().is_some_and(|will| !limits.topic_within(will.topic.as_str())) {
        return Some(ReasonCode::TopicNameInvalid);
    }
    // 5.0 §3.1.3.2.3: "The Server MAY validate that the Will Message is of
    // the format indicated, and if it is not send a CONNACK with the Reason
    // Code of 0x99 (Payload format invalid)", as a PUBLISH is checked
    // [MQTT-3.3.2-4].
    if let Some(will) = &connect.will {
        if will.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Some(ReasonCode::PayloadFormatInvalid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{home_shard, Outbox};
    use crate::session::SessionLimits;
    use std::rc::Rc;

    /// Shard 0 of two.
    fn shard() -> Shard {
        let outbox = Rc::new(Outbox::new(2));
        Shard::new(ShardId::from_index(0).unwrap(), 2, SessionLimits::default(), outbox, 1)
    }

    fn connect(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
        Connect {
            version,
            clean_start: clean,
            keep_alive: 30,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }
    }

    /// A client id homed on `shard` of two.
    fn id_on(shard: usize) -> String {
        (0..)
            .map(|i| format!("c{i}"))
            .find(|id| home_shard(id.as_bytes(), 2).index() == shard)
            .unwrap()
    }

    #[test]
    fn a_connect_homed_here_is_attached_and_one_homed_elsewhere_moves() {
        let mut shard = shard();
        let now = Instant::now();
        let here = shard.place(now, &connect(ProtocolVersion::V3_1_1, &id_on(0), true), None);
        assert!(matches!(here, Placement::Attached { .. }), "{here:?}");
        let there = connect(ProtocolVersion::V3_1_1, &id_on(1), true);
        assert_eq!(
            shard.place(now, &there, None),
            Placement::HandOff(ShardId::from_index(1).unwrap())
        );
        // Moving takes nothing on this shard.
        assert_eq!(shard.session_count(), 1);
    }

    #[test]
    fn an_empty_client_id_is_assigned_here_and_never_moves() {
        let mut shard = shard();
        for _ in 0..20 {
            let placement =
                shard.place(Instant::now(), &connect(ProtocolVersion::V3_1_1, "", true), None);
            assert!(matches!(placement, Placement::Attached { .. }), "{placement:?}");
        }
        assert_eq!(shard.session_count(), 20);
    }

    /// What the home shard would refuse is refused before the hand-off,
    /// by the shard that read the CONNECT.
    #[test]
    fn what_the_home_shard_would_refuse_is_refused_before_moving() {
        let there = id_on(1);
        let cases = [
            // [MQTT-3.1.3-8]
            (connect(ProtocolVersion::V3_1_1, "", false), ReasonCode::ClientIdentifierNotValid),
            (connect(ProtocolVersion::V3_1, "", true), ReasonCode::ClientIdentifierNotValid),
        ];
        for (connect, reason) in cases {
            let mut shard = shard();
            assert_eq!(shard.place(Instant::now(), &connect, None), Placement::Refused(reason));
            assert_eq!(shard.session_count(), 0);
        }
        // A 5.0 CONNECT is served like any other: it moves to its home.
        let mut shard = shard();
        let v5 = connect(ProtocolVersion::V5, &there, true);
        assert!(matches!(shard.place(Instant::now(), &v5, None), Placement::HandOff(_)));
        shard.begin_shutdown(Instant::now());
        let connect = connect(ProtocolVersion::V3_1_1, &there, true);
        assert_eq!(
            shard.place(Instant::now(), &connect, None),
            Placement::Refused(ReasonCode::ServerUnavailable)
        );
    }

    #[test]
    fn a_will_that_is_not_the_utf8_it_claims_gets_connack_0x99() {
        // 5.0 §3.1.3.2.3: "The Server MAY validate that the Will Message is
        // of the format indicated, and if it is not send a CONNACK with the
        // Reason Code of 0x99 (Payload format invalid)".
        let with_will = |payload: &'static [u8]| {
            let mut connect = connect(ProtocolVersion::V5, &id_on(0), true);
            connect.will = Some(crate::protocol::Will {
                topic: crate::protocol::TopicName::new("w").unwrap(),
                payload: bytes::Bytes::from_static(payload),
                qos: crate::protocol::QoS::AtMostOnce,
                retain: false,
                properties: crate::protocol::WillProperties {
                    payload_format_indicator: Some(true),
                    ..Default::default()
                },
            });
            connect
        };
        let mut shard = shard();
        let refused = shard.place(Instant::now(), &with_will(b"\xff"), None);
        assert_eq!(refused, Placement::Refused(ReasonCode::PayloadFormatInvalid));
        let accepted = shard.place(Instant::now(), &with_will("adiós".as_bytes()), None);
        assert!(matches!(accepted, Placement::Attached { .. }), "{accepted:?}");
    }

    #[test]
    fn a_will_to_retain_without_retain_available_gets_connack_0x9a_mqtt_3_2_2_13() {
        // [MQTT-3.2.2-13] "If a Server receives a CONNECT packet containing
        // a Will Message with the Will Retain set to 1, and it does not
        // support retained messages, the Server MUST reject the connection
        // request. It SHOULD send CONNACK with Reason Code 0x9A (Retain not
        // supported) and then it MUST close the Network Connection."
        let with_will = |retain| {
            let mut connect = connect(ProtocolVersion::V5, &id_on(0), true);
            connect.will = Some(crate::protocol::Will {
                topic: crate::protocol::TopicName::new("w").unwrap(),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: crate::protocol::QoS::AtMostOnce,
                retain,
                properties: Default::default(),
            });
            connect
        };
        let outbox = Rc::new(Outbox::new(2));
        let limits = SessionLimits { retain_available: false, ..SessionLimits::default() };
        let mut off = Shard::new(ShardId::from_index(0).unwrap(), 2, limits, outbox, 1);
        let refused = off.place(Instant::now(), &with_will(true), None);
        assert_eq!(refused, Placement::Refused(ReasonCode::RetainNotSupported));
        let accepted = off.place(Instant::now(), &with_will(false), None);
        assert!(matches!(accepted, Placement::Attached { .. }), "{accepted:?}");
        // Served as usual where retained messages are available.
        let mut on = shard();
        let accepted = on.place(Instant::now(), &with_will(true), None);
        assert!(matches!(accepted, Placement::Attached { .. }), "{accepted:?}");
    }

    /// The race a reload of `password_file` opens: a CONNECT whose
    /// password was checked against the old file, placed after this
    /// shard's tick closed its user's connections, must not stay connected
    /// on credentials the new file refuses. It gets CONNACK 0x86 Bad User
    /// Name or Password (3.1.1: return code 4) and the connection closes
    /// [MQTT-3.2.2-7] ([MQTT-3.2.2-5] in 3.1.1), as the same CONNECT sent
    /// after the reload would.
    #[test]
    fn a_connect_checked_before_a_reload_that_revoked_its_user_is_refused() {
        use crate::auth::pool::Verifier;
        use crate::auth::PasswordFile;
        use futures_lite::future::block_on;
        let mut old = PasswordFile::default();
        old.set_password("alice", b"old").unwrap();
        old.set_password("bob", b"bob").unwrap();
        let verifier = std::sync::Arc::new(Verifier::start(old.clone(), 1, 4).unwrap());
        let mut shard = shard();
        shard.set_verifier(Some(std::sync::Arc::clone(&verifier)));
        let check = |user, password: &[u8]| block_on(verifier.verify(user, password).unwrap());
        let as_user = |version, client_id: &str, user: &str| {
            let mut connect = connect(version, client_id, true);
            connect.username = Some(user.into());
            connect
        };
        let now = Instant::now();
        // Alice is connected; nothing was reloaded since her check.
        let first = as_user(ProtocolVersion::V5, &id_on(0), "alice");
        let placed = shard.place(now, &first, check("alice", b"old"));
        assert!(matches!(placed, Placement::Attached { .. }), "{placed:?}");
        // Her next CONNECT (and bob's) passes the check against the old file...
        let racing = check("alice", b"old");
        let bob = check("bob", b"bob");
        assert!(racing.is_some() && bob.is_some());
        // ...a reload changes her password...
        let mut new = old.clone();
        new.set_password("alice", b"new").unwrap();
        let changes = old.changes_to(&new);
        verifier.replace(new, changes.revoked);
        // ...this shard's tick closes her connection...
        let (_, users) = verifier.revoked_since(0).unwrap();
        assert_eq!(shard.close_revoked(&users, now), 1);
        // ...and only then is the racing CONNECT placed: refused, whether
        // homed here or (before moving) on the other shard, in 5.0 and 3.1.1.
        let sessions = shard.session_count();
        let bad = Placement::Refused(ReasonCode::BadUserNameOrPassword);
        for (version, home) in [(ProtocolVersion::V5, 0), (ProtocolVersion::V3_1_1, 1)] {
            assert_eq!(shard.place(now, &as_user(version, &id_on(home), "alice"), racing), bad);
        }
        assert_eq!(ReasonCode::BadUserNameOrPassword.to_v3_connect_return_code(), 4);
        assert_eq!(shard.session_count(), sessions, "a refused CONNECT touches no session");
        assert_eq!(shard.net_counters().auth_failed, 2, "counted as failed checks");
        // Bob's user was spared; alice's new password, checked against the
        // new file, is served.
        let placed = shard.place(now, &as_user(ProtocolVersion::V5, &id_on(1), "bob"), bob);
        assert!(matches!(placed, Placement::HandOff(_)), "{placed:?}");
        let again = check("alice", b"new");
        let placed = shard.place(now, &as_user(ProtocolVersion::V5, &id_on(0), "alice"), again);
        assert!(matches!(placed, Placement::Attached { .. }), "{placed:?}");
    }

    #[test]
    fn a_refused_will_payload_is_counted() {
        let mut connect = connect(ProtocolVersion::V5, &id_on(1), true);
        connect.will = Some(crate::protocol::Will {
            topic: crate::protocol::TopicName::new("w").unwrap(),
            payload: bytes::Bytes::from_static(b"\xff"),
            qos: crate::protocol::QoS::AtMostOnce,
            retain: false,
            properties: crate::protocol::WillProperties {
                payload_format_indicator: Some(true),
                ..Default::default()
            },
        });
        let mut shard = shard();
        shard.place(Instant::now(), &connect, None);
        assert_eq!(shard.counters().session.payload_format_invalid, 1);
    }
}
