//! What one core owns, without locks: its sessions (keyed by client id),
//! its subscription index, its share of the retained messages and its
//! interest replica. It never touches a socket or a channel endpoint: what
//! must cross to other shards goes into the [`Outbox`], and connection
//! tasks are told about new output through their wakers.

use crate::index::{Match, SubscriptionTrie};
use crate::message::Message;
use crate::protocol::RetainHandling;
use crate::protocol::{Connect, ReasonCode, SubscriptionOptions, TopicFilter};
use crate::router::interest::{GroupKey, InterestDelta, InterestTable, LocalInterest, ShardSet};
use crate::router::{home_shard, ClientIdAssigner, Outbox, RetainedReplyTo, ShardId, ShardMessage};
use crate::session::DropReason;
use crate::session::{
    CloseReason, Delivery, DeliveryOutcome, Session, SessionError, SessionEvent, SessionLimits,
    SubscriptionGrant,
};
use crate::shard::drops::{DropCause, DropWarnings};
use crate::shard::retained::RetainedStore;
use bytes::Bytes;
use bytestring::ByteString;
use hashbrown::HashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// A session's slot number on its shard; stable while the session exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(u32);

/// Identifies one network connection, so that a stale connection task
/// (taken over, or closed) cannot act on the session's next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// Filters of one session added to or removed from the index per turn: a
/// SUBSCRIBE of 100,000 filters is indexed over many turns, the connection
/// task yielding between them, so the shard's other connections are served
/// meanwhile (about a millisecond per turn).
pub const INDEX_WORK_PER_TURN: usize = 256;

/// A local subscription as the index stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSubscription {
    /// Its options.
    pub options: SubscriptionOptions,
    /// Its v5 Subscription Identifier.
    pub subscription_id: Option<NonZeroU32>,
}

/// The link between a session and the task serving its connection.
#[derive(Debug)]
struct ConnectionLink {
    id: ConnectionId,
    /// The connection task, woken when the session has output or must close.
    waker: Option<Waker>,
    /// Output or a close request arrived since the task last looked.
    notified: bool,
    /// The interest revision this connection must see acknowledged by every
    /// peer before its SUBACK goes out.
    await_interest: u64,
    /// The session closed the connection: after its last output the
    /// connection ends.
    closed: Option<CloseReason>,
}

/// Index changes a session asked for that are not done yet, oldest first.
#[derive(Debug)]
enum IndexWork {
    Subscribe(smallvec::IntoIter<[SubscriptionGrant; 1]>),
    Unsubscribe(smallvec::IntoIter<[TopicFilter; 1]>),
}

