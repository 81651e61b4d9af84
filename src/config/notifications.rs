//! `[notifications]`: where notifications of incidents, failed deploys and dead-lettered tasks are
//! sent (receivers) and which go where (routes). Checked at start so a typo never silently drops
//! a page.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest duration a route may name: a longer wait is a typo, not a policy.
const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

pub use crate::model::ops::notification::NotificationKind;

/// Receivers and routes; none of either: nothing is sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Where notifications can go.
    pub receivers: Vec<ReceiverConfig>,
    /// Which notifications go to which receiver, and how they are grouped.
    pub routes: Vec<RouteConfig>,
}

/// How a receiver is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// A JSON POST signed with `X-Glitchlab-Signature`.
    Webhook,
    /// A Slack incoming webhook (`{"text": ...}`), at most one message a second.
    Slack,
}

/// One receiver. Its secret is read from `secret_env` when a message is signed, never stored
/// or logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Named by routes and shown by `GET /v1/notifications`.
    pub name: String,
    /// Webhook or Slack.
    pub kind: ReceiverKind,
    /// Where messages are POSTed.
    pub url: String,
    /// The environment variable holding the HMAC secret (webhooks; unset: unsigned).
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// One route: the notifications it matches go to `receiver`, grouped by (kind, app).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A receiver's name.
    pub receiver: String,
    /// Only these kinds (empty or absent: every kind).
    #[serde(default)]
    pub kinds: Vec<NotificationKind>,
    /// Only this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Only this severity.
    #[serde(default)]
    pub severity: Option<String>,
    /// How long a new group waits for more before its first message.
    #[serde(default = "default_group_wait")]
    pub group_wait: String,
    /// The least time between two messages of one group.
    #[serde(default = "default_group_interval")]
    pub group_interval: String,
    /// Parsed and checked; repeats are not sent yet (see docs/operations.md).
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: String,
}

fn default_group_wait() -> String {
    "0s".into()
}
fn default_group_interval() -> String {
    "0s".into()
}
fn default_repeat_interval() -> String {
    "4h".into()
}

impl RouteConfig {
    /// `group_wait` as a duration (validated at start, so 0 never happens by accident).
    pub fn group_wait(&self) -> Duration {
        parse_duration(&self.group_wait).unwrap_or_default()
    }

    /// `group_interval` as a duration.
    pub fn group_interval(&self) -> Duration {
        parse_duration(&self.group_interval).unwrap_or_default()
    }
}

impl NotificationsConfig {
    /// Refuses a route to an unknown receiver, a bad duration, a duplicate receiver name or a
    /// URL that is not http(s).
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for r in &self.receivers {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(format!(
                    "notifications.receivers: empty or duplicate name `{}`",
                    r.name
                ));
            }
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(format!(
                    "notifications.receivers `{}`: url must be http(s)",
                    r.name
                ));
            }
        }
        for route in &self.routes {
            if !names.contains(route.receiver.as_str()) {
                return Err(format!(
                    "notifications.routes: unknown receiver `{}`",
                    route.receiver
                ));
            }
            for (key, text) in [
                ("group_wait", &route.group_wait),
                ("group_interval", &route.group_interval),
                ("repeat_interval", &route.repeat_interval),
            ] {
                parse_duration(text).map_err(|e| format!("notifications.routes.{key}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Parses `500ms`, `30s`, `5m`, `4h`, `1d` (one number, one unit), at most [`DURATION_MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number and a unit"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    let duration = millis
        .map(Duration::from_millis)
        .filter(|d| *d <= DURATION_MAX)
        .ok_or_else(|| format!("`{text}` is longer than 7d"))?;
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["30", "s", "5x", "-1s", "8d", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_route_to_an_unknown_receiver_or_with_a_bad_duration_is_refused() {
        let parse = |text: &str| crate::config::Config::parse(text);
        let receiver = "[[notifications.receivers]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
        assert!(parse(&format!(
            "{receiver}[[notifications.routes]]\nreceiver = \"ops\"\ngroup_wait = \"30s\"\n"
        ))
        .is_ok());
        let unknown = parse(&format!(
            "{receiver}[[notifications.routes]]\nreceiver = \"nobody\"\n"
        ));
        assert!(unknown.unwrap_err().contains("unknown receiver"));
        let bad = parse(&format!("{receiver}[[notifications.routes]]\nreceiver = \"ops\"\ngroup_interval = \"5 minutes\"\n"));
        assert!(bad.unwrap_err().contains("group_interval"));
        assert!(
            parse("[[notifications.routes]]\nreceiver = \"ops\"\nkinds = [\"nope\"]\n").is_err()
        );
    }
}
