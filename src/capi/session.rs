//! Sessions: parameters, creation, evaluation, logits and sampling.
use super::*;

/// Capacities of a session. Get defaults from `er_session_params_default`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct er_session_params {
    /// Context length (KV cache tokens), > 0.
    pub n_ctx: usize,
    /// Most tokens per forward pass (prompt chunks), > 0.
    pub n_batch: usize,
    /// Worker threads including the caller's; 0 = one per physical core.
    pub n_threads: usize,
    /// Most adapters applied at once, ≤ 8.
    pub max_adapters: usize,
    /// Largest LoRA rank an applied adapter may have, ≤ 4096.
    pub max_rank: usize,
    /// How the KV cache stores keys: `ER_KV_F16` (0, the default), `ER_KV_F32` or `ER_KV_Q8_0`.
    pub type_k: i32,
    /// How the KV cache stores values (as `type_k`).
    pub type_v: i32,
}

/// The KV cache types of `er_session_params` (`ER_KV_*`), by their C value.
pub const ER_KV_F16: c_int = 0;
pub const ER_KV_F32: c_int = 1;
pub const ER_KV_Q8_0: c_int = 2;

/// The KV type of a C value, or an error naming the field.
fn kv_type(field: &str, v: i32) -> R<KvType> {
    match v {
        ER_KV_F16 => Ok(KvType::F16),
        ER_KV_F32 => Ok(KvType::F32),
        ER_KV_Q8_0 => Ok(KvType::Q8_0),
        _ => err(
            ER_ERR_INVALID_ARGUMENT,
            format!("{field} {v} is not a KV cache type (ER_KV_F16 0, ER_KV_F32 1, ER_KV_Q8_0 2)"),
        ),
    }
}

/// The C value of a KV type.
fn kv_type_value(t: KvType) -> i32 {
    match t {
        KvType::F16 => ER_KV_F16,
        KvType::F32 => ER_KV_F32,
        KvType::Q8_0 => ER_KV_Q8_0,
    }
}

/// Fill `*out` with the defaults: n_ctx 2048, n_batch 64, n_threads 0, max_adapters 8, max_rank 64,
/// f16 keys and values.
#[no_mangle]
pub unsafe extern "C" fn er_session_params_default(out: *mut er_session_params) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe {
        put(out, "out", || {
            let d = SessionConfig::default();
            Ok(er_session_params {
                n_ctx: d.n_ctx,
                n_batch: d.n_batch,
                n_threads: 0,
                max_adapters: d.max_adapters,
                max_rank: d.max_rank,
                type_k: kv_type_value(d.type_k),
                type_v: kv_type_value(d.type_v),
            })
        })
    })
}

/// Create a session on `model` (which it keeps alive). Free with `er_session_free`.
#[no_mangle]
pub unsafe extern "C" fn er_session_new(
    model: *const er_model,
    params: *const er_session_params,
    out: *mut *mut er_session,
) -> c_int {
    // SAFETY: contract: `out` is NULL or writable, `params` NULL or readable.
    ffi(|| unsafe { put_handle(out, Kind::Session, || new_session(model, params)) })
}

/// A session of `params` on `model`; the caller guarantees that `params` is NULL or readable.
unsafe fn new_session(model: *const er_model, params: *const er_session_params) -> R<er_session> {
    need(params, "params")?;
    let m = model_of(model)?;
    // SAFETY: non-NULL and readable (contract).
    let p = unsafe { params.read() };
    if p.n_ctx > 1 << 24 {
        return err(
            ER_ERR_INVALID_ARGUMENT,
            format!("n_ctx {} is too large (at most {})", p.n_ctx, 1 << 24),
        );
    }
    let cfg = SessionConfig {
        n_ctx: p.n_ctx,
        n_batch: p.n_batch,
        n_threads: if p.n_threads == 0 {
            default_threads()
        } else {
            p.n_threads
        },
        max_adapters: p.max_adapters,
        max_rank: p.max_rank,
        type_k: kv_type("type_k", p.type_k)?,
        type_v: kv_type("type_v", p.type_v)?,
        ..SessionConfig::default()
    };
    let s = Session::new(m, cfg)?;
    let ids = Vec::with_capacity(p.n_ctx);
    let st = SessionState {
        s,
        sampler: None,
        have_logits: false,
        ids,
    };
    Ok(er_session {
        busy: AtomicBool::new(false),
        poisoned: AtomicBool::new(false),
        inner: UnsafeCell::new(st),
    })
}

