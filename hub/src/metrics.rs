//! The hub's counters and gauges, exported in the Prometheus text format (`GET /metrics`).
//!
//! Hot-path counters are relaxed atomics; rejections are counted per [`DeadLetterReason`].
//! They are read at scrape time by [`MetricsCollector`], one `prometheus_client` collector in
//! the page's [`registry`]; other parts (the MQTT broker's `hub_mqtt_*`, commands, rules,
//! alerts, video) register their own collectors there.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use protocols::deadletter::DeadLetterReason;

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
    /// `spBv1.0/...` from a Sparkplug B edge node.
    Sparkplug,
    /// Anything else.
    Other,
}

impl TopicKind {
    const ALL: [TopicKind; 10] = [
        TopicKind::Batch,
        TopicKind::Telemetry,
        TopicKind::Health,
        TopicKind::Events,
        TopicKind::Snapshot,
        TopicKind::Desired,
        TopicKind::CmdResult,
        TopicKind::Status,
        TopicKind::Sparkplug,
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
            TopicKind::Sparkplug => "sparkplug",
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
    messages_in: [AtomicU64; TopicKind::ALL.len()],
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
}

// ---------------------------------------------------------------------------- exposition

/// The registry behind the hub's `/metrics` page: prefix `hub`, with the core metrics
/// ([`MetricsCollector`]) registered. The broker, twins, rules, alerts and video add their
/// collectors at start-up; the page is encoded with `prometheus_text::encode`.
pub fn registry(metrics: &Arc<Metrics>) -> Registry {
    let mut registry = Registry::with_prefix("hub");
    registry.register_collector(Box::new(MetricsCollector(metrics.clone())));
    registry
}

/// Writes one family without labels. `name` has neither the registry's prefix nor, for a
/// counter, the `_total` the encoder appends.
pub(crate) fn encode_one(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let metric_type = metric.metric_type();
    metric.encode(e.encode_descriptor(name, help, None, metric_type)?)
}

/// Writes a counter without labels (see [`encode_one`]).
pub(crate) fn encode_counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> fmt::Result {
    encode_one(e, name, help, ConstCounter::new(v))
}

/// Writes one family with a sample per label set (see [`encode_one`]).
pub(crate) fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl EncodeLabelValue for TopicKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.label())
    }
}

#[derive(Debug, EncodeLabelSet)]
struct KindLabels {
    kind: TopicKind,
}

impl EncodeMetric for &Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let buckets: [(f64, u64); LATENCY_BOUNDS.len()] =
            std::array::from_fn(|i| (LATENCY_BOUNDS[i], self.buckets[i].load(Relaxed)));
        encoder.encode_histogram::<NoLabelSet>(
            self.sum_us.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Exports [`Metrics`] (the `hub_*` families of the core) at scrape time.
pub struct MetricsCollector(Arc<Metrics>);

impl fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsCollector")
    }
}

