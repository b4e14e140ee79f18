//! The C API (`include/edge_run.h`): what firmware written in C links against (`libedge_run.a`).
//!
//! Conventions (the header repeats them for C users):
//! - every function returns an `int` status (`ER_OK` = 0 or an `ER_ERR_*` code) and writes its results
//!   through out-pointers, except `er_version`, `er_status_name` and `er_last_error`, which return strings;
//! - after a failure `er_last_error()` describes it (a thread-local message, valid until the next `er_*`
//!   call on the same thread); every fallible call clears it on entry;
//! - no panic crosses the boundary: each body runs under `catch_unwind` and a panic becomes `ER_ERR_PANIC`
//!   (a session that panicked is poisoned: every later call on it except `er_session_free` fails);
//! - handles are registered in a process-wide table of live handles and every call looks the pointer up
//!   there (under a mutex) before touching it, so a freed, foreign or wrong-kind handle gives
//!   `ER_ERR_INVALID_HANDLE` instead of reading freed memory. Detection is best effort: once the
//!   allocator reuses a freed handle's address for a new handle of the same kind, the stale pointer
//!   designates the new object;
//! - a session may be used by one thread at a time; a second thread entering the same session gets
//!   `ER_ERR_BUSY` (an atomic flag, not a lock). Models, adapters and adapter controls are immutable or
//!   internally synchronized and may be used from any number of threads;
//! - every object holds `Arc`s of what it uses: freeing a model still used by a session, or an adapter
//!   still applied by a session, is safe; the memory goes when the last user goes.
//!
//! Safety contract of every `unsafe extern "C"` function: pointers are either NULL (refused with
//! `ER_ERR_NULL` where an argument is required) or valid for the access the header documents (e.g. `n`
//! readable `int32_t` at `tokens`, `cap` writable elements at `out`); strings are NUL-terminated.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use crate::adapter::Adapter;
use crate::adapter::{AdapterControl, MAX_ADAPTERS};
use crate::model::Model;
use crate::sampling::{argmax, Sampler, SamplingParams};
use crate::session::{default_threads, Session, SessionConfig};
use crate::Error;
use std::cell::{RefCell, UnsafeCell};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

// ------------------------------------------------------------------------------------------ status codes

pub const ER_OK: c_int = 0;
/// A required pointer argument was NULL.
pub const ER_ERR_NULL: c_int = 1;
/// A handle that is not live (freed, never created) or of the wrong kind.
pub const ER_ERR_INVALID_HANDLE: c_int = 2;
/// The OS refused to open, map or read a file.
pub const ER_ERR_IO: c_int = 3;
/// A file is malformed.
pub const ER_ERR_FORMAT: c_int = 4;
/// A well-formed file asks for something edge-run does not implement.
pub const ER_ERR_UNSUPPORTED: c_int = 5;
/// An argument value is out of range or does not fit the model / session.
pub const ER_ERR_INVALID_ARGUMENT: c_int = 6;
/// The output buffer is too small; the needed count was written to the count out-pointer.
pub const ER_ERR_BUFFER_TOO_SMALL: c_int = 7;
/// A token id outside `0..n_vocab`.
pub const ER_ERR_TOKEN_OUT_OF_RANGE: c_int = 8;
/// The tokens do not fit in the rest of the session's context.
pub const ER_ERR_CONTEXT_FULL: c_int = 9;
/// Logits or sampling asked for before any successful `er_eval` (or after `er_session_reset`).
pub const ER_ERR_NO_LOGITS: c_int = 10;
/// The session is being used by another thread.
pub const ER_ERR_BUSY: c_int = 11;
/// An internal error (a Rust panic) was caught; a session it happened in is unusable.
pub const ER_ERR_PANIC: c_int = 12;

/// Internal error: a status code and its message.
struct CErr {
    code: c_int,
    msg: String,
}

type R<T> = Result<T, CErr>;

fn err<T>(code: c_int, msg: impl Into<String>) -> R<T> {
    Err(CErr {
        code,
        msg: msg.into(),
    })
}

