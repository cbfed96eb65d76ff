//! Topic gates: the backpressure of a subscriber that is past its queue
//! limits, towards the publishers of the topics it is sent, on every core.
//!
//! When a QoS 1/2 message is queued past a connected subscriber's limits
//! (the session never drops it: it may have been acknowledged), the
//! subscriber's shard closes the gate of the message's topic: locally
//! (a count of its sessions that closed it), and at each peer shard that
//! sent it messages of that topic (one `Block` message per peer and
//! topic, not per message; `Unblock` when the last local session drained).
//! A connection that publishes QoS 1/2 to a closed gate stops being read
//! until the gate opens. So a stalled subscriber slows the publishers of
//! its own topics only: subscribers of other topics, on any core, keep
//! receiving.
//!
//! Gates exist only while closed (or while a peer was told): an idle
//! broker has none, and checking a publish costs one emptiness test. No
//! locks; allocation only when a gate opens or closes, not per message.

use super::ShardId;
use crate::protocol::TopicName;
use crate::router::interest::ShardSet;
use hashbrown::HashMap;
use std::task::Waker;

/// Names a gate a connection waits on; stale once the gate opened (its
/// slot may be reused, with another generation). Packed in 31 bits (a
/// slot index of 23 bits, a generation of 8), so that a connection task
/// holds what it waits for in 4 bytes (see `Hold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateId(u32);

impl GateId {
    /// Slots at most: 8 M gates closed at once (one per topic).
    const MAX_SLOTS: usize = 1 << 23;

    fn new(index: u32, generation: u8) -> Self {
        Self(index << 8 | u32::from(generation))
    }

    fn index(self) -> usize {
        (self.0 >> 8) as usize
    }

    fn generation(self) -> u8 {
        self.0 as u8
    }

    /// The 31 bits.
    pub(super) fn bits(self) -> u32 {
        self.0
    }

    /// From [`Self::bits`].
    pub(super) fn from_bits(bits: u32) -> Self {
        Self(bits & !(1 << 31))
    }
}

/// One closed topic.
#[derive(Debug)]
struct Gate {
    topic: TopicName,
    /// Local sessions past their limits that were sent this topic.
    local: u32,
    /// Peer shards whose sessions closed this topic there.
    remote: ShardSet,
    /// Peers told that this shard closed it (`Block` sent): they are
    /// told when it opens.
    told: ShardSet,
    /// Connections waiting for it to open.
    held: Vec<Waker>,
}

