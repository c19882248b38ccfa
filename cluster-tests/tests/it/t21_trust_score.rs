//! Goal (issue 8): an agent's trust score, served by `GET /api/v1/agents/{asn}/trust-score` and
//! in the agent resource, is what a third party recomputes from the agent's history fetched
//! over the API, at the ledger position the answer names; it weighs recent events more and
//! ignores events older than the 90-day window; a deactivated agent keeps its history and
//! score and says so; `ledgerctl trust-score` agrees.
//!
//! Method: 3 nodes under libfaketime (one offset file for all): events reported at −100 days
//! (outside the window at the end), at −30 days and today (the clock jumps forward; a probe
//! agent's `created_at` shows when it took effect). The score is recomputed here by an
//! independent implementation of docs/TRUST_SCORE.md (cluster-tests depends on no workspace
//! crate) from the owner's full history, using only events up to the named position, whose
//! hash and time are checked against `/api/v1/ledger/events`. Then the agent is deactivated
//! and everything is checked again. A proxy that adds one to the served score makes
//! `ledgerctl trust-score` exit 1. Bad requests: 400, 404, 401.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Api, Body, Cluster, Options, slow_test, time};
use reqwest::Method;
use serde_json::{Value, json};

use crate::CONDITION_TIMEOUT;
use crate::support;
use crate::t15_disk_and_clock::{faketime_env, libfaketime, set_offset};
use crate::t22_explorer::TamperingProxy;

const NODE: u64 = 1;
const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_scores_recompute_from_the_verified_history() {
    let Some(guard) = slow_test("t21_trust_score") else {
        return;
    };
    guard.run(scenario()).await;
}

/// docs/TRUST_SCORE.md, written again from the document: `(score, good, bad, in window)`.
fn recompute(events: &[Value], as_of_ms: i64) -> Result<(u64, u128, u128, u64)> {
    let as_of_day = as_of_ms.div_euclid(DAY_MS);
    let (mut good, mut bad, mut in_window) = (0u128, 0u128, 0u64);
    for event in events {
        let created = time::parse_ms(event["created_at"].as_str().context("created_at")?)?;
        let age = as_of_day - created.div_euclid(DAY_MS);
        if !(0..90).contains(&age) {
            continue;
        }
        in_window += 1;
        let recency = (90 - age) as u128;
        let penalty = match event["severity"].as_str().context("severity")? {
            "info" => {
                good += recency;
                0
            }
            "warning" => 1,
            "error" => 4,
            "critical" => 16,
            other => anyhow::bail!("unknown severity {other}"),
        };
        bad += recency * penalty;
    }
    let score = 1000 * (good + 450) / (good + bad + 900);
    Ok((score as u64, good, bad, in_window))
}

async fn get(api: &Api, path: &str, key: Option<&str>) -> Result<Value> {
    let answer = support::send(api, Method::GET, NODE, path, key, &[], Body::None).await?;
    support::expect_status(path, answer, 200)
}

/// Fetches the served score and the owner's view of the history, checks the position and
/// recomputes; returns the served answer.
async fn check(api: &Api, asn: &str, owner: &str, status: &str) -> Result<Value> {
    let served = get(api, &format!("/api/v1/agents/{asn}/trust-score"), None).await?;
    ensure!(served["asn"] == asn, "asn: {served}");
    ensure!(
        served["status"] == status,
        "status is not {status}: {served}"
    );
    let seq = served["position"]["seq"].as_u64().context("position.seq")?;
    let time_ms = served["position"]["time_ms"]
        .as_i64()
        .context("position.time_ms")?;
    // The position is a real ledger event: its hash and time are the ones named.
    let at = get(
        api,
        &format!("/api/v1/ledger/events?from_seq={seq}&limit=1"),
        None,
    )
    .await?;
    let head = &at["events"][0];
    ensure!(
        head["seq"] == seq && head["hash"] == served["position"]["head_hash"],
        "event {seq} is not the named head: {head} vs {served}"
    );
    ensure!(
        time::parse_ms(head["created_at"].as_str().context("created_at")?)? == time_ms,
        "event {seq}'s created_at is not the named time"
    );
    // The owner's full history, every page; only events up to the position count.
    let mut history = Vec::new();
    let mut page = 1;
    loop {
        let listing = get(
            api,
            &format!("/api/v1/agents/{asn}/activity?page={page}&per_page=5"),
            Some(owner),
        )
        .await?;
        history.extend(listing["data"].as_array().context("data")?.iter().cloned());
        if page
            >= listing["pagination"]["total_pages"]
                .as_u64()
                .context("pages")?
        {
            break;
        }
        page += 1;
    }
    history.retain(|e| e["seq"].as_u64().is_some_and(|s| s <= seq));
    // Oldest first, and one per-agent chain from the agent's first event.
    history.sort_by_key(|e| e["seq"].as_u64());
    let mut previous = "0".repeat(64);
    for event in &history {
        ensure!(
            event["agent_prev_hash"] == previous.as_str(),
            "the history has a gap before event {}",
            event["seq"]
        );
        previous = event["hash"].as_str().context("hash")?.to_string();
    }
    let (score, good, bad, in_window) = recompute(&history, time_ms)?;
    eprintln!(
        "t21: {asn} ({status}) at seq {seq}: served {}, recomputed {score} from {} events \
         ({in_window} in the window; good {good}, bad {bad})",
        served["trust_score"],
        history.len()
    );
    ensure!(
        served["trust_score"] == score,
        "served score {} != recomputed {score}: {served}",
        served["trust_score"]
    );
    let inputs = &served["inputs"];
    ensure!(
        inputs["good"] == json!(good)
            && inputs["bad"] == json!(bad)
            && inputs["events_in_window"] == in_window
            && inputs["agent_events_total"] == history.len(),
        "served inputs differ from the recomputation: {inputs}"
    );
    // The agent resource carries the same score (nothing was written in between).
    let agent = get(api, &format!("/api/v1/agents/{asn}"), None).await?;
    ensure!(
        agent["trust_score"] == score && agent["status"] == status,
        "agent resource: {agent}"
    );
    Ok(served)
}

