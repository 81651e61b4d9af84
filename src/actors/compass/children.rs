//! Compass's children, typed: each persona's current incarnation is kept as the `ActorRef` of its
//! own mailbox (as in ractor's supervisor examples), so Compass sends it messages the compiler
//! checks instead of casting an untyped cell by hand. Every child is spawned linked to Compass,
//! which matches a supervision event to the child by its actor id ([`PersonaRef::id`]).

use ractor::{Actor, ActorCell, ActorId, ActorRef, SpawnErr};

use crate::actors::circuit::{Circuit, CircuitArguments, CircuitMsg};
use crate::actors::ledger::{Ledger, LedgerArguments};
use crate::actors::patch::{Patch, PatchArguments, PatchMsg};
use crate::actors::planner::{Planner, PlannerArguments, PlannerMsg};
use crate::actors::uplink_deploy::{UplinkDeploy, UplinkDeployArguments};
use crate::actors::uplink_respond::{UplinkRespond, UplinkRespondArguments};
use crate::actors::uplink_watch::{UplinkWatch, UplinkWatchArguments, UplinkWatchMsg};
use crate::model::persona::Persona;
use crate::model::task::TaskId;
use crate::runtime::compass::CompassMsg;
use crate::runtime::ledger::LedgerMsg;
use crate::runtime::uplink_deploy::UplinkDeployMsg;
use crate::runtime::uplink_respond::UplinkRespondMsg;
use crate::runtime::Services;

/// One persona's current incarnation, typed by its mailbox.
pub(super) enum PersonaRef {
    /// The budget keeper.
    Ledger(ActorRef<LedgerMsg>),
    /// Plans tasks.
    Planner(ActorRef<PlannerMsg>),
    /// Implements and delivers (the merge queues).
    Patch(ActorRef<PatchMsg>),
    /// Verifies.
    Circuit(ActorRef<CircuitMsg>),
    /// Deploys.
    UplinkDeploy(ActorRef<UplinkDeployMsg>),
    /// Runs the checks.
    UplinkWatch(ActorRef<UplinkWatchMsg>),
    /// Answers incidents.
    UplinkRespond(ActorRef<UplinkRespondMsg>),
}

impl PersonaRef {
    /// The untyped handle, for the directory (which serves every actor alike).
    pub(super) fn cell(&self) -> ActorCell {
        match self {
            Self::Ledger(actor) => actor.get_cell(),
            Self::Planner(actor) => actor.get_cell(),
            Self::Patch(actor) => actor.get_cell(),
            Self::Circuit(actor) => actor.get_cell(),
            Self::UplinkDeploy(actor) => actor.get_cell(),
            Self::UplinkWatch(actor) => actor.get_cell(),
            Self::UplinkRespond(actor) => actor.get_cell(),
        }
    }

    /// Which actor this incarnation is: a supervision event names its child by this id.
    pub(super) fn id(&self) -> ActorId {
        self.cell().get_id()
    }

    /// Tells a persona that runs jobs per task to drop `task_id`'s (killing their process
    /// groups); the others hold none. A persona gone meanwhile took the jobs with it.
    pub(super) fn cancel_task(&self, task_id: TaskId) {
        match self {
            Self::Planner(actor) => {
                let _ = actor.cast(PlannerMsg::CancelTask(task_id));
            }
            Self::Patch(actor) => {
                let _ = actor.cast(PatchMsg::CancelTask(task_id));
            }
            Self::Circuit(actor) => {
                let _ = actor.cast(CircuitMsg::CancelTask(task_id));
            }
            Self::Ledger(_)
            | Self::UplinkDeploy(_)
            | Self::UplinkWatch(_)
            | Self::UplinkRespond(_) => {}
        }
    }
}

/// Starts the persona `name` linked to Compass. A `pre_start` failure comes back here (not as
/// a supervision event), so the caller counts it as a crash.
pub(super) async fn spawn_persona(
    name: Persona,
    compass: &ActorRef<CompassMsg>,
    services: &Services,
) -> Result<PersonaRef, SpawnErr> {
    let supervisor = compass.get_cell();
    let services = services.clone();
    let persona = match name {
        Persona::Ledger => {
            PersonaRef::Ledger(linked(Ledger, LedgerArguments { services }, supervisor).await?)
        }
        Persona::Planner => {
            PersonaRef::Planner(linked(Planner, PlannerArguments { services }, supervisor).await?)
        }
        Persona::Patch => {
            PersonaRef::Patch(linked(Patch, PatchArguments { services }, supervisor).await?)
        }
        Persona::Circuit => {
            PersonaRef::Circuit(linked(Circuit, CircuitArguments { services }, supervisor).await?)
        }
        Persona::UplinkDeploy => PersonaRef::UplinkDeploy(
            linked(UplinkDeploy, UplinkDeployArguments { services }, supervisor).await?,
        ),
        Persona::UplinkWatch => PersonaRef::UplinkWatch(
            linked(UplinkWatch, UplinkWatchArguments { services }, supervisor).await?,
        ),
        Persona::UplinkRespond => PersonaRef::UplinkRespond(
            linked(
                UplinkRespond,
                UplinkRespondArguments { services },
                supervisor,
            )
            .await?,
        ),
        Persona::Compass => {
            return Err(SpawnErr::StartupFailed(
                "compass is the root; it does not spawn itself".into(),
            ))
        }
    };
    Ok(persona)
}

/// Spawns `actor` linked to `supervisor` and keeps its typed ref (the join handle is not needed:
/// the supervisor hears of its end).
async fn linked<A: Actor>(
    actor: A,
    arguments: A::Arguments,
    supervisor: ActorCell,
) -> Result<ActorRef<A::Msg>, SpawnErr> {
    Ok(A::spawn_linked(None, actor, arguments, supervisor).await?.0)
}
