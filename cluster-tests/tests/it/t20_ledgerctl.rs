//! Goal: `ledgerctl`, the operators' command line (issue 7), drives a real cluster end to end,
//! and its exit codes are the documented ones.
//!
//! Method: 3 nodes. Everything goes through the real `ledgerctl` binary as a process, with the
//! node URLs and the admin key in a config file whose first URL is dead (so every command also
//! fails over). Create an operator, a key and two agents; import a JSONL file of 10,000 good
//! lines plus three bad ones (not JSON, no event type, an unknown agent), killing the import
//! with SIGKILL once 2,000 events are in; run it again: it counts what the killed run recorded
//! as already recorded, records the rest, and names the three lines by number (exit 1); run it
//! a third time: nothing is recorded twice (the ledger grows by exactly 10,000 in all). Query each agent with `--all`
//! as JSON and one page as a table: the totals match what was imported. Export a bundle and
//! verify it offline. Add a node, remove another, transfer leadership to a chosen voter, each
//! checked through `cluster status` (leadership moves three times in a row); a transfer to a
//! killed node fails (exit 5) and leaves
//! the leader in place, taking writes. Exit codes: 4 for a wrong key, 3 for a missing agent, 2
//! with no URL, 5 when no node can be reached.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use cluster_tests::{Cluster, Consistency, ledgerctl_bin, slow_test, wait_for};
use serde_json::Value;

use crate::CONDITION_TIMEOUT;

/// Events in the import file.
const IMPORT_EVENTS: u64 = 10_000;
/// The first import is killed once the ledger holds at least this many of its events.
const INTERRUPT_AFTER_EVENTS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgerctl_end_to_end() {
    let Some(guard) = slow_test("t20_ledgerctl") else {
        return;
    };
    guard.run(scenario()).await;
}

struct Ctl {
    config: std::path::PathBuf,
}

impl Ctl {
    /// Runs `ledgerctl args…` with the config file and nothing from the environment.
    async fn run(&self, args: &[&str]) -> Result<Output> {
        let mut command = tokio::process::Command::new(ledgerctl_bin()?);
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("LEDGER_URL")
            .env_remove("LEDGER_API_KEY")
            .env_remove("LEDGERCTL_CONFIG");
        command
            .output()
            .await
            .with_context(|| format!("running ledgerctl {args:?}"))
    }

    /// Runs it and expects exit code `code`; returns stdout.
    async fn expect(&self, code: i32, args: &[&str]) -> Result<String> {
        let output = self.run(args).await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        ensure!(
            output.status.code() == Some(code),
            "ledgerctl {args:?} exited {:?}, expected {code}\nstdout: {stdout}\nstderr: {stderr}",
            output.status.code()
        );
        Ok(stdout)
    }

    async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let stdout = self.expect(0, &all).await?;
        serde_json::from_str(&stdout).with_context(|| format!("{args:?}: not JSON: {stdout}"))
    }
}

fn write_config(path: &Path, urls: &[String], key: &str) -> Result<()> {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    std::fs::write(
        path,
        format!("urls = [{}]\nkey = \"{key}\"\n", list.join(", ")),
    )?;
    Ok(())
}

fn text<'a>(value: &'a Value, field: &str) -> Result<&'a str> {
    value[field]
        .as_str()
        .with_context(|| format!("{field} missing in {value}"))
}

