//! The GitHub REST client: typed calls over the reqwest client glitchlab already builds (rustls
//! with aws-lc-rs; no second HTTP or TLS stack, hence no octocrab), each bounded by
//! `[github] request_timeout_secs` and driven through GitHub's rate-limit ladder ([`ladder`]).
//!
//! Writes to one host go through one writer, spaced `write_spacing_ms` apart (GitHub's advice
//! against secondary limits); reads poll with `If-None-Match` so an unchanged answer costs no
//! quota. Credentials ([`auth`]) are read (or renewed) before every try.

pub(crate) mod auth;
pub(crate) mod git_auth;
pub(crate) mod issues;
pub(crate) mod ladder;
pub(crate) mod types;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::github::GithubConfig;
use auth::{App, Credentials};
use ladder::{Answer, Ladder};
use types::*;

/// The largest answer body read; GitHub's pages of 100 stay far below it.
const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// ETag'd answers kept per client (oldest dropped first).
const ETAGS_KEPT_MAX: usize = 512;
/// Items asked per page (GitHub's maximum).
const PER_PAGE: u32 = 100;
/// GitHub's REST version glitchlab was written against.
const API_VERSION: &str = "2022-11-28";

/// A GitHub call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum GithubError {
    /// `[github]` is incomplete or a credential is missing.
    #[error("github is not configured: {0}")]
    Config(String),
    /// No answer (timeout, connection refused) through every retry.
    #[error("github did not answer: {0}")]
    Transport(String),
    /// An answer glitchlab does not act on (after the ladder).
    #[error("github answered {status} to {step}{}", if .message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The call.
        step: &'static str,
        /// The HTTP status.
        status: u16,
        /// GitHub's `message`.
        message: String,
    },
    /// The answer did not have the shape GitHub documents.
    #[error("github's answer could not be read: {0}")]
    Decode(String),
}

/// One answer: its status and JSON body.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    answer: Answer,
    body: Value,
}

/// What `POST …/pulls` came to.
pub(crate) enum Created {
    /// The new pull request.
    Opened(PullRequest),
    /// `422`: one is open for that head already.
    AlreadyExists,
}

/// What `PUT …/pulls/{n}/merge` came to.
pub(crate) enum Merge {
    /// Merged: the base's new commit.
    Merged(String),
    /// `409`: the head is no longer the `sha` sent.
    HeadMoved,
    /// `405`/`422`: GitHub refuses (not mergeable, protection unmet).
    Refused(String),
}

/// The client of one API root and one identity.
pub(crate) struct Client {
    api_url: String,
    http: reqwest::Client,
    credentials: Credentials,
    ladder: Ladder,
    write_spacing: Duration,
    /// The host's writer: the time of its last write.
    writer: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    /// `url → (etag, body)` of the last answers, for conditional polling.
    etags: Mutex<HashMap<String, (String, Value)>>,
}

/// The writer of each host: shared by every client of it, so writes are spaced across them.
fn host_writer(api_url: &str) -> Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>> {
    type Writers = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>>>;
    static WRITERS: LazyLock<Writers> = LazyLock::new(Writers::default);
    let host = reqwest::Url::parse(api_url)
        .ok()
        .and_then(|url| url.host_str().map(|h| format!("{h}:{:?}", url.port())))
        .unwrap_or_else(|| api_url.to_owned());
    let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    writers.entry(host).or_default().clone()
}

impl Client {
    /// The client `config` describes; an App's key is read now.
    pub(crate) fn new(config: &GithubConfig) -> Result<Self, GithubError> {
        let credentials =
            match (&config.token_env, config.app_id) {
                (Some(name), _) => Credentials::Env(name.clone()),
                (None, Some(app_id)) => {
                    let (Some(installation), Some(key)) =
                        (config.installation_id, config.private_key_file.as_ref())
                    else {
                        return Err(GithubError::Config("incomplete App".into()));
                    };
                    let margin = Duration::from_secs(config.token_refresh_margin_secs);
                    Credentials::App(App::load(app_id, installation, key, margin)?)
                }
                (None, None) => return Err(GithubError::Config(
                    "set [github] token_env or an App (app_id, private_key_file, installation_id)"
                        .into(),
                )),
            };
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .user_agent("glitchlab")
            .build()
            .map_err(|e| GithubError::Config(e.to_string()))?;
        let api_url = config.api_url.trim_end_matches('/').to_owned();
        Ok(Self {
            writer: host_writer(&api_url),
            api_url,
            http,
            credentials,
            ladder: Ladder {
                retries_max: config.retries_max,
                secondary_wait_min: Duration::from_secs(config.secondary_wait_min_secs),
            },
            write_spacing: Duration::from_millis(config.write_spacing_ms),
            etags: Mutex::new(HashMap::new()),
        })
    }

    /// The token for the next try (an App's renewed when it is about to expire).
    pub(crate) async fn token(&self) -> Result<String, GithubError> {
        match &self.credentials {
            Credentials::Env(name) => std::env::var(name)
                .map_err(|_| GithubError::Config(format!("the environment has no {name}"))),
            Credentials::App(app) => app.token(&self.http, &self.api_url).await,
        }
    }

