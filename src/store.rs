//! Durable state in sled. Only this module touches sled.
//!
//! Trees:
//! - `tasks`: task id → task JSON.
//! - `events`: task id (16 bytes) ++ seq (8 bytes, big-endian) → event JSON; prefix scans give a
//!   task's log in order. Service-wide events use the nil task id.
//! - `runs`: task id ++ run id (UUID v7) → engine run JSON.
//! - `idempotency`: client key → `{task_id, digest}`.
//!
//! Every write method flushes before it returns: a caller that acts on a write's success may be
//! `kill -9`ed the next instant without the write being lost. Events reach live subscribers
//! ([`Store::subscribe`]) only after that flush, so a streamed event is never one a crash undoes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use tokio::sync::broadcast;

use crate::domain::{EngineRun, Event, RunStatus, Task, TaskId, TaskStatus};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode (or a record does not encode).
    #[error("stored record is not valid: {0}")]
    Codec(#[from] serde_json::Error),
    /// The task does not exist.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The task already ended; terminal records never change.
    #[error("task {0} has already finished")]
    TaskFinished(TaskId),
    /// The database's lock stayed held for the whole wait: another live process uses it.
    #[error(
        "database {path} is in use by another process (its lock stayed held for {waited_ms} ms)"
    )]
    Locked {
        /// The database directory.
        path: String,
        /// How long opening waited for the lock.
        waited_ms: u128,
    },
}

/// How long opening waits for sled's lock. sled 0.34 releases it from a background thread after
/// the last handle drops (spacejam/sled#1234), so a reopen in the same process, or a start right
/// after a predecessor exited, can find it briefly held; a live owner holds it far longer.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Whether sled refused to open because its file lock is held. sled reports this only as an
/// `Other` I/O error with this message, so the message is what there is to match.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(error: TransactionError<StoreError>) -> Self {
        match error {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(inner) => Self::Sled(inner),
        }
    }
}

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

/// A run's key in `runs` (and `open_runs`): task id, then run id, so a task's runs are a prefix.
fn run_key(run: &EngineRun) -> Vec<u8> {
    let mut key = run.task_id.as_bytes().to_vec();
    key.extend_from_slice(run.id.as_bytes());
    key
}

/// Events a slow live subscriber may fall behind by before it is told it lagged (and, for a
/// task's stream, catches up from sled).
pub const LIVE_EVENTS_BUFFER: usize = 1024;

/// Handle to the database; cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    /// Every event, once durable, for live subscribers (the SSE streams).
    live: broadcast::Sender<Arc<Event>>,
    db: sled::Db,
    tasks: Tree,
    events: Tree,
    runs: Tree,
    /// Keys (in `runs`) of runs written `running` and not finished yet.
    open_runs: Tree,
    idempotency: Tree,
}

