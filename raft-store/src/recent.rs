//! [`Recent`]: the newest entries of the Raft log, kept decoded in memory.
//!
//! An entry is read back soon after it is appended, several times: a leader's replication reads
//! it once per follower, and every node's state machine reads it to apply it. From the segment
//! files each read is a `pread` and a decode; from here it is a clone. The files stay the record:
//! this holds a copy of the log's tail, consecutive entries only, and a read it cannot answer
//! whole goes to the files.
//!
//! Invariants: the entries held are consecutive and each equals the log's entry of its index;
//! a truncation removes what it removes from the log here first, and an append that does not
//! continue what is held starts afresh.

use std::collections::VecDeque;

use crate::types::Entry;

/// Entries held at most.
pub const RECENT_ENTRIES_MAX: usize = 64;

/// Bytes of encoded entries held at most (the newest entry is held whatever its size).
pub const RECENT_BYTES_MAX: usize = 8 << 20;

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Recent {
    /// Consecutive entries, with each one's encoded size in bytes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn end_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index + 1)
    }

    /// Holds `entry` (of `bytes` encoded), appended to the log after what is held (otherwise
    /// what is held goes first), and lets the oldest go past the limits.
    pub(crate) fn push(&mut self, entry: Entry, bytes: usize) {
        if self
            .end_index()
            .is_some_and(|end| end != entry.log_id.index)
        {
            self.clear();
        }
        self.bytes += bytes;
        self.entries.push_back((entry, bytes));
        while self.entries.len() > RECENT_ENTRIES_MAX
            || (self.bytes > RECENT_BYTES_MAX && self.entries.len() > 1)
        {
            if let Some((_, gone)) = self.entries.pop_front() {
                self.bytes -= gone;
            }
        }
    }

    /// Removes the entries from `index` on (the log is truncated there).
    pub(crate) fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _)| entry.log_id.index >= index)
        {
            if let Some((_, gone)) = self.entries.pop_back() {
                self.bytes -= gone;
            }
        }
    }

    /// Removes the entries up to `index`, included (the log is purged there).
    pub(crate) fn forget_upto(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(entry, _)| entry.log_id.index <= index)
        {
            if let Some((_, gone)) = self.entries.pop_front() {
                self.bytes -= gone;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries of `[start, end)`, if all of them are held, as many as fit in `bytes_max`
    /// (at least the first); `end` past the log's end means up to the log's end, which the
    /// caller says is `log_end`. `None`: read the files.
    pub(crate) fn get(
        &self,
        start: u64,
        end: u64,
        log_end: u64,
        bytes_max: usize,
    ) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let held_end = self.end_index()?;
        let end = end.min(log_end);
        // Only the log's tail: anything past what is held must not exist in the log.
        if start < first || end > held_end || held_end != log_end || start >= end {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let count = usize::try_from(end - start).ok()?;
        let mut taken = Vec::with_capacity(count);
        let mut bytes = 0;
        for (entry, size) in self.entries.iter().skip(skip).take(count) {
            if !taken.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            taken.push(entry.clone());
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn reads_only_what_it_holds_of_the_tail() {
        let mut recent = Recent::default();
        for index in 5..10 {
            recent.push(entry(index), 10);
        }
        assert_eq!(
            indexes(recent.get(5, 10, 10, 1000)),
            Some(vec![5, 6, 7, 8, 9])
        );
        assert_eq!(
            indexes(recent.get(7, u64::MAX, 10, 1000)),
            Some(vec![7, 8, 9])
        );
        // Before what is held, or a log that goes on past it: the files.
        assert_eq!(indexes(recent.get(4, 10, 10, 1000)), None);
        assert_eq!(indexes(recent.get(6, 8, 11, 1000)), None);
        // An empty range: the files say so.
        assert_eq!(indexes(recent.get(10, 12, 10, 1000)), None);
        // The byte limit, and at least one entry.
        assert_eq!(indexes(recent.get(5, 10, 10, 25)), Some(vec![5, 6]));
        assert_eq!(indexes(recent.get(5, 10, 10, 1)), Some(vec![5]));
    }

    #[test]
    fn truncation_and_gaps_remove_what_the_log_no_longer_holds() {
        let mut recent = Recent::default();
        for index in 1..6 {
            recent.push(entry(index), 10);
        }
        recent.truncate(4);
        assert_eq!(indexes(recent.get(1, 10, 4, 1000)), Some(vec![1, 2, 3]));
        assert_eq!(recent.bytes, 30);
        // An append that does not continue what is held starts afresh.
        recent.push(entry(9), 10);
        assert_eq!(indexes(recent.get(1, 10, 10, 1000)), None);
        assert_eq!(indexes(recent.get(9, 10, 10, 1000)), Some(vec![9]));
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn holds_at_most_its_limits() {
        let mut recent = Recent::default();
        for index in 0..(RECENT_ENTRIES_MAX as u64 + 1) {
            recent.push(entry(index), 1);
        }
        assert_eq!(recent.entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(recent.first_index(), Some(1));
        recent.push(entry(RECENT_ENTRIES_MAX as u64 + 1), RECENT_BYTES_MAX);
        // Past the byte limit the oldest go, but the newest stays whatever its size.
        assert_eq!(recent.entries.len(), 1);
        recent.push(entry(RECENT_ENTRIES_MAX as u64 + 2), RECENT_BYTES_MAX + 1);
        assert_eq!(recent.entries.len(), 1);
        assert_eq!(recent.bytes, RECENT_BYTES_MAX + 1);
    }
}
