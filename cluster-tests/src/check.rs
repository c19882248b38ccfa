//! Invariant checks run after a scenario (reliability guide §3.1).
//!
//! - [`chain`]: `seq` dense from 1, `prev_hash` links, no event id twice (I3, I7).
//! - [`acked_present`]: every acknowledged append is at its `seq` with its id and hash (I1, I2).
//! - [`no_phantoms`]: every event maps to an attempted operation (I4).
//! - [`identical`]: all nodes hold the same sequence (I5).
//! - [`real_time_order`]: an append acknowledged before another was sent has a smaller `seq` (I6).
//! - [`converged`]: polls until all given nodes report the same local head.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::api::{Api, Consistency, Event, Head};
use crate::workload::Ack;

/// `seq` is 1, 2, 3, ...; each `prev_hash` is the previous event's `hash`; ids are unique;
/// hashes look like 64 lowercase hex digits.
pub fn chain(node: u64, events: &[Event]) -> Result<()> {
    let mut ids = HashSet::new();
    for (index, event) in events.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        ensure!(
            event.seq == expected_seq,
            "node {node}: event #{index} has seq {} (expected {expected_seq})",
            event.seq
        );
        ensure!(
            is_hex64(&event.hash),
            "node {node}: seq {} has a malformed hash {:?}",
            event.seq,
            event.hash
        );
        ensure!(
            is_hex64(&event.prev_hash),
            "node {node}: seq {} has a malformed prev_hash {:?}",
            event.seq,
            event.prev_hash
        );
        if index > 0 {
            let previous = &events[index - 1];
            ensure!(
                event.prev_hash == previous.hash,
                "node {node}: seq {} prev_hash {} != hash {} of seq {}",
                event.seq,
                event.prev_hash,
                previous.hash,
                previous.seq
            );
        }
        ensure!(
            ids.insert(event.id.as_str()),
            "node {node}: event id {} appears twice (second at seq {})",
            event.id,
            event.seq
        );
    }
    Ok(())
}

/// Every acknowledged append is present exactly once, at its acknowledged `seq`, with its
/// acknowledged id and hash, and carries its operation token.
pub fn acked_present(node: u64, events: &[Event], acked: &[Ack]) -> Result<()> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for event in events {
        *by_id.entry(event.id.as_str()).or_insert(0) += 1;
    }
    let mut by_op: HashMap<&str, usize> = HashMap::new();
    for event in events {
        if let Some(op) = event.metadata.get("op").and_then(|op| op.as_str()) {
            *by_op.entry(op).or_insert(0) += 1;
        }
    }
    for ack in acked {
        let seq = ack.event.seq;
        let Some(event) = seq.checked_sub(1).and_then(|i| events.get(i as usize)) else {
            bail!(
                "node {node}: acknowledged seq {seq} (op {}, id {}) is missing: the log has {} \
                 events",
                ack.op,
                ack.event.id,
                events.len()
            );
        };
        ensure!(
            event.id == ack.event.id,
            "node {node}: seq {seq} holds id {} but id {} (op {}) was acknowledged there",
            event.id,
            ack.event.id,
            ack.op
        );
        ensure!(
            event.hash == ack.event.hash,
            "node {node}: seq {seq} has hash {} but {} was acknowledged",
            event.hash,
            ack.event.hash
        );
        ensure!(
            event.prev_hash == ack.event.prev_hash,
            "node {node}: seq {seq} has prev_hash {} but {} was acknowledged",
            event.prev_hash,
            ack.event.prev_hash
        );
        let id_count = by_id.get(ack.event.id.as_str()).copied().unwrap_or(0);
        ensure!(
            id_count == 1,
            "node {node}: acknowledged id {} appears {id_count} times",
            ack.event.id
        );
        let op_count = by_op.get(ack.op.as_str()).copied().unwrap_or(0);
        ensure!(
            op_count == 1,
            "node {node}: acknowledged op {} appears {op_count} times",
            ack.op
        );
    }
    Ok(())
}

/// Every event carries the token of an attempted operation.
pub fn no_phantoms(node: u64, events: &[Event], attempted_ops: &HashSet<String>) -> Result<()> {
    for event in events {
        let op = event
            .metadata
            .get("op")
            .and_then(|op| op.as_str())
            .with_context(|| {
                format!(
                    "node {node}: seq {} has no op token: {}",
                    event.seq, event.metadata
                )
            })?;
        ensure!(
            attempted_ops.contains(op),
            "node {node}: seq {} carries op {op}, which was never attempted (phantom)",
            event.seq
        );
    }
    Ok(())
}

