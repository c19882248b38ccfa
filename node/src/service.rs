//! [`LedgerService`]: one running node, as the HTTP API and the peer server see it. Implements
//! [`api::Backend`]: writes through the group-commit [`Writer`], linearizable reads through
//! read-index, and membership changes on the leader.

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use api::AddNode;
use api::ApiError;
use api::ClusterStatus;
use api::MemberStatus;
use api::MembershipView;
use api::NodeStatus;
use axum::http::StatusCode;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::Ledger;
use raft_store::LedgerNode;
use raft_store::LogStore;
use raft_store::NodeId;
use raft_store::NodeRecord;
use raft_store::Raft;

use crate::network::Peers;
use crate::network::Traffic;
use crate::writer::Writer;

/// A node is ready when it has applied all but at most this many committed entries.
pub const READY_APPLY_LAG_ENTRIES_MAX: u64 = 64;
/// Timeout of a `Status` call to a peer, in milliseconds.
const STATUS_TIMEOUT_MS: u64 = 500;
/// Timeout of a `Join` call to a new node, in milliseconds.
const JOIN_TIMEOUT_MS: u64 = 5_000;
/// How long a new node may take to catch up as a learner before it is made a voter.
const LEARNER_CATCH_UP_TIMEOUT_MS: u64 = 120_000;
/// How long a leadership transfer may take in all (the target catching up, then its election),
/// in milliseconds; past it the transfer answers 503.
pub const TRANSFER_LEADER_TIMEOUT_MS: u64 = 10_000;
/// How long the target of a transfer may take to catch up with the leader's log, in
/// milliseconds; writes wait meanwhile, so a dead or far behind target fails fast (503).
pub const TRANSFER_CATCH_UP_TIMEOUT_MS: u64 = 3_000;
/// Least time between two campaign requests to the target of a transfer, in milliseconds: a
/// new request restarts its election, so it must leave one round trip time to finish.
const CAMPAIGN_RETRY_MS: u64 = 300;
/// How often a transfer looks at the Raft metrics, in milliseconds.
const TRANSFER_POLL_MS: u64 = 20;
/// Timeout of a `Campaign` call, in milliseconds.
const CAMPAIGN_TIMEOUT_MS: u64 = 2_000;

pub struct LedgerService {
    pub raft: Raft,
    pub ledger: Ledger,
    pub log_store: LogStore,
    pub peers: Peers,
    pub writer: Writer,
    pub router: crate::writer::Router,
    pub public_key: [u8; 32],
    /// This node's Ed25519 identity key (`node.key`).
    pub signing_key: ed25519_dalek::SigningKey,
    /// The names this node's signatures are known by, once the cluster is initialised.
    pub signer_name: std::sync::OnceLock<api::SignerName>,
    pub self_node: LedgerNode,
    /// How long writes, reads and membership calls may wait for a leader.
    pub deadline: Duration,
    pub metrics: crate::metrics::NodeMetrics,
    pub protection: api::protect::Protection,
    /// Whether this node waits for its turn to build a snapshot, or builds one (see
    /// [`crate::snapshots`]); peers read it in `Status`.
    pub snapshot_turn: std::sync::Arc<crate::snapshots::TurnState>,
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

fn membership_view(raft: &Raft) -> MembershipView {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    MembershipView {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
    }
}

fn membership_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> ApiError {
    ApiError::new(status, code, message)
}

impl LedgerService {
    pub fn node_id(&self) -> NodeId {
        self.peers.local.node_id
    }

    fn leader(&self) -> Option<(NodeId, Option<LedgerNode>)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        Some((
            leader,
            metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .cloned(),
        ))
    }

