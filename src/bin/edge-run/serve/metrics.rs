//! Counters for `GET /metrics` (Prometheus text format).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    /// Responses by endpoint and status.
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    /// Requests that used each adapter.
    adapters: Mutex<BTreeMap<String, u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    queue: AtomicUsize,
    batch: AtomicUsize,
    ttft_sum_us: AtomicU64,
    ttft_count: AtomicU64,
}

impl Metrics {
    pub fn response(&self, endpoint: &str, status: u16) {
        let mut m = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint.to_string(), status)).or_default() += 1;
    }
    pub fn adapter_used(&self, name: &str) {
        let mut m = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                m.insert(name.to_string(), 1);
            }
        }
    }
    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Relaxed);
    }
    pub fn add_completion_tokens(&self, n: usize) {
        self.completion_tokens.fetch_add(n as u64, Relaxed);
    }
    pub fn request_done(&self, cancelled: bool) {
        if cancelled {
            self.cancelled.fetch_add(1, Relaxed);
        } else {
            self.finished.fetch_add(1, Relaxed);
        }
    }
    pub fn set_queue(&self, n: usize) {
        self.queue.store(n, Relaxed);
    }
    pub fn set_batch(&self, n: usize) {
        self.batch.store(n, Relaxed);
    }
    pub fn ttft(&self, d: Duration) {
        self.ttft_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.ttft_count.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every counter and gauge.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP edge_run_http_responses_total HTTP responses by endpoint and status.\n\
             # TYPE edge_run_http_responses_total counter"
        );
        let responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        for ((ep, st), n) in responses.iter() {
            let _ = writeln!(
                s,
                "edge_run_http_responses_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        drop(responses);
        let counters: [(&str, &str, u64); 6] = [
            (
                "prompt_tokens_total",
                "Prompt tokens of accepted requests.",
                self.prompt_tokens.load(Relaxed),
            ),
            (
                "completion_tokens_total",
                "Tokens generated.",
                self.completion_tokens.load(Relaxed),
            ),
            (
                "requests_finished_total",
                "Generations that ran to their end.",
                self.finished.load(Relaxed),
            ),
            (
                "requests_cancelled_total",
                "Generations stopped because their client left.",
                self.cancelled.load(Relaxed),
            ),
            (
                "time_to_first_token_seconds_sum",
                "Sum of arrival-to-first-token times.",
                0,
            ),
            (
                "time_to_first_token_seconds_count",
                "Requests that produced a first token.",
                self.ttft_count.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP edge_run_{name} {help}\n# TYPE edge_run_{name} counter"
            );
            if name == "time_to_first_token_seconds_sum" {
                let secs = self.ttft_sum_us.load(Relaxed) as f64 / 1e6;
                let _ = writeln!(s, "edge_run_{name} {secs}");
            } else {
                let _ = writeln!(s, "edge_run_{name} {v}");
            }
        }
        let gauges = [
            (
                "queue_depth",
                "Requests waiting for a slot.",
                self.queue.load(Relaxed),
            ),
            (
                "batch_size",
                "Requests being decoded.",
                self.batch.load(Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP edge_run_{name} {help}\n# TYPE edge_run_{name} gauge\nedge_run_{name} {v}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP edge_run_adapter_requests_total Requests that applied each adapter.\n\
             # TYPE edge_run_adapter_requests_total counter"
        );
        let adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, n) in adapters.iter() {
            let _ = writeln!(
                s,
                "edge_run_adapter_requests_total{{adapter=\"{}\"}} {n}",
                name.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        s
    }
}
