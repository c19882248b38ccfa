//! [`LogStore`]: openraft's log storage on the sled trees `raft_log` (entries by index) and
//! `raft_meta` (vote, last purged log id, committed log id).
//!
//! Invariants: the log has no holes; the vote and every append are fsync-durable before openraft
//! hears of them; `last_purged` is written before the entries it covers are removed; the log
//! never ends before the durable mark ([`crate::mark`]) says it once reached.
//!
//! Appends are asynchronous, as openraft's `LogFlushed` allows: `append` writes the entries
//! into sled (readable at once) and hands the callback to the log-sync thread, which fsyncs
//! and only then calls back, in order, one fsync for every append queued meanwhile. openraft
//! runs storage calls inside its core task, so an `append` that waited for its fsync would
//! hold back everything else, replication to the followers first of all: with the fsync off
//! the core task, the fsyncs of the leader and of the followers overlap.

// openraft's `StorageError` is the error type of the traits implemented here; it is large.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
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
use crate::mark::{Mark, MarkValue};
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::Vote;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    durability: Durability,
    /// The committed log index openraft last reported, plus one (0: none), for metrics.
    committed_plus_one: Arc<AtomicU64>,
    mark: Mark,
    /// To the log-sync thread (see the module documentation).
    syncer: std_mpsc::Sender<SyncRequest>,
}

fn meta_value<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match meta.get(key).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => {
            let what = String::from_utf8_lossy(key).into_owned();
            codec::decode(&bytes, &what).map(Some).map_err(read_err)
        }
    }
}

fn last_log_index(log: &sled::Tree) -> Result<Option<u64>, StorageError> {
    match log.last().map_err(read_err)? {
        None => Ok(None),
        Some((key, _)) => codec::u64_from_key(&key).map(Some).map_err(read_err),
    }
}