/// Reports probe events for `probe` until one's `created_at` is at least `at_least_ms`: the
/// offset took effect on the leader.
async fn wait_clock(api: &Api, owner: &str, probe: &str, at_least_ms: i64) -> Result<()> {
    cluster_tests::wait_for(
        CONDITION_TIMEOUT,
        "the clock offset to take effect",
        async || {
            let event = api
                .report_as(
                    NODE,
                    owner,
                    &json!({"asn": probe, "event_type": "probe"}),
                    None,
                )
                .await?;
            ensure!(
                time::parse_ms(&event.created_at)? >= at_least_ms,
                "last created_at {}",
                event.created_at
            );
            Ok(())
        },
    )
    .await
}

async fn report(api: &Api, owner: &str, asn: &str, events: &[(&str, &str, usize)]) -> Result<()> {
    let mut batch = Vec::new();
    for (event_type, severity, count) in events {
        for n in 0..*count {
            batch.push(
                json!({"asn": asn, "event_type": event_type, "severity": severity,
                              "metadata": {"n": n}}),
            );
        }
    }
    api.report_batch(NODE, owner, &batch, None).await?;
    Ok(())
}

/// `ledgerctl trust-score asn --url url [--key key]`.
fn run_ledgerctl(url: &str, asn: &str, key: Option<&str>) -> Result<std::process::Output> {
    let path = cluster_tests::ledgerd_bin()?.with_file_name("ledgerctl");
    ensure!(
        path.is_file(),
        "{} is missing: run `cargo build -p ledgerctl`",
        path.display()
    );
    let mut command = std::process::Command::new(path);
    command.args(["trust-score", asn, "--url", url]);
    if let Some(key) = key {
        command.args(["--key", key]);
    }
    command.output().context("run ledgerctl")
}

fn ledgerctl_trust(cluster: &Cluster, asn: &str, key: Option<&str>) -> Result<String> {
    let url = format!("http://{}", cluster.http_addr(NODE)?);
    let output = run_ledgerctl(&url, asn, key)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success() && stdout.contains("matches"),
        "ledgerctl trust-score {asn} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("t21: {}", stdout.trim());
    Ok(stdout)
}

