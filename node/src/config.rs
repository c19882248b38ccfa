//! `ledgerd`'s configuration: command-line flags, each also settable from the environment as
//! `LEDGER_<FLAG>` (flags win). Units are in the names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ledgerd",
    version,
    about = "One node of an asn-ledger cluster: Raft, peer gRPC and the HTTP API."
)]
pub struct Config {
    /// This node's id: a positive integer, unique in the cluster and never reused.
    #[arg(long, env = "LEDGER_ID")]
    pub id: u64,

    /// Directory for this node's data (sled store, snapshots, identity key). Created if missing.
    #[arg(long, env = "LEDGER_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address of the HTTP API.
    #[arg(long, env = "LEDGER_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,

    /// Address of the peer gRPC server (Raft traffic, forwarded writes).
    #[arg(long, env = "LEDGER_GRPC_ADDR", default_value = "127.0.0.1:9081")]
    pub grpc_addr: SocketAddr,

    /// Create a new cluster with this node as its only voter, if the data directory is empty.
    /// Writes the bootstrap admin key to <data-dir>/admin.key (mode 0600). Ignored when the
    /// data directory is already initialised.
    #[arg(long, env = "LEDGER_BOOTSTRAP")]
    pub bootstrap: bool,

    /// HTTP URL of a member of the cluster this node belongs to. At start-up the node checks
    /// that its data directory belongs to that cluster.
    #[arg(long, env = "LEDGER_JOIN")]
    pub join: Option<String>,

    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, env = "LEDGER_HEARTBEAT_MS", default_value_t = 250)]
    pub heartbeat_ms: u64,

    /// Lower bound of the randomised election timeout, in milliseconds.
    #[arg(long, env = "LEDGER_ELECTION_TIMEOUT_MIN_MS", default_value_t = 1500)]
    pub election_timeout_min_ms: u64,

    /// Upper bound of the randomised election timeout, in milliseconds.
    #[arg(long, env = "LEDGER_ELECTION_TIMEOUT_MAX_MS", default_value_t = 3000)]
    pub election_timeout_max_ms: u64,

    /// Build a snapshot after this many Raft log entries since the last one.
    #[arg(long, env = "LEDGER_SNAPSHOT_LOGS", default_value_t = 5000)]
    pub snapshot_logs: u64,

    /// Raft log entries kept after a snapshot (the rest are purged).
    #[arg(long, env = "LEDGER_SNAPSHOT_KEEP_LOGS", default_value_t = 1000)]
    pub snapshot_keep_logs: u64,

    /// How long a write may wait for a leader (elections, forwarding retries), in milliseconds,
    /// before it is answered 503.
    #[arg(long, env = "LEDGER_WRITE_DEADLINE_MS", default_value_t = 10_000)]
    pub write_deadline_ms: u64,

    /// Writes queued for group commit on this node before new ones get 503.
    #[arg(
        long,
        env = "LEDGER_WRITE_QUEUE_COMMANDS_MAX",
        default_value_t = 16_384
    )]
    pub write_queue_commands_max: usize,

    /// Group-commit batches (Raft entries) this node has in flight at once. 1 gives the
    /// largest batches: each Raft entry (one fsync per node) costs more than the wait for the
    /// one before it (docs/PERFORMANCE.md).
    #[arg(long, env = "LEDGER_WRITE_BATCHES_IN_FLIGHT_MAX", default_value_t = 1)]
    pub write_batches_in_flight_max: usize,

    /// Commands in one group-commit batch (one Raft entry), at most.
    #[arg(long, env = "LEDGER_BATCH_COMMANDS_MAX", default_value_t = 1024)]
    pub batch_commands_max: usize,

    /// Reach the peer whose gRPC address is FROM through TO instead (`FROM=TO`, both
    /// `ip:port`; repeatable). For relays and for fault-injection tests, which put a proxy on
    /// every link.
    #[arg(
        long = "peer-route",
        env = "LEDGER_PEER_ROUTES",
        value_delimiter = ',',
        value_name = "FROM=TO"
    )]
    pub peer_routes: Vec<PeerRoute>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LEDGER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// Checks what clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be a positive integer".into());
        }
        if self.heartbeat_ms == 0 {
            return Err("--heartbeat-ms must be positive".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms {
            return Err(format!(
                "--election-timeout-min-ms ({}) must be larger than --heartbeat-ms ({})",
                self.election_timeout_min_ms, self.heartbeat_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(format!(
                "--election-timeout-max-ms ({}) must be larger than --election-timeout-min-ms ({})",
                self.election_timeout_max_ms, self.election_timeout_min_ms
            ));
        }
        if self.snapshot_logs == 0 {
            return Err("--snapshot-logs must be positive".into());
        }
        if self.write_queue_commands_max == 0
            || self.write_batches_in_flight_max == 0
            || self.batch_commands_max == 0
        {
            return Err("--write-queue-commands-max, --write-batches-in-flight-max and --batch-commands-max must be positive".into());
        }
        if self.http_addr == self.grpc_addr {
            return Err(format!(
                "--http-addr and --grpc-addr are both {}",
                self.http_addr
            ));
        }
        Ok(())
    }
}

/// `FROM=TO`: the peer at gRPC address FROM is reached through TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl std::str::FromStr for PeerRoute {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (from, to) = text
            .split_once('=')
            .ok_or_else(|| format!("--peer-route {text}: expected FROM=TO"))?;
        let parse = |part: &str| {
            part.parse::<SocketAddr>()
                .map_err(|e| format!("--peer-route {text}: {part} is not ip:port ({e})"))
        };
        Ok(Self {
            from: parse(from)?,
            to: parse(to)?,
        })
    }
}
