//! The workflow engine: queues jobs, hands them to runners, follows them to
//! completion, and emits what GitHub would at every transition.
//!
//! Matching follows GitHub, not wishful thinking: a queued job goes to *any*
//! online runner whose scope covers the repository and whose labels include
//! all the job's labels (case-insensitive, `self-hosted` implicit) — not
//! necessarily the runner minted "for" it. Higher `priority` first, then
//! FIFO. A job whose labels name a scale set is assigned to that scale set
//! when queued and only that scale set's runners take it.
//!
//! A runner polling the broker is *offered* the best job; it must acquire it
//! within `offer_timeout` or the job goes back to the queue (another runner's
//! later acquire of the same job then gets 409). A background sweeper handles
//! every timer: offer expiry, automatic environment approval, cancel grace,
//! and runners that stop renewing their job lock.
//!
//! Every transition emits the `workflow_job` webhook and, for scale-set jobs,
//! the scale-set messages (`JobAvailable`/`JobAssigned`, `JobStarted`,
//! `JobCompleted`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sim::Shared;
use crate::state::{Job, JobStatus, Offer, Runner, StepSpec, StepState, World, lock, now, ts};
use crate::webhooks::DeliveryFault;

/// One step of a queued job: a shell command, `{name, run}`, a run step
/// with `shell`/`env`, or a container action (`{uses: "docker://IMAGE"}`,
/// or `{uses: "./path", dockerfile: …}` for a Dockerfile action).
///
/// JSON objects are told apart by their keys: `uses` makes an
/// [`StepInput::Action`]; `run` with `shell` or `env` a
/// [`StepInput::Script`]; `run` alone a [`StepInput::Named`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StepInput {
    /// Just the command.
    Command(String),
    /// A named step.
    Named {
        /// Display name (default `Run <command>`).
        #[serde(default)]
        name: Option<String>,
        /// The command.
        run: String,
    },
    /// A run step with a shell and/or step environment.
    Script(ScriptStep),
    /// A container action step.
    Action(ActionStep),
}

impl From<&str> for StepInput {
    fn from(s: &str) -> Self {
        StepInput::Command(s.to_string())
    }
}

/// A `run:` step with `shell:` and `env:` (see [`StepInput::Script`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptStep {
    /// Display name (default `Run <first line>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The script.
    pub run: String,
    /// `shell:` (`sh`, `bash`, `python`, or a format string with `{0}`).
    /// Only steps run through the container hooks use it; steps run on the
    /// stand-in's host always use `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Step environment (`env:`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A container action step (see [`StepInput::Action`]): `uses:
/// docker://IMAGE`, or a Dockerfile action `uses: ./path` (or
/// `owner/repo[/path]@ref`) whose `Dockerfile` the simulated checkout writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionStep {
    /// Display name (default `Run <uses>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `docker://IMAGE`, `./path` or `owner/repo[/path]@ref`.
    pub uses: String,
    /// `with: args:` — the runner splits it on spaces; a list is joined
    /// with spaces first (so list items must not contain spaces).
    #[serde(
        default,
        deserialize_with = "string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// `with: entrypoint:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Step environment (`env:`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// For `uses` other than `docker://`: the action's `Dockerfile` (its
    /// content, or `true` for [`DEFAULT_DOCKERFILE`]). The simulated checkout
    /// writes it with an `action.yml` (`runs: {using: docker, image:
    /// Dockerfile}`) into the action's directory.
    #[serde(
        default,
        deserialize_with = "dockerfile_content",
        skip_serializing_if = "Option::is_none"
    )]
    pub dockerfile: Option<String>,
}

/// The Dockerfile of a Dockerfile action given as `dockerfile: true`.
pub const DEFAULT_DOCKERFILE: &str = "FROM busybox:stable\n";

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Args {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Args>::deserialize(d)? {
        None => Vec::new(),
        Some(Args::One(s)) => vec![s],
        Some(Args::Many(v)) => v,
    })
}

fn dockerfile_content<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Dockerfile {
        Flag(bool),
        Content(String),
    }
    Ok(match Option::<Dockerfile>::deserialize(d)? {
        None | Some(Dockerfile::Flag(false)) => None,
        Some(Dockerfile::Flag(true)) => Some(DEFAULT_DOCKERFILE.to_string()),
        Some(Dockerfile::Content(c)) => Some(c),
    })
}

