//! Our own storage tests, beside openraft's suite: what survives a reopen, the ledger's
//! invariants when applying (dense `seq`, intact chain, dedup, authorization at apply, indexes),
//! snapshots that replace the whole state, and corruption found at open.

use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use raft_store::ActivityQuery;
use raft_store::ApiKeyRecord;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::Entry;
use raft_store::Event;
use raft_store::LogId;
use raft_store::NewEvent;
use raft_store::NodeRecord;
use raft_store::Permission;
use raft_store::Proposal;
use raft_store::RejectCode;
use raft_store::Request;
use raft_store::Severity;
use raft_store::StateMachineStore;
use raft_store::TxKey;
use raft_store::Vote;
use raft_store::chain;

const ADMIN: &str = "00000000000000a1";

/// The sled key of the event chunk that starts at event 1: space tag 1 (events), then the seq.
const EVENT_1: [u8; 9] = [1, 0, 0, 0, 0, 0, 0, 0, 1];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn new_event(asn: &str, event_type: &str) -> NewEvent {
    NewEvent {
        asn: asn.to_owned(),
        event_type: event_type.to_owned(),
        severity: Severity::Info,
        metadata_json: r#"{"k":1}"#.into(),
    }
}

fn append_as(by: &str, tx: u8, body: u8, asns: &[&str]) -> Proposal {
    Proposal {
        tx: TxKey {
            dedup_key: [tx; 32],
            body_hash: [body; 32],
        },
        command: Command::AppendEvents {
            by: by.to_owned(),
            events: asns
                .iter()
                .map(|asn| new_event(asn, "task_completed"))
                .collect(),
        },
    }
}

/// A proposal with a dedup key of its own (distinct from the `[tx; 32]` keys of `append_as`).
fn once(command: Command) -> Proposal {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut dedup_key = [0xff; 32];
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dedup_key[..8].copy_from_slice(&n.to_be_bytes());
    Proposal {
        tx: TxKey {
            dedup_key,
            body_hash: [0; 32],
        },
        command,
    }
}

fn append(tx: u8, body: u8, asns: &[&str]) -> Proposal {
    append_as(ADMIN, tx, body, asns)
}

fn entry(index: u64, proposed_at_ms: i64, commands: Vec<Proposal>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms,
            commands,
        }),
    }
}

fn key(id: &str, operator_id: Option<&str>, permissions: &[Permission]) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: id.into(),
        operator_id: operator_id.map(str::to_owned),
        permissions: permissions.to_vec(),
        secret_sha256: [7; 32],
        created_at_ms: 0,
        revoked: false,
    }
}

/// Initialises the cluster (admin key `ADMIN`), creates an operator and one agent per name in
/// log entries 1 and 2. Returns the operator id and the agents' ASNs in order.
async fn setup(sm: &mut StateMachineStore, names: &[&str]) -> (String, Vec<String>) {
    let node = NodeRecord {
        id: 1,
        grpc_addr: "127.0.0.1:1".into(),
        http_addr: "127.0.0.1:2".into(),
        public_key: [0; 32],
        retired: false,
    };
    let init = Command::InitCluster {
        cluster_id: "c".into(),
        admin_key: key(ADMIN, None, &[Permission::Admin]),
        node,
    };
    let operator = Command::CreateOperator {
        by: ADMIN.into(),
        name: "acme".into(),
    };
    let responses = sm
        .apply(vec![entry(1, 1, vec![once(init), once(operator)])])
        .await
        .expect("apply setup");
    let CommandResult::Operator(operator) = &responses[0].results[1] else {
        panic!("expected an operator, got {:?}", responses[0].results[1]);
    };
    let agents = names
        .iter()
        .map(|name| Command::CreateAgent {
            by: ADMIN.into(),
            name: (*name).into(),
            owner_id: operator.id.clone(),
        })
        .map(once)
        .collect();
    let responses = sm
        .apply(vec![entry(2, 1, agents)])
        .await
        .expect("apply agents");
    let asns = responses[0]
        .results
        .iter()
        .map(|result| match result {
            CommandResult::Agent(agent) => agent.asn.clone(),
            other => panic!("expected an agent, got {other:?}"),
        })
        .collect();
    (operator.id.clone(), asns)
}

fn appended(result: &CommandResult) -> (&[Event], bool) {
    match result {
        CommandResult::Appended { events, replayed } => (events, *replayed),
        other => panic!("expected Appended, got {other:?}"),
    }
}

fn rejected(result: &CommandResult) -> (RejectCode, &str) {
    match result {
        CommandResult::Rejected { code, message } => (*code, message),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Checks the chain from genesis: dense seq from 1, each prev_hash is the previous hash, each
/// hash recomputes, created_at never decreases.
fn assert_chain(events: &[Event]) {
    let mut prev = [0u8; 32];
    let mut prev_time = i64::MIN;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "seq is dense");
        assert_eq!(
            event.prev_hash, prev,
            "event {} links to its predecessor",
            event.seq
        );
        assert_eq!(
            chain::event_hash(event),
            event.hash,
            "event {} hash recomputes",
            event.seq
        );
        assert!(
            event.created_at_ms >= prev_time,
            "created_at of event {} went back",
            event.seq
        );
        prev = event.hash;
        prev_time = event.created_at_ms;
    }
}

/// Where the records of a log segment end (segments are allocated whole: zeros follow), from
/// the lengths in their headers.
fn written_len(segment: &[u8]) -> usize {
    const HEADER: usize = raft_store::wal::RECORD_HEADER_BYTES;
    let mut at = 0;
    while let Some(header) = segment.get(at..at + HEADER)
        && header.iter().any(|b| *b != 0)
    {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        at += HEADER + len as usize;
    }
    at
}

/// The newest `limit` events of `asn`, all types and dates.
fn newest(ledger: &raft_store::Ledger, asn: &str, limit: usize) -> raft_store::ActivityPage {
    ledger
        .agent_activity(ActivityQuery {
            asn,
            event_type: None,
            from_ms: None,
            to_ms: None,
            window: None,
            skip: 0,
            limit,
        })
        .expect("activity")
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[test]
fn applying_builds_a_dense_chain_dedupes_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (mut log, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["one", "two", "three"]).await;
        let (a1, a2, a3) = (asns[0].as_str(), asns[1].as_str(), asns[2].as_str());
        let vote = Vote::new(3, 1);
        log.save_vote(&vote).await.expect("save vote");
        let entries = vec![
            entry(3, 1_000, vec![append(1, 1, &[a1, a2]), append(2, 2, &[a1])]),
            // The clock went back on a new leader: created_at must not.
            entry(4, 500, vec![append(3, 3, &[a2])]),
            // A retry of tx 1 with the same body, and one with another body.
            entry(5, 2_000, vec![append(1, 1, &[a1, a2]), append(1, 9, &[a3])]),
        ];
        log.blocking_append(entries.clone()).await.expect("append");
        let responses = sm.apply(entries).await.expect("apply");
        assert_eq!(responses.len(), 3);
        let (first, replayed) = appended(&responses[0].results[0]);
        assert!(!replayed);
        assert_eq!(seqs(first), [1, 2]);
        let (again, replayed) = appended(&responses[2].results[0]);
        assert!(replayed, "same dedup key and body is a replay");
        assert_eq!(again, first, "a replay returns the original events");
        assert_eq!(rejected(&responses[2].results[1]).0, RejectCode::Conflict);
        let (late, _) = appended(&responses[1].results[0]);
        assert_eq!(
            late[0].created_at_ms, 1_000,
            "created_at is clamped to the previous event's"
        );
        drop((log, sm));

        // Everything is there after reopening, and nothing more.
        let (mut log, mut sm) = raft_store::open(dir.path()).expect("reopen");
        assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(5)));
        assert_eq!(
            log.try_get_log_entries(3..6).await.expect("entries").len(),
            3
        );
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(5)));
        let ledger = sm.ledger();
        let events = ledger.events_from(1, 100).expect("events");
        assert_eq!(events.len(), 4);
        assert_chain(&events);
        assert_eq!(ledger.head().expect("head").head_hash, events[3].hash);
        assert_eq!(ledger.agent_event_count(a2).expect("count"), 2);
        assert_eq!(ledger.agent_event_count(a3).expect("count"), 0);
    });
}