impl IndexWork {
    fn len(&self) -> usize {
        match self {
            Self::Subscribe(grants) => grants.len(),
            Self::Unsubscribe(filters) => filters.len(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    session: Session,
    /// Clean Session / Clean Start of the current or last connection: the
    /// session ends with the connection.
    clean: bool,
    connection: Option<ConnectionLink>,
    /// When a session without a connection ends (see
    /// `SessionLimits::max_session_expiry`).
    expires_at: Option<Instant>,
    /// The time of this slot's live entry in `Shard::deadlines`.
    scheduled: Option<Instant>,
    /// Subscribes and unsubscribes too large for one turn (see
    /// [`INDEX_WORK_PER_TURN`]). While there are any, the connection's
    /// output waits (its SUBACK or UNSUBACK must not go out before the
    /// index has every filter) and its later packets stay unread.
    // Boxed: 8 bytes in every slot instead of 32 for a state that is
    // almost always absent.
    #[allow(clippy::box_collection)]
    index_backlog: Option<Box<VecDeque<IndexWork>>>,
}

impl Slot {
    /// When the shard must next look at this slot: the keep alive deadline
    /// of its connection, or the expiry of a session without one.
    fn next_deadline(&self) -> Option<Instant> {
        match self.connection {
            Some(_) => self.session.poll_timeout(),
            None => self.expires_at,
        }
    }
}

/// Counters of one shard.
#[derive(Clone, Debug, Default)]
pub struct ShardCounters {
    /// Messages accepted from publishers on this shard.
    pub messages_received: u64,
    /// Deliveries queued to local sessions.
    pub deliveries: u64,
    /// Deliveries a session refused (queue full, offline QoS 0).
    pub deliveries_dropped: u64,
    /// Connections taken over by a newer one with the same client id.
    pub takeovers: u64,
    /// Sessions ended because their client stayed away too long.
    pub sessions_expired: u64,
    /// Connections a session closed because its client broke the protocol
    /// after CONNECT ([`SessionError`](crate::session::SessionError)).
    pub protocol_violations: u64,
}

/// The outcome of a CONNECT at its home shard.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// The connection is attached to the session, whose output starts
    /// with the CONNACK.
    Accepted(SessionKey),
    /// The connection must be refused with a CONNACK carrying this code.
    Refused(ReasonCode),
}

/// Everything one core owns.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    nr_shards: usize,
    limits: SessionLimits,
    /// Boxed, so the table grows by pointers, not by whole sessions.
    slots: Vec<Option<Box<Slot>>>,
    free_slots: Vec<u32>,
    by_client_id: HashMap<ByteString, SessionKey>,
    subscriptions: SubscriptionTrie<SessionKey, LocalSubscription>,
    local_interest: LocalInterest,
    interest: InterestTable,
    /// The latest of this shard's interest revisions each peer applied.
    interest_acked: Vec<u64>,
    /// Spreads shared-group messages over the shards with members.
    group_cursor: usize,
    retained: RetainedStore,
    assigner: ClientIdAssigner,
    outbox: Rc<Outbox>,
    next_connection: u64,
    shutting_down: bool,
    counters: ShardCounters,
    /// Sessions whose SUBACK waits for an interest acknowledgement, with
    /// the revision each waits for, in increasing revision order (so an
    /// acknowledgement releases a prefix: linear in the subscribes, however
    /// many filters they carry). A session may appear more than once; its
    /// link's `await_interest` is what counts.
    interest_waiters: VecDeque<(u64, SessionKey)>,
    /// When drops were last logged, per cause.
    drop_warnings: DropWarnings,
    /// Reused between publishes: the local sessions a message matched.
    matches: Vec<(SessionKey, LocalSubscription)>,
    /// When to look at which slot, earliest first. A keep alive deadline
    /// only moves later as packets arrive, so entries are not updated:
    /// one that comes due early is checked and pushed again for the
    /// slot's current deadline. An entry whose time is not its slot's
    /// `scheduled` is stale and skipped (also after the slot is reused);
    /// stale entries leave when their time comes, so under connection
    /// churn the heap holds at most the connects of the last 1.5 keep
    /// alives. The sweep so costs the entries that came due, not one visit
    /// per session.
    deadlines: BinaryHeap<Reverse<(Instant, SessionKey)>>,
}

impl Shard {
    /// The state of shard `id` of `nr_shards`.
    pub fn new(
        id: ShardId,
        nr_shards: usize,
        limits: SessionLimits,
        outbox: Rc<Outbox>,
        boot: u64,
    ) -> Self {
        Self {
            id,
            nr_shards,
            limits,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: HashMap::new(),
            subscriptions: SubscriptionTrie::new(),
            local_interest: LocalInterest::new(id),
            interest: InterestTable::new(),
            interest_acked: vec![0; nr_shards],
            group_cursor: 0,
            retained: RetainedStore::new(),
            assigner: ClientIdAssigner::new(id, nr_shards, boot),
            outbox,
            next_connection: 0,
            shutting_down: false,
            counters: ShardCounters::default(),
            interest_waiters: VecDeque::new(),
            drop_warnings: DropWarnings::default(),
            matches: Vec::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// This shard's number.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The number of shards.
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// The shard's counters.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// Sessions on this shard, connected or not.
    pub fn session_count(&self) -> usize {
        self.by_client_id.len()
    }

    /// A new connection identity.
    pub fn new_connection_id(&mut self) -> ConnectionId {
        self.next_connection += 1;
        ConnectionId(self.next_connection)
    }

    /// A client id for a client that sent none, homed on this shard.
    pub fn assign_client_id(&mut self) -> ByteString {
        ByteString::from(self.assigner.assign())
    }

    /// The home shard of `client_id`.
    pub fn home_of(&self, client_id: &str) -> ShardId {
        home_shard(client_id.as_bytes(), self.nr_shards)
    }

    fn slot(&self, key: SessionKey) -> &Slot {
        self.slots[key.0 as usize].as_ref().expect("live session key")
    }

    fn slot_mut(&mut self, key: SessionKey) -> &mut Slot {
        self.slots[key.0 as usize].as_mut().expect("live session key")
    }

    /// The session in `key`, if `connection` is still the one attached to
    /// it (a taken-over connection gets `None`).
    pub fn session_mut(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
    ) -> Option<&mut Session> {
        let slot = self.slots.get_mut(key.0 as usize)?.as_mut()?;
        match &slot.connection {
            Some(link) if link.id == connection => Some(&mut slot.session),
            _ => None,
        }
    }

    /// Accepts (or refuses) a CONNECT whose client id is homed here
    /// (`client_id` already assigned when the client sent none).
    pub fn handle_connect(
        &mut self,
        now: Instant,
        connect: &Connect,
        client_id: ByteString,
        connection: ConnectionId,
    ) -> ConnectOutcome {
        if let Some(reason) = super::placement::connect_refusal(connect, self.shutting_down) {
            return ConnectOutcome::Refused(reason);
        }
        let existing = self.by_client_id.get(&client_id).copied();
        if let Some(key) = existing {
            // [MQTT-3.1.4-3] A second connection with the same client id
            // takes over: the first is closed (its will is published).
            if self.slot(key).connection.is_some() {
                self.counters.takeovers += 1;
                self.slot_mut(key).session.handle_takeover(now);
                self.detach(key, now);
            }
            // [MQTT-3.1.2-6] Clean Session discards the previous session.
            if connect.clean_start {
                self.remove_session(key);
            }
        }
        let (key, session_present) = match self.by_client_id.get(&client_id).copied() {
            Some(key) => (key, true),
            None => (self.insert_session(client_id), false),
        };
        let link = ConnectionLink {
            id: connection,
            waker: None,
            notified: true,
            await_interest: 0,
            closed: None,
        };
        let slot = self.slot_mut(key);
        slot.clean = connect.clean_start;
        slot.connection = Some(link);
        slot.expires_at = None;
        slot.session.handle_connect(now, connect, session_present);
        self.drain_events(key, now);
        self.schedule(key);
        ConnectOutcome::Accepted(key)
    }

    fn insert_session(&mut self, client_id: ByteString) -> SessionKey {
        let slot = Slot {
            session: Session::new(client_id.clone(), self.limits),
            clean: true,
            connection: None,
            expires_at: None,
            scheduled: None,
            index_backlog: None,
        };
        let key = match self.free_slots.pop() {
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

    /// Ends a session: its subscriptions leave the index.
    fn remove_session(&mut self, key: SessionKey) {
        let Some(slot) = self.slots[key.0 as usize].take() else { return };
        self.free_slots.push(key.0);
        self.by_client_id.remove(slot.session.client_id());
        crate::shrink::after_remove(&mut self.by_client_id);
        for filter in
            slot.session.subscriptions().map(|(filter, _)| filter.clone()).collect::<Vec<_>>()
        {
            self.unsubscribe_index(key, &filter);
        }
    }

    /// Detaches the connection of `key` (it is told through its waker) and
    /// lets the session react: the will of an abnormal end is published,
    /// in-flight messages wait for the next connection. A clean session
    /// ends here; any other ends after `max_session_expiry`.
    fn detach(&mut self, key: SessionKey, now: Instant) {
        let expiry = self.limits.max_session_expiry;
        let slot = self.slot_mut(key);
        if let Some(mut link) = slot.connection.take() {
            if let Some(waker) = link.waker.take() {
                waker.wake();
            }
        }
        slot.session.handle_connection_lost(now);
        // A 3.1.1 session with Clean Session 0 asks to be kept without
        // limit; the server's longest Session Expiry Interval applies (as
        // to a 5.0 client asking for 0xFFFFFFFF, section 3.1.2.11.2).
        slot.expires_at = expiry.map(|expiry| now + expiry);
        let ends_now = slot.clean || expiry == Some(Duration::ZERO);
        // A persistent session keeps what it subscribed to: the rest of a
        // large SUBSCRIBE is indexed now, there is no connection to pace.
        let backlog = slot.index_backlog.take();
        if !ends_now {
            for work in backlog.into_iter().flat_map(|backlog| *backlog) {
                self.run_index_work(key, work, usize::MAX, now);
            }
        }
        self.drain_events(key, now);
        if ends_now {
            self.remove_session(key);
        } else {
            self.schedule(key);
        }
    }

    /// Makes sure the sweep looks at `key` by its next deadline.
    pub(super) fn schedule(&mut self, key: SessionKey) {
        let Some(slot) = self.slots[key.0 as usize].as_mut() else { return };
        let Some(deadline) = slot.next_deadline() else { return };
        // A later entry already queued would come too late; an earlier one
        // will reschedule when it comes due.
        if slot.scheduled.is_none_or(|scheduled| deadline < scheduled) {
            slot.scheduled = Some(deadline);
            self.deadlines.push(Reverse((deadline, key)));
        }
    }

    /// The connection `connection` of `key` ended (socket closed, protocol
    /// error, keep alive expired or after DISCONNECT).
    pub fn handle_connection_closed(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
    ) {
        let attached = matches!(
            self.slots.get(key.0 as usize),
            Some(Some(slot)) if slot.connection.as_ref().is_some_and(|link| link.id == connection)
        );
        if attached {
            self.detach(key, now);
        }
    }

    /// Feeds one packet read from `connection` to its session. Returns
    /// false once the session has closed the connection (later packets are
    /// ignored); a protocol violation closes it that way too, after the
    /// will and a v5 DISCONNECT.
    pub fn handle_packet(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        packet: crate::protocol::Packet,
    ) -> Result<bool, ConnectionError> {
        let session = self.session_mut(key, connection).ok_or(ConnectionError::Detached)?;
        if let Err(error) = session.handle_packet(now, packet) {
            tracing::debug!(client_id = %session.client_id(), %error, "protocol violation");
            // A packet after the close is not a new violation.
            if error != SessionError::NotConnected {
                self.counters.protocol_violations += 1;
            }
        }
        self.drain_events(key, now);
        Ok(self.slot(key).connection.as_ref().is_some_and(|link| link.closed.is_none()))
    }

    /// Closes every connection whose keep alive expired [MQTT-3.1.2-24],
    /// and ends every session whose client stayed away past its expiry.
    pub fn sweep(&mut self, now: Instant) {
        while let Some((cause, count)) = self.drop_warnings.poll_due(now) {
            self.warn_dropped(cause, count);
        }
        while let Some(&Reverse((due, key))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.slots[key.0 as usize].as_mut() else { continue };
            if slot.scheduled != Some(due) {
                continue;
            }
            slot.scheduled = None;
            if slot.next_deadline().is_some_and(|deadline| deadline <= now) {
                if slot.connection.is_none() {
                    self.counters.sessions_expired += 1;
                    self.remove_session(key);
                    continue;
                }
                slot.session.handle_timeout(now);
                self.drain_events(key, now);
            }
            self.schedule(key);
        }
    }

    /// Encodes the session's pending output into `out`. Returns how many
    /// packets were written; 0 also while a SUBACK waits for the interest
    /// change to reach every shard.
    pub fn poll_transmit(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        out: &mut bytes::BytesMut,
    ) -> Result<usize, ConnectionError> {
        let acked = self.interest_acked_by_all();
        let slot = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut);
        let Some(slot) = slot else { return Err(ConnectionError::Detached) };
        let Some(link) = slot.connection.as_mut().filter(|link| link.id == connection) else {
            return Err(ConnectionError::Detached);
        };
        // Woken again when the interest acknowledgement arrives, or when
        // the last of a large SUBSCRIBE is indexed.
        link.notified = false;
        if link.await_interest > acked || slot.index_backlog.is_some() {
            return Ok(0);
        }
        let too_large = slot.session.counters().dropped_too_large;
        let written = slot.session.poll_transmit(now, out);
        let too_large = slot.session.counters().dropped_too_large - too_large;
        if out.len() >= crate::session::TRANSMIT_BATCH {
            // Messages may be left in the queue: the connection asks again
            // once this batch is written.
            link.notified = true;
        }
        let result = match &link.closed {
            Some(reason) => Err(ConnectionError::Closed(reason.clone())),
            None => Ok(written),
        };
        if too_large > 0 {
            self.count_drops(DropCause::TooLargeForClient, too_large, now);
        }
        result
    }

    /// Logs drops of `cause` unless they were logged in the last
    /// interval; then the sweep tells them later, summed.
    fn count_drops(&mut self, cause: DropCause, count: u64, now: Instant) {
        if let Some(count) = self.drop_warnings.record(cause, count, now) {
            self.warn_dropped(cause, count);
        }
    }

    fn warn_dropped(&self, cause: DropCause, count: u64) {
        tracing::warn!(
            shard = %self.id,
            %cause,
            dropped = count,
            "messages dropped: {} (at most one line per cause every {} s)",
            cause.hint(),
            crate::shard::drops::WARNING_INTERVAL.as_secs()
        );
    }

    /// Registers the connection task's waker; returns true when output or
    /// a close arrived since the last [`Shard::poll_transmit`].
    pub fn register_waker(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        waker: &Waker,
    ) -> bool {
        let slot = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut);
        match slot.and_then(|slot| slot.connection.as_mut()).filter(|link| link.id == connection) {
            Some(link) => {
                if !link.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    link.waker = Some(waker.clone());
                }
                link.notified
            }
            // Detached: the task must run to notice.
            None => true,
        }
    }

    /// Whether the broker is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Starts the shutdown: no new sessions, and every connection task is
    /// woken to close.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for link in self.slots.iter_mut().flatten().filter_map(|slot| slot.connection.as_mut()) {
            link.notified = true;
            if let Some(waker) = link.waker.take() {
                waker.wake();
            }
        }
    }

