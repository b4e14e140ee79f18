//! The command line: every subcommand's flags (llama.cpp-style names), parsed by clap.
use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_run::kernels::QuantType;
use edge_run::session::{ActQuant, KvType};
use std::ffi::OsString;
use std::path::PathBuf;

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
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub gen: GenArgs,
    /// More log output on stderr (-v: info, -vv: debug). EDGE_RUN_LOG=debug does the same.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
    /// Re-quantize a GGUF model with llama.cpp's own quantizer (llama-quantize's file types and per-tensor
    /// choices), e.g. to benchmark against llama.cpp on a Q4_0 file (needs a build with `--features ggml`).
    Quantize(QuantizeArgs),
    /// Serve the model over HTTP with an OpenAI-compatible API (chat and text completions, streaming,
    /// per-request adapter stacks, adapters loaded and unloaded at run time). Needs a build with
    /// `--features serve`.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
#[command(mut_arg("adapters", |a| a
    .value_name("NAME=PATH[:SCALE]")
    .help("Load an adapter under NAME (requests pick it as \"model\": \"BASE:NAME\" or in \"adapters\"), \
           with its default scale after a colon (1.0). Repeatable. Not applied unless a request asks")))]
pub struct ServeArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// The only directory POST /v1/adapters may load adapters from (without it, run-time loading is off).
    #[arg(long = "adapter-dir", value_name = "DIR")]
    pub adapter_dir: Option<PathBuf>,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port (0: any free port; the chosen one is printed on stderr).
    #[arg(long, value_name = "N", default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded at the same time, each in its own slot (a session with its own KV cache of -c tokens).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a slot; more get 503 with Retry-After.
    #[arg(long = "queue", value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take from arrival to its last token; then it ends with finish_reason "length".
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// Require `Authorization: Bearer KEY` on every /v1 endpoint and /metrics (401 otherwise).
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Option<String>,
    /// The model name the API reports (default: the model file's name without .gguf).
    #[arg(long = "alias", value_name = "NAME")]
    pub alias: Option<String>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// The GGUF file to write (written beside itself first, then renamed: an existing file is replaced
    /// only by a complete one).
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// llama-quantize's file type: F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum AdapterCmd {
    /// Convert a LoRA adapter (PEFT directory / safetensors, or GGUF) to a llama.cpp-layout GGUF
    /// adapter (fp16) with each tensor's true scale (alpha/r, rsLoRA alpha/sqrt(r), alpha_pattern,
    /// rank_pattern) folded into lora_b and adapter.lora.alpha = 0, so llama.cpp and edge-run apply it
    /// identically.
    Convert(AdapterConvertArgs),
}

#[derive(Args, Debug)]
pub struct AdapterConvertArgs {
    /// The adapter to convert: a PEFT directory, its adapter_model.safetensors, or a GGUF adapter.
    #[arg(value_name = "ADAPTER")]
    pub input: PathBuf,
    #[command(flatten)]
    pub m: ModelArg,
    /// The GGUF file to write.
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// A LoRA adapter to fold in (GGUF, or PEFT directory / safetensors), with an optional user scale.
    /// Repeat to merge several.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]", required = true)]
    pub adapters: Vec<String>,
    /// The GGUF file to write (never one of the inputs; written to OUT.partial, then renamed).
    #[arg(short = 'o', long = "output", value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Type of the merged weights (`same`: each tensor's own). K-quants on rows not a multiple of 256
    /// fall back like llama.cpp.
    #[arg(
        long = "type",
        value_name = "TYPE",
        value_enum,
        default_value = "same",
        ignore_case = true
    )]
    pub ty: MergeType,
    /// Threads for the merge arithmetic (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// Print the report as one JSON object (the last stdout line) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// A LoRA adapter with an optional user scale. Repeat: each one alone, each prefix of the stack and
    /// the whole stack are measured.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]", required = true)]
    pub adapters: Vec<String>,
    /// The probe text (default: a built-in few-KB mix of prose, chat and code).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Use at most this many tokens of the probe text.
    #[arg(long = "max-tokens", value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Print one JSON object (the last stdout line) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of KL vs the base against the number of stacked adapters.
    #[arg(long, value_name = "OUT.svg")]
    pub plot: Option<PathBuf>,
    /// Worker threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// Prompt tokens evaluated as one batch (pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Tokens decoded one at a time after the prompt (tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions; the best is reported.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Also run the same workload (without adapters) on this model file, e.g. the adapters merged into
    /// the base, and print its speed and the ratio to the run with adapters.
    #[arg(long = "compare-model", value_name = "FILE")]
    pub compare_model: Option<PathBuf>,
    /// Also run the identical workload (prompt tokens, counts, threads, adapters) in llama.cpp in this
    /// process and print the speed ratios edge-run / llama.cpp (needs a build with `--features ggml`).
    #[arg(long = "vs-llama-cpp")]
    pub vs_llama_cpp: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct ModelArg {
    /// Path of the GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    pub model: PathBuf,
}

