//! Goal: an event altered in a stopped node's files is found when the node starts again: the
//! node refuses to start and names the event's `seq`; the other nodes keep serving an intact,
//! identical chain and keep taking writes (reliability guide S14, issue 4 self-check).
//!
//! Method: 3 nodes; 20 events through all three nodes; SIGTERM a follower; open its sled store
//! with sled itself (so sled's own checksums stay valid, as a careful attacker or a bug in the
//! layer above would leave them) and change one byte of event 7's metadata; restart it; it must
//! exit with a message naming event 7; the two others serve the same verified chain and accept
//! a write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::seed::Rng;
use cluster_tests::{Cluster, Consistency, Workload, check, slow_test, wait_for};
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
    // The state machine's tree: events are in the key space tagged 1, in chunks keyed by the
    // seq of their first event (raft-store's ledger.rs): find the chunk holding event 7.
    let events = db.open_tree("sm")?;
    let tagged = |seq: u64| [&[1u8][..], &seq.to_be_bytes()].concat();
    let (key, value) = events
        .range(tagged(1)..=tagged(TAMPERED_SEQ))
        .next_back()
        .context("event 7 is not stored")??;
    let mut value = value.to_vec();
    let at = value
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .context("the marker is not in event 7's chunk")?;
    value[at] = if value[at] == b'm' { b'M' } else { b'm' };
    events.insert(key, value)?;
    db.flush()?;
    Ok(())
}

/// Damage trials of [`random_damage_is_detected_or_harmless`].
const DAMAGE_TRIALS: u64 = 8;

/// Goal (guide S14): random damage to a stopped node's files (a flipped bit anywhere, or the
/// tail of a file cut off) is either detected, so the node refuses to start with a message
/// that says its store is damaged, or harmless: the node serves the same chain as the others.
/// Never does a damaged node serve a different chain.
///
/// Method: 3 nodes, 300 appends; SIGTERM a follower and keep a copy of its `store/`. Each
/// trial (seeded): restore the copy, damage one file, start the node; it must either exit
/// within the deadline naming the damage, or become ready and converge on the others' head
/// with an intact chain. Then restore the copy once more and check all three logs against the
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_is_detected_or_harmless() {
    let Some(guard) = slow_test("t12_random_damage") else {
        return;
    };
    guard.run_seeded(damage_trials).await;
}

async fn damage_trials(seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let history = Workload::start(api.clone(), 4, Some(300)).join().await?;
    let head =
        check::converged(&api, &[1, 2, 3], history.max_acked_seq(), CONDITION_TIMEOUT).await?;
    let leader = api.leader_id(CONDITION_TIMEOUT).await?;
    let victim = (1..=3).find(|id| *id != leader).context("no follower")?;
    let status = cluster.terminate(victim).await?;
    ensure!(
        status.success(),
        "node {victim} did not stop cleanly: {status}"
    );
    let store = cluster.data_dir(victim)?.join("store");
    let pristine = cluster.root().join("pristine-store");
    copy_dir(&store, &pristine)?;

    let (mut detected, mut harmless) = (0, 0);
    for trial in 1..=DAMAGE_TRIALS {
        std::fs::remove_dir_all(&store)?;
        copy_dir(&pristine, &store)?;
        let damage = damage(&store, &mut rng)?;
        cluster.log_fault(&format!("t12: trial {trial}: {damage}"));
        cluster.restart(victim)?;
        let deadline = Instant::now() + CONDITION_TIMEOUT;
        let outcome = loop {
            if cluster.check_running(victim).is_err() {
                break "exited";
            }
            if api.readyz(victim).await.unwrap_or(false) {
                break "ready";
            }
            ensure!(
                Instant::now() < deadline,
                "trial {trial} ({damage}): node {victim} neither stopped nor became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if outcome == "exited" {
            let tail = cluster.log_tail(victim, 5);
            ensure!(
                tail.contains("damaged") || tail.contains("does not match"),
                "trial {trial} ({damage}): node {victim} stopped without naming the damage:\n{tail}"
            );
            detected += 1;
            eprintln!("t12: trial {trial}: {damage}: detected, the node refused to start");
        } else {
            let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
            let mut all = others.clone();
            all.push(victim);
            check::converged(&api, &all, head.size, CONDITION_TIMEOUT)
                .await
                .with_context(|| format!("trial {trial} ({damage}): the node started"))?;
            check::local_logs(&api, &all).await?;
            harmless += 1;
            eprintln!("t12: trial {trial}: {damage}: harmless, the node serves the same chain");
            cluster.terminate(victim).await?;
        }
    }
    eprintln!(
        "t12: {DAMAGE_TRIALS} damage trials: {detected} detected, {harmless} harmless, 0 undetected"
    );

    std::fs::remove_dir_all(&store)?;
    copy_dir(&pristine, &store)?;
    cluster.restart(victim)?;
    cluster.wait_ready(victim).await?;
    check::converged_history(&api, &[1, 2, 3], &history, CONDITION_TIMEOUT).await?;
    cluster.finish();
    Ok(())
}

/// Flips one bit of, or cuts the tail off, one file under `store` (chosen by `rng`); says what.
fn damage(store: &Path, rng: &mut Rng) -> Result<String> {
    let mut files = Vec::new();
    list_files(store, &mut files)?;
    files.retain(|file| {
        std::fs::metadata(file)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    });
    files.sort();
    ensure!(!files.is_empty(), "no files under {}", store.display());
    // The sled data file holds nearly everything: pick it most of the time.
    let file = match files.iter().find(|f| f.ends_with("sled/db")) {
        Some(db) if rng.between(0, 3) > 0 => db.clone(),
        _ => files[rng.between(0, files.len() as u64 - 1) as usize].clone(),
    };
    let mut bytes = std::fs::read(&file)?;
    let len = bytes.len() as u64;
    let name = file
        .strip_prefix(store)
        .unwrap_or(&file)
        .display()
        .to_string();
    if rng.between(0, 1) == 0 {
        let at = rng.between(0, len - 1);
        let bit = rng.between(0, 7);
        bytes[at as usize] ^= 1 << bit;
        std::fs::write(&file, &bytes)?;
        Ok(format!(
            "flipped bit {bit} of byte {at} of {name} ({len} bytes)"
        ))
    } else {
        let keep = rng.between(len / 2, len - 1);
        bytes.truncate(keep as usize);
        std::fs::write(&file, &bytes)?;
        Ok(format!("cut {name} from {len} to {keep} bytes"))
    }
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
