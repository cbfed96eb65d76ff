//! Backpressure on one connection: the network layer stops reading a
//! connection whose QoS 1/2 publish went to a congested peer, until that
//! peer drains (see `router::Outbox::take_held_by`). The shard's part is
//! the keep alive, which must not expire a client the server itself
//! stopped reading.

use super::state::{ConnectionError, ConnectionId, SessionKey, Shard};
use std::time::Instant;

impl Shard {
    /// The connection `connection` of `key` stopped (`held`) or resumed
    /// reading its socket. While held its keep alive does not run; on
    /// release it restarts from `now` (see `Session::handle_held` for why,
    /// against [MQTT-3.1.2-24]).
    pub fn handle_held(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        held: bool,
    ) -> Result<(), ConnectionError> {
        let session = self.session_mut(key, connection).ok_or(ConnectionError::Detached)?;
        session.handle_held(now, held);
        // Held: the deadline is gone and its entry is skipped when it comes
        // due. Released: a deadline again, which the sweep must look at.
        self.schedule(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{Connect, ProtocolVersion};
    use crate::router::{Outbox, ShardId};
    use crate::session::SessionLimits;
    use crate::shard::{ConnectionError, Placement, Shard};
    use bytes::BytesMut;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    /// [MQTT-3.1.2-24] counts packets the client sent; while the server
    /// holds a connection back it reads none, so the sweep must not close
    /// it then, nor right after: the keep alive restarts on release.
    #[test]
    fn a_held_connection_is_not_expired_by_the_sweep() {
        let outbox = Rc::new(Outbox::new(1));
        let mut shard =
            Shard::new(ShardId::from_index(0).unwrap(), 1, SessionLimits::default(), outbox, 1);
        let start = Instant::now();
        let connect = Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 1,
            client_id: "held".into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let Placement::Attached { key, connection } = shard.place(start, &connect, None) else {
            panic!("not attached")
        };
        let expired = |shard: &mut Shard, at: Instant| {
            shard.sweep(at);
            let mut out = BytesMut::new();
            matches!(
                shard.poll_transmit(key, connection, at, &mut out),
                Err(ConnectionError::Closed(_))
            )
        };
        shard.handle_held(key, connection, start, true).unwrap();
        let released = start + Duration::from_secs(30);
        assert!(!expired(&mut shard, released), "expired while held");
        shard.handle_held(key, connection, released, false).unwrap();
        assert!(!expired(&mut shard, released + Duration::from_millis(1400)));
        assert!(
            expired(&mut shard, released + Duration::from_millis(1500)),
            "a client silent for 1.5 keep alives after the release is closed"
        );
    }
}
