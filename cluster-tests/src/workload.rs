//! `Workload`: concurrent writers over the live nodes, recording a `History`.
//!
//! Appends go round-robin to the agents of the cluster's pool ([`Api::agents`]), with the admin
//! key. Each append carries a unique operation token in its metadata (`{"op": "..."}`), so the
//! checker can map every event in a log back to an attempt. Outcomes follow the checker's
//! vocabulary: `ok` (201 with `seq` and `hash`), `fail` (a 4xx: nothing written) and `unknown`
//! (no answer, or a 5xx: it may or may not have been written).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::api::{Api, Consistency, Event};

/// Pause after a failed append before the worker tries again (no hot loops on fast 503s).
pub const RETRY_PAUSE_MS: u64 = 50;
/// With [`WorkloadOptions::idempotent_retries`]: attempts per operation before it is left with
/// an unknown outcome.
pub const ATTEMPTS_PER_OP_MAX: u32 = 100;

/// How a [`Workload`] writes.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent writers.
    pub writers: usize,
    /// Stop after this many operations in total; `None` runs until stopped.
    pub attempts_max: Option<u64>,
    /// Follow every acknowledgement with a default head read on another live node, which must
    /// include the acknowledged append (guide I8).
    pub check_reads: bool,
    /// Send every append with an `Idempotency-Key` (its operation token) and resend it with
    /// the same key, to the next live node, after every unknown outcome, until it is
    /// acknowledged or definitely rejected (guide S16). Without it, a writer moves on to a new
    /// operation after any failure.
    pub idempotent_retries: bool,
    /// Pause of each writer after each acknowledged append (paces the load).
    pub pause: Duration,
    /// With `idempotent_retries`: after an acknowledgement, send the same request (same key,
    /// same body) this many more times to the next live nodes; every answer must be the event
    /// first acknowledged (guide S16: "each append retried 3x").
    pub duplicate_sends: u32,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions {
            writers: 4,
            attempts_max: None,
            check_reads: false,
            idempotent_retries: false,
            pause: Duration::ZERO,
            duplicate_sends: 0,
        }
    }
}
/// Used by writers of a cluster without an agent pool.
const UNREGISTERED_ASN: &str = "ASN-2026-0000-0000-A";

/// One acknowledged append.
#[derive(Clone, Debug)]
pub struct Ack {
    pub node: u64,
    pub op: String,
    pub event: Event,
    pub invoked: Instant,
    pub completed: Instant,
}

/// Everything the workload attempted.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub acked: Vec<Ack>,
    /// Operation tokens of every attempt (ok, fail and unknown).
    pub attempted_ops: HashSet<String>,
    /// Definite failures by label (`409 CONFLICT`, ...).
    pub failed: BTreeMap<String, u64>,
    /// Unknown outcomes by label (`transport`, `503 UNAVAILABLE`, ...).
    pub unknown: BTreeMap<String, u64>,
    /// Default (linearizable) head reads made on another node right after an acknowledgement.
    pub reads_checked: u64,
    /// Those reads that did not include the acknowledged append (guide I8), described.
    pub stale_reads: Vec<String>,
    /// Requests sent again with the same `Idempotency-Key` after an unknown outcome.
    pub resends: u64,
    /// Operations acknowledged only after at least one resend.
    pub ops_resent_then_acked: u64,
    /// Operations given up after [`ATTEMPTS_PER_OP_MAX`] attempts or at stop (outcome unknown).
    pub ops_unresolved: u64,
    /// Duplicate sends ([`WorkloadOptions::duplicate_sends`]) answered with an event.
    pub duplicates_answered: u64,
    /// Duplicate sends answered with another event than the one first acknowledged, described.
    pub duplicate_mismatches: Vec<String>,
}

