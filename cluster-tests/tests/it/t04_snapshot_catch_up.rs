//! Goal: a follower whose missing log entries were purged on the leader catches up by
//! installing a snapshot, and ends with the same log as the leader (Raft §7).
//!
//! Method: 3 nodes with `--snapshot-logs 50 --snapshot-keep-logs 10`; record a follower's
//! `last_log_index` and SIGKILL it; make 300 sequential appends (one Raft entry each); wait until
//! the leader's `purged_index` passes the recorded index; restart the follower; wait for equal
//! heads; the follower must report a snapshot covering the purged range and hold the same log.
//!
//! Second goal: a follower behind by many large entries catches up from the log in messages of
//! bounded size, not in one message of everything it misses (which it could not take within the
//! leader's AppendEntries deadline under load, and which past 64 MiB could not be sent at all).
//!
//! Method: 3 nodes; SIGKILL a follower; 12 batches of 1000 events with about 700 bytes of
//! metadata each (about 0.9 MiB a batch, one Raft entry each, 11 MiB in all); restart it; wait
//! until it has applied the leader's index; the leader's `ledger_raft_append_entries_sent_bytes`
//! must show the catch-up (more than 10 MiB sent) and no message above 6 MiB
//! (`APPEND_ENTRIES_BYTES_MAX`, 4 MiB, plus one entry).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, History, Options, Workload, check, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;
use crate::support::{scrape, value, write_large_batch};

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

const LARGE_BATCHES: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_over_large_entries_in_bounded_messages() {
    let Some(guard) = slow_test("t04_large_entries") else {
        return;
    };
    guard.run(large_entries()).await;
}

async fn large_entries() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let follower = (1..=3).find(|id| *id != leader).context("no follower")?;
    let key = api.fixture()?.write_key.secret()?.to_owned();
    let asn = api.agent_asn(0)?;
    cluster.kill(follower)?;
    let (sent_before, _) = append_entries_sent(&cluster, leader).await?;
    for batch in 0..LARGE_BATCHES {
        write_large_batch(&api, leader, &key, &asn, "t04-large", batch).await?;
    }
    cluster.restart(follower)?;
    cluster.wait_ready(follower).await?;
    api.wait_applied(&[follower], Duration::from_secs(120))
        .await?;
    let (sent_after, largest) = append_entries_sent(&cluster, leader).await?;
    let sent = sent_after - sent_before;
    eprintln!(
        "t04: the leader sent {sent:.0} bytes of AppendEntries; its largest message was at most \
         {largest:.0} bytes"
    );
    ensure!(
        sent > 10.0 * 1024.0 * 1024.0,
        "the leader sent only {sent:.0} bytes of AppendEntries: the catch-up did not go through it"
    );
    ensure!(
        largest <= 6.0 * 1024.0 * 1024.0,
        "an AppendEntries of more than 6 MiB (bucket up to {largest:.0} bytes): the catch-up was \
         not cut into bounded messages"
    );
    cluster.finish();
    Ok(())
}

/// `node`'s `ledger_raft_append_entries_sent_bytes`: the bytes sent, and the upper bound of the
/// smallest bucket that holds every message (infinite when one is past the last bucket).
async fn append_entries_sent(cluster: &Cluster, node: u64) -> Result<(f64, f64)> {
    const NAME: &str = "ledger_raft_append_entries_sent_bytes";
    let samples = scrape(cluster, node).await?;
    let sum = value(&samples, &format!("{NAME}_sum"), &[])?;
    let count = value(&samples, &format!("{NAME}_count"), &[])?;
    let mut buckets = Vec::new();
    for sample in samples
        .iter()
        .filter(|s| s.name == format!("{NAME}_bucket"))
    {
        let le = sample
            .labels
            .strip_prefix("le=\"")
            .and_then(|rest| rest.strip_suffix('"'))
            .with_context(|| format!("bucket labels {:?}", sample.labels))?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().with_context(|| format!("bucket bound {le:?}"))?
        };
        buckets.push((le, sample.value));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let largest = buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= count)
        .map_or(f64::INFINITY, |(le, _)| *le);
    Ok((sum, largest))
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
