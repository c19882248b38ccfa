//! What the store costs per event on one node, without the network: log appends (with their
//! fsync) and applies of batches of events, as a ledger node does them.
//!
//!     cargo run --release -p raft-store --example store_cost -- [EVENTS_PER_ENTRY] [ENTRIES] [EVENTS_PER_REQUEST] [RANDOM_KEYS]
//!
//! Dedup keys are generated ones (as `ledgerd` makes them for writes without an
//! `Idempotency-Key`, kept in the txlog window), or random with `RANDOM_KEYS` = 1 (as derived
//! from clients' keys, kept in `sm_tx`).

use std::time::Instant;

use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use raft_store::ApiKeyRecord;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::Entry;
use raft_store::LogId;
use raft_store::NewEvent;
use raft_store::NodeRecord;
use raft_store::Permission;
use raft_store::Proposal;
use raft_store::Request;
use raft_store::Severity;
use raft_store::TxKey;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN: &str = "00000000000000a1";

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn proposal(n: u64, command: Command, random_keys: bool) -> Proposal {
    // Random keys stand for clients' `Idempotency-Key`s (kept in `sm_tx`); the others are
    // generated keys (kept in the txlog window), made at the time of the entries below.
    let dedup_key = if random_keys {
        raft_store::chain::sha256(&n.to_be_bytes())
    } else {
        let random: [u8; 16] = raft_store::chain::sha256(&n.to_be_bytes())[..16]
            .try_into()
            .expect("16 bytes");
        raft_store::dedup::generated_dedup_key(
            1_790_000_000_000_000_000 + n,
            1_790_000_000_000,
            random,
        )
    };
    Proposal {
        tx: TxKey {
            dedup_key,
            body_hash: [1; 32],
        },
        command,
    }
}

fn entry(index: u64, commands: Vec<Proposal>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms: 1_790_000_000_000 + index as i64,
            commands,
        }),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `ledgerd` does (node/src/main.rs): with transparent huge pages, the fresh buffers sled
    // fills would be faulted in as zeroed 2 MiB pages, a cost the server does not pay.
    // A kernel without the flag (before 3.15) keeps them, as it does for `ledgerd`.
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("store_cost: warning: cannot turn off transparent huge pages: {error}");
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let per_entry = args.first().copied().unwrap_or(1000);
    let entries = args.get(1).copied().unwrap_or(50);
    // Events per proposal (per request): all of an entry's by default, 1 for single reports.
    let per_proposal = args.get(2).copied().unwrap_or(per_entry).max(1);
    let random_keys = args.get(3).copied().unwrap_or(0) == 1;
    let dir = tempfile::tempdir()?;
    let (log, mut sm) = raft_store::open(dir.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let node = NodeRecord {
            id: 1,
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            public_key: [0; 32],
            retired: false,
        };
        let admin = ApiKeyRecord {
            id: ADMIN.into(),
            name: "admin".into(),
            operator_id: None,
            permissions: vec![Permission::Admin],
            secret_sha256: [7; 32],
            created_at_ms: 0,
            revoked: false,
        };
        let init = Command::InitCluster {
            cluster_id: "c".into(),
            admin_key: admin,
            node,
        };
        let operator = Command::CreateOperator {
            by: ADMIN.into(),
            name: "acme".into(),
        };
        let r = sm
            .apply(vec![entry(1, vec![proposal(1, init, random_keys), proposal(2, operator, random_keys)])])
            .await?;
        let CommandResult::Operator(operator) = &r[0].results[1] else {
            return Err("no operator".into());
        };
        let agents = (0..100)
            .map(|i| {
                proposal(
                    10 + i,
                    Command::CreateAgent {
                        by: ADMIN.into(),
                        name: format!("a{i}"),
                        owner_id: operator.id.clone(),
                    },
                    random_keys,
                )
            })
            .collect();
        let r = sm.apply(vec![entry(2, agents)]).await?;
        let asns: Vec<String> = r[0]
            .results
            .iter()
            .filter_map(|r| match r {
                CommandResult::Agent(a) => Some(a.asn.clone()),
                _ => None,
            })
            .collect();
        let metadata = format!(r#"{{"task_id":"scan-42","detail":"{}"}}"#, "x".repeat(170));
        let mut built = Vec::new();
        let mut n = 1000u64;
        for index in 3..3 + entries {
            let mut proposals = Vec::new();
            let events: Vec<NewEvent> = (0..per_entry)
                .map(|i| NewEvent {
                    asn: asns[((index * per_entry + i) % 100) as usize].clone(),
                    event_type: "task_completed".into(),
                    severity: Severity::Info,
                    metadata_json: metadata.clone(),
                })
                .collect();
            for events in events.chunks(per_proposal as usize) {
                n += 1;
                proposals.push(proposal(
                    n,
                    Command::AppendEvents {
                        by: ADMIN.into(),
                        events: events.to_vec(),
                    },
                    random_keys,
                ));
            }
            built.push(entry(index, proposals));
        }
        let total = (per_entry * entries) as f64;
        let started = Instant::now();
        for e in &built {
            log.clone().blocking_append(vec![e.clone()]).await?;
        }
        let append = started.elapsed();
        let started = Instant::now();
        for e in built {
            sm.apply(vec![e]).await?;
        }
        let apply = started.elapsed();
        println!(
            "{entries} entries of {per_entry} events: log append+fsync {:.1} us/event, apply {:.1} us/event",
            append.as_secs_f64() * 1e6 / total,
            apply.as_secs_f64() * 1e6 / total
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
