//! The Grafana dashboard and the Prometheus rules in `deploy/` name only
//! metrics that a live `berth serve` exports, the metrics the issue asks
//! for are there from the first scrape, every family exported (by
//! `berth serve` and by the two proxies) is in docs/reference/metrics.md,
//! and every alert has its runbook in docs/observability.md.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use berth::store::{ApiTokenScope, JobState};
use common::{Berth, World};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/berth-dashboard.json"
);
/// Series that appear with the first of what they count: their labels
/// name what came (GitHub's answer, Falco's rule).
const LABELLED_BY_WHAT_COMES: [&str; 2] = [
    "berth_github_api_requests_total",
    "berth_security_events_total",
];

const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/prometheus/alerts.yml"
);

/// Every `berth_…` identifier in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("berth_") {
        let start = at + found;
        let mut end = start + "berth_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !ident(bytes[start - 1]) {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The sample names of a Prometheus text exposition.
fn exposed(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("split yields at least one part")
                .to_string()
        })
        .collect()
}

/// The value of one exact sample line prefix (`name{labels}`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// The metric families of an exposition, as the reference names them: the
/// sample name a query uses (`…_total` for a counter, `…_info` for an info
/// metric, the family name otherwise).
fn families(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("`# TYPE name type`");
            match kind.trim() {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            }
        })
        .collect()
}

/// The families of `metrics` that docs/reference/metrics.md does not list
/// (as a backticked name in a table's first column).
fn undocumented(metrics: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/reference/metrics.md"
    ))
    .unwrap();
    families(metrics)
        .into_iter()
        .filter(|f| !doc.contains(&format!("| `{f}` |")))
        .collect()
}

/// Offline, and for the proxies too: a family is only encoded once it has a
/// series, so the families that have none before their first event get
/// one here. (The live test below checks what a real server exposes.)
#[test]
fn every_metric_family_of_berth_and_the_proxies_is_in_the_reference() {
    use berth::observability::metrics::{GithubLabels, ScaleSetOutcomeLabels};

    let berth = berth::observability::Metrics::new();
    berth.init_pools(["linux"]);
    berth.init_scale_sets(["berth-linux"]);
    drop(berth.github_api_requests.get_or_create(&GithubLabels {
        endpoint: "get_job",
        status: "200".into(),
    }));
    let set = ScaleSetOutcomeLabels {
        scale_set: "berth-linux".into(),
        outcome: "created",
    };
    drop(berth.scaleset_retirements.get_or_create(&set));
    drop(berth.scaleset_session_events.get_or_create(&set));
    drop(berth.scaleset_job_messages.get_or_create(&set));
    berth.init_secret("github.webhook_secret");
    berth.secret_refreshed("github.webhook_secret");
    berth.vault_token_operation("renew", true);

    let socket = berth_proxies::socket::metrics::Metrics::default();
    socket.decision("allow", "ping");
    drop(
        socket
            .managed_checks
            .get_or_create(&berth_proxies::socket::metrics::CheckLabels {
                kind: "container",
                result: "cached",
            }),
    );

    let egress = berth_proxies::egress::metrics::Metrics::default();
    egress.decision("connect", "allow", "allowed");
    egress.upstream_error("dns");
    drop(egress.bytes_counter("sent"));
    drop(
        egress
            .reloads
            .get_or_create(&berth_proxies::egress::metrics::ResultLabels { result: "ok" }),
    );

    for (who, text) in [
        ("berth", berth.encode()),
        ("the socket proxy", socket.encode()),
        ("the egress proxy", egress.encode()),
    ] {
        assert!(families(&text).len() >= 3, "{who}: {text}");
        let missing = undocumented(&text);
        assert!(
            missing.is_empty(),
            "{who}'s families missing from docs/reference/metrics.md: {missing:?}"
        );
    }
}

async fn scrape(berth: &Berth) -> String {
    let response = berth
        .http()
        .get(format!("{}/metrics", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

/// Every `expr` of every panel (rows may nest panels).
fn exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap_or_default().to_string());
        }
        exprs(&panel["panels"], out);
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "berth-overview");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let name = ds["name"].as_str().unwrap();
    let uid = format!("${{{name}}}");
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Jobs per minute",
        "Queue depth",
        "p95 container-creation latency",
        "GitHub API error rate",
        "Docker API error rate",
        "Active worker containers",
        "Pool saturation (active / max_runners)",
        "Fleet",
        "Hosts up",
        "Free slots",
        "Busy slots per host",
        "Jobs waiting per pool",
        "Desired hosts vs hosts up",
        "Host lease takeovers",
    ] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "{}", p["title"]);
        assert_eq!(p["datasource"]["type"], "prometheus");
        assert!(!p["targets"].as_array().unwrap().is_empty());
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], uid.as_str(), "{}", p["title"]);
        }
    }
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    let p95 = all
        .iter()
        .find(|e| e.contains("berth_container_creation_duration_seconds_bucket"))
        .expect("a creation latency query");
    assert!(p95.starts_with("histogram_quantile(0.95,"), "{p95}");
    assert!(
        all.iter().any(|e| e.contains("berth_pool_max_runners")
            && e.contains("berth_active_worker_containers")
            && e.contains(" / ")),
        "no saturation query in {all:?}"
    );
}

