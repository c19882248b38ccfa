//! Goal: appends through every node land in one identical log, and a default read on another
//! node started after an acknowledgement sees that append (linearizable reads, guide I8).
//!
//! Method: 3 nodes; 30 sequential appends, 10 through each node (followers forward to the
//! leader over gRPC). After each acknowledgement, a default read on a different node must
//! return the acknowledged event. Then every node's log, read both ways (default and
//! `consistency=local` after convergence), must be the same dense sequence 1..=30, and each
//! node's per-agent view must list that agent's events newest first.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Ack, Cluster, Consistency, check, slow_test};
use serde_json::json;

use crate::CONDITION_TIMEOUT;

const APPENDS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_linearizable_reads() {
    let Some(guard) = slow_test("t01_replication") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let pool = api.fixture()?.agents.clone();
    let mut acked = Vec::new();
    let mut attempted = HashSet::new();
    for i in 0..APPENDS {
        let writer = i % 3 + 1;
        let reader = (writer + 1) % 3 + 1;
        let op = format!("t01-{i}");
        attempted.insert(op.clone());
        let agent = &pool[(i as usize) % pool.len()];
        let invoked = Instant::now();
        let event = api
            .report(
                writer,
                &agent.asn,
                "task_completed",
                json!({ "op": op, "i": i }),
            )
            .await
            .with_context(|| format!("append {i} through node {writer}"))?;
        let completed = Instant::now();
        ensure!(
            event.seq == i + 1,
            "append {i} (sequential, fresh cluster) got seq {}",
            event.seq
        );
        ensure!(
            event.asn == agent.asn,
            "append {i} echoed asn {}, sent {}",
            event.asn,
            agent.asn
        );
        ensure!(
            event.agent_id == agent.id,
            "append {i} has agent_id {}, the agent's id is {}",
            event.agent_id,
            agent.id
        );
        ensure!(
            event.event_type == "task_completed",
            "append {i} echoed event_type {}",
            event.event_type
        );
        ensure!(
            event.severity == "info",
            "append {i} echoed severity {}",
            event.severity
        );
        ensure!(
            event.metadata == json!({ "op": op, "i": i }),
            "append {i} echoed metadata {}",
            event.metadata
        );

        let head = api
            .head(reader, Consistency::Linearizable)
            .await
            .with_context(|| format!("default head read on node {reader} after append {i}"))?;
        ensure!(
            head.size >= event.seq,
            "node {reader}: default head read after the ack of seq {} shows size {} (stale read)",
            event.seq,
            head.size
        );
        let page = api
            .events(reader, event.seq, 1, Consistency::Linearizable)
            .await
            .with_context(|| format!("default events read on node {reader} after append {i}"))?;
        ensure!(
            page.events.first() == Some(&event),
            "node {reader}: default read of seq {} after its ack returned {:?}, acknowledged {:?}",
            event.seq,
            page.events.first(),
            event
        );
        acked.push(Ack {
            node: writer,
            op,
            event,
            invoked,
            completed,
        });
    }

    let mut default_logs = BTreeMap::new();
    for node in 1..=3 {
        let events = api.all_events(node, Consistency::Linearizable).await?;
        ensure!(
            events.len() as u64 == APPENDS,
            "node {node}: default read returned {} events, expected {APPENDS}",
            events.len()
        );
        check::chain(node, &events)?;
        check::acked_present(node, &events, &acked)?;
        check::no_phantoms(node, &events, &attempted)?;
        default_logs.insert(node, events);
    }
    check::identical(&default_logs)?;
    check::real_time_order(&acked)?;

    check::converged(&api, &[1, 2, 3], APPENDS, CONDITION_TIMEOUT).await?;
    let local_logs = check::local_logs(&api, &[1, 2, 3]).await?;
    ensure!(
        local_logs.get(&1) == default_logs.get(&1),
        "the local log of node 1 differs from its default read"
    );

    // The per-agent view, on every node, lists exactly this ASN's acknowledged events, newest
    // first.
    let first = &acked[0].event;
    let key = cluster.admin_key()?;
    let expected: Vec<&str> = acked
        .iter()
        .rev()
        .filter(|ack| ack.event.asn == first.asn)
        .map(|ack| ack.event.id.as_str())
        .collect();
    for node in 1..=3 {
        let (status, body) = api
            .raw(
                reqwest::Method::GET,
                node,
                &format!("/api/v1/agents/{}/activity?page=1&per_page=50", first.asn),
                Some(&format!("Bearer {key}")),
                None,
            )
            .await?;
        ensure!(status == 200, "agent activity answered {status}: {body}");
        let ids: Vec<&str> = body["data"]
            .as_array()
            .context("agent activity has no data array")?
            .iter()
            .filter_map(|event| event["id"].as_str())
            .collect();
        ensure!(
            ids == expected,
            "node {node}: agent activity of {} lists {ids:?}, expected {expected:?}",
            first.asn
        );
    }
    cluster.finish();
    Ok(())
}
