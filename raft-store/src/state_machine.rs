//! [`StateMachineStore`]: openraft's state machine over the [`Ledger`] trees, and its snapshots.
//!
//! Invariants:
//! - Applying is deterministic: it reads only the entries and the stored state (no clock, no
//!   randomness), so every replica derives the same events, ids and hashes.
//! - One `apply` call writes its inserts in order, `applying` (its last log id) first and
//!   `last_applied` last (not one sled batch: sled writes and `sync_file_range`s its buffer on
//!   every batch). It is not fsynced on its own: the log store fsyncs sled before it removes
//!   entries (a purge), and at clean shutdown. sled recovers a prefix of its writes, so after a
//!   crash the state is behind the log (openraft applies the difference again), never behind
//!   the snapshot file (restored from it at open), and an apply the crash cut short is found
//!   (`applying` ahead of `last_applied`) and undone at open by restoring the snapshot file, or
//!   emptying the state machine without one.
//! - No code path changes or removes a stored event, except replacing the whole state from a
//!   snapshot of the same cluster.
//! - Snapshots are files (`<dir>/snapshot/current`), never sled values: tmp file, fsync,
//!   rename, fsync the directory.
//! - A snapshot is the state at one log id, read off the state-machine worker while applies go
//!   on ([`Ledger::begin_copy`](crate::ledger::Ledger::begin_copy)); installing a snapshot waits
//!   for a copy under way, the only other writer of the state.

use std::io::Cursor;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageIOError;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;
use crate::chain;
use crate::codec;
use crate::durability::Durability;
use crate::ledger::Ledger;
use crate::ledger::META_LAST_APPLIED;
use crate::ledger::META_LAST_MEMBERSHIP;
use crate::ledger::META_WRITTEN_THROUGH;
use crate::ledger::SM_TREES;
use crate::ledger::StateCopy;
use crate::types::Entry;
use crate::types::Hash;
use crate::types::LogId;
use crate::types::Response;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// 2: with `sm_trust`. 3: store format 3 (event chunks, index runs, no `sm_counts`).
const SNAPSHOT_FORMAT_VERSION: u32 = 3;

#[derive(Clone)]
pub struct StateMachineStore {
    ledger: Ledger,
    durability: Durability,
    snapshot_dir: PathBuf,
    /// The snapshot in `<snapshot_dir>/current`, without its payload: that is read from the file
    /// when openraft asks for it (to send it to a follower), not kept in memory.
    current_snapshot: Arc<Mutex<Option<CurrentSnapshot>>>,
    /// The snapshot file as `open` read and checked it, for openraft's first
    /// `get_current_snapshot` (which it makes at start), so that a start reads and hashes the
    /// file once; taken by that call, and dropped when another snapshot becomes current.
    opened_snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    /// The indexes' tips, for `apply` (see [`crate::apply::TipCache`]).
    tips: Arc<Mutex<crate::apply::TipCache>>,
    /// The generated dedup keys of the last minute (see [`crate::dedup`]): part of the state,
    /// not a cache (rebuilt from the ledger at open and after a snapshot install).
    window: Arc<Mutex<crate::dedup::TxWindow>>,
    /// Held (read) by a snapshot copy under way, taken (write) to replace the whole state:
    /// a copy reads the state at its log id only while nothing but applies write.
    copy_gate: Arc<tokio::sync::RwLock<()>>,
    /// How far the state machine holds the log through snapshots (its last applied at open,
    /// then each installed snapshot's last log id), or that an install failed: the log store
    /// waits for it before it records the purge an announced install implies
    /// ([`SnapshotInstalled`]).
    installed: Arc<tokio::sync::watch::Sender<SnapshotInstalled>>,
}

