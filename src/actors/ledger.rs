//! Ledger: the token ledger, the only source of balance changes.
//!
//! Every write (open an account, transfer, post, void) is a message. The handler turns it into a
//! job for the store's writer ([`Store::submit`]) and goes on to the next message: the job reads
//! the balances, decides and stages its writes on the writer thread, and the answer goes back to
//! the caller from there once the job's group commit is durable. So the mailbox never waits on
//! the disk, a burst of transfers shares one flush, and nobody hears "done" (nor a replay of it)
//! before it is on disk. The handler waits only for room in the writer's bounded queue; a full
//! queue answers `STORE_BUSY`.
//!
//! Reads (an account, a transfer, a history page) go straight to the [`Book`](crate::storage::ledger::Book) from HTTP; the
//! audit is a writer job on the last commit, so that it sees a consistent state. A timer voids
//! pending transfers past their timeout (a bounded batch per tick), and every transfer and
//! settlement first releases any that are due, so an expired reservation never blocks a payment.
//!
//! Other components call it through the clients in [`crate::runtime::ledger`] (`transfer`,
//! `pending`, `post`, `void`, `open_account`, `audit`), which find the current incarnation in the
//! directory.
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]. Deviation: its callers are not pipelines and do
//! not ask again by themselves: the clients in [`crate::runtime::ledger`] wait up to
//! `LEDGER_RESTART_WAIT` for the next incarnation and answer `PERSONA_UNAVAILABLE` for a lost
//! request ("retry with the same id"); every write is idempotent by its id, so a retry never pays
//! twice. Writer jobs already queued still commit and answer from the writer thread. The next
//! incarnation opens the built-in accounts again (a replay) and restarts the expiry timer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::model::ledger::{
    builtin_accounts, local_funding_transfer_id, Applied, LedgerConfig, LedgerError, NewTransfer,
    Transfer, CODE_MINT, MINT_ACCOUNT,
};
use crate::runtime::ledger::{LedgerMsg, LedgerReply};
use crate::runtime::Services;
use crate::storage::ledger as book;
use crate::storage::store::{Batch, Store};

/// Shortest expiry scan interval, whatever the config says.
const EXPIRY_SCAN_INTERVAL_MS_MIN: u64 = 10;

/// The Ledger persona.
pub struct Ledger;

/// Ledger's start-up arguments.
pub struct LedgerArguments {
    /// Shared services.
    pub services: Services,
}

/// Ledger's state.
pub struct LedgerState {
    /// Where the books live; every write is a job on its writer.
    store: Store,
    /// The expiry tick; stopped with the actor.
    expiry_timer: JoinHandle<()>,
}

impl Actor for Ledger {
    type Msg = LedgerMsg;
    type State = LedgerState;
    type Arguments = LedgerArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = ledger_config(&args.services);
        let store = args.services.store.clone();
        let interval = config
            .expiry_scan_interval_ms
            .max(EXPIRY_SCAN_INTERVAL_MS_MIN);
        store
            .write(move |batch| open_builtin_accounts(batch, &config))
            .await?;
        let expiry_timer =
            myself.send_interval(Duration::from_millis(interval), || LedgerMsg::ExpireDue);
        Ok(LedgerState {
            store,
            expiry_timer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.expiry_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Utc::now();
        match message {
            LedgerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            LedgerMsg::OpenAccount { account, reply } => {
                crate::work_failpoint!("ledger.handle");
                let op = move |batch: &mut Batch<'_>| book::create_account(batch, &account);
                submit(&state.store, op, reply).await;
            }
            LedgerMsg::Transfer {
                transfer,
                audit,
                reply,
            } => {
                crate::work_failpoint!("ledger.handle");
                let op = move |batch: &mut Batch<'_>| {
                    release_due(batch, now);
                    let applied = book::apply_transfer(batch, &transfer, now)?;
                    if let (Applied::Created(_), Some(entry)) = (&applied, audit) {
                        crate::storage::store::stage_audit(batch, entry)?;
                    }
                    Ok(applied)
                };
                // Counted once durable, like every other answer.
                let answer = move |applied: Result<Applied<Transfer>, LedgerError>| {
                    if let Ok(Applied::Created(created)) = &applied {
                        crate::platform::metrics::ledger_transfer(created.code);
                    }
                    let _ = reply.send(applied);
                };
                state.store.submit(op, answer).await;
            }
            LedgerMsg::OpenAndTransfer {
                account,
                transfer,
                reply,
            } => {
                crate::work_failpoint!("ledger.handle");
                let op = move |batch: &mut Batch<'_>| {
                    release_due(batch, now);
                    book::open_and_transfer(batch, &account, &transfer, now)
                };
                let answer = move |applied: Result<Applied<Transfer>, LedgerError>| {
                    if let Ok(Applied::Created(created)) = &applied {
                        crate::platform::metrics::ledger_transfer(created.code);
                    }
                    let _ = reply.send(applied);
                };
                state.store.submit(op, answer).await;
            }
            LedgerMsg::Settle { id, action, reply } => {
                crate::work_failpoint!("ledger.handle");
                let op = move |batch: &mut Batch<'_>| {
                    release_due(batch, now);
                    book::settle(batch, &id, action, now)
                };
                // The outer result decides what is written; the inner one is the answer (an
                // expired transfer is released, and the request refused).
                let answer = move |result: Result<Result<_, _>, LedgerError>| {
                    let _ = reply.send(result.and_then(|inner| inner));
                };
                state.store.submit(op, answer).await;
            }
            LedgerMsg::Audit(reply) => {
                let op = |batch: &mut Batch<'_>| book::audit(&batch.committed());
                submit(&state.store, op, reply).await;
            }
            LedgerMsg::ExpireDue => expire_due(&myself, &state.store, now).await,
        }
        Ok(())
    }
}