#[test]
fn authorization_is_decided_when_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (owner, asns) = setup(&mut sm, &["mine", "retired"]).await;
        let (mine, retired) = (asns[0].as_str(), asns[1].as_str());
        let other_operator = Command::CreateOperator {
            by: ADMIN.into(),
            name: "other".into(),
        };
        let responses = sm
            .apply(vec![entry(3, 1, vec![once(other_operator)])])
            .await
            .expect("apply");
        let CommandResult::Operator(other) = &responses[0].results[0] else {
            panic!("operator")
        };
        let keys = vec![
            once(Command::CreateKey {
                by: ADMIN.into(),
                key: key("report", Some(&owner), &[Permission::ActivityReport]),
            }),
            once(Command::CreateKey {
                by: ADMIN.into(),
                key: key("read", Some(&owner), &[Permission::Read]),
            }),
            once(Command::CreateKey {
                by: ADMIN.into(),
                key: key("other", Some(&other.id), &[Permission::Write]),
            }),
            once(Command::CreateKey {
                by: "report".into(),
                key: key("sneaky", None, &[Permission::Admin]),
            }),
            once(Command::DeactivateAgent {
                by: ADMIN.into(),
                asn: retired.into(),
            }),
        ];
        let responses = sm.apply(vec![entry(4, 1, keys)]).await.expect("apply keys");
        assert_eq!(
            rejected(&responses[0].results[3]).0,
            RejectCode::Forbidden,
            "only admins create keys"
        );
        // The key check's cache holds the key now (`Ledger::api_key`)...
        let ledger = sm.ledger().clone();
        let read = |id: &str| ledger.api_key(id).expect("read key").expect("key");
        assert!(!read("report").revoked);
        assert!(!read("report").revoked, "read again, from memory");
        let commands = vec![
            append_as("report", 1, 0, &[mine]),
            append_as("read", 2, 0, &[mine]),
            append_as("other", 3, 0, &[mine]),
            append_as("nobody", 4, 0, &[mine]),
            append_as("report", 5, 0, &[retired]),
            append_as("report", 6, 0, &[mine, "ASN-2026-0000-0000-A"]),
            once(Command::RevokeKey {
                by: ADMIN.into(),
                key_id: "report".into(),
            }),
            append_as("report", 7, 0, &[mine]),
            // A retry of tx 1 after the revocation returns the first result.
            append_as("report", 1, 0, &[mine]),
        ];
        let responses = sm
            .apply(vec![entry(5, 1, commands)])
            .await
            .expect("apply events");
        let results = &responses[0].results;
        assert_eq!(seqs(appended(&results[0]).0), [1]);
        assert_eq!(
            rejected(&results[1]).0,
            RejectCode::Forbidden,
            "read keys do not report"
        );
        assert_eq!(
            rejected(&results[2]).0,
            RejectCode::Forbidden,
            "another operator's key"
        );
        assert_eq!(
            rejected(&results[3]).0,
            RejectCode::Unauthorized,
            "unknown key"
        );
        assert_eq!(
            rejected(&results[4]).0,
            RejectCode::Gone,
            "deactivated agent"
        );
        let (code, message) = rejected(&results[5]);
        assert_eq!(code, RejectCode::NotFound);
        assert!(message.starts_with("events[1]"), "{message}");
        assert!(matches!(results[6], CommandResult::Key(ref k) if k.revoked));
        // ...and sees its revocation as soon as it is applied.
        assert!(
            read("report").revoked,
            "the cache forgot the key when it changed"
        );
        assert_eq!(
            rejected(&results[7]).0,
            RejectCode::Unauthorized,
            "revoked key"
        );
        assert_eq!(seqs(appended(&results[8]).0), [1]);
        assert_eq!(
            sm.ledger().head().expect("head").size,
            1,
            "refused commands recorded nothing"
        );
    });
}

#[test]
fn activity_queries_page_filter_and_window_through_the_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["a", "b"]).await;
        let (a, b) = (asns[0].as_str(), asns[1].as_str());
        // 120 events of `a` at times 1000, 1010, …; every third is an incident; `b` interleaves.
        let mut entries = Vec::new();
        for i in 0..120u64 {
            let event_type = if i % 3 == 0 {
                "incident"
            } else {
                "task_completed"
            };
            let mut dedup_key = [0u8; 32];
            dedup_key[..8].copy_from_slice(&i.to_be_bytes());
            let command = Proposal {
                tx: TxKey {
                    dedup_key,
                    body_hash: [0; 32],
                },
                command: Command::AppendEvents {
                    by: ADMIN.into(),
                    events: vec![new_event(a, event_type), new_event(b, "startup")],
                },
            };
            entries.push(entry(3 + i, 1_000 + 10 * i as i64, vec![command]));
        }
        sm.apply(entries).await.expect("apply");
        let ledger = sm.ledger();
        let query = |event_type, from_ms, to_ms, window, skip, limit| {
            ledger
                .agent_activity(ActivityQuery {
                    asn: a,
                    event_type,
                    from_ms,
                    to_ms,
                    window,
                    skip,
                    limit,
                })
                .expect("query")
        };
        // Newest first; a's events have odd seqs 1, 3, …, 239.
        let page = query(None, None, None, None, 0, 3);
        assert_eq!(page.total, 120);
        assert_eq!(seqs(&page.events), [239, 237, 235]);
        let last = query(None, None, None, None, 118, 20);
        assert_eq!(seqs(&last.events), [3, 1]);
        assert!(query(None, None, None, None, 120, 20).events.is_empty());
        // The public window: only the 50 most recent exist.
        let window = query(None, None, None, Some(50), 40, 20);
        assert_eq!(window.total, 50);
        assert_eq!(
            seqs(&window.events),
            (0..10).map(|k| 239 - 2 * (40 + k)).collect::<Vec<_>>()
        );
        // By type: incidents are i = 0, 3, …, 117 (40 of them).
        let incidents = query(Some("incident"), None, None, None, 0, 50);
        assert_eq!(incidents.total, 40);
        assert!(incidents.events.iter().all(|e| e.event_type == "incident"));
        assert_eq!(incidents.events[0].seq, 2 * 117 + 1);
        // By time, inclusive: i in 10..=19.
        let range = query(None, Some(1_100), Some(1_190), None, 0, 50);
        assert_eq!(range.total, 10);
        assert_eq!(
            seqs(&range.events),
            (10..20).rev().map(|i| 2 * i + 1).collect::<Vec<_>>()
        );
        // Type and time together, under a window: incidents with i in 10..=19 are 12, 15, 18.
        let both = query(Some("incident"), Some(1_100), Some(1_190), Some(2), 0, 50);
        assert_eq!(both.total, 2);
        assert_eq!(seqs(&both.events), [37, 31]);
        assert_eq!(query(None, Some(5_000), None, None, 0, 50).total, 0);
        assert_eq!(query(Some("nothing"), None, None, None, 0, 50).total, 0);
    });
}

