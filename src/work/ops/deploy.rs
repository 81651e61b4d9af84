//! One deploy, start to end: precheck (the commit exists; the app's verify passed on it) → drain
//! hook → deploy → health check → healthy: record; unhealthy: roll back to the last healthy
//! release and check it again. Runs in a job of Uplink-Deploy; every stage is written to the
//! deploy record (flushed) as it starts and ends, so a crash leaves a record that says where.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::probe;
use super::provider::{self, ProviderContext};
use crate::model::codes;
use crate::model::ops::error::OpsError;
use crate::model::ops::records::{
    DeployHistory, DeployRecord, DeployStatus, RollbackRecord, StageRecord,
};
use crate::model::ops::spec::{config_digest, AppSpec};
use crate::model::task::ErrorInfo;
use crate::storage::ops::OpsStore;

/// Everything a deploy job needs.
#[derive(Clone)]
pub(crate) struct DeployContext {
    /// Provider plumbing.
    pub provider: ProviderContext,
    /// Where records go.
    pub ops: OpsStore,
    /// The app's name.
    pub name: String,
    /// Its settings.
    pub app: AppSpec,
}

/// Burn-in: whether a new deploy of `app` waits for approval, and why. Counted from the stored
/// records (`history`: the app's kept deploys, and what its dropped ones count for), never from
/// what anyone reports:
/// - fewer than `approve_first` healthy deploys so far → approval;
/// - at least `auto_after` healthy deploys → automatic;
/// - otherwise automatic only while the app's ops config is unchanged since the last healthy
///   deploy (a changed config waits for approval).
///
/// Every deploy, automatic or not, still passes precheck (verify on the commit) before it runs.
pub(crate) fn gate_for(app: &AppSpec, history: &DeployHistory) -> (bool, String) {
    let healthy: Vec<&DeployRecord> = history
        .records
        .iter()
        .filter(|d| d.status == DeployStatus::Healthy)
        .collect();
    let kept = u64::try_from(healthy.len()).unwrap_or(u64::MAX);
    let count = u32::try_from(kept.saturating_add(history.pruned.healthy)).unwrap_or(u32::MAX);
    let gates = &app.gates;
    if count < gates.approve_first {
        return (
            true,
            format!(
                "approval: burn-in, {count} of the first {} deploys healthy",
                gates.approve_first
            ),
        );
    }
    if gates.auto_after.is_some_and(|after| count >= after) {
        return (false, format!("automatic: {count} healthy deploys"));
    }
    let digest = config_digest(app);
    let last_healthy = healthy
        .last()
        .map(|d| d.config_digest.as_str())
        .or(history.pruned.last_healthy_digest.as_deref());
    match last_healthy {
        Some(last) if last != digest => (
            true,
            "approval: the app's ops config changed since the last healthy deploy".into(),
        ),
        _ => (
            false,
            "automatic: ops config unchanged since the last healthy deploy".into(),
        ),
    }
}

