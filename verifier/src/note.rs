//! C2SP `signed-note` (c2sp.org/signed-note) with Ed25519 signatures.
//!
//! A note is a text ending in a newline, a blank line, and one or more
//! signature lines `— <key name> <base64(key id || signature)>\n`, where `—`
//! is U+2014. The key id of an Ed25519 key is the first four bytes of
//! `SHA-256(key name || 0x0A || 0x01 || public key)`; the signature is
//! Ed25519 (RFC 8032) over the text, final newline included.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type identifier byte of Ed25519 in signed notes.
pub const ED25519_TYPE: u8 = 0x01;
/// The longest note accepted, in bytes.
pub const NOTE_BYTES_MAX: usize = 1 << 20;
/// The most signature lines accepted in one note.
pub const SIGNATURES_MAX: usize = 100;
/// The start of every signature line: em dash, space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is larger than {NOTE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("note contains a control character other than newline at byte {0}")]
    ControlCharacter(usize),
    #[error("note has no blank line separating its text from its signatures")]
    NoSignatureBlock,
    #[error("note text is empty")]
    EmptyText,
    #[error("note has no signature line")]
    NoSignature,
    #[error("note has more than {SIGNATURES_MAX} signatures")]
    TooManySignatures,
    #[error("note does not end with a newline")]
    MissingFinalNewline,
    #[error("signature line {0} is malformed")]
    MalformedSignatureLine(usize),
    #[error("key name {0:?} is invalid (empty, or contains a space or '+')")]
    InvalidKeyName(String),
    #[error("signature line {0} has invalid base64")]
    Base64(usize),
    #[error("signature line {0} is repeated")]
    DuplicateSignature(usize),
    #[error("public key of {0:?} is not a valid Ed25519 key")]
    InvalidPublicKey(String),
    #[error("signature by known key {0:?} does not verify")]
    BadSignature(String),
    #[error("key {0:?} is known, but not with the key id of its signature")]
    UnknownKeyId(String),
    #[error("no signature by a known key")]
    NoKnownSignature,
    #[error("verifier key is malformed")]
    MalformedVerifierKey,
}

/// One parsed signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// Note key id of an Ed25519 key: `SHA-256(name || 0x0A || 0x01 || key)[..4]`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0x0a, ED25519_TYPE]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Whether `name` may name a key: non-empty, no Unicode space, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The signature line `— <name> <base64(key id || Ed25519(text))>\n`.
/// `text` is signed as given; it must be a valid note text (ending in a
/// newline, no control characters but newlines) and `name` a valid key name
/// for the result to verify.
pub fn signature_line(text: &str, name: &str, key: &SigningKey) -> String {
    let public = key.verifying_key().to_bytes();
    let signature = key.sign(text.as_bytes()).to_bytes();
    let mut blob = Vec::with_capacity(4 + signature.len());
    blob.extend_from_slice(&key_id(name, &public));
    blob.extend_from_slice(&signature);
    format!("{SIGNATURE_PREFIX}{name} {}\n", BASE64.encode(blob))
}

/// A note of `text` signed by one key: text, blank line, signature line.
pub fn sign(text: &str, name: &str, key: &SigningKey) -> String {
    format!("{text}\n{}", signature_line(text, name, key))
}

/// Splits a note into its text (final newline included) and its signature
/// lines, checking the syntax only.
pub fn parse(note: &str) -> Result<(&str, Vec<NoteSignature>), NoteError> {
    if note.len() > NOTE_BYTES_MAX {
        return Err(NoteError::TooLarge);
    }
    if let Some(at) = note.bytes().position(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::ControlCharacter(at));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
    let text = &note[..split + 1];
    if text == "\n" {
        return Err(NoteError::EmptyText);
    }
    let block = &note[split + 2..];
    if block.is_empty() {
        return Err(NoteError::NoSignature);
    }
    let block = block
        .strip_suffix('\n')
        .ok_or(NoteError::MissingFinalNewline)?;
    let mut signatures: Vec<NoteSignature> = Vec::new();
    for (i, line) in block.split('\n').enumerate() {
        if i >= SIGNATURES_MAX {
            return Err(NoteError::TooManySignatures);
        }
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::MalformedSignatureLine(i))?;
        let (name, encoded) = rest
            .split_once(' ')
            .ok_or(NoteError::MalformedSignatureLine(i))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_owned()));
        }
        let blob = BASE64.decode(encoded).map_err(|_| NoteError::Base64(i))?;
        if blob.len() < 5 {
            return Err(NoteError::MalformedSignatureLine(i));
        }
        let key_id = [blob[0], blob[1], blob[2], blob[3]];
        if signatures
            .iter()
            .any(|s| s.name == name && s.key_id == key_id)
        {
            return Err(NoteError::DuplicateSignature(i));
        }
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id,
            signature: blob[4..].to_vec(),
        });
    }
    Ok((text, signatures))
}

