//! Task keys: Dask-style `(name, i, j, ...)`.
//!
//! Keys exist for people (errors, diagnostics, the dashboard) and for naming results across
//! processes; inside a [`Graph`](crate::Graph) tasks are dense integer ids. A key is an
//! `Arc<str>` name shared by every task of a collection plus up to three inline indices, so
//! cloning one is a reference-count increment and a copy, and building a million keys for one
//! collection allocates the name once.
//!
//! A key also carries the hash of its name and index, computed once when it is made: keys
//! are looked up far more often than they are made (a cluster scheduler looks each one up
//! dozens of times per task), so hashing is a copy and two different keys almost always
//! differ at the first comparison, without reading their names.

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// The name and index of a task, like Dask's `("x-1f2e", 0, 3)`. Keys order by name,
/// then index.
pub struct Key {
    name: Arc<str>,
    index: SmallVec<[u32; 3]>,
    /// Of `name` and `index`, made by [`Key::make`]; see the module docs.
    hash: u64,
}

impl Key {
    fn make(name: Arc<str>, index: SmallVec<[u32; 3]>) -> Key {
        let mut h = rustc_hash::FxHasher::default();
        h.write(name.as_bytes());
        for i in &index {
            h.write_u32(*i);
        }
        h.write_usize(index.len());
        Key {
            name,
            index,
            hash: h.finish(),
        }
    }

    /// A key with a name and an index, e.g. `Key::new("x", [0, 3])`.
    pub fn new(name: impl Into<Arc<str>>, index: impl IntoIterator<Item = u32>) -> Key {
        Key::make(name.into(), index.into_iter().collect())
    }

    /// A key that is just a name, like Dask's `"add-1f2e"`.
    pub fn named(name: impl Into<Arc<str>>) -> Key {
        Key::make(name.into(), SmallVec::new())
    }

    /// A key sharing an existing name allocation (the cheap way to key many chunks).
    pub fn indexed(name: &Arc<str>, index: &[u32]) -> Key {
        Key::make(Arc::clone(name), SmallVec::from_slice(index))
    }

    /// A name no other call in this process returns: `"{prefix}-{n}"`.
    pub fn unique_name(prefix: &str) -> Arc<str> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n}").into()
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task group this key belongs to, as Dask's `key_split` has it: the name without
    /// a trailing `-<counter or hex token>`. Chunks of one array share a name already;
    /// delayed calls get a name each (`inc-17`, `inc-18`), and their group (`inc`) is what
    /// the schedulers learn a duration for.
    pub fn group(&self) -> &str {
        match self.name.rsplit_once('-') {
            Some((head, token))
                if !head.is_empty()
                    && !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                head
            }
            _ => &self.name,
        }
    }

    /// The shared name allocation.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The index part (empty for plain names).
    pub fn index(&self) -> &[u32] {
        &self.index
    }
}

impl Clone for Key {
    #[inline]
    fn clone(&self) -> Key {
        // `SmallVec::clone` goes element by element; the indices are `Copy`.
        Key {
            name: Arc::clone(&self.name),
            index: SmallVec::from_slice(&self.index),
            hash: self.hash,
        }
    }
}

impl PartialEq for Key {
    /// Hash first, then the name by address (keys cloned from one another share it) and
    /// only then by content; indices element by element (they are short).
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.name, &other.name) || self.name == other.name)
            && self.index.len() == other.index.len()
            && self.index.iter().zip(&other.index).all(|(a, b)| a == b)
    }
}

