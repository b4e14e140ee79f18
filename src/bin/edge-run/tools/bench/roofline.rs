//! The memory roofline: how fast this machine streams bytes, measured in this process ([`Roofline`],
//! built from [`read_bandwidth`] probes), and the data-cache sizes that choose the probes' working sets.
//! Used by `edge-run bench` and by the criterion kernel benches (`benches/common`), which include this
//! file on its own.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// Wrapping sum of `buf`. Integer addition is associative, so the compiler vectorizes this reduction
/// with several vector accumulators of the widest enabled width (the loop is bound by loads, not adds).
#[inline(always)]
fn sum_lanes(buf: &[u64]) -> u64 {
    buf.iter().fold(0u64, |s, &x| s.wrapping_add(x))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_avx512(buf: &[u64]) -> u64 {
    sum_lanes(buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(buf: &[u64]) -> u64 {
    sum_lanes(buf)
}

/// One read pass over `buf` with the widest loads this CPU has (as the widest kernel tier would).
#[inline(never)]
fn read_pass(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: `sum_avx512` only needs AVX-512F, which was just detected on this CPU.
            return unsafe { sum_avx512(buf) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: `sum_avx2` only needs AVX2, which was just detected on this CPU.
            return unsafe { sum_avx2(buf) };
        }
    }
    sum_lanes(buf)
}

/// Bytes all threads together read in one timed repetition of [`read_bandwidth`]: long enough to dwarf
/// timer and thread wake-up costs, short enough to fit in one scheduler time slice on a busy machine.
const REP_BYTES: usize = 16 << 20;

/// Read bandwidth in GB/s (10⁹ bytes per second) of `threads` threads each streaming its share of a
/// `bytes`-byte buffer (rounded up to whole pieces per thread).
///
/// The buffer is read cyclically in repetitions of about 16 MiB (all threads together; a buffer smaller
/// than that is read several times per repetition), each thread reading the next piece of its own share,
/// so between two reads of the same byte the whole buffer was read: the cache sees what decode's
/// cyclic stream over the weights does. Repetitions run for at least `min_time` (and at least 3, and
/// at least one full cycle); the fastest is reported (the machine may be shared, and a descheduled
/// repetition says nothing about the memory system). The calling thread is one of the `threads`. Every
/// page is written and then read once before timing, so page faults are not measured.
pub fn read_bandwidth(bytes: usize, threads: usize, min_time: Duration) -> f64 {
    let threads = threads.max(1);
    let want = bytes.div_ceil(threads).div_ceil(64).max(1) * 8; // u64s per thread, whole lines
    let piece = want.min((REP_BYTES / threads / 64).max(1) * 8); // u64s per thread and repetition
    let n_pieces = want.div_ceil(piece);
    let per_thread = n_pieces * piece;
    let passes = if n_pieces == 1 {
        REP_BYTES.div_ceil(piece * 8 * threads)
    } else {
        1
    };
    let buf: Vec<u64> = (0..per_thread * threads)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let rep_bytes = (piece * 8 * threads * passes) as f64;
    let min_reps = n_pieces.max(3);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads);
    let mut chunks = buf.chunks(per_thread);
    let mine = chunks.next().unwrap_or(&[]);
    // Repetition `k` of one thread: piece `k mod n_pieces` of its share, `passes` times.
    let work = |c: &[u64], k: usize| {
        let p = &c[(k % n_pieces) * piece..][..piece];
        let mut s = 0u64;
        for _ in 0..passes {
            s = s.wrapping_add(read_pass(std::hint::black_box(p)));
        }
        std::hint::black_box(s);
    };
    let mut best = f64::INFINITY;
    std::thread::scope(|sc| {
        for c in chunks {
            let (stop, barrier, work) = (&stop, &barrier, &work);
            sc.spawn(move || {
                std::hint::black_box(read_pass(c)); // warm-up: steady cache state
                let mut k = 0;
                loop {
                    barrier.wait();
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    work(c, k);
                    barrier.wait();
                    k += 1;
                }
            });
        }
        std::hint::black_box(read_pass(mine));
        let start = Instant::now();
        let mut k = 0;
        loop {
            let done = k >= min_reps && start.elapsed() >= min_time;
            stop.store(done, Ordering::Relaxed);
            barrier.wait(); // releases the workers (the barrier orders the store before their load)
            if done {
                break;
            }
            let t = Instant::now();
            work(mine, k);
            barrier.wait(); // every thread has finished this repetition
            best = best.min(t.elapsed().as_secs_f64());
            k += 1;
        }
    });
    rep_bytes / best / 1e9
}

/// Data-cache sizes of CPU 0 from sysfs (Linux); `None` where unknown.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheSizes {
    /// Unified L2 per core, bytes.
    pub l2: Option<usize>,
    /// Last-level cache (the highest level found), bytes.
    pub llc: Option<usize>,
}

/// Reads `/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}`.
pub fn cache_sizes() -> CacheSizes {
    let mut c = CacheSizes::default();
    let mut llc_level = 0;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        let (Some(level), Some(ty), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let (Ok(level), Some(size)) = (level.trim().parse::<u32>(), parse_size(size.trim())) else {
            continue;
        };
        if ty.trim() == "Instruction" {
            continue;
        }
        if level == 2 {
            c.l2 = Some(size);
        }
        if level >= 2 && level > llc_level {
            llc_level = level;
            c.llc = Some(size);
        }
    }
    c
}

/// `"2048K"`, `"32M"`, `"512"` → bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (num, mul) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1usize << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mul)
}

/// One bandwidth measurement.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Buffer size, bytes (all threads together).
    pub bytes: usize,
    pub threads: usize,
    /// GB/s (10⁹ bytes per second).
    pub gbs: f64,
}

