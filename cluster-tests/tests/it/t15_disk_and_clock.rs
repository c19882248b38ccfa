//! Goal: a disk that fails `fdatasync` stops its node instead of being retried or ignored, and
//! a wall clock that jumps changes no event order (guide S13, S15; invariants I1-I7).
//!
//! Method: 3 nodes; 4 writers round-robin over the live nodes, every acknowledgement followed by
//! a default read on another node. Each scenario is seeded (`SEED=` replays it) and prints its
//! fault schedule.
//!
//! - `fsync_eio_follower` / `fsync_eio_leader` (S13): one node runs under
//!   `strace -f --seccomp-bpf -qq -o /dev/null -e trace=fdatasync -e inject=fdatasync:error=EIO:when=N+`,
//!   so every `fdatasync` from the N-th on fails with EIO (ledgerd makes its Raft log durable
//!   with `fdatasync` of the log's segment files, and its state machine with `fdatasync` of
//!   sled's data file). N is drawn from the seed, large enough for the node
//!   to join and apply the fixture first. Under load, the node must exit by itself with code 70
//!   and a log line naming the I/O error; the other two keep acknowledging appends (a new
//!   leader takes over when the faulty node led) and hold every acknowledged append exactly
//!   once. The node then restarts without strace, catches up, and all three converge.
//! - `clock_jumps` (S15): every node runs with libfaketime preloaded, reading its offset from
//!   one file (`FAKETIME_TIMESTAMP_FILE`, re-read at most every second; monotonic clocks are
//!   left alone, as an NTP step leaves them). Under load the file is rewritten: `+0`, a jump
//!   back by hours, `+0`, a jump forward by minutes, `+0`. Appends keep being acknowledged,
//!   `created_at` never decreases in `seq` order on any node, and the usual checks pass.
//!
//! Needs `strace` and `faketime` (Debian packages of the same names).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::seed::Rng;
use cluster_tests::{Cluster, Options, Workload, check, slow_test, time, wait_for};

use crate::CONDITION_TIMEOUT;

const WRITERS: usize = 4;
const NODES: [u64; 3] = [1, 2, 3];
/// `--write-deadline-ms` (and the read deadline): short, so requests to a node that stopped
/// are answered within the scenario.
const WRITE_DEADLINE_MS: u64 = 3_000;
/// ledgerd's exit code for a storage failure (openraft `Fatal`), `EX_SOFTWARE`.
const EXIT_STORAGE: i32 = 70;
/// Range of successful `fdatasync` calls before the injected failures begin (drawn per seed).
/// A node makes about 25 while the cluster forms and the fixture is applied (measured: with 50,
/// node 1 still led 25 appends under load before it failed); under the 4 writers each node
/// makes 50-150 per second.
const FSYNC_OK_MIN: u64 = 100;
const FSYNC_OK_MAX: u64 = 300;
/// How long the faulty node may keep running once the writers start.
const FAIL_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often libfaketime re-reads the offset file, in seconds.
const FAKETIME_CACHE_S: u64 = 1;

fn options(wrappers: BTreeMap<u64, Vec<String>>) -> Options {
    Options {
        extra_args: vec![
            "--write-deadline-ms".to_string(),
            WRITE_DEADLINE_MS.to_string(),
        ],
        wrappers,
        ..Options::default()
    }
}

/// The strace prefix that fails every `fdatasync` from the `ok_calls + 1`-th on with EIO.
fn strace_eio(ok_calls: u64) -> Vec<String> {
    [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync",
        "-e",
    ]
    .iter()
    .map(|part| part.to_string())
    .chain([format!("inject=fdatasync:error=EIO:when={}+", ok_calls + 1)])
    .collect()
}

fn require_tool(tool: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    ensure!(
        found,
        "`{tool}` is not installed (Debian package `{package}`: apt-get install -y {package})"
    );
    Ok(())
}

/// The text node `id`'s log gained since `from` bytes.
fn log_since(cluster: &Cluster, id: u64, from: usize) -> Result<String> {
    let path = cluster.data_dir(id)?.join("ledgerd.log");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned())
}

