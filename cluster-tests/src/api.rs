//! `Api`: the ledgerd HTTP API as seen by a client, addressed by node id.
//!
//! Each endpoint is called from exactly one function here, so a change of request or response
//! shape changes one function. Responses are decoded into the structs below; any status other
//! than the expected one becomes an [`ApiError`] that keeps the status and the error code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Deadline of one ordinary request.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Deadline of a membership change (the contract answers once the new node is a caught-up voter).
pub const MEMBERSHIP_TIMEOUT_MS: u64 = 60_000;
/// Largest page the contract allows for `GET /api/v1/ledger/events`.
pub const PAGE_EVENTS_MAX: u64 = 1000;

/// One ledger event as returned by `POST /api/v1/activity/report` and the event listings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Event {
    pub id: String,
    pub agent_id: String,
    pub asn: String,
    pub event_type: String,
    pub severity: String,
    pub metadata: Value,
    pub reported_by: String,
    pub created_at: String,
    pub seq: u64,
    pub hash: String,
    pub prev_hash: String,
}

/// `POST /api/v1/operators`, `GET /api/v1/operators/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Operator {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// `POST /api/v1/keys` (with the secret `key`), `DELETE /api/v1/keys/{id}` (without it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiKey {
    pub id: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub operator_id: Option<String>,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: String,
    pub revoked: bool,
}

impl ApiKey {
    /// The secret, which only the creation answer carries.
    pub fn secret(&self) -> Result<&str> {
        self.key
            .as_deref()
            .with_context(|| format!("key {} was answered without its secret", self.id))
    }
}

/// `POST /api/v1/agents`, `GET /api/v1/agents/{asn}`, `POST /api/v1/agents/{asn}/deactivate`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Agent {
    pub asn: String,
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub status: String,
    pub created_at: String,
    #[serde(default)]
    pub deactivated_at: Option<String>,
}

/// `pagination` of `GET /api/v1/agents/{asn}/activity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Pagination {
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
    pub total_pages: u64,
}

/// `GET /api/v1/agents/{asn}/activity`.
#[derive(Clone, Debug, Deserialize)]
pub struct Activity {
    pub data: Vec<Event>,
    pub pagination: Pagination,
}

impl Activity {
    /// Event ids, in the order listed.
    pub fn ids(&self) -> Vec<String> {
        self.data.iter().map(|event| event.id.clone()).collect()
    }
}

/// What every cluster gets once it is formed: one operator, one `write` key of it, and a pool
/// of agents owned by it. Scenarios report on these ASNs (unknown ASNs get 404).
#[derive(Clone, Debug)]
pub struct Fixture {
    pub operator: Operator,
    /// The operator's `write` key, with its secret.
    pub write_key: ApiKey,
    pub agents: Vec<Agent>,
}

/// A request body for [`Api::request`].
#[derive(Clone, Debug)]
pub enum Body {
    None,
    Json(Value),
    /// Sent as is, with `Content-Type: application/json`.
    Bytes(Vec<u8>),
}

/// `GET /api/v1/ledger/events`.
#[derive(Clone, Debug, Deserialize)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub size: u64,
    pub head_hash: Option<String>,
}

/// `GET /api/v1/ledger/head`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Head {
    pub size: u64,
    pub head_hash: Option<String>,
    pub applied_index: Option<u64>,
}

/// `GET /api/v1/node` (local state of one node, no network).
#[derive(Clone, Debug, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub cluster_id: Option<String>,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// In the middle of a membership change (a joint configuration).
    #[serde(default)]
    pub joint: bool,
}

/// One entry of `nodes` in `GET /api/v1/cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
    pub voter: bool,
    pub reachable: bool,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
}

/// `GET /api/v1/cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    pub leader_id: Option<u64>,
    pub this_node: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub nodes: Vec<ClusterNode>,
}

/// `POST /api/v1/cluster/nodes`.
#[derive(Clone, Debug, Deserialize)]
pub struct AddNodeResponse {
    pub id: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// `DELETE /api/v1/cluster/nodes/{id}`.
#[derive(Clone, Debug, Deserialize)]
pub struct RemoveNodeResponse {
    pub removed: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// Read consistency of the ledger reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The default: read-index through the leader.
    Linearizable,
    /// This node's own state, without contacting anyone.
    Local,
}

impl Consistency {
    fn query(self) -> &'static str {
        match self {
            Consistency::Linearizable => "",
            Consistency::Local => "&consistency=local",
        }
    }
}

