//! [`Ledger`]: the ledger's key spaces and the read-only queries over them.
//!
//! Every space lives in the one sled tree `sm`, keys prefixed with the space's tag (its position
//! in [`SM_TREES`]; see [`crate::space`]). They are written only by the state machine
//! ([`crate::StateMachineStore`]), one insert after the other, `applying` first and
//! `last_applied` last (see [`Ledger::apply_mark`]); everything else reads them through this
//! handle.
//!
//! | space          | key                                   | value                        |
//! |----------------|---------------------------------------|------------------------------|
//! | `sm_meta`      | `last_applied`, `last_membership`, `head`, `cluster`, `agents_total` | postcard |
//! | `sm_meta`      | `txlog/`, dedup clock, log index (`dedup::ChunkRef`) | postcard of the records of an entry's generated dedup keys ([`crate::dedup`]) |
//! | `sm_events`    | seq of the chunk's first event (u64 BE) | a chunk: consecutive postcard([`Event`]s) ([`codec::encode_event_chunk`]) |
//! | `sm_idx`       | [`IndexScope`] prefix, ordinal of the run's first entry (u64 BE) | a run: consecutive (seq, created_at) entries (2 × 8 BE each) |
//! | `sm_tx`        | dedup key (32 bytes) of every applied proposal with a client's key | postcard([`TxRecord`]) |
//! | `sm_nodes`     | node id (u64 BE)                      | postcard([`NodeRecord`])     |
//! | `sm_keys`      | key id                                | postcard([`ApiKeyRecord`])   |
//! | `sm_operators` | operator id                           | postcard([`OperatorRecord`]) |
//! | `sm_agents`    | asn                                   | postcard([`AgentRecord`])    |
//! | `sm_merkle`    | level (u32 BE, at least [`MERKLE_STORED_LEVEL_MIN`]), index (u64 BE) | hash of that complete subtree |
//! | `sm_trust`     | asn 0x00 day (i64 BE, sign bit flipped) | events by severity (4 × u64 BE) |
//!
//! Two indexes list an agent's events in ledger order by ordinal: all of them, and those of
//! one type. `created_at` never decreases in ledger order, so it never decreases along an
//! index either: a date range is a range of ordinals found by binary search, and any page is
//! a short range scan, whatever its number.
//!
//! Values are packed because sled's cost is per insert (it copies the tree node on every
//! write): one `apply` writes its events as chunks of up to [`EVENT_CHUNK_EVENTS_MAX`], and
//! each index it touches as one run of consecutive ordinals, keyed by the first. An index's
//! length is the end of its last run; an event or an index entry is found by a reverse range
//! lookup of the key at or before it. Merkle subtrees below [`MERKLE_STORED_LEVEL_MIN`] are
//! not stored: they are recomputed from at most `2^(MERKLE_STORED_LEVEL_MIN - 1)` events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;
use crate::chain;
use crate::codec;
use crate::codec::IndexScope;
use crate::deferred;
use crate::deferred::Deferred;
use crate::space::Space;
use crate::types::AgentRecord;
use crate::types::ApiKeyRecord;
use crate::types::ClusterRecord;
use crate::types::CommandResult;
use crate::types::Event;
use crate::types::Hash;
use crate::types::LedgerHead;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::NodeRecord;
use crate::types::OperatorRecord;
use crate::types::StoredMembership;

pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
/// The log id an apply is writing, written before any of its writes (`last_applied` is written
/// after all of them): a store where it is ahead of `last_applied` holds a partial apply.
pub(crate) const META_APPLYING: &[u8] = b"applying";
pub(crate) const META_LAST_MEMBERSHIP: &[u8] = b"last_membership";
pub(crate) const META_HEAD: &[u8] = b"head";
pub(crate) const META_CLUSTER: &[u8] = b"cluster";
pub(crate) const META_AGENTS_TOTAL: &[u8] = b"agents_total";
pub(crate) const META_OPERATORS_TOTAL: &[u8] = b"operators_total";
/// The `last_applied` through which sled holds every index run and day count (written by a
/// write-through of [`crate::deferred`], or by an apply that leaves nothing in memory). A store
/// where it is not `last_applied` is restored from its snapshot file at open.
pub(crate) const META_WRITTEN_THROUGH: &[u8] = b"written_through";

/// How many state-machine key spaces there are.
pub(crate) const SM_TREE_COUNT: usize = 10;

/// Meta key of the store format; a store of another format refuses to open.
pub(crate) const META_STORE_FORMAT: &[u8] = b"store_format";

/// 3: events in chunks, indexes in runs, Merkle subtrees from level 4 (no `sm_counts`).
/// 4: the Raft log in segment files of its own (`raft-log/`), no longer in sled.
/// 5: partial index runs and day counts written to sled only by a write-through
/// ([`crate::deferred`]), which `written_through` records.
pub(crate) const STORE_FORMAT: u32 = 5;

/// The most events one `sm_events` chunk holds.
pub const EVENT_CHUNK_EVENTS_MAX: usize = 32;

/// The lowest level of stored Merkle subtrees; lower ones are recomputed from the events.
pub const MERKLE_STORED_LEVEL_MIN: u32 = 4;

/// Names of every state-machine key space, in a fixed order: a space's position is its tag
/// byte, and snapshots list the spaces in this order.
pub(crate) const SM_TREES: [&str; SM_TREE_COUNT] = [
    "sm_meta",
    "sm_events",
    "sm_idx",
    "sm_tx",
    "sm_nodes",
    "sm_keys",
    "sm_operators",
    "sm_agents",
    "sm_merkle",
    "sm_trust",
];

