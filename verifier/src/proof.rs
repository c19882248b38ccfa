//! The JSON forms of proofs, and receipts.
//!
//! * Inclusion: `{"leaf_index": <u64>, "tree_size": <u64>, "hashes": ["<64 lowercase hex>", …]}`
//! * Consistency: `{"from": <u64>, "to": <u64>, "hashes": […]}`
//!
//! Hashes are listed deepest first, as RFC 9162 orders them. Unknown or
//! repeated fields, other hash spellings and trailing data are rejected.
//!
//! A *receipt* for an event is the event, an inclusion proof of its leaf
//! (`leaf_index = seq - 1`) and a signed checkpoint whose size is the proof's
//! `tree_size`.

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::event::{self, EventError, EventFields};
use crate::merkle::{self, VerifyError};
use crate::{Hash, hash_from_hex, hash_to_hex};
use serde::{Deserialize, Serialize};

/// The most hashes a proof can have (two per tree level).
pub const PROOF_HASHES_MAX: usize = 128;

/// An RFC 9162 inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub hashes: Vec<Hash>,
}

/// An RFC 9162 consistency proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub hashes: Vec<Hash>,
}

/// A malformed proof document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofFormatError {
    #[error("invalid proof JSON: {0}")]
    Json(String),
    #[error("hashes[{0}] is not 64 lowercase hex characters")]
    Hash(usize),
    #[error("proof has more than {PROOF_HASHES_MAX} hashes")]
    TooManyHashes,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionJson {
    leaf_index: u64,
    tree_size: u64,
    hashes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyJson {
    from: u64,
    to: u64,
    hashes: Vec<String>,
}

fn hashes_from_hex(hashes: &[String]) -> Result<Vec<Hash>, ProofFormatError> {
    if hashes.len() > PROOF_HASHES_MAX {
        return Err(ProofFormatError::TooManyHashes);
    }
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| hash_from_hex(h).map_err(|_| ProofFormatError::Hash(i)))
        .collect()
}

fn json_error(e: serde_json::Error) -> ProofFormatError {
    ProofFormatError::Json(e.to_string())
}

/// A hash as its 64 lowercase hex characters, serialized without a `String` of its own.
struct HexHash<'a>(&'a Hash);

impl Serialize for HexHash<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).map_err(serde::ser::Error::custom)?;
        let text = std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

/// The JSON of docs/VERIFYING.md section 7 (`leaf_index`, `tree_size`, `hashes` in hex), the
/// one definition of that form (`to_json_value` and `to_json` go through it).
impl Serialize for InclusionProof {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut json = serializer.serialize_struct("InclusionProof", 3)?;
        json.serialize_field("leaf_index", &self.leaf_index)?;
        json.serialize_field("tree_size", &self.tree_size)?;
        let hashes: Vec<HexHash<'_>> = self.hashes.iter().map(HexHash).collect();
        json.serialize_field("hashes", &hashes)?;
        json.end()
    }
}

impl InclusionProof {
    pub fn from_json(text: &str) -> Result<Self, ProofFormatError> {
        let raw: InclusionJson = serde_json::from_str(text).map_err(json_error)?;
        Self::from_json_value_parts(raw)
    }

    pub fn from_json_value(value: serde_json::Value) -> Result<Self, ProofFormatError> {
        let raw: InclusionJson = serde_json::from_value(value).map_err(json_error)?;
        Self::from_json_value_parts(raw)
    }

    fn from_json_value_parts(raw: InclusionJson) -> Result<Self, ProofFormatError> {
        Ok(Self {
            leaf_index: raw.leaf_index,
            tree_size: raw.tree_size,
            hashes: hashes_from_hex(&raw.hashes)?,
        })
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        // Numbers and hex strings: serializing them cannot fail.
        serde_json::to_value(self).expect("an inclusion proof serializes")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an inclusion proof serializes")
    }

    /// Verifies that `leaf` (a leaf hash) is included under `root`.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), VerifyError> {
        merkle::verify_inclusion(leaf, self.leaf_index, self.tree_size, &self.hashes, root)
    }
}

