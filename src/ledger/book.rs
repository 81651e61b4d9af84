//! The books in sled. With `store`, the only module that touches sled.
//!
//! Trees (of the service's one database, opened through [`Store::tree`]):
//! - `ledger_accounts`: account id → account JSON (with its four running totals);
//! - `ledger_transfers`: transfer id → transfer JSON;
//! - `ledger_history`: account id ++ `0x00` ++ seq (8 bytes, big-endian) → transfer id. Ids never
//!   hold `0x00`, so a prefix scan gives one account's transfers in creation order;
//! - `ledger_expiry`: expiry time (ms since the epoch, 8 bytes, big-endian) ++ transfer id → empty:
//!   the pending transfers that have a timeout, soonest first.
//!
//! Every write is one multi-tree transaction holding the transfer, the balances it touches, its
//! history entries and its expiry entry, so a crash leaves either all of it or none. Writes do not
//! flush: the Ledger actor applies many and flushes once for the batch (group commit), answering
//! nobody before [`Book::flush`] returned.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{CompareAndSwapError, Transactional, Tree};

use super::{
    Account, Applied, Audit, HistoryPage, LedgerError, NewAccount, NewTransfer, Transfer,
    TransferStatus, Violation,
};
use crate::store::Store;

/// Most transfers one history page may hold.
pub const HISTORY_LIMIT_MAX: usize = 500;
/// Separates an account id from the seq in a history key; never part of an id.
const HISTORY_SEPARATOR: u8 = 0;

type TxError = ConflictableTransactionError<LedgerError>;

impl From<TransactionError<LedgerError>> for LedgerError {
    fn from(error: TransactionError<LedgerError>) -> Self {
        match error {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(inner) => Self::Storage(inner),
        }
    }
}

/// How a pending transfer is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Move this much (default: all of it) and release the rest.
    Post(Option<u64>),
    /// Release all of it.
    Void,
}

/// What [`decide`] concludes for a settle request.
#[derive(Debug)]
enum Decision {
    /// Settle with this status, moving this much.
    Apply(TransferStatus, u64),
    /// Already settled this very way: answer the stored record.
    Replay,
    /// Refuse; nothing changes.
    Refuse(LedgerError),
}

/// The ledger's trees. Cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Book {
    /// For sequence numbers and flushes.
    store: Store,
    accounts: Tree,
    transfers: Tree,
    history: Tree,
    expiry: Tree,
}

impl Book {
    /// Opens (or creates) the ledger's trees in the store's database.
    pub fn open(store: &Store) -> Result<Self, LedgerError> {
        Ok(Self {
            accounts: store.tree("ledger_accounts")?,
            transfers: store.tree("ledger_transfers")?,
            history: store.tree("ledger_history")?,
            expiry: store.tree("ledger_expiry")?,
            store: store.clone(),
        })
    }

