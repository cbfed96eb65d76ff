//! End-to-end tests of persistent sessions in the durable log
//! (`durability = "always"`, the default with `data_dir`), across kill -9:
//! the QoS 1 messages queued to an offline session and its subscriptions
//! survive (mosquitto_sub -c, an independent client), the inbound QoS 2
//! state survives (no duplicate), and in a crash loop no PUBACKed message
//! is ever lost.

mod common;

use bytes::{Bytes, BytesMut};
use common::{connect_packet, free_port, wait_ready, Broker, RawClient};
use ringmq::protocol::{
    Decoder, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 2;

/// The configuration of these tests: a data directory (durability
/// "always" by default), an admin listener, and queues long enough for
/// everything a test publishes to an offline session.
fn config(data_dir: &Path, admin: &str) -> String {
    format!(
        "data_dir = {:?}\n[admin]\nlisten = \"{admin}\"\n[limits]\nmax_queued_messages = \
         100000\nmax_queued_bytes = 104857600\n",
        data_dir.display().to_string()
    )
}

/// Starts the broker on `dir` and waits until every shard replayed its
/// log.
fn start(dir: &Path) -> Broker {
    start_shards(dir, SHARDS)
}

fn start_shards(dir: &Path, shards: usize) -> Broker {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(shards, &config(dir, &admin));
    wait_ready(&admin);
    broker
}

fn mosquitto(program: &str, broker: &Broker, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()]).args(args);
    command
}

