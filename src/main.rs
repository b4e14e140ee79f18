//! `edge-run`: the command-line front end (llama.cpp-style flags).
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

use clap::{Args, Parser, Subcommand};
use edge_run::adapter::Adapter;
use edge_run::chat::{apply_chat_template, ChatMessage};
use edge_run::kernels::Kernels;
use edge_run::session::{default_threads, ActQuant, StopReason};
use edge_run::tokenizer::StreamDecoder;
use edge_run::{Error, Model, Sampler, SamplingParams, Session, SessionConfig};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "edge-run",
    version,
    about = "Run a quantized GGUF language model (with LoRA adapters) on the CPU",
    long_about = "Run a quantized GGUF language model on the CPU.\n\n\
        Without a subcommand, edge-run generates text: it evaluates the prompt (-p or -f) and streams the \
        continuation to stdout; progress and timings go to stderr.\n\n\
        Examples:\n  edge-run -m model.gguf -p \"Once upon a time\" -n 64\n  \
        edge-run -m model.gguf --chat -p \"What is the capital of France?\" --temp 0\n  \
        edge-run -m model.gguf --chat            (interactive; /help lists commands)\n  \
        edge-run tokenize -m model.gguf --text \"Hello world\"\n  \
        edge-run logits -m model.gguf --tokens 1,2,3 -o out.npy\n  edge-run info -m model.gguf",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    gen: GenArgs,
    /// More log output on stderr (-v: info, -vv: debug). EDGE_RUN_LOG=debug does the same.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the token ids of a text as a JSON array (no BOS/EOS added; special-token text such as
    /// <|im_start|> becomes the special token).
    Tokenize(TokenizeArgs),
    /// Evaluate exactly the given tokens and write the logits of every position as a float32 .npy
    /// array [n_tokens, n_vocab].
    Logits(LogitsArgs),
    /// Describe a GGUF model: architecture, hyper-parameters, tensors per type, sizes.
    Info(InfoArgs),
    /// Measure prompt processing and decode speed (llama-bench's pp/tg workload), with and without the
    /// given adapters, adapter load time and swap time, bytes read per token and the memory roofline
    /// measured in the same run (tg as a percent of it).
    Bench(BenchArgs),
    /// Adapter tools: `adapter convert` writes a PEFT (or GGUF) adapter as a llama.cpp GGUF adapter.
    #[command(subcommand)]
    Adapter(AdapterCmd),
    /// Fold LoRA adapters into the weights and write a new GGUF (requantized; reports the error added).
    Merge(MergeArgs),
    /// Measure what adapters do to a model: KL vs the base, perplexity, weight-delta norms, subspace overlap.
    Diagnose(DiagnoseArgs),
}

// --- `edge-run adapter …` (issue 7) -------------------------------------------------------------
#[derive(Subcommand, Debug)]
enum AdapterCmd {
    /// Convert a LoRA adapter (PEFT directory / safetensors, or GGUF) to a llama.cpp-layout GGUF
    /// adapter (fp16) with each tensor's true scale (alpha/r, rsLoRA alpha/sqrt(r), alpha_pattern,
    /// rank_pattern) folded into lora_b and adapter.lora.alpha = 0, so llama.cpp and edge-run apply it
    /// identically.
    Convert(AdapterConvertArgs),
}

#[derive(Args, Debug)]
struct AdapterConvertArgs {
    /// The adapter to convert: a PEFT directory, its adapter_model.safetensors, or a GGUF adapter.
    #[arg(value_name = "ADAPTER")]
    input: PathBuf,
    #[command(flatten)]
    m: ModelArg,
    /// The GGUF file to write.
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    output: PathBuf,
}

fn cmd_adapter(c: AdapterCmd) -> Result<(), Failure> {
    match c {
        AdapterCmd::Convert(a) => {
            let model = Model::open(&a.m.model)?;
            let r = edge_run::adapter::convert::convert(&a.input, &model.base_info, &a.output)?;
            for w in &r.warnings {
                eprintln!("edge-run: warning: {w}");
            }
            eprintln!(
                "wrote {} ({} LoRA tensors, {} bytes); scales folded into lora_b: {:?}; adapter.lora.alpha = 0",
                a.output.display(),
                r.tensors,
                r.bytes,
                r.scales
            );
            Ok(())
        }
    }
}
// --- end `edge-run adapter` ----------------------------------------------------------------------

// --- `edge-run merge` / `edge-run diagnose` (engineer M) ----------------------------------------
#[derive(Args, Debug)]
struct MergeArgs {
    #[command(flatten)]
    m: ModelArg,
    /// A LoRA adapter to fold in (GGUF, or PEFT directory / safetensors), with an optional user scale.
    /// Repeat to merge several.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]", required = true)]
    adapters: Vec<String>,
    /// The GGUF file to write (never one of the inputs; written to OUT.partial, then renamed).
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    output: PathBuf,
    /// Type of the merged weights: same (each tensor's own), f32, f16, bf16, q4_0, q4_1, q5_0, q5_1,
    /// q8_0, q4_k, q5_k, q6_k. K-quants on rows not a multiple of 256 fall back like llama.cpp.
    #[arg(long = "type", value_name = "TYPE", default_value = "same")]
    ty: String,
    /// Threads for the merge arithmetic (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// Print the report as one JSON object (the last stdout line) instead of a table.
    #[arg(long)]
    json: bool,
}

