//! Observability: Prometheus metrics and JSON logs correlated by repository,
//! workflow, run and job.

pub mod logging;
pub mod metrics;

pub use metrics::Metrics;
