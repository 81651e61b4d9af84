//! Uplink-Respond: incidents. Signals come from Uplink-Watch, from failed deploys and from
//! `POST /v1/alerts`; a repeat of an unresolved incident's fingerprint within
//! [`DEDUP_WINDOW`] attaches to it. A new incident is classified by the first matching runbook
//! (none → `needs_human`, nothing done); an app that is flapping, or whose automatic-action
//! budget (`incidents.actions_max`, `actions_cost_max` per `actions_window_secs`, counted from
//! the stored incidents) is spent, goes to a human too. Otherwise its response — diagnose,
//! steps (each acting step checks the budget again), resolve, postmortem — runs in a job
//! ([`crate::work::ops::incident::respond`]).
//!
//! # Restart story
//!
//! - **State:** the response jobs in flight, per incident. Incidents live in the store.
//! - **On a crash:** the response jobs are aborted. The next incarnation ([`Actor::post_start`])
//!   resumes every open incident that is not waiting for an approval after its last finished
//!   step.
//! - **Callers:** the clients in [`crate::runtime::uplink_respond`] wait for the next incarnation;
//!   a signal lost with the crash is logged by its sender (`send_signals`), and an alert is
//!   answered `PERSONA_UNAVAILABLE` so the sender retries.
//! - **Policy:** Compass restarts it after `supervision.backoff_base_ms × 2^n` (capped at
//!   `backoff_max_ms`), at most `max_restarts` times in `window_secs`; past that it is `failed`
//!   (`/readyz` 503, calls answer `PERSONA_UNAVAILABLE`) until `revive_after_secs` passes
//!   ([`crate::runtime::supervision`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use crate::model::ops::error::OpsError;
use crate::model::ops::records::{Incident, IncidentStatus, Signal};
use crate::model::ops::spec::IncidentPolicy;
use crate::model::persona::Persona;
use crate::runtime::jobs::spawn_job;
use crate::runtime::uplink_respond::UplinkRespondMsg;
use crate::runtime::Services;
use crate::storage::ops::OpsStore;
use crate::work::ops::billing;
use crate::work::ops::incident::{self, RespondContext};
use crate::work::ops::provider::{LocalRuntime, ProviderContext};

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
                let mut ids = Vec::new();
                let mut outcome = Ok(());
                for signal in signals {
                    match on_signal(&myself, state, signal).await {
                        Ok(id) => ids.push(id),
                        Err(error) => {
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome.map(|()| ids));
                }
            }
            UplinkRespondMsg::Decide {
                id,
                approve,
                by,
                reply,
            } => {
                let outcome = decide(&myself, state, &id, approve, by).await;
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

async fn on_signal(
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
            let correlated = check_correlation
                && i.app == app
                && i.status == IncidentStatus::Open
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
    let (app, name) = (signal.app.clone(), signal.signal.clone());
    let recent = state
        .ctx
        .ops
        .incidents_where(DEDUP_SCAN_MAX, move |i| {
            i.app == app
                && i.created_at >= since
                && i.signals.first().is_some_and(|s| s.signal == name)
        })
        .await?;
    let limit = usize::try_from(policy.flap_max).unwrap_or(usize::MAX);
    Ok((recent.len() >= limit).then_some(recent.len()))
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
    state
        .ctx
        .ops
        .update_incident(id, move |i| {
            i.push_event("needs_human", json!({"reason": error}));
            i.status = IncidentStatus::NeedsHuman;
            i.postmortem = Some(incident::postmortem(i));
        })
        .await?;
    Ok(())
}

async fn decide(
    myself: &ActorRef<UplinkRespondMsg>,
    state: &mut UplinkRespondState,
    id: &str,
    approve: bool,
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
    }
    Ok(updated)
}
