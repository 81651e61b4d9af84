//! The token ledger's books: accounts, transfers and their rules, modelled on TigerBeetle.
//!
//! - Double entry: every transfer debits one account and credits another by the same amount, so
//!   the sum of all debits always equals the sum of all credits.
//! - Integer amounts in micro-tokens (`u64`); account totals are `u64` with checked arithmetic, so
//!   an overflow is refused ([`LedgerError::Overflow`]) instead of wrapping.
//! - Transfer ids are chosen by the caller: the same id with the same body is a replay answered
//!   with the original, with another body a conflict. Retries are therefore always safe.
//! - Balance limits are enforced here, not by callers: an account without `allow_negative` never
//!   has `available` (credits posted − debits posted − debits pending) below zero.
//! - Two-phase transfers: a pending transfer reserves funds (`debits_pending`/`credits_pending`);
//!   posting moves at most the reserved amount and releases the rest; voiding, or the timeout,
//!   releases all of it.
//!
//! [`crate::storage::ledger`] holds the books in the store; the Ledger actor
//! ([`crate::actors::ledger`]) is their only writer, and [`crate::app::cli::ledger`] is
//! `glitchlab ledger ...` against a running service.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::codes;
use crate::model::persona::Persona;
use crate::model::task::{EngineRun, Stage, TaskId};

/// Longest account or transfer id, in bytes: ids are sled keys and URL path segments.
pub const ID_BYTES_MAX: usize = 128;
/// Longest memo, in bytes.
pub const MEMO_BYTES_MAX: usize = 512;
/// Longest pending timeout a transfer may ask for (30 days): a reservation must end some day.
pub const PENDING_TIMEOUT_SECS_MAX: u64 = 30 * 24 * 60 * 60;
/// Where minted tokens come from; the only built-in account that may go negative.
pub const MINT_ACCOUNT: &str = "system:mint";
/// Where spent tokens end up when nobody in particular earned them.
pub const REVENUE_ACCOUNT: &str = "system:revenue";
/// Transfer `code` of a mint (`system:mint` → an account).
pub const CODE_MINT: u16 = 1;

/// The account a persona earns into: `agent:<persona>`.
pub fn agent_account(persona: &str) -> String {
    format!("agent:{persona}")
}

/// Fixed id of the transfer that funds the local account on first start, so that funding
/// happens once however often the service starts.
pub fn local_funding_transfer_id(account: &str) -> String {
    format!("genesis:{account}")
}

/// The accounts every install has: `system:mint` (the only one allowed below zero),
/// `system:revenue`, one `agent:<persona>` per persona, and the local user account.
pub fn builtin_accounts(config: &LedgerConfig) -> Vec<NewAccount> {
    let account = |id: String, kind, allow_negative| NewAccount {
        id,
        kind,
        allow_negative,
    };
    let mut accounts = vec![
        account(MINT_ACCOUNT.to_owned(), AccountKind::System, true),
        account(REVENUE_ACCOUNT.to_owned(), AccountKind::System, false),
    ];
    for persona in Persona::ALL {
        accounts.push(account(
            agent_account(persona.name()),
            AccountKind::Agent,
            false,
        ));
    }
    accounts.push(account(
        config.local_account.clone(),
        AccountKind::User,
        false,
    ));
    accounts
}

/// Settings of the ledger: the `[ledger]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The account a default install funds, so the service works out of the box.
    pub local_account: String,
    /// What `local_account` is minted on first start, in micro-tokens (0: not funded).
    pub local_funding: u64,
    /// How often the Ledger voids pending transfers past their timeout.
    pub expiry_scan_interval_ms: u64,
    /// What a task reserves when its submission names no `budget.max_cost`, in micro-tokens.
    pub default_task_budget: u64,
    /// Prices of engine runs, tokens and deploys.
    pub rates: RateCard,
    /// How often Uplink-Watch charges the command seconds its checks ran, per app, in one
    /// transfer (a transfer per check run would be one every few seconds).
    pub watch_billing_interval_secs: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            local_account: "user:local".to_owned(),
            local_funding: 1_000_000_000,
            expiry_scan_interval_ms: 1000,
            default_task_budget: 10_000_000,
            rates: RateCard::default(),
            watch_billing_interval_secs: 60,
        }
    }
}

