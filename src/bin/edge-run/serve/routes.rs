//! One connection: read the request, check the key, route it, answer (or stream the answer).
use super::api::{self, Ident, Kind};
use super::http::{self, Request, Response};
use super::sched::{Event, Finish, Job};
use super::Server;
use crate::generate::render_chat;
use serde_json::{json, Map, Value};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn handle(srv: &Server, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let req = match http::read_request(&mut stream) {
        Ok(r) => r,
        Err(Some(resp)) => {
            srv.metrics.response("-", resp.status);
            http::send(&mut stream, &resp);
            return;
        }
        Err(None) => return,
    };
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let endpoint = if path.starts_with("/v1/adapters/") {
        "/v1/adapters/NAME"
    } else {
        path.as_str()
    };
    let endpoint = endpoint.to_string();
    let status = match route(srv, &req, &path, &mut stream) {
        Routed::Answer(r) => {
            http::send(&mut stream, &r);
            r.status
        }
        Routed::Streamed => 200,
    };
    let known = matches!(
        endpoint.as_str(),
        "/health"
            | "/metrics"
            | "/v1/models"
            | "/v1/adapters"
            | "/v1/adapters/NAME"
            | "/v1/chat/completions"
            | "/v1/completions"
    );
    srv.metrics
        .response(if known { &endpoint } else { "other" }, status);
}

enum Routed {
    Answer(Response),
    /// The response was written as a stream.
    Streamed,
}

fn authorized(srv: &Server, req: &Request) -> bool {
    let Some(key) = &srv.api_key else { return true };
    req.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k.trim() == key)
}

fn route(srv: &Server, req: &Request, path: &str, stream: &mut TcpStream) -> Routed {
    let m = req.method.as_str();
    if path != "/health" && !authorized(srv, req) {
        return Routed::Answer(Response::error(
            401,
            None,
            "missing or wrong API key: send `Authorization: Bearer KEY`",
        ));
    }
    let r = match (m, path) {
        ("GET", "/health") => Response::json(200, &json!({"status": "ok"})),
        ("GET", "/metrics") => {
            Response::text(200, "text/plain; version=0.0.4", srv.metrics.render())
        }
        ("GET", "/v1/models") => models(srv),
        ("GET", "/v1/adapters") => srv.list_adapters(),
        ("POST", "/v1/adapters") => match api::parse_body(&req.body) {
            Ok(b) => srv.post_adapter(&b),
            Err(r) => *r,
        },
        ("DELETE", p) if p.starts_with("/v1/adapters/") => {
            srv.delete_adapter(&p["/v1/adapters/".len()..])
        }
        ("POST", "/v1/chat/completions") => return complete(srv, req, Kind::Chat, stream),
        ("POST", "/v1/completions") => return complete(srv, req, Kind::Text, stream),
        (
            _,
            "/health"
            | "/metrics"
            | "/v1/models"
            | "/v1/adapters"
            | "/v1/chat/completions"
            | "/v1/completions",
        ) => Response::error(
            405,
            None,
            format!("method {} is not allowed on {path}", api::shorten(m)),
        ),
        _ => Response::error(
            404,
            None,
            format!("no endpoint {} {}", api::shorten(m), api::shorten(path)),
        ),
    };
    Routed::Answer(r)
}

fn models(srv: &Server) -> Response {
    let mut data =
        vec![json!({"id": srv.name, "object": "model", "created": 0, "owned_by": "edge-run"})];
    for n in srv.adapter_names() {
        data.push(
            json!({"id": format!("{}:{n}", srv.name), "object": "model", "created": 0,
                         "owned_by": "edge-run", "parent": srv.name}),
        );
    }
    Response::json(200, &json!({"object": "list", "data": data}))
}

/// The prompt's tokens: the chat template over `messages`, or `prompt` (after BOS when the model adds one).
fn prompt_tokens(
    srv: &Server,
    body: &Map<String, Value>,
    kind: Kind,
) -> Result<Vec<u32>, Box<Response>> {
    let tok = &srv.model.tokenizer;
    Ok(match kind {
        Kind::Chat => {
            let msgs = api::messages(body)?;
            let text = render_chat(&srv.model, &msgs).map_err(|f| {
                Box::new(Response::error(
                    400,
                    Some("messages"),
                    format!("chat template: {}", f.1),
                ))
            })?;
            tok.encode(&text, true)
        }
        Kind::Text => {
            let p = api::prompt_text(body)?;
            let mut ids: Vec<u32> = Vec::new();
            if tok.add_bos() {
                ids.extend(tok.bos());
            }
            ids.extend(tok.encode(&p, false));
            ids
        }
    })
}

