//! edge-run's kernels against ggml's own (llama.cpp's ggml, built in-process by the `ggml` feature):
//! - dequantization of every weight type with a matvec kernel: bit-exact against ggml's `to_float`, on
//!   rows that ggml itself quantized from random data and on raw random bytes;
//! - the activation quantizers (Q8_0, Q8_1, Q8_K) of every kernel tier: bit-exact against ggml's
//!   reference quantizers (`from_float_ref`, the definition of the formats);
//! - the dot products of every tier against ggml's CPU `vec_dot` on the same bytes, within the f32
//!   rounding bound stated in [`dot_products_match_ggml_vec_dot`].
//!
//! Run: `cargo test --release --features ggml --test ggml_oracle -- --nocapture` (prints the tiers that
//! ran; `EDGE_RUN_EXPECT_TIERS=avx2,avx512vnni` makes a missing tier fail the run).
#![cfg(feature = "ggml")]

// The binary's tools (not part of the runtime library), compiled into this test.
#[allow(dead_code)]
#[path = "../src/bin/edge-run/tools/mod.rs"]
mod tools;

use edge_run::kernels::{Kernels, QuantType, QK, QK_K};
use tools::ggml::Traits;

/// The scalar table's `matvec` types without F32 (it has no blocks to dequantize bit-exactly; F16 is
/// included: its `to_float` is a conversion that must match too). Each must be one of
/// [`QuantType::WEIGHTS`], the types this test covers: a type added to `Kernels::matvec` alone fails.
fn weight_types() -> Vec<QuantType> {
    // Every type the crate knows (ggml's type ids are below 256), in ggml's numbering order.
    let table: Vec<QuantType> = (0..256)
        .filter_map(QuantType::from_ggml)
        .filter(|&t| Kernels::scalar().matvec(t).is_some())
        .collect();
    for t in &table {
        assert!(
            QuantType::WEIGHTS.contains(t),
            "Kernels::matvec has {} which this test does not cover: add it",
            t.name()
        );
    }
    let list: Vec<&str> = table.iter().map(|t| t.name()).collect();
    eprintln!("matvec types in the kernel table: {}", list.join(", "));
    table.into_iter().filter(|&t| t != QuantType::F32).collect()
}

/// The kernel tiers this CPU runs; fails if `EDGE_RUN_EXPECT_TIERS` names one that is missing.
fn tiers() -> Vec<&'static Kernels> {
    let ks: Vec<&'static Kernels> = Kernels::available().collect();
    let names: Vec<&str> = ks.iter().map(|k| k.tier.name()).collect();
    if let Ok(want) = std::env::var("EDGE_RUN_EXPECT_TIERS") {
        for w in want.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            assert!(
                names.contains(&w),
                "EDGE_RUN_EXPECT_TIERS names {w}, but only {names:?} run here"
            );
        }
    }
    ks
}

// --- deterministic random data ------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        // Sum of 4 uniforms, centred: close enough to a bell for test data.
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// A row of `n` values whose 32-element segments each get one of several shapes: plain noise at a
/// random magnitude, uniform, one large outlier, all zero, constant, all negative, and "ties": a block
/// whose absolute maximum is 127 so that Q8 rounding sees exact halves (…, 2.5, -0.5, …).
fn row(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n / 32 {
        let mag = 10f32.powf(rng.unit() * 5.0 - 3.0);
        let shape = rng.next() % 8;
        for i in 0..32 {
            v.push(match shape {
                0 | 1 => rng.normal() * mag,
                2 => (rng.unit() * 2.0 - 1.0) * mag,
                3 => {
                    if i == 7 {
                        50.0 * mag
                    } else {
                        rng.normal() * mag * 0.1
                    }
                }
                4 => 0.0,
                5 => mag,
                6 => -rng.unit() * mag,
                _ => {
                    if i == 0 {
                        127.0
                    } else {
                        ((rng.next() % 255) as f32 - 127.0) + 0.5
                    }
                }
            });
        }
    }
    v
}

