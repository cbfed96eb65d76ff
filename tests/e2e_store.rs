//! End-to-end tests of the durable log with independent clients
//! (mosquitto_pub / mosquitto_sub): retained messages survive kill -9, a
//! torn tail is cut off, logged once and counted, they follow a change of
//! the shard count, a bad `data_dir` is one line at start-up, and /readyz
//! waits for every shard's replay; a full disk (a small tmpfs, as root)
//! refuses QoS 1/2, keeps QoS 0, logs once and recovers, and a SIGTERM
//! while it is still full stops the broker at once, saying what was lost.

mod common;

use common::{counter_total as counter, http_get};

use common::{connect_packet, free_port, Broker, RawClient};
use ringmq::protocol::{
    Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SHARDS: usize = 2;

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-e2e-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(data_dir: &Path, admin: &str) -> String {
    format!("data_dir = {:?}\n[admin]\nlisten = \"{admin}\"\n", data_dir.display().to_string())
}

/// Waits until the counter reaches `at_least` (it is at most a tick old).
fn wait_counter(admin: &str, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(admin, name) < at_least {
        assert!(Instant::now() < deadline, "{name} stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mosquitto_pub(broker: &Broker, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-V", "mqttv5", "-q", "1"])
        .args(args)
        .status()
        .expect("mosquitto_pub (package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub {args:?}");
}

/// Every retained message under `store/#` a new v5 subscriber receives
/// within 3 s, as `topic payload user-properties`, sorted.
fn retained_set(broker: &Broker) -> Vec<String> {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-V", "mqttv5"])
        .args(["-t", "store/#", "--retained-only", "-W", "3", "-F", "%t %p %P"])
        .output()
        .expect("mosquitto_sub (package mosquitto-clients)");
    let mut lines: Vec<String> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim_end().to_owned()).collect();
    lines.sort();
    lines
}

/// Publishes the retained set of these tests: five topics, one
/// overwritten, one deleted with an empty payload, one with a user
/// property and an expiry an hour away.
fn publish_retained(broker: &Broker, admin: &str) {
    publish_retained_unlogged(broker);
    // Eight records: seven sets and the delete, written by the shards
    // that own the topics.
    wait_counter(admin, "store_records_written", 8);
}

fn expected() -> Vec<String> {
    ["store/a v-a2", "store/b v-b", "store/d v-d", "store/e v-e", "store/p v-p k:v"]
        .map(String::from)
        .to_vec()
}

