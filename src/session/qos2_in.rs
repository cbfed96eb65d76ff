//! The packet ids of QoS 2 publishes a session received and answered with
//! PUBREC, not yet released by PUBREL (method B of [MQTT-4.3.3-2]).

use crate::protocol::PacketId;
use hashbrown::HashSet;

/// The set is boxed on first use: sessions that never receive QoS 2 (most
/// devices) pay one pointer for it instead of an empty table's 40 bytes.
/// Once used it stays, so a QoS 2 stream allocates no box per message.
#[derive(Debug, Default)]
pub(super) struct InboundQos2(Option<Box<HashSet<PacketId>>>);

impl InboundQos2 {
    pub(super) fn contains(&self, id: PacketId) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(&id))
    }

    /// Adds `id`; whether it was new.
    pub(super) fn insert(&mut self, id: PacketId) -> bool {
        self.0.get_or_insert_with(Box::default).insert(id)
    }

    /// Removes `id`; whether it was there.
    pub(super) fn remove(&mut self, id: PacketId) -> bool {
        self.0.as_mut().is_some_and(|ids| ids.remove(&id))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.0.iter().flat_map(|ids| ids.iter().copied())
    }
}

impl FromIterator<PacketId> for InboundQos2 {
    fn from_iter<I: IntoIterator<Item = PacketId>>(ids: I) -> Self {
        let ids: HashSet<PacketId> = ids.into_iter().collect();
        Self((!ids.is_empty()).then(|| Box::new(ids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    #[test]
    fn an_unused_set_holds_nothing_and_allocates_nothing() {
        let ids = InboundQos2::default();
        assert!(!ids.contains(id(1)));
        assert!(ids.0.is_none());
        assert_eq!(std::mem::size_of::<InboundQos2>(), 8);
    }

    #[test]
    fn ids_are_added_once_and_removed_once() {
        let mut ids = InboundQos2::default();
        assert!(ids.insert(id(7)));
        assert!(!ids.insert(id(7)));
        assert!(ids.contains(id(7)));
        assert!(ids.remove(id(7)));
        assert!(!ids.remove(id(7)));
        assert!(!ids.contains(id(7)));
        let restored: InboundQos2 = [id(1), id(2)].into_iter().collect();
        let mut listed: Vec<u16> = restored.iter().map(PacketId::get).collect();
        listed.sort_unstable();
        assert_eq!(listed, [1, 2]);
    }
}
