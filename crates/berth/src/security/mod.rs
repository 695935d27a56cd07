//! Runtime security: Falco's alerts about berth's workers, and berth's
//! response (docs/runtime-security.md).
//!
//! berth's preventive controls (hardened single-use workers, the socket
//! proxy, the egress proxy, image policy) bound what a job can do; Falco,
//! running on each Docker host with berth's rules
//! (`deploy/falco/berth_rules.yaml`), sees what a job *tries*. Falco's own
//! response engine needs Kubernetes; on plain Docker hosts berth closes the
//! loop: Falco posts its alerts to `POST /v1/security/events`, and berth
//! maps each to the job whose container it is about and acts as the
//! `[security]` policy says: `kill` (the job's containers removed at once,
//! the job failed with `security: <rule>`, its runner deregistered, the
//! workflow run cancelled where the pool asks), `alert` (recorded with the
//! job) or `ignore`.
//!
//! * [`falco`]: the alert format, its checks and its dedupe key;
//! * [`policy`]: `[security]`, rule patterns and priorities to actions;
//! * [`redact`]: secrets out of the alert before it is kept;
//! * [`response`]: the job lookup, the record and the kill.

pub mod falco;
pub mod policy;
pub mod redact;
pub mod response;

pub use falco::{FalcoEvent, Priority};
pub use policy::{Action, SecurityConfig};
