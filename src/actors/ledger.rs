//! Ledger: the token ledger, the only writer of balances.
//!
//! Every write (open an account, transfer, post, void) is a message. The handler applies it to
//! the [`Book`] at once — one short sled transaction — and parks the answer until a flush has made
//! it durable. One flush runs at a time, in a spawned task; the writes applied while it runs wait
//! for the next one, so under load one flush covers a whole batch (group commit) and the mailbox
//! never waits on the disk. Nobody hears "done" (nor a replay of it) before it is on disk.
//!
//! Reads (an account, a transfer, a history page) go straight to the book from HTTP; the audit
//! runs here, between two writes, so that it sees a consistent state. A timer voids pending
//! transfers past their timeout (a bounded batch per tick), and every write first releases any
//! that are due, so an expired reservation never blocks a payment.
//!
//! Other components call it through [`open_account`], [`transfer`], [`pending`], [`post`],
//! [`void`] and [`audit`], which find the current incarnation in the [`ActorDirectory`].

use std::time::Duration;

use chrono::Utc;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use super::directory::ActorDirectory;
use super::Services;
use crate::ledger::book::{Book, Settle};
use crate::ledger::{
    builtin_accounts, local_funding_transfer_id, Account, Applied, Audit, LedgerConfig,
    LedgerError, NewAccount, NewTransfer, Transfer, CODE_MINT, MINT_ACCOUNT,
};

/// How long a caller waits for a restarting Ledger to come back.
pub const LEDGER_RESTART_WAIT: Duration = Duration::from_secs(5);
/// How long a caller waits for the Ledger's answer (a write waits for its flush).
pub const LEDGER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most expired transfers released per message, so a backlog never holds the mailbox long.
const EXPIRE_BATCH_MAX: usize = 256;
/// Most answers waiting for a flush; past it the handler flushes inline (backpressure).
const UNFLUSHED_ANSWERS_MAX: usize = 4096;
/// Shortest expiry scan interval, whatever the config says.
const EXPIRY_SCAN_INTERVAL_MS_MIN: u64 = 10;

/// The Ledger persona.
pub struct Ledger;

/// Ledger's start-up arguments.
pub struct LedgerArguments {
    /// Shared services.
    pub services: Services,
}

/// An answer waiting for a flush: called with the flush's outcome.
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Where a request's result goes.
pub type LedgerReply<T> = RpcReplyPort<Result<T, LedgerError>>;

/// Ledger's state.
pub struct LedgerState {
    /// The books; the actor is their only writer.
    book: Book,
    /// Answers of writes applied since the running flush started: they wait for the next one.
    unflushed: Vec<Answer>,
    /// Whether something nobody waits for (an expiry) was written since the last flush started.
    dirty: bool,
    /// Whether a flush task runs; at most one does.
    flushing: bool,
    /// The expiry tick; stopped with the actor.
    expiry_timer: JoinHandle<()>,
}

