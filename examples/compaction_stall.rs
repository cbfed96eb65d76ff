//! Measures how long a compaction of a shard's log stalls the shard: one
//! shard holding SESSIONS persistent sessions with MESSAGES queued QoS 1
//! messages each (one subscription each, 64-byte payloads) and RETAINED
//! retained messages (default 0), its log in DIR (a new directory, on the
//! disk to measure), `durability = always`.
//! A task that sleeps 1 ms in a loop records the longest time it waited
//! to run again, first for a second without compaction, then while the
//! shard compacts its log, as the broker does when its writer asks:
//!
//! ```text
//! cargo run --release --example compaction_stall -- /tmp/ringmq-stall 100000 10 [RETAINED]
//! ```
//!
//! Every connection of a shard runs on its executor, so the longest wait
//! of that task is the longest stall of message flow the compaction causes
//! (on a busy machine other processes add to it: the longest step of the
//! shard, also printed, is the compaction's own part).

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use ringmq::config::Durability;
use ringmq::message::Message;
use ringmq::protocol::{
    BoxedPublishProperties, QoS, SubscriptionIds, SubscriptionOptions, TopicFilter, TopicName,
};
use ringmq::router::{Outbox, ShardId};
use ringmq::session::SessionLimits;
use ringmq::shard::{CompactionStep, Shard, SLICE_RECORDS};
use ringmq::store::{
    LiveState, Log, SessionState, StoreOptions, StoredEntry, StoredSession, StoredSubscription,
};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, sessions, messages, retained) = match args.as_slice() {
        [_, dir, sessions, messages] => (dir, sessions, messages, "0"),
        [_, dir, sessions, messages, retained] => (dir, sessions, messages, retained.as_str()),
        _ => {
            return Err(
                "usage: compaction_stall DIR SESSIONS MESSAGES_PER_SESSION [RETAINED]".into()
            )
        }
    };
    let dir = PathBuf::from(dir);
    if dir.exists() {
        return Err(format!("{} exists: give a new directory", dir.display()).into());
    }
    let state = live_state(sessions.parse()?, messages.parse()?, retained.parse()?)?;
    LocalExecutorBuilder::default()
        .spawn(move || measure(dir, state))?
        .join()
        .map_err(|error| error.to_string())??;
    Ok(())
}

/// The sessions and retained messages, built as a log replay would hand
/// them to the shard.
fn live_state(
    sessions: u64,
    messages: u64,
    retained: u64,
) -> Result<LiveState, Box<dyn std::error::Error>> {
    let mut state = SessionState::default();
    let payload = Bytes::from(vec![b'x'; 64]);
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let mut mid = 1;
    for i in 0..sessions {
        let mut session =
            StoredSession::new(format!("gen-{i}").into(), Some(Duration::from_secs(86_400)));
        let filter = TopicFilter::new(format!("gen/{i}/#"))?;
        session.subscriptions.insert(filter, StoredSubscription { options, identifier: None });
        for j in 0..messages {
            let message = Message {
                topic: TopicName::new(format!("gen/{i}/{j}"))?,
                payload: payload.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: BoxedPublishProperties::none(),
                publisher: Some("generator".into()),
                expires_at: None,
                id: 0,
            };
            state.messages.insert(mid, Arc::new(message));
            session.queue.push(StoredEntry {
                mid,
                qos: QoS::AtLeastOnce,
                retain: false,
                from_retained: false,
                subscription_ids: SubscriptionIds::new(),
            });
            mid += 1;
        }
        state.sessions.insert(i + 1, session);
    }
    state.next_sid = sessions + 1;
    state.next_mid = mid;
    let mut live = LiveState { sessions: state, ..LiveState::default() };
    for i in 0..retained {
        let topic = TopicName::new(format!("retained/{}/{i}", i % 1000))?;
        let message = Message {
            topic: topic.clone(),
            payload: payload.clone(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: Some("generator".into()),
            expires_at: None,
            id: 0,
        };
        live.retained.insert(topic, Arc::new(message));
    }
    Ok(live)
}

async fn measure(dir: PathBuf, state: LiveState) -> Result<(), String> {
    let log = Rc::new(Log::new());
    let options = StoreOptions::new(Durability::Always);
    let opened = ringmq::store::open(&dir, 0, 1, options, &log).await.map_err(|e| e.to_string())?;
    let id = ShardId::from_index(0).ok_or("shard 0")?;
    let limits = SessionLimits { max_queued_messages: 1_000_000, ..SessionLimits::default() };
    let shard = Rc::new(RefCell::new(Shard::new(id, 1, limits, Rc::new(Outbox::new(1)), 0)));
    let loaded = Instant::now();
    shard.borrow_mut().attach_log(Rc::clone(&log), state, Instant::now());
    println!("sessions loaded in {:?}", loaded.elapsed());
    glommio::spawn_local(opened.writer.run(Rc::clone(&log))).detach();
    // What `shard::compact_when_asked` does, with each step timed.
    let longest_step = Rc::new(Cell::new(Duration::ZERO));
    {
        let (shard, log, longest_step) =
            (Rc::clone(&shard), Rc::clone(&log), Rc::clone(&longest_step));
        glommio::spawn_local(async move {
            log.compaction_wanted().await;
            shard.borrow_mut().begin_compaction();
            loop {
                let started = Instant::now();
                let step = shard.borrow_mut().compaction_step(Instant::now(), SLICE_RECORDS);
                longest_step.set(longest_step.get().max(started.elapsed()));
                let Some(CompactionStep { last, done }) = step else { break };
                log.durable(last).await;
                if done {
                    break;
                }
            }
        })
        .detach();
    }
    // The first timer sleeps of an executor are slow (see design.md).
    for _ in 0..20 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let idle = longest_wait(Duration::from_secs(1), || false).await;
    println!("idle: longest wait of a 1 ms sleeper {idle:?}");
    let started = Instant::now();
    log.request_compaction();
    let done = Rc::new(Cell::new(false));
    let watch = {
        let (log, done) = (Rc::clone(&log), Rc::clone(&done));
        glommio::spawn_local(async move {
            while log.counters().compactions == 0 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            done.set(true);
        })
    };
    let stall = longest_wait(Duration::from_secs(3600), || done.get()).await;
    watch.await;
    let counters = log.counters();
    println!(
        "compaction: {:?}, longest wait of a 1 ms sleeper {stall:?}, {} bytes written, {} syncs",
        started.elapsed(),
        counters.bytes_written,
        counters.syncs
    );
    println!("longest step of the shard: {:?}", longest_step.get());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Sleeps 1 ms at a time until `over` or `limit`; the longest sleep.
async fn longest_wait(limit: Duration, over: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    let mut longest = Duration::ZERO;
    while !over() && start.elapsed() < limit {
        let before = Instant::now();
        glommio::timer::sleep(Duration::from_millis(1)).await;
        longest = longest.max(before.elapsed());
    }
    longest
}
