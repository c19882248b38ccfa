//! The signed tree head: a C2SP `tlog-checkpoint` (c2sp.org/tlog-checkpoint)
//! inside a C2SP signed note, signed with Ed25519.
//!
//! The signed text is exactly five lines, each ending in `\n`:
//!
//! ```text
//! <origin>
//! <tree size, decimal, no leading zeros>
//! <root hash, standard base64 with padding>
//! head <hash of the last event (seq = size), 64 lowercase hex; zeroes if size is 0>
//! time <created_at_ms of the last event, decimal; 0 if size is 0>
//! ```

use crate::note::{self, NoteError};
use crate::{Hash, hash_to_hex};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::SigningKey;

/// A tree head of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the ledger (the cluster), e.g. `asn-ledger/<cluster id>`.
    pub origin: String,
    /// Number of events (leaves).
    pub size: u64,
    /// Merkle tree head of the first `size` events.
    pub root: Hash,
    /// Chain hash of event `size` (zeroes if `size` is 0).
    pub head_hash: Hash,
    /// `created_at_ms` of event `size` (0 if `size` is 0).
    pub time_ms: i64,
}

/// Why a checkpoint is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("checkpoint has {0} lines, 5 expected (origin, size, root, head, time)")]
    LineCount(usize),
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    #[error("checkpoint size is not a canonical decimal number")]
    Size,
    #[error("checkpoint root is not the base64 of 32 bytes")]
    Root,
    #[error("checkpoint line 4 is not `head <64 lowercase hex>`")]
    Head,
    #[error("checkpoint line 5 is not `time <decimal milliseconds>`")]
    Time,
}

/// Note key id of an Ed25519 key (C2SP signed-note):
/// `SHA-256(name || 0x0A || 0x01 || public key)[..4]`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    note::key_id(name, public_key)
}

/// Exactly the signed text, ending in `\n`. The origin must be one
/// non-empty line without control characters for the note to verify.
pub fn body_text(cp: &Checkpoint) -> String {
    format!(
        "{}\n{}\n{}\nhead {}\ntime {}\n",
        cp.origin,
        cp.size,
        BASE64.encode(cp.root),
        hash_to_hex(&cp.head_hash),
        cp.time_ms
    )
}

/// The full signed note: body, blank line, `— <name> <base64(key id || sig)>\n`.
pub fn sign(cp: &Checkpoint, name: &str, key: &SigningKey) -> String {
    note::sign(&body_text(cp), name, key)
}

/// Adds one more signature line to a signed note (a cosignature over the
/// same text, e.g. by another node).
pub fn cosign(signed_note: &str, name: &str, key: &SigningKey) -> Result<String, CheckpointError> {
    let (text, _) = note::parse(signed_note)?;
    Ok(format!(
        "{signed_note}{}",
        note::signature_line(text, name, key)
    ))
}

/// Parses the text of a checkpoint (the signed body), strictly.
pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
    let body = text
        .strip_suffix('\n')
        .ok_or(CheckpointError::LineCount(0))?;
    let lines: Vec<&str> = body.split('\n').collect();
    let [origin, size, root, head, time] = lines[..] else {
        return Err(CheckpointError::LineCount(lines.len()));
    };
    if origin.is_empty() {
        return Err(CheckpointError::EmptyOrigin);
    }
    let size = crate::parse_canonical_u64(size).ok_or(CheckpointError::Size)?;
    let root: Hash = BASE64
        .decode(root)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(CheckpointError::Root)?;
    let head_hash = head
        .strip_prefix("head ")
        .and_then(|hex| crate::hash_from_hex(hex).ok())
        .ok_or(CheckpointError::Head)?;
    let time_ms = time
        .strip_prefix("time ")
        .and_then(crate::parse_canonical_i64)
        .ok_or(CheckpointError::Time)?;
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
        head_hash,
        time_ms,
    };
    // One text per checkpoint: anything that does not re-encode to the same
    // bytes (e.g. a non-canonical base64 form) is refused.
    if body_text(&cp) != text {
        return Err(CheckpointError::Root);
    }
    Ok(cp)
}

/// Parses a signed checkpoint note and verifies that at least one signature
/// line verifies with one of `keys` (name, public key), and that every
/// signature of a known key verifies. Signatures of unknown keys are ignored
/// (C2SP signed-note: cosigners). Returns the checkpoint and the names of
/// the keys that signed it.
pub fn verify(
    note: &str,
    keys: &[(String, [u8; 32])],
) -> Result<(Checkpoint, Vec<String>), CheckpointError> {
    let (text, signers) = note::verify(note, keys)?;
    let cp = parse_body(text)?;
    Ok((cp, signers))
}
