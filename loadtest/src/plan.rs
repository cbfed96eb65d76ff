//! A run's plan: every client, what it connects to, publishes and
//! subscribes to, and which publishers each subscriber should hear from.
//! Built once from the command line, then shared read-only by every
//! executor.

use crate::cli::{Command, ConnectionOpts, LoadOpts, MqttVersion, OutputOpts, SubscriberOpts};
use crate::payload::{ClockSource, HEADER_LEN, MAX_PUBLISHER_ID};
use anyhow::{bail, Context as _};
use ringmq::protocol::{ProtocolVersion, QoS, TopicFilter, TopicName};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Which publishers a subscriber should receive every message of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every publisher of the run.
    All,
    /// One publisher.
    One(u32),
    /// Its share of every publisher, through a shared subscription: loss
    /// is counted over the whole group.
    Shared,
    /// Unknown publishers (`sub` on its own): loss is counted from gaps.
    Gaps,
}

/// A publishing client.
#[derive(Clone, Debug)]
pub struct PublishPlan {
    /// Publisher id in every payload.
    pub publisher: u32,
    /// Topic of its messages.
    pub topic: TopicName,
    /// Offset of its schedule, to spread publishers over the interval.
    pub offset: Duration,
}

/// A subscribing client.
#[derive(Clone, Debug)]
pub struct SubscribePlan {
    /// Its one filter.
    pub filter: TopicFilter,
    /// Whose messages it should get.
    pub expect: Expect,
}

/// One client connection.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// MQTT client identifier.
    pub client_id: String,
    /// Broker address.
    pub target: SocketAddr,
    /// With `--tls`: the name the broker's certificate must have (the
    /// host of `--host`).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Source address to bind before connecting.
    pub source: Option<IpAddr>,
    /// Its publishing, if any.
    pub publish: Option<PublishPlan>,
    /// Its subscription, if any.
    pub subscribe: Option<SubscribePlan>,
}

/// Everything a run needs, shared by the executors.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Subcommand name, for the report.
    pub scenario: &'static str,
    /// The clients, by global index.
    pub clients: Vec<ClientPlan>,
    /// Protocol version of every connection.
    pub version: ProtocolVersion,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// Clean Start.
    pub clean_start: bool,
    /// Session Expiry Interval (5.0).
    pub session_expiry: Option<u32>,
    /// With `--tls`: the TLS client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Publish window per connection.
    pub inflight: u16,
    /// Executors.
    pub cores: usize,
    /// Gap between two connection starts over all executors.
    pub connect_interval: Duration,
    /// How long connecting everyone may take.
    pub connect_timeout: Duration,
    /// Clock of the timestamps.
    pub clock: ClockSource,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size.
    pub payload: usize,
    /// Interval between two messages of one publisher; `None`: as fast as
    /// the window and the socket allow.
    pub interval: Option<Duration>,
    /// Publishing time, or holding time without publishers.
    pub duration: Option<Duration>,
    /// Messages per publisher.
    pub count: Option<u64>,
    /// Publishers stop this long after the start even when they are behind
    /// their schedule (`--find-max-rate`: a run that far behind is not
    /// sustained, and sending its backlog would only take time).
    pub give_up: Option<Duration>,
    /// Longest wait for messages in flight after the publishers finish.
    pub drain: Duration,
    /// The drain ends once nothing arrived for this long.
    pub drain_idle: Duration,
    /// Subscribers stop reading this long when publishing starts.
    pub stall: Option<Duration>,
    /// Subscriber SO_RCVBUF.
    pub rcvbuf: Option<usize>,
    /// Reconnection storms (`storm`).
    pub cycles: u32,
    /// `--find-max-rate`: search the highest sustained rate instead of one
    /// run.
    pub search: Option<Search>,
    /// `sub --receive`: stop holding once the subscribers received this
    /// many messages.
    pub receive: Option<u64>,
    /// Output settings.
    pub output: OutputOpts,
}

impl Plan {
    /// Publishing clients.
    pub fn publishers(&self) -> usize {
        self.clients.iter().filter(|c| c.publish.is_some()).count()
    }

