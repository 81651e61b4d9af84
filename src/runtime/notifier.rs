//! The notifications sender: delivers the outbox (`storage::ops::notifications`) to the receivers
//! of `[notifications]`, at least once.
//!
//! Every [`TICK`] one pass:
//! - **Routes** each new notification: one delivery per receiver the first matching route of
//!   that receiver sends it to, written back (durable) before anything is sent.
//! - **Sends**, per receiver, oldest first: the run of consecutive pending notifications of the
//!   head's group (kind + app) as one message (at most [`BATCH_MAX`]). A receiver whose head is
//!   backing off waits, so a receiver sees its notifications in order.
//! - **Grouping** (kept simple, like Alertmanager's): a group's message waits until its oldest
//!   notification is `group_wait` old, and until `group_interval` has passed since that group's
//!   last message to the receiver (rebuilt from the outbox's delivery times at start, so a restart
//!   does not send a group early).
//! - **Reminders** ([`repeat`]): an incident that still waits for a person is notified again every
//!   `repeat_interval` (per receiver) until it is acknowledged, resolved or snoozed.
//! - **Acknowledged** (2xx) deliveries are written delivered before the next pass, so a restart
//!   never sends them again (dedupe key: receiver + notification id). A failure records its error
//!   and backs off exponentially ([`BACKOFF_BASE`] .. [`BACKOFF_MAX`]); after
//!   [`DELIVERY_ATTEMPTS_MAX`] attempts the delivery is given up.
//! - **Rate limit** per receiver: Slack at most one message per [`SLACK_SPACING`].
//!
//! Receivers are webhooks, Slack incoming webhooks and email ([`email`], SMTP). Every call has
//! [`SEND_TIMEOUT`]. Webhooks carry `X-Glitchlab-Signature: sha256=<hex HMAC-SHA256
//! of the body>` with the secret read from the receiver's `secret_env` at send time (never stored
//! or logged).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::notifications::{
    NotificationsConfig, ReceiverConfig, ReceiverKind, RouteConfig,
};
use crate::model::ops::notification::{
    Delivery, Notification, DELIVERY_ATTEMPTS_MAX, NOTIFICATIONS_KEPT,
};
use crate::storage::ops::OpsStore;

mod email;
mod repeat;

/// How often the outbox is looked at.
pub(crate) const TICK: Duration = Duration::from_millis(200);
/// Every HTTP call's bound, connect included.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's wait; each next one doubles, up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest wait between two attempts of one delivery.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Least time between two messages to one Slack receiver (Slack's incoming-webhook limit).
pub(crate) const SLACK_SPACING: Duration = Duration::from_secs(1);
/// Most notifications in one message.
pub(crate) const BATCH_MAX: usize = 50;
/// Most pending notifications one pass looks at.
pub(crate) const PENDING_SCAN_MAX: usize = 500;
/// Restarts of the sender after a panic before it stays down (logged).
const RESTARTS_MAX: u32 = 10;
/// The header a webhook's signature is in.
pub(crate) const SIGNATURE_HEADER: &str = "X-Glitchlab-Signature";

/// One group of one receiver: (receiver, kind, app).
type GroupKey = (String, String, String);

/// The sender's memory between passes (rate limits and group timers; the outbox is the truth).
struct Sender {
    ops: OpsStore,
    config: NotificationsConfig,
    client: reqwest::Client,
    next_send: HashMap<String, Instant>,
    group_sent: HashMap<GroupKey, Instant>,
}

/// Runs the sender until `stop`, restarting it after a panic (at most [`RESTARTS_MAX`] times).
/// Does nothing when no receiver is configured.
pub(crate) async fn run(ops: OpsStore, config: NotificationsConfig, stop: CancellationToken) {
    if config.receivers.is_empty() {
        return;
    }
    for restart in 0..=RESTARTS_MAX {
        let task = tokio::spawn(pass_loop(ops.clone(), config.clone(), stop.clone()));
        match task.await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, restart, "the notifications sender died; restarting it");
                tokio::time::sleep(backoff(restart.saturating_add(1))).await;
            }
        }
    }
    tracing::error!("the notifications sender died too often; notifications stay in the outbox");
}