impl<'de> Deserialize<'de> for StepInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Command(String),
            Object(serde_json::Map<String, serde_json::Value>),
        }
        let obj = match Raw::deserialize(d)? {
            Raw::Command(c) => return Ok(StepInput::Command(c)),
            Raw::Object(o) => o,
        };
        let value = serde_json::Value::Object(obj.clone());
        if obj.contains_key("uses") {
            if obj.contains_key("run") {
                return Err(D::Error::custom(
                    "a step has either `run` or `uses`, not both",
                ));
            }
            return serde_json::from_value(value)
                .map(StepInput::Action)
                .map_err(D::Error::custom);
        }
        if !obj.contains_key("run") {
            return Err(D::Error::custom("a step needs `run` or `uses`"));
        }
        let step: ScriptStep = serde_json::from_value(value).map_err(D::Error::custom)?;
        Ok(if step.shell.is_none() && !obj.contains_key("env") {
            StepInput::Named {
                name: step.name,
                run: step.run,
            }
        } else {
            StepInput::Script(step)
        })
    }
}

/// Registry credentials of a container (`credentials:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password or token.
    #[serde(default)]
    pub password: String,
}

/// A job container (`container:`) or a service container (`services.<id>:`),
/// as in a workflow file: an image name, or the mapping. The job message
/// carries it in the same shape (`jobContainer`, `jobServiceContainers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerSpec {
    /// Image (`docker://` is stripped, as the runner's template converter does).
    pub image: String,
    /// `env:`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `options:` (the hook's `createOptions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// `ports:` (`"8080:80"`, `"5432"`; numbers are accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `volumes:` (`source:target[:ro]`, `target`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `credentials:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
    /// `entrypoint:` (service containers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// `command:` (service containers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl ContainerSpec {
    /// A container running `image`.
    pub fn image(image: &str) -> Self {
        ContainerSpec {
            image: image.to_string(),
            ..Default::default()
        }
    }
}

impl<'de> Deserialize<'de> for ContainerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Port {
            Text(String),
            Number(u64),
        }
        #[derive(Deserialize)]
        struct Mapping {
            image: String,
            #[serde(default)]
            env: BTreeMap<String, String>,
            #[serde(default)]
            options: Option<String>,
            #[serde(default)]
            ports: Vec<Port>,
            #[serde(default)]
            volumes: Vec<String>,
            #[serde(default)]
            credentials: Option<RegistryCredentials>,
            #[serde(default)]
            entrypoint: Option<String>,
            #[serde(default)]
            command: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Image(String),
            Mapping(Mapping),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Image(image) => ContainerSpec::image(&image),
            Raw::Mapping(m) => ContainerSpec {
                image: m.image,
                env: m.env,
                options: m.options,
                ports: m
                    .ports
                    .into_iter()
                    .map(|p| match p {
                        Port::Text(t) => t,
                        Port::Number(n) => n.to_string(),
                    })
                    .collect(),
                volumes: m.volumes,
                credentials: m.credentials,
                entrypoint: m.entrypoint,
                command: m.command,
            },
        })
    }
}

/// Service containers (`services:`), in the order given: a JSON object
/// `{"<id>": ContainerSpec, …}` whose key order is kept (the runner hands
/// services to the hook in the workflow's order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Services(pub Vec<(String, ContainerSpec)>);

