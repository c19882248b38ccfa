//! The hash of an event and its id, from one canonical byte encoding.
//!
//! Version 0 of the encoding; the verification work (docs/VERIFYING.md) will fix version 1 with
//! golden vectors. Every variable-length field is length-prefixed (u32 big-endian), integers are
//! big-endian, and the input starts with a domain-separation tag, so no two distinct events
//! share an input.

use sha2::Digest;
use sha2::Sha256;

use crate::types::Event;
use crate::types::Hash;
use crate::types::Severity;

const EVENT_DOMAIN: &[u8] = b"asn-ledger/event/v0\0";
const EVENT_ID_DOMAIN: &[u8] = b"asn-ledger/event-id/v0\0";

fn put_bytes(hasher: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_be_bytes());
    hasher.update(bytes);
}

fn severity_byte(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
        Severity::Critical => 3,
    }
}

/// The hash of `event`, over every field but `hash` itself.
pub fn event_hash(event: &Event) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(EVENT_DOMAIN);
    hasher.update(event.seq.to_be_bytes());
    hasher.update(event.id);
    put_bytes(&mut hasher, event.asn.as_bytes());
    put_bytes(&mut hasher, event.event_type.as_bytes());
    hasher.update([severity_byte(event.severity)]);
    put_bytes(&mut hasher, event.metadata_json.as_bytes());
    put_bytes(&mut hasher, event.reported_by.as_bytes());
    hasher.update(event.created_at_ms.to_be_bytes());
    hasher.update(event.prev_hash);
    hasher.update(event.agent_prev_hash);
    hasher.finalize().into()
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