    /// Makes every write so far durable; the actor answers writers only after this returned.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        Ok(self.store.flush().await?)
    }

    /// One account.
    pub fn account(&self, id: &str) -> Result<Option<Account>, LedgerError> {
        self.accounts.get(id)?.map(|b| decode(&b)).transpose()
    }

    /// One transfer.
    pub fn transfer(&self, id: &str) -> Result<Option<Transfer>, LedgerError> {
        self.transfers.get(id)?.map(|b| decode(&b)).transpose()
    }

    /// Opens an account; an identical request again is a replay, another body a conflict.
    pub fn create_account(&self, new: &NewAccount) -> Result<Applied<Account>, LedgerError> {
        new.validate()?;
        let account = Account::new(new);
        let bytes = encode(&account)?;
        match self
            .accounts
            .compare_and_swap(&new.id, None as Option<&[u8]>, Some(bytes))?
        {
            Ok(()) => Ok(Applied::Created(account)),
            Err(CompareAndSwapError { current, .. }) => {
                let stored: Account = decode(current.as_deref().unwrap_or_default())?;
                if stored.kind == new.kind && stored.allow_negative == new.allow_negative {
                    Ok(Applied::Replayed(stored))
                } else {
                    Err(LedgerError::AccountExists(new.id.clone()))
                }
            }
        }
    }

    /// Applies a new transfer (or answers a replay), atomically with its balances and index
    /// entries. Refusals change nothing.
    pub fn apply_transfer(
        &self,
        request: &NewTransfer,
        now: DateTime<Utc>,
    ) -> Result<Applied<Transfer>, LedgerError> {
        request.validate()?;
        let seq = self.store.db().generate_id()?;
        let trees = (&self.accounts, &self.transfers, &self.history, &self.expiry);
        let applied = trees.transaction(|(accounts, transfers, history, expiry)| {
            if let Some(bytes) = transfers.get(&request.id)? {
                let stored: Transfer = decode(&bytes).map_err(abort)?;
                return if stored.same_request(request) {
                    Ok(Applied::Replayed(stored))
                } else {
                    Err(abort(LedgerError::TransferExists(request.id.clone())))
                };
            }
            let mut debit = read_account(accounts, &request.debit_account)?;
            let mut credit = read_account(accounts, &request.credit_account)?;
            move_or_reserve(&mut debit, &mut credit, request.amount, request.pending)
                .map_err(abort)?;
            let transfer = new_transfer(request, seq, now);
            write(accounts, &debit.id, &debit)?;
            write(accounts, &credit.id, &credit)?;
            write(transfers, &transfer.id, &transfer)?;
            history.insert(history_key(&debit.id, seq), transfer.id.as_bytes())?;
            history.insert(history_key(&credit.id, seq), transfer.id.as_bytes())?;
            if let Some(expires_at) = transfer.expires_at {
                expiry.insert(expiry_key(expires_at, &transfer.id), &[])?;
            }
            Ok(Applied::Created(transfer))
        })?;
        Ok(applied)
    }

    /// Posts or voids a pending transfer. One whose timeout passed is released now, and the
    /// request is refused with [`LedgerError::TransferExpired`].
    pub fn settle(
        &self,
        id: &str,
        action: Settle,
        now: DateTime<Utc>,
    ) -> Result<Applied<Transfer>, LedgerError> {
        if action == Settle::Post(Some(0)) {
            return Err(LedgerError::InvalidField(
                "amount must be at least 1; void to release all".into(),
            ));
        }
        let trees = (&self.accounts, &self.transfers, &self.expiry);
        trees.transaction(|(accounts, transfers, expiry)| {
            let mut transfer = read_transfer(transfers, id)?;
            let decision = if is_due(&transfer, now) {
                Decision::Apply(TransferStatus::Expired, 0)
            } else {
                decide(&transfer, action)
            };
            match decision {
                Decision::Replay => Ok(Ok(Applied::Replayed(transfer))),
                Decision::Refuse(error) => Ok(Err(error)),
                Decision::Apply(status, posted) => {
                    release(accounts, expiry, &mut transfer, status, posted, now)?;
                    write(transfers, &transfer.id, &transfer)?;
                    if status == TransferStatus::Expired {
                        return Ok(Err(LedgerError::TransferExpired(transfer.id)));
                    }
                    Ok(Ok(Applied::Created(transfer)))
                }
            }
        })?
    }

    /// Releases up to `max` pending transfers whose timeout passed; answers how many.
    pub fn expire_due(&self, now: DateTime<Utc>, max: usize) -> Result<usize, LedgerError> {
        let end = (millis(now).saturating_add(1)).to_be_bytes();
        let due: Vec<sled::IVec> = self
            .expiry
            .range(..end.as_slice())
            .keys()
            .take(max)
            .collect::<Result<_, _>>()?;
        let mut expired = 0;
        for key in &due {
            let id = String::from_utf8_lossy(key.get(8..).unwrap_or_default()).into_owned();
            if self.expire_one(key, &id, now)? {
                expired += 1;
            }
        }
        Ok(expired)
    }

    fn expire_one(&self, key: &[u8], id: &str, now: DateTime<Utc>) -> Result<bool, LedgerError> {
        let trees = (&self.accounts, &self.transfers, &self.expiry);
        let expired = trees.transaction(|(accounts, transfers, expiry)| {
            let Some(bytes) = transfers.get(id)? else {
                expiry.remove(key)?;
                return Ok(false);
            };
            let mut transfer: Transfer = decode(&bytes).map_err(abort)?;
            if !is_due(&transfer, now) {
                expiry.remove(key)?;
                return Ok(false);
            }
            release(
                accounts,
                expiry,
                &mut transfer,
                TransferStatus::Expired,
                0,
                now,
            )?;
            write(transfers, &transfer.id, &transfer)?;
            Ok(true)
        })?;
        Ok(expired)
    }

    /// Up to `limit` of an account's transfers, newest first, older than `cursor`.
    pub fn history(
        &self,
        account: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<HistoryPage, LedgerError> {
        if self.accounts.get(account)?.is_none() {
            return Err(LedgerError::AccountNotFound(account.to_owned()));
        }
        let start = history_key(account, 0);
        let end = match cursor {
            Some(cursor) => history_key(account, decode_cursor(cursor)?),
            // Just past every key of this account: the separator plus one.
            None => [account.as_bytes(), &[HISTORY_SEPARATOR + 1]].concat(),
        };
        let mut transfers = Vec::with_capacity(limit.min(HISTORY_LIMIT_MAX));
        let mut next_cursor = None;
        for entry in self.history.range(start..end).rev() {
            let (_, id) = entry?;
            if transfers.len() == limit.min(HISTORY_LIMIT_MAX) {
                next_cursor = transfers.last().map(|t: &Transfer| encode_cursor(t.seq));
                break;
            }
            let id = String::from_utf8_lossy(&id).into_owned();
            let transfer = self
                .transfer(&id)?
                .ok_or(LedgerError::TransferNotFound(id))?;
            transfers.push(transfer);
        }
        Ok(HistoryPage {
            transfers,
            next_cursor,
        })
    }

    /// Recomputes every account's totals from the transfers and compares them with the stored
    /// ones. Reads everything: O(accounts + transfers). Exact only while nobody writes, which is
    /// why the Ledger actor runs it between two writes.
    pub fn audit(&self) -> Result<Audit, LedgerError> {
        let mut recomputed: HashMap<String, [u128; 4]> = HashMap::new();
        let mut transfers_checked = 0;
        for bytes in self.transfers.iter().values() {
            let transfer: Transfer = decode(&bytes?)?;
            add_to_recomputation(&mut recomputed, &transfer);
            transfers_checked += 1;
        }
        let mut audit = Audit {
            balanced: false,
            total_debits: 0,
            total_credits: 0,
            total_debits_pending: 0,
            total_credits_pending: 0,
            accounts_checked: 0,
            transfers_checked,
            violations: Vec::new(),
        };
        for bytes in self.accounts.iter().values() {
            let account: Account = decode(&bytes?)?;
            let expected = recomputed.remove(&account.id).unwrap_or_default();
            check_account(&mut audit, &account, expected);
        }
        for account in recomputed.into_keys() {
            audit.violations.push(Violation {
                kind: "unknown_account",
                message: format!("transfers name account `{account}`, which does not exist"),
                account,
            });
        }
        let history_entries = self.history.len();
        if history_entries != 2 * transfers_checked {
            audit.violations.push(Violation {
                account: String::new(),
                kind: "history_index",
                message: format!(
                    "{history_entries} history entries for {transfers_checked} transfers"
                ),
            });
        }
        audit.balanced = audit.violations.is_empty()
            && audit.total_debits == audit.total_credits
            && audit.total_debits_pending == audit.total_credits_pending;
        Ok(audit)
    }
}

