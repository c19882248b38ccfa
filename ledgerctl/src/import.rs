//! `ledgerctl import FILE.jsonl`: one event per line (the body of `POST /activity/report`:
//! `asn`, `event_type`, optional `severity` and `metadata`), sent in batches through
//! `POST /api/v1/activity/report/batch`.
//!
//! **Batches.** The file is read once, front to back, and cut into chunks of consecutive
//! lines: a chunk ends after the line that gives it `batch_events` valid events, or before a
//! valid event that would make its body larger than [`IMPORT_BATCH_BODY_BYTES_MAX`], or at the
//! end of the file. Blank and invalid lines belong to the chunk they fall in. The cut depends
//! only on the file's bytes and `batch_events`.
//!
//! **Resume rule.** Each batch is sent with
//! `Idempotency-Key: ledgerctl-import-v1-` + hex(SHA-256(`asn-ledger/ledgerctl-import/v1\0` ‖
//! first line number (u64 BE) ‖ last line number (u64 BE) ‖ the exact JSON body sent)).
//! The server answers a key it has seen, with the same body, from the same API key, with the
//! events it recorded the first time, whichever node is asked. So running the same import
//! again, the same file, the same `--batch-size`, the same key, after an interruption or
//! not, records nothing twice: the batches that got through are answered from the ledger and
//! counted as "already recorded", the others are recorded. Changing a line, the batch size or
//! the API key gives the batches concerned new keys, and their events are recorded again: to
//! fix rejected lines, put the corrected lines in a new file.
//!
//! **Invalid lines** do not stop the import. A line that is not a JSON object with the fields
//! above is rejected here, with its line number. A line the cluster refuses (a malformed or
//! unknown ASN, a deactivated agent, an agent the key does not own: the server names
//! `events[i]`) is taken out of its batch, which is sent again without it (under a new key,
//! since its body changed). A refusal that is not about one event (401, a key without the
//! permission to report) stops the import: every batch would fail the same way. A cluster that
//! stays unavailable (503, 429, unreachable) through [`IMPORT_ATTEMPTS_MAX`] attempts stops it
//! too; run it again. Between attempts it waits, doubling, or as long as `Retry-After` says.
//! Whether recorded now or before, "already recorded" means the event's `seq` is not above the
//! ledger size read at the start of the run.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use sha2::Digest;

use crate::client::Client;
use crate::client::Request;
use crate::exit::CtlError;
use crate::exit::Exit;

/// Events per batch unless `--batch-size` says otherwise.
pub const IMPORT_BATCH_EVENTS_DEFAULT: usize = 500;
/// The server's batch limit (`BATCH_EVENTS_MAX` of the API): the largest `--batch-size`.
pub const SERVER_BATCH_EVENTS_MAX: usize = 1000;
/// Largest JSON body of one batch, in bytes: under the server's 1 MiB request limit
/// (`REQUEST_BODY_BYTES_MAX`), with room to spare.
pub const IMPORT_BATCH_BODY_BYTES_MAX: usize = 900 * 1024;
/// Longest line, in bytes: an event within the server's limits (16 KiB of metadata, 50
/// characters of type, an ASN) is far shorter.
pub const IMPORT_LINE_BYTES_MAX: usize = 256 * 1024;
/// Tries of one batch while the cluster is unavailable (503, 429, no node reachable).
pub const IMPORT_ATTEMPTS_MAX: u32 = 8;
/// First wait between two tries of a batch, in milliseconds; doubles up to
/// [`IMPORT_RETRY_WAIT_MS_MAX`].
pub const IMPORT_RETRY_WAIT_MS_MIN: u64 = 250;
pub const IMPORT_RETRY_WAIT_MS_MAX: u64 = 4_000;
/// Longest `Retry-After` honoured between two tries, in seconds.
pub const IMPORT_RETRY_AFTER_SECS_MAX: u64 = 60;
/// Rejected lines listed in the summary; the rest are only counted.
pub const IMPORT_REJECTED_SHOWN_MAX: usize = 100;
/// The server's limit on `event_type`, in characters (`EVENT_TYPE_CHARS_MAX`).
const EVENT_TYPE_CHARS_MAX: usize = 50;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub lines_read: u64,
    pub blank_lines: u64,
    pub events_recorded: u64,
    pub already_recorded: u64,
    pub rejected_total: u64,
    /// The first [`IMPORT_REJECTED_SHOWN_MAX`] rejected lines.
    pub rejected: Vec<Rejected>,
    pub batches: u64,
    /// Why the import stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

