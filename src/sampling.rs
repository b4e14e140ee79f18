//! Token sampling: greedy, temperature, top-k, top-p, min-p and a repetition penalty, driven by a seeded
//! PRNG so that the same seed gives the same text. All scratch space is allocated in `Sampler::new`.

/// Sampling parameters, named and defaulted as in llama.cpp.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 (or less) means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::invalid(m));
        if !self.temperature.is_finite() {
            return bad(format!(
                "temperature must be finite, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat-penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// (logit or probability, token id) candidates; capacity = vocabulary size.
    cand: Vec<(f32, u32)>,
    /// The last `repeat_last_n` tokens (ring buffer).
    recent: Vec<u32>,
    recent_pos: usize,
}

impl Sampler {
    pub fn new(params: SamplingParams, n_vocab: usize) -> Self {
        let rng = Rng::new(params.seed);
        let last_n = params.repeat_last_n;
        // Cap the up-front reservation so an absurd repeat_last_n cannot abort on allocation; windows larger
        // than 65536 tokens grow the history (allocating) while it fills.
        Sampler {
            params,
            rng,
            cand: Vec::with_capacity(n_vocab),
            recent: Vec::with_capacity(last_n.min(1 << 16)),
            recent_pos: 0,
        }
    }

    /// Tell the sampler about a token that is now part of the context (prompt or generated).
    pub fn accept(&mut self, id: u32) {
        let n = self.params.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.recent.len() < n {
            self.recent.push(id);
        } else {
            self.recent[self.recent_pos] = id;
            self.recent_pos = (self.recent_pos + 1) % n;
        }
    }

    /// Choose the next token from one row of logits. Allocates nothing once warmed up.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if p.repeat_penalty != 1.0 {
            for &t in &self.recent {
                if let Some(c) = self.cand.get_mut(t as usize) {
                    // As llama.cpp: divide positive logits, multiply negative ones.
                    c.0 = if c.0 > 0.0 {
                        c.0 / p.repeat_penalty
                    } else {
                        c.0 * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return greedy(&self.cand);
        }
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        // top-k
        let k = if p.top_k == 0 {
            self.cand.len()
        } else {
            p.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        // softmax with temperature
        let max = self.cand[0].0;
        let mut sum = 0.0f64;
        for c in self.cand.iter_mut() {
            c.0 = ((c.0 - max) / p.temperature).exp();
            sum += c.0 as f64;
        }
        for c in self.cand.iter_mut() {
            c.0 = (c.0 as f64 / sum) as f32;
        }
        // min-p: drop tokens less likely than min_p × the best one.
        if p.min_p > 0.0 {
            let floor = self.cand[0].0 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.0 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        // top-p: the smallest prefix whose mass reaches top_p.
        if p.top_p < 1.0 {
            let mut acc = 0.0f32;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        let total: f32 = self.cand.iter().map(|c| c.0).sum();
        let mut r = self.rng.next_f32() * total;
        for c in &self.cand {
            if r < c.0 {
                return c.1;
            }
            r -= c.0;
        }
        self.cand.last().map(|c| c.1).unwrap_or(0)
    }
}

/// Index of the largest value; the lowest index wins ties (as argmax in numpy/llama.cpp).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy(cand: &[(f32, u32)]) -> u32 {
    let mut best = 0usize;
    for (i, c) in cand.iter().enumerate() {
        if c.0 > cand[best].0 {
            best = i;
        }
    }
    cand.get(best).map(|c| c.1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.9, 0.0]
    }

    #[test]
    fn greedy_picks_max() {
        let mut s = Sampler::new(SamplingParams::greedy(), 6);
        assert_eq!(s.sample(&logits()), 1);
    }

    #[test]
    fn repeat_penalty_demotes_recent() {
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            6,
        );
        s.accept(1);
        // 3.0 / 2 = 1.5 < 2.9
        assert_eq!(s.sample(&logits()), 4);
    }

    /// A sampler over the 6 tokens of `logits()` with these cut-offs and seed (no repeat penalty).
    fn sampler(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> Sampler {
        let p = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            ..Default::default()
        };
        Sampler::new(p, 6)
    }

    /// `n` tokens drawn from `logits()`.
    fn draws(s: &mut Sampler, n: usize) -> Vec<u32> {
        (0..n).map(|_| s.sample(&logits())).collect()
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_respected() {
        let ta = draws(&mut sampler(1.5, 2, 1.0, 0.0, 42), 200);
        let tb = draws(&mut sampler(1.5, 2, 1.0, 0.0, 42), 200);
        assert_eq!(ta, tb);
        assert!(
            ta.iter().all(|&t| t == 1 || t == 4),
            "top-k=2 allows only the two best"
        );
        assert!(ta.contains(&1) && ta.contains(&4));
    }

    #[test]
    fn min_p_and_top_p_cut_tail() {
        // With min_p = 0.5 only tokens with p >= 0.5 p_max survive: 3.0 and 2.9 (2.0 has p ratio e^-1 < 0.5).
        for t in draws(&mut sampler(1.0, 0, 1.0, 0.5, 7), 300) {
            assert!(t == 1 || t == 4);
        }
        for t in draws(&mut sampler(1.0, 0, 0.3, 0.0, 7), 300) {
            assert_eq!(t, 1, "top-p 0.3 keeps only the best token (p≈0.37)");
        }
    }

    #[test]
    fn different_seeds_differ() {
        let mk = |seed| draws(&mut sampler(2.0, 0, 1.0, 0.0, seed), 64);
        assert_ne!(mk(1), mk(2));
    }
}
