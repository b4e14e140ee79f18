//! The batched product (`Kernels::matmul`) and the `q8x2` activation quantizer (`Quantize2`).
//!
//! - `quantize2` (scalar reference): the residual block's scale is exactly the main block's / 256,
//!   `x ≈ d·(q + r/256)` to within d/512, and each row is a valid block row on its own.
//! - `quantize2` in every SIMD tier against the scalar reference: identical scales and quants (a quant
//!   may differ by one only where the scalar's scaled value lies within 1e-4 of a rounding tie), the
//!   Q8_1 residual sums `s` within one f16 ulp plus the f32 rounding of Σx.
//! - `matmul` in every tier (with its own kernel or the per-token fallback) against one scalar
//!   `MatVec`/`MatVec2` per token, for every weight type, with and without the residual, on
//!   1..=9 tokens × 1..=9 rows × every block-count tail, with padded activation strides; the
//!   tolerance of tests/tiers.rs per output (twice it with a residual: two dot products).
//! - The shape contract: inconsistent shapes give NaN outputs (release) or a debug assertion.
mod common;
use common::*;
use edge_run_kernels::*;

/// An 8-byte-aligned byte buffer of `len` bytes viewed as `&mut [u8]`.
fn buf(len: usize) -> Vec<u64> {
    vec![0u64; len.div_ceil(8)]
}

/// `tokens` activation rows of `n` elements, quantized for weights of `ty` by `k` (with the residual
/// rows when `two`), at a row stride of the row size plus `pad` bytes.
struct Acts {
    q: Vec<u64>,
    r: Vec<u64>,
    stride: usize,
    n_tok: usize,
    two: bool,
    len: usize,
}

impl Acts {
    fn new(k: &Kernels, ty: QuantType, x: &[f32], n: usize, pad: usize, two: bool) -> Acts {
        let vt = ty.vec_dot_type();
        let xb = vt.row_bytes(n).unwrap();
        let n_tok = x.len() / n;
        let stride = xb + pad;
        let len = stride * n_tok;
        let (mut q, mut r) = (buf(len), buf(len));
        for t in 0..n_tok {
            let xt = &x[t * n..(t + 1) * n];
            let qt = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut q)[t * stride..t * stride + xb];
            if two {
                let rt =
                    &mut bytemuck::cast_slice_mut::<u64, u8>(&mut r)[t * stride..t * stride + xb];
                (k.quantize2(vt).unwrap())(xt, qt, rt);
            } else {
                (k.quantize(vt).unwrap())(xt, qt);
            }
        }
        Acts {
            q,
            r,
            stride,
            n_tok,
            two,
            len,
        }
    }
    fn rows(&self) -> ActRows<'_> {
        ActRows {
            q: &bytemuck::cast_slice(&self.q)[..self.len],
            r: self.two.then(|| &bytemuck::cast_slice(&self.r)[..self.len]),
            stride: self.stride,
            n_tok: self.n_tok,
        }
    }
    fn q_row(&self, t: usize, xb: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.q)[t * self.stride..t * self.stride + xb]
    }
    fn r_row(&self, t: usize, xb: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.r)[t * self.stride..t * self.stride + xb]
    }
}

/// The row length of test case `case` for activation type `vt`: 1..=`q8k_blocks` blocks of 256
/// for Q8_K, 1..=`blocks` blocks of 32 for the others.
fn quantize2_len(vt: QuantType, case: usize, q8k_blocks: usize, blocks: usize) -> usize {
    if vt == QuantType::Q8K {
        256 * (1 + case % q8k_blocks)
    } else {
        32 * (1 + case % blocks)
    }
}

