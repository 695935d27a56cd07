//! Intake: the two doors into berth's queue — GitHub `workflow_job` webhooks
//! and the delegate API used by `berth proxy` and anything else that can name
//! a job. Both only accept work durably; dispatching happens elsewhere.

pub mod webhook;
