//! The shard's session table: a slot per session, found by key or by client
//! id, and the link from a session to the task serving its connection.

use super::index_work::IndexWork;
use crate::protocol::TopicName;
use crate::session::{CloseReason, Session};
use bytestring::ByteString;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::task::Waker;
use std::time::Instant;

/// A session's slot number on its shard; stable while the session exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(u32);

impl SessionKey {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// Identifies one network connection, so that a stale connection task
/// (taken over, or closed) cannot act on the session's next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// The link between a session and the task serving its connection.
#[derive(Debug)]
pub(super) struct ConnectionLink {
    pub(super) id: ConnectionId,
    /// The connection task, woken when the session has output or must close.
    pub(super) waker: Option<Waker>,
    /// Output or a close request arrived since the task last looked.
    pub(super) notified: bool,
    /// The session closed the connection: after its last output the
    /// connection ends.
    pub(super) closed: Option<CloseReason>,
}

impl ConnectionLink {
    /// A new connection's link: notified, so its task looks for the
    /// CONNACK at once.
    pub(super) fn new(id: ConnectionId) -> Self {
        Self { id, waker: None, notified: true, closed: None }
    }

    /// Tells the connection task to look at the session again (woken once
    /// until it does).
    pub(super) fn notify(&mut self) {
        if !self.notified {
            self.wake();
        }
    }

    /// Wakes the connection task, notified or not.
    pub(super) fn wake(&mut self) {
        self.notified = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A connected session past its queue limits (see
/// `DeliveryOutcome::OverLimit`): the topics whose gates it closed, so
/// their publishers are held back until it drains.
#[derive(Debug)]
pub(super) struct Overload {
    /// When it is disconnected as a slow consumer unless it drained
    /// (`slow_consumer_timeout`); `None`: never.
    pub(super) deadline: Option<Instant>,
    /// The topics of the messages queued past its limits, each once (a
    /// set: a wildcard subscriber may be sent many distinct topics, one
    /// message each before their publishers are held).
    pub(super) topics: hashbrown::HashSet<TopicName>,
}

/// What a session holds, as last added to the shard's gauges (see
/// `Shard::account`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// Messages queued.
    pub(super) queued: usize,
    /// Bytes queued (topic and payload).
    pub(super) bytes: usize,
    /// QoS 1/2 messages in flight.
    pub(super) inflight: usize,
}

/// One session and what the shard keeps beside it.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) session: Session,
    pub(super) connection: Option<ConnectionLink>,
    /// When a session without a connection ends (see
    /// `SessionLimits::max_session_expiry`).
    pub(super) expires_at: Option<Instant>,
    /// The time of this slot's live entry in the shard's
    /// [`Deadlines`](super::deadlines::Deadlines).
    pub(super) scheduled: Option<Instant>,
    /// Subscribes and unsubscribes too large for one turn (see
    /// [`INDEX_WORK_PER_TURN`](super::INDEX_WORK_PER_TURN)). While there
    /// are any, the connection's later packets stay unread; the SUBACK or
    /// UNSUBACK waits on its barrier.
    // Boxed: 8 bytes in every slot instead of 32 for a state that is
    // almost always absent.
    #[allow(clippy::box_collection)]
    pub(super) index_backlog: Option<Box<VecDeque<IndexWork>>>,
    /// The session's number in the shard's durable log; 0 while it is not
    /// logged (no log, or a clean session).
    pub(super) log_id: u64,
    /// Past its queue limits while connected; boxed, as it is almost
    /// always absent.
    pub(super) overload: Option<Box<Overload>>,
    /// What the session held when the shard's gauges last counted it.
    pub(super) usage: Usage,
    /// In a cluster, the revision of the last entry this node's claims of
    /// the client id wrote into the session directory (0: none): released
    /// when the session ends here (see `router::cluster::sessions`).
    pub(super) directory_revision: u64,
}

impl Slot {
    /// A session without a connection.
    pub(super) fn new(session: Session) -> Self {
        Self {
            session,
            connection: None,
            expires_at: None,
            scheduled: None,
            index_backlog: None,
            log_id: 0,
            overload: None,
            usage: Usage::default(),
            directory_revision: 0,
        }
    }

    /// When the shard must next look at this slot: the session's own
    /// timeout (the keep alive of its connection, a delayed will), the
    /// expiry of a session without a connection, or the slow consumer
    /// deadline of one past its queue limits.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let session = self.session.poll_timeout();
        let expiry = self.connection.is_none().then_some(self.expires_at).flatten();
        let slow = self.slow_consumer_deadline();
        [session, expiry, slow].into_iter().flatten().min()
    }

    /// When this connected session, past its queue limits, is
    /// disconnected as a slow consumer.
    pub(super) fn slow_consumer_deadline(&self) -> Option<Instant> {
        self.connection.as_ref()?;
        self.overload.as_ref()?.deadline
    }

    /// What the session holds now.
    pub(super) fn current_usage(&self) -> Usage {
        Usage {
            queued: self.session.queued_len(),
            bytes: self.session.queued_bytes(),
            inflight: self.session.inflight_len(),
        }
    }

