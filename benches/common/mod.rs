//! Shared by the criterion benches: a short criterion configuration, a recorder of each benchmark's
//! fastest stretch of calls, and the roofline summary printed (and written next to criterion's reports) at the
//! end of a `cargo bench` run.
#![allow(dead_code)]
use criterion::Criterion;
// The binary's memory roofline (not part of the runtime library), compiled into the benches (its unit
// tests' imports are unused where the bench harness leaves `#[test]` functions out).
#[allow(dead_code, unused_imports)]
#[path = "../../src/bin/edge-run/tools/bench/roofline.rs"]
pub mod roofline;

use roofline::{cache_sizes, Probe, Roofline};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Short warm-up and measurement: each benchmark takes about 1.5 s. Flags given after `--` override
/// it (`--quick`, `--measurement-time 3`, `--sample-size 20`, a name filter, …).
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .noise_threshold(0.05)
        .without_plots()
        .configure_from_args()
}

/// Prints the kernel tiers this CPU runs, `{what} on this CPU: [names…]` (stderr).
pub fn print_tiers<'a>(what: &str, names: impl IntoIterator<Item = &'a str>) {
    eprintln!(
        "{what} on this CPU: {:?}",
        names.into_iter().collect::<Vec<_>>()
    );
}

/// Whether criterion was started to measure (`cargo bench`), not to test (`cargo test --benches`) or to
/// list: the roofline summary is only worth its seconds then.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    has("--bench")
        && !has("--test")
        && !has("--list")
        && !args.iter().any(|a| a.starts_with("--profile-time"))
}

/// One benchmark: kernel family and case (e.g. `matvec_q4_1`, `576x1536`), tier, bytes counted per
/// call (criterion's throughput) and the bytes of memory the call reads from (the size of the
/// roofline probe it is compared with; smaller than `bytes` for a batch call that reuses its weights).
#[derive(Clone, Debug)]
pub struct Rec {
    pub group: String,
    pub case: String,
    pub tier: &'static str,
    pub bytes: usize,
    pub working_set: usize,
    /// Multiply-adds per call, for a batched product (see [`timed_macs`]).
    pub macs: Option<u64>,
    /// Fastest time per call, seconds (see [`timed`]).
    pub best: f64,
}

