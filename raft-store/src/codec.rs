//! Byte encodings for sled keys and values.
//!
//! Integer keys are big-endian so that sled's byte order is numeric order. Values are postcard.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn u64_from_key(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "key of {} bytes where 8 were expected",
            bytes.len()
        ))
    })?;
    Ok(u64::from_be_bytes(array))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard cannot fail to encode our types into a Vec: they hold no maps with non-string
    // keys and no unsupported serde features.
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(error) => panic!("postcard encoding of a ledger type failed: {error}"),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|error| StoreError::Corrupt(format!("cannot decode {what}: {error}")))
}

/// Key of the per-agent index: `asn || 0x00 || ordinal` where `ordinal` counts that agent's
/// events from 0. ASNs never contain a NUL byte (the API checks), so prefixes never collide.
pub fn agent_index_key(asn: &str, ordinal: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(asn.len() + 9);
    key.extend_from_slice(asn.as_bytes());
    key.push(0);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key
}
