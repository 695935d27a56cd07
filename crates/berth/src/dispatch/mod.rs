//! Dispatch: claims queued jobs (leases), mints a JIT runner config, and drives
//! each job's container through create → start → watch → remove.