/// Sets up `source` (one agent), applies entries 3 to 7 (a report each) and builds a snapshot
/// of it at log id 7.
async fn snapshot_of_five_reports(
    source: &mut StateMachineStore,
) -> openraft::Snapshot<raft_store::TypeConfig> {
    let (_, asns) = setup(source, &["s"]).await;
    let entries: Vec<Entry> = (3..=7)
        .map(|i| entry(i, i as i64, vec![append(i as u8, 0, &[asns[0].as_str()])]))
        .collect();
    source.apply(entries).await.expect("apply source");
    source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

#[test]
fn a_snapshot_replaces_the_whole_state_of_another_store() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let snapshot = snapshot_of_five_reports(&mut source).await;
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(7)));

        // The target has other, older state: it must be gone after the install.
        let (_, mut target) = raft_store::open(target_dir.path()).expect("open target");
        let (_, other) = setup(&mut target, &["t1", "t2"]).await;
        target
            .apply(vec![entry(3, 1, vec![append(99, 0, &[other[1].as_str()])])])
            .await
            .expect("apply");
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        let target_events = target.ledger().events_from(1, 100).expect("target events");
        let source_events = source.ledger().events_from(1, 100).expect("source events");
        assert_eq!(target_events, source_events);
        assert_chain(&target_events);
        assert!(target.ledger().agent(&other[1]).expect("agent").is_none());
        assert_eq!(
            target.ledger().agent_event_count(&other[1]).expect("count"),
            0
        );
        let (applied, _) = target.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(7)));
        let current = target
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta, snapshot.meta);
        drop(target);
        // The installed snapshot is a file that survives a reopen.
        let (_, mut reopened) = raft_store::open(target_dir.path()).expect("reopen target");
        let current = reopened
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta.last_log_id, Some(log_id(7)));
        // Later calls read the file again (the payload is not kept in memory).
        let again = reopened
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(again.meta, current.meta);
        assert_eq!(again.snapshot.into_inner(), current.snapshot.into_inner());
    });
}

/// At start openraft asks for the current snapshot once: it gets the file as the store's open
/// read and checked it, not a second read of the file.
#[test]
fn the_first_current_snapshot_after_open_is_the_one_open_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut store) = raft_store::open(dir.path()).expect("open");
        let snapshot = snapshot_of_five_reports(&mut store).await;
        drop(store);
        let (_, mut reopened) = raft_store::open(dir.path()).expect("reopen");
        let file = dir.path().join("snapshot").join("current");
        std::fs::remove_file(&file).expect("the snapshot file is there");
        let first = reopened
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("the snapshot open read");
        assert_eq!(first.meta, snapshot.meta);
        // The next call reads the file, which is gone now.
        assert!(
            reopened
                .get_current_snapshot()
                .await
                .expect("current")
                .is_none()
        );
    });
}

/// A purge past the end of the log (what openraft 0.9 asks for right after it hands a
/// snapshot to the state machine, before the install ends) is recorded only once the state
/// machine holds the snapshot, and fails if the install failed: a crash in between must never
/// leave a log purged past a state machine that did not get the snapshot.
#[test]
fn a_purge_past_the_log_waits_for_the_snapshot_install() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    let failing_dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let snapshot = snapshot_of_five_reports(&mut source).await;
        let last = snapshot.meta.last_log_id.expect("a log id");

        let (mut log, mut target) = raft_store::open(target_dir.path()).expect("open target");
        // As the node's gRPC server does before it hands a snapshot to openraft.
        log.expect_snapshot_install(Some(last));
        let mut purge = tokio::spawn(async move { log.purge(last).await });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut purge)
                .await
                .is_err(),
            "the purge ended before the snapshot was installed"
        );
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        purge.await.expect("purge task").expect("purge");
        drop(target);
        let (mut log, mut reopened) = raft_store::open(target_dir.path()).expect("reopen");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(last));
        let (applied, _) = reopened.applied_state().await.expect("applied");
        assert_eq!(applied, Some(last));

        // An install that fails (data that is no snapshot) fails the purge that waits for it.
        let (mut log, mut failing) = raft_store::open(failing_dir.path()).expect("open");
        log.expect_snapshot_install(Some(last));
        let purge = tokio::spawn(async move { log.purge(last).await });
        let garbage = Box::new(std::io::Cursor::new(vec![0xff; 64]));
        assert!(
            failing
                .install_snapshot(&snapshot_meta_of(last), garbage)
                .await
                .is_err()
        );
        let refused = purge
            .await
            .expect("purge task")
            .expect_err("purge after a failed install");
        assert!(
            refused.to_string().contains("not installed"),
            "unexpected error: {refused}"
        );
    });
}

fn snapshot_meta_of(last: LogId) -> raft_store::SnapshotMeta {
    raft_store::SnapshotMeta {
        last_log_id: Some(last),
        last_membership: raft_store::StoredMembership::default(),
        snapshot_id: "garbage".into(),
    }
}

/// Entries `first..=last`, each appending one event for each of `asns` (same UTC day, so
/// the agents' day counts are rewritten), every fourth also creating an agent.
fn busy_entries(first: u64, last: u64, asns: &[String], operator: &str) -> Vec<Entry> {
    (first..=last)
        .map(|i| {
            let mut dedup_key = [0xee; 32];
            dedup_key[..8].copy_from_slice(&i.to_be_bytes());
            let mut commands = vec![Proposal {
                tx: TxKey {
                    dedup_key,
                    body_hash: [1; 32],
                },
                command: Command::AppendEvents {
                    by: ADMIN.into(),
                    events: asns
                        .iter()
                        .map(|asn| new_event(asn, "task_completed"))
                        .collect(),
                },
            }];
            if i % 4 == 0 {
                commands.push(once(Command::CreateAgent {
                    by: ADMIN.into(),
                    name: format!("a{i}"),
                    owner_id: operator.to_owned(),
                }));
            }
            entry(i, 1_000 + i as i64, commands)
        })
        .collect()
}

/// A built snapshot's meta and bytes.
async fn built(
    mut builder: impl RaftSnapshotBuilder<raft_store::TypeConfig>,
) -> (raft_store::SnapshotMeta, Vec<u8>) {
    let snapshot = builder.build_snapshot().await.expect("build");
    (snapshot.meta, snapshot.snapshot.into_inner())
}

fn assert_same_snapshot(
    busy: &(raft_store::SnapshotMeta, Vec<u8>),
    quiet: &(raft_store::SnapshotMeta, Vec<u8>),
) {
    assert_eq!(busy.0, quiet.0);
    assert!(
        busy.1 == quiet.1,
        "the snapshot differs from the state at {:?}",
        quiet.0.last_log_id
    );
}

/// A snapshot holds the state at the log id its copy began at, whatever is applied while it is
/// read: the same bytes as a snapshot built with nothing applied after that log id. First with
/// every later apply done before the copy reads (each key it reads is a later value, put back),
/// then with applies running while it reads.
#[test]
fn a_snapshot_holds_the_state_its_copy_began_at_while_applies_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (operator, asns) = setup(&mut sm, &["s", "t", "u"]).await;
        sm.apply(busy_entries(3, 40, &asns, &operator))
            .await
            .expect("apply");
        let quiet = built(sm.get_snapshot_builder().await).await;
        assert_eq!(quiet.0.last_log_id, Some(log_id(40)));
        let builder = sm.get_snapshot_builder().await;
        sm.apply(busy_entries(41, 80, &asns, &operator))
            .await
            .expect("apply");
        assert_same_snapshot(&built(builder).await, &quiet);

        let quiet = built(sm.get_snapshot_builder().await).await;
        assert_eq!(quiet.0.last_log_id, Some(log_id(80)));
        let builder = sm.get_snapshot_builder().await;
        let applies = async {
            for i in 81..=400 {
                sm.apply(busy_entries(i, i, &asns, &operator))
                    .await
                    .expect("apply");
                tokio::task::yield_now().await;
            }
        };
        let (busy, ()) = tokio::join!(built(builder), applies);
        assert_same_snapshot(&busy, &quiet);

        // And a store that installs it holds the state at 80.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let (_, mut other) = raft_store::open(other_dir.path()).expect("open other");
        other
            .install_snapshot(&busy.0, Box::new(std::io::Cursor::new(busy.1)))
            .await
            .expect("install");
        assert_eq!(other.ledger().head().expect("head").size, 80 * 3 - 2 * 3);
        assert_chain(&other.ledger().events_from(1, 1_000).expect("events"));
    });
}

