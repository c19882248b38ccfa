//! The replicated data model: openraft's type configuration, the Raft entry payload
//! ([`Request`], a batch of [`Command`]s), its result ([`Response`]) and the ledger records
//! kept in the state machine ([`Event`], [`NodeRecord`], [`ApiKeyRecord`]).
//!
//! Everything here is encoded with postcard inside Raft entries and sled values, so the serde
//! model is the storage format: no `#[serde(flatten)]`, no untagged enums, no
//! `serde_json::Value` (metadata is kept as its JSON text).

use std::fmt;
use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

/// A node id. Stable for the life of a node's data directory and never reused in a cluster.
pub type NodeId = u64;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// What the cluster knows of a member in openraft's membership: its two listen addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerNode {
    /// Address of the peer gRPC server, `host:port`.
    pub grpc_addr: String,
    /// Address of the HTTP API, `host:port`.
    pub http_addr: String,
}

impl fmt::Display for LedgerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the ledger.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = LedgerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, LedgerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, LedgerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// The payload of one Raft entry: the commands gathered by group commit on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leader's wall clock when it proposed the entry, in milliseconds since the Unix epoch.
    /// Applying clamps it so that `created_at` never decreases in ledger order.
    pub proposed_at_ms: i64,
    pub commands: Vec<Proposal>,
}

/// A command with the key that deduplicates it: applying a proposal whose `tx.dedup_key` was
/// applied before returns the first result and changes nothing (with another `body_hash`: a
/// conflict). Every write carries one, so retries after an unknown outcome (a lost answer, a
/// leader change) never apply a command twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub tx: TxKey,
    pub command: Command,
}

/// The result of one Raft entry: one [`CommandResult`] per command, in order.
/// Blank and membership entries have no commands and an empty result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<CommandResult>,
}

/// A ledger command. Applying one is deterministic: it reads only the entry and the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first command of a new cluster: records its id, the bootstrap admin key and the
    /// bootstrap node. Rejected if the cluster is already initialised.
    InitCluster {
        cluster_id: String,
        admin_key: ApiKeyRecord,
        node: NodeRecord,
    },
    /// Records a node that joined (its id can never be used again) with its identity key.
    RegisterNode { node: NodeRecord },
    /// Marks a node as removed from the cluster. Its id stays used.
    RetireNode { node_id: NodeId },
    /// Appends events, all or none, for the key `by` (authorised when applied).
    AppendEvents { by: String, events: Vec<NewEvent> },
    /// Creates an operator (admin only). Its id is derived when applied.
    CreateOperator { by: String, name: String },
    /// Creates an API key (admin only); the key's secret hash was made by the receiving node.
    CreateKey { by: String, key: ApiKeyRecord },
    /// Revokes an API key (admin only).
    RevokeKey { by: String, key_id: String },
    /// Creates an agent owned by `owner_id` (admin, or the owner's key with `write`). Its id
    /// and ASN are derived when applied.
    CreateAgent {
        by: String,
        name: String,
        owner_id: String,
    },
    /// Deactivates an agent (admin, or the owner's key with `write`). Its history stays.
    DeactivateAgent { by: String, asn: String },
}

/// Identifies a write for deduplication: a retried write with the same `dedup_key` returns the
/// first result; with the same key but another `body_hash` it is rejected as a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxKey {
    pub dedup_key: Hash,
    pub body_hash: Hash,
}

/// An event as submitted, already validated by the API layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub asn: String,
    pub event_type: String,
    pub severity: Severity,
    /// The metadata object as compact JSON text (`{}` when absent).
    pub metadata_json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Self::Info, Self::Warning, Self::Error, Self::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An event as recorded in the ledger. Never changed or removed once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Dense position in the ledger, from 1.
    pub seq: u64,
    /// UUIDv7 derived deterministically from `created_at_ms` and the chain.
    pub id: [u8; 16],
    /// The agent's id (see [`AgentRecord`]).
    pub agent_id: [u8; 16],
    pub asn: String,
    pub event_type: String,
    pub severity: Severity,
    pub metadata_json: String,
    pub reported_by: String,
    /// Leader time, milliseconds since the Unix epoch; never decreases in `seq` order.
    pub created_at_ms: i64,
    /// `hash` of the event at `seq - 1`, zeroes for the first event.
    pub prev_hash: Hash,
    /// `hash` of the previous event of the same agent, zeroes for the agent's first.
    pub agent_prev_hash: Hash,
    pub hash: Hash,
}

/// Why a command was refused when applied. Nothing of a refused command is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    Validation,
    Unauthorized,
    Forbidden,
    NotFound,
    Gone,
    Conflict,
    /// Not applied now, and may be on a retry (a generated dedup key too far from the
    /// leaders' clock: see [`crate::dedup`]).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Events appended, in request order. `replayed` is true when this is the stored result of
    /// an earlier command with the same [`TxKey`].
    Appended {
        events: Vec<Event>,
        replayed: bool,
    },
    /// A non-event command took effect.
    Done,
    Operator(OperatorRecord),
    Key(ApiKeyRecord),
    Agent(AgentRecord),
    Rejected {
        code: RejectCode,
        message: String,
    },
}

/// A node as recorded in the replicated state when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub grpc_addr: String,
    pub http_addr: String,
    /// The node's ed25519 identity public key.
    pub public_key: [u8; 32],
    /// Set once the node is removed; the id stays reserved.
    pub retired: bool,
}

/// A permission carried by an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    ActivityReport,
    Write,
    Read,
    Admin,
}

/// An API key. Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public key id: the 16 hex characters after `asn_live_`.
    pub id: String,
    pub name: String,
    /// `None` for keys of the cluster's administrators.
    pub operator_id: Option<String>,
    pub permissions: Vec<Permission>,
    pub secret_sha256: Hash,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// The head of the ledger: how many events it has and the hash of the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerHead {
    pub size: u64,
    pub head_hash: Hash,
    pub last_created_at_ms: i64,
}

/// Cluster-wide facts fixed at initialisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster_id: String,
    pub created_at_ms: i64,
}

/// An operator: the owner of agents and of API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// UUIDv7, derived when applied.
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    Active,
    Deactivated,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deactivated => "deactivated",
        }
    }
}

/// An agent, identified by its ASN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// UUIDv7, derived when applied.
    pub id: [u8; 16],
    /// `ASN-YYYY-DDDD-DDDD-L`, derived when applied (see `asn.rs`).
    pub asn: String,
    pub name: String,
    pub owner_id: String,
    pub status: AgentStatus,
    pub created_at_ms: i64,
    pub deactivated_at_ms: Option<i64>,
}

impl Permission {
    pub const ALL: [Permission; 4] = [Self::ActivityReport, Self::Write, Self::Read, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ActivityReport => "activity:report",
            Self::Write => "write",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl ApiKeyRecord {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Permission::Admin)
    }

    /// `operator` for an operator's key, `admin` for a key of the cluster's administrators.
    pub fn reporter(&self) -> &'static str {
        if self.operator_id.is_some() {
            "operator"
        } else {
            "admin"
        }
    }
}
