//! Incidents: signals in (Watch, failed deploys, `POST /v1/alerts` in Alertmanager's or a plain
//! shape), fingerprints for de-duplication, runbook matching, and the response job — diagnose,
//! run the runbook's steps (each an event), resolve once health passes, write the postmortem.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::probe;
use super::provider::{self, ProviderContext};
use crate::model::ops::error::OpsError;
use crate::model::ops::records::{AwaitingStep, Diagnosis, Incident, IncidentStatus, Signal};
use crate::model::ops::spec::{Classification, IncidentPolicy, Runbook, RunbookStep, StepAction};
use crate::runtime::Services;
use crate::storage::ops::OpsStore;

/// Alerts one webhook may carry at most.
pub(crate) const ALERTS_PER_REQUEST_MAX: usize = 100;
/// Labels one signal may carry at most.
pub(crate) const LABELS_MAX: usize = 32;
/// Bytes of a label, name, app or signal at most.
const FIELD_BYTES_MAX: usize = 256;
/// Bytes of a summary at most.
const SUMMARY_BYTES_MAX: usize = 2048;
/// Deploys a diagnosis lists.
const DIAGNOSIS_DEPLOYS_MAX: usize = 5;
/// After its steps, how many health checks an incident waits for before a human takes over.
const RESOLVE_ROUNDS_MAX: u32 = 5;
/// Longest Alertmanager `groupKey` kept (a longer one is ignored: the labels group instead).
const GROUP_KEY_BYTES_MAX: usize = 1024;
/// Pause between those checks.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one call to Uplink-Deploy for a step may take.
const ACTION_CALL_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the response job waits for a restarting persona.
const PERSONA_WAIT: Duration = Duration::from_secs(10);

/// A plain alert: `{app, signal, severity?, summary?, labels?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainAlert {
    app: String,
    signal: String,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// One alert of an Alertmanager webhook (the fields glitchlab reads; the rest is ignored).
