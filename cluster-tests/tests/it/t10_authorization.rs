//! Goal: every endpoint answers every kind of caller as issue 3 says: one table of
//! endpoint × role → expected status, checked against a real 3-node cluster.
//!
//! Method: 3 nodes. Operator 1 owns agent A (60 events, so the public window of 50 is visible)
//! and has `activity:report`, `read` and `write` keys plus a `write` key that is revoked;
//! operator 2 has a `write` key. Every (endpoint, role) cell is one request, sent to the nodes
//! in turn, through one `check` function that also checks the error envelope and, where it
//! matters, the answer (public versus full history, the new agent's owner). All cells run; a
//! mismatch fails the test after printing the whole table.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use cluster_tests::{Api, Body, Cluster, Operator, slow_test};
use reqwest::Method;
use serde_json::{Value, json};

use crate::CONDITION_TIMEOUT;
use crate::support::{code_of, envelope};

/// Events reported on agent A before the table runs (more than the public window).
const A_EVENTS: usize = 60;
const PUBLIC_WINDOW: u64 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    NoKey,
    Malformed,
    Revoked,
    OtherOperator,
    Report,
    Read,
    Write,
    Admin,
}

const ROLES: [Role; 8] = [
    Role::NoKey,
    Role::Malformed,
    Role::Revoked,
    Role::OtherOperator,
    Role::Report,
    Role::Read,
    Role::Write,
    Role::Admin,
];

impl Role {
    fn index(self) -> usize {
        ROLES.iter().position(|role| *role == self).unwrap_or(0)
    }

    /// The public history window applies to this caller.
    fn is_public_reader(self) -> bool {
        matches!(self, Role::NoKey | Role::OtherOperator | Role::Report)
    }
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Report,
    Batch,
    Activity,
    GetAgent,
    CreateAgent,
    Deactivate,
    CreateOperator,
    GetOperator,
    CreateKey,
    RevokeKey,
    AddNode,
    RemoveNode,
}