    /// The link of `connection`, if it is still the one attached.
    pub(super) fn link_mut(&mut self, connection: ConnectionId) -> Option<&mut ConnectionLink> {
        self.connection.as_mut().filter(|link| link.id == connection)
    }
}

/// The sessions of one shard, by key and by client id.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// Boxed, so the table grows by pointers, not by whole sessions.
    slots: Vec<Option<Box<Slot>>>,
    free: Vec<u32>,
    by_client_id: HashMap<ByteString, SessionKey>,
    /// Sessions with a connection attached: kept as connections attach
    /// ([`Slots::attach`]) and leave ([`Slots::detach`]), so a snapshot
    /// does not walk every slot.
    online: usize,
}

impl Slots {
    /// Sessions, connected or not.
    pub(super) fn len(&self) -> usize {
        self.by_client_id.len()
    }

    /// Sessions with a connection attached.
    pub(super) fn online(&self) -> usize {
        self.online
    }

    /// Attaches `link` to the session of `key`, replacing any attached
    /// connection.
    pub(super) fn attach(&mut self, key: SessionKey, link: ConnectionLink) {
        let slot = self.slot_mut(key);
        let was_online = slot.connection.replace(link).is_some();
        self.online += usize::from(!was_online);
    }

    /// Detaches the connection of the session of `key`, if any.
    pub(super) fn detach(&mut self, key: SessionKey) -> Option<ConnectionLink> {
        let link = self.slot_mut(key).connection.take();
        self.online -= usize::from(link.is_some());
        link
    }

    /// The session of `client_id`.
    pub(super) fn find(&self, client_id: &str) -> Option<SessionKey> {
        self.by_client_id.get(client_id).copied()
    }

    pub(super) fn get(&self, key: SessionKey) -> Option<&Slot> {
        self.slots.get(key.index())?.as_deref()
    }

    pub(super) fn get_mut(&mut self, key: SessionKey) -> Option<&mut Slot> {
        self.slots.get_mut(key.index())?.as_deref_mut()
    }

    /// The slot of a key known to be live.
    pub(super) fn slot(&self, key: SessionKey) -> &Slot {
        self.get(key).expect("live session key")
    }

    /// The slot of a key known to be live.
    pub(super) fn slot_mut(&mut self, key: SessionKey) -> &mut Slot {
        self.get_mut(key).expect("live session key")
    }

    /// Adds a slot for its session's client id (which has none yet).
    pub(super) fn insert(&mut self, slot: Slot) -> SessionKey {
        let client_id = slot.session.client_id().clone();
        let key = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(Box::new(slot));
                SessionKey(index)
            }
            None => {
                self.slots.push(Some(Box::new(slot)));
                SessionKey((self.slots.len() - 1) as u32)
            }
        };
        self.by_client_id.insert(client_id, key);
        key
    }

    /// Takes a session out; its key may be reused.
    pub(super) fn remove(&mut self, key: SessionKey) -> Option<Box<Slot>> {
        let slot = self.slots.get_mut(key.index())?.take()?;
        self.online -= usize::from(slot.connection.is_some());
        self.free.push(key.0);
        self.by_client_id.remove(slot.session.client_id());
        crate::shrink::after_remove(&mut self.by_client_id);
        Some(slot)
    }

    /// The first session at or after position `from` of the table, and the
    /// position after it (a session keeps its position for its whole life;
    /// see `state/compaction.rs`). `Ok(None)` at the end of the table;
    /// `Err(position)` when the `budget` positions looked at were empty:
    /// go on from `position`.
    pub(super) fn next_from(
        &self,
        from: usize,
        budget: usize,
    ) -> Result<Option<(SessionKey, usize)>, usize> {
        for (index, slot) in self.slots.iter().enumerate().skip(from).take(budget.max(1)) {
            if slot.is_some() {
                return Ok(Some((SessionKey(index as u32), index + 1)));
            }
        }
        let reached = (from + budget.max(1)).min(self.slots.len());
        if reached >= self.slots.len() {
            Ok(None)
        } else {
            Err(reached)
        }
    }

    /// Every slot (for tests: the shard walks its sessions by position,
    /// see [`Slots::next_from`]).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten().map(|slot| &**slot)
    }

    pub(super) fn sessions_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.slots.iter_mut().flatten().map(|slot| &mut slot.session)
    }

    /// The keys of the sessions with a connection attached.
    pub(super) fn connected(&self) -> Vec<SessionKey> {
        let slots = self.slots.iter().enumerate();
        let connected =
            slots.filter(|(_, slot)| slot.as_ref().is_some_and(|s| s.connection.is_some()));
        connected.map(|(index, _)| SessionKey(index as u32)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Slot;

    /// Every session costs its slot for as long as it lives, connected and
    /// idle or offline: the largest part of the broker's memory per idle
    /// device after the connection task (issue 18, `benches/idle_memory.sh`).
    /// Rare state is boxed (`index_backlog`, `overload`, the session's
    /// QoS 2 ids, ACL, delayed will and re-send list) and the limits are
    /// shared; a field that grows
    /// the slot past this bound should be boxed too, or the bound raised
    /// with the reason in the commit.
    #[test]
    fn a_slot_stays_within_its_memory_budget() {
        let size = std::mem::size_of::<Slot>();
        eprintln!("slot: {size} bytes");
        assert!(size <= 600, "a session slot grew to {size} bytes");
    }
}
