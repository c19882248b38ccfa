//! The server side of the peer protocol. Every call is checked against this node's id and
//! cluster id (metadata `x-target-node-id`, `x-cluster-id`) before anything else, so a stale
//! process or a reused port can never feed Raft messages to the wrong node. A node that has
//! not joined a cluster yet answers only `Join` and `Status`.

use std::io::Cursor;
use std::sync::Arc;

use futures::StreamExt;
use openraft::error::RaftError;
use raft_store::NodeId;
use raft_store::Snapshot;
use raft_store::SnapshotMeta;
use raft_store::Vote;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::identity::DataDir;
use crate::network::decode;
use crate::network::encode;
use crate::service::LedgerService;
use crate::service::role_name;

/// Largest snapshot this node accepts, in bytes (it is held in memory while installed).
pub const SNAPSHOT_RECEIVE_BYTES_MAX: usize = 4 << 30;

/// The data of a snapshot stream, if it is what the sender announced in its first chunk: that
/// many bytes, with that SHA-256. A sender whose replication closed mid-stream may end the
/// stream cleanly; installing the part received would stop this node (openraft takes a
/// snapshot it cannot decode for a storage error). Refused with `DATA_LOSS` instead, so the
/// leader sends the snapshot again. A sender that announces nothing (0, empty) is not checked.
async fn received_whole(
    data: Vec<u8>,
    total_bytes: u64,
    data_sha256: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    if total_bytes == 0 && data_sha256.is_empty() {
        return Ok(data);
    }
    if data.len() as u64 != total_bytes {
        return Err(Status::data_loss(format!(
            "snapshot stream ended after {} of {total_bytes} bytes",
            data.len()
        )));
    }
    let (data, actual) = tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(&data).to_vec();
        (data, hash)
    })
    .await
    .map_err(|e| Status::internal(format!("hashing the snapshot: {e}")))?;
    if actual != data_sha256 {
        return Err(Status::data_loss(
            "snapshot data_sha256: the data received does not have the announced SHA-256",
        ));
    }
    Ok(data)
}

pub struct PeerServer {
    pub service: Arc<LedgerService>,
    pub data_dir: Arc<DataDir>,
}

fn invalid(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(error.to_string())
}

impl PeerServer {
    fn check<T>(&self, request: &Request<T>, must_be_joined: bool) -> Result<(), Status> {
        let local = &self.service.peers.local;
        let metadata = request.metadata();
        let target = metadata
            .get(proto::TARGET_NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok())
            .ok_or_else(|| Status::invalid_argument("missing x-target-node-id"))?;
        if target != local.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}",
                local.node_id
            )));
        }
        let theirs = metadata
            .get(proto::CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok());
        match (local.cluster_id(), theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(Status::permission_denied(
                format!("this node belongs to cluster {ours}, not {theirs}"),
            )),
            (None, _) if must_be_joined => Err(Status::failed_precondition(
                "this node has not joined a cluster yet",
            )),
            _ => Ok(()),
        }
    }

    fn raft_reply<T: serde::Serialize, E: serde::Serialize>(
        result: Result<T, E>,
    ) -> proto::RaftReply {
        match result {
            Ok(value) => proto::RaftReply {
                data: encode(&value),
                ..Default::default()
            },
            Err(error) => proto::RaftReply {
                error: encode(&error),
                ..Default::default()
            },
        }
    }
}

