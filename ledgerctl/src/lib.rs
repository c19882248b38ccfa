//! The checks behind `ledgerctl verify`: events as the API serves them are turned back into
//! the verifier's fields and every hash, link, signature, Merkle root and proof is checked with
//! the `verifier` crate only (docs/VERIFYING.md). Nothing here trusts the node that answered.
//!
//! - [`Keys`]: the nodes' public keys, from `GET /api/v1/ledger/keys`.
//! - [`Audit`]: walks events in `seq` order, checking each against the one before.
//! - [`verify_receipt`], [`verify_bundle`]: offline checks of saved files.
//!
//! The rest of the command line (docs/LEDGERCTL.md): [`client`] (HTTP with fail-over across
//! node URLs), [`config`] (flags, environment, config file), [`exit`] (exit codes), [`import`]
//! (JSONL import in resumable batches), [`table`] (text tables), [`audit`] (`verify audit`,
//! `export`), [`trust`] (`trust-score`, the trust score recomputed from verified history).

pub mod audit;
pub mod client;
pub mod config;
pub mod exit;
pub mod import;
pub mod table;
pub mod trust;

use std::collections::HashMap;

use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use serde_json::Value;
use verifier::Hash;
use verifier::event::EventFields;

/// The published keys: name → (public key, node id, status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub origin: String,
    pub by_name: HashMap<String, [u8; 32]>,
}

fn hex32(value: &Value, field: &str) -> Result<[u8; 32]> {
    let text = value
        .as_str()
        .with_context(|| format!("{field}: not a string"))?;
    verifier::hash_from_hex(text).map_err(|e| anyhow!("{field}: {e}"))
}

fn text<'a>(value: &'a Value, field: &str) -> Result<&'a str> {
    value[field]
        .as_str()
        .with_context(|| format!("{field}: missing or not a string"))
}

impl Keys {
    /// Parses the answer of `GET /api/v1/ledger/keys`.
    pub fn from_json(value: &Value) -> Result<Self> {
        let origin = text(value, "origin")?.to_owned();
        let mut by_name = HashMap::new();
        for key in value["keys"].as_array().context("keys: not an array")? {
            let name = text(key, "name")?.to_owned();
            let public_key = hex32(&key["public_key"], "public_key")?;
            if by_name.insert(name.clone(), public_key).is_some() {
                bail!("key {name} is listed twice");
            }
        }
        Ok(Self { origin, by_name })
    }

    pub fn as_list(&self) -> Vec<(String, [u8; 32])> {
        let mut list: Vec<_> = self
            .by_name
            .iter()
            .map(|(name, key)| (name.clone(), *key))
            .collect();
        list.sort();
        list
    }
}

/// An event as served, with what is needed to check it.
#[derive(Debug, Clone)]
pub struct ServedEvent {
    pub seq: u64,
    pub id: [u8; 16],
    pub agent_id: [u8; 16],
    pub asn: String,
    pub event_type: String,
    pub severity: u8,
    pub metadata_jcs: String,
    pub reported_by: String,
    pub created_at_ms: i64,
    pub prev_hash: Hash,
    pub agent_prev_hash: Hash,
    pub hash: Hash,
    pub signature: [u8; 64],
    pub signer: String,
    /// The event's inclusion proof in its answer group, when `signature` is the group's
    /// (docs/VERIFYING.md section 9).
    pub signature_proof: Option<verifier::proof::InclusionProof>,
}

fn uuid_bytes(value: &Value, field: &str) -> Result<[u8; 16]> {
    let text = value[field]
        .as_str()
        .with_context(|| format!("{field}: missing"))?;
    Ok(*uuid::Uuid::parse_str(text)
        .with_context(|| format!("{field}: not a UUID"))?
        .as_bytes())
}

impl ServedEvent {
    pub fn from_json(value: &Value) -> Result<Self> {
        let seq = value["seq"].as_u64().context("seq: missing")?;
        let inner = || -> Result<Self> {
            let severity = verifier::event::severity_code(text(value, "severity")?)
                .context("severity: unknown")?;
            let created_at = chrono::DateTime::parse_from_rfc3339(text(value, "created_at")?)
                .context("created_at: not RFC 3339")?;
            let mut signature = [0u8; 64];
            hex::decode_to_slice(text(value, "signature")?, &mut signature)
                .context("signature: not 64 hex bytes")?;
            let metadata_jcs = verifier::canonical::canonical_json(&value["metadata"])
                .map_err(|e| anyhow!("metadata: {e}"))?;
            Ok(Self {
                seq,
                id: uuid_bytes(value, "id")?,
                agent_id: uuid_bytes(value, "agent_id")?,
                asn: text(value, "asn")?.to_owned(),
                event_type: text(value, "event_type")?.to_owned(),
                severity,
                metadata_jcs,
                reported_by: text(value, "reported_by")?.to_owned(),
                created_at_ms: created_at.timestamp_millis(),
                prev_hash: hex32(&value["prev_hash"], "prev_hash")?,
                agent_prev_hash: hex32(&value["agent_prev_hash"], "agent_prev_hash")?,
                hash: hex32(&value["hash"], "hash")?,
                signature,
                signer: text(value, "signer")?.to_owned(),
                signature_proof: match value.get("signature_proof") {
                    None | Some(Value::Null) => None,
                    Some(proof) => Some(
                        verifier::proof::InclusionProof::from_json_value(proof.clone())
                            .map_err(|e| anyhow!("signature_proof: {e}"))?,
                    ),
                },
            })
        };
        inner().map_err(|e| anyhow!("event {seq}: {e}"))
    }

    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            seq: self.seq,
            id: self.id,
            agent_id: self.agent_id,
            asn: &self.asn,
            event_type: &self.event_type,
            severity: self.severity,
            metadata_jcs: &self.metadata_jcs,
            reported_by: &self.reported_by,
            created_at_ms: self.created_at_ms,
            prev_hash: self.prev_hash,
            agent_prev_hash: self.agent_prev_hash,
        }
    }

    /// The event's own checks: its hash recomputes, and a published key signed it.
    pub fn check(&self, keys: &Keys) -> Result<()> {
        let fields = self.fields();
        if verifier::event::event_hash(&fields) != self.hash {
            bail!("event {}: its fields do not hash to its hash", self.seq);
        }
        let public_key = keys.by_name.get(&self.signer).with_context(|| {
            format!(
                "event {}: signed by {}, which is not a published key",
                self.seq, self.signer
            )
        })?;
        verifier::event::verify_answer_signature(
            &self.hash,
            &self.signature,
            self.signature_proof.as_ref(),
            public_key,
        )
        .map_err(|e| anyhow!("event {}: signature of {}: {e}", self.seq, self.signer))
    }
}

