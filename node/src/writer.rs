//! Group commit and write forwarding.
//!
//! [`Writer::submit`] puts a command into a bounded queue (full queue: 503 at once). One task
//! drains the queue into batches: it waits for a free in-flight slot, then takes every command
//! queued by then (up to the batch limits), so batches grow by themselves while earlier ones
//! are being fsynced and replicated. A batch is one Raft entry: one log fsync per node for all
//! of its commands. When nothing is queued and a slot is free, a submission is proposed at
//! once by the task that submits it, as a batch of its own: with no batch to join, the hand-off
//! to the writer's task would only add to its latency.
//!
//! [`Router::propose`] sends a batch to the leader: locally with `client_write` when this node
//! leads, otherwise over gRPC (`ForwardWriteStream`, on a [`crate::pipe`]). While there is no
//! leader, or the leader changes under it, it retries until the write deadline, then answers 503.
//! Every command carries a dedup key, so a retry of a batch that did commit returns the first
//! result instead of appending twice.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use raft_store::Command;
use raft_store::CommandResult;
use raft_store::NodeId;
use raft_store::Proposal;
use raft_store::Raft;
use raft_store::Request;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::network::Peers;
use crate::network::Traffic;
use crate::pipe::CallError;
use api::ApiError;
use api::answer_group::ANSWER_GROUP_ANSWERS_MAX;
use api::answer_group::AnswerGroup;
use api::answer_group::GroupSeat;
use api::answer_group::signed_event;

/// Bytes of commands in one batch, at most (estimated), to keep a Raft entry well under
/// `raft_store::ENTRY_BYTES_MAX`.
pub const BATCH_BYTES_MAX: usize = 1 << 20;
const RETRY_BACKOFF_MIN_MS: u64 = 20;
/// How long one attempt (a local proposal, or a batch forwarded to the leader) may wait before
/// it is made again with a fresh view of who leads (safe: the dedup keys make a second proposal
/// return the first one's result). A leader that removed itself from the membership can leave a
/// proposal unanswered when it steps down; this bounds the wait to less than the deadline.
const ATTEMPT_TIMEOUT_MS: u64 = 5_000;
const RETRY_BACKOFF_MAX_MS: u64 = 400;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn estimated_bytes(proposal: &Proposal) -> usize {
    match &proposal.command {
        Command::AppendEvents { events, by, .. } => {
            64 + by.len()
                + events
                    .iter()
                    .map(|e| 16 + e.asn.len() + e.event_type.len() + e.metadata_json.len())
                    .sum::<usize>()
        }
        _ => 256,
    }
}

/// How one attempt to propose went.
enum Attempt {
    Done(Vec<CommandResult>),
    /// No leader, a leader change, or a lost connection: try again (dedup keys make it safe).
    Retry(String),
    Fail(ApiError),
}

#[derive(Clone)]
pub struct Router {
    pub raft: Raft,
    pub peers: Peers,
    pub deadline: Duration,
    /// Held for reading by every local proposal while it is in flight, and for writing by a
    /// leadership transfer (`LedgerService::transfer_leader_here`): the transfer so waits for
    /// the proposals in flight and refuses new ones (they are retried as after a leader change)
    /// until it ends, so that the log it hands over stops growing.
    pub proposals: std::sync::Arc<tokio::sync::RwLock<()>>,
}

impl Router {
    fn node_id(&self) -> NodeId {
        self.peers.local.node_id
    }

