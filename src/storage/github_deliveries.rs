//! GitHub webhook deliveries already handled (`Table::GithubDeliveries`: `X-GitHub-Delivery` →
//! when it was first seen, epoch ms): a redelivery is answered without being acted on twice.
//! Bounded: past [`DELIVERIES_KEPT_MAX`] entries, those older than [`DELIVERY_KEPT_MS`] go, and
//! if none is that old, the first in key order goes.

use crate::storage::store::{Store, StoreError, Table};

/// Deliveries remembered at most.
pub(crate) const DELIVERIES_KEPT_MAX: usize = 10_000;
/// How long a delivery is remembered (GitHub redelivers within days at most on request).
pub(crate) const DELIVERY_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest delivery id kept (GitHub's are UUIDs).
pub(crate) const DELIVERY_ID_BYTES_MAX: usize = 128;

/// Records `delivery` as seen at `now_ms`; `Ok(false)` when it was seen before.
pub(crate) async fn first_seen(
    store: &Store,
    delivery: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let key = delivery.as_bytes().to_vec();
    store
        .write(move |batch| {
            if batch.get(Table::GithubDeliveries, &key)?.is_some() {
                return Ok(false);
            }
            let snapshot = batch.committed();
            if snapshot.len(Table::GithubDeliveries) >= DELIVERIES_KEPT_MAX {
                let mut expired = Vec::new();
                let mut first = None;
                for entry in snapshot.iter(Table::GithubDeliveries) {
                    let (old, seen) = entry?;
                    first.get_or_insert_with(|| old.to_vec());
                    let seen = <[u8; 8]>::try_from(seen.as_ref()).map_or(0, i64::from_be_bytes);
                    if now_ms - seen > DELIVERY_KEPT_MS {
                        expired.push(old.to_vec());
                    }
                }
                if expired.is_empty() {
                    expired.extend(first);
                }
                for old in expired {
                    batch.remove(Table::GithubDeliveries, old);
                }
            }
            batch.insert(Table::GithubDeliveries, key, now_ms.to_be_bytes().to_vec());
            Ok(true)
        })
        .await
}
