//! What third parties verify with (docs/VERIFYING.md): the nodes' keys, signed checkpoints,
//! inclusion proofs (receipts) and consistency proofs. All public.

use std::sync::Arc;

use crate::extract::Path;
use crate::extract::Query;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use raft_store::ProofFailure;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;

use crate::ApiError;
use crate::Backend;
use crate::Consistency;
use crate::events::EventView;
use crate::events::Signing;
use crate::events::key_name;
use crate::events::origin;
use crate::events::parse_consistency;
use crate::events::rfc3339_ms;

/// A proof that cannot be made for these sizes: 400, naming the field at fault.
fn proof_error(error: ProofFailure, field: &str) -> ApiError {
    match error {
        ProofFailure::Range(message) => ApiError::validation(format!("{field}: {message}")),
        ProofFailure::Store(error) => ApiError::from(error),
    }
}

fn parse_size(text: Option<&str>, field: &str) -> Result<Option<u64>, ApiError> {
    text.map(|t| {
        t.parse::<u64>()
            .map_err(|_| ApiError::validation(format!("{field}: must be a non-negative integer")))
    })
    .transpose()
}

async fn barrier(backend: &impl Backend, consistency: Option<&str>) -> Result<(), ApiError> {
    if parse_consistency(consistency)? == Consistency::Linearizable {
        backend.linearize().await?;
    }
    Ok(())
}

/// The signed checkpoint (a C2SP signed note) of the first `size` events, by this node.
fn checkpoint_note(
    backend: &impl Backend,
    signing: &Signing<'_>,
) -> Result<(verifier::checkpoint::Checkpoint, String), ApiError> {
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let checkpoint = verifier::checkpoint::Checkpoint {
        origin: signing.signer.origin.clone(),
        size: head.size,
        root: ledger.merkle_root(head.size)?,
        head_hash: head.head_hash,
        time_ms: if head.size == 0 {
            0
        } else {
            head.last_created_at_ms
        },
    };
    let note = verifier::checkpoint::sign(&checkpoint, &signing.signer.name, signing.key);
    Ok((checkpoint, note))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyParam {
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// A node's signing key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeKey {
    pub node_id: u64,
    /// The signed-note key name: `asn-ledger/<cluster id>/node-<id>`.
    pub name: String,
    /// The C2SP key id (hex, 4 bytes).
    pub key_id: String,
    /// Ed25519 public key (hex, 32 bytes).
    pub public_key: String,
    /// The C2SP verifier key: `<name>+<key id>+<base64 of 0x01 || public key>`.
    pub vkey: String,
    #[schema(schema_with = crate::openapi::node_key_status_schema)]
    pub status: &'static str,
}

/// The keys events and checkpoints are signed with.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeKeys {
    /// The checkpoint origin line: `asn-ledger/<cluster id>`.
    pub origin: String,
    pub keys: Vec<NodeKey>,
}

/// `GET /api/v1/ledger/keys`: every node that ever joined, with its Ed25519 public key.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/keys",
    tag = "ledger",
    params(ConsistencyParam),
    responses(
        (status = 200, description = "Every node that ever joined, retired ones included.", body = NodeKeys),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn keys<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(params): Query<ConsistencyParam>,
) -> Result<Response, ApiError> {
    barrier(backend.as_ref(), params.consistency.as_deref()).await?;
    let ledger = backend.ledger();
    let cluster = ledger
        .cluster()?
        .ok_or_else(|| ApiError::unavailable("the cluster is not initialised yet"))?;
    let origin = origin(&cluster.cluster_id);
    let keys: Vec<_> = ledger
        .nodes()?
        .into_iter()
        .map(|node| {
            let name = key_name(&origin, node.id);
            NodeKey {
                node_id: node.id,
                key_id: hex::encode(verifier::note::key_id(&name, &node.public_key)),
                public_key: hex::encode(node.public_key),
                vkey: verifier::note::vkey(&name, &node.public_key),
                status: if node.retired { "retired" } else { "active" },
                name,
            }
        })
        .collect();
    Ok(Json(NodeKeys { origin, keys }).into_response())
}

