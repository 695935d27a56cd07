//! Container hooks in the runner stand-in: jobs with `container:`,
//! `services:` and container-action steps, driven through the script named
//! by `ACTIONS_RUNNER_CONTAINER_HOOKS` the way actions/runner drives it.
//!
//! The stand-in has no Docker; like a runner configured with container
//! hooks, it hands every container operation to the hook. What it sends,
//! when, and what it does with the answers follows the runner's source
//! (actions/runner; paths below `src/`):
//!
//! | here | actions/runner |
//! |---|---|
//! | [`RunnerEnv::hooks_enabled`] | `Runner.Worker/FeatureManager.cs` `IsContainerHooksEnabled`: the job variable `DistributedTask.AllowRunnerContainerHooks` parses as `true` (`bool.TryParse`) and `ACTIONS_RUNNER_CONTAINER_HOOKS` is not empty |
//! | [`HookDriver::call`] | `Runner.Worker/Container/ContainerHooks/ContainerHookManager.cs` `ExecuteHookScript`, `GetResponse`, `SaveHookState`; the hook is run like `Runner.Worker/Handlers/ScriptHandler.cs` runs a job-extension script, its shell from `Runner.Common/HostContext.cs` `GetDefaultShellForScript` |
//! | [`HookInput`], [`PrepareJobArgs`], [`ScriptStepArgs`], [`HookContainer`], [`CleanupJobArgs`] | `ContainerHooks/HookInput.cs` (serialised by `JsonUtility`: camelCase properties, dictionary keys as they are, nulls written) |
//! | [`HookResponse`], [`PrepareJobResponse`] | `ContainerHooks/HookResponse.cs` |
//! | [`job_container`], [`service_container`], [`MountVolume::parse`] | `Runner.Worker/Container/ContainerInfo.cs` and `Runner.Worker/ContainerOperationProvider.cs` `MountWellKnownDirectories` |
//! | [`script_step_args`] | `ScriptHandler.RunAsync` with a `ContainerStepHost` (`Runner.Worker/Handlers/StepHost.cs`), `ScriptHandlerHelpers.cs` |
//! | [`container_step_args`] | `Runner.Worker/Handlers/ContainerActionHandler.cs` |
//! | [`ContainerJob`] | `Runner.Worker/JobExtension.cs` (`Initialize containers` before the steps, `ValidateJobContainer`), `ContainerOperationProvider.StartContainersAsync` / `StopContainersAsync` (`Stop containers`, condition `always()`) |
//!
//! The order for a job: `prepare_job` (in the `Initialize containers`
//! step, only when the job has a job container or services), then for each
//! step `run_script_step` (a `run:` step when there is a job container; without
//! one, `run:` steps run on the host) or `run_container_step` (a `docker://`
//! or Dockerfile action), then `cleanup_job` (in `Stop containers`, also
//! after failures and cancellation). The `state` of each response is the
//! `state` of the next input.
//!
//! Before the first hook call the stand-in writes what the job's earlier
//! steps would have written on a real runner: a **simulated checkout** (it
//! stands in for `actions/checkout`) — the file [`CHECKOUT_FILE`] in the
//! workspace `_work/<repo>/<repo>`, holding `repository=`, `sha=` and `ref=`
//! lines, plus the `action.yml` and `Dockerfile` of every Dockerfile action —
//! and the event payload `_work/_temp/_github_workflow/event.json`.
//!
//! Where the stand-in differs from the runner (it has no Docker, no
//! expressions, no node): without hooks, `Initialize containers` and `Stop
//! containers` only log a note and `run:` steps run on the host as for a job
//! without containers, while container actions fail (the runner would use
//! Docker); a `.js` hook runs with `<root>/externals/node20/bin/node`, else
//! `node` from `PATH`; `##[debug]` lines carry the inner error the runner
//! writes only to its debug log; `cleanup_job` is not cancellable but gives
//! up after [`CLEANUP_TIMEOUT`]; the file commands `GITHUB_PATH` and
//! `GITHUB_ENV` are honoured for steps run through the hook only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::engine::{ContainerSpec, Services};
use crate::runner::{LogSender, Stop, run_process};
use crate::runner_protocol::{ALLOW_CONTAINER_HOOKS, JobRequest, JobStep, VariableValue};

/// The runner's env var naming the hook script.
pub const HOOKS_ENV: &str = "ACTIONS_RUNNER_CONTAINER_HOOKS";
/// The runner's env var that forbids jobs without a job container.
pub const REQUIRE_JOB_CONTAINER_ENV: &str = "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER";
/// The runner's message for a job without `container:` when
/// [`REQUIRE_JOB_CONTAINER_ENV`] is true (`JobExtension.ValidateJobContainer`).
pub const REQUIRE_JOB_CONTAINER_MESSAGE: &str = "Jobs without a job container are forbidden on this runner, please add a 'container:' to your job or contact your self-hosted runner administrator.";
/// The runner's message for every failed hook call.
pub const HOOK_FAILED_MESSAGE: &str = "Executing the custom container implementation failed. Please contact your self hosted runner administrator.";
/// The runner's message when `isAlpine` is missing from `prepare_job`'s
/// response for a job with a job container (`PrepareJobResponse.Validate`).
pub const IS_ALPINE_MISSING_MESSAGE: &str =
    "The property 'isAlpine' is required but was not found in the response file.";
/// .NET's `NullReferenceException` message: what the runner shows when
/// `prepare_job` without a job container leaves no response.
pub const NULL_REFERENCE_MESSAGE: &str = "Object reference not set to an instance of an object.";
/// Folder of the response files, below `_work/_temp`.
pub const RESPONSE_FOLDER: &str = "_runner_hook_responses";
/// The simulated checkout's file in the workspace.
pub const CHECKOUT_FILE: &str = ".ghsim-checkout";
/// How long `cleanup_job` may take.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- runner env

/// What the stand-in reads from its environment for containers, as the
/// runner does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerEnv {
    /// [`HOOKS_ENV`].
    pub container_hooks: Option<String>,
    /// [`REQUIRE_JOB_CONTAINER_ENV`] is `1`, `true` or `$true` (any case).
    pub require_job_container: bool,
    /// `RUNNER_TOOL_CACHE`, else `RUNNER_TOOLSDIRECTORY`, else
    /// `AGENT_TOOLSDIRECTORY` (default: `_work/_tool`).
    pub tool_cache: Option<PathBuf>,
    /// `http_proxy`, else `HTTP_PROXY`.
    pub http_proxy: Option<String>,
    /// `https_proxy`, else `HTTPS_PROXY`.
    pub https_proxy: Option<String>,
    /// `no_proxy`, else `NO_PROXY` (ignored without a proxy).
    pub no_proxy: Option<String>,
}

impl RunnerEnv {
    /// From this process's environment.
    pub fn from_process() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From a variable lookup.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let either = |a: &str, b: &str| {
            get(a)
                .filter(|v| !v.is_empty())
                .or_else(|| get(b))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        // RunnerWebProxy: an address without a scheme gets `http://`.
        let proxy = |v: Option<String>| {
            v.map(|v| {
                if v.contains("://") {
                    v
                } else {
                    format!("http://{v}")
                }
            })
        };
        let http_proxy = proxy(either("http_proxy", "HTTP_PROXY"));
        let https_proxy = proxy(either("https_proxy", "HTTPS_PROXY"));
        let no_proxy = if http_proxy.is_some() || https_proxy.is_some() {
            either("no_proxy", "NO_PROXY")
        } else {
            None
        };
        let tool_cache = [
            "RUNNER_TOOL_CACHE",
            "RUNNER_TOOLSDIRECTORY",
            "AGENT_TOOLSDIRECTORY",
        ]
        .iter()
        .find_map(|k| get(k))
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
        RunnerEnv {
            container_hooks: get(HOOKS_ENV).filter(|v| !v.is_empty()),
            require_job_container: get(REQUIRE_JOB_CONTAINER_ENV)
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "$true")),
            tool_cache,
            http_proxy,
            https_proxy,
            no_proxy,
        }
    }

    /// `FeatureManager.IsContainerHooksEnabled`: the job allows container
    /// hooks and [`HOOKS_ENV`] names a hook.
    pub fn hooks_enabled(&self, variables: &BTreeMap<String, VariableValue>) -> bool {
        self.container_hooks.is_some() && variable_is_true(variables, ALLOW_CONTAINER_HOOKS)
    }

    /// `ContainerInfo.UpdateWebProxyEnv`: proxy variables a container gets
    /// unless its own env sets them.
    fn add_proxy_env(&self, env: &mut BTreeMap<String, String>) {
        for (keys, value) in [
            (["HTTP_PROXY", "http_proxy"], &self.http_proxy),
            (["HTTPS_PROXY", "https_proxy"], &self.https_proxy),
            (["NO_PROXY", "no_proxy"], &self.no_proxy),
        ] {
            if let Some(v) = value {
                for k in keys {
                    env.entry(k.to_string()).or_insert_with(|| v.clone());
                }
            }
        }
    }
}

/// A job variable as a boolean, like the runner's `Variables.GetBoolean`
/// (names ignore case; `bool.TryParse` accepts `true`/`false` in any case,
/// with surrounding white space).
pub fn variable_is_true(variables: &BTreeMap<String, VariableValue>, name: &str) -> bool {
    variables
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .is_some_and(|(_, v)| v.value.trim().eq_ignore_ascii_case("true"))
}

// ---------------------------------------------------------------- hook input

/// `HookCommand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookCommand {
    /// Start the job container and services.
    PrepareJob,
    /// Remove them.
    CleanupJob,
    /// Run a script in the job container.
    RunScriptStep,
    /// Run a container action.
    RunContainerStep,
}

