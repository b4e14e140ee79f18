//! `arm-model-harness KIND TYPE N ROWS TOKENS TIER`: one call of an edge-run kernel between the
//! markers `mark_begin`/`mark_end` (see scripts/arm-model/trace.py), on random bytes.
//!
//! KIND: `matvec` (decode, 8-bit activation), `matvec2` (decode, q8x2: activation + residual),
//! `matmul` / `matmul2` (prefill through `Kernels::matmul`, without / with the residual), one call
//! over ROWS rows and TOKENS tokens. TIER: `neon` or `neon-dotprod`.
use edge_run_kernels::{ActRows, Kernels, QuantType};
use std::hint::black_box;

#[no_mangle]
#[inline(never)]
pub extern "C" fn mark_begin() {
    // Distinct bodies, so that the two markers are never merged into one function.
    black_box(1u8);
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn mark_end() {
    black_box(2u16);
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Random blocks with every f16 scale set to a small finite value (random bytes would make some
/// scales NaN, which costs nothing in the model but keeps the outputs meaningless).
fn blocks(ty: QuantType, len: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(len, seed);
    let ts = ty.type_size();
    let scale_at: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q8_1 => &[0, 2],
        QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
        _ => &[],
    };
    for b in v.chunks_exact_mut(ts) {
        for &o in scale_at {
            b[o..o + 2].copy_from_slice(&[0x00, 0x20]); // 2^-7
        }
        if ty == QuantType::Q8K {
            b[..4].copy_from_slice(&(1.0f32 / 64.0).to_le_bytes());
        }
    }
    v
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 7 {
        eprintln!("usage: {} matvec|matvec2|matmul|matmul2 TYPE N ROWS TOKENS TIER", a[0]);
        std::process::exit(2);
    }
    let ty = QuantType::WEIGHTS
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(&a[2]))
        .expect("type");
    let (n, rows, toks): (usize, usize, usize) = (
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
        a[5].parse().unwrap(),
    );
    let k = Kernels::by_name(&a[6]).expect("tier not available on this CPU");
    let vt = ty.vec_dot_type();
    let xb = vt.row_bytes(n).unwrap();
    let w = blocks(ty, ty.row_bytes(n).unwrap() * rows, 1);
    let q = blocks(vt, xb * toks, 2);
    let r = blocks(vt, xb * toks, 3);
    let mut out = vec![0.0f32; rows * toks];
    let two = a[1].ends_with('2');
    mark_begin();
    match a[1].as_str() {
        "matvec" => (k.matvec(ty).unwrap())(n, &w, &q, &mut out[..rows]),
        "matvec2" => (k.matvec2(ty).unwrap())(n, &w, &q, &r, &mut out[..rows]),
        "matmul" | "matmul2" => {
            let x = ActRows {
                q: &q,
                r: two.then_some(&r[..]),
                stride: xb,
                n_tok: toks,
            };
            assert!(k.matmul(ty, n, &w, x, &mut out));
        }
        _ => std::process::exit(2),
    }
    mark_end();
    black_box(&out);
}
