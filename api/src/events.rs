//! Event routes: report one, report a batch, an agent's activity, the ledger in `seq` order.

use std::sync::Arc;

use crate::extract::Path;
use crate::extract::Query;
use axum::Json;
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
use crate::answer_group::GroupSeat;
use crate::auth;
use crate::limits::*;

/// Parses a JSON body, with our error envelope instead of axum's plain-text rejection.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("body: invalid JSON: {e}")))
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

/// `consistency=linearizable|local` (default linearizable).
pub fn parse_consistency(text: Option<&str>) -> Result<Consistency, ApiError> {
    match text {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("local") => Ok(Consistency::Local),
        Some(_) => Err(ApiError::validation(
            "consistency: must be linearizable or local",
        )),
    }
}

pub fn rfc3339_ms(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::from("invalid-time"),
    }
}

/// The cluster's origin line in checkpoints: `asn-ledger/<cluster id>`.
pub fn origin(cluster_id: &str) -> String {
    format!("asn-ledger/{cluster_id}")
}

/// The signed-note key name of a node: `<origin>/node-<id>`.
pub fn key_name(origin: &str, node_id: u64) -> String {
    format!("{origin}/node-{node_id}")
}

/// The names a node's signatures are known by, derived from the cluster id, which never
/// changes once the cluster is initialised: worked out once per node, not per answer.
#[derive(Debug, Clone)]
pub struct SignerName {
    pub origin: String,
    pub name: String,
    /// The signed-note key id of `name` and this node's public key, in hex, as answers show it.
    pub key_id_hex: String,
}

/// How this node signs what it serves: its key, and the name and id other parties know it by.
pub struct Signing<'a> {
    /// Stops this node when an event it was about to serve does not verify.
    pub fail_stop: Box<dyn Fn(String) + Send + Sync + 'a>,
    /// The names, kept by the backend.
    pub signer: &'a SignerName,
    pub key: &'a ed25519_dalek::SigningKey,
}

impl<'a> Signing<'a> {
    pub fn of(backend: &'a impl Backend) -> Result<Self, ApiError> {
        let cache = backend.signer_name();
        let signer = match cache.get() {
            Some(signer) => signer,
            None => {
                let cluster = backend
                    .ledger()
                    .cluster()?
                    .ok_or_else(|| ApiError::unavailable("the cluster is not initialised yet"))?;
                let origin = origin(&cluster.cluster_id);
                let name = key_name(&origin, backend.node_id());
                let key = backend.signing_key();
                let key_id = verifier::note::key_id(&name, &key.verifying_key().to_bytes());
                // Another request may have set it meanwhile, to the same value.
                let _ = cache.set(SignerName {
                    origin,
                    name,
                    key_id_hex: hex::encode(key_id),
                });
                cache
                    .get()
                    .ok_or_else(|| ApiError::internal("the signer's name was not kept"))?
            }
        };
        Ok(Self {
            fail_stop: Box::new(|reason| backend.fail_stop(reason)),
            signer,
            key: backend.signing_key(),
        })
    }
}

/// Lower-case hex of `bytes`, through a byte buffer (`hex::encode` pushes one `char` at a
/// time: a measurable share of a report's answer, which holds five of them).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut buffer = vec![0u8; bytes.len() * 2];
    if hex::encode_to_slice(bytes, &mut buffer).is_err() {
        return hex::encode(bytes);
    }
    String::from_utf8(buffer).unwrap_or_else(|_| hex::encode(bytes))
}