impl Eq for Key {}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> CmpOrdering {
        (self.name.cmp(&other.name)).then_with(|| self.index.cmp(&other.index))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index.is_empty() {
            return write!(f, "'{}'", self.name);
        }
        write!(f, "('{}'", self.name)?;
        for i in &self.index {
            write!(f, ", {i}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<&str> for Key {
    fn from(name: &str) -> Key {
        Key::named(name)
    }
}

impl From<String> for Key {
    fn from(name: String) -> Key {
        Key::named(name)
    }
}

impl<const N: usize> From<(&str, [u32; N])> for Key {
    fn from((name, index): (&str, [u32; N])) -> Key {
        Key::new(name, index)
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&*self.name, self.index.as_slice()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let (Name(name), Index(index)) = Deserialize::deserialize(d)?;
        Ok(Key::make(name, index))
    }
}

/// A key's name as it arrives: one allocation, straight from the decoder's bytes.
struct Name(Arc<str>);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key name (a string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name(v.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A key's index as it arrives, inline up to three numbers.
struct Index(SmallVec<[u32; 3]>);

impl<'de> Deserialize<'de> for Index {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Index, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Index;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key index (a sequence of integers)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Index, A::Error> {
                let mut index = SmallVec::new();
                while let Some(i) = seq.next_element::<u32>()? {
                    index.push(i);
                }
                Ok(Index(index))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_like_dask() {
        assert_eq!(Key::new("x", [0, 3]).to_string(), "('x', 0, 3)");
        assert_eq!(Key::named("add-1").to_string(), "'add-1'");
    }

    #[test]
    fn keys_with_shared_names_compare_by_value() {
        let name: Arc<str> = "x".into();
        let a = Key::indexed(&name, &[1, 2]);
        let b = Key::new("x", [1, 2]);
        assert_eq!(a, b);
        assert_ne!(a, Key::new("x", [2, 1]));
        assert!(Arc::ptr_eq(a.name_arc(), &name));
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(Key::unique_name("add"), Key::unique_name("add"));
    }

    #[test]
    fn groups_drop_a_counter_or_token() {
        let group = |n: &str| Key::named(n).group().to_string();
        assert_eq!(group("inc-17"), "inc");
        assert_eq!(group("read-parquet-3fa9c0"), "read-parquet");
        assert_eq!(group("trivial"), "trivial");
        assert_eq!(group("add-mul"), "add-mul");
        assert_eq!(group("x-"), "x-");
        assert_eq!(group("-17"), "-17");
        assert_eq!(Key::new("x-3", [1, 2]).group(), "x");
    }

    #[test]
    fn equal_keys_hash_alike_and_order_by_name_then_index() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let hash = |k: &Key| state.hash_one(k);
        let shared: Arc<str> = "x".into();
        assert_eq!(
            hash(&Key::indexed(&shared, &[1, 2])),
            hash(&Key::new("x", [1, 2]))
        );
        assert_ne!(hash(&Key::new("x", [1, 2])), hash(&Key::new("x", [2, 1])));
        assert_ne!(Key::named("x1"), Key::new("x", [1]));
        let mut keys = vec![
            Key::new("y", [0]),
            Key::new("x", [2]),
            Key::named("x"),
            Key::new("x", [1, 5]),
        ];
        keys.sort();
        let want = [
            Key::named("x"),
            Key::new("x", [1, 5]),
            Key::new("x", [2]),
            Key::new("y", [0]),
        ];
        assert_eq!(keys, want);
    }

    #[test]
    fn malformed_keys_are_decode_errors() {
        let bytes = rmp_serde::to_vec(&(17u32, [1u32])).unwrap();
        assert!(rmp_serde::from_slice::<Key>(&bytes).is_err());
        let bytes = rmp_serde::to_vec(&("x", ["a"])).unwrap();
        assert!(rmp_serde::from_slice::<Key>(&bytes).is_err());
        let bytes = rmp_serde::to_vec(&("x", [1u64 << 40])).unwrap();
        assert!(rmp_serde::from_slice::<Key>(&bytes).is_err());
        // Decoded from a reader (not a slice), a name is not borrowed.
        let bytes = rmp_serde::to_vec(&Key::new("x", [4, 5, 6, 7])).unwrap();
        let back: Key = rmp_serde::from_read(&bytes[..]).unwrap();
        assert_eq!(back, Key::new("x", [4, 5, 6, 7]));
    }

    #[test]
    fn msgpack_round_trip() {
        let k = Key::new("x", [4, 5, 6, 7]);
        let bytes = rmp_serde::to_vec(&k).unwrap();
        let back: Key = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(k, back);
    }
}