/// What the log store waits for before it records a purge past the end of its log (which
/// openraft 0.9 asks for right after it hands a snapshot to the state machine to install, not
/// after the install): the state machine holding everything `through` a log id (at open, or
/// installed from a snapshot; the purge fsyncs it before it records anything), or an install
/// that `failed` (openraft then stops the node). Applies do not move it: only the purge of an
/// announced install waits, and only that install can satisfy it. Recorded earlier, a crash before the install
/// ended would leave a log purged past a state machine that never got the snapshot (openraft
/// would then apply the next entries to it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct SnapshotInstalled {
    pub(crate) through: Option<LogId>,
    pub(crate) failed: bool,
}

/// The snapshot file: the meta, the payload and a checksum of the payload.
///
/// postcard writes the payload as a byte string (its length, then its bytes), the same bytes as
/// for a plain `Vec<u8>`; `serde_bytes` has serde read and write it whole instead of one byte
/// at a time (which took seconds of CPU for hundreds of MB). [`write_snapshot_file`] writes the
/// same bytes field by field.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    data_sha256: Hash,
}

/// What a store keeps in memory of its snapshot file.
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    data_bytes: u64,
}

impl From<&StoredSnapshot> for CurrentSnapshot {
    fn from(stored: &StoredSnapshot) -> Self {
        Self {
            meta: stored.meta.clone(),
            data_bytes: stored.data.len() as u64,
        }
    }
}

/// One tree of a snapshot: its name and its key-value pairs.
type TreeCopy = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// A snapshot's payload: every state-machine tree, key by key.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    version: u32,
    trees: Vec<TreeCopy>,
}

/// A state-machine key held by sled, serialised without its space tag as postcard serialises a
/// `Vec<u8>` (length, then bytes).
struct SledKey(sled::IVec);

impl Serialize for SledKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.get(1..).unwrap_or_default())
    }
}

/// A value held by sled, serialised as postcard serialises a `Vec<u8>`.
struct SledBytes(sled::IVec);

impl Serialize for SledBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

/// The state copied for a snapshot: [`SnapshotPayload`] with sled's reference-counted keys and
/// values, so the copy copies no bytes; it encodes to the same bytes.
#[derive(Serialize)]
struct CopiedPayload {
    version: u32,
    trees: Vec<(String, Vec<(SledKey, SledBytes)>)>,
}

impl CopiedPayload {
    /// Splits a copy of the state machine's one sled tree into its key spaces.
    fn new(pairs: Vec<(sled::IVec, sled::IVec)>) -> Result<Self, StoreError> {
        let mut trees: Vec<_> = SM_TREES
            .iter()
            .map(|name| ((*name).to_owned(), Vec::new()))
            .collect();
        for (key, value) in pairs {
            let tag = key.first().copied().unwrap_or(u8::MAX);
            let Some((_, space)) = trees.get_mut(usize::from(tag)) else {
                return Err(StoreError::Corrupt(format!(
                    "state-machine key {key:?} has no known key space tag"
                )));
            };
            space.push((SledKey(key), SledBytes(value)));
        }
        Ok(Self {
            version: SNAPSHOT_FORMAT_VERSION,
            trees,
        })
    }

    /// At least the bytes it encodes to: each length postcard writes takes at most 10 bytes.
    fn encoded_bytes_max(&self) -> usize {
        let pairs: usize = self
            .trees
            .iter()
            .flat_map(|(_, pairs)| pairs)
            .map(|(key, value)| key.0.len() + value.0.len() + 20)
            .sum();
        let trees: usize = self.trees.iter().map(|(name, _)| name.len() + 20).sum();
        pairs + trees + 10
    }

