//! Ledger: the token ledger, the only writer of balances. For now it records which persona is
//! metered and answers who it is; the double-entry books arrive with the ledger issue.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Services;
use crate::definitions::PERSONAS;

/// The Ledger persona.
pub struct Ledger;

/// Ledger's start-up arguments.
pub struct LedgerArguments {
    /// Shared services.
    pub services: Services,
}

/// Ledger's state.
pub struct LedgerState {
    /// One `agent:<persona>` account per persona, in start order.
    agent_accounts: Vec<String>,
}

/// Ledger's messages.
pub enum LedgerMsg {
    /// The agent accounts the ledger meters.
    AgentAccounts(RpcReplyPort<Vec<String>>),
}

impl Actor for Ledger {
    type Msg = LedgerMsg;
    type State = LedgerState;
    type Arguments = LedgerArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = args.services;
        Ok(LedgerState {
            agent_accounts: PERSONAS.iter().map(|p| format!("agent:{p}")).collect(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LedgerMsg::AgentAccounts(reply) => {
                crate::work_failpoint!("ledger.handle");
                let _ = reply.send(state.agent_accounts.clone());
            }
        }
        Ok(())
    }
}
