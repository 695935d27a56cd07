//! Pointing workers at the egress proxy (`[docker] egress_proxy`): the
//! proxy variables every worker gets. The network side (an internal
//! network, so the proxy is the only way out) is
//! [`Controller::ensure_network_with`](super::Controller::ensure_network_with).

use std::collections::BTreeMap;

use crate::config::DockerConfig;

/// The proxy variables of a worker when an egress proxy is configured
/// (none otherwise): `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`, in upper
/// and lower case, since tools read one or the other (curl and Go's
/// `net/http` read the lower-case ones; the actions runner reads both).
/// Not secrets: the configuration refuses a proxy URL with credentials.
pub fn worker_env(docker: &DockerConfig) -> BTreeMap<String, String> {
    let Some(proxy) = &docker.egress_proxy else {
        return BTreeMap::new();
    };
    let no_proxy = docker.no_proxy.join(",");
    let mut env = BTreeMap::new();
    for (name, value) in [
        ("HTTP_PROXY", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", no_proxy.as_str()),
    ] {
        env.insert(name.to_owned(), value.to_owned());
        env.insert(name.to_ascii_lowercase(), value.to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_no_variables() {
        assert!(worker_env(&DockerConfig::default()).is_empty());
    }

    #[test]
    fn both_cases_of_each_variable() {
        let docker = DockerConfig {
            egress_proxy: Some("http://berth-egress:3128".into()),
            no_proxy: vec!["localhost".into(), "cache.internal".into()],
            ..DockerConfig::default()
        };
        let env = worker_env(&docker);
        assert_eq!(env.len(), 6);
        for name in ["HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy"] {
            assert_eq!(env[name], "http://berth-egress:3128");
        }
        assert_eq!(env["NO_PROXY"], "localhost,cache.internal");
        assert_eq!(env["no_proxy"], "localhost,cache.internal");
    }
}
