//! The store writer: the one thread that writes to sled.
//!
//! sled 0.34 locks up when transactions, compare-and-swaps and flushes run at once from several
//! threads (spacejam/sled#1412, #1301, #1308; see `docs/internals.md`). So every write of the
//! service is a [`Job`] sent to this thread through a bounded channel. The thread takes whatever
//! jobs are waiting (at most [`GROUP_JOBS_MAX`]), runs each against a [`Batch`] — reads see the
//! last commit plus what earlier jobs of the group wrote, writes are staged in memory — then
//! commits the whole group in one sled transaction, flushes once, and only then runs each job's
//! answer (group commit). A job that fails leaves nothing behind; a crash before the flush loses
//! the whole group, which nobody was told about.
//!
//! Because this thread is the only writer, read-modify-write rules (a ledger balance, a task's
//! status) need no sled transaction racing another: they read, decide and stage in one job.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use tokio::sync::mpsc;

use super::space::{FaultKind, Reserve};
use super::{Snapshot, StoreError, Table, Trees, TreesSlot};
use crate::model::task::{Event, TaskStatus};

/// Most jobs one group commit takes: bounds the memory of a group and the wait of its first job.
pub(crate) const GROUP_JOBS_MAX: usize = 512;

/// The first wait between two recovery probes of a faulted store; doubled up to
/// [`PROBE_INTERVAL_MAX`].
pub(crate) const PROBE_INTERVAL_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two recovery probes.
pub(crate) const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(8);
/// Free bytes a full disk needs before the writer closes the faulted database to reopen it:
/// below that the reopen (sled writes a snapshot) would fail and leave no database to read
/// from, so the old one keeps serving reads until there is room.
pub(crate) const REOPEN_FREE_MIN_BYTES: u64 = 256 * 1024;

/// A write request: `run` stages it on the group's [`Batch`] and returns what to do once the
/// group's outcome is known (answer the caller); `refuse` answers it without running it (the
/// store is faulted: nothing of it is staged).
pub(crate) struct Job {
    /// Runs the request on the writer thread.
    pub(crate) run: Box<dyn FnOnce(&mut Batch<'_>) -> Answer + Send>,
    /// Answers the caller with this error instead.
    pub(crate) refuse: Box<dyn FnOnce(&StoreError) + Send>,
}

/// Called after the group commit with its outcome.
pub(crate) type Answer = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// Staged writes: `None` removes the key.
type Writes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// What the writer is doing, for the watchdog, `/readyz` and `/metrics`. Lock-free so probes never
/// wait on the writer they are checking.
#[derive(Debug, Default)]
pub struct WriterHealth {
    /// Milliseconds since the epoch when the running group started; 0 while idle.
    group_started_ms: AtomicU64,
    /// Groups committed since start.
    groups: AtomicU64,
    /// Jobs committed (or refused) in those groups.
    jobs: AtomicU64,
    /// Tasks that reached each terminal status since start, in [`TERMINAL`] order.
    tasks_finished: [AtomicU64; 4],
    /// Set by the watchdog while the running group is older than the stall bound.
    stalled: AtomicBool,
    /// Whether the thread ended (every handle dropped, or it died).
    stopped: AtomicBool,
    /// The disk fault refusing every write: [`NO_FAULT`], or a [`FaultKind`] as a number.
    fault: AtomicU8,
    /// What the disk said, for `/readyz` and the answers.
    fault_message: Mutex<String>,
    /// Set while the reserve is released (or could not be written at start): intake is refused
    /// so the space left goes to the store's own recovery and critical records.
    reserve_in_use: AtomicBool,
}

/// [`WriterHealth::fault`] when the disk is fine.
const NO_FAULT: u8 = 0;

impl WriterHealth {
    /// How long the running group has been running, in ms (`None` while idle).
    pub fn busy_for_ms(&self) -> Option<u64> {
        match self.group_started_ms.load(Ordering::Acquire) {
            0 => None,
            started => Some(now_ms().saturating_sub(started)),
        }
    }

    /// Whether the watchdog saw the writer make no progress for the stall bound.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire)
    }

    /// Marks (or clears) the stall; answers whether this changed it.
    pub fn set_stalled(&self, stalled: bool) -> bool {
        self.stalled.swap(stalled, Ordering::AcqRel) != stalled
    }

