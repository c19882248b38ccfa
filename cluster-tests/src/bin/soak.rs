//! `soak`: a seeded random mix of faults against a fresh 3-node cluster of real `ledgerd`
//! processes, then every check of the reliability guide; prints the fault schedule, a summary
//! and the headline line. Exit code 0 when every invariant held, 1 when one did not, 2 when the
//! run could not be carried out. Run it through `scripts/soak.sh DURATION`.

use std::time::Duration;

use clap::Parser;
use cluster_tests::soak::{SoakOptions, run};

#[derive(Parser, Debug)]
#[command(about = "Seeded fault soak of a 3-node ledgerd cluster")]
struct Args {
    /// Length of the fault phase, e.g. `30m`, `90s`, `1h`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (default: `$SEED`, else the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 6)]
    writers: usize,
    /// Length of the baseline and of the clean phase, in seconds.
    #[arg(long, default_value_t = 20)]
    clean_phase_secs: u64,
    /// Most node replacements (each takes a fresh node id).
    #[arg(long, default_value_t = 8)]
    replacements_max: u64,
    /// `--snapshot-logs` of every node (default: ledgerd's): small values build snapshots,
    /// copied while applies go on, and install them on replaced nodes all through the run.
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// Writers send no `Idempotency-Key` and do not resend: every retry is the cluster's own
    /// (forwarded batches sent again, deduplicated by generated keys), so any operation found
    /// twice is a duplicate the cluster made.
    #[arg(long)]
    without_idempotency_key: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number followed by s, m or h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let seed = match args.seed {
        Some(seed) => seed,
        None => match cluster_tests::seed::seed() {
            Ok(seed) => seed,
            Err(error) => {
                eprintln!("soak: error: {error:#}");
                std::process::exit(2);
            }
        },
    };
    eprintln!(
        "soak: seed {seed} (replay with --seed {seed}), {} s of faults",
        args.duration.as_secs()
    );
    let options = SoakOptions {
        writers: args.writers,
        clean_phase: Duration::from_secs(args.clean_phase_secs),
        replacements_max: args.replacements_max,
        snapshot_logs: args.snapshot_logs,
        idempotency_key: !args.without_idempotency_key,
        ..SoakOptions::new(args.duration, seed)
    };
    match run(options).await {
        Ok(report) => {
            if !report.state_violations.is_empty() {
                eprintln!("soak: node-state regressions:");
                for line in report.state_violations.iter().take(20) {
                    eprintln!("  {line}");
                }
            }
            println!("{}", report.headline());
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Err(error) => {
            eprintln!("soak: error: {error:#}");
            eprintln!("soak: replay with --seed {seed}");
            std::process::exit(2);
        }
    }
}
