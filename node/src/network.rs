//! The client side of the peer protocol: [`Peers`] (a pool of lazily connected tonic channels,
//! one per peer address and traffic class) and openraft's network ([`Network`], [`PeerClient`]).
//!
//! Each traffic class has its own HTTP/2 connection so that heartbeats never queue behind a
//! snapshot stream or a large forwarded batch.

// openraft's `RPCError` is the error type of the `RaftNetwork` trait; it is large.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use openraft::error::Fatal;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use proto::peer_client::PeerClient as GrpcClient;
use raft_store::LedgerNode;
use raft_store::NodeId;
use raft_store::Snapshot;
use raft_store::TypeConfig;
use raft_store::Vote;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::pipe::CallError;
use crate::pipe::Pipe;

/// Largest gRPC message either side encodes or decodes, in bytes.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Size of one snapshot chunk on the wire, in bytes.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The whole snapshot transfer must finish within this, in milliseconds.
pub const SNAPSHOT_SEND_TIMEOUT_MS: u64 = 120_000;
/// Connecting to a peer must finish within this, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Which connection a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Traffic {
    /// AppendEntries and Vote.
    Raft,
    /// Snapshot streams.
    Snapshot,
    /// Forwarded writes, read-index, join, status.
    Client,
}

/// This node's id and (once known) its cluster's id; sent with every peer request.
pub struct Local {
    pub node_id: NodeId,
    pub cluster_id: RwLock<Option<String>>,
}

impl Local {
    pub fn cluster_id(&self) -> Option<String> {
        match self.cluster_id.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_cluster_id(&self, cluster_id: String) {
        match self.cluster_id.write() {
            Ok(mut guard) => *guard = Some(cluster_id),
            Err(poisoned) => *poisoned.into_inner() = Some(cluster_id),
        }
    }
}

/// A pool of channels to peers, keyed by address and traffic class. Never dials eagerly.
#[derive(Clone)]
pub struct Peers {
    pub local: Arc<Local>,
    /// Peer address → the address to dial instead (`--peer-route`).
    routes: Arc<HashMap<String, String>>,
    channels: Arc<Mutex<HashMap<(String, Traffic), Channel>>>,
    /// The encoded size of every AppendEntries this node sends (`ledger_raft_append_entries_sent_bytes`).
    append_entries_bytes: prometheus_client::metrics::histogram::Histogram,
    streams_opened: StreamsOpened,
    forwards: Arc<Mutex<Forwards>>,
}

/// The label of `ledger_peer_streams_opened_total`: which calls the stream carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StreamKind {
    /// `append_entries` or `forward_write`.
    pub kind: &'static str,
}

/// Peer streams this node opened, by kind (`ledger_peer_streams_opened_total`).
pub type StreamsOpened = prometheus_client::metrics::family::Family<
    StreamKind,
    prometheus_client::metrics::counter::Counter,
>;

/// A pipe of forwarded batches to a leader.
pub type ForwardPipe = Pipe<proto::ForwardWriteRequest, proto::ForwardWriteReply>;

/// The pipes of forwarded batches, by leader address and id.
#[derive(Default)]
struct Forwards {
    pipes: HashMap<(String, NodeId), Arc<ForwardPipe>>,
    /// Leaders that did not serve the stream (older builds), and until when to use unary calls.
    unary_until: HashMap<(String, NodeId), Instant>,
}

/// How long a peer that did not serve a stream (an older build) gets unary calls before the
/// stream is tried again (it may have been upgraded meanwhile), in milliseconds.
pub const UNARY_FALLBACK_MS: u64 = 60_000;

impl Peers {
    pub fn new(
        local: Arc<Local>,
        routes: HashMap<String, String>,
        append_entries_bytes: prometheus_client::metrics::histogram::Histogram,
        streams_opened: StreamsOpened,
    ) -> Self {
        Self {
            local,
            routes: Arc::new(routes),
            channels: Arc::default(),
            append_entries_bytes,
            streams_opened,
            forwards: Arc::default(),
        }
    }

