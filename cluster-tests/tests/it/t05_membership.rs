//! Goal: membership changes under load lose nothing: a fresh node joins as a voter and catches
//! up, a voter is removed, appends keep being acknowledged, and a used node id cannot come back
//! (Raft §6; guide "membership under load").
//!
//! Method: 3 nodes with 4 background writers; spawn node 4 (empty data dir, no `--bootstrap`)
//! and add it through the API; wait until it is a voter holding everything acknowledged before
//! it joined; remove node 2 while writes continue; voters must become {1, 3, 4}; re-adding id 2
//! must answer 409; all remaining nodes converge on one log holding every acknowledged append.

use std::time::Instant;

use anyhow::{Result, ensure};
use cluster_tests::{Cluster, Consistency, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_voters_under_load() {
    let Some(guard) = slow_test("t05_membership") else {
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

    let new_id = cluster.spawn_new_node()?;
    ensure!(new_id == 4, "the harness gave the new node id {new_id}");
    let size_before_add = workload.snapshot().max_acked_seq();
    let added = cluster.add_node(1, new_id).await?;
    eprintln!("t05: added node 4: {added:?}");
    cluster.wait_ready(new_id).await?;
    cluster.wait_voters(1, &[1, 2, 3, 4]).await?;
    wait_for(CONDITION_TIMEOUT, "node 4 to catch up", async || {
        let head = api.head(new_id, Consistency::Local).await?;
        ensure!(
            head.size >= size_before_add,
            "node 4 has {} events, {size_before_add} were acknowledged before it joined",
            head.size
        );
        Ok(())
    })
    .await?;

    api.route(2, false);
    let removed_at = Instant::now();
    let removed = cluster.remove_node(1, 2).await?;
    eprintln!("t05: removed node 2: {removed:?}");
    for via in [1, 3, 4] {
        cluster.wait_voters(via, &[1, 3, 4]).await?;
    }
    workload
        .wait_acked_after(removed_at, 20, CONDITION_TIMEOUT)
        .await?;

    let readd = api
        .add_node(1, 2, cluster.grpc_addr(2)?, cluster.http_addr(2)?)
        .await;
    match readd {
        Err(error) if error.status == Some(409) => {}
        other => anyhow::bail!("re-adding the removed id 2 answered {other:?}, expected 409"),
    }

    let history = workload.stop().await?;
    eprintln!("t05: {}", history.summary());
    let remaining = [1, 3, 4];
    let head =
        check::converged(&api, &remaining, history.max_acked_seq(), CONDITION_TIMEOUT).await?;
    let log = check::history(&api, &remaining, &history).await?;
    check::same_size(&head, &log)?;
    for via in remaining {
        let view = api.cluster(via).await?;
        ensure!(
            !view.nodes.iter().any(|node| node.id == 2),
            "node {via} still lists node 2 after its removal: {view:?}"
        );
    }
    cluster.finish();
    Ok(())
}
