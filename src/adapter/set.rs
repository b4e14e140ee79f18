//! The set of LoRA adapters a session applies, and the handle that changes it between two tokens.
//!
//! A [`Session`](crate::Session) reads its adapter set once at the start of every `eval` (so every layer of
//! a token sees the same set) from its [`AdapterControl`]. Any thread may publish a new set through the
//! control at any time: publishing validates the set against the model, copies at most
//! [`MAX_ADAPTERS`] `Arc`s into a fixed-capacity buffer under a mutex held only for that copy, and bumps a
//! version counter. The session notices the new version with one atomic load per `eval` and adopts the set
//! under the same short lock. Nothing is allocated, and no lock is held across a token.
//!
//! DoRA: publishing a set computes the gains of its DoRA adapters at their scales
//! ([`super::dora`]: row norms of the base plus the delta, on a thread pool the control starts at its
//! first DoRA set) before taking the lock, so the forward pass only reads them. Gains are cached per
//! adapter and scale: publishing a set seen before copies `Arc`s and allocates nothing.
//!
//! KV cache: entries written before a swap stay as they were computed (with the old set); only tokens
//! evaluated afterwards see the new adapters. To make earlier context reflect the new set, re-evaluate it
//! (`edge-run --chat` does that with `/adapter … ` when `--reeval-on-swap` is given).
use super::dora::{DoraGains, GainCache};
use super::{Adapter, LoraKind};
use crate::kernels::lora::LoraRef;
use crate::kernels::QuantType;
use crate::model::{Model, WeightRef};
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most adapters a session can apply at once.
pub const MAX_ADAPTERS: usize = 8;

/// The kernels' views of the adapters on one weight.
pub(crate) type LoraRefs<'a> = heapless::Vec<LoraRef<'a>, MAX_ADAPTERS>;
/// Per entry of [`LoraRefs`]: rows of the computation it skips from the first (aLoRA gating).
pub(crate) type Skips = heapless::Vec<usize, MAX_ADAPTERS>;

/// A set of adapters with their user scales (≤ [`MAX_ADAPTERS`]).
pub type ActiveSet = heapless::Vec<(Arc<Adapter>, f32), MAX_ADAPTERS>;

/// The DoRA gains of each adapter of a set, in the set's order (`None`: a plain LoRA).
type SetGains = heapless::Vec<Option<Arc<DoraGains>>, MAX_ADAPTERS>;

/// A published set and its DoRA gains.
struct Published {
    set: ActiveSet,
    gains: SetGains,
}

/// Publishes adapter sets to one session; share it (`Arc`) with any thread.
pub struct AdapterControl {
    model: Arc<Model>,
    max_adapters: usize,
    max_rank: usize,
    version: AtomicU64,
    pending: Mutex<Published>,
    /// DoRA gains computed for earlier sets, and the pool that computes them.
    dora: Mutex<GainCache>,
}

impl AdapterControl {
    /// `n_threads`: threads that compute DoRA norms when a DoRA set is published.
    pub(crate) fn new(
        model: Arc<Model>,
        max_adapters: usize,
        max_rank: usize,
        n_threads: usize,
    ) -> Self {
        AdapterControl {
            model,
            max_adapters,
            max_rank,
            version: AtomicU64::new(0),
            pending: Mutex::new(Published {
                set: ActiveSet::new(),
                gains: SetGains::new(),
            }),
            dora: Mutex::new(GainCache::new(n_threads)),
        }
    }

    /// Check that `adapter` fits the model and the session's capacities.
    pub fn check(&self, adapter: &Adapter) -> Result<()> {
        let name = adapter.path().display();
        for t in adapter.tensors() {
            let w = self.model.lora_target(&t.target).ok_or_else(|| {
                Error::invalid(format!(
                    "adapter {name}: tensor `{}` targets nothing edge-run can adapt in this model",
                    t.target
                ))
            })?;
            let shape_ok = match t.kind {
                LoraKind::Linear => t.n_in == w.n_in && t.n_out == w.n_out,
                LoraKind::Embedding => t.n_in == w.n_out && t.n_out == w.n_in,
            };
            if !shape_ok {
                return Err(Error::invalid(format!(
                    "adapter {name}: `{}` is {}×{} but the model's `{}` is {}×{}",
                    t.target, t.n_in, t.n_out, w.name, w.n_in, w.n_out
                )));
            }
            if adapter.is_dora() && self.model.lora_parts(&t.target).nth(1).is_some() {
                return Err(Error::unsupported(
                    name.to_string(),
                    format!("DoRA on the fused tensor `{}`", t.target),
                ));
            }
            if t.rank > self.max_rank {
                return Err(Error::invalid(format!(
                    "adapter {name}: `{}` has rank {} > the session's max rank {}",
                    t.target, t.rank, self.max_rank
                )));
            }
        }
        for s in adapter.saved() {
            let w = self
                .model
                .lora_target(&s.target)
                .filter(|w| w.lora_slot.is_some());
            if !w.is_some_and(|w| w.n_in == s.n_embd && w.n_out == s.n_vocab) {
                return Err(Error::invalid(format!(
                    "adapter {name}: its replacement of `{}` ({} rows of {}) does not fit this model",
                    s.target, s.n_vocab, s.n_embd
                )));
            }
        }
        Ok(())
    }

