//! Uplink-Watch: periodic read-only checks. Today it loads the checks named in `ops.yaml`; the
//! cron scheduler arrives with the ops issue.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Services;

/// The Uplink-Watch persona.
pub struct UplinkWatch;

/// Uplink-Watch's start-up arguments.
pub struct UplinkWatchArguments {
    /// Shared services (its checks come from `definitions.ops`).
    pub services: Services,
}

/// Uplink-Watch's state.
pub struct UplinkWatchState {
    /// `<app>/<check>` for every check in `ops.yaml`.
    checks: Vec<String>,
}

/// Uplink-Watch's messages.
pub enum UplinkWatchMsg {
    /// The checks it watches.
    Checks(RpcReplyPort<Vec<String>>),
}

impl Actor for UplinkWatch {
    type Msg = UplinkWatchMsg;
    type State = UplinkWatchState;
    type Arguments = UplinkWatchArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut checks = Vec::new();
        for (app, settings) in &args.services.definitions.ops.apps {
            let listed = settings.get("checks").and_then(|c| c.as_sequence());
            for check in listed.into_iter().flatten() {
                let name = check
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("unnamed");
                checks.push(format!("{app}/{name}"));
            }
        }
        Ok(UplinkWatchState { checks })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkWatchMsg::Checks(reply) => {
                crate::work_failpoint!("uplink-watch.handle");
                let _ = reply.send(state.checks.clone());
            }
        }
        Ok(())
    }
}