impl Summary {
    fn reject(&mut self, line: u64, reason: impl Into<String>) {
        self.rejected_total += 1;
        if self.rejected.len() < IMPORT_REJECTED_SHOWN_MAX {
            self.rejected.push(Rejected {
                line,
                reason: reason.into(),
            });
        }
    }

    /// The summary as text, one fact per line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "lines read         {}\nevents recorded    {}\nalready recorded   {}\nrejected lines     {}\nblank lines        {}\nbatches            {}\n",
            self.lines_read,
            self.events_recorded,
            self.already_recorded,
            self.rejected_total,
            self.blank_lines,
            self.batches
        );
        for rejected in &self.rejected {
            out.push_str(&format!("line {}: {}\n", rejected.line, rejected.reason));
        }
        if self.rejected_total > self.rejected.len() as u64 {
            out.push_str(&format!(
                "… and {} more rejected lines\n",
                self.rejected_total - self.rejected.len() as u64
            ));
        }
        if let Some(stopped) = &self.stopped {
            out.push_str(&format!("stopped: {stopped}\n"));
        }
        out.pop();
        out
    }
}

/// Checks one line as the server would (it checks again) and returns the event to send.
pub fn parse_line(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    for key in object.keys() {
        if !matches!(key.as_str(), "asn" | "event_type" | "severity" | "metadata") {
            return Err(format!("{key}: unknown field"));
        }
    }
    match object.get("asn") {
        Some(Value::String(_)) => {}
        Some(_) => return Err("asn: must be a string".into()),
        None => return Err("asn: required".into()),
    }
    match object.get("event_type") {
        Some(Value::String(t)) => {
            let chars = t.chars().count();
            if chars == 0 || chars > EVENT_TYPE_CHARS_MAX {
                return Err(format!(
                    "event_type: must be 1 to {EVENT_TYPE_CHARS_MAX} characters, got {chars}"
                ));
            }
        }
        Some(_) => return Err("event_type: must be a string".into()),
        None => return Err("event_type: required".into()),
    }
    match object.get("severity") {
        None | Some(Value::Null) => {}
        Some(Value::String(s))
            if matches!(s.as_str(), "info" | "warning" | "error" | "critical") => {}
        Some(_) => return Err("severity: must be one of info, warning, error, critical".into()),
    }
    match object.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("metadata: must be a JSON object".into()),
    }
    Ok(value)
}

/// The `Idempotency-Key` of a batch (see the module's resume rule).
pub fn batch_key(first_line: u64, last_line: u64, body: &[u8]) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"asn-ledger/ledgerctl-import/v1\0");
    hasher.update(first_line.to_be_bytes());
    hasher.update(last_line.to_be_bytes());
    hasher.update(body);
    format!("ledgerctl-import-v1-{}", hex::encode(hasher.finalize()))
}

/// `{"events":[]}`: the bytes of a batch body around its events.
const ENVELOPE_BYTES: usize = 13;

/// Where batches end (the module's rule), fed one line at a time: a batch ends after the line
/// that gives it `batch_events` valid events, or before a valid event that would make its JSON
/// body (`{"events":[e1,e2,…]}`, compact) longer than `body_bytes_max`, or at the end of the
/// file. Ranges are line numbers, from 1, inclusive.
#[derive(Debug)]
pub struct Cutter {
    batch_events: usize,
    body_bytes_max: usize,
    first_line: u64,
    events: usize,
    body_bytes: usize,
}

