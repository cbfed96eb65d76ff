//! The files of a shard's log, on glommio's DMA file I/O (io_uring,
//! O_DIRECT, aligned buffers): recovery at start, group commit, segment
//! rotation and compaction. The only code of [`crate::store`] that does IO.
//!
//! * Files: `shard-K/SEQUENCE.seg` (20 digits), replayed in sequence order.
//! * Group commit: the writer task takes every entry queued since it last
//!   ran (all the appends of one executor turn, plus those that came
//!   while the previous write was in flight), writes them with one
//!   io_uring write per MiB and then tells the [`Log`] they are durable.
//!   With `durability = "always"` every segment is opened with O_DSYNC, so
//!   a write is durable when it completes (data and the metadata needed to
//!   read it back, as an fdatasync would make them): one operation per
//!   commit instead of a write and an fdatasync, each of which waited for a
//!   turn of the executor (QoS 1 fan-in to a persistent subscriber at
//!   `always`: 185k -> about 203k msg/s, see CHANGELOG). With
//!   `"interval"` the writes are plain and an fdatasync runs at most once
//!   per `fsync_interval_ms`.
//! * The last, partial block of the file is kept in memory and rewritten,
//!   padded with zeros, by the next write: recovery reads zeros after the
//!   last record as padding, not damage.
//! * A segment past `segment_bytes` is synced and closed, and the next
//!   one opened.
//! * Compaction, when the bytes appended since the last snapshot exceed
//!   both `compact_min_bytes` and the size of the log after that snapshot:
//!   the writer asks ([`Log::request_compaction`]) and the shard starts one
//!   ([`Entry::CompactionStart`]): the writer syncs the current segment
//!   (sequence k) and opens a compaction segment (k+1) for everything
//!   that follows. The shard then appends its live state in bounded slices
//!   between the records of its normal traffic (see `shard::compaction`),
//!   so no turn of its executor copies more than a slice; at
//!   [`Entry::CompactionEnd`] the writer appends the snapshot end, syncs
//!   it, and only then deletes every segment up to k. Segments do not
//!   rotate meanwhile, so the snapshot end is in the segment it completes.
//!   A crash at any step leaves either the old segments and the
//!   compaction segment read as appends after them, or the complete
//!   snapshot (see `recovery`).
//! * A failed write or sync (disk full, EIO) is logged once (one line per
//!   shard and episode), counted, and retried every second with the same
//!   bytes until it succeeds; records wait in memory meanwhile and their
//!   durability futures stay pending. Meanwhile [`Log::is_failing`] says
//!   so, and the broker refuses new QoS 1/2 publishes (see `shard`); the
//!   first write that succeeds clears it and logs one line.
//! * At shutdown ([`Log::close`]) a write or sync that still fails is not
//!   retried again: the writer ends, logging how many records were not made
//!   durable, so a stop with a full disk takes at most one more retry.

use super::log::{Entry, Log};
use super::record::{self, HeaderError, Record, SegmentHeader, SegmentKind};
use super::recovery::{LiveState, Recovery, RecoveryStats};
use crate::config::Durability;
use crate::message::wire::Clocks;
use bytes::BytesMut;
use glommio::io::{DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes written by one io_uring write at most.
const CHUNK: usize = 1 << 20;

/// How long a failed write or sync waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How a shard's log is written.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// `"always"` or `"interval"` (a [`Durability::None`] broker opens no
    /// log).
    pub durability: Durability,
    /// A segment is closed and the next one opened past this size.
    pub segment_bytes: u64,
    /// Compaction waits until at least this much was appended since the
    /// last snapshot.
    pub compact_min_bytes: u64,
}

impl StoreOptions {
    /// Segments of 64 MiB; compaction after 64 MiB of appends at least.
    pub fn new(durability: Durability) -> Self {
        Self { durability, segment_bytes: 64 << 20, compact_min_bytes: 64 << 20 }
    }
}

