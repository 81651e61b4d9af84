//! How the service last stopped, and which task stages were in flight across unclean stops: what
//! keeps a poison task (one whose stage takes the whole process down) from looping for ever.
//!
//! The `Recovery` table holds `clean_stop` → empty, written as the last act of a clean shutdown
//! and taken at the next start; per task (its 16-byte id) the [`UncleanStops`] of its current
//! stage and attempt; and per task (`open:` ++ its id) the runs that were still `running` when
//! the last run of the service ended ([`note_in_flight`], written where start-up closes them
//! `interrupted`): the evidence.
//!
//! A start that finds no `clean_stop` follows an unclean stop (`kill -9`, a crash, a power cut).
//! It counts only against a task still `running` **whose own engine or verify run was in flight**
//! (recorded `running`, never finished): a task that merely was running — its run had finished,
//! it waited for a slot, a persona, git — was not what the stop cut off, and its count starts
//! over. A clean stop neither counts nor resets (and drops the evidence: its runs were stopped by
//! the shutdown); a stage or attempt that moved on starts over.

use serde::{Deserialize, Serialize};

use super::{Batch, Store, StoreError, Table};
use crate::model::task::{Stage, TaskId};

/// The key of the clean-stop mark (never 16 bytes long, so never a task id).
const CLEAN_STOP_KEY: &[u8] = b"clean_stop";
/// Most per-task marks one start looks at (each is one running task of the last run).
const MARKS_MAX: usize = 100_000;
/// The prefix of a task's in-flight evidence key (`open:` ++ task id; never 16 bytes long).
const IN_FLIGHT_PREFIX: &[u8] = b"open:";
/// Most run ids kept as one task's evidence (the newest): a stage runs one command at a time, so
/// a handful per stop.
const RUNS_KEPT_MAX: usize = 16;

/// The unclean stops one task's stage was in flight across, consecutively, at one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UncleanStops {
    /// The stage that was running.
    pub(super) stage: Stage,
    /// Its attempt.
    pub(super) attempt: u32,
    /// How many unclean stops it was in flight across.
    pub(super) count: u32,
    /// The runs in flight at those stops (ids, oldest first); absent in marks written before
    /// runs were the evidence, which then count as none.
    #[serde(default)]
    pub(super) runs: Vec<String>,
}

/// One running task's standing after an unclean stop: what `compass.poison_after` is held
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopsInFlight {
    /// The task.
    pub task_id: TaskId,
    /// Consecutive unclean stops its run was in flight across (0: none at this one).
    pub count: u32,
    /// The ids of the runs in flight at those stops, oldest first (what the event names).
    pub runs: Vec<String>,
}

/// Notes, in the job that closes it `interrupted` at start, that `run_id` of `task_id` was still
/// `running` when the last run of the service ended: the evidence an unclean stop counts.
pub(super) fn note_in_flight(
    batch: &mut Batch<'_>,
    task_id: TaskId,
    run_id: String,
) -> Result<(), StoreError> {
    let key = in_flight_key(task_id);
    let mut runs: Vec<String> = batch.record(Table::Recovery, &key)?.unwrap_or_default();
    runs.push(run_id);
    let drop = runs.len().saturating_sub(RUNS_KEPT_MAX);
    runs.drain(..drop);
    let value = serde_json::to_vec(&runs)?;
    batch.insert(Table::Recovery, key, value);
    Ok(())
}

fn in_flight_key(task_id: TaskId) -> Vec<u8> {
    [IN_FLIGHT_PREFIX, task_id.as_bytes().as_slice()].concat()
}

/// Drops every task's in-flight evidence (a clean stop's, or what a count did not take).
fn drop_in_flight(batch: &mut Batch<'_>) -> Result<(), StoreError> {
    // Every key that starts with `open:` sorts before `open;`.
    for key in batch.keys_in(Table::Recovery, IN_FLIGHT_PREFIX, b"open;", MARKS_MAX)? {
        batch.remove(Table::Recovery, key);
    }
    Ok(())
}