impl HookCommand {
    /// The wire name (`prepare_job`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            HookCommand::PrepareJob => "prepare_job",
            HookCommand::CleanupJob => "cleanup_job",
            HookCommand::RunScriptStep => "run_script_step",
            HookCommand::RunContainerStep => "run_container_step",
        }
    }
}

/// `HookInput`: what the hook reads on stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookInput<A> {
    /// The operation.
    pub command: HookCommand,
    /// The response file (created empty before the call).
    pub response_file: Option<String>,
    /// The operation's arguments.
    pub args: A,
    /// `state` of the last response that had one (`null` for `prepare_job`).
    pub state: Option<Map<String, Value>>,
}

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `MountVolume` (every public property is serialised, `userProvidedValue`
/// too: the volume string for user volumes, `null` for the runner's own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MountVolume {
    /// The `volumes:` entry this came from.
    pub user_provided_value: Option<String>,
    /// Host path or volume name (`null` for an anonymous volume).
    pub source_volume_path: Option<String>,
    /// Path in the container.
    pub target_volume_path: Option<String>,
    /// Read-only.
    pub read_only: bool,
}

impl MountVolume {
    /// A mount the runner adds.
    pub fn system(source: &str, target: &str, read_only: bool) -> Self {
        MountVolume {
            user_provided_value: None,
            source_volume_path: Some(source.to_string()),
            target_volume_path: Some(target.to_string()),
            read_only,
        }
    }

    /// A `volumes:` entry: `source:target:ro`, `target:ro`, `source:target`
    /// or `target` (`ContainerInfo.MountVolume.ParseVolumeString`).
    pub fn parse(volume: &str) -> Self {
        let parts: Vec<&str> = volume.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [s, t, ro] => (Some(*s), *t, ro.eq_ignore_ascii_case("ro")),
            [t, ro] if ro.eq_ignore_ascii_case("ro") => (None, *t, true),
            [s, t] => (Some(*s), *t, false),
            _ => (None, volume, false),
        };
        MountVolume {
            user_provided_value: Some(volume.to_string()),
            source_volume_path: source.map(String::from),
            target_volume_path: Some(target.to_string()),
            read_only,
        }
    }
}

/// `ContainerRegistry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerRegistry {
    /// User.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// `DockerUtil.ParseRegistryHostnameFromImageName` of the image: `""`
    /// for Docker Hub images.
    pub server_url: Option<String>,
}

/// `HookContainer` (also `ContainerStepArgs`, the `args` of
/// `run_container_step`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HookContainer {
    /// Image (`null` for a Dockerfile action).
    pub image: Option<String>,
    /// Host path of a Dockerfile action's `Dockerfile`.
    pub dockerfile: Option<String>,
    /// Arguments (split on spaces, empty ones dropped).
    #[serde(deserialize_with = "null_default")]
    pub entry_point_args: Vec<String>,
    /// Entry point. (The runner reads `entrypoint` too: Newtonsoft matches
    /// property names ignoring case.)
    #[serde(alias = "entrypoint")]
    pub entry_point: Option<String>,
    /// Working directory in the container.
    pub working_directory: Option<String>,
    /// `options:`.
    pub create_options: Option<String>,
    /// Registry credentials, when the container has `credentials:`.
    pub registry: Option<ContainerRegistry>,
    /// Environment of the container.
    #[serde(deserialize_with = "null_default")]
    pub environment_variables: BTreeMap<String, String>,
    /// `ports:`.
    #[serde(deserialize_with = "null_default")]
    pub port_mappings: Vec<String>,
    /// The runner's mounts.
    #[serde(deserialize_with = "null_default")]
    pub system_mount_volumes: Vec<MountVolume>,
    /// `volumes:`.
    #[serde(deserialize_with = "null_default")]
    pub user_mount_volumes: Vec<MountVolume>,
}

/// `PrepareJobArgs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrepareJobArgs {
    /// The job container.
    pub container: Option<HookContainer>,
    /// The service containers, in the workflow's order (their ids are not
    /// sent: see actions/runner#2783).
    #[serde(deserialize_with = "null_default")]
    pub services: Vec<HookContainer>,
}

/// `ScriptStepArgs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScriptStepArgs {
    /// Shell arguments, the script's container path last.
    #[serde(deserialize_with = "null_default")]
    pub entry_point_args: Vec<String>,
    /// The shell (`sh`, `bash`, …).
    pub entry_point: Option<String>,
    /// The step's environment, paths translated to the container's.
    #[serde(deserialize_with = "null_default")]
    pub environment_variables: BTreeMap<String, String>,
    /// `GITHUB_PATH` additions, latest first.
    #[serde(deserialize_with = "null_default")]
    pub prepend_path: Vec<String>,
    /// Working directory in the container.
    pub working_directory: Option<String>,
}

/// `CleanupJobArgs`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupJobArgs {}

// ---------------------------------------------------------------- responses

fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    // Newtonsoft turns numbers and booleans into strings for a string target.
    let m = Option::<BTreeMap<String, Value>>::deserialize(d)?;
    m.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "port {k}: expected a string, got {other}"
                        )));
                    }
                };
                Ok((k, v))
            })
            .collect()
    })
    .transpose()
}

/// `HookResponse` (every command but `prepare_job`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HookResponse {
    /// New state for the next calls.
    #[serde(alias = "State")]
    pub state: Option<Map<String, Value>>,
}

/// `ResponseContainer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResponseContainer {
    /// Container id (`job.container.id`, `job.services.<id>.id`).
    #[serde(alias = "Id")]
    pub id: Option<String>,
    /// Network.
    #[serde(alias = "Network")]
    pub network: Option<String>,
    /// Container port → host port (`job.services.<id>.ports`); required
    /// for services.
    #[serde(alias = "Ports", deserialize_with = "string_map")]
    pub ports: Option<BTreeMap<String, String>>,
}

/// `ResponseContext`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResponseContext {
    /// The job container.
    #[serde(alias = "Container")]
    pub container: Option<ResponseContainer>,
    /// The services, in the order of the input (an explicit `null` fails
    /// the runner).
    #[serde(alias = "Services")]
    pub services: Option<Vec<ResponseContainer>>,
}

impl Default for ResponseContext {
    fn default() -> Self {
        ResponseContext {
            container: None,
            services: Some(Vec::new()),
        }
    }
}

/// `PrepareJobResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrepareJobResponse {
    /// New state.
    #[serde(alias = "State")]
    pub state: Option<Map<String, Value>>,
    /// Ids, networks and ports for the `job` context.
    #[serde(alias = "Context")]
    pub context: Option<ResponseContext>,
    /// Whether the job container is Alpine (required with a job container).
    #[serde(alias = "IsAlpine")]
    pub is_alpine: Option<bool>,
}

/// A response: its new state and the validation the runner does.
pub trait Response: DeserializeOwned {
    /// `state`.
    fn state(&self) -> Option<&Map<String, Value>>;
    /// `Validate(input)`: the inner error message.
    fn validate(&self, _has_job_container: bool) -> Result<(), String> {
        Ok(())
    }
}

impl Response for HookResponse {
    fn state(&self) -> Option<&Map<String, Value>> {
        self.state.as_ref()
    }
}

impl Response for PrepareJobResponse {
    fn state(&self) -> Option<&Map<String, Value>> {
        self.state.as_ref()
    }
    fn validate(&self, has_job_container: bool) -> Result<(), String> {
        if has_job_container && self.is_alpine.is_none() {
            return Err(IS_ALPINE_MISSING_MESSAGE.into());
        }
        Ok(())
    }
}

/// What the job's containers are, from `prepare_job`'s response
/// (`ContainerHookManager.UpdateJobContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobContainers {
    /// `isAlpine` of the job container.
    pub is_alpine: Option<bool>,
    /// `job.container.id`.
    pub container_id: Option<String>,
    /// `job.container.network`.
    pub container_network: Option<String>,
    /// `job.services.<id>`: id, network, ports.
    pub services: Vec<(String, ResponseContainer)>,
}

/// Applies `prepare_job`'s response as the runner does after a successful
/// call; errors carry the exception message the runner shows.
pub fn apply_prepare_response(
    response: Option<&PrepareJobResponse>,
    has_job_container: bool,
    service_ids: &[String],
) -> Result<JobContainers, String> {
    // No response without a job container: the runner dereferences it anyway.
    let r = response.ok_or(NULL_REFERENCE_MESSAGE)?;
    let mut out = JobContainers {
        is_alpine: if has_job_container { r.is_alpine } else { None },
        ..Default::default()
    };
    let Some(ctx) = &r.context else {
        return Ok(out);
    };
    if let Some(c) = &ctx.container {
        out.container_id = c.id.clone();
        out.container_network = c.network.clone();
    }
    let services = ctx.services.as_ref().ok_or(NULL_REFERENCE_MESSAGE)?;
    for (i, s) in services.iter().enumerate() {
        let Some(id) = service_ids.get(i) else {
            return Err("Index was out of range. Must be non-negative and less than the size of the collection. (Parameter 'index')".into());
        };
        if s.ports.is_none() {
            return Err(NULL_REFERENCE_MESSAGE.into());
        }
        out.services.push((id.clone(), s.clone()));
    }
    Ok(out)
}

// ---------------------------------------------------------------- layout and paths

/// The runner's directories for one job (`HostContext.GetDirectory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Runner root.
    pub root: PathBuf,
    /// `_work` (the work folder).
    pub work: PathBuf,
    /// `_work/_temp`.
    pub temp: PathBuf,
    /// `_work/_actions`.
    pub actions: PathBuf,
    /// `_work/_tool`, or the tool cache from the environment.
    pub tools: PathBuf,
    /// `<root>/externals`.
    pub externals: PathBuf,
    /// `_work/<repo>/<repo>` (`github.workspace`).
    pub workspace: PathBuf,
}

