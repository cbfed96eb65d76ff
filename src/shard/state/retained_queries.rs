//! Retained messages for a new subscription when the topic's owner is
//! another shard, or a publish races the subscription: each matching
//! retained message reaches the subscriber exactly once, as the retained
//! message of its subscription or as a live publish [MQTT-3.3.1-6] ("When a
//! new subscription is established, the last retained message, if any, on
//! each matching topic name MUST be sent to the subscriber").
//!
//! A publisher shard P sends a retained message live to the subscriber's
//! shard S only once it has applied S's interest, and its `Retain` to the
//! topic's owner O on another channel. Three steps close the races:
//!
//! 1. S asks the owners (itself included) only once every peer has
//!    acknowledged the interest revision of the subscription: whatever a
//!    peer published before it applied the interest was sent to its owner
//!    before that acknowledgement; whatever it publishes after comes live.
//! 2. An owner O answers a query only after a flush round with its peers:
//!    each answers `RetainedFlushed` behind the `Retain`s it sent O before,
//!    so O has stored them when it looks. With two shards the only peer is
//!    the asker, whose channel carried its `Retain`s before the query: no
//!    round.
//! 3. A message published after a peer applied the interest may come both
//!    live and in an answer. While the request is open, S notes the
//!    retained-flagged messages the subscriber got live on the
//!    subscription's topics and leaves them out of the answers (same topic
//!    and payload: what the retained copy would have told it). An answer
//!    from another shard can overtake the live copy, which travels on the
//!    publisher's channel: with three shards or more S holds such answers
//!    for a flush round of its own, after which every live copy sent before
//!    the answer was made has arrived (the publisher sent it before it
//!    answered the owner's round, and answers S's round after that). With
//!    two shards the owner is the publisher: one channel, live first.
//!
//! One flush round at a time per shard, serving the queries and answers
//! that wait for one; those that come meanwhile wait for the next, so a
//! subscribe storm costs a round per round trip, not per subscription.

use super::Shard;
use crate::message::Message;
use crate::protocol::{TopicFilter, TopicName};
use crate::router::{RetainedReplyTo, ShardId, ShardMessage};
use crate::shard::slots::SessionKey;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Live copies noted per session at most while its requests are open:
/// past it a racing publish may arrive twice (live and retained), never not
/// at all.
const MAX_LIVE_NOTED: usize = 256;

/// A shard's retained queries: those it asks as a subscriber's shard and
/// those it answers as an owner.
#[derive(Debug, Default)]
pub(super) struct RetainedQueries {
    /// Requests waiting for every peer to acknowledge an interest revision
    /// (step 1): the revision and the request, in revision order.
    waiting: VecDeque<(u64, u64)>,
    /// This shard's open requests, by id.
    requests: hashbrown::HashMap<u64, Request>,
    /// What each session with open requests got live meanwhile (step 3):
    /// one entry per session, however many requests a subscribe storm
    /// opens, so a publish and a close cost the same for any number.
    live: hashbrown::HashMap<SessionKey, Live>,
    next_request: u64,
    /// Queries from peers waiting for the next flush round (step 2).
    queued: Vec<(TopicFilter, RetainedReplyTo)>,
    /// Requests answered by every owner, whose answers from other shards
    /// wait for the next flush round (step 3).
    answered: Vec<u64>,
    /// The flush round in flight.
    round: Option<Round>,
    next_round: u64,
}

/// A new subscription's request for retained messages (steps 1 and 3).
#[derive(Debug)]
struct Request {
    key: SessionKey,
    filter: TopicFilter,
    reply_to: RetainedReplyTo,
    /// The shards owning the topics the filter can match.
    owners: Vec<ShardId>,
    /// Owners that have not answered yet.
    unanswered: usize,
    /// What other shards answered, held for a flush round (step 3).
    answers: Vec<Arc<Message>>,
}

/// The retained-flagged messages a session got live while it had open
/// requests.
#[derive(Debug, Default)]
struct Live {
    /// Its open requests.
    open: usize,
    /// Each message with the number the next request would have got when
    /// it came: it came after the requests numbered below that.
    notes: Vec<(u64, TopicName, Bytes)>,
}

