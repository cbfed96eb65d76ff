//! Moving the retained messages and the persistent sessions to their new
//! home shards when the shard
//! count changed since the log was written (a start with another
//! `shards`, or `shards = 0` on a machine with more or fewer cores).
//!
//! Done once, on the main thread, before any shard starts, with plain
//! file IO (the whole log is read anyway):
//! 1. every old shard's log is replayed, and each live retained message
//!    goes to the shard its topic hashes to under the new count, each
//!    persistent session (with the messages it references) to the shard
//!    its client id hashes to;
//! 2. each new shard's state is written as a complete snapshot segment
//!    into `data_dir/reshard/shard-K/`, synced, and `reshard/COMPLETE`
//!    (holding the new count) is written and synced;
//! 3. the old `shard-*` directories are deleted, `reshard/MOVING` is
//!    written, and the new directories are renamed into place;
//! 4. `reshard/` is deleted.
//!
//! A crash at any step is finished or undone by the next start
//! ([`resume`]): without `COMPLETE` the staged copy is deleted and the old
//! log is still whole; with it, the move goes on (deleting the old
//! directories again unless `MOVING` says that is done).

use super::record::{self, Record, SegmentHeader, SegmentKind};
use super::recovery::{LiveState, Recovery};
use super::sessions::{SessionState, StoredEntry, StoredFlow};
use super::shard_dir;
use crate::message::wire::Clocks;
use crate::message::Message;
use crate::router::home_shard;
use hashbrown::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STAGING: &str = "reshard";
const COMPLETE: &str = "COMPLETE";
const MOVING: &str = "MOVING";

/// Finishes or undoes a move cut short by a crash. Returns the shard
/// count it finished a move to, if any.
pub(super) fn resume(path: &Path) -> io::Result<Option<usize>> {
    let staging = path.join(STAGING);
    if !staging.exists() {
        return Ok(None);
    }
    let Ok(count) = std::fs::read_to_string(staging.join(COMPLETE)) else {
        std::fs::remove_dir_all(&staging)?;
        sync_dir(path)?;
        return Ok(None);
    };
    let to = count.trim().parse().map_err(|_| io::Error::other("reshard/COMPLETE is damaged"))?;
    finish(path, to)?;
    Ok(Some(to))
}

/// Moves the retained messages and sessions of every `shard-*` directory
/// under `path` to their homes among `to` shards. Returns how many of each
/// were moved.
pub(super) fn reshard(path: &Path, to: usize) -> io::Result<(usize, usize)> {
    let staging = path.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir(&staging)?;
    let clocks = Clocks::read();
    let mut homes: Vec<Vec<Arc<Message>>> = vec![Vec::new(); to];
    let mut session_homes: Vec<SessionState> = vec![SessionState::default(); to];
    for dir in shard_dirs(path)? {
        let state = read_state(&dir, clocks)?;
        for (topic, message) in state.retained {
            homes[home_shard(topic.as_str().as_bytes(), to).index()].push(message);
        }
        move_sessions(state.sessions, &mut session_homes);
    }
    let moved = homes.iter().map(Vec::len).sum();
    let sessions = session_homes.iter().map(|state| state.sessions.len()).sum();
    for (shard, (messages, sessions)) in homes.iter().zip(&session_homes).enumerate() {
        write_snapshot(&shard_dir(&staging, shard), shard, to, messages, sessions, clocks)?;
    }
    let mut complete = File::create(staging.join(COMPLETE))?;
    complete.write_all(to.to_string().as_bytes())?;
    complete.sync_all()?;
    sync_dir(&staging)?;
    sync_dir(path)?;
    finish(path, to)?;
    Ok((moved, sessions))
}

/// Moves each session of one old shard to the new shard its client id
/// hashes to (as a connection is placed), renumbering it and the messages
/// it references in the new shard's numbers.
fn move_sessions(from: SessionState, to: &mut [SessionState]) {
    let count = to.len();
    // Old mid -> new mid, per new shard: a message queued to sessions that
    // land on one shard is still written once there.
    let mut renumbered: Vec<HashMap<u64, u64>> = vec![HashMap::new(); count];
    for (_, mut session) in from.sessions {
        let home = home_shard(session.client_id.as_bytes(), count).index();
        let (state, map) = (&mut to[home], &mut renumbered[home]);
        let mut renumber = |entry: &mut StoredEntry| {
            let Some(message) = from.messages.get(&entry.mid) else { return };
            entry.mid = *map.entry(entry.mid).or_insert_with(|| {
                let mid = state.next_mid;
                state.next_mid += 1;
                state.messages.insert(mid, Arc::clone(message));
                mid
            });
        };
        session.queue.iter_mut().for_each(&mut renumber);
        for (_, flow) in &mut session.inflight {
            if let StoredFlow::Sent(entry) = flow {
                renumber(entry);
            }
        }
        let sid = state.next_sid;
        state.next_sid += 1;
        state.sessions.insert(sid, session);
    }
}

