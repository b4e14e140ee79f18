//! Gemma 3 (`gemma3`): the real Gemma 3 270M Q4_K_M against llama.cpp's logits and Hugging Face's token
//! ids (tests/data/gemma3, see PROVENANCE.md), its chat template through the minijinja path, and a tiny
//! fixture model (models/fixtures/tiny-gemma3*.gguf) against an independent float64 numpy forward pass
//! (models/tools/make_fixtures.py), with and without a PEFT / GGUF LoRA adapter, over sequences longer
//! than its sliding window.
mod common;
use common::*;
use edge_run::adapter::Adapter;
use edge_run::chat::{apply_chat_template, ChatMessage};
use edge_run::session::KvType;
use edge_run::{Model, Session, SessionConfig};
use std::path::PathBuf;
use std::sync::Arc;

fn data(name: &str) -> PathBuf {
    root().join("tests/data/gemma3").join(name)
}

fn gemma_sequences() -> Vec<(String, Vec<u32>)> {
    sequences_in(&data("sequences.json"))
}

/// Logits of every position of every reference sequence (default session: Q8x2 activations), keys and
/// values cached as `kv`.
fn real_model_runs(model: &Arc<Model>, kv: KvType) -> Vec<(String, Vec<Vec<f32>>)> {
    let cfg = SessionConfig {
        n_ctx: 256,
        n_batch: 32,
        n_threads: 2,
        type_k: kv,
        type_v: kv,
        ..Default::default()
    };
    logits_of_sequences(model, gemma_sequences(), cfg)
}

/// The KV cache types against the float64 pass ([`assert_kv_bars`]). (These sequences stay inside the
/// 512-position window; the rings' wrap is covered by the fixture tests.)
#[test]
fn real_model_kv_cache_types_match_float64_reference() {
    let model = Arc::new(Model::open(gemma_path()).unwrap());
    for kv in [KvType::F16, KvType::Q8_0] {
        let (exact, _) = metrics_vs("oracle_f64.npz", &real_model_runs(&model, kv));
        assert_kv_bars("gemma3 270M vs float64", kv, &exact);
    }
}

fn metrics_vs(npz: &str, runs: &[(String, Vec<Vec<f32>>)]) -> (Metrics, Vec<(String, RefSeq)>) {
    let z = read_npz(&data(npz));
    let mut per = Vec::new();
    let mut refs = Vec::new();
    for (name, rows) in runs {
        let r = reference(&z, name);
        let m = compare(&r, rows);
        eprintln!("  {npz} {name}: {m:?}");
        per.push(m);
        refs.push((name.clone(), r));
    }
    (summarize(&per), refs)
}

/// `--act-quant q8` (one 8-bit activation pass, like llama.cpp) against llama.cpp. With one 8-bit pass,
/// Gemma 3's logits carry ~0.005 KL of activation-rounding noise that a single f32 rounding difference
/// before any quantization re-draws, so this mode agrees with llama.cpp only to the size of that noise
/// (measured 0.0057-0.0072 mean KL, 96.9-98.4% top-1 on these 64 positions; edge-run's own scalar and
/// AVX-512 tiers differ by 0.0037 in this mode, llama.cpp with an f16 vs an f32 KV cache by 0.0058).
/// The bar catches a formula error (≥ 1e-2) or a broken q8 path, not the noise.
#[test]
fn real_model_q8_mode_near_llama_cpp() {
    let model = Arc::new(Model::open(gemma_path()).unwrap());
    let mut runs = Vec::new();
    for (name, ids) in gemma_sequences() {
        let cfg = SessionConfig {
            logits_all: true,
            n_ctx: 256,
            n_batch: 64,
            n_threads: 2,
            act_quant: edge_run::session::ActQuant::Q8,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), cfg).unwrap();
        let mut rows = Vec::new();
        s.eval_each(&ids, |_, l| rows.push(l.to_vec())).unwrap();
        runs.push((name, rows));
    }
    let (lc, _) = metrics_vs("llamacpp_base.npz", &runs);
    eprintln!(
        "gemma3 270M q8 vs llama.cpp: mean KL {:.5}, max KL {:.4}, top-1 {:.2}%",
        lc.kl_mean,
        lc.kl_max,
        100.0 * lc.top1
    );
    assert!(lc.kl_mean <= 0.012, "mean KL vs llama.cpp {}", lc.kl_mean);
    assert!(lc.top1 >= 0.93, "top-1 vs llama.cpp {}", lc.top1);
}

