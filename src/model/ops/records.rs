//! What ops records: deploys, incidents, check results, release state. Plain data; the store
//! keeps them in its ops tables ([`crate::storage::ops`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::Classification;
use crate::model::task::ErrorInfo;

/// Results kept per check; older ones are dropped.
pub(crate) const CHECK_HISTORY_MAX: usize = 50;
/// Deploy records kept per app (what burn-in, dispatch and the app's deploy list read on every
/// request, so it must stay small); older *ended* ones are dropped, never one still awaiting
/// approval, queued or running. What the dropped ones count for is kept in [`PrunedDeploys`].
/// 50, like [`CHECK_HISTORY_MAX`]: far more than the 5 an incident's diagnosis shows or the 17
/// (16 waiting + 1 running) an app can have unfinished.
pub(crate) const DEPLOY_HISTORY_MAX: usize = 50;
/// Signals kept on one incident (a repeat past it only bumps `signal_count`).
pub(crate) const INCIDENT_SIGNALS_MAX: usize = 50;
/// Events kept on one incident.
pub(crate) const INCIDENT_EVENTS_MAX: usize = 200;
/// Automatic actions kept on one incident (the oldest dropped past it; a runbook has far fewer
/// steps, so only a response resumed or approved many times gets there).
pub(crate) const INCIDENT_ACTIONS_MAX: usize = 50;
/// Records a list answers at most.
pub(crate) const LIST_LIMIT_MAX: usize = 200;

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeployStatus {
    /// Waits for `POST /v1/deploys/{id}/approve` (burn-in gate).
    AwaitingApproval,
    /// Waits for the app's previous deploy to end.
    Queued,
    /// Precheck, drain, deploy or health check in progress.
    Running,
    /// The release is up and passed its health check.
    Healthy,
    /// The release failed its health check; the previous healthy release is back.
    RolledBack,
    /// It failed, and nothing healthy could be put back (or precheck refused it).
    Failed,
    /// A human refused it at the gate.
    Rejected,
}

impl DeployStatus {
    /// Whether the record will not change again.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Healthy | Self::RolledBack | Self::Failed | Self::Rejected
        )
    }
}

/// One stage of a deploy: when it ran and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct StageRecord {
    /// `precheck`, `drain`, `deploy`, `health`, `rollback`, `rollback_health`.
    pub stage: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End (`None` while it runs).
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, `failed`, `warning`, `skipped`.
    pub outcome: Option<String>,
    /// Bounded detail (command output tail, reason).
    pub detail: Option<String>,
}

/// One health probe.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Probe {
    /// When.
    pub at: DateTime<Utc>,
    /// HTTP status, if any came back.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A health check: its probes and the verdict.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct HealthResult {
    /// Whether a probe passed.
    pub healthy: bool,
    /// The probes, in order (at most the configured retries).
    pub probes: Vec<Probe>,
    /// What was checked (a URL, or the provider's status).
    pub target: String,
}

/// A deploy record (`GET /v1/deploys/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeployRecord {
    /// UUID v7.
    pub id: String,
    /// The app of `ops.yaml`.
    pub app: String,
    /// What was asked for (a sha, or the app's branch).
    pub requested: String,
    /// The resolved commit, once precheck ran.
    pub commit: Option<String>,
    /// The release that ran when this deploy started.
    pub previous_release: Option<String>,
    /// Who asked: `api`, `cli`, `task:<id>`.
    pub trigger: String,
    /// Where it stands.
    pub status: DeployStatus,
    /// `approval` or `automatic`, and why.
    pub gate: String,
    /// Digest of the app's ops settings when the deploy was requested.
    pub config_digest: String,
    /// Stages in the order they ran.
    pub stages: Vec<StageRecord>,
    /// The new release's health check.
    pub health: Option<HealthResult>,
    /// The rollback, if one ran.
    pub rollback: Option<RollbackRecord>,
    /// Non-fatal trouble (a drain that timed out).
    pub warnings: Vec<String>,
    /// Why it failed.
    pub error: Option<ErrorInfo>,
    /// The incident it opened.
    pub incident: Option<String>,
    /// A reviewer's note at the gate.
    pub comment: Option<String>,
    /// The token that requested it (`api`/`cli` requests; none for a task's or the service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The token that approved or rejected it at its gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The ledger account that pays for it (its price is reserved when it is requested).
    #[serde(default)]
    pub account: Option<String>,
    /// Seconds of commands it ran (each started second counts), charged at the shell rate.
    #[serde(default)]
    pub command_seconds: u64,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What an app's dropped deploy records (past [`DEPLOY_HISTORY_MAX`]) still count for, kept