    /// Proposes `commands` as one Raft entry on this node, which must lead. The leader's clock
    /// stamps the entry.
    pub async fn propose_here(
        &self,
        commands: Vec<Proposal>,
    ) -> Result<
        Vec<CommandResult>,
        RaftError<NodeId, ClientWriteError<NodeId, raft_store::LedgerNode>>,
    > {
        let Ok(_in_flight) = self.proposals.try_read() else {
            return Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                openraft::error::ForwardToLeader::empty(),
            )));
        };
        let request = Request {
            proposed_at_ms: now_ms(),
            commands,
        };
        let response = self.raft.client_write(request).await?;
        Ok(response.data.results)
    }

    async fn attempt(&self, commands: &[Proposal], remaining: Duration) -> Attempt {
        let wait = remaining.min(Duration::from_millis(ATTEMPT_TIMEOUT_MS));
        let (leader, leader_addr) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let leader = metrics.current_leader;
            let addr = leader.and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|node| node.grpc_addr.clone())
            });
            (leader, addr)
        };
        match leader {
            None => Attempt::Retry("no leader is elected".into()),
            // A leader that has lost its quorum (isolated in a minority) keeps believing it leads
            // and would wait for a commit that never comes: bound the wait by the deadline. The
            // entry may still commit later, so the outcome is unknown, and a retry is safe (the
            // proposals carry their dedup keys).
            Some(id) if id == self.node_id() => {
                match tokio::time::timeout(wait, self.propose_here(commands.to_vec())).await {
                    Err(_elapsed) => {
                        Attempt::Retry("this leader could not commit in time (no quorum?)".into())
                    }
                    Ok(Ok(results)) => Attempt::Done(results),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                        Attempt::Retry("leadership moved during the write".into())
                    }
                    Ok(Err(RaftError::APIError(error))) => {
                        Attempt::Fail(ApiError::internal(format!("write refused: {error}")))
                    }
                    Ok(Err(RaftError::Fatal(error))) => {
                        Attempt::Fail(ApiError::unavailable(format!("raft stopped: {error}")))
                    }
                }
            }
            Some(id) => {
                let Some(addr) = leader_addr else {
                    return Attempt::Retry(format!("leader {id} has no known address"));
                };
                self.forward(id, &addr, commands, wait).await
            }
        }
    }

    /// Sends one forwarded batch to `leader`: on the pipe to it, or as a unary call to a leader
    /// that does not serve the pipe (an older build). `Err` is why it got no answer.
    async fn forward_once(
        &self,
        leader: NodeId,
        addr: &str,
        commands: &[Proposal],
        remaining: Duration,
    ) -> Result<proto::ForwardWriteReply, String> {
        let unanswered = |status: tonic::Status| format!("leader {leader}: {}", status.message());
        let message = || proto::ForwardWriteRequest {
            commands: raft_store::codec::encode(&commands),
            call_id: 0,
        };
        if let Some(pipe) = self.peers.forward_pipe(leader, addr).map_err(unanswered)? {
            match pipe.call(message(), remaining).await {
                Ok(reply) => return Ok(reply),
                Err(CallError::Failed(status)) => return Err(unanswered(status)),
                Err(CallError::Unsupported) => self.peers.forward_unsupported(leader, addr),
            }
        }
        let mut client = self
            .peers
            .client(addr, Traffic::Client)
            .map_err(unanswered)?;
        let request = self.peers.request(leader, message(), Some(remaining));
        match tokio::time::timeout(remaining, client.forward_write(request)).await {
            Err(_elapsed) => Err(format!("leader {leader} did not answer in time")),
            Ok(Err(status)) => Err(unanswered(status)),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        commands: &[Proposal],
        remaining: Duration,
    ) -> Attempt {
        let started = Instant::now();
        let reply = self.forward_once(leader, addr, commands, remaining).await;
        tracing::debug!(
            commands = commands.len(),
            micros = started.elapsed().as_micros() as u64,
            "forwarded batch answered"
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(reason) => return Attempt::Retry(reason),
        };
        if reply.not_leader {
            return Attempt::Retry(format!("node {leader} is no longer the leader"));
        }
        if !reply.error.is_empty() {
            return Attempt::Retry(format!("leader {leader}: {}", reply.error));
        }
        match postcard::from_bytes::<Vec<CommandResult>>(&reply.results) {
            Ok(results) => Attempt::Done(results),
            Err(error) => Attempt::Fail(ApiError::internal(format!(
                "undecodable reply from leader {leader}: {error}"
            ))),
        }
    }

    /// Proposes `commands` through the leader, retrying until the deadline.
    pub async fn propose(&self, commands: Vec<Proposal>) -> Result<Vec<CommandResult>, ApiError> {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut backoff = Duration::from_millis(RETRY_BACKOFF_MIN_MS);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self
                .attempt(&commands, remaining.max(Duration::from_millis(1)))
                .await
            {
                Attempt::Done(results) => {
                    if results.len() != commands.len() {
                        return Err(ApiError::internal(format!(
                            "{} results for {} commands",
                            results.len(),
                            commands.len()
                        )));
                    }
                    return Ok(results);
                }
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(reason) => {
                    if Instant::now() + backoff >= deadline {
                        return Err(ApiError::unavailable(format!(
                            "no leader accepted the write within {} ms ({reason}); the write may or may not have been recorded: retry with the same Idempotency-Key",
                            self.deadline.as_millis()
                        )));
                    }
                    tracing::debug!(%reason, "retrying write");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(RETRY_BACKOFF_MAX_MS));
                }
            }
        }
    }
}

