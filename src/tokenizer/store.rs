//! Compact tables behind a [`super::Tokenizer`], read in place where possible.
//!
//! A vocabulary of n tokens is held as:
//! - the token texts: in place in the model file's mapping (a GGUF string array is a u64 length then
//!   the bytes, back to back, so one `u32` start offset per token finds every text), or in one owned
//!   buffer for vocabularies built from plain data;
//! - a text → id index: an open-addressing table of `u32` ids (about 6 bytes per token), hashed with
//!   std's randomly keyed SipHash (as `HashMap` is, so hostile vocabularies cannot force collisions)
//!   and compared against the texts;
//! - scores and token types: in place (little-endian `f32` / `i32` arrays of the file) or owned.
//!
//! Nothing here panics on malformed data: lookups outside the tables give empty texts or `None`.
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::gguf::ArrayView;
use crate::mmap::MappedFile;

/// The bytes the texts (and in-place scores and types) are read from.
pub(crate) enum Backing {
    /// The tokenizer's own buffer (a vocabulary built from plain data, or copied from a GGUF buffer).
    Owned(Box<[u8]>),
    /// The model file's read-only mapping, shared with the model (and keeping it alive).
    Mapped(Arc<MappedFile>),
}

impl Backing {
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Owned(b) => b,
            Backing::Mapped(m) => m,
        }
    }
}

/// Where token texts are: text `i` is `bytes[base + off[i] .. base + off[i + 1] - gap]`, with `gap` 8
/// for a GGUF string array in place (the next text's length field) and 0 for a packed buffer.
pub(crate) struct Texts {
    pub backing: Backing,
    base: usize,
    gap: u32,
    off: Offsets,
}

/// Why a table could not be built (the caller names the field).
pub(crate) struct TooLarge;

impl Texts {
    /// Packed copies of `texts`.
    pub fn from_strings(texts: &[String]) -> Result<Texts, TooLarge> {
        let total: usize = texts.iter().map(String::len).sum();
        if total > u32::MAX as usize {
            return Err(TooLarge);
        }
        let mut bytes = Vec::with_capacity(total);
        let mut off = Vec::with_capacity(texts.len() + 1);
        off.push(0u32);
        for t in texts {
            bytes.extend_from_slice(t.as_bytes());
            off.push(bytes.len() as u32);
        }
        Ok(Texts {
            backing: Backing::Owned(bytes.into_boxed_slice()),
            base: 0,
            gap: 0,
            off: Offsets::from_vec(off),
        })
    }

    /// The strings of a GGUF string array: in place in `map` when the array lies in it (the
    /// [`crate::gguf::Gguf`] was parsed from the mapping), otherwise a copy of the array's bytes.
    /// `arr` must be a string array (checked by the caller through `as_str_iter`).
    pub fn from_gguf(
        arr: &ArrayView<'_>,
        map: Option<&Arc<MappedFile>>,
    ) -> Result<Texts, TooLarge> {
        let raw = arr.raw_bytes();
        // Offsets up to `raw.len() + 8` must fit in u32.
        if raw.len() > (u32::MAX - 8) as usize {
            return Err(TooLarge);
        }
        let strs = arr.as_str_iter().map_err(|_| TooLarge)?;
        let mut off = Vec::with_capacity(arr.len() + 1);
        let start = raw.as_ptr() as usize;
        for s in strs {
            // Every string is a sub-slice of `raw` (the iterator borrows from it), so the address
            // difference is its position in the array.
            off.push((s.as_ptr() as usize - start) as u32);
        }
        off.push(raw.len() as u32 + 8);
        let in_map = map.filter(|m| {
            let o = arr.offset() as usize;
            m.get(o..o + raw.len()).map(<[u8]>::as_ptr) == Some(raw.as_ptr())
        });
        let (backing, base) = match in_map {
            Some(m) => (Backing::Mapped(m.clone()), arr.offset() as usize),
            None => (Backing::Owned(raw.into()), 0),
        };
        Ok(Texts {
            backing,
            base,
            gap: 8,
            off: Offsets::from_vec(off),
        })
    }

