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
//!
//! `--trace FILE` writes every measured request as a line `start_us latency_us url_index`
//! (start in µs after the measured window began), after a first line `# window_start_unix_us N`
//! that places the window on the wall clock: to see *when* slow requests happen and line them
//! up with what the servers did (docs/PERFORMANCE.md).

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
    /// Threads of the load generator's own runtime. One drives tens of thousands of requests a
    /// second here and, unlike several, never wakes another thread per request: on a machine
    /// the servers share with it, it leaves them the most CPU. Raise it only when one is not
    /// enough (the line printed at the end shows loadgen's CPU per request).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Seed of the ASN choice (printed; defaults to the clock).
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
    /// Write every measured request to this file (see the module documentation).
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct WorkerResult {
    /// Every request sent, measured or not.
    requests: u64,
    latencies_us: Vec<u64>,
    /// With `--trace`: (start after the window began, latency, URL index), in µs.
    trace: Vec<(u64, u64, usize)>,
    errors: BTreeMap<String, u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.into())
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
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
        .build()
        .context("building the HTTP client (agent registration)")?;
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
    let targets: Arc<Vec<Target>> = Arc::new(
        args.urls
            .iter()
            .map(|url| Target::parse(url, path, &args.key, etcd))
            .collect::<Result<_>>()?,
    );
    let timeout = Duration::from_millis(args.request_timeout_ms);
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

    // The window's start on the wall clock, for `--trace`.
    let window_start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| now + measure_from.saturating_duration_since(Instant::now()))
        .map_or(0, |at| at.as_micros());
    let tracing = args.trace.is_some();
    let cpu_before_ns = own_cpu_ns();
    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let targets = targets.clone();
        let next_url = next_url.clone();
        let padding = padding.clone();
        let asns = asns.clone();
        let value_b64 = value_b64.clone();
        let mut rng = seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        workers.push(tokio::spawn(async move {
            let mut result = WorkerResult::default();
            let mut n: u64 = 0;
            // One connection per node, opened on first use and again after a failure.
            let mut connections: Vec<Option<Connection>> =
                (0..targets.len()).map(|_| None).collect();
            loop {
                let sent = Instant::now();
                if sent >= measure_until {
                    return result;
                }
                let index = next_url.fetch_add(1, Ordering::Relaxed) % targets.len();
                let target = &targets[index];
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
                let body = if etcd {
                    use base64::Engine;
                    n += 1;
                    let key = base64::engine::general_purpose::STANDARD
                        .encode(format!("loadgen/{seed}/{worker}/{n}"));
                    json!({ "key": key, "value": value_b64 })
                } else if batch > 0 {
                    let events: Vec<_> = (0..batch).map(|_| report()).collect();
                    json!({ "events": events })
                } else {
                    report()
                };
                result.requests += 1;
                let status =
                    tokio::time::timeout(timeout, send(&mut connections[index], target, &body))
                        .await;
                let label = match status {
                    Ok(Ok(status)) if status == expected_status => None,
                    Ok(Ok(status)) => Some(status.to_string()),
                    Ok(Err(_)) | Err(_) => {
                        // The connection may be mid-request: open a new one next time.
                        connections[index] = None;
                        Some("transport".to_string())
                    }
                };
                let done = Instant::now();
                if sent < measure_from || done > measure_until {
                    continue;
                }
                match label {
                    None => {
                        let latency_us = done.duration_since(sent).as_micros() as u64;
                        result.latencies_us.push(latency_us);
                        if tracing {
                            let start_us = sent.duration_since(measure_from).as_micros() as u64;
                            result.trace.push((start_us, latency_us, index));
                        }
                    }
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
    let mut trace = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut requests = 0;
    for worker in workers {
        let result = worker.await.context("a worker panicked")?;
        requests += result.requests;
        latencies_us.extend(result.latencies_us);
        trace.extend(result.trace);
        for (label, count) in result.errors {
            *errors.entry(label).or_insert(0) += count;
        }
    }
    // The client's own CPU per request, warm-up included: what it took from the machine it
    // shares with the servers.
    let client_cpu_us_per_request = match (cpu_before_ns, own_cpu_ns()) {
        (Some(before), Some(after)) if requests > 0 => Some(round2(
            after.saturating_sub(before) as f64 / 1000.0 / requests as f64,
        )),
        _ => None,
    };
    if let Some(path) = &args.trace {
        use std::io::Write;
        trace.sort_unstable();
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the trace file {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "# window_start_unix_us {window_start_unix_us}")?;
        for (start_us, latency_us, index) in &trace {
            writeln!(out, "{start_us} {latency_us} {index}")?;
        }
        out.flush()?;
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
        "client_cpu_us_per_request": client_cpu_us_per_request,
        "threads": args.threads,
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
         seed {seed}); loadgen's own CPU {} µs/request on {} thread(s)",
        args.target,
        args.concurrency,
        client_cpu_us_per_request.map_or("?".to_string(), |us| format!("{us:.1}")),
        args.threads,
    );
    if ok == 0 {
        bail!("no report was acknowledged during the measured window");
    }
    Ok(())
}

/// Where one `--url`'s requests go, with the headers every request to it carries.
struct Target {
    address: String,
    path: String,
    host: hyper::header::HeaderValue,
    authorization: Option<hyper::header::HeaderValue>,
}

impl Target {
    fn parse(url: &str, path: &str, key: &str, etcd: bool) -> Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("--url {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url}: only http:// is supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let base = uri.path().trim_end_matches('/');
        Ok(Self {
            address: format!("{}:{port}", authority.host()),
            path: format!("{base}{path}"),
            host: authority.as_str().parse()?,
            authorization: if etcd {
                None
            } else {
                Some(format!("Bearer {key}").parse()?)
            },
        })
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// A keep-alive HTTP/1.1 connection to one node, driven by the worker's own task (no shared
/// pool, no second task per connection, so no wake-up of another task per request): the
/// client's own CPU per request stays small, and the servers measured get as much of the
/// machine as they can use.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    driver: std::pin::Pin<
        Box<
            hyper::client::conn::http1::Connection<
                hyper_util::rt::TokioIo<tokio::net::TcpStream>,
                Body,
            >,
        >,
    >,
}

/// Sends `body` to `target` over `connection` (opening it first if need be), reads the whole
/// answer, and returns its status.
async fn send(
    connection: &mut Option<Connection>,
    target: &Target,
    body: &serde_json::Value,
) -> Result<u16> {
    use http_body_util::BodyExt;
    let connection = match connection {
        Some(connection) => connection,
        None => {
            let stream = tokio::net::TcpStream::connect(&target.address).await?;
            stream.set_nodelay(true)?;
            let (sender, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            connection.insert(Connection {
                sender,
                driver: Box::pin(driver),
            })
        }
    };
    let mut request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.host.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(authorization) = &target.authorization {
        request = request.header(hyper::header::AUTHORIZATION, authorization.clone());
    }
    let request = request.body(Body::new(hyper::body::Bytes::from(serde_json::to_vec(
        body,
    )?)))?;
    let sender = &mut connection.sender;
    let exchange = async move {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        // Read the body so the connection can be reused.
        response.into_body().collect().await?;
        anyhow::Ok(status)
    };
    tokio::select! {
        biased;
        status = exchange => status,
        ended = connection.driver.as_mut() => {
            ended?;
            bail!("the server closed the connection")
        }
    }
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

/// CPU time of all this process's threads so far, in nanoseconds (the first field of each
/// thread's `/proc/self/task/<tid>/schedstat`); `None` where that is not readable.
fn own_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
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
