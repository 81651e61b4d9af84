//! Durable state in sled. Only this module touches sled.
//!
//! One database, a fixed set of trees ([`Table`]): the service's tasks, events, engine runs and
//! idempotency keys (their rules live in `tasks`), the ledger's books and ops' records (their rules
//! live in `ledger::book` and `ops::records`, written as jobs over this module's [`Batch`]).
//!
//! How sled is used, and why (sled 0.34 locks up when writes, transactions and flushes run from
//! several threads at once: spacejam/sled#1412, #1301, #1308):
//! - **One writer.** Every write is a job for the writer thread ([`writer`]), fed through a bounded
//!   channel; the thread commits whatever is waiting as one transaction and one flush, and only
//!   then answers each caller (group commit). Nothing is acknowledged before it is on disk.
//! - **No sled call on the async runtime.** Reads run on tokio's blocking pool through
//!   [`Store::read`] (at most [`READERS_MAX`] at once); the writer is its own OS thread. A stuck
//!   sled costs threads, never the runtime: `/healthz` still answers.
//! - **Every wait is bounded.** A full queue answers [`StoreError::Busy`] within
//!   [`ENQUEUE_WAIT`]; an answer that takes longer than [`ANSWER_WAIT`] is
//!   [`StoreError::AnswerTimeout`]; a writer stuck on one group past `storage.stall_secs` is
//!   reported by the watchdog ([`watch_writer`]) to the log, `/readyz` and `/metrics`.
//!
//! Events reach live subscribers ([`Store::subscribe`]) only after their group's flush, so a
//! streamed event is never one a crash undoes.

mod recovery;
pub(crate) mod space;
mod task_record;
mod tasks;
pub(crate) mod writer;

use std::cell::Cell;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

pub use self::recovery::StopsInFlight;
pub(crate) use self::tasks::{stage_audit, stage_submission};
pub use self::tasks::{NewEvent, QueuedTask, Submission};
pub use self::writer::{Batch, WriterHealth};
use crate::model::task::Event;
use crate::platform::redact::Redactor;

pub use crate::model::errors::StoreError;

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        let fault = match &error {
            sled::Error::Io(io) => space::classify(io),
            _ => None,
        };
        match fault {
            Some(space::FaultKind::Full) => Self::Full(error.to_string()),
            Some(space::FaultKind::Failed) => Self::Failed(error.to_string()),
            None => Self::Sled(error.to_string()),
        }
    }
}

/// Most write jobs waiting for the writer by default; a caller that cannot enqueue within
/// [`ENQUEUE_WAIT`] gets [`StoreError::Busy`].
pub use crate::config::WRITE_QUEUE_MAX;
/// How long a writer waits for room in the queue.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long a caller waits for its write's answer (its group's commit and flush).
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Most reads running at once on the blocking pool; more wait (up to [`ENQUEUE_WAIT`]).
pub const READERS_MAX: usize = 32;

/// How long opening waits for sled's lock. sled 0.34 releases it from a background thread after
/// the last handle drops (spacejam/sled#1234), so a reopen in the same process, or a start right
/// after a predecessor exited, can find it briefly held; a live owner holds it far longer.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// How long dropping the last handle waits for the writer to finish its group.
const WRITER_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long a read waits for a database being reopened before it answers `STORAGE_FAILED`.
const REOPEN_READ_WAIT: Duration = Duration::from_secs(2);
/// How long a reopen waits for the reads still using the old database to end.
const REOPEN_READERS_WAIT: Duration = Duration::from_secs(5);