/// A URL where nothing listens.
fn dead_url() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}"))
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let admin = cluster.admin_key()?;
    let root = cluster.root().to_path_buf();
    let mut urls = vec![dead_url()?];
    for id in cluster.node_ids() {
        urls.push(format!("http://{}", cluster.http_addr(id)?));
    }
    let config = root.join("ledgerctl.toml");
    write_config(&config, &urls, &admin)?;
    let ctl = Ctl { config };

    // Management: an operator, its key, two agents owned by it.
    let operator = ctl.json(&["operators", "create", "--name", "t20"]).await?;
    let operator_id = text(&operator, "id")?.to_owned();
    let fetched = ctl.json(&["operators", "get", &operator_id]).await?;
    ensure!(fetched["name"] == "t20", "operators get: {fetched}");
    let key = ctl
        .json(&[
            "keys",
            "create",
            "--operator-id",
            &operator_id,
            "--name",
            "importer",
            "--permission",
            "write,read",
        ])
        .await?;
    let operator_key = text(&key, "key")?.to_owned();
    let mut asns = Vec::new();
    for name in ["scanner", "crawler"] {
        let agent = ctl
            .json(&[
                "agents",
                "create",
                "--name",
                name,
                "--owner-id",
                &operator_id,
            ])
            .await?;
        asns.push(text(&agent, "asn")?.to_owned());
    }
    let unknown = crate::support::unknown_asn(&api, &asns[0]).await?;

    // The import file: 10,000 good lines over both agents, and three bad ones.
    let mut jsonl = String::new();
    let mut bad_lines = Vec::new();
    let mut line = 0u64;
    for n in 0..IMPORT_EVENTS {
        let asn = &asns[(n % 2) as usize];
        let event_type = if n % 4 < 2 {
            "task_completed"
        } else {
            "task_failed"
        };
        writeln!(
            jsonl,
            r#"{{"asn":"{asn}","event_type":"{event_type}","metadata":{{"n":{n}}}}}"#
        )?;
        line += 1;
        if n == 10 {
            jsonl.push_str("not json\n");
            line += 1;
            bad_lines.push(line);
        } else if n == 4_321 {
            writeln!(jsonl, r#"{{"asn":"{asn}","severity":"error"}}"#)?;
            line += 1;
            bad_lines.push(line);
        } else if n == 7_777 {
            writeln!(jsonl, r#"{{"asn":"{unknown}","event_type":"startup"}}"#)?;
            line += 1;
            bad_lines.push(line);
        }
    }
    let file = root.join("events.jsonl");
    std::fs::write(&file, &jsonl)?;
    let file_arg = file.display().to_string();
    let size_before = api.head(1, Consistency::Linearizable).await?.size;

    // Exit 1: three lines were rejected.
    let import_args = [
        "--key",
        &operator_key,
        "import",
        &file_arg,
        "--output",
        "json",
    ];
    let import = async || -> Result<Value> {
        let stdout = ctl.expect(1, &import_args).await?;
        serde_json::from_str(&stdout).with_context(|| format!("import summary: {stdout}"))
    };
    // Interrupted: killed (SIGKILL) once at least `INTERRUPT_AFTER_EVENTS` are in the ledger.
    let mut child = tokio::process::Command::new(ledgerctl_bin()?)
        .arg("--config")
        .arg(&ctl.config)
        .args(import_args)
        .env_remove("LEDGER_URL")
        .env_remove("LEDGER_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let interrupted_at = wait_for(
        CONDITION_TIMEOUT,
        "the first import to get going",
        async || {
            let size = api.head(1, Consistency::Local).await?.size;
            ensure!(
                size >= size_before + INTERRUPT_AFTER_EVENTS,
                "{size} events"
            );
            Ok(size - size_before)
        },
    )
    .await?;
    ensure!(
        child.try_wait()?.is_none(),
        "the import finished before it could be interrupted"
    );
    child.kill().await?;
    eprintln!("t20: import killed after at least {interrupted_at} events");

    let started = std::time::Instant::now();
    let first = import().await?;
    eprintln!(
        "t20: resumed import in {:.1} s: {first}",
        started.elapsed().as_secs_f64()
    );
    let second = import().await?;
    eprintln!("t20: second import: {second}");
    ensure!(
        second["events_recorded"] == 0 && second["already_recorded"] == IMPORT_EVENTS,
        "the second import recorded something again: {second}"
    );
    let size_after = api.head(1, Consistency::Linearizable).await?.size;
    ensure!(
        size_after == size_before + IMPORT_EVENTS,
        "the ledger grew from {size_before} to {size_after}, expected exactly {IMPORT_EVENTS}"
    );

    // Queries: every page as JSON, one page as a table, with and without a type filter.
    for asn in &asns {
        let all = ctl
            .json(&["--key", &operator_key, "activity", asn, "--all"])
            .await?;
        let data = all["data"].as_array().context("data")?;
        let mut seqs: Vec<u64> = data.iter().filter_map(|e| e["seq"].as_u64()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        ensure!(
            all["total"] == IMPORT_EVENTS / 2 && seqs.len() as u64 == IMPORT_EVENTS / 2,
            "{asn}: --all gave {} distinct events, total {}",
            seqs.len(),
            all["total"]
        );
        let failed = ctl
            .json(&[
                "--key",
                &operator_key,
                "activity",
                asn,
                "--type",
                "task_failed",
                "--per-page",
                "7",
            ])
            .await?;
        ensure!(
            failed["pagination"]["total"] == IMPORT_EVENTS / 4
                && failed["data"].as_array().map(Vec::len) == Some(7),
            "{asn} --type task_failed: {}",
            failed["pagination"]
        );
        let table = ctl
            .expect(
                0,
                &[
                    "--key",
                    &operator_key,
                    "activity",
                    asn,
                    "--per-page",
                    "5",
                    "--page",
                    "2",
                ],
            )
            .await?;
        let rows = table.lines().filter(|l| l.contains("task_")).count();
        ensure!(
            rows == 5 && table.contains(&format!("total {}", IMPORT_EVENTS / 2)),
            "{asn} as a table:\n{table}"
        );
    }

    // Export a bundle and verify it offline.
    let bundle = root.join("bundle.json");
    let bundle_arg = bundle.display().to_string();
    let out = ctl.expect(0, &["export", "--output", &bundle_arg]).await?;
    ensure!(out.contains("exported"), "export: {out}");
    let out = ctl.expect(0, &["verify", "bundle", &bundle_arg]).await?;
    ensure!(
        out.contains(&format!("bundle verified: {size_after} events")),
        "verify bundle: {out}"
    );

    // Cluster: add node 4, remove a follower, transfer leadership.
    let new_id = cluster.spawn_new_node()?;
    cluster.wait_live(new_id).await?;
    let (grpc, http) = (cluster.grpc_addr(new_id)?, cluster.http_addr(new_id)?);
    let added = ctl
        .json(&[
            "cluster",
            "add-node",
            "--id",
            &new_id.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
        ])
        .await?;
    ensure!(
        added["voters"]
            .as_array()
            .is_some_and(|v| v.contains(&new_id.into())),
        "add-node: {added}"
    );
    api.route(new_id, true);
    cluster.wait_ready(new_id).await?;
    let status = ctl.json(&["cluster", "status"]).await?;
    let leader = status["leader_id"].as_u64().context("no leader")?;
    let removed = [2, 3, 1]
        .into_iter()
        .find(|id| *id != leader)
        .context("no follower")?;
    api.route(removed, false);
    let out = ctl
        .json(&["cluster", "remove-node", &removed.to_string()])
        .await?;
    ensure!(out["removed"] == removed, "remove-node: {out}");
    // A removed node keeps running with its last view of the cluster; an operator stops it.
    cluster.kill(removed)?;
    let mut voters: Vec<u64> = vec![1, 2, 3, 4];
    voters.retain(|id| *id != removed);
    let target = voters
        .iter()
        .copied()
        .find(|id| *id != leader)
        .context("no other voter")?;
    let table = ctl.expect(0, &["cluster", "status"]).await?;
    ensure!(
        table.contains(&format!("leader {leader}")),
        "cluster status:\n{table}"
    );
    // There and back and there again: the first from a leader of long standing (it grants the
    // target's vote at once), the next two from a leader of less than a lease (it refuses the
    // vote and steps down at its next heartbeat).
    for (from, to) in [(leader, target), (target, leader), (leader, target)] {
        let started = std::time::Instant::now();
        let moved = ctl
            .json(&["cluster", "transfer-leader", "--to", &to.to_string()])
            .await?;
        eprintln!(
            "t20: leadership {from} -> {to} in {:.2} s: {moved}",
            started.elapsed().as_secs_f64()
        );
        ensure!(
            moved["leader_id"] == to && moved["previous_leader_id"] == from,
            "transfer-leader: {moved}"
        );
    }
    wait_for(
        CONDITION_TIMEOUT,
        "every voter to follow the new leader",
        async || {
            let status = ctl.json(&["cluster", "status"]).await?;
            let mut members: Vec<u64> = status["voters"]
                .as_array()
                .context("voters")?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            members.sort_unstable();
            ensure!(members == voters, "voters {members:?}, expected {voters:?}");
            ensure!(
                status["leader_id"] == target,
                "leader {}",
                status["leader_id"]
            );
            Ok(())
        },
    )
    .await?;
    // The cluster still takes writes under its new leader.
    let event = ctl
        .json(&[
            "--key",
            &operator_key,
            "report",
            "--asn",
            &asns[0],
            "--event-type",
            "shutdown",
            "--metadata",
            r#"{"after":"transfer"}"#,
        ])
        .await?;
    ensure!(
        event["seq"] == size_after + 1,
        "report after the transfer: {event}"
    );
    // Transferring to a node that is not a member: 404 → exit 3; to node 0: 400 → exit 1;
    // with an operator's key: 403 → exit 4.
    ctl.expect(
        3,
        &["cluster", "transfer-leader", "--to", &removed.to_string()],
    )
    .await?;
    let zero = ctl
        .run(&["cluster", "transfer-leader", "--to", "0"])
        .await?;
    let stderr = String::from_utf8_lossy(&zero.stderr);
    ensure!(
        zero.status.code() == Some(1)
            && stderr.contains("400 VALIDATION_ERROR")
            && stderr.contains("node_id"),
        "transfer-leader --to 0: {:?} {stderr}",
        zero.status.code()
    );
    ctl.expect(
        4,
        &[
            "--key",
            &operator_key,
            "cluster",
            "transfer-leader",
            "--to",
            &leader.to_string(),
        ],
    )
    .await?;
    // A target that cannot be asked to campaign (killed): 503 → exit 5; the leader stays
    // and takes writes again. (The two others are still a majority.)
    let down = voters
        .iter()
        .copied()
        .find(|id| *id != target)
        .context("no follower")?;
    cluster.kill(down)?;
    ctl.expect(
        5,
        &["cluster", "transfer-leader", "--to", &down.to_string()],
    )
    .await?;
    let status = ctl.json(&["cluster", "status"]).await?;
    ensure!(status["leader_id"] == target, "the leader moved: {status}");
    let event = ctl
        .json(&[
            "--key",
            &operator_key,
            "report",
            "--asn",
            &asns[1],
            "--event-type",
            "startup",
        ])
        .await?;
    ensure!(
        event["seq"] == size_after + 2,
        "report after the failed transfer: {event}"
    );

    // Exit codes.
    let wrong_key = format!("asn_live_{}{}", "0".repeat(16), "1".repeat(48));
    ctl.expect(4, &["--key", &wrong_key, "operators", "get", &operator_id])
        .await?;
    ctl.expect(
        4,
        &["--key", &operator_key, "operators", "get", &operator_id],
    )
    .await?;
    let stdout = ctl
        .expect(4, &["--key", &wrong_key, "import", &file_arg])
        .await?;
    ensure!(
        stdout.contains("stopped: at line") && stdout.contains("401"),
        "an import with a wrong key:\n{stdout}"
    );
    ctl.expect(3, &["agents", "get", &unknown]).await?;
    ctl.expect(3, &["--key", &operator_key, "activity", &unknown])
        .await?;
    let no_config = root.join("empty.toml");
    std::fs::write(&no_config, "")?;
    let bare = Ctl { config: no_config };
    bare.expect(2, &["cluster", "status"]).await?;
    let dead = dead_url()?;
    bare.expect(5, &["--url", &dead, "cluster", "status"])
        .await?;
    ctl.expect(2, &["import"]).await?;

    cluster.finish();
    Ok(())
}
