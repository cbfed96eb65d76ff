//! The command line: subcommands, their flags, and the parsers of flag
//! values (durations, source address lists).
//!
//! Flag names are an interface: scripts and the README use `--host`,
//! `--clients`, `--publishers`, `--subscribers`, `--qos`, `--payload`,
//! `--rate`, `--duration`, `--count`, `--ifaddr`, `--json`, `--csv` and
//! `--plot`.

use crate::payload::ClockSource;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// A thread-per-core MQTT load generator with HDR latency and loss
/// accounting.
#[derive(Debug, Parser)]
#[command(name = "ringmq-bench", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open --clients connections at --connect-rate, hold them with
    /// keep-alive for --duration, report connect latency and failures.
    Conn(ConnArgs),
    /// --clients publishers, each on its own topic (--topic, `%i` = index).
    Pub(PubArgs),
    /// --clients subscribers to --filter; loss is counted from sequence gaps.
    Sub(SubArgs),
    /// Many publishers to few subscribers, optionally through `$share`.
    FanIn(FanInArgs),
    /// Few publishers to many subscribers.
    FanOut(FanOutArgs),
    /// Each client publishes on its own topic and subscribes to its peer's.
    P2p(P2pArgs),
    /// Every client disconnects and reconnects at once, --cycles times.
    Storm(StormArgs),
    /// Merge the --json reports of several ringmq-bench processes that ran
    /// the same scenario at once: counts and rates summed, latency
    /// histograms merged.
    Merge(MergeArgs),
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[value(name = "3.1.1", alias = "4")]
    V311,
    /// MQTT 5.0 (protocol level 5).
    #[value(name = "5", alias = "5.0")]
    V5,
}

/// How to reach the broker and what every CONNECT says.
#[derive(Clone, Debug, Args)]
pub struct ConnectionOpts {
    /// Broker address; repeat to spread clients over several targets.
    #[arg(long = "host", value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub hosts: Vec<String>,
    /// MQTT version.
    #[arg(long = "mqtt-version", value_enum, default_value = "3.1.1")]
    pub mqtt_version: MqttVersion,
    /// Keep alive in seconds (0 disables it).
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (5.0).
    #[arg(long, value_name = "SECS")]
    pub session_expiry: Option<u32>,
    /// Client identifiers are PREFIX-INDEX.
    #[arg(long, default_value = "ringmq-bench")]
    pub client_id_prefix: String,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password.
    #[arg(long)]
    pub password: Option<String>,
    /// Source addresses, a comma-separated list of addresses and IPv4
    /// ranges (127.0.0.2-127.0.0.60); clients take them in turn.
    #[arg(long, value_parser = parse_ifaddrs)]
    pub ifaddr: Option<IfAddrs>,
    /// New connections per second over all cores (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// How long to wait for every connection (and subscription) at start.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub connect_timeout: Duration,
    /// Most QoS 1/2 publishes awaiting acknowledgement per connection.
    /// MQTT 3.1.1 has no way to learn the broker's limit and some brokers
    /// silently drop QoS 2 publishes above it (mosquitto's
    /// max_inflight_messages, 20 by default); 5.0 uses the smaller of this
    /// and the broker's Receive Maximum.
    #[arg(long, default_value_t = 20)]
    pub inflight: u16,
    /// Executors (one per core, pinned); default: every core allowed.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Clock of the payload timestamps.
    #[arg(long, value_enum, default_value = "monotonic")]
    pub clock: ClockSource,
    /// Connect over TLS (1.2 or 1.3, ALPN "mqtt"): the broker's certificate
    /// is verified against --cafile and the host name (or IP) of --host.
    #[arg(long, requires = "cafile")]
    pub tls: bool,
    /// PEM file of the CA certificates that sign the broker's certificate.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub cafile: Option<PathBuf>,
}

