#!/usr/bin/env python3
"""Generate tests/data/tokenizer/smollm2_cases.json: texts and the ids an INDEPENDENT tokenizer gives them.

The oracle is Hugging Face `tokenizers` (its Rust BPE), built here from the GGUF file's own metadata read
with gguf-py: vocab = tokenizer.ggml.tokens, merges = tokenizer.ggml.merges, CONTROL tokens (type 3) added
as special tokens, and the pre-tokenizer SmolLM2's Hugging Face tokenizer.json declares:
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)].
(transformers' own GGUF path needs torch, which is not installed here; building the same objects with
`tokenizers` directly is what it would do.)  Before writing anything the oracle is checked against the
reference file smollm2_tokenize.json (made by the model's own HF tokenizer); it must agree on every text.

Usage: pip install tokenizers gguf
       python3 tests/data/tokenizer/make_cases.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import random
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))


def build(path):
    r = GGUFReader(path)
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "smollm"
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in range(len(tokens)) if types[i] == 3])
    return tok


def cases():
    c = [
        # scripts
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Ελληνικά και русский και ქართული",
        "日本語のテキストと漢字、カタカナ。",
        "한국어 문장입니다. 안녕하세요!",
        "中文：你好，世界！这是一个测试。",
        "العربية نص من اليمين إلى اليسار",
        "עברית: שלום עולם",
        "हिन्दी में लिखा गया वाक्य है।",
        "ภาษาไทยไม่มีช่องว่าง",
        "Tiếng Việt có dấu: Đường phố",
        "e\u0301 combining acute, n\u0303, a\u030a",
        "Ǆemal ǅ ǆ ﬁ ﬂ ß ẞ",
        # emoji
        "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇫🇷 flag, ❤️ heart",
        "🙂🙂🙂 🚀🚀",
        "emoji at end 🤖",
        # whitespace
        "a  b   c    d     e",
        "    leading and trailing    ",
        "\t\ttabs\t \t mixed \t",
        "line1\r\nline2\r\n\r\nline3\rline4\n",
        "\n\n\n\nfour newlines then text\n \n",
        "nbsp\u00a0here and\u3000ideographic\u2028sep\u2029para",
        "   \n   \n",
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        # digits
        "0123456789 00000 3.14159 -42 +7 1e10 0x1F",
        "²³ ½ Ⅻ ٣٤٥ ０１２ ⑦",
        "year 2024, 10,000,000 people, 99.9%",
        "a1b2c3 v2.0.1 abc123def",
        # contractions
        "I'm you're he's we've they'll I'd can't won't",
        "I'M YOU'RE HE'S WE'VE THEY'LL I'D CAN'T",
        "'s 't 're 've 'm 'll 'd ''s '''",
        "rock 'n' roll, the '90s, 'quoted'",
        "It’s curly ‘quotes’ and “double”",
        # punctuation / code
        "fn main() { println!(\"{}\", x?); }",
        "if (a && b || !c) { return x->y[0]; } // comment",
        "<html><body class=\"x\">Hello &amp; bye</body></html>",
        "{\"key\": [1, 2, {\"nested\": null}], \"b\": true}",
        "## Heading\n\n- item *one*\n- item **two**\n\n```python\nprint('hi')\n```",
        "path/to/file.rs:12:34 error[E0308]: mismatched types",
        "...!!!???---___===+++***",
        "email@example.com https://a.b/c?d=e#f",
        "$100 €50 £30 ¥20 ₹10 ©®™ °C ±1 × ÷ ≤ ≥ ∞ √ ∑",
        # special tokens
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|><|im_end|><|im_start|>",
        "text<|endoftext|>more text",
        " <|im_start|> spaced <|im_end|> ",
        "<|im_start partial <|im_end| and <im_start|>",
        "<jupyter_code>x = 1<jupyter_output>1<empty_output>",
        "<|im_start|><|im_start|>",
        # long repeats
        "a" * 1000,
        "ab" * 300,
        " " * 200,
        "\n" * 50,
        "!" * 100,
        "hello " * 100,
        "🙂" * 64,
        "9" * 300,
        "the quick brown fox " * 20,
    ]
    rng = random.Random(1234)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                + list(" \t\n\r'\".,;:!?()[]{}<>-_=+*/\\|@#$%^&~`")
                + list("éüßñçøåæœÉ") + list("日本語中文한국어") + list("Мосвапривет")
                + ["🙂", "🚀", "👍", "\u200d", "\u0301", "\u00a0", "²", "٣", "ー", "　", "’"]
                + ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    for _ in range(150):
        n = rng.randint(1, 40)
        c.append("".join(rng.choice(alphabet) for _ in range(n)))
    return c


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = build(path)
    ref = json.load(open(os.path.join(HERE, "smollm2_tokenize.json"), encoding="utf-8"))
    for case in ref:
        got = tok.encode(case["text"], add_special_tokens=False).ids
        assert got == case["ids"], (case["text"], got, case["ids"])
    print(f"oracle agrees with the reference on all {len(ref)} texts")
    out = []
    for text in cases():
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text, add_special_tokens=False).ids
        entry = {"text": text, "ids": ids}
        if ids_plain != ids:
            entry["ids_no_special"] = ids_plain
        out.append(entry)
    with open(os.path.join(HERE, "smollm2_cases.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=True, indent=0)
    print(f"wrote {len(out)} cases")


if __name__ == "__main__":
    main()
