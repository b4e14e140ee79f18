//! Quantized linear layers with fused LoRA: [`linear`] multiplies one input by one or several
//! weights (q/k/v, gate/up) with the integer kernels of `kernels/`, each weight's adapters added
//! beside it as `s·B·(A·x)`, over the thread pool; [`QuantCache`] keeps the input quantized once for
//! all the weights that read it.
use super::ops::LinearInput;
use crate::adapter::{dora, LoraRefs, Skips};
use crate::arch::{ActQuant, Env};
use crate::kernels::lora::total_rank;
use crate::kernels::prefetch::prefetch;
use crate::kernels::{ActRows, Kernels, QuantType};
use crate::model::WeightRef;
use crate::threadpool::{Disjoint, ThreadPool};

/// Bytes needed to hold one quantized activation row of `n` elements for weights of type `ty`.
fn xq_row_bytes(ty: QuantType, n: usize) -> usize {
    ty.vec_dot_type().row_bytes(n).unwrap_or(n * 4)
}

/// The scratch of [`linear`]: the input quantized for the weights' dot products, one buffer per
/// `vec_dot_type`, filled on demand and reused by every weight that shares the input (q/k/v,
/// gate/up); and one output tile per thread for batched products.
pub(crate) struct QuantCache {
    slots: [QuantSlot; 4],
    /// Per thread, `[n_batch, CHUNK_ROWS]`: a chunk's rows for every token of the batch.
    tiles: Vec<f32>,
    tile_len: usize,
}

struct QuantSlot {
    vt: QuantType,
    /// Which input the rows hold (an [`ActBuf`] version; 0: none), its row stride in bytes and rows.
    version: u64,
    stride: usize,
    rows: usize,
    q: Vec<u8>,
    /// The residual's quantization (mode `Q8x2`, integer types only).
    r: Vec<u8>,
}

impl QuantCache {
    /// Bytes of the quantized activations and the per-thread tiles.
    pub(super) fn bytes(&self) -> usize {
        let slots: usize = self.slots.iter().map(|s| s.q.len() + s.r.len()).sum();
        slots + 4 * self.tiles.len()
    }

    /// Buffers for `n_batch` rows of up to `n_max` values in each activation format of `formats` (the
    /// `vec_dot_type`s of the model's matrices; the other slots stay empty).
    pub(super) fn new(
        mode: ActQuant,
        n_batch: usize,
        n_max: usize,
        n_threads: usize,
        formats: &[QuantType],
    ) -> Self {
        let mk = |vt: QuantType| {
            let rows = if formats.contains(&vt) { n_batch } else { 0 };
            let row_bytes = (vt.row_bytes(n_max.next_multiple_of(256))).unwrap_or(4 * n_max);
            let bytes = row_bytes * rows;
            let resid = mode == ActQuant::Q8x2 && vt != QuantType::F32;
            QuantSlot {
                vt,
                version: 0,
                stride: 0,
                rows: 0,
                q: vec![0u8; bytes],
                r: vec![0u8; if resid { bytes } else { 0 }],
            }
        };
        let tile_len = n_batch * CHUNK_ROWS;
        QuantCache {
            slots: [
                mk(QuantType::Q8_0),
                mk(QuantType::Q8_1),
                mk(QuantType::Q8K),
                mk(QuantType::F32),
            ],
            tiles: vec![0.0; if n_batch > 1 { n_threads * tile_len } else { 0 }],
            tile_len,
        }
    }
    /// Make sure the buffer for weights of type `ty` holds `rows` rows of the input (row length `n`)
    /// quantized: done once per input version and activation format.
    fn ensure(
        &mut self,
        k: &Kernels,
        ty: QuantType,
        input: LinearInput<'_>,
        n: usize,
        rows: usize,
    ) {
        let x = input.x;
        let vt = ty.vec_dot_type();
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.vt == vt)
            .expect("every vec_dot_type has a slot");
        let stride = xq_row_bytes(ty, n);
        if slot.version == input.version && slot.stride == stride && slot.rows == rows {
            return;
        }
        let rows_of = |t: usize| t * stride..(t + 1) * stride;
        if slot.r.is_empty() {
            let q = k.quantize(vt).expect("quantizer for vec_dot_type");
            for t in 0..rows {
                q(&x[t * n..(t + 1) * n], &mut slot.q[rows_of(t)]);
            }
        } else {
            // q8x2: 8 bits plus the residual on the grid d/256 (a 16-bit quantization).
            let q2 = k.quantize2(vt).expect("q8x2 quantizer for vec_dot_type");
            for t in 0..rows {
                q2(
                    &x[t * n..(t + 1) * n],
                    &mut slot.q[rows_of(t)],
                    &mut slot.r[rows_of(t)],
                );
            }
        }
        slot.version = input.version;
        slot.stride = stride;
        slot.rows = rows;
    }
}

