//! What ops persists, in its own tables of the store: deploy records, incidents, check results,
//! each app's release state and the commits whose verify passed.
//!
//! Tables: `OpsDeploys` (deploy id → record), `OpsIncidents` (incident id → incident),
//! `OpsChecks` (`<app>/<check>` ++ 0 ++ seq → result), `OpsReleases` (app → release state),
//! `OpsVerified` (`<app>/<sha>` → time). Ids are UUID v7, so key order is creation order.
//! Read-modify-writes are writer jobs ([`Store::write`]): the store's one writer applies them one
//! after another, so a deploy job, an incident job and an actor may change one record at once
//! without losing a change. Every write is durable before it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::Classification;
use crate::domain::ErrorInfo;
use crate::store::{Batch, Snapshot, Store, StoreError, Table};

/// Results kept per check; older ones are dropped.
pub const CHECK_HISTORY_MAX: usize = 50;
/// Signals kept on one incident (a repeat past it only bumps `signal_count`).
pub const INCIDENT_SIGNALS_MAX: usize = 50;
/// Events kept on one incident.
pub const INCIDENT_EVENTS_MAX: usize = 200;
/// Records a list answers at most.
pub const LIST_LIMIT_MAX: usize = 200;

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
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
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Healthy | Self::RolledBack | Self::Failed | Self::Rejected
        )
    }
}

/// One stage of a deploy: when it ran and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StageRecord {
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
pub struct Probe {
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
pub struct HealthResult {
    /// Whether a probe passed.
    pub healthy: bool,
    /// The probes, in order (at most the configured retries).
    pub probes: Vec<Probe>,
    /// What was checked (a URL, or the provider's status).
    pub target: String,
}

/// A deploy record (`GET /v1/deploys/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployRecord {
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

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackRecord {
    /// The release put back.
    pub to: String,
    /// Whether it is healthy again.
    pub healthy: bool,
    /// Its health check.
    pub health: Option<HealthResult>,
}

/// An app's releases as Uplink-Deploy left them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReleaseState {
    /// The release that should be running now.
    pub current: Option<String>,
    /// The newest release that passed its health check: where a rollback goes.
    pub last_healthy: Option<String>,
    /// The deploy running for this app now, if any (checks pause meanwhile).
    pub deploying: Option<String>,
}

/// One signal: a failing check, a failed deploy, an alert.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Signal {
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
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Being handled (or waiting for a gated step's approval).
    Open,
    /// Health passed again.
    Resolved,
    /// No runbook matched, or the runbook could not fix it: a human decides.
    NeedsHuman,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// `incident.opened`, `signal.attached`, `classified`, `diagnosed`, `step.started`, ...
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// What diagnose collected.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Diagnosis {
    /// The app's recent log lines (bounded).
    pub log_lines: Vec<String>,
    /// Its recent deploys: id, commit, status.
    pub deploys: Vec<serde_json::Value>,
    /// Its latest check results.
    pub checks: Vec<CheckResult>,
}