/// Steps 3 and 4 (see the module documentation).
fn finish(path: &Path, to: usize) -> io::Result<()> {
    let staging = path.join(STAGING);
    if !staging.join(MOVING).exists() {
        for dir in shard_dirs(path)? {
            std::fs::remove_dir_all(dir)?;
        }
        sync_dir(path)?;
        File::create(staging.join(MOVING))?.sync_all()?;
        sync_dir(&staging)?;
    }
    for shard in 0..to {
        let staged = shard_dir(&staging, shard);
        if staged.exists() {
            std::fs::rename(staged, shard_dir(path, shard))?;
        }
    }
    sync_dir(path)?;
    std::fs::remove_dir_all(&staging)?;
    sync_dir(path)
}

/// The `shard-*` directories directly under `path`.
fn shard_dirs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let is_shard = entry.file_name().to_str().is_some_and(|name| name.starts_with("shard-"));
        if is_shard && entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Replays the segments of one shard directory.
fn read_state(dir: &Path, clocks: Clocks) -> io::Result<LiveState> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    // Zero-padded sequence numbers: the names sort in replay order.
    segments.sort();
    let mut recovery = Recovery::new(clocks);
    for segment in segments {
        let bytes = std::fs::read(&segment)?;
        recovery
            .handle_segment(&bytes)
            .map_err(|error| io::Error::other(format!("{}: {error}", segment.display())))?;
    }
    Ok(recovery.finish().0)
}

