//! Tasks, their events, their engine runs and idempotency keys.
//!
//! Keys:
//! - `Tasks`: task id → task record (JSON, versioned: [`task_record`](super::task_record) is the
//!   one place that shape is defined and converted).
//! - `Events`: task id (16 bytes) ++ seq (8 bytes, big-endian) → event JSON; prefix scans give a
//!   task's log in order. Service-wide events use the nil task id.
//! - `Runs`: task id ++ run id (UUID v7) → engine run JSON; `OpenRuns` holds the keys of runs
//!   written `running` and not finished yet.
//! - `Idempotency`: client key → `{task_id, digest}`.
//! - `QueueIndex`: unfinished task id → `{status, priority}` ([`QueuedTask`]), written with the
//!   task by every task write (an end removes it), and `built` → empty once the first start that
//!   found no marker indexed every stored task; Compass's start loads this, not the records.
//!
//! Every write is a writer job ([`Store::write`]): answered only once durable, so a caller that
//! acts on a write's success may be `kill -9`ed the next instant without the write being lost.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::task_record;
use super::{Batch, Snapshot, Store, StoreError, Table};
use crate::model::auth::AuditEntry;
use crate::model::task::{EngineRun, Event, Priority, RunStatus, Task, TaskId, TaskStatus};

/// An event to append; the store assigns `seq` and `ts`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Who records it.
    pub actor: String,
    /// Dotted kind.
    pub kind: &'static str,
    /// Details.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event from `actor` of `kind` with `data`.
    pub fn new(actor: impl Into<String>, kind: &'static str, data: serde_json::Value) -> Self {
        Self {
            actor: actor.into(),
            kind,
            data,
        }
    }
}

/// How a submission with an idempotency key was resolved.
#[derive(Debug)]
pub enum Submission {
    /// A new task was stored.
    Created(Task),
    /// The key was seen before with the same body: the original task.
    Replayed(Task),
    /// The key was seen before with another body: the original task's id.
    KeyConflict(TaskId),
}

#[derive(Serialize, Deserialize)]
struct IdempotencyRecord {
    task_id: TaskId,
    digest: String,
}

/// Most runs [`Store::interrupt_open_runs`] closes in one writer job, so a long backlog never
/// holds the writer long.
const INTERRUPT_BATCH_MAX: usize = 256;

/// A run's key in `Runs` (and `OpenRuns`): task id, then run id, so a task's runs are a prefix.
fn run_key(run: &EngineRun) -> Vec<u8> {
    let mut key = run.task_id.as_bytes().to_vec();
    key.extend_from_slice(run.id.as_bytes());
    key
}

impl Store {
    /// Stores a new task (and its `task.submitted` event), honouring its idempotency key.
    pub async fn create_task(
        &self,
        task: Task,
        digest: &str,
        event: NewEvent,
    ) -> Result<Submission, StoreError> {
        self.create_task_audited(task, digest, event, None).await
    }

    /// [`Store::create_task`], with the audit entry of the request that made it written in the
    /// same job, so in the same group commit (a submit costs the writer one job, not two). Only a
    /// task created is audited here; a replay or a refusal writes no entry.
    pub(crate) async fn create_task_audited(
        &self,
        task: Task,
        digest: &str,
        event: NewEvent,
        audit: Option<AuditEntry>,
    ) -> Result<Submission, StoreError> {
        let digest = digest.to_owned();
        self.write(move |batch| stage_submission(batch, task, digest, &event, audit))
            .await
    }

    /// The task an idempotency key was first used for, and the digest of that submission.
    pub async fn idempotent_submission(
        &self,
        key: &str,
    ) -> Result<Option<(TaskId, String)>, StoreError> {
        let key = key.to_owned();
        self.read(move |snapshot| {
            let record: Option<IdempotencyRecord> =
                snapshot.record(Table::Idempotency, key.as_bytes())?;
            Ok(record.map(|r| (r.task_id, r.digest)))
        })
        .await
    }

