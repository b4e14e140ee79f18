//! aarch64 LoRA tier: Advanced SIMD (NEON), fp16 widened with `fcvtl` (`vcvt_f32_f16`, base ARMv8).
//! One tier serves both `neon` and `neon-dotprod` CPUs (the LoRA kernels do no integer dot products); it
//! reports [`Tier::Neon`]. See [`crate::lora`] for the semantics; like the x86 tiers it implements only
//! `rows_dot`, four dot products at a time.
use crate::lora::{LoraKernels, RowsDot};
use crate::Tier;
use core::arch::aarch64::*;

static TABLE: LoraKernels = LoraKernels {
    tier: Tier::Neon,
    shrink,
    expand,
    shrink_batch,
    expand_batch,
};

fn detected() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// The NEON LoRA table, if the CPU has Advanced SIMD.
pub fn neon() -> Option<&'static LoraKernels> {
    detected().then_some(&TABLE)
}

/// Whether the CPU has the dot-product extension (so that `neon-dotprod` names a tier it runs).
pub fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "dotprod")
    }
}

crate::lora::lora_tier_fns!(rows_dot);

/// 4 halves from the start of `c` (`c.len() >= 4`), widened.
#[target_feature(enable = "neon")]
#[inline]
fn ldh(c: &[u16]) -> float32x4_t {
    let c = &c[..4];
    // SAFETY: `c` holds exactly 4 u16; `vld1` has no alignment requirement beyond the element's.
    unsafe { vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(c.as_ptr()))) }
}

/// 4 floats from the start of `c` (`c.len() >= 4`).
#[target_feature(enable = "neon")]
#[inline]
fn ldf(c: &[f32]) -> float32x4_t {
    let c = &c[..4];
    // SAFETY: `c` holds exactly 4 f32.
    unsafe { vld1q_f32(c.as_ptr()) }
}

/// `c` (shorter than 4) widened and zero-padded.
#[target_feature(enable = "neon")]
#[inline]
fn ldh_tail(c: &[u16]) -> float32x4_t {
    let mut buf = [0u16; 4];
    buf[..c.len()].copy_from_slice(c);
    ldh(&buf)
}

/// `c` (shorter than 4) zero-padded.
#[target_feature(enable = "neon")]
#[inline]
fn ldf_tail(c: &[f32]) -> float32x4_t {
    let mut buf = [0f32; 4];
    buf[..c.len()].copy_from_slice(c);
    ldf(&buf)
}

/// `[w[q] · v[q] for q in 0..4]`, all slices of length `k`.
#[target_feature(enable = "neon")]
#[inline]
fn dot4(k: usize, w: [&[u16]; 4], v: [&[f32]; 4]) -> [f32; 4] {
    let w = [&w[0][..k], &w[1][..k], &w[2][..k], &w[3][..k]];
    let v = [&v[0][..k], &v[1][..k], &v[2][..k], &v[3][..k]];
    let mut acc = [vdupq_n_f32(0.0); 4];
    let main = k & !3;
    let mut i = 0;
    while i < main {
        for q in 0..4 {
            acc[q] = vfmaq_f32(acc[q], ldh(&w[q][i..]), ldf(&v[q][i..]));
        }
        i += 4;
    }
    if i < k {
        for q in 0..4 {
            acc[q] = vfmaq_f32(acc[q], ldh_tail(&w[q][i..]), ldf_tail(&v[q][i..]));
        }
    }
    // Element by element, not `array::map`: a closure would call the reduction out of line.
    [
        vaddvq_f32(acc[0]),
        vaddvq_f32(acc[1]),
        vaddvq_f32(acc[2]),
        vaddvq_f32(acc[3]),
    ]
}

/// `w · v`, both of length `k`.
#[target_feature(enable = "neon")]
#[inline]
fn dot1(k: usize, w: &[u16], v: &[f32]) -> f32 {
    let (w, v) = (&w[..k], &v[..k]);
    let mut acc = vdupq_n_f32(0.0);
    let main = k & !3;
    let mut i = 0;
    while i < main {
        acc = vfmaq_f32(acc, ldh(&w[i..]), ldf(&v[i..]));
        i += 4;
    }
    if i < k {
        acc = vfmaq_f32(acc, ldh_tail(&w[i..]), ldf_tail(&v[i..]));
    }
    vaddvq_f32(acc)
}

