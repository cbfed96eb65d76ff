//! Where a client id lives: its home shard, by a hash that is stable across
//! processes and restarts (FNV-1a, never a randomly seeded hasher), and the
//! ids the broker assigns to clients that send none.

use super::interest::{ShardId, MAX_SHARDS};

/// 64-bit FNV-1a: fixed constants, so the same bytes hash the same in every
/// process and on every machine.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// The shard that owns sessions with this client id.
pub fn home_shard(client_id: &[u8], nr_shards: usize) -> ShardId {
    debug_assert!(nr_shards > 0 && nr_shards <= MAX_SHARDS);
    // The remainder is below nr_shards <= MAX_SHARDS.
    ShardId::from_index((stable_hash(client_id) % nr_shards as u64) as usize)
        .expect("fewer than MAX_SHARDS shards")
}

/// Assigns client ids to clients that connect with an empty one
/// [MQTT-3.1.3-6], choosing ids that hash to the accepting shard so the
/// connection never needs a hand-off.
#[derive(Debug)]
pub struct ClientIdAssigner {
    shard: ShardId,
    nr_shards: usize,
    /// Distinguishes this process's ids from an earlier run's persistent
    /// sessions.
    boot: u64,
    next: u64,
}

impl ClientIdAssigner {
    /// An assigner for `shard`; `boot` should differ between runs (e.g. the
    /// start time in nanoseconds).
    pub fn new(shard: ShardId, nr_shards: usize, boot: u64) -> Self {
        Self { shard, nr_shards, boot, next: 0 }
    }

    /// A fresh client id whose home is this shard: at most 23 characters of
    /// `[0-9a-zA-Z]`, the range every server must accept [MQTT-3.1.3-5].
    pub fn assign(&mut self) -> String {
        loop {
            self.next += 1;
            let id = format!("auto{:x}x{:x}", self.boot & 0xFFFF_FFFF, self.next);
            if home_shard(id.as_bytes(), self.nr_shards) == self.shard {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn assigned_ids_are_valid_and_stay_home() {
        for nr_shards in [1, 2, 3, 16, 64] {
            for shard in 0..nr_shards {
                let mut assigner =
                    ClientIdAssigner::new(ShardId::from_index(shard).unwrap(), nr_shards, u64::MAX);
                let a = assigner.assign();
                let b = assigner.assign();
                assert_ne!(a, b);
                for id in [a, b] {
                    assert!(
                        id.len() <= 23 && id.bytes().all(|c| c.is_ascii_alphanumeric()),
                        "{id}"
                    );
                    assert_eq!(home_shard(id.as_bytes(), nr_shards).index(), shard);
                }
            }
        }
    }
}
