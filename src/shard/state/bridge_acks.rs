//! QoS 1/2 across nodes, the shard's side: a PUBACK/PUBREC waits until
//! every other node interested in the message accepted it (issue 17 item
//! 8; see `router::cluster`). The session holds the acknowledgement
//! behind a barrier ([`SessionEvent::Bridged`](crate::session::SessionEvent));
//! the shard keeps it with the ticket the bridge took the message under,
//! and releases it when the bridge answers the ticket. Past the shard's
//! share of `max_pending_acks`, the publisher is held (it stops being
//! read) until half of them came back: a NATS partition slows publishers
//! instead of growing without bound.
//!
//! The other way: a QoS 1/2 message from another node is acknowledged to
//! it once this shard routed it (and, with `durability = "always"`, once
//! that is durable), so that the publisher's PUBACK covers it.

use super::Shard;
use crate::router::cluster::RemoteAck;
use crate::session::AckToken;
use crate::shard::slots::SessionKey;
use hashbrown::HashMap;

/// The acknowledgements waiting, by ticket.
#[derive(Debug, Default)]
pub(super) struct BridgeWaits {
    waits: HashMap<u64, (SessionKey, AckToken)>,
    /// Publishers are held until the waits drop to half the cap.
    holding: bool,
}

impl Shard {
    /// Another node's QoS 1/2 message was routed here: it is acknowledged
    /// to that node now, or with `durability = "always"` once what
    /// routing it logged is durable (see `state/persist.rs`).
    pub(super) fn remote_routed(&mut self, ack: RemoteAck) {
        if let Some(ack) = self.durable_wait_remote(ack) {
            self.accept_remote(ack);
        }
    }

    /// Acknowledges another node's message through the bridge.
    pub(super) fn accept_remote(&self, ack: RemoteAck) {
        if let Some(link) = &self.cluster {
            link.accept_remote(ack);
        }
    }

    /// Refuses another node's copy of a message for a shared group that
    /// has no member here any more (see `state/cluster.rs`).
    pub(super) fn refuse_remote(&self, ack: RemoteAck) {
        if let Some(link) = &self.cluster {
            link.refuse_remote(ack);
        }
    }

    /// The acknowledgement held by `token` waits for the other nodes to
    /// accept the PUBLISH just routed, when the bridge took it (a
    /// local-only topic, or a full queue to the bridge, releases it).
    pub(super) fn bridge_wait(&mut self, key: SessionKey, token: AckToken) {
        let Some(ticket) = self.cluster.as_ref().and_then(|link| link.take_ticket()) else {
            self.release_acks(key, token);
            return;
        };
        self.bridge_waits.waits.insert(ticket, (key, token));
        let cap = self.cluster.as_ref().map_or(usize::MAX, |link| link.max_pending());
        if self.bridge_waits.waits.len() >= cap {
            self.bridge_waits.holding = true;
            self.outbox.hold_bridge();
        }
    }

    /// Every node interested in the message of `ticket` accepted it (or
    /// was taken for dead).
    pub(super) fn bridge_accepted(&mut self, ticket: u64) {
        if let Some((key, token)) = self.bridge_waits.waits.remove(&ticket) {
            self.release_acks(key, token);
        }
        let cap = self.cluster.as_ref().map_or(usize::MAX, |link| link.max_pending());
        if self.bridge_waits.holding && self.bridge_waits.waits.len() <= cap / 2 {
            self.bridge_waits.holding = false;
            self.outbox.release_bridge();
        }
    }
}
