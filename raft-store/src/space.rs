//! [`Space`]: one of the state machine's key spaces inside its single sled tree (`sm`), keys
//! prefixed with the space's tag byte. One tree, so that a snapshot install is one atomic
//! `Tree::apply_batch` and an apply's inserts are ordered in one sled log (sled's multi-tree
//! transactions read every key they write first).

use std::ops::Bound;
use std::ops::RangeBounds;

/// `key` inside the space tagged `tag`.
pub(crate) fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(1 + key.len());
    tagged.push(tag);
    tagged.extend_from_slice(key);
    tagged
}

/// A key space: the tree and the tag byte its keys start with.
#[derive(Clone)]
pub(crate) struct Space {
    tree: sled::Tree,
    tag: u8,
}

impl Space {
    pub(crate) fn new(tree: sled::Tree, tag: u8) -> Self {
        Self { tree, tag }
    }

    /// `key` inside this space: the tag, then `key`.
    pub(crate) fn key(&self, key: impl AsRef<[u8]>) -> Vec<u8> {
        tagged(self.tag, key.as_ref())
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        self.tree.get(self.key(key))
    }

    /// Keys in `range`, in order (double-ended), with the tag stripped.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> SpaceIter {
        let start = match range.start_bound() {
            Bound::Included(key) => Bound::Included(self.key(key)),
            Bound::Excluded(key) => Bound::Excluded(self.key(key)),
            Bound::Unbounded => Bound::Included(vec![self.tag]),
        };
        let end = match range.end_bound() {
            Bound::Included(key) => Bound::Included(self.key(key)),
            Bound::Excluded(key) => Bound::Excluded(self.key(key)),
            Bound::Unbounded => match self.tag.checked_add(1) {
                Some(next) => Bound::Excluded(vec![next]),
                None => Bound::Unbounded,
            },
        };
        SpaceIter(self.tree.range::<Vec<u8>, _>((start, end)))
    }

    /// Every key of the space, in order.
    pub(crate) fn iter(&self) -> SpaceIter {
        self.range::<&[u8], _>(..)
    }

    /// Keys starting with `prefix`, in order (double-ended).
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> SpaceIter {
        SpaceIter(self.tree.scan_prefix(self.key(prefix)))
    }
}

/// An iterator over a space, yielding keys without their tag.
pub(crate) struct SpaceIter(sled::Iter);

fn untag(item: sled::Result<(sled::IVec, sled::IVec)>) -> sled::Result<(sled::IVec, sled::IVec)> {
    let (key, value) = item?;
    Ok((sled::IVec::from(&key[1..]), value))
}

impl Iterator for SpaceIter {
    type Item = sled::Result<(sled::IVec, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(untag)
    }
}

impl DoubleEndedIterator for SpaceIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(untag)
    }
}