/// All nodes hold exactly the same events.
pub fn identical(logs: &BTreeMap<u64, Vec<Event>>) -> Result<()> {
    let mut iter = logs.iter();
    let Some((first_node, first)) = iter.next() else {
        return Ok(());
    };
    for (node, log) in iter {
        ensure!(
            log.len() == first.len(),
            "node {node} has {} events, node {first_node} has {}",
            log.len(),
            first.len()
        );
        for (a, b) in first.iter().zip(log) {
            ensure!(
                a == b,
                "seq {}: node {first_node} has {a:?}\nbut node {node} has {b:?}",
                a.seq
            );
        }
    }
    Ok(())
}

/// If append A was acknowledged before append B was sent, `seq(A) < seq(B)`.
pub fn real_time_order(acked: &[Ack]) -> Result<()> {
    if let Some(reorder) = reorders(acked).first() {
        bail!(
            "op {} was sent after op {} was acknowledged at seq {}, but got seq {}",
            reorder.later_op,
            reorder.earlier_op,
            reorder.earlier_seq,
            reorder.later_seq
        );
    }
    Ok(())
}

/// An append B sent after append A was acknowledged, with `seq(B) <= seq(A)`.
struct Reorder<'a> {
    earlier_op: &'a str,
    earlier_seq: u64,
    later_op: &'a str,
    later_seq: u64,
}

/// Every append B for which some append A acknowledged before B was sent has a `seq` at least
/// as large (one sweep: B in invocation order against the largest `seq` completed before it).
fn reorders(acked: &[Ack]) -> Vec<Reorder<'_>> {
    let mut by_completion: Vec<&Ack> = acked.iter().collect();
    by_completion.sort_by_key(|ack| ack.completed);
    let mut by_invocation: Vec<&Ack> = acked.iter().collect();
    by_invocation.sort_by_key(|ack| ack.invoked);
    let mut completed_index = 0;
    let mut max_seq_completed: Option<(u64, &str)> = None;
    let mut found = Vec::new();
    for b in by_invocation {
        while completed_index < by_completion.len()
            && by_completion[completed_index].completed < b.invoked
        {
            let a = by_completion[completed_index];
            if max_seq_completed.is_none_or(|(seq, _)| a.event.seq > seq) {
                max_seq_completed = Some((a.event.seq, a.op.as_str()));
            }
            completed_index += 1;
        }
        if let Some((seq, op)) = max_seq_completed
            && b.event.seq <= seq
        {
            found.push(Reorder {
                earlier_op: op,
                earlier_seq: seq,
                later_op: &b.op,
                later_seq: b.event.seq,
            });
        }
    }
    found
}

/// Polls until every node in `nodes` reports the same local head, with `size >= size_min`.
pub async fn converged(api: &Api, nodes: &[u64], size_min: u64, timeout: Duration) -> Result<Head> {
    crate::wait_for(
        timeout,
        &format!("nodes {nodes:?} to converge on one head of size >= {size_min}"),
        async || {
            let mut heads = BTreeMap::new();
            for node in nodes {
                let head = api
                    .head(*node, Consistency::Local)
                    .await
                    .with_context(|| format!("local head of node {node}"))?;
                heads.insert(*node, head);
            }
            let first = heads.values().next().context("no nodes given")?.clone();
            let same = heads
                .values()
                .all(|head| head.size == first.size && head.head_hash == first.head_hash);
            ensure!(same && first.size >= size_min, "heads {heads:?}");
            Ok(first)
        },
    )
    .await
}

/// Reads every node's whole log with `consistency=local` and runs [`chain`] on each and
/// [`identical`] on all.
pub async fn local_logs(api: &Api, nodes: &[u64]) -> Result<BTreeMap<u64, Vec<Event>>> {
    let mut logs = BTreeMap::new();
    for node in nodes {
        let events = api.all_events(*node, Consistency::Local).await?;
        chain(*node, &events)?;
        logs.insert(*node, events);
    }
    identical(&logs)?;
    Ok(logs)
}

/// Violations of the checker's invariants, counted instead of stopping at the first (for the
/// soak's headline). Every field must be 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// I1/I2: acknowledged operations not at their `seq` with their hash on some node.
    pub lost: u64,
    /// I3: operation tokens or event ids that appear more than once in a node's log.
    pub duplicated: u64,
    /// I6: appends sent after another was acknowledged that got a smaller `seq`.
    pub reordered: u64,
    /// I7: positions where `seq` is not dense or `prev_hash` is not the previous `hash`.
    pub chain_breaks: u64,
    /// I4: events whose operation token was never attempted.
    pub phantoms: u64,
    /// I5: nodes whose log differs from the first node's (length or any event).
    pub divergent_nodes: u64,
    /// I8: default reads that missed an append acknowledged before they were sent.
    pub stale_reads: u64,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.chain_breaks
            + self.phantoms
            + self.divergent_nodes
            + self.stale_reads
    }
}

