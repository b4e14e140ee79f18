//! Every file edge-run maps — models (whose tokenizer reads its texts in place), adapters, a merge's
//! input — is mapped here, by [`MappedFile::open`], and registered with the truncation guard below for
//! the mapping's lifetime.
//!
//! # Files that shrink while mapped
//!
//! Mappings are read-only (`PROT_READ`) and never written through. If another program truncates (or
//! rewrites in place with a shorter file) a file that is mapped, the pages past the new end disappear
//! from every mapping of it, and the next read of one of them raises `SIGBUS`. By default that signal
//! kills the process (the same as for llama.cpp or any mmap-based loader); nothing can make the lost
//! bytes readable again. Two things are safe:
//! - replace files by writing a new file and renaming it over the old one (what `edge-run merge` and
//!   `edge-run adapter convert` do): the old inode stays intact for everyone who has it mapped;
//! - call [`install_guard`] (the `edge-run` CLI does): a `SIGBUS` inside a registered mapping then ends
//!   the process with exit status 1 and one line naming the file and the offset, instead of a signal
//!   death. Faults outside edge-run's mappings keep the default action.
//!
//! A library cannot recover from the fault (the forward pass was reading weights that are gone), so the
//! handler exits; applications that must survive should keep model files immutable. Edits that keep the
//! length change weights under a running model silently (as with any mapping): also avoided by renaming.
//!
//! The guard's table has [`SLOTS`] entries; further mappings simply go unnamed. The handler only reads
//! atomics and calls `write(2)` and `_exit(2)`, which are async-signal-safe.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// A read-only file mapping, registered with the truncation guard for its lifetime.
pub struct MappedFile {
    map: memmap2::Mmap,
    _guard: Registration,
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl MappedFile {
    /// Maps `path` read-only and registers the mapping with the guard.
    pub fn open(path: &Path) -> Result<Arc<MappedFile>> {
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        // Not MAP_POPULATE: an adapter load's finiteness scan reads every factor right away anyway, and
        // its page faults (each mapping a fault-around window of pages) measured cheaper than populating
        // page by page; a model's weights are faulted in by the first forward pass.
        // SAFETY: the file is opened read-only and the map is only ever read; as for every memory-mapped
        // file, edge-run requires that mapped files are not modified while in use (a shrinking file
        // raises SIGBUS, which the guard below names).
        let map = unsafe { memmap2::MmapOptions::new().map(&f) }.map_err(io)?;
        let _guard = register(&map, path);
        Ok(Arc::new(MappedFile { map, _guard }))
    }
}

/// Mappings that can be named at once.
pub const SLOTS: usize = 64;

struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    name: AtomicPtr::new(std::ptr::null_mut()),
    name_len: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// A mapping's entry in the table; removed on drop.
#[derive(Debug)]
struct Registration {
    slot: Option<usize>,
}

/// Records that `bytes` are the mapped contents of `path`, so that a fault in them can name the file.
fn register(bytes: &[u8], path: &Path) -> Registration {
    let name: Box<[u8]> = path.to_string_lossy().as_bytes().into();
    for (i, s) in TABLE.iter().enumerate() {
        if s.used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let len = name.len();
            let ptr = Box::into_raw(name) as *mut u8;
            s.name_len.store(len, Ordering::Relaxed);
            s.name.store(ptr, Ordering::Release);
            s.start.store(bytes.as_ptr() as usize, Ordering::Relaxed);
            s.len.store(bytes.len(), Ordering::Release);
            return Registration { slot: Some(i) };
        }
    }
    Registration { slot: None }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        let s = &TABLE[i];
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Relaxed);
        let len = s.name_len.swap(0, Ordering::Relaxed);
        let ptr = s.name.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !ptr.is_null() {
            // SAFETY: `ptr`/`len` came from `Box::into_raw` of a `Box<[u8]>` of that length in
            // `register`, and the swap above took them out of the table, so they are freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
        s.used.store(false, Ordering::Release);
    }
}

/// The registered file containing `addr` and the offset of `addr` in it.
fn lookup(addr: usize) -> Option<(&'static [u8], usize)> {
    for s in TABLE.iter() {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Relaxed);
        if len != 0 && addr >= start && addr - start < len {
            let p = s.name.load(Ordering::Acquire);
            let n = s.name_len.load(Ordering::Relaxed);
            if p.is_null() {
                return None;
            }
            // SAFETY: a non-null name pointer in a used slot points at `n` live bytes (freed only after
            // the slot's range is cleared, by `Registration::drop`).
            return Some((unsafe { std::slice::from_raw_parts(p, n) }, addr - start));
        }
    }
    None
}

/// Installs the `SIGBUS` handler described in the module docs (idempotent). Returns whether a handler is
/// in place (always false on non-Unix targets).
pub fn install_guard() -> bool {
    #[cfg(unix)]
    {
        static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DONE.get_or_init(unix::install)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(unix)]
mod unix {
    use super::lookup;

    pub(super) fn install() -> bool {
        // SAFETY: a zeroed `sigaction` is a valid starting value; we set the handler, SA_SIGINFO (so the
        // handler gets the faulting address) and an empty mask, then install it for SIGBUS only.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) == 0
        }
    }

    fn write_all(b: &[u8]) {
        let mut b = b;
        while !b.is_empty() {
            // SAFETY: writes `b.len()` bytes from a live slice to stderr; write(2) is async-signal-safe.
            let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
            if n <= 0 {
                return;
            }
            b = &b[n as usize..];
        }
    }

    /// Decimal digits of `v` into `buf`, without allocating.
    fn itoa(mut v: usize, buf: &mut [u8; 20]) -> &[u8] {
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                return &buf[i..];
            }
        }
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; si_addr is the faulting
        // address for SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        match lookup(addr) {
            Some((name, off)) => {
                let mut buf = [0u8; 20];
                write_all(b"edge-run: error: ");
                write_all(name);
                write_all(b": the memory-mapped file shrank while in use (bus error reading byte ");
                write_all(itoa(off, &mut buf));
                write_all(b"); replace model and adapter files by renaming a new file over them, never in place\n");
                // SAFETY: _exit is async-signal-safe and ends the process without running anything else.
                unsafe { libc::_exit(1) };
            }
            None => {
                // Not ours: restore the default action and return, so that the fault repeats and ends the
                // process as it would have without this handler.
                // SAFETY: signal(2) with SIG_DFL for the signal being handled.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
    }

    #[cfg(test)]
    #[test]
    fn itoa_digits() {
        let mut b = [0u8; 20];
        assert_eq!(itoa(0, &mut b), b"0");
        assert_eq!(itoa(4096, &mut b), b"4096");
        assert_eq!(itoa(usize::MAX, &mut b), usize::MAX.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_names_the_registered_range_until_dropped() {
        let data = [7u8; 100];
        let r = register(&data[10..60], Path::new("/models/a.gguf"));
        let base = data.as_ptr() as usize;
        assert_eq!(lookup(base + 10), Some((&b"/models/a.gguf"[..], 0)));
        assert_eq!(lookup(base + 59), Some((&b"/models/a.gguf"[..], 49)));
        assert_eq!(lookup(base + 60), None);
        assert_eq!(lookup(base + 9), None);
        drop(r);
        assert_eq!(lookup(base + 10), None);
    }
}