/// What an account is for; it changes nothing in the rules, it says whose money it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A human (or an API client) paying for work.
    User,
    /// A persona earning for the work it does.
    Agent,
    /// A project's budget.
    Project,
    /// The ledger's own accounts (`system:mint`, `system:revenue`).
    System,
}

/// An account as stored: its identity, its limit and its four running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Caller-chosen id, e.g. `user:alice`.
    pub id: String,
    /// Whose it is.
    pub kind: AccountKind,
    /// Whether `available` may go below zero (only `system:mint` by default).
    pub allow_negative: bool,
    /// Sum of posted transfers debiting it.
    pub debits_posted: u64,
    /// Sum of posted transfers crediting it.
    pub credits_posted: u64,
    /// Sum of pending transfers debiting it (reserved, not yet moved).
    pub debits_pending: u64,
    /// Sum of pending transfers crediting it.
    pub credits_pending: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Account {
    /// A fresh account with zero totals.
    pub fn new(new: &NewAccount) -> Self {
        Self {
            id: new.id.clone(),
            kind: new.kind,
            allow_negative: new.allow_negative,
            debits_posted: 0,
            credits_posted: 0,
            debits_pending: 0,
            credits_pending: 0,
            created_at: Utc::now(),
        }
    }

    /// Credits posted minus debits posted.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// Balance minus pending debits: what the account can still spend.
    pub fn available(&self) -> i128 {
        self.balance() - i128::from(self.debits_pending)
    }

    /// The served shape, with the derived `balance` and `available`.
    pub fn view(&self) -> AccountView {
        AccountView {
            id: self.id.clone(),
            kind: self.kind,
            allow_negative: self.allow_negative,
            debits_posted: self.debits_posted,
            credits_posted: self.credits_posted,
            debits_pending: self.debits_pending,
            credits_pending: self.credits_pending,
            balance: self.balance(),
            available: self.available(),
            created_at: self.created_at,
        }
    }
}

/// An account as served over HTTP: the stored totals plus `balance` and `available`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountView {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: AccountKind,
    /// Whether it may go negative.
    pub allow_negative: bool,
    /// Posted debits.
    pub debits_posted: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// Reserved debits.
    pub debits_pending: u64,
    /// Reserved credits.
    pub credits_pending: u64,
    /// `credits_posted - debits_posted`.
    pub balance: i128,
    /// `balance - debits_pending`.
    pub available: i128,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A request to open an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Caller-chosen id (`[A-Za-z0-9:_.@-]`, 1..=128 bytes: `ID_BYTES_MAX`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub id: String,
    /// Whose it is.
    pub kind: AccountKind,
    /// Whether it may go below zero (default false).
    #[serde(default)]
    pub allow_negative: bool,
}

impl NewAccount {
    /// Refuses a malformed id.
    pub fn validate(&self) -> Result<(), LedgerError> {
        validate_id("id", &self.id)
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Reserved; waiting for a post or a void.
    Pending,
    /// Moved (`posted_amount` of it, for a posted pending transfer).
    Posted,
    /// Released by a void.
    Voided,
    /// Released because its timeout passed.
    Expired,
}

/// A request to move tokens. Two requests with the same `id` are the same transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTransfer {
    /// Caller-chosen idempotency id (`[A-Za-z0-9:_.@-]`, 1..=128 bytes: `ID_BYTES_MAX`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub id: String,
    /// The account that pays.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub debit_account: String,
    /// The account that receives.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub credit_account: String,
    /// Micro-tokens, at least 1.
    #[schema(minimum = 1)]
    pub amount: u64,
    /// Why (an application-defined reason code, non-zero; [`CODE_MINT`] is reserved for mints).
    pub code: u16,
    /// Free text for people reading the books.
    #[serde(default)]
    pub memo: Option<String>,
    /// Reserve instead of moving; settle later with post or void.
    #[serde(default)]
    pub pending: bool,
    /// A pending transfer voids itself this long after creation (none: never).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The task this money is for, if any.
    #[serde(default)]
    pub parent_task: Option<TaskId>,
}

