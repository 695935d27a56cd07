//! What berth does about an alert: `[security]` in the configuration.
//!
//! ```toml
//! [security]
//! kill_at = "critical"          # without a matching policy: kill at this
//!                               # priority and above, alert below
//! [[security.policy]]
//! rule = "Berth network tool*"  # `*` matches any run of characters
//! action = "alert"
//! [[security.policy]]
//! rule = "*"
//! priority = "error"            # this priority and above only
//! action = "kill"
//! ```
//!
//! The policies are tried in order and the first that matches decides, so
//! exceptions go first, as in a firewall.

use serde::Deserialize;

use super::falco::Priority;

/// What to do about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop and remove the job's containers at once, fail the job with
    /// `security: <rule>`, remove its runner registration (and cancel the
    /// workflow run where the pool says so).
    Kill,
    /// Record the alert with the job; the job goes on.
    Alert,
    /// Count it, nothing else.
    Ignore,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Alert => "alert",
            Action::Ignore => "ignore",
        }
    }
}

/// `[[security.policy]]`: one exception to the default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// The Falco rule name, with `*` matching any run of characters.
    pub rule: String,
    /// Only alerts of this priority or above match (any, when unset).
    #[serde(default)]
    pub priority: Option<Priority>,
    pub action: Action,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Tried in order; the first matching one decides.
    #[serde(rename = "policy")]
    pub policies: Vec<PolicyRule>,
    /// Without a matching policy: `kill` at this priority and above,
    /// `alert` below.
    pub kill_at: Priority,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            kill_at: Priority::Critical,
        }
    }
}

impl SecurityConfig {
    /// The action for an alert of `rule` at `priority`.
    pub fn action(&self, rule: &str, priority: Priority) -> Action {
        self.policies
            .iter()
            .find(|p| {
                crate::names::glob(&p.rule, rule) && p.priority.is_none_or(|min| priority >= min)
            })
            .map(|p| p.action)
            .unwrap_or(if priority >= self.kill_at {
                Action::Kill
            } else {
                Action::Alert
            })
    }

    /// Problems for `berth config check`, each with its key.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            if p.rule.trim().is_empty() {
                problems.push((
                    format!("security.policy[{i}].rule"),
                    "is empty; use `*` for every rule".to_string(),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> SecurityConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_default_kills_at_critical_and_above_and_alerts_below() {
        let c = SecurityConfig::default();
        assert_eq!(c.action("any", Priority::Critical), Action::Kill);
        assert_eq!(c.action("any", Priority::Emergency), Action::Kill);
        assert_eq!(c.action("any", Priority::Error), Action::Alert);
        assert_eq!(c.action("any", Priority::Debug), Action::Alert);
    }

    #[test]
    fn the_first_matching_policy_decides() {
        let c = config(
            r#"
kill_at = "alert"
[[policy]]
rule = "Berth network tool*"
action = "ignore"
[[policy]]
rule = "Berth *"
priority = "error"
action = "kill"
"#,
        );
        assert_eq!(
            c.action("Berth network tool in worker", Priority::Critical),
            Action::Ignore
        );
        assert_eq!(
            c.action("Berth crypto mining", Priority::Error),
            Action::Kill
        );
        // Below the policy's priority: the default, which kills only at Alert.
        assert_eq!(
            c.action("Berth crypto mining", Priority::Warning),
            Action::Alert
        );
        assert_eq!(c.action("Other", Priority::Critical), Action::Alert);
        assert_eq!(c.action("Other", Priority::Alert), Action::Kill);
    }

    #[test]
    fn bad_values_are_refused_when_read() {
        for bad in [
            "[[policy]]\nrule = \"x\"\naction = \"explode\"\n",
            "[[policy]]\nrule = \"x\"\naction = \"kill\"\npriority = \"dire\"\n",
            "kill_at = \"high\"\n",
            "[[policy]]\nrule = \"x\"\n",
        ] {
            assert!(toml::from_str::<SecurityConfig>(bad).is_err(), "{bad}");
        }
        let empty = config("[[policy]]\nrule = \" \"\naction = \"kill\"\n");
        assert_eq!(empty.problems()[0].0, "security.policy[0].rule");
    }
}
