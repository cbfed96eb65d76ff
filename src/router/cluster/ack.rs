//! QoS 1/2 across nodes: the publishing bridge's table of messages
//! waiting for other nodes' acknowledgements, and the acknowledgements'
//! encoding. Sans-IO.
//!
//! A QoS 1/2 message gets a sequence number of its own stream (apart from
//! QoS 0's, so that a message sent again is still within the receiver's
//! dedup window, [`ACKED_WINDOW`]) and is published with the reply
//! subject `{prefix}.ack.{origin}`. Each interested node that accepted it
//! answers there: `u64 origin` of the acknowledging node and the `u64`
//! sequences it accepted (several per message: a node batches what it
//! accepted in one turn). The publishing node waits for the nodes its
//! directory names; once none is missing, the shard's ticket is answered.
//! Every `ack_timeout` the message is sent again, on its own subject, to
//! each node still missing; a node taken for dead is not waited for.
//!
//! Shared groups: a message matching a shared subscription goes, per
//! group, to the one node the directory picks (a *leg*, with a sequence of
//! its own from the same stream, so that the receiver's dedup and the
//! acknowledgements tell it apart from the message's plain copy and from
//! its other groups' legs). The message's ticket waits for its legs too. A
//! node with no member of the group any more refuses a leg (the sequence
//! with [`REFUSED`] set); a refused leg, one whose node was taken for
//! dead, and (QoS 1) one not acknowledged within `ack_timeout` go to
//! another node the directory chooses (`Directory::choose`).

use super::Ticket;
use crate::protocol::TopicFilter;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::Instant;

/// The receivers' dedup window of the QoS 1/2 stream: a copy sent again
/// within this many later QoS 1/2 messages of its origin is recognised.
/// Past it (a node silent while this many others were published) a copy
/// is delivered again: at least once. 32 KiB per origin.
pub(super) const ACKED_WINDOW: u64 = 1 << 18;

/// Set in a sequence of an acknowledgement: the node refuses the leg (it
/// has no member of the group any more). Sequences never reach it.
pub(super) const REFUSED: u64 = 1 << 63;

/// One message waiting.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) ticket: Ticket,
    /// The nodes (origins) that have not acknowledged.
    pub(super) nodes: SmallVec<[u64; 4]>,
    /// The frame, to send again.
    pub(super) frame: Bytes,
    /// Its legs (shared groups) not yet acknowledged.
    pub(super) legs: u32,
    /// Of `nodes`, those counted only because their list had not arrived
    /// when it was published: waited for one `ack_timeout`, never sent
    /// again (see [`Pending::due`]).
    pub(super) unsure: SmallVec<[u64; 2]>,
}

impl Waiting {
    /// A message waiting for `nodes` (its legs are added later).
    pub(super) fn new(ticket: Ticket, nodes: SmallVec<[u64; 4]>, frame: Bytes) -> Self {
        Self { ticket, nodes, frame, legs: 0, unsure: SmallVec::new() }
    }

    fn is_done(&self) -> bool {
        self.nodes.is_empty() && self.legs == 0
    }
}

/// A message's copy for one shared group, sent to one node at a time.
#[derive(Debug)]
pub(super) struct Leg {
    /// The message's sequence (its [`Waiting`]).
    pub(super) parent: u64,
    /// The shared subscription, `$share/{group}/{filter}`.
    pub(super) group: TopicFilter,
    /// The node it was last sent to.
    pub(super) node: u64,
    /// The nodes that refused it.
    pub(super) refused: SmallVec<[u64; 2]>,
    /// QoS 2: sent again to the same node while it lives (see
    /// `Directory::choose`).
    pub(super) stay: bool,
}

/// The messages of this node waiting for acknowledgements.
#[derive(Debug, Default)]
pub(super) struct Pending {
    waiting: HashMap<u64, Waiting>,
    /// Sequences in the order they are due to be sent again (stale entries,
    /// already acknowledged, are skipped).
    due: VecDeque<(Instant, u64)>,
    /// Legs by their own sequence.
    legs: HashMap<u64, Leg>,
    /// Legs in the order they are due (stale entries skipped).
    legs_due: VecDeque<(Instant, u64)>,
}

/// What an acknowledgement did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Acked {
    /// Nothing (a repeat, an unknown sequence, a node not waited for).
    Nothing,
    /// The message of this ticket waits for nobody any more.
    Done(Ticket),
    /// This leg was refused: it goes to another node.
    Refused(u64),
}

