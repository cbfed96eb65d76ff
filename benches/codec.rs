//! Codec micro-benchmarks: ringmq's decoder and encoder against `mqttbytes`
//! 0.6 (its `v4` module for 3.1.1, `v5` for 5.0) on the same packets, in
//! the same criterion groups, so each group shows the ratio directly.
//!
//! Cases: PUBLISH QoS 1 with 16 B, 256 B and 4 KiB payloads in 3.1.1 and
//! 5.0, a 5.0 CONNECT with properties, a will with properties and
//! credentials, and a 5.0 SUBSCRIBE with properties and three filters.
//!
//! Each (operation, case) pair has two groups: `<op>/<case>` reports bytes
//! per second and `<op>-packets/<case>` packets per second.
//!
//! Fairness:
//! * Decode: both libraries parse the *same bytes* (ringmq's encoding,
//!   which `mqttbytes` is checked to parse back to the expected packet)
//!   from a `BytesMut` holding [`BATCH`] back-to-back copies of the packet,
//!   as a connection's read buffer would after one large read. Both split
//!   each packet off the buffer and keep the payload as a `Bytes` slice.
//!   Copying the input buffer is setup, outside the timing; dropping the
//!   decoded packets is inside it, for both.
//! * Encode: both write one packet into a `BytesMut` that is cleared (not
//!   freed) before each write, so neither allocates. One packet per write
//!   because `mqttbytes` patches the CONNECT flags at an absolute offset and
//!   only writes CONNECT correctly into an empty buffer. The two encodings
//!   are checked to have the same length.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mqttbytes::{v4, v5};
use ringmq::protocol::{
    decode_packet, BoxedPublishProperties, Connect, ConnectProperties, Decoder, Packet, PacketId,
    ProtocolVersion, Publish, QoS, RetainHandling, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, TopicFilter, TopicName, Will, WillProperties,
};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

/// Packets per decode iteration (one read buffer's worth).
const BATCH: usize = 64;
/// Large enough for every case; the same limit for both decoders.
const MAX_PACKET_SIZE: usize = 1 << 20;
const TOPIC: &str = "sensors/device-0042/temperature";
const PACKET_ID: u16 = 7;

/// The same packet in `mqttbytes`' two modules. Boxed: the v5 packet is
/// 384 bytes, and the cases are built once, outside any timing.
enum Theirs {
    V4(Box<v4::Packet>),
    V5(Box<v5::Packet>),
}

impl Theirs {
    fn write(&self, buf: &mut BytesMut) -> usize {
        let written = match self {
            Self::V4(packet) => match &**packet {
                v4::Packet::Publish(p) => p.write(buf),
                _ => unreachable!("no 3.1.1 benchmark case uses this packet"),
            },
            Self::V5(packet) => match &**packet {
                v5::Packet::Publish(p) => p.write(buf),
                v5::Packet::Connect(p) => p.write(buf),
                v5::Packet::Subscribe(p) => p.write(buf),
                _ => unreachable!("no 5.0 benchmark case uses this packet"),
            },
        };
        written.expect("mqttbytes encodes the benchmark packet")
    }

    /// Reads one packet (boxed; for the checks, not timed).
    fn read(&self, buf: &mut BytesMut) -> Theirs {
        match self {
            Self::V4(_) => Self::V4(Box::new(read_v4(buf))),
            Self::V5(_) => Self::V5(Box::new(read_v5(buf))),
        }
    }

    /// Reads [`BATCH`] packets of this packet's version (the timed loop).
    fn read_batch(&self, buf: &mut BytesMut) {
        match self {
            Self::V4(_) => (0..BATCH).for_each(|_| consume(read_v4(buf))),
            Self::V5(_) => (0..BATCH).for_each(|_| consume(read_v5(buf))),
        }
    }

    fn same_packet(&self, other: &Theirs) -> bool {
        match (self, other) {
            (Self::V4(a), Self::V4(b)) => a == b,
            (Self::V5(a), Self::V5(b)) => a == b,
            _ => false,
        }
    }
}

/// What the timed decode loops do with each packet, the same for both
/// libraries: hand it by value to a consumer that is not inlined, as a
/// connection hands each packet to its session.
#[inline(never)]
fn consume<T>(packet: T) {
    black_box(&packet);
}

/// The benchmark inputs are always complete and valid.
fn read_v4(buf: &mut BytesMut) -> v4::Packet {
    v4::read(buf, MAX_PACKET_SIZE).expect("mqttbytes v4 decodes")
}