/// The replies of a peer stream.
type Replies<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// The answer to one forwarded batch (postcard of `Vec<Proposal>`), from this node if it leads.
async fn forwarded(
    service: &LedgerService,
    commands: &[u8],
) -> Result<proto::ForwardWriteReply, Status> {
    let commands: Vec<raft_store::Proposal> =
        postcard::from_bytes(commands).map_err(|e| invalid(format!("commands: {e}")))?;
    // Only the leader takes forwarded batches: anyone else says so, and the follower finds the
    // leader itself (no second hop).
    let leader = service.raft.metrics().borrow().current_leader;
    let this_node = service.node_id();
    if leader != Some(this_node) {
        return Ok(proto::ForwardWriteReply {
            not_leader: true,
            has_leader: leader.is_some(),
            leader_id: leader.unwrap_or_default(),
            ..Default::default()
        });
    }
    let started = std::time::Instant::now();
    let count = commands.len();
    // The batch joins this leader's group commit: with its own writes and the other followers'
    // batches it becomes one Raft entry, one fsync per node.
    let result = service.writer.submit_many(commands).await;
    tracing::debug!(
        commands = count,
        micros = started.elapsed().as_micros() as u64,
        "forwarded batch proposed"
    );
    Ok(match result {
        Ok(results) => proto::ForwardWriteReply {
            results: encode(&results),
            ..Default::default()
        },
        Err(error) => proto::ForwardWriteReply {
            error: error.message,
            ..Default::default()
        },
    })
}

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerServer {
    type AppendEntriesStreamStream = Replies<proto::RaftReply>;
    type ForwardWriteStreamStream = Replies<proto::ForwardWriteReply>;

    async fn append_entries_stream(
        &self,
        request: Request<tonic::Streaming<proto::RaftRequest>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        self.check(&request, true)?;
        let raft = self.service.raft.clone();
        // One call at a time, in the order received, as the leader's replication sends them.
        let replies = request.into_inner().then(move |request| {
            let raft = raft.clone();
            async move {
                let request = request?;
                let rpc = decode(&request.data, "append-entries").map_err(invalid)?;
                let mut reply = Self::raft_reply(raft.append_entries(rpc).await);
                reply.call_id = request.call_id;
                Ok(reply)
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn forward_write_stream(
        &self,
        request: Request<tonic::Streaming<proto::ForwardWriteRequest>>,
    ) -> Result<Response<Self::ForwardWriteStreamStream>, Status> {
        self.check(&request, true)?;
        let mut batches = request.into_inner();
        let (replies, answered) = tokio::sync::mpsc::unbounded_channel();
        let service = Arc::clone(&self.service);
        // Batches are answered as they are applied, several at a time: a follower's writer
        // keeps more than one in flight.
        tokio::spawn(async move {
            loop {
                let batch = match batches.message().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = replies.send(Err(status));
                        break;
                    }
                };
                let service = Arc::clone(&service);
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = forwarded(&service, &batch.commands).await.map(|mut reply| {
                        reply.call_id = batch.call_id;
                        reply
                    });
                    let _ = replies.send(reply);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(answered),
        )))
    }

    async fn append_entries(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.check(&request, true)?;
        let rpc = decode(&request.into_inner().data, "append-entries").map_err(invalid)?;
        Ok(Response::new(Self::raft_reply(
            self.service.raft.append_entries(rpc).await,
        )))
    }

    async fn vote(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.check(&request, true)?;
        let rpc = decode(&request.into_inner().data, "vote").map_err(invalid)?;
        Ok(Response::new(Self::raft_reply(
            self.service.raft.vote(rpc).await,
        )))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<proto::SnapshotChunk>>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.check(&request, true)?;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| invalid("empty snapshot stream"))??;
        let total_bytes = first.total_bytes;
        let data_sha256 = first.data_sha256;
        let meta_bytes = first.meta;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > SNAPSHOT_RECEIVE_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {SNAPSHOT_RECEIVE_BYTES_MAX} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let data = received_whole(data, total_bytes, data_sha256).await?;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&meta_bytes, "snapshot meta").map_err(invalid)?;
        // openraft asks the log store for the purge this install implies before the install
        // ends: the log store must wait for it (`LogStore::expect_snapshot_install`).
        self.service
            .log_store
            .expect_snapshot_install(meta.last_log_id);
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        let result = self
            .service
            .raft
            .install_full_snapshot(vote, snapshot)
            .await;
        Ok(Response::new(Self::raft_reply(result)))
    }

    async fn forward_write(
        &self,
        request: Request<proto::ForwardWriteRequest>,
    ) -> Result<Response<proto::ForwardWriteReply>, Status> {
        self.check(&request, true)?;
        let reply = forwarded(&self.service, &request.into_inner().commands).await?;
        Ok(Response::new(reply))
    }

    async fn read_index(
        &self,
        request: Request<proto::ReadIndexRequest>,
    ) -> Result<Response<proto::ReadIndexReply>, Status> {
        self.check(&request, true)?;
        let reply = match self.service.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => proto::ReadIndexReply {
                has_index: read_log_id.is_some(),
                index: read_log_id.map(|log_id| log_id.index).unwrap_or_default(),
                ..Default::default()
            },
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                forward,
            ))) => proto::ReadIndexReply {
                not_leader: true,
                has_leader: forward.leader_id.is_some(),
                leader_id: forward.leader_id.unwrap_or_default(),
                ..Default::default()
            },
            Err(error) => proto::ReadIndexReply {
                error: error.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        self.check(&request, false)?;
        let join = request.into_inner();
        let local = &self.service.peers.local;
        let refuse = |error: String| {
            Ok(Response::new(proto::JoinReply {
                public_key: Vec::new(),
                error,
            }))
        };
        if join.node_id != local.node_id {
            return refuse(format!(
                "this is node {}, not node {}",
                local.node_id, join.node_id
            ));
        }
        match local.cluster_id() {
            Some(ours) if ours != join.cluster_id => {
                return refuse(format!("this node already belongs to cluster {ours}"));
            }
            Some(_) => {}
            None => {
                let mut identity = self
                    .data_dir
                    .identity(local.node_id)
                    .map_err(|e| Status::internal(format!("{e:#}")))?;
                identity.cluster_id = Some(join.cluster_id.clone());
                self.data_dir
                    .save_identity(&identity)
                    .map_err(|e| Status::internal(format!("{e:#}")))?;
                local.set_cluster_id(join.cluster_id.clone());
                tracing::info!(cluster_id = %join.cluster_id, "joined cluster");
            }
        }
        Ok(Response::new(proto::JoinReply {
            public_key: self.service.public_key.to_vec(),
            error: String::new(),
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        self.check(&request, false)?;
        let ask = request.into_inner();
        let ledger_size = self.service.ledger.head().map(|h| h.size).unwrap_or(0);
        let root = if ask.want_root && ask.root_at_size <= ledger_size {
            self.service
                .ledger
                .merkle_root(ask.root_at_size)
                .map(|r| r.to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let metrics = self.service.raft.metrics();
        let metrics = metrics.borrow().clone();
        Ok(Response::new(proto::StatusReply {
            node_id: self.service.node_id(),
            role: role_name(metrics.state).to_owned(),
            term: metrics.current_term,
            has_leader: metrics.current_leader.is_some(),
            leader_id: metrics.current_leader.unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or_default(),
            committed_index: self.service.log_store.committed_index().unwrap_or_default(),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or_default(),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or_default(),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or_default(),
            ledger_size,
            root,
            snapshot_turn: self.service.snapshot_turn.get() as u32,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<proto::MembershipRequest>,
    ) -> Result<Response<proto::MembershipReply>, Status> {
        self.check(&request, true)?;
        let is_leader =
            self.service.raft.metrics().borrow().current_leader == Some(self.service.node_id());
        if !is_leader {
            return Ok(Response::new(proto::MembershipReply {
                not_leader: true,
                ..Default::default()
            }));
        }
        let reply = match self
            .service
            .change_membership_here(request.into_inner())
            .await
        {
            Ok(view) => proto::MembershipReply {
                voters: view.voters,
                learners: view.learners,
                ..Default::default()
            },
            Err(error) => proto::MembershipReply {
                http_status: u32::from(error.status.as_u16()),
                error_code: error.code.to_owned(),
                error_message: error.message,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn campaign(
        &self,
        request: Request<proto::CampaignRequest>,
    ) -> Result<Response<proto::CampaignReply>, Status> {
        self.check(&request, true)?;
        let error = match self.service.campaign().await {
            Ok(()) => String::new(),
            Err(error) => error,
        };
        Ok(Response::new(proto::CampaignReply { error }))
    }
}
