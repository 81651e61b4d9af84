//! Repository scopes judged on canonical paths: `server.repos` and a token's `repos` globs are
//! matched against the repository's real local path — symlinks, `.`, `..`, `//` and a trailing
//! `/` resolved, a `file://` URL (percent-decoded, its host dropped, as git reads it) turned into
//! that path — never against the text a client sent. The scope is checked before anything looks
//! for the repository or its branch, and the refusal names only what the client sent, so it
//! says nothing of whether something outside the scope exists.
//!
//! A path that does not (fully) exist is resolved as far as it exists, then lexically: the same
//! answer a later `mkdir` would give, and the same refusal whether or not it exists.

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::IntakeError;
use crate::model::auth::Principal;
use crate::model::codes;

/// The most components a repository path may have (each resolution is a walk over them).
const PATH_COMPONENTS_MAX: usize = 256;
/// The most symlinks one resolution follows (the kernel's own limit is 40).
const LINKS_MAX: usize = 40;
/// The most components one resolution walks, symlink targets included.
const RESOLVE_STEPS_MAX: usize = 4096;
/// How long resolving a path may take (local file system; a hung mount must not hold intake).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The URL scheme whose repositories live on this host.
const FILE_SCHEME: &str = "file://";

/// Who may name which repositories: `server.repos` for everyone, a token's `repos` for its
/// submissions (an empty list allows any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RepoScope<'a> {
    /// `server.repos`.
    pub server: &'a [String],
    /// The caller, when the service checks tokens.
    pub caller: Option<&'a Principal>,
}

impl RepoScope<'_> {
    /// Any repository (unit tests of the repository checks, and no scopes configured).
    #[cfg(test)]
    pub(crate) const ANY: RepoScope<'static> = RepoScope {
        server: &[],
        caller: None,
    };

    /// Refuses `REPO_NOT_ALLOWED` unless one of `forms` (the canonical path, or a URL as
    /// normalised) matches both `server.repos` and the caller's globs. The message names `given`
    /// as the client wrote it and nothing resolved from it.
    pub(crate) fn check(&self, given: &str, forms: &[String]) -> Result<(), IntakeError> {
        let allowed = |globs: &[String]| forms.iter().any(|form| matches_any(globs, form));
        if !allowed(self.server) {
            return Err(IntakeError::Forbidden {
                code: codes::REPO_NOT_ALLOWED,
                message: format!("repo `{given}` is outside `server.repos`"),
            });
        }
        match self.caller {
            Some(caller) if !allowed(&caller.repos) => Err(IntakeError::Forbidden {
                code: codes::REPO_NOT_ALLOWED,
                message: format!("token `{}` may not use repo `{given}`", caller.name),
            }),
            _ => Ok(()),
        }
    }
}

/// Whether `path` matches one of `globs` (an empty list matches everything).
pub(crate) fn matches_any(globs: &[String], path: &str) -> bool {
    globs.is_empty()
        || globs
            .iter()
            .any(|glob| globset::Glob::new(glob).is_ok_and(|g| g.compile_matcher().is_match(path)))
}

/// The forms a canonical local path is matched by: the path, and its `file://` URL (a glob may
/// be written either way).
pub(crate) fn path_forms(path: &str) -> Vec<String> {
    vec![path.to_owned(), format!("{FILE_SCHEME}{path}")]
}

/// The forms a stored task's `repo` (a canonical path, the `file://` URL of one, or another URL
/// as given) is matched by.
pub(crate) fn stored_forms(repo: &str) -> Vec<String> {
    match file_url_path(repo) {
        Some(path) => path_forms(&path),
        None if repo.starts_with('/') => path_forms(repo),
        None => vec![repo.to_owned()],
    }
}

/// A local path resolved for its scope check.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The canonical path as text for the globs (lossy where the file system's bytes are not
    /// UTF-8).
    pub path: String,
    /// The canonical path itself.
    pub real: PathBuf,
    /// Whether the whole path exists (else only a prefix of it was resolved).
    pub exists: bool,
}

/// Resolves the absolute `path` (blocking work on the blocking pool, bounded in time and in
/// components). An unresolvable one (a hung mount, a symlink loop, too deep) is refused as `INVALID_FIELD`,
/// which says nothing about what exists.
pub(crate) async fn resolve_local(given: &str, path: &Path) -> Result<Resolved, IntakeError> {
    let too_deep = path.components().count() > PATH_COMPONENTS_MAX;
    if too_deep || !path.is_absolute() {
        return Err(IntakeError::InvalidField(format!(
            "repo `{given}` must be an absolute path of at most {PATH_COMPONENTS_MAX} components"
        )));
    }
    let owned = path.to_path_buf();
    let job = tokio::task::spawn_blocking(move || canonical_lenient(&owned));
    match tokio::time::timeout(RESOLVE_TIMEOUT, job).await {
        Ok(Ok(Some((real, exists)))) => Ok(Resolved {
            path: real.to_string_lossy().into_owned(),
            real,
            exists,
        }),
        _ => Err(IntakeError::InvalidField(format!(
            "repo `{given}` could not be resolved (a symlink loop, or over {}s)",
            RESOLVE_TIMEOUT.as_secs()
        ))),
    }
}

