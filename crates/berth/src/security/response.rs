//! Acting on alerts: find the job, apply the policy, record, and for `kill`
//! stop the job at once.
//!
//! The order keeps a kill prompt and exactly-once:
//!
//! 1. The alert is recorded with its job under its dedupe key; a
//!    redelivery finds the key taken and acts no further.
//! 2. For `kill`, the job is marked (`job_stop_for`: `cancel_requested`
//!    and `stop_reason`, one conditional UPDATE, so two replicas or two
//!    alerts mark it once). Whoever marked it removes the job's containers
//!    right away, then settles the job through the exit handler: failed
//!    with `security: <rule>`, runner registration deleted, the hook's
//!    objects removed.
//! 3. Should berth stop between 1 and 2, the redelivery sees a recorded
//!    `killed` alert and marks the job then; should it stop between the
//!    mark and the removal, the cancellation reconciler stops the marked
//!    job at its next pass. Either way the job ends as the policy said.

use std::sync::Arc;

use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use super::falco::FalcoEvent;
use super::policy::Action;
use super::redact;
use crate::context::Context;
use crate::observability::metrics::SecurityEventLabels;
use crate::store::{Job, NewSecurityEvent, SecurityEvent, StoreError};

/// What became of one alert (the `events` of the API's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventResult {
    pub rule: String,
    pub priority: String,
    /// What the policy decided: `kill`, `alert` or `ignore`.
    pub action: &'static str,
    /// What berth did: `killed`, `recorded`, `ignored`, `duplicate` (seen
    /// before; acted on then) or `unmatched` (no job of berth's).
    pub outcome: &'static str,
    /// The berth job the alert was about.
    pub job_id: Option<Uuid>,
}

/// Acts on each alert in turn.
pub async fn receive(
    ctx: &Arc<Context>,
    events: Vec<FalcoEvent>,
) -> Result<Vec<EventResult>, StoreError> {
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        results.push(receive_one(ctx, event).await?);
    }
    Ok(results)
}

async fn receive_one(ctx: &Arc<Context>, event: FalcoEvent) -> Result<EventResult, StoreError> {
    let action = ctx.config.security.action(&event.rule, event.priority);
    let job = job_of(ctx, &event).await?;
    let result = |outcome: &'static str, job_id: Option<Uuid>| EventResult {
        rule: event.rule.clone(),
        priority: event.priority.to_string(),
        action: action.as_str(),
        outcome,
        job_id,
    };
    let count = |action_label: &str| {
        ctx.metrics
            .security_events
            .get_or_create(&SecurityEventLabels {
                rule: event.rule.clone(),
                priority: event.priority.to_string(),
                action: action_label.to_string(),
            })
            .inc();
    };
    let Some(job) = job else {
        count("unmatched");
        tracing::warn!(
            rule = %event.rule,
            priority = %event.priority,
            container_id = event.container_id().as_deref().unwrap_or("-"),
            hostname = event.hostname.as_deref().unwrap_or("-"),
            "a security event about no container of berth's; recorded nowhere"
        );
        return Ok(result("unmatched", None));
    };
    if action == Action::Ignore {
        count(action.as_str());
        return Ok(result("ignored", Some(job.id)));
    }
    let kill = action == Action::Kill && job.state.is_active();
    let record = record_of(ctx, &event, &job, action, kill);
    let span = crate::job_span!(job);
    if !ctx.store.security_event_record(&record).await? {
        // Seen before. Its kill may have been cut short by a stop of berth
        // right after it was recorded: marking again is a no-op otherwise.
        if let Some(stored) = ctx.store.security_event_by_key(&record.dedupe_key).await?
            && stored.outcome == "killed"
        {
            stop_job(ctx, &job, &event.rule).instrument(span).await?;
        }
        return Ok(result("duplicate", Some(job.id)));
    }
    count(action.as_str());
    span.in_scope(|| {
        tracing::warn!(
            rule = %event.rule,
            priority = %event.priority,
            action = action.as_str(),
            output = %record.event.output,
            "security event"
        )
    });
    if kill {
        stop_job(ctx, &job, &event.rule).instrument(span).await?;
        Ok(result("killed", Some(job.id)))
    } else {
        Ok(result("recorded", Some(job.id)))
    }
}

