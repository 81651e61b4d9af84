//! GitHub issue intake (`[[github.intake]]`, docs/github.md "Issues"): a labelled issue becomes a
//! task delivered as a pull request on its repository, and the task's story is told back on the
//! issue in **one** comment edited in place.
//!
//! One loop per configured repository ([`start`]) does everything for it, so nothing races:
//! - **Intake.** Candidates come from the `issues` webhook (`labeled`, [`webhook`]) and from
//!   polling the labelled open issues (ETag'd: an unchanged list costs no quota). Both go through
//!   [`RepoIntake::consider`]: the idempotency key `owner/name#number@<hash of title and body>`
//!   is stored with the task in one write (the ingress's own mechanism), so a redelivery, a
//!   re-label or a poll never makes a second task for the same issue version, even across a
//!   `kill -9`. Closed, locked, pull-request and already-linked issues are skipped with a reason
//!   (logged); beyond `max_open_tasks` open tasks the rest wait, oldest issue first.
//! - **Write-back.** Each linked task's comment is rendered from the task ([`render`]) and
//!   written only when what it says changed: found again by its hidden marker after a restart,
//!   edited in place, never a second one. 👀 when the task starts; after the merge, an issue the
//!   PR's `Fixes #n` cannot close (its base is not the default branch) is closed explicitly.
//! - **Commands.** `/glitchlab retry` and `/glitchlab cancel` comments (`issue_comment`) from a
//!   user with write permission act on the issue's latest task; anyone else is told once, in the
//!   status comment, that the command was ignored.
//!
//! Every write goes through the client's spaced writer and rate-limit ladder.

mod render;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::github::IntakeRepo;
use crate::model::pull_request::PrState;
use crate::model::task::{
    Delivery, Priority, Task, TaskId, TaskSource, TaskStatus, SOURCE_GITHUB_ISSUE,
};
use crate::platform::github::issues::Issue;
use crate::platform::github::{self, Client};
use crate::runtime::compass::{CompassMsg, TaskAction};
use crate::runtime::Services;
use crate::work::intake::{
    self, printable, IntakeError, PullRequestRequest, SubmitTaskRequest, Text,
};

/// How often linked tasks are looked at for a change worth a comment edit.
const REPORT_TICK: Duration = Duration::from_millis(500);
/// Linked tasks loaded at start (the newest first).
const LINKED_LOAD_MAX: usize = 10_000;
/// Candidates and commands an inbox holds at most (more: dropped; polling finds the issues).
const INBOX_MAX: usize = 1000;
/// Notes (ignored commands) a comment carries at most.
const NOTES_MAX: usize = 5;
/// Bytes of an issue's title and body a task takes.
const TITLE_BYTES_MAX: usize = 200;
const BODY_BYTES_MAX: usize = 60 * 1024;
/// Bytes of the issue's comments a task takes (the first page, glitchlab's own left out).
const COMMENTS_BYTES_MAX: usize = 16 * 1024;
/// How long Compass may take to be found and to answer a command.
const COMPASS_WAIT: Duration = Duration::from_secs(10);
/// The permissions that may command glitchlab on an issue.
const WRITERS: [&str; 3] = ["admin", "maintain", "write"];

/// A `/glitchlab` command from an issue comment.
#[derive(Debug, Clone)]
struct Command {
    number: u64,
    user: String,
    verb: Verb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Retry,
    Cancel,
}

/// What webhooks left for a repository's loop.
#[derive(Default)]
struct Inbox {
    issues: Vec<Issue>,
    commands: VecDeque<Command>,
    wake: Arc<tokio::sync::Notify>,
}

type Inboxes = Mutex<HashMap<String, Inbox>>;
static INBOXES: LazyLock<Inboxes> = LazyLock::new(Inboxes::default);

/// The inbox key: the API root and the repository (two services in one process never share one).
fn inbox_key(api_url: &str, repo: &str) -> String {
    format!("{}|{}", api_url.trim_end_matches('/'), repo).to_ascii_lowercase()
}

fn with_inbox<T>(key: &str, f: impl FnOnce(&mut Inbox) -> T) -> T {
    let mut inboxes = INBOXES.lock().unwrap_or_else(PoisonError::into_inner);
    f(inboxes.entry(key.to_owned()).or_default())
}

