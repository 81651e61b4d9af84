//! Fleet control that reaches the factories: the switches (fleet-wide pause, per-factory pause
//! and drain) and the stop of one job.
//!
//! The switches are the control plane's state, kept in the service's data dir and changed only
//! through the API (audited there). They are *pushed* to factories as one signed value in the
//! control bucket ([`SWITCHES_KEY`]): an HMAC-SHA256 over the body with the shared control key
//! (`[fleet] control_key_env` / `glitchlab factory --control-key-env`) and a version that only
//! grows, so a value put from outside (`kv put glitchlab_control ...`) or replayed is ignored by
//! the factories, and the control plane writes its own back. Stops travel on the core subject
//! `glitchlab.stop.<job id>`, signed the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::platform::nats::{Nats, NatsError};

/// The key of the signed switches in the control bucket.
pub(crate) const SWITCHES_KEY: &str = "switches";
/// Subject prefix of a job's stop (core NATS): `glitchlab.stop.<job id>`.
pub(crate) const STOP_SUBJECT_PREFIX: &str = "glitchlab.stop.";
/// A factory with a free slot that has not pulled for this long is unhealthy (a stall).
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(10);
/// Every read or write of a control value waits at most this long (a stalled KV never stalls
/// the caller's loop).
pub(crate) const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a factory reads the switches, and the control plane checks the pushed value.
pub(crate) const SWITCHES_EVERY: Duration = Duration::from_millis(500);
/// The file (in the service's data dir) that keeps the switches across restarts.
pub(crate) const STATE_FILE: &str = "fleet-control.json";
/// Per-factory entries kept at most (a bound on the pushed value's size).
pub(crate) const FACTORY_MODES_MAX: usize = 1024;

/// What one factory is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FactoryMode {
    /// Takes jobs.
    #[default]
    Active,
    /// Takes no job until resumed; what it runs goes on.
    Paused,
    /// Finishes what it runs and takes no job any more (until resumed).
    Draining,
}

/// The switches, as the control plane keeps and pushes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Switches {
    /// Grows with every change: a factory never goes back to an older value (a replay).
    pub(crate) version: u64,
    /// No factory takes a job (the kill switch).
    pub(crate) paused: bool,
    /// Factories told something other than [`FactoryMode::Active`], by name.
    #[serde(default)]
    pub(crate) factories: BTreeMap<String, FactoryMode>,
}

impl Switches {
    /// What `factory` is told (the fleet-wide pause aside).
    pub(crate) fn mode_of(&self, factory: &str) -> FactoryMode {
        self.factories.get(factory).copied().unwrap_or_default()
    }
}

/// A value with its MAC, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    /// The JSON of the value.
    body: String,
    /// Hex of HMAC-SHA256(key, body); empty without a key.
    mac: String,
}

/// The shared key control values are signed with; without one they travel unsigned (the
/// factories then cannot tell the control plane's value from anyone's: docs/fleet.md says so).
#[derive(Clone, Default)]
pub(crate) struct ControlKey(Option<Vec<u8>>);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ControlKey(set)"
        } else {
            "ControlKey(none)"
        })
    }
}

impl ControlKey {
    /// The key in the environment variable `name` (none when unset or empty).
    pub(crate) fn from_env(name: Option<&str>) -> Self {
        let value = name.and_then(|name| std::env::var(name).ok());
        Self(value.filter(|v| !v.is_empty()).map(String::into_bytes))
    }

    /// Whether control values are signed.
    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn mac(&self, body: &str) -> String {
        let Some(key) = &self.0 else {
            return String::new();
        };
        match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(body.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }

    /// `value` sealed for the wire.
    pub(crate) fn seal<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_string(value)?;
        let mac = self.mac(&body);
        serde_json::to_vec(&Sealed { body, mac })
    }

    /// The value in `bytes` when its MAC is right (any value without a key); `None` otherwise.
    pub(crate) fn open<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Option<T> {
        let sealed: Sealed = serde_json::from_slice(bytes).ok()?;
        let good = match &self.0 {
            Some(key) => {
                let expected = hex::decode(&sealed.mac).ok()?;
                let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
                mac.update(sealed.body.as_bytes());
                mac.verify_slice(&expected).is_ok()
            }
            None => true,
        };
        good.then(|| serde_json::from_str(&sealed.body).ok())
            .flatten()
    }
}

/// A job's stop, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stop {
    /// The job to stop.
    pub(crate) job_id: Uuid,
    /// Why (shown in the factory's log and result).
    pub(crate) reason: String,
}

