//! `loadgen`: a closed-loop load generator for `POST /api/v1/activity/report` (or, with
//! `--batch N`, `POST /api/v1/activity/report/batch` with N events a request), and, with
//! `--target etcd`, for etcd's JSON gateway `POST /v3/kv/put`, so both are driven by the same
//! client in the same way.
//!
//! `--concurrency` workers each send one request, wait for the answer, and send the next,
//! round-robin over the `--url`s. Requests that start after the warm-up and finish before the
//! end of the run are measured: only 201 answers count toward `writes_per_s` and the latency
//! percentiles; every other answer is counted as an error by status (`transport` when there was
//! no HTTP answer). Prints one line of JSON, then one line for humans.
//!
//! Reports need registered agents: pass them with `--asn`, or give an admin `--key` and loadgen
//! registers `--asns` agents under a new operator before the run. etcd puts need neither: each
//! puts a fresh key with a `--value-bytes` value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop load generator for the ledger's report endpoint")]
struct Args {
    /// Base URL of a node (repeat for several; requests go round-robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// API key sent as `Authorization: Bearer <key>` (not used with `--target etcd`).
    #[arg(long, env = "LOADGEN_KEY", default_value = "")]
    key: String,
    /// What to load: `ledger` (reports) or `etcd` (puts through its JSON gateway).
    #[arg(long, default_value = "ledger", value_parser = ["ledger", "etcd"])]
    target: String,
    /// Ledger only: events per request through the batch endpoint (0: single reports).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// etcd only: bytes of each put's value.
    #[arg(long, default_value_t = 300)]
    value_bytes: usize,
    /// Concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up whose requests are not measured.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// An ASN to report on (repeat for several). Without any, loadgen first registers `--asns`
    /// agents under a new operator, which needs an admin `--key`.
    #[arg(long = "asn")]
    asn_list: Vec<String>,
    /// Number of agents to register when no `--asn` is given.
    #[arg(long, default_value_t = 100)]
    asns: u64,
    /// Approximate size of each report's metadata, in bytes.
    #[arg(long, default_value_t = 200)]
    metadata_bytes: usize,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Seed of the ASN choice (printed; defaults to the clock).
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.duration_secs == 0 {
        bail!("--concurrency and --duration-secs must be positive");
    }
    let etcd = args.target == "etcd";
    if !etcd && args.asn_list.is_empty() && args.asns == 0 {
        bail!("--asns must be positive when no --asn is given");
    }
    if !etcd && args.key.is_empty() {
        bail!("--key (or LOADGEN_KEY) is needed to load the ledger");
    }
    if args.batch > 1000 {
        bail!("--batch must be at most 1000 (the batch endpoint's limit)");
    }
    let events_per_request = if etcd { 1 } else { args.batch.max(1) };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1)
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.request_timeout_ms))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("building the HTTP client")?;
    let asns: Arc<Vec<String>> = Arc::new(if etcd {
        Vec::new()
    } else if args.asn_list.is_empty() {
        register_agents(&client, &args.urls[0], &args.key, args.asns).await?
    } else {
        args.asn_list.clone()
    });
    let path = if etcd {
        "/v3/kv/put"
    } else if args.batch > 0 {
        "/api/v1/activity/report/batch"
    } else {
        "/api/v1/activity/report"
    };
    let urls: Arc<Vec<String>> = Arc::new(
        args.urls
            .iter()
            .map(|url| format!("{}{path}", url.trim_end_matches('/')))
            .collect(),
    );
    let expected_status = if etcd { 200 } else { 201 };
    let value_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("v".repeat(args.value_bytes))
    };
    let batch = args.batch;
    let padding = "x".repeat(args.metadata_bytes.saturating_sub(40));
    let next_url = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup_secs);
    let measure_until = measure_from + Duration::from_secs(args.duration_secs);

    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let client = client.clone();
        let urls = urls.clone();
        let next_url = next_url.clone();
        let key = args.key.clone();
        let padding = padding.clone();
        let asns = asns.clone();
        let value_b64 = value_b64.clone();
        let mut rng = seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        workers.push(tokio::spawn(async move {
            let mut result = WorkerResult::default();
            let mut n: u64 = 0;
            loop {
                let sent = Instant::now();
                if sent >= measure_until {
                    return result;
                }
                let url = &urls[next_url.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let mut report = || {
                    let asn = &asns[(splitmix64(&mut rng) % asns.len() as u64) as usize];
                    n += 1;
                    json!({
                        "asn": asn,
                        "event_type": "task_completed",
                        "severity": "info",
                        "metadata": { "worker": worker, "n": n, "padding": padding },
                    })
                };
                let request = if etcd {
                    use base64::Engine;
                    n += 1;
                    let key = base64::engine::general_purpose::STANDARD
                        .encode(format!("loadgen/{seed}/{worker}/{n}"));
                    client
                        .post(url)
                        .json(&json!({ "key": key, "value": value_b64 }))
                } else if batch > 0 {
                    let events: Vec<_> = (0..batch).map(|_| report()).collect();
                    client
                        .post(url)
                        .bearer_auth(&key)
                        .json(&json!({ "events": events }))
                } else {
                    client.post(url).bearer_auth(&key).json(&report())
                };
                let outcome = request.send().await;
                let label = match outcome {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read the body so the connection can be reused.
                        let _ = response.bytes().await;
                        if status == expected_status {
                            None
                        } else {
                            Some(status.to_string())
                        }
                    }
                    Err(_) => Some("transport".to_string()),
                };
                let done = Instant::now();
                if sent < measure_from || done > measure_until {
                    continue;
                }
                match label {
                    None => result
                        .latencies_us
                        .push(done.duration_since(sent).as_micros() as u64),
                    Some(label) => {
                        *result.errors.entry(label).or_insert(0) += 1;
                        // Do not spin on fast failures.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }

    let mut latencies_us = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let result = worker.await.context("a worker panicked")?;
        latencies_us.extend(result.latencies_us);
        for (label, count) in result.errors {
            *errors.entry(label).or_insert(0) += count;
        }
    }
    latencies_us.sort_unstable();
    let ok = latencies_us.len() as u64;
    let error_count: u64 = errors.values().sum();
    let window_secs = args.duration_secs as f64;
    let writes_per_s = ok as f64 / window_secs;
    let events_per_s = writes_per_s * events_per_request as f64;
    let p50_ms = percentile_ms(&latencies_us, 0.50);
    let p99_ms = percentile_ms(&latencies_us, 0.99);
    let max_ms = latencies_us.last().map_or(0.0, |us| *us as f64 / 1000.0);
    let report = json!({
        "target": args.target,
        "writes_per_s": round2(writes_per_s),
        "events_per_request": events_per_request,
        "events_per_s": round2(events_per_s),
        "p50_ms": round2(p50_ms),
        "p99_ms": round2(p99_ms),
        "max_ms": round2(max_ms),
        "errors": error_count,
        "errors_by_status": errors,
        "ok": ok,
        "concurrency": args.concurrency,
        "duration_secs": args.duration_secs,
        "warmup_secs": args.warmup_secs,
        "metadata_bytes": args.metadata_bytes,
        "asns": asns.len(),
        "urls": args.urls,
        "seed": seed,
    });
    println!("{report}");
    println!(
        "loadgen: {} {writes_per_s:.1} requests/s ({events_per_s:.0} events/s), p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms, max \
         {max_ms:.2} ms, errors {error_count} ({ok} ok in {window_secs:.0} s, concurrency {}, \
         seed {seed})",
        args.target, args.concurrency
    );
    if ok == 0 {
        bail!("no report was acknowledged during the measured window");
    }
    Ok(())
}

/// Registers `count` agents under a new operator `loadgen` through `url`, with the admin `key`;
/// returns their ASNs.
async fn register_agents(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    count: u64,
) -> Result<Vec<String>> {
    let base = url.trim_end_matches('/');
    let operator = post_created(
        client,
        &format!("{base}/api/v1/operators"),
        key,
        &json!({ "name": "loadgen" }),
    )
    .await
    .context("registering the operator (the --key must be an admin key, or pass --asn)")?;
    let owner_id = operator["id"]
        .as_str()
        .context("the operator answer has no id")?
        .to_string();
    let mut asns = Vec::new();
    for n in 0..count {
        let agent = post_created(
            client,
            &format!("{base}/api/v1/agents"),
            key,
            &json!({ "name": format!("loadgen-{n}"), "owner_id": owner_id }),
        )
        .await
        .with_context(|| format!("registering agent {n}"))?;
        asns.push(
            agent["asn"]
                .as_str()
                .context("the agent answer has no asn")?
                .to_string(),
        );
    }
    eprintln!("loadgen: registered {count} agents under operator {owner_id}");
    Ok(asns)
}

async fn post_created(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let response = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != 201 {
        bail!("POST {url} answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
