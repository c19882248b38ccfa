//! [`Deferred`]: the index runs and trust day counts applies keep in memory instead of writing
//! them to sled on every apply.
//!
//! An apply of single reports used to rewrite, per event and on every node, the index runs of
//! the event's two indexes and the agent's day counts: about three sled inserts of the 3.6 an
//! event cost, each a copy of a sled leaf (docs/PERFORMANCE.md). Now an apply writes an index
//! run to sled only once it is full ([`crate::RUN_EXTEND_ENTRIES_MAX`] entries or more, never
//! written again), and keeps the partial runs and the day counts it changed here, where reads
//! find them ([`crate::Ledger`] merges them over sled's). They are written to sled all at once
//! (a *write-through*) before a snapshot copy begins, when they hold more than
//! [`DEFERRED_BYTES_MAX`], at clean shutdown, and when the last handle is dropped; each
//! write-through ends with the meta value `written_through` = `last_applied`.
//!
//! Invariants:
//! - Only the state-machine worker changes it, in an apply (before the apply's `last_applied`
//!   is written, so readers that check [`crate::Ledger::quiet_since`] see it change with the
//!   apply) or between applies (a write-through changes no value readers see).
//! - A run or a day count here is never older than sled's: sled gets them only from here. Both
//!   are prefixes of the same append-only history (an index's runs are append-only, a day's
//!   counts only grow), so a reader that finds a run or a day in both takes the longer run or
//!   the larger counts, whatever it read first; a snapshot install (a later state of the same
//!   log) keeps this true until the install empties it.
//! - A store whose `written_through` is not its `last_applied` may lack runs and day counts
//!   that were only here (a crash): at open it is restored from its snapshot file, or emptied
//!   without one, and openraft applies the log again (`StateMachineStore::open`).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;

use crate::StoreError;
use crate::codec;

/// The most memory, in bytes (estimated), the deferred runs and day counts may hold; an apply
/// that leaves more writes them all through to sled. About 400 bytes per agent active since
/// the last write-through (a partial run of each of its two indexes and a day count), so
/// 32 MiB covers about 80,000 agents.
pub const DEFERRED_BYTES_MAX: usize = 32 << 20;

/// A map entry's own cost beyond its key and value, in bytes (estimated).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Shared handle (the ledger's clones share one).
#[derive(Clone, Default)]
pub(crate) struct Deferred {
    state: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    /// By index prefix ([`codec::IndexScope::prefix`]): the index's last run, if not in sled
    /// as it is here (its first ordinal and entries).
    runs: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    /// By trust key ([`codec::trust_key`]): the day's counts, if not in sled as they are here.
    trust: BTreeMap<Vec<u8>, [u64; 4]>,
    bytes: usize,
}

/// What one apply changed: partial runs to keep, full runs it wrote to sled, day counts.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) partial_runs: Vec<(Vec<u8>, u64, Vec<u8>)>,
    /// Prefix and first ordinal of each run the apply wrote to sled whole.
    pub(crate) written_runs: Vec<(Vec<u8>, u64)>,
    pub(crate) trust: Vec<(Vec<u8>, [u64; 4])>,
}

impl Deferred {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The last run of the index with this prefix, if held here.
    pub(crate) fn run(&self, prefix: &[u8]) -> Option<(u64, Vec<u8>)> {
        self.read().runs.get(prefix).cloned()
    }

    /// The day counts under this trust key, if held here.
    pub(crate) fn trust(&self, key: &[u8]) -> Option<[u64; 4]> {
        self.read().trust.get(key).copied()
    }

    /// The day counts held here with keys in `from..=to`.
    pub(crate) fn trust_range(&self, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, [u64; 4])> {
        if from > to {
            return Vec::new();
        }
        self.read()
            .trust
            .range(from.to_vec()..=to.to_vec())
            .map(|(key, counts)| (key.clone(), *counts))
            .collect()
    }

    /// Every trust key held here.
    pub(crate) fn trust_keys(&self) -> Vec<Vec<u8>> {
        self.read().trust.keys().cloned().collect()
    }

    /// Bytes held (estimated).
    pub(crate) fn bytes(&self) -> usize {
        self.read().bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        let state = self.read();
        state.runs.is_empty() && state.trust.is_empty()
    }

    /// Takes in what an apply changed; returns the bytes now held.
    pub(crate) fn publish(&self, changes: Changes) -> usize {
        let mut state = self.write();
        for (prefix, first) in changes.written_runs {
            if state.runs.get(&prefix).is_some_and(|(f, _)| *f == first)
                && let Some((_, run)) = state.runs.remove(&prefix)
            {
                state.bytes -= ENTRY_OVERHEAD_BYTES + prefix.len() + run.len();
            }
        }
        for (prefix, first, run) in changes.partial_runs {
            let size = ENTRY_OVERHEAD_BYTES + prefix.len();
            state.bytes += size + run.len();
            if let Some((_, old)) = state.runs.insert(prefix, (first, run)) {
                state.bytes -= size + old.len();
            }
        }
        for (key, counts) in changes.trust {
            let size = ENTRY_OVERHEAD_BYTES + key.len() + 32;
            if state.trust.insert(key, counts).is_none() {
                state.bytes += size;
            }
        }
        state.bytes
    }