impl From<Error> for CErr {
    fn from(e: Error) -> CErr {
        let code = match e {
            Error::Io { .. } => ER_ERR_IO,
            Error::Format { .. } => ER_ERR_FORMAT,
            Error::Unsupported { .. } => ER_ERR_UNSUPPORTED,
            Error::Invalid(_) => ER_ERR_INVALID_ARGUMENT,
        };
        CErr {
            code,
            msg: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    // Interior NULs would cut the message short in C: show them instead.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Run the body of an exported function: clear the error, catch panics, map errors to codes.
fn ffi(f: impl FnOnce() -> R<()>) -> c_int {
    set_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ER_OK,
        Ok(Err(e)) => {
            set_error(&e.msg);
            e.code
        }
        Err(p) => {
            set_error(&format!(
                "internal error (caught panic): {}",
                panic_message(&*p)
            ));
            ER_ERR_PANIC
        }
    }
}

fn need<T>(p: *const T, what: &str) -> R<()> {
    if p.is_null() {
        return err(ER_ERR_NULL, format!("{what} is NULL"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ handles

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Model,
    Adapter,
    Session,
    AdapterControl,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "er_model",
            Kind::Adapter => "er_adapter",
            Kind::Session => "er_session",
            Kind::AdapterControl => "er_adapter_control",
        }
    }
}

/// Every live handle (address → kind). A handle is removed under this lock before it is dropped, so a
/// pointer found here with the right kind points to a live object for as long as the lock is held.
static LIVE: Mutex<BTreeMap<usize, Kind>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, Kind>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_kind(map: &BTreeMap<usize, Kind>, p: usize, kind: Kind) -> R<()> {
    match map.get(&p) {
        Some(&k) if k == kind => Ok(()),
        Some(&k) => err(
            ER_ERR_INVALID_HANDLE,
            format!(
                "{p:#x} is an {} handle, expected an {}",
                k.name(),
                kind.name()
            ),
        ),
        None => err(
            ER_ERR_INVALID_HANDLE,
            format!(
                "{} handle {p:#x} is not live (already freed, or never returned by edge-run)",
                kind.name()
            ),
        ),
    }
}

fn register<T>(obj: T, kind: Kind) -> *mut T {
    let p = Box::into_raw(Box::new(obj));
    live().insert(p as usize, kind);
    p
}

/// Look a handle up and run `f` on it while the table is locked (so it cannot be freed meanwhile).
fn with_handle<T, U>(p: *const T, kind: Kind, f: impl FnOnce(&T) -> R<U>) -> R<U> {
    need(p, kind.name())?;
    let map = live();
    check_kind(&map, p as usize, kind)?;
    // SAFETY: `p` is in the table with this kind, so it came from `register::<T>` and has not been removed;
    // removal (and the drop that follows it) needs the lock we hold.
    f(unsafe { &*p })
}

/// Remove a handle from the table and drop it. NULL is a no-op (like `free(NULL)`).
fn unregister<T>(p: *mut T, kind: Kind, may_free: impl FnOnce(&T) -> R<()>) -> R<()> {
    if p.is_null() {
        return Ok(());
    }
    let b = {
        let mut map = live();
        check_kind(&map, p as usize, kind)?;
        // SAFETY: as in `with_handle`; we hold the lock.
        may_free(unsafe { &*p })?;
        map.remove(&(p as usize));
        // SAFETY: `p` came from `Box::into_raw` in `register` and was just removed from the table, so no
        // other call can reach it any more and this is the only `Box` made from it.
        unsafe { Box::from_raw(p) }
    };
    drop(b);
    Ok(())
}

/// A loaded model (opaque in C).
pub struct er_model {
    model: Arc<Model>,
}

/// A loaded LoRA adapter (opaque in C).
pub struct er_adapter {
    adapter: Arc<Adapter>,
}

/// A handle that sets a session's adapters from any thread (opaque in C).
pub struct er_adapter_control {
    ctl: Arc<AdapterControl>,
}

/// A session (opaque in C): the KV cache and buffers, plus its sampler.
pub struct er_session {
    busy: AtomicBool,
    poisoned: AtomicBool,
    inner: UnsafeCell<SessionState>,
}

struct SessionState {
    s: Session,
    sampler: Option<Sampler>,
    have_logits: bool,
    /// Token ids converted from `int32_t`, capacity `n_ctx` (never grows: longer inputs are refused first).
    ids: Vec<u32>,
}

fn model_of(p: *const er_model) -> R<Arc<Model>> {
    with_handle(p, Kind::Model, |m| Ok(Arc::clone(&m.model)))
}

/// Exclusive use of a session for the duration of one call.
struct SessionGuard<'a> {
    h: &'a er_session,
}

impl SessionGuard<'_> {
    fn state(&mut self) -> &mut SessionState {
        // SAFETY: the `busy` flag this guard set gives it exclusive access to the state, and the table
        // entry cannot be freed while the flag is set (`er_session_free` refuses busy sessions).
        unsafe { &mut *self.h.inner.get() }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.h.poisoned.store(true, Ordering::Relaxed);
        }
        self.h.busy.store(false, Ordering::Release);
    }
}