    /// One task.
    pub async fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.read(move |snapshot| committed_task(snapshot, id))
            .await
    }

    /// Up to `limit` tasks, newest first (ids are UUID v7, so key order is age order).
    pub async fn tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        Ok(self.tasks_page(limit, None, |_| true).await?.0)
    }

    /// One page of tasks, newest first: up to `limit` tasks older than `before` (all when
    /// `None`), and the id to pass as `before` for the next page (`None` on the last page).
    pub async fn tasks_page(
        &self,
        limit: usize,
        before: Option<TaskId>,
        keep: impl Fn(&Task) -> bool + Send + 'static,
    ) -> Result<(Vec<Task>, Option<TaskId>), StoreError> {
        self.read(move |snapshot| tasks_page(snapshot, limit, before, keep))
            .await
    }

    /// The most recent failed or dead-lettered tasks on `repo` (other than `except`), newest
    /// first: what a planner should not repeat. Looks at most at `scan_max` recent tasks.
    pub async fn recent_failures(
        &self,
        repo: &str,
        except: TaskId,
        limit: usize,
        scan_max: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let repo = repo.to_owned();
        self.read(move |snapshot| {
            let mut failures = Vec::new();
            for bytes in snapshot.iter(Table::Tasks).values().rev().take(scan_max) {
                let task = task_record::decode(&bytes?)?;
                let failed = matches!(
                    task.progress.status,
                    TaskStatus::Failed | TaskStatus::DeadLetter
                );
                if failed && task.spec.repo == repo && task.id != except {
                    failures.push(task);
                    if failures.len() == limit {
                        break;
                    }
                }
            }
            Ok(failures)
        })
        .await
    }

    /// Finished tasks whose budget reservation was not settled yet (the service stopped first).
    pub async fn unsettled_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks_where(|task| {
            task.progress.status.is_terminal()
                && !task.billing.settled
                && task.billing.reservation.is_some()
        })
        .await
    }

    /// Every task that has not reached a terminal status: what Compass reloads on start.
    pub async fn unfinished_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks_where(|task| !task.progress.status.is_terminal())
            .await
    }

    /// Every task that has reached a terminal status: what the clean-up sweep at start looks at.
    pub async fn finished_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks_where(|task| task.progress.status.is_terminal())
            .await
    }

    /// Every unfinished task's id, status and priority, from the compact `QueueIndex`: what
    /// Compass loads at start (a few bytes a task, not its record). A store without the index's
    /// marker (made before it existed) is indexed first, once, from a full scan in one write.
    pub async fn queued_tasks(&self) -> Result<Vec<QueuedTask>, StoreError> {
        let indexed = self
            .read(|snapshot| -> Result<Option<Vec<QueuedTask>>, StoreError> {
                if !snapshot.contains(Table::QueueIndex, QUEUE_INDEX_BUILT)? {
                    return Ok(None);
                }
                let mut queued = Vec::new();
                for entry in snapshot.iter(Table::QueueIndex) {
                    let (key, value) = entry?;
                    if let Some(task) = QueuedTask::decode(&key, &value)? {
                        queued.push(task);
                    }
                }
                Ok(Some(queued))
            })
            .await?;
        match indexed {
            Some(queued) => Ok(queued),
            None => self.write(build_queue_index).await,
        }
    }

    /// Every task `keep` accepts (a full scan: for start-up, not for requests).
    async fn tasks_where(
        &self,
        keep: impl Fn(&Task) -> bool + Send + 'static,
    ) -> Result<Vec<Task>, StoreError> {
        self.read(move |snapshot| {
            let mut kept = Vec::new();
            for bytes in snapshot.iter(Table::Tasks).values() {
                let task = task_record::decode(&bytes?)?;
                if keep(&task) {
                    kept.push(task);
                }
            }
            Ok(kept)
        })
        .await
    }

    /// Changes a task and appends events in one durable write.
    ///
    /// Refuses (with [`StoreError::TaskFinished`]) to change a task that has already ended, so a
    /// late stage result can never overwrite a cancel.
    pub async fn update_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        change: impl FnOnce(&mut Task) + Send + 'static,
    ) -> Result<Task, StoreError> {
        self.change_task(id, events, &[], change).await
    }

    /// Like [`Store::update_task`], for a move the task's state may refuse: `change` (a
    /// lifecycle move) answers `Err` and nothing is written (`Ok(Err(refusal))`). An ended task
    /// is `Err(TaskFinished)`, answered only once that end is durable. A cancel goes through here:
    /// the lifecycle refuses it while the merge queue has claimed the task's landing.
    pub async fn try_update_task<R: Send + 'static>(
        &self,
        id: TaskId,
        events: &[NewEvent],
        change: impl FnOnce(&mut Task) -> Result<(), R> + Send + 'static,
    ) -> Result<Result<Task, R>, StoreError> {
        let events = events.to_vec();
        let changed = self
            .write(move |batch| -> Result<_, StoreError> {
                let mut task = staged_task(batch, id)?.ok_or(StoreError::TaskNotFound(id))?;
                if task.progress.status.is_terminal() {
                    return Ok(None);
                }
                let before = task.progress.status;
                if let Err(refusal) = change(&mut task) {
                    return Ok(Some(Err(refusal)));
                }
                task.progress.updated_at = Utc::now();
                put_task(batch, id, &task)?;
                for event in &events {
                    append(batch, id, event)?;
                }
                Ok(Some(Ok((before, task))))
            })
            .await?;
        let (before, changed) = match changed.ok_or(StoreError::TaskFinished(id))? {
            Ok(done) => done,
            Err(refusal) => return Ok(Err(refusal)),
        };
        self.writer_health()
            .count_task_change(before, changed.progress.status);
        Ok(Ok(changed))
    }

    /// Like [`Store::update_task`], but for the one transition out of a terminal status: a
    /// client's retry of a failed or dead-lettered task.
    pub async fn reopen_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        change: impl FnOnce(&mut Task) + Send + 'static,
    ) -> Result<Task, StoreError> {
        self.change_task(
            id,
            events,
            &[TaskStatus::Failed, TaskStatus::DeadLetter],
            change,
        )
        .await
    }

    /// Records that a finished task's budget was settled in the ledger: bookkeeping, the one
    /// change a terminal task still takes. Once: a task already marked is answered as it is, and
    /// `event` is not written again (two settlements racing after a cancel both land here).
    pub async fn mark_settled(&self, id: TaskId, event: NewEvent) -> Result<Task, StoreError> {
        self.write(move |batch| {
            let mut task = staged_task(batch, id)?.ok_or(StoreError::TaskNotFound(id))?;
            if task.billing.settled {
                return Ok(task);
            }
            task.billing.settled = true;
            task.progress.updated_at = Utc::now();
            put_task(batch, id, &task)?;
            append(batch, id, &event)?;
            Ok(task)
        })
        .await
    }

    async fn change_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        terminal_allowed: &[TaskStatus],
        change: impl FnOnce(&mut Task) + Send + 'static,
    ) -> Result<Task, StoreError> {
        let events = events.to_vec();
        let terminal_allowed = terminal_allowed.to_vec();
        let changed = self
            .write(move |batch| -> Result<_, StoreError> {
                let mut task = staged_task(batch, id)?.ok_or(StoreError::TaskNotFound(id))?;
                if task.progress.status.is_terminal()
                    && !terminal_allowed.contains(&task.progress.status)
                {
                    // The end may be staged in this very group: refuse only once the group is
                    // durable (answered after its commit), so `TASK_FINISHED` is never said of
                    // an end that a failed commit then drops.
                    return Ok(None);
                }
                let before = task.progress.status;
                change(&mut task);
                // A terminal task never changes: the one way past the check above is a retry,
                // and a retry leaves the end behind.
                debug_assert!(
                    !before.is_terminal() || !task.progress.status.is_terminal(),
                    "task {id} ended {before:?} and was changed without being reopened"
                );
                task.progress.updated_at = Utc::now();
                put_task(batch, id, &task)?;
                for event in &events {
                    append(batch, id, event)?;
                }
                Ok(Some((before, task)))
            })
            .await?;
        let (before, updated) = changed.ok_or(StoreError::TaskFinished(id))?;
        // Every status change goes through here, after its commit: a task's end is counted once.
        self.writer_health()
            .count_task_change(before, updated.progress.status);
        Ok(updated)
    }

    /// Appends one event to a task's log (or the service log, with [`TaskId::service`]).
    pub async fn append_event(&self, task_id: TaskId, event: NewEvent) -> Result<(), StoreError> {
        self.write(move |batch| append(batch, task_id, &event))
            .await
    }

    /// A task's events with a `seq` above `after`, in order: where a live stream resumes.
    pub async fn events_after(
        &self,
        task_id: TaskId,
        after: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.read(move |snapshot| {
            let range = event_key(task_id, first)..=event_key(task_id, u64::MAX);
            decode_all(snapshot.range(Table::Events, range).values())
        })
        .await
    }

    /// A task's events in order.
    pub async fn events(&self, task_id: TaskId) -> Result<Vec<Event>, StoreError> {
        self.read(move |snapshot| {
            decode_all(
                snapshot
                    .scan_prefix(Table::Events, task_id.as_bytes())
                    .values(),
            )
        })
        .await
    }

    /// The last `limit` events of a log, in order (the service log grows for as long as it runs).
    pub async fn recent_events(
        &self,
        task_id: TaskId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |snapshot| {
            let newest = snapshot
                .scan_prefix(Table::Events, task_id.as_bytes())
                .values()
                .rev()
                .take(limit);
            let mut events = decode_all(newest)?;
            events.reverse();
            Ok(events)
        })
        .await
    }

    /// Writes a run as `running` before its process starts (durable), so that a run cut off by a
    /// cancel, a shutdown or a crash is still on record.
    pub async fn start_run(&self, run: &EngineRun) -> Result<(), StoreError> {
        let key = run_key(run);
        let bytes = self.encode(run)?;
        self.write(move |batch| {
            batch.insert(Table::Runs, key.clone(), bytes);
            batch.insert(Table::OpenRuns, key, Vec::new());
            Ok(())
        })
        .await
    }

    /// Whether a run of the task was started and its end is not recorded yet (one cut off a moment
    /// ago is being charged and closed).
    pub async fn has_open_runs(&self, task_id: TaskId) -> Result<bool, StoreError> {
        self.read(move |snapshot| {
            Ok(snapshot
                .scan_prefix(Table::OpenRuns, task_id.as_bytes())
                .next()
                .is_some())
        })
        .await
    }

    /// Marks every run still `running` from an earlier process as `interrupted`, with an
    /// `engine.interrupted` event, and notes it as in flight at the last stop (what
    /// `compass.poison_after` counts): called at start, after the orphaned processes were killed.
    pub async fn interrupt_open_runs(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        loop {
            let (closed, more) = self
                .write(|batch| interrupt_open_runs(batch, INTERRUPT_BATCH_MAX))
                .await?;
            count += closed;
            if !more {
                return Ok(count);
            }
        }
    }

    /// Persists an engine run together with its `engine.run` event (`engine.interrupted` for a
    /// run cut off), and closes it if it was open.
    pub async fn record_run(&self, run: &EngineRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.write(move |batch| record_run(batch, &run)).await
    }

    /// A task's engine runs, oldest first.
    pub async fn runs(&self, task_id: TaskId) -> Result<Vec<EngineRun>, StoreError> {
        self.read(move |snapshot| {
            decode_all(
                snapshot
                    .scan_prefix(Table::Runs, task_id.as_bytes())
                    .values(),
            )
        })
        .await
    }
}