/// Row lengths: SmolLM2's widths 576 (not a multiple of 256) and 1536 where the block allows, and 4096.
fn sizes(ty: QuantType) -> [usize; 3] {
    if ty.block_size() == QK_K {
        [QK_K, 1536, 4096]
    } else {
        [576, 1536, 4096]
    }
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

// --- 1. dequantization -----------------------------------------------------------------------------

/// Byte offsets of the f16 scale fields of one block (overwritten with finite values in the raw-bytes
/// case, so most blocks give finite numbers; a few are left random to cover inf/NaN scales too).
fn f16_fields(ty: QuantType) -> &'static [usize] {
    use QuantType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q6K => &[208],
        _ => &[],
    }
}

/// edge-run's dequantization of the row `q` of `ty` equals ggml's `want` bit for bit; `source` says
/// where the bytes came from.
#[track_caller]
fn assert_dequantizes_as_ggml(ty: QuantType, q: &[u8], want: &[f32], source: &str) {
    let n = want.len();
    let mut got = vec![f32::NAN; n];
    assert!(
        edge_run::kernels::dequantize(ty, q, &mut got),
        "{}: dequantize refused",
        ty.name()
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            same_bits(g, w),
            "{} n={n} ({source}) element {i}: edge-run {g} ggml {w}",
            ty.name()
        );
    }
}

#[test]
fn dequantization_is_bit_exact() {
    let mut rng = Rng(0x5eed_0001);
    for ty in weight_types() {
        let g = Traits::of(ty).unwrap();
        let mut checked = 0usize;
        for n in sizes(ty) {
            // (a) random data quantized by ggml.
            for _ in 0..4 {
                let x = row(&mut rng, n);
                let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
                g.quantize(&x, &mut q).unwrap();
                let mut want = vec![0f32; n];
                g.dequantize(&q, &mut want).unwrap();
                assert_dequantizes_as_ggml(ty, &q, &want, "ggml-quantized");
                checked += n;
            }
            // (b) raw random bytes (every quant pattern), scales mostly made finite.
            for _ in 0..4 {
                let mut q: Vec<u8> = (0..ty.row_bytes(n).unwrap())
                    .map(|_| rng.next() as u8)
                    .collect();
                let ts = ty.type_size();
                for (bi, blk) in q.chunks_exact_mut(ts).enumerate() {
                    if bi % 7 == 6 {
                        continue;
                    }
                    for &o in f16_fields(ty) {
                        let h = half::f16::from_f32(
                            (rng.unit() * 2.0 - 1.0) * 10f32.powf(rng.unit() * 4.0 - 4.0),
                        );
                        blk[o..o + 2].copy_from_slice(&h.to_bits().to_le_bytes());
                    }
                }
                let mut want = vec![0f32; n];
                g.dequantize(&q, &mut want).unwrap();
                assert_dequantizes_as_ggml(ty, &q, &want, "raw bytes");
                checked += n;
            }
        }
        eprintln!(
            "dequantize {:5}: {checked} values bit-exact vs ggml to_float",
            ty.name()
        );
    }
}

// --- 2. activation quantizers ----------------------------------------------------------------------

#[test]
fn activation_quantizers_are_bit_exact() {
    let mut rng = Rng(0x5eed_0002);
    let ks = tiers();
    for &vt in QuantType::ACTIVATIONS {
        let g = Traits::of(vt).unwrap();
        let (mut cpu_equal, mut has_ref) = (true, true);
        for n in sizes(vt) {
            for rep in 0..6 {
                let x = row(&mut rng, n);
                let nb = ty_bytes(vt, n);
                let mut cpu = vec![0u8; nb];
                g.quantize(&x, &mut cpu).unwrap();
                // ggml has no portable reference for Q8_K (`from_float_ref` is null): its CPU quantizer
                // is then the definition.
                let mut want = vec![0u8; nb];
                if g.has_quantize_ref() {
                    g.quantize_ref(&x, &mut want).unwrap();
                } else {
                    want.copy_from_slice(&cpu);
                    has_ref = false;
                }
                cpu_equal &= cpu == want;
                for k in &ks {
                    let q = k.quantize(vt).expect("quantizer");
                    let mut got = vec![0u8; nb];
                    q(&x, &mut got);
                    if got != want {
                        let bs = vt.type_size();
                        let b = got
                            .chunks(bs)
                            .zip(want.chunks(bs))
                            .position(|(a, b)| a != b)
                            .unwrap();
                        let byte = (0..bs)
                            .find(|&i| got[b * bs + i] != want[b * bs + i])
                            .unwrap();
                        panic!(
                            "{} tier {} n={n} rep {rep}: block {b} differs from ggml's reference at byte {byte} \
                             (edge-run {:?} vs ggml {:?}); inputs {:?}",
                            vt.name(),
                            k.tier.name(),
                            &got[b * bs..(b + 1) * bs].get(..8),
                            &want[b * bs..(b + 1) * bs].get(..8),
                            &x[b * vt.block_size()..(b * vt.block_size() + 8).min(n)]
                        );
                    }
                }
            }
        }
        let names: Vec<&str> = ks.iter().map(|k| k.tier.name()).collect();
        if has_ref {
            eprintln!(
                "quantize {:4}: tiers {} bit-exact vs ggml from_float_ref (ggml's CPU from_float {} its reference)",
                vt.name(),
                names.join(", "),
                if cpu_equal { "equals" } else { "differs from" }
            );
        } else {
            eprintln!("quantize {:4}: tiers {} bit-exact vs ggml's CPU from_float (ggml has no from_float_ref)", vt.name(), names.join(", "));
        }
    }
}