/// A snapshot file larger than one sync step is written in several steps (each fsynced) and
/// reads back whole: a store whose state machine is empty restores itself from it at open.
#[test]
fn a_snapshot_file_written_in_sync_steps_restores_the_state() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    let expected = runtime().block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let (operator, asns) = setup(
            &mut source,
            &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        )
        .await;
        source
            .apply(busy_entries(3, 1_200, &asns, &operator))
            .await
            .expect("apply");
        built(source.get_snapshot_builder().await).await;
        source.ledger().events_from(1, 10_000).expect("events")
    });
    let file = source_dir.path().join("snapshot/current");
    let bytes = std::fs::metadata(&file).expect("snapshot file").len();
    assert!(
        bytes > 2 * raft_store::state_machine::SNAPSHOT_SYNC_STEP_BYTES as u64,
        "the snapshot ({bytes} bytes) should span several sync steps"
    );
    std::fs::create_dir_all(target_dir.path().join("snapshot")).expect("mkdir");
    std::fs::copy(&file, target_dir.path().join("snapshot/current")).expect("copy snapshot");
    runtime().block_on(async {
        let (_, mut target) = raft_store::open(target_dir.path()).expect("open target");
        let (applied, _) = target.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(1_200)));
        let events = target.ledger().events_from(1, 10_000).expect("events");
        assert_eq!(events, expected);
        assert_chain(&events);
    });
}

#[test]
fn a_state_machine_behind_its_snapshot_file_is_restored_at_open() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let (_, asns) = setup(&mut source, &["r"]).await;
        let entries: Vec<Entry> = (3..=5)
            .map(|i| entry(i, i as i64, vec![append(i as u8, 0, &[asns[0].as_str()])]))
            .collect();
        source.apply(entries).await.expect("apply");
        source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
    });
    // The target's state machine is empty but its snapshot file covers entries 1..=5, as after
    // a crash that lost unsynced state-machine writes.
    std::fs::create_dir_all(target_dir.path().join("snapshot")).expect("mkdir");
    std::fs::copy(
        source_dir.path().join("snapshot/current"),
        target_dir.path().join("snapshot/current"),
    )
    .expect("copy snapshot");
    runtime().block_on(async {
        let (_, mut target) = raft_store::open(target_dir.path()).expect("open target");
        let (applied, _) = target.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(5)));
        let events = target.ledger().events_from(1, 10).expect("events");
        assert_eq!(events.len(), 3);
        assert_chain(&events);
    });
}

#[test]
fn a_damaged_store_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["d"]).await;
        let asn = asns[0].as_str();
        sm.apply(vec![entry(3, 1, vec![append(1, 0, &[asn, asn])])])
            .await
            .expect("apply");
    });
    // Remove the last event behind the store's back: both are in the chunk of event 1.
    {
        let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
        let events = db.open_tree("sm").expect("tree");
        let chunk = events.get(EVENT_1).expect("get").expect("chunk of event 1");
        let stored = raft_store::codec::event_chunk(&chunk).expect("chunk");
        assert_eq!(stored.len(), 2, "one chunk holds both events");
        let shorter = raft_store::codec::encode_event_chunk(stored[..1].iter().copied());
        events.insert(EVENT_1, shorter).expect("insert");
        db.flush().expect("flush");
    }
    let error = raft_store::open(dir.path()).err().expect("open must fail");
    let message = error.to_string();
    assert!(message.contains("corrupt data"), "{message}");
    assert!(message.contains("event 2 is missing"), "{message}");

    // A damaged snapshot file is found too.
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["d"]).await;
        sm.apply(vec![entry(3, 1, vec![append(1, 0, &[asns[0].as_str()])])])
            .await
            .expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
    });
    let path = dir.path().join("snapshot/current");
    let mut bytes = std::fs::read(&path).expect("read snapshot");
    let last = bytes.len() - 40;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("write snapshot");
    let message = raft_store::open(dir.path())
        .err()
        .expect("open must fail")
        .to_string();
    assert!(message.contains("snapshot"), "{message}");
}

/// Guide I10 at the store: openraft hears an append is done only after an fsync covered it.
#[test]
fn every_append_is_fsynced_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (log, _) = raft_store::open(dir.path()).expect("open");
        let syncs = || {
            log.sync_stats()
                .syncs_total
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        for index in 1..=5 {
            let before = syncs();
            // `blocking_append` returns when the store calls back: the acknowledgement.
            log.clone()
                .blocking_append(vec![entry(index, 1, vec![])])
                .await
                .expect("append");
            assert!(
                syncs() > before,
                "append {index} was acknowledged without an fsync"
            );
        }
    });
}

/// A log that lost its tail behind the store's back (what sled does with a truncated file)
/// is found at open through the durable mark, and so is a vote that went back.
#[test]
fn a_log_that_lost_its_tail_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (mut log, _) = raft_store::open(dir.path()).expect("open");
        log.save_vote(&Vote::new(7, 1)).await.expect("vote");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, vec![])).collect();
        log.blocking_append(entries).await.expect("append");
        log.close().expect("close");
    });
    {
        // Cut the last three records off the segment, as a lost tail would.
        let segment = dir.path().join("raft-log/00000000000000000001.seg");
        let bytes = std::fs::read(&segment).expect("read");
        let written = written_len(&bytes);
        let record = written / 10;
        assert_eq!(record * 10, written, "ten records of the same size");
        std::fs::write(&segment, &bytes[..record * 7]).expect("write");
    }
    let message = raft_store::open(dir.path())
        .err()
        .expect("open must fail")
        .to_string();
    assert!(message.contains("lost its tail"), "{message}");
    assert!(message.contains("index 7"), "{message}");
}

#[test]
fn a_replayed_proposal_returns_its_first_result_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (owner, _) = setup(&mut sm, &[]).await;
        let create = once(Command::CreateAgent {
            by: ADMIN.into(),
            name: "twice".into(),
            owner_id: owner,
        });
        // The same proposal applied twice, as after a retry across a leader change.
        let responses = sm
            .apply(vec![
                entry(3, 1, vec![create.clone()]),
                entry(4, 2, vec![create]),
            ])
            .await
            .expect("apply");
        let CommandResult::Agent(first) = &responses[0].results[0] else {
            panic!("agent")
        };
        assert_eq!(responses[1].results[0], CommandResult::Agent(first.clone()));
        assert_eq!(
            sm.ledger().agents_total().expect("total"),
            1,
            "no second agent"
        );
    });
}

/// A store in `dir` that installed a snapshot of `source`.
async fn installed_copy(
    source: &mut StateMachineStore,
    dir: &std::path::Path,
) -> StateMachineStore {
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let (_, mut copy) = raft_store::open(dir).expect("open the copy");
    copy.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    copy
}

/// A report with a generated dedup key (a write without an `Idempotency-Key`), made at
/// `made_ms`, as `ledgerd` makes them.
fn generated(made_ms: i64, n: u8, body: u8, asn: &str) -> Proposal {
    let mut proposal = append(0, body, &[asn]);
    proposal.tx.dedup_key =
        raft_store::dedup::generated_dedup_key(made_ms as u64 * 1_000_000, made_ms, [n; 16]);
    proposal
}