impl NewTransfer {
    /// A transfer that moves `amount` at once.
    pub fn posted(id: &str, debit: &str, credit: &str, amount: u64, code: u16) -> Self {
        Self {
            id: id.to_owned(),
            debit_account: debit.to_owned(),
            credit_account: credit.to_owned(),
            amount,
            code,
            memo: None,
            pending: false,
            timeout_secs: None,
            parent_task: None,
        }
    }

    /// A transfer that reserves `amount` until posted, voided or `timeout_secs` passes.
    pub fn reserve(
        id: &str,
        debit: &str,
        credit: &str,
        amount: u64,
        code: u16,
        timeout_secs: Option<u64>,
    ) -> Self {
        Self {
            pending: true,
            timeout_secs,
            ..Self::posted(id, debit, credit, amount, code)
        }
    }

    /// Refuses malformed fields before anything is read or written.
    pub fn validate(&self) -> Result<(), LedgerError> {
        validate_id("id", &self.id)?;
        validate_id("debit_account", &self.debit_account)?;
        validate_id("credit_account", &self.credit_account)?;
        if self.debit_account == self.credit_account {
            return Err(invalid("debit_account and credit_account must differ"));
        }
        if self.amount == 0 {
            return Err(invalid("amount must be at least 1"));
        }
        if self.code == 0 {
            return Err(invalid("code must be non-zero"));
        }
        if self.memo.as_ref().is_some_and(|m| m.len() > MEMO_BYTES_MAX) {
            return Err(invalid(format!(
                "memo is longer than {MEMO_BYTES_MAX} bytes"
            )));
        }
        match self.timeout_secs {
            Some(_) if !self.pending => Err(invalid("timeout_secs needs pending: true")),
            Some(0) => Err(invalid("timeout_secs must be at least 1")),
            Some(secs) if secs > PENDING_TIMEOUT_SECS_MAX => Err(invalid(format!(
                "timeout_secs must be at most {PENDING_TIMEOUT_SECS_MAX}"
            ))),
            _ => Ok(()),
        }
    }
}

/// A transfer as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    /// Caller-chosen id.
    pub id: String,
    /// The account that pays.
    pub debit_account: String,
    /// The account that receives.
    pub credit_account: String,
    /// Requested (for a pending transfer: reserved) micro-tokens.
    pub amount: u64,
    /// What actually moved: `amount` for a plain transfer, the posted amount for a settled
    /// pending one, 0 while pending or after a void or expiry.
    pub posted_amount: u64,
    /// Reason code.
    pub code: u16,
    /// Free text.
    pub memo: Option<String>,
    /// Whether it was created as a two-phase transfer.
    pub pending: bool,
    /// Its timeout, as requested.
    pub timeout_secs: Option<u64>,
    /// The task it is for.
    pub parent_task: Option<TaskId>,
    /// Where it stands.
    pub status: TransferStatus,
    /// Order of creation across the ledger (strictly increasing, not contiguous).
    pub seq: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a pending transfer voids itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was posted, voided or expired (for a plain transfer: its creation).
    pub settled_at: Option<DateTime<Utc>>,
}

impl Transfer {
    /// Whether `request` is the same transfer as this one (so it is a replay, not a conflict).
    pub fn same_request(&self, request: &NewTransfer) -> bool {
        self.debit_account == request.debit_account
            && self.credit_account == request.credit_account
            && self.amount == request.amount
            && self.code == request.code
            && self.memo == request.memo
            && self.pending == request.pending
            && self.timeout_secs == request.timeout_secs
            && self.parent_task == request.parent_task
    }
}

/// A write's outcome: new, or the replay of an identical earlier request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// It was applied now.
    Created(T),
    /// It had been applied before; this is the stored record.
    Replayed(T),
}

impl<T> Applied<T> {
    /// The record, either way.
    pub fn into_inner(self) -> T {
        match self {
            Self::Created(value) | Self::Replayed(value) => value,
        }
    }

    /// Whether it was a replay.
    pub fn is_replay(&self) -> bool {
        matches!(self, Self::Replayed(_))
    }
}

