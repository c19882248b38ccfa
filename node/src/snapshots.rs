//! When this node builds a snapshot ([`snapshot_policy`]): when enough log was written since
//! the last one ([`SnapshotTrigger`]), and then in turn with the other nodes ([`Turn`]), so
//! that one node of the cluster builds at a time while a majority goes on writing at full speed.
//!
//! A snapshot is the whole state, read, encoded, hashed and written to a file: for a state of
//! hundreds of MB, seconds of a core and as many MB of disk writes. Every node applies the same
//! log at about the same pace, so without turns all of them reach the threshold within a second
//! of each other and build at once; while they do, every follower answers AppendEntries late
//! and commits slow down or stop (docs/PERFORMANCE.md, twenty-fifth and twenty-sixth sessions).
//! Turns are best-effort, never a safety matter: a node that cannot reach a peer does not wait
//! for it, two nodes that disagree for a moment about who leads may both build, and no node
//! waits for its turn longer than [`TURN_WAIT_MAX_SECS`].

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raft_store::NodeId;

use crate::service::LedgerService;

/// Snapshots up to this size are cheap (a fraction of a second on every node): for them the
/// entry count alone decides. In bytes.
const SNAPSHOT_SMALL_BYTES: u64 = 16 * 1024 * 1024;

/// How often [`snapshot_policy`] looks at the log (and, while it waits for its turn, asks the
/// other nodes whether they build one), in milliseconds.
const SNAPSHOT_POLICY_INTERVAL_MS: u64 = 500;

/// The longest a node waits for its turn to build a snapshot, in seconds: then it builds even
/// if a peer says it builds (or waits) too. A snapshot of about 600 MB takes 10–15 s here.
pub const TURN_WAIT_MAX_SECS: u64 = 300;

/// How long a leader whose snapshot is due waits before it asks whose turn it is, in
/// milliseconds: the leader applies each entry a moment before its followers, so it becomes
/// due first, and without this it would build first although it comes last.
const LEADER_GRACE_MS: u64 = 2 * SNAPSHOT_POLICY_INTERVAL_MS;

/// When a snapshot is due: after `snapshot_logs` entries or `snapshot_log_bytes` of log since
/// the last one, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotTrigger {
    pub snapshot_logs: u64,
    pub snapshot_log_bytes: u64,
}

impl SnapshotTrigger {
    /// Whether a snapshot is due, `since` entries applied and `log_bytes` of log written after
    /// the last one, whose payload is `snapshot_bytes` (0 without one).
    fn due(self, since: u64, log_bytes: u64, snapshot_bytes: u64) -> bool {
        (since >= self.snapshot_logs || log_bytes >= self.snapshot_log_bytes)
            && (snapshot_bytes <= SNAPSHOT_SMALL_BYTES || log_bytes >= snapshot_bytes)
    }
}

/// What a node's snapshot policy is doing, as the other nodes see it (`snapshot_turn` in the
/// peer `Status` reply; a node of an older build, which does not send it, reads as idle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// No snapshot due.
    Idle = 0,
    /// A snapshot is due; the node waits for its turn.
    Waiting = 1,
    /// The node builds a snapshot.
    Building = 2,
}

impl Turn {
    pub fn from_wire(value: u32) -> Self {
        match value {
            1 => Self::Waiting,
            2 => Self::Building,
            _ => Self::Idle,
        }
    }
}

/// This node's [`Turn`], shared between its policy and its peer server.
#[derive(Debug, Default)]
pub struct TurnState(AtomicU32);