fn cmd_merge(a: MergeArgs) -> Result<(), Failure> {
    use edge_run::merge::{merge, MergeOptions, TargetType};
    let target = TargetType::parse(&a.ty).ok_or_else(|| {
        usage(format!(
            "--type {}: unknown type (one of {})",
            a.ty,
            TargetType::NAMES
        ))
    })?;
    let adapters = a
        .adapters
        .iter()
        .map(|s| parse_adapter_arg(s))
        .collect::<Result<Vec<_>, _>>()?;
    let n_threads = a.threads.unwrap_or_else(default_threads);
    if n_threads == 0 {
        return Err(usage("-t/--threads must be at least 1"));
    }
    let t0 = std::time::Instant::now();
    let r = merge(
        &a.m.model,
        &adapters,
        &a.output,
        &MergeOptions {
            target,
            n_threads,
            progress: true,
        },
    )?;
    for n in &r.notes {
        eprintln!("edge-run: note: {n}");
    }
    if let Some((from, to)) = r.file_type {
        eprintln!("edge-run: general.file_type {from} -> {to}");
    }
    eprintln!(
        "wrote {} ({} bytes) in {:.1} s; recorded in {}: {:?}",
        r.output.display(),
        r.bytes,
        t0.elapsed().as_secs_f64(),
        edge_run::merge::MERGED_KEY,
        r.adapters
    );
    if a.json {
        outln!("{}", r.to_json());
    } else {
        outln!("{}", r.table().trim_end());
    }
    Ok(())
}

#[derive(Args, Debug)]
struct DiagnoseArgs {
    #[command(flatten)]
    m: ModelArg,
    /// A LoRA adapter with an optional user scale. Repeat: each one alone, each prefix of the stack and
    /// the whole stack are measured.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]", required = true)]
    adapters: Vec<String>,
    /// The probe text (default: a built-in few-KB mix of prose, chat and code).
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Use at most this many tokens of the probe text.
    #[arg(long = "max-tokens", value_name = "N")]
    max_tokens: Option<usize>,
    /// Print one JSON object (the last stdout line) instead of tables.
    #[arg(long)]
    json: bool,
    /// Write an SVG plot of KL vs the base against the number of stacked adapters.
    #[arg(long, value_name = "OUT.svg")]
    plot: Option<PathBuf>,
    /// Worker threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Option<usize>,
}

fn cmd_diagnose(a: DiagnoseArgs) -> Result<(), Failure> {
    use edge_run::diagnose::{diagnose, DiagnoseOptions};
    let n_threads = a.threads.unwrap_or_else(default_threads);
    if n_threads == 0 {
        return Err(usage("-t/--threads must be at least 1"));
    }
    if a.max_tokens == Some(0) {
        return Err(usage("--max-tokens must be at least 1"));
    }
    let text = match &a.text {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| Failure(1, format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let model = open_model(&a.m.model)?;
    let loaded = a
        .adapters
        .iter()
        .map(|s| load_adapter(&model, s))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = a
        .adapters
        .iter()
        .map(|s| {
            parse_adapter_arg(s).map(|(p, _)| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let set: Vec<(&Arc<Adapter>, f32, &str)> = loaded
        .iter()
        .zip(&names)
        .map(|((ad, s), n)| (ad, *s, n.as_str()))
        .collect();
    let opts = DiagnoseOptions {
        n_threads,
        max_tokens: a.max_tokens,
        progress: true,
    };
    let r = diagnose(&model, &set, text.as_deref(), &opts)?;
    if let Some(p) = &a.plot {
        let tmp = p.with_extension("svg.partial");
        std::fs::write(&tmp, r.svg())
            .and_then(|_| std::fs::rename(&tmp, p))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Failure(1, format!("{}: {e}", p.display()))
            })?;
        eprintln!("wrote {}", p.display());
    }
    if a.json {
        outln!("{}", r.to_json());
    } else {
        outln!("{}", r.tables().trim_end());
    }
    Ok(())
}
// --- end `edge-run merge` / `edge-run diagnose` --------------------------------------------------

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    m: ModelArg,
    /// Prompt tokens evaluated as one batch (pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Tokens decoded one at a time after the prompt (tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions; the best is reported.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    reps: usize,
    /// Print one JSON object on the last stdout line.
    #[arg(long)]
    json: bool,
    /// Also run the same workload (without adapters) on this model file, e.g. the adapters merged into
    /// the base, and print its speed and the ratio to the run with adapters.
    #[arg(long = "compare-model", value_name = "FILE")]
    compare_model: Option<PathBuf>,
    /// Also run the identical workload (prompt tokens, counts, threads, adapters) in llama.cpp in this
    /// process and print the speed ratios edge-run / llama.cpp (needs a build with `--features ggml`).
    #[arg(long = "vs-llama-cpp")]
    vs_llama_cpp: bool,
    #[command(flatten)]
    rt: RuntimeArgs,
}

#[derive(Args, Debug)]
struct ModelArg {
    /// Path of the GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,
}

#[derive(Args, Debug)]
struct RuntimeArgs {
    /// Worker threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// Context size in tokens (KV cache length); default: min(4096, the model's training context).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Tokens per forward pass when evaluating a prompt.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 64
    )]
    batch_size: usize,
    /// Kernel tier to use instead of the best one this CPU supports (scalar, avx2, avx512vnni, neon, neon-dotprod).
    #[arg(long, value_name = "TIER")]
    kernels: Option<String>,
    /// Activation quantization: q8 (as llama.cpp: one 8-bit pass, fastest) or q8x2 (8-bit plus its 8-bit
    /// residual: two passes over the same weights, ~100x less rounding error).
    #[arg(long = "act-quant", value_name = "MODE", default_value = "q8x2", value_parser = ["q8", "q8x2"])]
    act_quant: String,
    /// Apply a LoRA adapter: a llama.cpp GGUF adapter or a PEFT directory / adapter_model.safetensors,
    /// detected from the content. Optional user scale after a colon (default 1.0). Repeat to stack
    /// up to 8 adapters.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
}

