//! Applying committed entries: [`Pending`] gathers the writes of one `apply` call (and the state
//! they lead to, so later commands see earlier ones), then [`Pending::commit`] writes them,
//! one insert after the other, between the markers `applying` and `last_applied`.
//!
//! Authorization happens here, deterministically, against the replicated key, operator and
//! agent records as of this point in the log: a key revoked or an agent deactivated between a
//! request's submission and its commit is honoured.

use foldhash::HashMap;
use std::cell::RefCell;
use std::collections::BTreeMap;

use openraft::EntryPayload;

use crate::StoreError;
use crate::asn;
use crate::chain;
use crate::codec;
use crate::codec::IndexScope;
use crate::dedup;
use crate::dedup::ChunkRef;
use crate::dedup::TxWindow;
use crate::deferred::Changes;
use crate::deferred::DEFERRED_BYTES_MAX;
use crate::ledger::EVENT_CHUNK_EVENTS_MAX;
use crate::ledger::Ledger;
use crate::ledger::MERKLE_STORED_LEVEL_MIN;
use crate::ledger::META_AGENTS_TOTAL;
use crate::ledger::META_APPLYING;
use crate::ledger::META_CLUSTER;
use crate::ledger::META_HEAD;
use crate::ledger::META_LAST_APPLIED;
use crate::ledger::META_LAST_MEMBERSHIP;
use crate::ledger::META_OPERATORS_TOTAL;
use crate::ledger::META_STORE_FORMAT;
use crate::ledger::META_WRITTEN_THROUGH;
use crate::ledger::STORE_FORMAT;
use crate::ledger::TxRecord;
use crate::types::AgentRecord;
use crate::types::AgentStatus;
use crate::types::ApiKeyRecord;
use crate::types::ClusterRecord;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Entry;
use crate::types::Event;
use crate::types::Hash;
use crate::types::LedgerHead;
use crate::types::LogId;
use crate::types::NewEvent;
use crate::types::NodeId;
use crate::types::NodeRecord;
use crate::types::OperatorRecord;
use crate::types::Permission;
use crate::types::Proposal;
use crate::types::RejectCode;
use crate::types::Response;
use crate::types::Severity;
use crate::types::StoredMembership;

/// The most events one `AppendEvents` command may carry (the API's batch limit is lower).
pub const COMMAND_EVENTS_MAX: usize = 10_000;

// Tags of the key spaces, in the order of `SM_TREES`.
pub(crate) const T_META: usize = 0;
const T_EVENTS: usize = 1;
pub(crate) const T_IDX: usize = 2;
const T_TX: usize = 3;
const T_NODES: usize = 4;
pub(crate) const T_KEYS: usize = 5;
const T_OPERATORS: usize = 6;
const T_AGENTS: usize = 7;
const T_MERKLE: usize = 8;
pub(crate) const T_TRUST: usize = 9;

fn rejected(code: RejectCode, message: impl Into<String>) -> CommandResult {
    CommandResult::Rejected {
        code,
        message: message.into(),
    }
}

/// Adds a write of `key` in the space tagged `tag` to `writes`.
pub(crate) fn put(
    writes: &mut Vec<(Vec<u8>, sled::IVec)>,
    tag: usize,
    key: impl AsRef<[u8]>,
    value: impl Into<sled::IVec>,
) {
    writes.push((crate::space::tagged(tag as u8, key.as_ref()), value.into()));
}

/// A refusal, carried through `?` inside a command.
struct Reject(RejectCode, String);

type Checked<T> = Result<Result<T, Reject>, StoreError>;

/// A deterministic UUIDv7 for a record created at `at_ms`, from a domain and a counter.
fn derived_uuid(domain: &str, counter: u64, at_ms: i64) -> [u8; 16] {
    let mut input = Vec::with_capacity(domain.len() + 9);
    input.extend_from_slice(domain.as_bytes());
    input.push(0);
    input.extend_from_slice(&counter.to_be_bytes());
    let digest = chain::sha256(&input);
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(at_ms).unwrap_or(0);
    *uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .as_bytes()
}

/// An index run an apply extends: entries appended to an index go into the run its last apply
/// wrote while that run holds fewer than [`RUN_EXTEND_ENTRIES_MAX`] entries (the key is written
/// again, with the longer value), otherwise into a new run.
///
/// Why: an insert of a new sled key costs about three times an overwrite (6 against 2 µs here:
/// the leaf grows, and splits every 8 new keys), and with single reports nearly every apply
/// touches an index only once. Extending runs turns about 15 new keys of 16 into overwrites.
/// Batches still write one run per index per apply, whatever its length.
pub const RUN_EXTEND_ENTRIES_MAX: u64 = 16;

/// The tail of one index: the ordinal its last run starts at and that run's bytes, or (when
/// the next apply starts a new run) the index's length and no bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Tail {
    first: u64,
    run: Vec<u8>,
}

impl Tail {
    fn len(&self) -> u64 {
        self.first + (self.run.len() / codec::INDEX_ENTRY_BYTES) as u64
    }

    /// The tail as the next apply finds it: the same run while it may grow, else a new one.
    fn settled(self) -> Tail {
        if ((self.run.len() / codec::INDEX_ENTRY_BYTES) as u64) < RUN_EXTEND_ENTRIES_MAX {
            self
        } else {
            Tail {
                first: self.len(),
                run: Vec::new(),
            }
        }
    }
}

