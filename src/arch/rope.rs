//! Rotary position embeddings: the per-frequency angles of a batch's positions, and of a shift back.

/// RoPE of one frequency set: inverse frequencies and the cos/sin of the current batch's positions.
pub(crate) struct Rope {
    /// [rope_dim / 2] (freq_scale and rope_freqs folded in).
    pub inv_freq: Vec<f32>,
    /// [B, rope_dim / 2] (cos, sin), both times `mscale`
    pub cs: Vec<(f32, f32)>,
    /// Factor on the cosines and sines of the positions (LongRoPE's attention factor; 1 otherwise):
    /// the rotated dimensions of q and k come out scaled by it. A shift ([`Rope::set_shift`]) is a
    /// plain rotation.
    pub mscale: f32,
}

impl Rope {
    pub(crate) fn new(
        hp: &crate::model::HParams,
        base: f32,
        scale: f32,
        divisors: Option<&[f32]>,
        n_batch: usize,
    ) -> Rope {
        let half = hp.rope_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| scale * base.powf(-2.0 * i as f32 / hp.rope_dim as f32))
            .collect();
        if let Some(d) = divisors {
            for (f, d) in inv_freq.iter_mut().zip(d) {
                *f /= d;
            }
        }
        Rope {
            inv_freq,
            cs: vec![(0.0, 0.0); n_batch * half],
            mscale: 1.0,
        }
    }

    /// The global layers' RoPE of model `m` in a context of `n_ctx`: the file's base and scale, with
    /// Llama 3's `rope_freqs` divisors, or LongRoPE's factors (the long ones for a context past the
    /// original one, else the short ones) and its attention factor.
    pub(crate) fn global(m: &crate::model::Model, n_ctx: usize, n_batch: usize) -> Rope {
        let hp = &m.hp;
        let divisors = match &m.rope_factors {
            Some((long, short)) => Some(m.f32s(if n_ctx > hp.n_ctx_orig { long } else { short })),
            None => m.rope_freqs.as_ref().map(|w| m.f32s(w)),
        };
        let mut rope = Rope::new(hp, hp.rope_freq_base, hp.rope_freq_scale, divisors, n_batch);
        rope.mscale = hp.rope_attn_factor;
        rope
    }

    /// The sliding-window layers' RoPE (their own base and scale; empty without such layers).
    pub(crate) fn sliding_window(hp: &crate::model::HParams, n_batch: usize) -> Rope {
        let rows = if hp.n_swa > 0 { n_batch } else { 0 };
        Rope::new(
            hp,
            hp.rope_freq_base_swa,
            hp.rope_freq_scale_swa,
            None,
            rows,
        )
    }

    /// Angles for positions pos0..pos0+b.
    pub fn set_positions(&mut self, pos0: usize, b: usize) {
        let half = self.inv_freq.len();
        for t in 0..b {
            let p = (pos0 + t) as f32;
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (p * f).sin_cos();
                self.cs[t * half + i] = (c * self.mscale, s * self.mscale);
            }
        }
    }
}

impl Rope {
    /// Angles that move a rotated row back by `d` positions (angle `−d·θᵢ`, computed in f64), in the
    /// first row of `cs` (the next batch's `set_positions` overwrites it). Returns that row.
    pub fn set_shift(&mut self, d: usize) -> &[(f32, f32)] {
        let half = self.inv_freq.len();
        for (c, &f) in self.cs[..half].iter_mut().zip(&self.inv_freq) {
            let (s, co) = (-(d as f64) * f as f64).sin_cos();
            *c = (co as f32, s as f32);
        }
        &self.cs[..half]
    }
}
