//! A stateful fake GitHub: an axum server on loopback holding real bare git repositories as the
//! remotes glitchlab pushes to. It answers the REST operations of `tests/contract/github/` (pull
//! requests, check runs, commit statuses, reviews, review comments, branch protection, rulesets,
//! merges, App installation tokens) from its state, runs scripted CI on each new head, can play
//! a reviewer, rate limits, an outage, token expiry and a slow answer, and logs every exchange
//! so `github_contract` can hold both sides to GitHub's OpenAPI description. Its repositories are
//! also served over git's smart HTTP (`/owner/name.git/…`: `git http-backend` as CGI, pushes
//! enabled) behind GitHub's credential check — Basic `x-access-token:<token>`, else 401 with
//! `WWW-Authenticate: Basic` — so the token git carries is tested (`git_public`, `git_token`,
//! `git_requests`).
//!
//! Meant for reuse (issue intake will build on it): state is plain data behind [`Fake::state`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

/// One check CI reports on a head.
#[derive(Debug, Clone)]
pub struct ScriptedCheck {
    /// Its name.
    pub name: String,
    /// Its conclusion; `None`: it never reports.
    pub conclusion: Option<String>,
    /// Reads of the head's checks before it completes (0: completed at once).
    pub pending_reads: u32,
    /// Its summary.
    pub summary: String,
    /// `(path, line, message)` annotations.
    pub annotations: Vec<(String, u64, String)>,
    /// A commit status instead of a check run.
    pub as_status: bool,
}

impl ScriptedCheck {
    /// A check run `name` concluding `conclusion` after one pending read.
    pub fn run(name: &str, conclusion: &str) -> Self {
        Self {
            name: name.into(),
            conclusion: Some(conclusion.into()),
            pending_reads: 1,
            summary: format!("{name}: {conclusion}"),
            annotations: Vec::new(),
            as_status: false,
        }
    }
}

