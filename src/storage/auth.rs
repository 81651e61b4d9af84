//! Tokens and the audit log, in their own tables of the store: `AuthTokens` (name → record, the
//! secret's hash only) and `AuditLog` (seq → entry). Every write is a writer job, durable when it
//! returns.

use chrono::{DateTime, Utc};

use crate::model::auth::{AuditEntry, TokenRecord};
use crate::storage::store::{Batch, Store, StoreError, Table};

/// Audit entries one page holds at most.
pub(crate) const AUDIT_PAGE_MAX: usize = 1000;
/// Audit entries one query looks at at most (a filter that matches little stops here; the page
/// says where to go on).
const AUDIT_SCAN_MAX: usize = 100_000;

/// Every token, in name order.
pub(crate) async fn tokens(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    store
        .read(|snapshot| {
            snapshot
                .iter(Table::AuthTokens)
                .values()
                .map(|value| Ok(serde_json::from_slice(&value?)?))
                .collect()
        })
        .await
}

/// Stores a new token; `Ok(false)` (nothing written) when one of that name exists.
pub(crate) async fn create_token(store: &Store, record: TokenRecord) -> Result<bool, StoreError> {
    store
        .write(move |batch| {
            if batch
                .get(Table::AuthTokens, record.name.as_bytes())?
                .is_some()
            {
                return Ok(false);
            }
            put(batch, &record)?;
            Ok(true)
        })
        .await
}

/// Stores a token, replacing one of the same name (the bootstrap token follows its variable).
pub(crate) async fn put_token(store: &Store, record: TokenRecord) -> Result<(), StoreError> {
    store.write(move |batch| put(batch, &record)).await
}

/// Deletes a token; whether there was one.
pub(crate) async fn revoke_token(store: &Store, name: &str) -> Result<bool, StoreError> {
    let name = name.to_owned();
    store
        .write(move |batch| {
            let existed = batch.get(Table::AuthTokens, name.as_bytes())?.is_some();
            batch.remove(Table::AuthTokens, name.into_bytes());
            Ok(existed)
        })
        .await
}

fn put(batch: &mut Batch<'_>, record: &TokenRecord) -> Result<(), StoreError> {
    let value = serde_json::to_vec(record)?;
    batch.insert(Table::AuthTokens, record.name.as_bytes(), value);
    Ok(())
}

/// Queues an entry for the audit log (its `seq` is assigned by the writer) without waiting for
/// the commit: the request it records already answered once its own write was durable, so the
/// audit line costs it no second flush. A refused or failed entry is logged.
pub(crate) async fn queue_audit(store: &Store, entry: AuditEntry) {
    let op = move |batch: &mut Batch<'_>| crate::storage::store::stage_audit(batch, entry);
    let done = |outcome: Result<(), StoreError>| {
        if let Err(error) = outcome {
            tracing::error!(%error, "an audit entry was not written");
        }
    };
    store.submit(op, done).await;
}

/// Waits until every write queued before it is durable (one empty job through the writer, which
/// runs jobs in order): a read after it sees them.
pub(crate) async fn settled(store: &Store) -> Result<(), StoreError> {
    store.write(|_| Ok::<_, StoreError>(())).await
}

/// What an audit query asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditQuery {
    /// Only this token's entries.
    pub(crate) principal: Option<String>,
    /// Only entries at or after this time.
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only entries after this `seq` (the previous page's cursor).
    pub(crate) after: Option<u64>,
    /// At most this many (≤ [`AUDIT_PAGE_MAX`]).
    pub(crate) limit: usize,
}

/// A page of the audit log, oldest first, and the cursor to the next one.
pub(crate) async fn audit(
    store: &Store,
    query: AuditQuery,
) -> Result<(Vec<AuditEntry>, Option<u64>), StoreError> {
    store
        .read(move |snapshot| {
            let start = query.after.map_or(0, |seq| seq.saturating_add(1));
            let limit = query.limit.clamp(1, AUDIT_PAGE_MAX);
            let mut page = Vec::new();
            let mut last_seen = None;
            let range = start.to_be_bytes()..;
            for (scanned, value) in snapshot.range(Table::AuditLog, range).values().enumerate() {
                if scanned >= AUDIT_SCAN_MAX || page.len() >= limit {
                    return Ok((page, last_seen));
                }
                let entry: AuditEntry = serde_json::from_slice(&value?)?;
                last_seen = Some(entry.seq);
                let principal_ok = query
                    .principal
                    .as_ref()
                    .is_none_or(|p| *p == entry.principal);
                let since_ok = query.since.is_none_or(|since| entry.at >= since);
                if principal_ok && since_ok {
                    page.push(entry);
                }
            }
            Ok((page, None))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::auth::Role;

    fn token(name: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role: Role::Viewer,
            secret_sha256: "00".repeat(32),
            accounts: Vec::new(),
            repos: Vec::new(),
            engines: false,
            created_at: Utc::now(),
            expires_at: None,
        }
    }

    fn entry(principal: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: Utc::now(),
            principal: principal.into(),
            method: "POST".into(),
            route: "/v1/tasks".into(),
            path: "/v1/tasks".into(),
            status: 201,
        }
    }

    #[tokio::test]
    async fn a_name_is_taken_once_and_revoking_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(create_token(&store, token("ci")).await.unwrap());
        assert!(!create_token(&store, token("ci")).await.unwrap());
        assert_eq!(tokens(&store).await.unwrap().len(), 1);
        assert!(revoke_token(&store, "ci").await.unwrap());
        assert!(!revoke_token(&store, "ci").await.unwrap());
        assert!(tokens(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_created_task_and_its_audit_entry_are_one_write_and_a_replay_adds_none() {
        use crate::storage::store::{NewEvent, Submission};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut task = crate::model::task::Task::for_test("t", "");
        task.spec.idempotency_key = Some("k".into());
        let event = || NewEvent::new("test", "task.submitted", serde_json::json!({}));
        let created = store
            .create_task_audited(task.clone(), "d", event(), Some(entry("ci")))
            .await
            .unwrap();
        assert!(matches!(created, Submission::Created(_)));
        // Durable with the task: no wait for a later job (no `settled`).
        let everything = || AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        };
        let (entries, _) = audit(&store, everything()).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].principal.as_str(), entries[0].status),
            ("ci", 201)
        );
        assert!(entries[0].seq > 0);
        let replayed = store
            .create_task_audited(task, "d", event(), Some(entry("ci")))
            .await
            .unwrap();
        assert!(matches!(replayed, Submission::Replayed(_)));
        assert_eq!(audit(&store, everything()).await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn the_audit_log_pages_and_filters_by_principal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for who in ["a", "b", "a", "a"] {
            queue_audit(&store, entry(who)).await;
        }
        settled(&store).await.unwrap();
        let query = AuditQuery {
            principal: Some("a".into()),
            limit: 2,
            ..AuditQuery::default()
        };
        let (first, cursor) = audit(&store, query.clone()).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| e.principal == "a"));
        let next = AuditQuery {
            after: cursor,
            ..query
        };
        let (rest, cursor) = audit(&store, next).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(cursor, None);
        assert!(rest[0].seq > first[1].seq);
    }
}