/// Expected status per role, in the order of [`ROLES`]: no key, malformed, revoked, other
/// operator, report, read, write, admin.
const TABLE: [(Endpoint, [u16; 8]); 12] = [
    (Endpoint::Report, [401, 401, 401, 403, 201, 403, 201, 201]),
    (Endpoint::Batch, [401, 401, 401, 403, 201, 403, 201, 201]),
    (Endpoint::Activity, [200, 401, 401, 200, 200, 200, 200, 200]),
    (Endpoint::GetAgent, [200, 401, 401, 200, 200, 200, 200, 200]),
    (
        Endpoint::CreateAgent,
        [401, 401, 401, 201, 403, 403, 201, 201],
    ),
    (
        Endpoint::Deactivate,
        [401, 401, 401, 403, 403, 403, 200, 200],
    ),
    (
        Endpoint::CreateOperator,
        [401, 401, 401, 403, 403, 403, 403, 201],
    ),
    (
        Endpoint::GetOperator,
        [401, 401, 401, 403, 403, 403, 403, 200],
    ),
    (
        Endpoint::CreateKey,
        [401, 401, 401, 403, 403, 403, 403, 201],
    ),
    (
        Endpoint::RevokeKey,
        [401, 401, 401, 403, 403, 403, 403, 200],
    ),
    (Endpoint::AddNode, [401, 401, 401, 403, 403, 403, 403, 400]),
    (
        Endpoint::RemoveNode,
        [401, 401, 401, 403, 403, 403, 403, 404],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_table() {
    let Some(guard) = slow_test("t10_authorization") else {
        return;
    };
    guard.run(scenario()).await;
}

/// Everything the cells need.
struct World {
    op1: Operator,
    op2: Operator,
    /// `Authorization` header value per role (`None` for no key).
    authorization: [Option<String>; 8],
    asn_a: String,
    /// Events of A so far (grows with every accepted report or batch).
    a_events: u64,
    /// A fresh agent of operator 1 per role, for the deactivate cells.
    fresh_agents: Vec<String>,
    /// A fresh key id per role, for the revoke cells.
    fresh_keys: Vec<String>,
}

/// One cell's outcome.
struct Cell {
    endpoint: String,
    role: Role,
    node: u64,
    expected: u16,
    got: u16,
    body: String,
    problem: Option<String>,
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let mut world = setup(&api, &cluster).await?;

    let mut cells = Vec::new();
    let mut n = 0u64;
    for (endpoint, expected) in TABLE {
        for role in ROLES {
            let node = n % 3 + 1;
            n += 1;
            cells.push(
                check(
                    &api,
                    &mut world,
                    endpoint,
                    role,
                    node,
                    expected[role.index()],
                )
                .await?,
            );
        }
    }

    let failures = cells.iter().filter(|cell| cell.problem.is_some()).count();
    if failures > 0 {
        eprintln!("{}", render(&cells));
        bail!(
            "{failures} of {} cells do not match the table (printed above)",
            cells.len()
        );
    }
    eprintln!("t10: all {} cells match", cells.len());
    cluster.finish();
    Ok(())
}

async fn setup(api: &Api, cluster: &Cluster) -> Result<World> {
    let fixture = api.fixture()?.clone();
    let admin = cluster.admin_key()?;
    let op1 = fixture.operator.clone();
    let write1 = fixture.write_key.secret()?.to_string();
    let key =
        async |operator: &Operator, name: &str, permission: &str| -> Result<(String, String)> {
            let key = api
                .create_key(1, Some(&operator.id), name, &[permission])
                .await
                .with_context(|| format!("creating key {name}"))?;
            Ok((key.id.clone(), key.secret()?.to_string()))
        };
    let (_, report1) = key(&op1, "t10-report", "activity:report").await?;
    let (_, read1) = key(&op1, "t10-read", "read").await?;
    let (revoked_id, revoked1) = key(&op1, "t10-revoked", "write").await?;
    let op2 = api.create_operator(1, "t10-other").await?;
    let (_, write2) = key(&op2, "t10-other-write", "write").await?;
    api.revoke_key(1, &revoked_id).await?;

    let agent_a = api.create_agent(1, &write1, "t10-a", None).await?;
    let events: Vec<Value> = (0..A_EVENTS)
        .map(|i| json!({ "asn": agent_a.asn, "event_type": "seed", "metadata": { "i": i } }))
        .collect();
    api.report_batch(1, &admin, &events, None).await?;
    let mut fresh_agents = Vec::new();
    let mut fresh_keys = Vec::new();
    for role in ROLES {
        let name = format!("t10-fresh-{role:?}");
        fresh_agents.push(api.create_agent(1, &write1, &name, None).await?.asn);
        fresh_keys.push(key(&op1, &name, "read").await?.0);
    }
    api.wait_applied(&[1, 2, 3], CONDITION_TIMEOUT).await?;
    let bearer = |key: &str| Some(format!("Bearer {key}"));
    Ok(World {
        authorization: [
            None,
            Some("Bearer nope".to_string()),
            bearer(&revoked1),
            bearer(&write2),
            bearer(&report1),
            bearer(&read1),
            bearer(&write1),
            bearer(&admin),
        ],
        op1,
        op2,
        asn_a: agent_a.asn,
        a_events: A_EVENTS as u64,
        fresh_agents,
        fresh_keys,
    })
}

/// Sends one cell's request and judges the answer.
async fn check(
    api: &Api,
    world: &mut World,
    endpoint: Endpoint,
    role: Role,
    node: u64,
    expected: u16,
) -> Result<Cell> {
    let a = world.asn_a.clone();
    let (method, path, body) = match endpoint {
        Endpoint::Report => (
            Method::POST,
            "/api/v1/activity/report".to_string(),
            Some(
                json!({ "asn": a, "event_type": "t10", "metadata": { "role": format!("{role:?}") } }),
            ),
        ),
        Endpoint::Batch => (
            Method::POST,
            "/api/v1/activity/report/batch".to_string(),
            Some(json!({ "events": [
                { "asn": a, "event_type": "t10" },
                { "asn": a, "event_type": "t10" },
            ]})),
        ),
        Endpoint::Activity => (
            Method::GET,
            format!("/api/v1/agents/{a}/activity?per_page=50"),
            None,
        ),
        Endpoint::GetAgent => (Method::GET, format!("/api/v1/agents/{a}"), None),
        Endpoint::CreateAgent => {
            let mut body = json!({ "name": "x" });
            if role == Role::Admin {
                body["owner_id"] = json!(world.op1.id);
            }
            (Method::POST, "/api/v1/agents".to_string(), Some(body))
        }
        Endpoint::Deactivate => (
            Method::POST,
            format!(
                "/api/v1/agents/{}/deactivate",
                world.fresh_agents[role.index()]
            ),
            None,
        ),
        Endpoint::CreateOperator => (
            Method::POST,
            "/api/v1/operators".to_string(),
            Some(json!({ "name": "x" })),
        ),
        Endpoint::GetOperator => (
            Method::GET,
            format!("/api/v1/operators/{}", world.op1.id),
            None,
        ),
        Endpoint::CreateKey => (
            Method::POST,
            "/api/v1/keys".to_string(),
            Some(json!({ "operator_id": world.op1.id, "name": "k", "permissions": ["read"] })),
        ),
        Endpoint::RevokeKey => (
            Method::DELETE,
            format!("/api/v1/keys/{}", world.fresh_keys[role.index()]),
            None,
        ),
        Endpoint::AddNode => (
            Method::POST,
            "/api/v1/cluster/nodes".to_string(),
            Some(json!({ "id": 99, "grpc_addr": "bad", "http_addr": "bad" })),
        ),
        Endpoint::RemoveNode => (Method::DELETE, "/api/v1/cluster/nodes/99".to_string(), None),
    };
    let label = format!("{method} {}", template(&path, world));
    let body = match body {
        Some(value) => Body::Json(value),
        None => Body::None,
    };
    let authorization = world.authorization[role.index()].clone();
    let (got, answer) = api
        .request(method, node, &path, authorization.as_deref(), &[], body)
        .await
        .with_context(|| format!("{label} as {role:?} on node {node}"))?;

    // Keep A's event count current whatever the verdict.
    if got == 201 {
        match endpoint {
            Endpoint::Report => world.a_events += 1,
            Endpoint::Batch => world.a_events += 2,
            _ => {}
        }
    }
    let mut problem = None;
    if got != expected {
        problem = Some(format!("expected {expected}"));
    } else if got >= 400 {
        match envelope(&answer) {
            Ok((code, _)) if code == code_of(got) => {}
            Ok((code, _)) => problem = Some(format!("code {code}, expected {}", code_of(got))),
            Err(error) => problem = Some(format!("{error:#}")),
        }
    } else {
        problem = judge_success(world, endpoint, role, &answer);
    }
    Ok(Cell {
        endpoint: label,
        role,
        node,
        expected,
        got,
        body: answer.to_string().chars().take(160).collect(),
        problem,
    })
}

/// Checks of a successful answer beyond its status.
fn judge_success(world: &World, endpoint: Endpoint, role: Role, answer: &Value) -> Option<String> {
    match endpoint {
        Endpoint::Activity => {
            let total = answer["pagination"]["total"].as_u64();
            let expected = if role.is_public_reader() {
                PUBLIC_WINDOW
            } else {
                world.a_events
            };
            let listed = answer["data"].as_array().map_or(0, Vec::len) as u64;
            (total != Some(expected) || listed != expected.min(50)).then(|| {
                format!(
                    "total {total:?} with {listed} listed, expected total {expected} ({} history)",
                    if role.is_public_reader() {
                        "public"
                    } else {
                        "full"
                    }
                )
            })
        }
        Endpoint::CreateAgent => {
            let owner = if role == Role::OtherOperator {
                &world.op2.id
            } else {
                &world.op1.id
            };
            (answer["owner_id"] != json!(owner))
                .then(|| format!("owner_id {}, expected {owner}", answer["owner_id"]))
        }
        Endpoint::Deactivate => (answer["status"] != "deactivated")
            .then(|| format!("status {}, expected deactivated", answer["status"])),
        Endpoint::RevokeKey => {
            (answer["revoked"] != true).then(|| format!("revoked {}", answer["revoked"]))
        }
        Endpoint::Report => (role != Role::Admin && answer["reported_by"] != "operator")
            .then(|| format!("reported_by {}", answer["reported_by"])),
        _ => None,
    }
}

/// The path with ids replaced by their names, for the table.
fn template(path: &str, world: &World) -> String {
    let mut path = path
        .replace(&world.asn_a, "{A}")
        .replace(&world.op1.id, "{op1}");
    for asn in &world.fresh_agents {
        path = path.replace(asn, "{fresh agent}");
    }
    for id in &world.fresh_keys {
        path = path.replace(id, "{fresh key}");
    }
    path
}

fn render(cells: &[Cell]) -> String {
    let mut out = String::from("t10 authorization table (✗ marks a mismatch):\n");
    let _ = writeln!(
        out,
        "  {:<42} {:<14} {:>4} {:>8} {:>4}  body / problem",
        "endpoint", "role", "node", "expected", "got"
    );
    for cell in cells {
        let mark = if cell.problem.is_some() { "✗" } else { " " };
        let _ = writeln!(
            out,
            "{mark} {:<42} {:<14} {:>4} {:>8} {:>4}  {}{}",
            cell.endpoint,
            format!("{:?}", cell.role),
            cell.node,
            cell.expected,
            cell.got,
            cell.problem
                .as_ref()
                .map(|p| format!("[{p}] "))
                .unwrap_or_default(),
            cell.body
        );
    }
    out
}
