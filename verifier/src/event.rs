//! The canonical byte encoding of an event, its chain hash and its Merkle
//! leaf hash.
//!
//! `E` = [`EVENT_DOMAIN`] followed by every field of [`EventFields`] in
//! declaration order: integers big-endian (`u64`, `i64` two's complement),
//! fixed-size byte arrays raw, `u8` raw, strings as a `u32` big-endian byte
//! length followed by their UTF-8 bytes. Nothing else: no padding, no
//! terminator.

use crate::Hash;
use sha2::{Digest, Sha256};

/// Domain and version prefix of `E` (20 bytes, NUL included). A new encoding
/// gets a new domain; verifiers reject events whose version they do not know.
pub const EVENT_DOMAIN: &[u8] = b"asn-ledger/event/v1\0";

/// The largest string the encoding can carry (its length is a `u32`).
pub const STRING_BYTES_MAX: usize = u32::MAX as usize;

/// Severities and their codes in `E`.
pub const SEVERITIES: [&str; 4] = ["info", "warning", "error", "critical"];

/// Every field of an event that is hashed, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// Position in the ledger, dense from 1.
    pub seq: u64,
    /// The event's id (UUIDv7 bytes).
    pub id: [u8; 16],
    /// The agent's id (UUIDv7 bytes).
    pub agent_id: [u8; 16],
    pub asn: &'a str,
    pub event_type: &'a str,
    /// 0 info, 1 warning, 2 error, 3 critical.
    pub severity: u8,
    /// RFC 8785 canonical JSON text of the metadata object.
    pub metadata_jcs: &'a str,
    pub reported_by: &'a str,
    pub created_at_ms: i64,
    /// Hash of event `seq - 1`; zeroes for seq 1.
    pub prev_hash: Hash,
    /// Hash of the previous event of the same agent; zeroes for its first.
    pub agent_prev_hash: Hash,
}

/// Why fields cannot be an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("seq must be at least 1")]
    ZeroSeq,
    #[error("severity code {0} is unknown (0 info, 1 warning, 2 error, 3 critical)")]
    Severity(u8),
    #[error("field {0} is longer than {STRING_BYTES_MAX} bytes")]
    TooLong(&'static str),
    #[error("metadata_jcs is not the RFC 8785 canonical JSON text of an object")]
    MetadataNotCanonical,
}

/// The code of a severity name (`"info"` → 0 … `"critical"` → 3).
pub fn severity_code(name: &str) -> Option<u8> {
    SEVERITIES.iter().position(|s| *s == name).map(|i| i as u8)
}

/// The name of a severity code.
pub fn severity_name(code: u8) -> Option<&'static str> {
    SEVERITIES.get(usize::from(code)).copied()
}

impl EventFields<'_> {
    /// Checks what the encoding itself cannot: `seq >= 1`, a known severity,
    /// string lengths, and that `metadata_jcs` is canonical JSON of an object
    /// (this parses the metadata: call it when verifying, not when hashing).
    pub fn validate(&self) -> Result<(), EventError> {
        if self.seq == 0 {
            return Err(EventError::ZeroSeq);
        }
        if severity_name(self.severity).is_none() {
            return Err(EventError::Severity(self.severity));
        }
        for (name, value) in [
            ("asn", self.asn),
            ("event_type", self.event_type),
            ("metadata_jcs", self.metadata_jcs),
            ("reported_by", self.reported_by),
        ] {
            if value.len() > STRING_BYTES_MAX {
                return Err(EventError::TooLong(name));
            }
        }
        if !crate::canonical::is_canonical_object(self.metadata_jcs) {
            return Err(EventError::MetadataNotCanonical);
        }
        Ok(())
    }

    /// The length of `E` in bytes.
    pub fn encoded_len(&self) -> usize {
        EVENT_DOMAIN.len()
            + 8
            + 16
            + 16
            + 4
            + self.asn.len()
            + 4
            + self.event_type.len()
            + 1
            + 4
            + self.metadata_jcs.len()
            + 4
            + self.reported_by.len()
            + 8
            + 32
            + 32
    }

    /// Feeds the bytes of `E`, in order, to `sink`.
    pub fn write_to(&self, sink: &mut impl FnMut(&[u8])) {
        sink(EVENT_DOMAIN);
        sink(&self.seq.to_be_bytes());
        sink(&self.id);
        sink(&self.agent_id);
        write_str(sink, self.asn);
        write_str(sink, self.event_type);
        sink(&[self.severity]);
        write_str(sink, self.metadata_jcs);
        write_str(sink, self.reported_by);
        sink(&self.created_at_ms.to_be_bytes());
        sink(&self.prev_hash);
        sink(&self.agent_prev_hash);
    }
}

fn write_str(sink: &mut impl FnMut(&[u8]), s: &str) {
    // Strings longer than u32::MAX bytes are not events (see `validate`); the
    // node's limits keep every field far below it.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    sink(&len.to_be_bytes());
    sink(s.as_bytes());
}

