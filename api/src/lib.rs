//! The HTTP API of a ledger node: an axum [`router`] generic over a [`Backend`].
//!
//! Invariants (see ARCHITECTURE.md):
//! - This crate never touches sled or openraft: it reads through [`raft_store::Ledger`] and
//!   writes through [`Backend::submit`].
//! - Every error body is `{"error": {"code", "message"}}` and the message names the field.
//! - Every limit is a named constant below, with its unit in the name.

mod admin;
mod auth;
mod backend;
mod error;
mod events;
mod ledger;
mod limits;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
pub use backend::*;
pub use error::ApiError;
pub use limits::*;
use raft_store::NodeId;

pub use crate::auth::KEY_PREFIX;
pub use crate::auth::generate_key;
pub use crate::auth::hash_secret;

/// A proposal deduplicated only against its own retries: a random dedup key, and the hash of
/// the command as its body hash.
pub fn proposal(command: raft_store::Command) -> raft_store::Proposal {
    use sha2::Digest;
    let encoded = raft_store::codec::encode(&command);
    let body_hash: [u8; 32] = sha2::Sha256::digest(encoded).into();
    let tx = raft_store::TxKey {
        dedup_key: rand::random(),
        body_hash,
    };
    raft_store::Proposal { tx, command }
}

/// Builds the router. `Arc<B>` is the shared state of every handler.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz::<B>))
        .route("/api/v1/node", get(node_status::<B>))
        .route("/api/v1/cluster", get(cluster_status::<B>))
        .route("/api/v1/cluster/nodes", post(add_node::<B>))
        .route("/api/v1/cluster/nodes/{id}", delete(remove_node::<B>))
        .route("/api/v1/cluster/leader", post(transfer_leader::<B>))
        // Activity is immutable: any other method on these paths is 405.
        .route(
            "/api/v1/activity/report",
            post(events::report::<B>).fallback(method_not_allowed),
        )
        .route(
            "/api/v1/activity/report/batch",
            post(events::report_batch::<B>).fallback(method_not_allowed),
        )
        .route(
            "/api/v1/agents/{asn}/activity",
            get(events::agent_activity::<B>).fallback(method_not_allowed),
        )
        .route("/api/v1/operators", post(admin::create_operator::<B>))
        .route("/api/v1/operators/{id}", get(admin::get_operator::<B>))
        .route("/api/v1/keys", post(admin::create_key::<B>))
        .route("/api/v1/keys/{id}", delete(admin::revoke_key::<B>))
        .route("/api/v1/agents", post(admin::create_agent::<B>))
        .route("/api/v1/agents/{asn}", get(admin::get_agent::<B>))
        .route(
            "/api/v1/agents/{asn}/deactivate",
            post(admin::deactivate_agent::<B>),
        )
        .route("/api/v1/ledger/events", get(events::ledger_events::<B>))
        .route("/api/v1/ledger/head", get(events::ledger_head::<B>))
        .route("/api/v1/ledger/keys", get(ledger::keys::<B>))
        .route("/api/v1/ledger/checkpoint", get(ledger::checkpoint::<B>))
        .route(
            "/api/v1/ledger/entries/{seq}/proof",
            get(ledger::inclusion::<B>),
        )
        .route("/api/v1/ledger/consistency", get(ledger::consistency::<B>))
        .route("/api/v1/ledger/verify", post(ledger::verify_now::<B>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this path; activity logs are immutable",
    )
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    if backend.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        ApiError::unavailable("not ready: no leader known, or this node is still catching up")
            .into_response()
    }
}

async fn node_status<B: Backend>(State(backend): State<Arc<B>>) -> Json<NodeStatus> {
    Json(backend.node_status())
}

async fn cluster_status<B: Backend>(
    State(backend): State<Arc<B>>,
) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(backend.cluster_status().await?))
}

async fn add_node<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    auth::require_admin(backend.as_ref(), &headers).await?;
    let body = events::read_body(body).await?;
    let request: AddNode = events::parse_json(&body)?;
    if request.id == 0 {
        return Err(ApiError::validation("id: must be a positive integer"));
    }
    for (field, addr) in [
        ("grpc_addr", &request.grpc_addr),
        ("http_addr", &request.http_addr),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::validation(format!(
                "{field}: must be host:port with an IP address"
            )));
        }
    }
    let id = request.id;
    let view = backend.add_node(request).await?;
    let body = serde_json::json!({ "id": id, "voters": view.voters, "learners": view.learners });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn remove_node<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth::require_admin(backend.as_ref(), &headers).await?;
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError::validation("id: must be a positive integer"))?;
    let view = backend.remove_node(id).await?;
    Ok(Json(
        serde_json::json!({ "removed": id, "voters": view.voters, "learners": view.learners }),
    ))
}

/// `POST /api/v1/cluster/leader` `{"node_id": N}` (admin): makes voter N the leader.
async fn transfer_leader<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth::require_admin(backend.as_ref(), &headers).await?;
    let body = events::read_body(body).await?;
    let request: TransferLeader = events::parse_json(&body)?;
    if request.node_id == 0 {
        return Err(ApiError::validation("node_id: must be a positive integer"));
    }
    let previous = backend.node_status().leader_id;
    backend.transfer_leader(request.node_id).await?;
    Ok(Json(serde_json::json!({
        "leader_id": request.node_id,
        "previous_leader_id": previous,
    })))
}
