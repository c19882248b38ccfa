//! `ledgerctl trust-score ASN --url URL [--key KEY]`: recomputes an agent's trust score from its
//! verified history with `verifier::trust` and compares it with the score the node serves
//! (docs/TRUST_SCORE.md).
//!
//! Steps: fetch the keys and the served score (which names its ledger position: size `N`, head
//! hash, time); fetch the agent's history through the activity API (the owner's key sees all of
//! it; without one only the 50 most recent events are public); check every event's hash and
//! signature and the agent's hash chain from its first event (`agent_prev_hash` all zeroes);
//! check that event `N` is in a signed checkpoint and is the position's head hash and time;
//! recompute the score from the events up to `N`; compare. Any difference or failed check is an
//! error (exit 1).

use std::collections::BTreeMap;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use anyhow::ensure;
use serde_json::Value;

use crate::Keys;
use crate::ServedEvent;
use crate::audit::Node;

/// Largest page of the activity API.
const ACTIVITY_PAGE_EVENTS: u64 = 50;

/// Stop paging after this many pages more than the first answer announced (the history grows
/// while we read it, newest first, so later pages repeat events; they never skip any).
const EXTRA_PAGES_MAX: u64 = 100;

/// Arguments of `ledgerctl trust-score` (the node and key come from the global options).
#[derive(Debug)]
pub struct TrustScoreArgs {
    /// The agent's ASN.
    pub asn: String,
    /// HTTP URL of the node to read from.
    pub url: String,
    /// The owner's API key (`read` or `write`): the full history. Without it only the public
    /// window of 50 events is readable, which is enough only for agents with at most 50 events.
    pub key: Option<String>,
}

/// The served score's claims.
#[derive(Debug)]
struct Served {
    score: u64,
    seq: u64,
    head_hash: String,
    time_ms: i64,
    status: String,
    agent_events_total: u64,
}

fn served(body: &Value) -> Result<Served> {
    let field = |path: &[&str]| -> Result<&Value> {
        let mut value = body;
        for name in path {
            value = value
                .get(name)
                .with_context(|| format!("trust-score answer: no {}", path.join(".")))?;
        }
        Ok(value)
    };
    Ok(Served {
        score: field(&["trust_score"])?.as_u64().context("trust_score")?,
        seq: field(&["position", "seq"])?
            .as_u64()
            .context("position.seq")?,
        head_hash: field(&["position", "head_hash"])?
            .as_str()
            .context("position.head_hash")?
            .to_owned(),
        time_ms: field(&["position", "time_ms"])?
            .as_i64()
            .context("position.time_ms")?,
        status: field(&["status"])?.as_str().context("status")?.to_owned(),
        agent_events_total: field(&["inputs", "agent_events_total"])?
            .as_u64()
            .context("inputs.agent_events_total")?,
    })
}

/// Every event of `asn` the caller may read, by `seq`, each checked (hash, signature).
fn history(
    client: &Node,
    keys: &Keys,
    asn: &str,
    key: Option<&str>,
) -> Result<BTreeMap<u64, ServedEvent>> {
    let mut events = BTreeMap::new();
    let mut page = 1;
    let mut pages_max = None;
    loop {
        let body = client.get(
            &format!("/api/v1/agents/{asn}/activity?page={page}&per_page={ACTIVITY_PAGE_EVENTS}"),
            key,
        )?;
        let data = body["data"].as_array().context("activity: no data")?;
        let total_pages = body["pagination"]["total_pages"]
            .as_u64()
            .context("activity: no pagination.total_pages")?;
        let limit = *pages_max.get_or_insert(total_pages + EXTRA_PAGES_MAX);
        for value in data {
            let event = ServedEvent::from_json(value)?;
            event.check(keys)?;
            ensure!(
                event.asn == asn,
                "event {} of the activity of {asn} is of {}",
                event.seq,
                event.asn
            );
            events.insert(event.seq, event);
        }
        if data.is_empty() || page >= total_pages {
            return Ok(events);
        }
        page += 1;
        ensure!(
            page <= limit,
            "the activity of {asn} kept growing over {limit} pages"
        );
    }
}

/// Runs the command; the summary on success.
pub fn run(args: &TrustScoreArgs) -> Result<String> {
    let client = Node::new(&args.url)?;
    let asn = args.asn.as_str();
    let key = args.key.as_deref();
    let keys = Keys::from_json(&client.get("/api/v1/ledger/keys", None)?)?;
    let served = served(&client.get(&format!("/api/v1/agents/{asn}/trust-score"), key)?)?;

    // The position: event N is in a signed checkpoint, with the named hash and time.
    if served.seq > 0 {
        let receipt = client.get(
            &format!("/api/v1/ledger/entries/{}/proof", served.seq),
            None,
        )?;
        crate::verify_receipt(&receipt, &keys)?;
        let head = ServedEvent::from_json(&receipt["event"])?;
        ensure!(
            hex::encode(head.hash) == served.head_hash,
            "position: event {} has hash {}, the score names {}",
            served.seq,
            hex::encode(head.hash),
            served.head_hash
        );
        ensure!(
            head.created_at_ms == served.time_ms,
            "position: event {} was created at {} ms, the score names {} ms",
            served.seq,
            head.created_at_ms,
            served.time_ms
        );
    }

    // The history up to the position, complete from the agent's first event.
    let all = history(&client, &keys, asn, key)?;
    let events: Vec<&ServedEvent> = all.range(..=served.seq).map(|(_, e)| e).collect();
    let mut previous = [0u8; 32];
    for event in &events {
        if event.agent_prev_hash != previous {
            if previous == [0u8; 32] {
                bail!(
                    "the history of {asn} shown starts at event {}, not at the agent's first \
                     (only a window is readable: pass the owner's --key)",
                    event.seq
                );
            }
            bail!(
                "the history of {asn} is not one chain: event {} does not link to the one before",
                event.seq
            );
        }
        previous = event.hash;
    }
    ensure!(
        events.len() as u64 == served.agent_events_total,
        "the node says {asn} has {} events up to seq {}, its history shows {}",
        served.agent_events_total,
        served.seq,
        events.len()
    );

    let days = verifier::trust::tally(events.iter().map(|e| (e.created_at_ms, e.severity)))?;
    let recomputed = verifier::trust::score(served.time_ms, &days);
    if recomputed.score != served.score {
        bail!(
            "trust score of {asn} at seq {}: served {}, recomputed {} from {} verified events \
             (good {}, bad {})",
            served.seq,
            served.score,
            recomputed.score,
            events.len(),
            recomputed.good,
            recomputed.bad
        );
    }
    Ok(format!(
        "trust score of {asn} ({}) at seq {}: {} (recomputed from {} verified events, {} in the \
         window; good {}, bad {}): matches",
        served.status,
        served.seq,
        served.score,
        events.len(),
        recomputed.events_in_window,
        recomputed.good,
        recomputed.bad
    ))
}