/// Counts every violation of I1-I8 in `logs` (each node's whole log) against `history`.
pub fn violations(
    logs: &BTreeMap<u64, Vec<Event>>,
    history: &crate::workload::History,
) -> Violations {
    let mut found = Violations {
        stale_reads: history.stale_reads.len() as u64,
        duplicated: history.duplicate_mismatches.len() as u64,
        ..Violations::default()
    };
    for events in logs.values() {
        let mut ids = HashSet::new();
        let mut ops: HashMap<&str, u64> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            if event.seq != index as u64 + 1
                || (index > 0 && event.prev_hash != events[index - 1].hash)
            {
                found.chain_breaks += 1;
            }
            if !ids.insert(event.id.as_str()) {
                found.duplicated += 1;
            }
            match event.metadata.get("op").and_then(|op| op.as_str()) {
                Some(op) => {
                    let count = ops.entry(op).or_insert(0);
                    *count += 1;
                    if *count == 2 {
                        found.duplicated += 1;
                    }
                    if !history.attempted_ops.contains(op) {
                        found.phantoms += 1;
                    }
                }
                None => found.phantoms += 1,
            }
        }
        for ack in &history.acked {
            let at = ack
                .event
                .seq
                .checked_sub(1)
                .and_then(|i| events.get(i as usize));
            let intact = at.is_some_and(|event| {
                event.id == ack.event.id
                    && event.hash == ack.event.hash
                    && event.metadata.get("op").and_then(|op| op.as_str()) == Some(&ack.op)
            });
            if !intact {
                found.lost += 1;
            }
        }
    }
    let mut iter = logs.values();
    if let Some(first) = iter.next() {
        found.divergent_nodes = iter.filter(|log| *log != first).count() as u64;
    }
    found.reordered = reorders(&history.acked).len() as u64;
    found
}

