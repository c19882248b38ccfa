//! What verification costs per event, on one core: the chain hash and Merkle leaf of an event,
//! appending the leaf to the Merkle tree (what the state machine does at apply), canonicalising
//! its metadata (what the API does on report), and an Ed25519 signature (what the answering
//! node does for each event it serves). Run: `cargo run --release -p verifier --example cost`.

use std::hint::black_box;
use std::time::Instant;

use verifier::event::EventFields;

const EVENTS: u64 = 200_000;

fn per_event(label: &str, started: Instant, count: u64) {
    let micros = started.elapsed().as_secs_f64() * 1e6 / count as f64;
    println!("{label:<44} {micros:>8.3} µs/event");
}

fn main() {
    let metadata = serde_json::json!({ "task_id": "scan-42", "duration_ms": 1230, "result": "3 vulnerabilities found", "pad": "x".repeat(120) });
    let metadata_jcs = verifier::canonical::canonical_json(&metadata).expect("jcs");
    let fields = |seq: u64, prev: [u8; 32]| EventFields {
        seq,
        id: [seq as u8; 16],
        agent_id: [1; 16],
        asn: "ASN-2026-0384-7721-A",
        event_type: "task_completed",
        severity: 0,
        metadata_jcs: &metadata_jcs,
        reported_by: "operator",
        created_at_ms: 1_780_000_000_000 + seq as i64,
        prev_hash: prev,
        agent_prev_hash: prev,
    };
    println!(
        "event of {} bytes encoded (metadata {} bytes), {EVENTS} events",
        verifier::event::encode(&fields(1, [0; 32])).len(),
        metadata_jcs.len()
    );

    let started = Instant::now();
    for _ in 0..EVENTS / 10 {
        black_box(verifier::canonical::canonical_json(black_box(&metadata)).expect("jcs"));
    }
    per_event(
        "canonical JSON of the metadata (RFC 8785)",
        started,
        EVENTS / 10,
    );

    let started = Instant::now();
    let mut prev = [0u8; 32];
    for seq in 1..=EVENTS {
        prev = verifier::event::event_hash(black_box(&fields(seq, prev)));
    }
    per_event("chain hash (SHA-256 of the encoding)", started, EVENTS);

    let started = Instant::now();
    let mut leaves = Vec::with_capacity(EVENTS as usize);
    for seq in 1..=EVENTS {
        leaves.push(verifier::event::leaf_hash(black_box(&fields(seq, prev))));
    }
    per_event("Merkle leaf hash", started, EVENTS);

    let started = Instant::now();
    let mut tree = verifier::merkle::MemoryTree::new();
    for leaf in &leaves {
        tree.push(*leaf).expect("push");
    }
    per_event(
        "Merkle append (subtrees completed, in memory)",
        started,
        EVENTS,
    );

    let started = Instant::now();
    for seq in (1..=EVENTS).step_by(97) {
        black_box(tree.inclusion_proof(seq - 1, EVENTS).expect("proof"));
    }
    per_event(
        "inclusion proof (per proof served)",
        started,
        EVENTS.div_ceil(97),
    );

    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let started = Instant::now();
    for leaf in leaves.iter().take(20_000) {
        black_box(verifier::event::sign(leaf, &key));
    }
    per_event("Ed25519 signature (per event served)", started, 20_000);

    let public = key.verifying_key().to_bytes();
    let signature = verifier::event::sign(&leaves[0], &key);
    let started = Instant::now();
    for _ in 0..20_000 {
        black_box(verifier::event::verify_signature(
            &leaves[0], &signature, &public,
        ))
        .expect("verifies");
    }
    per_event("Ed25519 verification (per event audited)", started, 20_000);
}
