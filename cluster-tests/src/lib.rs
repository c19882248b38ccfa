//! Harness for tier-3 tests: real `ledgerd` processes on 127.0.0.1, real sled, real gRPC and HTTP.
//!
//! - [`Cluster`] owns the child processes, their data directories (one temp dir per cluster) and
//!   their ports; it starts, kills, signals and restarts nodes and grows or shrinks membership.
//! - [`Api`] is a cheap, cloneable HTTP client for the ledgerd API, addressed by node id; every
//!   request shape lives in exactly one function there (`report`, `events`, `head`, ...).
//!   Once formed, every cluster gets a [`Fixture`]: one operator, its `write` key and a pool of
//!   agents (reports need a registered agent); scenarios report on [`Api::agent_asn`].
//! - [`Workload`] runs concurrent writers over the live nodes and records a [`History`] of every
//!   acknowledged, failed and unknown append.
//! - [`LinkProxy`] is a TCP proxy on one directed peer link (cut, heal, delay); a cluster
//!   started with `Options::proxied` puts one on every link.
//! - [`check`] holds the invariant checks run after a scenario (no lost acknowledged append,
//!   exactly once, one order, dense `seq`, intact `prev_hash` chain, no phantoms).
//!
//! Waiting is always by polling with a deadline ([`wait_for`]), never by a bare sleep.

mod api;
pub mod check;
mod cluster;
pub mod proxy;
pub mod seed;
pub mod soak;
pub mod time;
mod workload;

pub use api::{
    Activity, AddNodeResponse, Agent, Api, ApiError, ApiKey, Body, ClusterNode, ClusterView,
    Consistency, Event, EventsPage, Fixture, Head, NodeStatus, Operator, Pagination,
    RemoveNodeResponse,
};
pub use cluster::{Cluster, Options, free_addr, ledgerctl_bin, ledgerd_bin, ledgerd_command};
pub use proxy::LinkProxy;
pub use workload::{Ack, History, Workload, WorkloadOptions};

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Interval between two polls of a condition.
pub const POLL_INTERVAL_MS: u64 = 75;

/// Polls `condition` every [`POLL_INTERVAL_MS`] until it returns `Ok`, or fails once `timeout`
/// has passed, naming `what` and the last error the condition gave.
pub async fn wait_for<T, F>(timeout: Duration, what: &str, mut condition: F) -> Result<T>
where
    F: AsyncFnMut() -> Result<T>,
{
    let started = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        match condition().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                if started.elapsed() >= timeout {
                    bail!(
                        "timed out after {:.1} s ({attempts} attempts) waiting for {what}; \
                         last result: {error:#}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// True when `asn` has the documented format `ASN-YYYY-DDDD-DDDD-L`.
pub fn is_asn(asn: &str) -> bool {
    let bytes = asn.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    bytes.len() == 20
        && asn.starts_with("ASN-")
        && digits(4..8)
        && bytes[8] == b'-'
        && digits(9..13)
        && bytes[13] == b'-'
        && digits(14..18)
        && bytes[18] == b'-'
        && bytes[19].is_ascii_uppercase()
}

/// Guard returned by [`slow_test`]: prints the test's duration when it ends and, when the test
/// failed by panicking, the command that reruns it.
pub struct TestGuard {
    name: &'static str,
    started: Instant,
    seed: Option<u64>,
}

/// Tier-3 tests run by default: they are the tests that matter. `LEDGER_SKIP_CLUSTER_TESTS=1`
/// skips them for a quick inner loop (style guide, item 9). Returns `None` (and says so) when
/// they are skipped, so a test can return early.
pub fn slow_test(name: &'static str) -> Option<TestGuard> {
    if std::env::var("LEDGER_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        eprintln!("{name}: skipped (LEDGER_SKIP_CLUSTER_TESTS=1)");
        return None;
    }
    eprintln!("{name}: starting");
    Some(TestGuard {
        name,
        started: Instant::now(),
        seed: None,
    })
}

impl TestGuard {
    /// A seeded scenario: the reproduce command replays it with `SEED=seed`.
    pub fn with_seed(mut self, seed: u64) -> TestGuard {
        eprintln!("{}: seed {seed} (replay with SEED={seed})", self.name);
        self.seed = Some(seed);
        self
    }

    /// A seeded scenario: reads the seed (`$SEED`, else the clock), prints it with the way to
    /// replay it, and runs `scenario(seed)` as [`TestGuard::run`] does.
    pub async fn run_seeded<F>(self, scenario: impl FnOnce(u64) -> F)
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let seed = match crate::seed::seed() {
            Ok(seed) => seed,
            Err(error) => panic!("{}: {error:#}", self.name),
        };
        self.with_seed(seed).run(scenario(seed)).await;
    }

    /// The command that reruns only this test.
    pub fn reproduce_command(&self) -> String {
        let seed = self
            .seed
            .map(|seed| format!("SEED={seed} "))
            .unwrap_or_default();
        format!(
            "cargo build -p node && {seed}cargo test -p cluster-tests --test it -- {} --nocapture",
            self.name
        )
    }

    /// Runs a scenario; an error fails the test (by panicking while this guard is alive, so the
    /// failure is reported with the reproduce command).
    pub async fn run(self, scenario: impl std::future::Future<Output = Result<()>>) {
        if let Err(error) = scenario.await {
            panic!("{}: {error:#}", self.name);
        }
    }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        if std::thread::panicking() {
            eprintln!(
                "{}: FAILED after {secs:.1} s; reproduce with: {}",
                self.name,
                self.reproduce_command()
            );
        } else {
            eprintln!("{}: finished in {secs:.1} s", self.name);
        }
    }
}
