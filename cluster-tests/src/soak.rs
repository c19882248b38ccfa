//! The soak (reliability guide S19): a seeded random mix of faults under an idempotent write
//! load, then a clean phase, then every check; it ends with one headline line.
//!
//! The schedule: a baseline phase without faults, then until `duration` runs out: wait until
//! the cluster is live (an agreed leader and a fresh acknowledgement, guide L1), pick a fault
//! (each kind once per round, in a seeded order), inject it, hold it, heal it; then heal everything, restart what is down, a clean phase of
//! the same length as the baseline, stop the writers, wait for the members to converge and
//! check every invariant (I1-I8 over every member's whole log, I9 from samples of each node's
//! state taken during the run). [`run`] is used by the quick profile (`t16_soak`) and by
//! `scripts/soak.sh DURATION`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::api::Api;
use crate::check::{self, Violations};
use crate::cluster::{Cluster, Options};
use crate::seed::Rng;
use crate::workload::{History, Workload, WorkloadOptions};

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Length of the fault phase.
    pub duration: Duration,
    pub seed: u64,
    pub writers: usize,
    /// Each writer's pause after an acknowledgement (paces the load for 2 cores).
    pub writer_pause: Duration,
    /// Length of the baseline phase and of the clean phase.
    pub clean_phase: Duration,
    /// At most this many node replacements (each uses a fresh node id).
    pub replacements_max: u64,
    /// Guide L1: after a heal, the cluster must acknowledge an append within this.
    pub recovery_timeout: Duration,
    /// `--snapshot-logs` of every node (`None`: ledgerd's default).
    pub snapshot_logs: Option<u64>,
    /// Writers send an `Idempotency-Key` and resend after an unknown outcome (S16). Without
    /// it they send none and move on after any failure, so every retry is the cluster's own
    /// (a forwarded batch sent again, deduplicated by its generated keys): an operation found
    /// twice is then the cluster's duplicate.
    pub idempotency_key: bool,
}

impl SoakOptions {
    /// Defaults for a run of `duration` with `seed`.
    pub fn new(duration: Duration, seed: u64) -> SoakOptions {
        SoakOptions {
            duration,
            seed,
            writers: 6,
            writer_pause: Duration::from_millis(20),
            clean_phase: Duration::from_secs(10),
            replacements_max: 8,
            recovery_timeout: Duration::from_secs(30),
            snapshot_logs: None,
            idempotency_key: true,
        }
    }
}

/// The faults the scheduler picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the leader, restart it after 0-5 s (S1).
    KillLeader,
    /// SIGKILL a follower, restart it after 0-5 s (S2).
    KillFollower,
    /// Cut (reset) or blackhole (silent) every link from and to the leader for 3-8 s (S4).
    IsolateLeader,
    /// Cut or blackhole one direction of one link for 3-8 s (S5).
    OneWay,
    /// Cut or blackhole the client's link to the leader for 3-8 s: its requests there get no
    /// answer, and the writers resend them elsewhere with the same key (S16).
    ClientCut,
    /// Cut 2-4 links one by one, heal them one by one in another order (S6).
    Flap,
    /// SIGSTOP the leader past the election timeout, then SIGCONT (S7).
    PauseLeader,
    /// Delay every link by 50-200 ms for 4-8 s (S8).
    SlowLinks,
    /// Add a node under a fresh id and remove a voter, the leader half of the time (S11).
    ReplaceNode,
}

const FAULTS: [Fault; 9] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::IsolateLeader,
    Fault::OneWay,
    Fault::ClientCut,
    Fault::Flap,
    Fault::PauseLeader,
    Fault::SlowLinks,
    Fault::ReplaceNode,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Fault::KillLeader => "leader kills",
            Fault::KillFollower => "follower kills",
            Fault::IsolateLeader => "leader isolations",
            Fault::OneWay => "one-way partitions",
            Fault::ClientCut => "client-link cuts",
            Fault::Flap => "flapping partitions",
            Fault::PauseLeader => "leader pauses",
            Fault::SlowLinks => "slow-link periods",
            Fault::ReplaceNode => "node replacements",
        };
        f.write_str(name)
    }
}

/// What a soak found.
#[derive(Clone, Debug)]
pub struct SoakReport {
    pub seed: u64,
    pub fault_phase: Duration,
    pub history: History,
    pub faults: BTreeMap<Fault, u64>,
    pub violations: Violations,
    /// Guide I9: regressions of a node's term, commit or applied index within one process
    /// lifetime, and samples breaking purged <= snapshot <= applied <= committed and
    /// applied <= last log.
    pub state_violations: Vec<String>,
    pub state_samples: u64,
    /// New snapshots (built or installed) the samples saw, over all nodes: a lower bound.
    pub snapshots_seen: u64,
    /// Per leader kill: from the SIGKILL to the first acknowledgement of an append sent after it.
    pub kill_unavailability: Vec<Duration>,
    /// Guide L1: the longest time from a heal to the next acknowledgement.
    pub recovery_max: Duration,
    pub baseline_per_s: f64,
    pub clean_per_s: f64,
    pub final_size: u64,
}

