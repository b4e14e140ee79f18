//! The OpenAI request fields: parsed and checked into a [`Job`]'s parts, every refusal naming the field
//! and the value; and the response bodies (whole and streamed chunks) in OpenAI's shapes.
use super::http::Response;
use super::sched::{Finish, UseAdapter};
use super::Server;
use edge_run::chat::ChatMessage;
use edge_run::SamplingParams;
use serde_json::{json, Map, Value};

/// A refusal: the response to send.
pub type Refused = Box<Response>;

fn bad(param: &str, msg: String) -> Refused {
    Box::new(Response::error(400, Some(param), msg))
}

/// The JSON text of `v`, shortened for messages.
fn show(v: &Value) -> String {
    shorten(&v.to_string())
}

/// `s`, cut after 80 bytes (at a character boundary) with an ellipsis.
pub fn shorten(s: &str) -> String {
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// The request body as a JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, Refused> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(Response::error(
            400,
            None,
            format!("request body is not valid JSON: {e}"),
        ))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Box::new(Response::error(
            400,
            None,
            format!("request body must be a JSON object, got {}", show(&other)),
        ))),
    }
}

fn number(req: &Map<String, Value>, field: &str) -> Result<Option<f64>, Refused> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(bad(
            field,
            format!("`{field}` must be a number, got {}", show(v)),
        )),
    }
}

fn integer(req: &Map<String, Value>, field: &str) -> Result<Option<i64>, Refused> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
        Some(v) => Err(bad(
            field,
            format!("`{field}` must be an integer, got {}", show(v)),
        )),
    }
}

fn in_range(field: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, Refused> {
    match v {
        None => Ok(default as f32),
        Some(x) if (lo..=hi).contains(&x) => Ok(x as f32),
        Some(x) => Err(bad(
            field,
            format!(
                "`{field}` must be in [{lo}, {hi}], got {}",
                show(&Value::from(x))
            ),
        )),
    }
}

/// A boolean field (`stream`, `ignore_eos`): false when absent.
pub fn flag(req: &Map<String, Value>, field: &str) -> Result<bool, Refused> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(
            field,
            format!("`{field}` must be a boolean, got {}", show(v)),
        )),
    }
}

