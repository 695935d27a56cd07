//! The socket proxy's Prometheus metrics (prefix `berth_socket_proxy_`):
//!
//! * `berth_socket_proxy_requests_total{decision,rule}`: every decision;
//!   `decision` is `allow`, `deny`, or `not_found` (the container or
//!   network a scoped call names does not exist: answered 404, not
//!   forwarded; berth's idempotent cleanup causes these), `rule` the rule
//!   that allowed it or the rule/check that denied it (`no-rule`, `method`,
//!   `request-target`…);
//! * `berth_socket_proxy_managed_checks_total{kind,result}`: managed-label
//!   checks of containers and networks, `result` = `cached`, `inspected`;
//! * `berth_socket_proxy_upstream_errors_total`: requests the Docker
//!   engine did not answer.
//!
//! `berth socket-proxy --metrics ADDR` serves them at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// The proxy's metric families, registered in their own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<DecisionLabels, Counter>,
    pub managed_checks: Family<CheckLabels, Counter>,
    pub upstream_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_socket_proxy");
        let requests = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by decision and by the rule that decided",
            requests.clone(),
        );
        let managed_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "managed_checks",
            "Managed-label checks of containers and networks",
            managed_checks.clone(),
        );
        let upstream_errors = Counter::default();
        registry.register(
            "upstream_errors",
            "Requests the Docker engine did not answer",
            upstream_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            managed_checks,
            upstream_errors,
        }
    }
}

impl Metrics {
    /// Counts one decision: `allow`, `deny` or `not_found`.
    pub fn decision(&self, decision: &'static str, rule: &str) {
        self.requests
            .get_or_create(&DecisionLabels {
                decision,
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
