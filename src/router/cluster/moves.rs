//! What a node sends on for a session that moved away (issue 17 item 6:
//! "no message lost or duplicated beyond what its QoS allows").
//!
//! When a node hands a persistent session over to the node its client
//! reconnected to, other nodes may still send it what matches the
//! session's subscriptions for a while: their directories name this node
//! until the new node's interest reaches them, and messages already on
//! their way arrive after the session left. So the old node keeps the
//! session's subscriptions for `cluster.node_timeout_ms` as a *forwarder*
//! (`shard::state::session_moves`): what matches them is sent here, to the
//! new node, which queues it for the session. Copies that reach the
//! session twice (straight and forwarded) carry the same `Message::id`,
//! and the new node drops the second one.
//!
//! On NATS, a batch of one session's messages is a request to
//! `{prefix}.session.{node_id}.fwd`, answered (empty) once the new node's
//! shard queued them; not answered within [`ATTEMPT_TIMEOUT`], it is sent
//! again (the receiver drops what it has already; counted in
//! `cluster_session_forward_resent`: what the new node had not received
//! may then reach the session after later messages), at most
//! [`ATTEMPTS`] times, then counted as lost
//! (`cluster_session_forward_failed`). The
//! envelope (integers big-endian):
//!
//! ```text
//! u8   envelope version (0x46, 'F')
//! u16  length, then the client id (UTF-8)
//! then, per message: u32 length, then its frame (see `frame`)
//! ```
//!
//! When the forwarder goes (its time is up, or the session came back), the
//! old node says so on the same subject, after the forwards before it and
//! without an answer: the new node then stops holding back what reached
//! the session straight (see `shard::state::session_moves`, "In order").
//!
//! ```text
//! u8   envelope version (0x43, 'C')
//! u16  length, then the client id (UTF-8)
//! u8   length, then the node id of the forwarder's node (UTF-8)
//! ```

use super::frame;
use super::{BridgeCounters, FromBridge, Shared};
use crate::message::wire::Clocks;
use crate::message::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use futures_lite::StreamExt;
use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const VERSION: u8 = 0x46;

const CLOSED_VERSION: u8 = 0x43;

/// How long one attempt waits for the new node's answer.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts before a batch counts as lost.
pub(super) const ATTEMPTS: usize = 3;

/// The largest envelope built (several when a batch is larger), well
/// under NATS's default max_payload (1 MiB).
const ENVELOPE_BYTES: usize = 256 * 1024;

/// A session's message for the node it moved to, from a shard.
#[derive(Debug)]
pub(super) struct Forward {
    /// The node the session moved to (its `node_id`).
    pub(super) node: ByteString,
    /// The session's client id.
    pub(super) client_id: ByteString,
    pub(super) message: Arc<Message>,
}

/// Another node's messages for a session that moved here, or the end of
/// its forwarder.
#[derive(Debug)]
pub struct Forwarded {
    /// The session's client id.
    pub client_id: ByteString,
    /// The messages, in the order the old node matched them.
    pub messages: Vec<Arc<Message>>,
    /// The node whose forwarder for the session went (a 'C' envelope, with
    /// no messages); it sends nothing more.
    pub closed_by: Option<ByteString>,
    /// Where the answer goes ([`super::ClusterLink::answer_forwarded`]).
    pub(super) reply: Option<async_nats::Subject>,
}

