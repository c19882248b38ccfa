//! [`Backend`]: what the HTTP API needs from a node. `node` implements it; the router is
//! generic over it, so the API never sees openraft, tonic or sled.

use std::future::Future;

use raft_store::CommandResult;
use raft_store::Ledger;
use raft_store::NodeId;
use raft_store::Proposal;
use serde::Deserialize;
use serde::Serialize;

use crate::ApiError;

/// Whether a read must reflect every write acknowledged before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-index through the leader, then read locally (the default).
    #[default]
    Linearizable,
    /// This node's state as it is, without contacting anyone. May be stale.
    Local,
}

/// One node's own view, with no network round trip.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    #[schema(value_type = u64)]
    pub id: NodeId,
    pub cluster_id: Option<String>,
    /// leader, follower, candidate or learner.
    #[schema(value_type = String)]
    pub role: &'static str,
    pub term: u64,
    #[schema(value_type = Option<u64>)]
    pub leader_id: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    #[schema(value_type = Vec<u64>)]
    pub voters: Vec<NodeId>,
    #[schema(value_type = Vec<u64>)]
    pub learners: Vec<NodeId>,
    /// The membership is a joint configuration (in the middle of a change): `voters` is the
    /// union of its voter sets.
    pub joint: bool,
}

/// A member as seen from the node that answers `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    #[schema(value_type = u64)]
    pub id: NodeId,
    pub grpc_addr: String,
    pub http_addr: String,
    pub voter: bool,
    pub reachable: bool,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    #[schema(value_type = Option<u64>)]
    pub leader_id: Option<NodeId>,
    #[schema(value_type = u64)]
    pub this_node: NodeId,
    #[schema(value_type = Vec<u64>)]
    pub voters: Vec<NodeId>,
    #[schema(value_type = Vec<u64>)]
    pub learners: Vec<NodeId>,
    pub nodes: Vec<MemberStatus>,
}

/// A request to add a node to the cluster. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    /// A node id never used in this cluster before.
    #[schema(minimum = 1)]
    #[schema(value_type = u64)]
    pub id: NodeId,
    /// The new node's peer gRPC address, IP:port.
    #[schema(example = "127.0.0.1:9084")]
    pub grpc_addr: String,
    /// The new node's HTTP address, IP:port.
    #[schema(example = "127.0.0.1:8084")]
    pub http_addr: String,
}

/// A request to make a voter the leader (`POST /api/v1/cluster/leader`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    /// The voter to make the leader.
    #[schema(value_type = u64, minimum = 1)]
    pub node_id: NodeId,
}

/// Membership after a change.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipView {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

pub trait Backend: Send + Sync + 'static {
    /// Proposes a command through the leader (forwarding if needed) and waits until it is
    /// committed on a majority and applied on the leader.
    fn submit(
        &self,
        proposal: Proposal,
    ) -> impl Future<Output = Result<CommandResult, ApiError>> + Send;

    /// As [`Backend::submit`], for a write whose answer this node signs: with the answer's seat
    /// in its group when answers made at the same time share one signature
    /// ([`crate::answer_group`]). By default each answer signs on its own.
    fn submit_answer(
        &self,
        proposal: Proposal,
    ) -> impl Future<
        Output = Result<(CommandResult, Option<crate::answer_group::GroupSeat>), ApiError>,
    > + Send {
        async move { self.submit(proposal).await.map(|result| (result, None)) }
    }

    /// Waits until this node has applied every write acknowledged before the call.
    fn linearize(&self) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Read access to this node's ledger state.
    fn ledger(&self) -> &Ledger;

    fn node_status(&self) -> NodeStatus;

    fn cluster_status(&self) -> impl Future<Output = Result<ClusterStatus, ApiError>> + Send;

    /// Adds a node (learner, catch up, voter). Only on the leader; others forward.
    fn add_node(
        &self,
        request: AddNode,
    ) -> impl Future<Output = Result<MembershipView, ApiError>> + Send;

    fn remove_node(
        &self,
        id: NodeId,
    ) -> impl Future<Output = Result<MembershipView, ApiError>> + Send;

    /// Makes voter `to` the leader and returns once it leads (already leading: at once). Only
    /// on the leader; others forward. 404 when `to` is not a member, 400 for a learner, 503
    /// when it did not become the leader in time.
    fn transfer_leader(&self, to: NodeId) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// Stops this node because its data cannot be trusted (fail-stop): logs `reason` and ends
    /// the process shortly after, so the answer to the current request still goes out.
    fn fail_stop(&self, reason: String);

    /// This node's Ed25519 identity key: it signs the events and checkpoints this node serves.
    fn signing_key(&self) -> &ed25519_dalek::SigningKey;

    /// Where this node keeps the names its signatures are known by, once worked out from the
    /// cluster id (by [`crate::events::Signing::of`]).
    fn signer_name(&self) -> &std::sync::OnceLock<crate::events::SignerName>;

    /// A leader is known and this node has applied everything it has.
    fn is_ready(&self) -> bool;

    /// Wall-clock milliseconds since the Unix epoch (a seam for tests).
    fn now_ms(&self) -> i64;

    /// Rate limits, load shedding and the request timeout of this node.
    fn protection(&self) -> &crate::protect::Protection;

    /// The HTTP metrics this node's router records.
    fn http_metrics(&self) -> &crate::metrics::HttpMetrics;

    /// Every metric of this node in the Prometheus (OpenMetrics) text format.
    fn render_metrics(&self) -> String;
}
