//! The durable mark: a tiny file (`<store>/log.mark`) outside the log that records how far the
//! Raft log and the vote were once fsync-durable, so a store that lost its tail is found.
//!
//! A log can come back shorter than it was: a segment cut short, or a damaged last record that
//! the log takes for a write a crash interrupted and cuts away ([`crate::wal`]); the log of
//! store format 3 lived in sled, which recovers "a prefix of its writes" after damage. A node
//! that restarts with a log shorter than what it acknowledged breaks Raft: it may vote for a
//! candidate missing committed entries, and a leader that sees a follower's matched index go
//! backwards panics (seen in `t12_random_damage`). The mark makes that damage visible at open.
//!
//! Invariants:
//! - The mark never claims more than is durable in the log: it is written only from values that
//!   an fsync already covered, and lowered (and fsynced) *before* a truncation of the log.
//! - At open, the log's last index (or last purged index) and the vote's term are at least
//!   the mark's; otherwise the store is damaged and the node refuses to start.
//!
//! Writes are batched: a background thread writes the mark when it changed, every
//! [`MARK_INTERVAL_MS`], and at [`Mark::flush`] (clean shutdown). A crash loses at most the
//! last interval of mark updates, which only makes the check weaker, never wrong.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::Digest;

/// How often the background thread writes a changed mark, in milliseconds.
pub const MARK_INTERVAL_MS: u64 = 200;
const MAGIC: &[u8; 8] = b"ASNLMRK1";
const MARK_BYTES: usize = 32;

/// What the mark records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkValue {
    /// The last durable log index plus one (0: no log).
    pub log_end: u64,
    /// The term of the last durable vote.
    pub vote_term: u64,
}

impl MarkValue {
    fn encode(self) -> [u8; MARK_BYTES] {
        let mut bytes = [0u8; MARK_BYTES];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..16].copy_from_slice(&self.log_end.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.vote_term.to_le_bytes());
        let digest = sha2::Sha256::digest(&bytes[..24]);
        bytes[24..].copy_from_slice(&digest[..8]);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<MarkValue, String> {
        if bytes.len() != MARK_BYTES || &bytes[..8] != MAGIC {
            return Err(format!("{} bytes without the mark's magic", bytes.len()));
        }
        let digest = sha2::Sha256::digest(&bytes[..24]);
        if bytes[24..] != digest[..8] {
            return Err("its checksum does not match".to_owned());
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Ok(MarkValue {
            log_end: word(8),
            vote_term: word(16),
        })
    }
}

struct Shared {
    path: PathBuf,
    file: File,
    log_end: AtomicU64,
    vote_term: AtomicU64,
    /// Serialises writes, and holds what was last written.
    written: Mutex<MarkValue>,
}

impl Shared {
    fn current(&self) -> MarkValue {
        MarkValue {
            log_end: self.log_end.load(Ordering::SeqCst),
            vote_term: self.vote_term.load(Ordering::SeqCst),
        }
    }

    /// Writes and fsyncs the current value if it changed.
    fn write(&self) -> io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let value = self.current();
        if value == *written {
            return Ok(());
        }
        self.file.write_all_at(&value.encode(), 0)?;
        self.file.sync_data()?;
        *written = value;
        Ok(())
    }
}

/// Handle on the durable mark; clones share it.
#[derive(Clone)]
pub struct Mark {
    shared: Arc<Shared>,
}

