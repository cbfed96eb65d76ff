//! The verification pool: a few std threads that check passwords, so that
//! the milliseconds each check costs never stall a shard.
//!
//! A connection task submits its CONNECT's credentials with
//! [`Verifier::verify`] and awaits the [`Verdict`]; the pool thread stores
//! the answer and wakes the task's waker (glommio wakers may be woken from
//! a foreign thread). The queue is bounded: when it is full the CONNECT is
//! refused as busy at once rather than queued without limit, which also
//! bounds how many verifications a connect storm can start.
//!
//! A check that passes says which reloads' revocations it had seen
//! ([`Verified`]): a reload that revokes the user while the connection is
//! still on its way to its session must not let it in
//! ([`Verifier::revoked_after`]).

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
    /// every tick, so nothing is locked while no reload revoked anyone,
    /// and by the pool threads before each check ([`Verified`]).
    revoked_generation: Arc<AtomicU64>,
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
    /// `Some` once checked: `Some(Some(_))` when the password matched.
    verdict: Option<Option<Verified>>,
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
        let revoked_generation = Arc::new(AtomicU64::new(0));
        for n in 0..threads.max(1) {
            let (receiver, file) = (Arc::clone(&receiver), Arc::clone(&file));
            let (abandoned, generation) = (Arc::clone(&abandoned), Arc::clone(&revoked_generation));
            std::thread::Builder::new()
                .name(format!("ringmq-auth-{n}"))
                .spawn(move || work(&receiver, &file, &generation, &abandoned))?;
        }
        let revoked = Mutex::default();
        Ok(Self { jobs, file, revoked, revoked_generation, abandoned })
    }

    /// Checks from now on use `file` (a reload); checks already running
    /// finish with the previous one. The connections of the `revoked`
    /// users (removed, or whose password changed) are to be closed: see
    /// [`Verifier::revoked_since`].
    pub fn replace(&self, file: PasswordFile, revoked: Vec<String>) {
        // The file first, the generation after: a check that sees the new
        // generation checks against the new file (see `work`).
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

    /// Whether a reload after the check that gave `verified` revoked
    /// `user`: its password was checked against a file that no longer
    /// accepts it. One atomic load while no reload revoked anyone since.
    /// More reloads than [`REVOKED_KEPT`] since the check: `true`, as
    /// nothing tells that they spared the user.
    pub fn revoked_after(&self, verified: Verified, user: &str) -> bool {
        let seen = verified.revoked_seen;
        if self.revoked_generation.load(Ordering::Acquire) == seen {
            return false;
        }
        let lists = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        if lists.front().is_none_or(|&(oldest, _)| oldest > seen + 1) {
            return true;
        }
        let newer = lists.iter().filter(|(generation, _)| *generation > seen);
        newer.flat_map(|(_, users)| users.iter()).any(|revoked| revoked == user)
    }

    /// Queues a check of `password` for `user`; the verdict is
    /// `Some` when it matches.
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
fn work(
    receiver: &Mutex<Receiver<Job>>,
    file: &RwLock<Arc<PasswordFile>>,
    revoked_generation: &AtomicU64,
    abandoned: &AtomicU64,
) {
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
        // The generation before the file: `replace` stores them in the
        // other order, so every reload whose file this check does not see
        // is numbered above `revoked_seen` (one it sees may be too, for
        // the instant between the two stores: refused, the safe side).
        let revoked_seen = revoked_generation.load(Ordering::Acquire);
        // Held only to clone the pointer: a reload never waits on a check.
        let current = Arc::clone(&file.read().unwrap_or_else(PoisonError::into_inner));
        let verdict = current.verify(&job.user, &job.password);
        let waker = match job.reply.lock() {
            Ok(mut reply) => {
                reply.verdict = Some(verdict.then_some(Verified { revoked_seen }));
                reply.waker.take()
            }
            Err(_) => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The answer to one [`Verifier::verify`]: `Some` when the password
/// matches.
#[derive(Debug)]
pub struct Verdict {
    reply: Arc<Mutex<Reply>>,
}

/// A password that matched, and the reloads whose revocations its check
/// had seen: carried with the connection (across a hand-off too) to where
/// it is placed, which asks [`Verifier::revoked_after`] whether a later
/// reload revoked the user meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The revoked generation read before the check: every reload whose
    /// file the check did not see is numbered above it.
    revoked_seen: u64,
}

impl Future for Verdict {
    type Output = Option<Verified>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Verified>> {
        // A poisoned lock means a pool thread panicked mid-check: refuse.
        let Ok(mut reply) = self.reply.lock() else { return Poll::Ready(None) };
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