/// One page of an account's history, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryPage {
    /// Up to `limit` transfers.
    pub transfers: Vec<Transfer>,
    /// Pass back as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One thing the audit found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Violation {
    /// The account concerned (or the transfer, for a dangling reference).
    pub account: String,
    /// `balance_mismatch`, `below_limit`, `unknown_account`.
    pub kind: &'static str,
    /// What exactly.
    pub message: String,
}

/// The result of recomputing every balance from the transfers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Audit {
    /// No violations and total debits equal total credits (posted and pending).
    pub balanced: bool,
    /// Sum of every account's posted debits.
    pub total_debits: u128,
    /// Sum of every account's posted credits.
    pub total_credits: u128,
    /// Sum of every account's pending debits.
    pub total_debits_pending: u128,
    /// Sum of every account's pending credits.
    pub total_credits_pending: u128,
    /// Accounts compared with their recomputation.
    pub accounts_checked: usize,
    /// Transfers replayed.
    pub transfers_checked: usize,
    /// What is wrong, if anything.
    pub violations: Vec<Violation>,
}

/// Why the ledger refused or failed a request. Each variant has a stable [`LedgerError::code`].
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A field is malformed or out of range.
    #[error("{0}")]
    InvalidField(String),
    /// No such account.
    #[error("no account `{0}`")]
    AccountNotFound(String),
    /// The account id is taken, with another kind or limit.
    #[error("account `{0}` exists with a different kind or allow_negative")]
    AccountExists(String),
    /// No such transfer.
    #[error("no transfer `{0}`")]
    TransferNotFound(String),
    /// The transfer id is taken by a different request.
    #[error("transfer `{0}` exists with a different body")]
    TransferExists(String),
    /// The debit account cannot cover the amount; nothing changed.
    #[error("account `{account}` has {available} available, {amount} needed")]
    InsufficientFunds {
        /// The debit account.
        account: String,
        /// What it had available.
        available: i128,
        /// What was asked.
        amount: u64,
    },
    /// A post or void of a transfer that is not pending.
    #[error("transfer `{id}` is {status:?}, not pending")]
    TransferNotPending {
        /// The transfer.
        id: String,
        /// Its status.
        status: TransferStatus,
    },
    /// A post or void of a pending transfer whose timeout passed; it has been released.
    #[error("pending transfer `{0}` expired and was released")]
    TransferExpired(String),
    /// A post for more than the reserved amount.
    #[error("transfer `{id}` reserved {reserved}; cannot post {amount}")]
    ExceedsPending {
        /// The transfer.
        id: String,
        /// What it reserved.
        reserved: u64,
        /// What was asked.
        amount: u64,
    },
    /// An account total would overflow `u64`.
    #[error("account `{0}` would overflow its totals")]
    Overflow(String),
    /// The Ledger is down or did not answer.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode.
    #[error("stored ledger record is not valid: {0}")]
    Codec(#[from] serde_json::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::model::errors::StoreError),
}

impl LedgerError {
    /// The stable error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidField(_) => codes::INVALID_FIELD,
            Self::AccountNotFound(_) => codes::ACCOUNT_NOT_FOUND,
            Self::AccountExists(_) => codes::ACCOUNT_EXISTS,
            Self::TransferNotFound(_) => codes::TRANSFER_NOT_FOUND,
            Self::TransferExists(_) => codes::TRANSFER_EXISTS,
            Self::InsufficientFunds { .. } => codes::INSUFFICIENT_FUNDS,
            Self::TransferNotPending { .. } => codes::TRANSFER_NOT_PENDING,
            Self::TransferExpired(_) => codes::TRANSFER_EXPIRED,
            Self::ExceedsPending { .. } => codes::EXCEEDS_PENDING_AMOUNT,
            Self::Overflow(_) => codes::AMOUNT_OVERFLOW,
            Self::Unavailable(_) => codes::PERSONA_UNAVAILABLE,
            Self::Store(error) => error.code(),
            Self::Codec(_) => codes::INTERNAL,
        }
    }
}

/// An [`LedgerError::InvalidField`].
fn invalid(message: impl Into<String>) -> LedgerError {
    LedgerError::InvalidField(message.into())
}