fn session<'a>(p: *mut er_session) -> R<SessionGuard<'a>> {
    need(p, "er_session")?;
    let map = live();
    check_kind(&map, p as usize, Kind::Session)?;
    // SAFETY: live and of the right kind (checked under the lock we hold); it stays live after we
    // release the lock because we set `busy` first, and `er_session_free` refuses a busy session.
    let h: &'a er_session = unsafe { &*p };
    if h.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return err(
            ER_ERR_BUSY,
            "the session is in use by another thread (a session is used by one thread at a time)",
        );
    }
    let g = SessionGuard { h };
    if h.poisoned.load(Ordering::Relaxed) {
        return err(
            ER_ERR_PANIC,
            "the session is unusable after an internal error; free it with er_session_free",
        );
    }
    Ok(g)
}

// ------------------------------------------------------------------------------------------ strings

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn er_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The symbolic name of a status code (static string), e.g. "ER_ERR_NULL"; "ER_UNKNOWN" for others.
#[no_mangle]
pub extern "C" fn er_status_name(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        ER_OK => c"ER_OK",
        ER_ERR_NULL => c"ER_ERR_NULL",
        ER_ERR_INVALID_HANDLE => c"ER_ERR_INVALID_HANDLE",
        ER_ERR_IO => c"ER_ERR_IO",
        ER_ERR_FORMAT => c"ER_ERR_FORMAT",
        ER_ERR_UNSUPPORTED => c"ER_ERR_UNSUPPORTED",
        ER_ERR_INVALID_ARGUMENT => c"ER_ERR_INVALID_ARGUMENT",
        ER_ERR_BUFFER_TOO_SMALL => c"ER_ERR_BUFFER_TOO_SMALL",
        ER_ERR_TOKEN_OUT_OF_RANGE => c"ER_ERR_TOKEN_OUT_OF_RANGE",
        ER_ERR_CONTEXT_FULL => c"ER_ERR_CONTEXT_FULL",
        ER_ERR_NO_LOGITS => c"ER_ERR_NO_LOGITS",
        ER_ERR_BUSY => c"ER_ERR_BUSY",
        ER_ERR_PANIC => c"ER_ERR_PANIC",
        _ => c"ER_UNKNOWN",
    };
    s.as_ptr()
}

/// The message of the last failed call on this thread ("" if it succeeded). Valid until the next
/// `er_*` call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn er_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|l| l.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// A NUL-terminated path argument.
unsafe fn path_arg(p: *const c_char, what: &str) -> R<std::path::PathBuf> {
    need(p, what)?;
    // SAFETY: non-NULL, and the caller passes a NUL-terminated string (API contract).
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(std::path::PathBuf::from(s)),
            Err(e) => err(
                ER_ERR_INVALID_ARGUMENT,
                format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()),
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------ model

/// Facts about a model, filled by `er_model_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct er_model_info {
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    /// Beginning-of-sequence token, -1 if the vocabulary has none.
    pub bos: i32,
    /// End-of-sequence token, -1 if none.
    pub eos: i32,
    /// 1 if prompts should start with `bos` (the tokenizer does not add it).
    pub add_bos: i32,
}

