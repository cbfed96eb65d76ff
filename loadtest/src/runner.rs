//! Runs a [`Plan`]: one pinned glommio executor per core, each driving its
//! share of the clients (client `i` lives on executor `i % cores`), and a
//! coordinating thread that moves every executor through the phases of the
//! run and draws the live progress line.
//!
//! Executors share nothing on the hot path. Each one owns its histograms
//! and stream trackers; the only cross-thread traffic is a few relaxed
//! atomic counters per executor (read once a second for the progress line
//! and the phase decisions) and one interval histogram per executor per
//! second over an `mpsc` channel.

use crate::client::{Client, ClientConfig, ClientError, Event};
use crate::payload::{Clock, Header, PayloadWriter};
use crate::plan::{allowed_cpus, Plan, PublishPlan};
use crate::stats::{
    latency_histogram, ExecResult, Percentiles, RunResult, Second, SubscriberResult,
};
use crate::tls::Stream;
use crate::tracker::{add_at, Arrival, StreamMap};
use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use ringmq::protocol::{QoS, ReasonCode, TopicName};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Messages queued per pass of a publisher before the bytes are written.
const MAX_BATCH: usize = 1024;
/// A publisher whose messages are due more often than this sends them in
/// bursts this far apart, each message still stamped with its own intended
/// time (so the wait shows in the latency). Without it a publisher at
/// 125,000 msg/s wakes its executor (a timer, a park, a write) for every
/// few messages: in `fan-out` to 8 subscribers through ringmq on one core
/// the granule cut the bench's CPU time by about a quarter, and the broker
/// gets fewer, larger writes.
const PUBLISH_GRANULE: Duration = Duration::from_micros(100);
/// First read size of a connection; doubled while reads fill it.
const MIN_READ: usize = 512;
/// Largest read size.
const MAX_READ: usize = 256 * 1024;
/// Entries of each io_uring ring (glommio's default is 128). Every idle
/// connection has a poll request pending in the kernel, and the kernel
/// finds the one to cancel (glommio cancels its timeout at every wake-up)
/// by walking one bucket of a table sized from the ring: with 128 entries,
/// 8 buckets. 4096 gives the largest table; holding 19,000 idle
/// connections then costs 4% of a core instead of 30%.
const RING_DEPTH: usize = 4096;
/// RLIMIT_MEMLOCK is small on many hosts; glommio's default 10 MiB per
/// executor would not fit.
const IO_MEMORY: usize = 512 * 1024;

/// The phases of a run, in order; set by the coordinator, followed by the
/// executors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// Clients connect and subscribe; nobody publishes.
    Connecting = 0,
    /// Publishers publish (or connections are held).
    Running = 1,
    /// Publishers are done; subscribers receive what is still on its way.
    Draining = 2,
    /// Everyone disconnects.
    Stopping = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Connecting,
            1 => Self::Running,
            2 => Self::Draining,
            _ => Self::Stopping,
        }
    }
}

/// Live counters of one executor, written only by it; on their own cache
/// lines so that executors do not contend.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Live {
    /// Messages published.
    sent: AtomicU64,
    /// Messages received.
    received: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
}

/// What the coordinator and the executors share.
#[derive(Debug)]
struct Control {
    /// The current [`Phase`].
    phase: AtomicU8,
    /// The current reconnection storm (`storm`); 0 before the first.
    cycle: AtomicU32,
    /// When publishing started.
    start: OnceLock<Instant>,
    /// (client, cycle) pairs settled: connected and subscribed, or failed
    /// for good (which settles its remaining cycles too).
    settled: AtomicUsize,
    /// Publishers that finished (or failed).
    publishers_done: AtomicUsize,
    /// One per executor.
    live: Vec<Live>,
}

/// One second of one executor's measurements.
#[derive(Debug)]
struct Tick {
    /// The executor.
    executor: usize,
    /// Seconds since the start of publishing.
    second: u64,
    /// Messages sent in that second.
    sent: u64,
    /// Messages received in that second.
    received: u64,
    /// Their latency.
    latency: Histogram<u64>,
}

/// What an executor's ticker tells the coordinator, in order: its seconds
/// from 0, then that it is done.
#[derive(Debug)]
enum TickerMessage {
    /// One more second.
    Tick(Tick),
    /// No more seconds from this executor.
    Done {
        /// The executor.
        executor: usize,
    },
}

