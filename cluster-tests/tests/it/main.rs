//! Tier-3 tests: real `ledgerd` processes on 127.0.0.1 (one integration-test binary).
//!
//! Each `tNN_*` module is one scenario; it starts its own cluster through the harness in the
//! `cluster_tests` library, runs a fault schedule, and checks the invariants of the reliability
//! guide (no lost acknowledged append, exactly once, one order, dense `seq`, intact chain).
//!
//! They run in `cargo test --workspace` (which builds `ledgerd` and `ledgerctl` first, because
//! `node` and `ledgerctl` have integration tests); `LEDGER_SKIP_CLUSTER_TESTS=1` skips them. One
//! test alone: `cargo build -p node && cargo test -p cluster-tests --test it -- t04 --nocapture`
//! (t13 and t20 also need `cargo build -p ledgerctl`).

mod t01_replication;
mod t02_kill_leader;
mod t03_restart_all_durability;
mod t04_snapshot_catch_up;
mod t05_membership;
mod t06_bad_config;
mod t07_admin_auth;
mod t08_pause_leader;
mod t09_events_api;
mod t10_authorization;
mod t11_availability;
mod t12_tampered_store;
mod t13_audit;
mod t14_partitions;
mod t15_disk_and_clock;
mod t16_soak;
mod t17_kill_loops;
mod t18_membership_under_load;
mod t19_disk_full;
mod t20_ledgerctl;
mod t21_trust_score;
mod t22_explorer;
mod t23_operations;
mod t24_lose_majority;
mod t25_commit_without_traffic;
mod t26_snapshot_stream_cut;
mod t27_snapshot_turns;

mod support;

use std::time::Duration;

/// Deadline for a condition that should hold within a few election timeouts.
pub const CONDITION_TIMEOUT: Duration = Duration::from_secs(30);
