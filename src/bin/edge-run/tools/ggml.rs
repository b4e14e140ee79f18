//! llama.cpp / ggml in the same process, for checking edge-run against them (feature `ggml`).
//!
//! The C library is built by the `llama-cpp-sys-2` crate from the llama.cpp sources it vendors; its
//! bindgen bindings cover `llama.h`, which includes `ggml.h` and `ggml-cpu.h`, so ggml's type traits
//! (`ggml_get_type_traits`, `ggml_get_type_traits_cpu`) are reachable without a bindgen run of our own.
//!
//! Three things live here, each a small safe wrapper whose every FFI call is length-checked first
//! (ggml aborts the process on a failed `GGML_ASSERT`, so nothing that could trip one is passed on):
//! - [`Traits`]: ggml's per-type kernels — dequantize (`to_float`), quantize (`from_float` of the CPU
//!   backend and the portable `from_float_ref`) and the dot product of a weight row with a quantized
//!   activation row (`vec_dot`), for the test oracles.
//! - [`LlamaCpp`]: a GGUF model loaded by llama.cpp (memory-mapped, CPU only, no extra buffer types, so
//!   no weight repacking and no AMX path), optionally with LoRA adapters at per-adapter scales; logits of
//!   every position of a token sequence, and the `edge-run bench` workload timed ([`LlamaCpp::bench`]).
//! - [`quantize_model`]: `llama_model_quantize` with `allow_requantize`, to make test models of other
//!   quantization types from the shipped one.
//!
//! How llama.cpp is compiled is decided by `llama-cpp-sys-2`'s build script: without
//! `-C target-cpu=native` it builds ggml with `GGML_NATIVE=OFF` and forwards every `GGML_*` environment
//! variable to CMake, so the instruction sets are chosen at build time with e.g. `GGML_AVX2=ON
//! GGML_FMA=ON GGML_F16C=ON` (AMX stays off unless `GGML_AMX_*` is set). [`system_info`] tells what a
//! build has.
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Instant;

use llama_cpp_sys_2 as sys;

use edge_run::kernels::QuantType;
use edge_run::{Error, Result};

static INIT: Once = Once::new();

/// Log lines of llama.cpp that named a repacked weight buffer (`CPU_REPACK model buffer size = …`),
/// counted by [`log_errors_only`]: how [`LlamaCpp::load`] tells whether llama.cpp repacked the model.
static REPACK_LINES: AtomicUsize = AtomicUsize::new(0);

/// Drops llama.cpp's log lines except errors (it logs every tensor at load time otherwise), counting
/// the lines that report a repacked weight buffer.
unsafe extern "C" fn log_errors_only(
    level: sys::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the duration of the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if s.contains("REPACK") && s.contains("buffer size") {
        REPACK_LINES.fetch_add(1, Ordering::Relaxed);
    }
    if level == sys::GGML_LOG_LEVEL_ERROR {
        eprint!("llama.cpp: {s}");
    }
}

/// Initializes the llama.cpp backend and ggml's CPU tables once per process.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: one-time global initialization, guarded by `Once`; the callback is a plain `extern "C"`
        // function that only reads its arguments.
        unsafe {
            sys::llama_log_set(Some(log_errors_only), std::ptr::null_mut());
            sys::llama_backend_init();
            sys::ggml_cpu_init();
        }
    });
}