fn ty_bytes(t: QuantType, n: usize) -> usize {
    t.row_bytes(n).unwrap()
}

// --- 3. dot products -------------------------------------------------------------------------------

/// The "offset" part of each dequantized weight: the value the formats subtract or add after scaling
/// (Q4_1/Q5_1 `m`, Q4_K/Q5_K `dmin·m_j`). The dot products compute `d·Σq·x` and the offset term
/// separately, so their rounding scales with |scaled q|+|offset|, not with |w| (which can be small by
/// cancellation).
fn offsets(ty: QuantType, q: &[u8], n: usize) -> Vec<f32> {
    use QuantType::*;
    let f16 =
        |b: &[u8], o: usize| half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
    let mut off = vec![0f32; n];
    match ty {
        Q4_1 | Q5_1 => {
            for (b, blk) in q.chunks_exact(ty.type_size()).enumerate() {
                off[b * QK..(b + 1) * QK].fill(f16(blk, 2));
            }
        }
        Q4K | Q5K => {
            for (b, blk) in q.chunks_exact(ty.type_size()).enumerate() {
                let dmin = f16(blk, 2);
                let sc: &[u8; 12] = blk[4..16].try_into().unwrap();
                for j in 0..8 {
                    let (_, m) = edge_run::kernels::scalar::get_scale_min_k4(j, sc);
                    off[b * QK_K + j * 32..b * QK_K + (j + 1) * 32].fill(dmin * m as f32);
                }
            }
        }
        _ => {}
    }
    off
}

