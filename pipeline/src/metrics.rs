//! Pipeline metrics: histograms and counters, as a plain struct the service publishes
//! (to Prometheus, in `aic serve`) and benches print.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A histogram of microseconds (or plain counts), 3 significant digits, up to 100 s.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 100_000_000, 3).expect("static bounds are valid"))
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        self.record_count(d.as_micros().clamp(1, 100_000_000) as u64);
    }
    pub fn record_count(&mut self, v: u64) {
        let _ = self.0.record(v.clamp(1, 100_000_000));
    }
    pub fn len(&self) -> u64 {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `q` in 0..=1; microseconds (or counts).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }
    pub fn max(&self) -> u64 {
        self.0.max()
    }
    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }
    /// (value, count) for every recorded value (for batch-size distributions).
    pub fn distribution(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    /// Frames per model call.
    pub batch_size: Hist,
    /// Arrival to batch start, µs.
    pub queue_wait: Hist,
    /// Backend time per model call, µs.
    pub model_time: Hist,
    /// Arrival to output, µs.
    pub e2e_latency: Hist,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Frames sent as Opus or concealed instead of going through the model.
    pub fallbacks: u64,
    /// Outputs delivered after their stream's latency budget (estimate errors, probes).
    pub late: u64,
    /// Frames dropped because a stream's queue was full.
    pub dropped: u64,
    pub corrupt_frames: u64,
    /// Frames refused at the door (unknown stream, wrong size or direction).
    pub rejected_frames: u64,
    pub backend_errors: u64,
    pub last_backend_error: Option<String>,
    /// Results that arrived for a slot whose stream had closed.
    pub stale_results: u64,
    pub streams_opened: u64,
    pub rejected_streams: u64,
    /// Times a stream was shed under sustained overload (all its frames as Opus for a while).
    pub streams_shed: u64,
    /// Frames of shed streams sent as Opus (part of `fallbacks`).
    pub shed_frames: u64,
    /// Streams shed right now (a gauge; summed over workers by `merge`).
    pub shed_now: u64,
}

impl PipelineMetrics {
    /// Adds another engine's metrics (one per pipeline worker).
    pub fn merge(&mut self, o: &PipelineMetrics) {
        self.batch_size.merge(&o.batch_size);
        self.queue_wait.merge(&o.queue_wait);
        self.model_time.merge(&o.model_time);
        self.e2e_latency.merge(&o.e2e_latency);
        self.frames_in += o.frames_in;
        self.frames_out += o.frames_out;
        self.fallbacks += o.fallbacks;
        self.late += o.late;
        self.dropped += o.dropped;
        self.corrupt_frames += o.corrupt_frames;
        self.rejected_frames += o.rejected_frames;
        self.backend_errors += o.backend_errors;
        if o.last_backend_error.is_some() {
            self.last_backend_error.clone_from(&o.last_backend_error);
        }
        self.stale_results += o.stale_results;
        self.streams_opened += o.streams_opened;
        self.rejected_streams += o.rejected_streams;
        self.streams_shed += o.streams_shed;
        self.shed_frames += o.shed_frames;
        self.shed_now += o.shed_now;
    }
}