    /// Waits until this node has applied everything committed before the call (read-index:
    /// locally when leading, through the leader's `ReadIndex` otherwise).
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            let reason = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    match (forward.leader_id, forward.leader_node) {
                        (Some(leader), Some(node)) => {
                            match self.remote_read_index(leader, &node, remaining).await {
                                Ok(index) => {
                                    let wait = self
                                        .raft
                                        .wait(Some(remaining.max(Duration::from_millis(1))));
                                    match wait.applied_index_at_least(index, "read index").await {
                                        Ok(_) => return Ok(()),
                                        Err(error) => {
                                            format!("waiting to apply the read index: {error}")
                                        }
                                    }
                                }
                                Err(reason) => reason,
                            }
                        }
                        _ => "no leader is elected".to_owned(),
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                    error.to_string()
                }
                Err(RaftError::Fatal(error)) => {
                    return Err(ApiError::unavailable(format!("raft stopped: {error}")));
                }
            };
            if started.elapsed() + backoff >= self.deadline {
                return Err(ApiError::unavailable(format!(
                    "cannot serve a linearizable read within {} ms: {reason}",
                    self.deadline.as_millis()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    async fn remote_read_index(
        &self,
        leader: NodeId,
        node: &LedgerNode,
        remaining: Duration,
    ) -> Result<Option<u64>, String> {
        let mut client = self
            .peers
            .client(&node.grpc_addr, Traffic::Client)
            .map_err(|s| s.message().to_owned())?;
        let request = self
            .peers
            .request(leader, proto::ReadIndexRequest {}, Some(remaining));
        let reply = tokio::time::timeout(remaining, client.read_index(request))
            .await
            .map_err(|_| format!("leader {leader} did not answer the read index in time"))?
            .map_err(|status| format!("leader {leader}: {}", status.message()))?
            .into_inner();
        if reply.not_leader {
            return Err(format!("node {leader} is no longer the leader"));
        }
        if !reply.error.is_empty() {
            return Err(format!("leader {leader}: {}", reply.error));
        }
        Ok(reply.has_index.then_some(reply.index))
    }

    pub fn local_status(&self) -> NodeStatus {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        NodeStatus {
            id: self.node_id(),
            cluster_id: self.peers.local.cluster_id(),
            role: role_name(metrics.state),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            committed_index: self.log_store.committed_index(),
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            purged_index: metrics.purged.map(|log_id| log_id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
        }
    }

    /// A leader that dies between the two steps of a membership change leaves the joint
    /// configuration behind, and openraft does not finish it by itself. On the leader: when the
    /// membership was already joint at the previous call (`seen`, one witness interval ago, so
    /// a change in progress is left alone), change it to its last voter set, the one the change
    /// was heading to.
    pub async fn finish_joint_membership(&self, seen: &mut Option<raft_store::LogId>) {
        let (joint_log_id, target) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let config = metrics.membership_config.membership().get_joint_config();
            if metrics.state != openraft::ServerState::Leader || config.len() < 2 {
                *seen = None;
                return;
            }
            (
                *metrics.membership_config.log_id(),
                config.last().cloned().unwrap_or_default(),
            )
        };
        if joint_log_id.is_none() || *seen != joint_log_id {
            *seen = joint_log_id;
            return;
        }
        tracing::warn!(voters = ?target, "finishing a membership change left joint by a previous leader");
        if let Err(error) = self.raft.change_membership(target, false).await {
            tracing::warn!(%error, "could not finish the joint membership yet");
        }
    }

    pub(crate) async fn peer_status(
        &self,
        id: NodeId,
        node: &LedgerNode,
    ) -> Option<proto::StatusReply> {
        let mut client = self.peers.client(&node.grpc_addr, Traffic::Client).ok()?;
        let timeout = Duration::from_millis(STATUS_TIMEOUT_MS);
        let request = self
            .peers
            .request(id, proto::StatusRequest::default(), Some(timeout));
        let reply = tokio::time::timeout(timeout, client.status(request))
            .await
            .ok()?
            .ok()?;
        Some(reply.into_inner())
    }

    /// A peer's snapshot turn (see [`crate::snapshots`]), if it answers its status request.
    pub(crate) async fn peer_snapshot_turn(
        &self,
        id: NodeId,
        node: &LedgerNode,
    ) -> Option<crate::snapshots::Turn> {
        let status = self.peer_status(id, node).await?;
        Some(crate::snapshots::Turn::from_wire(status.snapshot_turn))
    }

    /// Runs a membership change on the leader, or sends it to the leader.
    async fn change_membership(
        &self,
        request: proto::MembershipRequest,
    ) -> Result<MembershipView, ApiError> {
        match self.leader() {
            Some((leader, _)) if leader == self.node_id() => {
                self.change_membership_here(request).await
            }
            Some((leader, Some(node))) => {
                let mut client = self
                    .peers
                    .client(&node.grpc_addr, Traffic::Client)
                    .map_err(|s| ApiError::internal(s.message().to_owned()))?;
                let timeout = Duration::from_millis(LEARNER_CATCH_UP_TIMEOUT_MS + JOIN_TIMEOUT_MS);
                let reply = client
                    .change_membership(self.peers.request(leader, request, Some(timeout)))
                    .await
                    .map_err(|s| {
                        ApiError::unavailable(format!("leader {leader}: {}", s.message()))
                    })?
                    .into_inner();
                if reply.not_leader {
                    return Err(ApiError::unavailable("the leader changed; retry"));
                }
                if reply.http_status != 0 {
                    let status = StatusCode::from_u16(reply.http_status as u16)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let code = match reply.error_code.as_str() {
                        "VALIDATION_ERROR" => "VALIDATION_ERROR",
                        "CONFLICT" => "CONFLICT",
                        "NOT_FOUND" => "NOT_FOUND",
                        "UNAVAILABLE" => "UNAVAILABLE",
                        _ => "INTERNAL",
                    };
                    return Err(ApiError::new(status, code, reply.error_message));
                }
                Ok(MembershipView {
                    voters: reply.voters,
                    learners: reply.learners,
                })
            }
            _ => Err(ApiError::unavailable("no leader is elected; retry")),
        }
    }

    /// A membership change, on the leader.
    pub async fn change_membership_here(
        &self,
        request: proto::MembershipRequest,
    ) -> Result<MembershipView, ApiError> {
        match request.op.as_str() {
            "add" => {
                self.add_node_here(request.node_id, request.grpc_addr, request.http_addr)
                    .await
            }
            "remove" => self.remove_node_here(request.node_id).await,
            "transfer-leader" => self.transfer_leader_here(request.node_id).await,
            other => Err(ApiError::validation(format!(
                "op: unknown membership operation {other}"
            ))),
        }
    }

    async fn add_node_here(
        &self,
        id: NodeId,
        grpc_addr: String,
        http_addr: String,
    ) -> Result<MembershipView, ApiError> {
        let view = membership_view(&self.raft);
        if view.voters.contains(&id) || view.learners.contains(&id) {
            return Err(ApiError::conflict(format!(
                "id: node {id} is already a member"
            )));
        }
        if self.ledger.node(id)?.is_some() {
            return Err(ApiError::conflict(format!(
                "id: node id {id} was already used in this cluster; ids are never reused"
            )));
        }
        let cluster_id = self
            .peers
            .local
            .cluster_id()
            .ok_or_else(|| ApiError::unavailable("this cluster is not initialised yet"))?;
        // Ask the new node to join: it adopts our cluster id and tells us its identity key.
        let mut client = self
            .peers
            .client(&grpc_addr, Traffic::Client)
            .map_err(|s| ApiError::validation(format!("grpc_addr: {}", s.message())))?;
        let timeout = Duration::from_millis(JOIN_TIMEOUT_MS);
        let reply = tokio::time::timeout(
            timeout,
            client.join(self.peers.request(
                id,
                proto::JoinRequest {
                    cluster_id,
                    node_id: id,
                },
                Some(timeout),
            )),
        )
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "grpc_addr: node {id} at {grpc_addr} did not answer in time"
            ))
        })?
        .map_err(|s| {
            ApiError::unavailable(format!(
                "grpc_addr: cannot reach node {id} at {grpc_addr}: {}",
                s.message()
            ))
        })?
        .into_inner();
        if !reply.error.is_empty() {
            return Err(ApiError::conflict(format!(
                "id: node at {grpc_addr} refused to join: {}",
                reply.error
            )));
        }
        let public_key: [u8; 32] = reply
            .public_key
            .try_into()
            .map_err(|_| ApiError::internal("the new node sent a malformed identity key"))?;
        let record = NodeRecord {
            id,
            grpc_addr: grpc_addr.clone(),
            http_addr: http_addr.clone(),
            public_key,
            retired: false,
        };
        match self
            .writer
            .submit(api::proposal(
                &self.ledger,
                Command::RegisterNode { node: record },
            ))
            .await?
        {
            CommandResult::Done => {}
            CommandResult::Rejected { code, message } => {
                return Err(ApiError::from_reject(code, message));
            }
            other => {
                return Err(ApiError::internal(format!(
                    "unexpected result for RegisterNode: {other:?}"
                )));
            }
        }
        let node = LedgerNode {
            grpc_addr,
            http_addr,
        };
        let add = tokio::time::timeout(
            Duration::from_millis(LEARNER_CATCH_UP_TIMEOUT_MS),
            self.raft.add_learner(id, node, true),
        );
        add.await
            .map_err(|_| ApiError::unavailable(format!("node {id} did not catch up within {LEARNER_CATCH_UP_TIMEOUT_MS} ms; it stays a learner")))?
            .map_err(client_write_error)?;
        let mut voters: BTreeSet<NodeId> = membership_view(&self.raft).voters.into_iter().collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(client_write_error)?;
        tracing::info!(node = id, "added node as a voter");
        Ok(membership_view(&self.raft))
    }

    async fn remove_node_here(&self, id: NodeId) -> Result<MembershipView, ApiError> {
        let view = membership_view(&self.raft);
        if view.learners.contains(&id) {
            let change = ChangeMembers::RemoveNodes([id].into_iter().collect());
            self.raft
                .change_membership(change, false)
                .await
                .map_err(client_write_error)?;
        } else if view.voters.contains(&id) {
            let voters: BTreeSet<NodeId> =
                view.voters.iter().copied().filter(|v| *v != id).collect();
            if voters.is_empty() {
                return Err(ApiError::validation("id: cannot remove the last voter"));
            }
            self.raft
                .change_membership(voters, false)
                .await
                .map_err(client_write_error)?;
        } else {
            return Err(ApiError::not_found(format!(
                "id: node {id} is not a member"
            )));
        }
        // Record the retirement; the id stays used. Goes through the writer, which forwards it
        // if this node just removed itself and stepped down.
        match self
            .writer
            .submit(api::proposal(
                &self.ledger,
                Command::RetireNode { node_id: id },
            ))
            .await?
        {
            CommandResult::Done | CommandResult::Rejected { .. } => {}
            other => {
                return Err(ApiError::internal(format!(
                    "unexpected result for RetireNode: {other:?}"
                )));
            }
        }
        tracing::info!(node = id, "removed node");
        Ok(membership_view(&self.raft))
    }
}

