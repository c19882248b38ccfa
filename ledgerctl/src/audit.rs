//! `verify audit` and `export`: a live cluster read over HTTP only, each node's ledger walked
//! and checked with the `verifier` crate against its own signed checkpoint.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use serde_json::Value;

use crate::Audit;
use crate::Keys;
use crate::ServedEvent;

/// Events fetched per request while walking the ledger.
const PAGE_EVENTS: u64 = 1000;

/// One node, read over HTTP (GETs that answer JSON), for the checks that trust nothing.
pub(crate) struct Node {
    url: String,
    http: reqwest::blocking::Client,
}

impl Node {
    pub(crate) fn new(url: &str) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// GET `path` (with `key` as the bearer, if any); an answer other than 2xx is an error.
    pub(crate) fn get(&self, path: &str, key: Option<&str>) -> Result<Value> {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .with_context(|| format!("{}{path}", self.url))?;
        let status = response.status();
        let body: Value = response
            .json()
            .with_context(|| format!("{}{path}: not JSON", self.url))?;
        if !status.is_success() {
            bail!("{}{path}: {status} {body}", self.url);
        }
        Ok(body)
    }

    /// Events `from..=to`, in order.
    fn events(&self, to: u64, mut each: impl FnMut(ServedEvent) -> Result<()>) -> Result<()> {
        let mut next = 1;
        while next <= to {
            let limit = PAGE_EVENTS.min(to - next + 1);
            let page = self.get(
                &format!("/api/v1/ledger/events?from_seq={next}&limit={limit}"),
                None,
            )?;
            let events = page["events"].as_array().context("events: not an array")?;
            if events.is_empty() {
                bail!(
                    "{}: no event {next} although its checkpoint has {to}",
                    self.url
                );
            }
            for value in events {
                each(ServedEvent::from_json(value)?)?;
                next += 1;
            }
        }
        Ok(())
    }
}

pub fn audit(urls: &[String], asn: Option<&str>, key: Option<&str>) -> Result<String> {
    let nodes: Vec<Node> = urls.iter().map(|u| Node::new(u)).collect::<Result<_>>()?;
    let keys = Keys::from_json(&nodes[0].get("/api/v1/ledger/keys", None)?)?;
    for node in &nodes[1..] {
        let other = Keys::from_json(&node.get("/api/v1/ledger/keys", None)?)?;
        if other != keys {
            bail!("{} publishes other keys than {}", node.url, nodes[0].url);
        }
    }
    let list = keys.as_list();
    let mut checkpoints = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let answer = node.get("/api/v1/ledger/checkpoint", None)?;
        let note = answer["note"].as_str().context("checkpoint: no note")?;
        let (checkpoint, _signers) = verifier::checkpoint::verify(note, &list)
            .map_err(|e| anyhow!("{}: checkpoint: {e}", node.url))?;
        if checkpoint.origin != keys.origin {
            bail!(
                "{}: checkpoint of origin {}, keys of {}",
                node.url,
                checkpoint.origin,
                keys.origin
            );
        }
        checkpoints.push(checkpoint);
    }
    // Every node's own ledger, walked in full against its own signed checkpoint.
    for (node, checkpoint) in nodes.iter().zip(&checkpoints) {
        let mut walk = Audit::new(&keys);
        node.events(checkpoint.size, |event| walk.push(&event))
            .map_err(|e| anyhow!("{}: {e}", node.url))?;
        walk.check_checkpoint(checkpoint)
            .map_err(|e| anyhow!("{}: {e}", node.url))?;
        // Spot-check the node's own inclusion proofs against its checkpoint.
        for seq in [1, checkpoint.size / 2 + 1, checkpoint.size] {
            if seq == 0 || seq > checkpoint.size {
                continue;
            }
            let answer = node.get(
                &format!(
                    "/api/v1/ledger/entries/{seq}/proof?tree_size={}",
                    checkpoint.size
                ),
                None,
            )?;
            let event = ServedEvent::from_json(&answer["event"])?;
            let proof = verifier::proof::InclusionProof::from_json_value(answer["proof"].clone())
                .map_err(|e| anyhow!("{}: proof of {seq}: {e}", node.url))?;
            proof
                .verify(
                    &verifier::event::leaf_hash(&event.fields()),
                    &checkpoint.root,
                )
                .map_err(|e| anyhow!("{}: inclusion proof of event {seq}: {e}", node.url))?;
        }
    }
    // Nodes agree: equal sizes, equal trees; a smaller tree is a prefix of a larger one.
    for (i, a) in checkpoints.iter().enumerate() {
        for (j, b) in checkpoints.iter().enumerate().skip(i + 1) {
            let (small, large, large_node) = if a.size <= b.size {
                (a, b, &nodes[j])
            } else {
                (b, a, &nodes[i])
            };
            if small.size == large.size {
                if small.root != large.root || small.head_hash != large.head_hash {
                    bail!(
                        "{} and {} disagree at size {}",
                        nodes[i].url,
                        nodes[j].url,
                        small.size
                    );
                }
            } else if small.size > 0 {
                let answer = large_node.get(
                    &format!(
                        "/api/v1/ledger/consistency?from={}&to={}",
                        small.size, large.size
                    ),
                    None,
                )?;
                let proof = verifier::proof::ConsistencyProof::from_json_value(answer)
                    .map_err(|e| anyhow!("consistency proof: {e}"))?;
                proof.verify(&small.root, &large.root).map_err(|e| {
                    anyhow!(
                        "the tree of {} events is not a prefix of the tree of {}: {e}",
                        small.size,
                        large.size
                    )
                })?;
            }
        }
    }
    let largest = checkpoints
        .iter()
        .max_by_key(|c| c.size)
        .context("no checkpoint")?;
    let mut summary = format!(
        "audit passed: {} node(s) agree; {} events verified up to root {} (hashes, links, signatures, Merkle tree, proofs)",
        nodes.len(),
        largest.size,
        hex::encode(largest.root)
    );
    if let Some(asn) = asn {
        summary.push_str(&format!(
            "; {}",
            audit_agent(&nodes[0], &keys, &checkpoints[0], asn, key)?
        ));
    }
    Ok(summary)
}

