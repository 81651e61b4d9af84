//! The factory's side of the trust boundary (issue 30): its hello at start (the key is checked
//! and the fleet's lease and `max_deliver` learned), its signed claims (answered with the job's
//! secrets sealed to it), lease renewals, results and registry records, and the redaction of
//! everything it publishes.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::model::fleet::trust::{
    ClaimRequest, ClaimVerdict, FactoryKey, Hello, Kind, LeaseRenewal, Signed, Welcome,
    CLAIM_REQUEST_PREFIX, FACTORY_KEY_ENV, HELLO_SUBJECT, LEASE_SUBJECT_PREFIX,
};
use crate::model::fleet::{FactoryRecord, JobResult};
use crate::platform::nats::Nats;
use crate::platform::redact::Redactor;

/// How long a factory waits at start for a control plane to answer its hello (then it refuses
/// to start).
const HELLO_WAIT: Duration = Duration::from_secs(60);
/// Between two hellos nobody answered.
const HELLO_RETRY: Duration = Duration::from_secs(1);
/// Secret variables one job carries at most.
const SECRETS_MAX: usize = 256;

/// The factory key from the environment variable `variable` (default [`FACTORY_KEY_ENV`]); the
/// error says what to do without one.
pub(super) fn key_from_env(variable: Option<&str>) -> Result<FactoryKey, String> {
    let variable = variable.unwrap_or(FACTORY_KEY_ENV);
    match std::env::var(variable) {
        Ok(key) if !key.trim().is_empty() => Ok(FactoryKey::derive(key.trim())),
        _ => Err(format!(
            "no factory key: set {variable} to the key `POST /v1/fleet/factories` issued for this \
             factory's name"
        )),
    }
}

/// Says hello until a control plane answers (at most [`HELLO_WAIT`]): its welcome, or why this
/// factory must not start (a key it did not issue, nobody answering).
pub(super) async fn hello(nats: &Nats, key: &FactoryKey, name: &str) -> Result<Welcome, String> {
    let body = serde_json::to_string(&Hello {
        factory: name.to_owned(),
    })
    .map_err(|e| e.to_string())?;
    let signed = key.sign(Kind::Hello, Uuid::nil(), 0, name, body);
    let payload = serde_json::to_vec(&signed).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HELLO_WAIT;
    loop {
        match nats
            .request(HELLO_SUBJECT.to_owned(), payload.clone())
            .await
        {
            Ok(answer) => {
                let welcome: Welcome = serde_json::from_slice(&answer)
                    .map_err(|e| format!("the control plane's welcome is unreadable: {e}"))?;
                if !welcome.accepted {
                    return Err(format!(
                        "the control plane refused this factory: {}",
                        welcome.reason.as_deref().unwrap_or("no reason given")
                    ));
                }
                return Ok(welcome);
            }
            Err(error) if Instant::now() < deadline => {
                tracing::info!(%error, "no control plane answered the hello yet; trying again");
                tokio::time::sleep(HELLO_RETRY).await;
            }
            Err(error) => {
                return Err(format!(
                    "no control plane answered within {}s: {error}",
                    HELLO_WAIT.as_secs()
                ))
            }
        }
    }
}

/// Checks the lease and `max_deliver` given on the command line (if any) against the control
/// plane's: a factory that renews too rarely, or counts deliveries differently, must not start.
pub(super) fn check_settings(
    welcome: &Welcome,
    lease_secs: Option<u64>,
    max_deliver: Option<u32>,
) -> Result<(), String> {
    if let Some(lease) = lease_secs.filter(|lease| *lease != welcome.lease_secs) {
        return Err(format!(
            "lease mismatch: --lease-secs {lease}, but the control plane's job consumers hold a \
             lease of {}s (fleet.lease_secs); drop the flag or make them agree",
            welcome.lease_secs
        ));
    }
    if let Some(max) = max_deliver.filter(|max| *max != welcome.max_deliver) {
        return Err(format!(
            "max_deliver mismatch: --max-deliver {max}, but the control plane's job consumers \
             deliver a job {} times at most (fleet.max_deliver)",
            welcome.max_deliver
        ));
    }
    Ok(())
}

