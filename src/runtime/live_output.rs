//! The live output of running commands, between the engines that produce it and the task
//! streams that show it: an in-memory, bounded broadcast, never stored (the run record keeps the
//! output once the run ends). A stream that falls behind misses chunks and is told so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::model::live::RunOutput;
use crate::model::task::TaskId;

/// Chunks held for the slowest stream. Each run sends at most 10 small chunks a second
/// ([`crate::platform::live_output`]), so this is seconds of output of many runs, and at most
/// 1 MiB of text.
const LIVE_OUTPUT_BUFFER: usize = 256;

/// Live output of the service's running commands, and who watches which task. Cheap to clone.
#[derive(Clone)]
pub struct LiveOutput {
    sender: broadcast::Sender<Arc<RunOutput>>,
    /// Open watches per task (at most one per open event stream): output of a task nobody
    /// watches is not even redacted.
    watchers: Arc<Mutex<HashMap<TaskId, usize>>>,
}

impl Default for LiveOutput {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(LIVE_OUTPUT_BUFFER).0,
            watchers: Arc::default(),
        }
    }
}

impl LiveOutput {
    /// Sends a chunk to whoever watches; nobody watching is fine.
    pub fn publish(&self, output: RunOutput) {
        let _ = self.sender.send(Arc::new(output));
    }

    /// Whether a stream watches `task_id` now.
    pub fn watched(&self, task_id: TaskId) -> bool {
        self.watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&task_id)
            .is_some_and(|count| *count > 0)
    }

    /// Starts watching `task_id`: its output from now on (other tasks' chunks too, to be
    /// filtered by the caller), until the watch is dropped.
    pub fn watch(&self, task_id: TaskId) -> LiveWatch {
        let receiver = self.sender.subscribe();
        *self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(task_id)
            .or_insert(0) += 1;
        LiveWatch {
            receiver,
            task_id,
            watchers: self.watchers.clone(),
        }
    }
}

/// One stream's watch of a task's live output; dropping it ends the watch.
pub struct LiveWatch {
    /// Every task's chunks: the caller keeps those of its task.
    pub receiver: broadcast::Receiver<Arc<RunOutput>>,
    task_id: TaskId,
    watchers: Arc<Mutex<HashMap<TaskId, usize>>>,
}

impl Drop for LiveWatch {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = watchers.get_mut(&self.task_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                watchers.remove(&self.task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_watched_while_a_watch_is_open() {
        let live = LiveOutput::default();
        let task = TaskId::default();
        assert!(!live.watched(task));
        let first = live.watch(task);
        let second = live.watch(task);
        assert!(live.watched(task));
        assert!(!live.watched(TaskId::default()));
        drop(first);
        assert!(live.watched(task));
        drop(second);
        assert!(!live.watched(task));
        assert!(live.watchers.lock().unwrap().is_empty());
    }
}