/// Stages a submitted task (and, if it is created, the audit line of the request) in the
/// caller's job: [`Store::create_task_audited`]'s write, for a caller that writes more with it
/// (intake: the task's budget reservation).
pub(crate) fn stage_submission(
    batch: &mut Batch<'_>,
    task: Task,
    digest: String,
    event: &NewEvent,
    audit: Option<AuditEntry>,
) -> Result<Submission, StoreError> {
    let submission = create_task(batch, task, digest, event)?;
    if let (Submission::Created(_), Some(entry)) = (&submission, audit) {
        stage_audit(batch, entry)?;
    }
    Ok(submission)
}

fn create_task(
    batch: &mut Batch<'_>,
    task: Task,
    digest: String,
    event: &NewEvent,
) -> Result<Submission, StoreError> {
    if let Some(key) = &task.spec.idempotency_key {
        let existing: Option<IdempotencyRecord> =
            batch.record(Table::Idempotency, key.as_bytes())?;
        if let Some(record) = existing {
            if record.digest != digest {
                return Ok(Submission::KeyConflict(record.task_id));
            }
            let stored = staged_task(batch, record.task_id)?
                .ok_or(StoreError::TaskNotFound(record.task_id))?;
            return Ok(Submission::Replayed(stored));
        }
        let record = IdempotencyRecord {
            task_id: task.id,
            digest,
        };
        batch.insert(
            Table::Idempotency,
            key.as_bytes(),
            serde_json::to_vec(&record)?,
        );
    }
    put_task(batch, task.id, &task)?;
    append(batch, task.id, event)?;
    Ok(Submission::Created(task))
}

