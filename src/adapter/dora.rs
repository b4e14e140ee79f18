//! DoRA (weight-decomposed low-rank adaptation), applied unmerged on the quantized base.
//!
//! A DoRA tensor is a LoRA (`A`, `B`, scale `s`) plus a magnitude vector `m` with one value per output
//! row. The adapted weight is `W' = diag(m / ‖W0 + s·B·A‖_row) · (W0 + s·B·A)`, so
//!
//! ```text
//! y = g ⊙ (W0·x + s·B·(A·x))        g = m / ‖W0 + s·B·A‖_row
//! ```
//!
//! `g` (the *gains*) depends on the base weights, the factors and the full scale `s` (user scale
//! included), not on the input: it is computed once, when a set holding the adapter is published
//! ([`gains`], multithreaded on a thread pool, from the dequantized base rows plus the delta), and the
//! forward pass then pays one multiply per output row ([`expand_rows`]).
//!
//! Stacking follows PEFT, which applies the active adapters of a layer one after the other to the
//! running result: a plain LoRA adds `s·B·A·x`; a DoRA replaces the result `r` with
//! `g ⊙ (r + s·B·A·x)`, its `g` computed from `W0` alone. So a DoRA scales the contributions of the
//! adapters listed before it in the set, not those after it, and the order of a set matters.
//!
//! Row order: the magnitude of a llama q/k projection is permuted like `B`'s rows (the GGUF base's
//! rows are), so `g[j]` belongs to the base's row `j`.
use std::sync::{Arc, Mutex};

use super::{Adapter, LoraTensor};
use crate::error::{Error, Result};
use crate::kernels::lora::{LoraKernels, LoraRef};
use crate::kernels::Kernels;
use crate::model::Model;
use crate::threadpool::{Disjoint, ThreadPool};

/// The gains `g = m / ‖W0 + s·B·A‖_row` of every DoRA tensor of one adapter at one user scale.
pub struct DoraGains {
    /// Per tensor of the adapter (its index in [`Adapter::tensors`]): the range of `data` holding
    /// that tensor's `n_out` gains, empty for a plain LoRA tensor.
    ranges: Vec<std::ops::Range<usize>>,
    data: Vec<f32>,
}

impl DoraGains {
    /// The gains of tensor `j` of the adapter, `None` if it is a plain LoRA.
    pub fn of(&self, j: usize) -> Option<&[f32]> {
        let r = self.ranges.get(j)?;
        (!r.is_empty()).then(|| &self.data[r.clone()])
    }
}

/// Output rows per work item of [`gains`].
const GAIN_ROWS: usize = 256;

