//! The merge queues' lines as the last change left them, for reading a task's place in line
//! (`merge.place`) without a store write per shuffle: Patch, which owns the lines, publishes
//! them here whenever one changes; the ingress reads a task's place when it serves the task.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::model::task::{Task, TaskId};

/// The places in line now, by task.
#[derive(Debug, Default)]
pub struct MergeLines {
    places: Mutex<HashMap<TaskId, usize>>,
}

impl MergeLines {
    /// Replaces every line: each is its tasks in the order the queue serves them (the ones a
    /// turn serves now first).
    pub(crate) fn publish(&self, lines: impl IntoIterator<Item = Vec<TaskId>>) {
        let places = lines
            .into_iter()
            .flat_map(|line| line.into_iter().enumerate().map(|(n, id)| (id, n + 1)))
            .collect();
        *self.places.lock().unwrap_or_else(PoisonError::into_inner) = places;
    }

    /// The task's place in its line (1: served next, or being served), if it is in one.
    pub(crate) fn place(&self, task: TaskId) -> Option<usize> {
        self.places
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&task)
            .copied()
    }

    /// `task` as a client sees it: with its place in line while it waits in a queue.
    pub(crate) fn fill(&self, task: &mut Task) {
        task.progress.merge.place = self.place(task.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_follow_the_last_published_lines() {
        let lines = MergeLines::default();
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        lines.publish([vec![a, b], vec![c]]);
        assert_eq!(
            (lines.place(a), lines.place(b), lines.place(c)),
            (Some(1), Some(2), Some(1))
        );
        lines.publish([vec![b]]);
        assert_eq!((lines.place(a), lines.place(b)), (None, Some(1)));
    }
}
