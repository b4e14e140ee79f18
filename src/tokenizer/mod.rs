//! Tokenizers built from GGUF metadata: GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`) and
//! SentencePiece-style score merging (`llama`), special-token parsing, and streaming detokenization.
//!
//! The constructor takes plain data ([`Vocab`]); [`Vocab::from_gguf`] fills it from a GGUF file.
//!
//! Special tokens: tokens of type CONTROL (3), USER_DEFINED (4) and UNKNOWN (2) are recognised in
//! the input text, leftmost first and longest first at a position, and become their single id.
//! USER_DEFINED tokens are always recognised (they are ordinary added words, as in llama.cpp and
//! Hugging Face); CONTROL and UNKNOWN ones only when `parse_special` is true.
mod bpe;
pub mod pretok;
mod spm;
mod unicode_letters;

use std::collections::HashMap;

pub use bpe::{byte_to_char_table, char_to_byte};
use pretok::PreTokenizer;

use crate::gguf::Gguf;
use crate::{Error, Result};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer part of a GGUF file's metadata, as plain data.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`: pre-tokenizer family of a `gpt2` vocab (`smollm`, `llama-bpe`, …).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

impl Vocab {
    /// Read the `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Vocab> {
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match g.opt_array(key)? {
                None => Ok(None),
                Some(a) => Ok(Some(
                    a.to_vec_str()
                        .map_err(|e| e.in_file(g.file_name()))?
                        .into_iter()
                        .map(String::from)
                        .collect(),
                )),
            }
        };
        // Ids: any integer type; a negative value (some converters write -1) means "none".
        let id = |key: &str| -> Result<Option<u32>> {
            let Some(v) = g.get(key) else { return Ok(None) };
            match v.as_int() {
                Some(i) if i < 0 => Ok(None),
                Some(i) => u32::try_from(i).map(Some).map_err(|_| {
                    Error::format(
                        g.file_name(),
                        format!("metadata[{key:?}]"),
                        None,
                        format!("token id {i} is too large"),
                    )
                }),
                None => g.opt_u32(key),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
            Error::format(
                g.file_name(),
                "metadata[\"tokenizer.ggml.tokens\"]",
                None,
                "required key is missing",
            )
        })?;
        Ok(Vocab {
            model: g.get_str("tokenizer.ggml.model")?.to_string(),
            pre: g.opt_str("tokenizer.ggml.pre")?.map(String::from),
            tokens,
            scores: match g.opt_array("tokenizer.ggml.scores")? {
                None => None,
                Some(a) => Some(a.to_vec_f32().map_err(|e| e.in_file(g.file_name()))?),
            },
            token_types: match g.opt_array("tokenizer.ggml.token_type")? {
                None => None,
                Some(a) => Some(a.to_vec_i32().map_err(|e| e.in_file(g.file_name()))?),
            },
            merges: strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: g.opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: g.opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: g.opt_bool("tokenizer.ggml.add_space_prefix")?,
        })
    }
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

pub struct Tokenizer {
    model: Model,
    pre: PreTokenizer,
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Vec<f32>,
    lookup: HashMap<String, u32>,
    /// Decoded bytes of every token, flat; token i is `pieces[piece_off[i]..piece_off[i+1]]`.
    pieces: Vec<u8>,
    piece_off: Vec<u32>,
    /// Special-token candidates per first byte, longest first.
    special_by_byte: Vec<Vec<u32>>,
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
            .field("n_vocab", &self.tokens.len())
            .finish()
    }
}

fn field_err(field: &str, detail: String) -> Error {
    Error::format(SRC, field, None, detail)
}