/// Map and validate a GGUF model file. On success `*out` is a new handle (free with `er_model_free`).
#[no_mangle]
pub unsafe extern "C" fn er_model_open(path: *const c_char, out: *mut *mut er_model) -> c_int {
    ffi(|| {
        need(out, "out")?;
        // SAFETY: contract: `path` is NULL or NUL-terminated.
        let path = unsafe { path_arg(path, "path") }?;
        let model = Arc::new(Model::open(&path)?);
        let h = register(er_model { model }, Kind::Model);
        // SAFETY: `out` is non-NULL and writable (contract).
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Release a model handle. NULL is a no-op. Sessions and adapters made from it stay valid.
#[no_mangle]
pub unsafe extern "C" fn er_model_free(model: *mut er_model) -> c_int {
    ffi(|| unregister(model, Kind::Model, |_| Ok(())))
}

#[no_mangle]
pub unsafe extern "C" fn er_model_n_vocab(model: *const er_model, out: *mut usize) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let m = model_of(model)?;
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(m.hp.n_vocab) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn er_model_get_info(
    model: *const er_model,
    out: *mut er_model_info,
) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let m = model_of(model)?;
        let (hp, tok) = (&m.hp, &m.tokenizer);
        let id = |t: Option<u32>| t.map(|v| v as i32).unwrap_or(-1);
        let info = er_model_info {
            n_vocab: hp.n_vocab,
            n_ctx_train: hp.n_ctx_train,
            n_embd: hp.n_embd,
            n_layer: hp.n_layer,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            n_ff: hp.n_ff,
            bos: id(tok.bos()),
            eos: id(tok.eos()),
            add_bos: tok.add_bos() as i32,
        };
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(info) };
        Ok(())
    })
}

fn token_id(m: &Model, token: i32, what: &str) -> R<u32> {
    let nv = m.hp.n_vocab;
    if token < 0 || token as usize >= nv {
        return err(
            ER_ERR_TOKEN_OUT_OF_RANGE,
            format!("{what} {token} is out of range: the vocabulary has {nv} tokens"),
        );
    }
    Ok(token as u32)
}

/// `*out` = 1 if `token` ends generation (EOS, EOT, end-of-turn tokens such as `<|im_end|>`), else 0.
#[no_mangle]
pub unsafe extern "C" fn er_token_is_eog(
    model: *const er_model,
    token: i32,
    out: *mut c_int,
) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let m = model_of(model)?;
        let id = token_id(&m, token, "token")?;
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(m.tokenizer.is_eog(id) as c_int) };
        Ok(())
    })
}

/// Tokenize `len` bytes of UTF-8 `text` (no NUL needed; no BOS added). `*n_out` = number of tokens;
/// `ER_ERR_BUFFER_TOO_SMALL` if that exceeds `cap` (nothing written to `out`).
#[no_mangle]
pub unsafe extern "C" fn er_tokenize(
    model: *const er_model,
    text: *const c_char,
    len: usize,
    parse_special: c_int,
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
) -> c_int {
    ffi(|| {
        need(n_out, "n_out")?;
        let m = model_of(model)?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            need(text, "text")?;
            // SAFETY: contract: `len` readable bytes at `text` (non-NULL, checked).
            unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) }
        };
        let s = match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                return err(
                    ER_ERR_INVALID_ARGUMENT,
                    format!(
                        "text is not valid UTF-8: bad byte at offset {}",
                        e.valid_up_to()
                    ),
                )
            }
        };
        let ids = m.tokenizer.encode(s, parse_special != 0);
        // SAFETY: non-NULL and writable (contract).
        unsafe { n_out.write(ids.len()) };
        if ids.len() > cap {
            return err(
                ER_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the text has {} tokens but the buffer holds {cap}",
                    ids.len()
                ),
            );
        }
        if !ids.is_empty() {
            need(out, "out")?;
            // SAFETY: contract: `cap` ≥ ids.len() writable int32_t at `out` (non-NULL, checked).
            let dst = unsafe { std::slice::from_raw_parts_mut(out, ids.len()) };
            for (d, &id) in dst.iter_mut().zip(&ids) {
                *d = id as i32;
            }
        }
        Ok(())
    })
}

