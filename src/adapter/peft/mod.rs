//! Hugging Face PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! # `adapter_config.json` fields
//! Applied:
//! - `peft_type` (must be `"LORA"`), `r`, `lora_alpha`, `use_rslora` (scale `alpha/√r` instead of
//!   `alpha/r`), `rank_pattern` / `alpha_pattern` (per-module overrides; PEFT's `get_pattern_key`:
//!   the first key, in the file's order, such that `re.match(rf"(.*\.)?({key})$", module)` matches),
//! - `target_modules` (list: a module is targeted if its name equals an entry or ends with
//!   `"." + entry`; string: `re.fullmatch`; `"all-linear"`: every linear layer but the output head),
//!   `exclude_modules` (same matching, excluded), `layers_to_transform` (+ `layers_pattern`): every
//!   tensor in the file must belong to a module these select, else the load fails;
//! - `fan_in_fan_out`: PEFT's LoRA factors are `nn.Linear`s whose shapes (`A [r, in]`, `B [out, r]`)
//!   do not depend on it (it transposes only the *merged* delta, for GPT-2-style `Conv1D` bases), and
//!   for `nn.Linear` bases (every architecture edge-run runs) PEFT itself resets it to false. Shapes are
//!   checked against the base either way; a `true` value is reported in the summary.
//! Refused when not at their default (an error naming the field): `use_dora`, `bias` ≠ `"none"`,
//! `lora_bias`, `modules_to_save`, `trainable_token_indices`, `target_parameters`, `layer_replication`,
//! `alora_invocation_tokens`, `use_qalora`, `use_bdlora`, `arrow_config`, `kasa_config`,
//! `monteclora_config`, `velora_config`, `lora_ga_config`, `loftq_config` (non-empty: the base was
//! modified), `init_lora_weights` ∈ {pissa*, olora, corda, loftq, lora_ga} (these rewrite the base
//! weights), and any field this loader does not know whose value is not null / false / empty.
//! Inert (no effect on inference, accepted): `lora_dropout`, `inference_mode`, `task_type`,
//! `base_model_name_or_path`, `revision`, `peft_version`, `auto_mapping`, `megatron_config`,
//! `megatron_core`, `qalora_group_size` (only with `use_qalora`), `eva_config` / `corda_config`
//! (initialisation only; `corda` init itself is refused above), `ensure_weight_tying` (only acts on
//! `modules_to_save` / trainable tokens, both refused), `runtime_config`, and `init_lora_weights`
//! true / false / `"gaussian"` / `"eva"` / `"orthogonal"` (initialisation only).
use std::path::{Path, PathBuf};

use fancy_regex::Regex;
use serde_json::{Map, Value};

use super::safetensors::{self, Dtype};
use super::*;

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";

/// Fields whose value is read and applied.
const APPLIED: &[&str] = &[
    "peft_type",
    "r",
    "lora_alpha",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "fan_in_fan_out",
    "init_lora_weights",
    "bias",
    "loftq_config",
];
/// Fields that must be absent or null / false / empty (they change the math or the model).
const REFUSED_UNLESS_DEFAULT: &[&str] = &[
    "use_dora",
    "lora_bias",
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "velora_config",
    "lora_ga_config",
];
/// Fields without effect on inference.
const INERT: &[&str] = &[
    "lora_dropout",
    "inference_mode",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "auto_mapping",
    "megatron_config",
    "megatron_core",
    "qalora_group_size",
    "eva_config",
    "corda_config",
    "ensure_weight_tying",
    "runtime_config",
];

/// null, false, "", [], {} or 0.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

/// How `target_modules` / `exclude_modules` select modules.
enum Selector {
    None,
    List(Vec<String>),
    Regex(Regex),
    AllLinear,
}