/// One submission: a command of this node's API, or a whole batch forwarded by a follower.
struct Queued {
    commands: Vec<Proposal>,
    /// Whether this node answers the command and signs the answer (a report through its API):
    /// then the answer may share its signature with the others of the batch.
    answered_here: bool,
    reply: oneshot::Sender<Result<Answered, ApiError>>,
}

/// The results of one submission, one per command, and the seat of its answer in the batch's
/// answer group, if it has one.
type Answered = (Vec<CommandResult>, Option<GroupSeat>);

/// The answer groups of a batch's answers that this node signs: a seat for each submission
/// answered here whose one result appended events (`answers[i]` is a submission's results and
/// whether it is answered here), in groups of at most `ANSWER_GROUP_ANSWERS_MAX`; `None` for
/// the others, and for an answer left alone. Counts the groups in `stats`.
fn group_seats(
    answers: &[(Vec<CommandResult>, bool)],
    stats: &WriterStats,
) -> Vec<Option<GroupSeat>> {
    let members: Vec<(usize, &raft_store::Event)> = answers
        .iter()
        .enumerate()
        .filter_map(
            |(index, (results, answered_here))| match results.as_slice() {
                [result] if *answered_here => signed_event(result).map(|event| (index, event)),
                _ => None,
            },
        )
        .collect();
    let mut seats = vec![None; answers.len()];
    for members in members.chunks(ANSWER_GROUP_ANSWERS_MAX) {
        if let Some(group) = AnswerGroup::seats(members.iter().map(|(_, event)| *event)) {
            #[allow(clippy::cast_precision_loss, reason = "a histogram sample")]
            stats.answers_per_signature.observe(group.len() as f64);
            for ((index, _), seat) in members.iter().zip(group) {
                seats[*index] = Some(seat);
            }
        }
    }
    seats
}

/// Statistics of group commit, for metrics.
pub struct WriterStats {
    pub batches_total: std::sync::atomic::AtomicU64,
    pub commands_total: std::sync::atomic::AtomicU64,
    /// Commands per batch (one Raft entry), for `/metrics`.
    pub batch_commands: prometheus_client::metrics::histogram::Histogram,
    /// Seconds from a batch's proposal to its answer (answered batches), for `/metrics`.
    pub batch_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Answers per signature of this node's answers to reports: 1 for an answer signed on its
    /// own, the group's size for an answer group (`api::answer_group`), for `/metrics`.
    pub answers_per_signature: prometheus_client::metrics::histogram::Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            batches_total: Default::default(),
            commands_total: Default::default(),
            batch_commands: prometheus_client::metrics::histogram::Histogram::new(
                crate::metrics::batch_buckets(),
            ),
            batch_seconds: prometheus_client::metrics::histogram::Histogram::new(
                crate::metrics::duration_buckets(),
            ),
            answers_per_signature: prometheus_client::metrics::histogram::Histogram::new(
                crate::metrics::batch_buckets(),
            ),
        }
    }
}

