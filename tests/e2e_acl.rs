//! End to end: the ACL file (Mosquitto's syntax) over loopback on 2 shards,
//! 3.1.1 and 5.0 through ringmq's codec, and mosquitto_pub/sub as an
//! independent client: users x topics x read/write/subscribe, `%u`/`%c`
//! patterns, the anonymous section, `deny`; the counters; a SIGHUP that
//! applies a new ACL (to connected clients too) and keeps it on a broken
//! file; a new password file on SIGHUP, which closes the connections of
//! the users it removed or whose password it changed; Mosquitto `$6$` hashes;
//! `allow_anonymous` per listener; and Mosquitto itself as the oracle: the
//! same password and ACL files give the same acks and deliveries.

mod common;

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("e2e-acl", name)
}

use common::counter_total as counter;

use bytes::Bytes;
use common::{client_id_on_shard, free_port, RawClient};
use ringmq::protocol::{
    Connect, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// The rules of the matrix.
const ACL: &str = "\
# Anonymous clients.
topic read public/#
topic write anon/in

user alice
topic readwrite alice/#
topic read shared/#
topic deny alice/secret

user bob
topic readwrite bob/#
topic write shared/news
topic write alice/inbox

# Everyone: their device's topics, their own inbox.
pattern readwrite devices/%c/#
pattern read inbox/%u
";

/// Adds `user` with `password` to `file` through `ringmq passwd`.
fn set_password(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "--password-stdin", file.to_str().unwrap(), user])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A broker run from a configuration file that stays (for SIGHUP), its
/// log in a file; killed if the test fails first.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    /// Starts `ringmq --config FILE` with 2 shards, waiting until `addr`
    /// accepts; with `listen`, `--listen addr` replaces the file's
    /// listeners.
    fn start(config: &Path, log: &Path, addr: SocketAddr, listen: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        command.args(["serve", "--config", config.to_str().unwrap(), "--shards", "2"]);
        if listen {
            command.args(["--listen", &addr.to_string()]);
        }
        let child = command
            .args(["--log", "info"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let served = Self { child, log: log.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "ringmq did not start: {}", served.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines containing `text`.
    fn log_shows(&self, text: &str, count: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().matches(text).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", self.log());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected client of `version`; panics unless the CONNACK is Success.
fn connect(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    user: Option<(&str, &str)>,
) -> RawClient {
    let (reason, client) = try_connect(addr, version, client_id, user);
    assert_eq!(reason, Some(ReasonCode::Success), "{client_id} {user:?}");
    client
}

/// The CONNACK's code (`None`: closed without one) and the client.
fn try_connect(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    user: Option<(&str, &str)>,
) -> (Option<ReasonCode>, RawClient) {
    let mut client = RawClient::connect(addr);
    client.send(&Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: user.map(|(user, _)| user.into()),
        password: user.map(|(_, password)| Bytes::copy_from_slice(password.as_bytes())),
        properties: Default::default(),
    })));
    let reason = match client.recv() {
        Some(Packet::ConnAck(ack)) => Some(ack.reason),
        None => None,
        other => panic!("expected a CONNACK, got {other:?}"),
    };
    (reason, client)
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

/// SUBSCRIBEs to `filters` at QoS 1; the SUBACK's codes.
fn subscribe(client: &mut RawClient, id: u16, filters: &[&str]) -> Vec<ReasonCode> {
    let subscriptions = filters
        .iter()
        .map(|filter| Subscription {
            filter: TopicFilter::new(filter.to_string()).unwrap(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        })
        .collect();
    client.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        subscriptions,
        refused: Vec::new(),
    }));
    match client.recv() {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.packet_id, pid(id));
            ack.reasons.to_vec()
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
}

/// PUBLISHes `topic` at `qos` (id `id` when QoS > 0); the reason code of
/// its PUBACK or PUBREC (finishing a QoS 2 flow that was accepted).
fn publish(client: &mut RawClient, qos: QoS, id: u16, topic: &str) -> Option<ReasonCode> {
    let packet_id = (qos != QoS::AtMostOnce).then(|| pid(id));
    client.send(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic.to_owned()).unwrap(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from(topic.to_owned()),
    }));
    if qos == QoS::AtMostOnce {
        return None;
    }
    match (qos, client.recv()) {
        (QoS::AtLeastOnce, Some(Packet::PubAck(ack))) if ack.packet_id == pid(id) => {
            Some(ack.reason)
        }
        (QoS::ExactlyOnce, Some(Packet::PubRec(ack))) if ack.packet_id == pid(id) => {
            if ack.reason == ReasonCode::Success {
                client.send(&Packet::PubRel(PubResponse::new(pid(id))));
                assert!(matches!(client.recv(), Some(Packet::PubComp(_))));
            }
            Some(ack.reason)
        }
        (_, other) => panic!("expected the ack of {topic}, got {other:?}"),
    }
}

