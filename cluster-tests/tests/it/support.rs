//! Helpers shared by the scenarios: raw requests with a key, error-envelope checks, and a
//! well-formed ASN that no agent has (t09, t10); a node's `/metrics` read as samples (t04, t23,
//! t27); large batches written through the leader (t04, t27).

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Api, Body, Cluster};
use reqwest::Method;
use serde_json::Value;

pub const REPORT: &str = "/api/v1/activity/report";
pub const BATCH: &str = "/api/v1/activity/report/batch";

/// A request with `Authorization: Bearer <key>` when `key` is given.
pub async fn send(
    api: &Api,
    method: Method,
    node: u64,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Result<(u16, Value)> {
    let authorization = key.map(|key| format!("Bearer {key}"));
    api.request(method, node, path, authorization.as_deref(), headers, body)
        .await
        .with_context(|| format!("{path} on node {node}"))
}

/// The `(code, message)` of an error body, which must be exactly
/// `{"error": {"code": "...", "message": "..."}}`.
pub fn envelope(body: &Value) -> Result<(String, String)> {
    let top = body
        .as_object()
        .with_context(|| format!("error body is not a JSON object: {body}"))?;
    ensure!(
        top.len() == 1 && top.contains_key("error"),
        "error body must have exactly one key `error`: {body}"
    );
    let error = top["error"]
        .as_object()
        .with_context(|| format!("`error` is not an object: {body}"))?;
    ensure!(
        error.len() == 2,
        "`error` must have exactly `code` and `message`: {body}"
    );
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .with_context(|| format!("`error.code` is not a string: {body}"))?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .with_context(|| format!("`error.message` is not a string: {body}"))?;
    ensure!(!message.is_empty(), "empty error message: {body}");
    Ok((code.to_string(), message.to_string()))
}

/// The error code the contract gives to a status.
pub fn code_of(status: u16) -> &'static str {
    match status {
        400 => "VALIDATION_ERROR",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        409 => "CONFLICT",
        410 => "AGENT_DEACTIVATED",
        413 => "PAYLOAD_TOO_LARGE",
        _ => "?",
    }
}

/// Checks an error answer: the status, the envelope, the code of that status, and that the
/// message contains every needle (case-insensitively).
pub fn expect_error(what: &str, got: &(u16, Value), status: u16, needles: &[&str]) -> Result<()> {
    let (got_status, body) = got;
    ensure!(
        *got_status == status,
        "{what}: answered {got_status} {body}, expected {status} {}",
        code_of(status)
    );
    let (code, message) = envelope(body).with_context(|| what.to_string())?;
    ensure!(
        code == code_of(status),
        "{what}: status {status} with code {code}, expected {}",
        code_of(status)
    );
    let lower = message.to_lowercase();
    for needle in needles {
        ensure!(
            lower.contains(&needle.to_lowercase()),
            "{what}: the message {message:?} does not name {needle:?}"
        );
    }
    Ok(())
}

/// Checks a success answer's status; returns the body.
pub fn expect_status(what: &str, got: (u16, Value), status: u16) -> Result<Value> {
    let (got_status, body) = got;
    ensure!(
        got_status == status,
        "{what}: answered {got_status} {body}, expected {status}"
    );
    Ok(body)
}

/// A well-formed ASN that no agent has: `known` with other digits, and whichever check letter
/// the node accepts as well-formed (it answers 404, not 400, to `GET /api/v1/agents/{asn}`).
pub async fn unknown_asn(api: &Api, known: &str) -> Result<String> {
    ensure!(known.len() == 20, "{known} is not an ASN");
    let stem = format!("ASN-{}-9999-{}", &known[4..8], &known[14..18]);
    let mut answers = Vec::new();
    for letter in 'A'..='Z' {
        let candidate = format!("{stem}-{letter}");
        let path = format!("/api/v1/agents/{candidate}");
        let (status, body) = send(api, Method::GET, 1, &path, None, &[], Body::None).await?;
        if status == 404 {
            return Ok(candidate);
        }
        answers.push(format!("{candidate}: {status} {body}"));
    }
    bail!(
        "no check letter made {stem}-? an unknown well-formed ASN: {}",
        answers.join("; ")
    )
}

/// `{"p": "xxx…"}` whose compact JSON is exactly `bytes` long.
pub fn metadata_of_size(bytes: usize) -> Value {
    let overhead = r#"{"p":""}"#.len();
    serde_json::json!({ "p": "x".repeat(bytes - overhead) })
}

/// `{"a": {"a": … {"leaf": 1}}}` nested `depth` objects deep (the outer object is depth 1).
pub fn metadata_of_depth(depth: usize) -> Value {
    let mut value = serde_json::json!({ "leaf": 1 });
    for _ in 1..depth {
        value = serde_json::json!({ "a": value });
    }
    value
}

/// True for a UUID of version 7 in the canonical hyphenated form.
pub fn is_uuid_v7(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok_and(|id| id.get_version_num() == 7)
        && text.len() == 36
        && text.as_bytes()[14] == b'7'
}

/// True for a UUID in the canonical hyphenated form.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::parse_str(text).is_ok()
}

/// One sample of the text format: metric name, its labels as written, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

pub async fn scrape(cluster: &Cluster, node: u64) -> Result<Vec<Sample>> {
    let url = format!("{}/metrics", cluster.api().base_url(node)?);
    let response = reqwest::get(&url).await.context("GET /metrics")?;
    ensure!(
        response.status() == 200,
        "GET /metrics: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "content type {content_type}"
    );
    let text = response.text().await?;
    ensure!(text.ends_with("# EOF\n"), "no # EOF at the end");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("malformed line {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("value of {line:?}"))?;
        samples.push(Sample {
            name: name.to_owned(),
            labels: labels.to_owned(),
            value,
        });
    }
    Ok(samples)
}

/// The value of the one sample named `name` whose labels contain every `labels` fragment.
pub fn value(samples: &[Sample], name: &str, labels: &[&str]) -> Result<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.value),
        [] => bail!("no sample {name}{labels:?}"),
        many => {
            // Histograms by route/status: sum the series that match.
            Ok(many.iter().map(|s| s.value).sum())
        }
    }
}

/// Writes batch number `batch` through node `via`: 1000 events for `asn`, each with about 700
/// bytes of metadata (about 0.9 MiB, one Raft entry), under the `Idempotency-Key`
/// `<tag>-<batch>`; every event must be created.
pub async fn write_large_batch(
    api: &Api,
    via: u64,
    key: &str,
    asn: &str,
    tag: &str,
    batch: usize,
) -> Result<()> {
    let pad = "x".repeat(700);
    let events: Vec<Value> = (0..1000)
        .map(|n| {
            serde_json::json!({
                "asn": asn,
                "event_type": "task_completed",
                "metadata": { "batch": batch, "n": n, "pad": pad },
            })
        })
        .collect();
    let created = api
        .report_batch(via, key, &events, Some(&format!("{tag}-{batch}")))
        .await
        .map_err(|e| anyhow::anyhow!("batch {batch}: {e:?}"))?;
    ensure!(
        created.len() == 1000,
        "batch {batch}: {} events",
        created.len()
    );
    Ok(())
}