    fn notify(&mut self, key: SessionKey) {
        if let Some(link) = self.slot_mut(key).connection.as_mut() {
            if !link.notified {
                link.notified = true;
                if let Some(waker) = link.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Acts on everything the session of `key` asked for.
    fn drain_events(&mut self, key: SessionKey, now: Instant) {
        while let Some(event) = self.slot_mut(key).session.poll_event() {
            match event {
                SessionEvent::Publish(message) => {
                    self.counters.messages_received += 1;
                    self.route(message, now);
                }
                SessionEvent::Will(message) => self.route(message, now),
                SessionEvent::Subscribe(grants) => {
                    self.queue_index_work(key, IndexWork::Subscribe(grants.into_iter()), now);
                }
                SessionEvent::Unsubscribe(filters) => {
                    self.queue_index_work(key, IndexWork::Unsubscribe(filters.into_iter()), now);
                }
                SessionEvent::Closed(reason) => {
                    if let Some(link) = self.slot_mut(key).connection.as_mut() {
                        link.closed = Some(reason);
                    }
                }
            }
        }
        self.notify(key);
    }

    /// Entries waiting for interest acknowledgements.
    #[cfg(test)]
    pub(super) fn interest_waiters(&self) -> usize {
        self.interest_waiters.len()
    }

    /// Indexes a session's subscribe or unsubscribe: at once when it is
    /// small and nothing is waiting before it, else in turns driven by the
    /// connection ([`Shard::handle_index_work`]).
    fn queue_index_work(&mut self, key: SessionKey, work: IndexWork, now: Instant) {
        let slot = self.slot_mut(key);
        match &mut slot.index_backlog {
            None if work.len() <= INDEX_WORK_PER_TURN => {
                self.run_index_work(key, work, usize::MAX, now);
            }
            Some(backlog) => backlog.push_back(work),
            None => {
                slot.index_backlog = Some(Box::new(VecDeque::from([work])));
                self.handle_index_turn(key, now);
            }
        }
    }

    /// Whether `key` has subscribes or unsubscribes not fully indexed: its
    /// connection then calls [`Shard::handle_index_work`], yielding in
    /// between, before it reads further packets.
    pub fn has_index_work(&self, key: SessionKey) -> bool {
        self.slots
            .get(key.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|slot| slot.index_backlog.is_some())
    }

    /// Indexes up to [`INDEX_WORK_PER_TURN`] more filters of `key`'s
    /// pending subscribes and unsubscribes; once none is left, the
    /// connection is woken for the SUBACK.
    pub fn handle_index_work(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        self.session_mut(key, connection).ok_or(ConnectionError::Detached)?;
        self.handle_index_turn(key, now);
        Ok(())
    }

    fn handle_index_turn(&mut self, key: SessionKey, now: Instant) {
        let mut budget = INDEX_WORK_PER_TURN;
        while budget > 0 {
            let slot = self.slot_mut(key);
            let Some(backlog) = slot.index_backlog.as_mut() else { return };
            let Some(work) = backlog.pop_front() else {
                slot.index_backlog = None;
                self.notify(key);
                return;
            };
            budget = self.run_index_work(key, work, budget, now);
        }
    }

    /// Indexes up to `budget` filters of `work`; what is left goes back to
    /// the front of the backlog. Returns the budget left.
    fn run_index_work(
        &mut self,
        key: SessionKey,
        mut work: IndexWork,
        mut budget: usize,
        now: Instant,
    ) -> usize {
        while budget > 0 {
            let done = match &mut work {
                IndexWork::Subscribe(grants) => {
                    grants.next().map(|grant| self.subscribe(key, grant, now)).is_none()
                }
                IndexWork::Unsubscribe(filters) => {
                    filters.next().map(|filter| self.unsubscribe_index(key, &filter)).is_none()
                }
            };
            if done {
                return budget;
            }
            budget -= 1;
        }
        if work.len() > 0 {
            let slot = self.slot_mut(key);
            slot.index_backlog.get_or_insert_with(Box::default).push_front(work);
        }
        0
    }

    /// Routes an accepted message: the retained store, local subscribers,
    /// every other shard with interest (one batch entry per shard, not per
    /// subscriber), and one member of each matching shared group, on
    /// whichever shard it lives [MQTT-4.8.2].
    pub fn route(&mut self, message: Arc<Message>, now: Instant) {
        if message.retain {
            self.store_retained(&message);
        }
        self.deliver_local(&message, now);
        let mut chosen: smallvec::SmallVec<[(ShardId, TopicFilter); 2]> = smallvec::SmallVec::new();
        let cursor = &mut self.group_cursor;
        let shards = self.interest.route(&message.topic, |group, members| {
            *cursor = cursor.wrapping_add(1);
            // One allocation per matched group (not per subscriber): the
            // group's name travels with the message.
            if let (Some(shard), Some(filter)) = (pick(members, *cursor), group_filter(group)) {
                chosen.push((shard, filter));
            }
        });
        let me = self.id;
        for shard in shards.iter().filter(|&shard| shard != me) {
            if !self.outbox.push_publish(shard.index(), &message) {
                self.count_drops(DropCause::PeerOverloaded, 1, now);
            }
        }
        for (shard, group) in chosen {
            if shard == self.id {
                self.deliver_to_group(&group, &message, now);
            } else {
                let forward = ShardMessage::GroupPublish { group, message: Arc::clone(&message) };
                self.outbox.push(shard.index(), forward);
            }
        }
    }

    /// [MQTT-3.3.1-5] A retained message replaces the topic's previous one;
    /// [MQTT-3.3.1-10] an empty payload deletes it. It lives on the shard
    /// that owns its topic.
    fn store_retained(&mut self, message: &Arc<Message>) {
        let owner = home_shard(message.topic.as_str().as_bytes(), self.nr_shards);
        // The stored copy owns exactly its payload, so a retained message
        // does not pin the read buffer it arrived in.
        let stored = Arc::new(Message {
            payload: Bytes::copy_from_slice(&message.payload),
            ..Message::clone(message)
        });
        if owner == self.id {
            self.retained.set(stored);
        } else {
            self.outbox.push(owner.index(), ShardMessage::Retain(stored));
        }
    }

    /// Queues `message` to every local session with a matching plain
    /// subscription: once per session, at the highest QoS of its matching
    /// subscriptions, with all their identifiers [MQTT-3.3.5-1]. Shared
    /// groups are served through [`Shard::route`].
    fn deliver_local(&mut self, message: &Arc<Message>, now: Instant) {
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.subscriptions.for_each_match_grouped(&message.topic, |found| {
            if let Match::Subscriber { key, value } = found {
                matches.push((key, *value));
            }
        });
        matches.sort_unstable_by_key(|(key, _)| *key);
        let mut i = 0;
        while i < matches.len() {
            let key = matches[i].0;
            let mut options = matches[i].1.options;
            let mut ids = crate::protocol::SubscriptionIds::new();
            while i < matches.len() && matches[i].0 == key {
                let subscription = &matches[i].1;
                options.qos = options.qos.max(subscription.options.qos);
                options.retain_as_published |= subscription.options.retain_as_published;
                ids.extend(subscription.subscription_id);
                i += 1;
            }
            self.deliver(key, message, options, ids, false, now);
        }
        self.matches = matches;
    }

    /// Delivers `message` to the next member of the local shared group
    /// `group`; dropped (and counted) if the group has no member here any
    /// more.
    fn deliver_to_group(&mut self, group: &TopicFilter, message: &Arc<Message>, now: Instant) {
        let (share_name, filter) = (group.share_name().unwrap_or_default(), group.filter());
        let mut member = None;
        self.subscriptions.for_each_match_grouped(&message.topic, |found| {
            if let Match::Group(candidate) = found {
                if member.is_none()
                    && candidate.share_name() == share_name
                    && candidate.filter() == filter
                {
                    member = candidate.next_member().map(|(key, value)| (key, *value));
                }
            }
        });
        match member {
            Some((key, subscription)) => {
                let ids = subscription.subscription_id.into_iter().collect();
                self.deliver(key, message, subscription.options, ids, false, now);
            }
            None => {
                self.counters.deliveries_dropped += 1;
                self.count_drops(DropCause::NoGroupMember, 1, now);
            }
        }
    }

    fn deliver(
        &mut self,
        key: SessionKey,
        message: &Arc<Message>,
        options: SubscriptionOptions,
        subscription_ids: crate::protocol::SubscriptionIds,
        retained: bool,
        now: Instant,
    ) {
        let delivery = Delivery {
            message: Arc::clone(message),
            options,
            subscription_ids,
            from_retained: retained,
        };
        match self.slot_mut(key).session.handle_delivery(now, delivery) {
            DeliveryOutcome::Queued => {
                self.counters.deliveries += 1;
                self.notify(key);
            }
            DeliveryOutcome::Dropped(reason) => {
                self.counters.deliveries_dropped += 1;
                let cause = match reason {
                    DropReason::QueueFull => DropCause::QueueFull,
                    DropReason::RetainedLimit => DropCause::RetainedLimit,
                    // What the subscriber asked for, not a limit.
                    DropReason::Offline | DropReason::Expired | DropReason::NoLocal => return,
                };
                self.count_drops(cause, 1, now);
            }
        }
    }

    /// Adds a subscription of `key` to the index, announces new interest
    /// to the other shards, and asks for the retained messages it matches.
    fn subscribe(&mut self, key: SessionKey, grant: SubscriptionGrant, now: Instant) {
        let SubscriptionGrant { filter, subscribed, is_new } = grant;
        let (options, subscription_id) = (subscribed.options, subscribed.identifier);
        let subscription = LocalSubscription { options, subscription_id };
        let replaced = self.subscriptions.insert(&filter, key, subscription).is_some();
        if let Some(delta) =
            (!replaced).then(|| self.local_interest.handle_subscribe(&filter)).flatten()
        {
            let revision = self.announce_interest(delta);
            let link = self.slot_mut(key).connection.as_mut();
            if let Some(link) = link {
                link.await_interest = revision;
                self.interest_waiters.push_back((revision, key));
            }
        }
        // [MQTT-3.3.1-6] Retained messages matching a new subscription are
        // sent; v5 Retain Handling may say otherwise [MQTT-3.3.1-9..-11].
        let send_retained = match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => is_new,
            RetainHandling::DoNotSend => false,
        };
        if !send_retained || filter.is_shared() {
            return;
        }
        let reply_to = RetainedReplyTo {
            shard: self.id,
            client_id: self.slot(key).session.client_id().clone(),
            options,
            subscription_id,
        };
        let owners: Vec<ShardId> = if filter.has_wildcards() {
            (0..self.nr_shards).filter_map(ShardId::from_index).collect()
        } else {
            vec![home_shard(filter.filter().as_bytes(), self.nr_shards)]
        };
        for owner in owners {
            if owner == self.id {
                let messages = self.retained_matching(&filter, now);
                self.deliver_retained(&reply_to, &messages, now);
            } else {
                let query = ShardMessage::RetainedQuery {
                    filter: filter.clone(),
                    reply_to: reply_to.clone(),
                };
                self.outbox.push(owner.index(), query);
            }
        }
    }

    fn retained_matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Arc<Message>> {
        let mut messages = Vec::new();
        self.retained.for_each_match(filter, now, |message| messages.push(Arc::clone(message)));
        messages
    }

    fn deliver_retained(&mut self, to: &RetainedReplyTo, messages: &[Arc<Message>], now: Instant) {
        let Some(&key) = self.by_client_id.get(&to.client_id) else { return };
        let ids = to.subscription_id.into_iter().collect::<crate::protocol::SubscriptionIds>();
        for message in messages {
            // [MQTT-3.3.1-8] Sent with RETAIN set.
            self.deliver(key, message, to.options, ids.clone(), true, now);
        }
    }

    /// Removes a subscription of `key` from the index; the last local
    /// subscriber of a filter withdraws the shard's interest.
    fn unsubscribe_index(&mut self, key: SessionKey, filter: &TopicFilter) {
        if self.subscriptions.remove(filter, key).is_some() {
            if let Some(delta) = self.local_interest.handle_unsubscribe(filter) {
                self.announce_interest(delta);
            }
        }
    }

    /// Applies an interest change of this shard to its own replica and
    /// sends it to every peer; returns its revision.
    fn announce_interest(&mut self, delta: InterestDelta) -> u64 {
        self.interest.apply(&delta);
        let revision = delta.revision;
        // Applied here in the order it was made: nothing older from this
        // shard can still arrive, so the replica keeps no removal record
        // of it (which would hold the filter's text for good).
        self.interest.forget_through(self.id, revision);
        for peer in (0..self.nr_shards).filter(|&peer| peer != self.id.index()) {
            self.outbox.push(peer, ShardMessage::Interest(delta.clone()));
        }
        revision
    }

    /// The latest interest revision of this shard that every peer applied.
    fn interest_acked_by_all(&self) -> u64 {
        (0..self.nr_shards)
            .filter(|&peer| peer != self.id.index())
            .map(|peer| self.interest_acked[peer])
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Handles a message from shard `from` (all but hand-offs, which the
    /// network layer takes).
    pub fn handle_shard_message(&mut self, from: ShardId, message: ShardMessage, now: Instant) {
        match message {
            ShardMessage::Publish(batch) => {
                for message in &batch {
                    self.deliver_local(message, now);
                }
            }
            ShardMessage::GroupPublish { group, message } => {
                self.deliver_to_group(&group, &message, now);
            }
            ShardMessage::Interest(delta) => {
                let revision = delta.revision;
                self.interest.apply(&delta);
                // Channels deliver each origin's deltas in order, so nothing
                // older can still arrive.
                self.interest.forget_through(from, revision);
                self.outbox.push(from.index(), ShardMessage::InterestAck { revision });
            }
            ShardMessage::InterestAck { revision } => {
                let acked = &mut self.interest_acked[from.index()];
                *acked = (*acked).max(revision);
                let acked_by_all = self.interest_acked_by_all();
                while let Some(&(revision, key)) = self.interest_waiters.front() {
                    if revision > acked_by_all {
                        break;
                    }
                    self.interest_waiters.pop_front();
                    let link = self.slots[key.0 as usize]
                        .as_mut()
                        .and_then(|slot| slot.connection.as_mut())
                        // A later connection, or a later revision still
                        // awaited, is not released by this entry.
                        .filter(|link| (1..=acked_by_all).contains(&link.await_interest));
                    if let Some(link) = link {
                        link.await_interest = 0;
                        link.notified = true;
                        if let Some(waker) = link.waker.take() {
                            waker.wake();
                        }
                    }
                }
            }
            ShardMessage::Retain(message) => {
                self.retained.set(message);
            }
            ShardMessage::RetainedQuery { filter, reply_to } => {
                let messages = self.retained_matching(&filter, now);
                if !messages.is_empty() {
                    let shard = reply_to.shard.index();
                    self.outbox.push(shard, ShardMessage::Retained { reply_to, messages });
                }
            }
            ShardMessage::Retained { reply_to, messages } => {
                self.deliver_retained(&reply_to, &messages, now);
            }
        }
    }
}

/// Why a connection task must stop.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Another connection took the session over, or the session ended.
    #[error("connection detached from its session")]
    Detached,
    /// The session closed the connection.
    #[error("closed: {0:?}")]
    Closed(CloseReason),
}

/// The shard at position `cursor` (modulo) of `members`.
fn pick(members: ShardSet, cursor: usize) -> Option<ShardId> {
    let len = members.len();
    (len > 0).then(|| members.iter().nth(cursor % len)).flatten()
}

/// The `$share/{group}/{filter}` filter of a matched group.
fn group_filter(group: GroupKey<'_>) -> Option<TopicFilter> {
    TopicFilter::new(format!("$share/{}/{}", group.share_name, group.filter)).ok()
}
