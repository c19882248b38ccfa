//! [`LogStore`]: openraft's log storage on the segment files of [`crate::wal`] (entries) and
//! its `meta` file (vote, last purged log id, committed log id).
//!
//! Invariants: the log has no holes; the vote and every append are fsync-durable before openraft
//! hears of them; a segment file is deleted only after the state machine and `last_purged` are
//! durable past its entries; the log never ends before the durable mark ([`crate::mark`]) says
//! it once reached.
//!
//! Appends are asynchronous, as openraft's `LogFlushed` allows: `append` writes the records
//! into the last segment (readable at once) and hands the callback to the log-sync thread, which
//! `fdatasync`s the segment and only then calls back, in order, one fsync for every append
//! queued meanwhile. openraft runs storage calls inside its core task, so an `append` that
//! waited for its fsync would hold back everything else, replication to the followers first of
//! all: with the fsync off the core task, the fsyncs of the leader and of the followers overlap.
//!
//! The log lives outside sled because sled made every append cost a copy of the tree node that
//! holds it, a hand-off to sled's I/O threads and two device waits (its flush, then ours).
//! The state machine in sled is therefore no longer made durable by the log's fsync: it is
//! fsynced before log entries are removed (a purge), when a snapshot is installed and at clean
//! shutdown; after a crash it is behind the log, and openraft applies the difference again.

// openraft's `StorageError` is the error type of the traits implemented here; it is large.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;

use crate::codec;
use crate::durability::Durability;
use crate::durability::SyncStats;
use crate::mark::{Mark, MarkValue};
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::wal::{self, MetaFile, RecordId, Wal};

/// The log directory inside a store directory.
pub const LOG_DIR: &str = "raft-log";

/// Bytes of log records one AppendEntries carries at most, besides its first entry (which it
/// carries whatever its size, up to [`crate::ENTRY_BYTES_MAX`]). openraft 0.9 counts only
/// entries (`max_payload_entries`), and uses the heartbeat interval as the deadline of every
/// AppendEntries: a follower behind by dozens of large entries (batches of 1000 events, about
/// 0.5 MiB each) got them in one message of tens of MiB that it could not take within that
/// deadline while the cluster was busy, so the leader gave up and sent the same bytes again,
/// and the follower stayed behind for as long as the load lasted; past 64 MiB
/// (`GRPC_MESSAGE_BYTES_MAX` in `node`) the message could not be sent at all.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 4 << 20;

#[derive(Clone)]
pub struct LogStore {
    files: Files,
    /// The last purged log id openraft gave (the durable one, in `meta`, may lag behind).
    last_purged: Arc<Mutex<Option<LogId>>>,
    stats: Arc<SyncStats>,
    mark: Mark,
    /// To the log-sync thread (see the module documentation).
    syncer: std_mpsc::Sender<SyncRequest>,
    /// To the purge thread.
    purger: std_mpsc::Sender<LogId>,
    /// Set when the purge thread failed: every later append fails (fail-stop).
    purge_failed: Arc<Mutex<Option<String>>>,
    /// Whether a vote was saved since the store was opened (see `read_vote`).
    vote_saved: Arc<std::sync::atomic::AtomicBool>,
    /// How far the state machine holds the log: a purge past the end of the log that a
    /// snapshot install announced ([`LogStore::expect_snapshot_install`]) waits for it (see
    /// [`crate::state_machine::SnapshotInstalled`]).
    installed: tokio::sync::watch::Receiver<crate::state_machine::SnapshotInstalled>,
    /// The last log id of the newest snapshot announced to be installed.
    install_announced: Arc<Mutex<Option<LogId>>>,
    /// Whether the log-sync thread waits before its next fsync ([`LogStore::hold_log_sync`]).
    sync_hold: Arc<SyncHold>,
}

/// Holds the log-sync thread before its fsync, for tests of what waits for it.
#[derive(Default)]
struct SyncHold {
    held: Mutex<bool>,
    released: std::sync::Condvar,
}