/// What the state machine remembers between `apply` calls, so that an apply does not read it
/// from sled (a descent of the tree and a decode each, a reverse range lookup for a tail):
/// each index's last run (if it may still grow) and length, each agent's last event hash, the
/// agent and key records applies read or wrote, each agent's trust counts for the last day
/// it was active, the meta values an apply starts from, and the Merkle tree's frontier (the
/// complete subtrees that the next leaf's hashes need). Only the state-machine worker uses it,
/// and only after the writes it learned from committed (only applies write the state, and each
/// one absorbs what it wrote); a snapshot install empties it.
#[derive(Default)]
pub(crate) struct TipCache {
    tails: HashMap<Vec<u8>, Tail>,
    heads: HashMap<String, Hash>,
    agents: HashMap<String, AgentRecord>,
    keys: HashMap<String, ApiKeyRecord>,
    trust: HashMap<String, (i64, [u64; 4])>,
    /// The meta values as the last apply left them (read from sled by the first apply).
    meta: Option<MetaBefore>,
    /// The Merkle tree's frontier as the last apply left it: `(level, index)` of each complete
    /// subtree whose hash appending the next leaf reads (one per set bit of the tree's size, at
    /// most 64), so that an apply does not read them (and recompute those below
    /// [`MERKLE_STORED_LEVEL_MIN`] from up to 8 events each) from sled.
    frontier: Option<HashMap<(u32, u64), Hash>>,
    /// Estimated bytes held ([`TipCache::entry_bytes`] of every entry), the meta values and
    /// the frontier (a few KiB at most) not counted.
    bytes: usize,
}

/// The most memory, in bytes (estimated), the state machine's cache of index tails, agent
/// heads, agent and key records and day counts may hold; past it the cache starts over, and
/// the applies that follow read what they need from sled again (about a microsecond or two
/// per item). About 1 KB per active agent (its record, head, day counts and two index tails
/// by these estimates), so 128 MiB holds about 130,000 agents; 100 agents take about 100 KiB.
pub const TIP_CACHE_BYTES_MAX: usize = 128 << 20;

impl TipCache {
    /// A hash map entry's own cost beyond its key and value, in bytes (estimated).
    const ENTRY_OVERHEAD_BYTES: usize = 64;
    /// An agent or key record's heap bytes beyond its map key (estimated: ids, names, a few
    /// permissions).
    const RECORD_BYTES: usize = 256;

    pub(crate) fn clear(&mut self) {
        self.tails.clear();
        self.heads.clear();
        self.agents.clear();
        self.keys.clear();
        self.trust.clear();
        self.meta = None;
        self.frontier = None;
        self.bytes = 0;
    }

    /// Takes in what one committed batch changed (its `bytes` are not used), and starts over
    /// if that makes the cache hold more than [`TIP_CACHE_BYTES_MAX`].
    pub(crate) fn absorb(&mut self, batch: TipCache) {
        self.absorb_within(batch, TIP_CACHE_BYTES_MAX);
    }

    fn absorb_within(&mut self, batch: TipCache, bytes_max: usize) {
        let overhead = Self::ENTRY_OVERHEAD_BYTES;
        if batch.meta.is_some() {
            self.meta = batch.meta;
        }
        if batch.frontier.is_some() {
            self.frontier = batch.frontier;
        }
        for (prefix, tail) in batch.tails {
            let key_bytes = overhead + prefix.len();
            self.bytes += key_bytes + tail.run.len();
            if let Some(old) = self.tails.insert(prefix, tail) {
                self.bytes -= key_bytes + old.run.len();
            }
        }
        // The other values are of fixed (estimated) size: only new keys add bytes.
        for (asn, hash) in batch.heads {
            let size = overhead + asn.len() + 32;
            if self.heads.insert(asn, hash).is_none() {
                self.bytes += size;
            }
        }
        for (asn, agent) in batch.agents {
            let size = overhead + asn.len() + Self::RECORD_BYTES;
            if self.agents.insert(asn, agent).is_none() {
                self.bytes += size;
            }
        }
        for (id, key) in batch.keys {
            let size = overhead + id.len() + Self::RECORD_BYTES;
            if self.keys.insert(id, key).is_none() {
                self.bytes += size;
            }
        }
        for (asn, counts) in batch.trust {
            let size = overhead + asn.len() + 40;
            if self.trust.insert(asn, counts).is_none() {
                self.bytes += size;
            }
        }
        if self.bytes > bytes_max {
            self.clear();
        }
    }
}

pub(crate) struct Pending<'a> {
    ledger: &'a Ledger,
    tips: &'a TipCache,
    window: &'a TxWindow,
    /// The dedup clock (see [`crate::dedup`]) as of the entry being applied.
    clock_ms: i64,
    /// The txlog chunk of each entry of this batch with generated keys, and their records.
    chunks: BTreeMap<ChunkRef, dedup::Chunk>,
    /// The generated keys this batch applied, and their chunks.
    generated: HashMap<Hash, ChunkRef>,
    /// Every write of this batch, keys tagged with their space, in order.
    writes: Vec<(Vec<u8>, sled::IVec)>,
    head: LedgerHead,
    cluster: Option<ClusterRecord>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    agents_total: u64,
    operators_total: u64,
    /// The meta values as read when the batch began: commit writes only those that changed.
    before: MetaBefore,
    new_events: BTreeMap<u64, Event>,
    /// The run each index this batch touched writes, by scope prefix: its first ordinal and
    /// all its entries (those of an earlier apply it extends included).
    runs: HashMap<Vec<u8>, Tail>,
    tx: HashMap<Hash, TxRecord>,
    nodes: HashMap<NodeId, NodeRecord>,
    keys: HashMap<String, ApiKeyRecord>,
    operators: HashMap<String, OperatorRecord>,
    agents: HashMap<String, AgentRecord>,
    /// Agent and key records this batch read from the store (not in the tip cache), for it.
    loaded_agents: RefCell<HashMap<String, AgentRecord>>,
    loaded_keys: RefCell<HashMap<String, ApiKeyRecord>>,
    /// Hash of each agent's last event, for those appended in this batch.
    agent_heads: HashMap<String, Hash>,
    /// Merkle subtrees completed in this batch.
    subtrees: HashMap<(u32, u64), Hash>,
    /// Per agent, the UTC days touched in this batch (usually one) and their severity counts,
    /// written once at commit.
    trust: HashMap<String, Vec<(i64, [u64; 4])>>,
}