/// Against llama.cpp (tests/data/gemma3/llamacpp_base.npz) and against an exact float64 forward pass
/// of the Gemma 3 definition on the same dequantized weights (oracle_f64.npz, made by
/// models/tools/gemma3_ref.py, independent of the Rust code).
///
/// llama.cpp itself is 0.0054 (mean KL) / 96.9% (top-1) away from the float64 pass on these 64
/// positions (its 8-bit activations, f16 KV cache): the two top-1 disagreements are near-ties (exact
/// top-2 margins 0.031 and 0.048 logits). So the bar against llama.cpp is "as close to it as the exact
/// model is" (KL ≤ 0.006, top-1 everywhere its own top-2 margin is above 0.1 logit), and the tight
/// check is against the float64 pass.
#[test]
fn real_model_logits_match_llama_cpp_and_float64_reference() {
    let model = Arc::new(Model::open(gemma_path()).unwrap());
    assert_eq!(model.arch, "gemma3");
    let hp = &model.hp;
    assert_eq!(
        (
            hp.n_layer,
            hp.n_embd,
            hp.n_head,
            hp.n_head_kv,
            hp.head_dim,
            hp.n_vocab
        ),
        (18, 640, 4, 1, 256, 262_144)
    );
    assert_eq!(hp.n_swa, 512);
    let globals: Vec<usize> = (0..hp.n_layer).filter(|&l| !hp.swa[l]).collect();
    assert_eq!(globals, [5, 11, 17], "every 6th layer is global");
    assert!(model.tied_output);
    // f32 keys and values: this bar is for the arithmetic of the weights and the forward pass.
    let runs = real_model_runs(&model, KvType::F32);

    let (exact, _) = metrics_vs("oracle_f64.npz", &runs);
    let (lc, refs) = metrics_vs("llamacpp_base.npz", &runs);
    eprintln!("gemma3 270M vs float64 reference: mean KL {:.2e}, max KL {:.2e}, top-1 {:.2}% ({} positions)", exact.kl_mean, exact.kl_max, 100.0 * exact.top1, exact.positions);
    eprintln!("gemma3 270M vs llama.cpp:         mean KL {:.5}, max KL {:.4}, top-1 {:.2}% ({} positions)", lc.kl_mean, lc.kl_max, 100.0 * lc.top1, lc.positions);
    // Measured: 1.6e-6 mean, 1.8e-4 max (over the reference's top-128). Any formula error (a norm, a
    // RoPE base, the GELU, the scale) is ≥ 1e-2.
    assert!(
        exact.kl_mean <= 2e-5 && exact.kl_max <= 1e-3,
        "KL vs float64 reference: {exact:?}"
    );
    assert_eq!(exact.top1, 1.0, "top-1 vs float64 reference");
    assert!(lc.kl_mean <= 0.006, "mean KL vs llama.cpp {}", lc.kl_mean);
    assert!(lc.top1 >= 0.95, "top-1 vs llama.cpp {}", lc.top1);
    for ((name, rows), (_, r)) in runs.iter().zip(&refs) {
        for (t, row) in rows.iter().enumerate() {
            let lrow = r.logits.row(t);
            let margin = lrow[0] - lrow[1];
            let ours = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            assert!(
                margin <= 0.1 || ours == r.ids.row(t)[0] as usize,
                "{name} position {t}: top-1 {ours} vs llama.cpp {} (its margin {margin})",
                r.ids.row(t)[0]
            );
        }
    }
}