fn read_v5(buf: &mut BytesMut) -> v5::Packet {
    v5::read(buf, MAX_PACKET_SIZE).expect("mqttbytes v5 decodes")
}

/// One benchmark input: the packet as each library represents it.
struct Case {
    name: String,
    version: ProtocolVersion,
    ours: Packet,
    theirs: Theirs,
}

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

fn size_name(len: usize) -> String {
    if len >= 1024 {
        format!("{}KiB", len / 1024)
    } else {
        format!("{len}B")
    }
}

fn publish_case(version: ProtocolVersion, len: usize) -> Case {
    let payload = payload(len);
    let ours = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new(TOPIC).expect("valid topic"),
        packet_id: PacketId::new(PACKET_ID),
        properties: BoxedPublishProperties::none(),
        payload: payload.clone(),
    });
    let (label, theirs) = match version {
        ProtocolVersion::V5 => {
            let mut p = v5::Publish::from_bytes(TOPIC, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = PACKET_ID;
            ("v5", Theirs::V5(Box::new(v5::Packet::Publish(p))))
        }
        _ => {
            let mut p = v4::Publish::from_bytes(TOPIC, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = PACKET_ID;
            ("v311", Theirs::V4(Box::new(v4::Packet::Publish(p))))
        }
    };
    Case { name: format!("publish_{label}_{}", size_name(len)), version, ours, theirs }
}

fn pair(k: &'static str, v: &'static str) -> (ByteString, ByteString) {
    (ByteString::from_static(k), ByteString::from_static(v))
}

fn connect_case() -> Case {
    let ours = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from_static("ringmq-bench-client-0001"),
        will: Some(Will {
            topic: TopicName::new("devices/0001/status").expect("valid topic"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(3600),
                content_type: Some(ByteString::from_static("text/plain")),
                user_properties: vec![pair("reason", "bench")],
                ..WillProperties::default()
            },
        }),
        username: Some(ByteString::from_static("device-0001")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(64),
            maximum_packet_size: NonZeroU32::new(1 << 20),
            topic_alias_maximum: Some(16),
            request_problem_information: Some(true),
            user_properties: vec![pair("app", "bench"), pair("region", "eu-west")],
            ..ConnectProperties::default()
        },
    }));
    let theirs = v5::Connect {
        protocol: mqttbytes::Protocol::V5,
        keep_alive: 60,
        client_id: "ringmq-bench-client-0001".into(),
        clean_session: true,
        last_will: Some(v5::LastWill {
            topic: "devices/0001/status".into(),
            message: Bytes::from_static(b"offline"),
            qos: mqttbytes::QoS::AtLeastOnce,
            retain: true,
            properties: Some(v5::WillProperties {
                delay_interval: Some(30),
                payload_format_indicator: None,
                message_expiry_interval: Some(3600),
                content_type: Some("text/plain".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: vec![("reason".into(), "bench".into())],
            }),
        }),
        login: Some(v5::Login {
            username: "device-0001".into(),
            password: "correct horse battery staple".into(),
        }),
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            max_packet_size: Some(1 << 20),
            topic_alias_max: Some(16),
            request_response_info: None,
            request_problem_info: Some(1),
            user_properties: vec![
                ("app".into(), "bench".into()),
                ("region".into(), "eu-west".into()),
            ],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    Case {
        name: "connect_v5".into(),
        version: ProtocolVersion::V5,
        ours,
        theirs: Theirs::V5(Box::new(v5::Packet::Connect(theirs))),
    }
}

fn subscribe_case() -> Case {
    let filters = [
        ("sensors/+/temperature", QoS::AtLeastOnce, false, false, RetainHandling::SendAtSubscribe),
        ("alerts/#", QoS::ExactlyOnce, true, true, RetainHandling::SendIfNew),
        ("$share/workers/jobs/+", QoS::AtLeastOnce, false, false, RetainHandling::DoNotSend),
    ];
    let ours = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(PACKET_ID).expect("non-zero"),
        properties: SubscribeProperties {
            subscription_identifier: NonZeroU32::new(42),
            user_properties: vec![pair("app", "bench")],
        },
        subscriptions: filters
            .iter()
            .map(|&(filter, qos, no_local, retain_as_published, retain_handling)| Subscription {
                filter: TopicFilter::new(filter).expect("valid filter"),
                options: SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            })
            .collect(),
        refused: Vec::new(),
    });
    let theirs = v5::Subscribe {
        pkid: PACKET_ID,
        filters: filters
            .iter()
            .map(|&(filter, qos, nolocal, preserve_retain, retain_handling)| v5::SubscribeFilter {
                path: filter.into(),
                qos: match qos {
                    QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
                    QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
                    QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
                },
                nolocal,
                preserve_retain,
                retain_forward_rule: match retain_handling {
                    RetainHandling::SendAtSubscribe => v5::RetainForwardRule::OnEverySubscribe,
                    RetainHandling::SendIfNew => v5::RetainForwardRule::OnNewSubscribe,
                    RetainHandling::DoNotSend => v5::RetainForwardRule::Never,
                },
            })
            .collect(),
        properties: Some(v5::SubscribeProperties {
            id: Some(42),
            user_properties: vec![("app".into(), "bench".into())],
        }),
    };
    Case {
        name: "subscribe_v5".into(),
        version: ProtocolVersion::V5,
        ours,
        theirs: Theirs::V5(Box::new(v5::Packet::Subscribe(theirs))),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for len in [16, 256, 4096] {
            cases.push(publish_case(version, len));
        }
    }
    cases.push(connect_case());
    cases.push(subscribe_case());
    cases
}

