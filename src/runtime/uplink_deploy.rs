//! Uplink-Deploy's mailbox and its typed clients: the ingress, incident runbooks and the
//! pipeline's deploy stage reach it only through these; [`crate::actors::uplink_deploy`]
//! implements them.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::model::ops::error::OpsError;
use crate::model::ops::records::DeployRecord;
use crate::model::persona::Persona;
use crate::runtime::directory::PersonaMailbox;

/// How long a caller looks for a restarting Uplink-Deploy.
pub(crate) const PERSONA_WAIT: Duration = Duration::from_secs(10);

/// What an incident runbook may ask of an app.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AppAction {
    /// Restart the running release.
    Restart,
    /// Put the last healthy release back.
    Rollback,
    /// Change the instance count.
    Scale(u32),
}

/// Uplink-Deploy's messages.
pub(crate) enum UplinkDeployMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Deploy `commit` (default: the app's branch head) of `app`.
    Request {
        /// The app.
        app: String,
        /// A sha or ref; `None` for the branch head.
        commit: Option<String>,
        /// `api`, `cli`, `task:<id>`.
        trigger: String,
        /// The token that asked (`api`/`cli` requests).
        requested_by: Option<String>,
        /// The new record, or why it was refused; `None` when nobody waits for it.
        reply: Option<RpcReplyPort<Result<DeployRecord, OpsError>>>,
    },
    /// A requested deploy whose price is reserved: store it (and run it when the app is free).
    Admit {
        /// The record, not stored yet.
        record: Box<DeployRecord>,
        /// Who waits for it.
        reply: Option<RpcReplyPort<Result<DeployRecord, OpsError>>>,
    },
    /// A human passes (`approve: true`) or refuses a deploy at its gate.
    Decide {
        /// The deploy.
        id: String,
        /// Approve or reject.
        approve: bool,
        /// The reviewer's note.
        comment: Option<String>,
        /// The token that decided.
        by: Option<String>,
        /// The record after.
        reply: RpcReplyPort<Result<DeployRecord, OpsError>>,
    },
    /// A runbook step acts on an app; replies when the action has finished.
    Act {
        /// The app.
        app: String,
        /// What to do.
        action: AppAction,
        /// What happened.
        reply: RpcReplyPort<Result<String, OpsError>>,
    },
    /// A deploy job ended.
    DeployDone {
        /// The app it held.
        app: String,
        /// Its final record, or why the job itself failed.
        outcome: Result<Box<DeployRecord>, String>,
    },
    /// An action job ended.
    ActionDone(String),
}

/// Asks the current Uplink-Deploy incarnation to act on an app and waits (bounded) for the end.
pub(crate) async fn act(
    directory: &crate::runtime::directory::ActorDirectory,
    app: &str,
    action: AppAction,
    timeout: Duration,
) -> Result<String, OpsError> {
    let actor = current(directory).await?;
    let app = app.to_owned();
    let call = actor.call(
        |reply| UplinkDeployMsg::Act {
            app: app.clone(),
            action,
            reply,
        },
        Some(timeout),
    );
    unwrap_call(call.await)
}

/// The current Uplink-Deploy incarnation.
pub(crate) async fn current(
    directory: &crate::runtime::directory::ActorDirectory,
) -> Result<ActorRef<UplinkDeployMsg>, OpsError> {
    crate::runtime::current_persona(directory, PERSONA_WAIT).await
}

/// Flattens a call to Uplink-Deploy.
pub(crate) fn unwrap_call<T>(
    result: Result<CallResult<Result<T, OpsError>>, ractor::MessagingErr<UplinkDeployMsg>>,
) -> Result<T, OpsError> {
    crate::runtime::flatten_call(result)
}

impl PersonaMailbox for UplinkDeployMsg {
    const PERSONA: Persona = Persona::UplinkDeploy;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        UplinkDeployMsg::Ping(reply)
    }
}
