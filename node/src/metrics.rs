//! This node's Prometheus metrics, served by the API at `GET /metrics` (docs/OPERATIONS.md lists
//! them). Counters and histograms are updated where things happen (fsyncs in raft-store's
//! durability observer, group-commit batches in the writer, HTTP requests in the api
//! middleware); Raft and ledger state is read at scrape time by [`StateCollector`].

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;

use crate::service::LedgerService;

/// Latency buckets (fsyncs, group-commit batches), in seconds (50 µs to about 1.6 s).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

/// Group-commit batch size buckets, in commands per Raft entry (1 to 4096).
pub fn batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

/// Message size buckets, in bytes (1 KiB to 64 MiB, the gRPC limit), finer around the 4 MiB
/// that one AppendEntries carries at most besides its first entry (`APPEND_ENTRIES_BYTES_MAX`).
pub fn message_bytes_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 16.0, 256.0, 1024.0, 2048.0, 4096.0, 6144.0, 8192.0, 16384.0, 32768.0, 65536.0,
    ]
    .into_iter()
    .map(|kib| kib * 1024.0)
}

pub struct NodeMetrics {
    registry: Registry,
    pub http: api::metrics::HttpMetrics,
    state: Arc<StateCollector>,
}

impl NodeMetrics {
    /// Registers every metric. The fsync histogram is fed by the store's durability observer
    /// (set here), `batch_commands` and `batch_seconds` by the writer, `append_entries_bytes`
    /// and `streams_opened` by the Raft network ([`crate::network::Peers`]).
    pub fn new(
        store_dir: PathBuf,
        syncs: &raft_store::durability::SyncStats,
        batch_commands: Histogram,
        batch_seconds: Histogram,
        answers_per_signature: Histogram,
        append_entries_bytes: Histogram,
        streams_opened: crate::network::StreamsOpened,
    ) -> Self {
        let fsync_seconds = Histogram::new(duration_buckets());
        let observed = fsync_seconds.clone();
        if syncs
            .observer
            .set(Box::new(move |elapsed| {
                observed.observe(elapsed.as_secs_f64())
            }))
            .is_err()
        {
            tracing::warn!(
                "the store's fsyncs are already observed; ledger_fsync_duration stays empty"
            );
        }
        let mut registry = Registry::default();
        registry.register_with_unit(
            "ledger_fsync_duration",
            "Durable syncs of the Raft log (fdatasync of its segments): count and latency",
            Unit::Seconds,
            fsync_seconds,
        );
        registry.register(
            "ledger_group_commit_batch_commands",
            "Commands per group-commit batch (one Raft entry) proposed by this node",
            batch_commands,
        );
        registry.register_with_unit(
            "ledger_group_commit_batch_duration",
            "Group-commit batches proposed by this node, from proposal to answer: on the leader \
             committed on a majority and applied, on a follower forwarded and answered by the \
             leader (answered batches only)",
            Unit::Seconds,
            batch_seconds,
        );
        registry.register(
            "ledger_answers_per_signature",
            "Answers to reports per signature this node made for them: 1 for an answer signed on \
             its own, the group's size for answers that share one signature (an answer group)",
            answers_per_signature,
        );
        registry.register_with_unit(
            "ledger_raft_append_entries_sent",
            "AppendEntries messages this node sent as leader (heartbeats included): count and \
             encoded size",
            Unit::Bytes,
            append_entries_bytes,
        );
        registry.register(
            "ledger_peer_streams_opened",
            "Peer streams this node opened (node/src/pipe.rs), by the calls they carry \
             (append_entries to a follower, forward_write to the leader): again after a stream \
             failed or a call on it timed out, and for every replication openraft starts",
            streams_opened,
        );
        let http = api::metrics::HttpMetrics::default();
        http.register(&mut registry);
        let state = Arc::new(StateCollector {
            service: OnceLock::new(),
            store_dir,
        });
        registry.register_collector(Box::new(Arc::clone(&state)));
        Self {
            registry,
            http,
            state,
        }
    }

    /// Gives the scrape-time collector the service it reads (once, after it is built).
    pub fn attach(&self, service: &Arc<LedgerService>) {
        let _ = self.state.service.set(Arc::downgrade(service));
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        text
    }
}