impl Selector {
    fn parse(v: Option<&Value>, field: &str, cfg: &str) -> Result<Selector> {
        Ok(match v {
            None | Some(Value::Null) => Selector::None,
            Some(Value::String(s)) if s == "all-linear" && field == "target_modules" => {
                Selector::AllLinear
            }
            Some(Value::String(s)) => {
                Selector::Regex(Regex::new(&format!("^(?:{s})$")).map_err(|e| {
                    Error::format(
                        cfg,
                        field,
                        None,
                        format!("regex {s:?} does not compile: {e}"),
                    )
                })?)
            }
            Some(Value::Array(a)) => Selector::List(
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::format(cfg, field, None, "list entries must be strings")
                    })?,
            ),
            Some(other) => {
                return Err(Error::format(
                    cfg,
                    field,
                    None,
                    format!("expected a list or a string, found {other}"),
                ))
            }
        })
    }

    fn matches(&self, module: &str, is_head: bool) -> bool {
        match self {
            Selector::None => false,
            Selector::List(l) => l
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            Selector::Regex(r) => r.is_match(module).unwrap_or(false),
            Selector::AllLinear => !is_head && !module.ends_with("embed_tokens"),
        }
    }
}

/// HF module leaf names edge-run can map, and their GGUF tensor names.
const LEAVES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// A mapped module: GGUF target, layer, whether q/k (permuted), kind.
struct Mapped {
    target: String,
    layer: Option<usize>,
    perm_heads: Option<usize>,
    kind: LoraKind,
    is_head: bool,
}

/// Where a causal LM's decoder lives in PEFT module names: `model.` for `*ForCausalLM`
/// (`Gemma3ForCausalLM` too), `model.language_model.` for `Gemma3ForConditionalGeneration` (transformers
/// ≥ 4.52) and `language_model.model.` before that. The output head is `lm_head` or
/// `language_model.lm_head`.
/// (Longest first: `model.` is a prefix of the second.)
const DECODER_PREFIXES: &[&str] = &["model.language_model.", "language_model.model.", "model."];

/// `model.layers.N.self_attn.q_proj` → `blk.N.attn_q.weight` etc. The q/k rows are permuted only for
/// architectures whose GGUF permutes them ([`crate::model::Arch::permuted_qk`]: llama, not gemma3).
fn map_module(module: &str, base: &BaseInfo) -> Option<Mapped> {
    let permute = crate::model::Arch::from_name(&base.arch).is_some_and(|a| a.permuted_qk());
    let inner = DECODER_PREFIXES.iter().find_map(|p| module.strip_prefix(p));
    if inner == Some("embed_tokens") {
        return Some(Mapped {
            target: "token_embd.weight".into(),
            layer: None,
            perm_heads: None,
            kind: LoraKind::Embedding,
            is_head: false,
        });
    }
    if module == "lm_head" || module == "language_model.lm_head" {
        return Some(Mapped {
            target: "output.weight".into(),
            layer: None,
            perm_heads: None,
            kind: LoraKind::Linear,
            is_head: true,
        });
    }
    let rest = inner?.strip_prefix("layers.")?;
    let (n, leaf) = rest.split_once('.')?;
    let layer: usize = n.parse().ok()?;
    let (_, g) = LEAVES.iter().find(|(hf, _)| *hf == leaf)?;
    let perm_heads = match (*g, permute) {
        ("attn_q", true) => Some(base.n_head),
        ("attn_k", true) => Some(base.n_head_kv),
        _ => None,
    };
    Some(Mapped {
        target: format!("blk.{layer}.{g}.weight"),
        layer: Some(layer),
        perm_heads,
        kind: LoraKind::Linear,
        is_head: false,
    })
}

/// Known module leaf names (for checking list entries of `target_modules`).
fn known_leaf(entry: &str) -> bool {
    let last = entry.rsplit('.').next().unwrap_or(entry);
    matches!(
        last,
        "q_proj"
            | "k_proj"
            | "v_proj"
            | "o_proj"
            | "gate_proj"
            | "up_proj"
            | "down_proj"
            | "embed_tokens"
            | "lm_head"
    )
}

/// An ordered `{pattern: number}` object (`rank_pattern` / `alpha_pattern`).
struct Patterns {
    items: Vec<(String, Regex, f64)>,
}

