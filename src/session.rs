//! A session: the KV cache and every buffer of the forward pass, sized once at creation, plus the worker
//! pool. `eval` runs the LLaMA forward pass (llama2.c style: one readable function, short fixed names)
//! over a batch of tokens; decoding is `eval` of one token. Nothing on that path allocates.
use crate::adapter::Adapter;
use crate::adapter_set::{AdapterControl, Applied, MAX_ADAPTERS};
use crate::kernels::lora::{total_rank, LoraKernels, LoraRef};
use crate::kernels::{BlockQ8_1, F16Bits, Kernels, QuantType};
use crate::model::{Model, WeightRef, LAYER_SLOTS};
use crate::threadpool::{Disjoint, ThreadPool};
use crate::{Error, Result};
use std::sync::Arc;

/// Capacities of a session, fixed at creation.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Maximum tokens in the context (KV cache length).
    pub n_ctx: usize,
    /// Maximum tokens evaluated in one forward pass (prompt chunks); sizes the activation buffers.
    pub n_batch: usize,
    /// Threads of the worker pool (including the caller's).
    pub n_threads: usize,
    /// Keep the logits of every position of a batch (for `edge-run logits`), not only the last.
    pub logits_all: bool,
    /// Kernel tier to use; `None` picks the best this CPU runs.
    pub kernels: Option<&'static Kernels>,
    /// Activation quantization for the integer dot products.
    pub act_quant: ActQuant,
    /// Most adapters applied at once (≤ `adapter_set::MAX_ADAPTERS`).
    pub max_adapters: usize,
    /// Largest LoRA rank an applied adapter may have.
    pub max_rank: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { n_ctx: 2048, n_batch: 64, n_threads: default_threads(), logits_all: false, kernels: None, act_quant: ActQuant::Q8x2, max_adapters: MAX_ADAPTERS, max_rank: 64 }
    }
}

/// Physical cores, as llama.cpp's default for `-t` (falls back to the logical count).
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    physical_cores().unwrap_or(logical).clamp(1, logical)
}