impl SoakReport {
    /// Every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.total() == 0 && self.state_violations.is_empty()
    }

    /// The line the guide asks for at the end of a run.
    pub fn headline(&self) -> String {
        let faults = FAULTS
            .iter()
            .map(|fault| format!("{} {fault}", self.faults.get(fault).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        let v = &self.violations;
        let mut kills = self.kill_unavailability.clone();
        kills.sort();
        let unavailability = match (kills.last(), kills.get(kills.len() / 2)) {
            (Some(max), Some(p50)) => format!(
                "longest write unavailability after a leader kill {:.2} s (median {:.2} s)",
                max.as_secs_f64(),
                p50.as_secs_f64()
            ),
            _ => "no leader kill".to_string(),
        };
        format!(
            "soak seed={} over {:.0} s of faults: {} acknowledged appends ({} acknowledged after \
             a resend with the same Idempotency-Key, {} unresolved) under {faults}: {} lost, {} \
             duplicated, {} reordered, {} chain breaks ({} phantoms, {} divergent nodes, {} stale \
             reads, {} node-state regressions in {} samples, {} new snapshots seen); \
             {unavailability}; longest heal-to-acknowledgement {:.2} s; clean-phase {:.0} \
             appends/s vs baseline {:.0}/s",
            self.seed,
            self.fault_phase.as_secs_f64(),
            self.history.acked.len(),
            self.history.ops_resent_then_acked,
            self.history.ops_unresolved,
            v.lost,
            v.duplicated,
            v.reordered,
            v.chain_breaks,
            v.phantoms,
            v.divergent_nodes,
            v.stale_reads,
            self.state_violations.len(),
            self.state_samples,
            self.snapshots_seen,
            self.recovery_max.as_secs_f64(),
            self.clean_per_s,
            self.baseline_per_s,
        )
    }
}

/// Runs a soak on a fresh 3-node cluster with a proxy on every peer link.
pub async fn run(options: SoakOptions) -> Result<SoakReport> {
    let mut cluster = Cluster::start_with(
        3,
        Options {
            proxied: true,
            proxied_clients: true,
            spare_nodes: options.replacements_max,
            snapshot_logs: options.snapshot_logs,
            ..Options::default()
        },
    )
    .await?;
    let result = drive(&mut cluster, &options).await;
    match &result {
        Ok(report) if report.passed() => cluster.finish(),
        // Dropping an unfinished cluster prints every node's log tail.
        _ => drop(cluster),
    }
    result
}

async fn drive(cluster: &mut Cluster, options: &SoakOptions) -> Result<SoakReport> {
    let api = cluster.api();
    let mut rng = Rng(options.seed);
    let monitor = StateMonitor::start(api.clone());
    let workload = Workload::start_with(
        api.clone(),
        WorkloadOptions {
            writers: options.writers,
            check_reads: true,
            idempotent_retries: options.idempotency_key,
            pause: options.writer_pause,
            ..WorkloadOptions::default()
        },
    );
    let baseline_per_s = clean_rate(&workload, options.clean_phase).await;
    eprintln!("soak: baseline {baseline_per_s:.0} appends/s");

    let mut members: BTreeSet<u64> = [1, 2, 3].into();
    let mut faults: BTreeMap<Fault, u64> = BTreeMap::new();
    let mut kills: Vec<Instant> = Vec::new();
    let mut recovery_max = Duration::ZERO;
    let mut bag: Vec<Fault> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < options.duration {
        let healed_at = Instant::now();
        let leader = api.leader_id(options.recovery_timeout).await?;
        workload
            .wait_acked_after(healed_at, 1, options.recovery_timeout)
            .await
            .context("guide L1: no acknowledgement after the last heal")?;
        recovery_max = recovery_max.max(healed_at.elapsed());
        tokio::time::sleep(rng.millis(500, 2_000)).await;

        // Every kind once per round, in a seeded order: a short run still sees each kind.
        if bag.is_empty() {
            bag = FAULTS.to_vec();
            rng.shuffle(&mut bag);
        }
        let mut fault = bag.pop().unwrap_or(Fault::KillLeader);
        if fault == Fault::ReplaceNode && cluster.spares_left() == 0 {
            fault = Fault::KillLeader;
        }
        let leader = api.agreed_leader().await.unwrap_or(leader);
        let followers: Vec<u64> = members.iter().copied().filter(|id| *id != leader).collect();
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    followers[rng.between(0, followers.len() as u64 - 1) as usize]
                };
                cluster.log_fault(&format!("soak: SIGKILL node {victim} ({fault})"));
                if fault == Fault::KillLeader {
                    kills.push(Instant::now());
                }
                cluster.kill(victim)?;
                monitor.forget(victim);
                tokio::time::sleep(rng.millis(0, 5_000)).await;
                cluster.log_fault(&format!("soak: restart node {victim}"));
                cluster.restart(victim)?;
                cluster.wait_ready(victim).await?;
            }
            Fault::IsolateLeader => {
                if rng.between(0, 1) == 0 {
                    cluster.isolate(leader)?;
                } else {
                    cluster.isolate_silently(leader)?;
                }
                tokio::time::sleep(rng.millis(3_000, 8_000)).await;
                cluster.heal_all()?;
            }
            Fault::OneWay => {
                let links = member_links(&members);
                let (from, to) = links[rng.between(0, links.len() as u64 - 1) as usize];
                if rng.between(0, 1) == 0 {
                    cluster.cut(from, to)?;
                } else {
                    cluster.blackhole(from, to)?;
                }
                tokio::time::sleep(rng.millis(3_000, 8_000)).await;
                cluster.heal(from, to)?;
            }
            Fault::Flap => {
                let mut links = member_links(&members);
                rng.shuffle(&mut links);
                links.truncate(rng.between(2, 4) as usize);
                for (from, to) in &links {
                    cluster.cut(*from, *to)?;
                    tokio::time::sleep(rng.millis(200, 1_500)).await;
                }
                rng.shuffle(&mut links);
                for (from, to) in &links {
                    tokio::time::sleep(rng.millis(200, 1_500)).await;
                    cluster.heal(*from, *to)?;
                }
            }
            Fault::ClientCut => {
                cluster.cut_client(leader, rng.between(0, 1) == 1)?;
                tokio::time::sleep(rng.millis(3_000, 8_000)).await;
                cluster.heal_all()?;
            }
            Fault::PauseLeader => {
                cluster.log_fault(&format!("soak: SIGSTOP leader {leader}"));
                cluster.pause(leader)?;
                tokio::time::sleep(rng.millis(3_500, 6_000)).await;
                cluster.log_fault(&format!("soak: SIGCONT node {leader}"));
                cluster.resume(leader)?;
            }
            Fault::SlowLinks => {
                cluster.delay_all(rng.millis(50, 200))?;
                tokio::time::sleep(rng.millis(4_000, 8_000)).await;
                cluster.delay_all(Duration::ZERO)?;
            }
            Fault::ReplaceNode => {
                let victim = if rng.between(0, 1) == 0 {
                    leader
                } else {
                    followers[rng.between(0, followers.len() as u64 - 1) as usize]
                };
                let via = *followers
                    .iter()
                    .find(|id| **id != victim)
                    .context("no member besides the victim")?;
                let fresh = cluster.spawn_new_node()?;
                cluster.log_fault(&format!(
                    "soak: add node {fresh}, then remove node {victim} (the leader: {})",
                    victim == leader
                ));
                cluster.add_node(via, fresh).await?;
                cluster.wait_ready(fresh).await?;
                members.insert(fresh);
                api.route(victim, false);
                api.remove_node_retrying(via, victim).await?;
                members.remove(&victim);
                cluster.terminate(victim).await?;
                monitor.forget(victim);
                let expected: Vec<u64> = members.iter().copied().collect();
                cluster.wait_voters(via, &expected).await?;
            }
        }
        *faults.entry(fault).or_insert(0) += 1;
    }
    let fault_phase = started.elapsed();

    cluster.heal_all()?;
    cluster.delay_all(Duration::ZERO)?;
    for id in &members {
        if !cluster.running_ids().contains(id) {
            cluster.restart(*id)?;
            cluster.wait_ready(*id).await?;
        }
    }
    let healed_at = Instant::now();
    api.leader_id(options.recovery_timeout).await?;
    workload
        .wait_acked_after(healed_at, 1, options.recovery_timeout)
        .await
        .context("guide L1: no acknowledgement after the final heal")?;
    recovery_max = recovery_max.max(healed_at.elapsed());
    let clean_per_s = clean_rate(&workload, options.clean_phase).await;
    let history = workload.stop().await?;
    let (state_violations, state_samples, snapshots_seen) = monitor.stop().await;
    eprintln!("soak: {}", history.summary());

    let members: Vec<u64> = members.into_iter().collect();
    let head = check::converged(
        &api,
        &members,
        history.max_acked_seq(),
        Duration::from_secs(120),
    )
    .await?;
    let logs = check::read_logs(&api, &members).await?;
    let violations = check::violations(&logs, &history);
    let kill_unavailability = kills
        .iter()
        .filter_map(|killed| {
            history
                .acked
                .iter()
                .filter(|ack| ack.invoked >= *killed)
                .map(|ack| ack.completed - *killed)
                .min()
        })
        .collect();
    let report = SoakReport {
        seed: options.seed,
        fault_phase,
        history,
        faults,
        violations,
        state_violations,
        state_samples,
        snapshots_seen,
        kill_unavailability,
        recovery_max,
        baseline_per_s,
        clean_per_s,
        final_size: head.size,
    };
    ensure!(
        report.final_size >= report.history.max_acked_seq(),
        "converged size {} is below the largest acknowledged seq",
        report.final_size
    );
    Ok(report)
}