/// A request that did not get the expected answer.
///
/// `status == None` means no HTTP answer at all (connection refused or reset, timeout): the
/// outcome of a write is then unknown.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl ApiError {
    /// True for a definite rejection (4xx): nothing was written.
    pub fn is_definite(&self) -> bool {
        matches!(self.status, Some(status) if (400..500).contains(&status))
    }

    /// A short label for counting errors: the status, or `transport`.
    pub fn label(&self) -> String {
        match (self.status, &self.code) {
            (Some(status), Some(code)) => format!("{status} {code}"),
            (Some(status), None) => status.to_string(),
            (None, _) => "transport".to_string(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status}")?,
            None => write!(f, "no HTTP answer")?,
        }
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ApiError {}

/// One request of [`Api::call`].
struct Call<'a> {
    method: reqwest::Method,
    path: &'a str,
    /// Sent as `Authorization: Bearer <key>`.
    key: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    body: Option<&'a Value>,
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) http_addr: SocketAddr,
    pub(crate) alive: bool,
}

/// HTTP client for the cluster's nodes. Clones share the node table, so writers spawned on other
/// tasks see nodes come and go.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    admin_key: Arc<OnceLock<String>>,
    fixture: Arc<OnceLock<Fixture>>,
    endpoints: Arc<Mutex<BTreeMap<u64, Endpoint>>>,
}

