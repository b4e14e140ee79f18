//! The decode hot path performs no heap allocation: a counting global allocator sees zero allocations over
//! 64 decode steps with two adapters active and a swap every 8 tokens, and a control vector set and
//! cleared every 8 tokens, at 1 and 2 threads (one set also replacing the embedding and the output
//! head, as a PEFT `modules_to_save` adapter does) — on the real
//! SmolLM2 (llama) and on the tiny gemma3 fixture (sliding-window ring wrapping around many times, and a
//! `truncate` deep into overwritten ring slots, whose replay runs inside the counted region).
//! (Its own test binary with one test, so that no other test allocates concurrently.)
mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use common::*;
use counting_alloc::{count_allocations, Counting};
use edge_run::adapter::{Adapter, ControlVector};
use edge_run::{Model, Sampler, SamplingParams, Session};
use std::sync::Arc;

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn decode_with_adapters_and_swaps_allocates_nothing() {
    smollm2();
    gemma3_fixture();
}

type AdapterSet<'a> = [(&'a Arc<Adapter>, f32)];

/// One run: a session of `n_threads` on `model` with adapter `set_a`, the prompt evaluated, one
/// warm-up decode step with each set (first use of buffers), then 64 counted decode steps swapping
/// the sets every 8 tokens (and truncating to `truncate.1` tokens at step `truncate.0`). Returns the
/// number of heap allocations in the counted steps, and the session. A control vector on blocks 1
/// and 2 is set at the start and cleared / set again every 8 tokens.
fn count_decode_allocations(
    model: &Arc<Model>,
    n_threads: usize,
    prompt: &[u32],
    sampling: SamplingParams,
    (set_a, set_b): (&AdapterSet, &AdapterSet),
    truncate: Option<(usize, usize)>,
) -> (usize, Session) {
    // `Session::new` returns once its pool's worker threads have started (a starting thread allocates).
    let mut s = session(model, 128, n_threads);
    let mut sampler = Sampler::new(sampling, model.hp.n_vocab);
    let ctl = s.adapter_control();
    ctl.set(set_a).unwrap();
    let e = model.hp.n_embd;
    let (v1, v2) = (uniform_values(e, 0.5, 1), uniform_values(e, 0.5, 2));
    let cv = Arc::new(ControlVector::from_rows(model, &[(1, &v1), (2, &v2)]).unwrap());
    s.set_control_vector(Some(cv.clone())).unwrap();
    s.eval(prompt).unwrap();
    for set in [set_b, set_a] {
        ctl.set(set).unwrap();
        let t = sampler.sample(s.logits());
        sampler.accept(t);
        s.eval(&[t]).unwrap();
    }
    let ((), n) = count_allocations(|| {
        for step in 0..64 {
            if step % 8 == 7 {
                ctl.set(if step % 16 == 7 { set_b } else { set_a }).unwrap();
            }
            if step % 8 == 3 {
                let on = s.control_vector().is_none();
                s.set_control_vector(on.then(|| cv.clone())).unwrap();
            }
            if let Some((at, n)) = truncate {
                if step == at {
                    s.truncate(n);
                }
            }
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.eval(&[t]).unwrap();
        }
    });
    (n, s)
}

fn smollm2() {
    let model = open_smollm2();
    let dir = root().join("tests/data/adapters");
    let load = |n: &str| Arc::new(Adapter::load(&dir.join(n), &model.base_info).unwrap());
    let (pirate, shout, json) = (load("pirate.gguf"), load("shout-peft"), load("json-peft"));
    // Replacements of the embedding and the head (fp16, in place from a GGUF adapter).
    let tmp = TempDir::new("no-alloc", "replace");
    let (e, v) = (model.hp.n_embd, model.hp.n_vocab);
    let mut w = lora_adapter_writer(None);
    for (name, seed) in [
        ("token_embd.weight.replace", 5),
        ("output.weight.replace", 6),
    ] {
        let data = f16_bytes(&uniform_values(e * v, 0.1, seed));
        w.add_tensor(
            name,
            &[e as u64, v as u64],
            edge_run::kernels::QuantType::F16,
            data,
        )
        .unwrap();
    }
    w.write_file(&tmp.join("replace.gguf")).unwrap();
    let replace = Arc::new(Adapter::load(&tmp.join("replace.gguf"), &model.base_info).unwrap());
    assert_eq!(replace.saved().len(), 2);
    assert!(replace.saved().iter().all(|m| m.is_mapped()));
    let set_a = [(&pirate, 1.0f32), (&shout, 0.5f32)];
    let set_b = [(&json, 1.0f32), (&shout, 0.8f32), (&replace, 1.0f32)];
    let prompt = model.tokenizer.encode(
        "<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n",
        true,
    );
    for n_threads in [1, 2] {
        let sampling = SamplingParams {
            temperature: 0.7,
            seed: 1,
            ..Default::default()
        };
        let (n, s) =
            count_decode_allocations(&model, n_threads, &prompt, sampling, (&set_a, &set_b), None);
        eprintln!("{n_threads} thread(s): {n} heap allocations over 64 decode steps with 2 adapters and 8 swaps");
        assert_eq!(
            n, 0,
            "{n_threads} thread(s): the decode path allocated {n} times"
        );
        assert_eq!(s.applied_adapters().len(), 2);
    }
}

fn gemma3_fixture() {
    let dir = root().join("models/fixtures");
    let model = Arc::new(Model::open(dir.join("tiny-gemma3.gguf")).unwrap());
    let load = |n: &str| Arc::new(Adapter::load(&dir.join(n), &model.base_info).unwrap());
    let (gg, peft, vlm) = (
        load("tiny-gemma3-lora.gguf"),
        load("tiny-gemma3-lora-peft"),
        load("tiny-gemma3-lora-peft-vlm"),
    );
    let set_a = [(&gg, 1.0f32), (&peft, 0.5f32)];
    let set_b = [(&vlm, 0.7f32), (&peft, 0.3f32)];
    for n_threads in [1, 2] {
        let sampling = SamplingParams {
            temperature: 0.9,
            seed: 3,
            ..Default::default()
        };
        // Truncating at step 40 goes deep into ring slots already overwritten: the next eval replays.
        let (n, s) = count_decode_allocations(
            &model,
            n_threads,
            &[1, 30, 40, 50, 60, 70, 80],
            sampling,
            (&set_a, &set_b),
            Some((40, 20)),
        );
        eprintln!("gemma3 fixture, {n_threads} thread(s): {n} heap allocations over 64 decode steps with 2 adapters, 8 swaps and a replayed truncate");
        assert_eq!(
            n, 0,
            "{n_threads} thread(s): the gemma3 decode path allocated {n} times"
        );
        assert_eq!(s.applied_adapters().len(), 2);
        assert_eq!(
            s.n_past(),
            20 + 24,
            "truncated to 20 at step 40, then 24 more steps"
        );
    }
}
