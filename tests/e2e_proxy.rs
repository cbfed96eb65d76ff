//! PROXY protocol listeners end to end: clients send a v1 or v2 header,
//! then their CONNECT (or their TLS handshake), and the broker's connect
//! log lines name the client the header names; connections without a
//! valid header are closed and counted (`proxy_header_invalid` on
//! /metrics). Each broker has a plain listener (probed for readiness, so
//! that probes are not refused headers), a `proxy_protocol` one, a
//! `proxy_protocol` TLS one, and an admin listener. HAProxy (`send-proxy`,
//! `send-proxy-v2`) in front of mosquitto_pub is the independent check.

mod common;

use bytes::BytesMut;
use common::{client_id_on_shard, connect_packet, free_port, Broker, RawClient};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use ringmq::protocol::{Decoder, Packet, ProtocolVersion, ReasonCode};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA and the broker's certificate signed by it: (CA DER, cert PEM, key
/// PEM).
fn certificates() -> (rustls::pki_types::CertificateDer<'static>, String, String) {
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "proxy test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into()]).unwrap();
    server.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.der().clone(), cert.pem(), key.serialize_pem())
}

/// A broker with a plain listener (`broker.addr`), a PROXY one (`proxy`),
/// a PROXY TLS one (`proxy_tls`) and an admin listener.
struct ProxyBroker {
    broker: Broker,
    proxy: SocketAddr,
    proxy_tls: SocketAddr,
    admin: String,
    dir: PathBuf,
    /// What the TLS clients trust.
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl ProxyBroker {
    fn start(name: &str, shards: usize, top: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringmq-proxy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = certificates();
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let (plain, proxy, proxy_tls) = (addr(), addr(), addr());
        let admin = format!("127.0.0.1:{}", free_port());
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        let text = format!(
            "{top}\n[[listener]]\nbind = \"{plain}\"\n\
             [[listener]]\nbind = \"{proxy}\"\nproxy_protocol = true\n\
             [[listener]]\nbind = \"{proxy_tls}\"\nproxy_protocol = true\n\
             tls = {{ cert = {cert:?}, key = {key:?} }}\n\
             [admin]\nlisten = \"{admin}\"\n"
        );
        let config = dir.join("ringmq.toml");
        std::fs::write(&config, text).unwrap();
        let args = ["--config", config.to_str().unwrap(), "--log", "info"];
        let broker = Broker::start_configured(plain, shards, &args, &dir.join("ringmq.log"));
        // The listeners are bound one after the other: wait for the PROXY
        // ones too (a probe that sends nothing is not a refused header).
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [proxy, proxy_tls] {
            while TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "ringmq did not listen on {addr}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self { broker, proxy, proxy_tls, admin, dir, ca }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ringmq.log")).unwrap_or_default()
    }

