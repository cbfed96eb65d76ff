//! The broker as operators run it: a `Type=notify` systemd service (the
//! `sd_notify` messages it sends on the socket named by `NOTIFY_SOCKET`,
//! read here as systemd would read them, from a Unix datagram socket), and
//! the admin listener's health probes, asked over HTTP as a load balancer
//! would.

mod common;

use common::{connect_packet, free_port, Broker, RawClient};
use ringmq::protocol::Packet;
use std::io::{Read, Write};
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

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn health_probes_answer_while_the_broker_serves() {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(2, &format!("[admin]\nlisten = \"{admin}\"\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthz = loop {
        let response = http_get(&admin, "/healthz");
        if response.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