impl History {
    /// The acknowledged event with the largest `seq`.
    pub fn max_acked_seq(&self) -> u64 {
        self.acked
            .iter()
            .map(|ack| ack.event.seq)
            .max()
            .unwrap_or(0)
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} attempted, {} ok, failed {:?}, unknown {:?}, {} reads checked, {} stale",
            self.attempted_ops.len(),
            self.acked.len(),
            self.failed,
            self.unknown,
            self.reads_checked,
            self.stale_reads.len()
        );
        if self.duplicates_answered > 0 || !self.duplicate_mismatches.is_empty() {
            line.push_str(&format!(
                ", {} duplicate sends answered ({} with another event)",
                self.duplicates_answered,
                self.duplicate_mismatches.len()
            ));
        }
        if self.resends > 0 || self.ops_unresolved > 0 {
            line.push_str(&format!(
                ", {} resends with the same key ({} operations acknowledged after a resend, {} \
                 unresolved)",
                self.resends, self.ops_resent_then_acked, self.ops_unresolved
            ));
        }
        line
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    tickets: AtomicU64,
    next_node: AtomicUsize,
    history: Mutex<History>,
}

impl Shared {
    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Running writers. Stop them with [`Workload::stop`] or wait for a bounded run with
/// [`Workload::join`].
pub struct Workload {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `concurrency` writers that loop until stopped, or until `attempts_max` appends
    /// have been attempted in total when it is `Some`. Each append goes to the next live node,
    /// round-robin.
    pub fn start(api: Api, concurrency: usize, attempts_max: Option<u64>) -> Workload {
        Workload::start_checked(api, concurrency, attempts_max, false)
    }

    /// Like [`Workload::start`]; with `check_reads`, every acknowledgement is followed by a
    /// default head read on another live node, which must include the acknowledged append.
    pub fn start_checked(
        api: Api,
        concurrency: usize,
        attempts_max: Option<u64>,
        check_reads: bool,
    ) -> Workload {
        Workload::start_with(
            api,
            WorkloadOptions {
                writers: concurrency,
                attempts_max,
                check_reads,
                ..WorkloadOptions::default()
            },
        )
    }

    /// Starts writers as `options` says.
    pub fn start_with(api: Api, options: WorkloadOptions) -> Workload {
        let shared = Arc::new(Shared::default());
        let run = uuid::Uuid::new_v4().simple().to_string();
        // Without a pool the writers use a well-formed ASN nobody registered: every append then
        // fails with 404, which the history shows.
        let mut agents = api.agents();
        if agents.is_empty() {
            agents.push(UNREGISTERED_ASN.to_string());
        }
        let agents = Arc::new(agents);
        let workers = (0..options.writers)
            .map(|worker| {
                let api = api.clone();
                let shared = shared.clone();
                let run = run[..8].to_string();
                let agents = agents.clone();
                let options = options.clone();
                tokio::spawn(
                    async move { write_loop(api, shared, agents, run, worker, options).await },
                )
            })
            .collect();
        Workload { shared, workers }
    }

    /// Appends acknowledged so far.
    pub fn acked(&self) -> usize {
        self.shared.history().acked.len()
    }

    /// Appends acknowledged whose request was sent after `instant`.
    pub fn acked_invoked_after(&self, instant: Instant) -> usize {
        self.shared
            .history()
            .acked
            .iter()
            .filter(|ack| ack.invoked > instant)
            .count()
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.shared.history().clone()
    }

    /// Waits until `count` appends sent after `instant` are acknowledged.
    pub async fn wait_acked_after(
        &self,
        instant: Instant,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        crate::wait_for(
            timeout,
            &format!("{count} acknowledged appends"),
            async || {
                let got = self.acked_invoked_after(instant);
                ensure!(
                    got >= count,
                    "{got} acknowledged; {}",
                    self.snapshot().summary()
                );
                Ok(())
            },
        )
        .await
    }

