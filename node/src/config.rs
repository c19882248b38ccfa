//! `ledgerd`'s configuration: command-line flags, each also settable from the environment as
//! `LEDGER_<FLAG>` and from a TOML file (`--config`), in that order of precedence: a flag wins
//! over the environment, which wins over the file, which wins over the default. Units are in
//! the names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Async runtime threads a node may be given (`--worker-threads`), at most.
pub const WORKER_THREADS_MAX: usize = 1024;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ledgerd",
    version,
    about = "One node of an asn-ledger cluster: Raft, peer gRPC and the HTTP API.",
    // A flag given twice takes its last value, so a script's defaults can be overridden by
    // flags appended after them (`scripts/cluster.sh`'s LEDGERD_EXTRA_ARGS). Repeatable flags
    // (`--peer-route`) still collect every value.
    args_override_self = true
)]
pub struct Config {
    /// A TOML file of options: keys are the long flag names without `--` (`http-addr` or
    /// `http_addr`), values are strings, integers, booleans, or arrays for repeatable flags.
    /// Flags and `LEDGER_*` variables win over the file. Unknown keys are an error.
    #[arg(long, env = "LEDGER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

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

    /// Disaster recovery after losing a majority for good (docs/OPERATIONS.md): on this
    /// stopped node's store, make this node the only voter, then exit. Start it normally
    /// afterwards; it elects itself and takes writes again, and new nodes join under new ids.
    /// Events committed by the lost nodes but never received by this one are lost: recover
    /// the node with the longest log. Never use it while a majority may still be alive.
    #[arg(long)]
    pub force_single_voter: bool,