impl SessionState {
    /// `ER_ERR_NO_LOGITS` unless a position has been evaluated since creation or the last reset.
    fn require_logits(&self) -> R<()> {
        if !self.have_logits {
            return err(ER_ERR_NO_LOGITS, "no logits: call er_eval first");
        }
        Ok(())
    }

    /// The last evaluated position's logits ([`SessionState::require_logits`] first).
    fn logits(&self) -> R<&[f32]> {
        self.require_logits()?;
        Ok(self.s.logits())
    }

    /// A sampler with `params` over this session's vocabulary.
    fn new_sampler(&self, params: SamplingParams) -> Sampler {
        Sampler::new(params, self.s.model().hp.n_vocab)
    }
}

/// Release a session. NULL is a no-op. `ER_ERR_BUSY` if another thread is inside a call on it.
#[no_mangle]
pub unsafe extern "C" fn er_session_free(sess: *mut er_session) -> c_int {
    ffi(|| unregister(sess, Kind::Session, |h| h.claim("; it was not freed")))
}

/// Forget the context (and the last logits); the sampler restarts from its seed.
#[no_mangle]
pub unsafe extern "C" fn er_session_reset(sess: *mut er_session) -> c_int {
    ffi(|| {
        let mut g = session(sess)?;
        let st = g.state();
        st.s.reset();
        st.have_logits = false;
        if let Some(sp) = &st.sampler {
            st.sampler = Some(st.new_sampler(sp.params.clone()));
        }
        Ok(())
    })
}

/// `*out` = tokens in the context.
#[no_mangle]
pub unsafe extern "C" fn er_session_n_past(sess: *mut er_session, out: *mut usize) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe { put(out, "out", || Ok(session(sess)?.state().s.n_past())) })
}

/// Save the context (tokens, KV cache rows, last logits) to the file `path`, with the identity of the
/// model, KV types and adapter set it is only valid with.
#[no_mangle]
pub unsafe extern "C" fn er_session_save(sess: *mut er_session, path: *const c_char) -> c_int {
    ffi(|| {
        // SAFETY: contract: `path` is NULL or NUL-terminated.
        let p = unsafe { path_arg(path, "path") }?;
        let mut g = session(sess)?;
        g.state().s.save_state(&p)?;
        Ok(())
    })
}

/// Replace the context with the one saved in `path`. On any error the session is unchanged; after
/// success the logits are the saved ones and the sampler restarts from its seed with the restored
/// tokens in its history.
#[no_mangle]
pub unsafe extern "C" fn er_session_load(sess: *mut er_session, path: *const c_char) -> c_int {
    ffi(|| {
        // SAFETY: contract: `path` is NULL or NUL-terminated.
        let p = unsafe { path_arg(path, "path") }?;
        let mut g = session(sess)?;
        let st = g.state();
        st.s.load_state(&p)?;
        st.have_logits = st.s.last_logits().is_some();
        if let Some(sp) = &st.sampler {
            let mut fresh = st.new_sampler(sp.params.clone());
            for &t in st.s.tokens() {
                fresh.accept(t);
            }
            st.sampler = Some(fresh);
        }
        Ok(())
    })
}

/// Evaluate `n` tokens after the context. On any error nothing changed.
#[no_mangle]
pub unsafe extern "C" fn er_eval(sess: *mut er_session, tokens: *const i32, n: usize) -> c_int {
    ffi(|| {
        let mut g = session(sess)?;
        let st = g.state();
        if n == 0 {
            return err(ER_ERR_INVALID_ARGUMENT, "nothing to evaluate: n is 0");
        }
        need(tokens, "tokens")?;
        let (n_ctx, n_past) = (st.s.config().n_ctx, st.s.n_past());
        if n > n_ctx - n_past {
            return err(
                ER_ERR_CONTEXT_FULL,
                format!("context full: {n_past} tokens in the context + {n} new > n_ctx {n_ctx}"),
            );
        }
        // SAFETY: contract: `n` readable int32_t at `tokens` (non-NULL, checked; n ≤ n_ctx).
        let toks = unsafe { std::slice::from_raw_parts(tokens, n) };
        let model = Arc::clone(st.s.model());
        st.ids.clear();
        for (i, &t) in toks.iter().enumerate() {
            let id = token_id(&model, t, &format!("tokens[{i}] ="))?;
            st.ids.push(id);
        }
        st.s.eval(&st.ids)?;
        st.have_logits = true;
        if let Some(sp) = &mut st.sampler {
            for &id in &st.ids {
                sp.accept(id);
            }
        }
        Ok(())
    })
}

