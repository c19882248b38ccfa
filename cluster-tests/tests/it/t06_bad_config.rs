//! Goal: a node that cannot start says why in one line and exits with code 2, without a panic
//! or a backtrace: busy HTTP port, busy gRPC port, unusable data directory, data directory of
//! another cluster, data directory of another node id.
//!
//! Method: run `ledgerd` with each bad configuration and inspect its exit status and stderr.
//! Cluster A (one node) is bootstrapped and stopped to provide a foreign data directory; cluster
//! B (one node) is running while the cases execute.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, free_addr, ledgerd_command, slow_test};

/// How long a misconfigured node may take to give up.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_fail_in_one_line() {
    let Some(guard) = slow_test("t06_bad_config") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let work = tempfile::Builder::new().prefix("ledger-t06-").tempdir()?;

    // Cluster A: bootstrap node 1, stop it, keep its data directory.
    let a = Cluster::start(1).await?;
    let a_cluster_id = a
        .api()
        .node_status(1)
        .await?
        .cluster_id
        .context("cluster A reports no cluster id")?;
    let a_root = a.stop_and_keep_data(&work.path().join("a")).await?;
    let a_dir = a_root.join("n1");

    let b = Cluster::start(1).await?;
    let b_url = b.api().base_url(1)?;
    let b_cluster_id = b.api().node_status(1).await?.cluster_id;

    // (a) HTTP port already in use.
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let busy_addr = busy.local_addr()?;
    let line = expect_startup_error(
        "HTTP port in use",
        &node_args(
            1,
            &work.path().join("http"),
            &busy_addr.to_string(),
            None,
            true,
        )?,
    )
    .await?;
    ensure!(
        line.contains(&busy_addr.port().to_string()),
        "the HTTP-port error does not name the port {}: {line}",
        busy_addr.port()
    );

    // (b) gRPC port in use.
    let line = expect_startup_error(
        "gRPC port in use",
        &node_args(
            1,
            &work.path().join("grpc"),
            &free_addr()?.to_string(),
            Some(&busy_addr.to_string()),
            true,
        )?,
    )
    .await?;
    ensure!(
        line.contains(&busy_addr.port().to_string()),
        "the gRPC-port error does not name the port {}: {line}",
        busy_addr.port()
    );
    drop(busy);

    // (c) Unusable data directories: below a regular file, and a regular file itself.
    let afile = work.path().join("afile");
    std::fs::write(&afile, "not a directory\n")?;
    expect_startup_error(
        "data dir below a regular file",
        &node_args(
            1,
            &afile.join("data"),
            &free_addr()?.to_string(),
            None,
            true,
        )?,
    )
    .await?;
    expect_startup_error(
        "data dir is a regular file",
        &node_args(1, &afile, &free_addr()?.to_string(), None, true)?,
    )
    .await?;

    // (d) Data directory of cluster A joined to cluster B.
    let mut args = node_args(1, &a_dir, &free_addr()?.to_string(), None, false)?;
    args.extend(["--join".to_string(), b_url.clone()]);
    let line = expect_startup_error("data dir of another cluster", &args).await?;
    let lower = line.to_lowercase();
    let names_mismatch = lower.contains("mismatch")
        || lower.contains("differ")
        || lower.contains("another cluster")
        || line.contains(&a_cluster_id)
        || b_cluster_id.as_deref().is_some_and(|id| line.contains(id));
    ensure!(
        lower.contains("cluster") && names_mismatch,
        "the foreign-cluster error does not name the cluster id mismatch \
         (A = {a_cluster_id}, B = {b_cluster_id:?}): {line}"
    );

    // (e) Data directory created as node 1, started as node 2.
    let line = expect_startup_error(
        "data dir of another node id",
        &node_args(2, &a_dir, &free_addr()?.to_string(), None, false)?,
    )
    .await?;
    ensure!(
        line.to_lowercase().contains("id"),
        "the node-id error does not mention the id: {line}"
    );

    b.finish();
    Ok(())
}

fn node_args(
    id: u64,
    data_dir: &Path,
    http_addr: &str,
    grpc_addr: Option<&str>,
    bootstrap: bool,
) -> Result<Vec<String>> {
    let grpc_addr = match grpc_addr {
        Some(addr) => addr.to_string(),
        None => free_addr()?.to_string(),
    };
    let mut args = vec![
        "--id".to_string(),
        id.to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--http-addr".to_string(),
        http_addr.to_string(),
        "--grpc-addr".to_string(),
        grpc_addr,
    ];
    if bootstrap {
        args.push("--bootstrap".to_string());
    }
    Ok(args)
}

/// Runs ledgerd with `args`; it must exit with code 2 within [`EXIT_TIMEOUT`] and print exactly
/// one non-empty line on stderr, starting with `ledgerd: error:`, without a panic or backtrace.
/// Returns that line.
async fn expect_startup_error(case: &str, args: &[String]) -> Result<String> {
    let mut command = tokio::process::Command::from(ledgerd_command()?);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().context("spawning ledgerd")?;
    let output = match tokio::time::timeout(EXIT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.context("waiting for ledgerd")?,
        Err(_) => bail!(
            "{case}: ledgerd {} still runs after {EXIT_TIMEOUT:?}",
            args.join(" ")
        ),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "{case}: ledgerd {}\nexit: {}\nstderr:\n{stderr}\nstdout:\n{stdout}",
        args.join(" "),
        output.status
    );
    ensure!(
        output.status.code() == Some(2),
        "expected exit code 2; {context}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    ensure!(
        lines.len() == 1,
        "expected exactly one line on stderr; {context}"
    );
    let line = lines[0].to_string();
    ensure!(
        line.starts_with("ledgerd: error:"),
        "the stderr line does not start with `ledgerd: error:`; {context}"
    );
    let lower = stderr.to_lowercase();
    ensure!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "ledgerd panicked; {context}"
    );
    eprintln!("t06 {case}: {line}");
    Ok(line)
}