#[derive(Args, Debug)]
struct GenArgs {
    /// Path of the GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    file: Option<PathBuf>,
    /// Number of tokens to generate (-1: until end of generation or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Apply the model's chat template (tokenizer.chat_template) to the prompt. Without -p/-f: interactive chat.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Sampling temperature; 0 means greedy.
    #[arg(long = "temp", value_name = "T", default_value_t = 0.8)]
    temp: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long = "top-k", value_name = "K", default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1.0: off).
    #[arg(long = "top-p", value_name = "P", default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0.0: off).
    #[arg(long = "min-p", value_name = "P", default_value_t = 0.05)]
    min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1.0: off).
    #[arg(long = "repeat-penalty", value_name = "X", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", value_name = "N", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: a fresh one, printed on stderr). The same seed gives the same text.
    #[arg(short = 's', long = "seed", value_name = "N")]
    seed: Option<u64>,
    /// Don't print load information and timings on stderr.
    #[arg(long)]
    quiet: bool,
    /// In --chat, re-evaluate the conversation after /adapter changes (by default the KV cache keeps what
    /// was computed with the previous adapters and only new tokens see the change).
    #[arg(long = "reeval-on-swap")]
    reeval_on_swap: bool,
    #[command(flatten)]
    rt: RuntimeArgs,
}

#[derive(Args, Debug)]
struct TokenizeArgs {
    #[command(flatten)]
    m: ModelArg,
    /// The text to tokenize.
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    text: Option<String>,
    /// Tokenize the content of this file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct LogitsArgs {
    #[command(flatten)]
    m: ModelArg,
    /// Comma-separated token ids, e.g. 1,9690,198 (a JSON array is accepted too).
    #[arg(long, value_name = "IDS")]
    tokens: String,
    /// Output .npy file.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    rt: RuntimeArgs,
}

#[derive(Args, Debug)]
struct InfoArgs {
    #[command(flatten)]
    m: ModelArg,
    /// Also load and describe these adapters against the model (format, ranks, alpha, scales, targets, bytes).
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
}

/// An error and its exit status: 1 for bad input, 2 for bad usage.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(1, e.to_string())
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

