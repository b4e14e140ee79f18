//! SentencePiece-style vocab (`tokenizer.ggml.model = llama`): the text (spaces already shown as
//! U+2581) starts as one symbol per character; adjacent pairs whose concatenation is a token are merged,
//! highest token score first (leftmost on ties), until no pair is a token. Symbols that are not tokens
//! fall back to `<0xNN>` byte tokens, or to the unknown token.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Lexicon;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the lower left index.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

pub(crate) struct Spm {
    /// `<0xNN>` token for each byte, NONE if missing.
    pub byte_token: [u32; 256],
}

impl Spm {
    pub fn new(lex: &Lexicon) -> Spm {
        let mut byte_token = [NONE; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            if let Some(id) = lex.id(format!("<0x{b:02X}>").as_bytes()) {
                *slot = id;
            } else if b < 0x80 {
                // llama.cpp falls back to the byte itself as a one-character token.
                if let Some(id) = lex.id(&[b as u8]) {
                    *slot = id;
                }
            }
        }
        Spm { byte_token }
    }

    /// Tokenize `text` (whitespace already escaped), appending ids to `out`.
    pub fn encode(
        &self,
        text: &str,
        lex: &Lexicon,
        score: impl Fn(u32) -> f32,
        unk: Option<u32>,
        out: &mut Vec<u32>,
    ) {
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (off, c)) in text.char_indices().enumerate() {
            let i = i as u32;
            syms.push(Sym {
                start: off as u32,
                len: c.len_utf8() as u32,
                prev: i.wrapping_sub(1),
                next: i + 1,
            });
        }
        let n = syms.len();
        syms[n - 1].next = NONE;
        let mut heap = BinaryHeap::new();
        let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (a, b) = (syms[l as usize], syms[r as usize]);
            let s = &text[a.start as usize..(b.start + b.len) as usize];
            if let Some(id) = lex.id(s.as_bytes()) {
                heap.push(Bigram {
                    score: score(id),
                    left: l,
                    right: r,
                    size: s.len() as u32,
                });
            }
        };
        for i in 1..n as u32 {
            try_add(&syms, &mut heap, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left as usize], syms[bg.right as usize]);
            // Stale: one side was merged away, or grew since the bigram was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size || l.next != bg.right {
                continue;
            }
            syms[bg.left as usize].len += r.len;
            syms[bg.right as usize].len = 0;
            syms[bg.left as usize].next = r.next;
            if r.next != NONE {
                syms[r.next as usize].prev = bg.left;
            }
            let prev = syms[bg.left as usize].prev;
            let next = syms[bg.left as usize].next;
            try_add(&syms, &mut heap, prev, bg.left);
            try_add(&syms, &mut heap, bg.left, next);
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            let piece = &text[s.start as usize..(s.start + s.len) as usize];
            if let Some(id) = lex.id(piece.as_bytes()) {
                out.push(id);
            } else {
                // Every merge produced a token, so this is a single character missing from the vocab.
                let bytes = piece.as_bytes();
                if bytes.iter().all(|&b| self.byte_token[b as usize] != NONE) {
                    out.extend(bytes.iter().map(|&b| self.byte_token[b as usize]));
                } else if let Some(u) = unk {
                    out.push(u);
                }
            }
            i = s.next;
        }
    }
}
