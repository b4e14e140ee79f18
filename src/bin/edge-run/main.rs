//! `edge-run`: the command-line front end (llama.cpp-style flags) over the runtime library, plus the
//! tools that are not part of it ([`tools`]).
//!
//! - [`args`]: the flags of every subcommand;
//! - [`generate`]: the default command (prompt in, tokens streamed out), with [`prompt_cache`]
//!   (`--prompt-cache`), and [`repl`], the interactive chat (its `/save` and `/load` in [`chat_state`]);
//! - [`inspect`]: `tokenize`, `logits`, `info`;
//! - [`tool_cmds`]: `adapter convert`, `merge`, `diagnose`, `bench` over [`tools`];
//! - `serve` (feature `serve`): the OpenAI-compatible HTTP server.
#![deny(clippy::undocumented_unsafe_blocks)]

/// `println!` that treats a closed stdout (e.g. `edge-run info … | head -1`) as the end of the output:
/// exit quietly with status 0 instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("edge-run: error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

mod args;
mod chat_state;
mod generate;
mod heap;
mod inspect;
mod prompt_cache;
mod repl;
#[cfg(feature = "serve")]
mod serve;
mod tool_cmds;
mod tools;

use args::{Cli, Cmd, RuntimeArgs, SizeArgs};
use clap::Parser;
use edge_run::adapter::Adapter;
use edge_run::adapter::ControlVector;
use edge_run::kernels::Kernels;
use edge_run::session::{default_threads, ActQuant};
use edge_run::{Error, Model, Session, SessionConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// An error and its exit status: 1 for bad input, 2 for bad usage.
pub(crate) struct Failure(pub u8, pub String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(1, e.to_string())
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

fn main() -> ExitCode {
    // Never show a Rust backtrace to users; a panic is a bug and says so in one line.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("edge-run: internal error (please report): {info}");
    }));
    let cli = match Cli::try_parse_from(args::llama_cpp_short_flags(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.verbose);
    // A model or adapter file truncated under us ends the run with a message naming it, not a signal.
    edge_run::mmap::install_guard();
    let r = match cli.cmd {
        Some(Cmd::Tokenize(a)) => inspect::cmd_tokenize(a),
        Some(Cmd::Logits(a)) => inspect::cmd_logits(a),
        Some(Cmd::Info(a)) => inspect::cmd_info(a),
        Some(Cmd::Bench(a)) => tool_cmds::cmd_bench(a),
        Some(Cmd::Adapter(c)) => tool_cmds::cmd_adapter(c),
        Some(Cmd::Merge(a)) => tool_cmds::cmd_merge(a),
        Some(Cmd::Diagnose(a)) => tool_cmds::cmd_diagnose(a),
        Some(Cmd::Quantize(a)) => tool_cmds::cmd_quantize(a),
        #[cfg(feature = "serve")]
        Some(Cmd::Serve(a)) => serve::cmd_serve(a),
        #[cfg(not(feature = "serve"))]
        Some(Cmd::Serve(_)) => Err(usage(
            "this edge-run was built without the HTTP server: build with `--features serve`",
        )),
        None => generate::cmd_generate(cli.gen),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("edge-run: error: {msg}");
            if code == 2 {
                eprintln!("Try 'edge-run --help' for more information.");
            }
            ExitCode::from(code)
        }
    }
}

pub(crate) fn open_model(path: &Path) -> Result<Arc<Model>, Failure> {
    Ok(Arc::new(Model::open(path)?))
}

pub(crate) fn session_config(
    model: &Model,
    rt: &RuntimeArgs,
    logits_all: bool,
) -> Result<SessionConfig, Failure> {
    let kernels = match rt.kernels {
        None => None,
        Some(tier) => Some(Kernels::by_name(tier.name()).ok_or_else(|| {
            let name = tier.name();
            let have: Vec<&str> = Kernels::available().map(|k| k.tier.name()).collect();
            usage(format!(
                "--kernels {name}: not available on this CPU (available: {})",
                have.join(", ")
            ))
        })?),
    };
    Ok(SessionConfig {
        logits_all,
        kernels,
        act_quant: ActQuant::from(rt.act_quant),
        ..sized_config(model, &rt.size)?
    })
}

/// The default configuration with `size`'s threads, context, batch and KV types, checked.
pub(crate) fn sized_config(model: &Model, size: &SizeArgs) -> Result<SessionConfig, Failure> {
    let n_ctx = size
        .ctx_size
        .unwrap_or_else(|| model.hp.n_ctx_train.clamp(1, 4096));
    if n_ctx == 0 {
        return Err(usage("-c/--ctx-size must be at least 1"));
    }
    if size.batch_size == 0 {
        return Err(usage("-b/--batch-size must be at least 1"));
    }
    let (type_k, type_v) = size.kv.types();
    Ok(SessionConfig {
        n_ctx,
        n_batch: size.batch_size,
        n_threads: n_threads(size.threads)?,
        type_k,
        type_v,
        ..Default::default()
    })
}

