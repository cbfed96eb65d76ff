//! End-to-end tests with independent, non-Rust clients: Debian's
//! mosquitto_pub / mosquitto_sub, and Python paho-mqtt 2.x. On CI (`CI` set)
//! a missing client fails the test; elsewhere the test says it skipped.

mod common;

use common::{client_id_on_shard, Broker};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` runs with `probe` and exits successfully; fails on CI.
fn available(program: &str, probe: &[&str]) -> bool {
    let found = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    required_on_ci(program, found)
}

/// Whether `program` can be started at all; fails on CI. For the mosquitto
/// clients, which exit with status 1 after printing their usage, even for
/// `--help` (mosquitto-clients 2.0.11).
fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    required_on_ci(program, found)
}

fn required_on_ci(program: &str, found: bool) -> bool {
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is required on CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

#[test]
fn mosquitto_clients_pub_sub_across_shards() {
    if !installed("mosquitto_pub") || !installed("mosquitto_sub") {
        return;
    }
    let broker = Broker::start(2);
    let port = broker.port().to_string();
    for (sub_shard, pub_shard) in [(0, 1), (1, 0)] {
        let sub_id = client_id_on_shard("msub", sub_shard, 2);
        let pub_id = client_id_on_shard("mpub", pub_shard, 2);
        let mut sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &sub_id, "-q", "1"])
            .args(["-t", "mq/#", "-v"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_lines(sub.stdout.take().unwrap());
        let publish = |topic: &str, message: &str| {
            let status = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-i", &pub_id, "-q", "1"])
                .args(["-t", topic, "-m", message])
                .status()
                .unwrap();
            assert!(status.success());
        };
        // mosquitto_sub says nothing when subscribed: probe until a probe
        // message comes back.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(Instant::now() < deadline, "mosquitto_sub never received the probe");
            publish("mq/probe", "probe");
            if lines.recv_timeout(Duration::from_millis(300)).is_ok() {
                break;
            }
        }
        for (topic, message) in [("mq/a", "one"), ("mq/b/c", "two"), ("mq/a", "three")] {
            publish(topic, message);
        }
        let got: Vec<String> =
            std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok())
                .filter(|line| line != "mq/probe probe")
                .take(3)
                .collect();
        assert_eq!(got, ["mq/a one", "mq/b/c two", "mq/a three"]);
        let _ = sub.kill();
        let _ = sub.wait();
    }
    // Retained, read back by a fresh mosquitto_sub.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "mq/keep", "-m", "kept", "-r", "-q", "1"])
        .status()
        .unwrap();
    assert!(status.success());
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "mq/#", "-C", "1", "-v", "-W", "10"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "mq/keep kept\n");
    assert!(broker.stop().success());
}

/// The lines a child writes, as they come.
fn read_lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

#[test]
fn paho_mqtt_python_client() {
    if !available("python3", &["-c", "import paho.mqtt.client"]) {
        return;
    }
    let broker = Broker::start(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_client.py");
    let output =
        Command::new("python3").args([script, &broker.port().to_string()]).output().unwrap();
    assert!(
        output.status.success(),
        "paho test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(broker.stop().success());
}
