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

/// Connects (reconnecting on its own afterwards, forever, with backoff).
pub async fn connect(options: &NatsOptions) -> Result<Nats, NatsError> {
    let connect_error = |detail: String| NatsError::Connect {
        url: options.url.clone(),
        detail,
    };
    let mut connect = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(file) = &options.creds_file {
        connect = connect
            .credentials_file(file)
            .await
            .map_err(|e| connect_error(format!("credentials file {}: {e}", file.display())))?;
    }
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect.connect(options.url.as_str()))
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

impl Nats {
    /// Makes the streams and buckets with `replicas` copies (a NATS cluster of at least as many
    /// nodes); existing ones keep theirs.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
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
    /// `max_deliver` deliveries a job is not offered again.
    pub async fn class_consumer(
        &self,
        class: &str,
        lease: Duration,
        max_deliver: u32,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, NatsError> {
        let stream = self.jobs_stream().await?;
        let name = format!("jobs-{class}");
        stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{JOBS_SUBJECT_PREFIX}{class}"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: lease,
                    max_deliver: i64::from(max_deliver),
                    ..Default::default()
                },
            )
            .await
            .map_err(NatsError::js)
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