/// Reads every node's whole log with `consistency=local` without judging it.
pub async fn read_logs(api: &Api, nodes: &[u64]) -> Result<BTreeMap<u64, Vec<Event>>> {
    let mut logs = BTreeMap::new();
    for node in nodes {
        logs.insert(*node, api.all_events(*node, Consistency::Local).await?);
    }
    Ok(logs)
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// After a scenario: reads every node's log locally and checks chain, identity, presence of
/// every acknowledged append, absence of phantoms and real-time order. Returns the common log.
pub async fn history(
    api: &Api,
    nodes: &[u64],
    history: &crate::workload::History,
) -> Result<Vec<Event>> {
    ensure!(
        history.stale_reads.is_empty(),
        "{} stale default reads, first: {}",
        history.stale_reads.len(),
        history.stale_reads[0]
    );
    ensure!(
        history.duplicate_mismatches.is_empty(),
        "{} resends with an Idempotency-Key got another event, first: {}",
        history.duplicate_mismatches.len(),
        history.duplicate_mismatches[0]
    );
    let logs = local_logs(api, nodes).await?;
    for (node, events) in &logs {
        acked_present(*node, events, &history.acked)?;
        no_phantoms(*node, events, &history.attempted_ops)?;
    }
    real_time_order(&history.acked)?;
    Ok(logs.into_values().next().unwrap_or_default())
}

/// The converged log must hold exactly the events checked: `log` is the whole ledger.
pub fn same_size(head: &Head, log: &[Event]) -> Result<()> {
    ensure!(
        log.len() as u64 == head.size,
        "converged size {} but the log has {} events",
        head.size,
        log.len()
    );
    Ok(())
}

/// Waits until `nodes` converge on at least every acknowledged append of `history`, then runs
/// every history check ([`history`]) on them and checks the log is the whole ledger.
pub async fn converged_history(
    api: &Api,
    nodes: &[u64],
    history: &crate::workload::History,
    timeout: Duration,
) -> Result<(Head, Vec<Event>)> {
    let head = converged(api, nodes, history.max_acked_seq(), timeout).await?;
    let log = self::history(api, nodes, history).await?;
    same_size(&head, &log)?;
    Ok((head, log))
}

#[cfg(test)]
mod tests {
    //! The checks must be able to fail: each test breaks a good history in one way.

    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    fn event(seq: u64, prev_hash: &str) -> Event {
        Event {
            id: format!("id-{seq}"),
            agent_id: format!("agent-{}", seq % 3),
            asn: format!("ASN-2026-0000-{:04}-A", seq % 3),
            event_type: "task_completed".to_string(),
            severity: "info".to_string(),
            metadata: json!({ "op": format!("op-{seq}") }),
            reported_by: "admin".to_string(),
            created_at: "2026-01-01T00:00:00Z".to_string(),
            seq,
            hash: format!("{seq:064x}"),
            prev_hash: prev_hash.to_string(),
        }
    }

    fn log(n: u64) -> Vec<Event> {
        (1..=n)
            .map(|seq| event(seq, &format!("{:064x}", seq - 1)))
            .collect()
    }

    fn ack(event: &Event, invoked_ms: u64, completed_ms: u64, base: Instant) -> Ack {
        Ack {
            node: 1,
            op: format!("op-{}", event.seq),
            event: event.clone(),
            invoked: base + Duration::from_millis(invoked_ms),
            completed: base + Duration::from_millis(completed_ms),
        }
    }

    #[test]
    fn good_history_passes() -> Result<()> {
        let events = log(5);
        let base = Instant::now();
        let acked: Vec<Ack> = events
            .iter()
            .map(|e| ack(e, e.seq * 10, e.seq * 10 + 5, base))
            .collect();
        chain(1, &events)?;
        acked_present(1, &events, &acked)?;
        let attempted = acked.iter().map(|a| a.op.clone()).collect();
        no_phantoms(1, &events, &attempted)?;
        real_time_order(&acked)?;
        identical(&BTreeMap::from([(1, events.clone()), (2, events)]))
    }

    #[test]
    fn gap_and_broken_link_and_duplicate_fail() {
        let mut gap = log(5);
        gap.remove(2);
        assert!(chain(1, &gap).is_err());
        let mut broken = log(5);
        broken[3].prev_hash = format!("{:064x}", 99);
        assert!(chain(1, &broken).is_err());
        let mut duplicate = log(5);
        duplicate[4].id = duplicate[1].id.clone();
        assert!(chain(1, &duplicate).is_err());
    }

    #[test]
    fn lost_or_moved_acknowledged_append_fails() {
        let events = log(5);
        let base = Instant::now();
        let mut missing = event(6, &events[4].hash);
        missing.id = "id-6".to_string();
        assert!(acked_present(1, &events, &[ack(&missing, 0, 1, base)]).is_err());
        let mut moved = events[2].clone();
        moved.seq = 4;
        assert!(acked_present(1, &events, &[ack(&moved, 0, 1, base)]).is_err());
        let mut rehashed = events[2].clone();
        rehashed.hash = format!("{:064x}", 77);
        assert!(acked_present(1, &events, &[ack(&rehashed, 0, 1, base)]).is_err());
    }

    #[test]
    fn violations_are_counted() {
        let events = log(4);
        let base = Instant::now();
        let acked: Vec<Ack> = events
            .iter()
            .map(|e| ack(e, e.seq * 10, e.seq * 10 + 5, base))
            .collect();
        let attempted: HashSet<String> = acked.iter().map(|a| a.op.clone()).collect();
        let history = crate::workload::History {
            acked: acked.clone(),
            attempted_ops: attempted,
            ..Default::default()
        };
        let good = BTreeMap::from([(1, events.clone()), (2, events.clone())]);
        assert_eq!(violations(&good, &history), Violations::default());

        let mut short = events.clone();
        short.pop();
        let mut broken = events.clone();
        broken[2].prev_hash = format!("{:064x}", 99);
        let bad = BTreeMap::from([(1, events.clone()), (2, short), (3, broken)]);
        let found = violations(&bad, &history);
        assert_eq!(found.lost, 1);
        assert_eq!(found.chain_breaks, 1);
        assert_eq!(found.divergent_nodes, 2);

        let mut phantom = events.clone();
        phantom[3].metadata = json!({ "op": "never-sent" });
        let found = violations(&BTreeMap::from([(1, phantom)]), &history);
        assert_eq!((found.phantoms, found.lost), (1, 1));

        let reordered = [ack(&events[1], 0, 5, base), ack(&events[0], 10, 15, base)];
        assert_eq!(reorders(&reordered).len(), 1);
    }

    #[test]
    fn phantom_divergence_and_reorder_fail() {
        let events = log(3);
        let attempted = ["op-1".to_string(), "op-2".to_string()].into();
        assert!(no_phantoms(1, &events, &attempted).is_err());
        let mut other = log(3);
        other[2].created_at = "2026-01-01T00:00:01Z".to_string();
        assert!(identical(&BTreeMap::from([(1, events.clone()), (2, other)])).is_err());
        let base = Instant::now();
        // op-3 completed (at 5 ms) before op-2 was sent (at 10 ms) but has the larger seq: fine.
        // op-2 completed before op-1 was sent, yet op-1 has the smaller seq: a reorder.
        let acked = [ack(&events[1], 0, 5, base), ack(&events[0], 10, 15, base)];
        assert!(real_time_order(&acked).is_err());
    }
}
