//! Goal: the nodes of a cluster build their snapshots one at a time, so that a majority goes
//! on writing at full speed while one builds (node/src/snapshots.rs). Without turns every node
//! reaches the snapshot threshold within a second of the others and they all build at once.
//!
//! Method: 3 nodes with `--snapshot-logs 4`; batches of 1000 events with about 700 bytes of
//! metadata each (one Raft entry each) until every node has built at least
//! [`BUILDS_PER_NODE`] snapshots and [`BUILDS_IN_ALL`] were built, the state growing to tens of
//! MB (a build then takes a few hundred ms in a debug build). Each node's `built snapshot` log lines give when each build
//! ended and how long it took: no two builds of different nodes may overlap in time, and at
//! least one node must have logged that it waited for a peer's snapshot. Writes must go on
//! (every batch acknowledged); once they stop, every node's `ledger_snapshot_turn` must come
//! back to 0 (none left waiting), and every node must end with the same ledger.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Options, slow_test, wait_for};

use crate::CONDITION_TIMEOUT;
use crate::support::{scrape, value, write_large_batch};

/// Snapshots each node must have built before the builds are compared.
const BUILDS_PER_NODE: usize = 2;
/// Snapshots the three nodes must have built in all (the leader, which builds last, builds
/// fewer: its snapshots are larger, and the next one waits for as much log).
const BUILDS_IN_ALL: usize = 10;
/// Batches written at most (about 0.9 MiB each).
const BATCHES_MAX: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_build_snapshots_one_at_a_time() {
    let Some(guard) = slow_test("t27_snapshot_turns") else {
        return;
    };
    guard.run(scenario()).await;
}

/// One snapshot build as its node logged it: when it ended and how long it took, in
/// milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
struct Build {
    start_ms: i64,
    end_ms: i64,
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start_with(3, Options::with_snapshots(4, 2)).await?;
    let api = cluster.api();
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let key = api.fixture()?.write_key.secret()?.to_owned();
    let asn = api.agent_asn(0)?;
    let mut batches = 0;
    loop {
        let builds = builds(&cluster)?;
        if builds.values().all(|b| b.len() >= BUILDS_PER_NODE)
            && builds.values().map(Vec::len).sum::<usize>() >= BUILDS_IN_ALL
        {
            break;
        }
        ensure!(
            batches < BATCHES_MAX,
            "after {batches} batches not every node built {BUILDS_PER_NODE} snapshots, or fewer \
             than {BUILDS_IN_ALL} in all: {builds:?}"
        );
        write_large_batch(&api, leader, &key, &asn, "t27", batches).await?;
        batches += 1;
    }
    api.wait_applied(&[1, 2, 3], CONDITION_TIMEOUT).await?;
    let builds = builds(&cluster)?;
    eprintln!("t27: {batches} batches; builds (start, end in ms; node: list): {builds:?}");
    let longest = builds
        .values()
        .flatten()
        .map(|b| b.end_ms - b.start_ms)
        .max()
        .unwrap_or(0);
    eprintln!("t27: the longest build took {longest} ms");
    for (a, a_builds) in &builds {
        for (b, b_builds) in builds.range(a + 1..) {
            for x in a_builds {
                for y in b_builds {
                    ensure!(
                        x.end_ms <= y.start_ms || y.end_ms <= x.start_ms,
                        "node {a}'s build {x:?} and node {b}'s build {y:?} overlap: the nodes did \
                         not build one at a time"
                    );
                }
            }
        }
    }
    let mut waited = 0;
    for id in 1..=3 {
        waited += log(&cluster, id)?
            .lines()
            .filter(|l| l.contains("waiting for the peer's snapshot first"))
            .count();
    }
    ensure!(
        waited > 0,
        "no node logged that it waited for a peer's snapshot: the turns were not exercised"
    );
    // Once the writes stop, every node builds what is due in its turn, and then none waits.
    wait_for(
        CONDITION_TIMEOUT,
        "every node's ledger_snapshot_turn to be 0 (no snapshot due or waiting)",
        async || {
            for id in 1..=3 {
                let turn = value(&scrape(&cluster, id).await?, "ledger_snapshot_turn", &[])?;
                ensure!(turn == 0.0, "node {id}: ledger_snapshot_turn {turn}");
            }
            Ok(())
        },
    )
    .await?;
    let size = batches as u64 * 1000;
    cluster_tests::check::converged(&api, &[1, 2, 3], size, CONDITION_TIMEOUT)
        .await
        .context("the nodes did not converge")?;
    cluster.finish();
    Ok(())
}

fn log(cluster: &Cluster, id: u64) -> Result<String> {
    let path = cluster.data_dir(id)?.join("ledgerd.log");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Every node's snapshot builds, from its `built snapshot` log lines (a timestamp, then
/// `millis=N`).
fn builds(cluster: &Cluster) -> Result<BTreeMap<u64, Vec<Build>>> {
    let mut all = BTreeMap::new();
    for id in 1..=3 {
        let mut builds = Vec::new();
        for line in log(cluster, id)?.lines() {
            if !line.contains("built snapshot") {
                continue;
            }
            let stamp = line.split_whitespace().next().unwrap_or_default();
            let end = cluster_tests::time::parse_ms(stamp)
                .with_context(|| format!("node {id}: no timestamp in {line:?}"))?;
            let millis: i64 = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("millis="))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("node {id}: no millis= in {line:?}"))?;
            builds.push(Build {
                start_ms: end - millis,
                end_ms: end,
            });
        }
        all.insert(id, builds);
    }
    Ok(all)
}
