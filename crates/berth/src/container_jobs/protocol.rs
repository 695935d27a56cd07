//! The runner's container-hook protocol, as `berth hook` receives it and
//! berth's API reads it.
//!
//! The runner (actions/runner `ContainerHookManager`, `HookInput.cs`,
//! `HookResponse.cs`) starts the hook with one JSON document on stdin:
//! `{command, responseFile, args, state}`. `berth hook` sends that document
//! as it is to `POST /v1/hook/{command}`; the answer is a stream of JSON
//! lines ([`Event`]), the last one saying how the command ended. For
//! `prepare_job` the hook writes [`PrepareJobResponse`] to `responseFile`.
//!
//! The runner serialises with camelCase names; the examples of
//! actions/runner-container-hooks (fixtures/container-hooks/) also write
//! `entrypoint` for a service, so both spellings are read. `null` stands for
//! an empty list or map wherever the runner may send one.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The commands of the protocol.
pub const COMMANDS: [&str; 4] = [
    "prepare_job",
    "run_script_step",
    "run_container_step",
    "cleanup_job",
];

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the runner writes to the hook's stdin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookInput {
    pub command: String,
    #[serde(default)]
    pub response_file: Option<String>,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub state: Value,
}

/// A registry login for an image (`credentials:` in the workflow).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub server_url: Option<String>,
}

/// One mount (`MountVolume`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MountVolume {
    #[serde(default)]
    pub source_volume_path: String,
    pub target_volume_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A container of the job (`HookContainer`): the job container, a service
/// (with `contextName`), or a container action (`ContainerStepArgs`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HookContainer {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub dockerfile: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub entry_point_args: Vec<String>,
    #[serde(default, alias = "entrypoint")]
    pub entry_point: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub create_options: Option<String>,
    #[serde(default)]
    pub registry: Option<Registry>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub environment_variables: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub port_mappings: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_mount_volumes: Vec<MountVolume>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user_mount_volumes: Vec<MountVolume>,
    /// Services only: the name the job reaches the service by.
    #[serde(default)]
    pub context_name: Option<String>,
    /// Container actions: extra `PATH` entries.
    #[serde(default, deserialize_with = "null_as_default")]
    pub prepend_path: Vec<String>,
}

/// `prepare_job`'s args.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareJobArgs {
    #[serde(default)]
    pub container: Option<HookContainer>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: Vec<HookContainer>,
}

/// `run_script_step`'s args.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptStepArgs {
    #[serde(default, deserialize_with = "null_as_default")]
    pub entry_point_args: Vec<String>,
    #[serde(default)]
    pub entry_point: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub environment_variables: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub prepend_path: Vec<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
}

/// One container of `prepare_job`'s answer (`ResponseContainer`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ResponseContainer {
    pub id: String,
    pub network: String,
    /// Container port → host port. berth publishes nothing on the host, so
    /// this maps each declared port to itself, reachable by the service's
    /// name from the job container.
    #[serde(default)]
    pub ports: BTreeMap<String, String>,
}

/// `context` of `prepare_job`'s answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ResponseContext {
    pub container: Option<ResponseContainer>,
    pub services: Vec<ResponseContainer>,
}

/// What `prepare_job` writes to the response file (`PrepareJobResponse`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrepareJobResponse {
    pub state: Value,
    pub context: ResponseContext,
    pub is_alpine: bool,
}

/// One line of the answer stream of `POST /v1/hook/{command}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A line for the job's log (berth's own progress, or a container's
    /// output: `stream` is `stdout` or `stderr`).
    Output { stream: String, text: String },
    /// The command ended; for steps, with the step's exit code; for
    /// `prepare_job`, with the response file's content.
    Done {
        exit_code: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<Value>,
    },
    /// The command failed before it could finish (a refusal by policy, a
    /// Docker error); the message names what went wrong.
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> HookInput {
        let path = format!(
            "{}/../../fixtures/container-hooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect(&path);
        serde_json::from_str(&text).expect(name)
    }

    #[test]
    fn reads_the_runner_container_hooks_examples() {
        let prepare = fixture("prepare-job.json");
        assert_eq!(prepare.command, "prepare_job");
        let args: PrepareJobArgs = serde_json::from_value(prepare.args).unwrap();
        let job = args.container.unwrap();
        assert_eq!(job.image.as_deref(), Some("node:22"));
        assert_eq!(job.system_mount_volumes.len(), 8);
        assert_eq!(job.environment_variables["NODE_ENV"], "development");
        assert_eq!(args.services[0].context_name.as_deref(), Some("redis"));
        assert_eq!(args.services[0].entry_point, None);
        assert_eq!(args.services[0].port_mappings, vec!["8080:80", "8088:8080"]);

        let script = fixture("run-script-step.json");
        let args: ScriptStepArgs = serde_json::from_value(script.args).unwrap();
        assert_eq!(args.entry_point, "bash");
        assert_eq!(args.entry_point_args, vec!["-e", "example-script.sh"]);
        assert_eq!(args.prepend_path, vec!["/foo/bar", "bar/foo"]);
        assert_eq!(
            script.state["services"]["redis"].as_str().unwrap().len(),
            64
        );

        let step = fixture("run-container-step.json");
        let args: HookContainer = serde_json::from_value(step.args).unwrap();
        assert_eq!(args.image.as_deref(), Some("node:22"));
        assert_eq!(args.dockerfile, None);
        assert_eq!(args.entry_point.as_deref(), Some("bash"));
        assert_eq!(step.response_file, None);
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        let e = Event::Done {
            exit_code: 3,
            response: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"done":{"exit_code":3}}"#
        );
        let o: Event =
            serde_json::from_str(r#"{"output":{"stream":"stdout","text":"hi"}}"#).unwrap();
        assert_eq!(
            o,
            Event::Output {
                stream: "stdout".into(),
                text: "hi".into()
            }
        );
    }
}
