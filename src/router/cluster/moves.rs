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
//! again (the receiver drops what it has already), at most [`ATTEMPTS`]
//! times, then counted as lost (`cluster_session_forward_failed`). The
//! envelope (integers big-endian):
//!
//! ```text
//! u8   envelope version (0x46, 'F')
//! u16  length, then the client id (UTF-8)
//! then, per message: u32 length, then its frame (see `frame`)
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

/// Another node's messages for a session that moved here.
#[derive(Debug)]
pub struct Forwarded {
    /// The session's client id.
    pub client_id: ByteString,
    /// The messages, in the order the old node matched them.
    pub messages: Vec<Arc<Message>>,
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
        if !self.flushing.replace(true) {
            let this = Rc::clone(self);
            tokio::task::spawn_local(async move {
                // The rest of the shards' turn joins the batch.
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
            });
        }
    }

    /// Sends one envelope until the new node answers, or counts its
    /// messages lost.
    async fn send(&self, node: &str, client_id: &str, envelope: Bytes, count: usize) {
        let subject = self.subject(node);
        for attempt in 1..=ATTEMPTS {
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
            let Some((client_id, messages)) = decode(request.payload, Clocks::read()) else {
                BridgeCounters::add(&self.shared.counters.malformed);
                tracing::debug!(subject = %request.subject, "not a forward of ringmq's");
                continue;
            };
            let shard = crate::router::home_shard(client_id.as_bytes(), self.shared.events.len());
            let messages = messages.into_iter().map(Arc::new).collect();
            let forwarded = Forwarded { client_id, messages, reply: request.reply };
            self.shared.events[shard.index()].push_control(FromBridge::Forwarded(forwarded));
        }
    }
}

#[cfg(test)]
impl Forwarded {
    /// Messages forwarded for `client_id`, as the bridge hands them over.
    pub(crate) fn for_tests(client_id: &str, messages: Vec<Arc<Message>>) -> Self {
        Self { client_id: client_id.into(), messages, reply: None }
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
