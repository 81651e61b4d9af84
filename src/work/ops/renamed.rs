//! Releases across a rename in `ops.yaml`: at start, an app that lists `previous_names` takes
//! over the running release (its record under `releases/<old>/` and its release state) of the
//! name it had, so it is adopted instead of killed; a running release of a name that left
//! `ops.yaml` without an app claiming it is stopped deliberately, named in the log.

use std::collections::BTreeMap;
use std::time::Duration;

use super::provider::{self, ProviderContext};
use crate::model::ops::error::OpsError;
use crate::model::ops::spec::AppSpec;
use crate::storage::ops::OpsStore;

/// How long a release of a removed app may take to exit after SIGTERM before SIGKILL.
const REMOVED_STOP_GRACE: Duration = Duration::from_secs(2);
/// Directories under `releases/` looked at for removed apps, at most.
const RELEASE_DIRS_MAX: usize = 1024;

/// A rename carried over: the old name and the new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    /// The name the release was recorded under.
    pub from: String,
    /// The app that has it now.
    pub to: String,
}

/// Moves the release of each app's previous name to the app, when the app has none of its own:
/// the `releases/<old>` directory (record, log, exported releases; a running process keeps its
/// working directory across the rename) and the release state (current, last healthy).
pub(crate) async fn carry_over(
    ops: &OpsStore,
    ctx: &ProviderContext,
    apps: &BTreeMap<String, AppSpec>,
) -> Result<Vec<Carried>, OpsError> {
    let mut carried = Vec::new();
    for (name, app) in apps {
        if ops.release(name).await?.current.is_some() {
            continue;
        }
        for old in &app.previous_names {
            let before = ops.release(old).await?;
            let old_dir = provider::app_dir(&ctx.data_dir, old);
            let new_dir = provider::app_dir(&ctx.data_dir, name);
            if before.current.is_none() && !old_dir.is_dir() {
                continue;
            }
            if old_dir.is_dir() && !new_dir.exists() {
                std::fs::rename(&old_dir, &new_dir)?;
            }
            let (current, last_healthy) = (before.current, before.last_healthy);
            ops.update_release(name, move |r| {
                r.current = current;
                r.last_healthy = last_healthy;
            })
            .await?;
            ops.update_release(old, |r| {
                r.current = None;
                r.last_healthy = None;
            })
            .await?;
            carried.push(Carried {
                from: old.clone(),
                to: name.clone(),
            });
            break;
        }
    }
    Ok(carried)
}

/// Stops the running releases recorded under names `ops.yaml` no longer has (no app lists them
/// in `previous_names`, or the app had a release of its own). Returns each name with the
/// process group stopped.
pub(crate) async fn stop_removed(
    ctx: &ProviderContext,
    apps: &BTreeMap<String, AppSpec>,
) -> Vec<(String, i32)> {
    let releases = ctx.data_dir.join("releases");
    let names: Vec<String> = std::fs::read_dir(&releases)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .take(RELEASE_DIRS_MAX)
                .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
                .filter(|name| !apps.contains_key(name))
                .collect()
        })
        .unwrap_or_default();
    let mut stopped = Vec::new();
    for name in names {
        if let Some(pgid) = provider::running_group(&ctx.data_dir, &name) {
            tracing::warn!(app = %name, pgid, "stopping the release of an app that left ops.yaml (no app lists it in previous_names)");
            provider::local_stop(ctx, &name, REMOVED_STOP_GRACE).await;
            stopped.push((name, pgid));
        }
    }
    stopped
}
