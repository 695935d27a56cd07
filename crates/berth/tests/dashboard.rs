//! The web dashboard in a real browser (headless Chromium, scripts off), the
//! login cookie, and changing the log level of a running `berth serve`.

mod common;

use std::process::Command;
use std::time::Duration;

use berth::store::{ApiTokenScope, JobState};
use common::{Berth, World, eventually};

fn chromium() -> &'static str {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("which")
            .arg(candidate)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate;
        }
    }
    panic!("the dashboard test needs Chromium (Debian's `chromium`; scripts/test installs it)");
}

fn headless(args: &[&str], url: &str) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_jobs_queue_and_live_logs_with_no_javascript() {
    let world = World::new().await;
    let mut config = world.config("");
    config.server.public_dashboard = true;
    let berth = Berth::start(&world, config).await;
    let done = world.queue(&["echo dashboard-done"]);
    let long = world.queue(&["sleep 20"]);
    let done_job = berth.wait_terminal(done, Duration::from_secs(60)).await;
    let long_job = berth
        .wait_state(long, JobState::Running, Duration::from_secs(60))
        .await;
    eventually(
        "the long job's runner took it",
        Duration::from_secs(30),
        || async { world.sim.job(long).unwrap().status == "in_progress" },
    )
    .await;

    // The pages carry no script at all, and their Content-Security-Policy
    // forbids any: what the browser shows below is what it shows with
    // JavaScript off.
    let raw = reqwest::get(format!("{}/", berth.url)).await.unwrap();
    let csp = raw.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(!raw.text().await.unwrap().contains("<script"));

    // The list, as the browser renders it.
    let out = headless(&["--dump-dom"], &format!("{}/", berth.url));
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("id=\"jobs\""),
        "{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains(&format!("/jobs/{}", done_job.id))
            && dom.contains(&format!("/jobs/{}", long_job.id))
    );
    assert!(dom.contains("acme/widgets"));
    assert!(
        dom.contains("class=\"state completed\"") && dom.contains("class=\"state running\""),
        "{dom}"
    );
    assert!(
        dom.contains("<b>1</b>running containers"),
        "live count of running containers: {dom}"
    );
    assert!(dom.contains("id=\"queue-depth\""));
    // The hosts: the one implicit host, probed and taking jobs, and the
    // fleet's capacity.
    let host_row = dom
        .split("<tr data-host=\"default\">")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("the hosts table shows `default`: {dom}"));
    assert!(
        host_row.contains("<td class=\"health up\">up</td>")
            && host_row.contains("<td class=\"admin active\">active</td>"),
        "{host_row}"
    );
    assert!(dom.contains("id=\"fleet\""), "{dom}");
    assert!(dom.contains("Waiting: linux 0."), "{dom}");

    // A filter is a plain link.
    let dom = headless(&["--dump-dom"], &format!("{}/?state=completed", berth.url));
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains(&format!("/jobs/{}", done_job.id))
            && !dom.contains(&format!("/jobs/{}", long_job.id))
    );

    // A running job's page refreshes itself and shows its output so far.
    let dom = headless(
        &["--dump-dom"],
        &format!("{}/jobs/{}", berth.url, long_job.id),
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains("http-equiv=\"refresh\""), "{dom}");
    assert!(
        dom.contains("Worker output (live)") && dom.contains(&format!("acquired job {long}")),
        "{dom}"
    );

    // A screenshot, looked at by the test: a real page, not an error.
    let shot = world.dir.path().join("dashboard.png");
    let out = headless(
        &[&format!("--screenshot={}", shot.display())],
        &format!("{}/", berth.url),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot of {} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("BERTH_TEST_ARTIFACTS") {
        let _ = std::fs::copy(&shot, std::path::Path::new(&dir).join("dashboard.png"));
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_a_read_token_kept_in_a_cookie() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let (read, _) = berth::api::auth::create_token(berth.store(), "viewer", ApiTokenScope::Read)
        .await
        .unwrap();
    let (delegate, _) =
        berth::api::auth::create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
            .await
            .unwrap();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(format!("{}/", berth.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = client
        .post(format!("{}/login", berth.url))
        .form(&[("token", "berth_wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/login", berth.url))
        .form(&[("token", delegate.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(format!("{}/login", berth.url))
        .form(&[("token", read.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let r = client.get(format!("{}/", berth.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("No jobs yet") && !html.contains(&read));
    berth.stop().await;
}