/// Why a shard's log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
    /// A segment this build cannot read.
    #[error("{}: {error}; move the directory away to start empty", path.display())]
    Header {
        /// The segment.
        path: PathBuf,
        /// What is wrong with its header.
        error: HeaderError,
    },
    /// A segment of another shard, or written with another shard count.
    #[error(
        "{}: written by shard {found_shard} of {found_shards}, but it is in the directory of \
         shard {shard} of {shards}",
        path.display()
    )]
    Foreign {
        /// The segment.
        path: PathBuf,
        /// The shard and shard count its header names.
        found_shard: u16,
        /// See `found_shard`.
        found_shards: u16,
        /// The shard opening it.
        shard: u16,
        /// The shard count now.
        shards: u16,
    },
}

/// A shard's log, recovered and open for appends.
#[derive(Debug)]
pub struct Opened {
    /// The state the log holds.
    pub state: LiveState,
    /// What recovery found.
    pub stats: RecoveryStats,
    /// The writer, to run as a task with [`Writer::run`].
    pub writer: Writer,
}

/// A segment file no longer written.
#[derive(Debug)]
struct Closed {
    path: PathBuf,
    bytes: u64,
}

/// The segment being written.
#[derive(Debug)]
struct Segment {
    file: DmaFile,
    path: PathBuf,
    sequence: u64,
    /// Bytes in the file, header included, padding not.
    len: u64,
    /// The bytes of the last, partial block (`len` rounded down to the
    /// alignment, up to `len`): rewritten with the next write.
    tail: Vec<u8>,
    /// Opened with O_DSYNC: each write is durable once it completes.
    dsync: bool,
}

/// Writes a shard's log (see the module documentation).
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    shard: u16,
    shards: u16,
    options: StoreOptions,
    /// Older segments, oldest first: deleted by the next compaction.
    older: Vec<Closed>,
    current: Segment,
    /// Bytes of the log after the last snapshot (or at start).
    base_bytes: u64,
    /// Bytes appended since.
    appended: u64,
    /// Whether the shard was asked for a compaction that has not ended.
    compaction_asked: bool,
    /// Between [`Entry::CompactionStart`] and [`Entry::CompactionEnd`]:
    /// the current segment is the compaction segment.
    compacting: bool,
    last_sync: Instant,
    /// Whether writes are failing (logged once per episode).
    failing: bool,
    scratch: BytesMut,
}

fn io_error(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> StoreError + '_ {
    move |error| StoreError::Io { path: path.to_owned(), error: error.into() }
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}.seg"))
}

