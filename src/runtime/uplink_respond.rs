//! Uplink-Respond's mailbox and its typed clients: Uplink-Watch, Uplink-Deploy and the ingress hand
//! it signals and decisions only through these; [`crate::actors::uplink_respond`] implements them.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::model::ops::error::OpsError;
use crate::model::ops::records::{AwaitingStep, Incident, Signal};
use crate::model::ops::silence::{SignalOutcome, Silence};
use crate::model::persona::Persona;
use crate::runtime::directory::PersonaMailbox;
use crate::runtime::Services;

/// How long a signal's sender waits for Uplink-Respond (lookup and answer).
const SIGNAL_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Uplink-Respond's messages.
pub(crate) enum UplinkRespondMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Signals to open incidents for (or attach to open ones); replies with what became of each:
    /// its incident, or the active silence that quieted it.
    Signals {
        /// The signals.
        signals: Vec<Signal>,
        /// The outcome of each signal, in order.
        reply: Option<RpcReplyPort<Result<Vec<SignalOutcome>, OpsError>>>,
    },
    /// A person makes or ends a silence: stored (durable), then in force for the next signal.
    Silence {
        /// Make or end.
        act: SilenceAct,
        /// The silence after.
        reply: RpcReplyPort<Result<Silence, OpsError>>,
    },
    /// A human approves (or rejects) the gated step an incident waits at.
    Decide {
        /// The incident.
        id: String,
        /// Approve or reject.
        approve: bool,
        /// The step as it was shown to the approver (required to approve): refused with
        /// `STEP_CHANGED` unless it is the step the runbook has there now.
        shown: Option<AwaitingStep>,
        /// The token that decided.
        by: Option<String>,
        /// The incident after.
        reply: RpcReplyPort<Result<Incident, OpsError>>,
    },
    /// A person acknowledges, resolves or snoozes an incident.
    Human {
        /// The incident.
        id: String,
        /// What they do.
        act: HumanAct,
        /// The token's name.
        by: String,
        /// The incident after.
        reply: RpcReplyPort<Result<Incident, OpsError>>,
    },
    /// A response job ended.
    ResponseDone {
        /// The incident.
        id: String,
        /// Why the job failed, if it did.
        error: Option<String>,
    },
}

/// What a person does to an incident (PagerDuty's and Alertmanager's verbs).
#[derive(Debug, Clone)]
pub(crate) enum HumanAct {
    /// "I have it": `needs_human` becomes `acknowledged`; an open response goes on.
    Acknowledge,
    /// "It is over": resolved, any response running for it stopped; the next failure opens a
    /// new incident, which gets the automatic response again.
    Resolve,
    /// Quiet until then: repeats are counted without a timeline entry each.
    Snooze {
        /// Until when.
        until: chrono::DateTime<chrono::Utc>,
    },
}

/// What a person does with silences.
#[derive(Debug, Clone)]
pub(crate) enum SilenceAct {
    /// Make this one (checked already: matchers, times, the creator's name).
    Add(Silence),
    /// End this one now.
    Expire {
        /// The silence.
        id: String,
        /// The token's name.
        by: String,
    },
}

/// Hands signals to the current Uplink-Respond and returns the ids of the incidents they opened
/// or joined, silenced ones left out (empty when it cannot be reached in time: the failure is
/// logged, the sender goes on).
pub(crate) async fn send_signals(services: &Services, signals: Vec<Signal>) -> Vec<String> {
    match call_signals(services, signals).await {
        Ok(outcomes) => outcomes
            .iter()
            .filter_map(|outcome| outcome.incident().map(str::to_owned))
            .collect(),
        Err(error) => {
            tracing::error!(%error, "a signal did not reach uplink-respond");
            Vec::new()
        }
    }
}

/// Hands signals to the current Uplink-Respond; `Err` says why they did not arrive.
pub(crate) async fn call_signals(
    services: &Services,
    signals: Vec<Signal>,
) -> Result<Vec<SignalOutcome>, OpsError> {
    let actor = current(services).await?;
    let call = actor.call(
        |reply| UplinkRespondMsg::Signals {
            signals: signals.clone(),
            reply: Some(reply),
        },
        Some(SIGNAL_CALL_TIMEOUT),
    );
    crate::runtime::flatten_call(call.await)
}

/// Asks the current Uplink-Respond to approve or reject an incident's gated step.
pub(crate) async fn call_decide(
    services: &Services,
    id: &str,
    approve: bool,
    shown: Option<AwaitingStep>,
    by: Option<String>,
) -> Result<Incident, OpsError> {
    let actor = current(services).await?;
    let id = id.to_owned();
    let call = actor.call(
        |reply| UplinkRespondMsg::Decide {
            id: id.clone(),
            approve,
            shown: shown.clone(),
            by: by.clone(),
            reply,
        },
        Some(SIGNAL_CALL_TIMEOUT),
    );
    crate::runtime::flatten_call(call.await)
}

/// Asks the current Uplink-Respond to record a person's act on an incident.
pub(crate) async fn call_human(
    services: &Services,
    id: &str,
    act: HumanAct,
    by: String,
) -> Result<Incident, OpsError> {
    let actor = current(services).await?;
    let id = id.to_owned();
    let call = actor.call(
        |reply| UplinkRespondMsg::Human {
            id: id.clone(),
            act: act.clone(),
            by: by.clone(),
            reply,
        },
        Some(SIGNAL_CALL_TIMEOUT),
    );
    crate::runtime::flatten_call(call.await)
}

/// Asks the current Uplink-Respond to make or end a silence.
pub(crate) async fn call_silence(
    services: &Services,
    act: SilenceAct,
) -> Result<Silence, OpsError> {
    let actor = current(services).await?;
    let call = actor.call(
        |reply| UplinkRespondMsg::Silence {
            act: act.clone(),
            reply,
        },
        Some(SIGNAL_CALL_TIMEOUT),
    );
    crate::runtime::flatten_call(call.await)
}

/// The current Uplink-Respond incarnation.
async fn current(services: &Services) -> Result<ActorRef<UplinkRespondMsg>, OpsError> {
    crate::runtime::current_persona(&services.directory, SIGNAL_CALL_TIMEOUT).await
}

impl PersonaMailbox for UplinkRespondMsg {
    const PERSONA: Persona = Persona::UplinkRespond;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        UplinkRespondMsg::Ping(reply)
    }
}
