//! REST conformance: every operation the simulator serves answers bodies
//! that validate against the OpenAPI excerpt's schema for that status
//! (errors included); App JWTs are checked like GitHub; rate-limit headers
//! count down; injected faults are observable.

mod common;

use std::time::Duration;

use common::*;
use ghsim::auth::{KeyPair, now_secs, sign_app_jwt};
use ghsim::{DeliveryFault, FaultKind, FaultRule, JobSpec, WebhookTarget};
use serde_json::{Value, json};

const APPS: &str = "app-installation-auth.openapi.json";
const RUNNERS: &str = "self-hosted-runners.openapi.json";
const HOOK_DELIVERIES: &str = "app-hook-deliveries.openapi.json";

#[tokio::test]
async fn app_endpoints_match_openapi() {
    let sim = start(fast_config()).await;
    let c = http();
    let api = sim.api_url();
    let jwt = app_jwt(&sim);

    let r = c
        .get(format!("{api}/app"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(r, APPS, "/app", "get").await;
    assert_eq!(s, 200);
    assert_eq!(body["id"].as_u64(), Some(sim.app_id()));

    let id = sim.installation_id("acme").unwrap();
    let p = "/app/installations/{installation_id}/access_tokens";
    let r = c
        .post(format!("{api}/app/installations/{id}/access_tokens"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(r, APPS, p, "post").await;
    assert_eq!(s, 201);
    let exp = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = exp - time::OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::minutes(59) && lifetime <= time::Duration::minutes(60),
        "token lifetime {lifetime}"
    );
    // unknown installation -> 404; no JWT -> 401
    let r = c
        .post(format!("{api}/app/installations/999/access_tokens"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(check_openapi(r, APPS, p, "post").await.0, 404);
    let r = c
        .post(format!("{api}/app/installations/{id}/access_tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(check_openapi(r, APPS, p, "post").await.0, 401);

    let p = "/repos/{owner}/{repo}/installation";
    let r = c
        .get(format!("{api}/repos/acme/widgets/installation"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(r, APPS, p, "get").await;
    assert_eq!((s, body["id"].as_u64()), (200, Some(id)));
    let r = c
        .get(format!("{api}/repos/octocat/hello/installation"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(r, APPS, p, "get").await;
    assert_eq!((s, body["target_type"].as_str()), (200, Some("User")));
    let r = c
        .get(format!("{api}/repos/nobody/x/installation"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(check_openapi(r, APPS, p, "get").await.0, 404);

    let r = c
        .get(format!("{api}/orgs/acme/installation"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(r, APPS, "/orgs/{org}/installation", "get").await;
    assert_eq!((s, body["account"]["login"].as_str()), (200, Some("acme")));

    // the validator setup rejects what it must
    let v = openapi_validator(
        RUNNERS,
        "/repos/{owner}/{repo}/actions/runners/{runner_id}",
        "get",
        200,
    )
    .unwrap();
    assert!(!v.is_valid(&json!({"id": 1, "name": "x"})));
    assert!(!v.is_valid(&json!({"id": 1, "name": "x", "os": "linux", "status": "online", "busy": true, "labels": [], "version": 5})));
    assert!(v.is_valid(&json!({"id": 1, "name": "x", "os": "linux", "status": "online", "busy": true, "labels": [], "version": null})));

    // installations list / get (same `installation` schema as the lookups)
    let list: Vec<Value> = c
        .get(format!("{api}/app/installations"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    let v = openapi_validator(APPS, "/repos/{owner}/{repo}/installation", "get", 200).unwrap();
    for inst in &list {
        assert_valid(&v, inst, "listed installation");
    }
    let r = c
        .get(format!("{api}/app/installations/{id}"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("{api}/app/installations/1"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // the root (api.github.com style) serves the same API
    let r = c
        .get(format!("{}/app", sim.base_url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn app_jwt_rules() {
    let sim = start(fast_config()).await;
    let c = http();
    let url = format!(
        "{}/app/installations/{}/access_tokens",
        sim.api_url(),
        sim.installation_id("acme").unwrap()
    );
    let key = KeyPair::from_pem(&sim.app_private_key_pem()).unwrap();
    let other = KeyPair::generate().unwrap();
    let now = now_secs();
    let app = sim.app_id().to_string();
    let status = |jwt: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.post(&url)
                .bearer_auth(jwt)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // good: iss as string id, as number, as client id
    assert_eq!(
        status(sign_app_jwt(&key, &app, now - 60, now + 540).unwrap()).await,
        201
    );
    let numeric = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iss": sim.app_id(), "iat": now - 60, "exp": now + 540}),
        key.encoding_key(),
    )
    .unwrap();
    assert_eq!(status(numeric).await, 201);
    assert_eq!(
        status(sign_app_jwt(&key, &sim.client_id(), now - 60, now + 540).unwrap()).await,
        201
    );
    // wrong key, wrong iss, expired, exp too far after iat, iat in the future, garbage
    assert_eq!(
        status(sign_app_jwt(&other, &app, now - 60, now + 540).unwrap()).await,
        401
    );
    assert_eq!(
        status(sign_app_jwt(&key, "12345", now - 60, now + 540).unwrap()).await,
        401
    );
    assert_eq!(
        status(sign_app_jwt(&key, &app, now - 700, now - 100).unwrap()).await,
        401
    );
    assert_eq!(
        status(sign_app_jwt(&key, &app, now - 60, now + 660).unwrap()).await,
        401
    );
    assert_eq!(
        status(sign_app_jwt(&key, &app, now + 300, now + 600).unwrap()).await,
        401
    );
    assert_eq!(status("not.a.jwt".into()).await, 401);
    // GitHub's message and documentation_url
    let r = c
        .post(&url)
        .bearer_auth(sign_app_jwt(&key, &app, now - 60, now + 660).unwrap())
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("too far in the future")
    );
    assert!(body["documentation_url"].is_string());
    // an installation token is no App JWT, and a JWT is no installation token
    let tok = token(&sim, "acme").await;
    assert_eq!(
        c.get(format!("{}/app", sim.api_url()))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .get(format!(
            "{}/repos/acme/widgets/actions/runners",
            sim.api_url()
        ))
        .bearer_auth(app_jwt(&sim))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // key rotation: a second key is accepted beside the first; once the
    // first is deleted, only the second
    sim.add_app_key(&other.private_pem).unwrap();
    let with = |k: &KeyPair| sign_app_jwt(k, &app, now - 60, now + 540).unwrap();
    assert_eq!(status(with(&other)).await, 201);
    assert_eq!(status(with(&key)).await, 201);
    sim.remove_app_key(&key.private_pem).unwrap();
    assert_eq!(status(with(&key)).await, 401);
    assert_eq!(status(with(&other)).await, 201);
    assert!(sim.remove_app_key(&key.private_pem).is_err());
}

#[tokio::test]
async fn runner_endpoints_match_openapi() {
    let sim = start(fast_config()).await;
    let c = http();
    let api = sim.api_url();
    let tok = token(&sim, "acme").await;

    for (file, path, url) in [
        (
            "generate-jitconfig-repo.openapi.json",
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            format!("{api}/repos/acme/widgets/actions/runners/generate-jitconfig"),
        ),
        (
            "generate-jitconfig-org.openapi.json",
            "/orgs/{org}/actions/runners/generate-jitconfig",
            format!("{api}/orgs/acme/actions/runners/generate-jitconfig"),
        ),
    ] {
        let ok = json!({"name": "r-one", "runner_group_id": 1, "labels": ["self-hosted", "X64", "linux", "gpu"], "work_folder": "_work"});
        let r = c
            .post(&url)
            .bearer_auth(&tok)
            .json(&ok)
            .send()
            .await
            .unwrap();
        let (s, body) = check_openapi(r, file, path, "post").await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["runner"]["name"], "r-one");
        // the same name again: 409
        let r = c
            .post(&url)
            .bearer_auth(&tok)
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(check_openapi(r, file, path, "post").await.0, 409);
        // bad labels / missing fields: 422
        for bad in [
            json!({"name": "x", "runner_group_id": 1, "labels": []}),
            json!({"name": "x", "runner_group_id": 1, "labels": vec!["l"; 101]}),
            json!({"name": "x", "runner_group_id": 1, "labels": [7]}),
            json!({"name": "x", "labels": ["a"]}),
            json!({"runner_group_id": 1, "labels": ["a"]}),
            json!({"name": "x", "runner_group_id": 99, "labels": ["a"]}),
        ] {
            let r = c
                .post(&url)
                .bearer_auth(&tok)
                .json(&bad)
                .send()
                .await
                .unwrap();
            assert_eq!(check_openapi(r, file, path, "post").await.0, 422, "{bad}");
        }
        // another account's org/repo: 404
        let other = url.replace("/acme", "/nobody");
        let r = c
            .post(&other)
            .bearer_auth(&tok)
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(check_openapi(r, file, path, "post").await.0, 404);
    }
    // the user account has no org endpoints
    let utok = token(&sim, "octocat").await;
    let r = c
        .post(format!(
            "{api}/orgs/octocat/actions/runners/generate-jitconfig"
        ))
        .bearer_auth(&utok)
        .json(&json!({"name": "u", "runner_group_id": 1, "labels": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    for (file, kind) in [
        ("registration-token.openapi.json", "registration-token"),
        ("remove-token.openapi.json", "remove-token"),
    ] {
        let r = c
            .post(format!("{api}/repos/acme/widgets/actions/runners/{kind}"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(
            check_openapi(
                r,
                file,
                &format!("/repos/{{owner}}/{{repo}}/actions/runners/{kind}"),
                "post"
            )
            .await
            .0,
            201
        );
        let r = c
            .post(format!("{api}/orgs/acme/actions/runners/{kind}"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(
            check_openapi(
                r,
                file,
                &format!("/orgs/{{org}}/actions/runners/{kind}"),
                "post"
            )
            .await
            .0,
            201
        );
    }

    // list (with pagination), get, delete
    for i in 0..3 {
        mint_jit(&sim, &tok, "acme/widgets", &format!("page-{i}"), &["linux"]).await;
    }
    let r = c
        .get(format!(
            "{api}/repos/acme/widgets/actions/runners?per_page=2&page=1"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let link = r
        .headers()
        .get("link")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        link.contains("rel=\"next\"") && link.contains("page=2"),
        "{link}"
    );
    let (s, body) = check_openapi(r, RUNNERS, "/repos/{owner}/{repo}/actions/runners", "get").await;
    assert_eq!(
        (
            s,
            body["total_count"].as_u64(),
            body["runners"].as_array().unwrap().len()
        ),
        (200, Some(4), 2)
    );
    let r = c
        .get(format!(
            "{api}/repos/acme/widgets/actions/runners?per_page=2&page=2"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (_, body) = check_openapi(r, RUNNERS, "/repos/{owner}/{repo}/actions/runners", "get").await;
    assert_eq!(body["runners"].as_array().unwrap().len(), 2);
    let r = c
        .get(format!(
            "{api}/repos/acme/widgets/actions/runners?name=page-1"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (_, body) = check_openapi(r, RUNNERS, "/repos/{owner}/{repo}/actions/runners", "get").await;
    assert_eq!(body["total_count"], 1);
    let id = body["runners"][0]["id"].as_u64().unwrap();
    let r = c
        .get(format!("{api}/orgs/acme/actions/runners"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (_, body) = check_openapi(r, RUNNERS, "/orgs/{org}/actions/runners", "get").await;
    assert_eq!(body["total_count"], 1, "only the org-level runner");
    let org_id = body["runners"][0]["id"].as_u64().unwrap();

    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners/{id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(
        r,
        RUNNERS,
        "/repos/{owner}/{repo}/actions/runners/{runner_id}",
        "get",
    )
    .await;
    assert_eq!(
        (s, body["status"].as_str(), body["busy"].as_bool()),
        (200, Some("offline"), Some(false))
    );
    let r = c
        .get(format!("{api}/orgs/acme/actions/runners/{org_id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(r, RUNNERS, "/orgs/{org}/actions/runners/{runner_id}", "get")
            .await
            .0,
        200
    );
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners/{org_id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an org runner is not a repo runner");

    let r = c
        .delete(format!("{api}/repos/acme/widgets/actions/runners/{id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(
            r,
            RUNNERS,
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            "delete"
        )
        .await
        .0,
        204
    );
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners/{id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(format!("{api}/orgs/acme/actions/runners/{org_id}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(
            r,
            RUNNERS,
            "/orgs/{org}/actions/runners/{runner_id}",
            "delete"
        )
        .await
        .0,
        204
    );

    // a busy runner cannot be deleted: 422
    let job = sim
        .queue_job(JobSpec::new("acme/widgets", &["busy"], &["sleep 1"]))
        .unwrap();
    let (runner, jit) = mint_jit(&sim, &tok, "acme/widgets", "busy-one", &["busy"]).await;
    let m = ManualRunner::connect(&jit).await;
    let offer = m.poll().await.expect("offered");
    assert_eq!(m.acquire(&offer).await.0, 200);
    let rid = runner["id"].as_u64().unwrap();
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners/{rid}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (_, body) = check_openapi(
        r,
        RUNNERS,
        "/repos/{owner}/{repo}/actions/runners/{runner_id}",
        "get",
    )
    .await;
    assert_eq!(
        (body["status"].as_str(), body["busy"].as_bool()),
        (Some("online"), Some(true))
    );
    let r = c
        .delete(format!("{api}/repos/acme/widgets/actions/runners/{rid}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(
            r,
            RUNNERS,
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            "delete"
        )
        .await
        .0,
        422
    );

    // jobs: get (in progress), list for the run, cancel (202 then 409)
    let jobs = "workflow-jobs.openapi.json";
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/jobs/{}", job.id))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(
        r,
        jobs,
        "/repos/{owner}/{repo}/actions/jobs/{job_id}",
        "get",
    )
    .await;
    assert_eq!(
        (s, body["status"].as_str(), body["runner_name"].as_str()),
        (200, Some("in_progress"), Some("busy-one"))
    );
    let r = c
        .get(format!(
            "{api}/repos/acme/widgets/actions/runs/{}/jobs",
            job.run_id
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (s, body) = check_openapi(
        r,
        jobs,
        "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
        "get",
    )
    .await;
    assert_eq!((s, body["total_count"].as_u64()), (200, Some(1)));
    let r = c
        .get(format!("{api}/repos/acme/gadgets/actions/jobs/{}", job.id))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a job is only visible in its repository");

    let cancel = "job-rerun-cancel.openapi.json";
    let queued = sim
        .queue_job(JobSpec::new("acme/widgets", &["nobody"], &["true"]))
        .unwrap();
    let r = c
        .post(format!(
            "{api}/repos/acme/widgets/actions/runs/{}/cancel",
            queued.run_id
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(
            r,
            cancel,
            "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel",
            "post"
        )
        .await
        .0,
        202
    );
    assert_eq!(
        sim.job(queued.id).unwrap().conclusion.as_deref(),
        Some("cancelled")
    );
    let r = c
        .post(format!(
            "{api}/repos/acme/widgets/actions/runs/{}/cancel",
            queued.run_id
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(
            r,
            cancel,
            "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel",
            "post"
        )
        .await
        .0,
        409
    );
    let r = c
        .get(format!(
            "{api}/repos/acme/widgets/actions/jobs/{}",
            queued.id
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let (_, body) = check_openapi(
        r,
        jobs,
        "/repos/{owner}/{repo}/actions/jobs/{job_id}",
        "get",
    )
    .await;
    assert_eq!(
        (body["status"].as_str(), body["conclusion"].as_str()),
        (Some("completed"), Some("cancelled"))
    );

    // no token / bad token: 401
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners"))
        .header("authorization", "token ghs_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // `token` scheme works as well as `Bearer`
    let r = c
        .get(format!("{api}/repos/acme/widgets/actions/runners"))
        .header("authorization", format!("token {tok}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rate_limit_headers_count_down_per_token() {
    let sim = start(ghsim::SimConfig {
        rate_limit: 5,
        ..fast_config()
    })
    .await;
    let c = http();
    let tok = token(&sim, "acme").await;
    let url = format!("{}/repos/acme/widgets/actions/runners", sim.api_url());
    let mut remaining = Vec::new();
    for _ in 0..6 {
        let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
        let h = |n: &str| r.headers().get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-ratelimit-limit"), "5");
        assert_eq!(h("x-ratelimit-resource"), "core");
        assert!(h("x-ratelimit-reset").parse::<i64>().unwrap() > now_secs());
        remaining.push((
            r.status().as_u16(),
            h("x-ratelimit-remaining").parse::<u32>().unwrap(),
            h("x-ratelimit-used").parse::<u32>().unwrap(),
        ));
    }
    assert_eq!(
        remaining,
        [
            (200, 4, 1),
            (200, 3, 2),
            (200, 2, 3),
            (200, 1, 4),
            (200, 0, 5),
            (403, 0, 5)
        ]
    );
    // another token has its own budget
    let tok2 = token(&sim, "acme").await;
    let r = c.get(&url).bearer_auth(&tok2).send().await.unwrap();
    assert_eq!(r.headers().get("x-ratelimit-remaining").unwrap(), "4");
}

#[tokio::test]
async fn injected_faults_are_observable() {
    let sim = start(fast_config()).await;
    let c = http();
    let tok = token(&sim, "acme").await;
    let url = format!("{}/repos/acme/widgets/actions/runners", sim.api_url());

    // 5xx for the next request only
    sim.add_fault(FaultRule {
        count: Some(1),
        status: Some(503),
        ..FaultRule::new(FaultKind::ServerError)
    });
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        200
    );

    // 429 with Retry-After, only under a path prefix
    sim.add_fault(FaultRule {
        count: Some(1),
        retry_after_secs: Some(7),
        path_prefix: Some("/repos/".into()),
        ..FaultRule::new(FaultKind::TooManyRequests)
    });
    let r = c
        .get(format!("{}/app", sim.api_url()))
        .bearer_auth(app_jwt(&sim))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "other paths are not affected");
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").unwrap(), "7");
    assert!(r.headers().contains_key("x-ratelimit-remaining"));

    // 403 secondary rate limit: GitHub's body and Retry-After
    sim.add_fault(FaultRule {
        count: Some(1),
        retry_after_secs: Some(3),
        ..FaultRule::new(FaultKind::SecondaryRateLimit)
    });
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers().get("retry-after").unwrap(), "3");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert!(
        body["documentation_url"]
            .as_str()
            .unwrap()
            .contains("secondary-rate-limits")
    );

    // slow answers
    sim.add_fault(FaultRule {
        count: Some(1),
        delay_ms: Some(300),
        ..FaultRule::new(FaultKind::Slow)
    });
    let t = std::time::Instant::now();
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(300));

    // a fraction: about half of 200 requests fail (never all, never none)
    sim.add_fault(FaultRule {
        fraction: 0.5,
        ..FaultRule::new(FaultKind::ServerError)
    });
    let mut failed = 0;
    for _ in 0..200 {
        if c.get(&url).bearer_auth(&tok).send().await.unwrap().status() == 502 {
            failed += 1;
        }
    }
    assert!((40..=160).contains(&failed), "{failed} of 200 failed");
    sim.clear_faults();
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        200
    );
    assert!(sim.fault_hits() >= 4 + 40);

    // the same through the HTTP control API
    let r = c
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"kind": "too_many_requests", "count": 1, "retry_after_secs": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers().get("retry-after").unwrap().to_str().unwrap()
        ),
        (429, "2")
    );
    let listed: Value = c
        .get(format!("{}/_sim/faults", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["rules"].as_array().unwrap().len(),
        0,
        "a spent rule is removed"
    );
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(r: &reqwest::Response) -> Option<String> {
    let link = r.headers().get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        (rel.trim() == "rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[tokio::test]
async fn app_hook_deliveries_match_openapi() {
    // Deliveries to a port nobody listens on fail as GitHub's do when the
    // App's server is down: no answer, `status_code` 0.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let sim = start(ghsim::SimConfig {
        webhook: Some(WebhookTarget {
            url: down,
            secret: Some("s3cret".into()),
        }),
        ..fast_config()
    })
    .await;
    let c = http();
    let api = sim.api_url();
    let spec = || JobSpec::new("acme/widgets", &["nobody-has-this"], &["true"]);
    let jobs: Vec<u64> = (0..3).map(|_| sim.queue_job(spec()).unwrap().id).collect();
    // A `drop` fault is an event GitHub never sent: it is not in the log.
    let mut dropped = spec();
    dropped.webhook_fault = Some(DeliveryFault::Drop);
    let dropped = sim.queue_job(dropped).unwrap().id;
    assert!(
        sim.wait_deliveries(Duration::from_secs(10), |d| d.len() == 4)
            .await
    );

    let list = "/app/hook/deliveries";
    // The App's JWT is required.
    let r = c.get(format!("{api}{list}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_valid(
        &component_validator(HOOK_DELIVERIES, "basic-error"),
        &body,
        "401",
    );
    let tok = token(&sim, "acme").await;
    let r = c
        .get(format!("{api}{list}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an installation token is not the App");

    // Newest first, two a page, a `Link` to the next page.
    let jwt = app_jwt(&sim);
    let r = c
        .get(format!("{api}{list}?per_page=2"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let next = next_link(&r).expect("a next page");
    assert!(next.starts_with(&format!("{api}{list}?")), "{next}");
    let (status, first) = check_openapi(r, HOOK_DELIVERIES, list, "get").await;
    assert_eq!(status, 200);
    let r = c.get(&next).bearer_auth(&jwt).send().await.unwrap();
    assert!(next_link(&r).is_none(), "the last page has no next");
    let (_, second) = check_openapi(r, HOOK_DELIVERIES, list, "get").await;
    let items: Vec<Value> = first
        .as_array()
        .unwrap()
        .iter()
        .chain(second.as_array().unwrap())
        .cloned()
        .collect();
    assert_eq!(items.len(), 3, "{items:?}");
    let ids: Vec<u64> = items.iter().map(|i| i["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let recorded = sim.deliveries();
    for item in &items {
        assert_eq!(item["status_code"], 0);
        assert_eq!(item["status"], "failed to connect to host");
        assert_eq!(
            (item["event"].as_str(), item["action"].as_str()),
            (Some("workflow_job"), Some("queued"))
        );
        assert_eq!(item["redelivery"], false);
        assert_eq!(
            item["installation_id"].as_u64(),
            sim.installation_id("acme")
        );
        assert!(item["repository_id"].as_u64().is_some());
        let d = recorded
            .iter()
            .find(|d| d.guid == item["guid"].as_str().unwrap())
            .unwrap();
        assert!(jobs.contains(&d.job_id) && d.job_id != dropped);
    }
    // `per_page` above 100 is 100; a cursor that is none is refused.
    let r = c
        .get(format!("{api}{list}?per_page=1000"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(r, HOOK_DELIVERIES, list, "get")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let r = c
        .get(format!("{api}{list}?cursor=nonsense"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(check_openapi(r, HOOK_DELIVERIES, list, "get").await.0, 400);

    // Redelivery, once the App answers again: a new attempt, same GUID,
    // `redelivery: true`, listed first.
    let (rx, url) = Receiver::start().await;
    sim.set_webhook(Some(WebhookTarget {
        url,
        secret: Some("s3cret".into()),
    }));
    let oldest = items.last().unwrap();
    let attempts = "/app/hook/deliveries/{delivery_id}/attempts";
    let r = c
        .post(format!(
            "{api}/app/hook/deliveries/{}/attempts",
            oldest["id"]
        ))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check_openapi(r, HOOK_DELIVERIES, attempts, "post").await.0,
        202
    );
    let got = rx.wait(1, |_| true).await;
    assert_eq!(
        got[0].header("x-github-delivery"),
        oldest["guid"].as_str().unwrap()
    );
    let r = c
        .get(format!("{api}{list}?per_page=1"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let (_, newest) = check_openapi(r, HOOK_DELIVERIES, list, "get").await;
    let newest = &newest[0];
    assert_eq!(newest["guid"], oldest["guid"]);
    assert_eq!(newest["redelivery"], true);
    assert_eq!(
        (newest["status_code"].as_u64(), newest["status"].as_str()),
        (Some(202), Some("OK"))
    );
    assert!(newest["id"].as_u64() > ids.first().copied());

    // The `status` filter: `success` is 200-399, `failure` 400-599; a
    // delivery that got no answer (0) is in neither.
    for (status, want) in [("success", 1), ("failure", 0)] {
        let r = c
            .get(format!("{api}{list}?status={status}"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        let (_, page) = check_openapi(r, HOOK_DELIVERIES, list, "get").await;
        assert_eq!(page.as_array().unwrap().len(), want, "{status}: {page}");
    }
    let r = c
        .get(format!("{api}{list}?status=sideways"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(check_openapi(r, HOOK_DELIVERIES, list, "get").await.0, 422);

    // Unknown ids (the dropped delivery's among them) are 404; no JWT is 401.
    let dropped_seq = sim
        .deliveries()
        .iter()
        .find(|d| d.job_id == dropped)
        .unwrap()
        .seq;
    for id in [dropped_seq, 999_999] {
        let r = c
            .post(format!("{api}/app/hook/deliveries/{id}/attempts"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id}");
        let body: Value = r.json().await.unwrap();
        assert_valid(
            &component_validator(HOOK_DELIVERIES, "basic-error"),
            &body,
            "404",
        );
    }
    let r = c
        .post(format!(
            "{api}/app/hook/deliveries/{}/attempts",
            oldest["id"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(rx.all().len(), 1, "refused redeliveries sent nothing");
}
