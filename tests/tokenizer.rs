//! Tokenizer and chat-template tests.
//!
//! Expected ids come from outside this crate: `data/tokenizer/smollm2_tokenize.json` (the model's own
//! Hugging Face tokenizer) and `data/tokenizer/smollm2_cases.json` (Hugging Face `tokenizers` built from
//! the GGUF metadata by `make_cases.py`); the synthetic vocab cases are derived by hand in comments.
//! The real model is found through `EDGE_RUN_MODEL` or `models/SmolLM2-135M-Instruct.Q4_1.gguf`.
use std::path::PathBuf;
use std::sync::OnceLock;

use edge_run::chat::{apply_chat_template, chat_template_from_gguf, ChatMessage};
use edge_run::gguf::Gguf;
use edge_run::tokenizer::pretok::{PreTokenizer, GPT2_PATTERN};
use edge_run::tokenizer::{token_type, StreamDecoder, Tokenizer, Vocab};
use edge_run::Error;
use proptest::prelude::*;

fn model_path() -> PathBuf {
    let p = match std::env::var_os("EDGE_RUN_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        p.is_file(),
        "model file {} not found: run `models/fetch.sh` (or set EDGE_RUN_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF)",
        p.display()
    );
    p
}

fn model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let p = model_path();
        std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    })
}

fn gguf() -> Gguf<'static> {
    Gguf::parse_named(model_bytes(), "SmolLM2-135M-Instruct.Q4_1.gguf").expect("parse model")
}

fn smollm() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(&gguf()).expect("tokenizer from GGUF"))
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Option<Vec<u32>>,
}

fn load_cases(name: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tokenizer")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .expect("ids array")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect()
    };
    v.as_array()
        .expect("array of cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: ids(&c["ids"]),
            ids_no_special: c.get("ids_no_special").map(ids),
        })
        .collect()
}