/// Writes without an `Idempotency-Key` are deduplicated by the txlog window
/// (`raft_store::dedup`): a retry answers the first result even when the leader joined it into
/// an entry composed differently, after a reopen (the window rebuilt from the txlog chunks) and
/// after a snapshot install; a key made more than the window away from the leaders' clock is
/// refused and changes nothing, including a retry of a key the window has dropped.
#[test]
fn a_retry_without_idempotency_key_is_answered_from_the_txlog_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    let w = raft_store::dedup::GENERATED_KEY_WINDOW_MS;
    let t = 1_800_000_000_000i64;
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["g"]).await;
        let asn = asns[0].as_str();
        let (g1, g2, g3) = (
            generated(t, 1, 0, asn),
            generated(t, 2, 0, asn),
            generated(t + 500, 3, 0, asn),
        );
        let first = sm
            .apply(vec![entry(
                3,
                t,
                vec![g1.clone(), append(9, 0, &[asn]), g2.clone()],
            )])
            .await
            .expect("apply");
        let (g1_events, replayed) = appended(&first[0].results[0]);
        assert!(!replayed);
        let g1_events = g1_events.to_vec();
        let g2_events = appended(&first[0].results[2]).0.to_vec();
        assert_eq!(sm.ledger().head().expect("head").size, 3);

        // The retries, joined with a new write in another entry, in another order.
        let retry = sm
            .apply(vec![entry(
                4,
                t + 1_000,
                vec![g3.clone(), g2.clone(), g1.clone()],
            )])
            .await
            .expect("apply");
        assert_eq!(appended(&retry[0].results[0]).0.len(), 1, "g3 is new");
        assert_eq!(appended(&retry[0].results[1]), (g2_events.as_slice(), true));
        assert_eq!(appended(&retry[0].results[2]), (g1_events.as_slice(), true));
        assert_eq!(sm.ledger().head().expect("head").size, 4);
        // The same key with another body is a conflict.
        let mut other_body = g1.clone();
        other_body.tx.body_hash = [7; 32];
        let conflict = sm
            .apply(vec![entry(5, t + 1_000, vec![other_body])])
            .await
            .expect("apply");
        assert_eq!(rejected(&conflict[0].results[0]).0, RejectCode::Conflict);

        // Reopened: the window is rebuilt from the chunks.
        drop(sm);
        let (_, mut sm) = raft_store::open(dir.path()).expect("reopen");
        let again = sm
            .apply(vec![entry(6, t + 2_000, vec![g1.clone()])])
            .await
            .expect("apply");
        assert_eq!(appended(&again[0].results[0]), (g1_events.as_slice(), true));

        // Keys made too far from the clock (behind it or ahead of it) are refused (the clock
        // is a little past t + 2 s: it moves at least a millisecond per entry).
        let behind = generated(t + 2_000 - w - 10, 4, 0, asn);
        let ahead = generated(t + 2_000 + w + 10, 5, 0, asn);
        let refused = sm
            .apply(vec![entry(7, t + 2_000, vec![behind, ahead])])
            .await
            .expect("apply");
        for result in &refused[0].results {
            assert_eq!(rejected(result).0, RejectCode::Unavailable);
        }
        assert_eq!(sm.ledger().head().expect("head").size, 4);

        // A snapshot carries the window to another store.
        let mut target = installed_copy(&mut sm, target_dir.path()).await;
        let installed = target
            .apply(vec![entry(8, t + 3_000, vec![g2.clone()])])
            .await
            .expect("apply");
        assert_eq!(
            appended(&installed[0].results[0]),
            (g2_events.as_slice(), true)
        );

        // Once the clock has moved a window past g1's time, g1 is dropped, and refused: never
        // applied a second time.
        let later = t + w + 5_000;
        let moved = sm
            .apply(vec![entry(8, later, vec![generated(later, 6, 0, asn)])])
            .await
            .expect("apply");
        assert!(!appended(&moved[0].results[0]).1);
        let late_retry = sm
            .apply(vec![entry(9, later, vec![g1])])
            .await
            .expect("apply");
        assert_eq!(
            rejected(&late_retry[0].results[0]).0,
            RejectCode::Unavailable
        );
        assert_eq!(sm.ledger().head().expect("head").size, 5);
    });
}

#[test]
fn a_tampered_event_is_found_at_open_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["t"]).await;
        let asn = asns[0].as_str();
        sm.apply(vec![entry(3, 1, vec![append(1, 0, &[asn, asn, asn, asn])])])
            .await
            .expect("apply");
    });
    // Change one byte of event 2's metadata (the second of the chunk of event 1), keeping
    // sled's own checksums valid.
    {
        let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
        let events = db.open_tree("sm").expect("tree");
        let mut value = events
            .get(EVENT_1)
            .expect("get")
            .expect("chunk of event 1")
            .to_vec();
        let at = value
            .windows(7)
            .enumerate()
            .filter(|(_, w)| *w == br#"{"k":1}"#)
            .nth(1)
            .expect("metadata bytes of event 2")
            .0;
        value[at + 5] = b'2';
        events.insert(EVENT_1, value).expect("insert");
        db.flush().expect("flush");
    }
    let message = raft_store::open(dir.path())
        .err()
        .expect("open must fail")
        .to_string();
    assert!(
        message.contains("event 2 does not match its hash"),
        "{message}"
    );
}

#[test]
fn the_merkle_tree_matches_a_reference_tree_and_proves_inclusion_and_consistency() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["m1", "m2"]).await;
        let entries: Vec<Entry> = (0..37u64)
            .map(|i| {
                let asns: Vec<&str> = (0..=i % 3)
                    .map(|k| asns[(k % 2) as usize].as_str())
                    .collect();
                entry(3 + i, i as i64, vec![append(i as u8, 0, &asns)])
            })
            .collect();
        // In `apply` calls of 1 to 4 entries: a call's leaves hash with subtrees completed by
        // earlier calls (the state machine's cached frontier) and by itself.
        let mut entries = entries.into_iter().peekable();
        let mut call = 0;
        while entries.peek().is_some() {
            call += 1;
            let batch: Vec<Entry> = entries.by_ref().take(1 + call % 4).collect();
            sm.apply(batch).await.expect("apply");
        }
        let ledger = sm.ledger();
        let events = ledger.events_from(1, 1000).expect("events");
        let size = events.len() as u64;
        assert_merkle_like_reference(ledger, &events, 1);
        let root = ledger.merkle_root(size).expect("root");
        let old_root = ledger.merkle_root(10).expect("old root");
        let proof = ledger.consistency_proof(10, size).expect("consistency");
        verifier::merkle::verify_consistency(10, size, &old_root, &root, &proof)
            .expect("consistency verifies");
        assert!(ledger.inclusion_proof(size + 1, size).is_err());
        // Every event links to its agent's previous one.
        let mut last = std::collections::HashMap::new();
        for event in &events {
            assert_eq!(
                event.agent_prev_hash,
                last.get(&event.asn).copied().unwrap_or([0; 32])
            );
            last.insert(event.asn.clone(), event.hash);
        }
        assert_eq!(ledger.verify_chain().expect("chain"), size);
    });
}

/// The trust score's day counts (`sm_trust`) are written with the events they count: events
/// of several severities, on several days, in one `apply` call and across calls (counts of a
/// day already stored are added to), for two agents; a snapshot carries them. Each time, the
/// stored counts equal a recount of the agent's events (`verifier::trust::tally`).
#[test]
fn trust_day_counts_follow_the_events_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_dir = tempfile::tempdir().expect("tempdir");
    const DAY_MS: i64 = 86_400_000;
    let day0 = 20_454 * DAY_MS; // 2026-01-01
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["a", "b"]).await;
        let report = |tx: u8, events: &[(usize, Severity)]| Proposal {
            tx: TxKey {
                dedup_key: [tx; 32],
                body_hash: [0; 32],
            },
            command: Command::AppendEvents {
                by: ADMIN.into(),
                events: events
                    .iter()
                    .map(|(agent, severity)| NewEvent {
                        severity: *severity,
                        ..new_event(&asns[*agent], "t")
                    })
                    .collect(),
            },
        };
        let check = |sm: &StateMachineStore| {
            let ledger = sm.ledger();
            let head = ledger.head().expect("head");
            for asn in &asns {
                let inputs = ledger
                    .trust_inputs(asn)
                    .expect("trust inputs")
                    .expect("no concurrent writes");
                assert_eq!(inputs.head, head);
                let events: Vec<Event> = ledger
                    .events_from(1, 1000)
                    .expect("events")
                    .into_iter()
                    .filter(|e| &e.asn == asn)
                    .collect();
                assert_eq!(inputs.agent_events, events.len() as u64);
                let as_of_day = verifier::trust::day_of(head.last_created_at_ms);
                let recount: Vec<_> = verifier::trust::tally(
                    events.iter().map(|e| (e.created_at_ms, e.severity as u8)),
                )
                .expect("tally")
                .into_iter()
                .filter(|d| verifier::trust::recency(as_of_day, d.day).is_some())
                .collect();
                assert_eq!(inputs.days, recount, "day counts of {asn}");
            }
        };
        use Severity::*;
        sm.apply(vec![
            entry(
                3,
                day0,
                vec![report(1, &[(0, Info), (0, Error), (1, Warning)])],
            ),
            entry(4, day0 + 5, vec![report(2, &[(0, Info), (0, Critical)])]),
        ])
        .await
        .expect("apply day 0");
        check(&sm);
        // The same day again in a later call: added to what is stored.
        sm.apply(vec![entry(
            5,
            day0 + 9,
            vec![report(3, &[(0, Info), (1, Info)])],
        )])
        .await
        .expect("apply day 0 again");
        check(&sm);
        // One call spanning two days, then a day 100 days on (day 0 leaves the window).
        sm.apply(vec![
            entry(
                6,
                day0 + DAY_MS,
                vec![report(4, &[(0, Warning), (1, Error)])],
            ),
            entry(7, day0 + 2 * DAY_MS, vec![report(5, &[(0, Info)])]),
        ])
        .await
        .expect("apply days 1 and 2");
        check(&sm);
        let day0_counts = sm
            .ledger()
            .trust_days(&asns[0], 20_454, 20_454)
            .expect("day 0");
        assert_eq!(day0_counts[0].counts, [3, 0, 1, 1]);
        sm.apply(vec![entry(
            8,
            day0 + 100 * DAY_MS,
            vec![report(6, &[(1, Critical)])],
        )])
        .await
        .expect("apply day 100");
        check(&sm);
        let inputs = sm
            .ledger()
            .trust_inputs(&asns[0])
            .expect("read")
            .expect("inputs");
        assert!(
            inputs.days.is_empty(),
            "day 0..2 are outside the window now"
        );

        // A snapshot carries the counts.
        let other = installed_copy(&mut sm, other_dir.path()).await;
        check(&other);
        for asn in &asns {
            assert_eq!(
                other.ledger().trust_days(asn, 0, 30_000).expect("other"),
                sm.ledger().trust_days(asn, 0, 30_000).expect("source"),
            );
        }
    });
}

