//! Adapter swaps during decode: the latency of the token right after a swap against the others.
use edge_run::adapter::Adapter;
use edge_run::{Result, Session};
use std::sync::Arc;
use std::time::Instant;

/// Median decode-token latency right after an adapter swap and for the tokens between swaps.
#[derive(Clone, Copy, Debug, Default)]
pub struct AfterSwap {
    pub swap_token_ms: f64,
    pub steady_token_ms: f64,
}

/// Decodes `n` tokens after the prompt, swapping between the full adapter set and the set without its
/// last adapter (none, for one adapter) through the session's control handle before every fourth
/// token, and returns the median latency of the tokens that directly follow a swap and of the others.
pub(super) fn first_token_after_swap(
    sess: &mut Session,
    prompt: &[u32],
    set: &[(&Arc<Adapter>, f32)],
    n: usize,
) -> Result<AfterSwap> {
    let ctl = sess.adapter_control();
    sess.set_adapters(set)?;
    sess.reset();
    sess.eval(prompt)?;
    let n = n.max(16);
    let (mut swapped, mut steady) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let swap = i % 4 == 0;
        if swap {
            ctl.set(if i % 8 == 0 {
                &set[..set.len() - 1]
            } else {
                set
            })?;
        }
        let t = edge_run::sampling::argmax(sess.logits());
        let t0 = Instant::now();
        sess.eval(&[t])?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if swap {
            swapped.push(ms)
        } else {
            steady.push(ms)
        }
    }
    sess.set_adapters(set)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(AfterSwap {
        swap_token_ms: median(&mut swapped),
        steady_token_ms: median(&mut steady),
    })
}