impl Patterns {
    fn parse(field: &'static str, cfg: &Map<String, Value>, file: &str) -> Result<Patterns> {
        let obj = match cfg.get(field) {
            None | Some(Value::Null) => return Ok(Patterns { items: vec![] }),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(Error::format(
                    file,
                    field,
                    None,
                    format!("expected an object, found {other}"),
                ))
            }
        };
        // PEFT tries the keys in the file's order, which serde_json's `preserve_order` keeps.
        let mut items = vec![];
        for (k, v) in obj {
            let v = Some(v)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    Error::format(
                        file,
                        format!("{field}[{k:?}]"),
                        None,
                        format!("expected a positive number, found {:?}", obj.get(k)),
                    )
                })?;
            let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).map_err(|e| {
                Error::format(
                    file,
                    format!("{field}[{k:?}]"),
                    None,
                    format!("pattern does not compile: {e}"),
                )
            })?;
            items.push((k.clone(), re, v));
        }
        Ok(Patterns { items })
    }

    /// The value of the first pattern matching `module`, with its key.
    fn lookup(&self, module: &str) -> Option<(&str, f64)> {
        self.items
            .iter()
            .find(|(_, re, _)| re.is_match(module).unwrap_or(false))
            .map(|(k, _, v)| (k.as_str(), *v))
    }
}

/// Resolves the config and weights paths.
fn paths(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_dir() {
        Ok((path.join(CONFIG), path.join(WEIGHTS)))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok((dir.join(CONFIG), path.to_path_buf()))
    }
}

/// Integer field (JSON integer, or a float with an integral value).
fn get_usize(cfg: &Map<String, Value>, key: &str, file: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::format(
                    file,
                    key,
                    None,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
    }
}

pub(super) fn load(path: &Path, base: &BaseInfo) -> Result<Adapter> {
    let (cfg_path, st_path) = paths(path)?;
    let cfg = Config::read(&cfg_path)?;
    let st_name = st_path.display().to_string();
    let map = MappedFile::open(&st_path)?;
    let st = safetensors::parse(&map, &st_name)?;
    let modules = pair_factors(&st, &st_name)?;
    let mut tensors = vec![];
    for (module, pair) in &modules {
        tensors.push(cfg.lora_tensor(module, pair, base, &map, &st_name)?);
    }
    let root = if path.is_dir() {
        path.to_path_buf()
    } else {
        st_path.clone()
    };
    Adapter::new(&root, AdapterFormat::Peft, tensors, cfg.notes)
}

/// A module's two factors in the safetensors file.
struct Pair<'t> {
    a: Option<&'t safetensors::Tensor>,
    b: Option<&'t safetensors::Tensor>,
    embedding: bool,
}

/// Groups the file's tensors by module: `base_model.model.<module>.lora_{A,B}` (or
/// `lora_embedding_{A,B}`), each factor once.
fn pair_factors<'t>(
    st: &'t [safetensors::Tensor],
    st_name: &str,
) -> Result<std::collections::BTreeMap<String, Pair<'t>>> {
    let mut modules: std::collections::BTreeMap<String, Pair> = Default::default();
    for t in st {
        let rest = t.name.strip_prefix("base_model.model.").ok_or_else(|| {
            Error::format(
                st_name,
                &t.name,
                None,
                "tensor name does not start with `base_model.model.` (not a PEFT LoRA checkpoint?)",
            )
        })?;
        let rest = rest.strip_suffix(".weight").unwrap_or(rest);
        let (module, which, emb) = if let Some(m) = rest.strip_suffix(".lora_A") {
            (m, 'A', false)
        } else if let Some(m) = rest.strip_suffix(".lora_B") {
            (m, 'B', false)
        } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
            (m, 'A', true)
        } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
            (m, 'B', true)
        } else {
            return Err(Error::unsupported(
                st_name,
                format!("tensor {:?} is not a LoRA A/B factor (DoRA magnitude, bias or a saved module?)", t.name),
            ));
        };
        let e = modules.entry(module.to_string()).or_insert(Pair {
            a: None,
            b: None,
            embedding: emb,
        });
        if e.embedding != emb {
            return Err(Error::format(
                st_name,
                &t.name,
                None,
                "mixes lora_embedding_* and lora_* factors for one module",
            ));
        }
        let slot = if which == 'A' { &mut e.a } else { &mut e.b };
        if slot.replace(t).is_some() {
            return Err(Error::format(st_name, &t.name, None, "duplicate factor"));
        }
    }
    Ok(modules)
}

