//! The pieces every architecture's forward pass is built from, and the buffers they work in.
//!
//! [`State`] holds every activation buffer and the KV cache, sized once in `Session::new`; nothing here
//! allocates. Buffers are `[B, width]` row-major over the batch's B tokens.
use super::kv::KvCache;
use crate::arch::{Capacity, Env};
use crate::kernels::QuantType;
use crate::model::Model;
use crate::threadpool::Disjoint;
use crate::Result;

pub(crate) use super::linear::{linear, QuantCache};
pub(crate) use super::rope::Rope;

/// An activation buffer that numbers its contents: every mutable borrow gives it a new version
/// (unique across buffers), so the quantized copy [`linear`] keeps of its input ([`QuantCache`])
/// knows when it is stale without being told. Reads go through `Deref` and keep the version.
pub(crate) struct ActBuf {
    data: Vec<f32>,
    version: u64,
}

impl ActBuf {
    fn new(len: usize) -> ActBuf {
        ActBuf {
            data: vec![0.0; len],
            version: next_version(),
        }
    }
    /// The first `len` values as the input of a [`linear`] call.
    pub fn input(&self, len: usize) -> LinearInput<'_> {
        LinearInput {
            x: &self.data[..len],
            version: self.version,
        }
    }
}

/// A number no buffer content has had before.
fn next_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl std::ops::Deref for ActBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl std::ops::DerefMut for ActBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.version = next_version();
        &mut self.data
    }
}

/// The input rows of a [`linear`] call and the version of the buffer they were read from.
#[derive(Clone, Copy)]
pub(crate) struct LinearInput<'a> {
    pub(super) x: &'a [f32],
    pub(super) version: u64,
}

/// Activations, KV cache and scratch of a session.
pub(crate) struct State {
    pub x: Vec<f32>, // residual stream        [B, n_embd]
    pub xb: ActBuf,  // normed input           [B, n_embd]
    pub work: Work,  // q, k, v; Wo output; ffn up; Wdown output (one at a time)
    /// Hidden rows: the attention output [B, q_dim] until Wo has read it, then the FFN gate and
    /// act(gate)·up [B, n_ff] (one buffer: the two are never live together).
    pub hb: ActBuf,
    pub att: Vec<f32>, // attention scores, per thread [n_threads, n_ctx]
    pub xq: QuantCache,
    pub logits: Vec<f32>, // [1 or B, n_vocab]
    /// RoPE of the global layers (`rope.freq_base`) and of the local ones (`rope.freq_base_swa`).
    pub rope: [Rope; 2],
    pub kv: KvCache,
    /// LoRA intermediates t = A·x of up to three weights sharing an input [3, B, max_adapters · max_rank].
    pub lora_t: Vec<f32>,
}

/// One buffer for two phases of a block that never overlap: the batch's queries, keys and values
/// during attention, the feed-forward's up projection after it.
pub(crate) struct Work {
    buf: Vec<f32>,
    /// Lengths of the q and of the k (= v) parts: `n_batch` rows each.
    q_len: usize,
    kv_len: usize,
}

impl Work {
    fn new(n_batch: usize, n_embd: usize, q_dim: usize, kv_dim: usize, n_ff: usize) -> Work {
        let (q_len, kv_len) = (n_batch * q_dim, n_batch * kv_dim);
        let len = (q_len + 2 * kv_len)
            .max(n_batch * n_ff)
            .max(n_batch * n_embd);
        Work {
            buf: vec![0.0; len],
            q_len,
            kv_len,
        }
    }

    /// Queries, keys and values of the batch                           [B, q_dim], [B, kv_dim] × 2
    pub fn qkv(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let (q, rest) = self.buf.split_at_mut(self.q_len);
        let (k, rest) = rest.split_at_mut(self.kv_len);
        (q, k, &mut rest[..self.kv_len])
    }

    /// The feed-forward's up projection (overwrites q, k, v)           [B, n_ff]
    pub fn up(&mut self) -> &mut [f32] {
        &mut self.buf
    }