/// Runs the plan to the end.
pub fn run(plan: Plan) -> anyhow::Result<RunResult> {
    check_io_uring()?;
    // One descriptor per connection, and some for glommio and the outputs.
    raise_fd_limit(plan.clients.len() as u64 + 64)?;
    let plan = Arc::new(plan);
    let cores = plan.cores;
    let control = Arc::new(Control {
        phase: AtomicU8::new(Phase::Connecting as u8),
        cycle: AtomicU32::new(0),
        start: OnceLock::new(),
        settled: AtomicUsize::new(0),
        publishers_done: AtomicUsize::new(0),
        live: (0..cores).map(|_| Live::default()).collect(),
    });
    let (tick_tx, tick_rx) = mpsc::channel::<TickerMessage>();
    let clock = Clock::new(plan.clock);
    let allowed = allowed_cpus();
    let cpus = CpuSet::online()
        .map_err(|e| anyhow::anyhow!("reading the online CPUs: {e}"))?
        .filter(|location| allowed.contains(&location.cpu));
    let shard_counter = Arc::new(AtomicUsize::new(0));
    let handles = {
        let (plan, control) = (plan.clone(), control.clone());
        LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(cores, Some(cpus)))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .on_all_shards(move || {
                let shard = shard_counter.fetch_add(1, Relaxed);
                let exec = Rc::new(Exec {
                    shard,
                    plan,
                    control,
                    clock,
                    phase: Cell::new(Phase::Connecting),
                    cycle: Cell::new(0),
                    start: Cell::new(None),
                    notifiers: RefCell::new(Vec::new()),
                    finished: Cell::new(false),
                    stats: RefCell::new(ExecResult::new()),
                    interval: RefCell::new(latency_histogram()),
                    counters: Cell::new((0, 0)),
                });
                run_executor(exec, tick_tx)
            })
            .map_err(|e| anyhow::anyhow!("starting the executors: {e}"))?
    };
    let mut coordinator = Coordinator {
        plan: &plan,
        control: &control,
        progress: Progress::new(plan.output.quiet),
        ticks: &tick_rx,
        timeline: Timeline::new(cores),
    };
    let (elapsed, connect_elapsed) = coordinator.run();
    let mut executors = Vec::with_capacity(cores);
    for result in handles.join_all() {
        executors.push(result.map_err(|e| anyhow::anyhow!("executor failed: {e}"))?);
    }
    // The executors send their last ticks as they finish.
    coordinator.collect();
    let timeline = coordinator.timeline.finish();
    Ok(RunResult { executors, timeline, elapsed, connect_elapsed })
}

