//! Uplink-Respond: incident response from runbooks. Today it loads `runbooks/` and answers which
//! runbook a signal would match; the incident pipeline arrives with the ops issue.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Services;
use crate::definitions::Runbook;

/// The Uplink-Respond persona.
pub struct UplinkRespond;

/// Uplink-Respond's start-up arguments.
pub struct UplinkRespondArguments {
    /// Shared services (its runbooks come from `definitions.runbooks`).
    pub services: Services,
}

/// Uplink-Respond's state.
pub struct UplinkRespondState {
    /// Runbooks in match order.
    runbooks: Vec<Runbook>,
}

/// Uplink-Respond's messages.
pub enum UplinkRespondMsg {
    /// The name of the first runbook whose `match.signal` is this signal, if any.
    MatchSignal {
        /// The signal name (`health_check_failed`, ...).
        signal: String,
        /// The runbook's name.
        reply: RpcReplyPort<Option<String>>,
    },
}

impl Actor for UplinkRespond {
    type Msg = UplinkRespondMsg;
    type State = UplinkRespondState;
    type Arguments = UplinkRespondArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(UplinkRespondState {
            runbooks: args.services.definitions.runbooks.clone(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkRespondMsg::MatchSignal { signal, reply } => {
                crate::work_failpoint!("uplink-respond.handle");
                let matched = state
                    .runbooks
                    .iter()
                    .find(|runbook| {
                        runbook.matcher.get("signal").and_then(|s| s.as_str())
                            == Some(signal.as_str())
                    })
                    .map(|runbook| runbook.name.clone());
                let _ = reply.send(matched);
            }
        }
        Ok(())
    }
}
