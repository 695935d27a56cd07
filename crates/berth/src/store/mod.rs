//! Store: one jobs table that is both the durable queue and the job state
//! machine, on SQLite (default) or PostgreSQL (several replicas).
