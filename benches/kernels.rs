//! Criterion benches of every quantized matrix×vector kernel (`matvec_*`, and `matvec2_*`: the
//! q8x2 pair of activations decode uses by default), for every tier this CPU runs next to the
//! scalar reference, one thread, with `Throughput::Bytes` = weight bytes read per call (criterion
//! reports GB/s); and of the batched products (`matmul_*`, `matmul2_*` with the q8x2 residual:
//! prefill) with `Throughput::Elements` = multiply-adds per call (criterion's elem/s are MAC/s), for
//! 8, 32 and 64 tokens, every tier's `Kernels::matmul` next to the same tier's per-token fallback
//! (`<tier>-per-token`: one `MatVec`/`MatVec2` per token, what `matmul` did before the tiers had
//! batched kernels; the scalar tier's `matmul` is that fallback too).
//!
//! Cases: SmolLM2-135M's FFN shapes `576x1536` (n_in × rows: up/gate; `768x1536` for the K-quants,
//! whose rows are whole 256-blocks) and `1536x576` (down), which stay in L2/L3 between calls, and
//! `4096xR` with R rows making ~3× the last-level cache (96 MiB on a 32 MiB-L3 machine; at least
//! 32 MiB), which streams from DRAM on every call as decode does across a model's layers (it is
//! called as 12 row ranges of ~8 MiB, as the session's thread pool calls it in chunks).
//!
//! At the end of `cargo bench` a summary measures the memory roofline in the same process (DRAM, L2,
//! and a read-only stream over a buffer of each case's weight bytes) and prints each kernel's GB/s,
//! its share of those, and its speed-up over scalar; the text is also written to
//! `target/criterion/roofline-kernels.txt` (or `$CARGO_TARGET_DIR/criterion/`).
//!
//! ```text
//! cargo bench --bench kernels                       # everything (~4 min on an idle machine)
//! cargo bench --bench kernels -- q4_1               # one quant type, every tier and shape
//! cargo bench --bench kernels -- matvec2_q4_1       # the fused q8x2 kernel of one type
//! cargo bench --bench kernels -- 'avx512vnni/1536'  # one tier and shape (criterion's regex filter)
//! cargo bench --bench kernels -- --quick q4_k       # criterion's quick mode
//! cargo bench --bench kernels -- matmul2_q4_1       # the q8x2 batched product of one type
//! ```
//!
//! The batched products run as the runtime's `linear()` calls them: chunks of 64 weight rows × all
//! the batch's tokens, over SmolLM2-135M's up/gate shape (`576x1536`; `768x1536` for the K-quants).
use common::roofline::cache_sizes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use edge_run::kernels::{ActRows, F16Bits, Kernels, QuantType};
use std::cell::OnceCell;
use std::hint::black_box;

mod common;

/// Deterministic bytes from the library's generator.
fn fill(buf: &mut [u8], seed: u64) {
    let mut rng = edge_run::sampling::Rng::new(seed);
    for b in buf.iter_mut() {
        *b = (rng.next_u64() >> 24) as u8;
    }
}

/// Weights of type `ty`, `rows × n`: random quants with every block's f16 scale fields set to small
/// finite values (random halves can be NaN, infinities or subnormals, which some paths handle slowly);
/// F32/F16 are random values in [-1, 1).
fn weights(ty: QuantType, n: usize, rows: usize) -> Vec<u8> {
    let rb = ty.row_bytes(n).expect("n is a multiple of the block size");
    let mut w = vec![0u8; rb * rows];
    fill(&mut w, 0x9e37_79b9_7f4a_7c15);
    let unit = |b: &[u8]| (u16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0) - 1.0;
    match ty {
        QuantType::F32 => {
            for c in w.chunks_exact_mut(4) {
                c.copy_from_slice(&unit(c).to_le_bytes());
            }
        }
        QuantType::F16 => {
            for c in w.chunks_exact_mut(2) {
                c.copy_from_slice(&F16Bits::from_f32(unit(c)).0);
            }
        }
        _ => {
            let h = F16Bits::from_f32(0.01).0;
            let fields: &[usize] = match ty {
                QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
                QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
                QuantType::Q6K => &[208],
                _ => &[],
            };
            for b in w.chunks_exact_mut(ty.type_size()) {
                for &f in fields {
                    b[f..f + 2].copy_from_slice(&h);
                }
            }
        }
    }
    w
}