/// llama.cpp's description of the build (`llama_print_system_info`): SIMD flags, threads backends …
pub fn system_info() -> String {
    init();
    // SAFETY: returns a pointer to a static NUL-terminated buffer (or null, handled below).
    let p = unsafe { sys::llama_print_system_info() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, static for the process (re-filled by the next call, which we do
    // not make while borrowing it: the string is copied out here).
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// The `ggml_type` id of a [`QuantType`] (edge-run numbers its types as `ggml.h` does).
fn ggml_type(ty: QuantType) -> sys::ggml_type {
    ty as u32 as sys::ggml_type
}

/// A buffer of bytes aligned to 8, so ggml's block structs (which contain `float`/`int16_t` fields)
/// are read at their natural alignment whatever the caller's slice alignment.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }
    fn from_bytes(b: &[u8]) -> Aligned {
        let mut a = Aligned::zeroed(b.len());
        a.bytes_mut().copy_from_slice(b);
        a
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
    fn ptr(&self) -> *const c_void {
        self.words.as_ptr().cast()
    }
    fn mut_ptr(&mut self) -> *mut c_void {
        self.words.as_mut_ptr().cast()
    }
}

/// ggml's kernels for one tensor type (from the base library's and the CPU backend's trait tables).
#[derive(Clone, Copy)]
pub struct Traits {
    ty: QuantType,
    name: &'static str,
    blck_size: usize,
    type_size: usize,
    to_float: sys::ggml_to_float_t,
    from_float_ref: sys::ggml_from_float_t,
    from_float: sys::ggml_from_float_t,
    vec_dot: sys::ggml_vec_dot_t,
    vec_dot_type: Option<QuantType>,
}

impl std::fmt::Debug for Traits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traits")
            .field("type", &self.name)
            .field("blck_size", &self.blck_size)
            .field("type_size", &self.type_size)
            .field("vec_dot_type", &self.vec_dot_type)
            .finish()
    }
}

impl Traits {
    /// ggml's traits for `ty`. Checks that ggml agrees with edge-run on the block and byte sizes.
    pub fn of(ty: QuantType) -> Result<Traits> {
        init();
        let t = ggml_type(ty);
        // SAFETY: `t` is a valid `ggml_type` (edge-run's ids are ggml's); the tables are static arrays
        // indexed by type, and the returned pointers are non-null for every type below GGML_TYPE_COUNT.
        let (base, cpu) = unsafe {
            (
                sys::ggml_get_type_traits(t),
                sys::ggml_get_type_traits_cpu(t),
            )
        };
        if base.is_null() || cpu.is_null() {
            return Err(Error::unsupported(
                "ggml",
                format!("no type traits for {}", ty.name()),
            ));
        }
        // SAFETY: non-null pointers into ggml's static trait tables, valid for the process.
        let (base, cpu) = unsafe { (&*base, &*cpu) };
        let name = if base.type_name.is_null() {
            "?"
        } else {
            // SAFETY: ggml's type names are static NUL-terminated literals.
            unsafe { CStr::from_ptr(base.type_name) }
                .to_str()
                .unwrap_or("?")
        };
        let tr = Traits {
            ty,
            name,
            blck_size: usize::try_from(base.blck_size).unwrap_or(0),
            type_size: base.type_size,
            to_float: base.to_float,
            from_float_ref: base.from_float_ref,
            from_float: cpu.from_float,
            vec_dot: cpu.vec_dot,
            vec_dot_type: QuantType::from_ggml(cpu.vec_dot_type as u32),
        };
        if tr.blck_size != ty.block_size() || tr.type_size != ty.type_size() {
            return Err(Error::unsupported(
                "ggml",
                format!(
                    "{}: ggml has block {} / {} bytes, edge-run {} / {} bytes",
                    ty.name(),
                    tr.blck_size,
                    tr.type_size,
                    ty.block_size(),
                    ty.type_size()
                ),
            ));
        }
        Ok(tr)
    }

    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// ggml's name of the type (`q4_0`, `q4_K` …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The activation type of ggml's CPU dot product for weights of this type (F16 for F16 weights,
    /// where edge-run uses F32), if edge-run knows that type.
    pub fn vec_dot_type(&self) -> Option<QuantType> {
        self.vec_dot_type
    }

    fn row_bytes(&self, what: &str, n: usize) -> Result<usize> {
        self.ty
            .row_bytes(n)
            .filter(|_| n > 0 && i32::try_from(n).is_ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "ggml {what} {}: {n} elements is not a positive multiple of the block size {}",
                    self.name, self.blck_size
                ))
            })
    }

    /// `to_float`: the `out.len()` values of the row held in `bytes`.
    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let need = self.row_bytes("dequantize", out.len())?;
        if bytes.len() != need {
            return Err(Error::invalid(format!(
                "ggml dequantize {}: {} bytes given, {} elements need {need}",
                self.name,
                bytes.len(),
                out.len()
            )));
        }
        let f = self
            .to_float
            .ok_or_else(|| Error::unsupported("ggml", format!("{} has no to_float", self.name)))?;
        let src = Aligned::from_bytes(bytes);
        // SAFETY: `src` holds exactly the `out.len() / blck_size` blocks `f` reads (checked above), aligned
        // to 8; `out` has room for the `out.len()` floats it writes; the two do not overlap.
        unsafe { f(src.ptr(), out.as_mut_ptr(), out.len() as i64) };
        Ok(())
    }

    fn quantize_with(
        &self,
        f: sys::ggml_from_float_t,
        what: &str,
        x: &[f32],
        out: &mut [u8],
    ) -> Result<()> {
        let need = self.row_bytes(what, x.len())?;
        if out.len() != need {
            return Err(Error::invalid(format!(
                "ggml {what} {}: output of {} bytes, {} elements need {need}",
                self.name,
                out.len(),
                x.len()
            )));
        }
        let f =
            f.ok_or_else(|| Error::unsupported("ggml", format!("{} has no {what}", self.name)))?;
        let mut dst = Aligned::zeroed(need);
        // SAFETY: `x` holds `x.len()` floats, a whole number of blocks (checked); `dst` has exactly the
        // bytes of those blocks, aligned to 8; no overlap.
        unsafe { f(x.as_ptr(), dst.mut_ptr(), x.len() as i64) };
        out.copy_from_slice(dst.bytes());
        Ok(())
    }

    /// Whether ggml has a portable reference quantizer for this type (it has none for Q8_K).
    pub fn has_quantize_ref(&self) -> bool {
        self.from_float_ref.is_some()
    }

    /// The CPU backend's `from_float` (what llama.cpp uses for activations; SIMD where ggml has it).
    pub fn quantize(&self, x: &[f32], out: &mut [u8]) -> Result<()> {
        self.quantize_with(self.from_float, "from_float", x, out)
    }

    /// The portable reference quantizer `from_float_ref` (what `llama_model_quantize` uses for weights).
    pub fn quantize_ref(&self, x: &[f32], out: &mut [u8]) -> Result<()> {
        self.quantize_with(self.from_float_ref, "from_float_ref", x, out)
    }

    /// `vec_dot`: the dot product of the weight row `w` (`n` elements of this type) with the activation
    /// row `xq` (`n` elements of [`Traits::vec_dot_type`]).
    pub fn vec_dot(&self, n: usize, w: &[u8], xq: &[u8]) -> Result<f32> {
        let wb = self.row_bytes("vec_dot", n)?;
        let vt = self.vec_dot_type.ok_or_else(|| {
            Error::unsupported(
                "ggml",
                format!("{}: vec_dot_type unknown to edge-run", self.name),
            )
        })?;
        let xb = vt.row_bytes(n).ok_or_else(|| {
            Error::invalid(format!(
                "ggml vec_dot {}: {n} is not a multiple of {}'s block",
                self.name,
                vt.name()
            ))
        })?;
        if w.len() != wb || xq.len() != xb {
            return Err(Error::invalid(format!(
                "ggml vec_dot {} × {}: {} and {} bytes given, {n} elements need {wb} and {xb}",
                self.name,
                vt.name(),
                w.len(),
                xq.len()
            )));
        }
        let f = self
            .vec_dot
            .ok_or_else(|| Error::unsupported("ggml", format!("{} has no vec_dot", self.name)))?;
        let (a, b) = (Aligned::from_bytes(w), Aligned::from_bytes(xq));
        let mut s = 0.0f32;
        // SAFETY: one row (nrc = 1, so the strides are unused) of `n` elements: `a` and `b` hold exactly
        // the blocks ggml reads for `n` (checked above), aligned to 8; `s` receives one float.
        unsafe { f(n as i32, &mut s, 0, a.ptr(), 0, b.ptr(), 0, 1) };
        Ok(s)
    }
}