/// glommio needs io_uring and panics with a misleading message without it.
fn check_io_uring() -> anyhow::Result<()> {
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if value.trim() != "0" {
            anyhow::bail!(
                "io_uring is disabled (kernel.io_uring_disabled = {}); ringmq-bench needs it: \
                 sysctl -w kernel.io_uring_disabled=0",
                value.trim()
            );
        }
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to `need` descriptors if it is lower,
/// within the hard limit; fails when the hard limit is too low (failing
/// every connection past it with "too many open files" would waste the
/// run).
fn raise_fd_limit(need: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(());
    }
    if limit.rlim_cur >= need {
        return Ok(());
    }
    if limit.rlim_max < need {
        anyhow::bail!(
            "{need} file descriptors are needed but RLIMIT_NOFILE is {} (hard limit {}): \
             raise it, e.g. `ulimit -n {need}` as root",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
    let raised = libc::rlimit { rlim_cur: need, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        anyhow::bail!("raising RLIMIT_NOFILE to {need}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// The coordinating thread: phases, progress line, timeline.
struct Coordinator<'a> {
    /// The run.
    plan: &'a Plan,
    /// Shared with the executors.
    control: &'a Control,
    /// The live line.
    progress: Progress,
    /// The executors' ticks.
    ticks: &'a mpsc::Receiver<TickerMessage>,
    /// The seconds so far.
    timeline: Timeline,
}

impl Coordinator<'_> {
    /// Waits 10 ms (at most `until`), then updates the progress line and
    /// takes in the executors' ticks.
    fn pause(&mut self, what: &str, until: Option<Instant>) {
        let step = Duration::from_millis(10);
        let step =
            until.map_or(step, |until| step.min(until.saturating_duration_since(Instant::now())));
        std::thread::sleep(step);
        self.progress.update(self.control, self.plan, what);
        self.collect();
    }

    fn collect(&mut self) {
        while let Ok(message) = self.ticks.try_recv() {
            self.timeline.handle_message(message);
        }
    }

    /// Until every client of storm `cycle` settled, or the connect timeout.
    fn settle(&mut self, cycle: usize) {
        let deadline = Instant::now() + self.plan.connect_timeout;
        let target = self.plan.clients.len() * (cycle + 1);
        while self.control.settled.load(Relaxed) < target && Instant::now() < deadline {
            self.pause("connecting", None);
        }
    }

    /// For `duration`, or until `sub --receive`'s count arrived.
    fn hold(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        let enough = self.plan.receive.unwrap_or(u64::MAX);
        while Instant::now() < end && received(self.control) < enough {
            self.pause("holding", Some(end));
        }
    }

    /// Runs the phases; returns the publishing (or holding) time and the
    /// time to connect everyone.
    fn run(&mut self) -> (Duration, Duration) {
        let (plan, control) = (self.plan, self.control);
        let publishers = plan.publishers();
        let began = Instant::now();
        self.settle(0);
        let connect_elapsed = began.elapsed();
        let start = Instant::now();
        control.start.set(start).expect("start is set once");
        control.phase.store(Phase::Running as u8, Relaxed);

        let elapsed;
        if publishers > 0 {
            // Publishers stop by themselves (count or duration); a safety
            // margin stops a run whose broker stopped answering.
            let limit = plan.duration.map(|d| start + d + plan.drain + Duration::from_secs(30));
            while control.publishers_done.load(Relaxed) < publishers {
                if limit.is_some_and(|limit| Instant::now() > limit) {
                    break;
                }
                self.pause("publishing", None);
            }
            elapsed = start.elapsed();
            control.phase.store(Phase::Draining as u8, Relaxed);
            // Drain until everything arrived, nothing arrived for
            // --drain-idle, or --drain ends.
            let sent: u64 = control.live.iter().map(|l| l.sent.load(Relaxed)).sum();
            let mut drain = Drain::new(
                Instant::now(),
                plan,
                plan.deliveries_per_message().map(|d| sent * d),
                received(control),
            );
            while !drain.over(Instant::now(), received(control)) {
                self.pause("draining", Some(drain.end));
            }
        } else {
            let hold = plan.duration.unwrap_or_default();
            for cycle in 1..=plan.cycles as usize {
                self.hold(hold);
                control.cycle.store(cycle as u32, Relaxed);
                self.settle(cycle);
            }
            self.hold(hold);
            elapsed = start.elapsed();
        }
        control.phase.store(Phase::Stopping as u8, Relaxed);
        self.progress.finish();
        (elapsed, connect_elapsed)
    }
}

/// When the drain after publishing ends: once every expected delivery
/// arrived, once nothing arrived for the idle time, or at the end of the
/// drain time, whichever comes first.
#[derive(Debug)]
struct Drain {
    /// The latest end (`--drain` after it began).
    end: Instant,
    /// `--drain-idle`.
    idle: Duration,
    /// Deliveries the subscribers should have in all, when known.
    expected: Option<u64>,
    /// Received when last looked at, and when that count last changed.
    last: (u64, Instant),
}

impl Drain {
    fn new(now: Instant, plan: &Plan, expected: Option<u64>, received: u64) -> Self {
        Self { end: now + plan.drain, idle: plan.drain_idle, expected, last: (received, now) }
    }

    /// Whether the drain is over at `now`, with `received` messages so far.
    fn over(&mut self, now: Instant, received: u64) -> bool {
        if received != self.last.0 {
            self.last = (received, now);
        }
        now >= self.end
            || now.duration_since(self.last.1) >= self.idle
            || self.expected.is_some_and(|expected| received >= expected)
    }
}

fn received(control: &Control) -> u64 {
    control.live.iter().map(|l| l.received.load(Relaxed)).sum()
}

/// The per-second timeline, merged over the executors as their ticks
/// arrive. A second is summarised, and its histogram freed, as soon as
/// every executor has reported it or is done: a long run keeps a few
/// numbers per second, not a histogram (about 190 KB) per second.
struct Timeline {
    /// Per executor, the next second it will report; `None` once done.
    next: Vec<Option<u64>>,
    /// Summarised seconds.
    done: BTreeMap<u64, Second>,
    /// Seconds some executor may still report, merged so far.
    pending: BTreeMap<u64, Tick>,
}

impl Timeline {
    fn new(executors: usize) -> Self {
        Self { next: vec![Some(0); executors], done: BTreeMap::new(), pending: BTreeMap::new() }
    }

    fn handle_message(&mut self, message: TickerMessage) {
        match message {
            TickerMessage::Tick(tick) => {
                self.next[tick.executor] = Some(tick.second + 1);
                match self.pending.entry(tick.second) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(tick);
                    }
                    std::collections::btree_map::Entry::Occupied(slot) => {
                        let merged = slot.into_mut();
                        merged.sent += tick.sent;
                        merged.received += tick.received;
                        merged.latency.add(&tick.latency).expect("same histogram bounds");
                    }
                }
            }
            TickerMessage::Done { executor } => self.next[executor] = None,
        }
        // Every executor reports its seconds in order.
        let complete_below = self.next.iter().flatten().min().copied().unwrap_or(u64::MAX);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= complete_below {
                break;
            }
            let merged = entry.remove();
            self.done.insert(merged.second, Self::summary(&merged));
        }
    }

    fn summary(tick: &Tick) -> Second {
        Second {
            second: tick.second,
            sent: tick.sent,
            received: tick.received,
            // Filled in by the report, which knows what was sent.
            lost: 0,
            latency_us: Percentiles::of(&tick.latency),
        }
    }

    /// Every second from 0 to the last reported, empty where no executor
    /// reported (executors that finished early stop reporting).
    fn finish(mut self) -> Vec<Second> {
        for (second, merged) in std::mem::take(&mut self.pending) {
            self.done.insert(second, Self::summary(&merged));
        }
        let end = self.done.keys().next_back().map_or(0, |&last| last + 1);
        (0..end)
            .map(|second| {
                self.done.remove(&second).unwrap_or(Second {
                    second,
                    sent: 0,
                    received: 0,
                    lost: 0,
                    latency_us: Percentiles::default(),
                })
            })
            .collect()
    }
}

