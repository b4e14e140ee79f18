//! Building a [`Tokenizer`]: from plain data ([`Vocab`]) or from a GGUF file's `tokenizer.ggml.*`
//! metadata (in place from a model's mapping), in phases — counts and ids checked, texts / types /
//! scores stored, the model (BPE merges or SentencePiece scores) and pre-tokenizer chosen, the
//! special-token index and the end-of-generation ids.
use std::sync::Arc;

use super::pretok::PreTokenizer;
use super::store::{Nums, Texts};
use super::{
    bpe, field_err, is_byte_token_text, spm, token_type, too_large, Lexicon, Model, Tokenizer,
    EOG_TEXTS, SRC,
};
use crate::gguf::{ArrayView, Gguf, StrIter, ValueType};
use crate::mmap::MappedFile;
use crate::{Error, Result};

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
        let p = Parts::from_gguf(g)?;
        let in_file = |e: Error| e.in_file(g.file_name());
        let strings = |s: &StrSrc<'_>| -> Vec<String> { s.iter().map(String::from).collect() };
        Ok(Vocab {
            model: p.model.to_string(),
            pre: p.pre.map(String::from),
            tokens: strings(&p.tokens),
            scores: match p.scores {
                None => None,
                Some(NumSrc::Owned(v)) => Some(v),
                Some(NumSrc::Gguf(a)) => Some(a.to_vec_f32().map_err(in_file)?),
            },
            token_types: match p.types {
                None => None,
                Some(NumSrc::Owned(v)) => Some(v),
                Some(NumSrc::Gguf(a)) => Some(a.to_vec_i32().map_err(in_file)?),
            },
            merges: p.merges.as_ref().map(strings),
            bos: p.bos,
            eos: p.eos,
            eot: p.eot,
            unk: p.unk,
            pad: p.pad,
            add_bos: p.add_bos,
            add_eos: p.add_eos,
            add_space_prefix: p.add_space_prefix,
        })
    }
}

/// A list of strings: owned, or a GGUF string array (checked to be one).
enum StrSrc<'a> {
    Strings(&'a [String]),
    Gguf(ArrayView<'a>),
}

enum StrSrcIter<'a> {
    Strings(std::slice::Iter<'a, String>),
    Gguf(Option<StrIter<'a>>),
}

impl<'a> Iterator for StrSrcIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match self {
            StrSrcIter::Strings(it) => it.next().map(String::as_str),
            StrSrcIter::Gguf(it) => it.as_mut()?.next(),
        }
    }
}

impl<'a> StrSrc<'a> {
    fn len(&self) -> usize {
        match self {
            StrSrc::Strings(s) => s.len(),
            StrSrc::Gguf(a) => a.len(),
        }
    }
    fn iter(&self) -> StrSrcIter<'a> {
        match self {
            StrSrc::Strings(s) => StrSrcIter::Strings(s.iter()),
            StrSrc::Gguf(a) => StrSrcIter::Gguf(a.as_str_iter().ok()),
        }
    }
}

/// Per-token numbers: owned, or a GGUF array of exactly the element type (`f32` / `i32`).
enum NumSrc<'a, T> {
    Owned(Vec<T>),
    Gguf(ArrayView<'a>),
}

impl<T> NumSrc<'_, T> {
    fn len(&self) -> usize {
        match self {
            NumSrc::Owned(v) => v.len(),
            NumSrc::Gguf(a) => a.len(),
        }
    }
}

/// What a tokenizer is built from: a [`Vocab`]'s fields, or views of a GGUF file's metadata.
struct Parts<'a> {
    model: &'a str,
    pre: Option<&'a str>,
    tokens: StrSrc<'a>,
    scores: Option<NumSrc<'a, f32>>,
    types: Option<NumSrc<'a, i32>>,
    merges: Option<StrSrc<'a>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    add_space_prefix: Option<bool>,
}

