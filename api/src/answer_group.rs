//! Answer groups: answers that a node makes at the same time share one signature.
//!
//! The writes of concurrent single reports commit together, in one Raft entry, and their
//! answers are ready at the same moment. Signing each of them costs one Ed25519 signature
//! (13–32 µs of CPU on this project's machines, about a tenth of a report's CPU at 64 clients);
//! signing them together costs one. The group's signed events are the leaves
//! `SHA-256(0x00 || hash)` of a small RFC 9162 Merkle tree, the node signs its root
//! (`verifier::event::sign_group`), and each answer carries its event's inclusion proof in that
//! tree as `signature_proof` (docs/VERIFYING.md section 9). The proof holds only hashes, so no
//! answer shows anything of the others' events.
//!
//! The node's writer makes the groups ([`AnswerGroup::seats`]) when a batch's results come
//! back; the first answer of the group to be served signs the root, the others reuse its
//! signature. A page of events (`events::views`) is one group too: one signature instead of
//! one per event.

use std::sync::Arc;
use std::sync::OnceLock;

use raft_store::CommandResult;
use raft_store::Event;
use verifier::Hash;
use verifier::merkle::MemoryTree;

/// The most answers one group holds: its proofs stay at most 8 hashes long.
pub const ANSWER_GROUP_ANSWERS_MAX: usize = 256;

/// The event an answer to `result` signs, if it is an append: its last (the only one of a
/// single report; a batch answer signs only its last, which covers the batch through
/// `prev_hash`).
pub fn signed_event(result: &CommandResult) -> Option<&Event> {
    match result {
        CommandResult::Appended { events, .. } => events.last(),
        _ => None,
    }
}

/// The signed events of answers made together, as a Merkle tree, and the node's signature over
/// its root once an answer of the group needed it.
#[derive(Debug)]
pub struct AnswerGroup {
    /// The signed events' chain hashes, in order: leaf `i` of `tree` is `SHA-256(0x00 ||
    /// hashes[i])`.
    hashes: Vec<Hash>,
    tree: MemoryTree,
    root: Hash,
    /// Lowercase hex of the signature over (size, root), made by the first answer served.
    signature: OnceLock<String>,
}

/// One answer's place in its [`AnswerGroup`].
#[derive(Debug, Clone)]
pub struct GroupSeat {
    group: Arc<AnswerGroup>,
    index: u64,
}

impl AnswerGroup {
    /// A seat for each of `events` (the signed event of each answer, in order) in one group,
    /// or `None`: for fewer than two events or more than [`ANSWER_GROUP_ANSWERS_MAX`] (each
    /// answer then signs its own), or when one of them does not match its hash. A node never
    /// signs an event that does not verify: the answer of that one then finds it on its own,
    /// and stops the node. (Each view checks its event again as it serves it, in
    /// `EventView::checked`: about 0.3 µs, kept so that the check before serving stays next to
    /// the serving, whatever made the group.)
    pub fn seats<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Vec<GroupSeat>> {
        let mut hashes = Vec::new();
        for event in events {
            if hashes.len() == ANSWER_GROUP_ANSWERS_MAX
                || raft_store::chain::event_hash(event) != event.hash
            {
                return None;
            }
            hashes.push(event.hash);
        }
        if hashes.len() < 2 {
            return None;
        }
        let size = hashes.len() as u64;
        let tree = MemoryTree::from_leaves(hashes.iter().map(verifier::event::group_leaf)).ok()?;
        let root = tree.root(size).ok()?;
        let group = Arc::new(Self {
            hashes,
            tree,
            root,
            signature: OnceLock::new(),
        });
        Some(
            (0..size)
                .map(|index| GroupSeat {
                    group: Arc::clone(&group),
                    index,
                })
                .collect(),
        )
    }

    fn size(&self) -> u64 {
        self.tree.size()
    }
}

impl GroupSeat {
    /// Whether this seat is the one of the event whose chain hash is `hash`.
    pub fn holds(&self, hash: &Hash) -> bool {
        usize::try_from(self.index)
            .ok()
            .and_then(|index| self.group.hashes.get(index))
            .is_some_and(|held| held == hash)
    }

    /// The group's signature (made now with `key` if no answer of the group made it yet) and
    /// this answer's inclusion proof in the group's tree (it serializes as docs/VERIFYING.md
    /// section 7's JSON, as `GET /api/v1/ledger/entries/{seq}/proof` serves it).
    pub fn sign(
        &self,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(String, verifier::proof::InclusionProof), crate::ApiError> {
        let group = &self.group;
        let signature = group
            .signature
            .get_or_init(|| {
                crate::events::hex_lower(&verifier::event::sign_group(
                    group.size(),
                    &group.root,
                    key,
                ))
            })
            .clone();
        let hashes = group
            .tree
            .inclusion_proof(self.index, group.size())
            .map_err(|e| crate::ApiError::internal(format!("answer group proof: {e}")))?;
        let proof = verifier::proof::InclusionProof {
            leaf_index: self.index,
            tree_size: group.size(),
            hashes,
        };
        Ok((signature, proof))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::chain;

    #[test]
    fn every_seat_verifies_and_the_group_signs_once() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let public = key.verifying_key().to_bytes();
        for n in 2..=9 {
            let events = chain(n);
            let seats = AnswerGroup::seats(&events).expect("a group");
            assert_eq!(seats.len() as u64, n);
            let mut signatures = std::collections::BTreeSet::new();
            for (seat, event) in seats.iter().zip(&events) {
                assert!(seat.holds(&event.hash));
                let (signature, proof) = seat.sign(&key).expect("signs");
                signatures.insert(signature.clone());
                let mut bytes = [0u8; 64];
                hex::decode_to_slice(&signature, &mut bytes).expect("hex");
                let proof = verifier::proof::InclusionProof::from_json(
                    &serde_json::to_string(&proof).expect("serializes"),
                )
                .expect("the proof's JSON is section 7's");
                assert_eq!(
                    verifier::event::verify_answer_signature(
                        &event.hash,
                        &bytes,
                        Some(&proof),
                        &public
                    ),
                    Ok(())
                );
            }
            assert_eq!(signatures.len(), 1, "one signature for the group of {n}");
        }
    }

    #[test]
    fn no_group_for_one_answer_too_many_or_an_event_that_does_not_verify() {
        assert!(AnswerGroup::seats(&chain(1)).is_none());
        assert!(AnswerGroup::seats(&chain(ANSWER_GROUP_ANSWERS_MAX as u64)).is_some());
        assert!(AnswerGroup::seats(&chain(ANSWER_GROUP_ANSWERS_MAX as u64 + 1)).is_none());
        let mut events = chain(4);
        events[2].event_type.push('x');
        assert!(AnswerGroup::seats(&events).is_none());
        let seats = AnswerGroup::seats(&chain(3)).expect("a group");
        assert!(!seats[0].holds(&chain(3)[1].hash));
    }
}
