//! Pre-tokenizers: split text into the "words" that byte-level BPE merges within.
//!
//! The GPT-2 pattern (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`) is
//! hand-written (no regex engine, no allocation beyond the output list). SmolLM/StarCoder-style vocabs
//! first isolate every `\p{N}` character and run the GPT-2 pattern on the text between them. Other
//! families (Llama 3, Qwen 2) use `fancy-regex` with their published pattern.
use super::unicode_letters::LETTER_RANGES;
use crate::{Error, Result};

/// `\p{L}`: Unicode letters (general categories Lu, Ll, Lt, Lm, Lo).
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let cp = c as u32;
    // Index of the first range whose start is > cp; the candidate is the one before it.
    let i = LETTER_RANGES.partition_point(|&(lo, _)| lo <= cp);
    i > 0 && cp <= LETTER_RANGES[i - 1].1
}

/// `\p{N}`: Unicode numbers (Nd, Nl, No). `char::is_numeric` is exactly that set.
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    c.is_numeric()
}

/// `\s` in the regex engines used by the reference tokenizers: the Unicode White_Space property.
pub fn is_space(c: char) -> bool {
    c.is_whitespace()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if is_letter(c) {
        Class::Letter
    } else if is_number(c) {
        Class::Number
    } else if is_space(c) {
        Class::Space
    } else {
        Class::Other
    }
}

/// Pattern used by a llama.cpp `tokenizer.ggml.pre` family that is not hand-written.
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The GPT-2 pattern as a regex, for cross-checking the hand-written splitter.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A pre-tokenizer. Splitting never fails and covers the input exactly: the pieces concatenate back to
/// the text.
pub enum PreTokenizer {
    /// GPT-2's pattern, hand-written.
    Gpt2,
    /// Every `\p{N}` character is its own piece; GPT-2's pattern on the text between (SmolLM, StarCoder).
    DigitsThenGpt2,
    /// A regex; text between matches (if any) becomes pieces too, like llama.cpp does.
    Regex(Box<fancy_regex::Regex>),
}

/// What a `tokenizer.ggml.pre` value selects.
pub(crate) struct PreChoice {
    pub pre: PreTokenizer,
    /// Llama 3 style vocabs take a whole word as one token when it is in the vocab (HF `ignore_merges`).
    pub ignore_merges: bool,
}

impl PreTokenizer {
    /// Build a regex pre-tokenizer (used for the Llama 3 / Qwen 2 families, and by tests).
    pub fn regex(pattern: &str) -> Result<Self> {
        let re = fancy_regex::Regex::new(pattern)
            .map_err(|e| Error::invalid(format!("pre-tokenizer regex {pattern:?}: {e}")))?;
        Ok(PreTokenizer::Regex(Box::new(re)))
    }

    /// Choose by llama.cpp's `tokenizer.ggml.pre` name. Unknown or missing names fall back to GPT-2's
    /// pattern (with a warning for unknown ones).
    pub(crate) fn for_name(pre: Option<&str>) -> Result<PreChoice> {
        let p = |pre| PreChoice {
            pre,
            ignore_merges: false,
        };
        Ok(match pre {
            None | Some("default") | Some("gpt2") | Some("gpt-2") | Some("mpt") | Some("olmo")
            | Some("jais") => p(PreTokenizer::Gpt2),
            Some("smollm") | Some("starcoder") | Some("refact") | Some("command-r")
            | Some("codeshell") | Some("exaone") | Some("minerva-7b") => {
                p(PreTokenizer::DigitsThenGpt2)
            }
            Some("llama3") | Some("llama-v3") | Some("llama-bpe") | Some("falcon3")
            | Some("smaug-bpe") | Some("dbrx") | Some("pixtral") => PreChoice {
                pre: PreTokenizer::regex(LLAMA3_PATTERN)?,
                ignore_merges: true,
            },
            Some("qwen2") | Some("stablelm2") | Some("deepseek-r1-qwen") | Some("megrez") => {
                p(PreTokenizer::regex(QWEN2_PATTERN)?)
            }
            Some(other) => {
                log::warn!(
                    "tokenizer.ggml.pre = {other:?} is not known; using the GPT-2 pre-tokenizer"
                );
                p(PreTokenizer::Gpt2)
            }
        })
    }

