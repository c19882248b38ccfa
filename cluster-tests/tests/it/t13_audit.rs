//! Goal: a third party verifies the cluster from outside with `ledgerctl` (issue 4): over HTTP
//! only, every node's keys agree, every event's hash, links and signature verify, every node's
//! Merkle root matches its signed checkpoint, checkpoints agree or are consistent, and inclusion
//! proofs verify; also after a follower installs a snapshot and after every node restarts; and
//! an exported bundle verifies offline.
//!
//! Method: 3 nodes with a small snapshot policy; events through all three nodes (singles and a
//! batch); `ledgerctl verify audit`; SIGKILL a follower, append until the leader purges past it,
//! restart it (it catches up by snapshot), audit; SIGKILL all and restart, audit; export a bundle
//! from a follower and `ledgerctl verify bundle` it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Options, Workload, check, ledgerd_bin, slow_test, wait_for};
use serde_json::json;

use crate::CONDITION_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_audit_passes_across_snapshots_and_restarts() {
    let Some(guard) = slow_test("t13_audit") else {
        return;
    };
    guard.run(scenario()).await;
}

fn ledgerctl() -> Result<PathBuf> {
    let path = ledgerd_bin()?.with_file_name("ledgerctl");
    ensure!(
        path.is_file(),
        "{} is missing: run `cargo build -p ledgerctl`",
        path.display()
    );
    Ok(path)
}

/// Runs `ledgerctl args…`; returns stdout, or fails with its stderr.
fn run_ledgerctl(args: &[String]) -> Result<String> {
    let output = Command::new(ledgerctl()?)
        .args(args)
        .output()
        .context("run ledgerctl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "ledgerctl {args:?} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

fn audit(cluster: &Cluster, asn: &str) -> Result<String> {
    let mut args = vec![
        "verify".to_owned(),
        "audit".to_owned(),
        "--asn".to_owned(),
        asn.to_owned(),
    ];
    for id in cluster.node_ids() {
        args.push("--url".into());
        args.push(format!("http://{}", cluster.http_addr(id)?));
    }
    let out = run_ledgerctl(&args)?;
    ensure!(
        out.contains("audit passed"),
        "unexpected audit output: {out}"
    );
    eprintln!("t13: {}", out.trim());
    Ok(out)
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start_with(3, Options::with_snapshots(20, 5)).await?;
    let api = cluster.api();
    let admin = cluster.admin_key()?;
    let asn = api.agent_asn(1)?;
    for n in 0..12u64 {
        let body = json!({ "asn": api.agent_asn(n % 3 + 1)?, "event_type": "audited", "metadata": { "n": n, "r": 0.1 } });
        api.report_as(n % 3 + 1, &admin, &body, None)
            .await
            .map_err(|e| anyhow::anyhow!("report {n}: {e}"))?;
    }
    let batch: Vec<_> = (0..5)
        .map(|n| json!({ "asn": asn, "event_type": "batched", "metadata": { "k": n } }))
        .collect();
    api.report_batch(2, &admin, &batch, None)
        .await
        .map_err(|e| anyhow::anyhow!("batch: {e}"))?;
    let head = check::converged(&api, &[1, 2, 3], 17, CONDITION_TIMEOUT).await?;
    audit(&cluster, &asn)?;

    // A follower misses a purge and catches up by snapshot; the audit still passes.
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let follower = (1..=3).find(|id| *id != leader).context("no follower")?;
    let missed_from = api.node_status(follower).await?.last_log_index.unwrap_or(0);
    cluster.kill(follower)?;
    let during = Workload::start(api.clone(), 1, Some(60)).join().await?;
    ensure!(
        during.acked.len() >= 54,
        "only {} of 60 appends acknowledged",
        during.acked.len()
    );
    wait_for(
        CONDITION_TIMEOUT,
        "the leader to purge past the follower",
        async || {
            let leader = api.agreed_leader().await?;
            let purged = api.node_status(leader).await?.purged_index.unwrap_or(0);
            ensure!(
                purged > missed_from,
                "purged {purged}, follower at {missed_from}"
            );
            Ok(())
        },
    )
    .await?;
    cluster.restart(follower)?;
    cluster.wait_ready(follower).await?;
    let size = head.size + during.acked.len() as u64;
    check::converged(&api, &[1, 2, 3], size, CONDITION_TIMEOUT).await?;
    let status = api.node_status(follower).await?;
    ensure!(
        status.snapshot_index.is_some(),
        "follower {follower} did not install a snapshot: {status:?}"
    );
    audit(&cluster, &asn)?;

    // Every node restarts from its own disk; the audit still passes.
    cluster.kill_all()?;
    for id in [1, 2, 3] {
        cluster.restart(id)?;
    }
    cluster.wait_all_ready().await?;
    check::converged(&api, &[1, 2, 3], size, CONDITION_TIMEOUT).await?;
    audit(&cluster, &asn)?;

    // Each node's self-check on an admin request passes, also while writes are being applied
    // (it must never mistake events committed during its walk for damage and stop the node).
    let writes = Workload::start(api.clone(), 2, Some(40));
    for round in 0..3 {
        for id in [1, 2, 3] {
            let (status, body) = api
                .raw(
                    reqwest::Method::POST,
                    id,
                    "/api/v1/ledger/verify",
                    Some(&format!("Bearer {admin}")),
                    None,
                )
                .await?;
            let verified = body["verified"].as_u64().unwrap_or(0);
            ensure!(
                status == 200 && verified >= size,
                "round {round}: node {id} self-check under load: {status} {body}"
            );
        }
    }
    let during = writes.join().await?;
    ensure!(
        !during.acked.is_empty(),
        "no write was acknowledged during the self-checks"
    );
    let size = size + during.acked.len() as u64;
    check::converged(&api, &[1, 2, 3], size, CONDITION_TIMEOUT).await?;
    audit(&cluster, &asn)?;

    // An exported bundle verifies offline.
    let bundle = cluster.root().join("bundle.json");
    let url = format!("http://{}", cluster.http_addr(follower)?);
    run_ledgerctl(&[
        "export".into(),
        "--url".into(),
        url,
        "--output".into(),
        bundle.display().to_string(),
    ])?;
    let out = run_ledgerctl(&[
        "verify".into(),
        "bundle".into(),
        bundle.display().to_string(),
    ])?;
    ensure!(
        out.contains("bundle verified"),
        "unexpected bundle output: {out}"
    );
    cluster.finish();
    Ok(())
}