/// For every weight type and tier: `matvec` of 4 rows (weights quantized by ggml) with an activation
/// quantized by ggml's CPU `from_float` into the vec_dot type, against ggml's `vec_dot` of each row with
/// the same bytes.
///
/// The bound. Both sides compute the same exact integer block sums from the same bytes, so they differ
/// only by f32 rounding: the products of fp16 scales, int→float conversions and the summation of `T`
/// block (or, for F16, element) terms. Recursive f32 summation of `T` terms, each with a few roundings of
/// its own, is off by at most γ_{T+8}·M (γ_k = k·u/(1−k·u), u = 2⁻²⁴) where
/// M = Σ_i (|w_i| + |offset_i|)·|x_i| is the sum of the magnitudes of everything added; two such
/// implementations differ by at most twice that. ggml's own test (`test-quantize-fns`) allows a far
/// larger 0.02·n for a quantized dot product against f32 — it measures quantization error, which is
/// zero here because both sides read the same bytes.
#[test]
fn dot_products_match_ggml_vec_dot() {
    let mut rng = Rng(0x5eed_0003);
    let ks = tiers();
    let u = 2f64.powi(-24);
    const ROWS: usize = 4;
    for ty in weight_types() {
        let g = Traits::of(ty).unwrap();
        let vt_ggml = g.vec_dot_type().expect("ggml vec_dot_type");
        let vt_ours = ty.vec_dot_type();
        if ty == QuantType::F16 {
            assert_eq!((vt_ggml, vt_ours), (QuantType::F16, QuantType::F32));
        } else {
            assert_eq!(
                vt_ggml,
                vt_ours,
                "{}: ggml multiplies with {}, edge-run with {}",
                ty.name(),
                vt_ggml.name(),
                vt_ours.name()
            );
        }
        let gx = Traits::of(vt_ggml).unwrap();
        let mut worst = vec![0f64; ks.len()];
        for n in sizes(ty) {
            for _ in 0..3 {
                let rb = ty.row_bytes(n).unwrap();
                let mut w = vec![0u8; rb * ROWS];
                for r in 0..ROWS {
                    g.quantize(&row(&mut rng, n), &mut w[r * rb..(r + 1) * rb])
                        .unwrap();
                }
                let x = row(&mut rng, n);
                // ggml's activation; edge-run's is the same bytes (or, for F16 weights, the same values as f32).
                let mut xq_g = vec![0u8; vt_ggml.row_bytes(n).unwrap()];
                gx.quantize(&x, &mut xq_g).unwrap();
                // The activation's values (for the bound's magnitude; ggml has no to_float for Q8_1).
                let mut xv = vec![0f32; n];
                if gx.dequantize(&xq_g, &mut xv).is_err() {
                    assert!(edge_run::kernels::dequantize(vt_ggml, &xq_g, &mut xv));
                }
                let xq_ours: Vec<u8> = if ty == QuantType::F16 {
                    xv.iter().flat_map(|v| v.to_le_bytes()).collect()
                } else {
                    xq_g.clone()
                };

                let terms = if ty == QuantType::F16 {
                    n
                } else {
                    n / ty.block_size()
                };
                let gamma = |k: usize| k as f64 * u / (1.0 - k as f64 * u);
                for r in 0..ROWS {
                    let wr = &w[r * rb..(r + 1) * rb];
                    let want = g.vec_dot(n, wr, &xq_g).unwrap();
                    let mut wv = vec![0f32; n];
                    g.dequantize(wr, &mut wv).unwrap();
                    let off = offsets(ty, wr, n);
                    let m: f64 = (0..n)
                        .map(|i| (wv[i].abs() as f64 + off[i].abs() as f64) * xv[i].abs() as f64)
                        .sum();
                    let tol = 2.0 * gamma(terms + 8) * m;
                    for (ki, k) in ks.iter().enumerate() {
                        let mv = k.matvec(ty).unwrap();
                        let mut out = [f32::NAN; ROWS];
                        mv(n, &w, &xq_ours, &mut out);
                        let err = (out[r] as f64 - want as f64).abs();
                        assert!(
                            err <= tol,
                            "{} tier {} n={n} row {r}: edge-run {} vs ggml vec_dot {} (|Δ| {err:.3e} > bound {tol:.3e}, M {m:.3e})",
                            ty.name(),
                            k.tier.name(),
                            out[r],
                            want
                        );
                        if m > 0.0 {
                            worst[ki] = worst[ki].max(err / (u * m));
                        }
                    }
                }
            }
        }
        let report: Vec<String> = ks
            .iter()
            .zip(&worst)
            .map(|(k, w)| format!("{} {:.1}", k.tier.name(), w))
            .collect();
        eprintln!(
            "vec_dot {:5} × {:4}: worst |Δ| in units of u·M: {}",
            ty.name(),
            vt_ggml.name(),
            report.join(", ")
        );
    }
    let names: Vec<&str> = ks.iter().map(|k| k.tier.name()).collect();
    eprintln!("kernel tiers compared with ggml: {}", names.join(", "));
}

/// The wrapper refuses what would make ggml abort (a row that is not a whole number of blocks, or a
/// buffer of the wrong size) with an error naming the type and sizes.
#[test]
fn wrapper_refuses_bad_sizes() {
    let g = Traits::of(QuantType::Q4K).unwrap();
    let mut out = vec![0f32; 100];
    let e = g.dequantize(&[0u8; 144], &mut out).unwrap_err().to_string();
    assert!(e.contains("q4_K") && e.contains("100"), "{e}");
    let e = g
        .vec_dot(256, &[0u8; 144], &[0u8; 10])
        .unwrap_err()
        .to_string();
    assert!(e.contains("10") && e.contains("292"), "{e}");
    let mut q = vec![0u8; 143];
    let e = g.quantize(&[0f32; 256], &mut q).unwrap_err().to_string();
    assert!(e.contains("143") && e.contains("144"), "{e}");
}