/// Hands an `issues` or `issue_comment` webhook to its repository's loop; answers what it did
/// (`None`: not an intake event of a configured repository).
pub(crate) fn webhook(services: &Services, event: &str, payload: &Value) -> Option<&'static str> {
    let config = &services.config.github;
    let repo = payload["repository"]["full_name"].as_str()?;
    let entry = config
        .intake
        .iter()
        .find(|e| e.repo.eq_ignore_ascii_case(repo))?;
    let key = inbox_key(&config.api_url, &entry.repo);
    let action = payload["action"].as_str().unwrap_or_default();
    match (event, action) {
        ("issues", "labeled" | "opened" | "reopened" | "edited") => {
            let issue: Issue = serde_json::from_value(payload["issue"].clone()).ok()?;
            with_inbox(&key, |inbox| {
                if inbox.issues.len() < INBOX_MAX {
                    inbox.issues.push(issue);
                }
                inbox.wake.notify_one();
            });
            Some("issue")
        }
        ("issue_comment", "created") => {
            let command = parse_command(payload)?;
            with_inbox(&key, |inbox| {
                if inbox.commands.len() < INBOX_MAX {
                    inbox.commands.push_back(command);
                }
                inbox.wake.notify_one();
            });
            Some("command")
        }
        _ => None,
    }
}

fn parse_command(payload: &Value) -> Option<Command> {
    let body = payload["comment"]["body"].as_str()?.trim();
    let verb = match body.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["/glitchlab", "retry"] => Verb::Retry,
        ["/glitchlab", "cancel"] => Verb::Cancel,
        _ => return None,
    };
    Some(Command {
        number: payload["issue"]["number"].as_u64()?,
        user: payload["comment"]["user"]["login"].as_str()?.to_owned(),
        verb,
    })
}

/// Starts one loop per `[[github.intake]]` entry; they end when `stop` is cancelled.
pub(crate) fn start(
    services: &Services,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    services
        .config
        .github
        .intake
        .iter()
        .map(|entry| {
            let services = services.clone();
            let entry = entry.clone();
            let stop = stop.clone();
            tokio::spawn(async move { run_repo(services, entry, stop).await })
        })
        .collect()
}

async fn run_repo(services: Services, entry: IntakeRepo, stop: CancellationToken) {
    let client = match github::shared(&services.config.github) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(repo = %entry.repo, %error, "issue intake cannot start");
            return;
        }
    };
    let key = inbox_key(&services.config.github.api_url, &entry.repo);
    let wake = with_inbox(&key, |inbox| inbox.wake.clone());
    let mut intake = RepoIntake::new(services, entry, client, key);
    if let Err(error) = intake.load().await {
        tracing::error!(repo = %intake.entry.repo, %error, "issue intake could not load its tasks");
    }
    let poll = Duration::from_secs(intake.entry.poll_secs);
    let mut next_poll = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        let sweep = tokio::time::Instant::now() >= next_poll;
        if sweep {
            intake.poll().await;
            next_poll = tokio::time::Instant::now() + poll;
        }
        intake.take_inbox();
        intake.admit().await;
        intake.commands().await;
        intake.report(sweep).await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(REPORT_TICK) => {}
            () = wake.notified() => {}
        }
    }
}

/// What glitchlab knows of one linked task's issue.
#[derive(Debug, Default)]
struct Linked {
    number: u64,
    /// The task has not ended (as last seen).
    open: bool,
    /// The comment's id once found or written.
    comment: Option<u64>,
    /// The signature of what the comment says now.
    shown: Option<String>,
    reacted: bool,
    /// The issue was closed (or needs no closing) after the merge.
    closed: bool,
    /// Ignored commands, told once each.
    notes: Vec<String>,
    /// The task ended and its issue says so: it is read again only on the poll's cadence (a
    /// retry from elsewhere), not every tick — a repository's thousands of finished tasks
    /// would otherwise be read twice a second for ever.
    quiet: bool,
}

/// Why an issue did not become a task now.
#[derive(Debug)]
enum Considered {
    Linked(TaskId),
    Wait,
    Skipped(String),
}

struct RepoIntake {
    services: Services,
    entry: IntakeRepo,
    client: Arc<Client>,
    inbox: String,
    /// Linked tasks by id.
    linked: BTreeMap<TaskId, Linked>,
    /// Idempotency keys of the linked tasks (an issue version seen before).
    keys: HashSet<String>,
    /// Candidates waiting for their turn, by issue number.
    waiting: BTreeMap<u64, Issue>,
}