impl Mark {
    /// Opens `<dir>/log.mark` and checks the store's `actual` state against it: `Err` with a
    /// description when the store holds less than the mark says was durable. Creates the mark
    /// from `actual` when there is none (a new store, or one from before marks existed).
    pub fn open(dir: &Path, actual: MarkValue) -> Result<Mark, String> {
        let path = dir.join("log.mark");
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let recorded = if existed {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let value = MarkValue::decode(&bytes)
                .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
            if actual.log_end < value.log_end {
                return Err(format!(
                    "the Raft log ends at index {} but reached index {} once it was durable \
                     ({}): the log lost its tail",
                    actual.log_end as i128 - 1,
                    value.log_end - 1,
                    path.display()
                ));
            }
            if actual.vote_term < value.vote_term {
                return Err(format!(
                    "the stored vote is for term {} but a vote for term {} was durable ({}): \
                     the vote went back",
                    actual.vote_term,
                    value.vote_term,
                    path.display()
                ));
            }
            value
        } else {
            MarkValue {
                log_end: u64::MAX,
                vote_term: u64::MAX,
            }
        };
        let shared = Arc::new(Shared {
            path,
            file,
            log_end: AtomicU64::new(actual.log_end),
            vote_term: AtomicU64::new(actual.vote_term),
            written: Mutex::new(recorded),
        });
        shared
            .write()
            .map_err(|e| format!("cannot write {}: {e}", shared.path.display()))?;
        if !existed && let Some(parent) = shared.path.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", parent.display()))?;
        }
        spawn_writer(Arc::downgrade(&shared));
        Ok(Mark { shared })
    }

    /// Entries up to `last_index` are durable (called after the fsync that covered them).
    pub fn log_durable(&self, last_index: u64) {
        self.shared.log_end.store(last_index + 1, Ordering::SeqCst);
    }

    /// A vote for `term` is durable.
    pub fn vote_durable(&self, term: u64) {
        self.shared.vote_term.fetch_max(term, Ordering::SeqCst);
    }

    /// The log is about to be truncated from `index` on: lowers the mark and makes that
    /// durable before returning, so the mark never claims entries the log no longer holds.
    pub fn before_truncate(&self, index: u64) -> io::Result<()> {
        self.shared.log_end.fetch_min(index, Ordering::SeqCst);
        self.shared.write()
    }

    /// Writes the mark now if it changed (clean shutdown).
    pub fn flush(&self) -> io::Result<()> {
        self.shared.write()
    }
}

fn spawn_writer(shared: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("log-mark".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(MARK_INTERVAL_MS));
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if let Err(error) = shared.write() {
                    // The next log fsync on the same disk fails too and stops the node; the
                    // mark only ever lags, which keeps it truthful.
                    tracing::warn!(%error, path = %shared.path.display(), "cannot write the log mark");
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the log-mark thread; the mark is written at shutdown only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn value(log_end: u64, vote_term: u64) -> MarkValue {
        MarkValue { log_end, vote_term }
    }

    fn refusal(dir: &Path, actual: MarkValue) -> String {
        Mark::open(dir, actual).err().unwrap_or_default()
    }

    #[test]
    fn a_shorter_log_or_an_older_vote_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mark = Mark::open(dir.path(), MarkValue::default())?;
        mark.log_durable(41);
        mark.vote_durable(3);
        mark.flush()?;
        drop(mark);
        assert!(refusal(dir.path(), value(40, 3)).contains("lost its tail"));
        assert!(refusal(dir.path(), value(42, 2)).contains("vote went back"));
        assert!(Mark::open(dir.path(), value(42, 3)).is_ok());
        Ok(())
    }

    #[test]
    fn truncation_lowers_the_mark_first() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mark = Mark::open(dir.path(), MarkValue::default())?;
        mark.log_durable(99);
        mark.flush()?;
        mark.before_truncate(50)?;
        drop(mark);
        assert!(Mark::open(dir.path(), value(50, 0)).is_ok());
        Ok(())
    }

    #[test]
    fn a_damaged_mark_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        drop(Mark::open(dir.path(), MarkValue::default())?);
        let path = dir.path().join("log.mark");
        let mut bytes = std::fs::read(&path)?;
        bytes[9] ^= 1;
        std::fs::write(&path, bytes)?;
        assert!(refusal(dir.path(), MarkValue::default()).contains("damaged"));
        Ok(())
    }
}
