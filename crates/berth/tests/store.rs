//! The store test suite. Every case runs twice: against SQLite (a temporary
//! file) and against a real PostgreSQL (a fresh schema per test), so the
//! two backends are held to the same behaviour.
//!
//! PostgreSQL comes from `BERTH_TEST_POSTGRES_URL`; without it the
//! `postgres::` tests fail (they never pass silently). Start a throwaway
//! server with `eval "$(scripts/postgres-test-server)"`, or run `scripts/test`.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::store::{
    ApiTokenScope, BackendKind, GithubStatus, IntakeWrite, Job, JobChanges, JobCount, JobFilter,
    JobSource, JobState, ManualClock, NewApiToken, NewJob, Placement, PlacementHost, Store,
    StoreError, StoreOptions,
};
use sqlx::Connection;
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

use JobState::{Cancelled, Completed, Expired, Failed, Provisioning, Queued, Running, Starting};

const POSTGRES_URL_VAR: &str = "BERTH_TEST_POSTGRES_URL";

/// Claims on one host with room for anything, so the cases about queues
/// and limits see only those (placement has cases of its own).
trait ClaimOnOneHost {
    async fn job_claim_on_one_host(
        &self,
        pool: &str,
        max_in_pool: u32,
        global_max: u32,
        owner: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Job>, StoreError>;
}

impl ClaimOnOneHost for Store {
    async fn job_claim_on_one_host(
        &self,
        pool: &str,
        max_in_pool: u32,
        global_max: u32,
        owner: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Job>, StoreError> {
        self.hosts_register(&["only".to_string()]).await?;
        self.host_probe_ok("only", "test", None, now).await?;
        let hosts = [PlacementHost {
            name: "only".into(),
            slots: 1_000_000,
            weight: 1.0,
            ordinal: 0,
        }];
        let placement = Placement {
            hosts: &hosts,
            pack: false,
            slots_per_job: 1,
        };
        self.job_claim(pool, max_in_pool, global_max, placement, owner, until, now)
            .await
    }
}

/// Defines each case once per backend: `sqlite::case` and `postgres::case`.
macro_rules! store_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let harness = super::Harness::sqlite().await;
                    super::$case(&harness).await;
                    harness.finish().await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let harness = super::Harness::postgres().await;
                    super::$case(&harness).await;
                    harness.finish().await;
                }
            )+
        }
    };
}

store_suite!(
    insert_is_idempotent_on_github_job_id,
    concurrent_duplicate_inserts_create_one_job,
    grouped_intake_writes_apply_each_as_if_alone,
    job_json_follows_the_contract,
    lookups_by_runner_and_container,
    claim_takes_the_oldest_queued_job_of_its_pool,
    claim_respects_pool_and_global_limits,
    claims_place_jobs_by_strategy_slots_and_host_state,
    claim_skips_jobs_asked_to_cancel,
    concurrent_claimers_never_double_claim_or_exceed_limits,
    transitions_apply_only_from_the_given_states,
    invalid_transitions_are_errors,
    finish_is_idempotent,
    requeue_clears_the_runner_and_keeps_attempts,
    outcomes_decided_for_a_runner_apply_only_while_the_job_holds_it,
    leases_expire_by_the_injected_clock,
    github_status_only_moves_forward,
    reconciler_queries,
    job_list_and_counts,
    logs_keep_the_first_cap_bytes,
    concurrent_log_appends_lose_nothing,
    deliveries_are_recorded_once,
    api_tokens_are_found_by_hash,
    api_tokens_expire_and_are_revoked_with_their_sessions,
    expired_dashboard_sessions_are_pruned,
    prune_deletes_finished_jobs_and_their_logs,
    everything_survives_a_reopen,
    warm_containers_are_taken_once_and_bound_to_their_job,
    leases_of_replicas_that_stopped_heartbeating_are_released,
    leases_of_a_dead_predecessor_are_released_at_start,
    an_exited_worker_frees_its_slot_before_its_job_ends,
    one_replica_holds_a_scale_set_listener_lease_at_a_time,
    security_events_find_their_job_and_act_once,
    a_store_of_a_newer_schema_is_refused,
);

// ---- Harness -----------------------------------------------------------------

/// A fresh, empty store on one backend, with a manual clock.
struct Harness {
    store: Store,
    clock: ManualClock,
    url: String,
    /// Removed when the harness is dropped.
    _sqlite_dir: Option<tempfile::TempDir>,
    /// `(server URL, schema)` for PostgreSQL: the schema is dropped at the end.
    postgres_schema: Option<(String, String)>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("berth.db").display());
        Harness::open(url, Some(dir), None).await
    }

    async fn postgres() -> Harness {
        let server = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_URL_VAR} is not set, so the PostgreSQL store tests cannot run. \
                 Run `scripts/test`, or start a throwaway server with \
                 `eval \"$(scripts/postgres-test-server)\"` and run the tests again."
            )
        });
        let schema = format!("berth_test_{}", Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}={server}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create the test schema");
        admin.close().await.ok();
        let separator = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{separator}options[search_path]={schema}");
        Harness::open(url, None, Some((server, schema))).await
    }

    async fn open(
        url: String,
        sqlite_dir: Option<tempfile::TempDir>,
        postgres_schema: Option<(String, String)>,
    ) -> Harness {
        let clock = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let store = connect(&url, &clock).await;
        Harness {
            store,
            clock,
            url,
            _sqlite_dir: sqlite_dir,
            postgres_schema,
        }
    }

    /// A second store on the same database (what a restarted berth opens).
    async fn reopen(&self) -> Store {
        connect(&self.url, &self.clock).await
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Advances the clock by `ms` milliseconds and returns the new time.
    fn tick(&self, ms: u64) -> OffsetDateTime {
        self.clock.advance(Duration::from_millis(ms))
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((server, schema)) = self.postgres_schema {
            let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut admin)
                .await
                .expect("drop the test schema");
        }
    }

    async fn job(&self, id: Uuid) -> Job {
        self.store
            .job_get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {id} exists"))
    }

    async fn insert(&self, github_job_id: i64, pool: &str) -> Job {
        let (job, inserted) = self
            .store
            .job_insert(new_job(github_job_id, pool))
            .await
            .unwrap();
        assert!(inserted, "GitHub job {github_job_id} is new");
        job
    }

    /// Claims the next job of `pool` with generous limits.
    async fn claim(&self, pool: &str) -> Option<Job> {
        let now = self.now();
        self.store
            .job_claim_on_one_host(
                pool,
                100,
                100,
                "dispatcher-1",
                now + Duration::from_secs(60),
                now,
            )
            .await
            .unwrap()
    }
}

