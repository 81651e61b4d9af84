//! Silences in the `OpsSilences` table (silence id → silence; UUID v7 ids, so key order is
//! creation order). Written only by Uplink-Respond (which keeps the active ones in its state), each
//! write one writer job, durable before it returns. The table stays bounded: a new silence is
//! refused past [`ACTIVE_SILENCES_MAX`] active ones, and each one made drops the oldest expired
//! past [`EXPIRED_SILENCES_KEPT`].

use chrono::{DateTime, Utc};

use super::{newest, upsert, OpsStore};
use crate::model::ops::silence::{Silence, ACTIVE_SILENCES_MAX, EXPIRED_SILENCES_KEPT};
use crate::storage::store::{Batch, StoreError, Table};

/// Just past every silence id (ids are ASCII).
const SILENCE_KEYS_END: &[u8] = &[0xff];

impl OpsStore {
    /// Stores a new silence (durable), dropping the oldest expired ones past
    /// [`EXPIRED_SILENCES_KEPT`]. `Ok(false)`: [`ACTIVE_SILENCES_MAX`] are active already, nothing
    /// was written.
    pub(crate) async fn add_silence(&self, silence: &Silence) -> Result<bool, StoreError> {
        let bytes = self.store.encode(silence)?;
        let (id, now) = (silence.id.clone(), silence.starts_at);
        self.store
            .write(move |batch| {
                let expired = match expired_if_room(batch, now)? {
                    Some(expired) => expired,
                    None => return Ok(false),
                };
                let excess = expired.len().saturating_sub(EXPIRED_SILENCES_KEPT);
                for key in expired.into_iter().take(excess) {
                    batch.remove(Table::OpsSilences, key);
                }
                batch.insert(Table::OpsSilences, id.as_bytes(), bytes);
                Ok(true)
            })
            .await
    }

    /// Ends a silence at `now` with `by`'s name on it (durable); one that has ended already stays
    /// as it is. `None`: no such silence.
    pub(crate) async fn expire_silence(
        &self,
        id: &str,
        by: String,
        now: DateTime<Utc>,
    ) -> Result<Option<Silence>, StoreError> {
        let key = id.as_bytes().to_vec();
        self.store
            .write(move |batch| {
                upsert(batch, Table::OpsSilences, &key, None, |s: &mut Silence| {
                    if s.ends_at > now {
                        s.ends_at = now;
                        s.expired_by = Some(by);
                    }
                })
            })
            .await
    }

    /// Silences, newest first, at most `limit`: the active ones at `now`, or every kept one.
    pub(crate) async fn silences(
        &self,
        limit: usize,
        include_expired: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Silence>, StoreError> {
        self.store
            .read(move |snapshot| {
                newest(snapshot, Table::OpsSilences, limit, |s: &Silence| {
                    include_expired || s.is_active(now)
                })
            })
            .await
    }
}

/// Inside a writer job: the keys of the expired silences, oldest first, or `None` when
/// [`ACTIVE_SILENCES_MAX`] silences are active at `now`. A record that does not decode is left
/// alone and counted as neither.
fn expired_if_room(
    batch: &Batch<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let keys = batch.keys_in(Table::OpsSilences, &[], SILENCE_KEYS_END, usize::MAX)?;
    let (mut active, mut expired) = (0_usize, Vec::new());
    for key in keys {
        match batch.record::<Silence>(Table::OpsSilences, &key) {
            Ok(Some(silence)) if silence.ends_at > now => active += 1,
            Ok(Some(_)) => expired.push(key),
            Ok(None) | Err(_) => {}
        }
    }
    Ok((active < ACTIVE_SILENCES_MAX).then_some(expired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::silence::SilenceMatchers;
    use crate::storage::store::Store;

    /// A silence of app `web` from `starts_at` to `ends_at`.
    fn silence(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> Silence {
        Silence {
            id: uuid::Uuid::now_v7().to_string(),
            matchers: SilenceMatchers {
                app: Some("web".into()),
                ..SilenceMatchers::default()
            },
            starts_at,
            ends_at,
            comment: String::new(),
            created_by: "test".into(),
            expired_by: None,
        }
    }

    #[tokio::test]
    async fn a_silence_past_the_active_limit_is_refused_and_old_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = OpsStore::new(&store);
        let now = Utc::now();
        let (hour, day) = (chrono::TimeDelta::hours(1), chrono::TimeDelta::days(1));
        let expired: Vec<Silence> = (0..=EXPIRED_SILENCES_KEPT)
            .map(|_| silence(now - day, now - hour))
            .collect();
        let active: Vec<Silence> = (1..ACTIVE_SILENCES_MAX)
            .map(|_| silence(now, now + hour))
            .collect();
        let seeded: Vec<(String, Vec<u8>)> = expired
            .iter()
            .chain(&active)
            .map(|s| (s.id.clone(), serde_json::to_vec(s).unwrap()))
            .collect();
        store
            .write(move |batch| {
                for (id, bytes) in seeded {
                    batch.insert(Table::OpsSilences, id.into_bytes(), bytes);
                }
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();

        assert!(ops.add_silence(&silence(now, now + hour)).await.unwrap());
        let refused = silence(now, now + hour);
        assert!(!ops.add_silence(&refused).await.unwrap(), "past the limit");
        let listed = ops.silences(usize::MAX, false, now).await.unwrap();
        assert_eq!(listed.len(), ACTIVE_SILENCES_MAX);
        assert!(listed.iter().all(|s| s.id != refused.id));
        let every = ops.silences(usize::MAX, true, now).await.unwrap();
        assert_eq!(every.len(), ACTIVE_SILENCES_MAX + EXPIRED_SILENCES_KEPT);
        assert!(
            every.iter().all(|s| s.id != expired[0].id),
            "the oldest expired went"
        );

        // Expiring one ends it now, with the name on it, and makes room again.
        let ended = ops
            .expire_silence(&active[0].id, "me".into(), Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.expired_by.as_deref(), Some("me"));
        assert!(!ended.is_active(Utc::now()));
        assert!(ops
            .add_silence(&silence(Utc::now(), now + hour))
            .await
            .unwrap());
        let unknown = ops.expire_silence("nope", "me".into(), now).await.unwrap();
        assert!(unknown.is_none());
    }
}
