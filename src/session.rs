//! A session: the KV cache and every buffer of the forward pass, sized once at creation, plus the worker
//! pool. `eval` runs the model's forward pass ([`crate::arch`]: one readable function per architecture,
//! llama2.c style) over a batch of tokens; decoding is `eval` of one token. Nothing on that path allocates.
use crate::adapter::{Adapter, ControlVector};
use crate::adapter::{AdapterControl, Applied, MAX_ADAPTERS};
pub use crate::arch::kv::KvType;
pub use crate::arch::ActQuant;
use crate::arch::{self, ops::State, Capacity, Env};
use crate::kernels::lora::LoraKernels;
use crate::kernels::Kernels;
use crate::model::Model;
use crate::threadpool::ThreadPool;
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
    /// Most adapters applied at once (≤ [`MAX_ADAPTERS`]).
    pub max_adapters: usize,
    /// Largest LoRA rank an applied adapter may have.
    pub max_rank: usize,
    /// How the KV cache stores keys (`-ctk`).
    pub type_k: KvType,
    /// How the KV cache stores values (`-ctv`).
    pub type_v: KvType,
}

/// Where a session's memory goes (its own buffers; the model's mapped weights and tables are the
/// model's), bytes. Everything is allocated when the session is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionMemory {
    /// Keys and values of every layer (`n_ctx` positions; the window in sliding-window layers).
    pub kv: usize,
    /// Activation buffers of one batch (`n_batch` rows), quantized activations, attention scores,
    /// RoPE tables and the batch's encoded keys and values.
    pub activations: usize,
    /// Logits (one row, or one per batch position with `logits_all`).
    pub logits: usize,
    /// LoRA intermediates `A·x` (`max_adapters · max_rank` per row).
    pub lora_scratch: usize,
}

impl SessionMemory {
    pub fn total(&self) -> usize {
        self.kv + self.activations + self.logits + self.lora_scratch
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            n_ctx: 2048,
            n_batch: 64,
            n_threads: default_threads(),
            logits_all: false,
            kernels: None,
            act_quant: ActQuant::Q8x2,
            max_adapters: MAX_ADAPTERS,
            max_rank: 64,
            type_k: KvType::F16,
            type_v: KvType::F16,
        }
    }
}

/// Physical cores, as llama.cpp's default for `-t` (falls back to the logical count).
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
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
            cores.insert((
                phys.to_string(),
                v.trim_start_matches([' ', '\t', ':']).to_string(),
            ));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

pub struct Session {
    model: Arc<Model>,
    k: &'static Kernels,
    pool: ThreadPool,
    cfg: SessionConfig,
    /// Tokens in the context (what callers see; see `replay`).
    n_past: usize,
    /// Rows of `st.logits` that hold results of the last `eval`.
    n_logits: usize,
    /// The context's tokens (capacity n_ctx, reserved at creation).
    tokens: Vec<u32>,
    /// Per token of `tokens`: whether it was computed in a batch of two or more (the batched path)
    /// rather than alone (the decode path, whose rounding differs); a replay computes it the same way.
    batched: Vec<bool>,
    /// The KV cache no longer holds what `tokens` needs (a `truncate` reached into positions a
    /// sliding-window ring had overwritten): the next `eval` first re-evaluates `tokens`.
    replay: bool,
    /// Activations, KV cache and scratch ([`crate::arch::ops::State`]).
    st: State,
    /// What `generate` does when the context is full: `Some(keep)` shifts it, keeping the first
    /// `keep` tokens; `None` stops.
    shift_keep: Option<usize>,
    /// The span context shifts dropped since the last reset.
    shifted: Option<Shifted>,

    // LoRA: the published set and this session's copy of it.
    lk: &'static LoraKernels,
    control: Arc<AdapterControl>,
    applied: Applied,
    /// The control vector the next `eval` adds to the residual stream (`None`, or one without
    /// entries: nothing is added).
    cvec: Option<Arc<ControlVector>>,
}