fn main() -> ExitCode {
    // Never show a Rust backtrace to users; a panic is a bug and says so in one line.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("edge-run: internal error (please report): {info}");
    }));
    let cli = match Cli::try_parse() {
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
        Some(Cmd::Tokenize(a)) => cmd_tokenize(a),
        Some(Cmd::Logits(a)) => cmd_logits(a),
        Some(Cmd::Info(a)) => cmd_info(a),
        Some(Cmd::Bench(a)) => cmd_bench(a),
        Some(Cmd::Adapter(c)) => cmd_adapter(c),
        Some(Cmd::Merge(a)) => cmd_merge(a),
        Some(Cmd::Diagnose(a)) => cmd_diagnose(a),
        None => cmd_generate(cli.gen),
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

fn open_model(path: &Path) -> Result<Arc<Model>, Failure> {
    Ok(Arc::new(Model::open(path)?))
}

fn session_config(
    model: &Model,
    rt: &RuntimeArgs,
    logits_all: bool,
) -> Result<SessionConfig, Failure> {
    let kernels = match &rt.kernels {
        None => None,
        Some(name) => Some(Kernels::by_name(name).ok_or_else(|| {
            let have: Vec<&str> = Kernels::available().map(|k| k.tier.name()).collect();
            usage(format!(
                "--kernels {name}: not available on this CPU (available: {})",
                have.join(", ")
            ))
        })?),
    };
    let n_threads = rt.threads.unwrap_or_else(default_threads);
    if n_threads == 0 {
        return Err(usage("-t/--threads must be at least 1"));
    }
    let n_ctx = rt
        .ctx_size
        .unwrap_or_else(|| model.hp.n_ctx_train.clamp(1, 4096));
    if n_ctx == 0 {
        return Err(usage("-c/--ctx-size must be at least 1"));
    }
    if rt.batch_size == 0 {
        return Err(usage("-b/--batch-size must be at least 1"));
    }
    let act_quant = if rt.act_quant == "q8" {
        ActQuant::Q8
    } else {
        ActQuant::Q8x2
    };
    Ok(SessionConfig {
        n_ctx,
        n_batch: rt.batch_size,
        n_threads,
        logits_all,
        kernels,
        act_quant,
        ..Default::default()
    })
}

/// `PATH[:SCALE]`: the scale is taken only if what follows the last ':' parses as a number.
fn parse_adapter_arg(s: &str) -> Result<(PathBuf, f32), Failure> {
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

fn load_adapter(model: &Model, spec: &str) -> Result<(Arc<Adapter>, f32), Failure> {
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
fn apply_adapters(
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

fn cmd_tokenize(a: TokenizeArgs) -> Result<(), Failure> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            std::fs::read_to_string(p).map_err(|e| Failure(1, format!("{}: {e}", p.display())))?
        }
        (None, None) => return Err(usage("tokenize needs --text or --file")),
    };
    let model = open_model(&a.m.model)?;
    let ids = model.tokenizer.encode(&text, true);
    outln!(
        "{}",
        serde_json::to_string(&ids).expect("a Vec<u32> serializes")
    );
    Ok(())
}

fn parse_tokens(s: &str) -> Result<Vec<u32>, Failure> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    if t.trim().is_empty() {
        return Err(usage("--tokens: no token ids given"));
    }
    t.split(',')
        .enumerate()
        .map(|(i, x)| {
            x.trim().parse::<u32>().map_err(|e| {
                usage(format!(
                    "--tokens: item {i} `{}` is not a token id: {e}",
                    x.trim()
                ))
            })
        })
        .collect()
}

fn cmd_logits(a: LogitsArgs) -> Result<(), Failure> {
    let tokens = parse_tokens(&a.tokens)?;
    let model = open_model(&a.m.model)?;
    let mut cfg = session_config(&model, &a.rt, true)?;
    cfg.n_ctx = cfg.n_ctx.max(tokens.len());
    let nv = model.hp.n_vocab;
    let mut sess = Session::new(model, cfg)?;
    apply_adapters(&mut sess, &a.rt.adapters)?;
    let tmp = a.output.with_extension("npy.partial");
    let f =
        std::fs::File::create(&tmp).map_err(|e| Failure(1, format!("{}: {e}", tmp.display())))?;
    let mut w = std::io::BufWriter::new(f);
    let io_err = |e: std::io::Error| Failure(1, format!("{}: {e}", a.output.display()));
    write_npy_header(&mut w, &[tokens.len(), nv]).map_err(io_err)?;
    let mut werr = None;
    sess.eval_each(&tokens, |_, row| {
        if werr.is_none() {
            if let Err(e) = w.write_all(bytemuck::cast_slice(row)) {
                werr = Some(e);
            }
        }
    })?;
    if let Some(e) = werr {
        return Err(io_err(e));
    }
    w.flush().map_err(io_err)?;
    drop(w);
    std::fs::rename(&tmp, &a.output).map_err(io_err)?;
    eprintln!(
        "wrote {} × {} logits to {}",
        tokens.len(),
        nv,
        a.output.display()
    );
    Ok(())
}

/// NumPy .npy v1.0 header for a little-endian float32 C-order array.
fn write_npy_header(w: &mut impl Write, shape: &[usize]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    h.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(h.len() as u16).to_le_bytes())?;
    w.write_all(h.as_bytes())
}

