//! berth runs every GitHub Actions job in a fresh, single-use, locked-down
//! Docker container on hosts its users own.
//!
//! The modules follow berth's data flow (docs/architecture.md):
//!
//! ```text
//! intake ──▶ store (jobs table = queue + state) ──▶ dispatch ──▶ docker
//!   ▲                    ▲                              │
//!   │ webhooks,          │ reconcile (leases, orphans,  │ github (App auth,
//!   │ delegate API       │ stuck jobs, timeouts)        │ JIT runner configs)
//!   └─ scaleset (the proxy runner's long-poll listener) ┘
//! api: the HTTP surface; observability: metrics and logs.
//! ```
//!
//! The security proxies' policy code lives in the `berth-proxies` crate so that
//! it carries no database, orchestration or Docker-client dependency.

pub mod api;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod container_jobs;
pub mod context;
pub mod demo;
pub mod dispatch;
pub mod docker;
pub mod error;
pub mod failpoint;
pub mod fleet;
pub mod github;
pub mod intake;
pub mod lifecycle;
pub mod names;
pub mod observability;
pub mod reconcile;
pub mod scaleset;
pub mod secrets;
pub mod security;
pub mod service;
pub mod store;
pub mod supervise;
