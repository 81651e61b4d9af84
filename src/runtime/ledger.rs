//! The Ledger's mailbox and its typed clients: metering, billing and the ingress move money only
//! through these; [`crate::actors::ledger`] implements them.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::model::ledger::{
    Account, Applied, Audit, LedgerError, NewAccount, NewTransfer, Settle, Transfer,
};
use crate::model::persona::Persona;
use crate::runtime::directory::{ActorDirectory, PersonaMailbox};

/// How long a caller waits for a restarting Ledger to come back.
pub const LEDGER_RESTART_WAIT: Duration = Duration::from_secs(5);
/// How long a caller waits for the Ledger's answer (a write waits for its group commit).
pub const LEDGER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request's result goes.
pub type LedgerReply<T> = RpcReplyPort<Result<T, LedgerError>>;

/// Ledger's messages.
pub enum LedgerMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
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
        /// Who asked, for the audit log: written in the transfer's own store job when it is
        /// created (one group commit, not two), never for a replay.
        audit: Option<crate::model::auth::AuditEntry>,
        /// The outcome, after it is durable.
        reply: LedgerReply<Applied<Transfer>>,
    },
    /// Open an account and move or reserve tokens in one write: a refused transfer leaves no
    /// account behind (a task's account is opened with its budget reservation).
    OpenAndTransfer {
        /// The account (a replay if it exists alike).
        account: NewAccount,
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
}

/// Asks the current Ledger incarnation and waits (bounded) for its answer.
///
/// A lost answer (the Ledger died, or the wait ran out) says nothing about whether the write was
/// applied: retry with the same id, which is always safe.
pub async fn ask<T: Send + 'static>(
    directory: &ActorDirectory,
    request: impl FnOnce(LedgerReply<T>) -> LedgerMsg,
) -> Result<T, LedgerError> {
    let ledger: ActorRef<LedgerMsg> = directory
        .persona(LEDGER_RESTART_WAIT, None)
        .await
        .map_err(|error| LedgerError::Unavailable(format!("persona {error}")))?;
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
    transfer_audited(directory, transfer, None).await
}

/// [`transfer`] with the audit entry of the request that asked for it, written with the
/// transfer when it is created.
pub(crate) async fn transfer_audited(
    directory: &ActorDirectory,
    transfer: NewTransfer,
    audit: Option<crate::model::auth::AuditEntry>,
) -> Result<Applied<Transfer>, LedgerError> {
    ask(directory, |reply| LedgerMsg::Transfer {
        transfer,
        audit,
        reply,
    })
    .await
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

/// Opens `account` and reserves `transfer` (made pending) in one durable write; a refusal
/// opens nothing.
pub async fn open_and_reserve(
    directory: &ActorDirectory,
    account: NewAccount,
    transfer: NewTransfer,
) -> Result<Applied<Transfer>, LedgerError> {
    let transfer = NewTransfer {
        pending: true,
        ..transfer
    };
    ask(directory, |reply| LedgerMsg::OpenAndTransfer {
        account,
        transfer,
        reply,
    })
    .await
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

impl PersonaMailbox for LedgerMsg {
    const PERSONA: Persona = Persona::Ledger;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        LedgerMsg::Ping(reply)
    }
}
