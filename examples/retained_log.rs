//! Writes a durable log holding COUNT retained messages, spread over the
//! shards that own their topics, to measure how long a broker takes to
//! replay it:
//!
//! ```text
//! cargo run --release --example retained_log -- /tmp/ringmq-1m 1000000 2
//! ringmq serve --shards 2 --config <(echo 'data_dir = "/tmp/ringmq-1m"') --log info
//! ```
//!
//! Each shard logs `durable log replayed ... ms=N`. Topics are
//! `gen/{i / 1000}/{i % 1000}`, payloads 64 bytes, QoS 1.

use bytes::{Bytes, BytesMut};
use ringmq::message::wire::Clocks;
use ringmq::message::Message;
use ringmq::protocol::{BoxedPublishProperties, QoS, TopicName};
use ringmq::router::home_shard;
use ringmq::store::record::{self, Record, SegmentHeader, SegmentKind};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, count, shards] = args.as_slice() else {
        return Err("usage: retained_log DATA_DIR COUNT SHARDS".into());
    };
    let (dir, count, shards) = (std::path::Path::new(dir), count.parse::<u64>()?, shards.parse()?);
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
    let payload = Bytes::from(vec![b'x'; 64]);
    for i in 0..count {
        let topic = TopicName::new(format!("gen/{}/{}", i / 1000, i % 1000))?;
        let owner = home_shard(topic.as_str().as_bytes(), usize::from(shards)).index();
        let message = Message {
            topic,
            payload: payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: Some("generator".into()),
            expires_at: None,
            id: 0,
        };
        record::encode(&Record::RetainSet(Arc::new(message)), clocks, &mut segments[owner])?;
    }
    for (shard, segment) in segments.iter().enumerate() {
        let shard_dir = ringmq::store::shard_dir(dir, shard);
        std::fs::create_dir_all(&shard_dir)?;
        std::fs::write(shard_dir.join(format!("{:020}.seg", 1)), segment)?;
        println!("shard {shard}: {} bytes", segment.len());
    }
    Ok(())
}
