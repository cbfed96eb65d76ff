//! Micro-benchmarks of the pure routing structures at broker scale: match
//! throughput of the subscription trie and of the interest replica with
//! 1,000,000 filters, the insert rate, and a `#` walk over 100,000 retained
//! messages.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringmq::index::SubscriptionTrie;
use ringmq::message::Message;
use ringmq::protocol::{BoxedPublishProperties, QoS, TopicFilter, TopicName};
use ringmq::router::interest::{InterestDelta, InterestTable, ShardId};
use ringmq::shard::retained::RetainedStore;
use std::sync::Arc;
use std::time::Instant;

/// Devices: each has `dev/{i}/telemetry` and `dev/{i}/+`.
const DEVICES: usize = 300_000;
/// Sites: `site/{j}/#`.
const SITES: usize = 399_000;
/// Cross-cutting wildcards: `+/x{k}/#`.
const CROSS: usize = 1_000;
/// Shards the interest replica spreads the filters over.
const SHARDS: usize = 8;
/// Retained topics for the `#` walk.
const RETAINED: usize = 100_000;

fn filter(text: String) -> TopicFilter {
    TopicFilter::new(text).expect("benchmark filters are valid")
}

fn topic(text: String) -> TopicName {
    TopicName::new(text).expect("benchmark topics are valid")
}

/// The 1,000,000 filters: 2 x DEVICES + SITES + CROSS.
fn filters() -> Vec<TopicFilter> {
    let mut out = Vec::with_capacity(2 * DEVICES + SITES + CROSS);
    for i in 0..DEVICES {
        out.push(filter(format!("dev/{i}/telemetry")));
        out.push(filter(format!("dev/{i}/+")));
    }
    out.extend((0..SITES).map(|j| filter(format!("site/{j}/#"))));
    out.extend((0..CROSS).map(|k| filter(format!("+/x{k}/#"))));
    out
}

/// A deterministic pseudo-random sequence (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Topics to publish to: device telemetry (2 matches), site events (1),
/// cross-cutting (1) and unmatched ones.
fn topics() -> Vec<TopicName> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..1024)
        .map(|n| match n % 4 {
            0 | 1 => topic(format!("dev/{}/telemetry", rng.below(DEVICES))),
            2 => topic(format!("site/{}/door/{}", rng.below(SITES), rng.below(10))),
            _ if n % 8 == 3 => topic(format!("q/x{}/z", rng.below(CROSS))),
            _ => topic(format!("nobody/{}", rng.below(DEVICES))),
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let filters = filters();
    let topics = topics();
    let mut trie = SubscriptionTrie::new();
    let mut table = InterestTable::new();
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, i as u32, ());
        table.apply(&InterestDelta {
            origin_shard: ShardId::new((i % SHARDS) as u8),
            filter: f.clone(),
            added: true,
            revision: 1,
            group: None,
        });
    }
    let mut group = c.benchmark_group("match 1M filters");
    group.throughput(Throughput::Elements(topics.len() as u64));
    group.bench_function("SubscriptionTrie::for_each_match", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for t in &topics {
                trie.for_each_match(black_box(t), |key, _| hits += key as usize & 1);
            }
            hits
        })
    });
    group.bench_function("InterestTable::matching_shards", |b| {
        b.iter(|| {
            let mut shards = 0usize;
            for t in &topics {
                shards += table.matching_shards(black_box(t)).len();
            }
            shards
        })
    });
    group.finish();
}

fn inserting(c: &mut Criterion) {
    let filters = filters();
    let batch = &filters[..100_000];
    let mut group = c.benchmark_group("insert");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.sample_size(10);
    group.bench_function("SubscriptionTrie::insert 100k filters", |b| {
        b.iter_batched(
            SubscriptionTrie::new,
            |mut trie| {
                for (i, f) in batch.iter().enumerate() {
                    trie.insert(f, i as u32, ());
                }
                trie
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn retained(c: &mut Criterion) {
    let mut store = RetainedStore::new();
    for i in 0..RETAINED {
        store.set(Arc::new(Message {
            topic: topic(format!("dev/{}/t{}", i % 1000, i / 1000)),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: None,
            expires_at: None,
            id: 0,
        }));
    }
    let all = filter("#".to_owned());
    let one_device = filter("dev/7/+".to_owned());
    let now = Instant::now();
    let mut group = c.benchmark_group("retained 100k topics");
    group.throughput(Throughput::Elements(RETAINED as u64));
    group.bench_function("RetainedStore::for_each_match #", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            store.for_each_match(black_box(&all), now, |m| bytes += m.payload.len());
            bytes
        })
    });
    group.throughput(Throughput::Elements(RETAINED as u64 / 1000));
    group.bench_function("RetainedStore::for_each_match dev/7/+", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            store.for_each_match(black_box(&one_device), now, |m| bytes += m.payload.len());
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, matching, inserting, retained);
criterion_main!(benches);
