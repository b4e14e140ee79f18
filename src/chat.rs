//! Chat templates: render a GGUF `tokenizer.chat_template` (Hugging Face Jinja) with `minijinja`.
//!
//! The environment matches what Hugging Face transformers gives templates: `trim_blocks` and
//! `lstrip_blocks` on, loop controls (`break`/`continue`), Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()` … via `minijinja-contrib`'s pycompat), `raise_exception(msg)`,
//! `strftime_now(fmt)` (UTC) and a `tojson` filter that writes what Python's `json.dumps` writes
//! (`", "` / `": "` separators, non-ASCII kept, optional `indent`).
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

use crate::{Error, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool` …
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "tokenizer.chat_template";

/// The chat template stored in a GGUF file, if any.
pub fn chat_template_from_gguf<'a>(g: &crate::gguf::Gguf<'a>) -> Result<Option<&'a str>> {
    g.opt_str(TEMPLATE_NAME)
}

/// Render `template` for `messages`. `add_generation_prompt` asks the template to open the assistant's
/// turn. `bos_token` / `eos_token` are the token texts templates may print.
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let src = guard_namespace_sets(template);
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // A template comes from the model file: bound the work it may do (real chat templates need a few
    // thousand steps per message; nested loops over huge ranges would otherwise hang `--chat`).
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter(PLAIN_FILTER, plain_copy);
    let tmpl = env
        .template_from_named_str(TEMPLATE_NAME, &src)
        .map_err(template_error)?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut map = std::collections::BTreeMap::new();
            map.insert("role".to_string(), Value::from(m.role.as_str()));
            map.insert("content".to_string(), Value::from(m.content.as_str()));
            Value::from(map)
        })
        .collect();
    let ctx = minijinja::context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    tmpl.render(ctx).map_err(template_error)
}

/// The filter [`guard_namespace_sets`] inserts (a name no real template uses).
const PLAIN_FILTER: &str = "__edge_run_plain_copy";

/// Rewrites every namespace attribute assignment `{% set ns.attr = EXPR %}` into
/// `{% set ns.attr = (EXPR) | __edge_run_plain_copy %}`.
///
/// Namespaces are the only mutable values in a template, so assigning one into itself (directly, inside a
/// list or dict, or through another namespace) is the only way a template can build a cycle; minijinja
/// then recurses without end when it prints or compares the value (a stack overflow that aborts the
/// process: found by fuzzing) and leaks the cycle. Storing a plain snapshot instead makes cycles
/// impossible and changes nothing for real templates, which store strings, numbers and booleans. An
/// assignment whose expression contains `%}` in a string literal is cut there and the template fails to
/// parse: an error, not a crash.
fn guard_namespace_sets(template: &str) -> std::borrow::Cow<'_, str> {
    static RE: std::sync::OnceLock<fancy_regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        fancy_regex::Regex::new(
            r"(?s)\{%([-+]?)\s*set\s+([A-Za-z_][A-Za-z0-9_]*\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)\s*=(.*?)([-+]?)%\}",
        )
        .expect("constant regex")
    });
    re.replace_all(template, |c: &fancy_regex::Captures<'_>| {
        let g = |i| c.get(i).map_or("", |m| m.as_str());
        format!(
            "{{%{} set {} = ({}) | {PLAIN_FILTER} {}%}}",
            g(1),
            g(2),
            g(3),
            g(4)
        )
    })
}

/// A deep copy of `v` with every map (namespaces included) and sequence rebuilt as plain data.
fn plain_copy(v: Value) -> std::result::Result<Value, minijinja::Error> {
    fn copy(
        v: &Value,
        depth: usize,
        budget: &mut usize,
    ) -> std::result::Result<Value, minijinja::Error> {
        let too_big = || {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "value assigned to a namespace is too large or too deeply nested",
            )
        };
        if depth > 64 {
            return Err(too_big());
        }
        match v.kind() {
            minijinja::value::ValueKind::Map | minijinja::value::ValueKind::Seq => {
                let is_map = v.kind() == minijinja::value::ValueKind::Map;
                let mut items = Vec::new();
                for k in v.try_iter()? {
                    *budget = budget.checked_sub(1).ok_or_else(too_big)?;
                    if is_map {
                        let val = v.get_item(&k)?;
                        items.push((k, copy(&val, depth + 1, budget)?));
                    } else {
                        items.push((Value::UNDEFINED, copy(&k, depth + 1, budget)?));
                    }
                }
                Ok(if is_map {
                    items.into_iter().collect()
                } else {
                    items.into_iter().map(|(_, v)| v).collect()
                })
            }
            _ => Ok(v.clone()),
        }
    }
    copy(&v, 0, &mut 100_000)
}

/// Instructions a chat template may execute per rendering.
const TEMPLATE_FUEL: u64 = 5_000_000;

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = format!("{TEMPLATE_NAME}: {}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    Error::invalid(msg)
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the current UTC time, formatted with the common strftime directives.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// strftime over a Unix time (UTC). Supports %Y %y %m %d %e %j %H %I %M %S %p %b %B %a %A %%.
pub fn strftime(fmt: &str, unix_secs: i64) -> std::result::Result<String, minijinja::Error> {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + u32::from(is_leap && m > 2);
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", if hh % 12 == 0 { 12 } else { hh % 12 })),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("sort_keys")?; // maps are already key-ordered
    kwargs.assert_all_used()?;
    let j = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&j, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        J::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> Result<String> {
        apply_chat_template(
            t,
            &[
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "yo"),
            ],
            false,
            "<s>",
            "</s>",
        )
    }

    #[test]
    fn namespaces_work_as_in_jinja() {
        let t = "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{%- set ns.n = ns.n + 1 -%}{% endfor %}{{ ns.found }} {{ ns.n }}";
        assert_eq!(render(t).unwrap(), "True 2"); // printed as Python's Jinja prints it
        let t = "{% set ns = namespace(s='') %}{% for m in messages %}{%+ set ns.s = ns.s ~ m.content %}{% endfor %}[{{ ns.s }}]";
        assert_eq!(render(t).unwrap(), "[hiyo]");
    }

    #[test]
    fn a_namespace_assigned_into_itself_renders_a_snapshot_instead_of_recursing() {
        // Each of these built a reference cycle that minijinja printed until the stack overflowed.
        for t in [
            "{% set ns = namespace(x=0) %}{% set ns.x = ns %}{{ ns.x }}|{{ ns }}",
            "{% set ns = namespace(x=0) %}{% set ns.x = [ns, {'a': ns}] %}{{ ns }}",
            "{% set a = namespace(v=1) %}{% set b = namespace(w=a) %}{% set a.v = b %}{{ a }}{{ b }}{{ a == b }}",
            "{% set ns = namespace(x=0) %}{% for i in range(3) %}{% set ns.x = ns %}{% endfor %}{{ ns | tojson }}",
        ] {
            let out = render(t).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert!(!out.is_empty(), "{t}");
        }
        let out = render("{% set ns = namespace(x=0) %}{% set ns.x = ns %}{{ ns.x.x }}").unwrap();
        assert_eq!(
            out, "0",
            "the snapshot holds the value the namespace had when it was assigned"
        );
    }

    #[test]
    fn rewrite_keeps_whitespace_control_and_leaves_other_sets_alone() {
        let t = "{%- set ns.a = 1 + 2 -%}{% set x = 3 %}{%+set  n . b=x%}";
        let r = guard_namespace_sets(t);
        assert_eq!(
            r,
            format!("{{%- set ns.a = ( 1 + 2 ) | {PLAIN_FILTER} -%}}{{% set x = 3 %}}{{%+ set n . b = (x) | {PLAIN_FILTER} %}}")
        );
    }
}