/// `adapter_config.json`, checked and resolved.
struct Config {
    /// The file, as errors name it.
    name: String,
    r: usize,
    alpha: f64,
    rslora: bool,
    ranks: Patterns,
    alphas: Patterns,
    targets: Selector,
    excludes: Selector,
    layers: Option<Vec<usize>>,
    /// For the adapter's summary.
    notes: Vec<String>,
}

impl Config {
    /// Reads the config: every field known and at a value edge-run implements, then the values.
    fn read(path: &Path) -> Result<Config> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let val: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&name, "(json)", None, format!("not valid JSON: {e}")))?;
        let cfg = val
            .as_object()
            .ok_or_else(|| Error::format(&name, "(json)", None, "not a JSON object"))?;
        check_fields(cfg, &name)?;
        let mut notes = vec![];
        let r = get_usize(cfg, "r", &name)?.unwrap_or(8);
        if r == 0 {
            return Err(Error::format(&name, "r", None, "rank 0"));
        }
        let alpha = match cfg.get("lora_alpha") {
            None | Some(Value::Null) => 8.0,
            Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                Error::format(
                    &name,
                    "lora_alpha",
                    None,
                    format!("expected a number, found {v}"),
                )
            })?,
        };
        let rslora = match cfg.get("use_rslora") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(Error::format(
                    &name,
                    "use_rslora",
                    None,
                    format!("expected a bool, found {v}"),
                ))
            }
        };
        if cfg.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            notes.push("fan_in_fan_out: true (no effect on nn.Linear LoRA factors; PEFT resets it for such layers)".to_string());
        }
        let ranks = Patterns::parse("rank_pattern", cfg, &name)?;
        let alphas = Patterns::parse("alpha_pattern", cfg, &name)?;
        let (targets, excludes) = selectors(cfg, &name)?;
        let layers = layers(cfg, &name)?;
        notes.push(format!(
            "lora_alpha {alpha}, r {r}, use_rslora {rslora}{}{}",
            if ranks.items.is_empty() {
                String::new()
            } else {
                format!(", rank_pattern {} keys", ranks.items.len())
            },
            if alphas.items.is_empty() {
                String::new()
            } else {
                format!(", alpha_pattern {} keys", alphas.items.len())
            }
        ));
        Ok(Config {
            name,
            r,
            alpha,
            rslora,
            ranks,
            alphas,
            targets,
            excludes,
            layers,
            notes,
        })
    }

    /// The LoRA of one module: its GGUF target, selected by the config, shapes matching the base, rank
    /// and scale from the config, factors read (q/k `B` rows permuted, embedding `A` transposed).
    fn lora_tensor(
        &self,
        module: &str,
        pair: &Pair<'_>,
        base: &BaseInfo,
        map: &Arc<MappedFile>,
        st_name: &str,
    ) -> Result<LoraTensor> {
        let (Some(ta), Some(tb)) = (pair.a, pair.b) else {
            return Err(Error::format(
                st_name,
                module,
                None,
                "has only one of the LoRA factors A and B",
            ));
        };
        let m = map_module(module, base).ok_or_else(|| {
            Error::unsupported(
                st_name,
                format!(
                    "module {module:?} has no GGUF counterpart edge-run knows (tensor {:?})",
                    ta.name
                ),
            )
        })?;
        if (m.kind == LoraKind::Embedding) != pair.embedding {
            return Err(Error::format(
                st_name,
                &ta.name,
                None,
                "embedding factors on a linear module, or linear factors on the embedding",
            ));
        }
        self.check_selected(module, &m, st_name)?;
        if let Some(n) = m.layer {
            if n >= base.n_layer {
                return Err(Error::format(
                    st_name,
                    &ta.name,
                    None,
                    format!("layer {n} but the base model has {} layers", base.n_layer),
                ));
            }
        }
        let (rank, n_in, n_out) = factor_shapes(ta, tb, &m, module, base, st_name)?;
        let scale = self.scale(module, rank)?;
        let a = load_factor(
            map,
            ta,
            st_name,
            |v| match m.kind {
                LoraKind::Linear => Ok(v),
                LoraKind::Embedding => Ok(transpose(&v, rank, n_in)),
            },
            m.kind == LoraKind::Linear,
        )?;
        let b = load_factor(
            map,
            tb,
            st_name,
            |v| match m.perm_heads {
                None => Ok(v),
                Some(h) => permute_rows(&v, n_out, rank, h).ok_or_else(|| {
                    Error::invalid(format!(
                        "{st_name}: {}: cannot permute {n_out} rows into {h} heads of rotary pairs",
                        tb.name
                    ))
                }),
            },
            m.perm_heads.is_none(),
        )?;
        Ok(LoraTensor {
            target: m.target,
            kind: m.kind,
            rank,
            n_in,
            n_out,
            scale,
            a,
            b,
        })
    }

    /// Would PEFT have wrapped this module? `target_modules` selects it, `exclude_modules` does not,
    /// `layers_to_transform` includes its layer.
    fn check_selected(&self, module: &str, m: &Mapped, st_name: &str) -> Result<()> {
        let cfg_name = &self.name;
        if !self.targets.matches(module, m.is_head) {
            return Err(Error::format(
                cfg_name,
                "target_modules",
                None,
                format!("does not select module {module:?}, which has LoRA tensors in {st_name}"),
            ));
        }
        if self.excludes.matches(module, m.is_head) {
            return Err(Error::format(
                cfg_name,
                "exclude_modules",
                None,
                format!("excludes module {module:?}, which has LoRA tensors"),
            ));
        }
        if let Some(l) = &self.layers {
            if !m.layer.is_some_and(|n| l.contains(&n)) {
                return Err(Error::format(
                    cfg_name,
                    "layers_to_transform",
                    None,
                    format!("does not include module {module:?}, which has LoRA tensors"),
                ));
            }
        }
        Ok(())
    }

    /// `alpha/r` (rsLoRA `alpha/√r`) for `module`, after checking its rank against the config's
    /// (`rank_pattern` first, then `r`); alpha from `alpha_pattern`, else `lora_alpha`.
    fn scale(&self, module: &str, rank: usize) -> Result<f32> {
        let (cfg_r, r_src) = match self.ranks.lookup(module) {
            Some((k, v)) => (v, format!("rank_pattern[{k:?}]")),
            None => (self.r as f64, "r".to_string()),
        };
        if cfg_r != rank as f64 {
            return Err(Error::format(
                &self.name,
                r_src,
                None,
                format!("says rank {cfg_r} for module {module:?} but its tensors have rank {rank}"),
            ));
        }
        let a_mod = self.alphas.lookup(module).map_or(self.alpha, |(_, v)| v);
        Ok(if self.rslora {
            a_mod / (rank as f64).sqrt()
        } else {
            a_mod / rank as f64
        } as f32)
    }
}