    /// The payload's bytes, encoded into one allocation of the right size (no copies as a
    /// growing buffer doubles: hundreds of MiB for a large state).
    fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(self.encoded_bytes_max());
        if let Err(error) = postcard::to_io(self, &mut data) {
            panic!("postcard encoding of a snapshot payload into memory failed: {error}");
        }
        data
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    pub(crate) fn open(
        db: &sled::Db,
        durability: Durability,
        dir: &Path,
    ) -> Result<Self, StoreError> {
        let ledger = Ledger::open(db)?;
        let snapshot_dir = dir.join("snapshot");
        std::fs::create_dir_all(&snapshot_dir)?;
        let current = read_snapshot_file(&snapshot_dir.join("current"))?;
        let applied = ledger.last_applied()?;
        let written_through = ledger.written_through()?;
        let restore = if let Some(partial) = ledger.partial_apply()? {
            // A crash in the middle of an apply (see `Pending::commit`).
            tracing::warn!(
                applying = %partial,
                applied = ?applied,
                snapshot = ?current.as_ref().map(|s| s.meta.last_log_id),
                "the state machine holds an apply a crash interrupted; restoring it from its \
                 snapshot file (or from nothing) and applying the log again"
            );
            true
        } else if applied.is_some() && written_through != applied {
            // A stop without a write-through (a crash): index runs and day counts applied
            // after `written_through` were only in memory (see `crate::deferred`).
            tracing::warn!(
                applied = ?applied,
                written_through = ?written_through,
                snapshot = ?current.as_ref().map(|s| s.meta.last_log_id),
                "the state machine's index runs and day counts are complete only up to \
                 written_through (the node stopped without writing them through); restoring it \
                 from its snapshot file (or from nothing) and applying the log again"
            );
            true
        } else {
            false
        };
        if restore {
            // Start again from the snapshot file, or from nothing, and let openraft apply the
            // log again. The log holds every entry after the snapshot: it is purged only up to
            // a snapshot, after the state machine was fsynced past it.
            match &current {
                Some(snapshot) => replace_state(&ledger, &snapshot.meta, &snapshot.data)?,
                None => clear_state(&ledger)?,
            }
            durability.sync_blocking()?;
        }
        let started = std::time::Instant::now();
        let size = ledger.verify_chain()?;
        // Nothing writes yet: nothing may lie past the head either.
        ledger.verify_head()?;
        tracing::info!(
            events = size,
            millis = started.elapsed().as_millis() as u64,
            "verified the stored chain"
        );
        if let Some(snapshot) = &current {
            // The state machine is not fsynced on its own (see `apply`): after a crash it may be
            // behind the snapshot file, whose log entries may be purged. Catch up from the file.
            if snapshot.meta.last_log_id > ledger.last_applied()? {
                tracing::warn!(
                    snapshot = ?snapshot.meta.last_log_id,
                    applied = ?ledger.last_applied()?,
                    "state machine is behind the snapshot file; restoring it from the snapshot"
                );
                replace_state(&ledger, &snapshot.meta, &snapshot.data)?;
                durability.sync_blocking()?;
                ledger.verify_head()?;
            }
        }
        let (installed, _) = tokio::sync::watch::channel(SnapshotInstalled {
            through: ledger.last_applied()?,
            failed: false,
        });
        let window = crate::dedup::TxWindow::load(&ledger)?;
        Ok(Self {
            ledger,
            durability,
            snapshot_dir,
            current_snapshot: Arc::new(Mutex::new(current.as_ref().map(CurrentSnapshot::from))),
            opened_snapshot: Arc::new(Mutex::new(current)),
            tips: Arc::default(),
            window: Arc::new(Mutex::new(window)),
            copy_gate: Arc::default(),
            installed: Arc::new(installed),
        })
    }