impl TurnState {
    pub fn get(&self) -> Turn {
        Turn::from_wire(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, turn: Turn) {
        self.0.store(turn as u32, Ordering::Relaxed);
    }
}

/// The peer this node must let build first, if any: one that builds, or one that waits and
/// comes before this node. Followers come before the leader (a leader that builds slows every
/// write; a follower that builds, only its own share), and among them the lower node id first.
fn must_wait_for(
    me: NodeId,
    leader: Option<NodeId>,
    peers: &[(NodeId, Turn)],
) -> Option<(NodeId, Turn)> {
    let rank = |id: NodeId| (Some(id) == leader, id);
    let others = || peers.iter().copied().filter(move |&(id, _)| id != me);
    others()
        .find(|&(_, turn)| turn == Turn::Building)
        .or_else(|| others().find(|&(id, turn)| turn == Turn::Waiting && rank(id) < rank(me)))
}

/// The peer this node, having claimed its turn, must give it up to, if any: one that builds
/// or waits and comes before this node (a peer after it that builds has claimed its turn at the
/// same moment and gives way to this node).
fn must_give_way(
    me: NodeId,
    leader: Option<NodeId>,
    peers: &[(NodeId, Turn)],
) -> Option<(NodeId, Turn)> {
    let rank = |id: NodeId| (Some(id) == leader, id);
    peers
        .iter()
        .copied()
        .find(|&(id, turn)| id != me && turn != Turn::Idle && rank(id) < rank(me))
}

/// The turns of the peers that answer (within the peer status deadline): a peer that does not
/// is not waited for.
async fn peer_turns(
    service: &LedgerService,
    members: &[(NodeId, raft_store::LedgerNode)],
) -> Vec<(NodeId, Turn)> {
    futures::future::join_all(
        members.iter().map(|(id, node)| async move {
            Some((*id, service.peer_snapshot_turn(*id, node).await?))
        }),
    )
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// Builds a snapshot once at least `snapshot_logs` entries were applied since the last one or
/// `snapshot_log_bytes` of log were written, *and* the log written since is at least as large
/// as that snapshot (when it is larger than `SNAPSHOT_SMALL_BYTES`, 16 MiB); and then only in its
/// turn (see the module's documentation). A snapshot is the whole state (read, encoded,
/// hashed, written, on every node), so taking one every so many entries whatever the state's
/// size would make its cost grow with the ledger; this way a snapshot costs at most about as
/// much as the log it replaces, and the log on disk stays under about the state's size or
/// `snapshot_log_bytes` (plus the entries kept, a partly purged segment, and what is written
/// while the node waits for its turn). Snapshots are spaced widely by default (100,000
/// entries, as etcd): each one writes and fsyncs a file on the disk the log's fsyncs wait on,
/// and a purge frees only whole 64 MiB segments anyway.
pub async fn snapshot_policy(
    service: Arc<LedgerService>,
    state_machine: raft_store::StateMachineStore,
    trigger: SnapshotTrigger,
) {
    let turn = &service.snapshot_turn;
    let mut tick = tokio::time::interval(Duration::from_millis(SNAPSHOT_POLICY_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metrics = service.raft.metrics();
    let me = service.node_id();
    let mut waiting_since: Option<Instant> = None;
    let mut waited_for: Option<NodeId> = None;
    loop {
        tick.tick().await;
        let (applied, snapshot, leader, members) = {
            let metrics = metrics.borrow();
            if metrics.running_state.is_err() {
                return;
            }
            let members: Vec<_> = metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me)
                .map(|(id, node)| (*id, node.clone()))
                .collect();
            (
                metrics.last_applied.map(|id| id.index),
                metrics.snapshot,
                metrics.current_leader,
                members,
            )
        };
        let Some(applied) = applied else { continue };
        let snapshot_index = snapshot.map(|id| id.index);
        let since = applied.saturating_sub(snapshot_index.unwrap_or(0));
        let log_bytes = service.log_store.bytes_after(snapshot_index);
        let snapshot_bytes = state_machine.snapshot_bytes().unwrap_or(0);
        if since == 0 || !trigger.due(since, log_bytes, snapshot_bytes) {
            turn.set(Turn::Idle);
            waiting_since = None;
            waited_for = None;
            continue;
        }
        turn.set(Turn::Waiting);
        let since_when = *waiting_since.get_or_insert_with(Instant::now);
        if leader == Some(me) && since_when.elapsed() < Duration::from_millis(LEADER_GRACE_MS) {
            continue;
        }
        let waited = since_when.elapsed();
        let overdue = waited >= Duration::from_secs(TURN_WAIT_MAX_SECS);
        let peers = peer_turns(&service, &members).await;
        // Wait while a peer builds or an earlier one waits; then claim the turn (`Building`)
        // and ask again: of two nodes that asked each other at the same moment, each saw the
        // other idle or waiting, but the second ask of each sees the other's claim, and the
        // later one in the order gives way.
        let mut blocker = must_wait_for(me, leader, &peers);
        if blocker.is_none() {
            turn.set(Turn::Building);
            blocker = must_give_way(me, leader, &peer_turns(&service, &members).await);
        }
        if let Some((peer, peer_turn)) = blocker {
            if !overdue {
                turn.set(Turn::Waiting);
                if waited_for != Some(peer) {
                    tracing::info!(
                        peer,
                        peer_turn = ?peer_turn,
                        applied,
                        log_bytes,
                        "a snapshot is due; waiting for the peer's snapshot first"
                    );
                    waited_for = Some(peer);
                }
                continue;
            }
            tracing::warn!(
                peer,
                peer_turn = ?peer_turn,
                waited_secs = waited.as_secs(),
                "waited the longest a node waits for its turn; building a snapshot now"
            );
        }
        turn.set(Turn::Building);
        tracing::info!(
            applied,
            ?snapshot_index,
            log_bytes,
            snapshot_bytes,
            waited_ms = waited.as_millis() as u64,
            "building a snapshot"
        );
        if service.raft.trigger().snapshot().await.is_err() {
            return;
        }
        // Building until openraft reports a new snapshot (this one, or one a leader sent and
        // this node installed); a failed build stops the node. Looked at every tick, not on
        // every change of the metrics (which change with every write). Peers wait for a turn
        // at most TURN_WAIT_MAX_SECS, and so long at most does this node say it builds.
        let building_since = Instant::now();
        loop {
            tick.tick().await;
            let metrics = metrics.borrow();
            if metrics.running_state.is_err() {
                return;
            }
            if metrics.snapshot != snapshot {
                break;
            }
            if building_since.elapsed() >= Duration::from_secs(TURN_WAIT_MAX_SECS) {
                tracing::warn!(
                    secs = TURN_WAIT_MAX_SECS,
                    "no new snapshot reported after the longest a peer waits for its turn; \
                     no longer telling peers this node builds one"
                );
                break;
            }
        }
        turn.set(Turn::Idle);
        waiting_since = None;
        waited_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::SNAPSHOT_SMALL_BYTES;
    use super::SnapshotTrigger;
    use super::Turn;
    use super::must_give_way;
    use super::must_wait_for;

    #[test]
    fn a_snapshot_is_due_after_enough_entries_or_log_and_as_much_log_as_the_last_snapshot() {
        let trigger = SnapshotTrigger {
            snapshot_logs: 5_000,
            snapshot_log_bytes: 64_000_000,
        };
        // No snapshot yet: entries decide, up to the limit and one past it.
        assert!(!trigger.due(4_999, 10, 0));
        assert!(trigger.due(5_000, 10, 0));
        // Or the log's bytes, up to the limit and one past it, before the entry count.
        assert!(!trigger.due(10, 63_999_999, 0));
        assert!(trigger.due(10, 64_000_000, 0));
        // A large state: the log since must be as large as the last snapshot.
        assert!(!trigger.due(80_000, 99_999_999, 100_000_000));
        assert!(trigger.due(80_000, 100_000_000, 100_000_000));
        // A small state, up to the limit and one past it: entries decide, then the log too.
        let small = SNAPSHOT_SMALL_BYTES;
        assert!(!trigger.due(4_999, 63_999_999, 1_000));
        assert!(trigger.due(5_000, 10, small));
        assert!(!trigger.due(5_000, 10, small + 1));
        assert!(trigger.due(5_000, small + 1, small + 1));
    }

    #[test]
    fn followers_build_first_by_id_then_the_leader_and_never_two_at_once() {
        use Turn::*;
        let leader = Some(1);
        // Nobody else due: build.
        assert_eq!(must_wait_for(2, leader, &[(1, Idle), (3, Idle)]), None);
        // Anyone building, leader or follower: wait for it.
        assert_eq!(
            must_wait_for(2, leader, &[(1, Building), (3, Idle)]),
            Some((1, Building))
        );
        assert_eq!(
            must_wait_for(1, leader, &[(2, Idle), (3, Building)]),
            Some((3, Building))
        );
        // Two followers due: the lower id first; the other waits.
        assert_eq!(must_wait_for(2, leader, &[(1, Idle), (3, Waiting)]), None);
        assert_eq!(
            must_wait_for(3, leader, &[(1, Idle), (2, Waiting)]),
            Some((2, Waiting))
        );
        // The leader comes after every follower, whatever the ids.
        assert_eq!(
            must_wait_for(1, leader, &[(2, Idle), (3, Waiting)]),
            Some((3, Waiting))
        );
        assert_eq!(must_wait_for(3, leader, &[(1, Waiting), (2, Idle)]), None);
        // A building peer is named before a waiting one.
        assert_eq!(
            must_wait_for(3, leader, &[(1, Waiting), (2, Building)]),
            Some((2, Building))
        );
        // No leader known: by id alone. Unreachable peers are left out of `peers`.
        assert_eq!(must_wait_for(3, None, &[(1, Waiting)]), Some((1, Waiting)));
        assert_eq!(must_wait_for(1, None, &[(3, Waiting)]), None);
        assert_eq!(must_wait_for(2, leader, &[]), None);
        // Its own entry, if a caller passed one, never blocks a node.
        assert_eq!(must_wait_for(2, leader, &[(2, Building)]), None);
    }

    #[test]
    fn a_node_that_claimed_its_turn_gives_way_to_an_earlier_claim_or_wait() {
        use Turn::*;
        let leader = Some(1);
        // Two followers claimed at once: the later one in the order gives way, the other not.
        assert_eq!(
            must_give_way(3, leader, &[(1, Idle), (2, Building)]),
            Some((2, Building))
        );
        assert_eq!(must_give_way(2, leader, &[(1, Idle), (3, Building)]), None);
        // An earlier node that waits: give way to it too.
        assert_eq!(
            must_give_way(3, leader, &[(1, Idle), (2, Waiting)]),
            Some((2, Waiting))
        );
        // The leader gives way to any follower that claimed or waits.
        assert_eq!(
            must_give_way(1, leader, &[(2, Idle), (3, Building)]),
            Some((3, Building))
        );
        // A follower claiming at once with the leader keeps its turn.
        assert_eq!(must_give_way(3, leader, &[(1, Building), (2, Idle)]), None);
        assert_eq!(must_give_way(2, leader, &[(1, Idle), (3, Idle)]), None);
        assert_eq!(must_give_way(2, leader, &[(2, Building)]), None);
    }

    #[test]
    fn a_turn_travels_as_a_number_and_unknown_numbers_read_as_idle() {
        for turn in [Turn::Idle, Turn::Waiting, Turn::Building] {
            assert_eq!(Turn::from_wire(turn as u32), turn);
        }
        assert_eq!(Turn::from_wire(3), Turn::Idle);
    }
}
