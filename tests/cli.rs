//! The `edge-run` command line as a user meets it: exit statuses (1 bad input, 2 usage), one-line errors
//! naming the file and problem, no panics, reproducible sampling, streaming generation, `tokenize`,
//! `logits` and `info` output.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tiny() -> PathBuf {
    fixture("tiny-q4_1.gguf")
}

/// `edge-run logits -m <model> --tokens <tokens> -o <out>`.
fn logits(model: &Path, tokens: &str, out: &Path) -> Output {
    edge_run(&[
        "logits",
        "-m",
        path_arg(model),
        "--tokens",
        tokens,
        "-o",
        path_arg(out),
    ])
}

#[test]
fn bad_input_exits_1_with_the_file_named() {
    let dir = std::env::temp_dir().join(format!("edge-run-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Missing file.
    refused(
        &edge_run(&["info", "-m", "/nonexistent/model.gguf"]),
        1,
        "/nonexistent/model.gguf",
    );
    // Not a GGUF file.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a model at all").unwrap();
    refused(&edge_run(&["info", "-m", path_arg(&junk)]), 1, "junk.gguf");
    refused(&edge_run(&["-m", path_arg(&junk), "-p", "hi"]), 1, "magic");
    // A directory.
    refused(
        &edge_run(&["info", "-m", path_arg(&dir)]),
        1,
        path_arg(&dir),
    );
    // Unsupported architecture: the tiny model with general.architecture rewritten.
    let g = edge_run::gguf::Gguf::parse(&std::fs::read(tiny()).unwrap())
        .unwrap()
        .bytes()
        .to_vec();
    let pos = g.windows(5).position(|w| w == b"llama").unwrap();
    let mut h = g.clone();
    h[pos..pos + 5].copy_from_slice(b"zzzzz");
    let other = dir.join("other-arch.gguf");
    std::fs::write(&other, &h).unwrap();
    refused(
        &edge_run(&["info", "-m", path_arg(&other)]),
        1,
        "other-arch.gguf",
    );
    // A token id out of range and an unreadable adapter.
    refused(&logits(&tiny(), "1,99999", &dir.join("x.npy")), 1, "99999");
    refused(
        &edge_run(&[
            "-m",
            path_arg(&tiny()),
            "-p",
            "hi",
            "--adapter",
            "/nonexistent/adapter.gguf",
        ]),
        1,
        "/nonexistent/adapter.gguf",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_usage_exits_2() {
    refused(&edge_run(&["--no-such-flag"]), 2, "--no-such-flag");
    refused(&edge_run(&["-p", "hello"]), 2, "-m");
    refused(&edge_run(&["-m", path_arg(&tiny())]), 2, "prompt");
    refused(
        &edge_run(&["-m", path_arg(&tiny()), "-p", "x", "-t", "0"]),
        2,
        "threads",
    );
    refused(
        &edge_run(&["-m", path_arg(&tiny()), "-p", "x", "--top-p", "0"]),
        2,
        "top-p",
    );
    refused(
        &edge_run(&["-m", path_arg(&tiny()), "-p", "x", "--kernels", "sse9"]),
        2,
        "sse9",
    );
    refused(&logits(&tiny(), "1,x", Path::new("/tmp/y.npy")), 2, "`x`");
    refused(
        &edge_run(&["-m", path_arg(&tiny()), "-p", "x", "-ctk", "q4_0"]),
        2,
        "q4_0",
    );
    // The fixture's 16-wide heads are not whole Q8_0 blocks: bad input for this model, named.
    refused(
        &edge_run(&["-m", path_arg(&tiny()), "-p", "x", "-ctv=q8_0"]),
        1,
        "multiple of 32",
    );
    let h = edge_run(&["--help"]);
    assert_eq!(h.status.code(), Some(0));
    for flag in [
        "-m",
        "-p",
        "-n",
        "-t",
        "--temp",
        "--seed",
        "--chat",
        "--adapter",
    ] {
        assert!(stdout(&h).contains(flag), "--help does not explain {flag}");
    }
}

/// `info` shows a session's memory by part; the KV cache follows `-c` and the cache types.
#[test]
fn info_shows_the_kv_cache_of_each_type() {
    let model = tiny();
    let kv_mib = |args: &[&str]| -> f64 {
        let mut all = vec!["info", "-m", path_arg(&model), "-c", "4096", "-t", "1"];
        all.extend_from_slice(args);
        let o = edge_run(&all);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        for part in [
            "mapped weights:",
            "activations:",
            "logits:",
            "LoRA scratch:",
            "model tables:",
        ] {
            assert!(out.contains(part), "no `{part}` in {out}");
        }
        let line = out
            .lines()
            .find(|l| l.contains("KV cache:"))
            .expect("KV line");
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    // 2 layers × 4096 positions × kv_dim 32, K and V.
    let f32_mib = 2.0 * 4096.0 * 32.0 * 2.0 * 4.0 / 1048576.0;
    assert!((kv_mib(&["-ctk", "f32", "-ctv", "f32"]) - f32_mib).abs() < 0.05);
    assert!((kv_mib(&[]) - f32_mib / 2.0).abs() < 0.05, "default f16");
    assert!((kv_mib(&["-ctk", "f32"]) - 0.75 * f32_mib).abs() < 0.05);
}

#[test]
fn same_seed_same_text_and_different_seed_differs() {
    let gen = |seed: &str| {
        let o = edge_run(&[
            "-m",
            path_arg(&tiny()),
            "-p",
            "hello",
            "-n",
            "24",
            "--temp",
            "1.5",
            "--top-k",
            "0",
            "--min-p",
            "0",
            "--seed",
            seed,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let (a, b, c) = (gen("7"), gen("7"), gen("8"));
    assert_eq!(a, b);
    assert_ne!(
        a, c,
        "different seeds gave the same 24 tokens at temperature 1.5"
    );
}

/// A generation longer than the context goes on through context shifts (also with a sliding-window
/// ring); `--no-context-shift` stops at the full context instead; a bad `--keep` is a usage error.
#[test]
fn context_shift_or_stop_when_the_context_is_full() {
    for model in [tiny(), fixture("tiny-gemma3.gguf")] {
        let gen = |extra: &[&str]| {
            let mut args = vec![
                "-m",
                path_arg(&model),
                "-p",
                "hello",
                "-n",
                "100",
                "-c",
                "32",
            ];
            args.extend(["--temp", "1", "--seed", "7"]);
            args.extend(extra);
            edge_run(&args)
        };
        let o = gen(&[]);
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(
            e.contains("context shift dropped") && e.contains("stopped: token limit"),
            "{e}"
        );
        let o = gen(&["--keep", "-1"]);
        assert!(
            o.status.success() && stderr(&o).contains("stopped: token limit"),
            "{}",
            stderr(&o)
        );
        let o = gen(&["--no-context-shift"]);
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(
            e.contains("stopped: context full") && !e.contains("context shift"),
            "{e}"
        );
        refused(&gen(&["--keep", "-2"]), 2, "--keep");
    }
}

#[test]
fn real_model_chat_answers_and_adapter_changes_the_answer() {
    let m = smollm2_path();
    let q = "What is the capital of France?";
    let chat = [
        "-m",
        path_arg(&m),
        "--chat",
        "-p",
        q,
        "-n",
        "24",
        "--temp",
        "0",
    ];
    let base = edge_run(&chat);
    assert!(base.status.success(), "{}", stderr(&base));
    assert!(stdout(&base).contains("Paris"), "{}", stdout(&base));
    assert!(stderr(&base).contains("tok/s"), "timings on stderr");
    let pirate = root().join("tests/data/adapters/pirate.gguf");
    let ad = edge_run(&[&chat[..], &["--adapter", path_arg(&pirate)]].concat());
    assert!(ad.status.success(), "{}", stderr(&ad));
    let t = stdout(&ad);
    assert!(
        t.contains("Arr") || t.contains("matey") || t.contains("Yo ho"),
        "pirate adapter had no effect: {t}"
    );
}

#[test]
fn tokenize_logits_and_info_outputs() {
    let m = smollm2_path();
    // Ids from the model's Hugging Face tokenizer (tests/data/tokenizer/smollm2_tokenize.json).
    let o = edge_run(&[
        "tokenize",
        "-m",
        path_arg(&m),
        "--text",
        "<|im_start|>user\nHi<|im_end|>\n",
    ]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "[1,4093,198,26843,2,198]");

    let out = std::env::temp_dir().join(format!("edge-run-logits-{}.npy", std::process::id()));
    let o = logits(&m, "1,4093,198", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = npy_f32(&std::fs::read(&out).unwrap());
    assert_eq!(a.shape, vec![3, 49152]);
    assert!(a.data.iter().all(|v| v.is_finite()));
    std::fs::remove_file(&out).ok();

    let o = edge_run(&["info", "-m", path_arg(&m)]);
    let t = stdout(&o);
    for want in [
        "architecture:    llama",
        "layers:          30",
        "9 query, 3 key/value",
        "272 (",
        "210 Q4_1",
        "1 Q8_0",
        "61 F32",
    ] {
        assert!(t.contains(want), "info lacks `{want}`:\n{t}");
    }
    let pirate = root().join("tests/data/adapters/json-peft");
    let o = edge_run(&["info", "-m", path_arg(&m), "--adapter", path_arg(&pirate)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("adapter:"), "{}", stdout(&o));
}

/// `--prompt-cache`: a second process restores the state the first one saved, reports that it reused the
/// whole prompt, evaluates nothing and prints the same text; a longer prompt reuses the common prefix;
/// a corrupt or mismatching cache file is an error (exit 1) naming the file, and is left as it was.
#[test]
fn prompt_cache_reuses_the_prompt_across_processes() {
    let m = smollm2_path();
    let dir = TempDir::new("cli", "prompt-cache");
    let text: String = (0..30)
        .map(|i| {
            format!(
                "Item {i}: the lighthouse keeper counted {} ships today. ",
                i * 3 + 1
            )
        })
        .collect();
    let prompt = dir.join("prompt.txt");
    std::fs::write(&prompt, &text).unwrap();
    let cache = dir.join("prompt.state");
    let run = |prompt: &Path, extra: &[&str]| {
        let mut args = vec!["-m", path_arg(&m), "-f", path_arg(prompt), "-c", "512"];
        args.extend(["--prompt-cache", path_arg(&cache), "-n", "8", "--temp", "0"]);
        args.extend(extra);
        edge_run(&args)
    };
    let first = run(&prompt, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let (reused, n) = reuse_report(&stderr(&first));
    assert_eq!(reused, 0);
    assert!(n >= 250, "a prompt of {n} tokens");
    let saved = std::fs::read(&cache).unwrap();
    assert!(!dir.join("prompt.state.tmp").exists());

    let second = run(&prompt, &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let e = stderr(&second);
    assert_eq!(reuse_report(&e), (n, n), "{e}");
    assert!(!e.contains("evaluated"), "nothing is evaluated: {e}");
    assert_eq!(stdout(&second), stdout(&first), "the same text");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        saved,
        "nothing new: not saved"
    );

    // A longer prompt: the saved prefix is reused and the state saved again.
    let longer = dir.join("longer.txt");
    std::fs::write(&longer, format!("{text}And then the storm came.")).unwrap();
    let third = run(&longer, &[]);
    let e = stderr(&third);
    assert!(third.status.success(), "{e}");
    // The prompt's last token merges with what follows it.
    let (reused, total) = reuse_report(&e);
    assert!(reused + 2 >= n && reused < n && total > n, "{e}");
    assert_ne!(std::fs::read(&cache).unwrap(), saved, "saved again");
    std::fs::write(&cache, &saved).unwrap();

    // Another KV type, and a corrupt file: exit 1 naming the file; the file is untouched.
    let o = run(&prompt, &["-ctk", "q8_0"]);
    refused(&o, 1, "KV type K f16; this session's is q8_0");
    assert!(stderr(&o).contains("prompt.state"));
    assert_eq!(std::fs::read(&cache).unwrap(), saved);
    let mut bad = saved.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    std::fs::write(&cache, &bad).unwrap();
    let o = run(&prompt, &[]);
    refused(&o, 1, "checksum");
    assert!(stderr(&o).contains("prompt.state"));
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        bad,
        "the corrupt file is left as it was"
    );
}

/// `(reused, prompt tokens)` from `--prompt-cache`'s report on stderr.
fn reuse_report(e: &str) -> (usize, usize) {
    let r = e
        .split_once("reused ")
        .and_then(|(_, r)| r.split_once(" prompt tokens"))
        .and_then(|(r, _)| r.split_once(" of "))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    r.unwrap_or_else(|| panic!("no reuse report: {e}"))
}

/// Runs the interactive chat on SmolLM2 (greedy, 16 tokens a reply) with `input` on stdin.
fn chat_session(input: &str) -> Output {
    use std::io::Write;
    let m = smollm2_path();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .args([
            "-m",
            path_arg(&m),
            "--chat",
            "-n",
            "16",
            "--temp",
            "0",
            "-c",
            "512",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The chat's `/save` and `/load`: a conversation saved after one turn and loaded in another process
/// answers the second question exactly as the process that never stopped; a bad file is reported and
/// the chat goes on.
#[test]
fn chat_save_and_load_continue_the_conversation() {
    let dir = TempDir::new("cli", "chat-state");
    let f = dir.join("chat.state");
    let (q1, q2) = ("What is the capital of France?", "And of Italy?");
    let whole = chat_session(&format!("{q1}\n{q2}\n"));
    assert!(whole.status.success(), "{}", stderr(&whole));
    let saved = chat_session(&format!("{q1}\n/save {}\n", f.display()));
    assert!(stderr(&saved).contains("(saved "), "{}", stderr(&saved));
    let help = chat_session("/help\n");
    assert!(stderr(&help).contains("/save FILE") && stderr(&help).contains("/load FILE"));
    let junk = dir.join("junk.state");
    std::fs::write(&junk, b"junk").unwrap();
    let input = format!("/load {}\n/load {}\n{q2}\n", junk.display(), f.display());
    let resumed = chat_session(&input);
    let e = stderr(&resumed);
    assert!(e.contains("junk.state") && e.contains("magic"), "{e}");
    assert!(e.contains("(loaded "), "{e}");
    // The second reply of the whole chat is the resumed chat's only reply.
    let (whole_out, resumed_out) = (stdout(&whole), stdout(&resumed));
    assert!(!resumed_out.trim().is_empty());
    assert!(
        whole_out.trim_end().ends_with(resumed_out.trim_end()),
        "whole: {whole_out:?}\nresumed: {resumed_out:?}"
    );
    assert_ne!(whole_out.trim(), resumed_out.trim(), "two replies vs one");
}
