//! Benchmarking: the `edge-run bench` workload (llama-bench's pp/tg, with and without adapters, against a
//! second model file) and a memory-bandwidth roofline measured in the same process, shared with the
//! criterion kernel benches (`benches/`, which include [`roofline`] on its own).
//!
//! Decode of a small model is bound by memory bandwidth: every generated token streams all linear
//! weights once (plus the KV cache and the LoRA A/B matrices). [`TokenBytes`] counts those bytes and
//! [`Roofline`] measures how fast this machine can stream them, so that `tg tok/s × bytes/token ÷
//! bandwidth` says how close decode is to the hardware limit.
//!
//! Layout: [`roofline`] holds the probe ([`roofline::read_bandwidth`]: a vectorized read-only reduction
//! over a buffer, 1..N threads, best of several passes); [`Roofline::measure`] runs it on a buffer much larger than the last-level
//! cache (DRAM), one that fits in each core's L2, and one the size of the bytes a token reads (the decode
//! roofline); [`Workload`] + [`run`] are the `edge-run bench` measurement, returning a [`Report`] that
//! renders as a table ([`Report::table`]) and as one JSON object ([`Report::to_json`]).
use edge_run::adapter::{Adapter, LoraKind};
use edge_run::session::{ActQuant, KvType, SessionConfig, SessionMemory};
use edge_run::{Error, Model, Result, Session};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub mod roofline;
use roofline::{Roofline, PROBE_TIME};

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------------
// Bytes read per decoded token.

/// Bytes read from memory to decode one token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenBytes {
    /// Linear weights of every layer and the output head (`Model::bytes_per_token`).
    pub weights: f64,
    /// K and V (in the session's cache types) of every layer at the attended context (capped by the window in sliding-window
    /// layers), averaged over the decoded tokens.
    pub kv: f64,
    /// LoRA A and B of the active adapters (for an embedding adapter: one row of A and all of B).
    pub lora: f64,
}

impl TokenBytes {
    pub fn total(&self) -> f64 {
        self.weights + self.kv + self.lora
    }

    /// Weights and KV cache of `model` for a token at position `context − 1`, which attends to
    /// `context` positions (at most the window in a sliding-window layer).
    pub fn of_model(model: &Model, context: usize, kv_types: (KvType, KvType)) -> TokenBytes {
        let hp = &model.hp;
        let positions: usize = (0..hp.n_layer).map(|l| hp.kv_positions(l, context)).sum();
        let values = positions * hp.kv_dim();
        let kv = (kv_types.0.bytes(values) + kv_types.1.bytes(values)) as f64;
        TokenBytes {
            weights: model.bytes_per_token() as f64,
            kv,
            lora: 0.0,
        }
    }

    /// The mean of [`TokenBytes::of_model`] over the `n_gen` tokens decoded after an `n_prompt`-token
    /// prompt (token `i` attends to `n_prompt + i + 1` positions).
    pub fn decode(
        model: &Model,
        n_prompt: usize,
        n_gen: usize,
        kv_types: (KvType, KvType),
    ) -> TokenBytes {
        let n = n_gen.max(1);
        let kv: f64 = (0..n)
            .map(|i| TokenBytes::of_model(model, n_prompt + i + 1, kv_types).kv)
            .sum();
        TokenBytes {
            kv: kv / n as f64,
            ..TokenBytes::of_model(model, n_prompt + 1, kv_types)
        }
    }

    /// Adds the A/B bytes the given adapters make each token read.
    pub fn with_adapters<'a>(
        mut self,
        adapters: impl IntoIterator<Item = &'a Adapter>,
    ) -> TokenBytes {
        for a in adapters {
            for t in a.tensors() {
                self.lora += 2.0
                    * match t.kind {
                        LoraKind::Linear => (t.a().len() + t.b().len()) as f64,
                        LoraKind::Embedding => (t.rank + t.b().len()) as f64,
                    };
            }
        }
        self
    }
}

/// Percent of the roofline reached: `100 × tok/s × bytes/token ÷ (GB/s × 10⁹)`.
pub fn roofline_pct(tps: f64, bytes_per_token: f64, gbs: f64) -> f64 {
    100.0 * tps * bytes_per_token / (gbs * 1e9)
}

// ---------------------------------------------------------------------------------------------------
// The `edge-run bench` workload.

