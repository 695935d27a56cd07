//! Docker: the controller that creates hardened, single-use worker containers,
//! and the local worker-image builder used by tests and `berth demo`.

pub mod worker_image;
