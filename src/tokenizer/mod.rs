//! Tokenizers built from GGUF metadata: GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`) and
//! SentencePiece-style score merging (`llama`), special-token parsing, and streaming detokenization.
//!
//! The constructor takes plain data ([`Vocab`]); [`Vocab::from_gguf`] fills it from a GGUF file, and
//! [`Tokenizer::from_gguf`] builds straight from the file's metadata without the intermediate strings.
//! A tokenizer built by [`crate::Model::open`] reads token texts, scores and types in place from the
//! model's mapping (see `store.rs`): its own tables are an id index and the BPE merge table; a token's
//! raw bytes are decoded from its text as they are read (`piece.rs`).
//!
//! Special tokens: tokens of type CONTROL (3), USER_DEFINED (4) and UNKNOWN (2) are recognised in
//! the input text, leftmost first and longest first at a position, and become their single id.
//! USER_DEFINED tokens are always recognised (they are ordinary added words, as in llama.cpp and
//! Hugging Face); CONTROL and UNKNOWN ones only when `parse_special` is true.
mod bpe;
mod build;
mod piece;
pub mod pretok;
mod spm;
mod store;
mod unicode_letters;

pub use bpe::{byte_to_char_table, char_to_byte};
pub use build::Vocab;
use piece::Form;
pub use piece::Piece;
use pretok::PreTokenizer;
use store::{IndexTable, Nums, Texts, TooLarge};

use crate::Error;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

const SRC: &str = "tokenizer";
/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space.
const SPM_SPACE: char = '\u{2581}';

enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(Box<spm::Spm>),
}

/// Token texts of end-of-generation markers across model families.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|return|>",
    "<|end_of_text|>",
    "<EOT>",
    "<end_of_utterance>",
];

/// Token texts and the text → id index.
pub(crate) struct Lexicon {
    texts: Texts,
    index: IndexTable,
}

impl Lexicon {
    /// Indexes `texts`; later duplicates win, as in llama.cpp and Hugging Face's vocab dict.
    fn new(texts: Texts) -> Lexicon {
        let n = texts.len();
        let mut index = IndexTable::new(n);
        for i in 0..n {
            let t = texts.get(i);
            index.insert(index.hash(t), i as u32, true, |v| {
                texts.get(v as usize) == t
            });
        }
        Lexicon { texts, index }
    }

    /// The id of the token whose text is `text`.
    #[inline]
    pub fn id(&self, text: &[u8]) -> Option<u32> {
        self.index.find(self.index.hash(text), |v| {
            self.texts.get(v as usize) == text
        })
    }

    #[inline]
    pub fn text(&self, id: u32) -> &[u8] {
        self.texts.get(id as usize)
    }

    fn len(&self) -> usize {
        self.texts.len()
    }
}

pub struct Tokenizer {
    model: Model,
    pre: PreTokenizer,
    lex: Lexicon,
    types: Nums<i32>,
    /// Empty when the vocab has none.
    scores: Nums<f32>,
    /// Special-token candidates sorted by first byte, then longest first, then id; those starting with
    /// byte `b` are `specials[special_start[b]..special_start[b + 1]]`, each with whether it is
    /// USER_DEFINED (recognised even without `parse_special`).
    specials: Box<[(u32, bool)]>,
    special_start: Box<[u32]>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    eog: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.model {
            Model::Bpe(_) => "bpe",
            Model::Spm(_) => "spm",
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("n_vocab", &self.lex.len())
            .finish()
    }
}

fn field_err(field: &str, detail: String) -> Error {
    Error::format(SRC, field, None, detail)
}

fn too_large(field: &str) -> impl Fn(TooLarge) -> Error + '_ {
    move |_| field_err(field, "total text exceeds 4 GiB".into())
}

impl Tokenizer {
    /// Bytes of the tokenizer's own tables (texts, scores and types read in place from a model's
    /// mapping are not counted; the pre-tokenizer's regex is not either).
    pub fn heap_bytes(&self) -> usize {
        let model = match &self.model {
            Model::Bpe(b) => b.heap_bytes(),
            Model::Spm(_) => 0,
        };
        self.lex.texts.heap_bytes()
            + self.lex.index.heap_bytes()
            + self.types.heap_bytes()
            + self.scores.heap_bytes()
            + 8 * self.specials.len()
            + 4 * self.special_start.len()
            + model
    }

