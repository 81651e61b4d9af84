//! What ops persists, in its own sled trees (through [`Store::tree`]): deploy records, incidents,
//! check results, each app's release state and the commits whose verify passed.
//!
//! Trees: `ops_deploys` (deploy id → record), `ops_incidents` (incident id → incident),
//! `ops_checks` (`<app>/<check>` ++ 0 ++ seq → result), `ops_releases` (app → release state),
//! `ops_verified` (`<app>/<sha>` → time). Ids are UUID v7, so key order is creation order.
//! Read-modify-writes are compare-and-swap loops: a deploy job, an incident job and an actor may
//! touch one record at once without losing a change. Every write flushes before it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Tree;
use utoipa::ToSchema;

use super::spec::Classification;
use crate::domain::ErrorInfo;
use crate::store::{Store, StoreError};

/// Results kept per check; older ones are dropped.
pub const CHECK_HISTORY_MAX: usize = 50;
/// Signals kept on one incident (a repeat past it only bumps `signal_count`).
pub const INCIDENT_SIGNALS_MAX: usize = 50;
/// Events kept on one incident.
pub const INCIDENT_EVENTS_MAX: usize = 200;
/// Records a list answers at most.
pub const LIST_LIMIT_MAX: usize = 200;
/// Compare-and-swap attempts before an update gives up (only contention makes it loop).
const CAS_TRIES_MAX: usize = 64;

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

/// Ops' trees. Cheap to clone.
#[derive(Clone)]
pub struct OpsStore {
    store: Store,
    deploys: Tree,
    incidents: Tree,
    checks: Tree,
    releases: Tree,
    verified: Tree,
}

impl OpsStore {
    /// Opens (or creates) ops' trees.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            deploys: store.tree("ops_deploys")?,
            incidents: store.tree("ops_incidents")?,
            checks: store.tree("ops_checks")?,
            releases: store.tree("ops_releases")?,
            verified: store.tree("ops_verified")?,
            store: store.clone(),
        })
    }

    /// Writes a deploy record (flushed).
    pub async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        self.deploys
            .insert(record.id.as_bytes(), serde_json::to_vec(record)?)?;
        self.store.flush().await
    }

    /// Changes a deploy record atomically (flushed); `None` when it does not exist.
    pub async fn update_deploy(
        &self,
        id: &str,
        change: impl Fn(&mut DeployRecord),
    ) -> Result<Option<DeployRecord>, StoreError> {
        let updated = cas_update(&self.deploys, id.as_bytes(), |record: &mut DeployRecord| {
            change(record);
            record.updated_at = Utc::now();
        })?;
        self.store.flush().await?;
        Ok(updated)
    }

    /// One deploy.
    pub fn deploy(&self, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        get(&self.deploys, id.as_bytes())
    }

    /// Deploys, newest first, at most `limit`.
    pub fn deploys(&self, limit: usize) -> Result<Vec<DeployRecord>, StoreError> {
        newest(
            &self.deploys,
            limit.min(LIST_LIMIT_MAX),
            |_: &DeployRecord| true,
        )
    }

    /// Every deploy of an app, oldest first (what burn-in counts).
    pub fn deploys_of(&self, app: &str) -> Result<Vec<DeployRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in self.deploys.iter() {
            let (_, bytes) = entry?;
            let record: DeployRecord = serde_json::from_slice(&bytes)?;
            if record.app == app {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Writes an incident (flushed).
    pub async fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.incidents
            .insert(incident.id.as_bytes(), serde_json::to_vec(incident)?)?;
        self.store.flush().await
    }

    /// Changes an incident atomically (flushed).
    pub async fn update_incident(
        &self,
        id: &str,
        change: impl Fn(&mut Incident),
    ) -> Result<Option<Incident>, StoreError> {
        let updated = cas_update(&self.incidents, id.as_bytes(), |incident: &mut Incident| {
            change(incident);
            incident.updated_at = Utc::now();
        })?;
        self.store.flush().await?;
        Ok(updated)
    }

    /// One incident.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        get(&self.incidents, id.as_bytes())
    }

    /// Incidents, newest first, at most `limit`, those `keep` accepts.
    pub fn incidents_where(
        &self,
        limit: usize,
        keep: impl Fn(&Incident) -> bool,
    ) -> Result<Vec<Incident>, StoreError> {
        newest(&self.incidents, limit.min(LIST_LIMIT_MAX), keep)
    }

    /// Stores a check result, keeping the newest [`CHECK_HISTORY_MAX`] of that check (flushed).
    pub async fn record_check(&self, result: &CheckResult) -> Result<(), StoreError> {
        let prefix = check_prefix(&result.app, &result.check);
        let seq = self.store.db().generate_id()?;
        let key = [prefix.as_slice(), &seq.to_be_bytes()].concat();
        self.checks.insert(key, serde_json::to_vec(result)?)?;
        let keys: Vec<sled::IVec> = self
            .checks
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        let excess = keys.len().saturating_sub(CHECK_HISTORY_MAX);
        for key in keys.into_iter().take(excess) {
            self.checks.remove(key)?;
        }
        self.store.flush().await
    }

    /// A check's results, newest first.
    pub fn check_history(&self, app: &str, check: &str) -> Result<Vec<CheckResult>, StoreError> {
        let mut results = Vec::new();
        for entry in self.checks.scan_prefix(check_prefix(app, check)).rev() {
            let (_, bytes) = entry?;
            results.push(serde_json::from_slice(&bytes)?);
        }
        Ok(results)
    }

    /// An app's release state.
    pub fn release(&self, app: &str) -> Result<ReleaseState, StoreError> {
        Ok(get(&self.releases, app.as_bytes())?.unwrap_or_default())
    }

    /// Changes an app's release state (flushed).
    pub async fn update_release(
        &self,
        app: &str,
        change: impl Fn(&mut ReleaseState),
    ) -> Result<(), StoreError> {
        cas_upsert(
            &self.releases,
            app.as_bytes(),
            Some(ReleaseState::default),
            change,
        )?;
        self.store.flush().await
    }

    /// Whether `sha`'s verify passed for `app` before.
    pub fn verified(&self, app: &str, sha: &str) -> Result<bool, StoreError> {
        Ok(self.verified.contains_key(format!("{app}/{sha}"))?)
    }

    /// Records that `sha`'s verify passed for `app` (flushed).
    pub async fn mark_verified(&self, app: &str, sha: &str) -> Result<(), StoreError> {
        self.verified
            .insert(format!("{app}/{sha}"), Utc::now().to_rfc3339().as_bytes())?;
        self.store.flush().await
    }
}

