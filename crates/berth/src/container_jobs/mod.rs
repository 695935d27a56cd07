//! Container jobs: `container:`, `services:` and Docker container actions,
//! run by berth on the runner's behalf through its container hooks.
//!
//! # Why
//!
//! The actions runner runs these by talking to Docker, and berth's workers
//! have no Docker socket, on purpose: a socket is root on the host. ARC
//! answers with a privileged docker-in-docker container. berth answers with
//! the runner's container-hooks interface: the worker's runner hands every
//! container operation (`prepare_job`, `run_script_step`,
//! `run_container_step`, `cleanup_job`) to `berth hook`, which asks this
//! API to do it, and berth does it on the worker's Docker host under the
//! pool's policy ([`policy`]) with the same hardening as the worker.
//!
//! # Pieces
//!
//! - [`protocol`]: the hook's input and answer, as the runner defines them;
//! - [`policy`]: what a pool allows (images, options, mounts), decided
//!   before anything reaches Docker;
//! - `volumes`: the per-job volumes a worker is made with, shared with the
//!   job's containers (docs/container-jobs.md has the layout).
//!
//! The per-job credential: a random `bhk_…` token is made at hand-off,
//! written to the worker's stdin after the JIT config (never in anything
//! `docker inspect` shows), and kept in the store only as a hash bound to
//! the runner's name; it acts for the job holding that runner, only while
//! that job is active.

pub mod client;
pub mod credential;
pub mod policy;
pub mod protocol;
pub mod runtime;
pub mod volumes;
