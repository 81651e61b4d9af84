//! Paying for work: a task's budget is reserved in the Ledger before the task exists, every engine
//! run is charged as it happens, and the reservation is settled when the task ends.
//!
//! The money flows through one account per task, `task:<id>` (a project account allowed below
//! zero, bounded by the reservation):
//! - submit: a *pending* transfer `<payer>` → `task:<id>` of the budget (refused with
//!   `INSUFFICIENT_FUNDS` when the payer cannot cover it: no task is created);
//! - each engine run: a posted transfer `task:<id>` → `agent:<persona>`, priced by the rate card,
//!   with the run's id as its idempotency root (so the books show which persona earned what); a run
//!   cut off by a cancel is charged for the time it ran;
//! - the end (once the task's cut-off runs are charged and closed): the reservation is posted for
//!   what the runs cost (at most the reservation) and the rest is released; usage past the
//!   reservation is charged to the payer directly.

use std::time::Duration;

use chrono::{DateTime, Utc};

use serde_json::json;

use crate::model::ledger::{
    agent_account, AccountKind, Applied, LedgerError, NewAccount, NewTransfer, TransferStatus,
};
use crate::model::persona::Persona;
use crate::model::task::{EngineRun, Task, TaskId};
use crate::runtime::directory::ActorDirectory;
use crate::runtime::ledger as ledger_actor;
use crate::runtime::Services;
use crate::storage::ledger::{self as book, Book};
use crate::storage::store::{Batch, NewEvent};

/// Transfer code of a task's budget reservation (and its settlement).
pub(crate) const CODE_TASK_BUDGET: u16 = 10;
/// Transfer code of an engine run's charge.
pub(crate) const CODE_ENGINE_RUN: u16 = 11;
/// Transfer code of usage past the reservation, charged to the payer at settlement.
pub(crate) const CODE_BUDGET_OVERRUN: u16 = 12;
/// How long a settlement waits for the task's cut-off runs to be charged and closed.
const OPEN_RUNS_WAIT: Duration = Duration::from_secs(10);

/// The ledger account a task's money flows through.
pub(crate) fn task_account(task_id: TaskId) -> String {
    format!("task:{task_id}")
}

/// The id of a task's `round`-th budget reservation (a retried task reserves again).
pub(crate) fn reservation_id(task_id: TaskId, round: u32) -> String {
    format!("task:{task_id}:budget:{round}")
}

/// Opens the task's account and reserves its budget from the payer, in one Ledger write: a
/// refused reservation (`INSUFFICIENT_FUNDS`, an unknown payer) leaves no account behind. Safe
/// to repeat.
pub(crate) async fn reserve(
    directory: &ActorDirectory,
    task: &Task,
    round: u32,
) -> Result<String, LedgerError> {
    let (account, reservation) = budget_reservation(task, round);
    let id = reservation.id.clone();
    ledger_actor::open_and_reserve(directory, account, reservation).await?;
    Ok(id)
}

/// The task's account and the pending transfer that holds round `round` of its budget: what
/// [`reserve`] asks the Ledger for, and what intake writes in the task's own job
/// ([`stage_budget_reservation`]).
pub(crate) fn budget_reservation(task: &Task, round: u32) -> (NewAccount, NewTransfer) {
    let account = NewAccount {
        id: task_account(task.id),
        kind: AccountKind::Project,
        allow_negative: true,
    };
    let mut reservation = NewTransfer::reserve(
        &reservation_id(task.id, round),
        &task.billing.account,
        &task_account(task.id),
        task.billing.budget.max_cost,
        CODE_TASK_BUDGET,
        None,
    );
    reservation.parent_task = Some(task.id);
    reservation.memo = Some(format!("budget of task {}", task.id));
    (account, reservation)
}

/// Stages a budget reservation in the caller's store job, as the Ledger would write it (expired
/// reservations released first, the account opened, the pending transfer applied): intake writes
/// a new task and its reservation in one group commit, so neither exists without the other.
/// The caller counts it (`metrics::ledger_transfer`) once the job is durable.
pub(crate) fn stage_budget_reservation(
    batch: &mut Batch<'_>,
    account: &NewAccount,
    reservation: &NewTransfer,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    if let Err(error) = book::expire_due(batch, now, book::EXPIRE_BATCH_MAX) {
        tracing::error!(%error, "could not release expired pending transfers");
    }
    book::open_and_transfer(batch, account, reservation, now)?;
    Ok(())
}

/// Releases a reservation whose task was never created.
pub(crate) async fn release(directory: &ActorDirectory, reservation: &str) {
    if let Err(error) = ledger_actor::void(directory, reservation).await {
        tracing::error!(%error, reservation, "could not release a reservation");
    }
}

/// At start, off Compass's mailbox: voids the orphans of [`void_orphan_reservations`]. Failures
/// are logged; the next start tries again.
pub(crate) fn void_orphan_reservations_later(services: &Services, before: DateTime<Utc>) {
    let background = services.background.clone();
    let services = services.clone();
    background.spawn("ledger.orphans", async move {
        match void_orphan_reservations(&services, before).await {
            Ok(0) => {}
            Ok(voided) => tracing::warn!(
                voided,
                "voided budget reservations of tasks that were never created"
            ),
            Err(error) => tracing::error!(%error, "could not void orphaned budget reservations"),
        }
    });
}