fn encode_ours(case: &Case) -> BytesMut {
    let mut buf = BytesMut::new();
    case.ours.encode(case.version, &mut buf).expect("ringmq encodes the benchmark packet");
    buf
}

/// Checks that both libraries agree on the case, and returns the bytes
/// both decoders are fed: [`BATCH`] copies of ringmq's encoding.
fn prepare(case: &Case) -> BytesMut {
    let ours = encode_ours(case);
    let mut theirs = BytesMut::new();
    case.theirs.write(&mut theirs);
    assert_eq!(ours.len(), theirs.len(), "{}: encodings differ in length", case.name);
    assert_eq!(
        decode_packet(ours.clone().freeze(), case.version).as_ref(),
        Ok(&case.ours),
        "{}: ringmq does not decode its own encoding",
        case.name
    );
    let read_back = case.theirs.read(&mut ours.clone());
    assert!(read_back.same_packet(&case.theirs), "{}: mqttbytes reads another packet", case.name);
    let mut batch = BytesMut::with_capacity(ours.len() * BATCH);
    for _ in 0..BATCH {
        batch.extend_from_slice(&ours);
    }
    batch
}

fn bench_decode(c: &mut Criterion, case: &Case, input: &BytesMut) {
    let bytes = Throughput::Bytes(input.len() as u64);
    let packets = Throughput::Elements(BATCH as u64);
    for (group_name, throughput) in [("decode", bytes), ("decode-packets", packets)] {
        let mut group = c.benchmark_group(format!("{group_name}/{}", case.name));
        group.throughput(throughput);
        group.bench_function("ringmq", |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let mut decoder = Decoder::new(case.version, MAX_PACKET_SIZE as u32);
                    for _ in 0..BATCH {
                        consume(decoder.decode(buf).expect("valid").expect("complete"));
                    }
                },
                // Bounds the inputs held at once (BATCH x 4 KiB each).
                BatchSize::NumIterations(16),
            )
        });
        group.bench_function("mqttbytes", |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| case.theirs.read_batch(buf),
                BatchSize::NumIterations(16),
            )
        });
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion, case: &Case) {
    let len = encode_ours(case).len();
    let bytes = Throughput::Bytes(len as u64);
    let packets = Throughput::Elements(1);
    for (group_name, throughput) in [("encode", bytes), ("encode-packets", packets)] {
        let mut group = c.benchmark_group(format!("{group_name}/{}", case.name));
        group.throughput(throughput);
        let mut buf = BytesMut::with_capacity(len);
        group.bench_function("ringmq", |b| {
            b.iter(|| {
                buf.clear();
                black_box(&case.ours).encode(case.version, &mut buf).expect("encodes");
                black_box(buf.len())
            })
        });
        group.bench_function("mqttbytes", |b| {
            b.iter(|| {
                buf.clear();
                black_box(black_box(&case.theirs).write(&mut buf))
            })
        });
        group.finish();
    }
}

fn codec(c: &mut Criterion) {
    for case in cases() {
        let input = prepare(&case);
        bench_decode(c, &case, &input);
        bench_encode(c, &case);
    }
}

criterion_group! {
    name = benches;
    // 64 benchmarks: shorter than criterion's 3 s + 5 s default keeps a
    // full run near four minutes on a 2-core machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
