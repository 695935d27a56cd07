//! The Docker calls of container jobs (crate::container_jobs): the per-job
//! volumes and network, the job's own containers, and `docker exec` with its
//! output streamed. Every object is created with `berth.managed=true` and
//! the job's labels, so the socket proxy lets the calls through and the
//! reconcilers find what a crash left.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, NetworkConnectRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveVolumeOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{Controller, DockerError, LABEL_MANAGED, check_container_ref};

/// One line (or chunk) of a process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub bytes: Bytes,
}

fn chunk(output: LogOutput) -> Option<OutputChunk> {
    match output {
        LogOutput::StdOut { message } | LogOutput::Console { message } => Some(OutputChunk {
            stream: "stdout",
            bytes: message,
        }),
        LogOutput::StdErr { message } => Some(OutputChunk {
            stream: "stderr",
            bytes: message,
        }),
        LogOutput::StdIn { .. } => None,
    }
}

/// A container's state as container jobs need it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// `starting`, `healthy`, `unhealthy`, or `None` without a health check.
    pub health: Option<String>,
    /// The image's environment (`PATH=…` among it).
    pub env: Vec<String>,
}

/// An object found by label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledObject {
    /// Container or network ID, or volume name.
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

fn label_filter(labels: &[String]) -> HashMap<String, Vec<String>> {
    let mut all = vec![format!("{LABEL_MANAGED}=true")];
    all.extend(labels.iter().cloned());
    HashMap::from([("label".to_owned(), all)])
}

/// A volume or network name: Docker's rule.
fn check_name(what: &str, name: &str) -> Result<(), DockerError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(DockerError::InvalidSpec(format!(
            "`{name}` is not a valid {what} name"
        )))
    }
}