    /// Tells how far the state machine holds the log (see [`SnapshotInstalled`]).
    pub(crate) fn installed(&self) -> tokio::sync::watch::Receiver<SnapshotInstalled> {
        self.installed.subscribe()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The size of the current snapshot's payload (`None`: no snapshot yet).
    pub fn snapshot_bytes(&self) -> Option<u64> {
        let current = self
            .current_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.as_ref().map(|snapshot| snapshot.data_bytes)
    }

    fn current(&self) -> Option<CurrentSnapshot> {
        match self.current_snapshot.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_current(&self, snapshot: CurrentSnapshot) {
        self.take_opened();
        match self.current_snapshot.lock() {
            Ok(mut guard) => *guard = Some(snapshot),
            Err(poisoned) => *poisoned.into_inner() = Some(snapshot),
        }
    }

    /// The snapshot file as `open` read it, if nothing took it yet (see `opened_snapshot`).
    fn take_opened(&self) -> Option<StoredSnapshot> {
        match self.opened_snapshot.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

fn read_snapshot_file(path: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let stored: StoredSnapshot =
        codec::decode(&bytes, &format!("snapshot file {}", path.display()))?;
    if chain::sha256(&stored.data) != stored.data_sha256 {
        return Err(StoreError::Corrupt(format!(
            "snapshot file {} fails its checksum",
            path.display()
        )));
    }
    Ok(Some(stored))
}

/// The CPU priority of the thread that builds a snapshot, on `thread-priority`'s cross-platform
/// scale (0 lowest to 99 highest): 25 is nice 9 on Linux, below the write path's threads at the
/// default nice 0. Building a snapshot of tens of MiB takes about half a second of CPU on every
/// node at once; at the same priority it took that from the writes under way (batches of 1000
/// waited up to a second in docs/PERFORMANCE.md). A thread of nice 9 still gets about a tenth
/// of a core against each busy thread of nice 0, so a snapshot is slowed, never starved.
const SNAPSHOT_THREAD_PRIORITY: u8 = 25;

/// Runs `work` on a thread of its own at [`SNAPSHOT_THREAD_PRIORITY`] (a pooled blocking thread
/// would keep the lower priority for whatever it ran next).
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".to_owned())
        .spawn(move || {
            let lowered = thread_priority::ThreadPriorityValue::try_from(SNAPSHOT_THREAD_PRIORITY)
                .map_err(|e| format!("{e:?}"))
                .and_then(|value| {
                    thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Crossplatform(value),
                    )
                    .map_err(|e| format!("{e:?}"))
                });
            if let Err(error) = lowered {
                tracing::warn!(%error, "could not lower the snapshot thread's priority");
            }
            let _ = done.send(work());
        })?;
    result
        .await
        .map_err(|_| std::io::Error::other("the snapshot thread ended without a result"))
}

/// Bytes of a snapshot file written between two `fdatasync`s, at most. A snapshot of the whole
/// state (tens to hundreds of MiB) written at once and fsynced at the end fills the disk's queue,
/// and every Raft log fsync of the node waits behind it: writes stall for hundreds of
/// milliseconds. Synced in steps, at most this much of it is ever queued ahead of the log.
pub const SNAPSHOT_SYNC_STEP_BYTES: usize = 1 << 20;

/// Writes the snapshot file: the bytes of [`StoredSnapshot`] `{ meta, data, data_sha256 }`,
/// field by field (postcard puts a struct's fields one after the other), so that the payload
/// is written from where it is, not copied into one more buffer of its size first.
fn write_snapshot_file(
    dir: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
    data_sha256: &Hash,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("current.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&codec::encode(meta))?;
    // The payload's length as postcard writes the length of a byte string (a varint).
    file.write_all(&codec::encode(&(data.len() as u64)))?;
    for step in data.chunks(SNAPSHOT_SYNC_STEP_BYTES) {
        file.write_all(step)?;
        file.sync_data()?;
    }
    file.write_all(&codec::encode(data_sha256))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join("current"))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Replaces every state-machine tree with the snapshot's: removes what is there and inserts the
/// snapshot's pairs, in one transaction, so a crash leaves either the old state or the new one.
fn replace_state(ledger: &Ledger, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
    let payload: SnapshotPayload = codec::decode(data, "snapshot payload")?;
    if payload.version != SNAPSHOT_FORMAT_VERSION || payload.trees.len() != SM_TREES.len() {
        return Err(StoreError::Corrupt(format!(
            "unsupported snapshot format version {}",
            payload.version
        )));
    }
    let mut batch = sled::Batch::default();
    for (index, ((name, pairs), space)) in payload.trees.iter().zip(ledger.spaces()).enumerate() {
        if name != SM_TREES[index] {
            return Err(StoreError::Corrupt(format!(
                "snapshot tree {index} is {name}, expected {}",
                SM_TREES[index]
            )));
        }
        for item in space.iter() {
            let (key, _) = item?;
            batch.remove(space.key(key));
        }
        for (key, value) in pairs {
            batch.insert(crate::space::tagged(index as u8, key), value.as_slice());
        }
    }
    let meta_tag = crate::apply::T_META;
    batch.insert(
        crate::space::tagged(meta_tag as u8, META_LAST_APPLIED),
        codec::encode(&meta.last_log_id),
    );
    batch.insert(
        crate::space::tagged(meta_tag as u8, META_LAST_MEMBERSHIP),
        codec::encode(&meta.last_membership),
    );
    // A snapshot holds every run and day count of its state (written through before its copy).
    batch.insert(
        crate::space::tagged(meta_tag as u8, META_WRITTEN_THROUGH),
        codec::encode(&meta.last_log_id),
    );
    ledger.apply_batch(batch)?;
    // What memory held is of an earlier state of the same log: a prefix of what sled holds
    // now, so readers that see both until here read the new state (see `crate::deferred`).
    ledger.deferred.clear();
    Ok(())
}

/// Empties the state machine (every key space), atomically.
fn clear_state(ledger: &Ledger) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for space in ledger.spaces() {
        for item in space.iter() {
            let (key, _) = item?;
            batch.remove(space.key(key));
        }
    }
    ledger.apply_batch(batch)?;
    ledger.deferred.clear();
    Ok(())
}

/// A copy of the state begun on the state-machine worker, to be read off it while applies go
/// on.
struct BegunCopy {
    copy: StateCopy,
    membership: StoredMembership,
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// Builds a snapshot: reads the state at the log id the copy began at, off the state-machine
/// worker (applies go on meanwhile), then encodes, hashes and writes it.
pub struct SnapshotBuilder {
    begun: Result<BegunCopy, StoreError>,
    store: StateMachineStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let begun = std::mem::replace(
            &mut self.begun,
            Err(StoreError::Corrupt("snapshot built twice".into())),
        );
        let begun = begun.map_err(|e| StorageIOError::read_state_machine(&e))?;
        let dir = self.store.snapshot_dir.clone();
        let started = std::time::Instant::now();
        // Reading, encoding, hashing and writing a large state take a while: not on an async
        // worker, and behind the write path when they compete for the CPU.
        let built = in_background(move || {
            let BegunCopy {
                copy,
                membership,
                _gate,
            } = begun;
            let last_applied = copy.last_applied;
            let payload = copy
                .read()
                .and_then(CopiedPayload::new)
                .map_err(std::io::Error::other)?;
            drop(_gate);
            // Until here applies keep each key's value from before the copy for it.
            let read_millis = started.elapsed().as_millis() as u64;
            let data = payload.encode();
            drop(payload);
            let snapshot_id = match last_applied {
                Some(log_id) => {
                    format!("{}-{}-{}", log_id.leader_id.term, log_id.index, data.len())
                }
                None => format!("empty-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            write_snapshot_file(&dir, &meta, &data, &chain::sha256(&data))?;
            Ok::<_, std::io::Error>((meta, data, read_millis))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let (meta, data, read_millis) =
            built.map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            bytes = data.len(),
            millis = started.elapsed().as_millis() as u64,
            read_millis,
            "built snapshot"
        );
        self.store.set_current(CurrentSnapshot {
            meta: meta.clone(),
            data_bytes: data.len() as u64,
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last_applied = self.ledger.last_applied().map_err(sm_read_err)?;
        let membership = self.ledger.last_membership().map_err(sm_read_err)?;
        Ok((last_applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tips = Arc::clone(&self.tips);
        let mut tips = tips.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = Arc::clone(&self.window);
        let mut window = window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut pending =
            crate::apply::Pending::new(&self.ledger, &tips, &window).map_err(sm_read_err)?;
        let mut responses = Vec::new();
        for entry in entries {
            responses.push(pending.apply_entry(&entry).map_err(sm_write_err)?);
        }
        let committed = pending.commit().map_err(sm_write_err)?;
        tips.absorb(committed.tips);
        window.absorb(committed.clock_ms, committed.generated);
        self.durability.wrote();
        // No fsync here: the log is the record. sled recovers a prefix of its writes, so after
        // a crash the state machine is behind the log and openraft applies again from
        // `last_applied` (written in the same batch); the log store fsyncs sled before it
        // removes entries. See `open` for the snapshot case.
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let gate = Arc::clone(&self.copy_gate).read_owned().await;
        // The copy reads sled: it must hold the runs and day counts kept in memory.
        let begun = self
            .ledger
            .write_through()
            .and_then(|()| self.ledger.begin_copy());
        let begun = begun.and_then(|copy| {
            Ok(BegunCopy {
                copy,
                membership: self.ledger.last_membership()?,
                _gate: gate,
            })
        });
        SnapshotBuilder {
            begun,
            store: self.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let installed = self.install(meta, snapshot.into_inner()).await;
        self.installed.send_modify(|state| match &installed {
            Ok(()) => state.through = state.through.max(meta.last_log_id),
            Err(_) => state.failed = true,
        });
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(current) = self.current() else {
            return Ok(None);
        };
        if let Some(opened) = self.take_opened() {
            return Ok(Some(Snapshot {
                meta: opened.meta,
                snapshot: Box::new(Cursor::new(opened.data)),
            }));
        }
        // Read back from its file (checked against its checksum): keeping a payload of hundreds
        // of MiB in memory for the rare follower that needs it cost as much memory again.
        let path = self.snapshot_dir.join("current");
        let read = tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(current.meta.signature()), &e))?;
        let stored =
            read.map_err(|e| StorageIOError::read_snapshot(Some(current.meta.signature()), &e))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

impl StateMachineStore {
    /// [`RaftStateMachine::install_snapshot`], before it tells the log store how it went.
    async fn install(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let snapshot_err = |e: &StoreError| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), e).into()
        };
        {
            // Not while a snapshot copy reads the state (it reads the state it began at).
            let _gate = self.copy_gate.write().await;
            let mut tips = self
                .tips
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tips.clear();
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let replace = || -> Result<crate::dedup::TxWindow, StoreError> {
                replace_state(&self.ledger, meta, &data)?;
                crate::dedup::TxWindow::load(&self.ledger)
            };
            // Rewriting the whole state takes a while for a large snapshot: off the async
            // worker where the runtime allows it, so that Raft's other tasks (its core, the
            // peer gRPC server: `ledgerd` gives Raft a runtime of one thread) go on meanwhile.
            let replaced = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(replace),
                _ => replace(),
            };
            *window = replaced.map_err(|e| snapshot_err(&e))?;
        }
        self.durability.sync().await.map_err(sm_write_err)?;
        self.ledger.verify_head().map_err(|e| snapshot_err(&e))?;

        let dir = self.snapshot_dir.clone();
        let data_bytes = data.len() as u64;
        let to_write = meta.clone();
        tokio::task::spawn_blocking(move || {
            write_snapshot_file(&dir, &to_write, &data, &chain::sha256(&data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.set_current(CurrentSnapshot {
            meta: meta.clone(),
            data_bytes,
        });
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot copied by reference encodes to the bytes `SnapshotPayload` decodes: keys
    /// split by their space tag, the tag left out.
    #[test]
    fn a_copied_payload_encodes_as_a_snapshot_payload() {
        let pairs = [
            (vec![0u8, 1], vec![]),
            (vec![0u8, 2, 3], vec![7u8; 300]),
            (vec![2u8; 40], vec![9u8; 3]),
        ];
        let copied = CopiedPayload::new(
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        sled::IVec::from(k.as_slice()),
                        sled::IVec::from(v.as_slice()),
                    )
                })
                .collect(),
        )
        .expect("known tags");
        let mut trees: Vec<TreeCopy> = SM_TREES
            .iter()
            .map(|name| ((*name).to_owned(), Vec::new()))
            .collect();
        trees[0].1 = vec![(vec![1], vec![]), (vec![2, 3], vec![7u8; 300])];
        trees[2].1 = vec![(vec![2u8; 39], vec![9u8; 3])];
        let expected = SnapshotPayload {
            version: SNAPSHOT_FORMAT_VERSION,
            trees,
        };
        assert_eq!(codec::encode(&copied), codec::encode(&expected));
        let encoded = copied.encode();
        assert_eq!(encoded, codec::encode(&expected));
        assert!(encoded.capacity() >= encoded.len());
        assert!(copied.encoded_bytes_max() >= encoded.len());
        let decoded: SnapshotPayload =
            codec::decode(&codec::encode(&copied), "payload").expect("decodes");
        assert_eq!(decoded.trees, expected.trees);

        let unknown = vec![(sled::IVec::from(&[200u8, 1][..]), sled::IVec::from(&[][..]))];
        assert!(CopiedPayload::new(unknown).is_err());
    }

    /// The snapshot file written field by field holds the bytes of `StoredSnapshot` as postcard
    /// encodes it, and as it encoded it before its payload was `serde_bytes` (byte by byte as a
    /// `Vec<u8>`): files of either build read in the other. The file reads back whole.
    #[test]
    fn a_snapshot_file_is_its_stored_snapshot_encoded() {
        #[derive(Serialize)]
        struct ByteByByte {
            meta: SnapshotMeta,
            data: Vec<u8>,
            data_sha256: Hash,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // Payloads around the varint length's steps (127/128 bytes) and over one sync step.
        for len in [0usize, 1, 127, 128, 300, SNAPSHOT_SYNC_STEP_BYTES + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let meta = SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(3, 1),
                    42,
                )),
                last_membership: StoredMembership::default(),
                snapshot_id: format!("3-42-{len}"),
            };
            let sha = chain::sha256(&data);
            write_snapshot_file(dir.path(), &meta, &data, &sha).expect("written");
            let file = std::fs::read(dir.path().join("current")).expect("file");
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
                data_sha256: sha,
            };
            assert_eq!(file, codec::encode(&stored), "payload of {len} bytes");
            let old = ByteByByte {
                meta: meta.clone(),
                data: data.clone(),
                data_sha256: sha,
            };
            assert_eq!(file, codec::encode(&old), "payload of {len} bytes");
            let read = read_snapshot_file(&dir.path().join("current"))
                .expect("reads")
                .expect("present");
            assert_eq!(read.meta, meta);
            assert_eq!(read.data, data);
        }
    }

    /// The snapshot thread runs at a lower priority than the threads that call it: its nice
    /// value (field 19 of `/proc/thread-self/stat`) is above theirs.
    #[cfg(target_os = "linux")]
    #[test]
    fn snapshots_are_built_on_a_thread_of_lower_priority() {
        fn nice() -> i64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
            // The fields after the command name, which is in parentheses: state is field 3.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .expect("stat has a command")
                .1
                .split_whitespace()
                .collect();
            fields[19 - 3].parse().expect("nice")
        }
        let caller = nice();
        if caller >= 9 {
            eprintln!(
                "skipped: this test runs at nice {caller}, not below the snapshot thread's 9"
            );
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let background = runtime
            .block_on(in_background(nice))
            .expect("background thread");
        assert_eq!(
            background, 9,
            "the snapshot thread's nice value (the caller's: {caller})"
        );
    }
}