/// The envelopes of `messages` for `client_id`: each at most
/// [`ENVELOPE_BYTES`] unless one message alone is larger. Messages that do
/// not encode (at the limit of MQTT's packet size) are left out and
/// counted by the caller from the returned number.
pub(super) fn encode(
    origin: u64,
    client_id: &str,
    messages: &[Arc<Message>],
    clocks: Clocks,
) -> (Vec<(Bytes, usize)>, usize) {
    let mut envelopes = Vec::new();
    let (mut out, mut count, mut failed) = (BytesMut::new(), 0, 0);
    let mut frame = BytesMut::new();
    for message in messages {
        frame.clear();
        if frame::encode(origin, 0, message, clocks, &mut frame).is_err() {
            failed += 1;
            continue;
        }
        if count > 0 && out.len() + 4 + frame.len() > ENVELOPE_BYTES {
            envelopes.push((std::mem::take(&mut out).freeze(), count));
            count = 0;
        }
        if count == 0 {
            out.put_u8(VERSION);
            // A client id is at most 65535 bytes (an MQTT string).
            out.put_u16(client_id.len() as u16);
            out.put_slice(client_id.as_bytes());
        }
        out.put_u32(frame.len() as u32);
        out.put_slice(&frame);
        count += 1;
    }
    if count > 0 {
        envelopes.push((out.freeze(), count));
    }
    (envelopes, failed)
}

/// The client id and messages of an envelope; `None` when malformed.
pub(super) fn decode(mut envelope: Bytes, clocks: Clocks) -> Option<(ByteString, Vec<Message>)> {
    if envelope.len() < 3 || envelope[0] != VERSION {
        return None;
    }
    envelope.advance(1);
    let len = usize::from(envelope.get_u16());
    if envelope.len() < len {
        return None;
    }
    let client_id = ByteString::try_from(envelope.split_to(len)).ok()?;
    let mut messages = Vec::new();
    while !envelope.is_empty() {
        if envelope.len() < 4 {
            return None;
        }
        let len = envelope.get_u32() as usize;
        if envelope.len() < len {
            return None;
        }
        let (_, _, message) = frame::decode(envelope.split_to(len), clocks).ok()?;
        messages.push(message);
    }
    Some((client_id, messages))
}

/// The envelope that says `node`'s forwarder for `client_id` went; a node
/// id is at most 64 bytes (`config::cluster` checks it).
pub(super) fn encode_closed(client_id: &str, node: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + client_id.len() + node.len());
    out.put_u8(CLOSED_VERSION);
    out.put_u16(client_id.len() as u16);
    out.put_slice(client_id.as_bytes());
    out.put_u8(node.len() as u8);
    out.put_slice(node.as_bytes());
    out.freeze()
}

/// The client id and node of a 'C' envelope; `None` when malformed.
fn decode_closed(mut envelope: Bytes) -> Option<(ByteString, ByteString)> {
    if envelope.len() < 3 || envelope[0] != CLOSED_VERSION {
        return None;
    }
    envelope.advance(1);
    let len = usize::from(envelope.get_u16());
    if envelope.len() < len + 1 {
        return None;
    }
    let client_id = ByteString::try_from(envelope.split_to(len)).ok()?;
    let len = usize::from(envelope.get_u8());
    if envelope.len() != len {
        return None;
    }
    Some((client_id, ByteString::try_from(envelope).ok()?))
}

/// A forwarded envelope as the shards take it; `None` when malformed.
fn decode_any(envelope: Bytes, reply: Option<async_nats::Subject>) -> Option<Forwarded> {
    if envelope.first() == Some(&CLOSED_VERSION) {
        let (client_id, node) = decode_closed(envelope)?;
        return Some(Forwarded { client_id, messages: Vec::new(), closed_by: Some(node), reply });
    }
    let (client_id, messages) = decode(envelope, Clocks::read())?;
    let messages = messages.into_iter().map(Arc::new).collect();
    Some(Forwarded { client_id, messages, closed_by: None, reply })
}

/// Where forwards go: the node, and the client id of the session.
type Destination = (ByteString, ByteString);

/// The bridge's side: batches the shards' forwards per session and sends
/// them; hands the forwards other nodes send here to the shards.
pub(super) struct Forwarder {
    client: async_nats::Client,
    prefix: String,
    node: String,
    origin: u64,
    shared: Arc<Shared>,
    /// What the shards handed over since the last flush, per (node,
    /// client id), in order.
    pending: RefCell<HashMap<Destination, Vec<Arc<Message>>>>,
    /// Forwarders that went since the last flush: said after the forwards.
    closed: RefCell<Vec<Destination>>,
    /// A flush is spawned.
    flushing: Cell<bool>,
}