/// Passes every [`TICK`] until `stop`.
async fn pass_loop(ops: OpsStore, config: NotificationsConfig, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .connect_timeout(SEND_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no HTTP client for notifications");
            return;
        }
    };
    let mut sender = Sender {
        ops,
        config,
        client,
        next_send: HashMap::new(),
        group_sent: HashMap::new(),
    };
    if let Err(error) = sender.restore_group_timers().await {
        tracing::warn!(%error, "group timers not restored; a group may be sent early once");
    }
    while !stop.is_cancelled() {
        if let Err(error) = sender.pass().await {
            tracing::warn!(%error, "notifications pass failed; trying again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

impl Sender {
    /// Routes the new notifications, then sends what is due to each receiver.
    async fn pass(&mut self) -> Result<(), crate::model::errors::StoreError> {
        let mut pending = self.ops.notifications(PENDING_SCAN_MAX, true).await?;
        pending.reverse();
        for n in pending.iter_mut().filter(|n| !n.routed) {
            n.deliveries = route(&self.config, n);
            n.routed = true;
            self.ops.put_notification(n.clone()).await?;
        }
        let receivers = self.config.receivers.clone();
        for receiver in &receivers {
            self.send_due(receiver, &mut pending).await?;
        }
        self.remind_due(&pending).await
    }

    /// Sets each group's last-message time from the outbox (the latest delivery to it), so
    /// `group_interval` holds across a restart.
    async fn restore_group_timers(&mut self) -> Result<(), crate::model::errors::StoreError> {
        let all = self.ops.notifications(NOTIFICATIONS_KEPT, false).await?;
        let now = Utc::now();
        for n in &all {
            for d in &n.deliveries {
                let Some(at) = d.delivered_at else { continue };
                let ago = (now - at).to_std().unwrap_or_default();
                let Some(sent) = Instant::now().checked_sub(ago) else {
                    continue;
                };
                let key = group_key(&d.receiver, n);
                let latest = self.group_sent.entry(key).or_insert(sent);
                *latest = (*latest).max(sent);
            }
        }
        Ok(())
    }

    /// Sends `receiver`'s next due message, if any, and records the outcome.
    async fn send_due(
        &mut self,
        receiver: &ReceiverConfig,
        pending: &mut [Notification],
    ) -> Result<(), crate::model::errors::StoreError> {
        let now = Instant::now();
        if self.next_send.get(&receiver.name).is_some_and(|t| *t > now) {
            return Ok(());
        }
        let Some(batch) = self.due_batch(receiver, pending) else {
            return Ok(());
        };
        let items: Vec<&Notification> = batch.iter().map(|i| &pending[*i]).collect();
        let key = group_key(&receiver.name, items[0]);
        let outcome = self.send(receiver, &items).await;
        if receiver.kind == ReceiverKind::Slack {
            self.next_send
                .insert(receiver.name.clone(), Instant::now() + SLACK_SPACING);
        }
        if outcome.is_ok() {
            self.group_sent.insert(key, Instant::now());
        }
        let repeat_after = route_of(&self.config, &receiver.name, items[0])
            .map(RouteConfig::repeat_interval)
            .and_then(|d| chrono::TimeDelta::from_std(d).ok());
        let mut changed = Vec::with_capacity(batch.len());
        for i in batch {
            let repeats = repeat::repeats(pending[i].kind);
            if let Some(d) = delivery_mut(&mut pending[i], &receiver.name) {
                record(d, &outcome);
                if outcome.is_ok() && repeats {
                    d.next_repeat_at = repeat_after.map(|after| Utc::now() + after);
                }
            }
            changed.push(pending[i].clone());
        }
        if let Err(error) = &outcome {
            tracing::warn!(receiver = %receiver.name, %error, "notification not delivered; will retry");
        }
        for n in changed {
            self.ops.put_notification(n).await?;
        }
        Ok(())
    }

    /// Indices (into `pending`) of the message due for `receiver` now: the run of consecutive
    /// pending notifications of the head's group, once its group timers allow.
    fn due_batch(&self, receiver: &ReceiverConfig, pending: &[Notification]) -> Option<Vec<usize>> {
        let mine: Vec<usize> = (0..pending.len())
            .filter(|i| {
                pending[*i]
                    .deliveries
                    .iter()
                    .any(|d| d.receiver == receiver.name && !d.done())
            })
            .collect();
        let head = *mine.first()?;
        let head_delivery = pending[head]
            .deliveries
            .iter()
            .find(|d| d.receiver == receiver.name)?;
        if head_delivery.next_attempt_at > Utc::now() {
            return None;
        }
        let route = route_of(&self.config, &receiver.name, &pending[head])?;
        let age = (Utc::now() - pending[head].created_at)
            .to_std()
            .unwrap_or_default();
        if age < route.group_wait() {
            return None;
        }
        let key = group_key(&receiver.name, &pending[head]);
        if let Some(sent) = self.group_sent.get(&key) {
            if sent.elapsed() < route.group_interval() {
                return None;
            }
        }
        let batch = mine
            .into_iter()
            .take_while(|i| group_key(&receiver.name, &pending[*i]) == key)
            .take(BATCH_MAX)
            .collect();
        Some(batch)
    }

    /// One message of `items` to `receiver`: `Ok` once it took it (a 2xx answer, or the SMTP
    /// server's acceptance).
    async fn send(&self, receiver: &ReceiverConfig, items: &[&Notification]) -> Result<(), String> {
        let body = match receiver.kind {
            ReceiverKind::Webhook => webhook_body(&receiver.name, items),
            ReceiverKind::Slack => slack_body(items),
            ReceiverKind::Email => return email::send(receiver, items).await,
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let mut request = self
            .client
            .post(&receiver.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if receiver.kind == ReceiverKind::Webhook {
            if let Some(secret) = receiver
                .secret_env
                .as_deref()
                .and_then(|name| std::env::var(name).ok())
            {
                request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &bytes));
            }
        }
        let answer = request
            .body(bytes)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        match answer.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("HTTP {status}")),
        }
    }
}

/// The hook the places where something routable happens call: writes `n` to the outbox
/// (durable). A failed write is logged and does not fail the caller's work (the event itself is
/// in the log and the event stream).
pub(crate) async fn enqueue(ops: &OpsStore, n: Notification) {
    if let Err(error) = ops.enqueue_notification(&n).await {
        tracing::error!(%error, kind = ?n.kind, subject = %n.subject, "could not write a notification to the outbox");
    }
}

/// The notification of an incident that opened (`needs_human` when it went straight to a
/// human, else `incident_opened`) or later needs a human.
pub(crate) fn of_incident(incident: &crate::model::ops::records::Incident) -> Notification {
    use crate::model::ops::notification::NotificationKind;
    use crate::model::ops::records::IncidentStatus;
    let kind = if incident.status == IncidentStatus::NeedsHuman {
        NotificationKind::IncidentNeedsHuman
    } else {
        NotificationKind::IncidentOpened
    };
    let first = incident.signals.first();
    let summary = match first {
        Some(s) => format!("{}: {}", s.signal, s.summary),
        None => String::new(),
    };
    Notification::new(
        kind,
        Some(incident.app.clone()),
        first.map(|s| s.severity.clone()),
        incident.id.clone(),
        summary,
    )
}

/// The notification of a deploy that ended failed or rolled back; `None` for any other end.
pub(crate) fn of_deploy(record: &crate::model::ops::records::DeployRecord) -> Option<Notification> {
    use crate::model::ops::notification::NotificationKind;
    use crate::model::ops::records::DeployStatus;
    let kind = match record.status {
        DeployStatus::Failed => NotificationKind::DeployFailed,
        DeployStatus::RolledBack => NotificationKind::DeployRolledBack,
        _ => return None,
    };
    let why = record
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    Some(Notification::new(
        kind,
        Some(record.app.clone()),
        None,
        record.id.clone(),
        format!(
            "deploy of {} {}: {why}",
            record.requested,
            crate::model::ops::wire_name(&record.status)
        ),
    ))
}

/// The hook for a task dead-lettered with `error`: writes its notification to the outbox.
pub(crate) async fn dead_lettered(
    store: &crate::storage::store::Store,
    task: crate::model::task::TaskId,
    error: &crate::model::task::ErrorInfo,
) {
    let note = Notification::new(
        crate::model::ops::notification::NotificationKind::TaskDeadLettered,
        None,
        None,
        task.to_string(),
        format!("{}: {}", error.code, error.message),
    );
    enqueue(&OpsStore::new(store), note).await;
}

/// `sha256=<hex HMAC-SHA256 of body>` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length; the error case cannot happen, but is answered anyway.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// The deliveries routes give `n`: one per receiver with a matching route.
fn route(config: &NotificationsConfig, n: &Notification) -> Vec<Delivery> {
    let mut deliveries: Vec<Delivery> = Vec::new();
    for r in config.routes.iter().filter(|r| matches(r, n)) {
        if deliveries.iter().any(|d| d.receiver == r.receiver) {
            continue;
        }
        let Some(receiver) = config.receivers.iter().find(|x| x.name == r.receiver) else {
            continue;
        };
        deliveries.push(Delivery {
            receiver: receiver.name.clone(),
            receiver_kind: kind_name(receiver.kind).into(),
            attempts: 0,
            last_error: None,
            delivered_at: None,
            next_attempt_at: n.created_at,
            gave_up: false,
            next_repeat_at: None,
        });
    }
    deliveries
}

/// The first route of `receiver` that matches `n` (its group timers apply).
fn route_of<'a>(
    config: &'a NotificationsConfig,
    receiver: &str,
    n: &Notification,
) -> Option<&'a RouteConfig> {
    config
        .routes
        .iter()
        .find(|r| r.receiver == receiver && matches(r, n))
}