/// A flush round: for the queries this shard answers as an owner (step 2)
/// and the answers it holds as a subscriber's shard (step 3).
#[derive(Debug)]
struct Round {
    number: u64,
    /// Peers that have not answered yet.
    unanswered: usize,
    /// The queries it answers.
    queries: Vec<(TopicFilter, RetainedReplyTo)>,
    /// The requests whose held answers it releases.
    answered: Vec<u64>,
}

impl RetainedQueries {
    /// Whether any request is open (the publish path's one check).
    pub(super) fn is_asking(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Notes that `key` got the retained-flagged `message` live, if it has
    /// open requests (step 3).
    pub(super) fn note_live(&mut self, key: SessionKey, message: &Message) {
        let Some(live) = self.live.get_mut(&key) else { return };
        if live.notes.len() < MAX_LIVE_NOTED {
            live.notes.push((self.next_request, message.topic.clone(), message.payload.clone()));
        }
    }

    /// Whether the subscriber of request `id` got `message` live since the
    /// request opened.
    fn got_live(&self, id: u64, key: SessionKey, message: &Message) -> bool {
        self.live.get(&key).is_some_and(|live| {
            live.notes.iter().any(|(after, topic, payload)| {
                *after > id && *topic == message.topic && *payload == message.payload
            })
        })
    }

    /// Opens a request; returns its id.
    fn open(&mut self, request: Request) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.live.entry(request.key).or_default().open += 1;
        self.requests.insert(id, request);
        id
    }

    /// Closes request `id`, answered by every owner.
    fn close(&mut self, id: u64) {
        let Some(request) = self.requests.remove(&id) else { return };
        if let hashbrown::hash_map::Entry::Occupied(mut live) = self.live.entry(request.key) {
            live.get_mut().open -= 1;
            if live.get().open == 0 {
                live.remove();
            }
        }
        // The last one closed: the tables go too. A table keeps its room
        // after removals, and requests come and go with ever new ids: kept,
        // it could grow past the most ever open at once.
        if self.requests.is_empty() {
            self.requests = Default::default();
            self.live = Default::default();
        }
    }
}

impl Shard {
    /// Asks `owners` for the retained messages matching the new
    /// subscription of `key` once every peer has acknowledged the current
    /// interest revision (step 1).
    pub(super) fn ask_retained(
        &mut self,
        key: SessionKey,
        filter: TopicFilter,
        mut reply_to: RetainedReplyTo,
        owners: Vec<ShardId>,
        now: Instant,
    ) {
        let queries = &mut self.retained_queries;
        reply_to.request = queries.next_request;
        let unanswered = owners.len();
        let answers = Vec::new();
        let id = queries.open(Request { key, filter, reply_to, owners, unanswered, answers });
        queries.waiting.push_back((self.interest.revision(), id));
        self.ask_acknowledged_retained(now);
    }

    /// Sends the requests whose interest every peer has now acknowledged.
    pub(super) fn ask_acknowledged_retained(&mut self, now: Instant) {
        let acked = self.interest.acked_by_all();
        while let Some(&(revision, id)) = self.retained_queries.waiting.front() {
            if revision > acked {
                break;
            }
            self.retained_queries.waiting.pop_front();
            let Some(request) = self.retained_queries.requests.get(&id) else { continue };
            let (filter, reply_to) = (request.filter.clone(), request.reply_to.clone());
            for owner in request.owners.clone() {
                if owner == self.id {
                    // Peers' `Retain`s for this shard came before their
                    // acknowledgements, on the same channels: no round.
                    let messages = self.retained_matching(&filter, now);
                    self.deliver_retained_request(id, &messages, now);
                    self.answer_received(id, now);
                } else {
                    let query = ShardMessage::RetainedQuery {
                        filter: filter.clone(),
                        reply_to: reply_to.clone(),
                    };
                    self.outbox.push(owner, query);
                }
            }
        }
    }

