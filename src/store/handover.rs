//! A persistent session as one node hands it to another (cluster, issue 17
//! item 6), sans-IO: the records a snapshot of the log would hold for it
//! (the messages it references, then its header, subscriptions, in-flight
//! flows, queue and QoS 2 ids; see [`super::sessions`]), framed as in a
//! segment (length, CRC32C, body), one after the other. Reading them back
//! applies them to an empty [`SessionState`] as recovery does.

use super::record::{self, Frame};
use super::sessions::{SessionState, StoredSession};
use super::Record;
use crate::message::wire::Clocks;
use crate::message::Message;
use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use std::sync::Arc;

/// The session number a handed-over session has in its state.
pub const SID: u64 = 1;

/// Why a handed-over session was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoverError {
    /// Damaged or cut short.
    #[error("a damaged record at byte {0}")]
    Torn(usize),
    /// A record that does not decode, or is not a session's.
    #[error("an invalid record at byte {0}")]
    Record(usize),
    /// No session in it.
    #[error("no session")]
    Empty,
}

/// The bytes of `session` and the messages its entries reference. A
/// message that does not encode (at the very limit of MQTT's packet size)
/// is left out, and so are the entries that reference it.
pub fn encode(session: &StoredSession, messages: &HashMap<u64, Arc<Message>>) -> Bytes {
    let clocks = Clocks::read();
    let mut out = BytesMut::new();
    let mut state = SessionState::default();
    state.sessions.insert(SID, session.clone());
    state.messages = messages.clone();
    state.snapshot_records(|record| {
        // On error nothing is appended: the entries of a message left out
        // are dropped when the state is read back (`SessionState::finish`).
        let _ = record::encode(&record, clocks, &mut out);
    });
    out.freeze()
}

/// The state held in `bytes` (made by [`encode`]): one session, numbered
/// [`SID`], and its messages; queued messages whose expiry passed are
/// dropped [MQTT-3.3.2-5].
pub fn decode(bytes: &[u8], now: std::time::Instant) -> Result<SessionState, HandoverError> {
    let clocks = Clocks::read();
    let mut state = SessionState::default();
    let mut at = 0;
    loop {
        match record::frame_at(bytes, at) {
            Frame::Record(body, next) => {
                let record = record::decode(body, clocks).map_err(|_| HandoverError::Record(at))?;
                if matches!(record, Record::RetainSet(_) | Record::RetainDelete(_)) {
                    return Err(HandoverError::Record(at));
                }
                state.apply(record);
                at = next;
            }
            Frame::End => break,
            Frame::Torn => return Err(HandoverError::Torn(at)),
        }
    }
    if state.sessions.len() != 1 {
        return Err(HandoverError::Empty);
    }
    state.finish(now);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        BoxedPublishProperties, PacketId, QoS, SubscriptionOptions, TopicFilter, TopicName,
    };
    use crate::store::{StoredEntry, StoredFlow, StoredSubscription};
    use std::time::{Duration, Instant};

    fn message(payload: &'static [u8], expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new("q/x").unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: BoxedPublishProperties::none(),
            publisher: Some("p".into()),
            expires_at,
        })
    }

    fn entry(mid: u64) -> StoredEntry {
        StoredEntry {
            mid,
            qos: QoS::AtLeastOnce,
            retain: false,
            from_retained: false,
            subscription_ids: Default::default(),
        }
    }

    #[test]
    fn a_session_round_trips_with_its_queue_and_flows_and_drops_what_expired() {
        let now = Instant::now();
        let mut session = StoredSession::new("c".into(), Some(Duration::from_secs(60)));
        let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
        let subscription = StoredSubscription { options, identifier: None };
        session.subscriptions.insert(TopicFilter::new("q/#").unwrap(), subscription);
        session.queue = vec![entry(1), entry(3)];
        session.inflight = vec![
            (PacketId::new(7).unwrap(), StoredFlow::Sent(entry(2))),
            (PacketId::new(8).unwrap(), StoredFlow::Released),
        ];
        session.qos2_in = vec![PacketId::new(9).unwrap()];
        let messages: HashMap<u64, Arc<Message>> = [
            (1, message(b"one", None)),
            (2, message(b"two", None)),
            (3, message(b"gone", Some(now + Duration::from_millis(10)))),
        ]
        .into_iter()
        .collect();
        let bytes = encode(&session, &messages);
        let state = decode(&bytes, now).unwrap();
        assert_eq!(state.sessions[&SID], session);
        assert_eq!(state.messages.len(), 3);
        // [MQTT-3.3.2-5] read later, the expired message is dropped.
        let later = decode(&bytes, now + Duration::from_secs(1)).unwrap();
        assert_eq!(later.sessions[&SID].queue, [entry(1)]);
        // Damage is found.
        let mut damaged = bytes.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(decode(&damaged, now), Err(HandoverError::Torn(_))));
        assert_eq!(decode(&[], now), Err(HandoverError::Empty));
    }
}
