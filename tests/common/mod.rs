//! Shared by the integration tests: locating the real model, reading reference `.npz` files and
//! the metrics of the reference set (`tests/data/reference/compact.py`), deterministic test values
//! and their f32 / f16 little-endian bytes, the committed fixtures and running the `edge-run` binary.
#![allow(dead_code)]
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod llama_base;
pub mod state_file;

/// `n` deterministic values uniform in [-amp/2, amp/2), from the library's generator seeded with `seed`.
pub fn uniform_values(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut rng = edge_run::sampling::Rng::new(seed);
    (0..n).map(|_| (rng.next_f32() - 0.5) * amp).collect()
}

/// `v` as little-endian f32 bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `v` rounded to f16, as little-endian bytes.
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed fixture file: `models/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("models/fixtures").join(name)
}

/// Runs the `edge-run` binary with `args` and waits for its output.
pub fn edge_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .args(args)
        .output()
        .expect("run edge-run")
}

/// `edge-run adapter convert SRC -m MODEL -o OUT`.
pub fn convert_cli(src: &Path, model: &Path, out: &Path) -> Output {
    edge_run(&[
        "adapter",
        "convert",
        path_arg(src),
        "-m",
        path_arg(model),
        "-o",
        path_arg(out),
    ])
}

/// `edge-run CMD -m SMOLLM2 --adapter ADAPTER REST…` on the real SmolLM2 model ([`smollm2_path`]).
pub fn smollm2_with_adapter(cmd: &str, adapter: &Path, rest: &[&str]) -> Output {
    let model = smollm2_path();
    let mut args = vec![cmd, "-m", path_arg(&model), "--adapter", path_arg(adapter)];
    args.extend_from_slice(rest);
    edge_run(&args)
}

/// `edge-run info` on the real SmolLM2 model ([`smollm2_path`]) with the adapter at `adapter`.
pub fn info_with_adapter(adapter: &Path) -> Output {
    smollm2_with_adapter("info", adapter, &[])
}

/// The standard output of a run that must have succeeded (else the failure shows its stderr).
#[track_caller]
pub fn success_stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `p` as a command-line argument.
pub fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A clean refusal: the given status, an `edge-run: error:` line naming `needle`, no panic.
#[track_caller]
pub fn refused(o: &Output, code: i32, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "status; stderr: {e}");
    assert!(
        e.contains("edge-run: error:") || code == 2,
        "no error line: {e}"
    );
    assert!(
        e.contains(needle),
        "stderr does not mention `{needle}`: {e}"
    );
    assert!(
        !e.contains("panicked") && !e.contains("internal error"),
        "panic: {e}"
    );
}

/// The model file named by the environment variable `var`, else `default` under the crate root.
/// Panics (fails the test) when it is missing, saying `missing_hint`: these tests never skip silently.
fn model_file(var: &str, default: &str, missing_hint: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    assert!(
        p.is_file(),
        "model {} not found: {missing_hint}",
        p.display()
    );
    p
}

/// The real SmolLM2 model: `$EDGE_RUN_MODEL` or `models/SmolLM2-135M-Instruct.Q4_1.gguf`. Panics (fails the
/// test) with instructions when it is missing: these tests never skip silently.
pub fn smollm2_path() -> PathBuf {
    model_file(
        "EDGE_RUN_MODEL",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "run `models/fetch.sh` (or set EDGE_RUN_MODEL)",
    )
}

/// The real Gemma 3 270M model: `$EDGE_RUN_GEMMA` or `models/gemma-3-270m-q4_k_m.gguf`. Panics (fails the
/// test) with instructions when it is missing.
pub fn gemma_path() -> PathBuf {
    model_file(
        "EDGE_RUN_GEMMA",
        "models/gemma-3-270m-q4_k_m.gguf",
        "run `models/fetch.sh` (it downloads and verifies Gemma 3 270M), or set EDGE_RUN_GEMMA",
    )
}

/// The real SmolLM2 model ([`smollm2_path`]), opened.
pub fn open_smollm2() -> std::sync::Arc<edge_run::Model> {
    std::sync::Arc::new(edge_run::Model::open(smollm2_path()).unwrap())
}

/// The shared adapters `tests/data/adapters/<name>` of `names`, loaded for `model`.
pub fn shared_adapters<const N: usize>(
    model: &edge_run::Model,
    names: [&str; N],
) -> [std::sync::Arc<edge_run::adapter::Adapter>; N] {
    names.map(|name| {
        let p = root().join("tests/data/adapters").join(name);
        let a = edge_run::adapter::Adapter::load(&p, &model.base_info);
        std::sync::Arc::new(a.unwrap_or_else(|e| panic!("{name}: {e}")))
    })
}

/// A 2-D array read from a `.npy`.
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Copy> Array<T> {
    pub fn row(&self, i: usize) -> &[T] {
        let w: usize = self.shape[1..].iter().product();
        &self.data[i * w..(i + 1) * w]
    }
}

fn parse_npy(bytes: &[u8]) -> (String, Vec<usize>, &[u8]) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy");
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    let descr = header
        .split("'descr':")
        .nth(1)
        .unwrap()
        .split('\'')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(header.contains("'fortran_order': False"));
    let shape_s = header.split("'shape':").nth(1).unwrap();
    let shape_s = &shape_s[shape_s.find('(').unwrap() + 1..shape_s.find(')').unwrap()];
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (descr, shape, &bytes[start + hlen..])
}

/// A `.npy` of 4-byte elements whose dtype must be `descr`, each decoded by `from_le_bytes`.
fn npy_4byte<T>(bytes: &[u8], descr: &str, from_le_bytes: fn([u8; 4]) -> T) -> Array<T> {
    let (d, shape, data) = parse_npy(bytes);
    assert_eq!(d, descr);
    Array {
        shape,
        data: data
            .chunks_exact(4)
            .map(|c| from_le_bytes(c.try_into().unwrap()))
            .collect(),
    }
}

pub fn npy_f32(bytes: &[u8]) -> Array<f32> {
    npy_4byte(bytes, "<f4", f32::from_le_bytes)
}

pub fn npy_i32(bytes: &[u8]) -> Array<i32> {
    npy_4byte(bytes, "<i4", i32::from_le_bytes)
}

/// All members of a `.npz` archive, by name without the `.npy` suffix.
pub fn read_npz(path: &std::path::Path) -> HashMap<String, Vec<u8>> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut z = zip::ZipArchive::new(f).unwrap();
    let mut out = HashMap::new();
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        out.insert(name, buf);
    }
    out
}

/// Compact reference logits of one sequence (see compact.py).
pub struct RefSeq {
    pub ids: Array<i32>,
    pub logits: Array<f32>,
    pub lse: Array<f32>,
}

pub fn reference(npz: &HashMap<String, Vec<u8>>, name: &str) -> RefSeq {
    RefSeq {
        ids: npy_i32(&npz[&format!("{name}/ids")]),
        logits: npy_f32(&npz[&format!("{name}/logits")]),
        lse: npy_f32(&npz[&format!("{name}/lse")]),
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Metrics {
    pub positions: usize,
    pub top1: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
    /// Positions whose reference top-2 margin is at least [`TIE_MARGIN`], and the top-1 agreement
    /// over those.
    pub clear: usize,
    pub top1_clear: f64,
    /// The same over the positions whose margin is at least [`Q8_KV_TIE_MARGIN`].
    pub clear_q8_kv: usize,
    pub top1_clear_q8_kv: f64,
}

/// The bars of a KV cache type against an fp32/float64 reference (q8x2 activations): f32 and f16
/// within mean KL 0.0005 and top-1 99.5%, q8_0 within 0.003 and 98.5% (top-1 outside ties:
/// [`TIE_MARGIN`], [`Q8_KV_TIE_MARGIN`] for a q8_0 cache).
#[track_caller]
pub fn assert_kv_bars(what: &str, kv: edge_run::session::KvType, m: &Metrics) {
    let (kl, top1, top1_clear) = match kv {
        edge_run::session::KvType::Q8_0 => (0.003, 0.985, m.top1_clear_q8_kv),
        _ => (0.0005, 0.995, m.top1_clear),
    };
    eprintln!("{what} [KV {}]: {m:?}", kv.name());
    assert!(
        m.kl_mean <= kl,
        "{what} [KV {}]: mean KL {} > {kl}",
        kv.name(),
        m.kl_mean
    );
    assert!(
        top1_clear >= top1,
        "{what} [KV {}]: top-1 {top1_clear} < {top1} outside ties",
        kv.name(),
    );
}

/// A reference top-2 margin (logits) below which the top-1 is a tie that one f32 rounding anywhere
/// can decide (SmolLM2's "prose" position 57 has 0.00098).
pub const TIE_MARGIN: f32 = 0.01;

/// The tie margin for a q8_0 KV cache: rounding keys and values to 8 bits moves a position's top-2
/// gap by up to about 0.1 logits against an f16 cache (0.11 at the pirate adapter's "chat_capital"
/// position 62, whose reference gap is 0.119 and q8_0 run's 0.007), so which side of such a gap a run
/// lands on is decided by rounding order anywhere in the model.
pub const Q8_KV_TIE_MARGIN: f32 = 0.15;

/// KL(reference ‖ run) over the reference's top-128 per position, and top-1 agreement — as compact.py's `compare`.
pub fn compare(r: &RefSeq, logits: &[Vec<f32>]) -> Metrics {
    let t = r.ids.shape[0];
    assert_eq!(logits.len(), t, "positions");
    let mut m = Metrics {
        positions: t,
        ..Default::default()
    };
    let (mut agree, mut agree_clear, mut agree_q8) = (0usize, 0usize, 0usize);
    for (p, row) in logits.iter().enumerate() {
        let mx = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
        let (ids, rl, rlse) = (r.ids.row(p), r.logits.row(p), r.lse.data[p] as f64);
        let mut kl = 0.0;
        for (&id, &l) in ids.iter().zip(rl) {
            let lp_ref = l as f64 - rlse;
            let lp_run = row[id as usize] as f64 - lse;
            kl += lp_ref.exp() * (lp_ref - lp_run);
        }
        let argmax = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
        agree += usize::from(argmax == ids[0] as usize);
        if rl[0] - rl[1] >= TIE_MARGIN {
            m.clear += 1;
            agree_clear += usize::from(argmax == ids[0] as usize);
        }
        if rl[0] - rl[1] >= Q8_KV_TIE_MARGIN {
            m.clear_q8_kv += 1;
            agree_q8 += usize::from(argmax == ids[0] as usize);
        }
        m.kl_mean += kl;
        m.kl_max = m.kl_max.max(kl);
    }
    m.kl_mean /= t as f64;
    m.top1 = agree as f64 / t as f64;
    m.top1_clear = agree_clear as f64 / m.clear.max(1) as f64;
    m.top1_clear_q8_kv = agree_q8 as f64 / m.clear_q8_kv.max(1) as f64;
    m
}

/// Position-weighted overall metrics.
pub fn summarize(per: &[Metrics]) -> Metrics {
    let n: usize = per.iter().map(|m| m.positions).sum();
    let weighted = |v: fn(&Metrics) -> f64, w: fn(&Metrics) -> usize| {
        per.iter().map(|m| v(m) * w(m) as f64).sum::<f64>()
            / per.iter().map(w).sum::<usize>().max(1) as f64
    };
    Metrics {
        positions: n,
        top1: weighted(|m| m.top1, |m| m.positions),
        kl_mean: weighted(|m| m.kl_mean, |m| m.positions),
        kl_max: per.iter().map(|m| m.kl_max).fold(0.0, f64::max),
        clear: per.iter().map(|m| m.clear).sum(),
        top1_clear: weighted(|m| m.top1_clear, |m| m.clear),
        clear_q8_kv: per.iter().map(|m| m.clear_q8_kv).sum(),
        top1_clear_q8_kv: weighted(|m| m.top1_clear_q8_kv, |m| m.clear_q8_kv),
    }
}

/// A JSON array of token ids (each must fit `T`).
pub fn token_ids<T: TryFrom<i64>>(v: &serde_json::Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| T::try_from(x.as_i64().expect("an integer token id")).unwrap())
        .collect()
}

/// A GGUF writer holding the metadata of a llama LoRA adapter: `general.architecture` llama,
/// `general.type` adapter, `adapter.type` lora and, if given, `adapter.lora.alpha`.
pub fn lora_adapter_writer(alpha: Option<f32>) -> edge_run::gguf::GgufWriter<'static> {
    let mut w = edge_run::gguf::GgufWriter::new();
    w.add("general.architecture", "llama").unwrap();
    w.add("general.type", "adapter").unwrap();
    w.add("adapter.type", "lora").unwrap();
    if let Some(alpha) = alpha {
        w.add("adapter.lora.alpha", alpha).unwrap();
    }
    w
}

/// An empty directory `edge-run-<tag>-<pid>-<name>` in the system temp directory (emptied first).
pub fn empty_temp_dir(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-run-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An [`empty_temp_dir`] that is removed when dropped, unless the thread is panicking (a failing
/// test leaves its files behind to look at).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str, name: &str) -> TempDir {
        TempDir(empty_temp_dir(tag, name))
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Logits of every position of each named sequence, each in a new session of `cfg` with `logits_all`.
pub fn logits_of_sequences(
    model: &std::sync::Arc<edge_run::Model>,
    seqs: Vec<(String, Vec<u32>)>,
    cfg: edge_run::SessionConfig,
) -> Vec<(String, Vec<Vec<f32>>)> {
    adapted_logits_of_sequences(model, seqs, cfg, &[])
}

/// [`logits_of_sequences`] with the adapter set `set` in each session.
pub fn adapted_logits_of_sequences(
    model: &std::sync::Arc<edge_run::Model>,
    seqs: Vec<(String, Vec<u32>)>,
    cfg: edge_run::SessionConfig,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
) -> Vec<(String, Vec<Vec<f32>>)> {
    let cfg = edge_run::SessionConfig {
        logits_all: true,
        ..cfg
    };
    seqs.into_iter()
        .map(|(name, ids)| {
            let mut s = edge_run::Session::new(model.clone(), cfg.clone()).unwrap();
            s.set_adapters(set).unwrap();
            let mut rows = Vec::new();
            s.eval_each(&ids, |_, l| rows.push(l.to_vec())).unwrap();
            (name, rows)
        })
        .collect()
}

/// The last logits of `ids` with the adapter set `set`, in a new 64-position session on 2 threads.
pub fn logits_of(
    model: &std::sync::Arc<edge_run::Model>,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
    ids: &[u32],
) -> Vec<f32> {
    let mut s = session(model, 64, 2);
    s.set_adapters(set).unwrap();
    s.eval(ids).unwrap().to_vec()
}

/// `ids` evaluated in `s` with the adapter set `set`, which is then removed: after a reset, `ids`
/// give `base` again bit for bit (`what` names the check).
#[track_caller]
pub fn assert_removal_restores(
    s: &mut edge_run::Session,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
    ids: &[u32],
    base: &[f32],
    what: &str,
) {
    s.set_adapters(set).unwrap();
    s.eval(ids).unwrap();
    s.set_adapters(&[]).unwrap();
    s.reset();
    assert_eq!(base, s.eval(ids).unwrap(), "{what}");
}

/// The last logits of `ids` without adapters are those with `adapter` at scale 0 (bit for bit) and
/// not those with it at scale 1; a new 64-position session then evaluates with `set` and removes it
/// ([`assert_removal_restores`], `what` naming that check). Returns that session.
#[track_caller]
pub fn assert_scale_zero_and_removal(
    model: &std::sync::Arc<edge_run::Model>,
    adapter: &std::sync::Arc<edge_run::adapter::Adapter>,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
    ids: &[u32],
    what: &str,
) -> edge_run::Session {
    let base = logits_of(model, &[], ids);
    assert_eq!(base, logits_of(model, &[(adapter, 0.0)], ids), "scale 0");
    assert_ne!(base, logits_of(model, &[(adapter, 1.0)], ids), "scale 1");
    let mut s = session(model, 64, 2);
    assert_removal_restores(&mut s, set, ids, &base, what);
    s
}

/// KL(softmax(p) ‖ softmax(q)) over full rows.
pub fn kl_div(p: &[f32], q: &[f32]) -> f64 {
    let lsm = |v: &[f32]| {
        let m = v.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        v.iter().map(|&x| x as f64 - lse).collect::<Vec<f64>>()
    };
    let (lp, lq) = (lsm(p), lsm(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Position-weighted metrics of `runs` (named as the SmolLM2 reference sequences) against the shared
/// reference `tests/data/reference/smollm2/<npz>`; each sequence's metrics go to stderr.
pub fn metrics_vs_smollm2_npz(npz: &str, runs: &[(String, Vec<Vec<f32>>)]) -> Metrics {
    let z = read_npz(&root().join("tests/data/reference/smollm2").join(npz));
    let per: Vec<Metrics> = runs
        .iter()
        .map(|(name, rows)| compare(&reference(&z, name), rows))
        .collect();
    for ((name, _), m) in runs.iter().zip(&per) {
        eprintln!("  {npz} {name}: {m:?}");
    }
    summarize(&per)
}

/// Every tensor of adapter `x` is in adapter `y` with the same rank, shape and scale and bit-identical
/// factors (`x_name`, `y_name` name the two in the messages).
#[track_caller]
pub fn assert_same_factors(
    (x_name, x): (&str, &edge_run::adapter::Adapter),
    (y_name, y): (&str, &edge_run::adapter::Adapter),
) {
    for tx in x.tensors() {
        let ty = y
            .get(&tx.target)
            .unwrap_or_else(|| panic!("{y_name} lacks {}", tx.target));
        assert_eq!(
            (tx.rank, tx.n_in, tx.n_out, tx.scale),
            (ty.rank, ty.n_in, ty.n_out, ty.scale),
            "{x_name} vs {y_name}: rank, shape, scale of {}",
            tx.target
        );
        assert!(
            tx.a() == ty.a(),
            "{x_name} vs {y_name}: A of {} differs",
            tx.target
        );
        assert!(
            tx.b() == ty.b(),
            "{x_name} vs {y_name}: B of {} differs (q/k permutation?)",
            tx.target
        );
    }
}

/// The reference sequences by name (SmolLM2's).
pub fn sequences() -> Vec<(String, Vec<u32>)> {
    sequences_in(&root().join("tests/data/reference/smollm2/sequences.json"))
}

/// The token sequences of a reference set's `sequences.json` (name → ids), sorted by name.
pub fn sequences_in(path: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, ids)| {
            (
                k.clone(),
                ids.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The largest difference between the last logits of `ids` evaluated as one batch (2 threads) and
/// token by token (1 thread), each in a new 64-token session.
pub fn batch_vs_steps(model: &std::sync::Arc<edge_run::Model>, ids: &[u32]) -> f32 {
    use edge_run::{Session, SessionConfig};
    let cfg = |n_batch, n_threads| SessionConfig {
        n_batch,
        n_ctx: 64,
        n_threads,
        ..Default::default()
    };
    let mut a = Session::new(model.clone(), cfg(64, 2)).unwrap();
    let la = a.eval(ids).unwrap().to_vec();
    let mut b = Session::new(model.clone(), cfg(1, 1)).unwrap();
    for &t in ids {
        b.eval(&[t]).unwrap();
    }
    la.iter()
        .zip(b.logits())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// A session of `model` with `n_ctx` positions on `n_threads` threads (other settings default).
pub fn session(
    model: &std::sync::Arc<edge_run::Model>,
    n_ctx: usize,
    n_threads: usize,
) -> edge_run::Session {
    let cfg = edge_run::SessionConfig {
        n_ctx,
        n_threads,
        ..Default::default()
    };
    edge_run::Session::new(model.clone(), cfg).unwrap()
}

/// A session configuration that keeps every position's logits, with the given context, batch and
/// thread count (the rest default).
pub fn all_logits(n_ctx: usize, n_batch: usize, n_threads: usize) -> edge_run::SessionConfig {
    edge_run::SessionConfig {
        n_ctx,
        n_batch,
        n_threads,
        logits_all: true,
        ..Default::default()
    }
}

/// Each SmolLM2 reference sequence run with the adapter set `set` (every position's logits, a new
/// 128-position session on 2 threads each) and compared with the reference logits in `z`.
pub fn compare_sequences(
    model: &std::sync::Arc<edge_run::Model>,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
    z: &HashMap<String, Vec<u8>>,
) -> Vec<(String, Metrics)> {
    compare_sequences_kv(model, set, z, edge_run::session::KvType::default())
}

/// [`compare_sequences`] with keys and values cached as `kv`.
pub fn compare_sequences_kv(
    model: &std::sync::Arc<edge_run::Model>,
    set: &[(&std::sync::Arc<edge_run::adapter::Adapter>, f32)],
    z: &HashMap<String, Vec<u8>>,
    kv: edge_run::session::KvType,
) -> Vec<(String, Metrics)> {
    let cfg = edge_run::SessionConfig {
        logits_all: true,
        n_ctx: 128,
        n_threads: 2,
        type_k: kv,
        type_v: kv,
        ..Default::default()
    };
    adapted_logits_of_sequences(model, sequences(), cfg, set)
        .into_iter()
        .map(|(name, rows)| {
            let m = compare(&reference(z, &name), &rows);
            (name, m)
        })
        .collect()
}

/// A control-vector file: `dirs` as `(N, values)` written as `direction.N` of type `ty`.
pub fn write_cv(
    dir: &Path,
    name: &str,
    dirs: &[(usize, Vec<f32>)],
    ty: edge_run::kernels::QuantType,
) -> PathBuf {
    let mut w = edge_run::gguf::GgufWriter::new();
    w.add("general.architecture", "controlvector").unwrap();
    w.add("controlvector.model_hint", "llama").unwrap();
    w.add("controlvector.layer_count", dirs.len() as u32)
        .unwrap();
    for (n, v) in dirs {
        let bytes = match ty {
            edge_run::kernels::QuantType::F16 => f16_bytes(v),
            _ => f32_bytes(v),
        };
        w.add_tensor(&format!("direction.{n}"), &[v.len() as u64], ty, bytes)
            .unwrap();
    }
    let p = dir.join(name);
    w.write_file(&p).unwrap();
    p
}