/// `mosquitto_sub` with `args`: the lines it printed.
fn mosquitto_sub(broker: &Broker, args: &[&str]) -> Vec<String> {
    let output = mosquitto("mosquitto_sub", broker, args)
        .output()
        .expect("mosquitto_sub (package mosquitto-clients)");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// Publishes each line of `lines` at QoS `qos` to `topic`; mosquitto_pub
/// exits once every message is acknowledged.
fn mosquitto_pub_lines(broker: &Broker, topic: &str, qos: &str, lines: &[String]) {
    let mut child = mosquitto("mosquitto_pub", broker, &["-q", qos, "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (package mosquitto-clients)");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn queued_qos1_messages_and_subscriptions_of_an_offline_session_survive_kill_9() {
    let dir = common::scratch_dir("e2e-sessions", "queued");
    let broker = start(&dir);
    // A persistent session (-c: Clean Session 0) subscribes, then leaves.
    let id = ["-c", "-i", "persistent-sub", "-q", "1"];
    mosquitto_sub(&broker, &[&id[..], &["-t", "q/#", "-W", "1"]].concat());
    const N: usize = 200;
    let lines: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    mosquitto_pub_lines(&broker, "q/1", "1", &lines);
    // Every message was acknowledged, so durable: kill -9.
    drop(broker);
    let broker = start(&dir);
    // [MQTT-3.1.2-4], [MQTT-3.1.2-5]: the session resumes with the QoS 1
    // messages queued while it was offline, all of them, in order
    // [MQTT-4.6.0-6].
    let got = mosquitto_sub(
        &broker,
        &[&id[..], &["-t", "q/#", "-C", &N.to_string(), "-W", "10"]].concat(),
    );
    assert_eq!(got, lines);
    // The subscription itself survived: subscribed to another filter only,
    // the session still receives q/2.
    let mut sub = mosquitto(
        "mosquitto_sub",
        &broker,
        &[&id[..], &["-t", "other", "-C", "1", "-W", "10"]].concat(),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    mosquitto_pub_lines(&broker, "q/2", "1", &["after".to_owned()]);
    let mut out = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(sub.wait().unwrap().success());
    assert_eq!(out.trim(), "after");
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sessions_follow_a_change_of_the_shard_count() {
    let dir = common::scratch_dir("e2e-sessions", "reshard");
    let broker = start_shards(&dir, 2);
    let ids: Vec<String> = (0..6).map(|i| format!("moving-{i}")).collect();
    for id in &ids {
        mosquitto_sub(&broker, &["-c", "-i", id, "-q", "1", "-t", "mv/#", "-W", "1"]);
    }
    let lines: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    mosquitto_pub_lines(&broker, "mv/x", "1", &lines);
    drop(broker);
    // Three shards now: each session lives where its client id hashes to.
    let broker = start_shards(&dir, 3);
    for id in &ids {
        let got = mosquitto_sub(
            &broker,
            &["-c", "-i", id, "-q", "1", "-t", "mv/#", "-C", "20", "-W", "10"],
        );
        assert_eq!(got, lines, "{id}");
    }
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn publish(topic: &str, payload: &[u8], qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn raw(broker: &Broker, client_id: &str, clean: bool) -> (RawClient, bool) {
    let mut client = RawClient::connect(([127, 0, 0, 1], broker.port()).into());
    client.send(&connect_packet(client_id, clean, 0));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    (client, connack.session_present)
}

#[test]
fn the_inbound_qos2_state_survives_kill_9() {
    let dir = common::scratch_dir("e2e-sessions", "qos2");
    let broker = start(&dir);
    let id = ["-c", "-i", "qos2-sub", "-q", "2"];
    mosquitto_sub(&broker, &[&id[..], &["-t", "q2/#", "-W", "1"]].concat());
    let (mut publisher, _) = raw(&broker, "qos2-pub", false);
    publisher.send(&publish("q2/x", b"exactly-once", QoS::ExactlyOnce, 9, false));
    assert!(matches!(publisher.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 9));
    // PUBREC received: the message is logged for the subscriber, and the
    // packet id is logged as received. kill -9 before the PUBREL.
    drop(broker);
    let broker = start(&dir);
    let (mut publisher, present) = raw(&broker, "qos2-pub", false);
    assert!(present, "[MQTT-3.2.2-2]");
    // [MQTT-4.3.3-2] the client re-sends the PUBLISH with DUP (it saw no
    // PUBCOMP): acknowledged again, not delivered again.
    publisher.send(&publish("q2/x", b"exactly-once", QoS::ExactlyOnce, 9, true));
    assert!(matches!(publisher.recv(), Some(Packet::PubRec(r)) if r.packet_id.get() == 9));
    publisher.send(&Packet::PubRel(PubResponse::new(PacketId::new(9).unwrap())));
    assert!(matches!(publisher.recv(), Some(Packet::PubComp(r)) if r.packet_id.get() == 9));
    let got = mosquitto_sub(&broker, &[&id[..], &["-t", "q2/#", "-W", "3"]].concat());
    assert_eq!(got, vec!["exactly-once"]);
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A raw client that tolerates the broker dying under it.
struct Stream {
    socket: std::net::TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Stream {
    fn connect(broker: &Broker, client_id: &str, clean: bool) -> Option<Self> {
        let socket = std::net::TcpStream::connect(("127.0.0.1", broker.port())).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut stream = Self {
            socket,
            buf: BytesMut::new(),
            decoder: Decoder::new(ProtocolVersion::V3_1_1, 1 << 20),
        };
        stream.send(&connect_packet(client_id, clean, 0))?;
        matches!(stream.recv()?, Packet::ConnAck(_)).then_some(stream)
    }

    fn send(&mut self, packet: &Packet) -> Option<()> {
        let mut out = BytesMut::new();
        packet.encode(ProtocolVersion::V3_1_1, &mut out).ok()?;
        self.socket.write_all(&out).ok()
    }

    /// The next packet; `None` when the connection ended or stayed quiet
    /// for the read timeout.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).ok()? {
                return Some(packet);
            }
            let mut chunk = [0u8; 8192];
            match self.socket.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A small deterministic generator (xorshift), seeded from the clock so
/// that runs differ; the seed is printed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn no_acknowledged_message_is_lost_in_a_crash_loop() {
    let dir = common::scratch_dir("e2e-sessions", "crash-loop");
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) | 1;
    println!("seed {seed}");
    let mut random = Random(seed);
    let broker = start(&dir);
    let mut sub = Stream::connect(&broker, "loop-sub", false).unwrap();
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription { filter: TopicFilter::new("loop/#").unwrap(), options }]
            .into_iter()
            .collect(),
        refused: Vec::new(),
    };
    sub.send(&Packet::Subscribe(subscribe)).unwrap();
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    drop(sub);
    drop(broker);
    let mut acked: Vec<u32> = Vec::new();
    let mut next = 0u32;
    for _ in 0..20 {
        let broker = start(&dir);
        let pid = broker.pid() as i32;
        // kill -9 at a random moment of the stream.
        let delay = Duration::from_millis(20 + random.below(300));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: kill(2) on the broker child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        if let Some(mut publisher) = Stream::connect(&broker, "loop-pub", true) {
            // A numbered stream, a window of 8 in flight.
            let mut in_flight = std::collections::VecDeque::new();
            'stream: loop {
                while in_flight.len() < 8 {
                    let id = (next % 65535) as u16 + 1;
                    let packet =
                        publish("loop/n", &next.to_be_bytes(), QoS::AtLeastOnce, id, false);
                    if publisher.send(&packet).is_none() {
                        break 'stream;
                    }
                    in_flight.push_back((id, next));
                    next += 1;
                }
                match publisher.recv() {
                    Some(Packet::PubAck(ack)) => {
                        let (id, n) = in_flight.pop_front().unwrap();
                        assert_eq!(ack.packet_id.get(), id, "PUBACKs in order [MQTT-4.6.0-2]");
                        acked.push(n);
                    }
                    _ => break,
                }
            }
        }
        killer.join().unwrap();
        drop(broker);
    }
    let broker = start(&dir);
    let mut sub = Stream::connect(&broker, "loop-sub", false).unwrap();
    sub.socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut received = std::collections::HashSet::new();
    while let Some(packet) = sub.recv() {
        if let Packet::Publish(publish) = packet {
            let n = u32::from_be_bytes(publish.payload[..4].try_into().unwrap());
            received.insert(n);
            if let Some(id) = publish.packet_id {
                sub.send(&Packet::PubAck(PubResponse::new(id))).unwrap();
            }
        }
    }
    let lost: Vec<u32> = acked.iter().copied().filter(|n| !received.contains(n)).collect();
    let counts = (next, acked.len(), received.len(), lost.len());
    println!("published, acknowledged, received, lost: {counts:?}");
    assert!(acked.len() > 20, "the stream made progress between the kills");
    let first: Vec<u32> = lost.iter().copied().take(10).collect();
    assert!(lost.is_empty(), "{counts:?}: PUBACKed and lost, first {first:?} (seed {seed})");
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}