impl Probe {
    pub fn run(bytes: usize, threads: usize, min_time: Duration) -> Probe {
        Probe {
            bytes,
            threads,
            gbs: read_bandwidth(bytes, threads, min_time),
        }
    }
}

/// Memory roofline of this machine, measured in this process.
#[derive(Clone, Debug)]
pub struct Roofline {
    /// Threads of the N-thread probes.
    pub threads: usize,
    /// Streaming from DRAM (buffer ≥ 8× the last-level cache, at least 128 MiB), 1 thread.
    pub dram_1t: Probe,
    /// The same with `threads` threads.
    pub dram_nt: Probe,
    /// A buffer of half of each core's L2 per thread (256 KiB per thread if unknown), 1 thread.
    pub cache_1t: Probe,
    /// The same with `threads` threads.
    pub cache_nt: Probe,
    /// Buffers of the given working-set sizes (e.g. a model's bytes per token) with `threads` threads:
    /// what decode can reach when it streams that many bytes per token. Empty if none was asked for.
    pub working_sets: Vec<Probe>,
}

/// Time each probe of a [`Roofline`] runs for by default.
pub const PROBE_TIME: Duration = Duration::from_millis(250);

/// Smallest working-set probe (smaller buffers measure thread wake-up rather than memory).
pub const MIN_WORKING_SET: usize = 64 << 10;

impl Roofline {
    /// DRAM and L2 probes with 1 and `threads` threads, plus one `threads`-thread probe per entry of
    /// `working_sets` (bytes; raised to [`MIN_WORKING_SET`]), each running for `min_time`.
    pub fn measure(threads: usize, working_sets: &[usize], min_time: Duration) -> Roofline {
        let threads = threads.max(1);
        let cs = cache_sizes();
        let dram = cs.llc.map_or(0, |l| l.saturating_mul(8)).max(128 << 20);
        let cache_per_thread = cs.l2.map_or(256 << 10, |l| l / 2).max(16 << 10);
        let dram_1t = Probe::run(dram, 1, min_time);
        let dram_nt = if threads > 1 {
            Probe::run(dram, threads, min_time)
        } else {
            dram_1t
        };
        let cache_1t = Probe::run(cache_per_thread, 1, min_time);
        let cache_nt = if threads > 1 {
            Probe::run(cache_per_thread * threads, threads, min_time)
        } else {
            cache_1t
        };
        let working_sets = working_sets
            .iter()
            .map(|&b| Probe::run(b.max(MIN_WORKING_SET), threads, min_time))
            .collect();
        Roofline {
            threads,
            dram_1t,
            dram_nt,
            cache_1t,
            cache_nt,
            working_sets,
        }
    }

    /// The decode roofline for `bytes` read per token: the working-set probe closest in size, or the
    /// N-thread DRAM probe if there is none.
    pub fn for_bytes(&self, bytes: usize) -> Probe {
        let bytes = bytes.max(MIN_WORKING_SET) as f64;
        self.working_sets
            .iter()
            .min_by(|a, b| {
                let d = |p: &Probe| (p.bytes as f64 / bytes).ln().abs();
                d(a).total_cmp(&d(b))
            })
            .copied()
            .unwrap_or(self.dram_nt)
    }

    /// One line per probe.
    pub fn describe(&self) -> String {
        let line = |what: &str, p: &Probe| {
            format!(
                "  {what:<22} {:>9.1} MiB, {} thread(s): {:>7.1} GB/s\n",
                p.bytes as f64 / MIB,
                p.threads,
                p.gbs
            )
        };
        let mut s = line("DRAM (streaming)", &self.dram_1t);
        if self.threads > 1 {
            s += &line("DRAM (streaming)", &self.dram_nt);
        }
        s += &line("L2 (cache-resident)", &self.cache_1t);
        if self.threads > 1 {
            s += &line("L2 (cache-resident)", &self.cache_nt);
        }
        for p in &self.working_sets {
            s += &line("bytes of one token", p);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn read_pass_sums_every_element() {
        // Lengths around vector and unroll widths, so the remainder paths are covered.
        for n in [0usize, 1, 31, 32, 33, 100, 1000] {
            let v: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
            let want = (0..n as u64).fold(0u64, |s, i| s.wrapping_add(i * 3 + 1));
            assert_eq!(read_pass(&v), want, "n = {n}");
            assert_eq!(sum_lanes(&v), want, "n = {n}");
        }
        let v = vec![u64::MAX; 70];
        assert_eq!(read_pass(&v), 0u64.wrapping_sub(70));
    }

    #[test]
    fn bandwidth_is_positive_and_finite() {
        for threads in [1, 2] {
            let g = read_bandwidth(1 << 20, threads, Duration::from_millis(20));
            assert!(g.is_finite() && g > 0.1, "{threads} thread(s): {g} GB/s");
        }
    }

    #[test]
    fn roofline_picks_the_closest_working_set() {
        let p = |bytes, gbs| Probe {
            bytes,
            threads: 2,
            gbs,
        };
        let r = Roofline {
            threads: 2,
            dram_1t: p(1 << 28, 10.0),
            dram_nt: p(1 << 28, 15.0),
            cache_1t: p(1 << 20, 100.0),
            cache_nt: p(2 << 20, 200.0),
            working_sets: vec![p(100 << 20, 20.0), p(1 << 20, 90.0)],
        };
        assert_eq!(r.for_bytes(95 << 20).gbs, 20.0);
        assert_eq!(r.for_bytes(2 << 20).gbs, 90.0);
        assert_eq!(r.for_bytes(1).gbs, 90.0);
        let none = Roofline {
            working_sets: Vec::new(),
            ..r
        };
        assert_eq!(none.for_bytes(5 << 20).gbs, 15.0);
    }
}
