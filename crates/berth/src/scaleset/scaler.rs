//! How many runners a scale set should have, and what to do about it.
//!
//! # The rule
//!
//! `desired = min(max_runners, max(min_runners + assigned, busy + idle_runners))`
//!
//! * `assigned` is the service's `totalAssignedJobs`: jobs assigned to the
//!   scale set and not completed, running ones included. Sizing on it (not
//!   on message counts) is what makes the listener correct after a restart
//!   or a lost message: the count is the service's, not berth's memory.
//! * `min_runners` is ARC's: a floor, plus one runner per assigned job.
//! * `idle_runners` keeps that many runners idle *on top of the busy ones*,
//!   so a burst of jobs starts on runners that are already up.
//!
//! # The plan
//!
//! The runners that exist are the orchestrator's (its non-terminal jobs of
//! the scale set) plus the delegations still in flight. Fewer than desired:
//! create the difference — for assigned jobs berth saw, keyed by their
//! `runnerRequestId`; for the rest, fresh buffer keys. More than desired:
//! retire the difference among runners that have no job, runners not yet
//! started first. A busy runner is never chosen, and the orchestrator (and
//! behind it the Actions service) refuses to remove one that took a job in
//! the meantime; it is tried again at the next evaluation.
//!
//! When the orchestrator cannot be asked (it is down), nothing is retired
//! and only runners for assigned jobs are created: their keys are fixed, so
//! whatever the orchestrator already has, they cannot duplicate a runner.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A scale set's size settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_runners: u32,
    pub max_runners: u32,
    pub idle_runners: u32,
}

/// The rule of the module docs.
pub fn desired(limits: &Limits, assigned: u32, busy: u32) -> u32 {
    limits
        .min_runners
        .saturating_add(assigned)
        .max(busy.saturating_add(limits.idle_runners))
        .min(limits.max_runners)
}

/// Where a runner of the scale set is, as the orchestrator and the job
/// messages tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Delegated, its container not running yet.
    Pending,
    /// Running, no job taken (as far as berth knows).
    Idle,
    /// Running a job.
    Busy,
    /// Its job ended; the runner is on its way out.
    Done,
    /// Being removed (scale-down or a cancel).
    Retiring,
}

impl Phase {
    /// Whether the runner counts towards the scale set's size.
    pub fn is_live(self) -> bool {
        matches!(self, Phase::Pending | Phase::Idle | Phase::Busy)
    }
}

/// One runner of the scale set, by its delegation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: i64,
    pub runner_name: Option<String>,
    pub phase: Phase,
}

/// A runner to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// For the assigned job with this `runnerRequestId` (the key).
    ForJob(i64),
    /// For the buffer: a fresh key.
    Buffer,
}

/// What one evaluation decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Create>,
    /// Keys of runners to retire.
    pub retire: Vec<i64>,
    /// Runners counted as existing.
    pub live: u32,
}

