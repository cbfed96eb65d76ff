//! End to end: MQTT 5.0 enhanced authentication with SCRAM-SHA-256 over
//! loopback, with a credentials file written by `ringmq passwd --scram`.
//! The exchange is driven with ringmq's codec over a raw socket (rumqttc
//! 0.24, the dev-dependency, has no AUTH packet) and from Python (`scram_client.py`: its
//! own SCRAM on hashlib/hmac and paho-mqtt's property codec over a raw
//! socket, since paho-mqtt 2.x cannot send AUTH either).

mod common;

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("e2e-scram", name)
}

use bytes::Bytes;
use common::{client_id_on_shard, Broker, RawClient};
use ringmq::auth::scram::client::ScramClient;
use ringmq::protocol::{
    Auth, AuthProperties, Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const METHOD: &str = "SCRAM-SHA-256";

/// Runs `ringmq ARGS` with `stdin`.
fn ringmq(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// `ringmq passwd --scram --password-stdin FILE USER`, which must succeed;
/// with the fewest iterations RFC 7677 allows, as clients built without
/// optimization derive the key in these tests.
fn set_password(file: &Path, user: &str, password: &str) {
    let file = file.to_str().unwrap();
    let args = ["passwd", "--scram", "--iterations", "4096", "--password-stdin", file, user];
    let output = ringmq(&args, &format!("{password}\n"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A broker with `shards` shards whose `scram_file` has alice
/// ("wonderland") and bob ("builder"), plus `extra` configuration.
fn broker(name: &str, shards: usize, extra: &str) -> (Broker, PathBuf) {
    let dir = scratch(name);
    let file = dir.join("scram");
    set_password(&file, "alice", "wonderland");
    set_password(&file, "bob", "builder");
    let toml = format!("scram_file = {:?}\n{extra}", file.to_str().unwrap());
    (Broker::start_with_config(shards, &toml), file)
}

fn connect(client_id: &str, method: &str, data: Option<String>) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            authentication_method: Some(method.into()),
            authentication_data: data.map(Bytes::from),
            ..ConnectProperties::default()
        },
    }))
}

fn auth(reason: ReasonCode, data: String) -> Packet {
    Packet::Auth(Box::new(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(METHOD.into()),
            authentication_data: Some(Bytes::from(data)),
            ..AuthProperties::default()
        },
    }))
}

/// The Authentication Data of an AUTH 0x18 with the SCRAM method.
fn continued(packet: Option<Packet>) -> String {
    let Some(Packet::Auth(auth)) = packet else { panic!("expected AUTH, got {packet:?}") };
    assert_eq!(auth.reason, ReasonCode::ContinueAuthentication);
    // [MQTT-4.12.0-5] every AUTH carries the CONNECT's method.
    assert_eq!(auth.properties.authentication_method.as_deref(), Some(METHOD));
    String::from_utf8(auth.properties.authentication_data.unwrap().to_vec()).unwrap()
}

/// Runs the SCRAM exchange of CONNECT as `user`; the CONNACK.
fn scram_connect(
    broker: &Broker,
    client_id: &str,
    user: &str,
    password: &str,
) -> (RawClient, Option<Packet>, ScramClient) {
    let mut client = RawClient::connect(broker.addr);
    let mut scram = ScramClient::new(user, password, &format!("nonce-{client_id}"));
    client.send(&connect(client_id, METHOD, Some(scram.client_first())));
    let server_first = continued(client.recv());
    let client_final = scram.client_final(&server_first).expect("a valid server-first");
    client.send(&auth(ReasonCode::ContinueAuthentication, client_final));
    let connack = client.recv();
    (client, connack, scram)
}

/// The CONNACK's code, checking that a success carries the method and a
/// server-final the client verifies [MQTT-4.12.0-5].
fn connack_code(connack: Option<Packet>, scram: &ScramClient) -> Option<ReasonCode> {
    let Some(Packet::ConnAck(connack)) = connack else { return None };
    if connack.reason == ReasonCode::Success {
        assert_eq!(connack.properties.authentication_method.as_deref(), Some(METHOD));
        let data = connack.properties.authentication_data.expect("server-final in CONNACK");
        assert!(scram.verify_server_final(std::str::from_utf8(&data).unwrap()));
    }
    Some(connack.reason)
}

