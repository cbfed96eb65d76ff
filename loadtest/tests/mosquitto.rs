//! ringmq-bench against Debian's mosquitto: an independent broker checks
//! that the sent, received and lost counts are right, and that a forced
//! QoS 0 overflow is reported with a failing exit status.
//!
//! Without mosquitto the tests are skipped, except on CI (`CI` set), where
//! they fail.

use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mosquitto process on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mosquitto_binary() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Starts mosquitto with `extra` config lines; `None` (skip) when it is not
/// installed and not on CI.
fn mosquitto(name: &str, extra: &str) -> Option<Mosquitto> {
    let Some(binary) = mosquitto_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("mosquitto is not installed (apt-get install mosquitto); required on CI");
        }
        eprintln!("skipping {name}: mosquitto is not installed");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("ringmq-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n{extra}\n"),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let broker = Mosquitto { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(broker)
}

/// Runs ringmq-bench with `args` against `broker`; returns the exit code
/// and the JSON report.
fn bench(broker: &Mosquitto, args: &[&str]) -> (i32, Value) {
    let json = broker.dir.join(format!("report-{}.json", args[0]));
    let host = format!("127.0.0.1:{}", broker.port);
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(args)
        .args(["--host", &host, "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("run ringmq-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().expect("exit code");
    assert_ne!(code, 2, "ringmq-bench could not run:\n{stdout}\n{stderr}");
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!("{stdout}");
    (code, serde_json::from_str(&report).unwrap())
}

fn n(report: &Value, path: &str) -> u64 {
    report.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} in {report}"))
}

#[test]
fn fan_out_qos0_counts_every_delivery() {
    let Some(broker) = mosquitto("fanout", "") else { return };
    let (code, r) = bench(
        &broker,
        &["fan-out", "--publishers", "2", "--subscribers", "3", "--count", "300", "--rate", "3000"],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/sent"), 600);
    assert_eq!(n(&r, "/messages/expected"), 1800);
    assert_eq!(n(&r, "/messages/received"), 1800);
    assert_eq!(n(&r, "/messages/lost"), 0);
    assert_eq!(n(&r, "/messages/latency_us/count"), 1800);
    assert_eq!(n(&r, "/connections/connected"), 5);
    assert_eq!(r["passed"], Value::Bool(true));
}

#[test]
fn qos1_p2p_v311_and_qos2_fan_in_v5_lose_nothing() {
    let Some(broker) = mosquitto("qos12", "") else { return };
    let (code, r) = bench(&broker, &["p2p", "--clients", "4", "--qos", "1", "--count", "250"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/sent"), 1000);
    assert_eq!(n(&r, "/messages/acked"), 1000);
    assert_eq!(n(&r, "/messages/received"), 1000);
    assert_eq!(n(&r, "/messages/lost"), 0);

    let (code, r) = bench(
        &broker,
        &[
            "fan-in",
            "--publishers",
            "5",
            "--subscribers",
            "2",
            "--qos",
            "2",
            "--count",
            "200",
            "--mqtt-version",
            "5",
            "--payload",
            "100",
            "--client-id-prefix",
            "v5",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/sent"), 1000);
    assert_eq!(n(&r, "/messages/acked"), 1000);
    assert_eq!(n(&r, "/messages/received"), 2000);
    assert_eq!(n(&r, "/messages/by_qos/2/received"), 2000);
    assert_eq!(n(&r, "/messages/duplicates"), 0);
    assert_eq!(r["mqtt_version"], "5");
}

#[test]
fn shared_subscription_splits_the_messages() {
    let Some(broker) = mosquitto("share", "") else { return };
    let (code, r) = bench(
        &broker,
        &[
            "fan-in",
            "--publishers",
            "4",
            "--subscribers",
            "2",
            "--share",
            "g",
            "--qos",
            "1",
            "--count",
            "100",
            "--mqtt-version",
            "5",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/expected"), 400);
    assert_eq!(n(&r, "/messages/received"), 400);
    assert_eq!(n(&r, "/messages/lost"), 0);
}

#[test]
fn forced_qos0_overflow_is_reported_and_fails_the_run() {
    // mosquitto drops QoS 0 messages for a subscriber whose queue is full;
    // the subscriber stops reading for a second with a tiny socket buffer.
    let Some(broker) = mosquitto("overflow", "max_queued_messages 10") else { return };
    let (code, r) = bench(
        &broker,
        &[
            "fan-out",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--payload",
            "1000",
            "--rate",
            "4000",
            "--duration",
            "2s",
            "--stall",
            "1s",
            "--rcvbuf",
            "4096",
        ],
    );
    assert_eq!(code, 1, "loss must fail the run: {r}");
    let (sent, received, lost) =
        (n(&r, "/messages/sent"), n(&r, "/messages/received"), n(&r, "/messages/lost"));
    assert!(lost > 0, "{r}");
    assert_eq!(received + lost, sent, "every message is received or counted lost");
    assert_eq!(r["passed"], Value::Bool(false));

    // The same loss within --max-loss passes.
    let (code, _) = bench(
        &broker,
        &[
            "fan-out",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--payload",
            "1000",
            "--rate",
            "4000",
            "--duration",
            "2s",
            "--stall",
            "1s",
            "--rcvbuf",
            "4096",
            "--max-loss",
            "100",
            "--client-id-prefix",
            "tolerant",
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn conn_storm_and_source_addresses() {
    let Some(broker) = mosquitto("conn", "") else { return };
    let (code, r) = bench(
        &broker,
        &["conn", "--clients", "60", "--duration", "500ms", "--ifaddr", "127.0.0.2-127.0.0.4"],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/connections/connected"), 60);
    assert_eq!(n(&r, "/connections/latency_us/count"), 60);

    let (code, r) = bench(
        &broker,
        &[
            "storm",
            "--clients",
            "20",
            "--cycles",
            "2",
            "--duration",
            "300ms",
            "--mqtt-version",
            "5",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/connections/connected"), 60);
    assert_eq!(n(&r, "/connections/reconnect_latency_us/count"), 40);
}

#[test]
fn separate_pub_and_sub_processes_and_file_outputs() {
    let Some(broker) = mosquitto("pubsub", "") else { return };
    let host = format!("127.0.0.1:{}", broker.port);
    let sub_json = broker.dir.join("sub.json");
    let sub = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(["sub", "--qos", "1", "--duration", "3s", "--quiet", "--client-id-prefix", "s"])
        .args(["--host", &host, "--json"])
        .arg(&sub_json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let csv = broker.dir.join("pub.csv");
    let svg = broker.dir.join("pub.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(["pub", "--clients", "2", "--qos", "1", "--count", "500", "--rate", "1000"])
        .args(["--host", &host, "--quiet", "--client-id-prefix", "p", "--csv"])
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let status = wait(sub);
    assert!(status.success());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&sub_json).unwrap()).unwrap();
    assert_eq!(n(&r, "/messages/received"), 1000);
    assert_eq!(n(&r, "/messages/lost"), 0);
    assert_eq!(r["messages"]["expected"], Value::Null);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("second,sent,received,"));
    assert!(csv.lines().any(|l| l.starts_with("total,1000,0,")), "{csv}");
    assert_svg(&svg);
}

fn wait(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringmq-bench sub did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_svg(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("latency"), "{svg}");
}
