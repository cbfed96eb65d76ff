//! Checks made before any executor starts, so that a machine that cannot
//! run ringmq gets a one-line explanation instead of a panic: io_uring
//! availability, the locked-memory limit, and the CPUs this process may use;
//! and what it can run with but should warn about (more shards than CPUs,
//! an open-files limit below `max_connections`).

use std::io;

/// Memory each executor registers for io_uring buffers. ringmq does no DMA
/// file IO yet, so a small amount is enough, and it keeps the locked-memory
/// need within the defaults of most machines.
pub const IO_MEMORY_PER_SHARD: usize = 512 * 1024;

/// The locked memory glommio needs per executor for its rings.
const MEMLOCK_PER_SHARD: u64 = 512 * 1024;

/// Why the broker cannot start on this machine.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// io_uring is missing or forbidden.
    #[error(
        "io_uring is not available ({0}); ringmq needs it: use Linux 5.8 or newer, \
         set sysctl kernel.io_uring_disabled=0, and in a container allow the io_uring_* \
         syscalls (e.g. docker run --security-opt seccomp=unconfined)"
    )]
    IoUringUnavailable(io::Error),
    /// RLIMIT_MEMLOCK is too small and cannot be raised.
    #[error(
        "the locked-memory limit is {have} bytes but {need} are needed for {shards} shard(s); \
         raise it (ulimit -l, or LimitMEMLOCK= in the systemd unit) or use fewer shards"
    )]
    MemlockTooLow {
        /// Current hard limit.
        have: u64,
        /// What the shards need.
        need: u64,
        /// The shard count.
        shards: usize,
    },
    /// sched_getaffinity failed.
    #[error("cannot read the CPU affinity of the process: {0}")]
    Affinity(io::Error),
}

/// Creates and closes a tiny io_uring to see whether the kernel allows it.
pub fn check_io_uring() -> Result<(), PreflightError> {
    // io_uring_params is 120 bytes; the kernel only reads and writes it.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) writes at most
    // sizeof(struct io_uring_params) = 120 bytes into `params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(PreflightError::IoUringUnavailable(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a file descriptor this function just created.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Makes sure RLIMIT_MEMLOCK allows `shards` executors, raising the soft
/// limit up to the hard one if needed.
pub fn ensure_memlock(shards: usize) -> Result<(), PreflightError> {
    let need = MEMLOCK_PER_SHARD.saturating_mul(shards as u64);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        // Cannot tell: let glommio report what it finds.
        return Ok(());
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= need {
        return Ok(());
    }
    if limit.rlim_max != libc::RLIM_INFINITY && limit.rlim_max < need {
        return Err(PreflightError::MemlockTooLow { have: limit.rlim_max, need, shards });
    }
    let raised = libc::rlimit { rlim_cur: need, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        return Err(PreflightError::MemlockTooLow { have: limit.rlim_cur, need, shards });
    }
    Ok(())
}

/// The CPUs this process may run on: its affinity mask, which also
/// reflects a cgroup cpuset (containers, systemd CPUAffinity=, taskset).
pub fn allowed_cpus() -> Result<Vec<usize>, PreflightError> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(PreflightError::Affinity(io::Error::last_os_error()));
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set for indices below CPU_SETSIZE.
    Ok((0..max).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Raises the soft open-files limit towards what `max_connections` needs,
/// up to the hard limit (as `ensure_memlock` does for locked memory): the
/// soft limit is often 1024 where the hard one allows far more.
pub fn raise_open_files(max_connections: u64) {
    let need = open_files_needed(max_connections);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
        || limit.rlim_cur >= need
    {
        return;
    }
    let raised = libc::rlimit { rlim_cur: need.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads one rlimit struct. A failure leaves the limit
    // as it was, which `warnings` then reports.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
}

/// Descriptors for `max_connections` connections and the broker's own.
fn open_files_needed(max_connections: u64) -> u64 {
    max_connections.saturating_add(64)
}

/// What the broker can run with but should say at start: each a line to log
/// as a warning.
pub fn warnings(shards: usize, cpus: usize, max_connections: u64) -> Vec<String> {
    let mut lines = Vec::new();
    if shards > cpus {
        lines.push(format!(
            "{shards} shards on {cpus} CPU(s): shards share cores, so each one waits for the \
             others' turns (latency) and cross-shard hand-offs cost more; use shards = 0 (one \
             per CPU) unless you are testing"
        ));
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let need = open_files_needed(max_connections);
    if known && limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < need {
        lines.push(format!(
            "the open-files limit is {} but limits.max_connections is {max_connections}: \
             connections past the limit are refused by the kernel (accept fails with EMFILE); \
             raise it with `ulimit -n {need}` (systemd: LimitNOFILE={need}; the kernel's \
             ceiling is sysctl fs.nr_open) or lower limits.max_connections",
            limit.rlim_cur
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_shards_than_cpus_and_too_few_files_are_warned_about() {
        assert!(warnings(2, 2, 100).is_empty());
        let lines = warnings(4, 2, 100);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("4 shards on 2 CPU(s)"), "{}", lines[0]);
        let lines = warnings(1, 1, u64::from(u32::MAX));
        assert!(lines.iter().any(|line| line.contains("ulimit -n")), "{lines:?}");
    }

    #[test]
    fn this_process_has_cpus() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.len() <= std::thread::available_parallelism().unwrap().get().max(cpus.len()));
    }

    #[test]
    fn io_uring_is_available_here() {
        // The broker cannot run at all without it; this machine has it.
        check_io_uring().unwrap();
    }
}