    /// Every publisher sends `rate` messages per second, the publishers
    /// spread over one interval instead of bursting.
    pub fn set_rate(&mut self, rate: f64) {
        let publishers = self.publishers();
        let interval = Duration::from_secs_f64(1.0 / rate);
        self.interval = Some(interval);
        let mut k = 0u32;
        for client in &mut self.clients {
            if let Some(publish) = &mut client.publish {
                publish.offset = interval.mul_f64(f64::from(k) / publishers as f64);
                k += 1;
            }
        }
    }

    /// Subscribing clients.
    pub fn subscribers(&self) -> usize {
        self.clients.iter().filter(|c| c.subscribe.is_some()).count()
    }

    /// Deliveries every published message should make, when that is the
    /// same for every publisher (then `sent` times it is what the
    /// subscribers should have received, and the drain can end as soon as
    /// it arrived); `None` when publishers differ or the subscribers cannot
    /// know (`sub` on its own).
    pub fn deliveries_per_message(&self) -> Option<u64> {
        let mut all = 0;
        let mut shared = false;
        let mut by_publisher = std::collections::HashMap::new();
        for sub in self.clients.iter().filter_map(|c| c.subscribe.as_ref()) {
            match sub.expect {
                Expect::All => all += 1,
                Expect::Shared => shared = true,
                Expect::One(publisher) => *by_publisher.entry(publisher).or_insert(0u64) += 1,
                Expect::Gaps => return None,
            }
        }
        let mut per_publisher = self.clients.iter().filter_map(|c| c.publish.as_ref()).map(|p| {
            all + u64::from(shared) + by_publisher.get(&p.publisher).copied().unwrap_or(0)
        });
        let first = per_publisher.next()?;
        per_publisher.all(|d| d == first).then_some(first)
    }

    /// Builds the plan of a subcommand.
    pub fn from_command(command: Command) -> anyhow::Result<Self> {
        match command {
            Command::Merge(_) => anyhow::bail!("merge runs no clients"),
            Command::Conn(args) => {
                let mut plan = base("conn", &args.connection, None, None, args.output)?;
                plan.duration = Some(args.duration);
                plan.clients = clients(&args.connection, args.clients, |_| (None, None))?;
                Ok(plan)
            }
            Command::Storm(args) => {
                let mut plan = base("storm", &args.connection, None, None, args.output)?;
                plan.duration = Some(args.duration);
                plan.cycles = args.cycles;
                plan.clients = clients(&args.connection, args.clients, |_| (None, None))?;
                Ok(plan)
            }
            Command::Pub(args) => {
                let mut plan = base("pub", &args.connection, Some(&args.load), None, args.output)?;
                let template = &args.load.topic;
                plan.clients = clients(&args.connection, args.clients, |i| {
                    (Some((i, template_topic(template, i))), None)
                })?;
                finish_load(plan, &args.load)
            }
            Command::Sub(args) => {
                let mut plan =
                    base("sub", &args.connection, None, Some(&args.subscriber), args.output)?;
                plan.qos = qos(args.qos);
                plan.duration = Some(args.duration);
                plan.receive = args.receive;
                let filter = TopicFilter::new(args.filter.clone())
                    .map_err(|e| anyhow::anyhow!("--filter {}: {e:?}", args.filter))?;
                plan.clients = clients(&args.connection, args.clients, |_| {
                    (None, Some(SubscribePlan { filter: filter.clone(), expect: Expect::Gaps }))
                })?;
                Ok(plan)
            }
            Command::FanIn(args) => {
                let mut plan = base(
                    "fan-in",
                    &args.connection,
                    Some(&args.load),
                    Some(&args.subscriber),
                    args.output,
                )?;
                let filter = wildcard_filter(&args.load.topic)?;
                let (filter, expect) = match &args.share {
                    Some(group) => (
                        TopicFilter::new(format!("$share/{group}/{filter}"))
                            .map_err(|e| anyhow::anyhow!("--share {group}: {e:?}"))?,
                        Expect::Shared,
                    ),
                    None => (filter, Expect::All),
                };
                let template = &args.load.topic;
                let publishers = args.publishers;
                plan.clients =
                    clients(&args.connection, args.publishers + args.subscribers, |i| {
                        if i < publishers {
                            (Some((i, template_topic(template, i))), None)
                        } else {
                            let sub =
                                SubscribePlan { filter: filter.clone(), expect: expect.clone() };
                            (None, Some(sub))
                        }
                    })?;
                finish_load(plan, &args.load)
            }
            Command::FanOut(args) => {
                let mut plan = base(
                    "fan-out",
                    &args.connection,
                    Some(&args.load),
                    Some(&args.subscriber),
                    args.output,
                )?;
                let filter = wildcard_filter(&args.load.topic)?;
                let template = &args.load.topic;
                let publishers = args.publishers;
                plan.clients =
                    clients(&args.connection, args.publishers + args.subscribers, |i| {
                        if i < publishers {
                            (Some((i, template_topic(template, i))), None)
                        } else {
                            let sub = SubscribePlan { filter: filter.clone(), expect: Expect::All };
                            (None, Some(sub))
                        }
                    })?;
                finish_load(plan, &args.load)
            }
            Command::P2p(args) => {
                let mut plan = base(
                    "p2p",
                    &args.connection,
                    Some(&args.load),
                    Some(&args.subscriber),
                    args.output,
                )?;
                let template = &args.load.topic;
                if !template.contains("%i") {
                    bail!("p2p needs %i in --topic so that every client has its own topic");
                }
                let n = args.clients;
                plan.clients = clients(&args.connection, n, |i| {
                    let peer = (i + 1) % n;
                    let filter = TopicFilter::new(template.replace("%i", &peer.to_string()))
                        .expect("a valid topic name is a valid filter");
                    let sub = SubscribePlan { filter, expect: Expect::One(peer as u32) };
                    (Some((i, template_topic(template, i))), Some(sub))
                })?;
                finish_load(plan, &args.load)
            }
        }
    }
}