impl Layout {
    /// The layout for `repository` (`owner/name`) in the work folder `work`.
    pub fn new(root: &Path, work: &Path, repository: &str, tool_cache: Option<&Path>) -> Layout {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let root = abs(root);
        let work = abs(work);
        let name = repository.rsplit('/').next().unwrap_or("repo");
        Layout {
            temp: work.join("_temp"),
            actions: work.join("_actions"),
            tools: tool_cache.map(abs).unwrap_or_else(|| work.join("_tool")),
            externals: root.join("externals"),
            workspace: work.join(name).join(name),
            root,
            work,
        }
    }

    /// `_work/_temp/_github_home` (`HOME` in containers).
    pub fn github_home(&self) -> PathBuf {
        self.temp.join("_github_home")
    }

    /// `_work/_temp/_github_workflow`.
    pub fn github_workflow(&self) -> PathBuf {
        self.temp.join("_github_workflow")
    }

    /// `_work/_temp/_runner_file_commands`.
    pub fn file_commands(&self) -> PathBuf {
        self.temp.join("_runner_file_commands")
    }

    /// `_work/_temp/_runner_hook_responses`.
    pub fn responses(&self) -> PathBuf {
        self.temp.join(RESPONSE_FOLDER)
    }

    /// `_work/_temp/_github_workflow/event.json` (`GITHUB_EVENT_PATH`).
    pub fn event_path(&self) -> PathBuf {
        self.github_workflow().join("event.json")
    }

    /// `_work/<repo>` (`RUNNER_WORKSPACE`).
    pub fn runner_workspace(&self) -> PathBuf {
        self.workspace.parent().unwrap_or(&self.work).to_path_buf()
    }

    /// The directory of the action `uses`: `./path` in the workspace,
    /// `owner/repo[/path]@ref` as `_work/_actions/owner/repo/ref[/path]`.
    pub fn action_dir(&self, uses: &str) -> PathBuf {
        if let Some(p) = uses.strip_prefix("./") {
            return self.workspace.join(p);
        }
        let (what, git_ref) = uses.split_once('@').unwrap_or((uses, ""));
        let mut parts = what.splitn(3, '/');
        let owner = parts.next().unwrap_or("");
        let repo = parts.next().unwrap_or("");
        let mut dir = self.actions.join(owner).join(repo).join(git_ref);
        if let Some(p) = parts.next() {
            dir = dir.join(p);
        }
        dir
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Host → container path mappings (`ContainerInfo` `_pathMappings`, first
/// match wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap(pub Vec<(String, String)>);

impl PathMap {
    /// A job container's: `_github_workflow`, `_github_home`, then `_work`
    /// → `/__w`, the tools → `/__t`, externals → `/__e`.
    pub fn job_container(l: &Layout) -> PathMap {
        PathMap(vec![
            (s(&l.github_workflow()), "/github/workflow".into()),
            (s(&l.github_home()), "/github/home".into()),
            (s(&l.work), "/__w".into()),
            (s(&l.tools), "/__t".into()),
            (s(&l.externals), "/__e".into()),
        ])
    }

    /// A container action's: the workspace, file commands, workflow, home
    /// and temp folders (nothing else is translated).
    pub fn container_action(l: &Layout) -> PathMap {
        PathMap(vec![
            (s(&l.workspace), "/github/workspace".into()),
            (s(&l.file_commands()), "/github/file_commands".into()),
            (s(&l.github_workflow()), "/github/workflow".into()),
            (s(&l.github_home()), "/github/home".into()),
            (s(&l.temp), "/github/runner_temp".into()),
        ])
    }

    /// `TranslateToContainerPath`: the path itself, or below, of the first
    /// mapping; other strings unchanged.
    pub fn to_container(&self, path: &str) -> String {
        for (host, container) in &self.0 {
            if path == host {
                return container.clone();
            }
            if let Some(rest) = path.strip_prefix(host.as_str()) {
                if rest.starts_with('/') {
                    return format!("{container}{rest}");
                }
            }
        }
        path.to_string()
    }

    fn translate_env(&self, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| (k.clone(), self.to_container(v)))
            .collect()
    }
}

// ---------------------------------------------------------------- builders

/// `DockerUtil.ParseRegistryHostnameFromImageName`.
pub fn registry_of_image(image: &str) -> String {
    let parts: Vec<&str> = image.split('/').collect();
    if (parts.len() == 2 && (parts[0].contains(':') || parts[0].contains('.'))) || parts.len() > 2 {
        parts[0].to_string()
    } else {
        String::new()
    }
}

/// Fields every container from `container:`/`services:` shares
/// (`ContainerInfo(hostContext, container, …)` and `HookContainer(container)`).
fn spec_container(spec: &ContainerSpec, env: &RunnerEnv) -> HookContainer {
    let mut environment_variables = spec.env.clone();
    env.add_proxy_env(&mut environment_variables);
    let mut port_mappings: Vec<String> = Vec::new();
    for p in &spec.ports {
        if !port_mappings.contains(p) {
            port_mappings.push(p.clone());
        }
    }
    HookContainer {
        image: Some(spec.image.clone()),
        dockerfile: None,
        entry_point_args: spec
            .command
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        entry_point: spec.entrypoint.clone(),
        working_directory: None,
        create_options: spec.options.clone(),
        registry: spec
            .credentials
            .as_ref()
            .filter(|c| !c.username.is_empty())
            .map(|c| ContainerRegistry {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                server_url: Some(registry_of_image(&spec.image)),
            }),
        environment_variables,
        port_mappings,
        system_mount_volumes: Vec::new(),
        user_mount_volumes: spec.volumes.iter().map(|v| MountVolume::parse(v)).collect(),
    }
}

/// The job container as `prepare_job` gets it: the Docker socket and the
/// runner's folders mounted (`MountWellKnownDirectories`), `HOME`, working
/// directory the workspace.
pub fn job_container(spec: &ContainerSpec, l: &Layout, env: &RunnerEnv) -> HookContainer {
    let mut c = spec_container(spec, env);
    // Mounts use the paths known before home and workflow get their own mapping.
    let early = PathMap(PathMap::job_container(l).0.split_off(2));
    let map = PathMap::job_container(l);
    let mount = |p: &Path, ro: bool| MountVolume::system(&s(p), &early.to_container(&s(p)), ro);
    c.system_mount_volumes = vec![
        MountVolume::system("/var/run/docker.sock", "/var/run/docker.sock", false),
        mount(&l.work, false),
        mount(&l.externals, true),
        mount(&l.temp, false),
        mount(&l.actions, false),
        mount(&l.tools, false),
        MountVolume::system(&s(&l.github_home()), "/github/home", false),
        MountVolume::system(&s(&l.github_workflow()), "/github/workflow", false),
    ];
    c.environment_variables
        .insert("HOME".into(), map.to_container(&s(&l.github_home())));
    c.working_directory = Some(map.to_container(&s(&l.workspace)));
    c
}

/// A service container as `prepare_job` gets it.
pub fn service_container(spec: &ContainerSpec, env: &RunnerEnv) -> HookContainer {
    spec_container(spec, env)
}

/// How a `shell:` runs a script file (`ScriptHandler` with a container step
/// host, `ScriptHandlerHelpers`): the command, its argument format (`{0}` =
/// the script path) and the script file's extension.
pub fn script_shell(shell: Option<&str>) -> Result<(String, String, &'static str), String> {
    fn default_args(cmd: &str) -> &'static str {
        match cmd.to_ascii_lowercase().as_str() {
            "cmd" => "/D /E:ON /V:OFF /S /C \"CALL \"{0}\"\"",
            "pwsh" | "powershell" => "-command \". '{0}'\"",
            "bash" => "--noprofile --norc -e -o pipefail {0}",
            "sh" => "-e {0}",
            "python" => "{0}",
            _ => "",
        }
    }
    fn extension(cmd: &str) -> &'static str {
        match cmd.to_ascii_lowercase().as_str() {
            "cmd" => ".cmd",
            "pwsh" | "powershell" => ".ps1",
            "bash" | "sh" => ".sh",
            "python" => ".py",
            _ => "",
        }
    }
    let (cmd, format) = match shell.filter(|s| !s.is_empty()) {
        None => ("sh".to_string(), default_args("sh").to_string()),
        Some(shell) => {
            let (cmd, args) = shell.split_once(' ').unwrap_or((shell, ""));
            let args = args.trim_start();
            let format = if args.is_empty() {
                default_args(cmd).to_string()
            } else {
                args.to_string()
            };
            (cmd.to_string(), format)
        }
    };
    if !format.contains("{0}") {
        return Err("Invalid shell option. Shell must be a valid built-in (bash, sh, cmd, powershell, pwsh) or a format string containing '{0}'".into());
    }
    let ext = extension(&cmd);
    Ok((cmd, format, ext))
}

/// `ScriptHandlerHelpers.FixUpScriptContents`.
pub fn fix_up_script(shell_command: &str, contents: &str) -> String {
    match shell_command {
        "cmd" => format!("@echo off\n{contents}"),
        "pwsh" | "powershell" => format!(
            "$ErrorActionPreference = 'stop'\n{contents}\nif ((Test-Path -LiteralPath variable:\\LASTEXITCODE)) {{ exit $LASTEXITCODE }}"
        ),
        _ => contents.to_string(),
    }
}

