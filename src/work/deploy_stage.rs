//! The pipeline's `deploy` stage: a delivered task asks Uplink-Deploy for the deploy of its commit
//! and waits for the verdict.

use std::time::Duration;

use crate::model::ops::error::OpsError;
use crate::model::ops::records::DeployStatus;
use crate::model::task::TaskId;
use crate::runtime::jobs::StageError;
use crate::runtime::uplink_deploy::{current, unwrap_call, UplinkDeployMsg, PERSONA_WAIT};
use crate::runtime::Services;
use crate::storage::ops::OpsStore;

/// How often a task's `deploy` stage looks at its deploy record.
const DEPLOY_POLL: Duration = Duration::from_millis(250);

/// A task's `deploy` stage: asks for the deploy of its delivered commit (idempotent by the trigger
/// `task:<id>`, so a stage run again after a crash finds the deploy it made) and waits, at most
/// `wait`, for it to end. Healthy: the deploy's id. Anything else fails the stage
/// `DEPLOY_FAILED`; a deploy still running when the wait ends goes on without the task.
pub(crate) async fn deploy_stage(
    services: &Services,
    task: &crate::model::task::Task,
    wait: Duration,
) -> Result<String, StageError> {
    let app = task.spec.deploy.clone().ok_or_else(|| {
        StageError::deploy_failed("the task names no `deploy` app for its deploy stage")
    })?;
    let actor = current(&services.directory).await.map_err(stage_error)?;
    let trigger = format!("task:{}", task.id);
    let call = actor.call(
        |reply| UplinkDeployMsg::Request {
            app: app.clone(),
            commit: task.outcome.commit.clone(),
            trigger: trigger.clone(),
            requested_by: None,
            reply: Some(reply),
        },
        Some(PERSONA_WAIT),
    );
    let record = unwrap_call(call.await).map_err(stage_error)?;
    let ops = OpsStore::new(&services.store);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = ops
            .deploy(&record.id)
            .await
            .map_err(StageError::from)?
            .ok_or_else(|| StageError::deploy_failed(format!("deploy {} vanished", record.id)))?;
        if current.status == DeployStatus::Healthy {
            return Ok(current.id);
        }
        if current.status.is_terminal() && current.status != DeployStatus::Healthy {
            let why = current
                .error
                .map(|e| format!(": {} {}", e.code, e.message))
                .unwrap_or_default();
            return Err(StageError::deploy_failed(format!(
                "deploy {} of `{app}` ended {}{why}",
                current.id,
                crate::model::ops::wire_name(&current.status)
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StageError::deploy_failed(format!(
                "deploy {} of `{app}` is still {} after {}s (compass.deploy_wait_secs); it goes on \
                 without the task",
                current.id,
                crate::model::ops::wire_name(&current.status),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(DEPLOY_POLL).await;
    }
}

/// An ops error as a stage's: a persona that is down is one, the rest are the deploy's verdict.
fn stage_error(error: OpsError) -> StageError {
    match error {
        OpsError::Unavailable(message) => StageError::persona_unavailable(message),
        OpsError::Store(message) => StageError::store(message),
        other => StageError::DeployFailed {
            message: format!("{}: {other}", other.code()),
            source: Some(other),
        },
    }
}

/// A delivered task named `deploy: <app>`: request that deploy of the delivered commit. Never
/// blocks the caller: the lookup and the cast run in a background task. A request lost to a
/// crash (or to a full tracker) is made at the next start (see `request_missed_task_deploys`); a
/// repeated one is answered with the deploy it already made.
pub(crate) fn deploy_after_task(
    services: &Services,
    app: String,
    task: TaskId,
    commit: Option<String>,
) {
    // Tests drop the request here, as a crash right after the delivery would.
    fail::fail_point!("uplink-deploy.task-request", |_| {});
    let directory = services.directory.clone();
    services
        .background
        .spawn("deploy.task-request", async move {
            match current(&directory).await {
                Ok(actor) => {
                    let trigger = format!("task:{task}");
                    let message = UplinkDeployMsg::Request {
                        app,
                        commit,
                        trigger,
                        requested_by: None,
                        reply: None,
                    };
                    if actor.cast(message).is_err() {
                        tracing::error!(%task, "uplink-deploy stopped before it took the deploy");
                    }
                }
                Err(error) => tracing::error!(%task, %error, "cannot request the task's deploy"),
            }
        });
}
