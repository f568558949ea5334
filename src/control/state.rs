//! What every control-API worker shares, built once when the API starts:
//! where to send messages, the live stats, and the metrics registry.

use actix::Addr;
use prometheus_client::registry::Registry;
use streamherd_actors::connection::stats::StatsRegistry;
use streamherd_actors::metrics::Metrics;
use streamherd_actors::sinks::runtime::SinkHandle;
use streamherd_actors::supervisor::StreamSupervisor;

/// Shared by every worker: built once in `control::start`.
pub(crate) struct State {
    pub(crate) supervisor: Addr<StreamSupervisor>,
    pub(crate) stats: StatsRegistry,
    pub(crate) metrics: Metrics,
    /// Built once: registering per request would re-describe every family.
    pub(crate) registry: Registry,
    pub(crate) token: Option<String>,
    pub(crate) sinks: Vec<SinkHandle>,
}