/// beside its history so burn-in and the start-up scan for lost task deploys answer as if none
/// had been dropped. Stored only, never served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PrunedDeploys {
    /// How many were dropped.
    #[serde(default)]
    pub count: u64,
    /// How many of them were healthy (burn-in counts them).
    #[serde(default)]
    pub healthy: u64,
    /// The config digest of the newest healthy one dropped (burn-in compares the app's config
    /// with the last healthy deploy's).
    #[serde(default)]
    pub last_healthy_digest: Option<String>,
    /// When the newest one dropped was created: a task finished before it had its deploy
    /// requested long ago.
    #[serde(default)]
    pub newest_created_at: Option<DateTime<Utc>>,
}

impl PrunedDeploys {
    /// Counts `record` (ended) as dropped; records are dropped oldest first.
    pub(crate) fn add(&mut self, record: &DeployRecord) {
        self.count += 1;
        if record.status == DeployStatus::Healthy {
            self.healthy += 1;
            self.last_healthy_digest = Some(record.config_digest.clone());
        }
        self.newest_created_at = self.newest_created_at.max(Some(record.created_at));
    }
}

/// An app's deploys as the store keeps them: the records, and what the dropped ones count for.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeployHistory {
    /// The kept records, oldest first.
    pub records: Vec<DeployRecord>,
    /// What the dropped ones count for.
    pub pruned: PrunedDeploys,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RollbackRecord {
    /// The release put back.
    pub to: String,
    /// Whether it is healthy again.
    pub healthy: bool,
    /// Its health check.
    pub health: Option<HealthResult>,
}

/// An app's releases as Uplink-Deploy left them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ReleaseState {
    /// The release that should be running now.
    pub current: Option<String>,
    /// The newest release that passed its health check: where a rollback goes.
    pub last_healthy: Option<String>,
    /// The deploy running for this app now, if any (checks pause meanwhile).
    pub deploying: Option<String>,
}

/// One signal: a failing check, a failed deploy, an alert.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Signal {
    /// The app it concerns (may be unknown to `ops.yaml`).
    pub app: String,
    /// Its name: `health_check_failed`, `process_exited`, an alertname, ...
    pub signal: String,
    /// `critical`, `warning`, `info`, ...
    pub severity: String,
    /// One line for humans.
    pub summary: String,
    /// Extra labels (matched by runbooks, part of the fingerprint).
    pub labels: BTreeMap<String, String>,
    /// `watch`, `deploy`, `alertmanager`, `api`.
    pub source: String,
    /// The deploy it came from.
    pub deploy: Option<String>,
    /// When it was received.
    pub at: DateTime<Utc>,
    /// Alertmanager's `groupKey` of the webhook that carried it: alerts Alertmanager grouped are
    /// one incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IncidentStatus {
    /// Being handled (or waiting for a gated step's approval).
    Open,
    /// Health passed again.
    Resolved,
    /// No runbook matched, or the runbook could not fix it: a human decides.
    NeedsHuman,
    /// A human took it over from `needs_human` (`POST /v1/incidents/{id}/ack`): nothing automatic
    /// runs for it; it takes its fingerprint's signals until someone resolves it.
    Acknowledged,
}

/// A person's act on an incident: who, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct HumanMark {
    /// The token's name.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The gated step an incident waits at, as shown to the people who may approve it: an approval
/// must name the same step, action and digest, so a runbook edited in between is never approved
/// blind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AwaitingStep {
    /// The runbook step's index.
    pub step: usize,
    /// Its action.
    pub action: super::spec::StepAction,
    /// Hex SHA-256 (first 16 bytes) of the runbook's name, the index and the step as configured.
    pub digest: String,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct IncidentEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// `incident.opened`, `signal.attached`, `classified`, `diagnosed`, `step.started`, ...
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// One automatic action a response started: a restart, rollback, scale or create_task step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AutomaticAction {
    /// When it started.
    pub at: DateTime<Utc>,
    /// The runbook step's index.
    pub step: usize,
    /// The step's action.
    pub action: super::spec::StepAction,
    /// Micro-tokens of ledger cost it ran up that the response knows of (the reservation of a
    /// bugfix task it filed); 0 until it finished.
    pub cost: u64,
}

