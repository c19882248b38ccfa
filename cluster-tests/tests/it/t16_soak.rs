//! Goal: the soak's fault mix at small scale (guide S19 quick profile): leader and follower
//! kills, leader isolation, one-way and flapping partitions, leader pauses, slow links and node
//! replacements under an idempotent write load lose, duplicate and reorder nothing, keep every
//! chain intact and every node's Raft state monotonic, and the cluster recovers after each heal.
//!
//! Method: `cluster_tests::soak::run` (the same code as `scripts/soak.sh`) for
//! `QUICK_FAULT_PHASE` with a seed from `SEED` or the clock; the report must pass and must
//! show at least one fault of several kinds.

use std::time::Duration;

use anyhow::{Result, ensure};
use cluster_tests::slow_test;
use cluster_tests::soak::{SoakOptions, run};

/// Long enough for one round of every fault kind (each takes 5-15 s with its recovery).
const QUICK_FAULT_PHASE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_quick_profile() {
    let Some(guard) = slow_test("t16_soak") else {
        return;
    };
    guard.run_seeded(scenario).await;
}

async fn scenario(seed: u64) -> Result<()> {
    let options = SoakOptions {
        clean_phase: Duration::from_secs(5),
        replacements_max: 2,
        ..SoakOptions::new(QUICK_FAULT_PHASE, seed)
    };
    let report = run(options).await?;
    eprintln!("t16: {}", report.headline());
    ensure!(
        report.passed(),
        "invariants broken: {:?}; node state: {:?}",
        report.violations,
        report.state_violations.iter().take(10).collect::<Vec<_>>()
    );
    ensure!(
        report.faults.len() >= 6,
        "only {:?} were injected",
        report.faults
    );
    ensure!(!report.history.acked.is_empty(), "nothing was acknowledged");
    Ok(())
}