fn qos(value: u8) -> QoS {
    QoS::from_u8(value).unwrap_or(QoS::AtMostOnce)
}

/// The settings every scenario shares.
fn base(
    scenario: &'static str,
    conn: &ConnectionOpts,
    load: Option<&LoadOpts>,
    sub: Option<&SubscriberOpts>,
    output: OutputOpts,
) -> anyhow::Result<Plan> {
    let allowed = allowed_cpus().len().max(1);
    let cores = conn.cores.unwrap_or(allowed);
    if cores == 0 || cores > allowed {
        bail!("--cores {cores}: this process may use {allowed} core(s)");
    }
    if conn.session_expiry.is_some() && conn.mqtt_version != MqttVersion::V5 {
        bail!("--session-expiry needs --mqtt-version 5");
    }
    if !(0.0..=100.0).contains(&output.max_loss) {
        bail!("--max-loss is a percentage (0 to 100)");
    }
    if load.is_some_and(|l| l.drain_idle.is_zero()) {
        bail!("--drain-idle 0 would end every drain at once: give a duration (default 500ms)");
    }
    let connect_interval = if conn.connect_rate > 0.0 {
        Duration::from_secs_f64(1.0 / conn.connect_rate)
    } else {
        Duration::ZERO
    };
    Ok(Plan {
        scenario,
        clients: Vec::new(),
        version: match conn.mqtt_version {
            MqttVersion::V311 => ProtocolVersion::V3_1_1,
            MqttVersion::V5 => ProtocolVersion::V5,
        },
        keep_alive: conn.keepalive,
        clean_start: conn.clean_start,
        session_expiry: conn.session_expiry,
        tls: conn
            .cafile
            .as_deref()
            .filter(|_| conn.tls)
            .map(crate::tls::client_config)
            .transpose()?,
        username: conn.username.clone(),
        password: conn.password.clone(),
        inflight: conn.inflight.max(1),
        cores,
        connect_interval,
        connect_timeout: conn.connect_timeout,
        clock: conn.clock,
        qos: load.map_or(QoS::AtMostOnce, |l| qos(l.qos)),
        payload: load.map_or(HEADER_LEN, |l| l.payload),
        interval: None,
        duration: None,
        count: None,
        give_up: None,
        drain: load.map_or(Duration::from_secs(5), |l| l.drain),
        drain_idle: load.map_or(Duration::from_millis(500), |l| l.drain_idle),
        stall: sub.and_then(|s| s.stall),
        rcvbuf: sub.and_then(|s| s.rcvbuf),
        cycles: 0,
        receive: None,
        search: None,
        output,
    })
}

/// The TLS server name of `HOST:PORT` (a DNS name or an IP address).
fn server_name(host: &str) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(name.to_owned())
        .with_context(|| format!("--host {host}: not a TLS server name"))
}