/// Parses a note and verifies its signatures against `keys` (key name,
/// Ed25519 public key). Per the spec, signatures whose (name, key id) is not
/// among `keys` are ignored; every signature of a known key must verify; at
/// least one must. Returns the text and the names of the keys that signed,
/// in the order of their signature lines.
pub fn verify<'n>(
    note: &'n str,
    keys: &[(String, [u8; 32])],
) -> Result<(&'n str, Vec<String>), NoteError> {
    let (text, signatures) = parse(note)?;
    let mut signers: Vec<String> = Vec::new();
    let mut known_name_unknown_id: Option<String> = None;
    for sig in &signatures {
        let mut matched = false;
        let mut verified = false;
        for (name, public) in keys {
            if *name != sig.name || key_id(name, public) != sig.key_id {
                continue;
            }
            matched = true;
            let key = VerifyingKey::from_bytes(public)
                .map_err(|_| NoteError::InvalidPublicKey(name.clone()))?;
            let Ok(signature) = Signature::from_slice(&sig.signature) else {
                continue;
            };
            if key.verify_strict(text.as_bytes(), &signature).is_ok() {
                verified = true;
                break;
            }
        }
        if matched && !verified {
            return Err(NoteError::BadSignature(sig.name.clone()));
        }
        if verified {
            if !signers.contains(&sig.name) {
                signers.push(sig.name.clone());
            }
        } else if keys.iter().any(|(name, _)| *name == sig.name) {
            known_name_unknown_id.get_or_insert_with(|| sig.name.clone());
        }
    }
    if signers.is_empty() {
        return Err(match known_name_unknown_id {
            Some(name) => NoteError::UnknownKeyId(name),
            None => NoteError::NoKnownSignature,
        });
    }
    Ok((text, signers))
}

/// The C2SP verifier key text of an Ed25519 key:
/// `<name>+<hex key id>+<base64(0x01 || public key)>`.
pub fn vkey(name: &str, public_key: &[u8; 32]) -> String {
    let mut blob = Vec::with_capacity(33);
    blob.push(ED25519_TYPE);
    blob.extend_from_slice(public_key);
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, public_key)),
        BASE64.encode(blob)
    )
}

/// Parses an Ed25519 verifier key, checking that its key id matches.
pub fn parse_vkey(text: &str) -> Result<(String, [u8; 32]), NoteError> {
    let mut parts = text.split('+');
    let (Some(name), Some(id_hex), Some(key_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NoteError::MalformedVerifierKey);
    };
    if !is_valid_key_name(name) {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    let mut id = [0u8; 4];
    crate::decode_lower_hex(id_hex, &mut id).map_err(|_| NoteError::MalformedVerifierKey)?;
    let blob = BASE64
        .decode(key_b64)
        .map_err(|_| NoteError::MalformedVerifierKey)?;
    let Some((&ED25519_TYPE, rest)) = blob.split_first() else {
        return Err(NoteError::MalformedVerifierKey);
    };
    let public = <[u8; 32]>::try_from(rest).map_err(|_| NoteError::MalformedVerifierKey)?;
    if key_id(name, &public) != id {
        return Err(NoteError::MalformedVerifierKey);
    }
    VerifyingKey::from_bytes(&public).map_err(|_| NoteError::InvalidPublicKey(name.to_owned()))?;
    Ok((name.to_owned(), public))
}