/// What `edge-run bench` runs: a prompt of `n_prompt` pseudo-random tokens evaluated as one batch (pp),
/// then `n_gen` tokens decoded one at a time (tg, greedy), best of `reps`; first on the base model, then
/// with `adapters`. Threads, kernels and the rest of the session come from a [`SessionConfig`].
#[derive(Clone, Debug)]
pub struct Workload {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub reps: usize,
    /// Adapter files and user scales.
    pub adapters: Vec<(PathBuf, f32)>,
    /// A control vector for every run of the model (not of a compared model).
    pub control_vector: Option<Arc<edge_run::adapter::ControlVector>>,
    /// Seed of the prompt's tokens.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            n_prompt: 128,
            n_gen: 128,
            reps: 3,
            adapters: Vec::new(),
            control_vector: None,
            seed: 1234,
        }
    }
}

impl Workload {
    /// Refuses counts of zero.
    pub fn validate(&self) -> Result<()> {
        if self.n_prompt == 0 || self.n_gen == 0 || self.reps == 0 {
            return Err(Error::invalid(format!(
                "bench: prompt tokens ({}), generated tokens ({}) and repetitions ({}) must all be at least 1",
                self.n_prompt, self.n_gen, self.reps
            )));
        }
        Ok(())
    }

    /// The prompt: `n_prompt` token ids drawn uniformly from `0..n_vocab` (llama-bench also uses random
    /// tokens), the same for every run with the same seed.
    pub fn prompt(&self, n_vocab: usize) -> Vec<u32> {
        let mut rng = edge_run::sampling::Rng::new(self.seed);
        let nv = n_vocab.max(1) as u64;
        (0..self.n_prompt)
            .map(|_| (rng.next_u64() % nv) as u32)
            .collect()
    }

    /// Mean number of positions a decoded token attends to: token `i` of `n_gen` sees `n_prompt + i + 1`.
    pub fn mean_context(&self) -> f64 {
        self.n_prompt as f64 + (self.n_gen as f64 + 1.0) / 2.0
    }

    /// `base` with a context and batch large enough for the workload.
    pub fn session_config(&self, base: &SessionConfig) -> SessionConfig {
        let mut c = base.clone();
        c.n_ctx = c.n_ctx.max(self.n_prompt + self.n_gen);
        c.n_batch = c.n_batch.max(self.n_prompt);
        c
    }
}

/// Prompt and decode speed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Speed {
    /// Prompt tokens per second (one batch of `n_prompt`).
    pub pp_tps: f64,
    /// Decoded tokens per second.
    pub tg_tps: f64,
}

/// Best-of-`reps` pp and tg of `sess` with its current adapters (the session is reset before each).
pub fn measure_speed(
    sess: &mut Session,
    prompt: &[u32],
    n_gen: usize,
    reps: usize,
) -> Result<Speed> {
    let mut s = Speed::default();
    for _ in 0..reps.max(1) {
        sess.reset();
        let t0 = Instant::now();
        sess.eval(prompt)?;
        s.pp_tps = s
            .pp_tps
            .max(prompt.len() as f64 / t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        for _ in 0..n_gen {
            let t = edge_run::sampling::argmax(sess.logits());
            sess.eval(&[t])?;
        }
        s.tg_tps = s.tg_tps.max(n_gen as f64 / t1.elapsed().as_secs_f64());
    }
    Ok(s)
}

/// The run with adapters.
#[derive(Clone, Debug)]
pub struct LoraResult {
    pub n_adapters: usize,
    pub speed: Speed,
    /// Bytes per token with the adapters (`lora` is their share).
    pub bytes: TokenBytes,
    /// `100 × (base tg ÷ adapter tg − 1)`.
    pub overhead_pct: f64,
    /// Adapter bytes as a percent of the base's bytes per token: the overhead a bandwidth-bound decode
    /// cannot go below.
    pub floor_pct: f64,
    /// Mean load time per adapter.
    pub load_ms: f64,
    /// Mean time to publish a new adapter set.
    pub swap_us: f64,
    /// Decode latency of the tokens right after a swap vs the others, same run.
    pub after_swap: AfterSwap,
}

/// Median decode-token latency right after an adapter swap and for the tokens between swaps.
#[derive(Clone, Copy, Debug, Default)]
pub struct AfterSwap {
    pub swap_token_ms: f64,
    pub steady_token_ms: f64,
}

/// Decodes `n` tokens after the prompt, swapping between the full adapter set and the set without its
/// last adapter (none, for one adapter) through the session's control handle before every fourth
/// token, and returns the median latency of the tokens that directly follow a swap and of the others.
fn first_token_after_swap(
    sess: &mut Session,
    prompt: &[u32],
    set: &[(&Arc<Adapter>, f32)],
    n: usize,
) -> Result<AfterSwap> {
    let ctl = sess.adapter_control();
    sess.set_adapters(set)?;
    sess.reset();
    sess.eval(prompt)?;
    let n = n.max(16);
    let (mut swapped, mut steady) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let swap = i % 4 == 0;
        if swap {
            ctl.set(if i % 8 == 0 {
                &set[..set.len() - 1]
            } else {
                set
            })?;
        }
        let t = edge_run::sampling::argmax(sess.logits());
        let t0 = Instant::now();
        sess.eval(&[t])?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if swap {
            swapped.push(ms)
        } else {
            steady.push(ms)
        }
    }
    sess.set_adapters(set)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(AfterSwap {
        swap_token_ms: median(&mut swapped),
        steady_token_ms: median(&mut steady),
    })
}

