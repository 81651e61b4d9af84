//! Notifications: what reaches people (webhooks, Slack, email) when an incident opens or needs a human,
//! a deploy fails or is rolled back, or a task is dead-lettered. Written to the outbox table
//! before anything is sent; each receiver's delivery is tracked on the record, so a restart never
//! sends twice what a receiver acknowledged (the dedupe key is receiver + notification id).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What happened (kept here, in the model: config names it in its routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An incident was opened (a runbook is responding).
    IncidentOpened,
    /// An incident needs a human.
    IncidentNeedsHuman,
    /// A deploy failed.
    DeployFailed,
    /// A deploy was rolled back.
    DeployRolledBack,
    /// A task was dead-lettered.
    TaskDeadLettered,
}

/// Most notifications kept in the outbox; past it the oldest finished ones are dropped.
pub(crate) const NOTIFICATIONS_KEPT: usize = 1000;
/// Attempts of one delivery before it is given up (its error stays visible).
pub(crate) const DELIVERY_ATTEMPTS_MAX: u32 = 12;

/// One receiver's delivery of one notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Delivery {
    /// The receiver's name.
    pub receiver: String,
    /// `webhook`, `slack` or `email`.
    pub receiver_kind: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
    /// When it was acknowledged (2xx); set: never sent again.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Not before this is it tried again (back-off).
    pub next_attempt_at: DateTime<Utc>,
    /// Given up after [`DELIVERY_ATTEMPTS_MAX`] attempts.
    #[serde(default)]
    pub gave_up: bool,
    /// When the sender looks again at whether its incident still needs a human, and if so sends
    /// a reminder (the route's `repeat_interval`); `None`: no reminder is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_repeat_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// Whether nothing more will be sent for it.
    pub(crate) fn done(&self) -> bool {
        self.delivered_at.is_some() || self.gave_up
    }
}

/// One notification in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Notification {
    /// UUID v7: key order is creation order.
    pub id: String,
    /// What happened.
    pub kind: NotificationKind,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// `critical`, `warning`, ... when the source has one.
    pub severity: Option<String>,
    /// The incident, deploy or task id.
    pub subject: String,
    /// One line for humans.
    pub summary: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Whether the routes were applied (deliveries filled in).
    #[serde(default)]
    pub routed: bool,
    /// 0 for the first notification of its subject; n for the n-th reminder that it still needs
    /// a human.
    #[serde(default)]
    pub repeat: u32,
    /// One per receiver a route sends it to.
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
}

impl Notification {
    /// A new, unrouted notification.
    pub(crate) fn new(
        kind: NotificationKind,
        app: Option<String>,
        severity: Option<String>,
        subject: String,
        summary: String,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            app,
            severity,
            subject,
            summary,
            created_at: Utc::now(),
            routed: false,
            repeat: 0,
            deliveries: Vec::new(),
        }
    }

    /// Whether nothing more will be sent for it (a reminder still due keeps it pending).
    pub(crate) fn done(&self) -> bool {
        self.routed
            && self
                .deliveries
                .iter()
                .all(|d| d.done() && d.next_repeat_at.is_none())
    }
}
