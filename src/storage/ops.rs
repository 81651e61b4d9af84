//! What ops persists, in its own tables of the store: deploy records, incidents, check results,
//! each app's release state and the commits whose verify passed.
//!
//! Tables: `OpsDeploys` (deploy id → record), `OpsIncidents` (incident id → incident),
//! `OpsChecks` (`<app>/<check>` ++ 0 ++ seq → result), `OpsReleases` (app → release state),
//! `OpsVerified` (`<app>/<sha>` → time). Ids are UUID v7, so key order is creation order.
//! Read-modify-writes are writer jobs ([`Store::write`]): the store's one writer applies them one
//! after another, so a deploy job, an incident job and an actor may change one record at once
//! without losing a change. Every write is durable before it returns.

use chrono::Utc;
use serde::Serialize;

use crate::model::ops::records::*;
use crate::storage::store::{Batch, Snapshot, Store, StoreError, Table};
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