impl Api {
    pub(crate) fn new() -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(2_000))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            admin_key: Arc::new(OnceLock::new()),
            fixture: Arc::new(OnceLock::new()),
            endpoints: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    pub(crate) fn set_admin_key(&self, key: String) -> Result<()> {
        if let Some(existing) = self.admin_key.get() {
            ensure!(*existing == key, "the admin key changed");
            return Ok(());
        }
        self.admin_key
            .set(key)
            .map_err(|_| anyhow!("the admin key was set twice"))
    }

    pub(crate) fn set_fixture(&self, fixture: Fixture) -> Result<()> {
        self.fixture
            .set(fixture)
            .map_err(|_| anyhow!("the fixture was set twice"))
    }

    /// The cluster's operator, `write` key and agent pool.
    pub fn fixture(&self) -> Result<&Fixture> {
        self.fixture
            .get()
            .context("the cluster has no fixture (Options::fixture_agents was 0)")
    }

    /// The ASNs of the agent pool (empty without a fixture).
    pub fn agents(&self) -> Vec<String> {
        self.fixture
            .get()
            .map(|fixture| {
                fixture
                    .agents
                    .iter()
                    .map(|agent| agent.asn.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `n`-th ASN of the pool, round-robin.
    pub fn agent_asn(&self, n: u64) -> Result<String> {
        let agents = self.agents();
        ensure!(!agents.is_empty(), "the cluster has no agent pool");
        Ok(agents[(n % agents.len() as u64) as usize].clone())
    }

    /// The secret of the fixture operator's `write` key.
    pub fn operator_key(&self) -> Result<String> {
        Ok(self.fixture()?.write_key.secret()?.to_string())
    }

    pub(crate) fn set_endpoint(&self, id: u64, endpoint: Endpoint) {
        self.table().insert(id, endpoint);
    }

    pub(crate) fn set_alive(&self, id: u64, alive: bool) {
        if let Some(endpoint) = self.table().get_mut(&id) {
            endpoint.alive = alive;
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The admin API key read from node 1's `admin.key`.
    pub fn admin_key(&self) -> Result<&str> {
        self.admin_key
            .get()
            .map(String::as_str)
            .context("the admin key is not known yet")
    }

    /// Ids of the nodes whose process the harness believes is running (and not paused), and that
    /// tests have not taken out of client routing.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.table()
            .iter()
            .filter(|(_, endpoint)| endpoint.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes a node out of (or back into) the set that [`Api::live_nodes`] and the workload use.
    pub fn route(&self, id: u64, routed: bool) {
        self.set_alive(id, routed);
    }

    /// `http://127.0.0.1:PORT` of a node.
    pub fn base_url(&self, node: u64) -> Result<String> {
        let table = self.table();
        let endpoint = table
            .get(&node)
            .with_context(|| format!("unknown node {node}"))?;
        Ok(format!("http://{}", endpoint.http_addr))
    }

    /// The raw HTTP client, for tests that craft their own requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, node: u64, path_and_query: &str) -> Result<String, ApiError> {
        self.base_url(node)
            .map(|base| format!("{base}{path_and_query}"))
            .map_err(|error| ApiError {
                status: None,
                code: None,
                message: format!("{error:#}"),
            })
    }

    fn admin_bearer(&self) -> Result<String, ApiError> {
        self.admin_key()
            .map(|key| key.to_string())
            .map_err(|error| ApiError {
                status: None,
                code: None,
                message: format!("{error:#}"),
            })
    }

    /// Sends a request and decodes the body when the status is `expected`.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        expected: u16,
    ) -> Result<T, ApiError> {
        let (status, body) = send_raw(request).await?;
        if status != expected {
            return Err(error_from_body(status, &body));
        }
        serde_json::from_slice(&body).map_err(|error| ApiError {
            status: Some(status),
            code: None,
            message: format!(
                "undecodable body ({error}): {}",
                String::from_utf8_lossy(&body)
            ),
        })
    }

    /// `POST /api/v1/activity/report` with the admin key. The only place that knows the report
    /// request shape and who is allowed to report.
    pub async fn report(
        &self,
        node: u64,
        asn: &str,
        event_type: &str,
        metadata: Value,
    ) -> Result<Event, ApiError> {
        self.admin_report(node, asn, event_type, metadata, None)
            .await
    }

    /// [`Api::report`] with an `Idempotency-Key`: a resend with the same key and body returns
    /// the event first recorded instead of recording another.
    pub async fn report_idempotent(
        &self,
        node: u64,
        asn: &str,
        event_type: &str,
        metadata: Value,
        idempotency_key: &str,
    ) -> Result<Event, ApiError> {
        self.admin_report(node, asn, event_type, metadata, Some(idempotency_key))
            .await
    }

    async fn admin_report(
        &self,
        node: u64,
        asn: &str,
        event_type: &str,
        metadata: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Event, ApiError> {
        let body = json!({
            "asn": asn,
            "event_type": event_type,
            "severity": "info",
            "metadata": metadata,
        });
        let mut request = self
            .http
            .post(self.url(node, "/api/v1/activity/report")?)
            .bearer_auth(self.admin_bearer()?)
            .json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request, 201).await
    }

    /// `GET /api/v1/ledger/events?from_seq=..&limit=..[&consistency=local]`.
    pub async fn events(
        &self,
        node: u64,
        from_seq: u64,
        limit: u64,
        consistency: Consistency,
    ) -> Result<EventsPage, ApiError> {
        let path = format!(
            "/api/v1/ledger/events?from_seq={from_seq}&limit={limit}{}",
            consistency.query()
        );
        self.send(self.http.get(self.url(node, &path)?), 200).await
    }

    /// Every event of a node's ledger, paging by [`PAGE_EVENTS_MAX`]. Checks that each page
    /// starts where asked and that the pages end at the reported `size`.
    pub async fn all_events(&self, node: u64, consistency: Consistency) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = Vec::new();
        let mut from_seq = 1;
        loop {
            let page = self
                .events(node, from_seq, PAGE_EVENTS_MAX, consistency)
                .await
                .with_context(|| format!("reading events of node {node} from seq {from_seq}"))?;
            ensure!(
                page.events.len() as u64 <= PAGE_EVENTS_MAX,
                "node {node} returned {} events for limit {PAGE_EVENTS_MAX}",
                page.events.len()
            );
            if let Some(first) = page.events.first() {
                ensure!(
                    first.seq == from_seq,
                    "node {node}: page asked from seq {from_seq} starts at seq {}",
                    first.seq
                );
            }
            let got = page.events.len() as u64;
            events.extend(page.events);
            if got == 0 || events.len() as u64 >= page.size {
                ensure!(
                    events.len() as u64 == page.size || (consistency == Consistency::Local),
                    "node {node}: read {} events but size is {}",
                    events.len(),
                    page.size
                );
                return Ok(events);
            }
            from_seq += got;
        }
    }

    /// `GET /api/v1/ledger/head[?consistency=local]`.
    pub async fn head(&self, node: u64, consistency: Consistency) -> Result<Head, ApiError> {
        let path = match consistency {
            Consistency::Linearizable => "/api/v1/ledger/head",
            Consistency::Local => "/api/v1/ledger/head?consistency=local",
        };
        self.send(self.http.get(self.url(node, path)?), 200).await
    }

    /// `GET /api/v1/node`.
    pub async fn node_status(&self, node: u64) -> Result<NodeStatus, ApiError> {
        self.send(self.http.get(self.url(node, "/api/v1/node")?), 200)
            .await
    }

    /// `GET /api/v1/cluster`.
    pub async fn cluster(&self, node: u64) -> Result<ClusterView, ApiError> {
        self.send(self.http.get(self.url(node, "/api/v1/cluster")?), 200)
            .await
    }

    /// `GET /readyz`: `Ok(true)` on 200, `Ok(false)` on 503.
    pub async fn readyz(&self, node: u64) -> Result<bool, ApiError> {
        let (status, body) = send_raw(self.http.get(self.url(node, "/readyz")?)).await?;
        match status {
            200 => Ok(true),
            503 => Ok(false),
            _ => Err(error_from_body(status, &body)),
        }
    }

    /// `POST /api/v1/cluster/nodes` through `via`, with the admin key.
    pub async fn add_node(
        &self,
        via: u64,
        id: u64,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Result<AddNodeResponse, ApiError> {
        let body = json!({
            "id": id,
            "grpc_addr": grpc_addr.to_string(),
            "http_addr": http_addr.to_string(),
        });
        let request = self
            .http
            .post(self.url(via, "/api/v1/cluster/nodes")?)
            .bearer_auth(self.admin_bearer()?)
            .timeout(Duration::from_millis(MEMBERSHIP_TIMEOUT_MS))
            .json(&body);
        self.send(request, 201).await
    }

    /// `DELETE /api/v1/cluster/nodes/{id}` through `via`, with the admin key.
    pub async fn remove_node(&self, via: u64, id: u64) -> Result<RemoveNodeResponse, ApiError> {
        let request = self
            .http
            .delete(self.url(via, &format!("/api/v1/cluster/nodes/{id}"))?)
            .bearer_auth(self.admin_bearer()?)
            .timeout(Duration::from_millis(MEMBERSHIP_TIMEOUT_MS));
        self.send(request, 200).await
    }

    /// Removes `victim` through `via`, as an operator following the API's advice would. A 503
    /// or a lost answer leaves the outcome unknown (the change may have been made: a leader
    /// that removes itself steps down, and the next must be elected, and may first have to
    /// finish a joint configuration, within the write deadline): try again, up to three times,
    /// and take "not a member" after such a try as done.
    pub async fn remove_node_retrying(&self, via: u64, victim: u64) -> Result<()> {
        let mut unknown = None;
        for _ in 0..3 {
            match self.remove_node(via, victim).await {
                Ok(_) => return Ok(()),
                Err(error) if error.status == Some(404) && unknown.is_some() => return Ok(()),
                Err(error) if error.status.is_none() || error.status == Some(503) => {
                    eprintln!("removing node {victim} through node {via}: {error}; again");
                    unknown = Some(error);
                }
                Err(error) => bail!("removing node {victim} through node {via}: {error}"),
            }
        }
        bail!(
            "removing node {victim} through node {via} failed three times, last: {:?}",
            unknown
        )
    }

    /// Any request with an optional `Authorization` header value; returns status and JSON body
    /// (`Value::Null` when the body is not JSON). For authorization tests.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        node: u64,
        path: &str,
        authorization: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), ApiError> {
        let body = match body {
            Some(value) => Body::Json(value),
            None => Body::None,
        };
        self.request(method, node, path, authorization, &[], body)
            .await
    }

    /// Any request: optional `Authorization` header value, extra headers, a body. Returns status
    /// and JSON body (`Value::Null` when the body is not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        node: u64,
        path: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<(u16, Value), ApiError> {
        let mut request = self.http.request(method, self.url(node, path)?);
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Bytes(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
        };
        let (status, bytes) = send_raw(request).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A JSON request with `Authorization: Bearer <key>` (when given) and an optional
    /// `Idempotency-Key`, decoded when the status is `expected`.
    async fn call<T: DeserializeOwned>(
        &self,
        node: u64,
        call: Call<'_>,
        expected: u16,
    ) -> Result<T, ApiError> {
        let mut request = self.http.request(call.method, self.url(node, call.path)?);
        if let Some(key) = call.key {
            request = request.bearer_auth(key);
        }
        if let Some(idempotency_key) = call.idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        self.send(request, expected).await
    }

    /// `POST /api/v1/operators` with the admin key.
    pub async fn create_operator(&self, node: u64, name: &str) -> Result<Operator, ApiError> {
        let admin = self.admin_bearer()?;
        let body = json!({ "name": name });
        self.call(
            node,
            Call {
                method: reqwest::Method::POST,
                path: "/api/v1/operators",
                key: Some(&admin),
                idempotency_key: None,
                body: Some(&body),
            },
            201,
        )
        .await
    }

    /// `GET /api/v1/operators/{id}` with the admin key.
    pub async fn get_operator(&self, node: u64, id: &str) -> Result<Operator, ApiError> {
        let admin = self.admin_bearer()?;
        let path = format!("/api/v1/operators/{id}");
        self.call(
            node,
            Call {
                method: reqwest::Method::GET,
                path: &path,
                key: Some(&admin),
                idempotency_key: None,
                body: None,
            },
            200,
        )
        .await
    }

    /// `POST /api/v1/keys` with the admin key; `operator_id` is omitted when `None`.
    pub async fn create_key(
        &self,
        node: u64,
        operator_id: Option<&str>,
        name: &str,
        permissions: &[&str],
    ) -> Result<ApiKey, ApiError> {
        let admin = self.admin_bearer()?;
        let mut body = json!({ "name": name, "permissions": permissions });
        if let Some(operator_id) = operator_id {
            body["operator_id"] = json!(operator_id);
        }
        self.call(
            node,
            Call {
                method: reqwest::Method::POST,
                path: "/api/v1/keys",
                key: Some(&admin),
                idempotency_key: None,
                body: Some(&body),
            },
            201,
        )
        .await
    }

    /// `DELETE /api/v1/keys/{id}` with the admin key.
    pub async fn revoke_key(&self, node: u64, id: &str) -> Result<ApiKey, ApiError> {
        let admin = self.admin_bearer()?;
        let path = format!("/api/v1/keys/{id}");
        self.call(
            node,
            Call {
                method: reqwest::Method::DELETE,
                path: &path,
                key: Some(&admin),
                idempotency_key: None,
                body: None,
            },
            200,
        )
        .await
    }

    /// `POST /api/v1/agents` with `key` (an operator key with `write`, or the admin key with an
    /// `owner_id`).
    pub async fn create_agent(
        &self,
        node: u64,
        key: &str,
        name: &str,
        owner_id: Option<&str>,
    ) -> Result<Agent, ApiError> {
        let mut body = json!({ "name": name });
        if let Some(owner_id) = owner_id {
            body["owner_id"] = json!(owner_id);
        }
        self.call(
            node,
            Call {
                method: reqwest::Method::POST,
                path: "/api/v1/agents",
                key: Some(key),
                idempotency_key: None,
                body: Some(&body),
            },
            201,
        )
        .await
    }

    /// `GET /api/v1/agents/{asn}` without a key.
    pub async fn get_agent(&self, node: u64, asn: &str) -> Result<Agent, ApiError> {
        let path = format!("/api/v1/agents/{asn}");
        self.call(
            node,
            Call {
                method: reqwest::Method::GET,
                path: &path,
                key: None,
                idempotency_key: None,
                body: None,
            },
            200,
        )
        .await
    }

    /// `POST /api/v1/agents/{asn}/deactivate` with `key`.
    pub async fn deactivate_agent(
        &self,
        node: u64,
        key: &str,
        asn: &str,
    ) -> Result<Agent, ApiError> {
        let path = format!("/api/v1/agents/{asn}/deactivate");
        self.call(
            node,
            Call {
                method: reqwest::Method::POST,
                path: &path,
                key: Some(key),
                idempotency_key: None,
                body: None,
            },
            200,
        )
        .await
    }

    /// `POST /api/v1/activity/report` with `key`, the given body and an optional
    /// `Idempotency-Key`.
    pub async fn report_as(
        &self,
        node: u64,
        key: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Event, ApiError> {
        self.call(
            node,
            Call {
                method: reqwest::Method::POST,
                path: "/api/v1/activity/report",
                key: Some(key),
                idempotency_key,
                body: Some(body),
            },
            201,
        )
        .await
    }

    /// `POST /api/v1/activity/report/batch` with `key` and `{"events": events}`; returns `data`.
    pub async fn report_batch(
        &self,
        node: u64,
        key: &str,
        events: &[Value],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<Event>, ApiError> {
        #[derive(Deserialize)]
        struct Created {
            data: Vec<Event>,
        }
        let body = json!({ "events": events });
        let created: Created = self
            .call(
                node,
                Call {
                    method: reqwest::Method::POST,
                    path: "/api/v1/activity/report/batch",
                    key: Some(key),
                    idempotency_key,
                    body: Some(&body),
                },
                201,
            )
            .await?;
        Ok(created.data)
    }

    /// `GET /api/v1/agents/{asn}/activity?{query}` with an optional key.
    pub async fn activity(
        &self,
        node: u64,
        asn: &str,
        query: &str,
        key: Option<&str>,
    ) -> Result<Activity, ApiError> {
        let path = if query.is_empty() {
            format!("/api/v1/agents/{asn}/activity")
        } else {
            format!("/api/v1/agents/{asn}/activity?{query}")
        };
        self.call(
            node,
            Call {
                method: reqwest::Method::GET,
                path: &path,
                key,
                idempotency_key: None,
                body: None,
            },
            200,
        )
        .await
    }

    /// Every event of an agent, newest first, read as `key` (the whole history for the owner or
    /// the admin), paging by 50.
    pub async fn all_activity(
        &self,
        node: u64,
        asn: &str,
        extra_query: &str,
        key: Option<&str>,
    ) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut page = 1;
        loop {
            let query = format!("page={page}&per_page=50{extra_query}");
            let listing = self
                .activity(node, asn, &query, key)
                .await
                .with_context(|| format!("activity of {asn} on node {node}, {query}"))?;
            let got = listing.data.len();
            events.extend(listing.data);
            if got == 0 || page >= listing.pagination.total_pages {
                return Ok(events);
            }
            page += 1;
        }
    }

    /// Waits until every node in `nodes` has applied at least what the leader had applied when
    /// the wait started (so local reads on followers see every earlier write, including key
    /// revocations and agent changes that do not move the ledger head).
    pub async fn wait_applied(&self, nodes: &[u64], timeout: Duration) -> Result<()> {
        let leader = self.leader_id(timeout).await?;
        let target = self
            .node_status(leader)
            .await
            .with_context(|| format!("status of leader {leader}"))?
            .applied_index
            .unwrap_or(0);
        crate::wait_for(
            timeout,
            &format!("nodes {nodes:?} to apply index {target}"),
            async || {
                for node in nodes {
                    let applied = self.node_status(*node).await?.applied_index.unwrap_or(0);
                    ensure!(applied >= target, "node {node} applied {applied}");
                }
                Ok(())
            },
        )
        .await
    }

    /// Polls the live nodes until one leader is agreed on: a node that says it is leader, and a
    /// majority of its voters (among the live nodes) that name it as leader in the same term.
    pub async fn leader_id(&self, timeout: Duration) -> Result<u64> {
        crate::wait_for(timeout, "an agreed leader", async || {
            self.agreed_leader().await
        })
        .await
    }

    /// One attempt of [`Api::leader_id`].
    pub async fn agreed_leader(&self) -> Result<u64> {
        let mut statuses = Vec::new();
        for node in self.live_nodes() {
            if let Ok(status) = self.node_status(node).await {
                statuses.push(status);
            }
        }
        let leader = statuses
            .iter()
            .filter(|status| status.role == "leader")
            .max_by_key(|status| status.term)
            .with_context(|| format!("no live node says it is leader: {}", summary(&statuses)))?;
        let agreeing = statuses
            .iter()
            .filter(|status| status.term == leader.term && status.leader_id == Some(leader.id))
            .count();
        let majority = leader.voters.len() / 2 + 1;
        if agreeing < majority {
            bail!(
                "node {} leads term {} but only {agreeing} of {} voters agree: {}",
                leader.id,
                leader.term,
                leader.voters.len(),
                summary(&statuses)
            );
        }
        Ok(leader.id)
    }
}

fn summary(statuses: &[NodeStatus]) -> String {
    statuses
        .iter()
        .map(|s| {
            format!(
                "[{} {} term {} leader {:?}]",
                s.id, s.role, s.term, s.leader_id
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn send_raw(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), ApiError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(transport_error)?;
    Ok((status, body.to_vec()))
}

fn transport_error(error: reqwest::Error) -> ApiError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError {
        status: None,
        code: None,
        message,
    }
}

fn error_from_body(status: u16, body: &[u8]) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|value| value.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let message = match error.and_then(|e| e.get("message")).and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(body).chars().take(500).collect(),
    };
    ApiError {
        status: Some(status),
        code,
        message,
    }
}
