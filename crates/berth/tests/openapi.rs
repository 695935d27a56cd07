//! berth's OpenAPI description (`GET /v1/openapi.json`) stays true to the
//! code: it describes every route the router has and no other, and real
//! answers of a live `berth serve` validate against its schemas, down to the
//! job object's exact set of fields. (scripts/api-fuzz then fuzzes the live
//! server from the same description with schemathesis.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use berth::intake::webhook::sign;
use berth::store::JobState;
use common::{Berth, WEBHOOK_SECRET, World};
use serde_json::{Value, json};

fn spec() -> Value {
    serde_json::from_str(berth::api::OPENAPI_JSON).expect("openapi.json is JSON")
}

/// A validator for `#/components/schemas/NAME`, with the whole description
/// as the root so that its `$ref`s resolve.
fn validator(name: &str) -> jsonschema::Validator {
    let mut root = spec();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

fn assert_valid(name: &str, instance: &Value) {
    let v = validator(name);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid {name}:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

fn assert_invalid(name: &str, instance: &Value) {
    assert!(
        !validator(name).is_valid(instance),
        "{name} accepts {instance}"
    );
}

/// `(path, method)` of every `.route(…)` in the API's router source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let body = source
        .split("pub fn router(")
        .nth(1)
        .expect("the router function")
        .split(".with_state(")
        .next()
        .unwrap();
    let mut routes = BTreeSet::new();
    for call in body.split(".route(").skip(1) {
        let path = call.split('"').nth(1).expect("a route path literal");
        for method in ["get", "post", "put", "delete", "patch"] {
            let mut at = 0;
            while let Some(found) = call[at..].find(&format!("{method}(")) {
                let start = at + found;
                let before = call[..start].chars().last().unwrap_or(' ');
                if !(before.is_alphanumeric() || before == '_') {
                    routes.insert((path.to_string(), method.to_string()));
                }
                at = start + method.len();
            }
        }
    }
    routes
}

#[test]
fn every_route_is_described_and_nothing_else() {
    let spec = spec();
    let mut described = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert((path.clone(), method.clone()));
        }
    }
    let routes = routes_in_source();
    assert!(routes.len() >= 12, "{routes:?}");
    let undescribed: Vec<_> = routes.difference(&described).collect();
    let stale: Vec<_> = described.difference(&routes).collect();
    assert!(
        undescribed.is_empty() && stale.is_empty(),
        "routes missing from openapi.json: {undescribed:?}; described but not routed: {stale:?}"
    );
}

/// The lines of a section of a reference page, after its heading up to the
/// next `##` or `###` heading.
fn section(text: &str, heading: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect();
    Some(body.join("\n"))
}

