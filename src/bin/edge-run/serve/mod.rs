//! `edge-run serve`: an OpenAI-compatible HTTP server over one mapped model.
//!
//! - [`http`]: requests and responses over blocking sockets (limits on head, body and time);
//! - [`api`]: the OpenAI fields, checked, and the response shapes;
//! - [`adapters`]: the named adapters, loaded and unloaded at run time;
//! - [`sched`]: the slots (one session each) and the worker thread that steps them;
//! - [`metrics`]: the Prometheus counters.
//!
//! Every connection gets its own thread (at most a fixed number at once); generation happens only on
//! the worker thread, which the connections feed through a bounded queue.
mod adapters;
mod api;
mod http;
mod metrics;
mod routes;
mod sched;

use crate::args::ServeArgs;
use crate::{control_vector, open_model, session_config, usage, Failure};
use adapters::Registry;
use edge_run::adapter::{AdapterControl, ControlVector};
use edge_run::kernels::Kernels;
use edge_run::session::ActQuant;
use edge_run::{Model, Session, SessionConfig};
use metrics::Metrics;
use sched::{Queue, Worker};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every connection thread shares.
pub struct Server {
    pub model: Arc<Model>,
    /// The base model's name in the API.
    pub name: String,
    pub adapters: Mutex<Registry>,
    /// `--adapter-dir`, canonical.
    pub adapter_dir: Option<PathBuf>,
    /// Checks adapters against the slots' capacities (a slot session's control).
    pub check: Arc<AdapterControl>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    pub n_ctx: usize,
    pub timeout: Duration,
    pub next_id: AtomicU64,
    connections: AtomicUsize,
    max_connections: usize,
}

pub(crate) fn cmd_serve(a: ServeArgs) -> Result<(), Failure> {
    if a.parallel == 0 || a.parallel > 64 {
        return Err(usage(format!(
            "--parallel must be in 1..=64, got {}",
            a.parallel
        )));
    }
    if a.timeout == 0 {
        return Err(usage("--timeout must be at least 1 second"));
    }
    let specs =
        a.rt.adapters
            .iter()
            .map(|s| adapters::parse_spec(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)?;
    let adapter_dir = match &a.adapter_dir {
        None => None,
        Some(d) => Some(
            d.canonicalize()
                .map_err(|e| Failure(1, format!("--adapter-dir {}: {e}", d.display())))?,
        ),
    };
    let model = open_model(&a.m.model)?;
    let cfg = session_config(&model, &a.rt, false)?;
    let cvec = control_vector(&model, &a.rt)?;
    let mut sessions = Vec::with_capacity(a.parallel);
    for _ in 0..a.parallel {
        let mut s = Session::new(model.clone(), cfg.clone())?;
        s.set_control_vector(cvec.clone())?;
        sessions.push(s);
    }
    let metrics = Arc::new(Metrics::default());
    let name = a.alias.clone().unwrap_or_else(|| {
        let f =
            a.m.model
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
        let f = f.unwrap_or_else(|| "model".into());
        f.strip_suffix(".gguf").unwrap_or(&f).to_string()
    });
    let srv = Arc::new(Server {
        check: sessions[0].adapter_control(),
        model: model.clone(),
        name,
        adapters: Mutex::new(Registry::default()),
        adapter_dir,
        queue: Arc::new(Queue::new(a.queue, metrics.clone())),
        metrics: metrics.clone(),
        api_key: a.api_key.clone(),
        n_ctx: cfg.n_ctx,
        timeout: Duration::from_secs(a.timeout),
        next_id: AtomicU64::new(1),
        connections: AtomicUsize::new(0),
        max_connections: a.parallel + a.queue + 32,
    });
    for (name, path, scale) in specs {
        let ad = srv
            .load_adapter(&path)
            .map_err(|e| Failure(1, format!("--adapter {name}={}: {e}", path.display())))?;
        let shown = format!("--adapter {name}={}", path.display());
        srv.add_adapter(name, path, scale, ad)
            .map_err(|e| usage(format!("{shown}: {e}")))?;
    }
    let listener = TcpListener::bind((a.host.as_str(), a.port))
        .map_err(|e| Failure(1, format!("cannot listen on {}:{}: {e}", a.host, a.port)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure(1, format!("listening socket: {e}")))?;
    let worker = Worker::new(model, sessions, srv.queue.clone(), metrics);
    std::thread::Builder::new()
        .name("model".into())
        .spawn(move || worker.run())
        .map_err(|e| Failure(1, format!("cannot start the model thread: {e}")))?;
    eprintln!(
        "edge-run: serving {} on http://{addr} ({} slots of {} tokens, {} threads each; {}; adapters: {})",
        srv.name,
        a.parallel,
        cfg.n_ctx,
        cfg.n_threads,
        computation(&cfg, cvec.as_deref()),
        srv.adapter_names().join(", ")
    );
    accept_loop(&srv, listener);
    Ok(())
}

/// What the model-computation flags chose: kernel tier, activation quantization, KV cache types and
/// the control vector's blocks.
fn computation(cfg: &SessionConfig, cvec: Option<&ControlVector>) -> String {
    let tier = cfg.kernels.unwrap_or_else(Kernels::best).tier.name();
    let act = match cfg.act_quant {
        ActQuant::Q8 => "q8",
        ActQuant::Q8x2 => "q8x2",
    };
    let mut s = format!(
        "{tier} kernels, act-quant {act}, KV {}/{}",
        cfg.type_k.name(),
        cfg.type_v.name()
    );
    if let Some(cv) = cvec {
        let blocks: Vec<String> = cv.layers().map(|l| l.to_string()).collect();
        s.push_str(&format!(", control vector on blocks {}", blocks.join(",")));
    }
    s
}

fn accept_loop(srv: &Arc<Server>, listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        if srv.connections.fetch_add(1, Ordering::SeqCst) >= srv.max_connections {
            srv.connections.fetch_sub(1, Ordering::SeqCst);
            let r = http::Response::error(503, None, "too many connections")
                .with_header("Retry-After", "1".into());
            http::send(&mut stream, &r);
            continue;
        }
        let conn_srv = Arc::clone(srv);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                routes::handle(&conn_srv, stream);
                conn_srv.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            srv.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