/// An activation of `n` values quantized to `ty`'s vec-dot type (`p` picks the pattern).
fn activation(k: &Kernels, ty: QuantType, n: usize, p: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * p) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let vt = ty.vec_dot_type();
    let mut xq = vec![
        0u8;
        vt.row_bytes(n)
            .expect("n is a multiple of the activation block")
    ];
    (k.quantize(vt).expect("every vec-dot type has a quantizer"))(&x, &mut xq);
    xq
}

/// Parts the streaming case's matvec is timed in (row ranges of ~8 MiB, see `common::timed`).
const BIG_CHUNKS: usize = 12;

fn main() {
    let mut c = common::criterion();
    let tiers: Vec<&'static Kernels> = Kernels::available().collect();
    common::print_tiers("tiers", tiers.iter().map(|k| k.tier.name()));
    let big = (cache_sizes().llc.unwrap_or(32 << 20) * 3).clamp(32 << 20, 256 << 20);
    for &ty in QuantType::WEIGHTS {
        // `matvec_*`: one activation (act-quant q8); `matvec2_*`: the q8x2 pair (activation and its
        // residual) that decode uses by default, fused on the SIMD tiers that say so.
        for two in [false, true] {
            if two && Kernels::scalar().matvec2(ty).is_none() {
                continue;
            }
            let prefix = if two { "matvec2" } else { "matvec" };
            let name = format!("{prefix}_{}", ty.name().to_lowercase());
            let mut g = c.benchmark_group(&name);
            g.sampling_mode(SamplingMode::Flat);
            let row_bytes = |n: usize| ty.row_bytes(n).expect("n is a multiple of the block size");
            let big_rows = big / row_bytes(4096) / BIG_CHUNKS * BIG_CHUNKS;
            // K-quants need n to be a multiple of 256: their "up" case is 768x1536.
            let up = 576usize.next_multiple_of(ty.block_size());
            for (n, rows, chunks) in [(up, 1536, 1), (1536, 576, 1), (4096, big_rows, BIG_CHUNKS)] {
                let case = format!("{n}x{rows}");
                let bytes = row_bytes(n) * rows;
                g.throughput(Throughput::Bytes(bytes as u64));
                // Built on first use, shared by the tiers: a filtered-out case allocates nothing.
                let w: OnceCell<Vec<u8>> = OnceCell::new();
                for &k in &tiers {
                    let mv = k.matvec(ty).expect("every listed type has a matvec");
                    let mv2 = k.matvec2(ty);
                    let id = BenchmarkId::new(k.tier.name(), &case);
                    g.bench_with_input(id, &case, |b, case| {
                        let w = w.get_or_init(|| weights(ty, n, rows));
                        let xq = activation(k, ty, n, 7919);
                        let xr = activation(k, ty, n, 104_729);
                        let mut out = vec![0f32; rows];
                        let (cr, cb) = (rows / chunks, row_bytes(n) * (rows / chunks));
                        b.iter_custom(|iters| {
                            common::timed(
                                (&name, case, k.tier.name()),
                                (bytes, bytes),
                                iters,
                                chunks,
                                |i| {
                                    let (w, out) = (&w[i * cb..][..cb], &mut out[i * cr..][..cr]);
                                    match mv2.filter(|_| two) {
                                        Some(mv2) => mv2(
                                            n,
                                            black_box(w),
                                            black_box(&xq),
                                            black_box(&xr),
                                            black_box(out),
                                        ),
                                        None => mv(n, black_box(w), black_box(&xq), black_box(out)),
                                    }
                                },
                            )
                        });
                        assert!(
                            out.iter().all(|v| v.is_finite()),
                            "{name} {case} {}: non-finite output",
                            k.tier.name()
                        );
                    });
                }
            }
            g.finish();
        }
    }
    for &ty in QuantType::WEIGHTS {
        for two in [false, true] {
            if two && Kernels::scalar().matvec2(ty).is_none() {
                continue;
            }
            bench_matmul(&mut c, &tiers, ty, two);
        }
    }
    c.final_summary();
    common::summary("kernels");
}

/// Weight rows per `Kernels::matmul` call (the runtime's chunk).
const MM_ROWS: usize = 64;