/// Every tree of the database. Fixed at compile time so a group commit can span any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Task id → task.
    Tasks,
    /// Task id ++ seq → event.
    Events,
    /// Task id ++ run id → engine run.
    Runs,
    /// Keys (in `Runs`) of runs written `running` and not finished yet.
    OpenRuns,
    /// Client idempotency key → task id and body digest.
    Idempotency,
    /// Ledger: account id → account.
    LedgerAccounts,
    /// Ledger: transfer id → transfer.
    LedgerTransfers,
    /// Ledger: account id ++ 0 ++ seq → transfer id.
    LedgerHistory,
    /// Ledger: expiry ms ++ transfer id → empty.
    LedgerExpiry,
    /// Ops: deploy id → deploy.
    OpsDeploys,
    /// Ops: incident id → incident.
    OpsIncidents,
    /// Ops: app/check ++ 0 ++ seq → check result.
    OpsChecks,
    /// Ops: app → release state.
    OpsReleases,
    /// Ops: app/sha → when its verify passed.
    OpsVerified,
    /// Ops: each app's deploys, so one app's history is read without the others':
    /// `<app>/<deploy id>` → empty for every kept deploy, `<app>` → what its dropped deploys count
    /// for, and a marker saying every record of `OpsDeploys` is indexed (see `storage::ops`).
    OpsDeploysByApp,
    /// Auth: token name → token record (the secret's hash, never the secret).
    AuthTokens,
    /// Auth: seq (big-endian) → audit entry (who did what through the ingress).
    AuditLog,
    /// Recovery: `clean_stop` → empty once a shutdown finished cleanly; task id (16 bytes) → the
    /// unclean stops its stage was in flight across (see `store::recovery`).
    Recovery,
    /// Ops: silence id (UUID v7) → silence (see `storage::ops::silences`).
    OpsSilences,
    /// Notifications outbox: notification id (UUID v7) → notification and its deliveries (see
    /// `storage::ops::notifications`).
    Notifications,
    /// Fleet: factory name → its registration (the key's derivation, never the key; see
    /// `storage::fleet_keys`).
    FleetFactories,
    /// GitHub: webhook delivery id → when it was first seen (see `storage::github_deliveries`).
    GithubDeliveries,
    /// The compact queue: unfinished task id (16 bytes) → its status and priority, kept with
    /// every task write, plus a marker once it indexes every task (see `store::tasks`): what
    /// Compass loads at start instead of every full record.
    QueueIndex,
}

impl Table {
    /// All tables, in index order.
    pub const ALL: [Table; 23] = [
        Table::Tasks,
        Table::Events,
        Table::Runs,
        Table::OpenRuns,
        Table::Idempotency,
        Table::LedgerAccounts,
        Table::LedgerTransfers,
        Table::LedgerHistory,
        Table::LedgerExpiry,
        Table::OpsDeploys,
        Table::OpsIncidents,
        Table::OpsChecks,
        Table::OpsReleases,
        Table::OpsVerified,
        Table::OpsDeploysByApp,
        Table::AuthTokens,
        Table::AuditLog,
        Table::Recovery,
        Table::OpsSilences,
        Table::Notifications,
        Table::FleetFactories,
        Table::GithubDeliveries,
        Table::QueueIndex,
    ];

    /// The sled tree's name (unchanged from the layout before the writer, so data dirs carry
    /// over).
    fn tree_name(self) -> &'static str {
        match self {
            Table::Tasks => "tasks",
            Table::Events => "events",
            Table::Runs => "runs",
            Table::OpenRuns => "open_runs",
            Table::Idempotency => "idempotency",
            Table::LedgerAccounts => "ledger_accounts",
            Table::LedgerTransfers => "ledger_transfers",
            Table::LedgerHistory => "ledger_history",
            Table::LedgerExpiry => "ledger_expiry",
            Table::OpsDeploys => "ops_deploys",
            Table::OpsIncidents => "ops_incidents",
            Table::OpsChecks => "ops_checks",
            Table::OpsReleases => "ops_releases",
            Table::OpsVerified => "ops_verified",
            Table::OpsDeploysByApp => "ops_deploys_by_app",
            Table::AuthTokens => "auth_tokens",
            Table::AuditLog => "audit_log",
            Table::Recovery => "recovery",
            Table::OpsSilences => "ops_silences",
            Table::Notifications => "notifications",
            Table::FleetFactories => "fleet_factories",
            Table::GithubDeliveries => "github_deliveries",
            Table::QueueIndex => "queue_index",
        }
    }
}

/// The open database and its trees, indexed by [`Table`].
pub struct Trees {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Applied to every record [`encode`]d: no secret value reaches sled, whoever wrote the text.
    redactor: Arc<Redactor>,
}

