//! End-to-end tests of what the broker must survive: slow subscribers,
//! malformed input, connection floods and limits, without leaking memory
//! or file descriptors.

mod common;

use common::{client_id_on_shard, connect_packet, Broker, RawClient};
use ringmq::protocol::{
    Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName,
};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn subscribe(client: &mut RawClient, filter: &str, qos: QoS) {
    client.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions { qos, ..Default::default() },
        }]
        .into_iter()
        .collect(),
    }));
    assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// Waits until `condition` holds (polling), or panics after `within`.
fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_subscriber_that_stops_reading_neither_grows_memory_nor_slows_others() {
    // Small per-session limits make the bound easy to see.
    let broker = Broker::start_with_config(
        2,
        "[limits]\nmax_queued_messages = 100\nmax_queued_bytes = 131072\nmax_inflight = 16\n",
    );
    // The stalled subscriber: subscribes, then never reads again.
    let mut stalled = RawClient::connect(broker.addr);
    socket2::SockRef::from(&stalled.stream).set_recv_buffer_size(4096).unwrap();
    stalled.send(&connect_packet(&client_id_on_shard("stalled", 0, 2), true, 0));
    assert!(matches!(stalled.recv(), Some(Packet::ConnAck(_))));
    subscribe(&mut stalled, "flood/t", QoS::AtLeastOnce);
    // The healthy subscriber, on the other shard.
    let mut healthy = RawClient::connect(broker.addr);
    healthy.send(&connect_packet(&client_id_on_shard("healthy", 1, 2), true, 0));
    assert!(matches!(healthy.recv(), Some(Packet::ConnAck(_))));
    subscribe(&mut healthy, "flood/t", QoS::AtMostOnce);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = std::thread::spawn({
        let received = std::sync::Arc::clone(&received);
        move || {
            while received.load(std::sync::atomic::Ordering::Relaxed) < 20_000 {
                match healthy.recv() {
                    Some(Packet::Publish(_)) => {
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
    });

    let rss_before = broker.rss_kib();
    let mut publisher = RawClient::connect(broker.addr);
    publisher.send(&connect_packet("flooder", true, 0));
    assert!(matches!(publisher.recv(), Some(Packet::ConnAck(_))));
    // 20,000 x 2 KiB = 40 MB through the broker, in batches of 50 that the
    // healthy subscriber keeps up with (so its own queue never overflows),
    // while the stalled one has stopped reading long ago.
    let payload = vec![7u8; 2048];
    let mut batch = bytes::BytesMut::new();
    for sent in (50..=20_000).step_by(50) {
        for _ in 0..50 {
            publish("flood/t", QoS::AtMostOnce, 0, &payload)
                .encode(ProtocolVersion::V3_1_1, &mut batch)
                .unwrap();
        }
        publisher.send_bytes(&batch);
        batch.clear();
        eventually(Duration::from_secs(10), "the healthy subscriber keeps receiving", || {
            received.load(std::sync::atomic::Ordering::Relaxed) >= sent
        });
    }
    reader.join().unwrap();
    let growth_kib = broker.rss_kib().saturating_sub(rss_before);
    // The stalled session holds at most its limits (about 128 KiB of queue,
    // 16 in flight, one write buffer); 40 MB went through.
    assert!(growth_kib < 16 * 1024, "broker grew by {growth_kib} KiB");
    drop(stalled);
    assert!(broker.stop().success());
}

#[test]
fn malformed_input_closes_the_connection_and_nothing_else() {
    let broker = Broker::start(2);
    let cases: &[&[u8]] = &[
        b"\x00\x00",                                     // reserved packet type
        b"\x10\xff\xff\xff\xff\x7f",                     // 5-byte remaining length
        b"\x30\x05\x00\x03a/+",                          // PUBLISH before CONNECT
        b"\x10\x0c\x00\x04MQTT\x04\x01\x00\x3c\x00\x00", // reserved CONNECT flag
        b"\x10\x0c\x00\x04XXXX\x04\x02\x00\x3c\x00\x00", // unknown protocol name
    ];
    for bytes in cases {
        let mut client = RawClient::connect(broker.addr);
        client.send_bytes(bytes);
        assert!(
            client.closed_within(Duration::from_secs(5)),
            "{bytes:x?} left the connection open"
        );
    }
    // [MQTT-3.1.2-2] An unsupported level gets CONNACK 0x01, then a close.
    let mut client = RawClient::connect(broker.addr);
    client.send_bytes(b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00");
    let mut answer = [0u8; 4];
    std::io::Read::read_exact(&mut client.stream, &mut answer).unwrap();
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
    // A malformed packet after CONNECT closes the connection too.
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet("bad-later", true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client.send_bytes(b"\x62\x02\x00\x00"); // PUBREL with packet id 0
    assert!(client.closed_within(Duration::from_secs(5)));
    // The broker still serves everyone else.
    let mut fine = RawClient::connect(broker.addr);
    fine.send(&connect_packet("still-fine", true, 0));
    assert!(matches!(fine.recv(), Some(Packet::ConnAck(_))));
    assert!(broker.stop().success());
}

#[test]
fn mqtt5_connect_is_accepted() {
    // MQTT 5.0 is served (it was refused with 0x84 before): see
    // tests/e2e_mqtt5.rs for the rest.
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    // A minimal v5 CONNECT: level 5, clean start, empty properties.
    client.send_bytes(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc");
    let mut answer = [0u8; 4];
    std::io::Read::read_exact(&mut client.stream, &mut answer).unwrap();
    // v5 CONNACK: flags 0, reason 0x00 Success, then its properties.
    assert_eq!((answer[0], answer[2], answer[3]), (0x20, 0x00, 0x00));
}

#[test]
fn an_unknown_protocol_level_gets_return_code_1_mqtt_3_1_2_2() {
    // [MQTT-3.1.2-2] "The Server MUST respond to the CONNECT Packet with a
    // CONNACK return code 0x01 (unacceptable protocol level) and then
    // disconnect the Client if the Protocol Level is not supported".
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    client.send_bytes(b"\x10\x0f\x00\x04MQTT\x06\x02\x00\x3c\x00\x03abc");
    let mut answer = [0u8; 4];
    std::io::Read::read_exact(&mut client.stream, &mut answer).unwrap();
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
    assert!(client.closed_within(Duration::from_secs(5)));
}

#[test]
fn no_file_descriptor_leaks() {
    let broker = Broker::start_with_config(2, "[limits]\nconnect_timeout_ms = 300\n");
    std::thread::sleep(Duration::from_millis(300));
    let baseline = broker.open_fds();
    // Clean sessions on both shards (half of them handed off), abrupt
    // closes, silent sockets that time out, and garbage.
    for i in 0..100 {
        let mut client = RawClient::connect(broker.addr);
        client.send(&connect_packet(&format!("fd-{i}"), true, 0));
        assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
        if i % 2 == 0 {
            client.send(&Packet::Disconnect(Default::default()));
        }
    }
    let silent: Vec<_> = (0..20).map(|_| TcpStream::connect(broker.addr).unwrap()).collect();
    for _ in 0..20 {
        let mut garbage = TcpStream::connect(broker.addr).unwrap();
        garbage.write_all(b"\xff\xff\xff\xff").unwrap();
    }
    eventually(Duration::from_secs(10), "file descriptors back to the baseline", || {
        broker.open_fds() <= baseline
    });
    drop(silent);
    assert!(broker.stop().success());
}

#[test]
fn max_connections_is_enforced() {
    let broker = Broker::start_with_config(2, "[limits]\nmax_connections = 3\n");
    std::thread::sleep(Duration::from_millis(200));
    let mut open = Vec::new();
    for i in 0..3 {
        let mut client = RawClient::connect(broker.addr);
        client.send(&connect_packet(&format!("max-{i}"), true, 0));
        assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
        open.push(client);
    }
    let mut refused = RawClient::connect(broker.addr);
    assert!(refused.closed_within(Duration::from_secs(5)), "a fourth connection was kept");
    drop(open);
    // Slots are given back when connections close.
    eventually(Duration::from_secs(5), "a slot is free again", || {
        let mut client = RawClient::connect(broker.addr);
        client.send(&connect_packet("max-again", true, 0));
        client.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut answer = [0u8; 4];
        std::io::Read::read_exact(&mut client.stream, &mut answer).is_ok()
    });
    assert!(broker.stop().success());
}

#[test]
fn one_shard_per_allowed_cpu() {
    // The embedded default runs one shard per CPU of the affinity mask.
    let output = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_ringmq"), "check-config", "/dev/null"])
        .output();
    let Ok(output) = output else {
        assert!(std::env::var_os("CI").is_none(), "taskset (util-linux) is required on CI");
        return;
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let port = common::free_port().to_string();
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_ringmq"), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--log", "info"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok);
    let line = lines.find(|line| line.contains("starting") && line.contains("cpus=")).unwrap();
    // Keep reading, so the broker's later log lines have somewhere to go.
    std::thread::spawn(move || lines.for_each(drop));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(line.contains("shards=1"), "{line}");
    assert!(line.contains("cpus=[0]"), "{line}");
}