/// The quantized rows for weights of type `ty` (after [`QuantCache::ensure`]).
fn act_rows(slots: &[QuantSlot], ty: QuantType) -> ActRows<'_> {
    let vt = ty.vec_dot_type();
    let s = slots
        .iter()
        .find(|s| s.vt == vt)
        .expect("every vec_dot_type has a slot");
    let len = s.stride * s.rows;
    ActRows {
        q: &s.q[..len],
        r: (!s.r.is_empty()).then(|| &s.r[..len]),
        stride: s.stride,
        n_tok: s.rows,
    }
}

/// The adapters on the weights of one `linear` call and the scratch for their intermediates.
struct Lora<'a, 'r, const N: usize> {
    refs: &'a [(LoraRefs<'r>, Skips); N],
    t: &'a mut [f32],
}

/// `out_j[t] = W_j · x[t] + Σ s·B_j(A_j x[t])` (a DoRA adapter scales the running sum by its gains,
/// [`dora::expand_rows`]) for every weight j and token t, all weights in one parallel pass. `x` is
/// [rows, n] row-major; each `out_j` is [rows, W_j.n_out]. The adapters on each weight are found from
/// the weight ([`Applied::refs_for`](crate::adapter::Applied::refs_for)); `lora_t` is the scratch for
/// their intermediates (the session's `lora_t`).
///
/// Work is split in chunks of output rows of one weight ([`chunk_rows`]). A chunk multiplies its
/// rows with every token at once ([`Kernels::matmul`]: each weight block unpacked once for several
/// tokens) into the thread's tile, adds the LoRA expand there, and copies the tile into the outputs;
/// a single token (decode) is written in place.
pub(crate) fn linear<const N: usize>(
    env: &Env<'_>,
    xq: &mut QuantCache,
    input: LinearInput<'_>,
    n: usize,
    rows: usize,
    outs: [(&WeightRef, &mut [f32]); N],
    lora_t: &mut [f32],
) {
    let gated: [_; N] = core::array::from_fn(|j| env.applied.refs_for(outs[j].0, rows));
    let gains: [_; N] = core::array::from_fn(|j| env.applied.gains_for(outs[j].0, rows));
    let lora = Lora {
        refs: &gated,
        t: lora_t,
    };
    let (k, pool, lk): (&Kernels, &ThreadPool, _) = (env.k, env.pool, env.lk);
    let x = &input.x[..rows * n];
    let ts = lora_shrink(env, x, n, rows, lora.refs, lora.t);
    // Each weight's bytes: the base's, or an adapter's fp16 replacement (which reads `x` as it is).
    let views: [(QuantType, &[u8]); N] =
        core::array::from_fn(|j| env.applied.weight_view(env.m, outs[j].0));
    let replaced: [bool; N] = core::array::from_fn(|j| views[j].0 != outs[j].0.ty);
    // Quantize the input once per vec_dot_type needed (all weights of a group usually share one).
    for (j, (w, _)) in outs.iter().enumerate() {
        debug_assert_eq!(w.n_in, n);
        if !replaced[j] {
            xq.ensure(k, w.ty, input, n, rows);
        }
    }
    let QuantCache {
        slots,
        tiles,
        tile_len,
    } = xq;
    let (tiles, tile_len) = (Disjoint::new(tiles), *tile_len);
    let inputs: [ActRows; N] = core::array::from_fn(|j| match replaced[j] {
        true => ActRows::f32(x, n),
        false => act_rows(slots, outs[j].0.ty),
    });
    let jobs: [(&WeightRef, Disjoint<f32>); N] = outs.map(|(w, o)| (w, Disjoint::new(o)));
    let lora_refs = lora.refs;
    // Chunks of output rows, over all the weights one after the other.
    let per: [usize; N] =
        core::array::from_fn(|j| chunk_rows(jobs[j].0.n_out, rows, pool.n_threads()));
    let chunks: [usize; N] = core::array::from_fn(|j| jobs[j].0.n_out.div_ceil(per[j]));
    let n_chunks: usize = chunks.iter().sum();
    pool.run(n_chunks, &|thread, mut c| {
        let mut j = 0;
        while c >= chunks[j] {
            c -= chunks[j];
            j += 1;
        }
        let (w, out) = &jobs[j];
        let (r0, r1) = (c * per[j], ((c + 1) * per[j]).min(w.n_out));
        let (ty, bytes) = views[j];
        let rb = bytes.len() / w.n_out.max(1);
        let wr = &bytes[r0 * rb..r1 * rb];
        let refs = &lora_refs[j].0;
        let rr = ts[j].len() / rows;
        if rows == 1 {
            // The expand below reads these rows of each B: loaded while the base product runs.
            for a in refs.iter() {
                prefetch(&a.b[r0 * a.rank..r1 * a.rank]);
            }
            // SAFETY: every chunk index is handed out once and chunks cover disjoint rows.
            let o = unsafe { out.range(r0..r1) };
            let ok = k.matmul(ty, n, wr, inputs[j], o);
            debug_assert!(ok, "weight types checked at load");
            if !refs.is_empty() {
                dora::expand_rows(lk, refs, &gains[j], ts[j], r0, o);
            }
            return;
        }
        let cr = r1 - r0;
        // SAFETY: each thread uses its own tile, and runs one chunk at a time.
        let tile = unsafe { tiles.range(thread * tile_len..thread * tile_len + rows * cr) };
        let ok = k.matmul(ty, n, wr, inputs[j], tile);
        debug_assert!(ok, "weight types checked at load");
        if !refs.is_empty() {
            dora::expand_tile(lk, refs, &gains[j], &ts[j][..rows * rr], r0, cr, tile);
        }
        for (t, row) in tile.chunks_exact(cr).enumerate() {
            // SAFETY: chunks cover disjoint rows of every token's output.
            unsafe { out.range(t * w.n_out + r0..t * w.n_out + r1) }.copy_from_slice(row);
        }
    });
}

