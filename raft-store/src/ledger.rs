//! [`Ledger`]: the ledger's sled trees and the read-only queries over them.
//!
//! The trees are written only by the state machine ([`crate::StateMachineStore`]), in one
//! transaction per `apply` call; everything else reads them through this handle.
//!
//! | tree             | key                          | value                  |
//! |------------------|------------------------------|------------------------|
//! | `sm_meta`        | `last_applied`, `last_membership`, `head`, `cluster` | postcard |
//! | `sm_events`      | seq (u64 BE)                 | postcard([`Event`])    |
//! | `sm_agent_idx`   | asn, 0x00, ordinal (u64 BE)  | seq (u64 BE)           |
//! | `sm_agent_count` | asn                          | count (u64 BE)         |
//! | `sm_tx`          | dedup key (32 bytes)         | postcard([`TxRecord`]) |
//! | `sm_nodes`       | node id (u64 BE)             | postcard([`NodeRecord`]) |
//! | `sm_keys`        | key id                       | postcard([`ApiKeyRecord`]) |

use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;
use crate::chain;
use crate::codec;
use crate::types::ApiKeyRecord;
use crate::types::ClusterRecord;
use crate::types::Event;
use crate::types::Hash;
use crate::types::LedgerHead;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::NodeRecord;
use crate::types::StoredMembership;

pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const META_LAST_MEMBERSHIP: &[u8] = b"last_membership";
pub(crate) const META_HEAD: &[u8] = b"head";
pub(crate) const META_CLUSTER: &[u8] = b"cluster";

/// Names of every state-machine tree, in a fixed order (snapshots list them in this order).
pub(crate) const SM_TREES: [&str; 7] = [
    "sm_meta",
    "sm_events",
    "sm_agent_idx",
    "sm_agent_count",
    "sm_tx",
    "sm_nodes",
    "sm_keys",
];

/// What the state machine remembers of an applied `AppendEvents`, to answer a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub body_hash: Hash,
    pub first_seq: u64,
    pub count: u64,
}

/// Read handle on the state-machine trees. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) meta: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) agent_idx: sled::Tree,
    pub(crate) agent_count: sled::Tree,
    pub(crate) tx: sled::Tree,
    pub(crate) nodes: sled::Tree,
    pub(crate) keys: sled::Tree,
}

impl Ledger {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            meta: db.open_tree(SM_TREES[0])?,
            events: db.open_tree(SM_TREES[1])?,
            agent_idx: db.open_tree(SM_TREES[2])?,
            agent_count: db.open_tree(SM_TREES[3])?,
            tx: db.open_tree(SM_TREES[4])?,
            nodes: db.open_tree(SM_TREES[5])?,
            keys: db.open_tree(SM_TREES[6])?,
        })
    }

    /// The trees in the order of [`SM_TREES`].
    pub(crate) fn trees(&self) -> [&sled::Tree; 7] {
        [
            &self.meta,
            &self.events,
            &self.agent_idx,
            &self.agent_count,
            &self.tx,
            &self.nodes,
            &self.keys,
        ]
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.meta.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, &String::from_utf8_lossy(key)).map(Some),
        }
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

    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        match self.events.get(codec::u64_key(seq))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, "event").map(Some),
        }
    }

    /// Up to `limit` events from `from_seq` upwards, in ledger order.
    pub fn events_from(&self, from_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.events.range(codec::u64_key(from_seq)..).take(limit) {
            let (_, value) = item?;
            out.push(codec::decode(&value, "event")?);
        }
        Ok(out)
    }

    /// How many events the agent `asn` has.
    pub fn agent_event_count(&self, asn: &str) -> Result<u64, StoreError> {
        match self.agent_count.get(asn.as_bytes())? {
            None => Ok(0),
            Some(bytes) => codec::u64_from_key(&bytes),
        }
    }

    /// The agent's events newest first, skipping the `skip` newest, at most `limit`.
    /// Costs O(limit) index reads, whatever `skip` is.
    pub fn agent_events_newest_first(
        &self,
        asn: &str,
        skip: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let count = self.agent_event_count(asn)?;
        if skip >= count || limit == 0 {
            return Ok(Vec::new());
        }
        let newest = count - 1 - skip;
        let oldest = newest.saturating_sub(limit as u64 - 1);
        let range = codec::agent_index_key(asn, oldest)..=codec::agent_index_key(asn, newest);
        let mut out = Vec::with_capacity(limit);
        for item in self.agent_idx.range(range).rev() {
            let (_, value) = item?;
            let seq = codec::u64_from_key(&value)?;
            let event = self.event(seq)?.ok_or_else(|| {
                StoreError::Corrupt(format!("agent index points at missing event {seq}"))
            })?;
            assert_eq!(
                event.asn, asn,
                "agent index of {asn} points at event {seq} of {}",
                event.asn
            );
            out.push(event);
        }
        Ok(out)
    }

    pub(crate) fn tx_record(&self, dedup_key: &Hash) -> Result<Option<TxRecord>, StoreError> {
        match self.tx.get(dedup_key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, "tx record").map(Some),
        }
    }

    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        match self.nodes.get(codec::u64_key(id))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, "node record").map(Some),
        }
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

    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.keys.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, "api key").map(Some),
        }
    }

    /// Checks what can be checked cheaply at start-up: the recorded head is the last event, the
    /// last event's hash is right, and nothing lies past it.
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
