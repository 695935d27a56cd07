//! `workflow_job` webhooks: payloads, signatures, delivery, delivery faults.
//!
//! GitHub delivers each event once, with no ordering guarantee, sometimes
//! twice and sometimes never; berth must cope. So every event goes through
//! one delivery worker that can, on request, deliver an event twice
//! (`duplicate`), hold it back until the job's next event has gone out
//! (`reorder`), or not send it at all (`drop`), per job or globally. Every
//! attempt is recorded (GUID, action, job, status) for the control API, and a
//! redelivery re-sends the same body with the same `X-GitHub-Delivery`.
//!
//! The attempts GitHub made (delivered or failed, not `drop`ped or sent
//! nowhere) are also the App's delivery log, as GitHub keeps it: listed
//! newest first by `GET /app/hook/deliveries`, each redeliverable by `POST
//! /app/hook/deliveries/{id}/attempts` (crate::rest). GitHub never retries a
//! failed delivery by itself, and neither does the simulator.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::AccountKind;
use crate::objects;
use crate::sim::Shared;
use crate::state::{Delivery, Job, World, lock, now, ts};

/// `User-Agent` of deliveries.
pub const USER_AGENT: &str = "GitHub-Hookshot/ghsim01";

/// What to do to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFault {
    /// Deliver twice (same GUID).
    Duplicate,
    /// Hold back; deliver after the job's next delivery (or after a short hold).
    Reorder,
    /// Do not deliver.
    Drop,
}

/// A delivery fault rule: applies to matching deliveries while `remaining` lasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookFaultRule {
    /// What to do.
    pub mode: DeliveryFault,
    /// Only this job's deliveries.
    #[serde(default)]
    pub job_id: Option<u64>,
    /// Only this action (`queued`, `in_progress`, …).
    #[serde(default)]
    pub action: Option<String>,
    /// Only this many deliveries (then the rule is spent).
    #[serde(default)]
    pub count: Option<u32>,
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn sign_sha256(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex>` of HMAC-SHA1(secret, body) (legacy `X-Hub-Signature`).
pub fn sign_sha1(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature-256` header in constant time.
pub fn verify_sha256(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The full `workflow_job` event payload for `action`.
pub fn payload(s: &Shared, w: &World, job: &Job, action: &str) -> Value {
    let account = w.account(&job.owner).cloned();
    let repo = w
        .repos
        .get(&format!(
            "{}/{}",
            job.owner.to_ascii_lowercase(),
            job.repo.to_ascii_lowercase()
        ))
        .cloned();
    let mut p = json!({
        "action": action,
        "workflow_job": objects::workflow_job(s, job),
        "sender": objects::sender(s),
    });
    if let (Some(a), Some(r)) = (account.as_ref(), repo.as_ref()) {
        p["repository"] = objects::repository(s, a, r);
        p["installation"] = json!({
            "id": a.installation_id,
            "node_id": objects::node_id("IntegrationInstallation", a.installation_id),
        });
        if a.kind == AccountKind::Organization {
            p["organization"] = objects::organization(s, a);
        }
    }
    p
}

/// A delivery on its way to the worker.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub guid: String,
    pub job_id: u64,
    pub action: String,
    pub body: String,
    pub fault: Option<DeliveryFault>,
    pub redelivery: bool,
}

impl Shared {
    /// Builds, and queues for delivery, the `action` event of `job`.
    pub(crate) fn emit_webhook(&self, w: &World, job: &Job, action: &str) {
        let body = payload(self, w, job, action).to_string();
        let fault = self.take_delivery_fault(job, action);
        let _ = self.webhook_tx.send(Outgoing {
            guid: uuid::Uuid::new_v4().to_string(),
            job_id: job.id,
            action: action.to_string(),
            body,
            fault,
            redelivery: false,
        });
    }

    fn take_delivery_fault(&self, job: &Job, action: &str) -> Option<DeliveryFault> {
        if let Some(f) = job.webhook_fault {
            return Some(f);
        }
        let mut rules = lock(&self.webhook_faults);
        let idx = rules.iter().position(|r| {
            r.job_id.is_none_or(|j| j == job.id)
                && r.action.as_deref().is_none_or(|a| a == action)
                && r.count != Some(0)
        })?;
        let mode = rules[idx].mode;
        if let Some(c) = rules[idx].count.as_mut() {
            *c -= 1;
            if *c == 0 {
                rules.remove(idx);
            }
        }
        Some(mode)
    }

    /// Re-sends the delivery of the App's delivery log with id `id` (an
    /// attempt GitHub made), as GitHub's `POST /app/hook/deliveries/{id}/attempts`
    /// does: a new attempt, same GUID and body, `redelivery: true`.
    pub(crate) fn redeliver_logged(&self, id: u64) -> Option<()> {
        let guid = {
            let w = lock(&self.world);
            let d = w.deliveries.iter().find(|d| d.seq == id && d.attempted())?;
            d.guid.clone()
        };
        self.redeliver(&guid)
    }

    /// Re-sends a recorded delivery with the same GUID and body.
    pub(crate) fn redeliver(&self, guid: &str) -> Option<()> {
        let w = lock(&self.world);
        let d = w.deliveries.iter().find(|d| d.guid == guid)?;
        let _ = self.webhook_tx.send(Outgoing {
            guid: d.guid.clone(),
            job_id: d.job_id,
            action: d.action.clone(),
            body: d.payload.clone(),
            fault: None,
            redelivery: true,
        });
        Some(())
    }
}

/// The delivery worker: one at a time, in order, faults applied.
pub(crate) async fn delivery_worker(
    s: std::sync::Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let client = reqwest::Client::builder()
        .timeout(s.cfg.webhook_timeout)
        .no_proxy()
        .build()
        .unwrap_or_default();
    let mut held: Vec<(Outgoing, Instant)> = Vec::new();
    loop {
        let next_release = held.iter().map(|(_, t)| *t).min();
        let sleep = async {
            match next_release {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            msg = rx.recv() => {
                let Some(o) = msg else { return };
                match o.fault {
                    Some(DeliveryFault::Drop) => {
                        record(&s, &o, Attempt::not_sent("dropped", None), false)
                    }
                    Some(DeliveryFault::Reorder) => {
                        held.push((o, Instant::now() + s.cfg.reorder_hold));
                        continue;
                    }
                    Some(DeliveryFault::Duplicate) => {
                        send(&s, &client, &o, false).await;
                        send(&s, &client, &o, true).await;
                    }
                    None => send(&s, &client, &o, false).await,
                }
                // Anything held back for this job now goes out, after its successor.
                let (release, keep): (Vec<_>, Vec<_>) =
                    held.into_iter().partition(|(h, _)| h.job_id == o.job_id);
                held = keep;
                for (h, _) in release {
                    send(&s, &client, &h, false).await;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                let (release, keep): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, t)| *t <= now);
                held = keep;
                for (h, _) in release {
                    send(&s, &client, &h, false).await;
                }
            }
        }
    }
}

async fn send(s: &Shared, client: &reqwest::Client, o: &Outgoing, duplicate: bool) {
    let target = lock(&s.webhook_target).clone();
    let Some(target) = target else {
        let why = Some("no webhook target configured".into());
        record(s, o, Attempt::not_sent("no_target", why), duplicate);
        return;
    };
    let body = o.body.as_bytes();
    let mut req = client
        .post(&target.url)
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", &o.guid)
        .header("X-GitHub-Hook-ID", s.cfg.hook_id.to_string())
        .header("X-GitHub-Hook-Installation-Target-Type", "integration")
        .header(
            "X-GitHub-Hook-Installation-Target-ID",
            s.cfg.app_id.to_string(),
        )
        .header("User-Agent", USER_AGENT)
        .header("Content-Type", "application/json");
    if let Some(secret) = target.secret.as_deref() {
        req = req
            .header("X-Hub-Signature-256", sign_sha256(secret, body))
            .header("X-Hub-Signature", sign_sha1(secret, body));
    }
    let started = Instant::now();
    match req.body(o.body.clone()).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            let outcome = if (200..300).contains(&status) {
                "delivered"
            } else {
                "failed"
            };
            let attempt = Attempt {
                status: Some(status),
                error: None,
                outcome,
                status_text: status_text(status),
                duration: started.elapsed(),
            };
            record(s, o, attempt, duplicate);
        }
        Err(e) => {
            let attempt = Attempt {
                status: None,
                status_text: transport_status_text(&e),
                error: Some(e.to_string()),
                outcome: "failed",
                duration: started.elapsed(),
            };
            record(s, o, attempt, duplicate);
        }
    }
}

