//! The process-wide metric families, named as SPEC section 8 says. Actors
//! update them; the control API renders them as Prometheus text and the
//! stats line reads them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Source name.
    pub source: String,
}

/// Label set `{source,kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceKindLabels {
    /// Source name.
    pub source: String,
    /// Event kind name.
    pub kind: String,
}

/// Label set `{source,state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceStateLabels {
    /// Source name.
    pub source: String,
    /// Connection state name.
    pub state: String,
}

/// Label set `{source,cause}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceCauseLabels {
    /// Source name.
    pub source: String,
    /// Disconnect cause label.
    pub cause: String,
}

/// Label set `{sink}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Sink name.
    pub sink: String,
}

/// Every metric family streamherd exports. Cheap to clone (families are `Arc`s).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `streamherd_events_total{source,kind}`.
    pub events_total: Family<SourceKindLabels, Counter>,
    /// `streamherd_bytes_total{source}`: payload and framing bytes read.
    pub bytes_total: Family<SourceLabel, Counter>,
    /// `streamherd_connections{source,state}`.
    pub connections: Family<SourceStateLabels, Gauge>,
    /// `streamherd_reconnects_total{source,cause}`.
    pub reconnects_total: Family<SourceCauseLabels, Counter>,
    /// `streamherd_limit_omitted{source}`: sum over connections of the last `limit.track`.
    pub limit_omitted: Family<SourceLabel, Gauge>,
    /// `streamherd_gaps_total{source}`.
    pub gaps_total: Family<SourceLabel, Counter>,
    /// `streamherd_duplicates_dropped_total{source}`.
    pub duplicates_dropped_total: Family<SourceLabel, Counter>,
    /// `streamherd_malformed_total{source}`: messages that were not JSON objects.
    pub malformed_total: Family<SourceLabel, Counter>,
    /// `streamherd_oversized_total{source}`: messages over `max_message_bytes`.
    pub oversized_total: Family<SourceLabel, Counter>,
    /// `streamherd_sink_events_total{sink}`: events written.
    pub sink_events_total: Family<SinkLabel, Counter>,
    /// `streamherd_sink_errors_total{sink}`.
    pub sink_errors_total: Family<SinkLabel, Counter>,
    /// `streamherd_sink_dropped_total{sink}`: events dropped under `drop_newest` or after retries.
    pub sink_dropped_total: Family<SinkLabel, Counter>,
    /// `streamherd_sink_queue_depth{sink}`: events queued, not yet written.
    pub sink_queue_depth: Family<SinkLabel, Gauge>,
    /// `streamherd_spill_bytes{sink}`: bytes of a sink's disk queue not yet replayed.
    pub spill_bytes: Family<SinkLabel, Gauge>,
    /// `streamherd_liveness_probes_total{source}`: silences past the liveness bound probed.
    pub liveness_probes_total: Family<SourceLabel, Counter>,
}

impl Metrics {
    /// Registers every family under the `streamherd` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("streamherd");
        r.register("events", "Events read, by source and kind", self.events_total.clone());
        r.register("bytes", "Bytes read from the network, by source", self.bytes_total.clone());
        r.register("connections", "Connections by state", self.connections.clone());
        r.register("reconnects", "Reconnects by cause", self.reconnects_total.clone());
        r.register(
            "limit_omitted",
            "Undelivered matches reported by limit notices (sum of the last count per connection)",
            self.limit_omitted.clone(),
        );
        r.register("gaps", "Gap events written", self.gaps_total.clone());
        r.register(
            "duplicates_dropped",
            "Events seen twice during an overlap and written once",
            self.duplicates_dropped_total.clone(),
        );
        r.register("malformed", "Messages that were not JSON objects", self.malformed_total.clone());
        r.register("oversized", "Messages over max_message_bytes, dropped", self.oversized_total.clone());
        r.register("sink_events", "Events written by each sink", self.sink_events_total.clone());
        r.register("sink_errors", "Write errors by sink", self.sink_errors_total.clone());
        r.register("sink_dropped", "Events a sink dropped", self.sink_dropped_total.clone());
        r.register("sink_queue_depth", "Events queued for a sink", self.sink_queue_depth.clone());
        r.register("spill_bytes", "Bytes in a sink's disk queue, not yet replayed", self.spill_bytes.clone());
        r.register(
            "liveness_probes",
            "Connections silent past their liveness bound, probed",
            self.liveness_probes_total.clone(),
        );
    }

    /// Label helper.
    pub fn source(source: &str) -> SourceLabel {
        SourceLabel { source: source.to_owned() }
    }

    /// Label helper.
    pub fn sink(sink: &str) -> SinkLabel {
        SinkLabel { sink: sink.to_owned() }
    }
}