/// Whether `stream_options.include_usage` asks for a usage chunk.
pub fn include_usage(req: &Map<String, Value>) -> bool {
    req.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `temperature`, `top_p`, `seed` (and llama-server's `top_k`, `min_p`, `repeat_penalty`); `n` must be 1.
pub fn sampling(req: &Map<String, Value>) -> Result<SamplingParams, Refused> {
    if let Some(n) = integer(req, "n")? {
        if n != 1 {
            return Err(bad("n", format!("only `n` = 1 is supported, got {n}")));
        }
    }
    let temperature = in_range("temperature", number(req, "temperature")?, 0.0, 2.0, 1.0)?;
    let top_p = in_range("top_p", number(req, "top_p")?, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(bad("top_p", "`top_p` must be > 0, got 0".into()));
    }
    let min_p = in_range("min_p", number(req, "min_p")?, 0.0, 1.0, 0.0)?;
    let repeat_penalty = in_range(
        "repeat_penalty",
        number(req, "repeat_penalty")?,
        0.01,
        10.0,
        1.0,
    )?;
    let top_k = match integer(req, "top_k")? {
        None => 0,
        Some(k) if k >= 0 => k as usize,
        Some(k) => return Err(bad("top_k", format!("`top_k` must be ≥ 0, got {k}"))),
    };
    let seed = match integer(req, "seed")? {
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    Ok(SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n: 64,
        seed,
    })
}

/// `max_tokens` (or `max_completion_tokens`), capped by the room the prompt leaves in the context.
pub fn max_tokens(req: &Map<String, Value>, room: usize) -> Result<usize, Refused> {
    let field = if req.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    match integer(req, field)? {
        None => Ok(room),
        Some(n) if n >= 1 => Ok((n as u64).min(room as u64) as usize),
        Some(n) => Err(bad(field, format!("`{field}` must be ≥ 1, got {n}"))),
    }
}

/// `stop`: a string or up to 4 strings.
pub fn stops(req: &Map<String, Value>) -> Result<Vec<String>, Refused> {
    let list = match req.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(bad(
                    "stop",
                    format!("`stop` entries must be strings, got {}", show(v)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(bad(
                "stop",
                format!(
                    "`stop` must be a string or an array of at most 4 strings, got {}",
                    show(v)
                ),
            ))
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `messages`: role and content (a string, or text parts) of each.
pub fn messages(req: &Map<String, Value>) -> Result<Vec<ChatMessage>, Refused> {
    let Some(Value::Array(list)) = req.get("messages") else {
        return Err(bad(
            "messages",
            match req.get("messages") {
                None => "`messages` is required".into(),
                Some(v) => format!("`messages` must be an array, got {}", show(v)),
            },
        ));
    };
    if list.is_empty() {
        return Err(bad("messages", "`messages` is empty".into()));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            bad(
                &field,
                format!("`{field}.role` must be a string in {}", show(m)),
            )
        })?;
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(bad(
                                &field,
                                format!(
                                    "`{field}.content` parts must be {{\"type\": \"text\", \"text\": …}}, got {}",
                                    show(p)
                                ),
                            ))
                        }
                    }
                }
                s
            }
            Some(v) => {
                return Err(bad(
                    &field,
                    format!("`{field}.content` must be a string, got {}", show(v)),
                ))
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

/// `prompt` of a text completion: a string (or an array holding one string).
pub fn prompt_text(req: &Map<String, Value>) -> Result<String, Refused> {
    match req.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        None => Err(bad("prompt", "`prompt` is required".into())),
        Some(v) => Err(bad(
            "prompt",
            format!("`prompt` must be a string, got {}", show(v)),
        )),
    }
}

/// The adapter set a request asks for: `"model": "BASE:NAME"`, then `adapters` ({name, scale}) and
/// llama-server's `lora` ({id, scale}), in that order.
pub fn adapters(srv: &Server, req: &Map<String, Value>) -> Result<Vec<UseAdapter>, Refused> {
    let mut set = Vec::new();
    match req.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) => {
            if m != &srv.name {
                let name = m
                    .strip_prefix(&srv.name)
                    .and_then(|r| r.strip_prefix(':'))
                    .ok_or_else(|| not_found("model", format!("model {m:?} not found: this server has {:?} and its adapters as \"{}:NAME\"", srv.name, srv.name)))?;
                set.push(srv.adapter_by_name(name, None).ok_or_else(|| {
                    not_found(
                        "model",
                        format!("model {m:?}: no adapter named {name:?} is loaded"),
                    )
                })?);
            }
        }
        Some(v) => {
            return Err(bad(
                "model",
                format!("`model` must be a string, got {}", show(v)),
            ))
        }
    }
    for (field, key) in [("adapters", "name"), ("lora", "id")] {
        let list = match req.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(v) => {
                return Err(bad(
                    field,
                    format!("`{field}` must be an array, got {}", show(v)),
                ))
            }
        };
        for (i, e) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let scale = match e.get("scale") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(s) if s.is_finite() && s.abs() <= 1e4 => Some(s as f32),
                    _ => return Err(bad(&at, format!("`{at}.scale` {n} is out of range"))),
                },
                Some(v) => {
                    return Err(bad(
                        &at,
                        format!("`{at}.scale` must be a number, got {}", show(v)),
                    ))
                }
            };
            let found = match (key, e.get(key)) {
                ("name", Some(Value::String(n))) => srv.adapter_by_name(n, scale),
                ("id", Some(Value::Number(n))) => {
                    n.as_u64().and_then(|id| srv.adapter_by_id(id, scale))
                }
                (_, v) => {
                    let got = v.map(show).unwrap_or_else(|| "nothing".into());
                    let want = if key == "name" {
                        "a string"
                    } else {
                        "an integer"
                    };
                    return Err(bad(&at, format!("`{at}.{key}` must be {want}, got {got}")));
                }
            };
            set.push(found.ok_or_else(|| {
                not_found(
                    &at,
                    format!("`{at}.{key}` {}: no such adapter is loaded", show(&e[key])),
                )
            })?);
        }
    }
    if set.len() > edge_run::adapter::MAX_ADAPTERS {
        return Err(bad(
            "adapters",
            format!(
                "{} adapters requested; at most {} can be stacked",
                set.len(),
                edge_run::adapter::MAX_ADAPTERS
            ),
        ));
    }
    Ok(set)
}

fn not_found(param: &str, msg: String) -> Refused {
    Box::new(Response::error(404, Some(param), msg))
}

/// What kind of completion a request is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// The identity of one response (the same in every chunk of a stream).
pub struct Ident {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// The whole (non-streamed) response.
pub fn full_response(id: &Ident, text: &str, f: &Finish) -> Value {
    let choice = match id.kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": f.reason,
        }),
        Kind::Text => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": f.reason,
        }),
    };
    json!({
        "id": id.id,
        "object": if id.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": id.created,
        "model": id.model,
        "choices": [choice],
        "usage": usage(f),
    })
}

/// One streamed chunk: `text` (with the role in the first chat chunk), or the finish with its usage.
pub fn chunk(id: &Ident, text: Option<&str>, first: bool, finish: Option<&Finish>) -> Value {
    let choice = match id.kind {
        Kind::Chat => {
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "logprobs": null,
                   "finish_reason": finish.map(|f| f.reason)})
        }
        Kind::Text => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                             "finish_reason": finish.map(|f| f.reason)}),
    };
    let mut v = json!({
        "id": id.id,
        "object": if id.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": id.created,
        "model": id.model,
        "choices": [choice],
    });
    if let Some(f) = finish {
        v["usage"] = usage(f);
    }
    v
}

/// The usage-only chunk `stream_options.include_usage` asks for (no choices).
pub fn usage_chunk(id: &Ident, f: &Finish) -> Value {
    json!({
        "id": id.id,
        "object": if id.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": id.created,
        "model": id.model,
        "choices": [],
        "usage": usage(f),
    })
}
