//! The fp16 LoRA side computation: `y = W0·x + Σ_i s_i · B_i (A_i · x)`, computed next to (never into)
//! the quantized base weights `W0`.
//!
//! Weights are IEEE half precision stored as raw `u16` bits (exactly as they lie in a GGUF file or a
//! converted buffer); activations, intermediates and accumulation are `f32`.
//!
//! Layouts (both row-major, as PEFT and GGUF store them):
//! - `A_i` is `rank_i × n_in` (PEFT `lora_A.weight [r, in]`, GGUF `*.lora_a` with ggml dims `[n_in, r]`);
//! - `B_i` is `n_out × rank_i` (PEFT `lora_B.weight [out, r]`, GGUF `*.lora_b` with ggml dims `[r, n_out]`).
//!
//! All adapters active on one linear layer are handled in one call. Their intermediates `t_i = A_i·x`
//! are laid one after the other: `t = [t_0 | t_1 | …]`, `R = Σ rank_i` floats per token (see
//! [`total_rank`]).
//!
//! Decode (one token):
//! - [`Shrink`]: `t_i = A_i · x` for every adapter.
//! - [`Expand`]: for the output rows `[r0, r0 + y.len())`, `y[j - r0] += Σ_i s_i · Σ_k B_i[j, k] · t_i[k]`.
//!   Meant to be called on the chunk of rows whose base matvec was just computed, while it is in L1;
//!   it needs no buffer of its own.
//!
//! Prompt (T tokens, token-major matrices): [`ShrinkBatch`] (`x` is `T × n_in`, `t` is `T × R`) and
//! [`ExpandBatch`] (`y` holds rows `[r0, r1)` of each token's output at `y[tok·ldy + (j − r0)]`).
//!
//! Tiers: the scalar reference here, AVX2+FMA+F16C and AVX-512 (F+BW+VL, plus the AVX2 tier's features)
//! on x86-64, NEON on aarch64. They are reachable only through a [`LoraKernels`] table, handed out only
//! when the CPU has the features. Tier naming (it reuses [`Tier`] so that it pairs with [`crate::Kernels`]):
//! - the AVX-512 LoRA tier reports [`Tier::Avx512`] (name `avx512vnni`) but does **not** need VNNI: it
//!   needs AVX-512 F, BW and VL only (fp16 loads via `vcvtph2ps zmm`);
//! - one NEON LoRA tier (fp16 conversion via `fcvtl`, base ARMv8 Advanced SIMD) serves both `neon` and
//!   `neon-dotprod`: it reports [`Tier::Neon`], and [`LoraKernels::by_name`]`("neon-dotprod")` /
//!   [`LoraKernels::for_tier`]`(Tier::NeonDotprod)` return it when the CPU has the dot-product extension.
//!
//! Every kernel checks the shapes of its arguments and panics on a mismatch (a caller bug, never input
//! data: the adapter loader validates files before they reach a kernel). The SIMD tiers rely on these
//! checks for memory safety.
use crate::Tier;

/// One adapter on one linear layer, as the kernels see it.
#[derive(Clone, Copy, Debug)]
pub struct LoraRef<'a> {
    /// `r`, the number of rows of `A` and columns of `B`.
    pub rank: usize,
    /// Input width `n` (columns of `A`).
    pub n_in: usize,
    /// Output height `m` (rows of `B`).
    pub n_out: usize,
    /// `A`, `rank × n_in` row-major, fp16 bits.
    pub a: &'a [u16],
    /// `B`, `n_out × rank` row-major, fp16 bits.
    pub b: &'a [u16],
    /// The full scale `s_i` (user scale × alpha/r, or alpha/√r for rsLoRA).
    pub scale: f32,
}