/// Writes `messages` as the complete snapshot segment that opens the log
/// of `shard` of `shards` in `dir`, synced.
fn write_snapshot(
    dir: &Path,
    shard: usize,
    shards: usize,
    messages: &[Arc<Message>],
    sessions: &SessionState,
    clocks: Clocks,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The configuration allows at most 256 shards.
    let header = SegmentHeader {
        kind: SegmentKind::Snapshot,
        shard: shard as u16,
        shards: shards as u16,
        sequence: 1,
    };
    let mut out = bytes::BytesMut::from(&header.encode()[..]);
    for message in messages {
        record::encode(&Record::RetainSet(Arc::clone(message)), clocks, &mut out)
            .map_err(|error| io::Error::other(error.to_string()))?;
    }
    let mut failed = None;
    sessions.snapshot_records(|record| {
        if let Err(error) = record::encode(&record, clocks, &mut out) {
            failed = Some(io::Error::other(error.to_string()));
        }
    });
    if let Some(error) = failed {
        return Err(error);
    }
    record::encode(&Record::SnapshotEnd, clocks, &mut out)
        .map_err(|error| io::Error::other(error.to_string()))?;
    let mut file = File::create(dir.join(format!("{:020}.seg", 1)))?;
    file.write_all(&out)?;
    file.sync_all()?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BoxedPublishProperties, QoS, TopicName};
    use bytes::Bytes;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringmq-reshard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: Bytes::copy_from_slice(topic.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: None,
            expires_at: None,
            id: 0,
        })
    }

    /// The log of 2 shards holding `t/0`..`t/39` at their homes, with `t/0`
    /// set and then deleted.
    fn two_shard_log(path: &Path) -> Vec<String> {
        let clocks = Clocks::read();
        let mut segments: Vec<bytes::BytesMut> = (0..2u16)
            .map(|shard| {
                let header =
                    SegmentHeader { kind: SegmentKind::Appends, shard, shards: 2, sequence: 1 };
                bytes::BytesMut::from(&header.encode()[..])
            })
            .collect();
        for i in 0..40 {
            let m = message(&format!("t/{i}"));
            let home = home_shard(m.topic.as_str().as_bytes(), 2).index();
            record::encode(&Record::RetainSet(m), clocks, &mut segments[home]).unwrap();
        }
        let deleted = TopicName::new("t/0").unwrap();
        let home = home_shard(b"t/0", 2).index();
        record::encode(&Record::RetainDelete(deleted), clocks, &mut segments[home]).unwrap();
        for (shard, segment) in segments.iter().enumerate() {
            std::fs::create_dir_all(shard_dir(path, shard)).unwrap();
            std::fs::write(shard_dir(path, shard).join(format!("{:020}.seg", 1)), segment).unwrap();
        }
        let mut topics: Vec<String> = (1..40).map(|i| format!("t/{i}")).collect();
        topics.sort();
        topics
    }

    /// Every shard's topics, checked to be at their homes among `shards`.
    fn topics_at_home(path: &Path, shards: usize) -> Vec<String> {
        let mut all = Vec::new();
        for shard in 0..shards {
            let state = read_state(&shard_dir(path, shard), Clocks::read()).unwrap();
            for topic in state.retained.keys() {
                assert_eq!(home_shard(topic.as_str().as_bytes(), shards).index(), shard);
                all.push(topic.to_string());
            }
        }
        all.sort();
        all
    }

    #[test]
    fn every_retained_message_moves_to_its_new_home() {
        let path = temp("move");
        let expected = two_shard_log(&path);
        assert_eq!(reshard(&path, 3).unwrap(), (39, 0));
        assert_eq!(topics_at_home(&path, 3), expected);
        assert!(!path.join(STAGING).exists());
        // And back to one shard: shard-1 and shard-2 are gone.
        assert_eq!(reshard(&path, 1).unwrap(), (39, 0));
        assert_eq!(topics_at_home(&path, 1), expected);
        assert!(!shard_dir(&path, 1).exists() && !shard_dir(&path, 2).exists());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_move_cut_short_is_undone_or_finished_by_the_next_start() {
        let path = temp("resume");
        let expected = two_shard_log(&path);
        // Cut short before COMPLETE: the staged copy goes, the old log stays.
        std::fs::create_dir_all(shard_dir(&path.join(STAGING), 0)).unwrap();
        assert_eq!(resume(&path).unwrap(), None);
        assert!(!path.join(STAGING).exists());
        assert_eq!(topics_at_home(&path, 2), expected);
        // Cut short while moving: one new directory moved, one still staged.
        let clocks = Clocks::read();
        let staging = path.join(STAGING);
        let mut homes: Vec<Vec<Arc<Message>>> = vec![Vec::new(); 3];
        for dir in shard_dirs(&path).unwrap() {
            for (topic, m) in read_state(&dir, clocks).unwrap().retained {
                homes[home_shard(topic.as_str().as_bytes(), 3).index()].push(m);
            }
        }
        for (shard, messages) in homes.iter().enumerate() {
            let sessions = SessionState::default();
            write_snapshot(&shard_dir(&staging, shard), shard, 3, messages, &sessions, clocks)
                .unwrap();
        }
        std::fs::write(staging.join(COMPLETE), "3").unwrap();
        for dir in shard_dirs(&path).unwrap() {
            std::fs::remove_dir_all(dir).unwrap();
        }
        std::fs::write(staging.join(MOVING), "").unwrap();
        std::fs::rename(shard_dir(&staging, 0), shard_dir(&path, 0)).unwrap();
        assert_eq!(resume(&path).unwrap(), Some(3));
        assert_eq!(topics_at_home(&path, 3), expected);
        assert!(!staging.exists());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn sessions_move_to_the_shard_their_client_id_hashes_to_with_their_messages() {
        use crate::store::sessions::{StoredEntry, StoredSession};
        let entry = |mid| StoredEntry {
            mid,
            qos: QoS::AtLeastOnce,
            retain: false,
            from_retained: false,
            subscription_ids: Default::default(),
        };
        // Two old shards whose message numbers collide.
        let old: Vec<SessionState> = (0..2u8)
            .map(|shard| {
                let mut state = SessionState::default();
                for i in 0..20u64 {
                    let mut session = StoredSession::new(format!("c{shard}-{i}").into(), None);
                    session.queue = vec![entry(1), entry(2)];
                    state.sessions.insert(i + 1, session);
                }
                state.messages.insert(1, message(&format!("old{shard}/1")));
                state.messages.insert(2, message(&format!("old{shard}/2")));
                state
            })
            .collect();
        let mut new = vec![SessionState::default(); 3];
        for state in old {
            move_sessions(state, &mut new);
        }
        let mut moved = 0;
        for (shard, state) in new.iter().enumerate() {
            for session in state.sessions.values() {
                moved += 1;
                assert_eq!(home_shard(session.client_id.as_bytes(), 3).index(), shard);
                let origin = &session.client_id[1..2];
                let topics: Vec<String> = session
                    .queue
                    .iter()
                    .map(|e| state.messages[&e.mid].topic.to_string())
                    .collect();
                assert_eq!(topics, vec![format!("old{origin}/1"), format!("old{origin}/2")]);
            }
            // Each message once per new shard, whatever number of sessions
            // reference it there.
            assert!(state.messages.len() <= 4, "{}", state.messages.len());
        }
        assert_eq!(moved, 40);
    }
}