/// One agent's history through the activity API: each event's own checks, its inclusion proof
/// against the node's checkpoint, and the per-agent links between consecutive events.
fn audit_agent(
    node: &Node,
    keys: &Keys,
    checkpoint: &verifier::checkpoint::Checkpoint,
    asn: &str,
    key: Option<&str>,
) -> Result<String> {
    let mut events = Vec::new();
    let mut page = 1;
    loop {
        let answer = node.get(
            &format!("/api/v1/agents/{asn}/activity?page={page}&per_page=50"),
            key,
        )?;
        let data = answer["data"].as_array().context("data: not an array")?;
        for value in data {
            events.push(ServedEvent::from_json(value)?);
        }
        let pages = answer["pagination"]["total_pages"].as_u64().unwrap_or(0);
        if page >= pages {
            break;
        }
        page += 1;
    }
    events.retain(|e| e.seq <= checkpoint.size);
    events.sort_by_key(|e| e.seq);
    for (i, event) in events.iter().enumerate() {
        event.check(keys)?;
        if event.asn != asn {
            bail!("event {} belongs to {}, not {asn}", event.seq, event.asn);
        }
        if i > 0 && event.agent_prev_hash != events[i - 1].hash {
            bail!(
                "event {}: agent_prev_hash is not the hash of event {}",
                event.seq,
                events[i - 1].seq
            );
        }
        let answer = node.get(
            &format!(
                "/api/v1/ledger/entries/{}/proof?tree_size={}",
                event.seq, checkpoint.size
            ),
            None,
        )?;
        let proof = verifier::proof::InclusionProof::from_json_value(answer["proof"].clone())
            .map_err(|e| anyhow!("proof of {}: {e}", event.seq))?;
        proof
            .verify(
                &verifier::event::leaf_hash(&event.fields()),
                &checkpoint.root,
            )
            .map_err(|e| anyhow!("inclusion proof of event {}: {e}", event.seq))?;
    }
    if events.first().is_some_and(|e| e.agent_prev_hash == [0; 32]) || events.is_empty() {
        Ok(format!(
            "agent {asn}: its whole history ({} events) verified",
            events.len()
        ))
    } else {
        Ok(format!(
            "agent {asn}: its {} most recent events verified (a window of its history)",
            events.len()
        ))
    }
}

pub fn export(url: &str, output: &Path) -> Result<String> {
    let node = Node::new(url)?;
    let keys = node.get("/api/v1/ledger/keys", None)?;
    let checkpoint = node.get("/api/v1/ledger/checkpoint", None)?;
    let size = checkpoint["size"].as_u64().context("checkpoint: no size")?;
    let mut events = Vec::new();
    let mut next = 1;
    while next <= size {
        let limit = PAGE_EVENTS.min(size - next + 1);
        let page = node.get(
            &format!("/api/v1/ledger/events?from_seq={next}&limit={limit}"),
            None,
        )?;
        let batch = page["events"].as_array().context("events: not an array")?;
        if batch.is_empty() {
            bail!("no event {next}");
        }
        next += batch.len() as u64;
        events.extend(batch.iter().cloned());
    }
    let bundle =
        serde_json::json!({ "keys": keys, "checkpoint": checkpoint["note"], "events": events });
    std::fs::write(output, serde_json::to_vec_pretty(&bundle)?)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(format!("exported {size} events to {}", output.display()))
}