    /// A replaced tensor may not be replaced or adapted by another adapter of the set (PEFT activates
    /// one saved module per base module, and a LoRA on it would adapt the base's, not the copy).
    fn check_replacements(set: &[(&Arc<Adapter>, f32)]) -> Result<()> {
        for (i, (a, _)) in set.iter().enumerate() {
            for s in a.saved() {
                for (k, (b, _)) in set.iter().enumerate() {
                    if k != i && (b.saved_for(&s.target).is_some() || b.get(&s.target).is_some()) {
                        return Err(Error::invalid(format!(
                            "adapters {} and {} both change `{}`, which {} replaces; one replaced module per set",
                            a.path().display(),
                            b.path().display(),
                            s.target,
                            a.path().display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Make `set` the adapter set of every `eval` that starts from now on. Validates first: on error the
    /// current set stays. Allocation-free, except the first time a DoRA adapter is published at a
    /// given scale (its row norms are computed then; see the module docs).
    pub fn set(&self, set: &[(&Arc<Adapter>, f32)]) -> Result<()> {
        if set.len() > self.max_adapters {
            return Err(Error::invalid(format!(
                "{} adapters given; this session holds at most {}",
                set.len(),
                self.max_adapters
            )));
        }
        for (a, s) in set {
            if !s.is_finite() {
                return Err(Error::invalid(format!(
                    "adapter {}: scale {s} is not finite",
                    a.path().display()
                )));
            }
            self.check(a)?;
        }
        Self::check_replacements(set)?;
        let mut gains = SetGains::new();
        {
            let mut cache = self.dora.lock().unwrap_or_else(|e| e.into_inner());
            for (a, s) in set {
                // Cannot fail: len ≤ max_adapters ≤ MAX_ADAPTERS.
                let _ = gains.push(cache.get(&self.model, a, *s)?);
            }
        }
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        g.set.clear();
        for (a, s) in set {
            // Cannot fail: len ≤ max_adapters ≤ MAX_ADAPTERS.
            let _ = g.set.push((Arc::clone(a), *s));
        }
        g.gains = gains;
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The published set (a copy of the `Arc`s).
    pub fn get(&self) -> ActiveSet {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .clone()
    }

    pub fn max_adapters(&self) -> usize {
        self.max_adapters
    }
    pub fn max_rank(&self) -> usize {
        self.max_rank
    }
}

const NONE: u16 = u16::MAX;

/// A session's private copy of its adapter set, with the lookup from a weight's LoRA slot to adapter tensor.
pub(crate) struct Applied {
    seen: u64,
    /// Adapters with a non-zero scale (scale 0 is the same as absent: bit-identical base outputs).
    active: ActiveSet,
    /// Their DoRA gains (`None` for plain LoRAs), and whether any is DoRA.
    gains: SetGains,
    any_dora: bool,
    /// `bind[slot][i]`: index of adapter `i`'s tensor on that slot, or `NONE`.
    bind: Vec<[u16; MAX_ADAPTERS]>,
    /// Which rows of the current batch each adapter applies to (aLoRA).
    gates: super::alora::Gates,
    /// `repl[slot]`: (active adapter, index of its saved module) replacing that slot's weight.
    repl: Vec<Option<(u16, u16)>>,
}

impl Applied {
    pub(crate) fn new(n_slots: usize) -> Self {
        Applied {
            seen: 0,
            active: ActiveSet::new(),
            gains: SetGains::new(),
            any_dora: false,
            bind: vec![[NONE; MAX_ADAPTERS]; n_slots],
            gates: super::alora::Gates::new(),
            repl: vec![None; n_slots],
        }
    }

    /// Adopt the control's set if it changed since the last call. Allocation-free; the lock is held for
    /// the copy of at most `MAX_ADAPTERS` `Arc`s.
    pub(crate) fn refresh(&mut self, ctl: &AdapterControl) {
        if ctl.version.load(Ordering::Acquire) == self.seen {
            return;
        }
        {
            let g = ctl.pending.lock().unwrap_or_else(|e| e.into_inner());
            self.seen = ctl.version.load(Ordering::Acquire);
            self.active.clear();
            self.gains.clear();
            for ((a, s), d) in g.set.iter().zip(&g.gains).filter(|((_, s), _)| *s != 0.0) {
                let _ = self.active.push((Arc::clone(a), *s));
                let _ = self.gains.push(d.clone());
            }
            self.any_dora = self.gains.iter().any(Option::is_some);
        }
        self.gates.forget();
        for b in self.bind.iter_mut() {
            *b = [NONE; MAX_ADAPTERS];
        }
        self.repl.fill(None);
        for (i, (a, _)) in self.active.iter().enumerate() {
            for (j, t) in a.tensors().iter().enumerate() {
                for w in ctl.model.lora_parts(&t.target) {
                    if let Some(slot) = w.lora_slot {
                        self.bind[slot][i] = j as u16;
                    }
                }
            }
            for (j, s) in a.saved().iter().enumerate() {
                if let Some(slot) = ctl.model.lora_target(&s.target).and_then(|w| w.lora_slot) {
                    self.repl[slot] = Some((i as u16, j as u16));
                }
            }
        }
    }

    /// The type and bytes weight `w` is read from: an active adapter's fp16 replacement of it, or the
    /// base tensor in place in `m`'s map.
    pub(crate) fn weight_view<'a>(&'a self, m: &'a Model, w: &WeightRef) -> (QuantType, &'a [u8]) {
        match self.replacement(w) {
            Some(h) => (QuantType::F16, bytemuck::cast_slice(h)),
            None => (w.ty, m.bytes(w)),
        }
    }

    /// The fp16 replacement (`n_out × n_in`) an active adapter brings for weight `w`, if any.
    pub(crate) fn replacement(&self, w: &WeightRef) -> Option<&[u16]> {
        let (i, j) = (*self.repl.get(w.lora_slot?)?)?;
        Some(self.active[i as usize].0.saved()[j as usize].data())
    }

    pub(crate) fn active(&self) -> &ActiveSet {
        &self.active
    }

    /// Where each aLoRA of the set starts in the context `history ++ new` (see [`super::alora`]);
    /// called once per `eval`, after [`Applied::refresh`]. Allocation-free.
    /// Returns the position to evaluate the context again from, if an invocation started in tokens
    /// evaluated without its aLoRA ([`super::alora::Gates::locate`]).
    pub(crate) fn locate_invocations(&mut self, history: &[u32], new: &[u32]) -> Option<usize> {
        self.gates.locate(&self.active, history, new)
    }

    /// The context was cut to `n` positions (see [`super::alora::Gates::truncated`]).
    pub(crate) fn truncated(&mut self, n: usize) {
        self.gates.truncated(n);
    }

    /// A context shift dropped `n_discard` positions after the first `n_keep`.
    pub(crate) fn shifted(&mut self, n_keep: usize, n_discard: usize) {
        self.gates.shifted(n_keep, n_discard);
    }

    /// The batch about to be computed: positions `pos0..pos0 + n`.
    pub(crate) fn set_batch(&mut self, pos0: usize, n: usize) {
        self.gates.set_batch(pos0, n);
    }

    /// The kernels' view of every active adapter on weight `w` (none for a weight without a LoRA
    /// slot) for a computation over the last `rows` rows of the batch, with how many of those rows
    /// each skips from the first (an aLoRA before its invocation; 0 for a plain LoRA). An adapter that
    /// skips every row is left out.
    pub(crate) fn refs_for(&self, w: &WeightRef, rows: usize) -> (LoraRefs<'_>, Skips) {
        let (mut v, mut skips) = (heapless::Vec::new(), heapless::Vec::new());
        let Some(slot) = w.lora_slot else {
            return (v, skips);
        };
        if self.active.is_empty() {
            return (v, skips);
        }
        for (i, &j) in self.bind[slot].iter().enumerate().take(self.active.len()) {
            let skip = self.gates.skip(i, rows);
            if j != NONE && skip < rows {
                let (a, s) = &self.active[i];
                let t = &a.tensors()[j as usize];
                // a part of a fused tensor takes its rows of B
                let r = if t.kind == LoraKind::Linear && t.n_out != w.n_out {
                    t.kernel_ref_rows(*s, w.row0, w.n_out)
                } else {
                    t.kernel_ref(*s)
                };
                let _ = v.push(r);
                let _ = skips.push(skip);
            }
        }
        (v, skips)
    }

    /// The DoRA gains of each adapter [`Applied::refs_for`] gives for `w` and `rows`, in the same
    /// order (`None` for a plain LoRA); empty when no active adapter is DoRA.
    pub(crate) fn gains_for(
        &self,
        w: &WeightRef,
        rows: usize,
    ) -> heapless::Vec<Option<&[f32]>, MAX_ADAPTERS> {
        let mut v = heapless::Vec::new();
        let Some(slot) = w.lora_slot.filter(|_| self.any_dora) else {
            return v;
        };
        for (i, &j) in self.bind[slot].iter().enumerate().take(self.active.len()) {
            if j != NONE && self.gates.skip(i, rows) < rows {
                let g = self.gains[i].as_ref().and_then(|g| g.of(j as usize));
                let _ = v.push(g);
            }
        }
        v
    }
}
