//! Uplink-Deploy: the deploy pipeline's persona. Today it loads the apps of `ops.yaml` and answers
//! which it can deploy; the deploy pipeline itself arrives with the ops issue.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Services;

/// The Uplink-Deploy persona.
pub struct UplinkDeploy;

/// Uplink-Deploy's start-up arguments.
pub struct UplinkDeployArguments {
    /// Shared services (its apps come from `definitions.ops`).
    pub services: Services,
}

/// Uplink-Deploy's state.
pub struct UplinkDeployState {
    /// App names from `ops.yaml`.
    apps: Vec<String>,
}

/// Uplink-Deploy's messages.
pub enum UplinkDeployMsg {
    /// The apps it knows how to deploy.
    Apps(RpcReplyPort<Vec<String>>),
}

impl Actor for UplinkDeploy {
    type Msg = UplinkDeployMsg;
    type State = UplinkDeployState;
    type Arguments = UplinkDeployArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let apps = args.services.definitions.ops.apps.keys().cloned().collect();
        Ok(UplinkDeployState { apps })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkDeployMsg::Apps(reply) => {
                crate::work_failpoint!("uplink-deploy.handle");
                let _ = reply.send(state.apps.clone());
            }
        }
        Ok(())
    }
}