impl Trees {
    fn get(&self, table: Table) -> &sled::Tree {
        // `trees` holds one tree per `Table::ALL` entry, in that order.
        &self.trees[table as usize]
    }

    /// Opens the database at `db` (moving aside the partial files a cut-off write left there
    /// first) and every tree of it.
    fn open(db: &Path, wait: Duration, redactor: Arc<Redactor>) -> Result<Self, StoreError> {
        match space::move_aside_partial_files(db) {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, db = %db.display(), "could not move aside partial sled files")
            }
        }
        let db = open_db(db, wait)?;
        let trees = Table::ALL
            .iter()
            .map(|table| db.open_tree(table.tree_name()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            db,
            trees,
            redactor,
        })
    }
}

/// The open database, replaced when the writer reopens it: sled refuses every write after an
/// I/O error (its "global error") until the database is opened again.
pub(crate) struct TreesSlot {
    /// `None` only while a reopen is under way (or failed: the next probe tries again).
    current: RwLock<Option<Arc<Trees>>>,
    /// Where the database lives.
    db_path: PathBuf,
    /// What every record is scrubbed with.
    redactor: Arc<Redactor>,
}

impl TreesSlot {
    /// The open database, or `Failed` while it is being reopened.
    pub(crate) fn current(&self) -> Result<Arc<Trees>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                StoreError::Failed("the store is being reopened after a disk fault".into())
            })
    }

    /// Closes the database and opens it again (on the writer thread, which holds no handle of
    /// its own while this runs). Reads in flight keep the old one for at most
    /// [`REOPEN_READERS_WAIT`]; a reopen that cannot close it leaves it in place.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        self.close()?;
        let trees = Trees::open(&self.db_path, LOCK_WAIT, self.redactor.clone())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(trees));
        Ok(())
    }

    /// Takes the database out and drops it once the reads still using it are done (sled lets
    /// go of its files with the last handle); puts it back if they take too long.
    fn close(&self) -> Result<(), StoreError> {
        let taken = self
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut old) = taken else {
            return Ok(());
        };
        let deadline = Instant::now() + REOPEN_READERS_WAIT;
        loop {
            match Arc::try_unwrap(old) {
                Ok(trees) => {
                    drop(trees);
                    return Ok(());
                }
                Err(shared) if Instant::now() < deadline => {
                    old = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(shared) => {
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(shared);
                    return Err(StoreError::Failed(
                        "reads still use the store; reopen postponed".into(),
                    ));
                }
            }
        }
    }
}

/// `record` as stored: JSON with every secret value (plain or encoded) in its strings replaced by
/// its marker. Only strings change, so the record decodes as it would have.
fn encode<T: serde::Serialize>(redactor: &Redactor, record: &T) -> Result<Vec<u8>, StoreError> {
    if redactor.is_empty() {
        return Ok(serde_json::to_vec(record)?);
    }
    let mut value = serde_json::to_value(record)?;
    redactor.redact_json(&mut value);
    Ok(serde_json::to_vec(&value)?)
}

thread_local! {
    /// Set on the writer thread and inside [`Store::read`]'s blocking closures: the only threads
    /// that may call sled.
    static STORAGE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Debug builds check that sled is never called on an async worker thread: a blocked sled call
/// there would stall every task scheduled on it (the freeze of issue #9).
fn assert_storage_thread() {
    debug_assert!(
        STORAGE_THREAD.with(Cell::get) || tokio::runtime::Handle::try_current().is_err(),
        "sled called on an async runtime thread; use Store::read or Store::write"
    );
}

/// A read-only view of the last commit. Handed to [`Store::read`] closures (on the blocking pool)
/// and to writer jobs that need a consistent scan ([`Batch::committed`]).
pub struct Snapshot<'a> {
    trees: &'a Trees,
}

impl<'a> Snapshot<'a> {
    fn new(trees: &'a Trees) -> Self {
        assert_storage_thread();
        Self { trees }
    }