/// `plain_too`: also check `parse_special = false` (the oracle file records those ids; the reference
/// file only has `parse_special = true` ids).
fn check_cases(cases: &[Case], plain_too: bool) {
    let tok = smollm();
    let mut failures = Vec::new();
    for c in cases {
        let got = tok.encode(&c.text, true);
        if got != c.ids {
            failures.push(format!(
                "{:?}\n   got  {:?}\n   want {:?}",
                c.text, got, c.ids
            ));
        }
        if !plain_too {
            continue;
        }
        let want_plain = c.ids_no_special.as_ref().unwrap_or(&c.ids);
        let got_plain = tok.encode(&c.text, false);
        if &got_plain != want_plain {
            failures.push(format!(
                "(parse_special=false) {:?}\n   got  {:?}\n   want {:?}",
                c.text, got_plain, want_plain
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_reference_ids() {
    let cases = load_cases("smollm2_tokenize.json");
    assert_eq!(cases.len(), 20);
    check_cases(&cases, false);
}

#[test]
fn smollm2_oracle_cases() {
    let cases = load_cases("smollm2_cases.json");
    assert!(cases.len() > 200);
    assert!(cases.iter().filter(|c| c.ids_no_special.is_some()).count() >= 10);
    check_cases(&cases, true);
}

#[test]
fn smollm2_metadata_and_specials() {
    let tok = smollm();
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.add_bos(), "the GGUF says add_bos_token = false");
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_type(1), Some(token_type::CONTROL));
    // End of generation: <|im_end|> (eos) and <|endoftext|>; not <|im_start|> nor text.
    assert!(tok.is_eog(2) && tok.is_eog(0));
    assert!(!tok.is_eog(1) && !tok.is_eog(198) && !tok.is_eog(49151));
    // Special text is only a special token when asked.
    assert_eq!(tok.encode("<|im_end|>", true), vec![2]);
    let plain = tok.encode("<|im_end|>", false);
    assert!(plain.len() > 1 && !plain.contains(&2), "{plain:?}");
    // Pieces: control tokens render only on request; byte-level mapping undone.
    assert_eq!(tok.token_to_piece(1, false).to_vec(), b"");
    assert_eq!(tok.token_to_piece(1, true).to_vec(), b"<|im_start|>");
    assert_eq!(tok.token_to_piece(216, false).to_vec(), b" ");
    assert_eq!(tok.token_to_piece(198, false).to_vec(), b"\n");
    assert_eq!(
        tok.token_to_piece(49152, true).to_vec(),
        b"",
        "out of range id"
    );
    assert_eq!(
        tok.decode_with(&[1, 4093, 198, 26843, 2], false),
        "user\nHi"
    );
    assert_eq!(
        tok.decode(&[1, 4093, 198, 26843, 2]),
        "<|im_start|>user\nHi<|im_end|>"
    );
}

#[test]
fn decode_roundtrips_every_case() {
    let tok = smollm();
    let mut texts: Vec<String> = load_cases("smollm2_cases.json")
        .into_iter()
        .map(|c| c.text)
        .collect();
    texts.extend(
        load_cases("smollm2_tokenize.json")
            .into_iter()
            .map(|c| c.text),
    );
    for t in &texts {
        assert_eq!(&tok.decode(&tok.encode(t, true)), t, "parse_special=true");
        assert_eq!(&tok.decode(&tok.encode(t, false)), t, "parse_special=false");
    }
}

#[test]
fn stream_decoder_matches_decode_and_buffers_split_characters() {
    let tok = smollm();
    let mut saw_split = 0;
    for c in load_cases("smollm2_cases.json")
        .iter()
        .chain(load_cases("smollm2_tokenize.json").iter())
    {
        let mut d = StreamDecoder::new(true);
        let mut out = String::new();
        for &id in &c.ids {
            let before = out.len();
            d.push(tok, id, &mut out);
            assert!(d.pending() <= 3);
            if d.pending() > 0 {
                saw_split += 1;
            }
            // Whatever was emitted is final: a prefix of the full text.
            assert!(
                c.text.starts_with(&out),
                "{:?} is not a prefix of {:?}",
                out,
                c.text
            );
            assert!(out.len() >= before);
        }
        d.finish(&mut out);
        assert_eq!(out, c.text);
    }
    assert!(
        saw_split > 20,
        "the cases must include tokens that split characters (saw {saw_split})"
    );

    // "Tokyo 東京" from the reference ids: 東 (E6 9D B1) and 京 (E4 BA AC) are split across tokens.
    let ids = [2068u32, 17405, 17097, 247, 126, 16736, 122];
    let mut d = StreamDecoder::new(false);
    let mut out = String::new();
    let mut lens = Vec::new();
    for id in ids {
        d.push(tok, id, &mut out);
        lens.push(out.chars().count());
    }
    d.finish(&mut out);
    assert_eq!(out, "Tokyo 東京");
    assert!(
        lens.windows(2).any(|w| w[0] == w[1]),
        "some token must complete no character: {lens:?}"
    );
}

#[test]
fn stream_decoder_incomplete_tail_and_invalid_bytes() {
    let mut d = StreamDecoder::new(false);
    let mut out = String::new();
    d.push_bytes(b"ab\xE6\x9D", &mut out);
    assert_eq!(out, "ab");
    assert_eq!(d.pending(), 2);
    d.push_bytes(b"\xB1!", &mut out);
    assert_eq!(out, "ab東!");
    d.push_bytes(b"\xF0\x9F", &mut out);
    d.finish(&mut out);
    assert_eq!(out, "ab東!\u{FFFD}");
    // A lead byte followed by a non-continuation byte.
    let mut out = String::new();
    let mut d = StreamDecoder::new(false);
    d.push_bytes(b"\xE6", &mut out);
    d.push_bytes(b"x\xFFy", &mut out);
    d.finish(&mut out);
    assert_eq!(out, "\u{FFFD}x\u{FFFD}y");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Any byte string cut anywhere decodes like `String::from_utf8_lossy` of the whole.
    #[test]
    fn stream_decoder_equals_lossy(bytes in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(0xE6u8), Just(0x9D), Just(0xB1), Just(0xF0), Just(0x9F), Just(0x80)], 0..40),
        cuts in proptest::collection::vec(0usize..40, 0..8)) {
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
        cuts.sort_unstable();
        let mut d = StreamDecoder::new(false);
        let mut out = String::new();
        let mut last = 0;
        for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            d.push_bytes(&bytes[last..c], &mut out);
            last = c;
        }
        d.finish(&mut out);
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }

    /// The hand-written GPT-2 splitter equals the GPT-2 regex run by fancy-regex.
    #[test]
    fn gpt2_splitter_equals_regex(s in proptest::collection::vec(prop_oneof![
            Just("a"), Just("Z"), Just("é"), Just("東"), Just("ж"), Just("1"), Just("٣"), Just("²"),
            Just(" "), Just("  "), Just("\t"), Just("\n"), Just("\r\n"), Just("\u{a0}"), Just("\u{3000}"),
            Just("'"), Just("'s"), Just("'ll"), Just("'re"), Just("'d"), Just("'S"), Just("!"), Just("."),
            Just("🙂"), Just("\u{301}"), Just("\u{200d}"), Just("-"), Just("_"), Just("<|im_end|>")], 0..24)) {
        let text: String = s.concat();
        let re = PreTokenizer::regex(GPT2_PATTERN).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        PreTokenizer::Gpt2.split(&text, &mut a);
        re.split(&text, &mut b);
        prop_assert_eq!(a, b);
    }
}