#[test]
fn real_model_tokenizer_matches_hugging_face() {
    let model = Model::open(gemma_path()).unwrap();
    let tok = &model.tokenizer;
    assert_eq!(model.tokenizer_model, "llama");
    assert_eq!(tok.n_vocab(), 262_144);
    assert!(tok.add_bos());
    assert_eq!(tok.bos(), Some(2));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("tokenize.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for c in v.as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true);
        if got != want {
            failures.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
        }
        assert_eq!(tok.decode(&got), text, "decode(encode(text)) round trip");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(tok.is_eog(106), "<end_of_turn> ends generation");
    assert!(tok.is_eog(1), "<eos> ends generation");
}

/// Gemma 3's chat template (from the instruction-tuned model's tokenizer_config.json; the base GGUF has
/// none) renders through edge-run's minijinja path exactly as Python's jinja2 renders it, and the
/// rendered prompt tokenizes to the chat prefix of the reference sequence `chat_capital`.
#[test]
fn chat_template_renders_and_tokenizes() {
    let tpl = std::fs::read_to_string(data("chat_template.jinja")).unwrap();
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " What is the capital of France? "),
        ChatMessage::new("assistant", "Paris."),
        ChatMessage::new("user", "And Spain?"),
    ];
    let got = apply_chat_template(&tpl, &msgs, true, "<bos>", "<eos>").unwrap();
    // Rendered by jinja2 3.1 (trim_blocks, lstrip_blocks: Hugging Face's settings) from the same file.
    let want = "<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nAnd Spain?<end_of_turn>\n<start_of_turn>model\n";
    assert_eq!(got, want);
    let err = apply_chat_template(
        &tpl,
        &[ChatMessage::new("assistant", "x")],
        true,
        "<bos>",
        "<eos>",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("alternate"), "{err}");

    let model = Model::open(gemma_path()).unwrap();
    let tok = &model.tokenizer;
    let piece =
        |id: u32| String::from_utf8_lossy(&tok.token_to_piece(id, true).to_vec()).into_owned();
    let text = apply_chat_template(
        &tpl,
        &[ChatMessage::new("user", "What is the capital of Spain?")],
        true,
        &piece(2),
        &piece(1),
    )
    .unwrap();
    let ids = tok.encode(&text, true);
    let (_, chat) = gemma_sequences()
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    assert_eq!(ids[..], chat[..ids.len()], "rendered prompt {text:?}");
    assert_eq!(ids.len(), 16);
}

#[test]
fn real_model_batched_equals_token_by_token_and_greedy_answer() {
    let model = Arc::new(Model::open(gemma_path()).unwrap());
    let (_, ids) = gemma_sequences()
        .into_iter()
        .find(|(n, _)| n == "prose")
        .unwrap();
    let d = batch_vs_steps(&model, &ids);
    assert!(d < 1e-2, "batch vs single steps differ by {d}");

    // Greedy decoding (one token per step) continues the chat prompt exactly as in the reference
    // sequence (llama.cpp's greedy answer).
    let (_, chat) = gemma_sequences()
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    let mut s = session(&model, 64, 2);
    let mut sampler = edge_run::Sampler::new(
        edge_run::SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        model.hp.n_vocab,
    );
    let mut out = Vec::new();
    s.generate(&chat[..16], chat.len() - 16, &mut sampler, |t| {
        out.push(t);
        true
    })
    .unwrap();
    eprintln!("greedy: {:?}", model.tokenizer.decode(&out));
    assert_eq!(out, chat[16..], "greedy continuation");
}

// ---------------------------------------------------------------------------------------------------
// The tiny gemma3 fixture against the float64 oracle.

fn gemma_manifest() -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("manifest.json")).unwrap()).unwrap();
    m["gemma3"].clone()
}

fn expected(file: &str) -> Array<f32> {
    npy_f32(&std::fs::read(fixture(file)).unwrap())
}

/// Logits of every position, evaluated in batches of `n_batch`.
fn run_fixture(model: &Arc<Model>, tokens: &[u32], cfg: SessionConfig) -> Vec<f32> {
    let mut s = Session::new(
        model.clone(),
        SessionConfig {
            logits_all: true,
            ..cfg
        },
    )
    .unwrap();
    let mut out = Vec::new();
    s.eval_each(tokens, |_, l| out.extend_from_slice(l))
        .unwrap();
    out
}

