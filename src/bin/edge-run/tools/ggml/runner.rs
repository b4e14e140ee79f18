//! The llama.cpp runner: a model (and adapters) loaded by llama.cpp, its logits and its speed.
use super::*;
use edge_run::session::KvType;

/// Settings of a [`LlamaCpp`] runner.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// Threads for single-token decoding and for batches.
    pub n_threads: usize,
    /// Context length (KV cache).
    pub n_ctx: usize,
    /// Largest batch evaluated at once (logical and physical batch).
    pub n_batch: usize,
    /// How the KV cache stores keys and values (llama.cpp's default: f16 both).
    pub kv_types: (KvType, KvType),
    /// Flash attention on or off; `None` leaves llama.cpp's default (automatic: on for the CPU). Its CPU
    /// path rounds the queries to f16, so `Some(false)` with `kv_f32` is llama.cpp at its most precise.
    pub flash_attn: Option<bool>,
    /// Let llama.cpp place weights in its extra CPU buffer types (its default): on x86 with AVX2 and on
    /// ARM with dotprod/i8mm it copies Q4_0, Q4_K, IQ4_NL (and on some CPUs Q8_0) rows into an
    /// interleaved layout for its batched kernels, at load time and beside the mapped file. AMX is not
    /// among them in the builds made here (`GGML_AMX_*` off). `false`: the weights stay in the mapping.
    pub repack: bool,
}

impl LlamaConfig {
    /// llama.cpp's defaults (f16 KV cache, automatic flash attention) — what its tools run.
    pub fn new(n_threads: usize, n_ctx: usize, n_batch: usize) -> LlamaConfig {
        LlamaConfig {
            n_threads,
            n_ctx,
            n_batch,
            kv_types: (KvType::F16, KvType::F16),
            flash_attn: None,
            repack: true,
        }
    }

    /// f32 KV cache and no flash attention: the attention computed in f32, as in edge-run, so that the
    /// only numeric differences left are in the quantized matrix products.
    pub fn precise(n_threads: usize, n_ctx: usize, n_batch: usize) -> LlamaConfig {
        LlamaConfig {
            n_threads,
            n_ctx,
            n_batch,
            kv_types: (KvType::F32, KvType::F32),
            flash_attn: Some(false),
            repack: false,
        }
    }
}

/// ggml's tensor type for a KV cache type.
fn ggml_kv_type(t: KvType) -> sys::ggml_type {
    match t {
        KvType::F32 => sys::GGML_TYPE_F32,
        KvType::F16 => sys::GGML_TYPE_F16,
        KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
    }
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig::new(edge_run::session::default_threads(), 512, 512)
    }
}

/// Prompt and decode speed of llama.cpp on the `edge-run bench` workload.
#[derive(Clone, Copy, Debug, Default)]
pub struct LlamaSpeed {
    pub pp_tps: f64,
    pub tg_tps: f64,
}

/// A model and one context in llama.cpp, CPU only.
pub struct LlamaCpp {
    model: NonNull<sys::llama_model>,
    ctx: NonNull<sys::llama_context>,
    adapters: Vec<NonNull<sys::llama_adapter_lora>>,
    n_vocab: usize,
    cfg: LlamaConfig,
    path: PathBuf,
    repacked: bool,
}

