//! The real model (SmolLM2-135M-Instruct Q4_1) against reference logits computed outside this project:
//! Hugging Face transformers in fp32 on the dequantized weights, and llama.cpp on the same GGUF.
mod common;
use common::*;
use edge_run::session::{ActQuant, KvType};
use edge_run::{Session, SessionConfig};

/// The real model's logits at every position of every reference sequence, in 256-position sessions
/// of `cfg`.
fn real_model_runs(cfg: SessionConfig) -> Vec<(String, Vec<Vec<f32>>)> {
    let model = open_smollm2();
    logits_of_sequences(&model, sequences(), SessionConfig { n_ctx: 256, ..cfg })
}

#[test]
fn logits_match_hf_and_llama_cpp() {
    let runs = real_model_runs(SessionConfig {
        n_threads: 2,
        ..Default::default()
    });
    let hf = metrics_vs_smollm2_npz("hf_base.npz", &runs);
    let lc = metrics_vs_smollm2_npz("llamacpp_base.npz", &runs);
    eprintln!("default (q8x2) vs HF fp32: {hf:?}\ndefault (q8x2) vs llama.cpp: {lc:?}");
    // The bar: at least as close to the fp32 reference as llama.cpp is (0.0016 / 99.0% on a larger set;
    // 0.0037 / 97.8% on these sequences).
    assert!(hf.kl_mean <= 0.0025, "mean KL vs HF {}", hf.kl_mean);
    assert!(hf.top1 >= 0.985, "top-1 vs HF {}", hf.top1);
    // q8x2 removes almost all activation rounding (measured: KL ≈ 1e-5, top-1 100%); guard that margin, so a
    // regression to ggml-level error (0.004) fails here even though it would pass the bar above.
    assert!(
        hf.kl_mean <= 0.0005 && hf.top1 >= 0.99,
        "q8x2 lost its precision: {hf:?}"
    );
    // llama.cpp quantizes activations to 8 bits and keeps an f16 KV cache, so it sits a little off the
    // reference; we must be about as close to it as it is to HF.
    assert!(lc.kl_mean <= 0.006, "mean KL vs llama.cpp {}", lc.kl_mean);
}

/// Every KV cache type against Hugging Face fp32 ([`assert_kv_bars`]): f16 keys flip one exact tie
/// here (reference margin 0.001 logit), which the bar does not count.
#[test]
fn kv_cache_types_stay_close_to_hf() {
    for kv in KvType::ALL {
        let runs = real_model_runs(SessionConfig {
            n_threads: 2,
            type_k: kv,
            type_v: kv,
            ..Default::default()
        });
        let hf = metrics_vs_smollm2_npz("hf_base.npz", &runs);
        assert_kv_bars("SmolLM2 vs HF fp32", kv, &hf);
    }
}

#[test]
fn ggml_style_q8_activations_are_as_close_as_llama_cpp() {
    let runs = real_model_runs(SessionConfig {
        n_threads: 1,
        act_quant: ActQuant::Q8,
        ..Default::default()
    });
    let hf = metrics_vs_smollm2_npz("hf_base.npz", &runs);
    eprintln!("q8 vs HF fp32: {hf:?}");
    // llama.cpp on these sequences: 0.0037 / 97.8%. One 8-bit activation pass makes top-1 noisy at
    // this size (179 positions, 0.56% each): f32-rounding-level changes elsewhere in the forward pass
    // (exp, attention summation order) moved it between 96.6% and 98.9% while the mean KL stayed at
    // 0.0038–0.0041, so the KL carries the bar and top-1 only guards against gross errors.
    assert!(hf.kl_mean <= 0.0050, "mean KL vs HF {}", hf.kl_mean);
    assert!(hf.top1 >= 0.95, "top-1 vs HF {}", hf.top1);
}

#[test]
fn batched_prompt_equals_token_by_token() {
    let model = open_smollm2();
    let (_, ids) = sequences().into_iter().next().unwrap();
    let ids = &ids[..24];
    // Single steps take the decode path, whose activation rounding differs from the batched path's
    // (within the q8x2 bound); batches of two or more tokens are bit-identical whatever their size.
    let max_diff = batch_vs_steps(&model, ids);
    assert!(
        max_diff < 1e-2,
        "batch of 24 vs 24 single steps differ by {max_diff}"
    );
    let last_logits = |n_batch: usize| {
        let cfg = SessionConfig {
            n_batch,
            n_ctx: 64,
            n_threads: 2,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), cfg).unwrap();
        s.eval(ids).unwrap().to_vec()
    };
    assert_eq!(
        last_logits(24),
        last_logits(2),
        "batch of 24 vs 12 batches of 2"
    );
    assert_eq!(
        last_logits(24),
        last_logits(5),
        "batch of 24 vs batches of 5 and 4"
    );
}

#[test]
fn every_kernel_tier_gives_the_same_logits() {
    let model = open_smollm2();
    let (_, ids) = sequences().into_iter().next().unwrap();
    let ids = &ids[..16];
    let mut base: Option<Vec<f32>> = None;
    let mut ran = Vec::new();
    for k in edge_run::kernels::Kernels::available() {
        let mut s = Session::new(
            model.clone(),
            SessionConfig {
                n_ctx: 32,
                n_threads: 2,
                kernels: Some(k),
                ..Default::default()
            },
        )
        .unwrap();
        let l = s.eval(ids).unwrap().to_vec();
        ran.push(k.tier.name());
        match &base {
            None => base = Some(l),
            Some(b) => {
                // Tiers differ only in the order of f32 additions; through 30 layers and the 8-bit activation
                // rounding that can move single logits by ~0.1, but not the distribution.
                let kl = kl_div(b, &l);
                let d = b
                    .iter()
                    .zip(&l)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                eprintln!(
                    "tier {}: KL(scalar ‖ tier) = {kl:.2e}, max |Δlogit| = {d}",
                    k.tier.name()
                );
                assert!(
                    kl < 1e-3 && d < 0.5,
                    "tier {} differs from scalar: KL {kl}, max |Δ| {d}",
                    k.tier.name()
                );
                assert_eq!(
                    edge_run::sampling::argmax(b),
                    edge_run::sampling::argmax(&l)
                );
            }
        }
    }
    eprintln!("model-level tiers compared: {}", ran.join(", "));
}

#[test]
fn bad_requests_leave_the_session_usable() {
    let model = open_smollm2();
    let mut s = session(&model, 8, 1);
    let l1 = s.eval(&[1, 2, 3]).unwrap().to_vec();
    let err = s.eval(&[4, 49152]).unwrap_err().to_string();
    assert!(
        err.contains("49152") && err.contains("out of range"),
        "{err}"
    );
    let err = s.eval(&[5; 6]).unwrap_err().to_string();
    assert!(err.contains("context full"), "{err}");
    assert_eq!(s.n_past(), 3, "a refused request must not change the cache");
    assert_eq!(s.logits(), &l1[..]);
    s.eval(&[4]).unwrap();
    assert_eq!(s.n_past(), 4);
}