    /// The disk fault refusing writes, with what the disk said; `None` when writes go through.
    pub fn fault(&self) -> Option<(FaultKind, String)> {
        let kind = match self.fault.load(Ordering::Acquire) {
            NO_FAULT => return None,
            1 => FaultKind::Full,
            _ => FaultKind::Failed,
        };
        let message = self
            .fault_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some((kind, message))
    }

    /// The error a write refused by the fault answers, if there is a fault.
    pub fn fault_error(&self) -> Option<StoreError> {
        self.fault().map(|(kind, message)| match kind {
            FaultKind::Full => StoreError::Full(message),
            FaultKind::Failed => StoreError::Failed(message),
        })
    }

    /// Whether new work (intake) is refused: a fault, or the reserve in use.
    pub fn intake_error(&self) -> Option<StoreError> {
        self.fault_error().or_else(|| {
            self.reserve_in_use.load(Ordering::Acquire).then(|| {
                StoreError::Full(
                    "the disk is nearly full: the storage reserve is in use, new work is refused"
                        .into(),
                )
            })
        })
    }

    fn set_fault(&self, kind: FaultKind, message: String) {
        *self
            .fault_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = message;
        let number = match kind {
            FaultKind::Full => 1,
            FaultKind::Failed => 2,
        };
        self.fault.store(number, Ordering::Release);
    }

    fn clear_fault(&self) {
        self.fault.store(NO_FAULT, Ordering::Release);
    }

    /// Marks whether the reserve is in use (intake refused while it is).
    pub(crate) fn set_reserve_in_use(&self, in_use: bool) {
        self.reserve_in_use.store(in_use, Ordering::Release);
    }

    /// Whether the writer has recovery work to do (a fault to probe, a reserve to write back):
    /// the watchdog then wakes it every tick.
    pub fn needs_probe(&self) -> bool {
        self.fault.load(Ordering::Acquire) != NO_FAULT
            || self.reserve_in_use.load(Ordering::Acquire)
    }

    /// Groups committed since start.
    pub fn groups(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    /// Jobs run in those groups since start.
    pub fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }

    /// How many tasks ended in each terminal status since start: what the store changed, for
    /// `/metrics` to publish (the store itself reports to no one).
    pub fn tasks_finished(&self) -> [(TaskStatus, u64); 4] {
        TERMINAL.map(|status| {
            (
                status,
                self.finished_counter(status).load(Ordering::Relaxed),
            )
        })
    }

    /// Counts a task's change from `before` to `after` if it is the one into a terminal status
    /// (a change to an ended task is bookkeeping, not a second end).
    pub(crate) fn count_task_change(&self, before: TaskStatus, after: TaskStatus) {
        if !before.is_terminal() && after.is_terminal() {
            self.finished_counter(after).fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finished_counter(&self, status: TaskStatus) -> &AtomicU64 {
        let index = TERMINAL.iter().position(|s| *s == status).unwrap_or(0);
        &self.tasks_finished[index]
    }
}

/// The terminal statuses, in the order [`WriterHealth::tasks_finished`] answers them.
const TERMINAL: [TaskStatus; 4] = [
    TaskStatus::Done,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
    TaskStatus::DeadLetter,
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// One group's view of the database: the last commit, plus the writes staged by the group's
/// earlier jobs and by the running job.
pub struct Batch<'a> {
    trees: &'a Trees,
    /// Writes of the group's jobs that succeeded.
    group: Writes,
    /// Writes of the running job, kept or dropped when it ends.
    staged: Writes,
    /// Events to publish once durable: the group's, then the running job's.
    group_events: Vec<Event>,
    staged_events: Vec<Event>,
}

impl<'a> Batch<'a> {
    fn new(trees: &'a Trees) -> Self {
        Self {
            trees,
            group: Writes::new(),
            staged: Writes::new(),
            group_events: Vec::new(),
            staged_events: Vec::new(),
        }
    }

    /// The value at `key`, as this job would see it after everything staged before it.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let entry = (table, key.to_vec());
        if let Some(value) = self.staged.get(&entry).or_else(|| self.group.get(&entry)) {
            return Ok(value.clone());
        }
        Ok(self.trees.get(table).get(key)?.map(|v| v.to_vec()))
    }

    /// Decodes the JSON record at `key`, as this job sees it.
    pub fn record<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        super::decode(self.get(table, key)?.as_deref())
    }

    /// `record` as the store writes it: JSON with the secret values redacted
    /// (`[governance] secrets`).
    pub(crate) fn encode<T: serde::Serialize>(&self, record: &T) -> Result<Vec<u8>, StoreError> {
        super::encode(&self.trees.redactor, record)
    }