    fn forwards(&self) -> std::sync::MutexGuard<'_, Forwards> {
        self.forwards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open pipe for batches forwarded to `leader` at `addr`, opened now if there is none;
    /// `None` while that leader gets unary calls ([`Peers::forward_unsupported`]).
    pub fn forward_pipe(
        &self,
        leader: NodeId,
        addr: &str,
    ) -> Result<Option<Arc<ForwardPipe>>, tonic::Status> {
        let key = (addr.to_owned(), leader);
        let mut forwards = self.forwards();
        if let Some(until) = forwards.unary_until.get(&key) {
            if Instant::now() < *until {
                return Ok(None);
            }
            forwards.unary_until.remove(&key);
        }
        if let Some(pipe) = forwards.pipes.get(&key)
            && pipe.is_open()
        {
            return Ok(Some(Arc::clone(pipe)));
        }
        let mut client = self.client(addr, Traffic::Client)?;
        let peers = self.clone();
        self.stream_opened("forward_write");
        let pipe = Arc::new(Pipe::open(move |requests| async move {
            client
                .forward_write_stream(peers.request(leader, requests, None))
                .await
        }));
        forwards.pipes.insert(key, Arc::clone(&pipe));
        Ok(Some(pipe))
    }

    fn stream_opened(&self, kind: &'static str) {
        self.streams_opened
            .get_or_create(&StreamKind { kind })
            .inc();
    }

    /// `leader` at `addr` does not serve forwarded-batch streams: unary calls for a while.
    pub fn forward_unsupported(&self, leader: NodeId, addr: &str) {
        let key = (addr.to_owned(), leader);
        let until = Instant::now() + Duration::from_millis(UNARY_FALLBACK_MS);
        let mut forwards = self.forwards();
        forwards.pipes.remove(&key);
        if forwards.unary_until.insert(key, until).is_none() {
            tracing::info!(
                leader,
                "the leader does not serve forwarded-batch streams (an older build?): unary calls for {} s",
                UNARY_FALLBACK_MS / 1000
            );
        }
    }

    pub fn client(
        &self,
        addr: &str,
        traffic: Traffic,
    ) -> Result<GrpcClient<Channel>, tonic::Status> {
        let addr = self.routes.get(addr).map_or(addr, String::as_str);
        let key = (addr.to_owned(), traffic);
        let mut channels = match self.channels.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let channel = match channels.get(&key) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}"))
                    })?
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                let channel = endpoint.connect_lazy();
                channels.insert(key, channel.clone());
                channel
            }
        };
        Ok(GrpcClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
    }

    /// Wraps `message` with the metadata that lets the receiver check it is meant for it.
    pub fn request<T>(
        &self,
        target: NodeId,
        message: T,
        timeout: Option<Duration>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = self.local.cluster_id().and_then(|id| id.parse().ok()) {
            request
                .metadata_mut()
                .insert(proto::CLUSTER_ID_HEADER, value);
        }
        if let Ok(value) = target.to_string().parse() {
            request
                .metadata_mut()
                .insert(proto::TARGET_NODE_HEADER, value);
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    raft_store::codec::encode(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, NetworkError> {
    postcard::from_bytes(bytes)
        .map_err(|e| NetworkError::new(&std::io::Error::other(format!("decode {what}: {e}"))))
}

/// openraft's network factory.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &LedgerNode) -> Self::Network {
        assert_ne!(
            target, self.peers.local.node_id,
            "openraft asked for a client to this node itself"
        );
        PeerClient {
            target,
            addr: node.grpc_addr.clone(),
            peers: self.peers.clone(),
            append_entries: None,
            unary_until: None,
        }
    }
}

/// openraft's client to one peer, owned by the replication to that peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Peers,
    /// The stream that carries AppendEntries to the peer (opened by the first call, again by
    /// the first call after it closed).
    append_entries: Option<Pipe<proto::RaftRequest, proto::RaftReply>>,
    /// Set when the peer did not serve the stream (an older build): unary calls until then.
    unary_until: Option<Instant>,
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, LedgerNode, E>>;

fn status_to_rpc_error<E: std::error::Error>(
    status: tonic::Status,
) -> RPCError<NodeId, LedgerNode, E> {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerClient {
    fn decode_reply<T: DeserializeOwned>(
        &self,
        reply: proto::RaftReply,
        what: &str,
    ) -> RpcResult<T> {
        if !reply.error.is_empty() {
            let error: RaftError<NodeId> = decode(&reply.error, what).map_err(RPCError::Network)?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, error)));
        }
        decode(&reply.data, what).map_err(RPCError::Network)
    }
}

impl PeerClient {
    /// The open AppendEntries pipe to the peer, opened now if there is none.
    fn append_entries_pipe(&mut self) -> RpcResult<&Pipe<proto::RaftRequest, proto::RaftReply>> {
        let pipe = match self.append_entries.take() {
            Some(pipe) if pipe.is_open() => pipe,
            _ => {
                let mut client = self
                    .peers
                    .client(&self.addr, Traffic::Raft)
                    .map_err(status_to_rpc_error)?;
                let peers = self.peers.clone();
                let target = self.target;
                peers.stream_opened("append_entries");
                Pipe::open(move |requests| async move {
                    client
                        .append_entries_stream(peers.request(target, requests, None))
                        .await
                })
            }
        };
        Ok(self.append_entries.insert(pipe))
    }

