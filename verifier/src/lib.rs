//! Verification of the asn-ledger: the single source of truth for every byte
//! that the ledger hashes or signs, and the checks a third party runs on them.
//!
//! `docs/VERIFYING.md` at the repository root specifies the same rules in
//! prose, for implementations in other languages; the golden vectors in
//! `verifier/tests/vectors/` pin them down.
//!
//! The layers, from the bottom up:
//!
//! 1. [`canonical`]: RFC 8785 (JCS) canonical JSON, used for an event's
//!    `metadata` object.
//! 2. [`event`]: the canonical, versioned, domain-separated byte encoding `E`
//!    of an event (`asn-ledger/event/v1`), its chain hash `SHA-256(E)` and its
//!    Merkle leaf hash `SHA-256(0x00 || E)`. Each event names the hash of the
//!    event before it (`prev_hash`) and of the same agent's previous event
//!    (`agent_prev_hash`): two hash chains.
//! 3. [`merkle`]: the RFC 6962 / RFC 9162 Merkle tree over all events (leaf
//!    `n - 1` is the event of `seq` `n`): tree heads, inclusion and
//!    consistency proofs computed from stored complete subtrees, and their
//!    verification.
//! 4. [`note`] and [`checkpoint`]: the signed tree head, a C2SP
//!    `tlog-checkpoint` (origin, size, root, plus the chain head hash and the
//!    time of the last event) inside a C2SP `signed-note` signed with Ed25519.
//! 5. [`proof`]: the JSON forms of inclusion and consistency proofs, and a
//!    receipt check (event + inclusion proof + signed checkpoint).
//! 6. [`trust`]: the trust score, an integer function of an agent's events
//!    and of the time of the ledger position it is computed at.
//!
//! Nothing here does I/O, reads a clock or draws randomness: every function
//! is deterministic, and every parser rejects malformed input with a typed
//! error.

#![forbid(unsafe_code)]

pub mod canonical;
pub mod checkpoint;
pub mod event;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod trust;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The all-zero hash: `prev_hash` of the first event, `agent_prev_hash` of
/// an agent's first event.
pub const ZERO_HASH: Hash = [0u8; 32];

/// A malformed hexadecimal hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("expected {expected} lowercase hex characters, got {got} characters")]
    Length { expected: usize, got: usize },
    #[error("invalid character at position {0} (only 0-9 and a-f are allowed)")]
    Character(usize),
}

/// Lowercase hexadecimal form of a hash (64 characters).
pub fn hash_to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// Parses exactly 64 lowercase hexadecimal characters.
pub fn hash_from_hex(text: &str) -> Result<Hash, HexError> {
    let mut out = [0u8; 32];
    decode_lower_hex(text, &mut out)?;
    Ok(out)
}

/// Parses exactly `2 * out.len()` lowercase hexadecimal characters into `out`.
pub fn decode_lower_hex(text: &str, out: &mut [u8]) -> Result<(), HexError> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return Err(HexError::Length {
            expected: out.len() * 2,
            got: bytes.len(),
        });
    }
    for (i, chunk) in bytes.chunks_exact(2).enumerate() {
        let hi = nibble(chunk[0]).ok_or(HexError::Character(2 * i))?;
        let lo = nibble(chunk[1]).ok_or(HexError::Character(2 * i + 1))?;
        out[i] = (hi << 4) | lo;
    }
    Ok(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Parses an unsigned decimal integer in its one canonical form: ASCII
/// digits, no sign, no leading zero (except `0` itself).
pub(crate) fn parse_canonical_u64(text: &str) -> Option<u64> {
    let value: u64 = text.parse().ok()?;
    (value.to_string() == text).then_some(value)
}

/// Parses a signed decimal integer in its one canonical form: an optional
/// `-`, ASCII digits, no leading zero, no `-0`, no `+`.
pub(crate) fn parse_canonical_i64(text: &str) -> Option<i64> {
    let value: i64 = text.parse().ok()?;
    (value.to_string() == text).then_some(value)
}
