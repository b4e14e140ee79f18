//! The scalar reference kernels against independent implementations.
//!
//! Fixtures in `tests/data/` were made by `kernels/tools/gen_fixtures.py` with gguf-py (llama.cpp's
//! Python package) and numpy; `tests/data/PROVENANCE.md` says which oracle covers which type.
//! - dequantization: bit-exact against gguf-py for random valid blocks of every type;
//! - weight quantizers Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and activation quantizers Q8_0/Q8_1/Q8_K: bit-exact;
//! - dot products / matvec: against f64 sums of the oracle's dequantized values, with tolerances
//!   derived below from the q8 rounding and from f32 accumulation;
//! - K-quant weight quantizers (no oracle available): round-trip error bounds.
mod common;
use bytemuck::Zeroable;
use common::{box_muller, f16_at, offset_mag};
use edge_run_kernels::scalar::*;
use edge_run_kernels::*;

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const N: usize = 768;

fn weights_src() -> Vec<f32> {
    f32s(include_bytes!("data/weights_src.f32"))
}
fn act_src() -> Vec<f32> {
    f32s(include_bytes!("data/act_src.f32"))
}
const ACT_Q8_0: &[u8] = include_bytes!("data/act_q8_0.bin");
const ACT_Q8_1: &[u8] = include_bytes!("data/act_q8_1.bin");
const ACT_Q8_K: &[u8] = include_bytes!("data/act_q8_k.bin");

/// `(type, data/<stem>_rand.bin, its gguf-py dequantization data/<stem>_rand_deq.f32)`.
macro_rules! rand_fixture {
    ($ty:expr, $stem:literal) => {
        (
            $ty,
            &include_bytes!(concat!("data/", $stem, "_rand.bin"))[..],
            f32s(include_bytes!(concat!("data/", $stem, "_rand_deq.f32"))),
        )
    };
}