/// A review a scripted reviewer leaves on a head.
#[derive(Debug, Clone)]
pub struct ScriptedReview {
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`.
    pub state: String,
    /// Its text.
    pub body: String,
    /// `(path, line, text)` review comments.
    pub comments: Vec<(String, u64, String)>,
}

/// A fault the fake answers the next write (POST/PUT) with.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// 403 secondary rate limit with `retry-after: n`.
    SecondaryRetryAfter(u64),
    /// 403 secondary rate limit without a header.
    Secondary,
    /// 429.
    TooMany,
    /// 502.
    BadGateway,
}

/// CI: the checks of the nth head (0-based) a pull request shows.
pub type Ci = Arc<dyn Fn(usize) -> Vec<ScriptedCheck> + Send + Sync>;
/// The reviewer: a review for the nth head, if any.
pub type Reviewer = Arc<dyn Fn(usize) -> Option<ScriptedReview> + Send + Sync>;

/// One request and its answer, for the contract test.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Lower-case method.
    pub method: String,
    /// The operation's path template (as in the OpenAPI description).
    pub template: String,
    /// The request body.
    pub request: Option<Value>,
    /// The status answered.
    pub status: u16,
    /// The body answered.
    pub response: Value,
}

/// A pull request in the fake.
#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub repo: String,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub draft: bool,
    pub state: String,
    pub merged: bool,
    pub merge_commit_sha: Option<String>,
    /// Heads seen so far (CI and the reviewer ran on each).
    pub heads: Vec<String>,
}

/// A check in the fake (a run or a status).
#[derive(Debug, Clone)]
pub struct Check {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub script: ScriptedCheck,
    pub reads: u32,
}

/// A review comment in the fake.
#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub pull: u64,
    pub review_id: u64,
    pub commit_id: String,
    pub path: String,
    pub line: u64,
    pub body: String,
    pub in_reply_to: Option<u64>,
    pub user: String,
}

/// A review in the fake.
#[derive(Debug, Clone)]
pub struct Review {
    pub id: u64,
    pub pull: u64,
    pub state: String,
    pub body: String,
    pub commit_id: String,
}

/// A GitHub App the fake knows: its public key (PKCS#1 DER) and the tokens it minted.
pub struct AppAuth {
    pub installation_id: u64,
    pub public_key: Vec<u8>,
    /// Life of a minted installation token.
    pub token_life: Duration,
    /// `(token, expires)` minted so far.
    pub minted: Vec<(String, std::time::Instant)>,
}

/// Everything the fake holds.
pub struct FakeState {
    /// `owner/name` → bare repository.
    pub repos: HashMap<String, PathBuf>,
    pub pulls: Vec<Pull>,
    pub checks: Vec<Check>,
    pub reviews: Vec<Review>,
    pub comments: Vec<Comment>,
    /// Branch protection's required checks (none: 404).
    pub required_checks: Option<Vec<String>>,
    /// Rulesets' required checks.
    pub ruleset_checks: Vec<String>,
    /// Approvals branch protection requires (none: 404).
    pub required_approvals: Option<u64>,
    pub ci: Ci,
    pub reviewer: Reviewer,
    /// The fixed token API calls must carry (token mode).
    pub token: String,
    pub app: Option<AppAuth>,
    pub write_faults: VecDeque<Fault>,
    /// Every answer is 503.
    pub outage: bool,
    /// Move the head (a human's push) before answering the next merge: 409.
    pub move_head_on_merge: bool,
    /// Hold the answer to the next `POST …/pulls` this long (after the PR exists).
    pub slow_create: Option<Duration>,
    /// Told when a pull request was created.
    pub created: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
    pub log: Vec<Exchange>,
    /// Times each fault was answered, and rejected tokens.
    pub unauthorized: u32,
    /// Git over HTTP: anyone may fetch (pushes still need the token).
    pub git_public: bool,
    /// The token git requests must carry, when not the API's (a token the remote refuses).
    pub git_token: Option<String>,
    /// Every git request over HTTP.
    pub git_requests: Vec<GitRequest>,
    next_id: u64,
    /// Issues (numbered from [`FIRST_ISSUE`], apart from the pulls' numbers).
    pub issues: Vec<FakeIssue>,
    /// Issue comments.
    pub issue_comments: Vec<FakeIssueComment>,
    /// `(issue, content)` reactions of the token's user.
    pub reactions: Vec<(u64, String)>,
    /// `login → permission` (others: 404, not a collaborator).
    pub permissions: HashMap<String, String>,
    /// When each content-creating write (a comment, a reaction, a pull request) was answered.
    pub creating_writes: Vec<std::time::Instant>,
    /// The repositories' default branch.
    pub default_branch: String,
}

/// The first issue number the fake hands out.
pub const FIRST_ISSUE: u64 = 100;

/// An issue in the fake.
#[derive(Debug, Clone)]
pub struct FakeIssue {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub locked: bool,
    pub labels: Vec<String>,
}

/// An issue comment in the fake.
#[derive(Debug, Clone)]
pub struct FakeIssueComment {
    pub id: u64,
    pub issue: u64,
    pub body: String,
    pub user: String,
    /// Times it was edited.
    pub edits: u32,
}

/// The running fake.
pub struct Fake {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
    _server: tokio::task::JoinHandle<()>,
}

pub const TOKEN: &str = "ghs_fake-token-for-tests";

impl Fake {
    /// Starts a fake holding `repos` (`owner/name` → bare repository) with green CI (one
    /// check `ci`, required) and no reviewer.
    pub async fn start(repos: &[(&str, &Path)]) -> Fake {
        let state = FakeState {
            repos: repos
                .iter()
                .map(|(name, path)| (name.to_string(), path.to_path_buf()))
                .collect(),
            pulls: Vec::new(),
            checks: Vec::new(),
            reviews: Vec::new(),
            comments: Vec::new(),
            required_checks: Some(vec!["ci".into()]),
            ruleset_checks: Vec::new(),
            required_approvals: None,
            ci: Arc::new(|_| vec![ScriptedCheck::run("ci", "success")]),
            reviewer: Arc::new(|_| None),
            token: TOKEN.into(),
            app: None,
            write_faults: VecDeque::new(),
            outage: false,
            move_head_on_merge: false,
            slow_create: None,
            created: None,
            log: Vec::new(),
            unauthorized: 0,
            git_public: false,
            git_token: None,
            git_requests: Vec::new(),
            next_id: 1000,
            issues: Vec::new(),
            issue_comments: Vec::new(),
            reactions: Vec::new(),
            permissions: HashMap::new(),
            creating_writes: Vec::new(),
            default_branch: "main".into(),
        };
        let state = Arc::new(Mutex::new(state));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            url,
            state,
            _server: server,
        }
    }

    /// Runs `change` on the state.
    pub fn with<T>(&self, change: impl FnOnce(&mut FakeState) -> T) -> T {
        change(&mut self.state.lock().unwrap())
    }

    /// The pull requests opened so far.
    pub fn pulls(&self) -> Vec<Pull> {
        self.with(|s| s.pulls.clone())
    }

    /// Every exchange so far.
    pub fn log(&self) -> Vec<Exchange> {
        self.with(|s| s.log.clone())
    }

    /// Opens an issue carrying `labels`; answers its number.
    pub fn add_issue(&self, title: &str, body: &str, labels: &[&str]) -> u64 {
        self.with(|s| {
            let number = FIRST_ISSUE + s.issues.len() as u64;
            s.issues.push(FakeIssue {
                number,
                title: title.into(),
                body: body.into(),
                state: "open".into(),
                state_reason: None,
                locked: false,
                labels: labels.iter().map(|l| l.to_string()).collect(),
            });
            number
        })
    }

    /// `user` comments on issue `number`.
    pub fn add_issue_comment(&self, number: u64, user: &str, body: &str) {
        self.with(|s| {
            s.next_id += 1;
            let comment = FakeIssueComment {
                id: s.next_id,
                issue: number,
                body: body.into(),
                user: user.into(),
                edits: 0,
            };
            s.issue_comments.push(comment);
        })
    }

    /// The issue `number` as GitHub's JSON (what a webhook payload carries).
    pub fn issue_json(&self, repo: &str, number: u64) -> Value {
        self.with(|s| {
            let issue = s.issues.iter().find(|i| i.number == number).unwrap();
            issue_json(repo, issue)
        })
    }

    /// One issue.
    pub fn issue(&self, number: u64) -> FakeIssue {
        self.with(|s| {
            s.issues
                .iter()
                .find(|i| i.number == number)
                .unwrap()
                .clone()
        })
    }

    /// The comments glitchlab (the token's user) wrote on issue `number`.
    pub fn issue_comments(&self, number: u64) -> Vec<FakeIssueComment> {
        self.with(|s| {
            s.issue_comments
                .iter()
                .filter(|c| c.issue == number && c.user == "glitchlab[bot]")
                .cloned()
                .collect()
        })
    }

    /// The most content-creating writes answered within any one minute.
    pub fn creating_writes_per_minute_max(&self) -> usize {
        self.with(|s| {
            let times = &s.creating_writes;
            times
                .iter()
                .map(|start| {
                    times
                        .iter()
                        .filter(|t| {
                            **t >= *start && t.duration_since(*start) < Duration::from_secs(60)
                        })
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
    }
}

type Shared = Arc<Mutex<FakeState>>;

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let git = git_repo_of(&state.lock().unwrap(), &segments);
    if let Some(repo) = git {
        return git_http(state, method, uri, headers, body, repo).await;
    }
    let (answer, slow) = {
        let mut fake = state.lock().unwrap();
        let answer = answer(&mut fake, &method, &segments, &query, &headers, &request);
        let slow = (answer.1 == 201 && answer.0.ends_with("/pulls"))
            .then(|| fake.slow_create.take())
            .flatten();
        let (template, status, response, extra) = answer;
        fake.log.push(Exchange {
            method: method.as_str().to_lowercase(),
            template,
            request: request.clone(),
            status,
            response: response.clone(),
        });
        ((status, response, extra), slow)
    };
    if let Some(wait) = slow {
        tokio::time::sleep(wait).await;
    }
    let (status, response, extra) = answer;
    let mut reply = (StatusCode::from_u16(status).unwrap(), axum::Json(response)).into_response();
    for (name, value) in extra {
        reply
            .headers_mut()
            .insert(name, axum::http::HeaderValue::from_str(&value).unwrap());
    }
    reply
}

type Answer = (String, u16, Value, Vec<(&'static str, String)>);

fn plain(template: &str, status: u16, body: Value) -> Answer {
    (template.to_owned(), status, body, Vec::new())
}

fn answer(
    fake: &mut FakeState,
    method: &Method,
    segments: &[String],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    request: &Option<Value>,
) -> Answer {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    if fake.outage {
        return plain("outage", 503, json!({"message": "Service Unavailable"}));
    }
    if let ["app", "installations", id, "access_tokens"] = s.as_slice() {
        return mint_token(fake, id, headers);
    }
    if !authorized(fake, headers) {
        fake.unauthorized += 1;
        return plain("unauthorized", 401, json!({"message": "Bad credentials"}));
    }
    if *method != Method::GET {
        if let Some(fault) = fake.write_faults.pop_front() {
            return fault_answer(fault);
        }
    }
    let ["repos", owner, name, rest @ ..] = s.as_slice() else {
        return plain("unknown", 404, json!({"message": "Not Found"}));
    };
    let repo = format!("{owner}/{name}");
    let base = "/repos/{owner}/{repo}";
    match (method.as_str(), rest) {
        ("GET", ["pulls"]) => list_pulls(fake, &repo, query),
        ("POST", ["pulls"]) => create_pull(fake, &repo, request),
        ("GET", ["pulls", n]) => match find_pull(fake, &repo, n) {
            Some(pull) => plain(
                &format!("{base}/pulls/{{pull_number}}"),
                200,
                pull_json(fake, &pull, true),
            ),
            None => plain(
                &format!("{base}/pulls/{{pull_number}}"),
                404,
                json!({"message": "Not Found"}),
            ),
        },
        ("PUT", ["pulls", n, "merge"]) => merge(fake, &repo, n, request),
        ("GET", ["pulls", n, "reviews"]) => {
            let number: u64 = n.parse().unwrap_or(0);
            let reviews: Vec<Value> = fake
                .reviews
                .iter()
                .filter(|r| r.pull == number)
                .map(review_json)
                .collect();
            plain(
                &format!("{base}/pulls/{{pull_number}}/reviews"),
                200,
                json!(reviews),
            )
        }
        ("GET", ["pulls", n, "comments"]) => {
            let number: u64 = n.parse().unwrap_or(0);
            let comments: Vec<Value> = fake
                .comments
                .iter()
                .filter(|c| c.pull == number)
                .map(comment_json)
                .collect();
            plain(
                &format!("{base}/pulls/{{pull_number}}/comments"),
                200,
                json!(comments),
            )
        }
        ("POST", ["pulls", n, "comments", id, "replies"]) => reply(fake, n, id, request),
        ("GET", ["branches", _, "protection", "required_status_checks"]) => {
            let template = format!("{base}/branches/{{branch}}/protection/required_status_checks");
            match &fake.required_checks {
                Some(names) => plain(
                    &template,
                    200,
                    json!({
                        "url": "https://api.github.com/x", "contexts_url": "https://api.github.com/x",
                        "strict": false, "contexts": names,
                        "checks": names.iter().map(|n| json!({"context": n, "app_id": null})).collect::<Vec<_>>(),
                    }),
                ),
                None => plain(&template, 404, json!({"message": "Branch not protected"})),
            }
        }
        ("GET", ["branches", _, "protection"]) => {
            let template = format!("{base}/branches/{{branch}}/protection");
            match fake.required_approvals {
                Some(count) => plain(
                    &template,
                    200,
                    json!({
                        "url": "https://api.github.com/x", "enabled": true,
                        "required_pull_request_reviews": {"url": "https://api.github.com/x",
                            "dismiss_stale_reviews": false, "require_code_owner_reviews": false,
                            "required_approving_review_count": count},
                    }),
                ),
                None => plain(&template, 404, json!({"message": "Branch not protected"})),
            }
        }
        ("GET", ["rules", "branches", _]) => {
            let rules: Vec<Value> = if fake.ruleset_checks.is_empty() {
                Vec::new()
            } else {
                vec![
                    json!({"type": "required_status_checks", "ruleset_source_type": "Repository",
                    "ruleset_source": repo, "ruleset_id": 1,
                    "parameters": {"strict_required_status_checks_policy": false,
                        "required_status_checks": fake.ruleset_checks.iter().map(|c| json!({"context": c})).collect::<Vec<_>>()}}),
                ]
            };
            plain(
                &format!("{base}/rules/branches/{{branch}}"),
                200,
                json!(rules),
            )
        }
        ("GET", []) => plain(
            base,
            200,
            json!({"id": 1, "name": name, "full_name": repo, "default_branch": fake.default_branch}),
        ),
        ("GET", ["issues"]) => list_issues(fake, &repo, query, headers),
        ("PATCH", ["issues", "comments", id]) => edit_issue_comment(fake, id, request),
        ("PATCH", ["issues", n]) => edit_issue(fake, &repo, n, request),
        ("GET", ["issues", n, "comments"]) => {
            let number: u64 = n.parse().unwrap_or(0);
            let comments: Vec<Value> = fake
                .issue_comments
                .iter()
                .filter(|c| c.issue == number)
                .map(|c| issue_comment_json(&repo, c))
                .collect();
            plain(
                &format!("{base}/issues/{{issue_number}}/comments"),
                200,
                json!(comments),
            )
        }
        ("POST", ["issues", n, "comments"]) => add_issue_comment(fake, &repo, n, request),
        ("POST", ["issues", n, "reactions"]) => react(fake, n, request),
        ("GET", ["collaborators", user, "permission"]) => {
            let template = format!("{base}/collaborators/{{username}}/permission");
            match fake.permissions.get(*user) {
                Some(permission) => plain(
                    &template,
                    200,
                    json!({"permission": permission, "role_name": permission, "user": user_json(user)}),
                ),
                None => plain(&template, 404, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["commits", sha, "check-runs"]) => check_runs(fake, &repo, sha),
        ("GET", ["commits", sha, "status"]) => statuses(fake, &repo, sha),
        ("GET", ["check-runs", id, "annotations"]) => annotations(fake, id),
        _ => plain("unknown", 404, json!({"message": "Not Found"})),
    }
}

fn authorized(fake: &mut FakeState, headers: &HeaderMap) -> bool {
    let Some(bearer) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    match &fake.app {
        None => bearer == fake.token,
        Some(app) => app
            .minted
            .iter()
            .any(|(token, expires)| token == bearer && *expires > std::time::Instant::now()),
    }
}

fn mint_token(fake: &mut FakeState, id: &str, headers: &HeaderMap) -> Answer {
    let template = "/app/installations/{installation_id}/access_tokens";
    let Some(app) = fake.app.as_mut() else {
        return plain(template, 404, json!({"message": "Not Found"}));
    };
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if id != app.installation_id.to_string() || !jwt_valid(&app.public_key, jwt) {
        return plain(
            template,
            401,
            json!({"message": "A JSON web token could not be decoded"}),
        );
    }
    let token = format!("ghs_minted_{}", app.minted.len());
    let life = app.token_life;
    app.minted
        .push((token.clone(), std::time::Instant::now() + life));
    let expires = chrono::Utc::now() + chrono::Duration::from_std(life).unwrap();
    plain(
        template,
        201,
        json!({"token": token, "expires_at": expires.to_rfc3339()}),
    )
}

/// RS256 signature by the App's key, `exp` in the future, at most ten minutes of life.
fn jwt_valid(public_key: &[u8], jwt: &str) -> bool {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return false;
    }
    let decode = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
    };
    let (Some(header), Some(claims), Some(signature)) =
        (decode(parts[0]), decode(parts[1]), decode(parts[2]))
    else {
        return false;
    };
    let header: Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    );
    header["alg"] == "RS256"
        && exp > now
        && exp - iat <= 600
        && key
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .is_ok()
}

fn fault_answer(fault: Fault) -> Answer {
    let limited = json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"});
    match fault {
        Fault::SecondaryRetryAfter(seconds) => (
            "fault".into(),
            403,
            limited,
            vec![("retry-after", seconds.to_string())],
        ),
        Fault::Secondary => plain("fault", 403, limited),
        Fault::TooMany => plain("fault", 429, json!({"message": "Too Many Requests"})),
        Fault::BadGateway => plain("fault", 502, json!({"message": "Bad Gateway"})),
    }
}

fn git(bare: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=GitHub",
            "-c",
            "user.email=noreply@github.com",
        ])
        .arg("--git-dir")
        .arg(bare)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The head of `branch` in `repo`'s bare repository.
fn branch_sha(fake: &FakeState, repo: &str, branch: &str) -> Option<String> {
    let bare = fake.repos.get(repo)?;
    git(
        bare,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ],
    )
}

/// The pull request `n`, its head brought up to the branch (CI and the reviewer run on a new
/// head, as GitHub's would on a push).
fn find_pull(fake: &mut FakeState, repo: &str, n: &str) -> Option<Pull> {
    let number: u64 = n.parse().ok()?;
    let index = fake
        .pulls
        .iter()
        .position(|p| p.number == number && p.repo == repo)?;
    refresh(fake, index);
    Some(fake.pulls[index].clone())
}

/// Notices a new head of an open pull request: CI and the reviewer run on it.
fn refresh(fake: &mut FakeState, index: usize) {
    let pull = fake.pulls[index].clone();
    if pull.state != "open" {
        return;
    }
    let Some(sha) = branch_sha(fake, &pull.repo, &pull.head) else {
        return;
    };
    if pull.heads.last() == Some(&sha) {
        return;
    }
    let nth = pull.heads.len();
    fake.pulls[index].heads.push(sha.clone());
    for script in (fake.ci)(nth) {
        fake.next_id += 1;
        let id = fake.next_id;
        fake.checks.push(Check {
            id,
            repo: pull.repo.clone(),
            sha: sha.clone(),
            script,
            reads: 0,
        });
    }
    if let Some(review) = (fake.reviewer)(nth) {
        fake.next_id += 1;
        let review_id = fake.next_id;
        fake.reviews.push(Review {
            id: review_id,
            pull: pull.number,
            state: review.state,
            body: review.body,
            commit_id: sha.clone(),
        });
        for (path, line, body) in review.comments {
            fake.next_id += 1;
            let id = fake.next_id;
            fake.comments.push(Comment {
                id,
                pull: pull.number,
                review_id,
                commit_id: sha.clone(),
                path,
                line,
                body,
                in_reply_to: None,
                user: "reviewer".into(),
            });
        }
    }
}

fn list_pulls(fake: &mut FakeState, repo: &str, query: &HashMap<String, String>) -> Answer {
    let head = query.get("head").cloned().unwrap_or_default();
    let state = query.get("state").cloned().unwrap_or_else(|| "open".into());
    let indexes: Vec<usize> = (0..fake.pulls.len()).collect();
    for index in indexes {
        refresh(fake, index);
    }
    let pulls: Vec<Value> = fake
        .pulls
        .clone()
        .iter()
        .filter(|p| p.repo == repo)
        .filter(|p| state == "all" || p.state == state)
        .filter(|p| head.is_empty() || head.split_once(':').is_some_and(|(_, b)| b == p.head))
        .map(|p| pull_json(fake, p, false))
        .collect();
    plain("/repos/{owner}/{repo}/pulls", 200, json!(pulls))
}

fn create_pull(fake: &mut FakeState, repo: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/pulls";
    let Some(request) = request else {
        return plain(template, 422, json!({"message": "Validation Failed"}));
    };
    let head = request["head"].as_str().unwrap_or_default().to_owned();
    let head = head
        .split_once(':')
        .map_or(head.clone(), |(_, b)| b.to_owned());
    if fake
        .pulls
        .iter()
        .any(|p| p.repo == repo && p.head == head && p.state == "open")
    {
        return plain(
            template,
            422,
            json!({"message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "code": "custom",
                "message": format!("A pull request already exists for {head}.")}]}),
        );
    }
    if branch_sha(fake, repo, &head).is_none() {
        return plain(
            template,
            422,
            json!({"message": "Validation Failed: head does not exist"}),
        );
    }
    let number = fake.pulls.len() as u64 + 1;
    fake.pulls.push(Pull {
        number,
        repo: repo.to_owned(),
        head,
        base: request["base"].as_str().unwrap_or("main").to_owned(),
        title: request["title"].as_str().unwrap_or_default().to_owned(),
        body: request["body"].as_str().unwrap_or_default().to_owned(),
        draft: request["draft"].as_bool().unwrap_or(false),
        state: "open".into(),
        merged: false,
        merge_commit_sha: None,
        heads: Vec::new(),
    });
    refresh(fake, fake.pulls.len() - 1);
    if let Some(created) = &fake.created {
        let _ = created.send(number);
    }
    let pull = fake.pulls[fake.pulls.len() - 1].clone();
    fake.creating_writes.push(std::time::Instant::now());
    plain(template, 201, pull_json(fake, &pull, true))
}

fn merge(fake: &mut FakeState, repo: &str, n: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/pulls/{pull_number}/merge";
    let Some(pull) = find_pull(fake, repo, n) else {
        return plain(template, 404, json!({"message": "Not Found"}));
    };
    let bare = fake.repos[repo].clone();
    if fake.move_head_on_merge {
        fake.move_head_on_merge = false;
        let head = format!("refs/heads/{}", pull.head);
        let tree = git(&bare, &["rev-parse", &format!("{head}^{{tree}}")]).unwrap();
        let old = git(&bare, &["rev-parse", &head]).unwrap();
        let moved = git(
            &bare,
            &["commit-tree", &tree, "-p", &old, "-m", "A human's touch"],
        )
        .unwrap();
        git(&bare, &["update-ref", &head, &moved, &old]).unwrap();
    }
    let current = branch_sha(fake, repo, &pull.head).unwrap_or_default();
    let sha = request
        .as_ref()
        .and_then(|r| r["sha"].as_str())
        .unwrap_or_default();
    if pull.state != "open" {
        return plain(
            template,
            405,
            json!({"message": "Pull Request is not mergeable"}),
        );
    }
    if sha != current {
        return plain(
            template,
            409,
            json!({"message": "Head branch was modified. Review and try the merge again."}),
        );
    }
    let base_ref = format!("refs/heads/{}", pull.base);
    let base_sha = git(&bare, &["rev-parse", &base_ref]).unwrap();
    let Some(tree) = git(&bare, &["merge-tree", "--write-tree", &base_sha, &current]) else {
        return plain(template, 405, json!({"message": "Merge conflict"}));
    };
    let tree = tree.lines().next().unwrap_or_default().to_owned();
    let title = request
        .as_ref()
        .and_then(|r| r["commit_title"].as_str())
        .unwrap_or(&pull.title)
        .to_owned();
    let squashed = git(
        &bare,
        &["commit-tree", &tree, "-p", &base_sha, "-m", &title],
    )
    .unwrap();
    git(&bare, &["update-ref", &base_ref, &squashed, &base_sha]).unwrap();
    let index = fake
        .pulls
        .iter()
        .position(|p| p.number == pull.number)
        .unwrap();
    fake.pulls[index].state = "closed".into();
    fake.pulls[index].merged = true;
    fake.pulls[index].merge_commit_sha = Some(squashed.clone());
    // GitHub closes the issues a merged pull request's body `Fixes` — on the default branch only.
    if pull.base == fake.default_branch {
        for issue in fake.issues.iter_mut() {
            if pull.body.contains(&format!("Fixes #{}", issue.number)) {
                issue.state = "closed".into();
                issue.state_reason = Some("completed".into());
            }
        }
    }
    plain(
        template,
        200,
        json!({"sha": squashed, "merged": true, "message": "Pull Request successfully merged"}),
    )
}

fn reply(fake: &mut FakeState, n: &str, id: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/pulls/{pull_number}/comments/{comment_id}/replies";
    let (number, id): (u64, u64) = (n.parse().unwrap_or(0), id.parse().unwrap_or(0));
    let Some(parent) = fake
        .comments
        .iter()
        .find(|c| c.id == id && c.pull == number)
        .cloned()
    else {
        return plain(template, 404, json!({"message": "Not Found"}));
    };
    fake.next_id += 1;
    let comment = Comment {
        id: fake.next_id,
        in_reply_to: Some(id),
        body: request
            .as_ref()
            .and_then(|r| r["body"].as_str())
            .unwrap_or_default()
            .to_owned(),
        user: "glitchlab[bot]".into(),
        ..parent
    };
    fake.comments.push(comment.clone());
    plain(template, 201, comment_json(&comment))
}

fn check_runs(fake: &mut FakeState, repo: &str, sha: &str) -> Answer {
    let runs: Vec<Value> = fake
        .checks
        .iter_mut()
        .filter(|c| c.repo == repo && c.sha == sha && !c.script.as_status)
        .map(|check| {
            check.reads += 1;
            check_run_json(check)
        })
        .collect();
    plain(
        "/repos/{owner}/{repo}/commits/{ref}/check-runs",
        200,
        json!({"total_count": runs.len(), "check_runs": runs}),
    )
}

fn completed(check: &Check) -> Option<&str> {
    (check.reads > check.script.pending_reads)
        .then_some(check.script.conclusion.as_deref())
        .flatten()
}

fn check_run_json(check: &Check) -> Value {
    let conclusion = completed(check);
    let status = if conclusion.is_some() {
        "completed"
    } else {
        "queued"
    };
    json!({
        "id": check.id, "node_id": format!("CR_{}", check.id), "head_sha": check.sha,
        "name": check.script.name, "url": "https://api.github.com/x", "html_url": null,
        "details_url": null, "status": status, "conclusion": conclusion,
        "started_at": null, "completed_at": null, "external_id": null,
        "check_suite": {"id": 1}, "app": null, "pull_requests": [],
        "output": {"title": check.script.name, "summary": check.script.summary, "text": null,
            "annotations_count": check.script.annotations.len(),
            "annotations_url": "https://api.github.com/x"},
    })
}

fn statuses(fake: &mut FakeState, repo: &str, sha: &str) -> Answer {
    let list: Vec<Value> = fake
        .checks
        .iter_mut()
        .filter(|c| c.repo == repo && c.sha == sha && c.script.as_status)
        .map(|check| {
            check.reads += 1;
            let state = match completed(check) {
                None => "pending",
                Some("success") => "success",
                Some(_) => "failure",
            };
            json!({"description": check.script.summary, "id": check.id, "node_id": "S",
                "state": state, "context": check.script.name, "target_url": null,
                "avatar_url": null, "url": "https://api.github.com/x",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
        })
        .collect();
    let combined = if list.iter().all(|s| s["state"] == "success") {
        "success"
    } else {
        "pending"
    };
    plain(
        "/repos/{owner}/{repo}/commits/{ref}/status",
        200,
        json!({
            "state": combined, "sha": sha, "total_count": list.len(), "statuses": list,
            "repository": {"id": 1}, "commit_url": "https://api.github.com/x", "url": "https://api.github.com/x",
        }),
    )
}

fn annotations(fake: &mut FakeState, id: &str) -> Answer {
    let id: u64 = id.parse().unwrap_or(0);
    let list: Vec<Value> = fake
        .checks
        .iter()
        .filter(|c| c.id == id)
        .flat_map(|c| c.script.annotations.clone())
        .map(|(path, line, message)| {
            json!({"path": path, "blob_href": "https://github.com/x",
            "start_line": line, "end_line": line, "start_column": null, "end_column": null,
            "annotation_level": "failure", "title": null, "message": message, "raw_details": null})
        })
        .collect();
    plain(
        "/repos/{owner}/{repo}/check-runs/{check_run_id}/annotations",
        200,
        json!(list),
    )
}

fn user(login: &str) -> Value {
    json!({"login": login, "id": 1, "node_id": "U", "avatar_url": "https://github.com/a",
        "gravatar_id": null, "url": "https://api.github.com/u", "html_url": "https://github.com/u",
        "followers_url": "u", "following_url": "u", "gists_url": "u", "starred_url": "u",
        "subscriptions_url": "u", "organizations_url": "u", "repos_url": "u", "events_url": "u",
        "received_events_url": "u", "type": "User", "site_admin": false})
}

fn pull_json(fake: &FakeState, pull: &Pull, full: bool) -> Value {
    let sha = pull
        .heads
        .last()
        .cloned()
        .or_else(|| branch_sha(fake, &pull.repo, &pull.head))
        .unwrap_or_default();
    let url = format!("https://github.com/{}/pull/{}", pull.repo, pull.number);
    let mut value = json!({
        "url": url, "id": pull.number, "node_id": "PR", "html_url": url, "diff_url": url,
        "patch_url": url, "issue_url": url, "commits_url": url, "review_comments_url": url,
        "review_comment_url": url, "comments_url": url, "statuses_url": url,
        "number": pull.number, "state": pull.state, "locked": false, "title": pull.title,
        "user": user("glitchlab[bot]"), "body": pull.body, "labels": [], "milestone": null,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "closed_at": null, "merged_at": null, "merge_commit_sha": pull.merge_commit_sha,
        "assignee": null, "draft": pull.draft, "author_association": "NONE", "auto_merge": null,
        "head": {"label": format!("{}:{}", pull.repo.split('/').next().unwrap_or_default(), pull.head),
            "ref": pull.head, "sha": sha, "user": user("owner")},
        "base": {"label": pull.base, "ref": pull.base, "sha": "0", "user": user("owner")},
        "_links": {},
    });
    if full {
        let extra = json!({"merged": pull.merged, "mergeable": true, "mergeable_state": "clean",
            "merged_by": null, "comments": 0, "review_comments": 0, "maintainer_can_modify": false,
            "commits": 1, "additions": 1, "deletions": 0, "changed_files": 1});
        if let (Some(map), Value::Object(extra)) = (value.as_object_mut(), extra) {
            map.extend(extra);
        }
    }
    value
}

fn review_json(review: &Review) -> Value {
    json!({"id": review.id, "node_id": "R", "user": user("reviewer"), "body": review.body,
        "state": review.state, "commit_id": review.commit_id,
        "html_url": "https://github.com/r", "pull_request_url": "https://api.github.com/p",
        "_links": {"html": {"href": "h"}, "pull_request": {"href": "p"}},
        "author_association": "MEMBER"})
}

fn comment_json(comment: &Comment) -> Value {
    let mut value = json!({"url": "https://api.github.com/c", "id": comment.id, "node_id": "C",
        "pull_request_review_id": comment.review_id, "diff_hunk": "@@", "path": comment.path,
        "commit_id": comment.commit_id, "original_commit_id": comment.commit_id,
        "user": user(&comment.user), "body": comment.body, "line": comment.line,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "html_url": "https://github.com/c", "pull_request_url": "https://api.github.com/p",
        "author_association": "MEMBER",
        "_links": {"self": {"href": "s"}, "html": {"href": "h"}, "pull_request": {"href": "p"}}});
    if let Some(parent) = comment.in_reply_to {
        value["in_reply_to_id"] = json!(parent);
    }
    value
}

/// The largest request body the fake's git endpoint takes (a pack of a test's few commits).
const GIT_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long one `git http-backend` may run.
const GIT_BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// One request to the fake's git endpoint: `(method, service path, status)`.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Whether it carried an `Authorization` header.
    pub authorized: bool,
}

/// The repository a `/owner/name.git/...` path names, with the rest of the path.
fn git_repo_of(fake: &FakeState, segments: &[String]) -> Option<(PathBuf, String)> {
    let [owner, name, rest @ ..] = segments else {
        return None;
    };
    let name = name.strip_suffix(".git")?;
    let bare = fake.repos.get(&format!("{owner}/{name}"))?.clone();
    Some((bare, rest.join("/")))
}

impl FakeState {
    /// Whether a git request may go on: pushes always need the token; fetches too unless the
    /// repository is public (`git_public`). The token rides in Basic auth as GitHub's
    /// `x-access-token:<token>`: `git_token` when set, else the API's token (or a live App
    /// token); any other credential is refused.
    fn git_allowed(&self, headers: &HeaderMap, push: bool) -> bool {
        let basic = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok());
        if self.git_public && !push {
            // A public repository: anyone may fetch (the fake does not judge a credential here).
            return true;
        }
        let Some(pair) = basic else {
            return false;
        };
        let Some(token) = pair.strip_prefix("x-access-token:") else {
            return false;
        };
        match (&self.git_token, &self.app) {
            (Some(expected), _) => token == expected,
            (None, None) => token == self.token,
            (None, Some(app)) => app
                .minted
                .iter()
                .any(|(t, expires)| t == token && *expires > std::time::Instant::now()),
        }
    }
}

/// Git's smart HTTP for the fake's bare repositories: `git http-backend` as CGI, behind the same
/// credential check GitHub makes (401 with `WWW-Authenticate: Basic` without it).
async fn git_http(
    state: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    (bare, rest): (PathBuf, String),
) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    let push = rest.ends_with("git-receive-pack") || query.contains("git-receive-pack");
    let allowed = state.lock().unwrap().git_allowed(&headers, push);
    let answer = if !allowed {
        let mut reply = (StatusCode::UNAUTHORIZED, "Authentication required").into_response();
        reply.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Basic realm=\"GitHub\""),
        );
        reply
    } else if body.len() > GIT_BODY_BYTES_MAX {
        StatusCode::PAYLOAD_TOO_LARGE.into_response()
    } else {
        run_http_backend(&method, &headers, &body, &bare, &rest, &query).await
    };
    state.lock().unwrap().git_requests.push(GitRequest {
        method: method.as_str().to_owned(),
        path: format!("/{rest}?{query}"),
        status: answer.status().as_u16(),
        authorized: headers.contains_key("authorization"),
    });
    answer
}

/// Runs `git http-backend` for one request and turns its CGI answer into a response.
async fn run_http_backend(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    bare: &Path,
    rest: &str,
    query: &str,
) -> Response {
    use tokio::io::AsyncWriteExt as _;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let name = bare.file_name().unwrap().to_str().unwrap();
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", bare.parent().unwrap())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{name}/{rest}"))
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = tokio::time::timeout(GIT_BACKEND_TIMEOUT, child.wait_with_output())
        .await
        .expect("git http-backend finished in time")
        .unwrap();
    let _ = writer.await;
    cgi_response(&output.stdout)
}

/// A CGI answer (headers, a blank line, the body) as an HTTP response.
fn cgi_response(stdout: &[u8]) -> Response {
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4))
        .or_else(|| {
            stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, at + 2))
        });
    let Some((end, start)) = split else {
        return (StatusCode::BAD_GATEWAY, "no CGI headers").into_response();
    };
    let head = String::from_utf8_lossy(&stdout[..end]).into_owned();
    let mut reply = Bytes::copy_from_slice(&stdout[start..]).into_response();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .unwrap_or("200")
                .parse()
                .unwrap_or(200);
            *reply.status_mut() = StatusCode::from_u16(code).unwrap();
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            reply.headers_mut().insert(name, value);
        }
    }
    reply
}

fn user_json(login: &str) -> Value {
    json!({"login": login, "id": 1, "node_id": "U_1", "avatar_url": "https://github.com/a.png",
        "gravatar_id": null, "url": "https://api.github.com/users/x", "html_url": "https://github.com/x",
        "type": "User", "site_admin": false})
}

fn issue_json(repo: &str, issue: &FakeIssue) -> Value {
    json!({
        "id": issue.number, "node_id": "I_1", "number": issue.number, "title": issue.title,
        "body": issue.body, "state": issue.state, "state_reason": issue.state_reason,
        "locked": issue.locked,
        "url": format!("https://api.github.com/repos/{repo}/issues/{}", issue.number),
        "html_url": format!("https://github.com/{repo}/issues/{}", issue.number),
        "labels": issue.labels.iter().map(|l| json!({"id": 1, "name": l})).collect::<Vec<_>>(),
        "comments": 0,
    })
}

fn issue_comment_json(repo: &str, comment: &FakeIssueComment) -> Value {
    json!({
        "id": comment.id, "node_id": "IC_1", "body": comment.body,
        "url": format!("https://api.github.com/repos/{repo}/issues/comments/{}", comment.id),
        "html_url": format!("https://github.com/{repo}/issues/{}#issuecomment-{}", comment.issue, comment.id),
        "user": user_json(&comment.user),
    })
}

fn list_issues(
    fake: &mut FakeState,
    repo: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Answer {
    let template = "/repos/{owner}/{repo}/issues";
    let label = query.get("labels").cloned().unwrap_or_default();
    let state = query.get("state").cloned().unwrap_or_else(|| "open".into());
    let issues: Vec<Value> = fake
        .issues
        .iter()
        .filter(|i| state == "all" || i.state == state)
        .filter(|i| label.is_empty() || i.labels.contains(&label))
        .map(|i| issue_json(repo, i))
        .collect();
    let body = json!(issues);
    let etag = format!("\"{:x}\"", md5_like(&body.to_string()));
    let matches = headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    if matches {
        return (template.into(), 304, Value::Null, vec![("etag", etag)]);
    }
    (template.into(), 200, body, vec![("etag", etag)])
}

/// A stable digest for ETags (not cryptographic).
fn md5_like(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

fn add_issue_comment(fake: &mut FakeState, repo: &str, n: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/issues/{issue_number}/comments";
    let number: u64 = n.parse().unwrap_or(0);
    if !fake.issues.iter().any(|i| i.number == number) {
        return plain(template, 404, json!({"message": "Not Found"}));
    }
    fake.next_id += 1;
    let comment = FakeIssueComment {
        id: fake.next_id,
        issue: number,
        body: request
            .as_ref()
            .and_then(|r| r["body"].as_str())
            .unwrap_or_default()
            .into(),
        user: "glitchlab[bot]".into(),
        edits: 0,
    };
    fake.creating_writes.push(std::time::Instant::now());
    let answer = issue_comment_json(repo, &comment);
    fake.issue_comments.push(comment);
    plain(template, 201, answer)
}

fn edit_issue_comment(fake: &mut FakeState, id: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/issues/comments/{comment_id}";
    let id: u64 = id.parse().unwrap_or(0);
    let Some(comment) = fake.issue_comments.iter_mut().find(|c| c.id == id) else {
        return plain(template, 404, json!({"message": "Not Found"}));
    };
    comment.body = request
        .as_ref()
        .and_then(|r| r["body"].as_str())
        .unwrap_or_default()
        .into();
    comment.edits += 1;
    let comment = comment.clone();
    plain(template, 200, issue_comment_json("acme/widgets", &comment))
}

fn edit_issue(fake: &mut FakeState, repo: &str, n: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/issues/{issue_number}";
    let number: u64 = n.parse().unwrap_or(0);
    let Some(issue) = fake.issues.iter_mut().find(|i| i.number == number) else {
        return plain(template, 404, json!({"message": "Not Found"}));
    };
    if let Some(state) = request.as_ref().and_then(|r| r["state"].as_str()) {
        issue.state = state.into();
    }
    if let Some(reason) = request.as_ref().and_then(|r| r["state_reason"].as_str()) {
        issue.state_reason = Some(reason.into());
    }
    let issue = issue.clone();
    plain(template, 200, issue_json(repo, &issue))
}

fn react(fake: &mut FakeState, n: &str, request: &Option<Value>) -> Answer {
    let template = "/repos/{owner}/{repo}/issues/{issue_number}/reactions";
    let number: u64 = n.parse().unwrap_or(0);
    let content = request
        .as_ref()
        .and_then(|r| r["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let answer = json!({"id": number, "node_id": "R_1", "user": user_json("glitchlab[bot]"),
        "content": content, "created_at": "2024-01-01T00:00:00Z"});
    if fake.reactions.contains(&(number, content.clone())) {
        return plain(template, 200, answer);
    }
    fake.creating_writes.push(std::time::Instant::now());
    fake.reactions.push((number, content));
    plain(template, 201, answer)
}