/// The bytes of one token (control tokens as their text), not NUL-terminated unless `cap > *n`.
/// Pieces are raw bytes: a multi-byte UTF-8 character may be split over two tokens. `*n` = the piece's
/// length; `ER_ERR_BUFFER_TOO_SMALL` if it exceeds `cap`.
#[no_mangle]
pub unsafe extern "C" fn er_detokenize(
    model: *const er_model,
    token: i32,
    buf: *mut c_char,
    cap: usize,
    n: *mut usize,
) -> c_int {
    ffi(|| {
        need(n, "n")?;
        let m = model_of(model)?;
        let id = token_id(&m, token, "token")?;
        let piece = m.tokenizer.token_to_piece(id, true);
        // SAFETY: non-NULL and writable (contract).
        unsafe { n.write(piece.len()) };
        if piece.len() > cap {
            return err(
                ER_ERR_BUFFER_TOO_SMALL,
                format!(
                    "token {token} has {} bytes but the buffer holds {cap}",
                    piece.len()
                ),
            );
        }
        if cap > 0 {
            need(buf, "buf")?;
            // SAFETY: contract: `cap` writable bytes at `buf` (non-NULL, checked); piece.len() ≤ cap.
            let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) };
            dst[..piece.len()].copy_from_slice(piece);
            if cap > piece.len() {
                dst[piece.len()] = 0;
            }
        }
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------ adapters

/// Load a LoRA adapter (GGUF file, PEFT directory or `.safetensors`) made for `model`.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_open(
    model: *const er_model,
    path: *const c_char,
    out: *mut *mut er_adapter,
) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let m = model_of(model)?;
        // SAFETY: contract: `path` is NULL or NUL-terminated.
        let path = unsafe { path_arg(path, "path") }?;
        let adapter = Arc::new(Adapter::load(&path, &m.base_info)?);
        let h = register(er_adapter { adapter }, Kind::Adapter);
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Release an adapter handle. NULL is a no-op. Sessions still applying it keep it alive.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_free(adapter: *mut er_adapter) -> c_int {
    ffi(|| unregister(adapter, Kind::Adapter, |_| Ok(())))
}

type AdapterList = heapless::Vec<(Arc<Adapter>, f32), MAX_ADAPTERS>;

/// The adapters and scales of a `set_adapters` call, resolved to `Arc`s (allocation-free).
unsafe fn adapter_list(
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> R<AdapterList> {
    let mut list = AdapterList::new();
    if n == 0 {
        return Ok(list);
    }
    if n > MAX_ADAPTERS {
        return err(
            ER_ERR_INVALID_ARGUMENT,
            format!("{n} adapters given; at most {MAX_ADAPTERS} can be applied at once"),
        );
    }
    need(adapters, "adapters")?;
    need(scales, "scales")?;
    // SAFETY: contract: `n` readable elements at each (non-NULL, checked; n ≤ MAX_ADAPTERS).
    let (hs, ss) = unsafe {
        (
            std::slice::from_raw_parts(adapters, n),
            std::slice::from_raw_parts(scales, n),
        )
    };
    for (i, (&h, &s)) in hs.iter().zip(ss).enumerate() {
        let a =
            with_handle(h, Kind::Adapter, |a| Ok(Arc::clone(&a.adapter))).map_err(|e| CErr {
                code: e.code,
                msg: format!("adapters[{i}]: {}", e.msg),
            })?;
        if !s.is_finite() {
            return err(
                ER_ERR_INVALID_ARGUMENT,
                format!("scales[{i}] = {s} is not finite"),
            );
        }
        let _ = list.push((a, s));
    }
    Ok(list)
}

fn publish(ctl: &AdapterControl, list: &AdapterList) -> R<()> {
    let refs: heapless::Vec<(&Arc<Adapter>, f32), MAX_ADAPTERS> =
        list.iter().map(|(a, s)| (a, *s)).collect();
    ctl.set(&refs)?;
    Ok(())
}

/// Apply these adapters with these user scales from the next `er_eval` on (`n` = 0 removes all).
#[no_mangle]
pub unsafe extern "C" fn er_session_set_adapters(
    sess: *mut er_session,
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> c_int {
    ffi(|| {
        let mut g = session(sess)?;
        // SAFETY: forwarded contract.
        let list = unsafe { adapter_list(adapters, scales, n) }?;
        publish(&g.state().s.adapter_control(), &list)
    })
}

/// A handle through which any thread can change the session's adapters while it runs (free it with
/// `er_adapter_control_free`; it keeps working after the session is freed, without effect).
#[no_mangle]
pub unsafe extern "C" fn er_session_adapter_control(
    sess: *mut er_session,
    out: *mut *mut er_adapter_control,
) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let mut g = session(sess)?;
        let ctl = g.state().s.adapter_control();
        let h = register(er_adapter_control { ctl }, Kind::AdapterControl);
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(h) };
        Ok(())
    })
}

