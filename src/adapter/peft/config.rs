//! `adapter_config.json`: which fields are applied, refused unless at their default, or inert; the
//! module selectors (`target_modules`, `exclude_modules`, `layers_to_transform`) and the ordered
//! `rank_pattern` / `alpha_pattern`, resolved into a [`Config`].
use std::path::Path;

use fancy_regex::Regex;
use serde_json::{Map, Value};

use super::Mapped;
use crate::error::{Error, Result};

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
    "alora_invocation_tokens",
    "fan_in_fan_out",
    "init_lora_weights",
    "bias",
    "loftq_config",
    "use_dora",
    "modules_to_save",
    "ensure_weight_tying",
];
/// Fields that must be absent or null / false / empty (they change the math or the model).
const REFUSED_UNLESS_DEFAULT: &[&str] = &[
    "lora_bias",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
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
            Some(other) => return Err(unexpected(cfg, field, "a list or a string", other)),
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
            | "qkv_proj"
            | "gate_up_proj"
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
            Some(other) => return Err(unexpected(file, field, "an object", other)),
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

/// The error for a JSON field of `file` that holds the wrong kind of value: "expected `expected`,
/// found `found`".
pub(crate) fn unexpected(
    file: &str,
    field: impl Into<String>,
    expected: &str,
    found: &Value,
) -> Error {
    Error::format(
        file,
        field,
        None,
        format!("expected {expected}, found {found}"),
    )
}

/// Integer field (JSON integer, or a float with an integral value).
fn get_usize(cfg: &Map<String, Value>, key: &str, file: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| unexpected(file, key, "a non-negative integer", v)),
    }
}

/// The bool at `key`; false when it is absent or null.
fn get_bool(cfg: &Map<String, Value>, key: &str, file: &str) -> Result<bool> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(unexpected(file, key, "a bool", v)),
    }
}

/// `adapter_config.json`, checked and resolved.
pub(super) struct Config {
    /// The file, as errors name it.
    name: String,
    r: usize,
    alpha: f64,
    rslora: bool,
    /// `use_dora`: every module carries a magnitude vector.
    pub(super) dora: bool,
    ranks: Patterns,
    alphas: Patterns,
    targets: Selector,
    excludes: Selector,
    layers: Option<Vec<usize>>,
    /// `alora_invocation_tokens` (an aLoRA), not yet checked against the vocabulary.
    pub(super) invocation: Option<Vec<u32>>,
    /// `modules_to_save` entries (each names `embed_tokens` or `lm_head`).
    pub(super) saved: Vec<String>,
    /// `ensure_weight_tying`: a replaced embedding also replaces a tied head.
    pub(super) tie_saved: bool,
    /// For the adapter's summary.
    pub(super) notes: Vec<String>,
}

impl Config {
    /// Reads the config: every field known and at a value edge-run implements, then the values.
    pub(super) fn read(path: &Path) -> Result<Config> {
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
            Some(v) => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| unexpected(&name, "lora_alpha", "a number", v))?,
        };
        let rslora = get_bool(cfg, "use_rslora", &name)?;
        let dora = get_bool(cfg, "use_dora", &name)?;
        if cfg.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            notes.push("fan_in_fan_out: true (no effect on nn.Linear LoRA factors; PEFT resets it for such layers)".to_string());
        }
        let ranks = Patterns::parse("rank_pattern", cfg, &name)?;
        let alphas = Patterns::parse("alpha_pattern", cfg, &name)?;
        let (targets, excludes) = selectors(cfg, &name)?;
        let layers = layers(cfg, &name)?;
        let invocation =
            crate::adapter::alora::from_peft(cfg.get("alora_invocation_tokens"), &name)?;
        if dora && invocation.is_some() {
            return Err(Error::format(
                &name,
                "use_dora",
                None,
                "true with alora_invocation_tokens: a DoRA gain scales whole output rows, which an \
                 activated LoRA must leave as the base's before its invocation"
                    .to_string(),
            ));
        }
        let saved = saved_modules(cfg, &name)?;
        let tie_saved = get_bool(cfg, "ensure_weight_tying", &name)?;
        notes.push(format!(
            "lora_alpha {alpha}, r {r}, use_rslora {rslora}, use_dora {dora}{}{}",
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
            dora,
            ranks,
            alphas,
            targets,
            excludes,
            layers,
            invocation,
            saved,
            tie_saved,
            notes,
        })
    }

    /// Would PEFT have wrapped this module? `target_modules` selects it, `exclude_modules` does not,
    /// `layers_to_transform` includes its layer.
    pub(super) fn check_selected(&self, module: &str, m: &Mapped, st_name: &str) -> Result<()> {
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
    pub(super) fn scale(&self, module: &str, rank: usize) -> Result<f32> {
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

/// `modules_to_save`: null or a list of module names, each `embed_tokens` or `lm_head` (optionally
/// with the decoder's prefix, e.g. `model.embed_tokens`); any other module is refused by name.
fn saved_modules(cfg: &Map<String, Value>, file: &str) -> Result<Vec<String>> {
    let list = match cfg.get("modules_to_save") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(unexpected(
                file,
                "modules_to_save",
                "a list of module names",
                v,
            ))
        }
    };
    let mut out = vec![];
    for v in list {
        let Some(m) = v.as_str() else {
            return Err(unexpected(
                file,
                "modules_to_save",
                "module names (strings)",
                v,
            ));
        };
        let leaf = m.rsplit('.').next().unwrap_or(m);
        if leaf != "embed_tokens" && leaf != "lm_head" {
            return Err(Error::unsupported(
                file,
                format!("field `modules_to_save` lists {m:?}; edge-run replaces only `embed_tokens` and `lm_head`"),
            ));
        }
        out.push(m.to_string());
    }
    Ok(out)
}

impl Config {
    /// Whether `modules_to_save` lists the embedding.
    pub(super) fn saves_embedding(&self) -> bool {
        self.saved.iter().any(|e| e.ends_with("embed_tokens"))
    }

    /// Whether `modules_to_save` selects `module` (equal to an entry or ending in `.` + entry).
    pub(super) fn saves(&self, module: &str) -> bool {
        self.saved.iter().any(|e| {
            module == e
                || module
                    .strip_suffix(e.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
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
    // `Unsupported` (message `why(value)`) if field `k` is present with other than a default value.
    let refuse_unless_default = |k: &str, why: &dyn Fn(&Value) -> String| match cfg.get(k) {
        Some(v) if !is_default(v) => Err(Error::unsupported(cfg_name, why(v))),
        _ => Ok(()),
    };
    for &k in REFUSED_UNLESS_DEFAULT {
        refuse_unless_default(k, &|v| {
            format!("field `{k}` = {v} changes the computation; edge-run does not implement it")
        })?;
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
    refuse_unless_default("loftq_config", &|v| {
        format!("field `loftq_config` = {v}: LoftQ adapters need LoftQ's modified base weights")
    })?;
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
        Some(v) => Some(vec![v
            .as_u64()
            .ok_or_else(|| unexpected(cfg_name, "layers_to_transform", "an integer or a list", v))?
            as usize]),
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