    /// A query from a subscriber's shard, answered after a flush round
    /// (step 2).
    pub(super) fn handle_retained_query(
        &mut self,
        filter: TopicFilter,
        reply_to: RetainedReplyTo,
        now: Instant,
    ) {
        if self.nr_shards <= 2 {
            self.answer_retained_query(&filter, reply_to, now);
            return;
        }
        self.retained_queries.queued.push((filter, reply_to));
        self.start_flush_round();
    }

    /// Starts a flush round for the queued queries and answers unless one
    /// is in flight.
    fn start_flush_round(&mut self) {
        let queries = &mut self.retained_queries;
        if queries.round.is_some() || (queries.queued.is_empty() && queries.answered.is_empty()) {
            return;
        }
        let number = queries.next_round;
        queries.next_round += 1;
        let round = Round {
            number,
            unanswered: self.nr_shards - 1,
            queries: std::mem::take(&mut queries.queued),
            answered: std::mem::take(&mut queries.answered),
        };
        queries.round = Some(round);
        // Every peer: an asker needs none for its own query, but one round
        // serves any mix of askers and answers.
        for peer in (0..self.nr_shards).filter_map(ShardId::from_index) {
            if peer != self.id {
                self.outbox.push(peer, ShardMessage::RetainedFlush { round: number });
            }
        }
    }

    /// A peer sent everything it sent before `round` (step 2).
    pub(super) fn handle_retained_flushed(&mut self, round: u64, now: Instant) {
        let Some(current) = self.retained_queries.round.as_mut() else { return };
        if current.number != round {
            return;
        }
        current.unanswered -= 1;
        if current.unanswered > 0 {
            return;
        }
        let Some(done) = self.retained_queries.round.take() else { return };
        for (filter, reply_to) in done.queries {
            self.answer_retained_query(&filter, reply_to, now);
        }
        for id in done.answered {
            let answers =
                self.retained_queries.requests.get_mut(&id).map(|r| std::mem::take(&mut r.answers));
            self.deliver_retained_request(id, &answers.unwrap_or_default(), now);
            self.retained_queries.close(id);
        }
        self.start_flush_round();
    }

    /// Answers a query, even with nothing: the asker counts the answers.
    fn answer_retained_query(
        &mut self,
        filter: &TopicFilter,
        reply_to: RetainedReplyTo,
        now: Instant,
    ) {
        let messages = self.retained_matching(filter, now);
        let shard = reply_to.shard;
        self.outbox.push(shard, ShardMessage::Retained { reply_to, messages });
    }

    /// Another shard's answer to this shard's request `reply_to.request`:
    /// held until every owner answered and, with three shards or more, a
    /// flush round passed (step 3).
    pub(super) fn handle_retained_answer(
        &mut self,
        reply_to: &RetainedReplyTo,
        messages: Vec<Arc<Message>>,
        now: Instant,
    ) {
        let id = reply_to.request;
        let Some(request) = self.retained_queries.requests.get_mut(&id) else { return };
        request.answers.extend(messages);
        self.answer_received(id, now);
    }

    /// Counts one owner's answer to request `id`; after the last, releases
    /// the held answers (two shards: at once) or queues them for a round.
    fn answer_received(&mut self, id: u64, now: Instant) {
        let Some(request) = self.retained_queries.requests.get_mut(&id) else { return };
        request.unanswered -= 1;
        if request.unanswered > 0 {
            return;
        }
        if request.answers.is_empty() || self.nr_shards <= 2 {
            let answers = std::mem::take(&mut request.answers);
            self.deliver_retained_request(id, &answers, now);
            self.retained_queries.close(id);
        } else {
            self.retained_queries.answered.push(id);
            self.start_flush_round();
        }
    }

    /// Delivers to request `id`'s subscriber the `messages` it did not get
    /// live meanwhile.
    fn deliver_retained_request(&mut self, id: u64, messages: &[Arc<Message>], now: Instant) {
        let queries = &self.retained_queries;
        let Some(request) = queries.requests.get(&id) else { return };
        let fresh: Vec<Arc<Message>> = messages
            .iter()
            .filter(|message| !queries.got_live(id, request.key, message))
            .cloned()
            .collect();
        let reply_to = request.reply_to.clone();
        self.deliver_retained(&reply_to, &fresh, now);
    }
}
