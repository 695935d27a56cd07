//! The egress proxy's Prometheus metrics (prefix `berth_egress_`):
//!
//! * `berth_egress_requests_total{kind,decision,reason}`: every decision;
//!   `kind` is `connect` or `http`, `decision` `allow` or `deny`, `reason`
//!   `allowed` or why it was refused (`not-allowed`, `port-not-allowed`,
//!   `private-address`, `bad-target`, `host-mismatch`, `method`);
//! * `berth_egress_upstream_errors_total{reason}`: allowed requests whose
//!   upstream could not be reached (`dns`, `connect`, `timeout`). An allow
//!   is counted in `requests_total` once the upstream connection is made,
//!   so each request is counted exactly once in one of the two;
//! * `berth_egress_bytes_total{direction}`: bytes relayed, `sent`
//!   (client to upstream) and `received` (upstream to client);
//! * `berth_egress_connections` (gauge): client connections open now;
//! * `berth_egress_connections_rejected_total`: connections refused because
//!   `max_connections` were open;
//! * `berth_egress_reloads_total{result}`: allowlist reloads (`ok`, `error`).
//!
//! `berth egress-proxy --metrics ADDR` serves them at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub kind: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The proxy's metric families, registered in their own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<DecisionLabels, Counter>,
    pub upstream_errors: Family<ReasonLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub connections: Gauge,
    pub connections_rejected: Counter,
    pub reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_egress");
        let requests = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "requests",
            "Proxy requests by kind, decision and reason",
            requests.clone(),
        );
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Allowed requests whose upstream could not be reached",
            upstream_errors.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes relayed: sent (client to upstream) and received",
            bytes.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Client connections open now",
            connections.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Client connections refused at max_connections",
            connections_rejected.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("reloads", "Allowlist reloads", reloads.clone());
        Metrics {
            registry,
            requests,
            upstream_errors,
            bytes,
            connections,
            connections_rejected,
            reloads,
        }
    }
}

impl Metrics {
    pub fn decision(&self, kind: &'static str, decision: &'static str, reason: &'static str) {
        self.requests
            .get_or_create(&DecisionLabels {
                kind,
                decision,
                reason,
            })
            .inc();
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The `bytes_total` counter of one direction, to add to as bytes flow.
    pub fn bytes_counter(&self, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