/// The same workload on a second model file (e.g. the adapter merged into the base), without adapters.
#[derive(Clone, Debug)]
pub struct CompareResult {
    pub path: String,
    pub speed: Speed,
    pub bytes: TokenBytes,
}

/// Everything `edge-run bench` measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub model: String,
    pub threads: usize,
    pub kernels: &'static str,
    pub act_quant: &'static str,
    /// The KV cache's key and value types.
    pub kv_types: (KvType, KvType),
    pub workload: Workload,
    pub base: Speed,
    /// The base model in the other activation mode (`q8` when the run is `q8x2` and the reverse).
    pub other_mode: (&'static str, Speed),
    pub bytes: TokenBytes,
    pub lora: Option<LoraResult>,
    pub compare: Option<CompareResult>,
    pub roofline: Roofline,
    /// Peak resident set after the runs on the main model, before the comparison model's run and the
    /// roofline probes (which allocate their own buffers), MiB.
    pub rss_mib: f64,
    pub mapped_mib: f64,
    /// The main session's buffers.
    pub memory: SessionMemory,
}

/// Peak resident set size of this process (Linux `VmHWM`), MiB; NaN where unknown.
pub fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs the workload on `model` (base, then with the workload's adapters), then on `compare` if given
/// (no adapters), then measures the roofline; `progress` receives one line per step (for stderr).
/// The adapters and the comparison model are opened first, so a bad path fails before any measuring.
pub fn run(
    model: Arc<Model>,
    cfg: &SessionConfig,
    w: &Workload,
    compare: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    w.validate()?;
    let cfg = w.session_config(cfg);
    let prompt = w.prompt(model.hp.n_vocab);
    let kernels = cfg
        .kernels
        .unwrap_or_else(edge_run::kernels::Kernels::best)
        .tier
        .name();
    let act_quant = act_quant_name(cfg.act_quant);
    progress(&format!(
        "edge-run bench: {} threads, {kernels} kernels, act-quant {act_quant}, KV {}/{}, pp{} + tg{}, best of {}",
        cfg.n_threads, cfg.type_k.name(), cfg.type_v.name(), w.n_prompt, w.n_gen, w.reps
    ));
    let m2 = compare.map(|p| Model::open(p).map(Arc::new)).transpose()?;
    let t0 = Instant::now();
    let loaded = w
        .adapters
        .iter()
        .map(|(p, s)| Ok((Arc::new(Adapter::load(p, &model.base_info)?), *s)))
        .collect::<Result<Vec<_>>>()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3 / loaded.len().max(1) as f64;
    // LoRA scratch for the adapters measured, none for the base alone (as the session of a program that
    // applies no adapter would be sized), so the peak RSS is that of the workload.
    let cfg = SessionConfig {
        max_adapters: loaded.len(),
        max_rank: (loaded.iter())
            .flat_map(|(a, _)| a.tensors().iter().map(|t| t.rank))
            .max()
            .unwrap_or(0),
        ..cfg
    };

    let mut sess = Session::new(model.clone(), cfg.clone())?;
    sess.set_control_vector(w.control_vector.clone())?;
    let base = measure_speed(&mut sess, &prompt, w.n_gen, w.reps)?;
    progress(&format!(
        "  base model: pp {:.1} tok/s, tg {:.1} tok/s",
        base.pp_tps, base.tg_tps
    ));
    let kv_types = (cfg.type_k, cfg.type_v);
    let bytes = TokenBytes::decode(&model, w.n_prompt, w.n_gen, kv_types);
    let lora = if loaded.is_empty() {
        None
    } else {
        let run = AdapterRun {
            loaded: &loaded,
            load_ms,
            base: &base,
            bytes: &bytes,
        };
        Some(run.measure(&mut sess, &prompt, w, progress)?)
    };
    let memory = sess.memory();
    drop(sess);
    // The other mode's session only after the first is gone, so the peak RSS is that of one session.
    let other_mode = other_mode_speed(&model, &cfg, &prompt, w, progress)?;
    let rss_mib = peak_rss_mib();
    let cmp = m2.map(|m2| compared(&m2, &cfg, w, progress)).transpose()?;
    let roofline = measure_roofline(&cfg, &bytes, lora.as_ref(), cmp.as_ref(), progress);
    Ok(Report {
        model: model.path().display().to_string(),
        threads: cfg.n_threads,
        kernels,
        act_quant,
        kv_types,
        workload: w.clone(),
        base,
        other_mode,
        bytes,
        lora,
        compare: cmp,
        roofline,
        rss_mib,
        mapped_mib: model.mapped_bytes() as f64 / MIB,
        memory,
    })
}

/// The base model's speed in the other activation mode (q8 ↔ q8x2), with that mode's name.
fn other_mode_speed(
    model: &Arc<Model>,
    cfg: &SessionConfig,
    prompt: &[u32],
    w: &Workload,
    progress: &mut dyn FnMut(&str),
) -> Result<(&'static str, Speed)> {
    let aq = match cfg.act_quant {
        ActQuant::Q8 => ActQuant::Q8x2,
        ActQuant::Q8x2 => ActQuant::Q8,
    };
    let other = SessionConfig {
        act_quant: aq,
        ..cfg.clone()
    };
    let mut sess = Session::new(model.clone(), other)?;
    sess.set_control_vector(w.control_vector.clone())?;
    let speed = measure_speed(&mut sess, prompt, w.n_gen, w.reps)?;
    progress(&format!(
        "  base model, act-quant {}: pp {:.1} tok/s, tg {:.1} tok/s",
        act_quant_name(aq),
        speed.pp_tps,
        speed.tg_tps
    ));
    Ok((act_quant_name(aq), speed))
}

/// What the adapter measurements start from: the loaded adapters and the base model's figures.
struct AdapterRun<'a> {
    loaded: &'a [(Arc<Adapter>, f32)],
    load_ms: f64,
    base: &'a Speed,
    bytes: &'a TokenBytes,
}

