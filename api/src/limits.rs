//! Every limit of the HTTP API, with its unit in its name. Documented in README.md.

/// Largest request body accepted, in bytes. Larger bodies get 413.
pub const REQUEST_BODY_BYTES_MAX: usize = 1 << 20;
/// Longest `event_type`, in characters (the spec's "max 50 chars").
pub const EVENT_TYPE_CHARS_MAX: usize = 50;
/// Largest `metadata` object, in bytes of compact JSON.
pub const METADATA_BYTES_MAX: usize = 16 << 10;
/// Deepest nesting of objects and arrays inside `metadata` (the object itself is depth 1).
pub const METADATA_DEPTH_MAX: usize = 8;
/// Events in one batch report, at most.
pub const BATCH_EVENTS_MAX: usize = 1000;
/// Longest operator, agent or key name, in characters.
pub const NAME_CHARS_MAX: usize = 100;
/// Longest `Idempotency-Key` header, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Default and largest `per_page` of the activity query (the spec's "default: 20, max: 50").
pub const PAGE_EVENTS_DEFAULT: u32 = 20;
pub const PAGE_EVENTS_MAX: u32 = 50;
/// How many of an agent's most recent events the public (keyless) query can see.
pub const PUBLIC_WINDOW_EVENTS: u64 = 50;
/// Default `limit` of `GET /api/v1/ledger/events`.
pub const LEDGER_PAGE_EVENTS_DEFAULT: u32 = 100;
/// Largest `limit` of `GET /api/v1/ledger/events`.
pub const LEDGER_PAGE_EVENTS_MAX: usize = 1000;
