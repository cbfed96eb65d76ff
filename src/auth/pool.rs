//! The verification pool: a few std threads that check passwords, so that
//! the milliseconds each check costs never stall a shard.
//!
//! A connection task submits its CONNECT's credentials with
//! [`Verifier::verify`] and awaits the [`Verdict`]; the pool thread stores
//! the answer and wakes the task's waker (glommio wakers may be woken from
//! a foreign thread). The queue is bounded: when it is full the CONNECT is
//! refused as busy at once rather than queued without limit, which also
//! bounds how many verifications a connect storm can start.

use super::PasswordFile;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};

/// Hands password checks to the pool threads; shared by every shard.
#[derive(Debug)]
pub struct Verifier {
    jobs: SyncSender<Job>,
    /// The file the threads check against; replaced by a reload
    /// ([`Verifier::replace`]). Locked by the pool threads only (and the
    /// reload), never by a shard.
    file: Arc<RwLock<Arc<PasswordFile>>>,
    /// The users each reload revoked (removed, or their password
    /// changed), numbered from 1, the last [`REVOKED_KEPT`] reloads: the
    /// shards close their connections ([`Verifier::revoked_since`]).
    revoked: Mutex<VecDeque<(u64, Arc<[String]>)>>,
    /// The number of the last list in `revoked`; read by every shard at
    /// every tick, so nothing is locked while no reload revoked anyone.
    revoked_generation: AtomicU64,
    /// Checks skipped because their connection had stopped waiting.
    abandoned: Arc<AtomicU64>,
}

/// How many reloads' revoked users are kept for shards that have not
/// looked yet (each looks at every tick: one would do).
const REVOKED_KEPT: usize = 16;

/// One check to do.
struct Job {
    user: String,
    password: Vec<u8>,
    reply: Arc<Mutex<Reply>>,
}

/// Where a pool thread leaves the answer for the waiting task.
#[derive(Default)]
struct Reply {
    verdict: Option<bool>,
    waker: Option<Waker>,
}

/// The pool's queue is full: too many CONNECTs are waiting for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Verifier {
    /// Starts `threads` threads (at least one) checking against `file`, with
    /// at most `queue` checks waiting beyond those running.
    pub fn start(file: PasswordFile, threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::sync_channel(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let file = Arc::new(RwLock::new(Arc::new(file)));
        let abandoned = Arc::new(AtomicU64::new(0));
        for n in 0..threads.max(1) {
            let (receiver, file) = (Arc::clone(&receiver), Arc::clone(&file));
            let abandoned = Arc::clone(&abandoned);
            std::thread::Builder::new()
                .name(format!("ringmq-auth-{n}"))
                .spawn(move || work(&receiver, &file, &abandoned))?;
        }
        let (revoked, revoked_generation) = (Mutex::default(), AtomicU64::new(0));
        Ok(Self { jobs, file, revoked, revoked_generation, abandoned })
    }

    /// Checks from now on use `file` (a reload); checks already running
    /// finish with the previous one. The connections of the `revoked`
    /// users (removed, or whose password changed) are to be closed: see
    /// [`Verifier::revoked_since`].
    pub fn replace(&self, file: PasswordFile, revoked: Vec<String>) {
        *self.file.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(file);
        if revoked.is_empty() {
            return;
        }
        let mut lists = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.revoked_generation.load(Ordering::Acquire) + 1;
        lists.push_back((generation, revoked.into()));
        if lists.len() > REVOKED_KEPT {
            lists.pop_front();
        }
        self.revoked_generation.store(generation, Ordering::Release);
    }

    /// How many checks were skipped because their connection had stopped
    /// waiting for the verdict.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// The users revoked by the reloads after the one numbered `seen` (0:
    /// none seen yet), and the number of the last; `None` (one atomic
    /// load) when there was none.
    pub fn revoked_since(&self, seen: u64) -> Option<(u64, Vec<String>)> {
        if self.revoked_generation.load(Ordering::Acquire) == seen {
            return None;
        }
        let lists = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        let users = lists.iter().filter(|(generation, _)| *generation > seen);
        let users = users.flat_map(|(_, users)| users.iter().cloned()).collect();
        Some((lists.back().map_or(seen, |&(generation, _)| generation), users))
    }

    /// Queues a check of `password` for `user`; the verdict is `true` when
    /// it matches.
    pub fn verify(&self, user: &str, password: &[u8]) -> Result<Verdict, Busy> {
        let reply = Arc::new(Mutex::new(Reply::default()));
        let job =
            Job { user: user.to_owned(), password: password.to_vec(), reply: Arc::clone(&reply) };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Verdict { reply }),
            // Disconnected: every pool thread is gone (cannot happen unless
            // one panicked); refusing is the safe answer.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A pool thread: checks jobs until the [`Verifier`] is dropped.
fn work(receiver: &Mutex<Receiver<Job>>, file: &RwLock<Arc<PasswordFile>>, abandoned: &AtomicU64) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // The connection stopped waiting (its connect timeout passed, or it
        // closed): in a connect storm the queue fills with such checks,
        // each ~24 ms of argon2id, and running them would push the waiting
        // ones past their own deadline in turn.
        if Arc::strong_count(&job.reply) == 1 {
            abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Held only to clone the pointer: a reload never waits on a check.
        let current = Arc::clone(&file.read().unwrap_or_else(PoisonError::into_inner));
        let verdict = current.verify(&job.user, &job.password);
        let waker = match job.reply.lock() {
            Ok(mut reply) => {
                reply.verdict = Some(verdict);
                reply.waker.take()
            }
            Err(_) => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The answer to one [`Verifier::verify`]: `true` when the password matches.
#[derive(Debug)]
pub struct Verdict {
    reply: Arc<Mutex<Reply>>,
}

impl Future for Verdict {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        // A poisoned lock means a pool thread panicked mid-check: refuse.
        let Ok(mut reply) = self.reply.lock() else { return Poll::Ready(false) };
        match reply.verdict {
            Some(verdict) => Poll::Ready(verdict),
            None => {
                reply.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").field("verdict", &self.verdict).finish_non_exhaustive()
    }
}
