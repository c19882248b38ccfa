//! Goal: a full disk stops a node cleanly and loses nothing (guide S12): the node whose store
//! fills up exits (code 70, "No space left on device") instead of limping on; the others keep
//! acknowledging appends; once space is freed the node restarts, rejoins and converges. Shown
//! on a follower, then on the leader.
//!
//! Method: each node's `store/` is a tmpfs in a private mount namespace of its own (a holder
//! process `unshare -m` keeps it alive across restarts; the node runs under `nsenter` into it),
//! so it can be shrunk and grown with `mount -o remount,size=…`. Needs CAP_SYS_ADMIN (root);
//! without it the test says so and passes nothing off as checked. Under 4 idempotent writers:
//! shrink a follower's tmpfs to its use plus `HEADROOM_BYTES`, wait for it to exit, see writes
//! continue, grow it back, restart it; the same for the leader; then check every node's log
//! against the history (I1-I8).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, Options, Workload, WorkloadOptions, check, slow_test};

use crate::CONDITION_TIMEOUT;

/// Room left on a node's store when it is made to fill up.
const HEADROOM_BYTES: u64 = 4 << 20;
/// The tmpfs size while the disk is not full.
const ROOMY_SIZE: &str = "512m";
/// Time for a node to fill its headroom under the test's write load.
const FILL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a node with its `store/` on a tmpfs in a private mount namespace kept alive by a
/// holder process whose pid is in `<data-dir>.ns.pid`.
const WRAPPER: &str = r#"#!/bin/sh
set -e
dir=""
prev=""
for arg in "$@"; do
    if [ "$prev" = "--data-dir" ]; then dir="$arg"; fi
    prev="$arg"
done
[ -n "$dir" ] || { echo "tmpfs-wrapper: no --data-dir" >&2; exit 97; }
pidfile="$dir.ns.pid"
if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    mkdir -p "$dir/store"
    setsid unshare -m --propagation private sleep 3600 </dev/null >/dev/null 2>&1 &
    holder=$!
    i=0
    while [ "$(readlink /proc/$holder/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ]; do
        i=$((i + 1))
        [ "$i" -lt 500 ] || { echo "tmpfs-wrapper: no namespace" >&2; exit 97; }
        sleep 0.01
    done
    nsenter -t "$holder" -m mount -t tmpfs -o size=SIZE tmpfs "$dir/store"
    echo "$holder" >"$pidfile"
fi
exec nsenter -t "$(cat "$pidfile")" -m -- "$@"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_and_loses_nothing() {
    let Some(guard) = slow_test("t19_disk_full") else {
        return;
    };
    if let Err(why) = can_mount_tmpfs() {
        eprintln!("t19_disk_full: NOT RUN: a private tmpfs needs CAP_SYS_ADMIN: {why:#}");
        return;
    }
    guard.run(scenario()).await;
}

fn can_mount_tmpfs() -> Result<()> {
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt")
        .output()
        .context("running unshare")?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Kills the namespace holders (by pid) when the test ends, however it ends.
struct Holders(Vec<String>);

impl Drop for Holders {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
}

async fn scenario() -> Result<()> {
    let scripts = tempfile::tempdir()?;
    let wrapper = scripts.path().join("tmpfs-wrapper.sh");
    std::fs::write(&wrapper, WRAPPER.replace("SIZE", ROOMY_SIZE))?;
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()?;
    let wrapper = wrapper.display().to_string();
    let mut cluster = Cluster::start_with(
        3,
        Options {
            wrappers: (1..=3).map(|id| (id, vec![wrapper.clone()])).collect(),
            ..Options::default()
        },
    )
    .await?;
    let _holders = Holders(
        (1..=3)
            .map(|id| holder(&cluster.data_dir(id)?))
            .collect::<Result<_>>()?,
    );
    let api = cluster.api();
    let started = Instant::now();
    let workload = Workload::start_with(
        api.clone(),
        WorkloadOptions {
            writers: 4,
            idempotent_retries: true,
            ..WorkloadOptions::default()
        },
    );
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;

    for role in ["follower", "leader"] {
        let leader = api.leader_id(CONDITION_TIMEOUT).await?;
        let victim = if role == "leader" {
            leader
        } else {
            (1..=3).find(|id| *id != leader).context("no follower")?
        };
        let dir = cluster.data_dir(victim)?;
        let used = store_used_bytes(&dir)?;
        let cap = used + HEADROOM_BYTES;
        cluster.log_fault(&format!(
            "t19: shrink the store of the {role} {victim} to {cap} bytes ({used} used)"
        ));
        remount(&dir, &cap.to_string())?;
        let status = cluster.wait_exit(victim, FILL_TIMEOUT).await?;
        let stopped_at = Instant::now();
        let tail = cluster.log_tail(victim, 30);
        ensure!(
            status.code() == Some(70),
            "the {role} {victim} with a full disk exited with {status}, expected 70; log:\n{tail}"
        );
        ensure!(
            tail.contains("No space left on device"),
            "the {role} {victim} stopped without saying the disk is full:\n{tail}"
        );
        eprintln!("t19: the {role} {victim} stopped with a full disk ({status})");
        workload
            .wait_acked_after(stopped_at, 20, CONDITION_TIMEOUT)
            .await
            .with_context(|| format!("writes after the {role} {victim} stopped"))?;

        remount(&dir, ROOMY_SIZE)?;
        cluster.log_fault(&format!("t19: space freed; restart node {victim}"));
        cluster.restart(victim)?;
        cluster.wait_ready(victim).await?;
        let restarted_at = Instant::now();
        workload
            .wait_acked_after(restarted_at, 10, CONDITION_TIMEOUT)
            .await?;
    }

    let history = workload.stop().await?;
    eprintln!("t19: {}", history.summary());
    check::converged_history(&api, &[1, 2, 3], &history, CONDITION_TIMEOUT).await?;
    cluster.finish();
    Ok(())
}

fn pidfile(data_dir: &Path) -> Result<PathBuf> {
    let name = data_dir
        .file_name()
        .context("data dir without a name")?
        .to_string_lossy()
        .into_owned();
    Ok(data_dir.with_file_name(format!("{name}.ns.pid")))
}

fn holder(data_dir: &Path) -> Result<String> {
    let path = pidfile(data_dir)?;
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Bytes used on the node's store tmpfs, as its mount namespace sees it.
fn store_used_bytes(data_dir: &Path) -> Result<u64> {
    let store = data_dir.join("store");
    let output = Command::new("nsenter")
        .args(["-t", &holder(data_dir)?, "-m", "df", "-B1", "--output=used"])
        .arg(&store)
        .output()?;
    ensure!(
        output.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(used) = text.lines().nth(1).and_then(|l| l.trim().parse().ok()) else {
        bail!("unexpected df output: {text}");
    };
    Ok(used)
}

/// Resizes the node's store tmpfs.
fn remount(data_dir: &Path, size: &str) -> Result<()> {
    let store = data_dir.join("store");
    let status = Command::new("nsenter")
        .args(["-t", &holder(data_dir)?, "-m", "mount", "-o"])
        .arg(format!("remount,size={size}"))
        .arg(&store)
        .status()?;
    ensure!(status.success(), "remounting {} failed", store.display());
    Ok(())
}