/// What diagnose collected.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub(crate) struct Diagnosis {
    /// The app's recent log lines (bounded).
    pub log_lines: Vec<String>,
    /// Its recent deploys: id, commit, status.
    pub deploys: Vec<serde_json::Value>,
    /// Its latest check results.
    pub checks: Vec<CheckResult>,
}

/// An incident (`GET /v1/incidents/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Incident {
    /// UUID v7.
    pub id: String,
    /// The app.
    pub app: String,
    /// Where it stands.
    pub status: IncidentStatus,
    /// How repeats are recognised.
    pub fingerprint: String,
    /// From the matched runbook.
    pub classification: Option<Classification>,
    /// The matched runbook.
    pub runbook: Option<String>,
    /// The signals, first one first (bounded).
    pub signals: Vec<Signal>,
    /// Signals received in all (also past the bound).
    pub signal_count: u64,
    /// The timeline (bounded).
    pub events: Vec<IncidentEvent>,
    /// What diagnose found.
    pub diagnosis: Option<Diagnosis>,
    /// The next runbook step, when a gated one waits for approval.
    pub awaiting_step: Option<usize>,
    /// That step as shown: what an approval must name ([`AwaitingStep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<AwaitingStep>,
    /// Who acknowledged it (a person owns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<HumanMark>,
    /// Until when it is snoozed: repeats of its signal are counted but add no timeline entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snoozed_until: Option<DateTime<Utc>>,
    /// Who resolved it by hand (none when health resolved it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<HumanMark>,
    /// Markdown, once it ended.
    pub postmortem: Option<String>,
    /// The bugfix task filed for it.
    pub task_id: Option<String>,
    /// The automatic actions its response started (bounded by [`INCIDENT_ACTIONS_MAX`]), kept
    /// apart from the timeline (which attached signals can push them out of): what the app's
    /// action budget (`incidents.actions_max`, `actions_cost_max`) is counted from, so the count
    /// survives a restart of the service.
    #[serde(default)]
    pub actions: Vec<AutomaticAction>,
    /// The deploy that caused it.
    pub deploy: Option<String>,
    /// Opened.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Resolved.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Incident {
    /// Appends a timeline event, dropping the oldest past [`INCIDENT_EVENTS_MAX`].
    pub(crate) fn push_event(&mut self, kind: &str, detail: serde_json::Value) {
        if self.events.len() >= INCIDENT_EVENTS_MAX {
            self.events.remove(0);
        }
        self.events.push(IncidentEvent {
            at: Utc::now(),
            kind: kind.to_owned(),
            detail,
        });
        self.updated_at = Utc::now();
    }

    /// Records that the response starts acting step `step` (the oldest record dropped past
    /// [`INCIDENT_ACTIONS_MAX`]).
    pub(crate) fn action_started(&mut self, step: usize, action: super::spec::StepAction) {
        if self.actions.len() >= INCIDENT_ACTIONS_MAX {
            self.actions.remove(0);
        }
        self.actions.push(AutomaticAction {
            at: Utc::now(),
            step,
            action,
            cost: 0,
        });
    }

    /// Records what the latest run of acting step `step` cost.
    pub(crate) fn action_cost(&mut self, step: usize, cost: u64) {
        if let Some(action) = self.actions.iter_mut().rev().find(|a| a.step == step) {
            action.cost = cost;
        }
    }

    /// Whether it is snoozed at `now`.
    pub(crate) fn snoozed(&self, now: DateTime<Utc>) -> bool {
        self.snoozed_until.is_some_and(|until| until > now)
    }

    /// Attaches a repeat signal (kept while under [`INCIDENT_SIGNALS_MAX`], always counted; a
    /// snoozed incident only counts it).
    pub(crate) fn attach(&mut self, signal: Signal) {
        self.signal_count += 1;
        if self.snoozed(Utc::now()) {
            return;
        }
        self.push_event(
            "signal.attached",
            serde_json::json!({"signal": signal.signal, "source": signal.source, "summary": signal.summary}),
        );
        if self.signals.len() < INCIDENT_SIGNALS_MAX {
            self.signals.push(signal);
        }
    }
}

/// One run of a check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CheckResult {
    /// The app.
    pub app: String,
    /// The check's name.
    pub check: String,
    /// Its kind.
    pub kind: super::spec::CheckKind,
    /// `pass`, `fail` or `skipped`.
    pub outcome: String,
    /// What it saw.
    pub detail: String,
    /// When it ran.
    pub at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: u64,
}

impl CheckResult {
    /// Whether it failed.
    pub(crate) fn failed(&self) -> bool {
        self.outcome == "fail"
    }
}