impl WriterStats {
    /// Proposes one batch (one Raft entry) through `router`: counts it and its commands, and
    /// records how long its answer took.
    async fn propose(
        &self,
        router: &Router,
        commands: Vec<Proposal>,
    ) -> Result<Vec<CommandResult>, ApiError> {
        let count = commands.len();
        self.batches_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.commands_total
            .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss, reason = "a histogram sample")]
        self.batch_commands.observe(count as f64);
        let started = std::time::Instant::now();
        let results = router.propose(commands).await;
        if results.is_ok() {
            self.batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        results
    }
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Queued>,
    queue_max: usize,
    /// The in-flight slots (`WriterLimits::batches_in_flight_max`), shared with the writer's task.
    slots: Arc<Semaphore>,
    batch_commands_max: usize,
    router: Router,
    pub stats: Arc<WriterStats>,
}

pub struct WriterLimits {
    pub queue_commands_max: usize,
    pub batches_in_flight_max: usize,
    pub batch_commands_max: usize,
}

impl Writer {
    pub fn start(router: Router, limits: WriterLimits) -> Self {
        let (queue, receiver) = mpsc::channel(limits.queue_commands_max);
        let stats = Arc::new(WriterStats::default());
        let slots = Arc::new(Semaphore::new(limits.batches_in_flight_max));
        tokio::spawn(run(
            router.clone(),
            receiver,
            Arc::clone(&slots),
            limits.batch_commands_max,
            Arc::clone(&stats),
        ));
        Self {
            queue,
            queue_max: limits.queue_commands_max,
            slots,
            batch_commands_max: limits.batch_commands_max,
            router,
            stats,
        }
    }

    /// Batches waiting in this node's queue now.
    pub fn queued(&self) -> usize {
        self.queue_max.saturating_sub(self.queue.capacity())
    }

    pub async fn submit(&self, command: Proposal) -> Result<CommandResult, ApiError> {
        self.submit_many(vec![command])
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal("the writer answered no result"))
    }

    /// As [`Writer::submit`], for a command whose answer this node signs: with the answer's
    /// seat in the answer group of its batch, if the batch has one (`api::answer_group`).
    pub async fn submit_answer(
        &self,
        command: Proposal,
    ) -> Result<(CommandResult, Option<GroupSeat>), ApiError> {
        let (mut results, seat) = self.submit_inner(vec![command], true).await?;
        let result = results
            .pop()
            .ok_or_else(|| ApiError::internal("the writer answered no result"))?;
        if seat.is_none() && signed_event(&result).is_some() {
            self.stats.answers_per_signature.observe(1.0);
        }
        Ok((result, seat))
    }

    /// Submits commands that stay together in one Raft entry (a batch a follower forwarded
    /// to this leader: it joins this node's group commit instead of being an entry of its
    /// own). One result per command, in order.
    pub async fn submit_many(
        &self,
        commands: Vec<Proposal>,
    ) -> Result<Vec<CommandResult>, ApiError> {
        Ok(self.submit_inner(commands, false).await?.0)
    }

    async fn submit_inner(
        &self,
        commands: Vec<Proposal>,
        answered_here: bool,
    ) -> Result<Answered, ApiError> {
        let count = commands.len();
        // Nothing queued and a slot free: no batch to join, propose from here. (A command the
        // writer's task took from the queue and holds while it waits for a slot has no slot
        // to lose to this: a semaphore with waiters has no permits to try for.)
        if self.queued() == 0
            && count <= self.batch_commands_max
            && let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned()
        {
            let _permit = permit;
            // One result per command: `Router::propose` checks. A batch of its own: no
            // answer to share a signature with.
            return Ok((self.stats.propose(&self.router, commands).await?, None));
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Queued {
                commands,
                answered_here,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::unavailable(format!(
                    "overloaded: {} writes are already queued on this node",
                    self.queue_max
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::unavailable("this node is shutting down")
                }
            })?;
        let (results, seat) = answer.await.map_err(|_| {
            ApiError::unavailable("this node is shutting down; the write's outcome is unknown")
        })??;
        if results.len() != count {
            return Err(ApiError::internal(format!(
                "{} results for {count} commands",
                results.len()
            )));
        }
        Ok((results, seat))
    }
}

