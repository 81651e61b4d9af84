//! The books, as records of the store. Writes are jobs on the store's writer ([`Batch`]), reads
//! run on a [`Snapshot`]; only the store calls sled.
//!
//! Tables (of the service's one database):
//! - `LedgerAccounts`: account id → account JSON (with its four running totals);
//! - `LedgerTransfers`: transfer id → transfer JSON;
//! - `LedgerHistory`: account id ++ `0x00` ++ seq (8 bytes, big-endian) → transfer id. Ids never
//!   hold `0x00`, so a prefix scan gives one account's transfers in creation order;
//! - `LedgerExpiry`: expiry time (ms since the epoch, 8 bytes, big-endian) ++ transfer id → empty:
//!   the pending transfers that have a timeout, soonest first.
//!
//! Every write is one writer job staging the transfer, the balances it touches, its history
//! entries and its expiry entry: the group commit holds all of it or none, and a refused request
//! stages nothing. The writer is the only writer, so a balance read in a job is the balance the
//! job's write replaces: no lost update, no transaction retry.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::ledger::Settle;
use crate::model::ledger::{
    Account, Applied, Audit, HistoryPage, LedgerError, NewAccount, NewTransfer, Transfer,
    TransferStatus, Violation,
};
use crate::storage::store::{Batch, Snapshot, Store, Table};

/// Most transfers one history page may hold.
pub(crate) const HISTORY_LIMIT_MAX: usize = 500;
/// Separates an account id from the seq in a history key; never part of an id.
const HISTORY_SEPARATOR: u8 = 0;

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

/// Reads of the books; cheap to clone. Writes are the free functions below, run as writer jobs
/// (by the Ledger actor, their one caller).
#[derive(Clone)]
pub(crate) struct Book {
    store: Store,
}

impl Book {
    /// The books of `store`'s database.
    pub(crate) fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// One account.
    pub(crate) async fn account(&self, id: &str) -> Result<Option<Account>, LedgerError> {
        let id = id.to_owned();
        self.store
            .read(move |snapshot| Ok(snapshot.record(Table::LedgerAccounts, id.as_bytes())?))
            .await
    }

    /// One transfer.
    pub(crate) async fn transfer(&self, id: &str) -> Result<Option<Transfer>, LedgerError> {
        let id = id.to_owned();
        self.store
            .read(move |snapshot| Ok(snapshot.record(Table::LedgerTransfers, id.as_bytes())?))
            .await
    }

    /// The pending transfers of code `code` whose id starts with `prefix` (a scan of that
    /// prefix: for start-up, not for requests).
    pub(crate) async fn pending_with_prefix(
        &self,
        prefix: &str,
        code: u16,
    ) -> Result<Vec<Transfer>, LedgerError> {
        let prefix = prefix.to_owned();
        self.store
            .read(move |snapshot| {
                let mut found = Vec::new();
                for bytes in snapshot
                    .scan_prefix(Table::LedgerTransfers, prefix.as_bytes())
                    .values()
                {
                    let transfer: Transfer = decode(&bytes?)?;
                    if transfer.status == TransferStatus::Pending && transfer.code == code {
                        found.push(transfer);
                    }
                }
                Ok(found)
            })
            .await
    }