/// A new record for a deploy request, at the gate its history decides.
pub(crate) fn new_record(
    name: &str,
    app: &AppSpec,
    requested: Option<String>,
    trigger: &str,
    history: &DeployHistory,
) -> DeployRecord {
    let (needs_approval, gate) = gate_for(app, history);
    let now = Utc::now();
    DeployRecord {
        id: uuid::Uuid::now_v7().to_string(),
        app: name.to_owned(),
        requested: requested.unwrap_or_else(|| app.branch.clone()),
        commit: None,
        previous_release: None,
        trigger: trigger.to_owned(),
        status: if needs_approval {
            DeployStatus::AwaitingApproval
        } else {
            DeployStatus::Queued
        },
        gate,
        config_digest: config_digest(app),
        stages: Vec::new(),
        health: None,
        rollback: None,
        warnings: Vec::new(),
        error: None,
        incident: None,
        comment: None,
        requested_by: None,
        decided_by: None,
        account: None,
        command_seconds: 0,
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

/// Runs deploy `id` to its end and returns the final record.
pub(crate) async fn run(ctx: DeployContext, id: String) -> Result<DeployRecord, OpsError> {
    let release = ctx.ops.release(&ctx.name).await?;
    let previous = release.current.clone();
    let deploy_id = id.clone();
    ctx.ops
        .update_release(&ctx.name, move |r| r.deploying = Some(deploy_id.clone()))
        .await?;
    let outcome = stages(&ctx, &id, previous).await;
    ctx.ops
        .update_release(&ctx.name, |r| r.deploying = None)
        .await?;
    let ending = outcome.unwrap_or_else(|error| Ending {
        status: DeployStatus::Failed,
        error: Some(error.to_info()),
    });
    let command_seconds = ctx.provider.command_seconds();
    // The terminal status comes with everything else in one write: whoever sees it sees the
    // finished record.
    let record = ctx
        .ops
        .update_deploy(&id, move |d| {
            d.status = ending.status;
            if let Some(error) = &ending.error {
                d.error = Some(error.clone());
            }
            d.command_seconds = command_seconds;
            d.finished_at = Some(Utc::now());
        })
        .await?;
    if let Some(note) = record
        .as_ref()
        .and_then(crate::runtime::notifier::of_deploy)
    {
        crate::runtime::notifier::enqueue(&ctx.ops, note).await;
    }
    record.ok_or_else(|| OpsError::NotFound(format!("deploy {id} vanished")))
}

/// How a deploy that ran its stages ended.
struct Ending {
    /// `healthy`, `rolled_back` or `failed`.
    status: DeployStatus,
    /// Why it is not healthy.
    error: Option<crate::model::task::ErrorInfo>,
}

async fn stages(
    ctx: &DeployContext,
    id: &str,
    previous: Option<String>,
) -> Result<Ending, OpsError> {
    let requested = ctx
        .ops
        .deploy(id)
        .await?
        .map(|d| d.requested)
        .ok_or_else(|| OpsError::NotFound(format!("no deploy {id}")))?;
    let prev = previous.clone();
    ctx.ops
        .update_deploy(id, move |d| {
            d.status = DeployStatus::Running;
            d.previous_release = prev.clone();
        })
        .await?;
    let sha = staged(ctx, id, "precheck", precheck(ctx, id, &requested)).await?;
    drain(ctx, id, previous.is_some()).await?;
    staged(
        ctx,
        id,
        "deploy",
        provider::deploy(&ctx.provider, &ctx.name, &ctx.app, &sha),
    )
    .await?;
    begin(ctx, id, "health").await?;
    let health = probe::app_health(&ctx.provider, &ctx.name, &ctx.app).await;
    let healthy = health.healthy;
    let outcome = if healthy { "ok" } else { "failed" };
    end(ctx, id, "health", outcome, None).await?;
    ctx.ops
        .update_deploy(id, move |d| d.health = Some(health.clone()))
        .await?;
    if healthy {
        let sha_done = sha.clone();
        ctx.ops
            .update_release(&ctx.name, move |r| {
                r.current = Some(sha_done.clone());
                r.last_healthy = Some(sha_done.clone());
            })
            .await?;
        return Ok(Ending {
            status: DeployStatus::Healthy,
            error: None,
        });
    }
    roll_back(ctx, id, &sha).await
}

async fn precheck(ctx: &DeployContext, id: &str, requested: &str) -> Result<String, OpsError> {
    let sha = provider::resolve_commit(&ctx.provider, &ctx.app.repo, requested).await?;
    let resolved = sha.clone();
    ctx.ops
        .update_deploy(id, move |d| d.commit = Some(resolved.clone()))
        .await?;
    if ctx.ops.verified(&ctx.name, &sha).await? {
        return Ok(sha);
    }
    let dir = ctx
        .provider
        .data_dir
        .join("verify")
        .join(format!("{}-{id}", ctx.name));
    provider::export_commit(&ctx.provider, &ctx.app.repo, &sha, &dir).await?;
    let timeout = Duration::from_secs(ctx.app.verify_timeout_secs);
    let verified = ctx
        .provider
        .shell_ok("verify", &ctx.app.verify, &dir, Vec::new(), timeout)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    verified.map_err(|e| OpsError::VerifyFailed(format!("verify failed on {sha}: {e}")))?;
    ctx.ops.mark_verified(&ctx.name, &sha).await?;
    Ok(sha)
}

/// The drain hook: a failure or a timeout is a warning, never the end of the deploy.
async fn drain(ctx: &DeployContext, id: &str, something_runs: bool) -> Result<(), OpsError> {
    let Some(drain) = ctx.app.drain.clone().filter(|_| something_runs) else {
        return Ok(());
    };
    begin(ctx, id, "drain").await?;
    let timeout = Duration::from_secs(drain.timeout_secs);
    let result = ctx
        .provider
        .shell_ok("drain", &drain.command, &ctx.app.repo, Vec::new(), timeout)
        .await;
    match result {
        Ok(detail) => end(ctx, id, "drain", "ok", Some(detail)).await,
        Err(error) => {
            let warning = format!("drain hook: {error}; deploying anyway");
            tracing::warn!(app = %ctx.name, deploy = %id, %warning);
            let noted = warning.clone();
            ctx.ops
                .update_deploy(id, move |d| d.warnings.push(noted.clone()))
                .await?;
            end(ctx, id, "drain", "warning", Some(warning)).await
        }
    }
}

async fn roll_back(ctx: &DeployContext, id: &str, bad: &str) -> Result<Ending, OpsError> {
    let release = ctx.ops.release(&ctx.name).await?;
    let Some(target) = release.last_healthy.filter(|t| t != bad) else {
        return Err(OpsError::NoRelease(format!(
            "release {bad} is unhealthy and `{}` has no earlier healthy release",
            ctx.name
        )));
    };
    staged(
        ctx,
        id,
        "rollback",
        provider::rollback(&ctx.provider, &ctx.name, &ctx.app, &target),
    )
    .await?;
    begin(ctx, id, "rollback_health").await?;
    let health = probe::app_health(&ctx.provider, &ctx.name, &ctx.app).await;
    let healthy = health.healthy;
    end(
        ctx,
        id,
        "rollback_health",
        if healthy { "ok" } else { "failed" },
        None,
    )
    .await?;
    let rollback = RollbackRecord {
        to: target.clone(),
        healthy,
        health: Some(health),
    };
    ctx.ops
        .update_release(&ctx.name, move |r| r.current = Some(target.clone()))
        .await?;
    ctx.ops
        .update_deploy(id, move |d| d.rollback = Some(rollback.clone()))
        .await?;
    Ok(Ending {
        status: if healthy {
            DeployStatus::RolledBack
        } else {
            DeployStatus::Failed
        },
        error: Some(crate::model::task::ErrorInfo::new(
            codes::DEPLOY_UNHEALTHY,
            format!("release {bad} failed its health check"),
        )),
    })
}

/// Runs `work` as stage `name` of the record.
async fn staged<T: ToString>(
    ctx: &DeployContext,
    id: &str,
    name: &str,
    work: impl std::future::Future<Output = Result<T, OpsError>>,
) -> Result<T, OpsError> {
    begin(ctx, id, name).await?;
    match work.await {
        Ok(value) => {
            end(ctx, id, name, "ok", Some(value.to_string())).await?;
            Ok(value)
        }
        Err(error) => {
            end(ctx, id, name, "failed", Some(error.to_string())).await?;
            Err(error)
        }
    }
}

async fn begin(ctx: &DeployContext, id: &str, name: &str) -> Result<(), OpsError> {
    tracing::info!(app = %ctx.name, deploy = %id, stage = name, "deploy stage started");
    let name = name.to_owned();
    ctx.ops
        .update_deploy(id, move |d| {
            d.stages.push(StageRecord {
                stage: name,
                started_at: Utc::now(),
                finished_at: None,
                outcome: None,
                detail: None,
            });
        })
        .await?;
    Ok(())
}

async fn end(
    ctx: &DeployContext,
    id: &str,
    name: &str,
    outcome: &str,
    detail: Option<String>,
) -> Result<(), OpsError> {
    let detail = detail.map(|d| crate::platform::process::keep_tail(&d, super::DETAIL_BYTES_MAX));
    let (name, outcome) = (name.to_owned(), outcome.to_owned());
    ctx.ops
        .update_deploy(id, move |d| {
            if let Some(stage) = d.stages.iter_mut().rev().find(|s| s.stage == name) {
                stage.finished_at = Some(Utc::now());
                stage.outcome = Some(outcome);
                stage.detail = detail;
            }
        })
        .await?;
    Ok(())
}

/// The summary of a deploy for an incident's diagnosis.
pub(crate) fn summary(record: &DeployRecord) -> serde_json::Value {
    json!({
        "id": record.id, "commit": record.commit, "status": record.status,
        "created_at": record.created_at, "previous_release": record.previous_release,
    })
}

/// Stages that run commands, whose time an interrupted deploy is charged for.
const COMMAND_STAGES: [&str; 4] = ["precheck", "drain", "deploy", "rollback"];

/// Ends a deploy its Uplink-Deploy died under (a crash, `kill -9` of the service): `failed`,
/// `DEPLOY_INTERRUPTED`, every stage still open closed `interrupted` at `now`, and — since the
/// metered clock died with the job — its command seconds counted from the stages that finished,
/// so the settlement still charges for them. A stage still open when the service died is not
/// charged: the record cannot tell when the service died, and the time until `now` (the next
/// start) is mostly time the service was down, which is not the customer's to pay.
pub(crate) fn close_interrupted(record: &mut DeployRecord, now: DateTime<Utc>) {
    record.status = DeployStatus::Failed;
    record.error = Some(ErrorInfo::new(
        codes::DEPLOY_INTERRUPTED,
        "Uplink-Deploy stopped while this deploy ran; its open stages were closed",
    ));
    record.finished_at = Some(now);
    let mut seconds = 0_u64;
    for stage in &mut record.stages {
        let Some(finished_at) = stage.finished_at else {
            stage.finished_at = Some(now);
            stage.outcome = Some("interrupted".into());
            continue;
        };
        if COMMAND_STAGES.contains(&stage.stage.as_str()) {
            let ran = finished_at - stage.started_at;
            let millis = u64::try_from(ran.num_milliseconds()).unwrap_or(0);
            seconds = seconds.saturating_add(millis.div_ceil(1000));
        }
    }
    record.command_seconds = record.command_seconds.max(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::records::PrunedDeploys;
    use crate::model::ops::spec::{GatesSpec, ProviderKind};

    fn app(approve_first: u32, auto_after: Option<u32>) -> AppSpec {
        AppSpec {
            repo: "/srv/x".into(),
            branch: "main".into(),
            verify: "true".into(),
            verify_timeout_secs: 10,
            provider: ProviderKind::Command,
            local: None,
            fly: None,
            command: None,
            health: None,
            drain: None,
            gates: GatesSpec {
                approve_first,
                auto_after,
            },
            checks: Vec::new(),
            account: None,
            previous_names: Vec::new(),
        }
    }

    fn healthy(app: &AppSpec) -> DeployRecord {
        let mut record = new_record("x", app, None, "api", &DeployHistory::default());
        record.status = DeployStatus::Healthy;
        record
    }

    fn kept(records: Vec<DeployRecord>) -> DeployHistory {
        DeployHistory {
            records,
            pruned: PrunedDeploys::default(),
        }
    }

    #[test]
    fn an_interrupted_deploy_closes_its_stages_and_counts_their_seconds() {
        let spec = app(0, None);
        let mut record = new_record("x", &spec, None, "api", &DeployHistory::default());
        let now = Utc::now();
        let stage = |name: &str, ago: i64, took: Option<i64>| StageRecord {
            stage: name.into(),
            started_at: now - chrono::Duration::seconds(ago),
            finished_at: took.map(|t| now - chrono::Duration::seconds(ago - t)),
            outcome: took.map(|_| "ok".into()),
            detail: None,
        };
        record.status = DeployStatus::Running;
        record.stages = vec![
            stage("precheck", 20, Some(3)),
            stage("drain", 17, Some(2)),
            stage("deploy", 15, None),
        ];
        let mut later = record.clone();
        close_interrupted(&mut record, now);
        assert_eq!(record.status, DeployStatus::Failed);
        assert_eq!(
            record.error.as_ref().map(|e| e.code.as_str()),
            Some(codes::DEPLOY_INTERRUPTED)
        );
        assert!(record.stages.iter().all(|s| s.finished_at.is_some()));
        assert_eq!(record.stages[2].outcome.as_deref(), Some("interrupted"));
        // 3 s precheck + 2 s drain; the deploy cut off by the crash is not charged for the
        // 15 s until `now`, which is downtime (issue 24).
        assert_eq!(record.command_seconds, 5);
        // The bill does not grow with the time the service stayed down.
        close_interrupted(&mut later, now + chrono::Duration::hours(1));
        assert_eq!(later.command_seconds, 5);
    }

    #[test]
    fn the_first_deploys_wait_then_unchanged_config_is_automatic() {
        let spec = app(2, None);
        assert!(gate_for(&spec, &DeployHistory::default()).0);
        let one = kept(vec![healthy(&spec)]);
        assert!(gate_for(&spec, &one).0);
        let two = kept(vec![healthy(&spec), healthy(&spec)]);
        assert!(!gate_for(&spec, &two).0);
        let mut changed = spec.clone();
        changed.verify = "make test".into();
        assert!(gate_for(&changed, &two).0);
        changed.gates.auto_after = Some(2);
        assert!(!gate_for(&changed, &two).0);
    }

    /// Dropped records count as if they were kept: burn-in neither starts over nor forgets the
    /// config of the last healthy deploy.
    #[test]
    fn dropped_deploys_still_count_for_burn_in() {
        let spec = app(2, None);
        let mut pruned = PrunedDeploys::default();
        pruned.add(&healthy(&spec));
        let mut failed = healthy(&spec);
        failed.status = DeployStatus::Failed;
        let history = DeployHistory {
            records: vec![healthy(&spec), failed],
            pruned: pruned.clone(),
        };
        let (approval, gate) = gate_for(&spec, &history);
        assert!(!approval, "{gate}");
        let mut changed = spec.clone();
        changed.verify = "make test".into();
        let only_dropped = DeployHistory {
            records: Vec::new(),
            pruned: PrunedDeploys {
                healthy: 3,
                ..pruned
            },
        };
        let (approval, gate) = gate_for(&changed, &only_dropped);
        assert!(
            approval,
            "the last healthy deploy's config is remembered: {gate}"
        );
        assert!(!gate_for(&spec, &only_dropped).0);
    }
}
