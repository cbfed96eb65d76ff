//! Measures what an idle TCP connection costs a glommio shard in two
//! designs (issue 18, item 4), to decide between them from numbers:
//!
//! * `tasks`: the broker's design today. A task per connection awaits its
//!   socket; glommio keeps a poll source (`Reactor::poll_read_ready`) for
//!   it while it waits. The task's future (printed as `future_bytes`) is
//!   padded to about the size of the broker's `serve` future over TCP
//!   (408 bytes;
//!   `net::tests::connection_tasks_are_sized_by_serving_not_by_their_handshakes`).
//! * `parked`: no task and no glommio source while a connection is idle.
//!   Its socket is registered with one epoll instance (EPOLLONESHOT); a
//!   thread waits on it and sends the ready connections' tokens to the
//!   shard over a glommio shared channel; one task per shard reads them.
//!   An idle connection is a slot in a table (its fd and nothing else).
//!
//! ```text
//! cargo run --release --example idle_parking -- tasks 15000
//! cargo run --release --example idle_parking -- parked 15000
//! ```
//!
//! Each run starts a child process holding N idle connections (one short
//! hello each, so every connection has been read once, as a CONNECT would
//! be), and prints the server's RSS growth per connection. The kernel's own
//! memory per socket and per epoll registration is not in the RSS of
//! either design.

use futures_lite::AsyncReadExt;
use glommio::channels::shared_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command};
use std::rc::Rc;
use std::time::Duration;

const HELLO: &[u8] = b"hello";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("clients") => clients(&args[2], args[3].parse()?),
        Some(mode @ ("tasks" | "parked")) => {
            let n: usize = args.get(2).map_or(Ok(15_000), |n| n.parse())?;
            server(mode == "parked", n)
        }
        _ => Err("usage: idle_parking tasks|parked [N]".into()),
    }
}

/// The child: connects `n` sockets to `addr`, says hello on each, then
/// holds them until its stdin closes.
fn clients(addr: &str, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.write_all(HELLO)?;
        held.push(stream);
    }
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0)
}

fn server(parked: bool, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (ready_tx, ready_rx) = shared_channel::new_bounded::<u64>(4096);
    let epoll = if parked { Some(Rc::new(epoll_instance()?)) } else { None };
    if let Some(epoll) = &epoll {
        let fd = epoll.try_clone()?;
        std::thread::spawn(move || wait_for_readiness(fd, ready_tx));
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound).make()?;
    executor.run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let parking = Rc::new(RefCell::new(Vec::<Option<OwnedFd>>::with_capacity(n)));
        if let Some(epoll) = &epoll {
            glommio::spawn_local(serve_ready(ready_rx, Rc::clone(&parking), Rc::clone(epoll)))
                .detach();
        }
        // Let the readiness thread's executor finish starting.
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let before = rss_kib();
        let mut child = spawn_clients(&addr, n);
        let served = Rc::new(std::cell::Cell::new(0usize));
        let future_size = std::cell::Cell::new(0);
        for _ in 0..n {
            let stream = listener.accept().await.expect("accept");
            match &epoll {
                Some(epoll) => park(stream, &parking, epoll, &served).await,
                None => {
                    let served = Rc::clone(&served);
                    let task = serve_task(stream, served);
                    future_size.set(std::mem::size_of_val(&task));
                    glommio::spawn_local(task).detach();
                }
            }
        }
        while served.get() < n {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let with = rss_kib();
        let design = if parked { "parked" } else { "tasks" };
        println!(
            "design={design} connections={n} future_bytes={} rss_before_kib={before} \
             rss_with_kib={with} bytes_per_idle_connection={}",
            future_size.get(),
            (with.saturating_sub(before)) * 1024 / n as u64
        );
        drop(child.stdin.take());
        let _ = child.wait();
    });
    Ok(())
}

fn spawn_clients(addr: &str, n: usize) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args(["clients", addr, &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("client process")
}

/// The design of today: a task per connection, awaiting its socket.
async fn serve_task(mut stream: TcpStream, served: Rc<std::cell::Cell<usize>>) {
    // State held across the awaits, as the broker's connection holds its
    // own: makes the future about as large as `serve`'s (the stream and
    // the buffer below are in both).
    let state = [0u8; 256];
    let mut buf = [0u8; 64];
    let mut first = true;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) if first => {
                first = false;
                served.set(served.get() + 1);
            }
            Ok(_) => {}
        }
    }
    std::hint::black_box(&state);
}

/// The parked design: read the hello, then give the socket to epoll and
/// drop glommio's stream (and with it its poll source and task).
async fn park(
    mut stream: TcpStream,
    parking: &Rc<RefCell<Vec<Option<OwnedFd>>>>,
    epoll: &OwnedFd,
    served: &Rc<std::cell::Cell<usize>>,
) {
    let mut buf = [0u8; 64];
    if !matches!(stream.read(&mut buf).await, Ok(1..)) {
        return;
    }
    // SAFETY: the fd belongs to `stream`, alive for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let Ok(owned) = fd.try_clone_to_owned() else { return };
    drop(stream);
    let mut table = parking.borrow_mut();
    let token = table.len() as u64;
    if arm(epoll, &owned, token, libc::EPOLL_CTL_ADD).is_ok() {
        table.push(Some(owned));
        served.set(served.get() + 1);
    }
}

/// One task per shard: reads each connection the epoll thread found
/// ready, and parks it again.
async fn serve_ready(
    ready: shared_channel::SharedReceiver<u64>,
    parking: Rc<RefCell<Vec<Option<OwnedFd>>>>,
    epoll: Rc<OwnedFd>,
) {
    let ready = ready.connect().await;
    let mut buf = [0u8; 64];
    while let Some(token) = ready.recv().await {
        let mut table = parking.borrow_mut();
        let Some(slot) = table.get_mut(token as usize) else { continue };
        let Some(fd) = slot.as_ref() else { continue };
        // SAFETY: `buf` is valid for its length; the fd is open.
        let n = unsafe {
            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
        };
        let would_block = std::io::ErrorKind::WouldBlock;
        let gone = n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != would_block);
        if gone || arm(&epoll, fd, token, libc::EPOLL_CTL_MOD).is_err() {
            *slot = None;
        }
    }
}

fn epoll_instance() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Registers (or re-arms) `fd` for one readiness report.
fn arm(epoll: &OwnedFd, fd: &OwnedFd, token: u64, op: libc::c_int) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
        u64: token,
    };
    // SAFETY: both fds are open; `event` is valid for the call.
    let result = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd.as_raw_fd(), &mut event) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The readiness thread: blocks in epoll_wait and sends what is ready to
/// the shard.
fn wait_for_readiness(epoll: OwnedFd, to_shard: shared_channel::SharedSender<u64>) {
    let executor = LocalExecutorBuilder::new(Placement::Unbound).make().expect("executor");
    executor.run(async move {
        let to_shard = to_shard.connect().await;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: `events` is valid for its length.
            let n = unsafe {
                libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 100)
            };
            for event in events.iter().take(n.max(0) as usize) {
                if to_shard.send(event.u64).await.is_err() {
                    return;
                }
            }
        }
    });
}
