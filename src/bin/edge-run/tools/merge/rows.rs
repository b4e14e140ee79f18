//! The arithmetic of a merge: `W = deq(W0) + Σ s·B·A` row by row, quantized to the target type, in
//! blocks of rows over threads, with the sums the report needs.
use std::io::Write;

use edge_run::adapter::{LoraKind, LoraTensor};
use edge_run::kernels::{scalar, QuantType};

/// Whether edge-run can write weights of type `t`.
pub(super) fn can_quantize(t: QuantType) -> bool {
    !matches!(t, QuantType::Q8_1 | QuantType::Q8K)
}

/// The type a merged tensor of row length `n_in` gets for target `to`, and the fallback note.
pub(super) fn resolve_type(to: QuantType, n_in: usize) -> (QuantType, Option<String>) {
    use QuantType::*;
    if n_in.is_multiple_of(to.block_size()) {
        return (to, None);
    }
    let fb = match to {
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K => Q8_0,
        _ => F16,
    };
    let fb = if n_in.is_multiple_of(fb.block_size()) {
        fb
    } else {
        F16
    };
    (
        fb,
        Some(format!(
            "{}→{} fallback: row length {n_in} is not a multiple of {}",
            to.name(),
            fb.name(),
            to.block_size()
        )),
    )
}

/// ggml's f32 → bf16 (round to nearest even, NaN kept quiet).
fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Quantizes one row `x` into `out` (exactly `ty.row_bytes(x.len())` bytes). Returns the index of a
/// value that does not fit (F16 overflow), if any.
fn quantize_row(ty: QuantType, x: &[f32], out: &mut [u8]) -> std::result::Result<(), usize> {
    use QuantType::*;
    match ty {
        F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (i, (c, &v)) in out.chunks_exact_mut(2).zip(x).enumerate() {
                let h = half::f16::from_f32(v);
                if !h.is_finite() {
                    return Err(i);
                }
                c.copy_from_slice(&h.to_bits().to_le_bytes());
            }
        }
        BF16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        Q4_0 => scalar::quantize_row_q4_0(x, bytemuck::cast_slice_mut(out)),
        Q4_1 => scalar::quantize_row_q4_1(x, bytemuck::cast_slice_mut(out)),
        Q5_0 => scalar::quantize_row_q5_0(x, bytemuck::cast_slice_mut(out)),
        Q5_1 => scalar::quantize_row_q5_1(x, bytemuck::cast_slice_mut(out)),
        Q8_0 => scalar::quantize_row_q8_0(x, bytemuck::cast_slice_mut(out)),
        Q4K => scalar::quantize_row_q4_k(x, bytemuck::cast_slice_mut(out)),
        Q5K => scalar::quantize_row_q5_k(x, bytemuck::cast_slice_mut(out)),
        Q6K => scalar::quantize_row_q6_k(x, bytemuck::cast_slice_mut(out)),
        Q8_1 | Q8K => unreachable!("refused by can_quantize"),
    }
    Ok(())
}

/// One LoRA term of a merged tensor, with A and B in f32 and the full scale.
pub(super) struct Term {
    kind: LoraKind,
    rank: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    scale: f32,
    /// DoRA's magnitude vector (per GGUF row), `None` for a plain LoRA.
    magnitude: Option<Vec<f32>>,
}

impl Term {
    pub(super) fn new(t: &LoraTensor, scale: f32) -> Term {
        let f = |v: &[u16]| {
            v.iter()
                .map(|&h| half::f16::from_bits(h).to_f32())
                .collect()
        };
        Term {
            kind: t.kind,
            rank: t.rank,
            a: f(t.a()),
            b: f(t.b()),
            scale: t.scale * scale,
            magnitude: t.magnitude().map(<[f32]>::to_vec),
        }
    }

    /// Applies this term to the running merged row `acc` of GGUF row `row`, as the runtime applies it
    /// to outputs: a plain LoRA adds `s·(B·A)[row]`; DoRA makes it `g·(acc + s·(B·A)[row])` with
    /// `g = m[row] / ‖W0[row] + s·(B·A)[row]‖` (`w0` is the base row, `tmp` scratch of its length).
    fn apply_row(&self, row: usize, w0: &[f32], acc: &mut [f32], tmp: &mut [f32]) {
        self.add_row(row, acc);
        if let Some(m) = &self.magnitude {
            tmp.copy_from_slice(w0);
            self.add_row(row, tmp);
            let norm = tmp
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt();
            let g = (m[row] as f64 / norm) as f32;
            for v in acc.iter_mut() {
                *v *= g;
            }
        }
    }

    /// `delta += s · (B·A)[row]` for GGUF row `row` (length `delta.len()`).
    fn add_row(&self, row: usize, delta: &mut [f32]) {
        let r = self.rank;
        match self.kind {
            // Row `row` of the n_out × n_in product: Σ_k B[row, k] · A[k, :].
            LoraKind::Linear => {
                let n = delta.len();
                for (k, &bk) in self.b[row * r..(row + 1) * r].iter().enumerate() {
                    let c = self.scale * bk;
                    for (d, &a) in delta.iter_mut().zip(&self.a[k * n..(k + 1) * n]) {
                        *d += c * a;
                    }
                }
            }
            // Token `row`'s embedding: element j += Σ_k B[j, k] · A[row, k] (A token-major).
            LoraKind::Embedding => {
                let a = &self.a[row * r..(row + 1) * r];
                for (d, bj) in delta.iter_mut().zip(self.b.chunks_exact(r)) {
                    let dot: f32 = bj.iter().zip(a).map(|(x, y)| x * y).sum();
                    *d += self.scale * dot;
                }
            }
        }
    }
}

