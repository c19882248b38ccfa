//! The OpenAPI document and the router agree: every route the router serves is in the document
//! with the same methods, and every documented operation is served.
//!
//! The router cannot list its routes, so the test finds them where they are written: every
//! `.route("…", …)` call in this crate's `src/`. It then asks an in-process router (over a
//! real, empty sled store) every method on every path and tells a served method from the
//! router's fallbacks (404 "no such route", 405 METHOD_NOT_ALLOWED). Adding a route, or a
//! method to a route, without a `#[utoipa::path]` annotation listed in `ApiDoc` fails here.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use api::ApiError;
use api::Backend;
use axum::body::Body;
use axum::http::Method;
use axum::http::Request;
use axum::http::StatusCode;
use tower::ServiceExt;

/// Routes deliberately left out of the document, with the reason (e.g. static assets).
const NOT_IN_DOCUMENT: &[(&str, &str)] = &[];

/// The methods probed on every path. HEAD is left out: axum answers it for every GET route.
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

/// A backend over a real, empty store that refuses writes: enough for the router to route.
struct Probe {
    _dir: tempfile::TempDir,
    _log: raft_store::LogStore,
    machine: raft_store::StateMachineStore,
    key: ed25519_dalek::SigningKey,
    protection: api::protect::Protection,
    metrics: api::metrics::HttpMetrics,
    signer_name: std::sync::OnceLock<api::SignerName>,
}

impl Backend for Probe {
    async fn submit(
        &self,
        _proposal: raft_store::Proposal,
    ) -> Result<raft_store::CommandResult, ApiError> {
        Err(ApiError::unavailable("probe: no writes"))
    }
    async fn linearize(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn ledger(&self) -> &raft_store::Ledger {
        self.machine.ledger()
    }
    fn node_status(&self) -> api::NodeStatus {
        api::NodeStatus {
            id: 1,
            cluster_id: None,
            role: "learner",
            term: 0,
            leader_id: None,
            last_log_index: None,
            committed_index: None,
            applied_index: None,
            snapshot_index: None,
            purged_index: None,
            voters: Vec::new(),
            learners: Vec::new(),
            joint: false,
        }
    }
    async fn cluster_status(&self) -> Result<api::ClusterStatus, ApiError> {
        Err(ApiError::unavailable("probe"))
    }
    async fn add_node(&self, _request: api::AddNode) -> Result<api::MembershipView, ApiError> {
        Err(ApiError::unavailable("probe"))
    }
    async fn remove_node(&self, _id: u64) -> Result<api::MembershipView, ApiError> {
        Err(ApiError::unavailable("probe"))
    }
    async fn transfer_leader(&self, _to: u64) -> Result<(), ApiError> {
        Err(ApiError::unavailable("probe"))
    }
    fn node_id(&self) -> u64 {
        1
    }
    fn fail_stop(&self, _reason: String) {}
    fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }
    fn signer_name(&self) -> &std::sync::OnceLock<api::SignerName> {
        &self.signer_name
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn now_ms(&self) -> i64 {
        0
    }
    fn protection(&self) -> &api::protect::Protection {
        &self.protection
    }
    fn http_metrics(&self) -> &api::metrics::HttpMetrics {
        &self.metrics
    }
    fn render_metrics(&self) -> String {
        "# EOF\n".to_owned()
    }
}

fn probe_router() -> axum::Router {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, machine) = raft_store::open(dir.path()).expect("open an empty store");
    let backend = Probe {
        _dir: dir,
        _log: log,
        machine,
        key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        protection: api::protect::Protection::new(api::protect::Budgets::default()),
        metrics: api::metrics::HttpMetrics::default(),
        signer_name: std::sync::OnceLock::new(),
    };
    api::router(Arc::new(backend))
}

/// Whether the router serves `method` on `uri`: anything but its fallbacks counts.
async fn served(router: &axum::Router, method: &Method, uri: &str) -> bool {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let fallback = (status == StatusCode::NOT_FOUND && json["error"]["message"] == "no such route")
        || (status == StatusCode::METHOD_NOT_ALLOWED
            && json["error"]["code"] == "METHOD_NOT_ALLOWED");
    !fallback
}