    /// The `client connected` line of `client_id`, once logged.
    fn connect_line(&self, client_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let needle = format!("client_id=\"{client_id}\"");
        let alt = format!("client_id={client_id} ");
        loop {
            let log = self.log();
            let line = log.lines().find(|line| {
                line.contains("client connected") && (line.contains(&needle) || line.contains(&alt))
            });
            if let Some(line) = line {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no connect line for {client_id}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter of /metrics summed over the shards, once it is at least
    /// `at_least` (the shards publish their counters every 250 ms).
    fn counter(&self, name: &str, at_least: u64) -> u64 {
        common::counter_at_least(&self.admin, name, at_least)
    }

    fn stop(self) {
        let log = self.log();
        assert!(self.broker.stop().success(), "{log}");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bytes of a CONNECT of `client_id`.
fn connect_bytes(client_id: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    connect_packet(client_id, true, 0).encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
    out.to_vec()
}

/// Whether the CONNACK that came back accepts the client.
fn accepted(client: &mut RawClient) -> bool {
    matches!(client.recv(), Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success)
}

/// A v2 header: `command` (0 LOCAL, 1 PROXY), `family`, then `block`.
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// A v2 PROXY header for a TCP client at `source` (to 10.0.0.1:1883 or
/// [2001:db8::1]:1883), with a TLV after the addresses.
fn v2_proxy(source: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match source {
        SocketAddr::V4(v4) => {
            block.extend_from_slice(&v4.ip().octets());
            block.extend_from_slice(&[10, 0, 0, 1]);
            0x11
        }
        SocketAddr::V6(v6) => {
            block.extend_from_slice(&v6.ip().octets());
            block.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
            0x21
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&1883u16.to_be_bytes());
    // PP2_TYPE_AUTHORITY "broker.example": skipped.
    block.extend_from_slice(&[0x02, 0, 14]);
    block.extend_from_slice(b"broker.example");
    v2(1, family, &block)
}

#[test]
fn a_v1_header_names_the_client_in_the_logs_also_after_a_hand_off() {
    let broker = ProxyBroker::start("v1", 2, "");
    // Clients homed on both shards: whichever shard accepts, some are
    // handed off (all staying put has a chance of 2^-16), and the home
    // shard logs them with the header's address.
    let mut clients = Vec::new();
    for shard in [0, 1] {
        for i in 0..8 {
            let id = client_id_on_shard(&format!("v1-{shard}-{i}"), shard, 2);
            let (ip, port) = (format!("203.0.113.{}", 10 * shard + i + 1), 40000 + i);
            let source = format!("{ip}:{port}");
            let mut client = RawClient::connect(broker.proxy);
            let mut bytes = format!("PROXY TCP4 {ip} 10.0.0.1 {port} 1883\r\n").into_bytes();
            bytes.extend_from_slice(&connect_bytes(&id));
            client.send_bytes(&bytes);
            assert!(accepted(&mut client), "{id}");
            clients.push((id, source, client));
        }
    }
    for (id, source, _) in &clients {
        let line = broker.connect_line(id);
        assert!(line.contains(&format!("peer={source}")), "{line}");
    }
    assert!(broker.counter("handed_off", 1) >= 1);
    assert_eq!(broker.counter("proxy_header_invalid", 0), 0);
    broker.stop();
}

#[test]
fn a_header_split_over_writes_then_the_connect_later() {
    let broker = ProxyBroker::start("split", 1, "");
    let mut client = RawClient::connect(broker.proxy);
    for part in [&b"PRO"[..], b"XY TCP6 2001:db8::", b"42 2001:db8::1 5", b"1000 1883\r", b"\n"] {
        client.send_bytes(part);
        std::thread::sleep(Duration::from_millis(30));
    }
    client.send_bytes(&connect_bytes("split-v1"));
    assert!(accepted(&mut client));
    let line = broker.connect_line("split-v1");
    assert!(line.contains("peer=[2001:db8::42]:51000"), "{line}");
    // v2 cut inside its fixed part and inside its addresses.
    let header = v2_proxy("198.51.100.9:1234".parse().unwrap());
    let mut client = RawClient::connect(broker.proxy);
    for part in [&header[..7], &header[7..14], &header[14..20], &header[20..]] {
        client.send_bytes(part);
        std::thread::sleep(Duration::from_millis(30));
    }
    client.send_bytes(&connect_bytes("split-v2"));
    assert!(accepted(&mut client));
    let line = broker.connect_line("split-v2");
    assert!(line.contains("peer=198.51.100.9:1234"), "{line}");
    broker.stop();
}

#[test]
fn v2_headers_name_the_client_and_local_or_unknown_keep_the_socket_address() {
    let broker = ProxyBroker::start("v2", 2, "");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("v2-inet", v2_proxy("192.0.2.7:51000".parse().unwrap()), "peer=192.0.2.7:51000"),
        ("v2-inet6", v2_proxy("[2001:db8::7]:40000".parse().unwrap()), "peer=[2001:db8::7]:40000"),
        ("v2-local", v2(0, 0x00, &[]), "peer=127.0.0.1:"),
        ("v2-unspec", v2(1, 0x00, &[]), "peer=127.0.0.1:"),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec(), "peer=127.0.0.1:"),
    ];
    let mut clients = Vec::new();
    for (id, header, _) in &cases {
        let mut client = RawClient::connect(broker.proxy);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&connect_bytes(id));
        client.send_bytes(&bytes);
        assert!(accepted(&mut client), "{id}");
        // Served: a PING is answered.
        client.send_bytes(&[0xC0, 0]);
        assert!(matches!(client.recv(), Some(Packet::PingResp)), "{id}");
        clients.push(client);
    }
    for (id, _, peer) in &cases {
        let line = broker.connect_line(id);
        assert!(line.contains(peer), "{line}");
    }
    broker.stop();
}

#[test]
fn connections_without_a_valid_header_are_closed_and_counted() {
    let broker = ProxyBroker::start("invalid", 1, "");
    let invalid: [Vec<u8>; 5] = [
        // A client that connected directly: its CONNECT comes first.
        connect_bytes("direct"),
        b"PROXY TCP4 192.0.2.300 10.0.0.1 51000 1883\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\n".to_vec(),
        v2(2, 0x11, &[0; 12]),
        // Oversized: a length of 65535.
        {
            let mut header = v2(1, 0x11, &[0; 12]);
            header[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
            header
        },
    ];
    for bytes in &invalid {
        let mut client = RawClient::connect(broker.proxy);
        let mut bytes = bytes.clone();
        bytes.extend_from_slice(&connect_bytes("bad"));
        client.send_bytes(&bytes);
        assert!(client.recv().is_none(), "{bytes:?}: closed without an answer");
    }
    // On TLS too: a ClientHello without a header first.
    let mut tls = TcpStream::connect(broker.proxy_tls).unwrap();
    tls.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]).unwrap();
    assert!(matches!(tls.read(&mut [0; 16]), Ok(0) | Err(_)));
    assert_eq!(broker.counter("proxy_header_invalid", 6), 6);
    let log = broker.log();
    assert!(log.contains("PROXY header refused"), "{log}");
    // A listener without proxy_protocol takes a header as garbage: not a
    // CONNECT, closed [MQTT-3.1.0-1].
    let mut plain = RawClient::connect(broker.broker.addr);
    let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n".to_vec();
    bytes.extend_from_slice(&connect_bytes("plain"));
    plain.send_bytes(&bytes);
    assert!(plain.recv().is_none());
    assert_eq!(broker.counter("proxy_header_invalid", 6), 6);
    broker.stop();
}

#[test]
fn a_silent_or_slow_header_is_closed_at_the_connect_timeout_and_held_bytes_are_bounded() {
    let broker = ProxyBroker::start(
        "timeout",
        1,
        "[limits]\nconnect_timeout_ms = 1000\nmax_pending_connect_bytes = 1000",
    );
    // The two readiness probes of the PROXY listeners held header bytes
    // until their end of file was seen: wait for both.
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.log().matches("unexpected end of file").count() < 2 {
        assert!(Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    // Each unfinished header holds its peek buffers (2 x 107 bytes): four
    // fit in 1000 bytes, the fifth is closed at once.
    let mut slow: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut client = RawClient::connect(broker.proxy);
            client.send_bytes(b"PROXY TCP4 ");
            client
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = RawClient::connect(broker.proxy);
    fifth.send_bytes(b"PROXY TCP4 ");
    assert!(fifth.closed_within(Duration::from_secs(5)));
    assert_eq!(broker.counter("connect_budget_exceeded", 1), 1);
    for client in &mut slow {
        assert!(client.closed_within(Duration::from_secs(10)));
    }
    // Not before the timeout (a lower bound only).
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(broker.counter("connect_timeouts", 4), 4);
    // Once they are gone, the budget is back.
    let mut client = RawClient::connect(broker.proxy);
    let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n".to_vec();
    bytes.extend_from_slice(&connect_bytes("after"));
    client.send_bytes(&bytes);
    assert!(accepted(&mut client));
    broker.stop();
}

/// The connect timeout counts from the accept and covers the PROXY header
/// and the CONNECT together: a client that sends its header late cannot
/// start a second timeout for its CONNECT (it used to: up to one timeout
/// per step, PROXY, TLS, WebSocket and CONNECT). Then a first packet that
/// is not a CONNECT is closed and counted as malformed [MQTT-3.1.0-1].
#[test]
fn the_header_and_the_connect_share_one_connect_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let broker = ProxyBroker::start(
        "shared-timeout",
        1,
        &format!("[limits]\nconnect_timeout_ms = {}", TIMEOUT.as_millis()),
    );
    let started = Instant::now();
    let mut late = RawClient::connect(broker.proxy);
    std::thread::sleep(TIMEOUT * 2 / 3);
    late.send_bytes(b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n");
    // Closed at the timeout from the accept (3 s), with a second of slack
    // either side: a timeout started at the header would end at 5 s.
    assert!(late.closed_within(TIMEOUT * 2), "not closed");
    let closed = started.elapsed();
    assert!(closed >= TIMEOUT - Duration::from_millis(100), "closed early, at {closed:?}");
    assert!(closed < TIMEOUT + Duration::from_secs(1), "closed at {closed:?}: a second timeout");
    assert_eq!(broker.counter("connect_timeouts", 1), 1);

    let malformed = broker.counter("malformed", 0);
    let mut pinger = RawClient::connect(broker.proxy);
    let mut bytes = b"PROXY TCP4 192.0.2.8 10.0.0.1 51000 1883\r\n".to_vec();
    bytes.extend_from_slice(&[0xC0, 0x00]); // PINGREQ
    pinger.send_bytes(&bytes);
    assert!(pinger.closed_within(Duration::from_secs(5)));
    assert_eq!(broker.counter("malformed", malformed + 1), malformed + 1);
    broker.stop();
}

#[test]
fn check_config_counts_the_proxy_protocol_listeners() {
    let path = std::env::temp_dir().join(format!("ringmq-proxy-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[listener]]\nproxy_protocol = true\n[[listener]]\nbind = \"127.0.0.1:1884\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 listener(s)") && stdout.contains("1 PROXY protocol listener(s)"));
}

/// MQTT over rustls, over a socket that first carried `header` in clear.
fn tls_client_after(
    addr: SocketAddr,
    header: &[u8],
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(header).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

#[test]
fn on_a_tls_listener_the_header_comes_before_the_handshake() {
    let broker = ProxyBroker::start("tls", 2, "");
    for (id, header, peer) in [
        (
            "tls-v1",
            b"PROXY TCP4 192.0.2.77 10.0.0.1 50077 8883\r\n".to_vec(),
            "peer=192.0.2.77:50077",
        ),
        ("tls-v2", v2_proxy("[2001:db8::77]:50078".parse().unwrap()), "peer=[2001:db8::77]:50078"),
    ] {
        let mut stream = tls_client_after(broker.proxy_tls, &header, &broker.ca);
        stream.write_all(&connect_bytes(id)).unwrap();
        stream.flush().unwrap();
        let mut buf = BytesMut::new();
        let mut decoder = Decoder::new(ProtocolVersion::V3_1_1, 1 << 20);
        let packet = loop {
            if let Some(packet) = decoder.decode(&mut buf).unwrap() {
                break packet;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "{id}: closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(matches!(packet, Packet::ConnAck(ack) if ack.reason == ReasonCode::Success));
        let line = broker.connect_line(id);
        assert!(line.contains(peer), "{line}");
    }
    assert_eq!(broker.counter("tls_handshakes", 2), 2);
    broker.stop();
}

// ---- HAProxy and mosquitto_pub: an independent proxy and client ----------

/// Whether `program` runs; required on CI.
fn installed(program: &str, package: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(if program == "haproxy" { "-v" } else { "--help" })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{package} is required on CI");
        eprintln!("SKIPPED: {package} is not installed");
    }
    found
}

/// A HAProxy process for one test, killed when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn haproxy_send_proxy_and_send_proxy_v2_in_front_of_mosquitto_pub() {
    if !installed("haproxy", "haproxy") || !installed("mosquitto_pub", "mosquitto-clients") {
        return;
    }
    let broker = ProxyBroker::start("haproxy", 2, "");
    let (v1, v2) = (free_port(), free_port());
    let config = broker.dir.join("haproxy.cfg");
    let target = broker.proxy;
    std::fs::write(
        &config,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\n\
             listen v1\n  bind 127.0.0.1:{v1}\n  server broker {target} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2}\n  server broker {target} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let _haproxy = Haproxy(
        std::process::Command::new("haproxy")
            .args(["-db", "-f", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    for port in [v1, v2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The clients connect from 127.0.0.2; HAProxy connects to the broker
    // from 127.0.0.1: the broker must name 127.0.0.2.
    for (id, port) in [("haproxy-v1", v1), ("haproxy-v2", v2)] {
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-A", "127.0.0.2"])
            .args(["-i", id, "-t", "t", "-m", "hello", "-V", "mqttv311"])
            .status()
            .unwrap();
        assert!(status.success(), "{id}");
        let line = broker.connect_line(id);
        assert!(line.contains("peer=127.0.0.2:"), "{line}");
    }
    // HAProxy's own probes are not headers refused.
    assert_eq!(broker.counter("proxy_header_invalid", 0), 0);
    broker.stop();
}
