//! Silences, as Alertmanager has them: a matcher and an expiry. While one is active, a signal it
//! matches opens no incident, joins none and runs no runbook (Uplink-Respond counts it instead):
//! a person who knows about the noise (a planned migration, a flaky probe) quiets it for a while.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::ops::records::Signal;

/// The longest silence: past it a silence is forgotten noise, not a pause (Alertmanager's
/// operators reach for a fix, or a runbook, instead).
pub(crate) const SILENCE_LENGTH_MAX: chrono::TimeDelta = chrono::TimeDelta::days(30);
/// Active silences at most: each signal is checked against all of them, and a list past this is
/// a mistake (a script silencing in a loop), not a plan.
pub(crate) const ACTIVE_SILENCES_MAX: usize = 1_000;
/// Expired silences kept for the record (newest); older ones are dropped when a silence is made.
pub(crate) const EXPIRED_SILENCES_KEPT: usize = 1_000;
/// Longest comment, and longest matcher value or label name, in characters.
pub(crate) const SILENCE_TEXT_MAX: usize = 1_000;
/// Label matchers on one silence at most.
pub(crate) const SILENCE_LABELS_MAX: usize = 32;

/// What a silence matches: every matcher given must equal the signal's (at least one is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SilenceMatchers {
    /// The signal's app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The signal's name (`health_check_failed`, an alertname, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Labels the signal must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl SilenceMatchers {
    /// Whether no matcher is given (such a silence would quiet everything: refused).
    pub(crate) fn is_empty(&self) -> bool {
        self.app.is_none() && self.signal.is_none() && self.labels.is_empty()
    }

    /// Whether every matcher given equals `signal`'s (an empty set matches nothing).
    pub(crate) fn matches(&self, signal: &Signal) -> bool {
        !self.is_empty()
            && self.app.as_ref().is_none_or(|app| *app == signal.app)
            && self
                .signal
                .as_ref()
                .is_none_or(|name| *name == signal.signal)
            && self
                .labels
                .iter()
                .all(|(name, value)| signal.labels.get(name) == Some(value))
    }
}

/// One silence, as stored and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Silence {
    /// UUID v7: key order is creation order.
    pub id: String,
    /// What it quiets.
    pub matchers: SilenceMatchers,
    /// When it was made.
    pub starts_at: DateTime<Utc>,
    /// When it stops quieting (set to the moment of an early expiry).
    pub ends_at: DateTime<Utc>,
    /// Why, for the next person on call.
    #[serde(default)]
    pub comment: String,
    /// The name of the token that made it.
    pub created_by: String,
    /// The name of the token that expired it early, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

impl Silence {
    /// Whether it quiets signals at `now`.
    pub(crate) fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Whether it quiets `signal` at `now`.
    pub(crate) fn silences(&self, signal: &Signal, now: DateTime<Utc>) -> bool {
        self.is_active(now) && self.matchers.matches(signal)
    }
}

/// What became of one signal handed to Uplink-Respond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignalOutcome {
    /// It opened or joined this incident.
    Incident(String),
    /// This silence quieted it: no incident, no runbook.
    Silenced(String),
}

impl SignalOutcome {
    /// The incident it opened or joined, if it was not silenced.
    pub(crate) fn incident(&self) -> Option<&str> {
        match self {
            Self::Incident(id) => Some(id),
            Self::Silenced(_) => None,
        }
    }

    /// The silence that quieted it, if one did.
    pub(crate) fn silence(&self) -> Option<&str> {
        match self {
            Self::Silenced(id) => Some(id),
            Self::Incident(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(app: &str, name: &str, labels: &[(&str, &str)]) -> Signal {
        Signal {
            app: app.into(),
            signal: name.into(),
            severity: "critical".into(),
            summary: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            source: "api".into(),
            deploy: None,
            at: Utc::now(),
            group: None,
        }
    }

    #[test]
    fn every_matcher_given_must_equal_the_signals() {
        let matchers = SilenceMatchers {
            app: Some("web".into()),
            signal: Some("disk_full".into()),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
        };
        assert!(matchers.matches(&signal("web", "disk_full", &[("zone", "a"), ("x", "y")])));
        assert!(!matchers.matches(&signal("web", "disk_full", &[("zone", "b")])));
        assert!(!matchers.matches(&signal("web", "disk_full", &[])));
        assert!(!matchers.matches(&signal("api", "disk_full", &[("zone", "a")])));
        assert!(!matchers.matches(&signal("web", "oom", &[("zone", "a")])));
        let app_only = SilenceMatchers {
            app: Some("web".into()),
            ..SilenceMatchers::default()
        };
        assert!(app_only.matches(&signal("web", "anything", &[])));
        assert!(!SilenceMatchers::default().matches(&signal("web", "x", &[])));
    }

    #[test]
    fn a_silence_quiets_only_between_its_start_and_its_end() {
        let now = Utc::now();
        let silence = Silence {
            id: "s".into(),
            matchers: SilenceMatchers {
                app: Some("web".into()),
                ..SilenceMatchers::default()
            },
            starts_at: now - chrono::TimeDelta::minutes(1),
            ends_at: now + chrono::TimeDelta::minutes(1),
            comment: String::new(),
            created_by: "me".into(),
            expired_by: None,
        };
        let web = signal("web", "x", &[]);
        assert!(silence.silences(&web, now));
        assert!(!silence.silences(&web, now + chrono::TimeDelta::minutes(2)));
        assert!(!silence.silences(&signal("api", "x", &[]), now));
    }
}