// ---------------------------------------------------------------------------------------------------
// Synthetic vocabs with hand-derived results.

fn gpt2_bytes_vocab(extra: &[&str], merges: &[&str], pre: Option<&str>) -> Vocab {
    let table = edge_run::tokenizer::byte_to_char_table();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    tokens.extend(extra.iter().map(|s| s.to_string()));
    Vocab {
        model: "gpt2".into(),
        pre: pre.map(String::from),
        tokens,
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        ..Vocab::default()
    }
}

#[test]
fn bpe_merge_rank_order() {
    // Byte tokens 0..=255 are the 256 byte characters in byte order, so 'a'=97, 'b'=98, 'c'=99.
    // Extra: ab=256, bc=257, abc=258.
    let extra = ["ab", "bc", "abc"];
    // "b c" ranks before "a b": abc -> a·bc, then "a bc" -> abc.
    let t = Tokenizer::new(gpt2_bytes_vocab(
        &extra,
        &["b c", "a b", "a bc"],
        Some("gpt2"),
    ))
    .unwrap();
    assert_eq!(t.encode("abc", false), vec![258]);
    // Without "a bc" the word stops at a·bc.
    let t = Tokenizer::new(gpt2_bytes_vocab(&extra, &["b c", "a b"], None)).unwrap();
    assert_eq!(t.encode("abc", false), vec![97, 257]);
    // "a b" first: ab·c, and no "ab c" merge.
    let t = Tokenizer::new(gpt2_bytes_vocab(&extra, &["a b", "b c"], None)).unwrap();
    assert_eq!(t.encode("abc", false), vec![256, 99]);
    // Equal pairs: leftmost first. "aaa" with only "a a" -> aa·a.
    let t = Tokenizer::new(gpt2_bytes_vocab(&["aa"], &["a a"], None)).unwrap();
    assert_eq!(t.encode("aaa", false), vec![256, 97]);
    // Byte-level: "é" is C3 A9, shown as the characters for 0xC3 and 0xA9, i.e. tokens 195, 169.
    assert_eq!(t.encode("é", false), vec![0xC3, 0xA9]);
    assert_eq!(t.decode(&[0xC3, 0xA9]), "é");
    // Space is byte 0x20 -> 'Ġ'; words split before the space: "a a" -> a, Ġ, a.
    assert_eq!(t.encode("a a", false), vec![97, 32, 97]);
    // An unknown pre-tokenizer name falls back to GPT-2's (and still works).
    let t = Tokenizer::new(gpt2_bytes_vocab(&["aa"], &["a a"], Some("no-such-pre"))).unwrap();
    assert_eq!(t.encode("aa1", false), vec![256, 49]);
}