    /// The value at `key`.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.trees.get(table).get(key)?)
    }

    /// Decodes the JSON record at `key`.
    pub fn record<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        decode(self.get(table, key)?.as_deref())
    }

    /// Whether `key` is present.
    pub fn contains(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.trees.get(table).contains_key(key)?)
    }

    /// Entries in key order (reversible).
    pub fn iter(&self, table: Table) -> Entries {
        Entries(self.trees.get(table).iter())
    }

    /// Entries whose keys fall in `range`, in key order (reversible).
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, table: Table, range: R) -> Entries {
        Entries(self.trees.get(table).range(range))
    }

    /// Entries whose keys start with `prefix`, in key order (reversible).
    pub fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Entries {
        Entries(self.trees.get(table).scan_prefix(prefix))
    }

    /// How many entries the table holds (a full scan in sled).
    pub fn len(&self, table: Table) -> usize {
        self.trees.get(table).len()
    }
}

/// Decodes a stored JSON record, if there is one.
fn decode<T: serde::de::DeserializeOwned>(bytes: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    Ok(bytes.map(serde_json::from_slice).transpose()?)
}

/// Stored bytes (a key or a value), as sled hands them out.
pub type Bytes = sled::IVec;

/// An iterator over a table's entries, in key order or (with `rev`) the reverse.
pub struct Entries(sled::Iter);

impl Entries {
    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Bytes, StoreError>> {
        self.map(|entry| entry.map(|(key, _)| key))
    }

    /// The values alone.
    pub fn values(self) -> impl DoubleEndedIterator<Item = Result<Bytes, StoreError>> {
        self.map(|entry| entry.map(|(_, value)| value))
    }
}

impl Iterator for Entries {
    type Item = Result<(Bytes, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|entry| entry.map_err(StoreError::from))
    }
}

impl DoubleEndedIterator for Entries {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0
            .next_back()
            .map(|entry| entry.map_err(StoreError::from))
    }
}