/// Whether `text` has `number` standing alone (not inside a longer number).
fn has_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(at, _)| {
        let before = text[..at].chars().last();
        let after = text[at + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// docs/reference/http-api.md, the readable summary, has a section for
/// every endpoint the description has, naming its scopes and every status
/// the endpoint may answer.
#[test]
fn every_described_endpoint_has_its_section_in_the_http_api_reference() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/reference/http-api.md"
    ))
    .unwrap();
    let spec = spec();
    let mut missing = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let heading = format!("### `{} {path}`", method.to_ascii_uppercase());
            let Some(text) = section(&doc, &heading) else {
                missing.push(format!("the section \"{heading}\""));
                continue;
            };
            let scope_line = text
                .lines()
                .find(|l| l.starts_with("**Scope:**"))
                .unwrap_or_default();
            let security = op.get("security").unwrap_or(&spec["security"]);
            let requirements = security.as_array().unwrap();
            let public = requirements.is_empty()
                || requirements
                    .iter()
                    .any(|r| r.as_object().unwrap().is_empty());
            if public && !scope_line.contains("none") {
                missing.push(format!("\"none\" in the scope of {heading}"));
            }
            for requirement in requirements {
                for scopes in requirement.as_object().unwrap().values() {
                    for scope in scopes.as_array().unwrap() {
                        let scope = scope.as_str().unwrap();
                        if !scope_line.contains(&format!("`{scope}`")) {
                            missing.push(format!("`{scope}` in the scope of {heading}"));
                        }
                    }
                }
            }
            for status in op["responses"].as_object().unwrap().keys() {
                if !has_number(&text, status) {
                    missing.push(format!("status {status} in {heading}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference/http-api.md lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_description_is_openapi_3_1_with_the_bearer_scheme_and_scopes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["bearer"]["description"],
        })
    );
    let scope = |path: &str, method: &str| spec["paths"][path][method]["security"].clone();
    assert_eq!(
        scope("/v1/jobs/delegate", "post"),
        json!([{"bearer": ["delegate"]}])
    );
    assert_eq!(scope("/v1/jobs", "get"), json!([{"bearer": ["read"]}]));
    assert_eq!(
        scope("/v1/jobs/{id}/cancel", "post"),
        json!([{"bearer": ["admin"]}])
    );
    assert_eq!(scope("/v1/webhooks/github", "post"), json!([]));
    assert_eq!(scope("/v1/openapi.json", "get"), json!([]));
    // Every operation answers its errors as `{"error": …}` and documents 401
    // wherever a token is needed.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            if schemes.contains(&"dashboardCookie") {
                // Pages send a browser without a token to the sign-in form.
                assert!(
                    op["responses"]["303"].is_object(),
                    "{method} {path}: no 303"
                );
            } else if schemes.contains(&"bearer") {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                // axum's own answers to a request that is not a form.
                let axum_form = path == "/login" && (status == "415" || status == "422");
                if status.starts_with('4') && !axum_form {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn github_webhook_payloads_fit_the_described_event() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/webhooks/examples"
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let payload: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_valid("WorkflowJobEvent", &payload);
        seen += 1;
    }
    assert!(seen >= 5);
    assert_invalid("WorkflowJobEvent", &json!({"action": "queued"}));
}

#[test]
fn the_delegate_schema_says_what_intake_refuses() {
    let ok =
        json!({"repository": "acme/widgets", "github_job_id": 1, "run_id": 2, "labels": ["linux"]});
    assert_valid("DelegateRequest", &ok);
    for (field, bad) in [
        ("repository", json!("widgets")),
        ("github_job_id", json!(0)),
        ("labels", json!([])),
        ("labels", json!([" \t"])),
        ("labels", json!(["a\u{0}b"])),
        ("workflow", json!("a\u{0}")),
        ("unknown", json!(1)),
    ] {
        let mut v = ok.clone();
        v[field] = bad;
        assert_invalid("DelegateRequest", &v);
    }
}

