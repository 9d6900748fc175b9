//! A key -> id table that stores only ids.
//!
//! Graph keys already live in the graph's key vector; storing them again in a
//! `HashMap<Key, TaskId>` would make each entry 40 bytes and each insert a cache miss into
//! a table of tens of megabytes. This table holds 4-byte ids and compares against the key
//! vector on a hash match, so a million-key index is about 5 MB.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::key::Key;

#[derive(Clone, Default)]
pub(crate) struct KeyIndex {
    table: HashTable<u32>,
}

fn hash(key: &Key) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl KeyIndex {
    pub(crate) fn with_capacity(n: usize) -> KeyIndex {
        KeyIndex {
            table: HashTable::with_capacity(n),
        }
    }

    /// Index all `keys` (which must be distinct) by position.
    pub(crate) fn build(keys: &[Key]) -> KeyIndex {
        let mut index = KeyIndex::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            index
                .table
                .insert_unique(hash(k), i as u32, |&j| hash(&keys[j as usize]));
        }
        index
    }

    pub(crate) fn get(&self, keys: &[Key], key: &Key) -> Option<u32> {
        self.table
            .find(hash(key), |&j| keys[j as usize] == *key)
            .copied()
    }

    /// Record `keys[id]`; returns false (and records nothing) if an equal key is present.
    pub(crate) fn insert(&mut self, keys: &[Key], id: u32) -> bool {
        let key = &keys[id as usize];
        let h = hash(key);
        if self.table.find(h, |&j| keys[j as usize] == *key).is_some() {
            return false;
        }
        self.table
            .insert_unique(h, id, |&j| hash(&keys[j as usize]));
        true
    }

    /// Rewrite every stored id through `map` (positions depend only on keys, not ids).
    pub(crate) fn remap(&mut self, map: &[u32]) {
        for id in self.table.iter_mut() {
            *id = map[*id as usize];
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }
}