fn physical_cores() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']);
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert((phys.to_string(), v.trim_start_matches([' ', '\t', ':']).to_string()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Bytes needed to hold one quantized activation row of `n` elements for weights of type `ty`.
fn xq_row_bytes(ty: QuantType, n: usize) -> usize {
    ty.vec_dot_type().row_bytes(n).unwrap_or(n * 4)
}

/// How activations are quantized for the integer dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// One 8-bit quantization per block, exactly as ggml does (fastest).
    Q8,
    /// 8-bit quantization plus an 8-bit quantization of its residual, `x ≈ d₁q₁ + d₂q₂`: two integer dot
    /// products per block over the same weights (read from memory once), about 100× less activation
    /// rounding error. Closer to the fp32 reference than llama.cpp; the default.
    Q8x2,
}

/// Activations quantized for the weights' dot products: one buffer per `vec_dot_type`, filled on demand
/// and reused by every weight that shares the input (q/k/v, gate/up).
struct QuantCache {
    /// Scratch row for the residual [n_max].
    resid: Vec<f32>,
    slots: [QuantSlot; 4],
}

struct QuantSlot {
    vt: QuantType,
    /// Row stride in bytes and rows currently valid (0: stale).
    stride: usize,
    rows: usize,
    q: Vec<u8>,
    /// The residual's quantization (mode `Q8x2`, integer types only).
    r: Vec<u8>,
}

impl QuantCache {
    fn new(mode: ActQuant, n_batch: usize, n_max: usize) -> Self {
        let mk = |vt: QuantType| {
            let stride = xq_row_bytes(vt, n_max.next_multiple_of(256));
            let resid = mode == ActQuant::Q8x2 && vt != QuantType::F32;
            QuantSlot { vt, stride: 0, rows: 0, q: vec![0u8; stride * n_batch], r: vec![0u8; if resid { stride * n_batch } else { 0 }] }
        };
        QuantCache { resid: vec![0.0; n_max], slots: [mk(QuantType::Q8_0), mk(QuantType::Q8_1), mk(QuantType::Q8K), mk(QuantType::F32)] }
    }
    fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.rows = 0;
        }
    }
    /// Make sure the buffer for weights of type `ty` holds `rows` rows of `x` (row length `n`) quantized.
    fn ensure(&mut self, k: &Kernels, ty: QuantType, x: &[f32], n: usize, rows: usize) {
        let vt = ty.vec_dot_type();
        let slot = self.slots.iter_mut().find(|s| s.vt == vt).expect("every vec_dot_type has a slot");
        let stride = xq_row_bytes(ty, n);
        if slot.stride == stride && slot.rows == rows {
            return;
        }
        let q = k.quantize(vt).expect("quantizer for vec_dot_type");
        let two = !slot.r.is_empty();
        for t in 0..rows {
            let (xr, qr) = (&x[t * n..(t + 1) * n], &mut slot.q[t * stride..(t + 1) * stride]);
            q(xr, qr);
            if two {
                // residual = x - dequantize(q(x)), quantized in turn
                let res = &mut self.resid[..n];
                let ok = crate::kernels::scalar::dequantize(vt, qr, res);
                debug_assert!(ok);
                for (r, &xv) in res.iter_mut().zip(xr) {
                    *r = xv - *r;
                }
                let rr = &mut slot.r[t * stride..(t + 1) * stride];
                q(res, rr);
                if vt == QuantType::Q8_1 {
                    // Q8_1 carries each block's sum `s` (used against Q4_1/Q5_1 minimums) as f16, whose
                    // rounding the residual above does not see. Give the second pass the rest of the
                    // true block sum, so that s₁ + s₂ = Σx to f16 precision of the (small) remainder.
                    let b1: &[BlockQ8_1] = bytemuck::cast_slice(&slot.q[t * stride..(t + 1) * stride]);
                    let b2: &mut [BlockQ8_1] = bytemuck::cast_slice_mut(rr);
                    for ((blk1, blk2), xs) in b1.iter().zip(b2.iter_mut()).zip(xr.chunks_exact(32)) {
                        let sum: f32 = xs.iter().sum();
                        blk2.s = F16Bits::from_f32(sum - blk1.s.to_f32());
                    }
                }
            }
        }
        slot.stride = stride;
        slot.rows = rows;
    }
    /// The quantized rows for weights of type `ty` (after `ensure`).
    fn get(&self, ty: QuantType) -> QInput<'_> {
        let vt = ty.vec_dot_type();
        let s = self.slots.iter().find(|s| s.vt == vt).expect("every vec_dot_type has a slot");
        let len = s.stride * s.rows;
        QInput { q: &s.q[..len], r: if s.r.is_empty() { None } else { Some(&s.r[..len]) }, stride: s.stride }
    }
}

/// One weight's quantized input: rows of `stride` bytes, and the residual's rows in mode `Q8x2`.
#[derive(Clone, Copy)]
struct QInput<'a> {
    q: &'a [u8],
    r: Option<&'a [u8]>,
    stride: usize,
}

pub struct Session {
    model: Arc<Model>,
    k: &'static Kernels,
    pool: ThreadPool,
    cfg: SessionConfig,
    /// Tokens in the KV cache.
    n_past: usize,
    /// Rows of `logits` that hold results of the last `eval`.
    n_logits: usize,

    // Activations, [n_batch, width] row-major.
    x: Vec<f32>,       // residual stream        [B, n_embd]
    xb: Vec<f32>,      // normed input           [B, n_embd]
    q: Vec<f32>,       // queries                [B, q_dim]
    kk: Vec<f32>,      // keys of this batch     [B, kv_dim]
    v: Vec<f32>,       // values of this batch   [B, kv_dim]
    att_out: Vec<f32>, // attention output       [B, q_dim]
    proj: Vec<f32>,    // output of a projection [B, n_embd]
    hb: Vec<f32>,      // ffn gate, then silu(gate)*up [B, n_ff]
    hb2: Vec<f32>,     // ffn up                 [B, n_ff]
    att: Vec<f32>,     // attention scores, per thread [n_threads, n_ctx]
    xq: QuantCache,
    logits: Vec<f32>, // [1 or B, n_vocab]
    /// RoPE inverse frequencies [rope_dim / 2] (freq_scale and rope_freqs folded in).
    inv_freq: Vec<f32>,
    /// cos/sin of the current batch's positions [B, rope_dim / 2]
    rope_cs: Vec<(f32, f32)>,

    // KV cache, [n_layer, n_ctx, kv_dim].
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,

    // LoRA: the published set, this session's copy of it, and the intermediates t = A·x of up to three
    // weights sharing an input, [3, n_batch, max_adapters · max_rank].
    lk: &'static LoraKernels,
    control: Arc<AdapterControl>,
    applied: Applied,
    lora_t: Vec<f32>,
}

