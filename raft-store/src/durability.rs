//! Making sled writes survive power loss.
//!
//! sled 0.34's `flush`/`flush_async` write its buffers and call `sync_file_range`, which does
//! not flush the device cache or file metadata: it is not an fsync. [`Durability::sync`] follows
//! every flush with `fdatasync` of sled's single data file `<dir>/db`, where the state machine
//! lives (the Raft log has files of its own, [`crate::wal`]). Values stay below sled's blob
//! threshold (see `ENTRY_BYTES_MAX` in `lib.rs`), so no data ever lives in sled's never-fsynced
//! `blobs/`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long sled's writes may gather in its buffer after an apply before they are handed to
/// the disk, in milliseconds ([`WritePacer`]).
pub const SLED_WRITE_DELAY_MS: u64 = 10;

#[derive(Clone)]
pub struct Durability {
    db: sled::Db,
    data_file: Arc<File>,
    stats: Arc<SyncStats>,
    pacer: Arc<WritePacer>,
}

/// Counters for operators and tests: how many fsyncs and how long they took.
#[derive(Default)]
pub struct SyncStats {
    pub syncs_total: AtomicU64,
    pub sync_micros_total: AtomicU64,
    /// Called with the duration of every durable sync (sled flush + `fdatasync`), e.g. to feed
    /// a latency histogram. Set once, by the node, after opening the store.
    pub observer: std::sync::OnceLock<Box<dyn Fn(std::time::Duration) + Send + Sync>>,
}

impl SyncStats {
    pub(crate) fn record(&self, elapsed: std::time::Duration) {
        self.syncs_total.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sync_micros_total.fetch_add(micros, Ordering::Relaxed);
        if let Some(observe) = self.observer.get() {
            observe(elapsed);
        }
    }
}

impl Durability {
    pub fn open(db: sled::Db, dir: &Path) -> io::Result<Self> {
        // fdatasync works on a read-only descriptor on Linux.
        let data_file = File::open(dir.join("db"))?;
        // Make the directory entries of sled's files durable once.
        File::open(dir)?.sync_all()?;
        Ok(Self {
            pacer: Arc::new(WritePacer::start(db.clone())),
            db,
            data_file: Arc::new(data_file),
            stats: Arc::default(),
        })
    }

    /// Called after every apply: sled's new writes go to the disk within
    /// [`SLED_WRITE_DELAY_MS`] (not durably: see [`WritePacer`]).
    pub fn wrote(&self) {
        self.pacer.wrote();
    }

    /// Flushes everything sled has buffered so far and fsyncs it. Concurrent callers share the
    /// flush: everything written before a call is durable when it returns.
    pub async fn sync(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.db.flush_async().await.map_err(io::Error::other)?;
        let file = Arc::clone(&self.data_file);
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(io::Error::other)??;
        self.stats.record(started.elapsed());
        Ok(())
    }

    /// [`Durability::sync`] outside the async runtime (start-up, the log-sync thread).
    pub fn sync_blocking(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.db.flush().map_err(io::Error::other)?;
        self.data_file.sync_data()?;
        self.stats.record(started.elapsed());
        Ok(())
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }
}

/// Hands sled's buffered writes to the disk [`SLED_WRITE_DELAY_MS`] after an apply, from a
/// thread of its own (`sled-write`).
///
/// Left alone, sled gathers its writes in a buffer as large as its segment
/// ([`crate::SLED_SEGMENT_BYTES`], 8 MiB) and writes it whole when it is full, waiting for the
/// device (`sync_file_range`). Every node applies the same entries, so all three reach that
/// point within a fraction of a second, about every 1.3 s at 3,000 reports/s: while the 8 MiB
/// go to the device, the Raft log's `fdatasync`s on that node wait behind them, and the
/// cluster's commits stalled for 30–110 ms, which made the slowest 1% of writes
/// (docs/PERFORMANCE.md). sled's `flush` writes what its buffer holds so far (and goes on
/// filling the same segment), so the writes go out in pieces of what 10 ms of applies wrote.
///
/// This is not about durability: `flush` is not an fsync ([`Durability::sync`] is), and sled
/// recovers a prefix of its writes after a crash either way.
struct WritePacer {
    shared: Option<Arc<PacerShared>>,
    thread: Option<std::thread::Thread>,
}

struct PacerShared {
    db: sled::Db,
    /// An apply wrote since the thread last began a flush.
    pending: AtomicBool,
}

impl WritePacer {
    fn start(db: sled::Db) -> Self {
        let shared = Arc::new(PacerShared {
            db,
            pending: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("sled-write".to_owned())
            .spawn(move || pace(&weak));
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(error) => {
                // Only latency depends on it: sled then writes when its buffer is full.
                tracing::warn!(%error, "cannot start the sled-write thread");
                None
            }
        };
        Self {
            shared: Some(shared),
            thread,
        }
    }

    fn wrote(&self) {
        if let (Some(shared), Some(thread)) = (&self.shared, &self.thread)
            && !shared.pending.swap(true, Ordering::AcqRel)
        {
            thread.unpark();
        }
    }
}

impl Drop for WritePacer {
    fn drop(&mut self) {
        // The thread holds only a weak reference: woken, it finds the store gone and ends.
        drop(self.shared.take());
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }
}

fn pace(weak: &Weak<PacerShared>) {
    loop {
        std::thread::park();
        match weak.upgrade() {
            None => return,
            Some(shared) if !shared.pending.load(Ordering::Acquire) => continue,
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(SLED_WRITE_DELAY_MS));
        let Some(shared) = weak.upgrade() else {
            return;
        };
        // Applies from now on wake the thread again (their writes may miss this flush).
        shared.pending.store(false, Ordering::Release);
        if let Err(error) = shared.db.flush() {
            // The next durable sync meets the same error and stops the node.
            tracing::error!(%error, "sled could not write its buffer; no longer pacing its writes");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether sled's data file holds `needle` (what sled wrote to the page cache: its reads
    /// come from there as anyone's do).
    fn on_file(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read(dir.join("db"))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    }

    #[test]
    fn an_apply_reaches_sleds_file_without_a_flush_and_the_thread_ends_with_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::open_sled(dir.path()).expect("open sled");
        let durability = Durability::open(db.clone(), dir.path()).expect("durability");
        // Far below sled's 8 MiB buffer: sled alone would keep it in memory.
        let value: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        db.insert(b"k", value.clone()).expect("insert");
        // sled keeps it in its buffer: its own flush timer is off.
        assert!(
            !on_file(dir.path(), &value),
            "sled wrote its buffer at once"
        );

        durability.wrote();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !on_file(dir.path(), &value) {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never reached sled's file"
            );
            std::thread::sleep(Duration::from_millis(SLED_WRITE_DELAY_MS));
        }

        // The thread holds no strong reference: with every handle gone, sled closes and a new
        // open gets its lock.
        drop(durability);
        drop(db);
        let reopened = crate::open_sled(dir.path()).expect("sled closed and reopened");
        assert_eq!(
            reopened.get(b"k").expect("get").as_deref(),
            Some(&value[..])
        );
    }
}