/// A job from the request, or the refusal to send.
fn make_job(
    srv: &Server,
    body: &Map<String, Value>,
    kind: Kind,
    events: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
) -> Result<Job, Box<Response>> {
    let prompt = prompt_tokens(srv, body, kind)?;
    let field = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    if prompt.is_empty() {
        return Err(Box::new(Response::error(
            400,
            Some(field),
            format!("`{field}` gives no tokens"),
        )));
    }
    if prompt.len() >= srv.n_ctx {
        return Err(Box::new(Response::error(
            400,
            Some(field),
            format!(
                "`{field}` is {} tokens; the context holds {} (start the server with a larger -c)",
                prompt.len(),
                srv.n_ctx
            ),
        )));
    }
    let room = srv.n_ctx - prompt.len();
    let params = api::sampling(body)?;
    let max_tokens = api::max_tokens(body, room)?;
    let stops = api::stops(body)?;
    let adapters = api::adapters(srv, body)?;
    let ignore_eos = api::flag(body, "ignore_eos")?;
    let arrived = Instant::now();
    Ok(Job {
        prompt,
        params,
        max_tokens,
        stops,
        ignore_eos,
        adapters,
        deadline: arrived + srv.timeout,
        arrived,
        cancel,
        events,
    })
}

fn complete(srv: &Server, req: &Request, kind: Kind, stream: &mut TcpStream) -> Routed {
    let body = match api::parse_body(&req.body) {
        Ok(b) => b,
        Err(r) => return Routed::Answer(*r),
    };
    let streaming = match api::flag(&body, "stream") {
        Ok(s) => s,
        Err(r) => return Routed::Answer(*r),
    };
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = match make_job(srv, &body, kind, tx, cancel.clone()) {
        Ok(j) => j,
        Err(r) => return Routed::Answer(*r),
    };
    let n = srv.next_id.fetch_add(1, Ordering::Relaxed);
    let ident = Ident {
        kind,
        id: format!(
            "{}-{n}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&srv.name)
            .to_string(),
    };
    let n_prompt = job.prompt.len();
    if srv.queue.push(job).is_err() {
        return Routed::Answer(
            Response::error(
                503,
                None,
                "the server is busy: every slot and the queue are full",
            )
            .with_header("Retry-After", "1".into()),
        );
    }
    srv.metrics.add_prompt_tokens(n_prompt);
    if streaming {
        stream_answer(stream, &rx, &cancel, &ident, api::include_usage(&body));
        Routed::Streamed
    } else {
        Routed::Answer(whole_answer(stream, &rx, &cancel, &ident))
    }
}

/// Next event, watching the client: `None` when it has gone (the job is cancelled) or the worker dropped it.
fn next_event(
    stream: &TcpStream,
    rx: &mpsc::Receiver<Event>,
    cancel: &AtomicBool,
) -> Option<Event> {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => return Some(e),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                if http::peer_closed(stream) {
                    cancel.store(true, Ordering::Relaxed);
                    return None;
                }
            }
        }
    }
}

fn whole_answer(
    stream: &TcpStream,
    rx: &mpsc::Receiver<Event>,
    cancel: &AtomicBool,
    id: &Ident,
) -> Response {
    let mut text = String::new();
    loop {
        match next_event(stream, rx, cancel) {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(f)) => return Response::json(200, &api::full_response(id, &text, &f)),
            Some(Event::Failed(e)) => return Response::error(500, None, e),
            None => return Response::error(500, None, "generation stopped"),
        }
    }
}

fn stream_answer(
    stream: &mut TcpStream,
    rx: &mpsc::Receiver<Event>,
    cancel: &AtomicBool,
    id: &Ident,
    include_usage: bool,
) {
    let gone = |cancel: &AtomicBool| cancel.store(true, Ordering::Relaxed);
    if http::start_sse(stream).is_err() {
        return gone(cancel);
    }
    let mut first = true;
    loop {
        let ev = next_event(stream, rx, cancel);
        let (data, done): (String, Option<Finish>) = match ev {
            Some(Event::Text(t)) => (api::chunk(id, Some(&t), first, None).to_string(), None),
            Some(Event::Done(f)) => (
                api::chunk(id, if first { Some("") } else { None }, first, Some(&f)).to_string(),
                Some(f),
            ),
            Some(Event::Failed(e)) => {
                let _ = http::sse_event(
                    stream,
                    &json!({"error": {"message": e, "type": "server_error"}}).to_string(),
                );
                return;
            }
            None => return,
        };
        first = false;
        if http::sse_event(stream, &data).is_err() {
            return gone(cancel);
        }
        if let Some(f) = done {
            if include_usage {
                let _ = http::sse_event(stream, &api::usage_chunk(id, &f).to_string());
            }
            let _ = http::sse_event(stream, "[DONE]");
            return;
        }
    }
}
