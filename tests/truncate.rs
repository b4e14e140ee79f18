//! A model or adapter file truncated while it is mapped: with `edge_run::mmap::install_guard()` (which the
//! CLI calls) the process ends with exit status 1 and a message naming the file, not a signal death.
//!
//! Each case runs in a child process (this test binary re-run with an environment variable), because the
//! outcome is the end of the process.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use edge_run::adapter::Adapter;
use edge_run::{Model, Session, SessionConfig};

const CHILD_ENV: &str = "EDGE_RUN_TRUNCATE_CHILD";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// The child: load, truncate `victim` (the model or the adapter) to zero bytes, evaluate.
fn child(model: &Path, adapter: &Path, victim: &str) -> ! {
    assert!(
        edge_run::mmap::install_guard(),
        "the SIGBUS handler could not be installed"
    );
    let m = Arc::new(Model::open(model).expect("model"));
    let a = Arc::new(Adapter::load(adapter, &m.base_info).expect("adapter"));
    let mut s = Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 64,
            n_threads: 1,
            ..SessionConfig::default()
        },
    )
    .expect("session");
    s.set_adapters(&[(&a, 1.0)]).expect("set adapters");
    s.eval(&[1, 2, 3]).expect("eval before truncation");
    let path = if victim == "model" { model } else { adapter };
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let _ = s.eval(&[4, 5, 6]);
    // Not reached when the truncation is noticed (the handler exits with status 1).
    std::process::exit(3)
}

fn run_case(victim: &str) {
    let dir =
        std::env::temp_dir().join(format!("edge-run-truncate-{}-{victim}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.gguf");
    let adapter = dir.join("adapter.gguf");
    std::fs::copy(fixture("tiny-q4_1.gguf"), &model).unwrap();
    std::fs::copy(fixture("tiny-lora.gguf"), &adapter).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!("{}\n{}\n{victim}", model.display(), adapter.display()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let victim_path = if victim == "model" { &model } else { &adapter };
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{victim}: expected exit status 1, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!(
            "edge-run: error: {}: the memory-mapped file shrank while in use",
            victim_path.display()
        )),
        "{victim}: message does not name the file; stderr:\n{stderr}"
    );
}

fn main() {
    // The child: re-run of this binary by `run_case`.
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut it = spec.lines();
        let (m, a, v) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        child(Path::new(m), Path::new(a), v);
    }
    // Custom harness (`harness = false` in Cargo.toml): each case ends a process, so cases run as children.
    for victim in ["model", "adapter"] {
        run_case(victim);
        println!("test truncated_{victim}_ends_the_process_with_a_message ... ok");
    }
    println!("\ntest result: ok. 2 passed; 0 failed");
}