impl RepoIntake {
    fn new(services: Services, entry: IntakeRepo, client: Arc<Client>, inbox: String) -> Self {
        Self {
            services,
            entry,
            client,
            inbox,
            linked: BTreeMap::new(),
            keys: HashSet::new(),
            waiting: BTreeMap::new(),
        }
    }

    /// The repository's tasks from the store (after a restart: their comments are found again).
    async fn load(&mut self) -> Result<(), crate::storage::store::StoreError> {
        let repo = self.entry.repo.to_ascii_lowercase();
        let keep = move |task: &Task| {
            task.spec.source.as_ref().is_some_and(|s| {
                s.kind == SOURCE_GITHUB_ISSUE && s.repo.to_ascii_lowercase() == repo
            })
        };
        let (tasks, _) = self
            .services
            .store
            .tasks_page(LINKED_LOAD_MAX, None, keep)
            .await?;
        for task in tasks {
            self.link(&task);
        }
        Ok(())
    }

    fn link(&mut self, task: &Task) {
        let Some(source) = &task.spec.source else {
            return;
        };
        if let Some(key) = &task.spec.idempotency_key {
            self.keys.insert(key.clone());
        }
        self.linked.entry(task.id).or_insert_with(|| Linked {
            number: source.number,
            open: !task.progress.status.is_terminal(),
            ..Linked::default()
        });
    }

    /// The labelled open issues, as candidates.
    async fn poll(&mut self) {
        match self
            .client
            .labelled_issues(&self.entry.repo, &self.entry.label)
            .await
        {
            Ok(issues) => {
                for issue in issues {
                    self.offer(issue);
                }
            }
            Err(error) => tracing::warn!(repo = %self.entry.repo, %error, "issue poll failed"),
        }
    }

    fn take_inbox(&mut self) {
        let issues = with_inbox(&self.inbox, |inbox| std::mem::take(&mut inbox.issues));
        for issue in issues {
            self.offer(issue);
        }
    }

    /// A candidate: waits for [`Self::admit`] unless this version has its task already.
    fn offer(&mut self, issue: Issue) {
        if self.keys.contains(&self.key_of(&issue)) || self.waiting.len() >= INBOX_MAX {
            return;
        }
        self.waiting.insert(issue.number, issue);
    }

    /// Admits waiting issues in order while the repository has room.
    async fn admit(&mut self) {
        let numbers: Vec<u64> = self.waiting.keys().copied().collect();
        for number in numbers {
            let Some(issue) = self.waiting.get(&number).cloned() else {
                continue;
            };
            match self.consider(&issue).await {
                Considered::Wait => return,
                Considered::Linked(task) => {
                    tracing::info!(repo = %self.entry.repo, number, %task, "issue linked to its task");
                    self.waiting.remove(&number);
                }
                Considered::Skipped(reason) => {
                    tracing::info!(repo = %self.entry.repo, number, %reason, "issue skipped");
                    self.waiting.remove(&number);
                }
            }
        }
    }

