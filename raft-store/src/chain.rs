//! An event's hashes, through the `verifier` crate: the one definition of the bytes that are
//! hashed and signed (docs/VERIFYING.md), so the node and any third-party verifier agree.

use sha2::Digest;
use sha2::Sha256;

use crate::types::Event;
use crate::types::Hash;
use crate::types::Severity;

const EVENT_ID_DOMAIN: &[u8] = b"asn-ledger/event-id/v0\0";

fn severity_code(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
        Severity::Critical => 3,
    }
}

/// The fields of `event` that are hashed, in the verifier's form.
pub fn fields(event: &Event) -> verifier::event::EventFields<'_> {
    verifier::event::EventFields {
        seq: event.seq,
        id: event.id,
        agent_id: event.agent_id,
        asn: &event.asn,
        event_type: &event.event_type,
        severity: severity_code(event.severity),
        metadata_jcs: &event.metadata_json,
        reported_by: &event.reported_by,
        created_at_ms: event.created_at_ms,
        prev_hash: event.prev_hash,
        agent_prev_hash: event.agent_prev_hash,
    }
}

/// The chain hash of `event`, over every field but `hash` itself.
pub fn event_hash(event: &Event) -> Hash {
    verifier::event::event_hash(&fields(event))
}

/// The event's leaf in the Merkle tree over all events.
pub fn leaf_hash(event: &Event) -> Hash {
    verifier::event::leaf_hash(&fields(event))
}

/// A UUIDv7 for the event at `seq`: its timestamp is `created_at_ms`, its random bits come from
/// the chain, so every replica derives the same id.
pub fn event_id(seq: u64, prev_hash: &Hash, created_at_ms: i64) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(EVENT_ID_DOMAIN);
    hasher.update(seq.to_be_bytes());
    hasher.update(prev_hash);
    let digest: Hash = hasher.finalize().into();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(created_at_ms).unwrap_or(0);
    *uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .as_bytes()
}

/// SHA-256 of arbitrary bytes.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}