/// Applies `amount` to both sides (posted, or reserved when `pending`), refusing to take a
/// limited account below zero or any total past `u64::MAX`.
fn move_or_reserve(
    debit: &mut Account,
    credit: &mut Account,
    amount: u64,
    pending: bool,
) -> Result<(), LedgerError> {
    if !debit.allow_negative && debit.available() < i128::from(amount) {
        return Err(LedgerError::InsufficientFunds {
            account: debit.id.clone(),
            available: debit.available(),
            amount,
        });
    }
    if pending {
        debit.debits_pending = add(debit.debits_pending, amount, &debit.id)?;
        credit.credits_pending = add(credit.credits_pending, amount, &credit.id)?;
    } else {
        debit.debits_posted = add(debit.debits_posted, amount, &debit.id)?;
        credit.credits_posted = add(credit.credits_posted, amount, &credit.id)?;
    }
    Ok(())
}

/// Releases a reservation of `reserved` and moves `posted` (≤ `reserved`) of it.
fn settle_totals(
    debit: &mut Account,
    credit: &mut Account,
    reserved: u64,
    posted: u64,
) -> Result<(), LedgerError> {
    debit.debits_pending = subtract(debit.debits_pending, reserved, &debit.id)?;
    credit.credits_pending = subtract(credit.credits_pending, reserved, &credit.id)?;
    debit.debits_posted = add(debit.debits_posted, posted, &debit.id)?;
    credit.credits_posted = add(credit.credits_posted, posted, &credit.id)?;
    Ok(())
}

