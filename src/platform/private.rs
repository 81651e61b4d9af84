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

/// How a piece of work in the user's territory (a child process, gix writing in the user's
/// repository) gets the user's umask while the service keeps its own.
pub(crate) enum UserUmask {
    /// The service's umask was never made private: nothing to do.
    NotPrivate,
    /// This thread holds the inherited umask until the guard is dropped.
    Held(HeldUmask),
    /// This thread cannot have a umask of its own (`unshare(CLONE_FS)` refused, by a seccomp
    /// filter say): a child sets this mask itself after a fork.
    Unavailable(libc::mode_t),
}

/// While alive, the calling thread's umask is the inherited one; dropped, the private one again.
/// Held for synchronous work only (a spawn call, a closure on the blocking pool): nothing else
/// runs on the thread meanwhile.
#[must_use]
pub(crate) struct HeldUmask {
    own: libc::mode_t,
}

impl Drop for HeldUmask {
    fn drop(&mut self) {
        // SAFETY: umask(2) cannot fail and touches no memory; the thread's fs attributes are its
        // own (see `hold_inherited_umask`), so only its mask changes.
        unsafe { libc::umask(self.own) };
    }
}

#[cfg(test)]
impl HeldUmask {
    /// A guard restoring `own` (the caller set the thread's mask itself).
    pub(crate) fn new_for_test(own: libc::mode_t) -> Self {
        Self { own }
    }
}

thread_local! {
    /// Whether this thread's filesystem attributes are its own: `None` until first asked.
    static OWN_FS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Gives the calling thread the inherited umask until the answer's guard is dropped. The umask
/// is one of the filesystem attributes (with the working dir and root) a process's threads
/// share; the thread first takes its own copy of them, once (`unshare(CLONE_FS)`), so the
/// service's other threads keep creating private files meanwhile. A vforked child (a
/// `posix_spawn`) copies the calling thread's attributes.
pub(crate) fn hold_inherited_umask() -> UserUmask {
    let Some(mask) = inherited_umask() else {
        return UserUmask::NotPrivate;
    };
    if !own_fs() {
        return UserUmask::Unavailable(mask);
    }
    // SAFETY: as in `HeldUmask::drop`.
    let own = unsafe { libc::umask(mask) };
    UserUmask::Held(HeldUmask { own })
}

/// Whether this thread has filesystem attributes of its own, taking them the first time.
fn own_fs() -> bool {
    OWN_FS.with(|own| match own.get() {
        Some(known) => known,
        None => {
            // SAFETY: unshare(CLONE_FS) gives this thread a copy of its cwd, root and umask; it
            // touches no memory. Refused, nothing changed.
            let taken = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
            if !taken {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "a thread cannot have its own umask: children restore it after a fork"
                );
            }
            own.set(Some(taken));
            taken
        }
    })
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