// -------------------------------------------------------------------------------------------------
// Model quantization.

/// A llama.cpp file type for [`quantize_model`] (`enum llama_ftype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ftype {
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
}

impl Ftype {
    pub const ALL: [Ftype; 11] = [
        Ftype::F16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q8_0,
        Ftype::Q4KS,
        Ftype::Q4KM,
        Ftype::Q5KS,
        Ftype::Q5KM,
        Ftype::Q6K,
    ];

    /// llama-quantize's name (`Q4_K_M` …).
    pub fn name(self) -> &'static str {
        match self {
            Ftype::F16 => "F16",
            Ftype::Q4_0 => "Q4_0",
            Ftype::Q4_1 => "Q4_1",
            Ftype::Q5_0 => "Q5_0",
            Ftype::Q5_1 => "Q5_1",
            Ftype::Q8_0 => "Q8_0",
            Ftype::Q4KS => "Q4_K_S",
            Ftype::Q4KM => "Q4_K_M",
            Ftype::Q5KS => "Q5_K_S",
            Ftype::Q5KM => "Q5_K_M",
            Ftype::Q6K => "Q6_K",
        }
    }

    /// The type for a llama-quantize name (case-insensitive).
    pub fn parse(s: &str) -> Result<Ftype> {
        Ftype::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Ftype::ALL.iter().map(|f| f.name()).collect();
                Error::invalid(format!(
                    "unknown file type {s:?}; known: {}",
                    names.join(", ")
                ))
            })
    }

    fn raw(self) -> sys::llama_ftype {
        match self {
            Ftype::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            Ftype::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Ftype::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Ftype::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Ftype::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Ftype::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            Ftype::Q4KS => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Ftype::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Ftype::Q5KS => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Ftype::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Ftype::Q6K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
        }
    }
}

fn c_path(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", p.display())))
}