/// Tells whichever factory runs `job` to kill it (best effort, core NATS: a factory that has not
/// claimed it yet finds it withdrawn from the stream instead).
pub(crate) async fn send_stop(nats: &Nats, key: &ControlKey, job: Uuid, reason: &str) {
    let stop = Stop {
        job_id: job,
        reason: reason.to_owned(),
    };
    let Ok(payload) = key.seal(&stop) else { return };
    let subject = format!("{STOP_SUBJECT_PREFIX}{job}");
    match tokio::time::timeout(CONTROL_CALL_TIMEOUT, nats.publish_core(subject, payload)).await {
        Ok(Ok(())) => tracing::info!(%job, reason, "fleet: stop sent"),
        Ok(Err(error)) => tracing::warn!(%job, %error, "fleet: stop not sent"),
        Err(_) => tracing::warn!(%job, "fleet: stop not sent in time"),
    }
}

/// Reads the switches pushed to the control bucket, when they are there and signed right.
pub(crate) async fn read_switches(
    nats: &Nats,
    key: &ControlKey,
) -> Result<Option<Switches>, NatsError> {
    let read = async {
        let value = nats
            .control()
            .await?
            .get(SWITCHES_KEY)
            .await
            .map_err(NatsError::js)?;
        Ok::<_, NatsError>(value.and_then(|bytes| key.open::<Switches>(&bytes)))
    };
    tokio::time::timeout(CONTROL_CALL_TIMEOUT, read)
        .await
        .map_err(|_| NatsError::JetStream("the control bucket did not answer in time".into()))?
}

/// Pushes `switches` to the control bucket.
pub(crate) async fn push_switches(
    nats: &Nats,
    key: &ControlKey,
    switches: &Switches,
) -> Result<(), NatsError> {
    let bytes = key.seal(switches).map_err(NatsError::js)?;
    let write = async {
        nats.control()
            .await?
            .put(SWITCHES_KEY, bytes.into())
            .await
            .map_err(NatsError::js)?;
        Ok::<_, NatsError>(())
    };
    tokio::time::timeout(CONTROL_CALL_TIMEOUT, write)
        .await
        .map_err(|_| NatsError::JetStream("the control bucket did not answer in time".into()))?
}

/// The switches the service kept (defaults when it never changed one, or the file is unreadable:
/// said in the log).
pub(crate) async fn load_state(data_dir: &Path) -> Switches {
    let path = data_dir.join(STATE_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "fleet: control state unreadable; using defaults");
            Switches::default()
        }),
        Err(_) => Switches::default(),
    }
}

/// Keeps the switches durably (written to a temporary file, synced, renamed).
pub(crate) async fn save_state(data_dir: &Path, switches: &Switches) -> std::io::Result<()> {
    let path: PathBuf = data_dir.join(STATE_FILE);
    let temporary = data_dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(switches).map_err(std::io::Error::other)?;
    let file = async {
        tokio::fs::write(&temporary, &bytes).await?;
        tokio::fs::File::open(&temporary).await?.sync_all().await?;
        tokio::fs::rename(&temporary, &path).await
    };
    file.await
}

/// Whether a factory is stalled: it has a free slot, is told to take jobs, and has not pulled
/// for [`STALL_AFTER`] (or its heartbeat is that old); why, when it is.
pub(crate) fn stalled(
    record: &crate::model::fleet::FactoryRecord,
    told: FactoryMode,
    fleet_paused: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let limit = chrono::Duration::from_std(STALL_AFTER).unwrap_or(chrono::Duration::MAX);
    if now - record.heartbeat_at > limit {
        return Some(format!(
            "no heartbeat for {}s",
            (now - record.heartbeat_at).num_seconds()
        ));
    }
    let takes_jobs = !fleet_paused && told == FactoryMode::Active && !record.draining;
    let free = record.slots.saturating_sub(record.running.len());
    if !takes_jobs || free == 0 {
        return None;
    }
    let since = record.last_pull_at?;
    let idle = now - since;
    (idle > limit).then(|| {
        format!(
            "{free} free slot(s) and no pull for {}s",
            idle.num_seconds()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_signed_with_another_key_or_unsigned_is_refused() {
        let key = ControlKey(Some(b"k1".to_vec()));
        let switches = Switches {
            version: 3,
            paused: true,
            factories: BTreeMap::new(),
        };
        let sealed = key.seal(&switches).unwrap();
        assert_eq!(key.open::<Switches>(&sealed), Some(switches.clone()));
        let other = ControlKey(Some(b"k2".to_vec()));
        assert_eq!(key.open::<Switches>(&other.seal(&switches).unwrap()), None);
        assert_eq!(
            key.open::<Switches>(&ControlKey::default().seal(&switches).unwrap()),
            None
        );
        assert_eq!(key.open::<Switches>(b"true"), None);
    }
}
