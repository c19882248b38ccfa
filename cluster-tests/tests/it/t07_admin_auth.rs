//! Goal: cluster administration and reporting refuse requests without the admin key or with a
//! wrong one (401, nothing changes), on the leader and on a follower (guide §4.2, BFLA).
//!
//! Method: 3 nodes; for each of {no header, wrong key, key with an extra character, `Basic`
//! scheme} send `POST /api/v1/cluster/nodes`, `DELETE /api/v1/cluster/nodes/3`,
//! `POST /api/v1/cluster/leader` and `POST /api/v1/activity/report` to the leader and to a
//! follower; expect 401 with code `UNAUTHORIZED`; membership, leader and ledger must be
//! unchanged; the right key then works.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Consistency, free_addr, slow_test};
use reqwest::Method;
use serde_json::json;

use crate::CONDITION_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_key() {
    let Some(guard) = slow_test("t07_admin_auth") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let key = cluster.admin_key()?;
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let follower = (1..=3).find(|id| *id != leader).context("no follower")?;
    let asn = api.agent_asn(1)?;

    for node in [1, 2, 3] {
        let (status, body) = api.raw(Method::GET, node, "/livez", None, None).await?;
        ensure!(
            status == 200 && body == json!({ "status": "ok" }),
            "node {node} /livez answered {status} {body}"
        );
    }

    let add_body = json!({
        "id": 9,
        "grpc_addr": free_addr()?.to_string(),
        "http_addr": free_addr()?.to_string(),
    });
    let report_body = json!({
        "asn": asn,
        "event_type": "task_completed",
        "severity": "info",
        "metadata": { "op": "t07" },
    });
    let wrong_keys = [
        None,
        Some("Bearer asn_live_wrong".to_string()),
        Some(format!("Bearer {key}x")),
        Some(format!("Basic {key}")),
    ];
    for node in [leader, follower] {
        for authorization in &wrong_keys {
            let requests = [
                (
                    Method::POST,
                    "/api/v1/cluster/nodes",
                    Some(add_body.clone()),
                ),
                (Method::DELETE, "/api/v1/cluster/nodes/3", None),
                (
                    Method::POST,
                    "/api/v1/cluster/leader",
                    Some(json!({ "node_id": follower })),
                ),
                (
                    Method::POST,
                    "/api/v1/activity/report",
                    Some(report_body.clone()),
                ),
            ];
            for (method, path, body) in requests {
                let (status, answer) = api
                    .raw(method.clone(), node, path, authorization.as_deref(), body)
                    .await?;
                ensure!(
                    status == 401,
                    "{method} {path} on node {node} with authorization {authorization:?} \
                     answered {status} {answer}, expected 401"
                );
                ensure!(
                    answer["error"]["code"] == "UNAUTHORIZED",
                    "{method} {path} on node {node}: 401 body is {answer}"
                );
            }
        }
    }

    let view = api.cluster(1).await?;
    let voters: BTreeSet<u64> = view.voters.iter().copied().collect();
    ensure!(
        voters == BTreeSet::from([1, 2, 3]) && view.learners.is_empty(),
        "membership changed by unauthorized requests: {view:?}"
    );
    ensure!(
        view.leader_id == Some(leader),
        "the leader changed after unauthorized transfer requests: {view:?}"
    );
    let head = api.head(1, Consistency::Linearizable).await?;
    ensure!(
        head.size == 0,
        "unauthorized reports appended events: size {}",
        head.size
    );

    let event = api
        .report(follower, &asn, "task_completed", json!({ "op": "t07" }))
        .await
        .context("a report with the admin key")?;
    ensure!(
        event.seq == 1,
        "first authorized report got seq {}",
        event.seq
    );
    ensure!(
        event.reported_by == "admin",
        "report with the admin key has reported_by {}",
        event.reported_by
    );
    cluster.finish();
    Ok(())
}