impl Controller {
    /// Creates the volume `name` (idempotent: Docker answers with the
    /// existing volume when the name is taken by the same driver). With
    /// `tmpfs`, a memory-backed volume of at most `size` bytes, owned by
    /// `uid:gid` with `mode`.
    pub async fn volume_create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        tmpfs: Option<(u64, u32, u32, &str)>,
    ) -> Result<(), DockerError> {
        check_name("volume", name)?;
        let mut all_labels: HashMap<String, String> = labels.clone().into_iter().collect();
        all_labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        let driver_opts = tmpfs.map(|(size, uid, gid, mode)| {
            HashMap::from([
                ("type".to_owned(), "tmpfs".to_owned()),
                ("device".to_owned(), "tmpfs".to_owned()),
                (
                    "o".to_owned(),
                    format!("size={size},uid={uid},gid={gid},mode={mode}"),
                ),
            ])
        });
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            driver: Some("local".to_owned()),
            driver_opts,
            labels: Some(all_labels),
            ..Default::default()
        };
        let result = self
            .call("volume_create", self.docker.create_volume(request))
            .await
            .map(drop);
        self.report(result)
    }

    /// Removes the volume; one already gone is not an error.
    pub async fn volume_remove(&self, name: &str) -> Result<(), DockerError> {
        check_name("volume", name)?;
        let options = RemoveVolumeOptions { force: true };
        let result = match self
            .call(
                "volume_remove",
                self.docker.remove_volume(name, Some(options)),
            )
            .await
        {
            Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// berth's volumes carrying every label of `labels` (`key=value`).
    pub async fn volumes_labelled(
        &self,
        labels: &[String],
    ) -> Result<Vec<LabelledObject>, DockerError> {
        let options = ListVolumesOptions {
            filters: Some(label_filter(labels)),
        };
        let result = self
            .call("volume_list", self.docker.list_volumes(Some(options)))
            .await
            .map(|list| {
                list.volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| LabelledObject {
                        id: v.name.clone(),
                        name: v.name,
                        labels: v
                            .labels
                            .into_iter()
                            .filter(|(k, _)| k.starts_with("berth."))
                            .collect(),
                    })
                    .collect()
            });
        self.report(result)
    }

    /// Creates a bridge network for one job and returns its ID; `internal`
    /// networks have no route out. Sent as written (as
    /// [`ensure_network`](Self::ensure_network) does) for engines on API 1.41.
    pub async fn job_network_create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        internal: bool,
    ) -> Result<String, DockerError> {
        check_name("network", name)?;
        let mut all_labels = labels.clone();
        all_labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        let body = serde_json::json!({
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": true,
            "Internal": internal,
            "Labels": all_labels,
        });
        let body = Bytes::from(body.to_string());
        let docker = self.docker.clone().with_request_modifier(move |request| {
            if request.uri().path().ends_with("/networks/create") {
                let (parts, _) = request.into_parts();
                http::Request::from_parts(parts, bollard::body_full(body.clone()))
            } else {
                request
            }
        });
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            ..Default::default()
        };
        let result = match self
            .call("network_create", docker.create_network(request))
            .await
        {
            Ok(created) => Ok(created.id),
            // A retry after an answer that was lost: the network is there.
            Err(DockerError::Conflict { .. }) => {
                let options = ListNetworksOptions {
                    filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
                };
                self.call("network_list", self.docker.list_networks(Some(options)))
                    .await
                    .and_then(|found| {
                        found
                            .into_iter()
                            .find(|n| n.name.as_deref() == Some(name))
                            .and_then(|n| n.id)
                            .ok_or_else(|| DockerError::Conflict {
                                op: "network_create",
                                message: format!("network {name} exists but cannot be found"),
                            })
                    })
            }
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// Connects a container to a network, reachable there by `aliases`.
    pub async fn network_connect(
        &self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
    ) -> Result<(), DockerError> {
        check_container_ref(container)?;
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            }),
        };
        let result = self
            .call(
                "network_connect",
                self.docker.connect_network(network, request),
            )
            .await;
        self.report(result)
    }

    /// Removes a network; one already gone is not an error.
    pub async fn network_remove(&self, network: &str) -> Result<(), DockerError> {
        let result = match self
            .call("network_remove", self.docker.remove_network(network))
            .await
        {
            Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// berth's networks carrying every label of `labels`.
    pub async fn networks_labelled(
        &self,
        labels: &[String],
    ) -> Result<Vec<LabelledObject>, DockerError> {
        let options = ListNetworksOptions {
            filters: Some(label_filter(labels)),
        };
        let result = self
            .call("network_list", self.docker.list_networks(Some(options)))
            .await
            .map(|found| {
                found
                    .into_iter()
                    .filter_map(|n| {
                        Some(LabelledObject {
                            id: n.id?,
                            name: n.name.unwrap_or_default(),
                            labels: n
                                .labels
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|(k, _)| k.starts_with("berth."))
                                .collect(),
                        })
                    })
                    .collect()
            });
        self.report(result)
    }

    /// berth's containers (every role) carrying every label of `labels`,
    /// running or not.
    pub async fn containers_labelled(
        &self,
        labels: &[String],
    ) -> Result<Vec<LabelledObject>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(labels)),
            ..Default::default()
        };
        let result = self
            .call("container_list", self.docker.list_containers(Some(options)))
            .await
            .map(|found| {
                found
                    .into_iter()
                    .filter_map(|c| {
                        Some(LabelledObject {
                            id: c.id?,
                            name: c
                                .names
                                .unwrap_or_default()
                                .first()
                                .map(|n| n.trim_start_matches('/').to_owned())
                                .unwrap_or_default(),
                            labels: c
                                .labels
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|(k, _)| k.starts_with("berth."))
                                .collect(),
                        })
                    })
                    .collect()
            });
        self.report(result)
    }

    /// Creates a container from a body built by the caller (container jobs
    /// build theirs under the pool's policy) and returns its ID. A name in
    /// use is [`DockerError::Conflict`].
    pub async fn container_create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        check_container_ref(name)?;
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let image = body.image.clone().unwrap_or_default();
        let result = match self
            .call(
                "container_create",
                self.docker.create_container(Some(options), body),
            )
            .await
        {
            Ok(created) => Ok(created.id),
            Err(DockerError::NotFound { message, .. })
                if message.to_ascii_lowercase().contains("image") =>
            {
                Err(DockerError::ImageMissing { image })
            }
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// Starts a created container.
    pub async fn container_start(&self, container: &str) -> Result<(), DockerError> {
        check_container_ref(container)?;
        let result = self
            .call(
                "container_start",
                self.docker.start_container(
                    container,
                    None::<bollard::query_parameters::StartContainerOptions>,
                ),
            )
            .await;
        self.report(result)
    }

    /// Running, exit code, health and environment of a container.
    pub async fn run_state(&self, container: &str) -> Result<RunState, DockerError> {
        check_container_ref(container)?;
        let result = self
            .call(
                "container_inspect",
                self.docker.inspect_container(container, None),
            )
            .await
            .map(|c| {
                let state = c.state.unwrap_or_default();
                RunState {
                    running: state.running.unwrap_or(false),
                    exit_code: state.exit_code,
                    health: state
                        .health
                        .and_then(|h| h.status)
                        .map(|s| s.to_string())
                        .filter(|s| !s.is_empty() && s != "none"),
                    env: c.config.and_then(|c| c.env).unwrap_or_default(),
                }
            });
        self.report(result)
    }

    /// The labels of an image, or `None` when the engine does not have it.
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        self.image_id(image).await.map(|id| id.is_some())
    }

    /// Runs `cmd` in a running container and streams its output; read the
    /// exit code with [`exec_exit_code`](Self::exec_exit_code) once the
    /// stream ended. Never privileged.
    pub async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        working_dir: Option<String>,
    ) -> Result<(String, BoxStream<'static, Result<OutputChunk, DockerError>>), DockerError> {
        check_container_ref(container)?;
        let config = ExecConfig {
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(cmd),
            privileged: Some(false),
            working_dir,
            ..Default::default()
        };
        let created = self
            .call("exec_create", self.docker.create_exec(container, config))
            .await;
        let created = self.report(created)?;
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        let started = self
            .call(
                "exec_start",
                self.docker.start_exec(&created.id, Some(options)),
            )
            .await;
        let after = self.call_timeout;
        let hook = self.error_hook.clone();
        match self.report(started)? {
            StartExecResults::Attached { output, .. } => {
                let stream = output
                    .filter_map(move |item| {
                        std::future::ready(match item {
                            Ok(o) => chunk(o).map(Ok),
                            Err(e) => Some(Err(super::report_with(
                                hook.as_ref(),
                                DockerError::from_bollard("exec_start", e, after),
                            ))),
                        })
                    })
                    .boxed();
                Ok((created.id, stream))
            }
            StartExecResults::Detached => Err(DockerError::Protocol {
                op: "exec_start",
                message: "the exec started detached".into(),
            }),
        }
    }

    /// The exit code of a finished exec (`None` while it runs).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, DockerError> {
        let result = self
            .call("exec_inspect", self.docker.inspect_exec(exec_id))
            .await
            .map(|e| {
                if e.running == Some(true) {
                    None
                } else {
                    e.exit_code
                }
            });
        self.report(result)
    }

    /// A container's output from its start, followed until it exits.
    pub fn follow_output(
        &self,
        container: &str,
    ) -> BoxStream<'static, Result<OutputChunk, DockerError>> {
        let hook = self.error_hook.clone();
        let after = self.call_timeout;
        let options = bollard::query_parameters::LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        self.docker
            .logs(container, Some(options))
            .filter_map(move |item| {
                std::future::ready(match item {
                    Ok(o) => chunk(o).map(Ok),
                    Err(e) => Some(Err(super::report_with(
                        hook.as_ref(),
                        DockerError::from_bollard("container_logs", e, after),
                    ))),
                })
            })
            .boxed()
    }
}