/// An event as the API shows it: the spec's fields, then the ledger's (`asn`, `seq`, the chain
/// links, and the answering node's signature over `hash`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventView<'a> {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub agent_id: String,
    #[schema(value_type = String)]
    pub event_type: &'a str,
    #[schema(schema_with = crate::openapi::severity_schema)]
    pub severity: &'static str,
    #[schema(value_type = Object)]
    pub metadata: &'a RawValue,
    /// `operator`, or `admin` for an admin key.
    #[schema(value_type = String)]
    pub reported_by: &'a str,
    /// When the leader proposed it, RFC 3339 with milliseconds, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$")]
    pub asn: &'a str,
    /// Position in the ledger, dense from 1.
    #[schema(minimum = 1)]
    pub seq: u64,
    /// SHA-256 (hex) of the event's encoding v1 (docs/VERIFYING.md).
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub hash: String,
    /// `hash` of event `seq - 1` (zeros for the first).
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub prev_hash: String,
    /// `hash` of the agent's previous event (zeros for its first).
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub agent_prev_hash: String,
    /// Ed25519 signature (hex) over `asn-ledger/event-signature/v1\0 || hash`, or, with
    /// `signature_proof`, over the root of the answer group the event's answer belongs to.
    /// Every event a node serves carries one, except in a batch answer, where only the last
    /// event does: its `hash` commits through `prev_hash` to every event of the batch before it
    /// (docs/VERIFYING.md section 9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The signer's key name, as listed by `GET /api/v1/ledger/keys`; present with `signature`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The signer's C2SP key id (hex); present with `signature`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Present when `signature` is an answer group's (answers the node made at the same time
    /// share one signature): the inclusion proof of `SHA-256(0x00 || hash)` in the group's
    /// Merkle tree, whose root, with the group's size, the signature covers
    /// (docs/VERIFYING.md section 9).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::ledger::InclusionProofView>)]
    pub signature_proof: Option<verifier::proof::InclusionProof>,
}

/// How an event served is signed.
#[derive(Clone, Copy)]
pub(crate) enum Sign<'s> {
    /// Not at all (the events of a batch answer but its last).
    No,
    /// With a signature of its own.
    Alone,
    /// With its answer group's signature and its proof in the group; alone if the seat is not
    /// this event's.
    InGroup(&'s GroupSeat),
}

/// One event to report. Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReportEvent {
    #[schema(schema_with = crate::openapi::asn_schema)]
    asn: String,
    #[schema(schema_with = crate::openapi::event_type_schema)]
    event_type: String,
    /// Default `info`.
    #[schema(schema_with = crate::openapi::severity_schema, required = false)]
    severity: Option<String>,
    /// Default `{}`.
    #[schema(schema_with = crate::openapi::metadata_schema, required = false)]
    metadata: Option<Value>,
}

/// A batch of events, recorded all together or not at all. Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReportBatch {
    #[schema(schema_with = crate::openapi::batch_events_schema)]
    events: Vec<ReportEvent>,
}

/// The events a batch appended, in ledger order (consecutive `seq`). Only the last carries a
/// signature: each event's `hash` commits to `prev_hash`, the `hash` of the event before it, so
/// one signature over the last vouches for the whole batch, and an answer of 1,000 events costs
/// one signature instead of 1,000 (docs/VERIFYING.md section 9).
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAppended<'a> {
    pub data: Vec<EventView<'a>>,
}

impl<'a> EventView<'a> {
    /// Checks the event's hash before serving it (a node never serves, nor signs, an event that
    /// does not verify) and signs it.
    pub fn new(event: &'a Event, signing: &Signing<'_>) -> Result<Self, ApiError> {
        Self::checked(event, signing, Sign::Alone)
    }

    /// As [`EventView::new`], signed as `sign` says.
    pub(crate) fn checked(
        event: &'a Event,
        signing: &Signing<'_>,
        sign: Sign<'_>,
    ) -> Result<Self, ApiError> {
        if raft_store::chain::event_hash(event) != event.hash {
            let reason = format!(
                "event {} does not match its hash: this node's store is damaged",
                event.seq
            );
            (signing.fail_stop)(reason.clone());
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CORRUPTED",
                reason,
            ));
        }
        let metadata: &RawValue = serde_json::from_str(&event.metadata_json).map_err(|e| {
            ApiError::internal(format!(
                "stored metadata of event {} is not JSON: {e}",
                event.seq
            ))
        })?;
        let (signature, signature_proof) = match sign {
            Sign::No => (None, None),
            Sign::InGroup(seat) if seat.holds(&event.hash) => {
                let (signature, proof) = seat.sign(signing.key)?;
                (Some(signature), Some(proof))
            }
            Sign::Alone | Sign::InGroup(_) => (
                Some(hex_lower(&verifier::event::sign(&event.hash, signing.key))),
                None,
            ),
        };
        let signed = signature.is_some();
        Ok(Self {
            id: uuid::Uuid::from_bytes(event.id).to_string(),
            agent_id: uuid::Uuid::from_bytes(event.agent_id).to_string(),
            event_type: &event.event_type,
            severity: event.severity.as_str(),
            metadata,
            reported_by: &event.reported_by,
            created_at: rfc3339_ms(event.created_at_ms),
            asn: &event.asn,
            seq: event.seq,
            hash: hex_lower(&event.hash),
            prev_hash: hex_lower(&event.prev_hash),
            agent_prev_hash: hex_lower(&event.agent_prev_hash),
            signature,
            signer: signed.then(|| signing.signer.name.clone()),
            key_id: signed.then(|| signing.signer.key_id_hex.clone()),
            signature_proof,
        })
    }
}