/// Turns elections back on when a leadership transfer ends, however it ends (also when the
/// request that started it is dropped).
struct ElectionsResume<'a>(&'a Raft);

impl Drop for ElectionsResume<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().elect(true);
    }
}

impl LedgerService {
    /// Starts an election on this node now, when the leader asks (`Campaign`, a leadership
    /// transfer). Only a voter may campaign.
    pub async fn campaign(&self) -> Result<(), String> {
        let voter = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.node_id())
        };
        if !voter {
            return Err(format!("node {} is not a voter", self.node_id()));
        }
        tracing::info!("campaigning for leadership at the leader's request");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|error| format!("raft stopped: {error}"))
    }

    async fn request_campaign(&self, to: NodeId, node: &LedgerNode) -> Result<(), String> {
        let mut client = self
            .peers
            .client(&node.grpc_addr, Traffic::Client)
            .map_err(|s| s.message().to_owned())?;
        let timeout = Duration::from_millis(CAMPAIGN_TIMEOUT_MS);
        let reply = tokio::time::timeout(
            timeout,
            client.campaign(
                self.peers
                    .request(to, proto::CampaignRequest {}, Some(timeout)),
            ),
        )
        .await
        .map_err(|_| format!("node {to} did not answer in time"))?
        .map_err(|status| format!("node {to}: {}", status.message()))?
        .into_inner();
        if reply.error.is_empty() {
            Ok(())
        } else {
            Err(reply.error)
        }
    }

    /// Hands leadership to voter `to`, on the leader. openraft 0.9 has no leadership transfer
    /// (it comes in 0.10), so it is built from what 0.9 offers:
    /// 0. stop proposing: new writes on this node are refused (their writers retry them, as
    ///    after any leader change) once those in flight are done, so the log stops growing;
    /// 1. wait until `to` has this leader's whole log (so its vote requests can win), at most
    ///    `TRANSFER_CATCH_UP_TIMEOUT_MS`;
    /// 2. turn this node's elections off, so it cannot win back what it gives away;
    /// 3. ask `to` to campaign (`Campaign` → `Raft::trigger().elect()`; if it cannot be asked,
    ///    503 at once). Its vote request in the next term reaches this leader, which grants it
    ///    (stepping down) unless it became leader less than a lease (`election_timeout_max`)
    ///    ago; then `to` is refused, but this leader's next heartbeat meets `to`'s higher term
    ///    and it steps down all the same, adopting that term (uncommitted, for `to`);
    /// 4. once stepped down, ask `to` again if it has not won yet (a new term, at most every
    ///    `CAMPAIGN_RETRY_MS`): this node, no longer bound by a lease, votes for it, which with
    ///    `to`'s own vote is a majority of three (larger clusters also need the others, whose
    ///    leases run out within an election timeout);
    /// 5. answer once this node sees `to` lead; 503 if it does not within
    ///    `TRANSFER_LEADER_TIMEOUT_MS` (leadership is then wherever the next election put it).
    ///
    /// Writes that arrive meanwhile wait and are retried by their writers (with their dedup
    /// keys), so they land under the new leader; the transfer costs them the time it takes.
    async fn transfer_leader_here(&self, to: NodeId) -> Result<MembershipView, ApiError> {
        let me = self.node_id();
        let (view, node) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            (
                MembershipView {
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                },
                membership.get_node(&to).cloned(),
            )
        };
        if to == me {
            return Ok(view);
        }
        if view.learners.contains(&to) {
            return Err(ApiError::validation(format!(
                "node_id: node {to} is a learner; only a voter can lead"
            )));
        }
        let (true, Some(node)) = (view.voters.contains(&to), node) else {
            return Err(ApiError::not_found(format!(
                "node_id: node {to} is not a member"
            )));
        };
        let started = Instant::now();
        let deadline = Duration::from_millis(TRANSFER_LEADER_TIMEOUT_MS);
        let poll = Duration::from_millis(TRANSFER_POLL_MS);
        // No new local proposals from here on (they are retried, as after a leader change),
        // once those in flight are done: the log to hand over stops growing.
        let _no_proposals = tokio::time::timeout(deadline, self.router.proposals.write())
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the writes in flight did not finish within {TRANSFER_LEADER_TIMEOUT_MS} ms"
                ))
            })?;
        // Woken by every change of the Raft metrics, not polled.
        let matched_of = |metrics: &openraft::RaftMetrics<NodeId, LedgerNode>| {
            metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&to).copied().flatten())
                .map(|log_id| log_id.index)
        };
        let caught_up = self
            .raft
            .wait(Some(Duration::from_millis(TRANSFER_CATCH_UP_TIMEOUT_MS)))
            .metrics(
                |metrics| {
                    metrics.state != ServerState::Leader
                        || matched_of(metrics) >= metrics.last_log_index
                },
                "the target of a leadership transfer to catch up",
            )
            .await;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(ApiError::unavailable(
                "leadership moved before the transfer started; retry",
            ));
        }
        if caught_up.is_err() {
            return Err(ApiError::unavailable(format!(
                "node_id: node {to} did not catch up with the leader's log within \
                 {TRANSFER_CATCH_UP_TIMEOUT_MS} ms (it has {:?} of {:?})",
                matched_of(&metrics),
                metrics.last_log_index
            )));
        }
        self.raft.runtime_config().elect(false);
        let _resume = ElectionsResume(&self.raft);
        tracing::info!(to, "transferring leadership");
        let mut last_campaign: Option<Instant> = None;
        loop {
            let (stepped_down, leader) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state != ServerState::Leader, metrics.current_leader)
            };
            if leader == Some(to) {
                tracing::info!(to, "leadership transferred");
                return Ok(membership_view(&self.raft));
            }
            if let Some(other) = leader.filter(|id| stepped_down && *id != me) {
                return Err(ApiError::unavailable(format!(
                    "node {other} won the election instead of node {to}; retry"
                )));
            }
            let due = match last_campaign {
                None => true,
                Some(at) => {
                    stepped_down && at.elapsed() >= Duration::from_millis(CAMPAIGN_RETRY_MS)
                }
            };
            if due {
                if let Err(error) = self.request_campaign(to, &node).await {
                    // Still leading and the target cannot be asked: give up now (writes are
                    // waiting). Once stepped down, keep asking until the deadline.
                    if !stepped_down {
                        return Err(ApiError::unavailable(format!(
                            "node_id: node {to} could not be asked to campaign: {error}"
                        )));
                    }
                    tracing::warn!(to, %error, "campaign request failed");
                }
                last_campaign = Some(Instant::now());
            }
            if started.elapsed() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "node {to} did not become the leader within {TRANSFER_LEADER_TIMEOUT_MS} ms; \
                     the leader is now {}",
                    leader.map_or("unknown".to_owned(), |id| format!("node {id}"))
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }
}