fn cmd_info(a: InfoArgs) -> Result<(), Failure> {
    if let Some(desc) = describe_if_adapter(&a.m.model)? {
        outln!("{desc}");
        return Ok(());
    }
    let model = open_model(&a.m.model)?;
    let m = &*model;
    let hp = &m.hp;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    outln!("file:            {}", m.path().display());
    outln!("format:          GGUF v{}", m.gguf_version);
    if let Some(n) = &m.name {
        outln!("name:            {n}");
    }
    outln!("architecture:    {}", m.arch);
    outln!(
        "vocabulary:      {} tokens ({} tokenizer)",
        hp.n_vocab,
        m.tokenizer_model
    );
    outln!("context (train): {}", hp.n_ctx_train);
    outln!("width:           {}", hp.n_embd);
    outln!("layers:          {}", hp.n_layer);
    outln!(
        "heads:           {} query, {} key/value, head size {}",
        hp.n_head,
        hp.n_head_kv,
        hp.head_dim
    );
    outln!("feed-forward:    {}", hp.n_ff);
    outln!(
        "rope:            base {}, {} dims, scale {}",
        hp.rope_freq_base,
        hp.rope_dim,
        hp.rope_freq_scale
    );
    if hp.n_swa > 0 {
        outln!(
            "sliding window:  {} positions on {} of {} layers (their rope base {})",
            hp.n_swa,
            hp.n_swa_layers(),
            hp.n_layer,
            hp.rope_freq_base_swa
        );
    }
    outln!("rms epsilon:     {:e}", hp.rms_eps);
    outln!(
        "output head:     {}",
        if m.tied_output {
            "tied to token_embd"
        } else {
            "separate (output.weight)"
        }
    );
    let types: Vec<String> = m
        .type_counts
        .iter()
        .map(|(t, n)| format!("{} {}", n, t.name()))
        .collect();
    outln!("tensors:         {} ({})", m.n_tensors, types.join(", "));
    outln!(
        "file size:       {} bytes ({:.1} MiB), mapped read-only: {:.1} MiB",
        m.mapped_bytes(),
        mib(m.mapped_bytes()),
        mib(m.mapped_bytes())
    );
    outln!(
        "weights/token:   {:.1} MiB read per decoded token",
        mib(m.bytes_per_token())
    );
    outln!(
        "chat template:   {}",
        if m.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    let tiers: Vec<&str> = Kernels::available().map(|k| k.tier.name()).collect();
    outln!(
        "kernels:         {} (available: {})",
        Kernels::best().tier.name(),
        tiers.join(", ")
    );
    for spec in &a.adapters {
        let (ad, scale) = load_adapter(m, spec)?;
        let (ba, bb) = ad.bytes();
        outln!(
            "\nadapter:         {} (user scale {scale})",
            ad.path().display()
        );
        outln!("{}", ad.summary());
        outln!(
            "share of base:   {:.2}% of the bytes read per token",
            100.0 * (ba + bb) as f64 / m.bytes_per_token() as f64
        );
    }
    Ok(())
}

/// For `info -m` given a GGUF LoRA adapter instead of a model: a GGUF-level description.
fn describe_if_adapter(path: &Path) -> Result<Option<String>, Failure> {
    let Ok(map) = edge_run::mmap::MappedFile::open(path) else {
        return Ok(None);
    };
    if map.len() < 4 || &map[..4] != b"GGUF" {
        return Ok(None);
    }
    let g = edge_run::gguf::Gguf::parse_named(&map, &path.display().to_string())?;
    if g.opt_str("general.type")? != Some("adapter") {
        return Ok(None);
    }
    let mut s = format!(
        "file:            {}\nformat:          GGUF v{} LoRA adapter\n",
        path.display(),
        g.version()
    );
    s += &format!(
        "architecture:    {}\n",
        g.opt_str("general.architecture")?.unwrap_or("?")
    );
    s += &format!(
        "adapter type:    {}\n",
        g.opt_str("adapter.type")?.unwrap_or("?")
    );
    if let Some(al) = g.opt_f32("adapter.lora.alpha")? {
        s += &format!("lora alpha:      {al}\n");
    }
    let mut types: Vec<(&str, usize)> = Vec::new();
    for t in g.tensors() {
        match types.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some(c) => c.1 += 1,
            None => types.push((t.ty.name(), 1)),
        }
    }
    let types: Vec<String> = types.iter().map(|(n, c)| format!("{c} {n}")).collect();
    s += &format!(
        "tensors:         {} ({})\n",
        g.tensors().len(),
        types.join(", ")
    );
    s += "validate it against a model with: edge-run info -m MODEL --adapter FILE";
    Ok(Some(s))
}

// --- `edge-run bench` (the workload and measurements live in edge_run::bench) ---------------------
fn cmd_bench(a: BenchArgs) -> Result<(), Failure> {
    if a.n_prompt == 0 || a.n_gen == 0 || a.reps == 0 {
        return Err(usage("-p, -n and -r must be at least 1"));
    }
    let model = open_model(&a.m.model)?;
    let cfg = session_config(&model, &a.rt, false)?;
    let workload = edge_run::bench::Workload {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        reps: a.reps,
        adapters: a
            .rt
            .adapters
            .iter()
            .map(|s| parse_adapter_arg(s))
            .collect::<Result<_, _>>()?,
        ..Default::default()
    };
    let vs_model = if a.vs_llama_cpp {
        vs_llama_cpp::available()?;
        Some(model.clone())
    } else {
        None
    };
    let report = edge_run::bench::run(
        model,
        &cfg,
        &workload,
        a.compare_model.as_deref(),
        &mut |line| eprintln!("{line}"),
    )?;
    let vs = match &vs_model {
        Some(m) => Some(vs_llama_cpp::run(&a.m.model, m, &workload, &report)?),
        None => None,
    };
    outln!("{}", report.table());
    if let Some(v) = &vs {
        outln!("{}", v.table);
    }
    if a.json {
        match &vs {
            Some(v) => outln!("{}", v.json(&report.to_json())),
            None => outln!("{}", report.to_json()),
        }
    }
    Ok(())
}
// --- end `edge-run bench` ------------------------------------------------------------------------