/// Day counts that do not match the events (changed, or one too many) are found at open.
#[test]
fn tampered_trust_day_counts_are_found_at_open() {
    for extra in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let asn = runtime().block_on(async {
            let (_, mut sm) = raft_store::open(dir.path()).expect("open");
            let (_, asns) = setup(&mut sm, &["t"]).await;
            let asn = asns[0].clone();
            sm.apply(vec![entry(3, 1, vec![append(1, 0, &[&asn, &asn])])])
                .await
                .expect("apply");
            asn
        });
        {
            let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
            let trust = db.open_tree("sm").expect("tree");
            // Space tag 9: the trust day counts.
            let tagged = |key: Vec<u8>| [vec![9u8], key].concat();
            let day0 = tagged(raft_store::codec::trust_key(&asn, 0));
            let stored = trust.get(&day0).expect("get").expect("day 0");
            let counts = raft_store::codec::parse_trust_value(&stored).expect("value");
            assert_eq!(counts, [2, 0, 0, 0]);
            if extra {
                let value = raft_store::codec::trust_value(&[0, 0, 0, 1]);
                trust
                    .insert(tagged(raft_store::codec::trust_key(&asn, 5)), &value)
                    .expect("insert");
            } else {
                let value = raft_store::codec::trust_value(&[1, 0, 0, 0]);
                trust.insert(&day0, &value).expect("insert");
            }
            db.flush().expect("flush");
        }
        let message = raft_store::open(dir.path())
            .err()
            .expect("open must fail")
            .to_string();
        let expected = if extra {
            "the trust day counts hold 2 agent-days, the events make 1"
        } else {
            "event 2: the trust day counts of"
        };
        assert!(message.contains(expected), "{message}");
    }
}

/// Store format 3 packs an apply's events into chunks and each index's entries into one run:
/// queries, proofs and the chain check must not care where chunks and runs begin. Events go in
/// through 60 `apply` calls of 1 to 70 events (so chunks of the most events and runs of one
/// entry both occur), then every query shape is compared with a recount of all events, Merkle
/// roots with a reference tree, and the store is reopened (the chain is checked at open).
#[test]
fn chunks_and_runs_answer_like_a_recount_across_apply_boundaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let types = ["task_completed", "incident"];
    let asns = runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["x", "y", "z"]).await;
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let mut time = 1_000i64;
        for call in 0..60u64 {
            if call % 20 == 19 {
                // Reopened: the tails of the indexes come from sled, not from the tip cache.
                drop(sm);
                sm = raft_store::open(dir.path()).expect("reopen").1;
            }
            let size = if call % 7 == 0 { 70 } else { 1 + next(12) };
            let events = (0..size)
                .map(|_| {
                    let asn = &asns[next(3) as usize];
                    new_event(asn, types[next(2) as usize])
                })
                .collect();
            time += next(3) as i64 * 500;
            let mut dedup_key = [0u8; 32];
            dedup_key[..8].copy_from_slice(&(1_000 + call).to_be_bytes());
            let proposal = Proposal {
                tx: TxKey {
                    dedup_key,
                    body_hash: [0; 32],
                },
                command: Command::AppendEvents {
                    by: ADMIN.into(),
                    events,
                },
            };
            sm.apply(vec![entry(3 + call, time, vec![proposal])])
                .await
                .expect("apply");
        }
        asns
    });
    let (_, sm) = raft_store::open(dir.path()).expect("reopen");
    let ledger = sm.ledger();
    let all = ledger.events_from(1, 100_000).expect("events");
    let size = ledger.head().expect("head").size;
    assert_eq!(all.len() as u64, size);
    assert_eq!(seqs(&all), (1..=size).collect::<Vec<_>>());
    assert_eq!(ledger.events_from(size - 2, 10).expect("tail").len(), 3);
    assert_eq!(ledger.event(size + 1).expect("past the head"), None);
    let (min_t, max_t) = (all[0].created_at_ms, all[all.len() - 1].created_at_ms);
    for asn in &asns {
        for event_type in [None, Some("incident")] {
            for (from_ms, to_ms) in [
                (None, None),
                (Some(min_t + 1_000), None),
                (None, Some(max_t - 2_000)),
                (Some(min_t + 3_000), Some(max_t - 3_000)),
            ] {
                let matching: Vec<u64> = all
                    .iter()
                    .rev()
                    .filter(|e| &e.asn == asn)
                    .filter(|e| event_type.is_none_or(|t| e.event_type == t))
                    .filter(|e| from_ms.is_none_or(|f| e.created_at_ms >= f))
                    .filter(|e| to_ms.is_none_or(|t| e.created_at_ms <= t))
                    .map(|e| e.seq)
                    .collect();
                for (skip, limit) in [(0, 50), (1, 7), (13, 20), (40, 50), (0, 1000)] {
                    let page = ledger
                        .agent_activity(ActivityQuery {
                            asn,
                            event_type,
                            from_ms,
                            to_ms,
                            window: None,
                            skip,
                            limit,
                        })
                        .expect("query");
                    assert_eq!(page.total, matching.len() as u64);
                    let expected: Vec<u64> = matching
                        .iter()
                        .skip(skip as usize)
                        .take(limit)
                        .copied()
                        .collect();
                    assert_eq!(
                        seqs(&page.events),
                        expected,
                        "{asn} {event_type:?} {from_ms:?}..{to_ms:?} skip {skip} limit {limit}"
                    );
                }
            }
        }
    }
    assert_merkle_like_reference(ledger, &all, 7);
}

