//! Goal: what operators run the ledger with (issue 7), on real clusters.
//! - `GET /metrics` during load has every documented metric with sensible values.
//! - Per-API-key and per-address rate limits answer 429 `RATE_LIMITED` with `Retry-After`, record
//!   nothing, spare other keys, and let the key through again later.
//! - Load shedding answers 503 `OVERLOADED` with `Retry-After` once the in-flight budget is
//!   used, while `/livez` and `/metrics` still answer.
//! - Configuration precedence: flag over `LEDGER_*` over the `--config` TOML file over the
//!   default; a bad file is one line and exit code 2.
//! - JSON logs carry the request id and the key id, never the key.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, Options, Workload, free_addr, ledgerd_command, slow_test, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

use crate::CONDITION_TIMEOUT;
use crate::support::{Sample, scrape, value};

/// `ledger_http_requests_in_flight` of `node`, the scrape that reads it included.
async fn in_flight(cluster: &Cluster, node: u64) -> Result<f64> {
    value(
        &scrape(cluster, node).await?,
        "ledger_http_requests_in_flight",
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_during_load_have_every_metric() {
    let Some(guard) = slow_test("t23_metrics") else {
        return;
    };
    guard.run(metrics_scenario()).await;
}

async fn metrics_scenario() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let workload = Workload::start(api.clone(), 4, None);
    workload
        .wait_acked_after(Instant::now(), 50, CONDITION_TIMEOUT)
        .await?;
    let first: BTreeMap<u64, Vec<Sample>> = {
        let mut all = BTreeMap::new();
        for id in 1..=3 {
            all.insert(id, scrape(&cluster, id).await?);
        }
        all
    };
    let acked_before = workload.acked();
    workload
        .wait_acked_after(Instant::now(), 50, CONDITION_TIMEOUT)
        .await?;
    let second = scrape(&cluster, leader).await?;
    let history = workload.stop().await?;
    ensure!(history.acked.len() > acked_before, "no progress");

    for (id, samples) in &first {
        let term = value(samples, "ledger_raft_term", &[])?;
        ensure!(term >= 1.0, "node {id}: term {term}");
        let leader_seen = value(samples, "ledger_raft_leader_id", &[])?;
        ensure!(
            leader_seen == leader as f64,
            "node {id}: leader {leader_seen}, expected {leader}"
        );
        let is_leader = value(samples, "ledger_raft_is_leader", &[])?;
        ensure!(
            is_leader == f64::from(u8::from(*id == leader)),
            "node {id}: is_leader {is_leader}"
        );
        let last = value(samples, "ledger_raft_last_log_index", &[])?;
        let committed = value(samples, "ledger_raft_committed_index", &[])?;
        let applied = value(samples, "ledger_raft_applied_index", &[])?;
        ensure!(
            applied > 0.0 && applied <= last && committed <= last,
            "node {id}: applied {applied}, committed {committed}, last {last}"
        );
        let voters = value(samples, "ledger_raft_voters", &[])?;
        ensure!(voters == 3.0, "node {id}: voters {voters}");
        let fsyncs = value(samples, "ledger_fsync_duration_seconds_count", &[])?;
        let fsync_time = value(samples, "ledger_fsync_duration_seconds_sum", &[])?;
        ensure!(
            fsyncs > 0.0 && fsync_time > 0.0,
            "node {id}: {fsyncs} fsyncs in {fsync_time} s"
        );
        let events = value(samples, "ledger_events_total", &[])?;
        ensure!(events > 0.0, "node {id}: events {events}");
        // Every node proposes batches: the leader its own, a follower the ones it forwards.
        let batches = value(
            samples,
            "ledger_group_commit_batch_duration_seconds_count",
            &[],
        )?;
        let batch_time = value(
            samples,
            "ledger_group_commit_batch_duration_seconds_sum",
            &[],
        )?;
        ensure!(
            batches > 0.0 && batch_time > 0.0,
            "node {id}: {batches} batches answered in {batch_time} s"
        );
        let age = value(samples, "ledger_checkpoint_age_seconds", &[])?;
        ensure!(
            (0.0..60.0).contains(&age),
            "node {id}: checkpoint age {age}"
        );
        let size = value(samples, "ledger_store_size_bytes", &[])?;
        ensure!(size > 0.0, "node {id}: store size {size}");
        value(samples, "ledger_write_queue_commands", &[])?;
        // Under load every node holds the partial index runs and day counts of the reports.
        let held = value(samples, "ledger_state_machine_held_bytes", &[])?;
        ensure!(held > 0.0, "node {id}: {held} bytes held");
        value(samples, "ledger_http_requests_in_flight", &[])?;
        // The workload spreads its reports over every node.
        let reports = value(
            samples,
            "ledger_http_requests_total",
            &["route=\"/api/v1/activity/report\"", "status=\"201\""],
        )?;
        ensure!(reports > 0.0, "node {id}: {reports} reports answered 201");
    }
    // Every answered report is both counted and timed. Checked once no request is in flight:
    // a scrape during load reads the counter and the histogram at two moments, and a report
    // answered in between shows in one and not the other (seen once in CI: 20 timed, 19
    // counted).
    for id in 1..=3 {
        let samples = scrape(&cluster, id).await?;
        let labels = ["route=\"/api/v1/activity/report\"", "status=\"201\""];
        let reports = value(&samples, "ledger_http_requests_total", &labels)?;
        let timed = value(
            &samples,
            "ledger_http_request_duration_seconds_count",
            &labels,
        )?;
        ensure!(
            reports > 0.0 && timed == reports,
            "node {id}: {timed} timed, {reports} counted"
        );
    }
    let on_leader = &first[&leader];
    for follower in &followers {
        let lag = value(
            on_leader,
            "ledger_raft_replication_lag_entries",
            &[&format!("follower=\"{follower}\"")],
        )?;
        ensure!(lag >= 0.0, "lag of {follower}: {lag}");
    }
    // AppendEntries travel on one stream per follower, forwarded batches on one per follower
    // to the leader (more only if a stream failed).
    let opened = |samples, kind: &str| {
        value(
            samples,
            "ledger_peer_streams_opened_total",
            &[&format!("kind=\"{kind}\"")],
        )
    };
    let to_followers = opened(on_leader, "append_entries")?;
    ensure!(
        to_followers >= 2.0,
        "leader: {to_followers} AppendEntries streams opened"
    );
    for follower in &followers {
        let to_leader = opened(&first[follower], "forward_write")?;
        ensure!(
            to_leader >= 1.0,
            "follower {follower}: {to_leader} forwarded-batch streams opened"
        );
    }
    // Forwarded batches join the leader's group commit: the leader proposes.
    let batches = value(on_leader, "ledger_group_commit_batch_commands_count", &[])?;
    ensure!(batches > 0.0, "leader: {batches} group-commit batches");
    for follower in &followers {
        ensure!(
            value(&first[follower], "ledger_raft_replication_lag_entries", &[]).is_err(),
            "follower {follower} reports replication lag"
        );
    }
    // Counters move forward under load.
    for name in [
        "ledger_fsync_duration_seconds_count",
        "ledger_events_total",
        "ledger_group_commit_batch_commands_count",
        "ledger_group_commit_batch_duration_seconds_count",
        "ledger_raft_append_entries_sent_bytes_count",
        "ledger_raft_append_entries_sent_bytes_sum",
    ] {
        let before = value(on_leader, name, &[])?;
        let after = value(&second, name, &[])?;
        ensure!(after > before, "{name}: {before} then {after}");
    }
    Ok(())
}

/// Sends `n` reports at once with `key` to `node`; returns the answers (status, body, Retry-After).
async fn burst(
    cluster: &Cluster,
    node: u64,
    key: &str,
    asn: &str,
    n: usize,
) -> Result<Vec<(u16, Value, Option<String>)>> {
    let url = format!("{}/api/v1/activity/report", cluster.api().base_url(node)?);
    let client = reqwest::Client::new();
    let sends = (0..n).map(|i| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .bearer_auth(key)
                .json(&json!({ "asn": asn, "event_type": "burst", "metadata": { "i": i } }))
                .send()
                .await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = response.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, body, retry_after))
        }
    });
    futures::future::join_all(sends).await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let Some(guard) = slow_test("t23_rate_limits") else {
        return;
    };
    guard.run(rate_limit_scenario()).await;
}

