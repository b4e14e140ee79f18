//! The C API (`src/capi/`, `include/edge_run.h`):
//! - the hand-written header declares exactly the exported functions with the same parameter and
//!   return types, the same status codes, and structs with the same fields and (compiled by `cc`) the
//!   same layout as the Rust definitions; every declared function links against `libedge_run.a`;
//! - `examples/c/main.c`, compiled with `cc -Wall -Wextra -Werror` against `libedge_run.a` and run,
//!   gives the same prompt tokens and the same greedy tokens (with and without a LoRA adapter) as the
//!   Rust API (`Tokenizer::encode`, `Session::generate`);
//! - logits read through `er_logits` match the fixtures' independent float64 reference (base, and with
//!   the adapter at user scales 1.0 and 0.5); seeded `er_sample` matches `Session::generate`;
//! - misuse through the `extern "C"` functions (NULL pointers, freed / double-freed / wrong-kind /
//!   made-up handles, small buffers, out-of-range tokens, a full context, bad parameters, concurrent
//!   use of one session) gives the documented status code and a message, never a crash.
//!
//! Cross-compiled for aarch64 (`.ci/aarch64.sh`), the C compiler is `aarch64-linux-gnu-gcc` and the
//! compiled programs run under the runner in `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER`.
//! `c_example_on_real_model` needs the real SmolLM2 model (see tests/common).
#![allow(clippy::missing_safety_doc)]
mod common;

use edge_run::adapter::Adapter;
use edge_run::capi::*;
use edge_run::{Model, Sampler, SamplingParams, Session, SessionConfig};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------------------------------- utilities

/// Tests that free handles and then check the stale pointer run one at a time: the handle table is
/// process-wide, and a handle freed by one test could otherwise be reused (same address, same kind) by
/// another test running in parallel.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    let p = root().join("models/fixtures").join(name);
    assert!(
        p.exists(),
        "fixture {} is missing (models/tools/make_fixtures.py makes it)",
        p.display()
    );
    p
}

fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    // SAFETY: er_last_error never returns NULL; the string lives until the next er_* call on this thread.
    unsafe { CStr::from_ptr(er_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn name(code: c_int) -> String {
    // SAFETY: er_status_name returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(er_status_name(code)) }
        .to_string_lossy()
        .into_owned()
}

/// Assert `rc` is `want` and the error message contains every one of `needles`.
#[track_caller]
fn expect(rc: c_int, want: c_int, needles: &[&str]) {
    let msg = last_error();
    assert_eq!(
        rc,
        want,
        "got {} ({msg:?}), expected {}",
        name(rc),
        name(want)
    );
    if want == ER_OK {
        assert_eq!(msg, "", "a successful call leaves no error message");
    } else {
        assert!(!msg.is_empty(), "{} without a message", name(rc));
    }
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
}

#[track_caller]
fn ok(rc: c_int) {
    expect(rc, ER_OK, &[]);
}

/// Assert `rc` is `ER_ERR_BUFFER_TOO_SMALL` with a message containing `needles`, and that the size
/// the call reported (`n`) is `needed`.
#[track_caller]
fn too_small(rc: c_int, n: usize, needed: usize, needles: &[&str]) {
    expect(rc, ER_ERR_BUFFER_TOO_SMALL, needles);
    assert_eq!(n, needed, "the size reported with ER_ERR_BUFFER_TOO_SMALL");
}

fn open_model(p: &Path) -> *mut er_model {
    let mut m = null_mut();
    // SAFETY: valid C string and out-pointer.
    ok(unsafe { er_model_open(cstr(p).as_ptr(), &mut m) });
    assert!(!m.is_null());
    m
}

fn open_adapter(m: *const er_model, p: &Path) -> *mut er_adapter {
    let mut a = null_mut();
    // SAFETY: valid C string and out-pointer; `m` is checked by the library.
    ok(unsafe { er_adapter_open(m, cstr(p).as_ptr(), &mut a) });
    a
}

fn params(n_ctx: usize) -> er_session_params {
    let mut p = er_session_params {
        n_ctx: 0,
        n_batch: 0,
        n_threads: 0,
        max_adapters: 0,
        max_rank: 0,
        type_k: -1,
        type_v: -1,
    };
    // SAFETY: valid out-pointer.
    ok(unsafe { er_session_params_default(&mut p) });
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    p
}

fn new_session(m: *const er_model, n_ctx: usize) -> *mut er_session {
    let mut s = null_mut();
    let p = params(n_ctx);
    // SAFETY: valid pointers; `m` is checked by the library.
    ok(unsafe { er_session_new(m, &p, &mut s) });
    s
}

fn logits(s: *mut er_session, n_vocab: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n_vocab];
    let mut n = 0;
    // SAFETY: `out` holds n_vocab floats.
    ok(unsafe { er_logits(s, out.as_mut_ptr(), out.len(), &mut n) });
    assert_eq!(n, n_vocab);
    out
}

fn eval(s: *mut er_session, toks: &[i32]) -> c_int {
    // SAFETY: `toks` holds toks.len() ints.
    unsafe { er_eval(s, toks.as_ptr(), toks.len()) }
}

fn manifest() -> serde_json::Value {
    let p = fixture("manifest.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn q4_1_entry() -> serde_json::Value {
    manifest()["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "tiny-q4_1.gguf")
        .expect("tiny-q4_1 in manifest")
        .clone()
}

// ------------------------------------------------------------------------------------------ C toolchain

/// The C compiler and the command prefix that runs what it builds (a qemu runner when cross-testing).
fn toolchain() -> (String, Vec<String>) {
    if cfg!(target_arch = "aarch64") {
        if let Ok(r) = std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER") {
            return (
                "aarch64-linux-gnu-gcc".into(),
                r.split_whitespace().map(String::from).collect(),
            );
        }
    }
    (
        std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        Vec::new(),
    )
}

/// `libedge_run.a` of this build. The test executable is `<target>/<profile>/deps/capi-<hash>`; cargo
/// builds the library's staticlib next to it as `deps/libedge_run-<hash>.a` (and `cargo build --lib`
/// also copies one to `<profile>/libedge_run.a`). The newest one is from the current sources: cargo
/// rebuilt the library for this test run if they changed.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile = deps.parent().unwrap();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(t) = std::fs::metadata(&p).and_then(|m| m.modified()) {
            found.push((t, p));
        }
    };
    consider(profile.join("libedge_run.a"));
    // With a cdylib among the crate types cargo drops the hash from the library's file names.
    consider(deps.join("libedge_run.a"));
    for e in std::fs::read_dir(deps).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("libedge_run-") && n.ends_with(".a") {
            consider(e.path());
        }
    }
    let newest = found.into_iter().max().map(|(_, p)| p);
    newest.unwrap_or_else(|| {
        panic!(
            "no libedge_run*.a in {}: the [lib] crate-type must include \"staticlib\"",
            deps.display()
        )
    })
}

/// Compile C `sources` against the header and the static library; returns the executable.
fn compile_c(out_name: &str, sources: &[PathBuf]) -> PathBuf {
    let (cc, _) = toolchain();
    // target/tmp is shared by every target triple: keep their programs apart.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{out_name}-{}", std::env::consts::ARCH));
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"));
    cmd.args(sources)
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out);
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run C compiler `{cc}`: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn run_c(exe: &Path, args: &[&str]) -> String {
    let (_, runner) = toolchain();
    let mut cmd = match runner.split_first() {
        Some((r, rest)) => {
            let mut c = Command::new(r);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args);
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn c_example() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("capi_example_main", &[root().join("examples/c/main.c")]))
}

/// The `label: ids` line of the example's output.
fn ids_line(out: &str, label: &str) -> Vec<u32> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no `{label}:` line in\n{out}"));
    line.split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------------ header

/// Normalize a C type: single spaces, none around `*`.
fn norm(t: &str) -> String {
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t.replace(" *", "*").replace("* ", "*")
}

/// The C spelling of a Rust FFI type.
fn rust_to_c(t: &str) -> String {
    let t = t.trim();
    if let Some(inner) = t.strip_prefix("*mut ") {
        return format!("{}*", rust_to_c(inner));
    }
    if let Some(inner) = t.strip_prefix("*const ") {
        let c = rust_to_c(inner);
        return if inner.trim_start().starts_with('*') {
            format!("{c} const*")
        } else {
            format!("const {c}*")
        };
    }
    match t {
        "c_char" => "char".into(),
        "c_int" => "int".into(),
        "usize" => "size_t".into(),
        "i32" => "int32_t".into(),
        "u32" => "uint32_t".into(),
        "u64" => "uint64_t".into(),
        "f32" => "float".into(),
        "" | "()" => "void".into(),
        s if s.starts_with("er_") => s.into(),
        s => panic!("src/capi/: no C spelling for the Rust type `{s}`"),
    }
}