impl AdapterRun<'_> {
    /// Speed with the adapters applied, the time to publish a new set, and the first token after one.
    fn measure(
        &self,
        sess: &mut Session,
        prompt: &[u32],
        w: &Workload,
        progress: &mut dyn FnMut(&str),
    ) -> Result<LoraResult> {
        let loaded = self.loaded;
        let set: Vec<(&Arc<Adapter>, f32)> = loaded.iter().map(|(a, s)| (a, *s)).collect();
        sess.set_adapters(&set)?;
        let speed = measure_speed(sess, prompt, w.n_gen, w.reps)?;
        progress(&format!(
            "  with {} adapter(s): pp {:.1} tok/s, tg {:.1} tok/s",
            loaded.len(),
            speed.pp_tps,
            speed.tg_tps
        ));
        // Swap time: publishing a new set (what another thread pays between two tokens).
        let ctl = sess.adapter_control();
        let n_swaps = 1000;
        let t0 = Instant::now();
        for i in 0..n_swaps {
            ctl.set(if i % 2 == 0 { &set[..1] } else { &set[..] })?;
        }
        let swap_us = t0.elapsed().as_secs_f64() * 1e6 / n_swaps as f64;
        let after_swap = first_token_after_swap(sess, prompt, &set, w.n_gen)?;
        let lb = self.bytes.with_adapters(loaded.iter().map(|(a, _)| &**a));
        Ok(LoraResult {
            n_adapters: loaded.len(),
            speed,
            bytes: lb,
            overhead_pct: 100.0 * (self.base.tg_tps / speed.tg_tps - 1.0),
            floor_pct: 100.0 * lb.lora / self.bytes.total(),
            load_ms: self.load_ms,
            swap_us,
            after_swap,
        })
    }
}