/// Recovers the log in `dir` (created if missing) for shard `shard` of
/// `shards`: replays every segment, cuts torn tails off (logged, one line
/// each, and counted in `log`), deletes what a complete snapshot
/// superseded, and opens a new segment for appends.
pub async fn open(
    dir: &Path,
    shard: u16,
    shards: u16,
    options: StoreOptions,
    log: &Log,
) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(dir).map_err(|error| StoreError::Io { path: dir.to_owned(), error })?;
    let mut sequences: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|error| StoreError::Io { path: dir.to_owned(), error })?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let name = name.to_str()?.strip_suffix(".seg")?;
            (name.len() == 20).then(|| name.parse().ok()).flatten()
        })
        .collect();
    sequences.sort_unstable();
    let mut recovery = Recovery::new(Clocks::read());
    let mut found = Vec::with_capacity(sequences.len());
    for &sequence in &sequences {
        let path = segment_path(dir, sequence);
        // Read with a plain read(2): this happens once, before the shard
        // serves anyone, and glommio's DMA reads fail with EOPNOTSUPP on
        // some virtual disks where its writes work.
        let bytes =
            std::fs::read(&path).map_err(|error| StoreError::Io { path: path.clone(), error })?;
        let size = bytes.len() as u64;
        let outcome = recovery
            .handle_segment(&bytes)
            .map_err(|error| StoreError::Header { path: path.clone(), error })?;
        if let Some(header) = outcome.header {
            if header.shard != shard || header.shards != shards {
                return Err(StoreError::Foreign {
                    path,
                    found_shard: header.shard,
                    found_shards: header.shards,
                    shard,
                    shards,
                });
            }
        }
        found.push((sequence, path, outcome, size));
    }
    let (state, stats) = recovery.finish();
    log.count(|c| {
        c.records_recovered += stats.records;
        c.torn_tails += stats.torn_tails;
        c.torn_bytes += stats.torn_bytes;
    });
    let last_snapshot = found
        .iter()
        .filter(|(_, _, outcome, _)| outcome.complete_snapshot)
        .map(|(sequence, ..)| *sequence)
        .max();
    let mut older = Vec::new();
    for (sequence, path, outcome, size) in found {
        let incomplete_snapshot = outcome
            .header
            .is_some_and(|h| h.kind == SegmentKind::Snapshot && !outcome.complete_snapshot);
        if outcome.torn_bytes > 0 {
            tracing::warn!(
                shard,
                segment = %path.display(),
                offset = outcome.valid_len,
                torn_bytes = outcome.torn_bytes,
                records_kept = outcome.records,
                "log segment had a torn or damaged tail (a crash while writing, or damage); \
                 cut off"
            );
        }
        let superseded = last_snapshot.is_some_and(|snapshot| sequence < snapshot);
        // Each start opens a segment; one that got no record holds
        // nothing to replay.
        let empty = outcome.records == 0 && outcome.torn_bytes == 0;
        if outcome.header.is_none() || incomplete_snapshot || superseded || empty {
            glommio::io::remove(&path).await.map_err(io_error(&path))?;
            continue;
        }
        if size > outcome.valid_len as u64 {
            let file =
                OpenOptions::new().write(true).dma_open(&path).await.map_err(io_error(&path))?;
            file.truncate(outcome.valid_len as u64).await.map_err(io_error(&path))?;
            file.fdatasync().await.map_err(io_error(&path))?;
            let _ = file.close().await;
        }
        older.push(Closed { path, bytes: outcome.valid_len as u64 });
    }
    let next = sequences.last().map_or(1, |last| last + 1);
    let dsync = options.durability == Durability::Always;
    let current = create_segment(dir, next, SegmentKind::Appends, shard, shards, dsync).await?;
    sync_dir(dir).await?;
    let base_bytes = older.iter().map(|closed| closed.bytes).sum::<u64>();
    let writer = Writer {
        dir: dir.to_owned(),
        shard,
        shards,
        options,
        older,
        current,
        base_bytes,
        appended: 0,
        compaction_asked: false,
        compacting: false,
        last_sync: Instant::now(),
        failing: false,
        scratch: BytesMut::new(),
    };
    Ok(Opened { state, stats, writer })
}

/// Creates a segment and writes its header (not synced unless `dsync`:
/// then opened with O_DSYNC, every write durable once done).
async fn create_segment(
    dir: &Path,
    sequence: u64,
    kind: SegmentKind,
    shard: u16,
    shards: u16,
    dsync: bool,
) -> Result<Segment, StoreError> {
    let path = segment_path(dir, sequence);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
        .dma_open(&path)
        .await
        .map_err(io_error(&path))?;
    let header = SegmentHeader { kind, shard, shards, sequence }.encode();
    let mut segment = Segment { file, path, sequence, len: 0, tail: Vec::new(), dsync };
    segment
        .write(&header)
        .await
        .map_err(|error| StoreError::Io { path: segment.path.clone(), error })?;
    Ok(segment)
}

/// Makes the creation and removal of files in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let directory = glommio::io::Directory::open(dir).await.map_err(io_error(dir))?;
    directory.sync().await.map_err(io_error(dir))?;
    let _ = directory.close().await;
    Ok(())
}