/// The live line: once a second, current rates from the executors'
/// counters.
struct Progress {
    /// The indicatif line; hidden when not on a terminal or with --quiet.
    bar: ProgressBar,
    /// Counters at the last update.
    last: Cell<(Instant, u64, u64)>,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
        bar.set_style(ProgressStyle::with_template("{elapsed:>4} {msg}").expect("valid template"));
        Self { bar, last: Cell::new((Instant::now(), 0, 0)) }
    }

    fn update(&self, control: &Control, plan: &Plan, what: &str) {
        let (at, sent0, received0) = self.last.get();
        let dt = at.elapsed();
        if dt < Duration::from_secs(1) {
            return;
        }
        let sent: u64 = control.live.iter().map(|l| l.sent.load(Relaxed)).sum();
        let recv = received(control);
        let open: u64 = control.live.iter().map(|l| l.open.load(Relaxed)).sum();
        let secs = dt.as_secs_f64();
        self.bar.set_message(format!(
            "{what}: conns {open}/{} | sent {:.0}/s ({sent}) | recv {:.0}/s ({recv})",
            plan.clients.len(),
            (sent - sent0) as f64 / secs,
            (recv - received0) as f64 / secs,
        ));
        self.bar.tick();
        self.last.set((Instant::now(), sent, recv));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// What one executor owns.
#[derive(Debug)]
struct Exec {
    /// Its index.
    shard: usize,
    /// The run.
    plan: Arc<Plan>,
    /// Shared with the coordinator.
    control: Arc<Control>,
    /// Timestamp clock.
    clock: Clock,
    /// The phase as last seen by the watcher.
    phase: Cell<Phase>,
    /// The storm cycle as last seen by the watcher.
    cycle: Cell<u32>,
    /// Start of publishing, once known.
    start: Cell<Option<Instant>>,
    /// The connections' wake-ups, to tell them of a phase change.
    notifiers: RefCell<Vec<Weak<Notify>>>,
    /// Every client task has ended.
    finished: Cell<bool>,
    /// Everything measured.
    stats: RefCell<ExecResult>,
    /// Latency of the current second.
    interval: RefCell<Histogram<u64>>,
    /// (sent, received) at the last tick.
    counters: Cell<(u64, u64)>,
}

impl Exec {
    fn live(&self) -> &Live {
        &self.control.live[self.shard]
    }

    fn settle(&self, cycles: u32) {
        self.control.settled.fetch_add(cycles as usize, Relaxed);
    }

    fn record_ack(&self, reason: ReasonCode) {
        let mut stats = self.stats.borrow_mut();
        if reason.is_error() {
            *stats.refused.entry(format!("{reason:?}")).or_default() += 1;
        } else {
            stats.acked += 1;
        }
    }

    fn count(map: &mut BTreeMap<String, u64>, reason: String) {
        *map.entry(reason).or_default() += 1;
    }
}

/// Records the messages of one read: everything it needs, borrowed once
/// per read instead of once per message.
struct Recorder<'a> {
    /// The executor's counters.
    stats: &'a mut ExecResult,
    /// Latency of the current second (merged into the run's histogram
    /// once a second by [`tick`]).
    interval: &'a mut Histogram<u64>,
    /// The connection's publisher streams.
    streams: &'a mut StreamMap,
    /// When the read completed, nanoseconds of the payload clock.
    now_ns: u64,
    /// When publishing started, nanoseconds of the payload clock; `None`
    /// before. Latency counts from then on.
    start_ns: Option<u64>,
}

impl Recorder<'_> {
    fn record(&mut self, qos: QoS, payload: &[u8]) {
        let q = qos as usize;
        self.stats.received[q] += 1;
        let Some(header) = Header::parse(payload).filter(|h| h.is_plausible(self.now_ns)) else {
            self.stats.foreign += 1;
            return;
        };
        if self.start_ns.is_some() {
            let latency_us = self.now_ns.saturating_sub(header.sent_ns) / 1000;
            self.interval.saturating_record(latency_us);
        }
        let second =
            header.sent_ns.saturating_sub(self.start_ns.unwrap_or(u64::MAX)) / 1_000_000_000;
        let stream = self.streams.entry(header.publisher).or_default();
        match stream.handle_arrival(header.seq, second) {
            Arrival::InOrder => {}
            Arrival::Duplicate => self.stats.duplicates[q] += 1,
            Arrival::OutOfOrder | Arrival::TooLate => self.stats.out_of_order[q] += 1,
        }
    }
}

/// The body of one executor.
async fn run_executor(exec: Rc<Exec>, ticks: mpsc::Sender<TickerMessage>) -> ExecResult {
    let watcher = glommio::spawn_local(watch(exec.clone()));
    let ticker = glommio::spawn_local(tick(exec.clone(), ticks));
    let plan = exec.plan.clone();
    let mut tasks = Vec::new();
    for index in (exec.shard..plan.clients.len()).step_by(plan.cores) {
        tasks.push(glommio::spawn_local(run_client(exec.clone(), index)));
    }
    for task in tasks {
        task.await;
    }
    exec.finished.set(true);
    watcher.await;
    ticker.await;
    exec.stats.replace(ExecResult::new())
}

