//! RFC 6962 published test vectors: the 8 reference leaves of Certificate Transparency, every
//! subtree hash, the roots for sizes 0 to 8, and the published inclusion and consistency proofs.

use verifier::merkle::{
    self, EMPTY_ROOT, MemoryTree, consistency_proof, inclusion_proof, leaf_hash, node_hash,
    verify_consistency, verify_inclusion,
};
use verifier::{Hash, hash_from_hex};

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Hashes of every complete subtree, by level then index.
const NODES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

fn h(hex: &str) -> Hash {
    hash_from_hex(hex).expect("hash")
}

fn tree() -> MemoryTree {
    let leaves = LEAVES
        .iter()
        .map(|l| leaf_hash(&hex::decode(l).expect("hex")));
    MemoryTree::from_leaves(leaves).expect("tree")
}

#[test]
fn empty_root_is_sha256_of_nothing() {
    use sha2::Digest;
    let empty: Hash = sha2::Sha256::digest(b"").into();
    assert_eq!(EMPTY_ROOT, empty);
    assert_eq!(merkle::root(&tree(), 0), Ok(EMPTY_ROOT));
}

#[test]
fn node_hashes_and_roots() {
    let tree = tree();
    for (level, hashes) in NODES.iter().enumerate() {
        for (index, want) in hashes.iter().enumerate() {
            assert_eq!(
                tree.subtrees.get(&(level as u32, index as u64)),
                Some(&h(want))
            );
        }
    }
    assert_eq!(tree.subtrees.len(), 15);
    for (size, want) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root(size as u64), Ok(h(want)), "size {size}");
    }
    assert_eq!(node_hash(&h(NODES[0][0]), &h(NODES[0][1])), h(NODES[1][0]));
}

/// The published proofs (RFC 6962 reference tests; leaf indices 0-based).
#[test]
fn published_proofs() {
    let tree = tree();
    let inclusion: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (0, 8, &[NODES[0][1], NODES[1][1], NODES[2][1]]),
        (5, 8, &[NODES[0][4], NODES[1][3], NODES[2][0]]),
        (2, 3, &[NODES[1][0]]),
        (1, 5, &[NODES[0][0], NODES[1][1], NODES[0][4]]),
    ];
    for (index, size, want) in inclusion {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(tree.inclusion_proof(*index, *size).as_ref(), Ok(&want));
        let leaf = tree.leaves[*index as usize];
        let root = h(ROOTS[*size as usize]);
        assert_eq!(verify_inclusion(&leaf, *index, *size, &want, &root), Ok(()));
    }
    let consistency: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (1, 8, &[NODES[0][1], NODES[1][1], NODES[2][1]]),
        (6, 8, &[NODES[1][2], NODES[1][3], NODES[2][0]]),
        (2, 5, &[NODES[1][1], NODES[0][4]]),
        (6, 7, &[NODES[1][2], NODES[0][6], NODES[2][0]]),
    ];
    for (old, new, want) in consistency {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(tree.consistency_proof(*old, *new).as_ref(), Ok(&want));
        let (r1, r2) = (h(ROOTS[*old as usize]), h(ROOTS[*new as usize]));
        assert_eq!(verify_consistency(*old, *new, &r1, &r2, &want), Ok(()));
    }
    // Every pair of the reference tree round-trips.
    for size in 1..=8u64 {
        let root = tree.root(size).expect("root");
        for index in 0..size {
            let proof = inclusion_proof(&tree, index, size).expect("proof");
            let leaf = tree.leaves[index as usize];
            assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
        }
        for old in 1..=size {
            let proof = consistency_proof(&tree, old, size).expect("proof");
            let old_root = tree.root(old).expect("root");
            assert_eq!(
                verify_consistency(old, size, &old_root, &root, &proof),
                Ok(())
            );
        }
    }
}

#[test]
fn invalid_requests() {
    let tree = tree();
    assert!(tree.inclusion_proof(8, 8).is_err());
    assert!(tree.inclusion_proof(0, 0).is_err());
    assert!(tree.consistency_proof(0, 5).is_err());
    assert!(tree.consistency_proof(0, 0).is_err());
    assert!(tree.consistency_proof(6, 5).is_err());
    // Beyond the stored tree: a store error, not a wrong answer.
    assert!(tree.inclusion_proof(0, 9).is_err());
    assert!(tree.root(9).is_err());
}