/// The plan of the module docs.
///
/// * `slots`: the orchestrator's runners (the last list berth got);
/// * `in_flight`: keys being delegated, or accepted but not in `slots` yet;
/// * `waiting`: runner request ids of assigned jobs not started or
///   completed, oldest first;
/// * `orchestrator_known`: whether `slots` is fresh. When it is not, nothing
///   is retired and no buffer runner is created.
pub fn plan(
    desired: u32,
    slots: &[Slot],
    in_flight: &BTreeSet<i64>,
    waiting: &[i64],
    orchestrator_known: bool,
) -> Plan {
    let mut known: BTreeSet<i64> = in_flight.clone();
    known.extend(slots.iter().map(|s| s.key));
    let live_slots = slots
        .iter()
        .filter(|s| s.phase.is_live() && !in_flight.contains(&s.key))
        .count();
    let live = (live_slots + in_flight.len()) as u32;
    let mut plan = Plan {
        live,
        ..Plan::default()
    };
    if desired > live {
        let mut missing = (desired - live) as usize;
        for &request in waiting {
            if missing == 0 {
                break;
            }
            if !known.contains(&request) {
                plan.create.push(Create::ForJob(request));
                missing -= 1;
            }
        }
        if orchestrator_known {
            plan.create
                .extend(std::iter::repeat_n(Create::Buffer, missing));
        }
    } else if desired < live && orchestrator_known {
        let excess = (live - desired) as usize;
        let candidates = |phase: Phase| {
            slots
                .iter()
                .filter(move |s| s.phase == phase && !in_flight.contains(&s.key))
                .map(|s| s.key)
        };
        plan.retire = candidates(Phase::Pending)
            .chain(candidates(Phase::Idle))
            .take(excess)
            .collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min_runners: 0,
        max_runners: 10,
        idle_runners: 0,
    };

    fn slot(key: i64, phase: Phase) -> Slot {
        Slot {
            key,
            runner_name: Some(format!("berth-r{key}")),
            phase,
        }
    }

    #[test]
    fn desired_follows_assigned_jobs_within_bounds() {
        assert_eq!(desired(&LIMITS, 0, 0), 0);
        assert_eq!(desired(&LIMITS, 5, 0), 5);
        assert_eq!(desired(&LIMITS, 50, 3), 10, "capped at max_runners");
        let min2 = Limits {
            min_runners: 2,
            ..LIMITS
        };
        assert_eq!(desired(&min2, 0, 0), 2);
        assert_eq!(
            desired(&min2, 3, 3),
            5,
            "min_runners is on top of assigned jobs"
        );
        let idle2 = Limits {
            idle_runners: 2,
            ..LIMITS
        };
        assert_eq!(desired(&idle2, 0, 0), 2);
        assert_eq!(desired(&idle2, 3, 0), 3, "waiting jobs take the idle ones");
        assert_eq!(desired(&idle2, 3, 3), 5, "two idle on top of three busy");
        assert_eq!(desired(&idle2, 9, 9), 10);
    }

    #[test]
    fn creates_for_waiting_jobs_first_then_buffer() {
        let p = plan(
            4,
            &[slot(1, Phase::Busy)],
            &BTreeSet::new(),
            &[1, 2, 3],
            true,
        );
        assert_eq!(p.live, 1);
        assert_eq!(
            p.create,
            [Create::ForJob(2), Create::ForJob(3), Create::Buffer]
        );
        assert!(p.retire.is_empty());
    }

    #[test]
    fn in_flight_delegations_count_and_are_never_repeated() {
        let in_flight = BTreeSet::from([2]);
        let p = plan(3, &[slot(1, Phase::Idle)], &in_flight, &[1, 2, 3], true);
        assert_eq!(p.live, 2);
        assert_eq!(p.create, [Create::ForJob(3)]);
        // accepted and already listed: counted once
        let p = plan(
            2,
            &[slot(1, Phase::Idle), slot(2, Phase::Pending)],
            &in_flight,
            &[],
            true,
        );
        assert_eq!(p.live, 2);
        assert_eq!(
            p,
            Plan {
                live: 2,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn finished_and_retiring_runners_do_not_count_but_their_keys_stay_taken() {
        let slots = [slot(5, Phase::Done), slot(6, Phase::Retiring)];
        let p = plan(2, &slots, &BTreeSet::new(), &[5, 7], true);
        assert_eq!(p.live, 0);
        // job 5's own key is used up: its runner ran some other job
        assert_eq!(p.create, [Create::ForJob(7), Create::Buffer]);
    }

    #[test]
    fn retires_only_runners_without_a_job_pending_first() {
        let slots = [
            slot(1, Phase::Busy),
            slot(2, Phase::Idle),
            slot(3, Phase::Pending),
            slot(4, Phase::Idle),
        ];
        let p = plan(1, &slots, &BTreeSet::new(), &[], true);
        assert_eq!(p.retire, [3, 2, 4]);
        let all_busy = [slot(1, Phase::Busy), slot(2, Phase::Busy)];
        let p = plan(0, &all_busy, &BTreeSet::new(), &[], true);
        assert!(p.retire.is_empty(), "a busy runner is never retired");
        // in-flight keys are not retired either
        let p = plan(
            0,
            &[slot(9, Phase::Pending)],
            &BTreeSet::from([9]),
            &[],
            true,
        );
        assert!(p.retire.is_empty());
    }

    #[test]
    fn without_the_orchestrator_only_keyed_runners_are_created_and_none_retired() {
        let p = plan(3, &[], &BTreeSet::new(), &[8], false);
        assert_eq!(p.create, [Create::ForJob(8)]);
        let p = plan(0, &[slot(1, Phase::Idle)], &BTreeSet::new(), &[], false);
        assert!(p.retire.is_empty());
    }
}
