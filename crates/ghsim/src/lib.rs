#![recursion_limit = "256"]
//! ghsim: a GitHub simulator for berth's tests and `berth demo`.
//!
//! GitHub cannot be reached from where berth is developed and tested, so this
//! crate plays GitHub for every call berth makes, over real HTTP on loopback:
//!
//! - [`rest`]: the REST subset (App, installations, tokens, self-hosted
//!   runners, JIT configs, jobs, run cancellation, the App's webhook
//!   delivery log and redelivery), with rate-limit headers;
//! - [`webhooks`]: signed `workflow_job` deliveries, with duplicate / reorder
//!   / drop faults and redelivery;
//! - [`scaleset`]: the Actions service's runner scale-set API (token chain,
//!   scale sets, sessions, message long poll, acquire, JIT, agents);
//! - [`engine`]: jobs, matching them to runners the way GitHub does, and the
//!   events every transition emits;
//! - [`runner_protocol`]: the JIT config format and the endpoints a runner
//!   talks to; [`runner`] is the runner stand-in (`ghsim-runner`) built on it,
//!   [`hooks`] its container hooks (`container:`, `services:`, container actions);
//! - [`control`]: the control API (`/_sim/...` and [`SimHandle`] methods);
//! - [`faults`]: injected 5xx / 429 / 403 / slow answers.
//!
//! Start one with [`Simulator::start`] on a listener you bound.
//! See `docs/simulator.md` for the protocol and the control API.

pub mod auth;
pub mod config;
pub mod control;
pub mod engine;
pub mod error;
pub mod faults;
pub mod hooks;
mod objects;
pub mod rest;
pub mod runner;
pub mod runner_protocol;
pub mod scaleset;
pub mod sim;
pub mod state;
pub mod webhooks;

pub use config::{AccountConfig, AccountKind, ScaleSetFlow, SimConfig, WebhookTarget};
pub use control::{JitRequest, JobView, RunnerView, ScaleSetView, SimInfo};
pub use engine::{
    ActionStep, ContainerSpec, JobSpec, RegistryCredentials, ScriptStep, Services, StepInput,
};
pub use error::{Error, Result};
pub use faults::{FaultKind, FaultRule};
pub use runner_protocol::JitConfig;
pub use sim::{SimHandle, Simulator};
pub use state::Delivery;
pub use webhooks::{DeliveryFault, WebhookFaultRule};
