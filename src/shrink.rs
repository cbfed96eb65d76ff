//! Giving back the room of hash maps that shrank.
//!
//! A hash map (hashbrown's, like std's) never shrinks on removal: a map that
//! once held a hundred thousand subscriptions keeps their room after they
//! leave, for as long as it lives. The maps of the subscription index, the
//! interest replica and the sessions call [`after_remove`] after removing
//! entries, so that their memory follows what they hold.

use hashbrown::HashMap;
use std::hash::{BuildHasher, Hash};
use std::mem::size_of;

/// Shrinks `map` to fit once it has room for more than four times its
/// entries (plus a few, so that a map of one entry is left alone).
///
/// The room is counted in buckets, from the bytes the map holds (a bucket
/// is an entry and its control byte): `capacity()` would not do, as it
/// drops with every removal that leaves a tombstone while the buckets stay.
/// The cost stays amortized O(1) per removal: a map shrunk to fit has
/// fewer than 2.3 buckets per entry (hashbrown rounds the bucket count up
/// to a power of two, at most 7/8 full), so the next shrink comes only
/// after about half of its entries left.
pub(crate) fn after_remove<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    let buckets = map.allocation_size() / (size_of::<(K, V)>() + 1);
    if buckets > 4 * map.len() + 4 {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_four_times_the_room_and_frees_when_empty() {
        let mut map: HashMap<u32, u32> = (0..100_000).map(|i| (i, i)).collect();
        let peak = map.allocation_size();
        let mut shrinks = 0;
        for i in 0..100_000 {
            let before = map.allocation_size();
            map.remove(&i);
            after_remove(&mut map);
            shrinks += usize::from(map.allocation_size() != before);
            let buckets = map.allocation_size() / 9;
            assert!(buckets <= 4 * map.len() + 4, "{} entries, {buckets} buckets", map.len());
        }
        assert_eq!(map.allocation_size(), 0, "{peak} bytes at the peak");
        // Each shrink comes after about half the entries left: a handful
        // in all, not one per removal.
        assert!(shrinks <= 20, "{shrinks} shrinks");
    }

    #[test]
    fn a_map_that_just_shrank_does_not_shrink_again() {
        // Shrinking on every removal would make removal O(n).
        for len in 1..300u32 {
            let mut map: HashMap<u32, u32> = (0..len * 8).map(|i| (i, i)).collect();
            map.retain(|k, _| *k < len);
            after_remove(&mut map);
            let fitted = map.allocation_size();
            after_remove(&mut map);
            assert_eq!(map.allocation_size(), fitted, "{len} entries");
        }
    }
}