/// Every alert's `runbook` annotation points at its own section of
/// docs/observability.md (`### AlertName`, anchor in lower case).
#[test]
fn every_alert_has_a_runbook_section() {
    let rules = std::fs::read_to_string(ALERTS).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/observability.md"
    ))
    .unwrap();
    let mut alerts = Vec::new();
    let mut runbooks = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push(name.to_string());
        } else if let Some(link) = line.strip_prefix("runbook: ") {
            runbooks.push(link.trim_matches('"').to_string());
        }
    }
    assert!(alerts.len() >= 14, "{alerts:?}");
    assert_eq!(alerts.len(), runbooks.len(), "an alert without a runbook");
    for (alert, runbook) in alerts.iter().zip(&runbooks) {
        assert_eq!(
            *runbook,
            format!("docs/observability.md#{}", alert.to_lowercase()),
            "{alert}"
        );
        assert!(
            doc.lines().any(|l| l == format!("### {alert}")),
            "no `### {alert}` runbook in docs/observability.md"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_on_a_live_metrics_page() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("max_runners = 3")).await;

    // A fresh server already shows every series the assets use, at zero,
    // except GitHub's requests (labelled by the status GitHub answers) and
    // Falco's alerts (labelled by the rule Falco names).
    let fresh = exposed(&scrape(&berth).await);
    let mut wanted = metric_names(&std::fs::read_to_string(DASHBOARD).unwrap());
    let rules = metric_names(&std::fs::read_to_string(ALERTS).unwrap());
    assert!(rules.len() >= 8, "{rules:?}");
    wanted.extend(rules);
    let missing: Vec<_> = wanted
        .iter()
        .filter(|n| !fresh.contains(*n) && !LABELLED_BY_WHAT_COMES.contains(&n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on a fresh /metrics: {missing:?}");

    // After a job, histograms and GitHub counters have series too.
    let gh_job = world.queue(&["echo observed"]);
    let job = berth.wait_terminal(gh_job, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    // And a Falco alert (about no container of berth's).
    let (falco, _) =
        berth::api::auth::create_token(berth.store(), "falco", ApiTokenScope::Security)
            .await
            .unwrap();
    let alert = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/falco/terminal-shell.json"
    ))
    .unwrap();
    let posted = berth
        .http()
        .post(format!("{}/v1/security/events", berth.url))
        .bearer_auth(falco)
        .body(alert)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let text = scrape(&berth).await;
    let live = exposed(&text);
    let missing: Vec<_> = wanted.iter().filter(|n| !live.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not on /metrics: {missing:?}\n{text}"
    );

    // Everything a live server exports is in the reference.
    let missing = undocumented(&text);
    assert!(
        missing.is_empty(),
        "exported by berth serve but missing from docs/reference/metrics.md: {missing:?}"
    );

    // The values behind the panels and alerts are the real ones.
    assert_eq!(
        sample(&text, "berth_pool_max_runners{pool=\"linux\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "berth_jobs_finished_total{pool=\"linux\",state=\"completed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "berth_job_queue_wait_seconds_count{pool=\"linux\"}"),
        Some(1.0)
    );
    // GitHub's conclusion arrives with the `completed` webhook.
    common::eventually(
        "the conclusion is counted",
        Duration::from_secs(10),
        || async {
            sample(
                &scrape(&berth).await,
                "berth_jobs_concluded_total{pool=\"linux\",conclusion=\"success\"}",
            ) == Some(1.0)
        },
    )
    .await;
    let text = scrape(&berth).await;
    assert_eq!(
        sample(
            &text,
            "berth_jobs_concluded_total{pool=\"linux\",conclusion=\"failure\"}"
        ),
        Some(0.0)
    );
    assert!(
        sample(&text, "berth_github_rate_limit_remaining").is_some_and(|v| v > 0.0),
        "{text}"
    );
    // The fleet's series behind the Fleet row and its alerts: the one
    // `default` host, up and active, its lease taken by this replica.
    for (series, value) in [
        ("berth_host_up{host=\"default\"}", 1.0),
        ("berth_host_cordoned{host=\"default\"}", 0.0),
        ("berth_host_busy_slots{host=\"default\"}", 0.0),
        ("berth_fleet_jobs_waiting{pool=\"linux\"}", 0.0),
        ("berth_fleet_desired_hosts{host_labels=\"\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        sample(&text, "berth_host_lease_acquired_total{host=\"default\"}")
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let slots = sample(&text, "berth_host_slots{host=\"default\"}");
    assert!(slots.is_some_and(|v| v >= 1.0), "{text}");
    assert_eq!(sample(&text, "berth_fleet_free_slots"), slots, "{text}");
    berth.stop().await;
}
