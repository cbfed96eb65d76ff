//! The log as an operator reads it at `--log info`: one line per connect
//! and per disconnect, with the client id, the peer address, the protocol
//! version and the reason; and a reconnect storm logs a bounded number of
//! them plus a summary of what was held back.

mod common;

use common::{connect_packet, Broker, RawClient};
use ringmq::protocol::{Disconnect, Packet};
use std::time::{Duration, Instant};

/// The lines of `log` holding every one of `parts`, once some are there or
/// `within` passed.
fn lines_with(log: &std::path::Path, parts: &[&str], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringmq-{name}-{}.log", std::process::id()))
}

/// Connects as `client_id` and disconnects cleanly.
fn connect_and_disconnect(broker: &Broker, client_id: &str) {
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet(client_id, true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client.send(&Packet::Disconnect(Disconnect::default()));
    assert!(client.recv().is_none(), "the broker closes after DISCONNECT");
}

#[test]
fn a_connect_and_a_disconnect_log_one_line_each_with_id_peer_version_and_reason() {
    let log = log_path("connect-lines");
    let broker = Broker::start_logging_to(2, &["--log", "info"], &log);
    connect_and_disconnect(&broker, "logged-client");
    let within = Duration::from_secs(5);
    let connected = lines_with(&log, &["client connected", "logged-client"], within);
    let disconnected = lines_with(&log, &["client disconnected", "logged-client"], within);
    broker.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(connected.len(), 1, "{text}");
    assert_eq!(disconnected.len(), 1, "{text}");
    for line in [&connected[0], &disconnected[0]] {
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("protocol=3.1.1"), "{line}");
    }
    assert!(connected[0].contains("reason=\"accepted\""), "{}", connected[0]);
    assert!(disconnected[0].contains("reason=\"client sent DISCONNECT\""), "{}", disconnected[0]);
}

#[test]
fn a_reconnect_storm_logs_a_bounded_number_of_lines_and_a_summary() {
    let log = log_path("storm");
    let broker = Broker::start_logging_to(1, &["--log", "info"], &log);
    let storm = 300;
    let started = Instant::now();
    for i in 0..storm {
        connect_and_disconnect(&broker, &format!("storm-{i}"));
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The summary comes at the first tick a second after the last line.
    let summaries = lines_with(&log, &["connection log lines suppressed"], Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    broker.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let count = |what: &str| text.lines().filter(|line| line.contains(what)).count() as u64;
    let logged = count("client connected") + count("client disconnected");
    // 50 lines a second at most (a summary takes one of them).
    assert!(logged <= 50 * (seconds + 1), "{logged} lines in {seconds} s:\n{text}");
    assert!(!summaries.is_empty(), "no summary:\n{text}");
    let suppressed: u64 = text
        .lines()
        .filter(|line| line.contains("connection log lines suppressed"))
        .map(|line| {
            let value = line.split("suppressed=").nth(1).unwrap_or_else(|| panic!("{line}"));
            value.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(logged + suppressed, 2 * storm, "every line logged or counted:\n{text}");
}