impl Cutter {
    pub fn new(batch_events: usize, body_bytes_max: usize) -> Self {
        Self {
            batch_events,
            body_bytes_max,
            first_line: 1,
            events: 0,
            body_bytes: ENVELOPE_BYTES,
        }
    }

    fn start_at(&mut self, line: u64) {
        self.first_line = line;
        self.events = 0;
        self.body_bytes = ENVELOPE_BYTES;
    }

    /// Before a valid event of `bytes` (compact JSON) at `line`: the batch to send first, if
    /// the event does not fit in it.
    pub fn before_event(&mut self, line: u64, bytes: usize) -> Option<(u64, u64)> {
        if self.events > 0 && self.body_bytes + 1 + bytes > self.body_bytes_max {
            let range = (self.first_line, line - 1);
            self.start_at(line);
            return Some(range);
        }
        None
    }

    /// Adds that event: the batch to send now, if it is full.
    pub fn add_event(&mut self, line: u64, bytes: usize) -> Option<(u64, u64)> {
        self.body_bytes += bytes + usize::from(self.events > 0);
        self.events += 1;
        if self.events == self.batch_events {
            let range = (self.first_line, line);
            self.start_at(line + 1);
            return Some(range);
        }
        None
    }

    /// At the end of the file (`last_line` lines): the last batch, if it has events.
    pub fn finish(&self, last_line: u64) -> Option<(u64, u64)> {
        (self.events > 0).then_some((self.first_line, last_line))
    }
}

/// What one line of the file is.
#[derive(Debug, PartialEq)]
pub enum Line {
    Blank,
    Event(Value),
    Invalid(String),
}

/// Classifies one raw line (with or without its newline).
pub fn classify_line(raw: &[u8]) -> Line {
    if raw.len() > IMPORT_LINE_BYTES_MAX {
        return Line::Invalid(format!(
            "longer than {IMPORT_LINE_BYTES_MAX} bytes ({} bytes)",
            raw.len()
        ));
    }
    match std::str::from_utf8(raw) {
        Err(_) => Line::Invalid("not UTF-8".to_owned()),
        Ok(text) if text.trim().is_empty() => Line::Blank,
        Ok(text) => match parse_line(text.trim()) {
            Ok(event) => Line::Event(event),
            Err(reason) => Line::Invalid(reason),
        },
    }
}

/// One event waiting in the chunk, with its line number.
struct Pending {
    line: u64,
    event: Value,
}

/// `events[i]` at the start of a server message: the index and the rest of the message.
fn event_index(message: &str) -> Option<(usize, String)> {
    let rest = message.strip_prefix("events[")?;
    let end = rest.find(']')?;
    let index = rest[..end].parse().ok()?;
    let tail = rest[end + 1..].trim_start_matches(['.', ':', ' ']);
    Some((index, tail.to_owned()))
}

pub struct Importer<'c> {
    client: &'c Client,
    /// The ledger size when the run started: events at or below it were recorded before.
    start_size: u64,
    summary: Summary,
    progress: indicatif::ProgressBar,
}

