//! `berth hook`: the runner's container hook, run in the worker.
//!
//! The runner starts the hook script (`/home/runner/berth-hook.sh`, which
//! execs `berth hook`) with the hook input on stdin. This sends it to
//! `$BERTH_HOOK_URL/v1/hook/<command>` with the job's credential
//! (`$BERTH_HOOK_TOKEN`, put into the runner's environment by the worker's
//! entrypoint from stdin, never into the container's configuration), copies
//! the answer's output to stdout and stderr as it comes (the runner shows it
//! in the step's log), writes `prepare_job`'s response to the runner's
//! response file, and exits with the step's exit code. Any failure exits 1
//! with a message naming what went wrong.

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;

use super::protocol::{Event, HookInput};

/// The environment variables the hook reads.
pub const URL_ENV: &str = "BERTH_HOOK_URL";
pub const TOKEN_ENV: &str = "BERTH_HOOK_TOKEN";

/// Runs one hook command; returns the process's exit code.
pub async fn run() -> i32 {
    match run_inner().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("berth hook: {message}");
            1
        }
    }
}

fn exit_code(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(1)
}

async fn run_inner() -> Result<i32, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the hook input from stdin: {e}"))?;
    let parsed: HookInput = serde_json::from_str(&input)
        .map_err(|e| format!("the hook input on stdin is not the runner's JSON: {e}"))?;
    let url = std::env::var(URL_ENV)
        .map_err(|_| format!("{URL_ENV} is not set (this worker's pool has no container_jobs, or server.worker_url is missing)"))?;
    let token = std::env::var(TOKEN_ENV).map_err(|_| {
        format!("{TOKEN_ENV} is not set (berth hands it to the worker on stdin at start; see docs/worker-image.md)")
    })?;
    let endpoint = format!("{}/v1/hook/{}", url.trim_end_matches('/'), parsed.command);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    // A Dockerfile action: berth builds its image from the action's folder
    // first, and the step then runs that image.
    if parsed.command == "run_container_step"
        && let Some(dockerfile) = parsed.args["dockerfile"].as_str()
        && parsed.args["image"].is_null()
    {
        let image = build(&client, &url, token.trim(), dockerfile).await?;
        let mut rewritten = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
        rewritten["args"]["image"] = serde_json::Value::String(image);
        input = rewritten.to_string();
    }
    let request = client
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(input);
    let what = parsed.command.clone();
    let response_file = parsed.response_file.clone();
    let done = events(request, token.trim(), &url, &what).await?;
    if let (Some(response), Some(path)) = (&done.response, &response_file) {
        let json = serde_json::to_vec(response).map_err(|e| e.to_string())?;
        std::fs::write(path, json)
            .map_err(|e| format!("cannot write the response file {path}: {e}"))?;
    }
    Ok(exit_code(done.exit_code))
}

/// How a command ended.
struct Done {
    exit_code: i64,
    response: Option<serde_json::Value>,
}

/// Sends `request` with the credential and follows berth's answer: output
/// to stdout and stderr as it comes, until `done` (returned) or `error`.
async fn events(
    request: reqwest::RequestBuilder,
    token: &str,
    url: &str,
    what: &str,
) -> Result<Done, String> {
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach berth at {url}: {e}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(format!("berth refused {what} ({status}): {message}"));
    }
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("the connection to berth broke: {e}"))?;
        pending.extend_from_slice(&chunk);
        while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            if let Some(done) = handle(&line)? {
                return Ok(done);
            }
        }
    }
    Err(format!("berth's answer to {what} ended before it finished"))
}

/// Sends the folder of `dockerfile` (a path in the worker) to berth as a
/// build context and returns the ID of the image berth built.
async fn build(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    dockerfile: &str,
) -> Result<String, String> {
    let path = std::path::Path::new(dockerfile);
    let folder = path
        .parent()
        .ok_or_else(|| format!("`{dockerfile}` has no folder"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("`{dockerfile}` is not a file name"))?;
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(false);
    archive
        .append_dir_all(".", folder)
        .map_err(|e| format!("cannot pack the action's folder {}: {e}", folder.display()))?;
    let context = archive
        .into_inner()
        .map_err(|e| format!("cannot pack the action's folder: {e}"))?;
    let request = client
        .post(format!("{}/v1/hook/build", url.trim_end_matches('/')))
        .query(&[("dockerfile", name)])
        .header("content-type", "application/x-tar")
        .body(context);
    let done = events(request, token, url, "the build").await?;
    done.response
        .and_then(|r| r["image"].as_str().map(str::to_owned))
        .ok_or_else(|| "berth's build answer names no image".to_owned())
}

/// Handles one answer line; `Some` once the command ended.
fn handle(line: &[u8]) -> Result<Option<Done>, String> {
    let text = std::str::from_utf8(line).unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let event: Event =
        serde_json::from_str(text).map_err(|e| format!("berth sent an unreadable line: {e}"))?;
    match event {
        Event::Output { stream, text } => {
            let written = if stream == "stderr" {
                let mut err = std::io::stderr();
                err.write_all(text.as_bytes()).and_then(|_| err.flush())
            } else {
                let mut out = std::io::stdout();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            };
            written.map_err(|e| format!("cannot write the output: {e}"))?;
            Ok(None)
        }
        Event::Done {
            exit_code,
            response,
        } => Ok(Some(Done {
            exit_code,
            response,
        })),
        Event::Error { message } => Err(message),
    }
}