fn log_len(cluster: &Cluster, id: u64) -> Result<usize> {
    let path = cluster.data_dir(id)?.join("ledgerd.log");
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_follower() {
    let Some(guard) = slow_test("t15_disk_and_clock::fsync_eio_follower") else {
        return;
    };
    guard
        .run_seeded(|seed| fsync_eio("fsync_eio_follower", seed, false))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_leader() {
    let Some(guard) = slow_test("t15_disk_and_clock::fsync_eio_leader") else {
        return;
    };
    guard
        .run_seeded(|seed| fsync_eio("fsync_eio_leader", seed, true))
        .await;
}

async fn fsync_eio(name: &str, seed: u64, leader: bool) -> Result<()> {
    require_tool("strace", "strace")?;
    let mut rng = Rng(seed);
    // Node 1 bootstraps and leads until something happens to it; 2 and 3 follow.
    let faulty = if leader { 1 } else { rng.between(2, 3) };
    let ok_calls = rng.between(FSYNC_OK_MIN, FSYNC_OK_MAX);
    let wrapper = strace_eio(ok_calls);
    let healthy: Vec<u64> = NODES.into_iter().filter(|id| *id != faulty).collect();
    let mut cluster =
        Cluster::start_with(3, options(BTreeMap::from([(faulty, wrapper.clone())]))).await?;
    let api = cluster.api();
    cluster.log_fault(&format!(
        "node {faulty} runs under `{}`: fdatasync fails with EIO after {ok_calls} successful calls",
        wrapper.join(" ")
    ));
    let leader_before = api.leader_id(CONDITION_TIMEOUT).await?;
    ensure!(
        (leader_before == faulty) == leader,
        "node {leader_before} leads; the scenario needs node {faulty} to {}",
        if leader { "lead" } else { "follow" }
    );
    let log_from = log_len(&cluster, faulty)?;

    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    let status = cluster.wait_exit(faulty, FAIL_STOP_TIMEOUT).await?;
    let exited_at = Instant::now();
    cluster.log_fault(&format!(
        "node {faulty} exited by itself with {status} after {:.1} s of load ({} acks so far)",
        started.elapsed().as_secs_f64(),
        workload.acked()
    ));
    let log = log_since(&cluster, faulty, log_from)?;
    ensure!(
        status.code() == Some(EXIT_STORAGE),
        "node {faulty} exited with {status}, expected code {EXIT_STORAGE} (storage failure); log:\n{}",
        cluster.log_tail(faulty, 30)
    );
    let lower = log.to_lowercase();
    ensure!(
        lower.contains("input/output error") || lower.contains("os error 5"),
        "node {faulty}'s log does not name the I/O error (EIO); log tail:\n{}",
        cluster.log_tail(faulty, 30)
    );

    if leader {
        let new_leader = wait_for(CONDITION_TIMEOUT, "a new leader", async || {
            let leader = api.agreed_leader().await?;
            ensure!(leader != faulty, "node {leader} still leads");
            Ok(leader)
        })
        .await?;
        cluster.log_fault(&format!(
            "node {new_leader} leads {:.1} s after node {faulty} stopped",
            exited_at.elapsed().as_secs_f64()
        ));
    }
    workload
        .wait_acked_after(exited_at, 30, CONDITION_TIMEOUT)
        .await?;
    let history = workload.stop().await?;
    eprintln!("{name}: {}", history.summary());

    // The two healthy nodes: every acknowledged append exactly once, one log.
    check::converged_history(&api, &healthy, &history, CONDITION_TIMEOUT).await?;

    // The faulty node, on a sound disk again, catches up and loses nothing.
    cluster.set_wrapper(faulty, None);
    cluster.log_fault(&format!("restart node {faulty} without strace"));
    cluster.restart(faulty)?;
    cluster.wait_ready(faulty).await?;
    let (head, _) = check::converged_history(&api, &NODES, &history, CONDITION_TIMEOUT).await?;
    eprintln!(
        "{name}: all 3 nodes converged on {} events; checks passed; fault schedule:\n{}",
        head.size,
        cluster.fault_schedule().join("\n")
    );
    cluster.finish();
    Ok(())
}

/// libfaketime's multi-threaded library: `$LIBFAKETIME`, else the Debian location.
pub(crate) fn libfaketime() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LIBFAKETIME") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = Vec::new();
    for lib in ["/usr/lib", "/usr/local/lib", "/usr/lib64"] {
        let Ok(entries) = std::fs::read_dir(lib) else {
            continue;
        };
        candidates.push(PathBuf::from(lib).join("faketime/libfaketimeMT.so.1"));
        for entry in entries.flatten() {
            candidates.push(entry.path().join("faketime/libfaketimeMT.so.1"));
        }
    }
    candidates.into_iter().find(|path| path.is_file()).context(
        "libfaketimeMT.so.1 not found (Debian package `faketime`: apt-get install -y \
             faketime; or set LIBFAKETIME=/path/to/libfaketimeMT.so.1)",
    )
}

/// `env` with libfaketime preloaded, reading its offset from `file`.
pub(crate) fn faketime_env(library: &Path, file: &Path) -> Vec<String> {
    vec![
        "env".to_string(),
        format!("LD_PRELOAD={}", library.display()),
        format!("FAKETIME_TIMESTAMP_FILE={}", file.display()),
        format!("FAKETIME_CACHE_DURATION={FAKETIME_CACHE_S}"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
    ]
}

pub(crate) fn set_offset(cluster: &Cluster, file: &Path, offset: &str) -> Result<()> {
    // Written whole and renamed, so no node reads a half-written offset.
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, format!("{offset}\n"))
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, file).with_context(|| format!("renaming to {}", file.display()))?;
    cluster.log_fault(&format!("every node's wall clock offset := {offset}"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps() {
    let Some(guard) = slow_test("t15_disk_and_clock::clock_jumps") else {
        return;
    };
    guard.run_seeded(clock_jumps_scenario).await;
}

async fn clock_jumps_scenario(seed: u64) -> Result<()> {
    let name = "clock_jumps";
    let library = libfaketime()?;
    let mut rng = Rng(seed);
    let back_h = rng.between(1, 3);
    let forward_min = rng.between(5, 20);
    let steps = [
        format!("-{back_h}h"),
        "+0".to_string(),
        format!("+{forward_min}m"),
        "+0".to_string(),
    ];
    let clock_dir = tempfile::Builder::new()
        .prefix("ledger-t15-clock-")
        .tempdir()?;
    let file = clock_dir.path().join("offset");
    std::fs::write(&file, "+0\n")?;
    let wrapper = faketime_env(&library, &file);
    let wrappers = NODES.iter().map(|id| (*id, wrapper.clone())).collect();
    let mut cluster = Cluster::start_with(3, options(wrappers)).await?;
    let api = cluster.api();
    cluster.log_fault(&format!(
        "every node runs under `{} <ledgerd>`; offset +0; then {steps:?}",
        wrapper.join(" ")
    ));

    let started = Instant::now();
    let workload = Workload::start_checked(api.clone(), WRITERS, None, true);
    workload
        .wait_acked_after(started, 20, CONDITION_TIMEOUT)
        .await?;
    let mut forward_seen = false;
    for offset in &steps {
        set_offset(&cluster, &file, offset)?;
        let leader = api.leader_id(CONDITION_TIMEOUT).await?;
        eprintln!("{name}: node {leader} leads at offset {offset}");
        // Once every node re-read the file, appends must keep being acknowledged.
        let effective = Instant::now() + Duration::from_secs(FAKETIME_CACHE_S) * 2;
        workload
            .wait_acked_after(effective, 30, CONDITION_TIMEOUT)
            .await?;
        if offset.starts_with('-') {
            // The leader's clock is hours behind the last created_at: every append stamped now
            // is clamped to that one value (it would grow with a working clock).
            let history = workload.snapshot();
            let stamps: std::collections::BTreeSet<&str> = history
                .acked
                .iter()
                .filter(|ack| ack.invoked > effective)
                .map(|ack| ack.event.created_at.as_str())
                .collect();
            ensure!(
                stamps.len() == 1,
                "appends acknowledged at offset {offset} carry {} distinct created_at values \
                 (expected one, clamped): {stamps:?}",
                stamps.len()
            );
            eprintln!(
                "{name}: every append at offset {offset} has created_at {stamps:?} (clamped)"
            );
        }
        if offset.ends_with('m') {
            // The forward jump shows in created_at: proof the clock control works.
            let now = time::now_ms()?;
            let history = workload.snapshot();
            forward_seen = history.acked.iter().any(|ack| {
                ack.invoked > effective
                    && time::parse_ms(&ack.event.created_at)
                        .is_ok_and(|at| at >= now + (forward_min as i64 - 2) * 60_000)
            });
            ensure!(
                forward_seen,
                "no append acknowledged at offset {offset} has a created_at {forward_min} min \
                 ahead: is libfaketime ({}) in effect?",
                library.display()
            );
        }
    }
    ensure!(forward_seen, "the forward jump was never checked");
    cluster.check_running(1)?;
    cluster.check_running(2)?;
    cluster.check_running(3)?;
    let history = workload.stop().await?;
    eprintln!("{name}: {}", history.summary());

    let (head, _) = check::converged_history(&api, &NODES, &history, CONDITION_TIMEOUT).await?;
    let logs = check::local_logs(&api, &NODES).await?;
    for (node, events) in &logs {
        let mut previous: Option<(u64, i64, &str)> = None;
        for event in events {
            let at = time::parse_ms(&event.created_at)
                .with_context(|| format!("node {node}: created_at of seq {}", event.seq))?;
            if let Some((seq, before, text)) = previous
                && at < before
            {
                bail!(
                    "node {node}: created_at goes back from {text} (seq {seq}) to {} (seq {})",
                    event.created_at,
                    event.seq
                );
            }
            previous = Some((event.seq, at, event.created_at.as_str()));
        }
    }
    eprintln!(
        "{name}: all 3 nodes converged on {} events; created_at never decreases; checks \
         passed; fault schedule:\n{}",
        head.size,
        cluster.fault_schedule().join("\n")
    );
    cluster.finish();
    Ok(())
}