/// max |Δ| / std(expected).
fn rel_err(got: &[f32], exp: &[f32]) -> f64 {
    assert_eq!(got.len(), exp.len());
    assert!(got.iter().all(|v| v.is_finite()));
    let n = exp.len() as f64;
    let mean = exp.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (exp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(sd > 0.1, "degenerate reference");
    got.iter()
        .zip(exp)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .fold(0.0, f64::max)
        / sd
}

/// Q5_0 / Q8_0 / Q4_K / Q6_K weights with Q8x2 activations: measured ≤ 3e-4 on x86-64; Q8 (ggml's
/// numerics) measured ≤ 2e-2. A wrong detail (a norm, RoPE base or style, the window, the GELU) is ≥ 0.1.
const TOL_Q8X2: f64 = 1.5e-3;
const TOL_Q8: f64 = 0.1;

#[test]
fn fixture_hyperparameters() {
    let f = gemma_manifest();
    let m = Model::open(fixture(f["file"].as_str().unwrap())).unwrap();
    let hp = &m.hp;
    assert_eq!(m.arch, "gemma3");
    assert_eq!(
        (hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim),
        (128, 3, 4, 2, 32)
    );
    assert_eq!(
        hp.swa,
        [true, false, true],
        "sliding_window_pattern 2: layer 1 is global"
    );
    assert_eq!(hp.n_swa, 5);
    assert_eq!(hp.rope_freq_base, 1000.0);
    assert_eq!(
        hp.rope_freq_scale, 0.5,
        "linear scaling ×2 on the global layers"
    );
    assert_eq!(
        (hp.rope_freq_base_swa, hp.rope_freq_scale_swa),
        (10000.0, 1.0),
        "local layers: default base, no scaling"
    );
    assert_eq!(hp.embd_scale, (128f32).sqrt());
    assert_eq!(hp.att_scale, 1.0 / (32f32).sqrt());
    assert!(m.tied_output);
    assert_eq!(
        hp.kv_positions(0, 64),
        5,
        "local layers keep a ring of the window"
    );
    assert_eq!(hp.kv_positions(0, 3), 3, "… or of the context if smaller");
    assert_eq!(hp.kv_positions(1, 64), 64, "global layers keep the context");
}

/// Base logits of 16 positions (window 5) on every kernel tier, both activation modes, batch sizes 1, 3,
/// 16 (batches crossing the ring's wrap-around), contexts 16 and 40.
#[test]
fn fixture_logits_match_float64_reference_past_the_window() {
    let f = gemma_manifest();
    let model = Arc::new(Model::open(fixture(f["file"].as_str().unwrap())).unwrap());
    let toks = token_ids::<u32>(&f["tokens"]);
    assert!(toks.len() > 3 * model.hp.n_swa);
    let exp = expected(f["expected"].as_str().unwrap());
    let mut tiers = Vec::new();
    for k in edge_run::kernels::Kernels::available() {
        tiers.push(k.tier.name());
        for (aq, tol) in [
            (edge_run::session::ActQuant::Q8x2, TOL_Q8X2),
            (edge_run::session::ActQuant::Q8, TOL_Q8),
        ] {
            for (n_batch, n_ctx, n_threads) in [(16, 16, 2), (1, 40, 1), (3, 16, 2)] {
                let got = run_fixture(
                    &model,
                    &toks,
                    SessionConfig {
                        n_batch,
                        n_ctx,
                        n_threads,
                        kernels: Some(k),
                        act_quant: aq,
                        ..Default::default()
                    },
                );
                let e = rel_err(&got, &exp.data);
                eprintln!(
                    "tiny-gemma3 [{} {aq:?} batch {n_batch} ctx {n_ctx}]: max |Δ| / std = {e:.2e}",
                    k.tier.name()
                );
                assert!(
                    e <= tol,
                    "tier {} {aq:?} batch {n_batch}: {e:.3e} > {tol:e}",
                    k.tier.name()
                );
            }
        }
    }
    eprintln!("tiers run: {}", tiers.join(", "));
}

/// `truncate` keeps the cache exact: shortly behind the end without re-evaluation, deep into positions
/// the local ring has overwritten by replaying the kept tokens; both give the uninterrupted logits.
#[test]
fn fixture_truncate_and_continue_is_exact() {
    let f = gemma_manifest();
    let model = Arc::new(Model::open(fixture(f["file"].as_str().unwrap())).unwrap());
    let toks = token_ids::<u32>(&f["tokens"]);
    let cfg = SessionConfig {
        n_ctx: 24,
        n_batch: 4,
        n_threads: 2,
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), cfg.clone()).unwrap();
    let full: Vec<Vec<f32>> = toks
        .iter()
        .map(|&t| s.eval(&[t]).unwrap().to_vec())
        .collect();
    for keep in [15, 11, 4, 0] {
        s.truncate(keep);
        assert_eq!(s.n_past(), keep);
        for (i, &t) in toks.iter().enumerate().skip(keep) {
            let l = s.eval(&[t]).unwrap();
            assert_eq!(l, &full[i][..], "truncate({keep}) then position {i}");
        }
        assert_eq!(s.n_past(), toks.len());
    }
    // A batch after a deep truncate, against the same batch after the same six single steps (a batch
    // takes the batched path, whose rounding differs from single steps').
    let mut fresh = Session::new(model.clone(), cfg.clone()).unwrap();
    for &t in &toks[..6] {
        fresh.eval(&[t]).unwrap();
    }
    let want = fresh.eval(&toks[6..]).unwrap().to_vec();
    s.truncate(6);
    let l = s.eval(&toks[6..]).unwrap();
    assert_eq!(l, &want[..]);
}