/// The job an alert is about: by the container Falco saw (a worker, or a
/// container the hook made for a container job), else by the `berth.job`
/// label Falco read from the container.
async fn job_of(ctx: &Context, event: &FalcoEvent) -> Result<Option<Job>, StoreError> {
    if let Some(container_id) = event.container_id()
        && let Some(job) = ctx.store.job_by_container_prefix(&container_id).await?
    {
        return Ok(Some(job));
    }
    match event
        .label("berth.job")
        .and_then(|l| l.parse::<Uuid>().ok())
    {
        Some(id) => ctx.store.job_get(id).await,
        None => Ok(None),
    }
}

fn record_of(
    ctx: &Context,
    event: &FalcoEvent,
    job: &Job,
    action: Action,
    kill: bool,
) -> NewSecurityEvent {
    // The secrets berth holds that a job could echo (the App key never
    // reaches a worker).
    let held: Vec<crate::config::Secret> = ctx
        .webhook_secret
        .iter()
        .flat_map(|s| s.accepted())
        .collect();
    let known: Vec<&str> = held.iter().map(|s| s.expose()).collect();
    let container_id = match (&job.container_id, event.container_id()) {
        (Some(full), Some(short)) if full.starts_with(&short) => full.clone(),
        (_, Some(short)) => short,
        (_, None) => String::new(),
    };
    NewSecurityEvent {
        dedupe_key: event.dedupe_key.clone(),
        event: SecurityEvent {
            id: Uuid::now_v7(),
            job_id: job.id,
            container_id,
            rule: event.rule.clone(),
            priority: event.priority.to_string(),
            action: action.as_str().to_string(),
            outcome: if kill { "killed" } else { "recorded" }.to_string(),
            time: event.time,
            received_at: ctx.store.now(),
            hostname: event.hostname.clone(),
            output: redact::redact(&event.output, &known),
            output_fields: redact::redact_fields(&event.output_fields, &known),
        },
    }
}

/// Stops a job for `rule`: marks it, and if this call marked it, removes
/// its containers now and settles it; the workflow run is cancelled too
/// when its pool says so.
async fn stop_job(ctx: &Arc<Context>, job: &Job, rule: &str) -> Result<(), StoreError> {
    let reason = format!("security: {rule}");
    if !ctx.store.job_stop_for(job.id, &reason).await? {
        return Ok(());
    }
    tracing::warn!(reason = %reason, "stopping the job: its containers are removed now");
    let host = ctx.fleet.host_of(job).to_string();
    match (&job.container_id, ctx.fleet.docker(&host)) {
        (Some(worker), Ok(docker)) => {
            // The worker and every container the hook made for the job at
            // once: with container jobs the steps run in the latter.
            let hook_containers = ctx.store.job_containers(job.id).await.unwrap_or_default();
            let removals = hook_containers
                .iter()
                .filter(|c| c.removed_at.is_none())
                .map(|c| c.container_id.as_str())
                .chain(std::iter::once(worker.as_str()))
                .map(|id| crate::lifecycle::resources::remove_container(docker, id));
            futures::future::join_all(removals).await;
            crate::lifecycle::exit::handle_exit(ctx, &host, worker, None).await;
        }
        // Not started yet, or its host is unknown: the cancellation
        // reconciler ends it (after an in-flight claim finishes).
        _ => ctx.wake_reconciler(),
    }
    let cancel_run = ctx.pool_of(job).is_ok_and(|p| p.security_cancel_run);
    if cancel_run && let Ok(github) = ctx.github() {
        let github = github.clone();
        let (repository, run_id) = (job.repository.clone(), job.run_id);
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                match github.cancel_workflow_run(&repository, run_id as u64).await {
                    Ok(()) => tracing::info!("the workflow run was cancelled on GitHub"),
                    Err(e) => tracing::error!(error = %e, "cancelling the workflow run failed"),
                }
            }
            .instrument(span),
        );
    }
    Ok(())
}
