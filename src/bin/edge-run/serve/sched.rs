//! The model worker: `--parallel` slots, each a [`Session`] with its own KV cache, and one thread that
//! steps every active slot in turn (a prompt chunk of up to `n_batch` tokens, or one decoded token), so
//! a long prompt is interleaved with the running decodes instead of stalling them. Requests wait in a
//! bounded queue. Each slot applies its request's adapter set through the session's adapter control
//! (published once when the request starts); a slot keeps the KV rows of its last prompt and reuses
//! their common prefix only for the same adapters with the same scales.
use super::metrics::Metrics;
use edge_run::adapter::Adapter;
use edge_run::tokenizer::StreamDecoder;
use edge_run::{Model, Sampler, SamplingParams, Session};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// One adapter of a request's set, with the name it was asked for.
#[derive(Clone)]
pub struct UseAdapter {
    pub name: String,
    pub adapter: Arc<Adapter>,
    pub scale: f32,
}

/// A generation request, ready to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stops: Vec<String>,
    /// Go on past end-of-generation tokens (llama-server's `ignore_eos`, for benchmarks).
    pub ignore_eos: bool,
    pub adapters: Vec<UseAdapter>,
    pub deadline: Instant,
    pub arrived: Instant,
    /// Set by the connection when its client is gone: the slot stops and frees itself.
    pub cancel: Arc<AtomicBool>,
    pub events: Sender<Event>,
}

/// What the worker tells a request's connection.
pub enum Event {
    /// Text to append to the answer.
    Text(String),
    Done(Finish),
    Failed(String),
}

pub struct Finish {
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The queue between connections and the worker.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    cap: usize,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Queue {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            cap,
            metrics,
        }
    }

    /// Enqueues `job`, or gives it back when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), Box<Job>> {
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.cap {
            return Err(Box::new(job));
        }
        q.push_back(job);
        self.metrics.set_queue(q.len());
        self.ready.notify_one();
        Ok(())
    }

    fn pop(&self, wait: bool) -> Option<Job> {
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        while wait && q.is_empty() {
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        let j = q.pop_front();
        self.metrics.set_queue(q.len());
        j
    }
}

/// The key under which a slot's KV rows can be reused: each adapter by identity, with its scale.
type SetKey = Vec<(usize, u32)>;

fn set_key(adapters: &[UseAdapter]) -> SetKey {
    adapters
        .iter()
        .filter(|a| a.scale != 0.0)
        .map(|a| (Arc::as_ptr(&a.adapter) as usize, a.scale.to_bits()))
        .collect()
}

struct Running {
    job: Job,
    sampler: Sampler,
    /// Prompt tokens evaluated so far (from the reused prefix on).
    done: usize,
    generated: usize,
    decoder: StreamDecoder,
    /// Text generated and not yet sent (held back while it could be the start of a stop string).
    held: String,
    first_token: bool,
}

struct Slot {
    sess: Session,
    /// The adapter set and prompt length of the request whose rows the cache holds.
    key: Option<SetKey>,
    prompt_len: usize,
    run: Option<Running>,
}

pub struct Worker {
    model: Arc<Model>,
    slots: Vec<Slot>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
}

enum Step {
    Continue,
    End(&'static str),
}

impl Worker {
    pub fn new(
        model: Arc<Model>,
        sessions: Vec<Session>,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
    ) -> Worker {
        let slots = sessions
            .into_iter()
            .map(|sess| Slot {
                sess,
                key: None,
                prompt_len: 0,
                run: None,
            })
            .collect();
        Worker {
            model,
            slots,
            queue,
            metrics,
        }
    }

    /// Runs forever: admits queued requests into free slots and steps the active ones.
    pub fn run(mut self) {
        loop {
            for i in 0..self.slots.len() {
                if self.slots[i].run.is_none() {
                    let idle = self.slots.iter().all(|s| s.run.is_none());
                    if let Some(job) = self.queue.pop(idle) {
                        self.start(i, job);
                    }
                }
            }
            self.metrics
                .set_batch(self.slots.iter().filter(|s| s.run.is_some()).count());
            for i in 0..self.slots.len() {
                if self.slots[i].run.is_some() {
                    let step = self.step(i);
                    if let Step::End(reason) = step {
                        self.finish(i, reason);
                    }
                }
            }
        }
    }

