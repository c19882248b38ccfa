//! `ledgerctl`: the asn-ledger command line for operators and auditors (docs/LEDGERCTL.md).
//! Report and import events, query activity, manage operators, keys, agents and the cluster,
//! export the ledger and verify it without trusting any node.
//!
//! Exit codes: see [`ledgerctl::exit::Exit`] (0 ok, 1 failed, 2 usage or configuration,
//! 3 not found, 4 unauthorized or forbidden, 5 unavailable).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use ledgerctl::Keys;
use ledgerctl::client::Client;
use ledgerctl::client::Request;
use ledgerctl::client::encode_query;
use ledgerctl::exit::CtlError;
use ledgerctl::exit::EXIT_CODES_HELP;
use ledgerctl::exit::Exit;
use ledgerctl::import::IMPORT_BATCH_EVENTS_DEFAULT;
use ledgerctl::import::SERVER_BATCH_EVENTS_MAX;
use ledgerctl::table;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

/// Timeout of a membership change, in seconds: adding a node waits for it to catch up (the
/// server allows 120 s for that).
const MEMBERSHIP_TIMEOUT_SECS: u64 = 180;
/// The API's largest `per_page`: `--all` walks pages of this size.
const ACTIVITY_PER_PAGE_MAX: u32 = 50;
/// Widest table cell, in characters (metadata is cut; `--output json` has it whole).
const CELL_CHARS_MAX: usize = 60;

