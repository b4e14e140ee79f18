//! GPT-2 style byte-level BPE: bytes are shown as printable characters (the byte↔unicode table), and
//! merges from `tokenizer.ggml.merges` are applied, lowest rank first, inside each pre-token word.
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::store::{IndexTable, Packed};
use super::Lexicon;

/// The GPT-2 byte → character table: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// are given the code points 256, 257, … in byte order.
pub fn byte_to_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in t.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let cp = if printable {
            b as u32
        } else {
            let cp = next;
            next += 1;
            cp
        };
        // All values are below 0x180, valid scalar values.
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    t
}

/// Inverse of [`byte_to_char_table`]: the byte a character stands for, if it is one of the 256.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if (0x21..=0x7E).contains(&cp) || (0xA1..=0xAC).contains(&cp) || (0xAE..=0xFF).contains(&cp) {
        return Some(cp as u8);
    }
    if !(256..256 + 68).contains(&cp) {
        return None;
    }
    // The n-th non-printable byte got 256 + n.
    let mut n = cp - 256;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        if !printable {
            if n == 0 {
                return Some(b as u8);
            }
            n -= 1;
        }
    }
    None
}

const NONE: u32 = u32::MAX;

pub(crate) struct Bpe {
    /// The usable merges in rank order, three ids each (left, right, merged): merge k (its rank) is
    /// `merges[3k..3k + 3]`. 16-bit for vocabularies below 65535 tokens.
    merges: Packed,
    /// (left id, right id) → index in `merges`.
    merge_index: IndexTable,
    /// Token id of the single-character token standing for each byte (NONE if the vocab lacks it).
    byte_token: [u32; 256],
    /// The byte → character table, to look whole words up for `ignore_merges`.
    byte_char: [char; 256],
    pub ignore_merges: bool,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

/// Scratch buffers reused across the words of one `encode` call.
#[derive(Default)]
pub(crate) struct BpeScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>>,
    word: String,
}

impl Bpe {
    /// `lex` maps a token's text to its id. Merges whose parts or result are not tokens are skipped
    /// (counted in the returned number); of two merges of the same pair, the first (lower rank) counts.
    pub fn new<'m>(
        merges_text: impl Iterator<Item = &'m str>,
        n_merges: usize,
        lex: &Lexicon,
        ignore_merges: bool,
    ) -> Result<(Bpe, usize), String> {
        let byte_char = byte_to_char_table();
        let mut byte_token = [NONE; 256];
        let mut buf = [0u8; 4];
        for (b, c) in byte_char.iter().enumerate() {
            if let Some(id) = lex.id(c.encode_utf8(&mut buf).as_bytes()) {
                byte_token[b] = id;
            }
        }
        let mut merges: Vec<u32> = Vec::with_capacity(3 * n_merges);
        let mut merge_index = IndexTable::new(n_merges);
        let mut skipped = 0;
        let mut joined = Vec::new();
        for (rank, m) in merges_text.enumerate() {
            // A merge line is "left right"; a token never contains a plain space (it is shown as Ġ).
            let Some((l, r)) = m.split_once(' ') else {
                return Err(format!("entry {rank} is {m:?}, not \"left right\""));
            };
            joined.clear();
            joined.extend_from_slice(l.as_bytes());
            joined.extend_from_slice(r.as_bytes());
            match (lex.id(l.as_bytes()), lex.id(r.as_bytes()), lex.id(&joined)) {
                (Some(a), Some(b), Some(ab)) => {
                    let h = merge_index.hash(&(a, b));
                    let k = (merges.len() / 3) as u32;
                    if merge_index.insert(h, k, false, |v| {
                        merges.get(3 * v as usize..3 * v as usize + 2) == Some(&[a, b])
                    }) {
                        merges.extend_from_slice(&[a, b, ab]);
                    }
                }
                _ => skipped += 1,
            }
        }
        Ok((
            Bpe {
                merges: Packed::from_vec(merges),
                merge_index,
                byte_token,
                byte_char,
                ignore_merges,
            },
            skipped,
        ))
    }

    /// The merge of the pair (left, right): (rank, merged id).
    #[inline]
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let h = self.merge_index.hash(&(left, right));
        let m = &self.merges;
        let k = self.merge_index.find(h, |v| {
            let i = 3 * v as usize;
            m.get(i) == Some(left) && m.get(i + 1) == Some(right)
        })?;
        Some((k, m.get(3 * k as usize + 2)?))
    }

    /// Bytes of the merge table.
    pub fn heap_bytes(&self) -> usize {
        self.merges.heap_bytes() + self.merge_index.heap_bytes()
    }

    /// BPE over one pre-token word (raw UTF-8 bytes of the text), appending ids to `out`.
    /// Bytes whose character token is missing from the vocab become `unk` (or are dropped without one).
    pub fn encode_word(
        &self,
        word: &[u8],
        lex: &Lexicon,
        unk: Option<u32>,
        scratch: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            scratch.word.clear();
            scratch
                .word
                .extend(word.iter().map(|&b| self.byte_char[b as usize]));
            if let Some(id) = lex.id(scratch.word.as_bytes()) {
                out.push(id);
                return;
            }
        }
        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        for (i, &b) in word.iter().enumerate() {
            let i = i as u32;
            syms.push(Sym {
                id: self.byte_token[b as usize],
                prev: i.wrapping_sub(1),
                next: i + 1,
            });
        }
        let n = syms.len() as u32;
        syms[n as usize - 1].next = NONE;
        let pair = |l: &Sym, r: &Sym| -> Option<(u32, u32)> {
            if l.id == NONE || r.id == NONE {
                None
            } else {
                self.merge(l.id, r.id)
            }
        };
        for i in 0..n - 1 {
            if let Some((rank, _)) = pair(&syms[i as usize], &syms[i as usize + 1]) {
                heap.push(Reverse((
                    rank,
                    i,
                    syms[i as usize].id,
                    syms[i as usize + 1].id,
                )));
            }
        }
        // Lowest rank first, leftmost on ties. Stale entries (a side already merged into something
        // else, which always changes its id) are skipped.
        while let Some(Reverse((_, pos, lid, rid))) = heap.pop() {
            let left = syms[pos as usize];
            if left.id != lid || left.next == NONE {
                continue;
            }
            let right = syms[left.next as usize];
            if right.id != rid {
                continue;
            }
            let Some((_, merged)) = self.merge(lid, rid) else {
                continue;
            };
            let ri = left.next;
            syms[pos as usize].id = merged;
            syms[pos as usize].next = right.next;
            syms[ri as usize].id = NONE; // dead
            syms[ri as usize].next = NONE;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
            }
            let cur = syms[pos as usize];
            if cur.prev != NONE {
                let p = syms[cur.prev as usize];
                if let Some((rank, _)) = pair(&p, &cur) {
                    heap.push(Reverse((rank, cur.prev, p.id, cur.id)));
                }
            }
            if cur.next != NONE {
                let nx = syms[cur.next as usize];
                if let Some((rank, _)) = pair(&cur, &nx) {
                    heap.push(Reverse((rank, pos, cur.id, nx.id)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            if s.id != NONE {
                out.push(s.id);
            } else if let Some(u) = unk {
                out.push(u);
            }
            i = s.next;
        }
    }
}