/// Copy the last evaluated position's logits (`n_vocab` floats) to `out`. `*n_written` = n_vocab, also
/// when `ER_ERR_BUFFER_TOO_SMALL` is returned because `cap < n_vocab`.
#[no_mangle]
pub unsafe extern "C" fn er_logits(
    sess: *mut er_session,
    out: *mut f32,
    cap: usize,
    n_written: *mut usize,
) -> c_int {
    ffi(|| {
        need(n_written, "n_written")?;
        let mut g = session(sess)?;
        let l = g.state().logits()?;
        // SAFETY: non-NULL and writable (contract).
        unsafe { n_written.write(l.len()) };
        buffer_fits(l.len(), cap, || format!("the model has {} logits", l.len()))?;
        need(out, "out")?;
        // SAFETY: contract: `cap` ≥ l.len() writable floats at `out` (non-NULL, checked).
        unsafe { std::ptr::copy_nonoverlapping(l.as_ptr(), out, l.len()) };
        Ok(())
    })
}

/// `*out` = the most likely next token (lowest id on ties).
#[no_mangle]
pub unsafe extern "C" fn er_sample_greedy(sess: *mut er_session, out: *mut i32) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe {
        put(out, "out", || {
            Ok(argmax(session(sess)?.state().logits()?) as i32)
        })
    })
}

/// Sampling parameters (as llama.cpp's). Get defaults from `er_sampling_params_default`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct er_sampling_params {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: u32,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub repeat_penalty: f32,
    /// Recent tokens the penalty looks at (≤ the session's n_ctx).
    pub repeat_last_n: u32,
    pub seed: u64,
}

/// A `$to` (`er_sampling_params` or [`SamplingParams`]) with the fields of `$from` (the other one):
/// the same names, integers `u32` in C and `usize` in Rust.
macro_rules! sampling_params {
    ($to:ident from $from:expr) => {{
        let p = $from;
        $to {
            temperature: p.temperature,
            top_k: p.top_k as _,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n as _,
            seed: p.seed,
        }
    }};
}

/// Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1, repeat_last_n 64, seed 0.
#[no_mangle]
pub unsafe extern "C" fn er_sampling_params_default(out: *mut er_sampling_params) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe {
        put(out, "out", || {
            Ok(sampling_params!(er_sampling_params from SamplingParams::default()))
        })
    })
}

/// Give the session a sampler with these parameters (replacing any previous one and its history).
/// Every token passed to `er_eval` from then on is added to its repetition history.
#[no_mangle]
pub unsafe extern "C" fn er_session_set_sampling(
    sess: *mut er_session,
    params: *const er_sampling_params,
) -> c_int {
    ffi(|| {
        need(params, "params")?;
        let mut g = session(sess)?;
        let st = g.state();
        // SAFETY: non-NULL and readable (contract).
        let p = unsafe { params.read() };
        let n_ctx = st.s.config().n_ctx;
        if p.repeat_last_n as usize > n_ctx {
            return err(
                ER_ERR_INVALID_ARGUMENT,
                format!(
                    "repeat_last_n {} exceeds the session's n_ctx {n_ctx}",
                    p.repeat_last_n
                ),
            );
        }
        let sp = sampling_params!(SamplingParams from p);
        sp.validate()?;
        st.sampler = Some(st.new_sampler(sp));
        Ok(())
    })
}

/// `*out` = a token drawn from the last logits with the session's sampler (`er_session_set_sampling`).
/// The token is not added to the history until it is passed to `er_eval`.
#[no_mangle]
pub unsafe extern "C" fn er_sample(sess: *mut er_session, out: *mut i32) -> c_int {
    // SAFETY: contract: `out` is NULL or writable.
    ffi(|| unsafe { put(out, "out", || sample(sess)) })
}

fn sample(sess: *mut er_session) -> R<i32> {
    let mut g = session(sess)?;
    let st = g.state();
    st.require_logits()?;
    let Some(sp) = st.sampler.as_mut() else {
        return err(
            ER_ERR_INVALID_ARGUMENT,
            "no sampler: call er_session_set_sampling first (or use er_sample_greedy)",
        );
    };
    Ok(sp.sample(st.s.logits()) as i32)
}