/// The comparison model's speed (no adapters).
fn compared(
    m2: &Arc<Model>,
    cfg: &SessionConfig,
    w: &Workload,
    progress: &mut dyn FnMut(&str),
) -> Result<CompareResult> {
    let p = m2.path();
    let prompt2 = w.prompt(m2.hp.n_vocab);
    let mut s2 = Session::new(m2.clone(), cfg.clone())?;
    let speed = measure_speed(&mut s2, &prompt2, w.n_gen, w.reps)?;
    progress(&format!(
        "  {}: pp {:.1} tok/s, tg {:.1} tok/s",
        p.display(),
        speed.pp_tps,
        speed.tg_tps
    ));
    Ok(CompareResult {
        path: p.display().to_string(),
        speed,
        bytes: TokenBytes::decode(m2, w.n_prompt, w.n_gen, (cfg.type_k, cfg.type_v)),
    })
}

/// The memory roofline, probed at the base model's working set and at each other one (adapters,
/// comparison model) that differs from those already probed by more than 10 %.
fn measure_roofline(
    cfg: &SessionConfig,
    bytes: &TokenBytes,
    lora: Option<&LoraResult>,
    cmp: Option<&CompareResult>,
    progress: &mut dyn FnMut(&str),
) -> Roofline {
    let mut sets = vec![bytes.total() as usize];
    for b in lora
        .iter()
        .map(|l| l.bytes.total())
        .chain(cmp.iter().map(|c| c.bytes.total()))
    {
        if sets.iter().all(|&s| (b / s as f64 - 1.0).abs() > 0.1) {
            sets.push(b as usize);
        }
    }
    progress("  measuring the memory roofline ...");
    let roofline = Roofline::measure(cfg.n_threads, &sets, PROBE_TIME);
    progress(&format!(
        "  roofline: {:.1} GB/s streaming {:.1} MiB with {} thread(s)",
        roofline.for_bytes(bytes.total() as usize).gbs,
        bytes.total() / MIB,
        cfg.n_threads
    ));
    roofline
}

fn act_quant_name(aq: ActQuant) -> &'static str {
    match aq {
        ActQuant::Q8 => "q8",
        ActQuant::Q8x2 => "q8x2",
    }
}

impl Report {
    /// The decode roofline for the base model's bytes per token, GB/s.
    pub fn roofline_gbs(&self) -> f64 {
        self.roofline.for_bytes(self.bytes.total() as usize).gbs
    }

    /// Base tg as a percent of the roofline.
    pub fn roofline_pct(&self) -> f64 {
        roofline_pct(self.base.tg_tps, self.bytes.total(), self.roofline_gbs())
    }

    /// `(roofline GB/s, % of it)` for a run that reads `bytes` per token at `tps`.
    fn pct_for(&self, tps: f64, bytes: &TokenBytes) -> (f64, f64) {
        let gbs = self.roofline.for_bytes(bytes.total() as usize).gbs;
        (gbs, roofline_pct(tps, bytes.total(), gbs))
    }

