//! The tool subcommands — `adapter convert`, `merge`, `diagnose`, `bench` (with `--vs-llama-cpp`),
//! `quantize` (llama.cpp's quantizer):
//! flags in, the tool's report out; the tools themselves live in [`crate::tools`].
use crate::args::{AdapterCmd, BenchArgs, DiagnoseArgs, MergeArgs, QuantizeArgs};
use crate::{
    load_adapter, n_threads, open_model, parse_adapter_arg, parse_adapter_args, session_config,
    tools, usage, Failure,
};
use edge_run::adapter::Adapter;
use edge_run::Model;
use std::sync::Arc;

/// A tool's report on stdout: its JSON with `--json`, else its text tables.
fn print_report(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
) {
    if json {
        outln!("{}", to_json());
    } else {
        outln!("{}", text().trim_end());
    }
}

pub(crate) fn cmd_adapter(c: AdapterCmd) -> Result<(), Failure> {
    match c {
        AdapterCmd::Convert(a) => {
            let model = Model::open(&a.m.model)?;
            let r = tools::convert::convert(&a.input, &model.base_info, &a.output)?;
            for w in &r.warnings {
                eprintln!("edge-run: warning: {w}");
            }
            eprintln!(
                "wrote {} ({} LoRA tensors, {} bytes); scales folded into lora_b: {:?}; adapter.lora.alpha = 0",
                a.output.display(),
                r.tensors,
                r.bytes,
                r.scales
            );
            Ok(())
        }
    }
}

pub(crate) fn cmd_merge(a: MergeArgs) -> Result<(), Failure> {
    use tools::merge::{merge, MergeOptions, TargetType};
    let target = a.ty.quant_type().map_or(TargetType::Same, TargetType::To);
    let adapters = parse_adapter_args(&a.adapters)?;
    let n_threads = n_threads(a.threads)?;
    let t0 = std::time::Instant::now();
    let r = merge(
        &a.m.model,
        &adapters,
        &a.output,
        &MergeOptions {
            target,
            n_threads,
            progress: true,
        },
    )?;
    for n in &r.notes {
        eprintln!("edge-run: note: {n}");
    }
    if let Some((from, to)) = r.file_type {
        eprintln!("edge-run: general.file_type {from} -> {to}");
    }
    eprintln!(
        "wrote {} ({} bytes) in {:.1} s; recorded in {}: {:?}",
        r.output.display(),
        r.bytes,
        t0.elapsed().as_secs_f64(),
        tools::merge::MERGED_KEY,
        r.adapters
    );
    print_report(a.json, || r.to_json(), || r.table());
    Ok(())
}

