//! Goal: repeated SIGKILLs lose nothing and retries never duplicate (guide S1, S2, S16):
//! - the leader killed again and again under load: a new leader each time, the killed node
//!   restarted after a random 0-3 s and caught up; every acknowledged append survives;
//! - a follower killed and restarted; then both followers killed: the leader alone
//!   acknowledges nothing, answers 503 `UNAVAILABLE` within its write deadline, and the
//!   cluster recovers once they are back;
//! - every append is sent with an `Idempotency-Key` and resent with it after every unknown
//!   outcome, and twice more after its acknowledgement: each key is one event, and every
//!   resend answers that same event.
//!
//! Method: 3 nodes, 4 idempotent writers (2 duplicate sends each), seeded schedule; checks
//! after healing: every member's whole log against the history (I1-I8).

use std::time::Instant;

use anyhow::{Result, ensure};
use cluster_tests::seed::Rng;
use cluster_tests::{Cluster, Options, Workload, WorkloadOptions, check, slow_test, wait_for};
use serde_json::json;

use crate::CONDITION_TIMEOUT;

const LEADER_KILLS: usize = 3;
const WRITERS: u64 = 4;
/// Operation token of the report sent to the leader while it has no majority.
const ALONE_OP: &str = "t17-leader-alone";
/// The write deadline the nodes run with (`--write-deadline-ms`), short so "fails fast" is
/// quick to see.
const WRITE_DEADLINE_MS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_follower_kill_loops_with_idempotent_retries() {
    let Some(guard) = slow_test("t17_kill_loops") else {
        return;
    };
    guard.run_seeded(scenario).await;
}

async fn scenario(seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let mut cluster = Cluster::start_with(
        3,
        Options {
            extra_args: vec![
                "--write-deadline-ms".to_string(),
                WRITE_DEADLINE_MS.to_string(),
            ],
            ..Options::default()
        },
    )
    .await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_with(
        api.clone(),
        WorkloadOptions {
            writers: WRITERS as usize,
            check_reads: true,
            idempotent_retries: true,
            duplicate_sends: 2,
            ..WorkloadOptions::default()
        },
    );
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    // S1: the leader, again and again.
    for round in 1..=LEADER_KILLS {
        let leader = api.leader_id(CONDITION_TIMEOUT).await?;
        let killed_at = Instant::now();
        cluster.log_fault(&format!("t17: round {round}: SIGKILL leader {leader}"));
        cluster.kill(leader)?;
        let new_leader = wait_for(CONDITION_TIMEOUT, "a new leader", async || {
            let now = api.agreed_leader().await?;
            ensure!(now != leader, "node {leader} still leads");
            Ok(now)
        })
        .await?;
        workload
            .wait_acked_after(killed_at, 10, CONDITION_TIMEOUT)
            .await?;
        eprintln!(
            "t17: round {round}: node {new_leader} leads; writes acknowledged again {:.2} s \
             after the kill",
            first_ack_after(&workload, killed_at)
        );
        tokio::time::sleep(rng.millis(0, 3_000)).await;
        cluster.log_fault(&format!("t17: round {round}: restart node {leader}"));
        cluster.restart(leader)?;
        cluster.wait_ready(leader).await?;
    }

    // S2: one follower, then both.
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let victim = followers[rng.between(0, 1) as usize];
    cluster.log_fault(&format!("t17: SIGKILL follower {victim}"));
    let killed_at = Instant::now();
    cluster.kill(victim)?;
    workload
        .wait_acked_after(killed_at, 20, CONDITION_TIMEOUT)
        .await?;
    cluster.restart(victim)?;
    cluster.wait_ready(victim).await?;

    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    cluster.log_fault(&format!("t17: SIGKILL both followers of leader {leader}"));
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.kill(id)?;
    }
    let both_down_at = Instant::now();
    let unknown_before = unknown_outcomes(&workload);
    // The leader alone: a report answers 503 UNAVAILABLE (with Retry-After), not 201.
    let admin = cluster.admin_key()?;
    let asn = api.agent_asn(1)?;
    let sent = Instant::now();
    let alone = api
        .report_as(
            leader,
            &admin,
            &json!({ "asn": asn, "event_type": "alone", "metadata": { "op": ALONE_OP } }),
            None,
        )
        .await;
    match alone {
        Err(error) if error.status == Some(503) && error.code.as_deref() == Some("UNAVAILABLE") => {
        }
        other => anyhow::bail!("a report to a leader without a majority answered {other:?}"),
    }
    eprintln!(
        "t17: leader {leader} alone answered 503 after {:.2} s (write deadline {} ms)",
        sent.elapsed().as_secs_f64(),
        WRITE_DEADLINE_MS
    );
    // Every writer has had an attempt end without an acknowledgement (a 503 or a refused
    // connection) during the outage: they tried, and nothing got through.
    wait_for(
        CONDITION_TIMEOUT,
        "every writer to fail once without a majority",
        async || {
            let failed = unknown_outcomes(&workload) - unknown_before;
            ensure!(failed >= WRITERS, "{failed} failed attempts so far");
            Ok(())
        },
    )
    .await?;
    let acked_alone = workload.acked_invoked_after(both_down_at);
    ensure!(
        acked_alone == 0,
        "{acked_alone} appends sent after both followers died were acknowledged"
    );
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.restart(id)?;
    }
    for id in 1..=3 {
        cluster.wait_ready(id).await?;
    }
    let restarted_at = Instant::now();
    workload
        .wait_acked_after(restarted_at, 20, CONDITION_TIMEOUT)
        .await?;

    let mut history = workload.stop().await?;
    // Its outcome was unknown (503): it may be in the log, committed once the followers came
    // back, or not.
    history.attempted_ops.insert(ALONE_OP.to_string());
    eprintln!("t17: {}", history.summary());
    ensure!(
        history.duplicates_answered > 0,
        "no duplicate send was answered: {}",
        history.summary()
    );
    check::converged_history(&api, &[1, 2, 3], &history, CONDITION_TIMEOUT).await?;
    cluster.finish();
    Ok(())
}

/// Attempts so far whose outcome was unknown (no answer, or a 5xx).
fn unknown_outcomes(workload: &Workload) -> u64 {
    workload.snapshot().unknown.values().sum()
}

/// Seconds from `instant` to the first acknowledgement of an append sent after it.
fn first_ack_after(workload: &Workload, instant: Instant) -> f64 {
    workload
        .snapshot()
        .acked
        .iter()
        .filter(|ack| ack.invoked >= instant)
        .map(|ack| ack.completed - instant)
        .min()
        .map_or(f64::NAN, |d| d.as_secs_f64())
}
