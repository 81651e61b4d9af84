//! The issue calls of the GitHub client (issue intake, `work::issue_intake`): labelled issues
//! (polled with `If-None-Match`), an issue's comments, a comment written or edited, a
//! reaction, the issue closed, a user's permission, the repository's default branch. Writes go
//! through the host's spaced writer like every other write ([`Client::call`]).

use serde::Deserialize;
use serde_json::json;

use super::{decode, expect, Client, GithubError, PER_PAGE};

/// An issue (`issue`); the list endpoint also answers pull requests, which carry `pull_request`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Issue {
    /// Its number in the repository.
    pub number: u64,
    /// One line.
    pub title: String,
    /// Markdown, when it has any.
    #[serde(default)]
    pub body: Option<String>,
    /// `open` or `closed`.
    pub state: String,
    /// Whether conversation on it is locked.
    #[serde(default)]
    pub locked: bool,
    /// Its page.
    pub html_url: String,
    /// Its labels.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Present on a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

/// A label, by name.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Label {
    /// The name.
    pub name: String,
}

/// An issue comment (`issue-comment`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct IssueComment {
    /// Its id (edits name it).
    pub id: u64,
    /// What it says.
    #[serde(default)]
    pub body: Option<String>,
    /// Who wrote it.
    #[serde(default)]
    pub user: Option<super::types::User>,
}

impl Client {
    /// The open issues of `repo` carrying `label` (the first page, oldest first; unchanged: a
    /// `304` that costs no quota).
    pub(crate) async fn labelled_issues(
        &self,
        repo: &str,
        label: &str,
    ) -> Result<Vec<Issue>, GithubError> {
        let label = encode(label);
        let path = format!(
            "/repos/{repo}/issues?labels={label}&state=open&sort=created&direction=asc&per_page={PER_PAGE}"
        );
        self.get("list the labelled issues", &path).await
    }

    /// The issue's comments (the first page).
    pub(crate) async fn issue_comments(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<IssueComment>, GithubError> {
        let path = format!("/repos/{repo}/issues/{number}/comments?per_page={PER_PAGE}");
        self.get("read the issue's comments", &path).await
    }

    /// Writes a new comment on the issue.
    pub(crate) async fn create_issue_comment(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<IssueComment, GithubError> {
        let path = format!("/repos/{repo}/issues/{number}/comments");
        let reply = self
            .call(reqwest::Method::POST, &path, Some(&json!({"body": body})))
            .await?;
        expect("comment on the issue", &reply, &[201])?;
        decode(reply.body)
    }

    /// Edits a comment in place.
    pub(crate) async fn update_issue_comment(
        &self,
        repo: &str,
        comment_id: u64,
        body: &str,
    ) -> Result<(), GithubError> {
        let path = format!("/repos/{repo}/issues/comments/{comment_id}");
        let reply = self
            .call(reqwest::Method::PATCH, &path, Some(&json!({"body": body})))
            .await?;
        expect("edit the issue comment", &reply, &[200])
    }

    /// Reacts to the issue (`200`: the reaction was there already).
    pub(crate) async fn react_to_issue(
        &self,
        repo: &str,
        number: u64,
        content: &str,
    ) -> Result<(), GithubError> {
        let path = format!("/repos/{repo}/issues/{number}/reactions");
        let body = json!({"content": content});
        let reply = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        expect("react to the issue", &reply, &[200, 201])
    }

    /// Closes the issue as completed.
    pub(crate) async fn close_issue(&self, repo: &str, number: u64) -> Result<(), GithubError> {
        let path = format!("/repos/{repo}/issues/{number}");
        let body = json!({"state": "closed", "state_reason": "completed"});
        let reply = self
            .call(reqwest::Method::PATCH, &path, Some(&body))
            .await?;
        expect("close the issue", &reply, &[200])
    }

    /// `user`'s permission on `repo`: `admin`, `maintain`, `write`, `triage`, `read` or `none`
    /// (not a collaborator: `none`).
    pub(crate) async fn permission(&self, repo: &str, user: &str) -> Result<String, GithubError> {
        let path = format!("/repos/{repo}/collaborators/{}/permission", encode(user));
        let reply = self.call(reqwest::Method::GET, &path, None).await?;
        if reply.status == 404 {
            return Ok("none".into());
        }
        expect("read the user's permission", &reply, &[200])?;
        Ok(reply.body["permission"]
            .as_str()
            .unwrap_or("none")
            .to_owned())
    }

    /// The repository's default branch.
    pub(crate) async fn default_branch(&self, repo: &str) -> Result<String, GithubError> {
        let reply = self
            .call(reqwest::Method::GET, &format!("/repos/{repo}"), None)
            .await?;
        expect("read the repository", &reply, &[200])?;
        reply.body["default_branch"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GithubError::Decode("no default_branch".into()))
    }
}

/// `text` as one query or path segment (labels hold spaces and colons).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
