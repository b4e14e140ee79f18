//! Rough matvec throughput of every tier this CPU runs (weight bytes streamed per second).
//!
//! `cargo run -p edge-run-kernels --release --example matvec_speed [name filter, e.g. Q4_1]`
//!
//! Two working sets per case: one matrix of the model's shape (cache-resident after the first pass)
//! and a 96 MiB stack (3× this machine's L3) of rows (streams from memory, as decode does across a model's layers).
//! Single-threaded. Numbers only; nothing is asserted.
//!
//! For the quantized types, three ways of computing a product are timed per tier:
//! - `1x`: one `matvec` (the `q8` activation mode);
//! - `2pass`: the `q8x2` mode as two `matvec` passes over 32-row sub-chunks (against the quantized
//!   activation, then its residual, into a scratch buffer, then added), as the runtime did before
//!   `MatVec2`;
//! - `fused`: one `matvec2` call (`fused*` where `Kernels::matvec2_fused` says the tier's kernel is
//!   fused; otherwise the tier's entry is itself two passes).
//!
//! Throughput is weight bytes per second of one product (the two-activation modes read each
//! weight byte once per product too), so `fused/2pass` is the speed-up of the fused kernel and
//! `fused/1x` what the second activation costs relative to the `q8` mode.
use edge_run_kernels::{Kernels, QuantType};
use std::time::Instant;

fn fill(buf: &mut [u8], mut s: u64) {
    for b in buf.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 56) as u8;
    }
}

/// Sets every block's f16 scale fields to small finite values (random bytes can be NaN/inf halves).
fn fix_scales(ty: QuantType, w: &mut [u8]) {
    let h = edge_run_kernels::F16Bits::from_f32(0.01).0;
    let (ts, fields): (usize, &[usize]) = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => (ty.type_size(), &[0]),
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => {
            (ty.type_size(), &[0, 2])
        }
        QuantType::Q6K => (ty.type_size(), &[208]),
        _ => return,
    };
    for b in w.chunks_exact_mut(ts) {
        for &f in fields {
            b[f..f + 2].copy_from_slice(&h);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    One,
    TwoPass,
    Fused,
}

fn bench(k: &Kernels, ty: QuantType, n: usize, rows: usize, reps: usize, mode: Mode) -> f64 {
    let rb = ty.row_bytes(n).unwrap();
    let mut w = vec![0u8; rb * rows];
    fill(&mut w, 1);
    fix_scales(ty, &mut w);
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let vt = ty.vec_dot_type();
    let mut xq = vec![0u8; vt.row_bytes(n).unwrap()];
    (k.quantize(vt).unwrap())(&x, &mut xq);
    // A second activation of the same format (its values do not matter for speed).
    let r: Vec<f32> = x.iter().map(|v| v * 0.003 - 0.001).collect();
    let mut xr = vec![0u8; xq.len()];
    (k.quantize(vt).unwrap())(&r, &mut xr);
    let mv = k.matvec(ty).unwrap();
    let mv2 = k.matvec2(ty);
    let mut out = vec![0f32; rows];
    let run = |out: &mut [f32]| match mode {
        Mode::One => mv(n, &w, &xq, out),
        Mode::TwoPass => {
            let mut tmp = [0f32; 32];
            for (c, o) in out.chunks_mut(32).enumerate() {
                let wr = &w[c * 32 * rb..(c * 32 + o.len()) * rb];
                let t = &mut tmp[..o.len()];
                mv(n, wr, &xq, o);
                mv(n, wr, &xr, t);
                for (a, b) in o.iter_mut().zip(t.iter()) {
                    *a += *b;
                }
            }
        }
        Mode::Fused => (mv2.unwrap())(n, &w, &xq, &xr, out),
    };
    run(&mut out); // warm-up
                   // The fastest of `reps` passes: the machine may be shared, and a pass that was descheduled
                   // says nothing about the kernel.
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        run(&mut out);
        std::hint::black_box(&mut out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    w.len() as f64 / best / 1e9
}

fn main() {
    let tiers: Vec<&Kernels> = Kernels::available().collect();
    println!(
        "tiers: {:?}",
        tiers.iter().map(|k| k.tier.name()).collect::<Vec<_>>()
    );
    let cases = [
        (QuantType::Q4_1, 576, 1536, "Q4_1 576→1536 (ffn up)"),
        (QuantType::Q4_1, 1536, 576, "Q4_1 1536→576 (ffn down)"),
        (QuantType::Q8_0, 576, 49152, "Q8_0 576→49152 (output head)"),
        (QuantType::Q4_0, 576, 1536, "Q4_0 576→1536"),
        (QuantType::Q5_0, 640, 2048, "Q5_0 640→2048 (gemma3 ffn up)"),
        (
            QuantType::Q5_0,
            2048,
            640,
            "Q5_0 2048→640 (gemma3 ffn down)",
        ),
        (QuantType::Q5_1, 576, 1536, "Q5_1 576→1536"),
        (QuantType::Q5_1, 1536, 576, "Q5_1 1536→576"),
        (QuantType::Q4K, 1536, 576, "Q4_K 1536→576"),
        (QuantType::Q5K, 1536, 576, "Q5_K 1536→576"),
        (QuantType::Q6K, 1536, 576, "Q6_K 1536→576"),
        (QuantType::F16, 576, 1536, "F16 576→1536"),
        (QuantType::F32, 576, 576, "F32 576→576"),
    ];
    const BIG: usize = 96 << 20;
    let filter = std::env::args().nth(1).unwrap_or_default();
    for (ty, n, rows, name) in cases {
        if !name.contains(&filter) {
            continue;
        }
        let rb = ty.row_bytes(n).unwrap();
        let small_bytes = rb * rows;
        let big_rows = BIG / rb;
        let two = tiers[0].matvec2(ty).is_some();
        println!("{name}");
        for k in &tiers {
            let scalar = k.tier.name() == "scalar";
            let reps_small = ((1usize << 30) / small_bytes).clamp(3, 5_000);
            let reps_small = if scalar {
                reps_small / 8 + 1
            } else {
                reps_small
            };
            let reps_big = if scalar { 2 } else { 12 };
            let modes: &[Mode] = if two {
                &[Mode::One, Mode::TwoPass, Mode::Fused]
            } else {
                &[Mode::One]
            };
            let mut res = vec![];
            for &m in modes {
                res.push((
                    bench(k, ty, n, rows, reps_small, m),
                    bench(k, ty, n, big_rows, reps_big, m),
                ));
            }
            print!("  {:>12}:", k.tier.name());
            for (m, (c, s)) in modes.iter().zip(&res) {
                let label = match m {
                    Mode::One => "1x",
                    Mode::TwoPass => "2pass",
                    Mode::Fused if k.matvec2_fused(ty) => "fused*",
                    Mode::Fused => "fused",
                };
                print!("  {label:>6} {c:6.1} / {s:5.1}");
            }
            if two {
                let (one, tp, fu) = (res[0], res[1], res[2]);
                print!(
                    "   fused/2pass {:.2} / {:.2}, fused/1x {:.2} / {:.2}",
                    fu.0 / tp.0,
                    fu.1 / tp.1,
                    fu.0 / one.0,
                    fu.1 / one.1
                );
            }
            println!();
        }
    }
    println!(
        "(GB/s cache-resident / streaming from memory: weight bytes per second of one product, fastest pass, one thread; * = fused kernel)"
    );
}