    /// Split `text` into pieces, appended to `out`.
    pub fn split<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        match self {
            PreTokenizer::Gpt2 => gpt2_split(text, out),
            PreTokenizer::DigitsThenGpt2 => {
                let mut seg = 0;
                for (i, c) in text.char_indices() {
                    if is_number(c) {
                        if seg < i {
                            gpt2_split(&text[seg..i], out);
                        }
                        let end = i + c.len_utf8();
                        out.push(&text[i..end]);
                        seg = end;
                    }
                }
                if seg < text.len() {
                    gpt2_split(&text[seg..], out);
                }
            }
            PreTokenizer::Regex(re) => regex_split(re, text, out),
        }
    }
}

fn regex_split<'a>(re: &fancy_regex::Regex, text: &'a str, out: &mut Vec<&'a str>) {
    let mut last = 0;
    for m in re.find_iter(text) {
        match m {
            Ok(m) => {
                if m.start() > last {
                    out.push(&text[last..m.start()]);
                }
                if m.end() > m.start() {
                    out.push(m.as_str());
                }
                last = m.end();
            }
            Err(e) => {
                // Backtracking limit on pathological input: keep the rest as one piece rather than fail.
                log::warn!(
                    "pre-tokenizer regex gave up at byte {last}: {e}; rest kept as one piece"
                );
                break;
            }
        }
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
}

#[inline]
fn char_at(s: &str, i: usize) -> Option<char> {
    s[i..].chars().next()
}

/// Length of a GPT-2 contraction suffix (`s t re ve m ll d`) at the start of `rest` (after the `'`).
fn contraction_len(rest: &[u8]) -> Option<usize> {
    match rest {
        [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        [b's', ..] | [b't', ..] | [b'm', ..] | [b'd', ..] => Some(1),
        _ => None,
    }
}

/// GPT-2's pattern, leftmost-first alternation semantics, over the whole of `s`.
fn gpt2_split<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let b = s.as_bytes();
    let n = s.len();
    let mut i = 0;
    while i < n {
        let Some(c) = char_at(s, i) else { break };
        if c == '\'' {
            // `'s` beats `'sa…` being read as punctuation + letters: alternation order.
            if let Some(k) = contraction_len(&b[i + 1..]) {
                out.push(&s[i..i + 1 + k]);
                i += 1 + k;
                continue;
            }
        }
        let mut cls = class(c);
        let mut j = i;
        if c == ' ' {
            // ` ?X+`: a single space joins the run of letters / numbers / other that follows it.
            if let Some(c2) = char_at(s, i + 1) {
                let k2 = class(c2);
                if k2 != Class::Space {
                    cls = k2;
                    j = i + 1;
                }
            }
        }
        let end = if cls == Class::Space {
            // `\s+(?!\S)` then `\s+`: a whitespace run followed by a non-space leaves its last
            // character for the next piece (unless the run is one character long).
            let mut k = i;
            let mut last_start = i;
            while let Some(ck) = char_at(s, k) {
                if !is_space(ck) {
                    break;
                }
                last_start = k;
                k += ck.len_utf8();
            }
            if k == n || last_start == i {
                k
            } else {
                last_start
            }
        } else {
            let mut k = j;
            while let Some(ck) = char_at(s, k) {
                if class(ck) != cls {
                    break;
                }
                k += ck.len_utf8();
            }
            k
        };
        out.push(&s[i..end]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(p: &PreTokenizer, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        p.split(s, &mut v);
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_hand_split_examples() {
        let p = PreTokenizer::Gpt2;
        assert_eq!(split(&p, "Hello  world"), ["Hello", " ", " world"]);
        assert_eq!(
            split(&p, "it's 'sam''s"),
            ["it", "'s", " '", "sam", "''", "s"]
        );
        assert_eq!(
            split(&p, " \ta\n\nb  "),
            [" ", "\t", "a", "\n", "\n", "b", "  "]
        );
        assert_eq!(split(&p, "x12 34"), ["x", "12", " 34"]);
        let d = PreTokenizer::DigitsThenGpt2;
        assert_eq!(split(&d, "x12 34"), ["x", "1", "2", " ", "3", "4"]);
    }

    #[test]
    fn letter_table() {
        assert!(is_letter('é') && is_letter('東') && is_letter('ж') && is_letter('ǅ'));
        assert!(!is_letter('\u{301}') && !is_letter('1') && !is_letter('🙂') && !is_letter('—'));
        assert!(is_number('٣') && is_number('²') && is_number('Ⅻ') && !is_number('a'));
    }
}