impl Segment {
    /// Appends `data`: rewrites the partial last block with `data` after
    /// it, padded with zeros to the alignment. On error nothing counts as
    /// written, and the same call can be retried.
    async fn write(&mut self, data: &[u8]) -> io::Result<u64> {
        let align = self.file.alignment() as usize;
        let start = self.len - self.tail.len() as u64;
        let mut bytes = std::mem::take(&mut self.tail);
        let kept = bytes.len();
        bytes.extend_from_slice(data);
        let mut written = 0u64;
        let mut result = Ok(());
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let size = chunk.len().div_ceil(align) * align;
            let mut buffer = self.file.alloc_dma_buffer(size);
            let out = buffer.as_bytes_mut();
            out[..chunk.len()].copy_from_slice(chunk);
            out[chunk.len()..].fill(0);
            match self.file.write_at(buffer, start + (i * CHUNK) as u64).await {
                Ok(n) if n == size => written += n as u64,
                Ok(_) => {
                    // What a write that runs out of space returns before
                    // ENOSPC.
                    result = Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "short write (is the file system full?)",
                    ));
                    break;
                }
                Err(error) => {
                    result = Err(error.into());
                    break;
                }
            }
        }
        if let Err(error) = result {
            bytes.truncate(kept);
            self.tail = bytes;
            return Err(error);
        }
        self.len += data.len() as u64;
        let partial = bytes.len() % align;
        bytes.drain(..bytes.len() - partial);
        self.tail = bytes;
        Ok(written)
    }
}

/// The writer stopped retrying: the log was closed while its writes
/// failed.
#[derive(Debug)]
struct GaveUp;

impl Writer {
    /// Writes what `log` queues until it is closed; then everything is
    /// written and synced. Closed while the disk fails, it ends after its
    /// next failed retry, logging what was not made durable.
    pub async fn run(mut self, log: Rc<Log>) {
        if self.serve(&log).await.is_ok() {
            return;
        }
        let records = log.not_durable();
        log.discard_queued();
        let acknowledged = match self.options.durability {
            Durability::Interval(_) => {
                "with durability = \"interval\", QoS 1/2 messages acknowledged in the last \
                 fsync_interval_ms may be among them"
            }
            _ => {
                "no acknowledged QoS 1/2 message is among them (with durability = \"always\", \
                 acknowledgements wait for the sync)"
            }
        };
        tracing::error!(
            shard = self.shard,
            records,
            segment = %self.current.path.display(),
            "stopping while the durable log cannot be written (data_dir: disk full or I/O \
             error): {records} records were not made durable and are lost; {acknowledged}"
        );
    }

