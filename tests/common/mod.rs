//! Shared by the end-to-end tests: start the real `ringmq` binary on a free
//! loopback port, wait until it accepts, and stop it with SIGTERM (checking
//! that it exits 0).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A broker process for one test.
pub struct Broker {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shard count.
    pub shards: usize,
}

impl Broker {
    /// Starts `ringmq` with `shards` shards on a free port.
    pub fn start(shards: usize) -> Self {
        Self::start_with(shards, &[])
    }

    /// Starts `ringmq` with extra command-line arguments.
    pub fn start_with(shards: usize, args: &[&str]) -> Self {
        Self::spawn(shards, args, None)
    }

    /// Starts `ringmq` with extra command-line arguments, its log (stderr)
    /// written to `log`.
    pub fn start_logging_to(shards: usize, args: &[&str], log: &std::path::Path) -> Self {
        Self::spawn(shards, args, Some(log))
    }

    /// Starts `ringmq` on a free port, its stderr inherited or written to
    /// `log`. A broker that exits before it listens (the port was taken
    /// meanwhile by another process: it refuses a port in use) is started
    /// again on another port, a few times.
    fn spawn(shards: usize, args: &[&str], log: Option<&Path>) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let stderr = match log {
                None => Stdio::inherit(),
                Some(log) => std::fs::File::create(log).unwrap().into(),
            };
            match Self::try_spawn(None, addr, shards, args, stderr, None) {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("ringmq did not start: {failures:?}");
    }

    /// Starts `ringmq` listening on `addr`, with extra arguments.
    pub fn start_on(addr: SocketAddr, shards: usize, args: &[&str]) -> Self {
        Self::spawn_on(addr, shards, args, Stdio::inherit())
    }

    /// Starts `ringmq` with `args` (a `--config` whose listeners include
    /// `addr`: no `--listen` is given), its log written to `log`, in the
    /// log's directory (where a core dump of it lands, see
    /// [`core_backtrace`]); waits until `addr` accepts.
    pub fn start_configured(addr: SocketAddr, shards: usize, args: &[&str], log: &Path) -> Self {
        let stderr = std::fs::File::create(log).unwrap().into();
        Self::spawn_configured(Some(addr), addr, shards, args, stderr, log.parent())
    }

    /// Starts `ringmq` with a configuration file of `toml` and one
    /// `[[listener]]` on a free port with the keys `listener_keys` (no
    /// `--listen`: the listener's own settings apply).
    pub fn start_with_listener(shards: usize, listener_keys: &str, toml: &str) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let path = std::env::temp_dir().join(format!(
            "ringmq-test-{}-{}.toml",
            std::process::id(),
            addr.port()
        ));
        let text = format!("{toml}\n[[listener]]\nbind = \"{addr}\"\n{listener_keys}\n");
        std::fs::write(&path, text).unwrap();
        let args = ["--config", path.to_str().unwrap()];
        let broker =
            Self::spawn_configured(Some(addr), addr, shards, &args, Stdio::inherit(), None);
        let _ = std::fs::remove_file(&path);
        broker
    }

    fn spawn_on(addr: SocketAddr, shards: usize, args: &[&str], stderr: Stdio) -> Self {
        Self::spawn_configured(None, addr, shards, args, stderr, None)
    }

    fn spawn_configured(
        from_file: Option<SocketAddr>,
        addr: SocketAddr,
        shards: usize,
        args: &[&str],
        stderr: Stdio,
        cwd: Option<&Path>,
    ) -> Self {
        Self::try_spawn(from_file, addr, shards, args, stderr, cwd)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `ringmq` on `addr`: with `--listen addr`, unless `from_file`
    /// says the configuration file binds it. Returns once the broker itself
    /// listens on `addr`: not once a connection to `addr` succeeds, which
    /// another process listening there could answer (two CI runs failed
    /// so: a test talked to a listener that was not its broker, and removed
    /// a configuration file before the broker had read it). `Err` when the
    /// broker exited before listening. `cwd`: its working directory (the
    /// test's by default).
    fn try_spawn(
        from_file: Option<SocketAddr>,
        addr: SocketAddr,
        shards: usize,
        args: &[&str],
        stderr: Stdio,
        cwd: Option<&Path>,
    ) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command.arg("serve");
        if from_file.is_none() {
            command.args(["--listen", &addr.to_string()]);
        }
        command.args(["--shards", &shards.to_string()]);
        // Quiet unless the test chose a level.
        if !args.contains(&"--log") {
            command.args(["--log", "warn"]);
        }
        let child =
            command.args(args).stdin(Stdio::null()).stderr(stderr).spawn().expect("start ringmq");
        let mut broker = Self { child: Some(child), addr, shards };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listens_on(broker.pid(), addr) {
            if let Some(status) = broker.child.as_mut().unwrap().try_wait().unwrap() {
                broker.child = None;
                return Err(format!(
                    "ringmq exited with {status} before listening on {addr} (listening there: {})",
                    listeners_of(addr)
                ));
            }
            assert!(Instant::now() < deadline, "ringmq did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// Starts `ringmq` with a configuration file holding `toml` (its
    /// listeners are replaced by the test's `--listen`).
    pub fn start_with_config(shards: usize, toml: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "ringmq-test-{}-{}.toml",
            std::process::id(),
            free_port()
        ));
        std::fs::write(&path, toml).unwrap();
        let broker = Self::start_with(shards, &["--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        broker
    }

    /// The broker's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// File descriptors the broker has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }

    /// The port as a number.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.terminate();
        self.wait(|| std::thread::sleep(Duration::from_millis(20)))
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
    }

    /// Waits for the process to exit after [`Self::terminate`] and returns
    /// its status, noticing the exit at once (it polls without sleeping),
    /// so that the caller can act right after it.
    pub fn wait_exit(self) -> ExitStatus {
        self.wait(std::thread::yield_now)
    }

    /// Polls for the exit status, calling `pause` between polls; kills
    /// the process and fails the test after 15 s.
    fn wait(mut self, pause: impl Fn()) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ringmq did not exit within 15 s of SIGTERM");
            }
            pause();
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The inodes of the sockets listening on `addr` (IPv4), from
/// /proc/net/tcp.
fn listening_inodes(addr: SocketAddr) -> Vec<String> {
    let SocketAddr::V4(v4) = addr else { return Vec::new() };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|inode| (*inode).to_owned()))
                .flatten()
        })
        .collect()
}

