//! The leader's own log fsync, in openraft as this workspace patches it (vendor/README.md):
//! a leader sends its entries to the followers while its own fsync runs, and applies (answers
//! the client) only once that fsync is done, even when the followers alone already make the
//! quorum that commits the entries.
//!
//! Three real Raft nodes on real stores in temporary directories, in one process; the network
//! hands each RPC straight to the target's `Raft`. The leader's log-sync thread is held
//! (`LogStore::hold_log_sync`), so its appends are written but never durable until released.

#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use openraft::error::Fatal;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use raft_store::LedgerNode;
use raft_store::NodeId;
use raft_store::Raft;
use raft_store::Request;
use raft_store::Snapshot;
use raft_store::TypeConfig;
use raft_store::Vote;

/// How long a condition may take to come true.
const CONDITION_TIMEOUT: Duration = Duration::from_secs(20);

/// The nodes, by id: what the in-process network delivers to.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Raft> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }
}

struct Connection {
    target: NodeId,
    router: Router,
}

impl Connection {
    fn raft<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, LedgerNode, E>> {
        self.router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))
    }

    fn remote(&self, e: RaftError<NodeId>) -> RPCError<NodeId, LedgerNode, RaftError<NodeId>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, LedgerNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "node {target} is not running"
    ))))
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &LedgerNode) -> Connection {
        Connection {
            target,
            router: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, LedgerNode, RaftError<NodeId>>>
    {
        let raft = self.raft()?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, LedgerNode, RaftError<NodeId>>> {
        let raft = self.raft()?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        // Nothing here is purged: no snapshot is ever needed.
        Err(StreamingError::Unreachable(Unreachable::new(
            &std::io::Error::other("this test sends no snapshots"),
        )))
    }
}

#[test]
fn a_leader_replicates_before_its_own_fsync_and_applies_only_after_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = Arc::new(
            openraft::Config {
                heartbeat_interval: 100,
                election_timeout_min: 400,
                election_timeout_max: 800,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        let router = Router::default();
        let mut dirs = Vec::new();
        let mut logs = BTreeMap::new();
        for id in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let (log, state_machine) = raft_store::open(dir.path()).unwrap();
            let raft = Raft::new(
                id,
                Arc::clone(&config),
                router.clone(),
                log.clone(),
                state_machine,
            )
            .await
            .unwrap();
            router.nodes.lock().unwrap().insert(id, raft);
            logs.insert(id, log);
            dirs.push(dir);
        }
        let leader = router.get(1).unwrap();
        let members: BTreeMap<NodeId, LedgerNode> =
            (1..=3).map(|id| (id, LedgerNode::default())).collect();
        leader.initialize(members).await.unwrap();
        leader
            .wait(Some(CONDITION_TIMEOUT))
            .current_leader(1, "node 1 leads")
            .await
            .unwrap();
        // The leader's first entries (blank, membership) are applied everywhere.
        let settled = leader.metrics().borrow().last_log_index;
        for id in 1..=3 {
            router
                .get(id)
                .unwrap()
                .wait(Some(CONDITION_TIMEOUT))
                .applied_index_at_least(settled, "the first entries are applied")
                .await
                .unwrap();
        }

        logs[&1].hold_log_sync(true);
        let index = settled.map_or(0, |i| i + 1);
        let write = tokio::spawn({
            let leader = leader.clone();
            async move {
                leader
                    .client_write(Request {
                        proposed_at_ms: 0,
                        commands: Vec::new(),
                    })
                    .await
            }
        });
        // The followers get the entry although the leader's fsync of it cannot end, and their
        // two fsyncs commit it: they learn so from the leader and apply it.
        for id in 2..=3 {
            router
                .get(id)
                .unwrap()
                .wait(Some(CONDITION_TIMEOUT))
                .metrics(
                    |m| {
                        m.last_applied
                            .is_some_and(|l| l.index >= index && l.leader_id.node_id == 1)
                    },
                    "a follower applies node 1's entry",
                )
                .await
                .unwrap();
        }
        assert_eq!(leader.metrics().borrow().current_leader, Some(1));
        // The leader has not applied it, nor answered: its own copy is not durable.
        let applied = leader.metrics().borrow().last_applied.map(|id| id.index);
        assert!(
            applied < Some(index),
            "the leader applied {applied:?} before its fsync of {index}"
        );
        assert!(!write.is_finished(), "the leader answered before its fsync");

        logs[&1].hold_log_sync(false);
        let response = tokio::time::timeout(CONDITION_TIMEOUT, write)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.log_id.index, index);
        assert_eq!(
            leader.metrics().borrow().last_applied.map(|id| id.index),
            Some(index)
        );

        for id in 1..=3 {
            router.get(id).unwrap().shutdown().await.unwrap();
        }
        drop(dirs);
    });
}