/// Adds an audit entry to `batch`, at the next `seq` (sled's counter, durable with the group).
pub(crate) fn stage_audit(batch: &mut Batch<'_>, mut entry: AuditEntry) -> Result<(), StoreError> {
    entry.seq = batch.generate_id()?;
    let value = serde_json::to_vec(&entry)?;
    batch.insert(Table::AuditLog, entry.seq.to_be_bytes(), value);
    Ok(())
}

/// Tasks one page looks at at most: a filter that matches little stops here, and the cursor says
/// where to go on.
const TASK_PAGE_SCAN_MAX: usize = 10_000;

fn tasks_page(
    snapshot: &Snapshot<'_>,
    limit: usize,
    before: Option<TaskId>,
    keep: impl Fn(&Task) -> bool,
) -> Result<(Vec<Task>, Option<TaskId>), StoreError> {
    let range = match before {
        Some(id) => snapshot.range(Table::Tasks, ..id.as_bytes().to_vec()),
        None => snapshot.range::<Vec<u8>, _>(Table::Tasks, ..),
    };
    let mut tasks = Vec::with_capacity(limit.min(1024));
    // The next page starts just below the last task looked at.
    let mut last_seen = None;
    for (scanned, bytes) in range.values().rev().enumerate() {
        if tasks.len() == limit || scanned >= TASK_PAGE_SCAN_MAX.max(limit) {
            return Ok((tasks, last_seen));
        }
        let task = task_record::decode(&bytes?)?;
        last_seen = Some(task.id);
        if keep(&task) {
            tasks.push(task);
        }
    }
    Ok((tasks, None))
}