    /// Everything held, as sled writes (keys tagged with their space).
    pub(crate) fn writes(&self) -> Vec<(Vec<u8>, sled::IVec)> {
        let state = self.read();
        let mut writes = Vec::with_capacity(state.runs.len() + state.trust.len());
        for (prefix, (first, run)) in &state.runs {
            let mut key = prefix.clone();
            key.extend_from_slice(&first.to_be_bytes());
            crate::apply::put(&mut writes, crate::apply::T_IDX, key, run.as_slice());
        }
        for (key, counts) in &state.trust {
            crate::apply::put(
                &mut writes,
                crate::apply::T_TRUST,
                key,
                &codec::trust_value(counts),
            );
        }
        writes
    }

    /// Forgets everything held: after [`Deferred::writes`] went to sled, or when the whole
    /// state is replaced.
    pub(crate) fn clear(&self) {
        let mut state = self.write();
        state.runs.clear();
        state.trust.clear();
        state.bytes = 0;
    }
}

/// Of two copies of an index's last run read at different moments (first ordinal, entries),
/// the later: the one that reaches further.
pub(crate) fn later_run<R: AsRef<[u8]>>(
    a: Option<(u64, R)>,
    b: Option<(u64, R)>,
) -> Result<Option<(u64, R)>, StoreError> {
    Ok(match (a, b) {
        (None, other) | (other, None) => other,
        (Some(a), Some(b)) => {
            let end_a = a.0 + codec::index_run_len(a.1.as_ref())?;
            let end_b = b.0 + codec::index_run_len(b.1.as_ref())?;
            if end_b > end_a { Some(b) } else { Some(a) }
        }
    })
}

/// Of two copies of a day's counts read at different moments, the later (counts only grow).
pub(crate) fn later_counts(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut out = a;
    for (slot, other) in out.iter_mut().zip(b) {
        *slot = (*slot).max(other);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(entries: &[u64]) -> Vec<u8> {
        let mut run = Vec::new();
        for seq in entries {
            codec::push_index_entry(&mut run, *seq, 0);
        }
        run
    }

    #[test]
    fn the_later_run_is_the_one_that_reaches_further() {
        let short = (16, run(&[1, 2]));
        let long = (16, run(&[1, 2, 3]));
        let next = (32, run(&[9]));
        let pick = |a: Option<(u64, Vec<u8>)>, b| later_run(a, b).expect("runs").map(|r| r.0);
        assert_eq!(
            later_run(Some(short.clone()), Some(long.clone())).expect("runs"),
            Some(long.clone())
        );
        assert_eq!(
            later_run(Some(long.clone()), Some(short.clone())).expect("runs"),
            Some(long.clone())
        );
        assert_eq!(pick(Some(long.clone()), Some(next.clone())), Some(32));
        assert_eq!(pick(None, Some(next.clone())), Some(32));
        assert_eq!(pick(Some(short), None), Some(16));
        assert_eq!(later_counts([1, 5, 0, 2], [3, 4, 0, 2]), [3, 5, 0, 2]);
    }

    #[test]
    fn publish_keeps_partial_runs_and_drops_those_written_whole() {
        let deferred = Deferred::default();
        let bytes = deferred.publish(Changes {
            partial_runs: vec![(b"a1\0".to_vec(), 0, run(&[1, 2]))],
            written_runs: vec![],
            trust: vec![(b"k".to_vec(), [1, 0, 0, 0])],
        });
        assert!(bytes > 0);
        assert_eq!(deferred.run(b"a1\0"), Some((0, run(&[1, 2]))));
        // A run written whole under another first ordinal leaves the held one alone.
        deferred.publish(Changes {
            written_runs: vec![(b"a1\0".to_vec(), 16)],
            ..Changes::default()
        });
        assert!(deferred.run(b"a1\0").is_some());
        let bytes = deferred.publish(Changes {
            written_runs: vec![(b"a1\0".to_vec(), 0)],
            ..Changes::default()
        });
        assert_eq!(deferred.run(b"a1\0"), None);
        assert_eq!(bytes, ENTRY_OVERHEAD_BYTES + 1 + 32);
        assert_eq!(deferred.writes().len(), 1);
        assert!(!deferred.is_empty());
        deferred.clear();
        assert!(deferred.is_empty());
        assert!(deferred.writes().is_empty());
    }
}
