//! Property tests: the stored-subtree tree against a naive recursive RFC 9162
//! reference, and single-byte mutations of proofs, roots and leaves.

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use verifier::Hash;
use verifier::merkle::{
    EMPTY_ROOT, MemoryTree, consistency_proof, inclusion_proof, node_hash, root,
    verify_consistency, verify_inclusion,
};

fn leaves(seed: u64, size: u64) -> Vec<Hash> {
    (0..size)
        .map(|i| Sha256::digest([seed.to_be_bytes(), i.to_be_bytes()].concat()).into())
        .collect()
}

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 9162 §2.1.1 MTH, literally.
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => EMPTY_ROOT,
        1 => d[0],
        n => {
            let k = split(n);
            node_hash(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.1 PATH, literally.
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// RFC 9162 §2.1.4.1 SUBPROOF, literally.
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn flip(hash: &Hash, byte: usize, mask: u8) -> Hash {
    let mut out = *hash;
    out[byte % 32] ^= mask;
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_reference(
        seed in any::<u64>(),
        size in 1u64..2000,
        index_frac in 0.0f64..1.0,
        old_frac in 0.0f64..1.0,
        byte in 0usize..32,
        mask in 1u8..=255,
        which in any::<usize>(),
    ) {
        let d = leaves(seed, size);
        let tree = MemoryTree::from_leaves(d.iter().copied()).expect("tree");
        let index = ((size as f64 * index_frac) as u64).min(size - 1);
        let old = ((size as f64 * old_frac) as u64).clamp(1, size);

        let new_root = mth(&d);
        prop_assert_eq!(root(&tree, size), Ok(new_root));
        let old_root = mth(&d[..old as usize]);
        prop_assert_eq!(root(&tree, old), Ok(old_root));

        // Inclusion in the full tree and in the old one.
        for (i, n, r) in [(index, size, new_root), (index.min(old - 1), old, old_root)] {
            let proof = inclusion_proof(&tree, i, n).expect("inclusion");
            prop_assert_eq!(&proof, &path(i as usize, &d[..n as usize]));
            let leaf = d[i as usize];
            prop_assert_eq!(verify_inclusion(&leaf, i, n, &proof, &r), Ok(()));
            // Any single-byte change is rejected.
            prop_assert!(verify_inclusion(&flip(&leaf, byte, mask), i, n, &proof, &r).is_err());
            prop_assert!(verify_inclusion(&leaf, i, n, &proof, &flip(&r, byte, mask)).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let at = which % bad.len();
                bad[at] = flip(&bad[at], byte, mask);
                prop_assert!(verify_inclusion(&leaf, i, n, &bad, &r).is_err());
                prop_assert!(verify_inclusion(&leaf, i, n, &proof[1..], &r).is_err());
                let mut longer = proof.clone();
                longer.push(r);
                prop_assert!(verify_inclusion(&leaf, i, n, &longer, &r).is_err());
            }
            if n > 1 {
                let other = (i + 1 + (which as u64 % (n - 1))) % n;
                prop_assert!(verify_inclusion(&leaf, other, n, &proof, &r).is_err() || d[other as usize] == leaf);
            }
        }

        // Consistency.
        let proof = consistency_proof(&tree, old, size).expect("consistency");
        let want = if old == size { Vec::new() } else { subproof(old as usize, &d, true) };
        prop_assert_eq!(&proof, &want);
        prop_assert_eq!(verify_consistency(old, size, &old_root, &new_root, &proof), Ok(()));
        prop_assert!(verify_consistency(old, size, &flip(&old_root, byte, mask), &new_root, &proof).is_err());
        prop_assert!(verify_consistency(old, size, &old_root, &flip(&new_root, byte, mask), &proof).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = which % bad.len();
            bad[at] = flip(&bad[at], byte, mask);
            prop_assert!(verify_consistency(old, size, &old_root, &new_root, &bad).is_err());
            prop_assert!(verify_consistency(old, size, &old_root, &new_root, &proof[1..]).is_err());
        }
        if old < size {
            prop_assert!(verify_consistency(old + 1, size, &old_root, &new_root, &proof).is_err());
        }
    }
}

/// Exhaustive single-byte mutation of every proof of every tree up to 17
/// leaves: every element of every proof is checked.
#[test]
fn every_byte_of_every_small_proof_matters() {
    let d = leaves(7, 17);
    let tree = MemoryTree::from_leaves(d.iter().copied()).expect("tree");
    for size in 1..=17u64 {
        let r = mth(&d[..size as usize]);
        for index in 0..size {
            let proof = inclusion_proof(&tree, index, size).expect("proof");
            let leaf = d[index as usize];
            for (e, element) in proof.iter().enumerate() {
                for byte in 0..32 {
                    let mut bad = proof.clone();
                    bad[e] = flip(element, byte, 0x01);
                    assert!(verify_inclusion(&leaf, index, size, &bad, &r).is_err());
                }
            }
        }
        for old in 1..size {
            let old_root = mth(&d[..old as usize]);
            let proof = consistency_proof(&tree, old, size).expect("proof");
            for (e, element) in proof.iter().enumerate() {
                for byte in 0..32 {
                    let mut bad = proof.clone();
                    bad[e] = flip(element, byte, 0x80);
                    assert!(
                        verify_consistency(old, size, &old_root, &r, &bad).is_err(),
                        "{old} {size} element {e} byte {byte}"
                    );
                }
            }
        }
    }
}

#[test]
fn append_reports_completed_subtrees() {
    let d = leaves(1, 8);
    let mut tree = MemoryTree::new();
    let mut counts = Vec::new();
    for (i, leaf) in d.iter().enumerate() {
        let added = verifier::merkle::append(&tree, i as u64, *leaf).expect("append");
        counts.push(added.len());
        assert_eq!(added[0], (0, i as u64, *leaf));
        tree.push(*leaf).expect("push");
        for (level, index, hash) in added {
            let start = (index << level) as usize;
            assert_eq!(hash, mth(&d[start..start + (1 << level)]));
        }
    }
    assert_eq!(counts, [1, 2, 1, 3, 1, 2, 1, 4]);
    let frontier = verifier::merkle::frontier(&tree, 7).expect("frontier");
    assert_eq!(
        frontier
            .iter()
            .map(|(l, i, _)| (*l, *i))
            .collect::<Vec<_>>(),
        [(2, 0), (1, 2), (0, 6)]
    );
}
