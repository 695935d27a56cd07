//! The shipped policy file and the documentation agree with the code.

use berth_proxies::socket::Policy;

#[test]
fn the_deploy_policy_file_is_the_built_in_default() {
    let text = include_str!("../../../deploy/socket-proxy.policy.toml");
    let parsed = Policy::from_toml(text).expect("deploy/socket-proxy.policy.toml parses");
    assert_eq!(parsed, Policy::default());
}

#[test]
fn the_docs_list_every_built_in_rule() {
    let docs = include_str!("../../../docs/socket-proxy.md");
    for rule in Policy::default().rules {
        let row = format!("| `{}` | ", rule.name);
        assert!(
            docs.contains(&row),
            "docs/socket-proxy.md has no table row for rule `{}`",
            rule.name
        );
        for method in &rule.methods {
            let line = docs.lines().find(|l| l.starts_with(&row)).expect("the row");
            assert!(line.contains(method.as_str()), "{line} lacks {method}");
        }
    }
}
