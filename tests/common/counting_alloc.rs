//! A global allocator that forwards every call to the system allocator and counts:
//! - the allocations (`alloc`, `alloc_zeroed`, `realloc`) of every thread while
//!   [`count_allocations`] runs;
//! - the heap bytes one thread holds, current and peak, while [`peak_heap`] runs on it.
//!
//! A test binary installs it with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` and
//! `#[global_allocator] static ALLOC: counting_alloc::Counting = counting_alloc::Counting;`.
#![allow(dead_code)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static CUR: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// One allocation (or reallocation) of `delta` bytes (negative: freed).
fn note(delta: isize, is_alloc: bool) {
    if is_alloc && COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    // `try_with`: during thread teardown the slots may be gone; then nothing is tracked.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = CUR.try_with(|c| {
                let v = c.get() + delta;
                c.set(v);
                let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
            });
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged and only
// adds bookkeeping in atomics and const-initialised thread-locals (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note(l.size() as isize, true);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note(l.size() as isize, true);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l` (we never hand out anything else).
        unsafe { System.dealloc(p, l) };
        note(-(l.size() as isize), false);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` was allocated by `System` with layout `l`; same contract as ours.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            note(new as isize - l.size() as isize, true);
        }
        q
    }
}

/// Runs `f` and returns its result and the number of heap allocations made meanwhile by every thread.
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (r, ALLOCS.load(Ordering::SeqCst))
}

/// Runs `f` and returns its result and the peak heap bytes this thread held above the level at the
/// start (allocations of other threads are not counted).
pub fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    CUR.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()).max(0) as usize)
}
