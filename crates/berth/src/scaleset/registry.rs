//! The scale sets a process knows from its `[[scale_set]]` configuration:
//! one [`ActionsClient`] per GitHub config URL (scale sets of one org share
//! a token chain) and each scale set's id, resolved by name once and cached.
//!
//! The orchestrator mints every runner's JIT config here — in scale-set
//! mode through the Actions service's `generatejitconfig` with its own App
//! credentials, so a proxy never carries a runner credential — and removes
//! scale-set runners here too. The proxy uses the same registry for its
//! listeners' clients.

use std::collections::BTreeMap;

use tokio::sync::Mutex;

use super::ScaleSetError;
use super::client::ActionsClient;
use crate::config::{Config, ScaleSetConfig};
use crate::github::{GithubClient, JitConfig};
use crate::observability::Metrics;

struct Entry {
    config: ScaleSetConfig,
    client: ActionsClient,
    id: Mutex<Option<u64>>,
}

/// Every configured scale set. Empty when none is configured.
#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

/// A scale set's labels: its name, then its extra labels (no duplicates,
/// compared case-insensitively).
pub fn labels_of(config: &ScaleSetConfig) -> Vec<String> {
    let mut labels = vec![config.name.clone()];
    for l in &config.labels {
        if !labels.iter().any(|x| x.eq_ignore_ascii_case(l)) {
            labels.push(l.clone());
        }
    }
    labels
}

impl Registry {
    /// Clients for every `[[scale_set]]` of `config`; needs the App client
    /// when there is any.
    pub fn new(
        config: &Config,
        github: Option<&GithubClient>,
        metrics: &Metrics,
    ) -> Result<Self, ScaleSetError> {
        let mut entries = BTreeMap::new();
        let mut clients: BTreeMap<String, ActionsClient> = BTreeMap::new();
        for set in &config.scale_sets {
            let github = github.ok_or_else(|| {
                ScaleSetError::Config("scale sets need the GitHub App ([github])".into())
            })?;
            let key = set.github_config_url.trim_end_matches('/').to_string();
            let client = match clients.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = ActionsClient::new(
                        github.clone(),
                        &config.github.api_url,
                        &set.github_config_url,
                        config.github.request_timeout,
                        metrics.clone(),
                    )?;
                    clients.insert(key, c.clone());
                    c
                }
            };
            entries.insert(
                set.name.clone(),
                Entry {
                    config: set.clone(),
                    client,
                    id: Mutex::new(None),
                },
            );
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn config(&self, name: &str) -> Option<&ScaleSetConfig> {
        self.entries.get(name).map(|e| &e.config)
    }

    fn entry(&self, name: &str) -> Result<&Entry, ScaleSetError> {
        self.entries
            .get(name)
            .ok_or_else(|| ScaleSetError::UnknownScaleSet(name.to_string()))
    }

    pub fn client(&self, name: &str) -> Result<&ActionsClient, ScaleSetError> {
        Ok(&self.entry(name)?.client)
    }

    /// The scale set's id on the service: found by name (created if it
    /// does not exist yet), then cached.
    pub async fn id(&self, name: &str) -> Result<u64, ScaleSetError> {
        let entry = self.entry(name)?;
        let mut id = entry.id.lock().await;
        if let Some(id) = *id {
            return Ok(id);
        }
        let set = entry
            .client
            .ensure_scale_set(
                &entry.config.name,
                &entry.config.runner_group,
                &labels_of(&entry.config),
            )
            .await?;
        *id = Some(set.id);
        Ok(set.id)
    }

    /// Forgets a cached id (the scale set was deleted and must be found again).
    pub async fn forget_id(&self, name: &str) {
        if let Ok(entry) = self.entry(name) {
            *entry.id.lock().await = None;
        }
    }

    /// Mints a JIT runner of the scale set named `name`.
    pub async fn mint(
        &self,
        name: &str,
        runner_name: &str,
        work_folder: &str,
    ) -> Result<JitConfig, ScaleSetError> {
        let client = self.client(name)?;
        let id = self.id(name).await?;
        match client
            .generate_jitconfig(id, runner_name, work_folder)
            .await
        {
            // The scale set was deleted under us: find (or make) it again.
            Err(e) if e.status() == Some(404) => {
                self.forget_id(name).await;
                let id = self.id(name).await?;
                client
                    .generate_jitconfig(id, runner_name, work_folder)
                    .await
            }
            other => other,
        }
    }

    /// Removes a scale-set runner registration, by id or else by name. Gone
    /// already is fine; one running a job is [`ScaleSetError::RunnerBusy`].
    pub async fn remove_runner(
        &self,
        name: &str,
        runner_id: Option<i64>,
        runner_name: &str,
    ) -> Result<(), ScaleSetError> {
        let client = self.client(name)?;
        let id = match runner_id {
            Some(id) if id > 0 => Some(id as u64),
            _ => client.get_runner_by_name(runner_name).await?.map(|r| r.id),
        };
        match id {
            Some(id) => client.remove_runner(id).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_always_a_label() {
        let set = ScaleSetConfig {
            name: "berth-linux".into(),
            github_config_url: "https://github.com/acme".into(),
            runner_group: "Default".into(),
            pool: "linux".into(),
            labels: vec!["BERTH-linux".into(), "gpu".into()],
            min_runners: 0,
            max_runners: 1,
            idle_runners: 0,
            listener: Default::default(),
        };
        assert_eq!(labels_of(&set), ["berth-linux", "gpu"]);
    }
}