/// `er_session_set_adapters` from any thread: takes effect at the start of the session's next `er_eval`.
#[no_mangle]
pub unsafe extern "C" fn er_adapter_control_set(
    ctl: *const er_adapter_control,
    adapters: *const *const er_adapter,
    scales: *const f32,
    n: usize,
) -> c_int {
    ffi(|| {
        let c = with_handle(ctl, Kind::AdapterControl, |c| Ok(Arc::clone(&c.ctl)))?;
        // SAFETY: forwarded contract.
        let list = unsafe { adapter_list(adapters, scales, n) }?;
        publish(&c, &list)
    })
}

#[no_mangle]
pub unsafe extern "C" fn er_adapter_control_free(ctl: *mut er_adapter_control) -> c_int {
    ffi(|| unregister(ctl, Kind::AdapterControl, |_| Ok(())))
}

// ------------------------------------------------------------------------------------------ sessions

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
}

/// Fill `*out` with the defaults: n_ctx 2048, n_batch 64, n_threads 0, max_adapters 8, max_rank 64.
#[no_mangle]
pub unsafe extern "C" fn er_session_params_default(out: *mut er_session_params) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let d = SessionConfig::default();
        let p = er_session_params {
            n_ctx: d.n_ctx,
            n_batch: d.n_batch,
            n_threads: 0,
            max_adapters: d.max_adapters,
            max_rank: d.max_rank,
        };
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(p) };
        Ok(())
    })
}

/// Create a session on `model` (which it keeps alive). Free with `er_session_free`.
#[no_mangle]
pub unsafe extern "C" fn er_session_new(
    model: *const er_model,
    params: *const er_session_params,
    out: *mut *mut er_session,
) -> c_int {
    ffi(|| {
        need(out, "out")?;
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
        let h = register(
            er_session {
                busy: AtomicBool::new(false),
                poisoned: AtomicBool::new(false),
                inner: UnsafeCell::new(st),
            },
            Kind::Session,
        );
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Release a session. NULL is a no-op. `ER_ERR_BUSY` if another thread is inside a call on it.
#[no_mangle]
pub unsafe extern "C" fn er_session_free(sess: *mut er_session) -> c_int {
    ffi(|| {
        unregister(sess, Kind::Session, |h| {
            if h.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                return err(
                    ER_ERR_BUSY,
                    "the session is in use by another thread; it was not freed",
                );
            }
            Ok(())
        })
    })
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
            st.sampler = Some(Sampler::new(sp.params.clone(), st.s.model().hp.n_vocab));
        }
        Ok(())
    })
}

/// `*out` = tokens in the context.
#[no_mangle]
pub unsafe extern "C" fn er_session_n_past(sess: *mut er_session, out: *mut usize) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let mut g = session(sess)?;
        let n = g.state().s.n_past();
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(n) };
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
        let st = g.state();
        if !st.have_logits {
            return err(ER_ERR_NO_LOGITS, "no logits: call er_eval first");
        }
        let l = st.s.logits();
        // SAFETY: non-NULL and writable (contract).
        unsafe { n_written.write(l.len()) };
        if cap < l.len() {
            return err(
                ER_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the model has {} logits but the buffer holds {cap}",
                    l.len()
                ),
            );
        }
        need(out, "out")?;
        // SAFETY: contract: `cap` ≥ l.len() writable floats at `out` (non-NULL, checked).
        unsafe { std::ptr::copy_nonoverlapping(l.as_ptr(), out, l.len()) };
        Ok(())
    })
}