/// Whether `route`'s matchers (all of them that are set) match `n`.
fn matches(route: &RouteConfig, n: &Notification) -> bool {
    (route.kinds.is_empty() || route.kinds.contains(&n.kind))
        && route.app.as_ref().is_none_or(|a| n.app.as_ref() == Some(a))
        && route
            .severity
            .as_ref()
            .is_none_or(|s| n.severity.as_ref() == Some(s))
}

fn kind_name(kind: ReceiverKind) -> &'static str {
    match kind {
        ReceiverKind::Webhook => "webhook",
        ReceiverKind::Slack => "slack",
        ReceiverKind::Email => "email",
    }
}

fn group_key(receiver: &str, n: &Notification) -> GroupKey {
    (
        receiver.to_owned(),
        crate::model::ops::wire_name(&n.kind),
        n.app.clone().unwrap_or_default(),
    )
}

fn delivery_mut<'a>(n: &'a mut Notification, receiver: &str) -> Option<&'a mut Delivery> {
    n.deliveries.iter_mut().find(|d| d.receiver == receiver)
}

/// Records one attempt's outcome on a delivery.
fn record(d: &mut Delivery, outcome: &Result<(), String>) {
    d.attempts = d.attempts.saturating_add(1);
    match outcome {
        Ok(()) => {
            d.delivered_at = Some(Utc::now());
            d.last_error = None;
        }
        Err(error) => {
            d.last_error = Some(error.clone());
            d.gave_up = d.attempts >= DELIVERY_ATTEMPTS_MAX;
            let wait = chrono::TimeDelta::from_std(backoff(d.attempts)).unwrap_or_default();
            d.next_attempt_at = Utc::now() + wait;
        }
    }
}