impl SyncHold {
    fn wait_while_held(&self) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let _released = self
            .released
            .wait_while(held, |held| *held)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// Work for the log-sync thread.
enum SyncRequest {
    /// Entries up to `last_index` were written: fsync, then call back.
    Appended {
        last_index: Option<u64>,
        callback: LogFlushed<TypeConfig>,
    },
    /// fsync everything written so far, then answer; every earlier request is answered first.
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// fsyncs the segment files written since the last call.
fn sync_dirty(dirty: &Mutex<Vec<Arc<std::fs::File>>>, stats: &SyncStats) -> io::Result<()> {
    let files = std::mem::take(&mut *dirty.lock().unwrap_or_else(|p| p.into_inner()));
    if files.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    for file in files {
        file.sync_data()?;
    }
    stats.record(started.elapsed());
    Ok(())
}

/// The log-sync thread: takes every request queued, fsyncs once, answers them in order. After
/// a failed fsync every later request fails too: the node is stopping (openraft treats a log
/// I/O error as fatal), and nothing written after it may be called durable.
fn spawn_syncer(
    dirty: Arc<Mutex<Vec<Arc<std::fs::File>>>>,
    stats: Arc<SyncStats>,
    mark: Mark,
    hold: Arc<SyncHold>,
) -> std_mpsc::Sender<SyncRequest> {
    let (sender, receiver) = std_mpsc::channel::<SyncRequest>();
    let spawned = std::thread::Builder::new()
        .name("log-sync".to_owned())
        .spawn(move || {
            let mut failed: Option<(io::ErrorKind, String)> = None;
            while let Ok(first) = receiver.recv() {
                let mut requests = vec![first];
                hold.wait_while_held();
                while let Ok(next) = receiver.try_recv() {
                    requests.push(next);
                }
                if failed.is_none()
                    && let Err(error) = sync_dirty(&dirty, &stats)
                {
                    failed = Some((error.kind(), error.to_string()));
                }
                for request in requests {
                    let outcome = match &failed {
                        None => Ok(()),
                        Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                    };
                    match request {
                        SyncRequest::Appended {
                            last_index,
                            callback,
                        } => {
                            if outcome.is_ok()
                                && let Some(index) = last_index
                            {
                                mark.log_durable(index);
                            }
                            callback.log_io_completed(outcome);
                        }
                        SyncRequest::Barrier(done) => {
                            let _ = done.send(outcome);
                        }
                    }
                }
            }
        });
    if let Err(error) = spawned {
        // Without the thread every append fails (its request cannot be sent): fail-stop.
        tracing::error!(%error, "cannot start the log-sync thread");
    }
    sender
}

/// The log's files and what a purge needs, shared by the log store and the purge thread.
#[derive(Clone)]
struct Files {
    wal: Arc<Mutex<Wal>>,
    meta: Arc<MetaFile>,
    /// The committed log id openraft last reported; written to `meta` with its other changes.
    committed: Arc<Mutex<Option<LogId>>>,
    /// The state machine's sled: made durable before log entries are removed, and at shutdown.
    state_machine: Durability,
}

impl Files {
    fn committed(&self) -> Option<LogId> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the purge up to `log_id` durable, then deletes the segments it emptied: first
    /// the state machine (whose entries these were) is fsynced, then `meta` records the purge.
    fn run(&self, log_id: LogId) -> io::Result<()> {
        self.state_machine.sync_blocking()?;
        let committed = self.committed();
        self.meta.update(|meta| {
            meta.last_purged = meta.last_purged.max(Some(log_id));
            meta.committed = meta.committed.max(committed);
        })?;
        let (paths, dir) = {
            let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
            (wal.take_purged_segments(log_id.index), wal.dir().to_owned())
        };
        for path in &paths {
            std::fs::remove_file(path)?;
        }
        if !paths.is_empty() {
            wal::sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// The purge thread: runs the purges handed to it, the newest only when several wait. A purge
/// fsyncs the state machine's sled, which may take a while: not on openraft's core task.
fn spawn_purger(purge: Files, failed: Arc<Mutex<Option<String>>>) -> std_mpsc::Sender<LogId> {
    let (sender, receiver) = std_mpsc::channel::<LogId>();
    let spawned = std::thread::Builder::new()
        .name("log-purge".to_owned())
        .spawn(move || {
            while let Ok(mut log_id) = receiver.recv() {
                while let Ok(next) = receiver.try_recv() {
                    log_id = log_id.max(next);
                }
                if let Err(error) = purge.run(log_id) {
                    tracing::error!(%error, %log_id, "cannot purge the Raft log");
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "purging the Raft log up to {log_id} failed: {error}"
                    ));
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the log-purge thread");
    }
    sender
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// What [`LogStore::force_single_voter`] did.
#[derive(Debug, Clone)]
pub struct ForcedMembership {
    pub previous_voters: Vec<NodeId>,
    pub term: u64,
    pub index: u64,
}

impl LogStore {
    /// Opens the log in `<dir>/raft-log` and checks it against the durable mark in `dir`.
    /// `state_machine` is the sled database of the state machine, made durable before a purge;
    /// `applied` is its last applied log id (everything applied was committed).
    pub(crate) fn new(
        dir: &Path,
        state_machine: Durability,
        applied: Option<LogId>,
        installed: tokio::sync::watch::Receiver<crate::state_machine::SnapshotInstalled>,
    ) -> Result<Self, crate::StoreError> {
        let opened = Wal::open(&dir.join(LOG_DIR))?;
        if opened.torn_bytes > 0 {
            tracing::warn!(
                bytes = opened.torn_bytes,
                "cut an incomplete record from the end of the Raft log (a write the crash \
                 interrupted; it was never acknowledged)"
            );
        }
        let wal = opened.wal;
        let stored = opened.meta.get();
        let last_index = wal.last_index().max(stored.last_purged.map(|id| id.index));
        let actual = MarkValue {
            log_end: last_index.map_or(0, |index| index + 1),
            vote_term: stored.vote.map_or(0, |vote| vote.leader_id.term),
        };
        let mark = Mark::open(dir, actual).map_err(crate::StoreError::Corrupt)?;
        let stats = Arc::new(SyncStats::default());
        let sync_hold = Arc::new(SyncHold::default());
        let syncer = spawn_syncer(
            wal.dirty(),
            Arc::clone(&stats),
            mark.clone(),
            Arc::clone(&sync_hold),
        );
        let files = Files {
            wal: Arc::new(Mutex::new(wal)),
            meta: Arc::new(opened.meta),
            // Everything applied was committed.
            committed: Arc::new(Mutex::new(stored.committed.max(applied))),
            state_machine,
        };
        let purge_failed = Arc::default();
        let purger = spawn_purger(files.clone(), Arc::clone(&purge_failed));
        Ok(Self {
            files,
            last_purged: Arc::new(Mutex::new(stored.last_purged)),
            stats,
            mark,
            syncer,
            purger,
            purge_failed,
            vote_saved: Arc::default(),
            installed,
            install_announced: Arc::default(),
            sync_hold,
        })
    }

    /// While `held`, the log-sync thread waits before its next fsync: appends are written (and
    /// readable) but not durable, and not acknowledged. For tests of what must wait for the
    /// log's fsync (`tests/leader_flush.rs`); a node never holds it.
    #[doc(hidden)]
    pub fn hold_log_sync(&self, held: bool) {
        *self
            .sync_hold
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = held;
        self.sync_hold.released.notify_all();
    }

    /// A snapshot up to `last` is about to be handed to openraft to install. openraft 0.9 then
    /// asks for the purge up to `last` right after it hands the snapshot to the state machine,
    /// not after the install; announced, that purge waits for the install (see `purge`).
    /// Call it before `Raft::install_full_snapshot`.
    pub fn expect_snapshot_install(&self, last: Option<LogId>) {
        let mut announced = self
            .install_announced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *announced = (*announced).max(last);
    }

    /// The last committed log index this node knows of.
    pub fn committed_index(&self) -> Option<u64> {
        self.files.committed().map(|log_id| log_id.index)
    }

    /// Bytes of the log's records after `index` (all of them with `None`): what a snapshot at
    /// `index` made redundant since.
    pub fn bytes_after(&self, index: Option<u64>) -> u64 {
        self.wal()
            .bytes_from(index.map_or(0, |index| index.saturating_add(1)))
    }

    /// fsync counters of the log (every `fdatasync` of its segments).
    pub fn sync_stats(&self) -> &SyncStats {
        &self.stats
    }

    /// At clean shutdown: makes the state machine durable (so the next start has nothing to
    /// apply again) and writes the durable mark.
    pub fn close(&self) -> io::Result<()> {
        self.files.state_machine.sync_blocking()?;
        self.mark.flush()
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.files.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn purged(&self) -> Option<LogId> {
        *self.last_purged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every append handed to the log-sync thread so far durable, in order.
    async fn sync_barrier(&self) -> io::Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.syncer
            .send(SyncRequest::Barrier(done))
            .map_err(|_| io::Error::other("the log-sync thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the log-sync thread is gone"))?
    }

    /// Writes `entries` into the log (not yet durable), returning the last index written.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Option<u64>, StorageError> {
        let mut records = Vec::new();
        let mut ids = Vec::new();
        for entry in entries {
            let start = records.len();
            records.resize(start + wal::RECORD_HEADER_BYTES, 0);
            records = postcard::to_extend(&entry, records).map_err(write_err)?;
            let payload = records.len() - start - wal::RECORD_HEADER_BYTES;
            if payload > wal::RECORD_PAYLOAD_BYTES_MAX {
                return Err(write_err(io::Error::other(format!(
                    "log entry {} is {payload} bytes, more than a record may hold",
                    entry.log_id
                ))));
            }
            let id = RecordId::of(&entry.log_id);
            wal::seal_record(&mut records[start..], id);
            ids.push((id, records.len() - start));
        }
        let last = ids.last().map(|(id, _)| id.index);
        self.wal().append(&records, &ids).map_err(write_err)?;
        Ok(last)
    }

    /// Disaster recovery after the loss of a majority (`ledgerd --force-single-voter`): appends,
    /// durably, a membership entry that makes `node` the only voter, in a term above every term
    /// this store has seen, and votes for it in that term. Started afterwards, the node elects
    /// itself, commits everything in its log and carries on alone; new nodes are then added
    /// under new ids. Entries that a lost majority committed but this node never received are
    /// gone: recover the node with the longest log (the old leader, if it survived).
    ///
    /// Only on a stopped node's store: openraft must not be running on it.
    pub async fn force_single_voter(
        &mut self,
        node: NodeId,
        applied_membership: &StoredMembership,
    ) -> Result<ForcedMembership, crate::StoreError> {
        let io = |e: StorageError| crate::StoreError::Io(io::Error::other(e.to_string()));
        let state = self.get_log_state().await.map_err(io)?;
        let last_log_id = state.last_log_id.ok_or_else(|| {
            crate::StoreError::Io(io::Error::other(
                "the log is empty: this node never joined a cluster, nothing to recover",
            ))
        })?;
        let vote = self.read_vote().await.map_err(io)?;
        // The newest membership: the last membership entry of the log, else the applied one.
        let mut membership = applied_membership.membership().clone();
        let all = self.try_get_log_entries(..).await.map_err(io)?;
        if let Some(found) = all.into_iter().rev().find_map(|entry| match entry.payload {
            openraft::EntryPayload::Membership(found) => Some(found),
            _ => None,
        }) {
            membership = found;
        }
        let self_node = membership.get_node(&node).cloned().ok_or_else(|| {
            crate::StoreError::Io(io::Error::other(format!(
                "node {node} is not in the cluster's last membership; recover a node that is"
            )))
        })?;
        let previous_voters: Vec<NodeId> = membership.voter_ids().collect();
        let term = vote
            .map_or(0, |vote| vote.leader_id.term)
            .max(last_log_id.leader_id.term)
            + 1;
        let index = last_log_id.index + 1;
        let forced = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node])],
            std::collections::BTreeMap::from([(node, self_node)]),
        );
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, node), index),
            payload: openraft::EntryPayload::Membership(forced),
        };
        self.write_entries([entry]).map_err(io)?;
        self.sync_barrier().await?;
        self.mark.log_durable(index);
        self.save_vote(&Vote::new(term, node)).await.map_err(io)?;
        self.mark.flush()?;
        Ok(ForcedMembership {
            previous_voters,
            term,
            index,
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&n) => n.saturating_add(1),
            Bound::Excluded(&n) => n,
            Bound::Unbounded => u64::MAX,
        };
        let records = self.wal().read(start, end).map_err(read_err)?;
        decode_records(records)
    }

