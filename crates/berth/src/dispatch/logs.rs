//! Keeping each job's container output, from the first byte, capped per job.
//!
//! One capture task per running container follows its log stream and
//! appends to the job's log in the store in small batches. Docker keeps a
//! container's whole output until the container is removed, so a capture can
//! always start over from the beginning: each container's output is preceded
//! in the job log by a marker line, and a capture resumed after a restart
//! skips as many bytes as the log already holds after that marker. Nothing is
//! lost and nothing is stored twice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::Context;
use crate::docker::controller::LogOptions;

const FLUSH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_BYTES: usize = 64 * 1024;

fn marker(container_id: &str) -> String {
    let short: String = container_id.chars().take(12).collect();
    format!("--- berth: output of container {short} ---\n")
}

/// The captures running in this process: per container, its host, a token
/// cancelled once the capture has stored everything, and one that stops it
/// early (the host's lease was lost). Private to log capture; the context
/// only carries the handle.
#[derive(Default)]
pub struct Captures(std::sync::Mutex<std::collections::HashMap<String, Capture>>);

struct Capture {
    host: String,
    done: CancellationToken,
    abort: CancellationToken,
}

impl Captures {
    /// Registers a capture of `container_id`; `None` if one runs already.
    fn begin(&self, host: &str, container_id: &str) -> Option<CancellationToken> {
        let mut captures = self.0.lock().expect("log capture registry");
        if captures.contains_key(container_id) {
            return None;
        }
        let abort = CancellationToken::new();
        captures.insert(
            container_id.to_string(),
            Capture {
                host: host.to_string(),
                done: CancellationToken::new(),
                abort: abort.clone(),
            },
        );
        Some(abort)
    }

    fn end(&self, container_id: &str) {
        if let Some(capture) = self
            .0
            .lock()
            .expect("log capture registry")
            .remove(container_id)
        {
            capture.done.cancel();
        }
    }

    fn running(&self, container_id: &str) -> Option<CancellationToken> {
        self.0
            .lock()
            .expect("log capture registry")
            .get(container_id)
            .map(|c| c.done.clone())
    }
}

/// Starts capturing `container_id`'s output (on `host`) into `job_id`'s
/// log, if this replica owns the host (crate::fleet) and no capture of it
/// runs in this process yet.
pub fn spawn_capture(ctx: &Arc<Context>, host: &str, job_id: Uuid, container_id: &str) {
    if !ctx.fleet.owns(host) {
        return;
    }
    let Some(abort) = ctx.log_captures.begin(host, container_id) else {
        return;
    };
    let ctx = ctx.clone();
    let (host, container_id) = (host.to_string(), container_id.to_string());
    tokio::spawn(async move {
        tokio::select! {
            result = capture(&ctx, &host, job_id, &container_id) => {
                if let Err(e) = result {
                    tracing::warn!(container_id, error = %e, "capturing worker output stopped");
                }
            }
            _ = abort.cancelled() => {}
        }
        ctx.log_captures.end(&container_id);
    });
}

/// Stops every capture of `host`'s workers (this replica no longer owns the
/// host; the new owner resumes them where the log ends).
pub fn stop_captures_on(ctx: &Context, host: &str) {
    let captures = ctx.log_captures.0.lock().expect("log capture registry");
    for capture in captures.values().filter(|c| c.host == host) {
        capture.abort.cancel();
    }
}

/// Waits (at most `limit`) for the capture of `container_id` to have stored
/// everything the container wrote.
pub async fn wait_captured(ctx: &Context, container_id: &str, limit: Duration) {
    if let Some(done) = ctx.log_captures.running(container_id) {
        let _ = tokio::time::timeout(limit, done.cancelled()).await;
    }
}