/// `matmul_<type>` (or `matmul2_<type>` with the residual): 8, 32, 64 tokens.
fn bench_matmul(c: &mut Criterion, tiers: &[&'static Kernels], ty: QuantType, two: bool) {
    let name = format!(
        "{}_{}",
        if two { "matmul2" } else { "matmul" },
        ty.name().to_lowercase()
    );
    let mut g = c.benchmark_group(&name);
    g.sampling_mode(SamplingMode::Flat);
    let n = 576usize.next_multiple_of(ty.block_size());
    let rows = 1536;
    let rb = ty.row_bytes(n).expect("n is a multiple of the block size");
    let bytes = rb * rows;
    let w: OnceCell<Vec<u8>> = OnceCell::new();
    for n_tok in [8usize, 32, 64] {
        let case = format!("{n}x{rows}/t{n_tok}");
        g.throughput(Throughput::Elements((n * rows * n_tok) as u64));
        for &k in tiers {
            for per_token in [false, true] {
                if per_token && k.matmul_entry(ty).is_none() {
                    continue; // its matmul already is the per-token fallback
                }
                let label: &'static str = if per_token {
                    Box::leak(format!("{}-per-token", k.tier.name()).into_boxed_str())
                } else {
                    k.tier.name()
                };
                let id = BenchmarkId::new(label, &case);
                g.bench_with_input(id, &case, |b, case| {
                    let w = w.get_or_init(|| weights(ty, n, rows));
                    let (xq, xr, stride) = activations(k, ty, n, n_tok, two);
                    let mut out = vec![0f32; rows * n_tok];
                    let x = ActRows {
                        q: &xq,
                        r: two.then_some(&xr[..]),
                        stride,
                        n_tok,
                    };
                    b.iter_custom(|iters| {
                        let macs = Some((n * rows * n_tok) as u64);
                        common::timed_macs(
                            (&name, case, label),
                            (bytes, bytes),
                            macs,
                            iters,
                            1,
                            |_| {
                                for (wc, oc) in w
                                    .chunks_exact(MM_ROWS * rb)
                                    .zip(out.chunks_exact_mut(MM_ROWS * n_tok))
                                {
                                    if per_token {
                                        per_token_matmul(k, ty, n, black_box(wc), x, oc);
                                    } else {
                                        k.matmul(ty, n, black_box(wc), x, oc);
                                    }
                                }
                            },
                        )
                    });
                    assert!(
                        out.iter().all(|v| v.is_finite()),
                        "{name} {case} {label}: non-finite output"
                    );
                });
            }
        }
    }
    g.finish();
}

/// `n_tok` activation rows for `ty` (and their residual rows), quantized by `k`, at the row
/// stride of one quantized row.
fn activations(
    k: &Kernels,
    ty: QuantType,
    n: usize,
    n_tok: usize,
    two: bool,
) -> (Vec<u8>, Vec<u8>, usize) {
    let vt = ty.vec_dot_type();
    let xb = vt
        .row_bytes(n)
        .expect("n is a multiple of the activation block");
    let (mut q, mut r) = (vec![0u8; xb * n_tok], vec![0u8; xb * n_tok]);
    for t in 0..n_tok {
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * (7919 + 2 * t)) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let (qt, rt) = (&mut q[t * xb..(t + 1) * xb], &mut r[t * xb..(t + 1) * xb]);
        match k.quantize2(vt).filter(|_| two) {
            Some(q2) => q2(&x, qt, rt),
            None => (k.quantize(vt).expect("every vec-dot type has a quantizer"))(&x, qt),
        }
    }
    (q, r, xb)
}

/// What `Kernels::matmul` does for a tier without a batched kernel: one `MatVec` (or `MatVec2`)
/// per token.
fn per_token_matmul(
    k: &Kernels,
    ty: QuantType,
    n: usize,
    w: &[u8],
    x: ActRows<'_>,
    out: &mut [f32],
) {
    let rows = out.len() / x.n_tok;
    let xb = ty.vec_dot_type().row_bytes(n).unwrap_or(0);
    for (t, o) in out.chunks_exact_mut(rows).enumerate() {
        let q = &x.q[t * x.stride..t * x.stride + xb];
        match (x.r, k.matvec2(ty)) {
            (Some(r), Some(mv2)) => mv2(n, w, q, &r[t * x.stride..t * x.stride + xb], o),
            _ => (k.matvec(ty).expect("every listed type has a matvec"))(n, w, q, o),
        }
    }
}