    /// The one way an issue becomes a task: at most one per issue version.
    async fn consider(&mut self, issue: &Issue) -> Considered {
        let labelled = issue
            .labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(&self.entry.label));
        let key = self.key_of(issue);
        let running = self
            .linked
            .iter()
            .find(|(_, l)| l.number == issue.number && l.open)
            .map(|(id, _)| *id);
        let skip = if issue.pull_request.is_some() {
            Some("a pull request, not an issue".to_owned())
        } else if !labelled {
            Some(format!("not labelled `{}`", self.entry.label))
        } else if issue.state != "open" {
            Some("closed".to_owned())
        } else if issue.locked {
            Some("locked".to_owned())
        } else if self.keys.contains(&key) {
            Some("this version of the issue has its task already".to_owned())
        } else {
            running.map(|task| format!("already linked to task {task}, which has not ended"))
        };
        if let Some(reason) = skip {
            return Considered::Skipped(reason);
        }
        let open = self.linked.values().filter(|l| l.open).count();
        if open >= self.entry.max_open_tasks {
            return Considered::Wait;
        }
        self.submit(issue, key).await
    }

    async fn submit(&mut self, issue: &Issue, key: String) -> Considered {
        let compass: ActorRef<CompassMsg> =
            match crate::runtime::current_persona(&self.services.directory, COMPASS_WAIT).await {
                Ok(compass) => compass,
                Err(_) => return Considered::Wait,
            };
        let source = TaskSource {
            kind: SOURCE_GITHUB_ISSUE.into(),
            repo: self.entry.repo.clone(),
            number: issue.number,
            url: issue.html_url.clone(),
        };
        let comments = match self.comments_text(issue.number).await {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(repo = %self.entry.repo, number = issue.number, %error,
                    "could not read the issue's comments; the issue waits");
                return Considered::Wait;
            }
        };
        let request = self.request(issue, key, &comments);
        let submitted =
            intake::submit_from(&self.services, &compass, request, None, None, Some(source)).await;
        match submitted {
            Ok(accepted) => {
                // Test hook: a crash here leaves the task without its comment (found after the
                // restart, which writes it once).
                crate::work_failpoint!("issue_intake.created");
                self.link(&accepted.task);
                Considered::Linked(accepted.task.id)
            }
            Err(IntakeError::QueueFull(_) | IntakeError::NotReady) => Considered::Wait,
            Err(error) => Considered::Skipped(format!("refused: {}: {error}", error.code())),
        }
    }

    /// `owner/name#number@<hash of title and body>`.
    fn key_of(&self, issue: &Issue) -> String {
        let mut hash = Sha256::new();
        hash.update(issue.title.as_bytes());
        hash.update([0]);
        hash.update(issue.body.as_deref().unwrap_or_default().as_bytes());
        let digest = hex::encode(hash.finalize());
        format!("{}#{}@{}", self.entry.repo, issue.number, &digest[..16])
    }

    /// The issue's comments as text for the task (bounded): people's, not glitchlab's own
    /// status comments or `/glitchlab` commands.
    async fn comments_text(&self, number: u64) -> Result<String, github::GithubError> {
        let comments = self.client.issue_comments(&self.entry.repo, number).await?;
        let mut text = String::new();
        for comment in comments {
            let body = comment.body.unwrap_or_default();
            if body.contains("<!-- glitchlab:") || body.trim_start().starts_with("/glitchlab") {
                continue;
            }
            let who = comment.user.map(|u| u.login).unwrap_or_default();
            text.push_str(&format!("\n\n---\nComment by @{who}:\n{body}"));
            if text.len() >= COMMENTS_BYTES_MAX {
                break;
            }
        }
        Ok(truncate(&text, COMMENTS_BYTES_MAX))
    }

    /// The submission an issue makes.
    fn request(&self, issue: &Issue, key: String, comments: &str) -> SubmitTaskRequest {
        let entry = &self.entry;
        let title = truncate(&printable(&issue.title, Text::Line), TITLE_BYTES_MAX);
        let body = issue.body.as_deref().unwrap_or_default();
        let description = truncate(
            &printable(
                &format!(
                    "GitHub issue {}#{} ({})\n\n{}{}",
                    entry.repo, issue.number, issue.html_url, body, comments
                ),
                Text::Lines,
            ),
            BODY_BYTES_MAX,
        );
        SubmitTaskRequest {
            title: if title.trim().is_empty() {
                format!("Issue #{}", issue.number)
            } else {
                title
            },
            description,
            repo: entry.git_url.clone(),
            verify: entry.verify.clone(),
            kind: entry.kind.clone(),
            priority: Some(priority_of(issue)),
            engines: entry.engines.clone(),
            idempotency_key: Some(key),
            delivery: Some(Delivery::PullRequest),
            pull_request: Some(PullRequestRequest {
                repo: Some(entry.repo.clone()),
                ..PullRequestRequest::default()
            }),
            account: entry.account.clone(),
            ..SubmitTaskRequest::default()
        }
    }
}

/// `priority:<level>` labels (the highest wins); none: medium.
fn priority_of(issue: &Issue) -> Priority {
    issue
        .labels
        .iter()
        .filter_map(|l| {
            l.name
                .to_ascii_lowercase()
                .strip_prefix("priority:")
                .map(str::to_owned)
        })
        .filter_map(|level| serde_json::from_value(Value::String(level.trim().to_owned())).ok())
        .min()
        .unwrap_or_default()
}

fn truncate(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

mod report;
