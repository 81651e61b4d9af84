//! The factory's side of fleet control: it follows the control plane's signed switches (the
//! fleet-wide pause, its own pause or drain), holds a job it fetched while paused without
//! spending a delivery, obeys a job's stop, and keeps the registry snapshot the pull loop reads —
//! so nothing between a fetch and a claim waits on NATS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use uuid::Uuid;

use super::{gate, Factory};
use crate::model::fleet::FactoryRecord;
use crate::platform::nats;
use crate::runtime::fleet::control::{
    self, ControlKey, FactoryMode, Stop, CONTROL_CALL_TIMEOUT, STOP_SUBJECT_PREFIX, SWITCHES_EVERY,
};
use crate::runtime::fleet::FACTORY_TTL;

/// The registry snapshot is refreshed every this many switch reads.
const REGISTRY_EVERY_TICKS: u32 = 2;
/// While held, a fetched job's lease is renewed this often at least.
const HOLD_TICK: Duration = Duration::from_millis(200);
/// A job is held through a pause at most this long, then handed back (a delivery spent).
const HOLD_MAX: Duration = Duration::from_secs(24 * 3600);
/// Registered factories read into the snapshot at most.
const REGISTRY_MAX: usize = 1000;

/// What the control plane tells this factory, as last read and verified.
#[derive(Default)]
pub(super) struct FactoryControl {
    key: ControlKey,
    fleet_paused: AtomicBool,
    mode: Mutex<FactoryMode>,
    /// The highest switches version accepted: an older value (a replay) is ignored.
    version: AtomicU64,
    /// When a pull loop last asked for a job.
    last_pull: Mutex<Option<DateTime<Utc>>>,
    /// The other factories, as last read (warm-clone placement reads this, never NATS).
    registry: Mutex<Vec<FactoryRecord>>,
}

impl FactoryControl {
    /// Follows switches signed with `key`.
    pub(super) fn new(key: ControlKey) -> Self {
        Self {
            key,
            // Counted from the start: a factory that never pulls is stalled too.
            last_pull: Mutex::new(Some(Utc::now())),
            ..Self::default()
        }
    }

    /// Whether this factory may fetch a job now (neither paused nor draining).
    pub(super) fn takes_jobs(&self) -> bool {
        !self.holds() && self.mode() == FactoryMode::Active
    }

    /// Whether claims are held (the fleet-wide pause or this factory's own).
    pub(super) fn holds(&self) -> bool {
        self.fleet_paused.load(Ordering::SeqCst) || self.mode() == FactoryMode::Paused
    }

    /// What this factory is told.
    pub(super) fn mode(&self) -> FactoryMode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a pull (the stall detector reads it from the heartbeat).
    pub(super) fn pulled(&self) {
        *self
            .last_pull
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Utc::now());
    }

    /// When a pull loop last asked for a job.
    pub(super) fn last_pull(&self) -> Option<DateTime<Utc>> {
        *self
            .last_pull
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry as last read.
    pub(super) fn registry(&self) -> Vec<FactoryRecord> {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key stops are verified with.
    pub(super) fn key(&self) -> &ControlKey {
        &self.key
    }
}

/// Reads the switches (and now and then the registry) for as long as the factory runs; a
/// change wakes the heartbeat.
pub(super) async fn follow(factory: std::sync::Arc<Factory>) {
    let mut ticks = 0u32;
    loop {
        match control::read_switches(&factory.nats, &factory.control.key).await {
            Ok(Some(switches)) => apply(&factory, &switches),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "switches not read"),
        }
        if ticks % REGISTRY_EVERY_TICKS == 0 {
            let read = tokio::time::timeout(CONTROL_CALL_TIMEOUT, read_registry(&factory)).await;
            if let Ok(Ok(records)) = read {
                *factory
                    .control
                    .registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = records;
            }
        }
        ticks = ticks.wrapping_add(1);
        tokio::time::sleep(SWITCHES_EVERY).await;
    }
}

