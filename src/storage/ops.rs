//! What ops persists, in its own tables of the store: deploy records, incidents, check results,
//! each app's release state and the commits whose verify passed.
//!
//! Tables: `OpsDeploys` (deploy id → record), `OpsDeploysByApp` (`<app>/<deploy id>` → empty,
//! `<app>` → [`PrunedDeploys`], and the [`DEPLOYS_INDEXED`] marker), `OpsIncidents` (incident id →
//! incident), `OpsChecks` (`<app>/<check>` ++ 0 ++ seq → result), `OpsReleases` (app → release
//! state), `OpsVerified` (`<app>/<sha>` → time), `OpsSilences` (silence id → silence, see
//! [`silences`]). Ids are UUID v7, so key order is creation order.
//!
//! Deploy history is kept per app: a record and its index entry are written by one writer job,
//! which also drops the app's oldest *ended* records past [`DEPLOY_HISTORY_MAX`] (never one still
//! awaiting approval, queued or running) and adds them to the app's [`PrunedDeploys`]. So one
//! app's dispatch reads that app's few records, not every deploy ever stored. A data dir from
//! before the index is indexed once at start ([`OpsStore::index_deploys`]); until then reads fall
//! back to scanning every record, as they used to.
//! Read-modify-writes are writer jobs ([`Store::write`]): the store's one writer applies them one
//! after another, so a deploy job, an incident job and an actor may change one record at once
//! without losing a change. Every write is durable before it returns.

use chrono::Utc;
use serde::Serialize;

use crate::model::ops::records::*;
use crate::storage::store::{Batch, Snapshot, Store, StoreError, Table};

/// Ops' records. Cheap to clone.
#[derive(Clone)]
pub(crate) struct OpsStore {
    store: Store,
}