/// An incident (`GET /v1/incidents/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Incident {
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
    /// Markdown, once it ended.
    pub postmortem: Option<String>,
    /// The bugfix task filed for it.
    pub task_id: Option<String>,
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
    pub fn push_event(&mut self, kind: &str, detail: serde_json::Value) {
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

    /// Attaches a repeat signal (kept while under [`INCIDENT_SIGNALS_MAX`], always counted).
    pub fn attach(&mut self, signal: Signal) {
        self.signal_count += 1;
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
pub struct CheckResult {
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
    pub fn failed(&self) -> bool {
        self.outcome == "fail"
    }
}

/// A stored record does not decode, or sled failed.
pub type OpsStoreError = StoreError;

/// Ops' records. Cheap to clone.
#[derive(Clone)]
pub struct OpsStore {
    store: Store,
}

impl OpsStore {
    /// Ops' records in `store`'s database.
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Writes a deploy record (durable).
    pub async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        put(&self.store, Table::OpsDeploys, record.id.as_bytes(), record).await
    }

    /// Changes a deploy record (durable); `None` when it does not exist.
    pub async fn update_deploy(
        &self,
        id: &str,
        change: impl FnOnce(&mut DeployRecord) + Send + 'static,
    ) -> Result<Option<DeployRecord>, StoreError> {
        let key = id.as_bytes().to_vec();
        self.store
            .write(move |batch| {
                upsert(
                    batch,
                    Table::OpsDeploys,
                    &key,
                    None,
                    |record: &mut DeployRecord| {
                        change(record);
                        record.updated_at = Utc::now();
                    },
                )
            })
            .await
    }

    /// One deploy.
    pub async fn deploy(&self, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        get(&self.store, Table::OpsDeploys, id).await
    }

    /// Deploys, newest first, at most `limit`.
    pub async fn deploys(&self, limit: usize) -> Result<Vec<DeployRecord>, StoreError> {
        let limit = limit.min(LIST_LIMIT_MAX);
        self.store
            .read(move |snapshot| {
                newest(snapshot, Table::OpsDeploys, limit, |_: &DeployRecord| true)
            })
            .await
    }

    /// Every deploy of an app, oldest first (what burn-in counts).
    pub async fn deploys_of(&self, app: &str) -> Result<Vec<DeployRecord>, StoreError> {
        let app = app.to_owned();
        self.store
            .read(move |snapshot| {
                let mut records = Vec::new();
                for bytes in snapshot.iter(Table::OpsDeploys).values() {
                    let record: DeployRecord = serde_json::from_slice(&bytes?)?;
                    if record.app == app {
                        records.push(record);
                    }
                }
                Ok(records)
            })
            .await
    }

    /// Writes an incident (durable).
    pub async fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        put(
            &self.store,
            Table::OpsIncidents,
            incident.id.as_bytes(),
            incident,
        )
        .await
    }

    /// Changes an incident (durable).
    pub async fn update_incident(
        &self,
        id: &str,
        change: impl FnOnce(&mut Incident) + Send + 'static,
    ) -> Result<Option<Incident>, StoreError> {
        let key = id.as_bytes().to_vec();
        self.store
            .write(move |batch| {
                upsert(
                    batch,
                    Table::OpsIncidents,
                    &key,
                    None,
                    |incident: &mut Incident| {
                        change(incident);
                        incident.updated_at = Utc::now();
                    },
                )
            })
            .await
    }

    /// One incident.
    pub async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        get(&self.store, Table::OpsIncidents, id).await
    }

    /// Incidents, newest first, at most `limit`, those `keep` accepts.
    pub async fn incidents_where(
        &self,
        limit: usize,
        keep: impl Fn(&Incident) -> bool + Send + 'static,
    ) -> Result<Vec<Incident>, StoreError> {
        let limit = limit.min(LIST_LIMIT_MAX);
        self.store
            .read(move |snapshot| newest(snapshot, Table::OpsIncidents, limit, keep))
            .await
    }

    /// Stores a check result, keeping the newest [`CHECK_HISTORY_MAX`] of that check (durable).
    pub async fn record_check(&self, result: &CheckResult) -> Result<(), StoreError> {
        let prefix = check_prefix(&result.app, &result.check);
        let bytes = serde_json::to_vec(result)?;
        self.store
            .write(move |batch| {
                let seq = batch.generate_id()?;
                batch.insert(
                    Table::OpsChecks,
                    [prefix.as_slice(), &seq.to_be_bytes()].concat(),
                    bytes,
                );
                // Just past every key of this check: the separator plus one.
                let mut end = prefix.clone();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let keys = batch.keys_in(Table::OpsChecks, &prefix, &end, usize::MAX)?;
                let excess = keys.len().saturating_sub(CHECK_HISTORY_MAX);
                for key in keys.into_iter().take(excess) {
                    batch.remove(Table::OpsChecks, key);
                }
                Ok(())
            })
            .await
    }

    /// A check's results, newest first.
    pub async fn check_history(
        &self,
        app: &str,
        check: &str,
    ) -> Result<Vec<CheckResult>, StoreError> {
        let prefix = check_prefix(app, check);
        self.store
            .read(move |snapshot| {
                let mut results = Vec::new();
                for bytes in snapshot
                    .scan_prefix(Table::OpsChecks, &prefix)
                    .values()
                    .rev()
                {
                    results.push(serde_json::from_slice(&bytes?)?);
                }
                Ok(results)
            })
            .await
    }

    /// An app's release state.
    pub async fn release(&self, app: &str) -> Result<ReleaseState, StoreError> {
        Ok(get(&self.store, Table::OpsReleases, app)
            .await?
            .unwrap_or_default())
    }

    /// Changes an app's release state (durable).
    pub async fn update_release(
        &self,
        app: &str,
        change: impl FnOnce(&mut ReleaseState) + Send + 'static,
    ) -> Result<(), StoreError> {
        let key = app.as_bytes().to_vec();
        self.store
            .write(move |batch| {
                upsert(
                    batch,
                    Table::OpsReleases,
                    &key,
                    Some(ReleaseState::default()),
                    change,
                )
                .map(|_| ())
            })
            .await
    }

    /// Whether `sha`'s verify passed for `app` before.
    pub async fn verified(&self, app: &str, sha: &str) -> Result<bool, StoreError> {
        let key = format!("{app}/{sha}");
        self.store
            .read(move |snapshot| snapshot.contains(Table::OpsVerified, key.as_bytes()))
            .await
    }

    /// Records that `sha`'s verify passed for `app` (durable).
    pub async fn mark_verified(&self, app: &str, sha: &str) -> Result<(), StoreError> {
        let key = format!("{app}/{sha}");
        let at = Utc::now().to_rfc3339();
        self.store
            .write(move |batch| {
                batch.insert(Table::OpsVerified, key.as_bytes(), at.as_bytes());
                Ok(())
            })
            .await
    }
}

