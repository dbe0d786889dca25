//! The hub's counters and gauges, rendered in the Prometheus text format (`GET /metrics`).
//!
//! Hot-path counters are relaxed atomics; rejections are counted per [`DeadLetterReason`].
//! Other parts (the MQTT broker's `hub_mqtt_*`, the store) plug in through [`MetricsSource`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use protocols::deadletter::DeadLetterReason;

/// Something that appends its own metrics to the `/metrics` page.
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends metric families in the Prometheus text format.
    fn render(&self, out: &mut String);
}

/// Any `Fn(&mut String)` is a source, e.g.
/// `move |out: &mut String| broker_metrics.write_prometheus(out)`.
impl<F: Fn(&mut String) + Send + Sync + 'static> MetricsSource for F {
    fn render(&self, out: &mut String) {
        self(out)
    }
}

/// Kinds of inbound topics, for `hub_messages_in_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum TopicKind {
    /// `v1/agents/{id}/batch`.
    Batch,
    /// `v1/devices/{id}/telemetry`.
    Telemetry,
    /// `v1/agents/{id}/health`.
    Health,
    /// `v1/agents/{id}/events`.
    Events,
    /// `v1/agents/{id}/snapshots/{event}`.
    Snapshot,
    /// `v1/twin/{id}/desired`.
    Desired,
    /// `.../cmd/result`.
    CmdResult,
    /// `v1/status/{id}` (will messages).
    Status,
    /// Anything else.
    Other,
}

impl TopicKind {
    const ALL: [TopicKind; 9] = [
        TopicKind::Batch,
        TopicKind::Telemetry,
        TopicKind::Health,
        TopicKind::Events,
        TopicKind::Snapshot,
        TopicKind::Desired,
        TopicKind::CmdResult,
        TopicKind::Status,
        TopicKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            TopicKind::Batch => "batch",
            TopicKind::Telemetry => "telemetry",
            TopicKind::Health => "health",
            TopicKind::Events => "events",
            TopicKind::Snapshot => "snapshot",
            TopicKind::Desired => "desired",
            TopicKind::CmdResult => "cmd_result",
            TopicKind::Status => "status",
            TopicKind::Other => "other",
        }
    }
}

/// A pipeline stage's queue: items put in and taken out (depth is the difference).
#[derive(Debug, Default)]
pub struct StageGauge {
    /// Items sent into the stage's queue.
    pub sent: AtomicU64,
    /// Items the stage has taken from its queue.
    pub taken: AtomicU64,
}

impl StageGauge {
    /// Items waiting.
    pub fn depth(&self) -> u64 {
        self.sent
            .load(Relaxed)
            .saturating_sub(self.taken.load(Relaxed))
    }
}