impl<'a> Parts<'a> {
    /// The `tokenizer.ggml.*` metadata, type-checked, nothing copied (except number arrays of another
    /// element type than f32 / i32, converted).
    fn from_gguf(g: &Gguf<'a>) -> Result<Parts<'a>> {
        let in_file = |e: Error| e.in_file(g.file_name());
        let strings = |key: &str| -> Result<Option<StrSrc<'a>>> {
            match g.opt_array(key)? {
                None => Ok(None),
                Some(a) => {
                    a.as_str_iter().map_err(in_file)?;
                    Ok(Some(StrSrc::Gguf(*a)))
                }
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
        Ok(Parts {
            model: g.get_str("tokenizer.ggml.model")?,
            pre: g.opt_str("tokenizer.ggml.pre")?,
            tokens,
            scores: match g.opt_array("tokenizer.ggml.scores")? {
                None => None,
                Some(a) if a.elem_type() == ValueType::F32 => Some(NumSrc::Gguf(*a)),
                Some(a) => Some(NumSrc::Owned(a.to_vec_f32().map_err(in_file)?)),
            },
            types: match g.opt_array("tokenizer.ggml.token_type")? {
                None => None,
                Some(a) if a.elem_type() == ValueType::I32 => Some(NumSrc::Gguf(*a)),
                Some(a) => Some(NumSrc::Owned(a.to_vec_i32().map_err(in_file)?)),
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

impl Tokenizer {
    pub fn new(vocab: Vocab) -> Result<Tokenizer> {
        Tokenizer::build(
            Parts {
                model: &vocab.model,
                pre: vocab.pre.as_deref(),
                tokens: StrSrc::Strings(&vocab.tokens),
                scores: vocab.scores.map(NumSrc::Owned),
                types: vocab.token_types.map(NumSrc::Owned),
                merges: vocab.merges.as_deref().map(StrSrc::Strings),
                bos: vocab.bos,
                eos: vocab.eos,
                eot: vocab.eot,
                unk: vocab.unk,
                pad: vocab.pad,
                add_bos: vocab.add_bos,
                add_eos: vocab.add_eos,
                add_space_prefix: vocab.add_space_prefix,
            },
            None,
        )
    }

    /// Build from a GGUF file's metadata (copying the token texts); errors name the file.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Tokenizer> {
        Tokenizer::build(Parts::from_gguf(g)?, None).map_err(|e| e.in_file(g.file_name()))
    }

    /// [`Tokenizer::from_gguf`] for a `g` parsed from `map`: texts, scores and token types are read in
    /// place from the mapping, which the tokenizer keeps alive.
    pub(crate) fn from_gguf_mapped(g: &Gguf<'_>, map: &Arc<MappedFile>) -> Result<Tokenizer> {
        Tokenizer::build(Parts::from_gguf(g)?, Some(map)).map_err(|e| e.in_file(g.file_name()))
    }

    fn build(mut p: Parts<'_>, map: Option<&Arc<MappedFile>>) -> Result<Tokenizer> {
        p.check()?;
        let is_spm = p.model == "llama";
        let has_scores = p.scores.is_some();
        let (texts, types, scores) =
            read_tables(&p.tokens, p.types.take(), p.scores.take(), map, is_spm)?;
        let lex = Lexicon::new(texts);
        let ty = |i: usize| {
            types
                .get(&lex.texts.backing, i)
                .unwrap_or(token_type::NORMAL)
        };
        let (model, pre) = choose_model(&p, has_scores, &lex)?;
        let (specials, special_start) = special_index(&lex, &ty);
        let eog = eog_ids(&p, &lex, &ty);
        Ok(Tokenizer {
            model,
            pre,
            types,
            scores,
            specials,
            special_start,
            bos: p.bos,
            eos: p.eos,
            eot: p.eot,
            unk: p.unk,
            pad: p.pad,
            add_bos: p.add_bos.unwrap_or(is_spm),
            add_eos: p.add_eos.unwrap_or(false),
            add_space_prefix: p.add_space_prefix.unwrap_or(is_spm),
            eog,
            lex,
        })
    }
}

impl Parts<'_> {
    /// The vocabulary's size (> 0, < 2³²−1), the per-token arrays of that length, the special ids in
    /// range.
    fn check(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(field_err("tokenizer.ggml.tokens", "is empty".into()));
        }
        if n >= u32::MAX as usize {
            return Err(field_err(
                "tokenizer.ggml.tokens",
                format!("has {n} entries, too many"),
            ));
        }
        if let Some(s) = &self.scores {
            if s.len() != n {
                return Err(field_err(
                    "tokenizer.ggml.scores",
                    format!("has {} entries, tokens has {n}", s.len()),
                ));
            }
        }
        if let Some(t) = &self.types {
            if t.len() != n {
                return Err(field_err(
                    "tokenizer.ggml.token_type",
                    format!("has {} entries, tokens has {n}", t.len()),
                ));
            }
        }
        for (name, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.eot_token_id", self.eot),
            ("tokenizer.ggml.unknown_token_id", self.unk),
            ("tokenizer.ggml.padding_token_id", self.pad),
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
        Ok(())
    }
}

/// Token texts, types and scores: in place in `map` where the GGUF arrays lie in it, else owned.
/// Without token types, a SentencePiece vocab's `<0xAB>` tokens are BYTE and the rest NORMAL.
fn read_tables(
    tokens: &StrSrc<'_>,
    types: Option<NumSrc<'_, i32>>,
    scores: Option<NumSrc<'_, f32>>,
    map: Option<&Arc<MappedFile>>,
    is_spm: bool,
) -> Result<(Texts, Nums<i32>, Nums<f32>)> {
    let n = tokens.len();
    let texts = match tokens {
        StrSrc::Strings(s) => Texts::from_strings(s),
        StrSrc::Gguf(a) => Texts::from_gguf(a, map),
    }
    .map_err(too_large("tokenizer.ggml.tokens"))?;
    let types = match types {
        Some(NumSrc::Owned(v)) => Nums::Owned(v.into_boxed_slice()),
        Some(NumSrc::Gguf(a)) => match Nums::in_place(&a, &texts.backing) {
            Some(t) => t,
            None => Nums::Owned(a.to_vec_i32()?.into_boxed_slice()),
        },
        None => Nums::Owned(
            (0..n)
                .map(|i| {
                    if is_spm && is_byte_token_text(texts.get(i)).is_some() {
                        token_type::BYTE
                    } else {
                        token_type::NORMAL
                    }
                })
                .collect(),
        ),
    };
    let scores = match scores {
        None => Nums::Owned(Box::new([])),
        Some(NumSrc::Owned(v)) => Nums::Owned(v.into_boxed_slice()),
        Some(NumSrc::Gguf(a)) => match Nums::in_place(&a, &texts.backing) {
            Some(s) => s,
            None => Nums::Owned(a.to_vec_f32()?.into_boxed_slice()),
        },
    };
    Ok((texts, types, scores))
}

/// `gpt2`: byte-level BPE over `tokenizer.ggml.merges` with the pre-tokenizer `tokenizer.ggml.pre`
/// names; `llama`: SentencePiece merging by score.
fn choose_model(p: &Parts<'_>, has_scores: bool, lex: &Lexicon) -> Result<(Model, PreTokenizer)> {
    match p.model {
        "gpt2" => {
            let merges = p.merges.as_ref().ok_or_else(|| {
                field_err(
                    "tokenizer.ggml.merges",
                    "is missing; a gpt2 (BPE) vocab needs it".into(),
                )
            })?;
            let choice = PreTokenizer::for_name(p.pre)?;
            let (b, skipped) =
                bpe::Bpe::new(merges.iter(), merges.len(), lex, choice.ignore_merges)
                    .map_err(|e| field_err("tokenizer.ggml.merges", e))?;
            if skipped > 0 {
                log::warn!("tokenizer.ggml.merges: {skipped} merges name tokens missing from the vocab; ignored");
            }
            Ok((Model::Bpe(Box::new(b)), choice.pre))
        }
        "llama" => {
            if !has_scores {
                return Err(field_err(
                    "tokenizer.ggml.scores",
                    "is missing; a llama (SentencePiece) vocab merges by score".into(),
                ));
            }
            Ok((Model::Spm(Box::new(spm::Spm::new(lex))), PreTokenizer::Gpt2))
        }
        other => Err(Error::unsupported(
            SRC,
            format!(
                "tokenizer.ggml.model = {other:?} (only \"gpt2\" and \"llama\" are implemented)"
            ),
        )),
    }
}

/// Special tokens (CONTROL, USER_DEFINED, UNKNOWN; with whether USER_DEFINED) sorted by first byte,
/// longest first, then id, and where each first byte's run starts.
#[allow(clippy::type_complexity)]
fn special_index(lex: &Lexicon, ty: &impl Fn(usize) -> i32) -> (Box<[(u32, bool)]>, Box<[u32]>) {
    let n = lex.len();
    let mut specials: Vec<(u32, bool)> = (0..n)
        .filter(|&i| {
            matches!(
                ty(i),
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
            ) && !lex.text(i as u32).is_empty()
        })
        .map(|i| (i as u32, ty(i) == token_type::USER_DEFINED))
        .collect();
    specials.sort_by_key(|&(id, _)| {
        let t = lex.text(id);
        (t[0], std::cmp::Reverse(t.len()), id)
    });
    let mut special_start = vec![0u32; 257];
    for &(id, _) in &specials {
        special_start[lex.text(id)[0] as usize + 1] += 1;
    }
    for b in 0..256 {
        special_start[b + 1] += special_start[b];
    }
    (
        specials.into_boxed_slice(),
        special_start.into_boxed_slice(),
    )
}

/// End-of-generation ids: EOS, EOT and the non-NORMAL tokens whose text is a known end marker.
fn eog_ids(p: &Parts<'_>, lex: &Lexicon, ty: &impl Fn(usize) -> i32) -> Vec<u32> {
    let mut eog: Vec<u32> = [p.eos, p.eot].into_iter().flatten().collect();
    for t in EOG_TEXTS {
        if let Some(id) = lex.id(t.as_bytes()) {
            if ty(id as usize) != token_type::NORMAL {
                eog.push(id);
            }
        }
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}