/// What every handle shares.
struct Shared {
    slot: Arc<TreesSlot>,
    /// What every record is scrubbed with (also inside `slot`, which may be reopening).
    redactor: Arc<Redactor>,
    /// The writer's queue; `None` once dropping (so the writer sees its end).
    jobs: Option<mpsc::Sender<writer::Job>>,
    health: Arc<WriterHealth>,
    /// Bounds the reads running on the blocking pool.
    readers: Arc<Semaphore>,
    /// Every event, once durable, for live subscribers (the SSE streams).
    live: broadcast::Sender<Arc<Event>>,
    /// Told when the writer thread ended, so the last handle can wait for it (and sled's lock).
    writer_exited: Mutex<std_mpsc::Receiver<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.jobs = None;
        if let Ok(exited) = self.writer_exited.lock() {
            let _ = exited.recv_timeout(WRITER_EXIT_WAIT);
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// Events a slow live subscriber may fall behind by before it is told it lagged (and, for a
/// task's stream, catches up from sled).
pub const LIVE_EVENTS_BUFFER: usize = 1024;

impl Store {
    /// Opens (or creates) the database under `dir` and starts its writer thread, waiting up to
    /// `LOCK_WAIT` for a lock that a just-closed handle has not released yet.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, WRITE_QUEUE_MAX)
    }

    /// [`Store::open`] with a write queue of `write_queue_max` jobs (at least 1).
    pub fn open_with(dir: &Path, write_queue_max: usize) -> Result<Self, StoreError> {
        Self::open_redacting(dir, write_queue_max, Arc::default())
    }

    /// [`Store::open_with`], scrubbing the secret values `redactor` knows from every task, event,
    /// engine run and ops record written (`[governance] secrets`).
    pub fn open_redacting(
        dir: &Path,
        write_queue_max: usize,
        redactor: Arc<Redactor>,
    ) -> Result<Self, StoreError> {
        Self::open_waiting(
            dir,
            LOCK_WAIT,
            write_queue_max,
            redactor,
            space::Reserve::new(dir, 0),
        )
    }

    /// [`Store::open_redacting`] keeping a reserve of `reserve_bytes` on the data dir's disk
    /// (`[storage] reserve_bytes`; 0 keeps none): a ballast file released when the disk fills,
    /// so the store can still reopen and commit critical records while intake is refused.
    pub fn open_reserving(
        dir: &Path,
        write_queue_max: usize,
        redactor: Arc<Redactor>,
        reserve_bytes: u64,
    ) -> Result<Self, StoreError> {
        let reserve = space::Reserve::new(dir, reserve_bytes);
        Self::open_waiting(dir, LOCK_WAIT, write_queue_max, redactor, reserve)
    }

    fn open_waiting(
        dir: &Path,
        wait: Duration,
        write_queue_max: usize,
        redactor: Arc<Redactor>,
        reserve: space::Reserve,
    ) -> Result<Self, StoreError> {
        let db_path = dir.join("db");
        let trees = open_on_full_disk(&db_path, wait, &redactor, &reserve)?;
        let health = Arc::new(WriterHealth::default());
        // Without its reserve (a start on a full disk) the store serves reads and critical
        // writes; intake waits until the writer can write the reserve back.
        if !reserve.restore() {
            tracing::warn!(
                data_dir = %dir.display(),
                "the storage reserve could not be written: the disk is nearly full; new work is refused until space returns"
            );
            health.set_reserve_in_use(true);
        }
        let slot = Arc::new(TreesSlot {
            current: RwLock::new(Some(Arc::new(trees))),
            db_path,
            redactor: redactor.clone(),
        });
        let (jobs, receiver) = mpsc::channel(write_queue_max.max(1));
        let live = broadcast::channel(LIVE_EVENTS_BUFFER).0;
        let (exited_tx, exited_rx) = std_mpsc::channel();
        let parts = writer::WriterParts {
            slot: slot.clone(),
            reserve,
            health: health.clone(),
        };
        let thread_live = live.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                STORAGE_THREAD.with(|flag| flag.set(true));
                writer::run(parts, receiver, |events| publish(&thread_live, events));
                let _ = exited_tx.send(());
            })
            .map_err(|error| StoreError::Commit(format!("cannot start the writer: {error}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                slot,
                redactor,
                jobs: Some(jobs),
                health,
                readers: Arc::new(Semaphore::new(READERS_MAX)),
                live,
                writer_exited: Mutex::new(exited_rx),
            }),
        })
    }

    /// Refuses new work while the disk is faulted or the reserve is in use (`STORAGE_FULL`,
    /// `STORAGE_FAILED`): checked by intake before anything is reserved or written.
    pub fn check_intake(&self) -> Result<(), StoreError> {
        match self.shared.health.intake_error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Wakes the writer for a recovery probe (a fault, or a reserve to write back) when nothing
    /// else would: an empty job, dropped when the queue is full (then the writer is awake).
    pub fn nudge(&self) {
        let Some(jobs) = self.shared.jobs.as_ref() else {
            return;
        };
        let _ = jobs.try_send(writer::Job {
            run: Box::new(|_| Box::new(|_| ())),
            refuse: Box::new(|_| ()),
        });
    }

    /// Runs `op` on the writer thread and answers once its group is durable. `op` stages its
    /// writes on the [`Batch`]; an `Err` drops them (nothing of a refused request is written).
    /// Answers within [`ENQUEUE_WAIT`] + [`ANSWER_WAIT`], whatever the writer does.
    pub async fn write<T, E>(
        &self,
        op: impl FnOnce(&mut Batch<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        self.submit(op, move |result| {
            let _ = answer.send(result);
        })
        .await;
        answered.await.unwrap_or(Err(StoreError::Closed.into()))
    }

    /// Queues `op` for the writer without waiting for it to run. `done` is called exactly once:
    /// with `op`'s result once its group is durable (on the writer thread, so it must only hand
    /// the result on); at once with [`StoreError::Busy`] when the queue stayed full for
    /// [`ENQUEUE_WAIT`]; or with [`StoreError::AnswerTimeout`] when the group has not committed
    /// [`ANSWER_WAIT`] after queueing (a stalled writer). For actors that must not hold their
    /// mailbox for a flush. (A job that panics answers only through that timeout.)
    pub async fn submit<T, E>(
        &self,
        op: impl FnOnce(&mut Batch<'_>) -> Result<T, E> + Send + 'static,
        done: impl FnOnce(Result<T, E>) + Send + 'static,
    ) where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let Some(jobs) = self.shared.jobs.as_ref() else {
            return done(Err(StoreError::Closed.into()));
        };
        let permit = match tokio::time::timeout(ENQUEUE_WAIT, jobs.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return done(Err(StoreError::Closed.into())),
            Err(_) => return done(Err(StoreError::Busy.into())),
        };
        let answer = Answer::new(done);
        let refused = answer.slot.clone();
        let run = Box::new(move |batch: &mut Batch<'_>| {
            let result = op(batch);
            match &result {
                Ok(_) => batch.keep(),
                Err(_) => batch.discard(),
            }
            Box::new(move |committed: Result<(), &StoreError>| {
                answer.give(match (committed, result) {
                    (Err(error), Ok(_)) => Err(error.replicate().into()),
                    (_, result) => result,
                })
            }) as writer::Answer
        });
        let refuse = Box::new(move |error: &StoreError| {
            if let Some(done) = take(&refused) {
                done(Err(error.replicate().into()));
            }
        });
        permit.send(writer::Job { run, refuse });
    }

    /// Runs `op` on a snapshot of the last commit, on the blocking pool (never on an async
    /// worker). At most [`READERS_MAX`] reads run at once; a read that cannot start within
    /// [`ENQUEUE_WAIT`] is [`StoreError::Busy`], one that has not finished [`ANSWER_WAIT`] later
    /// is [`StoreError::AnswerTimeout`].
    pub async fn read<T, E>(
        &self,
        op: impl FnOnce(&Snapshot<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let readers = self.shared.readers.clone();
        let permit = match tokio::time::timeout(ENQUEUE_WAIT, readers.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StoreError::Closed.into()),
            Err(_) => return Err(StoreError::Busy.into()),
        };
        let trees = self.current_trees().await?;
        let read = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            STORAGE_THREAD.with(|flag| flag.set(true));
            let result = op(&Snapshot::new(&trees));
            STORAGE_THREAD.with(|flag| flag.set(false));
            result
        });
        // A read stuck in sled keeps its thread and its permit, but not the caller.
        match tokio::time::timeout(ANSWER_WAIT, read).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Closed.into()),
            Err(_) => Err(StoreError::AnswerTimeout(ANSWER_WAIT).into()),
        }
    }

    /// The open database; while the writer reopens it after a disk fault (well under a second),
    /// waits up to [`REOPEN_READ_WAIT`] for it rather than fail the read.
    async fn current_trees(&self) -> Result<Arc<Trees>, StoreError> {
        let deadline = Instant::now() + REOPEN_READ_WAIT;
        loop {
            match self.shared.slot.current() {
                Ok(trees) => return Ok(trees),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// `record` as this store writes it: JSON with the secret values redacted (for a record
    /// encoded before its writer job, such as a run started or an ops record).
    pub(crate) fn encode<T: serde::Serialize>(&self, record: &T) -> Result<Vec<u8>, StoreError> {
        encode(&self.shared.redactor, record)
    }

    /// Every event written from now on, as soon as it is durable. A receiver that falls more than
    /// [`LIVE_EVENTS_BUFFER`] events behind gets `Lagged`; sled still has everything.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.live.subscribe()
    }

    /// What the writer is doing (lock-free; for probes and the watchdog).
    pub fn writer_health(&self) -> &WriterHealth {
        &self.shared.health
    }

    /// Write jobs waiting for the writer.
    pub fn write_queue_depth(&self) -> usize {
        self.shared
            .jobs
            .as_ref()
            .map_or(0, |jobs| jobs.max_capacity() - jobs.capacity())
    }
}

/// A caller's answer, given once: by the writer after the commit, by a timer after
/// [`ANSWER_WAIT`], or — when the job is dropped unanswered (it panicked) — as
/// [`StoreError::Closed`], whichever comes first.
struct Answer<T, E: From<StoreError>> {
    slot: Arc<Mutex<Option<Done<T, E>>>>,
    timer: tokio::task::AbortHandle,
}

/// A caller's `done`, boxed.
type Done<T, E> = Box<dyn FnOnce(Result<T, E>) + Send>;

impl<T: Send + 'static, E: From<StoreError> + Send + 'static> Answer<T, E> {
    fn new(done: impl FnOnce(Result<T, E>) + Send + 'static) -> Self {
        let slot: Arc<Mutex<Option<Done<T, E>>>> = Arc::new(Mutex::new(Some(Box::new(done))));
        let timed_out = slot.clone();
        // Owned by this answer (aborted when it is dropped); the store sits below the runtime's
        // background tracker.
        let timer = tokio::spawn(async move {
            tokio::time::sleep(ANSWER_WAIT).await;
            if let Some(done) = take(&timed_out) {
                done(Err(StoreError::AnswerTimeout(ANSWER_WAIT).into()));
            }
        });
        Self {
            slot,
            timer: timer.abort_handle(),
        }
    }

    /// Answers, unless the timer did already.
    fn give(self, result: Result<T, E>) {
        if let Some(done) = take(&self.slot) {
            done(result);
        }
    }
}

impl<T, E: From<StoreError>> Drop for Answer<T, E> {
    fn drop(&mut self) {
        self.timer.abort();
        if let Some(done) = take(&self.slot) {
            done(Err(StoreError::Closed.into()));
        }
    }
}

/// Takes the `done` out of its slot (whoever takes it answers).
fn take<F>(slot: &Mutex<Option<F>>) -> Option<F> {
    slot.lock().ok().and_then(|mut slot| slot.take())
}

/// Hands durable events to the live subscribers (none listening is fine).
fn publish(live: &broadcast::Sender<Arc<Event>>, events: Vec<Event>) {
    if live.receiver_count() == 0 {
        return;
    }
    for event in events {
        let _ = live.send(Arc::new(event));
    }
}

/// Opens the database at `db`; when the disk is too full for sled's own start-up writes (it
/// writes a snapshot as it opens), releases the reserve and tries once more. A start that still
/// cannot open says which data dir is full.
fn open_on_full_disk(
    db: &Path,
    wait: Duration,
    redactor: &Arc<Redactor>,
    reserve: &space::Reserve,
) -> Result<Trees, StoreError> {
    let opened = match Trees::open(db, wait, redactor.clone()) {
        Err(StoreError::Full(message)) if reserve.release_for_start() => {
            tracing::warn!(%message, "the disk is full; opening the store with the reserve's space");
            Trees::open(db, wait, redactor.clone())
        }
        other => other,
    };
    opened.map_err(|error| match error {
        StoreError::Full(message) => StoreError::Full(format!(
            "cannot open the store in {}: {message}; free space on that disk and start again \
             (nothing needs deleting by hand)",
            db.display()
        )),
        other => other,
    })
}

/// Whether sled refused to open because its file lock is held. sled reports this only as an
/// `Other` I/O error with this message, so the message is what there is to match.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens sled at `path`, waiting up to `wait` for a lock a just-closed handle still holds.
fn open_db(path: &Path, wait: Duration) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
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
    }
}

/// Watches the writer until `stop` is cancelled: a group running longer than `stall` is logged
/// as an error once, and marked on [`WriterHealth`] (which `/readyz` and `/metrics` read) until
/// the writer moves again.
pub async fn watch_writer(
    store: Store,
    stall: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let tick = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let health = store.writer_health();
        if health.needs_probe() {
            store.nudge();
        }
        let busy_ms = health.busy_for_ms();
        let stalled = busy_ms.is_some_and(|ms| ms >= stall_ms);
        if health.set_stalled(stalled) {
            if stalled {
                tracing::error!(
                    busy_ms = busy_ms.unwrap_or_default(),
                    queued = store.write_queue_depth(),
                    "store writer made no progress for storage.stall_secs; writes are stuck"
                );
            } else {
                tracing::warn!("store writer is moving again");
            }
        }
    }
}

#[cfg(test)]
mod tests;