    pub fn len(&self) -> usize {
        self.off.len().saturating_sub(1)
    }

    /// Text of token `i` (empty for an id outside the vocabulary).
    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let (Some(s), Some(e)) = (self.off.get(i), self.off.get(i.wrapping_add(1))) else {
            return &[];
        };
        let s = self.base + s as usize;
        let e = self.base + e.saturating_sub(self.gap) as usize;
        self.backing.bytes().get(s..e).unwrap_or(&[])
    }

    /// Text of token `i` as `str` (texts are valid UTF-8: they come from `String`s or from GGUF strings,
    /// which the parser validated).
    pub fn get_str(&self, i: usize) -> &str {
        std::str::from_utf8(self.get(i)).unwrap_or("")
    }

    /// Bytes of the tables themselves (not counting texts in place in a mapping).
    pub fn heap_bytes(&self) -> usize {
        self.off.heap_bytes()
            + match &self.backing {
                Backing::Owned(b) => b.len(),
                Backing::Mapped(_) => 0,
            }
    }
}

/// `u32` values stored in 16 bits each when they all fit (`u16::MAX` stands for [`EMPTY`]).
pub(crate) enum Packed {
    U16(Box<[u16]>),
    U32(Box<[u32]>),
}

impl Packed {
    /// `len` copies of `fill`, 16-bit if every value stored will be below `limit`.
    fn filled(len: usize, fill: u32, limit: u32) -> Packed {
        if limit < u16::MAX as u32 {
            Packed::U16(vec![Packed::narrow(fill); len].into_boxed_slice())
        } else {
            Packed::U32(vec![fill; len].into_boxed_slice())
        }
    }

    /// The values, 16-bit if they all fit.
    pub fn from_vec(v: Vec<u32>) -> Packed {
        if v.iter().all(|&x| x < u16::MAX as u32) {
            Packed::U16(v.iter().map(|&x| x as u16).collect())
        } else {
            Packed::U32(v.into_boxed_slice())
        }
    }

    #[inline]
    fn narrow(v: u32) -> u16 {
        if v == EMPTY {
            u16::MAX
        } else {
            v as u16
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            Packed::U16(v) => v
                .get(i)
                .map(|&x| if x == u16::MAX { EMPTY } else { x as u32 }),
            Packed::U32(v) => v.get(i).copied(),
        }
    }