impl<'c> Importer<'c> {
    fn send_chunk(
        &mut self,
        first_line: u64,
        last_line: u64,
        mut chunk: Vec<Pending>,
    ) -> Result<(), CtlError> {
        while !chunk.is_empty() {
            let body = serde_json::json!({
                "events": chunk.iter().map(|p| p.event.clone()).collect::<Vec<_>>()
            });
            let bytes = serde_json::to_vec(&body)
                .map_err(|e| CtlError::new(Exit::Failed, format!("encoding a batch: {e}")))?;
            let key = batch_key(first_line, last_line, &bytes);
            match self.send_batch(&body, &key) {
                Ok(answer) => {
                    let data = answer["data"].as_array().ok_or_else(|| {
                        CtlError::new(Exit::Failed, "batch answer: `data` is not an array")
                    })?;
                    if data.len() != chunk.len() {
                        return Err(CtlError::new(
                            Exit::Failed,
                            format!(
                                "lines {first_line}–{last_line}: sent {} events, {} recorded",
                                chunk.len(),
                                data.len()
                            ),
                        ));
                    }
                    for event in data {
                        match event["seq"].as_u64() {
                            Some(seq) if seq <= self.start_size => {
                                self.summary.already_recorded += 1;
                            }
                            _ => self.summary.events_recorded += 1,
                        }
                    }
                    self.summary.batches += 1;
                    return Ok(());
                }
                Err(error) => {
                    let api = error.api.clone();
                    let per_event = api.as_ref().and_then(|api| {
                        matches!(api.status, 400 | 403 | 404 | 410)
                            .then(|| event_index(&api.message))
                            .flatten()
                    });
                    match (per_event, error.exit) {
                        (Some((index, reason)), _) if index < chunk.len() => {
                            let pending = chunk.remove(index);
                            self.summary.reject(pending.line, reason);
                        }
                        (_, Exit::Denied | Exit::Unavailable | Exit::Usage) => {
                            return Err(error);
                        }
                        _ => {
                            // A refusal of the whole batch that names no event: every line
                            // of it is rejected with that reason.
                            let reason = api.map_or(error.message.clone(), |a| {
                                format!("{} {}: {}", a.status, a.code, a.message)
                            });
                            for pending in chunk.drain(..) {
                                self.summary.reject(pending.line, reason.clone());
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends one batch, retrying while the cluster is unavailable.
    fn send_batch(&self, body: &Value, key: &str) -> Result<Value, CtlError> {
        let headers = [("Idempotency-Key", key)];
        let request = Request {
            method: Method::POST,
            path: "/api/v1/activity/report/batch",
            body: Some(body),
            headers: &headers,
            repeatable: true,
            timeout: None,
        };
        let mut wait = Duration::from_millis(IMPORT_RETRY_WAIT_MS_MIN);
        let mut attempt = 1;
        loop {
            match self.client.send(&request) {
                Err(error) if error.exit == Exit::Unavailable && attempt < IMPORT_ATTEMPTS_MAX => {
                    self.progress
                        .set_message(format!("retrying: {}", error.message));
                    // The server's Retry-After (a rate limit, an overload) when it says more.
                    let asked = error
                        .api
                        .as_ref()
                        .and_then(|api| api.retry_after_secs)
                        .map(|secs| Duration::from_secs(secs.min(IMPORT_RETRY_AFTER_SECS_MAX)))
                        .unwrap_or_default();
                    std::thread::sleep(wait.max(asked));
                    wait = (wait * 2).min(Duration::from_millis(IMPORT_RETRY_WAIT_MS_MAX));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Imports `path`; returns the summary (also when stopped early: see `Summary::stopped`) and
/// the exit code of the run.
pub fn import(
    client: &Client,
    path: &Path,
    batch_events: usize,
) -> Result<(Summary, Exit), CtlError> {
    if !(1..=SERVER_BATCH_EVENTS_MAX).contains(&batch_events) {
        return Err(CtlError::usage(format!(
            "--batch-size: must be 1 to {SERVER_BATCH_EVENTS_MAX}, got {batch_events}"
        )));
    }
    client.require_key()?;
    let file = std::fs::File::open(path)
        .map_err(|e| CtlError::usage(format!("{}: {e}", path.display())))?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let head = client.get("/api/v1/ledger/head")?;
    let start_size = head["size"]
        .as_u64()
        .ok_or_else(|| CtlError::new(Exit::Failed, "ledger head: no size"))?;
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(file_bytes),
        indicatif::ProgressDrawTarget::stderr(),
    );
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut importer = Importer {
        client,
        start_size,
        summary: Summary::default(),
        progress,
    };
    let mut reader = std::io::BufReader::new(file);
    let mut buffer = Vec::new();
    let mut line_number = 0u64;
    let mut chunk: Vec<Pending> = Vec::new();
    let mut cutter = Cutter::new(batch_events, IMPORT_BATCH_BODY_BYTES_MAX);
    let outcome = loop {
        buffer.clear();
        let read = match reader.read_until(b'\n', &mut buffer) {
            Ok(read) => read,
            Err(e) => {
                break Err(CtlError::usage(format!(
                    "{}: reading line {}: {e}",
                    path.display(),
                    line_number + 1
                )));
            }
        };
        if read == 0 {
            break Ok(());
        }
        line_number += 1;
        importer.summary.lines_read += 1;
        importer.progress.inc(read as u64);
        let event = match classify_line(&buffer) {
            Line::Blank => {
                importer.summary.blank_lines += 1;
                continue;
            }
            Line::Invalid(reason) => {
                importer.summary.reject(line_number, reason);
                continue;
            }
            Line::Event(event) => event,
        };
        let bytes = serde_json::to_vec(&event).map_or(0, |b| b.len());
        if let Some((first, last)) = cutter.before_event(line_number, bytes)
            && let Err(error) = importer.send_chunk(first, last, std::mem::take(&mut chunk))
        {
            break Err(error);
        }
        chunk.push(Pending {
            line: line_number,
            event,
        });
        if let Some((first, last)) = cutter.add_event(line_number, bytes)
            && let Err(error) = importer.send_chunk(first, last, std::mem::take(&mut chunk))
        {
            break Err(error);
        }
        importer.progress.set_message(format!(
            "{} recorded, {} before, {} rejected",
            importer.summary.events_recorded,
            importer.summary.already_recorded,
            importer.summary.rejected_total
        ));
    };
    let outcome = match (outcome, cutter.finish(line_number)) {
        (Ok(()), Some((first, last))) => importer.send_chunk(first, last, chunk),
        (other, _) => other,
    };
    importer.progress.finish_and_clear();
    let mut summary = importer.summary;
    let exit = match outcome {
        Ok(()) if summary.rejected_total > 0 => Exit::Failed,
        Ok(()) => Exit::Ok,
        Err(error) => {
            summary.stopped = Some(format!(
                "at line {line_number}: {} (run the same command again to resume)",
                error.message
            ));
            error.exit
        }
    };
    Ok((summary, exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_like_the_server_does() {
        let ok = r#"{"asn":"ASN-2026-0004-8271-L","event_type":"startup","metadata":{"a":1}}"#;
        assert!(parse_line(ok).is_ok());
        let cases = [
            ("[1]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"event_type":"x"}"#, "asn: required"),
            (r#"{"asn":1,"event_type":"x"}"#, "asn: must be a string"),
            (r#"{"asn":"A"}"#, "event_type: required"),
            (
                r#"{"asn":"A","event_type":""}"#,
                "event_type: must be 1 to 50",
            ),
            (
                r#"{"asn":"A","event_type":"x","severity":"loud"}"#,
                "severity",
            ),
            (r#"{"asn":"A","event_type":"x","metadata":[1]}"#, "metadata"),
            (
                r#"{"asn":"A","event_type":"x","extra":1}"#,
                "extra: unknown field",
            ),
        ];
        for (line, needle) in cases {
            let error = parse_line(line).expect_err(line);
            assert!(error.contains(needle), "{line}: {error}");
        }
        let fifty = format!(r#"{{"asn":"A","event_type":"{}"}}"#, "x".repeat(50));
        assert!(parse_line(&fifty).is_ok());
        let fifty_one = format!(r#"{{"asn":"A","event_type":"{}"}}"#, "x".repeat(51));
        assert!(parse_line(&fifty_one).is_err());
    }

    #[test]
    fn batch_keys_depend_on_range_and_body_and_fit_the_server_limit() {
        let key = batch_key(1, 500, b"{\"events\":[]}");
        assert_eq!(key, batch_key(1, 500, b"{\"events\":[]}"));
        assert_ne!(key, batch_key(501, 1000, b"{\"events\":[]}"));
        assert_ne!(key, batch_key(1, 500, b"{\"events\":[1]}"));
        // IDEMPOTENCY_KEY_BYTES_MAX of the API is 128.
        assert!(key.len() <= 128, "{}", key.len());
        assert!(key.is_ascii());
    }

    #[test]
    fn batches_end_at_the_event_count_or_before_the_body_limit() {
        // By count: 2 events per batch; blank and invalid lines stay in the batch they are in.
        let mut cutter = Cutter::new(2, 1_000);
        assert_eq!(cutter.before_event(1, 10), None);
        assert_eq!(cutter.add_event(1, 10), None);
        // (line 2 is invalid: not fed)
        assert_eq!(cutter.before_event(3, 10), None);
        assert_eq!(cutter.add_event(3, 10), Some((1, 3)));
        assert_eq!(cutter.before_event(4, 10), None);
        assert_eq!(cutter.add_event(4, 10), None);
        assert_eq!(cutter.finish(6), Some((4, 6)));
        // By bytes: the body {"events":[a,b]} of two 10-byte events is 13 + 10 + 1 + 10 = 34.
        let mut at_limit = Cutter::new(1_000, 34);
        assert_eq!(at_limit.add_event(1, 10), None);
        assert_eq!(at_limit.before_event(2, 10), None);
        assert_eq!(at_limit.add_event(2, 10), None);
        let mut one_past = Cutter::new(1_000, 33);
        assert_eq!(one_past.add_event(1, 10), None);
        assert_eq!(one_past.before_event(2, 10), Some((1, 1)));
        assert_eq!(one_past.add_event(2, 10), None);
        assert_eq!(one_past.finish(2), Some((2, 2)));
        // An event larger than the limit goes alone (the server answers it 413).
        let mut huge = Cutter::new(1_000, 20);
        assert_eq!(huge.before_event(1, 50), None);
        assert_eq!(huge.add_event(1, 50), None);
        assert_eq!(huge.before_event(2, 5), Some((1, 1)));
        assert_eq!(Cutter::new(5, 100).finish(3), None);
    }

    #[test]
    fn the_body_estimate_is_the_body_sent() {
        let events = [
            serde_json::json!({"asn": "A", "event_type": "x"}),
            serde_json::json!({"asn": "B", "event_type": "y", "metadata": {"é": [1, 2.5]}}),
        ];
        let mut cutter = Cutter::new(10, usize::MAX);
        for (i, event) in events.iter().enumerate() {
            let bytes = serde_json::to_vec(event).expect("json").len();
            assert_eq!(cutter.add_event(i as u64 + 1, bytes), None);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "events": events })).expect("json");
        assert_eq!(cutter.body_bytes, body.len());
    }

    #[test]
    fn lines_at_and_past_the_length_limit() {
        let event = |len: usize| {
            let stem = r#"{"asn":"A","event_type":"x","metadata":{"p":""}}"#;
            let padding = "a".repeat(len - stem.len());
            format!(r#"{{"asn":"A","event_type":"x","metadata":{{"p":"{padding}"}}}}"#)
        };
        assert_eq!(event(IMPORT_LINE_BYTES_MAX).len(), IMPORT_LINE_BYTES_MAX);
        assert!(matches!(
            classify_line(event(IMPORT_LINE_BYTES_MAX).as_bytes()),
            Line::Event(_)
        ));
        assert!(matches!(
            classify_line(event(IMPORT_LINE_BYTES_MAX + 1).as_bytes()),
            Line::Invalid(reason) if reason.starts_with("longer than")
        ));
        assert_eq!(classify_line(b"  \r\n"), Line::Blank);
        assert_eq!(classify_line(b"\xff\n"), Line::Invalid("not UTF-8".into()));
        assert!(matches!(
            classify_line(b"{\"asn\":\"A\",\"event_type\":\"x\"}\r\n"),
            Line::Event(_)
        ));
    }

    #[test]
    fn server_messages_name_the_event() {
        assert_eq!(
            event_index("events[3].asn: must be an ASN"),
            Some((3, "asn: must be an ASN".to_owned()))
        );
        assert_eq!(
            event_index("events[12]: agent ASN-1 not found"),
            Some((12, "agent ASN-1 not found".to_owned()))
        );
        assert_eq!(event_index("Authorization: invalid"), None);
    }
}
