//! Control vectors (llama.cpp's GGUF `direction.N` files), on the tiny llama and Gemma 3 fixtures
//! and SmolLM2: no vector or scale 0 is bit-identical to the base; `direction.N` is added after
//! block N (the last block's direction leaves the KV cache untouched, the one before it does not);
//! two files with scales equal one file with the summed vector; a layer range drops blocks; a
//! vector set and cleared between tokens; malformed files refused with errors that name the file
//! and field (the CLI exits 1).
mod common;
use common::{all_logits, edge_run, empty_temp_dir, fixture, path_arg, refused};
use common::{uniform_values, write_cv};
use edge_run::adapter::control::layer_range;
use edge_run::adapter::ControlVector;
use edge_run::gguf::GgufWriter;
use edge_run::kernels::QuantType;
use edge_run::{Model, Session};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PROMPT: [u32; 6] = [1, 5, 9, 14, 3, 7];

fn models() -> Vec<(&'static str, Arc<Model>)> {
    vec![
        ("llama", open(&fixture("tiny-q8_0.gguf"))),
        ("gemma3", open(&fixture("tiny-gemma3.gguf"))),
    ]
}

/// The fixtures and SmolLM2 (30 blocks: the llama family with more than two).
fn models_and_smollm2() -> Vec<(&'static str, Arc<Model>)> {
    let mut v = models();
    v.push(("smollm2", open(&common::smollm2_path())));
    v
}