    /// Threads of the async runtime that serves the HTTP API (and, with
    /// `--raft-worker-threads 0`, Raft too); 0 (the default) means one per CPU core. Where
    /// several nodes share a machine (a local cluster, a benchmark), give each about its share
    /// of the cores: `scripts/cluster.sh` starts each of its three nodes with cores / 3, at
    /// least 1 (docs/OPERATIONS.md, "Nodes that share a machine").
    #[arg(long, env = "LEDGER_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Threads of the async runtime that runs Raft apart from the HTTP API: openraft's core,
    /// replication to the followers, the state machine's applies and the peer gRPC server
    /// (docs/OPERATIONS.md, "Threads"). 1 (the default) is enough for the one core task and
    /// the one state-machine task openraft runs; 0 runs Raft on the API's runtime, where its
    /// messages wait in the same queue as client requests.
    #[arg(long, env = "LEDGER_RAFT_WORKER_THREADS", default_value_t = 1)]
    pub raft_worker_threads: usize,

    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, env = "LEDGER_HEARTBEAT_MS", default_value_t = 250)]
    pub heartbeat_ms: u64,

    /// Lower bound of the randomised election timeout, in milliseconds.
    #[arg(long, env = "LEDGER_ELECTION_TIMEOUT_MIN_MS", default_value_t = 1500)]
    pub election_timeout_min_ms: u64,

    /// Upper bound of the randomised election timeout, in milliseconds.
    #[arg(long, env = "LEDGER_ELECTION_TIMEOUT_MAX_MS", default_value_t = 3000)]
    pub election_timeout_max_ms: u64,

    /// Build a snapshot once this many Raft log entries were applied since the last one (or
    /// `--snapshot-log-bytes` of log were written) and, for snapshots over 16 MiB, the log
    /// written since is at least as large as the last one.
    #[arg(long, env = "LEDGER_SNAPSHOT_LOGS", default_value_t = 100_000)]
    pub snapshot_logs: u64,

    /// Build a snapshot once this many bytes of Raft log were written since the last one, even
    /// before `--snapshot-logs` entries (large entries: group-committed batches), with the same
    /// rule for snapshots over 16 MiB. In bytes.
    #[arg(long, env = "LEDGER_SNAPSHOT_LOG_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub snapshot_log_bytes: u64,

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

    /// Group-commit batches (Raft entries) this node has in flight at once. Few, so that
    /// batches stay large (each Raft entry costs an fsync and an apply on every node); 2 since
    /// a leader no longer waits for its own fsync before it replicates: the next batch is
    /// written and sent while the one before commits (docs/PERFORMANCE.md).
    #[arg(long, env = "LEDGER_WRITE_BATCHES_IN_FLIGHT_MAX", default_value_t = 2)]
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

    /// Log format: `text` or `json` (one JSON object per line). Filter with `LEDGER_LOG`
    /// (tracing's `EnvFilter` syntax, e.g. `info,openraft=debug`).
    #[arg(long, env = "LEDGER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log one line per HTTP request (target `access`: status, latency, request id, route,
    /// key id — never the key itself).
    #[arg(long, env = "LEDGER_ACCESS_LOG")]
    pub access_log: bool,

    /// Sustained requests per second one API key may send to this node; 0 turns the limit off.
    /// Over budget: 429 `RATE_LIMITED` with `Retry-After`. Budgets are per node.
    #[arg(long, env = "LEDGER_RATE_LIMIT_KEY_RPS", default_value_t = 5_000)]
    pub rate_limit_key_rps: u32,

    /// Requests one API key may send at once above its sustained rate.
    #[arg(long, env = "LEDGER_RATE_LIMIT_KEY_BURST", default_value_t = 10_000)]
    pub rate_limit_key_burst: u32,

    /// Sustained requests per second one client address may send without an API key (public
    /// reads, the explorer); 0 turns the limit off.
    #[arg(long, env = "LEDGER_RATE_LIMIT_ANONYMOUS_RPS", default_value_t = 1_000)]
    pub rate_limit_anonymous_rps: u32,

    /// Requests one client address may send at once without an API key above its rate.
    #[arg(
        long,
        env = "LEDGER_RATE_LIMIT_ANONYMOUS_BURST",
        default_value_t = 2_000
    )]
    pub rate_limit_anonymous_burst: u32,

    /// HTTP requests this node serves at once; more are answered 503 `OVERLOADED` with
    /// `Retry-After` at once (load shedding). `/livez`, `/readyz` and `/metrics` are exempt.
    #[arg(
        long,
        env = "LEDGER_HTTP_REQUESTS_IN_FLIGHT_MAX",
        default_value_t = 4_096
    )]
    pub http_requests_in_flight_max: usize,

    /// Longest time an HTTP request may take, in milliseconds, before it is answered 503
    /// `TIMEOUT`. Must exceed --write-deadline-ms.
    #[arg(long, env = "LEDGER_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_request_timeout_ms: u64,
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
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(format!(
                "--worker-threads ({}) must be at most {WORKER_THREADS_MAX} (0: one per CPU core)",
                self.worker_threads
            ));
        }
        if self.raft_worker_threads > WORKER_THREADS_MAX {
            return Err(format!(
                "--raft-worker-threads ({}) must be at most {WORKER_THREADS_MAX} (0: Raft runs on the API's runtime)",
                self.raft_worker_threads
            ));
        }
        if self.snapshot_logs == 0 {
            return Err("--snapshot-logs must be positive".into());
        }
        if self.snapshot_log_bytes == 0 {
            return Err("--snapshot-log-bytes must be positive".into());
        }
        if self.write_queue_commands_max == 0
            || self.write_batches_in_flight_max == 0
            || self.batch_commands_max == 0
        {
            return Err("--write-queue-commands-max, --write-batches-in-flight-max and --batch-commands-max must be positive".into());
        }
        if self.rate_limit_key_rps > 0 && self.rate_limit_key_burst == 0 {
            return Err("--rate-limit-key-burst must be positive".into());
        }
        if self.rate_limit_anonymous_rps > 0 && self.rate_limit_anonymous_burst == 0 {
            return Err("--rate-limit-anonymous-burst must be positive".into());
        }
        if self.http_requests_in_flight_max == 0 {
            return Err("--http-requests-in-flight-max must be positive".into());
        }
        if self.write_deadline_ms == 0
            || self.write_deadline_ms > raft_store::dedup::WRITE_DEADLINE_MS_MAX
        {
            return Err(format!(
                "--write-deadline-ms ({}) must be between 1 and {}: a write's retries must end well inside the window in which the state machine dedupes them",
                self.write_deadline_ms,
                raft_store::dedup::WRITE_DEADLINE_MS_MAX
            ));
        }
        if self.http_request_timeout_ms <= self.write_deadline_ms {
            return Err(format!(
                "--http-request-timeout-ms ({}) must be larger than --write-deadline-ms ({}): a write waiting for a leader would be cut off",
                self.http_request_timeout_ms, self.write_deadline_ms
            ));
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

impl Config {
    /// Parses the command line, the environment and the `--config` file (in that order of
    /// precedence). The error is one line for the user.
    pub fn load() -> Result<Self, String> {
        Self::load_from(std::env::args_os().collect())
    }

    pub fn load_from(args: Vec<std::ffi::OsString>) -> Result<Self, String> {
        use clap::CommandFactory;
        use clap::FromArgMatches;
        let clap_error = |e: clap::Error| -> String {
            // --help and --version print and exit like every clap program.
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                e.exit();
            }
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            text.trim_end().replace('\n', " ")
        };
        let command = Self::command();
        // The file's path: `--config PATH`, `--config=PATH`, else `LEDGER_CONFIG`.
        let from_flag = args.iter().enumerate().find_map(|(i, arg)| {
            let arg = arg.to_str()?;
            if arg == "--config" {
                args.get(i + 1).map(PathBuf::from)
            } else {
                arg.strip_prefix("--config=").map(PathBuf::from)
            }
        });
        let Some(path) = from_flag.or_else(|| std::env::var_os("LEDGER_CONFIG").map(PathBuf::from))
        else {
            let matches = command.try_get_matches_from(&args).map_err(clap_error)?;
            return Self::from_arg_matches(&matches).map_err(clap_error);
        };
        let path = &path;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: cannot read: {e}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            format!(
                "--config {}: not valid TOML: {}",
                path.display(),
                e.message().trim()
            )
        })?;
        let on_command_line = |long: &str| {
            args.iter().skip(1).filter_map(|a| a.to_str()).any(|a| {
                a.strip_prefix("--")
                    .and_then(|a| a.strip_prefix(long))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            })
        };
        let mut extra = Vec::new();
        for (key, value) in &table {
            let id = key.replace('-', "_");
            let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_id().as_str() == id && a.get_long().is_some())
            else {
                return Err(format!(
                    "--config {}: unknown option {key:?} (see ledgerd --help)",
                    path.display()
                ));
            };
            if id == "config" {
                return Err(format!(
                    "--config {}: a config file cannot name another config file",
                    path.display()
                ));
            }
            let long = arg.get_long().unwrap_or(key.as_str());
            // A flag or a LEDGER_* variable wins over the file.
            let in_environment = arg
                .get_env()
                .is_some_and(|name| std::env::var_os(name).is_some());
            if in_environment || on_command_line(long) {
                continue;
            }
            let values = match value {
                toml::Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for value in values {
                match value {
                    toml::Value::Boolean(true) if !arg.get_action().takes_values() => {
                        extra.push(format!("--{long}"));
                    }
                    toml::Value::Boolean(false) if !arg.get_action().takes_values() => {}
                    toml::Value::String(text) => extra.push(format!("--{long}={text}")),
                    toml::Value::Integer(number) => extra.push(format!("--{long}={number}")),
                    toml::Value::Boolean(flag) => extra.push(format!("--{long}={flag}")),
                    other => {
                        return Err(format!(
                            "--config {}: {key}: expected a string, integer or boolean, found {}",
                            path.display(),
                            other.type_str()
                        ));
                    }
                }
            }
        }
        let mut all = args;
        all.extend(extra.into_iter().map(Into::into));
        let matches = command
            .try_get_matches_from(&all)
            .map_err(|e| format!("--config {}: {}", path.display(), clap_error(e)))?;
        Self::from_arg_matches(&matches).map_err(clap_error)
    }

    /// The protection budgets of the HTTP API.
    pub fn budgets(&self) -> api::protect::Budgets {
        api::protect::Budgets {
            key_requests_per_s: self.rate_limit_key_rps,
            key_burst_requests: self.rate_limit_key_burst,
            anonymous_requests_per_s: self.rate_limit_anonymous_rps,
            anonymous_burst_requests: self.rate_limit_anonymous_burst,
            in_flight_max: self.http_requests_in_flight_max,
            request_timeout: std::time::Duration::from_millis(self.http_request_timeout_ms),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, String> {
        Config::load_from(args.iter().map(Into::into).collect())
    }

    /// A node's minimal command line (`--id 1 --data-dir /tmp/x`) followed by `flags`.
    fn load_with(flags: &[&str]) -> Result<Config, String> {
        load(&[&["ledgerd", "--id", "1", "--data-dir", "/tmp/x"], flags].concat())
    }

    /// The example shipped in deploy/ is valid and complete.
    #[test]
    fn the_example_config_file_loads() {
        let config = load(&["ledgerd", "--config", "../deploy/ledgerd.toml"]).expect("loads");
        config.validate().expect("valid");
        assert_eq!(config.id, 1);
        assert_eq!(config.log_format, "json");
        assert_eq!(config.http_addr, "10.0.0.11:8080".parse().expect("addr"));
        assert_eq!(config.snapshot_logs, 100_000);
        assert_eq!(config.snapshot_log_bytes, 256 * 1024 * 1024);
        assert_eq!(config.worker_threads, 0);
        assert_eq!(config.raft_worker_threads, 1);
        // A flag wins over the file.
        let config =
            load(&["ledgerd", "--config", "../deploy/ledgerd.toml", "--id=7"]).expect("loads");
        assert_eq!(config.id, 7);
    }

    /// The write deadline is bounded by the dedup window: at the limit it is accepted, one
    /// past it (and 0) refused with a message naming the flag.
    #[test]
    fn the_write_deadline_stays_inside_the_dedup_window() {
        let max = raft_store::dedup::WRITE_DEADLINE_MS_MAX;
        let with = |deadline: u64| {
            load_with(&[
                "--write-deadline-ms",
                &deadline.to_string(),
                "--http-request-timeout-ms",
                &(max + 10_000).to_string(),
            ])
            .expect("parses")
            .validate()
        };
        with(max).expect("at the limit");
        for deadline in [0, max + 1] {
            let error = with(deadline).expect_err("past the limit");
            assert!(error.contains("--write-deadline-ms"), "{error}");
        }
    }

    #[test]
    fn timeouts_must_exceed_the_write_deadline() {
        let config = load_with(&["--http-request-timeout-ms", "10000"]).expect("parses");
        let error = config.validate().expect_err("invalid");
        assert!(error.contains("--http-request-timeout-ms"), "{error}");
    }

    /// A flag given again takes its last value; a repeatable one keeps all of them.
    #[test]
    fn a_later_flag_wins_and_repeatable_flags_collect() {
        let config = load_with(&[
            "--worker-threads",
            "2",
            "--heartbeat-ms=100",
            "--worker-threads=1",
            "--heartbeat-ms",
            "200",
            "--peer-route",
            "127.0.0.1:1=127.0.0.1:2",
            "--peer-route",
            "127.0.0.1:3=127.0.0.1:4",
        ])
        .expect("parses");
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.heartbeat_ms, 200);
        assert_eq!(config.peer_routes.len(), 2);
    }

    /// `--worker-threads` (default 0: one per core) and `--raft-worker-threads` (default 1; 0:
    /// Raft on the API's runtime): 0, 1 and the limit are accepted, one past it refused with a
    /// message naming the flag.
    #[test]
    fn thread_counts_are_bounded() {
        let defaults = load_with(&[]).expect("parses");
        assert_eq!(defaults.worker_threads, 0);
        assert_eq!(defaults.raft_worker_threads, 1);
        for flag in ["--worker-threads", "--raft-worker-threads"] {
            let with = |threads: usize| {
                load_with(&[flag, &threads.to_string()])
                    .expect("parses")
                    .validate()
            };
            for threads in [0, 1, WORKER_THREADS_MAX] {
                with(threads).unwrap_or_else(|error| panic!("{flag} {threads}: {error}"));
            }
            let error = with(WORKER_THREADS_MAX + 1).expect_err("past the limit");
            assert!(error.starts_with(&format!("{flag} (")), "{flag}: {error}");
        }
    }

    #[test]
    fn snapshot_triggers_must_be_positive() {
        for (flag, name) in [
            ("--snapshot-logs=0", "--snapshot-logs"),
            ("--snapshot-log-bytes=0", "--snapshot-log-bytes"),
        ] {
            let config = load_with(&[flag]).expect("parses");
            let error = config.validate().expect_err("invalid");
            assert!(error.contains(name), "{error}");
        }
        let config = load_with(&["--snapshot-log-bytes=1"]).expect("parses");
        config.validate().expect("valid");
    }
}