/// Follows the coordinator's phase and storm cycle and wakes the
/// connections when they change.
async fn watch(exec: Rc<Exec>) {
    while !exec.finished.get() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
        let phase = Phase::from_u8(exec.control.phase.load(Relaxed));
        let cycle = exec.control.cycle.load(Relaxed);
        if exec.start.get().is_none() {
            exec.start.set(exec.control.start.get().copied());
        }
        if phase != exec.phase.get() || cycle != exec.cycle.get() {
            exec.phase.set(phase);
            exec.cycle.set(cycle);
            let mut notifiers = exec.notifiers.borrow_mut();
            notifiers.retain(|weak| match weak.upgrade() {
                Some(notify) => {
                    notify.notify();
                    true
                }
                None => false,
            });
        }
    }
}

/// Sends one [`Tick`] per second of publishing, and a last one at the end.
async fn tick(exec: Rc<Exec>, ticks: mpsc::Sender<TickerMessage>) {
    let executor = exec.shard;
    let start = loop {
        if let Some(start) = exec.start.get() {
            break start;
        }
        if exec.finished.get() {
            let _ = ticks.send(TickerMessage::Done { executor });
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    };
    let mut second = 0u64;
    loop {
        let due = start + Duration::from_secs(second + 1);
        while Instant::now() < due && !exec.finished.get() {
            glommio::timer::sleep((due - Instant::now()).min(Duration::from_millis(50))).await;
        }
        let latency = exec.interval.replace(latency_histogram());
        exec.stats.borrow_mut().latency.add(&latency).expect("same histogram bounds");
        let sent = exec.live().sent.load(Relaxed);
        let received = exec.live().received.load(Relaxed);
        let (sent0, received0) = exec.counters.replace((sent, received));
        let (sent, received) = (sent - sent0, received - received0);
        let tick = Tick { executor, second, sent, received, latency };
        if ticks.send(TickerMessage::Tick(tick)).is_err() {
            return;
        }
        if exec.finished.get() {
            let _ = ticks.send(TickerMessage::Done { executor });
            return;
        }
        second += 1;
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    /// The socket failed.
    #[error("{}", io_reason(.0))]
    Io(#[from] io::Error),
    /// The MQTT exchange failed.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The broker closed the connection.
    #[error("closed by broker")]
    Closed,
}

/// A short, stable name for an IO error, to count failures by.
fn io_reason(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            text.split(" (os error").next().unwrap_or(&text).to_lowercase()
        }
        None => format!("{:?}", error.kind()).to_lowercase(),
    }
}

/// What a connection should do after it ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The run is over.
    Done,
    /// A storm: reconnect for this cycle.
    Reconnect(u32),
}

/// Wakes a connection's writer: set by the reader after each batch and by
/// the watcher on a phase change.
#[derive(Debug, Default)]
struct Notify {
    /// Notified since the writer last looked.
    flag: Cell<bool>,
    /// The waiting writer.
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.flag.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for a notification or `deadline`, whichever comes first.
    async fn wait_until(&self, deadline: Option<Instant>) {
        let notified = poll_fn(|cx: &mut Context<'_>| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        match deadline {
            None => notified.await,
            Some(deadline) => {
                let now = Instant::now();
                if deadline > now {
                    futures_lite::future::or(notified, glommio::timer::sleep(deadline - now)).await;
                }
            }
        }
    }
}

/// One half of a connection's socket. glommio's stream keeps separate read
/// and write state; the `RefCell` is borrowed only inside one poll, so the
/// reader and the writer never hold it across an await.
struct Half(Rc<RefCell<Stream>>);

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// A connection's protocol state, shared by its reader and writer.
struct Conn {
    /// The state machine.
    client: RefCell<Client>,
    /// Wakes the writer.
    notify: Rc<Notify>,
    /// Connected (and subscribed, for a subscriber).
    ready: Cell<bool>,
}

/// One publisher's schedule.
#[derive(Debug)]
struct Publisher {
    /// Publisher id.
    id: u32,
    /// Topic.
    topic: TopicName,
    /// QoS.
    qos: QoS,
    /// Payload builder.
    payloads: PayloadWriter,
    /// Interval between messages; `None`: as fast as possible.
    interval: Option<Duration>,
    /// Offset of this publisher's schedule.
    offset: Duration,
    /// Messages to send.
    count: Option<u64>,
    /// How long to publish.
    duration: Option<Duration>,
    /// Stop at this time even when behind the schedule.
    give_up: Option<Duration>,
    /// Next sequence number = messages sent so far.
    next_seq: u64,
    /// Told the coordinator that it finished.
    done: bool,
    /// First and last send.
    span: Option<(Instant, Instant)>,
    /// Messages sent, by the second of their intended send time.
    sent_by_second: Vec<u64>,
}

impl Publisher {
    fn new(plan: &PublishPlan, run: &Plan) -> Self {
        Self {
            id: plan.publisher,
            topic: plan.topic.clone(),
            qos: run.qos,
            payloads: PayloadWriter::new(plan.publisher, run.payload),
            interval: run.interval,
            offset: plan.offset,
            count: run.count,
            duration: run.duration,
            give_up: run.give_up,
            next_seq: 0,
            done: false,
            span: None,
            sent_by_second: Vec::new(),
        }
    }

    /// The intended send time of the next message.
    fn intended(&self, start: Instant, now: Instant) -> Instant {
        match self.interval {
            Some(interval) => {
                start
                    + self.offset
                    + Duration::from_nanos(interval.as_nanos() as u64 * self.next_seq)
            }
            None => now,
        }
    }

