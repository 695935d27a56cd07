//! API: berth's HTTP surface (webhooks, delegate, jobs, metrics, health).
