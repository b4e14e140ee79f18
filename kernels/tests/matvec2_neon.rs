//! Fused two-activation matvecs (`MatVec2`) on inputs where every tier must be *exact*: all scales
//! are powers of two — weight `d`/`dmin` 1 or 2 per block, `xq`'s `d` 1 and `xr`'s 1/256 (the
//! `Quantize2` relation the `MatVec2` contract asks for, and a kernel that mixes up the two
//! activations' scales is wrong) — Q4_1/Q5_1 offsets are small integers and the activations' block
//! sums exact, and the quants (and K-quant sub-block scales) are bounded so that the sum of |terms|
//! of every row stays below 2^15. Then every partial sum any kernel forms, in any order, is a
//! multiple of 1/512 that an f32 holds exactly, and the result must equal
//! `Σ deq(w)·deq(xq) + Σ deq(w)·deq(xr)` (computed exactly in f64) bit for bit. This catches what a tolerance can hide in a fused kernel
//! (a block or row of one activation dropped or swapped, a wrong scale, a lane missed), on row
//! counts around the 4-row groups of the NEON legacy kernels (1..=9, 13).
//!
//! Also: on aarch64 every NEON tier reports every quantized type as fused
//! (`Kernels::matvec2_fused`), so the runtime takes the fused path.
//!
//! Every available tier is checked (scalar included) and the tiers run are printed;
//! `EDGE_RUN_EXPECT_TIERS=neon,neon-dotprod` (comma list) makes the run fail if a named tier was
//! not checked, as in tests/tiers.rs.
use edge_run_kernels::*;

mod common;
use common::{assert_expected_tiers_ran, Rng};

/// Uniform in -amp..=amp.
fn int(g: &mut Rng, amp: i32) -> i32 {
    (g.u64() % (2 * amp as u64 + 1)) as i32 - amp
}

fn f16(v: f32) -> [u8; 2] {
    F16Bits::from_f32(v).0
}

/// Random weight rows of `ty` with `d` (and `dmin`) 1 or 2 per block, Q4_1/Q5_1 `m` in 0..=3,
/// K-quant sub-block scales and mins held to 0..=3 (Q6_K's to -2..=2).
fn weights(ty: QuantType, n: usize, rows: usize, g: &mut Rng) -> Vec<u8> {
    use QuantType::*;
    let mut w: Vec<u8> = (0..ty.row_bytes(n).unwrap() * rows)
        .map(|_| g.u64() as u8)
        .collect();
    for b in w.chunks_exact_mut(ty.type_size()) {
        let d = f16((1 + g.u64() % 2) as f32);
        match ty {
            Q4_0 | Q5_0 | Q8_0 => b[..2].copy_from_slice(&d),
            Q4_1 | Q5_1 => {
                b[..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&f16((g.u64() % 4) as f32));
            }
            Q4K | Q5K => {
                b[..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&f16((1 + g.u64() % 2) as f32));
                // Every packed 6-bit field (and its spliced high bits) at most 3.
                for s in &mut b[4..16] {
                    *s &= 0x03;
                }
            }
            Q6K => {
                for s in &mut b[192..208] {
                    *s = int(g, 2) as i8 as u8;
                }
                b[208..210].copy_from_slice(&d);
            }
            _ => unreachable!(),
        }
    }
    w
}

/// An activation of format `vdt` with quants in -amp..=amp, scale `d` (a power of two) and
/// consistent block sums (Q8_1 `s` = d·Σ qs, exact in f16 for |Σ| <= 2048; Q8_K `bsums`).
fn activation(vdt: QuantType, n: usize, amp: i32, d: f32, g: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    match vdt {
        QuantType::Q8_0 | QuantType::Q8_1 => {
            for _ in 0..n / 32 {
                let q: Vec<i32> = (0..32).map(|_| int(g, amp)).collect();
                out.extend_from_slice(&f16(d));
                if vdt == QuantType::Q8_1 {
                    out.extend_from_slice(&f16(d * q.iter().sum::<i32>() as f32));
                }
                out.extend(q.iter().map(|&v| v as i8 as u8));
            }
        }
        QuantType::Q8K => {
            for _ in 0..n / 256 {
                let q: Vec<i32> = (0..256).map(|_| int(g, amp)).collect();
                out.extend_from_slice(&d.to_le_bytes());
                out.extend(q.iter().map(|&v| v as i8 as u8));
                for c in q.chunks(16) {
                    out.extend_from_slice(&(c.iter().sum::<i32>() as i16).to_le_bytes());
                }
            }
        }
        _ => unreachable!(),
    }
    assert_eq!(out.len(), vdt.row_bytes(n).unwrap());
    out
}

