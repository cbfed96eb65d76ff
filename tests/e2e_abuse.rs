//! Clients that abuse the broker without breaking the protocol, against
//! the real binary over loopback. Slowloris: thousands of sockets that
//! connect and never send a CONNECT are closed at `connect_timeout_ms`,
//! counted, and meanwhile a well-behaved client's QoS 1 round trips keep
//! flowing, none lost.
//!
//! The test asserts behaviour only (every silent socket closed, none
//! before the timeout, the count, no lost round trip); it prints the
//! well-behaved client's p99 with and without the silent sockets for the
//! record (timing thresholds stay out of `cargo test`: this machine is
//! shared and noisy).

mod common;

use common::{connect_packet, free_port, Broker, RawClient};
use ringmq::protocol::Packet;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sockets that never send anything.
const SILENT: usize = 5_000;
/// The broker's `limits.connect_timeout_ms` in this test.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The well-behaved client's pace: 100 QoS 1 round trips per second.
const ROUND_TRIP_EVERY: Duration = Duration::from_millis(10);

/// Raises this process's open-files limit to its hard limit (the silent
/// sockets need more than a default soft limit of 1024).
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The well-behaved client: publishes QoS 1 to its own subscription every
/// [`ROUND_TRIP_EVERY`] until `stop`, acknowledging every delivery; returns
/// (sent at, round-trip time) per message, in order, and panics on a lost
/// or reordered one.
fn round_trips(broker_addr: std::net::SocketAddr, stop: &AtomicBool) -> Vec<(Instant, Duration)> {
    let mut client = RawClient::connect(broker_addr);
    client.send(&connect_packet("steady", true, 60));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client.send_bytes(b"\x82\x07\x00\x01\x00\x02rt\x01"); // SUBSCRIBE rt, QoS 1
    assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
    let mut trips = Vec::new();
    let mut next = Instant::now();
    let mut id: u16 = 0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += ROUND_TRIP_EVERY;
        id = id % 65_000 + 1;
        let [high, low] = id.to_be_bytes();
        let sent = Instant::now();
        client.send_bytes(&[0x32, 0x06, 0x00, 0x02, b'r', b't', high, low]);
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match client.recv() {
                Some(Packet::PubAck(ack)) => {
                    assert_eq!(ack.packet_id.get(), id, "PUBACK out of order");
                    acked = true;
                }
                Some(Packet::Publish(publish)) => {
                    let pid = publish.packet_id.expect("QoS 1");
                    let [h, l] = pid.get().to_be_bytes();
                    client.send_bytes(&[0x40, 0x02, h, l]);
                    trips.push((sent, sent.elapsed()));
                    delivered = true;
                }
                other => panic!("round trip {id}: {other:?} (None: the connection closed)"),
            }
        }
    }
    trips
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() * 99 / 100).copied().unwrap_or_default()
}

#[test]
fn slowloris_sockets_are_closed_at_the_connect_timeout_while_others_are_served() {
    raise_open_files();
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_config(
        2,
        &format!(
            "sys_interval_s = 0\n[limits]\nconnect_timeout_ms = {}\n[admin]\nlisten = \"{admin}\"\n",
            CONNECT_TIMEOUT.as_millis()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let steady = std::thread::spawn({
        let (stop, addr) = (Arc::clone(&stop), broker.addr);
        move || round_trips(addr, &stop)
    });
    // A quiet second first, for the record.
    std::thread::sleep(Duration::from_secs(1));
    let flood_started = Instant::now();
    let silent: Vec<(Instant, TcpStream)> = (0..SILENT)
        .map(|_| (Instant::now(), TcpStream::connect(broker.addr).expect("connect")))
        .collect();
    let opened = flood_started.elapsed();
    // Every silent socket is closed by the broker, none before its
    // timeout. (The upper bound only keeps a broken broker from hanging
    // the test.)
    let mut early = 0;
    for (connected, mut socket) in silent {
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut byte = [0u8; 1];
        match socket.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("a silent socket read {other:?} instead of being closed"),
        }
        // The broker's clock starts at accept, a little after connect.
        if connected.elapsed() < CONNECT_TIMEOUT - Duration::from_millis(50) {
            early += 1;
        }
    }
    let all_closed = flood_started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let trips = steady.join().expect("the steady client lost nothing");
    assert_eq!(early, 0, "silent sockets closed before the connect timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_connect_timeouts_total")
        < SILENT as u64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_connect_timeouts_total"),
        SILENT as u64
    );
    let quiet: Vec<_> =
        trips.iter().filter(|(at, _)| *at < flood_started).map(|(_, rtt)| *rtt).collect();
    let flooded: Vec<_> = trips
        .iter()
        .filter(|(at, _)| *at >= flood_started && at.duration_since(flood_started) < all_closed)
        .map(|(_, rtt)| *rtt)
        .collect();
    assert!(!quiet.is_empty() && !flooded.is_empty(), "round trips in both phases");
    eprintln!(
        "{SILENT} silent sockets opened in {opened:?}, all closed after {all_closed:?}; steady \
         client p99 {:?} quiet ({} round trips), {:?} during the flood ({})",
        p99(quiet.clone()),
        quiet.len(),
        p99(flooded.clone()),
        flooded.len()
    );
    assert!(broker.stop().success());
}

/// Whether the broker answers a CONNECT on a new connection (false: it
/// closed the connection without a word).
fn admitted(addr: std::net::SocketAddr, id: &str) -> Option<RawClient> {
    let mut client = RawClient::connect(addr);
    client.send(&connect_packet(id, true, 60));
    match client.recv() {
        Some(Packet::ConnAck(_)) => Some(client),
        None => None,
        Some(other) => panic!("{other:?}"),
    }
}

#[test]
fn a_listener_refuses_connections_past_its_own_limit() {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_listener(
        2,
        "max_connections = 3",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    // Nobody connected yet (Broker::start waits without connecting).
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_connections") != 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let open: Vec<_> = (0..3).map(|n| admitted(broker.addr, &format!("in-{n}")).unwrap()).collect();
    assert!(admitted(broker.addr, "fourth").is_none(), "past the listener's max_connections");
    drop(open);
    // Once one closes, its slot is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        if let Some(client) = admitted(broker.addr, "again") {
            break Some(client);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(again.is_some(), "a closed connection gives its slot back");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_refused_at_limit_total")
        == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_refused_at_limit_total")
            >= 1
    );
    assert!(broker.stop().success());
}

#[test]
fn a_listener_refuses_connections_over_its_rate() {
    let admin = format!("127.0.0.1:{}", free_port());
    let broker = Broker::start_with_listener(
        2,
        "max_connection_rate = 4",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    // The buckets start full, and nobody connected yet (Broker::start
    // waits for the listening socket without connecting).
    const TRIED: u64 = 40;
    let clients: Vec<_> =
        (0..TRIED).map(|n| admitted(broker.addr, &format!("burst-{n}"))).collect();
    let accepted = clients.iter().flatten().count() as u64;
    // 4 per second over 2 shards: a burst of 2 per shard, plus what
    // refills while the burst is tried.
    assert!((1..TRIED / 2).contains(&accepted), "{accepted} of {TRIED} accepted");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_refused_rate_total")
        < TRIED - accepted
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        common::metric_sum(&common::http_get(&admin, "/metrics"), "ringmq_refused_rate_total"),
        TRIED - accepted
    );
    assert!(broker.stop().success());
}