/// `llama_model_quantize(input → output)` to `ftype`, re-quantizing already quantized tensors
/// (`allow_requantize`), with llama.cpp's per-tensor type choices for the `_S`/`_M` mixes and its
/// fallbacks for rows that a K-quant block does not divide.
pub fn quantize_model(input: &Path, output: &Path, ftype: Ftype, n_threads: usize) -> Result<()> {
    init();
    if !input.is_file() {
        return Err(Error::Io {
            path: input.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        });
    }
    let (i, o) = (c_path(input)?, c_path(output)?);
    // SAFETY: returns a plain struct by value.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = i32::try_from(n_threads.max(1)).unwrap_or(1);
    params.ftype = ftype.raw();
    params.allow_requantize = true;
    // SAFETY: both paths are NUL-terminated and outlive the call; `params` is a valid struct whose
    // pointer fields are the library's defaults (null).
    let rc = unsafe { sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &params) };
    if rc != 0 {
        return Err(Error::invalid(format!(
            "llama_model_quantize {} → {} ({}) failed with code {rc}",
            input.display(),
            output.display(),
            ftype.name()
        )));
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// The llama.cpp runner.

/// Settings of a [`LlamaCpp`] runner.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// Threads for single-token decoding and for batches.
    pub n_threads: usize,
    /// Context length (KV cache).
    pub n_ctx: usize,
    /// Largest batch evaluated at once (logical and physical batch).
    pub n_batch: usize,
    /// Keep the KV cache in f32 (as edge-run does) instead of llama.cpp's default f16.
    pub kv_f32: bool,
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
            kv_f32: false,
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
            kv_f32: true,
            flash_attn: Some(false),
            repack: false,
        }
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
        if cfg.kv_f32 {
            cp.type_k = sys::GGML_TYPE_F32;
            cp.type_v = sys::GGML_TYPE_F32;
        }
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

struct BatchGuard(sys::llama_batch);

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

// -------------------------------------------------------------------------------------------------
// `edge-run bench --vs-llama-cpp`.

/// llama.cpp's speed on an `edge-run bench` workload.
#[derive(Clone, Debug)]
pub struct BenchVs {
    /// Without adapters.
    pub base: LlamaSpeed,
    /// With the workload's adapters, if it has any.
    pub lora: Option<LlamaSpeed>,
    /// [`system_info`] of this llama.cpp build.
    pub system_info: String,
    /// Whether llama.cpp repacked weights for its batched kernels ([`LlamaConfig::repack`]).
    pub repacked: bool,
}

/// Runs `w` (the same prompt tokens, counts, repetitions and adapters as edge-run's bench) in llama.cpp
/// with `n_threads` threads on the model file `model`. Adapters that are not GGUF files (PEFT
/// directories or safetensors) are first converted with edge-run's converter into a temporary GGUF
/// (their true scale folded in), since llama.cpp reads only GGUF adapters.
pub fn bench_workload(
    model: &Path,
    base: &edge_run::adapter::BaseInfo,
    n_vocab: usize,
    w: &super::bench::Workload,
    n_threads: usize,
) -> Result<BenchVs> {
    w.validate()?;
    let prompt = w.prompt(n_vocab);
    let cfg = LlamaConfig::new(n_threads, w.n_prompt + w.n_gen, w.n_prompt);
    let mut lc = LlamaCpp::load(model, &cfg)?;
    if lc.n_vocab() != n_vocab {
        return Err(Error::invalid(format!(
            "{}: llama.cpp sees {} tokens, edge-run {n_vocab}",
            model.display(),
            lc.n_vocab()
        )));
    }
    let base_speed = lc.bench(&prompt, w.n_gen, w.reps)?;
    let mut lora = None;
    if !w.adapters.is_empty() {
        let tmp =
            std::env::temp_dir().join(format!("edge-run-vs-llama-cpp-{}", std::process::id()));
        let result = (|| {
            let mut files = Vec::new();
            for (i, (p, s)) in w.adapters.iter().enumerate() {
                if is_gguf(p) {
                    files.push((p.clone(), *s));
                } else {
                    std::fs::create_dir_all(&tmp).map_err(|e| Error::Io {
                        path: tmp.clone(),
                        source: e,
                    })?;
                    let out = tmp.join(format!("adapter{i}.gguf"));
                    super::convert::convert(p, base, &out)?;
                    files.push((out, *s));
                }
            }
            let set: Vec<(&Path, f32)> = files.iter().map(|(p, s)| (p.as_path(), *s)).collect();
            lc.set_adapters(&set)?;
            lc.bench(&prompt, w.n_gen, w.reps)
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        lora = Some(result?);
    }
    Ok(BenchVs {
        base: base_speed,
        lora,
        system_info: system_info(),
        repacked: lc.repacked(),
    })
}

fn is_gguf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    p.is_file()
        && std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}
