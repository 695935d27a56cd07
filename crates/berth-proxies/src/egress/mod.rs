//! `berth egress-proxy`: worker containers reach the outside world only
//! through this proxy, and only the destinations its allowlist names.
//!
//! Workers sit on an internal Docker network with no route out; the proxy
//! is attached to that network and to an outside one. A job (or a
//! dependency it installs, or a compromised tool it runs) can then fetch
//! from the registries and services the operator allowed, and cannot send
//! the repository's code or secrets anywhere else, nor reach the host's
//! private network or a cloud metadata service.
//!
//! # Layers
//!
//! 1. [`target`]: one canonical `host:port` per request, or a refusal; the
//!    canonical form is what is checked **and** what is resolved.
//! 2. [`allowlist`]: domains (exact and `*.suffix`), ports, CIDRs, loaded
//!    from TOML; deny by default; resolved addresses must be public unless
//!    a CIDR entry covers them (the DNS-rebinding defence).
//! 3. [`server`]: CONNECT tunnels and plain-HTTP forwarding, limits, logs,
//!    [`metrics`], reload on SIGHUP; listening, accepting and draining are
//!    [`crate::transport`]'s, shared with the socket proxy.
//!
//! Everything denied gets `403` with a one-line body
//! `berth egress-proxy: denied HOST: REASON`. See `docs/egress-proxy.md`
//! for the operator's view.

pub mod allowlist;
pub mod metrics;
pub mod server;
pub mod target;

pub use allowlist::{Allowlist, AllowlistError, Entry, Limits, Matcher, Refusal};
pub use server::{EgressError, EgressProxy, Running, run};
pub use target::{Host, Target, TargetError, normalise_host, parse_authority};
