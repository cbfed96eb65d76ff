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
fn sub_receive_n_then_exit() {
    common::sub_receive_n_then_exit(&ringmq("receive", ""));
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

#[test]
fn merge_adds_up_two_concurrent_processes() {
    // The load-test rig's case: two ringmq-bench processes run the same
    // scenario at once against one broker, each with its own clients and
    // topics; `merge` sums their counts and rates and merges their latency
    // histograms.
    let broker = ringmq("merge", "");
    let run = |name: &str, count: &str| {
        let json = broker.dir.join(format!("{name}.json"));
        let child = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
            .args(["fan-out", "--publishers", "2", "--subscribers", "3", "--rate", "2000"])
            .args(["--count", count, "--quiet", "--host", &broker.host()])
            .args(["--client-id-prefix", name, "--topic", &format!("{name}/%i"), "--json"])
            .arg(&json)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (child, json)
    };
    let (a, a_json) = run("lg0", "300");
    let (b, b_json) = run("lg1", "500");
    assert!(common::wait(a).success());
    assert!(common::wait(b).success());
    let read = |path: &PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (ra, rb) = (read(&a_json), read(&b_json));
    assert!(ra["messages"]["latency_us"]["hdr"].as_str().is_some_and(|h| !h.is_empty()), "{ra}");

    let merged_json = broker.dir.join("merged.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .arg("merge")
        .args([&a_json, &b_json])
        .arg("--json")
        .arg(&merged_json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("result       OK"), "{stdout}");
    let m = read(&merged_json);
    for path in [
        "/messages/sent",
        "/messages/received",
        "/messages/expected",
        "/messages/publishers",
        "/messages/subscribers",
        "/connections/connected",
        "/messages/latency_us/count",
        "/connections/latency_us/count",
        "/cores",
    ] {
        assert_eq!(n(&m, path), n(&ra, path) + n(&rb, path), "{path}");
    }
    assert_eq!(n(&m, "/messages/sent"), 2 * 300 + 2 * 500);
    assert_eq!(n(&m, "/messages/received"), 3 * (2 * 300 + 2 * 500));
    assert_eq!(n(&m, "/messages/lost"), 0);
    let rate = |r: &Value| r["messages"]["received_per_s"].as_f64().unwrap();
    assert!((rate(&m) - rate(&ra) - rate(&rb)).abs() < 0.01, "rates are summed");
    // Merged, not averaged: the extremes are those of either run, and the
    // median lies between the runs' medians.
    let min = |r: &Value| n(r, "/messages/latency_us/min");
    let max = |r: &Value| n(r, "/messages/latency_us/max");
    assert_eq!(min(&m), min(&ra).min(min(&rb)));
    assert_eq!(max(&m), max(&ra).max(max(&rb)));
    let p50 = |r: &Value| n(r, "/messages/latency_us/p50");
    assert!(p50(&ra).min(p50(&rb)) <= p50(&m) && p50(&m) <= p50(&ra).max(p50(&rb)));
    let timeline_sent: u64 = m["timeline"].as_array().unwrap().iter().map(|s| n(s, "/sent")).sum();
    assert_eq!(timeline_sent, n(&m, "/messages/sent"));
    assert_eq!(m["passed"], Value::Bool(true));

    // Reports of different scenarios do not merge.
    let (code, other, _) = bench(&broker, &["conn", "--clients", "2", "--duration", "100ms"]);
    assert_eq!(code, 0, "{other}");
    let other_json = broker.dir.join(format!("report-conn-{}.json", 5));
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .arg("merge")
        .args([&a_json, &other_json])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only runs of the same scenario merge"));
}

#[test]
fn find_max_rate_climbs_the_ladder() {
    let broker = ringmq("maxrate", "");
    let search = [
        "fan-out",
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--find-max-rate",
        "--total-rate",
        "500",
        "--rate-limit",
        "2000",
        "--duration",
        "300ms",
        "--drain",
        "1s",
    ];
    let (code, r, stdout) = bench(&broker, &search);
    assert_eq!(code, 0, "{stdout}");
    for line in ["rate 500/s: sustained", "rate 1000/s: sustained", "rate 2000/s: sustained"] {
        assert!(stdout.contains(line), "{stdout}");
    }
    assert!(stdout.contains("max sustained rate: 2000 msg/s"), "{stdout}");
    // The report is the run at the highest sustained rate.
    assert!(r["messages"]["sent_per_s"].as_f64().unwrap() > 1500.0, "{r}");
    assert_eq!(n(&r, "/messages/lost"), 0);

    // Nothing is sustained within a p99 of 1 us: exit status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(search)
        .args(["--max-p99", "1us", "--quiet", "--host", &broker.host()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("rate 500/s: not sustained"), "{stdout}");
    assert!(stdout.contains("above --max-p99"), "the reason is given: {stdout}");
    // Halving down to 1/1024 of the first rate before giving up.
    assert!(stdout.contains("rate 250/s: not sustained"), "{stdout}");
    assert!(stdout.contains("no sustained rate from 500 down to 1 msg/s"), "{stdout}");
}

#[test]
fn find_max_rate_climbs_down_and_reports_every_step() {
    // A first rate of 8 M msg/s from one publisher is sustained by no
    // broker and no build; the halving (each run cut at twice its 300 ms)
    // finds a rate that is, down to 7,813/s at worst, then bisects. Every
    // step is in the report.
    let broker = ringmq("maxrate-down", "");
    let (code, r, stdout) = bench(
        &broker,
        &[
            "fan-out",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--find-max-rate",
            "--total-rate",
            "8000000",
            "--rate-limit",
            "8000000",
            "--duration",
            "300ms",
            "--max-p99",
            "1s",
            "--broker-name",
            "ringmq (test)",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("rate 8000000/s: not sustained"), "{stdout}");
    let steps = r["search"]["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().unwrap()).collect();
    assert_eq!(rates[..2], [8e6, 4e6], "{stdout}");
    let best = r["search"]["max_sustained_rate"].as_f64().unwrap();
    assert!(steps.iter().any(|s| s["sustained"] == true && s["rate"].as_f64() == Some(best)));
    // The highest sustained rate is the highest sustained step, below
    // every unsustained one, and the report is its run.
    let unsustained = steps.iter().filter(|s| s["sustained"] == false);
    assert!(unsustained.clone().all(|s| s["rate"].as_f64().unwrap() > best), "{stdout}");
    assert!(unsustained.clone().all(|s| !s["why"].as_str().unwrap().is_empty()));
    assert!(r["messages"]["sent_per_s"].as_f64().unwrap() >= 0.95 * best, "{r}");
    assert_eq!(r["broker"], "ringmq (test)");
}

#[test]
fn drain_waits_as_configured() {
    common::drain_waits_as_configured(&ringmq("drain", ""));
}