impl Session {
    pub fn new(model: Arc<Model>, cfg: SessionConfig) -> Result<Session> {
        let hp = &model.hp;
        if cfg.n_ctx == 0 || cfg.n_batch == 0 {
            return Err(Error::invalid(format!("context ({}) and batch ({}) sizes must be > 0", cfg.n_ctx, cfg.n_batch)));
        }
        if cfg.n_threads == 0 || cfg.n_threads > 256 {
            return Err(Error::invalid(format!("threads must be in 1..=256, got {}", cfg.n_threads)));
        }
        let n_batch = cfg.n_batch.min(cfg.n_ctx);
        let kv_len = hp.n_layer.checked_mul(cfg.n_ctx).and_then(|v| v.checked_mul(hp.kv_dim()));
        let kv_len = match kv_len {
            Some(v) if v <= (isize::MAX as usize) / 8 => v,
            _ => return Err(Error::invalid(format!("context {} is too large for this model's KV cache", cfg.n_ctx))),
        };
        if cfg.max_adapters > MAX_ADAPTERS || cfg.max_rank > 4096 {
            return Err(Error::invalid(format!("max adapters {} (≤ {MAX_ADAPTERS}) / max rank {} (≤ 4096) out of range", cfg.max_adapters, cfg.max_rank)));
        }
        let k = cfg.kernels.unwrap_or_else(Kernels::best);
        let pool = ThreadPool::new(cfg.n_threads).map_err(|e| Error::invalid(format!("cannot start {} worker threads: {e}", cfg.n_threads)))?;
        let half = hp.rope_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half).map(|i| hp.rope_freq_scale * hp.rope_freq_base.powf(-2.0 * i as f32 / hp.rope_dim as f32)).collect();
        if let Some(rf) = &model.rope_freqs {
            for (f, d) in inv_freq.iter_mut().zip(model.f32s(rf)) {
                *f /= d;
            }
        }
        let n_logit_rows = if cfg.logits_all { n_batch } else { 1 };
        let (e, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let cfg = SessionConfig { n_batch, ..cfg };
        Ok(Session {
            k,
            pool,
            n_past: 0,
            n_logits: 0,
            x: vec![0.0; n_batch * e],
            xb: vec![0.0; n_batch * e.max(qd)],
            q: vec![0.0; n_batch * qd],
            kk: vec![0.0; n_batch * kvd],
            v: vec![0.0; n_batch * kvd],
            att_out: vec![0.0; n_batch * qd],
            proj: vec![0.0; n_batch * e],
            hb: vec![0.0; n_batch * ff],
            hb2: vec![0.0; n_batch * ff],
            att: vec![0.0; cfg.n_threads * cfg.n_ctx],
            xq: QuantCache::new(cfg.act_quant, n_batch, e.max(ff).max(qd)),
            logits: vec![0.0; n_logit_rows * hp.n_vocab],
            inv_freq,
            rope_cs: vec![(0.0, 0.0); n_batch * half],
            k_cache: zeroed(kv_len)?,
            v_cache: zeroed(kv_len)?,
            lk: LoraKernels::for_tier(k.tier),
            control: Arc::new(AdapterControl::new(model.clone(), cfg.max_adapters, cfg.max_rank)),
            applied: Applied::new(model.n_slots()),
            lora_t: vec![0.0; 3 * n_batch * cfg.max_adapters * cfg.max_rank],
            model,
            cfg,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }
    pub fn kernels(&self) -> &'static Kernels {
        self.k
    }
    /// Tokens currently in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }
    /// Forget the whole context.
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.n_logits = 0;
    }
    /// Drop the cache entries from position `n` on (keep the first `n` tokens).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
        self.n_logits = 0;
    }

    /// Logits of the last evaluated position.
    pub fn logits(&self) -> &[f32] {
        let nv = self.model.hp.n_vocab;
        let r = self.n_logits.saturating_sub(1);
        &self.logits[r * nv..(r + 1) * nv]
    }

    /// Logits of every position of the last `eval` (requires `logits_all`), [n, n_vocab] row-major.
    pub fn logits_all(&self) -> &[f32] {
        &self.logits[..self.n_logits * self.model.hp.n_vocab]
    }

    /// Apply these adapters (with their user scales) from the next `eval` on. Scale 0 is the same as
    /// leaving an adapter out. On error the current set stays. See [`crate::adapter_set`].
    pub fn set_adapters(&mut self, set: &[(&Arc<Adapter>, f32)]) -> Result<()> {
        self.control.set(set)
    }

    /// The handle through which any thread can change this session's adapters between two tokens.
    pub fn adapter_control(&self) -> Arc<AdapterControl> {
        Arc::clone(&self.control)
    }

    /// The adapters the last `eval` applied (scale-0 entries left out).
    pub fn applied_adapters(&self) -> &crate::adapter_set::ActiveSet {
        self.applied.active()
    }

    /// Check a request before it touches any state: token ids in range, room in the context.
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let nv = self.model.hp.n_vocab;
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= nv) {
            return Err(Error::invalid(format!("token id {t} at index {i} is out of range: the vocabulary has {nv} tokens")));
        }
        if tokens.len() > self.cfg.n_ctx - self.n_past {
            return Err(Error::invalid(format!(
                "context full: {} tokens in the cache + {} new > context size {} (use a larger -c)",
                self.n_past,
                tokens.len(),
                self.cfg.n_ctx
            )));
        }
        Ok(())
    }

    /// Evaluate `tokens` after the current context, in batches of `n_batch`. Afterwards `logits()` holds the
    /// last position's logits (and `logits_all()` the last batch's, with `logits_all`). On error nothing
    /// changed.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.check(tokens)?;
        if tokens.is_empty() {
            return Err(Error::invalid("nothing to evaluate: empty token list"));
        }
        self.applied.refresh(&self.control);
        for chunk in tokens.chunks(self.cfg.n_batch) {
            self.forward(chunk);
        }
        Ok(self.logits())
    }

    /// Evaluate `tokens` and hand the logits of every position to `f(index, logits)`. Needs `logits_all`.
    pub fn eval_each(&mut self, tokens: &[u32], mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        if !self.cfg.logits_all {
            return Err(Error::invalid("eval_each needs a session created with logits_all"));
        }
        self.check(tokens)?;
        self.applied.refresh(&self.control);
        let nv = self.model.hp.n_vocab;
        let mut i = 0;
        for chunk in tokens.chunks(self.cfg.n_batch) {
            self.forward(chunk);
            for r in 0..chunk.len() {
                f(i, &self.logits[r * nv..(r + 1) * nv]);
                i += 1;
            }
        }
        Ok(())
    }

    /// The forward pass over one batch (already checked). Allocates nothing.
    fn forward(&mut self, tokens: &[u32]) {
        let model = Arc::clone(&self.model);
        let m = &*model;
        let hp = &m.hp;
        let k = self.k;
        let b = tokens.len();
        let (e, qd, kvd, ff, hd) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff, hp.head_dim);
        let pos0 = self.n_past;

        // x[t] = token_embd[tokens[t]]                                         [B, e]
        for (t, &id) in tokens.iter().enumerate() {
            let rb = m.token_embd.row_bytes();
            let row = &m.bytes(&m.token_embd)[id as usize * rb..(id as usize + 1) * rb];
            let xt = &mut self.x[t * e..(t + 1) * e];
            let ok = crate::kernels::scalar::dequantize(m.token_embd.ty, row, xt);
            debug_assert!(ok, "token_embd type checked at load");
            // Embedding LoRA: x += s · B · A[token], A token-major (a row of A is the intermediate).
            for r in self.applied.refs(m.n_slots() - 2) {
                // The LoRA scratch holds ≥ max_rank floats (sized at creation), and the rank was checked.
                let tv = &mut self.lora_t[..r.rank];
                for (d, &h) in tv.iter_mut().zip(&r.a[id as usize * r.rank..(id as usize + 1) * r.rank]) {
                    *d = half::f16::from_bits(h).to_f32();
                }
                (self.lk.expand)(&[r], tv, 0, xt);
            }
        }

        // RoPE angles for this batch's positions                              [B, rope_dim/2]
        let half = hp.rope_dim / 2;
        for t in 0..b {
            let p = (pos0 + t) as f32;
            for i in 0..half {
                let (s, c) = (p * self.inv_freq[i]).sin_cos();
                self.rope_cs[t * half + i] = (c, s);
            }
        }

        for (l, layer) in m.layers.iter().enumerate() {
            // --- attention ---
            rmsnorm_rows(&mut self.xb[..b * e], &self.x[..b * e], m.f32s(&layer.attn_norm), hp.rms_eps);
            self.xq.invalidate();
            // q, k, v = Wq·xb, Wk·xb, Wv·xb                                     [B, qd], [B, kvd], [B, kvd]
            let slot = l * LAYER_SLOTS;
            {
                let xin = &self.xb[..b * e];
                let outs: [(&WeightRef, &mut [f32]); 3] =
                    [(&layer.attn_q, &mut self.q[..b * qd]), (&layer.attn_k, &mut self.kk[..b * kvd]), (&layer.attn_v, &mut self.v[..b * kvd])];
                let lora = [self.applied.refs(slot), self.applied.refs(slot + 1), self.applied.refs(slot + 2)];
                linear(m, k, &self.pool, &mut self.xq, xin, e, b, outs, Lora { lk: self.lk, refs: &lora, t: &mut self.lora_t });
            }
            // RoPE on q and k (adjacent pairs, as GGUF stores llama's Q/K)
            for t in 0..b {
                let cs = &self.rope_cs[t * half..(t + 1) * half];
                rope(&mut self.q[t * qd..(t + 1) * qd], hd, cs);
                rope(&mut self.kk[t * kvd..(t + 1) * kvd], hd, cs);
            }
            // append k, v to the cache at positions pos0..pos0+B
            let layer_base = l * self.cfg.n_ctx * kvd;
            let dst = layer_base + pos0 * kvd;
            self.k_cache[dst..dst + b * kvd].copy_from_slice(&self.kk[..b * kvd]);
            self.v_cache[dst..dst + b * kvd].copy_from_slice(&self.v[..b * kvd]);

            // att_out[t, h] = softmax(q[t,h]·K[0..=pos]ᵀ / √hd) · V              [B, qd]
            {
                let kc = &self.k_cache[layer_base..layer_base + (pos0 + b) * kvd];
                let vc = &self.v_cache[layer_base..layer_base + (pos0 + b) * kvd];
                let q = &self.q[..b * qd];
                let out = Disjoint::new(&mut self.att_out[..b * qd]);
                let att = Disjoint::new(&mut self.att[..]);
                let n_ctx = self.cfg.n_ctx;
                let (n_head, group) = (hp.n_head, hp.n_head / hp.n_head_kv);
                let scale = 1.0 / (hd as f32).sqrt();
                self.pool.run(b * n_head, &|i, job| {
                    // SAFETY: each thread uses its own row of `att`, and runs one chunk at a time.
                    let att = unsafe { att.range(i * n_ctx..(i + 1) * n_ctx) };
                    {
                        let (t, h) = (job / n_head, job % n_head);
                        let n_kv = pos0 + t + 1; // causal: positions 0..=pos0+t
                        let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                        let kvh = (h / group) * hd;
                        let sc = &mut att[..n_kv];
                        let mut max = f32::NEG_INFINITY;
                        for (p, s) in sc.iter_mut().enumerate() {
                            *s = (k.dot_f32)(qh, &kc[p * kvd + kvh..p * kvd + kvh + hd]) * scale;
                            max = max.max(*s);
                        }
                        let mut sum = 0.0f32;
                        for s in sc.iter_mut() {
                            *s = (*s - max).exp();
                            sum += *s;
                        }
                        // SAFETY: each (t, h) chunk is handed out once and owns its head slice of the output.
                        let o = unsafe { out.range(t * qd + h * hd..t * qd + (h + 1) * hd) };
                        o.fill(0.0);
                        let inv = 1.0 / sum;
                        for (p, s) in sc.iter().enumerate() {
                            (k.axpy_f32)(s * inv, &vc[p * kvd + kvh..p * kvd + kvh + hd], o);
                        }
                    }
                });
            }
            // x += Wo·att_out                                                  [B, e]
            self.xq.invalidate();
            let lora = [self.applied.refs(slot + 3)];
            linear(m, k, &self.pool, &mut self.xq, &self.att_out[..b * qd], qd, b, [(&layer.attn_output, &mut self.proj[..b * e])], Lora { lk: self.lk, refs: &lora, t: &mut self.lora_t });
            add(&mut self.x[..b * e], &self.proj[..b * e]);

            // --- feed-forward: x += Wdown·(silu(Wgate·xb) ⊙ Wup·xb) ---
            rmsnorm_rows(&mut self.xb[..b * e], &self.x[..b * e], m.f32s(&layer.ffn_norm), hp.rms_eps);
            self.xq.invalidate();
            {
                let xin = &self.xb[..b * e];
                let outs: [(&WeightRef, &mut [f32]); 2] = [(&layer.ffn_gate, &mut self.hb[..b * ff]), (&layer.ffn_up, &mut self.hb2[..b * ff])];
                let lora = [self.applied.refs(slot + 4), self.applied.refs(slot + 5)];
                linear(m, k, &self.pool, &mut self.xq, xin, e, b, outs, Lora { lk: self.lk, refs: &lora, t: &mut self.lora_t });
            }
            for (g, u) in self.hb[..b * ff].iter_mut().zip(&self.hb2[..b * ff]) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            self.xq.invalidate();
            let lora = [self.applied.refs(slot + 6)];
            linear(m, k, &self.pool, &mut self.xq, &self.hb[..b * ff], ff, b, [(&layer.ffn_down, &mut self.proj[..b * e])], Lora { lk: self.lk, refs: &lora, t: &mut self.lora_t });
            add(&mut self.x[..b * e], &self.proj[..b * e]);
        }

        // logits = Wout · rmsnorm(x)  (every row with logits_all, else the last one)   [B or 1, n_vocab]
        let first = if self.cfg.logits_all { 0 } else { b - 1 };
        let rows = b - first;
        rmsnorm_rows(&mut self.xb[..rows * e], &self.x[first * e..b * e], m.f32s(&m.output_norm), hp.rms_eps);
        self.xq.invalidate();
        let nv = hp.n_vocab;
        let lora = [self.applied.refs(m.n_slots() - 1)];
        linear(m, k, &self.pool, &mut self.xq, &self.xb[..rows * e], e, rows, [(&m.output, &mut self.logits[..rows * nv])], Lora { lk: self.lk, refs: &lora, t: &mut self.lora_t });
        self.n_logits = rows;
        self.n_past += b;
    }
}