/// Appends to a job's log as the owner of `host` (see
/// crate::store::Store::job_logs_append_as_host_owner).
async fn append(
    ctx: &Context,
    host: &str,
    job_id: Uuid,
    bytes: &[u8],
    cap: u64,
) -> Result<(), String> {
    match ctx
        .store
        .job_logs_append_as_host_owner(job_id, bytes, cap, host, &ctx.replica_id)
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "this replica no longer holds the lease of host `{host}`"
        )),
        Err(e) => Err(e.to_string()),
    }
}

async fn capture(
    ctx: &Context,
    host: &str,
    job_id: Uuid,
    container_id: &str,
) -> Result<(), String> {
    let cap = ctx.config.logs.job_log_cap_bytes;
    let marker = marker(container_id);
    let stored = ctx
        .store
        .job_logs_get(job_id)
        .await
        .map_err(|e| e.to_string())?
        .map(|l| l.content)
        .unwrap_or_default();
    let mut skip = match find(&stored, marker.as_bytes()) {
        Some(at) => stored.len() - (at + marker.len()),
        None => {
            append(ctx, host, job_id, marker.as_bytes(), cap).await?;
            0
        }
    };
    let docker = ctx.fleet.docker(host).map_err(|e| e.to_string())?;
    let mut stream = docker.logs(container_id, LogOptions::follow());
    let mut pending: Vec<u8> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(bytes)) => {
                    let mut chunk: &[u8] = &bytes;
                    if skip > 0 {
                        let n = skip.min(chunk.len());
                        skip -= n;
                        chunk = &chunk[n..];
                    }
                    pending.extend_from_slice(chunk);
                    if pending.len() >= FLUSH_BYTES {
                        flush(ctx, host, job_id, container_id, &mut pending, &mut partial, cap).await?;
                    }
                }
                Some(Err(e)) => {
                    flush(ctx, host, job_id, container_id, &mut pending, &mut partial, cap).await?;
                    return Err(e.to_string());
                }
                None => break,
            },
            _ = tick.tick() => flush(ctx, host, job_id, container_id, &mut pending, &mut partial, cap).await?,
        }
    }
    flush(
        ctx,
        host,
        job_id,
        container_id,
        &mut pending,
        &mut partial,
        cap,
    )
    .await
}

/// Appends to the log of the job that owns the container now (GitHub may
/// have rebound the runner to another job since the capture started).
async fn flush(
    ctx: &Context,
    host: &str,
    job_id: Uuid,
    container_id: &str,
    pending: &mut Vec<u8>,
    partial: &mut Vec<u8>,
    cap: u64,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let owner = ctx
        .store
        .job_get_by_container_id(container_id)
        .await
        .ok()
        .flatten();
    let owner_id = owner.as_ref().map_or(job_id, |j| j.id);
    append(ctx, host, owner_id, pending, cap).await?;
    if let (Some(sink), Some(job)) = (&ctx.job_output, &owner) {
        forward(sink, job, container_id, pending, partial);
    }
    pending.clear();
    Ok(())
}

/// Writes each complete line of worker output as one JSON object with the
/// job's correlation fields, for Loki, Fluentd or any log shipper that
/// tails a file. A line cut by a flush waits in `partial` for its end.
fn forward(
    sink: &std::sync::Mutex<std::fs::File>,
    job: &crate::store::Job,
    container_id: &str,
    bytes: &[u8],
    partial: &mut Vec<u8>,
) {
    use std::io::Write;
    partial.extend_from_slice(bytes);
    let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    let complete: Vec<u8> = partial.drain(..=end).collect();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut out = Vec::new();
    for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let record = serde_json::json!({
            "timestamp": now,
            "stream": "job_output",
            "berth_job_id": job.id,
            "repository": job.repository,
            "workflow": job.workflow,
            "run_id": job.run_id,
            "job_id": job.github_job_id,
            "pool": job.pool,
            "runner_name": job.runner_name,
            "container_id": container_id,
            "line": String::from_utf8_lossy(line),
        });
        let _ = serde_json::to_writer(&mut out, &record);
        out.push(b'\n');
    }
    if let Ok(mut file) = sink.lock() {
        let _ = file.write_all(&out);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}