#[test]
fn retained_messages_survive_kill_9() {
    let dir = temp_dir("kill9");
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    publish_retained(&broker, &admin);
    assert_eq!(retained_set(&broker), expected());
    // kill -9: the broker gets no chance to write anything more.
    drop(broker);
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    assert_eq!(retained_set(&broker), expected());
    wait_counter(&admin, "store_records_recovered", 8);
    assert_eq!(counter(&admin, "store_torn_tails"), 0);
    // Deleted after the restart, gone after the next.
    mosquitto_pub(&broker, &["-r", "-t", "store/b", "-n"]);
    wait_counter(&admin, "store_records_written", 1);
    assert!(broker.stop().success());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    let mut left = expected();
    left.retain(|line| !line.starts_with("store/b "));
    assert_eq!(retained_set(&broker), left);
    assert!(broker.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retained_messages_follow_a_change_of_the_shard_count() {
    let dir = temp_dir("reshard");
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    publish_retained(&broker, &admin);
    drop(broker);
    // Each topic lives on the shard its hash picks among 3 now.
    let broker = Broker::start_with_config(3, &config(&dir, &admin));
    assert_eq!(retained_set(&broker), expected());
    mosquitto_pub(&broker, &["-r", "-t", "store/b", "-n"]);
    wait_counter(&admin, "store_records_written", 1);
    assert!(broker.stop().success());
    // And back to 1.
    let broker = Broker::start_with_config(1, &config(&dir, &admin));
    let mut left = expected();
    left.retain(|line| !line.starts_with("store/b "));
    assert_eq!(retained_set(&broker), left);
    assert!(broker.stop().success());
    assert!(!dir.join("shard-1").exists(), "the directories of shards gone are deleted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_tail_is_cut_off_logged_once_and_counted() {
    let dir = temp_dir("tail");
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    publish_retained(&broker, &admin);
    drop(broker);
    // Garbage after the last record of shard 0's newest segment, as a
    // write cut short by a crash leaves.
    let shard0 = dir.join("shard-0");
    let mut names: Vec<_> =
        std::fs::read_dir(&shard0).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let newest = names.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    bytes.truncate(bytes.iter().rposition(|&b| b != 0).unwrap() + 1);
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, b'x', b'y']);
    std::fs::write(newest, &bytes).unwrap();
    let log = dir.with_extension("log");
    let toml = std::env::temp_dir().join(format!("ringmq-e2e-store-{}.toml", std::process::id()));
    let admin = format!("127.0.0.1:{}", free_port());
    std::fs::write(&toml, config(&dir, &admin)).unwrap();
    let broker = Broker::start_logging_to(SHARDS, &["--config", toml.to_str().unwrap()], &log);
    assert_eq!(retained_set(&broker), expected());
    wait_counter(&admin, "store_torn_tails", 1);
    assert_eq!(counter(&admin, "store_torn_bytes"), 10);
    assert!(broker.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let torn: Vec<&str> =
        text.lines().filter(|line| line.contains("torn or damaged tail")).collect();
    assert_eq!(torn.len(), 1, "{text}");
    assert!(torn[0].contains("torn_bytes=10") && torn[0].contains("shard-0"), "{}", torn[0]);
    // Cut off for good: the next start finds nothing to cut.
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(SHARDS, &config(&dir, &admin));
    assert_eq!(retained_set(&broker), expected());
    assert_eq!(counter(&admin, "store_torn_tails"), 0);
    assert!(broker.stop().success());
    for path in [&log, &toml] {
        let _ = std::fs::remove_file(path);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_data_dir_is_one_line_at_start_naming_the_key() {
    let file = temp_dir("not-a-dir");
    std::fs::write(&file, b"a file, not a directory").unwrap();
    let data_dir = file.join("data");
    let toml = std::env::temp_dir().join(format!("ringmq-e2e-baddir-{}.toml", std::process::id()));
    std::fs::write(&toml, format!("data_dir = {:?}\n", data_dir.display().to_string())).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--listen", &listen, "--shards", "1", "--log", "error"])
        .args(["--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&toml);
    let _ = std::fs::remove_file(&file);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let expected = format!("ringmq: data_dir = {:?}: cannot create the directory", data_dir);
    assert!(lines[0].starts_with(&expected), "{stderr}");
    assert!(lines[0].contains("set data_dir to one"), "{stderr}");
}

/// Writes a log of `count` retained messages for `shards` shards, as the
/// broker would have.
fn write_log(dir: &Path, count: usize, shards: u16) {
    use ringmq::message::{wire::Clocks, Message};
    use ringmq::protocol::{QoS, TopicName};
    use ringmq::store::record::{self, Record, SegmentHeader, SegmentKind};
    let clocks = Clocks::read();
    let mut segments: Vec<bytes::BytesMut> = (0..shards)
        .map(|shard| {
            let header = SegmentHeader { kind: SegmentKind::Appends, shard, shards, sequence: 1 };
            bytes::BytesMut::from(&header.encode()[..])
        })
        .collect();
    for i in 0..count {
        let topic = TopicName::new(format!("store/bulk/{i}")).unwrap();
        let owner = ringmq::router::home_shard(topic.as_str().as_bytes(), usize::from(shards));
        let message = Message {
            topic,
            payload: bytes::Bytes::from_static(b"bulk"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        };
        let out = &mut segments[owner.index()];
        record::encode(&Record::RetainSet(std::sync::Arc::new(message)), clocks, out).unwrap();
    }
    for (shard, segment) in segments.iter().enumerate() {
        let shard_dir = ringmq::store::shard_dir(dir, shard);
        std::fs::create_dir_all(&shard_dir).unwrap();
        std::fs::write(shard_dir.join(format!("{:020}.seg", 1)), segment).unwrap();
    }
}

#[test]
fn readyz_waits_until_every_shard_has_replayed_its_log() {
    let dir = temp_dir("ready");
    write_log(&dir, 400_000, SHARDS as u16);
    let admin = format!("127.0.0.1:{}", free_port());
    let toml = std::env::temp_dir().join(format!("ringmq-e2e-ready-{}.toml", std::process::id()));
    std::fs::write(&toml, config(&dir, &admin)).unwrap();
    let log = dir.with_extension("log");
    let broker = Broker::start_logging_to(
        SHARDS,
        &["--config", toml.to_str().unwrap(), "--log", "info"],
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::net::TcpStream::connect(&admin)
            .is_ok_and(|_| http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Ready only once both shards logged their replay.
    let text = std::fs::read_to_string(&log).unwrap();
    let replayed: Vec<&str> =
        text.lines().filter(|line| line.contains("durable log replayed")).collect();
    assert_eq!(replayed.len(), SHARDS, "{text}");
    let retained: usize = replayed
        .iter()
        .filter_map(|line| line.split("retained=").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(retained, 400_000, "{text}");
    assert!(broker.stop().success());
    for path in [&log, &toml] {
        let _ = std::fs::remove_file(path);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interval_durability_keeps_what_was_written_and_none_keeps_nothing() {
    let dir = temp_dir("modes");
    let admin = format!("127.0.0.1:{}", free_port());
    let interval =
        format!("durability = \"interval\"\nfsync_interval_ms = 50\n{}", config(&dir, &admin));
    let broker = Broker::start_with_config(SHARDS, &interval);
    publish_retained(&broker, &admin);
    wait_counter(&admin, "store_syncs", 1);
    drop(broker);
    let broker = Broker::start_with_config(SHARDS, &interval);
    assert_eq!(retained_set(&broker), expected());
    assert!(broker.stop().success());
    // `none`: memory only; the directory is neither read nor written.
    let none_dir = temp_dir("modes-none");
    let none = format!("durability = \"none\"\n{}", config(&none_dir, &admin));
    let broker = Broker::start_with_config(SHARDS, &none);
    publish_retained_unlogged(&broker);
    assert_eq!(retained_set(&broker), expected());
    assert!(broker.stop().success());
    assert!(!none_dir.exists());
    let broker = Broker::start_with_config(SHARDS, &none);
    assert!(retained_set(&broker).is_empty());
    assert!(broker.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// [`publish_retained`] without waiting for the log.
fn publish_retained_unlogged(broker: &Broker) {
    for topic in ["a", "b", "c", "d", "e"] {
        mosquitto_pub(
            broker,
            &["-r", "-t", &format!("store/{topic}"), "-m", &format!("v-{topic}")],
        );
    }
    mosquitto_pub(broker, &["-r", "-t", "store/a", "-m", "v-a2"]);
    mosquitto_pub(broker, &["-r", "-t", "store/c", "-n"]);
    let property = ["-D", "publish", "user-property", "k", "v"];
    let expiry = ["-D", "publish", "message-expiry-interval", "3600"];
    let args: Vec<&str> =
        ["-r", "-t", "store/p", "-m", "v-p"].into_iter().chain(property).chain(expiry).collect();
    mosquitto_pub(broker, &args);
}

/// A tmpfs mounted for one test, unmounted (lazily, so that a broker
/// still running cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `dir` with one file, until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xA5u8; 4096];
    while file.write_all(&block).and_then(|()| file.sync_all()).is_ok() {}
    path
}

fn publish_packet(topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

fn v5_client(broker: &Broker, client_id: &str) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    let Packet::Connect(mut connect) = connect_packet(client_id, true, 0) else { unreachable!() };
    connect.version = ProtocolVersion::V5;
    client.send(&Packet::Connect(connect));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client
}

fn v311_client(broker: &Broker, client_id: &str, clean: bool) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet(client_id, clean, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client
}

/// The payload of the next PUBLISH `client` receives (acknowledged if
/// QoS 1), skipping others' until `payload`; false after 10 s.
fn receives(client: &mut RawClient, payload: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match client.recv() {
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    client.send(&Packet::PubAck(PubResponse::new(id)));
                }
                if p.payload[..] == *payload {
                    return true;
                }
            }
            Some(_) => {}
            None => return false,
        }
    }
    false
}

/// A broker whose `data_dir` is on a 2 MiB tmpfs (filled by [`fill`]);
/// `None` (the test skipped, said on stderr) unless root.
struct OnTmpfs {
    dir: PathBuf,
    _tmpfs: Tmpfs,
    admin: String,
    toml: PathBuf,
    log: PathBuf,
    broker: Broker,
}

impl OnTmpfs {
    fn start(name: &str) -> Option<Self> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = temp_dir(name);
        let _tmpfs = Tmpfs::mount(&dir, "2m");
        let admin = format!("127.0.0.1:{}", free_port());
        let toml = dir.with_extension("toml");
        std::fs::write(&toml, config(&dir.join("data"), &admin)).unwrap();
        let log = dir.with_extension("log");
        let broker = Broker::start_logging_to(SHARDS, &["--config", toml.to_str().unwrap()], &log);
        common::wait_ready(&admin);
        Some(Self { dir, _tmpfs, admin, toml, log, broker })
    }
}

#[test]
fn a_full_disk_refuses_qos1_and_2_keeps_qos0_logs_once_and_recovers() {
    let Some(OnTmpfs { dir, _tmpfs, admin, toml, log, broker }) = OnTmpfs::start("full") else {
        return;
    };
    // A persistent subscriber: what it is sent at QoS 1 is logged.
    let mut subscriber = v311_client(&broker, "full-sub", false);
    subscriber.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new("full/#").unwrap(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        }]
        .into_iter()
        .collect(),
        refused: Vec::new(),
    }));
    assert!(matches!(subscriber.recv(), Some(Packet::SubAck(_))));
    let filler = fill(&dir);
    // A retained QoS 0 message is logged by the shard of its topic: its
    // write fails, the broker starts refusing. (Larger than a page: a
    // write within the last page of the segment, already allocated, would
    // not fail.)
    let mut trigger = v311_client(&broker, "full-trigger", true);
    trigger.send(&publish_packet("full-retained", &[b'r'; 65536], QoS::AtMostOnce, 0, true));
    wait_counter(&admin, "store_write_errors", 1);
    // Once every shard knows, a 3.1.1 QoS 1 PUBLISH closes the connection
    // [MQTT-3.3.5-2]. (Before, one is accepted and its PUBACK waits for
    // the disk: a new client probes again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probes = Vec::new();
    loop {
        let mut probe = v311_client(&broker, &format!("full-probe-{}", probes.len()), true);
        probe.send(&publish_packet("full/probe", b"probe", QoS::AtLeastOnce, 1, false));
        if probe.closed_within(Duration::from_millis(300)) {
            break;
        }
        assert!(Instant::now() < deadline, "QoS 1 never refused while the disk is full");
        probes.push(probe);
    }
    // MQTT 5: PUBACK / PUBREC 0x97 Quota exceeded; QoS 0 still flows.
    let mut v5 = v5_client(&broker, "full-v5");
    v5.send(&publish_packet("full/q1", b"q1", QoS::AtLeastOnce, 1, false));
    v5.send(&publish_packet("full/q2", b"q2", QoS::ExactlyOnce, 2, false));
    v5.send(&publish_packet("full/q0", b"q0", QoS::AtMostOnce, 0, false));
    let Some(Packet::PubAck(puback)) = v5.recv() else { panic!("no PUBACK") };
    assert_eq!((puback.packet_id.get(), puback.reason), (1, ReasonCode::QuotaExceeded));
    let Some(Packet::PubRec(pubrec)) = v5.recv() else { panic!("no PUBREC") };
    assert_eq!((pubrec.packet_id.get(), pubrec.reason), (2, ReasonCode::QuotaExceeded));
    assert!(receives(&mut subscriber, b"q0"), "QoS 0 is served while the disk is full");
    assert!(common::counter_at_least(&admin, "refused_store_unavailable", 3) >= 3);
    // Retried every second, logged once per shard.
    let errors = counter(&admin, "store_write_errors");
    wait_counter(&admin, "store_write_errors", errors + 2);
    // Space again: the writer's next retry succeeds and QoS 1 is
    // accepted again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 3;
    loop {
        v5.send(&publish_packet("full/again", b"again", QoS::AtLeastOnce, id, false));
        let Some(Packet::PubAck(puback)) = v5.recv() else { panic!("no PUBACK") };
        if puback.reason == ReasonCode::Success {
            break;
        }
        assert_eq!(puback.reason, ReasonCode::QuotaExceeded);
        assert!(Instant::now() < deadline, "QoS 1 still refused once space was freed");
        std::thread::sleep(Duration::from_millis(100));
        id += 1;
    }
    assert!(receives(&mut subscriber, b"again"));
    drop(probes);
    assert!(broker.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let failed = text.lines().filter(|l| l.contains("cannot write the durable log")).count();
    let again = text.lines().filter(|l| l.contains("the durable log is written again")).count();
    assert!((1..=SHARDS).contains(&failed), "one line per failing shard:\n{text}");
    assert_eq!(failed, again, "{text}");
    for path in [&log, &toml] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn a_sigterm_while_the_disk_is_full_stops_at_once_and_says_what_was_not_written() {
    let Some(OnTmpfs { dir, _tmpfs, admin, toml, log, broker }) = OnTmpfs::start("full-stop")
    else {
        return;
    };
    fill(&dir);
    // A retained message the shard of its topic cannot write: it waits in
    // memory, retried every second.
    let mut trigger = v311_client(&broker, "full-stop-trigger", true);
    trigger.send(&publish_packet("full-retained", &[b'r'; 65536], QoS::AtMostOnce, 0, true));
    wait_counter(&admin, "store_write_errors", 1);
    drop(trigger);
    // One signal is enough: the writer gives up at its next failed retry
    // (Broker::stop fails the test after 15 s).
    let stopping = Instant::now();
    assert!(broker.stop().success());
    assert!(stopping.elapsed() < Duration::from_secs(10), "{:?}", stopping.elapsed());
    let text = std::fs::read_to_string(&log).unwrap();
    let lost: Vec<&str> =
        text.lines().filter(|l| l.contains("records were not made durable")).collect();
    assert_eq!(lost.len(), 1, "one line, from the shard that failed:\n{text}");
    assert!(lost[0].contains("no acknowledged QoS 1/2 message is among them"), "{}", lost[0]);
    for path in [&log, &toml] {
        let _ = std::fs::remove_file(path);
    }
}