/// (Σ w_i·x_i, Σ |w_i·x_i|) over the dequantized values, exactly (f64 holds every product of two
/// f32 and, here, every sum).
fn exact_dot(ty: QuantType, n: usize, row: &[u8], x: &[u8]) -> (f64, f64) {
    let mut wd = vec![0.0f32; n];
    let mut xd = vec![0.0f32; n];
    assert!(dequantize(ty, row, &mut wd));
    assert!(dequantize(ty.vec_dot_type(), x, &mut xd));
    let (mut s, mut a) = (0f64, 0f64);
    for (w, x) in wd.iter().zip(&xd) {
        assert!((2.0 * w).fract() == 0.0 && (256.0 * x).fract() == 0.0);
        let t = *w as f64 * *x as f64;
        s += t;
        a += t.abs();
    }
    (s, a)
}

#[test]
fn matvec2_is_exact_on_integer_inputs_in_every_tier() {
    let mut checked_tiers = vec![];
    let mut rows_checked = 0usize;
    for k in Kernels::available() {
        for (ti, &ty) in QuantType::QUANTIZED.iter().enumerate() {
            let mv2 = k.matvec2(ty).unwrap();
            let is_k = ty.block_size() == QK_K;
            // Quant bounds keeping Σ|terms| of both activations below 2^15 (asserted below).
            let amp = match ty {
                _ if is_k => 1,
                QuantType::Q8_0 => 1,
                QuantType::Q4_1 | QuantType::Q5_1 => 3,
                _ => 7,
            };
            let ns: &[usize] = if is_k { &[256, 512] } else { &[32, 64, 160] };
            for &n in ns {
                for rows in (1..=9).chain([13]) {
                    let mut g = Rng((ti * 1_000_000 + n * 100 + rows) as u64);
                    let w = weights(ty, n, rows, &mut g);
                    let vdt = ty.vec_dot_type();
                    let xq = activation(vdt, n, amp, 1.0, &mut g);
                    let xr = activation(vdt, n, 31, 1.0 / 256.0, &mut g);
                    let mut out = vec![f32::NAN; rows];
                    mv2(n, &w, &xq, &xr, &mut out);
                    let rb = ty.row_bytes(n).unwrap();
                    for (r, &got) in out.iter().enumerate() {
                        let row = &w[r * rb..(r + 1) * rb];
                        let (sq, aq) = exact_dot(ty, n, row, &xq);
                        let (sr, ar) = exact_dot(ty, n, row, &xr);
                        assert!(
                            aq + ar < (1 << 15) as f64,
                            "{} n={n}: inputs too large for exactness ({aq} + {ar})",
                            ty.name()
                        );
                        assert_eq!(
                            got,
                            (sq + sr) as f32,
                            "{} matvec2_{} n={n} rows={rows} row {r}: xq part {sq}, xr part {sr}",
                            k.tier.name(),
                            ty.name()
                        );
                        rows_checked += 1;
                    }
                }
            }
        }
        checked_tiers.push(k.tier.name());
    }
    eprintln!(
        "matvec2 exact on integer inputs: tiers run: {} ({rows_checked} rows)",
        checked_tiers.join(", ")
    );
    assert_expected_tiers_ran(&checked_tiers, "checked");
}

#[test]
fn neon_tiers_report_every_type_fused() {
    let neon: Vec<&Kernels> = Kernels::available()
        .filter(|k| matches!(k.tier, Tier::Neon | Tier::NeonDotprod))
        .collect();
    for k in &neon {
        for &ty in QuantType::QUANTIZED {
            assert!(
                k.matvec2_fused(ty),
                "{}: matvec2 for {} is not fused",
                k.tier.name(),
                ty.name()
            );
        }
    }
    let names: Vec<&str> = neon.iter().map(|k| k.tier.name()).collect();
    if cfg!(target_arch = "aarch64") {
        assert!(!names.is_empty(), "no NEON tier on an aarch64 CPU");
        eprintln!("NEON tiers checked for fused matvec2: {}", names.join(", "));
    } else {
        eprintln!("NEON tiers checked for fused matvec2: none (not an aarch64 build)");
    }
}
