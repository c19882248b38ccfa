//! Goal: an acknowledged append survives SIGKILL of every node at once (it was flushed on a
//! majority before the ack), and a restarted cluster needs no `--bootstrap` (guide promise 1).
//!
//! Method: 3 nodes; a burst of 200 appends from 8 concurrent writers; SIGKILL all three right
//! after the last answer; restart all three without `--bootstrap`; wait for a leader and equal
//! heads; every acknowledged append must be at its `seq` with its hash on every node, and the
//! cluster id and membership must be unchanged.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Consistency, Workload, check, slow_test};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 8;
const APPENDS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_all_keeps_acknowledged_appends() {
    let Some(guard) = slow_test("t03_restart_all_durability") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let cluster_id = api
        .node_status(1)
        .await?
        .cluster_id
        .context("node 1 reports no cluster id")?;

    let history = Workload::start(api.clone(), WRITERS, Some(APPENDS))
        .join()
        .await?;
    cluster.kill_all()?;
    eprintln!("t03: killed all nodes; {}", history.summary());
    ensure!(
        history.acked.len() as u64 >= APPENDS * 9 / 10,
        "only {} of {APPENDS} appends were acknowledged without any fault: {}",
        history.acked.len(),
        history.summary()
    );

    for id in 1..=3 {
        cluster.restart(id)?;
    }
    cluster.wait_all_ready().await?;
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    eprintln!("t03: node {leader} leads after the restart");

    for id in 1..=3 {
        let status = api.node_status(id).await?;
        ensure!(
            status.cluster_id.as_deref() == Some(cluster_id.as_str()),
            "node {id} reports cluster id {:?} after restart, was {cluster_id}",
            status.cluster_id
        );
        let voters: BTreeSet<u64> = status.voters.iter().copied().collect();
        ensure!(
            voters == BTreeSet::from([1, 2, 3]),
            "node {id} reports voters {voters:?} after restart"
        );
        let head = api.head(id, Consistency::Linearizable).await?;
        ensure!(
            head.size >= history.max_acked_seq(),
            "node {id}: default head read after restart has size {} < acknowledged seq {}",
            head.size,
            history.max_acked_seq()
        );
    }
    check::converged(&api, &[1, 2, 3], history.max_acked_seq(), CONDITION_TIMEOUT).await?;
    check::history(&api, &[1, 2, 3], &history).await?;
    cluster.finish();
    Ok(())
}
