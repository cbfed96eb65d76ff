//! WebSocket listeners end to end (`protocol = "ws"`, and over `tls`: wss):
//! a raw WebSocket client over a blocking socket (byte-level control of the
//! frames: packets split across frames, many packets in one frame, a frame
//! cut at the hand-off, ping/pong, refused frames and upgrades), Python
//! paho-mqtt with `transport="websockets"` and MQTT.js under node as the
//! independent clients. Each broker has 2 shards, a plain listener (probed
//! for readiness), a ws and a wss listener, and an admin listener.

mod common;

use bytes::BytesMut;
use common::{client_id_on_shard, connect_packet, free_port, Broker};
use rcgen::{CertificateParams, KeyPair, SanType};
use ringmq::protocol::{
    Decoder, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const SHARDS: usize = 2;

/// A broker with plain, ws (path `/mqtt`) and wss (path `/ws`) listeners.
struct WsBroker {
    broker: Broker,
    ws: SocketAddr,
    wss: SocketAddr,
    admin: String,
    dir: PathBuf,
}

impl WsBroker {
    /// `top` goes before the listeners.
    fn start(name: &str, top: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringmq-ws-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let (plain, ws, wss) = (addr(), addr(), addr());
        let admin = format!("127.0.0.1:{}", free_port());
        let d = dir.display();
        let text = format!(
            "{top}\n[[listener]]\nbind = \"{plain}\"\n\
             [[listener]]\nbind = \"{ws}\"\nprotocol = \"ws\"\n\
             [[listener]]\nbind = \"{wss}\"\nprotocol = \"ws\"\npath = \"/ws\"\n\
             tls = {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}\n\
             [admin]\nlisten = \"{admin}\"\n"
        );
        let config = dir.join("ringmq.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("ringmq.log");
        let args = ["--config", config.to_str().unwrap(), "--log", "info"];
        let broker = Broker::start_configured(plain, SHARDS, &args, &log);
        common::wait_ready(&admin);
        Self { broker, ws, wss, admin, dir }
    }

    fn cafile(&self) -> String {
        self.dir.join("cert.pem").to_str().unwrap().to_owned()
    }

    /// A counter of /metrics summed over the shards, once it is at least
    /// `at_least` (the shards publish their counters every 250 ms).
    fn counter(&self, name: &str, at_least: u64) -> u64 {
        common::counter_at_least(&self.admin, name, at_least)
    }

    fn stop(self) {
        let log = std::fs::read_to_string(self.dir.join("ringmq.log")).unwrap_or_default();
        assert!(self.broker.stop().success(), "{log}");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- a raw WebSocket client ---------------------------------------------------

const MASK: [u8; 4] = [0xa1, 0x07, 0x5c, 0xee];

/// A client frame: masked, FIN as given.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
    }
    out.to_vec()
}

/// The upgrade request for `path`, with extra header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A WebSocket connection over a blocking socket.
struct WsClient {
    stream: TcpStream,
    /// Bytes received, not yet parsed as frames.
    input: Vec<u8>,
    /// MQTT bytes from binary frames, not yet decoded.
    mqtt: BytesMut,
    decoder: Decoder,
}

impl WsClient {
    /// Sends `request` (then `early`, in the same write) and returns the
    /// HTTP response head and the client.
    fn open(addr: SocketAddr, request: &str, early: &[u8]) -> (String, Self) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = request.as_bytes().to_vec();
        bytes.extend_from_slice(early);
        stream.write_all(&bytes).unwrap();
        let mut input = Vec::new();
        let head = loop {
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(input[..end + 4].to_vec()).unwrap();
                input.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break String::from_utf8_lossy(&input).into_owned(),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
            }
        };
        let decoder = Decoder::new(ProtocolVersion::V3_1_1, 1 << 20);
        (head, Self { stream, input, mqtt: BytesMut::new(), decoder })
    }

    /// Upgrades at `path` with the `mqtt` subprotocol.
    fn upgrade(addr: SocketAddr, path: &str, early: &[u8]) -> Self {
        let request = upgrade_request(path, "Sec-WebSocket-Protocol: mqtt\r\n");
        let (head, client) = Self::open(addr, &request, early);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame from the server: (opcode, payload); `None` at the end
    /// of the stream. Server frames are never masked (RFC 6455 5.1).
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.input.len() >= 2 {
                assert_eq!(self.input[1] & 0x80, 0, "a masked frame from the server");
                assert_eq!(self.input[0] & 0x80, 0x80, "a fragmented frame from the server");
                let (len, at) = match self.input[1] & 0x7f {
                    126 if self.input.len() >= 4 => {
                        (u16::from_be_bytes([self.input[2], self.input[3]]) as usize, 4)
                    }
                    127 if self.input.len() >= 10 => {
                        (u64::from_be_bytes(self.input[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.input.len() >= at + len {
                    let opcode = self.input[0] & 0x0f;
                    let payload = self.input[at..at + len].to_vec();
                    self.input.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next MQTT packet, from binary frames; control frames other than
    /// a close are returned as errors.
    fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.mqtt).unwrap() {
                return packet;
            }
            match self.frame() {
                Some((0x2, payload)) => self.mqtt.extend_from_slice(&payload),
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        }]
        .into_iter()
        .collect(),
    })
}

fn publish(topic: &str, payload: &'static [u8], packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(packet_id),
        payload: payload.into(),
        properties: Default::default(),
    })
}

// ---- the tests -----------------------------------------------------------------

/// [MQTT-6.0.0-2] "A single WebSocket data frame can contain multiple or
/// partial MQTT Control Packets": the CONNECT split over three frames (and
/// frame headers cut between writes), a SUBSCRIBE, a PUBLISH and a PINGREQ
/// in one frame, fragmented messages, a ping answered between them. Done
/// for client ids homed on each shard: the second frame starts in the same
/// write as the CONNECT, so a hand-off moves a partial frame with the
/// socket.
#[test]
fn packets_split_across_frames_and_batched_in_one_frame_on_both_shards() {
    let broker = WsBroker::start("frames", "");
    for shard in 0..SHARDS {
        for attempt in 0..8 {
            let id = client_id_on_shard(&format!("ws-frames-{attempt}"), shard, SHARDS);
            let connect = encode(&[connect_packet(&id, true, 30)]);
            let (a, rest) = connect.split_at(3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let mut early = frame(0x2, false, a);
            early.extend(frame(0x0, false, b));
            early.extend(frame(0x0, true, c));
            // The first 3 bytes of the next frame's header.
            let batch =
                encode(&[subscribe("ws/#"), publish("ws/one", b"hello", 7), Packet::PingReq]);
            let next = frame(0x2, true, &batch);
            early.extend_from_slice(&next[..3]);
            let mut client = WsClient::upgrade(broker.ws, "/mqtt", &early);
            assert!(
                matches!(client.recv(), Packet::ConnAck(ack) if ack.reason == ReasonCode::Success)
            );
            // A ping before the rest of the frame: answered with its payload
            // (RFC 6455 5.5.2).
            client.send(&next[3..9]);
            std::thread::sleep(Duration::from_millis(20));
            let mut rest = next[9..].to_vec();
            rest.extend(frame(0x9, true, b"are you there"));
            client.send(&rest);
            let mut got = Vec::new();
            let mut pong = None;
            while got.len() < 4 || pong.is_none() {
                if got.len() == 4 {
                    pong = client.frame();
                    continue;
                }
                match client.decoder.decode(&mut client.mqtt).unwrap() {
                    Some(packet) => got.push(packet),
                    None => match client.frame() {
                        Some((0x2, payload)) => client.mqtt.extend_from_slice(&payload),
                        Some((0xa, payload)) => pong = Some((0xa, payload)),
                        other => panic!("unexpected {other:?}"),
                    },
                }
            }
            assert_eq!(pong, Some((0xa, b"are you there".to_vec())));
            assert!(got.iter().any(|p| matches!(p, Packet::SubAck(_))), "{got:?}");
            assert!(got.iter().any(|p| matches!(p, Packet::PubAck(_))), "{got:?}");
            assert!(got.iter().any(|p| matches!(p, Packet::PingResp)), "{got:?}");
            assert!(
                got.iter().any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"hello")),
                "{got:?}"
            );
            if attempt % 2 == 0 {
                // The closing handshake: our close is answered with its code.
                client.send(&frame(0x8, true, &1001u16.to_be_bytes()));
                assert_eq!(client.frame(), Some((0x8, 1001u16.to_be_bytes().to_vec())));
            } else {
                // After a DISCONNECT the server starts it (RFC 6455 7.1.2).
                client.send(&frame(0x2, true, &encode(&[Packet::Disconnect(Default::default())])));
                assert_eq!(client.frame(), Some((0x8, 1000u16.to_be_bytes().to_vec())));
                client.send(&frame(0x8, true, &1000u16.to_be_bytes()));
            }
            assert_eq!(client.frame(), None, "the server closes the TCP connection");
        }
    }
    assert_eq!(broker.counter("ws_upgrades", 2 * 8), 2 * 8);
    assert!(broker.counter("handed_off", 1) >= 1, "no connection was handed off");
    broker.stop();
}

/// Wrong path: 404; not an upgrade: 400; no `mqtt` subprotocol: 400
/// ([MQTT-6.0.0-3]); larger than `max_connect_size`: 431; not whole within
/// `connect_timeout_ms`: closed. None gets a 101, all are counted.
#[test]
fn bad_upgrades_are_refused_and_counted() {
    let broker =
        WsBroker::start("refused", "[limits]\nconnect_timeout_ms = 1000\nmax_connect_size = 4096");
    let mqtt = "Sec-WebSocket-Protocol: mqtt\r\n";
    let (head, _) = WsClient::open(broker.ws, &upgrade_request("/other", mqtt), b"");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let (head, _) = WsClient::open(broker.ws, "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let (head, _) = WsClient::open(broker.ws, &upgrade_request("/mqtt", ""), b"");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let (head, _) = WsClient::open(
        broker.ws,
        &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: wamp.2.json\r\n"),
        b"",
    );
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    // The ws listener does not answer MQTT straight over TCP.
    let (head, _) = WsClient::open(broker.ws, "", &encode(&[connect_packet("raw", true, 30)]));
    assert!(!head.contains("101"), "{head}");
    let huge = format!("X-Padding: {}\r\n", "x".repeat(5000));
    let (head, _) = WsClient::open(broker.ws, &upgrade_request("/mqtt", &huge), b"");
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    // Half a request, then silence: closed at the timeout, without a reply.
    let mut silent = TcpStream::connect(broker.ws).unwrap();
    silent.write_all(b"GET /mqtt HTTP/1.1\r\n").unwrap();
    // A safety net far beyond connect_timeout_ms, not a measurement.
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let closed = match silent.read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the silent upgrade was not closed");
    assert_eq!(broker.counter("ws_upgrade_failed", 7), 7);
    assert_eq!(broker.counter("ws_upgrades", 0), 0);
    broker.stop();
}

/// [MQTT-6.0.0-1] "If any other type of data frame is received the
/// recipient MUST close the Network Connection": a text frame gets close
/// 1003; an unmasked frame close 1002 (RFC 6455 5.1).
#[test]
fn text_and_unmasked_frames_close_the_connection() {
    let broker = WsBroker::start("text", "");
    let id = client_id_on_shard("ws-text", 1, SHARDS);
    let connect = frame(0x2, true, &encode(&[connect_packet(&id, true, 30)]));
    let mut client = WsClient::upgrade(broker.ws, "/mqtt", &connect);
    assert!(matches!(client.recv(), Packet::ConnAck(_)));
    client.send(&frame(0x1, true, b"{\"hello\": 1}"));
    assert_eq!(client.frame(), Some((0x8, 1003u16.to_be_bytes().to_vec())));
    assert_eq!(client.frame(), None);

    let mut client = WsClient::upgrade(broker.ws, "/mqtt", &connect);
    assert!(matches!(client.recv(), Packet::ConnAck(_)));
    let pingreq = encode(&[Packet::PingReq]);
    client.send(&[&[0x82, pingreq.len() as u8][..], &pingreq].concat());
    assert_eq!(client.frame(), Some((0x8, 1002u16.to_be_bytes().to_vec())));
    assert_eq!(client.frame(), None);
    broker.stop();
}

/// Whether `program` runs `probe` successfully; on CI it must.
fn available(program: &str, probe: &[&str], env: &[(&str, &str)]) -> bool {
    let found = Command::new(program)
        .args(probe)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{program} {probe:?} is required on CI");
        eprintln!("SKIPPED: {program} {probe:?} failed");
    }
    found
}

