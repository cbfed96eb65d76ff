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

use super::Ticket;
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

/// One message waiting.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) ticket: Ticket,
    /// The nodes (origins) that have not acknowledged.
    pub(super) nodes: SmallVec<[u64; 4]>,
    /// The frame, to send again.
    pub(super) frame: Bytes,
}

/// The messages of this node waiting for acknowledgements.
#[derive(Debug, Default)]
pub(super) struct Pending {
    waiting: HashMap<u64, Waiting>,
    /// Sequences in the order they are due to be sent again (stale entries,
    /// already acknowledged, are skipped).
    due: VecDeque<(Instant, u64)>,
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
    pub(super) fn ack(&mut self, node: u64, sequence: u64) -> Option<Ticket> {
        let waiting = self.waiting.get_mut(&sequence)?;
        // Only a node waited for counts: a message of a young directory
        // waits for nobody yet, and an acknowledgement does not end it.
        let at = waiting.nodes.iter().position(|n| *n == node)?;
        waiting.nodes.swap_remove(at);
        if waiting.nodes.is_empty() {
            return self.waiting.remove(&sequence).map(|w| w.ticket);
        }
        None
    }

    /// `node` is gone: nothing waits for it any more. Calls `done` with the
    /// tickets no longer waiting for anyone.
    pub(super) fn gone(&mut self, node: u64, mut done: impl FnMut(Ticket)) {
        self.waiting.retain(|_, waiting| {
            // As in `ack`: only a node waited for counts.
            let Some(at) = waiting.nodes.iter().position(|n| *n == node) else { return true };
            waiting.nodes.swap_remove(at);
            if waiting.nodes.is_empty() {
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
        if waiting.nodes.is_empty() {
            return self.waiting.remove(&sequence).map(|w| w.ticket);
        }
        None
    }

    /// Makes every message waiting due at `now` (sent again at the next
    /// [`Self::due`]).
    pub(super) fn make_due(&mut self, now: Instant) {
        self.due.clear();
        self.due.extend(self.waiting.keys().map(|&sequence| (now, sequence)));
    }

    /// Calls `resend(sequence, waiting)` for every message due at `now`,
    /// and makes it due again at `next`.
    pub(super) fn due(
        &mut self,
        now: Instant,
        next: Instant,
        mut resend: impl FnMut(u64, &Waiting),
    ) {
        while let Some(&(at, sequence)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            if let Some(waiting) = self.waiting.get(&sequence) {
                resend(sequence, waiting);
                self.due.push_back((next, sequence));
            }
        }
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
        Waiting { ticket: ticket(number), nodes: nodes.into(), frame: Bytes::new() }
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