fn check_prefix(app: &str, check: &str) -> Vec<u8> {
    [app.as_bytes(), b"/", check.as_bytes(), &[0]].concat()
}

fn get<T: serde::de::DeserializeOwned>(tree: &Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

fn newest<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut records = Vec::new();
    for entry in tree.iter().rev() {
        if records.len() >= limit {
            break;
        }
        let (_, bytes) = entry?;
        let record: T = serde_json::from_slice(&bytes)?;
        if keep(&record) {
            records.push(record);
        }
    }
    Ok(records)
}

fn cas_update<T: Serialize + serde::de::DeserializeOwned>(
    tree: &Tree,
    key: &[u8],
    change: impl Fn(&mut T),
) -> Result<Option<T>, StoreError> {
    cas_upsert(tree, key, None::<fn() -> T>, change)
}

/// Changes the record at `key` with a compare-and-swap loop, so a concurrent writer is never
/// overwritten. A missing record starts from `missing()` when given, else `Ok(None)`.
fn cas_upsert<T: Serialize + serde::de::DeserializeOwned>(
    tree: &Tree,
    key: &[u8],
    missing: Option<impl Fn() -> T>,
    change: impl Fn(&mut T),
) -> Result<Option<T>, StoreError> {
    for _ in 0..CAS_TRIES_MAX {
        let old = tree.get(key)?;
        let mut record: T = match (&old, &missing) {
            (Some(bytes), _) => serde_json::from_slice(bytes)?,
            (None, Some(start)) => start(),
            (None, None) => return Ok(None),
        };
        change(&mut record);
        let new = serde_json::to_vec(&record)?;
        if tree.compare_and_swap(key, old, Some(new))?.is_ok() {
            return Ok(Some(record));
        }
    }
    Err(StoreError::Sled(sled::Error::Unsupported(
        "record changed under every compare-and-swap attempt".into(),
    )))
}