/// The sizes of a session: threads, context, batch and the KV cache's types.
#[derive(Args, Debug)]
pub struct SizeArgs {
    /// Worker threads (default: the number of physical cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// Context size in tokens (KV cache length); default: min(4096, the model's training context).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Tokens per forward pass when evaluating a prompt.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 64
    )]
    pub batch_size: usize,
    #[command(flatten)]
    pub kv: KvArgs,
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub size: SizeArgs,
    /// Kernel tier to use instead of the best one this CPU supports.
    #[arg(long, value_name = "TIER", value_enum)]
    pub kernels: Option<TierArg>,
    /// Activation quantization for the integer dot products.
    #[arg(
        long = "act-quant",
        value_name = "MODE",
        value_enum,
        default_value = "q8x2"
    )]
    pub act_quant: ActQuantArg,
    /// Apply a LoRA adapter: a llama.cpp GGUF adapter or a PEFT directory / adapter_model.safetensors,
    /// detected from the content. Optional user scale after a colon (default 1.0). Repeat to stack
    /// up to 8 adapters.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    pub adapters: Vec<String>,
    /// Add a control vector (llama.cpp GGUF file of `direction.N` tensors) to the residual stream
    /// after each block it covers, scale 1. Repeat to sum several.
    #[arg(long = "control-vector", value_name = "FILE")]
    pub control_vectors: Vec<PathBuf>,
    /// Add a control vector times SCALE. Repeat to sum several.
    #[arg(
        long = "control-vector-scaled",
        value_names = ["FILE", "SCALE"],
        num_args = 2,
        allow_hyphen_values = true
    )]
    pub control_vectors_scaled: Vec<String>,
    /// Apply control vectors only after blocks START..=END (block indices; ≤ 0: the first / last
    /// block that has a direction).
    #[arg(
        long = "control-vector-layer-range",
        value_names = ["START", "END"],
        num_args = 2,
        allow_hyphen_values = true
    )]
    pub control_vector_layer_range: Option<Vec<String>>,
}

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Path of the GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Prompt text.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    pub file: Option<PathBuf>,
    /// Number of tokens to generate (-1: until end of generation or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    pub n_predict: i64,
    /// Apply the model's chat template (tokenizer.chat_template) to the prompt. Without -p/-f: interactive chat.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Sampling temperature; 0 means greedy.
    #[arg(long = "temp", value_name = "T", default_value_t = 0.8)]
    pub temp: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long = "top-k", value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1.0: off).
    #[arg(long = "top-p", value_name = "P", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0.0: off).
    #[arg(long = "min-p", value_name = "P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1.0: off).
    #[arg(long = "repeat-penalty", value_name = "X", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long = "repeat-last-n", value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: a fresh one, printed on stderr). The same seed gives the same text.
    #[arg(short = 's', long = "seed", value_name = "N")]
    pub seed: Option<u64>,
    /// Don't print load information and timings on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// When the context (-c) is full, keep the first N tokens of the prompt (after BOS; -1: the whole
    /// prompt), drop half of the rest and go on (context shift: the keys that move are re-rotated for
    /// their new positions). Default: the chat's system prompt with --chat, else BOS only.
    #[arg(long = "keep", value_name = "N", allow_negative_numbers = true)]
    pub keep: Option<i64>,
    /// Stop when the context is full instead of shifting it.
    #[arg(long = "no-context-shift")]
    pub no_context_shift: bool,
    /// In --chat, re-evaluate the conversation after /adapter changes (by default the KV cache keeps what
    /// was computed with the previous adapters and only new tokens see the change).
    #[arg(long = "reeval-on-swap")]
    pub reeval_on_swap: bool,
    /// Reuse and keep the evaluated prompt in FILE: if FILE exists, restore the state saved in it, keep
    /// the longest common prefix of its tokens and the prompt and evaluate only the rest (nothing at all
    /// when the prompt is the same); after the prompt, save the state to FILE (through FILE.tmp) when
    /// anything new was evaluated. FILE records the model, the KV cache types and the adapters with their
    /// scales; one saved with others, or a corrupt one, is an error and is left as it is.
    #[arg(long = "prompt-cache", value_name = "FILE")]
    pub prompt_cache: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// The text to tokenize.
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub text: Option<String>,
    /// Tokenize the content of this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// Comma-separated token ids, e.g. 1,9690,198 (a JSON array is accepted too).
    #[arg(long, value_name = "IDS")]
    pub tokens: String,
    /// Output .npy file.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub m: ModelArg,
    /// Also load and describe these adapters against the model (format, ranks, alpha, scales, targets, bytes).
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    pub adapters: Vec<String>,
    /// The session whose memory is shown.
    #[command(flatten)]
    pub size: SizeArgs,
}