/// (type, random block bytes, gguf-py dequantization of them)
fn rand_fixtures() -> Vec<(QuantType, &'static [u8], Vec<f32>)> {
    use QuantType::*;
    vec![
        rand_fixture!(Q4_0, "q4_0"),
        rand_fixture!(Q4_1, "q4_1"),
        rand_fixture!(Q5_0, "q5_0"),
        rand_fixture!(Q5_1, "q5_1"),
        rand_fixture!(Q8_0, "q8_0"),
        rand_fixture!(Q4K, "q4_k"),
        rand_fixture!(Q5K, "q5_k"),
        rand_fixture!(Q6K, "q6_k"),
    ]
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g:e} ({:#010x}), oracle {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8], block: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let b = i / block;
        panic!(
            "{what}: first difference at byte {i} (block {b}, offset {}):\n got    {:?}\n oracle {:?}",
            i % block,
            &got[b * block..(b + 1) * block],
            &want[b * block..(b + 1) * block]
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Dequantization
// ------------------------------------------------------------------------------------------------

#[test]
fn dequantize_random_blocks_bit_exact() {
    for (ty, bytes, want) in rand_fixtures() {
        assert_eq!(want.len(), N);
        let mut out = vec![f32::NAN; N];
        assert!(
            dequantize(ty, bytes, &mut out),
            "{}: dispatcher refused",
            ty.name()
        );
        assert_bits_eq(ty.name(), &out, &want);
        // The same bytes one byte off alignment go through the same code (blocks are align 1).
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        let mut out2 = vec![0.0; N];
        assert!(dequantize(ty, &shifted[1..], &mut out2));
        assert_bits_eq(ty.name(), &out2, &want);
    }
}

#[test]
fn dequantize_typed_functions_match_oracle() {
    let fixtures = rand_fixtures();
    // Each typed function on the fixture of its type (the functions in `rand_fixtures` order).
    macro_rules! check_in_fixture_order {
        ($($deq:ident),+) => {
            let mut out = vec![0.0f32; N];
            let mut next = fixtures.iter();
            $(
                let (_, bytes, want) = next.next().unwrap();
                $deq(bytemuck::cast_slice(bytes), &mut out);
                assert_bits_eq(stringify!($deq), &out, want);
            )+
            assert!(next.next().is_none(), "a fixture without its typed function");
        };
    }
    check_in_fixture_order!(
        dequantize_row_q4_0,
        dequantize_row_q4_1,
        dequantize_row_q5_0,
        dequantize_row_q5_1,
        dequantize_row_q8_0,
        dequantize_row_q4_k,
        dequantize_row_q5_k,
        dequantize_row_q6_k
    );
}

#[test]
fn dequantize_f16_bf16_bit_exact() {
    let bytes = include_bytes!("data/f16_rand.bin");
    let want = f32s(include_bytes!("data/f16_rand_deq.f32"));
    let mut out = vec![0.0; want.len()];
    assert!(dequantize(QuantType::F16, bytes, &mut out));
    assert_bits_eq("F16", &out, &want);

    let bytes = include_bytes!("data/bf16_quant.bin");
    let want = f32s(include_bytes!("data/bf16_quant_deq.f32"));
    let mut out = vec![0.0; want.len()];
    assert!(dequantize(QuantType::BF16, bytes, &mut out));
    assert_bits_eq("BF16", &out, &want);

    let src = weights_src();
    let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0.0; src.len()];
    assert!(dequantize(QuantType::F32, &bytes, &mut out));
    assert_bits_eq("F32", &out, &src);
}

#[test]
fn dequantize_rejects_bad_sizes_without_touching_out() {
    let f = rand_fixtures();
    for (ty, bytes, _) in &f {
        let bs = ty.block_size();
        let mut out = vec![7.0f32; N];
        assert!(
            !dequantize(*ty, &bytes[..bytes.len() - 1], &mut out),
            "{} short bytes",
            ty.name()
        );
        assert!(
            !dequantize(*ty, bytes, &mut out[..N - bs]),
            "{} short out",
            ty.name()
        );
        assert!(
            !dequantize(*ty, bytes, &mut out[..N - 1]),
            "{} partial block",
            ty.name()
        );
        assert!(
            out.iter().all(|&v| v == 7.0),
            "{}: out was written",
            ty.name()
        );
    }
    let mut out = [0.0f32; 3];
    assert!(!dequantize(QuantType::F16, &[0u8; 5], &mut out));
    assert!(dequantize(QuantType::Q4_0, &[], &mut []));
}

// ------------------------------------------------------------------------------------------------
// Quantizers
// ------------------------------------------------------------------------------------------------

/// `x` quantized by the typed row quantizer `quant` into `x.len() / block_elems` blocks, as bytes.
fn typed_quantize<B: bytemuck::Pod>(
    x: &[f32],
    quant: fn(&[f32], &mut [B]),
    block_elems: usize,
) -> Vec<u8> {
    let mut q = vec![B::zeroed(); x.len() / block_elems];
    quant(x, &mut q);
    bytemuck::cast_slice(&q).to_vec()
}

#[test]
fn weight_quantizers_bit_exact_with_gguf_py() {
    let x = weights_src();
    #[rustfmt::skip]
    let cases: [(&str, Vec<u8>, &[u8], usize); 5] = [
        ("Q4_0", typed_quantize(&x, quantize_row_q4_0, QK), include_bytes!("data/q4_0_quant.bin"), 18),
        ("Q4_1", typed_quantize(&x, quantize_row_q4_1, QK), include_bytes!("data/q4_1_quant.bin"), 20),
        ("Q5_0", typed_quantize(&x, quantize_row_q5_0, QK), include_bytes!("data/q5_0_quant.bin"), 22),
        ("Q5_1", typed_quantize(&x, quantize_row_q5_1, QK), include_bytes!("data/q5_1_quant.bin"), 24),
        ("Q8_0 (weights)", typed_quantize(&x, quantize_row_q8_0, QK), include_bytes!("data/q8_0_quant.bin"), 34),
    ];
    for (name, got, want, block) in cases {
        assert_bytes_eq(name, &got, want, block);
    }
}

#[test]
fn activation_quantizers_bit_exact() {
    let x = act_src();
    let k = Kernels::scalar();

    let q = typed_quantize(&x, quantize_row_q8_0, QK);
    assert_bytes_eq("Q8_0 typed", &q, ACT_Q8_0, 34);
    let mut b = vec![0u8; ACT_Q8_0.len() + 1];
    (k.quantize_q8_0)(&x, &mut b[1..]);
    assert_bytes_eq("Q8_0 bytes", &b[1..], ACT_Q8_0, 34);

    let q = typed_quantize(&x, quantize_row_q8_1, QK);
    assert_bytes_eq("Q8_1 typed", &q, ACT_Q8_1, 36);
    let mut b = vec![0u8; ACT_Q8_1.len() + 1];
    (k.quantize_q8_1)(&x, &mut b[1..]);
    assert_bytes_eq("Q8_1 bytes", &b[1..], ACT_Q8_1, 36);

    let q = typed_quantize(&x, quantize_row_q8_k, QK_K);
    assert_bytes_eq("Q8_K typed", &q, ACT_Q8_K, 292);
    // Byte-level quantizer into an aligned and into a misaligned buffer.
    let mut aligned = vec![BlockQ8K::zeroed(); N / QK_K];
    (k.quantize_q8_k)(&x, bytemuck::cast_slice_mut(&mut aligned));
    assert_bytes_eq(
        "Q8_K bytes aligned",
        bytemuck::cast_slice(&aligned),
        ACT_Q8_K,
        292,
    );
    let mut b = vec![0u8; ACT_Q8_K.len() + 1];
    (k.quantize_q8_k)(&x, &mut b[1..]);
    assert_bytes_eq("Q8_K bytes misaligned", &b[1..], ACT_Q8_K, 292);

    // The ties block (block 1: amax 127, d = 1) really exercises both rounding rules.
    let q80 = &ACT_Q8_0[34..68];
    assert_eq!(q80[2 + 1] as i8, 3, "roundf(2.5) = 3 (ties away from zero)");
    assert_eq!(q80[2 + 2] as i8, -3, "roundf(-2.5) = -3");
    let qk_ties = &ACT_Q8_K[4 + 32..4 + 64];
    assert_eq!(
        qk_ties[1] as i8, -2,
        "Q8_K: nearest_int(-2.5) = -2 (ties to even)"
    );
    assert_eq!(qk_ties[3] as i8, -4, "Q8_K: nearest_int(-3.5) = -4");
}

#[test]
fn quantize_short_output_does_not_panic_in_release() {
    let x = act_src();
    let mut out = vec![0xAAu8; 34 * 3 + 5];
    let r = std::panic::catch_unwind(move || {
        quantize_q8_0(&x, &mut out);
        out
    });
    match r {
        Ok(out) => {
            if cfg!(debug_assertions) {
                panic!("debug builds must flag the short buffer")
            }
            assert_eq!(
                &out[..34 * 3],
                &ACT_Q8_0[..34 * 3],
                "the blocks that fit are written"
            );
            assert!(
                out[34 * 3..].iter().all(|&b| b == 0xAA),
                "the tail is untouched"
            );
        }
        Err(_) => {
            if !cfg!(debug_assertions) {
                panic!("release builds must not panic")
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Dot products / matvec
// ------------------------------------------------------------------------------------------------

/// The activation as the kernels see it: (dequantized q8 values, per-element q8 rounding bound,
/// per-block (s - d·Σq) correction for Q8_1 as stored).
struct Act {
    deq: Vec<f64>,
    err: Vec<f64>,
    /// Q8_1 only: per 32-block `s` as stored (f16) and `d·Σq` as implied by d and qs.
    s: Vec<(f64, f64)>,
}

/// Decode an activation fixture with plain arithmetic (no crate code) and bound |x - x̂| per element.
fn act(vdt: QuantType, x: &[f32]) -> Act {
    let mut deq = vec![0.0f64; N];
    let mut err = vec![0.0f64; N];
    let mut s = vec![];
    match vdt {
        QuantType::Q8_0 | QuantType::Q8_1 => {
            let (bytes, ts, qoff) = if vdt == QuantType::Q8_0 {
                (ACT_Q8_0, 34, 2)
            } else {
                (ACT_Q8_1, 36, 4)
            };
            for (b, blk) in bytes.chunks_exact(ts).enumerate() {
                let d16 = f16_at(blk, 0) as f64;
                let xb = &x[b * QK..(b + 1) * QK];
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = (amax / 127.0) as f64; // the unrounded scale
                let mut sumq = 0i64;
                for i in 0..QK {
                    let q = blk[qoff + i] as i8;
                    sumq += q as i64;
                    deq[b * QK + i] = d16 * q as f64;
                    // rounding to the grid of d (≤ d/2, with slack for id = 1/d in f32) plus
                    // storing d as f16 (|q|·|d16 - d|).
                    err[b * QK + i] = 0.5001 * d + (q as f64).abs() * (d16 - d).abs();
                }
                if vdt == QuantType::Q8_1 {
                    s.push((f16_at(blk, 2) as f64, d16 * sumq as f64));
                }
            }
        }
        QuantType::Q8K => {
            for (b, blk) in ACT_Q8_K.chunks_exact(292).enumerate() {
                let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]) as f64;
                for i in 0..QK_K {
                    deq[b * QK_K + i] = d * (blk[4 + i] as i8) as f64;
                    err[b * QK_K + i] = 0.5001 * d.abs() + 1e-30;
                }
            }
        }
        _ => {
            for i in 0..N {
                deq[i] = x[i] as f64;
            }
        }
    }
    Act { deq, err, s }
}

fn xq_bytes(vdt: QuantType, x: &[f32]) -> Vec<u8> {
    match vdt {
        QuantType::Q8_0 => ACT_Q8_0.to_vec(),
        QuantType::Q8_1 => ACT_Q8_1.to_vec(),
        QuantType::Q8K => ACT_Q8_K.to_vec(),
        _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Check one matvec result against (a) the f64 dot of the oracle-dequantized weights with the
/// q8-dequantized activation (tolerance: f32 rounding of the dequantized weights and f32 accumulation,
/// 1e-5 of Σ|terms|) and (b) the f64 dot with the original f32 activation (tolerance: Σ|w|·(q8 rounding
/// bound) + the Q8_1 `s` rounding + (a)'s tolerance).
#[allow(clippy::too_many_arguments)]
fn check_dot(
    what: &str,
    ty: QuantType,
    got: f32,
    wbytes: &[u8],
    wdeq: &[f32],
    a: &Act,
    x: &[f32],
    range: core::ops::Range<usize>,
) {
    let mut ref_q = 0.0f64;
    let mut ref_x = 0.0f64;
    let mut mag = 0.0f64;
    let mut qerr = 0.0f64;
    for i in range.clone() {
        let w = wdeq[i] as f64;
        ref_q += w * a.deq[i];
        ref_x += w * x[i] as f64;
        mag += (w.abs() + offset_mag(ty, wbytes, i)) * a.deq[i].abs();
        qerr += w.abs() * a.err[i];
    }
    if !a.s.is_empty() {
        // Q4_1/Q5_1 use m·s with s = fp16(d·Σq): replace m·d·Σq by m·s.
        let ts = if ty == QuantType::Q4_1 { 20 } else { 24 };
        for b in range.start / QK..range.end / QK {
            let m = f16_at(wbytes, b * ts + 2) as f64;
            let (s, dsum) = a.s[b];
            ref_q += m * (s - dsum);
            mag += (m * s).abs();
            qerr += (m * (s - dsum)).abs();
        }
    }
    let tol_q = 1e-5 * mag + 1e-30;
    let got = got as f64;
    assert!(
        (got - ref_q).abs() <= tol_q,
        "{what}: got {got:e}, reference on q8 values {ref_q:e}, |diff| {:e} > tol {tol_q:e}",
        (got - ref_q).abs()
    );
    let tol_x = qerr + tol_q;
    assert!(
        (got - ref_x).abs() <= tol_x,
        "{what}: got {got:e}, f32 reference {ref_x:e}, |diff| {:e} > q8 rounding bound {tol_x:e}",
        (got - ref_x).abs()
    );
}

#[test]
fn matvec_against_dequantized_reference() {
    let x = act_src();
    let k = Kernels::scalar();
    let mut checked = vec![];
    for (ty, wbytes, wdeq) in rand_fixtures() {
        let vdt = ty.vec_dot_type();
        let a = act(vdt, &x);
        let xq = xq_bytes(vdt, &x);
        let mv = k
            .matvec(ty)
            .unwrap_or_else(|| panic!("{}: no scalar matvec in the Kernels table", ty.name()));
        // One row of N.
        let mut out = [0.0f32; 1];
        mv(N, wbytes, &xq, &mut out);
        check_dot(
            &format!("{} n={N}", ty.name()),
            ty,
            out[0],
            wbytes,
            &wdeq,
            &a,
            &x,
            0..N,
        );
        // Three rows of 256: the activation is the first 256 elements (whole q8 blocks).
        let rb = ty.row_bytes(256).unwrap();
        let xb = vdt.row_bytes(256).unwrap();
        let mut out3 = [0.0f32; 3];
        mv(256, wbytes, &xq[..xb], &mut out3);
        for r in 0..3 {
            let row = &wbytes[r * rb..(r + 1) * rb];
            let wd = &wdeq[r * 256..(r + 1) * 256];
            // reference for row r uses activation elements 0..256
            let mut wpad = vec![0.0f32; N];
            wpad[..256].copy_from_slice(wd);
            let mut rowpad = vec![0u8; wbytes.len()];
            rowpad[..rb].copy_from_slice(row);
            check_dot(
                &format!("{} row {r} of 3x256", ty.name()),
                ty,
                out3[r],
                &rowpad,
                &wpad,
                &a,
                &x,
                0..256,
            );
        }
        checked.push(ty.name());
    }
    eprintln!("matvec checked: {checked:?}");
    assert_eq!(checked.len(), 8);
}

#[test]
fn typed_vec_dots_equal_matvec() {
    let x = act_src();
    let f = rand_fixtures();
    let mut q8_0 = vec![BlockQ8_0::default(); N / QK];
    quantize_row_q8_0(&x, &mut q8_0);
    let mut q8_1 = vec![BlockQ8_1::default(); N / QK];
    quantize_row_q8_1(&x, &mut q8_1);
    let mut q8_k = vec![BlockQ8K::zeroed(); N / QK_K];
    quantize_row_q8_k(&x, &mut q8_k);
    let typed = [
        vec_dot_q4_0_q8_0(N, bytemuck::cast_slice(f[0].1), &q8_0),
        vec_dot_q4_1_q8_1(N, bytemuck::cast_slice(f[1].1), &q8_1),
        vec_dot_q5_0_q8_0(N, bytemuck::cast_slice(f[2].1), &q8_0),
        vec_dot_q5_1_q8_1(N, bytemuck::cast_slice(f[3].1), &q8_1),
        vec_dot_q8_0_q8_0(N, bytemuck::cast_slice(f[4].1), &q8_0),
        vec_dot_q4_k_q8_k(N, bytemuck::cast_slice(f[5].1), &q8_k),
        vec_dot_q5_k_q8_k(N, bytemuck::cast_slice(f[6].1), &q8_k),
        vec_dot_q6_k_q8_k(N, bytemuck::cast_slice(f[7].1), &q8_k),
    ];
    for (i, (ty, wbytes, _)) in f.iter().enumerate() {
        // The scalar table's entries are the `scalar::matvec_*` functions.
        let mv = Kernels::scalar().matvec(*ty).unwrap();
        let xq = xq_bytes(ty.vec_dot_type(), &x);
        let mut out = [0.0f32];
        mv(N, wbytes, &xq, &mut out);
        assert_eq!(typed[i].to_bits(), out[0].to_bits(), "{}", ty.name());
        if ty.vec_dot_type() == QuantType::Q8K {
            // Misaligned activation bytes take the unaligned path: same result.
            let mut shifted = vec![0u8; xq.len() + 1];
            shifted[1..].copy_from_slice(&xq);
            let mut out2 = [0.0f32];
            mv(N, wbytes, &shifted[1..], &mut out2);
            assert_eq!(
                out2[0].to_bits(),
                out[0].to_bits(),
                "{} misaligned Q8_K",
                ty.name()
            );
        }
    }
}

/// `got`, an f32 sum of the `n` products `terms`, against their f64 sum: within n·ε·Σ|terms| (f32
/// accumulation in any order).
#[track_caller]
fn assert_f32_sum_of(what: &str, got: f32, terms: impl Iterator<Item = f64>) {
    let (mut s, mut mag, mut n) = (0.0f64, 0.0f64, 0usize);
    for t in terms {
        s += t;
        mag += t.abs();
        n += 1;
    }
    let tol = (n as f64) * f32::EPSILON as f64 * mag + 1e-30;
    assert!((got as f64 - s).abs() <= tol, "{what}: {got} vs {s}");
}

#[test]
fn float_matvecs_against_f64() {
    let w = weights_src();
    let x = act_src();
    let k = Kernels::scalar();
    // F32, with both operands one byte off alignment.
    let mut wb = vec![0u8; 1];
    wb.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    let mut xb = vec![0u8; 1];
    xb.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let rows = 3;
    let n = N / rows;
    let mut out = vec![0.0f32; rows];
    (k.matvec_f32)(n, &wb[1..], &xb[1..n * 4 + 1], &mut out);
    for r in 0..rows {
        let terms = (0..n).map(|i| w[r * n + i] as f64 * x[i] as f64);
        assert_f32_sum_of(&format!("F32 row {r}"), out[r], terms);
    }
    // F16 weights (weights rounded to f16; values > 65504 become inf and are excluded by clamping).
    let w16: Vec<F16Bits> = w
        .iter()
        .map(|&v| F16Bits::from_f32(v.clamp(-6e4, 6e4)))
        .collect();
    let mut out = vec![0.0f32; rows];
    (k.matvec_f16)(n, bytemuck::cast_slice(&w16), &xb[1..n * 4 + 1], &mut out);
    for r in 0..rows {
        let terms = (0..n).map(|i| w16[r * n + i].to_f32() as f64 * x[i] as f64);
        assert_f32_sum_of(&format!("F16 row {r}"), out[r], terms);
        let typed = vec_dot_f16_f32(n, &w16[r * n..(r + 1) * n], &x[..n]);
        assert_eq!(
            typed.to_bits(),
            out[r].to_bits(),
            "vec_dot_f16_f32 == matvec_f16"
        );
    }
}

#[test]
fn matvec_bad_lengths_never_panic_in_release() {
    let f = rand_fixtures();
    let k = Kernels::scalar();
    for (ty, wbytes, _) in &f {
        let Some(mv) = k.matvec(*ty) else { continue };
        let xq = xq_bytes(ty.vec_dot_type(), &act_src());
        let cases: Vec<(usize, Vec<u8>, Vec<u8>, usize)> = vec![
            (N, wbytes.to_vec(), xq.clone(), 2),        // too many rows for w
            (N, wbytes.to_vec(), xq[..10].to_vec(), 1), // short activation
            (N - 1, wbytes.to_vec(), xq.clone(), 1),    // n not a multiple of the block
            (usize::MAX - 31, wbytes.to_vec(), xq.clone(), 1), // overflow
        ];
        for (n, w, x, rows) in cases {
            let r = std::panic::catch_unwind(move || {
                let mut out = vec![0.0f32; rows];
                mv(n, &w, &x, &mut out);
                out
            });
            match r {
                Ok(out) => {
                    if cfg!(debug_assertions) {
                        panic!("{}: debug builds flag bad lengths", ty.name())
                    };
                    assert!(
                        out.iter().all(|v| v.is_nan()),
                        "{}: NaN on bad lengths",
                        ty.name()
                    );
                }
                Err(_) => {
                    if !cfg!(debug_assertions) {
                        panic!("{}: release must not panic", ty.name())
                    }
                }
            }
        }
        let mut out: [f32; 0] = [];
        mv(N, wbytes, &xq, &mut out); // zero rows is fine
    }
}

// ------------------------------------------------------------------------------------------------
// K-quant weight quantizers: round trip
// ------------------------------------------------------------------------------------------------

/// The round-trip rows' own generator (an LCG; its stream fixes the data the error bounds below were
/// set on).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next(), self.next());
        box_muller(u, v)
    }
}

fn rows_for_roundtrip() -> Vec<f32> {
    let mut g = Lcg(42);
    let mut x: Vec<f32> = (0..QK_K * 16).map(|_| g.normal()).collect();
    // super-block 1: scaled small; 2: with outliers; 3: all positive; 4: a zero sub-block
    for v in &mut x[QK_K..2 * QK_K] {
        *v *= 1e-3;
    }
    x[2 * QK_K + 17] = 12.0;
    x[2 * QK_K + 200] = -9.0;
    for v in &mut x[3 * QK_K..4 * QK_K] {
        *v = v.abs() + 0.5;
    }
    for v in &mut x[4 * QK_K + 64..4 * QK_K + 96] {
        *v = 0.0;
    }
    x
}

/// RMS error per super-block relative to the block's RMS.
fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let mut worst = 0.0f64;
    for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
        let e: f64 = xb
            .iter()
            .zip(yb)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let s: f64 = xb.iter().map(|a| (*a as f64).powi(2)).sum();
        worst = worst.max((e / s).sqrt());
    }
    worst
}

/// `x` through the typed quantizer `quant` and back through `dequant` (into NaNs: every output must
/// be written).
fn round_trip<B: bytemuck::Pod>(
    x: &[f32],
    quant: fn(&[f32], &mut [B]),
    dequant: fn(&[B], &mut [f32]),
    block_elems: usize,
) -> Vec<f32> {
    let mut q = vec![B::zeroed(); x.len() / block_elems];
    quant(x, &mut q);
    let mut y = vec![f32::NAN; x.len()];
    dequant(&q, &mut y);
    y
}

#[test]
fn k_quantizers_round_trip() {
    let x = rows_for_roundtrip();
    let err = |y: Vec<f32>| rel_rms(&x, &y);
    #[rustfmt::skip]
    let (e4k, e5k, e6k, e40, e51) = (
        err(round_trip(&x, quantize_row_q4_k, dequantize_row_q4_k, QK_K)),
        err(round_trip(&x, quantize_row_q5_k, dequantize_row_q5_k, QK_K)),
        err(round_trip(&x, quantize_row_q6_k, dequantize_row_q6_k, QK_K)),
        err(round_trip(&x, quantize_row_q4_0, dequantize_row_q4_0, QK)),
        err(round_trip(&x, quantize_row_q5_1, dequantize_row_q5_1, QK)),
    );
    eprintln!("worst per-super-block relative RMS error: q4_0 {e40:.4} q4_k {e4k:.4} q5_1 {e51:.4} q5_k {e5k:.4} q6_k {e6k:.4}");
    // Bounds: a uniform b-bit grid over a Gaussian block's range gives roughly
    // range/(2^b-1)/sqrt(12) / sigma; with ~±3σ ranges: 4 bits ≈ 0.11, 5 bits ≈ 0.055, 6 bits ≈ 0.027.
    // The K searches must do at least that well (outlier block included) and beat Q4_0.
    assert!(e4k < 0.12, "Q4_K round trip {e4k}");
    assert!(e5k < 0.06, "Q5_K round trip {e5k}");
    assert!(e6k < 0.03, "Q6_K round trip {e6k}");
    assert!(e4k < e40, "Q4_K ({e4k}) should beat Q4_0 ({e40})");
    assert!(e5k < e4k && e6k < e5k);

    // Zero input → zero blocks and zero output.
    let z = vec![0.0f32; QK_K];
    for y in [
        round_trip(&z, quantize_row_q4_k, dequantize_row_q4_k, QK_K),
        round_trip(&z, quantize_row_q5_k, dequantize_row_q5_k, QK_K),
        round_trip(&z, quantize_row_q6_k, dequantize_row_q6_k, QK_K),
    ] {
        assert!(y.iter().all(|&v| v == 0.0));
    }
}

#[test]
fn q5_round_trip_error_bound() {
    // Q5_0: the grid is d·(-16..=15) with d = -max/16, so elements of the sign opposite to `max` and
    // magnitude near |max| are clamped: error ≤ d; Q5_1: the nearest grid point is ≤ d/2 away. Plus
    // the f16 rounding of d (and m) times the level.
    let x = rows_for_roundtrip();
    let y = round_trip(&x, quantize_row_q5_0, dequantize_row_q5_0, QK);
    for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
        let d = amax / 16.0;
        let tol = d + 16.0 * d * 1e-3 + 1e-7;
        for (a, c) in xb.iter().zip(yb) {
            assert!(((a - c) as f64).abs() <= tol, "Q5_0 block {b}: {a} -> {c}");
        }
    }
    let y = round_trip(&x, quantize_row_q5_1, dequantize_row_q5_1, QK);
    for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
        let mn = xb.iter().fold(f32::MAX, |a, &v| a.min(v)) as f64;
        let mx = xb.iter().fold(f32::MIN, |a, &v| a.max(v)) as f64;
        let d = (mx - mn) / 31.0;
        let tol = 0.5 * d + 31.0 * d * 1e-3 + mn.abs() * 1e-3 + 1e-7;
        for (a, c) in xb.iter().zip(yb) {
            assert!(((a - c) as f64).abs() <= tol, "Q5_1 block {b}: {a} -> {c}");
        }
    }
}
