//! Uplink-Respond: incidents. Signals come from Uplink-Watch, from failed deploys and from
//! `POST /v1/alerts`; a repeat of an unresolved incident's fingerprint within
//! [`DEDUP_WINDOW`] attaches to it. A new incident is classified by the first matching runbook
//! (none → `needs_human`, nothing done); an app that is flapping, or whose automatic-action
//! budget (`incidents.actions_max`, `actions_cost_max` per `actions_window_secs`, counted from
//! the stored incidents) is spent, goes to a human too. Otherwise its response — diagnose,
//! steps (each acting step checks the budget again), resolve, postmortem — runs in a job
//! ([`crate::work::ops::incident::respond`]).
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]. Deviations: the next incarnation
//! ([`Actor::post_start`]) resumes every open incident that is not waiting for an approval after
//! its last finished step, and reloads the active silences (a copy of the store's, changed only
//! through [`UplinkRespondMsg::Silence`], so a signal costs no store read to check them). A signal
//! lost with the crash is logged by its sender (`send_signals`); an alert is answered
//! `PERSONA_UNAVAILABLE` so its sender retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use crate::model::ops::error::OpsError;
use crate::model::ops::records::{AwaitingStep, HumanMark, Incident, IncidentStatus, Signal};
use crate::model::ops::silence::{SignalOutcome, Silence};
use crate::model::ops::spec::IncidentPolicy;
use crate::model::persona::Persona;
use crate::runtime::jobs::spawn_job;
use crate::runtime::uplink_respond::{HumanAct, UplinkRespondMsg};
use crate::runtime::Services;
use crate::storage::ops::OpsStore;
use crate::work::ops::billing;
use crate::work::ops::incident::{self, RespondContext};
use crate::work::ops::provider::{LocalRuntime, ProviderContext};

mod silences;

/// A repeat of an unresolved incident's fingerprint within this window attaches to it.
pub(crate) const DEDUP_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Incidents scanned (newest first) for a fingerprint match.
const DEDUP_SCAN_MAX: usize = 200;
/// Incident responses running at once; past it a new incident goes to a human.
pub(crate) const RESPONSES_MAX: usize = 32;

/// The Uplink-Respond persona.
pub(crate) struct UplinkRespond;

/// Uplink-Respond's start-up arguments.
pub(crate) struct UplinkRespondArguments {
    /// Shared services (its runbooks come from `definitions.runbooks`).
    pub services: Services,
}