/// The canonical bytes `E` of an event.
pub fn encode(fields: &EventFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.encoded_len());
    fields.write_to(&mut |bytes: &[u8]| out.extend_from_slice(bytes));
    out
}

/// The event's chain hash: `SHA-256(E)`. Allocates nothing.
pub fn event_hash(fields: &EventFields) -> Hash {
    let mut hasher = Sha256::new();
    fields.write_to(&mut |bytes: &[u8]| hasher.update(bytes));
    hasher.finalize().into()
}

/// The event's Merkle leaf hash: `SHA-256(0x00 || E)` (RFC 6962 leaf).
/// Allocates nothing.
pub fn leaf_hash(fields: &EventFields) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    fields.write_to(&mut |bytes: &[u8]| hasher.update(bytes));
    hasher.finalize().into()
}

/// Checks the two chain links of `fields` against the hashes of the events
/// they must point to: `prev` is the hash of event `seq - 1` (`None` for seq
/// 1), `agent_prev` the hash of the same agent's previous event (`None` for
/// its first).
pub fn check_links(
    fields: &EventFields,
    prev: Option<&Hash>,
    agent_prev: Option<&Hash>,
) -> Result<(), LinkError> {
    let want_prev = prev.copied().unwrap_or(crate::ZERO_HASH);
    if (fields.seq == 1) != prev.is_none() {
        return Err(LinkError::Prev { seq: fields.seq });
    }
    if fields.prev_hash != want_prev {
        return Err(LinkError::Prev { seq: fields.seq });
    }
    if fields.agent_prev_hash != agent_prev.copied().unwrap_or(crate::ZERO_HASH) {
        return Err(LinkError::AgentPrev { seq: fields.seq });
    }
    Ok(())
}

/// A broken chain link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("seq {seq}: prev_hash is not the hash of the event before it")]
    Prev { seq: u64 },
    #[error("seq {seq}: agent_prev_hash is not the hash of the agent's previous event")]
    AgentPrev { seq: u64 },
}

/// Domain of an event signature: a node signs `SIGNATURE_DOMAIN || hash` of each event it
/// serves, with its Ed25519 identity key.
pub const SIGNATURE_DOMAIN: &[u8] = b"asn-ledger/event-signature/v1\0";

/// The exact bytes a node signs for the event whose chain hash is `hash`.
pub fn signature_message(hash: &Hash) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + hash.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(hash);
    message
}

/// Signs the event whose chain hash is `hash`.
pub fn sign(hash: &Hash, key: &ed25519_dalek::SigningKey) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    key.sign(&signature_message(hash)).to_bytes()
}

/// Why an event signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the public key is not a valid Ed25519 key")]
    PublicKey,
    #[error("the signature does not verify")]
    Invalid,
    #[error("the signature's proof is malformed: {0}")]
    Proof(crate::merkle::VerifyError),
}

/// Verifies a node's signature over the event whose chain hash is `hash` (strict RFC 8032).
pub fn verify_signature(
    hash: &Hash,
    signature: &[u8; 64],
    public_key: &[u8; 32],
) -> Result<(), SignatureError> {
    verify_message(&signature_message(hash), signature, public_key)
}

/// Verifies an Ed25519 signature over `message` (strict RFC 8032).
fn verify_message(
    message: &[u8],
    signature: &[u8; 64],
    public_key: &[u8; 32],
) -> Result<(), SignatureError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .map_err(|_| SignatureError::PublicKey)?;
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature)
        .map_err(|_| SignatureError::Invalid)
}

/// Domain of a group signature. Answers that a node makes together (single reports whose
/// writes committed in the same Raft entry) share one signature: over the root of an RFC 9162
/// Merkle tree whose leaf `i` is `SHA-256(0x00 || hash_i)`, `hash_i` the chain hash of the event
/// answer `i` signs. Each answer carries its event's inclusion proof in that tree
/// (docs/VERIFYING.md section 9).
pub const GROUP_SIGNATURE_DOMAIN: &[u8] = b"asn-ledger/answer-group-signature/v1\0";

/// The leaf of the event whose chain hash is `hash` in an answer group's tree.
pub fn group_leaf(hash: &Hash) -> Hash {
    crate::merkle::leaf_hash(hash)
}

/// The exact bytes a node signs for an answer group: [`GROUP_SIGNATURE_DOMAIN`], the group's
/// size (`u64` big-endian) and its tree's root.
pub fn group_signature_message(tree_size: u64, root: &Hash) -> Vec<u8> {
    let mut message = Vec::with_capacity(GROUP_SIGNATURE_DOMAIN.len() + 8 + root.len());
    message.extend_from_slice(GROUP_SIGNATURE_DOMAIN);
    message.extend_from_slice(&tree_size.to_be_bytes());
    message.extend_from_slice(root);
    message
}