/// Work for the log-sync thread.
enum SyncRequest {
    /// Entries up to `last_index` were written: fsync, then call back.
    Appended {
        last_index: Option<u64>,
        callback: LogFlushed<TypeConfig>,
    },
    /// fsync everything written so far (an append, a vote, a truncation), then answer; every
    /// earlier request is answered first.
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// The log-sync thread: takes every request queued, fsyncs once, answers them in order. After
/// a failed fsync every later request fails too: the node is stopping (openraft treats a log
/// I/O error as fatal), and nothing written after it may be called durable.
fn spawn_syncer(durability: Durability, mark: Mark) -> std_mpsc::Sender<SyncRequest> {
    let (sender, receiver) = std_mpsc::channel::<SyncRequest>();
    let spawned = std::thread::Builder::new()
        .name("log-sync".to_owned())
        .spawn(move || {
            let mut failed: Option<(io::ErrorKind, String)> = None;
            while let Ok(first) = receiver.recv() {
                let mut requests = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    requests.push(next);
                }
                if failed.is_none()
                    && let Err(error) = durability.sync_blocking()
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
    /// Opens the log trees of `db` and checks them against the durable mark in `dir`.
    pub(crate) fn new(
        db: &sled::Db,
        durability: Durability,
        dir: &std::path::Path,
    ) -> Result<Self, crate::StoreError> {
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let corrupt = |e: StorageError| crate::StoreError::Corrupt(e.to_string());
        let last_entry = last_log_index(&log).map_err(corrupt)?;
        let last_purged: Option<LogId> = meta_value(&meta, KEY_LAST_PURGED).map_err(corrupt)?;
        let vote: Option<Vote> = meta_value(&meta, KEY_VOTE).map_err(corrupt)?;
        let last_index = last_entry.max(last_purged.map(|id| id.index));
        let actual = MarkValue {
            log_end: last_index.map_or(0, |index| index + 1),
            vote_term: vote.map_or(0, |vote| vote.leader_id.term),
        };
        let mark = Mark::open(dir, actual).map_err(crate::StoreError::Corrupt)?;
        let syncer = spawn_syncer(durability.clone(), mark.clone());
        let store = Self {
            log,
            meta,
            durability,
            committed_plus_one: Arc::default(),
            mark,
            syncer,
        };
        let committed = store
            .meta_get::<Option<LogId>>(KEY_COMMITTED)
            .map_err(corrupt)?
            .flatten();
        store.note_committed(committed);
        Ok(store)
    }

    fn note_committed(&self, committed: Option<LogId>) {
        let value = committed.map_or(0, |log_id| log_id.index + 1);
        self.committed_plus_one.store(value, Ordering::Relaxed);
    }

    /// The last committed log index this node knows of.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed_plus_one
            .load(Ordering::Relaxed)
            .checked_sub(1)
    }

    /// fsync counters of the store.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// Writes the durable mark now (clean shutdown).
    pub fn flush_mark(&self) -> io::Result<()> {
        self.mark.flush()
    }

    /// Makes everything written to sled so far durable, through the log-sync thread, after
    /// every append handed to it before. The vote and truncations use it too, so all of the
    /// log store's fsyncs happen in one place and in order.
    async fn sync_barrier(&self) -> io::Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.syncer
            .send(SyncRequest::Barrier(done))
            .map_err(|_| io::Error::other("the log-sync thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the log-sync thread is gone"))?
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        meta_value(&self.meta, key)
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.meta_get(KEY_LAST_PURGED)
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
        for item in self.log.iter().rev() {
            let (_, value) = item.map_err(crate::StoreError::Sled)?;
            let entry: Entry = codec::decode(&value, "log entry")?;
            if let openraft::EntryPayload::Membership(found) = entry.payload {
                membership = found;
                break;
            }
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
        self.log
            .insert(codec::u64_key(index), codec::encode(&entry))
            .map_err(crate::StoreError::Sled)?;
        self.save_vote(&Vote::new(term, node)).await.map_err(io)?;
        // The vote's barrier made the entry durable too.
        self.mark.log_durable(index);
        self.mark.flush()?;
        Ok(ForcedMembership {
            previous_voters,
            term,
            index,
        })
    }

    /// The index of the last entry present, for tests and metrics.
    pub fn last_index(&self) -> Result<Option<u64>, StorageError> {
        last_log_index(&self.log)
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
            Bound::Included(&n) => Bound::Included(codec::u64_key(n)),
            Bound::Excluded(&n) => Bound::Excluded(codec::u64_key(n)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut expected = start;
        for item in self
            .log
            .range((Bound::Included(codec::u64_key(start)), end))
        {
            let (key, value) = item.map_err(read_err)?;
            let index = codec::u64_from_key(&key).map_err(read_err)?;
            let entry: Entry = codec::decode(&value, "log entry").map_err(read_err)?;
            // A stored entry's key and its log id must agree, and the log has no holes.
            assert_eq!(
                entry.log_id.index, index,
                "raft_log key {index} holds entry {}",
                entry.log_id
            );
            if !entries.is_empty() {
                assert_eq!(index, expected, "raft_log has a hole before index {index}");
            }
            expected = index + 1;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.log.last().map_err(read_err)? {
            None => last_purged_log_id,
            Some((_, value)) => {
                let entry: Entry = codec::decode(&value, "log entry").map_err(read_err)?;
                Some(entry.log_id)
            }
        };
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
        self.meta
            .insert(KEY_VOTE, codec::encode(vote))
            .map_err(vote_err)?;
        self.sync_barrier().await.map_err(vote_err)?;
        self.mark.vote_durable(vote.leader_id.term);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta_get(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: losing it only means re-applying less at start-up; the next
        // append's fsync makes it durable anyway.
        self.meta
            .insert(KEY_COMMITTED, codec::encode(&committed))
            .map_err(write_err)?;
        self.note_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta_get::<Option<LogId>>(KEY_COMMITTED)?.flatten())
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
        let mut batch = sled::Batch::default();
        let mut last_index = None;
        for entry in entries {
            batch.insert(&codec::u64_key(entry.log_id.index), codec::encode(&entry));
            last_index = Some(entry.log_id.index);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
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
        let index = log_id.index;
        tokio::task::spawn_blocking(move || mark.before_truncate(index))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(codec::u64_key(log_id.index)..) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.sync_barrier().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(previous) = self.last_purged()? {
            assert!(
                previous <= log_id,
                "purge went backwards: {previous} then {log_id}"
            );
        }
        // sled recovers a prefix of its writes in order, so `last_purged` is durable whenever
        // any of the removals below is.
        self.meta
            .insert(KEY_LAST_PURGED, codec::encode(&log_id))
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=codec::u64_key(log_id.index)) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