/// Queues `op` on the store's writer; its result, once durable (or the store's refusal), answers
/// `reply`.
async fn submit<T: Send + 'static>(
    store: &Store,
    op: impl FnOnce(&mut Batch<'_>) -> Result<T, LedgerError> + Send + 'static,
    reply: LedgerReply<T>,
) {
    store
        .submit(op, move |result| {
            let _ = reply.send(result);
        })
        .await;
}

/// Releases a bounded batch of due pending transfers inside a write job, so an expired
/// reservation never blocks the write; a failure is logged and left to the timer.
fn release_due(batch: &mut Batch<'_>, now: DateTime<Utc>) {
    if let Err(error) = book::expire_due(batch, now, book::EXPIRE_BATCH_MAX) {
        tracing::error!(%error, "could not release expired pending transfers");
    }
}

/// The ledger's settings.
fn ledger_config(services: &Services) -> LedgerConfig {
    services.config.ledger.clone()
}

/// Opens the built-in accounts and funds the local one, idempotently (fixed ids).
fn open_builtin_accounts(batch: &mut Batch<'_>, config: &LedgerConfig) -> Result<(), LedgerError> {
    for account in builtin_accounts(config) {
        match book::create_account(batch, &account) {
            Ok(_) => {}
            Err(LedgerError::AccountExists(id)) => {
                tracing::warn!(account = %id, "a built-in account exists with another kind or limit")
            }
            Err(other) => return Err(other),
        }
    }
    if config.local_funding == 0 {
        return Ok(());
    }
    let funding = NewTransfer {
        memo: Some("initial funding of the local account".into()),
        ..NewTransfer::posted(
            &local_funding_transfer_id(&config.local_account),
            MINT_ACCOUNT,
            &config.local_account,
            config.local_funding,
            CODE_MINT,
        )
    };
    match book::apply_transfer(batch, &funding, Utc::now()) {
        Ok(applied) if !applied.is_replay() => {
            tracing::info!(account = %config.local_account, amount = config.local_funding, "funded the local account");
            crate::platform::metrics::ledger_transfer(CODE_MINT);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(LedgerError::TransferExists(id)) => {
            tracing::warn!(transfer = %id, "the local funding transfer exists with another body");
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Releases a bounded batch of due pending transfers (the timer's tick); asks for another batch
/// if it was full.
async fn expire_due(myself: &ActorRef<LedgerMsg>, store: &Store, now: DateTime<Utc>) {
    let myself = myself.clone();
    let op = move |batch: &mut Batch<'_>| book::expire_due(batch, now, book::EXPIRE_BATCH_MAX);
    let done = move |result: Result<usize, LedgerError>| match result {
        Ok(0) => {}
        Ok(released) => {
            tracing::info!(released, "released pending transfers past their timeout");
            if released == book::EXPIRE_BATCH_MAX {
                let _ = myself.cast(LedgerMsg::ExpireDue);
            }
        }
        Err(error) => tracing::error!(%error, "could not release expired pending transfers"),
    };
    // A full queue reaches `done` as an error; the next tick tries again.
    store.submit(op, done).await;
}