    /// At most [`APPEND_ENTRIES_BYTES_MAX`] of records (at least one entry): what replication
    /// sends in one AppendEntries.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        // One look at the log for both: where the bytes run out, and the records up to there.
        let records = {
            let wal = self.wal();
            let end = wal.end_within(start, end, APPEND_ENTRIES_BYTES_MAX as u64);
            wal.read(start, end).map_err(read_err)?
        };
        decode_records(records)
    }
}

/// Log records as entries, each checked against its record's header.
fn decode_records(records: Vec<(RecordId, Vec<u8>)>) -> Result<Vec<Entry>, StorageError> {
    let mut entries = Vec::with_capacity(records.len());
    for (id, payload) in records {
        let entry: Entry = codec::decode(&payload, "log entry").map_err(read_err)?;
        // A record's header and its entry must agree.
        assert_eq!(
            RecordId::of(&entry.log_id),
            id,
            "the Raft log record of index {} holds entry {}",
            id.index,
            entry.log_id
        );
        entries.push(entry);
    }
    Ok(entries)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.purged();
        let last_log_id = self
            .wal()
            .last_id()
            .map(|id| id.log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        fn vote_err(e: impl std::error::Error + 'static) -> StorageError {
            StorageIOError::write_vote(&e).into()
        }
        let meta = Arc::clone(&self.files.meta);
        let committed = self.files.committed();
        let to_save = *vote;
        tokio::task::spawn_blocking(move || {
            meta.update(|stored| {
                stored.vote = Some(to_save);
                stored.committed = stored.committed.max(committed);
            })
        })
        .await
        .map_err(vote_err)?
        .map_err(vote_err)?;
        self.mark.vote_durable(vote.leader_id.term);
        self.vote_saved.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let mut vote = self.files.meta.get().vote;
        if !self.vote_saved.load(Ordering::SeqCst)
            && let Some(vote) = &mut vote
        {
            // Read back after a restart, a vote is never committed: openraft 0.9 would otherwise
            // resume leadership at once, without an election and so without a blank entry of a
            // new term. Such a leader only knows the commit index it persisted, and `committed`
            // is not fsynced on every change (see `save_committed`): its read index could lie
            // below writes it acknowledged before the restart, and a linearizable read would
            // miss them (seen in t18). With an uncommitted vote the node campaigns in a new
            // term, and a leader's read index is always at least its blank entry.
            vote.committed = false;
        }
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory and written with the next change of `meta` (a vote, a purge): losing
        // it only means applying less at start-up, before the leader says more is committed.
        *self
            .files
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.files.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(failure) = self
            .purge_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(write_err(io::Error::other(failure)));
        }
        let last_index = self.write_entries(entries)?;
        // Readable now; durable once the log-sync thread's fsync returns, and only then is
        // openraft told (through the callback).
        self.syncer
            .send(SyncRequest::Appended {
                last_index,
                callback,
            })
            .map_err(|_| write_err(io::Error::other("the log-sync thread is gone")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Appends still waiting for their fsync would raise the mark again after it is lowered
        // below: let them finish first.
        self.sync_barrier().await.map_err(write_err)?;
        // The mark must not claim the entries about to go, even if we crash halfway.
        let mark = self.mark.clone();
        let wal = Arc::clone(&self.files.wal);
        let index = log_id.index;
        tokio::task::spawn_blocking(move || {
            mark.before_truncate(index)?;
            wal.lock()
                .unwrap_or_else(|p| p.into_inner())
                .truncate(index)
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut purged = self.last_purged.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(previous) = *purged {
                assert!(
                    previous <= log_id,
                    "purge went backwards: {previous} then {log_id}"
                );
            }
            *purged = Some(log_id);
        }
        let gap = self.wal().forget_upto(log_id.index);
        let purge = self.files.clone();
        if gap {
            // The next append starts past the end of the log (a snapshot is being installed, or
            // the state machine is ahead of the log at start-up): `meta` must cover the gap on
            // disk before anything is written after it. openraft 0.9 asks for the purge of an
            // install right after it hands the snapshot to the state machine, not after the
            // install: if one was announced for this purge, wait until the state machine holds
            // what the purged entries held (`run` then fsyncs it before recording the purge).
            let announced = *self
                .install_announced
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if announced >= Some(log_id) {
                let mut installed = self.installed.clone();
                let through = installed
                    .wait_for(|state| state.failed || state.through >= Some(log_id))
                    .await
                    .map_err(|_| write_err(io::Error::other("the state machine is gone")))?
                    .through;
                if through < Some(log_id) {
                    return Err(write_err(io::Error::other(format!(
                        "not purging the log up to {log_id}: the snapshot that covers it was \
                         not installed"
                    ))));
                }
            }
            tokio::task::spawn_blocking(move || purge.run(log_id))
                .await
                .map_err(write_err)?
                .map_err(write_err)?;
        } else {
            self.purger
                .send(log_id)
                .map_err(|_| write_err(io::Error::other("the log-purge thread is gone")))?;
        }
        Ok(())
    }
}