/// Signs an answer group of `tree_size` events whose tree has root `root`.
pub fn sign_group(tree_size: u64, root: &Hash, key: &ed25519_dalek::SigningKey) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    key.sign(&group_signature_message(tree_size, root))
        .to_bytes()
}

/// Verifies the signature an answer carries for the event whose chain hash is `hash`: over
/// the hash itself when the answer has no `signature_proof`, otherwise over the root of its
/// group, which `proof` (the event's inclusion proof in the group's tree) leads to from
/// [`group_leaf`]`(hash)`.
pub fn verify_answer_signature(
    hash: &Hash,
    signature: &[u8; 64],
    proof: Option<&crate::proof::InclusionProof>,
    public_key: &[u8; 32],
) -> Result<(), SignatureError> {
    let Some(proof) = proof else {
        return verify_signature(hash, signature, public_key);
    };
    let root = crate::merkle::inclusion_root(
        &group_leaf(hash),
        proof.leaf_index,
        proof.tree_size,
        &proof.hashes,
    )
    .map_err(SignatureError::Proof)?;
    verify_message(
        &group_signature_message(proof.tree_size, &root),
        signature,
        public_key,
    )
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn signatures_verify_and_any_changed_byte_fails() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let hash = [42u8; 32];
        let signature = sign(&hash, &key);
        assert_eq!(verify_signature(&hash, &signature, &public), Ok(()));
        for i in 0..64 {
            let mut bad = signature;
            bad[i] ^= 1;
            assert!(
                verify_signature(&hash, &bad, &public).is_err(),
                "signature byte {i}"
            );
        }
        for i in 0..32 {
            let mut other = hash;
            other[i] ^= 1;
            assert!(
                verify_signature(&other, &signature, &public).is_err(),
                "hash byte {i}"
            );
        }
    }

    #[test]
    fn group_signatures_verify_for_every_member_and_any_changed_byte_fails() {
        use crate::merkle::MemoryTree;
        use crate::proof::InclusionProof;
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        for size in 1..=9u64 {
            let hashes: Vec<Hash> = (0..size).map(|i| [i as u8 + 1; 32]).collect();
            let tree = MemoryTree::from_leaves(hashes.iter().map(group_leaf)).expect("tree");
            let root = tree.root(size).expect("root");
            let signature = sign_group(size, &root, &key);
            for (index, hash) in hashes.iter().enumerate() {
                let proof = InclusionProof {
                    leaf_index: index as u64,
                    tree_size: size,
                    hashes: tree.inclusion_proof(index as u64, size).expect("proof"),
                };
                assert_eq!(
                    verify_answer_signature(hash, &signature, Some(&proof), &public),
                    Ok(()),
                    "member {index} of {size}"
                );
                // Another member's hash, the plain form, a changed signature, proof hash,
                // index or size: each fails.
                let other = hashes[(index + 1) % hashes.len()];
                if size > 1 {
                    assert!(
                        verify_answer_signature(&other, &signature, Some(&proof), &public).is_err()
                    );
                }
                assert!(verify_answer_signature(hash, &signature, None, &public).is_err());
                let mut bad = signature;
                bad[index % 64] ^= 1;
                assert!(verify_answer_signature(hash, &bad, Some(&proof), &public).is_err());
                for (h, byte) in (0..proof.hashes.len()).flat_map(|h| [(h, 0), (h, 31)]) {
                    let mut changed = proof.clone();
                    changed.hashes[h][byte] ^= 1;
                    assert!(
                        verify_answer_signature(hash, &signature, Some(&changed), &public).is_err()
                    );
                }
                let mut moved = proof.clone();
                moved.leaf_index = (moved.leaf_index + 1) % size;
                if size > 1 {
                    assert!(
                        verify_answer_signature(hash, &signature, Some(&moved), &public).is_err()
                    );
                }
                let mut grown = proof.clone();
                grown.tree_size += 1;
                assert!(verify_answer_signature(hash, &signature, Some(&grown), &public).is_err());
            }
        }
    }

    #[test]
    fn a_group_signature_is_not_an_event_signature() {
        // The domains differ: neither kind of signature verifies as the other.
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let hash = [42u8; 32];
        let alone = sign(&hash, &key);
        let root = group_leaf(&hash);
        let proof = crate::proof::InclusionProof {
            leaf_index: 0,
            tree_size: 1,
            hashes: Vec::new(),
        };
        assert_eq!(sign_group(1, &root, &key).len(), 64);
        assert!(verify_answer_signature(&hash, &alone, Some(&proof), &public).is_err());
        assert_eq!(
            verify_answer_signature(&hash, &sign_group(1, &root, &key), Some(&proof), &public),
            Ok(())
        );
        assert!(verify_signature(&hash, &sign_group(1, &root, &key), &public).is_err());
    }
}