/// Uplink-Respond's state.
pub(crate) struct UplinkRespondState {
    /// What response jobs need.
    ctx: RespondContext,
    /// Incident → its running response; dropping one aborts it.
    responses: HashMap<String, AbortOnDropHandle<()>>,
    /// The silences active when last looked (at most `ACTIVE_SILENCES_MAX`); ended ones are
    /// dropped as signals arrive.
    silences: Vec<Silence>,
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
        let services = args.services;
        let ops = OpsStore::new(&services.store);
        let silences = silences::load(&ops).await?;
        let provider = ProviderContext::for_persona(
            &services,
            Persona::UplinkRespond,
            Arc::new(LocalRuntime::default()),
        );
        Ok(UplinkRespondState {
            ctx: RespondContext {
                services,
                provider,
                ops,
            },
            responses: HashMap::new(),
            silences,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Responses that were running died with the last incarnation: go on after their last
        // finished step.
        let open = state
            .ctx
            .ops
            .incidents_where(DEDUP_SCAN_MAX, |i| {
                i.status == IncidentStatus::Open && i.awaiting_step.is_none()
            })
            .await?;
        for incident in open {
            let (from, approved) = incident::resume_point(&incident);
            tracing::info!(incident = %incident.id, from, "resuming an incident response");
            start_response(&myself, state, incident.id, from, approved);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkRespondMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            UplinkRespondMsg::Signals { signals, reply } => {
                crate::work_failpoint!("uplink-respond.handle");
                let mut outcomes = Vec::new();
                let mut outcome = Ok(());
                for signal in signals {
                    match on_signal(&myself, state, signal).await {
                        Ok(outcome) => outcomes.push(outcome),
                        Err(error) => {
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome.map(|()| outcomes));
                }
            }
            UplinkRespondMsg::Silence { act, reply } => {
                let _ = reply.send(silences::act(state, act).await);
            }
            UplinkRespondMsg::Decide {
                id,
                approve,
                shown,
                by,
                reply,
            } => {
                let outcome = decide(&myself, state, &id, approve, shown, by).await;
                let _ = reply.send(outcome);
            }
            UplinkRespondMsg::Human { id, act, by, reply } => {
                let outcome = human(state, &id, act, by).await;
                let _ = reply.send(outcome);
            }
            UplinkRespondMsg::ResponseDone { id, error } => {
                state.responses.remove(&id);
                if let Some(error) = error {
                    if let Err(error) = on_response_failed(state, &id, error).await {
                        tracing::error!(incident = %id, %error, "uplink-respond: could not record the failed response (storage)");
                    }
                }
            }
        }
        Ok(())
    }
}

/// A signal an active silence matches is counted and goes no further; any other opens or joins
/// an incident.
async fn on_signal(
    myself: &ActorRef<UplinkRespondMsg>,
    state: &mut UplinkRespondState,
    signal: Signal,
) -> Result<SignalOutcome, OpsError> {
    if let Some(silence) = silences::silencing(state, &signal) {
        return Ok(SignalOutcome::Silenced(silence));
    }
    open_or_join(myself, state, signal)
        .await
        .map(SignalOutcome::Incident)
}

async fn open_or_join(
    myself: &ActorRef<UplinkRespondMsg>,
    state: &mut UplinkRespondState,
    signal: Signal,
) -> Result<String, OpsError> {
    let policy = state.ctx.services.definitions.ops.incidents.clone();
    if let Some(id) = joins(state, &signal, &policy).await? {
        state
            .ctx
            .ops
            .update_incident(&id, move |i| i.attach(signal.clone()))
            .await?;
        return Ok(id);
    }
    let flapping = flap_count(state, &signal, &policy).await?;
    let runbook = incident::match_runbook(&state.ctx.services.definitions.runbooks, &signal);
    let mut opened = incident::open(signal, runbook, &policy.group_by);
    if let Some(count) = flapping {
        opened.status = IncidentStatus::NeedsHuman;
        let reason = format!(
            "flapping: {count} incidents of `{}` for `{}` within {} s (incidents.flap_max is {}); \
             automatic responses stop until a human looks",
            opened.signals.first().map_or("", |s| s.signal.as_str()),
            opened.app,
            policy.flap_window_secs,
            policy.flap_max
        );
        opened.push_event("needs_human", json!({"reason": reason, "flapping": true}));
    }
    if opened.status == IncidentStatus::Open {
        let spent = incident::action_budget_spent(&state.ctx.ops, &opened.app, &policy).await?;
        if let Some((setting, reason)) = spent {
            tracing::warn!(app = %opened.app, setting, "action budget spent: the incident goes to a human");
            incident::hand_over_for_budget(&mut opened, setting, &reason);
        }
    }
    let respond = opened.status == IncidentStatus::Open;
    if respond && state.responses.len() >= RESPONSES_MAX {
        opened.status = IncidentStatus::NeedsHuman;
        opened.push_event(
            "needs_human",
            json!({"reason": format!("{RESPONSES_MAX} responses already run")}),
        );
    }
    state.ctx.ops.put_incident(&opened).await?;
    crate::runtime::notifier::enqueue(
        &state.ctx.ops,
        crate::runtime::notifier::of_incident(&opened),
    )
    .await;
    let app = state.ctx.services.definitions.ops.app_label(&opened.app);
    let classification = crate::model::ops::wire_name(&opened.classification);
    crate::platform::metrics::incident_opened(app, &classification);
    tracing::warn!(incident = %opened.id, app = %opened.app, status = ?opened.status, runbook = ?opened.runbook, "incident opened");
    if opened.status == IncidentStatus::Open {
        start_response(myself, state, opened.id.clone(), 0, None);
    }
    Ok(opened.id)
}

/// The unresolved incident a signal joins instead of opening one: the newest of its group (same
/// fingerprint, seen within [`DEDUP_WINDOW`]), else — one outage, one incident — an open incident
/// of the same app updated within `correlate_secs`, or one whose response is running right now,
/// however long it has run (two responses restarting one app would fight).
async fn joins(
    state: &UplinkRespondState,
    signal: &Signal,
    policy: &IncidentPolicy,
) -> Result<Option<String>, OpsError> {
    let fingerprint = incident::fingerprint(signal, &policy.group_by);
    let wanted = fingerprint.clone();
    let now = Utc::now();
    let window = chrono::Duration::from_std(DEDUP_WINDOW).unwrap_or(chrono::Duration::MAX);
    let (since, app) = (now - window, signal.app.clone());
    let correlate = chrono::Duration::seconds(i64::try_from(policy.correlate_secs).unwrap_or(0));
    let correlated_since = now - correlate;
    let check_correlation = policy.correlate_secs > 0;
    let responding: std::collections::HashSet<String> = state.responses.keys().cloned().collect();
    let candidates = state
        .ctx
        .ops
        .incidents_where(DEDUP_SCAN_MAX, move |i| {
            let grouped = i.fingerprint == wanted && i.updated_at >= since;
            // One waiting for a human's approval takes only its own fingerprint's signals: a new
            // failure of another kind gets a response of its own, not a wait behind the gate.
            let correlated = check_correlation
                && i.app == app
                && i.status == IncidentStatus::Open
                && i.awaiting_step.is_none()
                && (i.updated_at >= correlated_since || responding.contains(&i.id));
            i.status != IncidentStatus::Resolved && (grouped || correlated)
        })
        .await?;
    let grouped = candidates.iter().find(|i| i.fingerprint == fingerprint);
    Ok(grouped.or(candidates.first()).map(|i| i.id.clone()))
}

/// How many incidents of this app and signal opened within `flap_window_secs`, when that is
/// already `flap_max` or more (`None`: not flapping).
async fn flap_count(
    state: &UplinkRespondState,
    signal: &Signal,
    policy: &IncidentPolicy,
) -> Result<Option<usize>, OpsError> {
    if policy.flap_max == 0 {
        return Ok(None);
    }
    let since = incident::window_start(Utc::now(), policy.flap_window_secs);
    let app = signal.app.clone();
    let recent = state
        .ctx
        .ops
        .incidents_where(DEDUP_SCAN_MAX, move |i| {
            i.app == app && i.created_at >= since
        })
        .await?;
    // A person who resolved one of them has looked: the count starts again after that.
    let looked_at = recent
        .iter()
        .filter_map(|i| i.resolved_by.as_ref().map(|mark| mark.at))
        .max();
    let counted = recent
        .iter()
        .filter(|i| looked_at.is_none_or(|at| i.created_at > at))
        .count();
    let limit = usize::try_from(policy.flap_max).unwrap_or(usize::MAX);
    Ok((counted >= limit).then_some(counted))
}

fn start_response(
    myself: &ActorRef<UplinkRespondMsg>,
    state: &mut UplinkRespondState,
    id: String,
    from: usize,
    approved: Option<usize>,
) {
    let (me, incident_id, incident_id_key) = (myself.clone(), id.clone(), id.clone());
    // Its own clock: the response's command seconds (logs, status, checks) are charged after it.
    let mut ctx = state.ctx.clone();
    ctx.provider = ctx.provider.metered();
    let response = async move {
        let outcome = incident::respond(ctx.clone(), id.clone(), from, approved).await;
        billing::charge_response(&ctx.services, &ctx.ops, &id, ctx.provider.command_seconds())
            .await;
        outcome
    };
    let job = spawn_job(response, move |outcome| {
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(panic) => Some(panic),
        };
        let _ = me.cast(UplinkRespondMsg::ResponseDone {
            id: incident_id,
            error,
        });
    });
    state.responses.insert(incident_id_key, job);
}

async fn on_response_failed(
    state: &UplinkRespondState,
    id: &str,
    error: String,
) -> Result<(), OpsError> {
    tracing::error!(incident = %id, %error, "incident response failed");
    let updated = state
        .ctx
        .ops
        .update_incident(id, move |i| {
            i.push_event("needs_human", json!({"reason": error}));
            i.status = IncidentStatus::NeedsHuman;
            i.postmortem = Some(incident::postmortem(i));
        })
        .await?;
    if let Some(incident) = updated {
        let note = crate::runtime::notifier::of_incident(&incident);
        crate::runtime::notifier::enqueue(&state.ctx.ops, note).await;
    }
    Ok(())
}

/// Refuses (`STEP_CHANGED`) an approval of anything but the step the runbook has at `step` now,
/// and shows that step on the incident for a fresh decision.
async fn approval_matches(
    state: &UplinkRespondState,
    incident: &Incident,
    step: usize,
    shown: Option<AwaitingStep>,
) -> Result<(), OpsError> {
    let now = incident::current_step(&state.ctx.services, incident, step);
    if now.is_some() && shown == now {
        return Ok(());
    }
    let message = match (&shown, &now) {
        (_, None) => format!(
            "incident {}: its runbook no longer has step {step}; nothing is approved",
            incident.id
        ),
        (None, Some(now)) => format!(
            "an approval names the step as shown: {{\"step\": {}, \"action\": \"{}\", \"digest\": \"{}\"}}",
            now.step,
            crate::model::ops::wire_name(&now.action),
            now.digest
        ),
        (Some(_), Some(now)) => format!(
            "step {step} of the runbook changed since it was shown (now `{}`, digest {}); look \
             again and approve the step as it is now",
            crate::model::ops::wire_name(&now.action),
            now.digest
        ),
    };
    let data = json!({"step": step, "shown": shown, "now": now});
    state
        .ctx
        .ops
        .update_incident(&incident.id, move |i| {
            i.awaiting = now.clone();
            i.push_event("step.changed", data);
        })
        .await?;
    Err(OpsError::StepChanged(message))
}

/// A person's act on an incident, with their name on it. Resolving stops any response running
/// for it; a resolved incident can only be resolved again (a no-op).
async fn human(
    state: &mut UplinkRespondState,
    id: &str,
    act: HumanAct,
    by: String,
) -> Result<Incident, OpsError> {
    let incident = state
        .ctx
        .ops
        .incident(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident with id `{id}`")))?;
    if incident.status == IncidentStatus::Resolved {
        return match act {
            HumanAct::Resolve => Ok(incident),
            _ => Err(OpsError::InvalidState(format!(
                "incident {id} is resolved; a new failure opens a new incident"
            ))),
        };
    }
    let now = Utc::now();
    let mark = HumanMark { by, at: now };
    let change: Box<dyn FnOnce(&mut Incident) + Send> = match act {
        HumanAct::Acknowledge => Box::new(move |i: &mut Incident| {
            i.push_event("acknowledged", json!({"principal": mark.by}));
            if i.status == IncidentStatus::NeedsHuman {
                i.status = IncidentStatus::Acknowledged;
            }
            i.acknowledged = Some(mark);
        }),
        HumanAct::Resolve => {
            // Its response (if one runs) stops here: a person has decided it is over.
            state.responses.remove(id);
            Box::new(move |i: &mut Incident| {
                i.push_event("resolved", json!({"principal": mark.by, "by_hand": true}));
                i.status = IncidentStatus::Resolved;
                i.resolved_at = Some(mark.at);
                i.awaiting_step = None;
                i.awaiting = None;
                i.resolved_by = Some(mark);
                i.postmortem = Some(incident::postmortem(i));
            })
        }
        HumanAct::Snooze { until } => {
            if until <= now {
                return Err(OpsError::InvalidState(
                    "a snooze ends in the future".to_owned(),
                ));
            }
            Box::new(move |i: &mut Incident| {
                i.push_event("snoozed", json!({"principal": mark.by, "until": until}));
                i.snoozed_until = Some(until);
            })
        }
    };
    tracing::info!(incident = %id, "incident changed by a person");
    state
        .ctx
        .ops
        .update_incident(id, change)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident with id `{id}`")))
}

async fn decide(
    myself: &ActorRef<UplinkRespondMsg>,
    state: &mut UplinkRespondState,
    id: &str,
    approve: bool,
    shown: Option<AwaitingStep>,
    by: Option<String>,
) -> Result<Incident, OpsError> {
    let incident = state
        .ctx
        .ops
        .incident(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident with id `{id}`")))?;
    let step = incident
        .awaiting_step
        .filter(|_| incident.status == IncidentStatus::Open)
        .ok_or_else(|| OpsError::InvalidState(format!("incident {id} waits for no approval")))?;
    if approve {
        approval_matches(state, &incident, step, shown).await?;
    }
    let kind = if approve {
        "step.approved"
    } else {
        "step.rejected"
    };
    let updated = state
        .ctx
        .ops
        .update_incident(id, move |i| {
            i.push_event(kind, json!({"step": step, "principal": by}));
            if !approve {
                i.awaiting_step = None;
                i.status = IncidentStatus::NeedsHuman;
                i.postmortem = Some(incident::postmortem(i));
            }
        })
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident with id `{id}`")))?;
    if approve {
        start_response(myself, state, id.to_owned(), step, Some(step));
    } else {
        let note = crate::runtime::notifier::of_incident(&updated);
        crate::runtime::notifier::enqueue(&state.ctx.ops, note).await;
    }
    Ok(updated)
}
