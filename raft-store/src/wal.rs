//! The Raft log's files: segments of checksummed records, and a small metadata file, in
//! `<store>/raft-log/`. [`crate::LogStore`] drives them; this module only knows bytes, files
//! and log indexes.
//!
//! A segment `NNNNNNNNNNNNNNNNNNNN.seg` (its first index, 20 digits) holds consecutive entries,
//! each one record:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of everything after it | u64 LE index
//! | u64 LE term | u64 LE leader node id | payload (postcard `Entry`)
//! ```
//!
//! Appends write at the end of the last segment (`pwrite`, no fsync: the log-sync thread
//! fsyncs the files an append touched); a new segment starts when the last one reaches
//! [`WAL_SEGMENT_BYTES`] or the next index does not follow its last one (after a purge past
//! the end of the log). A segment is allocated whole when it starts (`fallocate`, made
//! durable at once), so that an append overwrites allocated zeros instead of growing the
//! file: its `fdatasync` then has no file size to record (211 against 150 µs here). The
//! records of a segment end where its bytes are all zero. The `meta` file holds the vote, the last purged log id and the last
//! committed log id; it is replaced whole (tmp file, fsync, rename, fsync the directory).
//!
//! At open every record is read and checked. A record that is cut off or fails its checksum at
//! the very end of the last segment (only zeros after it) is a write that never completed (a
//! crash during an append that was never acknowledged): it is cut away. Anything else that does not hold together is
//! damage, reported as [`StoreError::Corrupt`]; whether the log lost acknowledged entries is
//! then the durable mark's business ([`crate::mark`]).
//!
//! Invariants:
//! - The entries present are consecutive: `first_index ..= last_index`, no holes.
//! - A segment file is deleted only once its entries are purged and the purge is durable in
//!   `meta` (the log store makes the state machine durable before that).
//! - A gap between segments on disk is always covered by the durable `last_purged`.

use std::collections::VecDeque;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;
use crate::types::LogId;
use crate::types::Vote;

/// A segment is closed once it holds this many bytes, and a new one is started.
pub const WAL_SEGMENT_BYTES: u64 = 64 << 20;

/// The largest record payload accepted when reading, in bytes: an entry is at most
/// [`crate::ENTRY_BYTES_MAX`]; a larger length field is damage (or a cut-off write).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = crate::ENTRY_BYTES_MAX + (64 << 10);

/// Bytes of a record before its payload.
pub const RECORD_HEADER_BYTES: usize = 32;

const META_FILE: &str = "meta";
const META_MAGIC: &[u8; 8] = b"ASNLRLM1";
const SEGMENT_SUFFIX: &str = ".seg";

/// The log id of a record, as its header holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId {
    pub index: u64,
    pub term: u64,
    pub node: u64,
}

impl RecordId {
    pub fn of(log_id: &LogId) -> Self {
        RecordId {
            index: log_id.index,
            term: log_id.leader_id.term,
            node: log_id.leader_id.node_id,
        }
    }

    pub fn log_id(&self) -> LogId {
        LogId::new(
            openraft::CommittedLeaderId::new(self.term, self.node),
            self.index,
        )
    }
}

/// Appends one record (header and payload) to `out`.
pub fn push_record(out: &mut Vec<u8>, id: RecordId, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    out.extend_from_slice(payload);
    seal_record(&mut out[start..], id);
}

/// Fills in the header of `record`: [`RECORD_HEADER_BYTES`] of room, then the payload.
pub fn seal_record(record: &mut [u8], id: RecordId) {
    let len = u32::try_from(record.len() - RECORD_HEADER_BYTES).unwrap_or(u32::MAX);
    record[..4].copy_from_slice(&len.to_le_bytes());
    record[8..16].copy_from_slice(&id.index.to_le_bytes());
    record[16..24].copy_from_slice(&id.term.to_le_bytes());
    record[24..32].copy_from_slice(&id.node.to_le_bytes());
    let crc = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a record could not be read.
#[derive(Debug)]
enum BadRecord {
    /// The bytes end before the record does.
    CutOff,
    /// The record does not hold together; `end` is where it claims to end.
    Damaged { what: String, end: usize },
}

/// Parses the record at the start of `bytes`: its id, payload and total length.
fn parse_record(bytes: &[u8]) -> Result<(RecordId, &[u8], usize), BadRecord> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(BadRecord::CutOff);
    }
    let word32 = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let word64 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let len = word32(0) as usize;
    let total = RECORD_HEADER_BYTES + len;
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(BadRecord::Damaged {
            what: format!("a record claims {len} bytes, more than an entry can hold"),
            end: total,
        });
    }
    if bytes.len() < total {
        return Err(BadRecord::CutOff);
    }
    if crc32fast::hash(&bytes[8..total]) != word32(4) {
        return Err(BadRecord::Damaged {
            what: "a record's checksum does not match".to_owned(),
            end: total,
        });
    }
    let id = RecordId {
        index: word64(8),
        term: word64(16),
        node: word64(24),
    };
    Ok((id, &bytes[RECORD_HEADER_BYTES..total], total))
}