/// Reads Raft and ledger state at scrape time.
pub struct StateCollector {
    service: OnceLock<Weak<LedgerService>>,
    store_dir: PathBuf,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector")
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

/// Bytes of every file under `dir` (log segments, sled files, snapshots); unreadable entries count 0.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn index(value: Option<u64>) -> i64 {
    value.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(service) = self.service.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let status = service.local_status();
        let (replication, quorum_ack_ms) = {
            let metrics = service.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.replication.clone(), metrics.millis_since_quorum_ack)
        };
        let e = &mut encoder;
        gauge(
            e,
            "ledger_raft_term",
            "Current Raft term",
            None,
            index(Some(status.term)),
        )?;
        gauge(
            e,
            "ledger_raft_leader_id",
            "Id of the leader this node knows (0: none)",
            None,
            index(status.leader_id),
        )?;
        gauge(
            e,
            "ledger_raft_is_leader",
            "1 if this node is the leader",
            None,
            i64::from(status.role == "leader"),
        )?;
        gauge(
            e,
            "ledger_raft_last_log_index",
            "Index of this node's last Raft log entry",
            None,
            index(status.last_log_index),
        )?;
        gauge(
            e,
            "ledger_raft_committed_index",
            "Highest Raft log index this node knows is committed",
            None,
            index(status.committed_index),
        )?;
        gauge(
            e,
            "ledger_raft_applied_index",
            "Highest Raft log index applied to this node's state machine",
            None,
            index(status.applied_index),
        )?;
        gauge(
            e,
            "ledger_raft_snapshot_index",
            "Raft log index of this node's latest snapshot",
            None,
            index(status.snapshot_index),
        )?;
        gauge(
            e,
            "ledger_snapshot_turn",
            "This node's snapshot turn: 0 no snapshot due, 1 due and waiting for its turn, 2 building",
            None,
            service.snapshot_turn.get() as i64,
        )?;
        gauge(
            e,
            "ledger_raft_voters",
            "Voters in the membership this node knows",
            None,
            i64::try_from(status.voters.len()).unwrap_or(i64::MAX),
        )?;
        if let Some(ms) = quorum_ack_ms {
            gauge(
                e,
                "ledger_raft_quorum_ack_age",
                "On the leader: time since a quorum last acknowledged it",
                Some(&Unit::Seconds),
                i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(replication) = replication {
            let last = status.last_log_index.unwrap_or(0);
            let mut family = e.encode_descriptor(
                "ledger_raft_replication_lag_entries",
                "On the leader: log entries each follower or learner is behind the leader",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (follower, matched) in replication {
                if follower == status.id {
                    continue;
                }
                let lag = last.saturating_sub(matched.map_or(0, |log_id| log_id.index));
                let labels = [("follower", follower.to_string())];
                ConstGauge::new(index(Some(lag))).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "ledger_store_size",
            "Bytes on disk of this node's store (log segments, sled files and snapshots)",
            Some(&Unit::Bytes),
            i64::try_from(dir_bytes(&self.store_dir)).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "ledger_state_machine_held",
            "Index runs and day counts the state machine holds in memory, not yet written \
             through to sled (estimated; written through past 32 MiB)",
            Some(&Unit::Bytes),
            i64::try_from(service.ledger.held_bytes()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "ledger_write_queue_commands",
            "Writes queued on this node for group commit",
            None,
            i64::try_from(service.writer.queued()).unwrap_or(i64::MAX),
        )?;
        // Last: a storage error leaves the ledger's metrics out of this scrape rather than
        // reporting 0.
        let Ok(head) = service.ledger.head() else {
            return Ok(());
        };
        let events = ConstCounter::new(head.size);
        let metric_encoder = e.encode_descriptor(
            "ledger_events",
            "Events in the ledger as this node has applied it",
            None,
            events.metric_type(),
        )?;
        events.encode(metric_encoder)?;
        if head.size > 0 {
            let age_ms = crate::writer::now_ms().saturating_sub(head.last_created_at_ms);
            gauge(
                e,
                "ledger_checkpoint_age",
                "Age of the newest checkpoint this node can sign (the time of its last event)",
                Some(&Unit::Seconds),
                age_ms.max(0) / 1000,
            )?;
        }
        Ok(())
    }
}