/// A concrete URI for a path template: each `{param}` gets a well-formed value.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        let name = &rest[start + 1..end - 1];
        out.push_str(if name == "asn" {
            api::openapi::EXAMPLE_ASN
        } else {
            "1"
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every `.route("path", …)` in `dir`, with the file it is in. Other ways to add routes
/// (`nest`, `merge`, `route_service`, `fallback_service`) hide their paths from this test and
/// are refused unless listed in `NOT_IN_DOCUMENT`.
fn routes_in_source(dir: &Path, found: &mut Vec<(String, String)>, hidden: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            routes_in_source(&path, found, hidden);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let file = path.display().to_string();
        let squashed: String = text.split_whitespace().collect::<Vec<_>>().join("");
        for (index, _) in squashed.match_indices(".route(") {
            let after = &squashed[index + ".route(".len()..];
            let Some(literal) = after.strip_prefix('"') else {
                hidden.push(format!(
                    "{file}: a .route( whose path is not a string literal: {}",
                    &after[..after.len().min(60)]
                ));
                continue;
            };
            let end = literal.find('"').expect("closing quote");
            found.push((literal[..end].to_owned(), file.clone()));
        }
        for call in [
            ".nest(",
            ".nest_service(",
            ".merge(",
            ".route_service(",
            ".fallback_service(",
        ] {
            for (index, _) in squashed.match_indices(call) {
                let after = &squashed[index + call.len()..];
                let allowed = NOT_IN_DOCUMENT
                    .iter()
                    .any(|(path, _)| after.starts_with(&format!("\"{path}\"")));
                if !allowed {
                    hidden.push(format!(
                        "{file}: {call} hides its routes from this test: {}",
                        &after[..after.len().min(60)]
                    ));
                }
            }
        }
    }
}

/// path → documented methods (upper case).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    api::openapi::document()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = api::openapi::methods(item)
                .into_iter()
                .map(str::to_owned)
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let router = probe_router();
    let documented = documented();
    assert!(documented.len() >= 20, "{documented:?}");

    // The router's side: every path written in the source, every method it serves there.
    let mut found = Vec::new();
    let mut hidden = Vec::new();
    routes_in_source(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
        &mut hidden,
    );
    assert!(
        hidden.is_empty(),
        "routes this test cannot see:\n{}",
        hidden.join("\n")
    );
    assert!(
        found.len() >= 20,
        "the source scan found too few routes: {found:?}"
    );
    let mut problems = Vec::new();
    let mut served_paths = BTreeSet::new();
    for (path, file) in &found {
        if NOT_IN_DOCUMENT.iter().any(|(p, _)| p == path) {
            continue;
        }
        served_paths.insert(path.clone());
        let Some(methods) = documented.get(path) else {
            problems.push(format!(
                "{path} ({file}) is routed but not in the OpenAPI document"
            ));
            continue;
        };
        for method in METHODS {
            let is_served = served(&router, method, &concrete(path)).await;
            let is_documented = methods.contains(method.as_str());
            if is_served && !is_documented {
                problems.push(format!("{method} {path} is served but not documented"));
            }
            if !is_served && is_documented {
                problems.push(format!("{method} {path} is documented but not served"));
            }
        }
    }
    // The document's side: every documented path is routed.
    for path in documented.keys() {
        if !served_paths.contains(path) {
            problems.push(format!("{path} is documented but no .route() serves it"));
        }
        for method in &documented[path] {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            if !served(&router, &method, &concrete(path)).await {
                problems.push(format!("{method} {path} is documented but not served"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The probe itself can fail: an unknown path and an unserved method are seen as such.
#[test]
fn the_example_asn_is_valid() {
    assert!(raft_store::asn::is_valid(api::openapi::EXAMPLE_ASN));
}

#[tokio::test]
async fn the_probe_tells_a_fallback_from_a_route() {
    let router = probe_router();
    assert!(served(&router, &Method::GET, "/livez").await);
    assert!(!served(&router, &Method::GET, "/api/v1/no-such-thing").await);
    assert!(!served(&router, &Method::DELETE, "/livez").await);
    assert!(!served(&router, &Method::PUT, "/api/v1/activity/report").await);
    assert!(served(&router, &Method::POST, "/api/v1/activity/report").await);
}

#[tokio::test]
async fn the_document_is_served_and_carries_the_limits_and_the_security_scheme() {
    let router = probe_router();
    let request = Request::builder()
        .uri("/api/v1/openapi.json")
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .expect("body");
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/openapi.json"),
        serde_json::to_string_pretty(&doc).expect("json"),
    )
    .ok();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    // Every reference resolves.
    let text = doc.to_string();
    for (index, _) in text.match_indices("\"$ref\":\"#/components/schemas/") {
        let rest = &text[index + "\"$ref\":\"#/components/schemas/".len()..];
        let name = &rest[..rest.find('"').expect("closing quote")];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "a $ref to the undefined schema {name}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let param = |path: &str, name: &str| -> serde_json::Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))["schema"]
            .clone()
    };
    let per_page = param("/api/v1/agents/{asn}/activity", "per_page");
    assert_eq!(per_page["maximum"], api::PAGE_EVENTS_MAX);
    assert_eq!(per_page["default"], api::PAGE_EVENTS_DEFAULT);
    assert_eq!(
        param("/api/v1/agents/{asn}/activity", "type")["maxLength"],
        api::EVENT_TYPE_CHARS_MAX
    );
    assert_eq!(
        param("/api/v1/ledger/events", "limit")["maximum"],
        api::LEDGER_PAGE_EVENTS_MAX
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ReportEvent"]["properties"]["event_type"]["maxLength"],
        api::EVENT_TYPE_CHARS_MAX
    );
    assert_eq!(
        schemas["ReportBatch"]["properties"]["events"]["maxItems"],
        api::BATCH_EVENTS_MAX
    );
    assert_eq!(
        schemas["CreateOperator"]["properties"]["name"]["maxLength"],
        api::NAME_CHARS_MAX
    );
    let body_limit = doc["paths"]["/api/v1/activity/report"]["post"]["requestBody"]["description"]
        .as_str()
        .expect("request body description");
    assert!(
        body_limit.contains(&api::REQUEST_BODY_BYTES_MAX.to_string()),
        "{body_limit}"
    );
    // 429 and 503 on every operation, with Retry-After.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            for status in ["429", "503"] {
                let answer = &operation["responses"][status];
                assert!(
                    answer["headers"]["Retry-After"].is_object(),
                    "{method} {path} lacks {status} with Retry-After"
                );
            }
        }
    }
}

/// Found by schemathesis: a repeated query parameter got axum's text/plain 400.
#[tokio::test]
async fn a_malformed_query_string_gets_the_json_error() {
    let router = probe_router();
    for uri in [
        "/api/v1/ledger/events?limit=1&limit=2",
        "/api/v1/ledger/head?consistency=local&consistency=local",
        "/api/v1/agents/ASN-2026-0384-7721-T/activity?per_page=1&per_page=1",
    ] {
        let request = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{uri}"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"]["code"], "VALIDATION_ERROR", "{uri}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("duplicate field")),
            "{json}"
        );
    }
}

