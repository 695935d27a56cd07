-- Container jobs (docs/container-jobs.md): the runner's container hooks ask
-- berth, through `berth hook`, to run a job's containers.
--
-- hook_credentials: one row per worker of a `container_jobs` pool. The
--   credential itself (`bhk_…`, 32 random bytes) exists only in berth's
--   memory while it is handed to the worker over stdin and in the worker's
--   runner process; the store keeps its SHA-256. It belongs to the runner,
--   not to a job id: a runner that GitHub gives to another job
--   (store/rebind.rs) takes its credential along, and the credential acts
--   for whichever job holds the runner, only while that job is active.
--   Rows of runners whose job ended are deleted by retention.
-- job_containers: what the hook made for a job (the job container, its
--   services, container actions), for the API, dashboard and CLI. Docker's
--   labels (`berth.job`, `berth.role`) stay the truth the reconcilers act
--   on; removed_at is set once berth removed the container.
CREATE TABLE hook_credentials (
    token_hash  TEXT PRIMARY KEY,
    runner_name TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX hook_credentials_runner ON hook_credentials (runner_name);

CREATE TABLE job_containers (
    container_id TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    host         TEXT NOT NULL,
    role         TEXT NOT NULL,
    name         TEXT NOT NULL,
    image        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    removed_at   BIGINT
);
CREATE INDEX job_containers_job ON job_containers (job_id);
