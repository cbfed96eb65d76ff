//! The admin HTTP listener (`[admin] listen`): health probes for load
//! balancers and orchestrators. `GET /healthz` is 200 while every shard
//! accepts connections and its tick ran within [`STALE_AFTER`], 503 while
//! starting, draining, or when a shard is stuck; `GET /readyz` is 200 once
//! every shard accepts connections and until the broker starts to stop;
//! `GET /metrics` is every shard's counters in the Prometheus text format,
//! as each shard published them at its last tick.
//!
//! It runs on a thread of its own with blocking sockets, outside the shards'
//! executors: a probe never waits on a busy shard, and a busy probe never
//! delays a message. Requests are parsed with `httparse`; one at a time,
//! each with a short timeout (probes are small and rare; the listener
//! belongs on loopback or a private network).

use super::listener::ListenError;
use crate::metrics::{prometheus, Snapshot};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A shard whose tick has not run for this long is stuck (it ticks every
/// 250 ms).
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// How long one request may take to arrive or to be written.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest request read.
const MAX_REQUEST: usize = 8 * 1024;

/// What the shards report about themselves: written by the shards (plain
/// atomic stores, once per tick), read by the admin listener and the
/// service-manager notifier.
#[derive(Debug)]
pub struct Health {
    base: Instant,
    /// Shards whose accept loops run.
    serving: AtomicUsize,
    /// Per shard, when its tick last ran, in ms since `base` (0: never).
    last_tick_ms: Vec<AtomicU64>,
    /// The broker has started to stop.
    draining: AtomicBool,
    /// Per shard, its counters as of its last tick.
    snapshots: Vec<Mutex<Snapshot>>,
    /// Client connections open in the process.
    connections: Arc<AtomicUsize>,
}

impl Health {
    /// The health of `shards` shards, none serving yet; `connections`
    /// counts the open client connections.
    pub fn new(shards: usize, connections: Arc<AtomicUsize>) -> Self {
        Self {
            base: Instant::now(),
            serving: AtomicUsize::new(0),
            last_tick_ms: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            draining: AtomicBool::new(false),
            snapshots: (0..shards)
                .map(|shard| Mutex::new(Snapshot { shard, ..Snapshot::default() }))
                .collect(),
            connections,
        }
    }

    /// Shard `snapshot.shard` publishes its counters (once per tick).
    pub fn publish(&self, snapshot: Snapshot) {
        if let Some(slot) = self.snapshots.get(snapshot.shard) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        }
    }

    /// Every shard's last published counters, in shard order.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.snapshots
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }

    /// Client connections open in the process now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Every shard's last published counters, in Prometheus text.
    fn metrics(&self) -> String {
        prometheus::render(&self.snapshots(), self.connections())
    }

    /// The process's count of open client connections, for the shards to
    /// count into.
    pub fn connection_count(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.connections)
    }

    /// A shard accepts connections.
    pub fn shard_serving(&self) {
        self.serving.fetch_add(1, Ordering::Relaxed);
    }

    /// Shard `index` ran its tick.
    pub fn tick(&self, index: usize) {
        if let Some(last) = self.last_tick_ms.get(index) {
            // At least 1, so that a tick is never read as "never".
            last.store(self.base.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// The broker stops: probes fail from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Every shard accepts connections, and the broker is not stopping.
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Relaxed) >= self.last_tick_ms.len()
            && !self.draining.load(Ordering::Relaxed)
    }

    /// Why the broker is not healthy, or `None` when it is: ready, and
    /// every shard ticked within [`STALE_AFTER`].
    pub fn problem(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining".into());
        }
        if !self.is_ready() {
            return Some("starting".into());
        }
        let now = self.base.elapsed().as_millis() as u64;
        let stale = STALE_AFTER.as_millis() as u64;
        let stuck: Vec<String> = self
            .last_tick_marks()
            .iter()
            .enumerate()
            .filter(|(_, &at)| at == 0 || now.saturating_sub(at) > stale)
            .map(|(shard, _)| shard.to_string())
            .collect();
        (!stuck.is_empty()).then(|| format!("shard(s) {} not answering", stuck.join(", ")))
    }

    /// Each shard's last tick, in ms since the start (0: never): a shard
    /// whose mark moved has ticked.
    pub fn last_tick_marks(&self) -> Vec<u64> {
        self.last_tick_ms.iter().map(|at| at.load(Ordering::Relaxed)).collect()
    }
}

