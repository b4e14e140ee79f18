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
//! - [`runner::LlamaCpp`]: a GGUF model loaded by llama.cpp (memory-mapped, CPU only, no extra buffer
//!   types, so no weight repacking and no AMX path), optionally with LoRA adapters at per-adapter
//!   scales; logits of every position of a token sequence, and the `edge-run bench` workload timed
//!   ([`runner::LlamaCpp::bench`]; [`bench`] runs it for `edge-run bench --vs-llama-cpp`).
//! - [`quantize::quantize_model`]: `llama_model_quantize` with `allow_requantize`, to make test models
//!   of other quantization types from the shipped one.
//!
//! How llama.cpp is compiled is decided by `llama-cpp-sys-2`'s build script: without
//! `-C target-cpu=native` it builds ggml with `GGML_NATIVE=OFF` and forwards every `GGML_*` environment
//! variable to CMake, so the instruction sets are chosen at build time with e.g. `GGML_AVX2=ON
//! GGML_FMA=ON GGML_F16C=ON` (AMX stays off unless `GGML_AMX_*` is set). [`system_info`] tells what a
//! build has.

pub mod bench;
pub mod quantize;
pub mod runner;

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
        // The enum's C type is unsigned on some ABIs and signed on others.
        #[allow(clippy::unnecessary_cast)]
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

    /// The bytes of a row of `n` values ([`Traits::row_bytes`]), which `len` must be; the error
    /// names `len` by `given(len)` ("{len} bytes given", "output of {len} bytes").
    fn row_of(
        &self,
        what: &str,
        n: usize,
        len: usize,
        given: impl FnOnce(usize) -> String,
    ) -> Result<usize> {
        let need = self.row_bytes(what, n)?;
        if len != need {
            return Err(Error::invalid(format!(
                "ggml {what} {}: {}, {n} elements need {need}",
                self.name,
                given(len)
            )));
        }
        Ok(need)
    }

    /// `to_float`: the `out.len()` values of the row held in `bytes`.
    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        self.row_of("dequantize", out.len(), bytes.len(), |l| {
            format!("{l} bytes given")
        })?;
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
        let need = self.row_of(what, x.len(), out.len(), |l| format!("output of {l} bytes"))?;
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

/// `p` as a C string for llama.cpp's path arguments.
fn c_path(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", p.display())))
}