    /// Puts `job` in slot `i`: publishes its adapter set and keeps the reusable KV prefix.
    fn start(&mut self, i: usize, job: Job) {
        let n_vocab = self.model.hp.n_vocab;
        let slot = &mut self.slots[i];
        let set: Vec<(&Arc<Adapter>, f32)> =
            job.adapters.iter().map(|a| (&a.adapter, a.scale)).collect();
        if let Err(e) = slot.sess.set_adapters(&set) {
            let _ = job.events.send(Event::Failed(e.to_string()));
            return;
        }
        let key = set_key(&job.adapters);
        let n_batch = slot.sess.config().n_batch;
        let keep = if slot.key.as_ref() == Some(&key) {
            // Reuse only rows that were computed as prompt chunks aligned on n_batch, exactly as a fresh
            // evaluation of this prompt computes them, and leave at least one token to evaluate.
            let common = slot
                .sess
                .tokens()
                .iter()
                .zip(&job.prompt)
                .take_while(|(a, b)| a == b)
                .count();
            let limit = common
                .min(slot.prompt_len)
                .min(job.prompt.len().saturating_sub(1));
            limit / n_batch * n_batch
        } else {
            0
        };
        slot.sess.truncate(keep);
        slot.key = Some(key);
        slot.prompt_len = job.prompt.len();
        for a in &job.adapters {
            self.metrics.adapter_used(&a.name);
        }
        let mut sampler = Sampler::new(job.params.clone(), n_vocab);
        for &t in &job.prompt[..keep] {
            sampler.accept(t);
        }
        slot.run = Some(Running {
            job,
            sampler,
            done: keep,
            generated: 0,
            decoder: StreamDecoder::new(false),
            held: String::new(),
            first_token: true,
        });
    }

    /// One step of slot `i`: a prompt chunk (the last one followed by the first token), or one token
    /// sampled, sent and evaluated.
    fn step(&mut self, i: usize) -> Step {
        let model = Arc::clone(&self.model);
        let slot = &mut self.slots[i];
        let sess = &mut slot.sess;
        let Some(r) = slot.run.as_mut() else {
            return Step::Continue;
        };
        if r.job.cancel.load(Ordering::Relaxed) {
            return Step::End("cancelled");
        }
        if Instant::now() > r.job.deadline {
            return Step::End("length");
        }
        if r.done < r.job.prompt.len() {
            let n = sess.config().n_batch.min(r.job.prompt.len() - r.done);
            let chunk = &r.job.prompt[r.done..r.done + n];
            if let Err(e) = sess.eval(chunk) {
                let _ = r.job.events.send(Event::Failed(e.to_string()));
                return Step::End("error");
            }
            for &t in chunk {
                r.sampler.accept(t);
            }
            r.done += n;
            if r.done < r.job.prompt.len() {
                return Step::Continue;
            }
            // The prompt is in: its first token goes out in this same step.
        }
        if r.generated >= r.job.max_tokens {
            return Step::End("length");
        }
        let id = r.sampler.sample(sess.logits());
        if model.tokenizer.is_eog(id) && !r.job.ignore_eos {
            return Step::End("stop");
        }
        r.sampler.accept(id);
        r.generated += 1;
        if r.first_token {
            r.first_token = false;
            self.metrics.ttft(r.job.arrived.elapsed());
        }
        self.metrics.add_completion_tokens(1);
        r.decoder.push(&model.tokenizer, id, &mut r.held);
        if let Some(cut) = find_stop(&r.held, &r.job.stops) {
            r.held.truncate(cut);
            flush(r, r.held.len());
            return Step::End("stop");
        }
        let safe = r.held.len() - stop_prefix_len(&r.held, &r.job.stops);
        if !flush(r, safe) {
            return Step::End("cancelled");
        }
        if r.generated >= r.job.max_tokens {
            return Step::End("length");
        }
        if sess.n_past() >= sess.config().n_ctx {
            return Step::End("length");
        }
        if let Err(e) = sess.eval(&[id]) {
            let _ = r.job.events.send(Event::Failed(e.to_string()));
            return Step::End("error");
        }
        Step::Continue
    }

    /// Ends slot `i`'s request: the held-back text and the finish are sent, the slot is free.
    fn finish(&mut self, i: usize, reason: &'static str) {
        let slot = &mut self.slots[i];
        let Some(mut r) = slot.run.take() else {
            return;
        };
        if reason == "error" {
            slot.key = None;
            return;
        }
        if reason != "stop" {
            r.decoder.finish(&mut r.held);
            let n = r.held.len();
            flush(&mut r, n);
        }
        let _ = r.job.events.send(Event::Done(Finish {
            reason: if reason == "cancelled" {
                "stop"
            } else {
                reason
            },
            prompt_tokens: r.job.prompt.len(),
            completion_tokens: r.generated,
        }));
        self.metrics.request_done(reason == "cancelled");
    }
}

/// Sends the first `n` bytes of the held text; false if the connection is gone.
fn flush(r: &mut Running, n: usize) -> bool {
    if n == 0 {
        return true;
    }
    let text: String = r.held.drain(..n).collect();
    r.job.events.send(Event::Text(text)).is_ok()
}

/// Byte offset where the first stop string starts in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the longest end of `text` that is the start of some stop string (held back).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\ndef", &stops), Some(3));
        assert_eq!(find_stop("xxENDyy\n\n", &stops), Some(2));
        assert_eq!(find_stop("abc", &stops), None);
        assert_eq!(stop_prefix_len("abc\n", &stops), 1);
        assert_eq!(stop_prefix_len("abcEN", &stops), 2);
        assert_eq!(stop_prefix_len("abcE", &stops), 1);
        assert_eq!(stop_prefix_len("abc", &stops), 0);
    }
}