impl Store {
    /// Opens (or creates) the database under `dir`, waiting up to [`LOCK_WAIT`] for a lock that
    /// a just-closed handle has not released yet.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    fn open_waiting(dir: &Path, wait: Duration) -> Result<Self, StoreError> {
        let path = dir.join("db");
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        let db = loop {
            match sled::Config::new().path(&path).open() {
                Ok(db) => break db,
                Err(error) if is_lock_contention(&error) => {
                    let waited = started.elapsed();
                    if waited >= wait {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                            waited_ms: waited.as_millis(),
                        });
                    }
                    // Blocking on purpose: opening happens once, at start-up, before any work.
                    std::thread::sleep(pause.min(wait - waited));
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(error) => return Err(error.into()),
            }
        };
        Ok(Self {
            live: broadcast::channel(LIVE_EVENTS_BUFFER).0,
            tasks: db.open_tree("tasks")?,
            events: db.open_tree("events")?,
            runs: db.open_tree("runs")?,
            open_runs: db.open_tree("open_runs")?,
            idempotency: db.open_tree("idempotency")?,
            db,
        })
    }

    /// Another named tree of the same database, for a component that keeps its own records (the
    /// ledger's books); its writes share this store's flushes.
    pub fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The database handle, for multi-tree transactions of a component that owns its trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Every event written from now on, as soon as it is durable. A receiver that falls more than
    /// [`LIVE_EVENTS_BUFFER`] events behind gets `Lagged`; sled still has everything.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Hands durable events to the live subscribers (none listening is fine).
    fn publish(&self, events: impl IntoIterator<Item = Event>) {
        if self.live.receiver_count() == 0 {
            return;
        }
        for event in events {
            let _ = self.live.send(Arc::new(event));
        }
    }

    /// Stores a new task (and its `task.submitted` event), honouring its idempotency key.
    pub async fn create_task(
        &self,
        task: Task,
        digest: &str,
        event: NewEvent,
    ) -> Result<Submission, StoreError> {
        let seq = self.db.generate_id()?;
        let task_bytes = serde_json::to_vec(&task)?;
        let event = stamp(seq, task.id, &event);
        let event_bytes = serde_json::to_vec(&event)?;
        let idempotency_bytes = serde_json::to_vec(&IdempotencyRecord {
            task_id: task.id,
            digest: digest.to_owned(),
        })?;
        let outcome = (&self.tasks, &self.events, &self.idempotency).transaction(
            |(tasks, events, keys)| {
                if let Some(key) = &task.idempotency_key {
                    if let Some(existing) = keys.get(key.as_bytes())? {
                        let record: IdempotencyRecord =
                            serde_json::from_slice(&existing).map_err(abort)?;
                        if record.digest != digest {
                            return Ok(Err(record.task_id));
                        }
                        let stored = tasks.get(record.task_id.as_bytes())?.ok_or(
                            ConflictableTransactionError::Abort(StoreError::TaskNotFound(
                                record.task_id,
                            )),
                        )?;
                        return Ok(Ok(Some(stored)));
                    }
                    keys.insert(key.as_bytes(), idempotency_bytes.as_slice())?;
                }
                tasks.insert(task.id.as_bytes(), task_bytes.as_slice())?;
                events.insert(event_key(task.id, seq).as_slice(), event_bytes.as_slice())?;
                Ok(Ok(None))
            },
        )?;
        match outcome {
            Err(original) => Ok(Submission::KeyConflict(original)),
            Ok(Some(stored)) => Ok(Submission::Replayed(serde_json::from_slice(&stored)?)),
            Ok(None) => {
                self.flush().await?;
                self.publish([event]);
                Ok(Submission::Created(task))
            }
        }
    }

    /// The task an idempotency key was first used for, and the digest of that submission.
    pub fn idempotent_submission(&self, key: &str) -> Result<Option<(TaskId, String)>, StoreError> {
        match self.idempotency.get(key.as_bytes())? {
            Some(bytes) => {
                let record: IdempotencyRecord = serde_json::from_slice(&bytes)?;
                Ok(Some((record.task_id, record.digest)))
            }
            None => Ok(None),
        }
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        match self.tasks.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` tasks, newest first (ids are UUID v7, so key order is age order).
    pub fn tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        Ok(self.tasks_page(limit, None)?.0)
    }

    /// One page of tasks, newest first: up to `limit` tasks older than `before` (all when
    /// `None`), and the id to pass as `before` for the next page (`None` on the last page).
    pub fn tasks_page(
        &self,
        limit: usize,
        before: Option<TaskId>,
    ) -> Result<(Vec<Task>, Option<TaskId>), StoreError> {
        let range = match before {
            Some(id) => self.tasks.range(..id.as_bytes().to_vec()),
            None => self.tasks.range::<Vec<u8>, _>(..),
        };
        let mut tasks = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for bytes in range.values().rev() {
            if tasks.len() == limit {
                more = true;
                break;
            }
            tasks.push(serde_json::from_slice::<Task>(&bytes?)?);
        }
        let next = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok((tasks, next))
    }

    /// The most recent failed or dead-lettered tasks on `repo` (other than `except`), newest
    /// first: what a planner should not repeat. Looks at most at `scan_max` recent tasks.
    pub fn recent_failures(
        &self,
        repo: &str,
        except: TaskId,
        limit: usize,
        scan_max: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let mut failures = Vec::new();
        for bytes in self.tasks.iter().values().rev().take(scan_max) {
            let task: Task = serde_json::from_slice(&bytes?)?;
            let failed = matches!(task.status, TaskStatus::Failed | TaskStatus::DeadLetter);
            if failed && task.repo == repo && task.id != except {
                failures.push(task);
                if failures.len() == limit {
                    break;
                }
            }
        }
        Ok(failures)
    }

    /// Finished tasks whose budget reservation was not settled yet (the service stopped first).
    pub fn unsettled_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let mut unsettled = Vec::new();
        for bytes in self.tasks.iter().values() {
            let task: Task = serde_json::from_slice(&bytes?)?;
            if task.status.is_terminal() && !task.settled && task.reservation.is_some() {
                unsettled.push(task);
            }
        }
        Ok(unsettled)
    }

    /// Every task that has not reached a terminal status: what Compass reloads on start.
    pub fn unfinished_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let mut unfinished = Vec::new();
        for bytes in self.tasks.iter().values() {
            let task: Task = serde_json::from_slice(&bytes?)?;
            if !task.status.is_terminal() {
                unfinished.push(task);
            }
        }
        Ok(unfinished)
    }

    /// Changes a task and appends events in one transaction, then flushes.
    ///
    /// Refuses (with [`StoreError::TaskFinished`]) to change a task that has already ended, so a
    /// late stage result can never overwrite a cancel.
    pub async fn update_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        change: impl Fn(&mut Task),
    ) -> Result<Task, StoreError> {
        self.change_task(id, events, &[], change).await
    }

    /// Like [`Store::update_task`], but for the one transition out of a terminal status: a
    /// client's retry of a failed or dead-lettered task.
    pub async fn reopen_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        change: impl Fn(&mut Task),
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
    /// change a terminal task still takes.
    pub async fn mark_settled(&self, id: TaskId, event: NewEvent) -> Result<Task, StoreError> {
        let terminal = [
            TaskStatus::Done,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::DeadLetter,
        ];
        self.change_task(id, &[event], &terminal, |t| t.settled = true)
            .await
    }

    async fn change_task(
        &self,
        id: TaskId,
        events: &[NewEvent],
        terminal_allowed: &[TaskStatus],
        change: impl Fn(&mut Task),
    ) -> Result<Task, StoreError> {
        let mut stamped = Vec::with_capacity(events.len());
        let mut encoded_events = Vec::with_capacity(events.len());
        for event in events {
            let seq = self.db.generate_id()?;
            let event = stamp(seq, id, event);
            encoded_events.push((event_key(id, seq), serde_json::to_vec(&event)?));
            stamped.push(event);
        }
        let (before, updated) = (&self.tasks, &self.events).transaction(|(tasks, log)| {
            let bytes = tasks
                .get(id.as_bytes())?
                .ok_or(ConflictableTransactionError::Abort(
                    StoreError::TaskNotFound(id),
                ))?;
            let mut task: Task = serde_json::from_slice(&bytes).map_err(abort)?;
            if task.status.is_terminal() && !terminal_allowed.contains(&task.status) {
                return Err(ConflictableTransactionError::Abort(
                    StoreError::TaskFinished(id),
                ));
            }
            let before = task.status;
            change(&mut task);
            task.updated_at = Utc::now();
            tasks.insert(id.as_bytes(), serde_json::to_vec(&task).map_err(abort)?)?;
            append_encoded(log, &encoded_events)?;
            Ok((before, task))
        })?;
        self.flush().await?;
        self.publish(stamped);
        // Every status change goes through here, after its commit: a task's end is counted once.
        crate::metrics::task_transition(before, updated.status);
        Ok(updated)
    }

    /// Appends one event to a task's log (or the service log, with [`TaskId::service`]).
    pub async fn append_event(&self, task_id: TaskId, event: NewEvent) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
        let event = stamp(seq, task_id, &event);
        self.events
            .insert(event_key(task_id, seq), serde_json::to_vec(&event)?)?;
        self.flush().await?;
        self.publish([event]);
        Ok(())
    }

    /// A task's events with a `seq` above `after`, in order: where a live stream resumes.
    pub fn events_after(&self, task_id: TaskId, after: u64) -> Result<Vec<Event>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.events
            .range(event_key(task_id, first)..=event_key(task_id, u64::MAX))
            .values()
            .map(|bytes| Ok(serde_json::from_slice(&bytes?)?))
            .collect()
    }

    /// A task's events in order.
    pub fn events(&self, task_id: TaskId) -> Result<Vec<Event>, StoreError> {
        self.events
            .scan_prefix(task_id.as_bytes())
            .values()
            .map(|bytes| Ok(serde_json::from_slice(&bytes?)?))
            .collect()
    }

    /// The last `limit` events of a log, in order (the service log grows for as long as it runs).
    pub fn recent_events(&self, task_id: TaskId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut events = self
            .events
            .scan_prefix(task_id.as_bytes())
            .values()
            .rev()
            .take(limit)
            .map(|bytes| Ok(serde_json::from_slice(&bytes?)?))
            .collect::<Result<Vec<Event>, StoreError>>()?;
        events.reverse();
        Ok(events)
    }

    /// Writes a run as `running` before its process starts (flushed), so that a run cut off by a
    /// cancel, a shutdown or a crash is still on record.
    pub async fn start_run(&self, run: &EngineRun) -> Result<(), StoreError> {
        let key = run_key(run);
        let bytes = serde_json::to_vec(run)?;
        (&self.runs, &self.open_runs).transaction(|(runs, open)| {
            runs.insert(key.as_slice(), bytes.as_slice())?;
            open.insert(key.as_slice(), &[])?;
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        self.flush().await
    }

    /// Whether a run of the task was started and its end is not recorded yet (one cut off a moment
    /// ago is being charged and closed).
    pub fn has_open_runs(&self, task_id: TaskId) -> Result<bool, StoreError> {
        Ok(self
            .open_runs
            .scan_prefix(task_id.as_bytes())
            .next()
            .is_some())
    }

    /// Marks every run still `running` from an earlier process as `interrupted`, with an
    /// `engine.interrupted` event: called at start, after the orphaned processes were killed.
    pub async fn interrupt_open_runs(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        for key in self.open_runs.iter().keys() {
            let key = key?;
            let Some(bytes) = self.runs.get(&key)? else {
                self.open_runs.remove(&key)?;
                continue;
            };
            let mut run: EngineRun = serde_json::from_slice(&bytes)?;
            if run.status == RunStatus::Running {
                run.status = RunStatus::Interrupted;
                self.record_run(&run).await?;
                count += 1;
            } else {
                self.open_runs.remove(&key)?;
            }
        }
        self.flush().await?;
        Ok(count)
    }

    /// Persists an engine run together with its `engine.run` event (`engine.interrupted` for a
    /// run cut off), and closes it if it was open.
    pub async fn record_run(&self, run: &EngineRun) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
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
        let event = stamp(seq, run.task_id, &event);
        let event_bytes = serde_json::to_vec(&event)?;
        let run_key = run_key(run);
        let run_bytes = serde_json::to_vec(run)?;
        (&self.runs, &self.open_runs, &self.events).transaction(|(runs, open, log)| {
            runs.insert(run_key.as_slice(), run_bytes.as_slice())?;
            open.remove(run_key.as_slice())?;
            log.insert(
                event_key(run.task_id, seq).as_slice(),
                event_bytes.as_slice(),
            )?;
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        self.flush().await?;
        self.publish([event]);
        Ok(())
    }

    /// A task's engine runs, oldest first.
    pub fn runs(&self, task_id: TaskId) -> Result<Vec<EngineRun>, StoreError> {
        self.runs
            .scan_prefix(task_id.as_bytes())
            .values()
            .map(|bytes| Ok(serde_json::from_slice(&bytes?)?))
            .collect()
    }
}

fn abort(error: serde_json::Error) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Codec(error))
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

fn append_encoded(
    log: &TransactionalTree,
    encoded: &[([u8; 24], Vec<u8>)],
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for (key, bytes) in encoded {
        log.insert(key.as_slice(), bytes.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: Option<&str>) -> Task {
        let mut task = Task::for_test("t", "");
        task.idempotency_key = key.map(str::to_owned);
        task
    }

    fn submitted() -> NewEvent {
        NewEvent::new("test", "task.submitted", serde_json::json!({}))
    }

    #[tokio::test]
    async fn idempotency_key_replays_or_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = task(Some("k"));
        let Submission::Created(created) = store
            .create_task(first.clone(), "d1", submitted())
            .await
            .unwrap()
        else {
            panic!("expected a new task");
        };
        match store
            .create_task(task(Some("k")), "d1", submitted())
            .await
            .unwrap()
        {
            Submission::Replayed(replayed) => assert_eq!(replayed.id, created.id),
            other => panic!("expected a replay, got {other:?}"),
        }
        match store
            .create_task(task(Some("k")), "d2", submitted())
            .await
            .unwrap()
        {
            Submission::KeyConflict(original) => assert_eq!(original, created.id),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(store.tasks(10).unwrap().len(), 1);
        assert_eq!(store.events(created.id).unwrap().len(), 1);
    }

    /// A new task (without an idempotency key) in `store`.
    async fn create(store: &Store) -> Task {
        match store
            .create_task(task(None), "d", submitted())
            .await
            .unwrap()
        {
            Submission::Created(created) => created,
            _ => panic!("expected a new task"),
        }
    }

    #[tokio::test]
    async fn terminal_tasks_never_change_and_events_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = create(&store).await;
        let events = [
            NewEvent::new("test", "task.started", serde_json::json!({})),
            NewEvent::new("test", "task.finished", serde_json::json!({})),
        ];
        store
            .update_task(created.id, &events, |t| t.status = TaskStatus::Cancelled)
            .await
            .unwrap();
        let refused = store
            .update_task(created.id, &[], |t| t.status = TaskStatus::Running)
            .await;
        assert!(matches!(refused, Err(StoreError::TaskFinished(_))));
        assert_eq!(
            store.task(created.id).unwrap().unwrap().status,
            TaskStatus::Cancelled
        );
        let kinds: Vec<String> = store
            .events(created.id)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["task.submitted", "task.started", "task.finished"]);
        assert!(store.unfinished_tasks().unwrap().is_empty());
    }

    #[tokio::test]
    async fn live_subscribers_get_durable_events_and_events_after_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut live = store.subscribe();
        let created = create(&store).await;
        for kind in ["task.started", "task.finished"] {
            let event = NewEvent::new("test", kind, serde_json::json!({}));
            store.append_event(created.id, event).await.unwrap();
        }
        let mut heard = Vec::new();
        for _ in 0..3 {
            heard.push(live.recv().await.unwrap().seq);
        }
        let stored: Vec<u64> = store
            .events(created.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(heard, stored);
        let after_first: Vec<u64> = store
            .events_after(created.id, stored[0])
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after_first, stored[1..]);
        assert!(store.events_after(created.id, u64::MAX).unwrap().is_empty());
    }

    #[test]
    fn a_held_lock_is_waited_for_and_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Store::open(dir.path()).unwrap();
        let refused = Store::open_waiting(dir.path(), Duration::from_millis(150));
        assert!(
            matches!(refused, Err(StoreError::Locked { waited_ms, .. }) if waited_ms >= 150),
            "{:?}",
            refused.err()
        );
        // The owner lets go while the next open is still waiting: that open succeeds.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(owner);
        });
        let reopened = Store::open_waiting(dir.path(), Duration::from_secs(10));
        releaser.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            create(&store).await.id
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.unfinished_tasks().unwrap()[0].id, id);
        let later = NewEvent::new("test", "task.resumed", serde_json::json!({}));
        store.append_event(id, later).await.unwrap();
        let seqs: Vec<u64> = store.events(id).unwrap().iter().map(|e| e.seq).collect();
        assert!(seqs[0] < seqs[1], "{seqs:?}");
    }
}