/// The gains of `adapter` at `user_scale` on `model`'s weights, `None` if it has no DoRA tensor.
/// Work items of [`GAIN_ROWS`] rows of one tensor run on `pool`. A row whose norm is 0 or whose gain
/// is not finite is an error naming the tensor and row.
pub fn gains(
    model: &Model,
    adapter: &Adapter,
    user_scale: f32,
    pool: &ThreadPool,
) -> Result<Option<DoraGains>> {
    let mut ranges = Vec::with_capacity(adapter.tensors().len());
    let mut total = 0;
    let mut items = vec![];
    for (j, t) in adapter.tensors().iter().enumerate() {
        if t.magnitude().is_none() {
            ranges.push(total..total);
            continue;
        }
        ranges.push(total..total + t.n_out);
        for r0 in (0..t.n_out).step_by(GAIN_ROWS) {
            items.push((j, r0, (r0 + GAIN_ROWS).min(t.n_out)));
        }
        total += t.n_out;
    }
    if total == 0 {
        return Ok(None);
    }
    let mut data = vec![0f32; total];
    let out = Disjoint::new(&mut data);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    pool.run(items.len(), &|_, i| {
        let (j, r0, r1) = items[i];
        let t = &adapter.tensors()[j];
        let start = ranges[j].start;
        // SAFETY: work items cover disjoint rows of disjoint tensors' ranges, each handed out once.
        let dst = unsafe { out.range(start + r0..start + r1) };
        if let Err(e) = tensor_gains(model, adapter, t, user_scale, r0, dst) {
            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert(e);
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(Some(DoraGains { ranges, data }))
}

/// `dst[i] = m[r0+i] / ‖W0[r0+i] + s·B[r0+i]·A‖` for the rows `r0 .. r0 + dst.len()` of `t`.
///
/// The norm is expanded so that the only work per base element is its dequantization and `rank + 1`
/// dot products, which run in the SIMD f32 dot kernel: with `w` a base row, `b` its row of `B`,
/// `p = A·w` and the Gram matrix `G = A·Aᵀ`,
/// `‖w + s·bᵀA‖² = ‖w‖² + 2s·b·p + s²·bᵀGb` (combined in f64).
fn tensor_gains(
    model: &Model,
    adapter: &Adapter,
    t: &LoraTensor,
    user_scale: f32,
    r0: usize,
    dst: &mut [f32],
) -> Result<()> {
    let name = adapter.path().display();
    let w = model.lora_target(&t.target).ok_or_else(|| {
        Error::invalid(format!(
            "adapter {name}: `{}` targets nothing in this model",
            t.target
        ))
    })?;
    let dot = Kernels::best().dot_f32;
    let (n, rank) = (t.n_in, t.rank);
    let s = (user_scale * t.scale) as f64;
    let a: Vec<f32> = t
        .a()
        .iter()
        .map(|&h| half::f16::from_bits(h).to_f32())
        .collect();
    let a_rows = || a.chunks_exact(n);
    let gram: Vec<f64> = a_rows()
        .flat_map(|ak| a_rows().map(move |al| dot(ak, al) as f64))
        .collect();
    let mag = t.magnitude().unwrap_or(&[]);
    let rb = w.row_bytes();
    let bytes = model.bytes(w);
    let mut row = vec![0f32; n];
    let mut bf = vec![0f64; rank];
    for (i, g) in dst.iter_mut().enumerate() {
        let o = r0 + i;
        if !crate::kernels::scalar::dequantize(w.ty, &bytes[o * rb..(o + 1) * rb], &mut row) {
            return Err(Error::invalid(format!(
                "adapter {name}: cannot read the base rows of `{}` ({:?})",
                w.name, w.ty
            )));
        }
        for (x, &h) in bf.iter_mut().zip(&t.b()[o * rank..(o + 1) * rank]) {
            *x = half::f16::from_bits(h).to_f32() as f64;
        }
        let cross: f64 = bf
            .iter()
            .zip(a_rows())
            .map(|(&b, ak)| b * dot(ak, &row) as f64)
            .sum();
        let quad: f64 = bf
            .iter()
            .zip(gram.chunks_exact(rank))
            .map(|(&bk, gk)| bk * gk.iter().zip(&bf).map(|(&g, &bl)| g * bl).sum::<f64>())
            .sum();
        let sq = dot(&row, &row) as f64 + 2.0 * s * cross + s * s * quad;
        let norm = sq.max(0.0).sqrt() as f32;
        *g = mag[o] / norm;
        if !(norm > 0.0 && g.is_finite()) {
            return Err(Error::invalid(format!(
                "adapter {name}: DoRA tensor `{}` row {o}: magnitude {} over row norm {norm} of \
                 W0 + s·B·A (s = {s}) gives gain {g}",
                t.target, mag[o]
            )));
        }
    }
    Ok(())
}

/// Output rows `[r0, r0 + y.len())` of the adapters on one weight, applied in order to `y` (which
/// holds `W0·x` for those rows): a plain LoRA adds `s·B·t`, a DoRA (with gains) makes the running
/// result `g ⊙ (y + s·B·t)`. `t` is the token's concatenated intermediate (`Σ rank` floats, in the
/// order of `refs`); `gains[i]` belongs to `refs[i]` (empty `gains`: no DoRA, one kernel call).
/// Consecutive plain LoRAs share one kernel call; allocation-free.
pub(crate) fn expand_rows(
    lk: &LoraKernels,
    refs: &[LoraRef<'_>],
    gains: &[Option<&[f32]>],
    t: &[f32],
    r0: usize,
    y: &mut [f32],
) {
    if gains.iter().all(Option::is_none) {
        (lk.expand)(refs, t, r0, y);
        return;
    }
    let (mut first, mut off) = (0, 0);
    for (i, g) in gains.iter().enumerate().take(refs.len()) {
        let last = i + 1 == refs.len();
        if g.is_none() && !last {
            continue;
        }
        let group = &refs[first..=i];
        let r: usize = group.iter().map(|a| a.rank).sum();
        (lk.expand)(group, &t[off..off + r], r0, y);
        if let Some(g) = g {
            let n = y.len();
            for (v, &g) in y.iter_mut().zip(&g[r0..r0 + n]) {
                *v *= g;
            }
        }
        (first, off) = (i + 1, off + r);
    }
}

/// [`expand_rows`] for the tokens of a tile: `tile` holds rows `[r0, r0 + cr)` of each token's
/// output, one token after the other, and `t` the tokens' intermediates (`R` floats each). Without
/// DoRA, or when only the last adapter is DoRA, the batched kernel adds every term and the rows are
/// then scaled; other stacks go one token at a time.
pub(crate) fn expand_tile(
    lk: &LoraKernels,
    refs: &[LoraRef<'_>],
    gains: &[Option<&[f32]>],
    t: &[f32],
    r0: usize,
    cr: usize,
    tile: &mut [f32],
) {
    let n_tok = tile.len() / cr;
    let r = t.len() / n_tok.max(1);
    if gains.iter().rev().skip(1).all(Option::is_none) {
        (lk.expand_batch)(refs, n_tok, t, r0, r0 + cr, tile, cr);
        if let Some(Some(g)) = gains.last() {
            for y in tile.chunks_exact_mut(cr) {
                for (v, &g) in y.iter_mut().zip(&g[r0..r0 + cr]) {
                    *v *= g;
                }
            }
        }
        return;
    }
    for (tok, y) in tile.chunks_exact_mut(cr).enumerate() {
        expand_rows(lk, refs, gains, &t[tok * r..(tok + 1) * r], r0, y);
    }
}

/// Gains already computed for a session's adapters, so that publishing a set again (a swap back,
/// another scale seen before) copies `Arc`s instead of recomputing and allocates nothing. Keyed by
/// the adapter's identity (a `Weak`, which keeps the address from being reused) and the user scale.
pub(crate) struct GainCache {
    entries: Vec<(std::sync::Weak<Adapter>, u32, Arc<DoraGains>)>,
    /// The pool the gains are computed on, started at the first DoRA publish.
    pool: Option<ThreadPool>,
    n_threads: usize,
}

/// Entries kept (the oldest are dropped first).
const CACHE_ENTRIES: usize = 8;

impl GainCache {
    pub(crate) fn new(n_threads: usize) -> GainCache {
        GainCache {
            entries: Vec::new(),
            pool: None,
            n_threads: n_threads.max(1),
        }
    }

    /// The gains of `adapter` at `scale` (`None` for an adapter without DoRA tensors): from the cache,
    /// or computed on the pool and remembered.
    pub(crate) fn get(
        &mut self,
        model: &Model,
        adapter: &Arc<Adapter>,
        scale: f32,
    ) -> Result<Option<Arc<DoraGains>>> {
        if !adapter.is_dora() || scale == 0.0 {
            return Ok(None);
        }
        let key = scale.to_bits();
        let weak = Arc::downgrade(adapter);
        if let Some((_, _, g)) = self
            .entries
            .iter()
            .find(|(w, k, _)| *k == key && w.ptr_eq(&weak))
        {
            return Ok(Some(Arc::clone(g)));
        }
        if self.pool.is_none() {
            self.pool = Some(ThreadPool::new(self.n_threads).map_err(|e| {
                Error::invalid(format!("cannot start threads for the DoRA norms: {e}"))
            })?);
        }
        let pool = self.pool.as_ref().expect("started above");
        let Some(g) = gains(model, adapter, scale, pool)? else {
            return Ok(None);
        };
        let g = Arc::new(g);
        self.entries.retain(|(w, _, _)| w.strong_count() > 0);
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push((weak, key, Arc::clone(&g)));
        Ok(Some(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[f32]) -> Vec<u16> {
        v.iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect()
    }

    /// PEFT's order: y = g2 ⊙ (g1 ⊙ (W0x + s0·B0t0 + s1·B1t1) + s2·B2t2) for [LoRA, DoRA, DoRA],
    /// checked against the formula written out for two output rows.
    #[test]
    fn stacking_scales_what_comes_before() {
        let (a, b) = (h(&[1.0, 0.0]), h(&[1.0, 2.0]));
        let r = |scale| LoraRef {
            rank: 1,
            n_in: 2,
            n_out: 2,
            a: &a,
            b: &b,
            scale,
        };
        let refs = [r(1.0), r(0.5), r(2.0)];
        let (g1, g2) = ([2.0f32, 3.0], [0.5f32, 0.25]);
        let gains = [None, Some(&g1[..]), Some(&g2[..])];
        let t = [1.0f32, 2.0, 3.0];
        let w0x = [10.0f32, 20.0];
        let mut y = w0x;
        expand_rows(LoraKernels::scalar(), &refs, &gains, &t, 0, &mut y);
        for j in 0..2 {
            let bj = [1.0f32, 2.0][j];
            let inner = g1[j] * (w0x[j] + 1.0 * bj * t[0] + 0.5 * bj * t[1]);
            let want = g2[j] * (inner + 2.0 * bj * t[2]);
            assert!((y[j] - want).abs() < 1e-5, "row {j}: {} vs {want}", y[j]);
        }
        // Rows from an offset read the gains of those rows.
        let mut y1 = [w0x[1]];
        expand_rows(LoraKernels::scalar(), &refs, &gains, &t, 1, &mut y1);
        assert_eq!(y1[0], y[1]);
    }

    /// A tile of 3 tokens gives each token what [`expand_rows`] gives it, for a DoRA last (batched
    /// kernel, then scaled) and first (one token at a time).
    #[test]
    fn tile_matches_rows_per_token() {
        let (a, b) = (h(&[1.0, 0.0]), h(&[1.0, 2.0, -1.0, 0.5]));
        let r = |scale| LoraRef {
            rank: 1,
            n_in: 2,
            n_out: 4,
            a: &a,
            b: &b,
            scale,
        };
        let refs = [r(1.0), r(0.5)];
        let g = [2.0f32, 3.0, 0.5, 0.25];
        let t = [1.0f32, 2.0, -1.0, 0.5, 3.0, 1.5];
        let w0x = [10.0f32, 20.0, -5.0, 7.0, 1.0, 2.0];
        let lk = LoraKernels::scalar();
        for gains in [[None, Some(&g[..])], [Some(&g[..]), None]] {
            let mut tile = w0x;
            expand_tile(lk, &refs, &gains, &t, 1, 2, &mut tile);
            for tok in 0..3 {
                let mut y = [w0x[2 * tok], w0x[2 * tok + 1]];
                expand_rows(lk, &refs, &gains, &t[2 * tok..2 * tok + 2], 1, &mut y);
                assert_eq!(y, tile[2 * tok..2 * tok + 2], "token {tok}, {gains:?}");
            }
        }
    }
}
