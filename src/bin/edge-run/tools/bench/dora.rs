//! What DoRA adapters cost: the time to publish a set holding them (their row gains computed on the
//! session's threads, see `edge_run::adapter::dora`) and their decode speed against the same factors
//! applied as a plain LoRA.
use super::{measure_speed, LoraResult, Speed, Workload};
use edge_run::adapter::Adapter;
use edge_run::{Result, Session};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

/// DoRA figures of a bench run whose adapters include DoRA ones.
#[derive(Clone, Copy, Debug)]
pub struct DoraBench {
    /// Publishing the set when its DoRA gains are not cached (median of [`PUBLISH_RUNS`]), ms.
    pub publish_ms: f64,
    /// The first of those publishes, which also starts the session's threads for the norms, ms.
    pub first_publish_ms: f64,
    /// Prompt and decode speed with every DoRA magnitude dropped (the same factors as plain LoRAs).
    pub plain: Speed,
}

impl DoraBench {
    /// `100 × (base tg ÷ plain-LoRA tg − 1)`: the overhead of the same factors without DoRA.
    pub fn plain_overhead_pct(&self, base: &Speed) -> f64 {
        100.0 * (base.tg_tps / self.plain.tg_tps - 1.0)
    }

    /// The report's DoRA line: publish time, and the decode overhead (`l`, the run with the DoRA
    /// set, against `base`) as a multiple of the A/B byte floor, next to the plain LoRA's.
    pub fn line(&self, l: &LoraResult, base: &Speed, threads: usize) -> String {
        let plain = self.plain_overhead_pct(base);
        format!(
            "DoRA: publish {:.2} ms at {threads} threads (median of {PUBLISH_RUNS} sets not seen before; \
             first {:.2} ms); tg {:.1} tok/s vs {:.1} as plain LoRA; decode overhead {:.1}% = {:.2}x the \
             A/B byte floor (plain LoRA {plain:.1}% = {:.2}x)\n",
            self.publish_ms,
            self.first_publish_ms,
            l.speed.tg_tps,
            self.plain.tg_tps,
            l.overhead_pct,
            l.overhead_pct / l.floor_pct,
            plain / l.floor_pct
        )
    }

    /// `--json` fields: `dora_publish_ms`, `dora_first_publish_ms`, `dora_plain_tg_tps`,
    /// `dora_plain_overhead_pct`, `dora_floor_ratio` (`lora_overhead_pct ÷ lora_floor_pct`).
    pub fn add_json(&self, l: &LoraResult, base: &Speed, m: &mut Map<String, Value>) {
        m.insert("dora_publish_ms".into(), json!(self.publish_ms));
        m.insert("dora_first_publish_ms".into(), json!(self.first_publish_ms));
        m.insert("dora_plain_tg_tps".into(), json!(self.plain.tg_tps));
        let plain = self.plain_overhead_pct(base);
        m.insert("dora_plain_overhead_pct".into(), json!(plain));
        let ratio = l.overhead_pct / l.floor_pct;
        m.insert("dora_floor_ratio".into(), json!(ratio));
    }
}

/// Publishes timed; the median is reported.
pub const PUBLISH_RUNS: usize = 7;

/// The publish time of the set `loaded` in `sess` (each run with fresh copies of the adapters, so no
/// gains are cached) and the speed of the set as plain LoRAs, also reported to `progress`. `sess` is
/// left with that plain set; the caller publishes its own next. `None` without DoRA adapters.
pub fn measure(
    sess: &mut Session,
    loaded: &[(Arc<Adapter>, f32)],
    prompt: &[u32],
    w: &Workload,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<DoraBench>> {
    if !loaded.iter().any(|(a, _)| a.is_dora()) {
        return Ok(None);
    }
    let mut times = Vec::with_capacity(PUBLISH_RUNS);
    for _ in 0..PUBLISH_RUNS {
        let fresh: Vec<(Arc<Adapter>, f32)> = loaded
            .iter()
            .map(|(a, s)| (Arc::new((**a).clone()), *s))
            .collect();
        let set: Vec<(&Arc<Adapter>, f32)> = fresh.iter().map(|(a, s)| (a, *s)).collect();
        let t0 = Instant::now();
        sess.set_adapters(&set)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        sess.set_adapters(&[])?;
    }
    let first_publish_ms = times[0];
    times.sort_by(f64::total_cmp);
    let plain: Vec<(Arc<Adapter>, f32)> = loaded
        .iter()
        .map(|(a, s)| (Arc::new(a.without_dora()), *s))
        .collect();
    let set: Vec<(&Arc<Adapter>, f32)> = plain.iter().map(|(a, s)| (a, *s)).collect();
    sess.set_adapters(&set)?;
    let plain = measure_speed(sess, prompt, w.n_gen, w.reps)?;
    let d = DoraBench {
        publish_ms: times[PUBLISH_RUNS / 2],
        first_publish_ms,
        plain,
    };
    progress(&format!(
        "  DoRA: publish {:.2} ms (first {:.2} ms); the same factors as plain LoRA: pp {:.1} tok/s, tg {:.1} tok/s",
        d.publish_ms, d.first_publish_ms, d.plain.pp_tps, d.plain.tg_tps
    ));
    Ok(Some(d))
}