async fn run(
    router: Router,
    mut receiver: mpsc::Receiver<Queued>,
    slots: Arc<Semaphore>,
    batch_commands_max: usize,
    stats: Arc<WriterStats>,
) {
    while let Some(first) = receiver.recv().await {
        // Wait for a slot first: commands queue up meanwhile and join this batch.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes: usize = first.commands.iter().map(estimated_bytes).sum();
        let mut commands_in_batch = first.commands.len();
        let mut batch = vec![first];
        while commands_in_batch < batch_commands_max && bytes < BATCH_BYTES_MAX {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += next.commands.iter().map(estimated_bytes).sum::<usize>();
                    commands_in_batch += next.commands.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let router = router.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let _permit = permit;
            let mut commands = Vec::with_capacity(commands_in_batch);
            let mut replies = Vec::with_capacity(batch.len());
            for queued in batch {
                replies.push((queued.commands.len(), queued.answered_here, queued.reply));
                commands.extend(queued.commands);
            }
            match stats.propose(&router, commands).await {
                Ok(results) => {
                    let mut results = results.into_iter();
                    let mut answers = Vec::with_capacity(replies.len());
                    let mut senders = Vec::with_capacity(replies.len());
                    for (count, answered_here, reply) in replies {
                        answers.push((results.by_ref().take(count).collect(), answered_here));
                        senders.push(reply);
                    }
                    let seats = group_seats(&answers, &stats);
                    for (((results, _), seat), reply) in answers.into_iter().zip(seats).zip(senders)
                    {
                        let _ = reply.send(Ok((results, seat)));
                    }
                }
                Err(error) => {
                    for (_, _, reply) in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended(seq: u64) -> Vec<CommandResult> {
        let mut event = raft_store::Event {
            seq,
            id: [1; 16],
            agent_id: [2; 16],
            asn: "ASN-2026-0384-7721-A".into(),
            event_type: "task_completed".into(),
            severity: raft_store::Severity::Info,
            metadata_json: "{}".into(),
            reported_by: "operator".into(),
            created_at_ms: 1_790_000_000_000,
            prev_hash: [0; 32],
            agent_prev_hash: [0; 32],
            hash: [0; 32],
        };
        event.hash = raft_store::chain::event_hash(&event);
        vec![CommandResult::Appended {
            events: vec![event],
            replayed: false,
        }]
    }

    /// Answers here are grouped, at most `ANSWER_GROUP_ANSWERS_MAX` to a group; forwarded
    /// batches, results without events and an answer left over alone are not.
    #[test]
    fn groups_hold_this_nodes_answers_up_to_the_limit() {
        let stats = WriterStats::default();
        let here = ANSWER_GROUP_ANSWERS_MAX + 1;
        let mut answers: Vec<(Vec<CommandResult>, bool)> = (0..here as u64)
            .map(|seq| (appended(seq + 1), true))
            .collect();
        answers.push((appended(1_000), false));
        answers.push((vec![CommandResult::Done], true));
        answers.push((
            appended(2_000).into_iter().chain(appended(2_001)).collect(),
            false,
        ));
        let seats = group_seats(&answers, &stats);
        assert_eq!(seats.len(), answers.len());
        assert!(
            seats[..ANSWER_GROUP_ANSWERS_MAX]
                .iter()
                .all(Option::is_some)
        );
        // The one past the limit would be a group of one: signed alone.
        assert!(
            seats[ANSWER_GROUP_ANSWERS_MAX..]
                .iter()
                .all(Option::is_none)
        );
        for (seat, (results, _)) in seats.iter().zip(&answers) {
            if let (Some(seat), Some(event)) = (seat, signed_event(&results[0])) {
                assert!(seat.holds(&event.hash));
            }
        }

        let two: Vec<(Vec<CommandResult>, bool)> = vec![(appended(1), true), (appended(2), true)];
        assert!(group_seats(&two, &stats).iter().all(Option::is_some));
        assert!(group_seats(&two[..1], &stats)[0].is_none());
    }
}