fn apply(factory: &Factory, switches: &control::Switches) {
    let control = &factory.control;
    if switches.version < control.version.load(Ordering::SeqCst) {
        tracing::warn!(
            version = switches.version,
            "ignored switches older than the last ones (a replay?)"
        );
        return;
    }
    control.version.store(switches.version, Ordering::SeqCst);
    let mode = switches.mode_of(&factory.name);
    let was_paused = control.fleet_paused.swap(switches.paused, Ordering::SeqCst);
    let was = std::mem::replace(
        &mut *control.mode.lock().unwrap_or_else(PoisonError::into_inner),
        mode,
    );
    if was != mode || was_paused != switches.paused {
        tracing::info!(
            ?mode,
            fleet_paused = switches.paused,
            "told by the control plane"
        );
        factory.changed.notify_one();
    }
}

/// The registry read now, within `bound`; the last snapshot when that read fails or is slow.
pub(super) async fn registry_now(factory: &Factory, bound: Duration) -> Vec<FactoryRecord> {
    match tokio::time::timeout(bound, read_registry(factory)).await {
        Ok(Ok(records)) => {
            factory
                .control
                .registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone_from(&records);
            records
        }
        _ => factory.control.registry(),
    }
}

/// The registry entries, as their factories signed them ([`super::gate::read_record`]: a
/// factory cannot check another's MAC; it only uses them as hints where a repository is warm).
async fn read_registry(factory: &Factory) -> Result<Vec<FactoryRecord>, String> {
    let bucket = factory
        .nats
        .factories(FACTORY_TTL)
        .await
        .map_err(|e| e.to_string())?;
    let names = nats::bucket_keys(&bucket, REGISTRY_MAX)
        .await
        .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for name in names {
        if let Ok(Some(bytes)) = nats::bounded("a registry entry", bucket.get(&name)).await {
            if let Some(record) = gate::read_record(&bytes) {
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// Holds a job fetched as a pause began, renewing its lease (no delivery spent) until claims
/// are allowed again; whether it may run now. Past [`HOLD_MAX`] it is handed back.
pub(super) async fn hold(factory: &Factory, message: &jetstream::Message) -> bool {
    if !factory.control.holds() {
        return true;
    }
    tracing::info!("holding a fetched job while paused");
    let started = Instant::now();
    let renew = factory.lease / 3;
    let mut renewed = Instant::now();
    while factory.control.holds() {
        if started.elapsed() > HOLD_MAX {
            let _ = nats::bounded("handing back", message.ack_with(AckKind::Nak(None))).await;
            return false;
        }
        if renewed.elapsed() >= renew {
            let progress = message.ack_with(AckKind::Progress);
            if let Err(error) = nats::bounded("a held job's lease", progress).await {
                tracing::warn!(%error, "a held job's lease not renewed");
            }
            renewed = Instant::now();
        }
        tokio::time::sleep(HOLD_TICK).await;
    }
    true
}

/// Subscribes to `job`'s stop (before the claim, so no stop is missed once it is claimed).
pub(super) async fn watch_stop(factory: &Factory, job: Uuid) -> Option<async_nats::Subscriber> {
    match factory
        .nats
        .subscribe(format!("{STOP_SUBJECT_PREFIX}{job}"))
        .await
    {
        Ok(subscriber) => Some(subscriber),
        Err(error) => {
            tracing::warn!(%job, %error, "cannot hear this job's stop");
            None
        }
    }
}

/// Waits for a valid stop of `job` (forever without a subscription); its reason.
pub(super) async fn stopped(
    subscriber: Option<&mut async_nats::Subscriber>,
    key: &ControlKey,
    job: Uuid,
) -> String {
    let Some(subscriber) = subscriber else {
        return std::future::pending().await;
    };
    while let Some(message) = subscriber.next().await {
        match key.open::<Stop>(&message.payload) {
            Some(stop) if stop.job_id == job => return stop.reason,
            _ => tracing::warn!(%job, "ignored a stop that is not signed right"),
        }
    }
    std::future::pending().await
}
