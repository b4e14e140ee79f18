//! A persistent worker pool for the forward pass.
//!
//! `run(f)` calls `f(i, n)` on every thread `i` of `n` (the caller is thread 0) and returns when all have
//! finished. Workers spin briefly on a generation counter between jobs, so the ~150 dispatches of one
//! decoded token cost no syscalls, and fall asleep on a condition variable when no work has come for a while.
//! Dispatching allocates nothing.
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job: a borrowed closure with its lifetime erased. Only valid while `ThreadPool::run` is on the stack.
type Job = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Bumped once per job; workers start the job when they see it change.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    quit: AtomicBool,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread in `run` while no worker reads it (all workers are idle:
// `pending` is 0 and the generation has not been bumped yet), and read by workers only after they observe
// the new generation (Acquire, pairing with the Release bump). The pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
}

/// Spin iterations before a worker goes to sleep (roughly 50–200 µs).
const SPIN_LIMIT: u32 = 1 << 14;

impl ThreadPool {
    /// A pool of `n_threads` (≥ 1) threads including the caller's.
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            quit: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for i in 1..n_threads {
            let s = shared.clone();
            let h = std::thread::Builder::new().name(format!("edge-run-{i}")).spawn(move || worker(s, i, n_threads))?;
            workers.push(h);
        }
        Ok(ThreadPool { shared, workers, n_threads })
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Run `f(thread_index, n_threads)` on every thread of the pool; returns when all calls have returned.
    /// A panic in a worker is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.n_threads == 1 {
            f(0, 1);
            return;
        }
        let s = &*self.shared;
        debug_assert_eq!(s.pending.load(Ordering::Acquire), 0);
        // SAFETY: erase the closure's lifetime; it outlives every use because this function does not return
        // until `pending` reaches 0, i.e. until every worker has finished calling it.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(f) };
        // SAFETY: no worker reads `job` now: all are idle (pending == 0) and wait for a new generation.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.n_threads - 1, Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::Release);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        f(0, self.n_threads);
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread panicked");
        }
    }
}

fn worker(s: Arc<Shared>, index: usize, n: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin, then sleep.
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.quit.load(Ordering::Acquire) {
                return;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.generation.load(Ordering::SeqCst) == seen && !s.quit.load(Ordering::SeqCst) {
                let _g = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        }
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the generation bump (Release) happened after `job` was written; we loaded it with Acquire.
        // `run` keeps the closure alive until we decrement `pending` below.
        let job = unsafe { (*s.job.get()).expect("job set before generation bump") };
        // SAFETY: see above: the pointee is alive and `Sync`.
        let f = unsafe { &*job };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index, n))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// The part of `0..n` that thread `i` of `nt` takes, in whole multiples of `grain` (the last part takes the rest).
pub fn split(n: usize, i: usize, nt: usize, grain: usize) -> std::ops::Range<usize> {
    let grain = grain.max(1);
    let units = n.div_ceil(grain);
    let per = units / nt;
    let extra = units % nt;
    let start_u = i * per + i.min(extra);
    let end_u = start_u + per + usize::from(i < extra);
    (start_u * grain).min(n)..(end_u * grain).min(n)
}

/// A mutable slice shared by the threads of one `ThreadPool::run`, each writing its own disjoint range.
pub struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _m: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through `range`, whose contract requires disjoint ranges across threads.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        Disjoint { ptr: s.as_mut_ptr(), len: s.len(), _m: std::marker::PhantomData }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The sub-slice `r`.
    ///
    /// # Safety
    /// No two live results (on any threads) may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "Disjoint::range out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in [0usize, 1, 5, 64, 100, 577] {
            for nt in 1..5 {
                for grain in [1usize, 4, 16] {
                    let mut covered = vec![0u8; n];
                    for i in 0..nt {
                        for j in split(n, i, nt, grain) {
                            covered[j] += 1;
                        }
                    }
                    assert!(covered.iter().all(|&c| c == 1), "n={n} nt={nt} grain={grain}");
                }
            }
        }
    }

    #[test]
    fn every_thread_runs_every_job() {
        let pool = ThreadPool::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        // Let the workers fall asleep, then make sure they wake up.
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.run(&|i, _| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 1001);
        }
    }

    #[test]
    fn disjoint_writes_from_threads() {
        let pool = ThreadPool::new(2).unwrap();
        let mut v = vec![0u32; 1000];
        let d = Disjoint::new(&mut v);
        pool.run(&|i, n| {
            let r = split(1000, i, n, 16);
            // SAFETY: `split` gives disjoint ranges to the threads of one run.
            let s = unsafe { d.range(r.clone()) };
            for (k, x) in s.iter_mut().enumerate() {
                *x = (r.start + k) as u32;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }
}