/// The `args` of `run_script_step` for a script written to `script_file`
/// (host path, below `_work/_temp`), run by `shell_command` with
/// `arg_format`; `env` holds host paths; `prepend_path` in the order added.
pub fn script_step_args(
    l: &Layout,
    shell_command: &str,
    arg_format: &str,
    script_file: &Path,
    env: &BTreeMap<String, String>,
    prepend_path: &[String],
) -> ScriptStepArgs {
    let map = PathMap::job_container(l);
    let resolved = map.to_container(&s(script_file)).replace('"', "\\\"");
    let arguments = arg_format.replace("{0}", &resolved);
    ScriptStepArgs {
        // The runner splits the argument string on spaces, keeping empty ones.
        entry_point_args: arguments.split(' ').map(|a| a.trim().to_string()).collect(),
        entry_point: Some(shell_command.to_string()),
        environment_variables: map.translate_env(env),
        prepend_path: prepend_path.iter().rev().cloned().collect(),
        working_directory: Some(map.to_container(&s(&l.workspace))),
    }
}

/// The container action of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionImage {
    /// `docker://IMAGE` (the image without the prefix).
    Registry(String),
    /// A Dockerfile action: the host path of its `Dockerfile`.
    Dockerfile(PathBuf),
}

/// The `args` of `run_container_step`: `entrypoint` and `args` are the
/// step's `with:` values, `env` its environment with host paths.
pub fn container_step_args(
    l: &Layout,
    image: &ActionImage,
    entrypoint: Option<&str>,
    args: Option<&str>,
    env: &BTreeMap<String, String>,
    runner_env: &RunnerEnv,
) -> HookContainer {
    let map = PathMap::container_action(l);
    let mut environment_variables = BTreeMap::new();
    runner_env.add_proxy_env(&mut environment_variables);
    environment_variables.extend(map.translate_env(env));
    let (image, dockerfile) = match image {
        ActionImage::Registry(i) => (Some(i.clone()), None),
        ActionImage::Dockerfile(p) => (None, Some(s(p))),
    };
    HookContainer {
        image,
        dockerfile,
        entry_point_args: args
            .unwrap_or("")
            .split(' ')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        entry_point: entrypoint.map(String::from),
        working_directory: Some("/github/workspace".into()),
        create_options: None,
        registry: None,
        environment_variables,
        port_mappings: Vec::new(),
        system_mount_volumes: vec![
            MountVolume::system("/var/run/docker.sock", "/var/run/docker.sock", false),
            MountVolume::system(&s(&l.temp), "/github/runner_temp", false),
            MountVolume::system(&s(&l.github_home()), "/github/home", false),
            MountVolume::system(&s(&l.github_workflow()), "/github/workflow", false),
            MountVolume::system(&s(&l.file_commands()), "/github/file_commands", false),
            MountVolume::system(&s(&l.workspace), "/github/workspace", false),
        ],
        user_mount_volumes: Vec::new(),
    }
}

// ---------------------------------------------------------------- the driver

/// A failed hook operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookError {
    /// It failed: `message` is the runner's error (an `##[error]` line),
    /// `detail` its inner exception (a `##[debug]` line; may be empty).
    Failed {
        /// What the runner shows.
        message: String,
        /// The inner error.
        detail: String,
    },
    /// The job was cancelled while the hook ran (it was killed).
    Cancelled,
}

impl HookError {
    fn failed(detail: impl Into<String>) -> Self {
        HookError::Failed {
            message: HOOK_FAILED_MESSAGE.into(),
            detail: detail.into(),
        }
    }

    /// Writes the error to the step's log.
    pub fn log(&self, number: u32, log: &LogSender) {
        if let HookError::Failed { message, detail } = self {
            let _ = log.send((number, format!("##[error]{message}")));
            if !detail.is_empty() {
                let _ = log.send((number, format!("##[debug]{detail}")));
            }
        }
    }
}

/// `which`: an executable file named `cmd` in `prepend` then `PATH`.
fn which(cmd: &str, prepend: &[String]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").unwrap_or_default();
    prepend
        .iter()
        .rev()
        .map(String::as_str)
        .chain(path.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs the hook script for one operation at a time, keeping the state.
#[derive(Debug, Clone)]
pub struct HookDriver {
    /// The hook (`ACTIONS_RUNNER_CONTAINER_HOOKS`).
    pub hook: String,
    /// The job's folders.
    pub layout: Layout,
    /// `ContainerHookState`: the last `state` a response carried.
    pub state: Option<Map<String, Value>>,
    /// `GITHUB_PATH` additions, in the order added.
    pub prepend_path: Vec<String>,
    /// Environment of the hook process on top of the stand-in's own.
    pub env: BTreeMap<String, String>,
}

impl HookDriver {
    /// A driver for `hook` with nothing kept yet.
    pub fn new(hook: &str, layout: Layout) -> Self {
        HookDriver {
            hook: hook.to_string(),
            layout,
            state: None,
            prepend_path: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// `ValidateHookExecutable` and `GetDefaultShellForScript`: the program
    /// and arguments that run the hook, and the `shell:` line the runner logs.
    fn command_line(&self) -> Result<(PathBuf, Vec<String>, String), String> {
        let hook = &self.hook;
        if !Path::new(hook).is_file() {
            return Err(format!(
                "File not found at '{hook}'. Set {HOOKS_ENV} to the path of an existing file."
            ));
        }
        if ![".js", ".sh", ".ps1"].iter().any(|e| hook.ends_with(e)) {
            return Err(format!(
                "Invalid file extension at '{hook}'. {HOOKS_ENV} must be a path to a file with one of the following extensions: .js, .sh, .ps1"
            ));
        }
        let found = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| which(n, &self.prepend_path))
                .ok_or_else(|| format!("{}: command not found", names[names.len() - 1]))
        };
        if hook.ends_with(".sh") {
            let shell = found(&["bash", "sh"])?;
            let line = format!("shell: {} -e {{0}}", shell.display());
            Ok((shell, vec!["-e".into(), hook.clone()], line))
        } else if hook.ends_with(".ps1") {
            let shell = found(&["pwsh", "powershell"])?;
            let line = format!("shell: {} -command \". '{{0}}'\"", shell.display());
            Ok((shell, vec!["-command".into(), format!(". '{hook}'")], line))
        } else {
            let bundled = self.layout.externals.join("node20/bin/node");
            let node = if bundled.is_file() {
                bundled
            } else {
                found(&["node"])?
            };
            let line = format!("shell: {} {{0}}", node.display());
            Ok((node, vec![hook.clone()], line))
        }
    }

    /// One hook call (`ExecuteHookScript` + `GetResponse` + `SaveHookState`):
    /// creates the empty response file, runs the hook with the input on
    /// stdin and its output in step `number`'s log, reads and deletes the
    /// response, validates it and keeps its `state`. `require` is
    /// `IsRequireAlpineInResponse` (`prepare_job` with a job container). A
    /// failed call leaves its response file in place, as the runner does.
    pub async fn call<A: Serialize, R: Response>(
        &mut self,
        command: HookCommand,
        args: &A,
        require: bool,
        number: u32,
        log: &LogSender,
        cancel: Option<watch::Receiver<bool>>,
    ) -> Result<Option<R>, HookError> {
        let (program, argv, shell_line) = self.command_line().map_err(HookError::failed)?;
        let response_file = self
            .layout
            .responses()
            .join(format!("{}.json", Uuid::new_v4()));
        let input = HookInput {
            command,
            response_file: Some(s(&response_file)),
            args,
            // prepare_job's input never carries a state.
            state: if command == HookCommand::PrepareJob {
                None
            } else {
                self.state.clone()
            },
        };
        let mut stdin = serde_json::to_vec(&input).map_err(|e| HookError::failed(e.to_string()))?;
        stdin.push(b'\n');
        let _ = log.send((number, format!("##[group]Run '{}'", self.hook)));
        let _ = log.send((number, shell_line));
        let _ = log.send((number, "##[endgroup]".into()));
        std::fs::create_dir_all(self.layout.responses())
            .and_then(|_| std::fs::write(&response_file, b""))
            .map_err(|e| HookError::failed(format!("{}: {e}", response_file.display())))?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&argv)
            .current_dir(&self.layout.workspace)
            .env_remove(crate::runner::JIT_ENV)
            .envs(&self.env);
        if !self.prepend_path.is_empty() {
            let mut path: Vec<String> = self.prepend_path.iter().rev().cloned().collect();
            path.extend(std::env::var("PATH").ok());
            cmd.env("PATH", path.join(":"));
        }
        let code = match run_process(cmd, Some(stdin), number, log, cancel).await {
            Err(e) => return Err(HookError::failed(format!("{}: {e}", program.display()))),
            Ok(Err(Stop::Cancelled)) => return Err(HookError::Cancelled),
            Ok(Ok(code)) => code,
        };
        let what = format!(
            "the hook script at '{}' running command '{}'",
            self.hook,
            command.as_str()
        );
        if code != 0 {
            let _ = log.send((
                number,
                format!("##[error]Process completed with exit code {code}."),
            ));
            return Err(HookError::failed(format!(
                "The hook script at '{}' running command '{}' did not execute successfully",
                self.hook,
                command.as_str()
            )));
        }
        // GetResponse.
        let text = match std::fs::read_to_string(&response_file) {
            Ok(t) => t,
            Err(_) if require => {
                return Err(HookError::failed(format!(
                    "Response file is required but not found for {what}"
                )));
            }
            Err(_) => return Ok(None),
        };
        let response: Option<R> = if text.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).map_err(|e| {
                HookError::failed(format!("Response file for {what} is not valid: {e}"))
            })?)
        };
        let _ = std::fs::remove_file(&response_file);
        let Some(response) = response else {
            if require {
                return Err(HookError::failed(format!(
                    "Response file could not be read at '{}' running command '{}'",
                    self.hook,
                    command.as_str()
                )));
            }
            return Ok(None);
        };
        response.validate(require).map_err(HookError::failed)?;
        if let Some(state) = response.state() {
            self.state = Some(state.clone());
        }
        Ok(Some(response))
    }
}