impl Collector for MetricsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let m = &*self.0;
        let e = &mut e;
        encode_family(
            e,
            "messages_in",
            "Inbound messages by topic kind.",
            MetricType::Counter,
            TopicKind::ALL.map(|kind| {
                let n = m.messages_in[kind as usize].load(Relaxed);
                (KindLabels { kind }, ConstCounter::new(n))
            }),
        )?;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "readings_stored",
                "Readings durably stored.",
                &m.readings_stored,
            ),
            (
                "duplicates",
                "Redelivered agent messages, re-acknowledged and not stored again.",
                &m.duplicates,
            ),
            (
                "recovered",
                "Redeliveries of messages made durable before a restart, published again.",
                &m.recovered,
            ),
            (
                "store_errors",
                "Failed store appends (left unacknowledged).",
                &m.store_errors,
            ),
            (
                "feeds_published",
                "Feed messages published.",
                &m.feeds_published,
            ),
            (
                "twins_published",
                "Twin documents published.",
                &m.twins_published,
            ),
            (
                "acks_published",
                "Acknowledgements published to agents.",
                &m.acks_published,
            ),
            ("deadletters", "Dead letters published.", &m.deadletters),
            (
                "commands_sent",
                "Commands sent to devices and agents.",
                &m.commands_sent,
            ),
            (
                "decode_taken",
                "Messages taken by the decode workers.",
                &m.decode_queue.taken,
            ),
        ];
        for (name, help, v) in counters {
            encode_counter(e, name, help, v.load(Relaxed))?;
        }
        encode_family(
            e,
            "rejected",
            "Rejected messages or parts by reason.",
            MetricType::Counter,
            // Only the reasons seen so far: three dozen zero series would bury the ones that
            // count.
            DeadLetterReason::ALL.into_iter().filter_map(|reason| {
                let n = m.rejected_count(reason);
                (n > 0).then(|| ([("reason", reason.label())], ConstCounter::new(n)))
            }),
        )?;
        encode_family(
            e,
            "queue_depth",
            "Items waiting in front of a pipeline stage.",
            MetricType::Gauge,
            [("decode", &m.decode_queue), ("store", &m.store_queue)]
                .map(|(stage, g)| ([("stage", stage)], ConstGauge::new(g.depth()))),
        )?;
        encode_one(
            e,
            "store_append_seconds",
            "Latency of durable appends.",
            &m.append_latency,
        )?;
        encode_one(
            e,
            "pipeline_seconds",
            "From arrival to the feeds handed to subscribers.",
            &m.pipeline_latency,
        )
    }
}

/// The page of a `hub` registry holding only `collector` (collectors' unit tests).
#[cfg(test)]
pub(crate) fn render_collector(collector: impl Collector) -> String {
    let mut registry = Registry::with_prefix("hub");
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    text
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

    fn render(m: &Arc<Metrics>) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry(m)).unwrap();
        text
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Arc::new(Metrics::default());
        m.message_in(TopicKind::Batch);
        m.message_in(TopicKind::CmdResult);
        m.rejected(DeadLetterReason::UnknownQuantity);
        m.rejected(DeadLetterReason::UnknownQuantity);
        m.readings_stored.fetch_add(7, Relaxed);
        m.decode_queue.sent.fetch_add(5, Relaxed);
        m.decode_queue.taken.fetch_add(2, Relaxed);
        m.append_latency
            .observe(std::time::Duration::from_micros(1500));
        let text = render(&m);
        assert!(
            text.contains(
                "# HELP hub_messages_in_total Inbound messages by topic kind.\n\
                 # TYPE hub_messages_in_total counter\n\
                 hub_messages_in_total{kind=\"batch\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("hub_messages_in_total{kind=\"cmd_result\"} 1\n"));
        assert!(text.contains(
            "# HELP hub_readings_stored_total Readings durably stored.\n\
             # TYPE hub_readings_stored_total counter\n\
             hub_readings_stored_total 7\n"
        ));
        assert!(text.contains("hub_decode_taken_total 2\n"));
        assert!(text.contains("hub_rejected_total{reason=\"unknown_quantity\"} 2\n"));
        assert!(
            text.contains("# TYPE hub_queue_depth gauge\nhub_queue_depth{stage=\"decode\"} 3\n")
        );
        assert!(text.contains("hub_queue_depth{stage=\"store\"} 0\n"));
        assert!(text.contains("# TYPE hub_store_append_seconds histogram\n"));
        assert!(text.contains("hub_store_append_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("hub_store_append_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("hub_store_append_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("hub_store_append_seconds_sum 0.0015\n"));
        assert!(text.contains("hub_store_append_seconds_count 1\n"));
        assert!(text.contains("hub_pipeline_seconds_count 0\n"));
        // 1 + 10 + rejected, queue depth and the two histograms.
        assert_eq!(text.matches("# TYPE ").count(), 15, "{text}");
    }
}