/// A re-authentication [MQTT-4.12.1-1]: AUTH 0x19, AUTH 0x18, then what
/// the server answers.
fn reauthenticate(client: &mut RawClient, user: &str, password: &str) -> (Packet, ScramClient) {
    let mut scram = ScramClient::new(user, password, "re-nonce");
    client.send(&auth(ReasonCode::ReAuthenticate, scram.client_first()));
    let server_first = continued(client.recv());
    let client_final = scram.client_final(&server_first).unwrap();
    client.send(&auth(ReasonCode::ContinueAuthentication, client_final));
    (client.recv().expect("an answer"), scram)
}

#[test]
fn scram_exchanges_on_two_shards_then_reauthenticate() {
    let (broker, _file) = broker("shards", 2, "");
    // The connection is read by whichever shard accepts it; one of these
    // two is handed off to its home after the exchange.
    let ids = [0, 1].map(|shard| client_id_on_shard("scram", shard, 2));
    let (mut alice, connack, scram) = scram_connect(&broker, &ids[0], "alice", "wonderland");
    assert_eq!(connack_code(connack, &scram), Some(ReasonCode::Success));
    let (mut bob, connack, scram) = scram_connect(&broker, &ids[1], "bob", "builder");
    assert_eq!(connack_code(connack, &scram), Some(ReasonCode::Success));

    // Both sessions work: bob receives what alice publishes.
    bob.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new("scram/t").unwrap(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        }]
        .into_iter()
        .collect(),
        refused: Vec::new(),
    }));
    assert!(matches!(bob.recv(), Some(Packet::SubAck(_))));
    let publish = |client: &mut RawClient, payload: &'static [u8]| {
        client.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new("scram/t").unwrap(),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::from_static(payload),
        }));
    };
    publish(&mut alice, b"one");
    let Some(Packet::Publish(delivered)) = bob.recv() else { panic!("no delivery") };
    assert_eq!(&delivered.payload[..], b"one");

    // alice re-authenticates: AUTH 0x00 with the server-final
    // (5.0 section 4.12.1), and the connection goes on.
    let (answer, scram) = reauthenticate(&mut alice, "alice", "wonderland");
    let Packet::Auth(done) = answer else { panic!("expected AUTH 0x00, got {answer:?}") };
    assert_eq!(done.reason, ReasonCode::Success);
    assert_eq!(done.properties.authentication_method.as_deref(), Some(METHOD));
    let server_final = done.properties.authentication_data.unwrap();
    assert!(scram.verify_server_final(std::str::from_utf8(&server_final).unwrap()));
    publish(&mut alice, b"two");
    let Some(Packet::Publish(delivered)) = bob.recv() else { panic!("no delivery") };
    assert_eq!(&delivered.payload[..], b"two");

    // bob fails to re-authenticate: DISCONNECT 0x87, closed
    // [MQTT-4.12.1-2].
    let (answer, _) = reauthenticate(&mut bob, "bob", "wrong");
    let Packet::Disconnect(disconnect) = answer else { panic!("expected DISCONNECT: {answer:?}") };
    assert_eq!(disconnect.reason, ReasonCode::NotAuthorized);
    assert!(bob.closed_within(Duration::from_secs(5)));
    assert!(broker.stop().success());
}

/// The exchange runs on the shard that accepted the connection; one homed
/// elsewhere then moves with its authenticated CONNECT, and its home shard
/// must let it re-authenticate. Which shard accepts is the kernel's choice
/// (SO_REUSEPORT), so several connections per home make a hand-off all
/// but certain.
#[test]
fn reauthentication_works_wherever_the_connection_was_accepted() {
    let (broker, _file) = broker("handoff", 2, "");
    for shard in 0..2 {
        for n in 0..4 {
            let id = client_id_on_shard(&format!("handoff{n}"), shard, 2);
            let (mut client, connack, scram) = scram_connect(&broker, &id, "alice", "wonderland");
            assert_eq!(connack_code(connack, &scram), Some(ReasonCode::Success), "{id}");
            let (answer, _) = reauthenticate(&mut client, "alice", "wonderland");
            let Packet::Auth(done) = answer else { panic!("{id}: expected AUTH, got {answer:?}") };
            assert_eq!(done.reason, ReasonCode::Success, "{id}");
        }
    }
    assert!(broker.stop().success());
}