// ---------------------------------------------------------------- a job with containers

/// How a unit of the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    /// Success.
    Succeeded,
    /// Failure (already logged).
    Failed,
    /// Cancelled while running.
    Cancelled,
}

/// Whether the job has a job container or services (then the runner adds
/// `Initialize containers` and `Stop containers`).
pub fn has_containers(job: &JobRequest) -> bool {
    job.job_container.is_some() || !job.job_service_containers.is_empty()
}

/// A container action step's image, if the step is one.
pub fn action_of(step: &JobStep) -> Option<&str> {
    let r = step.reference.as_ref()?;
    (r.kind != "script").then_some(())?;
    Some(match r.kind.as_str() {
        "containerRegistry" => r.image.as_deref().unwrap_or(""),
        _ => r.path.as_deref().unwrap_or(""),
    })
}

fn uses_of(step: &JobStep) -> String {
    let Some(r) = step.reference.as_ref() else {
        return String::new();
    };
    match (r.kind.as_str(), r.repository_type.as_deref()) {
        ("containerRegistry", _) => format!("docker://{}", r.image.as_deref().unwrap_or("")),
        (_, Some("self")) => format!("./{}", r.path.as_deref().unwrap_or("")),
        _ => {
            let path = r
                .path
                .as_deref()
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            format!(
                "{}{path}@{}",
                r.name.as_deref().unwrap_or(""),
                r.git_ref.as_deref().unwrap_or("")
            )
        }
    }
}

/// A job with a job container, services or container actions, as the
/// stand-in runs it (see the module docs).
#[derive(Debug)]
pub struct ContainerJob {
    /// The driver, when the job uses container hooks.
    pub driver: Option<HookDriver>,
    /// The job's folders.
    pub layout: Layout,
    /// What the stand-in read from its environment.
    pub runner_env: RunnerEnv,
    /// The job's environment (the message's, without the simulator's own).
    pub job_env: BTreeMap<String, String>,
    /// `GITHUB_ENV` additions of earlier steps.
    pub github_env: BTreeMap<String, String>,
    /// From `prepare_job`'s response.
    pub containers: JobContainers,
    job_container: Option<ContainerSpec>,
    services: Services,
}

impl ContainerJob {
    /// `None` for a job without containers and container actions (it runs
    /// as before). With hooks enabled, writes the simulated checkout and the
    /// event file and creates the runner's folders.
    pub fn new(job: &JobRequest, layout: Layout, runner_env: &RunnerEnv) -> Option<ContainerJob> {
        if !has_containers(job) && !job.steps.iter().any(|s| action_of(s).is_some()) {
            return None;
        }
        let mut job_env = job.environment.clone();
        job_env.remove("GHSIM_RUN_SERVICE_URL");
        let driver = match (
            &runner_env.container_hooks,
            runner_env.hooks_enabled(&job.variables),
        ) {
            (Some(hook), true) => Some(HookDriver::new(hook, layout.clone())),
            _ => None,
        };
        let mut this = ContainerJob {
            driver,
            layout,
            runner_env: runner_env.clone(),
            job_env,
            github_env: BTreeMap::new(),
            containers: JobContainers::default(),
            job_container: job.job_container.clone(),
            services: job.job_service_containers.clone(),
        };
        if this.driver.is_some() {
            if let Err(e) = this.prepare_files(job) {
                eprintln!("ghsim-runner: cannot prepare the job's folders: {e}");
            }
            let env = this.runtime_env(None);
            if let Some(d) = this.driver.as_mut() {
                d.env = this.job_env.clone();
                d.env.extend(env);
            }
        }
        Some(this)
    }

