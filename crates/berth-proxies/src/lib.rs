//! Policy code of berth's two security proxies.
//!
//! * the Docker socket proxy: which Docker API calls a client may make and
//!   what a container-create body may ask for;
//! * the egress proxy: which destinations worker containers may reach;
//! * [`transport`], under both: listen addresses, streams, hop-by-hop
//!   headers, and the accept loop with its backoff and graceful drain.
//!
//! This crate is deliberately small and pure: no database, no orchestration,
//! no Docker client. The proxies that enforce it must keep working, and keep
//! being auditable, even if everything else in berth is compromised.

pub mod egress;
mod metrics_endpoint;
pub mod socket;
pub mod transport;
