//! Offline verification of bundles built here from fixed keys, as the API would serve them:
//! a good bundle verifies; changing any single field of any event, the checkpoint or the keys
//! makes it fail, naming the event where it can.

use serde_json::Value;
use serde_json::json;
use verifier::event::EventFields;

const ORIGIN: &str = "asn-ledger/00000000-0000-0000-0000-000000000000";

fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[3; 32])
}

fn name() -> String {
    format!("{ORIGIN}/node-1")
}

/// A bundle of `n` events over two agents, exactly as `ledgerctl export` writes it.
fn bundle(n: u64) -> Value {
    let key = signing_key();
    let public = key.verifying_key().to_bytes();
    let agents = [
        ([1u8; 16], "ASN-2026-0004-8271-L"),
        ([2u8; 16], "ASN-2026-0009-6542-Q"),
    ];
    let mut prev = [0u8; 32];
    let mut agent_prev = [[0u8; 32]; 2];
    let mut tree = verifier::merkle::MemoryTree::new();
    let mut events = Vec::new();
    for seq in 1..=n {
        let a = (seq % 2) as usize;
        let metadata = json!({ "n": seq, "note": "ünïcode", "ratio": 0.5 });
        let metadata_jcs = verifier::canonical::canonical_json(&metadata).expect("jcs");
        let created_at_ms = 1_780_000_000_000 + seq as i64;
        let id = [seq as u8; 16];
        let fields = EventFields {
            seq,
            id,
            agent_id: agents[a].0,
            asn: agents[a].1,
            event_type: "task_completed",
            severity: 0,
            metadata_jcs: &metadata_jcs,
            reported_by: "operator",
            created_at_ms,
            prev_hash: prev,
            agent_prev_hash: agent_prev[a],
        };
        let hash = verifier::event::event_hash(&fields);
        tree.push(verifier::event::leaf_hash(&fields))
            .expect("push");
        let created_at = chrono::DateTime::from_timestamp_millis(created_at_ms)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        events.push(json!({
            "id": uuid::Uuid::from_bytes(id).to_string(),
            "agent_id": uuid::Uuid::from_bytes(agents[a].0).to_string(),
            "event_type": "task_completed",
            "severity": "info",
            "metadata": metadata,
            "reported_by": "operator",
            "created_at": created_at,
            "asn": agents[a].1,
            "seq": seq,
            "hash": hex::encode(hash),
            "prev_hash": hex::encode(prev),
            "agent_prev_hash": hex::encode(agent_prev[a]),
            "signature": hex::encode(verifier::event::sign(&hash, &key)),
            "signer": name(),
            "key_id": hex::encode(verifier::note::key_id(&name(), &public)),
        }));
        prev = hash;
        agent_prev[a] = hash;
    }
    let checkpoint = verifier::checkpoint::Checkpoint {
        origin: ORIGIN.into(),
        size: n,
        root: tree.root(n).expect("root"),
        head_hash: prev,
        time_ms: 1_780_000_000_000 + n as i64,
    };
    json!({
        "keys": { "origin": ORIGIN, "keys": [{ "node_id": 1, "name": name(), "public_key": hex::encode(public) }] },
        "checkpoint": verifier::checkpoint::sign(&checkpoint, &name(), &key),
        "events": events,
    })
}

#[test]
fn a_bundle_verifies() {
    let summary = ledgerctl::verify_bundle(&bundle(9)).expect("verifies");
    assert!(summary.contains("9 events"), "{summary}");
}

#[test]
fn any_changed_field_of_any_event_fails_and_is_named() {
    let good = bundle(6);
    let fields = [
        "id",
        "agent_id",
        "event_type",
        "severity",
        "metadata",
        "reported_by",
        "created_at",
        "asn",
        "seq",
        "hash",
        "prev_hash",
        "agent_prev_hash",
        "signature",
    ];
    for index in 0..6 {
        for field in fields {
            let mut bad = good.clone();
            let value = &mut bad["events"][index][field];
            *value = match value.clone() {
                Value::String(s) if field == "severity" => {
                    json!(if s == "info" { "error" } else { "info" })
                }
                Value::String(s) if field == "created_at" => json!(s.replace(".0", ".9")),
                Value::String(s) if field.ends_with("id") && s.contains('-') => {
                    json!(format!(
                        "{}{}",
                        if s.starts_with('f') { "0" } else { "f" },
                        &s[1..]
                    ))
                }
                Value::String(s) => {
                    let mut chars: Vec<char> = s.chars().collect();
                    let last = chars.len() - 1;
                    chars[last] = if chars[last] == '0' { '1' } else { '0' };
                    json!(chars.into_iter().collect::<String>())
                }
                Value::Number(n) => json!(n.as_u64().unwrap_or(0) + 1),
                Value::Object(mut map) => {
                    map.insert("n".into(), json!(-1));
                    Value::Object(map)
                }
                other => panic!("unexpected {field}: {other}"),
            };
            let error = ledgerctl::verify_bundle(&bad)
                .err()
                .unwrap_or_else(|| panic!("events[{index}].{field} changed but verified"));
            let seq = index + 1;
            let message = format!("{error:#}");
            assert!(
                message.contains(&format!("event {seq}"))
                    || message.contains(&format!("event {}", seq + 1))
                    || field == "seq",
                "events[{index}].{field}: {message}"
            );
        }
    }
}

#[test]
fn a_changed_checkpoint_or_key_fails() {
    let good = bundle(5);
    let note = good["checkpoint"].as_str().expect("note").to_owned();
    for at in 0..note.len() {
        if !note.is_char_boundary(at) || !note.is_char_boundary(at + 1) {
            continue;
        }
        let byte = note.as_bytes()[at];
        let replacement = if byte == b'A' { "B" } else { "A" };
        let mut bad = good.clone();
        bad["checkpoint"] = json!(format!("{}{}{}", &note[..at], replacement, &note[at + 1..]));
        assert!(
            ledgerctl::verify_bundle(&bad).is_err(),
            "checkpoint byte {at} changed but verified"
        );
    }
    let mut bad = good.clone();
    bad["keys"]["keys"][0]["public_key"] = json!(hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[4; 32])
            .verifying_key()
            .to_bytes()
    ));
    assert!(
        ledgerctl::verify_bundle(&bad).is_err(),
        "another key verified"
    );
    // A bundle that stops short of its checkpoint does not verify either.
    let mut short = good.clone();
    short["events"].as_array_mut().expect("events").pop();
    assert!(
        ledgerctl::verify_bundle(&short).is_err(),
        "a bundle missing its last event verified"
    );
}