    /// The terminal report: a table of the runs, then bytes per token, the roofline and the adapter
    /// and comparison details.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let row = |name: &str, sp: &Speed, b: &TokenBytes, extra: &str| {
            let (gbs, pct) = self.pct_for(sp.tg_tps, b);
            format!(
                "| {name:<28} | {:>10.1} | {:>10.1} | {:>9.2} | {:>9.1} | {:>9.1}% | {extra:>12} |\n",
                sp.pp_tps,
                sp.tg_tps,
                b.total() / MIB,
                gbs,
                pct
            )
        };
        s += &format!(
            "| {:<28} | {:>10} | {:>10} | {:>9} | {:>9} | {:>10} | {:>12} |\n",
            "configuration",
            "pp tok/s",
            "tg tok/s",
            "MiB/token",
            "roof GB/s",
            "% roofline",
            "tg overhead"
        );
        s += &row(
            &format!("base, act-quant {}", self.act_quant),
            &self.base,
            &self.bytes,
            "",
        );
        s += &row(
            &format!("base, act-quant {}", self.other_mode.0),
            &self.other_mode.1,
            &self.bytes,
            "",
        );
        if let Some(l) = &self.lora {
            s += &row(
                &format!("+{} adapter(s)", l.n_adapters),
                &l.speed,
                &l.bytes,
                &format!("{:.1}%", l.overhead_pct),
            );
        }
        if let Some(c) = &self.compare {
            let name = Path::new(&c.path)
                .file_name()
                .map_or(c.path.clone(), |f| f.to_string_lossy().into_owned());
            s += &row(&name, &c.speed, &c.bytes, "");
        }
        s += &format!(
            "bytes per token: weights {:.2} MiB + KV {:.2} MiB ({}/{}, mean context {:.0})",
            self.bytes.weights / MIB,
            self.bytes.kv / MIB,
            self.kv_types.0.name(),
            self.kv_types.1.name(),
            self.workload.mean_context()
        );
        if let Some(l) = &self.lora {
            s += &format!(" + LoRA A/B {:.2} MiB with adapters", l.bytes.lora / MIB);
        }
        s += "\n";
        s += &format!(
            "memory roofline (measured in this run, best of several passes):\n{}",
            self.roofline.describe()
        );
        if let Some(l) = &self.lora {
            s += &format!(
                "adapter bytes {:.2} MiB = {:.2}% of the base's bytes per token (the overhead's floor); load {:.2} ms/adapter; swap {:.2} µs\n",
                l.bytes.lora / MIB,
                l.floor_pct,
                l.load_ms,
                l.swap_us
            );
            s += &format!(
                "decode token right after a swap {:.3} ms vs {:.3} ms between swaps (medians, same run)\n",
                l.after_swap.swap_token_ms, l.after_swap.steady_token_ms
            );
        }
        if let Some(c) = &self.compare {
            let (what, r) = match &self.lora {
                Some(l) => ("with adapters", l.speed),
                None => ("base", self.base),
            };
            s += &format!(
                "compare: {} / {what}: tg {:.3}x, pp {:.3}x\n",
                c.path,
                c.speed.tg_tps / r.tg_tps,
                c.speed.pp_tps / r.pp_tps
            );
        }
        let m = &self.memory;
        s += &format!(
            "peak RSS {:.1} MiB: mapped model {:.1} MiB, KV {:.1} MiB, activations {:.1} MiB, logits {:.1} MiB, LoRA scratch {:.1} MiB (the rest: code, model tables, adapters, stacks)",
            self.rss_mib,
            self.mapped_mib,
            m.kv as f64 / MIB,
            m.activations as f64 / MIB,
            m.logits as f64 / MIB,
            m.lora_scratch as f64 / MIB
        );
        s
    }

    /// One JSON object (no newline). Keys: `model`, `threads`, `kernels`, `act_quant`, `cache_type_k`,
    /// `cache_type_v`, `n_prompt`,
    /// `n_gen`, `reps`, `pp_tps`, `tg_tps` (the base model in `act_quant`), `pp_tps_q8`, `tg_tps_q8`,
    /// `pp_tps_q8x2`, `tg_tps_q8x2` (the base model in each mode), `bytes_per_token` (weights + KV, the base run),
    /// `weight_bytes_per_token`, `kv_bytes_per_token`, `mean_context`, `roofline_gbs`, `roofline_pct`,
    /// `roofline_bytes`, `dram_gbs_1t`, `dram_gbs`, `cache_gbs_1t`, `cache_gbs`, `rss_mib`, `mapped_mib`,
    /// `kv_mib`, `activations_mib`, `logits_mib`, `lora_scratch_mib` (the session's buffers);
    /// with adapters `lora_pp_tps`, `lora_tg_tps`, `lora_bytes_per_token` (total), `lora_ab_bytes`,
    /// `lora_roofline_pct`, `lora_overhead_pct`, `lora_floor_pct`, `adapter_load_ms`, `swap_us`, `swap_token_ms`, `steady_token_ms`; with a
    /// comparison model `compare_model`, `compare_pp_tps`, `compare_tg_tps`, `compare_bytes_per_token`,
    /// `compare_roofline_pct`, `compare_tg_ratio`, `compare_pp_ratio` (its speed ÷ the adapter run's, or
    /// the base run's without adapters). Unknown values (e.g. RSS off Linux) are `null`.
    pub fn to_json(&self) -> String {
        use serde_json::{json, Value};
        let r = &self.roofline;
        let mut o = json!({
            "model": self.model,
            "threads": self.threads,
            "kernels": self.kernels,
            "act_quant": self.act_quant,
            "cache_type_k": self.kv_types.0.name(),
            "cache_type_v": self.kv_types.1.name(),
            "n_prompt": self.workload.n_prompt,
            "n_gen": self.workload.n_gen,
            "reps": self.workload.reps,
            "pp_tps": self.base.pp_tps,
            "tg_tps": self.base.tg_tps,
            "bytes_per_token": self.bytes.total(),
            "weight_bytes_per_token": self.bytes.weights,
            "kv_bytes_per_token": self.bytes.kv,
            "mean_context": self.workload.mean_context(),
            "roofline_gbs": self.roofline_gbs(),
            "roofline_pct": self.roofline_pct(),
            "roofline_bytes": r.for_bytes(self.bytes.total() as usize).bytes,
            "dram_gbs_1t": r.dram_1t.gbs,
            "dram_gbs": r.dram_nt.gbs,
            "cache_gbs_1t": r.cache_1t.gbs,
            "cache_gbs": r.cache_nt.gbs,
            "rss_mib": self.rss_mib,
            "mapped_mib": self.mapped_mib,
            "kv_mib": self.memory.kv as f64 / MIB,
            "activations_mib": self.memory.activations as f64 / MIB,
            "logits_mib": self.memory.logits as f64 / MIB,
            "lora_scratch_mib": self.memory.lora_scratch as f64 / MIB,
        });
        let m = o.as_object_mut().expect("a JSON object");
        for (mode, sp) in [
            (self.act_quant, &self.base),
            (self.other_mode.0, &self.other_mode.1),
        ] {
            m.insert(format!("pp_tps_{mode}"), json!(sp.pp_tps));
            m.insert(format!("tg_tps_{mode}"), json!(sp.tg_tps));
        }
        if let Some(l) = &self.lora {
            m.insert("lora_pp_tps".into(), json!(l.speed.pp_tps));
            m.insert("lora_tg_tps".into(), json!(l.speed.tg_tps));
            m.insert("lora_bytes_per_token".into(), json!(l.bytes.total()));
            m.insert("lora_ab_bytes".into(), json!(l.bytes.lora));
            m.insert(
                "lora_roofline_pct".into(),
                json!(self.pct_for(l.speed.tg_tps, &l.bytes).1),
            );
            m.insert("lora_overhead_pct".into(), json!(l.overhead_pct));
            m.insert("lora_floor_pct".into(), json!(l.floor_pct));
            m.insert("adapter_load_ms".into(), json!(l.load_ms));
            m.insert("swap_us".into(), json!(l.swap_us));
            m.insert("swap_token_ms".into(), json!(l.after_swap.swap_token_ms));
            m.insert(
                "steady_token_ms".into(),
                json!(l.after_swap.steady_token_ms),
            );
        }
        if let Some(c) = &self.compare {
            let r = self.lora.as_ref().map_or(self.base, |l| l.speed);
            m.insert("compare_model".into(), json!(c.path));
            m.insert("compare_pp_tps".into(), json!(c.speed.pp_tps));
            m.insert("compare_tg_tps".into(), json!(c.speed.tg_tps));
            m.insert("compare_bytes_per_token".into(), json!(c.bytes.total()));
            m.insert(
                "compare_roofline_pct".into(),
                json!(self.pct_for(c.speed.tg_tps, &c.bytes).1),
            );
            m.insert("compare_tg_ratio".into(), json!(c.speed.tg_tps / r.tg_tps));
            m.insert("compare_pp_ratio".into(), json!(c.speed.pp_tps / r.pp_tps));
        }
        // NaN/inf are not JSON: serde_json already writes them as null; keep it explicit for readers.
        for v in m.values_mut() {
            if v.as_f64().is_some_and(|f| !f.is_finite()) {
                *v = Value::Null;
            }
        }
        super::sorted_keys(o).to_string()
    }
}

#[cfg(test)]
mod tests;