/// Exported functions of src/capi/: name → (C return type, C parameter types).
fn rust_functions(src: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut rest = src;
    while let Some(i) = rest.find("extern \"C\" fn ") {
        let before = &rest[..i];
        let prev_line = before.lines().rev().nth(1).unwrap_or("").trim();
        let after = &rest[i + "extern \"C\" fn ".len()..];
        let open = after.find('(').unwrap();
        let fname = after[..open].trim().to_string();
        let close = open + after[open..].find(')').unwrap();
        let body = after[close + 1..].find('{').unwrap() + close + 1;
        assert_eq!(
            prev_line, "#[no_mangle]",
            "src/capi/: `{fname}` is extern \"C\" without #[no_mangle] directly above"
        );
        let params: Vec<String> = after[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                norm(&rust_to_c(
                    p.split_once(':')
                        .unwrap_or_else(|| panic!("{fname}: parameter `{p}`"))
                        .1,
                ))
            })
            .collect();
        let ret = after[close + 1..body]
            .trim()
            .strip_prefix("->")
            .unwrap_or("")
            .trim();
        out.insert(fname, (norm(&rust_to_c(ret)), params));
        rest = &after[body..];
    }
    out
}

fn strip_c_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("unterminated comment") + i + 2;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Remove the trailing parameter name of a C parameter declaration.
fn c_param_type(p: &str) -> String {
    let p = p.trim();
    if p == "void" {
        return String::new();
    }
    let cut = p
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .expect("parameter without a name");
    norm(&p[..=cut])
}

struct Header {
    functions: BTreeMap<String, (String, Vec<String>)>,
    constants: BTreeMap<String, i64>,
    /// struct name → [(field, type)]
    structs: BTreeMap<String, Vec<(String, String)>>,
}

fn parse_header(text: &str) -> Header {
    let src = strip_c_comments(text);
    let mut constants = BTreeMap::new();
    let mut body = String::new();
    for l in src.lines() {
        let t = l.trim();
        if let Some(d) = t.strip_prefix("#define ") {
            let mut it = d.split_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Ok(v) = v.parse::<i64>() {
                    constants.insert(k.to_string(), v);
                }
            }
        } else if !t.starts_with('#') && t != "extern \"C\" {" && t != "}" {
            body.push_str(t);
            body.push(' ');
        }
    }
    // Struct definitions: `typedef struct X { T f; ... } X;`
    let mut structs = BTreeMap::new();
    let mut rest_src = String::new();
    let mut rest = body.as_str();
    while let Some(i) = rest.find("typedef struct") {
        rest_src.push_str(&rest[..i]);
        let stmt_end = rest[i..].find(';').unwrap() + i;
        let brace = rest[i..].find('{').map(|b| b + i);
        match brace {
            Some(b) if b < stmt_end => {
                let close = rest[b..].find('}').unwrap() + b;
                let sname = rest[i + "typedef struct".len()..b].trim().to_string();
                let end = rest[close..].find(';').unwrap() + close;
                assert_eq!(
                    rest[close + 1..end].trim(),
                    sname,
                    "typedef name of struct {sname}"
                );
                let fields = rest[b + 1..close]
                    .split(';')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(|f| {
                        let ty = c_param_type(f);
                        (
                            f[ty.len()..]
                                .trim()
                                .trim_start_matches('*')
                                .trim()
                                .to_string(),
                            ty,
                        )
                    })
                    .collect();
                structs.insert(sname, fields);
                rest = &rest[end + 1..];
            }
            _ => rest = &rest[stmt_end + 1..],
        }
    }
    rest_src.push_str(rest);
    let mut functions = BTreeMap::new();
    for stmt in rest_src
        .split(';')
        .map(str::trim)
        .filter(|s| s.contains('('))
    {
        let open = stmt.find('(').unwrap();
        let close = stmt.rfind(')').unwrap();
        let head = stmt[..open].trim();
        let cut = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap();
        let fname = head[cut + 1..].to_string();
        let ret = norm(&head[..=cut]);
        let params: Vec<String> = stmt[open + 1..close]
            .split(',')
            .map(c_param_type)
            .filter(|p| !p.is_empty())
            .collect();
        assert!(
            functions.insert(fname.clone(), (ret, params)).is_none(),
            "{fname} declared twice"
        );
    }
    Header {
        functions,
        constants,
        structs,
    }
}

fn rust_constants(src: &str) -> BTreeMap<String, i64> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ER_"))
        .map(|l| {
            let (k, v) = l
                .split_once(": c_int = ")
                .expect("pub const ER_*: c_int = N;");
            (format!("ER_{k}"), v.trim_end_matches(';').parse().unwrap())
        })
        .collect()
}

/// `#[repr(C)] pub struct er_*` definitions: name → [(field, C type)].
fn rust_structs(src: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut rest = src;
    while let Some(i) = rest.find("#[repr(C)]") {
        let s = &rest[i..];
        let start = s.find("pub struct ").unwrap() + "pub struct ".len();
        let brace = s.find('{').unwrap();
        let close = s.find('}').unwrap();
        let fields = s[brace + 1..close]
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pub "))
            .map(|l| {
                let (f, t) = l["pub ".len()..]
                    .trim_end_matches(',')
                    .split_once(':')
                    .unwrap();
                (f.trim().to_string(), norm(&rust_to_c(t)))
            })
            .collect();
        out.insert(s[start..brace].trim().to_string(), fields);
        rest = &s[close..];
    }
    out
}

/// The text of every file of src/capi/, in name order, concatenated.
fn capi_sources() -> String {
    let mut files: Vec<_> = std::fs::read_dir(root().join("src/capi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn header_declares_exactly_the_exports() {
    let rs = capi_sources();
    let h = parse_header(&std::fs::read_to_string(root().join("include/edge_run.h")).unwrap());
    let rf = rust_functions(&rs);
    assert!(
        rf.len() >= 25,
        "found only {} exported functions in src/capi/",
        rf.len()
    );
    for (f, sig) in &rf {
        assert!(
            f.starts_with("er_"),
            "exported function `{f}` lacks the er_ prefix"
        );
        let hs = h
            .functions
            .get(f)
            .unwrap_or_else(|| panic!("include/edge_run.h does not declare `{f}`"));
        assert_eq!(hs, sig, "`{f}`: header (return, params) vs src/capi/");
    }
    for f in h.functions.keys() {
        assert!(
            rf.contains_key(f),
            "include/edge_run.h declares `{f}`, which src/capi/ does not export"
        );
    }
    let rc = rust_constants(&rs);
    assert_eq!(h.constants, rc, "constants: header vs src/capi/");
    // Status codes are distinct and each has a name; the other constants (ER_KV_*) are values of a
    // parameter field.
    let status: BTreeMap<&String, &i64> = rc
        .iter()
        .filter(|(k, _)| *k == "ER_OK" || k.starts_with("ER_ERR_"))
        .collect();
    let mut vals: Vec<_> = status.values().collect();
    vals.sort();
    vals.dedup();
    assert_eq!(vals.len(), status.len(), "duplicate status code values");
    for (k, v) in &status {
        assert_eq!(&name(**v as c_int), *k);
    }
    let kv: Vec<&String> = rc.keys().filter(|k| k.starts_with("ER_KV_")).collect();
    assert_eq!(kv.len() + status.len(), rc.len(), "unexpected constants");
    let rs_structs = rust_structs(&rs);
    assert_eq!(rs_structs.len(), 3, "{:?}", rs_structs.keys());
    assert_eq!(h.structs, rs_structs, "struct fields: header vs src/capi/");
    println!(
        "header checked: {} functions, {} status codes, {} structs",
        rf.len(),
        rc.len(),
        rs_structs.len()
    );
}

/// (field, offset) lists of the Rust structs, for comparison with what the C compiler lays out.
macro_rules! layout {
    ($t:ident; $($f:ident),*) => {
        (stringify!($t), std::mem::size_of::<$t>(), vec![$((stringify!($f), std::mem::offset_of!($t, $f))),*])
    };
}

#[test]
fn struct_layouts_match_the_c_compiler_and_every_function_links() {
    let rs = capi_sources();
    let h = parse_header(&std::fs::read_to_string(root().join("include/edge_run.h")).unwrap());
    let rust = [
        layout!(er_model_info; n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff, bos, eos, add_bos),
        layout!(er_session_params; n_ctx, n_batch, n_threads, max_adapters, max_rank, type_k, type_v),
        layout!(er_sampling_params; temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed),
    ];
    // The lists above must name every field (in order) of the structs in src/capi/.
    let structs = rust_structs(&rs);
    for (sname, _, fields) in &rust {
        let names: Vec<&str> = structs[*sname].iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            fields.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            "fields of {sname}"
        );
    }
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"edge_run.h\"\n");
    c.push_str("typedef void (*any_fn)(void);\nstatic any_fn fns[] = {\n");
    for f in h.functions.keys() {
        c.push_str(&format!("    (any_fn){f},\n"));
    }
    c.push_str(
        "};\nint main(void) {\n\
         /* volatile reads keep the table, so every symbol must resolve at link time */\n\
         any_fn const volatile* p = fns;\n    size_t k = 0;\n\
         for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) k += p[i] != NULL;\n\
         printf(\"functions %zu\\n\", k);\n",
    );
    for (sname, _, fields) in &rust {
        c.push_str(&format!(
            "    printf(\"{sname} size %zu\\n\", sizeof({sname}));\n"
        ));
        for (f, _) in fields {
            c.push_str(&format!(
                "    printf(\"{sname}.{f} %zu\\n\", offsetof({sname}, {f}));\n"
            ));
        }
    }
    c.push_str("    return 0;\n}\n");
    let src = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("capi_layout-{}.c", std::env::consts::ARCH));
    std::fs::write(&src, c).unwrap();
    let exe = compile_c("capi_layout", &[src]);
    let out = run_c(&exe, &[]);
    let mut want = format!("functions {}\n", h.functions.len());
    for (sname, size, fields) in &rust {
        want.push_str(&format!("{sname} size {size}\n"));
        for (f, off) in fields {
            want.push_str(&format!("{sname}.{f} {off}\n"));
        }
    }
    assert_eq!(out, want, "C layout (left) vs Rust layout (right)");
}