/// `R = Σ rank_i`: floats per token of the concatenated intermediate `t`.
pub fn total_rank(adapters: &[LoraRef<'_>]) -> usize {
    adapters.iter().map(|a| a.rank).sum()
}

/// Decode shrink: `t[off_i .. off_i + rank_i] = A_i · x` with `off_i = Σ_{j<i} rank_j`.
/// `x.len() == n_in` (equal for all adapters), `t.len() == R`.
pub type Shrink = fn(adapters: &[LoraRef<'_>], x: &[f32], t: &mut [f32]);
/// Decode expand over output rows `[r0, r0 + y.len())`:
/// `y[j - r0] += Σ_i s_i · B_i[j, :] · t[off_i .. off_i + rank_i]`. `t.len() == R`.
pub type Expand = fn(adapters: &[LoraRef<'_>], t: &[f32], r0: usize, y: &mut [f32]);
/// Prompt shrink over `n_tokens` tokens: `x` is `n_tokens × n_in`, `t` is `n_tokens × R` (both dense).
pub type ShrinkBatch = fn(adapters: &[LoraRef<'_>], n_tokens: usize, x: &[f32], t: &mut [f32]);
/// Prompt expand over output rows `[r0, r1)`: `t` is `n_tokens × R` (dense); the output of token `tok`
/// for row `j` is `y[tok * ldy + (j - r0)]` (so pass `&mut y_full[r0..]` with `ldy = n_out` to update a
/// dense `n_tokens × n_out` matrix in place).
pub type ExpandBatch = fn(
    adapters: &[LoraRef<'_>],
    n_tokens: usize,
    t: &[f32],
    r0: usize,
    r1: usize,
    y: &mut [f32],
    ldy: usize,
);

/// A table of LoRA kernels for one tier; every field means the same in every tier.
#[derive(Clone, Copy)]
pub struct LoraKernels {
    pub tier: Tier,
    pub shrink: Shrink,
    pub expand: Expand,
    pub shrink_batch: ShrinkBatch,
    pub expand_batch: ExpandBatch,
}

impl core::fmt::Debug for LoraKernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoraKernels")
            .field("tier", &self.tier)
            .finish()
    }
}

/// The scalar reference table.
pub static SCALAR: LoraKernels = LoraKernels {
    tier: Tier::Scalar,
    shrink,
    expand,
    shrink_batch,
    expand_batch,
};

impl LoraKernels {
    /// The scalar reference tier (always available).
    pub fn scalar() -> &'static LoraKernels {
        &SCALAR
    }

    /// Every LoRA tier this CPU can run, scalar first, fastest last.
    pub fn available() -> impl Iterator<Item = &'static LoraKernels> {
        #[allow(unused_mut)]
        let mut v: [Option<&'static LoraKernels>; 3] = [Some(&SCALAR), None, None];
        #[cfg(target_arch = "x86_64")]
        {
            v[1] = crate::x86_64::lora::avx2();
            v[2] = crate::x86_64::lora::avx512();
        }
        #[cfg(target_arch = "aarch64")]
        {
            v[1] = crate::aarch64::lora::neon();
        }
        v.into_iter().flatten()
    }

    /// The fastest LoRA tier this CPU can run.
    pub fn best() -> &'static LoraKernels {
        Self::available().last().unwrap_or(&SCALAR)
    }

    /// The LoRA tier with this [`Tier::name`], if this CPU can run it. `neon-dotprod` resolves to the NEON
    /// LoRA tier when the CPU has the dot-product extension (the LoRA kernels don't use it).
    pub fn by_name(name: &str) -> Option<&'static LoraKernels> {
        if let Some(k) = Self::available().find(|k| k.tier.name() == name) {
            return Some(k);
        }
        #[cfg(target_arch = "aarch64")]
        if name == Tier::NeonDotprod.name() && crate::aarch64::lora::has_dotprod() {
            return crate::aarch64::lora::neon();
        }
        None
    }

    /// The LoRA table to pair with a [`crate::Kernels`] table of tier `tier`: the same tier when there is
    /// one (NEON for both NEON tiers), otherwise the best LoRA tier this CPU can run that is not above it.
    pub fn for_tier(tier: Tier) -> &'static LoraKernels {
        let want: &[Tier] = match tier {
            Tier::Scalar => &[Tier::Scalar],
            Tier::Avx2 => &[Tier::Avx2, Tier::Scalar],
            Tier::Avx512 => &[Tier::Avx512, Tier::Avx2, Tier::Scalar],
            Tier::Neon | Tier::NeonDotprod => &[Tier::Neon, Tier::Scalar],
        };
        for w in want {
            if let Some(k) = Self::available().find(|k| k.tier == *w) {
                return k;
            }
        }
        &SCALAR
    }
}

// ---------------------------------------------------------------------------------------------------
// Shape checks shared by every tier. The SIMD tiers' memory safety rests on them.

/// Asserts that adapter `i`'s matrix `name` holds `rows.1 x cols.1` values (each dimension named
/// by its `.0` in the message).
fn check_matrix_len(i: usize, name: &str, len: usize, rows: (&str, usize), cols: (&str, usize)) {
    assert!(
        Some(len) == rows.1.checked_mul(cols.1),
        "lora: adapter {i}: {name} has {len} values, expected {} {} x {} {}",
        rows.0,
        rows.1,
        cols.0,
        cols.1
    );
}

/// Asserts that the intermediate `t` of a `kernel` ("shrink" / "expand") holds `n_tokens x r` values.
fn check_t_len(kernel: &str, t_len: usize, n_tokens: usize, r: usize) {
    assert!(
        Some(t_len) == n_tokens.checked_mul(r),
        "lora {kernel}: t has {t_len} values, expected {n_tokens} x {r}"
    );
}

/// Checks the adapters of one call and returns `(n_in, R)`; `n_in` is 0 for an empty list.
pub(crate) fn check_adapters(adapters: &[LoraRef<'_>]) -> (usize, usize) {
    let n_in = adapters.first().map_or(0, |a| a.n_in);
    let n_out = adapters.first().map_or(0, |a| a.n_out);
    let mut r = 0usize;
    for (i, ad) in adapters.iter().enumerate() {
        assert!(
            ad.n_in == n_in && ad.n_out == n_out,
            "lora: adapter {i} is {}x{}, adapter 0 is {n_in}x{n_out}",
            ad.n_out,
            ad.n_in
        );
        check_matrix_len(i, "A", ad.a.len(), ("rank", ad.rank), ("n_in", ad.n_in));
        check_matrix_len(i, "B", ad.b.len(), ("n_out", ad.n_out), ("rank", ad.rank));
        r = r.checked_add(ad.rank).expect("lora: total rank overflows");
    }
    (n_in, r)
}

/// Checks a shrink over `n_tokens` tokens; returns `R`.
pub(crate) fn check_shrink(
    adapters: &[LoraRef<'_>],
    n_tokens: usize,
    x_len: usize,
    t_len: usize,
) -> usize {
    let (n_in, r) = check_adapters(adapters);
    if !adapters.is_empty() {
        assert!(
            Some(x_len) == n_tokens.checked_mul(n_in),
            "lora shrink: x has {x_len} values, expected {n_tokens} x {n_in}"
        );
    }
    check_t_len("shrink", t_len, n_tokens, r);
    r
}

/// Checks an expand over rows `[r0, r1)` for `n_tokens` tokens with output stride `ldy`; returns `R`.
pub(crate) fn check_expand(
    adapters: &[LoraRef<'_>],
    n_tokens: usize,
    t_len: usize,
    r0: usize,
    r1: usize,
    y_len: usize,
    ldy: usize,
) -> usize {
    let (_, r) = check_adapters(adapters);
    check_t_len("expand", t_len, n_tokens, r);
    assert!(r0 <= r1, "lora expand: row range {r0}..{r1} is reversed");
    if let Some(ad) = adapters.first() {
        assert!(
            r1 <= ad.n_out,
            "lora expand: row range {r0}..{r1} beyond n_out {}",
            ad.n_out
        );
    }
    if n_tokens > 0 && r1 > r0 {
        let w = r1 - r0;
        assert!(
            n_tokens == 1 || ldy >= w,
            "lora expand: ldy {ldy} smaller than the row range {w}"
        );
        let need = (n_tokens - 1)
            .checked_mul(ldy)
            .and_then(|v| v.checked_add(w));
        assert!(
            need.is_some_and(|need| y_len >= need),
            "lora expand: y has {y_len} values, too few for {n_tokens} tokens x ldy {ldy}"
        );
    }
    r
}

// ---------------------------------------------------------------------------------------------------
// Scalar reference.

#[inline(always)]
fn h2f(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Σ_k w[k] · v[k] with w in fp16, in index order.
#[inline]
fn dot_h(w: &[u16], v: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (&w, &v) in w.iter().zip(v) {
        s += h2f(w) * v;
    }
    s
}

/// Scalar [`Shrink`].
pub fn shrink(adapters: &[LoraRef<'_>], x: &[f32], t: &mut [f32]) {
    shrink_batch(adapters, 1, x, t)
}

/// Scalar [`Expand`].
pub fn expand(adapters: &[LoraRef<'_>], t: &[f32], r0: usize, y: &mut [f32]) {
    let r1 = r0 + y.len();
    let ldy = y.len();
    expand_batch(adapters, 1, t, r0, r1, y, ldy)
}

/// Scalar [`ShrinkBatch`].
pub fn shrink_batch(adapters: &[LoraRef<'_>], n_tokens: usize, x: &[f32], t: &mut [f32]) {
    let r = check_shrink(adapters, n_tokens, x.len(), t.len());
    let mut off = 0;
    for ad in adapters {
        let n = ad.n_in;
        for tok in 0..n_tokens {
            let xt = &x[tok * n..(tok + 1) * n];
            for k in 0..ad.rank {
                t[tok * r + off + k] = dot_h(&ad.a[k * n..(k + 1) * n], xt);
            }
        }
        off += ad.rank;
    }
}

/// Scalar [`ExpandBatch`].
pub fn expand_batch(
    adapters: &[LoraRef<'_>],
    n_tokens: usize,
    t: &[f32],
    r0: usize,
    r1: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let r = check_expand(adapters, n_tokens, t.len(), r0, r1, y.len(), ldy);
    let mut off = 0;
    for ad in adapters {
        let rk = ad.rank;
        for tok in 0..n_tokens {
            let tt = &t[tok * r + off..tok * r + off + rk];
            for j in r0..r1 {
                y[tok * ldy + (j - r0)] += ad.scale * dot_h(&ad.b[j * rk..(j + 1) * rk], tt);
            }
        }
        off += rk;
    }
}

// ---------------------------------------------------------------------------------------------------
// The one pattern every SIMD tier implements: dots of fp16 rows with f32 vectors.

/// `out[tok·ldo + ooff + (row − row0)]` = (or `+= scale ·`) `w[row·k ..][..k] · v[tok·ldv + voff ..][..k]`
/// for rows `[row0, row1)` and tokens `0..n_tok`. Built only by [`shrink_job`] / [`expand_job`] after the
/// shape checks, so every index it implies is in bounds.
#[derive(Clone, Copy)]
#[allow(dead_code)] // not every target compiles a SIMD tier
pub(crate) struct RowsDot<'a> {
    pub w: &'a [u16],
    pub k: usize,
    pub row0: usize,
    pub row1: usize,
    pub v: &'a [f32],
    pub ldv: usize,
    pub voff: usize,
    pub n_tok: usize,
    pub ldo: usize,
    pub ooff: usize,
    /// `None`: store the dot (shrink); `Some(s)`: add `s · dot` (expand).
    pub scale: Option<f32>,
}

#[allow(dead_code)]
impl RowsDot<'_> {
    /// The fp16 row `row` (length `k`).
    #[inline(always)]
    pub fn row(&self, row: usize) -> &[u16] {
        &self.w[row * self.k..(row + 1) * self.k]
    }
    /// Token `tok`'s vector (length `k`).
    #[inline(always)]
    pub fn vec(&self, tok: usize) -> &[f32] {
        let s = tok * self.ldv + self.voff;
        &self.v[s..s + self.k]
    }
    /// The same job on rows `[row, row1)` only (`row0 <= row`).
    #[inline(always)]
    pub fn rows_from(&self, row: usize) -> Self {
        RowsDot {
            row0: row,
            ooff: self.ooff + (row - self.row0),
            ..*self
        }
    }
    /// Writes one result.
    #[inline(always)]
    pub fn put(&self, out: &mut [f32], tok: usize, row: usize, val: f32) {
        let o = &mut out[tok * self.ldo + self.ooff + (row - self.row0)];
        match self.scale {
            None => *o = val,
            Some(s) => *o += s * val,
        }
    }
}

/// The shrink of adapter `ad` whose intermediate starts at column `off` of `t` (`R` columns per token).
#[allow(dead_code)]
pub(crate) fn shrink_job<'a>(
    ad: &LoraRef<'a>,
    n_tokens: usize,
    x: &'a [f32],
    r: usize,
    off: usize,
) -> RowsDot<'a> {
    RowsDot {
        w: ad.a,
        k: ad.n_in,
        row0: 0,
        row1: ad.rank,
        v: x,
        ldv: ad.n_in,
        voff: 0,
        n_tok: n_tokens,
        ldo: r,
        ooff: off,
        scale: None,
    }
}

/// The expand of adapter `ad` (intermediate at column `off` of `t`) into rows `[r0, r1)` of `y`.
#[allow(dead_code, clippy::too_many_arguments)]
pub(crate) fn expand_job<'a>(
    ad: &LoraRef<'a>,
    n_tokens: usize,
    t: &'a [f32],
    r: usize,
    off: usize,
    r0: usize,
    r1: usize,
    ldy: usize,
) -> RowsDot<'a> {
    RowsDot {
        w: ad.b,
        k: ad.rank,
        row0: r0,
        row1: r1,
        v: t,
        ldv: r,
        voff: off,
        n_tok: n_tokens,
        ldo: ldy,
        ooff: 0,
        scale: Some(ad.scale),
    }
}

/// What the column expand ([`expand_columns`]) needs of a SIMD tier: vectors of `L` f32 lanes, fp16
/// widening and a multiply-add. Implemented by a zero-sized token that a tier makes only inside its
/// `#[target_feature]` entry point ([`columns_token`]), so holding one proves the CPU has the features.
#[allow(dead_code)] // not every target compiles a SIMD tier
pub(crate) trait Columns: Copy {
    type V: Copy;
    /// f32 lanes per vector.
    const L: usize;
    /// `h[..L]` widened (`h.len() >= L`).
    fn ldh(self, h: &[u16]) -> Self::V;
    /// `o[..L]` (`o.len() >= L`).
    fn load(self, o: &[f32]) -> Self::V;
    /// `o[..L] = v` (`o.len() >= L`).
    fn store(self, o: &mut [f32], v: Self::V);
    fn splat(self, x: f32) -> Self::V;
    /// `a·b + c`.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The lane sums of `acc`, in order: `out[i] = Σ lanes of acc[i]` (`out.len() == acc.len()`).
    fn sums(self, acc: &[Self::V], out: &mut [f32]);
}

/// `out[i] = h[i]` widened, `L` at a time (`h.len() <= out.len()`, `L <= 16`).
#[inline(always)]
#[allow(dead_code)]
fn widen<C: Columns>(c: C, h: &[u16], out: &mut [f32]) {
    let n = h.len();
    let mut i = 0;
    while i + C::L <= n {
        c.store(&mut out[i..], c.ldh(&h[i..]));
        i += C::L;
    }
    if i < n {
        let (mut hb, mut ob) = ([0u16; 16], [0f32; 16]);
        hb[..n - i].copy_from_slice(&h[i..]);
        c.store(&mut ob, c.ldh(&hb));
        out[i..n].copy_from_slice(&ob[..n - i]);
    }
}

/// Defines a tier's [`Columns`] token `Cols` (with `Cols::new`, a `#[target_feature]` function of
/// `$features`) from the tier's vector type, lane count and `#[target_feature]` functions.
macro_rules! columns_token {
    (
        $features:literal, $v:ty, $l:expr,
        $ldh:path, $load:path, $store:path, $splat:path, $fmadd:path, $sums:path
    ) => {
        /// This tier's proof token for [`expand_columns`]($crate::lora::expand_columns).
        #[derive(Clone, Copy)]
        struct Cols(());

        impl Cols {
            #[target_feature(enable = $features)]
            #[inline]
            fn new() -> Self {
                Cols(())
            }
        }

        impl $crate::lora::Columns for Cols {
            type V = $v;
            const L: usize = $l;
            #[inline(always)]
            fn ldh(self, h: &[u16]) -> $v {
                // SAFETY: a `Cols` exists only after `Cols::new`, a `#[target_feature]` function
                // with these features, ran, i.e. on a CPU that has them.
                unsafe { $ldh(h) }
            }
            #[inline(always)]
            fn load(self, o: &[f32]) -> $v {
                // SAFETY: as in `ldh`.
                unsafe { $load(o) }
            }
            #[inline(always)]
            fn store(self, o: &mut [f32], v: $v) {
                // SAFETY: as in `ldh`.
                unsafe { $store(o, v) }
            }
            #[inline(always)]
            fn splat(self, x: f32) -> $v {
                // SAFETY: as in `ldh`.
                unsafe { $splat(x) }
            }
            #[inline(always)]
            fn fmadd(self, a: $v, b: $v, c: $v) -> $v {
                // SAFETY: as in `ldh`.
                unsafe { $fmadd(a, b, c) }
            }
            #[inline(always)]
            fn sums(self, acc: &[$v], out: &mut [f32]) {
                // SAFETY: as in `ldh`.
                unsafe { $sums(acc, out) }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use columns_token;

/// Dots of rows `row..row + R` with the vectors of tokens `tok..tok + 4`:
/// `out[4·r + t] = w[row + r] · v[tok + t]`. `4·R` accumulators, so each fp16 load serves four tokens
/// and each f32 load `R` rows; the last partial vector is read through zero-padded copies.
#[inline(always)]
#[allow(dead_code)]
fn dot_block<C: Columns, const R: usize>(
    c: C,
    j: &RowsDot<'_>,
    row: usize,
    tok: usize,
    out: &mut [f32],
) {
    let (k, l) = (j.k, C::L);
    let w: [&[u16]; R] = core::array::from_fn(|r| j.row(row + r));
    let v = [j.vec(tok), j.vec(tok + 1), j.vec(tok + 2), j.vec(tok + 3)];
    let mut acc = [[c.splat(0.0); 4]; R];
    let mut i = 0;
    while i + l <= k {
        let wi: [&[u16]; R] = core::array::from_fn(|r| &w[r][i..]);
        block_step(
            c,
            &mut acc,
            wi,
            [&v[0][i..], &v[1][i..], &v[2][i..], &v[3][i..]],
        );
        i += l;
    }
    if i < k {
        let (mut wp, mut vp) = ([[0u16; 16]; R], [[0f32; 16]; 4]);
        for (p, w) in wp.iter_mut().zip(w) {
            p[..k - i].copy_from_slice(&w[i..]);
        }
        for (p, v) in vp.iter_mut().zip(v) {
            p[..k - i].copy_from_slice(&v[i..]);
        }
        block_step(
            c,
            &mut acc,
            core::array::from_fn(|r| &wp[r][..]),
            [&vp[0][..], &vp[1][..], &vp[2][..], &vp[3][..]],
        );
    }
    c.sums(acc.as_flattened(), &mut out[..4 * R]);
}

/// One vector step of [`dot_block`]: `acc[r][t] += w[r][..L] · v[t][..L]` lane by lane.
#[inline(always)]
#[allow(dead_code)]
fn block_step<C: Columns, const R: usize>(
    c: C,
    acc: &mut [[C::V; 4]; R],
    w: [&[u16]; R],
    v: [&[f32]; 4],
) {
    let x = [c.load(v[0]), c.load(v[1]), c.load(v[2]), c.load(v[3])];
    for (r, acc) in acc.iter_mut().enumerate() {
        let a = c.ldh(w[r]);
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = c.fmadd(a, x[t], *acc);
        }
    }
}

/// [`RowsDot`] for the tokens in groups of four: blocks of `R` rows ([`dot_block`]), then single rows.
/// Returns the first token it did not handle (fewer than four remain).
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn by_token_groups<C: Columns, const R: usize>(
    c: C,
    j: &RowsDot<'_>,
    out: &mut [f32],
) -> usize {
    let mut d = [0f32; 16]; // 4·R results, R ≤ 4
    let mut tok = 0;
    while tok + 4 <= j.n_tok {
        let mut row = j.row0;
        while row < j.row1 {
            let rows = if row + R <= j.row1 { R } else { 1 };
            if rows == R {
                dot_block::<C, R>(c, j, row, tok, &mut d);
            } else {
                dot_block::<C, 1>(c, j, row, tok, &mut d);
            }
            for (q, &d) in d[..4 * rows].iter().enumerate() {
                j.put(out, tok + q % 4, row + q / 4, d);
            }
            row += rows;
        }
        tok += 4;
    }
    tok
}

/// Rank columns per pass of [`expand_columns`].
const KC: usize = 32;
/// Vectors of output rows per block of [`expand_columns`] (its accumulators).
const NV: usize = 4;

/// The expand of a batch of tokens by columns, for every full block of `NV·L` output rows of `j`
/// (`j.scale` is `Some`): the block's `s·B[rows, k]` is widened and transposed once into `bt[k][row]`,
/// then each token adds `Σ_k t[tok, k]·bt[k]` to its outputs as `NV` vector multiply-adds per `k`. No
/// horizontal sums, and each fp16 value is converted once per block instead of once per token.
/// Returns the first row it did not handle (a tail of fewer than `NV·L` rows).
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn expand_columns<C: Columns>(c: C, j: &RowsDot<'_>, out: &mut [f32]) -> usize {
    let rows = NV * C::L;
    let s = j.scale.expect("the column expand adds scaled products");
    let mut bt = [0f32; KC * NV * 16];
    let mut seg = [0f32; KC];
    let mut row = j.row0;
    while row + rows <= j.row1 {
        let mut k0 = 0;
        while k0 < j.k {
            let kc = (j.k - k0).min(KC);
            for q in 0..rows {
                widen(c, &j.row(row + q)[k0..k0 + kc], &mut seg[..kc]);
                for (kk, &b) in seg[..kc].iter().enumerate() {
                    bt[kk * rows + q] = s * b;
                }
            }
            for tok in 0..j.n_tok {
                let at = tok * j.ldo + j.ooff + (row - j.row0);
                let o = &mut out[at..at + rows];
                let mut acc = [c.splat(0.0); NV];
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = c.load(&o[v * C::L..]);
                }
                for (kk, &tk) in j.vec(tok)[k0..k0 + kc].iter().enumerate() {
                    let t = c.splat(tk);
                    let b = &bt[kk * rows..(kk + 1) * rows];
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = c.fmadd(t, c.load(&b[v * C::L..]), *a);
                    }
                }
                for (v, a) in acc.into_iter().enumerate() {
                    c.store(&mut o[v * C::L..], a);
                }
            }
            k0 += kc;
        }
        row += rows;
    }
    row
}

/// Generates a tier's four kernels (`shrink`, `expand`, `shrink_batch`, `expand_batch`) from its
/// `rows_dot(&RowsDot, &mut [f32])`, a `#[target_feature]` function.
macro_rules! lora_tier_fns {
    ($rows_dot:path) => {
        fn shrink(adapters: &[$crate::lora::LoraRef<'_>], x: &[f32], t: &mut [f32]) {
            shrink_batch(adapters, 1, x, t)
        }
        fn expand(adapters: &[$crate::lora::LoraRef<'_>], t: &[f32], r0: usize, y: &mut [f32]) {
            let (r1, ldy) = (r0 + y.len(), y.len());
            expand_batch(adapters, 1, t, r0, r1, y, ldy)
        }
        fn shrink_batch(
            adapters: &[$crate::lora::LoraRef<'_>],
            n_tokens: usize,
            x: &[f32],
            t: &mut [f32],
        ) {
            let r = $crate::lora::check_shrink(adapters, n_tokens, x.len(), t.len());
            let mut off = 0;
            for ad in adapters {
                let job = $crate::lora::shrink_job(ad, n_tokens, x, r, off);
                // SAFETY: this function is only reachable through a table handed out after the CPU was
                // found to have every feature `rows_dot` is compiled for; shapes were checked above.
                unsafe { $rows_dot(&job, t) };
                off += ad.rank;
            }
        }
        fn expand_batch(
            adapters: &[$crate::lora::LoraRef<'_>],
            n_tokens: usize,
            t: &[f32],
            r0: usize,
            r1: usize,
            y: &mut [f32],
            ldy: usize,
        ) {
            let r = $crate::lora::check_expand(adapters, n_tokens, t.len(), r0, r1, y.len(), ldy);
            let mut off = 0;
            for ad in adapters {
                let job = $crate::lora::expand_job(ad, n_tokens, t, r, off, r0, r1, ldy);
                // SAFETY: as in `shrink_batch`: features detected before the table was handed out;
                // shapes checked above.
                unsafe { $rows_dot(&job, y) };
                off += ad.rank;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use lora_tier_fns;