/// Walks the ledger in `seq` order from 1: every event's own checks, the chain and per-agent
/// links, and the Merkle tree of what it has seen.
pub struct Audit<'k> {
    keys: &'k Keys,
    next_seq: u64,
    head: Hash,
    agents: HashMap<String, Hash>,
    pub tree: verifier::merkle::MemoryTree,
}

impl<'k> Audit<'k> {
    pub fn new(keys: &'k Keys) -> Self {
        Self {
            keys,
            next_seq: 1,
            head: [0; 32],
            agents: HashMap::new(),
            tree: verifier::merkle::MemoryTree::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn head(&self) -> Hash {
        self.head
    }

    pub fn push(&mut self, event: &ServedEvent) -> Result<()> {
        if event.seq != self.next_seq {
            bail!("event {}: expected event {} next", event.seq, self.next_seq);
        }
        event.check(self.keys)?;
        if event.prev_hash != self.head {
            bail!(
                "event {}: prev_hash is not the hash of event {}",
                event.seq,
                event.seq - 1
            );
        }
        let agent_prev = self.agents.get(&event.asn).copied().unwrap_or([0; 32]);
        if event.agent_prev_hash != agent_prev {
            bail!(
                "event {}: agent_prev_hash is not the hash of agent {}'s event before",
                event.seq,
                event.asn
            );
        }
        self.tree
            .push(verifier::event::leaf_hash(&event.fields()))
            .map_err(|e| anyhow!("event {}: Merkle tree: {e:?}", event.seq))?;
        self.agents.insert(event.asn.clone(), event.hash);
        self.head = event.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Checks a verified checkpoint against what was walked: same root and head at its size.
    pub fn check_checkpoint(&self, checkpoint: &verifier::checkpoint::Checkpoint) -> Result<()> {
        if checkpoint.size > self.size() {
            bail!(
                "checkpoint of size {} is past the {} events walked",
                checkpoint.size,
                self.size()
            );
        }
        let root = self
            .tree
            .root(checkpoint.size)
            .map_err(|e| anyhow!("Merkle root: {e:?}"))?;
        if root != checkpoint.root {
            bail!(
                "the Merkle root of the first {} events differs from the checkpoint's",
                checkpoint.size
            );
        }
        if checkpoint.size == self.size() && checkpoint.head_hash != self.head {
            bail!(
                "the checkpoint's head hash is not the hash of event {}",
                checkpoint.size
            );
        }
        Ok(())
    }
}

/// Verifies a receipt (the answer of `GET /api/v1/ledger/entries/{seq}/proof`) offline.
pub fn verify_receipt(receipt: &Value, keys: &Keys) -> Result<String> {
    let event = ServedEvent::from_json(&receipt["event"])?;
    event.check(keys)?;
    let proof = verifier::proof::InclusionProof::from_json_value(receipt["proof"].clone())
        .map_err(|e| anyhow!("proof: {e}"))?;
    let note = receipt["checkpoint"]
        .as_str()
        .context("checkpoint: missing (ask without tree_size for a receipt)")?;
    let (checkpoint, signers) =
        verifier::proof::verify_receipt(&event.fields(), &proof, note, &keys.as_list())
            .map_err(|e| anyhow!("receipt: {e}"))?;
    Ok(format!(
        "receipt verified: event {} is leaf {} of the tree of {} events, root {}, signed by {}",
        event.seq,
        proof.leaf_index,
        checkpoint.size,
        hex::encode(checkpoint.root),
        signers.join(", ")
    ))
}

/// Verifies an exported bundle offline: `{"keys", "checkpoint", "events"}`.
pub fn verify_bundle(bundle: &Value) -> Result<String> {
    let keys = Keys::from_json(&bundle["keys"])?;
    let note = bundle["checkpoint"]
        .as_str()
        .context("checkpoint: missing")?;
    let (checkpoint, signers) = verifier::checkpoint::verify(note, &keys.as_list())
        .map_err(|e| anyhow!("checkpoint: {e}"))?;
    let mut audit = Audit::new(&keys);
    for value in bundle["events"]
        .as_array()
        .context("events: not an array")?
    {
        audit.push(&ServedEvent::from_json(value)?)?;
    }
    audit.check_checkpoint(&checkpoint)?;
    Ok(format!(
        "bundle verified: {} events, root {} at size {} signed by {}",
        audit.size(),
        hex::encode(checkpoint.root),
        checkpoint.size,
        signers.join(", ")
    ))
}
