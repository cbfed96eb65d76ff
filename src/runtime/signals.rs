//! SIGINT and SIGTERM start a graceful shutdown; SIGHUP reloads the
//! configuration. The signals are blocked in every thread and taken
//! synchronously by one watcher thread, which stops the listeners and sets
//! a flag the shards poll, or runs the reload; no signal handler runs
//! inside an executor.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn watched_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in
/// every thread it spawns afterwards) and starts the watcher thread. On
/// the first SIGINT or SIGTERM the watcher calls `on_first` (the broker
/// stops accepting), then turns the returned flag true; a second one exits
/// at once. Each SIGHUP calls `on_reload`, on the watcher thread.
pub fn watch_signals(
    on_first: impl Fn() + Send + 'static,
    mut on_reload: impl FnMut() + Send + 'static,
) -> io::Result<Arc<AtomicBool>> {
    let set = watched_signals();
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
        if signal == libc::SIGHUP {
            on_reload();
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
