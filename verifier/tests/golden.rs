//! Golden vectors: `tests/vectors/golden.json` was written once by this
//! generator (`VERIFIER_WRITE_VECTORS=1 cargo test -p verifier --test golden`)
//! and is committed. The test derives everything again and compares, so any
//! change to an encoding, a hash, a proof or a signature fails it.

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use verifier::canonical::canonicalize_str;
use verifier::checkpoint::{self, Checkpoint};
use verifier::event::{self, EventFields, severity_name};
use verifier::merkle::MemoryTree;
use verifier::note;
use verifier::proof::{ConsistencyProof, InclusionProof, verify_receipt};
use verifier::{Hash, ZERO_HASH, hash_to_hex};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/golden.json");
const ORIGIN: &str = "asn-ledger.example/0194f1c2-8a3b-7c4d-9e5f-0a1b2c3d4e5f";

/// (agent 0 or 1, event_type, severity, metadata as sent, reported_by, created_at_ms)
const EVENTS: [(usize, &str, u8, &str, &str, i64); 7] = [
    (
        0,
        "task_completed",
        0,
        r#"{"task_id": "scan-42", "duration_ms": 1230}"#,
        "operator",
        1767225600000,
    ),
    (
        1,
        "incident",
        3,
        r#"{"b": 1, "a": {"z": [1e21, 0.1, -0, 1E-7, 100, 4.50], "y": "caf\u00e9 \ud83d\ude00"}, "\u20ac": "euro", "\r": "cr", "1": "one"}"#,
        "operator",
        1767225600000,
    ),
    (0, "task_failed", 2, r#"{}"#, "admin", 1767225600001),
    (
        1,
        "policy_warning",
        1,
        r#"{"quote": "say \"hi\"\\ \n\t\u0001\u001f\u007f </script>", "nested": {"deep": {"deeper": {"x": null, "t": true, "f": false}}}, "big": 9007199254740993, "neg": -1.5e-10}"#,
        "operator",
        1767225601000,
    ),
    (
        0,
        "heartbeat",
        0,
        r#"{"unicode": "Ünïcödé ✓ 日本語", "num": 333333333.33333329, "exp": 1e-6, "large": 1e300}"#,
        "operator",
        1767225601000,
    ),
    (
        1,
        "task_completed",
        0,
        r#"{"arr": [{"b": 2, "a": 1}, [], {}], "e": 2e-3, "\ufb33": 0, "\ud83d\ude00": 1, "\u0080": 2}"#,
        "operator",
        1767225602500,
    ),
    (
        0,
        "task_completed",
        0,
        r#"{"ok": true}"#,
        "operator",
        1767225603000,
    ),
];

const AGENTS: [([u8; 16], &str); 2] = [
    (
        [
            0x01, 0x94, 0xf1, 0xc2, 0x00, 0x00, 0x7a, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 0x01,
        ],
        "ASN-2026-0004-8271-L",
    ),
    (
        [
            0x01, 0x94, 0xf1, 0xc2, 0x00, 0x00, 0x7a, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 0x02,
        ],
        "ASN-2026-0009-6542-Q",
    ),
];

fn event_id(seq: u64) -> [u8; 16] {
    let mut id = [
        0x01, 0x9b, 0x77, 0x6a, 0x58, 0x00, 0x7b, 0x00, 0x90, 0, 0, 0, 0, 0, 0, 0,
    ];
    id[15] = seq as u8;
    id
}

/// Fixed Ed25519 keys: (name, seed).
fn keys() -> [(&'static str, [u8; 32]); 2] {
    let mut first = [0u8; 32];
    for (i, b) in first.iter_mut().enumerate() {
        *b = i as u8;
    }
    [
        ("node-1.asn-ledger.example", first),
        ("node-2.asn-ledger.example", [0x42; 32]),
    ]
}

struct Owned {
    seq: u64,
    agent: usize,
    event_type: &'static str,
    severity: u8,
    metadata_input: &'static str,
    metadata_jcs: String,
    reported_by: &'static str,
    created_at_ms: i64,
    prev_hash: Hash,
    agent_prev_hash: Hash,
}

impl Owned {
    fn fields(&self) -> EventFields<'_> {
        EventFields {
            seq: self.seq,
            id: event_id(self.seq),
            agent_id: AGENTS[self.agent].0,
            asn: AGENTS[self.agent].1,
            event_type: self.event_type,
            severity: self.severity,
            metadata_jcs: &self.metadata_jcs,
            reported_by: self.reported_by,
            created_at_ms: self.created_at_ms,
            prev_hash: self.prev_hash,
            agent_prev_hash: self.agent_prev_hash,
        }
    }
}

fn events() -> Vec<Owned> {
    let mut out: Vec<Owned> = Vec::new();
    let mut prev = ZERO_HASH;
    let mut agent_prev = [ZERO_HASH; 2];
    for (i, (agent, event_type, severity, metadata, reported_by, created_at_ms)) in
        EVENTS.iter().enumerate()
    {
        let e = Owned {
            seq: i as u64 + 1,
            agent: *agent,
            event_type,
            severity: *severity,
            metadata_input: metadata,
            metadata_jcs: canonicalize_str(metadata).expect("metadata"),
            reported_by,
            created_at_ms: *created_at_ms,
            prev_hash: prev,
            agent_prev_hash: agent_prev[*agent],
        };
        let hash = event::event_hash(&e.fields());
        prev = hash;
        agent_prev[*agent] = hash;
        out.push(e);
    }
    out
}

fn generate() -> Value {
    let events = events();
    let mut tree = MemoryTree::new();
    let mut event_docs = Vec::new();
    for e in &events {
        let f = e.fields();
        let encoding = event::encode(&f);
        assert_eq!(encoding.len(), f.encoded_len());
        assert_eq!(verifier::merkle::leaf_hash(&encoding), event::leaf_hash(&f));
        tree.push(event::leaf_hash(&f)).expect("push");
        event_docs.push(json!({
            "seq": e.seq,
            "id": hex::encode(f.id),
            "agent_id": hex::encode(f.agent_id),
            "asn": f.asn,
            "event_type": f.event_type,
            "severity": severity_name(f.severity),
            "severity_code": f.severity,
            "metadata_input": e.metadata_input,
            "metadata_jcs": f.metadata_jcs,
            "reported_by": f.reported_by,
            "created_at_ms": f.created_at_ms,
            "prev_hash": hash_to_hex(&f.prev_hash),
            "agent_prev_hash": hash_to_hex(&f.agent_prev_hash),
            "encoding": hex::encode(&encoding),
            "hash": hash_to_hex(&event::event_hash(&f)),
            "leaf_hash": hash_to_hex(&event::leaf_hash(&f)),
        }));
    }
    let n = events.len() as u64;
    let roots: Vec<Value> = (1..=n)
        .map(|size| json!({"size": size, "root": hash_to_hex(&tree.root(size).expect("root"))}))
        .collect();
    let mut inclusion = Vec::new();
    for size in 1..=n {
        for index in 0..size {
            let hashes = tree.inclusion_proof(index, size).expect("proof");
            inclusion.push(
                InclusionProof {
                    leaf_index: index,
                    tree_size: size,
                    hashes,
                }
                .to_json_value(),
            );
        }
    }
    let mut consistency = Vec::new();
    for to in 1..=n {
        for from in 1..=to {
            let hashes = tree.consistency_proof(from, to).expect("proof");
            consistency.push(ConsistencyProof { from, to, hashes }.to_json_value());
        }
    }
    let keys = keys();
    let key_docs: Vec<Value> = keys
        .iter()
        .map(|(name, seed)| {
            let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
            json!({
                "name": name,
                "seed": hex::encode(seed),
                "public_key": hex::encode(public),
                "key_id": hex::encode(checkpoint::key_id(name, &public)),
                "vkey": note::vkey(name, &public),
            })
        })
        .collect();
    let checkpoints: Vec<Value> = [4u64, 7]
        .iter()
        .map(|&size| {
            let last = events[size as usize - 1].fields();
            let cp = Checkpoint {
                origin: ORIGIN.to_owned(),
                size,
                root: tree.root(size).expect("root"),
                head_hash: event::event_hash(&last),
                time_ms: last.created_at_ms,
            };
            let signed = checkpoint::sign(&cp, keys[0].0, &SigningKey::from_bytes(&keys[0].1));
            let cosigned =
                checkpoint::cosign(&signed, keys[1].0, &SigningKey::from_bytes(&keys[1].1))
                    .expect("cosign");
            json!({
                "origin": cp.origin,
                "size": cp.size,
                "root": hash_to_hex(&cp.root),
                "head_hash": hash_to_hex(&cp.head_hash),
                "time_ms": cp.time_ms,
                "body": checkpoint::body_text(&cp),
                "note": signed,
                "cosigned_note": cosigned,
            })
        })
        .collect();
    let receipt_proof = tree.inclusion_proof(2, 7).expect("proof");
    // An answer group (docs/VERIFYING.md section 9): the answers for events 1, 2 and 3 share
    // one signature by the first key over their group tree's root.
    let group_hashes: Vec<Hash> = events[..3]
        .iter()
        .map(|e| event::event_hash(&e.fields()))
        .collect();
    let group_tree =
        MemoryTree::from_leaves(group_hashes.iter().map(event::group_leaf)).expect("tree");
    let group_size = group_hashes.len() as u64;
    let group_root = group_tree.root(group_size).expect("root");
    let group_signature =
        event::sign_group(group_size, &group_root, &SigningKey::from_bytes(&keys[0].1));
    let group_members: Vec<Value> = group_hashes
        .iter()
        .enumerate()
        .map(|(index, hash)| {
            let index = index as u64;
            json!({
                "hash": hash_to_hex(hash),
                "leaf": hash_to_hex(&event::group_leaf(hash)),
                "signature_proof": InclusionProof {
                    leaf_index: index,
                    tree_size: group_size,
                    hashes: group_tree.inclusion_proof(index, group_size).expect("proof"),
                }
                .to_json_value(),
            })
        })
        .collect();
    json!({
        "description": "asn-ledger verification golden vectors (docs/VERIFYING.md). Hashes and byte strings are lowercase hex. Written once by verifier/tests/golden.rs; never edit by hand.",
        "events": event_docs,
        "roots": roots,
        "inclusion_proofs": inclusion,
        "consistency_proofs": consistency,
        "keys": key_docs,
        "checkpoints": checkpoints,
        "answer_group": {
            "signer": keys[0].0,
            "tree_size": group_size,
            "root": hash_to_hex(&group_root),
            "signed_message": hex::encode(event::group_signature_message(group_size, &group_root)),
            "signature": hex::encode(group_signature),
            "members": group_members,
        },
        "receipt": {
            "event_seq": 3,
            "proof": InclusionProof { leaf_index: 2, tree_size: 7, hashes: receipt_proof }.to_json_value(),
            "checkpoint_note": checkpoints[1]["note"],
        },
    })
}

fn public_keys() -> Vec<(String, [u8; 32])> {
    keys()
        .iter()
        .map(|(name, seed)| {
            (
                (*name).to_owned(),
                SigningKey::from_bytes(seed).verifying_key().to_bytes(),
            )
        })
        .collect()
}

#[test]
fn golden_vectors() {
    let generated = generate();
    if std::env::var_os("VERIFIER_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generated).expect("json") + "\n";
        std::fs::write(PATH, text).expect("write vectors");
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("read vectors")).expect("json");
    assert_eq!(
        generated, stored,
        "golden vectors changed: an encoding is no longer what it was"
    );
}

/// The stored vectors verify with the verifier's own checks (what a
/// third-party implementation would do with them).
#[test]
fn golden_vectors_verify() {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("read vectors")).expect("json");
    let keys = public_keys();
    for cp in stored["checkpoints"].as_array().expect("checkpoints") {
        for field in ["note", "cosigned_note"] {
            let (parsed, signers) =
                checkpoint::verify(cp[field].as_str().expect("note"), &keys).expect("verifies");
            assert_eq!(hash_to_hex(&parsed.root), cp["root"]);
            assert_eq!(signers.len(), if field == "note" { 1 } else { 2 });
        }
    }
    let roots: Vec<Hash> = stored["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .map(|r| verifier::hash_from_hex(r["root"].as_str().expect("root")).expect("hex"))
        .collect();
    let leaves: Vec<Hash> = stored["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| verifier::hash_from_hex(e["leaf_hash"].as_str().expect("leaf")).expect("hex"))
        .collect();
    for p in stored["inclusion_proofs"].as_array().expect("inclusion") {
        let proof = InclusionProof::from_json_value(p.clone()).expect("proof");
        proof
            .verify(
                &leaves[proof.leaf_index as usize],
                &roots[proof.tree_size as usize - 1],
            )
            .expect("inclusion verifies");
    }
    let group = &stored["answer_group"];
    let signer = keys
        .iter()
        .find(|(name, _)| group["signer"] == name.as_str())
        .expect("the group's signer is a golden key");
    let mut signature = [0u8; 64];
    hex::decode_to_slice(
        group["signature"].as_str().expect("signature"),
        &mut signature,
    )
    .expect("hex");
    for member in group["members"].as_array().expect("members") {
        let hash = verifier::hash_from_hex(member["hash"].as_str().expect("hash")).expect("hex");
        let proof =
            InclusionProof::from_json_value(member["signature_proof"].clone()).expect("proof");
        event::verify_answer_signature(&hash, &signature, Some(&proof), &signer.1)
            .expect("the group signature verifies for every member");
    }
    for p in stored["consistency_proofs"]
        .as_array()
        .expect("consistency")
    {
        let proof = ConsistencyProof::from_json_value(p.clone()).expect("proof");
        proof
            .verify(
                &roots[proof.from as usize - 1],
                &roots[proof.to as usize - 1],
            )
            .expect("consistency verifies");
    }
}

#[test]
fn receipt_and_its_mutations() {
    let events = events();
    let mut tree = MemoryTree::new();
    for e in &events {
        tree.push(event::leaf_hash(&e.fields())).expect("push");
    }
    let keys = public_keys();
    let (name, seed) = keys_first();
    let last = events[6].fields();
    let cp = Checkpoint {
        origin: ORIGIN.to_owned(),
        size: 7,
        root: tree.root(7).expect("root"),
        head_hash: event::event_hash(&last),
        time_ms: last.created_at_ms,
    };
    let note_text = checkpoint::sign(&cp, name, &SigningKey::from_bytes(&seed));
    for e in &events {
        let f = e.fields();
        let proof = InclusionProof {
            leaf_index: f.seq - 1,
            tree_size: 7,
            hashes: tree.inclusion_proof(f.seq - 1, 7).expect("proof"),
        };
        let (got, signers) = verify_receipt(&f, &proof, &note_text, &keys).expect("receipt");
        assert_eq!(got, cp);
        assert_eq!(signers, [name]);

        // Any change to any field of the event is rejected (checked on an
        // inner event and on the checkpoint's last; signatures are slow in
        // debug builds).
        if f.seq != 3 && f.seq != 7 {
            continue;
        }
        let mut bad = Vec::new();
        for i in 0..16 {
            let mut x = f;
            x.id[i] ^= 1;
            bad.push(x);
            let mut x = f;
            x.agent_id[i] ^= 1;
            bad.push(x);
        }
        for i in 0..32 {
            let mut x = f;
            x.prev_hash[i] ^= 1;
            bad.push(x);
            let mut x = f;
            x.agent_prev_hash[i] ^= 1;
            bad.push(x);
        }
        let other_strings = [
            "ASN-2026-0004-8271-M",
            "task_complete",
            "admin2",
            r#"{"a":2}"#,
        ];
        for (k, s) in other_strings.iter().enumerate() {
            let mut x = f;
            match k {
                0 => x.asn = s,
                1 => x.event_type = s,
                2 => x.reported_by = s,
                _ => x.metadata_jcs = s,
            }
            bad.push(x);
        }
        let mut x = f;
        x.severity ^= 1;
        bad.push(x);
        let mut x = f;
        x.created_at_ms += 1;
        bad.push(x);
        for x in bad {
            assert!(verify_receipt(&x, &proof, &note_text, &keys).is_err());
        }
        // Non-canonical metadata is rejected even before hashing.
        let mut x = f;
        let spaced = f.metadata_jcs.replace(':', ": ");
        x.metadata_jcs = &spaced;
        if spaced != f.metadata_jcs {
            assert!(verify_receipt(&x, &proof, &note_text, &keys).is_err());
        }
    }
}

fn keys_first() -> (&'static str, [u8; 32]) {
    keys()[0]
}