/// The task under `id` in the last commit, decoded from its stored record.
fn committed_task(snapshot: &Snapshot<'_>, id: TaskId) -> Result<Option<Task>, StoreError> {
    let bytes = snapshot.get(Table::Tasks, id.as_bytes())?;
    bytes.map(|bytes| task_record::decode(&bytes)).transpose()
}

/// The task under `id` as this writer job sees it (last commit plus the group's staged writes).
fn staged_task(batch: &Batch<'_>, id: TaskId) -> Result<Option<Task>, StoreError> {
    let bytes = batch.get(Table::Tasks, id.as_bytes())?;
    bytes.map(|bytes| task_record::decode(&bytes)).transpose()
}

/// Stages `task` under `id` as a stored record of the current schema version.
fn put_task(batch: &mut Batch<'_>, id: TaskId, task: &Task) -> Result<(), StoreError> {
    let bytes = task_record::encode(task, batch.redactor())?;
    batch.insert(Table::Tasks, id.as_bytes(), bytes);
    index_task(batch, task)
}

/// `QueueIndex`'s marker: every stored task is indexed (a key no task id has: ids are 16 bytes).
const QUEUE_INDEX_BUILT: &[u8] = b"built";

/// An unfinished task as the compact queue holds it: enough to put it in Compass's lines; the
/// rest stays in its record until its pipeline reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedTask {
    /// The task.
    pub id: TaskId,
    /// Its status (never a terminal one: an end removes the entry).
    pub status: TaskStatus,
    /// Its priority.
    pub priority: Priority,
}

/// A `QueueIndex` value: short names, since there is one per unfinished task.
#[derive(Serialize, Deserialize)]
struct QueueEntry {
    s: TaskStatus,
    p: Priority,
}

impl QueuedTask {
    /// The entry at `key`, or `None` for the marker.
    fn decode(key: &[u8], value: &[u8]) -> Result<Option<Self>, StoreError> {
        let Ok(id) = <[u8; 16]>::try_from(key) else {
            return Ok(None);
        };
        let entry: QueueEntry = serde_json::from_slice(value)?;
        Ok(Some(QueuedTask {
            id: TaskId::from_bytes(id),
            status: entry.s,
            priority: entry.p,
        }))
    }
}

/// Keeps `task`'s `QueueIndex` entry in step with its record: present while it is unfinished.
fn index_task(batch: &mut Batch<'_>, task: &Task) -> Result<(), StoreError> {
    if task.progress.status.is_terminal() {
        batch.remove(Table::QueueIndex, task.id.as_bytes().to_vec());
        return Ok(());
    }
    let entry = QueueEntry {
        s: task.progress.status,
        p: task.spec.priority,
    };
    batch.insert(
        Table::QueueIndex,
        task.id.as_bytes().to_vec(),
        serde_json::to_vec(&entry)?,
    );
    Ok(())
}