impl Controller {
    /// Builds an image from `context` (a tar archive) with the legacy
    /// builder, labelled `labels` (plus `berth.managed`) and tagged `tag`,
    /// within `limit`; each line of the build's output goes to `output`.
    /// Returns the image's ID; a failed step is an error with the engine's
    /// message.
    #[allow(clippy::too_many_arguments)]
    pub async fn image_build(
        &self,
        context: Bytes,
        dockerfile: &str,
        tag: &str,
        labels: &BTreeMap<String, String>,
        build_args: &BTreeMap<String, String>,
        limit: Duration,
        output: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<String, DockerError> {
        let mut all_labels: HashMap<String, String> = labels.clone().into_iter().collect();
        all_labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        let options = bollard::query_parameters::BuildImageOptions {
            dockerfile: dockerfile.to_owned(),
            t: Some(tag.to_owned()),
            rm: true,
            forcerm: true,
            labels: Some(all_labels),
            buildargs: (!build_args.is_empty()).then(|| build_args.clone().into_iter().collect()),
            networkmode: Some("default".to_owned()),
            ..Default::default()
        };
        let building = async {
            let mut stream =
                self.docker
                    .build_image(options, None, Some(bollard::body_full(context)));
            let mut id = None;
            while let Some(item) = stream.next().await {
                let info = item?;
                if let Some(detail) = info.error_detail {
                    return Ok(Err(detail.message.unwrap_or_default()));
                }
                if let Some(built) = info.aux.and_then(|aux| aux.id) {
                    id = Some(built);
                }
                if let Some(line) = info.stream {
                    let _ = output.send(line);
                }
            }
            Ok(id.ok_or_else(|| "the build ended without an image".to_owned()))
        };
        let result = match self.call_within("image_build", limit, building).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(message)) => Err(DockerError::Protocol {
                op: "image_build",
                message,
            }),
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// berth's images carrying every label of `labels`: their IDs.
    pub async fn images_labelled(&self, labels: &[String]) -> Result<Vec<String>, DockerError> {
        let options = bollard::query_parameters::ListImagesOptions {
            filters: Some(label_filter(labels)),
            ..Default::default()
        };
        let result = self
            .call("image_list", self.docker.list_images(Some(options)))
            .await
            .map(|images| images.into_iter().map(|i| i.id).collect());
        self.report(result)
    }

    /// Removes an image berth built; one already gone is not an error.
    pub async fn image_remove(&self, id: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        let result = match self
            .call(
                "image_remove",
                self.docker.remove_image(id, Some(options), None),
            )
            .await
        {
            Ok(_) | Err(DockerError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.report(result)
    }
}
