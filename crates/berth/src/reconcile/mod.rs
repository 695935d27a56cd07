//! Reconcilers: periodic and on-demand, idempotent passes that finish or clean
//! up whatever a crash or a lost event left behind.
