//! `GET /api/v1/agents/{asn}/trust-score`: an agent's trust score (`verifier::trust`, formula
//! in docs/TRUST_SCORE.md) at the ledger position it was computed at, with its inputs, so that
//! a third party can recompute it from the verified history.
//!
//! The score is read from per-agent, per-day severity counts that the state machine keeps in
//! the same apply batch as the events (`sm_trust`): at most `WINDOW_DAYS` reads, whatever
//! the agent's history.

use std::sync::Arc;

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use raft_store::Ledger;
use serde::Deserialize;
use serde::Serialize;
use verifier::trust;

use crate::ApiError;
use crate::Backend;
use crate::Consistency;
use crate::auth;
use crate::events::parse_consistency;
use crate::events::rfc3339_ms;
use crate::events::validate_asn;

/// The version of the formula, named in every answer.
pub const TRUST_FORMULA: &str = "asn-ledger/trust/v1";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrustParams {
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// The ledger position a score was computed at.
#[derive(Serialize, utoipa::ToSchema)]
struct Position {
    /// The ledger's size: the `seq` of its last event, the size of the checkpoint to check it
    /// against.
    seq: u64,
    head_hash: String,
    /// `created_at` of event `seq`: the time recency is measured from.
    time: String,
    time_ms: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DayView {
    date: String,
    day: i64,
    recency: u128,
    info: u64,
    warning: u64,
    error: u64,
    critical: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Inputs {
    window_days: i64,
    window_start: String,
    window_end: String,
    agent_events_total: u64,
    events_in_window: u128,
    good: u128,
    bad: u128,
    prior_good: u128,
    prior_weight: u128,
    severity_penalty: [u128; 4],
    days: Vec<DayView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TrustView {
    asn: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    deactivated_at: Option<String>,
    trust_score: u64,
    formula: &'static str,
    position: Position,
    inputs: Inputs,
}

fn date_of_day(day: i64) -> String {
    let mut text = rfc3339_ms(day.saturating_mul(trust::DAY_MS));
    text.truncate(10);
    text
}

/// The consistent inputs of `asn`'s score, or 503 if its events kept changing under the read.
fn inputs(ledger: &Ledger, asn: &str) -> Result<raft_store::TrustInputs, ApiError> {
    ledger.trust_inputs(asn)?.ok_or_else(|| {
        ApiError::unavailable(format!(
            "asn: the events of {asn} changed under {} reads; try again",
            raft_store::TRUST_READ_ATTEMPTS_MAX
        ))
    })
}

/// The trust score of `asn` at this node's current position (for the agent resource).
pub fn agent_score(ledger: &Ledger, asn: &str) -> Result<u64, ApiError> {
    let inputs = inputs(ledger, asn)?;
    Ok(trust::score(inputs.head.last_created_at_ms, &inputs.days).score)
}

/// `GET /api/v1/agents/{asn}/trust-score` (public).
#[utoipa::path(
    get,
    path = "/api/v1/agents/{asn}/trust-score",
    tag = "activity",
    security((), ("api_key" = [])),
    params(("asn" = String, Path, description = "The agent's ASN.", pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$", example = "ASN-2026-0384-7721-T"), TrustParams),
    responses(
        (status = 200, description = "The agent's trust score at the ledger position it names, with its inputs (docs/TRUST_SCORE.md).", body = TrustView),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: an Authorization header with no valid API key.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has this ASN.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn trust_score<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(asn): Path<String>,
    crate::extract::Query(params): crate::extract::Query<TrustParams>,
) -> Result<Response, ApiError> {
    validate_asn(&asn, "asn")?;
    if parse_consistency(params.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    // After the barrier: a key revoked before this read started is refused.
    auth::authenticate_local(backend.as_ref(), &headers)?;
    let ledger = backend.ledger();
    let agent = ledger
        .agent(&asn)?
        .ok_or_else(|| ApiError::not_found(format!("asn: agent {asn} not found")))?;
    let inputs = inputs(ledger, &asn)?;
    let as_of_ms = inputs.head.last_created_at_ms;
    let as_of_day = trust::day_of(as_of_ms);
    let result = trust::score(as_of_ms, &inputs.days);
    let days = inputs
        .days
        .iter()
        .filter_map(|day| {
            let recency = trust::recency(as_of_day, day.day)?;
            Some(DayView {
                date: date_of_day(day.day),
                day: day.day,
                recency,
                info: day.counts[0],
                warning: day.counts[1],
                error: day.counts[2],
                critical: day.counts[3],
            })
        })
        .collect();
    let view = TrustView {
        asn: agent.asn.clone(),
        status: agent.status.as_str(),
        deactivated_at: agent.deactivated_at_ms.map(rfc3339_ms),
        trust_score: result.score,
        formula: TRUST_FORMULA,
        position: Position {
            seq: inputs.head.size,
            head_hash: hex::encode(inputs.head.head_hash),
            time: rfc3339_ms(as_of_ms),
            time_ms: as_of_ms,
        },
        inputs: Inputs {
            window_days: trust::WINDOW_DAYS,
            window_start: date_of_day(as_of_day.saturating_sub(trust::WINDOW_DAYS - 1)),
            window_end: date_of_day(as_of_day),
            agent_events_total: inputs.agent_events,
            events_in_window: result.events_in_window,
            good: result.good,
            bad: result.bad,
            prior_good: trust::PRIOR_GOOD,
            prior_weight: trust::PRIOR_WEIGHT,
            severity_penalty: trust::SEVERITY_PENALTY,
            days,
        },
    };
    Ok(Json(view).into_response())
}
