//! The checks made on `data_dir` once, on the main thread, before any
//! shard starts, so that a bad directory is one line at start-up rather
//! than a shard failing later:
//! * it exists or can be created, and files can be created in it;
//! * no other ringmq process uses it (an exclusive `flock` on
//!   `data_dir/LOCK`, held until the process ends);
//! * its log was written by as many shards as this start runs. A retained
//!   topic lives on the shard its hash picks, which depends on the shard
//!   count, so when a log written by N shards meets a start with M != N,
//!   every retained message is moved to its new home first (see
//!   `reshard`: crash-safe, logged in one line).

use super::record::{SegmentHeader, HEADER_LEN};
use super::shard_dir;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A data directory checked and locked for this process.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the lock while it is open.
    _lock: File,
}

impl DataDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why `data_dir` cannot be used; one line that names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("data_dir = {path:?}: {problem}")]
pub struct DataDirError {
    path: PathBuf,
    problem: String,
}

/// Checks and locks `path` for a broker of `shards` shards, creating it
/// and its `shard-K` directories if needed.
pub fn prepare(path: &Path, shards: usize) -> Result<DataDir, DataDirError> {
    let refuse = |problem: String| DataDirError { path: path.to_owned(), problem };
    let not_writable = |what: &str, error: std::io::Error| {
        refuse(format!(
            "cannot {what} ({error}); make it a directory the broker's user can write, or set \
             data_dir to one"
        ))
    };
    std::fs::create_dir_all(path).map_err(|e| not_writable("create the directory", e))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("LOCK"))
        .map_err(|e| not_writable("create files in it", e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(if error.kind() == std::io::ErrorKind::WouldBlock {
            refuse(
                "another ringmq process uses this directory; stop it, or give each broker its \
                 own data_dir"
                    .into(),
            )
        } else {
            refuse(format!("cannot lock it ({error})"))
        });
    }
    let cannot_move = |error: std::io::Error| {
        refuse(format!(
            "cannot move its retained messages to the new shard count ({error}); start with the \
             shard count it was written with, or move the directory away to start empty"
        ))
    };
    if let Some(to) = super::reshard::resume(path).map_err(cannot_move)? {
        tracing::warn!(data_dir = %path.display(), shards = to, "finished moving the retained messages to their new home shards (the last start was cut short)");
    }
    if let Some(found) = written_by(path)? {
        if found != shards {
            let started = std::time::Instant::now();
            let (retained, sessions) =
                super::reshard::reshard(path, shards).map_err(cannot_move)?;
            tracing::info!(
                data_dir = %path.display(),
                from = found,
                to = shards,
                retained,
                sessions,
                ms = started.elapsed().as_millis() as u64,
                "the shard count changed: retained messages and sessions moved to their new home \
                 shards"
            );
        }
    }
    for shard in 0..shards {
        let dir = shard_dir(path, shard);
        std::fs::create_dir_all(&dir)
            .map_err(|e| not_writable("create shard directories in it", e))?;
    }
    Ok(DataDir { path: path.to_owned(), _lock: lock })
}

/// The shard count named by the headers of the segments under `path`
/// (`None` when there are none); differing counts are refused.
fn written_by(path: &Path) -> Result<Option<usize>, DataDirError> {
    let refuse = |problem: String| DataDirError { path: path.to_owned(), problem };
    let mut found: Option<usize> = None;
    let entries = std::fs::read_dir(path).map_err(|e| refuse(format!("cannot read it ({e})")))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("shard-") {
            continue;
        }
        let Ok(segments) = std::fs::read_dir(entry.path()) else { continue };
        for segment in segments.flatten() {
            if !segment.file_name().to_str().is_some_and(|n| n.ends_with(".seg")) {
                continue;
            }
            let mut header = [0u8; HEADER_LEN];
            let read = File::open(segment.path()).and_then(|mut f| f.read_exact(&mut header));
            // Unreadable or torn headers are the shard's recovery to judge.
            let Ok(header) = read.map(|()| SegmentHeader::decode(&header)) else { continue };
            let Ok(header) = header else { continue };
            let shards = usize::from(header.shards);
            match found {
                Some(other) if other != shards => {
                    return Err(refuse(format!(
                        "it holds logs written by {other} and by {shards} shards; move the \
                         directory away to start empty"
                    )))
                }
                _ => found = Some(shards),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::SegmentKind;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringmq-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_locks_and_refuses_a_second_user() {
        let dir = temp("lock");
        let held = prepare(&dir, 2).unwrap();
        assert!(dir.join("shard-0").is_dir() && dir.join("shard-1").is_dir());
        let error = prepare(&dir, 2).unwrap_err().to_string();
        assert!(error.contains("another ringmq process uses this directory"), "{error}");
        drop(held);
        prepare(&dir, 2).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_that_cannot_be_a_directory_is_one_line_naming_the_key() {
        let file = temp("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let error = prepare(&file.join("data"), 1).unwrap_err().to_string();
        assert!(error.starts_with("data_dir = \""), "{error}");
        assert!(error.contains("cannot create the directory"), "{error}");
        assert!(!error.contains('\n'));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn a_log_of_another_shard_count_is_moved_to_the_new_homes() {
        let dir = temp("count");
        drop(prepare(&dir, 2).unwrap());
        let header = SegmentHeader { kind: SegmentKind::Appends, shard: 1, shards: 2, sequence: 1 };
        std::fs::write(dir.join("shard-1").join(format!("{:020}.seg", 1)), header.encode())
            .unwrap();
        assert_eq!(written_by(&dir).unwrap(), Some(2));
        drop(prepare(&dir, 3).unwrap());
        assert_eq!(written_by(&dir).unwrap(), Some(3));
        assert!(dir.join("shard-2").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
