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
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

#[derive(Clone)]
pub struct Durability {
    db: sled::Db,
    data_file: Arc<File>,
    stats: Arc<SyncStats>,
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
            db,
            data_file: Arc::new(data_file),
            stats: Arc::default(),
        })
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
