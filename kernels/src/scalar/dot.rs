//! Dot products: integer products within a block, f32 accumulation across blocks.
use super::*;

/// Σ over the first `n / block_len` block pairs of `dot_block(x[i], y[i])`, accumulated in f32 in
/// block order.
#[inline(always)]
fn sum_block_dots<A, B>(
    n: usize,
    block_len: usize,
    x: &[A],
    y: &[B],
    dot_block: impl Fn(&A, &B) -> f32,
) -> f32 {
    let blocks = n / block_len;
    debug_assert!(n.is_multiple_of(block_len) && x.len() >= blocks && y.len() >= blocks);
    let mut sumf = 0.0f32;
    for (a, b) in x.iter().zip(y).take(blocks) {
        sumf += dot_block(a, b);
    }
    sumf
}

/// `Σ_j v(j).0 * y[j] + v(j).1 * y[j + 16]` for the 16 byte pairs of a 32-weight block, where `v(j)`
/// gives the low- and high-nibble weights stored in byte `j`.
#[inline(always)]
fn nibble_pair_dot(y: &[i8; QK], v: impl Fn(usize) -> (i32, i32)) -> i32 {
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let (v0, v1) = v(j);
        sumi += v0 * y[j] as i32 + v1 * y[j + QK / 2] as i32;
    }
    sumi
}

/// Σ over `n/32` blocks of `(dx*dy) * Σ (q4-8)*q8`.
pub fn vec_dot_q4_0_q8_0(n: usize, x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    sum_block_dots(n, QK, x, y, |a, b| {
        let sumi = nibble_pair_dot(&b.qs, |j| {
            ((a.qs[j] & 0x0f) as i32 - 8, (a.qs[j] >> 4) as i32 - 8)
        });
        (a.d.to_f32() * b.d.to_f32()) * sumi as f32
    })
}

/// Σ over blocks of `(dx*dy) * Σ q4*q8 + m*s`.
pub fn vec_dot_q4_1_q8_1(n: usize, x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    sum_block_dots(n, QK, x, y, |a, b| {
        let sumi = nibble_pair_dot(&b.qs, |j| ((a.qs[j] & 0x0f) as i32, (a.qs[j] >> 4) as i32));
        (a.d.to_f32() * b.d.to_f32()) * sumi as f32 + a.m.to_f32() * b.s.to_f32()
    })
}

/// Σ over blocks of `(dx*dy) * Σ (q5-16)*q8`.
pub fn vec_dot_q5_0_q8_0(n: usize, x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    sum_block_dots(n, QK, x, y, |a, b| {
        let qh = u32::from_le_bytes(a.qh);
        let sumi = nibble_pair_dot(&b.qs, |j| q5_pair(&a.qs, qh, j, 16));
        (a.d.to_f32() * b.d.to_f32()) * sumi as f32
    })
}

/// Σ over blocks of `(dx*dy) * Σ q5*q8 + m*s`.
pub fn vec_dot_q5_1_q8_1(n: usize, x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    sum_block_dots(n, QK, x, y, |a, b| {
        let qh = u32::from_le_bytes(a.qh);
        let sumi = nibble_pair_dot(&b.qs, |j| q5_pair(&a.qs, qh, j, 0));
        (a.d.to_f32() * b.d.to_f32()) * sumi as f32 + a.m.to_f32() * b.s.to_f32()
    })
}

/// Σ over blocks of `(dx*dy) * Σ qx*qy`.
pub fn vec_dot_q8_0_q8_0(n: usize, x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    sum_block_dots(n, QK, x, y, |a, b| {
        let mut sumi = 0i32;
        for (&p, &q) in a.qs.iter().zip(&b.qs) {
            sumi += p as i32 * q as i32;
        }
        (a.d.to_f32() * b.d.to_f32()) * sumi as f32
    })
}