impl Gate {
    fn is_closed(&self) -> bool {
        self.local > 0 || !self.remote.is_empty()
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u8,
    gate: Option<Gate>,
}

/// The gates of one shard.
#[derive(Debug, Default)]
pub struct Gates {
    by_topic: HashMap<TopicName, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Gates {
    /// Whether no gate exists (the common case: one test per publish).
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    /// The gate of `topic` when it is closed.
    pub fn closed(&self, topic: &TopicName) -> Option<GateId> {
        let &index = self.by_topic.get(topic)?;
        let slot = &self.slots[index as usize];
        let gate = slot.gate.as_ref()?;
        gate.is_closed().then_some(GateId::new(index, slot.generation))
    }

    /// Whether the gate `id` is still closed.
    pub fn is_closed(&self, id: GateId) -> bool {
        self.gate(id).is_some_and(Gate::is_closed)
    }

    /// Wakes `waker` when the gate `id` opens (at once if it is open).
    pub fn wait(&mut self, id: GateId, waker: &Waker) {
        match self.gate_mut(id).filter(|gate| gate.is_closed()) {
            Some(gate) => {
                if !gate.held.iter().any(|w| w.will_wake(waker)) {
                    gate.held.push(waker.clone());
                }
            }
            None => waker.wake_by_ref(),
        }
    }

    /// A local session closes `topic` (unless 8 M gates are closed
    /// already: then its publishers are not held, see [`GateId`]).
    pub fn close_local(&mut self, topic: &TopicName) {
        if let Some(gate) = self.entry(topic) {
            gate.local += 1;
        }
    }

    /// A local session that closed `topic` drained (or left): returns the
    /// peers to tell that it is open here, once no local session holds it.
    pub fn open_local(&mut self, topic: &TopicName) -> ShardSet {
        let Some(index) = self.by_topic.get(topic).copied() else { return ShardSet::default() };
        let Some(gate) = self.slots[index as usize].gate.as_mut() else {
            return ShardSet::default();
        };
        gate.local = gate.local.saturating_sub(1);
        if gate.local > 0 {
            return ShardSet::default();
        }
        let told = std::mem::take(&mut gate.told);
        self.settle(index);
        told
    }

    /// `topic` is closed here because of a message from `peer`: whether
    /// `peer` must be told (it was not yet).
    pub fn tell(&mut self, topic: &TopicName, peer: ShardId) -> bool {
        let Some(&index) = self.by_topic.get(topic) else { return false };
        let Some(gate) = self.slots[index as usize].gate.as_mut() else { return false };
        gate.local > 0 && gate.told.insert(peer)
    }

    /// Peer `from` closed (`closed`) or opened `topic`.
    pub fn handle_remote(&mut self, from: ShardId, topic: &TopicName, closed: bool) {
        if closed {
            if let Some(gate) = self.entry(topic) {
                gate.remote.insert(from);
            }
            return;
        }
        let Some(index) = self.by_topic.get(topic).copied() else { return };
        if let Some(gate) = self.slots[index as usize].gate.as_mut() {
            gate.remote.remove(from);
            self.settle(index);
        }
    }

    /// Gates that exist.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Removes the gate at `index` once it is open and no peer must be
    /// told anything more; wakes the connections it held.
    fn settle(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(gate) = slot.gate.as_mut() else { return };
        if gate.is_closed() {
            return;
        }
        for waker in gate.held.drain(..) {
            waker.wake();
        }
        if gate.told.is_empty() {
            let gate = slot.gate.take().expect("checked above");
            slot.generation = slot.generation.wrapping_add(1);
            self.by_topic.remove(&gate.topic);
            crate::shrink::after_remove(&mut self.by_topic);
            self.free.push(index);
        }
    }

    fn entry(&mut self, topic: &TopicName) -> Option<&mut Gate> {
        let index = match self.by_topic.get(topic) {
            Some(&index) => index,
            None => {
                let index = match self.free.pop() {
                    Some(index) => index,
                    None if self.slots.len() < GateId::MAX_SLOTS => {
                        self.slots.push(Slot::default());
                        // Below 2^23: fits.
                        (self.slots.len() - 1) as u32
                    }
                    None => return None,
                };
                self.slots[index as usize].gate = Some(Gate {
                    topic: topic.clone(),
                    local: 0,
                    remote: ShardSet::default(),
                    told: ShardSet::default(),
                    held: Vec::new(),
                });
                self.by_topic.insert(topic.clone(), index);
                index
            }
        };
        self.slots[index as usize].gate.as_mut()
    }

    fn gate(&self, id: GateId) -> Option<&Gate> {
        let slot = self.slots.get(id.index())?;
        slot.gate.as_ref().filter(|_| slot.generation == id.generation())
    }

    fn gate_mut(&mut self, id: GateId) -> Option<&mut Gate> {
        let slot = self.slots.get_mut(id.index())?;
        slot.gate.as_mut().filter(|_| slot.generation == id.generation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    fn shard(index: usize) -> ShardId {
        ShardId::from_index(index).unwrap()
    }

    #[test]
    fn a_local_close_holds_its_topic_only_and_tells_each_peer_once() {
        let mut gates = Gates::default();
        assert!(gates.is_empty());
        gates.close_local(&topic("slow"));
        let id = gates.closed(&topic("slow")).expect("closed");
        assert_eq!(gates.closed(&topic("fast")), None, "another topic stays open");
        assert!(gates.tell(&topic("slow"), shard(1)));
        assert!(!gates.tell(&topic("slow"), shard(1)), "told once");
        assert!(!gates.tell(&topic("fast"), shard(1)));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        gates.wait(id, &Waker::from(Arc::clone(&flag)));
        // Two sessions closed it: it opens when both drained.
        gates.close_local(&topic("slow"));
        assert!(gates.open_local(&topic("slow")).is_empty());
        assert!(gates.is_closed(id));
        let told = gates.open_local(&topic("slow"));
        assert_eq!(told.iter().collect::<Vec<_>>(), [shard(1)]);
        assert!(!gates.is_closed(id));
        assert!(flag.0.load(Ordering::SeqCst), "the held connection is woken");
        assert!(gates.is_empty(), "an open gate is forgotten");
    }

    #[test]
    fn a_remote_close_holds_until_that_peer_opens() {
        let mut gates = Gates::default();
        gates.handle_remote(shard(2), &topic("t"), true);
        gates.handle_remote(shard(3), &topic("t"), true);
        let id = gates.closed(&topic("t")).expect("closed");
        assert!(!gates.tell(&topic("t"), shard(2)), "no local session closed it");
        gates.handle_remote(shard(2), &topic("t"), false);
        assert!(gates.is_closed(id));
        gates.handle_remote(shard(3), &topic("t"), false);
        assert!(!gates.is_closed(id));
        assert!(gates.is_empty());
        // A reused slot is not the old gate.
        gates.close_local(&topic("u"));
        assert!(!gates.is_closed(id));
        assert_eq!(gates.len(), 1);
    }
}