/// `--act-quant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActQuantArg {
    /// One 8-bit pass, as llama.cpp (fastest).
    Q8,
    /// 8-bit plus its 8-bit residual: two passes over the same weights, ~100x less rounding error.
    Q8x2,
}

impl From<ActQuantArg> for ActQuant {
    fn from(a: ActQuantArg) -> ActQuant {
        match a {
            ActQuantArg::Q8 => ActQuant::Q8,
            ActQuantArg::Q8x2 => ActQuant::Q8x2,
        }
    }
}

/// `--cache-type-k`, `--cache-type-v` (`-ctk`, `-ctv`).
#[derive(Args, Debug, Clone, Copy)]
pub struct KvArgs {
    /// How the KV cache stores keys (also -ctk): f16 halves the f32 cache, q8_0 halves it again.
    #[arg(
        long = "cache-type-k",
        value_name = "TYPE",
        value_enum,
        default_value = "f16"
    )]
    pub cache_type_k: KvTypeArg,
    /// How the KV cache stores values (also -ctv).
    #[arg(
        long = "cache-type-v",
        value_name = "TYPE",
        value_enum,
        default_value = "f16"
    )]
    pub cache_type_v: KvTypeArg,
}

impl KvArgs {
    /// The (key, value) cache types.
    pub fn types(self) -> (KvType, KvType) {
        (self.cache_type_k.into(), self.cache_type_v.into())
    }
}

/// A KV cache type by its llama.cpp name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvTypeArg {
    /// 4 bytes per value (exact).
    F32,
    /// 2 bytes per value.
    F16,
    /// 34 bytes per 32 values (8-bit with an f16 scale per block).
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<KvTypeArg> for KvType {
    fn from(a: KvTypeArg) -> KvType {
        match a {
            KvTypeArg::F32 => KvType::F32,
            KvTypeArg::F16 => KvType::F16,
            KvTypeArg::Q8_0 => KvType::Q8_0,
        }
    }
}

/// llama.cpp's multi-letter short flags, which clap has no form for, as their long names:
/// `-ctk` → `--cache-type-k`, `-ctv` → `--cache-type-v` (also `-ctk=TYPE`).
pub fn llama_cpp_short_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const SHORT: [(&str, &str); 2] = [("-ctk", "--cache-type-k"), ("-ctv", "--cache-type-v")];
    args.into_iter()
        .map(|a| {
            let Some(s) = a.to_str() else { return a };
            for (short, long) in SHORT {
                if s == short {
                    return long.into();
                }
                if let Some(v) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                    return format!("{long}={v}").into();
                }
            }
            a
        })
        .collect()
}

/// `--kernels`: the kernel tiers by name (whether this CPU runs one is checked when it is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TierArg {
    Scalar,
    Avx2,
    Avx512vnni,
    Neon,
    NeonDotprod,
}

impl TierArg {
    /// The name the kernels crate gives the tier.
    pub fn name(self) -> &'static str {
        match self {
            TierArg::Scalar => "scalar",
            TierArg::Avx2 => "avx2",
            TierArg::Avx512vnni => "avx512vnni",
            TierArg::Neon => "neon",
            TierArg::NeonDotprod => "neon-dotprod",
        }
    }
}

/// `merge --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MergeType {
    Same,
    F32,
    F16,
    Bf16,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q6_k")]
    Q6K,
}

impl MergeType {
    /// The weight type to write; `None` for `same` (each tensor's own).
    pub fn quant_type(self) -> Option<QuantType> {
        use QuantType::*;
        Some(match self {
            MergeType::Same => return None,
            MergeType::F32 => F32,
            MergeType::F16 => F16,
            MergeType::Bf16 => BF16,
            MergeType::Q4_0 => Q4_0,
            MergeType::Q4_1 => Q4_1,
            MergeType::Q5_0 => Q5_0,
            MergeType::Q5_1 => Q5_1,
            MergeType::Q8_0 => Q8_0,
            MergeType::Q4K => Q4K,
            MergeType::Q5K => Q5K,
            MergeType::Q6K => Q6K,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_type_names_parse() {
        for v in MergeType::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(MergeType::from_str(&name, true), Ok(*v), "{name}");
            // Every type but `same` names a type merge can write, under its own name.
            match v.quant_type() {
                None => assert_eq!(name, "same"),
                Some(t) => assert_eq!(t.name().to_ascii_lowercase(), name),
            }
        }
        assert_eq!(MergeType::from_str("Q4_K", true), Ok(MergeType::Q4K));
        assert!(MergeType::from_str("q3_k", true).is_err());
    }

    #[test]
    fn tier_names_are_the_kernels_crate_names() {
        let names: Vec<&str> = TierArg::value_variants().iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            ["scalar", "avx2", "avx512vnni", "neon", "neon-dotprod"]
        );
        for t in TierArg::value_variants() {
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.name());
        }
        for k in edge_run::kernels::Kernels::available() {
            assert!(names.contains(&k.tier.name()), "{}", k.tier.name());
        }
    }
}