    async fn serve(&mut self, log: &Log) -> Result<(), GaveUp> {
        let mut entries = Vec::new();
        while let Some(mut end) = std::future::poll_fn(|cx| log.poll_take(cx, &mut entries)).await {
            let started = Instant::now();
            self.write_entries(&mut entries, log).await?;
            if let Durability::Interval(every) = self.options.durability {
                let due = self.last_sync + every;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    glommio::timer::sleep(wait).await;
                    end = log.take_now(&mut entries);
                    self.write_entries(&mut entries, log).await?;
                }
            }
            self.sync(log, started).await?;
            log.handle_durable(end);
            self.rotate_if_full(log).await?;
            if !self.compaction_asked
                && self.appended > self.options.compact_min_bytes.max(self.base_bytes)
            {
                self.compaction_asked = true;
                log.request_compaction();
            }
        }
        Ok(())
    }

    /// Encodes and writes `entries` (not synced).
    async fn write_entries(&mut self, entries: &mut Vec<Entry>, log: &Log) -> Result<(), GaveUp> {
        let clocks = Clocks::read();
        let mut records = 0;
        for entry in entries.drain(..) {
            match entry {
                Entry::Record(record) => {
                    self.encode(&record, clocks);
                    records += 1;
                    if self.scratch.len() >= CHUNK {
                        self.flush(log).await?;
                    }
                }
                Entry::CompactionStart => self.start_compaction(log).await?,
                Entry::CompactionEnd => {
                    self.encode(&Record::SnapshotEnd, clocks);
                    records += 1;
                    self.end_compaction(log).await?;
                }
            }
        }
        self.flush(log).await?;
        log.count(|c| c.records_written += records);
        Ok(())
    }

    fn encode(&mut self, record: &Record, clocks: Clocks) {
        if let Err(error) = record::encode(record, clocks, &mut self.scratch) {
            // Only a message at the very limit of MQTT's packet size,
            // whose 5.0 form does not fit, gets here.
            tracing::warn!(shard = self.shard, %error, "a record could not be encoded; not logged");
        }
    }

    /// Writes the encoded bytes to the current segment, retrying until it
    /// works.
    async fn flush(&mut self, log: &Log) -> Result<(), GaveUp> {
        if self.scratch.is_empty() {
            return Ok(());
        }
        let data = self.scratch.split().freeze();
        loop {
            match self.current.write(&data).await {
                Ok(written) => {
                    self.appended += data.len() as u64;
                    log.count(|c| c.bytes_written += written);
                    self.recovered(log);
                    return Ok(());
                }
                Err(error) => self.failed("write", &error, log).await?,
            }
        }
    }

    /// Makes what was written to the current segment durable: nothing to
    /// do for an O_DSYNC segment; otherwise an fdatasync, retried until it
    /// works. Counted as one commit, with the time since `commit_started`
    /// (O_DSYNC: the commit's write) or of the fdatasync.
    async fn sync(&mut self, log: &Log, commit_started: Instant) -> Result<(), GaveUp> {
        if self.current.dsync {
            self.last_sync = Instant::now();
            log.count(|c| {
                c.syncs += 1;
                c.sync_latency.record(self.last_sync - commit_started);
            });
            return Ok(());
        }
        loop {
            let started = Instant::now();
            match self.current.file.fdatasync().await {
                Ok(()) => {
                    self.last_sync = Instant::now();
                    log.count(|c| {
                        c.syncs += 1;
                        c.sync_latency.record(self.last_sync - started);
                    });
                    self.recovered(log);
                    return Ok(());
                }
                Err(error) => self.failed("sync", &error.into(), log).await?,
            }
        }
    }

    /// Counts and reports a failed operation, then waits before it is
    /// tried again; gives up instead once the log is closed.
    async fn failed(&mut self, what: &str, error: &io::Error, log: &Log) -> Result<(), GaveUp> {
        log.count(|c| c.write_errors += 1);
        if !self.failing {
            self.failing = true;
            log.set_failing(true);
            tracing::error!(
                shard = self.shard,
                segment = %self.current.path.display(),
                %error,
                "cannot {what} the durable log (data_dir): QoS 1/2 publishes are refused (MQTT 5: \
                 0x97 Quota exceeded; 3.1.1: the connection is closed) and QoS 0 still flows \
                 until it can; retrying every second, records wait in memory"
            );
        }
        if log.is_closed() {
            return Err(GaveUp);
        }
        glommio::timer::sleep(RETRY).await;
        Ok(())
    }

    fn recovered(&mut self, log: &Log) {
        if self.failing {
            self.failing = false;
            log.set_failing(false);
            tracing::warn!(
                shard = self.shard,
                "the durable log is written again: QoS 1/2 publishes are accepted again"
            );
        }
    }

    /// Opens a new segment (retrying until it works).
    async fn open_next(
        &mut self,
        sequence: u64,
        kind: SegmentKind,
        log: &Log,
    ) -> Result<Segment, GaveUp> {
        loop {
            // Every segment the writer opens takes acknowledged appends
            // (a compaction's too, between its slices).
            let dsync = self.options.durability == Durability::Always;
            match create_segment(&self.dir, sequence, kind, self.shard, self.shards, dsync).await {
                Ok(segment) => return Ok(segment),
                Err(StoreError::Io { error, .. }) => {
                    self.failed("create a segment of", &error, log).await?
                }
                Err(other) => {
                    let error = io::Error::other(other.to_string());
                    self.failed("create a segment of", &error, log).await?;
                }
            }
        }
    }

    async fn sync_dir_retrying(&mut self, log: &Log) -> Result<(), GaveUp> {
        while let Err(error) = sync_dir(&self.dir).await {
            let error = io::Error::other(error.to_string());
            self.failed("sync the directory of", &error, log).await?;
        }
        Ok(())
    }

    /// Closes the current segment (synced) and goes on in a new one of
    /// `kind`.
    async fn next_segment(&mut self, kind: SegmentKind, log: &Log) -> Result<(), GaveUp> {
        let next = self.open_next(self.current.sequence + 1, kind, log).await?;
        self.sync_dir_retrying(log).await?;
        let done = std::mem::replace(&mut self.current, next);
        self.older.push(Closed { path: done.path, bytes: done.len });
        let _ = done.file.close().await;
        Ok(())
    }

    /// Past `segment_bytes`: the current segment (already synced) is
    /// closed and the next one opened; not during a compaction.
    async fn rotate_if_full(&mut self, log: &Log) -> Result<(), GaveUp> {
        if self.compacting || self.current.len < self.options.segment_bytes {
            return Ok(());
        }
        self.next_segment(SegmentKind::Appends, log).await
    }

    /// [`Entry::CompactionStart`]: what came before is durable (so the
    /// snapshot never follows a hole), and what follows goes to a new
    /// compaction segment.
    async fn start_compaction(&mut self, log: &Log) -> Result<(), GaveUp> {
        self.flush(log).await?;
        self.sync(log, Instant::now()).await?;
        self.next_segment(SegmentKind::Compaction, log).await?;
        self.compacting = true;
        Ok(())
    }

    /// [`Entry::CompactionEnd`], its snapshot end encoded: once that is
    /// durable, the segments before the compaction segment go.
    async fn end_compaction(&mut self, log: &Log) -> Result<(), GaveUp> {
        self.flush(log).await?;
        self.sync(log, Instant::now()).await?;
        if !self.compacting {
            // No start was seen (a bug): nothing can be deleted.
            tracing::warn!(shard = self.shard, "a compaction ended that had not started");
            return Ok(());
        }
        self.compacting = false;
        for closed in self.older.drain(..) {
            if let Err(error) = glommio::io::remove(&closed.path).await {
                tracing::warn!(shard = self.shard, segment = %closed.path.display(), %error, "cannot delete a compacted log segment");
            }
        }
        self.sync_dir_retrying(log).await?;
        self.base_bytes = self.current.len;
        self.appended = 0;
        self.compaction_asked = false;
        log.count(|c| c.compactions += 1);
        tracing::debug!(shard = self.shard, bytes = self.base_bytes, "log compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::protocol::{BoxedPublishProperties, QoS, TopicName};
    use bytes::Bytes;
    use glommio::LocalExecutorBuilder;
    use std::future::Future;
    use std::sync::Arc;

    fn message(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: None,
            expires_at: None,
            id: 0,
        })
    }

    /// Runs `test` with a fresh directory on a glommio executor.
    fn on_executor<F: Future<Output = ()> + 'static>(
        name: &str,
        test: impl FnOnce(PathBuf) -> F + Send + 'static,
    ) {
        let dir = std::env::temp_dir().join(format!("ringmq-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let inner = dir.clone();
        LocalExecutorBuilder::default().spawn(move || test(inner)).unwrap().join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn reopen(dir: &Path, options: StoreOptions) -> (Opened, Rc<Log>) {
        let log = Rc::new(Log::new());
        (open(dir, 0, 1, options, &log).await.unwrap(), log)
    }

    fn retained(state: &LiveState) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = state
            .retained
            .values()
            .map(|m| (m.topic.to_string(), String::from_utf8_lossy(&m.payload).into_owned()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn records_are_durable_once_awaited_and_replayed_after_a_crash() {
        on_executor("replay", |dir| async move {
            let options = StoreOptions::new(Durability::Always);
            let (opened, log) = reopen(&dir, options).await;
            assert!(opened.state.retained.is_empty());
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            log.append(Record::RetainSet(message("a/1", "one")));
            log.append(Record::RetainSet(message("a/2", "two")));
            let last = log.append(Record::RetainDelete(TopicName::new("a/1").unwrap()));
            assert!(!log.is_durable(last));
            log.durable(last).await;
            assert!(log.is_durable(last));
            let counters = log.counters();
            // Three records queued in one turn: one write, one sync.
            assert_eq!((counters.records_written, counters.syncs), (3, 1));
            // A crash: the writer is dropped, nothing is closed.
            drop(writer);
            let (opened, log) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), vec![("a/2".into(), "two".into())]);
            assert_eq!(log.counters().records_recovered, 3);
            // The segment of the first run, and the one opened by the
            // second.
            assert_eq!(segments(&dir).len(), 2);
            drop(opened);
            // A run that writes nothing leaves no segment behind.
            let (opened, _) = reopen(&dir, options).await;
            drop(opened);
            let (opened, _) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), vec![("a/2".into(), "two".into())]);
            assert_eq!(segments(&dir).len(), 2);
        });
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_counted() {
        on_executor("torn", |dir| async move {
            let options = StoreOptions::new(Durability::Always);
            let (opened, log) = reopen(&dir, options).await;
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            let lsn = log.append(Record::RetainSet(message("t/1", "kept")));
            log.durable(lsn).await;
            drop(writer);
            let path = dir.join(&segments(&dir)[0]);
            let mut bytes = std::fs::read(&path).unwrap();
            let valid = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
            bytes.truncate(valid);
            bytes.extend_from_slice(b"\x13\x00\x00\x00torn record");
            std::fs::write(&path, &bytes).unwrap();
            let (opened, log) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), vec![("t/1".into(), "kept".into())]);
            let counters = log.counters();
            assert_eq!((counters.torn_tails, counters.torn_bytes), (1, 15));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), valid as u64, "cut off");
            drop(opened);
            let (_, log) = reopen(&dir, options).await;
            assert_eq!(log.counters().torn_tails, 0, "cut once, found once");
        });
    }

    #[test]
    fn segments_rotate_and_compaction_keeps_disk_use_to_the_live_state() {
        on_executor("compact", |dir| async move {
            let options = StoreOptions {
                durability: Durability::Always,
                segment_bytes: 2048,
                compact_min_bytes: 8192,
            };
            let (opened, log) = reopen(&dir, options).await;
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            // The live state: 10 topics, each overwritten 200 times.
            let mut live = std::collections::HashMap::new();
            let mut slicing: Option<Vec<i32>> = None;
            let mut most_segments = 0;
            for round in 0..200 {
                for topic in 0..10 {
                    let m = message(&format!("c/{topic}"), &format!("{round}-{topic:0>40}"));
                    live.insert(topic, Arc::clone(&m));
                    log.append(Record::RetainSet(m));
                }
                let lsn = log.append(Record::RetainDelete(TopicName::new("c/none").unwrap()));
                log.durable(lsn).await;
                most_segments = most_segments.max(segments(&dir).len());
                // What the shard does: the live state in slices (here two
                // topics each), between the records of later rounds.
                if let Some(left) = slicing.as_mut() {
                    for _ in 0..2 {
                        match left.pop() {
                            Some(topic) => {
                                _ = log.append(Record::RetainSet(Arc::clone(&live[&topic])))
                            }
                            None => {
                                log.end_compaction();
                                slicing = None;
                                break;
                            }
                        }
                    }
                } else if log.wants_compaction() {
                    log.begin_compaction();
                    slicing = Some(live.keys().copied().collect::<Vec<_>>());
                }
            }
            // A compaction under way ends.
            if let Some(left) = slicing.take() {
                for topic in left {
                    log.append(Record::RetainSet(Arc::clone(&live[&topic])));
                }
                log.end_compaction();
            }
            let lsn = log.append(Record::RetainDelete(TopicName::new("c/9").unwrap()));
            log.durable(lsn).await;
            let counters = log.counters();
            assert!(counters.compactions >= 3, "{counters:?}");
            assert!(most_segments > 2, "rotated: {most_segments}");
            let on_disk: u64 = segments(&dir)
                .iter()
                .map(|name| std::fs::metadata(dir.join(name)).unwrap().len())
                .sum();
            // History: ~120 KiB written; disk: about the live state (10
            // records of ~70 bytes) and the appends made while it was
            // written, plus at most one threshold of appends.
            assert!(counters.bytes_written > 100_000, "{counters:?}");
            assert!(on_disk < 8192 * 2 + 4096, "{on_disk} bytes on disk");
            log.close();
            writer.await;
            let (opened, _) = reopen(&dir, options).await;
            let expected: Vec<(String, String)> =
                (0..9).map(|topic| (format!("c/{topic}"), format!("199-{topic:0>40}"))).collect();
            assert_eq!(retained(&opened.state), expected);
        });
    }

    /// Whether the current segment's file was opened with O_DSYNC.
    fn opened_dsync(writer: &Writer) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL reads the flags of an open descriptor.
        let flags = unsafe { libc::fcntl(writer.current.file.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0);
        flags & libc::O_DSYNC != 0
    }

    #[test]
    fn always_writes_appends_with_o_dsync_and_needs_no_fdatasync() {
        on_executor("dsync", |dir| async move {
            let (opened, _) =
                reopen(&dir, StoreOptions::new(Durability::Interval(Duration::from_millis(10))))
                    .await;
            assert!(!opened_dsync(&opened.writer), "interval syncs on its own schedule");
            drop(opened);
            let options = StoreOptions::new(Durability::Always);
            let (opened, log) = reopen(&dir, options).await;
            assert!(opened_dsync(&opened.writer));
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            let first = log.append(Record::RetainSet(message("d/1", "1")));
            log.durable(first).await;
            // One commit, counted with the time its write took.
            assert_eq!((log.counters().records_written, log.counters().syncs), (1, 1));
            log.close();
            writer.await;
            let (opened, _) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), vec![("d/1".into(), "1".into())]);
        });
    }

    #[test]
    fn a_crash_during_a_compaction_keeps_what_its_segment_holds() {
        on_executor("compact-crash", |dir| async move {
            let options = StoreOptions::new(Durability::Always);
            let (opened, log) = reopen(&dir, options).await;
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            log.append(Record::RetainSet(message("k/1", "old")));
            log.append(Record::RetainSet(message("k/2", "two")));
            log.begin_compaction();
            // A slice, and traffic after it: both are acknowledged records.
            log.append(Record::RetainSet(message("k/2", "two")));
            log.append(Record::RetainSet(message("k/1", "new")));
            let lsn = log.append(Record::RetainSet(message("k/3", "three")));
            log.durable(lsn).await;
            drop(writer);
            assert_eq!(segments(&dir).len(), 2, "the old segment and the compaction's");
            let (opened, _) = reopen(&dir, options).await;
            let expected: Vec<(String, String)> = vec![
                ("k/1".into(), "new".into()),
                ("k/2".into(), "two".into()),
                ("k/3".into(), "three".into()),
            ];
            assert_eq!(retained(&opened.state), expected);
            // Nothing was deleted: the compaction never ended.
            assert_eq!(segments(&dir).len(), 3);
            let log = Rc::new(Log::new());
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            // A compaction that ends deletes every segment before its own.
            log.begin_compaction();
            for (topic, payload) in &expected {
                log.append(Record::RetainSet(message(topic, payload)));
            }
            let lsn = log.end_compaction();
            log.durable(lsn).await;
            assert_eq!(segments(&dir).len(), 1);
            assert_eq!(log.counters().compactions, 1);
            log.close();
            writer.await;
            let (opened, _) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), expected);
        });
    }

    #[test]
    fn interval_durability_writes_at_once_and_syncs_on_the_interval() {
        on_executor("interval", |dir| async move {
            let options = StoreOptions::new(Durability::Interval(Duration::from_millis(1000)));
            let (opened, log) = reopen(&dir, options).await;
            let writer = glommio::spawn_local(opened.writer.run(Rc::clone(&log)));
            let first = log.append(Record::RetainSet(message("i/1", "1")));
            log.durable(first).await;
            assert_eq!((log.counters().records_written, log.counters().syncs), (1, 1));
            let second = log.append(Record::RetainSet(message("i/1", "2")));
            // Written at once (a write is far shorter than the second of
            // the interval), synced only when the interval since the last
            // sync has run out.
            while log.counters().records_written < 2 {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(log.counters().syncs, 1);
            assert!(!log.is_durable(second));
            log.durable(second).await;
            assert_eq!(log.counters().syncs, 2);
            log.close();
            writer.await;
            let (opened, _) = reopen(&dir, options).await;
            assert_eq!(retained(&opened.state), vec![("i/1".into(), "2".into())]);
        });
    }
}
