//! The RFC 6962 / RFC 9162 §2.1 Merkle tree over all events.
//!
//! Proofs and tree heads are computed from stored *complete subtrees*: the
//! subtree at `level` (0 = leaves) and `index` is the perfect, aligned
//! subtree over leaves `[index << level, (index + 1) << level)`. A store
//! keeps each one once it is complete (see [`append`]); it never changes
//! afterwards, so every tree head and proof of every earlier size can be
//! computed from it with O(log n) lookups.

use crate::Hash;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// `SHA-256("")`: the root of the empty tree.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Stored hashes of complete subtrees.
pub trait Subtrees {
    type Error;
    /// The hash of the complete subtree at `level` and `index`; an error if
    /// it is not stored (not complete yet, or the store is damaged).
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

impl<T: Subtrees + ?Sized> Subtrees for &T {
    type Error = T::Error;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        (**self).subtree(level, index)
    }
}

/// Why a proof cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from size {old} to size {new} (need 0 < old <= new)")]
    InvalidSizes { old: u64, new: u64 },
    #[error("subtree store: {0}")]
    Store(E),
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from size {old} to size {new} (need 0 < old <= new)")]
    InvalidSizes { old: u64, new: u64 },
    #[error("proof has {got} hashes, {expected} expected")]
    ProofLength { expected: usize, got: usize },
    #[error("computed root does not match the root")]
    RootMismatch,
    #[error("computed old root does not match the old root")]
    OldRootMismatch,
    #[error("computed new root does not match the new root")]
    NewRootMismatch,
}