impl Services {
    /// No services.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Services {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Services {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Services;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of service id to container")
            }
            fn visit_unit<E>(self) -> Result<Services, E> {
                Ok(Services::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Services, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, ContainerSpec>()? {
                    if out.iter().any(|(n, _)| n == &k) {
                        return Err(serde::de::Error::custom(format!("duplicate service {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Services(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// What `POST /_sim/jobs` takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobSpec {
    /// `owner/name`.
    pub repository: String,
    /// `runs-on` labels.
    pub labels: Vec<String>,
    /// Steps, in order.
    pub steps: Vec<StepInput>,
    /// Workflow name (default `CI`).
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// Job name (default `build`).
    #[serde(default)]
    pub job_name: Option<String>,
    /// Put the job into this run (default: a new run).
    #[serde(default)]
    pub run_id: Option<u64>,
    /// Higher first.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Deployment environment: the job is `waiting` before it is `queued`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Branch (default `main`).
    #[serde(default)]
    pub head_branch: Option<String>,
    /// Delivery fault for all this job's webhooks.
    #[serde(default)]
    pub webhook_fault: Option<DeliveryFault>,
    /// Job container (`container:`). With it or with `services`, the job's
    /// step list starts with `Initialize containers` and ends with `Stop
    /// containers`, as on GitHub.
    #[serde(default)]
    pub container: Option<ContainerSpec>,
    /// Service containers (`services:`).
    #[serde(default)]
    pub services: Services,
    /// Whether the job message's variables carry
    /// `DistributedTask.AllowRunnerContainerHooks: true` (default `true`, as
    /// GitHub sends it); `false` leaves the variable out, so a runner does
    /// not use its container hooks for this job.
    #[serde(default)]
    pub allow_container_hooks: Option<bool>,
}

impl JobSpec {
    /// A job for `repository` with `labels` and shell `steps`.
    pub fn new(repository: &str, labels: &[&str], steps: &[&str]) -> Self {
        JobSpec {
            repository: repository.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            steps: steps.iter().map(|s| StepInput::from(*s)).collect(),
            ..Default::default()
        }
    }
}

/// Name of the step GitHub shows first for a job with containers.
pub const INITIALIZE_CONTAINERS: &str = "Initialize containers";
/// Name of the step GitHub shows last for a job with containers.
pub const STOP_CONTAINERS: &str = "Stop containers";

fn run_name(run: &str) -> String {
    format!("Run {}", run.lines().next().unwrap_or(""))
}

/// Checks a container of the spec; strips `docker://` like the runner's
/// template converter.
fn check_container(c: &ContainerSpec, what: &str, service: bool) -> Result<ContainerSpec> {
    let mut c = c.clone();
    if let Some(rest) = c.image.strip_prefix("docker://") {
        c.image = rest.to_string();
    }
    if c.image.trim().is_empty() {
        return Err(Error::validation(
            "Invalid request.",
            format!("{what}: image must not be empty"),
        ));
    }
    if !service && (c.entrypoint.is_some() || c.command.is_some()) {
        return Err(Error::validation(
            "Invalid request.",
            format!("{what}: the keys 'entrypoint' and 'command' are not allowed"),
        ));
    }
    Ok(c)
}

/// A spec step as the engine keeps it.
fn step_spec(s: &StepInput) -> Result<StepSpec> {
    Ok(match s {
        StepInput::Command(c) => StepSpec::run(run_name(c), c),
        StepInput::Named { name, run } => {
            StepSpec::run(name.clone().unwrap_or_else(|| run_name(run)), run)
        }
        StepInput::Script(sc) => StepSpec {
            shell: sc.shell.clone(),
            env: sc.env.clone(),
            ..StepSpec::run(
                sc.name.clone().unwrap_or_else(|| run_name(&sc.run)),
                &sc.run,
            )
        },
        StepInput::Action(a) => {
            let bad = |m: String| Err(Error::validation("Invalid request.", m));
            if let Some(image) = a.uses.strip_prefix("docker://") {
                if image.trim().is_empty() {
                    return bad(format!("step {:?}: docker:// needs an image", a.uses));
                }
                if a.dockerfile.is_some() {
                    return bad(format!(
                        "step {:?}: `dockerfile` is for Dockerfile actions, not docker://",
                        a.uses
                    ));
                }
            } else if a.dockerfile.is_none() {
                return bad(format!(
                    "step {:?}: only container actions run here: `uses: docker://IMAGE`, or a Dockerfile action with `dockerfile`",
                    a.uses
                ));
            } else if !(a.uses.starts_with("./") || a.uses.contains('@'))
                || a.uses.split('/').any(|p| p == "..")
            {
                return bad(format!(
                    "step {:?}: a Dockerfile action is `./path` or `owner/repo[/path]@ref`",
                    a.uses
                ));
            }
            StepSpec {
                env: a.env.clone(),
                uses: Some(a.uses.clone()),
                args: a.args.clone(),
                entrypoint: a.entrypoint.clone(),
                dockerfile: a.dockerfile.clone(),
                ..StepSpec::run(
                    a.name.clone().unwrap_or_else(|| format!("Run {}", a.uses)),
                    "",
                )
            }
        }
    })
}

/// Runner-side conclusion names (`TaskResult`) to GitHub's.
pub fn github_conclusion(result: &str) -> &'static str {
    match result.to_ascii_lowercase().as_str() {
        "succeeded" | "success" | "succeededwithissues" => "success",
        "canceled" | "cancelled" | "abandoned" => "cancelled",
        "skipped" => "skipped",
        _ => "failure",
    }
}

/// GitHub conclusion to the scale-set `result` value.
fn scale_set_result(conclusion: &str) -> &'static str {
    match conclusion {
        "success" => "succeeded",
        "cancelled" => "canceled",
        "skipped" => "skipped",
        _ => "failed",
    }
}

fn label_match(runner_labels: &[String], job_labels: &[String]) -> bool {
    job_labels.iter().all(|l| {
        l.eq_ignore_ascii_case("self-hosted")
            || runner_labels.iter().any(|r| r.eq_ignore_ascii_case(l))
    })
}

/// Whether `runner` may take `job` right now (ignoring offers).
pub(crate) fn runner_can_take(w: &World, runner: &Runner, job: &Job) -> bool {
    if job.status != JobStatus::Queued {
        return false;
    }
    match job.scale_set_id {
        Some(ss) => {
            if runner.scale_set_id != Some(ss) {
                return false;
            }
            match w.scale_sets.get(&ss) {
                Some(set) => {
                    set.flow == crate::config::ScaleSetFlow::Assigned || job.scale_set_acquired
                }
                None => false,
            }
        }
        None => {
            runner.scale_set_id.is_none()
                && runner.scope.covers(&job.owner, &job.repo)
                && label_match(&runner.labels, &job.labels)
        }
    }
}

impl Shared {
    /// Queues a job (emits `waiting` or `queued`).
    pub fn queue_job(self: &Arc<Self>, spec: JobSpec) -> Result<Job> {
        let (owner, repo) = spec
            .repository
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| {
                Error::validation("Invalid request.", "repository must be owner/name")
            })?;
        if spec.labels.is_empty() {
            return Err(Error::validation(
                "Invalid request.",
                "labels must not be empty",
            ));
        }
        if spec.steps.is_empty() {
            return Err(Error::validation(
                "Invalid request.",
                "steps must not be empty",
            ));
        }
        let mut w = lock(&self.world);
        let repo = w
            .repo(owner, repo)
            .ok_or_else(|| Error::NotFound(format!("the App is not installed on {owner}")))?;
        let steps = spec
            .steps
            .iter()
            .map(step_spec)
            .collect::<Result<Vec<StepSpec>>>()?;
        let container = spec
            .container
            .as_ref()
            .map(|c| check_container(c, "container", false))
            .transpose()?;
        let mut services = Vec::new();
        for (id, c) in &spec.services.0 {
            if id.trim().is_empty() {
                return Err(Error::validation(
                    "Invalid request.",
                    "services: a service id must not be empty",
                ));
            }
            services.push((
                id.clone(),
                check_container(c, &format!("services.{id}"), true)?,
            ));
        }
        // GitHub's step list: the runner's "Initialize containers" first and
        // "Stop containers" last when the job has containers.
        let with_containers = container.is_some() || !services.is_empty();
        let mut names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        if with_containers {
            names.insert(0, INITIALIZE_CONTAINERS.into());
            names.push(STOP_CONTAINERS.into());
        }
        let step_states = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| StepState {
                number: i as u32 + 1,
                name,
                status: "queued".into(),
                conclusion: None,
                started_at: None,
                completed_at: None,
                output: Vec::new(),
            })
            .collect();
        w.ids.job += 1;
        w.ids.seq += 1;
        w.ids.request += 1;
        let run_id = match spec.run_id {
            Some(r) => r,
            None => {
                w.ids.run += 1;
                w.ids.run
            }
        };
        let account_login = w
            .account(owner)
            .map(|a| a.login.clone())
            .unwrap_or_default();
        let waiting = spec.environment.is_some();
        let job = Job {
            id: w.ids.job,
            run_id,
            run_attempt: 1,
            owner: account_login,
            repo: repo.name.clone(),
            labels: spec.labels.clone(),
            steps,
            step_states,
            workflow_name: spec.workflow_name.clone().unwrap_or_else(|| "CI".into()),
            name: spec.job_name.clone().unwrap_or_else(|| "build".into()),
            priority: spec.priority.unwrap_or(0),
            environment: spec.environment.clone(),
            head_sha: {
                use sha1::Digest;
                hex::encode(sha1::Sha1::digest(format!("ghsim-commit-{}", w.ids.job)))
            },
            head_branch: spec.head_branch.clone().unwrap_or_else(|| "main".into()),
            status: if waiting {
                JobStatus::Waiting
            } else {
                JobStatus::Queued
            },
            conclusion: None,
            created_at: now(),
            started_at: None,
            completed_at: None,
            runner_id: None,
            runner_name: None,
            runner_group_id: None,
            runner_group_name: None,
            seq: w.ids.seq,
            runner_request_id: w.ids.request,
            offer: None,
            offers: 0,
            scale_set_id: None,
            scale_set_acquired: false,
            cancel_requested: false,
            cancel_requested_at: None,
            locked_until: None,
            approve_at: if waiting {
                self.cfg
                    .environment_auto_approve
                    .map(|d| Instant::now() + d)
            } else {
                None
            },
            plan_id: uuid::Uuid::new_v4(),
            log: Vec::new(),
            webhook_fault: spec.webhook_fault,
            container,
            services: Services(services),
            allow_container_hooks: spec.allow_container_hooks.unwrap_or(true),
        };
        let id = job.id;
        w.jobs.insert(id, job);
        if waiting {
            self.emit(&w, id, "waiting");
        } else {
            self.enter_queue(&mut w, id);
        }
        Ok(w.jobs[&id].clone())
    }

    fn emit(&self, w: &World, job_id: u64, action: &str) {
        if let Some(job) = w.jobs.get(&job_id) {
            self.emit_webhook(w, job, action);
        }
    }

    /// A job becomes `queued`: webhook, scale-set assignment, wake runners.
    fn enter_queue(&self, w: &mut World, job_id: u64) {
        if let Some(j) = w.jobs.get_mut(&job_id) {
            j.status = JobStatus::Queued;
        }
        self.emit(w, job_id, "queued");
        self.assign_to_scale_set(w, job_id);
        self.jobs_changed.notify_waiters();
    }

    /// Approves a `waiting` job (environment protection passed).
    pub fn approve_job(&self, job_id: u64) -> Result<Job> {
        let mut w = lock(&self.world);
        let job = w.jobs.get(&job_id).ok_or_else(Error::not_found)?;
        if job.status != JobStatus::Waiting {
            return Err(Error::Conflict(format!("job {job_id} is not waiting")));
        }
        self.enter_queue(&mut w, job_id);
        Ok(w.jobs[&job_id].clone())
    }

    /// Runner poll: the job offered to this runner, if any (offering the best
    /// match when it has none).
    pub(crate) fn next_offer(&self, runner_id: u64) -> Result<Option<Job>> {
        let mut w = lock(&self.world);
        let runner = w
            .runners
            .get(&runner_id)
            .cloned()
            .ok_or_else(|| Error::Broker {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "RunnerNotFound",
                message: format!("runner {runner_id} is not registered"),
            })?;
        if runner.job_id.is_some() {
            return Ok(None);
        }
        let now_i = Instant::now();
        if let Some(j) = w.jobs.values().find(|j| {
            j.status == JobStatus::Queued
                && j.offer
                    .as_ref()
                    .is_some_and(|o| o.runner_id == runner_id && o.deadline > now_i)
        }) {
            return Ok(Some(j.clone()));
        }
        let best = w
            .jobs
            .values()
            .filter(|j| {
                j.offer.as_ref().is_none_or(|o| o.deadline <= now_i)
                    && runner_can_take(&w, &runner, j)
            })
            .max_by_key(|j| (j.priority, std::cmp::Reverse(j.seq)))
            .map(|j| j.id);
        let Some(id) = best else { return Ok(None) };
        let deadline = now_i + self.cfg.offer_timeout;
        let job = w.jobs.get_mut(&id).expect("job exists");
        job.offer = Some(Offer {
            runner_id,
            deadline,
        });
        job.offers += 1;
        Ok(Some(job.clone()))
    }

    /// A runner acquires a job request (`acquirejob`).
    pub(crate) fn acquire_job(&self, runner_id: u64, request_id: u64) -> Result<Job> {
        let mut w = lock(&self.world);
        let runner = w
            .runners
            .get(&runner_id)
            .cloned()
            .ok_or_else(|| Error::Broker {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "RunnerNotFound",
                message: format!("runner {runner_id} is not registered"),
            })?;
        let job = w
            .jobs
            .values()
            .find(|j| j.runner_request_id == request_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("job request {request_id} not found")))?;
        match job.status {
            JobStatus::Completed => {
                return Err(Error::NotFound(format!(
                    "job request {request_id} is no longer available"
                )));
            }
            JobStatus::InProgress if job.runner_id == Some(runner_id) => return Ok(job),
            JobStatus::InProgress => {
                return Err(Error::Conflict(format!(
                    "job request {request_id} was acquired by another runner"
                )));
            }
            JobStatus::Waiting => {
                return Err(Error::Conflict(format!(
                    "job request {request_id} is not queued"
                )));
            }
            JobStatus::Queued => {}
        }
        if runner.job_id.is_some() {
            return Err(Error::Conflict(format!(
                "runner {} already holds a job",
                runner.name
            )));
        }
        if let Some(o) = &job.offer {
            if o.runner_id != runner_id && o.deadline > Instant::now() {
                return Err(Error::Conflict(format!(
                    "job request {request_id} is offered to another runner"
                )));
            }
        }
        if !runner_can_take(&w, &runner, &job) {
            return Err(Error::Conflict(format!(
                "job request {request_id} cannot run on runner {}",
                runner.name
            )));
        }
        let group_name = self.group_name(runner.group_id);
        let t = now();
        let lock_until = Instant::now() + self.cfg.job_lock_timeout;
        {
            let j = w.jobs.get_mut(&job.id).expect("job exists");
            j.status = JobStatus::InProgress;
            j.offer = None;
            j.started_at = Some(t);
            j.runner_id = Some(runner.id);
            j.runner_name = Some(runner.name.clone());
            j.runner_group_id = Some(runner.group_id);
            j.runner_group_name = Some(group_name);
            j.locked_until = Some(lock_until);
            if let Some(first) = j.step_states.first_mut() {
                first.status = "in_progress".into();
                first.started_at = Some(ts(t));
            }
        }
        if let Some(r) = w.runners.get_mut(&runner_id) {
            r.job_id = Some(job.id);
        }
        self.emit(&w, job.id, "in_progress");
        if let Some(ss) = job.scale_set_id {
            let mut msg = self.job_message(&w.jobs[&job.id], "JobStarted");
            msg["runnerId"] = runner.id.into();
            msg["runnerName"] = runner.name.clone().into();
            self.push_scale_set_message(&mut w, ss, msg);
        }
        self.jobs_changed.notify_waiters();
        Ok(w.jobs[&job.id].clone())
    }

    /// Looks up the job a runner holds, checking ownership.
    fn held_job<'w>(&self, w: &'w mut World, runner_id: u64, job_id: u64) -> Result<&'w mut Job> {
        let job = w.jobs.get_mut(&job_id).ok_or_else(Error::not_found)?;
        if job.runner_id != Some(runner_id) {
            return Err(Error::Conflict(format!(
                "job {job_id} is not held by this runner"
            )));
        }
        Ok(job)
    }

    /// `renewjob`: extends the lock; tells whether cancellation was requested.
    pub(crate) fn renew_job(&self, runner_id: u64, job_id: u64) -> Result<(bool, Duration)> {
        let mut w = lock(&self.world);
        let timeout = self.cfg.job_lock_timeout;
        let job = self.held_job(&mut w, runner_id, job_id)?;
        if job.status != JobStatus::InProgress {
            return Err(Error::NotFound(format!("job {job_id} is not running")));
        }
        job.locked_until = Some(Instant::now() + timeout);
        Ok((job.cancel_requested, timeout))
    }

    /// Step progress from the runner.
    pub(crate) fn update_steps(
        &self,
        runner_id: u64,
        job_id: u64,
        steps: &[crate::runner_protocol::StepUpdate],
    ) -> Result<()> {
        let mut w = lock(&self.world);
        let job = self.held_job(&mut w, runner_id, job_id)?;
        for u in steps {
            if let Some(st) = job.step_states.iter_mut().find(|s| s.number == u.number) {
                st.status = u.status.clone();
                st.conclusion = u
                    .conclusion
                    .as_deref()
                    .map(|c| github_conclusion(c).to_string());
                if u.started_at.is_some() {
                    st.started_at = u.started_at.clone();
                }
                if u.completed_at.is_some() {
                    st.completed_at = u.completed_at.clone();
                }
            }
        }
        Ok(())
    }

    /// Output lines from the runner.
    pub(crate) fn append_log(
        &self,
        runner_id: u64,
        job_id: u64,
        step: u32,
        lines: Vec<String>,
    ) -> Result<()> {
        let mut w = lock(&self.world);
        let job = self.held_job(&mut w, runner_id, job_id)?;
        if let Some(st) = job.step_states.iter_mut().find(|s| s.number == step) {
            st.output.extend(lines.iter().cloned());
        }
        job.log.extend(lines);
        Ok(())
    }

    /// `completejob`: the runner's final report.
    pub(crate) fn complete_job(
        &self,
        runner_id: u64,
        job_id: u64,
        result: &str,
        steps: &[crate::runner_protocol::StepUpdate],
    ) -> Result<()> {
        let mut w = lock(&self.world);
        {
            let job = self.held_job(&mut w, runner_id, job_id)?;
            if job.status != JobStatus::InProgress {
                return Err(Error::NotFound(format!("job {job_id} is not running")));
            }
        }
        drop(w);
        self.update_steps(runner_id, job_id, steps)?;
        let mut w = lock(&self.world);
        let cancel = w.jobs[&job_id].cancel_requested;
        let conclusion = if cancel {
            "cancelled"
        } else {
            github_conclusion(result)
        };
        self.finish_job(&mut w, job_id, conclusion);
        Ok(())
    }

    /// Ends a job: status, steps, runner release (and removal if ephemeral),
    /// `completed` webhook, `JobCompleted` message.
    fn finish_job(&self, w: &mut World, job_id: u64, conclusion: &str) {
        let t = now();
        let Some(job) = w.jobs.get_mut(&job_id) else {
            return;
        };
        if job.status == JobStatus::Completed {
            return;
        }
        let started = job.started_at.is_some();
        job.status = JobStatus::Completed;
        job.conclusion = Some(conclusion.to_string());
        job.completed_at = Some(t);
        job.offer = None;
        job.locked_until = None;
        if started {
            let mut failed_before = false;
            for st in job.step_states.iter_mut() {
                if st.status == "completed" {
                    if st.conclusion.as_deref() == Some("failure") {
                        failed_before = true;
                    }
                    continue;
                }
                let c = if st.status == "in_progress" {
                    if conclusion == "cancelled" {
                        "cancelled"
                    } else {
                        "failure"
                    }
                } else if conclusion == "cancelled" || failed_before || conclusion == "failure" {
                    "skipped"
                } else {
                    "success"
                };
                st.status = "completed".into();
                st.conclusion = Some(c.into());
                st.started_at.get_or_insert_with(|| ts(t));
                st.completed_at = Some(ts(t));
            }
        }
        let runner_id = job.runner_id;
        let ss = job.scale_set_id;
        if let Some(rid) = runner_id {
            let remove = match w.runners.get_mut(&rid) {
                Some(r) => {
                    r.job_id = None;
                    r.jobs_done += 1;
                    r.ephemeral
                }
                None => false,
            };
            if remove {
                w.runners.remove(&rid);
            }
        }
        self.emit(w, job_id, "completed");
        if let Some(ss) = ss {
            let job = &w.jobs[&job_id];
            let mut msg = self.job_message(job, "JobCompleted");
            msg["result"] = scale_set_result(conclusion).into();
            msg["runnerId"] = job.runner_id.unwrap_or(0).into();
            msg["runnerName"] = job.runner_name.clone().unwrap_or_default().into();
            self.push_scale_set_message(w, ss, msg);
        }
        self.jobs_changed.notify_waiters();
        self.job_done.notify_waiters();
    }

    /// Cancels a job: at once when nobody runs it, else asks its runner to stop.
    pub fn cancel_job(&self, job_id: u64) -> Result<Job> {
        let mut w = lock(&self.world);
        let job = w.jobs.get_mut(&job_id).ok_or_else(Error::not_found)?;
        match job.status {
            JobStatus::Completed => {}
            JobStatus::InProgress => {
                if !job.cancel_requested {
                    job.cancel_requested = true;
                    job.cancel_requested_at = Some(Instant::now());
                }
            }
            JobStatus::Queued | JobStatus::Waiting => {
                job.cancel_requested = true;
                self.finish_job(&mut w, job_id, "cancelled");
            }
        }
        Ok(w.jobs[&job_id].clone())
    }

    /// Cancels every unfinished job of a run. Err(Conflict) when all are done.
    pub fn cancel_run(&self, owner: &str, repo: &str, run_id: u64) -> Result<()> {
        let ids: Vec<(u64, bool)> = {
            let w = lock(&self.world);
            w.jobs
                .values()
                .filter(|j| {
                    j.run_id == run_id
                        && j.owner.eq_ignore_ascii_case(owner)
                        && j.repo.eq_ignore_ascii_case(repo)
                })
                .map(|j| (j.id, j.status == JobStatus::Completed))
                .collect()
        };
        if ids.is_empty() {
            return Err(Error::not_found());
        }
        if ids.iter().all(|(_, done)| *done) {
            return Err(Error::Conflict(
                "Cannot cancel a workflow run that is completed.".into(),
            ));
        }
        for (id, done) in ids {
            if !done {
                self.cancel_job(id)?;
            }
        }
        Ok(())
    }

    /// Runs every timer once; called by the sweeper task.
    pub(crate) fn sweep(&self) {
        let now_i = Instant::now();
        let mut w = lock(&self.world);
        let mut requeued = false;
        let mut approve = Vec::new();
        let mut cancel = Vec::new();
        let mut lost = Vec::new();
        for j in w.jobs.values_mut() {
            match j.status {
                JobStatus::Queued => {
                    if j.offer.as_ref().is_some_and(|o| o.deadline <= now_i) {
                        let o = j.offer.take().expect("checked");
                        j.log.push(format!(
                            "ghsim: job not acquired by runner {} within the offer timeout; requeued",
                            o.runner_id
                        ));
                        requeued = true;
                    }
                }
                JobStatus::Waiting => {
                    if j.approve_at.is_some_and(|t| t <= now_i) {
                        approve.push(j.id);
                    }
                }
                JobStatus::InProgress => {
                    // A cancelled job whose runner went silent is cancelled, not failed.
                    let grace_over = j
                        .cancel_requested_at
                        .is_some_and(|t| t + self.cfg.cancel_grace <= now_i);
                    let lock_lost = j.locked_until.is_some_and(|t| t <= now_i);
                    if j.cancel_requested && (grace_over || lock_lost) {
                        cancel.push(j.id);
                    } else if lock_lost {
                        lost.push(j.id);
                    }
                }
                JobStatus::Completed => {}
            }
        }
        for id in approve {
            self.enter_queue(&mut w, id);
        }
        for id in cancel {
            self.finish_job(&mut w, id, "cancelled");
        }
        for id in lost {
            if let Some(j) = w.jobs.get_mut(&id) {
                j.log
                    .push("ghsim: the runner stopped renewing the job lock; job failed".into());
            }
            self.finish_job(&mut w, id, "failure");
        }
        if requeued {
            self.jobs_changed.notify_waiters();
        }
    }

    /// Name of a runner group.
    pub(crate) fn group_name(&self, id: u64) -> String {
        self.cfg
            .runner_groups
            .get((id as usize).saturating_sub(1))
            .cloned()
            .unwrap_or_else(|| "Default".into())
    }
}

/// The sweeper: runs [`Shared::sweep`] every 50 ms until shutdown.
pub(crate) async fn sweeper(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tick.tick() => s.sweep(),
        }
    }
}
