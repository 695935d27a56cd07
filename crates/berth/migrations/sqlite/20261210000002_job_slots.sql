-- A job takes `slots` of its host's slots: the pool's `host_slots` when it
-- was claimed (1 unless the pool says more, e.g. a container-jobs pool whose
-- jobs run a job container and services next to the worker). The claim sums
-- them per host (store::jobs::CLAIM).
ALTER TABLE jobs ADD COLUMN slots BIGINT NOT NULL DEFAULT 1;