/// LoRA shrink for every weight of a `linear` call that has adapters (`x` is `[rows, n]`): `t_j = A·x` for all tokens,
/// `[rows, R_j]` in the j-th third of the scratch (empty for a weight without adapters); rows an
/// aLoRA skips are zeroed in its part, so its expand adds nothing there. A batch is split in chunks of
/// [`SHRINK_TOKENS`] tokens over the thread pool.
fn lora_shrink<'t, const N: usize>(
    env: &Env<'_>,
    x: &[f32],
    n: usize,
    rows: usize,
    refs: &[(LoraRefs<'_>, Skips); N],
    scratch: &'t mut [f32],
) -> [&'t [f32]; N] {
    let ranks: [usize; N] = core::array::from_fn(|j| total_rank(&refs[j].0));
    let mut ts: [&[f32]; N] = [&[]; N];
    if ranks.iter().all(|&r| r == 0) {
        return ts;
    }
    let per = scratch.len() / 3;
    let parts = Disjoint::new(&mut scratch[..N * per]);
    let chunks = rows.div_ceil(SHRINK_TOKENS);
    let shrink = |_: usize, job: usize| {
        let (j, c) = (job / chunks, job % chunks);
        let (rr, t0, t1) = (
            ranks[j],
            c * SHRINK_TOKENS,
            ((c + 1) * SHRINK_TOKENS).min(rows),
        );
        // SAFETY: every (weight, token chunk) job is handed out once; their ranges are disjoint.
        let t = unsafe { parts.range(j * per + t0 * rr..j * per + t1 * rr) };
        (env.lk.shrink_batch)(&refs[j].0, t1 - t0, &x[t0 * n..t1 * n], t);
    };
    match chunks {
        // One token chunk (decode): not worth waking the pool. Every A is hinted first, so that its
        // lines load in parallel instead of one after the other as the shrink reaches them.
        1 => {
            refs.iter()
                .flat_map(|(r, _)| r.iter())
                .for_each(|a| prefetch(a.a));
            (0..N).for_each(|j| shrink(0, j))
        }
        _ => env.pool.run(N * chunks, &shrink),
    }
    for (j, tj) in scratch.chunks_exact_mut(per).take(N).enumerate() {
        let rr = ranks[j];
        crate::adapter::alora::gate_rows(&refs[j].0, &refs[j].1, rr, &mut tj[..rows * rr]);
        ts[j] = &tj[..rows * rr];
    }
    ts
}

/// Tokens per work chunk of the LoRA shrink of a batch.
const SHRINK_TOKENS: usize = 16;

/// Output rows per work chunk of `linear` for a batch (threads take chunks dynamically).
const CHUNK_ROWS: usize = 64;

/// Output rows per work chunk of a weight with `n_out` rows, for `tokens` tokens on `threads`
/// threads. A batch works in tiles of [`CHUNK_ROWS`]. One token (decode) splits the weight in two
/// chunks per thread: the matrix×vector kernel streams each chunk's rows from memory, and its
/// streams run at full speed only when long (64-row chunks ran the Q8_0 kernel at half speed).
fn chunk_rows(n_out: usize, tokens: usize, threads: usize) -> usize {
    match tokens {
        1 => n_out.div_ceil(2 * threads.max(1)).max(CHUNK_ROWS),
        _ => CHUNK_ROWS,
    }
}
