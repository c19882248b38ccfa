//! Goal: followers learn that the last write committed without any further traffic, long
//! before the periodic heartbeat (the commit heartbeat of the vendored openraft patch,
//! `vendor/openraft-0.9.25-commit-heartbeat.patch`).
//!
//! openraft 0.9 sends a heartbeat that carries a new commit index as soon as it commits; our
//! patch holds it back for up to 2 ms so that entries appended meanwhile carry it instead. If
//! the held-back heartbeat were never sent, a follower would apply the last write only at the
//! next periodic heartbeat.
//!
//! Method: 3 nodes with a periodic heartbeat of 20 s (elections are only at start). After each
//! of 5 writes, one through each node in turn, every node must report the write applied within
//! 5 s, a quarter of the periodic heartbeat, with no other write in between.

use std::time::Duration;

use anyhow::{Context, Result};
use cluster_tests::{Cluster, Options, slow_test};
use serde_json::json;

/// Far longer than the wait below: only the commit heartbeat can deliver the commit in time.
const HEARTBEAT_MS: u64 = 20_000;
const APPLIED_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_the_last_commit_without_more_writes() {
    let Some(guard) = slow_test("t25_commit_without_traffic") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start_with(
        3,
        Options {
            heartbeat_ms: HEARTBEAT_MS,
            election_timeout_min_ms: 3 * HEARTBEAT_MS,
            election_timeout_max_ms: 4 * HEARTBEAT_MS,
            ..Options::default()
        },
    )
    .await?;
    let api = cluster.api();
    let agent = api.fixture()?.agents[0].clone();
    for i in 0..5u64 {
        let through = i % 3 + 1;
        let event = api
            .report(through, &agent.asn, "task_completed", json!({ "i": i }))
            .await
            .with_context(|| format!("write {i} through node {through}"))?;
        api.wait_applied(&[1, 2, 3], APPLIED_WITHIN)
            .await
            .with_context(|| format!("every node to apply write {i} (seq {})", event.seq))?;
    }
    cluster.finish();
    Ok(())
}
