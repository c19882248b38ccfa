//! Goal: a follower whose missing log entries were purged on the leader catches up by
//! installing a snapshot, and ends with the same log as the leader (Raft §7).
//!
//! Method: 3 nodes with `--snapshot-logs 50 --snapshot-keep-logs 10`; record a follower's
//! `last_log_index` and SIGKILL it; make 300 sequential appends (one Raft entry each); wait until
//! the leader's `purged_index` passes the recorded index; restart the follower; wait for equal
//! heads; the follower must report a snapshot covering the purged range and hold the same log.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, History, Options, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

const APPENDS_BEFORE: u64 = 10;
const APPENDS_WHILE_DOWN: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_from_snapshot() {
    let Some(guard) = slow_test("t04_snapshot_catch_up") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start_with(3, Options::with_snapshots(50, 10)).await?;
    let api = cluster.api();
    let before = Workload::start(api.clone(), 1, Some(APPENDS_BEFORE))
        .join()
        .await?;
    check::converged(&api, &[1, 2, 3], before.max_acked_seq(), CONDITION_TIMEOUT).await?;

    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let follower = (1..=3).find(|id| *id != leader).context("no follower")?;
    let follower_last_log_index = api
        .node_status(follower)
        .await?
        .last_log_index
        .context("the follower reports no last_log_index")?;
    cluster.kill(follower)?;
    eprintln!("t04: killed follower {follower} at last_log_index {follower_last_log_index}");

    let during = Workload::start(api.clone(), 1, Some(APPENDS_WHILE_DOWN))
        .join()
        .await?;
    eprintln!("t04: while down: {}", during.summary());
    ensure!(
        during.acked.len() as u64 >= APPENDS_WHILE_DOWN * 9 / 10,
        "only {} of {APPENDS_WHILE_DOWN} sequential appends were acknowledged",
        during.acked.len()
    );

    let purged_index = wait_for(
        CONDITION_TIMEOUT,
        &format!("the leader to purge past index {follower_last_log_index}"),
        async || {
            let leader = api.agreed_leader().await?;
            let status = api.node_status(leader).await?;
            let purged = status.purged_index.unwrap_or(0);
            ensure!(
                purged > follower_last_log_index,
                "leader {leader}: purged_index {:?}, snapshot_index {:?}, last_log_index {:?}",
                status.purged_index,
                status.snapshot_index,
                status.last_log_index
            );
            Ok(purged)
        },
    )
    .await?;
    eprintln!("t04: leader purged up to {purged_index}; restarting follower {follower}");

    cluster.restart(follower)?;
    cluster.wait_ready(follower).await?;
    let history = merge(before, during);
    let head = check::converged(
        &api,
        &[1, 2, 3],
        history.max_acked_seq(),
        Duration::from_secs(60),
    )
    .await?;
    let status = api.node_status(follower).await?;
    let snapshot_index = status.snapshot_index.with_context(|| {
        format!("follower {follower} caught up but reports no snapshot_index: {status:?}")
    })?;
    ensure!(
        snapshot_index >= purged_index,
        "follower {follower} has snapshot_index {snapshot_index}, below the leader's purged \
         index {purged_index}: it cannot have caught up through a snapshot"
    );
    let log = check::history(&api, &[1, 2, 3], &history).await?;
    check::same_size(&head, &log)?;
    cluster.finish();
    Ok(())
}

fn merge(mut first: History, second: History) -> History {
    first.acked.extend(second.acked);
    first.attempted_ops.extend(second.attempted_ops);
    for (label, count) in second.failed {
        *first.failed.entry(label).or_insert(0) += count;
    }
    for (label, count) in second.unknown {
        *first.unknown.entry(label).or_insert(0) += count;
    }
    first
}