static RECS: Mutex<BTreeMap<(String, String, &'static str), Rec>> = Mutex::new(BTreeMap::new());

/// Shortest stretch of calls timed as one measurement for the fastest-sample record: far above the
/// timer's cost, far below a scheduler time slice.
const MIN_STRETCH: Duration = Duration::from_micros(20);

/// Runs `iters` calls for criterion's `iter_custom` and returns their total time. Each call is
/// `f(0), f(1), …, f(n_chunks − 1)` (a call split into equal parts, e.g. row ranges of one matvec);
/// the parts are timed in stretches of at least 20 µs, and the fastest part (× `n_chunks`) is recorded
/// as this benchmark's best time per call if it beats the previous best. Short stretches keep a
/// descheduled moment out of the record on a busy machine, as the roofline probe's 16 MiB repetitions
/// do.
pub fn timed(
    ids: (&str, &str, &'static str),
    sizes: (usize, usize),
    iters: u64,
    n_chunks: usize,
    f: impl FnMut(usize),
) -> Duration {
    timed_macs(ids, sizes, None, iters, n_chunks, f)
}

/// [`timed`] for a call that also counts `macs` multiply-adds (a batched product): the summary
/// prints its GMAC/s and its speed-up over the same group's `<tier>-per-token` record.
pub fn timed_macs(
    (group, case, tier): (&str, &str, &'static str),
    (bytes, working_set): (usize, usize),
    macs: Option<u64>,
    iters: u64,
    n_chunks: usize,
    mut f: impl FnMut(usize),
) -> Duration {
    let n_chunks = n_chunks.max(1);
    let total = iters.max(1) as usize * n_chunks;
    let (mut done, mut batch) = (0usize, 1usize);
    let mut best = f64::INFINITY;
    let mut fallback = f64::INFINITY;
    let t_all = Instant::now();
    while done < total {
        let k = batch.min(total - done);
        let t = Instant::now();
        for c in done..done + k {
            f(c % n_chunks);
        }
        let e = t.elapsed();
        let per = e.as_secs_f64() / k as f64;
        if e >= MIN_STRETCH {
            best = best.min(per);
        } else {
            fallback = fallback.min(per);
            batch *= 2;
        }
        done += k;
    }
    let d = t_all.elapsed();
    if !best.is_finite() {
        // Too few calls to fill one stretch (criterion's test mode, or its first warm-up round).
        best = fallback;
    }
    let per_call = best * n_chunks as f64;
    let mut m = RECS.lock().unwrap_or_else(|e| e.into_inner());
    let r = m
        .entry((group.to_string(), case.to_string(), tier))
        .or_insert_with(|| Rec {
            group: group.to_string(),
            case: case.to_string(),
            tier,
            bytes,
            working_set,
            macs,
            best: f64::INFINITY,
        });
    r.best = r.best.min(per_call);
    d
}

/// The directory criterion writes to: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`, or
/// `criterion/` in the target directory this bench binary was built in.
pub fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    // target/<profile>/deps/<bench binary>
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(|p| p.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Measures the roofline (1 thread: DRAM, L2, and a buffer the size of each benchmark's bytes), prints
/// every recorded benchmark's GB/s, its share of the same-size probe and of DRAM, and its speed-up over
/// the scalar tier, and writes the same text to `<criterion dir>/roofline-<name>.txt`.
pub fn summary(name: &str) {
    let recs: Vec<Rec> = RECS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    if recs.is_empty() || !measuring() {
        return;
    }
    eprintln!("measuring the memory roofline (1 thread) ...");
    let mut sizes: Vec<usize> = recs.iter().map(|r| r.working_set).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let time = Duration::from_millis(150);
    let roof = Roofline::measure(1, &[], Duration::from_millis(300));
    let probes: BTreeMap<usize, Probe> =
        sizes.iter().map(|&b| (b, Probe::run(b, 1, time))).collect();
    let cs = cache_sizes();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut s =
        format!("# {name}: weight bytes read per second, one thread (fastest 20 µs+ stretch of calls or row chunks)\n");
    s += &format!(
        "# caches: L2 {} / LLC {}\n",
        cs.l2.map_or("?".into(), |b| format!("{:.1} MiB", mib(b))),
        cs.llc.map_or("?".into(), |b| format!("{:.1} MiB", mib(b)))
    );
    s += &format!("# roofline measured in this run:\n{}", roof.describe());
    s += "# probe = a read-only stream over a buffer the size of the memory the kernel reads (same run, 1 thread)\n";
    s += "# batched products (matmul*): GMAC/s, and the speed-up over the same tier's per-token fallback\n";
    s += &format!(
        "{:<14} {:<16} {:<22} {:>9} {:>9} {:>10} {:>8} {:>8} {:>10} {:>8} {:>10}\n",
        "kernel",
        "case",
        "tier",
        "probe KiB",
        "GB/s",
        "probe GB/s",
        "%probe",
        "%DRAM",
        "x scalar",
        "GMAC/s",
        "x per-tok"
    );
    for r in &recs {
        let gbs = r.bytes as f64 / r.best / 1e9;
        let probe = probes[&r.working_set].gbs;
        let scalar = recs
            .iter()
            .find(|q| q.group == r.group && q.case == r.case && q.tier == "scalar")
            .map(|q| q.best / r.best);
        let per_tok = recs
            .iter()
            .find(|q| {
                q.group == r.group && q.case == r.case && q.tier == format!("{}-per-token", r.tier)
            })
            .map(|q| q.best / r.best);
        s += &format!(
            "{:<14} {:<16} {:<22} {:>9.0} {:>9.2} {:>10.1} {:>7.1}% {:>7.1}% {:>10} {:>8} {:>10}\n",
            r.group,
            r.case,
            r.tier,
            r.working_set as f64 / 1024.0,
            gbs,
            probe,
            100.0 * gbs / probe,
            100.0 * gbs / roof.dram_1t.gbs,
            scalar.map_or("-".into(), |x| format!("{x:.2}")),
            r.macs
                .map_or("-".into(), |m| format!("{:.1}", m as f64 / r.best / 1e9)),
            per_tok.map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    println!("\n{s}");
    let dir = criterion_dir();
    let path = dir.join(format!("roofline-{name}.txt"));
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &s)) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