    fn exhausted(&self, start: Instant, now: Instant) -> bool {
        self.count.is_some_and(|count| self.next_seq >= count)
            || self.duration.is_some_and(|d| self.intended(start, now) >= start + d)
            || self.give_up.is_some_and(|g| now >= start + g)
    }

    /// Queues every message due at `now` (at most [`MAX_BATCH`]) that the
    /// window lets through. Returns how many.
    fn publish_due(
        &mut self,
        start: Instant,
        now: Instant,
        client: &mut Client,
        clock: &Clock,
    ) -> Result<u64, ClientError> {
        let mut sent = 0;
        while sent < MAX_BATCH as u64 && !self.exhausted(start, now) && client.can_publish(self.qos)
        {
            let intended = self.intended(start, now);
            if intended > now {
                break;
            }
            let payload = self.payloads.payload(clock.ns(intended), self.next_seq);
            if !client.publish(&self.topic, self.qos, payload)? {
                break;
            }
            self.next_seq += 1;
            sent += 1;
            add_at(&mut self.sent_by_second, (intended - start).as_secs() as usize, 1);
        }
        if sent > 0 {
            let first = self.span.map_or(now, |(first, _)| first);
            self.span = Some((first, now));
        }
        Ok(sent)
    }

    /// When to come back: the next message's time (at least
    /// [`PUBLISH_GRANULE`] from now), or `None` when only an acknowledgement
    /// (or nothing) can let it go on.
    fn next_wakeup(&self, start: Instant, now: Instant, client: &Client) -> Option<Instant> {
        if self.exhausted(start, now) || !client.can_publish(self.qos) {
            None
        } else {
            Some(self.intended(start, now).max(now + PUBLISH_GRANULE))
        }
    }
}

/// One client for the whole run: connects (again, in a storm), runs, and
/// hands its results to the executor.
async fn run_client(exec: Rc<Exec>, index: usize) {
    let plan = exec.plan.clone();
    let client_plan = &plan.clients[index];
    let mut publisher = client_plan.publish.as_ref().map(|p| Publisher::new(p, &plan));
    let streams = RefCell::new(StreamMap::default());
    // Connections start at the configured rate over all executors.
    let slot = plan.connect_interval.mul_f64(index as f64);
    glommio::timer::sleep(slot).await;
    let mut cycle = 0;
    let mut first = true;
    loop {
        if exec.phase.get() == Phase::Stopping {
            exec.settle(plan.cycles + 1 - cycle);
            Exec::count(&mut exec.stats.borrow_mut().connect_failures, "not started".into());
            break;
        }
        let ready = Cell::new(false);
        let outcome =
            connect_and_run(&exec, index, cycle, first, &ready, publisher.as_mut(), &streams).await;
        first = false;
        match outcome {
            Ok(Next::Reconnect(next)) => cycle = next,
            Ok(Next::Done) => {
                if !ready.get() {
                    let mut stats = exec.stats.borrow_mut();
                    Exec::count(&mut stats.connect_failures, "not ready when the run ended".into());
                    exec.settle(plan.cycles + 1 - cycle);
                }
                break;
            }
            Err(error) => {
                let mut stats = exec.stats.borrow_mut();
                if ready.get() {
                    Exec::count(&mut stats.errors, error.to_string());
                    // Its remaining storm cycles will not happen.
                    exec.settle(plan.cycles - cycle);
                } else {
                    Exec::count(&mut stats.connect_failures, error.to_string());
                    exec.settle(plan.cycles + 1 - cycle);
                }
                break;
            }
        }
    }
    let mut stats = exec.stats.borrow_mut();
    if let Some(publisher) = publisher {
        if !publisher.done {
            exec.control.publishers_done.fetch_add(1, Relaxed);
        }
        stats.sent_by_publisher.insert(publisher.id, publisher.sent_by_second);
        if let Some((first, last)) = publisher.span {
            let span = stats.publish_span.get_or_insert((first, last));
            *span = (span.0.min(first), span.1.max(last));
        }
    }
    if let Some(subscribe) = &client_plan.subscribe {
        stats
            .subscribers
            .push(SubscriberResult { expect: subscribe.expect.clone(), streams: streams.take() });
    }
}