/// Found by schemathesis (with `--checks all`): a proof asked for impossible sizes got a 400
/// whose message named no field ("leaf index 0 is not below tree size 0").
#[tokio::test]
async fn a_proof_for_impossible_sizes_names_the_field() {
    let router = probe_router();
    let request = Request::builder()
        .uri("/api/v1/ledger/consistency?from=0&consistency=local")
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["error"]["code"], "VALIDATION_ERROR");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("from: ")),
        "{json}"
    );
}

/// Every `$ref` in the document names a schema it defines (a type used only inside another
/// one must still be listed).
#[test]
fn every_schema_reference_resolves() {
    fn refs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", serde_json::Value::String(target)) => found.push(target.clone()),
                        _ => refs(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let document = serde_json::to_value(api::openapi::document()).expect("the document is JSON");
    let mut found = Vec::new();
    refs(&document, &mut found);
    let signature_proof =
        &document["components"]["schemas"]["Event"]["properties"]["signature_proof"];
    assert!(
        signature_proof
            .to_string()
            .contains("#/components/schemas/InclusionProofView"),
        "an event's signature_proof is an inclusion proof: {signature_proof}"
    );
    for target in found {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{target}: not a schema reference"));
        assert!(
            document["components"]["schemas"].get(name).is_some(),
            "{target} is referenced but not defined"
        );
    }
}

/// A log writer into memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Without `--access-log` (ledgerd's default filter has `access=warn`) requests run in no span,
/// yet an answer 5xx is still logged, with its request id, method and path; other answers are
/// not logged.
#[test]
fn answers_5xx_are_logged_with_their_request_id_without_the_access_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,access=warn"))
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tracing::subscriber::with_default(subscriber, || {
        let router = probe_router();
        for (uri, request_id) in [("/api/v1/cluster", "probe-5xx"), ("/livez", "probe-200")] {
            let request = Request::get(uri)
                .header("x-request-id", request_id)
                .body(Body::empty())
                .expect("request");
            let response = runtime
                .block_on(router.clone().oneshot(request))
                .expect("infallible");
            let expected = if uri == "/livez" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            assert_eq!(response.status(), expected, "{uri}");
        }
    });
    let text = String::from_utf8(captured.0.lock().expect("log").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .filter(|line: &serde_json::Value| line["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 1, "one access line, for the 5xx: {text}");
    let fields = &lines[0]["fields"];
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(fields["request_id"], "probe-5xx");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["path"], "/api/v1/cluster");
    assert_eq!(fields["status"], 503);
}
