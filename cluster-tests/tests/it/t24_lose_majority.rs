//! Goal: the runbook's recovery after losing a majority for good (docs/OPERATIONS.md).
//!
//! Method: a 3-node cluster takes writes; both followers are killed and their data is treated
//! as lost; the survivor (the old leader, which holds every acknowledged event) is killed too,
//! then `ledgerd --force-single-voter` makes it the only voter. Started again it elects itself,
//! keeps every acknowledged event, takes writes, and grows back to three voters under new ids;
//! the checker then verifies the whole history on all three.

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Workload, check, ledgerd_command, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_forced_to_single_voter_carries_on() {
    let Some(guard) = slow_test("t24_lose_majority") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let first = Workload::start(api.clone(), 4, Some(300)).join().await?;
    ensure!(
        !first.acked.is_empty(),
        "nothing acknowledged: {}",
        first.summary()
    );
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.kill(id)?;
    }
    cluster.kill(leader)?;

    // The tool refuses a node id that is not this data directory's.
    let dir = cluster.data_dir(leader)?;
    let wrong = ledgerd_command()?
        .args(["--id", &(leader % 3 + 1).to_string(), "--data-dir"])
        .arg(&dir)
        .arg("--force-single-voter")
        .output()?;
    ensure!(
        wrong.status.code() == Some(2),
        "wrong id: exit {:?}",
        wrong.status.code()
    );
    let forced = ledgerd_command()?
        .args(["--id", &leader.to_string(), "--data-dir"])
        .arg(&dir)
        .arg("--force-single-voter")
        .output()?;
    let stderr = String::from_utf8_lossy(&forced.stderr);
    ensure!(
        forced.status.success() && stderr.contains("is now the only voter"),
        "--force-single-voter: exit {:?}, {stderr}",
        forced.status.code()
    );

    cluster.restart(leader)?;
    wait_for(CONDITION_TIMEOUT, "the survivor leads alone", async || {
        let status = api.node_status(leader).await?;
        ensure!(
            status.role == "leader" && status.voters == vec![leader],
            "role {}, voters {:?}",
            status.role,
            status.voters
        );
        Ok(())
    })
    .await?;

    // It grows back to three voters under new ids, under load.
    let second = Workload::start(api.clone(), 2, None);
    let mut voters = vec![leader];
    for _ in 0..2 {
        let id = cluster.spawn_new_node()?;
        cluster.add_node(leader, id).await?;
        voters.push(id);
    }
    voters.sort_unstable();
    cluster.wait_voters(leader, &voters).await?;
    second
        .wait_acked_after(std::time::Instant::now(), 50, CONDITION_TIMEOUT)
        .await?;
    let mut history = second.stop().await?;
    history.acked.extend(first.acked.iter().cloned());
    history
        .attempted_ops
        .extend(first.attempted_ops.iter().cloned());
    eprintln!("t24: {}", history.summary());
    let (head, _) = check::converged_history(&api, &voters, &history, CONDITION_TIMEOUT)
        .await
        .context("after recovery")?;
    ensure!(
        head.size >= first.acked.len() as u64,
        "{} events after recovery, {} acknowledged before",
        head.size,
        first.acked.len()
    );
    Ok(())
}
