//! A persistent session as one node hands it to another (cluster, issue 17
//! item 6), sans-IO: the records a snapshot of the log would hold for it
//! (the messages it references, then its header, subscriptions, in-flight
//! flows, queue and QoS 2 ids; see [`super::sessions`]), framed as in a
//! segment (length, CRC32C, body), one after the other. Reading them back
//! applies them to an empty [`SessionState`] as recovery does.
//!
//! Before the records, the messages' cluster ids (`Message::id`, which the
//! log does not keep): `u32 n`, then `n` times `u64 message number, u64
//! id` (big-endian), for the messages that have one; then the ids of the
//! messages the session was given since it last arrived from another node
//! (`u32 m`, `m` times `u64`). The new node recognises other copies of all
//! of them (`shard::state::session_moves`).

use super::record::{self, Frame};
use super::sessions::{SessionState, StoredSession};
use super::Record;
use crate::message::wire::Clocks;
use crate::message::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
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
    /// Cut short in its message ids.
    #[error("cut short in its message ids")]
    Ids,
}

/// The bytes of `session`, the messages its entries reference and the
/// ids of messages it was given lately (`seen`). A message that does not
/// encode (at the very limit of MQTT's packet size) is left out, and so
/// are the entries that reference it.
pub fn encode(
    session: &StoredSession,
    messages: &HashMap<u64, Arc<Message>>,
    seen: &[u64],
) -> Bytes {
    let clocks = Clocks::read();
    let mut out = BytesMut::new();
    let ids: Vec<(u64, u64)> =
        messages.iter().filter(|(_, m)| m.id != 0).map(|(&mid, m)| (mid, m.id)).collect();
    out.put_u32(ids.len() as u32);
    for (mid, id) in ids {
        out.put_u64(mid);
        out.put_u64(id);
    }
    out.put_u32(seen.len() as u32);
    for &id in seen {
        out.put_u64(id);
    }
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
/// [`SID`], and its messages (queued messages whose expiry passed are
/// dropped [MQTT-3.3.2-5]); and the ids of the messages it was given
/// lately.
pub fn decode(
    mut bytes: &[u8],
    now: std::time::Instant,
) -> Result<(SessionState, Vec<u64>), HandoverError> {
    let clocks = Clocks::read();
    if bytes.is_empty() {
        return Err(HandoverError::Empty);
    }
    if bytes.len() < 4 {
        return Err(HandoverError::Ids);
    }
    let count = bytes.get_u32() as usize;
    if bytes.len() / 16 < count {
        return Err(HandoverError::Ids);
    }
    let ids: HashMap<u64, u64> = (0..count).map(|_| (bytes.get_u64(), bytes.get_u64())).collect();
    if bytes.len() < 4 {
        return Err(HandoverError::Ids);
    }
    let count = bytes.get_u32() as usize;
    if bytes.len() / 8 < count {
        return Err(HandoverError::Ids);
    }
    let seen: Vec<u64> = (0..count).map(|_| bytes.get_u64()).collect();
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
    for (mid, message) in state.messages.iter_mut() {
        // Each message was read here: no other reference yet.
        if let (Some(&id), Some(message)) = (ids.get(mid), Arc::get_mut(message)) {
            message.id = id;
        }
    }
    Ok((state, seen))
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
            id: 0,
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
            (2, Arc::new(Message { id: 0xfeed, ..(*message(b"two", None)).clone() })),
            (3, message(b"gone", Some(now + Duration::from_millis(10)))),
        ]
        .into_iter()
        .collect();
        let bytes = encode(&session, &messages, &[41, 42]);
        let (state, seen) = decode(&bytes, now).unwrap();
        assert_eq!(seen, [41, 42], "the ids it was given lately");
        assert_eq!(state.sessions[&SID], session);
        assert_eq!(state.messages.len(), 3);
        let ids: Vec<u64> = (1..=3).map(|mid| state.messages[&mid].id).collect();
        assert_eq!(ids, [0, 0xfeed, 0], "the message ids go with them");
        // [MQTT-3.3.2-5] read later, the expired message is dropped.
        let (later, _) = decode(&bytes, now + Duration::from_secs(1)).unwrap();
        assert_eq!(later.sessions[&SID].queue, [entry(1)]);
        // Damage is found.
        let mut damaged = bytes.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(decode(&damaged, now), Err(HandoverError::Torn(_))));
        assert_eq!(decode(&[], now), Err(HandoverError::Empty));
        assert_eq!(decode(&bytes[..12], now).unwrap_err(), HandoverError::Ids, "cut in the ids");
    }
}
