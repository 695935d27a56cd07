//! GitHub-shaped JSON objects (users, organisations, repositories,
//! installations, the App, runners, workflow jobs) shared by the REST answers
//! and the webhook payloads, so both agree field for field with the OpenAPI
//! description and the octokit webhook schemas.

use serde_json::{Value, json};

use crate::config::AccountKind;
use crate::sim::Shared;
use crate::state::{Account, Job, Repo, Runner, World, ts};

/// A node id in GitHub's old base64 style.
pub fn node_id(kind: &str, id: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("0{}:{kind}{id}", kind.len()))
}

/// A `simple-user` / webhook `user` object.
pub fn user(s: &Shared, login: &str, id: u64, kind: &str) -> Value {
    let api = s.api_url();
    let web = s.base_url();
    let users = if kind == "Organization" {
        "orgs"
    } else {
        "users"
    };
    json!({
        "login": login,
        "id": id,
        "node_id": node_id(if kind == "Organization" { "Organization" } else { "User" }, id),
        "avatar_url": format!("{web}/avatars/u/{id}?v=4"),
        "gravatar_id": "",
        "url": format!("{api}/{users}/{login}"),
        "html_url": format!("{web}/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
        "organizations_url": format!("{api}/users/{login}/orgs"),
        "repos_url": format!("{api}/{users}/{login}/repos"),
        "events_url": format!("{api}/{users}/{login}/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/{login}/received_events"),
        "type": kind,
        "site_admin": false,
    })
}

/// The user object of an account.
pub fn account_user(s: &Shared, a: &Account) -> Value {
    let kind = match a.kind {
        AccountKind::Organization => "Organization",
        AccountKind::User => "User",
    };
    user(s, &a.login, a.id, kind)
}

/// The person who "pushed" the simulated commits.
pub fn sender(s: &Shared) -> Value {
    user(s, "octocat", 583_231, "User")
}

/// A webhook `organization` object.
pub fn organization(s: &Shared, a: &Account) -> Value {
    let api = s.api_url();
    let web = s.base_url();
    let login = &a.login;
    json!({
        "login": login,
        "id": a.id,
        "node_id": node_id("Organization", a.id),
        "url": format!("{api}/orgs/{login}"),
        "html_url": format!("{web}/{login}"),
        "repos_url": format!("{api}/orgs/{login}/repos"),
        "events_url": format!("{api}/orgs/{login}/events"),
        "hooks_url": format!("{api}/orgs/{login}/hooks"),
        "issues_url": format!("{api}/orgs/{login}/issues"),
        "members_url": format!("{api}/orgs/{login}/members{{/member}}"),
        "public_members_url": format!("{api}/orgs/{login}/public_members{{/member}}"),
        "avatar_url": format!("{web}/avatars/u/{}?v=4", a.id),
        "description": null,
    })
}

/// A full `repository` object (webhook schema and REST `repository`).
pub fn repository(s: &Shared, a: &Account, r: &Repo) -> Value {
    let api = s.api_url();
    let web = s.base_url();
    let full = format!("{}/{}", a.login, r.name);
    let u = format!("{api}/repos/{full}");
    let created = ts(r.created_at);
    let host = web
        .split("://")
        .nth(1)
        .unwrap_or("localhost")
        .trim_end_matches('/');
    json!({
        "id": r.id,
        "node_id": node_id("Repository", r.id),
        "name": r.name,
        "full_name": full,
        "private": false,
        "owner": account_user(s, a),
        "html_url": format!("{web}/{full}"),
        "description": null,
        "fork": false,
        "url": u,
        "forks_url": format!("{u}/forks"),
        "keys_url": format!("{u}/keys{{/key_id}}"),
        "collaborators_url": format!("{u}/collaborators{{/collaborator}}"),
        "teams_url": format!("{u}/teams"),
        "hooks_url": format!("{u}/hooks"),
        "issue_events_url": format!("{u}/issues/events{{/number}}"),
        "events_url": format!("{u}/events"),
        "assignees_url": format!("{u}/assignees{{/user}}"),
        "branches_url": format!("{u}/branches{{/branch}}"),
        "tags_url": format!("{u}/tags"),
        "blobs_url": format!("{u}/git/blobs{{/sha}}"),
        "git_tags_url": format!("{u}/git/tags{{/sha}}"),
        "git_refs_url": format!("{u}/git/refs{{/sha}}"),
        "trees_url": format!("{u}/git/trees{{/sha}}"),
        "statuses_url": format!("{u}/statuses/{{sha}}"),
        "languages_url": format!("{u}/languages"),
        "stargazers_url": format!("{u}/stargazers"),
        "contributors_url": format!("{u}/contributors"),
        "subscribers_url": format!("{u}/subscribers"),
        "subscription_url": format!("{u}/subscription"),
        "commits_url": format!("{u}/commits{{/sha}}"),
        "git_commits_url": format!("{u}/git/commits{{/sha}}"),
        "comments_url": format!("{u}/comments{{/number}}"),
        "issue_comment_url": format!("{u}/issues/comments{{/number}}"),
        "contents_url": format!("{u}/contents/{{+path}}"),
        "compare_url": format!("{u}/compare/{{base}}...{{head}}"),
        "merges_url": format!("{u}/merges"),
        "archive_url": format!("{u}/{{archive_format}}{{/ref}}"),
        "downloads_url": format!("{u}/downloads"),
        "issues_url": format!("{u}/issues{{/number}}"),
        "pulls_url": format!("{u}/pulls{{/number}}"),
        "milestones_url": format!("{u}/milestones{{/number}}"),
        "notifications_url": format!("{u}/notifications{{?since,all,participating}}"),
        "labels_url": format!("{u}/labels{{/name}}"),
        "releases_url": format!("{u}/releases{{/id}}"),
        "deployments_url": format!("{u}/deployments"),
        "created_at": created,
        "updated_at": created,
        "pushed_at": created,
        "git_url": format!("git://{host}/{full}.git"),
        "ssh_url": format!("git@{host}:{full}.git"),
        "clone_url": format!("{web}/{full}.git"),
        "svn_url": format!("{web}/{full}"),
        "homepage": null,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": null,
        "has_issues": true,
        "has_projects": true,
        "has_downloads": true,
        "has_wiki": true,
        "has_pages": false,
        "has_discussions": false,
        "forks_count": 0,
        "mirror_url": null,
        "archived": false,
        "disabled": false,
        "open_issues_count": 0,
        "license": null,
        "forks": 0,
        "open_issues": 0,
        "watchers": 0,
        "default_branch": "main",
        "is_template": false,
        "web_commit_signoff_required": false,
        "topics": [],
        "visibility": "public",
        "custom_properties": {},
    })
}

/// Permissions the simulated App has.
pub fn app_permissions() -> Value {
    json!({
        "actions": "write",
        "administration": "write",
        "metadata": "read",
        "organization_self_hosted_runners": "write",
    })
}

/// The App (`integration`).
pub fn app(s: &Shared) -> Value {
    let c = &s.cfg;
    let web = s.base_url();
    let owner = user(s, "berth-dev", 9_000_001, "User");
    json!({
        "id": c.app_id,
        "slug": c.app_slug,
        "node_id": node_id("Integration", c.app_id),
        "client_id": c.client_id,
        "owner": owner,
        "name": c.app_name,
        "description": "berth's simulated GitHub App",
        "external_url": format!("{web}/berth"),
        "html_url": format!("{web}/apps/{}", c.app_slug),
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "permissions": app_permissions(),
        "events": ["workflow_job"],
        "installations_count": c.accounts.len(),
    })
}

/// An `installation` object.
pub fn installation(s: &Shared, a: &Account) -> Value {
    let api = s.api_url();
    let web = s.base_url();
    let target_type = match a.kind {
        AccountKind::Organization => "Organization",
        AccountKind::User => "User",
    };
    let html = match a.kind {
        AccountKind::Organization => format!(
            "{web}/organizations/{}/settings/installations/{}",
            a.login, a.installation_id
        ),
        AccountKind::User => format!("{web}/settings/installations/{}", a.installation_id),
    };
    json!({
        "id": a.installation_id,
        "account": account_user(s, a),
        "repository_selection": "all",
        "access_tokens_url": format!("{api}/app/installations/{}/access_tokens", a.installation_id),
        "repositories_url": format!("{api}/installation/repositories"),
        "html_url": html,
        "app_id": s.cfg.app_id,
        "client_id": s.cfg.client_id,
        "target_id": a.id,
        "target_type": target_type,
        "permissions": app_permissions(),
        "events": ["workflow_job"],
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "app_slug": s.cfg.app_slug,
        "suspended_by": null,
        "suspended_at": null,
    })
}

/// Labels GitHub marks read-only (set by the runner itself).
fn label_type(name: &str) -> &'static str {
    match name.to_ascii_lowercase().as_str() {
        "self-hosted" | "x64" | "arm64" | "arm" | "linux" | "macos" | "windows" => "read-only",
        _ => "custom",
    }
}