/// Opens the socket: bound to the source address if any, non-blocking
/// connect (completed by the first write).
fn open_socket(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
    rcvbuf: Option<usize>,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(source) = source {
        // Pick the port at connect time, per destination, so that one source
        // address serves more than 64k connections over several targets.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` (a c_int of the given size) from a
        // valid pointer; the fd is owned by `socket`.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

async fn connect_and_run(
    exec: &Rc<Exec>,
    index: usize,
    cycle: u32,
    first: bool,
    ready: &Cell<bool>,
    publisher: Option<&mut Publisher>,
    streams: &RefCell<StreamMap>,
) -> Result<Next, ConnError> {
    let plan = &exec.plan;
    let client_plan = &plan.clients[index];
    let started = Instant::now();
    let rcvbuf = client_plan.subscribe.as_ref().and(plan.rcvbuf);
    let socket = open_socket(client_plan.target, client_plan.source, rcvbuf)?;
    // SAFETY: the fd comes straight from `into_raw_fd`: open, a TCP socket,
    // and owned by nobody else.
    let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    let stream = match (&plan.tls, &client_plan.server_name) {
        (Some(config), Some(name)) => Stream::tls(stream, Arc::clone(config), name.clone())?,
        _ => Stream::Tcp(stream),
    };
    let stream = Rc::new(RefCell::new(stream));
    let config = ClientConfig {
        version: plan.version,
        client_id: client_plan.client_id.as_str().into(),
        keep_alive: plan.keep_alive,
        clean_start: plan.clean_start,
        session_expiry: plan.session_expiry,
        username: plan.username.as_deref().map(Into::into),
        password: plan.password.clone().map(|p| p.into_bytes().into()),
        max_inflight: plan.inflight,
        max_packet_size: 1 << 28,
    };
    let conn = Conn {
        client: RefCell::new(Client::new(config, started)?),
        notify: Rc::new(Notify::default()),
        ready: Cell::new(false),
    };
    exec.notifiers.borrow_mut().push(Rc::downgrade(&conn.notify));
    exec.live().open.fetch_add(1, Relaxed);
    let reader =
        read_loop(Half(stream.clone()), exec, &conn, index, started, first, cycle, streams);
    let writer = write_loop(Half(stream), exec, &conn, cycle, publisher);
    let result = futures_lite::future::or(reader, writer).await;
    exec.live().open.fetch_sub(1, Relaxed);
    ready.set(conn.ready.get());
    result
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn read_loop(
    mut reader: Half,
    exec: &Exec,
    conn: &Conn,
    index: usize,
    started: Instant,
    first: bool,
    cycle: u32,
    streams: &RefCell<StreamMap>,
) -> Result<Next, ConnError> {
    let subscribe = exec.plan.clients[index].subscribe.as_ref();
    let mut buf = BytesMut::new();
    let mut chunk = MIN_READ;
    let mut stalled = false;
    loop {
        if let (Some(stall), Some(start), false) = (exec.plan.stall, exec.start.get(), stalled) {
            if subscribe.is_some() && exec.phase.get() >= Phase::Running {
                stalled = true;
                let until = start + stall;
                let now = Instant::now();
                if until > now {
                    glommio::timer::sleep(until - now).await;
                }
            }
        }
        let filled = buf.len();
        buf.resize(filled + chunk, 0);
        let n = reader.read(&mut buf[filled..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(filled);
                return Err(e.into());
            }
        };
        buf.truncate(filled + n);
        if n == 0 {
            return match exec.phase.get() {
                Phase::Stopping => Ok(Next::Done),
                _ if exec.cycle.get() > cycle => Ok(Next::Reconnect(exec.cycle.get())),
                _ => Err(ConnError::Closed),
            };
        }
        if n == chunk && chunk < MAX_READ {
            chunk *= 2;
        }
        if n < chunk / 8 && chunk > MIN_READ {
            // Large reads that come back nearly empty only cost the zeroing.
            chunk /= 2;
        }
        let now = Instant::now();
        let now_ns = exec.clock.ns(now);
        loop {
            let event = {
                let mut stats = exec.stats.borrow_mut();
                let mut recorder = Recorder {
                    stats: &mut stats,
                    interval: &mut exec.interval.borrow_mut(),
                    streams: &mut streams.borrow_mut(),
                    now_ns,
                    // Straight from the coordinator: this executor's
                    // watcher may not have seen the start yet while
                    // another executor's publishers already publish.
                    start_ns: exec.control.start.get().map(|&start| exec.clock.ns(start)),
                };
                let event = conn
                    .client
                    .borrow_mut()
                    .handle_read(&mut buf, &mut |qos, payload| recorder.record(qos, payload))?;
                let total = stats.received.iter().sum();
                exec.live().received.store(total, Relaxed);
                event
            };
            match event {
                None => break,
                Some(Event::Connected { .. }) => {
                    let us = now.duration_since(started).as_micros() as u64;
                    let mut stats = exec.stats.borrow_mut();
                    stats.connected += 1;
                    if first {
                        stats.connect.saturating_record(us);
                    } else {
                        stats.reconnect.saturating_record(us);
                    }
                    drop(stats);
                    match subscribe {
                        Some(sub) => conn
                            .client
                            .borrow_mut()
                            .subscribe(&[(sub.filter.clone(), exec.plan.qos)])?,
                        None => {
                            conn.ready.set(true);
                            exec.settle(1);
                        }
                    }
                }
                Some(Event::Subscribed) => {
                    if !conn.ready.replace(true) {
                        exec.settle(1);
                    }
                }
                Some(Event::Acked { reason }) => exec.record_ack(reason),
            }
        }
        conn.notify.notify();
        glommio::yield_if_needed().await;
    }
}

async fn write_loop(
    mut writer: Half,
    exec: &Exec,
    conn: &Conn,
    cycle: u32,
    mut publisher: Option<&mut Publisher>,
) -> Result<Next, ConnError> {
    loop {
        let now = Instant::now();
        let phase = exec.phase.get();
        let next = if phase == Phase::Stopping {
            Some(Next::Done)
        } else if exec.cycle.get() > cycle {
            Some(Next::Reconnect(exec.cycle.get()))
        } else {
            None
        };
        if let Some(next) = next {
            let bytes = {
                let mut client = conn.client.borrow_mut();
                client.disconnect()?;
                client.poll_transmit(now)
            };
            if let Some(bytes) = bytes {
                writer.write_all(&bytes).await?;
            }
            writer.close().await?;
            return Ok(next);
        }
        let mut wake_at = {
            let mut client = conn.client.borrow_mut();
            client.handle_timeout(now)?;
            client.poll_timeout()
        };
        if let (Some(p), Some(start)) = (publisher.as_deref_mut(), exec.start.get()) {
            if phase == Phase::Running && conn.ready.get() && !p.done {
                let mut client = conn.client.borrow_mut();
                let sent = p.publish_due(start, now, &mut client, &exec.clock)?;
                if sent > 0 {
                    let mut stats = exec.stats.borrow_mut();
                    stats.sent += sent;
                    exec.live().sent.store(stats.sent, Relaxed);
                }
                if p.exhausted(start, now) && client.inflight() == 0 {
                    p.done = true;
                    exec.control.publishers_done.fetch_add(1, Relaxed);
                }
                let publish_at = p.next_wakeup(start, now, &client);
                wake_at = match (wake_at, publish_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let bytes = conn.client.borrow_mut().poll_transmit(now);
        if let Some(bytes) = bytes {
            writer.write_all(&bytes).await?;
            glommio::yield_if_needed().await;
            continue;
        }
        conn.notify.wait_until(wake_at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(executor: usize, second: u64, sent: u64, latencies: &[u64]) -> TickerMessage {
        let mut latency = latency_histogram();
        for &us in latencies {
            latency.record(us).unwrap();
        }
        let received = latencies.len() as u64;
        TickerMessage::Tick(Tick { executor, second, sent, received, latency })
    }

    fn drain_plan(args: &[&str]) -> Plan {
        use clap::Parser as _;
        let mut argv = vec!["ringmq-bench", "fan-out", "--subscribers", "2"];
        argv.extend_from_slice(args);
        Plan::from_command(crate::cli::Cli::try_parse_from(argv).unwrap().command).unwrap()
    }

    #[test]
    fn drain_ends_when_all_arrived_when_idle_or_at_its_end() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let plan = drain_plan(&["--drain", "5s", "--drain-idle", "800ms"]);
        // 100 sent to 2 subscribers: 200 expected.
        let mut drain = Drain::new(t0, &plan, Some(200), 150);
        assert!(!drain.over(ms(700), 150), "idle for 700 ms only");
        assert!(!drain.over(ms(1000), 190), "arrivals restart the idle time");
        assert!(!drain.over(ms(1700), 190));
        assert!(drain.over(ms(1800), 190), "idle for --drain-idle");
        let mut drain = Drain::new(t0, &plan, Some(200), 150);
        assert!(drain.over(ms(10), 200), "everything arrived");
        let mut drain = Drain::new(t0, &plan, None, 0);
        for n in 1..50 {
            assert!(!drain.over(ms(n * 100), n), "still arriving");
        }
        assert!(drain.over(ms(5000), 50), "--drain is the longest wait");
        // An idle time past the drain time: the whole drain time.
        let plan = drain_plan(&["--drain", "1s", "--drain-idle", "1h"]);
        let mut drain = Drain::new(t0, &plan, None, 0);
        assert!(!drain.over(ms(999), 0));
        assert!(drain.over(ms(1000), 0));
    }

    #[test]
    fn timeline_summarises_a_second_once_every_executor_reported_it() {
        let mut timeline = Timeline::new(3);
        // Executor 2 had no clients: done at once.
        timeline.handle_message(TickerMessage::Done { executor: 2 });
        timeline.handle_message(tick(0, 0, 5, &[100, 200]));
        timeline.handle_message(tick(0, 1, 7, &[300]));
        assert_eq!(timeline.pending.len(), 2);
        timeline.handle_message(tick(1, 0, 1, &[1000]));
        // Second 0 is complete: summarised, its histogram dropped.
        assert_eq!(timeline.pending.len(), 1);
        let zero = &timeline.done[&0];
        assert_eq!((zero.sent, zero.received), (6, 3));
        assert_eq!((zero.latency_us.count, zero.latency_us.max), (3, 1000));
        // Executor 1 finishes early; executor 0 goes on alone.
        timeline.handle_message(TickerMessage::Done { executor: 1 });
        assert!(timeline.pending.is_empty());
        timeline.handle_message(tick(0, 3, 2, &[50]));
        assert!(timeline.pending.is_empty());
        let seconds = timeline.finish();
        let summary: Vec<(u64, u64, u64, u64)> =
            seconds.iter().map(|s| (s.second, s.sent, s.received, s.latency_us.count)).collect();
        assert_eq!(summary, [(0, 6, 3, 3), (1, 7, 1, 1), (2, 0, 0, 0), (3, 2, 1, 1)]);
    }
}