#[derive(Debug, Deserialize)]
struct AlertmanagerAlert {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Parses `POST /v1/alerts`: an Alertmanager webhook (it has `alerts`) or a plain alert.
/// Resolved Alertmanager alerts are skipped. `Err` is the reason for a 422.
pub(crate) fn parse_alerts(body: &Value) -> Result<Vec<Signal>, String> {
    let Some(alerts) = body.get("alerts") else {
        let plain: PlainAlert = serde_json::from_value(body.clone()).map_err(|e| e.to_string())?;
        let signal = Signal {
            app: plain.app,
            signal: plain.signal,
            severity: plain.severity.unwrap_or_else(|| "warning".into()),
            summary: plain.summary.unwrap_or_default(),
            labels: plain.labels,
            source: "api".into(),
            deploy: None,
            at: Utc::now(),
            group: None,
        };
        check_signal(&signal)?;
        return Ok(vec![signal]);
    };
    let alerts: Vec<AlertmanagerAlert> =
        serde_json::from_value(alerts.clone()).map_err(|e| format!("alerts: {e}"))?;
    if alerts.len() > ALERTS_PER_REQUEST_MAX {
        return Err(format!(
            "at most {ALERTS_PER_REQUEST_MAX} alerts per request"
        ));
    }
    let group = body
        .get("groupKey")
        .and_then(Value::as_str)
        .filter(|key| !key.is_empty() && key.len() <= GROUP_KEY_BYTES_MAX)
        .map(str::to_owned);
    let mut signals = Vec::new();
    for alert in alerts {
        if alert.status.as_deref() == Some("resolved") {
            continue;
        }
        let mut signal = from_alertmanager(alert)?;
        signal.group = group.clone();
        check_signal(&signal)?;
        signals.push(signal);
    }
    Ok(signals)
}

fn from_alertmanager(alert: AlertmanagerAlert) -> Result<Signal, String> {
    let labels = alert.labels;
    let name = labels
        .get("alertname")
        .cloned()
        .ok_or("an Alertmanager alert needs the label `alertname`")?;
    let app = ["app", "service", "job"]
        .iter()
        .find_map(|key| labels.get(*key).cloned())
        .unwrap_or_else(|| "unknown".into());
    let summary = ["summary", "description"]
        .iter()
        .find_map(|key| alert.annotations.get(*key).cloned())
        .unwrap_or_default();
    Ok(Signal {
        app,
        signal: name,
        severity: labels
            .get("severity")
            .cloned()
            .unwrap_or_else(|| "warning".into()),
        summary,
        labels,
        source: "alertmanager".into(),
        deploy: None,
        at: Utc::now(),
        group: None,
    })
}

fn check_signal(signal: &Signal) -> Result<(), String> {
    let short = [&signal.app, &signal.signal, &signal.severity];
    if signal.app.is_empty() || signal.signal.is_empty() {
        return Err("app and signal must not be empty".into());
    }
    if short.iter().any(|f| f.len() > FIELD_BYTES_MAX) || signal.summary.len() > SUMMARY_BYTES_MAX {
        return Err("a field is over its size limit".into());
    }
    let labels_too_long = signal
        .labels
        .iter()
        .any(|(k, v)| k.len() > FIELD_BYTES_MAX || v.len() > FIELD_BYTES_MAX);
    if signal.labels.len() > LABELS_MAX || labels_too_long {
        return Err(format!(
            "at most {LABELS_MAX} labels of {FIELD_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

/// What makes two signals "the same problem": the app and what `incidents.group_by` names
/// (signal name, labels) — always the configured grouping. Alertmanager's `groupKey` is kept on
/// the signal but decides nothing: a key per instance would split one problem into hundreds of
/// incidents, and a constant key would merge unrelated ones.
pub(crate) fn fingerprint(signal: &Signal, group_by: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(signal.app.as_bytes());
    for key in group_by {
        let value = match key.as_str() {
            "app" => continue,
            "signal" => Some(&signal.signal),
            label => signal.labels.get(label),
        };
        hasher.update([0]);
        hasher.update(key.as_bytes());
        hasher.update([b'=']);
        hasher.update(value.map_or(&b""[..], |v| v.as_bytes()));
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The first runbook whose `match` agrees with the signal.
pub(crate) fn match_runbook<'a>(runbooks: &'a [Runbook], signal: &Signal) -> Option<&'a Runbook> {
    runbooks.iter().find(|runbook| {
        let matcher = &runbook.matcher;
        matcher.signal == signal.signal
            && matcher.app.as_ref().is_none_or(|app| *app == signal.app)
            && matcher
                .labels
                .iter()
                .all(|(key, value)| signal.labels.get(key) == Some(value))
    })
}

/// A new incident for a first signal.
pub(crate) fn open(signal: Signal, runbook: Option<&Runbook>, group_by: &[String]) -> Incident {
    let now = Utc::now();
    let mut incident = Incident {
        id: uuid::Uuid::now_v7().to_string(),
        app: signal.app.clone(),
        status: if runbook.is_some() {
            IncidentStatus::Open
        } else {
            IncidentStatus::NeedsHuman
        },
        fingerprint: fingerprint(&signal, group_by),
        classification: runbook.map(|r| r.classify),
        runbook: runbook.map(|r| r.name.clone()),
        signals: Vec::new(),
        signal_count: 1,
        events: Vec::new(),
        diagnosis: None,
        awaiting_step: None,
        awaiting: None,
        acknowledged: None,
        snoozed_until: None,
        resolved_by: None,
        postmortem: None,
        task_id: None,
        actions: Vec::new(),
        deploy: signal.deploy.clone(),
        created_at: now,
        updated_at: now,
        resolved_at: None,
    };
    incident.push_event(
        "incident.opened",
        json!({"signal": signal.signal, "source": signal.source, "summary": signal.summary}),
    );
    match runbook {
        Some(runbook) => incident.push_event(
            "classified",
            json!({"runbook": runbook.name, "classification": runbook.classify}),
        ),
        None => incident.push_event(
            "needs_human",
            json!({"reason": "no runbook matches this signal; nothing was done automatically"}),
        ),
    }
    incident.signals.push(signal);
    incident
}

/// Where a response cut off by a crash picks up: after the last finished step (the one that was
/// running runs again), with a step a human already approved still approved.
pub(crate) fn resume_point(incident: &Incident) -> (usize, Option<usize>) {
    let step_of = |detail: &Value| {
        detail
            .get("step")
            .and_then(Value::as_u64)
            .and_then(|step| usize::try_from(step).ok())
    };
    let from = incident
        .events
        .iter()
        .filter(|e| e.kind == "step.finished")
        .filter_map(|e| step_of(&e.detail))
        .max()
        .map_or(0, |last| last + 1);
    let approved = incident
        .events
        .iter()
        .any(|e| e.kind == "step.approved" && step_of(&e.detail) == Some(from))
        .then_some(from);
    (from, approved)
}

/// What one app's automatic actions used within the budget window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActionUse {
    /// Acting steps started.
    pub count: u64,
    /// Their ledger cost, micro-tokens.
    pub cost: u64,
}

/// Sums the automatic actions `incidents` record as started at or after `since` (the window is
/// sliding: an action leaves the count once it is older than the window).
pub(crate) fn actions_used(incidents: &[Incident], since: DateTime<Utc>) -> ActionUse {
    incidents
        .iter()
        .flat_map(|incident| &incident.actions)
        .filter(|action| action.at >= since)
        .fold(ActionUse::default(), |used, action| ActionUse {
            count: used.count.saturating_add(1),
            cost: used.cost.saturating_add(action.cost),
        })
}

/// The budget that ran out, if one did: its setting's name and a reason a human reads. A budget
/// is spent once what the window used reaches it (the next action could not be told apart from
/// one that fits); `0` turns one off.
pub(crate) fn budget_spent(
    used: ActionUse,
    policy: &IncidentPolicy,
) -> Option<(&'static str, String)> {
    let window = policy.actions_window_secs;
    if policy.actions_max > 0 && used.count >= u64::from(policy.actions_max) {
        return Some((
            "actions_max",
            format!(
                "action budget spent: {} automatic actions within {window} s (incidents.actions_max \
                 is {}); nothing more is done automatically for this app until older actions \
                 leave the window or a human acts",
                used.count, policy.actions_max
            ),
        ));
    }
    if policy.actions_cost_max > 0 && used.cost >= policy.actions_cost_max {
        return Some((
            "actions_cost_max",
            format!(
                "action cost budget spent: automatic actions cost {} micro-tokens within {window} \
                 s (incidents.actions_cost_max is {}); nothing more is done automatically for \
                 this app until older actions leave the window or a human acts",
                used.cost, policy.actions_cost_max
            ),
        ));
    }
    None
}

/// Where a window of `secs` seconds ending `now` starts (the beginning of time for a window too
/// long to compute).
pub(crate) fn window_start(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|window| now.checked_sub_signed(window))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether `app`'s automatic-action budget is spent, counted from the stored incidents (so the
/// count survives a restart): `Some((setting, reason))` when it is.
pub(crate) async fn action_budget_spent(
    ops: &OpsStore,
    app: &str,
    policy: &IncidentPolicy,
) -> Result<Option<(&'static str, String)>, OpsError> {
    if policy.actions_max == 0 && policy.actions_cost_max == 0 {
        return Ok(None);
    }
    let since = window_start(Utc::now(), policy.actions_window_secs);
    let app = app.to_owned();
    let acted = ops
        .incidents_where(crate::model::ops::records::LIST_LIMIT_MAX, move |i| {
            i.app == app && i.updated_at >= since && i.actions.iter().any(|a| a.at >= since)
        })
        .await?;
    Ok(budget_spent(actions_used(&acted, since), policy))
}

/// Marks an incident `needs_human` because `setting`'s budget is spent (an event naming it).
pub(crate) fn hand_over_for_budget(incident: &mut Incident, setting: &str, reason: &str) {
    incident.status = IncidentStatus::NeedsHuman;
    incident.push_event("needs_human", json!({"reason": reason, "budget": setting}));
}

/// What the response job needs.
#[derive(Clone)]
pub(crate) struct RespondContext {
    /// Store, directory, config, definitions.
    pub services: Services,
    /// Provider plumbing (logs, health).
    pub provider: ProviderContext,
    /// Where incidents go.
    pub ops: OpsStore,
}

/// Runs incident `id`'s runbook from step `from` (`approved`: a gated step a human approved).
pub(crate) async fn respond(
    ctx: RespondContext,
    id: String,
    from: usize,
    approved: Option<usize>,
) -> Result<(), OpsError> {
    let incident = ctx
        .ops
        .incident(&id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident {id}")))?;
    let runbook = incident
        .runbook
        .as_ref()
        .and_then(|name| {
            ctx.services
                .definitions
                .runbooks
                .iter()
                .find(|r| &r.name == name)
        })
        .cloned()
        .ok_or_else(|| OpsError::NotFound(format!("incident {id} has no runbook")))?;
    if from == 0 {
        let diagnosis = diagnose(&ctx, &incident.app).await?;
        ctx.ops
            .update_incident(&id, move |i| {
                i.diagnosis = Some(diagnosis.clone());
                i.push_event(
                    "diagnosed",
                    json!({"log_lines": diagnosis.log_lines.len(), "deploys": diagnosis.deploys.len(), "checks": diagnosis.checks.len()}),
                );
            })
            .await?;
    }
    for (index, step) in runbook.steps.iter().enumerate().skip(from) {
        if step.needs_approval() && approved != Some(index) {
            let awaiting = awaiting_step(&runbook.name, index, step);
            let data = json!({"step": index, "action": step.action, "digest": awaiting.digest});
            ctx.ops
                .update_incident(&id, move |i| {
                    i.awaiting_step = Some(index);
                    i.awaiting = Some(awaiting);
                    i.push_event("step.awaiting_approval", data);
                })
                .await?;
            return Ok(());
        }
        if step.action.acts() {
            let policy = &ctx.services.definitions.ops.incidents;
            if let Some((setting, reason)) =
                action_budget_spent(&ctx.ops, &incident.app, policy).await?
            {
                tracing::warn!(incident = %id, app = %incident.app, setting, "action budget spent");
                ctx.ops
                    .update_incident(&id, move |i| {
                        hand_over_for_budget(i, setting, &reason);
                        i.postmortem = Some(postmortem(i));
                    })
                    .await?;
                return Ok(());
            }
        }
        if let Some(target) = run_step(&ctx, &id, index, step).await? {
            // A `check` that finds the app healthy ends the runbook: nothing left to fix.
            return finish(&ctx, &id, true, target).await;
        }
    }
    resolve(&ctx, &id).await
}

/// The gated step `index` of runbook `runbook` as shown for approval, with its digest: the
/// runbook's name, the index and the step as configured, hashed (first 16 bytes, hex).
pub(crate) fn awaiting_step(runbook: &str, index: usize, step: &RunbookStep) -> AwaitingStep {
    let mut digest = Sha256::new();
    digest.update(runbook.as_bytes());
    digest.update([0]);
    digest.update(index.to_string().as_bytes());
    digest.update([0]);
    digest.update(serde_json::to_vec(step).unwrap_or_default());
    AwaitingStep {
        step: index,
        action: step.action,
        digest: hex::encode(&digest.finalize()[..16]),
    }
}

/// The step `index` of incident's runbook as configured now, as it would be shown: what an
/// approval is checked against. `None` when the runbook or the step is gone.
pub(crate) fn current_step(
    services: &Services,
    incident: &Incident,
    index: usize,
) -> Option<AwaitingStep> {
    let name = incident.runbook.as_ref()?;
    let runbook = services
        .definitions
        .runbooks
        .iter()
        .find(|r| &r.name == name)?;
    let step = runbook.steps.get(index)?;
    Some(awaiting_step(name, index, step))
}

/// Runs one step and records it; `Some(target)` when it was a `check` that found the app
/// healthy there.
async fn run_step(
    ctx: &RespondContext,
    id: &str,
    index: usize,
    step: &RunbookStep,
) -> Result<Option<String>, OpsError> {
    let data = json!({"step": index, "action": step.action});
    let action = step.action;
    ctx.ops
        .update_incident(id, move |i| {
            i.awaiting_step = None;
            i.awaiting = None;
            i.push_event("step.started", data);
            if action.acts() {
                i.action_started(index, action);
            }
        })
        .await?;
    let incident = ctx
        .ops
        .incident(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident {id}")))?;
    let result = step_action(ctx, &incident, step).await;
    let (outcome, detail, cost, healthy_at) = match &result {
        Ok(effect) => (
            "ok",
            effect.detail.clone(),
            effect.cost,
            effect.healthy_at.clone(),
        ),
        Err(error) => ("failed", format!("{}: {error}", error.code()), 0, None),
    };
    tracing::info!(incident = %id, step = index, action = ?step.action, outcome, "runbook step");
    let mut data =
        json!({"step": index, "action": step.action, "outcome": outcome, "detail": detail});
    if cost > 0 {
        data["cost"] = json!(cost);
    }
    ctx.ops
        .update_incident(id, move |i| {
            i.push_event("step.finished", data);
            if cost > 0 {
                i.action_cost(index, cost);
            }
        })
        .await?;
    Ok(healthy_at)
}

/// What a step did.
struct StepEffect {
    /// For the timeline.
    detail: String,
    /// The ledger cost it ran up that counts against the app's action budget.
    cost: u64,
    /// A `check` that found the app healthy: where.
    healthy_at: Option<String>,
}

/// Runs one step: what it did, and the ledger cost it ran up that counts against the app's
/// action budget.
async fn step_action(
    ctx: &RespondContext,
    incident: &Incident,
    step: &RunbookStep,
) -> Result<StepEffect, OpsError> {
    if step.action == StepAction::CreateTask {
        let (detail, cost) = create_task(ctx, incident, step).await?;
        return Ok(StepEffect {
            detail,
            cost,
            healthy_at: None,
        });
    }
    if step.action == StepAction::Check {
        let health = app_health(ctx, &incident.app).await?;
        let verdict = if health.healthy {
            "healthy"
        } else {
            "unhealthy"
        };
        return Ok(StepEffect {
            detail: format!(
                "{} is {verdict} ({} probes)",
                health.target,
                health.probes.len()
            ),
            cost: 0,
            healthy_at: health.healthy.then_some(health.target),
        });
    }
    step_effect(ctx, incident, step)
        .await
        .map(|detail| StepEffect {
            detail,
            cost: 0,
            healthy_at: None,
        })
}

/// What a step did ([`step_action`] takes create_task itself, for its cost).
async fn step_effect(
    ctx: &RespondContext,
    incident: &Incident,
    step: &RunbookStep,
) -> Result<String, OpsError> {
    use crate::runtime::uplink_deploy::{act, AppAction};
    let directory = &ctx.services.directory;
    match step.action {
        StepAction::Restart => {
            act(
                directory,
                &incident.app,
                AppAction::Restart,
                ACTION_CALL_TIMEOUT,
            )
            .await
        }
        StepAction::Rollback => {
            act(
                directory,
                &incident.app,
                AppAction::Rollback,
                ACTION_CALL_TIMEOUT,
            )
            .await
        }
        StepAction::Scale => {
            let count = step.count.unwrap_or(1);
            act(
                directory,
                &incident.app,
                AppAction::Scale(count),
                ACTION_CALL_TIMEOUT,
            )
            .await
        }
        StepAction::Wait => {
            let seconds = step
                .seconds
                .unwrap_or(0)
                .min(crate::model::ops::spec::WAIT_STEP_SECS_MAX);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            Ok(format!("waited {seconds}s"))
        }
        StepAction::Check => Ok("checked by step_action".to_owned()),
        StepAction::CreateTask => create_task(ctx, incident, step).await.map(|(d, _)| d),
        StepAction::Notify => {
            let message = step.message.clone().unwrap_or_else(|| {
                format!(
                    "incident {} on `{}` needs attention",
                    incident.id, incident.app
                )
            });
            tracing::warn!(incident = %incident.id, app = %incident.app, %message, "notify");
            Ok(message)
        }
    }
}

async fn app_health(
    ctx: &RespondContext,
    app: &str,
) -> Result<crate::model::ops::records::HealthResult, OpsError> {
    let spec = ctx
        .services
        .definitions
        .ops
        .apps
        .get(app)
        .ok_or_else(|| OpsError::UnknownApp(app.to_owned()))?;
    Ok(probe::app_health(&ctx.provider, app, spec).await)
}

async fn diagnose(ctx: &RespondContext, app: &str) -> Result<Diagnosis, OpsError> {
    let Some(spec) = ctx.services.definitions.ops.apps.get(app) else {
        return Ok(Diagnosis::default());
    };
    let log_lines = provider::recent_logs(&ctx.provider, app, spec).await;
    let mut deploys: Vec<Value> = ctx
        .ops
        .deploys_of(app)
        .await?
        .iter()
        .rev()
        .take(DIAGNOSIS_DEPLOYS_MAX)
        .map(super::deploy::summary)
        .collect();
    deploys.truncate(DIAGNOSIS_DEPLOYS_MAX);
    let mut checks = Vec::new();
    for check in &spec.checks {
        if let Some(latest) = ctx
            .ops
            .check_history(app, &check.name)
            .await?
            .into_iter()
            .next()
        {
            checks.push(latest);
        }
    }
    Ok(Diagnosis {
        log_lines,
        deploys,
        checks,
    })
}

/// Files the bugfix task: what was filed, and what it reserved (0 for a replay whose
/// reservation this incident already counted; a replay after a crash cut the first filing off
/// before its cost was recorded counts it now).
async fn create_task(
    ctx: &RespondContext,
    incident: &Incident,
    step: &RunbookStep,
) -> Result<(String, u64), OpsError> {
    use crate::model::task::{CausedBy, Priority, ReviewPolicy};
    use crate::runtime::compass::CompassMsg;
    use crate::work::intake::{printable, SubmitTaskRequest, Text};
    let spec = ctx
        .services
        .definitions
        .ops
        .apps
        .get(&incident.app)
        .ok_or_else(|| OpsError::UnknownApp(incident.app.clone()))?;
    let compass: ractor::ActorRef<CompassMsg> =
        crate::runtime::current_persona(&ctx.services.directory, PERSONA_WAIT).await?;
    let first = incident.signals.first();
    let signal = first.map_or("signal", |s| s.signal.as_str());
    // Alerts and log lines are anybody's text: what intake would refuse is replaced, not refused.
    let request = SubmitTaskRequest {
        title: printable(&format!("Fix {signal} on {}", incident.app), Text::Line),
        description: printable(&task_description(incident, step), Text::Lines),
        repo: spec.repo.display().to_string(),
        base_branch: Some(spec.branch.clone()),
        kind: Some("bugfix".into()),
        priority: Some(match incident.classification {
            Some(Classification::Outage) => Priority::High,
            _ => Priority::Medium,
        }),
        verify: spec.verify.clone(),
        max_attempts: None,
        engines: None,
        idempotency_key: Some(format!("incident-{}", incident.id)),
        deps: None,
        review_policy: Some(ReviewPolicy::Manual),
        delivery: None,
        pull_request: None,
        caused_by: Some(CausedBy {
            incident: incident.id.clone(),
            deploy: incident.deploy.clone(),
        }),
        deploy: None,
        capabilities: None,
        account: None,
        budget: None,
        parent_task: None,
        acceptance: None,
    };
    let accepted = crate::work::intake::submit(&ctx.services, &compass, request, None)
        .await
        .map_err(|e| OpsError::Provider(format!("{}: {e}", e.code())))?;
    let task_id = accepted.task.id.to_string();
    let counted = incident
        .actions
        .iter()
        .any(|a| a.action == StepAction::CreateTask && a.cost > 0);
    let reserved = if accepted.replayed && counted {
        0
    } else {
        accepted.task.billing.budget.max_cost
    };
    let recorded = task_id.clone();
    ctx.ops
        .update_incident(&incident.id, move |i| i.task_id = Some(recorded.clone()))
        .await?;
    Ok((format!("filed bugfix task {task_id}"), reserved))
}

fn task_description(incident: &Incident, step: &RunbookStep) -> String {
    let mut text = format!(
        "Incident {} on app `{}` ({}).\n",
        incident.id,
        incident.app,
        crate::model::ops::wire_name(&incident.classification)
    );
    if let Some(message) = &step.message {
        text.push_str(&format!("{message}\n"));
    }
    for signal in incident.signals.iter().take(5) {
        text.push_str(&format!(
            "- signal {} from {}: {}\n",
            signal.signal, signal.source, signal.summary
        ));
    }
    if let Some(deploy) = &incident.deploy {
        text.push_str(&format!("Caused by deploy {deploy}.\n"));
    }
    if let Some(diagnosis) = &incident.diagnosis {
        text.push_str("Recent log lines:\n");
        for line in diagnosis.log_lines.iter().rev().take(20).rev() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text
}

/// After the steps: resolved once health passes (bounded rounds), else a human takes over.
async fn resolve(ctx: &RespondContext, id: &str) -> Result<(), OpsError> {
    let incident = ctx
        .ops
        .incident(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no incident {id}")))?;
    let mut healthy = false;
    let mut target = String::new();
    for round in 0..RESOLVE_ROUNDS_MAX {
        if round > 0 {
            tokio::time::sleep(RESOLVE_INTERVAL).await;
        }
        match app_health(ctx, &incident.app).await {
            Ok(health) => {
                target = health.target.clone();
                if health.healthy {
                    healthy = true;
                    break;
                }
            }
            Err(error) => {
                target = error.to_string();
                break;
            }
        }
    }
    finish(ctx, id, healthy, target).await
}

/// Ends the response: resolved when healthy, else a human takes over; the postmortem written.
async fn finish(
    ctx: &RespondContext,
    id: &str,
    healthy: bool,
    target: String,
) -> Result<(), OpsError> {
    let (status, kind) = if healthy {
        (IncidentStatus::Resolved, "resolved")
    } else {
        (IncidentStatus::NeedsHuman, "needs_human")
    };
    ctx.ops
        .update_incident(id, move |i| {
            i.push_event(kind, json!({"health": target, "healthy": healthy}));
            i.status = status;
            if healthy {
                i.resolved_at = Some(Utc::now());
            }
            i.postmortem = Some(postmortem(i));
        })
        .await?;
    tracing::info!(incident = %id, status = kind, "incident response finished");
    Ok(())
}

/// The postmortem: timeline, cause signals, actions, outcome.
pub(crate) fn postmortem(incident: &Incident) -> String {
    let mut text = format!("# Incident {} — `{}`\n\n", incident.id, incident.app);
    text.push_str(&format!(
        "- Status: {}\n- Classification: {}\n- Runbook: {}\n- Opened: {}\n",
        crate::model::ops::wire_name(&incident.status),
        crate::model::ops::wire_name(&incident.classification),
        incident.runbook.as_deref().unwrap_or("none"),
        incident.created_at
    ));
    if let Some(deploy) = &incident.deploy {
        text.push_str(&format!("- Deploy: {deploy}\n"));
    }
    text.push_str("\n## Timeline\n\n");
    for event in &incident.events {
        text.push_str(&format!(
            "- {} `{}` {}\n",
            event.at.format("%H:%M:%S%.3f"),
            event.kind,
            event.detail
        ));
    }
    text.push_str(&format!(
        "\n## Cause signals ({} received)\n\n",
        incident.signal_count
    ));
    for signal in &incident.signals {
        text.push_str(&format!(
            "- {} `{}` ({}, from {}): {}\n",
            signal.at.format("%H:%M:%S"),
            signal.signal,
            signal.severity,
            signal.source,
            signal.summary
        ));
    }
    text.push_str("\n## Actions\n\n");
    for event in incident.events.iter().filter(|e| e.kind == "step.finished") {
        text.push_str(&format!(
            "- {} → {}: {}\n",
            event.detail["action"], event.detail["outcome"], event.detail["detail"]
        ));
    }
    text.push_str("\n## Outcome\n\n");
    text.push_str(&match incident.status {
        IncidentStatus::Resolved => "Health passes again; the incident is resolved.\n".to_owned(),
        _ => "Health did not pass after the runbook; a human takes over.\n".to_owned(),
    });
    if let Some(task) = &incident.task_id {
        text.push_str(&format!("Follow-up bugfix task: {task}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_response_resumes_after_its_last_finished_step() {
        let signal = parse_alerts(&json!({"app": "web", "signal": "x"}))
            .unwrap()
            .remove(0);
        let mut incident = open(signal, None, &[]);
        assert_eq!(resume_point(&incident), (0, None));
        incident.push_event("step.started", json!({"step": 0}));
        assert_eq!(resume_point(&incident), (0, None), "step 0 runs again");
        incident.push_event("step.finished", json!({"step": 0}));
        incident.push_event("step.finished", json!({"step": 1}));
        incident.push_event("step.approved", json!({"step": 2}));
        incident.push_event("step.started", json!({"step": 2}));
        assert_eq!(resume_point(&incident), (2, Some(2)));
    }

    fn incident_with_actions(actions: &[(i64, StepAction, u64)]) -> Incident {
        let signal = parse_alerts(&json!({"app": "web", "signal": "x"}))
            .unwrap()
            .remove(0);
        let mut incident = open(signal, None, &[]);
        let now = Utc::now();
        for (step, (ago, action, cost)) in actions.iter().enumerate() {
            incident.action_started(step, *action);
            incident.action_cost(step, *cost);
            incident.actions[step].at = now - chrono::Duration::seconds(*ago);
        }
        incident
    }

    #[test]
    fn the_action_budget_counts_only_acting_steps_inside_the_window() {
        let policy = IncidentPolicy {
            actions_max: 3,
            actions_cost_max: 25,
            actions_window_secs: 600,
            ..IncidentPolicy::default()
        };
        let since = Utc::now() - chrono::Duration::seconds(600);
        let a = incident_with_actions(&[
            (10, StepAction::Restart, 0),
            (700, StepAction::CreateTask, 100),
        ]);
        let b = incident_with_actions(&[(599, StepAction::CreateTask, 10)]);
        let used = actions_used(&[a.clone(), b.clone()], since);
        assert_eq!(
            used,
            ActionUse { count: 2, cost: 10 },
            "the 700 s old task is out"
        );
        assert_eq!(budget_spent(used, &policy), None);
        // The third action in the window spends the count budget.
        let c = incident_with_actions(&[(1, StepAction::Rollback, 0)]);
        let used = actions_used(&[a.clone(), b.clone(), c], since);
        assert_eq!(used.count, 3);
        let (setting, reason) = budget_spent(used, &policy).unwrap();
        assert_eq!(setting, "actions_max");
        assert!(reason.contains("incidents.actions_max is 3"), "{reason}");
        // Cost reaching its budget spends it, with the count still under its own.
        let d = incident_with_actions(&[(5, StepAction::CreateTask, 15)]);
        let used = actions_used(&[b.clone(), d], since);
        assert_eq!(used, ActionUse { count: 2, cost: 25 });
        assert_eq!(budget_spent(used, &policy).unwrap().0, "actions_cost_max");
        // 0 turns a budget off.
        let off = IncidentPolicy {
            actions_max: 0,
            actions_cost_max: 0,
            ..policy
        };
        let huge = ActionUse {
            count: u64::MAX,
            cost: u64::MAX,
        };
        assert_eq!(budget_spent(huge, &off), None);
    }

    #[test]
    fn a_window_too_long_to_compute_starts_at_the_beginning_of_time() {
        let now = Utc::now();
        assert_eq!(
            window_start(now, 3600),
            now - chrono::Duration::seconds(3600)
        );
        assert_eq!(window_start(now, 0), now);
        assert_eq!(window_start(now, u64::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            window_start(now, u64::try_from(i64::MAX).unwrap()),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn only_restart_rollback_scale_and_create_task_act() {
        use StepAction::*;
        let acting: Vec<StepAction> = [Restart, Rollback, Scale, Wait, Check, CreateTask, Notify]
            .into_iter()
            .filter(|a| a.acts())
            .collect();
        assert_eq!(acting, vec![Restart, Rollback, Scale, CreateTask]);
    }

    #[test]
    fn a_rerun_steps_cost_lands_on_its_latest_run() {
        let mut incident = incident_with_actions(&[]);
        incident.action_started(0, StepAction::CreateTask);
        incident.action_started(0, StepAction::CreateTask);
        incident.action_cost(0, 7);
        assert_eq!(incident.actions[0].cost, 0);
        assert_eq!(incident.actions[1].cost, 7);
        for _ in 0..crate::model::ops::records::INCIDENT_ACTIONS_MAX + 5 {
            incident.action_started(1, StepAction::Restart);
        }
        assert_eq!(
            incident.actions.len(),
            crate::model::ops::records::INCIDENT_ACTIONS_MAX
        );
    }

    #[test]
    fn alertmanager_and_plain_alerts_parse() {
        let webhook = json!({"version": "4", "status": "firing", "alerts": [
            {"status": "firing", "labels": {"alertname": "HighLatency", "app": "web", "severity": "critical"},
             "annotations": {"summary": "p99 over 2s"}, "startsAt": "2024-01-01T00:00:00Z"},
            {"status": "resolved", "labels": {"alertname": "Old"}}
        ]});
        let signals = parse_alerts(&webhook).unwrap();
        assert_eq!(signals.len(), 1);
        assert_eq!(signals[0].app, "web");
        assert_eq!(signals[0].signal, "HighLatency");
        assert_eq!(signals[0].severity, "critical");
        let plain = parse_alerts(&json!({"app": "web", "signal": "x"})).unwrap();
        assert_eq!(plain[0].source, "api");
        assert!(parse_alerts(&json!({"app": "web"})).is_err());
    }

    #[test]
    fn incidents_group_by_app_and_signal_or_the_labels_named_never_alertmanagers_group() {
        let mut a =
            parse_alerts(&json!({"app": "web", "signal": "x", "labels": {"k": "v"}})).unwrap();
        let mut b =
            parse_alerts(&json!({"app": "web", "signal": "x", "labels": {"k": "v"}})).unwrap();
        let by_label: Vec<String> = ["app", "signal", "k"].map(String::from).to_vec();
        assert_eq!(fingerprint(&a[0], &by_label), fingerprint(&b[0], &by_label));
        a[0].labels.insert("k".into(), "w".into());
        assert_ne!(fingerprint(&a[0], &by_label), fingerprint(&b[0], &by_label));
        // The default groups by app and signal: labels alone make no new incident.
        let default = crate::model::ops::spec::IncidentPolicy::default().group_by;
        assert_eq!(fingerprint(&a[0], &default), fingerprint(&b[0], &default));
        b[0].signal = "y".into();
        assert_ne!(fingerprint(&a[0], &default), fingerprint(&b[0], &default));
        // Alertmanager's groupKey decides nothing: one key per instance is still one problem,
        // one key for everything still two.
        a[0].group = Some("{}:{instance=\"a\"}".into());
        let mut c = a[0].clone();
        c.group = Some("{}:{instance=\"b\"}".into());
        assert_eq!(fingerprint(&a[0], &default), fingerprint(&c, &default));
        b[0].group = a[0].group.clone();
        assert_ne!(fingerprint(&a[0], &default), fingerprint(&b[0], &default));
    }
}