/// The fields of the config that must be known and at a value edge-run implements.
fn check_fields(cfg: &Map<String, Value>, cfg_name: &str) -> Result<()> {
    match cfg.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(Error::unsupported(
                cfg_name,
                format!("peft_type is {other:?}; only \"LORA\" is supported"),
            ))
        }
    }
    for &k in REFUSED_UNLESS_DEFAULT {
        if let Some(v) = cfg.get(k) {
            if !is_default(v) {
                return Err(Error::unsupported(
                    cfg_name,
                    format!(
                        "field `{k}` = {v} changes the computation; edge-run does not implement it"
                    ),
                ));
            }
        }
    }
    match cfg.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(v) => {
            return Err(Error::unsupported(
                cfg_name,
                format!("field `bias` = {v}: LoRA biases are not supported (only \"none\")"),
            ))
        }
    }
    if let Some(v) = cfg.get("loftq_config") {
        if !is_default(v) {
            return Err(Error::unsupported(
                cfg_name,
                format!(
                    "field `loftq_config` = {v}: LoftQ adapters need LoftQ's modified base weights"
                ),
            ));
        }
    }
    match cfg.get("init_lora_weights") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "gaussian" | "eva" | "orthogonal") => {}
        Some(v) => {
            return Err(Error::unsupported(
                cfg_name,
                format!("field `init_lora_weights` = {v}: this initialisation rewrites the base weights (PiSSA/OLoRA/CorDA/LoftQ/LoRA-GA); convert the adapter to a plain LoRA first"),
            ))
        }
    }
    for (k, v) in cfg {
        let known = APPLIED.contains(&k.as_str())
            || REFUSED_UNLESS_DEFAULT.contains(&k.as_str())
            || INERT.contains(&k.as_str());
        if !known && !is_default(v) {
            return Err(Error::unsupported(
                cfg_name,
                format!("unknown field `{k}` = {v}: refusing rather than ignoring it"),
            ));
        }
    }
    Ok(())
}