/// What the `meta` file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    pub vote: Option<Vote>,
    pub last_purged: Option<LogId>,
    pub committed: Option<LogId>,
}

fn meta_encode(meta: &LogMeta) -> Vec<u8> {
    let payload = crate::codec::encode(meta);
    let mut bytes = Vec::with_capacity(META_MAGIC.len() + 8 + payload.len());
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

fn meta_decode(bytes: &[u8]) -> Result<LogMeta, String> {
    let header = META_MAGIC.len() + 8;
    if bytes.len() < header || &bytes[..META_MAGIC.len()] != META_MAGIC {
        return Err(format!("{} bytes without the magic", bytes.len()));
    }
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[8..12]);
    let len = u32::from_le_bytes(w) as usize;
    w.copy_from_slice(&bytes[12..16]);
    let crc = u32::from_le_bytes(w);
    let payload = bytes
        .get(header..)
        .filter(|p| p.len() == len)
        .ok_or_else(|| {
            format!(
                "{} bytes where the header says {}",
                bytes.len(),
                header + len
            )
        })?;
    if crc32fast::hash(payload) != crc {
        return Err("its checksum does not match".to_owned());
    }
    crate::codec::decode(payload, "raft-log meta").map_err(|e| e.to_string())
}

/// Syncs the directory `dir`, so that files created, renamed or removed in it stay so.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The `meta` file: read at open, replaced whole on every change that must be durable.
pub struct MetaFile {
    dir: PathBuf,
    /// What the file holds now (and serialises writers).
    durable: Mutex<LogMeta>,
}

impl MetaFile {
    fn open(dir: &Path) -> Result<(Self, bool), StoreError> {
        let path = dir.join(META_FILE);
        let (meta, existed) = match std::fs::read(&path) {
            Ok(bytes) => (
                meta_decode(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!("{} is damaged: {e}", path.display()))
                })?,
                true,
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => (LogMeta::default(), false),
            Err(error) => return Err(error.into()),
        };
        let file = MetaFile {
            dir: dir.to_owned(),
            durable: Mutex::new(meta),
        };
        Ok((file, existed))
    }

    /// What the file holds.
    pub fn get(&self) -> LogMeta {
        self.durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the file durably: `change` edits a copy of what it holds, which is then written
    /// (tmp file, fsync, rename, fsync of the directory). Writers are serialised.
    pub fn update(&self, change: impl FnOnce(&mut LogMeta)) -> io::Result<()> {
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = durable.clone();
        change(&mut next);
        if next == *durable {
            return Ok(());
        }
        self.write(&next)?;
        *durable = next;
        Ok(())
    }

    fn write(&self, meta: &LogMeta) -> io::Result<()> {
        let tmp = self.dir.join("meta.tmp");
        {
            let file = File::create(&tmp)?;
            file.write_all_at(&meta_encode(meta), 0)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(META_FILE))?;
        sync_dir(&self.dir)
    }
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// The index of its last record (`None`: no record yet).
    last: Option<u64>,
}

#[derive(Clone, Copy)]
struct Location {
    /// Position of the segment in `Wal::segments`, counted from the first segment ever kept
    /// (see `Wal::segments_dropped`).
    segment: u64,
    offset: u64,
    len: u32,
    id: RecordId,
    /// Bytes of the records kept in memory up to and including this one, counted from an
    /// arbitrary origin (differences give the bytes of a range).
    end: u64,
}

/// The segments and where each present entry is. Not thread-safe on its own: the log store
/// holds it in a mutex.
pub struct Wal {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// How many segments were removed from the front of `segments` since open, so that a
    /// [`Location`]'s segment number stays valid.
    segments_dropped: u64,
    /// Location of every present entry, the first at `first_index`.
    locations: VecDeque<Location>,
    first_index: u64,
    /// Files written since the last fsync, for the log-sync thread.
    dirty: Arc<Mutex<Vec<Arc<File>>>>,
}