fn open(p: &Path) -> Arc<Model> {
    Arc::new(Model::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// A new empty directory `cvec/<name>`, and the layer count and width of `m`.
fn temp_dir_and_dims(m: &Model, name: &str) -> (PathBuf, usize, usize) {
    (empty_temp_dir("cvec", name), m.hp.n_layer, m.hp.n_embd)
}

fn session(m: &Arc<Model>) -> Session {
    Session::new(m.clone(), all_logits(64, 16, 2)).unwrap()
}

/// Every position's logits of `tokens` with `cv` set.
fn logits(m: &Arc<Model>, cv: Option<Arc<ControlVector>>, tokens: &[u32]) -> Vec<f32> {
    let mut s = session(m);
    s.set_control_vector(cv).unwrap();
    s.eval(tokens).unwrap();
    s.logits_all().to_vec()
}

fn load(m: &Model, files: &[(&Path, f32)], range: Option<(usize, usize)>) -> Arc<ControlVector> {
    Arc::new(ControlVector::load(m, files, range).unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn scale_zero_and_none_are_bit_identical() {
    for (arch, m) in models() {
        let d = empty_temp_dir("cvec", &format!("zero-{arch}"));
        let e = m.hp.n_embd;
        let dirs: Vec<_> = (1..m.hp.n_layer)
            .map(|n| (n, uniform_values(e, 2.0, n as u64)))
            .collect();
        let f = write_cv(&d, "a.gguf", &dirs, QuantType::F32);
        let base = logits(&m, None, &PROMPT);
        let zero = load(&m, &[(&f, 0.0)], None);
        assert!(zero.is_empty(), "{arch}: scale 0 left entries");
        assert_eq!(logits(&m, Some(zero), &PROMPT), base, "{arch}: scale 0");
        // a range that keeps no block of the file
        let none = load(&m, &[(&f, 1.0)], Some((0, 0)));
        assert_eq!(
            logits(&m, Some(none), &PROMPT),
            base,
            "{arch}: block 0 only"
        );
        let on = logits(&m, Some(load(&m, &[(&f, 1.0)], None)), &PROMPT);
        assert!(
            max_diff(&on, &base) > 1e-3,
            "{arch}: scale 1 changed nothing"
        );
    }
}

/// `direction.(n_layer-1)` is added after the last block: it changes this position's logits but no
/// key or value, so a continuation without it is the base's bit for bit. `direction.(n_layer-2)` is
/// added before the last block's attention, so the continuation differs.
#[test]
fn direction_n_is_added_after_block_n() {
    for (arch, m) in models_and_smollm2() {
        let (d, nl, e) = temp_dir_and_dims(&m, &format!("place-{arch}"));
        let mut cases = vec![(nl - 1, false)];
        if nl >= 3 {
            cases.extend([(nl - 2, true), (1, true)]);
        }
        let v = uniform_values(e, 4.0, 7);
        let mut base = session(&m);
        base.eval(&PROMPT).unwrap();
        let base_next = base.eval(&[11]).unwrap().to_vec();
        for (n, kv_changes) in cases {
            let f = write_cv(&d, &format!("d{n}.gguf"), &[(n, v.clone())], QuantType::F32);
            let mut s = session(&m);
            s.set_control_vector(Some(load(&m, &[(&f, 1.0)], None)))
                .unwrap();
            s.eval(&PROMPT).unwrap();
            let steered = s.logits().to_vec();
            let mut b2 = session(&m);
            b2.eval(&PROMPT).unwrap();
            assert!(
                max_diff(&steered, b2.logits()) > 1e-3,
                "{arch}: direction.{n} changed nothing"
            );
            s.set_control_vector(None).unwrap();
            let next = s.eval(&[11]).unwrap().to_vec();
            assert_eq!(
                next != base_next,
                kv_changes,
                "{arch}: direction.{n}: continuation after clearing (max diff {})",
                max_diff(&next, &base_next)
            );
        }
    }
}

/// A huge vector on the last block dominates the final norm: the logits become the head applied to
/// the normed direction alone (x + s·v → s·v, rmsnorm(s·v) = rmsnorm(v)), and for s > 0 and s < 0
/// they are the negatives of each other (llama: no soft cap), up to the residual's share.
#[test]
fn last_block_direction_reaches_the_output_norm() {
    let m = open(&fixture("tiny-q8_0.gguf"));
    let (d, nl, e) = temp_dir_and_dims(&m, "huge");
    let v = uniform_values(e, 2.0, 3);
    let f = write_cv(&d, "v.gguf", &[(nl - 1, v)], QuantType::F32);
    let pos = logits(&m, Some(load(&m, &[(&f, 1e6)], None)), &PROMPT);
    let neg = logits(&m, Some(load(&m, &[(&f, -1e6)], None)), &PROMPT);
    let nv = m.hp.n_vocab;
    let amp = pos.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    assert!(amp > 1e-3);
    for t in 1..PROMPT.len() {
        // every position sees the same normed direction
        let (a, b) = (&pos[..nv], &pos[t * nv..(t + 1) * nv]);
        assert!(max_diff(a, b) < 1e-3 * amp, "position {t} differs");
    }
    let sum: Vec<f32> = pos.iter().zip(&neg).map(|(a, b)| a + b).collect();
    assert!(max_diff(&sum, &vec![0.0; sum.len()]) < 1e-3 * amp);
}

#[test]
fn two_files_sum_like_one() {
    for (arch, m) in models_and_smollm2() {
        let (d, nl, e) = temp_dir_and_dims(&m, &format!("sum-{arch}"));
        if nl < 3 {
            continue;
        }
        let a = uniform_values(e, 2.0, 1);
        let b = uniform_values(e, 2.0, 2);
        let c = uniform_values(e, 2.0, 4);
        let fa = write_cv(
            &d,
            "a.gguf",
            &[(1, a.clone()), (nl - 1, c.clone())],
            QuantType::F32,
        );
        let fb = write_cv(&d, "b.gguf", &[(1, b.clone())], QuantType::F32);
        let (sa, sb) = (0.75f32, -0.5f32);
        let summed: Vec<f32> = a.iter().zip(&b).map(|(x, y)| sa * x + sb * y).collect();
        let last: Vec<f32> = c.iter().map(|x| sa * x).collect();
        let fs = write_cv(
            &d,
            "s.gguf",
            &[(1, summed.clone()), (nl - 1, last)],
            QuantType::F32,
        );
        let two = load(&m, &[(&fa, sa), (&fb, sb)], None);
        let one = load(&m, &[(&fs, 1.0)], None);
        assert_eq!(two.layers().collect::<Vec<_>>(), vec![1, nl - 1]);
        // (0 + sa·a) + sb·b is the same f32 sum as sa·a + sb·b: bit-identical
        for l in [1, nl - 1] {
            assert_eq!(two.layer(l), one.layer(l), "{arch}: block {l}");
        }
        let (lt, lo) = (
            logits(&m, Some(two), &PROMPT),
            logits(&m, Some(one.clone()), &PROMPT),
        );
        assert_eq!(lt, lo, "{arch}: logits");
        // F16 storage is converted once and then behaves as its f32 values
        let fh = write_cv(&d, "h.gguf", &[(1, summed)], QuantType::F16);
        let h = load(&m, &[(&fh, 1.0)], None);
        let want = common::f16_bytes(h.layer(1).unwrap());
        assert_eq!(common::f16_bytes(one.layer(1).unwrap()), want);
    }
}

#[test]
fn layer_range_drops_blocks() {
    for (arch, m) in models_and_smollm2() {
        if m.hp.n_layer < 3 {
            continue;
        }
        let (d, nl, e) = temp_dir_and_dims(&m, &format!("range-{arch}"));
        let v1 = uniform_values(e, 2.0, 5);
        let v2 = uniform_values(e, 2.0, 6);
        let both = write_cv(&d, "both.gguf", &[(1, v1.clone()), (2, v2)], QuantType::F32);
        let only1 = write_cv(&d, "one.gguf", &[(1, v1)], QuantType::F32);
        let ranged = load(&m, &[(&both, 1.0)], Some((1, 1)));
        assert_eq!(ranged.layers().collect::<Vec<_>>(), vec![1]);
        let want = logits(&m, Some(load(&m, &[(&only1, 1.0)], None)), &PROMPT);
        assert_eq!(logits(&m, Some(ranged), &PROMPT), want, "{arch}");
        // llama.cpp's defaults: A ≤ 0 → 1, B ≤ 0 → n_layer
        assert_eq!(layer_range(0, 0, nl), Some((1, nl - 1)));
        assert_eq!(layer_range(2, -1, nl), Some((2, nl - 1)));
        assert_eq!(layer_range(1, 1, nl), Some((1, 1)));
        assert_eq!(layer_range(3, 2, nl), None);
    }
}

/// Set before one token, cleared before the next: the first differs, and a vector on the last block
/// (which leaves the cache alone) gives back the base's continuation bit for bit.
#[test]
fn hot_swap_between_tokens() {
    for (arch, m) in models() {
        let (d, nl, e) = temp_dir_and_dims(&m, &format!("swap-{arch}"));
        let f = write_cv(
            &d,
            "v.gguf",
            &[(nl - 1, uniform_values(e, 4.0, 9))],
            QuantType::F32,
        );
        let cv = load(&m, &[(&f, 1.0)], None);
        let mut base = session(&m);
        let mut s = session(&m);
        base.eval(&PROMPT).unwrap();
        s.eval(&PROMPT).unwrap();
        let mut steered = 0;
        for (i, tok) in [4u32, 8, 2, 6].into_iter().enumerate() {
            let on = i % 2 == 0;
            s.set_control_vector(on.then(|| cv.clone())).unwrap();
            let b = base.eval(&[tok]).unwrap().to_vec();
            let x = s.eval(&[tok]).unwrap().to_vec();
            if on {
                steered += usize::from(x != b);
            } else {
                assert_eq!(x, b, "{arch}: token {i} after clearing");
            }
        }
        assert_eq!(steered, 2, "{arch}");
    }
}

#[test]
fn smollm2_scale_zero_identical_and_steering_changes() {
    let m = open(&common::smollm2_path());
    let (d, nl, e) = temp_dir_and_dims(&m, "smollm2");
    let dirs: Vec<_> = (1..nl)
        .map(|n| (n, uniform_values(e, 0.5, n as u64)))
        .collect();
    let f = write_cv(&d, "s.gguf", &dirs, QuantType::F16);
    let toks = [1u32, 504, 3458, 282, 4875];
    let base = logits(&m, None, &toks);
    assert_eq!(logits(&m, Some(load(&m, &[(&f, 0.0)], None)), &toks), base);
    let on = logits(&m, Some(load(&m, &[(&f, 2.0)], None)), &toks);
    assert!(max_diff(&on, &base) > 1e-2);
}

/// One malformed file per case, refused by the library (error names the file and the field) and by
/// the CLI (exit 1, no panic).
#[test]
fn malformed_files_are_refused() {
    let mp = fixture("tiny-q8_0.gguf");
    let m = open(&mp);
    let (d, nl, e) = temp_dir_and_dims(&m, "bad");
    let good = uniform_values(e, 1.0, 1);
    let tensor = |name: &str, dims: &[u64], ty: QuantType, bytes: Vec<u8>| {
        let mut w = GgufWriter::new();
        w.add("general.architecture", "controlvector").unwrap();
        w.add_tensor(name, dims, ty, bytes).unwrap();
        w.to_bytes()
    };
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let ok = tensor(
        "direction.1",
        &[e as u64],
        QuantType::F32,
        common::f32_bytes(&good),
    );
    let mut wrong_arch = GgufWriter::new();
    wrong_arch.add("general.architecture", "gemma3").unwrap();
    wrong_arch
        .add_tensor(
            "direction.1",
            &[e as u64],
            QuantType::F32,
            common::f32_bytes(&good),
        )
        .unwrap();
    let nbig_needle = format!("block {nl}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "name",
            tensor(
                "dir.1",
                &[e as u64],
                QuantType::F32,
                common::f32_bytes(&good),
            ),
            "dir.1",
        ),
        (
            "n0",
            tensor(
                "direction.0",
                &[e as u64],
                QuantType::F32,
                common::f32_bytes(&good),
            ),
            "direction.0",
        ),
        (
            "nbig",
            tensor(
                &format!("direction.{nl}"),
                &[e as u64],
                QuantType::F32,
                common::f32_bytes(&good),
            ),
            &nbig_needle,
        ),
        (
            "sign",
            tensor(
                "direction.-1",
                &[e as u64],
                QuantType::F32,
                common::f32_bytes(&good),
            ),
            "direction.-1",
        ),
        (
            "len",
            tensor(
                "direction.1",
                &[e as u64 - 1],
                QuantType::F32,
                common::f32_bytes(&good[1..]),
            ),
            ".dims",
        ),
        (
            "twod",
            tensor(
                "direction.1",
                &[e as u64, 1],
                QuantType::F32,
                common::f32_bytes(&good),
            ),
            ".dims",
        ),
        (
            "type",
            tensor(
                "direction.1",
                &[e as u64],
                QuantType::Q8_0,
                vec![0u8; e / 32 * 34],
            ),
            ".type",
        ),
        (
            "nan",
            tensor(
                "direction.1",
                &[e as u64],
                QuantType::F32,
                common::f32_bytes(&nan),
            ),
            "direction.1[3]",
        ),
        ("arch", wrong_arch.to_bytes(), "general.architecture"),
        ("trunc", ok[..ok.len() - 9].to_vec(), "cv-trunc.gguf"),
        ("empty", GgufWriter::new().to_bytes(), "no direction.N"),
    ];
    for (tag, bytes, needle) in &cases {
        let p = d.join(format!("cv-{tag}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        let err = ControlVector::load(&m, &[(&p, 1.0)], None)
            .map(|_| ())
            .expect_err(tag)
            .to_string();
        assert!(err.contains(&format!("cv-{tag}.gguf")), "{tag}: {err}");
        assert!(err.contains(needle), "{tag}: `{needle}` not in {err}");
        let out = d.join("out.npy");
        let o = edge_run(&[
            "logits",
            "-m",
            path_arg(&mp),
            "--tokens",
            "1,2,3",
            "-o",
            path_arg(&out),
            "--control-vector",
            path_arg(&p),
        ]);
        refused(&o, 1, &format!("cv-{tag}.gguf"));
    }
    // a bad scale and a model of another width
    let p = d.join("ok.gguf");
    std::fs::write(&p, &ok).unwrap();
    assert!(ControlVector::load(&m, &[(&p, f32::INFINITY)], None).is_err());
    let g = open(&fixture("tiny-gemma3.gguf"));
    if g.hp.n_embd != e {
        let err = ControlVector::load(&g, &[(&p, 1.0)], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ok.gguf") && err.contains("dims"), "{err}");
    }
}

/// `logits` writes `.npy` bytes; with `extra` flags.
fn cli_logits(model: &Path, out: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "logits",
        "-m",
        path_arg(model),
        "--tokens",
        "1,5,9,14",
        "-o",
        path_arg(out),
        "-t",
        "2",
    ];
    args.extend_from_slice(extra);
    let o = edge_run(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// llama.cpp's flags: `--control-vector FILE`, `--control-vector-scaled FILE S` (repeatable, summed),
/// `--control-vector-layer-range A B`; scale 0 is the base's bytes; usage errors exit 2.
#[test]
fn cli_flags() {
    let mp = fixture("tiny-gemma3.gguf");
    let m = open(&mp);
    let (d, nl, e) = temp_dir_and_dims(&m, "cli");
    let v = uniform_values(e, 2.0, 8);
    let f = write_cv(&d, "v.gguf", &[(1, v.clone()), (nl - 1, v)], QuantType::F32);
    let fa = path_arg(&f);
    let out = d.join("l.npy");
    let base = cli_logits(&mp, &out, &[]);
    let zero = cli_logits(&mp, &out, &["--control-vector-scaled", fa, "0"]);
    assert_eq!(zero, base, "scale 0");
    let one = cli_logits(&mp, &out, &["--control-vector", fa]);
    assert_ne!(one, base, "scale 1");
    let halves = cli_logits(
        &mp,
        &out,
        &[
            "--control-vector-scaled",
            fa,
            "0.5",
            "--control-vector-scaled",
            fa,
            "0.5",
        ],
    );
    assert_eq!(halves, one, "0.5 + 0.5");
    let neg = cli_logits(&mp, &out, &["--control-vector-scaled", fa, "-1"]);
    assert_ne!(neg, one);
    // the range keeps block 1 only: the same as a file with only direction.1
    let ranged = cli_logits(
        &mp,
        &out,
        &[
            "--control-vector",
            fa,
            "--control-vector-layer-range",
            "1",
            "1",
        ],
    );
    let f1 = write_cv(
        &d,
        "v1.gguf",
        &[(1, uniform_values(e, 2.0, 8))],
        QuantType::F32,
    );
    assert_eq!(
        ranged,
        cli_logits(&mp, &out, &["--control-vector", path_arg(&f1)])
    );
    // generation (tiny Gemma 3) and chat (SmolLM2, which has a template) accept the flags
    let sm = common::smollm2_path();
    let ms = open(&sm);
    let fs = write_cv(
        &d,
        "s.gguf",
        &[(5, uniform_values(ms.hp.n_embd, 1.0, 2))],
        QuantType::F32,
    );
    for (model, cv, chat) in [(&mp, &f, false), (&sm, &fs, true)] {
        let mut args = vec!["-m", path_arg(model), "-n", "3", "--temp", "0", "-p", "hi"];
        args.extend(["--control-vector-scaled", path_arg(cv), "0.5"]);
        if chat {
            args.push("--chat");
        }
        let o = edge_run(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // bench applies it to its runs
    let args = [
        "bench",
        "-m",
        path_arg(&mp),
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
    ];
    let o = edge_run(&[&args[..], &["--control-vector", fa]].concat());
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // usage errors
    let lg = |extra: &[&str]| {
        let mut a = vec![
            "logits",
            "-m",
            path_arg(&mp),
            "--tokens",
            "1",
            "-o",
            path_arg(&out),
        ];
        a.extend_from_slice(extra);
        edge_run(&a)
    };
    refused(&lg(&["--control-vector-scaled", fa, "x"]), 2, "\"x\"");
    refused(&lg(&["--control-vector-scaled", fa, "inf"]), 2, "finite");
    refused(&lg(&["--control-vector-scaled", fa]), 2, "SCALE");
    refused(
        &lg(&[
            "--control-vector",
            fa,
            "--control-vector-layer-range",
            "3",
            "2",
        ]),
        2,
        "selects no block",
    );
    refused(
        &lg(&[
            "--control-vector",
            fa,
            "--control-vector-layer-range",
            "a",
            "2",
        ]),
        2,
        "\"a\"",
    );
    refused(
        &lg(&["--control-vector-layer-range", "1", "2"]),
        2,
        "needs --control-vector",
    );
    refused(
        &lg(&["--control-vector", "/nonexistent/cv.gguf"]),
        1,
        "/nonexistent/cv.gguf",
    );
}

/// A state file does not record a control vector: a session applying one refuses to save or load,
/// and the CLI refuses `--prompt-cache` with a control vector (exit 2).
#[test]
fn states_are_refused_while_a_control_vector_is_set() {
    let mp = fixture("tiny-gemma3.gguf");
    let m = open(&mp);
    let d = empty_temp_dir("cvec", "state");
    let v = uniform_values(m.hp.n_embd, 1.0, 1);
    let cv = Arc::new(ControlVector::from_rows(&m, &[(1, &v)]).unwrap());
    let mut s = session(&m);
    s.eval(&PROMPT).unwrap();
    let mut saved = Vec::new();
    s.save_state_to(&mut saved, b"").unwrap();
    s.set_control_vector(Some(cv)).unwrap();
    let mut out = Vec::new();
    let e = s.save_state_to(&mut out, b"").unwrap_err().to_string();
    assert!(e.contains("control vector"), "{e}");
    let e = s.load_state_from(&saved, "st").unwrap_err().to_string();
    assert!(e.contains("control vector"), "{e}");
    s.set_control_vector(None).unwrap();
    s.load_state_from(&saved, "st").unwrap();
    let f = write_cv(&d, "v.gguf", &[(1, v)], QuantType::F32);
    let cache = d.join("cache.bin");
    let o = edge_run(&[
        "-m",
        path_arg(&mp),
        "-p",
        "hi",
        "-n",
        "1",
        "--prompt-cache",
        path_arg(&cache),
        "--control-vector",
        path_arg(&f),
    ]);
    refused(&o, 2, "--prompt-cache");
}
