//! What ops work costs, in the same books as engineering work.
//!
//! - A deploy's price (`ledger.rates.deploy`) is reserved from its payer when it is requested: a
//!   payer that cannot cover it is refused with `INSUFFICIENT_FUNDS` and no deploy exists.
//! - When the deploy ends, the reservation is posted if its `deploy` stage began (something was
//!   put on the target) and released otherwise (rejected at its gate, refused at precheck). The seconds of commands it ran (verify, build, drain, git, provider
//!   commands) are charged at `ledger.rates.shell_per_second`.
//! - An app action a runbook asks for (restart, rollback, scale) is charged for its command
//!   seconds.
//! - The command seconds of Watch's checks (`command`, `tls_expiry`) are summed per app and
//!   charged to `agent:uplink-watch` once per `ledger.watch_billing_interval_secs`.
//! - A run of an incident response is charged for its own command seconds to
//!   `agent:uplink-respond` when it ends.
//!
//! Deploy and action money goes from the payer to `agent:uplink-deploy`, so the books (and the Watch `cost`
//! check, which sums what agents earned) show what operating an app costs. Every transfer id is
//! derived from the deploy's or action's id and every memo is fixed, so settling again (after a
//! crash) is a no-op.

use crate::model::ledger::{agent_account, LedgerError, NewTransfer, TransferStatus};
use crate::model::ops::error::OpsError;
use crate::model::ops::records::DeployRecord;
use crate::model::ops::spec::AppSpec;
use crate::model::persona::Persona;
use crate::runtime::ledger as ledger_actor;
use crate::runtime::Services;
use crate::storage::ledger::Book;
use crate::storage::ops::OpsStore;

/// Transfer code of a deploy's price (reserved at request, posted when it ran).
pub(crate) const CODE_DEPLOY: u16 = 20;
/// Transfer code of the command seconds of a deploy or an app action.
pub(crate) const CODE_OPS_COMMANDS: u16 = 21;
/// Transfer code of the command seconds Watch's checks of an app ran in one billing interval.
pub(crate) const CODE_WATCH_COMMANDS: u16 = 22;
/// Transfer code of the command seconds of one run of an incident response (diagnose, checks,
/// the wait for health).
pub(crate) const CODE_RESPONSE_COMMANDS: u16 = 23;

/// The persona ops work is paid to.
const PAYEE: Persona = Persona::UplinkDeploy;

/// The id of a deploy's price reservation.
pub(crate) fn deploy_reservation(deploy: &str) -> String {
    format!("deploy:{deploy}")
}

/// The id of a deploy's command-seconds charge.
pub(crate) fn deploy_commands_charge(deploy: &str) -> String {
    format!("deploy:{deploy}:commands")
}

/// Who pays for a deploy of `app` asked for by `trigger`: the app's `account`, else the account of
/// the task that delivered it (`task:<id>`), else the install's local account.
pub(crate) async fn payer(services: &Services, app: &AppSpec, trigger: &str) -> String {
    if let Some(account) = &app.account {
        return account.clone();
    }
    let task_id = trigger.strip_prefix("task:").and_then(|id| id.parse().ok());
    let task = match task_id {
        Some(id) => services.store.task(id).await.ok().flatten(),
        None => None,
    };
    task.map(|task| task.billing.account)
        .unwrap_or_else(|| services.config.ledger.local_account.clone())
}

/// Reserves the price of the deploy `record` (whose `account` is set) from its payer.
pub(crate) async fn reserve_deploy(
    services: &Services,
    record: &DeployRecord,
) -> Result<(), OpsError> {
    let price = services.config.ledger.rates.deploy;
    let Some(account) = record.account.as_deref().filter(|_| price > 0) else {
        return Ok(());
    };
    let mut reservation = NewTransfer::reserve(
        &deploy_reservation(&record.id),
        account,
        &agent_account(PAYEE.name()),
        price,
        CODE_DEPLOY,
        None,
    );
    reservation.memo = Some(format!("deploy {} of {}", record.id, record.app));
    ledger_actor::pending(&services.directory, reservation)
        .await
        .map(drop)
        .map_err(OpsError::from)
}

/// Releases the reservation of a deploy that was never stored.
pub(crate) async fn release_deploy(services: &Services, deploy: &str) {
    let id = deploy_reservation(deploy);
    match ledger_actor::void(&services.directory, &id).await {
        Ok(_) | Err(LedgerError::TransferNotFound(_)) => {}
        Err(error) => {
            tracing::error!(%error, reservation = %id, "could not release a deploy's reservation")
        }
    }
}

/// Whether the ended deploy `record` still owes the books something: its reservation is pending,
/// or its command seconds are not charged yet. Reads only, so a start-up scan stays cheap.
pub(crate) async fn needs_settling(
    services: &Services,
    record: &DeployRecord,
) -> Result<bool, LedgerError> {
    if !record.status.is_terminal() || record.account.is_none() {
        return Ok(false);
    }
    let book = Book::new(&services.store);
    let pending = book
        .transfer(&deploy_reservation(&record.id))
        .await?
        .is_some_and(|t| t.status == TransferStatus::Pending);
    let uncharged = seconds_cost(services, record.command_seconds) > 0
        && book
            .transfer(&deploy_commands_charge(&record.id))
            .await?
            .is_none();
    Ok(pending || uncharged)
}

