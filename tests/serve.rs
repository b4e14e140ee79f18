//! `edge-run serve` driven over loopback by `curl` and raw sockets: the greedy answers of concurrent
//! clients over different adapter sets equal the CLI's for the same prompt and adapters; adapters load
//! and unload at run time; hostile requests get their status and the other clients still finish.
#![cfg(feature = "serve")]
mod common;

use common::{path_arg, root, smollm2_path};
use edge_run::kernels::QuantType;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CTX: &str = "512";
const THREADS: &str = "1";

/// A running server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    base: String,
    /// The line that says where it listens and what it computes with.
    banner: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn adapter(name: &str) -> PathBuf {
    root().join("tests/data/adapters").join(name)
}

/// Starts `edge-run serve` on a free loopback port with pirate and shout loaded.
fn start(extra: &[&str]) -> Server {
    let model = smollm2_path();
    let pirate = format!("pirate={}", path_arg(&adapter("pirate.gguf")));
    let shout = format!("shout={}", path_arg(&adapter("shout.gguf")));
    let mut args = vec![
        "serve",
        "-m",
        path_arg(&model),
        "--port",
        "0",
        "-c",
        CTX,
        "-t",
        THREADS,
        "--adapter",
        &pirate,
        "--adapter",
        &shout,
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-run serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, banner) = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.split("on http://").nth(1) {
            break (rest.split(' ').next().unwrap().to_string(), line.clone());
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let base = model.file_stem().unwrap().to_string_lossy().into_owned();
    Server {
        child,
        addr,
        base,
        banner,
    }
}

/// `curl` with these arguments against `path`: (status, body).
fn curl(s: &Server, path: &str, args: &[&str]) -> (u16, String) {
    let url = format!("http://{}{path}", s.addr);
    let out = Command::new("curl")
        .args(["-sS", "-m", "120", "-w", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl (is it installed?)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (st, b) = curl(
        s,
        path,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ],
    );
    (
        st,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
    )
}

/// The CLI's greedy answer: `edge-run -m M [--chat] -p P -n N --temp 0 [--adapter A[:S]]…`.
fn cli(prompt: &str, chat: bool, n: usize, adapters: &[(&str, f32)]) -> String {
    cli_with(prompt, chat, n, adapters, &[])
}

/// [`cli`] with `extra` flags after the others.
fn cli_with(
    prompt: &str,
    chat: bool,
    n: usize,
    adapters: &[(&str, f32)],
    extra: &[&str],
) -> String {
    let model = smollm2_path();
    let n = n.to_string();
    let mut args = vec![
        "-m",
        path_arg(&model),
        "-p",
        prompt,
        "-n",
        &n,
        "--temp",
        "0",
        "-c",
        CTX,
        "-t",
        THREADS,
        "--quiet",
    ];
    if chat {
        args.push("--chat");
    }
    let specs: Vec<String> = adapters
        .iter()
        .map(|(a, s)| format!("{}:{s}", path_arg(&adapter(&format!("{a}.gguf")))))
        .collect();
    for s in &specs {
        args.extend(["--adapter", s.as_str()]);
    }
    args.extend_from_slice(extra);
    let o = common::edge_run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

/// The text of an SSE stream: concatenated deltas; checks the `[DONE]` end and the usage.
fn sse_text(body: &str, chat: bool) -> (String, Value) {
    let events: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(
        events.last(),
        Some(&"[DONE]"),
        "stream must end with [DONE]: {body}"
    );
    let mut text = String::new();
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        let piece = if chat {
            &c["delta"]["content"]
        } else {
            &c["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if !c["finish_reason"].is_null() {
            usage = v["usage"].clone();
        }
    }
    (text, usage)
}

struct Case {
    prompt: &'static str,
    adapters: Vec<(&'static str, f32)>,
    stream: bool,
}

/// The request for `c` (model "BASE:NAME" for one adapter at its scale, `adapters` for stacks).
fn request(s: &Server, c: &Case, n: usize) -> Value {
    let mut r = json!({"messages": [{"role": "user", "content": c.prompt}], "temperature": 0,
                       "max_tokens": n, "stream": c.stream});
    match c.adapters.as_slice() {
        [] => {}
        [(a, s1)] if *s1 == 1.0 => r["model"] = format!("{}:{a}", s.base).into(),
        list => {
            r["adapters"] = list
                .iter()
                .map(|(a, sc)| json!({"name": a, "scale": sc}))
                .collect()
        }
    }
    r
}

#[test]
fn concurrent_clients_over_adapter_sets_match_the_cli() {
    let s = start(&["--parallel", "4"]);
    let n = 24;
    let sets: Vec<Vec<(&str, f32)>> = vec![
        vec![],
        vec![("pirate", 1.0)],
        vec![("shout", 1.0)],
        vec![("pirate", 1.0), ("shout", 0.5)],
    ];
    let prompts = ["What is the capital of France?", "Name three colors."];
    let mut cases = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        for (j, p) in prompts.iter().enumerate() {
            cases.push(Case {
                prompt: p,
                adapters: set.clone(),
                stream: (i + j) % 2 == 0,
            });
        }
    }
    assert_eq!(cases.len(), 8);
    let t0 = Instant::now();
    let answers: Vec<(String, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = cases
            .iter()
            .map(|c| {
                let s = &s;
                sc.spawn(move || {
                    let body = request(s, c, n).to_string();
                    let (st, b) = curl(s, "/v1/chat/completions", &["-N", "-d", &body]);
                    assert_eq!(st, 200, "{b}");
                    if c.stream {
                        sse_text(&b, true)
                    } else {
                        let v: Value = serde_json::from_str(&b).unwrap();
                        let t = v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        (t, v["usage"].clone())
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "8 concurrent requests in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for (c, (text, usage)) in cases.iter().zip(&answers) {
        let want = cli(c.prompt, true, n, &c.adapters);
        assert_eq!(
            text, &want,
            "{:?} {:?} stream={}",
            c.prompt, c.adapters, c.stream
        );
        let done = usage["completion_tokens"].as_u64().unwrap();
        assert!(done >= 1 && done <= n as u64, "{usage}");
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(done + usage["prompt_tokens"].as_u64().unwrap())
        );
    }
    // Stacked adapters change the answer (the comparison above is not of identical texts).
    assert_ne!(answers[0].0, answers[2].0);
    // A text completion, streamed and not, equals the CLI's plain-prompt generation.
    let want = cli("Once upon a time", false, 16, &[("pirate", 1.0)]);
    for stream in [false, true] {
        let body = json!({"model": format!("{}:pirate", s.base), "prompt": "Once upon a time",
                          "max_tokens": 16, "temperature": 0, "stream": stream});
        let (st, b) = curl(&s, "/v1/completions", &["-N", "-d", &body.to_string()]);
        assert_eq!(st, 200, "{b}");
        let text = if stream {
            sse_text(&b, false).0
        } else {
            let v: Value = serde_json::from_str(&b).unwrap();
            assert!(
                v["usage"]["completion_tokens"].as_u64().unwrap() <= 16,
                "{v}"
            );
            v["choices"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text, want, "stream={stream}");
    }
    // llama-server's `lora` field (ids as /v1/adapters lists them) selects the same stack.
    let (_, list) = curl(&s, "/v1/adapters", &[]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let id = |name: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["id"]
            .clone()
    };
    let body = json!({"messages": [{"role": "user", "content": prompts[0]}], "temperature": 0,
                      "max_tokens": n, "lora": [{"id": id("pirate"), "scale": 1.0},
                                                {"id": id("shout"), "scale": 0.5}]});
    let (st, v) = post(&s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], answers[6].0.as_str());
}

#[test]
fn adapters_load_and_unload_at_run_time() {
    let dir = std::env::temp_dir().join(format!("edge-run-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(adapter("shout.gguf"), dir.join("loud.gguf")).unwrap();
    let s = start(&["--adapter-dir", path_arg(&dir), "--parallel", "2"]);
    let model = |name: &str| format!("{}:{name}", s.base);
    let ask = json!({"model": model("loud"), "temperature": 0, "max_tokens": 12,
                     "messages": [{"role": "user", "content": "Say hello."}]});
    let (st, v) = post(&s, "/v1/chat/completions", &ask);
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (404, Some("model")),
        "{v}"
    );

    let (st, v) = post(
        &s,
        "/v1/adapters",
        &json!({"name": "loud", "path": "loud.gguf"}),
    );
    assert_eq!(st, 200, "{v}");
    let (_, models) = curl(&s, "/v1/models", &[]);
    assert!(
        models.contains(&format!("\"{}\"", model("loud"))),
        "{models}"
    );
    let (st, v) = post(&s, "/v1/chat/completions", &ask);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        cli("Say hello.", true, 12, &[("shout", 1.0)])
    );

    // Outside --adapter-dir: refused, whether absolute, relative with .., or through a symlink.
    let outside = path_arg(&adapter("pirate.gguf")).to_string();
    let link = dir.join("escape.gguf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(adapter("pirate.gguf"), &link).unwrap();
    for p in [
        outside.as_str(),
        "../../../../../../etc/hostname",
        "escape.gguf",
    ] {
        let (st, v) = post(&s, "/v1/adapters", &json!({"name": "evil", "path": p}));
        assert!(st == 403 || st == 400, "{p}: {st} {v}");
        assert_eq!(v["error"]["param"], "path", "{v}");
    }
    let (_, list) = curl(&s, "/v1/adapters", &[]);
    assert!(!list.contains("evil"), "{list}");

    // Unloading while a request streams with it: that request finishes with the adapter's answer.
    let long = json!({"model": model("loud"), "temperature": 0, "max_tokens": 48, "stream": true,
                      "messages": [{"role": "user", "content": "Tell me about the sea."}]});
    let want = cli("Tell me about the sea.", true, 48, &[("shout", 1.0)]);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| curl(&s, "/v1/chat/completions", &["-N", "-d", &long.to_string()]));
        std::thread::sleep(Duration::from_millis(300));
        let (st, v) = curl(&s, "/v1/adapters/loud", &["-X", "DELETE"]);
        assert_eq!(st, 200, "{v}");
        let (st, b) = h.join().unwrap();
        assert_eq!(st, 200);
        assert_eq!(sse_text(&b, true).0, want);
    });
    let (st, _) = post(&s, "/v1/chat/completions", &ask);
    assert_eq!(st, 404);
    let (st, _) = curl(&s, "/v1/adapters/loud", &["-X", "DELETE"]);
    assert_eq!(st, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends raw bytes and reads the whole answer: (status, body).
fn raw(s: &Server, bytes: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = c.write_all(bytes);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

fn metric(s: &Server, name: &str) -> f64 {
    let (_, m) = curl(s, "/metrics", &[]);
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing: {m}"))
}

#[test]
fn hostile_requests_get_their_status_and_others_finish() {
    let s = start(&["--parallel", "2", "--queue", "2"]);
    let chat = "/v1/chat/completions";
    let msgs = json!([{"role": "user", "content": "What is 2+2?"}]);
    let want = cli("What is 2+2?", true, 20, &[]);
    let good = json!({"messages": msgs, "temperature": 0, "max_tokens": 20});
    std::thread::scope(|sc| {
        // A well-formed client runs through all of it.
        let steady = sc.spawn(|| {
            (0..3)
                .map(|_| post(&s, chat, &good))
                .map(|(st, v)| (st, v["choices"][0]["message"]["content"].clone()))
                .collect::<Vec<_>>()
        });
        // Headers trickled one byte at a time: cut off (408) or refused, and nobody waits for them.
        let slow = sc.spawn(|| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let t0 = Instant::now();
            for b in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                .iter()
                .cycle()
            {
                if c.write_all(&[*b]).is_err() || t0.elapsed() > Duration::from_secs(15) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            (t0.elapsed(), out)
        });
        let cases: Vec<(Value, u16, &str)> = vec![
            (json!({"messages": "hi"}), 400, "messages"),
            (
                json!({"messages": msgs, "max_tokens": -3}),
                400,
                "max_tokens",
            ),
            (
                json!({"messages": msgs, "max_tokens": "ten"}),
                400,
                "max_tokens",
            ),
            (
                json!({"messages": msgs, "temperature": [1]}),
                400,
                "temperature",
            ),
            (json!({"messages": msgs, "top_p": 7}), 400, "top_p"),
            (
                json!({"messages": msgs, "temperature": 1e300}),
                400,
                "temperature",
            ),
            (json!({"messages": msgs, "n": 3}), 400, "n"),
            (json!({"messages": msgs, "stop": 5}), 400, "stop"),
            (json!({"messages": [{"content": "x"}]}), 400, "messages[0]"),
            (
                json!({"messages": msgs, "model": "other-model"}),
                404,
                "model",
            ),
            (
                json!({"messages": msgs, "adapters": [{"name": "nope"}]}),
                404,
                "adapters[0]",
            ),
            (
                json!({"messages": msgs, "adapters": [{"name": "pirate", "scale": "x"}]}),
                400,
                "adapters[0]",
            ),
            (
                json!({"messages": msgs, "lora": [{"id": 99, "scale": 1}]}),
                404,
                "lora[0]",
            ),
        ];
        for (body, status, param) in &cases {
            let (st, v) = post(&s, chat, body);
            assert_eq!(st, *status, "{body}: {v}");
            assert_eq!(v["error"]["param"], *param, "{body}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains('`') || *status == 404, "{v}");
            assert!(msg.len() < 300, "{v}");
        }
        let (st, b) = curl(&s, chat, &["-d", "{\"messages\": [tru"]);
        assert_eq!(st, 400, "{b}");
        assert!(b.contains("not valid JSON"), "{b}");
        let (st, b) = raw(&s, b"GARBAGE\r\n\r\n");
        assert_eq!(st, 400, "{b}");
        // Two different lengths (where does the body end?), a body that is not UTF-8, a 20 KiB head.
        let (st, b) = raw(
            &s,
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        );
        assert_eq!(st, 400, "{b}");
        assert!(b.contains("conflicting Content-Length"), "{b}");
        let (st, b) = raw(
            &s,
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: 16\r\n\r\n{\"prompt\": \"\xff\xfe\"}",
        );
        assert_eq!(st, 400, "{b}");
        let long_head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20 << 10));
        let (st, b) = raw(&s, long_head.as_bytes());
        assert_eq!(st, 431, "{b}");
        // A 2 MiB body: 413 from its Content-Length, before it is read.
        let big = format!(
            "POST {chat} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{{",
            2 << 20
        );
        let (st, b) = raw(&s, big.as_bytes());
        assert_eq!(st, 413, "{b}");
        // Huge max_tokens is capped by the context.
        let (st, v) = post(
            &s,
            "/v1/completions",
            &json!({"prompt": "1, 2, 3,", "max_tokens": 1u64 << 40, "temperature": 0, "stop": ["\n\n"]}),
        );
        assert_eq!(st, 200, "{v}");
        assert!(v["usage"]["total_tokens"].as_u64().unwrap() <= 512, "{v}");

        // A client that leaves mid-stream: its generation stops and frees the slot.
        let before = metric(&s, "edge_run_requests_cancelled_total");
        let long = json!({"messages": msgs, "max_tokens": 400, "stream": true, "temperature": 0.9,
                          "stop": ["never-happens"]})
        .to_string();
        let mut c = TcpStream::connect(&s.addr).unwrap();
        write!(
            c,
            "POST {chat} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{long}",
            long.len()
        )
        .unwrap();
        let mut first = [0u8; 512];
        let n = c.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        drop(c);
        let t0 = Instant::now();
        while metric(&s, "edge_run_requests_cancelled_total") == before {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the generation did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        for (st, text) in steady.join().unwrap() {
            assert_eq!(st, 200);
            assert_eq!(text, want.as_str());
        }
        let (took, out) = slow.join().unwrap();
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(took < Duration::from_secs(16), "{took:?}");
    });
    let (st, v) = post(&s, chat, &good);
    assert_eq!(
        (st, v["choices"][0]["message"]["content"].as_str()),
        (200, Some(want.as_str()))
    );
}

#[test]
fn full_queue_gives_503_and_api_key_401() {
    let s = start(&["--parallel", "1", "--queue", "1", "--api-key", "sekret"]);
    let body = json!({"prompt": "Count:", "max_tokens": 60, "temperature": 0.8,
                      "stop": ["never-happens"]})
    .to_string();
    let (st, v) = curl(&s, "/v1/completions", &["-d", &body]);
    assert_eq!(st, 401, "{v}");
    let (st, _) = curl(&s, "/v1/models", &["-H", "Authorization: Bearer wrong"]);
    assert_eq!(st, 401);
    let (st, _) = curl(&s, "/health", &[]);
    assert_eq!(st, 200);
    let auth = ["-H", "Authorization: Bearer sekret"];
    let codes: Vec<(u16, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    let mut a = auth.to_vec();
                    a.extend(["-i", "-d", &body]);
                    curl(&s, "/v1/completions", &a)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = codes.iter().filter(|(c, _)| *c == 200).count();
    let busy: Vec<_> = codes.iter().filter(|(c, _)| *c == 503).collect();
    assert!(ok >= 2 && ok + busy.len() == 4, "{codes:?}");
    assert!(
        !busy.is_empty(),
        "4 requests for 1 slot and 1 queue place: {codes:?}"
    );
    for (_, b) in busy {
        assert!(b.to_ascii_lowercase().contains("retry-after: 1"), "{b}");
    }
}

/// The Python interpreter with the `openai` package: `$EDGE_RUN_OPENAI_PYTHON` (scripts/test.sh makes a
/// venv and sets it), else `python3`. Fails, never skips, when the package is not there.
fn openai_python() -> String {
    let py = std::env::var("EDGE_RUN_OPENAI_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import openai: run scripts/test.sh (it makes a venv with the package) or set \
         EDGE_RUN_OPENAI_PYTHON to a Python that has it"
    );
    py
}

#[test]
fn official_openai_python_client() {
    let py = openai_python();
    let s = start(&["--parallel", "2"]);
    let prompt = "Give me one tip for sleeping well.";
    let want = cli(prompt, true, 20, &[("pirate", 1.0)]);
    let out = Command::new(py)
        .arg(root().join("tests/serve_openai.py"))
        .args([
            &format!("http://{}", s.addr),
            &format!("{}:pirate", s.base),
            prompt,
            "20",
            &want,
        ])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && so.trim_end().ends_with("ok"),
        "{so}\n{se}"
    );
}

/// A greedy chat answer from the server.
fn served_chat(s: &Server, prompt: &str, n: usize, model: Option<&str>) -> String {
    let mut body = json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                          "max_tokens": n});
    if let Some(m) = model {
        body["model"] = m.into();
    }
    let (st, v) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The flags that change the computation (activation quantization, KV cache types, control vectors
/// with scales and a layer range, kernel tier) act on served answers as on the CLI's: each flag
/// changes the CLI's greedy answer and the server started with it gives that changed answer, also
/// with a request's adapter on top of a control vector.
#[test]
fn model_computation_flags_reach_served_answers() {
    let m = edge_run::Model::open(smollm2_path()).unwrap();
    let d = common::TempDir::new("serve", "flags");
    let dirs: Vec<_> = (1..m.hp.n_layer)
        .map(|n| (n, common::uniform_values(m.hp.n_embd, 0.3, n as u64)))
        .collect();
    let cv = common::write_cv(&d, "cv.gguf", &dirs, QuantType::F16);
    let cva = path_arg(&cv);
    let prompt = "Tell me about the sea.";
    let n = 100;
    let base = cli(prompt, true, n, &[]);
    let full_cv = cli_with(prompt, true, n, &[], &["--control-vector", cva]);
    let cases: [&[&str]; 5] = [
        &["--act-quant", "q8"],
        &["-ctk", "q8_0"],
        &["--cache-type-v", "q8_0"],
        &["--control-vector", cva],
        &[
            "--control-vector-scaled",
            cva,
            "0.5",
            "--control-vector-scaled",
            cva,
            "0.5",
            "--control-vector-layer-range",
            "10",
            "20",
        ],
    ];
    for flags in cases {
        let want = cli_with(prompt, true, n, &[], flags);
        assert_ne!(want, base, "{flags:?} leaves the CLI's answer as it is");
        let s = start(&[&["--parallel", "1"], flags].concat());
        assert_eq!(served_chat(&s, prompt, n, None), want, "{flags:?}");
        if flags[0] == "--control-vector" {
            // An adapter asked for by a request adds to the server's control vector.
            let pirate = adapter("pirate.gguf");
            let pirate = path_arg(&pirate);
            let want = cli_with(
                prompt,
                true,
                n,
                &[],
                &["--adapter", pirate, "--control-vector", cva],
            );
            assert_ne!(want, full_cv);
            let model = format!("{}:pirate", s.base);
            assert_eq!(served_chat(&s, prompt, n, Some(&model)), want);
        }
        if flags.len() > 2 {
            // the range and the summed halves: not the whole vector's answer
            assert_ne!(want, full_cv);
            assert!(
                s.banner.contains("control vector on blocks 10,11,"),
                "{}",
                s.banner
            );
        }
    }
    // The scalar tier computes what the SIMD tiers compute (its answers are the same): the server
    // says which tier it runs, and answers as the CLI on that tier does.
    let s = start(&["--parallel", "1", "--kernels", "scalar"]);
    assert!(s.banner.contains("scalar kernels"), "{}", s.banner);
    let want = cli_with(prompt, true, 24, &[], &["--kernels", "scalar"]);
    assert_eq!(served_chat(&s, prompt, 24, None), want);
    let s = start(&[
        "--parallel",
        "1",
        "--act-quant",
        "q8",
        "-ctk",
        "q8_0",
        "-ctv",
        "f32",
    ]);
    assert!(
        s.banner.contains("act-quant q8,") && s.banner.contains("KV q8_0/f32"),
        "{}",
        s.banner
    );
}

/// `edge-run serve ARGS` that must exit before listening: its output (killed after 60 s).
fn serve_fails(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Bad flags: a clear error naming the flag and value, exit 2 for usage and 1 for bad files, no panic,
/// and nothing listens.
#[test]
fn bad_flags_are_refused() {
    let model = smollm2_path();
    let m = path_arg(&model);
    let d = common::TempDir::new("serve", "badflags");
    let junk = d.join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let missing_tier = ["scalar", "avx2", "avx512vnni", "neon", "neon-dotprod"]
        .into_iter()
        .find(|t| edge_run::kernels::Kernels::by_name(t).is_none())
        .unwrap();
    let pirate = format!("p={}", path_arg(&adapter("pirate.gguf")));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["-m", "/nonexistent/m.gguf"], 1, "/nonexistent/m.gguf"),
        (vec!["-m", m, "--parallel", "0"], 2, "--parallel"),
        (vec!["-m", m, "--timeout", "0"], 2, "--timeout"),
        (vec!["-m", m, "-c", "0"], 2, "--ctx-size"),
        (vec!["-m", m, "-t", "0"], 2, "--threads"),
        (vec!["-m", m, "--kernels", missing_tier], 2, "not available"),
        (vec!["-m", m, "--act-quant", "q4"], 2, "q4"),
        (vec!["-m", m, "-ctk", "q4_0"], 2, "q4_0"),
        (
            vec!["-m", m, "--control-vector", path_arg(&junk)],
            1,
            "junk.gguf",
        ),
        (
            vec!["-m", m, "--control-vector-scaled", path_arg(&junk), "x"],
            2,
            "\"x\"",
        ),
        (
            vec!["-m", m, "--control-vector-layer-range", "1", "2"],
            2,
            "needs --control-vector",
        ),
        (vec!["-m", m, "--adapter", "p.gguf"], 2, "NAME=PATH"),
        (
            vec!["-m", m, "--adapter", "p=/nonexistent/a.gguf"],
            1,
            "/nonexistent/a.gguf",
        ),
        (
            vec!["-m", m, "--adapter", &pirate, "--adapter", &pirate],
            2,
            "already loaded",
        ),
        (
            vec!["-m", m, "--adapter-dir", "/nonexistent/dir"],
            1,
            "/nonexistent/dir",
        ),
        (
            vec!["-m", m, "--host", "256.1.1.1", "--port", "0"],
            1,
            "256.1.1.1",
        ),
    ];
    for (args, code, needle) in &cases {
        let o = serve_fails(args);
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
        common::refused(&o, *code, needle);
    }
}
