//! Goal: an event altered in a stopped node's files is found when the node starts again: the
//! node refuses to start and names the event's `seq`; the other nodes keep serving an intact,
//! identical chain and keep taking writes (reliability guide S14, issue 4 self-check).
//!
//! Method: 3 nodes; 20 events through all three nodes; SIGTERM a follower; open its sled store
//! with sled itself (so sled's own checksums stay valid, as a careful attacker or a bug in the
//! layer above would leave them) and change one byte of event 7's metadata; restart it; it must
//! exit with a message naming event 7; the two others serve the same verified chain and accept
//! a write.

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, Consistency, check, slow_test, wait_for};
use serde_json::json;

use crate::CONDITION_TIMEOUT;

const TAMPERED_SEQ: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_event_stops_the_node_and_is_named() {
    let Some(guard) = slow_test("t12_tampered_store") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let admin = cluster.admin_key()?;
    let asn = api.agent_asn(1)?;
    for n in 0..20u64 {
        let node = n % 3 + 1;
        let body = json!({ "asn": asn, "event_type": "audited", "metadata": { "marker": format!("m{n:04}") } });
        api.report_as(node, &admin, &body, None)
            .await
            .map_err(|e| anyhow::anyhow!("report {n}: {e}"))?;
    }
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let victim = (1..=3).find(|id| *id != leader).context("no follower")?;
    let head = check::converged(&api, &[1, 2, 3], 20, CONDITION_TIMEOUT).await?;
    let target = api
        .all_events(victim, Consistency::Local)
        .await?
        .into_iter()
        .find(|e| e.seq == TAMPERED_SEQ)
        .context("event 7")?;
    let marker = target.metadata["marker"]
        .as_str()
        .context("marker")?
        .to_owned();

    let status = cluster.terminate(victim).await?;
    ensure!(
        status.success(),
        "node {victim} did not stop cleanly: {status}"
    );
    tamper(&cluster.data_dir(victim)?.join("store/sled"), &marker)?;

    cluster.restart(victim)?;
    let failure = wait_for(
        CONDITION_TIMEOUT,
        &format!("node {victim} to refuse to start"),
        async || match cluster.check_running(victim) {
            Ok(()) => bail!("node {victim} is still running"),
            Err(error) => Ok(error.to_string()),
        },
    )
    .await?;
    ensure!(
        failure.contains(&format!("event {TAMPERED_SEQ} does not match its hash")),
        "node {victim} stopped without naming event {TAMPERED_SEQ}: {failure}"
    );

    // The others serve the same intact chain and still take writes (2 of 3 is a majority).
    let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    let event = api
        .report_as(
            others[0],
            &admin,
            &json!({ "asn": asn, "event_type": "after" }),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("write after the tampered node stopped: {e}"))?;
    ensure!(
        event.seq == head.size + 1,
        "seq {} after head {}",
        event.seq,
        head.size
    );
    check::converged(&api, &others, event.seq, CONDITION_TIMEOUT).await?;
    let logs = check::local_logs(&api, &others).await?;
    for (node, events) in &logs {
        check::chain(*node, events)?;
        let seven = events
            .iter()
            .find(|e| e.seq == TAMPERED_SEQ)
            .context("event 7")?;
        ensure!(
            seven.hash == target.hash,
            "node {node} holds another event 7"
        );
    }
    check::identical(&logs)?;
    cluster.finish();
    Ok(())
}

/// Changes one byte of the stored event whose metadata holds `marker`, through sled's own API.
fn tamper(sled_dir: &std::path::Path, marker: &str) -> Result<()> {
    // The segment size is fixed at creation: it must match the node's (raft-store's
    // SLED_SEGMENT_BYTES) or sled refuses to open.
    let db = sled::Config::new()
        .path(sled_dir)
        .segment_size(8 << 20)
        .open()
        .context("open the node's sled")?;
    let events = db.open_tree("sm_events")?;
    let key = TAMPERED_SEQ.to_be_bytes();
    let mut value = events.get(key)?.context("event 7 is not stored")?.to_vec();
    let at = value
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .context("the marker is not in event 7's bytes")?;
    value[at] = if value[at] == b'm' { b'M' } else { b'm' };
    events.insert(key, value)?;
    db.flush()?;
    Ok(())
}