/// The meta values an apply may change, as they were when it began.
#[derive(Clone)]
struct MetaBefore {
    format_recorded: bool,
    last_applied: Option<LogId>,
    head: LedgerHead,
    cluster: Option<ClusterRecord>,
    membership: StoredMembership,
    agents_total: u64,
    operators_total: u64,
}

impl verifier::merkle::Subtrees for Pending<'_> {
    type Error = StoreError;

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let cached = self.subtrees.get(&(level, index)).or_else(|| {
            let frontier = self.tips.frontier.as_ref()?;
            frontier.get(&(level, index))
        });
        match cached {
            Some(hash) => Ok(*hash),
            None => verifier::merkle::Subtrees::subtree(self.ledger, level, index),
        }
    }
}

impl<'a> Pending<'a> {
    pub(crate) fn new(
        ledger: &'a Ledger,
        tips: &'a TipCache,
        window: &'a TxWindow,
    ) -> Result<Self, StoreError> {
        let before = match &tips.meta {
            Some(meta) => meta.clone(),
            None => MetaBefore {
                format_recorded: ledger.store_format()? == Some(STORE_FORMAT),
                last_applied: ledger.last_applied()?,
                head: ledger.head()?,
                cluster: ledger.cluster()?,
                membership: ledger.last_membership()?,
                agents_total: ledger.agents_total()?,
                operators_total: ledger.operators_total()?,
            },
        };
        Ok(Self {
            ledger,
            tips,
            window,
            clock_ms: window.clock_ms(),
            chunks: BTreeMap::new(),
            generated: HashMap::default(),
            writes: Vec::new(),
            head: before.head,
            cluster: before.cluster.clone(),
            last_applied: before.last_applied,
            membership: before.membership.clone(),
            agents_total: before.agents_total,
            operators_total: before.operators_total,
            before,
            new_events: BTreeMap::new(),
            runs: HashMap::default(),
            tx: HashMap::default(),
            nodes: HashMap::default(),
            keys: HashMap::default(),
            operators: HashMap::default(),
            agents: HashMap::default(),
            loaded_agents: RefCell::default(),
            loaded_keys: RefCell::default(),
            agent_heads: HashMap::default(),
            subtrees: HashMap::default(),
            trust: HashMap::default(),
        })
    }

    // Reads see this batch's writes first, then the store.

    fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        match self.new_events.get(&seq) {
            Some(event) => Ok(Some(event.clone())),
            None => self.ledger.event(seq),
        }
    }

    fn tx_record(&self, key: &Hash) -> Result<Option<TxRecord>, StoreError> {
        match self.tx.get(key) {
            Some(record) => Ok(Some(record.clone())),
            None => self.ledger.tx_record(key),
        }
    }

    /// Adds a write of `key` in space `tag` to the batch.
    fn put(&mut self, tag: usize, key: impl AsRef<[u8]>, value: impl Into<sled::IVec>) {
        put(&mut self.writes, tag, key, value);
    }

    fn put_tx(&mut self, key: Hash, record: TxRecord) {
        self.put(T_TX, key, codec::encode(&record));
        self.tx.insert(key, record);
    }

    /// Applies one proposal: the stored result if its dedup key was applied before (whatever
    /// happened since: a key revoked later does not undo a write it made), otherwise the
    /// command, remembered under the key if it took effect. A refusal is not remembered, so a
    /// retry is decided afresh.
    fn apply_proposal(
        &mut self,
        proposed_at_ms: i64,
        proposal: &Proposal,
    ) -> Result<CommandResult, StoreError> {
        let tx = &proposal.tx;
        if let Some(record) = self.tx_record(&tx.dedup_key)? {
            return self.replay(record, &tx.body_hash);
        }
        let result = match self.apply_command(proposed_at_ms, &proposal.command)? {
            Ok(result) => result,
            Err(Reject(code, message)) => return Ok(rejected(code, message)),
        };
        self.put_tx(tx.dedup_key, record_of(&result, tx.body_hash));
        Ok(result)
    }

    /// [`Pending::apply_proposal`] for a generated dedup key made at `made_ms`, whose record
    /// goes into the txlog chunk `chunk` (see [`crate::dedup`]).
    fn apply_generated(
        &mut self,
        proposed_at_ms: i64,
        proposal: &Proposal,
        made_ms: i64,
        chunk: ChunkRef,
    ) -> Result<CommandResult, StoreError> {
        let tx = &proposal.tx;
        if !dedup::in_window(self.clock_ms, made_ms) {
            return Ok(rejected(
                RejectCode::Unavailable,
                format!(
                    "this write was made at {made_ms} ms (the receiving node's clock), more than {} ms from the leader's clock ({} ms): are the nodes' clocks in step? Send it again",
                    dedup::GENERATED_KEY_WINDOW_MS,
                    self.clock_ms
                ),
            ));
        }
        let earlier = self
            .generated
            .get(&tx.dedup_key)
            .copied()
            .or_else(|| self.window.get(&tx.dedup_key));
        if let Some(earlier) = earlier {
            let find = |records: &[(Hash, TxRecord)]| {
                records
                    .iter()
                    .find(|(key, _)| *key == tx.dedup_key)
                    .map(|(_, record)| record.clone())
            };
            let record = match self.chunks.get(&earlier) {
                Some(records) => find(records),
                None => find(&dedup::read_chunk(self.ledger, earlier)?),
            }
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "txlog chunk of entry {} lacks a key the window places there",
                    earlier.index
                ))
            })?;
            return self.replay(record, &tx.body_hash);
        }
        let result = match self.apply_command(proposed_at_ms, &proposal.command)? {
            Ok(result) => result,
            Err(Reject(code, message)) => return Ok(rejected(code, message)),
        };
        let record = record_of(&result, tx.body_hash);
        self.chunks
            .entry(chunk)
            .or_default()
            .push((tx.dedup_key, record));
        self.generated.insert(tx.dedup_key, chunk);
        Ok(result)
    }

    /// The stored result of an applied proposal, for a retry with the same dedup key (with
    /// another body: a conflict).
    fn replay(&self, record: TxRecord, body_hash: &Hash) -> Result<CommandResult, StoreError> {
        if record.body_hash() != body_hash {
            return Ok(rejected(
                RejectCode::Conflict,
                "Idempotency-Key: this key was already used with a different request body",
            ));
        }
        match record {
            TxRecord::Result { result, .. } => Ok(result),
            TxRecord::Events {
                first_seq, count, ..
            } => {
                let mut replay = Vec::with_capacity(count as usize);
                for seq in first_seq..first_seq + count {
                    let event = self.event(seq)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("tx record points at missing event {seq}"))
                    })?;
                    replay.push(event);
                }
                Ok(CommandResult::Appended {
                    events: replay,
                    replayed: true,
                })
            }
        }
    }

    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        match self.nodes.get(&id) {
            Some(node) => Ok(Some(node.clone())),
            None => self.ledger.node(id),
        }
    }

    fn key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if let Some(key) = self.keys.get(id).or_else(|| self.tips.keys.get(id)) {
            return Ok(Some(key.clone()));
        }
        let key = self.ledger.api_key(id)?;
        if let Some(key) = &key {
            self.loaded_keys
                .borrow_mut()
                .insert(id.to_owned(), key.clone());
        }
        Ok(key)
    }

    fn operator(&self, id: &str) -> Result<Option<OperatorRecord>, StoreError> {
        match self.operators.get(id) {
            Some(operator) => Ok(Some(operator.clone())),
            None => self.ledger.operator(id),
        }
    }

    fn agent(&self, asn: &str) -> Result<Option<AgentRecord>, StoreError> {
        if let Some(agent) = self.agents.get(asn).or_else(|| self.tips.agents.get(asn)) {
            return Ok(Some(agent.clone()));
        }
        let agent = self.ledger.agent(asn)?;
        if let Some(agent) = &agent {
            self.loaded_agents
                .borrow_mut()
                .insert(asn.to_owned(), agent.clone());
        }
        Ok(agent)
    }

    /// Hash of the agent's last event, zeroes when it has none.
    fn agent_head(&self, asn: &str) -> Result<Hash, StoreError> {
        if let Some(hash) = self
            .agent_heads
            .get(asn)
            .or_else(|| self.tips.heads.get(asn))
        {
            return Ok(*hash);
        }
        let scope = IndexScope::Agent(asn);
        let count = self.ledger.index_count(scope)?;
        if count == 0 {
            return Ok([0; 32]);
        }
        let (seq, _) = self.ledger.index_entry(scope, count - 1)?;
        let event = self.ledger.event(seq)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "agent index of {asn} points at missing event {seq}"
            ))
        })?;
        Ok(event.hash)
    }

    /// Where the index's next entry goes, as the batch found it (before its own entries).
    fn tail(&self, scope: IndexScope<'_>, prefix: &[u8]) -> Result<Tail, StoreError> {
        if let Some(tail) = self.tips.tails.get(prefix) {
            return Ok(tail.clone());
        }
        Ok(match self.ledger.last_run(scope)? {
            None => Tail::default(),
            Some((first, run)) => Tail {
                first,
                run: run.to_vec(),
            }
            .settled(),
        })
    }

    fn put_node(&mut self, node: NodeRecord) {
        self.put(T_NODES, codec::u64_key(node.id), codec::encode(&node));
        self.nodes.insert(node.id, node);
    }

    fn put_key(&mut self, key: ApiKeyRecord) {
        self.put(T_KEYS, key.id.as_bytes(), codec::encode(&key));
        self.keys.insert(key.id.clone(), key);
    }

    fn put_agent(&mut self, agent: AgentRecord) {
        self.put(T_AGENTS, agent.asn.as_bytes(), codec::encode(&agent));
        self.agents.insert(agent.asn.clone(), agent);
    }

    /// Appends `seq` with `created_at_ms` to an index.
    fn index(
        &mut self,
        scope: IndexScope<'_>,
        seq: u64,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        let prefix = scope.prefix();
        let tail = match self.runs.get_mut(&prefix) {
            Some(tail) => tail,
            None => {
                let tail = self.tail(scope, &prefix)?;
                self.runs.entry(prefix).or_insert(tail)
            }
        };
        codec::push_index_entry(&mut tail.run, seq, created_at_ms);
        Ok(())
    }

    /// The key `by`, valid (present, not revoked) at this point of the log.
    fn authenticate(&self, by: &str) -> Checked<ApiKeyRecord> {
        Ok(match self.key(by)? {
            Some(key) if !key.revoked => Ok(key),
            _ => Err(Reject(
                RejectCode::Unauthorized,
                "Authorization: invalid or missing API key".into(),
            )),
        })
    }

    fn require_admin(&self, by: &str) -> Checked<ApiKeyRecord> {
        let key = match self.authenticate(by)? {
            Ok(key) => key,
            Err(reject) => return Ok(Err(reject)),
        };
        if !key.is_admin() {
            return Ok(Err(Reject(
                RejectCode::Forbidden,
                "Authorization: this key lacks the admin permission".into(),
            )));
        }
        Ok(Ok(key))
    }

    /// May `key` act on `agent` with one of `permissions`? Admin keys may act on any agent.
    fn may_act_on(
        key: &ApiKeyRecord,
        agent: &AgentRecord,
        permissions: &[Permission],
        what: &str,
    ) -> Result<(), Reject> {
        if key.is_admin() {
            return Ok(());
        }
        if !permissions.iter().any(|p| key.has(*p)) {
            let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
            return Err(Reject(
                RejectCode::Forbidden,
                format!(
                    "Authorization: {what} needs the {} permission",
                    names.join(" or ")
                ),
            ));
        }
        if key.operator_id.as_deref() != Some(agent.owner_id.as_str()) {
            return Err(Reject(
                RejectCode::Forbidden,
                format!(
                    "Authorization: this key's operator does not own agent {}",
                    agent.asn
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn apply_entry(&mut self, entry: &Entry) -> Result<Response, StoreError> {
        if let Some(last) = self.last_applied {
            assert!(
                entry.log_id.index > last.index,
                "applying {} after {}",
                entry.log_id,
                last
            );
        }
        self.last_applied = Some(entry.log_id);
        let mut response = Response::default();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            }
            EntryPayload::Normal(request) => {
                response.results.reserve(request.commands.len());
                let made: Vec<Option<i64>> = request
                    .commands
                    .iter()
                    .map(|proposal| dedup::generated_key_time_ms(&proposal.tx.dedup_key))
                    .collect();
                // An entry with generated keys moves the dedup clock and has a txlog chunk
                // (written even if empty: its key records the clock).
                let chunk = if made.iter().any(Option::is_some) {
                    // At least a millisecond per such entry, so that the window moves on (and
                    // its memory stays bounded) while the leaders' clocks are behind it.
                    self.clock_ms = (self.clock_ms.saturating_add(1)).max(request.proposed_at_ms);
                    let chunk = ChunkRef {
                        clock_ms: self.clock_ms,
                        index: entry.log_id.index,
                    };
                    self.chunks.insert(chunk, Vec::new());
                    Some(chunk)
                } else {
                    None
                };
                for (proposal, made_ms) in request.commands.iter().zip(made) {
                    let result = match (made_ms, chunk) {
                        (Some(made_ms), Some(chunk)) => {
                            self.apply_generated(request.proposed_at_ms, proposal, made_ms, chunk)?
                        }
                        _ => self.apply_proposal(request.proposed_at_ms, proposal)?,
                    };
                    response.results.push(result);
                }
            }
        }
        Ok(response)
    }

    /// Applies one command. A refusal leaves no trace: every check comes before any write.
    fn apply_command(&mut self, proposed_at_ms: i64, command: &Command) -> Checked<CommandResult> {
        // created_at of whatever this command creates: leader time, never decreasing.
        let now_ms = proposed_at_ms.max(self.head.last_created_at_ms);
        macro_rules! check {
            ($checked:expr) => {
                match $checked? {
                    Ok(value) => value,
                    Err(reject) => return Ok(Err(reject)),
                }
            };
        }
        match command {
            Command::InitCluster {
                cluster_id,
                admin_key,
                node,
            } => {
                if self.cluster.is_some() {
                    return Ok(Err(Reject(
                        RejectCode::Conflict,
                        "the cluster is already initialised".into(),
                    )));
                }
                self.cluster = Some(ClusterRecord {
                    cluster_id: cluster_id.clone(),
                    created_at_ms: proposed_at_ms,
                });
                self.put_key(admin_key.clone());
                self.put_node(node.clone());
                Ok(Ok(CommandResult::Done))
            }
            Command::RegisterNode { node } => {
                if self.node(node.id)?.is_some() {
                    return Ok(Err(Reject(
                        RejectCode::Conflict,
                        format!("id: node id {} was already used", node.id),
                    )));
                }
                self.put_node(node.clone());
                Ok(Ok(CommandResult::Done))
            }
            Command::RetireNode { node_id } => match self.node(*node_id)? {
                None => Ok(Err(Reject(
                    RejectCode::NotFound,
                    format!("id: node {node_id} is not known"),
                ))),
                Some(mut node) => {
                    node.retired = true;
                    self.put_node(node);
                    Ok(Ok(CommandResult::Done))
                }
            },
            Command::CreateOperator { by, name } => {
                check!(self.require_admin(by));
                self.operators_total += 1;
                let counter = self.operators_total;
                let id =
                    uuid::Uuid::from_bytes(derived_uuid("asn-ledger/operator", counter, now_ms))
                        .to_string();
                let operator = OperatorRecord {
                    id: id.clone(),
                    name: name.clone(),
                    created_at_ms: now_ms,
                };
                self.put(T_OPERATORS, id.as_bytes(), codec::encode(&operator));
                self.operators.insert(id, operator.clone());
                Ok(Ok(CommandResult::Operator(operator)))
            }
            Command::CreateKey { by, key } => {
                check!(self.require_admin(by));
                if let Some(operator_id) = &key.operator_id
                    && self.operator(operator_id)?.is_none()
                {
                    return Ok(Err(Reject(
                        RejectCode::NotFound,
                        format!("operator_id: operator {operator_id} not found"),
                    )));
                }
                if self.key(&key.id)?.is_some() {
                    return Ok(Err(Reject(
                        RejectCode::Conflict,
                        format!("id: key id {} already exists", key.id),
                    )));
                }
                let mut key = key.clone();
                key.created_at_ms = now_ms;
                key.revoked = false;
                self.put_key(key.clone());
                Ok(Ok(CommandResult::Key(key)))
            }
            Command::RevokeKey { by, key_id } => {
                check!(self.require_admin(by));
                match self.key(key_id)? {
                    None => Ok(Err(Reject(
                        RejectCode::NotFound,
                        format!("id: key {key_id} not found"),
                    ))),
                    Some(mut key) => {
                        key.revoked = true;
                        self.put_key(key.clone());
                        Ok(Ok(CommandResult::Key(key)))
                    }
                }
            }
            Command::CreateAgent { by, name, owner_id } => {
                let key = check!(self.authenticate(by));
                if !key.is_admin() {
                    if !key.has(Permission::Write) {
                        return Ok(Err(Reject(
                            RejectCode::Forbidden,
                            "Authorization: creating an agent needs the write permission".into(),
                        )));
                    }
                    if key.operator_id.as_deref() != Some(owner_id.as_str()) {
                        return Ok(Err(Reject(
                            RejectCode::Forbidden,
                            "owner_id: an operator key can only create agents it owns".into(),
                        )));
                    }
                }
                if self.operator(owner_id)?.is_none() {
                    return Ok(Err(Reject(
                        RejectCode::NotFound,
                        format!("owner_id: operator {owner_id} not found"),
                    )));
                }
                let number = self.agents_total + 1;
                if number >= asn::AGENTS_MAX {
                    return Ok(Err(Reject(
                        RejectCode::Conflict,
                        "the cluster has no ASNs left".into(),
                    )));
                }
                let asn = asn::format(number, now_ms);
                assert!(self.agent(&asn)?.is_none(), "ASN {asn} assigned twice");
                let agent = AgentRecord {
                    id: derived_uuid("asn-ledger/agent", number, now_ms),
                    asn,
                    name: name.clone(),
                    owner_id: owner_id.clone(),
                    status: AgentStatus::Active,
                    created_at_ms: now_ms,
                    deactivated_at_ms: None,
                };
                self.agents_total = number;
                self.put_agent(agent.clone());
                Ok(Ok(CommandResult::Agent(agent)))
            }
            Command::DeactivateAgent { by, asn } => {
                let key = check!(self.authenticate(by));
                let Some(mut agent) = self.agent(asn)? else {
                    return Ok(Err(Reject(
                        RejectCode::NotFound,
                        format!("asn: agent {asn} not found"),
                    )));
                };
                if let Err(reject) =
                    Self::may_act_on(&key, &agent, &[Permission::Write], "deactivating an agent")
                {
                    return Ok(Err(reject));
                }
                if agent.status == AgentStatus::Active {
                    agent.status = AgentStatus::Deactivated;
                    agent.deactivated_at_ms = Some(now_ms);
                    self.put_agent(agent.clone());
                }
                Ok(Ok(CommandResult::Agent(agent)))
            }
            Command::AppendEvents { by, events } => self.append_events(proposed_at_ms, by, events),
        }
    }

    fn append_events(
        &mut self,
        proposed_at_ms: i64,
        by: &str,
        events: &[NewEvent],
    ) -> Checked<CommandResult> {
        let key = match self.authenticate(by)? {
            Ok(key) => key,
            Err(reject) => return Ok(Err(reject)),
        };
        if events.is_empty() || events.len() > COMMAND_EVENTS_MAX {
            return Ok(Err(Reject(
                RejectCode::Validation,
                format!(
                    "events: between 1 and {COMMAND_EVENTS_MAX} events, got {}",
                    events.len()
                ),
            )));
        }
        // Check every event before writing any: all or nothing.
        let single = events.len() == 1;
        let name = |index: usize| {
            if single {
                "asn".to_owned()
            } else {
                format!("events[{index}]")
            }
        };
        let mut agents = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let Some(agent) = self.agent(&event.asn)? else {
                return Ok(Err(Reject(
                    RejectCode::NotFound,
                    format!("{}: agent {} not found", name(index), event.asn),
                )));
            };
            if let Err(Reject(code, message)) = Self::may_act_on(
                &key,
                &agent,
                &[Permission::ActivityReport, Permission::Write],
                "reporting activity",
            ) {
                return Ok(Err(Reject(code, format!("{}: {message}", name(index)))));
            }
            if agent.status == AgentStatus::Deactivated {
                return Ok(Err(Reject(
                    RejectCode::Gone,
                    format!("{}: agent {} is deactivated", name(index), agent.asn),
                )));
            }
            agents.push(agent.id);
        }
        let first_seq = self.head.size + 1;
        let mut appended = Vec::with_capacity(events.len());
        for (new, agent_id) in events.iter().zip(agents) {
            let seq = self.head.size + 1;
            let created_at_ms = proposed_at_ms.max(self.head.last_created_at_ms);
            let prev_hash = self.head.head_hash;
            let agent_prev_hash = self.agent_head(&new.asn)?;
            let mut event = Event {
                seq,
                id: chain::event_id(seq, &prev_hash, created_at_ms),
                agent_id,
                asn: new.asn.clone(),
                event_type: new.event_type.clone(),
                severity: new.severity,
                metadata_json: new.metadata_json.clone(),
                reported_by: key.reporter().to_owned(),
                created_at_ms,
                prev_hash,
                agent_prev_hash,
                hash: [0; 32],
            };
            event.hash = chain::event_hash(&event);
            self.index(IndexScope::Agent(&event.asn), seq, created_at_ms)?;
            self.index(
                IndexScope::AgentType(&event.asn, &event.event_type),
                seq,
                created_at_ms,
            )?;
            self.head = LedgerHead {
                size: seq,
                head_hash: event.hash,
                last_created_at_ms: created_at_ms,
            };
            self.agent_heads.insert(event.asn.clone(), event.hash);
            self.count_for_trust(&event)?;
            // The event's leaf joins the Merkle tree over all events: store every subtree it
            // completes (about one per event on average).
            let completed = verifier::merkle::append(&*self, seq - 1, chain::leaf_hash(&event))?;
            for (level, index, hash) in completed {
                if level >= MERKLE_STORED_LEVEL_MIN {
                    self.put(T_MERKLE, crate::ledger::subtree_key(level, index), &hash);
                }
                self.subtrees.insert((level, index), hash);
            }
            self.new_events.insert(seq, event.clone());
            appended.push(event);
        }
        assert_eq!(appended.first().map(|e| e.seq), Some(first_seq));
        Ok(Ok(CommandResult::Appended {
            events: appended,
            replayed: false,
        }))
    }

    /// Adds an event to its agent's day counts (the trust score's inputs): read the first time
    /// an `apply` call touches the (agent, day), from the tip cache if it is the agent's last
    /// day there, else from sled; written once at commit.
    fn count_for_trust(&mut self, event: &Event) -> Result<(), StoreError> {
        let day = verifier::trust::day_of(event.created_at_ms);
        let slot = match event.severity {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
            Severity::Critical => 3,
        };
        if let Some(days) = self.trust.get_mut(event.asn.as_str())
            && let Some((_, counts)) = days.iter_mut().find(|(d, _)| *d == day)
        {
            counts[slot] += 1;
            return Ok(());
        }
        let mut counts = match self.tips.trust.get(event.asn.as_str()) {
            Some((cached_day, counts)) if *cached_day == day => *counts,
            _ => self.ledger.trust_counts(&event.asn, day)?,
        };
        counts[slot] += 1;
        self.trust
            .entry(event.asn.clone())
            .or_default()
            .push((day, counts));
        Ok(())
    }

    /// Writes everything, one insert after the other, and returns the tips this batch changed,
    /// for [`TipCache::absorb`], and the dedup clock and generated keys, for
    /// [`TxWindow::absorb`].
    ///
    /// Not one sled batch: sled's `apply_batch` seals its I/O buffer and has it written and
    /// `sync_file_range`d by its I/O threads on every call, which cost a third of a write's
    /// latency at one client (with the Raft log out of sled, nothing else needs sled's buffers
    /// written before a purge). Instead the first write is `applying` = this batch's last log
    /// id and the last write is `last_applied` = the same. sled recovers a prefix of its writes
    /// in order, so after a crash either the whole apply is there or `applying` is ahead of
    /// `last_applied`: the state machine then restores itself from its snapshot file (or starts
    /// empty without one) at open, and openraft applies the log again
    /// ([`crate::StateMachineStore`]). Readers in between see the events before the indexes
    /// that list them, and both before the head that counts them.
    pub(crate) fn commit(mut self) -> Result<Committed, StoreError> {
        self.ledger.insert_all(vec![(
            crate::space::tagged(T_META as u8, META_APPLYING),
            codec::encode(&self.last_applied).into(),
        )])?;
        let encoded: Vec<(u64, Vec<u8>)> = self
            .new_events
            .iter()
            .map(|(seq, event)| (*seq, codec::encode(event)))
            .collect();
        for chunk in encoded.chunks(EVENT_CHUNK_EVENTS_MAX) {
            let value = codec::encode_event_chunk(chunk.iter().map(|(_, bytes)| bytes.as_slice()));
            self.put(T_EVENTS, codec::u64_key(chunk[0].0), value);
        }
        // An index run goes to sled once it is full, never to be written again; a partial run
        // and the day counts stay in memory ([`crate::deferred`]).
        let mut changes = Changes::default();
        for (prefix, tail) in &self.runs {
            let entries = (tail.run.len() / codec::INDEX_ENTRY_BYTES) as u64;
            if entries >= RUN_EXTEND_ENTRIES_MAX {
                let mut key = prefix.clone();
                key.extend_from_slice(&tail.first.to_be_bytes());
                put(&mut self.writes, T_IDX, key, tail.run.as_slice());
                changes.written_runs.push((prefix.clone(), tail.first));
            } else {
                changes
                    .partial_runs
                    .push((prefix.clone(), tail.first, tail.run.clone()));
            }
        }
        for (asn, days) in &self.trust {
            for (day, counts) in days {
                changes.trust.push((codec::trust_key(asn, *day), *counts));
            }
        }
        for (chunk, records) in &self.chunks {
            put(
                &mut self.writes,
                T_META,
                chunk.key(),
                codec::encode(records),
            );
        }
        // Events, full runs and the rest first; then readers get the runs and day counts held
        // in memory; then the head that counts the events, and `last_applied`.
        self.ledger.insert_all(std::mem::take(&mut self.writes))?;
        let deferred = &self.ledger.deferred;
        let write_through = deferred.publish(changes) > DEFERRED_BYTES_MAX;
        if write_through {
            self.writes = deferred.writes();
        }
        // The meta values that changed (an apply of events changes only the head).
        if !self.before.format_recorded {
            self.put(T_META, META_STORE_FORMAT, codec::encode(&STORE_FORMAT));
        }
        if self.membership != self.before.membership {
            let value = codec::encode(&self.membership);
            self.put(T_META, META_LAST_MEMBERSHIP, value);
        }
        if self.head != self.before.head {
            self.put(T_META, META_HEAD, codec::encode(&self.head));
        }
        if self.agents_total != self.before.agents_total {
            self.put(T_META, META_AGENTS_TOTAL, codec::encode(&self.agents_total));
        }
        if self.operators_total != self.before.operators_total {
            let value = codec::encode(&self.operators_total);
            self.put(T_META, META_OPERATORS_TOTAL, value);
        }
        if self.cluster != self.before.cluster
            && let Some(cluster) = &self.cluster
        {
            self.put(T_META, META_CLUSTER, codec::encode(cluster));
        }
        // Last: the apply is complete once this is written.
        self.put(T_META, META_LAST_APPLIED, codec::encode(&self.last_applied));
        // And sled holds everything applied if nothing is held in memory any more.
        let written_through = write_through || deferred.is_empty();
        if written_through {
            let value = codec::encode(&self.last_applied);
            self.put(T_META, META_WRITTEN_THROUGH, value);
        }
        // What the next apply needs of the Merkle tree: computed from this batch's subtrees
        // and the frontier before it (so read from sled only by the first apply after a start).
        let frontier = if self.head != self.before.head || self.tips.frontier.is_none() {
            let subtrees = verifier::merkle::frontier(&self, self.head.size)?;
            Some(
                subtrees
                    .into_iter()
                    .map(|(level, index, hash)| ((level, index), hash))
                    .collect(),
            )
        } else {
            None
        };
        let meta = MetaBefore {
            format_recorded: true,
            last_applied: self.last_applied,
            head: self.head,
            cluster: self.cluster.clone(),
            membership: self.membership.clone(),
            agents_total: self.agents_total,
            operators_total: self.operators_total,
        };
        self.ledger.insert_all(self.writes)?;
        if write_through {
            deferred.clear();
        }
        let mut agents = self.loaded_agents.into_inner();
        agents.extend(self.agents);
        let mut keys = self.loaded_keys.into_inner();
        keys.extend(self.keys);
        // Each agent's latest day of this batch.
        let trust = self
            .trust
            .into_iter()
            .filter_map(|(asn, days)| {
                let latest = days.into_iter().max_by_key(|(day, _)| *day)?;
                Some((asn, latest))
            })
            .collect();
        let tips = TipCache {
            bytes: 0,
            meta: Some(meta),
            frontier,
            agents,
            keys,
            trust,
            tails: self
                .runs
                .into_iter()
                .map(|(prefix, tail)| (prefix, tail.settled()))
                .collect(),
            heads: self.agent_heads,
        };
        Ok(Committed {
            tips,
            clock_ms: self.clock_ms,
            generated: self.generated,
        })
    }
}

/// What a committed batch hands back to the state machine's memory.
pub(crate) struct Committed {
    pub(crate) tips: TipCache,
    /// The dedup clock after the batch, and the generated keys it applied.
    pub(crate) clock_ms: i64,
    pub(crate) generated: HashMap<Hash, ChunkRef>,
}

/// What a retry of `result`'s proposal answers.
fn record_of(result: &CommandResult, body_hash: Hash) -> TxRecord {
    match result {
        CommandResult::Appended { events, .. } => TxRecord::Events {
            body_hash,
            first_seq: events.first().map_or(0, |e| e.seq),
            count: events.len() as u64,
        },
        other => TxRecord::Result {
            body_hash,
            result: other.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tails(items: &[(&[u8], usize)]) -> TipCache {
        TipCache {
            tails: items
                .iter()
                .map(|(prefix, entries)| {
                    let tail = Tail {
                        first: 0,
                        run: vec![0; entries * codec::INDEX_ENTRY_BYTES],
                    };
                    (prefix.to_vec(), tail)
                })
                .collect(),
            ..TipCache::default()
        }
    }

    /// The cache counts what it holds (a tail's run as it grows, a head once per agent) and
    /// starts over when that passes its limit.
    #[test]
    fn the_tip_cache_counts_its_bytes_and_starts_over_past_its_limit() {
        let mut cache = TipCache::default();
        let entry = TipCache::ENTRY_OVERHEAD_BYTES + 2;
        cache.absorb_within(tails(&[(b"aa", 1)]), 1000);
        assert_eq!(cache.bytes, entry + 16);
        cache.absorb_within(tails(&[(b"aa", 3)]), 1000);
        assert_eq!(cache.bytes, entry + 48, "a longer run replaces the shorter");
        let mut heads = TipCache::default();
        heads.heads.insert("x".into(), [0; 32]);
        cache.absorb_within(heads, 1000);
        let with_head = entry + 48 + TipCache::ENTRY_OVERHEAD_BYTES + 1 + 32;
        assert_eq!(cache.bytes, with_head);
        let mut again = TipCache::default();
        again.heads.insert("x".into(), [1; 32]);
        cache.absorb_within(again, 1000);
        assert_eq!(cache.bytes, with_head, "a head replaced costs nothing more");
        assert_eq!(cache.heads.get("x"), Some(&[1; 32]));
        cache.absorb_within(tails(&[(b"bb", 60)]), 1000);
        assert_eq!(cache.bytes, 0, "past the limit: started over");
        assert!(cache.tails.is_empty() && cache.heads.is_empty());
    }
}
