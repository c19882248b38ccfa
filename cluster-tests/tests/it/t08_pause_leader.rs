//! Goal: a leader paused long enough to be deposed (SIGSTOP) neither loses acknowledged
//! appends nor serves stale default reads after it resumes (guide "Pause"; Raft §6.4, §8).
//!
//! Method: 3 nodes, 4 writers that follow every acknowledgement with a default read on another
//! node. SIGSTOP the leader, wait for an agreed new leader and for appends acknowledged after the
//! pause, SIGCONT the old leader and read from it at once: the read must include every append
//! acknowledged before it was sent (or fail). Then converge and check the history.

use std::time::Instant;

use anyhow::{Result, ensure};
use cluster_tests::{Cluster, Consistency, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_serves_no_stale_reads() {
    let Some(guard) = slow_test("t08_pause_leader") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    let old_leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let paused_at = Instant::now();
    cluster.pause(old_leader)?;
    let new_leader = wait_for(CONDITION_TIMEOUT, "a new leader", async || {
        let leader = api.agreed_leader().await?;
        ensure!(leader != old_leader, "node {leader} still leads");
        Ok(leader)
    })
    .await?;
    eprintln!(
        "t08: paused leader {old_leader}; node {new_leader} leads {:.1} s later",
        paused_at.elapsed().as_secs_f64()
    );
    workload
        .wait_acked_after(paused_at, 20, CONDITION_TIMEOUT)
        .await?;

    let acked_before_resume = workload.snapshot().max_acked_seq();
    cluster.resume(old_leader)?;
    let mut stale_checked = 0;
    for _ in 0..5 {
        match api.head(old_leader, Consistency::Linearizable).await {
            Ok(head) => {
                stale_checked += 1;
                ensure!(
                    head.size >= acked_before_resume,
                    "the resumed old leader {old_leader} answered a default read with size {} \
                     although seq {acked_before_resume} was acknowledged before the read",
                    head.size
                );
            }
            Err(error) => eprintln!("t08: read on the resumed old leader failed: {error}"),
        }
    }
    eprintln!("t08: {stale_checked} reads on the resumed old leader were fresh");

    let resumed_at = Instant::now();
    workload
        .wait_acked_after(resumed_at, 20, CONDITION_TIMEOUT)
        .await?;
    let history = workload.stop().await?;
    eprintln!("t08: {}", history.summary());
    check::converged(&api, &[1, 2, 3], history.max_acked_seq(), CONDITION_TIMEOUT).await?;
    check::history(&api, &[1, 2, 3], &history).await?;
    cluster.finish();
    Ok(())
}
