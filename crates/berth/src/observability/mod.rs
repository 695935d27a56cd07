//! Observability: Prometheus metrics and JSON logs correlated by repository,
//! workflow, run and job.
