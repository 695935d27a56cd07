//! `berth socket-proxy`: a least-privilege proxy in front of the Docker socket.
//!
//! Whoever can talk to the Docker socket is root on the host: one
//! `docker run --privileged -v /:/host` away. berth's orchestrator needs a
//! few dozen calls, so it is given a proxy that allows those calls and
//! nothing else, checks what they ask for, and can only touch what berth
//! made. A compromised orchestrator (or anyone who reaches the proxy) can
//! then start and stop berth's own hardened workers, not own the host.
//!
//! # Layers
//!
//! 1. [`target`]: one canonical form of the request target, or a refusal;
//!    the canonical form is what is matched **and** what is forwarded.
//! 2. [`policy`]: the endpoint allowlist (method + path pattern + allowed
//!    query parameters), loaded from TOML, with the built-in least-privilege
//!    table as [`Policy::default`].
//! 3. [`body`] (over [`json`]): what a container, network or volume create,
//!    an exec, a network connect and a build's query may ask for; strict JSON
//!    read the way Go reads it.
//! 4. [`filter`]: the pure decision, driven by the fuzz target.
//! 5. [`server`]: the managed-label check of calls scoped to a container,
//!    network, volume, exec or image, and of the volumes and containers a
//!    body names (through the engine, cached by full ID), forwarding,
//!    streaming (a build context too), HTTP upgrades, logs and [`metrics`]; listening, accepting and draining
//!    are [`crate::transport`]'s, shared with the egress proxy.
//!
//! Everything denied gets `403` with `{"message": "berth socket-proxy:
//! denied by rule `…`: …"}`, which Docker clients print, and never reaches
//! the engine. See `docs/socket-proxy.md` for the operator's view.

pub mod body;
pub mod filter;
pub mod json;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod target;

pub use filter::{Denial, Filter, Plan, filter_raw};
pub use policy::{BodyKind, Policy, PolicyError, Rule, TargetKind};
pub use server::{DockerAddr, ProxyError, Running, SocketProxy, run};
