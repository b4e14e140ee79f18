//! Encode / decode arbitrary input with two small fixed vocabularies: a GPT-2 byte-level BPE one (all
//! 256 byte characters, a few merges, ChatML special tokens) and a SentencePiece one (byte-fallback
//! tokens <0x00>..<0xFF>, a few pieces). The first input byte picks the vocabulary and options; the
//! rest is the text (lossily UTF-8) and, read as u16s, a list of token ids to decode (some out of range).
//! Invariants: every encoded id is in the vocabulary; byte-level BPE without special tokens decodes
//! back to the exact text.
#![no_main]
use std::sync::OnceLock;

use edge_run::tokenizer::{byte_to_char_table, StreamDecoder, Tokenizer, Vocab};
use libfuzzer_sys::fuzz_target;

fn bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        let g = table[b' ' as usize];
        let words = [
            "he", "ll", "llo", "hello", "wor", "ld", "world", "in", "the",
        ];
        let mut merges = vec![];
        for w in words {
            tokens.push(w.to_string());
        }
        for (l, r) in [
            ("h", "e"),
            ("l", "l"),
            ("ll", "o"),
            ("he", "llo"),
            ("w", "o"),
            ("wo", "r"),
            ("l", "d"),
            ("wor", "ld"),
            ("i", "n"),
            ("t", "h"),
            ("th", "e"),
        ] {
            merges.push(format!("{l} {r}"));
        }
        tokens.push(format!("{g}the"));
        merges.push(format!("{g} the"));
        tokens.push(format!("{g}"));
        let n_normal = tokens.len();
        tokens.extend(["<|im_start|>", "<|im_end|>", "<|endoftext|>"].map(String::from));
        let types = (0..tokens.len())
            .map(|i| if i < n_normal { 1 } else { 3 })
            .collect();
        let n = tokens.len() as u32;
        let v = Vocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types: Some(types),
            merges: Some(merges),
            bos: Some(n - 3),
            eos: Some(n - 2),
            ..Default::default()
        };
        Tokenizer::new(v).expect("fixed BPE vocab")
    })
}

fn spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for p in [
            "\u{2581}",
            "\u{2581}h",
            "\u{2581}he",
            "llo",
            "\u{2581}hello",
            "\u{2581}world",
            "a",
            "b",
            "c",
            "ab",
            "abc",
            "\u{2581}\u{2581}",
        ] {
            tokens.push(p.into());
            types.push(1);
        }
        let scores = (0..tokens.len()).map(|i| -(i as f32) / 10.0).collect();
        let v = Vocab {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..Default::default()
        };
        Tokenizer::new(v).expect("fixed SPM vocab")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tok = if mode & 1 == 0 { bpe() } else { spm() };
    let special = mode & 2 != 0;
    let text = String::from_utf8_lossy(rest);
    let ids = tok.encode(&text, special);
    let nv = tok.n_vocab();
    assert!(
        ids.iter().all(|&i| (i as usize) < nv),
        "encoded id out of range"
    );
    let back = tok.decode_with(&ids, true);
    if mode & 3 == 0 {
        assert_eq!(back, text, "byte-level BPE did not round-trip");
    }
    // Arbitrary ids, some beyond the vocabulary, through decode and the streaming decoder.
    let raw: Vec<u32> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32 % (nv as u32 + 8))
        .collect();
    let _ = tok.decode_with(&raw, special);
    let mut d = StreamDecoder::new(special);
    let mut out = String::new();
    for &id in &raw {
        d.push(tok, id, &mut out);
        let _ = tok.token_to_piece(id, special).to_vec();
        let _ = tok.is_eog(id);
    }
    d.finish(&mut out);
});
