//! Goal: SIGKILL of the leader under load loses no acknowledged append; a new leader is elected
//! and appends continue; the killed node rejoins and converges (Raft §5.2, §5.4; guide I1-I7).
//!
//! Method: 3 nodes; 4 writers round-robin over the live nodes, recording every acknowledgement.
//! Kill the leader, wait for an agreed new leader and for appends sent after the kill to be
//! acknowledged, restart the killed node, stop the writers, wait until all 3 local heads are
//! equal, then check every acknowledged append on every node.

use std::time::Instant;

use anyhow::{Result, ensure};
use cluster_tests::{Cluster, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leader_under_load() {
    let Some(guard) = slow_test("t02_kill_leader") else {
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
    let killed_at = Instant::now();
    cluster.kill(old_leader)?;
    eprintln!(
        "t02: killed leader {old_leader} after {} acks",
        workload.acked()
    );
    let new_leader = wait_for(CONDITION_TIMEOUT, "a new leader", async || {
        let leader = api.agreed_leader().await?;
        ensure!(leader != old_leader, "node {leader} still leads");
        Ok(leader)
    })
    .await?;
    eprintln!(
        "t02: node {new_leader} leads {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    workload
        .wait_acked_after(killed_at, 20, CONDITION_TIMEOUT)
        .await?;

    cluster.restart(old_leader)?;
    cluster.wait_ready(old_leader).await?;
    let restarted_at = Instant::now();
    workload
        .wait_acked_after(restarted_at, 10, CONDITION_TIMEOUT)
        .await?;
    let history = workload.stop().await?;
    eprintln!("t02: {}", history.summary());

    let head =
        check::converged(&api, &[1, 2, 3], history.max_acked_seq(), CONDITION_TIMEOUT).await?;
    let log = check::history(&api, &[1, 2, 3], &history).await?;
    check::same_size(&head, &log)?;
    cluster.finish();
    Ok(())
}