    /// Redacts the secret values in a JSON document about to be stored or published.
    pub(crate) fn redact_json(&self, value: &mut serde_json::Value) {
        self.trees.redactor.redact_json(value);
    }

    /// What this store redacts.
    pub(crate) fn redactor(&self) -> &crate::platform::redact::Redactor {
        &self.trees.redactor
    }

    /// Stages `key` → `value`.
    pub fn insert(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.staged.insert((table, key.into()), Some(value.into()));
    }

    /// Stages the removal of `key`.
    pub fn remove(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.staged.insert((table, key.into()), None);
    }

    /// Keys of `table` in `[start, end)` in order, as this job sees them (the last commit merged
    /// with what is staged), at most `limit`.
    pub fn keys_in(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for key in self.trees.get(table).range(start..end).keys().take(limit) {
            keys.insert(key?.to_vec(), true);
        }
        let bounds = (
            Bound::Included((table, start.to_vec())),
            Bound::Excluded((table, end.to_vec())),
        );
        for writes in [&self.group, &self.staged] {
            for ((_, key), value) in writes.range(bounds.clone()) {
                keys.insert(key.clone(), value.is_some());
            }
        }
        Ok(keys
            .into_iter()
            .filter_map(|(key, present)| present.then_some(key))
            .take(limit)
            .collect())
    }

    /// The last commit alone: a consistent snapshot, since nothing else writes (what an audit
    /// reads).
    pub fn committed(&self) -> Snapshot<'_> {
        Snapshot::new(self.trees)
    }

    /// A fresh, increasing id (sled's counter; durable with the group).
    pub fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.trees.db.generate_id()?)
    }

    /// Hands `event` to live subscribers once the group is durable (if this job's writes are
    /// kept).
    pub fn publish(&mut self, event: Event) {
        self.staged_events.push(event);
    }

    /// Keeps the running job's writes in the group.
    pub fn keep(&mut self) {
        self.group.append(&mut self.staged);
        self.group_events.append(&mut self.staged_events);
    }

    /// Drops the running job's writes: a refused or failed job leaves nothing behind.
    pub fn discard(&mut self) {
        self.staged.clear();
        self.staged_events.clear();
    }

    /// Writes the group in one sled transaction (atomic across trees, so a crash leaves all of
    /// it or none) and flushes.
    fn commit(&self) -> Result<(), StoreError> {
        hold_while_marked();
        if self.group.is_empty() {
            return Ok(());
        }
        fail_while_marked()?;
        // One sled batch per table, in the group's (table, key) order: staged blindly, since
        // nothing here needs the values they replace (vendored sled's `apply_batch` reads none).
        let mut batches: Vec<(Table, sled::Batch)> = Vec::new();
        for ((table, key), value) in &self.group {
            if batches.last().is_none_or(|(last, _)| last != table) {
                batches.push((*table, sled::Batch::default()));
            }
            if let Some((_, batch)) = batches.last_mut() {
                match value {
                    Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                    None => batch.remove(key.as_slice()),
                }
            }
        }
        let trees: Vec<&sled::Tree> = batches.iter().map(|(t, _)| self.trees.get(*t)).collect();
        trees
            .as_slice()
            .transaction(|views| {
                for (view, (_, batch)) in views.iter().zip(&batches) {
                    view.apply_batch(batch)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                sled::transaction::TransactionError::Storage(error) => StoreError::from(error),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Commit("the group's transaction aborted".into())
                }
            })?;
        self.trees.db.flush()?;
        Ok(())
    }
}

