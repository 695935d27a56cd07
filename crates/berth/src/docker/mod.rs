//! Docker: the controller that creates hardened, single-use worker containers,
//! and the local worker-image builder used by tests and `berth demo`.

pub mod controller;
pub mod egress;
pub mod image_policy;
pub mod worker_image;

pub use controller::{
    ContainerEvent, ContainerEventKind, ContainerInfo, ContainerStatus, Controller, DockerError,
    ErrorHook, LogOptions, ManagedContainer, TmpfsSizes, WorkerNetwork, WorkerSpec,
};
