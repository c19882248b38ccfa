//! Event routes: report, the agent's activity, and the raw ledger in `seq` order.

use std::sync::Arc;

use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use chrono::SecondsFormat;
use raft_store::ApiKeyRecord;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::Event;
use raft_store::NewEvent;
use raft_store::Permission;
use raft_store::Severity;
use raft_store::TxKey;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Digest;

use crate::ApiError;
use crate::Backend;
use crate::Consistency;
use crate::auth;
use crate::limits::*;

/// Parses a JSON body, with our error envelope instead of axum's plain-text rejection.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("body: invalid JSON: {e}")))
}

/// An event as the API shows it.
#[derive(Serialize)]
pub struct EventView<'a> {
    pub id: String,
    pub asn: &'a str,
    pub event_type: &'a str,
    pub severity: &'static str,
    pub metadata: &'a RawValue,
    pub reported_by: &'a str,
    pub created_at: String,
    pub seq: u64,
    pub hash: String,
    pub prev_hash: String,
}

pub fn rfc3339_ms(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::from("invalid-time"),
    }
}

impl<'a> EventView<'a> {
    pub fn new(event: &'a Event) -> Result<Self, ApiError> {
        let metadata: &RawValue = serde_json::from_str(&event.metadata_json).map_err(|e| {
            ApiError::internal(format!(
                "stored metadata of event {} is not JSON: {e}",
                event.seq
            ))
        })?;
        Ok(Self {
            id: uuid::Uuid::from_bytes(event.id).to_string(),
            asn: &event.asn,
            event_type: &event.event_type,
            severity: event.severity.as_str(),
            metadata,
            reported_by: &event.reported_by,
            created_at: rfc3339_ms(event.created_at_ms),
            seq: event.seq,
            hash: hex::encode(event.hash),
            prev_hash: hex::encode(event.prev_hash),
        })
    }
}

fn views(events: &[Event]) -> Result<Vec<EventView<'_>>, ApiError> {
    events.iter().map(EventView::new).collect()
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn validate_asn(asn: &str, field: &str) -> Result<(), ApiError> {
    if asn.is_empty() || asn.len() > ASN_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "{field}: must be 1 to {ASN_BYTES_MAX} bytes"
        )));
    }
    if !asn.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::validation(format!(
            "{field}: only letters, digits and '-' are allowed"
        )));
    }
    Ok(())
}

/// Validates one event object of a request; `prefix` names it in messages (`""` or
/// `"events[3]."`).
pub fn validate_event(value: &Value, prefix: &str) -> Result<NewEvent, ApiError> {
    let object = value.as_object().ok_or_else(|| {
        ApiError::validation(format!(
            "{}: must be a JSON object",
            prefix.trim_end_matches('.')
        ))
    })?;
    for key in object.keys() {
        if !matches!(key.as_str(), "asn" | "event_type" | "severity" | "metadata") {
            return Err(ApiError::validation(format!(
                "{prefix}{key}: unknown field"
            )));
        }
    }
    let asn = match object.get("asn") {
        Some(Value::String(asn)) => asn.clone(),
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{prefix}asn: must be a string"
            )));
        }
        None => return Err(ApiError::validation(format!("{prefix}asn: required"))),
    };
    validate_asn(&asn, &format!("{prefix}asn"))?;
    let event_type = match object.get("event_type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{prefix}event_type: must be a string"
            )));
        }
        None => {
            return Err(ApiError::validation(format!(
                "{prefix}event_type: required"
            )));
        }
    };
    let chars = event_type.chars().count();
    if chars == 0 || chars > EVENT_TYPE_CHARS_MAX {
        return Err(ApiError::validation(format!(
            "{prefix}event_type: must be 1 to {EVENT_TYPE_CHARS_MAX} characters, got {chars}"
        )));
    }
    if event_type.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{prefix}event_type: control characters are not allowed"
        )));
    }
    let severity = match object.get("severity") {
        None | Some(Value::Null) => Severity::Info,
        Some(Value::String(s)) => Severity::parse(s).ok_or_else(|| {
            ApiError::validation(format!(
                "{prefix}severity: must be one of info, warning, error, critical"
            ))
        })?,
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{prefix}severity: must be a string"
            )));
        }
    };
    let metadata_json = match object.get("metadata") {
        None | Some(Value::Null) => String::from("{}"),
        Some(metadata @ Value::Object(_)) => {
            let depth = json_depth(metadata);
            if depth > METADATA_DEPTH_MAX {
                return Err(ApiError::validation(format!(
                    "{prefix}metadata: nested {depth} levels deep, at most {METADATA_DEPTH_MAX} allowed"
                )));
            }
            let text = metadata.to_string();
            if text.len() > METADATA_BYTES_MAX {
                return Err(ApiError::validation(format!(
                    "{prefix}metadata: {} bytes, at most {METADATA_BYTES_MAX} allowed",
                    text.len()
                )));
            }
            text
        }
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{prefix}metadata: must be a JSON object"
            )));
        }
    };
    Ok(NewEvent {
        asn,
        event_type,
        severity,
        metadata_json,
    })
}

