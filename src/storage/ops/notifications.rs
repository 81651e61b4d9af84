//! The notifications outbox in the `Notifications` table (notification id → notification; UUID v7
//! ids, so key order is creation order). A notification is written here, durable, before any
//! receiver is called; the sender (`runtime::notifier`) records every attempt on it. Bounded:
//! each new one drops the oldest finished ones past [`NOTIFICATIONS_KEPT`].

use super::{newest, upsert, OpsStore};
use crate::model::ops::notification::{Notification, NOTIFICATIONS_KEPT};
use crate::storage::store::{Batch, StoreError, Table};

/// Just past every notification id (ids are ASCII).
const KEYS_END: &[u8] = &[0xff];

impl OpsStore {
    /// Writes a new notification to the outbox (durable), dropping the oldest finished ones past
    /// [`NOTIFICATIONS_KEPT`].
    pub(crate) async fn enqueue_notification(&self, n: &Notification) -> Result<(), StoreError> {
        let bytes = self.store.encode(n)?;
        let id = n.id.clone();
        self.store
            .write(move |batch| {
                batch.insert(Table::Notifications, id.as_bytes(), bytes);
                prune(batch)
            })
            .await
    }

    /// Replaces a notification's record (the sender's routing and attempts), durable.
    pub(crate) async fn put_notification(&self, n: Notification) -> Result<(), StoreError> {
        let key = n.id.clone().into_bytes();
        self.store
            .write(move |batch| {
                upsert(
                    batch,
                    Table::Notifications,
                    &key,
                    None,
                    |stored: &mut Notification| {
                        *stored = n;
                    },
                )
                .map(|_| ())
            })
            .await
    }

    /// Writes `reminder` (a new notification) and `old` (its reminder no longer due) in one
    /// durable write: a crash never sends a reminder twice nor loses the schedule.
    pub(crate) async fn remind(
        &self,
        old: Notification,
        reminder: &Notification,
    ) -> Result<(), StoreError> {
        let bytes = self.store.encode(reminder)?;
        let id = reminder.id.clone();
        let key = old.id.clone().into_bytes();
        self.store
            .write(move |batch| {
                upsert(
                    batch,
                    Table::Notifications,
                    &key,
                    None,
                    |stored: &mut Notification| {
                        *stored = old;
                    },
                )?;
                batch.insert(Table::Notifications, id.as_bytes(), bytes);
                prune(batch)
            })
            .await
    }

    /// Notifications, newest first, at most `limit`; `pending_only`: those with something left
    /// to send.
    pub(crate) async fn notifications(
        &self,
        limit: usize,
        pending_only: bool,
    ) -> Result<Vec<Notification>, StoreError> {
        self.store
            .read(move |snapshot| {
                newest(snapshot, Table::Notifications, limit, |n: &Notification| {
                    !pending_only || !n.done()
                })
            })
            .await
    }
}

/// Inside a writer job: drops the oldest finished notifications past [`NOTIFICATIONS_KEPT`], then,
/// if that is not enough (no receiver configured, or one down for long), the oldest of the rest:
/// the outbox stays bounded whatever the receivers do.
fn prune(batch: &mut Batch<'_>) -> Result<(), StoreError> {
    let keys = batch.keys_in(Table::Notifications, &[], KEYS_END, usize::MAX)?;
    let mut excess = keys.len().saturating_sub(NOTIFICATIONS_KEPT);
    if excess == 0 {
        return Ok(());
    }
    let mut unfinished = Vec::new();
    for key in keys {
        if excess == 0 {
            break;
        }
        match batch.record::<Notification>(Table::Notifications, &key) {
            Ok(Some(n)) if !n.done() => unfinished.push(key),
            _ => {
                batch.remove(Table::Notifications, key);
                excess -= 1;
            }
        }
    }
    if excess > 0 {
        tracing::warn!(
            dropped = excess,
            "notifications outbox full: dropping the oldest unsent"
        );
    }
    for key in unfinished.into_iter().take(excess) {
        batch.remove(Table::Notifications, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::notification::NotificationKind;
    use crate::storage::store::Store;

    #[tokio::test]
    async fn the_outbox_stays_bounded_and_drops_finished_ones_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = OpsStore::new(&store);
        let note = || {
            Notification::new(
                NotificationKind::IncidentOpened,
                None,
                None,
                "i".into(),
                "s".into(),
            )
        };
        let mut finished = note();
        finished.routed = true;
        ops.enqueue_notification(&finished).await.unwrap();
        for _ in 0..NOTIFICATIONS_KEPT + 5 {
            ops.enqueue_notification(&note()).await.unwrap();
        }
        let kept = ops.notifications(usize::MAX, false).await.unwrap();
        assert_eq!(kept.len(), NOTIFICATIONS_KEPT);
        assert!(
            kept.iter().all(|n| n.id != finished.id),
            "the finished one went first"
        );
        assert_eq!(
            ops.notifications(usize::MAX, true).await.unwrap().len(),
            NOTIFICATIONS_KEPT
        );
    }
}
