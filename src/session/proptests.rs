//! Property test: whatever the sequence of deliveries, acknowledgements
//! (right or wrong: a wrong one for an id in flight closes the connection),
//! transmissions and reconnections, the session never has
//! more than `max_inflight` unacknowledged publishes, never exceeds its queue
//! limits, never reuses a packet id still in flight [MQTT-2.3.1-2], and
//! re-sends only what is in flight.

use super::*;
use crate::protocol::{ConnectProperties, PacketId, SubscriptionOptions, TopicName};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::num::NonZeroU16;

#[derive(Clone, Debug)]
enum Op {
    Deliver {
        qos: u8,
        subscription_qos: u8,
        payload_len: usize,
    },
    Transmit,
    /// The right acknowledgement for the `pick`-th id in flight.
    Ack {
        pick: usize,
    },
    /// Any acknowledgement for any id.
    RandomAck {
        kind: u8,
        id: u16,
    },
    ConnectionLost,
    Connect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..3u8, 0..24usize).prop_map(|(qos, subscription_qos, payload_len)| {
            Op::Deliver { qos, subscription_qos, payload_len }
        }),
        3 => Just(Op::Transmit),
        3 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => (0..3u8, 1..12u16).prop_map(|(kind, id)| Op::RandomAck { kind, id }),
        1 => Just(Op::ConnectionLost),
        1 => Just(Op::Connect),
    ]
}

/// The acknowledgement the client owes for a packet id it was sent, as the
/// `kind` of [`ack_packet`].
const OWES_PUBACK: u8 = 0;
const OWES_PUBREC: u8 = 1;
const OWES_PUBCOMP: u8 = 2;

fn qos(value: u8) -> QoS {
    QoS::from_u8(value).expect("generated QoS is 0..3")
}