/// `*out` = the most likely next token (lowest id on ties).
#[no_mangle]
pub unsafe extern "C" fn er_sample_greedy(sess: *mut er_session, out: *mut i32) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let mut g = session(sess)?;
        let st = g.state();
        if !st.have_logits {
            return err(ER_ERR_NO_LOGITS, "no logits: call er_eval first");
        }
        let id = argmax(st.s.logits());
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(id as i32) };
        Ok(())
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

/// Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1, repeat_last_n 64, seed 0.
#[no_mangle]
pub unsafe extern "C" fn er_sampling_params_default(out: *mut er_sampling_params) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let d = SamplingParams::default();
        let p = er_sampling_params {
            temperature: d.temperature,
            top_k: d.top_k as u32,
            top_p: d.top_p,
            min_p: d.min_p,
            repeat_penalty: d.repeat_penalty,
            repeat_last_n: d.repeat_last_n as u32,
            seed: d.seed,
        };
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(p) };
        Ok(())
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
        let sp = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n as usize,
            seed: p.seed,
        };
        sp.validate()?;
        st.sampler = Some(Sampler::new(sp, st.s.model().hp.n_vocab));
        Ok(())
    })
}

/// `*out` = a token drawn from the last logits with the session's sampler (`er_session_set_sampling`).
/// The token is not added to the history until it is passed to `er_eval`.
#[no_mangle]
pub unsafe extern "C" fn er_sample(sess: *mut er_session, out: *mut i32) -> c_int {
    ffi(|| {
        need(out, "out")?;
        let mut g = session(sess)?;
        let st = g.state();
        if !st.have_logits {
            return err(ER_ERR_NO_LOGITS, "no logits: call er_eval first");
        }
        let Some(sp) = st.sampler.as_mut() else {
            return err(
                ER_ERR_INVALID_ARGUMENT,
                "no sampler: call er_session_set_sampling first (or use er_sample_greedy)",
            );
        };
        let id = sp.sample(st.s.logits());
        // SAFETY: non-NULL and writable (contract).
        unsafe { out.write(id as i32) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_a_status_and_a_message() {
        let rc = ffi(|| panic!("boom {}", 42));
        assert_eq!(rc, ER_ERR_PANIC);
        // SAFETY: er_last_error returns a NUL-terminated string owned by this thread.
        let msg = unsafe { CStr::from_ptr(er_last_error()) }
            .to_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("boom 42"), "{msg}");
        assert_eq!(ffi(|| Ok(())), ER_OK);
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(er_last_error()) }.to_bytes(), b"");
    }

    #[test]
    fn busy_sessions_are_not_freed_and_panics_poison_them() {
        let path = CString::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/fixtures/tiny-q4_1.gguf"
        ))
        .unwrap();
        let (mut m, mut s, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0usize);
        // SAFETY: valid pointers; the handles are used only on this thread.
        unsafe {
            assert_eq!(er_model_open(path.as_ptr(), &mut m), ER_OK);
            let mut p = er_session_params {
                n_ctx: 0,
                n_batch: 0,
                n_threads: 0,
                max_adapters: 0,
                max_rank: 0,
            };
            assert_eq!(er_session_params_default(&mut p), ER_OK);
            p.n_ctx = 16;
            p.n_threads = 1;
            assert_eq!(er_session_new(m, &p, &mut s), ER_OK);
            // Another "thread" inside the session: entering and freeing it are refused.
            let g = session(s).ok().expect("session guard");
            assert_eq!(er_session_free(s), ER_ERR_BUSY);
            assert_eq!(er_session_n_past(s, &mut n), ER_ERR_BUSY);
            drop(g);
            assert_eq!(er_session_n_past(s, &mut n), ER_OK);
            // A panic while inside the session poisons it; it can still be freed.
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _g = session(s).ok().expect("session guard");
                panic!("inside the session");
            }));
            assert!(r.is_err());
            assert_eq!(er_session_n_past(s, &mut n), ER_ERR_PANIC);
            assert!(CStr::from_ptr(er_last_error())
                .to_str()
                .unwrap()
                .contains("er_session_free"));
            assert_eq!(er_session_free(s), ER_OK);
            assert_eq!(er_model_free(m), ER_OK);
        }
    }
}