// --- `edge-run bench --vs-llama-cpp` (feature `ggml`; the runner lives in edge_run::ggml) -----------
mod vs_llama_cpp {
    use super::Failure;
    use edge_run::bench::{Report, Workload};
    use edge_run::Model;
    use std::path::Path;

    /// llama.cpp's results next to edge-run's: a printable table and the JSON fields.
    #[cfg_attr(not(feature = "ggml"), allow(dead_code))]
    pub struct Vs {
        pub table: String,
        fields: Vec<(&'static str, f64)>,
    }

    impl Vs {
        /// edge-run's JSON object with `llamacpp_pp_tps`, `llamacpp_tg_tps`, `pp_ratio`, `tg_ratio` (base
        /// model) and, with adapters, `llamacpp_lora_pp_tps`, `llamacpp_lora_tg_tps`, `lora_pp_ratio`,
        /// `lora_tg_ratio` added.
        pub fn json(&self, edge_run_json: &str) -> String {
            let mut v: serde_json::Value =
                serde_json::from_str(edge_run_json).unwrap_or_else(|_| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                for (k, x) in &self.fields {
                    o.insert((*k).to_string(), serde_json::json!(x));
                }
            }
            v.to_string()
        }
    }

    /// Refuses `--vs-llama-cpp` up front in a build without llama.cpp.
    pub fn available() -> Result<(), Failure> {
        if cfg!(feature = "ggml") {
            Ok(())
        } else {
            Err(super::usage("--vs-llama-cpp needs edge-run built with `--features ggml` (llama.cpp in the same process)"))
        }
    }

    #[cfg(feature = "ggml")]
    pub fn run(path: &Path, model: &Model, w: &Workload, report: &Report) -> Result<Vs, Failure> {
        eprintln!(
            "llama.cpp (same process): {}",
            edge_run::ggml::system_info()
        );
        let lc = edge_run::ggml::bench_workload(
            path,
            &model.base_info,
            model.hp.n_vocab,
            w,
            report.threads,
        )?;
        let mut fields = vec![
            ("llamacpp_pp_tps", lc.base.pp_tps),
            ("llamacpp_tg_tps", lc.base.tg_tps),
            ("pp_ratio", report.base.pp_tps / lc.base.pp_tps),
            ("tg_ratio", report.base.tg_tps / lc.base.tg_tps),
        ];
        let mut table = format!(
            "| {:<28} | {:>10} | {:>10} | {:>12} | {:>12} |\n",
            "llama.cpp, same workload", "pp tok/s", "tg tok/s", "pp edge/lcpp", "tg edge/lcpp"
        );
        table += &format!(
            "| {:<28} | {:>10.1} | {:>10.1} | {:>12.2} | {:>12.2} |",
            "base", lc.base.pp_tps, lc.base.tg_tps, fields[2].1, fields[3].1
        );
        if let (Some(l), Some(e)) = (lc.lora, &report.lora) {
            let (pr, tr) = (e.speed.pp_tps / l.pp_tps, e.speed.tg_tps / l.tg_tps);
            table += &format!(
                "\n| {:<28} | {:>10.1} | {:>10.1} | {:>12.2} | {:>12.2} |",
                format!("+{} adapter(s)", e.n_adapters),
                l.pp_tps,
                l.tg_tps,
                pr,
                tr
            );
            fields.extend([
                ("llamacpp_lora_pp_tps", l.pp_tps),
                ("llamacpp_lora_tg_tps", l.tg_tps),
                ("lora_pp_ratio", pr),
                ("lora_tg_ratio", tr),
            ]);
        }
        Ok(Vs { table, fields })
    }

    #[cfg(not(feature = "ggml"))]
    pub fn run(_: &Path, _: &Model, _: &Workload, _: &Report) -> Result<Vs, Failure> {
        available()?;
        Err(super::usage("--vs-llama-cpp: llama.cpp is not built in"))
    }
}
// --- end `edge-run bench --vs-llama-cpp` ---------------------------------------------------------

fn sampling_params(g: &GenArgs) -> Result<SamplingParams, Failure> {
    let seed = g.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64).rotate_left(32)
    });
    let p = SamplingParams {
        temperature: g.temp,
        top_k: g.top_k,
        top_p: g.top_p,
        min_p: g.min_p,
        repeat_penalty: g.repeat_penalty,
        repeat_last_n: g.repeat_last_n,
        seed,
    };
    p.validate().map_err(|e| usage(e.to_string()))?;
    Ok(p)
}