/// What the state machine remembers of an applied proposal, to answer a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxRecord {
    /// Appended events: the range of their seqs (the events themselves are in `sm_events`).
    Events {
        body_hash: Hash,
        first_seq: u64,
        count: u64,
    },
    /// Any other command that took effect: its result.
    Result {
        body_hash: Hash,
        result: CommandResult,
    },
}

impl TxRecord {
    pub fn body_hash(&self) -> &Hash {
        match self {
            Self::Events { body_hash, .. } | Self::Result { body_hash, .. } => body_hash,
        }
    }
}

/// Why a proof cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ProofFailure {
    /// The sizes or the index asked for are out of range (a client error).
    #[error("{0}")]
    Range(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<verifier::merkle::ProofError<StoreError>> for ProofFailure {
    fn from(error: verifier::merkle::ProofError<StoreError>) -> Self {
        match error {
            verifier::merkle::ProofError::Store(error) => Self::Store(error),
            other => Self::Range(other.to_string()),
        }
    }
}

/// Key of a stored complete subtree.
pub(crate) fn subtree_key(level: u32, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&level.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

impl verifier::merkle::Subtrees for Ledger {
    type Error = StoreError;

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level < MERKLE_STORED_LEVEL_MIN {
            return self.computed_subtree(level, index);
        }
        let value = self.merkle.get(subtree_key(level, index))?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "Merkle subtree at level {level}, index {index} is missing"
            ))
        })?;
        value.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "Merkle subtree at level {level}, index {index} is not 32 bytes"
            ))
        })
    }
}

/// The ledger's subtrees, with the low ones completed lately taken from memory.
struct RecentSubtrees<'a> {
    ledger: &'a Ledger,
    low: std::collections::HashMap<(u32, u64), Hash>,
}

impl verifier::merkle::Subtrees for RecentSubtrees<'_> {
    type Error = StoreError;

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        match self.low.get(&(level, index)) {
            Some(hash) => Ok(*hash),
            None => verifier::merkle::Subtrees::subtree(self.ledger, level, index),
        }
    }
}

/// An activity query over one agent's events.
#[derive(Debug, Clone, Copy)]
pub struct ActivityQuery<'a> {
    pub asn: &'a str,
    pub event_type: Option<&'a str>,
    /// Inclusive bounds on `created_at`, milliseconds since the Unix epoch.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only this many of the most recent matching events exist for the caller (`None`: all).
    pub window: Option<u64>,
    /// Newest first: skip this many, return at most `limit`.
    pub skip: u64,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPage {
    pub events: Vec<Event>,
    /// Matching events visible to the caller.
    pub total: u64,
}

/// How many times [`Ledger::trust_inputs`] reads again when the agent's events change under it.
pub const TRUST_READ_ATTEMPTS_MAX: usize = 16;

/// What an agent's trust score is computed from, at one ledger position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustInputs {
    /// The ledger position: its size, head hash and the `created_at` of its last event.
    pub head: LedgerHead,
    /// How many events the agent has up to `head` (all time).
    pub agent_events: u64,
    /// The agent's per-day severity counts inside the window ending on the head's day.
    pub days: Vec<verifier::trust::DayCounts>,
}

/// Read handle on the state machine's key spaces. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tree: sled::Tree,
    pub(crate) meta: Space,
    pub(crate) events: Space,
    pub(crate) idx: Space,
    pub(crate) tx: Space,
    pub(crate) nodes: Space,
    pub(crate) keys: Space,
    pub(crate) operators: Space,
    pub(crate) agents: Space,
    pub(crate) merkle: Space,
    /// Per agent and UTC day: how many events of each severity (the trust score's inputs).
    pub(crate) trust: Space,
    /// The journals of the snapshot copies under way (see [`Ledger::begin_copy`]).
    copies: Arc<Mutex<Copies>>,
    /// The state machine's dedup clock as of its last apply ([`crate::dedup`]), for the keys
    /// this node generates.
    dedup_clock_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Index runs and day counts applied but held in memory ([`crate::deferred`]); reads merge
    /// them over sled's.
    pub(crate) deferred: Deferred,
    /// API key records read from sled, for the key check of every request ([`Ledger::api_key`]).
    key_cache: Arc<Mutex<KeyCache>>,
    /// Writes them through when the last handle goes.
    _write_through_on_drop: Arc<WriteThroughOnDrop>,
}

/// The most API key records [`Ledger::api_key`] keeps in memory (about 200 bytes each); past
/// it, keys not yet held are read from sled every time.
pub const KEY_CACHE_KEYS_MAX: usize = 10_000;

/// API key records as read from sled. Emptied after every write to the keys' space (a key
/// created or revoked) and every install of a whole state, so it never holds a record sled no
/// longer has; `generation` counts those emptyings, so a read that raced one is not kept.
#[derive(Default)]
struct KeyCache {
    generation: u64,
    records: HashMap<String, ApiKeyRecord>,
}

/// Writes the deferred runs and day counts through to sled when the last [`Ledger`] handle is
/// dropped (a store closed without [`Ledger::write_through`]).
struct WriteThroughOnDrop {
    tree: sled::Tree,
    deferred: Deferred,
}

impl Drop for WriteThroughOnDrop {
    fn drop(&mut self) {
        // Nothing held: nothing to write (and a store refused at open is never written).
        if self.deferred.is_empty() {
            return;
        }
        let result = (|| -> Result<(), StoreError> {
            let key = crate::space::tagged(crate::apply::T_META as u8, META_LAST_APPLIED);
            let applied = match self.tree.get(key)? {
                Some(bytes) => codec::decode::<Option<LogId>>(&bytes, "last_applied")?,
                None => None,
            };
            for (key, value) in write_through_writes(&self.deferred, applied) {
                self.tree.insert(key, value)?;
            }
            self.deferred.clear();
            Ok(())
        })();
        if let Err(error) = result {
            tracing::error!(
                %error,
                "cannot write the index runs and day counts held in memory through to sled; \
                 the next start restores the state machine from its snapshot file"
            );
        }
    }
}