impl Session {
    pub fn new(model: Arc<Model>, cfg: SessionConfig) -> Result<Session> {
        if cfg.n_ctx == 0 || cfg.n_batch == 0 {
            return Err(Error::invalid(format!(
                "context ({}) and batch ({}) sizes must be > 0",
                cfg.n_ctx, cfg.n_batch
            )));
        }
        if cfg.n_threads == 0 || cfg.n_threads > 256 {
            return Err(Error::invalid(format!(
                "threads must be in 1..=256, got {}",
                cfg.n_threads
            )));
        }
        let n_batch = cfg.n_batch.min(cfg.n_ctx);
        if cfg.max_adapters > MAX_ADAPTERS || cfg.max_rank > 4096 {
            return Err(Error::invalid(format!(
                "max adapters {} (≤ {MAX_ADAPTERS}) / max rank {} (≤ 4096) out of range",
                cfg.max_adapters, cfg.max_rank
            )));
        }
        let cfg = SessionConfig { n_batch, ..cfg };
        let st = State::new(
            &model,
            &Capacity {
                n_ctx: cfg.n_ctx,
                n_batch: cfg.n_batch,
                n_threads: cfg.n_threads,
                logits_all: cfg.logits_all,
                act_quant: cfg.act_quant,
                max_adapters: cfg.max_adapters,
                max_rank: cfg.max_rank,
                type_k: cfg.type_k,
                type_v: cfg.type_v,
            },
        )?;
        let k = cfg.kernels.unwrap_or_else(Kernels::best);
        let pool = ThreadPool::new(cfg.n_threads).map_err(|e| {
            Error::invalid(format!(
                "cannot start {} worker threads: {e}",
                cfg.n_threads
            ))
        })?;
        Ok(Session {
            k,
            pool,
            n_past: 0,
            n_logits: 0,
            tokens: Vec::with_capacity(cfg.n_ctx),
            batched: Vec::with_capacity(cfg.n_ctx),
            replay: false,
            st,
            shift_keep: None,
            shifted: None,
            lk: LoraKernels::for_tier(k.tier),
            control: Arc::new(AdapterControl::new(
                model.clone(),
                cfg.max_adapters,
                cfg.max_rank,
                cfg.n_threads,
            )),
            applied: Applied::new(model.n_slots()),
            cvec: None,
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
    /// Where the session's memory goes.
    pub fn memory(&self) -> SessionMemory {
        self.st.memory()
    }
    /// Tokens currently in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }
    /// Forget the whole context.
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.n_logits = 0;
        self.tokens.clear();
        self.batched.clear();
        self.replay = false;
        self.shifted = None;
        self.applied.truncated(0);
    }
    /// Drop the cache entries from position `n` on (keep the first `n` tokens).
    ///
    /// Local (sliding-window) layers keep only the last `window` positions in a ring; if the positions
    /// the next token needs (`n - window < j < n`) were already overwritten, the next `eval` first
    /// re-evaluates the kept tokens (exact, at the cost of that prompt pass).
    pub fn truncate(&mut self, n: usize) {
        self.n_logits = 0;
        if n >= self.n_past {
            return;
        }
        if self.ring_overwrote(n) {
            self.replay = true;
        }
        self.n_past = n;
        self.tokens.truncate(n);
        self.batched.truncate(n);
        self.applied.truncated(n);
        if self.shifted.is_some_and(|s| n < s.keep) {
            self.shifted = None;
        }
    }

    /// Whether a local (sliding-window) layer's ring already overwrote positions the token after the
    /// first `n` would attend to (`n + 1 - window ≤ j < n`).
    fn ring_overwrote(&self, n: usize) -> bool {
        let hp = &self.model.hp;
        let cap = hp.kv_positions(hp.swa.iter().position(|&s| s).unwrap_or(0), self.cfg.n_ctx);
        hp.n_swa > 0
            && hp.n_swa_layers() > 0
            && self.n_past.saturating_sub(cap) > (n + 1).saturating_sub(hp.n_swa)
    }

    /// The tokens in the context.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// What [`Session::generate`] does when the context is full: with `Some(keep)` it shifts the
    /// context ([`Session::shift_context`]: the first `keep` tokens stay, half of the rest is dropped)
    /// and goes on; with `None` (the default) it stops with [`StopReason::ContextFull`].
    pub fn set_context_shift(&mut self, keep: Option<usize>) {
        self.shift_keep = keep;
    }

    /// The context-shift setting ([`Session::set_context_shift`]).
    pub fn context_shift(&self) -> Option<usize> {
        self.shift_keep
    }

    /// The span that context shifts dropped since the last reset (or a truncate below the kept
    /// tokens): the context holds the tokens as evaluated without `dropped` of them after the first
    /// `keep`. `None` if nothing was dropped, or if shifts with different `keep`s dropped spans that
    /// are not one.
    pub fn shifted(&self) -> Option<Shifted> {
        self.shifted
    }

    /// Context shift, as llama.cpp's: drop the `n_discard` tokens after the first `n_keep` and move the
    /// rest down. The moved keys are re-rotated (RoPE) for their new positions in place; a
    /// sliding-window layer that no longer holds kept positions a later query would see makes the next
    /// `eval` re-evaluate the shifted context instead (exact). The logits of the last position stay.
    /// Allocates nothing.
    pub fn shift_context(&mut self, n_keep: usize, n_discard: usize) -> Result<()> {
        if n_discard == 0 || n_keep.saturating_add(n_discard) > self.n_past {
            return Err(Error::invalid(format!(
                "context shift: cannot drop {n_discard} tokens after the first {n_keep} of the \
                 {} in the context",
                self.n_past
            )));
        }
        let (hp, n_ctx) = (&self.model.hp, self.cfg.n_ctx);
        if !self.replay && arch::shift::in_place(hp, n_ctx, n_keep, n_discard, self.n_past) {
            arch::shift::shift(&self.model, &mut self.st, n_keep, n_discard, self.n_past);
        } else {
            self.replay = true;
        }
        self.tokens.drain(n_keep..n_keep + n_discard);
        self.batched.drain(n_keep..n_keep + n_discard);
        self.applied.shifted(n_keep, n_discard);
        self.n_past -= n_discard;
        self.shifted = match self.shifted {
            None => Some(Shifted {
                keep: n_keep,
                dropped: n_discard,
            }),
            Some(s) if s.keep == n_keep => Some(Shifted {
                keep: n_keep,
                dropped: s.dropped + n_discard,
            }),
            Some(_) => None,
        };
        Ok(())
    }

    /// Makes room for `need` more tokens: shifts the context if it must and may. Returns how many
    /// tokens were dropped, or `None` if there is no room.
    fn make_room(&mut self, need: usize) -> Result<Option<usize>> {
        let free = self.cfg.n_ctx - self.n_past;
        if need <= free {
            return Ok(Some(0));
        }
        let Some(keep) = self.shift_keep else {
            return Ok(None);
        };
        let keep = keep.min(self.n_past);
        let left = self.n_past - keep;
        let drop = (left / 2).max(need - free);
        if drop == 0 || drop > left {
            return Ok(None);
        }
        self.shift_context(keep, drop)?;
        Ok(Some(drop))
    }

    /// Logits of the last evaluated position.
    pub fn logits(&self) -> &[f32] {
        let nv = self.model.hp.n_vocab;
        let r = self.n_logits.saturating_sub(1);
        &self.st.logits[r * nv..(r + 1) * nv]
    }

    /// Logits of every position of the last `eval` (requires `logits_all`), [n, n_vocab] row-major.
    pub fn logits_all(&self) -> &[f32] {
        &self.st.logits[..self.n_logits * self.model.hp.n_vocab]
    }

    /// Apply these adapters (with their user scales) from the next `eval` on. Scale 0 is the same as
    /// leaving an adapter out. On error the current set stays. See [`crate::adapter::AdapterControl`].
    pub fn set_adapters(&mut self, set: &[(&Arc<Adapter>, f32)]) -> Result<()> {
        self.control.set(set)
    }

    /// The handle through which any thread can change this session's adapters between two tokens.
    pub fn adapter_control(&self) -> Arc<AdapterControl> {
        Arc::clone(&self.control)
    }

    /// The adapters the last `eval` applied (scale-0 entries left out).
    pub fn applied_adapters(&self) -> &crate::adapter::ActiveSet {
        self.applied.active()
    }

    /// Add this control vector to the residual stream from the next `eval` on (`None` clears it). It
    /// must have been built for a model of this one's shape; one without entries (all scales 0)
    /// adds nothing. Independent of the adapters; the forward pass adds it without allocating.
    pub fn set_control_vector(&mut self, cv: Option<Arc<ControlVector>>) -> Result<()> {
        if let Some(c) = &cv {
            let hp = &self.model.hp;
            if (c.n_layer(), c.n_embd()) != (hp.n_layer, hp.n_embd) {
                return Err(Error::invalid(format!(
                    "control vector for {} blocks of width {} does not fit this model ({} blocks of \
                     width {})",
                    c.n_layer(),
                    c.n_embd(),
                    hp.n_layer,
                    hp.n_embd
                )));
            }
        }
        self.cvec = cv.filter(|c| !c.is_empty());
        Ok(())
    }

    /// The control vector the next `eval` applies.
    pub fn control_vector(&self) -> Option<&Arc<ControlVector>> {
        self.cvec.as_ref()
    }

    /// Check a request before it touches any state: token ids in range, room in the context.
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let nv = self.model.hp.n_vocab;
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= nv) {
            return Err(Error::invalid(format!(
                "token id {t} at index {i} is out of range: the vocabulary has {nv} tokens"
            )));
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
        let rewind = self.applied.locate_invocations(&self.tokens, tokens);
        if !self.replay_if_needed() {
            self.reevaluate_from(rewind);
        }
        for chunk in tokens.chunks(self.cfg.n_batch) {
            self.eval_batch(chunk);
        }
        Ok(self.logits())
    }

    /// Evaluate `tokens` and hand the logits of every position to `f(index, logits)`. Needs `logits_all`.
    pub fn eval_each(&mut self, tokens: &[u32], mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        if !self.cfg.logits_all {
            return Err(Error::invalid(
                "eval_each needs a session created with logits_all",
            ));
        }
        self.check(tokens)?;
        self.applied.refresh(&self.control);
        let rewind = self.applied.locate_invocations(&self.tokens, tokens);
        if !self.replay_if_needed() {
            self.reevaluate_from(rewind);
        }
        let nv = self.model.hp.n_vocab;
        let mut i = 0;
        for chunk in tokens.chunks(self.cfg.n_batch) {
            self.eval_batch(chunk);
            for r in 0..chunk.len() {
                f(i, &self.st.logits[r * nv..(r + 1) * nv]);
                i += 1;
            }
        }
        Ok(())
    }

    /// Rebuild the KV cache from the recorded tokens after a `truncate` into overwritten ring slots.
    /// Returns whether it did.
    fn replay_if_needed(&mut self) -> bool {
        if !self.replay {
            return false;
        }
        self.replay = false;
        let toks = std::mem::take(&mut self.tokens);
        self.n_past = 0;
        let mut i = 0;
        while i < toks.len() {
            let len = replay_chunk(&self.batched[i..], self.cfg.n_batch);
            self.compute(&toks[i..i + len]);
            i += len;
        }
        self.tokens = toks;
        true
    }

    /// Evaluate the recorded tokens from position `from` on again, in place (an aLoRA's invocation
    /// began there in tokens computed without it; see [`crate::adapter::alora`]); all of them when a
    /// sliding-window ring no longer holds the positions before `from` that those need. Allocates
    /// nothing.
    fn reevaluate_from(&mut self, from: Option<usize>) {
        let Some(from) = from.filter(|&f| f < self.n_past) else {
            return;
        };
        if self.ring_overwrote(from) {
            self.replay = true;
            self.replay_if_needed();
            return;
        }
        let end = self.n_past;
        self.n_past = from;
        let toks = std::mem::take(&mut self.tokens);
        let mut at = from;
        for chunk in toks[from..end].chunks(self.cfg.n_batch) {
            self.compute(chunk);
            self.batched[at..at + chunk.len()].fill(chunk.len() > 1);
            at += chunk.len();
        }
        self.tokens = toks;
    }

    /// One batch (already checked): computed, then its tokens recorded. Allocates nothing.
    fn eval_batch(&mut self, tokens: &[u32]) {
        self.compute(tokens);
        // Within the capacity reserved at creation (the context check bounds n_past + len by n_ctx).
        self.tokens.extend_from_slice(tokens);
        self.batched
            .extend(std::iter::repeat_n(tokens.len() > 1, tokens.len()));
    }

    /// The model's forward pass over one batch at the current position (the family's, through
    /// [`arch::forward`]): fills the KV cache and the logits, advances the position.
    fn compute(&mut self, tokens: &[u32]) {
        self.applied.set_batch(self.n_past, tokens.len());
        let env = Env {
            m: &self.model,
            k: self.k,
            lk: self.lk,
            pool: &self.pool,
            applied: &self.applied,
            cvec: self.cvec.as_deref(),
            n_ctx: self.cfg.n_ctx,
            logits_all: self.cfg.logits_all,
        };
        self.n_logits = arch::forward(&env, &mut self.st, tokens, self.n_past);
        self.n_past += tokens.len();
    }
}

/// How many of the recorded tokens starting with `batched[0]` a replay computes in one pass: a token
/// computed alone is replayed alone; a run of tokens computed in batches of two or more is replayed in
/// chunks of at most `n_batch` that also hold two or more (a run is made of such batches, so it splits
/// that way, unless a `truncate` left a single token of a batch at the run's end).
fn replay_chunk(batched: &[bool], n_batch: usize) -> usize {
    if !batched[0] {
        return 1;
    }
    let run = batched.iter().take_while(|&&b| b).count();
    if run > n_batch && run - n_batch == 1 && n_batch > 2 {
        n_batch - 1
    } else {
        run.min(n_batch)
    }
}

/// The span context shifts dropped ([`Session::shifted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shifted {
    /// Tokens kept at the start of the context.
    pub keep: usize,
    /// Tokens dropped after them, in all.
    pub dropped: usize,
}