fn add(total: u64, amount: u64, account: &str) -> Result<u64, LedgerError> {
    total
        .checked_add(amount)
        .ok_or_else(|| LedgerError::Overflow(account.to_owned()))
}

/// A pending total smaller than a reservation on it means the books are corrupt: refuse.
fn subtract(total: u64, amount: u64, account: &str) -> Result<u64, LedgerError> {
    total
        .checked_sub(amount)
        .ok_or_else(|| LedgerError::Overflow(account.to_owned()))
}

/// What a post or void of `transfer` (not yet due) does.
fn decide(transfer: &Transfer, action: Settle) -> Decision {
    let not_pending = || {
        Decision::Refuse(LedgerError::TransferNotPending {
            id: transfer.id.clone(),
            status: transfer.status,
        })
    };
    match (transfer.status, action) {
        (TransferStatus::Pending, Settle::Post(amount)) => {
            let amount = amount.unwrap_or(transfer.amount);
            if amount > transfer.amount {
                return Decision::Refuse(LedgerError::ExceedsPending {
                    id: transfer.id.clone(),
                    reserved: transfer.amount,
                    amount,
                });
            }
            Decision::Apply(TransferStatus::Posted, amount)
        }
        (TransferStatus::Pending, Settle::Void) => Decision::Apply(TransferStatus::Voided, 0),
        (TransferStatus::Posted, Settle::Post(amount))
            if transfer.pending && amount.unwrap_or(transfer.amount) == transfer.posted_amount =>
        {
            Decision::Replay
        }
        (TransferStatus::Voided, Settle::Void) => Decision::Replay,
        (TransferStatus::Expired, _) => {
            Decision::Refuse(LedgerError::TransferExpired(transfer.id.clone()))
        }
        _ => not_pending(),
    }
}

/// Settles a pending transfer inside a transaction: its two balances, its expiry entry, its
/// status. The caller writes the transfer.
fn release(
    accounts: &TransactionalTree,
    expiry: &TransactionalTree,
    transfer: &mut Transfer,
    status: TransferStatus,
    posted: u64,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    let mut debit = read_account(accounts, &transfer.debit_account)?;
    let mut credit = read_account(accounts, &transfer.credit_account)?;
    settle_totals(&mut debit, &mut credit, transfer.amount, posted).map_err(abort)?;
    write(accounts, &debit.id, &debit)?;
    write(accounts, &credit.id, &credit)?;
    if let Some(expires_at) = transfer.expires_at {
        expiry.remove(expiry_key(expires_at, &transfer.id))?;
    }
    transfer.status = status;
    transfer.posted_amount = posted;
    transfer.settled_at = Some(now);
    Ok(())
}

fn is_due(transfer: &Transfer, now: DateTime<Utc>) -> bool {
    transfer.status == TransferStatus::Pending && transfer.expires_at.is_some_and(|at| at <= now)
}

fn new_transfer(request: &NewTransfer, seq: u64, now: DateTime<Utc>) -> Transfer {
    let timeout = request
        .timeout_secs
        .and_then(|secs| i64::try_from(secs).ok())
        .map(ChronoDuration::seconds);
    Transfer {
        id: request.id.clone(),
        debit_account: request.debit_account.clone(),
        credit_account: request.credit_account.clone(),
        amount: request.amount,
        posted_amount: if request.pending { 0 } else { request.amount },
        code: request.code,
        memo: request.memo.clone(),
        pending: request.pending,
        timeout_secs: request.timeout_secs,
        parent_task: request.parent_task,
        status: if request.pending {
            TransferStatus::Pending
        } else {
            TransferStatus::Posted
        },
        seq,
        created_at: now,
        expires_at: timeout.and_then(|timeout| now.checked_add_signed(timeout)),
        settled_at: (!request.pending).then_some(now),
    }
}