/// What the publishers send and for how long.
#[derive(Clone, Debug, Args)]
pub struct LoadOpts {
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 16: timestamp and sequence).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub payload: usize,
    /// Messages per second per publisher (constant-rate schedule).
    #[arg(long, value_name = "MSGS_PER_S", conflicts_with = "total_rate")]
    pub rate: Option<f64>,
    /// Messages per second over all publishers.
    #[arg(long, value_name = "MSGS_PER_S")]
    pub total_rate: Option<f64>,
    /// Publish for this long (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Messages per publisher.
    #[arg(long)]
    pub count: Option<u64>,
    /// Topic template; `%i` is the publisher's index.
    #[arg(long, default_value = "ringmq-bench/%i")]
    pub topic: String,
    /// After the publishers finish, wait this long at most for messages
    /// still on their way. The drain ends earlier when every expected
    /// delivery arrived, or when nothing arrived for --drain-idle.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// End the drain once nothing arrived for this long (a broker that
    /// pauses longer, e.g. a stalled subscriber's queue, needs more; at
    /// least --drain to always wait the whole --drain).
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub drain_idle: Duration,
    /// Find the highest sustained total rate instead of running at one (a
    /// closed loop: each run's result sets the next run's rate): runs of
    /// --duration each, the rate doubling from --total-rate (default
    /// 1000/s) up to --rate-limit until one is not sustained (or halving,
    /// down to 1/1024 of it or 1/s, until one is), then bisection between the highest
    /// sustained rate and the lowest that was not, to within 5%. A rate is
    /// sustained when its run passes (no loss beyond what the QoS allows),
    /// publishes at least 95% of it and keeps its p99 latency within
    /// --max-p99; a run still behind its schedule at twice --duration
    /// stops there. The report is the highest sustained run's, with every
    /// run's result under "search".
    #[arg(long, conflicts_with_all = ["rate", "count"])]
    pub find_max_rate: bool,
    /// Highest p99 end-to-end latency of a sustained rate (--find-max-rate).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub max_p99: Duration,
    /// Highest total rate --find-max-rate tries.
    #[arg(long, value_name = "MSGS_PER_S", default_value_t = 10_000_000.0)]
    pub rate_limit: f64,
}

/// Subscriber behaviour that lets tests force an overflow.
#[derive(Clone, Debug, Args)]
pub struct SubscriberOpts {
    /// Subscribers stop reading for this long when publishing starts.
    #[arg(long, value_parser = parse_duration)]
    pub stall: Option<Duration>,
    /// Socket receive buffer of subscribers (SO_RCVBUF) in bytes.
    #[arg(long, value_name = "BYTES")]
    pub rcvbuf: Option<usize>,
}