    /// One call through the ladder (writes through the host's spaced writer).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, GithubError> {
        let url = format!("{}{path}", self.api_url);
        let write = method != reqwest::Method::GET;
        let _writer = if write {
            let mut last = self.writer.clone().lock_owned().await;
            if let Some(at) = *last {
                tokio::time::sleep_until(at + self.write_spacing).await;
            }
            *last = Some(tokio::time::Instant::now());
            Some(last)
        } else {
            None
        };
        let attempt = || self.try_once(method.clone(), &url, body);
        ladder::run(
            &self.ladder,
            attempt,
            |result: &Result<Reply, GithubError>| match result {
                Ok(reply) => reply.answer.clone(),
                Err(_) => Answer::default(),
            },
        )
        .await
    }

    async fn try_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, GithubError> {
        let token = self.token().await?;
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION);
        let cached_etag = (method == reqwest::Method::GET)
            .then(|| {
                self.etags
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(url)
                    .map(|(etag, _)| etag.clone())
            })
            .flatten();
        if let Some(etag) = &cached_etag {
            request = request.header("if-none-match", etag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| GithubError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let number = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
        let mut answer = Answer {
            status,
            retry_after: number("retry-after"),
            remaining: number("x-ratelimit-remaining"),
            reset_epoch: number("x-ratelimit-reset"),
            secondary: false,
        };
        let etag = header("etag");
        let bytes = response
            .bytes()
            .await
            .map_err(|e| GithubError::Transport(e.to_string()))?;
        if bytes.len() > BODY_BYTES_MAX {
            return Err(GithubError::Decode(format!(
                "an answer of {} bytes",
                bytes.len()
            )));
        }
        if status == 304 {
            let etags = self.etags.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, body)) = etags.get(url) {
                answer.status = 200;
                return Ok(Reply {
                    status: 200,
                    answer,
                    body: body.clone(),
                });
            }
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        answer.secondary = message_of(&body)
            .to_ascii_lowercase()
            .contains("secondary rate limit");
        if let (200, Some(etag)) = (status, etag) {
            let mut etags = self.etags.lock().unwrap_or_else(PoisonError::into_inner);
            if etags.len() >= ETAGS_KEPT_MAX {
                etags.clear();
            }
            etags.insert(url.to_owned(), (etag, body.clone()));
        }
        Ok(Reply {
            status,
            answer,
            body,
        })
    }

    /// A GET that must answer 200 with `T`.
    async fn get<T: DeserializeOwned>(
        &self,
        step: &'static str,
        path: &str,
    ) -> Result<T, GithubError> {
        let reply = self.call(reqwest::Method::GET, path, None).await?;
        expect(step, &reply, &[200])?;
        decode(reply.body)
    }

    /// Open pull requests whose head is `owner:branch`.
    pub(crate) async fn pulls_for_head(
        &self,
        repo: &str,
        head: &str,
    ) -> Result<Vec<PullRequest>, GithubError> {
        let path = format!("/repos/{repo}/pulls?state=open&head={head}&per_page={PER_PAGE}");
        self.get("find the pull request", &path).await
    }

    /// One pull request.
    pub(crate) async fn pull(&self, repo: &str, number: u64) -> Result<PullRequest, GithubError> {
        self.get(
            "read the pull request",
            &format!("/repos/{repo}/pulls/{number}"),
        )
        .await
    }

    /// Opens a pull request (`422`: one is open for that head already).
    pub(crate) async fn create_pull(
        &self,
        repo: &str,
        new: &Value,
    ) -> Result<Created, GithubError> {
        let path = format!("/repos/{repo}/pulls");
        let reply = self.call(reqwest::Method::POST, &path, Some(new)).await?;
        if reply.status == 422 && message_of(&reply.body).contains("already exists") {
            return Ok(Created::AlreadyExists);
        }
        expect("open the pull request", &reply, &[201])?;
        decode(reply.body).map(Created::Opened)
    }

    /// The checks the base requires: branch protection's and every ruleset's (none: empty).
    pub(crate) async fn required_checks(
        &self,
        repo: &str,
        base: &str,
    ) -> Result<Vec<String>, GithubError> {
        let path = format!("/repos/{repo}/branches/{base}/protection/required_status_checks");
        let reply = self.call(reqwest::Method::GET, &path, None).await?;
        let mut names = Vec::new();
        if reply.status != 404 {
            expect("read the required checks", &reply, &[200])?;
            let required: RequiredStatusChecks = decode(reply.body)?;
            names.extend(required.contexts);
            names.extend(required.checks.into_iter().map(|check| check.context));
        }
        let path = format!("/repos/{repo}/rules/branches/{base}?per_page={PER_PAGE}");
        let reply = self.call(reqwest::Method::GET, &path, None).await?;
        if reply.status != 404 {
            expect("read the branch rules", &reply, &[200])?;
            let rules: Vec<BranchRule> = decode(reply.body)?;
            names.extend(
                rules
                    .iter()
                    .filter(|rule| rule.kind == "required_status_checks")
                    .flat_map(ruleset_checks),
            );
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Approving reviews the base requires (branch protection; none: 0).
    pub(crate) async fn required_approvals(
        &self,
        repo: &str,
        base: &str,
    ) -> Result<u64, GithubError> {
        let path = format!("/repos/{repo}/branches/{base}/protection");
        let reply = self.call(reqwest::Method::GET, &path, None).await?;
        if reply.status == 404 {
            return Ok(0);
        }
        expect("read the branch protection", &reply, &[200])?;
        let reviews = &reply.body["required_pull_request_reviews"];
        Ok(reviews["required_approving_review_count"]
            .as_u64()
            .unwrap_or(0))
    }

    /// The latest check run of each name on exactly `sha`.
    pub(crate) async fn check_runs(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Vec<CheckRun>, GithubError> {
        let path =
            format!("/repos/{repo}/commits/{sha}/check-runs?filter=latest&per_page={PER_PAGE}");
        let runs: CheckRuns = self.get("read the check runs", &path).await?;
        Ok(runs.check_runs)
    }

    /// The commit statuses of `sha` (latest per context).
    pub(crate) async fn statuses(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Vec<CommitStatus>, GithubError> {
        let path = format!("/repos/{repo}/commits/{sha}/status?per_page={PER_PAGE}");
        let combined: CombinedStatus = self.get("read the commit status", &path).await?;
        Ok(combined.statuses)
    }

    /// A check run's annotations (the first page).
    pub(crate) async fn annotations(
        &self,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<Annotation>, GithubError> {
        let path = format!("/repos/{repo}/check-runs/{run_id}/annotations?per_page={PER_PAGE}");
        self.get("read the annotations", &path).await
    }

    /// The pull request's reviews (the first page).
    pub(crate) async fn reviews(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<Review>, GithubError> {
        let path = format!("/repos/{repo}/pulls/{number}/reviews?per_page={PER_PAGE}");
        self.get("read the reviews", &path).await
    }

    /// The pull request's review comments (the first page).
    pub(crate) async fn review_comments(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<ReviewComment>, GithubError> {
        let path = format!("/repos/{repo}/pulls/{number}/comments?per_page={PER_PAGE}");
        self.get("read the review comments", &path).await
    }

    /// Answers a review thread.
    pub(crate) async fn reply_to_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<(), GithubError> {
        let path = format!("/repos/{repo}/pulls/{number}/comments/{comment_id}/replies");
        let reply = self
            .call(reqwest::Method::POST, &path, Some(&json!({"body": body})))
            .await?;
        expect("reply on a review thread", &reply, &[201])
    }

    /// Squash-merges the pull request if its head is still `sha`.
    pub(crate) async fn merge(
        &self,
        repo: &str,
        number: u64,
        sha: &str,
        title: &str,
    ) -> Result<Merge, GithubError> {
        let path = format!("/repos/{repo}/pulls/{number}/merge");
        let body = json!({"sha": sha, "merge_method": "squash", "commit_title": title});
        let reply = self.call(reqwest::Method::PUT, &path, Some(&body)).await?;
        match reply.status {
            200 => decode::<MergeResult>(reply.body).map(|merged| Merge::Merged(merged.sha)),
            409 => Ok(Merge::HeadMoved),
            405 | 422 => Ok(Merge::Refused(message_of(&reply.body).to_owned())),
            _ => expect("merge", &reply, &[200]).map(|()| Merge::Refused(String::new())),
        }
    }
}

/// A ruleset rule's required check names.
fn ruleset_checks(rule: &BranchRule) -> Vec<String> {
    rule.parameters
        .as_ref()
        .and_then(|p| p["required_status_checks"].as_array())
        .map(|checks| {
            checks
                .iter()
                .filter_map(|c| c["context"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// GitHub's `message` in an error answer.
fn message_of(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

fn expect(step: &'static str, reply: &Reply, statuses: &[u16]) -> Result<(), GithubError> {
    if statuses.contains(&reply.status) {
        return Ok(());
    }
    Err(GithubError::Status {
        step,
        status: reply.status,
        message: message_of(&reply.body).chars().take(200).collect(),
    })
}

fn decode<T: DeserializeOwned>(body: Value) -> Result<T, GithubError> {
    serde_json::from_value(body).map_err(|e| GithubError::Decode(e.to_string()))
}

/// The clients of this process, one per API root and identity: their ETags and App tokens are
/// shared by every delivery.
pub(crate) fn shared(config: &GithubConfig) -> Result<Arc<Client>, GithubError> {
    type Clients = Mutex<HashMap<String, Arc<Client>>>;
    static CLIENTS: LazyLock<Clients> = LazyLock::new(Clients::default);
    let key = format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        config.api_url,
        config.token_env,
        config.app_id,
        config.installation_id,
        config.private_key_file
    );
    let mut clients = CLIENTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let client = Arc::new(Client::new(config)?);
    clients.insert(key, client.clone());
    Ok(client)
}