/// GitHub's `status` text for an answered delivery.
fn status_text(code: u16) -> String {
    if (200..300).contains(&code) {
        "OK".into()
    } else {
        format!("Invalid HTTP Response: {code}")
    }
}

/// GitHub's `status` text for a delivery that got no answer.
fn transport_status_text(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else {
        "failed to connect to host".into()
    }
}

/// How one attempt went.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    outcome: &'static str,
    status_text: String,
    duration: Duration,
}

impl Attempt {
    /// An attempt never sent (`dropped`, `no_target`).
    fn not_sent(outcome: &'static str, why: Option<String>) -> Self {
        Attempt {
            status: None,
            error: why,
            outcome,
            status_text: String::new(),
            duration: Duration::ZERO,
        }
    }
}

fn record(s: &Shared, o: &Outgoing, attempt: Attempt, duplicate: bool) {
    // The log names the installation and repository of the event.
    let body: Value = serde_json::from_str(&o.body).unwrap_or(Value::Null);
    let installation_id = body["installation"]["id"].as_u64();
    let repository_id = body["repository"]["id"].as_u64();
    let mut w = lock(&s.world);
    w.ids.delivery += 1;
    let seq = w.ids.delivery;
    w.deliveries.push(Delivery {
        guid: o.guid.clone(),
        seq,
        event: "workflow_job".into(),
        action: o.action.clone(),
        job_id: o.job_id,
        status: attempt.status,
        error: attempt.error,
        outcome: attempt.outcome.into(),
        redelivery: o.redelivery,
        duplicate,
        delivered_at: ts(now()),
        payload: o.body.clone(),
        status_text: attempt.status_text,
        duration: attempt.duration.as_secs_f64(),
        installation_id,
        repository_id,
    });
    drop(w);
    s.deliveries_changed.notify_waiters();
}

/// Waits (up to `timeout`) until `pred` holds for the recorded deliveries.
pub(crate) async fn wait_deliveries(
    s: &Shared,
    timeout: Duration,
    pred: impl Fn(&[Delivery]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let notified = s.deliveries_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if pred(&lock(&s.world).deliveries) {
            return true;
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            return pred(&lock(&s.world).deliveries);
        }
    }
}