impl Pending {
    /// Messages waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// `sequence` waits for `waiting.nodes` (not empty); sent again at
    /// `due` unless acknowledged.
    pub(super) fn insert(&mut self, sequence: u64, waiting: Waiting, due: Instant) {
        self.waiting.insert(sequence, waiting);
        self.due.push_back((due, sequence));
    }

    /// `node` acknowledged `sequence`: the ticket when it was the last one
    /// waited for.
    #[cfg(test)]
    pub(super) fn ack(&mut self, node: u64, sequence: u64) -> Option<Ticket> {
        match self.acked(node, sequence) {
            Acked::Done(ticket) => Some(ticket),
            _ => None,
        }
    }

    /// `node` acknowledged `sequence` (a message's or a leg's; with
    /// [`REFUSED`] set, refused a leg).
    pub(super) fn acked(&mut self, node: u64, sequence: u64) -> Acked {
        if sequence & REFUSED != 0 {
            let sequence = sequence & !REFUSED;
            return match self.legs.get_mut(&sequence) {
                Some(leg) if leg.node == node => {
                    if !leg.refused.contains(&node) {
                        leg.refused.push(node);
                    }
                    Acked::Refused(sequence)
                }
                _ => Acked::Nothing,
            };
        }
        if self.legs.get(&sequence).is_some_and(|leg| leg.node == node) {
            return self.leg_done(sequence).map_or(Acked::Nothing, Acked::Done);
        }
        let Some(waiting) = self.waiting.get_mut(&sequence) else { return Acked::Nothing };
        // Only a node waited for counts: a message of a young directory
        // waits for nobody yet, and an acknowledgement does not end it.
        let Some(at) = waiting.nodes.iter().position(|n| *n == node) else {
            return Acked::Nothing;
        };
        waiting.nodes.swap_remove(at);
        self.finish(sequence).map_or(Acked::Nothing, Acked::Done)
    }

    /// The ticket of `sequence` when it waits for nothing any more
    /// (removed then).
    fn finish(&mut self, sequence: u64) -> Option<Ticket> {
        if self.waiting.get(&sequence)?.is_done() {
            return self.waiting.remove(&sequence).map(|w| w.ticket);
        }
        None
    }

    /// Adds leg `sequence` of the waiting message `leg.parent`, sent now,
    /// due again at `due`. Nothing when the message does not wait.
    pub(super) fn add_leg(&mut self, sequence: u64, leg: Leg, due: Instant) {
        let Some(waiting) = self.waiting.get_mut(&leg.parent) else { return };
        waiting.legs += 1;
        self.legs.insert(sequence, leg);
        self.legs_due.push_back((due, sequence));
    }

    /// Leg `sequence`, while not done.
    pub(super) fn leg_mut(&mut self, sequence: u64) -> Option<&mut Leg> {
        self.legs.get_mut(&sequence)
    }

    /// The frame of leg `sequence`'s message.
    pub(super) fn leg_frame(&self, sequence: u64) -> Option<Bytes> {
        let leg = self.legs.get(&sequence)?;
        self.waiting.get(&leg.parent).map(|waiting| waiting.frame.clone())
    }

    /// Leg `sequence` is done (acknowledged, or no node has members of its
    /// group any more): its message's ticket when that was the last thing
    /// it waited for.
    pub(super) fn leg_done(&mut self, sequence: u64) -> Option<Ticket> {
        let leg = self.legs.remove(&sequence)?;
        let waiting = self.waiting.get_mut(&leg.parent)?;
        waiting.legs -= 1;
        self.finish(leg.parent)
    }

    /// The legs last sent to `node` (taken for dead): they go elsewhere.
    pub(super) fn legs_of(&self, node: u64) -> Vec<u64> {
        let legs = self.legs.iter().filter(|(_, leg)| leg.node == node);
        legs.map(|(&sequence, _)| sequence).collect()
    }