impl Store {
    /// Marks this run's stop as clean: its running stages were stopped by the shutdown, not by
    /// what they did, so the next start does not count them.
    pub async fn mark_clean_stop(&self) -> Result<(), StoreError> {
        self.write(|batch| {
            batch.insert(Table::Recovery, CLEAN_STOP_KEY, Vec::new());
            Ok(())
        })
        .await
    }

    /// Whether the last run stopped cleanly; takes the mark, so that this run's stop is unclean
    /// unless it marks again. After a clean stop the runs it left open are no evidence: dropped.
    pub async fn take_clean_stop(&self) -> Result<bool, StoreError> {
        self.write(|batch| {
            let clean = batch.get(Table::Recovery, CLEAN_STOP_KEY)?.is_some();
            batch.remove(Table::Recovery, CLEAN_STOP_KEY);
            if clean {
                drop_in_flight(batch)?;
            }
            Ok(clean)
        })
        .await
    }

    /// Counts one unclean stop for each task of `running` (its id, stage and attempt) whose own
    /// run was in flight at it ([`note_in_flight`]): the same stage and attempt as last time adds
    /// one, another starts at one; a task without a run in flight is at 0 (its mark dropped).
    /// Marks of tasks not listed (they ended, or were not running) and the evidence are dropped.
    pub async fn count_unclean_stops(
        &self,
        running: Vec<(TaskId, Stage, u32)>,
    ) -> Result<Vec<StopsInFlight>, StoreError> {
        self.write(move |batch| count_unclean_stops(batch, &running))
            .await
    }
}

fn count_unclean_stops(
    batch: &mut Batch<'_>,
    running: &[(TaskId, Stage, u32)],
) -> Result<Vec<StopsInFlight>, StoreError> {
    let end = [0xff_u8; 17];
    for key in batch.keys_in(Table::Recovery, &[], &end, MARKS_MAX)? {
        let listed = running
            .iter()
            .any(|(id, ..)| id.as_bytes() == key.as_slice());
        if key.len() == 16 && !listed {
            batch.remove(Table::Recovery, key);
        }
    }
    let mut counts = Vec::with_capacity(running.len());
    for &(id, stage, attempt) in running {
        let evidence: Vec<String> = batch
            .record(Table::Recovery, &in_flight_key(id))?
            .unwrap_or_default();
        let before: Option<UncleanStops> = batch.record(Table::Recovery, id.as_bytes())?;
        let Some(mark) = next_mark(before, stage, attempt, evidence) else {
            batch.remove(Table::Recovery, id.as_bytes());
            counts.push(StopsInFlight {
                task_id: id,
                count: 0,
                runs: Vec::new(),
            });
            continue;
        };
        let value = serde_json::to_vec(&mark)?;
        batch.insert(Table::Recovery, id.as_bytes().to_vec(), value);
        counts.push(StopsInFlight {
            task_id: id,
            count: mark.count,
            runs: mark.runs,
        });
    }
    drop_in_flight(batch)?;
    Ok(counts)
}

/// A task's mark after one more unclean stop: `None` when none of its runs was in flight at it;
/// one more when its stage and attempt are those of a mark with evidence; else the first.
fn next_mark(
    before: Option<UncleanStops>,
    stage: Stage,
    attempt: u32,
    evidence: Vec<String>,
) -> Option<UncleanStops> {
    if evidence.is_empty() {
        return None;
    }
    let (count, mut runs) = match before {
        Some(b) if b.stage == stage && b.attempt == attempt && !b.runs.is_empty() => {
            (b.count.saturating_add(1), b.runs)
        }
        _ => (1, Vec::new()),
    };
    runs.extend(evidence);
    let drop = runs.len().saturating_sub(RUNS_KEPT_MAX);
    runs.drain(..drop);
    Some(UncleanStops {
        stage,
        attempt,
        count,
        runs,
    })
}