    /// One Raft RPC on the Raft connection: `data` (a postcard-encoded openraft request) sent
    /// with `call` under openraft's deadline, the reply (or the remote `RaftError`) decoded.
    async fn raft_call<Reply, Call, Sent>(
        &self,
        data: Vec<u8>,
        option: &RPCOption,
        what: &str,
        call: Call,
    ) -> RpcResult<Reply>
    where
        Reply: DeserializeOwned,
        Call: FnOnce(GrpcClient<Channel>, tonic::Request<proto::RaftRequest>) -> Sent,
        Sent:
            std::future::Future<Output = Result<tonic::Response<proto::RaftReply>, tonic::Status>>,
    {
        let client = self
            .peers
            .client(&self.addr, Traffic::Raft)
            .map_err(status_to_rpc_error)?;
        let request = self.peers.request(
            self.target,
            proto::RaftRequest { data, call_id: 0 },
            Some(option.hard_ttl()),
        );
        let reply = call(client, request)
            .await
            .map_err(status_to_rpc_error)?
            .into_inner();
        self.decode_reply(reply, what)
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let data = encode(&rpc);
        self.peers.append_entries_bytes.observe(data.len() as f64);
        if self
            .unary_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.unary_until = None;
        }
        if self.unary_until.is_none() {
            let request = proto::RaftRequest { data, call_id: 0 };
            let pipe = self.append_entries_pipe()?;
            match pipe.call(request, option.hard_ttl()).await {
                Ok(reply) => return self.decode_reply(reply, "append-entries reply"),
                Err(CallError::Failed(status)) => return Err(status_to_rpc_error(status)),
                Err(CallError::Unsupported) => {
                    tracing::info!(
                        peer = self.target,
                        "the peer does not serve AppendEntries streams (an older build?): unary calls for {} s",
                        UNARY_FALLBACK_MS / 1000
                    );
                    self.unary_until =
                        Some(Instant::now() + Duration::from_millis(UNARY_FALLBACK_MS));
                    self.append_entries = None;
                }
            }
        }
        let data = encode(&rpc);
        self.raft_call(
            data,
            &option,
            "append-entries reply",
            |mut client, request| async move { client.append_entries(request).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.raft_call(
            encode(&rpc),
            &option,
            "vote reply",
            |mut client, request| async move { client.vote(request).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self
            .peers
            .client(&self.addr, Traffic::Snapshot)
            .map_err(|s| StreamingError::Unreachable(Unreachable::new(&s)))?;
        let data = snapshot.snapshot.into_inner();
        let meta = encode(&(vote, snapshot.meta.clone()));
        // Hashing hundreds of MiB takes a while: not on an async worker.
        let (data, data_sha256) = tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            let hash = sha2::Sha256::digest(&data).to_vec();
            (data, hash)
        })
        .await
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK_BYTES + 1);
        chunks.push(proto::SnapshotChunk {
            meta,
            data: Vec::new(),
            total_bytes: data.len() as u64,
            data_sha256,
        });
        for piece in data.chunks(SNAPSHOT_CHUNK_BYTES) {
            chunks.push(proto::SnapshotChunk {
                data: piece.to_vec(),
                ..Default::default()
            });
        }
        let timeout = Duration::from_millis(SNAPSHOT_SEND_TIMEOUT_MS);
        let request = self
            .peers
            .request(self.target, tokio_stream::iter(chunks), Some(timeout));
        let send = tokio::time::timeout(timeout, client.install_snapshot(request));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = send => match result {
                Err(_elapsed) => {
                    let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "snapshot transfer timed out");
                    return Err(StreamingError::Network(NetworkError::new(&error)));
                }
                Ok(Err(status)) => {
                    return Err(match status.code() {
                        tonic::Code::Unavailable => StreamingError::Unreachable(Unreachable::new(&status)),
                        _ => StreamingError::Network(NetworkError::new(&status)),
                    });
                }
                Ok(Ok(reply)) => reply.into_inner(),
            },
        };
        if !reply.error.is_empty() {
            let fatal: Fatal<NodeId> =
                decode(&reply.error, "snapshot error").map_err(StreamingError::Network)?;
            return Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            )));
        }
        decode(&reply.data, "snapshot reply").map_err(StreamingError::Network)
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
