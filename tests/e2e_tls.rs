//! TLS and mTLS listeners end to end, with certificates made at test time
//! (rcgen): a rustls client over a blocking socket (byte-level control of
//! the TLS records), and Debian's mosquitto_pub / mosquitto_sub (OpenSSL)
//! as the independent client. Each broker has a plain loopback listener
//! (probed for readiness, so that probes do not count as TLS failures) and
//! a TLS one, and an admin listener whose /metrics the tests read.

mod common;

use bytes::BytesMut;
use common::{client_id_on_shard, connect_packet, free_port, Broker};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use ringmq::protocol::{Decoder, Packet, ProtocolVersion, ReasonCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- certificates -----------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        Self { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A certificate signed by this CA: (certificate PEM, key PEM, DER).
    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The broker's certificate: localhost and 127.0.0.1.
    fn server(&self) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate named `cn`, valid now or expired.
    fn client(&self, cn: &str, expired: bool) -> Issued {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(params)
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// A certificate and its key.
struct Issued {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A scratch directory of PEM files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringmq-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the broker -------------------------------------------------------------

/// A broker with a plain listener (`broker.addr`), a TLS one (`tls`) and
/// an admin listener (`admin`).
struct TlsBroker {
    broker: Broker,
    tls: SocketAddr,
    admin: String,
    log: PathBuf,
    config: PathBuf,
}

impl TlsBroker {
    /// `tls_table` is the TLS listener's keys (`tls = {...}` and more);
    /// `top` goes before the listeners.
    fn start(dir: &Dir, shards: usize, top: &str, tls_table: &str) -> Self {
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "{top}\n[[listener]]\nbind = \"{plain}\"\n[[listener]]\nbind = \"{tls}\"\n{tls_table}\n\
             [admin]\nlisten = \"{admin}\"\n"
        );
        let config = PathBuf::from(dir.write("ringmq.toml", &text));
        let log = PathBuf::from(dir.path("ringmq.log"));
        let args = ["--config", config.to_str().unwrap(), "--log", "info"];
        let broker = Broker::start_configured(plain, shards, &args, &log);
        common::wait_ready(&admin);
        Self { broker, tls, admin, log, config }
    }

    /// A counter of /metrics summed over the shards, once it is at least
    /// `at_least` (the shards publish their counters every 250 ms).
    fn counter(&self, name: &str, at_least: u64) -> u64 {
        common::counter_at_least(&self.admin, name, at_least)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(self) {
        let log = self.log();
        assert!(self.broker.stop().success(), "{log}");
    }
}

// ---- a rustls client --------------------------------------------------------

/// Client settings: which CA it trusts, its certificate, its TLS versions
/// and ALPN offer.
fn client_config(
    ca: &Ca,
    identity: Option<&Issued>,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder =
        ClientConfig::builder_with_protocol_versions(&[version]).with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(
                vec![issued.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone())),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// MQTT over a rustls client connection. Each `write` of the stream is one
/// TLS record.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
}

impl TlsClient {
    /// Connects and completes the handshake (as far as the client sees).
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Self> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        let decoder = Decoder::new(ProtocolVersion::V3_1_1, 1 << 20);
        Ok(Self { stream, buf: BytesMut::new(), decoder })
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
        self.send_bytes(&out)
    }

    /// The next packet; `None` when the connection ends or fails.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a CONNECT and says whether a successful CONNACK came back.
    fn mqtt_connect(&mut self, packet: &Packet) -> bool {
        if self.send(packet).is_err() {
            return false;
        }
        matches!(self.recv(), Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success)
    }
}

/// Whether a client with `config` gets connected (TLS and MQTT) as `id`.
fn connects(addr: SocketAddr, config: &Arc<ClientConfig>, id: &str) -> bool {
    match TlsClient::connect(addr, Arc::clone(config)) {
        Ok(mut client) => client.mqtt_connect(&connect_packet(id, true, 0)),
        Err(_) => false,
    }
}

const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;

/// SUBSCRIBE `t` at QoS 0, packet id 1.
const SUBSCRIBE_T: &[u8] = b"\x82\x06\x00\x01\x00\x01t\x00";

/// A QoS 0 PUBLISH of `payload` to `t`.
fn publish_t(payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x30, (3 + payload.len()) as u8, 0, 1, b't'];
    packet.extend_from_slice(payload);
    packet
}

fn payload_of(packet: Option<Packet>) -> Vec<u8> {
    match packet {
        Some(Packet::Publish(publish)) => publish.payload.to_vec(),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

fn server_files(dir: &Dir, ca: &Ca) -> (String, String) {
    let server = ca.server();
    (dir.write("server.pem", &server.cert), dir.write("server.key", &server.key))
}

// ---- the tests --------------------------------------------------------------

#[test]
fn tls12_and_tls13_clients_publish_and_subscribe_with_or_without_alpn() {
    let dir = Dir::new("versions");
    let ca = Ca::new("versions CA");
    let (cert, key) = server_files(&dir, &ca);
    let broker =
        TlsBroker::start(&dir, 1, "", &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"));
    for (version, alpn) in [
        (TLS12, &[][..]),
        (TLS13, &[][..]),
        (TLS12, &[&b"mqtt"[..]][..]),
        (TLS13, &[&b"mqtt"[..]][..]),
    ] {
        let config = client_config(&ca, None, version, alpn);
        let mut sub = TlsClient::connect(broker.tls, Arc::clone(&config)).unwrap();
        assert_eq!(sub.stream.conn.protocol_version(), Some(version.version));
        let expected_alpn = (!alpn.is_empty()).then_some(&b"mqtt"[..]);
        assert_eq!(sub.stream.conn.alpn_protocol(), expected_alpn);
        assert!(sub.mqtt_connect(&connect_packet("sub", true, 0)));
        sub.send_bytes(SUBSCRIBE_T).unwrap();
        assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
        let mut publisher = TlsClient::connect(broker.tls, config).unwrap();
        assert!(publisher.mqtt_connect(&connect_packet("pub", true, 0)));
        publisher.send_bytes(&publish_t(b"hello")).unwrap();
        assert_eq!(payload_of(sub.recv()), b"hello");
    }
    // A refused CONNECT (protocol level 9, [MQTT-3.1.2-2]: CONNACK return
    // code 1): the broker ends the TLS stream with close_notify, so the
    // client reads a clean end (rustls reports a bare TCP close as
    // UnexpectedEof).
    for version in [TLS12, TLS13] {
        let mut client =
            TlsClient::connect(broker.tls, client_config(&ca, None, version, &[])).unwrap();
        client.send_bytes(b"\x10\x0d\x00\x04MQTT\x09\x02\x00\x00\x00\x01x").unwrap();
        let mut answer = [0u8; 4];
        client.stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
        let mut rest = [0u8; 1];
        assert_eq!(client.stream.read(&mut rest).unwrap(), 0, "a clean close_notify");
    }
    // A client that offers ALPN without "mqtt" is refused, as no shared
    // protocol.
    let http = client_config(&ca, None, TLS13, &[b"http/1.1"]);
    assert!(!connects(broker.tls, &http, "http"));
    assert_eq!(broker.counter("tls_failed_protocol", 1), 1);
    assert!(broker.counter("tls_handshakes", 8) >= 8);
    // A client that does not trust our CA refuses our certificate: counted
    // as a certificate failure (its alert says so).
    let stranger = client_config(&Ca::new("other CA"), None, TLS12, &[]);
    assert!(!connects(broker.tls, &stranger, "stranger"));
    assert_eq!(broker.counter("tls_failed_certificate", 1), 1);
    broker.stop();
}

#[test]
fn a_tls_connection_is_handed_off_to_its_home_shard_and_keeps_its_session() {
    let dir = Dir::new("handoff");
    let ca = Ca::new("handoff CA");
    let (cert, key) = server_files(&dir, &ca);
    let broker =
        TlsBroker::start(&dir, 2, "", &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"));
    for version in [TLS12, TLS13] {
        let config = client_config(&ca, None, version, &[b"mqtt"]);
        // Which shard accepts is the kernel's choice: with eight clients
        // homed on each shard, some are handed off (all staying put has a
        // chance of 2^-16).
        let mut clients = Vec::new();
        for shard in [0, 1] {
            for i in 0..8 {
                let id = client_id_on_shard(&format!("home{shard}-{i}"), shard, 2);
                let mut client = TlsClient::connect(broker.tls, Arc::clone(&config)).unwrap();
                assert!(client.mqtt_connect(&connect_packet(&id, true, 0)), "{id}");
                client.send_bytes(SUBSCRIBE_T).unwrap();
                assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
                clients.push(client);
            }
        }
        // Every client, wherever it lives now, publishes and receives
        // everybody's messages over its continued TLS session.
        for (i, client) in clients.iter_mut().enumerate() {
            client.send_bytes(&publish_t(format!("m{i}").as_bytes())).unwrap();
        }
        for client in &mut clients {
            let mut got: Vec<Vec<u8>> = (0..16).map(|_| payload_of(client.recv())).collect();
            got.sort();
            let mut expected: Vec<Vec<u8>> =
                (0..16).map(|i| format!("m{i}").into_bytes()).collect();
            expected.sort();
            assert_eq!(got, expected);
        }
    }
    assert!(broker.counter("handed_off", 1) >= 1);
    broker.stop();
}

#[test]
fn a_packet_split_across_records_and_many_packets_in_one_record() {
    let dir = Dir::new("records");
    let ca = Ca::new("records CA");
    let (cert, key) = server_files(&dir, &ca);
    let broker =
        TlsBroker::start(&dir, 1, "", &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"));
    let config = client_config(&ca, None, TLS13, &[]);
    let mut sub = TlsClient::connect(broker.tls, Arc::clone(&config)).unwrap();
    // The CONNECT one byte per record.
    let mut connect = BytesMut::new();
    connect_packet("split", true, 0).encode(ProtocolVersion::V3_1_1, &mut connect).unwrap();
    for byte in connect.iter() {
        sub.send_bytes(&[*byte]).unwrap();
    }
    assert!(matches!(sub.recv(), Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success));
    sub.send_bytes(SUBSCRIBE_T).unwrap();
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    // A large PUBLISH split over several records (a record holds 16 KiB).
    let mut publisher = TlsClient::connect(broker.tls, config).unwrap();
    assert!(publisher.mqtt_connect(&connect_packet("many", true, 0)));
    let large = vec![b'x'; 40_000];
    let mut packet = vec![0x30];
    let mut remaining = 3 + large.len();
    while remaining > 0x7f {
        packet.push((remaining as u8 & 0x7f) | 0x80);
        remaining >>= 7;
    }
    packet.push(remaining as u8);
    packet.extend_from_slice(&[0, 1, b't']);
    packet.extend_from_slice(&large);
    for chunk in packet.chunks(1000) {
        publisher.send_bytes(chunk).unwrap();
    }
    assert_eq!(payload_of(sub.recv()), large);
    // A hundred PUBLISH packets in one record.
    let batch: Vec<u8> = (0..100).flat_map(|i| publish_t(format!("{i:03}").as_bytes())).collect();
    publisher.send_bytes(&batch).unwrap();
    for i in 0..100 {
        assert_eq!(payload_of(sub.recv()), format!("{i:03}").as_bytes());
    }
    broker.stop();
}

#[test]
fn mtls_accepts_a_client_of_its_ca_and_refuses_wrong_ca_expired_and_none() {
    let dir = Dir::new("mtls");
    let ca = Ca::new("mtls CA");
    let (cert, key) = server_files(&dir, &ca);
    let client_ca = dir.write("clients.pem", &ca.pem());
    let broker = TlsBroker::start(
        &dir,
        1,
        "",
        &format!("tls = {{ cert = \"{cert}\", key = \"{key}\", client_ca = \"{client_ca}\" }}"),
    );
    let good = ca.client("device-1", false);
    for version in [TLS12, TLS13] {
        assert!(connects(broker.tls, &client_config(&ca, Some(&good), version, &[]), "good"));
    }
    let other = Ca::new("other CA").client("device-1", false);
    let expired = ca.client("device-1", true);
    for version in [TLS12, TLS13] {
        assert!(!connects(broker.tls, &client_config(&ca, Some(&other), version, &[]), "other"));
        assert!(!connects(broker.tls, &client_config(&ca, Some(&expired), version, &[]), "old"));
        assert!(!connects(broker.tls, &client_config(&ca, None, version, &[]), "none"));
    }
    assert_eq!(broker.counter("tls_handshakes", 2), 2);
    assert_eq!(broker.counter("tls_failed_certificate", 6), 6);
    broker.stop();
}

#[test]
fn use_identity_as_username_takes_the_certificate_name_and_skips_the_password_file() {
    let dir = Dir::new("identity");
    let ca = Ca::new("identity CA");
    let (cert, key) = server_files(&dir, &ca);
    let client_ca = dir.write("clients.pem", &ca.pem());
    let passwd = dir.path("passwd");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "--password-stdin", &passwd, "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"secret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success());
    let broker = TlsBroker::start(
        &dir,
        1,
        &format!("password_file = \"{passwd}\""),
        &format!(
            "tls = {{ cert = \"{cert}\", key = \"{key}\", client_ca = \"{client_ca}\" }}\n\
             use_identity_as_username = true"
        ),
    );
    let device = client_config(&ca, Some(&ca.client("device-7", false)), TLS13, &[]);
    // No user name: the certificate names the client.
    assert!(connects(broker.tls, &device, "anonymous-by-mqtt"));
    // A user name and a wrong password: both ignored (Mosquitto does the
    // same), the password file is not consulted.
    let mut client = TlsClient::connect(broker.tls, device).unwrap();
    let mut connect = connect_packet("wrong-password", true, 0);
    if let Packet::Connect(connect) = &mut connect {
        connect.username = Some("alice".into());
        connect.password = Some(bytes::Bytes::from_static(b"wrong"));
    }
    assert!(client.mqtt_connect(&connect));
    assert_eq!(broker.counter("auth_failed", 0), 0);
    // The plain listener still checks passwords.
    let mut plain = common::RawClient::connect(broker.broker.addr);
    plain.send(&connect);
    assert!(
        matches!(plain.recv(), Some(Packet::ConnAck(ack)) if ack.reason != ReasonCode::Success)
    );
    // The log's connect lines name the user: the certificate's name.
    let log = broker.log();
    let connected: Vec<&str> = log.lines().filter(|l| l.contains("client connected")).collect();
    assert_eq!(connected.len(), 2, "{log}");
    assert!(connected.iter().all(|line| line.contains("username=\"device-7\"")), "{log}");
    broker.stop();
}

/// Whether the broker still holds `socket` open (nothing to read, no end).
fn still_open(socket: &TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open =
        matches!(socket.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    socket.set_nonblocking(false).unwrap();
    open
}

/// Whether the broker closes `socket` (within 10 s) without sending
/// anything.
fn closed_silently(socket: &mut TcpStream) -> bool {
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    matches!(socket.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn a_client_that_never_sends_a_client_hello_is_closed_at_the_connect_timeout() {
    let dir = Dir::new("timeout");
    let ca = Ca::new("timeout CA");
    let (cert, key) = server_files(&dir, &ca);
    let broker = TlsBroker::start(
        &dir,
        1,
        "[limits]\nconnect_timeout_ms = 1500",
        &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    );
    let started = Instant::now();
    let mut silent: Vec<TcpStream> =
        (0..3).map(|_| TcpStream::connect(broker.tls).unwrap()).collect();
    // Meanwhile the shard serves others: a full TLS connection while the
    // silent ones wait, still open.
    assert!(connects(broker.tls, &client_config(&ca, None, TLS13, &[]), "busy"));
    assert!(silent.iter().all(still_open), "closed before the timeout");
    for socket in &mut silent {
        assert!(closed_silently(socket), "closed, not answered");
    }
    // Not before the timeout (a lower bound only: a loaded machine may
    // close them later).
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(broker.counter("tls_failed_timeout", 3), 3);
    broker.stop();
}

#[test]
fn unfinished_handshakes_are_charged_to_max_pending_connect_bytes() {
    let dir = Dir::new("budget");
    let ca = Ca::new("budget CA");
    let (cert, key) = server_files(&dir, &ca);
    let broker = TlsBroker::start(
        &dir,
        1,
        "[limits]\nconnect_timeout_ms = 5000\nmax_pending_connect_bytes = 20000",
        &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    );
    // A handshake record announced as 16,000 bytes, 12,000 of them sent:
    // rustls holds them until the record is complete.
    let mut partial = vec![0x16, 0x03, 0x01, 0x3e, 0x80];
    partial.resize(5 + 12_000, 0x01);
    let mut first = TcpStream::connect(broker.tls).unwrap();
    first.write_all(&partial).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The second one would pass the shard's 20,000 bytes: closed at once,
    // while the first is still held.
    let mut second = TcpStream::connect(broker.tls).unwrap();
    second.write_all(&partial).unwrap();
    assert!(closed_silently(&mut second));
    assert!(still_open(&first), "the first is held until its timeout");
    assert_eq!(broker.counter("connect_budget_exceeded", 1), 1);
    // A real handshake needs far less than what is left.
    assert!(connects(broker.tls, &client_config(&ca, None, TLS13, &[]), "small"));
    broker.stop();
}

#[test]
fn sighup_rereads_the_certificate_and_a_broken_file_keeps_the_old_one() {
    let dir = Dir::new("reload");
    let first = Ca::new("first CA");
    let (cert, key) = server_files(&dir, &first);
    let broker =
        TlsBroker::start(&dir, 2, "", &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"));
    let trusts_first = client_config(&first, None, TLS13, &[]);
    assert!(connects(broker.tls, &trusts_first, "before"));
    // A renewed certificate from another CA.
    let second = Ca::new("second CA");
    let renewed = second.server();
    std::fs::write(&cert, &renewed.cert).unwrap();
    std::fs::write(&key, &renewed.key).unwrap();
    let hup = || {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(broker.broker.pid() as i32, libc::SIGHUP) };
    };
    hup();
    let trusts_second = client_config(&second, None, TLS13, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connects(broker.tls, &trusts_second, "after") {
        assert!(Instant::now() < deadline, "the new certificate is not served: {}", broker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(broker.log().contains("listener[1].tls: certificate and key re-read"));
    // Both shards serve the new certificate.
    for _ in 0..6 {
        assert!(connects(broker.tls, &trusts_second, "after"));
    }
    // A broken certificate file: one error line naming the key, and the
    // renewed certificate stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("ERROR") {
        assert!(Instant::now() < deadline, "no error logged: {}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    let log = broker.log();
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains(&format!("listener[1].tls.cert = {cert:?}")), "{log}");
    for _ in 0..4 {
        assert!(connects(broker.tls, &trusts_second, "kept"));
    }
    let _ = &broker.config;
    broker.stop();
}

#[test]
fn bad_tls_files_are_one_line_config_errors_also_from_check_config() {
    let dir = Dir::new("badfiles");
    let ca = Ca::new("bad CA");
    let (cert, key) = server_files(&dir, &ca);
    let other_key = dir.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let garbage = dir.write("garbage.pem", "hello\n");
    let missing = dir.path("missing.pem");
    let cases = [
        (
            format!("cert = \"{missing}\", key = \"{key}\""),
            format!("listener[0].tls.cert = {missing:?}: cannot read it"),
        ),
        (
            format!("cert = \"{garbage}\", key = \"{key}\""),
            format!("listener[0].tls.cert = {garbage:?}: no certificate"),
        ),
        (
            format!("cert = \"{cert}\", key = \"{garbage}\""),
            format!("listener[0].tls.key = {garbage:?}: expected a PEM private key"),
        ),
        (
            format!("cert = \"{cert}\", key = \"{other_key}\""),
            format!("listener[0].tls.key = {other_key:?}: does not fit tls.cert"),
        ),
        (
            format!("cert = \"{cert}\", key = \"{key}\", client_ca = \"{garbage}\""),
            format!("listener[0].tls.client_ca = {garbage:?}: no certificate"),
        ),
    ];
    for (table, expected) in cases {
        let config = dir.write("bad.toml", &format!("[[listener]]\ntls = {{ {table} }}\n"));
        for command in [&["check-config", &config][..], &["serve", "--config", &config][..]] {
            let output = Command::new(env!("CARGO_BIN_EXE_ringmq")).args(command).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with(&format!("ringmq: {expected}")), "{stderr}");
        }
    }
    let good = dir.write(
        "good.toml",
        &format!("[[listener]]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
    );
    let output =
        Command::new(env!("CARGO_BIN_EXE_ringmq")).args(["check-config", &good]).output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 TLS listener(s)"));
}

// ---- mosquitto_pub / mosquitto_sub -----------------------------------------

/// Whether the mosquitto clients are installed; required on CI.
fn mosquitto_installed() -> bool {
    let found = ["mosquitto_pub", "mosquitto_sub"].iter().all(|program| {
        Command::new(program)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        assert!(std::env::var_os("CI").is_none(), "mosquitto-clients is required on CI");
        eprintln!("SKIPPED: mosquitto-clients is not installed");
    }
    found
}

/// Runs mosquitto_sub for one message on `t` and publishes it with
/// mosquitto_pub (retried until the subscriber is in), both with `tls`
/// arguments; returns what the subscriber printed.
fn mosquitto_round_trip(port: u16, sub_tls: &[&str], pub_tls: &[&str]) -> String {
    let port = port.to_string();
    let common = ["-h", "localhost", "-p", &port, "-V", "mqttv311"];
    let sub = Command::new("mosquitto_sub")
        .args(common)
        .args(sub_tls)
        .args(["-t", "t", "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    // Retained: the subscriber gets it whenever it subscribes.
    let status = Command::new("mosquitto_pub")
        .args(common)
        .args(pub_tls)
        .args(["-t", "t", "-m", "over tls", "-r"])
        .status()
        .unwrap();
    assert!(status.success() || Instant::now() > deadline, "mosquitto_pub failed");
    let output = sub.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn mosquitto_clients_over_tls_and_mtls() {
    if !mosquitto_installed() {
        return;
    }
    let dir = Dir::new("mosquitto");
    let ca = Ca::new("mosquitto CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (cert, key) = server_files(&dir, &ca);
    let broker =
        TlsBroker::start(&dir, 2, "", &format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}"));
    let tls = ["--cafile", &ca_file];
    // On a failure the broker's log goes with the clients' output: this
    // test failed now and then under load (the mTLS round trip timing out)
    // without anything to tell why.
    let got = mosquitto_round_trip(broker.tls.port(), &tls, &tls);
    assert_eq!(got, "over tls\n", "broker log:\n{}", broker.log());
    for version in ["tlsv1.2", "tlsv1.3"] {
        let pinned = ["--cafile", &ca_file, "--tls-version", version];
        let got = mosquitto_round_trip(broker.tls.port(), &pinned, &pinned);
        assert_eq!(got, "over tls\n", "{version}; broker log:\n{}", broker.log());
    }
    broker.stop();

    let client_ca = dir.write("clients.pem", &ca.pem());
    let dir2 = Dir::new("mosquitto-mtls");
    let (cert, key) = server_files(&dir2, &ca);
    let broker = TlsBroker::start(
        &dir2,
        2,
        "",
        &format!("tls = {{ cert = \"{cert}\", key = \"{key}\", client_ca = \"{client_ca}\" }}"),
    );
    let device = ca.client("device-9", false);
    let (device_cert, device_key) =
        (dir.write("device.pem", &device.cert), dir.write("device.key", &device.key));
    let mtls = ["--cafile", &ca_file, "--cert", &device_cert, "--key", &device_key];
    let got = mosquitto_round_trip(broker.tls.port(), &mtls, &mtls);
    assert_eq!(got, "over tls\n", "broker log:\n{}", broker.log());
    // Without a client certificate: refused.
    let port = broker.tls.port().to_string();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &ca_file, "-t", "t", "-m", "x"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert!(broker.counter("tls_failed_certificate", 1) >= 1);
    broker.stop();
}