/// Test hook (`--features failpoints`): with `FAILPOINTS=store.stall=return(<file>)`, every group
/// commit waits while `<file>` exists (at most a minute): a test stalls the writer on demand.
fn hold_while_marked() {
    #[cfg(feature = "failpoints")]
    fail::eval("store.stall", |marker| {
        let Some(marker) = marker else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::path::Path::new(&marker).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}

/// When the writer next probes a faulted store (or tries to write the reserve back), and how long
/// it waits after that one fails.
struct Probe {
    /// Not before this instant.
    next: Instant,
    /// The wait after the next failure (1 s, doubling to 8 s: recovery comes within ~9 s of the
    /// disk healing).
    interval: Duration,
}

impl Probe {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            interval: PROBE_INTERVAL_FIRST,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// The probe failed: wait longer before the next.
    fn failed(&mut self) {
        self.next = Instant::now() + self.interval;
        self.interval = (self.interval * 2).min(PROBE_INTERVAL_MAX);
    }

    /// The probe succeeded (or a fault just began): the next one may run at once, and waits
    /// start over.
    fn reset(&mut self) {
        self.next = Instant::now();
        self.interval = PROBE_INTERVAL_FIRST;
    }
}

/// What the writer thread works with.
pub(crate) struct WriterParts {
    /// The open database (replaced when the writer reopens it after a fault).
    pub(crate) slot: Arc<TreesSlot>,
    /// The ballast released when the disk fills.
    pub(crate) reserve: Reserve,
    /// Shared with probes and the watchdog.
    pub(crate) health: Arc<WriterHealth>,
}

/// Test hook (`--features failpoints`): with `FAILPOINTS=store.eio=return(<file>)`, every group
/// commit fails as an `EIO` from the disk would while `<file>` exists: a test makes the disk
/// "fail" and "heal" on demand.
fn fail_while_marked() -> Result<(), StoreError> {
    #[cfg(feature = "failpoints")]
    {
        let mut failed = false;
        fail::eval("store.eio", |marker| {
            failed = marker.is_some_and(|marker| std::path::Path::new(&marker).exists());
        });
        if failed {
            let eio = std::io::Error::from_raw_os_error(5);
            return Err(StoreError::from(sled::Error::Io(eio)));
        }
    }
    Ok(())
}

/// Runs the writer until every sender is gone. Runs on its own OS thread: every call here may
/// block, which is the point.
pub(crate) fn run(parts: WriterParts, mut jobs: mpsc::Receiver<Job>, publish: impl Fn(Vec<Event>)) {
    /// Marks the writer stopped however the loop ends, a panic included: `/readyz` then says so.
    struct Stopped(Arc<WriterHealth>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.stopped.store(true, Ordering::Release);
        }
    }
    let health = parts.health.clone();
    let _stopped = Stopped(health.clone());
    let mut probe = Probe::new();
    while let Some(first) = jobs.blocking_recv() {
        health.group_started_ms.store(now_ms(), Ordering::Release);
        let mut group = vec![first];
        while group.len() < GROUP_JOBS_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let group_jobs = group.len();
        if health.needs_probe() && probe.due() {
            recover(&parts, &mut probe);
        }
        match (health.fault_error(), parts.slot.current()) {
            (None, Ok(trees)) => {
                // The fault is in force before any caller hears of it: a client told 503 that
                // asks `/readyz` next is told not ready.
                let fault = |error: &StoreError| enter_fault(&parts, error, &mut probe);
                commit_group(&trees, group, &publish, fault);
            }
            (Some(error), _) | (None, Err(error)) => refuse_all(group, &error),
        }
        health.groups.fetch_add(1, Ordering::Relaxed);
        health.jobs.fetch_add(
            u64::try_from(group_jobs).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        health.group_started_ms.store(0, Ordering::Release);
    }
}

/// Answers every job of `group` with `error`, running none: a faulted store stages nothing.
fn refuse_all(group: Vec<Job>, error: &StoreError) {
    for job in group {
        if std::panic::catch_unwind(AssertUnwindSafe(|| (job.refuse)(error))).is_err() {
            tracing::error!("store: answering a refused write panicked");
        }
    }
}

/// Runs the group's jobs, commits them in one transaction and one flush, answers each caller and
/// publishes the events once durable. A failed commit goes to `on_failure` before the callers
/// are answered with it.
fn commit_group(
    trees: &Trees,
    group: Vec<Job>,
    publish: &impl Fn(Vec<Event>),
    on_failure: impl FnOnce(&StoreError),
) {
    let count = group.len();
    let mut batch = Batch::new(trees);
    let answers: Vec<Answer> = group
        .into_iter()
        .filter_map(|job| run_job(&mut batch, job))
        .collect();
    let outcome = batch.commit();
    if let Err(error) = &outcome {
        tracing::error!(%error, jobs = count, "store: a group commit failed; nothing of it was acknowledged");
        on_failure(error);
    }
    let events = std::mem::take(&mut batch.group_events);
    drop(batch);
    for answer in answers {
        let committed = outcome.as_ref().map(|_| ());
        // An answer only hands a result on; should one panic, the others are still given.
        if std::panic::catch_unwind(AssertUnwindSafe(|| answer(committed))).is_err() {
            tracing::error!("store: answering a write panicked");
        }
    }
    if outcome.is_ok() {
        publish(events);
    }
}

/// A commit failed. A disk fault makes the store refuse writes until a probe clears it (and a
/// full disk releases the reserve, so that probe can reopen the store at once); anything else
/// only failed that group.
fn enter_fault(parts: &WriterParts, error: &StoreError, probe: &mut Probe) {
    let Some(kind) = fault_kind(error) else {
        return;
    };
    tracing::error!(%error, "store: the disk refused a commit; writes are refused until it recovers");
    parts.health.set_fault(kind, error.to_string());
    if kind == FaultKind::Full && parts.reserve.release() {
        parts.health.set_reserve_in_use(true);
    }
    probe.reset();
}

/// One recovery step: a faulted store is reopened (sled refuses every write after an I/O error
/// until reopened); a store whose reserve is in use writes it back once the disk has room. A
/// failure waits longer before the next step.
fn recover(parts: &WriterParts, probe: &mut Probe) {
    let health = &parts.health;
    if let Some((kind, _)) = health.fault() {
        if let Err(error) = reopen_if_healthy(parts, kind) {
            tracing::warn!(%error, "store: the disk still refuses writes; will probe again");
            if let Some(kind) = fault_kind(&error) {
                health.set_fault(kind, error.to_string());
            }
            probe.failed();
            return;
        }
        health.clear_fault();
        tracing::warn!("store: reopened after a disk fault; writes go through again");
    }
    if health.reserve_in_use.load(Ordering::Acquire) {
        if parts.reserve.restore() {
            health.set_reserve_in_use(false);
            tracing::warn!("store: the disk has room again; reserve written back, intake reopened");
        } else {
            probe.failed();
            return;
        }
    }
    probe.reset();
}

/// Reopens a faulted store once the disk looks healthy, and proves it with a committed write.
/// The disk is asked first (free space, a small file written and synced) so that a disk still
/// failing does not cost a reopen, during which reads wait: the faulted database still serves
/// them.
fn reopen_if_healthy(parts: &WriterParts, kind: FaultKind) -> Result<(), StoreError> {
    if kind == FaultKind::Full && parts.reserve.free_bytes() < REOPEN_FREE_MIN_BYTES {
        return Err(StoreError::Full("no room yet to reopen the store".into()));
    }
    parts
        .reserve
        .probe_file()
        .map_err(|error| super::space::store_error(&error))?;
    fail_while_marked()?;
    parts.slot.reopen()?;
    let trees = parts.slot.current()?;
    let mut batch = Batch::new(&trees);
    batch.insert(Table::Recovery, PROBE_KEY, now_ms().to_be_bytes().to_vec());
    batch.keep();
    batch.commit()
}

/// The key the recovery probe writes in `Recovery` (never 16 bytes long, so never a task id).
const PROBE_KEY: &[u8] = b"disk_probe";

/// The fault an error is, if it is one.
fn fault_kind(error: &StoreError) -> Option<FaultKind> {
    match error {
        StoreError::Full(_) => Some(FaultKind::Full),
        StoreError::Failed(_) => Some(FaultKind::Failed),
        _ => None,
    }
}

/// Runs one job; a panicking job is dropped with its writes (its caller hears that the writer
/// dropped the request) and the writer goes on.
fn run_job(batch: &mut Batch<'_>, job: Job) -> Option<Answer> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| (job.run)(batch))) {
        Ok(answer) => {
            // A job that neither kept nor discarded its writes keeps nothing.
            batch.discard();
            Some(answer)
        }
        Err(_) => {
            tracing::error!("store: a write job panicked; its writes were dropped");
            batch.discard();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_move_into_a_terminal_status_is_a_finish() {
        use TaskStatus::{AwaitingApproval, Cancelled, DeadLetter, Done, Failed, Queued, Running};
        let health = WriterHealth::default();
        for (before, after) in [
            (Running, Done),
            (Queued, Cancelled),
            (AwaitingApproval, Done),
            (Running, DeadLetter),
            (Queued, Running),
            // Settlement bookkeeping on an ended task, and a retry out of one, are no finish.
            (Failed, Failed),
            (DeadLetter, Queued),
        ] {
            health.count_task_change(before, after);
        }
        assert_eq!(
            health.tasks_finished(),
            [(Done, 2), (Failed, 0), (Cancelled, 1), (DeadLetter, 1)]
        );
    }
}