/// Upper bounds of the latency histograms, seconds (finer around 10 ms, the feed target).
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` (what Prometheus would estimate at
    /// best); `None` without observations or when it lies beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * count as f64).ceil().max(1.0) as u64;
        let mut cumulative = 0;
        for (b, n) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            if cumulative >= rank {
                return Some(*b);
            }
        }
        None
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (b, n) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// One counter per [`DeadLetterReason`], indexed by the variant.
struct ReasonCounters([AtomicU64; DeadLetterReason::ALL.len()]);

impl Default for ReasonCounters {
    fn default() -> Self {
        ReasonCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Every metric of the hub core.
#[derive(Default)]
pub struct Metrics {
    messages_in: [AtomicU64; 9],
    /// Readings durably stored.
    pub readings_stored: AtomicU64,
    /// Agent messages that were redeliveries (re-acked, not stored again).
    pub duplicates: AtomicU64,
    /// Of the duplicates, first redeliveries of messages made durable before a restart, whose
    /// feeds were published (again) because the crash may have come before publishing.
    pub recovered: AtomicU64,
    /// Appends that failed (the message stays unacknowledged).
    pub store_errors: AtomicU64,
    /// Feed messages published.
    pub feeds_published: AtomicU64,
    /// Twin documents published.
    pub twins_published: AtomicU64,
    /// Acks published to agents.
    pub acks_published: AtomicU64,
    /// Dead letters published.
    pub deadletters: AtomicU64,
    /// Commands sent to devices and agents.
    pub commands_sent: AtomicU64,
    rejected: ReasonCounters,
    /// Queue in front of the decode workers.
    pub decode_queue: StageGauge,
    /// Queue in front of the store stage (and appends in flight).
    pub store_queue: StageGauge,
    /// Latency of `SeriesStore::append`.
    pub append_latency: Histogram,
    /// From a message's arrival at the ingress to its feeds handed to the subscribers' queues
    /// (the part of the feed latency the hub owns).
    pub pipeline_latency: Histogram,
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Metrics {
    /// Counts an inbound message by topic kind.
    pub fn message_in(&self, kind: TopicKind) {
        self.messages_in[kind as usize].fetch_add(1, Relaxed);
    }

    /// Counts a rejected message or part.
    pub fn rejected(&self, reason: DeadLetterReason) {
        self.rejected.0[reason as usize].fetch_add(1, Relaxed);
    }

    /// How many rejections with this reason so far.
    pub fn rejected_count(&self, reason: DeadLetterReason) -> u64 {
        self.rejected.0[reason as usize].load(Relaxed)
    }

    /// Adds a source of further metrics (e.g. the broker's `hub_mqtt_*`).
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        self.sources.lock().push(source);
    }

    /// The whole page in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP hub_messages_in_total Inbound messages by topic kind.\n");
        out.push_str("# TYPE hub_messages_in_total counter\n");
        for k in TopicKind::ALL {
            let _ = writeln!(
                out,
                "hub_messages_in_total{{kind=\"{}\"}} {}",
                k.label(),
                self.messages_in[k as usize].load(Relaxed)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "hub_readings_stored_total",
                "Readings durably stored.",
                &self.readings_stored,
            ),
            (
                "hub_duplicates_total",
                "Redelivered agent messages, re-acknowledged and not stored again.",
                &self.duplicates,
            ),
            (
                "hub_recovered_total",
                "Redeliveries of messages made durable before a restart, published again.",
                &self.recovered,
            ),
            (
                "hub_store_errors_total",
                "Failed store appends (left unacknowledged).",
                &self.store_errors,
            ),
            (
                "hub_feeds_published_total",
                "Feed messages published.",
                &self.feeds_published,
            ),
            (
                "hub_twins_published_total",
                "Twin documents published.",
                &self.twins_published,
            ),
            (
                "hub_acks_published_total",
                "Acknowledgements published to agents.",
                &self.acks_published,
            ),
            (
                "hub_deadletters_total",
                "Dead letters published.",
                &self.deadletters,
            ),
            (
                "hub_commands_sent_total",
                "Commands sent to devices and agents.",
                &self.commands_sent,
            ),
            (
                "hub_decode_taken_total",
                "Messages taken by the decode workers.",
                &self.decode_queue.taken,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        }
        out.push_str("# HELP hub_rejected_total Rejected messages or parts by reason.\n");
        out.push_str("# TYPE hub_rejected_total counter\n");
        // Only the reasons seen so far: three dozen zero series would bury the ones that count.
        for reason in DeadLetterReason::ALL {
            let n = self.rejected_count(reason);
            if n > 0 {
                let _ = writeln!(out, "hub_rejected_total{{reason=\"{reason}\"}} {n}");
            }
        }
        out.push_str("# HELP hub_queue_depth Items waiting in front of a pipeline stage.\n");
        out.push_str("# TYPE hub_queue_depth gauge\n");
        for (stage, g) in [("decode", &self.decode_queue), ("store", &self.store_queue)] {
            let _ = writeln!(out, "hub_queue_depth{{stage=\"{stage}\"}} {}", g.depth());
        }
        out.push_str("# HELP hub_store_append_seconds Latency of durable appends.\n");
        out.push_str("# TYPE hub_store_append_seconds histogram\n");
        self.append_latency
            .render("hub_store_append_seconds", &mut out);
        out.push_str(
            "# HELP hub_pipeline_seconds From arrival to the feeds handed to subscribers.\n",
        );
        out.push_str("# TYPE hub_pipeline_seconds histogram\n");
        self.pipeline_latency
            .render("hub_pipeline_seconds", &mut out);
        for s in self.sources.lock().iter() {
            s.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_bound_is_the_bucket_of_the_rank() {
        let h = Histogram::default();
        assert_eq!(h.quantile_bound(0.99), None);
        for _ in 0..98 {
            h.observe(std::time::Duration::from_micros(300));
        }
        h.observe(std::time::Duration::from_millis(9));
        h.observe(std::time::Duration::from_secs(5));
        assert_eq!(h.quantile_bound(0.5), Some(0.0005));
        assert_eq!(h.quantile_bound(0.98), Some(0.0005));
        assert_eq!(h.quantile_bound(0.99), Some(0.010));
        // Beyond the last bound: unknown, not the last bound.
        assert_eq!(h.quantile_bound(1.0), None);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.message_in(TopicKind::Batch);
        m.rejected(DeadLetterReason::UnknownQuantity);
        m.rejected(DeadLetterReason::UnknownQuantity);
        m.decode_queue.sent.fetch_add(5, Relaxed);
        m.decode_queue.taken.fetch_add(2, Relaxed);
        m.append_latency
            .observe(std::time::Duration::from_micros(1500));
        m.add_source(Arc::new(|out: &mut String| {
            out.push_str("hub_mqtt_connections 3\n")
        }));
        let text = m.render();
        assert!(
            text.contains("hub_messages_in_total{kind=\"batch\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("hub_rejected_total{reason=\"unknown_quantity\"} 2\n"));
        assert!(text.contains("hub_queue_depth{stage=\"decode\"} 3\n"));
        assert!(text.contains("hub_store_append_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("hub_store_append_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("hub_store_append_seconds_count 1\n"));
        assert!(text.contains("hub_mqtt_connections 3\n"));
    }
}
