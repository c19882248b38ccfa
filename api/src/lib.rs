//! The HTTP API of a ledger node: an axum [`router`] generic over a [`Backend`].
//!
//! Invariants (see ARCHITECTURE.md):
//! - This crate never touches sled or openraft: it reads through [`raft_store::Ledger`] and
//!   writes through [`Backend::submit`].
//! - Every error body is `{"error": {"code", "message"}}` and the message names the field.
//! - Every limit is a named constant below, with its unit in the name.

mod admin;
pub mod answer_group;
mod auth;
mod backend;
mod error;
mod events;
mod explorer;
mod extract;
mod ledger;
mod limits;
pub mod metrics;
pub mod openapi;
pub mod protect;
mod trust;

use std::sync::Arc;

use crate::extract::Path;
use axum::Json;
use axum::Router;
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
pub use crate::events::SignerName;

/// A proposal deduplicated only against its own retries: a generated dedup key, and the hash
/// of the command as its body hash.
pub fn proposal(ledger: &raft_store::Ledger, command: raft_store::Command) -> raft_store::Proposal {
    use sha2::Digest;
    let encoded = raft_store::codec::encode(&command);
    let body_hash: [u8; 32] = sha2::Sha256::digest(encoded).into();
    let tx = raft_store::TxKey {
        dedup_key: generated_dedup_key(ledger),
        body_hash,
    };
    raft_store::Proposal { tx, command }
}

/// The dedup key of a write without an `Idempotency-Key` (only our own internal retries
/// dedupe it): the time in nanoseconds since the Unix epoch, 16 random bytes and the tag that
/// marks the key as generated ([`raft_store::dedup::generated_dedup_key`], which holds the time
/// no earlier than this node's dedup clock, `Ledger::dedup_clock_ms`). The state machine
/// keeps such keys for one window only (`raft_store::dedup`): a retry must come within it,
/// which `--write-deadline-ms` ensures.
pub fn generated_dedup_key(ledger: &raft_store::Ledger) -> [u8; 32] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        });
    raft_store::dedup::generated_dedup_key(
        nanos,
        ledger.dedup_clock_ms(),
        rand::random::<[u8; 16]>(),
    )
}

/// Builds the router. `Arc<B>` is the shared state of every handler.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/metrics", get(metrics_text::<B>))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
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
        .route(
            "/api/v1/agents/{asn}/trust-score",
            get(trust::trust_score::<B>),
        )
        .route("/", get(explorer::index))
        .route("/explorer/{file}", get(explorer::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside out: protection, then metrics (which see protection's answers too), then the
        // access log (and, with it on, the request's span) and the request id.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&backend),
            protect::protect::<B>,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&backend),
            metrics::track::<B>,
        ))
        .layer(axum::middleware::from_fn(access))
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .with_state(backend)
}

/// The access log (target `access`, off unless `ledgerd --access-log`): with it on, every
/// request runs in a span (its id, method, path, and `key_id` once an API key is
/// authenticated; [`request_span`]) and gets one line when answered. With it off (the default)
/// there is no span, which saves about 2% of a report's CPU, and only answers 5xx are logged,
/// at warn, with the request's id, method and path as fields of their own.
async fn access(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;

    let started = std::time::Instant::now();
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        let span = request_span(&request);
        let response = next.run(request).instrument(span.clone()).await;
        span.in_scope(|| access_log(&response, started.elapsed()));
        return response;
    }
    let request_id = request.headers().get("x-request-id").cloned();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    if response.status().is_server_error() {
        let request_id = request_id.as_ref().and_then(|v| v.to_str().ok());
        tracing::warn!(
            target: "access",
            request_id,
            method = %method,
            path = uri.path(),
            status = response.status().as_u16(),
            latency_us = micros(started.elapsed()),
            "answered"
        );
    }
    response
}

/// The span every request runs in while the access log is on: its id (`x-request-id`, taken
/// from the client or made here), method and path; `key_id` is filled in once an API key is
/// authenticated. Secrets (the `Authorization` header, key secrets) are never recorded.
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = %request.uri().path(),
        key_id = tracing::field::Empty,
    )
}

fn micros(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// One access-log line per answered request, in the request's span; answers 5xx at warn.
fn access_log(response: &Response, latency: std::time::Duration) {
    let status = response.status().as_u16();
    let latency_us = micros(latency);
    if response.status().is_server_error() {
        tracing::warn!(target: "access", status, latency_us, "answered");
    } else {
        tracing::info!(target: "access", status, latency_us, "answered");
    }
}

/// `GET /metrics`: the node's metrics in the Prometheus (OpenMetrics) text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((
        status = 200,
        description = "Every metric of this node (docs/OPERATIONS.md lists them). Never rate limited or shed.",
        body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )),
)]
async fn metrics_text<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        backend.render_metrics(),
    )
        .into_response()
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

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The answer to adding a node.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeAdded {
    #[schema(value_type = u64)]
    pub id: NodeId,
    #[schema(value_type = Vec<u64>)]
    pub voters: Vec<NodeId>,
    #[schema(value_type = Vec<u64>)]
    pub learners: Vec<NodeId>,
}