/// Settles an ended deploy: posts its price if its `deploy` stage began (else releases it) and
/// charges its command seconds. Idempotent.
pub(crate) async fn settle_deploy(
    services: &Services,
    record: &DeployRecord,
) -> Result<(), LedgerError> {
    if !needs_settling(services, record).await? {
        return Ok(());
    }
    let Some(account) = record.account.as_deref() else {
        return Ok(());
    };
    let ran = record.stages.iter().any(|s| s.stage == "deploy");
    let reservation = deploy_reservation(&record.id);
    let book = Book::new(&services.store);
    if book
        .transfer(&reservation)
        .await?
        .is_some_and(|t| t.status == TransferStatus::Pending)
    {
        let settled = if ran {
            ledger_actor::post(&services.directory, &reservation, None).await
        } else {
            ledger_actor::void(&services.directory, &reservation).await
        };
        match settled {
            // Settled meanwhile by another settlement of the same deploy: nothing left to do.
            Ok(_) | Err(LedgerError::TransferNotPending { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    CommandCharge {
        id: &deploy_commands_charge(&record.id),
        account,
        payee: PAYEE,
        code: CODE_OPS_COMMANDS,
        seconds: record.command_seconds,
        memo: format!(
            "deploy {} of {}: {} command seconds",
            record.id, record.app, record.command_seconds
        ),
    }
    .apply(services)
    .await
}

/// One posted charge for command time, at `ledger.rates.shell_per_second` per started second.
struct CommandCharge<'a> {
    /// The transfer id (its idempotency root).
    id: &'a str,
    /// Who pays.
    account: &'a str,
    /// The persona paid (`agent:<payee>`).
    payee: Persona,
    /// The transfer code.
    code: u16,
    /// Started seconds of the commands.
    seconds: u64,
    /// What it was for.
    memo: String,
}

impl CommandCharge<'_> {
    /// Moves the money; nothing for zero seconds (or a zero rate).
    async fn apply(self, services: &Services) -> Result<(), LedgerError> {
        let amount = seconds_cost(services, self.seconds);
        if amount == 0 {
            return Ok(());
        }
        let payee = agent_account(self.payee.name());
        let mut charge = NewTransfer::posted(self.id, self.account, &payee, amount, self.code);
        charge.memo = Some(self.memo);
        ledger_actor::transfer(&services.directory, charge)
            .await
            .map(drop)
    }
}

/// What `seconds` of commands cost at the shell rate.
fn seconds_cost(services: &Services, seconds: u64) -> u64 {
    services
        .config
        .ledger
        .rates
        .shell_per_second
        .saturating_mul(seconds)
}

/// Charges the command seconds Watch's checks of `app` ran since the last charge, from the app's
/// payer to `agent:uplink-watch`, as one transfer with a fresh id.
pub(crate) async fn charge_watch(
    services: &Services,
    app: &str,
    spec: &AppSpec,
    seconds: u64,
) -> Result<(), LedgerError> {
    let account = payer(services, spec, "watch").await;
    CommandCharge {
        id: &format!("watch:{app}:{}", uuid::Uuid::now_v7()),
        account: &account,
        payee: Persona::UplinkWatch,
        code: CODE_WATCH_COMMANDS,
        seconds,
        memo: format!("checks of {app}: {seconds} command seconds"),
    }
    .apply(services)
    .await
}

/// Charges the command seconds one run of incident `id`'s response took (its restart, rollback and
/// scale steps are Uplink-Deploy's actions, charged there), from the app's payer to
/// `agent:uplink-respond`. A failure is logged: the response already happened.
pub(crate) async fn charge_response(services: &Services, ops: &OpsStore, id: &str, seconds: u64) {
    if seconds_cost(services, seconds) == 0 {
        return;
    }
    let Ok(Some(incident)) = ops.incident(id).await else {
        return;
    };
    let account = match services.definitions.ops.apps.get(&incident.app) {
        Some(spec) => payer(services, spec, "respond").await,
        None => services.config.ledger.local_account.clone(),
    };
    let charged = CommandCharge {
        id: &format!("respond:{id}:{}", uuid::Uuid::now_v7()),
        account: &account,
        payee: Persona::UplinkRespond,
        code: CODE_RESPONSE_COMMANDS,
        seconds,
        memo: format!(
            "incident {id} of {}: {seconds} command seconds",
            incident.app
        ),
    }
    .apply(services)
    .await;
    if let Err(error) = charged {
        tracing::error!(incident = %id, %error, "could not charge an incident response");
    }
}

/// Charges an app action's command seconds (`id`: the action's own id).
pub(crate) async fn charge_action(
    services: &Services,
    id: &str,
    account: &str,
    seconds: u64,
    memo: String,
) -> Result<(), LedgerError> {
    CommandCharge {
        id,
        account,
        payee: PAYEE,
        code: CODE_OPS_COMMANDS,
        seconds,
        memo,
    }
    .apply(services)
    .await
}

impl From<LedgerError> for OpsError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::InsufficientFunds { .. } => Self::InsufficientFunds(error.to_string()),
            LedgerError::AccountNotFound(account) => {
                Self::UnknownAccount(format!("no ledger account `{account}` to pay for it"))
            }
            LedgerError::Unavailable(message) => Self::Unavailable(message),
            other => Self::Ledger {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}