/// Single reports extend an index's last run until it holds `RUN_EXTEND_ENTRIES_MAX` entries
/// (in memory, written to sled when full or written through), then start a new run; a batch
/// adds all its entries to one run. The same from the tip cache and, after a reopen, from
/// sled.
#[test]
fn single_reports_extend_an_index_run_up_to_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = raft_store::RUN_EXTEND_ENTRIES_MAX;
    let singles = 2 * limit + limit / 2;
    let asn = runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["x"]).await;
        let asn = asns[0].clone();
        for n in 0..singles {
            if n == 10 {
                drop(sm);
                sm = raft_store::open(dir.path()).expect("reopen").1;
            }
            let tx = u8::try_from(n + 1).expect("few applies");
            sm.apply(vec![entry(3 + n, 1, vec![append(tx, 0, &[&asn])])])
                .await
                .expect("apply");
        }
        let batch = vec![append(0xee, 0, &[asn.as_str(); 30])];
        sm.apply(vec![entry(3 + singles, 1, batch)])
            .await
            .expect("apply batch");
        asn
    });
    let runs = |scope: raft_store::codec::IndexScope<'_>| {
        let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
        let sm = db.open_tree("sm").expect("tree");
        let mut prefix = vec![2u8]; // the index space's tag
        prefix.extend_from_slice(&scope.prefix());
        sm.scan_prefix(&prefix)
            .map(|item| {
                let (key, run) = item.expect("run");
                let first = raft_store::codec::run_first_ordinal(&key).expect("key");
                (first, raft_store::codec::index_run_len(&run).expect("run"))
            })
            .collect::<Vec<_>>()
    };
    let expected = vec![(0, limit), (limit, limit), (2 * limit, limit / 2 + 30)];
    assert_eq!(runs(raft_store::codec::IndexScope::Agent(&asn)), expected);
    let by_type = raft_store::codec::IndexScope::AgentType(&asn, "task_completed");
    assert_eq!(runs(by_type), expected);
    let (_, sm) = raft_store::open(dir.path()).expect("reopen");
    let page = newest(sm.ledger(), &asn, 1000);
    let size = sm.ledger().head().expect("head").size;
    assert_eq!(size, singles + 30);
    assert_eq!(seqs(&page.events), (1..=size).rev().collect::<Vec<_>>());
}

/// The store's Merkle root at every size equals a reference tree's over `events` (all the
/// events, in order), and the inclusion proof of every `step`-th event verifies.
fn assert_merkle_like_reference(ledger: &raft_store::Ledger, events: &[Event], step: usize) {
    let size = events.len() as u64;
    let reference = verifier::merkle::MemoryTree::from_leaves(events.iter().map(chain::leaf_hash))
        .expect("tree");
    for tree_size in 1..=size {
        assert_eq!(
            ledger.merkle_root(tree_size).expect("root"),
            reference.root(tree_size).expect("reference root"),
            "root of {tree_size}"
        );
    }
    let root = ledger.merkle_root(size).expect("root");
    for event in events.iter().step_by(step) {
        let proof = ledger.inclusion_proof(event.seq, size).expect("proof");
        verifier::merkle::verify_inclusion(
            &chain::leaf_hash(event),
            event.seq - 1,
            size,
            &proof,
            &root,
        )
        .expect("inclusion verifies");
    }
}

/// A store of another format refuses to open and says so: one whose recorded format is not
/// 5, one that still has the per-space sled trees of format 2, and one whose Raft log is in
/// sled (format 3).
#[test]
fn a_store_of_another_format_refuses_to_open() {
    for legacy in ["format", "sm_events", "raft_log"] {
        let dir = tempfile::tempdir().expect("tempdir");
        runtime().block_on(async {
            let (_, mut sm) = raft_store::open(dir.path()).expect("open");
            setup(&mut sm, &["f"]).await;
        });
        {
            let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
            if legacy == "format" {
                // Space tag 0 (meta), key `store_format`, postcard of 3u32.
                let sm = db.open_tree("sm").expect("tree");
                sm.insert([&[0u8][..], b"store_format"].concat(), &[3u8][..])
                    .expect("insert");
            } else {
                let tree = db.open_tree(legacy).expect("tree");
                tree.insert(1u64.to_be_bytes(), &[0u8][..]).expect("insert");
            }
            db.flush().expect("flush");
        }
        let message = raft_store::open(dir.path())
            .err()
            .expect("open must fail")
            .to_string();
        let expected = match legacy {
            "format" => "store format 3; this ledgerd reads format 5 only",
            "sm_events" => "store format 2 or older (sled tree sm_events)",
            _ => "store format 3 or older (the Raft log in sled tree raft_log)",
        };
        assert!(message.contains(expected), "{message}");
    }
}

/// After a restart a node never resumes leadership on its own: the vote it reads back is not
/// committed (openraft would otherwise lead at once with the commit index it persisted, which
/// is not fsynced on every change). The commit index it reads back is at least what its state
/// machine applied, and the state machine never runs ahead of what the log store says.
#[test]
fn a_reopened_store_reads_back_an_uncommitted_vote_and_a_commit_index_covering_the_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (mut log, mut sm) = raft_store::open(dir.path()).expect("open");
        let mut vote = Vote::new(3, 1);
        vote.commit();
        log.save_vote(&vote).await.expect("vote");
        assert_eq!(log.read_vote().await.expect("read"), Some(vote));
        let entries: Vec<Entry> = (1..=4).map(|i| entry(i, 1, vec![])).collect();
        log.blocking_append(entries.clone()).await.expect("append");
        // Committed and applied, but the commit index is only in memory (not fsynced).
        log.save_committed(Some(log_id(4)))
            .await
            .expect("committed");
        sm.apply(entries).await.expect("apply");
        log.close().expect("close");
    });
    runtime().block_on(async {
        let (mut log, _) = raft_store::open(dir.path()).expect("reopen");
        let vote = log.read_vote().await.expect("read").expect("a vote");
        assert_eq!((vote.leader_id.term, vote.leader_id.node_id), (3, 1));
        assert!(!vote.is_committed(), "{vote} came back committed");
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(4))
        );
        // A vote saved after the restart reads back as saved.
        let mut next = Vote::new(4, 1);
        next.commit();
        log.save_vote(&next).await.expect("vote");
        assert_eq!(log.read_vote().await.expect("read"), Some(next));
    });
}

/// A Raft log record damaged in the middle of the log stops the store at open, naming the
/// segment; a record cut off at the very end (a write a crash interrupted) is cut away, and the
/// durable mark then says whether acknowledged entries went missing.
#[test]
fn a_damaged_log_record_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (log, _) = raft_store::open(dir.path()).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, vec![])).collect();
        log.clone().blocking_append(entries).await.expect("append");
        log.close().expect("close");
    });
    let segment = dir.path().join("raft-log/00000000000000000001.seg");
    let mut bytes = std::fs::read(&segment).expect("read");
    let record = written_len(&bytes) / 10;
    bytes[record * 3 + raft_store::wal::RECORD_HEADER_BYTES] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write");
    let message = raft_store::open(dir.path())
        .err()
        .expect("open must fail")
        .to_string();
    assert!(message.contains("corrupt data"), "{message}");
    assert!(message.contains("00000000000000000001.seg"), "{message}");
    assert!(message.contains("checksum does not match"), "{message}");
}

/// An apply is many sled inserts, not one batch: `applying` is written first and `last_applied`
/// last. A store where a crash cut an apply short (here: `applying` ahead, and an event chunk
/// past the head) restores its state machine at open from its snapshot file, or empties it
/// without one, so openraft applies the log again; it never serves the partial apply.
#[test]
fn a_partial_apply_is_found_at_open_and_undone() {
    for with_snapshot in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let applied = runtime().block_on(async {
            let (log, mut sm) = raft_store::open(dir.path()).expect("open");
            let (_, asns) = setup(&mut sm, &["p"]).await;
            sm.apply(vec![entry(3, 1, vec![append(1, 0, &[asns[0].as_str()])])])
                .await
                .expect("apply");
            if with_snapshot {
                sm.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .expect("build");
            }
            log.close().expect("close");
            sm.ledger().last_applied().expect("applied")
        });
        assert_eq!(applied, Some(log_id(3)));
        {
            let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
            let sm = db.open_tree("sm").expect("tree");
            let applying = raft_store::codec::encode(&Some(log_id(4)));
            sm.insert([&[0u8][..], b"applying"].concat(), applying)
                .expect("insert");
            // Event 2's chunk, written before the crash; the head still says 1 event.
            let mut key = EVENT_1;
            key[8] = 2;
            let chunk = sm.get(EVENT_1).expect("get").expect("chunk of event 1");
            sm.insert(key, chunk).expect("insert");
            db.flush().expect("flush");
        }
        let (_, sm) = raft_store::open(dir.path()).expect("open restores");
        let ledger = sm.ledger();
        assert_eq!(ledger.partial_apply().expect("partial"), None);
        if with_snapshot {
            assert_eq!(ledger.last_applied().expect("applied"), Some(log_id(3)));
            assert_eq!(ledger.head().expect("head").size, 1);
        } else {
            assert_eq!(ledger.last_applied().expect("applied"), None);
            assert_eq!(ledger.head().expect("head").size, 0);
        }
        assert!(ledger.event(2).expect("event 2").is_none());
    }
}