#[test]
fn bpe_llama3_pretokenizer_groups_digits_by_three() {
    let t = Tokenizer::new(gpt2_bytes_vocab(
        &["12", "123"],
        &["1 2", "12 3"],
        Some("llama-bpe"),
    ))
    .unwrap();
    // \p{N}{1,3}: "1234" -> "123" + "4"; with ignore_merges a whole-word token is taken directly.
    assert_eq!(t.encode("1234", false), vec![257, 52]);
    let t = Tokenizer::new(gpt2_bytes_vocab(
        &["12", "123"],
        &["1 2", "12 3"],
        Some("smollm"),
    ))
    .unwrap();
    // smollm isolates every digit: no merges apply.
    assert_eq!(t.encode("1234", false), vec![49, 50, 51, 52]);
}

const UNK: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;

/// Ids: 0 <unk>, 1 <s>, 2 </s>, 3..=258 <0x00>..<0xFF>, then the pieces in `pieces` order.
fn spm_vocab(pieces: &[(&str, f32)], add_space_prefix: bool, byte_tokens: bool) -> Vocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    let mut scores = vec![0.0, 0.0, 0.0];
    if byte_tokens {
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        types.push(token_type::NORMAL);
        scores.push(*s);
    }
    Vocab {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos: Some(BOS),
        eos: Some(EOS),
        unk: Some(UNK),
        add_space_prefix: Some(add_space_prefix),
        ..Vocab::default()
    }
}

#[test]
fn spm_score_ordered_merges_byte_fallback_and_space_prefix() {
    // 259 ▁, 260 a, 261 b, 262 c, 263 ab, 264 bc, 265 ▁a, 266 abc, 267 aa
    let pieces = [
        ("▁", -5.0),
        ("a", -6.0),
        ("b", -6.0),
        ("c", -6.0),
        ("ab", -2.0),
        ("bc", -1.0),
        ("▁a", -3.0),
        ("abc", -4.0),
        ("aa", -2.5),
    ];
    let t = Tokenizer::new(spm_vocab(&pieces, true, true)).unwrap();
    assert!(t.add_bos(), "SentencePiece vocabs default to a BOS");
    // "abc" -> "▁abc": bc (-1) first, then ab is stale, ▁a (-3) next, "▁abc" is no token -> ▁a·bc.
    assert_eq!(t.encode("abc", false), vec![265, 264]);
    // "ab" -> "▁ab": ab (-2) before ▁a (-3); "▁ab" is no token -> ▁·ab.
    assert_eq!(t.encode("ab", false), vec![259, 263]);
    // Ties go to the left: "▁aaa": the two "aa" pairs score alike, the left one merges -> ▁·aa·a.
    assert_eq!(t.encode("aaa", false), vec![259, 267, 260]);
    // Spaces become ▁: "a b" -> "▁a▁b" -> ▁a, ▁, b.
    assert_eq!(t.encode("a b", false), vec![265, 259, 261]);
    // Byte fallback: é = C3 A9 -> <0xC3> <0xA9> (ids 3 + byte).
    assert_eq!(t.encode("aé", false), vec![265, 3 + 0xC3, 3 + 0xA9]);
    // After a special token the next text gets the space prefix again.
    assert_eq!(t.encode("<s>a", true), vec![BOS, 265]);
    assert_eq!(t.encode("a</s>", true), vec![265, EOS]);
    // Decoding undoes ▁ and bytes, and drops the one prefix space.
    assert_eq!(t.decode(&[265, 264]), "abc");
    assert_eq!(t.decode(&[265, 3 + 0xC3, 3 + 0xA9]), "aé");
    assert_eq!(t.token_to_piece(3 + 0xC3, false).to_vec(), &[0xC3]);
    for s in ["abc", " a  b ", "aé東🙂", "a\nb"] {
        assert_eq!(t.decode_with(&t.encode(s, false), false), s);
    }
    assert!(t.is_eog(EOS) && !t.is_eog(BOS));

    // Without the space prefix.
    let t = Tokenizer::new(spm_vocab(&pieces, false, true)).unwrap();
    assert_eq!(t.encode("ab", false), vec![263]);
    // "abc" without prefix: bc (-1) first -> a·bc, then the new pair "abc" (-4) merges -> abc.
    assert_eq!(t.encode("abc", false), vec![266]);

    // No byte tokens: an unknown character is <unk>.
    let t = Tokenizer::new(spm_vocab(&pieces, false, false)).unwrap();
    let ids = t.encode("aé", false);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], UNK);
}