async fn scenario() -> Result<()> {
    let library = libfaketime()?;
    let clock_dir = tempfile::Builder::new()
        .prefix("ledger-t21-clock-")
        .tempdir()?;
    let file = clock_dir.path().join("offset");
    std::fs::write(&file, "-100d\n")?;
    let wrapper = faketime_env(&library, &file);
    let options = Options {
        wrappers: (1..=3).map(|id| (id, wrapper.clone())).collect(),
        ..Options::default()
    };
    let cluster = Cluster::start_with(3, options).await?;
    let api = cluster.api();
    let owner = api.operator_key()?;
    let asn = api.agent_asn(0)?;
    let probe = api.agent_asn(1)?;

    // 100 days ago: three critical incidents (outside the window at the end).
    wait_clock(&api, &owner, &probe, time::now_ms()? - 101 * DAY_MS).await?;
    report(&api, &owner, &asn, &[("incident", "critical", 3)]).await?;
    let early = check(&api, &asn, &owner, "active").await?;
    ensure!(early["trust_score"].as_u64() < Some(500), "{early}");

    // 30 days ago: mostly successes, a warning and an error.
    jump(&cluster, &file, &api, &owner, &probe, "-30d", 31).await?;
    report(
        &api,
        &owner,
        &asn,
        &[
            ("task_completed", "info", 4),
            ("slow_task", "warning", 1),
            ("task_failed", "error", 1),
        ],
    )
    .await?;
    check(&api, &asn, &owner, "active").await?;

    // Today: more successes and one critical incident.
    jump(&cluster, &file, &api, &owner, &probe, "+0", 1).await?;
    report(
        &api,
        &owner,
        &asn,
        &[("task_completed", "info", 6), ("incident", "critical", 1)],
    )
    .await?;
    let now = check(&api, &asn, &owner, "active").await?;
    let inputs = &now["inputs"];
    ensure!(
        inputs["agent_events_total"] == 16 && inputs["events_in_window"] == 13,
        "the events of 100 days ago must be outside the window: {inputs}"
    );
    let recencies: Vec<u64> = inputs["days"]
        .as_array()
        .context("days")?
        .iter()
        .filter_map(|d| d["recency"].as_u64())
        .collect();
    ensure!(
        recencies.len() == 2 && recencies[1] == 90 && (59..=61).contains(&recencies[0]),
        "two days in the window, 30 days apart: {inputs}"
    );
    ledgerctl_trust(&cluster, &asn, Some(&owner))?;
    // 16 events fit in the public window: without a key the recomputation works too.
    ledgerctl_trust(&cluster, &asn, None)?;
    // A node that serves another score than its history makes: ledgerctl exits 1, naming both.
    let proxy = TamperingProxy::start(&api.base_url(NODE)?, add_one_to_the_score).await?;
    let lying = run_ledgerctl(&proxy.url(), &asn, Some(&owner))?;
    let stderr = String::from_utf8_lossy(&lying.stderr);
    let served = now["trust_score"].as_u64().context("trust_score")?;
    ensure!(
        lying.status.code() == Some(1)
            && stderr.contains(&format!("served {}, recomputed {served}", served + 1)),
        "ledgerctl must fail on a wrong score ({}): {stderr}",
        lying.status
    );
    eprintln!("t21: a wrong score: {}", stderr.trim());
    drop(proxy);

    // Deactivated: history and score stay, and the answer says so.
    api.deactivate_agent(NODE, &owner, &asn).await?;
    let after = check(&api, &asn, &owner, "deactivated").await?;
    ensure!(
        after["trust_score"] == now["trust_score"] && after["deactivated_at"].is_string(),
        "deactivation changed the score or hid it: {after}"
    );
    ledgerctl_trust(&cluster, &asn, Some(&owner))?;

    // Bad requests.
    let malformed = support::send(
        &api,
        Method::GET,
        NODE,
        "/api/v1/agents/ASN-12/trust-score",
        None,
        &[],
        Body::None,
    )
    .await?;
    support::expect_error("malformed ASN", &malformed, 400, &["asn"])?;
    let unknown = support::unknown_asn(&api, &asn).await?;
    let missing = support::send(
        &api,
        Method::GET,
        NODE,
        &format!("/api/v1/agents/{unknown}/trust-score"),
        None,
        &[],
        Body::None,
    )
    .await?;
    support::expect_error("unknown ASN", &missing, 404, &["asn"])?;
    let bad_key = support::send(
        &api,
        Method::GET,
        NODE,
        &format!("/api/v1/agents/{asn}/trust-score"),
        Some("asn_live_0000000000000000000000000000000000000000000000000000000000000000"),
        &[],
        Body::None,
    )
    .await?;
    support::expect_error("bad key", &bad_key, 401, &[])?;
    cluster.finish();
    Ok(())
}

/// The tampering proxy's change: one more point on every served trust score.
fn add_one_to_the_score(path: &str, body: &mut Value) {
    if path.contains("/trust-score")
        && let Some(score) = body["trust_score"].as_u64()
    {
        body["trust_score"] = json!(score + 1);
    }
}

/// Moves every node's clock to `offset` and waits until the leader stamps times at most
/// `days_back` days before the real now.
async fn jump(
    cluster: &Cluster,
    file: &Path,
    api: &Api,
    owner: &str,
    probe: &str,
    offset: &str,
    days_back: i64,
) -> Result<()> {
    set_offset(cluster, file, offset)?;
    wait_clock(api, owner, probe, time::now_ms()? - days_back * DAY_MS).await
}