    /// The runner's folders, the simulated checkout and the event payload.
    fn prepare_files(&self, job: &JobRequest) -> std::io::Result<()> {
        let l = &self.layout;
        for d in [
            l.workspace.clone(),
            l.temp.clone(),
            l.actions.clone(),
            l.github_home(),
            l.github_workflow(),
            l.file_commands(),
        ] {
            std::fs::create_dir_all(d)?;
        }
        let env = |k: &str| job.environment.get(k).cloned().unwrap_or_default();
        std::fs::write(
            l.workspace.join(CHECKOUT_FILE),
            format!(
                "repository={}\nsha={}\nref={}\n",
                job.repository,
                env("GITHUB_SHA"),
                env("GITHUB_REF")
            ),
        )?;
        let (owner, name) = job
            .repository
            .split_once('/')
            .unwrap_or(("", &job.repository));
        let event = serde_json::json!({
            "ref": env("GITHUB_REF"),
            "after": env("GITHUB_SHA"),
            "head_commit": {"id": env("GITHUB_SHA")},
            "repository": {"full_name": job.repository, "name": name, "owner": {"login": owner}},
            "sender": {"login": "ghsim"},
        });
        std::fs::write(
            l.event_path(),
            serde_json::to_vec_pretty(&event).unwrap_or_default(),
        )?;
        for step in &job.steps {
            if let Some(dockerfile) = &step.ghsim_dockerfile {
                let uses = uses_of(step);
                let dir = l.action_dir(&uses);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("Dockerfile"), dockerfile)?;
                std::fs::write(
                    dir.join("action.yml"),
                    format!(
                        "name: '{uses}'\ndescription: written by ghsim-runner's simulated checkout\nruns:\n  using: docker\n  image: Dockerfile\n"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// The runner's `GITHUB_*`/`RUNNER_*` variables with host paths; with
    /// `files`, the step's file-command files.
    fn runtime_env(&self, files: Option<&FileCommands>) -> BTreeMap<String, String> {
        let l = &self.layout;
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("GITHUB_WORKSPACE", s(&l.workspace)),
            ("GITHUB_EVENT_PATH", s(&l.event_path())),
            ("GITHUB_EVENT_NAME", "push".into()),
            ("RUNNER_OS", "Linux".into()),
            ("RUNNER_ARCH", "X64".into()),
            ("RUNNER_ENVIRONMENT", "self-hosted".into()),
            ("RUNNER_TEMP", s(&l.temp)),
            ("RUNNER_TOOL_CACHE", s(&l.tools)),
            ("RUNNER_WORKSPACE", s(&l.runner_workspace())),
        ] {
            env.insert(k.to_string(), v);
        }
        if let Some(f) = files {
            for (k, p) in f.vars() {
                env.insert(k.to_string(), s(&p));
            }
        }
        env
    }

    /// Whether step `step` runs through this job (hook, or a container
    /// action failing without hooks) rather than on the host.
    pub fn handles(&self, step: &JobStep) -> bool {
        action_of(step).is_some() || (self.driver.is_some() && self.job_container.is_some())
    }

    /// `Initialize containers`: `prepare_job`.
    pub async fn initialize(
        &mut self,
        number: u32,
        log: &LogSender,
        cancel: watch::Receiver<bool>,
    ) -> StepResult {
        let Some(driver) = self.driver.as_mut() else {
            let _ = log.send((
                number,
                "ghsim-runner: container hooks are not enabled; the job's run steps run on the host".into(),
            ));
            return StepResult::Succeeded;
        };
        let l = &driver.layout;
        let container = self
            .job_container
            .as_ref()
            .map(|c| job_container(c, l, &self.runner_env));
        let services: Vec<HookContainer> = self
            .services
            .0
            .iter()
            .map(|(_, c)| service_container(c, &self.runner_env))
            .collect();
        let has = container.is_some();
        let args = PrepareJobArgs {
            container,
            services,
        };
        let r = driver
            .call::<_, PrepareJobResponse>(
                HookCommand::PrepareJob,
                &args,
                has,
                number,
                log,
                Some(cancel),
            )
            .await;
        let response = match r {
            Ok(r) => r,
            Err(e) => return fail(e, number, log),
        };
        let ids: Vec<String> = self.services.0.iter().map(|(n, _)| n.clone()).collect();
        match apply_prepare_response(response.as_ref(), has, &ids) {
            Ok(c) => {
                self.containers = c;
                StepResult::Succeeded
            }
            Err(message) => fail(
                HookError::Failed {
                    message,
                    detail: String::new(),
                },
                number,
                log,
            ),
        }
    }

    /// `Stop containers`: `cleanup_job` (not cancellable, bounded by
    /// [`CLEANUP_TIMEOUT`]).
    pub async fn stop(&mut self, number: u32, log: &LogSender) -> StepResult {
        let Some(driver) = self.driver.as_mut() else {
            return StepResult::Succeeded;
        };
        let call = driver.call::<_, HookResponse>(
            HookCommand::CleanupJob,
            &CleanupJobArgs {},
            false,
            number,
            log,
            None,
        );
        match tokio::time::timeout(CLEANUP_TIMEOUT, call).await {
            Ok(Ok(_)) => StepResult::Succeeded,
            Ok(Err(e)) => fail(e, number, log),
            Err(_) => fail(
                HookError::failed(format!(
                    "cleanup_job did not finish within {CLEANUP_TIMEOUT:?}"
                )),
                number,
                log,
            ),
        }
    }

    /// A step [`handles`](Self::handles) says is this job's.
    pub async fn run_step(
        &mut self,
        step: &JobStep,
        log: &LogSender,
        cancel: watch::Receiver<bool>,
    ) -> StepResult {
        let number = step.number;
        if self.driver.is_none() {
            let _ = log.send((
                number,
                format!(
                    "##[error]ghsim-runner: the container action '{}' needs container hooks ({HOOKS_ENV} and the job variable {ALLOW_CONTAINER_HOOKS}); the stand-in has no Docker",
                    uses_of(step)
                ),
            ));
            return StepResult::Failed;
        }
        let files = match FileCommands::create(&self.layout) {
            Ok(f) => f,
            Err(e) => {
                let _ = log.send((number, format!("##[error]cannot create file commands: {e}")));
                return StepResult::Failed;
            }
        };
        let mut env = self.job_env.clone();
        env.extend(self.github_env.clone());
        env.extend(step.environment.clone());
        let result = if action_of(step).is_some() {
            self.container_step(step, env, &files, log, cancel).await
        } else {
            self.script_step(step, env, &files, log, cancel).await
        };
        if let Some(d) = self.driver.as_mut() {
            files.apply(&mut d.prepend_path, &mut self.github_env);
        }
        match result {
            Ok(()) => StepResult::Succeeded,
            Err(e) => fail(e, number, log),
        }
    }

    async fn script_step(
        &mut self,
        step: &JobStep,
        mut env: BTreeMap<String, String>,
        files: &FileCommands,
        log: &LogSender,
        cancel: watch::Receiver<bool>,
    ) -> Result<(), HookError> {
        let shell = step.inputs.get("shell").map(String::as_str);
        let (cmd, format, ext) = script_shell(shell).map_err(|m| HookError::Failed {
            message: m,
            detail: String::new(),
        })?;
        let script = step.inputs.get("script").unwrap_or(&step.script);
        let file = self.layout.temp.join(format!("{}{ext}", Uuid::new_v4()));
        std::fs::write(&file, fix_up_script(&cmd, script))
            .map_err(|e| HookError::failed(format!("{}: {e}", file.display())))?;
        env.extend(self.runtime_env(Some(files)));
        let driver = self.driver.as_mut().expect("checked by run_step");
        let args = script_step_args(
            &self.layout,
            &cmd,
            &format,
            &file,
            &env,
            &driver.prepend_path,
        );
        driver
            .call::<_, HookResponse>(
                HookCommand::RunScriptStep,
                &args,
                false,
                step.number,
                log,
                Some(cancel),
            )
            .await
            .map(|_| ())
    }

    async fn container_step(
        &mut self,
        step: &JobStep,
        mut env: BTreeMap<String, String>,
        files: &FileCommands,
        log: &LogSender,
        cancel: watch::Receiver<bool>,
    ) -> Result<(), HookError> {
        let l = &self.layout;
        let reference = step.reference.clone().unwrap_or_default();
        let image = if reference.kind == "containerRegistry" {
            ActionImage::Registry(reference.image.clone().unwrap_or_default())
        } else {
            let dockerfile = l.action_dir(&uses_of(step)).join("Dockerfile");
            if !dockerfile.is_file() {
                return Err(HookError::Failed {
                    message: format!("File not found: '{}'", dockerfile.display()),
                    detail: String::new(),
                });
            }
            ActionImage::Dockerfile(dockerfile)
        };
        // The `with:` inputs become INPUT_* variables.
        let input = |name: &str| {
            step.inputs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        for (k, v) in &step.inputs {
            env.insert(
                format!("INPUT_{}", k.replace(' ', "_").to_uppercase()),
                v.clone(),
            );
        }
        env.insert("HOME".into(), s(&l.github_home()));
        env.extend(self.runtime_env(Some(files)));
        let args = container_step_args(
            l,
            &image,
            input("entryPoint"),
            input("args"),
            &env,
            &self.runner_env,
        );
        let driver = self.driver.as_mut().expect("checked by run_step");
        driver
            .call::<_, HookResponse>(
                HookCommand::RunContainerStep,
                &args,
                false,
                step.number,
                log,
                Some(cancel),
            )
            .await
            .map(|_| ())
    }
}

fn fail(e: HookError, number: u32, log: &LogSender) -> StepResult {
    e.log(number, log);
    match e {
        HookError::Cancelled => StepResult::Cancelled,
        HookError::Failed { .. } => StepResult::Failed,
    }
}

/// A step's file-command files in `_work/_temp/_runner_file_commands`.
#[derive(Debug, Clone)]
pub struct FileCommands {
    id: Uuid,
    dir: PathBuf,
}

impl FileCommands {
    const FILES: [(&'static str, &'static str); 5] = [
        ("GITHUB_ENV", "set_env"),
        ("GITHUB_PATH", "add_path"),
        ("GITHUB_OUTPUT", "set_output"),
        ("GITHUB_STATE", "save_state"),
        ("GITHUB_STEP_SUMMARY", "step_summary"),
    ];

    /// Creates the (empty) files.
    pub fn create(l: &Layout) -> std::io::Result<Self> {
        let this = FileCommands {
            id: Uuid::new_v4(),
            dir: l.file_commands(),
        };
        std::fs::create_dir_all(&this.dir)?;
        for (_, p) in this.vars() {
            std::fs::write(p, b"")?;
        }
        Ok(this)
    }

    /// Variable → file.
    pub fn vars(&self) -> Vec<(&'static str, PathBuf)> {
        Self::FILES
            .iter()
            .map(|(var, prefix)| (*var, self.dir.join(format!("{prefix}_{}", self.id))))
            .collect()
    }

    fn file(&self, var: &str) -> PathBuf {
        self.vars()
            .into_iter()
            .find(|(v, _)| *v == var)
            .map(|(_, p)| p)
            .unwrap_or_default()
    }

    /// Reads `GITHUB_PATH` (each line is added) and `GITHUB_ENV` (`NAME=value`
    /// or `NAME<<DELIMITER` … `DELIMITER`).
    pub fn apply(&self, prepend_path: &mut Vec<String>, env: &mut BTreeMap<String, String>) {
        if let Ok(text) = std::fs::read_to_string(self.file("GITHUB_PATH")) {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                prepend_path.retain(|p| p != line);
                prepend_path.push(line.to_string());
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.file("GITHUB_ENV")) {
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if let Some((name, delimiter)) = line.split_once("<<") {
                    let mut value = Vec::new();
                    for l in lines.by_ref() {
                        if l == delimiter {
                            break;
                        }
                        value.push(l);
                    }
                    env.insert(name.to_string(), value.join("\n"));
                } else if let Some((name, value)) = line.split_once('=') {
                    env.insert(name.to_string(), value.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::engine::RegistryCredentials;

    fn fixture(name: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/container-hooks")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    fn type_of(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Every key path with its JSON type (`.a.b`, `[]` for array items);
    /// the keys of `environmentVariables` are data (`.*`), `state` is opaque.
    fn shape(v: &Value) -> BTreeSet<(String, &'static str)> {
        fn walk(v: &Value, path: String, out: &mut BTreeSet<(String, &'static str)>) {
            out.insert((path.clone(), type_of(v)));
            match v {
                Value::Object(_) if path.ends_with(".state") => {}
                Value::Object(m) if path.ends_with(".environmentVariables") => {
                    for v in m.values() {
                        walk(v, format!("{path}.*"), out);
                    }
                }
                Value::Object(m) => {
                    for (k, v) in m {
                        walk(v, format!("{path}.{k}"), out);
                    }
                }
                Value::Array(a) => {
                    for v in a {
                        walk(v, format!("{path}[]"), out);
                    }
                }
                _ => {}
            }
        }
        let mut out = BTreeSet::new();
        walk(v, String::new(), &mut out);
        out
    }

    /// Asserts that `ours` and the fixture have the same key paths and types
    /// but for `only_ours` and `only_fixture`, the documented differences.
    fn assert_same_shape(
        ours: &Value,
        fixture: &Value,
        only_ours: &[(&str, &str)],
        only_fixture: &[(&str, &str)],
    ) {
        let (a, b) = (shape(ours), shape(fixture));
        let got_ours: BTreeSet<(String, String)> = a
            .difference(&b)
            .map(|(p, t)| (p.clone(), t.to_string()))
            .collect();
        let got_fixture: BTreeSet<(String, String)> = b
            .difference(&a)
            .map(|(p, t)| (p.clone(), t.to_string()))
            .collect();
        let want = |l: &[(&str, &str)]| -> BTreeSet<(String, String)> {
            l.iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect()
        };
        assert_eq!(got_ours, want(only_ours), "only in ours:\n{ours:#}");
        assert_eq!(got_fixture, want(only_fixture), "only in the fixture");
    }

    fn layout() -> Layout {
        Layout::new(
            Path::new("/Users/thomas/git/runner/_layout"),
            Path::new("/Users/thomas/git/runner/_layout/_work"),
            "acme/repo",
            None,
        )
    }

    fn state() -> Option<Map<String, Value>> {
        json!({"network": "net", "container": "c1", "services": {"redis": "s1"}})
            .as_object()
            .cloned()
    }

    fn creds() -> Option<RegistryCredentials> {
        Some(RegistryCredentials {
            username: "foo".into(),
            password: "bar".into(),
        })
    }

    fn input<A: Serialize>(
        command: HookCommand,
        args: A,
        state: Option<Map<String, Value>>,
    ) -> Value {
        serde_json::to_value(HookInput {
            command,
            response_file: Some("/r/_work/_temp/_runner_hook_responses/x.json".into()),
            args,
            state,
        })
        .unwrap()
    }

    /// Our prepare_job input against examples/prepare-job.json. The runner's
    /// serialisation (HookInput.cs, ContainerInfo.cs) differs from the
    /// hand-written example: it sends `state: null` (never `{}`); every
    /// HookContainer property, so the job container has `dockerfile`,
    /// `entryPoint` (camelCase: the example's service has `entrypoint`) and
    /// `entryPointArgs`, and a service has `workingDirectory` and
    /// `systemMountVolumes` too; MountVolume's `userProvidedValue`; and no
    /// `contextName` (a service's id is not sent at all: actions/runner#2783).
    #[test]
    fn prepare_job_input_has_the_fixture_shape() {
        let env = RunnerEnv::default();
        let l = layout();
        let container = ContainerSpec {
            image: "node:22".into(),
            env: [("NODE_ENV".to_string(), "development".to_string())].into(),
            options: Some("--cpus 1".into()),
            ports: vec!["80:8080".into()],
            volumes: vec!["my_docker_volume:/volume_mount".into()],
            credentials: creds(),
            ..Default::default()
        };
        let redis = ContainerSpec {
            image: "redis".into(),
            options: Some("--cpus 1".into()),
            ports: vec!["8080:80".into(), "8088:8080".into()],
            volumes: vec!["/var/run/docker.sock:/var/run/docker.sock".into()],
            credentials: creds(),
            ..Default::default()
        };
        let args = PrepareJobArgs {
            container: Some(job_container(&container, &l, &env)),
            services: vec![service_container(&redis, &env)],
        };
        let ours = input(HookCommand::PrepareJob, &args, None);
        let fx = fixture("prepare-job.json");
        assert_same_shape(
            &ours,
            &fx,
            &[
                (".state", "null"),
                (".args.container.dockerfile", "null"),
                (".args.container.entryPoint", "null"),
                (".args.container.entryPointArgs", "array"),
                (
                    ".args.container.systemMountVolumes[].userProvidedValue",
                    "null",
                ),
                (
                    ".args.container.userMountVolumes[].userProvidedValue",
                    "string",
                ),
                (".args.services[].dockerfile", "null"),
                (".args.services[].entryPoint", "null"),
                (".args.services[].workingDirectory", "null"),
                (".args.services[].systemMountVolumes", "array"),
                (
                    ".args.services[].userMountVolumes[].userProvidedValue",
                    "string",
                ),
            ],
            &[
                (".state", "object"),
                (".args.services[].contextName", "string"),
                (".args.services[].entrypoint", "null"),
            ],
        );
        // The values the runner computes, against the example's.
        let c = &ours["args"]["container"];
        assert_eq!(
            c["systemMountVolumes"],
            fx["args"]["container"]["systemMountVolumes"]
                .clone()
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    m["userProvidedValue"] = Value::Null;
                    m
                })
                .collect::<Value>()
        );
        assert_eq!(
            c["userMountVolumes"][0]["sourceVolumePath"],
            "my_docker_volume"
        );
        assert_eq!(c["workingDirectory"], "/__w/repo/repo");
        assert_eq!(c["environmentVariables"]["HOME"], "/github/home");
        assert_eq!(
            c["registry"]["serverUrl"], "",
            "Docker Hub: no registry host"
        );
        assert_eq!(
            ours["args"]["services"][0]["portMappings"],
            fx["args"]["services"][0]["portMappings"]
        );
        // And the example deserializes into the runner's shapes.
        let parsed: HookInput<PrepareJobArgs> = serde_json::from_value(fx).unwrap();
        assert_eq!(parsed.command, HookCommand::PrepareJob);
        let pc = parsed.args.container.unwrap();
        assert_eq!(pc.image.as_deref(), Some("node:22"));
        assert_eq!(pc.system_mount_volumes.len(), 8);
        assert!(pc.system_mount_volumes[2].read_only);
        assert_eq!(
            pc.registry.unwrap().server_url.as_deref(),
            Some("https://index.docker.io/v1")
        );
        assert_eq!(parsed.args.services.len(), 1);
        assert_eq!(
            parsed.args.services[0].port_mappings,
            ["8080:80", "8088:8080"]
        );
        let back: HookInput<PrepareJobArgs> = serde_json::from_value(ours).unwrap();
        assert_eq!(back.args, args);
    }

    /// Our run_script_step input against examples/run-script-step.json: the
    /// runner always sends a `responseFile` path (the example has `null`).
    #[test]
    fn run_script_step_input_has_the_fixture_shape() {
        let l = layout();
        let (cmd, format, ext) = script_shell(None).unwrap();
        assert_eq!(
            (cmd.as_str(), format.as_str(), ext),
            ("sh", "-e {0}", ".sh")
        );
        let file = l.temp.join("3c1a.sh");
        let env = [("NODE_ENV".to_string(), "development".to_string())].into();
        let args = script_step_args(
            &l,
            &cmd,
            &format,
            &file,
            &env,
            &["bar/foo".into(), "/foo/bar".into()],
        );
        let ours = input(HookCommand::RunScriptStep, &args, state());
        let fx = fixture("run-script-step.json");
        assert_same_shape(
            &ours,
            &fx,
            &[(".responseFile", "string")],
            &[(".responseFile", "null")],
        );
        assert_eq!(
            ours["args"]["entryPointArgs"],
            json!(["-e", "/__w/_temp/3c1a.sh"])
        );
        assert_eq!(
            ours["args"]["prependPath"], fx["args"]["prependPath"],
            "latest first"
        );
        assert_eq!(
            ours["args"]["workingDirectory"],
            fx["args"]["workingDirectory"]
        );
        let parsed: HookInput<ScriptStepArgs> = serde_json::from_value(fx).unwrap();
        assert_eq!(parsed.args.entry_point.as_deref(), Some("bash"));
        assert_eq!(parsed.args.entry_point_args, ["-e", "example-script.sh"]);
        assert!(parsed.response_file.is_none());
        assert_eq!(
            parsed.state.unwrap()["network"],
            "github_network_53269bd575974817b43f4733536b200c"
        );
        let back: HookInput<ScriptStepArgs> = serde_json::from_value(ours).unwrap();
        assert_eq!(back.args, args);
        // `shell: bash` is bash's own argument format.
        let (cmd, format, _) = script_shell(Some("bash")).unwrap();
        let a = script_step_args(&l, &cmd, &format, &file, &BTreeMap::new(), &[]);
        assert_eq!(
            a.entry_point_args,
            [
                "--noprofile",
                "--norc",
                "-e",
                "-o",
                "pipefail",
                "/__w/_temp/3c1a.sh"
            ]
        );
        assert!(script_shell(Some("perl -x")).is_err());
        assert_eq!(script_shell(Some("python")).unwrap().2, ".py");
    }

    /// Our run_container_step input against examples/run-container-step.json.
    /// The runner's (ContainerActionHandler.cs, HookInput.cs `ContainerStepArgs`)
    /// differs: a `responseFile` path (example: `null`); no `prependPath`
    /// (ContainerStepArgs has none); `createOptions` is always `null`, and
    /// `portMappings` and `userMountVolumes` always empty, for a container
    /// action; mounts carry `userProvidedValue`.
    #[test]
    fn run_container_step_input_has_the_fixture_shape() {
        let l = layout();
        let env = [("NODE_ENV".to_string(), "development".to_string())].into();
        let args = container_step_args(
            &l,
            &ActionImage::Registry("node:22".into()),
            Some("bash"),
            Some("-e  example-script.sh"),
            &env,
            &RunnerEnv::default(),
        );
        let ours = input(HookCommand::RunContainerStep, &args, state());
        let fx = fixture("run-container-step.json");
        assert_same_shape(
            &ours,
            &fx,
            &[
                (".responseFile", "string"),
                (".args.createOptions", "null"),
                (".args.systemMountVolumes[].userProvidedValue", "null"),
            ],
            &[
                (".responseFile", "null"),
                (".args.createOptions", "string"),
                (".args.prependPath", "array"),
                (".args.prependPath[]", "string"),
                (".args.portMappings[]", "string"),
                (".args.userMountVolumes[]", "object"),
                (".args.userMountVolumes[].sourceVolumePath", "string"),
                (".args.userMountVolumes[].targetVolumePath", "string"),
                (".args.userMountVolumes[].readOnly", "bool"),
            ],
        );
        assert_eq!(
            ours["args"]["entryPointArgs"], fx["args"]["entryPointArgs"],
            "empty arguments dropped"
        );
        assert_eq!(ours["args"]["workingDirectory"], "/github/workspace");
        let targets: Vec<&str> = args
            .system_mount_volumes
            .iter()
            .map(|m| m.target_volume_path.as_deref().unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                "/var/run/docker.sock",
                "/github/runner_temp",
                "/github/home",
                "/github/workflow",
                "/github/file_commands",
                "/github/workspace"
            ]
        );
        let parsed: HookInput<HookContainer> = serde_json::from_value(fx).unwrap();
        assert_eq!(parsed.args.image.as_deref(), Some("node:22"));
        assert_eq!(parsed.args.entry_point.as_deref(), Some("bash"));
        assert_eq!(parsed.args.system_mount_volumes.len(), 7);
        let back: HookInput<HookContainer> = serde_json::from_value(ours).unwrap();
        assert_eq!(back.args, args);
        // A Dockerfile action: `dockerfile` the host path, `image` null.
        let d = container_step_args(
            &l,
            &ActionImage::Dockerfile(l.workspace.join("act/Dockerfile")),
            None,
            None,
            &BTreeMap::new(),
            &RunnerEnv::default(),
        );
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["image"], Value::Null);
        assert_eq!(
            v["dockerfile"],
            "/Users/thomas/git/runner/_layout/_work/repo/repo/act/Dockerfile"
        );
        assert_eq!(v["entryPoint"], Value::Null);
        assert_eq!(v["entryPointArgs"], json!([]));
    }

    #[test]
    fn cleanup_job_input_is_an_empty_object() {
        let v = input(HookCommand::CleanupJob, CleanupJobArgs {}, state());
        assert_eq!(v["args"], json!({}));
        assert_eq!(v["command"], "cleanup_job");
    }

    #[test]
    fn paths_translate_like_the_runner() {
        let l = Layout::new(
            Path::new("/r"),
            Path::new("/r/_work"),
            "o/w",
            Some(Path::new("/opt/cache")),
        );
        let m = PathMap::job_container(&l);
        assert_eq!(m.to_container("/r/_work"), "/__w");
        assert_eq!(m.to_container("/r/_work/w/w/src"), "/__w/w/w/src");
        assert_eq!(
            m.to_container("/r/_work/_temp/_github_home"),
            "/github/home"
        );
        assert_eq!(
            m.to_container("/r/_work/_temp/_github_workflow/event.json"),
            "/github/workflow/event.json"
        );
        assert_eq!(
            m.to_container("/r/_workshop"),
            "/r/_workshop",
            "a prefix that is not a parent"
        );
        assert_eq!(m.to_container("/opt/cache/node"), "/__t/node");
        assert_eq!(m.to_container("/r/externals"), "/__e");
        assert_eq!(m.to_container("plain value"), "plain value");
        let c = job_container(&ContainerSpec::image("x"), &l, &RunnerEnv::default());
        let mounts: Vec<(&str, &str, bool)> = c
            .system_mount_volumes
            .iter()
            .map(|m| {
                (
                    m.source_volume_path.as_deref().unwrap(),
                    m.target_volume_path.as_deref().unwrap(),
                    m.read_only,
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("/var/run/docker.sock", "/var/run/docker.sock", false),
                ("/r/_work", "/__w", false),
                ("/r/externals", "/__e", true),
                ("/r/_work/_temp", "/__w/_temp", false),
                ("/r/_work/_actions", "/__w/_actions", false),
                ("/opt/cache", "/__t", false),
                ("/r/_work/_temp/_github_home", "/github/home", false),
                ("/r/_work/_temp/_github_workflow", "/github/workflow", false),
            ]
        );
        assert_eq!(l.action_dir("./a/b"), Path::new("/r/_work/w/w/a/b"));
        assert_eq!(
            l.action_dir("acme/tools/lint@v2"),
            Path::new("/r/_work/_actions/acme/tools/v2/lint")
        );
        let a = PathMap::container_action(&l);
        assert_eq!(a.to_container("/r/_work/w/w"), "/github/workspace");
        assert_eq!(a.to_container("/r/_work/_temp/x"), "/github/runner_temp/x");
        assert_eq!(
            a.to_container("/r/_work/_tool"),
            "/r/_work/_tool",
            "no /__w mapping in an action"
        );
    }

    #[test]
    fn containers_from_workflow_values() {
        assert_eq!(
            MountVolume::parse("src:/dst:ro"),
            MountVolume {
                user_provided_value: Some("src:/dst:ro".into()),
                source_volume_path: Some("src".into()),
                target_volume_path: Some("/dst".into()),
                read_only: true
            }
        );
        let t = MountVolume::parse("/data:ro");
        assert_eq!(
            (
                t.source_volume_path,
                t.target_volume_path.as_deref(),
                t.read_only
            ),
            (None, Some("/data"), true)
        );
        let t = MountVolume::parse("/data");
        assert_eq!(
            (
                t.source_volume_path,
                t.target_volume_path.as_deref(),
                t.read_only
            ),
            (None, Some("/data"), false)
        );
        assert_eq!(registry_of_image("redis"), "");
        assert_eq!(registry_of_image("library/redis"), "");
        assert_eq!(registry_of_image("ghcr.io/acme/app:1"), "ghcr.io");
        assert_eq!(registry_of_image("localhost:5000/app"), "localhost:5000");
        let env = RunnerEnv::from_vars(|k| match k {
            "HTTPS_PROXY" => Some("proxy:3128".into()),
            "no_proxy" => Some("localhost".into()),
            _ => None,
        });
        let svc = service_container(
            &ContainerSpec {
                image: "postgres".into(),
                env: [("HTTPS_PROXY".to_string(), "mine".to_string())].into(),
                ports: vec!["5432".into(), "5432".into()],
                entrypoint: Some("docker-entrypoint.sh".into()),
                command: Some("postgres  -c fsync=off".into()),
                credentials: Some(RegistryCredentials::default()),
                ..Default::default()
            },
            &env,
        );
        assert_eq!(
            svc.environment_variables["HTTPS_PROXY"], "mine",
            "the container's own env wins"
        );
        assert_eq!(
            svc.environment_variables["https_proxy"],
            "http://proxy:3128"
        );
        assert_eq!(svc.environment_variables["NO_PROXY"], "localhost");
        assert_eq!(svc.port_mappings, ["5432"], "a port once");
        assert_eq!(svc.entry_point.as_deref(), Some("docker-entrypoint.sh"));
        assert_eq!(svc.entry_point_args, ["postgres", "-c", "fsync=off"]);
        assert!(svc.registry.is_none(), "no user name, no registry");
        assert!(svc.system_mount_volumes.is_empty() && svc.working_directory.is_none());
    }

    #[test]
    fn the_hook_gate_and_the_runner_env() {
        let vars = |v: &str| {
            [(
                "distributedtask.allowrunnercontainerhooks".to_string(),
                VariableValue {
                    value: v.into(),
                    is_secret: false,
                },
            )]
            .into_iter()
            .collect::<BTreeMap<_, _>>()
        };
        let on = RunnerEnv::from_vars(|k| (k == HOOKS_ENV).then(|| "/h.sh".to_string()));
        assert!(on.hooks_enabled(&vars(" True ")));
        assert!(
            !on.hooks_enabled(&vars("1")),
            "bool.TryParse does not take 1"
        );
        assert!(!on.hooks_enabled(&BTreeMap::new()));
        let off = RunnerEnv::from_vars(|k| (k == HOOKS_ENV).then(String::new));
        assert!(
            !off.hooks_enabled(&vars("true")),
            "an empty path is no hook"
        );
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("$true", true),
            ("yes", false),
            ("0", false),
        ] {
            let e =
                RunnerEnv::from_vars(|k| (k == REQUIRE_JOB_CONTAINER_ENV).then(|| v.to_string()));
            assert_eq!(e.require_job_container, want, "{v}");
        }
        let e = RunnerEnv::from_vars(|k| (k == "no_proxy").then(|| "x".to_string()));
        assert_eq!(e.no_proxy, None, "no_proxy alone is ignored");
        let e = RunnerEnv::from_vars(|k| (k == "RUNNER_TOOL_CACHE").then(|| "/opt/t".to_string()));
        assert_eq!(e.tool_cache.as_deref(), Some(Path::new("/opt/t")));
    }

    #[test]
    fn prepare_job_responses_are_checked_like_the_runner() {
        let r: PrepareJobResponse = serde_json::from_value(json!({
            "state": {"network": "n"},
            "context": {"container": {"id": "c", "network": "n"},
                        "services": [{"id": "s", "network": "n", "ports": {"6379": 32768}}]},
            "isAlpine": true
        }))
        .unwrap();
        let ids = ["redis".to_string()];
        let c = apply_prepare_response(Some(&r), true, &ids).unwrap();
        assert_eq!(c.is_alpine, Some(true));
        assert_eq!(c.container_id.as_deref(), Some("c"));
        assert_eq!(c.services[0].0, "redis");
        assert_eq!(c.services[0].1.ports.as_ref().unwrap()["6379"], "32768");
        assert_eq!(r.validate(true), Ok(()));
        let no_alpine: PrepareJobResponse = serde_json::from_value(json!({"state": {}})).unwrap();
        assert_eq!(
            no_alpine.validate(true),
            Err(IS_ALPINE_MISSING_MESSAGE.to_string())
        );
        assert_eq!(no_alpine.validate(false), Ok(()));
        assert_eq!(
            apply_prepare_response(None, false, &ids),
            Err(NULL_REFERENCE_MESSAGE.to_string())
        );
        let too_many: PrepareJobResponse = serde_json::from_value(
            json!({"context": {"services": [{"ports": {}}, {"ports": {}}]}}),
        )
        .unwrap();
        assert!(
            apply_prepare_response(Some(&too_many), false, &ids)
                .unwrap_err()
                .starts_with("Index was out of range")
        );
        let no_ports: PrepareJobResponse =
            serde_json::from_value(json!({"context": {"services": [{"id": "s"}]}})).unwrap();
        assert_eq!(
            apply_prepare_response(Some(&no_ports), false, &ids),
            Err(NULL_REFERENCE_MESSAGE.to_string())
        );
        let null_services: PrepareJobResponse =
            serde_json::from_value(json!({"context": {"services": null}})).unwrap();
        assert_eq!(
            apply_prepare_response(Some(&null_services), false, &ids),
            Err(NULL_REFERENCE_MESSAGE.to_string())
        );
        let no_services: PrepareJobResponse =
            serde_json::from_value(json!({"context": {}})).unwrap();
        assert!(
            apply_prepare_response(Some(&no_services), false, &ids)
                .unwrap()
                .services
                .is_empty()
        );
        assert!(serde_json::from_value::<HookResponse>(json!({"state": "not an object"})).is_err());
    }

    #[test]
    fn file_commands_add_path_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), &dir.path().join("_work"), "o/w", None);
        let f = FileCommands::create(&l).unwrap();
        let file = |v: &str| f.vars().into_iter().find(|(k, _)| *k == v).unwrap().1;
        std::fs::write(file("GITHUB_PATH"), "/a\n\n/b\n/a\n").unwrap();
        std::fs::write(file("GITHUB_ENV"), "X=1\nMULTI<<EOF\nl1\nl2\nEOF\nY=a=b\n").unwrap();
        let (mut path, mut env) = (vec!["/b".to_string()], BTreeMap::new());
        f.apply(&mut path, &mut env);
        assert_eq!(path, ["/b", "/a"]);
        assert_eq!(env["X"], "1");
        assert_eq!(env["MULTI"], "l1\nl2");
        assert_eq!(env["Y"], "a=b");
    }
}