/// A signed checkpoint (tree head), and its fields.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckpointView {
    pub origin: String,
    /// Events covered.
    pub size: u64,
    /// RFC 9162 Merkle root (hex) over the first `size` events.
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub root: String,
    #[schema(schema_with = crate::openapi::hash_schema)]
    pub head_hash: String,
    /// `created_at` of event `size` (the epoch when empty).
    #[schema(format = DateTime)]
    pub time: String,
    /// The signing node's key name.
    pub signer: String,
    /// The C2SP signed note (docs/VERIFYING.md).
    pub note: String,
}

/// `GET /api/v1/ledger/checkpoint`: this node's signed tree head over everything it has
/// applied. Nodes at the same size agree on everything but the signature.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/checkpoint",
    tag = "ledger",
    params(ConsistencyParam),
    responses(
        (status = 200, description = "This node's signed checkpoint.", body = CheckpointView),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn checkpoint<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(params): Query<ConsistencyParam>,
) -> Result<Response, ApiError> {
    barrier(backend.as_ref(), params.consistency.as_deref()).await?;
    let signing = Signing::of(backend.as_ref())?;
    let (checkpoint, note) = checkpoint_note(backend.as_ref(), &signing)?;
    Ok(Json(CheckpointView {
        origin: checkpoint.origin,
        size: checkpoint.size,
        root: hex::encode(checkpoint.root),
        head_hash: hex::encode(checkpoint.head_hash),
        time: rfc3339_ms(checkpoint.time_ms),
        signer: signing.signer.name.clone(),
        note,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProofParams {
    /// Prove inclusion in the tree of this size (at least `seq`, at most this node's size);
    /// without it, in this node's whole tree, with its signed checkpoint.
    #[param(schema_with = crate::openapi::positive_schema)]
    tree_size: Option<String>,
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// An RFC 9162 inclusion proof (verifier::proof::InclusionProof as JSON): of an event in the
/// ledger's tree, or, as an event's `signature_proof`, in its answer group's tree
/// (docs/VERIFYING.md section 9).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct InclusionProofView {
    /// `seq - 1` in the ledger's tree; the answer's place in an answer group.
    leaf_index: u64,
    tree_size: u64,
    /// Sibling hashes (hex), leaf to root.
    hashes: Vec<String>,
}

/// A receipt: the event, its inclusion proof and, without `tree_size`, the signed checkpoint
/// of the tree the proof is for.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Receipt {
    event: crate::events::EventView<'static>,
    proof: InclusionProofView,
    /// The C2SP signed note of the tree (absent with `tree_size`).
    #[schema(required = false)]
    checkpoint: Option<String>,
}

/// An RFC 9162 consistency proof (verifier::proof::ConsistencyProof as JSON).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ConsistencyProofView {
    from: u64,
    to: u64,
    /// Proof hashes (hex).
    hashes: Vec<String>,
}

/// The answer to a self-check.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Verified {
    /// Events verified (the whole chain and Merkle tree).
    pub verified: u64,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// `GET /api/v1/ledger/entries/{seq}/proof[?tree_size=N]`: the event, its inclusion proof in
/// the tree of size N and, without `tree_size` (N = this node's size), a signed checkpoint of
/// that tree: a receipt, verifiable offline.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/entries/{seq}/proof",
    tag = "ledger",
    params(("seq" = u64, Path, description = "The event's seq.", minimum = 1), ProofParams),
    responses(
        (status = 200, description = "The receipt.", body = Receipt),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
        (status = 404, description = "NOT_FOUND: no event has this seq.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn inclusion<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(seq): Path<String>,
    Query(params): Query<ProofParams>,
) -> Result<Response, ApiError> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::validation("seq: must be a positive integer"))?;
    let tree_size = parse_size(params.tree_size.as_deref(), "tree_size")?;
    barrier(backend.as_ref(), params.consistency.as_deref()).await?;
    let signing = Signing::of(backend.as_ref())?;
    let ledger = backend.ledger();
    let event = ledger
        .event(seq)?
        .ok_or_else(|| ApiError::not_found(format!("seq: event {seq} not found")))?;
    let (size, checkpoint) = match tree_size {
        Some(size) => {
            let head = ledger.head()?;
            if size > head.size {
                return Err(ApiError::validation(format!(
                    "tree_size: this node has {} events",
                    head.size
                )));
            }
            (size, None)
        }
        None => {
            let (checkpoint, note) = checkpoint_note(backend.as_ref(), &signing)?;
            (checkpoint.size, Some(note))
        }
    };
    let hashes = ledger
        .inclusion_proof(seq, size)
        .map_err(|e| proof_error(e, "tree_size"))?;
    let proof = verifier::proof::InclusionProof {
        leaf_index: seq - 1,
        tree_size: size,
        hashes,
    };
    let mut body = json!({
        "event": EventView::new(&event, &signing)?,
        "proof": proof.to_json_value(),
    });
    if let Some(note) = checkpoint {
        body["checkpoint"] = json!(note);
    }
    Ok(Json(body).into_response())
}

/// `POST /api/v1/ledger/verify` (admin): verifies this node's whole stored chain and Merkle
/// tree now. On a failure the node answers with the first bad `seq` and stops.
#[utoipa::path(
    post,
    path = "/api/v1/ledger/verify",
    tag = "ledger",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Every stored event and subtree verified.", body = Verified),
        (status = 401, description = "UNAUTHORIZED: no valid API key.", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the key lacks the admin permission.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn verify_now<B: Backend>(
    State(backend): State<Arc<B>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    crate::auth::require_admin(backend.as_ref(), &headers).await?;
    let ledger = backend.ledger().clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || ledger.verify_chain())
        .await
        .map_err(|e| ApiError::internal(format!("verification task: {e}")))?;
    match result {
        Ok(size) => Ok(Json(Verified {
            verified: size,
            millis: started.elapsed().as_millis() as u64,
        })
        .into_response()),
        Err(error) => {
            let reason = format!("self-check failed: {error}");
            backend.fail_stop(reason.clone());
            Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "CORRUPTED",
                reason,
            ))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyParams {
    /// The older tree size (at least 1, at most `to`).
    #[param(schema_with = crate::openapi::positive_schema, required = true)]
    from: Option<String>,
    /// The newer tree size (default: this node's size).
    #[param(schema_with = crate::openapi::size_schema)]
    to: Option<String>,
    #[param(schema_with = crate::openapi::consistency_schema)]
    consistency: Option<String>,
}

/// `GET /api/v1/ledger/consistency?from=N&to=M`: proof that the tree of size N is a prefix of
/// the tree of size M.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/consistency",
    tag = "ledger",
    params(ConsistencyParams),
    responses(
        (status = 200, description = "The proof.", body = ConsistencyProofView),
        (status = 400, description = "VALIDATION_ERROR: a parameter is invalid; the message names it.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn consistency<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(params): Query<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let from = parse_size(params.from.as_deref(), "from")?
        .ok_or_else(|| ApiError::validation("from: required"))?;
    barrier(backend.as_ref(), params.consistency.as_deref()).await?;
    let ledger = backend.ledger();
    let head = ledger.head()?;
    let to = parse_size(params.to.as_deref(), "to")?.unwrap_or(head.size);
    if to > head.size {
        return Err(ApiError::validation(format!(
            "to: this node has {} events",
            head.size
        )));
    }
    let hashes = ledger
        .consistency_proof(from, to)
        .map_err(|e| proof_error(e, "from"))?;
    let proof = verifier::proof::ConsistencyProof { from, to, hashes };
    Ok(Json(proof.to_json_value()).into_response())
}