#[test]
fn bad_vocabs_are_refused_with_the_field_named() {
    let msg = |v: Vocab| match Tokenizer::new(v) {
        Ok(_) => panic!("accepted a bad vocab"),
        Err(e @ (Error::Format { .. } | Error::Unsupported { .. })) => e.to_string(),
        Err(e) => panic!("wrong error kind: {e}"),
    };
    let good = || spm_vocab(&[("a", -1.0)], true, false);
    assert!(msg(Vocab {
        tokens: vec![],
        ..good()
    })
    .contains("tokenizer.ggml.tokens"));
    assert!(msg(Vocab {
        scores: Some(vec![0.0]),
        ..good()
    })
    .contains("tokenizer.ggml.scores"));
    assert!(msg(Vocab {
        token_types: Some(vec![1]),
        ..good()
    })
    .contains("tokenizer.ggml.token_type"));
    assert!(msg(Vocab {
        bos: Some(99),
        ..good()
    })
    .contains("tokenizer.ggml.bos_token_id"));
    assert!(msg(Vocab {
        model: "bert".into(),
        ..good()
    })
    .contains("bert"));
    assert!(msg(Vocab {
        scores: None,
        ..good()
    })
    .contains("tokenizer.ggml.scores"));
    let mut v = gpt2_bytes_vocab(&[], &[], None);
    v.merges = None;
    assert!(msg(v).contains("tokenizer.ggml.merges"));
    let v = gpt2_bytes_vocab(&[], &["nospace"], None);
    assert!(msg(v).contains("tokenizer.ggml.merges"));
}

// ---------------------------------------------------------------------------------------------------
// Chat templates.

#[test]
fn smollm2_chat_template_renders_chatml() {
    let g = gguf();
    let template = chat_template_from_gguf(&g)
        .unwrap()
        .expect("the model has a chat template");
    let msgs = [
        ChatMessage::new("system", "You are a pirate."),
        ChatMessage::new("user", "Where is the treasure?"),
    ];
    let s = apply_chat_template(template, &msgs, true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nWhere is the treasure?<|im_end|>\n<|im_start|>assistant\n"
    );
    // No system message: the template supplies its default one. No generation prompt.
    let s =
        apply_chat_template(template, &[ChatMessage::new("user", "Hi")], false, "", "").unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    // And it tokenizes into the control tokens.
    let ids = smollm().encode(&s, true);
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
}