impl LlamaCpp {
    /// Loads `path` memory-mapped, CPU only (no offload), with llama.cpp's extra buffer types (weight
    /// repacking) if `cfg.repack`, and creates a context for `cfg`.
    pub fn load(path: &Path, cfg: &LlamaConfig) -> Result<LlamaCpp> {
        init();
        if cfg.n_threads == 0 || cfg.n_ctx == 0 || cfg.n_batch == 0 {
            return Err(Error::invalid(format!(
                "llama.cpp runner: threads, context and batch must be at least 1: {cfg:?}"
            )));
        }
        let to_i32 = |v: usize, what: &str| {
            i32::try_from(v)
                .map_err(|_| Error::invalid(format!("llama.cpp runner: {what} {v} too large")))
        };
        let (n_threads, n_ctx, n_batch) = (
            to_i32(cfg.n_threads, "threads")?,
            to_i32(cfg.n_ctx, "n_ctx")?,
            to_i32(cfg.n_batch, "n_batch")?,
        );
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
            });
        }
        let cpath = c_path(path)?;
        // SAFETY: returns a plain struct by value.
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = 0;
        mp.load_mode = sys::LLAMA_LOAD_MODE_MMAP;
        mp.use_extra_bufts = cfg.repack;
        mp.check_tensors = false;
        let repack_lines = REPACK_LINES.load(Ordering::Relaxed);
        // SAFETY: the path is NUL-terminated and outlives the call; `mp` is a valid parameter struct.
        let model = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), mp) };
        // Another runner loading in another thread could be counted too; without repacking there is none.
        let repacked = cfg.repack && REPACK_LINES.load(Ordering::Relaxed) > repack_lines;
        let model = NonNull::new(model).ok_or_else(|| {
            Error::invalid(format!(
                "llama.cpp could not load the model {}",
                path.display()
            ))
        })?;
        // SAFETY: returns a plain struct by value.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = n_ctx as u32;
        cp.n_batch = n_batch as u32;
        cp.n_ubatch = n_batch as u32;
        cp.n_seq_max = 1;
        cp.n_threads = n_threads;
        cp.n_threads_batch = n_threads;
        cp.no_perf = true;
        cp.type_k = ggml_kv_type(cfg.kv_types.0);
        cp.type_v = ggml_kv_type(cfg.kv_types.1);
        cp.flash_attn_type = match cfg.flash_attn {
            None => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(false) => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            Some(true) => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        };
        // SAFETY: `model` is a live model; `cp` is a valid parameter struct.
        let ctx = unsafe { sys::llama_init_from_model(model.as_ptr(), cp) };
        let Some(ctx) = NonNull::new(ctx) else {
            // SAFETY: the model was created above and nothing else references it.
            unsafe { sys::llama_model_free(model.as_ptr()) };
            return Err(Error::invalid(format!(
                "llama.cpp could not create a context for {}",
                path.display()
            )));
        };
        // SAFETY: `model` is live; the vocab pointer it returns lives as long as the model.
        let n_vocab =
            unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model.as_ptr())) };
        let mut me = LlamaCpp {
            model,
            ctx,
            adapters: Vec::new(),
            n_vocab: 0,
            cfg: cfg.clone(),
            path: path.to_path_buf(),
            repacked,
        };
        me.n_vocab = usize::try_from(n_vocab)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "llama.cpp reports {n_vocab} tokens for {}",
                    path.display()
                ))
            })?;
        Ok(me)
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Whether llama.cpp reported a repacked weight buffer while loading this model.
    pub fn repacked(&self) -> bool {
        self.repacked
    }

    /// Sets llama.cpp's control vector (`llama_set_adapter_cvec`): `rows` holds one `n_embd` row per
    /// block from block 1 on (llama.cpp never steers block 0), added to the output of blocks
    /// `first..=last`. `None` removes it. llama.cpp copies the rows.
    pub fn set_control_vector(
        &mut self,
        rows: Option<&[f32]>,
        n_embd: usize,
        first: usize,
        last: usize,
    ) -> Result<()> {
        let (ptr, len) = rows.map_or((std::ptr::null(), 0), |r| (r.as_ptr(), r.len()));
        // SAFETY: the context is live; `ptr` is null or points to `len` floats that outlive the call
        // (llama.cpp copies them into its own tensors before returning).
        let rc = unsafe {
            sys::llama_set_adapter_cvec(
                self.ctx.as_ptr(),
                ptr,
                len,
                n_embd as i32,
                first as i32,
                last as i32,
            )
        };
        if rc != 0 {
            return Err(Error::invalid(format!(
                "llama_set_adapter_cvec failed with code {rc} ({})",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Loads GGUF LoRA adapters (`llama_adapter_lora_init`) and applies them with their scales, replacing
    /// any set applied before. An empty list removes all adapters.
    pub fn set_adapters(&mut self, adapters: &[(&Path, f32)]) -> Result<()> {
        let mut loaded = Vec::with_capacity(adapters.len());
        for (p, _) in adapters {
            let cp = c_path(p)?;
            // SAFETY: the model is live and the path NUL-terminated; the adapter belongs to the model.
            let a = unsafe { sys::llama_adapter_lora_init(self.model.as_ptr(), cp.as_ptr()) };
            match NonNull::new(a) {
                Some(a) => loaded.push(a),
                None => {
                    for a in loaded {
                        // SAFETY: created above for this model and not applied to any context.
                        unsafe { sys::llama_adapter_lora_free(a.as_ptr()) };
                    }
                    return Err(Error::invalid(format!(
                        "llama.cpp could not load the LoRA adapter {} for {}",
                        p.display(),
                        self.path.display()
                    )));
                }
            }
        }
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> =
            loaded.iter().map(|a| a.as_ptr()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
        // SAFETY: the context is live; `ptrs` and `scales` have `ptrs.len()` entries each and outlive the
        // call (llama.cpp copies them); every adapter belongs to this context's model.
        let rc = unsafe {
            sys::llama_set_adapters_lora(
                self.ctx.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        if rc != 0 {
            // The context keeps its previous set; drop the new adapters.
            for a in loaded {
                // SAFETY: not applied (the call failed), created for this model.
                unsafe { sys::llama_adapter_lora_free(a.as_ptr()) };
            }
            return Err(Error::invalid(format!(
                "llama_set_adapters_lora failed with code {rc}"
            )));
        }
        for a in std::mem::replace(&mut self.adapters, loaded) {
            // SAFETY: no longer applied to the context (replaced above), created for this model.
            unsafe { sys::llama_adapter_lora_free(a.as_ptr()) };
        }
        Ok(())
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        // SAFETY: the context is live; its memory handle lives as long as the context.
        unsafe {
            let mem = sys::llama_get_memory(self.ctx.as_ptr());
            if !mem.is_null() {
                sys::llama_memory_clear(mem, true);
            }
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.n_vocab)
        {
            return Err(Error::invalid(format!(
                "token {t} at position {i} is out of range (vocabulary of {})",
                self.n_vocab
            )));
        }
        Ok(())
    }

    /// Decodes `tokens` at positions `pos0..` in chunks of at most `n_batch`; `f(i, logits)` receives the
    /// logits of every position `i` (index into `tokens`) when `all`, else of the last one only.
    fn decode(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        all: bool,
        mut f: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Err(Error::invalid("llama.cpp runner: nothing to evaluate"));
        }
        if pos0 + tokens.len() > self.cfg.n_ctx {
            return Err(Error::invalid(format!(
                "llama.cpp runner: context full ({} + {} tokens > {})",
                pos0,
                tokens.len(),
                self.cfg.n_ctx
            )));
        }
        let nb = self.cfg.n_batch.min(tokens.len());
        // SAFETY: allocates a batch of `nb` tokens (no embeddings) with one sequence id per token.
        let batch = unsafe { sys::llama_batch_init(nb as i32, 0, 1) };
        let guard = BatchGuard(batch);
        for (c, chunk) in tokens.chunks(nb).enumerate() {
            let b = &guard.0;
            let last_chunk = (c + 1) * nb >= tokens.len();
            for (j, &t) in chunk.iter().enumerate() {
                let out = all || (last_chunk && j + 1 == chunk.len());
                // SAFETY: `j < nb`, the batch's capacity: every array has `nb` entries and `seq_id[j]`
                // points to room for one id.
                unsafe {
                    *b.token.add(j) = t as i32;
                    *b.pos.add(j) = (pos0 + c * nb + j) as i32;
                    *b.n_seq_id.add(j) = 1;
                    *(*b.seq_id.add(j)) = 0;
                    *b.logits.add(j) = i8::from(out);
                }
            }
            let mut b = guard.0;
            b.n_tokens = chunk.len() as i32;
            // SAFETY: the context is live and `b` describes `chunk.len()` filled entries of a batch that
            // outlives the call.
            let rc = unsafe { sys::llama_decode(self.ctx.as_ptr(), b) };
            if rc != 0 {
                return Err(Error::invalid(format!(
                    "llama_decode failed with code {rc} ({})",
                    self.path.display()
                )));
            }
            for j in 0..chunk.len() {
                if all || (last_chunk && j + 1 == chunk.len()) {
                    // SAFETY: the context is live and position `j` of the last decoded batch requested
                    // logits; the row has `n_vocab` floats and stays valid until the next decode.
                    let row = unsafe { sys::llama_get_logits_ith(self.ctx.as_ptr(), j as i32) };
                    if row.is_null() {
                        return Err(Error::invalid(format!(
                            "llama.cpp returned no logits for position {}",
                            c * nb + j
                        )));
                    }
                    // SAFETY: see above.
                    let row = unsafe { std::slice::from_raw_parts(row, self.n_vocab) };
                    f(c * nb + j, row);
                }
            }
        }
        Ok(())
    }

    /// Logits (each `n_vocab` floats) of every position of `tokens`, evaluated from an empty cache.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.reset();
        let mut rows = Vec::with_capacity(tokens.len());
        self.decode(tokens, 0, true, |_, l| rows.push(l.to_vec()))?;
        Ok(rows)
    }

    /// The `edge-run bench` workload: from an empty cache, `prompt` as one batch (pp), then `n_gen`
    /// tokens one at a time, each the argmax of the previous logits (tg); best of `reps`.
    pub fn bench(&mut self, prompt: &[u32], n_gen: usize, reps: usize) -> Result<LlamaSpeed> {
        if prompt.is_empty() || n_gen == 0 || reps == 0 {
            return Err(Error::invalid(
                "llama.cpp bench: prompt, generated tokens and repetitions must be at least 1",
            ));
        }
        if prompt.len() > self.cfg.n_batch {
            return Err(Error::invalid(format!(
                "llama.cpp bench: prompt of {} tokens does not fit one batch of {}",
                prompt.len(),
                self.cfg.n_batch
            )));
        }
        let mut best = LlamaSpeed::default();
        for _ in 0..reps {
            self.reset();
            let mut next = 0u32;
            let t0 = Instant::now();
            self.decode(prompt, 0, false, |_, l| {
                next = edge_run::sampling::argmax(l)
            })?;
            best.pp_tps = best
                .pp_tps
                .max(prompt.len() as f64 / t0.elapsed().as_secs_f64());
            let t1 = Instant::now();
            for i in 0..n_gen {
                let tok = [next];
                self.decode(&tok, prompt.len() + i, false, |_, l| {
                    next = edge_run::sampling::argmax(l)
                })?;
            }
            best.tg_tps = best.tg_tps.max(n_gen as f64 / t1.elapsed().as_secs_f64());
        }
        Ok(best)
    }
}

pub(super) struct BatchGuard(sys::llama_batch);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        // SAFETY: the batch was allocated by `llama_batch_init` and is freed once, here.
        unsafe { sys::llama_batch_free(self.0) };
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        // SAFETY: the context, then the adapters (no longer referenced by a context), then the model
        // they belong to, each freed exactly once.
        unsafe {
            sys::llama_free(self.ctx.as_ptr());
            for a in self.adapters.drain(..) {
                sys::llama_adapter_lora_free(a.as_ptr());
            }
            sys::llama_model_free(self.model.as_ptr());
        }
    }
}