impl Forwarder {
    pub(super) fn new(
        client: async_nats::Client,
        prefix: &str,
        node: &str,
        origin: u64,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            origin,
            shared,
            pending: RefCell::default(),
            closed: RefCell::default(),
            flushing: Cell::new(false),
        }
    }

    fn subject(&self, node: &str) -> String {
        format!("{}.session.{node}.fwd", self.prefix)
    }

    /// Takes a shard's forward; sent with the others of the same turn.
    pub(super) fn push(self: &Rc<Self>, forward: Forward) {
        let Forward { node, client_id, message } = forward;
        self.pending.borrow_mut().entry((node, client_id)).or_default().push(message);
        self.flush_soon();
    }

    /// A shard's forwarder for `client_id`, which sent to `node`, went.
    pub(super) fn close(self: &Rc<Self>, node: ByteString, client_id: ByteString) {
        self.closed.borrow_mut().push((node, client_id));
        self.flush_soon();
    }

    /// Sends what the shards handed over, once the rest of their turn
    /// joined it: the forwards, then the ends of forwarders (each task's
    /// first attempt goes out in the order they were spawned).
    fn flush_soon(self: &Rc<Self>) {
        if self.flushing.replace(true) {
            return;
        }
        let this = Rc::clone(self);
        tokio::task::spawn_local(async move {
            tokio::task::yield_now().await;
            this.flushing.set(false);
            let batches = std::mem::take(&mut *this.pending.borrow_mut());
            for ((node, client_id), messages) in batches {
                let (envelopes, failed) =
                    encode(this.origin, &client_id, &messages, Clocks::read());
                this.count_failed(failed, &client_id, &node);
                for (envelope, count) in envelopes {
                    let this = Rc::clone(&this);
                    let (node, client_id) = (node.clone(), client_id.clone());
                    tokio::task::spawn_local(async move {
                        this.send(&node, &client_id, envelope, count).await;
                    });
                }
            }
            for (node, client_id) in std::mem::take(&mut *this.closed.borrow_mut()) {
                let this = Rc::clone(&this);
                tokio::task::spawn_local(async move {
                    let envelope = encode_closed(&client_id, &this.node);
                    // Not answered: without it the new node stops holding
                    // back at its own deadline.
                    let _ = this.client.publish(this.subject(&node), envelope).await;
                });
            }
        });
    }

    /// Sends one envelope until the new node answers, or counts its
    /// messages lost.
    async fn send(&self, node: &str, client_id: &str, envelope: Bytes, count: usize) {
        let subject = self.subject(node);
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                let counter = &self.shared.counters.session_forward_resent;
                counter.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let request = self.client.request(subject.clone(), envelope.clone());
            match tokio::time::timeout(ATTEMPT_TIMEOUT, request).await {
                Ok(Ok(_)) => {
                    let counter = &self.shared.counters.session_forwarded;
                    counter.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                // No responders (the node is gone) or a timeout: again,
                // after a pause when the answer was immediate.
                Ok(Err(_)) if attempt < ATTEMPTS => tokio::time::sleep(ATTEMPT_TIMEOUT / 4).await,
                _ => {}
            }
        }
        self.count_failed(count, client_id, node);
    }

    fn count_failed(&self, count: usize, client_id: &str, node: &str) {
        if count == 0 {
            return;
        }
        let counter = &self.shared.counters.session_forward_failed;
        counter.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            client_id,
            node,
            messages = count,
            "messages for a session that moved to another node could not be sent on to it: lost"
        );
    }

    /// Serves the forwards other nodes send here, until the bridge stops:
    /// each goes to the home shard of its client id.
    pub(super) async fn serve(self: Rc<Self>) {
        let mut requests = match self.client.subscribe(self.subject(&self.node)).await {
            Ok(requests) => requests,
            Err(error) => return tracing::warn!(%error, "cannot receive forwarded messages"),
        };
        while let Some(request) = requests.next().await {
            let Some(forwarded) = decode_any(request.payload, request.reply) else {
                BridgeCounters::add(&self.shared.counters.malformed);
                tracing::debug!(subject = %request.subject, "not a forward of ringmq's");
                continue;
            };
            let client_id = forwarded.client_id.as_bytes();
            let shard = crate::router::home_shard(client_id, self.shared.events.len());
            self.shared.events[shard.index()].push_control(FromBridge::Forwarded(forwarded));
        }
    }
}