/// Where the results go and when the run fails.
#[derive(Clone, Debug, Args)]
pub struct OutputOpts {
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the per-second timeline and the totals as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw latency over time and the percentile distribution as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Tolerated QoS 0 loss in percent (QoS 1/2 tolerate none).
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    pub max_loss: f64,
    /// The broker's name, for the plot's title and the report (default:
    /// the --host addresses).
    #[arg(long, value_name = "NAME")]
    pub broker_name: Option<String>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `conn`.
#[derive(Clone, Debug, Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Hold the connections this long once all are open.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `pub`.
#[derive(Clone, Debug, Args)]
pub struct PubArgs {
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub load: LoadOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `sub`.
#[derive(Clone, Debug, Args)]
pub struct SubArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Topic filter.
    #[arg(long, default_value = "ringmq-bench/#")]
    pub filter: String,
    /// QoS of the subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Stay subscribed this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Exit as soon as the subscribers have received this many messages
    /// in all (copies included), or when --duration ends, whichever comes
    /// first.
    #[arg(long, value_name = "N")]
    pub receive: Option<u64>,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub subscriber: SubscriberOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `fan-in`.
#[derive(Clone, Debug, Args)]
pub struct FanInArgs {
    /// Publishers.
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// Subscribers.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Subscribe through `$share/GROUP/...`: each message reaches one
    /// subscriber of the group.
    #[arg(long, value_name = "GROUP")]
    pub share: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub load: LoadOpts,
    #[command(flatten)]
    pub subscriber: SubscriberOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `fan-out`.
#[derive(Clone, Debug, Args)]
pub struct FanOutArgs {
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub load: LoadOpts,
    #[command(flatten)]
    pub subscriber: SubscriberOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `p2p`.
#[derive(Clone, Debug, Args)]
pub struct P2pArgs {
    /// Clients; client i subscribes to client i+1's topic (the last to
    /// the first's).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub load: LoadOpts,
    #[command(flatten)]
    pub subscriber: SubscriberOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `storm`.
#[derive(Clone, Debug, Args)]
pub struct StormArgs {
    /// Clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Reconnection storms.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
    /// Hold the connections this long before each storm and after the last.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub duration: Duration,
    #[command(flatten)]
    pub connection: ConnectionOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `merge`.
#[derive(Clone, Debug, Args)]
pub struct MergeArgs {
    /// JSON reports written with --json.
    #[arg(required = true, num_args = 1.., value_name = "REPORT.json")]
    pub files: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the merged per-second timeline and totals as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw the merged latency over time and distribution as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Source addresses to bind before connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddrs(pub Vec<IpAddr>);

/// Parses `a,b-c,...`: addresses, and inclusive IPv4 ranges.
pub fn parse_ifaddrs(text: &str) -> Result<IfAddrs, String> {
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                let from: Ipv4Addr = from.trim().parse().map_err(|e| format!("{from}: {e}"))?;
                let to: Ipv4Addr = to.trim().parse().map_err(|e| format!("{to}: {e}"))?;
                let (from, to) = (u32::from(from), u32::from(to));
                if from > to {
                    return Err(format!("empty range {part}"));
                }
                if to - from >= 1 << 20 {
                    return Err(format!("range {part} is larger than 2^20 addresses"));
                }
                addrs.extend((from..=to).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
            }
            None => addrs.push(part.parse().map_err(|e| format!("{part}: {e}"))?),
        }
    }
    if addrs.is_empty() {
        return Err("no address".into());
    }
    Ok(IfAddrs(addrs))
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("bad duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn ifaddr_lists_and_ranges() {
        let IfAddrs(addrs) = parse_ifaddrs("127.0.0.2-127.0.0.60").unwrap();
        assert_eq!(addrs.len(), 59);
        assert_eq!(addrs[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(addrs[58], IpAddr::from([127, 0, 0, 60]));
        let IfAddrs(addrs) = parse_ifaddrs("127.0.0.1, ::1,127.0.1.254-127.0.2.1").unwrap();
        assert_eq!(addrs.len(), 6);
        assert!(parse_ifaddrs("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_ifaddrs("").is_err());
    }

    #[test]
    fn issue_flag_names_parse() {
        let cli = Cli::try_parse_from([
            "ringmq-bench",
            "fan-in",
            "--host",
            "127.0.0.1:1883",
            "--host",
            "127.0.0.1:1884",
            "--publishers",
            "5",
            "--subscribers",
            "2",
            "--qos",
            "1",
            "--payload",
            "64",
            "--rate",
            "100",
            "--duration",
            "30s",
            "--count",
            "10",
            "--ifaddr",
            "127.0.0.2-127.0.0.60",
            "--json",
            "r.json",
            "--csv",
            "r.csv",
            "--plot",
            "r.svg",
            "--mqtt-version",
            "5",
        ])
        .unwrap();
        let Command::FanIn(args) = cli.command else { panic!() };
        assert_eq!(args.connection.hosts.len(), 2);
        assert_eq!(args.connection.mqtt_version, MqttVersion::V5);
        assert_eq!((args.publishers, args.subscribers, args.load.qos), (5, 2, 1));
        assert!(Cli::try_parse_from(["ringmq-bench", "pub", "--qos", "3"]).is_err());
        assert!(Cli::try_parse_from(["ringmq-bench", "pub", "--rate", "1", "--total-rate", "2"])
            .is_err());
        let cli = Cli::try_parse_from(["ringmq-bench", "pub", "--drain", "2s"]).unwrap();
        let Command::Pub(args) = cli.command else { panic!() };
        assert_eq!(args.load.drain, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["ringmq-bench", "sub", "--receive", "1000"]).unwrap();
        assert!(matches!(cli.command, Command::Sub(SubArgs { receive: Some(1000), .. })));
        let cli = Cli::try_parse_from(["ringmq-bench", "conn", "--clients", "3"]).unwrap();
        assert!(matches!(cli.command, Command::Conn(ConnArgs { clients: 3, .. })));
    }
}