/// What `--find-max-rate` searches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Search {
    /// First total rate tried, messages per second.
    pub start: f64,
    /// Highest total rate tried.
    pub limit: f64,
    /// Lowest total rate tried when `start` is not sustained (1/1024 of
    /// it, ten halvings, but at least 1 msg/s).
    pub floor: f64,
    /// Highest p99 end-to-end latency of a sustained rate.
    pub max_p99_us: u64,
}

/// Rate, duration and count of a publishing scenario.
fn finish_load(mut plan: Plan, load: &LoadOpts) -> anyhow::Result<Plan> {
    if load.payload < HEADER_LEN {
        bail!("--payload {}: at least {HEADER_LEN} bytes (timestamp and sequence)", load.payload);
    }
    let publishers = plan.publishers();
    if publishers as u64 > u64::from(MAX_PUBLISHER_ID) + 1 {
        bail!("at most {} publishers", u64::from(MAX_PUBLISHER_ID) + 1);
    }
    let per_client = match (load.rate, load.total_rate) {
        (Some(rate), _) => Some(rate),
        (None, Some(total)) => Some(total / publishers.max(1) as f64),
        (None, None) => None,
    };
    if let Some(rate) = per_client {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate / --total-rate must be positive");
        }
        plan.set_rate(rate);
    }
    if load.find_max_rate {
        let start = load.total_rate.unwrap_or(1000.0);
        plan.search = Some(Search {
            start,
            limit: load.rate_limit,
            floor: (start / 1024.0).max(1.0).min(start),
            max_p99_us: load.max_p99.as_micros() as u64,
        });
    }
    plan.duration = load.duration;
    plan.count = load.count;
    if plan.duration.is_none() && plan.count.is_none() {
        plan.duration = Some(Duration::from_secs(10));
    }
    Ok(plan)
}

/// The topic of publisher `i`.
fn template_topic(template: &str, i: usize) -> TopicName {
    TopicName::new(template.replace("%i", &i.to_string()))
        .unwrap_or_else(|e| panic!("checked template {template:?}: {e:?}"))
}

/// The filter matching every topic of `template`: `%i` as a whole level
/// becomes `+`.
fn wildcard_filter(template: &str) -> anyhow::Result<TopicFilter> {
    TopicName::new(template.replace("%i", "0"))
        .map_err(|e| anyhow::anyhow!("--topic {template}: {e:?}"))?;
    let levels: Vec<&str> =
        template.split('/').map(|level| if level == "%i" { "+" } else { level }).collect();
    if levels.iter().any(|level| level.contains("%i")) {
        bail!("--topic {template}: %i must be a whole topic level (like a/%i/b)");
    }
    TopicFilter::new(levels.join("/")).map_err(|e| anyhow::anyhow!("--topic {template}: {e:?}"))
}

/// `n` clients spread over the targets and source addresses; `role(i)`
/// gives client `i` its publishing (index, topic) and subscription.
fn clients(
    conn: &ConnectionOpts,
    n: usize,
    mut role: impl FnMut(usize) -> (Option<(usize, TopicName)>, Option<SubscribePlan>),
) -> anyhow::Result<Vec<ClientPlan>> {
    if n == 0 {
        bail!("no clients");
    }
    let mut targets = Vec::new();
    for host in &conn.hosts {
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("--host {host}"))?
            .next()
            .with_context(|| format!("--host {host}: no address"))?;
        let server_name = conn.tls.then(|| server_name(host)).transpose()?;
        targets.push((addr, server_name));
    }
    let sources = conn.ifaddr.as_ref().map(|a| &a.0[..]).unwrap_or(&[]);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (publish, subscribe) = role(i);
        out.push(ClientPlan {
            client_id: format!("{}-{i}", conn.client_id_prefix),
            target: targets[i % targets.len()].0,
            server_name: targets[i % targets.len()].1.clone(),
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            publish: publish.map(|(k, topic)| PublishPlan {
                publisher: k as u32,
                topic,
                offset: Duration::ZERO,
            }),
            subscribe,
        });
    }
    Ok(out)
}

