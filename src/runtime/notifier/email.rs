//! Email receivers: one message of a group as one mail over SMTP (lettre), plain text, with the
//! notification ids in the body so a reader (or a filter) can tell a resend from a new one.
//!
//! The URL picks the transport as lettre's `from_url` does: `smtp://host:port` speaks plain SMTP,
//! `smtp://host:port?tls=required` upgrades with STARTTLS, `smtps://host:port` is TLS from the
//! first byte. A login is `username` with the password read from `secret_env` at send time
//! (never stored or logged). Every send is bounded by [`SEND_TIMEOUT`](super::SEND_TIMEOUT), the
//! SMTP conversation included.

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::SEND_TIMEOUT;
use crate::config::notifications::ReceiverConfig;
use crate::model::ops::notification::Notification;

/// Sends `items` (one group, oldest first) to `receiver` as one mail: `Ok` once the server took
/// it (a 2xx answer to the end of DATA).
pub(super) async fn send(receiver: &ReceiverConfig, items: &[&Notification]) -> Result<(), String> {
    let message = message(receiver, items)?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&receiver.url)
        .map_err(|e| format!("smtp url: {e}"))?
        .timeout(Some(SEND_TIMEOUT));
    if let Some(user) = receiver.username.as_deref() {
        let password = receiver
            .secret_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .unwrap_or_default();
        transport = transport.credentials(Credentials::new(user.to_owned(), password));
    }
    let mailer = transport.build();
    match tokio::time::timeout(SEND_TIMEOUT, mailer.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("smtp: {error}")),
        Err(_) => Err(format!("smtp: no answer within {SEND_TIMEOUT:?}")),
    }
}

/// The mail: subject names the group and its size; the body one paragraph per notification.
fn message(receiver: &ReceiverConfig, items: &[&Notification]) -> Result<Message, String> {
    let first = items.first().ok_or("nothing to send")?;
    let from: Mailbox = receiver
        .from
        .as_deref()
        .ok_or("no `from`")?
        .parse()
        .map_err(|e| format!("from: {e}"))?;
    let kind = crate::model::ops::wire_name(&first.kind);
    let app = first
        .app
        .as_deref()
        .map(|a| format!(" {a}"))
        .unwrap_or_default();
    let more = match items.len() {
        1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    let mut builder = Message::builder()
        .from(from)
        .subject(format!("[glitchlab] {kind}{app}: {}{more}", first.summary));
    for to in &receiver.to {
        builder = builder.to(to.parse().map_err(|e| format!("to: {e}"))?);
    }
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body(items))
        .map_err(|e| format!("mail: {e}"))
}

/// One paragraph per notification, oldest first.
fn body(items: &[&Notification]) -> String {
    let mut text = String::new();
    for n in items {
        text.push_str(&format!(
            "{}{}: {}\nsubject: {}\nseverity: {}\nat: {}\nnotification: {}{}\n\n",
            crate::model::ops::wire_name(&n.kind),
            n.app
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default(),
            n.summary,
            n.subject,
            n.severity.as_deref().unwrap_or("-"),
            n.created_at.to_rfc3339(),
            n.id,
            match n.repeat {
                0 => String::new(),
                r => format!(" (reminder {r})"),
            },
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::notifications::ReceiverKind;
    use crate::model::ops::notification::NotificationKind;

    #[test]
    fn a_group_is_one_mail_to_every_recipient_with_every_id() {
        let receiver = ReceiverConfig {
            name: "mail".into(),
            kind: ReceiverKind::Email,
            url: "smtp://127.0.0.1:2525".into(),
            secret_env: None,
            from: Some("Glitchlab <glitchlab@example.com>".into()),
            to: vec!["a@example.com".into(), "b@example.com".into()],
            username: None,
        };
        let one = Notification::new(
            NotificationKind::IncidentNeedsHuman,
            Some("web".into()),
            Some("critical".into()),
            "inc-1".into(),
            "crash: exited 1".into(),
        );
        let two = Notification::new(
            NotificationKind::IncidentNeedsHuman,
            Some("web".into()),
            None,
            "inc-2".into(),
            "crash: exited 2".into(),
        );
        let mail = message(&receiver, &[&one, &two]).unwrap();
        let envelope = mail.envelope();
        assert_eq!(envelope.to().len(), 2);
        let text = String::from_utf8(mail.formatted()).unwrap();
        assert!(
            text.contains(
                "Subject: [glitchlab] incident_needs_human web: crash: exited 1 (+1 more)"
            ),
            "{text}"
        );
        assert!(text.contains(&one.id) && text.contains(&two.id), "{text}");
    }
}