/// A zero-filled buffer whose allocation failure is an error rather than an abort (the KV cache can be
/// large: `n_layer × n_ctx × kv_dim` floats for each of K and V).
fn zeroed(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::invalid(format!("cannot allocate {} MiB for the KV cache: use a smaller context (-c)", len * 4 >> 20)))?;
    v.resize(len, 0.0);
    Ok(v)
}

/// `out_j[t] = W_j · x[t]` for every weight j and token t, all weights in one parallel pass. `x` is
/// [rows, n] row-major; each `out_j` is [rows, W_j.n_out].
/// The adapters on the weights of one `linear` call and the scratch for their intermediates.
struct Lora<'a, 'r, const N: usize> {
    lk: &'static LoraKernels,
    refs: &'a [heapless::Vec<LoraRef<'r>, MAX_ADAPTERS>; N],
    t: &'a mut [f32],
}

#[allow(clippy::too_many_arguments)]
fn linear<const N: usize>(m: &Model, k: &Kernels, pool: &ThreadPool, xq: &mut QuantCache, x: &[f32], n: usize, rows: usize, outs: [(&WeightRef, &mut [f32]); N], lora: Lora<'_, '_, N>) {
    // LoRA shrink for every weight that has adapters: t_j = A·x for all tokens         [N][rows, R_j]
    let per = lora.t.len() / 3;
    let mut ts: [&[f32]; N] = [&[]; N];
    {
        let mut rest: &mut [f32] = lora.t;
        for j in 0..N {
            let (tj, r) = rest.split_at_mut(per);
            rest = r;
            let refs = &lora.refs[j];
            if !refs.is_empty() {
                let rr = total_rank(refs);
                (lora.lk.shrink_batch)(refs, rows, x, &mut tj[..rows * rr]);
                ts[j] = &tj[..rows * rr];
            }
        }
    }
    // Quantize the input once per vec_dot_type needed (all weights of a group usually share one).
    for (w, _) in outs.iter() {
        debug_assert_eq!(w.n_in, n);
        xq.ensure(k, w.ty, x, n, rows);
    }
    let xq: &QuantCache = xq;
    let inputs: [QInput; N] = core::array::from_fn(|j| xq.get(outs[j].0.ty));
    let jobs: [(&WeightRef, Disjoint<f32>); N] = outs.map(|(w, o)| (w, Disjoint::new(o)));
    let (lk, lora_refs) = (lora.lk, lora.refs);
    // Chunks of CHUNK_ROWS output rows, over all the weights one after the other.
    let chunks: [usize; N] = core::array::from_fn(|j| jobs[j].0.n_out.div_ceil(CHUNK_ROWS));
    let n_chunks: usize = chunks.iter().sum();
    pool.run(n_chunks, &|_, mut c| {
        let mut j = 0;
        while c >= chunks[j] {
            c -= chunks[j];
            j += 1;
        }
        let (w, out) = &jobs[j];
        let mv = k.matvec(w.ty).expect("weight types checked at load");
        let rb = w.row_bytes();
        let wb = m.bytes(w);
        let mine = c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(w.n_out);
        let inp = inputs[j];
        let st = inp.stride;
        // Sub-chunks small enough that the weights stay in L1 between the two passes of `Q8x2`.
        let mut r0 = mine.start;
        while r0 < mine.end {
            let r1 = (r0 + SUB_ROWS).min(mine.end);
            let wr = &wb[r0 * rb..r1 * rb];
            for t in 0..rows {
                // SAFETY: every chunk index is handed out once and chunks cover disjoint rows; tokens don't overlap.
                let o = unsafe { out.range(t * w.n_out + r0..t * w.n_out + r1) };
                mv(n, wr, &inp.q[t * st..(t + 1) * st], o);
                if let Some(r) = inp.r {
                    let mut tmp = [0f32; SUB_ROWS];
                    let tmp = &mut tmp[..r1 - r0];
                    mv(n, wr, &r[t * st..(t + 1) * st], tmp);
                    add(o, tmp);
                }
                // LoRA expand on the rows just produced, while they are in L1: o += Σ s·B[r0..r1]·t
                let refs = &lora_refs[j];
                if !refs.is_empty() {
                    let rr = ts[j].len() / rows;
                    (lk.expand)(refs, &ts[j][t * rr..(t + 1) * rr], r0, o);
                }
            }
            r0 = r1;
        }
    });
}

