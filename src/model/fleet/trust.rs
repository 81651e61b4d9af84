//! Who may speak for a factory, and what crosses NATS sealed (issue 30): the factory key, the
//! MACs on everything a factory sends the control plane, and the sealed secrets of a claimed job.
//!
//! - The service issues each factory a random **key** (`POST /v1/fleet/factories`), shown once.
//!   Both sides derive a [`FactoryKey`] from it ([`FactoryKey::derive`]); the service stores only
//!   that derivation, never the key.
//! - Every claim, lease renewal, result and registry record a factory sends is wrapped in a
//!   [`Signed`] envelope: an HMAC-SHA256 over its kind, job id, delivery, factory name and the
//!   digest of its body. A message without a valid MAC of a registered factory is a forgery.
//! - Secret environment values never travel in a job: the control plane hands them to the
//!   factory whose claim it accepted, in the claim's answer (core NATS, not stored), sealed with
//!   ChaCha20-Poly1305 under a key derived from the factory key and bound to job and delivery.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The variable a factory reads its key from (never a flag: flags show in `ps`).
pub const FACTORY_KEY_ENV: &str = "GLITCHLAB_FACTORY_KEY";
/// Subject of a factory's hello at start (request/reply with the control plane).
pub const HELLO_SUBJECT: &str = "glitchlab.control.hello";
/// Subject prefix of claim requests: `glitchlab.control.claim.<job id>` (request/reply, core).
pub const CLAIM_REQUEST_PREFIX: &str = "glitchlab.control.claim.";
/// Subject prefix of lease renewals: `glitchlab.control.lease.<job id>` (core, best effort).
pub const LEASE_SUBJECT_PREFIX: &str = "glitchlab.control.lease.";
/// What every JetStream acknowledgement subject starts with.
const ACK_PREFIX: &str = "$JS.ACK.";
/// Random bytes of a factory key.
const KEY_BYTES: usize = 32;
/// The prefix of a factory key (tells it apart from an API token in a config file).
const KEY_PREFIX: &str = "glf_";
/// Characters of a factory name at most (a registry key, a NATS subject token).
pub const FACTORY_NAME_CHARS_MAX: usize = 64;

/// What a signed message is: part of the MAC, so one kind is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A factory's hello at start.
    Hello,
    /// A claim of one delivery.
    Claim,
    /// A lease renewal of one delivery.
    Lease,
    /// The result of one delivery.
    Result,
    /// A registry record (the heartbeat).
    Record,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Claim => "claim",
            Kind::Lease => "lease",
            Kind::Result => "result",
            Kind::Record => "record",
        }
    }
}