    /// Stops the writers, waits for the requests in flight and returns the history.
    pub async fn stop(self) -> Result<History> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits until the writers end by themselves (bounded runs) and returns the history.
    pub async fn join(self) -> Result<History> {
        for worker in self.workers {
            worker.await.context("a workload writer panicked")?;
        }
        let history = self.shared.history().clone();
        Ok(history)
    }
}

async fn write_loop(
    api: Api,
    shared: Arc<Shared>,
    agents: Arc<Vec<String>>,
    run: String,
    worker: usize,
    options: WorkloadOptions,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        let ticket = shared.tickets.fetch_add(1, Ordering::SeqCst);
        if options.attempts_max.is_some_and(|max| ticket >= max) {
            return;
        }
        if api.live_nodes().is_empty() {
            shared.tickets.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            continue;
        }
        let op = format!("{run}-{worker}-{ticket}");
        shared.history().attempted_ops.insert(op.clone());
        let asn = &agents[(ticket % agents.len() as u64) as usize];
        let metadata = json!({ "op": op, "worker": worker });
        let invoked = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let live = api.live_nodes();
            if live.is_empty() {
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                continue;
            }
            let position = shared.next_node.fetch_add(1, Ordering::SeqCst);
            let node = live[position % live.len()];
            let reader = live[(position + 1) % live.len()];
            let result = if options.idempotent_retries {
                api.report_idempotent(node, asn, "task_completed", metadata.clone(), &op)
                    .await
            } else {
                api.report(node, asn, "task_completed", metadata.clone())
                    .await
            };
            let completed = Instant::now();
            match result {
                Ok(event) => {
                    let seq = event.seq;
                    let acknowledged = (options.idempotent_retries && options.duplicate_sends > 0)
                        .then(|| event.clone());
                    {
                        let mut history = shared.history();
                        if attempt > 1 {
                            history.ops_resent_then_acked += 1;
                        }
                        history.acked.push(Ack {
                            node,
                            op: op.clone(),
                            event,
                            invoked,
                            completed,
                        });
                    }
                    if options.check_reads {
                        check_read(&api, &shared, reader, node, &op, seq).await;
                    }
                    if let Some(acknowledged) = acknowledged {
                        for _ in 0..options.duplicate_sends {
                            let live = api.live_nodes();
                            if live.is_empty() {
                                break;
                            }
                            let position = shared.next_node.fetch_add(1, Ordering::SeqCst);
                            let again = live[position % live.len()];
                            let answer = api
                                .report_idempotent(
                                    again,
                                    asn,
                                    "task_completed",
                                    metadata.clone(),
                                    &op,
                                )
                                .await;
                            // An unknown outcome of a duplicate proves nothing either way.
                            if let Ok(event) = answer {
                                let mut history = shared.history();
                                history.duplicates_answered += 1;
                                if event != acknowledged {
                                    history.duplicate_mismatches.push(format!(
                                        "op {op}: acknowledged at seq {seq}, a resend to node \
                                         {again} answered seq {} id {}",
                                        event.seq, event.id
                                    ));
                                }
                            }
                        }
                    }
                    if !options.pause.is_zero() {
                        tokio::time::sleep(options.pause).await;
                    }
                    break;
                }
                Err(error) => {
                    let definite = error.is_definite();
                    {
                        let mut history = shared.history();
                        let counts = if definite {
                            &mut history.failed
                        } else {
                            &mut history.unknown
                        };
                        *counts.entry(error.label()).or_insert(0) += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                    if definite || !options.idempotent_retries {
                        break;
                    }
                    if attempt >= ATTEMPTS_PER_OP_MAX || shared.stop.load(Ordering::SeqCst) {
                        shared.history().ops_unresolved += 1;
                        break;
                    }
                    shared.history().resends += 1;
                }
            }
        }
    }
}

/// A default head read on `reader` right after `op` was acknowledged at `seq` by `node`.
async fn check_read(api: &Api, shared: &Shared, reader: u64, node: u64, op: &str, seq: u64) {
    // A read that fails (503 during an election, a killed node) proves nothing.
    if let Ok(head) = api.head(reader, Consistency::Linearizable).await {
        let mut history = shared.history();
        history.reads_checked += 1;
        if head.size < seq {
            history.stale_reads.push(format!(
                "op {op} acknowledged at seq {seq} by node {node}; a default read on node \
                 {reader} sent afterwards saw size {}",
                head.size
            ));
        }
    }
}
