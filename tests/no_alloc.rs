//! The decode hot path performs no heap allocation: a counting global allocator sees zero allocations over
//! 64 decode steps with two adapters active and a swap every 8 tokens, at 1 and 2 threads — on the real
//! SmolLM2 (llama) and on the tiny gemma3 fixture (sliding-window ring wrapping around many times, and a
//! `truncate` deep into overwritten ring slots, whose replay runs inside the counted region).
//! (Its own test binary with one test, so that no other test allocates concurrently.)
mod common;
use common::*;
use edge_run::adapter::Adapter;
use edge_run::{Model, Sampler, SamplingParams, Session, SessionConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn decode_with_adapters_and_swaps_allocates_nothing() {
    smollm2();
    gemma3_fixture();
}

fn smollm2() {
    let model = Arc::new(Model::open(smollm2_path()).unwrap());
    let load = |n: &str| Arc::new(Adapter::load(&root().join("tests/data/adapters").join(n), &model.base_info).unwrap());
    let (pirate, shout, json) = (load("pirate.gguf"), load("shout-peft"), load("json-peft"));
    let set_a = [(&pirate, 1.0f32), (&shout, 0.5f32)];
    let set_b = [(&json, 1.0f32), (&shout, 0.8f32)];
    for n_threads in [1, 2] {
        let mut s = Session::new(model.clone(), SessionConfig { n_ctx: 128, n_threads, ..Default::default() }).unwrap();
        let mut sampler = Sampler::new(SamplingParams { temperature: 0.7, seed: 1, ..Default::default() }, model.hp.n_vocab);
        let ctl = s.adapter_control();
        ctl.set(&set_a).unwrap();
        let prompt = model.tokenizer.encode("<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n", true);
        s.eval(&prompt).unwrap();
        // Warm-up: one decode step with each set (first use of buffers).
        for set in [&set_b[..], &set_a[..]] {
            ctl.set(set).unwrap();
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.eval(&[t]).unwrap();
        }
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for step in 0..64 {
            if step % 8 == 7 {
                ctl.set(if step % 16 == 7 { &set_b } else { &set_a }).unwrap();
            }
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.eval(&[t]).unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCS.load(Ordering::SeqCst);
        eprintln!("{n_threads} thread(s): {n} heap allocations over 64 decode steps with 2 adapters and 8 swaps");
        assert_eq!(n, 0, "{n_threads} thread(s): the decode path allocated {n} times");
        assert_eq!(s.applied_adapters().len(), 2);
    }
}

fn gemma3_fixture() {
    let dir = root().join("models/fixtures");
    let model = Arc::new(Model::open(dir.join("tiny-gemma3.gguf")).unwrap());
    let load = |n: &str| Arc::new(Adapter::load(&dir.join(n), &model.base_info).unwrap());
    let (gg, peft, vlm) = (load("tiny-gemma3-lora.gguf"), load("tiny-gemma3-lora-peft"), load("tiny-gemma3-lora-peft-vlm"));
    let set_a = [(&gg, 1.0f32), (&peft, 0.5f32)];
    let set_b = [(&vlm, 0.7f32), (&peft, 0.3f32)];
    for n_threads in [1, 2] {
        let mut s = Session::new(model.clone(), SessionConfig { n_ctx: 128, n_threads, ..Default::default() }).unwrap();
        // The tiny model's warm-up can finish before the pool's worker thread has even started, and a
        // starting thread allocates (std's thread-info setup): give it time to start first.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut sampler = Sampler::new(SamplingParams { temperature: 0.9, seed: 3, ..Default::default() }, model.hp.n_vocab);
        let ctl = s.adapter_control();
        ctl.set(&set_a).unwrap();
        s.eval(&[1, 30, 40, 50, 60, 70, 80]).unwrap();
        for set in [&set_b[..], &set_a[..]] {
            ctl.set(set).unwrap();
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.eval(&[t]).unwrap();
        }
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for step in 0..64 {
            if step % 8 == 7 {
                ctl.set(if step % 16 == 7 { &set_b } else { &set_a }).unwrap();
            }
            if step == 40 {
                s.truncate(20); // deep into ring slots already overwritten: the next eval replays
            }
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.eval(&[t]).unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCS.load(Ordering::SeqCst);
        eprintln!("gemma3 fixture, {n_threads} thread(s): {n} heap allocations over 64 decode steps with 2 adapters, 8 swaps and a replayed truncate");
        assert_eq!(n, 0, "{n_threads} thread(s): the gemma3 decode path allocated {n} times");
        assert_eq!(s.applied_adapters().len(), 2);
        assert_eq!(s.n_past(), 20 + 24, "truncated to 20 at step 40, then 24 more steps");
    }
}