    /// Up to `limit` of an account's transfers, newest first, older than `cursor`.
    pub(crate) async fn history(
        &self,
        account: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<HistoryPage, LedgerError> {
        let account = account.to_owned();
        let cursor = cursor.map(str::to_owned);
        self.store
            .read(move |snapshot| history(snapshot, &account, limit, cursor.as_deref()))
            .await
    }
}

/// Opens an account; an identical request again is a replay, another body a conflict.
pub(crate) fn create_account(
    batch: &mut Batch<'_>,
    new: &NewAccount,
) -> Result<Applied<Account>, LedgerError> {
    new.validate()?;
    if let Some(stored) = batch.record::<Account>(Table::LedgerAccounts, new.id.as_bytes())? {
        return if stored.kind == new.kind && stored.allow_negative == new.allow_negative {
            Ok(Applied::Replayed(stored))
        } else {
            Err(LedgerError::AccountExists(new.id.clone()))
        };
    }
    let account = Account::new(new);
    put(batch, Table::LedgerAccounts, &account.id, &account)?;
    Ok(Applied::Created(account))
}

/// Applies a new transfer (or answers a replay) with its balances and index entries. Refusals
/// stage nothing.
pub(crate) fn apply_transfer(
    batch: &mut Batch<'_>,
    request: &NewTransfer,
    now: DateTime<Utc>,
) -> Result<Applied<Transfer>, LedgerError> {
    request.validate()?;
    if let Some(stored) = batch.record::<Transfer>(Table::LedgerTransfers, request.id.as_bytes())? {
        return if stored.same_request(request) {
            Ok(Applied::Replayed(stored))
        } else {
            Err(LedgerError::TransferExists(request.id.clone()))
        };
    }
    let mut debit = read_account(batch, &request.debit_account)?;
    let mut credit = read_account(batch, &request.credit_account)?;
    #[cfg(debug_assertions)]
    let before = (debit.clone(), credit.clone());
    move_or_reserve(&mut debit, &mut credit, request.amount, request.pending)?;
    #[cfg(debug_assertions)]
    debug_assert!(
        double_entry_holds(&before, (&debit, &credit)),
        "transfer {} moved unequal amounts",
        request.id
    );
    let seq = batch.generate_id()?;
    let transfer = new_transfer(request, seq, now);
    put(batch, Table::LedgerAccounts, &debit.id, &debit)?;
    put(batch, Table::LedgerAccounts, &credit.id, &credit)?;
    put(batch, Table::LedgerTransfers, &transfer.id, &transfer)?;
    let id = transfer.id.as_bytes().to_vec();
    batch.insert(
        Table::LedgerHistory,
        history_key(&debit.id, seq),
        id.clone(),
    );
    batch.insert(Table::LedgerHistory, history_key(&credit.id, seq), id);
    if let Some(expires_at) = transfer.expires_at {
        batch.insert(
            Table::LedgerExpiry,
            expiry_key(expires_at, &transfer.id),
            Vec::new(),
        );
    }
    Ok(Applied::Created(transfer))
}

/// Most expired transfers released per job, so a backlog never holds the writer long.
pub(crate) const EXPIRE_BATCH_MAX: usize = 256;

/// Opens `account` (a replay if it exists alike) and applies `request` in one job: a refused
/// transfer leaves no account behind, since the job's `Err` stages nothing.
pub(crate) fn open_and_transfer(
    batch: &mut Batch<'_>,
    account: &NewAccount,
    request: &NewTransfer,
    now: DateTime<Utc>,
) -> Result<Applied<Transfer>, LedgerError> {
    create_account(batch, account)?;
    apply_transfer(batch, request, now)
}

/// Posts or voids a pending transfer. One whose timeout passed is released now (the outer `Ok`:
/// that release is written), and the request is refused with [`LedgerError::TransferExpired`]
/// (the inner `Err`). An outer `Err` stages nothing.
pub(crate) fn settle(
    batch: &mut Batch<'_>,
    id: &str,
    action: Settle,
    now: DateTime<Utc>,
) -> Result<Result<Applied<Transfer>, LedgerError>, LedgerError> {
    if action == Settle::Post(Some(0)) {
        return Err(LedgerError::InvalidField(
            "amount must be at least 1; void to release all".into(),
        ));
    }
    let mut transfer = batch
        .record::<Transfer>(Table::LedgerTransfers, id.as_bytes())?
        .ok_or_else(|| LedgerError::TransferNotFound(id.to_owned()))?;
    let decision = if is_due(&transfer, now) {
        Decision::Apply(TransferStatus::Expired, 0)
    } else {
        decide(&transfer, action)
    };
    match decision {
        Decision::Replay => Ok(Ok(Applied::Replayed(transfer))),
        Decision::Refuse(error) => Err(error),
        Decision::Apply(status, posted) => {
            release(batch, &mut transfer, status, posted, now)?;
            put(batch, Table::LedgerTransfers, &transfer.id, &transfer)?;
            if status == TransferStatus::Expired {
                return Ok(Err(LedgerError::TransferExpired(transfer.id)));
            }
            Ok(Ok(Applied::Created(transfer)))
        }
    }
}

/// Releases up to `max` pending transfers whose timeout passed; answers how many.
pub(crate) fn expire_due(
    batch: &mut Batch<'_>,
    now: DateTime<Utc>,
    max: usize,
) -> Result<usize, LedgerError> {
    let end = (millis(now).saturating_add(1)).to_be_bytes();
    let due = batch.keys_in(Table::LedgerExpiry, &[], &end, max)?;
    let mut expired = 0;
    for key in &due {
        let id = String::from_utf8_lossy(key.get(8..).unwrap_or_default()).into_owned();
        match batch.record::<Transfer>(Table::LedgerTransfers, id.as_bytes())? {
            Some(mut transfer) if is_due(&transfer, now) => {
                release(batch, &mut transfer, TransferStatus::Expired, 0, now)?;
                put(batch, Table::LedgerTransfers, &transfer.id, &transfer)?;
                expired += 1;
            }
            _ => batch.remove(Table::LedgerExpiry, key.clone()),
        }
    }
    Ok(expired)
}

fn history(
    snapshot: &Snapshot<'_>,
    account: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<HistoryPage, LedgerError> {
    if !snapshot.contains(Table::LedgerAccounts, account.as_bytes())? {
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
    for entry in snapshot.range(Table::LedgerHistory, start..end).rev() {
        let (_, id) = entry?;
        if transfers.len() == limit.min(HISTORY_LIMIT_MAX) {
            next_cursor = transfers.last().map(|t: &Transfer| encode_cursor(t.seq));
            break;
        }
        let id = String::from_utf8_lossy(&id).into_owned();
        let transfer = snapshot
            .record(Table::LedgerTransfers, id.as_bytes())?
            .ok_or(LedgerError::TransferNotFound(id))?;
        transfers.push(transfer);
    }
    Ok(HistoryPage {
        transfers,
        next_cursor,
    })
}

/// Recomputes every account's totals from the transfers and compares them with the stored ones.
/// Reads everything: O(accounts + transfers). Exact only on a state nobody writes meanwhile,
/// which is why it runs as a writer job on [`Batch::committed`].
pub(crate) fn audit(snapshot: &Snapshot<'_>) -> Result<Audit, LedgerError> {
    let mut recomputed: HashMap<String, [u128; 4]> = HashMap::new();
    let mut transfers_checked = 0;
    for bytes in snapshot.iter(Table::LedgerTransfers).values() {
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
    for bytes in snapshot.iter(Table::LedgerAccounts).values() {
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
    let history_entries = snapshot.len(Table::LedgerHistory);
    if history_entries != 2 * transfers_checked {
        audit.violations.push(Violation {
            account: String::new(),
            kind: "history_index",
            message: format!("{history_entries} history entries for {transfers_checked} transfers"),
        });
    }
    audit.balanced = audit.violations.is_empty()
        && audit.total_debits == audit.total_credits
        && audit.total_debits_pending == audit.total_credits_pending;
    Ok(audit)
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

/// Double entry, checked in debug builds after every change of two accounts' totals: what the
/// debit side gained in debits equals what the credit side gained in credits, posted and pending
/// alike, and an account that may not go negative did not.
#[cfg(debug_assertions)]
fn double_entry_holds(before: &(Account, Account), after: (&Account, &Account)) -> bool {
    let delta = |a: u64, b: u64| i128::from(b) - i128::from(a);
    let (debit_before, credit_before) = before;
    let (debit, credit) = after;
    let posted = delta(debit_before.debits_posted, debit.debits_posted)
        == delta(credit_before.credits_posted, credit.credits_posted);
    let pending = delta(debit_before.debits_pending, debit.debits_pending)
        == delta(credit_before.credits_pending, credit.credits_pending);
    let covered = debit.allow_negative
        || debit.available() >= 0
        || debit.available() >= debit_before.available();
    posted && pending && covered
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

/// Settles a pending transfer: its two balances, its expiry entry, its status. The caller writes
/// the transfer.
fn release(
    batch: &mut Batch<'_>,
    transfer: &mut Transfer,
    status: TransferStatus,
    posted: u64,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    let mut debit = read_account(batch, &transfer.debit_account)?;
    let mut credit = read_account(batch, &transfer.credit_account)?;
    #[cfg(debug_assertions)]
    let before = (debit.clone(), credit.clone());
    settle_totals(&mut debit, &mut credit, transfer.amount, posted)?;
    #[cfg(debug_assertions)]
    debug_assert!(
        double_entry_holds(&before, (&debit, &credit)),
        "settling {} moved unequal amounts",
        transfer.id
    );
    put(batch, Table::LedgerAccounts, &debit.id, &debit)?;
    put(batch, Table::LedgerAccounts, &credit.id, &credit)?;
    if let Some(expires_at) = transfer.expires_at {
        batch.remove(Table::LedgerExpiry, expiry_key(expires_at, &transfer.id));
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

fn read_account(batch: &Batch<'_>, id: &str) -> Result<Account, LedgerError> {
    batch
        .record(Table::LedgerAccounts, id.as_bytes())?
        .ok_or_else(|| LedgerError::AccountNotFound(id.to_owned()))
}

fn put(
    batch: &mut Batch<'_>,
    table: Table,
    id: &str,
    value: &impl Serialize,
) -> Result<(), LedgerError> {
    batch.insert(table, id.as_bytes(), encode(value)?);
    Ok(())
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

/// The book's write rules as awaitable calls, each one writer job: for tests that drive the
/// rules without the Ledger actor.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A [`Book`] plus its writes.
    pub(crate) struct Books {
        store: Store,
        book: Book,
    }

    impl Books {
        pub(crate) fn new(store: &Store) -> Self {
            Self {
                store: store.clone(),
                book: Book::new(store),
            }
        }

        pub(crate) async fn create_account(
            &self,
            new: &NewAccount,
        ) -> Result<Applied<Account>, LedgerError> {
            let new = new.clone();
            self.store.write(move |b| create_account(b, &new)).await
        }

        pub(crate) async fn apply_transfer(
            &self,
            request: &NewTransfer,
            now: DateTime<Utc>,
        ) -> Result<Applied<Transfer>, LedgerError> {
            let request = request.clone();
            self.store
                .write(move |b| apply_transfer(b, &request, now))
                .await
        }

        pub(crate) async fn settle(
            &self,
            id: &str,
            action: Settle,
            now: DateTime<Utc>,
        ) -> Result<Applied<Transfer>, LedgerError> {
            let id = id.to_owned();
            self.store
                .write(move |b| settle(b, &id, action, now))
                .await
                .and_then(|inner| inner)
        }

        pub(crate) async fn expire_due(
            &self,
            now: DateTime<Utc>,
            max: usize,
        ) -> Result<usize, LedgerError> {
            self.store.write(move |b| expire_due(b, now, max)).await
        }

        pub(crate) async fn audit(&self) -> Result<Audit, LedgerError> {
            self.store.write(|b| audit(&b.committed())).await
        }

        /// Overwrites a stored account, rules bypassed: how a test tampers with the books.
        pub(crate) async fn overwrite_account(&self, account: &Account) -> Result<(), LedgerError> {
            let account = account.clone();
            self.store
                .write(move |b| put(b, Table::LedgerAccounts, &account.id, &account))
                .await
        }

        pub(crate) async fn account(&self, id: &str) -> Result<Option<Account>, LedgerError> {
            self.book.account(id).await
        }

        pub(crate) async fn transfer(&self, id: &str) -> Result<Option<Transfer>, LedgerError> {
            self.book.transfer(id).await
        }

        pub(crate) async fn history(
            &self,
            account: &str,
            limit: usize,
            cursor: Option<&str>,
        ) -> Result<HistoryPage, LedgerError> {
            self.book.history(account, limit, cursor).await
        }
    }
}