/// Ledger's messages.
pub enum LedgerMsg {
    /// Open an account (a replay of an identical request answers the stored one).
    OpenAccount {
        /// The account.
        account: NewAccount,
        /// The outcome, after it is durable.
        reply: LedgerReply<Applied<Account>>,
    },
    /// Move or reserve tokens.
    Transfer {
        /// The transfer.
        transfer: NewTransfer,
        /// The outcome, after it is durable.
        reply: LedgerReply<Applied<Transfer>>,
    },
    /// Post or void a pending transfer.
    Settle {
        /// The pending transfer's id.
        id: String,
        /// Post (how much) or void.
        action: Settle,
        /// The outcome, after it is durable.
        reply: LedgerReply<Applied<Transfer>>,
    },
    /// Recompute every balance from the transfers.
    Audit(LedgerReply<Audit>),
    /// Release pending transfers past their timeout (the timer's tick).
    ExpireDue,
    /// The running flush finished.
    Flushed(Result<(), String>),
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
        let book = Book::open(&args.services.store)?;
        open_builtin_accounts(&book, &config)?;
        book.flush().await?;
        let interval = config
            .expiry_scan_interval_ms
            .max(EXPIRY_SCAN_INTERVAL_MS_MIN);
        let expiry_timer =
            myself.send_interval(Duration::from_millis(interval), || LedgerMsg::ExpireDue);
        Ok(LedgerState {
            book,
            unflushed: Vec::new(),
            dirty: false,
            flushing: false,
            expiry_timer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.expiry_timer.abort();
        flush_inline(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LedgerMsg::OpenAccount { account, reply } => {
                crate::work_failpoint!("ledger.handle");
                let result = state.book.create_account(&account);
                defer(state, reply, result);
            }
            LedgerMsg::Transfer { transfer, reply } => {
                crate::work_failpoint!("ledger.handle");
                expire_due(&myself, state);
                let result = state.book.apply_transfer(&transfer, Utc::now());
                if let Ok(Applied::Created(applied)) = &result {
                    crate::metrics::ledger_transfer(applied.code);
                }
                defer(state, reply, result);
            }
            LedgerMsg::Settle { id, action, reply } => {
                crate::work_failpoint!("ledger.handle");
                expire_due(&myself, state);
                let result = state.book.settle(&id, action, Utc::now());
                defer(state, reply, result);
            }
            LedgerMsg::Audit(reply) => {
                let _ = reply.send(state.book.audit());
            }
            LedgerMsg::ExpireDue => expire_due(&myself, state),
            LedgerMsg::Flushed(result) => {
                state.flushing = false;
                // The books may hold writes that are not durable: start over from disk.
                result.map_err(|error| format!("the ledger could not flush: {error}"))?;
            }
        }
        if state.unflushed.len() >= UNFLUSHED_ANSWERS_MAX {
            flush_inline(state).await;
        }
        start_flush(&myself, state);
        Ok(())
    }
}

/// The ledger's settings. Defaults until `Config` has a `[ledger]` section.
fn ledger_config(services: &Services) -> LedgerConfig {
    services.config.ledger.clone()
}

/// Opens the built-in accounts and funds the local one, idempotently (fixed ids).
fn open_builtin_accounts(book: &Book, config: &LedgerConfig) -> Result<(), LedgerError> {
    for account in builtin_accounts(config) {
        match book.create_account(&account) {
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
    match book.apply_transfer(&funding, Utc::now()) {
        Ok(applied) if !applied.is_replay() => {
            tracing::info!(account = %config.local_account, amount = config.local_funding, "funded the local account");
            crate::metrics::ledger_transfer(CODE_MINT);
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

/// Parks a write's answer until the next flush has finished.
fn defer<T: Send + 'static>(
    state: &mut LedgerState,
    reply: LedgerReply<T>,
    result: Result<T, LedgerError>,
) {
    state.unflushed.push(Box::new(move |flushed| {
        let answer = match flushed {
            Ok(()) => result,
            Err(error) => Err(LedgerError::NotDurable(error)),
        };
        let _ = reply.send(answer);
    }));
}

/// Starts a flush for everything written so far, unless one runs (its end starts the next).
fn start_flush(myself: &ActorRef<LedgerMsg>, state: &mut LedgerState) {
    if state.flushing || (state.unflushed.is_empty() && !state.dirty) {
        return;
    }
    state.flushing = true;
    state.dirty = false;
    let answers = std::mem::take(&mut state.unflushed);
    let book = state.book.clone();
    let myself = myself.clone();
    tokio::spawn(async move {
        let flushed = book.flush().await.map_err(|error| error.to_string());
        for answer in answers {
            answer(flushed.clone());
        }
        let _ = myself.cast(LedgerMsg::Flushed(flushed));
    });
}

/// Flushes in the handler and answers everyone waiting: backpressure and shutdown.
async fn flush_inline(state: &mut LedgerState) {
    let flushed = state.book.flush().await.map_err(|error| error.to_string());
    if let Err(error) = &flushed {
        tracing::error!(%error, "the ledger could not flush");
    }
    for answer in std::mem::take(&mut state.unflushed) {
        answer(flushed.clone());
    }
}

/// Releases a bounded batch of due pending transfers; asks for another batch if it was full.
fn expire_due(myself: &ActorRef<LedgerMsg>, state: &mut LedgerState) {
    match state.book.expire_due(Utc::now(), EXPIRE_BATCH_MAX) {
        Ok(0) => {}
        Ok(released) => {
            tracing::info!(released, "released pending transfers past their timeout");
            state.dirty = true;
            if released == EXPIRE_BATCH_MAX {
                let _ = myself.cast(LedgerMsg::ExpireDue);
            }
        }
        Err(error) => tracing::error!(%error, "could not release expired pending transfers"),
    }
}

/// Asks the current Ledger incarnation and waits (bounded) for its answer.
///
/// A lost answer (the Ledger died, or the wait ran out) says nothing about whether the write was
/// applied: retry with the same id, which is always safe.
pub async fn ask<T: Send + 'static>(
    directory: &ActorDirectory,
    request: impl FnOnce(LedgerReply<T>) -> LedgerMsg,
) -> Result<T, LedgerError> {
    let cell = directory
        .wait_for("ledger", LEDGER_RESTART_WAIT, None)
        .await
        .map_err(|error| LedgerError::Unavailable(format!("persona {error}")))?;
    let ledger: ActorRef<LedgerMsg> = cell.into();
    match ledger.call(request, Some(LEDGER_CALL_TIMEOUT)).await {
        Ok(CallResult::Success(result)) => result,
        Ok(CallResult::Timeout) => Err(LedgerError::Unavailable(format!(
            "the ledger did not answer within {LEDGER_CALL_TIMEOUT:?}; retry with the same id"
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(LedgerError::Unavailable(
            "the ledger stopped before answering; retry with the same id".into(),
        )),
    }
}

/// Opens an account through the Ledger.
pub async fn open_account(
    directory: &ActorDirectory,
    account: NewAccount,
) -> Result<Applied<Account>, LedgerError> {
    ask(directory, |reply| LedgerMsg::OpenAccount { account, reply }).await
}

/// Moves (or, with `pending: true`, reserves) tokens through the Ledger; durable on `Ok`.
pub async fn transfer(
    directory: &ActorDirectory,
    transfer: NewTransfer,
) -> Result<Applied<Transfer>, LedgerError> {
    ask(directory, |reply| LedgerMsg::Transfer { transfer, reply }).await
}

/// Reserves tokens (a two-phase transfer), whatever `transfer.pending` said.
pub async fn pending(
    directory: &ActorDirectory,
    transfer: NewTransfer,
) -> Result<Applied<Transfer>, LedgerError> {
    let transfer = NewTransfer {
        pending: true,
        ..transfer
    };
    self::transfer(directory, transfer).await
}

/// Posts a pending transfer: moves `amount` (default: all reserved) and releases the rest.
pub async fn post(
    directory: &ActorDirectory,
    id: &str,
    amount: Option<u64>,
) -> Result<Applied<Transfer>, LedgerError> {
    settle(directory, id, Settle::Post(amount)).await
}

/// Voids a pending transfer: releases all of it.
pub async fn void(directory: &ActorDirectory, id: &str) -> Result<Applied<Transfer>, LedgerError> {
    settle(directory, id, Settle::Void).await
}

async fn settle(
    directory: &ActorDirectory,
    id: &str,
    action: Settle,
) -> Result<Applied<Transfer>, LedgerError> {
    let id = id.to_owned();
    ask(directory, |reply| LedgerMsg::Settle { id, action, reply }).await
}

/// Audits the books (consistent: it runs between two writes).
pub async fn audit(directory: &ActorDirectory) -> Result<Audit, LedgerError> {
    ask(directory, LedgerMsg::Audit).await
}
