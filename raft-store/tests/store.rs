//! Our own storage tests, beside openraft's suite: what survives a reopen, the ledger's
//! invariants when applying (dense `seq`, intact chain, dedup), snapshots that replace the whole
//! state, and corruption found at open.

use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::Entry;
use raft_store::Event;
use raft_store::LogId;
use raft_store::NewEvent;
use raft_store::RejectCode;
use raft_store::Request;
use raft_store::Severity;
use raft_store::TxKey;
use raft_store::Vote;
use raft_store::chain;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn append(tx: u8, body: u8, asns: &[&str]) -> Command {
    Command::AppendEvents {
        tx: TxKey {
            dedup_key: [tx; 32],
            body_hash: [body; 32],
        },
        reported_by: "operator".into(),
        events: asns
            .iter()
            .map(|asn| NewEvent {
                asn: (*asn).to_owned(),
                event_type: "task_completed".into(),
                severity: Severity::Info,
                metadata_json: r#"{"k":1}"#.into(),
            })
            .collect(),
    }
}

fn entry(index: u64, proposed_at_ms: i64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms,
            commands,
        }),
    }
}

fn appended(result: &CommandResult) -> (&[Event], bool) {
    match result {
        CommandResult::Appended { events, replayed } => (events, *replayed),
        other => panic!("expected Appended, got {other:?}"),
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

#[test]
fn applying_builds_a_dense_chain_dedupes_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (mut log, mut sm) = raft_store::open(dir.path()).expect("open");
        let vote = Vote::new(3, 1);
        log.save_vote(&vote).await.expect("save vote");
        let entries = vec![
            entry(
                1,
                1_000,
                vec![append(1, 1, &["A-1", "A-2"]), append(2, 2, &["A-1"])],
            ),
            // The clock went back on a new leader: created_at must not.
            entry(2, 500, vec![append(3, 3, &["A-2"])]),
            // A retry of tx 1 with the same body, and one with another body.
            entry(
                3,
                2_000,
                vec![append(1, 1, &["A-1", "A-2"]), append(1, 9, &["A-3"])],
            ),
        ];
        log.blocking_append(entries.clone()).await.expect("append");
        let responses = sm.apply(entries).await.expect("apply");
        assert_eq!(responses.len(), 3);
        let (first, replayed) = appended(&responses[0].results[0]);
        assert!(!replayed);
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        let (again, replayed) = appended(&responses[2].results[0]);
        assert!(replayed, "same dedup key and body is a replay");
        assert_eq!(again, first, "a replay returns the original events");
        assert!(matches!(
            responses[2].results[1],
            CommandResult::Rejected {
                code: RejectCode::Conflict,
                ..
            }
        ));
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
        assert_eq!(state.last_log_id, Some(log_id(3)));
        assert_eq!(
            log.try_get_log_entries(1..4).await.expect("entries").len(),
            3
        );
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(3)));
        let ledger = sm.ledger();
        let events = ledger.events_from(1, 100).expect("events");
        assert_eq!(events.len(), 4);
        assert_chain(&events);
        assert_eq!(ledger.head().expect("head").head_hash, events[3].hash);
        // The per-agent index: newest first, any page in O(page).
        let newest: Vec<u64> = ledger
            .agent_events_newest_first("A-2", 0, 10)
            .expect("agent")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(newest, [4, 2]);
        let second: Vec<u64> = ledger
            .agent_events_newest_first("A-1", 1, 1)
            .expect("agent")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(second, [1]);
        assert_eq!(ledger.agent_event_count("A-9").expect("count"), 0);
    });
}

#[test]
fn a_snapshot_replaces_the_whole_state_of_another_store() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let entries: Vec<Entry> = (1..=5)
            .map(|i| entry(i, i as i64, vec![append(i as u8, 0, &["S-1"])]))
            .collect();
        source.apply(entries).await.expect("apply source");
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(5)));

        // The target has other, older state: it must be gone after the install.
        let (_, mut target) = raft_store::open(target_dir.path()).expect("open target");
        target
            .apply(vec![entry(1, 1, vec![append(99, 0, &["OTHER"])])])
            .await
            .expect("apply target");
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        let target_events = target.ledger().events_from(1, 100).expect("target events");
        let source_events = source.ledger().events_from(1, 100).expect("source events");
        assert_eq!(target_events, source_events);
        assert_chain(&target_events);
        assert_eq!(
            target.ledger().agent_event_count("OTHER").expect("count"),
            0
        );
        let (applied, _) = target.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(5)));
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
        assert_eq!(current.meta.last_log_id, Some(log_id(5)));
    });
}

#[test]
fn a_damaged_store_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut sm) = raft_store::open(dir.path()).expect("open");
        sm.apply(vec![entry(1, 1, vec![append(1, 0, &["D-1", "D-1"])])])
            .await
            .expect("apply");
    });
    // Remove the last event behind the store's back.
    {
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .segment_size(raft_store::SLED_SEGMENT_BYTES)
            .open()
            .expect("sled");
        let events = db.open_tree("sm_events").expect("tree");
        events.remove(2u64.to_be_bytes()).expect("remove");
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
        sm.apply(vec![entry(1, 1, vec![append(1, 0, &["D-1"])])])
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

#[test]
fn a_state_machine_behind_its_snapshot_file_is_restored_at_open() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let target_dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (_, mut source) = raft_store::open(source_dir.path()).expect("open source");
        let entries: Vec<Entry> = (1..=3)
            .map(|i| entry(i, i as i64, vec![append(i as u8, 0, &["R-1"])]))
            .collect();
        source.apply(entries).await.expect("apply");
        source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
    });
    // The target's state machine is empty but its snapshot file covers entries 1..=3, as after
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
        assert_eq!(applied, Some(log_id(3)));
        let events = target.ledger().events_from(1, 10).expect("events");
        assert_eq!(events.len(), 3);
        assert_chain(&events);
    });
}