/// Four dots of rows `row..row + 4` (length `k`, a multiple of 4) with `v`, as one vector: a pairwise
/// tree instead of four horizontal sums.
#[target_feature(enable = "neon")]
#[inline]
fn dot4_rows(j: &RowsDot<'_>, row: usize, v: &[f32]) -> float32x4_t {
    let w = &j.w[row * j.k..(row + 4) * j.k];
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i < j.k {
        let x = ldf(&v[i..]);
        for (q, a) in acc.iter_mut().enumerate() {
            *a = vfmaq_f32(*a, ldh(&w[q * j.k + i..]), x);
        }
        i += 4;
    }
    // vpaddq(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3]
    vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]))
}

/// All rows against one token's vector, four rows at a time.
#[target_feature(enable = "neon")]
fn one_token(j: &RowsDot<'_>, tok: usize, out: &mut [f32]) {
    let v = j.vec(tok);
    let mut row = j.row0;
    if j.k.is_multiple_of(4) && j.k <= 64 {
        while row + 4 <= j.row1 {
            let d = dot4_rows(j, row, v);
            let base = tok * j.ldo + j.ooff + (row - j.row0);
            let o = &mut out[base..base + 4];
            // SAFETY: `o` holds exactly 4 f32.
            unsafe {
                let r = match j.scale {
                    None => d,
                    Some(s) => vfmaq_n_f32(vld1q_f32(o.as_ptr()), d, s),
                };
                vst1q_f32(o.as_mut_ptr(), r);
            }
            row += 4;
        }
    }
    while row + 4 <= j.row1 {
        let d = dot4(
            j.k,
            [j.row(row), j.row(row + 1), j.row(row + 2), j.row(row + 3)],
            [v; 4],
        );
        for (q, d) in d.into_iter().enumerate() {
            j.put(out, tok, row + q, d);
        }
        row += 4;
    }
    while row < j.row1 {
        j.put(out, tok, row, dot1(j.k, j.row(row), v));
        row += 1;
    }
}

/// `o[..4] = v`.
#[target_feature(enable = "neon")]
#[inline]
fn stf(o: &mut [f32], v: float32x4_t) {
    let o = &mut o[..4];
    // SAFETY: `o` holds exactly 4 f32.
    unsafe { vst1q_f32(o.as_mut_ptr(), v) }
}

/// `a·b + c`.
#[target_feature(enable = "neon")]
#[inline]
fn fmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
    vfmaq_f32(c, a, b)
}

/// The lane sums of `acc`, in order (`out.len() == acc.len()`): four at a time by pairwise trees,
/// `vpaddq(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3]`.
#[target_feature(enable = "neon")]
#[inline]
fn sums(acc: &[float32x4_t], out: &mut [f32]) {
    for (a, o) in acc.chunks(4).zip(out.chunks_mut(4)) {
        let mut v = [vdupq_n_f32(0.0); 4];
        v[..a.len()].copy_from_slice(a);
        let mut r = [0f32; 4];
        stf(
            &mut r,
            vpaddq_f32(vpaddq_f32(v[0], v[1]), vpaddq_f32(v[2], v[3])),
        );
        o.copy_from_slice(&r[..o.len()]);
    }
}

crate::lora::columns_token!(
    "neon",
    float32x4_t,
    4,
    ldh,
    ldf,
    stf,
    vdupq_n_f32,
    fmadd,
    sums
);

/// This tier's [`RowsDot`]: the expand of several tokens by columns; otherwise four rows against four
/// tokens at a time (the shrink of a batch), or one token's rows.
#[target_feature(enable = "neon")]
fn rows_dot(j: &RowsDot<'_>, out: &mut [f32]) {
    if j.scale.is_some() && j.n_tok > 1 {
        let row = crate::lora::expand_columns(Cols::new(), j, out);
        return by_tokens(&j.rows_from(row), out);
    }
    by_tokens(j, out)
}

/// [`RowsDot`] four tokens at a time (four rows per block, then single rows), then token by token.
#[target_feature(enable = "neon")]
fn by_tokens(j: &RowsDot<'_>, out: &mut [f32]) {
    let mut tok = crate::lora::by_token_groups::<_, 4>(Cols::new(), j, out);
    while tok < j.n_tok {
        one_token(j, tok, out);
        tok += 1;
    }
}
