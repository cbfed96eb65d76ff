//! SIGINT and SIGTERM start a graceful shutdown. The signals are blocked in
//! every thread and taken synchronously by one watcher thread, which stops
//! the listeners and sets a flag the shards poll; no signal handler runs
//! inside an executor.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread
/// it spawns afterwards) and starts the watcher thread. On the first
/// signal the watcher calls `on_first` (the broker stops accepting), then
/// turns the returned flag true; a second signal exits at once.
pub fn watch_shutdown_signals(on_first: impl Fn() + Send + 'static) -> io::Result<Arc<AtomicBool>> {
    let set = shutdown_signals();
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let flag = Arc::new(AtomicBool::new(false));
    let raised = Arc::clone(&flag);
    std::thread::Builder::new().name("ringmq-signals".into()).spawn(move || loop {
        let mut signal = 0;
        // SAFETY: sigwait reads `set` and writes one int.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        if raised.load(Ordering::SeqCst) {
            tracing::warn!(signal, "second signal: exiting immediately");
            std::process::exit(130);
        }
        tracing::info!(signal, "shutting down");
        on_first();
        raised.store(true, Ordering::SeqCst);
    })?;
    Ok(flag)
}
