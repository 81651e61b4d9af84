//! `[notifications]`: where notifications of incidents, failed deploys and dead-lettered tasks are
//! sent (receivers) and which go where (routes). Checked at start so a typo never silently drops
//! a page.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest duration a route may name: a longer wait is a typo, not a policy.
const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest `repeat_interval`: anything shorter is a flood, not a reminder.
const REPEAT_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Most recipients of one email receiver.
const RECIPIENTS_MAX: usize = 50;

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
    /// Mail over SMTP (`smtp://host:port` plain, `smtp://host:port?tls=required` STARTTLS,
    /// `smtps://host:port` TLS) from `from` to every address of `to`.
    Email,
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
    /// Where messages are POSTed (webhook, Slack) or the SMTP server (email).
    pub url: String,
    /// The environment variable holding the HMAC secret (webhooks; unset: unsigned) or the SMTP
    /// password (email, with `username`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Email: the sender's address (`Glitchlab <glitchlab@example.com>` or a bare address).
    #[serde(default)]
    pub from: Option<String>,
    /// Email: the recipients (at least one).
    #[serde(default)]
    pub to: Vec<String>,
    /// Email: the SMTP user, when the server wants a login (the password is in `secret_env`).
    #[serde(default)]
    pub username: Option<String>,
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
    /// How often a notification of an incident that still needs a human (not acknowledged,
    /// resolved or snoozed) is sent again to this receiver.
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

    /// `repeat_interval` as a duration (validated at start: never 0 by accident, and 0 is
    /// refused, so repeats can never flood a receiver).
    pub fn repeat_interval(&self) -> Duration {
        parse_duration(&self.repeat_interval).unwrap_or(Duration::from_secs(4 * 3600))
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
            r.validate()
                .map_err(|e| format!("notifications.receivers `{}`: {e}", r.name))?;
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
            if route.repeat_interval() < REPEAT_INTERVAL_MIN {
                return Err(format!(
                    "notifications.routes.repeat_interval: `{}` is shorter than 1s",
                    route.repeat_interval
                ));
            }
        }
        Ok(())
    }
}

impl ReceiverConfig {
    /// Checks the URL scheme against the kind, and an email receiver's addresses.
    fn validate(&self) -> Result<(), String> {
        let http = self.url.starts_with("http://") || self.url.starts_with("https://");
        match self.kind {
            ReceiverKind::Webhook | ReceiverKind::Slack => {
                if !http {
                    return Err("url must be http(s)".into());
                }
                if self.from.is_some() || !self.to.is_empty() || self.username.is_some() {
                    return Err("`from`, `to` and `username` are for email receivers".into());
                }
            }
            ReceiverKind::Email => {
                if !(self.url.starts_with("smtp://") || self.url.starts_with("smtps://")) {
                    return Err("an email receiver's url must be smtp:// or smtps://".into());
                }
                let from = self
                    .from
                    .as_deref()
                    .ok_or("an email receiver needs `from`")?;
                check_mailbox(from)?;
                if self.to.is_empty() || self.to.len() > RECIPIENTS_MAX {
                    return Err(format!("`to` must name 1 to {RECIPIENTS_MAX} addresses"));
                }
                for to in &self.to {
                    check_mailbox(to)?;
                }
            }
        }
        Ok(())
    }
}

/// Refuses a mailbox that is not `address` or `Name <address>` with one `@`.
fn check_mailbox(text: &str) -> Result<(), String> {
    text.parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("`{text}` is not an email address: {e}"))
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

    #[test]
    fn an_email_receiver_needs_an_smtp_url_a_sender_and_recipients() {
        let parse = |receiver: &str| {
            crate::config::Config::parse(&format!(
                "[[notifications.receivers]]\nname = \"m\"\n{receiver}"
            ))
        };
        let good = "kind = \"email\"\nurl = \"smtp://127.0.0.1:25\"\nfrom = \"Ops <ops@example.com>\"\nto = [\"a@example.com\"]\n";
        assert!(parse(good).is_ok(), "{:?}", parse(good).err());
        for (bad, why) in [
            ("kind = \"email\"\nurl = \"http://x/\"\nfrom = \"a@example.com\"\nto = [\"a@example.com\"]\n", "smtp"),
            ("kind = \"email\"\nurl = \"smtp://x:25\"\nto = [\"a@example.com\"]\n", "from"),
            ("kind = \"email\"\nurl = \"smtp://x:25\"\nfrom = \"a@example.com\"\n", "to"),
            ("kind = \"email\"\nurl = \"smtp://x:25\"\nfrom = \"nobody\"\nto = [\"a@example.com\"]\n", "not an email address"),
            ("kind = \"webhook\"\nurl = \"http://x/\"\nto = [\"a@example.com\"]\n", "for email receivers"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let flood = parse(&format!(
            "{good}[[notifications.routes]]\nreceiver = \"m\"\nrepeat_interval = \"0s\"\n"
        ));
        assert!(flood.unwrap_err().contains("repeat_interval"));
    }
}