    /// The output of Wo or Wdown, read before the next q, k, v or up (overwrites them)   [B, n_embd]
    pub fn proj(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl State {
    /// Every buffer for `cfg` (whose `n_batch` is already clamped to `n_ctx`).
    pub fn new(m: &Model, cfg: &Capacity) -> Result<State> {
        let hp = &m.hp;
        let n_batch = cfg.n_batch;
        let rope = [
            Rope::global(m, cfg.n_ctx, n_batch),
            Rope::sliding_window(hp, n_batch),
        ];
        let n_logit_rows = if cfg.logits_all { n_batch } else { 1 };
        let (e, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        Ok(State {
            x: vec![0.0; n_batch * e],
            xb: ActBuf::new(n_batch * e),
            work: Work::new(n_batch, e, qd, kvd, ff),
            hb: ActBuf::new(n_batch * ff.max(qd)),
            att: vec![0.0; cfg.n_threads * cfg.n_ctx],
            xq: QuantCache::new(
                cfg.act_quant,
                n_batch,
                e.max(ff).max(qd),
                cfg.n_threads,
                &activation_formats(m),
            ),
            logits: vec![0.0; n_logit_rows * hp.n_vocab],
            rope,
            kv: KvCache::new(hp, cfg.n_ctx, n_batch, cfg.type_k, cfg.type_v)?,
            lora_t: vec![0.0; 3 * n_batch * cfg.max_adapters * cfg.max_rank],
        })
    }
}

/// The formats `linear` quantizes activations to for the model's matrices (their `vec_dot_type`s).
fn activation_formats(m: &Model) -> Vec<QuantType> {
    let mut formats: Vec<QuantType> = (m.layers.iter())
        .flat_map(|l| l.lora_weights())
        .chain([&m.output])
        .map(|w| w.ty.vec_dot_type())
        .collect();
    formats.sort_by_key(|t| *t as u32);
    formats.dedup();
    formats
}

impl State {
    /// Bytes of each part of the buffers.
    pub fn memory(&self) -> crate::session::SessionMemory {
        let f = |v: &[f32]| 4 * v.len();
        let rope: usize = self
            .rope
            .iter()
            .map(|r| 4 * r.inv_freq.len() + 8 * r.cs.len())
            .sum();
        let activations = [&self.x[..], &self.xb, &self.work.buf, &self.hb, &self.att]
            .iter()
            .map(|v| f(v))
            .sum::<usize>()
            + self.xq.bytes()
            + rope
            + self.kv.staging_bytes();
        crate::session::SessionMemory {
            kv: self.kv.bytes(),
            activations,
            logits: f(&self.logits),
            lora_scratch: f(&self.lora_t),
        }
    }
}

/// x[t] = scale · (token_embd[tokens[t]] + embedding LoRA)                              [B, e]
/// (`token_embd` an adapter's fp16 replacement when one is active).
pub(crate) fn embed(env: &Env<'_>, x: &mut [f32], lora_t: &mut [f32], tokens: &[u32], scale: f32) {
    let m = env.m;
    let e = m.hp.n_embd;
    let (ty, table) = env.applied.weight_view(m, &m.token_embd);
    let rb = table.len() / m.token_embd.n_out.max(1);
    let (refs, skips) = env.applied.refs_for(&m.token_embd, tokens.len());
    for (t, &id) in tokens.iter().enumerate() {
        let row = &table[id as usize * rb..(id as usize + 1) * rb];
        let xt = &mut x[t * e..(t + 1) * e];
        let ok = crate::kernels::scalar::dequantize(ty, row, xt);
        debug_assert!(ok, "token_embd type checked at load");
        // Embedding LoRA: x += s · B · A[token], A token-major (a row of A is the intermediate).
        for (r, _) in refs.iter().zip(&skips).filter(|(_, &skip)| t >= skip) {
            // The LoRA scratch holds ≥ max_rank floats (sized at creation), and the rank was checked.
            let tv = &mut lora_t[..r.rank];
            for (d, &h) in tv
                .iter_mut()
                .zip(&r.a[id as usize * r.rank..(id as usize + 1) * r.rank])
            {
                *d = half::f16::from_bits(h).to_f32();
            }
            (env.lk.expand)(&[*r], tv, 0, xt);
        }
        if scale != 1.0 {
            for v in xt.iter_mut() {
                *v *= scale;
            }
        }
    }
}

/// out[t] = x[t] / rms(x[t]) ⊙ w, over rows of `w.len()`.
pub(crate) fn rmsnorm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let n = w.len();
    for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let scale = rms_scale(x, eps);
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// x[t] = x[t] / rms(x[t]) ⊙ w in place, over rows of `w.len()` (e.g. every head of q: QK-norm).
pub(crate) fn rmsnorm_rows_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    for x in x.chunks_exact_mut(w.len()) {
        let scale = rms_scale(x, eps);
        for (x, &w) in x.iter_mut().zip(w) {
            *x = *x * scale * w;
        }
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt()
}

/// Rotate adjacent pairs (x[2i], x[2i+1]) of every head by the angles in `cs` (cos, sin) — llama as
/// GGUF stores it (Q/K rows permuted by the converter).
pub(crate) fn rope_pairs(x: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(hd) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// Rotate (x[i], x[i + rot/2]) of every head by the angles in `cs` (NeoX style), `rot = 2·cs.len()`.
pub(crate) fn rope_neox(x: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    let half = cs.len();
    for head in x.chunks_exact_mut(hd) {
        let (lo, hi) = head[..2 * half].split_at_mut(half);
        for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// A run of consecutive positions whose keys (and values) are consecutive rows: `len` rows from row
/// `first` of the cache (`cached`) or of the batch's own keys.
#[derive(Clone, Copy, Default)]
struct KvRun {
    cached: bool,
    first: usize,
    len: usize,
}

/// Positions `lo..=p` as at most three runs: cached positions `< pos0` in ring slots `j % cap` (split
/// where the ring wraps), then the batch's positions `pos0..` (row `j − pos0`). Empty runs have
/// `len` 0.
fn kv_runs(lo: usize, p: usize, pos0: usize, cap: usize) -> [KvRun; 3] {
    let cached_end = (p + 1).min(pos0);
    let n_cached = cached_end.saturating_sub(lo);
    let first = lo % cap.max(1);
    let before_wrap = n_cached.min(cap - first);
    let from = lo.max(pos0);
    [
        KvRun {
            cached: true,
            first,
            len: before_wrap,
        },
        KvRun {
            cached: true,
            first: 0,
            len: n_cached - before_wrap,
        },
        KvRun {
            cached: false,
            first: from - pos0,
            len: (p + 1).saturating_sub(from),
        },
    ]
}

/// Causal attention of layer `l` for a batch of `b` tokens at positions pos0.., then the batch's keys
/// and values are appended to the layer's cache.
///
/// att_out[t, h] = softmax(scale · q[t,h]·K[lo..=p]ᵀ) · V[lo..=p], p = pos0 + t, lo = p + 1 - window
/// (0 for global layers, `window = 0`). Keys of earlier batches come from the cache (slot `j % cap`),
/// the batch's own from `kk` / `v`, so a local layer's ring never needs more than `window` slots.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    env: &Env<'_>,
    kv: &mut KvCache,
    att: &mut [f32],
    q: &[f32],
    kk: &[f32],
    v: &[f32],
    att_out: &mut [f32],
    l: usize,
    pos0: usize,
    b: usize,
    window: usize,
    scale: f32,
) {
    let hp = &env.m.hp;
    let k = env.k;
    let (qd, kvd, hd) = (hp.q_dim(), hp.kv_dim(), hp.head_dim);
    let (off, cap) = (kv.off[l], kv.cap[l]);
    let (kk, v) = (&kk[..b * kvd], &v[..b * kvd]);
    kv.stage(kk, v);
    {
        let (kc, vc) = (kv.k.rows(), kv.v.rows());
        let (kb, vb) = kv.batch_rows(kk, v);
        let q = &q[..b * qd];
        let out = Disjoint::new(&mut att_out[..b * qd]);
        let att = Disjoint::new(att);
        let n_ctx = env.n_ctx;
        let (n_head, group) = (hp.n_head, hp.n_head / hp.n_head_kv);
        env.pool.run(b * n_head, &|i, job| {
            // SAFETY: each thread uses its own row of `att`, and runs one chunk at a time.
            let att = unsafe { att.range(i * n_ctx..(i + 1) * n_ctx) };
            let (t, h) = (job / n_head, job % n_head);
            let p = pos0 + t;
            let lo = if window > 0 {
                (p + 1).saturating_sub(window)
            } else {
                0
            };
            let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
            let kvh = (h / group) * hd;
            let runs = kv_runs(lo, p, pos0, cap);
            // Where head `kvh` of a run's first key (or value) starts; rows follow at stride kvd.
            let at = |run: &KvRun| if run.cached { off } else { 0 } + run.first * kvd + kvh;
            let sc = &mut att[..p + 1 - lo];
            let mut n = 0;
            for run in &runs {
                let keys = if run.cached { kc } else { kb };
                keys.dot(k, qh, at(run), kvd, &mut sc[n..n + run.len]);
                n += run.len;
            }
            let mut max = f32::NEG_INFINITY;
            for s in sc.iter_mut() {
                *s *= scale;
                max = max.max(*s);
            }
            let inv = 1.0 / (k.exp_shift)(sc, max);
            for s in sc.iter_mut() {
                *s *= inv;
            }
            // SAFETY: each (t, h) chunk is handed out once and owns its head slice of the output.
            let o = unsafe { out.range(t * qd + h * hd..t * qd + (h + 1) * hd) };
            o.fill(0.0);
            let mut n = 0;
            for run in &runs {
                let values = if run.cached { vc } else { vb };
                values.axpy(k, &sc[n..n + run.len], at(run), kvd, o);
                n += run.len;
            }
        });
    }
    kv.append(l, pos0, b, kk, v);
}

/// logits = Wout · rmsnorm(x) for the last `rows` rows of the batch (all with `logits_all`), then
/// the soft cap `c·tanh(logits/c)` if the model has one. Returns `rows`.                [rows, n_vocab]
pub(crate) fn output(env: &Env<'_>, st: &mut State, b: usize) -> usize {
    let m = env.m;
    let hp = &m.hp;
    let e = hp.n_embd;
    let first = if env.logits_all { 0 } else { b - 1 };
    let rows = b - first;
    rmsnorm_rows(
        &mut st.xb[..rows * e],
        &st.x[first * e..b * e],
        m.f32s(&m.output_norm),
        hp.rms_eps,
    );
    let nv = hp.n_vocab;
    linear(
        env,
        &mut st.xq,
        st.xb.input(rows * e),
        e,
        rows,
        [(&m.output, &mut st.logits[..rows * nv])],
        &mut st.lora_t,
    );
    let c = hp.logit_softcap;
    if c > 0.0 {
        for l in st.logits[..rows * nv].iter_mut() {
            *l = c * (*l / c).tanh();
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_buf_versions_change_on_every_write_only() {
        let mut a = ActBuf::new(4);
        let b = ActBuf::new(4);
        let v0 = a.input(4).version;
        assert_ne!(v0, b.input(4).version, "two buffers share a version");
        assert_eq!(a[1], 0.0);
        assert_eq!(a.input(2).version, v0, "a read changed the version");
        a[1] = 2.0;
        let v1 = a.input(4).version;
        assert_ne!(v1, v0);
        rmsnorm_rows(&mut a, &[1.0; 4], &[1.0; 4], 1e-6);
        assert_ne!(a.input(4).version, v1);
        assert!(a.input(4).x.iter().all(|&v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn neox_rope_rotates_halves() {
        // One head of 4 with rot 4: pairs (0,2) and (1,3); angle 90° on the first, 0° on the second.
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope_neox(&mut x, 4, &[(0.0, 1.0), (1.0, 0.0)]);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
        let mut y = [1.0, 2.0, 3.0, 4.0];
        rope_pairs(&mut y, 4, &[(0.0, 1.0), (1.0, 0.0)]);
        assert_eq!(y, [-2.0, 1.0, 3.0, 4.0]);
    }

    /// The runs list every position `lo..=p` once, in order, at the row the cache ring (slot
    /// `j % cap` for `j < pos0`) or the batch (row `j − pos0`) holds it.
    #[test]
    fn kv_runs_walk_the_ring_and_the_batch() {
        for cap in 1..=9usize {
            for pos0 in 0..20usize {
                for p in pos0..pos0 + 5 {
                    for window in [0, 1, 2, cap] {
                        if window == 0 && pos0 > cap {
                            continue; // a global layer's cache holds every position
                        }
                        let lo = if window > 0 {
                            (p + 1).saturating_sub(window)
                        } else {
                            0
                        };
                        if lo + cap < pos0 {
                            continue; // positions the ring no longer holds
                        }
                        let want: Vec<(bool, usize)> = (lo..=p)
                            .map(|j| {
                                if j < pos0 {
                                    (true, j % cap)
                                } else {
                                    (false, j - pos0)
                                }
                            })
                            .collect();
                        let got: Vec<(bool, usize)> = kv_runs(lo, p, pos0, cap)
                            .iter()
                            .flat_map(|r| (0..r.len).map(move |i| (r.cached, r.first + i)))
                            .collect();
                        assert_eq!(got, want, "lo {lo} p {p} pos0 {pos0} cap {cap}");
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_tanh_values() {
        // Reference values of 0.5x(1+tanh(√(2/π)(x+0.044715x³))) computed by hand to 6 digits.
        let mut g = [0.0f32, 1.0, -1.0, 3.0];
        (crate::kernels::Kernels::scalar().geglu)(&mut g, &[1.0; 4]);
        let want = [0.0f32, 0.841192, -0.158808, 2.996363];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{g:?}");
        }
    }
}