/// Voids every pending budget reservation (`task:<id>:budget:<n>`) made before `before` whose
/// task does not exist. Earlier versions reserved before they created the task, and a crash
/// between the two left a reservation without a timeout holding the payer's money for a task
/// that will never settle it (intake now writes both in one job). One made since `before` may still be
/// getting its task, so it is left alone. Each void is a service event `ledger.orphan_voided`.
pub(crate) async fn void_orphan_reservations(
    services: &Services,
    before: DateTime<Utc>,
) -> Result<usize, LedgerError> {
    let book = Book::new(&services.store);
    let mut voided = 0;
    for transfer in book.pending_with_prefix("task:", CODE_TASK_BUDGET).await? {
        let Some(task_id) = transfer.parent_task else {
            continue;
        };
        if transfer.created_at >= before || services.store.task(task_id).await?.is_some() {
            continue;
        }
        ledger_actor::void(&services.directory, &transfer.id).await?;
        voided += 1;
        let data = json!({"reservation": transfer.id, "task": task_id, "account": transfer.debit_account, "amount": transfer.amount});
        let event = NewEvent::new(Persona::Ledger, "ledger.orphan_voided", data);
        if let Err(error) = services.store.append_event(TaskId::service(), event).await {
            tracing::error!(%error, reservation = %transfer.id, "could not record a voided orphan");
        }
    }
    Ok(voided)
}

/// Puts what the rate card charges for an ended run on its record (`cost`), so the runs API shows
/// the same figure the books do.
pub(crate) fn price(services: &Services, run: &mut EngineRun) {
    run.cost = Some(services.config.ledger.rates.run_cost(run));
}

/// Charges one engine run to its task (idempotent by the run's id). A failure is recorded as an
/// event, never fails the work: the run already happened.
pub(crate) async fn charge_run(services: &Services, run: &EngineRun) {
    let amount = run
        .cost
        .unwrap_or_else(|| services.config.ledger.rates.run_cost(run));
    if amount == 0 {
        return;
    }
    let mut charge = NewTransfer::posted(
        &format!("run:{}", run.id),
        &task_account(run.task_id),
        &agent_account(&run.persona),
        amount,
        CODE_ENGINE_RUN,
    );
    charge.parent_task = Some(run.task_id);
    charge.memo = Some(format!(
        "{} {} run, {} ms",
        run.persona, run.engine, run.duration_ms
    ));
    match ledger_actor::transfer(&services.directory, charge).await {
        Ok(Applied::Created(_)) => crate::platform::metrics::ledger_charged(&run.persona, amount),
        Ok(Applied::Replayed(_)) => {}
        Err(error) => charge_failed(services, run, amount, error).await,
    }
}

/// Records a charge the Ledger refused or did not answer, loudly: an error log, an event on the
/// task saying the run is unpaid (with the error's code, e.g. `AMOUNT_OVERFLOW` for an account
/// whose totals would overflow) and a metric. It never fails the work: the run already happened.
async fn charge_failed(services: &Services, run: &EngineRun, amount: u64, error: LedgerError) {
    let code = error.code();
    tracing::error!(%error, code, run = %run.id, task = %run.task_id, amount, "could not charge an engine run; it stays unpaid");
    crate::platform::metrics::ledger_charge_failed(&run.persona, code);
    let data = json!({"run_id": run.id, "amount": amount, "unpaid": true, "code": code, "error": error.to_string()});
    let event = NewEvent::new(Persona::Ledger, "ledger.charge_failed", data);
    if let Err(error) = services.store.append_event(run.task_id, event).await {
        tracing::error!(%error, run = %run.id, "could not record an unpaid run");
    }
}

/// Settles a finished task's reservation: posts what its runs cost (at most the reservation),
/// releases the rest, and charges any overrun to the payer. Every step is idempotent, so a
/// settlement cut off half-way is finished by running it again.
pub(crate) async fn settle(services: &Services, task: &Task) -> Result<(), LedgerError> {
    let Some(reservation) = &task.billing.reservation else {
        return Ok(());
    };
    wait_for_open_runs(services, task.id).await;
    let owed = owed_by_task(services, task.id).await?;
    let book = Book::new(&services.store);
    if let Some(held) = book
        .transfer(reservation)
        .await?
        .filter(|t| t.status == TransferStatus::Pending)
    {
        match owed.min(held.amount) {
            0 => ledger_actor::void(&services.directory, reservation).await?,
            used => ledger_actor::post(&services.directory, reservation, Some(used)).await?,
        };
    }
    let overrun = owed_by_task(services, task.id).await?;
    if overrun > 0 {
        let mut charge = NewTransfer::posted(
            &format!("{reservation}:overrun"),
            &task.billing.account,
            &task_account(task.id),
            overrun,
            CODE_BUDGET_OVERRUN,
        );
        charge.parent_task = Some(task.id);
        charge.memo = Some(format!("task {} used more than its budget", task.id));
        ledger_actor::transfer(&services.directory, charge).await?;
    }
    Ok(())
}

/// Waits (at most [`OPEN_RUNS_WAIT`]) until the task's runs are closed: a run cut off by a cancel
/// is charged and closed from a spawned task, and its charge belongs in the settlement.
async fn wait_for_open_runs(services: &Services, task_id: TaskId) {
    let deadline = tokio::time::Instant::now() + OPEN_RUNS_WAIT;
    while services.store.has_open_runs(task_id).await.unwrap_or(false) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(task = %task_id, "settling with a run still open");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the task's runs cost that no settlement has paid yet (the task account's deficit).
async fn owed_by_task(services: &Services, task_id: TaskId) -> Result<u64, LedgerError> {
    let book = Book::new(&services.store);
    let balance = book
        .account(&task_account(task_id))
        .await?
        .map(|a| a.balance())
        .unwrap_or(0);
    Ok(u64::try_from(-balance.min(0)).unwrap_or(u64::MAX))
}
