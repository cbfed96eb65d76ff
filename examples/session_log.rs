//! Writes a durable log holding SESSIONS persistent sessions, each with
//! one subscription and MESSAGES queued QoS 1 messages, spread over the
//! shards their client ids are homed on, to measure how long a broker
//! takes to replay it:
//!
//! ```text
//! cargo run --release --example session_log -- /tmp/ringmq-100k 100000 10 2
//! ringmq serve --shards 2 --config <(printf 'data_dir = "/tmp/ringmq-100k"\n[limits]\nmax_queued_messages = 100000\n') --log info
//! ```
//!
//! Each shard logs `durable log replayed ... sessions=N queued=M ms=T`.
//! Client ids are `gen-{i}`, each subscribed to `gen/{i}/#`; each message
//! is its own (64-byte payload, topic `gen/{i}/{j}`), so the log holds a
//! message record and a queue entry per message.

use bytes::{Bytes, BytesMut};
use ringmq::message::wire::Clocks;
use ringmq::message::Message;
use ringmq::protocol::{
    BoxedPublishProperties, QoS, SubscriptionIds, SubscriptionOptions, TopicFilter, TopicName,
};
use ringmq::router::home_shard;
use ringmq::store::record::{self, Record, SegmentHeader, SegmentKind};
use ringmq::store::{StoredEntry, StoredSubscription};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, sessions, messages, shards] = args.as_slice() else {
        return Err("usage: session_log DATA_DIR SESSIONS MESSAGES_PER_SESSION SHARDS".into());
    };
    let dir = std::path::Path::new(dir);
    let (sessions, messages) = (sessions.parse::<u64>()?, messages.parse::<u64>()?);
    let shards: u16 = shards.parse()?;
    if dir.exists() {
        return Err(format!("{} exists: give a new directory", dir.display()).into());
    }
    let clocks = Clocks::read();
    let mut segments: Vec<BytesMut> = (0..shards)
        .map(|shard| {
            let header = SegmentHeader { kind: SegmentKind::Appends, shard, shards, sequence: 1 };
            BytesMut::from(&header.encode()[..])
        })
        .collect();
    let mut next_mid = vec![1u64; usize::from(shards)];
    let payload = Bytes::from(vec![b'x'; 64]);
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    for i in 0..sessions {
        let client_id = format!("gen-{i}");
        let shard = home_shard(client_id.as_bytes(), usize::from(shards)).index();
        let out = &mut segments[shard];
        let sid = i + 1;
        let expiry = Some(std::time::Duration::from_secs(86_400));
        record::encode(
            &Record::SessionOpen {
                sid,
                client_id: client_id.into(),
                expiry,
                username: None,
                will: None,
            },
            clocks,
            out,
        )?;
        let filter = TopicFilter::new(format!("gen/{i}/#"))?;
        let subscription = StoredSubscription { options, identifier: None };
        record::encode(&Record::Subscribe { sid, filter, subscription }, clocks, out)?;
        for j in 0..messages {
            let mid = next_mid[shard];
            next_mid[shard] += 1;
            let message = Message {
                topic: TopicName::new(format!("gen/{i}/{j}"))?,
                payload: payload.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: BoxedPublishProperties::none(),
                publisher: Some("generator".into()),
                expires_at: None,
                id: 0,
            };
            record::encode(&Record::Message { mid, message: Arc::new(message) }, clocks, out)?;
            let entry = StoredEntry {
                mid,
                qos: QoS::AtLeastOnce,
                retain: false,
                from_retained: false,
                subscription_ids: SubscriptionIds::new(),
            };
            record::encode(&Record::Enqueue { sid, entry }, clocks, out)?;
        }
    }
    for (shard, segment) in segments.iter().enumerate() {
        let shard_dir = ringmq::store::shard_dir(dir, shard);
        std::fs::create_dir_all(&shard_dir)?;
        std::fs::write(shard_dir.join(format!("{:020}.seg", 1)), segment)?;
        println!("shard {shard}: {} bytes", segment.len());
    }
    Ok(())
}
