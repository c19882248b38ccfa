//! Goal: network partitions lose no acknowledged append, acknowledge nothing through a node cut
//! off from the majority, serve no stale default read, and heal into one log (guide S4, S5, S6,
//! S8; invariants I1-I8, L1).
//!
//! Method: 3 nodes started with `Options::proxied`: a TCP proxy on every directed peer link
//! (node i reaches node j only through its own proxy), so a test cuts, heals or delays each
//! direction of each link. 4 writers round-robin over the nodes, every acknowledgement followed
//! by a default read on another node. Each scenario is seeded (`SEED=` replays it), prints its
//! fault schedule, heals everything, waits for the nodes to converge and runs the checker on
//! every node's log.
//!
//! - `leader_isolated_in_minority` (S4): every link from and to the leader is cut; the majority
//!   elects a new leader and keeps acknowledging; nothing sent to the old leader during the
//!   isolation is acknowledged before the links heal; a default read on it fails.
//! - `one_way_partition` (S5): only leader->follower is cut; appends keep being acknowledged.
//! - `flapping_partitions` (S6): rounds of cutting a random subset of links one by one and
//!   healing them in random order; after the last heal an append succeeds within the deadline.
//! - `slow_links` (S8): every link delays each chunk by 30-80 ms; appends keep being
//!   acknowledged; the latency is reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use cluster_tests::seed::Rng;
use cluster_tests::{Cluster, Consistency, History, Options, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 4;
const NODES: [u64; 3] = [1, 2, 3];
/// `--write-deadline-ms` (and the read deadline): short, so requests to a cut-off node are
/// answered 503 within the scenario instead of after ledgerd's default 10 s.
const WRITE_DEADLINE_MS: u64 = 3_000;

fn options() -> Options {
    Options {
        proxied: true,
        extra_args: vec![
            "--write-deadline-ms".to_string(),
            WRITE_DEADLINE_MS.to_string(),
        ],
        ..Options::default()
    }
}

/// Heals everything, waits for `fresh` appends sent after the heal (liveness), stops the
/// writers, waits for one head on every node and runs the checker. Returns the history.
async fn heal_and_check(
    name: &str,
    cluster: &Cluster,
    workload: Workload,
    fresh: usize,
    extra_ops: &[String],
) -> Result<History> {
    let healed_at = Instant::now();
    cluster.heal_all()?;
    cluster.delay_all(Duration::ZERO)?;
    workload
        .wait_acked_after(healed_at, fresh, CONDITION_TIMEOUT)
        .await?;
    eprintln!(
        "{name}: {fresh} appends acknowledged {:.1} s after healing",
        healed_at.elapsed().as_secs_f64()
    );
    let mut history = workload.stop().await?;
    eprintln!("{name}: {}", history.summary());
    history.attempted_ops.extend(extra_ops.iter().cloned());
    let api = cluster.api();
    let (head, _) = check::converged_history(&api, &NODES, &history, CONDITION_TIMEOUT).await?;
    eprintln!(
        "{name}: all 3 nodes converged on {} events; checks passed; fault schedule:\n{}",
        head.size,
        cluster.fault_schedule().join("\n")
    );
    Ok(history)
}

async fn terms(cluster: &Cluster) -> BTreeMap<u64, u64> {
    let api = cluster.api();
    let mut terms = BTreeMap::new();
    for node in NODES {
        if let Ok(status) = api.node_status(node).await {
            terms.insert(node, status.term);
        }
    }
    terms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_isolated_in_minority() {
    let Some(guard) = slow_test("t14_partitions::leader_isolated_in_minority") else {
        return;
    };
    guard.run_seeded(isolated_leader).await;
}

async fn isolated_leader(seed: u64) -> Result<()> {
    const NAME: &str = "t14 S4";
    let mut rng = Rng(seed);
    let cluster = Cluster::start_with(3, options()).await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    let old_leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let isolated_at = Instant::now();
    cluster.isolate(old_leader)?;
    let new_leader = wait_for(
        CONDITION_TIMEOUT,
        "a new leader in the majority",
        async || {
            let leader = api.agreed_leader().await?;
            ensure!(leader != old_leader, "node {leader} still leads");
            Ok(leader)
        },
    )
    .await?;
    eprintln!(
        "{NAME}: isolated leader {old_leader}; node {new_leader} leads {:.1} s later",
        isolated_at.elapsed().as_secs_f64()
    );
    // Writers stop choosing the old leader now (those waiting on it keep waiting); one probe
    // append is sent to it directly instead, and timed.
    api.route(old_leader, false);
    let probe_op = format!("probe-{seed}");
    let probe = {
        let api = api.clone();
        let asn = api.agent_asn(0)?;
        let op = probe_op.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = api
                .report(
                    old_leader,
                    &asn,
                    "task_completed",
                    serde_json::json!({ "op": op, "probe": true }),
                )
                .await;
            (sent, result, Instant::now())
        })
    };
    workload
        .wait_acked_after(isolated_at, 20, CONDITION_TIMEOUT)
        .await?;

    // A default read on the isolated old leader must fail rather than answer from its stale
    // state (it cannot confirm its leadership with a majority).
    let acked_before_read = workload.snapshot().max_acked_seq();
    let read_sent = Instant::now();
    match api.head(old_leader, Consistency::Linearizable).await {
        Ok(head) => bail!(
            "the isolated old leader {old_leader} answered a default read with size {} \
             (seq {acked_before_read} was acknowledged before the read was sent)",
            head.size
        ),
        Err(error) => eprintln!(
            "{NAME}: default read on isolated node {old_leader} failed after {:.1} s: {error}",
            read_sent.elapsed().as_secs_f64()
        ),
    }
    // A bounded extra stretch of load under the partition (the checks below do not depend on
    // its length), then the probe's answer (bounded by the HTTP client's timeout).
    tokio::time::sleep(rng.millis(1_000, 2_500)).await;
    let (probe_sent, probe_result, probe_done) = probe.await?;
    match &probe_result {
        Ok(event) => bail!(
            "the isolated node {old_leader} acknowledged the probe append sent {:.1} s after \
             its isolation: seq {} hash {}",
            (probe_sent - isolated_at).as_secs_f64(),
            event.seq,
            event.hash
        ),
        Err(error) => {
            eprintln!(
                "{NAME}: probe append on isolated node {old_leader} (write deadline \
                 {WRITE_DEADLINE_MS} ms) ended after {:.1} s: {error}",
                (probe_done - probe_sent).as_secs_f64()
            );
            // The promise: without a quorum a write fails with 503 once the write deadline
            // passes, rather than hanging until the client gives up.
            ensure!(
                error.status == Some(503) && error.code.as_deref() == Some("UNAVAILABLE"),
                "the isolated node {old_leader} did not answer the probe with 503 UNAVAILABLE: {error}"
            );
        }
    }

    let healed_at = Instant::now();
    let acked_through_old: Vec<String> = workload
        .snapshot()
        .acked
        .iter()
        .filter(|ack| {
            ack.node == old_leader && ack.invoked > isolated_at && ack.completed < healed_at
        })
        .map(|ack| format!("op {} seq {}", ack.op, ack.event.seq))
        .collect();
    ensure!(
        acked_through_old.is_empty(),
        "the isolated node {old_leader} acknowledged {} append(s) sent after its isolation, \
         before the heal: {:?}",
        acked_through_old.len(),
        acked_through_old
    );
    api.route(old_leader, true);
    let history = heal_and_check(NAME, &cluster, workload, 20, &[probe_op]).await?;
    let late = history
        .acked
        .iter()
        .filter(|ack| {
            ack.node == old_leader && ack.invoked > isolated_at && ack.invoked < healed_at
        })
        .count();
    eprintln!(
        "{NAME}: {late} append(s) sent to node {old_leader} while isolated were acknowledged \
         after the heal; none before"
    );
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partition() {
    let Some(guard) = slow_test("t14_partitions::one_way_partition") else {
        return;
    };
    guard.run_seeded(one_way).await;
}

async fn one_way(seed: u64) -> Result<()> {
    const NAME: &str = "t14 S5";
    let mut rng = Rng(seed);
    let cluster = Cluster::start_with(3, options()).await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let followers: Vec<u64> = NODES.into_iter().filter(|id| *id != leader).collect();
    let follower = followers[rng.between(0, 1) as usize];
    let terms_before = terms(&cluster).await;
    let cut_at = Instant::now();
    cluster.cut(leader, follower)?;
    workload
        .wait_acked_after(cut_at, 20, CONDITION_TIMEOUT)
        .await?;
    tokio::time::sleep(rng.millis(2_000, 4_000)).await;
    let leader_after = api.leader_id(CONDITION_TIMEOUT).await?;
    workload
        .wait_acked_after(Instant::now(), 10, CONDITION_TIMEOUT)
        .await?;
    let terms_after = terms(&cluster).await;
    eprintln!(
        "{NAME}: cut {leader}->{follower} only; leader {leader_after} after {:.1} s; terms \
         before {terms_before:?}, after {terms_after:?}; {} acknowledged since the cut",
        cut_at.elapsed().as_secs_f64(),
        workload.acked_invoked_after(cut_at)
    );
    heal_and_check(NAME, &cluster, workload, 20, &[]).await?;
    eprintln!("{NAME}: terms after healing {:?}", terms(&cluster).await);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_partitions() {
    let Some(guard) = slow_test("t14_partitions::flapping_partitions") else {
        return;
    };
    guard.run_seeded(flapping).await;
}

async fn flapping(seed: u64) -> Result<()> {
    const NAME: &str = "t14 S6";
    let mut rng = Rng(seed);
    let cluster = Cluster::start_with(3, options()).await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    let links = cluster.links();
    let rounds = rng.between(6, 10);
    let terms_before = terms(&cluster).await;
    for round in 1..=rounds {
        let mut chosen: Vec<(u64, u64)> = links
            .iter()
            .copied()
            .filter(|_| rng.between(0, 2) == 0)
            .collect();
        if chosen.is_empty() {
            chosen.push(links[rng.between(0, links.len() as u64 - 1) as usize]);
        }
        rng.shuffle(&mut chosen);
        eprintln!("{NAME}: round {round}/{rounds}: {} link(s)", chosen.len());
        for (from, to) in &chosen {
            cluster.cut(*from, *to)?;
            tokio::time::sleep(rng.millis(0, 60)).await;
        }
        tokio::time::sleep(rng.millis(800, 2_500)).await;
        rng.shuffle(&mut chosen);
        for (from, to) in &chosen {
            cluster.heal(*from, *to)?;
            tokio::time::sleep(rng.millis(0, 60)).await;
        }
    }
    eprintln!(
        "{NAME}: {rounds} rounds; terms before {terms_before:?}, after {:?}",
        terms(&cluster).await
    );
    heal_and_check(NAME, &cluster, workload, 20, &[]).await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links() {
    let Some(guard) = slow_test("t14_partitions::slow_links") else {
        return;
    };
    guard.run_seeded(slow).await;
}

/// `(median, p99, max)` of the acknowledged latencies of appends invoked in `from..to`.
fn latencies(
    history: &History,
    from: Instant,
    to: Instant,
) -> Option<(Duration, Duration, Duration)> {
    let mut all: Vec<Duration> = history
        .acked
        .iter()
        .filter(|ack| ack.invoked >= from && ack.invoked < to)
        .map(|ack| ack.completed - ack.invoked)
        .collect();
    if all.is_empty() {
        return None;
    }
    all.sort();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    Some((at(0.5), at(0.99), all[all.len() - 1]))
}

async fn slow(seed: u64) -> Result<()> {
    const NAME: &str = "t14 S8";
    let mut rng = Rng(seed);
    let cluster = Cluster::start_with(3, options()).await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;
    let baseline_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let terms_before = terms(&cluster).await;
    let delayed_at = Instant::now();
    for (from, to) in cluster.links() {
        cluster.delay(from, to, rng.millis(30, 80))?;
    }
    workload
        .wait_acked_after(delayed_at, 20, CONDITION_TIMEOUT)
        .await?;
    tokio::time::sleep(rng.millis(3_000, 5_000)).await;
    let undelayed_at = Instant::now();
    let terms_after = terms(&cluster).await;
    let history = heal_and_check(NAME, &cluster, workload, 20, &[]).await?;

    let describe = |range: Option<(Duration, Duration, Duration)>| match range {
        Some((median, p99, max)) => format!(
            "median {} ms, p99 {} ms, max {} ms",
            median.as_millis(),
            p99.as_millis(),
            max.as_millis()
        ),
        None => "no acknowledgements".to_string(),
    };
    let count = |from: Instant, to: Instant| {
        history
            .acked
            .iter()
            .filter(|ack| ack.invoked >= from && ack.invoked < to)
            .count()
    };
    eprintln!(
        "{NAME}: append latency without delay ({} acks): {}; with 30-80 ms per chunk on every \
         link ({} acks in {:.1} s): {}; terms before {terms_before:?}, under delay \
         {terms_after:?}",
        count(baseline_from, delayed_at),
        describe(latencies(&history, baseline_from, delayed_at)),
        count(delayed_at, undelayed_at),
        (undelayed_at - delayed_at).as_secs_f64(),
        describe(latencies(&history, delayed_at, undelayed_at)),
    );
    cluster.finish();
    Ok(())
}
