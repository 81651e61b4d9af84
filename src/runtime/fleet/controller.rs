//! The control plane's side of the switches: it owns them (kept in the data dir), changes them
//! only when the API asks, and keeps the value pushed to the factories equal to its own — a value
//! put from outside is overwritten within [`SWITCHES_EVERY`] and counted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::control::{self, ControlKey, FactoryMode, Switches, FACTORY_MODES_MAX, SWITCHES_EVERY};
use crate::platform::metrics;
use crate::platform::nats::{Nats, NatsError};

/// Why a switch did not change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwitchError {
    /// NATS did not take the new value (the old one stays, here and there).
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The data dir did not keep it.
    #[error("the fleet's control state was not saved: {0}")]
    Save(#[from] std::io::Error),
    /// Too many factories are told something already.
    #[error("at most {FACTORY_MODES_MAX} factories may be paused or draining at once")]
    TooMany,
}

/// The switches and where they live.
pub(crate) struct Controller {
    nats: Nats,
    key: ControlKey,
    data_dir: PathBuf,
    switches: Mutex<Switches>,
    /// One change at a time: saved, pushed, then visible.
    changing: tokio::sync::Mutex<()>,
}

impl Controller {
    /// Loads the kept switches and pushes them (the bucket may have lost them, or hold a value
    /// put from outside).
    pub(crate) async fn start(nats: Nats, key: ControlKey, data_dir: PathBuf) -> Arc<Self> {
        let mut switches = control::load_state(&data_dir).await;
        // Factories ignore versions older than the last they accepted: a data dir that lost
        // its state (or is new) starts past whatever valid value is out there.
        if let Ok(Some(pushed)) = control::read_switches(&nats, &key).await {
            if pushed.version >= switches.version {
                switches.version = pushed.version.saturating_add(1);
            }
        }
        if !key.is_set() {
            tracing::warn!(
                "fleet: no control key (`[fleet] control_key_env`): pause, drain and stop reach \
                 the factories unsigned"
            );
        }
        if let Err(error) = control::push_switches(&nats, &key, &switches).await {
            tracing::warn!(%error, "fleet: switches not pushed yet");
        }
        Arc::new(Self {
            nats,
            key,
            data_dir,
            switches: Mutex::new(switches),
            changing: tokio::sync::Mutex::default(),
        })
    }

    /// The key control values are signed with.
    pub(crate) fn key(&self) -> &ControlKey {
        &self.key
    }

    /// The switches now.
    pub(crate) fn switches(&self) -> Switches {
        self.switches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the whole fleet is paused.
    pub(crate) fn paused(&self) -> bool {
        self.switches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .paused
    }

    /// Changes the switches with `change`: pushed, then saved here; the new value is the
    /// control plane's only once both succeeded (a value pushed but not saved is written back
    /// to the old one by [`Controller::enforce`]).
    pub(crate) async fn change(
        &self,
        change: impl FnOnce(&mut Switches),
    ) -> Result<Switches, SwitchError> {
        let _one = self.changing.lock().await;
        let mut next = self.switches();
        change(&mut next);
        next.factories
            .retain(|_, mode| *mode != FactoryMode::Active);
        if next.factories.len() > FACTORY_MODES_MAX {
            return Err(SwitchError::TooMany);
        }
        next.version = next.version.saturating_add(1);
        control::push_switches(&self.nats, &self.key, &next).await?;
        control::save_state(&self.data_dir, &next).await?;
        *self.switches.lock().unwrap_or_else(PoisonError::into_inner) = next.clone();
        Ok(next)
    }

    /// Keeps the pushed value equal to the control plane's for as long as the fleet lives.
    pub(crate) async fn enforce(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWITCHES_EVERY).await;
            let own = self.switches();
            let pushed = match self.read_raw().await {
                Ok(pushed) => pushed,
                Err(error) => {
                    tracing::debug!(%error, "fleet: switches not read");
                    continue;
                }
            };
            let ours = pushed
                .as_ref()
                .and_then(|bytes| self.key.open::<Switches>(bytes));
            if ours.as_ref() == Some(&own) {
                continue;
            }
            if pushed.is_some() {
                ::metrics::counter!(metrics::FLEET_CONTROL_OVERWRITTEN_TOTAL).increment(1);
                tracing::warn!("fleet: the pushed switches differ from the control plane's (put from outside?); writing them back");
            }
            if let Err(error) = control::push_switches(&self.nats, &self.key, &own).await {
                tracing::warn!(%error, "fleet: switches not pushed");
            }
        }
    }

    /// The value in the bucket as it is (`None`: there is none).
    async fn read_raw(&self) -> Result<Option<Vec<u8>>, NatsError> {
        let read = async {
            let value = self
                .nats
                .control()
                .await?
                .get(control::SWITCHES_KEY)
                .await
                .map_err(NatsError::js)?;
            Ok::<_, NatsError>(value.map(|bytes| bytes.to_vec()))
        };
        tokio::time::timeout(control::CONTROL_CALL_TIMEOUT, read)
            .await
            .map_err(|_| NatsError::JetStream("the control bucket did not answer in time".into()))?
    }
}