/// `target_modules` (required; list entries must be modules edge-run can adapt) and
/// `exclude_modules`.
fn selectors(cfg: &Map<String, Value>, cfg_name: &str) -> Result<(Selector, Selector)> {
    let targets = Selector::parse(cfg.get("target_modules"), "target_modules", cfg_name)?;
    if matches!(targets, Selector::None) {
        return Err(Error::format(
            cfg_name,
            "target_modules",
            None,
            "missing: cannot tell which modules the adapter targets",
        ));
    }
    if let Selector::List(l) = &targets {
        if let Some(bad) = l.iter().find(|t| !known_leaf(t)) {
            return Err(Error::unsupported(
                cfg_name,
                format!("target_modules entry {bad:?} is not a module edge-run can adapt (q/k/v/o_proj, gate/up/down_proj, embed_tokens, lm_head)"),
            ));
        }
    }
    let excludes = Selector::parse(cfg.get("exclude_modules"), "exclude_modules", cfg_name)?;
    Ok((targets, excludes))
}

/// `layers_to_transform` (an integer or a list), with `layers_pattern` naming this model's layers.
fn layers(cfg: &Map<String, Value>, cfg_name: &str) -> Result<Option<Vec<usize>>> {
    let layers: Option<Vec<usize>> = match cfg.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::format(
                        cfg_name,
                        "layers_to_transform",
                        None,
                        "entries must be non-negative integers",
                    )
                })?,
        ),
        Some(v) => Some(vec![v.as_u64().ok_or_else(|| {
            Error::format(
                cfg_name,
                "layers_to_transform",
                None,
                format!("expected an integer or a list, found {v}"),
            )
        })? as usize]),
    };
    match cfg.get("layers_pattern") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "layers" => {}
        Some(Value::Array(a)) if a.iter().any(|x| x.as_str() == Some("layers")) => {}
        Some(v) if is_default(v) => {}
        Some(v) => {
            return Err(Error::unsupported(
                cfg_name,
                format!("layers_pattern = {v}: this model's layers are `model.layers.N`"),
            ))
        }
    }
    Ok(layers)
}

/// Rank, `n_in` and `n_out` of a module's factors, checked: both 2-D, one rank, and the base
/// tensor's shape. Linear: A [r, in], B [out, r]. Embedding: A [r, vocab], B [dim, r].
fn factor_shapes(
    ta: &safetensors::Tensor,
    tb: &safetensors::Tensor,
    m: &Mapped,
    module: &str,
    base: &BaseInfo,
    st_name: &str,
) -> Result<(usize, usize, usize)> {
    let bad_dims = |t: &safetensors::Tensor| {
        Error::format(
            st_name,
            format!("{}.shape", t.name),
            None,
            format!("{:?} is not 2-D", t.shape),
        )
    };
    if ta.shape.len() != 2 {
        return Err(bad_dims(ta));
    }
    if tb.shape.len() != 2 {
        return Err(bad_dims(tb));
    }
    let (rank, n_in) = (ta.shape[0], ta.shape[1]);
    let (n_out, rank_b) = (tb.shape[0], tb.shape[1]);
    if rank != rank_b || rank == 0 {
        return Err(Error::format(
            st_name,
            format!("{}.shape", tb.name),
            None,
            format!(
                "rank mismatch: A {:?} has rank {rank}, B {:?} has rank {rank_b}",
                ta.shape, tb.shape
            ),
        ));
    }
    let (ne0, ne1) = base.target_shape(&m.target).ok_or_else(|| {
        Error::invalid(format!("{st_name}: module {module:?} maps to base tensor {:?}, which the base model does not have", m.target))
    })?;
    let want = match m.kind {
        LoraKind::Linear => (ne0, ne1),
        LoraKind::Embedding => (ne1, ne0),
    };
    if (n_in, n_out) != want {
        return Err(Error::format(
            st_name,
            format!("{}.shape", ta.name),
            None,
            format!(
                "shape mismatch: A {:?} / B {:?} give n_in {n_in}, n_out {n_out}, but base tensor {} is {ne0}x{ne1} (ne0 x ne1) so expects n_in {}, n_out {}",
                ta.shape, tb.shape, m.target, want.0, want.1
            ),
        ));
    }
    Ok((rank, n_in, n_out))
}