/// The real path of `path`, and whether all of it exists: walked component by component,
/// symlinks followed (dangling ones too: their target is where the path leads), `..` taken from
/// the real path reached so far, the part below the first missing component applied lexically.
/// `None` past [`LINKS_MAX`] symlinks or [`RESOLVE_STEPS_MAX`] steps (a loop).
pub(crate) fn canonical_lenient(path: &Path) -> Option<(PathBuf, bool)> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Some((real, true));
    }
    let mut pending: VecDeque<PathBuf> = components_of(path);
    let mut real = PathBuf::from("/");
    let mut exists = true;
    let (mut links, mut steps) = (0, 0);
    while let Some(component) = pending.pop_front() {
        steps += 1;
        if steps > RESOLVE_STEPS_MAX {
            return None;
        }
        if component.as_os_str() == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&component);
        if !exists {
            real = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                links += 1;
                let target = std::fs::read_link(&next)
                    .ok()
                    .filter(|_| links <= LINKS_MAX)?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                for part in components_of(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            Ok(_) => real = next,
            Err(_) => {
                exists = false;
                real = next;
            }
        }
    }
    Some((real, exists))
}

/// The names and `..`s of `path` (root, `.` and empty parts dropped).
fn components_of(path: &Path) -> VecDeque<PathBuf> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The local path a `file://` URL names, as git reads it: the whole URL percent-decoded, then
/// the host (anything before the first `/` after the scheme) dropped.
pub(crate) fn file_url_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix(FILE_SCHEME)?;
    let decoded = String::from_utf8_lossy(&percent_decode(rest.as_bytes())).into_owned();
    match decoded.find('/') {
        Some(slash) => Some(decoded[slash..].to_owned()),
        None => Some("/".to_owned()),
    }
}

/// The `file://` URL of a canonical path: every byte but RFC 3986's unreserved ones and `/`
/// percent-encoded, so git (which decodes file URLs) reads exactly this path back.
pub(crate) fn file_url_of(path: &str) -> String {
    let mut url = String::with_capacity(FILE_SCHEME.len() + path.len());
    url.push_str(FILE_SCHEME);
    for &byte in path.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                url.push(char::from(byte));
            }
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

/// `%XX` sequences decoded; anything else (a `%` not followed by two hex digits included) kept.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    out
}

/// A remote URL (not `file://`) whose path has a `.` or `..` segment (plain or percent-encoded)
/// is refused: the client would resolve it to another repository than the text the globs see.
pub(crate) fn check_url_segments(given: &str) -> Result<(), IntakeError> {
    let after_scheme = given.split_once("://").map_or(given, |(_, rest)| rest);
    let decoded = String::from_utf8_lossy(&percent_decode(after_scheme.as_bytes())).into_owned();
    let dotted = decoded
        .split(['/', ':', '?', '#'])
        .any(|segment| segment == "." || segment == "..");
    if dotted {
        return Err(IntakeError::InvalidField(format!(
            "repo `{given}` has a `.` or `..` segment: name the repository's URL without them"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_resolves_as_far_as_it_exists_then_lexically() {
        let root = tempfile::tempdir().unwrap();
        let real_root = std::fs::canonicalize(root.path()).unwrap();
        std::fs::create_dir(root.path().join("allowed")).unwrap();
        std::os::unix::fs::symlink(root.path().join("victim"), root.path().join("allowed/ln"))
            .unwrap();
        let cases = [
            ("allowed/../victim", "victim", false),
            ("allowed/nothing/../../victim", "victim", false),
            ("allowed/ln", "victim", false),
            ("allowed//./", "allowed", true),
            ("allowed/ln/deeper/..", "victim", false),
        ];
        for (relative, expected, exists) in cases {
            let given = format!("{}/{relative}", root.path().display());
            let (path, found) = canonical_lenient(Path::new(&given)).unwrap();
            assert_eq!(path, real_root.join(expected), "{relative}");
            assert_eq!(found, exists, "{relative}");
        }
        // Once the victim exists, the same names lead to it.
        std::fs::create_dir(root.path().join("victim")).unwrap();
        let given = format!("{}/allowed/ln", root.path().display());
        let (path, found) = canonical_lenient(Path::new(&given)).unwrap();
        assert_eq!((path, found), (real_root.join("victim"), true));
        // A loop is refused, not walked forever.
        std::os::unix::fs::symlink(root.path().join("loop"), root.path().join("loop")).unwrap();
        let given = format!("{}/loop/x", root.path().display());
        assert!(canonical_lenient(Path::new(&given)).is_none());
    }

    #[test]
    fn file_urls_are_read_as_git_reads_them() {
        let cases = [
            ("file:///srv/a/../b", "/srv/a/../b"),
            ("file:///srv/a%2F..%2Fb", "/srv/a/../b"),
            ("file://localhost/srv/b", "/srv/b"),
            ("file://srv/b", "/b"),
            ("file://host", "/"),
            ("file:///srv/%zz", "/srv/%zz"),
        ];
        for (url, path) in cases {
            assert_eq!(file_url_path(url).as_deref(), Some(path), "{url}");
        }
        assert_eq!(file_url_of("/srv/a b%/c.git"), "file:///srv/a%20b%25/c.git");
        let back = file_url_of("/srv/a b%/c.git");
        assert_eq!(file_url_path(&back).as_deref(), Some("/srv/a b%/c.git"));
    }

    #[test]
    fn dotted_remote_urls_are_refused() {
        for url in [
            "https://example.com/org/allowed/../victim",
            "ssh://host/srv/allowed/%2e%2e/victim",
            "https://example.com/./x",
        ] {
            assert!(check_url_segments(url).is_err(), "{url}");
        }
        assert!(check_url_segments("https://example.com/org/repo.git").is_ok());
        assert!(check_url_segments("ssh://git@host:22/srv/x..y.git").is_ok());
    }
}