/// The deduplication key of a write: derived from the `Idempotency-Key` header and the API key
/// when the client sends one, random otherwise (then only our own internal retries dedupe).
fn tx_key(headers: &HeaderMap, key: &ApiKeyRecord, events: &[NewEvent]) -> Result<TxKey, ApiError> {
    let body_hash: [u8; 32] =
        sha2::Sha256::digest(postcard::to_stdvec(events).unwrap_or_default()).into();
    let dedup_key = match headers.get("idempotency-key") {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::validation("Idempotency-Key: must be visible ASCII"))?;
            if text.is_empty() || text.len() > IDEMPOTENCY_KEY_BYTES_MAX {
                return Err(ApiError::validation(format!(
                    "Idempotency-Key: must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
                )));
            }
            let mut hasher = sha2::Sha256::new();
            hasher.update(b"asn-ledger/idempotency/v0\0");
            hasher.update(key.id.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.finalize().into()
        }
        None => {
            let mut hasher = sha2::Sha256::new();
            hasher.update(b"asn-ledger/request/v0\0");
            hasher.update(uuid::Uuid::new_v4().as_bytes());
            hasher.finalize().into()
        }
    };
    Ok(TxKey {
        dedup_key,
        body_hash,
    })
}

fn reported_by(key: &ApiKeyRecord) -> &'static str {
    if key.operator_id.is_some() {
        "operator"
    } else {
        "admin"
    }
}

/// `POST /api/v1/activity/report`.
pub async fn report<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let key = auth::require_key(backend.ledger(), &headers)?;
    let body = read_body(body).await?;
    let allowed = [
        Permission::Admin,
        Permission::Write,
        Permission::ActivityReport,
    ];
    if !key.permissions.iter().any(|p| allowed.contains(p)) {
        return Err(ApiError::forbidden(
            "Authorization: this key lacks the activity:report permission",
        ));
    }
    let value: Value = parse_json(&body)?;
    let event = validate_event(&value, "")?;
    let events = vec![event];
    let tx = tx_key(&headers, &key, &events)?;
    let command = Command::AppendEvents {
        tx,
        reported_by: reported_by(&key).to_owned(),
        events,
    };
    match backend.submit(command).await? {
        CommandResult::Appended { events, .. } => match events.first() {
            Some(event) => Ok((StatusCode::CREATED, Json(EventView::new(event)?)).into_response()),
            None => Err(ApiError::internal("the ledger appended no event")),
        },
        CommandResult::Rejected { code, message } => Err(ApiError::from_reject(code, message)),
        CommandResult::Done => Err(ApiError::internal("unexpected result for an append")),
    }
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    page: Option<String>,
    per_page: Option<String>,
    consistency: Option<String>,
}

/// `consistency=linearizable|local` (default linearizable).
fn parse_consistency(text: Option<&str>) -> Result<Consistency, ApiError> {
    match text {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("local") => Ok(Consistency::Local),
        Some(_) => Err(ApiError::validation(
            "consistency: must be linearizable or local",
        )),
    }
}

/// Reads a request body of at most `REQUEST_BODY_BYTES_MAX` bytes; more is a JSON 413.
pub async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("body: larger than {REQUEST_BODY_BYTES_MAX} bytes"),
            )
        })
}

fn parse_positive(
    text: Option<&str>,
    field: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let Some(text) = text else { return Ok(default) };
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(format!(
            "{field}: must be an integer from 1 to {max}"
        ))),
    }
}

#[derive(Serialize)]
struct Pagination {
    page: u32,
    per_page: u32,
    total: u64,
    total_pages: u64,
}

/// `GET /api/v1/agents/{asn}/activity`: newest first.
pub async fn agent_activity<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(asn): Path<String>,
    Query(query): Query<ActivityQuery>,
) -> Result<Response, ApiError> {
    validate_asn(&asn, "asn")?;
    let key = auth::authenticate(backend.ledger(), &headers)?;
    let page = parse_positive(query.page.as_deref(), "page", 1, u32::MAX)?;
    let per_page = parse_positive(
        query.per_page.as_deref(),
        "per_page",
        PAGE_EVENTS_DEFAULT,
        PAGE_EVENTS_MAX,
    )?;
    if parse_consistency(query.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    let ledger = backend.ledger();
    let count = ledger.agent_event_count(&asn)?;
    let full_history = key.is_some_and(|k| k.permissions.contains(&Permission::Admin));
    let total = if full_history {
        count
    } else {
        count.min(PUBLIC_WINDOW_EVENTS)
    };
    let skip = u64::from(page - 1) * u64::from(per_page);
    let limit = if skip >= total {
        0
    } else {
        (total - skip).min(u64::from(per_page)) as usize
    };
    let events = ledger.agent_events_newest_first(&asn, skip, limit)?;
    let body = serde_json::json!({
        "data": views(&events)?,
        "pagination": Pagination { page, per_page, total, total_pages: total.div_ceil(u64::from(per_page)) },
    });
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
pub struct LedgerQuery {
    from_seq: Option<String>,
    limit: Option<String>,
    consistency: Option<String>,
}

/// `GET /api/v1/ledger/events`: the whole ledger in `seq` order, a page at a time.
pub async fn ledger_events<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<LedgerQuery>,
) -> Result<Response, ApiError> {
    let from_seq = match query.from_seq.as_deref() {
        None => 1,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(ApiError::validation("from_seq: must be a positive integer")),
        },
    };
    let limit = parse_positive(
        query.limit.as_deref(),
        "limit",
        100,
        LEDGER_PAGE_EVENTS_MAX as u32,
    )? as usize;
    if parse_consistency(query.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let events = ledger.events_from(from_seq, limit)?;
    let body = serde_json::json!({
        "events": views(&events)?,
        "size": head.size,
        "head_hash": hex::encode(head.head_hash),
    });
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
pub struct HeadQuery {
    consistency: Option<String>,
}

/// `GET /api/v1/ledger/head`.
pub async fn ledger_head<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<HeadQuery>,
) -> Result<Response, ApiError> {
    if parse_consistency(query.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let applied_index = ledger.last_applied()?.map(|log_id| log_id.index);
    let body = serde_json::json!({
        "size": head.size,
        "head_hash": hex::encode(head.head_hash),
        "applied_index": applied_index,
    });
    Ok(Json(body).into_response())
}