/// The answer to removing a node.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeRemoved {
    #[schema(value_type = u64)]
    pub removed: NodeId,
    #[schema(value_type = Vec<u64>)]
    pub voters: Vec<NodeId>,
    #[schema(value_type = Vec<u64>)]
    pub learners: Vec<NodeId>,
}

/// `GET /livez`: the process is up.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    responses((status = 200, description = "The process serves HTTP.", body = Health)),
)]
async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: a leader is known and this node has applied everything it has.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, description = "Ready.", body = Health)),
)]
async fn readyz<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    if backend.is_ready() {
        Json(Health { status: "ready" }).into_response()
    } else {
        ApiError::unavailable("not ready: no leader known, or this node is still catching up")
            .into_response()
    }
}

/// `GET /api/v1/node`: this node's own view, with no network round trip.
#[utoipa::path(
    get,
    path = "/api/v1/node",
    tag = "cluster",
    responses((status = 200, description = "This node's Raft state.", body = NodeStatus)),
)]
async fn node_status<B: Backend>(State(backend): State<Arc<B>>) -> Json<NodeStatus> {
    Json(backend.node_status())
}

/// `GET /api/v1/cluster`: every member, as the answering node sees it.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "The members and their state.", body = ClusterStatus)),
)]
async fn cluster_status<B: Backend>(
    State(backend): State<Arc<B>>,
) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(backend.cluster_status().await?))
}

/// `POST /api/v1/cluster/nodes` (admin): adds a node as a learner, lets it catch up, then
/// makes it a voter.
#[utoipa::path(
    post,
    path = "/api/v1/cluster/nodes",
    tag = "cluster",
    security(("api_key" = [])),
    request_body = AddNode,
    responses(
        (status = 201, description = "The node is a voter.", body = NodeAdded),
        (status = 400, description = "VALIDATION_ERROR: the body or a field is invalid.", body = openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the id is taken or was used before.", body = openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is too large.", body = openapi::ErrorBody),
    ),
)]
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
    let body = NodeAdded {
        id,
        voters: view.voters,
        learners: view.learners,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /api/v1/cluster/nodes/{id}` (admin): removes a node; its id is never reused.
#[utoipa::path(
    delete,
    path = "/api/v1/cluster/nodes/{id}",
    tag = "cluster",
    security(("api_key" = [])),
    params(("id" = u64, Path, description = "The node id.", minimum = 1)),
    responses(
        (status = 200, description = "The node is no longer a member.", body = NodeRemoved),
        (status = 400, description = "VALIDATION_ERROR: id is not a positive integer, or the change is not possible.", body = openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no such member.", body = openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the change is not possible now.", body = openapi::ErrorBody),
    ),
)]
async fn remove_node<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<NodeRemoved>, ApiError> {
    auth::require_admin(backend.as_ref(), &headers).await?;
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError::validation("id: must be a positive integer"))?;
    let view = backend.remove_node(id).await?;
    Ok(Json(NodeRemoved {
        removed: id,
        voters: view.voters,
        learners: view.learners,
    }))
}

/// The answer to a leadership transfer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LeaderMoved {
    #[schema(value_type = u64)]
    pub leader_id: NodeId,
    /// The leader before the transfer, as the answering node knew it.
    #[schema(value_type = Option<u64>)]
    pub previous_leader_id: Option<NodeId>,
}

/// `POST /api/v1/cluster/leader` `{"node_id": N}` (admin): makes voter N the leader.
#[utoipa::path(
    post,
    path = "/api/v1/cluster/leader",
    tag = "cluster",
    security(("api_key" = [])),
    request_body = TransferLeader,
    responses(
        (status = 200, description = "Node `node_id` leads now.", body = LeaderMoved),
        (status = 400, description = "VALIDATION_ERROR: node_id is not a positive integer, or names a learner.", body = openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: node_id is not a member.", body = openapi::ErrorBody),
    ),
)]
async fn transfer_leader<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<LeaderMoved>, ApiError> {
    auth::require_admin(backend.as_ref(), &headers).await?;
    let body = events::read_body(body).await?;
    let request: TransferLeader = events::parse_json(&body)?;
    if request.node_id == 0 {
        return Err(ApiError::validation("node_id: must be a positive integer"));
    }
    let previous = backend.node_status().leader_id;
    backend.transfer_leader(request.node_id).await?;
    Ok(Json(LeaderMoved {
        leader_id: request.node_id,
        previous_leader_id: previous,
    }))
}

#[cfg(test)]
mod tests {
    use super::generated_dedup_key;

    /// Generated dedup keys are distinct, in key order when made one after the other (the
    /// window drops the oldest by key), and recognised by the state machine as generated.
    #[test]
    fn generated_dedup_keys_are_distinct_and_in_order_of_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, store) = raft_store::open(dir.path()).expect("open");
        let keys: Vec<[u8; 32]> = (0..10_000)
            .map(|_| generated_dedup_key(store.ledger()))
            .collect();
        for key in &keys {
            assert!(raft_store::dedup::generated_key_time_ms(key).is_some());
        }
        let mut distinct = keys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), keys.len());
        for pair in keys.windows(2) {
            assert!(pair[0][..8] <= pair[1][..8], "time prefix went back");
        }
        let first = u64::from_be_bytes(keys[0][..8].try_into().expect("8 bytes"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos();
        assert!(u128::from(first) <= now && now - u128::from(first) < 60_000_000_000);
    }
}