/// A node that stops without writing through (a crash) leaves sled without the partial index
/// runs and day counts it held in memory after `written_through`. Such a store is restored at
/// open from its snapshot file, or emptied without one, and applying the log again gives the
/// same activity, trust inputs and chain as a store that never stopped. Here the crash is
/// imitated on a cleanly closed store: `written_through` goes back to the snapshot (or away),
/// and the runs and day counts written through at close go with it.
#[test]
fn a_store_stopped_without_writing_through_is_restored_and_applies_the_log_again() {
    for with_snapshot in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let asn = runtime().block_on(async {
            let (log, mut sm) = raft_store::open(dir.path()).expect("open");
            let (_, asns) = setup(&mut sm, &["r"]).await;
            for index in 3..=12u64 {
                if with_snapshot && index == 7 {
                    sm.get_snapshot_builder()
                        .await
                        .build_snapshot()
                        .await
                        .expect("build");
                }
                let tx = u8::try_from(index).expect("few");
                sm.apply(vec![entry(
                    index,
                    1,
                    vec![append(tx, 0, &[asns[0].as_str()])],
                )])
                .await
                .expect("apply");
            }
            log.close().expect("close");
            asns[0].clone()
        });
        let expected = |ledger: &raft_store::Ledger| {
            let page = newest(ledger, &asn, 100);
            let inputs = ledger
                .trust_inputs(&asn)
                .expect("trust")
                .expect("quiet store");
            (seqs(&page.events), inputs.agent_events, inputs.days)
        };
        let before = {
            let (_, sm) = raft_store::open(dir.path()).expect("reopen");
            let before = expected(sm.ledger());
            assert_eq!(before.0, (1..=10).rev().collect::<Vec<u64>>());
            before
        };
        {
            let db = raft_store::open_sled(&dir.path().join("sled")).expect("sled");
            let sm = db.open_tree("sm").expect("tree");
            let mark = [&[0u8][..], b"written_through"].concat();
            if with_snapshot {
                let at = raft_store::codec::encode(&Some(log_id(6)));
                sm.insert(mark, at).expect("insert");
            } else {
                sm.remove(mark).expect("remove");
            }
            // What only memory held: the agent's partial runs (10 entries) and day count.
            for tag in [2u8, 9] {
                let keys: Vec<_> = sm
                    .scan_prefix([tag])
                    .map(|item| item.expect("key").0)
                    .collect();
                assert!(!keys.is_empty());
                for key in keys {
                    sm.remove(key).expect("remove");
                }
            }
            db.flush().expect("flush");
        }
        runtime().block_on(async {
            let (_, mut sm) = raft_store::open(dir.path()).expect("open restores");
            let restored = sm.ledger().last_applied().expect("applied");
            let (first, size) = if with_snapshot { (7, 4) } else { (1, 0) };
            assert_eq!(restored, (first > 1).then(|| log_id(first - 1)));
            assert_eq!(sm.ledger().head().expect("head").size, size);
            // openraft applies the log again from there.
            if first == 1 {
                setup(&mut sm, &["r"]).await;
            }
            for index in first.max(3)..=12u64 {
                let tx = u8::try_from(index).expect("few");
                sm.apply(vec![entry(index, 1, vec![append(tx, 0, &[asn.as_str()])])])
                    .await
                    .expect("apply again");
            }
            assert_eq!(expected(sm.ledger()), before);
            sm.ledger().verify_chain().expect("chain");
        });
    }
}

/// Readers on other threads see one consistent index and set of day counts while applies move
/// runs from memory to sled (a run filled) and write-throughs (before each snapshot) empty the
/// memory: every page is dense and newest first, every count and total only grows, and the
/// trust inputs always count as many events as the agent's index lists at the same position.
#[test]
fn reads_stay_consistent_while_runs_move_from_memory_to_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        let (_, asns) = setup(&mut sm, &["m"]).await;
        let asn = asns[0].clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let ledger = sm.ledger().clone();
            let stop = std::sync::Arc::clone(&stop);
            let asn = asn.clone();
            std::thread::spawn(move || {
                let (mut reads, mut last_total) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let page = newest(&ledger, &asn, 40);
                    // The agent's events are all the ledger's: seq 1..=total.
                    let expected: Vec<u64> = (1..=page.total).rev().take(40).collect();
                    assert_eq!(seqs(&page.events), expected, "a page of {}", page.total);
                    assert!(
                        page.total >= last_total,
                        "{} after {last_total}",
                        page.total
                    );
                    last_total = page.total;
                    if let Some(inputs) = ledger.trust_inputs(&asn).expect("trust") {
                        let counted: u64 = inputs
                            .days
                            .iter()
                            .map(|d| d.counts.iter().sum::<u64>())
                            .sum();
                        assert_eq!(inputs.agent_events, inputs.head.size);
                        assert_eq!(
                            counted, inputs.agent_events,
                            "day counts at {}",
                            inputs.head.size
                        );
                    }
                    reads += 1;
                }
                reads
            })
        };
        let mut index = 3;
        for round in 0..12u64 {
            for n in 0..25u64 {
                // Mostly single reports; now and then a batch that fills a run past its limit.
                let count = if n % 10 == 9 { 20 } else { 1 };
                let events = (0..count)
                    .map(|_| new_event(&asn, "task_completed"))
                    .collect();
                let command = Command::AppendEvents {
                    by: ADMIN.into(),
                    events,
                };
                sm.apply(vec![entry(index, 1, vec![once(command)])])
                    .await
                    .expect("apply");
                index += 1;
            }
            if round % 3 == 2 {
                sm.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .expect("build");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("reader");
        assert!(reads > 0);
        sm.ledger().verify_chain().expect("chain");
    });
}

/// What replication sends in one AppendEntries (`limited_get_log_entries`) is bounded by bytes,
/// not only by openraft's entry count: a follower behind by many large entries gets them in
/// messages of a few MiB, each of which it can take within the leader's deadline.
#[test]
fn one_append_entries_carries_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (mut log, _sm) = raft_store::open(dir.path()).expect("open");
        log.save_vote(&Vote::new(1, 1)).await.expect("save vote");
        // 20 entries of about 1 MiB (what a batch of 1000 events with 1 KiB of metadata each
        // makes), as a follower would find them missing.
        let big = |index: u64| {
            let mut events = Vec::new();
            for n in 0..1000 {
                let mut event = new_event("ASN-2026-0000-0000-X", "task_completed");
                event.metadata_json = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000));
                events.push(event);
            }
            entry(
                index,
                1_000,
                vec![once(Command::AppendEvents {
                    by: ADMIN.to_owned(),
                    events,
                })],
            )
        };
        let entries: Vec<Entry> = (1..=20).map(big).collect();
        let entry_bytes = postcard::to_allocvec(&entries[0]).expect("encode").len();
        assert!(entry_bytes > 1 << 20, "an entry of {entry_bytes} bytes");
        log.blocking_append(entries).await.expect("append");

        let mut sent = 0;
        let mut next = 1;
        while next <= 20 {
            let batch = log
                .limited_get_log_entries(next, 21)
                .await
                .expect("limited read");
            assert!(!batch.is_empty(), "never nothing for a range the log holds");
            assert_eq!(
                batch[0].log_id,
                log_id(next),
                "a prefix of the range asked for"
            );
            let bytes = batch.len() * entry_bytes;
            assert!(
                bytes <= raft_store::APPEND_ENTRIES_BYTES_MAX + entry_bytes,
                "{} entries, {bytes} bytes in one AppendEntries",
                batch.len()
            );
            next += batch.len() as u64;
            sent += 1;
        }
        assert!(sent >= 5, "20 MiB went in {sent} messages");
        // A range that fits is read whole, as before.
        assert_eq!(
            log.limited_get_log_entries(4, 6).await.expect("read").len(),
            2
        );
    });
}