#[test]
fn failures_get_their_connack_codes() {
    let (broker, _file) = broker("failures", 1, "");
    // A wrong password, and an unknown user: 0x87 Not authorized
    // [MQTT-4.12.0-4], then the connection closes.
    for (user, password) in [("alice", "looking-glass"), ("mallory", "wonderland")] {
        let (mut client, connack, scram) = scram_connect(&broker, "c", user, password);
        assert_eq!(connack_code(connack, &scram), Some(ReasonCode::NotAuthorized), "{user}");
        assert!(client.closed_within(Duration::from_secs(5)));
    }
    // [MQTT-4.12.0-1] an unknown method: 0x8C Bad authentication method.
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect("c", "SCRAM-SHA-1", Some("n,,n=alice,r=abc".into())));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::BadAuthenticationMethod);
    assert!(client.closed_within(Duration::from_secs(5)));
    // [MQTT-3.1.2-30] only AUTH (or DISCONNECT) before CONNACK: anything
    // else is a Protocol Error.
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect("c", METHOD, Some("n,,n=alice,r=abc".into())));
    continued(client.recv());
    client.send(&Packet::PingReq);
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::ProtocolError);
    // With only a scram_file, user names have nothing to be checked
    // against (0x86) and anonymous clients are refused (0x87).
    for (username, expected) in
        [(Some("alice"), ReasonCode::BadUserNameOrPassword), (None, ReasonCode::NotAuthorized)]
    {
        let mut client = RawClient::connect(broker.addr);
        client.send(&Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: username.map(Into::into),
            password: username.map(|_| Bytes::from_static(b"wonderland")),
            properties: ConnectProperties::default(),
        })));
        let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
        assert_eq!(connack.reason, expected, "{username:?}");
    }
    assert!(broker.stop().success());
}

#[test]
fn a_silent_client_is_refused_at_the_connect_timeout() {
    let (broker, _file) = broker("timeout", 1, "[limits]\nconnect_timeout_ms = 500\n");
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect("c", METHOD, Some("n,,n=alice,r=abc".into())));
    continued(client.recv());
    // No answer: the exchange ends at the connect timeout, with 0x87.
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::NotAuthorized);
    assert!(client.closed_within(Duration::from_secs(5)));
    assert!(broker.stop().success());
}

#[test]
fn passwd_scram_writes_deletes_and_check_config_counts() {
    let dir = scratch("passwd");
    let file = dir.join("scram");
    let path = file.to_str().unwrap();
    let output = ringmq(&["passwd", "--scram", "--password-stdin", path, "alice"], "wonderland\n");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    // RFC 5803: user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    assert!(text.starts_with("alice:SCRAM-SHA-256$600000:"), "{text}");
    let args = ["passwd", "--scram", "--iterations", "4095", "--password-stdin", path, "bob"];
    let output = ringmq(&args, "x\n");
    assert!(!output.status.success(), "RFC 7677: at least 4096 iterations");
    assert!(String::from_utf8_lossy(&output.stderr).contains("4096"));
    assert!(!text.contains("wonderland"));
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("scram_file = {:?}\n", file.to_str().unwrap())).unwrap();
    let output = ringmq(&["check-config", config.to_str().unwrap()], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 SCRAM user(s)"));
    let output = ringmq(&["passwd", "--scram", "-D", file.to_str().unwrap(), "alice"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
    let output = ringmq(&["passwd", "--scram", "-D", file.to_str().unwrap(), "alice"], "");
    assert!(!output.status.success());
    // A bad line is a configuration error naming the key and the line.
    std::fs::write(&file, "alice:$argon2id$v=19$m=19456,t=2,p=1$x$y\n").unwrap();
    let output = ringmq(&["check-config", config.to_str().unwrap()], "");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scram_file") && stderr.contains("line 1"), "{stderr}");
}

/// The exchange from Python, with an independent SCRAM implementation.
#[test]
fn paho_python_scram_exchange() {
    let probe = Command::new("python3").args(["-c", "import paho.mqtt.properties"]).output();
    if !probe.is_ok_and(|output| output.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "paho-mqtt is required on CI");
        eprintln!("SKIPPED: paho-mqtt is not installed");
        return;
    }
    let (broker, _file) = broker("python", 2, "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scram_client.py");
    let ids = [0, 1].map(|shard| client_id_on_shard("py", shard, 2));
    let output = Command::new("python3")
        .arg(script)
        .arg(broker.port().to_string())
        .args(ids)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scram_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(broker.stop().success());
}
