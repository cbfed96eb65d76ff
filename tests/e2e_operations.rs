//! The broker as operators run it: a `Type=notify` systemd service (the
//! `sd_notify` messages it sends on the socket named by `NOTIFY_SOCKET`,
//! read here as systemd would read them, from a Unix datagram socket), and
//! the admin listener's health probes, asked over HTTP as a load balancer
//! would, and the configuration reload on SIGHUP.

mod common;

use common::http_get;

use common::{client_id_on_shard, connect_packet, free_port, Broker, RawClient};
use ringmq::protocol::Packet;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams received until one contains `wanted`, or `within` passed.
fn until(socket: &UnixDatagram, wanted: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = text.lines().any(|line| line == wanted || line.starts_with(wanted));
            seen.push(text);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn ready_status_watchdog_and_stopping_are_sent() {
    let path = std::env::temp_dir().join(format!("ringmq-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--listen", &addr, "--shards", "2", "--log", "warn"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(until(&socket, "READY=1", Duration::from_secs(20), &mut seen), "{seen:?}");
    // Ready means served: a client connects at once.
    let mut client = RawClient::connect(addr.parse().unwrap());
    client.send(&connect_packet("notified", true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    assert!(until(&socket, "STATUS=", Duration::from_secs(10), &mut seen), "{seen:?}");
    // Pinged at half the 0.4 s interval while the shards tick.
    for _ in 0..3 {
        assert!(until(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut seen), "{seen:?}");
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(until(&socket, "STOPPING=1", Duration::from_secs(10), &mut seen), "{seen:?}");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
}

/// `/healthz` once it answers 200 (the shards tick), or after 10 s.
fn healthz_once_serving(admin: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http_get(admin, "/healthz");
        if response.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_probes_answer_while_the_broker_serves() {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(2, &format!("[admin]\nlisten = \"{admin}\"\n"));
    let healthz = healthz_once_serving(&admin);
    assert!(healthz.starts_with("HTTP/1.1 200 OK") && healthz.ends_with("ok\n"), "{healthz}");
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200 OK"));
    assert!(http_get(&admin, "/other").starts_with("HTTP/1.1 404"));
    // A publish shows in /metrics within a tick or two.
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet("metered", true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client.send_bytes(b"\x30\x03\x00\x01x"); // PUBLISH QoS 0 to "x"
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = http_get(&admin, "/metrics");
        let received: u64 = metrics
            .lines()
            .filter(|line| line.starts_with("ringmq_messages_received_total{"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        if received == 1 || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains("ringmq_connections 1\n"), "{metrics}");
    assert!(metrics.contains("ringmq_messages_received_total{shard=\""), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(broker.stop().success());
}

#[test]
fn an_admin_address_in_use_stops_the_start_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let config = std::env::temp_dir().join(format!("ringmq-admin-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[admin]\nlisten = \"{admin}\"\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--listen", &listen, "--config", config.to_str().unwrap()])
        .args(["--log", "error"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("ringmq: cannot listen on {admin}")), "{stderr}");
}

/// The broker's log so far.
fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log at `path` holds `wanted`.
fn log_shows(path: &std::path::Path, wanted: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if log_of(path).contains(wanted) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A QoS 1 PUBLISH of one byte to `t`, as bytes.
fn publish_qos1(packet_id: u16, payload: u8) -> Vec<u8> {
    let [high, low] = packet_id.to_be_bytes();
    vec![0x32, 6, 0, 1, b't', high, low, payload]
}

/// How many of `count` QoS 1 messages to `t`, published while `subscriber`
/// is away, reach it when it comes back (they wait in its queue).
fn queued_for_a_returning_subscriber(
    addr: std::net::SocketAddr,
    subscriber: &str,
    publisher: &str,
    count: u16,
) -> usize {
    let mut publishing = RawClient::connect(addr);
    publishing.send(&connect_packet(publisher, true, 0));
    assert!(matches!(publishing.recv(), Some(Packet::ConnAck(_))));
    for id in 1..=count {
        publishing.send_bytes(&publish_qos1(id, b'q'));
        assert!(matches!(publishing.recv(), Some(Packet::PubAck(_))));
    }
    let mut back = RawClient::connect(addr);
    back.send(&connect_packet(subscriber, false, 0));
    assert!(matches!(back.recv(), Some(Packet::ConnAck(ack)) if ack.session_present));
    // A marker published now arrives after every queued message.
    publishing.send_bytes(&publish_qos1(count + 1, b'm'));
    let mut queued = 0;
    loop {
        let Some(Packet::Publish(publish)) = back.recv() else { panic!("no PUBLISH") };
        // Acknowledged, so that nothing is in flight at the next return.
        let [high, low] = publish.packet_id.expect("QoS 1").get().to_be_bytes();
        back.send_bytes(&[0x40, 2, high, low]);
        if publish.payload[..] == *b"m" {
            break;
        }
        queued += 1;
    }
    back.send_bytes(b"\xe0\x00"); // DISCONNECT: the session stays
    queued
}

#[test]
fn sighup_applies_new_limits_and_log_level_and_keeps_them_on_a_broken_file() {
    let config = std::env::temp_dir().join(format!("ringmq-reload-{}.toml", std::process::id()));
    let log = std::env::temp_dir().join(format!("ringmq-reload-{}.log", std::process::id()));
    std::fs::write(&config, "[limits]\nmax_queued_messages = 2\n[log]\nlevel = \"warn\"\n")
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", &addr.to_string()])
        .args(["--shards", "2"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Killed if the test fails before its SIGTERM.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child's pid (gone already: ESRCH).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _guard = KillOnDrop(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "ringmq did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both on shard 0: the publish is queued before its PUBACK.
    let (subscriber, publisher) =
        (client_id_on_shard("reload-sub", 0, 2), client_id_on_shard("reload-pub", 0, 2));
    let mut subscribing = RawClient::connect(addr);
    subscribing.send(&connect_packet(&subscriber, false, 0));
    assert!(matches!(subscribing.recv(), Some(Packet::ConnAck(_))));
    subscribing.send_bytes(b"\x82\x06\x00\x01\x00\x01t\x01"); // SUBSCRIBE t, QoS 1
    assert!(matches!(subscribing.recv(), Some(Packet::SubAck(_))));
    subscribing.send_bytes(b"\xe0\x00");
    drop(subscribing);
    assert_eq!(queued_for_a_returning_subscriber(addr, &subscriber, &publisher, 4), 2);
    assert!(!log_of(&log).contains("INFO"), "started at warn: {}", log_of(&log));

    std::fs::write(&config, "[limits]\nmax_queued_messages = 5\n[log]\nlevel = \"info\"\n")
        .unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(log_shows(&log, "log.level: warn -> info"), "{}", log_of(&log));
    assert!(log_shows(&log, "limits.max_queued_messages: 2 -> 5"), "{}", log_of(&log));
    // The shards take the new limits at their next tick (250 ms).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(queued_for_a_returning_subscriber(addr, &subscriber, &publisher, 7), 5);

    std::fs::write(&config, "[limits]\nmax_queued_messages = 0\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(log_shows(&log, "reload refused"), "{}", log_of(&log));
    let text = log_of(&log);
    let errors: Vec<&str> = text.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("limits.max_queued_messages = 0"), "{text}");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(queued_for_a_returning_subscriber(addr, &subscriber, &publisher, 7), 5);

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", log_of(&log));
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn sighup_without_a_configuration_file_only_says_so() {
    let log = std::env::temp_dir().join(format!("ringmq-reload-none-{}.log", std::process::id()));
    let broker = Broker::start_logging_to(1, &["--log", "info"], &log);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    assert!(log_shows(&log, "nothing to reload"), "{}", log_of(&log));
    assert!(broker.stop().success());
    let _ = std::fs::remove_file(&log);
}

/// A 5.0 client that pings every 50 ms until the server sends DISCONNECT
/// (returned with when it came) or closes; `served` counts the PINGRESPs
/// that arrived once `draining` was set.
fn ping_until_disconnected(
    mut client: RawClient,
    draining: &std::sync::atomic::AtomicBool,
    served: &std::sync::atomic::AtomicUsize,
) -> (Option<ringmq::protocol::ReasonCode>, Instant) {
    use std::sync::atomic::Ordering;
    loop {
        // The server may have closed meanwhile: a failed write is seen as
        // the end of the stream by the read below.
        let _ = client.stream.write_all(&[0xC0, 0x00]);
        match client.recv() {
            Some(Packet::PingResp) => {
                if draining.load(Ordering::SeqCst) {
                    served.fetch_add(1, Ordering::SeqCst);
                }
            }
            Some(Packet::Disconnect(disconnect)) => {
                return (Some(disconnect.reason), Instant::now())
            }
            None => return (None, Instant::now()),
            Some(other) => panic!("unexpected {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_fails_the_probe_then_spreads_disconnects_over_the_drain_timeout() {
    use ringmq::protocol::{Connect, ProtocolVersion, ReasonCode};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 16;
    const DRAIN_S: u64 = 2;
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(
        2,
        &format!("drain_timeout_s = {DRAIN_S}\n[admin]\nlisten = \"{admin}\"\n"),
    );
    let draining = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let mut client = RawClient::connect(broker.addr);
            client.send(&Packet::Connect(Box::new(Connect {
                version: ProtocolVersion::V5,
                clean_start: true,
                keep_alive: 30,
                client_id: client_id_on_shard(&format!("drained-{n}-"), n % 2, 2).into(),
                will: None,
                username: None,
                password: None,
                properties: Default::default(),
            })));
            assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
            let (draining, served) = (Arc::clone(&draining), Arc::clone(&served));
            let left = Arc::clone(&left);
            std::thread::spawn(move || {
                let end = ping_until_disconnected(client, &draining, &served);
                left.fetch_add(1, Ordering::SeqCst);
                end
            })
        })
        .collect();
    let health_before = healthz_once_serving(&admin);
    draining.store(true, Ordering::SeqCst);
    let terminated = Instant::now();
    broker.terminate();
    // The probe fails while the clients are still connected, so a load
    // balancer stops sending before they leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (health_during, gone_by_then) = loop {
        let gone = left.load(Ordering::SeqCst);
        let response = http_get(&admin, "/healthz");
        if !response.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break (response, gone);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ends: Vec<_> = clients.into_iter().map(|client| client.join().unwrap()).collect();
    assert!(broker.wait_exit().success());
    assert!(health_before.starts_with("HTTP/1.1 200"), "{health_before}");
    assert!(health_during.starts_with("HTTP/1.1 503"), "{health_during}");
    assert!(gone_by_then < CLIENTS, "every client had left before the probe failed");
    for (reason, at) in &ends {
        assert_eq!(*reason, Some(ReasonCode::ServerShuttingDown), "after {:?}", *at - terminated);
    }
    let first = ends.iter().map(|(_, at)| *at).min().unwrap();
    let last = ends.iter().map(|(_, at)| *at).max().unwrap();
    // Spread, not at once: with steps every 250 ms the last client leaves
    // at the drain timeout, the first within the first step. (Lower bounds
    // only: a slow machine only spreads them more.)
    assert!(
        last - first >= Duration::from_millis(DRAIN_S * 1000 / 2),
        "closed from {:?} to {:?} after SIGTERM",
        first - terminated,
        last - terminated
    );
    assert!(served.load(Ordering::SeqCst) > 0, "the clients still connected were served");
}

/// `/metrics` read by Prometheus's own parser (tests/metrics_parse.py):
/// each sample summed over its `shard` label, keyed by name and the other
/// labels (`ringmq_messages_received_total{qos="1"}`).
fn parsed_metrics(admin: &str) -> std::collections::BTreeMap<String, f64> {
    let response = http_get(admin, "/metrics");
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let mut parser = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    parser.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(output.status.success(), "Prometheus's parser refused:\n{body}");
    let mut sums = std::collections::BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = series.split_once('{').unwrap();
        let labels: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|label| !label.is_empty() && !label.starts_with("shard="))
            .collect();
        let key = format!("{name}{{{}}}", labels.join(","));
        *sums.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap();
    }
    sums
}

#[test]
fn metrics_parsed_by_prometheus_count_a_known_workload() {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(
        2,
        &format!("sys_interval_s = 0\n[admin]\nlisten = \"{admin}\"\n"),
    );
    healthz_once_serving(&admin);
    let (mut sent, mut received) = (0usize, 0usize);
    let mut exchange = |client: &mut RawClient, bytes: &[u8], answers: usize| {
        client.send_bytes(bytes);
        sent += bytes.len();
        for _ in 0..answers {
            let packet = client.recv().expect("an answer");
            let mut encoded = bytes::BytesMut::new();
            packet.encode(ringmq::protocol::ProtocolVersion::V3_1_1, &mut encoded).unwrap();
            received += encoded.len();
        }
    };
    let connect = |id: &str| {
        let mut bytes = bytes::BytesMut::new();
        let packet = connect_packet(id, true, 0);
        packet.encode(ringmq::protocol::ProtocolVersion::V3_1_1, &mut bytes).unwrap();
        bytes.to_vec()
    };
    let mut subscriber = RawClient::connect(broker.addr);
    exchange(&mut subscriber, &connect(&client_id_on_shard("sub", 0, 2)), 1);
    // SUBSCRIBE m/# at QoS 1.
    exchange(&mut subscriber, b"\x82\x08\x00\x01\x00\x03m/#\x01", 1);
    let mut publisher = RawClient::connect(broker.addr);
    exchange(&mut publisher, &connect(&client_id_on_shard("pub", 1, 2)), 1);
    for _ in 0..3 {
        exchange(&mut publisher, b"\x30\x06\x00\x03m/ax", 0); // QoS 0
    }
    exchange(&mut publisher, b"\x31\x0a\x00\x03m/rkept!", 0); // QoS 0, retained
    for id in 1..=2u8 {
        exchange(&mut publisher, &[0x32, 0x08, 0x00, 0x03, b'm', b'/', b'b', 0, id, b'y'], 1);
    }
    // Three m/a, m/r, two m/b (QoS 1, acknowledged).
    for _ in 0..6 {
        let packet = subscriber.recv().expect("a delivery");
        let mut encoded = bytes::BytesMut::new();
        packet.encode(ringmq::protocol::ProtocolVersion::V3_1_1, &mut encoded).unwrap();
        received += encoded.len();
        if let Packet::Publish(publish) = packet {
            if let Some(id) = publish.packet_id {
                let [high, low] = id.get().to_be_bytes();
                subscriber.send_bytes(&[0x40, 2, high, low]);
                sent += 4;
            }
        }
    }
    // The figures are at most a shard tick old.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = parsed_metrics(&admin);
        let settled = metrics.get("ringmq_bytes_received_total{}") == Some(&(sent as f64))
            && metrics.get("ringmq_bytes_sent_total{}") == Some(&(received as f64));
        if settled || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let value =
        |key: &str| metrics.get(key).copied().unwrap_or_else(|| panic!("{key}: {metrics:#?}"));
    assert_eq!(value("ringmq_bytes_received_total{}"), sent as f64);
    assert_eq!(value("ringmq_bytes_sent_total{}"), received as f64);
    assert_eq!(value("ringmq_messages_received_total{qos=\"0\"}"), 4.0);
    assert_eq!(value("ringmq_messages_received_total{qos=\"1\"}"), 2.0);
    assert_eq!(value("ringmq_messages_received_total{qos=\"2\"}"), 0.0);
    assert_eq!(value("ringmq_publishes_sent_total{qos=\"0\"}"), 4.0);
    assert_eq!(value("ringmq_publishes_sent_total{qos=\"1\"}"), 2.0);
    assert_eq!(value("ringmq_sessions{}"), 2.0);
    assert_eq!(value("ringmq_sessions_online{}"), 2.0);
    assert_eq!(value("ringmq_subscriptions{}"), 1.0);
    assert_eq!(value("ringmq_retained_messages{}"), 1.0);
    assert_eq!(value("ringmq_retained_bytes{}"), 5.0);
    assert_eq!(value("ringmq_connections{}"), 2.0);
    // The two clients (Broker::start waits for the broker's listening
    // socket without connecting to it).
    assert_eq!(value("ringmq_accepted_total{}"), 2.0);
    assert_eq!(value("ringmq_deliveries_total{}"), 6.0);
    assert_eq!(value("ringmq_deliveries_dropped_total{}"), 0.0);
    assert_eq!(value("ringmq_cross_core_queued{}"), 0.0);
    assert_eq!(value("ringmq_queued_messages{}"), 0.0);
    assert_eq!(value("ringmq_inflight_messages{}"), 0.0);
    assert_eq!(value("ringmq_shared_groups{}"), 0.0);

    // What sessions hold: an offline persistent session with 5 queued
    // messages, one message in flight to the subscriber, one shared group.
    let mut offline = RawClient::connect(broker.addr);
    offline.send(&connect_packet(&client_id_on_shard("off", 1, 2), false, 0));
    assert!(matches!(offline.recv(), Some(Packet::ConnAck(_))));
    offline.send_bytes(b"\x82\x08\x00\x02\x00\x03o/#\x01"); // o/# at QoS 1
    assert!(matches!(offline.recv(), Some(Packet::SubAck(_))));
    drop(offline);
    subscriber.send_bytes(b"\x82\x0f\x00\x03\x00\x0a$share/g/s\x01");
    assert!(matches!(subscriber.recv(), Some(Packet::SubAck(_))));
    let wait_for = |key: &str, expected: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = parsed_metrics(&admin);
            if metrics.get(key) == Some(&expected) || Instant::now() > deadline {
                return metrics;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("ringmq_sessions_online{}", 2.0);
    for id in 1..=5u8 {
        // o/x, QoS 1, payload "12345": 3 + 5 bytes each.
        publisher.send_bytes(&[
            0x32,
            12,
            0,
            3,
            b'o',
            b'/',
            b'x',
            0,
            10 + id,
            b'1',
            b'2',
            b'3',
            b'4',
            b'5',
        ]);
        assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    }
    // m/i, QoS 1, read by the subscriber and never acknowledged.
    publisher.send_bytes(&[0x32, 8, 0, 3, b'm', b'/', b'i', 0, 20, b'z']);
    assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    assert!(matches!(subscriber.recv(), Some(Packet::Publish(_))));
    let metrics = wait_for("ringmq_queued_messages{}", 5.0);
    let value =
        |key: &str| metrics.get(key).copied().unwrap_or_else(|| panic!("{key}: {metrics:#?}"));
    assert_eq!(value("ringmq_queued_messages{}"), 5.0);
    assert_eq!(value("ringmq_queued_bytes{}"), 40.0);
    assert_eq!(value("ringmq_inflight_messages{}"), 1.0);
    assert_eq!(value("ringmq_shared_groups{}"), 1.0);
    assert_eq!(value("ringmq_topic_gates{}"), 0.0);
    assert_eq!(value("ringmq_dropped_queue_full_total{qos=\"1\"}"), 0.0);
    assert!(broker.stop().success());
}