/// The views of a page of events: each checked against its hash; signed together, in answer
/// groups of at most `ANSWER_GROUP_ANSWERS_MAX` events (one signature each, and each event's
/// proof in its group), or alone when a group would hold one event.
pub fn views<'a>(
    events: &'a [Event],
    signing: &Signing<'_>,
) -> Result<Vec<EventView<'a>>, ApiError> {
    let mut views = Vec::with_capacity(events.len());
    for chunk in events.chunks(crate::answer_group::ANSWER_GROUP_ANSWERS_MAX) {
        match crate::answer_group::AnswerGroup::seats(chunk) {
            Some(seats) => {
                for (event, seat) in chunk.iter().zip(&seats) {
                    views.push(EventView::checked(event, signing, Sign::InGroup(seat))?);
                }
            }
            None => {
                for event in chunk {
                    views.push(EventView::new(event, signing)?);
                }
            }
        }
    }
    Ok(views)
}

/// The views of a batch's events (consecutive in the ledger): each checked against its hash,
/// only the last signed (in its answer group, with `seat`), since its hash commits to the
/// others through `prev_hash`.
pub fn batch_views<'a>(
    events: &'a [Event],
    signing: &Signing<'_>,
    seat: Option<&GroupSeat>,
) -> Result<Vec<EventView<'a>>, ApiError> {
    let last = events.len().saturating_sub(1);
    // The results may come from the leader over gRPC: a break in the chain is an error, not a
    // panic, and without the chain the one signature would not cover the batch.
    if let Some(pair) = events.windows(2).find(|pair| {
        pair[0].seq.checked_add(1) != Some(pair[1].seq) || pair[1].prev_hash != pair[0].hash
    }) {
        return Err(ApiError::internal(format!(
            "the batch's events are not one chain: seq {} follows seq {}",
            pair[1].seq, pair[0].seq
        )));
    }
    events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let sign = match seat {
                _ if index != last => Sign::No,
                Some(seat) => Sign::InGroup(seat),
                None => Sign::Alone,
            };
            EventView::checked(event, signing, sign)
        })
        .collect()
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// An ASN must be well formed (`ASN-YYYY-DDDD-DDDD-L`, check letter included).
pub fn validate_asn(asn: &str, field: &str) -> Result<(), ApiError> {
    if raft_store::asn::is_valid(asn) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field}: must be an ASN like ASN-2026-0384-7721-T with a valid check letter"
        )))
    }
}

