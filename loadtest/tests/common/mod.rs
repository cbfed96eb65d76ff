//! What the broker tests share: a broker process on a free loopback port,
//! killed on drop, ringmq-bench runs against it, and the scenarios every
//! broker must pass with the right sent, received and lost counts.

use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A broker process listening on `127.0.0.1:port`, killed (and its
/// directory removed) on drop.
pub struct Broker {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A directory of its own: configuration, log and reports.
    pub dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port on 127.0.0.1 and a fresh directory for the broker of test
/// `name`.
pub fn port_and_dir(broker: &str, name: &str) -> (u16, PathBuf) {
    let port = free_port();
    let dir =
        std::env::temp_dir().join(format!("ringmq-bench-{broker}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (port, dir)
}

impl Broker {
    /// Starts `command` (output to `dir/broker.log`) and waits until it
    /// accepts connections on `port`.
    pub fn start(mut command: Command, port: u16, dir: PathBuf) -> Self {
        let log = std::fs::File::create(dir.join("broker.log")).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let mut broker = Broker { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("{command:?} exited with {status}:\n{}", broker.log());
            }
            assert!(Instant::now() < deadline, "{command:?} did not start:\n{}", broker.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// `HOST:PORT` for `--host`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

/// Runs ringmq-bench with `args` against `broker` (`--host`, `--quiet` and
/// `--json` added); returns the exit code, the JSON report and stdout.
/// Fails the test when the run could not be made (exit status 2).
pub fn bench(broker: &Broker, args: &[&str]) -> (i32, Value, String) {
    let json = broker.dir.join(format!("report-{}-{}.json", args[0], args.len()));
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(args)
        .args(["--host", &broker.host(), "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("run ringmq-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().expect("exit code");
    assert_ne!(code, 2, "ringmq-bench could not run:\n{stdout}\n{stderr}");
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nbroker log:\n{}", broker.log()));
    eprintln!("{stdout}");
    (code, serde_json::from_str(&report).unwrap(), stdout)
}

/// The number at JSON pointer `path` of `report`.
pub fn n(report: &Value, path: &str) -> u64 {
    report.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} in {report}"))
}

/// Waits (at most 30 s) for a ringmq-bench process to finish.
pub fn wait(mut child: Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringmq-bench did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fan-out`, QoS 0: every publisher's messages reach every subscriber.
pub fn fan_out_qos0_counts_every_delivery(broker: &Broker) {
    let (code, r, _) = bench(
        broker,
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

/// `p2p` at QoS 1 in 3.1.1, and `fan-in` at QoS 2 in `version`: nothing
/// lost, every publish acknowledged, no QoS 2 duplicate.
pub fn qos1_p2p_and_qos2_fan_in_lose_nothing(broker: &Broker, version: &str) {
    let (code, r, _) = bench(broker, &["p2p", "--clients", "4", "--qos", "1", "--count", "250"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/sent"), 1000);
    assert_eq!(n(&r, "/messages/acked"), 1000);
    assert_eq!(n(&r, "/messages/received"), 1000);
    assert_eq!(n(&r, "/messages/lost"), 0);

    let (code, r, _) = bench(
        broker,
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
            version,
            "--payload",
            "100",
            "--client-id-prefix",
            "q2",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/sent"), 1000);
    assert_eq!(n(&r, "/messages/acked"), 1000);
    assert_eq!(n(&r, "/messages/received"), 2000);
    assert_eq!(n(&r, "/messages/by_qos/2/received"), 2000);
    assert_eq!(n(&r, "/messages/duplicates"), 0);
    assert_eq!(r["mqtt_version"], version);
}

/// `fan-in --share`: the group receives each message once.
pub fn shared_subscription_splits_the_messages(broker: &Broker, version: &str) {
    let (code, r, _) = bench(
        broker,
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
            version,
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/expected"), 400);
    assert_eq!(n(&r, "/messages/received"), 400);
    assert_eq!(n(&r, "/messages/lost"), 0);
}

/// A QoS 0 subscriber that stops reading for a second, with a 4 KiB
/// receive buffer, behind a broker whose per-session queue is small: the
/// broker drops messages, the run reports them and exits 1; the same loss
/// within `--max-loss` passes.
pub fn forced_qos0_overflow_is_reported_and_fails_the_run(broker: &Broker) {
    let csv = broker.dir.join("overflow.csv");
    let csv_arg = csv.to_str().unwrap();
    let stalled = [
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
        "--csv",
        csv_arg,
    ];
    let (code, r, stdout) = bench(broker, &stalled);
    assert_eq!(code, 1, "loss must fail the run: {r}");
    let (sent, received, lost) =
        (n(&r, "/messages/sent"), n(&r, "/messages/received"), n(&r, "/messages/lost"));
    assert!(lost > 0, "{r}");
    assert_eq!(received + lost, sent, "every message is received or counted lost");
    assert_eq!(r["passed"], Value::Bool(false));
    assert!(stdout.contains("messages lost"), "{stdout}");
    // The per-second loss adds up to the total, in the JSON and the CSV.
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.iter().map(|s| n(s, "/lost")).sum::<u64>(), lost, "{r}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut rows = csv.lines();
    let lost_column = rows.next().unwrap().split(',').position(|c| c == "lost").unwrap();
    let per_second: u64 = rows
        .filter(|row| !row.starts_with("total"))
        .map(|row| row.split(',').nth(lost_column).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_second, lost, "{csv}");

    let mut tolerant = stalled.to_vec();
    tolerant.extend(["--max-loss", "100", "--client-id-prefix", "tolerant"]);
    let (code, r, _) = bench(broker, &tolerant);
    assert_eq!(code, 0, "{r}");
}

/// `conn` from three source addresses, and `storm` in `version`.
pub fn conn_storm_and_source_addresses(broker: &Broker, version: &str) {
    let (code, r, _) = bench(
        broker,
        &["conn", "--clients", "60", "--duration", "500ms", "--ifaddr", "127.0.0.2-127.0.0.4"],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/connections/connected"), 60);
    assert_eq!(n(&r, "/connections/latency_us/count"), 60);

    let (code, r, _) = bench(
        broker,
        &[
            "storm",
            "--clients",
            "20",
            "--cycles",
            "2",
            "--duration",
            "300ms",
            "--mqtt-version",
            version,
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/connections/connected"), 60);
    assert_eq!(n(&r, "/connections/reconnect_latency_us/count"), 40);
}

/// `sub` and `pub` in separate processes through `broker`: the subscriber
/// counts every message of both publishers, and the publisher writes its
/// CSV and SVG.
pub fn separate_pub_and_sub(broker: &Broker) {
    let host = broker.host();
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
    assert_eq!(n(&r, "/messages/received"), 1000, "{r}");
    assert_eq!(n(&r, "/messages/lost"), 0);
    assert_eq!(r["messages"]["expected"], Value::Null);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("second,sent,received,"));
    assert!(csv.lines().any(|l| l.starts_with("total,1000,0,")), "{csv}");
    assert_svg(&svg);
}

/// `sub --receive N` exits once N messages arrived, long before its
/// `--duration`.
pub fn sub_receive_n_then_exit(broker: &Broker) {
    let host = broker.host();
    let sub_json = broker.dir.join("sub-receive.json");
    let started = Instant::now();
    let sub = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(["sub", "--receive", "300", "--duration", "25s", "--quiet"])
        .args(["--client-id-prefix", "rs", "--filter", "receive/#", "--host", &host, "--json"])
        .arg(&sub_json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-bench"))
        .args(["pub", "--clients", "2", "--count", "500", "--rate", "500", "--topic", "receive/%i"])
        .args(["--host", &host, "--quiet", "--client-id-prefix", "rp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(wait(sub).success());
    assert!(started.elapsed() < Duration::from_secs(15), "sub waited for its --duration");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&sub_json).unwrap()).unwrap();
    let received = n(&r, "/messages/received");
    assert!((300..1000).contains(&received), "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap() < 10.0, "{r}");
}

/// The drain after publishing: a subscriber that stops reading for 2 s
/// while 200 QoS 1 messages are published in half a second. With the
/// default `--drain-idle` (500 ms) the drain gives up while it is stalled
/// and the messages count as lost; with `--drain-idle 30s` it waits, and
/// ends as soon as all 200 arrived, long before its 30 s.
pub fn drain_waits_as_configured(broker: &Broker) {
    let run = |prefix: &str, drain: &[&str]| {
        let mut args = vec![
            "fan-out",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--qos",
            "1",
            "--count",
            "200",
            "--rate",
            "400",
            "--stall",
            "2s",
            "--client-id-prefix",
            prefix,
        ];
        args.extend_from_slice(drain);
        let started = Instant::now();
        let (code, r, _) = bench(broker, &args);
        (code, r, started.elapsed())
    };
    let (code, r, _) = run("drain-short", &[]);
    assert_eq!(code, 1, "the drain ended while the subscriber was stalled: {r}");
    assert!(n(&r, "/messages/lost") > 0, "{r}");

    let (code, r, took) = run("drain-long", &["--drain", "30s", "--drain-idle", "30s"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "/messages/received"), 200, "{r}");
    assert_eq!(n(&r, "/messages/lost"), 0, "{r}");
    assert!(took < Duration::from_secs(20), "the drain did not end once all arrived: {took:?}");
}

/// The file is an SVG with the latency charts.
pub fn assert_svg(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("latency"), "{svg}");
}

/// A port for a test broker. Not an ephemeral port from `bind(0)`: once
/// released, the kernel may give it to a client socket of a concurrent
/// test, or to another test's broker (ringmq binds with SO_REUSEPORT, so two
/// brokers would share its connections). These lie below the ephemeral range
/// (32768 and up by default), apart from the ringmq package's test ports,
/// are handed out once per process and are checked free by binding.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const PER_PROCESS: u32 = 40;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 200) * PER_PROCESS;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % PER_PROCESS) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