/// Whether the process at `proc_dir` (/proc/PID) holds one of `inodes`.
fn holds_socket(proc_dir: &Path, inodes: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        inodes.iter().any(|inode| target == format!("socket:[{inode}]"))
    })
}

/// Whether process `pid` holds a socket listening on `addr`.
fn listens_on(pid: u32, addr: SocketAddr) -> bool {
    let inodes = listening_inodes(addr);
    !inodes.is_empty() && holds_socket(Path::new(&format!("/proc/{pid}")), &inodes)
}

/// Which processes listen on `addr`, for a failure message.
fn listeners_of(addr: SocketAddr) -> String {
    let inodes = listening_inodes(addr);
    if inodes.is_empty() {
        return "nobody".to_owned();
    }
    let owners: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|process| holds_socket(&process.path(), &inodes))
        .map(|process| {
            let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            format!("{} {cmdline}", process.file_name().to_string_lossy())
        })
        .collect();
    if owners.is_empty() {
        format!("sockets {inodes:?} of no visible process (an io_uring ring of an ended one?)")
    } else {
        owners.join("; ")
    }
}

/// A port nobody listens on right now.
///
/// Not an ephemeral port from `bind(0)`: once released, the kernel may give
/// the same port to a client socket of a concurrent test, or to another
/// test's broker, and brokers bind with SO_REUSEPORT, so two of them would
/// share one port's connections. These ports lie below the ephemeral range
/// (32768 and up by default), are handed out once per process from a base
/// that depends on the pid, and are checked free by binding.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const PER_PROCESS: u32 = 120;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 100) * PER_PROCESS;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % PER_PROCESS) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A client id, starting with `prefix`, whose home is `shard` of `shards`.
pub fn client_id_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| ringmq::router::home_shard(id.as_bytes(), shards).index() == shard)
        .unwrap()
}

/// A raw MQTT connection over a blocking socket, driven with ringmq's own
/// codec, for tests that need byte-level control.
pub struct RawClient {
    pub stream: TcpStream,
    buf: bytes::BytesMut,
    decoder: ringmq::protocol::Decoder,
    version: ringmq::protocol::ProtocolVersion,
}