    fn set(&mut self, i: usize, x: u32) {
        match self {
            Packed::U16(v) => {
                if let Some(s) = v.get_mut(i) {
                    *s = Packed::narrow(x);
                }
            }
            Packed::U32(v) => {
                if let Some(s) = v.get_mut(i) {
                    *s = x;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Packed::U16(v) => v.len(),
            Packed::U32(v) => v.len(),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            Packed::U16(v) => 2 * v.len(),
            Packed::U32(v) => 4 * v.len(),
        }
    }
}

/// Non-decreasing `u32` offsets: a base per 64 entries plus a 16-bit delta per entry (32-bit when
/// some block spans 64 KiB or more).
pub(crate) struct Offsets {
    base: Box<[u32]>,
    delta: Packed,
}

impl Offsets {
    pub fn from_vec(v: Vec<u32>) -> Offsets {
        let base: Vec<u32> = v.chunks(64).map(|c| c[0]).collect();
        let delta = |i: usize, x: u32| x.checked_sub(base[i / 64]).filter(|&d| d < u16::MAX as u32);
        if v.iter().enumerate().all(|(i, &x)| delta(i, x).is_some()) {
            let d = v
                .iter()
                .enumerate()
                .map(|(i, &x)| delta(i, x).unwrap_or(0) as u16)
                .collect();
            Offsets {
                base: base.into_boxed_slice(),
                delta: Packed::U16(d),
            }
        } else {
            Offsets {
                base: Box::new([]),
                delta: Packed::U32(v.into_boxed_slice()),
            }
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<u32> {
        let d = self.delta.get(i)?;
        match self.delta {
            Packed::U16(_) => Some(self.base.get(i / 64)?.wrapping_add(d)),
            Packed::U32(_) => Some(d),
        }
    }

    pub fn len(&self) -> usize {
        self.delta.len()
    }

    pub fn heap_bytes(&self) -> usize {
        4 * self.base.len() + self.delta.heap_bytes()
    }
}

const EMPTY: u32 = u32::MAX;

/// Open-addressing (linear probing) table of `u32` values (ids or indices), keyed by something the
/// caller compares: the table only stores values, the caller's `eq` tells whether a stored value has
/// the key sought. At most `n` values fit a table made for `n`; there is always an empty slot, so
/// every probe ends.
pub(crate) struct IndexTable {
    /// 16-bit when the table is for fewer than 65535 values (they are below `n`).
    slots: Packed,
    used: usize,
    state: RandomState,
}

impl IndexTable {
    /// A table for at most `n` values, each below `n`.
    pub fn new(n: usize) -> IndexTable {
        // Load factor at most 2/3.
        let cap = n + n / 2 + 1;
        IndexTable {
            slots: Packed::filled(cap, EMPTY, u32::try_from(n).unwrap_or(u32::MAX)),
            used: 0,
            state: RandomState::new(),
        }
    }

    #[inline]
    pub fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.state.hash_one(key)
    }

    /// The slot holding a value `eq` accepts (`Ok`), or the empty slot that ends the probe (`Err`).
    #[inline]
    fn probe(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Result<usize, usize> {
        let cap = self.slots.len();
        // Multiply-shift maps the hash onto 0..cap.
        let mut i = ((h as u128 * cap as u128) >> 64) as usize;
        loop {
            // `i < cap`; a missing slot would read as empty and end the probe.
            let v = self.slots.get(i).unwrap_or(EMPTY);
            if v == EMPTY {
                return Err(i);
            }
            if eq(v) {
                return Ok(i);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// The value whose key `eq` accepts.
    #[inline]
    pub fn find(&self, h: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.probe(h, eq).ok().and_then(|i| self.slots.get(i))
    }

    /// Inserts `v` unless a value with the same key is present; with `replace`, that value is
    /// replaced by `v`. Returns whether the key was new. A full table (more values than it was made
    /// for) ignores further keys.
    pub fn insert(&mut self, h: u64, v: u32, replace: bool, eq: impl FnMut(u32) -> bool) -> bool {
        debug_assert_ne!(v, EMPTY);
        match self.probe(h, eq) {
            Ok(i) => {
                if replace {
                    self.slots.set(i, v);
                }
                false
            }
            Err(i) => {
                if self.used + 1 >= self.slots.len() {
                    return false;
                }
                self.slots.set(i, v);
                self.used += 1;
                true
            }
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
    }
}

/// A little-endian 4-byte number type of a GGUF array.
pub(crate) trait Le4: Copy {
    fn from_le(b: [u8; 4]) -> Self;
}
impl Le4 for f32 {
    fn from_le(b: [u8; 4]) -> f32 {
        f32::from_le_bytes(b)
    }
}
impl Le4 for i32 {
    fn from_le(b: [u8; 4]) -> i32 {
        i32::from_le_bytes(b)
    }
}

/// One number per token: owned, or an array of 4-byte little-endian values in the backing.
pub(crate) enum Nums<T> {
    Owned(Box<[T]>),
    InPlace { base: usize, len: usize },
}

impl<T: Le4> Nums<T> {
    /// In place if `arr` (of 4-byte elements of the type wanted, checked by the caller) lies in the
    /// mapping that `backing` is.
    pub fn in_place(arr: &ArrayView<'_>, backing: &Backing) -> Option<Nums<T>> {
        let Backing::Mapped(m) = backing else {
            return None;
        };
        let raw = arr.raw_bytes();
        let o = arr.offset() as usize;
        (raw.len() == 4 * arr.len()
            && m.get(o..o + raw.len()).map(<[u8]>::as_ptr) == Some(raw.as_ptr()))
        .then_some(Nums::InPlace {
            base: o,
            len: arr.len(),
        })
    }

    #[inline]
    pub fn get(&self, backing: &Backing, i: usize) -> Option<T> {
        match self {
            Nums::Owned(v) => v.get(i).copied(),
            Nums::InPlace { base, len } => {
                if i >= *len {
                    return None;
                }
                let at = base + 4 * i;
                let b = backing.bytes().get(at..at + 4)?;
                Some(T::from_le([b[0], b[1], b[2], b[3]]))
            }
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            Nums::Owned(v) => std::mem::size_of_val(&**v),
            Nums::InPlace { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_table_finds_replaces_and_keeps() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{}", i % 700)).collect();
        let mut t = IndexTable::new(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let h = t.hash(k.as_bytes());
            // Later duplicates replace earlier ones.
            let new = t.insert(h, i as u32, true, |v| keys[v as usize] == *k);
            assert_eq!(new, i < 700, "{k}");
        }
        for i in 0..700 {
            let k = format!("k{i}");
            let id = t.find(t.hash(k.as_bytes()), |v| keys[v as usize] == k);
            let want = if i < 300 { i + 700 } else { i };
            assert_eq!(id, Some(want as u32), "{k}");
        }
        assert_eq!(
            t.find(t.hash(b"nope".as_slice()), |v| keys[v as usize] == "nope"),
            None
        );
        // First wins without `replace`.
        let mut t = IndexTable::new(2);
        let h = t.hash(&7u32);
        assert!(t.insert(h, 0, false, |_| false));
        assert!(!t.insert(h, 1, false, |v| v == 0));
        assert_eq!(t.find(h, |v| v == 0), Some(0));
        // More keys than the table was made for: ignored, lookups still end.
        for k in 1..20u32 {
            t.insert(t.hash(&k), k, false, |v| v == k);
        }
        assert_eq!(t.find(t.hash(&99u32), |v| v == 99), None);
    }

    #[test]
    fn packed_and_offsets_narrow_only_when_values_fit() {
        let small = Packed::from_vec(vec![0, 7, 65534]);
        assert!(matches!(small, Packed::U16(_)));
        assert_eq!(
            (0..4).map(|i| small.get(i)).collect::<Vec<_>>(),
            vec![Some(0), Some(7), Some(65534), None]
        );
        let big = Packed::from_vec(vec![1, 65535]);
        assert!(matches!(big, Packed::U32(_)));
        assert_eq!(big.get(1), Some(65535));
        let mut t = Packed::filled(3, EMPTY, 10);
        t.set(1, 9);
        assert_eq!((t.get(0), t.get(1)), (Some(EMPTY), Some(9)));

        // Offsets growing by 1000 per entry: each 64-entry block spans 63 000, deltas fit 16 bits.
        let v: Vec<u32> = (0..200u32).map(|i| 5 + 1000 * i).collect();
        let o = Offsets::from_vec(v.clone());
        assert!(matches!(o.delta, Packed::U16(_)));
        assert_eq!(
            (0..201).map(|i| o.get(i)).collect::<Vec<_>>(),
            v.iter().map(|&x| Some(x)).chain([None]).collect::<Vec<_>>()
        );
        // One block spanning 64 KiB: 32-bit.
        let mut w = v.clone();
        for x in &mut w[10..] {
            *x += 70_000;
        }
        let o = Offsets::from_vec(w.clone());
        assert!(matches!(o.delta, Packed::U32(_)));
        assert_eq!((0..200).map(|i| o.get(i).unwrap()).collect::<Vec<_>>(), w);
    }
}