/// Directed links between members.
fn member_links(members: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    members
        .iter()
        .flat_map(|from| {
            members
                .iter()
                .filter(move |to| *to != from)
                .map(move |to| (*from, *to))
        })
        .collect()
}

/// Acknowledgements per second over `phase`.
async fn clean_rate(workload: &Workload, phase: Duration) -> f64 {
    let started = Instant::now();
    tokio::time::sleep(phase).await;
    workload.acked_invoked_after(started) as f64 / started.elapsed().as_secs_f64()
}

/// Samples `GET /api/v1/node` on every live node (guide I9).
struct StateMonitor {
    shared: Arc<Mutex<MonitorState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct MonitorState {
    stop: bool,
    /// Node → (term, committed + 1, applied + 1) of its last sample in this process lifetime.
    last: BTreeMap<u64, (u64, u64, u64)>,
    /// Node → how many times it was forgotten: a sample taken across a change is dropped.
    generations: BTreeMap<u64, u64>,
    violations: Vec<String>,
    samples: u64,
    /// Node → the highest snapshot index + 1 sampled, and how many times one rose.
    snapshot: BTreeMap<u64, u64>,
    snapshots_seen: u64,
}

const MONITOR_INTERVAL_MS: u64 = 250;

impl StateMonitor {
    fn start(api: Api) -> StateMonitor {
        let shared = Arc::new(Mutex::new(MonitorState::default()));
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                if lock(&state).stop {
                    return;
                }
                for node in api.live_nodes() {
                    let generation = lock(&state).generations.get(&node).copied();
                    let Ok(status) = api.node_status(node).await else {
                        continue;
                    };
                    let plus_one = |index: Option<u64>| index.map_or(0, |i| i + 1);
                    let sample = (
                        status.term,
                        plus_one(status.committed_index),
                        plus_one(status.applied_index),
                    );
                    let (purged, snapshot, applied, committed, last_log) = (
                        plus_one(status.purged_index),
                        plus_one(status.snapshot_index),
                        plus_one(status.applied_index),
                        plus_one(status.committed_index),
                        plus_one(status.last_log_index),
                    );
                    let mut state = lock(&state);
                    if state.generations.get(&node).copied() != generation {
                        continue;
                    }
                    state.samples += 1;
                    // `committed` comes from the log store, the rest from one snapshot of
                    // openraft's metrics, which trail the store: committed <= last log cannot
                    // be sampled consistently, applied <= committed can (applied trails too).
                    if !(purged <= snapshot
                        && snapshot <= applied
                        && applied <= committed
                        && applied <= last_log)
                    {
                        state.violations.push(format!(
                            "node {node}: purged {:?} snapshot {:?} applied {:?} committed {:?} \
                             last log {:?} are out of order",
                            status.purged_index,
                            status.snapshot_index,
                            status.applied_index,
                            status.committed_index,
                            status.last_log_index
                        ));
                    }
                    if let Some(previous) = state.last.get(&node).copied()
                        && (sample.0 < previous.0 || sample.1 < previous.1 || sample.2 < previous.2)
                    {
                        state.violations.push(format!(
                            "node {node}: (term, committed+1, applied+1) went from {previous:?} \
                             to {sample:?}"
                        ));
                    }
                    state.last.insert(node, sample);
                    if snapshot > state.snapshot.get(&node).copied().unwrap_or(0) {
                        state.snapshot.insert(node, snapshot);
                        state.snapshots_seen += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(MONITOR_INTERVAL_MS)).await;
            }
        });
        StateMonitor { shared, task }
    }

    /// Node `id`'s process ended: its next process starts a new lifetime.
    fn forget(&self, id: u64) {
        let mut state = lock(&self.shared);
        state.last.remove(&id);
        *state.generations.entry(id).or_insert(0) += 1;
    }

    /// The violations, the number of samples, and how many new snapshots (built or installed)
    /// the samples saw.
    async fn stop(self) -> (Vec<String>, u64, u64) {
        lock(&self.shared).stop = true;
        let _ = self.task.await;
        let state = lock(&self.shared);
        (
            state.violations.clone(),
            state.samples,
            state.snapshots_seen,
        )
    }
}

fn lock(state: &Mutex<MonitorState>) -> std::sync::MutexGuard<'_, MonitorState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