fn cmd_generate(g: GenArgs) -> Result<(), Failure> {
    let Some(model_path) = g.model.clone() else {
        return Err(usage("no model given: use -m FILE (see --help)"));
    };
    let prompt = match (&g.prompt, &g.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f).map_err(|e| Failure(1, format!("{}: {e}", f.display())))?,
        ),
        (None, None) => None,
    };
    if prompt.is_none() && !g.chat {
        return Err(usage(
            "no prompt given: use -p TEXT, -f FILE, or --chat for an interactive chat",
        ));
    }
    let params = sampling_params(&g)?;
    let t0 = std::time::Instant::now();
    let model = open_model(&model_path)?;
    let cfg = session_config(&model, &g.rt, false)?;
    if !g.quiet {
        eprintln!(
            "edge-run: {} ({}, {} layers, {:.0} MiB mapped) in {:.0} ms; {} threads, {} kernels, context {}, seed {}",
            model_path.display(),
            model.arch,
            model.hp.n_layer,
            model.mapped_bytes() as f64 / 1048576.0,
            t0.elapsed().as_secs_f64() * 1e3,
            cfg.n_threads,
            cfg.kernels.unwrap_or_else(Kernels::best).tier.name(),
            cfg.n_ctx,
            params.seed
        );
    }
    let n_vocab = model.hp.n_vocab;
    let mut sess = Session::new(model.clone(), cfg)?;
    let adapters = apply_adapters(&mut sess, &g.rt.adapters)?;
    if !g.quiet {
        for (a, s) in &adapters {
            eprintln!(
                "edge-run: adapter {} (scale {s}, {} tensors)",
                a.path().display(),
                a.tensors().len()
            );
        }
    }
    let mut sampler = Sampler::new(params, n_vocab);
    let max_new = if g.n_predict < 0 {
        usize::MAX
    } else {
        g.n_predict as usize
    };

    match prompt {
        Some(p) => {
            let text = if g.chat {
                let mut msgs = Vec::new();
                if let Some(s) = &g.system {
                    msgs.push(ChatMessage::new("system", s.clone()));
                }
                msgs.push(ChatMessage::new("user", p));
                render_chat(&model, &msgs)?
            } else {
                p
            };
            let mut ids = Vec::new();
            if model.tokenizer.add_bos() && !g.chat {
                ids.extend(model.tokenizer.bos());
            }
            ids.extend(model.tokenizer.encode(&text, g.chat));
            if ids.is_empty() {
                return Err(usage("the prompt is empty"));
            }
            run_turn(&mut sess, &mut sampler, &ids, max_new, g.quiet)?;
            Ok(())
        }
        None => interactive_chat(&mut sess, &mut sampler, &g, max_new, adapters),
    }
}

fn render_chat(model: &Model, msgs: &[ChatMessage]) -> Result<String, Failure> {
    let tpl = model.chat_template.as_deref().ok_or_else(|| {
        Failure(
            1,
            format!(
                "{}: the model has no tokenizer.chat_template; --chat needs one",
                model.path().display()
            ),
        )
    })?;
    let tok = &model.tokenizer;
    let piece = |id: Option<u32>| {
        id.map(|i| String::from_utf8_lossy(tok.token_to_piece(i, true)).into_owned())
            .unwrap_or_default()
    };
    Ok(apply_chat_template(
        tpl,
        msgs,
        true,
        &piece(tok.bos()),
        &piece(tok.eos()),
    )?)
}

/// Evaluate `ids` and stream up to `max_new` sampled tokens to stdout. Returns the generated ids.
fn run_turn(
    sess: &mut Session,
    sampler: &mut Sampler,
    ids: &[u32],
    max_new: usize,
    quiet: bool,
) -> Result<Vec<u32>, Failure> {
    let model = sess.model().clone();
    let tok = &model.tokenizer;
    let room = sess.config().n_ctx - sess.n_past();
    if ids.len() > room {
        return Err(Failure(1, format!("the prompt has {} tokens but only {} fit in the context (size {}); use a larger -c", ids.len(), room, sess.config().n_ctx)));
    }
    let mut dec = StreamDecoder::new(false);
    let mut buf = String::new();
    let mut out = Vec::new();
    let stdout = std::io::stdout();
    let mut broken = false;
    let st = sess.generate(ids, max_new, sampler, |id| {
        out.push(id);
        buf.clear();
        dec.push(tok, id, &mut buf);
        let mut lock = stdout.lock();
        if lock
            .write_all(buf.as_bytes())
            .and_then(|_| lock.flush())
            .is_err()
        {
            broken = true; // stdout closed (e.g. piped into `head`): stop quietly
            return false;
        }
        true
    })?;
    buf.clear();
    dec.finish(&mut buf);
    if !broken {
        let mut lock = stdout.lock();
        let _ = lock
            .write_all(buf.as_bytes())
            .and_then(|_| lock.write_all(b"\n"))
            .and_then(|_| lock.flush());
    }
    if !quiet {
        let why = match st.stop {
            StopReason::MaxTokens => "token limit (-n)",
            StopReason::EndOfGeneration => "end of generation",
            StopReason::ContextFull => "context full (-c)",
            StopReason::Caller => "output closed",
        };
        eprintln!(
            "\nedge-run: prompt {} tokens in {:.0} ms ({:.1} tok/s); generated {} tokens in {:.0} ms ({:.1} tok/s); stopped: {why}",
            st.n_prompt,
            st.prompt_secs * 1e3,
            st.n_prompt as f64 / st.prompt_secs.max(1e-9),
            st.n_generated,
            st.gen_secs * 1e3,
            st.n_generated as f64 / st.gen_secs.max(1e-9)
        );
    }
    Ok(out)
}

