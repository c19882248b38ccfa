//! The parts the spec page presumes: operators, API keys and agents.
//!
//! The receiving node authenticates and checks the permission (fast 401/403); the state
//! machine decides again when the command is applied, against the replicated records.

use std::sync::Arc;

use crate::extract::Path;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use raft_store::AgentRecord;
use raft_store::ApiKeyRecord;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::OperatorRecord;
use raft_store::Permission;
use serde::Deserialize;
use serde::Serialize;

use crate::ApiError;
use crate::Backend;
use crate::Consistency;
use crate::auth;
use crate::events::parse_consistency;
use crate::events::parse_json;
use crate::events::read_body;
use crate::events::rfc3339_ms;
use crate::events::validate_asn;
use crate::limits::NAME_CHARS_MAX;

fn validate_name(name: &str, field: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > NAME_CHARS_MAX {
        return Err(ApiError::validation(format!(
            "{field}: must be 1 to {NAME_CHARS_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

async fn submit(backend: &impl Backend, command: Command) -> Result<CommandResult, ApiError> {
    match backend
        .submit(crate::proposal(backend.ledger(), command))
        .await?
    {
        CommandResult::Rejected { code, message } => Err(ApiError::from_reject(code, message)),
        result => Ok(result),
    }
}

fn unexpected(result: &CommandResult) -> ApiError {
    ApiError::internal(format!("unexpected command result: {result:?}"))
}

/// An operator: an organisation that owns agents and API keys.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Operator)]
struct OperatorView {
    id: String,
    name: String,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<&OperatorRecord> for OperatorView {
    fn from(operator: &OperatorRecord) -> Self {
        Self {
            id: operator.id.clone(),
            name: operator.name.clone(),
            created_at: rfc3339_ms(operator.created_at_ms),
        }
    }
}

/// Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    #[schema(schema_with = crate::openapi::name_schema)]
    name: String,
}

/// `POST /api/v1/operators` (admin).
#[utoipa::path(
    post,
    path = "/api/v1/operators",
    tag = "admin",
    security(("api_key" = [])),
    request_body = CreateOperator,
    responses(
        (status = 201, description = "Created.", body = OperatorView),
        (status = 400, description = "VALIDATION_ERROR: the body or a field is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is larger than REQUEST_BODY_BYTES_MAX.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn create_operator<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let key = auth::require_admin(backend.as_ref(), &headers).await?;
    let request: CreateOperator = parse_json(&read_body(body).await?)?;
    validate_name(&request.name, "name")?;
    match submit(
        backend.as_ref(),
        Command::CreateOperator {
            by: key.id,
            name: request.name,
        },
    )
    .await?
    {
        CommandResult::Operator(operator) => {
            Ok((StatusCode::CREATED, Json(OperatorView::from(&operator))).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

/// `GET /api/v1/operators/{id}` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/operators/{id}",
    tag = "admin",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The operator id.")),
    responses(
        (status = 200, description = "The operator.", body = OperatorView),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no such operator.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn get_operator<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Read barrier first: the key is then checked against every acknowledged write.
    backend.linearize().await?;
    auth::admin_only(
        auth::authenticate_local(backend.as_ref(), &headers)?.ok_or_else(ApiError::unauthorized)?,
    )?;
    let operator = backend
        .ledger()
        .operator(&id)?
        .ok_or_else(|| ApiError::not_found(format!("id: operator {id} not found")))?;
    Ok(Json(OperatorView::from(&operator)).into_response())
}

/// An API key, without its secret (but for the answer that creates it).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ApiKey)]
struct KeyView {
    /// The key id: 16 hex characters, the part of the key after `asn_live_`.
    id: String,
    /// The whole key (the secret), present only in the answer that creates the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    key: Option<String>,
    operator_id: Option<String>,
    name: String,
    #[schema(schema_with = crate::openapi::permissions_schema)]
    permissions: Vec<&'static str>,
    #[schema(format = DateTime)]
    created_at: String,
    revoked: bool,
}

impl KeyView {
    fn new(record: &ApiKeyRecord, secret: Option<String>) -> Self {
        Self {
            id: record.id.clone(),
            key: secret,
            operator_id: record.operator_id.clone(),
            name: record.name.clone(),
            permissions: record.permissions.iter().map(|p| p.as_str()).collect(),
            created_at: rfc3339_ms(record.created_at_ms),
            revoked: record.revoked,
        }
    }
}

/// Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The operator the key acts for; required unless the key has the admin permission.
    #[schema(required = false)]
    operator_id: Option<String>,
    #[schema(schema_with = crate::openapi::name_schema)]
    name: String,
    #[schema(schema_with = crate::openapi::permissions_schema)]
    permissions: Vec<String>,
}

/// `POST /api/v1/keys` (admin): the secret is generated here, shown once, stored as a hash.
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "admin",
    security(("api_key" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` holds the secret, shown only here.", body = KeyView),
        (status = 400, description = "VALIDATION_ERROR: the body or a field is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no such operator.", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is larger than REQUEST_BODY_BYTES_MAX.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn create_key<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let admin = auth::require_admin(backend.as_ref(), &headers).await?;
    let request: CreateKey = parse_json(&read_body(body).await?)?;
    validate_name(&request.name, "name")?;
    if request.permissions.is_empty() {
        return Err(ApiError::validation(
            "permissions: at least one of activity:report, write, read, admin",
        ));
    }
    let mut permissions = Vec::with_capacity(request.permissions.len());
    for (index, text) in request.permissions.iter().enumerate() {
        let permission = Permission::parse(text).ok_or_else(|| {
            ApiError::validation(format!(
                "permissions[{index}]: unknown permission {text:?}; use activity:report, write, read or admin"
            ))
        })?;
        if !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    if request.operator_id.is_none() && !permissions.contains(&Permission::Admin) {
        return Err(ApiError::validation(
            "operator_id: required unless the key has the admin permission",
        ));
    }
    let (id, secret) = auth::generate_key(rand::random(), rand::random());
    let record = ApiKeyRecord {
        id,
        name: request.name,
        operator_id: request.operator_id,
        permissions,
        secret_sha256: auth::hash_secret(&secret),
        created_at_ms: 0,
        revoked: false,
    };
    match submit(
        backend.as_ref(),
        Command::CreateKey {
            by: admin.id,
            key: record,
        },
    )
    .await?
    {
        CommandResult::Key(record) => Ok((
            StatusCode::CREATED,
            Json(KeyView::new(&record, Some(secret))),
        )
            .into_response()),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /api/v1/keys/{id}` (admin): revokes the key. Revoking twice is harmless.
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = "admin",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The key id (16 hex characters).")),
    responses(
        (status = 200, description = "Revoked.", body = KeyView),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no such key.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn revoke_key<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let admin = auth::require_admin(backend.as_ref(), &headers).await?;
    match submit(
        backend.as_ref(),
        Command::RevokeKey {
            by: admin.id,
            key_id: id,
        },
    )
    .await?
    {
        CommandResult::Key(record) => Ok(Json(KeyView::new(&record, None)).into_response()),
        other => Err(unexpected(&other)),
    }
}

/// An agent.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Agent)]
pub struct AgentView {
    #[schema(pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$")]
    asn: String,
    #[schema(format = Uuid)]
    id: String,
    name: String,
    /// The operator that owns it.
    owner_id: String,
    #[schema(schema_with = crate::openapi::agent_status_schema)]
    status: &'static str,
    #[schema(format = DateTime)]
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, required = false)]
    deactivated_at: Option<String>,
    /// The agent's trust score now (docs/TRUST_SCORE.md); only in `GET /api/v1/agents/{asn}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, maximum = 999)]
    trust_score: Option<u64>,
}

impl From<&AgentRecord> for AgentView {
    fn from(agent: &AgentRecord) -> Self {
        Self {
            asn: agent.asn.clone(),
            id: uuid::Uuid::from_bytes(agent.id).to_string(),
            name: agent.name.clone(),
            owner_id: agent.owner_id.clone(),
            status: agent.status.as_str(),
            created_at: rfc3339_ms(agent.created_at_ms),
            deactivated_at: agent.deactivated_at_ms.map(rfc3339_ms),
            trust_score: None,
        }
    }
}

/// Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    #[schema(schema_with = crate::openapi::name_schema)]
    name: String,
    /// The owning operator: required for an admin key without an operator; an operator's key
    /// may only name its own operator.
    #[schema(required = false)]
    owner_id: Option<String>,
}

/// `POST /api/v1/agents`: an admin names the owner; an operator's `write` key owns what it
/// creates.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    tag = "admin",
    security(("api_key" = [])),
    request_body = CreateAgent,
    responses(
        (status = 201, description = "Registered; the cluster assigned its ASN.", body = AgentView),
        (status = 400, description = "VALIDATION_ERROR: the body or a field is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the write permission, or names another operator.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no such operator.", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is larger than REQUEST_BODY_BYTES_MAX.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn create_agent<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let key = auth::require_key(backend.as_ref(), &headers).await?;
    if !key.is_admin() && !key.has(Permission::Write) {
        return Err(ApiError::forbidden(
            "Authorization: creating an agent needs the write permission",
        ));
    }
    let request: CreateAgent = parse_json(&read_body(body).await?)?;
    validate_name(&request.name, "name")?;
    let owner_id = match (key.is_admin(), request.owner_id, key.operator_id.clone()) {
        (true, Some(owner_id), _) => owner_id,
        (true, None, Some(own)) => own,
        (true, None, None) => {
            return Err(ApiError::validation("owner_id: required for an admin key"));
        }
        (false, Some(owner_id), own) => {
            if own.as_deref() != Some(owner_id.as_str()) {
                return Err(ApiError::forbidden(
                    "owner_id: an operator key can only create agents it owns",
                ));
            }
            owner_id
        }
        (false, None, Some(own)) => own,
        (false, None, None) => {
            return Err(ApiError::forbidden(
                "Authorization: this key belongs to no operator",
            ));
        }
    };
    match submit(
        backend.as_ref(),
        Command::CreateAgent {
            by: key.id,
            name: request.name,
            owner_id,
        },
    )
    .await?
    {
        CommandResult::Agent(agent) => {
            Ok((StatusCode::CREATED, Json(AgentView::from(&agent))).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentParams {
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// `GET /api/v1/agents/{asn}` (public): the agent, with its current `trust_score`.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{asn}",
    tag = "admin",
    security((), ("api_key" = [])),
    params(("asn" = String, Path, description = "The agent's ASN.", pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$", example = "ASN-2026-0384-7721-T"), AgentParams),
    responses(
        (status = 200, description = "The agent.", body = AgentView),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: an Authorization header with no valid API key.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has this ASN.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn get_agent<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(asn): Path<String>,
    crate::extract::Query(params): crate::extract::Query<AgentParams>,
) -> Result<Response, ApiError> {
    validate_asn(&asn, "asn")?;
    if parse_consistency(params.consistency.as_deref())? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    // After the barrier: a key revoked before this read started is refused.
    auth::authenticate_local(backend.as_ref(), &headers)?;
    let agent = backend
        .ledger()
        .agent(&asn)?
        .ok_or_else(|| ApiError::not_found(format!("asn: agent {asn} not found")))?;
    let mut view = AgentView::from(&agent);
    view.trust_score = Some(crate::trust::agent_score(backend.ledger(), &asn)?);
    Ok(Json(view).into_response())
}

/// `POST /api/v1/agents/{asn}/deactivate` (the owner's `write` key, or admin).
#[utoipa::path(
    post,
    path = "/api/v1/agents/{asn}/deactivate",
    tag = "admin",
    security(("api_key" = [])),
    params(("asn" = String, Path, description = "The agent's ASN.", pattern = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$", example = "ASN-2026-0384-7721-T")),
    responses(
        (status = 200, description = "Deactivated (or already was): later reports get 410; its history stays readable.", body = AgentView),
        (status = 400, description = "VALIDATION_ERROR: asn is invalid.", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the write permission, or does not own the agent.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no agent has this ASN.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn deactivate_agent<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    Path(asn): Path<String>,
) -> Result<Response, ApiError> {
    let key = auth::require_key(backend.as_ref(), &headers).await?;
    if !key.is_admin() && !key.has(Permission::Write) {
        return Err(ApiError::forbidden(
            "Authorization: deactivating an agent needs the write permission",
        ));
    }
    validate_asn(&asn, "asn")?;
    match submit(
        backend.as_ref(),
        Command::DeactivateAgent { by: key.id, asn },
    )
    .await?
    {
        CommandResult::Agent(agent) => Ok(Json(AgentView::from(&agent)).into_response()),
        other => Err(unexpected(&other)),
    }
}
