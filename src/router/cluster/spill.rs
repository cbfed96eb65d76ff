//! QoS 1/2 messages a shard could not hand the bridge (its lane was full:
//! NATS slow or unreachable, or a flood of QoS 0): they wait in the shard,
//! in order, and a task hands them over as the lane drains. Never dropped:
//! their PUBACK/PUBREC waits for the other nodes (see `bridge_acks` in the
//! shard), and the shard's share of `max_pending_acks` bounds them, since
//! past it the shard holds its publishers.

use super::{ClusterLink, Outgoing};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// How often a shard with spilled messages tries the lane again.
const RETRY: Duration = Duration::from_millis(1);

/// The spilled messages of one shard.
#[derive(Debug, Default)]
pub(super) struct Spill {
    waiting: RefCell<VecDeque<Outgoing>>,
    /// A task is handing them over.
    draining: Cell<bool>,
}

impl Spill {
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.borrow().is_empty()
    }
}

impl ClusterLink {
    /// `outgoing` waits for room in the lane, after those already waiting.
    pub(super) fn spill_push(self: &Rc<Self>, outgoing: Outgoing) {
        self.spill.waiting.borrow_mut().push_back(outgoing);
        if self.spill.draining.replace(true) {
            return;
        }
        let link = Rc::clone(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETRY).await;
                let mut waiting = link.spill.waiting.borrow_mut();
                while let Some(outgoing) = waiting.pop_front() {
                    if let Err(outgoing) = link.shared.outbound.push_message(outgoing) {
                        waiting.push_front(outgoing);
                        break;
                    }
                }
                link.bell.ring();
                // A closed lane (the node stopping) takes nothing more.
                if waiting.is_empty() || link.shared.outbound.is_closed() {
                    waiting.clear();
                    link.spill.draining.set(false);
                    return;
                }
            }
        })
        .detach();
    }
}