    /// Whether the token texts are read in place from a model file's mapping.
    pub fn texts_in_place(&self) -> bool {
        matches!(self.lex.texts.backing, store::Backing::Mapped(_))
    }

    /// Tokenize `text`. Adds no BOS/EOS (see [`Tokenizer::add_bos`]). With `parse_special`, the text
    /// of control tokens (e.g. `<|im_start|>`) becomes that token.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, parse_special, &mut out);
        out
    }

    /// [`Tokenizer::encode`], appending to `out`.
    pub fn encode_into<'a>(&self, text: &'a str, parse_special: bool, out: &mut Vec<u32>) {
        let mut prev_special = true;
        let bytes = text.as_bytes();
        let mut frag_start = 0;
        let mut i = 0;
        let mut scratch: Scratch<'a> = Scratch::default();
        while i < bytes.len() {
            if let Some((id, len)) = self.special_at(&bytes[i..], parse_special) {
                if frag_start < i {
                    self.encode_fragment(&text[frag_start..i], prev_special, &mut scratch, out);
                }
                out.push(id);
                prev_special = true;
                i += len;
                frag_start = i;
            } else {
                i += 1;
            }
        }
        if frag_start < bytes.len() {
            self.encode_fragment(&text[frag_start..], prev_special, &mut scratch, out);
        }
    }

    /// The longest special token starting at the beginning of `s`.
    fn special_at(&self, s: &[u8], parse_special: bool) -> Option<(u32, usize)> {
        let b = *s.first()? as usize;
        let (lo, hi) = (
            self.special_start[b] as usize,
            self.special_start[b + 1] as usize,
        );
        for &(id, user_defined) in self.specials.get(lo..hi)? {
            if !parse_special && !user_defined {
                continue;
            }
            let t = self.lex.text(id);
            if s.starts_with(t) {
                return Some((id, t.len()));
            }
        }
        None
    }

    fn encode_fragment<'a>(
        &self,
        text: &'a str,
        after_special: bool,
        scratch: &mut Scratch<'a>,
        out: &mut Vec<u32>,
    ) {
        match &self.model {
            Model::Bpe(b) => {
                scratch.words.clear();
                self.pre.split(text, &mut scratch.words);
                for w in &scratch.words {
                    b.encode_word(w.as_bytes(), &self.lex, self.unk, &mut scratch.bpe, out);
                }
            }
            Model::Spm(s) => {
                scratch.spm_text.clear();
                if self.add_space_prefix && after_special {
                    scratch.spm_text.push(SPM_SPACE);
                }
                for c in text.chars() {
                    scratch.spm_text.push(if c == ' ' { SPM_SPACE } else { c });
                }
                let backing = &self.lex.texts.backing;
                let score = |id: u32| self.scores.get(backing, id as usize).unwrap_or(0.0);
                s.encode(&scratch.spm_text, &self.lex, score, self.unk, out);
            }
        }
    }

    /// Raw bytes of a token (byte-level / `▁` mapping undone). CONTROL tokens give their text only when
    /// `special` is true, otherwise nothing; USER_DEFINED tokens always give their text. An id outside
    /// the vocab gives nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Piece<'_> {
        let i = id as usize;
        if i >= self.lex.len() {
            return Piece::EMPTY;
        }
        let ty = (self.types.get(&self.lex.texts.backing, i)).unwrap_or(token_type::NORMAL);
        if !special
            && matches!(
                ty,
                token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED
            )
        {
            return Piece::EMPTY;
        }
        let text = self.lex.texts.get_str(i);
        let is_spm = matches!(self.model, Model::Spm(_));
        let form = match ty {
            token_type::CONTROL
            | token_type::USER_DEFINED
            | token_type::UNKNOWN
            | token_type::UNUSED => Form::Verbatim,
            token_type::BYTE if is_spm => {
                is_byte_token_text(text.as_bytes()).map_or(Form::Verbatim, Form::Byte)
            }
            _ if is_spm => Form::Spm,
            _ => Form::ByteLevel,
        };
        Piece::new(text, form)
    }

    /// Decode ids to text, special tokens rendered as their text. Invalid UTF-8 (only possible from
    /// odd token sequences) becomes U+FFFD. For a SentencePiece vocab with `add_space_prefix`, the space
    /// the encoder put in front of the text is removed again.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, true)
    }

    /// [`Tokenizer::decode`] with a choice of rendering control tokens (`special`) or dropping them.
    pub fn decode_with(&self, ids: &[u32], special: bool) -> String {
        let mut out = String::new();
        let mut d = StreamDecoder::new(special);
        // For a SentencePiece vocab with a space prefix, the first byte of the first non-empty piece
        // is dropped when it is that space.
        let mut drop_space = matches!(self.model, Model::Spm(_)) && self.add_space_prefix;
        for &id in ids {
            self.token_to_piece(id, special)
                .for_each_chunk(|mut chunk| {
                    if drop_space && !chunk.is_empty() {
                        drop_space = false;
                        if chunk[0] == b' ' {
                            chunk = &chunk[1..];
                        }
                    }
                    d.push_bytes(chunk, &mut out);
                });
        }
        d.finish(&mut out);
        out
    }

    pub fn n_vocab(&self) -> usize {
        self.lex.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    /// Whether a BOS token should start a prompt (`tokenizer.ggml.add_bos_token`; default: true for
    /// SentencePiece vocabs, false for BPE).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }
    /// End of generation: EOS, EOT, and the end-of-turn tokens of known chat formats present as
    /// non-normal tokens (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>` …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// The vocab text of a token (GGUF form, e.g. `Ġhello` or `▁hello`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.lex.len()).then(|| self.lex.texts.get_str(id as usize))
    }
    /// The token type of a token ([`token_type`]).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(&self.lex.texts.backing, id as usize)
    }
    /// The id of the token whose vocab text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.lex.id(text.as_bytes())
    }
}