/// Indexes every stored task (a store from before `QueueIndex`) and sets the marker; answers the
/// unfinished ones. One write job: no task write interleaves with the scan.
fn build_queue_index(batch: &mut Batch<'_>) -> Result<Vec<QueuedTask>, StoreError> {
    let mut tasks = Vec::new();
    for bytes in batch.committed().iter(Table::Tasks).values() {
        tasks.push(task_record::decode(&bytes?)?);
    }
    let mut queued = Vec::new();
    for task in &tasks {
        index_task(batch, task)?;
        if !task.progress.status.is_terminal() {
            queued.push(QueuedTask {
                id: task.id,
                status: task.progress.status,
                priority: task.spec.priority,
            });
        }
    }
    batch.insert(Table::QueueIndex, QUEUE_INDEX_BUILT, Vec::new());
    tracing::info!(
        tasks = tasks.len(),
        queued = queued.len(),
        "indexed the stored tasks for the compact queue"
    );
    Ok(queued)
}

/// Closes up to `max` open runs; answers how many were interrupted and whether more are open.
fn interrupt_open_runs(batch: &mut Batch<'_>, max: usize) -> Result<(usize, bool), StoreError> {
    let open: Vec<Vec<u8>> = batch
        .committed()
        .iter(Table::OpenRuns)
        .keys()
        .take(max + 1)
        .map(|key| key.map(|k| k.to_vec()))
        .collect::<Result<_, _>>()?;
    let more = open.len() > max;
    let mut count = 0;
    for key in open.into_iter().take(max) {
        match batch.record::<EngineRun>(Table::Runs, &key)? {
            Some(mut run) if run.status == RunStatus::Running => {
                run.status = RunStatus::Interrupted;
                record_run(batch, &run)?;
                // In flight when the last run of the service ended: the evidence an unclean
                // stop holds against its task.
                super::recovery::note_in_flight(batch, run.task_id, run.id.to_string())?;
                count += 1;
            }
            _ => batch.remove(Table::OpenRuns, key),
        }
    }
    Ok((count, more))
}

fn record_run(batch: &mut Batch<'_>, run: &EngineRun) -> Result<(), StoreError> {
    let kind = match run.status {
        RunStatus::Interrupted => "engine.interrupted",
        RunStatus::Running | RunStatus::Finished => "engine.run",
    };
    let event = NewEvent::new(
        run.persona.clone(),
        kind,
        serde_json::json!({
            "run_id": run.id,
            "engine": run.engine,
            "command": run.command,
            "stage": run.stage,
            "attempt": run.attempt,
            "exit_code": run.exit_code,
            "timed_out": run.timed_out,
            "duration_ms": run.duration_ms,
        }),
    );
    let key = run_key(run);
    let bytes = batch.encode(run)?;
    batch.insert(Table::Runs, key.clone(), bytes);
    batch.remove(Table::OpenRuns, key);
    append(batch, run.task_id, &event)
}

/// Stages one event (its seq from sled's counter) and its publication once durable.
fn append(batch: &mut Batch<'_>, task_id: TaskId, event: &NewEvent) -> Result<(), StoreError> {
    let seq = batch.generate_id()?;
    let mut event = stamp(seq, task_id, event);
    // Live subscribers get what is stored: redacted.
    batch.redact_json(&mut event.data);
    let bytes = batch.encode(&event)?;
    batch.insert(Table::Events, event_key(task_id, seq), bytes);
    batch.publish(event);
    Ok(())
}

fn decode_all<T: serde::de::DeserializeOwned>(
    values: impl Iterator<Item = Result<super::Bytes, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    values
        .map(|bytes| Ok(serde_json::from_slice(&bytes?)?))
        .collect()
}

fn event_key(task_id: TaskId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(task_id.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The stored form of a new event: its `seq` and time.
fn stamp(seq: u64, task_id: TaskId, event: &NewEvent) -> Event {
    Event {
        seq,
        ts: Utc::now(),
        task_id,
        actor: event.actor.clone(),
        kind: event.kind.to_owned(),
        data: event.data.clone(),
    }
}