#[cfg(test)]
impl Forwarded {
    /// Messages forwarded for `client_id`, as the bridge hands them over.
    pub(crate) fn for_tests(client_id: &str, messages: Vec<Arc<Message>>) -> Self {
        Self { client_id: client_id.into(), messages, closed_by: None, reply: None }
    }

    /// The end of `node`'s forwarder for `client_id`.
    pub(crate) fn closed_for_tests(client_id: &str, node: &str) -> Self {
        Self {
            client_id: client_id.into(),
            messages: Vec::new(),
            closed_by: Some(node.into()),
            reply: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QoS, TopicName};

    fn message(topic: &str, id: u64, payload: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(vec![7; payload]),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
            publisher: Some("p".into()),
            expires_at: None,
            id,
        })
    }

    #[test]
    fn an_envelope_round_trips_with_the_ids() {
        let clocks = Clocks::read();
        let messages = [message("a/1", 11, 3), message("a/2", 12, 0)];
        let (envelopes, failed) = encode(5, "mover", &messages, clocks);
        assert_eq!(failed, 0);
        let [(envelope, 2)] = &envelopes[..] else { panic!("one envelope: {envelopes:?}") };
        let (client_id, back) = decode(envelope.clone(), clocks).unwrap();
        assert_eq!(client_id, "mover");
        let back: Vec<_> = back.into_iter().map(Arc::new).collect();
        assert_eq!(back, messages);
        assert!(decode(envelope.slice(..envelope.len() - 1), clocks).is_none(), "cut short");
        assert!(decode(envelope.slice(..4), clocks).is_none(), "cut in the client id");
        assert!(decode(Bytes::from_static(&[0x47, 0, 0]), clocks).is_none(), "not an 'F'");
    }

    #[test]
    fn the_end_of_a_forwarder_round_trips_and_is_told_from_a_forward() {
        let envelope = encode_closed("mover/é", "node-a");
        let closed = decode_any(envelope.clone(), None).unwrap();
        assert_eq!(closed.client_id, "mover/é");
        assert_eq!(closed.closed_by.as_deref(), Some("node-a"));
        assert!(closed.messages.is_empty());
        for cut in 1..envelope.len() {
            assert!(decode_any(envelope.slice(..cut), None).is_none(), "cut at {cut}");
        }
        let mut longer = envelope.to_vec();
        longer.push(b'x');
        assert!(decode_any(longer.into(), None).is_none(), "trailing bytes");
        let clocks = Clocks::read();
        let (forwards, _) = encode(5, "mover", &[message("a/1", 11, 3)], clocks);
        let forward = decode_any(forwards[0].0.clone(), None).unwrap();
        assert_eq!((forward.closed_by, forward.messages.len()), (None, 1));
    }

    #[test]
    fn a_large_batch_is_split_and_a_lone_large_message_goes_alone() {
        let clocks = Clocks::read();
        let messages: Vec<_> = (0..5).map(|i| message("big", i + 1, ENVELOPE_BYTES / 3)).collect();
        let (envelopes, _) = encode(5, "c", &messages, clocks);
        let counts: Vec<usize> = envelopes.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [2, 2, 1]);
        let ids: Vec<u64> = envelopes
            .iter()
            .flat_map(|(e, _)| decode(e.clone(), clocks).unwrap().1)
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5], "all of them, in order");
        let (envelopes, _) = encode(5, "c", &[message("huge", 9, ENVELOPE_BYTES * 2)], clocks);
        assert_eq!(envelopes.len(), 1);
    }
}
