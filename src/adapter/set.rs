//! The set of LoRA adapters a session applies, and the handle that changes it between two tokens.
//!
//! A [`Session`](crate::Session) reads its adapter set once at the start of every `eval` (so every layer of
//! a token sees the same set) from its [`AdapterControl`]. Any thread may publish a new set through the
//! control at any time: publishing validates the set against the model, copies at most
//! [`MAX_ADAPTERS`] `Arc`s into a fixed-capacity buffer under a mutex held only for that copy, and bumps a
//! version counter. The session notices the new version with one atomic load per `eval` and adopts the set
//! under the same short lock. Nothing is allocated, and no lock is held across a token.
//!
//! KV cache: entries written before a swap stay as they were computed (with the old set); only tokens
//! evaluated afterwards see the new adapters. To make earlier context reflect the new set, re-evaluate it
//! (`edge-run --chat` does that with `/adapter … ` when `--reeval-on-swap` is given).
use super::{Adapter, LoraKind};
use crate::kernels::lora::LoraRef;
use crate::kernels::QuantType;
use crate::model::{Model, WeightRef};
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most adapters a session can apply at once.
pub const MAX_ADAPTERS: usize = 8;

/// A set of adapters with their user scales (≤ [`MAX_ADAPTERS`]).
pub type ActiveSet = heapless::Vec<(Arc<Adapter>, f32), MAX_ADAPTERS>;

/// Publishes adapter sets to one session; share it (`Arc`) with any thread.
pub struct AdapterControl {
    model: Arc<Model>,
    max_adapters: usize,
    max_rank: usize,
    version: AtomicU64,
    pending: Mutex<ActiveSet>,
}

impl AdapterControl {
    pub(crate) fn new(model: Arc<Model>, max_adapters: usize, max_rank: usize) -> Self {
        AdapterControl {
            model,
            max_adapters,
            max_rank,
            version: AtomicU64::new(0),
            pending: Mutex::new(ActiveSet::new()),
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
    /// current set stays. Allocation-free.
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
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        g.clear();
        for (a, s) in set {
            // Cannot fail: len ≤ max_adapters ≤ MAX_ADAPTERS.
            let _ = g.push((Arc::clone(a), *s));
        }
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The published set (a copy of the `Arc`s).
    pub fn get(&self) -> ActiveSet {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
    /// `bind[slot][i]`: index of adapter `i`'s tensor on that slot, or `NONE`.
    bind: Vec<[u16; MAX_ADAPTERS]>,
    /// `repl[slot]`: (active adapter, index of its saved module) replacing that slot's weight.
    repl: Vec<Option<(u16, u16)>>,
}

impl Applied {
    pub(crate) fn new(n_slots: usize) -> Self {
        Applied {
            seen: 0,
            active: ActiveSet::new(),
            bind: vec![[NONE; MAX_ADAPTERS]; n_slots],
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
            for (a, s) in g.iter().filter(|(_, s)| *s != 0.0) {
                let _ = self.active.push((Arc::clone(a), *s));
            }
        }
        for b in self.bind.iter_mut() {
            *b = [NONE; MAX_ADAPTERS];
        }
        self.repl.fill(None);
        for (i, (a, _)) in self.active.iter().enumerate() {
            for (j, t) in a.tensors().iter().enumerate() {
                if let Some(slot) = ctl.model.lora_target(&t.target).and_then(|w| w.lora_slot) {
                    self.bind[slot][i] = j as u16;
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

    /// The kernels' view of every active adapter on weight `w` (none for a weight without a LoRA slot).
    pub(crate) fn refs_for(&self, w: &WeightRef) -> heapless::Vec<LoraRef<'_>, MAX_ADAPTERS> {
        let mut v = heapless::Vec::new();
        let Some(slot) = w.lora_slot else {
            return v;
        };
        if self.active.is_empty() {
            return v;
        }
        for (i, &j) in self.bind[slot].iter().enumerate().take(self.active.len()) {
            if j != NONE {
                let (a, s) = &self.active[i];
                let _ = v.push(a.tensors()[j as usize].kernel_ref(*s));
            }
        }
        v
    }
}
