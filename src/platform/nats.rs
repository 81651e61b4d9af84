//! NATS JetStream for the fleet: the connection (with its credentials and timeouts) and the
//! streams, consumers and key-value buckets both the control plane and the factories use. Each
//! setup call is idempotent (`get_or_create`), so whichever side starts first makes them.
//!
//! The names and the wire types are in [`crate::model::fleet`].

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::model::fleet::{
    CLAIMS_SUBJECT_PREFIX, CLASSES_BUCKET, CONTROL_BUCKET, FACTORIES_BUCKET, JOBS_STREAM,
    JOBS_SUBJECT_PREFIX, RESULTS_STREAM, RESULTS_SUBJECT_PREFIX,
};

/// Connecting takes at most this long (then the caller decides: the service fails to start).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request to the server (a JetStream API call, a publish's acknowledgement) at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Any other call to the server (a key-value read or write, an acknowledgement, a listing) at
/// most: no fleet loop ever waits on NATS unbounded (issue 30).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A request to the control plane (a hello, a claim) at most.
pub const CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Results and claims are kept this long: far longer than any job, short enough to stay small.
const RESULTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bound on the results stream's size.
const RESULTS_MAX_BYTES: i64 = 512 * 1024 * 1024;
/// Bound on the jobs stream's size (jobs wait there until a factory takes them).
const JOBS_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// Why the fleet's NATS side failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Could not connect (or the credentials were refused).
    #[error("NATS connect to {url}: {detail}")]
    Connect {
        /// Where.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// A JetStream call failed.
    #[error("NATS JetStream: {0}")]
    JetStream(String),
}

impl NatsError {
    /// Any JetStream failure, with its text.
    pub fn js(error: impl std::fmt::Display) -> Self {
        Self::JetStream(error.to_string())
    }
}

/// How to reach the NATS server.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port` or `tls://host:port`.
    pub url: String,
    /// A token, if the server wants one.
    pub token: Option<String>,
    /// A credentials file (JWT + seed), if the server wants one.
    pub creds_file: Option<PathBuf>,
    /// The connection's name in the server's monitoring.
    pub name: String,
    /// The prefix of its reply subjects (`_INBOX` by default): a factory's own
    /// (`_INBOX_<name>`), so its NATS user may subscribe to its replies only.
    pub inbox_prefix: Option<String>,
}

/// A connection and its JetStream context.
#[derive(Clone)]
pub struct Nats {
    /// The core connection: live output goes over plain subjects, not stored.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The buckets opened so far, by name: opening one asks the server for its stream's info,
    /// and the registry, classes and switches are read every few hundred milliseconds.
    buckets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, kv::Store>>>,
    /// Replicas of the streams and buckets this connection makes (`[fleet] replicas`).
    replicas: usize,
}

/// Splits `nats://user:password@host:port` into the address without the credentials and the
/// credentials (the client does not read them from the address; and the address is logged,
/// the password must not be).
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let address = format!("{scheme}://{}", &rest[at + 1..]);
    (address, Some((user.to_owned(), password.to_owned())))
}

/// Connects (reconnecting on its own afterwards, forever, with backoff).
pub async fn connect(options: &NatsOptions) -> Result<Nats, NatsError> {
    let (address, user_password) = split_credentials(&options.url);
    let connect_error = |detail: String| NatsError::Connect {
        url: address.clone(),
        detail,
    };
    let mut connect = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    if let Some(prefix) = &options.inbox_prefix {
        connect = connect.custom_inbox_prefix(prefix.clone());
    }
    if let Some((user, password)) = user_password {
        connect = connect.user_and_password(user, password);
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(file) = &options.creds_file {
        connect = connect
            .credentials_file(file)
            .await
            .map_err(|e| connect_error(format!("credentials file {}: {e}", file.display())))?;
    }
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect.connect(address.as_str()))
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    Ok(Nats {
        js: jetstream::new(client.clone()),
        client,
        buckets: Default::default(),
        replicas: 1,
    })
}