fn interactive_chat(
    sess: &mut Session,
    sampler: &mut Sampler,
    g: &GenArgs,
    max_new: usize,
    mut adapters: Vec<(Arc<Adapter>, f32)>,
) -> Result<(), Failure> {
    let model = sess.model().clone();
    let mut msgs: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &g.system {
        msgs.push(ChatMessage::new("system", s.clone()));
    }
    eprintln!("edge-run chat: type a message and press Enter; /help for commands, /quit or Ctrl-D to leave.");
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Failure(1, format!("reading stdin: {e}"))),
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            match cmd.trim() {
                "quit" | "exit" => break,
                "reset" => {
                    msgs.retain(|m| m.role == "system");
                    sess.reset();
                    eprintln!("(context cleared)");
                }
                "help" => eprintln!("{CHAT_HELP}"),
                c if c == "adapters" || c.starts_with("adapter ") => {
                    match adapter_command(sess, &mut adapters, c) {
                        Ok(()) => {
                            if g.reeval_on_swap && c != "adapters" {
                                // Re-evaluate the conversation so far with the new adapter set.
                                sess.reset();
                                eprintln!("(context will be re-evaluated with the new adapters)");
                            }
                        }
                        Err(Failure(_, msg)) => eprintln!("edge-run: {msg} (adapters unchanged)"),
                    }
                }
                other => eprintln!("unknown command /{other}; /help lists commands"),
            }
            continue;
        }
        msgs.push(ChatMessage::new("user", text));
        // Re-render the whole conversation and evaluate only what the cache does not hold yet.
        let rendered = render_chat(&model, &msgs)?;
        let ids = model.tokenizer.encode(&rendered, true);
        let keep = sess.n_past().min(ids.len());
        sess.truncate(keep);
        let reply = match run_turn(sess, sampler, &ids[keep..], max_new, g.quiet) {
            Ok(r) => r,
            Err(Failure(_, msg)) => {
                eprintln!("edge-run: {msg}");
                msgs.pop();
                continue;
            }
        };
        msgs.push(ChatMessage::new(
            "assistant",
            model.tokenizer.decode_with(&reply, false),
        ));
        // The cache now holds prompt + reply without the end-of-turn markup; the next render re-evaluates
        // from where they differ.
        let rendered = render_chat(&model, &msgs)?;
        let all = model.tokenizer.encode(&rendered, true);
        let mut common = 0;
        let cached: Vec<u32> = ids.iter().chain(reply.iter()).copied().collect();
        while common < all.len() && common < cached.len() && all[common] == cached[common] {
            common += 1;
        }
        sess.truncate(common);
    }
    Ok(())
}

const CHAT_HELP: &str = "commands (between turns):
  /adapters                 list the active adapters
  /adapter add PATH[:S]     load an adapter and apply it with scale S (default 1)
  /adapter rm N             remove adapter N (as listed by /adapters)
  /adapter scale N S        change adapter N's scale
  /reset                    clear the conversation
  /quit                     leave
Adapter changes apply from the next token on; the conversation already in the KV cache stays as it was
computed unless edge-run was started with --reeval-on-swap.";

fn adapter_command(
    sess: &mut Session,
    adapters: &mut Vec<(Arc<Adapter>, f32)>,
    cmd: &str,
) -> Result<(), Failure> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let index = |w: Option<&&str>, n: usize| -> Result<usize, Failure> {
        let i: usize = w
            .ok_or_else(|| usage("missing adapter number"))?
            .parse()
            .map_err(|_| usage("adapter number must be an integer"))?;
        if i >= n {
            return Err(usage(format!("no adapter {i}: {n} active")));
        }
        Ok(i)
    };
    let mut next = adapters.clone();
    match words.as_slice() {
        ["adapters"] => {}
        ["adapter", "add", spec] => next.push(load_adapter(sess.model(), spec)?),
        ["adapter", "rm", ..] => {
            let i = index(words.get(2), next.len())?;
            next.remove(i);
        }
        ["adapter", "scale", _, s] => {
            let i = index(words.get(2), next.len())?;
            next[i].1 = s
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| usage(format!("bad scale `{s}`")))?;
        }
        _ => {
            return Err(usage(format!(
                "unknown adapter command `/{cmd}`; /help lists commands"
            )))
        }
    }
    let set: Vec<(&Arc<Adapter>, f32)> = next.iter().map(|(a, s)| (a, *s)).collect();
    sess.set_adapters(&set)?;
    *adapters = next;
    if adapters.is_empty() {
        eprintln!("(no adapters: base model)");
    }
    for (i, (a, s)) in adapters.iter().enumerate() {
        eprintln!(
            "  {i}: {} scale {s} ({} tensors)",
            a.path().display(),
            a.tensors().len()
        );
    }
    Ok(())
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