/// The adapter (all seven linear weights of every layer) as a llama.cpp GGUF LoRA and as PEFT for
/// Gemma3ForCausalLM and Gemma3ForConditionalGeneration module names: the same logits as the float64
/// reference `W x + (alpha/r) B A x` (Gemma's Q/K rows are not permuted); scale 0 is the base exactly.
#[test]
fn fixture_lora_gguf_and_peft_match_reference() {
    let f = gemma_manifest();
    let model = Arc::new(Model::open(fixture(f["file"].as_str().unwrap())).unwrap());
    let toks = token_ids::<u32>(&f["tokens"]);
    let a = &f["adapter"];
    let exp = expected(a["expected"].as_str().unwrap());
    let base = expected(f["expected"].as_str().unwrap());
    assert!(
        rel_err(&exp.data, &base.data) > 0.1,
        "the adapter changes the logits"
    );
    let mut paths = vec![a["gguf"].as_str().unwrap().to_string()];
    paths.extend(
        a["peft"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string()),
    );
    let cfg = all_logits(16, 5, 2);
    let plain = run_fixture(&model, &toks, cfg.clone());
    for p in &paths {
        let ad = Arc::new(
            Adapter::load(&fixture(p), &model.base_info).unwrap_or_else(|e| panic!("{p}: {e}")),
        );
        assert_eq!(ad.tensors().len(), 21, "{p}");
        let mut s = Session::new(model.clone(), cfg.clone()).unwrap();
        s.set_adapters(&[(&ad, 1.0)]).unwrap();
        let mut got = Vec::new();
        s.eval_each(&toks, |_, l| got.extend_from_slice(l)).unwrap();
        let e = rel_err(&got, &exp.data);
        eprintln!("tiny-gemma3 + {p}: max |Δ| / std = {e:.2e}");
        assert!(e <= TOL_Q8X2, "{p}: {e:.3e}");
        // Scale 0: bit-identical to no adapter.
        s.reset();
        s.set_adapters(&[(&ad, 0.0)]).unwrap();
        let mut z = Vec::new();
        s.eval_each(&toks, |_, l| z.extend_from_slice(l)).unwrap();
        assert_eq!(z, plain, "{p} at scale 0");
    }
}

#[test]
fn fixture_cli_info_and_generate() {
    let p = fixture(gemma_manifest()["file"].as_str().unwrap());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .arg("info")
        .arg("-m")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("gemma3") && text.contains("Q5_0") && text.contains("sliding window"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .arg("-m")
        .arg(&p)
        .args(["-p", "hello world", "-n", "8", "--temp", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