/// One 4/5-bit K-quant super-block × Q8_K:
/// `(d*dy) * Σ_j sc_j Σ q*q8  -  (dmin*dy) * Σ_j m_j (bsums[2j] + bsums[2j+1])`, where q is the nibble
/// plus `fifth_bits(c, l)` (the 16s of chunk `c`'s byte `l`, low nibble then high nibble).
#[inline(always)]
fn dot_block_k4_q8_k(
    scales: &[u8; K_SCALE_SIZE],
    qs: &[u8; QK_K / 2],
    (d, dmin): (f32, f32),
    b: &BlockQ8K,
    fifth_bits: impl Fn(usize, usize) -> (i32, i32),
) -> f32 {
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for c in 0..QK_K / 64 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let q = &qs[32 * c..32 * c + 32];
        let y = &b.qs[64 * c..64 * c + 64];
        let mut s1 = 0i32;
        let mut s2 = 0i32;
        for l in 0..32 {
            let (h1, h2) = fifth_bits(c, l);
            s1 += ((q[l] & 0x0f) as i32 + h1) * y[l] as i32;
            s2 += ((q[l] >> 4) as i32 + h2) * y[l + 32] as i32;
        }
        sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
        summ += m1 as i32 * (b.bsums[4 * c] as i32 + b.bsums[4 * c + 1] as i32);
        summ += m2 as i32 * (b.bsums[4 * c + 2] as i32 + b.bsums[4 * c + 3] as i32);
    }
    (d * b.d) * sumi as f32 - (dmin * b.d) * summ as f32
}

/// One Q4_K × Q8_K super-block:
/// `(d*dy) * Σ_j sc_j Σ q4*q8  -  (dmin*dy) * Σ_j m_j (bsums[2j] + bsums[2j+1])`.
#[inline]
pub fn dot_block_q4_k_q8_k(a: &BlockQ4K, b: &BlockQ8K) -> f32 {
    let d = (a.d.to_f32(), a.dmin.to_f32());
    dot_block_k4_q8_k(&a.scales, &a.qs, d, b, |_, _| (0, 0))
}

/// One Q5_K × Q8_K super-block (as Q4_K with q in 0..32).
#[inline]
pub fn dot_block_q5_k_q8_k(a: &BlockQ5K, b: &BlockQ8K) -> f32 {
    let d = (a.d.to_f32(), a.dmin.to_f32());
    dot_block_k4_q8_k(&a.scales, &a.qs, d, b, |c, l| {
        let (h1, h2) = a.fifth_bits(c, l);
        (i32::from(h1), i32::from(h2))
    })
}

/// One Q6_K × Q8_K super-block: `(d*dy) * Σ_g sc_g Σ (q6-32)*q8` over 16 groups of 16.
#[inline]
pub fn dot_block_q6_k_q8_k(a: &BlockQ6K, b: &BlockQ8K) -> f32 {
    let mut q = [0i8; QK_K];
    unpack_q6_k(a, &mut q);
    let mut sumi = 0i32;
    for g in 0..QK_K / 16 {
        let group = 16 * g..16 * g + 16;
        let s: i32 = q[group.clone()]
            .iter()
            .zip(&b.qs[group])
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        sumi += a.scales[g] as i32 * s;
    }
    (a.d.to_f32() * b.d) * sumi as f32
}

pub fn vec_dot_q4_k_q8_k(n: usize, x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    sum_block_dots(n, QK_K, x, y, dot_block_q4_k_q8_k)
}

pub fn vec_dot_q5_k_q8_k(n: usize, x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    sum_block_dots(n, QK_K, x, y, dot_block_q5_k_q8_k)
}

pub fn vec_dot_q6_k_q8_k(n: usize, x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    sum_block_dots(n, QK_K, x, y, dot_block_q6_k_q8_k)
}

/// f16 weights · f32 activations, exact f16→f32 conversion, sequential f32 accumulation.
pub fn vec_dot_f16_f32(n: usize, x: &[F16Bits], y: &[f32]) -> f32 {
    debug_assert!(x.len() >= n && y.len() >= n);
    let mut sum = 0.0f32;
    for (w, &v) in x.iter().zip(y).take(n) {
        sum += w.to_f32() * v;
    }
    sum
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut sum = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