/// A write-through's writes: every run and day count held, then `written_through` = `applied`
/// (sled recovers a prefix of its writes, so the mark is there only if all before it are).
fn write_through_writes(deferred: &Deferred, applied: Option<LogId>) -> Vec<(Vec<u8>, sled::IVec)> {
    let mut writes = deferred.writes();
    crate::apply::put(
        &mut writes,
        crate::apply::T_META,
        META_WRITTEN_THROUGH,
        codec::encode(&applied),
    );
    writes
}

/// For each snapshot copy under way: the value every key written since it began had then
/// (`None`: the key did not exist).
#[derive(Default)]
struct Copies {
    next_id: u64,
    journals: Vec<(u64, Journal)>,
}

/// Keys written since a copy began, each with the value it had then (`None`: it did not exist).
type Journal = HashMap<Vec<u8>, Option<sled::IVec>>;

/// A snapshot copy of the state machine under way: reads the whole state at the log id it began
/// at while applies go on (see [`Ledger::begin_copy`]). Dropping it ends the copy.
pub(crate) struct StateCopy {
    ledger: Ledger,
    id: u64,
    /// `last_applied` when the copy began: the state it reads.
    pub(crate) last_applied: Option<LogId>,
}

fn decode_opt<T: serde::de::DeserializeOwned>(
    bytes: Option<sled::IVec>,
    what: &str,
) -> Result<Option<T>, StoreError> {
    match bytes {
        None => Ok(None),
        Some(bytes) => codec::decode(&bytes, what).map(Some),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StateCopy {
    /// Every key and value of the state machine (keys tagged with their space), in key order,
    /// as they were when the copy began: sled's iterator sees some writes made since and not
    /// others, so every key written since is put back to the value it had then (or left out).
    pub(crate) fn read(self) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
        let mut pairs = Vec::new();
        for item in self.ledger.tree.iter() {
            pairs.push(item?);
        }
        // Writes from now on come after the iteration: the copy did not see them.
        let journal = {
            let mut copies = lock(&self.ledger.copies);
            let at = copies.journals.iter().position(|(id, _)| *id == self.id);
            at.map(|at| copies.journals.swap_remove(at).1)
                .unwrap_or_default()
        };
        if journal.is_empty() {
            return Ok(pairs);
        }
        let mut journal = journal;
        pairs.retain_mut(|(key, value)| match journal.remove(key.as_ref()) {
            None => true,
            Some(Some(before)) => {
                *value = before;
                true
            }
            Some(None) => false,
        });
        // What is left existed when the copy began but the iteration missed it (applies never
        // remove keys, but the copy does not depend on it).
        let missed: Vec<_> = journal
            .into_iter()
            .filter_map(|(key, before)| before.map(|before| (sled::IVec::from(key), before)))
            .collect();
        if !missed.is_empty() {
            pairs.extend(missed);
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let last_applied_key = crate::space::tagged(crate::apply::T_META as u8, META_LAST_APPLIED);
        let applied = pairs
            .iter()
            .find(|(key, _)| key.as_ref() == last_applied_key)
            .map(|(_, value)| codec::decode::<Option<LogId>>(value, "last_applied"))
            .transpose()?
            .flatten();
        assert_eq!(
            applied, self.last_applied,
            "a snapshot copy must read the state at the log id it began at"
        );
        Ok(pairs)
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        let mut copies = lock(&self.ledger.copies);
        copies.journals.retain(|(id, _)| *id != self.id);
    }
}

/// The sled tree that holds every key space of the state machine.
pub(crate) const SM_TREE: &str = "sm";

impl Ledger {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let other_format = |found: &str| {
            StoreError::Corrupt(format!(
                "the state machine has store format {found}; this ledgerd reads format \
                 {STORE_FORMAT} only and never rewrites a store (no migration: see \
                 docs/OPERATIONS.md, \"Upgrade\")"
            ))
        };
        // Store formats up to 2 kept one sled tree per key space, under these names.
        let names = db.tree_names();
        for name in SM_TREES {
            if names.iter().any(|n| n.as_ref() == name.as_bytes())
                && !db.open_tree(name)?.is_empty()
            {
                return Err(other_format(&format!("2 or older (sled tree {name})")));
            }
        }
        // Up to format 3 the Raft log was in sled.
        if names.iter().any(|n| n.as_ref() == b"raft_log") && !db.open_tree("raft_log")?.is_empty()
        {
            return Err(other_format(
                "3 or older (the Raft log in sled tree raft_log)",
            ));
        }
        let tree = db.open_tree(SM_TREE)?;
        let space = |tag: usize| Space::new(tree.clone(), tag as u8);
        let deferred = Deferred::default();
        let ledger = Self {
            tree: tree.clone(),
            meta: space(0),
            events: space(1),
            idx: space(2),
            tx: space(3),
            nodes: space(4),
            keys: space(5),
            operators: space(6),
            agents: space(7),
            merkle: space(8),
            trust: space(9),
            copies: Arc::default(),
            dedup_clock_ms: Arc::default(),
            deferred: deferred.clone(),
            key_cache: Arc::default(),
            _write_through_on_drop: Arc::new(WriteThroughOnDrop {
                tree: tree.clone(),
                deferred,
            }),
        };
        // A store that applied anything has its format recorded (the first apply writes it).
        let format = ledger.store_format()?;
        if ledger.last_applied()?.is_some() && format != Some(STORE_FORMAT) {
            return Err(other_format(
                &format.map_or_else(|| "2 or older".to_owned(), |f| f.to_string()),
            ));
        }
        Ok(ledger)
    }

    /// Writes `writes` (keys tagged with their space) one after the other, in order. Not atomic:
    /// see [`Pending::commit`](crate::apply::Pending::commit) for how a partial apply is found.
    ///
    /// While a snapshot copy is under way, the value each key had before its first write since
    /// the copy began is kept for it first ([`StateCopy::read`]).
    pub(crate) fn insert_all(&self, writes: Vec<(Vec<u8>, sled::IVec)>) -> Result<(), StoreError> {
        {
            let mut copies = lock(&self.copies);
            if !copies.journals.is_empty() {
                for (key, _) in &writes {
                    let mut before = None;
                    for (_, journal) in &mut copies.journals {
                        if !journal.contains_key(key) {
                            if before.is_none() {
                                before = Some(self.tree.get(key)?);
                            }
                            journal.insert(key.clone(), before.clone().flatten());
                        }
                    }
                }
            }
        }
        let writes_keys = writes
            .iter()
            .any(|(key, _)| key.first() == Some(&(crate::apply::T_KEYS as u8)));
        for (key, value) in writes {
            self.tree.insert(key, value)?;
        }
        // After the writes: a read that began before them is not kept (its generation is past).
        if writes_keys {
            self.forget_keys();
        }
        Ok(())
    }

    /// Empties the API key cache (after the keys' space changed).
    fn forget_keys(&self) {
        let mut cache = lock(&self.key_cache);
        cache.generation += 1;
        cache.records.clear();
    }

    /// Begins a copy of the whole state as it is now, to be read by [`StateCopy::read`] on
    /// another thread while applies go on. Call it between applies (on the state-machine
    /// worker); nothing but [`Ledger::insert_all`] may write while the copy is under way.
    pub(crate) fn begin_copy(&self) -> Result<StateCopy, StoreError> {
        let last_applied = self.last_applied()?;
        let mut copies = lock(&self.copies);
        let id = copies.next_id;
        copies.next_id += 1;
        copies.journals.push((id, HashMap::new()));
        Ok(StateCopy {
            ledger: self.clone(),
            id,
            last_applied,
        })
    }

    /// Where the applies stand: `applying`, then `last_applied` (read in that order). Readers
    /// that need several reads to agree take a mark before and check [`Ledger::quiet_since`]
    /// after: an apply writes `applying` first and `last_applied` last, one insert after the
    /// other, so a reader between the two sees part of it.
    pub(crate) fn apply_mark(&self) -> Result<(Option<LogId>, Option<LogId>), StoreError> {
        let applying = self.meta_get::<Option<LogId>>(META_APPLYING)?.flatten();
        Ok((applying, self.last_applied()?))
    }

    /// Whether no apply wrote anything since `mark` was taken, and none was under way then.
    pub(crate) fn quiet_since(
        &self,
        mark: (Option<LogId>, Option<LogId>),
    ) -> Result<bool, StoreError> {
        let partial = mark.0 > mark.1;
        Ok(!partial && self.apply_mark()? == mark)
    }

    /// The log id of an apply that began but never finished writing (a crash in the middle of
    /// an apply), if any.
    pub fn partial_apply(&self) -> Result<Option<LogId>, StoreError> {
        let (applying, applied) = self.apply_mark()?;
        Ok(applying.filter(|applying| Some(*applying) > applied))
    }

    /// Applies `batch` (keys already tagged with their space) atomically: installing or
    /// clearing a whole state.
    pub(crate) fn apply_batch(&self, batch: sled::Batch) -> Result<(), StoreError> {
        let result = self.tree.apply_batch(batch);
        self.forget_keys();
        Ok(result?)
    }

    /// The key spaces in the order of [`SM_TREES`].
    pub(crate) fn spaces(&self) -> [&Space; SM_TREE_COUNT] {
        [
            &self.meta,
            &self.events,
            &self.idx,
            &self.tx,
            &self.nodes,
            &self.keys,
            &self.operators,
            &self.agents,
            &self.merkle,
            &self.trust,
        ]
    }

    /// The state machine's dedup clock as of its last apply, in milliseconds (see
    /// [`crate::dedup::generated_dedup_key`]).
    pub fn dedup_clock_ms(&self) -> i64 {
        self.dedup_clock_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The dedup clock itself, for the state machine's window (its only writer).
    pub(crate) fn dedup_clock(&self) -> Arc<std::sync::atomic::AtomicI64> {
        Arc::clone(&self.dedup_clock_ms)
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        decode_opt(self.meta.get(key)?, &String::from_utf8_lossy(key))
    }

    pub fn head(&self) -> Result<LedgerHead, StoreError> {
        Ok(self.meta_get(META_HEAD)?.unwrap_or_default())
    }

    pub fn cluster(&self) -> Result<Option<ClusterRecord>, StoreError> {
        self.meta_get(META_CLUSTER)
    }

    pub fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        Ok(self.meta_get::<Option<LogId>>(META_LAST_APPLIED)?.flatten())
    }

    pub fn last_membership(&self) -> Result<StoredMembership, StoreError> {
        Ok(self.meta_get(META_LAST_MEMBERSHIP)?.unwrap_or_default())
    }

    /// How many agents were ever registered.
    pub fn agents_total(&self) -> Result<u64, StoreError> {
        Ok(self.meta_get(META_AGENTS_TOTAL)?.unwrap_or(0))
    }

    /// How many operators were ever created.
    pub fn operators_total(&self) -> Result<u64, StoreError> {
        Ok(self.meta_get(META_OPERATORS_TOTAL)?.unwrap_or(0))
    }

    /// The store format written in `sm_meta` (`None`: an empty store, or one older than
    /// format 3, which wrote none).
    pub(crate) fn store_format(&self) -> Result<Option<u32>, StoreError> {
        self.meta_get(META_STORE_FORMAT)
    }

    /// The chunk holding `seq`, if any: its first seq and value.
    fn chunk_at(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        match self.events.range(..=codec::u64_key(seq)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((codec::u64_from_key(&key)?, value)))
            }
        }
    }

    /// Decodes the event at `offset` of a chunk starting at `first`, checking its seq.
    fn chunk_event(first: u64, offset: usize, bytes: &[u8]) -> Result<Event, StoreError> {
        let seq = first + offset as u64;
        let event: Event = codec::decode(bytes, &format!("event {seq}"))?;
        if event.seq != seq {
            return Err(StoreError::Corrupt(format!(
                "event {seq} is stored as event {}",
                event.seq
            )));
        }
        Ok(event)
    }

    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let Some((first, chunk)) = self.chunk_at(seq)? else {
            return Ok(None);
        };
        let events = codec::event_chunk(&chunk)?;
        let offset = (seq - first) as usize;
        match events.get(offset) {
            None => Ok(None),
            Some(bytes) => Self::chunk_event(first, offset, bytes).map(Some),
        }
    }

    /// Up to `limit` events from `from_seq` upwards, in ledger order.
    pub fn events_from(&self, from_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        let start = self
            .chunk_at(from_seq)?
            .map_or(from_seq, |(first, _)| first);
        for item in self.events.range(codec::u64_key(start)..) {
            let (key, chunk) = item?;
            let first = codec::u64_from_key(&key)?;
            for (offset, bytes) in codec::event_chunk(&chunk)?.into_iter().enumerate() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if first + offset as u64 >= from_seq {
                    out.push(Self::chunk_event(first, offset, bytes)?);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The hash of a complete Merkle subtree below the stored levels, from its leaves.
    fn computed_subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        assert!(level < MERKLE_STORED_LEVEL_MIN);
        let width = 1usize << level;
        let first_seq = (index << level) + 1;
        let events = self.events_from(first_seq, width)?;
        if events.len() != width {
            return Err(StoreError::Corrupt(format!(
                "Merkle subtree at level {level}, index {index}: events {first_seq}.. are missing"
            )));
        }
        let mut hashes: Vec<Hash> = events.iter().map(chain::leaf_hash).collect();
        while hashes.len() > 1 {
            hashes = hashes
                .chunks_exact(2)
                .map(|pair| verifier::merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(hashes[0])
    }

    /// The last run of an index: its first ordinal and value (held in memory or in sled).
    pub(crate) fn last_run(
        &self,
        scope: IndexScope<'_>,
    ) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let prefix = scope.prefix();
        // Memory first: sled gets runs only from there (see `crate::deferred`).
        let held = self
            .deferred
            .run(&prefix)
            .map(|(first, run)| (first, sled::IVec::from(run)));
        let stored = match self.idx.scan_prefix(&prefix).next_back() {
            None => None,
            Some(item) => {
                let (key, run) = item?;
                Some((codec::run_first_ordinal(&key)?, run))
            }
        };
        deferred::later_run(held, stored)
    }

    /// How many events an index lists.
    pub fn index_count(&self, scope: IndexScope<'_>) -> Result<u64, StoreError> {
        match self.last_run(scope)? {
            None => Ok(0),
            Some((first, run)) => Ok(first + codec::index_run_len(&run)?),
        }
    }

    /// How many events the agent `asn` has.
    pub fn agent_event_count(&self, asn: &str) -> Result<u64, StoreError> {
        self.index_count(IndexScope::Agent(asn))
    }

    pub(crate) fn index_entry(
        &self,
        scope: IndexScope<'_>,
        ordinal: u64,
    ) -> Result<(u64, i64), StoreError> {
        let missing = || StoreError::Corrupt(format!("index {scope:?} has no entry {ordinal}"));
        if let Some((first, run)) = self.deferred.run(&scope.prefix())
            && ordinal >= first
            && ordinal - first < codec::index_run_len(&run)?
        {
            return codec::index_run_entry(&run, ordinal - first);
        }
        let (key, run) = self
            .idx
            .range(scope.key(0)..=scope.key(ordinal))
            .next_back()
            .ok_or_else(missing)??;
        let offset = ordinal - codec::run_first_ordinal(&key)?;
        if offset >= codec::index_run_len(&run)? {
            return Err(missing());
        }
        codec::index_run_entry(&run, offset)
    }

    /// The first ordinal in `[0, count)` whose event's `created_at` satisfies `past`, where
    /// `past` turns from false to true along the index (binary search, O(log count) reads).
    fn partition_point(
        &self,
        scope: IndexScope<'_>,
        count: u64,
        past: impl Fn(i64) -> bool,
    ) -> Result<u64, StoreError> {
        let (mut low, mut high) = (0, count);
        while low < high {
            let middle = low + (high - low) / 2;
            let (_, created_at_ms) = self.index_entry(scope, middle)?;
            if past(created_at_ms) {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
    }

    /// A page of an agent's events, newest first. Costs O(log n) reads for date bounds plus
    /// O(limit) for the page, whatever `skip` is.
    pub fn agent_activity(&self, query: ActivityQuery<'_>) -> Result<ActivityPage, StoreError> {
        let scope = match query.event_type {
            Some(event_type) => IndexScope::AgentType(query.asn, event_type),
            None => IndexScope::Agent(query.asn),
        };
        let count = self.index_count(scope)?;
        let low = match query.from_ms {
            Some(from) => self.partition_point(scope, count, |t| t >= from)?,
            None => 0,
        };
        let high = match query.to_ms {
            Some(to) => self.partition_point(scope, count, |t| t > to)?,
            None => count,
        };
        let matching = high.saturating_sub(low);
        let total = query.window.map_or(matching, |window| matching.min(window));
        if query.skip >= total || query.limit == 0 {
            return Ok(ActivityPage {
                events: Vec::new(),
                total,
            });
        }
        // Ordinals visible: [high - total, high). Newest first from high - 1 - skip.
        let newest = high - 1 - query.skip;
        let take = (total - query.skip).min(query.limit as u64);
        let oldest = newest + 1 - take;
        let mut events = Vec::with_capacity(take as usize);
        // Runs overlapping [oldest, newest], newest first: the one holding `newest`, then
        // earlier ones until the one holding `oldest`. The run held in memory (read first)
        // joins sled's in its place; where both have a run of the same first ordinal, the
        // longer one serves.
        let mut held = self
            .deferred
            .run(&scope.prefix())
            .filter(|(first, _)| *first <= newest)
            .map(|(first, run)| (first, sled::IVec::from(run)));
        let mut stored = self.idx.range(scope.key(0)..=scope.key(newest)).rev();
        // A sled run read but not used yet (the held run came before it).
        let mut stored_next: Option<(u64, sled::IVec)> = None;
        // The next ordinal to read, going down.
        let mut next = newest;
        loop {
            if stored_next.is_none()
                && let Some(item) = stored.next()
            {
                let (key, run) = item?;
                stored_next = Some((codec::run_first_ordinal(&key)?, run));
            }
            let (first, run) = match (held.take(), stored_next.take()) {
                (None, None) => break,
                (Some(run), None) | (None, Some(run)) => run,
                (Some(h), Some(s)) if h.0 > s.0 => {
                    stored_next = Some(s);
                    h
                }
                (Some(h), Some(s)) if h.0 < s.0 => {
                    held = Some(h);
                    s
                }
                (h, s) => deferred::later_run(h, s)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("index {scope:?}: no run before {next}"))
                })?,
            };
            let len = codec::index_run_len(&run)?;
            if len == 0 || first > next {
                continue;
            }
            let mut ordinal = (first + len - 1).min(next);
            while ordinal >= first.max(oldest) {
                let (seq, _) = codec::index_run_entry(&run, ordinal - first)?;
                let event = self.event(seq)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("index {scope:?} points at missing event {seq}"))
                })?;
                assert_eq!(
                    event.asn, query.asn,
                    "index of {} points at event {seq} of {}",
                    query.asn, event.asn
                );
                events.push(event);
                if ordinal == 0 {
                    break;
                }
                ordinal -= 1;
            }
            if first <= oldest {
                break;
            }
            next = first - 1;
        }
        assert_eq!(
            events.len() as u64,
            take,
            "index {scope:?} has a hole in [{oldest}, {newest}]"
        );
        Ok(ActivityPage { events, total })
    }

    pub(crate) fn tx_record(&self, dedup_key: &Hash) -> Result<Option<TxRecord>, StoreError> {
        decode_opt(self.tx.get(dedup_key)?, "tx record")
    }

    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        decode_opt(self.nodes.get(codec::u64_key(id))?, "node record")
    }

    /// Every node that ever joined, retired ones included, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.nodes.iter() {
            let (_, value) = item?;
            out.push(codec::decode(&value, "node record")?);
        }
        Ok(out)
    }

    /// The API key with this id, if any: from memory once read (every request checks its key),
    /// else from sled.
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let generation = {
            let cache = lock(&self.key_cache);
            if let Some(record) = cache.records.get(id) {
                return Ok(Some(record.clone()));
            }
            cache.generation
        };
        let record: Option<ApiKeyRecord> = decode_opt(self.keys.get(id.as_bytes())?, "api key")?;
        // Unknown ids are not kept: anyone can present any number of them.
        if let Some(record) = &record {
            let mut cache = lock(&self.key_cache);
            if cache.generation == generation && cache.records.len() < KEY_CACHE_KEYS_MAX {
                cache.records.insert(id.to_owned(), record.clone());
            }
        }
        Ok(record)
    }

    pub fn operator(&self, id: &str) -> Result<Option<OperatorRecord>, StoreError> {
        decode_opt(self.operators.get(id.as_bytes())?, "operator")
    }

    pub fn agent(&self, asn: &str) -> Result<Option<AgentRecord>, StoreError> {
        decode_opt(self.agents.get(asn.as_bytes())?, "agent")
    }

    /// An agent's per-day severity counts for the days `from_day..=to_day`, in day order
    /// (days without events are absent). At most `to_day - from_day + 1` reads.
    pub fn trust_days(
        &self,
        asn: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<verifier::trust::DayCounts>, StoreError> {
        if from_day > to_day {
            return Ok(Vec::new());
        }
        let (from, to) = (
            codec::trust_key(asn, from_day),
            codec::trust_key(asn, to_day),
        );
        // Memory first: sled gets day counts only from there (see `crate::deferred`).
        let mut days = std::collections::BTreeMap::new();
        for (key, counts) in self.deferred.trust_range(&from, &to) {
            days.insert(codec::trust_day_from_key(&key)?, counts);
        }
        for item in self.trust.range(from..=to) {
            let (key, value) = item?;
            let stored = codec::parse_trust_value(&value)?;
            let counts = days
                .entry(codec::trust_day_from_key(&key)?)
                .or_insert(stored);
            *counts = deferred::later_counts(*counts, stored);
        }
        Ok(days
            .into_iter()
            .map(|(day, counts)| verifier::trust::DayCounts { day, counts })
            .collect())
    }

    /// The day counts of `asn` on `day` (zeros if it has no event that day).
    pub(crate) fn trust_counts(&self, asn: &str, day: i64) -> Result<[u64; 4], StoreError> {
        let key = codec::trust_key(asn, day);
        let held = self.deferred.trust(&key);
        let stored = match self.trust.get(&key)? {
            Some(bytes) => codec::parse_trust_value(&bytes)?,
            None => [0; 4],
        };
        Ok(held.map_or(stored, |held| deferred::later_counts(held, stored)))
    }

    /// How many agent-days have day counts, in memory or in sled.
    fn trust_days_total(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for item in self.trust.iter() {
            item?;
            total += 1;
        }
        for key in self.deferred.trust_keys() {
            if self.trust.get(&key)?.is_none() {
                total += 1;
            }
        }
        Ok(total)
    }

    /// Bytes (estimated) of the index runs and day counts held in memory, not yet written
    /// through to sled (see `crate::deferred`).
    pub fn held_bytes(&self) -> usize {
        self.deferred.bytes()
    }

    /// The `last_applied` through which sled holds every index run and day count.
    pub(crate) fn written_through(&self) -> Result<Option<LogId>, StoreError> {
        Ok(self
            .meta_get::<Option<LogId>>(META_WRITTEN_THROUGH)?
            .flatten())
    }

    /// Writes the index runs and day counts held in memory through to sled, then
    /// `written_through` = `last_applied`. Only between applies, on the state-machine worker
    /// (or once it has stopped).
    pub fn write_through(&self) -> Result<(), StoreError> {
        let applied = self.last_applied()?;
        if self.deferred.is_empty() && self.written_through()? == applied {
            return Ok(());
        }
        self.insert_all(write_through_writes(&self.deferred, applied))?;
        self.deferred.clear();
        Ok(())
    }

    /// The inputs of an agent's trust score at one ledger position, read consistently: the
    /// head and the agent's day counts in the window ending on the head's day. Costs one head
    /// read, two count reads and at most `WINDOW_DAYS` day reads, whatever the history's
    /// length. `None` if applies kept landing during [`TRUST_READ_ATTEMPTS_MAX`] attempts
    /// (an apply is many inserts: see [`Ledger::apply_mark`]).
    pub fn trust_inputs(&self, asn: &str) -> Result<Option<TrustInputs>, StoreError> {
        for _ in 0..TRUST_READ_ATTEMPTS_MAX {
            let mark = self.apply_mark()?;
            let agent_events = self.agent_event_count(asn)?;
            let head = self.head()?;
            let as_of_day = verifier::trust::day_of(head.last_created_at_ms);
            let days = self.trust_days(
                asn,
                as_of_day.saturating_sub(verifier::trust::WINDOW_DAYS - 1),
                as_of_day,
            )?;
            // No apply wrote during these reads: the count, the head and the day counts are
            // those of one ledger position.
            if self.quiet_since(mark)? {
                return Ok(Some(TrustInputs {
                    head,
                    agent_events,
                    days,
                }));
            }
            std::thread::yield_now();
        }
        Ok(None)
    }

    /// Verifies the whole chain from genesis: `seq` is dense, every event's hash recomputes from
    /// its fields, every `prev_hash` is the hash of the event before, every `agent_prev_hash`
    /// the hash of the agent's event before, `created_at` never decreases, every stored Merkle
    /// subtree is what the leaves make, the trust score's day counts are what the events make,
    /// and the recorded head is the last event. Names the first bad `seq`. O(events) time,
    /// O(agents) memory: run at start-up and on request.
    pub fn verify_chain(&self) -> Result<u64, StoreError> {
        let mark = self.apply_mark()?;
        let head = self.head()?;
        // Per agent: the day of its last event walked, that day's counts and the seq that
        // closed it. An agent's days never decrease along the chain (`created_at` does not), so
        // a day is complete once the agent has an event on a later day.
        let mut agent_day: std::collections::HashMap<String, (i64, [u64; 4], u64)> =
            std::collections::HashMap::new();
        let mut days_checked: u64 = 0;
        let mut expected_seq = 1;
        let mut prev_hash = [0u8; 32];
        let mut prev_time = i64::MIN;
        let mut agent_last: std::collections::HashMap<String, Hash> =
            std::collections::HashMap::new();
        // The Merkle subtrees below the stored levels completed lately, so the walk does not
        // recompute them from events.
        let mut merkle = RecentSubtrees {
            ledger: self,
            low: std::collections::HashMap::new(),
        };
        // Only up to the head read above: while the node runs, later events may be applied
        // during the walk (an apply writes its events before the head that counts them).
        for item in self.events.range(..=codec::u64_key(head.size)) {
            let (key, chunk) = item?;
            let first = codec::u64_from_key(&key)?;
            if first != expected_seq {
                return Err(StoreError::Corrupt(format!(
                    "event {expected_seq} is missing (found {first} next)"
                )));
            }
            for (offset, bytes) in codec::event_chunk(&chunk)?.into_iter().enumerate() {
                let seq = first + offset as u64;
                let bad = |what: &str| StoreError::Corrupt(format!("event {seq} {what}"));
                let event = Self::chunk_event(first, offset, bytes)?;
                if chain::event_hash(&event) != event.hash {
                    return Err(bad("does not match its hash"));
                }
                if event.prev_hash != prev_hash {
                    return Err(bad("does not link to the event before it (prev_hash)"));
                }
                if event.created_at_ms < prev_time {
                    return Err(bad("is older than the event before it"));
                }
                let agent_prev = agent_last.get(&event.asn).copied().unwrap_or([0; 32]);
                if event.agent_prev_hash != agent_prev {
                    return Err(bad(
                        "does not link to its agent's event before it (agent_prev_hash)",
                    ));
                }
                // Recompute what this leaf completes (siblings come from subtrees already checked)
                // and compare with what is stored.
                let completed =
                    verifier::merkle::append(&merkle, seq - 1, chain::leaf_hash(&event))?;
                if completed
                    .iter()
                    .any(|(level, _, _)| *level >= MERKLE_STORED_LEVEL_MIN)
                {
                    merkle.low.clear();
                }
                for (level, index, hash) in completed {
                    if level < MERKLE_STORED_LEVEL_MIN {
                        merkle.low.insert((level, index), hash);
                    } else if verifier::merkle::Subtrees::subtree(self, level, index)? != hash {
                        return Err(bad(&format!(
                            "makes Merkle subtree ({level}, {index}) differ from the stored one"
                        )));
                    }
                }
                let day = verifier::trust::day_of(event.created_at_ms);
                let slot = event.severity as usize;
                match agent_day.get_mut(&event.asn) {
                    Some((open_day, counts, last_seq)) if *open_day == day => {
                        counts[slot] += 1;
                        *last_seq = seq;
                    }
                    Some(open) => {
                        let (closed_day, counts, last_seq) = *open;
                        self.check_trust_day(&event.asn, closed_day, &counts, last_seq)?;
                        days_checked += 1;
                        let mut fresh = [0u64; 4];
                        fresh[slot] = 1;
                        *open = (day, fresh, seq);
                    }
                    None => {
                        let mut fresh = [0u64; 4];
                        fresh[slot] = 1;
                        agent_day.insert(event.asn.clone(), (day, fresh, seq));
                    }
                }
                agent_last.insert(event.asn.clone(), event.hash);
                prev_hash = event.hash;
                prev_time = event.created_at_ms;
                expected_seq += 1;
            }
        }
        let size = expected_seq - 1;
        if size < head.size {
            return Err(StoreError::Corrupt(format!(
                "event {} is missing",
                size + 1
            )));
        }
        if prev_hash != head.head_hash {
            return Err(StoreError::Corrupt(format!(
                "event {size} is not the recorded ledger head"
            )));
        }
        // Each agent's last day may still grow while the node runs: check those, and that no
        // other day counts exist, only if nothing was applied during the walk.
        if self.quiet_since(mark)? {
            let mut open: Vec<_> = agent_day.into_iter().collect();
            open.sort_by_key(|(_, (_, _, last_seq))| *last_seq);
            let checked = open.iter().try_for_each(|(asn, (day, counts, last_seq))| {
                self.check_trust_day(asn, *day, counts, *last_seq)
            });
            if let Err(error) = checked {
                // An apply between the mark taken above and a day's read adds to that day: a
                // difference counts only if no apply wrote meanwhile.
                if self.quiet_since(mark)? {
                    return Err(error);
                }
                return Ok(size);
            }
            days_checked += open.len() as u64;
            let stored = self.trust_days_total()?;
            if stored != days_checked && self.quiet_since(mark)? {
                return Err(StoreError::Corrupt(format!(
                    "the trust day counts hold {stored} agent-days, the events make {days_checked}"
                )));
            }
        }
        Ok(size)
    }

    /// The stored day counts of `asn` on `day` must be `counts`; `seq` is the agent's last
    /// event of that day (named in the error).
    fn check_trust_day(
        &self,
        asn: &str,
        day: i64,
        counts: &[u64; 4],
        seq: u64,
    ) -> Result<(), StoreError> {
        let stored = self.trust_counts(asn, day)?;
        if &stored != counts {
            return Err(StoreError::Corrupt(format!(
                "event {seq}: the trust day counts of {asn} on day {day} are {stored:?}, its \
                 events make {counts:?}"
            )));
        }
        Ok(())
    }

    /// The Merkle root over the first `size` events (RFC 9162), from stored subtrees.
    pub fn merkle_root(&self, size: u64) -> Result<Hash, StoreError> {
        verifier::merkle::root(self, size)
    }

    /// The inclusion proof of event `seq` in the tree of the first `size` events.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, ProofFailure> {
        verifier::merkle::inclusion_proof(self, seq.wrapping_sub(1), size)
            .map_err(ProofFailure::from)
    }

    /// The consistency proof between the trees of the first `old` and `new` events.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofFailure> {
        verifier::merkle::consistency_proof(self, old, new).map_err(ProofFailure::from)
    }

    /// Checks what can be checked cheaply: the recorded head is the last event, the last
    /// event's hash is right, and nothing lies past it.
    pub fn verify_head(&self) -> Result<(), StoreError> {
        let head = self.head()?;
        if head.size == 0 {
            if let Some(item) = self.events.iter().next() {
                let (key, _) = item?;
                return Err(StoreError::Corrupt(format!(
                    "the ledger head says 0 events but event {} is stored",
                    codec::u64_from_key(&key)?
                )));
            }
            return Ok(());
        }
        let last = self.event(head.size)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the ledger head says {} events but event {} is missing",
                head.size, head.size
            ))
        })?;
        if chain::event_hash(&last) != last.hash {
            return Err(StoreError::Corrupt(format!(
                "event {} does not match its hash",
                last.seq
            )));
        }
        if last.hash != head.head_hash {
            return Err(StoreError::Corrupt(format!(
                "event {} is not the recorded ledger head",
                last.seq
            )));
        }
        if self.event(head.size + 1)?.is_some() {
            return Err(StoreError::Corrupt(format!(
                "event {} lies past the ledger head",
                head.size + 1
            )));
        }
        Ok(())
    }
}
