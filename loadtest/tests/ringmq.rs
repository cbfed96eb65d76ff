//! ringmq-bench against ringmq itself: the `ringmq` binary of this
//! workspace on a free loopback port with two shards. Every subcommand must
//! count right, a forced QoS 0 overflow must be reported with a failing
//! exit status, and a refused MQTT 5.0 CONNECT must say so.
//!
//! The binary is looked up next to this test's executable (target/PROFILE/).
//! `cargo test --workspace` builds it; `cargo test -p ringmq-bench` alone
//! does not: run `cargo build -p ringmq` first.

mod common;

use common::{bench, n, Broker};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// target/PROFILE/ringmq, next to target/PROFILE/deps/THIS-TEST.
fn ringmq_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/PROFILE/deps");
    let binary = profile_dir.join(format!("ringmq{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "the ringmq binary is missing at {}: run `cargo build -p ringmq` (with the same \
         profile as these tests, e.g. --release for `cargo test --release`), or run \
         `cargo test --workspace`, which builds it",
        binary.display()
    );
    binary
}

/// Starts ringmq with two shards and `limits` lines in its `[limits]`
/// table.
fn ringmq(name: &str, limits: &str) -> Broker {
    let binary = ringmq_binary();
    let (port, dir) = common::port_and_dir("ringmq", name);
    let config = dir.join("ringmq.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[limits]\n{limits}\n\n\
             [log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(binary);
    command.arg("--config").arg(&config).args(["--shards", "2"]);
    Broker::start(command, port, dir)
}

#[test]
fn fan_out_qos0_counts_every_delivery() {
    common::fan_out_qos0_counts_every_delivery(&ringmq("fanout", ""));
}

#[test]
fn qos1_p2p_and_qos2_fan_in_lose_nothing() {
    common::qos1_p2p_and_qos2_fan_in_lose_nothing(&ringmq("qos12", ""), "3.1.1");
}

#[test]
fn shared_subscription_splits_the_messages() {
    common::shared_subscription_splits_the_messages(&ringmq("share", ""), "3.1.1");
}

#[test]
fn forced_qos0_overflow_is_reported_and_fails_the_run() {
    // ringmq drops QoS 0 messages for a session whose queue is full: at
    // most 10 messages or 16 KiB beyond what the socket takes.
    let broker = ringmq("overflow", "max_queued_messages = 10\nmax_queued_bytes = 16384");
    common::forced_qos0_overflow_is_reported_and_fails_the_run(&broker);
}

#[test]
fn conn_storm_and_source_addresses() {
    common::conn_storm_and_source_addresses(&ringmq("conn", ""), "3.1.1");
}

#[test]
fn separate_pub_and_sub_processes_and_file_outputs() {
    common::separate_pub_and_sub(&ringmq("pubsub", ""));
}

#[test]
fn mqtt5_fan_in_runs_clean() {
    // ringmq serves MQTT 5.0 (it answered CONNACK 0x84 before): a paced
    // 5.0 fan-in loses nothing.
    let broker = ringmq("v5", "");
    let (code, r, stdout) = bench(
        &broker,
        &[
            "fan-in",
            "--publishers",
            "3",
            "--subscribers",
            "1",
            "--count",
            "300",
            "--rate",
            "3000",
            "--mqtt-version",
            "5",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(n(&r, "/connections/connected"), 4);
    assert_eq!(r["passed"], Value::Bool(true), "{r}");
}