fn check(output: std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Python paho-mqtt over ws and wss: QoS 0, 1 and 2 between a subscriber
/// and a publisher homed on different shards.
#[test]
fn paho_mqtt_over_ws_and_wss() {
    if !available("python3", &["-c", "import paho.mqtt.client"], &[]) {
        return;
    }
    let broker = WsBroker::start("paho", "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_websocket.py");
    let cafile = broker.cafile();
    for (addr, path, ca) in [(broker.ws, "/mqtt", "-"), (broker.wss, "/ws", cafile.as_str())] {
        let sub = client_id_on_shard(&format!("paho-ws-sub{}", addr.port()), 0, SHARDS);
        let publisher = client_id_on_shard(&format!("paho-ws-pub{}", addr.port()), 1, SHARDS);
        let port = addr.port().to_string();
        let output = Command::new("python3")
            .args([script, &port, path, ca, &sub, &publisher])
            .output()
            .unwrap();
        check(output, &format!("paho over {path}"));
    }
    assert!(broker.counter("tls_handshakes", 2) >= 2);
    broker.stop();
}

/// The `mqtt` npm package's directory (RINGMQ_NODE_MODULES, where .ci/run
/// installs it).
fn node_modules() -> String {
    std::env::var("RINGMQ_NODE_MODULES").unwrap_or_default()
}

/// MQTT.js under node over ws and wss, as a browser would connect.
#[test]
fn mqtt_js_over_ws_and_wss() {
    let modules = node_modules();
    if !available("node", &["-e", "require('mqtt')"], &[("NODE_PATH", &modules)]) {
        return;
    }
    let broker = WsBroker::start("mqttjs", "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqttjs_websocket.js");
    let cafile = broker.cafile();
    let ws = format!("ws://127.0.0.1:{}/mqtt", broker.ws.port());
    let wss = format!("wss://localhost:{}/ws", broker.wss.port());
    for (url, ca) in [(ws, "-"), (wss, cafile.as_str())] {
        let sub = client_id_on_shard(&format!("js-sub-{url}"), 1, SHARDS);
        let publisher = client_id_on_shard(&format!("js-pub-{url}"), 0, SHARDS);
        let output = Command::new("node")
            .args([script, &url, ca, &sub, &publisher])
            .env("NODE_PATH", &modules)
            .output()
            .unwrap();
        check(output, &format!("MQTT.js over {url}"));
    }
    broker.stop();
}