/// Reads one factor as fp16: in place when F16, aligned and `in_place_ok`; otherwise decoded,
/// checked finite, transformed by `post` and converted. Reports the first NaN/Inf by source index.
fn load_factor(
    map: &Arc<MappedFile>,
    t: &safetensors::Tensor,
    file: &str,
    post: impl FnOnce(Vec<u16>) -> Result<Vec<u16>>,
    in_place_ok: bool,
) -> Result<Halves> {
    let bytes = &map[t.start..t.start + t.len];
    let n = t.numel();
    let src = match t.dtype {
        Dtype::F32 => Src::F32,
        Dtype::F16 => Src::F16,
        Dtype::Bf16 => Src::Bf16,
    };
    let vals = decode(src, bytes, n);
    if let Some(i) = first_non_finite(&vals) {
        return Err(non_finite_err(file, &t.name, i, vals[i]));
    }
    if src == Src::F16 && in_place_ok {
        if let Some(h) = Halves::mapped(map, t.start, n) {
            return Ok(h);
        }
    }
    let h = to_f16(&vals, file, &t.name)?;
    Ok(Halves::Owned(post(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_keys_keep_file_order() {
        let text = r#"{"r": 8, "rank_pattern": {"z\"q": 4, "a": 2, "m": 2}, "alpha_pattern": {}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let cfg = v.as_object().unwrap();
        let keys =
            |p: Patterns| -> Vec<String> { p.items.into_iter().map(|(k, _, _)| k).collect() };
        assert_eq!(
            keys(Patterns::parse("rank_pattern", cfg, "cfg").unwrap()),
            vec!["z\"q", "a", "m"]
        );
        assert!(keys(Patterns::parse("alpha_pattern", cfg, "cfg").unwrap()).is_empty());
        assert!(keys(Patterns::parse("nope", cfg, "cfg").unwrap()).is_empty());
        // A value that is not a positive number names its key.
        let v: Value = serde_json::from_str(r#"{"rank_pattern": {"q": {"x": [1, "}"]}}}"#).unwrap();
        let e = Patterns::parse("rank_pattern", v.as_object().unwrap(), "cfg")
            .err()
            .unwrap();
        assert!(e.to_string().contains("rank_pattern[\"q\"]"), "{e}");
    }

    #[test]
    fn pattern_lookup_is_peft_suffix_match_first_wins() {
        let text = r#"{"rank_pattern": {"layers.1.self_attn.q_proj": 4, "q_proj": 16, "k_.*": 2}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let p = Patterns::parse("rank_pattern", v.as_object().unwrap(), "cfg").unwrap();
        assert_eq!(
            p.lookup("model.layers.1.self_attn.q_proj").map(|x| x.1),
            Some(4.0)
        );
        // "layers.1..." must match at a dot boundary: layer 11 does not match the first key.
        assert_eq!(
            p.lookup("model.layers.11.self_attn.q_proj").map(|x| x.1),
            Some(16.0)
        );
        assert_eq!(
            p.lookup("model.layers.3.self_attn.k_proj").map(|x| x.1),
            Some(2.0)
        );
        assert_eq!(p.lookup("model.layers.3.self_attn.v_proj"), None);
        // Not a suffix: "q_pro" does not match q_proj.
        let text = r#"{"rank_pattern": {"q_pro": 4}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let p = Patterns::parse("rank_pattern", v.as_object().unwrap(), "cfg").unwrap();
        assert_eq!(p.lookup("model.layers.0.self_attn.q_proj"), None);
    }
}
