//! No secret leaves in a change: before Patch commits an attempt, every path the change touches
//! is read from the worktree and looked at by the service's [`Redactor`] — the same values and
//! encodings it scrubs from every output. A change that holds any of them fails the task
//! `SECRET_IN_CHANGE`, naming the files and never the value, and nothing is committed.
//!
//! What is read, and how — the worktree's file, and for a path git converts on staging
//! (`working-tree-encoding`: a file kept as UTF-16 in the worktree is committed as UTF-8) the
//! blob the index stages too, through the worktree's own git handle:
//! - a regular file: its bytes, at most [`FILE_BYTES_MAX`] of each and [`CHANGE_BYTES_MAX`] in
//!   all; a change with more than that cannot be vouched for and is refused too (only when
//!   secrets are configured: without any there is nothing to look for);
//! - a symlink: its link text (what git commits), never the file it points to;
//! - a path that is gone (a deletion), a directory (a submodule) or anything else git does not
//!   commit as bytes: skipped; so is a path under a directory that is now a symlink (git cannot
//!   commit it there, and reading through it would read outside the worktree);
//! - the path's own name, which a commit carries as well.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use crate::platform::git::Git;
use crate::platform::redact::Redactor;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;

/// The most bytes read of one changed file; a larger one is refused rather than half-read.
pub(crate) const FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// The most bytes read for one change, all files together.
pub(crate) const CHANGE_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// The most path components walked (to refuse a symlinked parent) per changed path.
const PATH_COMPONENTS_MAX: usize = 256;
/// The most file names a refusal lists (the rest are counted).
const NAMED_FILES_MAX: usize = 10;
/// How long the scan of one change may take (local reads; bounded in bytes too).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// The attribute whose conversion on staging makes the committed blob differ from the
/// worktree's bytes in a way that could hide a value.
const CONVERTING_ATTRIBUTE: &str = "working-tree-encoding";
/// Paths named to one `git check-attr`.
const PATHS_PER_CALL: usize = 256;

/// What the scan found wrong with a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Findings {
    /// Changed paths (redacted) that hold a secret value, plain or encoded, or are named by one.
    pub with_secrets: Vec<String>,
    /// Changed paths (redacted) too large to be read whole within the bounds.
    pub too_large: Vec<String>,
}

impl Findings {
    /// Whether the change may be committed.
    pub(crate) fn is_clean(&self) -> bool {
        self.with_secrets.is_empty() && self.too_large.is_empty()
    }
}

/// Refuses the attempt — `SECRET_IN_CHANGE`, before anything is committed — when a file of
/// `changed` (paths relative to the worktree's top, as git lists them) holds a configured secret
/// value; the staged edits are then discarded, so the value does not stay in the worktree or its
/// index. `worktree` is the worktree's git handle (git runs only through it), `files` the
/// directory of its files.
pub(crate) async fn refuse_secrets_in_change(
    services: &Services,
    worktree: &Git,
    files: &Path,
    changed: &[String],
) -> Result<(), StageError> {
    if services.redactor.is_empty() || changed.is_empty() {
        return Ok(());
    }
    let staged = converted_blobs(worktree, files, changed).await;
    let redactor = Arc::clone(&services.redactor);
    let root = files.to_path_buf();
    let paths = changed.to_vec();
    let scan = tokio::task::spawn_blocking(move || scan_change(&redactor, &root, &paths, &staged));
    let findings = match tokio::time::timeout(SCAN_TIMEOUT, scan).await {
        Ok(Ok(findings)) => findings,
        Ok(Err(join)) => {
            return Err(StageError::internal_from(
                format!("secret scan: {join}"),
                join,
            ))
        }
        Err(_) => {
            return Err(StageError::internal(format!(
                "the secret scan of the change took over {}s",
                SCAN_TIMEOUT.as_secs()
            )))
        }
    };
    if findings.is_clean() {
        return Ok(());
    }
    // The verdict stands whether or not the cleanup works: nothing is committed either way.
    if let Err(error) = worktree.discard_uncommitted().await {
        tracing::warn!(%error, worktree = %files.display(), "could not discard a refused change");
    }
    Err(StageError::SecretInChange(refusal(&findings)))
}

