//! One ledger node: configuration ([`config`]), the data directory's identity ([`identity`]),
//! the peer network ([`network`], [`peer_server`]), group commit ([`writer`]), the service
//! behind the HTTP API ([`service`]) and when to build snapshots ([`snapshots`]). [`run`] wires
//! them together.
//!
//! Invariants (see ARCHITECTURE.md): protobuf types stay in `network` and `peer_server`; a
//! write is acknowledged only after openraft reports it committed (fsynced on a majority) and
//! applied; storage failure stops the process.

pub mod config;
pub mod identity;
pub mod metrics;
pub mod network;
pub mod peer_server;
pub mod pipe;
pub mod service;
pub mod snapshots;
pub mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use anyhow::anyhow;
use axum::serve::ListenerExt;
use openraft::SnapshotPolicy;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::LedgerNode;
use raft_store::NodeRecord;
use raft_store::Permission;

use crate::config::Config;
use crate::identity::DataDir;
use crate::network::Local;
use crate::network::Network;
use crate::network::Peers;
use crate::service::LedgerService;
use crate::writer::Router;
use crate::writer::Writer;
use crate::writer::WriterLimits;

/// How long the bootstrap node waits between attempts to record the cluster, in milliseconds.
const INIT_RETRY_MS: u64 = 200;
/// Raft entries sent in one AppendEntries, at most.
const APPEND_ENTRIES_MAX: u64 = 64;

#[derive(Debug)]
pub enum RunError {
    /// Bad configuration or environment: nothing was served.
    Startup(anyhow::Error),
    /// The node stopped because continuing could lose or corrupt data.
    Fatal(String),
}

impl From<anyhow::Error> for RunError {
    fn from(error: anyhow::Error) -> Self {
        Self::Startup(error)
    }
}

fn init_logging(format: &str, access_log: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn,access={}",
            if access_log { "info" } else { "warn" }
        ))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `--force-single-voter`: rewrites this stopped node's membership to itself alone, then exits.
async fn force_single_voter(config: &Config) -> Result<(), RunError> {
    use openraft::storage::RaftStateMachine;
    let data_dir = DataDir::open(&config.data_dir)?;
    let identity = data_dir.identity(config.id)?;
    if identity.cluster_id.is_none() {
        return Err(RunError::Startup(anyhow!(
            "--force-single-voter: {} holds no cluster (this node never joined one)",
            config.data_dir.display()
        )));
    }
    let (mut log_store, mut state_machine) = open_store(&data_dir.store_dir())?;
    let (_, applied) = state_machine
        .applied_state()
        .await
        .map_err(|e| anyhow!("--force-single-voter: cannot read the applied membership: {e}"))?;
    let forced = log_store
        .force_single_voter(config.id, &applied)
        .await
        .map_err(|e| anyhow!("--force-single-voter: {e}"))?;
    let message = format!(
        "ledgerd: node {} is now the only voter (was: {:?}) from log index {} in term {}; start it normally, then add new nodes under new ids",
        config.id, forced.previous_voters, forced.index, forced.term
    );
    tracing::warn!("{message}");
    eprintln!("{message}");
    Ok(())
}

fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {flag} {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Asks a member of the cluster named by `--join` for its cluster id.
async fn remote_cluster_id(url: &str) -> anyhow::Result<Option<String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("{}/api/v1/node", url.trim_end_matches('/'));
    let status: serde_json::Value = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(status
        .get("cluster_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

fn open_store(
    dir: &std::path::Path,
) -> anyhow::Result<(raft_store::LogStore, raft_store::StateMachineStore)> {
    raft_store::open(dir).map_err(|error| match error {
        raft_store::StoreError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            anyhow!("store {} is in use by another process", dir.display())
        }
        raft_store::StoreError::Sled(sled::Error::Io(e)) if e.to_string().contains("lock") => {
            anyhow!("store {} is in use by another process ({e})", dir.display())
        }
        raft_store::StoreError::Corrupt(message) => {
            anyhow!(
                "refusing to start: the store in {} is damaged: {message}",
                dir.display()
            )
        }
        other => anyhow!("cannot open the store in {}: {other}", dir.display()),
    })
}

/// Runs the node until a signal, a fatal error or a failed start. Raft (openraft's core,
/// replication and state-machine tasks, and the peer gRPC server) runs on `raft_runtime`, the
/// HTTP API on the runtime this future runs on; they may be the same
/// (`--raft-worker-threads 0`). openraft spawns its tasks on the runtime `Raft::new` runs on,
/// and tonic a connection's task on the runtime that accepts it.
pub async fn run(config: Config, raft_runtime: tokio::runtime::Handle) -> Result<(), RunError> {
    init_logging(&config.log_format, config.access_log);
    if config.force_single_voter {
        return force_single_voter(&config).await;
    }
    let http_listener = bind(config.http_addr, "--http-addr")?;
    let grpc_listener = bind(config.grpc_addr, "--grpc-addr")?;
    let data_dir = Arc::new(DataDir::open(&config.data_dir)?);
    let mut identity = data_dir.identity(config.id)?;
    let node_key = data_dir.node_key()?;

    if let (Some(url), Some(ours)) = (&config.join, &identity.cluster_id) {
        match remote_cluster_id(url).await {
            Ok(Some(theirs)) if &theirs != ours => {
                return Err(RunError::Startup(anyhow!(
                    "data directory {} belongs to cluster {ours}, but --join {url} is a member of cluster {theirs}",
                    config.data_dir.display()
                )));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%url, error = %format!("{error:#}"), "cannot check --join; continuing")
            }
        }
    }

    let (log_store, state_machine) = open_store(&data_dir.store_dir())?;
    let ledger = state_machine.ledger().clone();

    let self_node = LedgerNode {
        grpc_addr: config.grpc_addr.to_string(),
        http_addr: config.http_addr.to_string(),
    };
    let local = Arc::new(Local {
        node_id: config.id,
        cluster_id: RwLock::new(identity.cluster_id.clone()),
    });
    let routes = config
        .peer_routes
        .iter()
        .map(|r| (r.from.to_string(), r.to.to_string()))
        .collect();
    let append_entries_bytes =
        prometheus_client::metrics::histogram::Histogram::new(metrics::message_bytes_buckets());
    let streams_opened = network::StreamsOpened::default();
    let peers = Peers::new(
        Arc::clone(&local),
        routes,
        append_entries_bytes.clone(),
        streams_opened.clone(),
    );
    let raft_config = openraft::Config {
        cluster_name: "asn-ledger".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        install_snapshot_timeout: network::SNAPSHOT_SEND_TIMEOUT_MS,
        max_payload_entries: APPEND_ENTRIES_MAX,
        // Our own policy triggers snapshots: see `snapshot_policy`.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
        ..Default::default()
    }
    .validate()
    .map_err(|e| anyhow!("invalid Raft configuration: {e}"))?;
    let raft = raft_runtime
        .spawn(raft_store::Raft::new(
            config.id,
            Arc::new(raft_config),
            Network {
                peers: peers.clone(),
            },
            log_store.clone(),
            state_machine.clone(),
        ))
        .await
        .map_err(|e| anyhow!("cannot start Raft: {e}"))?
        .map_err(|e| anyhow!("cannot start Raft: {e}"))?;
    // Bootstrap a new cluster: only on a data directory that never joined one.
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| anyhow!("raft: {e}"))?;
    let bootstrapping = config.bootstrap
        && !initialized
        && (identity.cluster_id.is_none() || identity.bootstrapped);
    if config.bootstrap && !initialized && !bootstrapping {
        tracing::warn!("--bootstrap ignored: this data directory joined a cluster");
    }
    if bootstrapping {
        if identity.cluster_id.is_none() {
            identity.cluster_id = Some(uuid::Uuid::new_v4().to_string());
            identity.bootstrapped = true;
            data_dir.save_identity(&identity)?;
        }
        if data_dir.read_admin_key()?.is_none() {
            let (_, key) = api::generate_key(rand::random(), rand::random());
            data_dir.write_admin_key(&key)?;
        }
        if let Some(cluster_id) = &identity.cluster_id {
            local.set_cluster_id(cluster_id.clone());
        }
        let members = BTreeMap::from([(config.id, self_node.clone())]);
        raft.initialize(members)
            .await
            .map_err(|e| anyhow!("cannot initialise the cluster: {e}"))?;
        tracing::info!(cluster_id = ?identity.cluster_id, "bootstrapped a new cluster");
    }

    let deadline = Duration::from_millis(config.write_deadline_ms);
    let router = Router {
        raft: raft.clone(),
        peers: peers.clone(),
        deadline,
        proposals: Default::default(),
    };
    let writer = Writer::start(
        router.clone(),
        WriterLimits {
            queue_commands_max: config.write_queue_commands_max,
            batches_in_flight_max: config.write_batches_in_flight_max,
            batch_commands_max: config.batch_commands_max,
        },
    );
    let metrics = metrics::NodeMetrics::new(
        data_dir.store_dir(),
        log_store.sync_stats(),
        writer.stats.batch_commands.clone(),
        writer.stats.batch_seconds.clone(),
        writer.stats.answers_per_signature.clone(),
        append_entries_bytes,
        streams_opened,
    );
    let service = Arc::new(LedgerService {
        raft: raft.clone(),
        ledger,
        log_store,
        peers,
        writer,
        router,
        public_key: node_key.verifying_key().to_bytes(),
        signing_key: node_key.clone(),
        signer_name: std::sync::OnceLock::new(),
        self_node: self_node.clone(),
        deadline,
        metrics,
        protection: api::protect::Protection::new(config.budgets()),
        snapshot_turn: Arc::default(),
    });
    service.metrics.attach(&service);
    tokio::spawn(snapshots::snapshot_policy(
        Arc::clone(&service),
        state_machine,
        snapshots::SnapshotTrigger {
            snapshot_logs: config.snapshot_logs,
            snapshot_log_bytes: config.snapshot_log_bytes,
        },
    ));

    if identity.bootstrapped {
        tokio::spawn(record_cluster(
            Arc::clone(&service),
            Arc::clone(&data_dir),
            identity.cluster_id.clone(),
        ));
    }

    {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(service::WITNESS_INTERVAL_MS));
            let mut joint_seen = None;
            loop {
                tick.tick().await;
                service.witness().await;
                service.finish_joint_membership(&mut joint_seen).await;
            }
        });
    }

    let peer_server = peer_server::PeerServer {
        service: Arc::clone(&service),
        data_dir: Arc::clone(&data_dir),
    };
    // Built on Raft's runtime, so that its listener and connections are polled by that
    // runtime's I/O driver: an AppendEntries wakes Raft's thread, not the API's.
    let mut grpc = raft_runtime.spawn(async move {
        let incoming = tokio::net::TcpListener::from_std(grpc_listener)
            .map_err(|e| format!("gRPC listener: {e}"))?;
        tonic::transport::Server::builder()
            .add_service(
                proto::peer_server::PeerServer::new(peer_server)
                    .max_decoding_message_size(network::GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(network::GRPC_MESSAGE_BYTES_MAX),
            )
            .serve_with_incoming(
                // Small request/response frames: Nagle plus delayed ACKs would add ~40 ms a
                // call.
                tonic::transport::server::TcpIncoming::from(incoming).with_nodelay(Some(true)),
            )
            .await
            .map_err(|e| e.to_string())
    });
    let http_listener = tokio::net::TcpListener::from_std(http_listener)
        .context("HTTP listener")?
        .tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!(%error, "cannot set TCP_NODELAY");
            }
        });
    // The client's address reaches the API (rate limits for requests without a key).
    let http = axum::serve(
        http_listener,
        api::router(Arc::clone(&service)).into_make_service_with_connect_info::<SocketAddr>(),
    );
    tracing::info!(
        id = config.id,
        http = %config.http_addr,
        grpc = %config.grpc_addr,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        raft_worker_threads = config.raft_worker_threads,
        "ledgerd serving"
    );

    // openraft's core reports a fatal error in `metrics()` as it stops, and its channels close
    // when it has stopped. Wait for that on `server_metrics()`, which changes only with the
    // node's role, vote or membership: `metrics()` changes with every write, and this future
    // runs on the main thread, which each change woke (2 to 3 thread wake-ups per write per
    // node, docs/PERFORMANCE.md).
    let mut server_metrics = raft.server_metrics();
    let metrics = raft.metrics();
    let fatal = async move {
        while server_metrics.changed().await.is_ok() {}
        match &metrics.borrow().running_state {
            Err(error) => error.to_string(),
            Ok(()) => "raft stopped".to_owned(),
        }
    };
    let result = tokio::select! {
        result = &mut grpc => {
            let message = match result {
                Ok(Ok(())) => "it stopped".to_owned(),
                Ok(Err(message)) => message,
                Err(error) => error.to_string(),
            };
            Err(RunError::Fatal(format!("gRPC server failed: {message}")))
        }
        result = http => result.map_err(|e| RunError::Fatal(format!("HTTP server failed: {e}"))),
        message = fatal => Err(RunError::Fatal(format!("raft stopped: {message}"))),
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    grpc.abort();
    let _ = raft.shutdown().await;
    if result.is_ok() {
        // The state-machine worker has stopped: write the index runs and day counts it kept in
        // memory through to sled, so that the next start needs no restore (raft_store's
        // `deferred`), then make it durable.
        if let Err(error) = service.ledger.write_through() {
            tracing::warn!(
                %error,
                "cannot write the state machine's index runs and day counts through at shutdown; \
                 the next start restores it from its snapshot file"
            );
        }
        if let Err(error) = service.log_store.close() {
            tracing::warn!(%error, "cannot sync the state machine or write the log mark at shutdown");
        }
    }
    result
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// On the bootstrap node: once it leads, records the cluster id, the admin key and itself in
/// the replicated state (once; a restart finds it done).
async fn record_cluster(
    service: Arc<LedgerService>,
    data_dir: Arc<DataDir>,
    cluster_id: Option<String>,
) {
    let Some(cluster_id) = cluster_id else { return };
    loop {
        if matches!(service.ledger.cluster(), Ok(Some(_))) {
            return;
        }
        let key = match data_dir.read_admin_key() {
            Ok(Some(key)) => key,
            Ok(None) => {
                tracing::error!(
                    "the bootstrap admin key file is missing; the cluster cannot be initialised"
                );
                return;
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "cannot read the admin key");
                return;
            }
        };
        let key_id = key
            .get(api::KEY_PREFIX.len()..api::KEY_PREFIX.len() + 16)
            .unwrap_or_default()
            .to_owned();
        let command = Command::InitCluster {
            cluster_id: cluster_id.clone(),
            admin_key: raft_store::ApiKeyRecord {
                id: key_id,
                name: "bootstrap admin".into(),
                operator_id: None,
                permissions: vec![Permission::Admin],
                secret_sha256: api::hash_secret(&key),
                created_at_ms: writer::now_ms(),
                revoked: false,
            },
            node: NodeRecord {
                id: service.node_id(),
                grpc_addr: service.self_node.grpc_addr.clone(),
                http_addr: service.self_node.http_addr.clone(),
                public_key: service.public_key,
                retired: false,
            },
        };
        match service
            .writer
            .submit(api::proposal(&service.ledger, command))
            .await
        {
            Ok(CommandResult::Done) => {
                tracing::info!("cluster initialised");
                return;
            }
            Ok(CommandResult::Rejected { message, .. }) => {
                tracing::info!(%message, "cluster already initialised");
                return;
            }
            Ok(other) => tracing::error!(?other, "unexpected result for InitCluster"),
            Err(error) => {
                tracing::warn!(error = %error.message, "cannot initialise the cluster yet; retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(INIT_RETRY_MS)).await;
    }
}
