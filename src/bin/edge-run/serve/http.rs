//! HTTP/1.1 over blocking `std::net` sockets: one request per connection (every response says
//! `Connection: close`), heads parsed by `httparse`, bodies only with `Content-Length`. Limits: a head of
//! at most 16 KiB that must arrive within [`HEAD_DEADLINE`] (a client trickling its headers is cut off),
//! a body of at most [`MAX_BODY`] (413 before any of it is read).
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
const MAX_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 64;
/// Time a client has to send the request head, and then the body.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);

pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response that ends the exchange: status and JSON body (or text with its content type).
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, v: &Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            extra: Vec::new(),
        }
    }
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
            extra: Vec::new(),
        }
    }
    /// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
    pub fn error(status: u16, param: Option<&str>, message: impl Into<String>) -> Response {
        let ty = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            403 => "permission_error",
            400 | 405 | 408 | 409 | 411 | 413 | 431 => "invalid_request_error",
            503 => "server_busy",
            _ => "server_error",
        };
        let code = match (status, param) {
            (404, Some("model")) => Value::from("model_not_found"),
            _ => Value::Null,
        };
        Response::json(
            status,
            &json!({"error": {"message": message.into(), "type": ty, "param": param, "code": code}}),
        )
    }
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.extra.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes `r` and closes the exchange (errors: the client is gone, nothing to do).
pub fn send(stream: &mut TcpStream, r: &Response) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (n, v) in &r.extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(&r.body))
        .and_then(|_| stream.flush());
}

/// Starts a server-sent-events response; events follow with [`sse_event`].
pub fn start_sse(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n",
    )?;
    stream.flush()
}

/// One `data:` event.
pub fn sse_event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes())?;
    stream.flush()
}

/// Whether the peer has closed its side (a read would return end of file) without blocking.
pub fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Reads one request. `Err` is the response to send instead (`None`: the client left, send nothing).
pub fn read_request(stream: &mut TcpStream) -> Result<Request, Option<Response>> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(Response::error(
                431,
                None,
                format!("request head larger than {MAX_HEAD} bytes"),
            )));
        }
        read_some(stream, &mut buf, start, "request head")?;
    };
    if head_len > MAX_HEAD {
        return Err(Some(Response::error(
            431,
            None,
            format!("request head larger than {MAX_HEAD} bytes"),
        )));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Some(Response::error(400, None, "incomplete request head")))
        }
        Err(e) => {
            return Err(Some(Response::error(
                400,
                None,
                format!("malformed request head: {e}"),
            )))
        }
    }
    let method = req.method.unwrap_or("").to_string();
    let path = req.path.unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let mut r = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    r.body = read_body(stream, &r, buf.split_off(head_len), start)?;
    Ok(r)
}

fn read_body(
    stream: &mut TcpStream,
    r: &Request,
    mut body: Vec<u8>,
    start: Instant,
) -> Result<Vec<u8>, Option<Response>> {
    if r.header("transfer-encoding").is_some() {
        return Err(Some(Response::error(
            411,
            Some("Transfer-Encoding"),
            "chunked request bodies are not accepted: send Content-Length",
        )));
    }
    // Two different lengths make the body's end ambiguous (a request-smuggling vector): refused.
    let first = r.header("content-length").unwrap_or("");
    let other = r
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("content-length") && v != first);
    if let Some((_, other)) = other {
        return Err(Some(Response::error(
            400,
            Some("Content-Length"),
            format!("conflicting Content-Length headers {first:?} and {other:?}"),
        )));
    }
    let len = match r.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| {
            Some(Response::error(
                400,
                Some("Content-Length"),
                format!("Content-Length {v:?} is not a byte count"),
            ))
        })?,
    };
    if len > MAX_BODY {
        return Err(Some(Response::error(
            413,
            None,
            format!("request body of {len} bytes is larger than the limit of {MAX_BODY} bytes"),
        )));
    }
    while body.len() < len {
        read_some(stream, &mut body, start, "request body")?;
    }
    body.truncate(len);
    Ok(body)
}

fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: Instant,
    what: &str,
) -> Result<(), Option<Response>> {
    let left = (start + 2 * HEAD_DEADLINE).saturating_duration_since(Instant::now());
    let limit = if what == "request head" {
        HEAD_DEADLINE.saturating_sub(start.elapsed())
    } else {
        left
    };
    if limit.is_zero() {
        return Err(Some(Response::error(
            408,
            None,
            format!("{what} not received in time"),
        )));
    }
    let _ = stream.set_read_timeout(Some(limit.min(Duration::from_millis(500))));
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) => Err(None),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Err(_) => Err(None),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
