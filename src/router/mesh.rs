//! The transport between the shards of this process: a full mesh of
//! glommio shared-nothing channels, one flusher task per peer draining the
//! [`Outbox`] into it and one receiver task per peer handing what arrives
//! to the shard. The only code that imports `glommio::channels`.

use super::messages::RouterMessage;
use super::{Outbox, ShardId};
use futures_lite::future::poll_fn;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use std::rc::Rc;

/// Slots of each shard-to-shard channel. Each slot carries a batch.
pub const CHANNEL_CAPACITY: usize = 1024;

/// The mesh before the shards join it: created once, cloned into every
/// shard's executor.
#[derive(Clone, Debug)]
pub struct MeshSetup(MeshBuilder<RouterMessage, Full>);

impl MeshSetup {
    /// A full mesh of bounded channels between `nr_shards` shards.
    pub fn new(nr_shards: usize) -> Self {
        Self(MeshBuilder::full(nr_shards, CHANNEL_CAPACITY))
    }
}

/// A shard's end of the mesh.
#[derive(Debug)]
pub struct Mesh {
    senders: Senders<RouterMessage>,
    receivers: Vec<(usize, ConnectedReceiver<RouterMessage>)>,
}

impl Mesh {
    /// Joins the mesh. Every shard must call this (after anything that
    /// could fail), or the others wait forever.
    pub async fn join(setup: &MeshSetup) -> Result<Self, MeshError> {
        let (senders, mut receivers) = setup.0.clone().join().await.map_err(|_| MeshError)?;
        Ok(Self { senders, receivers: receivers.streams() })
    }

    /// This shard's number.
    pub fn shard(&self) -> ShardId {
        // The configuration allows at most MAX_SHARDS shards.
        ShardId::from_index(self.senders.peer_id()).expect("shard count checked by the config")
    }

    /// Starts one task per peer that sends what `outbox` queues for it,
    /// and one per peer that hands every message received to `dispatch`.
    pub fn start(
        self,
        outbox: Rc<Outbox>,
        dispatch: impl Fn(ShardId, RouterMessage) + Clone + 'static,
    ) -> MeshTasks {
        let senders = Rc::new(self.senders);
        let me = senders.peer_id();
        let flushers = (0..senders.nr_consumers())
            .filter(|&peer| peer != me)
            .map(|peer| {
                let (outbox, senders) = (Rc::clone(&outbox), Rc::clone(&senders));
                glommio::spawn_local(async move {
                    while let Some(message) = poll_fn(|cx| outbox.poll_pop(peer, cx)).await {
                        // A failed send gives the message back; dropping it
                        // closes any socket it carries.
                        if senders.send_to(peer, message).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        let receivers = self
            .receivers
            .into_iter()
            .map(|(peer, receiver)| {
                let dispatch = dispatch.clone();
                let from = ShardId::from_index(peer).expect("shard count checked by the config");
                glommio::spawn_local(async move {
                    while let Some(message) = receiver.recv().await {
                        dispatch(from, message);
                    }
                })
            })
            .collect();
        MeshTasks { outbox, senders, flushers, receivers }
    }
}

/// The running tasks of a shard's mesh end.
#[derive(Debug)]
pub struct MeshTasks {
    outbox: Rc<Outbox>,
    senders: Rc<Senders<RouterMessage>>,
    flushers: Vec<glommio::Task<()>>,
    receivers: Vec<glommio::Task<()>>,
}

impl MeshTasks {
    /// Sends what is still queued, closes this shard's channels, and waits
    /// until every peer closed its channels to this shard too.
    pub async fn shutdown(self) {
        self.outbox.close();
        for flusher in self.flushers {
            flusher.await;
        }
        self.senders.close();
        for receiver in self.receivers {
            receiver.await;
        }
    }
}

/// A shard could not join the mesh.
#[derive(Debug, thiserror::Error)]
#[error("cannot join the shard mesh")]
pub struct MeshError;