/// What the index stages for a path git converts on staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Staged {
    /// The blob, in the repository's form.
    Bytes(Vec<u8>),
    /// Over the bounds, or unreadable: not vouched for.
    Unreadable,
}

/// The staged blobs (by index into `changed`) of the changed paths that still exist and that
/// git converts on staging (`working-tree-encoding` set): usually none, so usually one
/// `git check-attr` per [`PATHS_PER_CALL`] paths and nothing more. When git cannot say, the
/// worktree's bytes are all there is (logged).
async fn converted_blobs(worktree: &Git, files: &Path, changed: &[String]) -> Vec<(usize, Staged)> {
    let position: HashMap<&str, usize> = changed
        .iter()
        .enumerate()
        .map(|(index, path)| (path.as_str(), index))
        .collect();
    let mut converted = Vec::new();
    for chunk in changed.chunks(PATHS_PER_CALL) {
        let mut args = vec!["check-attr", "-z", CONVERTING_ATTRIBUTE, "--"];
        args.extend(chunk.iter().map(String::as_str));
        match worktree.run_listing(&args).await {
            Ok(listing) => converted.extend(converted_paths(&listing)),
            Err(error) => {
                tracing::warn!(%error, "secret scan: could not ask git which paths it converts");
                return Vec::new();
            }
        }
    }
    let mut staged = Vec::new();
    for path in converted {
        let Some(&index) = position.get(path.as_str()) else {
            continue;
        };
        if std::fs::symlink_metadata(files.join(&path)).is_err() {
            continue; // deleted: nothing staged to commit
        }
        let blob = worktree
            .run_listing(&["cat-file", "blob", &format!(":{path}")])
            .await;
        let read = match blob {
            Ok(text) if (text.len() as u64) <= FILE_BYTES_MAX => Staged::Bytes(text.into_bytes()),
            Ok(_) | Err(_) => Staged::Unreadable,
        };
        staged.push((index, read));
    }
    staged
}

/// The paths of a `git check-attr -z` listing (`path NUL attribute NUL value NUL`, repeated)
/// whose value is set: neither `unspecified` nor `unset`.
fn converted_paths(listing: &str) -> Vec<String> {
    let fields: Vec<&str> = listing.split('\0').collect();
    fields
        .chunks(3)
        .filter(|triple| triple.len() == 3 && !matches!(triple[2], "unspecified" | "unset" | ""))
        .map(|triple| triple[0].to_owned())
        .collect()
}

/// The refusal's message: the files, never the value.
fn refusal(findings: &Findings) -> String {
    let mut parts = Vec::new();
    if !findings.with_secrets.is_empty() {
        parts.push(format!(
            "the change writes a configured secret value into {}",
            listed(&findings.with_secrets)
        ));
    }
    if !findings.too_large.is_empty() {
        parts.push(format!(
            "the change could not be scanned for secrets whole (over {FILE_BYTES_MAX} bytes a \
             file or {CHANGE_BYTES_MAX} in all): {}",
            listed(&findings.too_large)
        ));
    }
    format!("{}; nothing was committed", parts.join("; "))
}

/// At most [`NAMED_FILES_MAX`] names, then how many more.
fn listed(paths: &[String]) -> String {
    let shown: Vec<&str> = paths
        .iter()
        .take(NAMED_FILES_MAX)
        .map(String::as_str)
        .collect();
    let more = paths.len().saturating_sub(NAMED_FILES_MAX);
    if more == 0 {
        shown.join(", ")
    } else {
        format!("{} and {more} more", shown.join(", "))
    }
}