/// Sends DISCONNECT and waits until the broker closes the connection, so
/// that the session (clean) is gone before the next step.
fn disconnect(mut client: RawClient) {
    client.send_bytes(b"\xe0\x00");
    assert!(client.closed_within(Duration::from_secs(5)));
}

/// The topics of the next PUBLISH packets `client` receives until one on
/// `marker` (acknowledging QoS 1 ones).
fn received_until(client: &mut RawClient, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        match client.recv() {
            Some(Packet::Publish(publish)) => {
                if let Some(id) = publish.packet_id {
                    client.send(&Packet::PubAck(PubResponse::new(id)));
                }
                let topic = publish.topic.as_str().to_owned();
                topics.push(topic.clone());
                if topic == marker {
                    return topics;
                }
            }
            other => panic!("expected a PUBLISH, got {other:?} after {topics:?}"),
        }
    }
}

/// Waits until `counter(name)` reaches `expected` (the shards publish
/// their counters at their tick).
fn counter_reaches(admin: &str, name: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = counter(admin, name);
        if value >= expected || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The granted code of a QoS 1 subscription, and the refusal.
fn granted(version: ProtocolVersion) -> (ReasonCode, ReasonCode) {
    match version.is_v5() {
        true => (ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized),
        // 3.1.1: 0x80 Failure, decoded as UnspecifiedError.
        false => (ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError),
    }
}

#[test]
fn the_acl_matrix_holds_for_users_patterns_and_anonymous_clients() {
    let dir = scratch("matrix");
    let passwd = dir.join("passwd");
    set_password(&passwd, "alice", "a-pw");
    set_password(&passwd, "bob", "b-pw");
    std::fs::write(dir.join("acl"), ACL).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.join("ringmq.toml");
    std::fs::write(
        &config,
        format!(
            "password_file = {:?}\nacl_file = {:?}\nallow_anonymous = true\n\
             [admin]\nlisten = \"{admin}\"\n",
            passwd,
            dir.join("acl")
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), addr, true);
    let alice = Some(("alice", "a-pw"));
    let bob = Some(("bob", "b-pw"));
    let mut denied = (0, 0, 0); // publish, subscribe, delivery

    for (n, version) in [V311, V5].into_iter().enumerate() {
        let (ok, refused) = granted(version);
        let pub_refused =
            if version.is_v5() { ReasonCode::NotAuthorized } else { ReasonCode::Success };
        // Subscriber and publisher homed on each shard: same-shard and
        // cross-shard deliveries, and hand-offs after the checks.
        for (sub_shard, pub_shard) in [(0, 0), (0, 1), (1, 0)] {
            let tag = format!("{n}{sub_shard}{pub_shard}");
            let alice_id = client_id_on_shard(&format!("alice{tag}"), sub_shard, 2);
            let bob_id = client_id_on_shard(&format!("bob{tag}"), pub_shard, 2);

            // Subscribe: read rules that overlap the filter; deny that
            // covers it; nothing readable; `$SYS` never through `#`.
            let mut reader = connect(addr, version, &alice_id, alice);
            let codes = subscribe(
                &mut reader,
                1,
                &["alice/#", "shared/#", "bob/#", "alice/secret", "$SYS/#", "inbox/alice"],
            );
            assert_eq!(codes, [ok, ok, refused, refused, refused, ok], "{version} {tag}");
            denied.1 += 3;
            // `#` is granted: something under it is readable. What it
            // delivers is checked message by message.
            assert_eq!(subscribe(&mut reader, 2, &["#"]), [ok]);
            let codes =
                subscribe(&mut reader, 3, &[&format!("devices/{alice_id}/+"), "devices/x/+"]);
            assert_eq!(codes, [ok, refused], "%c in a pattern");
            denied.1 += 1;

            let mut writer = connect(addr, version, &bob_id, bob);
            // Denied publishes: acked (0x87 in 5.0), dropped.
            assert_eq!(publish(&mut writer, QoS::AtLeastOnce, 1, "alice/x"), Some(pub_refused));
            assert_eq!(publish(&mut writer, QoS::ExactlyOnce, 2, "alice/y"), Some(pub_refused));
            assert_eq!(publish(&mut writer, QoS::AtMostOnce, 0, "public/z"), None);
            denied.0 += 3;
            // Allowed publishes alice may not read: never sent to her.
            assert_eq!(
                publish(&mut writer, QoS::AtLeastOnce, 3, "bob/a"),
                Some(ReasonCode::Success)
            );
            denied.2 += 1;
            // Allowed for both: bob writes, alice reads.
            assert_eq!(
                publish(&mut writer, QoS::ExactlyOnce, 4, "alice/inbox"),
                Some(ReasonCode::Success)
            );
            // The patterns: bob's own device; alice's inbox is hers to read,
            // not bob's to write.
            let device = format!("devices/{bob_id}/t");
            assert_eq!(
                publish(&mut writer, QoS::AtLeastOnce, 6, &device),
                Some(ReasonCode::Success)
            );
            denied.2 += 1; // alice's `#` matches it; she may not read it
            assert_eq!(publish(&mut writer, QoS::AtLeastOnce, 7, "inbox/alice"), Some(pub_refused));
            denied.0 += 1;
            assert_eq!(
                publish(&mut writer, QoS::AtLeastOnce, 8, "bob/end"),
                Some(ReasonCode::Success)
            );
            denied.2 += 1;
            // Last, allowed for both: what bob sent reaches alice in order,
            // so she has seen all of it once this arrives.
            assert_eq!(
                publish(&mut writer, QoS::AtLeastOnce, 5, "shared/news"),
                Some(ReasonCode::Success)
            );
            let topics = received_until(&mut reader, "shared/news");
            assert_eq!(topics, ["alice/inbox", "shared/news"], "{version} {tag}");

            // alice's own writes: deny wins over her `alice/#`.
            assert_eq!(
                publish(&mut reader, QoS::AtLeastOnce, 10, "alice/secret"),
                Some(pub_refused)
            );
            assert_eq!(
                publish(&mut reader, QoS::AtLeastOnce, 11, "alice/done"),
                Some(ReasonCode::Success)
            );
            denied.0 += 1;
            assert_eq!(received_until(&mut reader, "alice/done"), ["alice/done"]);
            disconnect(reader);
            disconnect(writer);
        }

        // Anonymous clients: the section before the first `user`, and the
        // patterns without %u.
        let anonymous_id = client_id_on_shard(&format!("anon{n}"), 1, 2);
        let mut anonymous = connect(addr, version, &anonymous_id, None);
        let codes = subscribe(&mut anonymous, 1, &["public/#", "anon/in", "alice/#", "#"]);
        assert_eq!(codes, [ok, refused, refused, ok], "{version}");
        denied.1 += 2;
        assert_eq!(
            publish(&mut anonymous, QoS::AtLeastOnce, 1, "anon/in"),
            Some(ReasonCode::Success)
        );
        denied.2 += 1; // its own `#` matches; it may not read anon/in
        assert_eq!(publish(&mut anonymous, QoS::AtLeastOnce, 2, "public/x"), Some(pub_refused));
        denied.0 += 1;
        let own = format!("devices/{anonymous_id}/t");
        assert_eq!(publish(&mut anonymous, QoS::AtLeastOnce, 3, &own), Some(ReasonCode::Success));
        assert_eq!(received_until(&mut anonymous, &own), [own.as_str()]);
        disconnect(anonymous);
    }
    // A publisher the rules refuse a will: refused at CONNECT.
    let mut with_will = RawClient::connect(addr);
    with_will.send(&Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "will-denied".into(),
        will: Some(ringmq::protocol::Will {
            topic: TopicName::new("alice/will").unwrap(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: Some("bob".into()),
        password: Some(Bytes::from_static(b"b-pw")),
        properties: Default::default(),
    })));
    match with_will.recv() {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected a CONNACK, got {other:?}"),
    }

    assert_eq!(counter_reaches(&admin, "acl_denied_publish", denied.0), denied.0);
    assert_eq!(counter_reaches(&admin, "acl_denied_subscribe", denied.1), denied.1);
    assert_eq!(counter_reaches(&admin, "acl_denied_delivery", denied.2), denied.2);
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs a mosquitto client; `None` when it is not installed (refused on CI).
fn mosquitto(program: &str, args: &[&str]) -> Option<Child> {
    match Command::new(program).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => Some(child),
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "{program} is required on CI");
            eprintln!("SKIPPED: {program} is not installed");
            None
        }
    }
}