/// The wait after `attempts` failed attempts: [`BACKOFF_BASE`] doubled each time, at most
/// [`BACKOFF_MAX`].
fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// A webhook's JSON body: the receiver, the group and its notifications, oldest first.
fn webhook_body(receiver: &str, items: &[&Notification]) -> Value {
    let notifications: Vec<Value> = items
        .iter()
        .map(|n| {
            json!({
                "id": n.id, "kind": n.kind, "app": n.app, "severity": n.severity,
                "subject": n.subject, "summary": n.summary, "created_at": n.created_at,
                "repeat": n.repeat,
            })
        })
        .collect();
    json!({
        "receiver": receiver,
        "group": {"kind": items.first().map(|n| n.kind), "app": items.first().and_then(|n| n.app.clone())},
        "notifications": notifications,
    })
}

/// A Slack incoming-webhook body: one line per notification.
fn slack_body(items: &[&Notification]) -> Value {
    let lines: Vec<String> = items
        .iter()
        .map(|n| {
            format!(
                "[{}] {}{}: {} ({})",
                crate::model::ops::wire_name(&n.kind),
                n.app.as_deref().unwrap_or(""),
                n.severity
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default(),
                n.summary,
                n.subject
            )
        })
        .collect();
    json!({"text": lines.join("\n")})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