/// Runs one NATS call bounded by [`CALL_TIMEOUT`]; `what` names it in the error.
pub async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, NatsError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(NatsError::JetStream(format!("{what}: {error}"))),
        Err(_) => Err(NatsError::JetStream(format!(
            "{what}: no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// Reads every key of a bucket, bounded by [`CALL_TIMEOUT`] in all (the listing is a stream
/// the server could stop feeding) and by `max` keys.
pub async fn bucket_keys(bucket: &kv::Store, max: usize) -> Result<Vec<String>, NatsError> {
    use futures_util::StreamExt;
    let listing = async {
        let mut keys = bucket.keys().await.map_err(NatsError::js)?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            if let Ok(key) = key {
                found.push(key);
            }
            if found.len() >= max {
                break;
            }
        }
        Ok::<_, NatsError>(found)
    };
    bounded("listing a bucket", listing).await
}

impl Nats {
    /// Makes the streams and buckets with `replicas` copies (a NATS cluster of at least as many
    /// nodes); existing ones keep theirs.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// A request to the control plane on a core subject, answered within
    /// [`CONTROL_REQUEST_TIMEOUT`].
    pub async fn request(&self, subject: String, payload: Vec<u8>) -> Result<Vec<u8>, NatsError> {
        match tokio::time::timeout(
            CONTROL_REQUEST_TIMEOUT,
            self.client.request(subject, payload.into()),
        )
        .await
        {
            Ok(Ok(message)) => Ok(message.payload.to_vec()),
            Ok(Err(error)) => Err(NatsError::js(error)),
            Err(_) => Err(NatsError::JetStream(
                "the control plane did not answer".into(),
            )),
        }
    }

    /// The consumer of a job class as the control plane made it, without making it (a factory
    /// may not: its consumers' lease and `max_deliver` are the control plane's).
    pub async fn existing_class_consumer(
        &self,
        class: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, NatsError> {
        let stream = bounded("the jobs stream", self.js.get_stream(JOBS_STREAM)).await?;
        bounded(
            "a class's consumer",
            stream.get_consumer(&format!("jobs-{class}")),
        )
        .await
    }

    /// What the server says of a consumer of the jobs stream now (its delivery count).
    pub async fn jobs_consumer_info(&self, name: &str) -> Result<consumer::Info, NatsError> {
        let stream = bounded("the jobs stream", self.js.get_stream(JOBS_STREAM)).await?;
        bounded("a consumer's info", stream.consumer_info(name)).await
    }

    /// The work-queue stream of jobs: a message leaves it when a factory acknowledges it.
    pub async fn jobs_stream(&self) -> Result<stream::Stream, NatsError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: JOBS_STREAM.to_owned(),
                subjects: vec![format!("{JOBS_SUBJECT_PREFIX}>")],
                retention: stream::RetentionPolicy::WorkQueue,
                max_bytes: JOBS_MAX_BYTES,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(NatsError::js)
    }

    /// The stream of claims and results, read by the control plane.
    pub async fn results_stream(&self) -> Result<stream::Stream, NatsError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: RESULTS_STREAM.to_owned(),
                subjects: vec![
                    format!("{CLAIMS_SUBJECT_PREFIX}>"),
                    format!("{RESULTS_SUBJECT_PREFIX}>"),
                ],
                max_age: RESULTS_MAX_AGE,
                max_bytes: RESULTS_MAX_BYTES,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(NatsError::js)
    }

    /// The shared pull consumer of one job class: every factory that can serve the class pulls
    /// from it. `lease` is the ack wait (kept alive by progress acknowledgements); past
    /// `max_deliver` deliveries a job is not offered again. A consumer an earlier run made with
    /// another lease or `max_deliver` is updated to these (factories serve only a consumer whose
    /// settings are the control plane's).
    pub async fn class_consumer(
        &self,
        class: &str,
        lease: Duration,
        max_deliver: u32,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, NatsError> {
        let stream = self.jobs_stream().await?;
        let name = format!("jobs-{class}");
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("{JOBS_SUBJECT_PREFIX}{class}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: lease,
            max_deliver: i64::from(max_deliver),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(NatsError::js)?;
        let existing = &consumer.cached_info().config;
        if existing.ack_wait == lease && existing.max_deliver == i64::from(max_deliver) {
            return Ok(consumer);
        }
        tracing::warn!(consumer = %name, ?lease, max_deliver, "a job consumer had other settings; updating it");
        bounded(
            "updating a class's consumer",
            stream.create_consumer(config),
        )
        .await
    }

    /// A key-value bucket; `max_age` makes its entries expire (the factories' heartbeats).
    ///
    /// The bucket's stream is made here, with the layout the client's own `create_key_value`
    /// uses, because that call first asks for the account's info, whose answer from a 2.9
    /// server (Debian's) the client cannot read.
    pub async fn bucket(&self, name: &str, max_age: Duration) -> Result<kv::Store, NatsError> {
        let opened = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(store) = opened {
            return Ok(store);
        }
        let store = self.open_bucket(name, max_age).await?;
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), store.clone());
        Ok(store)
    }

    async fn open_bucket(&self, name: &str, max_age: Duration) -> Result<kv::Store, NatsError> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{name}"),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(NatsError::js)?;
        self.js.get_key_value(name).await.map_err(NatsError::js)
    }

    /// The factories' registry (entries live `ttl` past their last heartbeat).
    pub async fn factories(&self, ttl: Duration) -> Result<kv::Store, NatsError> {
        self.bucket(FACTORIES_BUCKET, ttl).await
    }

    /// The job classes in use (never expire).
    pub async fn classes(&self) -> Result<kv::Store, NatsError> {
        self.bucket(CLASSES_BUCKET, Duration::ZERO).await
    }

    /// Fleet-wide switches (never expire).
    pub async fn control(&self) -> Result<kv::Store, NatsError> {
        self.bucket(CONTROL_BUCKET, Duration::ZERO).await
    }

    /// Publishes to a stream and waits for the server's acknowledgement (the message is stored);
    /// answers its sequence in the stream.
    pub async fn publish_stored(
        &self,
        subject: String,
        payload: Vec<u8>,
    ) -> Result<u64, NatsError> {
        let ack = self
            .js
            .publish(subject, payload.into())
            .await
            .map_err(NatsError::js)?
            .await
            .map_err(NatsError::js)?;
        Ok(ack.sequence)
    }

    /// Takes a job out of the jobs stream (whether or not a factory holds it: its later
    /// acknowledgement finds nothing). Answers whether it was still there.
    pub async fn withdraw_job(&self, sequence: u64) -> Result<bool, NatsError> {
        self.jobs_stream()
            .await?
            .delete_message(sequence)
            .await
            .map_err(NatsError::js)
    }

    /// Publishes on a core subject, best effort: nothing is stored and nobody acknowledges, so
    /// a message nobody listens for is gone. Bounded by the request timeout (the client's
    /// outgoing buffer may be full while it reconnects).
    pub async fn publish_core(&self, subject: String, payload: Vec<u8>) -> Result<(), NatsError> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.client.publish(subject, payload.into()),
        )
        .await
        .map_err(|_| NatsError::JetStream("publish timed out".into()))?
        .map_err(NatsError::js)
    }

    /// Subscribes to a core subject (unsubscribed when the subscriber is dropped).
    pub async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, NatsError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.client.subscribe(subject))
            .await
            .map_err(|_| NatsError::JetStream("subscribe timed out".into()))?
            .map_err(NatsError::js)
    }
}

#[cfg(test)]
mod tests {
    use super::split_credentials;

    #[test]
    fn credentials_in_the_address_are_split_off() {
        assert_eq!(
            split_credentials("nats://one:pw@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_owned(),
                Some(("one".to_owned(), "pw".to_owned()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
    }
}
