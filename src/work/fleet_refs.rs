//! A fleet job's ref (`refs/glitchlab/jobs/<job id>`, in the task's repository and, for a
//! remote, on the remote) never outlives its job: [`JobRef`] deletes it however the job ends (a
//! cancel drops the wait), and [`clean_after_restart`] deletes the refs a killed service left —
//! every job ref older than this process (job ids are UUID v7: they carry their creation time),
//! so a job started since is never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::platform::git::Git;
use crate::runtime::Services;

/// Where job refs live.
const JOB_REFS: &str = "refs/glitchlab/jobs/";
/// Repositories looked at after a restart at most.
const REPOS_MAX: usize = 1024;
/// Stale refs deleted per repository per start at most (the rest go at the next start).
const REFS_MAX: usize = 4096;

/// One job's ref, here and (`remote`) on the task's remote; deleted when dropped.
pub(crate) struct JobRef {
    git: Git,
    reference: String,
    remote: bool,
}

impl JobRef {
    /// Guards `reference` in `git` (pushed to `origin` too when `remote`).
    pub(crate) fn new(git: Git, reference: String, remote: bool) -> Self {
        Self {
            git,
            reference,
            remote,
        }
    }

    /// Deletes the ref now (the usual end: done before the task moves on).
    pub(crate) async fn release(mut self) {
        let reference = std::mem::take(&mut self.reference);
        delete(&self.git, &reference, self.remote).await;
    }
}

impl Drop for JobRef {
    fn drop(&mut self) {
        if self.reference.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let git = self.git.clone();
        let reference = std::mem::take(&mut self.reference);
        let remote = self.remote;
        runtime.spawn(async move { delete(&git, &reference, remote).await });
    }
}

async fn delete(git: &Git, reference: &str, remote: bool) {
    if let Err(error) = git.run(&["update-ref", "-d", reference]).await {
        tracing::warn!(%error, %reference, "could not delete a fleet job's ref");
    }
    if remote {
        if let Err(error) = git
            .run(&["push", "--quiet", "origin", "--delete", reference])
            .await
        {
            tracing::warn!(%error, %reference, "could not delete a fleet job's ref on the remote");
        }
    }
}

/// In the background, once at start: deletes the job refs a previous run of the service left
/// (a `kill -9` runs no clean-up) in every task's repository and on their remotes.
pub(crate) fn clean_after_restart(services: &Services) {
    if services.fleet.is_none() {
        return;
    }
    let started = SystemTime::now();
    let services_now = services.clone();
    services.background.spawn("fleet.job-refs", async move {
        let repos = repos_of_tasks(&services_now).await;
        let remotes = services_now.config.storage.data_dir.join("remotes");
        let mut cleaned = 0usize;
        for repo in repos {
            let remote = repo.starts_with(&remotes);
            let git = Git::new(&repo, services_now.config.git.timeout());
            cleaned += clean_repo(&git, started, remote).await;
        }
        if cleaned > 0 {
            tracing::warn!(cleaned, "deleted fleet job refs a previous run left");
        }
    });
}

/// Every task's repository (its clone, for a remote), at most [`REPOS_MAX`].
async fn repos_of_tasks(services: &Services) -> Vec<PathBuf> {
    let mut tasks = services.store.unfinished_tasks().await.unwrap_or_default();
    tasks.extend(services.store.finished_tasks().await.unwrap_or_default());
    let mut repos: Vec<PathBuf> = tasks
        .iter()
        .map(|t| services.repo_dir(&t.spec.repo))
        .collect();
    repos.sort();
    repos.dedup();
    repos.truncate(REPOS_MAX);
    repos
}

/// Deletes the job refs of `git` (and of its remote) made before `started`; how many.
async fn clean_repo(git: &Git, started: SystemTime, remote: bool) -> usize {
    let mut cleaned = 0;
    let pattern = format!("{JOB_REFS}*");
    if let Ok(listed) = git
        .run(&["for-each-ref", "--format=%(refname)", JOB_REFS])
        .await
    {
        for reference in stale(listed.lines(), started) {
            if git.run(&["update-ref", "-d", &reference]).await.is_ok() {
                cleaned += 1;
            }
        }
    }
    if remote {
        if let Ok(listed) = git.run(&["ls-remote", "--refs", "origin", &pattern]).await {
            let refs = stale(
                listed.lines().filter_map(|l| l.split_whitespace().nth(1)),
                started,
            );
            if !refs.is_empty() {
                let mut args = vec!["push", "--quiet", "origin", "--delete"];
                args.extend(refs.iter().map(String::as_str));
                if git.run(&args).await.is_ok() {
                    cleaned += refs.len();
                }
            }
        }
    }
    cleaned
}

/// The job refs among `refs` whose job was made before `started` (a name that is no UUID v7
/// is left alone).
fn stale<'a>(refs: impl Iterator<Item = &'a str>, started: SystemTime) -> Vec<String> {
    refs.filter(|reference| {
        reference
            .strip_prefix(JOB_REFS)
            .and_then(|id| Uuid::parse_str(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                SystemTime::UNIX_EPOCH + Duration::new(secs, nanos) < started
            })
            .unwrap_or(false)
    })
    .take(REFS_MAX)
    .map(str::to_owned)
    .collect()
}

/// Whether `repo` is a clone of a remote (its job refs are pushed there too).
pub(crate) fn is_remote_clone(data_dir: &Path, repo: &str) -> bool {
    Path::new(repo).starts_with(data_dir.join("remotes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refs_of_jobs_older_than_the_start_are_stale() {
        let old = Uuid::now_v7();
        std::thread::sleep(Duration::from_millis(5));
        let started = SystemTime::now();
        std::thread::sleep(Duration::from_millis(5));
        let new = Uuid::now_v7();
        let refs = [
            format!("{JOB_REFS}{old}"),
            format!("{JOB_REFS}{new}"),
            format!("{JOB_REFS}not-a-uuid"),
            format!("{JOB_REFS}{}", Uuid::nil()),
        ];
        let found = stale(refs.iter().map(String::as_str), started);
        assert_eq!(found, vec![format!("{JOB_REFS}{old}")]);
    }
}