#[derive(Parser)]
#[command(
    name = "ledgerctl",
    version,
    about = "The asn-ledger command line: report and import events, query activity, manage \
             operators, keys, agents and the cluster, export the ledger and verify it offline.",
    after_help = EXIT_CODES_HELP,
    after_long_help = EXIT_CODES_HELP,
)]
struct Cli {
    /// Node URL, e.g. http://127.0.0.1:8081 (repeat the flag, or separate with commas). When
    /// a node cannot be reached the next one is tried. Else LEDGER_URL, else `urls` in the
    /// config file.
    #[arg(long = "url", global = true, value_name = "URL")]
    urls: Vec<String>,
    /// API key (asn_live_…). Else LEDGER_API_KEY, else `key` in the config file.
    #[arg(long, global = true, value_name = "KEY")]
    key: Option<String>,
    /// TOML config file with `urls = [...]` and `key = "..."` [default:
    /// $XDG_CONFIG_HOME/ledgerctl/config.toml, else ~/.config/ledgerctl/config.toml].
    #[arg(long, global = true, env = "LEDGERCTL_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
enum Format {
    /// Human-readable text.
    #[default]
    Table,
    /// The API's JSON.
    Json,
}

#[derive(clap::Args)]
struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Recompute an agent's trust score from its verified history and compare it with the
    /// score the node serves: exit 0 if equal, 1 if not (docs/TRUST_SCORE.md). With the owner's
    /// key the full history is read; without, only agents with at most 50 events can be checked.
    TrustScore {
        /// The agent's ASN.
        asn: String,
    },
    /// Report one event.
    ///
    /// POST /api/v1/activity/report. Needs a key with activity:report or write on the agent.
    #[command(after_help = EXIT_CODES_HELP)]
    Report {
        /// The agent's ASN.
        #[arg(long)]
        asn: String,
        /// Event type, 1–50 characters (task_completed, task_failed, error, incident,
        /// startup, shutdown, …).
        #[arg(long)]
        event_type: String,
        /// info (the server's default), warning, error or critical.
        #[arg(long)]
        severity: Option<String>,
        /// A JSON object with the event's details.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Idempotency-Key: sending the same key and event again returns the first event
        /// instead of recording a second. Without it a random key is used, so a resend to the
        /// next URL after a timeout cannot record the event twice.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Import events from a JSONL file, resumably.
    ///
    /// One report body per line (asn, event_type, severity, metadata), sent in batches through
    /// POST /api/v1/activity/report/batch. Each batch's Idempotency-Key is derived from its line
    /// range and content, so running the same command again after an interruption records
    /// nothing twice (docs/LEDGERCTL.md, "import"). Invalid lines are listed with their line
    /// numbers and do not stop the rest; the exit code is then 1. A progress bar is drawn on
    /// stderr when it is a terminal.
    #[command(after_help = EXIT_CODES_HELP)]
    Import {
        /// The JSONL file.
        file: PathBuf,
        /// Events per batch (at most the server's 1000).
        #[arg(long, default_value_t = IMPORT_BATCH_EVENTS_DEFAULT as u16,
              value_parser = clap::value_parser!(u16).range(1..=SERVER_BATCH_EVENTS_MAX as i64))]
        batch_size: u16,
        #[command(flatten)]
        output: OutputArg,
    },
    /// An agent's activity, newest first.
    ///
    /// GET /api/v1/agents/{asn}/activity. Without the owner's key (or admin), only the 50 most
    /// recent events are visible.
    #[command(after_help = EXIT_CODES_HELP)]
    Activity {
        /// The agent's ASN.
        asn: String,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// From this RFC 3339 date-time or date (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// To this RFC 3339 date-time or date (inclusive).
        #[arg(long)]
        to: Option<String>,
        /// Page number, from 1.
        #[arg(long)]
        page: Option<u32>,
        /// Events per page, 1–50 (the server's default: 20).
        #[arg(long)]
        per_page: Option<u32>,
        /// Walk every page (50 per request) and print all matching events.
        #[arg(long, conflicts_with = "page")]
        all: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Operators (admin key).
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Operators(Operators),
    /// API keys (admin key).
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Keys(KeysCommand),
    /// Agents.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Agents(Agents),
    /// The cluster: status, membership, leadership.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Cluster(ClusterCommand),
    /// Verify receipts, bundles or a live cluster.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Verify(Verify),
    /// Export the ledger as a bundle that `verify bundle` checks offline.
    ///
    /// The bundle holds the keys, a signed checkpoint and every event up to it, all read from
    /// the first --url that answers.
    #[command(after_help = EXIT_CODES_HELP)]
    Export {
        /// Where to write the bundle (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum Operators {
    /// Create an operator (POST /api/v1/operators).
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        /// 1–100 characters.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show an operator (GET /api/v1/operators/{id}).
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        id: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key for an operator (POST /api/v1/keys). The secret is printed once.
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        #[arg(long)]
        operator_id: String,
        /// 1–100 characters.
        #[arg(long)]
        name: String,
        /// activity:report, write, read or admin (repeat, or separate with commas).
        #[arg(long = "permission", value_delimiter = ',', required = true)]
        permissions: Vec<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Revoke an API key (DELETE /api/v1/keys/{id}).
    #[command(after_help = EXIT_CODES_HELP)]
    Revoke {
        /// The key's id (the 16 hex characters after asn_live_).
        id: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum Agents {
    /// Register an agent (POST /api/v1/agents); the cluster assigns its ASN. An operator's
    /// write key owns it; an admin key must name --owner-id.
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        /// 1–100 characters.
        #[arg(long)]
        name: String,
        /// The owning operator (required with an admin key).
        #[arg(long)]
        owner_id: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show an agent (GET /api/v1/agents/{asn}; public).
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        asn: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Deactivate an agent: later reports get 410; its history stays readable.
    #[command(after_help = EXIT_CODES_HELP)]
    Deactivate {
        asn: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every member: role, term, indexes, reachability (GET /api/v1/cluster).
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Add a started, empty node: learner, catch up, voter (admin; POST
    /// /api/v1/cluster/nodes).
    #[command(after_help = EXIT_CODES_HELP)]
    AddNode {
        /// Its node id (never used before in this cluster).
        #[arg(long)]
        id: u64,
        /// Its peer (gRPC) address, IP:port.
        #[arg(long)]
        grpc_addr: String,
        /// Its HTTP address, IP:port.
        #[arg(long)]
        http_addr: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Remove a node; its id is never used again (admin; DELETE /api/v1/cluster/nodes/{id}).
    #[command(after_help = EXIT_CODES_HELP)]
    RemoveNode {
        id: u64,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Make a voter the leader (admin; POST /api/v1/cluster/leader). Answers once it leads;
    /// exit 5 if it did not within the server's 10 s.
    #[command(after_help = EXIT_CODES_HELP)]
    TransferLeader {
        /// The node id of the voter to lead.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum Verify {
    /// Audit a live cluster over HTTP only (every --url): every node's keys agree; every
    /// node's chain, per-agent links, signatures and Merkle root match its signed checkpoint;
    /// checkpoints of equal size agree and smaller ones are consistent with larger ones;
    /// inclusion proofs verify.
    #[command(after_help = EXIT_CODES_HELP)]
    Audit {
        /// Also walk this agent's history through the activity API, checking each event's
        /// inclusion proof (with --key, the owner's full history; without, the public window
        /// of the 50 most recent events).
        #[arg(long)]
        asn: Option<String>,
    },
    /// Verify a receipt (the answer of GET /api/v1/ledger/entries/{seq}/proof) offline.
    #[command(after_help = EXIT_CODES_HELP)]
    Receipt {
        /// The receipt (JSON).
        receipt: PathBuf,
        /// The published keys (the answer of GET /api/v1/ledger/keys, JSON).
        #[arg(long)]
        keys: PathBuf,
    },
    /// Verify a bundle written by `ledgerctl export` offline.
    #[command(after_help = EXIT_CODES_HELP)]
    Bundle { bundle: PathBuf },
}

/// `println!` that ignores a closed stdout (`ledgerctl … | head`): the command still ends
/// with its own exit code.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn read_json(path: &PathBuf) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Prints one answer: the JSON as is, or as `field  value` lines.
fn print_object(value: &Value, output: &OutputArg) {
    match output.output {
        Format::Json => emit!("{}", pretty(value)),
        Format::Table => emit!("{}", table::fields(value)),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn activity_table(events: &[Value]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                text(&e["seq"]),
                text(&e["created_at"]),
                text(&e["event_type"]),
                text(&e["severity"]),
                text(&e["reported_by"]),
                text(&e["metadata"]),
            ]
        })
        .collect();
    table::render(
        &[
            "SEQ",
            "CREATED_AT",
            "TYPE",
            "SEVERITY",
            "REPORTED_BY",
            "METADATA",
        ],
        &rows,
        CELL_CHARS_MAX,
    )
}

struct ActivityQuery<'a> {
    asn: &'a str,
    event_type: Option<&'a str>,
    from: Option<&'a str>,
    to: Option<&'a str>,
}

impl ActivityQuery<'_> {
    fn path(&self, page: Option<u32>, per_page: Option<u32>) -> String {
        let mut params = Vec::new();
        if let Some(t) = self.event_type {
            params.push(format!("type={}", encode_query(t)));
        }
        if let Some(from) = self.from {
            params.push(format!("from={}", encode_query(from)));
        }
        if let Some(to) = self.to {
            params.push(format!("to={}", encode_query(to)));
        }
        if let Some(page) = page {
            params.push(format!("page={page}"));
        }
        if let Some(per_page) = per_page {
            params.push(format!("per_page={per_page}"));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        format!("/api/v1/agents/{}/activity{query}", encode_query(self.asn))
    }
}

/// Every page of the query; events seen twice (pages shift when new events arrive while
/// walking, newest first) are kept once.
fn activity_all(client: &Client, query: &ActivityQuery<'_>) -> Result<(Vec<Value>, u64)> {
    let mut events: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut page = 1;
    let mut total = 0;
    loop {
        let answer = client.get(&query.path(Some(page), Some(ACTIVITY_PER_PAGE_MAX)))?;
        let data = answer["data"]
            .as_array()
            .context("activity: `data` is not an array")?;
        for event in data {
            if seen.insert(event["seq"].as_u64()) {
                events.push(event.clone());
            }
        }
        total = total.max(answer["pagination"]["total"].as_u64().unwrap_or(0));
        let pages = answer["pagination"]["total_pages"].as_u64().unwrap_or(0);
        if u64::from(page) >= pages || data.is_empty() {
            break;
        }
        page += 1;
    }
    Ok((events, total))
}

fn cluster_table(status: &Value) -> String {
    let leader = status["leader_id"].as_u64();
    let rows: Vec<Vec<String>> = status["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let id = n["id"].as_u64();
            vec![
                format!(
                    "{}{}",
                    text(&n["id"]),
                    if id.is_some() && id == leader {
                        "*"
                    } else {
                        ""
                    }
                ),
                text(&n["role"]),
                if n["voter"].as_bool() == Some(true) {
                    "voter".into()
                } else {
                    "learner".into()
                },
                text(&n["reachable"]),
                text(&n["term"]),
                text(&n["last_log_index"]),
                text(&n["committed_index"]),
                text(&n["applied_index"]),
                text(&n["http_addr"]),
                text(&n["grpc_addr"]),
            ]
        })
        .collect();
    format!(
        "cluster {}  leader {}  (answered by node {})\n{}",
        text(&status["cluster_id"]),
        text(&status["leader_id"]),
        text(&status["this_node"]),
        table::render(
            &[
                "ID",
                "ROLE",
                "MEMBER",
                "REACHABLE",
                "TERM",
                "LOG",
                "COMMITTED",
                "APPLIED",
                "HTTP",
                "GRPC"
            ],
            &rows,
            CELL_CHARS_MAX
        )
    )
}

fn admin_request<'a>(method: Method, path: &'a str, body: Option<&'a Value>) -> Request<'a> {
    Request {
        method,
        path,
        body,
        headers: &[],
        repeatable: false,
        timeout: Some(Duration::from_secs(MEMBERSHIP_TIMEOUT_SECS)),
    }
}

fn run(cli: Cli) -> Result<Exit> {
    let env = |name: &str| std::env::var(name).ok();
    let settings =
        ledgerctl::config::resolve(&cli.urls, cli.key.as_deref(), cli.config.as_deref(), &env)?;
    // Offline commands need no URL.
    match &cli.command {
        Command::Verify(Verify::Receipt { receipt, keys }) => {
            let summary = ledgerctl::verify_receipt(
                &read_json(receipt)?,
                &Keys::from_json(&read_json(keys)?)?,
            )?;
            emit!("{summary}");
            return Ok(Exit::Ok);
        }
        Command::Verify(Verify::Bundle { bundle }) => {
            emit!("{}", ledgerctl::verify_bundle(&read_json(bundle)?)?);
            return Ok(Exit::Ok);
        }
        _ => {}
    }
    let client = Client::new(settings.urls.clone(), settings.key.clone())?;
    match cli.command {
        Command::Verify(Verify::Receipt { .. } | Verify::Bundle { .. }) => Ok(Exit::Ok),
        Command::Verify(Verify::Audit { asn }) => {
            let summary = ledgerctl::audit::audit(client.urls(), asn.as_deref(), client.key())?;
            emit!("{summary}");
            Ok(Exit::Ok)
        }
        Command::TrustScore { asn } => {
            // The first node that answers; the score and the history are read from it alone.
            client.get("/livez")?;
            let summary = ledgerctl::trust::run(&ledgerctl::trust::TrustScoreArgs {
                asn,
                url: client.current_url().to_owned(),
                key: client.key().map(str::to_owned),
            })?;
            emit!("{summary}");
            Ok(Exit::Ok)
        }
        Command::Export { output } => {
            // The first node that answers; the bundle is then read from it alone.
            client.get("/livez")?;
            emit!(
                "{}",
                ledgerctl::audit::export(client.current_url(), &output)?
            );
            Ok(Exit::Ok)
        }
        Command::Report {
            asn,
            event_type,
            severity,
            metadata,
            idempotency_key,
            output,
        } => {
            client.require_key()?;
            let mut body = json!({ "asn": asn, "event_type": event_type });
            if let Some(severity) = severity {
                body["severity"] = json!(severity);
            }
            if let Some(metadata) = metadata {
                let value: Value = serde_json::from_str(&metadata)
                    .map_err(|e| CtlError::usage(format!("--metadata: not JSON: {e}")))?;
                if !value.is_object() {
                    return Err(CtlError::usage("--metadata: must be a JSON object").into());
                }
                body["metadata"] = value;
            }
            let key = idempotency_key
                .unwrap_or_else(|| format!("ledgerctl-report-{}", uuid::Uuid::new_v4()));
            let headers = [("Idempotency-Key", key.as_str())];
            let event = client.send(&Request {
                headers: &headers,
                repeatable: true,
                ..Request::post("/api/v1/activity/report", &body)
            })?;
            print_object(&event, &output);
            Ok(Exit::Ok)
        }
        Command::Import {
            file,
            batch_size,
            output,
        } => {
            let (summary, exit) =
                ledgerctl::import::import(&client, &file, usize::from(batch_size))?;
            match output.output {
                Format::Json => emit!(
                    "{}",
                    pretty(&serde_json::to_value(&summary).unwrap_or_default())
                ),
                Format::Table => emit!("{}", summary.render()),
            }
            if exit != Exit::Ok {
                let why = summary
                    .stopped
                    .as_deref()
                    .unwrap_or("some lines were rejected");
                eprintln!("ledgerctl: import: {why}");
            }
            Ok(exit)
        }
        Command::Activity {
            asn,
            event_type,
            from,
            to,
            page,
            per_page,
            all,
            output,
        } => {
            let query = ActivityQuery {
                asn: &asn,
                event_type: event_type.as_deref(),
                from: from.as_deref(),
                to: to.as_deref(),
            };
            if all {
                let (events, total) = activity_all(&client, &query)?;
                match output.output {
                    Format::Json => {
                        emit!("{}", pretty(&json!({ "data": events, "total": total })))
                    }
                    Format::Table => {
                        emit!("{}", activity_table(&events));
                        emit!("{} events (total {total})", events.len());
                    }
                }
            } else {
                let answer = client.get(&query.path(page, per_page))?;
                match output.output {
                    Format::Json => emit!("{}", pretty(&answer)),
                    Format::Table => {
                        let events = answer["data"].as_array().cloned().unwrap_or_default();
                        let p = &answer["pagination"];
                        emit!("{}", activity_table(&events));
                        emit!(
                            "page {} of {} ({} per page), total {}",
                            text(&p["page"]),
                            text(&p["total_pages"]),
                            text(&p["per_page"]),
                            text(&p["total"])
                        );
                    }
                }
            }
            Ok(Exit::Ok)
        }
        Command::Operators(Operators::Create { name, output }) => {
            client.require_key()?;
            print_object(
                &client.post("/api/v1/operators", &json!({ "name": name }))?,
                &output,
            );
            Ok(Exit::Ok)
        }
        Command::Operators(Operators::Get { id, output }) => {
            print_object(
                &client.get(&format!("/api/v1/operators/{}", encode_query(&id)))?,
                &output,
            );
            Ok(Exit::Ok)
        }
        Command::Keys(KeysCommand::Create {
            operator_id,
            name,
            permissions,
            output,
        }) => {
            client.require_key()?;
            let body =
                json!({ "operator_id": operator_id, "name": name, "permissions": permissions });
            print_object(&client.post("/api/v1/keys", &body)?, &output);
            Ok(Exit::Ok)
        }
        Command::Keys(KeysCommand::Revoke { id, output }) => {
            client.require_key()?;
            let path = format!("/api/v1/keys/{}", encode_query(&id));
            let answer = client.send(&Request {
                method: Method::DELETE,
                repeatable: true,
                ..Request::get(&path)
            })?;
            print_object(&answer, &output);
            Ok(Exit::Ok)
        }
        Command::Agents(Agents::Create {
            name,
            owner_id,
            output,
        }) => {
            client.require_key()?;
            let mut body = json!({ "name": name });
            if let Some(owner_id) = owner_id {
                body["owner_id"] = json!(owner_id);
            }
            print_object(&client.post("/api/v1/agents", &body)?, &output);
            Ok(Exit::Ok)
        }
        Command::Agents(Agents::Get { asn, output }) => {
            print_object(
                &client.get(&format!("/api/v1/agents/{}", encode_query(&asn)))?,
                &output,
            );
            Ok(Exit::Ok)
        }
        Command::Agents(Agents::Deactivate { asn, output }) => {
            client.require_key()?;
            let path = format!("/api/v1/agents/{}/deactivate", encode_query(&asn));
            let answer = client.send(&Request {
                method: Method::POST,
                repeatable: true,
                ..Request::get(&path)
            })?;
            print_object(&answer, &output);
            Ok(Exit::Ok)
        }
        Command::Cluster(ClusterCommand::Status { output }) => {
            let status = client.get("/api/v1/cluster")?;
            match output.output {
                Format::Json => emit!("{}", pretty(&status)),
                Format::Table => emit!("{}", cluster_table(&status)),
            }
            Ok(Exit::Ok)
        }
        Command::Cluster(ClusterCommand::AddNode {
            id,
            grpc_addr,
            http_addr,
            output,
        }) => {
            client.require_key()?;
            let body = json!({ "id": id, "grpc_addr": grpc_addr, "http_addr": http_addr });
            let answer = client.send(&admin_request(
                Method::POST,
                "/api/v1/cluster/nodes",
                Some(&body),
            ))?;
            print_object(&answer, &output);
            Ok(Exit::Ok)
        }
        Command::Cluster(ClusterCommand::RemoveNode { id, output }) => {
            client.require_key()?;
            let path = format!("/api/v1/cluster/nodes/{id}");
            let answer = client.send(&admin_request(Method::DELETE, &path, None))?;
            print_object(&answer, &output);
            Ok(Exit::Ok)
        }
        Command::Cluster(ClusterCommand::TransferLeader { to, output }) => {
            client.require_key()?;
            let body = json!({ "node_id": to });
            // The server gives up after 10 s: the default timeout is enough.
            let answer = client.send(&Request {
                repeatable: true,
                ..Request::post("/api/v1/cluster/leader", &body)
            })?;
            print_object(&answer, &output);
            Ok(Exit::Ok)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(exit) => exit,
        Err(error) => {
            let exit = ledgerctl::exit::exit_of(&error);
            let label = if exit == Exit::Failed { "FAILED: " } else { "" };
            eprintln!(
                "ledgerctl: {label}{}",
                format!("{error:#}").replace('\n', " ")
            );
            exit
        }
    };
    std::process::exit(code.code());
}
