//! Context shift: when the context is full, drop a span of positions after the first `keep` and move
//! the rest down, as llama.cpp does. The moved keys were rotated (RoPE) for their old positions; each
//! is rotated back by the distance it moved, in the layer's own frequencies and pairing, so the cache
//! reads as if those tokens had been evaluated at their new positions (their values, and what their
//! keys had attended to, stay as computed).
//!
//! A sliding-window layer whose ring has wrapped no longer holds its oldest positions. It can shift in
//! place only if no query after the shift can look back at a kept position, even after truncating one
//! token (`keep + window ≤ n_new`);
//! otherwise the session re-evaluates the shifted context instead ([`in_place`] says which).
use super::ops::State;
use crate::model::{HParams, Model};

/// Whether dropping positions `keep..keep + d` of a cache holding `..n_past` can be done in place in
/// every layer (see the module documentation).
pub(crate) fn in_place(hp: &HParams, n_ctx: usize, keep: usize, d: usize, n_past: usize) -> bool {
    let n_new = n_past - d;
    (0..hp.n_layer).all(|l| {
        let cap = hp.kv_positions(l, n_ctx);
        n_past <= cap || keep + hp.n_swa <= n_new
    })
}

/// Drops positions `keep..keep + d` from every layer's cache and re-rotates the moved keys (the
/// caller checked [`in_place`]). Uses the batch's key buffer as scratch; allocates nothing.
pub(crate) fn shift(m: &Model, st: &mut State, keep: usize, d: usize, n_past: usize) {
    let hp = &m.hp;
    let (hd, half) = (hp.head_dim, hp.rope_dim / 2);
    for table in 0..st.rope.len() {
        if st.rope[table].cs.len() >= half {
            st.rope[table].set_shift(d);
        }
    }
    let State { rope, kv, work, .. } = st;
    let (_, kk, _) = work.qkv();
    for l in 0..hp.n_layer {
        let (table, rotate) = super::qk_rope(hp, l);
        let back = &rope[table].cs[..half];
        kv.shift_layer(l, (keep, d, n_past), kk, |row| rotate(row, hd, back));
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::block::Rotate;
    use crate::arch::kv::{KvCache, KvType};
    use crate::arch::ops::{rope_neox, rope_pairs, Rope};
    use crate::model::{Arch, HParams};

    /// Rotating a row for position p, then moving it back by d ([`Rope::set_shift`]), gives the row
    /// rotated for p − d.
    #[test]
    fn shifting_back_equals_rotating_at_the_new_position() {
        let (hd, half) = (8usize, 4usize);
        let mut rope = Rope {
            inv_freq: (0..half)
                .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
                .collect(),
            cs: vec![(0.0, 0.0); half],
            mscale: 1.0,
        };
        let x: Vec<f32> = (0..2 * hd)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let rotated = |rope: &mut Rope, rotate: Rotate, p: usize| {
            rope.set_positions(p, 1);
            let mut r = x.clone();
            rotate(&mut r, hd, &rope.cs);
            r
        };
        for rotate in [rope_pairs as Rotate, rope_neox] {
            for (p, d) in [(1000usize, 400usize), (37, 36), (5000, 2499)] {
                let mut shifted = rotated(&mut rope, rotate, p);
                rotate(&mut shifted, hd, rope.set_shift(d));
                let direct = rotated(&mut rope, rotate, p - d);
                for (a, b) in shifted.iter().zip(&direct) {
                    assert!((a - b).abs() < 1e-4, "p {p} d {d}: {a} vs {b}");
                }
                // the shift moves the row: it differs from the row at the old position
                let old = rotated(&mut rope, rotate, p);
                assert!(old.iter().zip(&direct).any(|(a, b)| (a - b).abs() > 1e-2));
            }
        }
    }

    fn hparams() -> HParams {
        HParams {
            arch: Arch::Gemma3,
            n_vocab: 8,
            n_embd: 32,
            n_layer: 2,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 32,
            n_ff: 32,
            n_ctx_train: 64,
            rope_dim: 32,
            rope_freq_base: 10000.0,
            rope_freq_scale: 1.0,
            rms_eps: 1e-6,
            att_scale: 1.0,
            embd_scale: 1.0,
            logit_softcap: 0.0,
            n_swa: 6,
            swa: vec![false, true],
            rope_freq_base_swa: 10000.0,
            rope_freq_scale_swa: 1.0,
            n_ctx_orig: 0,
            rope_attn_factor: 1.0,
        }
    }

    /// After a shift, every position a layer holds has the row of the position it came from (keys
    /// marked by the re-rotation, values untouched), in the global layer and in the wrapped ring, for
    /// every cache type; the re-rotation sees exactly the moved rows the layer holds.
    #[test]
    fn shift_moves_rows_to_their_new_positions() {
        let hp = hparams();
        let (n_ctx, kvd) = (16usize, hp.kv_dim());
        let (keep, d, n_past) = (2usize, 6usize, 16usize);
        let n_new = n_past - d;
        // row of position p: every value p + 1 (exact in every type, up to Q8_0's f16 scale)
        let rows: Vec<f32> = (0..n_past)
            .flat_map(|p| std::iter::repeat_n(p as f32 + 1.0, kvd))
            .collect();
        for ty in KvType::ALL {
            let mut kv = KvCache::new(&hp, n_ctx, n_past, ty, ty).unwrap();
            kv.stage(&rows, &rows);
            for l in 0..hp.n_layer {
                kv.append(l, 0, n_past, &rows, &rows);
            }
            let mut scratch = vec![0.0; kvd];
            for l in 0..hp.n_layer {
                let mut seen = Vec::new();
                kv.shift_layer(l, (keep, d, n_past), &mut scratch, |row| {
                    seen.push(row[0].round() as usize - 1);
                    row.iter_mut().for_each(|v| *v = -*v); // mark the re-rotated keys
                });
                let cap = kv.cap[l];
                let held = n_new.saturating_sub(cap)..n_new;
                let moved: Vec<usize> = (keep.max(held.start)..n_new).map(|p| p + d).collect();
                assert_eq!(seen, moved, "{ty:?} layer {l}: rows re-rotated");
                for p in held.clone().filter(|&p| p >= keep || cap >= n_past) {
                    let from = if p < keep { p } else { p + d } as f32 + 1.0;
                    let key = if p < keep { from } else { -from };
                    let at = kv.off[l] + (p % cap) * kvd;
                    let (k, v) = (kv.k.value_at(at), kv.v.value_at(at));
                    assert!(
                        (k - key).abs() <= 0.01 * from,
                        "{ty:?} l {l} p {p}: key {k}"
                    );
                    assert!(
                        (v - from).abs() <= 0.01 * from,
                        "{ty:?} l {l} p {p}: value {v}"
                    );
                }
            }
        }
    }

    /// A wrapped ring shifts in place only when no later query can see a kept position.
    #[test]
    fn a_wrapped_ring_shifts_in_place_only_without_visible_kept_positions() {
        let hp = hparams(); // window 6
        assert!(super::in_place(&hp, 16, 1, 8, 16)); // n_new 8: queries see 3.. (2.. after a truncate)
        assert!(super::in_place(&hp, 16, 2, 8, 16));
        assert!(!super::in_place(&hp, 16, 3, 8, 16)); // kept position 2 visible after a truncate
        assert!(super::in_place(&hp, 16, 4, 2, 6)); // the ring has not wrapped
    }
}