fn connect() -> Connect {
    Connect {
        version: ProtocolVersion::V3_1_1,
        clean_start: false,
        keep_alive: 0,
        client_id: ByteString::from_static("c1"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// The acknowledgement packet of `kind` (0 PUBACK, 1 PUBREC, 2 PUBCOMP).
fn ack_packet(kind: u8, id: PacketId) -> Packet {
    let response = PubResponse::new(id);
    match kind {
        0 => Packet::PubAck(response),
        1 => Packet::PubRec(response),
        _ => Packet::PubComp(response),
    }
}

/// How the client's view changes when it sends that acknowledgement.
fn apply_ack(model: &mut BTreeMap<u16, u8>, kind: u8, id: u16) {
    match (kind, model.get(&id)) {
        (OWES_PUBACK, Some(&OWES_PUBACK)) | (OWES_PUBCOMP, Some(&OWES_PUBCOMP)) => {
            model.remove(&id);
        }
        (OWES_PUBREC, Some(&OWES_PUBREC)) => {
            model.insert(id, OWES_PUBCOMP);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn window_queue_limits_and_packet_ids_hold(
        max_inflight in 1..6u16,
        max_queued_messages in 1..8usize,
        max_queued_bytes in 1..64usize,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let limits = SessionLimits {
            max_inflight: NonZeroU16::new(max_inflight).unwrap(),
            max_queued_messages,
            max_queued_bytes,
            ..SessionLimits::default()
        };
        let t0 = Instant::now();
        let mut session = Session::new(ByteString::from_static("c1"), limits);
        let mut counters = SessionCounters::default();
        session.handle_connect(t0, &connect(), false, &mut counters);
        let mut connected = true;
        let mut model: BTreeMap<u16, u8> = BTreeMap::new();

        for op in ops {
            match op {
                Op::Deliver { qos: message_qos, subscription_qos, payload_len } => {
                    let message = Arc::new(Message {
                        topic: TopicName::new("t").unwrap(),
                        payload: Bytes::from(vec![0u8; payload_len]),
                        qos: qos(message_qos),
                        retain: false,
                        properties: BoxedPublishProperties::none(),
                        publisher: None,
                        expires_at: None,
                        id: 0,
                    });
                    let delivery = Delivery {
                        message,
                        options: SubscriptionOptions {
                            qos: qos(subscription_qos),
                            ..SubscriptionOptions::default()
                        },
                        subscription_ids: SmallVec::new(),
                        from_retained: false,
                        log_id: 0,
                    };
                    let effective = qos(message_qos).min(qos(subscription_qos));
                    let before = counters.dropped_queue_full;
                    let outcome = session.handle_delivery(t0, delivery, &mut counters);
                    if effective != QoS::AtMostOnce && connected {
                        // design.md: never acknowledged and then dropped.
                        prop_assert!(
                            matches!(outcome, DeliveryOutcome::Queued | DeliveryOutcome::OverLimit),
                            "{:?}", outcome
                        );
                        prop_assert_eq!(counters.dropped_queue_full, before);
                    } else {
                        prop_assert!(outcome != DeliveryOutcome::OverLimit);
                    }
                }
                Op::Transmit => {
                    while let Some(packet) = session.poll_packet(t0, &mut counters) {
                        match packet {
                            Packet::Publish(publish) => {
                                let Some(id) = publish.packet_id else {
                                    prop_assert_eq!(publish.qos, QoS::AtMostOnce);
                                    continue;
                                };
                                let id = id.get();
                                let expected = match publish.qos {
                                    QoS::AtLeastOnce => OWES_PUBACK,
                                    _ => OWES_PUBREC,
                                };
                                if publish.dup {
                                    prop_assert_eq!(model.get(&id), Some(&expected), "re-sent id {}", id);
                                } else {
                                    prop_assert!(!model.contains_key(&id), "id {} reused in flight", id);
                                    model.insert(id, expected);
                                }
                            }
                            Packet::PubRel(response) => {
                                let id = response.packet_id.get();
                                prop_assert_eq!(model.get(&id), Some(&OWES_PUBCOMP));
                            }
                            Packet::ConnAck(_) => {}
                            other => prop_assert!(false, "unexpected {:?}", other.packet_type()),
                        }
                    }
                }
                Op::Ack { pick } => {
                    if connected && !model.is_empty() {
                        let (&id, &kind) = model.iter().nth(pick % model.len()).unwrap();
                        let packet = ack_packet(kind, PacketId::new(id).unwrap());
                        prop_assert_eq!(session.handle_packet(t0, packet, &mut counters), Ok(()));
                        apply_ack(&mut model, kind, id);
                    }
                }
                Op::RandomAck { kind, id } => {
                    let result = session.handle_packet(t0, ack_packet(kind, PacketId::new(id).unwrap()), &mut counters);
                    match model.get(&id) {
                        _ if !connected => {
                            prop_assert_eq!(result, Err(SessionError::NotConnected));
                        }
                        // Not in flight, the right acknowledgement, or a
                        // repeated PUBREC for a PUBREL: accepted.
                        None => prop_assert_eq!(result, Ok(())),
                        Some(&owed) if owed == kind || (owed, kind) == (OWES_PUBCOMP, OWES_PUBREC) => {
                            prop_assert_eq!(result, Ok(()));
                            apply_ack(&mut model, kind, id);
                        }
                        // [MQTT-4.8.0-1] the wrong kind closes the connection.
                        Some(_) => {
                            prop_assert!(
                                matches!(result, Err(SessionError::WrongAcknowledgement { .. })),
                                "{:?}", result
                            );
                            connected = false;
                        }
                    }
                }
                Op::ConnectionLost => {
                    session.handle_connection_lost(t0, &mut counters);
                    connected = false;
                }
                Op::Connect => {
                    session.handle_connect(t0, &connect(), true, &mut counters);
                    connected = true;
                }
            }
            prop_assert_eq!(session.inflight_len(), model.len());
            prop_assert!(session.inflight_len() <= usize::from(max_inflight));
            // The queue limits hold for a session without a connection;
            // a connected one goes past them with QoS 1/2 messages only
            // (never dropped, its publishers slowed instead), and is cut
            // back to them when its connection goes.
            if !session.is_connected() {
                prop_assert!(session.queued_len() <= max_queued_messages);
                prop_assert!(
                    session.queued_bytes() <= max_queued_bytes || session.queued_len() == 1,
                    "{} bytes queued in {} messages", session.queued_bytes(), session.queued_len()
                );
            }
            prop_assert!(session.is_connected() == connected);
            while let Some(event) = session.poll_event() {
                prop_assert!(matches!(event, SessionEvent::Closed(_)), "{:?}", event);
            }
        }
    }
}