async fn connect(url: &str, clock: &ManualClock) -> Store {
    let options = StoreOptions {
        clock: Arc::new(clock.clone()),
        max_connections: 8,
        ..StoreOptions::default()
    };
    Store::connect_with(url, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn new_job(github_job_id: i64, pool: &str) -> NewJob {
    NewJob {
        github_job_id,
        run_id: 1000 + github_job_id,
        repository: "acme/widgets".into(),
        workflow: Some("CI".into()),
        job_name: Some(format!("build {github_job_id}")),
        labels: vec!["self-hosted".into(), pool.into()],
        pool: pool.into(),
        source: JobSource::Webhook,
        scale_set: None,
        github_status: Some(GithubStatus::Queued),
        timeout_secs: None,
    }
}

fn ids(jobs: &[Job]) -> Vec<Uuid> {
    jobs.iter().map(|job| job.id).collect()
}

// ---- Intake ------------------------------------------------------------------

async fn insert_is_idempotent_on_github_job_id(h: &Harness) {
    let (job, inserted) = h.store.job_insert(new_job(1, "linux")).await.unwrap();
    assert!(inserted);
    assert_eq!(job.state, Queued);
    assert_eq!(job.github_job_id, 1);
    assert_eq!(job.run_id, 1001);
    assert_eq!(job.repository, "acme/widgets");
    assert_eq!(job.labels, ["self-hosted", "linux"]);
    assert_eq!(job.source, JobSource::Webhook);
    assert_eq!(job.github_status, Some(GithubStatus::Queued));
    assert_eq!(job.attempts, 0);
    assert!(!job.cancel_requested);
    assert_eq!(job.created_at, h.now());
    assert_eq!(job.updated_at, h.now());
    assert_eq!(job.queued_at, h.now());
    assert_eq!(job.id.get_version_num(), 7, "job ids are UUID v7");

    // The same GitHub job again, even with other details: the first one stands.
    h.tick(1000);
    let mut again = new_job(1, "windows");
    again.run_id = 42;
    again.source = JobSource::Delegate;
    let (existing, inserted) = h.store.job_insert(again).await.unwrap();
    assert!(!inserted);
    assert_eq!(existing, job);

    assert_eq!(h.store.job_get(job.id).await.unwrap(), Some(job.clone()));
    assert_eq!(
        h.store.job_get_by_github_id(1).await.unwrap(),
        Some(job.clone())
    );
    assert_eq!(h.store.job_get(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(h.store.job_get_by_github_id(2).await.unwrap(), None);
    let all = h.store.job_list(&JobFilter::default()).await.unwrap();
    assert_eq!(all, [job]);
}

async fn grouped_intake_writes_apply_each_as_if_alone(h: &Harness) {
    // 300 writes at once, so that SQLite's committer groups many of them:
    // every job delivered three times (two delivery ids, one of them twice).
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let store = h.store.clone();
            tokio::spawn(async move {
                let github_job_id = 500 + (i % 100);
                let delivery = if i < 200 {
                    format!("d-{i}")
                } else {
                    format!("d-{}", i - 200)
                };
                let written = store
                    .intake_commit(IntakeWrite {
                        job: Some(new_job(github_job_id, "linux")),
                        delivery_id: Some(delivery),
                    })
                    .await
                    .unwrap();
                let (job, inserted) = written.job.unwrap();
                (github_job_id, job, inserted, written.delivery_new.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let inserted: Vec<_> = results.iter().filter(|r| r.2).collect();
    assert_eq!(inserted.len(), 100, "one insert per GitHub job");
    let unique: HashSet<i64> = inserted.iter().map(|r| r.0).collect();
    assert_eq!(unique.len(), 100);
    for (github_job_id, job, _, _) in &results {
        let first = inserted.iter().find(|r| r.0 == *github_job_id).unwrap();
        assert_eq!(job.id, first.1.id, "a duplicate answers with the same job");
    }
    assert_eq!(
        results.iter().filter(|r| r.3).count(),
        200,
        "200 distinct delivery ids are new once each"
    );
    assert_eq!(
        h.store.job_list(&JobFilter::default()).await.unwrap().len(),
        100
    );
}

async fn concurrent_duplicate_inserts_create_one_job(h: &Harness) {
    // 16 deliveries of the same job at once.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = h.store.clone();
            tokio::spawn(async move { store.job_insert(new_job(7, "linux")).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|(_, inserted)| *inserted).count(), 1);
    let first = &results[0].0;
    assert!(results.iter().all(|(job, _)| job == first));

    // 16 tasks racing over 40 jobs, each job inserted by every task.
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let store = h.store.clone();
            tokio::spawn(async move {
                let mut inserted = Vec::new();
                for i in 0..40 {
                    let github_job_id = 100 + (i + task * 5) % 40;
                    let (job, new) = store
                        .job_insert(new_job(github_job_id, "linux"))
                        .await
                        .unwrap();
                    if new {
                        inserted.push(job.github_job_id);
                    }
                }
                inserted
            })
        })
        .collect();
    let mut inserted = Vec::new();
    for task in tasks {
        inserted.extend(task.await.unwrap());
    }
    inserted.sort_unstable();
    assert_eq!(
        inserted,
        (100..140).collect::<Vec<_>>(),
        "each job inserted once"
    );
    let all = h.store.job_list(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 41);
}

async fn job_json_follows_the_contract(h: &Harness) {
    let job = h.insert(5, "linux").await;
    let json = serde_json::to_value(&job).unwrap();
    for key in [
        "id",
        "github_job_id",
        "run_id",
        "repository",
        "pool",
        "state",
        "runner_name",
        "container_id",
        "created_at",
        "updated_at",
        "error",
    ] {
        assert!(json.get(key).is_some(), "job JSON has {key:?}: {json}");
    }
    assert_eq!(json["id"], job.id.to_string());
    assert_eq!(json["github_job_id"], 5);
    assert_eq!(json["state"], "queued");
    assert_eq!(json["source"], "webhook");
    assert_eq!(json["github_status"], "queued");
    assert_eq!(json["labels"], serde_json::json!(["self-hosted", "linux"]));
    assert_eq!(json["created_at"], "2030-01-01T00:00:00Z");
    assert_eq!(json["started_at"], serde_json::Value::Null);
    let back: Job = serde_json::from_value(json).unwrap();
    assert_eq!(back, job);

    let names: Vec<String> = JobState::ALL
        .iter()
        .map(|state| {
            serde_json::to_value(state)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "queued",
            "provisioning",
            "starting",
            "running",
            "completed",
            "failed",
            "cancelled",
            "expired"
        ]
    );
    for state in JobState::ALL {
        assert_eq!(state.as_str().parse::<JobState>().unwrap(), *state);
    }
    assert!("done".parse::<JobState>().is_err());
}

async fn lookups_by_runner_and_container(h: &Harness) {
    let job = h.insert(1, "linux").await;
    h.claim("linux").await.unwrap();
    let changes = JobChanges::new()
        .runner("berth-abc", 11)
        .container_id("c0ffee");
    assert!(
        h.store
            .job_transition(job.id, &[Provisioning], Starting, changes)
            .await
            .unwrap()
    );
    let job = h.job(job.id).await;
    assert_eq!(job.runner_name.as_deref(), Some("berth-abc"));
    assert_eq!(job.runner_id, Some(11));
    assert_eq!(job.container_id.as_deref(), Some("c0ffee"));

    let store = &h.store;
    assert_eq!(
        store.job_get_by_runner_name("berth-abc").await.unwrap(),
        Some(job.clone())
    );
    assert_eq!(
        store.job_get_by_container_id("c0ffee").await.unwrap(),
        Some(job.clone())
    );
    assert_eq!(
        store.job_get_by_runner_name("berth-zzz").await.unwrap(),
        None
    );
    assert_eq!(
        store.job_get_by_container_id("deadbeef").await.unwrap(),
        None
    );

    // GitHub says another runner took it: found under that runner's name.
    assert!(
        store
            .job_record_github_status(
                1,
                GithubStatus::InProgress,
                None,
                Some("berth-xyz"),
                Some(12)
            )
            .await
            .unwrap()
    );
    let job = h.job(job.id).await;
    assert_eq!(job.github_runner_name.as_deref(), Some("berth-xyz"));
    assert_eq!(
        store
            .job_get_by_github_runner_name("berth-xyz")
            .await
            .unwrap(),
        Some(job)
    );
}

/// Falco names a container by its 12-character short id: it finds the job
/// of a worker or of a container the hook made; an alert is recorded once
/// per dedupe key; a job is marked to stop once, and only while active.
async fn security_events_find_their_job_and_act_once(h: &Harness) {
    let worker = format!("0a1b2c3d4e5f{}", "7".repeat(52));
    let job_container = format!("9f8e7d6c5b4a{}", "3".repeat(52));
    let job = h.insert(1, "linux").await;
    h.claim("linux").await.unwrap();
    let changes = JobChanges::new()
        .runner("berth-sec", 11)
        .container_id(&worker);
    assert!(
        h.store
            .job_transition(job.id, &[Provisioning], Starting, changes)
            .await
            .unwrap()
    );
    h.store
        .job_container_insert(&berth::store::JobContainer {
            container_id: job_container.clone(),
            job_id: job.id,
            host: "local".into(),
            role: "job".into(),
            name: "berth-sec-job".into(),
            image: "node:22".into(),
            created_at: h.clock.now(),
            removed_at: None,
        })
        .await
        .unwrap();
    let other = h.insert(2, "linux").await;
    let store = &h.store;
    for id in [&worker[..12], &worker[..], &job_container[..12]] {
        let found = store.job_by_container_prefix(id).await.unwrap();
        assert_eq!(found.map(|j| j.id), Some(job.id), "{id}");
    }
    // Uppercase, as some tools print it.
    let upper = worker[..12].to_ascii_uppercase();
    assert!(
        store
            .job_by_container_prefix(&upper)
            .await
            .unwrap()
            .is_some()
    );
    // A neighbour of the prefix is not it.
    assert_eq!(
        store.job_by_container_prefix("0a1b2c3d4e60").await.unwrap(),
        None
    );

    let event = |key: &str, rule: &str| berth::store::NewSecurityEvent {
        dedupe_key: key.into(),
        event: berth::store::SecurityEvent {
            id: Uuid::now_v7(),
            job_id: job.id,
            container_id: worker.clone(),
            rule: rule.into(),
            priority: "Critical".into(),
            action: "kill".into(),
            outcome: "killed".into(),
            time: h.clock.now(),
            received_at: h.clock.now(),
            hostname: Some("ci-1".into()),
            output: "shell".into(),
            output_fields: serde_json::json!({"proc.cmdline": "bash", "evt.num": 7})
                .as_object()
                .unwrap()
                .clone(),
        },
    };
    assert!(
        store
            .security_event_record(&event("k1", "a"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .security_event_record(&event("k1", "b"))
            .await
            .unwrap()
    );
    assert!(
        store
            .security_event_record(&event("k2", "c"))
            .await
            .unwrap()
    );
    let kept = store.security_events_of_job(job.id).await.unwrap();
    assert_eq!(
        kept.iter().map(|e| e.rule.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(kept[0].output_fields["evt.num"], 7);
    assert_eq!(
        store
            .security_event_by_key("k1")
            .await
            .unwrap()
            .unwrap()
            .rule,
        "a"
    );
    assert!(
        store
            .security_events_of_job(other.id)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(store.job_stop_for(job.id, "security: a").await.unwrap());
    assert!(!store.job_stop_for(job.id, "security: c").await.unwrap());
    let marked = h.job(job.id).await;
    assert!(marked.cancel_requested);
    assert_eq!(marked.stop_reason.as_deref(), Some("security: a"));
    // A finished job is not marked.
    assert!(
        store
            .job_finish(other.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    assert!(!store.job_stop_for(other.id, "security: a").await.unwrap());
}

// ---- Claims ------------------------------------------------------------------

async fn claim_takes_the_oldest_queued_job_of_its_pool(h: &Harness) {
    let a1 = h.insert(1, "linux").await;
    h.tick(1);
    let b1 = h.insert(2, "windows").await;
    h.tick(1);
    let a2 = h.insert(3, "linux").await;
    h.tick(1);
    let a3 = h.insert(4, "linux").await;
    let now = h.tick(1);

    let until = now + Duration::from_secs(30);
    let claimed = h
        .store
        .job_claim_on_one_host("linux", 10, 10, "dispatcher-a", until, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, a1.id);
    assert_eq!(claimed.state, Provisioning);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.lease_owner.as_deref(), Some("dispatcher-a"));
    assert_eq!(claimed.lease_expires_at, Some(until));
    assert_eq!(claimed.updated_at, now);
    assert_eq!(h.job(a1.id).await, claimed, "the claim is persisted");

    assert_eq!(h.claim("windows").await.unwrap().id, b1.id);
    assert_eq!(h.claim("windows").await, None);
    assert_eq!(h.claim("macos").await, None);

    // A requeued job goes to the back of its pool's queue.
    h.tick(1);
    assert!(
        h.store
            .job_requeue(a1.id, &[Provisioning], "retry")
            .await
            .unwrap()
    );
    assert_eq!(h.claim("linux").await.unwrap().id, a2.id);
    assert_eq!(h.claim("linux").await.unwrap().id, a3.id);
    let again = h.claim("linux").await.unwrap();
    assert_eq!(again.id, a1.id);
    assert_eq!(again.attempts, 2);
    assert_eq!(h.claim("linux").await, None);
}

/// Placement inside the claim: `spread` takes the least loaded host
/// (weighted), `pack` fills hosts in order; no host goes past its slots;
/// a host that is not `up` and `active` gets nothing; a requeue clears the
/// host and an exit frees its slot.
async fn claims_place_jobs_by_strategy_slots_and_host_state(h: &Harness) {
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    h.store.hosts_register(&names).await.unwrap();
    for name in &names {
        h.store
            .host_probe_ok(name, "test", None, h.now())
            .await
            .unwrap();
    }
    let host = |name: &str, slots: u32, weight: f64, ordinal: u32| PlacementHost {
        name: name.into(),
        slots,
        weight,
        ordinal,
    };
    for i in 0..20 {
        h.insert(i, "linux").await;
        h.tick(1);
    }
    let until = h.now() + Duration::from_secs(60);
    let claim_with = |hosts: Vec<PlacementHost>, pack: bool, slots_per_job: u32| async move {
        let now = h.now();
        h.store
            .job_claim(
                "linux",
                100,
                100,
                Placement {
                    hosts: &hosts,
                    pack,
                    slots_per_job,
                },
                "d",
                until,
                now,
            )
            .await
            .unwrap()
            .map(|j| j.host.unwrap())
    };
    let claim_on = |hosts: Vec<PlacementHost>, pack: bool| claim_with(hosts, pack, 1);
    // spread, equal weights: round robin by load, ties in configuration order.
    let spread = || {
        vec![
            host("a", 2, 1.0, 0),
            host("b", 2, 1.0, 1),
            host("c", 2, 1.0, 2),
        ]
    };
    let mut placed = Vec::new();
    for _ in 0..6 {
        placed.push(claim_on(spread(), false).await.unwrap());
    }
    assert_eq!(placed, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(claim_on(spread(), false).await, None, "every slot is taken");

    // Free everything: the workers exited.
    for job in h.store.jobs_in_states(&[Provisioning]).await.unwrap() {
        let container = format!("ctr-{}", job.id);
        h.store
            .job_transition(
                job.id,
                &[Provisioning],
                Running,
                JobChanges::new().container_id(&container),
            )
            .await
            .unwrap();
        assert!(
            h.store
                .job_worker_exited(&container, h.now())
                .await
                .unwrap()
        );
    }
    // pack: fill a, then b.
    let pack = || vec![host("a", 2, 1.0, 0), host("b", 3, 1.0, 1)];
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(claim_on(pack(), true).await.unwrap());
    }
    assert_eq!(placed, ["a", "a", "b", "b", "b"]);
    assert_eq!(claim_on(pack(), true).await, None);

    // A cordoned host and a down host get nothing; c alone takes jobs.
    let all = || {
        vec![
            host("a", 10, 1.0, 0),
            host("b", 10, 1.0, 1),
            host("c", 10, 1.0, 2),
        ]
    };
    h.store
        .host_set_admin("a", berth::store::HostAdmin::Cordoned)
        .await
        .unwrap();
    let now = h.now();
    let change = h
        .store
        .host_probe_failed("b", "engine gone", now, now + Duration::from_secs(1))
        .await
        .unwrap();
    assert!(change.went_down(), "{change:?}");
    let c = claim_on(all(), false).await.unwrap();
    assert_eq!(c, "c");
    // A host the pool cannot use is never offered: only a and b are.
    assert_eq!(
        claim_on(vec![host("a", 10, 1.0, 0), host("b", 10, 1.0, 1)], false).await,
        None
    );
    // Requeued, the job forgets its host.
    let job = h
        .store
        .jobs_in_states(&[Provisioning])
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.host.as_deref() == Some("c"))
        .unwrap();
    assert!(
        h.store
            .job_requeue(job.id, &[Provisioning], "test")
            .await
            .unwrap()
    );
    assert_eq!(h.store.job_get(job.id).await.unwrap().unwrap().host, None);

    // Weighted spread: a (weight 3) takes three jobs for every one of b's.
    h.store
        .host_set_admin("a", berth::store::HostAdmin::Active)
        .await
        .unwrap();
    h.store
        .host_probe_ok("b", "test", None, h.now())
        .await
        .unwrap();
    for job in h.store.jobs_in_states(&[Provisioning]).await.unwrap() {
        h.store
            .job_requeue(job.id, &[Provisioning], "test")
            .await
            .unwrap();
    }
    for job in h.store.jobs_in_states(&[Running]).await.unwrap() {
        h.store
            .job_transition(job.id, &[Running], Completed, JobChanges::new())
            .await
            .unwrap();
    }
    let weighted = || vec![host("a", 8, 3.0, 0), host("b", 8, 1.0, 1)];
    let mut placed = Vec::new();
    for _ in 0..8 {
        placed.push(claim_on(weighted(), false).await.unwrap());
    }
    let on_a = placed.iter().filter(|p| *p == "a").count();
    assert_eq!(on_a, 6, "{placed:?}");

    // A pool whose jobs take 3 slots each (`host_slots`): a host fits one
    // of them in 4 slots, and a 1-slot job fills the rest.
    for job in h.store.jobs_in_states(&[Provisioning]).await.unwrap() {
        h.store
            .job_requeue(job.id, &[Provisioning], "test")
            .await
            .unwrap();
    }
    let small = || vec![host("a", 4, 1.0, 0), host("b", 4, 1.0, 1)];
    assert_eq!(claim_with(small(), false, 3).await.as_deref(), Some("a"));
    assert_eq!(claim_with(small(), false, 3).await.as_deref(), Some("b"));
    assert_eq!(
        claim_with(small(), false, 3).await,
        None,
        "1 slot free on each"
    );
    assert_eq!(claim_with(small(), false, 1).await.as_deref(), Some("a"));
    let busy: Vec<(String, i64)> = h
        .store
        .host_busy()
        .await
        .unwrap()
        .into_iter()
        .map(|(host, _, n)| (host, n))
        .collect();
    assert_eq!(busy, [("a".to_string(), 4), ("b".to_string(), 3)]);
}

async fn claim_respects_pool_and_global_limits(h: &Harness) {
    for i in 0..5 {
        h.insert(i, "linux").await;
        h.insert(100 + i, "windows").await;
        h.tick(1);
    }
    let now = h.now();
    let until = now + Duration::from_secs(60);
    let claim = |pool: &'static str| async move {
        h.store
            .job_claim_on_one_host(pool, 2, 3, "d", until, now)
            .await
            .unwrap()
    };

    // linux fills its pool limit of 2.
    let l1 = claim("linux").await.unwrap();
    let l2 = claim("linux").await.unwrap();
    assert_eq!(claim("linux").await, None, "pool limit 2");
    // windows gets one slot before the global limit of 3.
    let w1 = claim("windows").await.unwrap();
    assert_eq!(claim("windows").await, None, "global limit 3");

    // Active means provisioning, starting and running alike.
    let start = JobChanges::new;
    assert!(
        h.store
            .job_transition(l1.id, &[Provisioning], Starting, start())
            .await
            .unwrap()
    );
    assert!(
        h.store
            .job_transition(l2.id, &[Provisioning], Running, start())
            .await
            .unwrap()
    );
    assert_eq!(claim("windows").await, None, "still 3 active");

    // A finished job frees its slots, in its pool and globally.
    assert!(
        h.store
            .job_finish(l2.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    let w2 = claim("windows").await.unwrap();
    assert_eq!(claim("windows").await, None, "windows at its pool limit");
    assert_eq!(claim("linux").await, None, "global limit again");

    // So does a requeued one.
    assert!(
        h.store
            .job_requeue(w1.id, &[Provisioning], "retry")
            .await
            .unwrap()
    );
    assert!(claim("linux").await.is_some());

    // Limits of zero stop claims altogether.
    assert!(h.store.job_finish(w2.id, Failed, None, None).await.unwrap());
    assert_eq!(
        h.store
            .job_claim_on_one_host("windows", 0, 10, "d", until, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        h.store
            .job_claim_on_one_host("windows", 10, 0, "d", until, now)
            .await
            .unwrap(),
        None
    );
}

async fn claim_skips_jobs_asked_to_cancel(h: &Harness) {
    let j1 = h.insert(1, "linux").await;
    h.tick(1);
    let j2 = h.insert(2, "linux").await;
    h.tick(1);

    assert!(h.store.job_request_cancel(j1.id).await.unwrap());
    assert!(
        !h.store.job_request_cancel(j1.id).await.unwrap(),
        "already requested"
    );
    assert!(
        !h.store.job_request_cancel(Uuid::now_v7()).await.unwrap(),
        "unknown job"
    );
    let j1 = h.job(j1.id).await;
    assert!(j1.cancel_requested);
    assert_eq!(j1.state, Queued);

    assert_eq!(h.claim("linux").await.unwrap().id, j2.id);
    assert_eq!(
        h.claim("linux").await,
        None,
        "the cancelled job is not claimed"
    );
    assert_eq!(
        ids(&h.store.jobs_cancel_requested().await.unwrap()),
        [j1.id]
    );

    assert!(
        h.store
            .job_finish(j1.id, Cancelled, None, Some("cancelled by API"))
            .await
            .unwrap()
    );
    assert!(h.store.jobs_cancel_requested().await.unwrap().is_empty());
    assert!(
        !h.store.job_request_cancel(j1.id).await.unwrap(),
        "terminal job"
    );
    // A running job can be asked too.
    assert!(h.store.job_request_cancel(j2.id).await.unwrap());
}

async fn concurrent_claimers_never_double_claim_or_exceed_limits(h: &Harness) {
    const POOLS: [&str; 3] = ["a", "b", "c"];
    const JOBS_PER_POOL: i64 = 40;
    const POOL_MAX: u32 = 3;
    const GLOBAL_MAX: u32 = 5;
    const CLAIMERS: usize = 16;
    let total = POOLS.len() * JOBS_PER_POOL as usize;
    for i in 0..JOBS_PER_POOL {
        for (p, pool) in POOLS.iter().enumerate() {
            h.insert(i * 10 + p as i64, pool).await;
        }
        h.tick(1);
    }

    // Counts of jobs the claimers hold, raised after a claim commits and
    // lowered before the finish commits: never above the store's own counts,
    // so above a limit only if the store let a claim through it.
    let active: Arc<[AtomicI64; 3]> = Arc::new(Default::default());
    let global = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    // Half the claimers go through a second store on the same database, as
    // a second replica (or process) would.
    let replica = h.reopen().await;
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|claimer| {
            let store = if claimer % 2 == 0 { &h.store } else { &replica }.clone();
            let clock = h.clock.clone();
            let (active, global) = (active.clone(), global.clone());
            let (done, violations) = (done.clone(), violations.clone());
            tokio::spawn(async move {
                let owner = format!("claimer-{claimer}");
                let mut claimed = Vec::new();
                let mut round = claimer;
                let violation = |message: String| violations.lock().unwrap().push(message);
                while done.load(Ordering::SeqCst) < total && violations.lock().unwrap().is_empty() {
                    round += 1;
                    let p = round % POOLS.len();
                    let now = clock.now();
                    let until = now + Duration::from_secs(60);
                    let job = store
                        .job_claim_on_one_host(POOLS[p], POOL_MAX, GLOBAL_MAX, &owner, until, now)
                        .await
                        .unwrap();
                    let Some(job) = job else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let in_pool = active[p].fetch_add(1, Ordering::SeqCst) + 1;
                    let in_all = global.fetch_add(1, Ordering::SeqCst) + 1;
                    if in_pool > i64::from(POOL_MAX) {
                        violation(format!("pool {} had {in_pool} active jobs", POOLS[p]));
                    }
                    if in_all > i64::from(GLOBAL_MAX) {
                        violation(format!("{in_all} active jobs in all"));
                    }
                    if job.pool != POOLS[p] || job.lease_owner.as_deref() != Some(&owner) {
                        violation(format!("claimed a job of another pool or owner: {job:?}"));
                    }
                    // Hold the job a moment, so claims keep meeting the limits.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    active[p].fetch_sub(1, Ordering::SeqCst);
                    global.fetch_sub(1, Ordering::SeqCst);
                    if !store
                        .job_finish(job.id, Completed, Some(0), None)
                        .await
                        .unwrap()
                    {
                        violation(format!("job {} was finished by another claimer", job.id));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    claimed.push(job.id);
                }
                claimed
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in tasks {
        let task = tokio::time::timeout(Duration::from_secs(30), task);
        claimed.extend(task.await.expect("claimers finish").unwrap());
    }
    replica.close().await;
    assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(claimed.len(), total, "every job claimed");
    assert_eq!(unique.len(), total, "no job claimed twice");
    for job in h.store.job_list(&JobFilter::default()).await.unwrap() {
        assert_eq!(job.state, Completed);
        assert_eq!(job.attempts, 1, "job {} claimed once", job.github_job_id);
    }
}

// ---- Transitions ----------------------------------------------------------------

async fn transitions_apply_only_from_the_given_states(h: &Harness) {
    let job = h.insert(1, "linux").await;
    let id = job.id;
    h.tick(1000);
    let starting = || JobChanges::new().runner("berth-1", 11).container_id("c1");

    // Wrong from-state: false, and nothing changes.
    assert!(
        !h.store
            .job_transition(id, &[Provisioning], Starting, starting())
            .await
            .unwrap()
    );
    assert_eq!(h.job(id).await, job);
    assert!(
        !h.store
            .job_transition(Uuid::now_v7(), &[Provisioning], Starting, starting())
            .await
            .unwrap()
    );

    h.claim("linux").await.unwrap();
    let provisioning = h.job(id).await;
    h.tick(1000);
    assert!(
        !h.store
            .job_transition(id, &[Starting], Running, JobChanges::new())
            .await
            .unwrap()
    );
    assert_eq!(h.job(id).await, provisioning);

    // Right from-state: the state and the changes, in one update.
    let now = h.tick(1000);
    assert!(
        h.store
            .job_transition(id, &[Provisioning], Starting, starting())
            .await
            .unwrap()
    );
    let job = h.job(id).await;
    assert_eq!(job.state, Starting);
    assert_eq!(job.runner_name.as_deref(), Some("berth-1"));
    assert_eq!(job.container_id.as_deref(), Some("c1"));
    assert_eq!(job.updated_at, now);
    assert_eq!(
        job.lease_owner.as_deref(),
        Some("dispatcher-1"),
        "lease kept"
    );
    // The same transition again lost its race: false.
    assert!(
        !h.store
            .job_transition(id, &[Provisioning], Starting, starting())
            .await
            .unwrap()
    );

    let now = h.tick(1000);
    assert!(
        h.store
            .job_transition(id, &[Starting], Running, JobChanges::new().timeout_secs(60))
            .await
            .unwrap()
    );
    let job = h.job(id).await;
    assert_eq!(job.state, Running);
    assert_eq!(job.started_at, Some(now), "started_at stamped");
    assert_eq!(job.timeout_secs, Some(60));

    let now = h.tick(1000);
    let failed = JobChanges::new()
        .exit_code(3)
        .error("exit 3")
        .clear_container_id();
    assert!(
        h.store
            .job_transition(id, &[Starting, Running], Failed, failed)
            .await
            .unwrap()
    );
    let job = h.job(id).await;
    assert_eq!(job.state, Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.error.as_deref(), Some("exit 3"));
    assert_eq!(job.container_id, None);
    assert_eq!(job.finished_at, Some(now), "finished_at stamped");
    assert_eq!(job.lease_owner, None, "lease dropped");
    assert_eq!(job.lease_expires_at, None);
    assert!(
        !h.store
            .job_transition(id, &[Running], Completed, JobChanges::new())
            .await
            .unwrap()
    );
    assert_eq!(h.job(id).await, job);
}

async fn invalid_transitions_are_errors(h: &Harness) {
    let job = h.insert(1, "linux").await;
    let cases: &[(&[JobState], JobState)] = &[
        (&[Provisioning], Queued), // requeue instead
        (&[Queued], Provisioning), // claim instead
        (&[Queued], Starting),     // not claimed
        (&[Running], Starting),    // backwards
        (&[Starting], Starting),   // not a move
        (&[Completed], Failed),    // out of a terminal state
        (&[], Running),            // from nowhere
    ];
    for (from, to) in cases {
        let result = h
            .store
            .job_transition(job.id, from, *to, JobChanges::new())
            .await;
        assert!(
            matches!(result, Err(StoreError::InvalidTransition { .. })),
            "{from:?} -> {to}: {result:?}"
        );
    }
    assert!(matches!(
        h.store.job_finish(job.id, Running, None, None).await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        h.store
            .job_requeue(job.id, &[Running, Completed], "no")
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert_eq!(h.job(job.id).await, job, "nothing changed");
}

async fn finish_is_idempotent(h: &Harness) {
    let job = h.insert(1, "linux").await;
    h.claim("linux").await.unwrap();
    assert!(
        h.store
            .job_transition(job.id, &[Provisioning], Running, JobChanges::new())
            .await
            .unwrap()
    );

    let now = h.tick(5000);
    assert!(
        h.store
            .job_finish(job.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    let done = h.job(job.id).await;
    assert_eq!(done.state, Completed);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.finished_at, Some(now));
    assert_eq!(done.lease_owner, None);

    // A second finish, whatever it says, changes nothing.
    h.tick(5000);
    assert!(
        !h.store
            .job_finish(job.id, Failed, Some(1), Some("late"))
            .await
            .unwrap()
    );
    assert!(
        !h.store
            .job_finish(job.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    assert_eq!(h.job(job.id).await, done);
    assert!(
        !h.store
            .job_finish(Uuid::now_v7(), Completed, None, None)
            .await
            .unwrap()
    );

    // A queued job can end too (expired, cancelled).
    let queued = h.insert(2, "linux").await;
    assert!(
        h.store
            .job_finish(queued.id, Expired, None, Some("no longer queued on GitHub"))
            .await
            .unwrap()
    );
    let expired = h.job(queued.id).await;
    assert_eq!(expired.state, Expired);
    assert_eq!(expired.error.as_deref(), Some("no longer queued on GitHub"));

    // completed clears a stale error (a requeue reason); a failure keeps an
    // earlier one when it brings none, and an earlier exit code too.
    let j3 = h.insert(3, "linux").await;
    h.claim("linux").await.unwrap();
    assert!(
        h.store
            .job_requeue(j3.id, &[Provisioning], "lease expired")
            .await
            .unwrap()
    );
    h.claim("linux").await.unwrap();
    assert!(
        h.store
            .job_finish(j3.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    assert_eq!(h.job(j3.id).await.error, None);

    let j4 = h.insert(4, "linux").await;
    h.claim("linux").await.unwrap();
    let oom = JobChanges::new().exit_code(137).error("out of memory");
    assert!(
        h.store
            .job_transition(j4.id, &[Provisioning], Running, oom)
            .await
            .unwrap()
    );
    assert!(h.store.job_finish(j4.id, Failed, None, None).await.unwrap());
    let j4 = h.job(j4.id).await;
    assert_eq!(j4.error.as_deref(), Some("out of memory"));
    assert_eq!(j4.exit_code, Some(137));
}

async fn requeue_clears_the_runner_and_keeps_attempts(h: &Harness) {
    let job = h.insert(1, "linux").await;
    h.claim("linux").await.unwrap();
    let runner = JobChanges::new().runner("berth-1", 1).container_id("c1");
    assert!(
        h.store
            .job_transition(job.id, &[Provisioning], Starting, runner)
            .await
            .unwrap()
    );
    assert!(
        h.store
            .job_transition(job.id, &[Starting], Running, JobChanges::new())
            .await
            .unwrap()
    );
    let running = h.job(job.id).await;

    h.tick(1000);
    assert!(
        !h.store
            .job_requeue(job.id, &[Provisioning, Starting], "x")
            .await
            .unwrap()
    );
    assert_eq!(
        h.job(job.id).await,
        running,
        "wrong from-state changes nothing"
    );

    let now = h.tick(1000);
    assert!(
        h.store
            .job_requeue(job.id, &[Running], "runner took another job")
            .await
            .unwrap()
    );
    let job = h.job(job.id).await;
    assert_eq!(job.state, Queued);
    assert_eq!(job.queued_at, now);
    assert_eq!(job.updated_at, now);
    assert_eq!(job.attempts, 1, "attempts kept");
    assert_eq!(job.error.as_deref(), Some("runner took another job"));
    assert_eq!((job.runner_name, job.runner_id), (None, None));
    assert_eq!(job.container_id, None);
    assert_eq!(job.started_at, None);
    assert_eq!((job.lease_owner, job.lease_expires_at), (None, None));
    assert_eq!(job.created_at, running.created_at);

    assert_eq!(h.claim("linux").await.unwrap().attempts, 2);
}

/// A worker's exit is decided on a snapshot of its job; GitHub may give the
/// runner to another job meanwhile (`job_take_runner`). The snapshot's
/// outcome then applies to neither job (found in CI: the job that took the
/// runner was expired by its former runner's exit).
async fn outcomes_decided_for_a_runner_apply_only_while_the_job_holds_it(h: &Harness) {
    let mine = provisioning_with_runner(h, 1, "berth-a").await;
    let theirs = provisioning_with_runner(h, 2, "berth-b").await;
    for (job, container) in [(&mine, "ca"), (&theirs, "cb")] {
        let running = JobChanges::new().container_id(container);
        assert!(
            h.store
                .job_transition(job.id, &[Provisioning], Running, running)
                .await
                .unwrap()
        );
    }
    let stale_mine = h.job(mine.id).await;
    let stale_theirs = h.job(theirs.id).await;

    // GitHub gave runner `berth-a` job 2: the two jobs trade runners.
    let rebound = h.store.job_take_runner(2, "berth-a").await.unwrap();
    assert_eq!(rebound.map(|r| r.taken_by), Some(theirs.id));
    assert_eq!(
        h.job(theirs.id).await.runner_name.as_deref(),
        Some("berth-a")
    );
    assert_eq!(h.job(mine.id).await.runner_name.as_deref(), Some("berth-b"));

    for stale in [&stale_mine, &stale_theirs] {
        let before = h.job(stale.id).await;
        let runner = stale.runner_name.as_deref();
        assert!(
            !h.store
                .job_finish_holding(stale.id, runner, Expired, Some(0), Some("stale"))
                .await
                .unwrap()
        );
        assert!(
            !h.store
                .job_requeue_holding(stale.id, runner, JobState::ACTIVE, "stale")
                .await
                .unwrap()
        );
        assert_eq!(
            h.job(stale.id).await,
            before,
            "a stale outcome changes nothing"
        );
    }

    // Decided again on what the jobs hold now, the outcomes apply.
    assert!(
        h.store
            .job_finish_holding(theirs.id, Some("berth-a"), Completed, Some(0), None)
            .await
            .unwrap()
    );
    assert_eq!(h.job(theirs.id).await.state, Completed);
    assert!(
        h.store
            .job_requeue_holding(mine.id, Some("berth-b"), JobState::ACTIVE, "again")
            .await
            .unwrap()
    );
    let requeued = h.job(mine.id).await;
    assert_eq!((requeued.state, requeued.runner_name), (Queued, None));

    // A job holding no runner is matched by `None`.
    assert!(
        !h.store
            .job_finish_holding(mine.id, Some("berth-b"), Failed, None, None)
            .await
            .unwrap()
    );
    assert!(
        h.store
            .job_finish_holding(mine.id, None, Failed, None, Some("gone"))
            .await
            .unwrap()
    );
    assert_eq!(h.job(mine.id).await.state, Failed);
}

async fn leases_expire_by_the_injected_clock(h: &Harness) {
    let job = h.insert(1, "linux").await;
    let now = h.now();
    let claimed = h
        .store
        .job_claim_on_one_host("linux", 10, 10, "d1", now + Duration::from_secs(30), now)
        .await
        .unwrap()
        .unwrap();
    assert!(
        h.store
            .jobs_with_expired_leases(now)
            .await
            .unwrap()
            .is_empty()
    );

    // Only the holder renews, and only while the lease runs.
    let now = h.tick(20_000);
    let until = now + Duration::from_secs(30);
    assert!(!h.store.job_lease_renew(job.id, "d2", until).await.unwrap());
    assert!(h.store.job_lease_renew(job.id, "d1", until).await.unwrap());
    assert_eq!(h.job(job.id).await.lease_expires_at, Some(until));
    assert!(
        h.store
            .jobs_with_expired_leases(h.tick(29_999))
            .await
            .unwrap()
            .is_empty()
    );

    let expired_at = h.tick(1);
    assert_eq!(
        ids(&h.store.jobs_with_expired_leases(expired_at).await.unwrap()),
        [claimed.id]
    );
    let later = h.tick(1);
    assert!(
        !h.store
            .job_lease_renew(job.id, "d1", later + Duration::from_secs(30))
            .await
            .unwrap(),
        "a lease that ran out cannot be renewed"
    );

    // The reconciler requeues it, but only while the lease is still expired
    // as of the time it checked.
    let before_expiry = expired_at - Duration::from_millis(1);
    assert!(
        !h.store
            .job_requeue_if_lease_expired(job.id, JobState::ACTIVE, before_expiry, "lease expired")
            .await
            .unwrap()
    );
    assert!(
        h.store
            .job_requeue_if_lease_expired(job.id, JobState::ACTIVE, later, "lease expired")
            .await
            .unwrap()
    );
    let requeued = h.job(job.id).await;
    assert_eq!(requeued.state, Queued);
    assert_eq!(requeued.lease_owner, None);
    assert!(
        h.store
            .jobs_with_expired_leases(later)
            .await
            .unwrap()
            .is_empty()
    );

    // A renewal between the reconciler's query and its requeue wins.
    let now = h.now();
    h.store
        .job_claim_on_one_host("linux", 10, 10, "d2", now + Duration::from_secs(10), now)
        .await
        .unwrap()
        .unwrap();
    let seen_at = h.tick(10_000);
    assert_eq!(
        h.store
            .jobs_with_expired_leases(seen_at)
            .await
            .unwrap()
            .len(),
        1
    );
    h.clock.set(seen_at - Duration::from_millis(1));
    assert!(
        h.store
            .job_lease_renew(job.id, "d2", seen_at + Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !h.store
            .job_requeue_if_lease_expired(job.id, JobState::ACTIVE, seen_at, "lease expired")
            .await
            .unwrap()
    );
    let job = h.job(job.id).await;
    assert_eq!(job.state, Provisioning);
    assert_eq!(job.attempts, 2);
}

async fn github_status_only_moves_forward(h: &Harness) {
    let store = &h.store;
    let job = h.insert(1, "linux").await;

    // completed arrives before in_progress.
    assert!(
        store
            .job_record_github_status(
                1,
                GithubStatus::Completed,
                Some("success"),
                Some("berth-a"),
                Some(5)
            )
            .await
            .unwrap()
    );
    let done = h.job(job.id).await;
    assert_eq!(done.github_status, Some(GithubStatus::Completed));
    assert_eq!(done.github_conclusion.as_deref(), Some("success"));
    assert_eq!(done.github_runner_name.as_deref(), Some("berth-a"));
    assert_eq!(done.github_runner_id, Some(5));
    assert_eq!(done.state, Queued, "the job's own state is not GitHub's");

    h.tick(1000);
    for (status, runner) in [
        (GithubStatus::InProgress, Some("berth-b")),
        (GithubStatus::Waiting, None),
        (GithubStatus::Queued, None),
        (GithubStatus::Completed, Some("berth-c")), // same status, nothing missing
    ] {
        assert!(
            !store
                .job_record_github_status(1, status, None, runner, Some(6))
                .await
                .unwrap(),
            "{status} after completed"
        );
    }
    assert_eq!(h.job(job.id).await, done, "late events change nothing");

    // The same status may fill in what was missing, never overwrite.
    let other = {
        let mut new = new_job(2, "linux");
        new.github_status = None;
        h.store.job_insert(new).await.unwrap().0
    };
    let record = |status, conclusion, runner, id| {
        store.job_record_github_status(2, status, conclusion, runner, id)
    };
    assert!(
        record(GithubStatus::InProgress, None, None, None)
            .await
            .unwrap()
    );
    assert!(
        !record(GithubStatus::InProgress, None, None, None)
            .await
            .unwrap()
    );
    assert!(
        record(GithubStatus::InProgress, None, Some("berth-k"), Some(9))
            .await
            .unwrap()
    );
    assert!(
        !record(GithubStatus::InProgress, None, Some("berth-z"), Some(10))
            .await
            .unwrap()
    );
    assert!(
        !record(GithubStatus::Waiting, None, None, None)
            .await
            .unwrap()
    );
    assert!(
        record(GithubStatus::Completed, Some("failure"), None, None)
            .await
            .unwrap()
    );
    let other = h.job(other.id).await;
    assert_eq!(other.github_status, Some(GithubStatus::Completed));
    assert_eq!(other.github_conclusion.as_deref(), Some("failure"));
    assert_eq!(other.github_runner_name.as_deref(), Some("berth-k"), "kept");
    assert_eq!(other.github_runner_id, Some(9));

    assert!(
        !record(GithubStatus::Queued, None, None, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .job_record_github_status(404, GithubStatus::Queued, None, None, None)
            .await
            .unwrap(),
        "unknown GitHub job"
    );
}

// ---- Reconciler queries and listings ---------------------------------------------

async fn reconciler_queries(h: &Harness) {
    let store = &h.store;
    let t0 = h.now();
    let old = h.insert(1, "linux").await;
    h.tick(600_000);
    let young = h.insert(2, "linux").await;

    // Three running jobs: one past its 60 s timeout, one within it, one without.
    let mut running = Vec::new();
    for (github_job_id, timeout) in [(3, Some(60)), (4, Some(3600)), (5, None)] {
        let mut new = new_job(github_job_id, "gpu");
        new.timeout_secs = timeout;
        let (job, _) = store.job_insert(new).await.unwrap();
        h.claim("gpu").await.unwrap();
        let changes = JobChanges::new()
            .runner(format!("berth-{github_job_id}"), github_job_id)
            .container_id(format!("container-{github_job_id}"));
        assert!(
            store
                .job_transition(job.id, &[Provisioning], Running, changes)
                .await
                .unwrap()
        );
        running.push(h.job(job.id).await);
        h.tick(1);
    }
    // A finished job whose container is not yet removed.
    let done = h.insert(6, "gpu").await;
    h.claim("gpu").await.unwrap();
    let changes = JobChanges::new()
        .runner("berth-6", 6)
        .container_id("container-6");
    assert!(
        store
            .job_transition(done.id, &[Provisioning], Running, changes)
            .await
            .unwrap()
    );
    assert!(
        store
            .job_finish(done.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    // GitHub says a queued job's runner is berth-x.
    assert!(
        store
            .job_record_github_status(2, GithubStatus::InProgress, None, Some("berth-x"), None)
            .await
            .unwrap()
    );

    let five_min = t0 + Duration::from_secs(300);
    assert_eq!(
        ids(&store.jobs_queued_before(five_min).await.unwrap()),
        [old.id]
    );
    assert_eq!(
        ids(&store.jobs_queued_before(h.now()).await.unwrap()),
        [old.id, young.id]
    );

    let started = running[0].started_at.unwrap();
    assert_eq!(
        running[0].deadline(),
        Some(started + Duration::from_secs(60))
    );
    let just_before = started + Duration::from_millis(59_999);
    assert!(
        store
            .jobs_running_past_timeout(just_before)
            .await
            .unwrap()
            .is_empty()
    );
    let at_deadline = started + Duration::from_secs(60);
    assert_eq!(
        ids(&store.jobs_running_past_timeout(at_deadline).await.unwrap()),
        [running[0].id]
    );
    let much_later = started + Duration::from_secs(86_400);
    assert_eq!(
        ids(&store.jobs_running_past_timeout(much_later).await.unwrap()),
        [running[0].id, running[1].id]
    );

    assert_eq!(
        ids(&store.jobs_in_states(&[Running]).await.unwrap()),
        ids(&running)
    );
    assert_eq!(
        ids(&store.jobs_in_states(&[Queued, Completed]).await.unwrap()),
        [old.id, young.id, done.id]
    );
    assert!(store.jobs_in_states(&[]).await.unwrap().is_empty());

    let containers: BTreeSet<String> = ["container-3", "container-4", "container-5"]
        .map(String::from)
        .into();
    assert_eq!(store.active_container_ids().await.unwrap(), containers);
    let runners: BTreeSet<String> = ["berth-3", "berth-4", "berth-5", "berth-x"]
        .map(String::from)
        .into();
    assert_eq!(store.active_runner_names().await.unwrap(), runners);
}

async fn job_list_and_counts(h: &Harness) {
    let store = &h.store;
    let mut all = Vec::new();
    for (github_job_id, pool) in [(1, "linux"), (2, "windows"), (3, "linux"), (4, "linux")] {
        all.push(h.insert(github_job_id, pool).await);
        h.tick(1);
    }
    h.claim("linux").await.unwrap();
    assert!(
        store
            .job_finish(all[1].id, Cancelled, None, None)
            .await
            .unwrap()
    );

    let newest_first: Vec<Uuid> = all.iter().rev().map(|job| job.id).collect();
    assert_eq!(
        ids(&store.job_list(&JobFilter::default()).await.unwrap()),
        newest_first
    );
    let filter = JobFilter {
        states: vec![Queued],
        ..JobFilter::default()
    };
    assert_eq!(
        ids(&store.job_list(&filter).await.unwrap()),
        [all[3].id, all[2].id]
    );
    let filter = JobFilter {
        states: vec![Queued, Provisioning],
        pool: Some("linux".into()),
        limit: Some(2),
        ..JobFilter::default()
    };
    assert_eq!(
        ids(&store.job_list(&filter).await.unwrap()),
        [all[3].id, all[2].id]
    );
    let filter = JobFilter {
        pool: Some("windows".into()),
        repository: Some("acme/widgets".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(&store.job_list(&filter).await.unwrap()), [all[1].id]);
    let filter = JobFilter {
        repository: Some("acme/other".into()),
        ..JobFilter::default()
    };
    assert!(store.job_list(&filter).await.unwrap().is_empty());

    let count = |pool: &str, state, count| JobCount {
        pool: pool.into(),
        state,
        count,
    };
    assert_eq!(
        store.job_counts().await.unwrap(),
        [
            count("linux", Provisioning, 1),
            count("linux", Queued, 2),
            count("windows", Cancelled, 1),
        ]
    );
}

// ---- Logs, deliveries, tokens ------------------------------------------------------

async fn logs_keep_the_first_cap_bytes(h: &Harness) {
    let store = &h.store;
    let job = h.insert(1, "linux").await;
    assert_eq!(store.job_logs_get(job.id).await.unwrap(), None);

    let state = store.job_logs_append(job.id, b"hello ", 16).await.unwrap();
    assert_eq!((state.size, state.truncated), (6, false));
    let state = store.job_logs_append(job.id, b"world", 16).await.unwrap();
    assert_eq!((state.size, state.truncated), (11, false));
    let state = store
        .job_logs_append(job.id, b"0123456789", 16)
        .await
        .unwrap();
    assert_eq!((state.size, state.truncated), (16, true));
    let state = store.job_logs_append(job.id, b"more", 16).await.unwrap();
    assert_eq!((state.size, state.truncated), (16, true));
    let logs = store.job_logs_get(job.id).await.unwrap().unwrap();
    assert_eq!(logs.content, b"hello world01234");
    assert_eq!((logs.size, logs.truncated), (16, true));

    let tail = store.job_logs_get_from(job.id, 6).await.unwrap().unwrap();
    assert_eq!(tail.content, b"world01234");
    assert_eq!(tail.size, 16);
    let past_end = store.job_logs_get_from(job.id, 100).await.unwrap().unwrap();
    assert!(past_end.content.is_empty());

    // Arbitrary bytes (NUL, invalid UTF-8) come back exactly.
    let binary = h.insert(2, "linux").await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    store
        .job_logs_append(binary.id, &bytes, 1000)
        .await
        .unwrap();
    store
        .job_logs_append(binary.id, &bytes, 1000)
        .await
        .unwrap();
    let logs = store.job_logs_get(binary.id).await.unwrap().unwrap();
    assert_eq!(logs.content, [bytes.clone(), bytes.clone()].concat());
    assert!(!logs.truncated);
    store.job_logs_append(binary.id, &[], 1000).await.unwrap();
    assert_eq!(
        store.job_logs_get(binary.id).await.unwrap().unwrap().size,
        512
    );

    // A first chunk larger than the cap.
    let big = h.insert(3, "linux").await;
    let state = store.job_logs_append(big.id, &bytes, 10).await.unwrap();
    assert_eq!((state.size, state.truncated), (10, true));
    assert_eq!(
        store.job_logs_get(big.id).await.unwrap().unwrap().content,
        &bytes[..10]
    );

    // Logs belong to a job.
    assert!(matches!(
        store.job_logs_append(Uuid::now_v7(), b"x", 10).await,
        Err(StoreError::Query {
            op: "job_logs_append",
            ..
        })
    ));
}

async fn concurrent_log_appends_lose_nothing(h: &Harness) {
    let job = h.insert(1, "linux").await;
    let tasks: Vec<_> = (0..8u8)
        .map(|task| {
            let store = h.store.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .job_logs_append(job.id, &[b'a' + task; 10], 1500)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let logs = h.store.job_logs_get(job.id).await.unwrap().unwrap();
    assert_eq!(
        (logs.size, logs.truncated),
        (1500, true),
        "2000 bytes offered, cap 1500"
    );
    assert_eq!(logs.content.len(), 1500);
    for chunk in logs.content.chunks(10) {
        assert!(
            chunk.iter().all(|&b| b == chunk[0]),
            "chunks never interleave: {chunk:?}"
        );
    }
}

async fn deliveries_are_recorded_once(h: &Harness) {
    let store = &h.store;
    let t0 = h.now();
    assert!(store.delivery_record("d-1", t0).await.unwrap());
    assert!(
        !store.delivery_record("d-1", t0).await.unwrap(),
        "redelivery"
    );
    // What the delivery catch-up asks.
    assert!(store.delivery_known("d-1").await.unwrap());
    assert!(!store.delivery_known("d-unknown").await.unwrap());
    assert!(
        !store
            .delivery_record("d-1", t0 + Duration::from_secs(5))
            .await
            .unwrap()
    );
    let t1 = t0 + Duration::from_secs(3600);
    assert!(store.delivery_record("d-2", t1).await.unwrap());

    assert_eq!(
        store.deliveries_prune(t0, 100).await.unwrap(),
        0,
        "strictly older only"
    );
    assert_eq!(
        store
            .deliveries_prune(t0 + Duration::from_secs(60), 100)
            .await
            .unwrap(),
        1
    );
    assert!(
        store.delivery_record("d-1", t1).await.unwrap(),
        "forgotten after the prune"
    );
    assert!(!store.delivery_record("d-2", t1).await.unwrap(), "kept");
}

async fn api_tokens_are_found_by_hash(h: &Harness) {
    let store = &h.store;
    let token = store
        .api_token_insert(NewApiToken {
            name: "proxy".into(),
            scope: ApiTokenScope::Delegate,
            token_hash: "9f86d081884c7d65".into(),
            expires_at: None,
            session_of: None,
        })
        .await
        .unwrap();
    assert_eq!(token.created_at, h.now());
    assert_eq!(token.last_used_at, None);
    assert_eq!(
        store
            .api_token_find_by_hash("9f86d081884c7d65")
            .await
            .unwrap(),
        Some(token.clone())
    );
    assert_eq!(store.api_token_find_by_hash("nope").await.unwrap(), None);

    let now = h.tick(1000);
    assert!(store.api_token_touch(token.id).await.unwrap());
    let found = store
        .api_token_find_by_hash("9f86d081884c7d65")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.last_used_at, Some(now));
    assert!(!store.api_token_touch(Uuid::now_v7()).await.unwrap());

    let json = serde_json::to_value(&found).unwrap();
    assert!(
        json.get("token_hash").is_none(),
        "the hash is not shown: {json}"
    );
    assert_eq!(json["scope"], "delegate");

    let duplicate = NewApiToken {
        name: "again".into(),
        scope: ApiTokenScope::Admin,
        token_hash: "9f86d081884c7d65".into(),
        expires_at: None,
        session_of: None,
    };
    assert!(matches!(
        store.api_token_insert(duplicate).await,
        Err(StoreError::Query {
            op: "api_token_insert",
            ..
        })
    ));
}

fn new_token(name: &str, scope: ApiTokenScope, hash: &str) -> NewApiToken {
    NewApiToken {
        name: name.into(),
        scope,
        token_hash: hash.into(),
        expires_at: None,
        session_of: None,
    }
}

async fn api_tokens_expire_and_are_revoked_with_their_sessions(h: &Harness) {
    let store = &h.store;
    let start = h.now();
    let admin = store
        .api_token_insert(NewApiToken {
            expires_at: Some(start + Duration::from_secs(3600)),
            ..new_token("ops", ApiTokenScope::Admin, "hash-admin")
        })
        .await
        .unwrap();
    assert_eq!(admin.expires_at, Some(start + Duration::from_secs(3600)));
    assert_eq!((admin.revoked_at, admin.session_of), (None, None));
    h.tick(10);
    let session = store
        .api_token_insert(NewApiToken {
            expires_at: Some(start + Duration::from_secs(600)),
            session_of: Some(admin.id),
            ..new_token("dashboard session", ApiTokenScope::Read, "hash-session")
        })
        .await
        .unwrap();
    h.tick(10);
    let other = store
        .api_token_insert(new_token("proxy", ApiTokenScope::Delegate, "hash-other"))
        .await
        .unwrap();

    // What was stored reads back whole, by hash, by id and in the lists.
    assert_eq!(
        store.api_token_find_by_hash("hash-session").await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(
        store.api_token_get(admin.id).await.unwrap(),
        Some(admin.clone())
    );
    assert_eq!(store.api_token_get(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(
        store.api_token_list(false).await.unwrap(),
        [admin.clone(), other.clone()],
        "sessions are left out by default"
    );
    assert_eq!(
        store.api_token_list(true).await.unwrap(),
        [admin.clone(), session.clone(), other.clone()],
        "oldest first, sessions included"
    );
    let json = serde_json::to_value(&session).unwrap();
    assert_eq!(json["session_of"], admin.id.to_string());
    assert!(json.get("token_hash").is_none(), "{json}");

    // Revoking the admin token revokes its session, nothing else.
    let revoked_at = h.tick(1000);
    let revoked = store
        .api_token_revoke(admin.id, revoked_at)
        .await
        .unwrap()
        .expect("a known token");
    assert_eq!(revoked.revoked_at, Some(revoked_at));
    assert_eq!(
        (revoked.id, revoked.expires_at),
        (admin.id, admin.expires_at)
    );
    let session_now = store.api_token_get(session.id).await.unwrap().unwrap();
    assert_eq!(session_now.revoked_at, Some(revoked_at), "with its session");
    let other_now = store.api_token_get(other.id).await.unwrap().unwrap();
    assert_eq!(other_now.revoked_at, None, "another token is untouched");

    // Again: idempotent, the first time stands.
    let later = h.tick(5000);
    let again = store
        .api_token_revoke(admin.id, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert_eq!(
        store.api_token_revoke(Uuid::now_v7(), later).await.unwrap(),
        None,
        "an unknown id"
    );

    // A session made after its parent was revoked (a sign-in racing the
    // revocation) is still found revoked, with the parent's time.
    let late = store
        .api_token_insert(NewApiToken {
            expires_at: Some(later + Duration::from_secs(600)),
            session_of: Some(admin.id),
            ..new_token("dashboard session", ApiTokenScope::Read, "hash-late")
        })
        .await
        .unwrap();
    assert_eq!(late.revoked_at, None);
    let found = store
        .api_token_find_by_hash("hash-late")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.revoked_at, Some(revoked_at));

    // Revoking a session alone leaves its parent as it was.
    let other_session = store
        .api_token_insert(NewApiToken {
            expires_at: Some(later + Duration::from_secs(600)),
            session_of: Some(other.id),
            ..new_token("dashboard session", ApiTokenScope::Read, "hash-s2")
        })
        .await
        .unwrap();
    store
        .api_token_revoke(other_session.id, later)
        .await
        .unwrap()
        .unwrap();
    let other_now = store.api_token_get(other.id).await.unwrap().unwrap();
    assert_eq!(other_now.revoked_at, None);

    // A reopened store reads the same.
    let reopened = h.reopen().await;
    assert_eq!(
        reopened.api_token_list(true).await.unwrap(),
        store.api_token_list(true).await.unwrap()
    );
    reopened.close().await;
}

async fn expired_dashboard_sessions_are_pruned(h: &Harness) {
    let store = &h.store;
    let start = h.now();
    let parent = store
        .api_token_insert(NewApiToken {
            expires_at: Some(start),
            ..new_token("ops", ApiTokenScope::Admin, "parent")
        })
        .await
        .unwrap();
    let session = |hash: &str, expires_at| NewApiToken {
        expires_at: Some(expires_at),
        session_of: Some(parent.id),
        ..new_token("dashboard session", ApiTokenScope::Read, hash)
    };
    let mut old = Vec::new();
    for i in 0..3 {
        let expired = start + Duration::from_secs(60 * i);
        h.tick(1);
        old.push(
            store
                .api_token_insert(session(&format!("old-{i}"), expired))
                .await
                .unwrap()
                .id,
        );
    }
    h.tick(1);
    let cutoff = start + Duration::from_secs(3600);
    let recent = store
        .api_token_insert(session("recent", cutoff))
        .await
        .unwrap();
    h.tick(1);
    let live = store
        .api_token_insert(session("live", cutoff + Duration::from_secs(3600)))
        .await
        .unwrap();

    // In batches: two, then what is left.
    assert_eq!(store.api_tokens_prune_sessions(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.api_tokens_prune_sessions(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.api_tokens_prune_sessions(cutoff, 2).await.unwrap(), 0);
    for id in old {
        assert_eq!(store.api_token_get(id).await.unwrap(), None, "pruned");
    }
    // Expired at the cutoff exactly, or not expired: kept. An ordinary
    // token, even expired long ago, is never pruned.
    let left: Vec<Uuid> = store
        .api_token_list(true)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, [parent.id, recent.id, live.id]);
}

async fn prune_deletes_finished_jobs_and_their_logs(h: &Harness) {
    let store = &h.store;
    let old = h.insert(1, "linux").await;
    store
        .job_logs_append(old.id, b"old output", 100)
        .await
        .unwrap();
    assert!(
        store
            .job_finish(old.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    let live = h.insert(2, "linux").await;
    store
        .job_logs_append(live.id, b"live output", 100)
        .await
        .unwrap();
    h.tick(86_400_000);
    let recent = h.insert(3, "linux").await;
    assert!(
        store
            .job_finish(recent.id, Failed, None, Some("x"))
            .await
            .unwrap()
    );

    let older = h.insert(4, "linux").await;
    assert!(
        store
            .job_finish(older.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    store
        .job_logs_append(older.id, b"older output", 100)
        .await
        .unwrap();
    let now = h.tick(86_400_000);
    // Logs first (their jobs stay), in bounded batches.
    assert_eq!(
        store
            .job_logs_prune(now - Duration::from_secs(1), 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .job_logs_prune(now - Duration::from_secs(1), 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .job_logs_prune(now - Duration::from_secs(1), 1)
            .await
            .unwrap(),
        0
    );
    assert!(store.job_get(older.id).await.unwrap().is_some());
    assert_eq!(store.job_logs_get(older.id).await.unwrap(), None);
    assert!(
        store.job_logs_get(live.id).await.unwrap().is_some(),
        "a live job keeps its logs"
    );
    // Then the jobs, oldest first, a batch at a time.
    assert_eq!(
        store
            .jobs_prune_finished(now - Duration::from_secs(86_400), 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.job_get(old.id).await.unwrap(), None);
    assert_eq!(
        store.job_logs_get(old.id).await.unwrap(),
        None,
        "logs went with the job"
    );
    assert!(store.job_get(live.id).await.unwrap().is_some());
    assert!(store.job_logs_get(live.id).await.unwrap().is_some());
    assert!(store.job_get(recent.id).await.unwrap().is_some());
    assert!(store.job_get(older.id).await.unwrap().is_some());
    assert_eq!(store.jobs_prune_finished(now, 10).await.unwrap(), 2);
    assert!(store.job_get(live.id).await.unwrap().is_some());
}

/// A database a newer berth migrated (a version this binary does not know)
/// is refused at connect, before anything is migrated or written, with the
/// versions and what to do.
async fn a_store_of_a_newer_schema_is_refused(h: &Harness) {
    let kind = h.store.kind();
    let latest = berth::store::latest_schema_version(kind);
    assert_eq!(h.store.schema_version().await.unwrap(), latest);
    h.insert(1, "linux").await;
    let future = latest + 1;
    let record =
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                  VALUES ($1, 'from a newer berth', TRUE, $2, 0)";
    match kind {
        BackendKind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&h.url).await.unwrap();
            sqlx::query(record)
                .bind(future)
                .bind(vec![0u8; 48])
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
        BackendKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&h.url).await.unwrap();
            sqlx::query(record)
                .bind(future)
                .bind(vec![0u8; 48])
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
    let err = Store::connect_with(&h.url, StoreOptions::default())
        .await
        .expect_err("a newer schema is refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { version, latest: l, .. } if version == future && l == latest),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        format!("schema version {future}, newer than this berth knows (latest {latest})"),
        "it was written by a newer berth".into(),
        "Run that version, or restore a backup taken before the upgrade".into(),
    ] {
        assert!(message.contains(&part), "{part}: {message}");
    }
    // Nothing was changed: the job is still there for the newer berth.
    assert_eq!(
        h.store.job_list(&JobFilter::default()).await.unwrap().len(),
        1
    );
}

async fn everything_survives_a_reopen(h: &Harness) {
    let store = &h.store;
    store.ping().await.unwrap();
    let job = h.insert(1, "linux").await;
    h.claim("linux").await.unwrap();
    let changes = JobChanges::new().runner("berth-1", 1).container_id("c1");
    assert!(
        store
            .job_transition(job.id, &[Provisioning], Starting, changes)
            .await
            .unwrap()
    );
    let queued = h.insert(2, "linux").await;
    assert!(store.job_request_cancel(queued.id).await.unwrap());
    store
        .job_logs_append(job.id, b"output\n", 1024)
        .await
        .unwrap();
    assert!(store.delivery_record("d-1", h.now()).await.unwrap());
    let token = store
        .api_token_insert(NewApiToken {
            name: "ci".into(),
            scope: ApiTokenScope::Read,
            token_hash: "abc".into(),
            expires_at: None,
            session_of: None,
        })
        .await
        .unwrap();
    let before = store.job_list(&JobFilter::default()).await.unwrap();
    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store refuses work");

    // What a restarted berth sees (migrations run again, as a no-op).
    let reopened = h.reopen().await;
    reopened.ping().await.unwrap();
    assert_eq!(
        reopened.job_list(&JobFilter::default()).await.unwrap(),
        before
    );
    let logs = reopened.job_logs_get(job.id).await.unwrap().unwrap();
    assert_eq!(logs.content, b"output\n");
    assert!(!reopened.delivery_record("d-1", h.now()).await.unwrap());
    assert_eq!(
        reopened.api_token_find_by_hash("abc").await.unwrap(),
        Some(token)
    );
    let (again, inserted) = reopened.job_insert(new_job(1, "linux")).await.unwrap();
    assert!(!inserted, "still deduplicated");
    assert_eq!(again.id, job.id);
    reopened.close().await;
}

// ---- Outside the suite: connection handling -----------------------------------

#[tokio::test]
async fn unsupported_urls_are_refused_without_their_password() {
    let error = Store::connect("mysql://root:hunter2@db/berth")
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedUrl { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.contains("sqlite://"),
        "says what would work: {message}"
    );
}

#[tokio::test]
async fn in_memory_sqlite_works_for_throwaway_stores() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.kind(), BackendKind::Sqlite);
    let (job, inserted) = store.job_insert(new_job(1, "linux")).await.unwrap();
    assert!(inserted);
    assert_eq!(store.job_get(job.id).await.unwrap(), Some(job));
}

#[tokio::test]
async fn a_missing_sqlite_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-folder-free.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    store.ping().await.unwrap();
    store.close().await;
}

/// A claimed job with its runner named, as provisioning has it before it
/// takes a warm container.
async fn provisioning_with_runner(h: &Harness, github_job_id: i64, runner: &str) -> Job {
    h.insert(github_job_id, "linux").await;
    let job = h.claim("linux").await.expect("claimed");
    assert!(
        h.store
            .job_transition(
                job.id,
                &[Provisioning],
                Provisioning,
                JobChanges::new().runner_name(runner),
            )
            .await
            .unwrap()
    );
    job
}

async fn warm_containers_are_taken_once_and_bound_to_their_job(h: &Harness) {
    use berth::store::WarmContainer;
    let now = h.now();
    for (i, (id, fingerprint)) in [("c1", "f1"), ("c2", "f1"), ("c3", "old")]
        .into_iter()
        .enumerate()
    {
        h.store
            .warm_insert(&WarmContainer {
                host: None,
                container_id: id.into(),
                pool: "linux".into(),
                fingerprint: fingerprint.into(),
                owner: "replica-1".into(),
                started: i == 0,
                created_at: now + Duration::from_millis(i as u64),
            })
            .await
            .unwrap();
    }
    let ids = |rows: Vec<WarmContainer>| -> Vec<String> {
        rows.into_iter().map(|w| w.container_id).collect()
    };
    let job = provisioning_with_runner(h, 1, "berth-a").await;

    // No provisioning job holds that runner: nothing is taken.
    assert_eq!(
        h.store
            .warm_take("linux", "f1", "berth-nobody")
            .await
            .unwrap(),
        None
    );
    assert_eq!(ids(h.store.warm_list().await.unwrap()), ["c1", "c2", "c3"]);
    // Another fingerprint or pool: none.
    assert_eq!(
        h.store.warm_take("linux", "f2", "berth-a").await.unwrap(),
        None
    );
    assert_eq!(
        h.store.warm_take("other", "f1", "berth-a").await.unwrap(),
        None
    );

    // The oldest matching one, recorded on the job in the same step.
    let taken = h.store.warm_take("linux", "f1", "berth-a").await.unwrap();
    assert_eq!(taken, Some(("c1".to_string(), true)));
    assert_eq!(h.job(job.id).await.container_id.as_deref(), Some("c1"));
    assert_eq!(ids(h.store.warm_list().await.unwrap()), ["c2", "c3"]);
    assert!(h.store.active_container_ids().await.unwrap().contains("c1"));

    // Two jobs race for the one container left with f1: exactly one wins.
    provisioning_with_runner(h, 2, "berth-b").await;
    provisioning_with_runner(h, 3, "berth-c").await;
    let (b, c) = tokio::join!(
        h.store.warm_take("linux", "f1", "berth-b"),
        h.store.warm_take("linux", "f1", "berth-c")
    );
    let wins: Vec<_> = [b.unwrap(), c.unwrap()].into_iter().flatten().collect();
    assert_eq!(wins, [("c2".to_string(), false)]);
    assert_eq!(ids(h.store.warm_list().await.unwrap()), ["c3"]);

    // Adoption and deletion: only the caller that deletes the row may remove
    // the container.
    assert!(h.store.warm_adopt("c3", "replica-2").await.unwrap());
    assert!(!h.store.warm_adopt("c3", "replica-2").await.unwrap());
    assert!(!h.store.warm_adopt("c9", "replica-2").await.unwrap());
    assert_eq!(h.store.warm_list().await.unwrap()[0].owner, "replica-2");
    assert!(h.store.warm_delete("c3").await.unwrap());
    assert!(!h.store.warm_delete("c3").await.unwrap());
    assert!(h.store.warm_list().await.unwrap().is_empty());
}

async fn leases_of_replicas_that_stopped_heartbeating_are_released(h: &Harness) {
    let a = h.insert(1, "linux").await;
    let b = h.insert(2, "linux").await;
    h.tick(1);
    let now = h.now();
    let until = now + Duration::from_secs(60);
    h.store.replica_heartbeat("alive", now).await.unwrap();
    h.store.replica_heartbeat("dead", now).await.unwrap();
    let claimed_dead = h
        .store
        .job_claim_on_one_host("linux", 10, 10, "dead", until, now)
        .await
        .unwrap()
        .unwrap();
    let claimed_alive = h
        .store
        .job_claim_on_one_host("linux", 10, 10, "alive", until, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((claimed_dead.id, claimed_alive.id), (a.id, b.id));
    let forget = now - Duration::from_secs(3600);

    // 5 s on, both beat recently enough: nothing is released.
    let now = h.tick(5_000);
    h.store.replica_heartbeat("alive", now).await.unwrap();
    let stale = now - Duration::from_secs(10);
    assert_eq!(
        h.store
            .leases_release_dead_replicas(stale, forget, now)
            .await
            .unwrap(),
        0
    );

    // 11 s after its last beat, "dead" is dead: its lease expires now, the
    // live replica's does not.
    let now = h.tick(6_000);
    h.store.replica_heartbeat("alive", now).await.unwrap();
    let stale = now - Duration::from_secs(10);
    assert_eq!(
        h.store
            .leases_release_dead_replicas(stale, forget, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(&h.store.jobs_with_expired_leases(now).await.unwrap()),
        [a.id]
    );
    assert_eq!(h.job(b.id).await.lease_expires_at, Some(until));
    // Idempotent: nothing more to release.
    assert_eq!(
        h.store
            .leases_release_dead_replicas(stale, forget, now)
            .await
            .unwrap(),
        0
    );

    // A clean stop marks the replica dead at once.
    h.store.replica_stopped("alive").await.unwrap();
    let now = h.tick(1);
    let stale = now - Duration::from_secs(10);
    assert_eq!(
        h.store
            .leases_release_dead_replicas(stale, forget, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(&h.store.jobs_with_expired_leases(now).await.unwrap()),
        [a.id, b.id]
    );
}

async fn leases_of_a_dead_predecessor_are_released_at_start(h: &Harness) {
    let a = h.insert(1, "linux").await;
    let b = h.insert(2, "linux").await;
    h.tick(1);
    let now = h.now();
    let until = now + Duration::from_secs(60);
    h.store
        .job_claim_on_one_host("linux", 10, 10, "old-process", until, now)
        .await
        .unwrap()
        .unwrap();
    h.store
        .job_claim_on_one_host("linux", 10, 10, "me", until, now)
        .await
        .unwrap()
        .unwrap();
    let now = h.tick(1);
    assert_eq!(h.store.leases_release_others("me", now).await.unwrap(), 1);
    assert_eq!(
        ids(&h.store.jobs_with_expired_leases(now).await.unwrap()),
        [a.id]
    );
    assert_eq!(h.job(b.id).await.lease_owner.as_deref(), Some("me"));
}

async fn an_exited_worker_frees_its_slot_before_its_job_ends(h: &Harness) {
    for i in 0..3 {
        h.insert(i, "linux").await;
        h.tick(1);
    }
    let now = h.now();
    let until = now + Duration::from_secs(60);
    let first = h
        .store
        .job_claim_on_one_host("linux", 1, 10, "d", until, now)
        .await
        .unwrap()
        .unwrap();
    assert!(
        h.store
            .job_transition(
                first.id,
                &[Provisioning],
                Running,
                JobChanges::new().container_id("c1")
            )
            .await
            .unwrap()
    );
    assert_eq!(
        h.store
            .job_claim_on_one_host("linux", 1, 10, "d", until, now)
            .await
            .unwrap(),
        None,
        "the pool is full"
    );

    // The worker exits: its slot is free while the job is still running
    // (its end being recorded).
    assert!(h.store.job_worker_exited("c1", h.tick(1)).await.unwrap());
    assert!(
        !h.store.job_worker_exited("c1", h.tick(1)).await.unwrap(),
        "recorded once"
    );
    assert!(!h.store.job_worker_exited("unknown", h.now()).await.unwrap());
    assert_eq!(h.job(first.id).await.state, Running);
    let second = h
        .store
        .job_claim_on_one_host("linux", 1, 10, "d", until, h.now())
        .await
        .unwrap();
    assert!(second.is_some(), "the exited worker's slot is free");
    assert_eq!(
        h.store
            .job_claim_on_one_host("linux", 1, 10, "d", until, h.now())
            .await
            .unwrap(),
        None
    );

    // A requeued job counts again once it is claimed again: the exit mark
    // belongs to its old container.
    assert!(
        h.store
            .job_requeue(first.id, JobState::ACTIVE, "ran another job")
            .await
            .unwrap()
    );
    let second = second.unwrap();
    assert!(
        h.store
            .job_finish(second.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    let third = h
        .store
        .job_claim_on_one_host("linux", 1, 10, "d", until, h.tick(1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        h.store
            .job_finish(third.id, Completed, Some(0), None)
            .await
            .unwrap()
    );
    let again = h
        .store
        .job_claim_on_one_host("linux", 1, 10, "d", until, h.tick(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(
        h.store
            .job_claim_on_one_host("linux", 1, 10, "d", until, h.now())
            .await
            .unwrap(),
        None,
        "the requeued job holds its slot again"
    );
}

async fn one_replica_holds_a_scale_set_listener_lease_at_a_time(h: &Harness) {
    use berth::store::ListenerLease;
    let store = &h.store;
    let ttl = Duration::from_secs(10);
    let now = h.now();
    let taken = |previous: Option<&str>| ListenerLease::Taken {
        previous_session: previous.map(str::to_string),
    };
    assert_eq!(
        store
            .scale_set_lease_take("linux", "a", now, ttl)
            .await
            .unwrap(),
        taken(None)
    );
    assert!(
        store
            .scale_set_lease_record_session("linux", "a", Some("session-a"))
            .await
            .unwrap()
    );
    // B waits while A's lease runs.
    assert!(matches!(
        store.scale_set_lease_take("linux", "b", now, ttl).await.unwrap(),
        ListenerLease::HeldBy { holder, .. } if holder == "a"
    ));
    // A renews and takes again (it is A's), keeping its session.
    let now = h.tick(5_000);
    assert!(
        store
            .scale_set_lease_renew("linux", "a", now, ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .scale_set_lease_take("linux", "a", now, ttl)
            .await
            .unwrap(),
        taken(None)
    );
    // A dies: once its lease ran out, B takes over and learns A's session.
    let now = h.tick(10_001);
    assert_eq!(
        store
            .scale_set_lease_take("linux", "b", now, ttl)
            .await
            .unwrap(),
        taken(Some("session-a"))
    );
    assert!(
        !store
            .scale_set_lease_renew("linux", "a", now, ttl)
            .await
            .unwrap(),
        "A lost it"
    );
    assert!(
        !store
            .scale_set_lease_record_session("linux", "a", Some("late"))
            .await
            .unwrap()
    );
    // Another scale set is another lease.
    assert_eq!(
        store
            .scale_set_lease_take("arm", "a", now, ttl)
            .await
            .unwrap(),
        taken(None)
    );
    // A clean stop gives it up at once, without a session to delete.
    assert!(store.scale_set_lease_release("linux", "b").await.unwrap());
    assert_eq!(
        store
            .scale_set_lease_take("linux", "a", now, ttl)
            .await
            .unwrap(),
        taken(None)
    );

    // Racing replicas: exactly one wins an expired lease.
    let now = h.tick(20_000);
    let mut racers = Vec::new();
    for n in 0..8 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store
                .scale_set_lease_take("linux", &format!("r{n}"), now, ttl)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for r in racers {
        if matches!(r.await.unwrap(), ListenerLease::Taken { .. }) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}
