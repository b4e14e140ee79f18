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

mod adapters;
mod alora;
mod control;
mod model;
mod session;
pub use adapters::*;
pub use alora::*;
pub use control::*;
pub use model::*;
pub use session::*;

use crate::adapter::{Adapter, ControlVector};
use crate::adapter::{AdapterControl, MAX_ADAPTERS};
use crate::model::Model;
use crate::sampling::{argmax, Sampler, SamplingParams};
use crate::session::{default_threads, KvType, Session, SessionConfig};
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

/// `ER_ERR_BUFFER_TOO_SMALL` ("`{contents}` but the buffer holds {cap}") unless `len ≤ cap`.
fn buffer_fits(len: usize, cap: usize, contents: impl FnOnce() -> String) -> R<()> {
    if len > cap {
        return err(
            ER_ERR_BUFFER_TOO_SMALL,
            format!("{} but the buffer holds {cap}", contents()),
        );
    }
    Ok(())
}

fn need<T>(p: *const T, what: &str) -> R<()> {
    if p.is_null() {
        return err(ER_ERR_NULL, format!("{what} is NULL"));
    }
    Ok(())
}

/// `*n_out` = `ids.len()`, then `ids` as int32_t at `out` if they fit in `cap` (else
/// `ER_ERR_BUFFER_TOO_SMALL` saying `contents()`, `out` untouched); `out` may be NULL when `ids` is
/// empty. The caller guarantees that `n_out` is non-NULL and writable and that `out` is NULL or
/// valid for writing `cap` int32_t.
unsafe fn put_tokens(
    ids: &[u32],
    out: *mut i32,
    cap: usize,
    n_out: *mut usize,
    contents: impl FnOnce() -> String,
) -> R<()> {
    // SAFETY: non-NULL and writable (the caller's guarantee).
    unsafe { n_out.write(ids.len()) };
    buffer_fits(ids.len(), cap, contents)?;
    if !ids.is_empty() {
        need(out, "out")?;
        // SAFETY: `cap` ≥ ids.len() writable int32_t at `out` (non-NULL, checked; the caller's
        // guarantee).
        let dst = unsafe { std::slice::from_raw_parts_mut(out, ids.len()) };
        for (d, &id) in dst.iter_mut().zip(ids) {
            *d = id as i32;
        }
    }
    Ok(())
}

/// `*out` = what `f` returns; `out` (named `what` in the error) is checked non-NULL before `f` runs.
/// The caller guarantees that `out` is NULL or valid for writing a `T`.
unsafe fn put<T>(out: *mut T, what: &str, f: impl FnOnce() -> R<T>) -> R<()> {
    need(out, what)?;
    let v = f()?;
    // SAFETY: non-NULL (checked) and writable (the caller's guarantee).
    unsafe { out.write(v) };
    Ok(())
}

// ------------------------------------------------------------------------------------------ handles

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Model,
    Adapter,
    Session,
    AdapterControl,
    ControlVector,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "er_model",
            Kind::Adapter => "er_adapter",
            Kind::Session => "er_session",
            Kind::AdapterControl => "er_adapter_control",
            Kind::ControlVector => "er_control_vector",
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

/// `*out` = a new handle of `kind` to the object `f` makes; `out` is checked non-NULL before `f` runs.
/// The caller guarantees that `out` is NULL or valid for writing a pointer.
unsafe fn put_handle<T>(out: *mut *mut T, kind: Kind, f: impl FnOnce() -> R<T>) -> R<()> {
    // SAFETY: forwarded guarantee.
    unsafe { put(out, "out", || Ok(register(f()?, kind))) }
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

/// A control vector: per-block additions to the residual stream (opaque in C).
pub struct er_control_vector {
    cv: Arc<ControlVector>,
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

impl er_session {
    /// Set the `busy` flag, or `ER_ERR_BUSY` ("… in use by another thread{why}") if it is set.
    fn claim(&self, why: &str) -> R<()> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return err(
                ER_ERR_BUSY,
                format!("the session is in use by another thread{why}"),
            );
        }
        Ok(())
    }
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
    h.claim(" (a session is used by one thread at a time)")?;
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
            let mut p = std::mem::MaybeUninit::uninit();
            assert_eq!(er_session_params_default(p.as_mut_ptr()), ER_OK);
            let p = er_session_params {
                n_ctx: 16,
                n_threads: 1,
                ..p.assume_init()
            };
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
