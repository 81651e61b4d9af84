//! How the service last stopped, and which task stages were in flight across unclean stops: what
//! keeps a poison task (one whose stage takes the whole process down) from looping for ever.
//!
//! The `Recovery` table holds `clean_stop` → empty, written as the last act of a clean shutdown
//! and taken at the next start, and per task (its 16-byte id) the [`UncleanStops`] of its current
//! stage and attempt. A start that finds no `clean_stop` follows an unclean stop (`kill -9`, a
//! crash, a power cut): every task then still `running` had its stage in flight and gets one more
//! count. A clean stop neither counts nor resets; a stage or attempt that moved on starts over.

use serde::{Deserialize, Serialize};

use super::{Batch, Store, StoreError, Table};
use crate::model::task::{Stage, TaskId};

/// The key of the clean-stop mark (never 16 bytes long, so never a task id).
const CLEAN_STOP_KEY: &[u8] = b"clean_stop";
/// Most per-task marks one start looks at (each is one running task of the last run).
const MARKS_MAX: usize = 100_000;

/// The unclean stops one task's stage was in flight across, consecutively, at one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UncleanStops {
    /// The stage that was running.
    pub(super) stage: Stage,
    /// Its attempt.
    pub(super) attempt: u32,
    /// How many unclean stops it was in flight across.
    pub(super) count: u32,
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
    /// unless it marks again.
    pub async fn take_clean_stop(&self) -> Result<bool, StoreError> {
        self.write(|batch| {
            let clean = batch.get(Table::Recovery, CLEAN_STOP_KEY)?.is_some();
            batch.remove(Table::Recovery, CLEAN_STOP_KEY);
            Ok(clean)
        })
        .await
    }

    /// Counts one unclean stop for each task of `running` (its id, stage and attempt): the same
    /// stage and attempt as last time adds one, another starts at one. Marks of tasks not listed
    /// (they ended, or were not running) are dropped. Answers each listed task's count.
    pub async fn count_unclean_stops(
        &self,
        running: Vec<(TaskId, Stage, u32)>,
    ) -> Result<Vec<(TaskId, u32)>, StoreError> {
        self.write(move |batch| count_unclean_stops(batch, &running))
            .await
    }
}

fn count_unclean_stops(
    batch: &mut Batch<'_>,
    running: &[(TaskId, Stage, u32)],
) -> Result<Vec<(TaskId, u32)>, StoreError> {
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
        let before: Option<UncleanStops> = batch.record(Table::Recovery, id.as_bytes())?;
        let count = match before {
            Some(b) if b.stage == stage && b.attempt == attempt => b.count.saturating_add(1),
            _ => 1,
        };
        let mark = UncleanStops {
            stage,
            attempt,
            count,
        };
        let value = serde_json::to_vec(&mark)?;
        batch.insert(Table::Recovery, id.as_bytes().to_vec(), value);
        counts.push((id, count));
    }
    Ok(counts)
}