    /// The legs due at `now` (made due again at `next`).
    pub(super) fn due_legs(&mut self, now: Instant, next: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&(at, sequence)) = self.legs_due.front() {
            if at > now {
                break;
            }
            self.legs_due.pop_front();
            if self.legs.contains_key(&sequence) {
                due.push(sequence);
                self.legs_due.push_back((next, sequence));
            }
        }
        due
    }

    /// `node` is gone: nothing waits for it any more. Calls `done` with the
    /// tickets no longer waiting for anyone.
    pub(super) fn gone(&mut self, node: u64, mut done: impl FnMut(Ticket)) {
        self.waiting.retain(|_, waiting| {
            // As in `ack`: only a node waited for counts.
            let Some(at) = waiting.nodes.iter().position(|n| *n == node) else { return true };
            waiting.nodes.swap_remove(at);
            if waiting.is_done() {
                done(waiting.ticket);
                return false;
            }
            true
        });
    }

    /// Sets the nodes `sequence` waits for (a message published before the
    /// directory was complete): its ticket when there are none.
    pub(super) fn wait_for(&mut self, sequence: u64, nodes: SmallVec<[u64; 4]>) -> Option<Ticket> {
        let waiting = self.waiting.get_mut(&sequence)?;
        waiting.nodes = nodes;
        waiting.unsure.clear();
        self.finish(sequence)
    }

    /// Makes every message waiting due at `now` (sent again at the next
    /// [`Self::due`]).
    pub(super) fn make_due(&mut self, now: Instant) {
        self.due.clear();
        self.due.extend(self.waiting.keys().map(|&sequence| (now, sequence)));
    }

    /// Calls `resend(sequence, waiting)` for every message due at `now`,
    /// and makes it due again at `next`. The nodes it was waiting for only
    /// because their list had not arrived (`Waiting::unsure`) are waited
    /// for no longer, and not sent it again: one subscribed when it was
    /// published got it on NATS, and one that was not must not get it (a
    /// session that moved there since got it where it was). Returns the
    /// tickets of the messages that then wait for nobody.
    pub(super) fn due(
        &mut self,
        now: Instant,
        next: Instant,
        mut resend: impl FnMut(u64, &Waiting),
    ) -> Vec<Ticket> {
        let mut done = Vec::new();
        while let Some(&(at, sequence)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            let Some(waiting) = self.waiting.get_mut(&sequence) else { continue };
            if !waiting.unsure.is_empty() {
                let unsure = std::mem::take(&mut waiting.unsure);
                waiting.nodes.retain(|node| !unsure.contains(node));
                if let Some(ticket) = self.finish(sequence) {
                    done.push(ticket);
                    continue;
                }
            }
            if let Some(waiting) = self.waiting.get(&sequence) {
                resend(sequence, waiting);
                self.due.push_back((next, sequence));
            }
        }
        done
    }
}

/// Appends an acknowledgement header (the acknowledging node) to `out`.
pub(super) fn ack_header(origin: u64, out: &mut BytesMut) {
    out.put_u64(origin);
}

/// Appends one accepted sequence to an acknowledgement.
pub(super) fn ack_sequence(sequence: u64, out: &mut BytesMut) {
    out.put_u64(sequence);
}