/// Ids are sled keys and URL path segments: short, and from a small alphabet without `/`.
pub fn validate_id(field: &str, id: &str) -> Result<(), LedgerError> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(invalid(format!(
            "{field} must be 1 to {ID_BYTES_MAX} bytes"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-');
    if !id.chars().all(allowed) {
        return Err(invalid(format!(
            "{field} may only hold letters, digits and `:_.@-`"
        )));
    }
    Ok(())
}

/// Prices, in micro-tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateCard {
    /// Per 1,000 input tokens, by model (for model-backed engines).
    pub input_per_1k_tokens: BTreeMap<String, u64>,
    /// Per 1,000 output tokens, by model.
    pub output_per_1k_tokens: BTreeMap<String, u64>,
    /// Per second of a `shell` engine run (charged per started second).
    pub shell_per_second: u64,
    /// Per `builtin` engine run.
    pub builtin_per_run: u64,
    /// Per verify run, on top of its seconds.
    pub verify_per_run: u64,
    /// Per deploy.
    pub deploy: u64,
}

impl Default for RateCard {
    fn default() -> Self {
        Self {
            input_per_1k_tokens: BTreeMap::new(),
            output_per_1k_tokens: BTreeMap::new(),
            shell_per_second: 1_000,
            builtin_per_run: 100,
            verify_per_run: 500,
            deploy: 10_000,
        }
    }
}

impl RateCard {
    /// What one engine run costs.
    pub fn run_cost(&self, run: &EngineRun) -> u64 {
        let seconds_started = run.duration_ms.div_ceil(1000).max(1);
        let engine = match run.engine.as_str() {
            "builtin" => self.builtin_per_run,
            "openai" => self.token_cost(run),
            _ => self.shell_per_second.saturating_mul(seconds_started),
        };
        let verify = if run.stage == Stage::Verify {
            self.verify_per_run
        } else {
            0
        };
        engine.saturating_add(verify)
    }
}

impl RateCard {
    /// Model tokens priced per 1,000 by the model named in the run's `command`
    /// (`openai:<provider>/<model>`); a model without a price costs nothing.
    fn token_cost(&self, run: &EngineRun) -> u64 {
        let (Some(tokens), Some(command)) = (run.tokens, run.command.as_deref()) else {
            return 0;
        };
        let model = command
            .rsplit_once('/')
            .map(|(_, model)| model)
            .unwrap_or(command);
        let price = |table: &BTreeMap<String, u64>, count: u64| {
            table
                .get(model)
                .map_or(0, |per_1k| per_1k.saturating_mul(count).div_ceil(1000))
        };
        price(&self.input_per_1k_tokens, tokens.input)
            .saturating_add(price(&self.output_per_1k_tokens, tokens.output))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_validation_refuses_bad_fields() {
        let ok = NewTransfer::posted("t1", "user:a", "user:b", 5, 7);
        assert!(ok.validate().is_ok());
        let cases = [
            NewTransfer::posted("t 1", "user:a", "user:b", 5, 7),
            NewTransfer::posted("t1", "user:a", "user:a", 5, 7),
            NewTransfer::posted("t1", "user:a", "user:b", 0, 7),
            NewTransfer::posted("t1", "user:a", "user:b", 5, 0),
            NewTransfer {
                timeout_secs: Some(5),
                ..ok.clone()
            },
            NewTransfer::reserve("t1", "user:a", "user:b", 5, 7, Some(0)),
            NewTransfer::posted(&"x".repeat(ID_BYTES_MAX + 1), "user:a", "user:b", 5, 7),
        ];
        for case in cases {
            assert!(
                matches!(case.validate(), Err(LedgerError::InvalidField(_))),
                "{case:?}"
            );
        }
    }

    #[test]
    fn balance_and_available_are_derived() {
        let mut account = Account::new(&NewAccount {
            id: "user:a".into(),
            kind: AccountKind::User,
            allow_negative: false,
        });
        account.credits_posted = u64::MAX;
        account.debits_posted = 1;
        account.debits_pending = 2;
        assert_eq!(account.balance(), i128::from(u64::MAX) - 1);
        assert_eq!(account.available(), i128::from(u64::MAX) - 3);
    }
}