impl OpsStore {
    /// Ops' records in `store`'s database.
    pub(crate) fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Writes a deploy record and its app's index entry (durable, one job), dropping the app's
    /// oldest ended records past [`DEPLOY_HISTORY_MAX`].
    pub(crate) async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        let bytes = self.store.encode(record)?;
        let (app, id) = (record.app.clone(), record.id.clone());
        self.store
            .write(move |batch| {
                batch.insert(Table::OpsDeploys, id.as_bytes(), bytes);
                batch.insert(
                    Table::OpsDeploysByApp,
                    deploy_index_key(&app, &id),
                    Vec::new(),
                );
                prune_deploys(batch, &app)
            })
            .await
    }

    /// Indexes, once, the deploy records a data dir holds from before the per-app index, and caps
    /// each app's history. Run at start, before any actor. Answers how many records it indexed
    /// (0 when the index was built already). A record that does not decode stays unindexed
    /// (logged): it used to make every read of the history fail.
    pub(crate) async fn index_deploys(&self) -> Result<usize, StoreError> {
        self.store
            .write(|batch| {
                if batch
                    .get(Table::OpsDeploysByApp, DEPLOYS_INDEXED)?
                    .is_some()
                {
                    return Ok(0);
                }
                /// The one field indexing needs.
                #[derive(serde::Deserialize)]
                struct AppOf {
                    app: String,
                }
                let mut found = Vec::new();
                let mut unreadable = 0_usize;
                for entry in batch.committed().iter(Table::OpsDeploys) {
                    let (id, bytes) = entry?;
                    match serde_json::from_slice::<AppOf>(&bytes) {
                        Ok(AppOf { app }) => found.push((app, id)),
                        Err(_) => unreadable += 1,
                    }
                }
                if unreadable > 0 {
                    tracing::warn!(
                        unreadable,
                        "deploy records that do not decode were not indexed"
                    );
                }
                let mut apps = std::collections::BTreeSet::new();
                for (app, id) in &found {
                    let key = [app.as_bytes(), b"/", id.as_ref()].concat();
                    batch.insert(Table::OpsDeploysByApp, key, Vec::new());
                    apps.insert(app.clone());
                }
                for app in &apps {
                    prune_deploys(batch, app)?;
                }
                batch.insert(Table::OpsDeploysByApp, DEPLOYS_INDEXED, Vec::new());
                Ok(found.len())
            })
            .await
    }

    /// Changes a deploy record (durable); `None` when it does not exist.
    pub(crate) async fn update_deploy(
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
    pub(crate) async fn deploy(&self, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        get(&self.store, Table::OpsDeploys, id).await
    }

    /// Deploys, newest first, at most `limit`.
    pub(crate) async fn deploys(&self, limit: usize) -> Result<Vec<DeployRecord>, StoreError> {
        let limit = limit.min(LIST_LIMIT_MAX);
        self.store
            .read(move |snapshot| {
                newest(snapshot, Table::OpsDeploys, limit, |_: &DeployRecord| true)
            })
            .await
    }

    /// An app's kept deploys, oldest first (at most [`DEPLOY_HISTORY_MAX`] ended ones, and
    /// every unfinished one).
    pub(crate) async fn deploys_of(&self, app: &str) -> Result<Vec<DeployRecord>, StoreError> {
        Ok(self.deploy_history(app).await?.records)
    }

    /// An app's kept deploys, oldest first, with what its dropped ones count for (what burn-in
    /// counts), read from one snapshot.
    pub(crate) async fn deploy_history(&self, app: &str) -> Result<DeployHistory, StoreError> {
        let app = app.to_owned();
        self.store
            .read(move |snapshot| {
                let records = if snapshot.contains(Table::OpsDeploysByApp, DEPLOYS_INDEXED)? {
                    indexed_deploys(snapshot, &app)?
                } else {
                    every_deploy_of(snapshot, &app)?
                };
                let pruned = snapshot
                    .record(Table::OpsDeploysByApp, app.as_bytes())?
                    .unwrap_or_default();
                Ok(DeployHistory { records, pruned })
            })
            .await
    }

    /// Writes an incident (durable).
    pub(crate) async fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        put(
            &self.store,
            Table::OpsIncidents,
            incident.id.as_bytes(),
            incident,
        )
        .await
    }

    /// Changes an incident (durable).
    pub(crate) async fn update_incident(
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
    pub(crate) async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        get(&self.store, Table::OpsIncidents, id).await
    }

    /// Incidents, newest first, at most `limit`, those `keep` accepts.
    pub(crate) async fn incidents_where(
        &self,
        limit: usize,
        keep: impl Fn(&Incident) -> bool + Send + 'static,
    ) -> Result<Vec<Incident>, StoreError> {
        let limit = limit.min(LIST_LIMIT_MAX);
        self.store
            .read(move |snapshot| newest(snapshot, Table::OpsIncidents, limit, keep))
            .await
    }

    /// A page of incidents, newest first, older than `before` (an incident id) when given, that
    /// `keep` accepts; and the cursor of the next page (`None` on the last). Looks at
    /// [`INCIDENT_PAGE_SCAN_MAX`] records at most per page.
    pub(crate) async fn incidents_page(
        &self,
        limit: usize,
        before: Option<String>,
        keep: impl Fn(&Incident) -> bool + Send + 'static,
    ) -> Result<(Vec<Incident>, Option<String>), StoreError> {
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        self.store
            .read(move |snapshot| {
                let entries = match &before {
                    Some(id) => snapshot.range(Table::OpsIncidents, ..id.as_bytes().to_vec()),
                    None => snapshot.iter(Table::OpsIncidents),
                };
                let mut page = Vec::new();
                // The next page starts just below the last record looked at.
                let mut last_seen: Option<String> = None;
                for (scanned, value) in entries.values().rev().enumerate() {
                    if page.len() >= limit || scanned >= INCIDENT_PAGE_SCAN_MAX {
                        return Ok((page, last_seen));
                    }
                    let incident: Incident = serde_json::from_slice(&value?)?;
                    last_seen = Some(incident.id.clone());
                    if keep(&incident) {
                        page.push(incident);
                    }
                }
                Ok((page, None))
            })
            .await
    }

    /// Stores a check result, keeping the newest [`CHECK_HISTORY_MAX`] of that check (durable).
    pub(crate) async fn record_check(&self, result: &CheckResult) -> Result<(), StoreError> {
        let prefix = check_prefix(&result.app, &result.check);
        let bytes = self.store.encode(result)?;
        self.store
            .write(move |batch| {
                let seq = batch.generate_id()?;
                batch.insert(
                    Table::OpsChecks,
                    [prefix.as_slice(), &seq.to_be_bytes()].concat(),
                    bytes,
                );
                // Just past every key of this check: the separator plus one.
                let end = prefix_end(&prefix);
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
    pub(crate) async fn check_history(
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
    pub(crate) async fn release(&self, app: &str) -> Result<ReleaseState, StoreError> {
        Ok(get(&self.store, Table::OpsReleases, app)
            .await?
            .unwrap_or_default())
    }

    /// Changes an app's release state (durable).
    pub(crate) async fn update_release(
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
    pub(crate) async fn verified(&self, app: &str, sha: &str) -> Result<bool, StoreError> {
        let key = format!("{app}/{sha}");
        self.store
            .read(move |snapshot| snapshot.contains(Table::OpsVerified, key.as_bytes()))
            .await
    }

    /// Records that `sha`'s verify passed for `app` (durable).
    pub(crate) async fn mark_verified(&self, app: &str, sha: &str) -> Result<(), StoreError> {
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

/// The key in `OpsDeploysByApp` saying every record of `OpsDeploys` has its index entry. App
/// names are letters, digits, `-` and `_`, so no app's keys start with NUL.
pub(crate) const DEPLOYS_INDEXED: &[u8] = b"\0indexed";

/// Where an app's index entries start: `<app>/` (an app name has no `/`).
fn deploy_index_prefix(app: &str) -> Vec<u8> {
    [app.as_bytes(), b"/"].concat()
}

/// The index entry of deploy `id` of `app`.
fn deploy_index_key(app: &str, id: &str) -> Vec<u8> {
    [app.as_bytes(), b"/", id.as_bytes()].concat()
}

/// Just past every key starting with `prefix` (whose last byte is not 255).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    end
}

/// An app's records through its index entries, oldest first.
fn indexed_deploys(snapshot: &Snapshot<'_>, app: &str) -> Result<Vec<DeployRecord>, StoreError> {
    let prefix = deploy_index_prefix(app);
    let mut records = Vec::new();
    for key in snapshot.scan_prefix(Table::OpsDeploysByApp, &prefix).keys() {
        let key = key?;
        let id = key.get(prefix.len()..).unwrap_or_default();
        // An entry whose record is gone (dropped in a group this read straddles) is skipped.
        if let Some(record) = snapshot.record::<DeployRecord>(Table::OpsDeploys, id)? {
            if record.app == app {
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// An app's records by scanning every deploy (a data dir not indexed yet), oldest first.
fn every_deploy_of(snapshot: &Snapshot<'_>, app: &str) -> Result<Vec<DeployRecord>, StoreError> {
    let mut records = Vec::new();
    for bytes in snapshot.iter(Table::OpsDeploys).values() {
        let record: DeployRecord = serde_json::from_slice(&bytes?)?;
        if record.app == app {
            records.push(record);
        }
    }
    Ok(records)
}

/// Inside a writer job: drops `app`'s oldest ended records (and their index entries) until at
/// most [`DEPLOY_HISTORY_MAX`] remain, never one that has not ended (those stay past the cap),
/// and counts them in the app's [`PrunedDeploys`]. A record that does not decode is kept; an index
/// entry without a record is removed.
fn prune_deploys(batch: &mut Batch<'_>, app: &str) -> Result<(), StoreError> {
    let prefix = deploy_index_prefix(app);
    let keys = batch.keys_in(
        Table::OpsDeploysByApp,
        &prefix,
        &prefix_end(&prefix),
        usize::MAX,
    )?;
    let mut excess = keys.len().saturating_sub(DEPLOY_HISTORY_MAX);
    if excess == 0 {
        return Ok(());
    }
    let mut pruned: PrunedDeploys = batch
        .record(Table::OpsDeploysByApp, app.as_bytes())?
        .unwrap_or_default();
    for key in keys {
        if excess == 0 {
            break;
        }
        let id = key.get(prefix.len()..).unwrap_or_default().to_vec();
        match batch.record::<DeployRecord>(Table::OpsDeploys, &id) {
            Ok(Some(record)) if record.status.is_terminal() => {
                pruned.add(&record);
                batch.remove(Table::OpsDeploys, id);
            }
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => continue,
        }
        batch.remove(Table::OpsDeploysByApp, key);
        excess -= 1;
    }
    batch.insert(
        Table::OpsDeploysByApp,
        app.as_bytes(),
        serde_json::to_vec(&pruned)?,
    );
    Ok(())
}

/// Incidents one page looks at at most (a filter that matches little stops here; the cursor says
/// where to go on).
pub(crate) const INCIDENT_PAGE_SCAN_MAX: usize = 10_000;

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
    let bytes = store.encode(record)?;
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
    let bytes = batch.encode(&record)?;
    batch.insert(table, key, bytes);
    Ok(Some(record))
}

mod notifications;
mod silences;
#[cfg(test)]
mod tests;