fn validate_event_type(event_type: &str, field: &str) -> Result<(), ApiError> {
    let chars = event_type.chars().count();
    if chars == 0 || chars > EVENT_TYPE_CHARS_MAX {
        return Err(ApiError::validation(format!(
            "{field}: must be 1 to {EVENT_TYPE_CHARS_MAX} characters, got {chars}"
        )));
    }
    if event_type.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// Validates one event object of a request; `prefix` names it in messages (`""` or
/// `"events[3]."`).
pub fn validate_event(value: &Value, prefix: &str) -> Result<NewEvent, ApiError> {
    let object = value.as_object().ok_or_else(|| {
        let name = if prefix.is_empty() {
            "body"
        } else {
            prefix.trim_end_matches('.')
        };
        ApiError::validation(format!("{name}: must be a JSON object"))
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
    validate_event_type(&event_type, &format!("{prefix}event_type"))?;
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
            // Stored and hashed as RFC 8785 canonical JSON, so anyone can recompute the hash.
            let text = verifier::canonical::canonical_json(metadata)
                .map_err(|e| ApiError::validation(format!("{prefix}metadata: {e}")))?;
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
/// when the client sends one, [`crate::generated_dedup_key`] otherwise (then only our own
/// internal retries dedupe).
/// The body hash is over the validated events, so formatting does not matter.
fn tx_key(
    headers: &HeaderMap,
    key: &ApiKeyRecord,
    events: &[NewEvent],
    ledger: &raft_store::Ledger,
) -> Result<TxKey, ApiError> {
    let encoded = postcard::to_stdvec(events).map_err(|e| ApiError::internal(e.to_string()))?;
    let body_hash: [u8; 32] = sha2::Sha256::digest(encoded).into();
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
        None => crate::generated_dedup_key(ledger),
    };
    Ok(TxKey {
        dedup_key,
        body_hash,
    })
}

/// A key that may report activity (the agent's ownership is checked when applied).
async fn require_reporter(
    backend: &impl Backend,
    headers: &HeaderMap,
) -> Result<ApiKeyRecord, ApiError> {
    let key = auth::require_key(backend, headers).await?;
    let allowed = [
        Permission::Admin,
        Permission::Write,
        Permission::ActivityReport,
    ];
    if !key.permissions.iter().any(|p| allowed.contains(p)) {
        return Err(ApiError::forbidden(
            "Authorization: reporting activity needs the activity:report or write permission",
        ));
    }
    Ok(key)
}

async fn append(
    backend: &impl Backend,
    headers: &HeaderMap,
    key: &ApiKeyRecord,
    events: Vec<NewEvent>,
) -> Result<(Vec<Event>, Option<GroupSeat>), ApiError> {
    let tx = tx_key(headers, key, &events, backend.ledger())?;
    let command = Command::AppendEvents {
        by: key.id.clone(),
        events,
    };
    match backend
        .submit_answer(raft_store::Proposal { tx, command })
        .await?
    {
        (CommandResult::Appended { events, .. }, seat) => Ok((events, seat)),
        (CommandResult::Rejected { code, message }, _) => Err(ApiError::from_reject(code, message)),
        (other, _) => Err(ApiError::internal(format!(
            "unexpected result for an append: {other:?}"
        ))),
    }
}

/// `POST /api/v1/activity/report`.
#[utoipa::path(
    post,
    path = "/api/v1/activity/report",
    tag = "activity",
    security(("api_key" = [])),
    params(IdempotencyHeader),
    request_body = ReportEvent,
    responses(
        (status = 201, description = "Recorded (committed on a majority and applied).", body = EventView),
        (status = 400, description = "VALIDATION_ERROR: the body, a field or Idempotency-Key is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key may not report, or not for this agent.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has this ASN.", body = crate::openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the Idempotency-Key was used with another body.", body = crate::openapi::ErrorBody),
        (status = 410, description = "AGENT_DEACTIVATED: the agent is deactivated.", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is larger than REQUEST_BODY_BYTES_MAX.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn report<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let key = require_reporter(backend.as_ref(), &headers).await?;
    let body = read_body(body).await?;
    let value: Value = parse_json(&body)?;
    let event = validate_event(&value, "")?;
    let (events, seat) = append(backend.as_ref(), &headers, &key, vec![event]).await?;
    let event = events
        .first()
        .ok_or_else(|| ApiError::internal("the ledger appended no event"))?;
    let sign = seat.as_ref().map_or(Sign::Alone, Sign::InGroup);
    Ok((
        StatusCode::CREATED,
        Json(EventView::checked(
            event,
            &Signing::of(backend.as_ref())?,
            sign,
        )?),
    )
        .into_response())
}

/// `POST /api/v1/activity/report/batch`: all events or none, as one Raft command.
#[utoipa::path(
    post,
    path = "/api/v1/activity/report/batch",
    tag = "activity",
    security(("api_key" = [])),
    params(IdempotencyHeader),
    request_body = ReportBatch,
    responses(
        (status = 201, description = "All recorded, in order.", body = BatchAppended),
        (status = 400, description = "VALIDATION_ERROR: the body, a field (events[i].field) or Idempotency-Key is invalid.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key may not report, or not for one of the agents.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has one of the ASNs.", body = crate::openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the Idempotency-Key was used with another body.", body = crate::openapi::ErrorBody),
        (status = 410, description = "AGENT_DEACTIVATED: one of the agents is deactivated.", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is larger than REQUEST_BODY_BYTES_MAX.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn report_batch<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let key = require_reporter(backend.as_ref(), &headers).await?;
    let body = read_body(body).await?;
    let value: Value = parse_json(&body)?;
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::validation("body: must be a JSON object"))?;
    if let Some(field) = object.keys().find(|k| k.as_str() != "events") {
        return Err(ApiError::validation(format!("{field}: unknown field")));
    }
    let items = match object.get("events") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::validation("events: must be an array")),
        None => return Err(ApiError::validation("events: required")),
    };
    if items.is_empty() || items.len() > BATCH_EVENTS_MAX {
        return Err(ApiError::validation(format!(
            "events: must hold 1 to {BATCH_EVENTS_MAX} events, got {}",
            items.len()
        )));
    }
    let events = items
        .iter()
        .enumerate()
        .map(|(index, item)| validate_event(item, &format!("events[{index}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let (events, seat) = append(backend.as_ref(), &headers, &key, events).await?;
    Ok((
        StatusCode::CREATED,
        Json(BatchAppended {
            data: batch_views(&events, &Signing::of(backend.as_ref())?, seat.as_ref())?,
        }),
    )
        .into_response())
}

/// The `Idempotency-Key` header of the reporting routes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyHeader {
    /// Retrying with the same key and body returns the first answer instead of appending
    /// again (scoped to the API key); the same key with another body is 409.
    /// At most `IDEMPOTENCY_KEY_BYTES_MAX` bytes of visible ASCII.
    #[param(rename = "Idempotency-Key", schema_with = crate::openapi::idempotency_key_schema)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityParams {
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", schema_with = crate::openapi::event_type_schema)]
    event_type: Option<String>,
    /// Events created at or after this time.
    #[param(schema_with = crate::openapi::time_schema)]
    from: Option<String>,
    /// Events created at or before this time.
    #[param(schema_with = crate::openapi::time_schema)]
    to: Option<String>,
    #[param(schema_with = crate::openapi::page_schema)]
    page: Option<String>,
    /// Events per page.
    #[param(schema_with = crate::openapi::per_page_schema)]
    per_page: Option<String>,
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
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

/// An ISO 8601 date-time (RFC 3339) or a date. A date means its first millisecond (for `from`)
/// or its last (for `to`), UTC.
fn parse_time(text: &str, field: &str, end_of_day: bool) -> Result<i64, ApiError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let time = if end_of_day {
            date.and_hms_milli_opt(23, 59, 59, 999)
        } else {
            date.and_hms_milli_opt(0, 0, 0, 0)
        };
        if let Some(time) = time {
            return Ok(time.and_utc().timestamp_millis());
        }
    }
    Err(ApiError::validation(format!(
        "{field}: must be an ISO 8601 date-time like 2026-03-18T14:30:00Z or a date like 2026-03-18"
    )))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Pagination {
    page: u32,
    per_page: u32,
    total: u64,
    total_pages: u64,
}

/// A page of an agent's activity, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivityPage<'a> {
    pub data: Vec<EventView<'a>>,
    pub pagination: Pagination,
}

/// `GET /api/v1/agents/{asn}/activity`: newest first. Without a key, or with a key that may not
/// read the agent's full history, only the `PUBLIC_WINDOW_EVENTS` most recent matching events
/// exist; the owner's `read` or `write` keys, and admin keys, see everything.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{asn}/activity",
    tag = "activity",
    security((), ("api_key" = [])),
    params(("asn" = String, Path, description = "The agent's ASN.", pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$", example = "ASN-2026-0384-7721-T"), ActivityParams),
    responses(
        (status = 200, description = "A page of events, newest first. Without a key that may read the agent's full history (its owner's read or write keys, admin keys), only the PUBLIC_WINDOW_EVENTS most recent matching events exist.", body = ActivityPage),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: an Authorization header with no valid API key.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has this ASN.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn agent_activity<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(asn): Path<String>,
    Query(params): Query<ActivityParams>,
) -> Result<Response, ApiError> {
    validate_asn(&asn, "asn")?;
    if let Some(event_type) = &params.event_type {
        validate_event_type(event_type, "type")?;
    }
    let from_ms = params
        .from
        .as_deref()
        .map(|t| parse_time(t, "from", false))
        .transpose()?;
    let to_ms = params
        .to
        .as_deref()
        .map(|t| parse_time(t, "to", true))
        .transpose()?;
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from > to
    {
        return Err(ApiError::validation("from: must not be later than to"));
    }
    let page = parse_positive(params.page.as_deref(), "page", 1, u32::MAX)?;
    let per_page = parse_positive(
        params.per_page.as_deref(),
        "per_page",
        PAGE_EVENTS_DEFAULT,
        PAGE_EVENTS_MAX,
    )?;
    if parse_consistency(params.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    // After the barrier: a key revoked before this read started is refused.
    let key = auth::authenticate_local(backend.as_ref(), &headers)?;
    let ledger = backend.ledger();
    let agent = ledger
        .agent(&asn)?
        .ok_or_else(|| ApiError::not_found(format!("asn: agent {asn} not found")))?;
    let full_history = key.is_some_and(|key| {
        key.is_admin()
            || (key.operator_id.as_deref() == Some(agent.owner_id.as_str())
                && (key.has(Permission::Read) || key.has(Permission::Write)))
    });
    let result = ledger.agent_activity(raft_store::ActivityQuery {
        asn: &asn,
        event_type: params.event_type.as_deref(),
        from_ms,
        to_ms,
        window: if full_history {
            None
        } else {
            Some(PUBLIC_WINDOW_EVENTS)
        },
        skip: u64::from(page - 1) * u64::from(per_page),
        limit: per_page as usize,
    })?;
    let body = ActivityPage {
        data: views(&result.events, &Signing::of(backend.as_ref())?)?,
        pagination: Pagination {
            page,
            per_page,
            total: result.total,
            total_pages: result.total.div_ceil(u64::from(per_page)),
        },
    };
    Ok(Json(body).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// The first `seq` to return (default 1).
    #[param(schema_with = crate::openapi::positive_schema)]
    from_seq: Option<String>,
    /// Events to return at most.
    #[param(schema_with = crate::openapi::ledger_limit_schema)]
    limit: Option<String>,
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// A page of the ledger in `seq` order, with the head it was read at.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LedgerPage<'a> {
    pub events: Vec<EventView<'a>>,
    /// Events in the ledger.
    pub size: u64,
    /// `hash` of the last event (zeros when empty).
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub head_hash: String,
}

/// `GET /api/v1/ledger/events`: the whole ledger in `seq` order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/events",
    tag = "ledger",
    params(LedgerParams),
    responses(
        (status = 200, description = "Up to limit events from from_seq on.", body = LedgerPage),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn ledger_events<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(params): Query<LedgerParams>,
) -> Result<Response, ApiError> {
    let from_seq = match params.from_seq.as_deref() {
        None => 1,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(ApiError::validation("from_seq: must be a positive integer")),
        },
    };
    let limit = parse_positive(
        params.limit.as_deref(),
        "limit",
        LEDGER_PAGE_EVENTS_DEFAULT,
        LEDGER_PAGE_EVENTS_MAX as u32,
    )? as usize;
    if parse_consistency(params.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let events = ledger.events_from(from_seq, limit)?;
    let body = LedgerPage {
        events: views(&events, &Signing::of(backend.as_ref())?)?,
        size: head.size,
        head_hash: hex::encode(head.head_hash),
    };
    Ok(Json(body).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeadParams {
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// The ledger's head.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LedgerHeadView {
    /// Events in the ledger.
    pub size: u64,
    /// `hash` of the last event (zeros when empty).
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub head_hash: String,
    /// The Raft log index this node has applied (null before the first).
    pub applied_index: Option<u64>,
}

/// `GET /api/v1/ledger/head`.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/head",
    tag = "ledger",
    params(HeadParams),
    responses(
        (status = 200, description = "The head.", body = LedgerHeadView),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn ledger_head<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(params): Query<HeadParams>,
) -> Result<Response, ApiError> {
    if parse_consistency(params.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let applied_index = ledger.last_applied()?.map(|log_id| log_id.index);
    let body = LedgerHeadView {
        size: head.size,
        head_hash: hex::encode(head.head_hash),
        applied_index,
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::SignerName;
    use super::Signing;
    use super::batch_views;
    use super::hex_lower;
    use raft_store::types::Event;
    use raft_store::types::Severity;

    /// A chain of `count` events from seq 1, each hash computed as a node computes it.
    pub(crate) fn chain(count: u64) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        for seq in 1..=count {
            let mut event = Event {
                seq,
                id: [seq as u8; 16],
                agent_id: [7; 16],
                asn: "ASN-2026-0004-8271-L".into(),
                event_type: "task_completed".into(),
                severity: Severity::Info,
                metadata_json: format!(r#"{{"n":{seq}}}"#),
                reported_by: "operator".into(),
                created_at_ms: 1_780_000_000_000 + seq as i64,
                prev_hash: events.last().map_or([0; 32], |e| e.hash),
                agent_prev_hash: events.last().map_or([0; 32], |e| e.hash),
                hash: [0; 32],
            };
            event.hash = raft_store::chain::event_hash(&event);
            events.push(event);
        }
        events
    }

    /// A node's signing key and names, for [`Signing`].
    struct Node {
        key: ed25519_dalek::SigningKey,
        name: SignerName,
    }

    impl Node {
        fn new() -> Self {
            Self {
                key: ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
                name: SignerName {
                    origin: "asn-ledger/test".into(),
                    name: "asn-ledger/test/node-1".into(),
                    key_id_hex: "00000000".into(),
                },
            }
        }

        fn signing(&self) -> Signing<'_> {
            Signing {
                fail_stop: Box::new(|reason| panic!("fail-stop: {reason}")),
                signer: &self.name,
                key: &self.key,
            }
        }
    }

    #[test]
    fn a_batch_answer_signs_its_last_event_and_the_chain_covers_the_rest() {
        let node = Node::new();
        let signing = node.signing();
        let events = chain(5);
        let views = batch_views(&events, &signing, None).expect("a chain of 5");
        assert_eq!(views.len(), 5);
        for view in &views[..4] {
            assert!(view.signature.is_none() && view.signer.is_none() && view.key_id.is_none());
            let json = serde_json::to_value(view).expect("serialisable");
            assert!(json.get("signature").is_none(), "{json}");
        }
        let last = &views[4];
        let signature: [u8; 64] = hex::decode(last.signature.as_deref().expect("signed"))
            .expect("hex")
            .try_into()
            .expect("64 bytes");
        verifier::event::verify_signature(
            &events[4].hash,
            &signature,
            &node.key.verifying_key().to_bytes(),
        )
        .expect("the last event's signature verifies");
        assert_eq!(last.signer.as_deref(), Some(node.name.name.as_str()));
        // What a client checks besides: each hash (the views show the stored ones, checked
        // against the events) and each link.
        for (view, event) in views.iter().zip(&events) {
            assert_eq!(view.hash, hex::encode(raft_store::chain::event_hash(event)));
        }
        for pair in views.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
        // A batch of one is signed too.
        let one = batch_views(&events[..1], &signing, None).expect("one event");
        assert!(one[0].signature.is_some());
    }

    /// A page's events share one signature, each with its proof; the page of one event is
    /// signed alone; a page larger than a group makes several groups.
    #[test]
    fn a_page_is_signed_in_answer_groups() {
        let node = Node::new();
        let signing = node.signing();
        let public = node.key.verifying_key().to_bytes();
        let limit = crate::answer_group::ANSWER_GROUP_ANSWERS_MAX;
        for count in [1, 2, 5, limit as u64 + 3] {
            let events = chain(count);
            let views = super::views(&events, &signing).expect("a page");
            let mut signatures = std::collections::BTreeSet::new();
            for (index, (view, event)) in views.iter().zip(&events).enumerate() {
                let signature: [u8; 64] = hex::decode(view.signature.as_deref().expect("signed"))
                    .expect("hex")
                    .try_into()
                    .expect("64 bytes");
                signatures.insert(signature);
                let proof = view.signature_proof.as_ref().map(|proof| {
                    verifier::proof::InclusionProof::from_json_value(
                        serde_json::to_value(proof).expect("serializes"),
                    )
                    .expect("section 7's JSON")
                });
                let group_size = if index < limit {
                    count.min(limit as u64)
                } else {
                    3
                };
                assert_eq!(
                    proof.as_ref().map(|p| p.tree_size),
                    (count > 1).then_some(group_size),
                    "event {index} of {count}"
                );
                verifier::event::verify_answer_signature(
                    &event.hash,
                    &signature,
                    proof.as_ref(),
                    &public,
                )
                .expect("every event's signature verifies");
            }
            let groups = if count as usize > limit { 2 } else { 1 };
            assert_eq!(signatures.len(), groups, "signatures for a page of {count}");
        }
    }

    #[test]
    fn a_batch_whose_events_are_not_one_chain_is_not_served() {
        let node = Node::new();
        let signing = node.signing();
        let mut events = chain(4);
        events.remove(2);
        let error = batch_views(&events, &signing, None)
            .err()
            .expect("a gap is refused");
        assert!(error.message.contains("seq 4 follows seq 2"), "{error:?}");
    }

    #[test]
    fn hex_lower_is_what_hex_encode_gives() {
        for bytes in [
            Vec::new(),
            vec![0x00],
            vec![0xff, 0x0a, 0xa0],
            (0u8..=255).collect(),
        ] {
            assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        }
    }
}