impl Tokenizer {
    pub fn new(vocab: Vocab) -> Result<Tokenizer> {
        let Vocab {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
        } = vocab;
        let n = tokens.len();
        if n == 0 {
            return Err(field_err("tokenizer.ggml.tokens", "is empty".into()));
        }
        if n >= u32::MAX as usize {
            return Err(field_err(
                "tokenizer.ggml.tokens",
                format!("has {n} entries, too many"),
            ));
        }
        if let Some(s) = &scores {
            if s.len() != n {
                return Err(field_err(
                    "tokenizer.ggml.scores",
                    format!("has {} entries, tokens has {n}", s.len()),
                ));
            }
        }
        let types = match token_types {
            Some(t) if t.len() != n => {
                return Err(field_err(
                    "tokenizer.ggml.token_type",
                    format!("has {} entries, tokens has {n}", t.len()),
                ))
            }
            Some(t) => t,
            None => tokens
                .iter()
                .map(|t| {
                    if is_byte_token_text(t).is_some() && model == "llama" {
                        token_type::BYTE
                    } else {
                        token_type::NORMAL
                    }
                })
                .collect(),
        };
        for (name, id) in [
            ("tokenizer.ggml.bos_token_id", bos),
            ("tokenizer.ggml.eos_token_id", eos),
            ("tokenizer.ggml.eot_token_id", eot),
            ("tokenizer.ggml.unknown_token_id", unk),
            ("tokenizer.ggml.padding_token_id", pad),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(field_err(
                        name,
                        format!("is {id}, but the vocab has {n} tokens"),
                    ));
                }
            }
        }
        // Later duplicates win, as in llama.cpp and Hugging Face's vocab dict.
        let mut lookup = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            lookup.insert(t.clone(), i as u32);
        }

        let (model_impl, pre_tok, is_spm) = match model.as_str() {
            "gpt2" => {
                let merges = merges.ok_or_else(|| {
                    field_err("tokenizer.ggml.merges", "is missing; a gpt2 (BPE) vocab needs it".into())
                })?;
                let choice = PreTokenizer::for_name(pre.as_deref())?;
                let (b, skipped) = bpe::Bpe::new(&merges, &lookup, choice.ignore_merges)
                    .map_err(|e| field_err("tokenizer.ggml.merges", e))?;
                if skipped > 0 {
                    log::warn!("tokenizer.ggml.merges: {skipped} merges name tokens missing from the vocab; ignored");
                }
                (Model::Bpe(Box::new(b)), choice.pre, false)
            }
            "llama" => {
                if scores.is_none() {
                    return Err(field_err(
                        "tokenizer.ggml.scores",
                        "is missing; a llama (SentencePiece) vocab merges by score".into(),
                    ));
                }
                (Model::Spm(Box::new(spm::Spm::new(&lookup))), PreTokenizer::Gpt2, true)
            }
            other => {
                return Err(Error::unsupported(
                    SRC,
                    format!("tokenizer.ggml.model = {other:?} (only \"gpt2\" and \"llama\" are implemented)"),
                ))
            }
        };

        // Decoded piece of every token.
        let mut pieces = Vec::with_capacity(n * 4);
        let mut piece_off = Vec::with_capacity(n + 1);
        piece_off.push(0u32);
        for (i, t) in tokens.iter().enumerate() {
            let ty = types[i];
            match ty {
                token_type::CONTROL
                | token_type::USER_DEFINED
                | token_type::UNKNOWN
                | token_type::UNUSED => pieces.extend_from_slice(t.as_bytes()),
                token_type::BYTE if is_spm => match is_byte_token_text(t) {
                    Some(b) => pieces.push(b),
                    None => pieces.extend_from_slice(t.as_bytes()),
                },
                _ if is_spm => {
                    for c in t.chars() {
                        let c = if c == SPM_SPACE { ' ' } else { c };
                        let mut buf = [0u8; 4];
                        pieces.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                _ => {
                    for c in t.chars() {
                        match char_to_byte(c) {
                            Some(b) => pieces.push(b),
                            None => {
                                let mut buf = [0u8; 4];
                                pieces.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
            }
            let off = u32::try_from(pieces.len()).map_err(|_| {
                field_err("tokenizer.ggml.tokens", "total text exceeds 4 GiB".into())
            })?;
            piece_off.push(off);
        }

        // Special tokens by first byte, longest first.
        let mut special_by_byte: Vec<Vec<u32>> = vec![Vec::new(); 256];
        for (i, t) in tokens.iter().enumerate() {
            if matches!(
                types[i],
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
            ) && !t.is_empty()
            {
                special_by_byte[t.as_bytes()[0] as usize].push(i as u32);
            }
        }
        for v in &mut special_by_byte {
            v.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));
        }

        let mut eog: Vec<u32> = [eos, eot].into_iter().flatten().collect();
        for t in EOG_TEXTS {
            if let Some(&id) = lookup.get(*t) {
                if types[id as usize] != token_type::NORMAL {
                    eog.push(id);
                }
            }
        }
        eog.sort_unstable();
        eog.dedup();

        Ok(Tokenizer {
            model: model_impl,
            pre: pre_tok,
            scores: scores.unwrap_or_default(),
            types,
            lookup,
            pieces,
            piece_off,
            special_by_byte,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos: add_bos.unwrap_or(is_spm),
            add_eos: add_eos.unwrap_or(false),
            add_space_prefix: add_space_prefix.unwrap_or(is_spm),
            eog,
            tokens,
        })
    }

    /// Build from a GGUF file's metadata; errors name the file.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Tokenizer> {
        Tokenizer::new(Vocab::from_gguf(g)?).map_err(|e| e.in_file(g.file_name()))
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
        for &id in &self.special_by_byte[s[0] as usize] {
            let ty = self.types[id as usize];
            if !parse_special && ty != token_type::USER_DEFINED {
                continue;
            }
            let t = self.tokens[id as usize].as_bytes();
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
                    b.encode_word(w.as_bytes(), &self.lookup, self.unk, &mut scratch.bpe, out);
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
                s.encode(&scratch.spm_text, &self.lookup, &self.scores, self.unk, out);
            }
        }
    }

    /// Raw bytes of a token (byte-level / `▁` mapping undone). CONTROL tokens give their text only when
    /// `special` is true, otherwise nothing; USER_DEFINED tokens always give their text. An id outside
    /// the vocab gives nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i >= self.tokens.len() {
            return &[];
        }
        if !special
            && matches!(
                self.types[i],
                token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED
            )
        {
            return &[];
        }
        &self.pieces[self.piece_off[i] as usize..self.piece_off[i + 1] as usize]
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
        let mut first = true;
        for &id in ids {
            let piece = self.token_to_piece(id, special);
            if first && !piece.is_empty() {
                first = false;
                if matches!(self.model, Model::Spm(_)) && self.add_space_prefix && piece[0] == b' '
                {
                    d.push_bytes(&piece[1..], &mut out);
                    continue;
                }
            }
            d.push_bytes(piece, &mut out);
        }
        d.finish(&mut out);
        out
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
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
        self.tokens.get(id as usize).map(String::as_str)
    }
    /// The token type of a token ([`token_type`]).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(id as usize).copied()
    }
    /// The id of the token whose vocab text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.lookup.get(text).copied()
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
fn is_byte_token_text(t: &str) -> Option<u8> {
    let b = t.as_bytes();
    if b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' {
        u8::from_str_radix(&t[3..5], 16).ok()
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
        let piece = tok.token_to_piece(id, self.special);
        self.push_bytes(piece, out);
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