/// A REST `runner` object.
pub fn runner(w: &mut World, r: &Runner, idle: std::time::Duration) -> Value {
    let labels: Vec<Value> = r
        .labels
        .iter()
        .map(|l| json!({"id": w.label_id(l), "name": l, "type": label_type(l)}))
        .collect();
    let online = r.online(idle);
    json!({
        "id": r.id,
        "runner_group_id": r.group_id,
        "name": r.name,
        "os": if r.version.is_some() { "Linux" } else { "unknown" },
        "status": if online { "online" } else { "offline" },
        "busy": r.job_id.is_some(),
        "labels": labels,
        "ephemeral": r.ephemeral,
        "version": r.version,
    })
}

/// The steps of a job as GitHub shows them (none before it started).
fn steps(job: &Job) -> Vec<Value> {
    if job.started_at.is_none() {
        return Vec::new();
    }
    job.step_states
        .iter()
        .map(|st| {
            json!({
                "name": st.name,
                "status": st.status,
                "conclusion": st.conclusion,
                "number": st.number,
                "started_at": st.started_at,
                "completed_at": st.completed_at,
            })
        })
        .collect()
}

/// A `workflow_job` (webhook) / `job` (REST) object. The two share every
/// field the webhook schema allows; REST adds nothing required.
pub fn workflow_job(s: &Shared, job: &Job) -> Value {
    let api = s.api_url();
    let web = s.base_url();
    let full = format!("{}/{}", job.owner, job.repo);
    let created = ts(job.created_at);
    json!({
        "id": job.id,
        "run_id": job.run_id,
        "workflow_name": job.workflow_name,
        "head_branch": job.head_branch,
        "run_url": format!("{api}/repos/{full}/actions/runs/{}", job.run_id),
        "run_attempt": job.run_attempt,
        "node_id": node_id("CheckRun", job.id),
        "head_sha": job.head_sha,
        "url": format!("{api}/repos/{full}/actions/jobs/{}", job.id),
        "html_url": format!("{web}/{full}/actions/runs/{}/job/{}", job.run_id, job.id),
        "status": job.status.as_str(),
        "conclusion": job.conclusion,
        "created_at": created,
        "started_at": job.started_at.map(ts).unwrap_or_else(|| created.clone()),
        "completed_at": job.completed_at.map(ts),
        "name": job.name,
        "steps": steps(job),
        "check_run_url": format!("{api}/repos/{full}/check-runs/{}", job.id),
        "labels": job.labels,
        "runner_id": job.runner_id,
        "runner_name": job.runner_name,
        "runner_group_id": job.runner_group_id,
        "runner_group_name": job.runner_group_name,
    })
}