#[test]
fn chat_template_features_hf_templates_use() {
    let m = [
        ChatMessage::new("system", "  sys  "),
        ChatMessage::new("user", "u1"),
        ChatMessage::new("user", "u2"),
    ];
    // Python string methods (and Python's rendering of booleans), loop controls, trim_blocks/lstrip_blocks, bos/eos variables.
    let t = "{{ bos_token }}{% for m in messages %}\n  {% if loop.index > 2 %}{% break %}{% endif %}\n[{{ m['content'].strip() }}|{{ m.role.upper() }}|{{ m.role.startswith('sy') }}]\n{% endfor %}{{ eos_token }}";
    assert_eq!(
        apply_chat_template(t, &m, false, "<s>", "</s>").unwrap(),
        "<s>[sys|SYSTEM|True]\n[u1|USER|False]\n</s>"
    );
    // tojson like Python's json.dumps.
    let t =
        "{{ {'a': 1, 'b': [1, 2.5, 'x\"é'], 'c': none} | tojson }}|{{ [1, 2] | tojson(indent=2) }}";
    assert_eq!(
        apply_chat_template(t, &m, false, "", "").unwrap(),
        "{\"a\": 1, \"b\": [1, 2.5, \"x\\\"é\"], \"c\": null}|[\n  1,\n  2\n]"
    );
    // raise_exception surfaces as an error with the template's message.
    let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user') }}{% endif %}";
    let e = apply_chat_template(t, &m, false, "", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Conversations must start with a user") && e.contains("tokenizer.chat_template"),
        "{e}"
    );
    // Syntax errors name the template and line.
    let e = apply_chat_template("line one\n{% for m in messages %}", &m, false, "", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.chat_template") && e.contains("line"),
        "{e}"
    );
    // strftime_now exists and formats a date.
    let s = apply_chat_template("{{ strftime_now('%Y-%m-%d') }}", &m, false, "", "").unwrap();
    assert_eq!(s.len(), 10, "{s}");
    assert_eq!(
        edge_run::chat::strftime("%d %b %Y %H:%M:%S %A %j", 1_700_000_000).unwrap(),
        "14 Nov 2023 22:13:20 Tuesday 318"
    );
    assert_eq!(
        edge_run::chat::strftime("%d %B %Y", 0).unwrap(),
        "01 January 1970"
    );
    assert_eq!(
        edge_run::chat::strftime("%Y-%m-%d", 951_782_400).unwrap(),
        "2000-02-29"
    );
}

/// Encodes ~1 MB of mixed text, checks the round trip, and reports the speed (no timing assertion:
/// the machine is shared).
#[test]
fn throughput_report() {
    let t0 = std::time::Instant::now();
    let g = gguf();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let build = t0.elapsed();
    let base: String = load_cases("smollm2_cases.json")
        .into_iter()
        .map(|c| c.text)
        .collect::<Vec<_>>()
        .join(" ");
    let text = base.repeat((1 << 20) / base.len() + 1);
    let t1 = std::time::Instant::now();
    let ids = tok.encode(&text, false);
    let enc = t1.elapsed();
    let t2 = std::time::Instant::now();
    let back = tok.decode(&ids);
    let dec = t2.elapsed();
    assert_eq!(back, text);
    eprintln!(
        "tokenizer: build {:.1} ms; encode {} bytes -> {} tokens in {:.1} ms ({:.1} MB/s); decode {:.1} ms",
        build.as_secs_f64() * 1e3,
        text.len(),
        ids.len(),
        enc.as_secs_f64() * 1e3,
        text.len() as f64 / enc.as_secs_f64() / 1e6,
        dec.as_secs_f64() * 1e3
    );
}

/// Gemma 3 270M: a 262,144-token SentencePiece-style vocab (user-defined whitespace/newline tokens,
/// byte fallback, no space prefix). The model comes from `models/fetch.sh` (`models/gemma-3-270m-q4_k_m.gguf`,
/// or `$EDGE_RUN_GEMMA`); the test fails when it is missing. (tests/gemma3.rs checks the same ids through
/// `Model::open`.)
#[test]
fn gemma3_reference_ids() {
    let path = std::env::var_os("EDGE_RUN_GEMMA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.is_file(),
        "model {} not found: run `models/fetch.sh` (or set EDGE_RUN_GEMMA)",
        path.display()
    );
    let bytes = std::fs::read(&path).expect("read the Gemma GGUF");
    let g = Gguf::parse_named(&bytes, "gemma-3-270m-q4_k_m.gguf").unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.n_vocab(), 262_144);
    assert!(tok.add_bos());
    let mut failures = Vec::new();
    for c in load_cases("gemma3_tokenize.json") {
        let got = tok.encode(&c.text, true);
        if got != c.ids {
            failures.push(format!(
                "{:?}\n   got  {:?}\n   want {:?}",
                c.text, got, c.ids
            ));
        }
        assert_eq!(tok.decode(&got), c.text);
    }
    assert!(tok.is_eog(106), "<end_of_turn> ends generation");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