/// Reads each changed path under `root` (blocking; bounded) and looks at it, and at what the
/// index stages for it where git converts it (`staged`, by index into `changed`): which hold a
/// secret, which could not be read whole.
pub(crate) fn scan_change(
    redactor: &Redactor,
    root: &Path,
    changed: &[String],
    staged: &[(usize, Staged)],
) -> Findings {
    let mut findings = Findings::default();
    let mut budget = CHANGE_BYTES_MAX;
    for (index, path) in changed.iter().enumerate() {
        let shown = redactor.redact(path);
        if shown != *path {
            findings.with_secrets.push(shown);
            continue;
        }
        let in_worktree = read_changed(root, path, budget);
        if let Contents::Bytes(bytes) = &in_worktree {
            budget = budget.saturating_sub(bytes.len() as u64);
        }
        let in_index = staged
            .iter()
            .find(|(at, _)| *at == index)
            .map(|(_, blob)| blob);
        let holds = matches!(&in_worktree, Contents::Bytes(bytes) if holds_secret(redactor, bytes))
            || matches!(in_index, Some(Staged::Bytes(bytes)) if holds_secret(redactor, bytes));
        let unreadable = matches!(in_worktree, Contents::TooLarge)
            || matches!(in_index, Some(Staged::Unreadable));
        if holds {
            findings.with_secrets.push(shown);
        } else if unreadable {
            findings.too_large.push(shown);
        }
    }
    findings
}

/// Whether `bytes` hold a secret value in any form the redactor knows.
fn holds_secret(redactor: &Redactor, bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    redactor.redact(&text) != text
}

/// What a changed path holds, as git would commit it.
#[derive(Debug)]
enum Contents {
    /// A file's bytes, or a symlink's target text.
    Bytes(Vec<u8>),
    /// More than the bounds allow.
    TooLarge,
    /// Nothing git commits as bytes: gone, a directory, a FIFO, under a symlinked directory.
    Skipped,
}

/// The contents of `relative` under `root`, reading at most `budget` bytes (and
/// [`FILE_BYTES_MAX`]); symlinks are never followed.
fn read_changed(root: &Path, relative: &str, budget: u64) -> Contents {
    let Some(path) = inside(root, relative) else {
        return Contents::Skipped;
    };
    let Ok(metadata) = std::fs::symlink_metadata(&path) else {
        return Contents::Skipped;
    };
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        return match std::fs::read_link(&path) {
            Ok(target) => Contents::Bytes(target.into_os_string().into_encoded_bytes()),
            Err(_) => Contents::Skipped,
        };
    }
    if !file_type.is_file() {
        return Contents::Skipped;
    }
    let limit = FILE_BYTES_MAX.min(budget);
    if metadata.len() > limit {
        return Contents::TooLarge;
    }
    read_regular(&path, limit)
}

/// A regular file's bytes, opened without following a symlink put there since it was looked at,
/// and never more than `limit` bytes (a file that grew past it is too large).
fn read_regular(path: &Path, limit: u64) -> Contents {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let Ok(file) = opened else {
        return Contents::Skipped;
    };
    let mut bytes = Vec::new();
    match file.take(limit.saturating_add(1)).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > limit => Contents::TooLarge,
        Ok(_) => Contents::Bytes(bytes),
        Err(_) => Contents::Skipped,
    }
}

/// `root/relative` when every directory on the way is a real directory (not a symlink) and the
/// path has no `..`, root or prefix component; `None` otherwise.
fn inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let relative = Path::new(relative);
    let components: Vec<Component<'_>> = relative.components().collect();
    if components.is_empty() || components.len() > PATH_COMPONENTS_MAX {
        return None;
    }
    let mut path = root.to_path_buf();
    let last = components.len() - 1;
    for (index, component) in components.into_iter().enumerate() {
        let Component::Normal(name) = component else {
            return None;
        };
        path.push(name);
        if index < last {
            let parent = std::fs::symlink_metadata(&path).ok()?;
            if !parent.file_type().is_dir() {
                return None;
            }
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests;