#[test]
fn mosquitto_clients_see_the_acl() {
    let dir = scratch("mosquitto");
    let passwd = dir.join("passwd");
    set_password(&passwd, "alice", "a-pw");
    set_password(&passwd, "bob", "b-pw");
    std::fs::write(dir.join("acl"), ACL).unwrap();
    let config = dir.join("ringmq.toml");
    std::fs::write(
        &config,
        format!("password_file = {:?}\nacl_file = {:?}\n", passwd, dir.join("acl")),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), addr, true);
    let port = addr.port().to_string();
    let common = ["-h", "127.0.0.1", "-p", &port, "-q", "1", "-V", "5"];
    // alice on `#` prints what she receives; two messages, then exits.
    let Some(sub) = mosquitto(
        "mosquitto_sub",
        &[&common[..], &["-u", "alice", "-P", "a-pw", "-t", "#", "-C", "2", "-W", "10", "-v"]]
            .concat(),
    ) else {
        return;
    };
    // mosquitto_sub is subscribed once it has had time to connect; the
    // first publish is retried until it arrives.
    let pub_ = |topic: &str| {
        let output = mosquitto(
            "mosquitto_pub",
            &[&common[..], &["-u", "bob", "-P", "b-pw", "-t", topic, "-m", "m"]].concat(),
        )
        .unwrap()
        .wait_with_output()
        .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    std::thread::sleep(Duration::from_millis(500));
    // Denied for bob: mosquitto_pub hears 0x87 and says so.
    let (_, stderr) = pub_("alice/x");
    assert!(stderr.contains("not authorized") || stderr.contains("Not authorized"), "{stderr}");
    // Allowed for bob, not readable by alice, then allowed for both.
    assert!(pub_("bob/a").0);
    assert!(pub_("shared/news").0);
    assert!(pub_("alice/inbox").0);
    let output = sub.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout,
        "shared/news m\nalice/inbox m\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_applies_a_new_acl_to_connected_clients_and_keeps_it_on_a_broken_file() {
    let dir = scratch("reload");
    let passwd = dir.join("passwd");
    set_password(&passwd, "alice", "a-pw");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic a/x\n").unwrap();
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("password_file = {passwd:?}\nacl_file = {acl:?}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), addr, true);
    let alice = Some(("alice", "a-pw"));
    let id = client_id_on_shard("reloaded", 1, 2);
    let mut client = connect(addr, V5, &id, alice);
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 1, "a/x"), Some(ReasonCode::Success));
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 2, "a/y"), Some(ReasonCode::NotAuthorized));

    // A new file: the connected client's next publish uses it (the shards
    // take it at their next tick, 250 ms).
    std::fs::write(&acl, "user alice\ntopic a/y\n").unwrap();
    broker.signal(libc::SIGHUP);
    assert!(broker.log_shows("reload: acl_file applied", 1), "{}", broker.log());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 3, "a/x"), Some(ReasonCode::NotAuthorized));
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 4, "a/y"), Some(ReasonCode::Success));
    // New connections too.
    let mut other = connect(addr, V311, &client_id_on_shard("fresh", 0, 2), alice);
    assert_eq!(
        subscribe(&mut other, 1, &["a/y", "a/x"]),
        [ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
    );

    // A broken file: one error line with file:line, the rules stay.
    std::fs::write(&acl, "user alice\ntopic a/x\ntopic readwrit a/z\n").unwrap();
    broker.signal(libc::SIGHUP);
    let expected = format!("acl_file {}:3: unknown access \"readwrit\"", acl.display());
    assert!(broker.log_shows(&expected, 1), "{}", broker.log());
    let log = broker.log();
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 5, "a/x"), Some(ReasonCode::NotAuthorized));
    assert_eq!(publish(&mut client, QoS::AtLeastOnce, 6, "a/y"), Some(ReasonCode::Success));

    // The password file is re-read too: a new user may connect.
    let (refused, _) = try_connect(addr, V5, "dave1", Some(("dave", "d-pw")));
    assert_eq!(refused, Some(ReasonCode::BadUserNameOrPassword));
    set_password(&passwd, "dave", "d-pw");
    broker.signal(libc::SIGHUP);
    assert!(broker.log_shows("reload: password_file applied", 1), "{}", broker.log());
    assert!(broker.log().contains("added=1"), "{}", broker.log());
    connect(addr, V5, "dave2", Some(("dave", "d-pw")));
    // A broken password file keeps the one in force.
    std::fs::write(&passwd, "dave:nonsense\n").unwrap();
    broker.signal(libc::SIGHUP);
    assert!(broker.log_shows("line 1: unknown hash format", 1), "{}", broker.log());
    connect(addr, V5, "dave3", Some(("dave", "d-pw")));
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_closes_the_connections_of_removed_users_and_of_changed_passwords() {
    let dir = scratch("revoke");
    let passwd = dir.join("passwd");
    for (user, password) in [("alice", "a-pw"), ("bob", "b-pw"), ("carol", "c-pw")] {
        set_password(&passwd, user, password);
    }
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("password_file = {passwd:?}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), addr, true);
    // Both shards, both versions.
    let mut alice =
        connect(addr, V311, &client_id_on_shard("alice", 0, 2), Some(("alice", "a-pw")));
    let mut bob = connect(addr, V5, &client_id_on_shard("bob", 1, 2), Some(("bob", "b-pw")));
    let mut carol = connect(addr, V5, &client_id_on_shard("carol", 0, 2), Some(("carol", "c-pw")));

    // alice removed, bob's password changed, carol untouched.
    let deleted = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "-D", passwd.to_str().unwrap(), "alice"])
        .status()
        .unwrap();
    assert!(deleted.success());
    set_password(&passwd, "bob", "b-pw-2");
    broker.signal(libc::SIGHUP);
    assert!(broker.log_shows("reload: password_file applied", 1), "{}", broker.log());
    assert!(broker.log().contains("removed=1"), "{}", broker.log());

    // 3.1.1 has no DISCONNECT from the server: the connection closes.
    assert!(alice.closed_within(Duration::from_secs(10)), "alice stays connected");
    // 5.0: DISCONNECT 0x87 Not authorized, then the close (as a failed
    // re-authentication [MQTT-4.12.1-2]).
    match bob.recv() {
        Some(Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.reason, ReasonCode::NotAuthorized)
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(bob.closed_within(Duration::from_secs(10)));
    assert!(
        broker.log_shows("reload: closed the connections of users removed", 2),
        "one line per shard that closed one: {}",
        broker.log()
    );
    // carol is still served.
    carol.send(&Packet::PingReq);
    assert!(matches!(carol.recv(), Some(Packet::PingResp)));
    // The new file decides from now on.
    let (refused, _) = try_connect(addr, V5, "bob-again", Some(("bob", "b-pw")));
    assert_eq!(refused, Some(ReasonCode::BadUserNameOrPassword));
    connect(addr, V5, "bob-again", Some(("bob", "b-pw-2")));
    let (refused, _) = try_connect(addr, V311, "alice-again", Some(("alice", "a-pw")));
    assert_eq!(refused, Some(ReasonCode::BadUserNameOrPassword));
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mosquitto_sha512_hashes_authenticate() {
    let dir = scratch("sha512");
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-H", "sha512", "-c", "-b", passwd.to_str().unwrap(), "carol", "c-pw"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !made {
        assert!(std::env::var_os("CI").is_none(), "mosquitto_passwd is required on CI");
        eprintln!("SKIPPED: mosquitto_passwd is not installed");
        return;
    }
    assert!(std::fs::read_to_string(&passwd).unwrap().starts_with("carol:$6$"));
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("password_file = {passwd:?}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), addr, true);
    for version in [V311, V5] {
        for shard in 0..2 {
            let id = client_id_on_shard(&format!("carol{version}"), shard, 2);
            connect(addr, version, &id, Some(("carol", "c-pw")));
            let (reason, _) = try_connect(addr, version, &id, Some(("carol", "c-pw!")));
            assert_eq!(reason, Some(ReasonCode::BadUserNameOrPassword));
        }
    }
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn allow_anonymous_is_set_per_listener() {
    let dir = scratch("listeners");
    let passwd = dir.join("passwd");
    set_password(&passwd, "alice", "a-pw");
    let (closed, open): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let config = dir.join("ringmq.toml");
    std::fs::write(
        &config,
        format!(
            "password_file = {passwd:?}\n[[listener]]\nbind = \"{closed}\"\n\
             [[listener]]\nbind = \"{open}\"\nallow_anonymous = true\n"
        ),
    )
    .unwrap();
    let broker = Served::start(&config, &dir.join("log"), closed, false);
    for version in [V311, V5] {
        let (reason, _) = try_connect(closed, version, "anon-closed", None);
        assert_eq!(reason, Some(ReasonCode::NotAuthorized), "{version}");
        let (reason, _) = try_connect(open, version, "anon-open", None);
        assert_eq!(reason, Some(ReasonCode::Success), "{version}");
        // User names are checked on both.
        connect(closed, version, "alice-closed", Some(("alice", "a-pw")));
        let (reason, _) = try_connect(open, version, "alice-open", Some(("alice", "no")));
        assert_eq!(reason, Some(ReasonCode::BadUserNameOrPassword));
    }
    broker.stop();

    // Without authentication, a public listener needs allow_anonymous:
    // refused at start with one line naming the listener and the key.
    std::fs::write(
        &config,
        "[[listener]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n\
         [[listener]]\nbind = \"0.0.0.0:1884\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "ringmq: config error: {}:5:8: listener[1].bind = \"0.0.0.0:1884\" is not loopback and \
         no authentication is configured; set allow_anonymous = true (globally, or \
         listener[1].allow_anonymous) to accept anonymous clients on it\n",
        config.display()
    );
    assert_eq!(stderr, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_parses_the_acl_file() {
    let dir = scratch("check");
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("acl_file = {acl:?}\n")).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = check();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("acl: 2 user section(s), 10 rule(s)"), "{stdout}");
    std::fs::write(&acl, "user alice\npattern write devices/id-%c\n").unwrap();
    let output = check();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "ringmq: acl_file {}:2: invalid pattern \"devices/id-%c\": `%u` and `%c` must be \
             the whole level (e.g. `devices/%c/state`, not `devices/id-%c`)\n",
            acl.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The publish acknowledgements and deliveries of one scripted sequence
/// on the broker at `addr` (5.0 clients), as lines to compare between
/// brokers: bob's and alice's publishes with their PUBACK codes, then what
/// alice (subscribed to `#`) received before each publisher's marker.
fn scripted(addr: SocketAddr) -> Vec<String> {
    let mut lines = Vec::new();
    let mut alice = connect(addr, V5, "xc-alice", Some(("alice", "a-pw")));
    subscribe(&mut alice, 1, &["#"]);
    // Mosquitto grants `#` and so does ringmq; what differs by design is
    // only a filter nothing readable overlaps (not asked here).
    let mut bob = connect(addr, V5, "xc-bob", Some(("bob", "b-pw")));
    let topics = [
        "alice/x",
        "alice/inbox",
        "bob/a",
        "devices/xc-bob/t",
        "devices/xc-alice/t",
        "inbox/alice",
        "inbox/bob",
        "public/z",
        "anon/in",
        "$SYS/broker/x",
        "shared/news",
    ];
    for (id, topic) in (1..).zip(topics) {
        let reason = publish(&mut bob, QoS::AtLeastOnce, id, topic);
        lines.push(format!("bob {topic}: {reason:?}"));
    }
    lines.push(format!("alice got {:?}", received_until(&mut alice, "shared/news")));
    // alice publishes on a connection of her own (the subscriber's would
    // interleave its deliveries with the acks); %c is that client's id.
    let mut writer = connect(addr, V5, "xc-alice-w", Some(("alice", "a-pw")));
    let own = ["alice/secret", "devices/xc-alice-w/t", "devices/xc-alice/t", "inbox/alice"];
    for (id, topic) in (20..).zip(own.into_iter().chain(["alice/done"])) {
        let reason = publish(&mut writer, QoS::AtLeastOnce, id, topic);
        lines.push(format!("alice {topic}: {reason:?}"));
    }
    lines.push(format!("alice got {:?}", received_until(&mut alice, "alice/done")));
    let mut anonymous = connect(addr, V5, "xc-anon", None);
    for (id, topic) in (1..).zip(["anon/in", "public/x", "devices/xc-anon/t", "alice/x"]) {
        let reason = publish(&mut anonymous, QoS::AtLeastOnce, id, topic);
        lines.push(format!("anonymous {topic}: {reason:?}"));
    }
    for client in [alice, bob, writer, anonymous] {
        disconnect(client);
    }
    lines
}

/// Mosquitto (the system's `mosquitto`, 2.0 on Debian) as the oracle: the
/// same password file (made by mosquitto_passwd, `$7$`) and the same ACL
/// file give the same acknowledgements and the same deliveries.
#[test]
fn acl_decisions_match_mosquitto() {
    let program = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|program| Command::new(program).arg("-h").output().is_ok());
    let Some(program) = program else {
        assert!(std::env::var_os("CI").is_none(), "mosquitto is required on CI");
        eprintln!("SKIPPED: mosquitto is not installed");
        return;
    };
    let dir = scratch("oracle");
    let passwd = dir.join("passwd");
    for (user, password, create) in [("alice", "a-pw", true), ("bob", "b-pw", false)] {
        let mut command = Command::new("mosquitto_passwd");
        if create {
            command.arg("-c");
        }
        let status = command.args(["-b", passwd.to_str().unwrap(), user, password]).status();
        assert!(status.unwrap().success());
    }
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();

    let theirs: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npassword_file {}\nacl_file {}\n",
            theirs.port(),
            passwd.display(),
            acl.display()
        ),
    )
    .unwrap();
    let mut mosquitto = Command::new(program)
        .args(["-c", conf.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(theirs).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected = scripted(theirs);
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();

    let config = dir.join("ringmq.toml");
    std::fs::write(
        &config,
        format!("password_file = {passwd:?}\nacl_file = {acl:?}\nallow_anonymous = true\n"),
    )
    .unwrap();
    let ours: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Served::start(&config, &dir.join("log"), ours, true);
    assert_eq!(scripted(ours), expected);
    broker.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}