pub(crate) fn cmd_diagnose(a: DiagnoseArgs) -> Result<(), Failure> {
    use tools::diagnose::{diagnose, DiagnoseOptions};
    let n_threads = n_threads(a.threads)?;
    if a.max_tokens == Some(0) {
        return Err(usage("--max-tokens must be at least 1"));
    }
    let text = match &a.text {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| Failure(1, format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let model = open_model(&a.m.model)?;
    let loaded = a
        .adapters
        .iter()
        .map(|s| load_adapter(&model, s))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = a
        .adapters
        .iter()
        .map(|s| {
            parse_adapter_arg(s).map(|(p, _)| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let set: Vec<(&Arc<Adapter>, f32, &str)> = loaded
        .iter()
        .zip(&names)
        .map(|((ad, s), n)| (ad, *s, n.as_str()))
        .collect();
    let opts = DiagnoseOptions {
        n_threads,
        max_tokens: a.max_tokens,
        progress: true,
    };
    let r = diagnose(&model, &set, text.as_deref(), &opts)?;
    if let Some(p) = &a.plot {
        let tmp = p.with_extension("svg.partial");
        std::fs::write(&tmp, r.svg())
            .and_then(|_| std::fs::rename(&tmp, p))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Failure(1, format!("{}: {e}", p.display()))
            })?;
        eprintln!("wrote {}", p.display());
    }
    print_report(a.json, || r.to_json(), || r.tables());
    Ok(())
}

pub(crate) fn cmd_bench(a: BenchArgs) -> Result<(), Failure> {
    if a.n_prompt == 0 || a.n_gen == 0 || a.reps == 0 {
        return Err(usage("-p, -n and -r must be at least 1"));
    }
    let model = open_model(&a.m.model)?;
    let cfg = session_config(&model, &a.rt, false)?;
    let workload = tools::bench::Workload {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        reps: a.reps,
        adapters: parse_adapter_args(&a.rt.adapters)?,
        control_vector: crate::control_vector(&model, &a.rt)?,
        ..Default::default()
    };
    if a.vs_llama_cpp && workload.control_vector.is_some() {
        return Err(usage(
            "--vs-llama-cpp runs llama.cpp without control vectors; drop one or the other",
        ));
    }
    let vs_model = if a.vs_llama_cpp {
        vs_llama_cpp::available()?;
        Some(model.clone())
    } else {
        None
    };
    let report = tools::bench::run(
        model,
        &cfg,
        &workload,
        a.compare_model.as_deref(),
        &mut |line| eprintln!("{line}"),
    )?;
    let vs = match &vs_model {
        Some(m) => Some(vs_llama_cpp::run(&a.m.model, m, &workload, &report)?),
        None => None,
    };
    outln!("{}", report.table());
    if let Some(v) = &vs {
        outln!("{}", v.table);
    }
    if a.json {
        match &vs {
            Some(v) => outln!("{}", v.json(&report.to_json())),
            None => outln!("{}", report.to_json()),
        }
    }
    Ok(())
}

/// `edge-run quantize`: llama.cpp's quantizer, writing to a temporary file beside the output and renaming
/// it on success, so a failed run leaves whatever was at the output path untouched.
pub(crate) fn cmd_quantize(a: QuantizeArgs) -> Result<(), Failure> {
    if !cfg!(feature = "ggml") {
        return Err(usage(
            "quantize needs edge-run built with `--features ggml` (llama.cpp's quantizer in the same process)",
        ));
    }
    let n_threads = n_threads(a.threads)?;
    let same = |x: &std::path::Path, y: &std::path::Path| matches!((x.canonicalize(), y.canonicalize()), (Ok(p), Ok(q)) if p == q);
    if same(&a.m.model, &a.output) {
        return Err(usage(format!(
            "-o {}: the output must not be the input model",
            a.output.display()
        )));
    }
    // Open it first: a file that is not a readable GGUF is refused with edge-run's message.
    Model::open(&a.m.model)?;
    quantize_with_llama_cpp(&a, n_threads)
}

#[cfg(feature = "ggml")]
fn quantize_with_llama_cpp(a: &QuantizeArgs, n_threads: usize) -> Result<(), Failure> {
    use tools::ggml::quantize::{quantize_model, Ftype};
    let ftype = Ftype::parse(&a.ty).map_err(|e| usage(format!("--type: {e}")))?;
    let mut tmp = a.output.clone().into_os_string();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let t0 = std::time::Instant::now();
    let done = quantize_model(&a.m.model, &tmp, ftype, n_threads).and_then(|()| {
        std::fs::rename(&tmp, &a.output).map_err(|source| edge_run::Error::Io {
            path: a.output.clone(),
            source,
        })
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let bytes = std::fs::metadata(&a.output).map_or(0, |m| m.len());
    eprintln!(
        "wrote {} ({}, {bytes} bytes) in {:.1} s",
        a.output.display(),
        ftype.name(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(not(feature = "ggml"))]
fn quantize_with_llama_cpp(_: &QuantizeArgs, _: usize) -> Result<(), Failure> {
    Err(usage("quantize: llama.cpp is not built in"))
}

// --- `edge-run bench --vs-llama-cpp` (feature `ggml`; the runner lives in tools::ggml) ----------------
mod vs_llama_cpp {
    use crate::tools::bench::{Report, Workload};
    use crate::Failure;
    use edge_run::Model;
    use std::path::Path;

    /// llama.cpp's results next to edge-run's: a printable table and the JSON fields.
    #[cfg_attr(not(feature = "ggml"), allow(dead_code))]
    pub struct Vs {
        pub table: String,
        fields: Vec<(&'static str, f64)>,
        repacked: bool,
    }

    impl Vs {
        /// edge-run's JSON object with `llamacpp_repacked`, `llamacpp_pp_tps`, `llamacpp_tg_tps`, `pp_ratio`, `tg_ratio` (base
        /// model) and, with adapters, `llamacpp_lora_pp_tps`, `llamacpp_lora_tg_tps`, `lora_pp_ratio`,
        /// `lora_tg_ratio` added.
        pub fn json(&self, edge_run_json: &str) -> String {
            let mut v: serde_json::Value =
                serde_json::from_str(edge_run_json).unwrap_or_else(|_| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                for (k, x) in &self.fields {
                    o.insert((*k).to_string(), serde_json::json!(x));
                }
                o.insert("llamacpp_repacked".into(), serde_json::json!(self.repacked));
            }
            crate::tools::sorted_keys(v).to_string()
        }
    }

    /// Refuses `--vs-llama-cpp` up front in a build without llama.cpp.
    pub fn available() -> Result<(), Failure> {
        if cfg!(feature = "ggml") {
            Ok(())
        } else {
            Err(crate::usage("--vs-llama-cpp needs edge-run built with `--features ggml` (llama.cpp in the same process)"))
        }
    }

    #[cfg(feature = "ggml")]
    pub fn run(path: &Path, model: &Model, w: &Workload, report: &Report) -> Result<Vs, Failure> {
        eprintln!(
            "llama.cpp (same process): {}",
            crate::tools::ggml::system_info()
        );
        let lc = crate::tools::ggml::bench::bench_workload(
            path,
            &model.base_info,
            model.hp.n_vocab,
            w,
            report.threads,
            report.kv_types,
        )?;
        let mut fields = vec![
            ("llamacpp_pp_tps", lc.base.pp_tps),
            ("llamacpp_tg_tps", lc.base.tg_tps),
            ("pp_ratio", report.base.pp_tps / lc.base.pp_tps),
            ("tg_ratio", report.base.tg_tps / lc.base.tg_tps),
        ];
        let mut table = format!(
            "llama.cpp: repacked weights (its default extra buffer types): {}\n",
            if lc.repacked { "yes" } else { "no" }
        );
        table += &format!(
            "| {:<28} | {:>10} | {:>10} | {:>12} | {:>12} |\n",
            "llama.cpp, same workload", "pp tok/s", "tg tok/s", "pp edge/lcpp", "tg edge/lcpp"
        );
        table += &format!(
            "| {:<28} | {:>10.1} | {:>10.1} | {:>12.2} | {:>12.2} |",
            "base", lc.base.pp_tps, lc.base.tg_tps, fields[2].1, fields[3].1
        );
        if let (Some(l), Some(e)) = (lc.lora, &report.lora) {
            let (pr, tr) = (e.speed.pp_tps / l.pp_tps, e.speed.tg_tps / l.tg_tps);
            table += &format!(
                "\n| {:<28} | {:>10.1} | {:>10.1} | {:>12.2} | {:>12.2} |",
                format!("+{} adapter(s)", e.n_adapters),
                l.pp_tps,
                l.tg_tps,
                pr,
                tr
            );
            fields.extend([
                ("llamacpp_lora_pp_tps", l.pp_tps),
                ("llamacpp_lora_tg_tps", l.tg_tps),
                ("lora_pp_ratio", pr),
                ("lora_tg_ratio", tr),
            ]);
        }
        Ok(Vs {
            table,
            fields,
            repacked: lc.repacked,
        })
    }

    #[cfg(not(feature = "ggml"))]
    pub fn run(_: &Path, _: &Model, _: &Workload, _: &Report) -> Result<Vs, Failure> {
        available()?;
        Err(crate::usage("--vs-llama-cpp: llama.cpp is not built in"))
    }
}