pub(super) enum MergeErr {
    Io(std::io::Error),
    Value { row: usize, col: usize, value: f32 },
}

/// Rows per block of the streamed merge: about 4 Mi f32 values of scratch.
fn block_rows(n_in: usize) -> usize {
    ((4 << 20) / n_in.max(1)).max(1)
}

/// Merges one tensor block by block and writes its bytes; returns Σ of squares of W0, ΔW, W, Q(W)−W
/// and ⟨Q(W) − W0, ΔW⟩.
#[allow(clippy::too_many_arguments)]
pub(super) fn merge_tensor(
    src: &[u8],
    from: QuantType,
    to: QuantType,
    n_in: usize,
    n_rows: usize,
    terms: &[Term],
    n_threads: usize,
    w: &mut impl Write,
) -> std::result::Result<[f64; 5], MergeErr> {
    let (src_rb, dst_rb) = (
        from.row_bytes(n_in).unwrap_or(0),
        to.row_bytes(n_in).unwrap_or(0),
    );
    let step = block_rows(n_in);
    let mut sums = [0f64; 5];
    let mut buf = vec![0u8; step.min(n_rows) * dst_rb];
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = step.min(n_rows - r0);
        let out = &mut buf[..rows * dst_rb];
        let per = rows.div_ceil(n_threads.max(1));
        let parts: Vec<std::result::Result<[f64; 5], MergeErr>> = std::thread::scope(|s| {
            let handles: Vec<_> = out
                .chunks_mut(per * dst_rb)
                .enumerate()
                .map(|(i, chunk)| {
                    let first = r0 + i * per;
                    s.spawn(move || {
                        merge_rows(src, from, to, n_in, src_rb, dst_rb, first, chunk, terms)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for p in parts {
            let p = p?;
            for (s, v) in sums.iter_mut().zip(p) {
                *s += v;
            }
        }
        w.write_all(out).map_err(MergeErr::Io)?;
        r0 += rows;
    }
    Ok(sums)
}

/// Merges rows `first..first + out.len()/dst_rb` into `out`.
#[allow(clippy::too_many_arguments)]
fn merge_rows(
    src: &[u8],
    from: QuantType,
    to: QuantType,
    n_in: usize,
    src_rb: usize,
    dst_rb: usize,
    first: usize,
    out: &mut [u8],
    terms: &[Term],
) -> std::result::Result<[f64; 5], MergeErr> {
    let mut w0 = vec![0f32; n_in];
    let mut d = vec![0f32; n_in];
    let mut q = vec![0f32; n_in];
    let mut tmp = vec![0f32; n_in];
    let mut sums = [0f64; 5];
    for (i, dst) in out.chunks_exact_mut(dst_rb).enumerate() {
        let row = first + i;
        let ok = scalar::dequantize(from, &src[row * src_rb..(row + 1) * src_rb], &mut w0);
        debug_assert!(ok);
        if terms.iter().any(|t| t.magnitude.is_some()) {
            // DoRA scales the running row: merge in order, then keep the difference from W0.
            d.copy_from_slice(&w0);
            for t in terms {
                t.apply_row(row, &w0, &mut d, &mut tmp);
            }
            for (dv, &x) in d.iter_mut().zip(&w0) {
                *dv -= x;
            }
        } else {
            d.fill(0.0);
            for t in terms {
                t.add_row(row, &mut d);
            }
        }
        let (mut s0, mut s1, mut s2) = (0f64, 0f64, 0f64);
        for (x, &dv) in w0.iter_mut().zip(&d) {
            s0 += (*x as f64) * (*x as f64);
            s1 += (dv as f64) * (dv as f64);
            *x += dv;
            s2 += (*x as f64) * (*x as f64);
        }
        if let Some(col) = w0.iter().position(|v| !v.is_finite()) {
            return Err(MergeErr::Value {
                row,
                col,
                value: w0[col],
            });
        }
        quantize_row(to, &w0, dst).map_err(|col| MergeErr::Value {
            row,
            col,
            value: w0[col],
        })?;
        let ok = scalar::dequantize(to, dst, &mut q);
        debug_assert!(ok);
        let s3: f64 = q
            .iter()
            .zip(&w0)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        // ⟨Q(W) − W0, ΔW⟩ with W0 = W − ΔW
        let s4: f64 = q
            .iter()
            .zip(&w0)
            .zip(&d)
            .map(|((&qv, &wv), &dv)| (qv as f64 - (wv as f64 - dv as f64)) * dv as f64)
            .sum();
        sums[4] += s4;
        sums[0] += s0;
        sums[1] += s1;
        sums[2] += s2;
        sums[3] += s3;
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quant_fallback_follows_llama_cpp() {
        assert_eq!(resolve_type(QuantType::Q4K, 576).0, QuantType::Q5_0);
        assert_eq!(resolve_type(QuantType::Q6K, 576).0, QuantType::Q8_0);
        assert_eq!(resolve_type(QuantType::Q5K, 576).0, QuantType::Q5_1);
        assert_eq!(resolve_type(QuantType::Q4K, 1536), (QuantType::Q4K, None));
        assert_eq!(resolve_type(QuantType::Q8_0, 48).0, QuantType::F16);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    }
}
