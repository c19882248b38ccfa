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

/// Which events an index lists: all of an agent's, or those of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexScope<'a> {
    Agent(&'a str),
    AgentType(&'a str, &'a str),
}

impl IndexScope<'_> {
    /// The prefix of this index's keys: `a asn 0x00` or `t asn 0x00 type 0x00`. ASNs and event types never contain a NUL byte
    /// (the API refuses control characters), so no prefix is a prefix of another scope's.
    pub fn prefix(&self) -> Vec<u8> {
        match self {
            Self::Agent(asn) => {
                let mut key = Vec::with_capacity(asn.len() + 2);
                key.push(b'a');
                key.extend_from_slice(asn.as_bytes());
                key.push(0);
                key
            }
            Self::AgentType(asn, event_type) => {
                let mut key = Vec::with_capacity(asn.len() + event_type.len() + 3);
                key.push(b't');
                key.extend_from_slice(asn.as_bytes());
                key.push(0);
                key.extend_from_slice(event_type.as_bytes());
                key.push(0);
                key
            }
        }
    }

    /// Key of the run that starts at the `ordinal`-th event (from 0, in ledger order) of this
    /// scope.
    pub fn key(&self, ordinal: u64) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&ordinal.to_be_bytes());
        key
    }
}

/// Bytes of one index entry: the event's seq and created_at (2 × 8 BE), so that date bounds
/// are found by binary search over ordinals without reading events.
pub const INDEX_ENTRY_BYTES: usize = 16;

/// Appends an index entry to a run (the value of an `sm_idx` key: consecutive entries).
pub fn push_index_entry(run: &mut Vec<u8>, seq: u64, created_at_ms: i64) {
    run.extend_from_slice(&seq.to_be_bytes());
    run.extend_from_slice(&created_at_ms.to_be_bytes());
}

/// How many entries a run holds.
pub fn index_run_len(run: &[u8]) -> Result<u64, StoreError> {
    if run.is_empty() || !run.len().is_multiple_of(INDEX_ENTRY_BYTES) {
        return Err(StoreError::Corrupt(format!(
            "index run of {} bytes, not a positive multiple of {INDEX_ENTRY_BYTES}",
            run.len()
        )));
    }
    Ok((run.len() / INDEX_ENTRY_BYTES) as u64)
}

/// The `offset`-th entry of a run: (seq, created_at).
pub fn index_run_entry(run: &[u8], offset: u64) -> Result<(u64, i64), StoreError> {
    let start = usize::try_from(offset)
        .ok()
        .and_then(|o| o.checked_mul(INDEX_ENTRY_BYTES))
        .filter(|start| start + INDEX_ENTRY_BYTES <= run.len())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "index run of {} bytes has no entry {offset}",
                run.len()
            ))
        })?;
    let mut seq = [0u8; 8];
    let mut time = [0u8; 8];
    seq.copy_from_slice(&run[start..start + 8]);
    time.copy_from_slice(&run[start + 8..start + INDEX_ENTRY_BYTES]);
    Ok((u64::from_be_bytes(seq), i64::from_be_bytes(time)))
}

/// The ordinal a run key starts at (its last 8 bytes).
pub fn run_first_ordinal(key: &[u8]) -> Result<u64, StoreError> {
    let tail = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| StoreError::Corrupt(format!("index key of {} bytes", key.len())))?;
    u64_from_key(&key[tail..])
}

/// Encodes consecutive encoded events as one `sm_events` value (a chunk):
/// `count (u32 BE) || end offset of each event (count × u32 BE) || the events`.
pub fn encode_event_chunk<'a>(events: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let count = events.len();
    let mut offsets = Vec::with_capacity(4 + 4 * count);
    let mut body = Vec::new();
    offsets.extend_from_slice(&(count as u32).to_be_bytes());
    for event in events {
        body.extend_from_slice(event);
        offsets.extend_from_slice(&(body.len() as u32).to_be_bytes());
    }
    offsets.extend_from_slice(&body);
    offsets
}

/// A chunk's events, as byte slices, in order.
pub fn event_chunk(chunk: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let bad = || StoreError::Corrupt(format!("event chunk of {} bytes is malformed", chunk.len()));
    let read_u32 = |at: usize| -> Result<usize, StoreError> {
        let bytes: [u8; 4] = chunk
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(u32::from_be_bytes(bytes) as usize)
    };
    let count = read_u32(0)?;
    let body = 4usize
        .checked_add(count.checked_mul(4).ok_or_else(bad)?)
        .filter(|body| *body <= chunk.len())
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity(count);
    let mut start = body;
    for i in 0..count {
        let end = body.checked_add(read_u32(4 + 4 * i)?).ok_or_else(bad)?;
        out.push(chunk.get(start..end).ok_or_else(bad)?);
        start = end;
    }
    if count == 0 || start != chunk.len() {
        return Err(bad());
    }
    Ok(out)
}

/// Key of an agent's day in `sm_trust`: `asn 0x00 day`, the day (UTC days since 1970, an i64)
/// big-endian with its sign bit flipped so that byte order is numeric order.
pub fn trust_key(asn: &str, day: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(asn.len() + 9);
    key.extend_from_slice(asn.as_bytes());
    key.push(0);
    key.extend_from_slice(&((day as u64) ^ (1 << 63)).to_be_bytes());
    key
}

/// The day of a `sm_trust` key.
pub fn trust_day_from_key(key: &[u8]) -> Result<i64, StoreError> {
    let tail = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| StoreError::Corrupt(format!("trust key of {} bytes", key.len())))?;
    Ok((u64_from_key(&key[tail..])? ^ (1 << 63)) as i64)
}

/// Value of a `sm_trust` entry: the day's event counts by severity code, 4 × u64 BE.
pub fn trust_value(counts: &[u64; 4]) -> [u8; 32] {
    let mut value = [0u8; 32];
    for (slot, count) in value.chunks_exact_mut(8).zip(counts) {
        slot.copy_from_slice(&count.to_be_bytes());
    }
    value
}

pub fn parse_trust_value(bytes: &[u8]) -> Result<[u64; 4], StoreError> {
    if bytes.len() != 32 {
        return Err(StoreError::Corrupt(format!(
            "trust value of {} bytes where 32 were expected",
            bytes.len()
        )));
    }
    let mut counts = [0u64; 4];
    for (count, chunk) in counts.iter_mut().zip(bytes.chunks_exact(8)) {
        *count = u64_from_key(chunk)?;
    }
    Ok(counts)
}