fn check_prefix(app: &str, check: &str) -> Vec<u8> {
    [app.as_bytes(), b"/", check.as_bytes(), &[0]].concat()
}

async fn get<T: serde::de::DeserializeOwned + Send + 'static>(
    store: &Store,
    table: Table,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let key = key.to_owned();
    store
        .read(move |snapshot| snapshot.record(table, key.as_bytes()))
        .await
}

async fn put<T: Serialize>(
    store: &Store,
    table: Table,
    key: &[u8],
    record: &T,
) -> Result<(), StoreError> {
    let key = key.to_vec();
    let bytes = serde_json::to_vec(record)?;
    store
        .write(move |batch| {
            batch.insert(table, key, bytes);
            Ok(())
        })
        .await
}

fn newest<T: serde::de::DeserializeOwned>(
    snapshot: &Snapshot<'_>,
    table: Table,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut records = Vec::new();
    for bytes in snapshot.iter(table).values().rev() {
        if records.len() >= limit {
            break;
        }
        let record: T = serde_json::from_slice(&bytes?)?;
        if keep(&record) {
            records.push(record);
        }
    }
    Ok(records)
}

/// Changes the record at `key` inside a writer job. A missing record starts from `missing` when
/// given, else nothing changes and the answer is `None`.
fn upsert<T: Serialize + serde::de::DeserializeOwned>(
    batch: &mut Batch<'_>,
    table: Table,
    key: &[u8],
    missing: Option<T>,
    change: impl FnOnce(&mut T),
) -> Result<Option<T>, StoreError> {
    let stored: Option<T> = batch.record(table, key)?;
    let Some(mut record) = stored.or(missing) else {
        return Ok(None);
    };
    change(&mut record);
    batch.insert(table, key, serde_json::to_vec(&record)?);
    Ok(Some(record))
}