/// Binds the admin listener (on the calling thread, so an address problem
/// is reported at start) and serves it on a thread of its own.
pub fn start(addr: SocketAddr, health: Arc<Health>) -> Result<SocketAddr, ListenError> {
    let wrap = |source| ListenError { addr, source };
    let listener = TcpListener::bind(addr).map_err(wrap)?;
    let bound = listener.local_addr().map_err(wrap)?;
    std::thread::Builder::new()
        .name("ringmq-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = serve(stream, &health) {
                            tracing::debug!(%error, "admin request failed");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(wrap)?;
    Ok(bound)
}

/// Reads one request and answers it; the connection then closes.
fn serve(mut stream: TcpStream, health: &Health) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let response = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break respond(&request, health),
            Ok(httparse::Status::Partial) if len < MAX_REQUEST => continue,
            Ok(httparse::Status::Partial) | Err(_) => {
                break Response::text("400 Bad Request", "bad request\n")
            }
        }
    };
    let head_only = buf[..len].starts_with(b"HEAD ");
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )?;
    if !head_only {
        stream.write_all(response.body.as_bytes())?;
    }
    stream.flush()
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

fn respond(request: &httparse::Request<'_, '_>, health: &Health) -> Response {
    let ok = |body: &str| Response::text("200 OK", format!("{body}\n"));
    let unavailable = |why: String| {
        Response::text(
            "503 Service Unavailable",
            why + "
",
        )
    };
    if !matches!(request.method, Some("GET" | "HEAD")) {
        return Response::text("405 Method Not Allowed", "GET or HEAD only\n");
    }
    let path = request.path.unwrap_or("/").split('?').next().unwrap_or("/");
    match path {
        "/healthz" => match health.problem() {
            None => ok("ok"),
            Some(problem) => unavailable(problem),
        },
        "/readyz" if health.is_ready() => ok("ready"),
        "/readyz" => unavailable(health.problem().unwrap_or_else(|| "not ready".into())),
        "/metrics" => Response {
            status: "200 OK",
            content_type: prometheus::CONTENT_TYPE,
            body: health.metrics(),
        },
        _ => Response::text("404 Not Found", "/healthz, /readyz and /metrics are served\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_once_every_shard_serves_and_ticks_and_not_while_draining() {
        let health = Health::new(2, Arc::default());
        assert_eq!(health.problem().as_deref(), Some("starting"));
        health.shard_serving();
        assert!(!health.is_ready());
        health.shard_serving();
        assert!(health.is_ready());
        assert_eq!(health.problem().as_deref(), Some("shard(s) 0, 1 not answering"));
        health.tick(0);
        assert_eq!(health.problem().as_deref(), Some("shard(s) 1 not answering"));
        health.tick(1);
        assert_eq!(health.problem(), None);
        health.set_draining();
        assert!(!health.is_ready());
        assert_eq!(health.problem().as_deref(), Some("draining"));
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn probes_answer_over_http() {
        let health = Arc::new(Health::new(1, Arc::default()));
        let addr = start("127.0.0.1:0".parse().unwrap(), Arc::clone(&health)).unwrap();
        let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(get(addr, request).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        health.shard_serving();
        health.tick(0);
        let response = get(addr, request);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
        assert!(get(addr, "GET /readyz?verbose HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
        let head = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let mut snapshot = Snapshot::default();
        snapshot.counters.shard.messages_received = [0, 9, 0];
        health.publish(snapshot);
        let metrics = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(metrics.contains("Content-Type: application/openmetrics-text"), "{metrics}");
        let received = "ringmq_messages_received_total{shard=\"0\",qos=\"1\"} 9\n";
        assert!(metrics.contains(received), "{metrics}");
        assert!(get(addr, "POST /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, "\x16\x03\x01 not http\r\n\r\n").starts_with("HTTP/1.1 400"));
        health.set_draining();
        assert!(get(addr, request).starts_with("HTTP/1.1 503"));
    }
}