#[test]
fn quantize2_reference_is_a_16_bit_quantization() {
    let mut g = Rng(0x5eed_0002);
    for &vt in QuantType::ACTIVATIONS {
        for case in 0..200 {
            let n = quantize2_len(vt, case, 3, 9);
            let x = g.activations(n, ties_or_outliers(case));
            let xb = vt.row_bytes(n).unwrap();
            let (mut q, mut r) = (buf(xb), buf(xb));
            let (qb, rb) = (
                &mut bytemuck::cast_slice_mut::<u64, u8>(&mut q)[..xb],
                &mut bytemuck::cast_slice_mut::<u64, u8>(&mut r)[..xb],
            );
            (Kernels::scalar().quantize2(vt).unwrap())(&x, qb, rb);
            let (mut xq, mut xr) = (vec![0.0f32; n], vec![0.0f32; n]);
            assert!(dequantize(vt, qb, &mut xq) && dequantize(vt, rb, &mut xr));
            let ts = vt.type_size();
            let bs = vt.block_size();
            for b in 0..n / bs {
                let (d, dr) = match vt {
                    QuantType::Q8K => (
                        f32::from_le_bytes(qb[b * ts..b * ts + 4].try_into().unwrap()),
                        f32::from_le_bytes(rb[b * ts..b * ts + 4].try_into().unwrap()),
                    ),
                    _ => (f16_at(qb, b * ts), f16_at(rb, b * ts)),
                };
                assert_eq!(
                    dr,
                    d / 256.0,
                    "{} block {b}: residual scale is not d/256",
                    vt.name()
                );
                for i in b * bs..(b + 1) * bs {
                    let err = (x[i] as f64 - (xq[i] as f64 + xr[i] as f64)).abs();
                    // d/512 from rounding, plus f32 rounding of the residual and a clamped tie.
                    let tol = (d.abs() as f64) / 256.0 * 1.0001 + 1e-6 * x[i].abs() as f64;
                    assert!(
                        err <= tol,
                        "{} n={n} element {i}: x={} q+r={} err {err:e} > {tol:e}",
                        vt.name(),
                        x[i],
                        xq[i] + xr[i]
                    );
                }
                if vt == QuantType::Q8_1 {
                    let sum_x: f64 = x[b * 32..(b + 1) * 32].iter().map(|&v| v as f64).sum();
                    let s = f16_at(qb, b * ts + 2) as f64 + f16_at(rb, b * ts + 2) as f64;
                    let tol = 1e-3 * (f16_at(qb, b * ts + 2) as f64).abs()
                        + 1e-5
                            * x[b * 32..(b + 1) * 32]
                                .iter()
                                .map(|v| v.abs() as f64)
                                .sum::<f64>()
                        + 1e-7;
                    assert!(
                        (s - sum_x).abs() <= tol,
                        "Q8_1 block {b}: s_q + s_r = {s}, Σx = {sum_x}"
                    );
                }
            }
        }
    }
}

#[test]
fn quantize2_scale_rounds_up_to_the_residual_grid() {
    // Below 2⁻⁶ the scale is a multiple of 2⁻¹⁶ (so scale/256 is an f16); at or above it is f16(amax/127).
    for i in 0..20_000u32 {
        let amax = (i as f32 + 0.5) * 1.7e-4;
        let d = scalar::x2_scale_f16(amax).to_f32();
        let plain = F16Bits::from_f32(amax / 127.0).to_f32();
        if plain >= 1.0 / 64.0 {
            assert_eq!(d, plain, "amax {amax}");
        } else {
            assert!(
                d >= plain && d - plain < 1.0 / 65536.0,
                "amax {amax}: {d} vs {plain}"
            );
            assert_eq!(
                (d * 65536.0).fract(),
                0.0,
                "amax {amax}: {d} is not a multiple of 2^-16"
            );
        }
        assert_eq!(F16Bits::from_f32(d / 256.0).to_f32(), d / 256.0);
    }
}

fn near_tie(v: f32) -> bool {
    let f = (v.abs() as f64).fract();
    (f - 0.5).abs() < 1e-4
}

