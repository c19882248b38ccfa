//! API keys: `asn_live_` + 16 hex characters of public key id + 48 hex characters of secret.
//!
//! Only the SHA-256 of the whole key is stored (replicated in the state machine). A key is
//! looked up by its id and its hash compared in constant time; unknown, wrong and revoked keys
//! get the same 401.

use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header;
use raft_store::ApiKeyRecord;
use raft_store::Hash;
use raft_store::Permission;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::ApiError;
use crate::Backend;

pub const KEY_PREFIX: &str = "asn_live_";
const KEY_ID_HEX_CHARS: usize = 16;
const KEY_SECRET_HEX_CHARS: usize = 48;
const KEY_CHARS: usize = KEY_PREFIX.len() + KEY_ID_HEX_CHARS + KEY_SECRET_HEX_CHARS;

/// Makes a key from random bytes; returns `(key id, whole key)`.
pub fn generate_key(id_bytes: [u8; 8], secret_bytes: [u8; 24]) -> (String, String) {
    let id = hex::encode(id_bytes);
    let key = format!("{KEY_PREFIX}{id}{}", hex::encode(secret_bytes));
    (id, key)
}

pub fn hash_secret(key: &str) -> Hash {
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// The key id of a well-formed key.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let well_formed = key.len() == KEY_CHARS
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then(|| &rest[..KEY_ID_HEX_CHARS])
}

/// The key presented in `Authorization: Bearer …`, as this node knows it now, if any. A
/// present but unusable header is an error (401); an absent one is `None`.
///
/// This node's state may lag the leader's: reads call it after their read barrier; writes use
/// [`authenticate`], which checks again after a barrier when the key is unknown here.
///
/// A valid key is charged one request against its rate limit (429 when over budget).
pub fn authenticate_local(
    backend: &impl Backend,
    headers: &HeaderMap,
) -> Result<Option<ApiKeyRecord>, ApiError> {
    let ledger = backend.ledger();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    let id = key_id(token).ok_or_else(ApiError::unauthorized)?;
    let record = ledger.api_key(id)?.ok_or_else(ApiError::unauthorized)?;
    let presented = hash_secret(token);
    let matches: bool = presented.ct_eq(&record.secret_sha256).into();
    if !matches || record.revoked {
        return Err(ApiError::unauthorized());
    }
    tracing::Span::current().record("key_id", id);
    if let Err(error) = backend.protection().charge_key(id) {
        backend.http_metrics().rejected("rate_limited");
        return Err(error);
    }
    Ok(Some(record))
}

/// The presented key, for a write. A key this node does not know (yet), or knows as revoked,
/// is looked up again after a read barrier, so a key created a moment ago through another node
/// works at once. A key found valid here may have been revoked since: the state machine checks
/// again when the command is applied. (A key's permissions never change, only its revocation.)
pub async fn authenticate(
    backend: &impl Backend,
    headers: &HeaderMap,
) -> Result<Option<ApiKeyRecord>, ApiError> {
    match authenticate_local(backend, headers) {
        Err(error) if error.status == StatusCode::UNAUTHORIZED => {
            backend.linearize().await?;
            authenticate_local(backend, headers)
        }
        result => result,
    }
}

/// A valid key is required (for a write).
pub async fn require_key(
    backend: &impl Backend,
    headers: &HeaderMap,
) -> Result<ApiKeyRecord, ApiError> {
    authenticate(backend, headers)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// A valid admin key is required (for a write).
pub async fn require_admin(
    backend: &impl Backend,
    headers: &HeaderMap,
) -> Result<ApiKeyRecord, ApiError> {
    let key = require_key(backend, headers).await?;
    admin_only(key)
}

pub fn admin_only(key: ApiKeyRecord) -> Result<ApiKeyRecord, ApiError> {
    if !key.permissions.contains(&Permission::Admin) {
        return Err(ApiError::forbidden(
            "Authorization: this key lacks the admin permission",
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format() {
        let (id, key) = generate_key([0xab; 8], [0x01; 24]);
        assert_eq!(key.len(), KEY_CHARS);
        assert_eq!(key_id(&key), Some(id.as_str()));
        assert_eq!(key_id(&key[..KEY_CHARS - 1]), None);
        assert_eq!(key_id(&key.to_uppercase()), None);
        assert_eq!(key_id(&format!("{key}0")), None);
    }
}
