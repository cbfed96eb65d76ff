//! Session micro-benchmarks: the sans-IO work ringmq does per QoS 1
//! message on one core, without sockets, so that a change to the hot path
//! can be measured apart from the kernel and the load generator (which
//! dominate, and vary with, an end-to-end run on a shared machine).
//!
//! Cases, each per message over batches of [`BATCH`] (one read buffer's
//! worth, as the connection loop handles them):
//! * `qos1-in`: a publisher's PUBLISH is handled (the message made and
//!   handed to the shard as an event) and its PUBACK encoded, all the
//!   batch's PUBACKs in one `poll_transmit`;
//! * `qos1-out`: a message is queued to a subscriber, sent (a packet id
//!   allocated, the in-flight entry made, the PUBLISH encoded, the batch in
//!   one `poll_transmit`) and its PUBACK handled, freeing the entry.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringmq::message::Message;
use ringmq::metrics::SessionCounters;
use ringmq::protocol::{
    BoxedPublishProperties, Connect, ConnectProperties, Packet, PacketId, ProtocolVersion,
    PubResponse, Publish, QoS, SubscriptionOptions, TopicName,
};
use ringmq::session::{Delivery, Session, SessionLimits};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

/// Messages per iteration.
const BATCH: u16 = 64;

fn connected(now: Instant, counters: &mut SessionCounters) -> Session {
    let limits = SessionLimits {
        max_inflight: NonZeroU16::MAX,
        max_queued_messages: 1 << 20,
        max_queued_bytes: 1 << 30,
        ..SessionLimits::default()
    };
    let mut session = Session::new(ByteString::from_static("bench"), limits);
    let connect = Connect {
        version: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from_static("bench"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    session.handle_connect(now, &connect, false, counters);
    let mut out = BytesMut::new();
    session.poll_transmit(now, &mut out, counters);
    session
}

fn qos1(c: &mut Criterion) {
    let now = Instant::now();
    let topic = TopicName::new("sensors/device-0042/temperature").unwrap();
    let payload = Bytes::from_static(&[7u8; 16]);
    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(u64::from(BATCH)));

    let mut counters = SessionCounters::default();
    let mut publisher = connected(now, &mut counters);
    let mut out = BytesMut::with_capacity(64 * 1024);
    group.bench_function("qos1-in", |b| {
        b.iter(|| {
            for id in 1..=BATCH {
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: PacketId::new(id),
                    properties: BoxedPublishProperties::none(),
                    payload: payload.clone(),
                };
                publisher.handle_packet(now, Packet::Publish(publish), &mut counters).unwrap();
            }
            while let Some(event) = publisher.poll_event() {
                black_box(event);
            }
            out.clear();
            black_box(publisher.poll_transmit(now, &mut out, &mut counters));
        });
    });

    let mut subscriber = connected(now, &mut counters);
    let message = Arc::new(Message {
        topic: topic.clone(),
        payload: payload.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: BoxedPublishProperties::none(),
        publisher: Some(ByteString::from_static("publisher")),
        expires_at: None,
        id: 0,
    });
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() };
    // Packet ids as the subscriber sees them, to acknowledge what it got.
    let mut ids = Vec::with_capacity(usize::from(BATCH));
    group.bench_function("qos1-out", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let delivery = Delivery {
                    message: Arc::clone(&message),
                    options,
                    subscription_ids: Default::default(),
                    from_retained: false,
                    log_id: 0,
                };
                subscriber.handle_delivery(now, delivery, &mut counters);
            }
            out.clear();
            black_box(subscriber.poll_transmit(now, &mut out, &mut counters));
            // The PUBLISHes are 3.1.1 QoS 1 with a fixed topic: the packet
            // id sits right after the topic in each.
            let len = out.len() / usize::from(BATCH);
            let at = 2 + 2 + topic.as_str().len();
            ids.clear();
            ids.extend(out.chunks(len).map(|p| u16::from_be_bytes([p[at], p[at + 1]])));
            for &id in &ids {
                let ack = Packet::PubAck(PubResponse::new(PacketId::new(id).unwrap()));
                subscriber.handle_packet(now, ack, &mut counters).unwrap();
            }
            assert_eq!(subscriber.inflight_len(), 0);
        });
    });
    group.finish();
}

criterion_group!(benches, qos1);
criterion_main!(benches);