/// Adds what `transfer` contributes to its two accounts' recomputed totals
/// (`[debits_posted, credits_posted, debits_pending, credits_pending]`).
fn add_to_recomputation(recomputed: &mut HashMap<String, [u128; 4]>, transfer: &Transfer) {
    let (amount, debit_slot, credit_slot) = match transfer.status {
        TransferStatus::Posted => (transfer.posted_amount, 0, 1),
        TransferStatus::Pending => (transfer.amount, 2, 3),
        TransferStatus::Voided | TransferStatus::Expired => return,
    };
    let amount = u128::from(amount);
    recomputed
        .entry(transfer.debit_account.clone())
        .or_default()[debit_slot] += amount;
    recomputed
        .entry(transfer.credit_account.clone())
        .or_default()[credit_slot] += amount;
}

/// Compares one account with its recomputation, checks its limit, and adds it to the totals.
fn check_account(audit: &mut Audit, account: &Account, expected: [u128; 4]) {
    let stored = [
        account.debits_posted,
        account.credits_posted,
        account.debits_pending,
        account.credits_pending,
    ]
    .map(u128::from);
    if stored != expected {
        audit.violations.push(Violation {
            account: account.id.clone(),
            kind: "balance_mismatch",
            message: format!(
                "stored [debits_posted, credits_posted, debits_pending, credits_pending] \
                 {stored:?}, recomputed {expected:?}"
            ),
        });
    }
    if !account.allow_negative && account.available() < 0 {
        audit.violations.push(Violation {
            account: account.id.clone(),
            kind: "below_limit",
            message: format!("available is {}", account.available()),
        });
    }
    audit.total_debits += stored[0];
    audit.total_credits += stored[1];
    audit.total_debits_pending += stored[2];
    audit.total_credits_pending += stored[3];
    audit.accounts_checked += 1;
}

fn read_account(accounts: &TransactionalTree, id: &str) -> Result<Account, TxError> {
    let bytes = accounts
        .get(id)?
        .ok_or_else(|| abort(LedgerError::AccountNotFound(id.to_owned())))?;
    decode(&bytes).map_err(abort)
}

fn read_transfer(transfers: &TransactionalTree, id: &str) -> Result<Transfer, TxError> {
    let bytes = transfers
        .get(id)?
        .ok_or_else(|| abort(LedgerError::TransferNotFound(id.to_owned())))?;
    decode(&bytes).map_err(abort)
}

fn write(tree: &TransactionalTree, key: &str, value: &impl Serialize) -> Result<(), TxError> {
    tree.insert(key.as_bytes(), encode(value).map_err(abort)?)?;
    Ok(())
}

fn abort(error: impl Into<LedgerError>) -> TxError {
    ConflictableTransactionError::Abort(error.into())
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, LedgerError> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LedgerError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn history_key(account: &str, seq: u64) -> Vec<u8> {
    [account.as_bytes(), &[HISTORY_SEPARATOR], &seq.to_be_bytes()].concat()
}

fn millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

fn expiry_key(expires_at: DateTime<Utc>, id: &str) -> Vec<u8> {
    [millis(expires_at).to_be_bytes().as_slice(), id.as_bytes()].concat()
}

/// Cursors are opaque to clients: the seq of the last transfer served, in hex.
fn encode_cursor(seq: u64) -> String {
    format!("{seq:016x}")
}

fn decode_cursor(cursor: &str) -> Result<u64, LedgerError> {
    if cursor.len() != 16 {
        return Err(LedgerError::InvalidField("cursor is not valid".into()));
    }
    u64::from_str_radix(cursor, 16)
        .map_err(|_| LedgerError::InvalidField("cursor is not valid".into()))
}

#[cfg(test)]
mod tests;