/// What [`Wal::open`] found.
pub struct Opened {
    pub wal: Wal,
    pub meta: MetaFile,
    /// Bytes cut from the end of the last segment (a write that never completed).
    pub torn_bytes: u64,
}

/// Allocates `file` up to [`WAL_SEGMENT_BYTES`] from `from` (reads as zeros; the file's size
/// grows to match). Where the file system cannot, appends grow the file instead: slower
/// fsyncs, same records.
fn preallocate(file: &File, from: u64) -> io::Result<()> {
    if from >= WAL_SEGMENT_BYTES {
        return Ok(());
    }
    match rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::empty(),
        from,
        WAL_SEGMENT_BYTES - from,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

impl Wal {
    /// Opens (creating if need be) the log directory `dir` and checks every record.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir)?;
        if created && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let (meta, meta_existed) = MetaFile::open(dir)?;
        let last_purged = meta.get().last_purged.map(|id| id.index);
        let corrupt = |path: &Path, what: String| {
            StoreError::Corrupt(format!(
                "Raft log segment {} is damaged: {what}",
                path.display()
            ))
        };

        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                let first: u64 = stem.parse().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "{} is not a Raft log segment name",
                        dir.join(&name).display()
                    ))
                })?;
                names.push(first);
            } else if name != META_FILE && name != "meta.tmp" {
                return Err(StoreError::Corrupt(format!(
                    "{} does not belong in the Raft log directory",
                    dir.join(&name).display()
                )));
            }
        }
        names.sort_unstable();
        if !names.is_empty() && !meta_existed {
            return Err(StoreError::Corrupt(format!(
                "{} is missing but the log has segments",
                dir.join(META_FILE).display()
            )));
        }
        if !meta_existed {
            meta.write(&LogMeta::default())?;
        }

        let mut wal = Wal {
            dir: dir.to_owned(),
            segments: VecDeque::new(),
            segments_dropped: 0,
            locations: VecDeque::new(),
            first_index: 0,
            dirty: Arc::default(),
        };
        let mut torn_bytes = 0;
        let count = names.len();
        for (position, first) in names.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let path = dir.join(segment_name(first));
            let bytes = std::fs::read(&path)?;
            let mut at = 0usize;
            let mut last: Option<u64> = None;
            while at < bytes.len() {
                // Allocated but never written: the records end here.
                if all_zero(&bytes[at..]) {
                    break;
                }
                match parse_record(&bytes[at..]) {
                    Ok((id, _, total)) => {
                        let expected = last.map_or(first, |l| l + 1);
                        if id.index != expected {
                            return Err(corrupt(
                                &path,
                                format!(
                                    "the record at byte {at} holds index {} where {expected} \
                                     belongs",
                                    id.index
                                ),
                            ));
                        }
                        wal.note_record(
                            wal.segments.len() as u64,
                            at as u64,
                            total,
                            id,
                            last_purged,
                        )
                        .map_err(|what| corrupt(&path, what))?;
                        last = Some(id.index);
                        at += total;
                    }
                    Err(bad) => {
                        // Only a record that runs to the end of the last segment, or is followed
                        // by nothing but allocated zeros, can be a write that never completed;
                        // anything followed by more records is damage.
                        let torn = is_last
                            && match &bad {
                                BadRecord::CutOff => true,
                                BadRecord::Damaged { end, .. } => {
                                    bytes.get(at.saturating_add(*end)..).is_none_or(all_zero)
                                }
                            };
                        if !torn {
                            let what = match bad {
                                BadRecord::CutOff => "a record is cut off".to_owned(),
                                BadRecord::Damaged { what, .. } => what,
                            };
                            return Err(corrupt(&path, format!("{what} (at byte {at})")));
                        }
                        // Not counting the allocated zeros after it.
                        torn_bytes = bytes[at..]
                            .iter()
                            .rposition(|b| *b != 0)
                            .map_or(0, |last_written| last_written + 1)
                            as u64;
                        break;
                    }
                }
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            // Appends go to the last segment: allocated, like a segment that starts.
            let allocate = is_last && last.is_some() && (bytes.len() as u64) < WAL_SEGMENT_BYTES;
            if torn_bytes > 0 {
                file.set_len(at as u64)?;
            }
            if allocate {
                preallocate(&file, at as u64)?;
            }
            if torn_bytes > 0 || allocate {
                file.sync_all()?;
            }
            if last.is_none() {
                // Created, but its first write never completed: nothing to keep.
                drop(file);
                std::fs::remove_file(&path)?;
                sync_dir(dir)?;
                continue;
            }
            wal.segments.push_back(Segment {
                first,
                path,
                file: Arc::new(file),
                len: at as u64,
                last,
            });
        }
        if wal.locations.is_empty() {
            wal.first_index = last_purged.map_or(0, |purged| purged + 1);
        }
        Ok(Opened {
            wal,
            meta,
            torn_bytes,
        })
    }

    /// Adds a record found at open; entries covered by `last_purged` are not kept.
    fn note_record(
        &mut self,
        segment: u64,
        offset: u64,
        total: usize,
        id: RecordId,
        last_purged: Option<u64>,
    ) -> Result<(), String> {
        if last_purged.is_some_and(|purged| id.index <= purged) {
            return Ok(());
        }
        match self.last_index() {
            None => {
                // The first entry kept follows the purged ones, or starts the log.
                if let Some(purged) = last_purged
                    && id.index != purged + 1
                {
                    return Err(format!(
                        "the log resumes at index {} after the entries purged up to {purged}",
                        id.index
                    ));
                }
                self.first_index = id.index;
            }
            Some(last) if id.index != last + 1 => {
                return Err(format!(
                    "index {} follows index {last}: entries are missing",
                    id.index
                ));
            }
            Some(_) => {}
        }
        self.locations.push_back(Location {
            segment,
            offset,
            len: total as u32,
            id,
            end: self.bytes_end() + total as u64,
        });
        Ok(())
    }

    /// Files written since the log-sync thread last took them.
    pub fn dirty(&self) -> Arc<Mutex<Vec<Arc<File>>>> {
        Arc::clone(&self.dirty)
    }

    pub fn last_index(&self) -> Option<u64> {
        self.locations.back().map(|l| l.id.index)
    }

    pub fn last_id(&self) -> Option<RecordId> {
        self.locations.back().map(|l| l.id)
    }

    /// Bytes of the present records from index `first` on.
    pub fn bytes_from(&self, first: u64) -> u64 {
        let skip = usize::try_from(first.saturating_sub(self.first_index)).unwrap_or(usize::MAX);
        match self.locations.get(skip) {
            Some(from) => self.bytes_end() - (from.end - u64::from(from.len)),
            None => 0,
        }
    }

    fn bytes_end(&self) -> u64 {
        self.locations.back().map_or(0, |last| last.end)
    }

    /// The present index range (`None`: no entry present).
    pub fn range(&self) -> Option<(u64, u64)> {
        self.last_index().map(|last| (self.first_index, last))
    }

    /// The end (exclusive) of the longest run of records from `from`, ending at `to` at the
    /// latest, whose records take at most `bytes_max` bytes; at least one record when `from`
    /// is in the log, however large. `from` itself when it is not.
    pub fn end_within(&self, from: u64, to: u64, bytes_max: u64) -> u64 {
        let Some((first, last)) = self.range() else {
            return from;
        };
        if from < first || from > last {
            return from;
        }
        let to = to.min(last + 1);
        let mut end = from;
        let mut bytes = 0u64;
        while end < to {
            bytes += u64::from(self.locations[(end - first) as usize].len);
            if bytes > bytes_max && end > from {
                break;
            }
            end += 1;
        }
        end
    }

    fn segment(&self, number: u64) -> &Segment {
        let at = number - self.segments_dropped;
        &self.segments[at as usize]
    }

    /// Starts a new segment whose first entry will be `first`.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: 0,
            last: None,
        });
        Ok(())
    }

    /// Writes `records` (built with [`push_record`]; `ids` says which) at the end of the log.
    /// The first must follow the last entry present, or the purged ones. Not durable until the
    /// log-sync thread fsyncs the files in [`Wal::dirty`].
    pub fn append(&mut self, records: &[u8], ids: &[(RecordId, usize)]) -> io::Result<()> {
        let Some((first_id, _)) = ids.first() else {
            return Ok(());
        };
        if let Some(last) = self.last_index() {
            assert_eq!(
                first_id.index,
                last + 1,
                "an append must follow the last entry ({last})"
            );
        }
        let needs_new = match self.segments.back() {
            None => true,
            Some(segment) => {
                segment.len >= WAL_SEGMENT_BYTES
                    || segment.last.map_or(segment.first, |l| l + 1) != first_id.index
            }
        };
        if needs_new {
            self.start_segment(first_id.index)?;
        }
        if self.locations.is_empty() {
            self.first_index = first_id.index;
        }
        let number = self.segments_dropped + self.segments.len() as u64 - 1;
        let mut end = self.bytes_end();
        let segment = self
            .segments
            .back_mut()
            .ok_or_else(|| io::Error::other("no segment to append to"))?;
        segment.file.write_all_at(records, segment.len)?;
        let mut offset = segment.len;
        for (id, total) in ids {
            end += *total as u64;
            self.locations.push_back(Location {
                segment: number,
                offset,
                len: *total as u32,
                id: *id,
                end,
            });
            offset += *total as u64;
        }
        segment.len = offset;
        segment.last = Some(ids[ids.len() - 1].0.index);
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !dirty.last().is_some_and(|f| Arc::ptr_eq(f, &segment.file)) {
            dirty.push(Arc::clone(&segment.file));
        }
        Ok(())
    }

    /// The payloads of the entries `from..to` that are present, checked against their
    /// checksums, with their ids.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<(RecordId, Vec<u8>)>> {
        let Some((first, last)) = self.range() else {
            return Ok(Vec::new());
        };
        let from = from.max(first);
        let to = to.min(last + 1);
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        let mut at = from;
        while at < to {
            // One read for a run of entries in the same segment.
            let start = self.locations[(at - first) as usize];
            let mut end = at + 1;
            while end < to && self.locations[(end - first) as usize].segment == start.segment {
                end += 1;
            }
            let stop = self.locations[(end - 1 - first) as usize];
            let span = (stop.offset + u64::from(stop.len) - start.offset) as usize;
            let mut bytes = vec![0u8; span];
            let segment = self.segment(start.segment);
            segment.file.read_exact_at(&mut bytes, start.offset)?;
            let mut pos = 0usize;
            for index in at..end {
                let damaged = |what: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "Raft log segment {} is damaged: {what} (entry {index})",
                            segment.path.display()
                        ),
                    )
                };
                let (id, payload, total) =
                    parse_record(&bytes[pos..]).map_err(|bad| match bad {
                        BadRecord::CutOff => damaged("a record is cut off".to_owned()),
                        BadRecord::Damaged { what, .. } => damaged(what),
                    })?;
                if id.index != index {
                    return Err(damaged(format!("the record holds index {}", id.index)));
                }
                out.push((id, payload.to_vec()));
                pos += total;
            }
            at = end;
        }
        Ok(out)
    }

    /// Removes the entries from `index` on, durably: the segment that holds `index` is cut
    /// and fsynced, later segments are deleted, and the directory is fsynced.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some((first, last)) = self.range() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        // Entries below `first` are purged, never truncated.
        let index = index.max(first);
        let keep = (index - first) as usize;
        let cut = self.locations[keep];
        self.locations.truncate(keep);
        let mut removed = false;
        while let Some(segment) = self.segments.back() {
            let whole = segment.first >= index;
            if !whole {
                break;
            }
            let path = segment.path.clone();
            self.segments.pop_back();
            std::fs::remove_file(&path)?;
            removed = true;
        }
        let back_number = (self.segments_dropped + self.segments.len() as u64).checked_sub(1);
        if back_number == Some(cut.segment)
            && let Some(segment) = self.segments.back_mut()
        {
            segment.file.set_len(cut.offset)?;
            preallocate(&segment.file, cut.offset)?;
            segment.file.sync_all()?;
            segment.len = cut.offset;
            segment.last = index.checked_sub(1).filter(|l| *l >= segment.first);
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Forgets the entries up to `index` (inclusive) in memory; their files stay until
    /// [`Wal::take_purged_segments`]. Returns whether the purge goes past the end of the log,
    /// so that the next append leaves a gap on disk (which `meta` must cover first).
    pub fn forget_upto(&mut self, index: u64) -> bool {
        let next = self.last_index().map_or(self.first_index, |last| last + 1);
        match self.range() {
            Some((first, last)) if index < last => {
                let drop = (index + 1).saturating_sub(first) as usize;
                self.locations.drain(..drop.min(self.locations.len()));
                self.first_index = self.first_index.max(index + 1);
                false
            }
            _ => {
                self.locations.clear();
                self.first_index = self.first_index.max(index + 1);
                index + 1 > next
            }
        }
    }

    /// Removes from the segment list, and returns the paths of, the segments whose entries are
    /// all at or below `index`, but never the last segment (appends go there).
    pub fn take_purged_segments(&mut self, index: u64) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            if front.last.is_some_and(|last| last > index) {
                break;
            }
            paths.push(front.path.clone());
            self.segments.pop_front();
            self.segments_dropped += 1;
        }
        paths
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64) -> RecordId {
        RecordId {
            index,
            term: 1,
            node: 1,
        }
    }

    fn append(wal: &mut Wal, indexes: std::ops::RangeInclusive<u64>) {
        let mut records = Vec::new();
        let mut ids = Vec::new();
        for index in indexes {
            let before = records.len();
            push_record(&mut records, id(index), format!("entry {index}").as_bytes());
            ids.push((id(index), records.len() - before));
        }
        wal.append(&records, &ids).expect("append");
    }

    fn payloads(wal: &Wal, from: u64, to: u64) -> Vec<String> {
        wal.read(from, to)
            .expect("read")
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).expect("utf8"))
            .collect()
    }

    #[test]
    fn a_limited_read_ends_where_the_bytes_run_out_but_holds_one_record_at_least() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(&dir.path().join("raft-log")).expect("open").wal;
        append(&mut wal, 1..=9);
        // A record of "entry N" (N < 10) is a header and 7 bytes.
        let record = RECORD_HEADER_BYTES as u64 + 7;
        assert_eq!(
            wal.end_within(1, 10, 3 * record),
            4,
            "exactly three records fit"
        );
        assert_eq!(
            wal.end_within(1, 10, 3 * record + record - 1),
            4,
            "one byte short of four"
        );
        assert_eq!(wal.end_within(1, 10, 4 * record), 5);
        assert_eq!(wal.end_within(2, 4, 100 * record), 4, "never past `to`");
        assert_eq!(
            wal.end_within(8, 100, 100 * record),
            10,
            "never past the log"
        );
        assert_eq!(wal.end_within(3, 10, 1), 4, "one record, however large");
        assert_eq!(wal.end_within(3, 10, 0), 4);
        assert_eq!(wal.end_within(10, 20, record), 10, "nothing past the log");
        assert_eq!(wal.end_within(0, 20, record), 0, "nothing before it");
    }

    #[test]
    fn appends_truncations_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("raft-log");
        {
            let mut wal = Wal::open(&log).expect("open").wal;
            append(&mut wal, 1..=5);
            append(&mut wal, 6..=9);
            assert_eq!(payloads(&wal, 3, 5), ["entry 3", "entry 4"]);
            wal.truncate(7).expect("truncate");
            assert_eq!(wal.range(), Some((1, 6)));
            // A record of "entry N" (N < 10) is a header and 7 bytes.
            let record = RECORD_HEADER_BYTES as u64 + 7;
            assert_eq!(wal.bytes_from(1), 6 * record);
            append(&mut wal, 7..=8);
        }
        let opened = Wal::open(&log).expect("reopen");
        assert_eq!(opened.torn_bytes, 0);
        let mut wal = opened.wal;
        assert_eq!(wal.range(), Some((1, 8)));
        assert_eq!(payloads(&wal, 6, 100).len(), 3);
        let record = RECORD_HEADER_BYTES as u64 + 7;
        assert_eq!(wal.bytes_from(0), 8 * record);
        assert_eq!(wal.bytes_from(6), 3 * record);
        assert_eq!(wal.bytes_from(9), 0);
        // A purge past the end starts a new segment after the gap, once `meta` covers it.
        assert!(wal.forget_upto(20));
        opened
            .meta
            .update(|m| m.last_purged = Some(id(20).log_id()))
            .expect("meta");
        append(&mut wal, 21..=22);
        assert_eq!(wal.bytes_from(0), 2 * (RECORD_HEADER_BYTES as u64 + 8));
        assert_eq!(wal.bytes_from(22), RECORD_HEADER_BYTES as u64 + 8);
        assert_eq!(wal.take_purged_segments(20).len(), 1);
        drop(wal);
        let wal = Wal::open(&log).expect("reopen").wal;
        assert_eq!(wal.range(), Some((21, 22)));
        assert_eq!(payloads(&wal, 0, 100), ["entry 21", "entry 22"]);
    }

    /// Where the records of a segment end: after its last byte that is not zero.
    fn written_len(bytes: &[u8]) -> usize {
        bytes.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1)
    }

    /// A new log in a temporary directory with entries 1 to 3 written and closed: the
    /// directory (removed when dropped), the log's path and its one segment's path.
    fn log_with_three_entries() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("raft-log");
        let mut wal = Wal::open(&log).expect("open").wal;
        append(&mut wal, 1..=3);
        drop(wal);
        let segment = log.join(segment_name(1));
        (dir, log, segment)
    }

    #[test]
    fn a_segment_is_allocated_whole_and_its_zeros_end_the_records() {
        let (_dir, log, segment) = log_with_three_entries();
        // Allocated whole where the file system can (tmpfs and ext4 can).
        let size = std::fs::metadata(&segment).expect("metadata").len();
        assert_eq!(size, WAL_SEGMENT_BYTES);
        let opened = Wal::open(&log).expect("reopen");
        assert_eq!(opened.torn_bytes, 0);
        let mut wal = opened.wal;
        assert_eq!(wal.range(), Some((1, 3)));
        append(&mut wal, 4..=5);
        drop(wal);
        let wal = Wal::open(&log).expect("reopen").wal;
        assert_eq!(payloads(&wal, 3, 6), ["entry 3", "entry 4", "entry 5"]);
        // A segment written before segments were allocated (it ends at its last record) is
        // read the same, and allocated for the appends to come.
        let bytes = std::fs::read(&segment).expect("read");
        drop(wal);
        std::fs::write(&segment, &bytes[..written_len(&bytes)]).expect("write");
        let mut wal = Wal::open(&log).expect("reopen").wal;
        assert_eq!(wal.range(), Some((1, 5)));
        append(&mut wal, 6..=6);
        drop(wal);
        assert_eq!(
            std::fs::metadata(&segment).expect("metadata").len(),
            WAL_SEGMENT_BYTES
        );
        let wal = Wal::open(&log).expect("reopen").wal;
        assert_eq!(wal.range(), Some((1, 6)));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_damage_elsewhere_is_reported() {
        let (_dir, log, segment) = log_with_three_entries();
        let full = std::fs::read(&segment).expect("read");
        let written = written_len(&full);
        let record = RECORD_HEADER_BYTES + 7;
        assert_eq!(written, 3 * record);

        // The last record's end never reached the disk (zeros where it should be): a write
        // that never completed. It is cut away, and the log goes on after it.
        let mut bytes = full.clone();
        bytes[written - 3..written].fill(0);
        std::fs::write(&segment, &bytes).expect("write");
        let opened = Wal::open(&log).expect("open");
        assert_eq!(opened.torn_bytes, (record - 3) as u64);
        let mut wal = opened.wal;
        assert_eq!(wal.range(), Some((1, 2)));
        append(&mut wal, 3..=4);
        drop(wal);
        let opened = Wal::open(&log).expect("reopen");
        assert_eq!(opened.torn_bytes, 0);
        assert_eq!(
            payloads(&opened.wal, 1, 5),
            ["entry 1", "entry 2", "entry 3", "entry 4"]
        );
        drop(opened);

        // The same, in a file that ends in the middle of its last record.
        std::fs::write(&segment, &full[..written - 3]).expect("write");
        let opened = Wal::open(&log).expect("open");
        assert!(opened.torn_bytes > 0);
        assert_eq!(opened.wal.range(), Some((1, 2)));
        drop(opened);

        // A flipped bit in the first record, with records after it: damage.
        let mut bytes = full.clone();
        bytes[RECORD_HEADER_BYTES + 2] ^= 0x10;
        std::fs::write(&segment, &bytes).expect("write");
        let message = Wal::open(&log).err().expect("damage").to_string();
        assert!(message.contains("checksum does not match"), "{message}");
        assert!(message.contains("is damaged"), "{message}");

        // A record that reads as zeros, with a record after it: damage, not the end.
        let mut bytes = full.clone();
        bytes[record..2 * record].fill(0);
        std::fs::write(&segment, &bytes).expect("write");
        let message = Wal::open(&log).err().expect("damage").to_string();
        assert!(message.contains("at byte 39"), "{message}");
    }
}
