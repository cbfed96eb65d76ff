//! ringmq-bench against Debian's mosquitto: an independent broker checks
//! that the sent, received and lost counts are right, and that a forced
//! QoS 0 overflow is reported with a failing exit status.
//!
//! Without mosquitto the tests are skipped, except on CI (`CI` set), where
//! they fail.

mod common;

use common::Broker;
use std::path::PathBuf;
use std::process::Command;

fn mosquitto_binary() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Starts mosquitto with `extra` config lines; `None` (skip) when it is not
/// installed and not on CI.
fn mosquitto(name: &str, extra: &str) -> Option<Broker> {
    let Some(binary) = mosquitto_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("mosquitto is not installed (apt-get install mosquitto); required on CI");
        }
        eprintln!("skipping {name}: mosquitto is not installed");
        return None;
    };
    let (port, dir) = common::port_and_dir("mosquitto", name);
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n{extra}\n"),
    )
    .unwrap();
    let mut command = Command::new(binary);
    command.arg("-c").arg(&config);
    Some(Broker::start(command, port, dir))
}

#[test]
fn fan_out_qos0_counts_every_delivery() {
    let Some(broker) = mosquitto("fanout", "") else { return };
    common::fan_out_qos0_counts_every_delivery(&broker);
}

#[test]
fn qos1_p2p_v311_and_qos2_fan_in_v5_lose_nothing() {
    let Some(broker) = mosquitto("qos12", "") else { return };
    common::qos1_p2p_and_qos2_fan_in_lose_nothing(&broker, "5");
}

#[test]
fn shared_subscription_splits_the_messages() {
    let Some(broker) = mosquitto("share", "") else { return };
    common::shared_subscription_splits_the_messages(&broker, "5");
}

#[test]
fn forced_qos0_overflow_is_reported_and_fails_the_run() {
    // mosquitto drops QoS 0 messages for a subscriber whose queue is full.
    let Some(broker) = mosquitto("overflow", "max_queued_messages 10") else { return };
    common::forced_qos0_overflow_is_reported_and_fails_the_run(&broker);
}

#[test]
fn conn_storm_and_source_addresses() {
    let Some(broker) = mosquitto("conn", "") else { return };
    common::conn_storm_and_source_addresses(&broker, "5");
}

#[test]
fn separate_pub_and_sub_processes_and_file_outputs() {
    let Some(broker) = mosquitto("pubsub", "") else { return };
    common::separate_pub_and_sub(&broker);
}

#[test]
fn sub_receive_n_then_exit() {
    let Some(broker) = mosquitto("receive", "") else { return };
    common::sub_receive_n_then_exit(&broker);
}

#[test]
fn drain_waits_as_configured() {
    let Some(broker) = mosquitto("drain", "") else { return };
    common::drain_waits_as_configured(&broker);
}