/// The CPUs this process may run on (its affinity mask), which glommio's
/// placement does not consult by itself.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads a bit of the initialised set.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let mut argv = vec!["ringmq-bench"];
        argv.extend_from_slice(args);
        Plan::from_command(Cli::try_parse_from(argv).unwrap().command)
    }

    #[test]
    fn fan_out_roles_and_filter() {
        let plan =
            plan(&["fan-out", "--publishers", "2", "--subscribers", "3", "--rate", "10"]).unwrap();
        assert_eq!((plan.publishers(), plan.subscribers()), (2, 3));
        assert_eq!(plan.clients[1].publish.as_ref().unwrap().topic.as_str(), "ringmq-bench/1");
        assert_eq!(
            plan.clients[1].publish.as_ref().unwrap().offset,
            Duration::from_millis(50),
            "publishers spread over the interval"
        );
        let sub = plan.clients[4].subscribe.as_ref().unwrap();
        assert_eq!((sub.filter.as_str(), &sub.expect), ("ringmq-bench/+", &Expect::All));
        assert_eq!(plan.interval, Some(Duration::from_millis(100)));
        assert_eq!(plan.duration, Some(Duration::from_secs(10)));
    }

    #[test]
    fn fan_in_share_and_total_rate() {
        let plan = plan(&[
            "fan-in",
            "--publishers",
            "4",
            "--subscribers",
            "2",
            "--share",
            "g",
            "--total-rate",
            "400",
            "--count",
            "5",
        ])
        .unwrap();
        let sub = plan.clients[5].subscribe.as_ref().unwrap();
        assert_eq!(
            (sub.filter.as_str(), &sub.expect),
            ("$share/g/ringmq-bench/+", &Expect::Shared)
        );
        assert_eq!(plan.interval, Some(Duration::from_millis(10)));
        assert_eq!((plan.count, plan.duration), (Some(5), None));
    }

    #[test]
    fn p2p_peers_form_a_ring() {
        let plan = plan(&["p2p", "--clients", "3", "--topic", "t/%i/x"]).unwrap();
        let sub = plan.clients[2].subscribe.as_ref().unwrap();
        assert_eq!((sub.filter.as_str(), &sub.expect), ("t/0/x", &Expect::One(0)));
        assert_eq!(plan.clients[2].publish.as_ref().unwrap().topic.as_str(), "t/2/x");
    }

    #[test]
    fn hosts_and_sources_are_taken_in_turn() {
        let plan = plan(&[
            "conn",
            "--clients",
            "5",
            "--host",
            "127.0.0.1:1",
            "--host",
            "127.0.0.1:2",
            "--ifaddr",
            "127.0.0.2-127.0.0.4",
        ])
        .unwrap();
        let ports: Vec<u16> = plan.clients.iter().map(|c| c.target.port()).collect();
        assert_eq!(ports, [1, 2, 1, 2, 1]);
        assert_eq!(plan.clients[3].source, Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(plan.clients[3].client_id, "ringmq-bench-3");
    }

    #[test]
    fn deliveries_per_message_by_scenario() {
        let d = |args: &[&str]| plan(args).unwrap().deliveries_per_message();
        assert_eq!(d(&["fan-out", "--publishers", "2", "--subscribers", "3"]), Some(3));
        assert_eq!(d(&["fan-in", "--publishers", "5", "--subscribers", "2"]), Some(2));
        assert_eq!(
            d(&["fan-in", "--publishers", "5", "--subscribers", "4", "--share", "g"]),
            Some(1)
        );
        assert_eq!(d(&["p2p", "--clients", "4"]), Some(1));
        assert_eq!(d(&["pub", "--clients", "2"]), Some(0));
        assert_eq!(d(&["sub", "--clients", "2"]), None);
        assert_eq!(d(&["conn", "--clients", "2"]), None);
        // A p2p ring of one: the client hears itself.
        assert_eq!(d(&["p2p", "--clients", "1"]), Some(1));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(plan(&["fan-in", "--drain-idle", "0s"]).is_err());
        assert!(plan(&["pub", "--payload", "15"]).is_err());
        assert!(plan(&["fan-out", "--topic", "a/x%i"]).is_err());
        assert!(plan(&["p2p", "--topic", "fixed"]).is_err());
        assert!(plan(&["conn", "--session-expiry", "10"]).is_err());
        assert!(plan(&["conn", "--cores", "100000"]).is_err());
        assert!(plan(&["pub", "--rate", "0"]).is_err());
    }
}