/// Buffers reused across the fragments of one `encode` call (the words borrow the input text).
#[derive(Default)]
struct Scratch<'a> {
    bpe: bpe::BpeScratch,
    words: Vec<&'a str>,
    spm_text: String,
}

/// `<0xNN>` → NN.
fn is_byte_token_text(b: &[u8]) -> Option<u8> {
    if b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' {
        u8::from_str_radix(std::str::from_utf8(&b[3..5]).ok()?, 16).ok()
    } else {
        None
    }
}

/// Incremental detokenizer: appends only complete UTF-8 characters, holding back up to 3 bytes of a
/// character split across tokens. Invalid bytes become U+FFFD exactly as `String::from_utf8_lossy`
/// would replace them.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: [u8; 4],
    n: u8,
    special: bool,
}

impl StreamDecoder {
    /// `special`: render control tokens as their text.
    pub fn new(special: bool) -> Self {
        StreamDecoder {
            pending: [0; 4],
            n: 0,
            special,
        }
    }

    /// Append the text of token `id` to `out` (only complete characters).
    pub fn push(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        tok.token_to_piece(id, self.special)
            .for_each_chunk(|chunk| self.push_bytes(chunk, out));
    }

    /// Number of bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> usize {
        self.n as usize
    }

    /// Append raw bytes.
    pub fn push_bytes(&mut self, mut bytes: &[u8], out: &mut String) {
        // Complete a held-back character first, one byte at a time.
        while self.n > 0 && !bytes.is_empty() {
            let n = self.n as usize;
            self.pending[n] = bytes[0];
            match std::str::from_utf8(&self.pending[..n + 1]) {
                Ok(s) => {
                    out.push_str(s);
                    self.n = 0;
                    bytes = &bytes[1..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix.
                    self.n += 1;
                    bytes = &bytes[1..];
                }
                Err(_) => {
                    // The held bytes can't be completed by this byte: they are one bad sequence; the
                    // byte itself is examined afresh below.
                    out.push('\u{FFFD}');
                    self.n = 0;
                }
            }
        }
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(e) => {
                    let (good, rest) = bytes.split_at(e.valid_up_to());
                    if let Ok(s) = std::str::from_utf8(good) {
                        out.push_str(s);
                    }
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            bytes = &rest[bad..];
                        }
                        None => {
                            // An incomplete character at the end (at most 3 bytes).
                            self.pending[..rest.len()].copy_from_slice(rest);
                            self.n = rest.len() as u8;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Flush: a character still incomplete at the end becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if self.n > 0 {
            out.push('\u{FFFD}');
            self.n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tokenizer `Model::open` builds reads texts, scores and types in place from the
    //! mapping; it must behave exactly like the copying one (`Tokenizer::from_gguf`) and the one built
    //! from plain data (`Vocab`), which tests/tokenizer.rs checks against reference ids.
    use super::*;
    use crate::gguf::Gguf;
    use std::path::{Path, PathBuf};

    fn model(env: &str, file: &str) -> PathBuf {
        let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(file)
        });
        assert!(
            p.is_file(),
            "model {} not found: run `models/fetch.sh` (or set {env})",
            p.display()
        );
        p
    }

    /// Texts of the reference cases plus a few that mix special tokens, digits, bytes and scripts.
    fn texts() -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer");
        let mut out: Vec<String> = [
            "<|im_start|>user\nHello, world! 12345 <end_of_turn>\n",
            "  leading spaces,\ttabs\r\nand ünïcödé — 日本語のテキスト 🙂🙂 <0x41> <unk>",
            "",
            " ",
        ]
        .map(String::from)
        .to_vec();
        for f in [
            "smollm2_cases.json",
            "smollm2_tokenize.json",
            "gemma3_tokenize.json",
        ] {
            let s = std::fs::read_to_string(dir.join(f)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            for c in v.as_array().unwrap() {
                out.push(c["text"].as_str().unwrap().to_string());
            }
        }
        assert!(out.len() > 40);
        out
    }

    fn same_behaviour(path: &Path, max_heap_mib: f64) {
        // Built as `Model::open` builds it: from the GGUF parsed in place in the mapping.
        let map = crate::mmap::MappedFile::open(path).unwrap();
        let mapped = Tokenizer::from_gguf_mapped(&Gguf::parse(&map).unwrap(), &map).unwrap();
        let mapped = &mapped;
        let bytes = std::fs::read(path).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let copied = Tokenizer::from_gguf(&g).unwrap();
        let owned = Tokenizer::new(Vocab::from_gguf(&g).unwrap()).unwrap();
        assert!(mapped.texts_in_place());
        assert!(!copied.texts_in_place() && !owned.texts_in_place());
        let n = mapped.n_vocab();
        assert_eq!((copied.n_vocab(), owned.n_vocab()), (n, n));
        for id in 0..n as u32 + 2 {
            let t = mapped.token_text(id);
            assert_eq!(t, copied.token_text(id), "text of {id}");
            assert_eq!(t, owned.token_text(id), "text of {id}");
            assert_eq!(mapped.token_type(id), copied.token_type(id), "type of {id}");
            assert_eq!(mapped.token_type(id), owned.token_type(id), "type of {id}");
            for special in [false, true] {
                assert_eq!(
                    mapped.token_to_piece(id, special),
                    copied.token_to_piece(id, special),
                    "piece of {id}"
                );
                assert_eq!(
                    mapped.token_to_piece(id, special),
                    owned.token_to_piece(id, special),
                    "piece of {id}"
                );
            }
            if let Some(t) = t {
                let got = mapped.token_id(t);
                assert!(
                    got.is_some_and(|g| mapped.token_text(g) == Some(t)),
                    "id of {t:?}"
                );
                assert_eq!(got, owned.token_id(t), "id of {t:?}");
            }
            assert_eq!(mapped.is_eog(id), owned.is_eog(id));
        }
        assert_eq!(mapped.token_id("no such token \u{1}"), None);
        for text in texts() {
            for special in [false, true] {
                let ids = mapped.encode(&text, special);
                assert_eq!(ids, copied.encode(&text, special), "{text:?}");
                assert_eq!(ids, owned.encode(&text, special), "{text:?}");
                assert_eq!(mapped.decode(&ids), owned.decode(&ids));
            }
        }
        // What the mapping saves: the texts themselves are not in the tokenizer's tables.
        let text_bytes: usize = (0..n as u32)
            .map(|i| mapped.token_text(i).unwrap().len())
            .sum();
        let heap = mapped.heap_bytes();
        eprintln!(
            "{}: tokenizer tables {:.2} MiB in place, {:.2} MiB copying (texts {:.2} MiB)",
            path.display(),
            heap as f64 / 1048576.0,
            copied.heap_bytes() as f64 / 1048576.0,
            text_bytes as f64 / 1048576.0
        );
        assert!(copied.heap_bytes() >= heap + text_bytes);
        assert!((heap as f64) < max_heap_mib * 1048576.0, "{heap} bytes");
    }

    #[test]
    fn in_place_tokenizer_equals_copying_one_smollm2() {
        same_behaviour(
            &model("EDGE_RUN_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            1.25,
        );
    }

    #[test]
    fn in_place_tokenizer_equals_copying_one_gemma3() {
        same_behaviour(&model("EDGE_RUN_GEMMA", "gemma-3-270m-q4_k_m.gguf"), 4.0);
    }
}