/// `-t/--threads`: the count given, else one per physical core; at least 1.
pub(crate) fn n_threads(threads: Option<usize>) -> Result<usize, Failure> {
    let n = threads.unwrap_or_else(default_threads);
    if n == 0 {
        return Err(usage("-t/--threads must be at least 1"));
    }
    Ok(n)
}

/// `PATH[:SCALE]`: the scale is taken only if what follows the last ':' parses as a number.
pub(crate) fn parse_adapter_arg(s: &str) -> Result<(PathBuf, f32), Failure> {
    if let Some((p, sc)) = s.rsplit_once(':') {
        if let Ok(v) = sc.parse::<f32>() {
            if !v.is_finite() {
                return Err(usage(format!(
                    "--adapter {s}: scale {sc} is not a finite number"
                )));
            }
            return Ok((PathBuf::from(p), v));
        }
    }
    Ok((PathBuf::from(s), 1.0))
}

/// Every `--adapter` argument, parsed.
pub(crate) fn parse_adapter_args(specs: &[String]) -> Result<Vec<(PathBuf, f32)>, Failure> {
    specs.iter().map(|s| parse_adapter_arg(s)).collect()
}

pub(crate) fn load_adapter(model: &Model, spec: &str) -> Result<(Arc<Adapter>, f32), Failure> {
    let (path, scale) = parse_adapter_arg(spec)?;
    let t0 = std::time::Instant::now();
    let a = Adapter::load(&path, &model.base_info)?;
    log::info!(
        "adapter {} loaded in {:.2} ms",
        path.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok((Arc::new(a), scale))
}

/// Load every `--adapter` and make them the session's set.
pub(crate) fn apply_adapters(
    sess: &mut Session,
    specs: &[String],
) -> Result<Vec<(Arc<Adapter>, f32)>, Failure> {
    let model = sess.model().clone();
    let loaded = specs
        .iter()
        .map(|s| load_adapter(&model, s))
        .collect::<Result<Vec<_>, _>>()?;
    let set: Vec<(&Arc<Adapter>, f32)> = loaded.iter().map(|(a, s)| (a, *s)).collect();
    sess.set_adapters(&set)?;
    Ok(loaded)
}

/// The control vector of `--control-vector`, `--control-vector-scaled` and
/// `--control-vector-layer-range` (llama.cpp's flags), made the session's. Nothing given: nothing set.
pub(crate) fn apply_control_vector(
    sess: &mut Session,
    rt: &args::RuntimeArgs,
) -> Result<(), Failure> {
    if let Some(cv) = control_vector(sess.model(), rt)? {
        sess.set_control_vector(Some(cv))?;
    }
    Ok(())
}

/// The control vector the flags ask for, loaded for `model` (`None`: no flag).
pub(crate) fn control_vector(
    model: &Model,
    rt: &args::RuntimeArgs,
) -> Result<Option<Arc<ControlVector>>, Failure> {
    let mut files: Vec<(PathBuf, f32)> = rt
        .control_vectors
        .iter()
        .map(|p| (p.clone(), 1.0))
        .collect();
    for pair in rt.control_vectors_scaled.chunks(2) {
        let [path, sc] = pair else {
            return Err(usage("--control-vector-scaled needs FILE SCALE"));
        };
        let scale = sc
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                usage(format!(
                    "--control-vector-scaled {path} {sc}: scale {sc:?} is not a finite number"
                ))
            })?;
        files.push((PathBuf::from(path), scale));
    }
    let n_layer = model.hp.n_layer;
    let range =
        match &rt.control_vector_layer_range {
            None => None,
            Some(_) if files.is_empty() => return Err(usage(
                "--control-vector-layer-range needs --control-vector or --control-vector-scaled",
            )),
            Some(v) => {
                let num = |s: &String| {
                    s.parse::<i64>().map_err(|_| {
                        usage(format!(
                            "--control-vector-layer-range: {s:?} is not an integer"
                        ))
                    })
                };
                let (a, b) = (num(&v[0])?, num(&v[1])?);
                let r = edge_run::adapter::control::layer_range(a, b, n_layer);
                Some(r.ok_or_else(|| {
                    usage(format!(
                        "--control-vector-layer-range {a} {b} selects no block of this model \
                     (directions apply after blocks 1..={})",
                        n_layer.saturating_sub(1)
                    ))
                })?)
            }
        };
    if files.is_empty() {
        return Ok(None);
    }
    let cv = ControlVector::load(model, &files, range)?;
    log::info!(
        "control vector: {} file(s), blocks {:?}",
        files.len(),
        cv.layers().collect::<Vec<_>>()
    );
    Ok(Some(Arc::new(cv)))
}

fn init_logging(verbose: u8) {
    struct Stderr(log::LevelFilter);
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= self.0
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!(
                    "edge-run: {}: {}",
                    r.level().as_str().to_lowercase(),
                    r.args()
                );
            }
        }
        fn flush(&self) {}
    }
    let from_env = std::env::var("EDGE_RUN_LOG")
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok());
    let level = match verbose {
        0 => from_env.unwrap_or(log::LevelFilter::Warn),
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let logger: &'static Stderr = Box::leak(Box::new(Stderr(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