impl RawClient {
    /// Connects the socket (no MQTT yet).
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let version = ringmq::protocol::ProtocolVersion::V3_1_1;
        Self {
            stream,
            buf: bytes::BytesMut::new(),
            decoder: ringmq::protocol::Decoder::new(version, 1 << 20),
            version,
        }
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a packet.
    pub fn send(&mut self, packet: &ringmq::protocol::Packet) {
        if let ringmq::protocol::Packet::Connect(connect) = packet {
            self.version = connect.version;
            self.decoder.set_version(connect.version);
        }
        let mut out = bytes::BytesMut::new();
        packet.encode(self.version, &mut out).unwrap();
        self.send_bytes(&out);
    }

    /// The next packet, or `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<ringmq::protocol::Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next packet within `within`: `Some(None)` when the server closed
    /// the connection, `None` when nothing came in time. (Leaves the
    /// socket's read timeout at what was left of `within`.)
    pub fn recv_within(&mut self, within: Duration) -> Option<Option<ringmq::protocol::Packet>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(Some(packet));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(None),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Whether the server closed the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut chunk = [0u8; 64];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A v3.1.1 CONNECT.
pub fn connect_packet(client_id: &str, clean: bool, keep_alive: u16) -> ringmq::protocol::Packet {
    ringmq::protocol::Packet::Connect(Box::new(ringmq::protocol::Connect {
        version: ringmq::protocol::ProtocolVersion::V3_1_1,
        clean_start: clean,
        keep_alive,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }))
}

/// `GET path` on the HTTP listener at `addr` (the admin listener): the
/// whole response, status line and headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The samples of `series` (e.g. `ringmq_accepted_total`) in a `/metrics`
/// page, summed over the shards. Panics if the page has no such series, so
/// a misspelt name cannot pass for a zero.
pub fn metric_sum(metrics: &str, series: &str) -> u64 {
    let samples: Vec<u64> = metrics
        .lines()
        .filter(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .collect();
    assert!(!samples.is_empty(), "no {series} in /metrics");
    samples.iter().sum()
}

/// The counter `ringmq_{name}_total` of the admin listener at `admin`,
/// summed over the shards.
pub fn counter_total(admin: &str, name: &str) -> u64 {
    metric_sum(&http_get(admin, "/metrics"), &format!("ringmq_{name}_total"))
}

/// [`counter_total`] once it is at least `at_least` (the shards publish
/// their counters every 250 ms), or whatever it is after 5 s.
pub fn counter_at_least(admin: &str, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = counter_total(admin, name);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh, empty directory for the files of test `name` of `suite`.
/// Lets the brokers the test starts from now on dump core when they
/// crash (the soft RLIMIT_CORE raised to the hard one; they inherit it):
/// see [`core_backtrace`].
pub fn allow_core_dumps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit read or write one rlimit struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_CORE, &limit);
            }
        }
    });
}

/// The threads' backtraces of the core a crashed broker left in `dir`
/// (its working directory), by `gdb`, and the core removed; or why there
/// are none. A broker that died by a signal is a defect whose cause the
/// log alone may not show (a heap corruption found at exit, say).
pub fn core_backtrace(dir: &Path) -> String {
    // `core`, or `core.PID` with kernel.core_uses_pid.
    let mut paths = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    let core = paths.find(|path| {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        name == "core" || name.starts_with("core.")
    });
    let Some(core) = core else {
        let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
        return format!("no core file in {} (core_pattern: {})", dir.display(), pattern.trim());
    };
    let output = Command::new("gdb")
        // The crashing thread's first (gdb selects it), then every one.
        .args(["-batch", "-nx", "-ex", "bt", "-ex", "thread apply all bt"])
        .arg(env!("CARGO_BIN_EXE_ringmq"))
        .arg(&core)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&core);
    match output {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            let frames = text.lines().filter(|l| l.starts_with('#') || l.starts_with("Thread"));
            let short = |line: &str| line.chars().take(240).collect::<String>();
            frames.take(400).map(short).collect::<Vec<_>>().join("\n")
        }
        Err(error) => format!("a core in {}, but gdb did not run: {error}", dir.display()),
    }
}

pub fn scratch_dir(suite: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the admin listener at `admin` answers `/readyz` with 200:
/// every listener is bound and every shard serves. (A broker's first
/// listener accepting says nothing of the others, bound after it.)
pub fn wait_ready(admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !TcpStream::connect(admin)
        .is_ok_and(|_| http_get(admin, "/readyz").starts_with("HTTP/1.1 200"))
    {
        assert!(Instant::now() < deadline, "the broker was not ready within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
