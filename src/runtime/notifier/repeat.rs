//! Reminders (`repeat_interval`): an incident that still needs a human is notified again, per
//! receiver, every `repeat_interval` until someone acknowledges, resolves or snoozes it.
//!
//! The schedule lives in the outbox, so it survives restarts: a delivered notification of an
//! incident carries `next_repeat_at` on its delivery (which keeps it pending). When that time
//! comes, the incident is read: still needing a human → a reminder (a new notification for that
//! receiver only, `repeat` + 1) is written together with the old one's schedule cleared, in one
//! write; snoozed → looked at again when the snooze ends; anything else → the schedule ends.

use chrono::{DateTime, Utc};

use super::Sender;
use crate::model::errors::StoreError;
use crate::model::ops::notification::{Delivery, Notification, NotificationKind};
use crate::model::ops::records::{Incident, IncidentStatus};

/// Most reminders written in one pass (the rest are due next pass).
const REMINDERS_PER_PASS_MAX: usize = 20;

/// What a due reminder's incident says now.
enum Due {
    /// Send a reminder.
    Remind,
    /// Look again at this time.
    Later(DateTime<Utc>),
    /// No more reminders.
    Over,
}

/// Whether notifications of `kind` get reminders.
pub(super) fn repeats(kind: NotificationKind) -> bool {
    matches!(
        kind,
        NotificationKind::IncidentNeedsHuman | NotificationKind::IncidentOpened
    )
}

/// Whether `incident` still waits for a person at `now`: it needs a human (not acknowledged or
/// resolved) or a gated step waits for approval, and it is not snoozed.
pub(super) fn needs_a_person(incident: &Incident, now: DateTime<Utc>) -> bool {
    let waiting = match incident.status {
        IncidentStatus::NeedsHuman => true,
        IncidentStatus::Open => incident.awaiting_step.is_some(),
        IncidentStatus::Acknowledged | IncidentStatus::Resolved => false,
    };
    waiting && !incident.snoozed(now)
}

impl Sender {
    /// Writes the reminders that are due among `pending` (at most [`REMINDERS_PER_PASS_MAX`]).
    pub(super) async fn remind_due(&self, pending: &[Notification]) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut written = 0;
        for n in pending {
            for d in n.deliveries.iter().filter(|d| due(d, now)) {
                if written >= REMINDERS_PER_PASS_MAX {
                    return Ok(());
                }
                self.remind_one(n, &d.receiver, now).await?;
                written += 1;
            }
        }
        Ok(())
    }

    /// Acts on `n`'s due reminder for `receiver`.
    async fn remind_one(
        &self,
        n: &Notification,
        receiver: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let incident = self.ops.incident(&n.subject).await.ok().flatten();
        let verdict = match &incident {
            Some(i) if needs_a_person(i, now) => Due::Remind,
            Some(i) if needs_a_person(i, i.snoozed_until.unwrap_or(now)) => {
                Due::Later(i.snoozed_until.unwrap_or(now))
            }
            _ => Due::Over,
        };
        let mut old = n.clone();
        let next = match verdict {
            Due::Later(at) => Some(at),
            Due::Remind | Due::Over => None,
        };
        if let Some(d) = old.deliveries.iter_mut().find(|d| d.receiver == receiver) {
            d.next_repeat_at = next;
        }
        match verdict {
            Due::Remind => {
                let reminder = reminder_of(n, receiver, incident.as_ref());
                tracing::info!(receiver, subject = %n.subject, repeat = reminder.repeat, "incident still needs a person: reminder");
                self.ops.remind(old, &reminder).await
            }
            Due::Later(_) | Due::Over => self.ops.put_notification(old).await,
        }
    }
}

/// Whether `d`'s reminder is due at `now` (only once it was delivered).
fn due(d: &Delivery, now: DateTime<Utc>) -> bool {
    d.delivered_at.is_some() && d.next_repeat_at.is_some_and(|at| at <= now)
}

/// The reminder of `n` for `receiver`: routed to it alone, due now.
fn reminder_of(n: &Notification, receiver: &str, incident: Option<&Incident>) -> Notification {
    let kind = match incident.map(|i| i.status) {
        Some(IncidentStatus::NeedsHuman) => NotificationKind::IncidentNeedsHuman,
        _ => n.kind,
    };
    let original = n
        .summary
        .strip_prefix("still waiting for a person: ")
        .unwrap_or(&n.summary);
    let mut reminder = Notification::new(
        kind,
        n.app.clone(),
        n.severity.clone(),
        n.subject.clone(),
        format!("still waiting for a person: {original}"),
    );
    reminder.repeat = n.repeat.saturating_add(1);
    reminder.routed = true;
    let mut delivery = n
        .deliveries
        .iter()
        .find(|d| d.receiver == receiver)
        .cloned()
        .unwrap_or_else(|| Delivery {
            receiver: receiver.to_owned(),
            receiver_kind: String::new(),
            attempts: 0,
            last_error: None,
            delivered_at: None,
            next_attempt_at: reminder.created_at,
            gave_up: false,
            next_repeat_at: None,
        });
    delivery.attempts = 0;
    delivery.last_error = None;
    delivery.delivered_at = None;
    delivery.gave_up = false;
    delivery.next_repeat_at = None;
    delivery.next_attempt_at = reminder.created_at;
    reminder.deliveries = vec![delivery];
    reminder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reminder_goes_to_one_receiver_and_counts_up() {
        let mut n = Notification::new(
            NotificationKind::IncidentOpened,
            Some("web".into()),
            None,
            "inc".into(),
            "crash: exited".into(),
        );
        for name in ["a", "b"] {
            n.deliveries.push(Delivery {
                receiver: name.into(),
                receiver_kind: "webhook".into(),
                attempts: 3,
                last_error: None,
                delivered_at: Some(Utc::now()),
                next_attempt_at: Utc::now(),
                gave_up: false,
                next_repeat_at: Some(Utc::now()),
            });
        }
        let first = reminder_of(&n, "b", None);
        assert_eq!(first.repeat, 1);
        assert_eq!(first.deliveries.len(), 1);
        assert_eq!(first.deliveries[0].receiver, "b");
        assert!(!first.deliveries[0].done() && first.deliveries[0].attempts == 0);
        let second = reminder_of(&first, "b", None);
        assert_eq!(second.repeat, 2);
        assert_eq!(second.summary, "still waiting for a person: crash: exited");
    }
}
