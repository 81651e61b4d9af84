//! The data dir is private to the service's user: the service process creates everything with
//! umask `0o077` ([`restrict_umask`], set by `glitchlab serve` before anything is opened), so
//! sled's files, `admin.token`, prompt files and notes are `0600` and its directories `0700`;
//! and the data dir itself is made (or tightened to) `0700` at start ([`tighten_dir`]).
//!
//! The commands the service runs (git, engines, verify, ops providers) get back the umask the
//! service was started with ([`inherited_umask`], applied by `platform::process` in the child
//! before exec): git writes objects into the user's own repository and checks files out in the
//! user's checkout, where the user's umask is the right one. What those commands leave inside
//! the data dir (worktrees, clones) is behind its `0700`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask of the service process: no bit for group or others.
pub const PRIVATE_UMASK: libc::mode_t = 0o077;
/// The data dir's mode.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// What [`INHERITED`] holds before [`restrict_umask`] ran (no umask is this large).
const NOT_SET: u32 = u32::MAX;

/// The umask the process had before [`restrict_umask`]; [`NOT_SET`] until then.
static INHERITED: AtomicU32 = AtomicU32::new(NOT_SET);

/// Sets the process umask to [`PRIVATE_UMASK`] and remembers the one it replaced (for child
/// processes). Idempotent: a second call keeps the first remembered value. Answers the
/// inherited umask.
pub fn restrict_umask() -> u32 {
    // SAFETY: umask(2) cannot fail and touches no memory; it only swaps the process's mask.
    // (`mode_t` is `u32` on Linux, the one platform the service runs on.)
    let previous: u32 = unsafe { libc::umask(PRIVATE_UMASK) };
    match INHERITED.compare_exchange(NOT_SET, previous, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => previous,
        Err(first) => first,
    }
}

/// The umask child processes get back, once [`restrict_umask`] ran (`None` before: children
/// inherit the process's own, unchanged umask).
pub(crate) fn inherited_umask() -> Option<libc::mode_t> {
    match INHERITED.load(Ordering::SeqCst) {
        NOT_SET => None,
        mask => Some(mask),
    }
}

/// Makes `dir` [`PRIVATE_DIR_MODE`] when its mode gives group or others anything; answers the
/// mode it had when it changed it (for the log), `None` when it was private already.
pub fn tighten_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_dir_is_tightened_and_a_private_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tighten_dir(dir.path()).unwrap(), Some(0o755));
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_DIR_MODE);
        assert_eq!(tighten_dir(dir.path()).unwrap(), None);
    }
}