fn client_write_error(error: RaftError<NodeId, ClientWriteError<NodeId, LedgerNode>>) -> ApiError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ApiError::unavailable("leadership moved during the membership change; retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => membership_error(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!("membership change refused: {error}"),
        ),
        RaftError::Fatal(error) => ApiError::unavailable(format!("raft stopped: {error}")),
    }
}

impl api::Backend for LedgerService {
    fn protection(&self) -> &api::protect::Protection {
        &self.protection
    }

    fn http_metrics(&self) -> &api::metrics::HttpMetrics {
        &self.metrics.http
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    async fn submit(&self, proposal: raft_store::Proposal) -> Result<CommandResult, ApiError> {
        self.writer.submit(proposal).await
    }

    async fn submit_answer(
        &self,
        proposal: raft_store::Proposal,
    ) -> Result<(CommandResult, Option<api::answer_group::GroupSeat>), ApiError> {
        self.writer.submit_answer(proposal).await
    }

    async fn linearize(&self) -> Result<(), ApiError> {
        self.read_barrier().await
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn node_status(&self) -> NodeStatus {
        self.local_status()
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let local = self.local_status();
        let members: Vec<(NodeId, LedgerNode, bool)> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            membership
                .nodes()
                .map(|(id, node)| (*id, node.clone(), voters.contains(id)))
                .collect()
        };
        let statuses = futures::future::join_all(members.iter().map(|(id, node, _)| async move {
            if *id == self.node_id() {
                None
            } else {
                self.peer_status(*id, node).await
            }
        }))
        .await;
        let mut nodes = Vec::with_capacity(members.len());
        for ((id, node, voter), status) in members.into_iter().zip(statuses) {
            let member = if id == self.node_id() {
                MemberStatus {
                    id,
                    grpc_addr: node.grpc_addr,
                    http_addr: node.http_addr,
                    voter,
                    reachable: true,
                    role: Some(local.role.to_owned()),
                    term: Some(local.term),
                    last_log_index: local.last_log_index,
                    committed_index: local.committed_index,
                    applied_index: local.applied_index,
                }
            } else {
                let reachable = status.is_some();
                let status = status.unwrap_or_default();
                MemberStatus {
                    id,
                    grpc_addr: node.grpc_addr,
                    http_addr: node.http_addr,
                    voter,
                    reachable,
                    role: reachable.then(|| status.role.clone()),
                    term: reachable.then_some(status.term),
                    last_log_index: (reachable && status.last_log_index > 0)
                        .then_some(status.last_log_index),
                    committed_index: (reachable && status.committed_index > 0)
                        .then_some(status.committed_index),
                    applied_index: (reachable && status.applied_index > 0)
                        .then_some(status.applied_index),
                }
            };
            nodes.push(member);
        }
        Ok(ClusterStatus {
            cluster_id: local.cluster_id,
            leader_id: local.leader_id,
            this_node: local.id,
            voters: local.voters,
            learners: local.learners,
            nodes,
        })
    }

    async fn add_node(&self, request: AddNode) -> Result<MembershipView, ApiError> {
        self.change_membership(proto::MembershipRequest {
            op: "add".into(),
            node_id: request.id,
            grpc_addr: request.grpc_addr,
            http_addr: request.http_addr,
        })
        .await
    }

    async fn remove_node(&self, id: NodeId) -> Result<MembershipView, ApiError> {
        self.change_membership(proto::MembershipRequest {
            op: "remove".into(),
            node_id: id,
            ..Default::default()
        })
        .await
    }

    async fn transfer_leader(&self, to: NodeId) -> Result<(), ApiError> {
        self.change_membership(proto::MembershipRequest {
            op: "transfer-leader".into(),
            node_id: to,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    fn is_ready(&self) -> bool {
        let status = self.local_status();
        let is_member = status.voters.contains(&status.id) || status.learners.contains(&status.id);
        let initialised = matches!(self.ledger.cluster(), Ok(Some(_)));
        let caught_up = match (status.applied_index, status.committed_index) {
            (Some(applied), Some(committed)) => applied + READY_APPLY_LAG_ENTRIES_MAX >= committed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        status.leader_id.is_some() && is_member && initialised && caught_up
    }

    fn node_id(&self) -> NodeId {
        self.peers.local.node_id
    }

    fn fail_stop(&self, reason: String) {
        fail_stop(reason);
    }

    fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.signing_key
    }

    fn signer_name(&self) -> &std::sync::OnceLock<api::SignerName> {
        &self.signer_name
    }

    fn now_ms(&self) -> i64 {
        crate::writer::now_ms()
    }
}

/// Stops the process because its data cannot be trusted: logs `reason`, then exits with code
/// 70 shortly after, so that the answer to the request that found it still goes out.
pub fn fail_stop(reason: String) {
    tracing::error!(%reason, "stopping: this node's data cannot be trusted");
    eprintln!("ledgerd: fatal: {reason}");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(FAIL_STOP_DELAY_MS));
        std::process::exit(70);
    });
}

/// How long a failing node keeps answering before it exits, in milliseconds.
const FAIL_STOP_DELAY_MS: u64 = 200;
/// How often a node compares its Merkle root with its peers', in milliseconds.
pub const WITNESS_INTERVAL_MS: u64 = 5_000;

impl LedgerService {
    /// Compares this node's Merkle root at its size with what its peers have at that size.
    /// When every peer that could answer disagrees, and they are enough to outvote this node
    /// (half the voters), this node is the one that diverged: it stops. A single disagreeing
    /// peer is only logged (it will find itself outvoted and stop).
    pub async fn witness(&self) {
        let Ok(head) = self.ledger.head() else { return };
        if head.size == 0 {
            return;
        }
        let Ok(root) = self.ledger.merkle_root(head.size) else {
            return;
        };
        let (members, voters) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let members: Vec<(NodeId, LedgerNode)> = membership
                .nodes()
                .filter(|(id, _)| **id != self.node_id())
                .map(|(id, node)| (*id, node.clone()))
                .collect();
            (members, membership.voter_ids().count())
        };
        let mut agree = Vec::new();
        let mut disagree = Vec::new();
        for (id, node) in members {
            let Ok(mut client) = self.peers.client(&node.grpc_addr, Traffic::Client) else {
                continue;
            };
            let timeout = Duration::from_millis(STATUS_TIMEOUT_MS);
            let ask = proto::StatusRequest {
                want_root: true,
                root_at_size: head.size,
            };
            let request = self.peers.request(id, ask, Some(timeout));
            let Ok(Ok(reply)) = tokio::time::timeout(timeout, client.status(request)).await else {
                continue;
            };
            let reply = reply.into_inner();
            if reply.root.is_empty() {
                continue; // the peer does not have that many events yet
            }
            if reply.root == root {
                agree.push(id);
            } else {
                disagree.push(id);
            }
        }
        if disagree.is_empty() {
            return;
        }
        if outvoted(agree.len(), disagree.len(), voters) {
            fail_stop(format!(
                "the Merkle root of this node's first {} events differs from that of nodes {disagree:?}",
                head.size
            ));
        } else {
            tracing::error!(
                size = head.size,
                ?disagree,
                ?agree,
                "nodes disagree on the Merkle root"
            );
        }
    }
}

/// Whether this node's Merkle root is the odd one out: some peers disagree with it, none
/// agrees, and the disagreeing peers are at least half the voters (with this node, a majority
/// that has the other tree). A lone disagreeing peer among several is not enough: it is the
/// one that will find itself outvoted.
pub fn outvoted(agree: usize, disagree: usize, voters: usize) -> bool {
    disagree > 0 && agree == 0 && disagree * 2 >= voters
}

#[cfg(test)]
mod tests {
    use super::outvoted;

    #[test]
    fn only_a_node_outvoted_by_its_peers_stops() {
        // Three voters: both peers disagree with me → I diverged.
        assert!(outvoted(0, 2, 3));
        // One peer disagrees, the other agrees → that peer diverged, not me.
        assert!(!outvoted(1, 1, 3));
        // Only one peer could answer, and it disagrees: not enough to know who diverged.
        assert!(!outvoted(0, 1, 3));
        // Five voters: two of four peers disagree and none agrees (two did not answer).
        assert!(outvoted(0, 3, 5));
        assert!(!outvoted(0, 2, 5));
        // Everyone agrees, or nobody answered.
        assert!(!outvoted(2, 0, 3));
        assert!(!outvoted(0, 0, 3));
    }
}
