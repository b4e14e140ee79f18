//! Criterion benches of the fp16 LoRA kernels (decode shrink/expand and their prompt-batch forms), for
//! every LoRA tier this CPU runs next to the scalar reference, one thread, ranks 8, 16 and 64, with
//! `Throughput::Bytes` = A or B bytes read per call.
//!
//! Shapes are SmolLM2-135M's FFN up projection: `A` is `rank × 576` (shrink reads `x`, 576 values),
//! `B` is `1536 × rank` (expand writes 1536 rows). The batch forms process 64 tokens per call over the
//! same A/B; their throughput counts the weight bytes once per token (64× per call), i.e. the bytes 64
//! decode calls would read, so the numbers compare directly (a batch call reads them only once).
//! There is no fused base+LoRA kernel in the table: the session calls `expand` on the rows whose base
//! matvec it just computed.
//!
//! ```text
//! cargo bench --bench lora                  # everything (~1.5 min)
//! cargo bench --bench lora -- shrink/       # decode shrink only, every tier and rank
//! cargo bench --bench lora -- 'r64'         # rank 64 only
//! ```
use criterion::{BenchmarkId, SamplingMode, Throughput};
use edge_run::kernels::lora::{LoraKernels, LoraRef};
use std::cell::OnceCell;
use std::hint::black_box;

mod common;

const N_IN: usize = 576;
const N_OUT: usize = 1536;
const TOKENS: usize = 64;

/// fp16 bits of values in [-0.1, 0.1).
fn halves(len: usize, seed: u64) -> Vec<u16> {
    let mut rng = edge_run::sampling::Rng::new(seed);
    (0..len)
        .map(|_| half::f16::from_f32((rng.next_f32() - 0.5) * 0.2).to_bits())
        .collect()
}

fn floats(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn main() {
    let mut c = common::criterion();
    let tiers: Vec<&'static LoraKernels> = LoraKernels::available().collect();
    common::print_tiers("LoRA tiers", tiers.iter().map(|k| k.tier.name()));
    let x = floats(TOKENS * N_IN);
    for kind in ["shrink", "expand", "shrink_batch", "expand_batch"] {
        let mut g = c.benchmark_group(kind);
        g.sampling_mode(SamplingMode::Flat);
        for rank in [8usize, 16, 64] {
            let case = format!("r{rank}");
            let ab: OnceCell<(Vec<u16>, Vec<u16>)> = OnceCell::new();
            // Weight bytes per token: a batch call counts them once per token (what as many decode
            // calls would read), so its GB/s compares with the decode kernels'.
            let per_tok = if kind.ends_with("batch") { TOKENS } else { 1 };
            let per_call = if kind.starts_with("shrink") {
                N_IN
            } else {
                N_OUT
            };
            let bytes = 2 * rank * per_call * per_tok;
            g.throughput(Throughput::Bytes(bytes as u64));
            for &k in &tiers {
                let tier = k.tier.name();
                g.bench_with_input(BenchmarkId::new(tier, &case), &case, |b, case| {
                    let (a, bm) =
                        ab.get_or_init(|| (halves(rank * N_IN, 1), halves(N_OUT * rank, 2)));
                    let ad = [LoraRef {
                        rank,
                        n_in: N_IN,
                        n_out: N_OUT,
                        a,
                        b: bm,
                        scale: 0.5,
                    }];
                    let t = floats(TOKENS * rank);
                    let mut tout = vec![0f32; TOKENS * rank];
                    let mut y = vec![0f32; TOKENS * N_OUT];
                    b.iter_custom(|iters| {
                        common::timed(
                            (kind, case, tier),
                            (bytes, bytes / per_tok),
                            iters,
                            1,
                            |_| match kind {
                                "shrink" => (k.shrink)(
                                    &ad,
                                    black_box(&x[..N_IN]),
                                    black_box(&mut tout[..rank]),
                                ),
                                "expand" => (k.expand)(
                                    &ad,
                                    black_box(&t[..rank]),
                                    0,
                                    black_box(&mut y[..N_OUT]),
                                ),
                                "shrink_batch" => (k.shrink_batch)(
                                    &ad,
                                    TOKENS,
                                    black_box(&x),
                                    black_box(&mut tout),
                                ),
                                _ => (k.expand_batch)(
                                    &ad,
                                    TOKENS,
                                    black_box(&t),
                                    0,
                                    N_OUT,
                                    black_box(&mut y),
                                    N_OUT,
                                ),
                            },
                        )
                    });
                    assert!(
                        tout.iter().chain(&y).all(|v| v.is_finite()),
                        "{kind} {case} {tier}: non-finite output"
                    );
                });
            }
        }
        g.finish();
    }
    c.final_summary();
    common::summary("lora");
}