/// Whether a class consumer as the server has it matches the fleet's settings (else the
/// factory does not serve it: its renewals would come too late, or deliveries be miscounted).
pub(super) fn consumer_matches(
    config: &async_nats::jetstream::consumer::Config,
    lease: Duration,
    max_deliver: u32,
) -> Result<(), String> {
    if config.ack_wait != lease || config.max_deliver != i64::from(max_deliver) {
        return Err(format!(
            "the consumer's ack wait {:?} / max_deliver {} differ from the fleet's lease {:?} / \
             max_deliver {max_deliver}",
            config.ack_wait, config.max_deliver, lease
        ));
    }
    Ok(())
}

/// A claim's answer: the secrets to run the job with.
pub(super) enum Claimed {
    /// This factory owns the delivery: run it with these secrets.
    Owner(Vec<(String, String)>),
    /// The control plane refused (another delivery is current, the job is not waited for).
    Refused(String),
}

/// Claims `delivery` of `job`, naming the acknowledgement subject the server gave the message.
pub(super) async fn claim(
    nats: &Nats,
    key: &FactoryKey,
    request: &ClaimRequest,
) -> Result<Claimed, String> {
    let body = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let (job, delivery) = (request.job_id, request.delivery);
    let signed = key.sign(Kind::Claim, job, delivery, &request.factory, body);
    let payload = serde_json::to_vec(&signed).map_err(|e| e.to_string())?;
    let answer = nats
        .request(format!("{CLAIM_REQUEST_PREFIX}{job}"), payload)
        .await
        .map_err(|e| e.to_string())?;
    let verdict: ClaimVerdict =
        serde_json::from_slice(&answer).map_err(|e| format!("unreadable claim answer: {e}"))?;
    if !verdict.accepted {
        return Ok(Claimed::Refused(
            verdict.reason.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    let plain = match verdict.sealed_env {
        Some(sealed) => key
            .open(job, delivery, &sealed)
            .ok_or("the sealed secrets do not open with this factory's key")?,
        None => b"[]".to_vec(),
    };
    let secrets: Vec<(String, String)> =
        serde_json::from_slice(&plain).map_err(|e| format!("unreadable secrets: {e}"))?;
    if secrets.len() > SECRETS_MAX {
        return Err(format!("more than {SECRETS_MAX} secret variables"));
    }
    Ok(Claimed::Owner(secrets))
}

/// Tells the control plane this factory still runs `delivery` of `job` (best effort).
pub(super) async fn renew(nats: &Nats, key: &FactoryKey, renewal: &LeaseRenewal) {
    let Ok(body) = serde_json::to_string(renewal) else {
        return;
    };
    let signed = key.sign(
        Kind::Lease,
        renewal.job_id,
        renewal.delivery,
        &renewal.factory,
        body,
    );
    let Ok(payload) = serde_json::to_vec(&signed) else {
        return;
    };
    let subject = format!("{LEASE_SUBJECT_PREFIX}{}", renewal.job_id);
    if let Err(error) = nats.publish_core(subject, payload).await {
        tracing::warn!(%error, "lease renewal not sent");
    }
}

/// A result, redacted of the job's secrets, signed: the bytes to store.
pub(super) fn sealed_result(
    key: &FactoryKey,
    redactor: &Redactor,
    mut result: JobResult,
) -> Result<Vec<u8>, String> {
    redact_result(redactor, &mut result);
    let body = serde_json::to_string(&result).map_err(|e| e.to_string())?;
    let signed = key.sign(
        Kind::Result,
        result.job_id,
        result.delivery,
        &result.factory,
        body,
    );
    serde_json::to_vec(&signed).map_err(|e| e.to_string())
}

/// Redacts what a result says in text; a diff carrying a secret value is not sent at all (it
/// cannot be redacted without breaking it): the result fails instead.
pub(super) fn redact_result(redactor: &Redactor, result: &mut JobResult) {
    if redactor.is_empty() {
        return;
    }
    result.stdout.text = redactor.redact(&result.stdout.text);
    result.stderr.text = redactor.redact(&result.stderr.text);
    if let Some(failure) = &result.failure {
        result.failure = Some(redactor.redact(failure));
    }
    let diff_has_secret = result.diff.as_deref().is_some_and(|diff| {
        let bytes = hex::decode(diff).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        redactor.redact(&text) != text
    });
    if diff_has_secret {
        result.diff = None;
        result.failure = Some("the engine's change contains a secret value: not sent".into());
    }
}

/// A registry record, signed (the control plane lists only signed ones).
pub(super) fn signed_record(key: &FactoryKey, record: &FactoryRecord) -> Result<Vec<u8>, String> {
    let body = serde_json::to_string(record).map_err(|e| e.to_string())?;
    let signed = key.sign(Kind::Record, Uuid::nil(), 0, &record.name, body);
    serde_json::to_vec(&signed).map_err(|e| e.to_string())
}

/// A registry record as another factory signed it (this one cannot check the MAC: it only
/// uses the record as a hint where a repository is warm).
pub(super) fn read_record(bytes: &[u8]) -> Option<FactoryRecord> {
    let signed: Signed = serde_json::from_slice(bytes).ok()?;
    serde_json::from_str(&signed.body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::CapturedOutput;

    fn result_with(stdout: &str, diff: Option<&str>) -> JobResult {
        JobResult {
            job_id: Uuid::now_v7(),
            delivery: 1,
            factory: "one".into(),
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            stdout: CapturedOutput {
                text: stdout.into(),
                truncated_bytes: 0,
            },
            stderr: CapturedOutput::default(),
            duration_ms: 1,
            diff: diff.map(|d| hex::encode(d.as_bytes())),
            failure: None,
            placement: None,
        }
    }

    #[test]
    fn a_result_is_redacted_and_a_diff_with_a_secret_is_not_sent() {
        let redactor = Redactor::new([("TOKEN".to_owned(), "hunter2-xyz".to_owned())]);
        let mut result = result_with("key hunter2-xyz\n", Some("+a line\n"));
        redact_result(&redactor, &mut result);
        assert_eq!(result.stdout.text, "key [REDACTED:TOKEN]\n");
        assert!(result.diff.is_some() && result.failure.is_none());
        let mut leaking = result_with("", Some("+TOKEN=hunter2-xyz\n"));
        redact_result(&redactor, &mut leaking);
        assert!(leaking.diff.is_none());
        assert!(leaking.failure.unwrap().contains("secret"));
    }

    #[test]
    fn settings_that_differ_from_the_control_planes_refuse_the_start() {
        let welcome = Welcome {
            accepted: true,
            reason: None,
            lease_secs: 3,
            max_deliver: 4,
        };
        assert!(check_settings(&welcome, None, None).is_ok());
        assert!(check_settings(&welcome, Some(3), Some(4)).is_ok());
        let lease = check_settings(&welcome, Some(7), None).unwrap_err();
        assert!(lease.contains("lease mismatch"), "{lease}");
        let deliveries = check_settings(&welcome, None, Some(9)).unwrap_err();
        assert!(deliveries.contains("max_deliver mismatch"), "{deliveries}");
    }

    #[test]
    fn a_signed_record_reads_back() {
        let key = FactoryKey::derive("glf_one");
        let record = FactoryRecord {
            name: "one".into(),
            capabilities: vec!["os:linux".into()],
            slots: 2,
            running: Vec::new(),
            heartbeat_at: chrono::Utc::now(),
            draining: false,
            warm: Vec::new(),
            last_pull_at: Some(chrono::Utc::now()),
            paused: true,
        };
        let bytes = signed_record(&key, &record).unwrap();
        assert_eq!(read_record(&bytes).unwrap(), record);
        let signed: Signed = serde_json::from_slice(&bytes).unwrap();
        assert!(key.verify(Kind::Record, Uuid::nil(), 0, "one", &signed));
    }
}