async fn rate_limit_scenario() -> Result<()> {
    let options = Options {
        extra_args: [
            "--rate-limit-key-rps",
            "5",
            "--rate-limit-key-burst",
            "20",
            "--rate-limit-anonymous-rps",
            "20",
            "--rate-limit-anonymous-burst",
            "40",
            "--log-format",
            "json",
            "--access-log",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    };
    let cluster = Cluster::start_with(3, options).await?;
    let api = cluster.api();
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let operator_id = api.fixture()?.operator.id.clone();
    let asn = api.agent_asn(0)?;
    let limited = api
        .create_key(leader, Some(&operator_id), "limited", &["write", "read"])
        .await?;
    let limited = limited.secret()?.to_owned();
    let other = api
        .create_key(leader, Some(&operator_id), "other", &["write", "read"])
        .await?;
    let other = other.secret()?.to_owned();

    // 60 reports at once with one key to one node: the burst of 20 (and what the rate adds
    // meanwhile) passes, the rest is 429.
    let answers = burst(&cluster, 2, &limited, &asn, 60).await?;
    let created = answers.iter().filter(|(s, _, _)| *s == 201).count();
    let limited_answers: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    ensure!(
        created + limited_answers.len() == answers.len(),
        "answers other than 201 and 429: {:?}",
        answers
            .iter()
            .filter(|(s, _, _)| *s != 201 && *s != 429)
            .collect::<Vec<_>>()
    );
    ensure!(created >= 1, "nothing was accepted");
    ensure!(!limited_answers.is_empty(), "nothing was rate limited");
    for (_, body, retry_after) in &limited_answers {
        ensure!(body["error"]["code"] == "RATE_LIMITED", "429 body {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        ensure!(message.contains("Authorization"), "message {message:?}");
        let secs: u64 = retry_after
            .as_deref()
            .context("429 without Retry-After")?
            .parse()
            .context("Retry-After is not whole seconds")?;
        ensure!(secs >= 1, "Retry-After {secs}");
    }
    // Another key has its own budget, on the same node.
    let answers = burst(&cluster, 2, &other, &asn, 1).await?;
    ensure!(answers[0].0 == 201, "the other key got {:?}", answers[0]);
    // Nothing refused was recorded: the agent has exactly the accepted events of type burst.
    let (status, page) = api
        .raw(
            Method::GET,
            leader,
            &format!("/api/v1/agents/{asn}/activity?type=burst&per_page=50"),
            Some(&format!("Bearer {limited}")),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(status == 200 || status == 429, "activity: {status} {page}");
    let (_, page) = api
        .raw(
            Method::GET,
            leader,
            &format!("/api/v1/agents/{asn}/activity?type=burst&per_page=50"),
            Some(&format!("Bearer {other}")),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let total = page["pagination"]["total"].as_u64().context("no total")?;
    ensure!(
        total == created as u64 + 1,
        "{total} burst events recorded, {created} + 1 accepted"
    );
    // The key is let through again once its budget refills.
    wait_for(
        CONDITION_TIMEOUT,
        "the limited key to pass again",
        async || {
            let answers = burst(&cluster, 2, &limited, &asn, 1).await?;
            ensure!(answers[0].0 == 201, "still {:?}", answers[0]);
            Ok(())
        },
    )
    .await?;

    // Without a key, one client address has a budget per node.
    let url = format!("{}/api/v1/ledger/head", api.base_url(3)?);
    let client = reqwest::Client::new();
    let statuses = futures::future::join_all((0..120).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(&url)
                .send()
                .await
                .map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after")))
        }
    }))
    .await;
    let statuses: Vec<(u16, bool)> = statuses.into_iter().collect::<Result<_, _>>()?;
    ensure!(
        statuses.iter().any(|(s, _)| *s == 200) && statuses.iter().any(|(s, _)| *s == 429),
        "anonymous burst: {statuses:?}"
    );
    ensure!(
        statuses.iter().all(|(s, r)| *s == 200 || (*s == 429 && *r)),
        "anonymous burst: {statuses:?}"
    );
    // Probes are never limited.
    for _ in 0..50 {
        let status = client
            .get(format!("{}/livez", api.base_url(3)?))
            .send()
            .await?
            .status();
        ensure!(status == 200, "/livez answered {status}");
    }

    // The JSON access log names the request id and the key id, never the key's secret.
    let request_id = "t23-request-id-7";
    let (status, _) = api
        .request(
            Method::GET,
            1,
            &format!("/api/v1/agents/{asn}/activity"),
            Some(&format!("Bearer {other}")),
            &[("x-request-id", request_id)],
            cluster_tests::Body::None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(status == 200, "activity with x-request-id: {status}");
    let key_id = &other["asn_live_".len().."asn_live_".len() + 16];
    let log_path = cluster.data_dir(1)?.join("ledgerd.log");
    let line = wait_for(
        CONDITION_TIMEOUT,
        "a log line with the request id",
        async || {
            let log = std::fs::read_to_string(&log_path)?;
            log.lines()
                .find(|l| l.contains(request_id))
                .map(str::to_owned)
                .context("not logged yet")
        },
    )
    .await?;
    let entry: Value = serde_json::from_str(&line).context("the log line is not JSON")?;
    ensure!(
        entry["span"]["request_id"] == request_id && entry["span"]["key_id"] == key_id,
        "log line {line}"
    );
    for id in 1..=3 {
        let log = std::fs::read_to_string(cluster.data_dir(id)?.join("ledgerd.log"))?;
        for secret in [&limited, &other] {
            ensure!(
                !log.contains(&secret["asn_live_".len() + 16..]),
                "node {id}'s log contains a key's secret"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_answers_503_with_retry_after() {
    let Some(guard) = slow_test("t23_load_shedding") else {
        return;
    };
    guard.run(shedding_scenario()).await;
}

async fn shedding_scenario() -> Result<()> {
    let options = Options {
        extra_args: ["--http-requests-in-flight-max", "2"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, options).await?;
    let api = cluster.api();
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let key = api.operator_key()?;
    let asn = api.agent_asn(0)?;
    // Without its followers the leader cannot commit: two reports stay in flight.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause(*id)?;
    }
    // A client that gives up closes its connection: its request ends there, gives back its
    // place and no longer counts as in flight.
    let gave_up = api
        .http()
        .post(format!("{}/api/v1/activity/report", api.base_url(leader)?))
        .bearer_auth(&key)
        .json(&json!({ "asn": asn, "event_type": "abandoned" }))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    ensure!(
        gave_up.is_err(),
        "a report was answered while the leader cannot commit: {gave_up:?}"
    );
    wait_for(
        CONDITION_TIMEOUT,
        "the abandoned report no longer in flight",
        async || {
            let in_flight = in_flight(&cluster, leader).await?;
            // The scrape counts itself.
            ensure!(in_flight == 1.0, "{in_flight} in flight");
            Ok(())
        },
    )
    .await?;
    let stuck: Vec<_> = (0..2)
        .map(|i| {
            let api = api.clone();
            let key = key.clone();
            let asn = asn.clone();
            tokio::spawn(async move {
                api.raw(
                    Method::POST,
                    leader,
                    "/api/v1/activity/report",
                    Some(&format!("Bearer {key}")),
                    Some(json!({ "asn": asn, "event_type": "stuck", "metadata": { "i": i } })),
                )
                .await
            })
        })
        .collect();
    // /metrics is exempt from shedding and counts itself: 3 in flight = both reports.
    let both = wait_for(CONDITION_TIMEOUT, "both reports in flight", async || {
        let in_flight = in_flight(&cluster, leader).await?;
        ensure!(in_flight >= 3.0, "{in_flight} in flight");
        Ok(())
    })
    .await;
    if let Err(error) = both {
        // Say what became of the reports that should be stuck.
        let mut answers = Vec::new();
        for task in stuck {
            answers.push(if task.is_finished() {
                format!("{:?}", task.await?)
            } else {
                "still waiting".to_owned()
            });
        }
        bail!("{error:#}; the reports: {answers:?}");
    }
    let answers = burst(&cluster, leader, &key, &asn, 1).await?;
    let (status, body, retry_after) = &answers[0];
    ensure!(*status == 503, "third report: {status} {body}");
    ensure!(body["error"]["code"] == "OVERLOADED", "503 body {body}");
    ensure!(
        retry_after.as_deref() == Some("1"),
        "Retry-After {retry_after:?}"
    );
    let live = reqwest::get(format!("{}/livez", api.base_url(leader)?)).await?;
    ensure!(
        live.status() == 200,
        "/livez while shedding: {}",
        live.status()
    );
    let samples = scrape(&cluster, leader).await?;
    let shed = value(
        &samples,
        "ledger_http_rejected_total",
        &["reason=\"overloaded\""],
    )?;
    ensure!(shed >= 1.0, "shed requests counted: {shed}");

    for id in &followers {
        cluster.resume(*id)?;
    }
    for task in stuck {
        let (status, body) = task.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(status == 201, "a stuck report ended {status} {body}");
    }
    let answers = burst(&cluster, leader, &key, &asn, 1).await?;
    ensure!(answers[0].0 == 201, "after the load: {:?}", answers[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_flags_and_environment_in_order() {
    let Some(guard) = slow_test("t23_config_precedence") else {
        return;
    };
    guard.run(config_scenario()).await;
}

/// Runs ledgerd until it exits (expected: a bad configuration); returns code and stderr.
async fn run_to_exit(command: &mut std::process::Command) -> Result<(Option<i32>, String)> {
    let mut command = tokio::process::Command::from(std::mem::replace(
        command,
        std::process::Command::new("true"),
    ));
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .context("ledgerd did not exit")??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

async fn config_scenario() -> Result<()> {
    let work = tempfile::Builder::new().prefix("ledger-t23-").tempdir()?;
    let file = work.path().join("ledgerd.toml");
    let (http_file, http_env, http_flag, grpc) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);

    // Bad files: one line naming the problem, exit code 2.
    for (contents, expected) in [
        (
            "id = 1\nnot_an_option = 3\n",
            "unknown option \"not_an_option\"",
        ),
        ("id = 1\nheartbeat-ms = \"soon\"\n", "--heartbeat-ms"),
        ("id = 1\nheartbeat-ms = [1.5]\n", "heartbeat-ms: expected"),
        ("id = = 1\n", "not valid TOML"),
    ] {
        std::fs::write(&file, contents)?;
        let mut command = ledgerd_command()?;
        command
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(work.path().join("bad"));
        let (code, stderr) = run_to_exit(&mut command).await?;
        ensure!(code == Some(2), "{contents:?}: exit {code:?}, {stderr}");
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(expected),
            "{contents:?}: stderr {stderr:?} lacks {expected:?}"
        );
    }

    // A good file, overridden by the environment, overridden by a flag.
    std::fs::write(
        &file,
        format!(
            "id = 1\ndata-dir = {:?}\nhttp_addr = \"{http_file}\"\ngrpc-addr = \"{grpc}\"\nbootstrap = true\nsnapshot-logs = 777\n",
            work.path().join("n1").display().to_string()
        ),
    )?;
    for (env, flag, expected) in [
        (None, None, http_file),
        (Some(http_env), None, http_env),
        (Some(http_env), Some(http_flag), http_flag),
    ] {
        let mut command = ledgerd_command()?;
        command.arg("--config").arg(&file);
        if let Some(addr) = env {
            command.env("LEDGER_HTTP_ADDR", addr.to_string());
        }
        if let Some(addr) = flag {
            command.arg("--http-addr").arg(addr.to_string());
        }
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn()?;
        let url = format!("http://{expected}/api/v1/node");
        let answered = wait_for(
            CONDITION_TIMEOUT,
            &format!("env {env:?}, flag {flag:?}: an answer on {expected}"),
            async || {
                let response = reqwest::get(&url).await?;
                ensure!(response.status() == 200, "{}", response.status());
                Ok(response.json::<Value>().await?)
            },
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let answered = answered?;
        ensure!(answered["id"] == 1, "answer {answered}");
    }
    Ok(())
}