// ------------------------------------------------------------------------------------------ the C example

/// Greedy tokens from the Rust API: `Session::generate` with a greedy sampler.
fn rust_greedy(
    model: &Arc<Model>,
    adapter: Option<(&Path, f32)>,
    prompt: &[u32],
    n_new: usize,
) -> Vec<u32> {
    let mut s = Session::new(
        Arc::clone(model),
        SessionConfig {
            n_ctx: prompt.len() + n_new + 1,
            n_batch: 8,
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    if let Some((p, scale)) = adapter {
        let a = Arc::new(Adapter::load(p, &model.base_info).unwrap());
        s.set_adapters(&[(&a, scale)]).unwrap();
    }
    let mut sampler = Sampler::new(SamplingParams::greedy(), model.hp.n_vocab);
    let mut out = Vec::new();
    s.generate(prompt, n_new, &mut sampler, |t| {
        out.push(t);
        true
    })
    .unwrap();
    out
}

fn check_example(
    model_path: &Path,
    text: &str,
    n_new: usize,
    adapter: Option<(&Path, f32)>,
) -> (String, Vec<u32>, Vec<u32>) {
    let n_s = n_new.to_string();
    let scale_s = adapter.map(|(_, s)| s.to_string()).unwrap_or_default();
    let mut args = vec![model_path.to_str().unwrap(), text, &n_s];
    if let Some((p, _)) = adapter {
        args.push(p.to_str().unwrap());
        args.push(&scale_s);
    }
    let out = run_c(c_example(), &args);
    println!("{out}");
    let model = Arc::new(Model::open(model_path).unwrap());
    let mut prompt = model.tokenizer.encode(text, true);
    if model.tokenizer.add_bos() {
        prompt.insert(0, model.tokenizer.bos().unwrap());
    }
    assert_eq!(
        ids_line(&out, "prompt"),
        prompt,
        "prompt tokens: C vs Rust tokenizer"
    );
    let base = ids_line(&out, "base");
    assert_eq!(
        base,
        rust_greedy(&model, None, &prompt, n_new),
        "greedy tokens without adapter: C vs Rust"
    );
    assert!(!base.is_empty(), "nothing generated");
    let mut with = Vec::new();
    if let Some(a) = adapter {
        with = ids_line(&out, "adapter");
        assert_eq!(
            with,
            rust_greedy(&model, Some(a), &prompt, n_new),
            "greedy tokens with adapter: C vs Rust"
        );
    }
    (out, base, with)
}

#[test]
fn c_example_matches_rust_api_on_tiny_fixture() {
    let m = q4_1_entry();
    let case = &m["tokenize"][0];
    assert_eq!(case["text"], "hello world");
    let (out, base, with) = check_example(
        &fixture("tiny-q4_1.gguf"),
        "hello world",
        12,
        Some((&fixture("tiny-lora.gguf"), 1.0)),
    );
    // Independent of the C/Rust comparison: the prompt is the manifest's tokenization.
    assert_eq!(
        ids_line(&out, "prompt")
            .iter()
            .map(|&t| t as i32)
            .collect::<Vec<_>>(),
        common::token_ids::<i32>(&case["ids"])
    );
    assert_ne!(base, with, "the adapter changed nothing");
}

#[test]
fn c_example_on_real_model() {
    let p = common::smollm2_path();
    check_example(
        &p,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        8,
        None,
    );
}

#[test]
fn c_example_reports_errors() {
    let (_, runner) = toolchain();
    let mut cmd = match runner.split_first() {
        Some((r, rest)) => {
            let mut c = Command::new(r);
            c.args(rest).arg(c_example());
            c
        }
        None => Command::new(c_example()),
    };
    let o = cmd
        .args(["/nonexistent/model.gguf", "hi", "3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ER_ERR_IO") && err.contains("/nonexistent/model.gguf"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------ logits, sampling

fn npy_last_row(name: &str) -> Vec<f32> {
    let a = common::npy_f32(&std::fs::read(fixture(name)).unwrap());
    a.row(a.shape[0] - 1).to_vec()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], exp: &[f32], rel_tol: f64) {
    assert_eq!(got.len(), exp.len());
    let mean = exp.iter().map(|&v| v as f64).sum::<f64>() / exp.len() as f64;
    let std =
        (exp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / exp.len() as f64).sqrt();
    let max = got
        .iter()
        .zip(exp)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .fold(0.0, f64::max);
    println!("{what}: max |Δ| = {:.3e} × std", max / std);
    assert!(
        max <= rel_tol * std,
        "{what}: max |Δlogit| {max} > {rel_tol} × std {std}"
    );
}

/// Q4_1 weights with Q8x2 activations: the bound of tests/fixtures.rs for Q8_1-dotted weights.
const TOL_Q4_1: f64 = 2.5e-2;

#[test]
fn logits_through_c_api_match_reference() {
    let _serial = serial();
    let f = q4_1_entry();
    let toks = common::token_ids::<i32>(&f["tokens"]);
    let nv = f["n_vocab"].as_u64().unwrap() as usize;
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    let mut n = 0;
    // SAFETY: valid handle and out-pointer.
    ok(unsafe { er_model_n_vocab(m, &mut n) });
    assert_eq!(n, nv);
    // The f32 cache, then the default f16 one, against the same reference.
    let mut p = params(32);
    assert_eq!(
        (p.type_k, p.type_v),
        (ER_KV_F16, ER_KV_F16),
        "default KV type"
    );
    p.type_k = ER_KV_F32;
    p.type_v = ER_KV_F32;
    let mut s32 = null_mut();
    // SAFETY: valid handle, parameters and out-pointer.
    ok(unsafe { er_session_new(m, &p, &mut s32) });
    ok(eval(s32, &toks));
    let exact = logits(s32, nv);
    assert_close(
        "f32 KV",
        &exact,
        &npy_last_row("tiny-q4_1.logits.npy"),
        TOL_Q4_1,
    );
    // SAFETY: a handle from this test.
    ok(unsafe { er_session_free(s32) });
    let s = new_session(m, 32);
    ok(eval(s, &toks[..5]));
    ok(eval(s, &toks[5..]));
    let base = logits(s, nv);
    assert_ne!(base, exact, "the f16 cache is a different computation");
    assert_close(
        "base",
        &base,
        &npy_last_row("tiny-q4_1.logits.npy"),
        TOL_Q4_1,
    );
    let a = open_adapter(m, &fixture("tiny-lora.gguf"));
    for (scale, file) in [
        (1.0f32, "tiny-q4_1.lora-s1.0.logits.npy"),
        (0.5, "tiny-q4_1.lora-s0.5.logits.npy"),
    ] {
        let set = [a as *const er_adapter];
        // SAFETY: one adapter handle and one scale.
        ok(unsafe { er_session_set_adapters(s, set.as_ptr(), &scale, 1) });
        // SAFETY: valid handle.
        ok(unsafe { er_session_reset(s) });
        ok(eval(s, &toks));
        assert_close(
            &format!("adapter x{scale}"),
            &logits(s, nv),
            &npy_last_row(file),
            TOL_Q4_1,
        );
    }
    // Freeing the adapter handle while the session applies it is safe; removing it restores the base.
    // SAFETY: handles from this test.
    unsafe {
        ok(er_adapter_free(a));
        ok(er_session_reset(s));
        ok(eval(s, &toks));
        assert_close(
            "adapter freed, still applied",
            &logits(s, nv),
            &npy_last_row("tiny-q4_1.lora-s0.5.logits.npy"),
            TOL_Q4_1,
        );
        ok(er_session_set_adapters(s, null(), null(), 0));
        ok(er_session_reset(s));
        ok(eval(s, &toks[..5]));
        ok(eval(s, &toks[5..]));
        assert_eq!(
            logits(s, nv),
            base,
            "adapters removed: bit-identical to the first base run"
        );
        let mut np = 0;
        ok(er_session_n_past(s, &mut np));
        assert_eq!(np, toks.len());
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn seeded_sampling_matches_rust_generate() {
    let _serial = serial();
    let path = fixture("tiny-q4_1.gguf");
    let prompt: Vec<i32> = common::token_ids(&q4_1_entry()["tokens"]);
    // The parameters, given to the C API here and to a Rust sampler below.
    let (temperature, top_p, min_p, repeat_penalty, seed) = (0.9, 0.9, 0.02, 1.3, 1234);
    let (top_k, repeat_last_n) = (50, 16);
    let sp = er_sampling_params {
        temperature,
        top_k: top_k as u32,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n: repeat_last_n as u32,
        seed,
    };
    let n_new = 20;
    let m = open_model(&path);
    let s = new_session(m, 64);
    let mut got = Vec::new();
    // SAFETY: handles and pointers from this test.
    unsafe {
        ok(er_session_set_sampling(s, &sp));
        ok(eval(s, &prompt));
        let mut eog = 0;
        for _ in 0..n_new {
            let mut t = -1;
            ok(er_sample(s, &mut t));
            ok(er_token_is_eog(m, t, &mut eog));
            if eog != 0 {
                break;
            }
            got.push(t as u32);
            ok(eval(s, &[t]));
        }
    }
    let model = Arc::new(Model::open(&path).unwrap());
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n,
        seed,
    };
    let mut sampler = Sampler::new(params, model.hp.n_vocab);
    let mut rs = Session::new(
        Arc::clone(&model),
        SessionConfig {
            n_ctx: 64,
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = Vec::new();
    let p: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    rs.generate(&p, n_new, &mut sampler, |t| {
        want.push(t);
        true
    })
    .unwrap();
    assert_eq!(got, want, "er_sample vs Session::generate, same seed");
    assert!(got.len() >= 5, "{got:?}");
    // A different seed gives different tokens; reset restarts the same seed's sequence.
    // SAFETY: handles from this test.
    unsafe {
        ok(er_session_reset(s));
        ok(eval(s, &prompt));
        let mut t = -1;
        ok(er_sample(s, &mut t));
        assert_eq!(t as u32, got[0], "reset restarts the sampler");
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let _serial = serial();
    let f = q4_1_entry();
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    for case in f["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::token_ids::<i32>(&case["ids"]);
        let mut n = 0;
        // SAFETY: `text` has text.len() bytes; a NULL buffer with cap 0 asks for the size.
        expect(
            unsafe {
                er_tokenize(
                    m,
                    text.as_ptr().cast(),
                    text.len(),
                    1,
                    null_mut(),
                    0,
                    &mut n,
                )
            },
            ER_ERR_BUFFER_TOO_SMALL,
            &[&format!("{} tokens", want.len())],
        );
        assert_eq!(n, want.len());
        let mut out = vec![-1i32; n];
        // SAFETY: `out` holds n ints.
        ok(unsafe {
            er_tokenize(
                m,
                text.as_ptr().cast(),
                text.len(),
                1,
                out.as_mut_ptr(),
                out.len(),
                &mut n,
            )
        });
        assert_eq!(out, want, "{text:?}");
        let mut bytes = Vec::new();
        for &t in &out {
            let mut buf = [0u8; 64];
            let mut len = 0;
            // SAFETY: `buf` holds 64 bytes.
            ok(unsafe {
                er_detokenize(m, t, buf.as_mut_ptr().cast::<c_char>(), buf.len(), &mut len)
            });
            assert_eq!(buf[len], 0, "NUL appended");
            bytes.extend_from_slice(&buf[..len]);
        }
        assert_eq!(String::from_utf8(bytes).unwrap(), text);
    }
    // SAFETY: valid handle.
    ok(unsafe { er_model_free(m) });
}

// ------------------------------------------------------------------------------------------ misuse

#[test]
fn null_pointers_are_refused() {
    let _serial = serial();
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    let s = new_session(m, 16);
    let p = params(16);
    let path = cstr(&fixture("tiny-lora.gguf"));
    let mut n = 0usize;
    let mut t = 0i32;
    let mut f = [0f32; 299];
    // SAFETY: every pointer is NULL or valid; the library must refuse the NULL ones.
    unsafe {
        expect(
            er_model_open(null(), &mut null_mut()),
            ER_ERR_NULL,
            &["path"],
        );
        expect(
            er_model_open(path.as_ptr(), null_mut()),
            ER_ERR_NULL,
            &["out"],
        );
        expect(er_model_n_vocab(null(), &mut n), ER_ERR_NULL, &["er_model"]);
        expect(er_model_n_vocab(m, null_mut()), ER_ERR_NULL, &["out"]);
        expect(er_model_get_info(m, null_mut()), ER_ERR_NULL, &[]);
        expect(er_token_is_eog(m, 0, null_mut()), ER_ERR_NULL, &[]);
        expect(
            er_tokenize(m, null(), 5, 0, null_mut(), 0, &mut n),
            ER_ERR_NULL,
            &["text"],
        );
        expect(
            er_tokenize(m, c"hi".as_ptr(), 2, 0, null_mut(), 4, &mut n),
            ER_ERR_NULL,
            &["out"],
        );
        expect(
            er_tokenize(m, c"hi".as_ptr(), 2, 0, &mut t, 1, null_mut()),
            ER_ERR_NULL,
            &["n_out"],
        );
        expect(
            er_detokenize(m, 5, null_mut(), 8, &mut n),
            ER_ERR_NULL,
            &["buf"],
        );
        expect(
            er_adapter_open(null(), path.as_ptr(), &mut null_mut()),
            ER_ERR_NULL,
            &[],
        );
        expect(
            er_adapter_open(m, null(), &mut null_mut()),
            ER_ERR_NULL,
            &["path"],
        );
        expect(
            er_session_new(m, null(), &mut null_mut()),
            ER_ERR_NULL,
            &["params"],
        );
        expect(
            er_session_new(null(), &p, &mut null_mut()),
            ER_ERR_NULL,
            &[],
        );
        expect(er_session_new(m, &p, null_mut()), ER_ERR_NULL, &[]);
        expect(er_session_params_default(null_mut()), ER_ERR_NULL, &[]);
        expect(er_sampling_params_default(null_mut()), ER_ERR_NULL, &[]);
        expect(er_eval(null_mut(), &t, 1), ER_ERR_NULL, &["er_session"]);
        expect(er_eval(s, null(), 1), ER_ERR_NULL, &["tokens"]);
        expect(
            er_logits(s, f.as_mut_ptr(), f.len(), null_mut()),
            ER_ERR_NULL,
            &[],
        );
        expect(er_sample_greedy(s, null_mut()), ER_ERR_NULL, &[]);
        expect(er_sample(s, null_mut()), ER_ERR_NULL, &[]);
        expect(er_session_set_sampling(s, null()), ER_ERR_NULL, &[]);
        expect(er_session_n_past(s, null_mut()), ER_ERR_NULL, &[]);
        expect(er_session_reset(null_mut()), ER_ERR_NULL, &[]);
        expect(
            er_session_set_adapters(s, null(), null(), 1),
            ER_ERR_NULL,
            &["adapters"],
        );
        let a = [null::<er_adapter>()];
        expect(
            er_session_set_adapters(s, a.as_ptr(), &1.0, 1),
            ER_ERR_NULL,
            &["adapters[0]"],
        );
        expect(er_session_adapter_control(s, null_mut()), ER_ERR_NULL, &[]);
        expect(
            er_adapter_control_set(null(), null(), null(), 0),
            ER_ERR_NULL,
            &[],
        );
        // Freeing NULL is a no-op, as free(NULL).
        ok(er_model_free(null_mut()));
        ok(er_adapter_free(null_mut()));
        ok(er_session_free(null_mut()));
        ok(er_adapter_control_free(null_mut()));
        // Nothing above touched the session.
        ok(er_session_n_past(s, &mut n));
        assert_eq!(n, 0);
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn stale_and_foreign_handles_are_refused() {
    let _serial = serial();
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    let m2 = open_model(&fixture("tiny-q4_1.gguf"));
    let s = new_session(m, 16);
    let a = open_adapter(m, &fixture("tiny-lora.gguf"));
    let mut ctl = null_mut();
    let mut n = 0usize;
    let mut fake = [0u64; 16];
    // SAFETY: handles are live, freed or bogus on purpose; the library must check them before use.
    unsafe {
        ok(er_session_adapter_control(s, &mut ctl));
        // Double free of every kind.
        ok(er_model_free(m2));
        expect(
            er_model_free(m2),
            ER_ERR_INVALID_HANDLE,
            &["er_model", "not live"],
        );
        expect(
            er_model_n_vocab(m2, &mut n),
            ER_ERR_INVALID_HANDLE,
            &["not live"],
        );
        // Wrong kinds.
        expect(
            er_model_n_vocab(s.cast(), &mut n),
            ER_ERR_INVALID_HANDLE,
            &["er_session", "expected an er_model"],
        );
        expect(
            er_session_free(m.cast()),
            ER_ERR_INVALID_HANDLE,
            &["er_model"],
        );
        expect(
            er_eval(a.cast(), [1].as_ptr(), 1),
            ER_ERR_INVALID_HANDLE,
            &["er_adapter"],
        );
        let set = [m.cast_const().cast::<er_adapter>()];
        expect(
            er_session_set_adapters(s, set.as_ptr(), &1.0, 1),
            ER_ERR_INVALID_HANDLE,
            &["adapters[0]", "er_model"],
        );
        // A made-up pointer is never dereferenced.
        expect(
            er_session_reset(fake.as_mut_ptr().cast()),
            ER_ERR_INVALID_HANDLE,
            &["not live"],
        );
        expect(
            er_model_free(fake.as_mut_ptr().cast()),
            ER_ERR_INVALID_HANDLE,
            &[],
        );
        // Freeing the model first keeps the session working (it holds the model).
        ok(er_model_free(m));
        ok(eval(s, &[1, 2, 3]));
        // The adapter handle freed: refused in new calls, but a set made before stays applied.
        let set = [a.cast_const()];
        ok(er_adapter_control_set(ctl, set.as_ptr(), &0.5, 1));
        ok(er_adapter_free(a));
        expect(er_adapter_free(a), ER_ERR_INVALID_HANDLE, &["er_adapter"]);
        expect(
            er_session_set_adapters(s, set.as_ptr(), &1.0, 1),
            ER_ERR_INVALID_HANDLE,
            &["adapters[0]"],
        );
        ok(eval(s, &[4]));
        ok(er_session_free(s));
        expect(er_session_free(s), ER_ERR_INVALID_HANDLE, &["er_session"]);
        expect(eval(s, &[1]), ER_ERR_INVALID_HANDLE, &[]);
        // The control outlives its session harmlessly.
        ok(er_adapter_control_set(ctl, null(), null(), 0));
        ok(er_adapter_control_free(ctl));
        expect(
            er_adapter_control_free(ctl),
            ER_ERR_INVALID_HANDLE,
            &["er_adapter_control"],
        );
    }
}

#[test]
fn wrong_sizes_tokens_and_context_are_refused() {
    let _serial = serial();
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    let s = new_session(m, 8);
    let mut n = 0usize;
    let mut t = -1i32;
    let mut f = vec![0f32; 299];
    // SAFETY: buffers are at least as large as the capacities passed.
    unsafe {
        // Before any eval there are no logits.
        expect(
            er_logits(s, f.as_mut_ptr(), f.len(), &mut n),
            ER_ERR_NO_LOGITS,
            &["er_eval"],
        );
        expect(er_sample_greedy(s, &mut t), ER_ERR_NO_LOGITS, &[]);
        // Out-of-range tokens, in eval, detokenize and is_eog; nothing is evaluated.
        expect(
            eval(s, &[1, 2, 299]),
            ER_ERR_TOKEN_OUT_OF_RANGE,
            &["tokens[2]", "299", "299 tokens"],
        );
        expect(eval(s, &[-1]), ER_ERR_TOKEN_OUT_OF_RANGE, &["-1"]);
        expect(
            er_detokenize(m, 299, null_mut(), 0, &mut n),
            ER_ERR_TOKEN_OUT_OF_RANGE,
            &["299"],
        );
        expect(
            er_token_is_eog(m, i32::MIN, &mut (0 as c_int)),
            ER_ERR_TOKEN_OUT_OF_RANGE,
            &[],
        );
        ok(er_session_n_past(s, &mut n));
        assert_eq!(n, 0, "a refused eval changes nothing");
        expect(eval(s, &[]), ER_ERR_INVALID_ARGUMENT, &["n is 0"]);
        // Context overflow: 8 tokens fit, the 9th does not, and a too-long batch is refused whole.
        expect(
            eval(s, &[5; 9]),
            ER_ERR_CONTEXT_FULL,
            &["context full", "n_ctx 8"],
        );
        ok(eval(s, &[5; 6]));
        expect(
            eval(s, &[5; 3]),
            ER_ERR_CONTEXT_FULL,
            &["6 tokens in the context + 3 new"],
        );
        ok(eval(s, &[5; 2]));
        expect(eval(s, &[5]), ER_ERR_CONTEXT_FULL, &[]);
        // A huge n is refused before the (short) buffer would be read.
        expect(
            er_eval(s, [5].as_ptr(), usize::MAX),
            ER_ERR_CONTEXT_FULL,
            &[],
        );
        ok(er_session_n_past(s, &mut n));
        assert_eq!(n, 8);
        // Small output buffers: the needed size is reported.
        n = 0;
        too_small(er_logits(s, f.as_mut_ptr(), 298, &mut n), n, 299, &["299"]);
        expect(
            er_logits(s, null_mut(), 0, &mut n),
            ER_ERR_BUFFER_TOO_SMALL,
            &[],
        );
        ok(er_logits(s, f.as_mut_ptr(), f.len(), &mut n));
        ok(er_sample_greedy(s, &mut t));
        let best = f
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > f[b] { i } else { b });
        assert_eq!(t as usize, best);
        let text = "the quick brown fox";
        let mut ids = [0i32; 3];
        expect(
            er_tokenize(
                m,
                text.as_ptr().cast(),
                text.len(),
                0,
                ids.as_mut_ptr(),
                3,
                &mut n,
            ),
            ER_ERR_BUFFER_TOO_SMALL,
            &[],
        );
        assert!(n > 3);
        assert_eq!(ids, [0; 3], "nothing written on BUFFER_TOO_SMALL");
        let mut b = [7u8; 4];
        // Token 1 is `<|im_start|>` (12 bytes).
        let rc = er_detokenize(m, 1, b.as_mut_ptr().cast(), 4, &mut n);
        too_small(rc, n, "<|im_start|>".len(), &[]);
        // Invalid UTF-8 text.
        let bad = [b'a', 0xff, b'b'];
        expect(
            er_tokenize(m, bad.as_ptr().cast(), 3, 0, ids.as_mut_ptr(), 3, &mut n),
            ER_ERR_INVALID_ARGUMENT,
            &["UTF-8", "offset 1"],
        );
        // Reset frees the context and forgets the logits.
        ok(er_session_reset(s));
        expect(
            er_logits(s, f.as_mut_ptr(), f.len(), &mut n),
            ER_ERR_NO_LOGITS,
            &[],
        );
        ok(eval(s, &[5; 8]));
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn bad_files_and_parameters_are_refused() {
    let _serial = serial();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let junk = tmp.join("capi-junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let mut m = null_mut();
    let mut a = null_mut();
    let mut s = null_mut();
    // SAFETY: valid pointers throughout.
    unsafe {
        expect(
            er_model_open(c"/nonexistent/x.gguf".as_ptr(), &mut m),
            ER_ERR_IO,
            &["/nonexistent/x.gguf"],
        );
        assert!(m.is_null(), "out untouched on error");
        expect(
            er_model_open(cstr(&junk).as_ptr(), &mut m),
            ER_ERR_FORMAT,
            &["capi-junk.gguf"],
        );
        let m = open_model(&fixture("tiny-q4_1.gguf"));
        // An adapter for another model's shapes, and a model file given as adapter.
        let k = open_model(&fixture("tiny-q4_k.gguf"));
        let rc = er_adapter_open(k, cstr(&fixture("tiny-lora.gguf")).as_ptr(), &mut a);
        assert!(
            rc == ER_ERR_FORMAT || rc == ER_ERR_INVALID_ARGUMENT || rc == ER_ERR_UNSUPPORTED,
            "{} {}",
            name(rc),
            last_error()
        );
        assert!(last_error().contains("tiny-lora.gguf"), "{}", last_error());
        let rc = er_adapter_open(m, cstr(&fixture("tiny-q4_1.gguf")).as_ptr(), &mut a);
        assert_ne!(rc, ER_OK, "a model is not an adapter");
        assert!(a.is_null());
        // Session parameters: each edit of the defaults is refused, naming what is wrong.
        type Edit = fn(&mut er_session_params);
        let edits: [(Edit, &str); 7] = [
            (|p| p.n_ctx = 0, "context"),
            (|p| p.max_adapters = 9, "max adapters 9"),
            (|p| p.n_threads = 100_000, "threads"),
            (|p| *p = params(usize::MAX), "n_ctx"),
            (|p| p.type_k = 3, "type_k 3"),
            (|p| p.type_v = -1, "type_v -1"),
            // The fixture's heads are 16 wide: not whole Q8_0 blocks.
            (|p| p.type_v = ER_KV_Q8_0, "multiple of 32"),
        ];
        for (edit, needle) in edits {
            let mut p = params(16);
            edit(&mut p);
            expect(
                er_session_new(m, &p, &mut s),
                ER_ERR_INVALID_ARGUMENT,
                &[needle],
            );
        }
        assert!(s.is_null());
        // A session with room for one adapter of rank ≤ 2 refuses the rank-4 fixture adapter and two adapters.
        let mut p = params(16);
        p.max_adapters = 1;
        p.max_rank = 2;
        let sess = {
            ok(er_session_new(m, &p, &mut s));
            s
        };
        let lora = open_adapter(m, &fixture("tiny-lora.gguf"));
        let one = [lora.cast_const()];
        expect(
            er_session_set_adapters(sess, one.as_ptr(), &1.0, 1),
            ER_ERR_INVALID_ARGUMENT,
            &["rank 4"],
        );
        let two = [lora.cast_const(), lora.cast_const()];
        expect(
            er_session_set_adapters(sess, two.as_ptr(), [1.0, 1.0].as_ptr(), 2),
            ER_ERR_INVALID_ARGUMENT,
            &["at most 1"],
        );
        let nine = [lora.cast_const(); 9];
        expect(
            er_session_set_adapters(sess, nine.as_ptr(), [1.0; 9].as_ptr(), 9),
            ER_ERR_INVALID_ARGUMENT,
            &["9 adapters"],
        );
        expect(
            er_session_set_adapters(sess, one.as_ptr(), &f32::NAN, 1),
            ER_ERR_INVALID_ARGUMENT,
            &["not finite"],
        );
        // Sampling parameters.
        let mut sp = er_sampling_params {
            temperature: 0.0,
            top_k: 0,
            top_p: 0.0,
            min_p: 0.0,
            repeat_penalty: 0.0,
            repeat_last_n: 0,
            seed: 0,
        };
        ok(er_sampling_params_default(&mut sp));
        assert_eq!((sp.top_k, sp.repeat_last_n), (40, 64));
        let mut t = 0;
        ok(eval(sess, &[1]));
        expect(
            er_sample(sess, &mut t),
            ER_ERR_INVALID_ARGUMENT,
            &["er_session_set_sampling"],
        );
        sp.repeat_last_n = 8;
        let good = sp;
        // Each out-of-range field on its own is refused, naming the field.
        type SpoilField = fn(&mut er_sampling_params);
        let out_of_range: [(SpoilField, &str); 3] = [
            (|p| p.top_p = 0.0, "top-p"),
            (|p| p.temperature = f32::NAN, "temperature"),
            (|p| p.repeat_last_n = u32::MAX, "repeat_last_n"),
        ];
        for (spoil, field) in out_of_range {
            let mut bad = good;
            spoil(&mut bad);
            expect(
                er_session_set_sampling(sess, &bad),
                ER_ERR_INVALID_ARGUMENT,
                &[field],
            );
        }
        ok(er_session_set_sampling(sess, &good));
        ok(er_sample(sess, &mut t));
        assert!((0..299).contains(&t));
        ok(er_adapter_free(lora));
        ok(er_session_free(sess));
        ok(er_model_free(k));
        ok(er_model_free(m));
    }
}

/// Raw pointers are not `Send`; the tests below move handles between threads on purpose (the API allows it).
struct SendPtr<T>(*mut T);
// SAFETY: the C API documents sessions as movable between threads and controls as shareable.
unsafe impl<T> Send for SendPtr<T> {}

#[test]
fn concurrent_use_of_a_session_is_refused_and_control_works_from_any_thread() {
    let _serial = serial();
    let m = open_model(&fixture("tiny-q4_1.gguf"));
    let s = new_session(m, 512);
    let a = open_adapter(m, &fixture("tiny-lora.gguf"));
    let mut ctl = null_mut();
    // SAFETY: valid handles and out-pointer.
    ok(unsafe { er_session_adapter_control(s, &mut ctl) });
    let (sp, cp, ap) = (SendPtr(s), SendPtr(ctl), SendPtr(a));
    let worker = std::thread::spawn(move || {
        let (s, ctl, a) = (sp, cp, ap);
        // Swap adapters from this thread while the main thread may be evaluating.
        for i in 0..400 {
            let set = [a.0.cast_const()];
            let n = i % 2;
            // SAFETY: the control may be used from any thread; `set` holds one handle.
            ok(unsafe { er_adapter_control_set(ctl.0, set.as_ptr(), &1.0, n) });
        }
        // 16 chunks of 30 tokens, each a long er_eval. The main thread's probes make this thread see
        // ER_ERR_BUSY too: retry then.
        let mut busy = 0;
        for _ in 0..16 {
            loop {
                match eval(s.0, &[7; 30]) {
                    ER_ERR_BUSY => busy += 1,
                    rc => break ok(rc),
                }
            }
        }
        println!("worker: ER_ERR_BUSY seen {busy} times");
        s
    });
    // Meanwhile, try to enter the same session from here.
    let mut busy = 0;
    let mut other = Vec::new();
    let mut n = 0usize;
    while !worker.is_finished() {
        // SAFETY: `s` is live until the worker is joined; the library refuses concurrent entry.
        let rc = unsafe { er_session_n_past(s, &mut n) };
        match rc {
            ER_ERR_BUSY => {
                busy += 1;
                assert!(last_error().contains("another thread"));
            }
            ER_OK => {}
            rc => other.push(rc),
        }
    }
    let s = worker.join().unwrap().0;
    assert!(other.is_empty(), "unexpected codes {other:?}");
    println!("main: ER_ERR_BUSY seen {busy} times");
    assert!(
        busy > 0,
        "never observed the session in use by the worker thread"
    );
    // SAFETY: the worker is done; handles are live.
    unsafe {
        ok(er_session_n_past(s, &mut n));
        assert_eq!(n, 480);
        ok(er_adapter_control_free(ctl));
        ok(er_adapter_free(a));
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn version_and_status_names() {
    // SAFETY: static NUL-terminated strings.
    let v = unsafe { CStr::from_ptr(er_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(name(ER_ERR_CONTEXT_FULL), "ER_ERR_CONTEXT_FULL");
    assert_eq!(name(-5), "ER_UNKNOWN");
    assert_eq!(name(1000), "ER_UNKNOWN");
}

/// `er_session_save` / `er_session_load`: a state restored into a fresh session on a newly opened model
/// gives the same logits bit for bit, now and after another token; a bad path, a state of another KV
/// type or adapter set, a corrupt file and NULL arguments are refused with the session unchanged.
#[test]
fn session_state_saves_and_loads() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("edge-run-capi-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = cstr(&dir.join("s.state"));
    let tiny = fixture("tiny-q4_1.gguf");
    let (m1, m2) = (open_model(&tiny), open_model(&tiny));
    let nv = 299;
    let toks: Vec<i32> = (0..40).map(|i| (i * 13 + 5) % nv as i32).collect();
    let s1 = new_session(m1, 64);
    ok(eval(s1, &toks));
    let before = logits(s1, nv);
    let s2 = new_session(m2, 64);
    // SAFETY: live sessions and valid C strings (or NULL where the call must refuse it).
    unsafe {
        ok(er_session_save(s1, file.as_ptr()));
        ok(er_session_load(s2, file.as_ptr()));
        let mut n = 0;
        ok(er_session_n_past(s2, &mut n));
        assert_eq!(n, toks.len());
        assert_eq!(bits(&logits(s2, nv)), bits(&before));
        ok(eval(s1, &toks[..1]));
        ok(eval(s2, &toks[..1]));
        assert_eq!(bits(&logits(s2, nv)), bits(&logits(s1, nv)));

        // Refusals leave the target as it was.
        let s3 = new_session(m2, 64);
        ok(eval(s3, &toks[..3]));
        let l3 = logits(s3, nv);
        let missing = cstr(&dir.join("missing").join("s.state"));
        expect(
            er_session_load(s3, missing.as_ptr()),
            ER_ERR_IO,
            &["missing"],
        );
        expect(
            er_session_save(s3, missing.as_ptr()),
            ER_ERR_IO,
            &["missing"],
        );
        let a = open_adapter(m2, &fixture("tiny-lora.gguf"));
        let one = [a as *const er_adapter];
        ok(er_session_set_adapters(
            s3,
            one.as_ptr(),
            [1.0f32].as_ptr(),
            1,
        ));
        expect(
            er_session_load(s3, file.as_ptr()),
            ER_ERR_INVALID_ARGUMENT,
            &[
                "s.state",
                "adapter set",
                "none (base model)",
                "tiny-lora.gguf",
            ],
        );
        ok(er_session_set_adapters(s3, null(), null(), 0));
        let mut p = params(64);
        p.type_k = ER_KV_F32;
        let mut s4 = null_mut();
        ok(er_session_new(m2, &p, &mut s4));
        expect(
            er_session_load(s4, file.as_ptr()),
            ER_ERR_INVALID_ARGUMENT,
            &["KV type K f16; this session's is f32"],
        );
        expect(er_logits(s4, null_mut(), 0, &mut n), ER_ERR_NO_LOGITS, &[]);
        let junk = dir.join("junk.state");
        std::fs::write(&junk, b"not a state file at all").unwrap();
        expect(
            er_session_load(s3, cstr(&junk).as_ptr()),
            ER_ERR_FORMAT,
            &["junk.state", "magic"],
        );
        expect(
            er_session_load(null_mut(), file.as_ptr()),
            ER_ERR_NULL,
            &["er_session"],
        );
        expect(
            er_session_save(null_mut(), file.as_ptr()),
            ER_ERR_NULL,
            &["er_session"],
        );
        expect(er_session_load(s3, null()), ER_ERR_NULL, &["path"]);
        expect(er_session_save(s3, null()), ER_ERR_NULL, &["path"]);
        ok(er_session_n_past(s3, &mut n));
        assert_eq!(n, 3);
        assert_eq!(bits(&logits(s3, nv)), bits(&l3));
        for s in [s1, s2, s3, s4] {
            ok(er_session_free(s));
        }
        ok(er_adapter_free(a));
        ok(er_model_free(m1));
        ok(er_model_free(m2));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------- control vectors

/// A control-vector file in `dir`: `direction.N` for each `(N, values)`.
fn write_control_vector(dir: &Path, name: &str, dirs: &[(usize, Vec<f32>)]) -> PathBuf {
    let mut w = edge_run::gguf::GgufWriter::new();
    w.add("general.architecture", "controlvector").unwrap();
    for (n, v) in dirs {
        let dims = [v.len() as u64];
        let ty = edge_run::kernels::QuantType::F32;
        w.add_tensor(&format!("direction.{n}"), &dims, ty, common::f32_bytes(v))
            .unwrap();
    }
    let p = dir.join(name);
    w.write_file(&p).unwrap();
    p
}

/// `er_control_vector_open` sums files with scales over a block range, `er_session_set_control_vector`
/// sets and clears it (back to the base bit for bit), as the Rust API computes; misuse is refused.
#[test]
fn control_vectors() {
    let _g = serial();
    let mp = fixture("tiny-gemma3.gguf");
    let rm = Model::open(&mp).unwrap();
    let (nl, e, nv) = (rm.hp.n_layer, rm.hp.n_embd, rm.hp.n_vocab);
    let d = common::empty_temp_dir("capi", "cvec");
    let v1 = common::uniform_values(e, 2.0, 1);
    let v2 = common::uniform_values(e, 2.0, 2);
    let f = write_control_vector(&d, "cv.gguf", &[(1, v1), (nl - 1, v2)]);
    let m = open_model(&mp);
    let toks = [1, 5, 9, 14];
    let run = |cv: *const er_control_vector| {
        let s = new_session(m, 32);
        // SAFETY: live session; `cv` NULL or a live handle.
        ok(unsafe { er_session_set_control_vector(s, cv) });
        ok(eval(s, &toks));
        let l = logits(s, nv);
        // SAFETY: live session.
        ok(unsafe { er_session_free(s) });
        l
    };
    let open = |paths: &[&Path], scales: Option<&[f32]>, range: (i32, i32)| {
        let cs: Vec<CString> = paths.iter().map(|p| cstr(p)).collect();
        let ps: Vec<*const c_char> = cs.iter().map(|c| c.as_ptr()).collect();
        let mut cv = null_mut();
        let sp = scales.map_or(null(), |s| s.as_ptr());
        // SAFETY: `ps` and `sp` hold paths.len() elements; valid out-pointer.
        let rc = unsafe {
            er_control_vector_open(m, ps.as_ptr(), sp, ps.len(), range.0, range.1, &mut cv)
        };
        (rc, cv)
    };
    let base = run(null());
    let (rc, one) = open(&[&f], None, (0, 0));
    ok(rc);
    let steered = run(one);
    assert_ne!(steered, base);
    // the Rust API, same file: the same logits
    let rust_cv = edge_run::adapter::ControlVector::load(&rm, &[(&f, 1.0)], None).unwrap();
    let mut rs = Session::new(
        Arc::new(Model::open(&mp).unwrap()),
        SessionConfig {
            n_ctx: 32,
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    rs.set_control_vector(Some(Arc::new(rust_cv))).unwrap();
    let ids: Vec<u32> = toks.iter().map(|&t| t as u32).collect();
    assert_eq!(rs.eval(&ids).unwrap(), &steered[..]);
    // two halves sum to the whole; scale 0 and a range without blocks are the base
    let (rc, halves) = open(&[&f, &f], Some(&[0.5, 0.5]), (0, 0));
    ok(rc);
    assert_eq!(run(halves), steered);
    let (rc, zero) = open(&[&f], Some(&[0.0]), (0, 0));
    ok(rc);
    assert_eq!(run(zero), base);
    let (rc, first) = open(&[&f], None, (1, 1));
    ok(rc);
    let only1 = run(first);
    assert!(only1 != base && only1 != steered);
    // set, then cleared: the next evaluation is the base's
    let s = new_session(m, 32);
    // SAFETY: live handles.
    unsafe {
        ok(er_session_set_control_vector(s, one));
        ok(eval(s, &toks));
        assert_eq!(logits(s, nv), steered);
        ok(er_session_reset(s));
        ok(er_session_set_control_vector(s, null()));
        ok(eval(s, &toks));
        assert_eq!(logits(s, nv), base);
    }
    // a state file does not record the control vector: saving is refused while one is set
    let st = d.join("st.bin");
    // SAFETY: live handles, valid C strings.
    unsafe {
        ok(er_session_set_control_vector(s, one));
        expect(
            er_session_save(s, cstr(&st).as_ptr()),
            ER_ERR_INVALID_ARGUMENT,
            &["control vector"],
        );
        ok(er_session_set_control_vector(s, null()));
        ok(er_session_save(s, cstr(&st).as_ptr()));
    }
    // misuse
    let bad = write_control_vector(&d, "bad.gguf", &[(0, vec![0.0; e])]);
    let (rc, _) = open(&[&bad], None, (0, 0));
    expect(rc, ER_ERR_FORMAT, &["bad.gguf", "direction.0"]);
    let (rc, _) = open(&[&f], Some(&[f32::NAN]), (0, 0));
    expect(rc, ER_ERR_INVALID_ARGUMENT, &["scales[0]"]);
    let (rc, _) = open(&[&f], None, (3, 2));
    expect(rc, ER_ERR_INVALID_ARGUMENT, &["selects no block"]);
    let (rc, _) = open(&[], None, (0, 0));
    expect(rc, ER_ERR_INVALID_ARGUMENT, &["n = 0"]);
    let (rc, _) = open(&[&d.join("missing.gguf")], None, (0, 0));
    expect(rc, ER_ERR_IO, &["missing.gguf"]);
    // SAFETY: NULL and wrong-kind pointers are checked by the library.
    unsafe {
        let mut cv = null_mut();
        expect(
            er_control_vector_open(m, null(), null(), 1, 0, 0, &mut cv),
            ER_ERR_NULL,
            &["paths"],
        );
        expect(
            er_session_set_control_vector(s, m.cast()),
            ER_ERR_INVALID_HANDLE,
            &["er_control_vector"],
        );
        expect(
            er_session_set_control_vector(null_mut(), one),
            ER_ERR_NULL,
            &[],
        );
        for cv in [one, halves, zero, first] {
            ok(er_control_vector_free(cv));
        }
        expect(er_control_vector_free(one), ER_ERR_INVALID_HANDLE, &[]);
        ok(er_control_vector_free(null_mut()));
        ok(er_session_free(s));
        ok(er_model_free(m));
    }
}

#[test]
fn alora_invocation_tokens_through_c_api() {
    let model = common::smollm2_path();
    let m = open_model(&model);
    let alora = open_adapter(m, &root().join("tests/data/adapters/alora-peft"));
    let plain = open_adapter(m, &root().join("tests/data/adapters/pirate-peft"));
    let mut n = usize::MAX;
    let mut buf = [0i32; 8];
    // SAFETY: valid handles; `buf` holds 8 int32_t.
    unsafe {
        ok(er_adapter_invocation_tokens(
            alora,
            buf.as_mut_ptr(),
            buf.len(),
            &mut n,
        ));
        assert_eq!(&buf[..n], &[1, 520, 9531, 198]);
        ok(er_adapter_invocation_tokens(plain, null_mut(), 0, &mut n));
        assert_eq!(n, 0);
        let rc = er_adapter_invocation_tokens(alora, buf.as_mut_ptr(), 2, &mut n);
        too_small(rc, n, 4, &["4 invocation tokens"]);
        expect(
            er_adapter_invocation_tokens(alora, buf.as_mut_ptr(), 8, null_mut()),
            ER_ERR_NULL,
            &["n_out"],
        );
        expect(
            er_adapter_invocation_tokens(null(), buf.as_mut_ptr(), 8, &mut n),
            ER_ERR_NULL,
            &["er_adapter"],
        );
        let freed = open_adapter(m, &root().join("tests/data/adapters/alora-peft"));
        let _guard = serial();
        ok(er_adapter_free(freed));
        expect(
            er_adapter_invocation_tokens(freed, buf.as_mut_ptr(), 8, &mut n),
            ER_ERR_INVALID_HANDLE,
            &["er_adapter"],
        );
        ok(er_adapter_free(alora));
        ok(er_adapter_free(plain));
        ok(er_model_free(m));
    }
}

/// `r`'s positions `range` as a reference of their own.
fn ref_positions(r: &common::RefSeq, range: std::ops::Range<usize>) -> common::RefSeq {
    fn rows<T: Copy>(a: &common::Array<T>, range: &std::ops::Range<usize>) -> common::Array<T> {
        let mut shape = a.shape.clone();
        shape[0] = range.len();
        let data = range.clone().flat_map(|p| a.row(p).to_vec()).collect();
        common::Array { shape, data }
    }
    common::RefSeq {
        ids: rows(&r.ids, &range),
        logits: rows(&r.logits, &range),
        lse: rows(&r.lse, &range),
    }
}

/// An aLoRA applied through the C API, one token per `er_eval` as a chat decodes: positions before
/// its invocation are the base's bit for bit; switched on in the middle of the invocation (the base
/// having evaluated the conversation so far) it gives exactly what it gives when set from the start;
/// and from the invocation's last token on it matches Hugging Face + PEFT.
#[test]
fn alora_through_c_api_matches_hf_peft() {
    let m = open_model(&common::smollm2_path());
    let alora = open_adapter(m, &root().join("tests/data/adapters/alora-peft"));
    let seqs = root().join("tests/data/reference/smollm2/alora_sequences.json");
    let (_, ids) = common::sequences_in(&seqs)
        .into_iter()
        .find(|(n, _)| n == "chat_capital")
        .unwrap();
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let invocation = [1, 520, 9531, 198];
    let start = ids.windows(4).rposition(|w| w == invocation).unwrap();
    let done = start + invocation.len() - 1;
    let mut nv = 0;
    // SAFETY: valid handle and out-pointer.
    ok(unsafe { er_model_n_vocab(m, &mut nv) });
    // Every position's logits, the aLoRA set just before position `from` (never with `None`).
    let run = |from: Option<usize>| -> Vec<Vec<f32>> {
        let s = new_session(m, 128);
        let mut rows = Vec::new();
        for (p, &t) in ids.iter().enumerate() {
            if from == Some(p) {
                let set = [alora as *const er_adapter];
                // SAFETY: one adapter handle and one scale.
                ok(unsafe { er_session_set_adapters(s, set.as_ptr(), &1.0, 1) });
            }
            ok(eval(s, &[t]));
            rows.push(logits(s, nv));
        }
        let mut n_past = 0;
        // SAFETY: a handle from this closure and a valid out-pointer.
        unsafe {
            ok(er_session_n_past(s, &mut n_past));
            ok(er_session_free(s));
        }
        assert_eq!(
            n_past,
            ids.len(),
            "positions evaluated again are not counted twice"
        );
        rows
    };
    let (base, throughout, switched) = (run(None), run(Some(0)), run(Some(start + 2)));
    for p in 0..start {
        assert_eq!(
            bits(&base[p]),
            bits(&throughout[p]),
            "position {p} < {start}"
        );
    }
    assert_ne!(base[done], throughout[done], "the aLoRA does nothing");
    for p in 0..ids.len() {
        assert_eq!(
            bits(&switched[p]),
            bits(&throughout[p]),
            "switched: position {p}"
        );
    }
    // Until the invocation is complete a token-by-token run cannot know it has begun, so positions
    // start..done are the base's here, and PEFT (which sees the whole sequence) applies the aLoRA
    // there: those are left out.
    let z = common::read_npz(&root().join("tests/data/reference/smollm2/hf_alora.npz"));
    let r = common::reference(&z, "chat_capital");
    let before = common::compare(&ref_positions(&r, 0..start), &throughout[..start]);
    let after = common::compare(&ref_positions(&r, done..ids.len()), &throughout[done..]);
    eprintln!("aLoRA through the C API vs HF+PEFT: before {before:?}, after {after:?}");
    for m in [before, after] {
        assert!(m.kl_mean <= 0.0025 && m.top1 >= 0.985, "{m:?}");
    }
    let _guard = serial();
    // SAFETY: handles from this test.
    unsafe {
        ok(er_adapter_free(alora));
        ok(er_model_free(m));
    }
}
