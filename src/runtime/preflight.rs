//! Checks made before any executor starts, so that a machine that cannot
//! run ringmq gets a one-line explanation instead of a panic: io_uring
//! availability, the locked-memory limit, and the CPUs this process may use.

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

#[cfg(test)]
mod tests {
    use super::*;

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
