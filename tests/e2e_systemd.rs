//! The broker as a `Type=notify` systemd service: the `sd_notify` messages
//! it sends on the socket named by `NOTIFY_SOCKET`, read here as systemd
//! would read them, from a Unix datagram socket.

mod common;

use common::{connect_packet, free_port, RawClient};
use ringmq::protocol::Packet;
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
