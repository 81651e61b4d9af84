//! The fleet's factories as the service issued them (`Table::FleetFactories`: name → record):
//! only a registered name with its key's derivation can claim, renew, answer or register
//! (issue 30). The key itself is shown once and never stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::fleet::trust::FactoryKey;
use crate::storage::store::{Store, StoreError, Table};

/// A factory the service issued a key to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FactoryRegistration {
    /// Its unique name.
    pub(crate) name: String,
    /// Hex of the [`FactoryKey`] derived from its key: what MACs and seals are checked with.
    pub(crate) derived_key: String,
    /// When the key was issued.
    pub(crate) created_at: DateTime<Utc>,
    /// Who asked for it (the token's name), for the audit.
    pub(crate) created_by: String,
}

/// Stores a new factory; `Ok(false)` (nothing written) when one of that name exists: names are
/// unique, a second key for a name is never issued silently.
pub(crate) async fn create(
    store: &Store,
    registration: FactoryRegistration,
) -> Result<bool, StoreError> {
    store
        .write(move |batch| {
            let key = registration.name.as_bytes();
            if batch.get(Table::FleetFactories, key)?.is_some() {
                return Ok(false);
            }
            let value = serde_json::to_vec(&registration)?;
            batch.insert(Table::FleetFactories, key, value);
            Ok(true)
        })
        .await
}

/// The key a registered factory's messages are checked with; `None` for a name never issued.
pub(crate) async fn key_of(store: &Store, name: &str) -> Result<Option<FactoryKey>, StoreError> {
    let name = name.to_owned();
    let record: Option<FactoryRegistration> = store
        .read(move |snapshot| snapshot.record(Table::FleetFactories, name.as_bytes()))
        .await?;
    Ok(record.and_then(|r| FactoryKey::from_hex(&r.derived_key)))
}