/// Output rows per work chunk of `linear` (threads take chunks dynamically).
const CHUNK_ROWS: usize = 64;

/// Rows per inner step of `linear`.
const SUB_ROWS: usize = 32;

fn rmsnorm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let n = w.len();
    for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / ((ss / n as f64) as f32 + eps).sqrt()) as f32;
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// Rotate adjacent pairs (x[2i], x[2i+1]) of every head by the angles in `cs` (cos, sin).
fn rope(x: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(hd) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Timings and counts of one `Session::generate` call.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub n_prompt: usize,
    pub n_generated: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    /// Why generation stopped.
    pub stop: StopReason,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    MaxTokens,
    EndOfGeneration,
    ContextFull,
    Caller,
}

impl Session {
    /// Evaluate `prompt` after the current context, then sample up to `max_new` tokens, handing each to
    /// `on_token` (return `false` to stop). Stops at an end-of-generation token (not handed on) or a full
    /// context. Every sampled token is also passed to `sampler.accept`.
    pub fn generate(&mut self, prompt: &[u32], max_new: usize, sampler: &mut crate::Sampler, mut on_token: impl FnMut(u32) -> bool) -> Result<GenStats> {
        let mut st = GenStats { n_prompt: prompt.len(), ..Default::default() };
        let t0 = std::time::Instant::now();
        if !prompt.is_empty() {
            self.eval(prompt)?;
            for &t in prompt {
                sampler.accept(t);
            }
        } else if self.n_logits == 0 {
            return Err(Error::invalid("generate needs a prompt or a previous eval"));
        }
        st.prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let model = Arc::clone(&self.model);
        let tok = &model.tokenizer;
        loop {
            if st.n_generated >= max_new {
                st.stop = StopReason::MaxTokens;
                break;
            }
            let id = sampler.sample(self.logits());
            if tok.is_eog(id) {
                st.stop = StopReason::EndOfGeneration;
                break;
            }
            sampler.accept(id);
            st.n_generated += 1;
            if !on_token(id) {
                st.stop = StopReason::Caller;
                break;
            }
            if self.n_past >= self.cfg.n_ctx {
                st.stop = StopReason::ContextFull;
                break;
            }
            self.eval(&[id])?;
        }
        st.gen_secs = t1.elapsed().as_secs_f64();
        Ok(st)
    }
}
