//! A persistent worker pool for the forward pass.
//!
//! `run(n, f)` calls `f(thread, chunk)` once for every chunk `0..n`; the chunks are taken dynamically from an
//! atomic counter by the caller (thread 0) and the workers, so a worker the OS has descheduled holds up at
//! most the one chunk it is working on, and one that has not woken yet holds up nothing: the others take
//! its share. Workers spin briefly on a generation counter between jobs, so the ~150 dispatches of one
//! decoded token cost no syscalls, and fall asleep on a condition variable when no work has come for a
//! while. Dispatching allocates nothing.
//!
//! `new` returns only once every worker thread has started and is waiting for work: a starting thread
//! allocates (std's per-thread setup), and that must not land inside a caller's first job.
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job: a borrowed closure with its lifetime erased. Only valid while `ThreadPool::run` is on the stack.
type Job = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Bumped once per job; workers look at the job when they see it change.
    generation: AtomicUsize,
    /// The generation whose job may be worked on now; 0 once `run` has closed it.
    open: AtomicUsize,
    /// Workers between "saw a generation" and "done with it" (see `worker`).
    active: AtomicUsize,
    /// Chunks of the current job, the next one to take, and how many are finished.
    n_chunks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    quit: AtomicBool,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Workers that have started and are about to wait for their first job (the start barrier).
    started: Mutex<usize>,
    all_started: Condvar,
}

// SAFETY: `job` is written only by `run` while no worker can read it: before the generation that publishes
// it is opened, and only after every worker of the previous job has left (`active` == 0 after closing).
// Workers read it only after registering in `active` and seeing their generation still open (SeqCst on
// both sides makes "open, then read" and "close, then check active" mutually ordered). The pointee is `Sync`.
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
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            n_chunks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            quit: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            started: Mutex::new(0),
            all_started: Condvar::new(),
        });
        // Built first so that, if a spawn fails, dropping it stops and joins the workers already running.
        let mut pool = ThreadPool {
            shared,
            workers: Vec::with_capacity(n_threads - 1),
            n_threads,
        };
        for i in 1..n_threads {
            let s = pool.shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("edge-run-{i}"))
                .spawn(move || worker(s, i))?;
            pool.workers.push(h);
        }
        // The start barrier: wait until every worker has checked in.
        let s = &*pool.shared;
        let mut started = s.started.lock().unwrap_or_else(|e| e.into_inner());
        while *started < n_threads - 1 {
            started = s
                .all_started
                .wait(started)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(started);
        Ok(pool)
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Call `f(thread_index, chunk)` for every chunk in `0..n_chunks`, spread over the pool's threads;
    /// returns when all calls have returned. A panic in a worker is re-raised here.
    pub fn run(&self, n_chunks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.n_threads == 1 || n_chunks <= 1 {
            for c in 0..n_chunks {
                f(0, c);
            }
            return;
        }
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime; no worker touches it after this function returns (it closes
        // the job and waits for `active` to drain first).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(f) };
        // SAFETY: no worker reads `job` now: the previous job was closed and drained, this one not opened.
        unsafe { *s.job.get() = Some(job) };
        s.n_chunks.store(n_chunks, SeqCst);
        s.next.store(0, SeqCst);
        s.done.store(0, SeqCst);
        let g = s.generation.load(SeqCst).wrapping_add(1).max(1);
        s.open.store(g, SeqCst);
        s.generation.store(g, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        loop {
            let c = s.next.fetch_add(1, SeqCst);
            if c >= n_chunks {
                break;
            }
            f(0, c);
            s.done.fetch_add(1, SeqCst);
        }
        // Chunks taken by workers may still be running.
        wait_until(|| s.done.load(SeqCst) >= n_chunks);
        s.open.store(0, SeqCst);
        wait_until(|| s.active.load(SeqCst) == 0);
        if s.panicked.swap(false, SeqCst) {
            panic!("a worker thread panicked");
        }
    }
}

fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(256) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn worker(s: Arc<Shared>, index: usize) {
    // Check in at the start barrier: std's thread setup (which allocates) is behind us.
    {
        let mut started = s.started.lock().unwrap_or_else(|e| e.into_inner());
        *started += 1;
        s.all_started.notify_all();
    }
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin, then sleep.
        let mut spins = 0u32;
        let g = loop {
            let g = s.generation.load(SeqCst);
            if g != seen {
                break g;
            }
            if s.quit.load(SeqCst) {
                return;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            if s.generation.load(SeqCst) == seen && !s.quit.load(SeqCst) {
                let _g = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
            spins = 0;
        };
        seen = g;
        s.active.fetch_add(1, SeqCst);
        if s.open.load(SeqCst) == g {
            // SAFETY: generation `g` is open and we are registered in `active`, so `run` has not returned
            // and the job it published for `g` (written before opening) is alive.
            let job = unsafe { (*s.job.get()).expect("job set before opening") };
            // SAFETY: see above: the pointee is alive and `Sync`.
            let f = unsafe { &*job };
            let n = s.n_chunks.load(SeqCst);
            loop {
                let c = s.next.fetch_add(1, SeqCst);
                if c >= n {
                    break;
                }
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index, c))).is_err() {
                    s.panicked.store(true, SeqCst);
                }
                s.done.fetch_add(1, SeqCst);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
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
        Disjoint {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _m: std::marker::PhantomData,
        }
    }
    /// The sub-slice `r`.
    ///
    /// # Safety
    /// No two live results (on any threads) may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "Disjoint::range out of bounds"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let pool = ThreadPool::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        let by_thread: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..2000 {
            let n = 1 + round % 64;
            pool.run(n, &|t, c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
                by_thread[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        // Let the workers fall asleep, then make sure a job still completes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.run(64, &|_, c| {
            hits[c].fetch_add(1, Ordering::Relaxed);
        });
        let expect = |c: usize| (0..2000).filter(|r| c < 1 + r % 64).count() + 1;
        for (c, h) in hits.iter().enumerate() {
            assert_eq!(h.load(Ordering::Relaxed), expect(c), "chunk {c}");
        }
        assert!(by_thread[0].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn new_returns_once_every_worker_has_started() {
        for n in [1, 2, 3, 6] {
            let pool = ThreadPool::new(n).unwrap();
            let started = *pool.shared.started.lock().unwrap();
            assert_eq!(
                started,
                n - 1,
                "{n} threads: new returned before every worker had started"
            );
            assert_eq!(pool.workers.len(), n - 1);
        }
    }

    #[test]
    fn a_busy_machine_does_not_stall_the_caller() {
        // More pool threads than cores: workers get descheduled, the caller takes their chunks.
        let pool = ThreadPool::new(6).unwrap();
        let total = AtomicUsize::new(0);
        for _ in 0..500 {
            pool.run(8, &|_, c| {
                total.fetch_add(c, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 500 * 28);
    }

    #[test]
    fn disjoint_writes_from_threads() {
        let pool = ThreadPool::new(2).unwrap();
        let mut v = vec![0u32; 1000];
        let d = Disjoint::new(&mut v);
        pool.run(63, &|_, c| {
            let r = (c * 16).min(1000)..((c + 1) * 16).min(1000);
            // SAFETY: each chunk index is handed out once, and chunks map to disjoint ranges.
            let s = unsafe { d.range(r.clone()) };
            for (k, x) in s.iter_mut().enumerate() {
                *x = (r.start + k) as u32;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }
}
