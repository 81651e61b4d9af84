//! Admission of a deploy request, before Uplink-Deploy queues it: the checks that need only the
//! stored records (the app exists, a task's repeated request finds its deploy, the app's waiting
//! queue has room, the commit resolves), the reservation of its price with the Ledger (from a
//! background task: the actor never waits on the Ledger), and the second look when the
//! reservation comes back. The actor ([`crate::actors::uplink_deploy`]) owns the order; this is
//! what each step decides.

use ractor::{ActorRef, RpcReplyPort};

use crate::model::ops::error::OpsError;
use crate::model::ops::records::{DeployRecord, DeployStatus};
use crate::runtime::uplink_deploy::UplinkDeployMsg;
use crate::runtime::Services;
use crate::storage::ops::OpsStore;
use crate::work::ops::{billing, deploy};

/// Deploys of one app that may wait (queued or awaiting approval) at once.
pub(crate) const DEPLOYS_WAITING_MAX: usize = 16;

/// What a deploy request comes to before any money moves.
pub(crate) enum Prepared {
    /// A delivered task asked again: the deploy it already made.
    Existing(DeployRecord),
    /// A new record (not stored yet) whose price is reserved next.
    New(DeployRecord),
}

/// The checks of a deploy request that need only the stored records: the app exists, a task's
/// repeated request finds its deploy, the app's waiting queue has room. Builds the new record at
/// the gate its history decides, with its payer.
pub(crate) async fn prepare(
    services: &Services,
    ops: &OpsStore,
    app: &str,
    (commit, trigger, requested_by): (Option<String>, &str, Option<String>),
) -> Result<Prepared, OpsError> {
    let spec = services
        .definitions
        .ops
        .apps
        .get(app)
        .ok_or_else(|| OpsError::UnknownApp(app.to_owned()))?;
    let history = ops.deploy_history(app).await?;
    if let Some(existing) = made_for(&history.records, trigger) {
        return Ok(Prepared::Existing(existing.clone()));
    }
    check_room(&history.records, app)?;
    if let Some(reference) = &commit {
        refuse_unknown_commit(&spec.repo, reference).await?;
    }
    let mut record = deploy::new_record(app, spec, commit, trigger, &history);
    record.account = Some(billing::payer(services, spec, trigger).await);
    record.requested_by = requested_by;
    Ok(Prepared::New(record))
}

/// A commit that does not resolve in the app's repository is refused at the door (issue #16: a
/// typo used to make a deploy record, then fail it `UNKNOWN_COMMIT`, open an outage incident and
/// file a bugfix task). Answered in-process (gix); a repository gix cannot read is left to the
/// deploy's own `git rev-parse`.
async fn refuse_unknown_commit(repo: &std::path::Path, reference: &str) -> Result<(), OpsError> {
    if reference.starts_with('-') || reference.chars().any(char::is_whitespace) {
        return Err(OpsError::UnknownCommit(format!(
            "`{reference}` is not a commit"
        )));
    }
    match crate::platform::git::read::resolve_commit(repo, reference).await {
        Ok(None) => Err(OpsError::UnknownCommit(format!(
            "no commit `{reference}` in {}",
            repo.display()
        ))),
        Ok(Some(_)) | Err(_) => Ok(()),
    }
}

/// A delivered task asks once, but its request may be repeated after a crash: the deploy it
/// already made — unless that one ended without a healthy release and the task was retried:
/// then it asks for a new one.
fn made_for<'a>(history: &'a [DeployRecord], trigger: &str) -> Option<&'a DeployRecord> {
    if !trigger.starts_with("task:") {
        return None;
    }
    history.iter().rev().find(|d| {
        d.trigger == trigger && (!d.status.is_terminal() || d.status == DeployStatus::Healthy)
    })
}

/// Refuses a request when [`DEPLOYS_WAITING_MAX`] deploys of the app already wait.
fn check_room(history: &[DeployRecord], app: &str) -> Result<(), OpsError> {
    let waiting = history
        .iter()
        .filter(|d| {
            matches!(
                d.status,
                DeployStatus::Queued | DeployStatus::AwaitingApproval
            )
        })
        .count();
    if waiting >= DEPLOYS_WAITING_MAX {
        return Err(OpsError::QueueFull(app.to_owned()));
    }
    Ok(())
}

/// Reserves the new deploy's price from a background task (the handler never waits on the
/// Ledger), then hands the record back as [`UplinkDeployMsg::Admit`]; a refusal goes to the
/// requester. With no room for the task nothing is reserved and the request is refused
/// (`Unavailable`), as when Uplink-Deploy is down.
pub(crate) fn reserve_then_admit(
    myself: &ActorRef<UplinkDeployMsg>,
    services: &Services,
    record: DeployRecord,
    reply: Option<RpcReplyPort<Result<DeployRecord, OpsError>>>,
) {
    let Some(slot) = services.background.slot() else {
        let busy = OpsError::Unavailable(
            "uplink-deploy has too much background work running; try again".into(),
        );
        answer(reply, &record.app, &record.trigger, Err(busy));
        return;
    };
    let (me, services) = (myself.clone(), services.clone());
    slot.spawn("deploy.reserve", async move {
        if let Err(error) = billing::reserve_deploy(&services, &record).await {
            answer(reply, &record.app, &record.trigger, Err(error));
            return;
        }
        let id = record.id.clone();
        let admit = UplinkDeployMsg::Admit {
            record: Box::new(record),
            reply,
        };
        if me.cast(admit).is_err() {
            // Uplink-Deploy stopped meanwhile: nothing was stored, so nothing stays reserved.
            billing::release_deploy(&services, &id).await;
        }
    });
}

/// Stores a deploy whose price is reserved, after checking again what may have changed while
/// the Ledger answered (a repeated task request, the waiting queue). A refusal here releases the
/// reservation.
pub(crate) async fn admit(
    services: &Services,
    ops: &OpsStore,
    record: DeployRecord,
) -> Result<DeployRecord, OpsError> {
    // A history that cannot be read (a failing disk) refuses too, and releases like any refusal.
    let refused = match ops.deploys_of(&record.app).await {
        Ok(history) => match made_for(&history, &record.trigger) {
            Some(existing) => Some(Ok(existing.clone())),
            None => check_room(&history, &record.app).err().map(Err),
        },
        Err(error) => Some(Err(error.into())),
    };
    let outcome = match refused {
        Some(outcome) => outcome,
        None => match ops.put_deploy(&record).await {
            Ok(()) => {
                tracing::info!(app = %record.app, deploy = %record.id, status = ?record.status, gate = %record.gate, "deploy requested");
                return Ok(record);
            }
            Err(error) => Err(error.into()),
        },
    };
    let (background, services, id) = (services.background.clone(), services.clone(), record.id);
    // A reservation left pending is never released later: without room, release it here.
    let release = async move { billing::release_deploy(&services, &id).await };
    background.spawn_or_run("deploy.release", release).await;
    outcome
}

/// Sends a request's outcome to whoever waits for it; a refusal nobody waits for is logged.
pub(crate) fn answer(
    reply: Option<RpcReplyPort<Result<DeployRecord, OpsError>>>,
    app: &str,
    trigger: &str,
    outcome: Result<DeployRecord, OpsError>,
) {
    match (reply, outcome) {
        (Some(reply), outcome) => {
            let _ = reply.send(outcome);
        }
        (None, Err(error)) => {
            tracing::error!(%app, %trigger, %error, "deploy request refused");
        }
        (None, Ok(_)) => {}
    }
}