/// One tier's `quantize2` for `vt` against the scalar reference on `x`.
fn check_quantize2(k: &Kernels, vt: QuantType, x: &[f32]) -> Result<(), String> {
    let n = x.len();
    let xb = vt.row_bytes(n).unwrap();
    let mut bufs = [buf(xb), buf(xb), buf(xb), buf(xb)];
    let [q0, r0, q1, r1] = &mut bufs;
    let (q0, r0) = (
        &mut bytemuck::cast_slice_mut::<u64, u8>(q0)[..xb],
        &mut bytemuck::cast_slice_mut::<u64, u8>(r0)[..xb],
    );
    let (q1, r1) = (
        &mut bytemuck::cast_slice_mut::<u64, u8>(q1)[..xb],
        &mut bytemuck::cast_slice_mut::<u64, u8>(r1)[..xb],
    );
    (Kernels::scalar().quantize2(vt).unwrap())(x, q0, r0);
    (k.quantize2(vt).unwrap())(x, q1, r1);
    let ts = vt.type_size();
    let bs = vt.block_size();
    // Bytes of the scale and offset of the quants in a block.
    let (dl, ql) = match vt {
        QuantType::Q8K => (4, 4),
        QuantType::Q8_1 => (2, 4),
        _ => (2, 2),
    };
    for b in 0..n / bs {
        let blk = b * ts..(b + 1) * ts;
        let name = format!("{} quantize2_{} n={n} block {b}", k.tier.name(), vt.name());
        for (which, want, got) in [
            ("q", &q0[blk.clone()], &q1[blk.clone()]),
            ("r", &r0[blk.clone()], &r1[blk.clone()]),
        ] {
            if want[..dl] != got[..dl] {
                return Err(format!("{name}: {which} scale differs"));
            }
            let d = match vt {
                QuantType::Q8K => f32::from_le_bytes(want[..4].try_into().unwrap()),
                _ => f16_at(want, 0),
            };
            for i in 0..bs {
                let (a, c) = (want[ql + i] as i8, got[ql + i] as i8);
                if a != c {
                    // Only a rounding tie may go either way (checked on the main quants' scaled value).
                    let v = if which == "q" && d != 0.0 {
                        x[b * bs + i] / d
                    } else {
                        0.5
                    };
                    if (a as i32 - c as i32).abs() > 1 || !near_tie(v) {
                        return Err(format!("{name}: {which}[{i}] scalar {a}, tier {c}"));
                    }
                }
            }
        }
        if vt == QuantType::Q8_1 {
            for (which, want, got) in [
                ("q", &q0[blk.clone()], &q1[blk.clone()]),
                ("r", &r0[blk.clone()], &r1[blk.clone()]),
            ] {
                let (a, c) = (f16_at(want, 2) as f64, f16_at(got, 2) as f64);
                let tol = 1e-3 * a.abs()
                    + 1e-6
                        * x[b * 32..(b + 1) * 32]
                            .iter()
                            .map(|v| v.abs() as f64)
                            .sum::<f64>();
                if (a - c).abs() > tol {
                    return Err(format!("{name}: {which}.s scalar {a}, tier {c}"));
                }
            }
        }
        if vt == QuantType::Q8K {
            for (which, blkb) in [("q", &q1[blk.clone()]), ("r", &r1[blk.clone()])] {
                for j in 0..16 {
                    let s: i32 = (0..16).map(|i| blkb[4 + 16 * j + i] as i8 as i32).sum();
                    let stored =
                        i16::from_le_bytes([blkb[4 + 256 + 2 * j], blkb[4 + 256 + 2 * j + 1]])
                            as i32;
                    if s != stored {
                        return Err(format!(
                            "{name}: {which}.bsums[{j}] = {stored}, Σ quants = {s}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn quantize2_every_tier_matches_scalar() {
    compare_every_tier("quantize2", |k| {
        let mut g = Rng(0x9a2_0001);
        for &vt in QuantType::ACTIVATIONS {
            for case in 0..300 {
                let n = quantize2_len(vt, case, 4, 11);
                let x = g.activations(n, ties_or_outliers(case));
                check_quantize2(k, vt, &x)?;
            }
        }
        Ok(())
    });
}

/// `k.matmul` for `ty` against one scalar matvec (or matvec2) per token.
fn check_matmul(
    k: &Kernels,
    ty: QuantType,
    nblocks: usize,
    rows: usize,
    n_tok: usize,
    two: bool,
    seed: u64,
) -> Result<(), String> {
    check_matmul_n(k, ty, n_for(ty, nblocks), rows, n_tok, two, seed)
}

/// [`check_matmul`] with rows of `n` elements.
fn check_matmul_n(
    k: &Kernels,
    ty: QuantType,
    n: usize,
    rows: usize,
    n_tok: usize,
    two: bool,
    seed: u64,
) -> Result<(), String> {
    let mut g = Rng(seed);
    let w = weights(ty, n, rows, &mut g);
    let x = g.activations(n * n_tok, Special::Ties);
    let two = two && QuantType::QUANTIZED.contains(&ty);
    // Activations quantized by the scalar tier so that both sides multiply the same bytes.
    let acts = Acts::new(Kernels::scalar(), ty, &x, n, (seed % 3) as usize * 8, two);
    check_against_scalar(k, ty, n, &w, &acts, seed)
}

/// `k.matmul` of the weight rows `w` with `acts` against one scalar matvec (or matvec2) per token.
fn check_against_scalar(
    k: &Kernels,
    ty: QuantType,
    n: usize,
    w: &[u8],
    acts: &Acts,
    seed: u64,
) -> Result<(), String> {
    let (n_tok, two) = (acts.n_tok, acts.two);
    let rows = w.len() / ty.row_bytes(n).unwrap();
    let mut got = vec![f32::NAN; n_tok * rows];
    assert!(k.matmul(ty, n, w, acts.rows(), &mut got));
    let s = Kernels::scalar();
    let xb = ty.vec_dot_type().row_bytes(n).unwrap();
    let rb = ty.row_bytes(n).unwrap();
    let per_dot = match ty {
        QuantType::F32 | QuantType::F16 => n,
        _ => 2 * (n / ty.block_size()),
    } as f64;
    for t in 0..n_tok {
        let mut want = vec![0.0f32; rows];
        if two {
            (s.matvec2(ty).unwrap())(n, w, acts.q_row(t, xb), acts.r_row(t, xb), &mut want);
        } else {
            (s.matvec(ty).unwrap())(n, w, acts.q_row(t, xb), &mut want);
        }
        for r in 0..rows {
            let row = &w[r * rb..(r + 1) * rb];
            let mut mag = magnitude(ty, n, row, acts.q_row(t, xb));
            if two {
                mag += magnitude(ty, n, row, acts.r_row(t, xb));
            }
            let tol = dot_tol(if two { 2.0 * per_dot + 1.0 } else { per_dot }, mag);
            let got = got[t * rows + r];
            if !within(got, want[r], tol) {
                return Err(format!(
                    "{} matmul_{}{}: n={n} rows={rows} n_tok={n_tok} seed={seed:#x} token {t} row {r}: tier {got:e}, scalar {:e} (tol {tol:e})",
                    k.tier.name(),
                    ty.name(),
                    if two { " (q8x2)" } else { "" },
                    want[r]
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn matmul_every_tier_matches_per_token_scalar() {
    let tiers: Vec<_> = Kernels::available().collect();
    let mut mm_entries = vec![];
    for k in &tiers {
        let own: Vec<_> = QuantType::WEIGHTS
            .iter()
            .filter(|&&t| k.matmul_entry(t).is_some())
            .map(|t| t.name())
            .collect();
        mm_entries.push(format!("{}: [{}]", k.tier.name(), own.join(" ")));
    }
    eprintln!(
        "matmul kernels of their own (others use the per-token fallback): {}",
        mm_entries.join("; ")
    );
    // The scalar tier is checked too: its fallback must equal the per-token reference exactly.
    for k in tiers {
        let mut failures = vec![];
        for &ty in QuantType::WEIGHTS {
            for (i, (nblocks, rows, n_tok)) in [
                (1, 1, 1),
                (1, 9, 1),
                (2, 5, 3),
                (3, 4, 4),
                (4, 8, 8),
                (5, 7, 9),
                (7, 3, 5),
                (8, 16, 6),
                (9, 2, 2),
                (6, 12, 7),
            ]
            .into_iter()
            .enumerate()
            {
                for two in [false, true] {
                    let seed = 0x3a7_0000 + (i as u64) * 17 + two as u64 + (ty as u64) * 1000;
                    if let Err(e) = check_matmul(k, ty, nblocks, rows, n_tok, two, seed) {
                        failures.push(e);
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
    compare_every_tier("matmul", |_| Ok(()));
}

#[test]
fn matmul_shape_contract() {
    let k = Kernels::best();
    let ty = QuantType::Q4_0;
    let n = 64;
    let w = vec![0u8; ty.row_bytes(n).unwrap() * 2];
    let xq = vec![0u8; 2 * 68];
    let good = ActRows {
        q: &xq,
        r: None,
        stride: 68,
        n_tok: 2,
    };
    let mut out = vec![1.0f32; 4];
    assert!(k.matmul(ty, n, &w, good, &mut out));
    assert_eq!(out, [0.0; 4]);
    // n == 0: zeros; a type without a kernel: false and the output untouched.
    let mut out = vec![1.0f32; 4];
    assert!(k.matmul(ty, 0, &w, good, &mut out) && out == [0.0; 4]);
    let mut out = vec![1.0f32; 4];
    assert!(!k.matmul(QuantType::Q8K, n, &w, good, &mut out) && out == [1.0; 4]);
    let bad = [
        ActRows { stride: 60, ..good }, // stride shorter than a row
        ActRows {
            q: &xq[..100],
            ..good
        }, // second row missing
        ActRows {
            r: Some(&xq[..100]),
            ..good
        }, // residual too short
    ];
    for (i, x) in bad.into_iter().enumerate() {
        let mut out = vec![1.0f32; 4];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            k.matmul(ty, n, &w, x, &mut out)
        }));
        if cfg!(debug_assertions) {
            assert!(r.is_err(), "case {i}: no debug assertion");
        } else {
            assert!(
                r.unwrap() && out.iter().all(|v| v.is_nan()),
                "case {i}: {out:?}"
            );
        }
    }
    // Too few weight rows for the output, and an output that is not a whole number of tokens.
    for (w_len, out_len) in [(w.len() / 2, 4), (w.len(), 5)] {
        let mut out = vec![1.0f32; out_len];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            k.matmul(ty, n, &w[..w_len], good, &mut out)
        }));
        if cfg!(debug_assertions) {
            assert!(r.is_err());
        } else {
            assert!(out.iter().all(|v| v.is_nan()));
        }
    }
}

/// Shapes past the kernels' internal steps: more tokens than one pass (64), more blocks than one
/// header chunk (32 legacy blocks), row counts that leave partial 8- and 16-row tiles, and F32/F16
/// row lengths that are not a multiple of any vector.
#[test]
fn matmul_large_and_ragged_shapes() {
    compare_every_tier("matmul (large shapes)", |k| {
        let mut failures = vec![];
        for &ty in QuantType::WEIGHTS {
            let ns: &[usize] = match ty {
                QuantType::F32 | QuantType::F16 => &[1, 7, 17, 33, 100, 1030],
                QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => &[256 * 9],
                _ => &[32 * 65],
            };
            for &n in ns {
                for (rows, n_tok) in [(37, 75), (16, 129), (9, 66)] {
                    for two in [false, true] {
                        let seed = 0x1a7_0000 + n as u64 * 7 + rows as u64 + two as u64;
                        if let Err(e) = check_matmul_n(k, ty, n, rows, n_tok, two, seed) {
                            failures.push(e);
                        }
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    });
}

/// Every weight quant at its largest (and smallest) value against activations of ±127 and residuals
/// of −128 (scales 1 and 1/256): the integer sums are at their bounds, where an i16 or i32
/// intermediate that could overflow (or a saturating `vpmaddubsw`) would show.
#[test]
fn matmul_extreme_values_do_not_overflow() {
    compare_every_tier("matmul (extreme values)", |k| {
        let mut failures = vec![];
        for &ty in QuantType::QUANTIZED {
            let n = if ty.block_size() == 256 { 512 } else { 128 };
            for (fill, act) in [(0xffu8, 127i8), (0xff, -127), (0x80, -128), (0x77, 127)] {
                let w = extreme_weights(ty, n, 21, fill);
                for two in [false, true] {
                    let acts = extreme_acts(ty, n, 19, act, two);
                    if let Err(e) = check_against_scalar(k, ty, n, &w, &acts, fill as u64) {
                        failures.push(e);
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    });
}

/// `rows` rows of `ty` whose quant bytes are all `fill` and whose scales are 1 (K-quants: the 6-bit
/// scales and mins from `fill` too; Q6_K: its i8 scales).
fn extreme_weights(ty: QuantType, n: usize, rows: usize, fill: u8) -> Vec<u8> {
    let mut w = vec![fill; ty.row_bytes(n).unwrap() * rows];
    let one = F16Bits::from_f32(1.0).0;
    let offs: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
        _ => unreachable!(),
    };
    for blk in w.chunks_exact_mut(ty.type_size()) {
        for &o in offs {
            blk[o..o + 2].copy_from_slice(&one);
        }
    }
    w
}

/// `n_tok` activation rows for `ty` whose quants are all `q` (scale 1), and residual rows of −128
/// (scale 1/256) when `two`; Q8_1 sums and Q8_K bsums consistent with the quants.
fn extreme_acts(ty: QuantType, n: usize, n_tok: usize, q: i8, two: bool) -> Acts {
    let vt = ty.vec_dot_type();
    let xb = vt.row_bytes(n).unwrap();
    let block = |q: i8, d: f32| -> Vec<u8> {
        match vt {
            QuantType::Q8K => {
                let mut b = d.to_le_bytes().to_vec();
                b.extend(std::iter::repeat_n(q as u8, 256));
                for _ in 0..16 {
                    b.extend((16 * q as i16).to_le_bytes());
                }
                b
            }
            _ => {
                let mut b = F16Bits::from_f32(d).0.to_vec();
                if vt == QuantType::Q8_1 {
                    b.extend(F16Bits::from_f32(d * 32.0 * q as f32).0);
                }
                b.extend(std::iter::repeat_n(q as u8, 32));
                b
            }
        }
    };
    let row = |q: i8, d: f32| -> Vec<u8> { block(q, d).repeat(n / vt.block_size()) };
    let (qr, rr) = (row(q, 1.0), row(-128, 1.0 / 256.0));
    let (mut qb, mut rb) = (buf(xb * n_tok), buf(xb * n_tok));
    for t in 0..n_tok {
        bytemuck::cast_slice_mut::<u64, u8>(&mut qb)[t * xb..(t + 1) * xb].copy_from_slice(&qr);
        bytemuck::cast_slice_mut::<u64, u8>(&mut rb)[t * xb..(t + 1) * xb].copy_from_slice(&rr);
    }
    Acts {
        q: qb,
        r: rb,
        stride: xb,
        n_tok,
        two,
        len: xb * n_tok,
    }
}