impl ConsistencyProof {
    pub fn from_json(text: &str) -> Result<Self, ProofFormatError> {
        let raw: ConsistencyJson = serde_json::from_str(text).map_err(json_error)?;
        Self::from_json_value_parts(raw)
    }

    pub fn from_json_value(value: serde_json::Value) -> Result<Self, ProofFormatError> {
        let raw: ConsistencyJson = serde_json::from_value(value).map_err(json_error)?;
        Self::from_json_value_parts(raw)
    }

    fn from_json_value_parts(raw: ConsistencyJson) -> Result<Self, ProofFormatError> {
        Ok(Self {
            from: raw.from,
            to: raw.to,
            hashes: hashes_from_hex(&raw.hashes)?,
        })
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from,
            "to": self.to,
            "hashes": self.hashes.iter().map(hash_to_hex).collect::<Vec<_>>(),
        })
    }

    pub fn to_json(&self) -> String {
        self.to_json_value().to_string()
    }

    /// Verifies that the tree `old_root` (size `from`) is a prefix of the
    /// tree `new_root` (size `to`).
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), VerifyError> {
        merkle::verify_consistency(self.from, self.to, old_root, new_root, &self.hashes)
    }
}

/// Why a receipt is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("event: {0}")]
    Event(#[from] EventError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("inclusion proof is for leaf {got}, the event of seq {seq} is leaf {}", seq - 1)]
    LeafIndex { seq: u64, got: u64 },
    #[error("inclusion proof is for tree size {proof}, the checkpoint has size {checkpoint}")]
    TreeSize { proof: u64, checkpoint: u64 },
    #[error("the checkpoint's head hash is not the hash of the event, which is its last")]
    HeadHash,
    #[error("the checkpoint's time is not the event's created_at, which is its last")]
    Time,
    #[error("inclusion proof: {0}")]
    Inclusion(#[from] VerifyError),
}

/// Verifies a receipt offline: the event's fields are well-formed, the
/// checkpoint note is signed by one of `keys`, the proof is for leaf
/// `seq - 1` in a tree of the checkpoint's size and leads from the event's
/// leaf hash to the checkpoint's root (and, if the event is the
/// checkpoint's last, its head hash and time are the event's). Returns the
/// checkpoint and the names of the keys that signed it.
pub fn verify_receipt(
    fields: &EventFields,
    proof: &InclusionProof,
    signed_checkpoint: &str,
    keys: &[(String, [u8; 32])],
) -> Result<(Checkpoint, Vec<String>), ReceiptError> {
    fields.validate()?;
    let (cp, signers) = checkpoint::verify(signed_checkpoint, keys)?;
    if proof.leaf_index != fields.seq - 1 {
        return Err(ReceiptError::LeafIndex {
            seq: fields.seq,
            got: proof.leaf_index,
        });
    }
    if proof.tree_size != cp.size {
        return Err(ReceiptError::TreeSize {
            proof: proof.tree_size,
            checkpoint: cp.size,
        });
    }
    proof.verify(&event::leaf_hash(fields), &cp.root)?;
    if cp.size == fields.seq {
        if cp.head_hash != event::event_hash(fields) {
            return Err(ReceiptError::HeadHash);
        }
        if cp.time_ms != fields.created_at_ms {
            return Err(ReceiptError::Time);
        }
    }
    Ok((cp, signers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of section 7, field by field and in that order, and back.
    #[test]
    fn an_inclusion_proof_serializes_as_section_7_says() {
        let ab = "ab".repeat(32);
        let zero = "00".repeat(32);
        for (hashes, text) in [
            (vec![], "[]".to_string()),
            (vec![[0u8; 32]], format!("[\"{zero}\"]")),
            (vec![[0xab; 32], [0; 32]], format!("[\"{ab}\",\"{zero}\"]")),
        ] {
            let proof = InclusionProof {
                leaf_index: 5,
                tree_size: 9,
                hashes,
            };
            let expected = format!("{{\"leaf_index\":5,\"tree_size\":9,\"hashes\":{text}}}");
            assert_eq!(proof.to_json(), expected);
            assert_eq!(proof.to_json_value().to_string(), expected);
            assert_eq!(InclusionProof::from_json(&expected), Ok(proof));
        }
    }
}