/// The acknowledging node and the sequences of an acknowledgement; `None`
/// when malformed.
pub(super) fn decode_ack(mut ack: Bytes) -> Option<(u64, impl Iterator<Item = u64>)> {
    if ack.len() < 16 || ack.len() % 8 != 0 {
        return None;
    }
    let origin = ack.get_u64();
    Some((origin, std::iter::from_fn(move || (ack.remaining() >= 8).then(|| ack.get_u64()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ShardId;
    use std::time::Duration;

    fn ticket(number: u64) -> Ticket {
        Ticket { shard: ShardId::from_index(0).unwrap(), number }
    }

    fn waiting(number: u64, nodes: &[u64]) -> Waiting {
        Waiting::new(ticket(number), nodes.into(), Bytes::new())
    }

    fn leg(parent: u64, node: u64) -> Leg {
        Leg {
            parent,
            group: TopicFilter::new("$share/g/t").unwrap(),
            node,
            refused: SmallVec::new(),
            stay: false,
        }
    }

    #[test]
    fn a_message_with_legs_is_done_when_its_nodes_and_its_legs_are() {
        let now = Instant::now();
        let mut pending = Pending::default();
        // Plain copy waits for node 7; legs 2 (to node 8) and 3 (to 7).
        pending.insert(1, waiting(10, &[7]), now);
        pending.add_leg(2, leg(1, 8), now);
        pending.add_leg(3, leg(1, 7), now);
        assert_eq!(pending.acked(7, 1), Acked::Nothing, "two legs still out");
        assert_eq!(pending.acked(9, 2), Acked::Nothing, "not the leg's node");
        assert_eq!(pending.acked(8, 2), Acked::Nothing, "leg 3 still out");
        assert_eq!(pending.acked(8, 2), Acked::Nothing, "a repeat");
        // Node 7 refuses leg 3: it is moved by the bridge, not done.
        assert_eq!(pending.acked(7, 3 | REFUSED), Acked::Refused(3));
        assert_eq!(pending.leg_mut(3).unwrap().refused.as_slice(), [7]);
        assert_eq!(pending.acked(8, 3 | REFUSED), Acked::Nothing, "8 was not asked");
        pending.leg_mut(3).unwrap().node = 8;
        assert_eq!(pending.legs_of(8), [3]);
        assert_eq!(pending.leg_frame(3), Some(Bytes::new()));
        assert_eq!(pending.acked(8, 3), Acked::Done(ticket(10)));
        assert_eq!(pending.len(), 0);
        // A leg whose group has no member left is done without an ack.
        pending.insert(4, waiting(11, &[]), now);
        pending.add_leg(5, leg(4, 8), now + Duration::from_millis(10));
        assert_eq!(pending.due_legs(now, now), Vec::<u64>::new(), "not due yet");
        let next = now + Duration::from_millis(20);
        assert_eq!(pending.due_legs(now + Duration::from_millis(10), next), [5]);
        assert_eq!(pending.leg_done(5), Some(ticket(11)));
        assert_eq!(pending.due_legs(next, next), Vec::<u64>::new(), "done: not due");
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn a_node_whose_list_had_not_arrived_is_waited_for_once_and_not_sent_it_again() {
        let now = Instant::now();
        let next = now + Duration::from_millis(500);
        let mut pending = Pending::default();
        // Message 1 waits for node 7 (list held) and node 8 (not yet).
        let mut unsure = waiting(10, &[7, 8]);
        unsure.unsure = [8].into_iter().collect();
        pending.insert(1, unsure, now);
        // Message 2 waits for node 8 alone, unsure: done at its due time.
        let mut alone = waiting(11, &[8]);
        alone.unsure = [8].into_iter().collect();
        pending.insert(2, alone, now);
        let mut resent = Vec::new();
        let done = pending.due(now, next, |sequence, w| resent.push((sequence, w.nodes.to_vec())));
        assert_eq!(done, [ticket(11)], "nobody left to wait for");
        assert_eq!(resent, [(1, vec![7])], "sent again to node 7 only");
        assert_eq!(pending.acked(7, 1), Acked::Done(ticket(10)));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn a_message_is_done_when_every_node_acked_or_went() {
        let now = Instant::now();
        let mut pending = Pending::default();
        pending.insert(1, waiting(10, &[7, 8]), now);
        pending.insert(2, waiting(11, &[7]), now);
        assert_eq!(pending.ack(7, 1), None, "8 still missing");
        assert_eq!(pending.ack(7, 1), None, "a repeat does nothing");
        assert_eq!(pending.ack(8, 1), Some(ticket(10)));
        assert_eq!(pending.ack(8, 1), None, "done already");
        let mut done = Vec::new();
        pending.gone(7, |t| done.push(t));
        assert_eq!(done, [ticket(11)]);
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn a_message_of_a_young_directory_waits_for_the_nodes_named_later() {
        let now = Instant::now();
        let mut pending = Pending::default();
        pending.insert(1, waiting(1, &[]), now);
        pending.insert(2, waiting(2, &[]), now);
        assert_eq!(pending.ack(7, 1), None, "nobody was waited for yet");
        pending.gone(7, |_| panic!("nobody was waited for yet"));
        assert_eq!(pending.wait_for(1, SmallVec::from_slice(&[7])), None);
        assert_eq!(pending.ack(7, 1), Some(ticket(1)));
        assert_eq!(pending.wait_for(2, SmallVec::new()), Some(ticket(2)));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn what_is_not_acked_is_sent_again_each_timeout() {
        let now = Instant::now();
        let later = |ms| now + Duration::from_millis(ms);
        let mut pending = Pending::default();
        pending.insert(1, waiting(1, &[7]), later(100));
        pending.insert(2, waiting(2, &[7]), later(200));
        let mut sent = Vec::new();
        pending.due(later(150), later(250), |s, w| sent.push((s, w.nodes.to_vec())));
        assert_eq!(sent, [(1, vec![7])]);
        assert_eq!(pending.ack(7, 2), Some(ticket(2)));
        sent.clear();
        pending.due(later(300), later(400), |s, w| sent.push((s, w.nodes.to_vec())));
        assert_eq!(sent, [(1, vec![7])], "2 was acknowledged; 1 is due again");
    }

    #[test]
    fn acks_round_trip_and_malformed_ones_are_refused() {
        let mut out = BytesMut::new();
        ack_header(5, &mut out);
        ack_sequence(1, &mut out);
        ack_sequence(9, &mut out);
        let (origin, sequences) = decode_ack(out.freeze()).unwrap();
        assert_eq!((origin, sequences.collect::<Vec<_>>()), (5, vec![1, 9]));
        assert!(decode_ack(Bytes::from_static(&[0; 8])).is_none(), "no sequence");
        assert!(decode_ack(Bytes::from_static(&[0; 17])).is_none());
    }
}