/// Timings and counts of one `Session::generate` call.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub n_prompt: usize,
    pub n_generated: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    /// Tokens context shifts dropped.
    pub n_dropped: usize,
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
    /// context (or, after [`Session::set_context_shift`], shifts it and goes on). Every sampled token is
    /// also passed to `sampler.accept`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut crate::Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenStats> {
        let mut st = GenStats {
            n_prompt: prompt.len(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        if !prompt.is_empty() {
            st.n_dropped += self.make_room(prompt.len())?.unwrap_or(0);
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
            match self.make_room(1)? {
                Some(dropped) => st.n_dropped += dropped,
                None => {
                    st.stop = StopReason::ContextFull;
                    break;
                }
            }
            self.eval(&[id])?;
        }
        st.gen_secs = t1.elapsed().as_secs_f64();
        Ok(st)
    }
}

/// What [`crate::state`] saves and restores.
impl Session {
    /// Adopts the published adapter set now, as the next `eval` would.
    pub(crate) fn refresh_adapters(&mut self) {
        self.applied.refresh(&self.control);
    }

    /// Brings the cache to what `tokens` says: the published adapter set adopted and a pending
    /// replay (after a `truncate` into overwritten ring slots) run.
    pub(crate) fn settle(&mut self) {
        self.refresh_adapters();
        let rewind = self.applied.locate_invocations(&self.tokens, &[]);
        if !self.replay_if_needed() {
            self.reevaluate_from(rewind);
        }
    }

    /// Per token: computed in a batch of two or more.
    pub(crate) fn batched(&self) -> &[bool] {
        &self.batched
    }

    /// The last position's logits, if the last call evaluated one.
    pub fn last_logits(&self) -> Option<&[f32]> {
        (self.n_logits > 0).then(|| self.logits())
    }

    pub(crate) fn kv(&self) -> &crate::arch::kv::KvCache {
        &self.st.kv
    }

    /// Replaces the context (checked by the caller: `tokens.len() ≤ n_ctx`, one flag per token,
    /// `n_vocab` logits): `write_kv` fills the cache's rows of those tokens.
    pub(crate) fn restore(
        &mut self,
        tokens: &[u32],
        batched: &[bool],
        logits: Option<&[f32]>,
        write_kv: impl FnOnce(&mut crate::arch::kv::KvCache),
    ) {
        write_kv(&mut self.st.kv);
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        self.batched.clear();
        self.batched.extend_from_slice(batched);
        self.n_past = tokens.len();
        self.replay = false;
        self.shifted = None;
        self.n_logits = 0;
        if let Some(l) = logits {
            self.st.logits[..l.len()].copy_from_slice(l);
            self.n_logits = 1;
        }
    }
}