async fn get(berth: &Berth, path: &str) -> (u16, Value) {
    let r = berth
        .http()
        .get(format!("{}{path}", berth.url))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_answers_match_the_description() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("max_runners = 4")).await;

    // The description is served, as checked in, without a token.
    let served = reqwest::get(format!("{}/v1/openapi.json", berth.url))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(served.json::<Value>().await.unwrap(), spec());

    // A job that ran, and one delegated and cancelled: most fields are set.
    let gh_job = world.queue(&["echo described"]);
    let done = berth.wait_terminal(gh_job, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    let (status, detail) = get(&berth, &format!("/v1/jobs/{}", done.id)).await;
    assert_eq!(status, 200);
    assert_valid("JobDetail", &detail);
    // One job is the job's own fields and its security events.
    let mut job = detail.clone();
    assert!(
        job.as_object_mut()
            .unwrap()
            .remove("security_events")
            .is_some()
    );
    assert_valid("Job", &job);
    let detail_fields: BTreeSet<String> =
        spec()["components"]["schemas"]["JobDetail"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
    // The schema lists exactly the fields a job serializes, all required.
    let fields: BTreeSet<String> = job.as_object().unwrap().keys().cloned().collect();
    let mut with_events = fields.clone();
    with_events.insert("security_events".into());
    assert_eq!(detail_fields, with_events);
    let described: BTreeSet<String> = spec()["components"]["schemas"]["Job"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(fields, described);
    let required: BTreeSet<String> = spec()["components"]["schemas"]["Job"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(required, described);

    let delegated = berth
        .http()
        .post(format!("{}/v1/jobs/delegate", berth.url))
        .bearer_auth(&berth.admin_token)
        .json(&json!({
            "repository": "acme/widgets", "github_job_id": 987_654, "run_id": 3,
            "labels": ["self-hosted", "linux"], "workflow": "ci", "pool": "linux",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(delegated.status(), 202);
    let delegated: Value = delegated.json().await.unwrap();
    assert_valid("Job", &delegated);
    let cancelled = berth
        .http()
        .post(format!(
            "{}/v1/jobs/{}/cancel",
            berth.url,
            delegated["id"].as_str().unwrap()
        ))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    assert_valid("Job", &cancelled.json().await.unwrap());

    let (status, list) = get(&berth, "/v1/jobs?state=completed,queued,cancelled&limit=10").await;
    assert_eq!(status, 200);
    assert_valid("JobList", &list);
    assert!(!list["jobs"].as_array().unwrap().is_empty());

    let (status, pools) = get(&berth, "/v1/pools").await;
    assert_eq!(status, 200);
    assert_valid("PoolList", &pools);
    assert_eq!(pools["pools"][0]["name"], "linux");
    assert_eq!(pools["pools"][0]["scope"], "org:acme");
    assert_eq!(pools["pools"][0]["max_runners"], 4);

    // Tokens: a dashboard session too, so `session_of` is set on one.
    let login = berth
        .http()
        .post(format!("{}/login", berth.url))
        .form(&[("token", berth.admin_token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success() || login.status().is_redirection());
    let (status, tokens) = get(&berth, "/v1/tokens?sessions=true").await;
    assert_eq!(status, 200);
    assert_valid("TokenList", &tokens);
    let listed = tokens["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{tokens}");
    assert!(
        listed.iter().any(|t| t["session_of"].is_string()),
        "{tokens}"
    );
    let fields: BTreeSet<String> = listed[0].as_object().unwrap().keys().cloned().collect();
    let described: BTreeSet<String> = spec()["components"]["schemas"]["Token"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        fields, described,
        "the token schema lists exactly its fields"
    );
    let (throwaway, row) = berth::api::auth::create_token(
        berth.store(),
        "throwaway",
        berth::store::ApiTokenScope::Read,
    )
    .await
    .unwrap();
    let revoke = |id: String| {
        berth
            .http()
            .post(format!("{}/v1/tokens/{id}/revoke", berth.url))
            .bearer_auth(&berth.admin_token)
            .send()
    };
    let revoked = revoke(row.id.to_string()).await.unwrap();
    assert_eq!(revoked.status(), 200);
    let revoked: Value = revoked.json().await.unwrap();
    assert_valid("Token", &revoked);
    assert!(revoked["revoked_at"].is_string());
    for (id, status) in [
        ("not-a-uuid".to_string(), 400),
        (uuid::Uuid::now_v7().to_string(), 404),
    ] {
        let r = revoke(id.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{id}");
        assert_valid("Error", &r.json().await.unwrap());
    }
    let refused = berth
        .http()
        .get(format!("{}/v1/jobs", berth.url))
        .bearer_auth(&throwaway)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_valid("Error", &refused.json().await.unwrap());

    let (status, health) = get(&berth, "/healthz").await;
    assert_eq!(status, 200);
    assert_valid("Health", &health);
    let (status, ready) = get(&berth, "/readyz").await;
    assert_eq!(status, 200);
    assert_valid("Readiness", &ready);

    // Hosts and the fleet; the schema lists exactly the fields a host
    // serializes, all required.
    let (status, hosts) = get(&berth, "/v1/hosts").await;
    assert_eq!(status, 200);
    assert_valid("HostList", &hosts);
    let fields: BTreeSet<String> = hosts["hosts"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let host_schema = &spec()["components"]["schemas"]["Host"];
    let described: BTreeSet<String> = host_schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(fields, described);
    let required: BTreeSet<String> = host_schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(required, described);
    let (status, host) = get(&berth, "/v1/hosts/default").await;
    assert_eq!(status, 200);
    assert_valid("Host", &host);
    let (status, fleet) = get(&berth, "/v1/fleet").await;
    assert_eq!(status, 200);
    assert_valid("Fleet", &fleet);
    for (action, admin) in [
        ("cordon", "cordoned"),
        ("drain", "draining"),
        ("uncordon", "active"),
    ] {
        let r = berth
            .http()
            .post(format!("{}/v1/hosts/default/{action}", berth.url))
            .bearer_auth(&berth.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{action}");
        let host: Value = r.json().await.unwrap();
        assert_valid("Host", &host);
        assert_eq!(host["admin"], admin);
    }

    // Errors, including those axum would answer in plain text.
    for (path, status) in [
        ("/v1/jobs/not-a-uuid", 400),
        ("/v1/jobs/00000000-0000-0000-0000-000000000000", 404),
        ("/v1/jobs?limit=lots", 400),
        ("/v1/jobs?limit=0", 400),
        ("/v1/jobs?state=sleeping", 400),
        ("/v1/jobs?pool=a%00b", 400),
        ("/v1/tokens?sessions=maybe", 400),
        ("/v1/hosts/not%20a%20host", 400),
        ("/v1/hosts/nowhere", 404),
        (&format!("/v1/jobs/{}/logs?follow=maybe", done.id), 400),
    ] {
        let (got, body) = get(&berth, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_valid("Error", &body);
    }
    let anonymous = reqwest::get(format!("{}/v1/jobs", berth.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_valid("Error", &anonymous.json().await.unwrap());

    // Delegate: NUL in text (PostgreSQL would refuse it) is a bad request,
    // and ids written as whole floats are integers, as JSON Schema says.
    let delegate = |body: Value| {
        berth
            .http()
            .post(format!("{}/v1/jobs/delegate", berth.url))
            .bearer_auth(&berth.admin_token)
            .json(&body)
            .send()
    };
    let r = delegate(
        json!({"repository": "acme/widgets", "github_job_id": 5, "run_id": 1,
        "labels": ["linux"], "workflow": "a\u{0}b"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_valid("Error", &r.json().await.unwrap());
    let r = delegate(
        json!({"repository": "acme/widgets", "github_job_id": 6.0, "run_id": 1.0,
        "labels": ["self-hosted", "linux"], "pool": "linux"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["github_job_id"], 6);
    let r = delegate(
        json!({"repository": "acme/widgets", "github_job_id": 6.5, "run_id": 1,
        "labels": ["linux"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Webhook outcomes.
    let webhook = |event: &'static str, body: Vec<u8>| {
        let signature = sign(WEBHOOK_SECRET.as_bytes(), &body);
        berth
            .http()
            .post(format!("{}/v1/webhooks/github", berth.url))
            .header("X-GitHub-Event", event)
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
    };
    let pong = webhook("ping", b"{\"zen\": \"hi\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(pong.status(), 200);
    let pong: Value = pong.json().await.unwrap();
    assert_eq!(pong, json!({"outcome": "pong"}));
    assert_valid("WebhookOutcome", &pong);
    let ignored = webhook("issues", b"{}".to_vec()).await.unwrap();
    assert_eq!(ignored.status(), 202);
    assert_valid("WebhookOutcome", &ignored.json().await.unwrap());
    let event = json!({"action": "queued", "workflow_job": {"id": 31337, "run_id": 9,
        "labels": ["self-hosted", "linux"]}, "repository": {"full_name": "acme/widgets"}});
    let queued = webhook("workflow_job", serde_json::to_vec(&event).unwrap())
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["outcome"], "queued");
    assert_valid("WebhookOutcome", &queued);
    let again = webhook("workflow_job", serde_json::to_vec(&event).unwrap())
        .await
        .unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["outcome"], "duplicate");
    assert_valid("WebhookOutcome", &again);
    let nul = json!({"action": "queued", "workflow_job": {"id": 31338, "run_id": 9,
        "labels": ["linux\u{0}"]}, "repository": {"full_name": "acme/widgets"}});
    let r = webhook("workflow_job", serde_json::to_vec(&nul).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_valid("Error", &r.json().await.unwrap());
    // Over 25 MiB: 413, as JSON.
    let huge = berth
        .http()
        .post(format!("{}/v1/webhooks/github", berth.url))
        .header("X-GitHub-Event", "workflow_job")
        .body(vec![b' '; 25 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_valid("Error", &huge.json().await.unwrap());
    berth.stop().await;
}