/// Checks a factory name: 1 to [`FACTORY_NAME_CHARS_MAX`] characters of `A-Z a-z 0-9 - _` (it is
/// a key of the registry bucket and a NATS user's subject token).
pub fn check_factory_name(name: &str) -> Result<(), String> {
    let valid = (1..=FACTORY_NAME_CHARS_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{}` must be 1 to {FACTORY_NAME_CHARS_MAX} characters of A-Z, a-z, 0-9, `-`, `_`",
            name.escape_debug()
        ))
    }
}

/// A new factory key from the OS's generator; `None` if it failed (no weak key is ever made).
pub fn new_factory_key() -> Option<String> {
    let mut bytes = [0_u8; KEY_BYTES];
    getrandom::fill(&mut bytes).ok()?;
    Some(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// The secret both sides MAC and seal with, derived from a factory key: what the service stores
/// (a leaked store does not reveal the key the factory was configured with).
#[derive(Clone, PartialEq, Eq)]
pub struct FactoryKey([u8; 32]);

impl std::fmt::Debug for FactoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactoryKey([redacted])")
    }
}

impl FactoryKey {
    /// Derives it from the key a factory was issued.
    pub fn derive(key: &str) -> Self {
        let digest = Sha256::digest(format!("glitchlab factory key v1\n{key}").as_bytes());
        Self(digest.into())
    }

    /// Reads one stored as hex ([`FactoryKey::to_hex`]).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Hex, for the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn sub_key(&self, purpose: &str) -> [u8; 32] {
        let mut mac = hmac_with(&self.0);
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac_of(
        &self,
        kind: Kind,
        job: Uuid,
        delivery: u64,
        factory: &str,
        body: &[u8],
    ) -> Hmac<Sha256> {
        let mut mac = hmac_with(&self.sub_key("mac"));
        let digest = hex::encode(Sha256::digest(body));
        let text = format!("{}\n{job}\n{delivery}\n{factory}\n{digest}", kind.label());
        mac.update(text.as_bytes());
        mac
    }

    /// Signs `body` (the exact bytes that travel) as a message of `kind` about `job`'s
    /// `delivery` from `factory`.
    pub fn sign(
        &self,
        kind: Kind,
        job: Uuid,
        delivery: u64,
        factory: &str,
        body: String,
    ) -> Signed {
        let mac = self.mac_of(kind, job, delivery, factory, body.as_bytes());
        Signed {
            body,
            mac: hex::encode(mac.finalize().into_bytes()),
        }
    }

    /// Whether `signed` carries this key's MAC for the fields given (constant-time).
    pub fn verify(
        &self,
        kind: Kind,
        job: Uuid,
        delivery: u64,
        factory: &str,
        signed: &Signed,
    ) -> bool {
        let Ok(tag) = hex::decode(&signed.mac) else {
            return false;
        };
        self.mac_of(kind, job, delivery, factory, signed.body.as_bytes())
            .verify_slice(&tag)
            .is_ok()
    }

    fn aead(&self) -> Option<LessSafeKey> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &self.sub_key("seal")).ok()?;
        Some(LessSafeKey::new(key))
    }

    /// Seals `plain` for the factory holding this key, bound to `job`'s `delivery` (it opens for
    /// nothing else): hex of nonce ++ ciphertext ++ tag. `None` without randomness.
    pub fn seal(&self, job: Uuid, delivery: u64, plain: &[u8]) -> Option<String> {
        let mut nonce = [0_u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding(job, delivery).as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(hex::encode(out))
    }

    /// Opens what [`FactoryKey::seal`] sealed for `job`'s `delivery`; `None` if it was not
    /// sealed with this key for them, or was changed.
    pub fn open(&self, job: Uuid, delivery: u64, sealed: &str) -> Option<Vec<u8>> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .aead()?
            .open_in_place(
                nonce,
                Aad::from(binding(job, delivery).as_bytes()),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

fn binding(job: Uuid, delivery: u64) -> String {
    format!("glitchlab sealed env\n{job}\n{delivery}")
}

fn hmac_with(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of every length"),
    }
}

/// A message and its MAC: `body` is the JSON exactly as signed (so no re-encoding can change
/// what was signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The JSON of the message.
    pub body: String,
    /// Hex of the HMAC-SHA256 ([`FactoryKey::sign`]).
    pub mac: String,
}

/// A factory's hello at start: it holds a registered key and asks for the fleet's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The factory's name.
    pub factory: String,
}

/// The control plane's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Whether the key is the factory's.
    pub accepted: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The lease (ack wait) of the job consumers, in seconds.
    pub lease_secs: u64,
    /// Deliveries of one job at most (the consumers' `max_deliver`).
    pub max_deliver: u32,
}

/// A factory asks to own one delivery of a job (sent in a [`Signed`] of kind [`Kind::Claim`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Which job.
    pub job_id: Uuid,
    /// The delivery count JetStream gave the message (its `info().delivered`).
    pub delivery: u64,
    /// The factory's name.
    pub factory: String,
    /// The message's acknowledgement subject as the server made it: stream, consumer, delivery
    /// count and sequences, which the control plane checks against the stream and consumer.
    pub ack_subject: String,
    /// Why this factory took it.
    #[serde(default)]
    pub placement: Option<String>,
}

/// The control plane's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimVerdict {
    /// Whether this factory owns this delivery now: run it.
    pub accepted: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The job's secret variables, sealed to the factory ([`FactoryKey::seal`] of the JSON of
    /// `[(name, value), …]`).
    #[serde(default)]
    pub sealed_env: Option<String>,
}

/// A factory still runs a delivery (sent every third of a lease, core NATS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewal {
    /// Which job.
    pub job_id: Uuid,
    /// Which delivery.
    pub delivery: u64,
    /// The factory's name.
    pub factory: String,
}

/// The parts of a JetStream acknowledgement subject the control plane checks:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>` (a
/// domain-qualified form has two more tokens up front).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSubject {
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub consumer: String,
    /// The delivery count.
    pub delivered: u64,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// The delivery's sequence in the consumer (unique per delivery).
    pub consumer_sequence: u64,
}

impl AckSubject {
    /// Parses one; `None` if it is not an acknowledgement subject.
    pub fn parse(subject: &str) -> Option<Self> {
        let tokens: Vec<&str> = subject.strip_prefix(ACK_PREFIX)?.split('.').collect();
        let rest = match tokens.len() {
            7 => &tokens[..],
            // `<domain>.<account hash>.` first, and a random token last.
            9.. => &tokens[2..9],
            _ => return None,
        };
        Some(Self {
            stream: rest[0].to_owned(),
            consumer: rest[1].to_owned(),
            delivered: rest[2].parse().ok()?,
            stream_sequence: rest[3].parse().ok()?,
            consumer_sequence: rest[4].parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_binds_kind_job_delivery_factory_and_body() {
        let key = FactoryKey::derive("glf_one");
        let job = Uuid::now_v7();
        let signed = key.sign(Kind::Claim, job, 2, "one", "{}".into());
        assert!(key.verify(Kind::Claim, job, 2, "one", &signed));
        assert!(!key.verify(Kind::Result, job, 2, "one", &signed));
        assert!(!key.verify(Kind::Claim, job, 3, "one", &signed));
        assert!(!key.verify(Kind::Claim, job, 2, "two", &signed));
        assert!(!key.verify(Kind::Claim, Uuid::now_v7(), 2, "one", &signed));
        let mut changed = signed.clone();
        changed.body = "{ }".into();
        assert!(!key.verify(Kind::Claim, job, 2, "one", &changed));
        assert!(!FactoryKey::derive("glf_two").verify(Kind::Claim, job, 2, "one", &signed));
        let stored = FactoryKey::from_hex(&key.to_hex()).unwrap();
        assert!(stored.verify(Kind::Claim, job, 2, "one", &signed));
    }

    #[test]
    fn sealed_env_opens_only_for_its_key_job_and_delivery() {
        let key = FactoryKey::derive("glf_one");
        let job = Uuid::now_v7();
        let sealed = key.seal(job, 1, b"hunter2-secret").unwrap();
        assert!(!sealed.contains(&hex::encode(b"hunter2-secret")));
        assert_eq!(key.open(job, 1, &sealed).unwrap(), b"hunter2-secret");
        assert!(key.open(job, 2, &sealed).is_none());
        assert!(key.open(Uuid::now_v7(), 1, &sealed).is_none());
        assert!(FactoryKey::derive("glf_two")
            .open(job, 1, &sealed)
            .is_none());
        assert!(key.open(job, 1, "00").is_none());
    }

    #[test]
    fn ack_subjects_parse() {
        let parsed =
            AckSubject::parse("$JS.ACK.glitchlab_jobs.jobs-any.3.17.42.1700000000000000000.0")
                .unwrap();
        assert_eq!(parsed.stream, "glitchlab_jobs");
        assert_eq!(parsed.consumer, "jobs-any");
        assert_eq!(
            (
                parsed.delivered,
                parsed.stream_sequence,
                parsed.consumer_sequence
            ),
            (3, 17, 42)
        );
        assert!(AckSubject::parse("glitchlab.results.x").is_none());
        assert!(AckSubject::parse("$JS.ACK.a.b.x.1.2.3.4").is_none());
    }

    #[test]
    fn factory_names_and_keys() {
        assert!(check_factory_name("one-2_x").is_ok());
        assert!(check_factory_name("").is_err());
        assert!(check_factory_name("a.b").is_err());
        assert!(check_factory_name(&"a".repeat(65)).is_err());
        let key = new_factory_key().unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert_ne!(new_factory_key(), Some(key));
    }
}