/// What appending leaf number `index` (0-based; leaves `0..index` already
/// appended) adds: `(level, index, hash)` of every subtree it completes,
/// level 0 (the leaf itself) first. Reads the left siblings from `store`.
pub fn append<S: Subtrees>(
    store: &S,
    index: u64,
    leaf: Hash,
) -> Result<Vec<(u32, u64, Hash)>, S::Error> {
    let mut out = Vec::with_capacity(1 + index.trailing_ones() as usize);
    out.push((0, index, leaf));
    let (mut level, mut i, mut hash) = (0u32, index, leaf);
    while i & 1 == 1 {
        let left = store.subtree(level, i - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        i >>= 1;
        out.push((level, i, hash));
    }
    Ok(out)
}

/// The complete subtrees whose hashes make up the tree of `size` leaves
/// (its "frontier"), left to right: one per set bit of `size`. Appending
/// leaf `size` needs no other subtree, so a store holding these can go on
/// appending (but only proofs that need no older subtree can be built).
pub fn frontier<S: Subtrees>(store: &S, size: u64) -> Result<Vec<(u32, u64, Hash)>, S::Error> {
    let mut out = Vec::with_capacity(size.count_ones() as usize);
    for level in (0..64u32).rev() {
        if size >> level & 1 == 1 {
            let offset = high_bits(size, level + 1);
            out.push((
                level,
                offset >> level,
                store.subtree(level, offset >> level)?,
            ));
        }
    }
    Ok(out)
}

/// `value` with its bits below `bit` cleared.
fn high_bits(value: u64, bit: u32) -> u64 {
    if bit >= 64 { 0 } else { value >> bit << bit }
}

/// MTH of leaves `[start, start + len)`, `len > 0`, where `start` is a
/// multiple of a power of two at least `len` (true of every range in the
/// RFC 9162 recursion): one lookup per set bit of `len`.
fn range_hash<S: Subtrees>(store: &S, start: u64, len: u64) -> Result<Hash, S::Error> {
    let mut acc: Option<Hash> = None;
    for level in 0..64u32 {
        if len >> level & 1 == 1 {
            let offset = start + high_bits(len, level + 1);
            let hash = store.subtree(level, offset >> level)?;
            acc = Some(match acc {
                None => hash,
                Some(right) => node_hash(&hash, &right),
            });
        }
    }
    Ok(acc.unwrap_or(EMPTY_ROOT))
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH of the first `size` leaves (RFC 9162 §2.1.1): O(log size) lookups.
pub fn root<S: Subtrees>(store: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(EMPTY_ROOT);
    }
    range_hash(store, 0, size)
}

/// RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size`
/// leaves, deepest sibling first; O(log size) lookups.
pub fn inclusion_proof<S: Subtrees>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::with_capacity(64);
    let (mut start, mut n, mut m) = (0u64, size, index);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            path.push(range_hash(store, start + k, n - k).map_err(ProofError::Store)?);
            n = k;
        } else {
            path.push(range_hash(store, start, k).map_err(ProofError::Store)?);
            start += k;
            m -= k;
            n -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 §2.1.4.1 consistency proof from size `old` to size `new`
/// (`0 < old <= new`; empty when they are equal).
pub fn consistency_proof<S: Subtrees>(
    store: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old == 0 || old > new {
        return Err(ProofError::InvalidSizes { old, new });
    }
    let mut path = Vec::with_capacity(64);
    if old == new {
        return Ok(path);
    }
    let (mut start, mut n, mut m, mut whole) = (0u64, new, old, true);
    loop {
        if m == n {
            if !whole {
                path.push(range_hash(store, start, m).map_err(ProofError::Store)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            path.push(range_hash(store, start + k, n - k).map_err(ProofError::Store)?);
            n = k;
        } else {
            path.push(range_hash(store, start, k).map_err(ProofError::Store)?);
            start += k;
            m -= k;
            n -= k;
            whole = false;
        }
    }
    path.reverse();
    Ok(path)
}

/// The number of hashes in the inclusion proof of `index` in `size`
/// (`index < size`).
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = high_bits(index, inner).count_ones();
    (inner + border) as usize
}

/// The number of hashes in the consistency proof from `old` to `new`
/// (`0 < old < new`).
pub fn consistency_proof_len(old: u64, new: u64) -> usize {
    let index = old - 1;
    let inner = 64 - (index ^ (new - 1)).leading_zeros();
    let border = high_bits(index, inner).count_ones();
    let shift = old.trailing_zeros();
    let seed = usize::from(!old.is_power_of_two());
    seed + (inner.saturating_sub(shift) + border) as usize
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` (a leaf hash) is leaf `index` of
/// the tree of `size` leaves whose root is `root`. Every proof element is
/// used; a proof of the wrong length is rejected.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if inclusion_root(leaf, index, size, proof)? != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// The root that the inclusion proof `proof` of `leaf` (a leaf hash) as leaf
/// `index` of a tree of `size` leaves leads to (RFC 9162 §2.1.3.2 without its
/// last comparison). Every proof element is used; a proof of the wrong length
/// is rejected.
pub fn inclusion_root(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(VerifyError::ProofLength {
            expected,
            got: proof.len(),
        });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(VerifyError::ProofLength {
                expected,
                got: proof.len(),
            });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::ProofLength {
            expected,
            got: proof.len(),
        });
    }
    Ok(r)
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`.
/// `0 < old <= new`; for `old == new` the proof must be empty and the roots
/// equal. Every proof element is used; a proof of the wrong length is
/// rejected.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old == 0 || old > new {
        return Err(VerifyError::InvalidSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(VerifyError::ProofLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if old_root != new_root {
            return Err(VerifyError::RootMismatch);
        }
        return Ok(());
    }
    let expected = consistency_proof_len(old, new);
    let length_error = VerifyError::ProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error);
    }
    let (seed, rest) = if old.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(length_error),
        }
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if s == 0 {
            return Err(length_error);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(length_error);
    }
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(VerifyError::NewRootMismatch);
    }
    Ok(())
}

/// A subtree that a store does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no complete subtree at level {level}, index {index}")]
pub struct MissingSubtree {
    pub level: u32,
    pub index: u64,
}

/// An in-memory tree: every leaf and every complete subtree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    pub leaves: Vec<Hash>,
    pub subtrees: HashMap<(u32, u64), Hash>,
}

impl Subtrees for MemoryTree {
    type Error = MissingSubtree;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, MissingSubtree> {
        self.subtrees
            .get(&(level, index))
            .copied()
            .ok_or(MissingSubtree { level, index })
    }
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of these leaf hashes.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Result<Self, MissingSubtree> {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(leaf)?;
        }
        Ok(tree)
    }

    /// Appends a leaf hash. Fails only if the subtrees were tampered with.
    pub fn push(&mut self, leaf: Hash) -> Result<(), MissingSubtree> {
        let added = append(&*self, self.leaves.len() as u64, leaf)?;
        for (level, index, hash) in added {
            self.subtrees.insert((level, index), hash);
        }
        self.leaves.push(leaf);
        Ok(())
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// MTH of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, MissingSubtree> {
        root(self, size)
    }

    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ProofError<MissingSubtree>> {
        inclusion_proof(self, index, size)
    }

    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, ProofError<MissingSubtree>> {
        consistency_proof(self, old, new)
    }
}
