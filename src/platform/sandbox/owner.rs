//! The unprivileged host uid a run drops to when the service is root, and the hand-over of the
//! run's writable dirs to it.
//!
//! A root service's runs would otherwise be host root inside bubblewrap's user namespace, which
//! `RLIMIT_NPROC` does not bind. Each run gets a uid of its own from `[engines.limits]
//! sandbox_uid_base .. + sandbox_uid_count` (the same one for the same worktree while it is
//! free, so a task's worktree is handed over once, not at every run), and every run shares the
//! gid `sandbox_uid_base`: a dir two runs may write (the repository's `objects`, a configured
//! extra) is group-writable, so the run that touched it last does not lock the others out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::tree::{self, Node, WalkError};

/// Group bits a handed-over directory gets: the runs' shared group may list, enter and write it.
const GROUP_RWX: libc::mode_t = 0o070;

/// The host uid and gid one run runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl RunAs {
    /// `UID:GID`, as `sandbox-exec --user` takes it.
    pub(crate) fn arg(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// Parses `UID:GID`; neither may be root.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (uid, gid) = text
            .split_once(':')
            .ok_or_else(|| format!("--user {text}: expected UID:GID"))?;
        let number = |part: &str| {
            part.parse::<u32>()
                .map_err(|error| format!("--user {text}: {error}"))
        };
        let run_as = Self {
            uid: number(uid)?,
            gid: number(gid)?,
        };
        if run_as.uid == 0 || run_as.gid == 0 {
            return Err(format!("--user {text}: a run never runs as root"));
        }
        Ok(run_as)
    }
}

/// The uids of runs in flight, so two concurrent runs never share one (nor one process count).
#[derive(Debug)]
pub(crate) struct UidPool {
    base: u32,
    count: u32,
    in_use: Mutex<HashSet<u32>>,
}

/// A uid taken from the pool for one run; given back when dropped.
#[derive(Debug)]
pub(crate) struct UidLease {
    pool: Arc<UidPool>,
    pub(crate) run_as: RunAs,
    /// Whether the uid is the run's alone (false: every uid of the range was taken).
    owned: bool,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if self.owned {
            self.pool.lock().remove(&self.run_as.uid);
        }
    }
}

impl UidPool {
    /// The range `base .. base + count` (checked by the config: no root, no `nobody`).
    pub(crate) fn new(base: u32, count: u32) -> Arc<Self> {
        Arc::new(Self {
            base,
            count: count.max(1),
            in_use: Mutex::new(HashSet::new()),
        })
    }

    /// The uid and gid the start-up probe runs as.
    pub(crate) fn probe_identity(&self) -> RunAs {
        RunAs {
            uid: self.base,
            gid: self.base,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.in_use.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A uid for a run keyed by `key` (its worktree): the key's own slot if free, else the next
    /// free one (at most `count` tried); when every uid is taken, the key's slot, shared.
    pub(crate) fn lease(self: &Arc<Self>, key: &Path) -> UidLease {
        let start = slot(key, self.count);
        let mut in_use = self.lock();
        let free = (0..self.count)
            .map(|step| self.base + (start + step) % self.count)
            .find(|uid| !in_use.contains(uid));
        let (uid, owned) = match free {
            Some(uid) => {
                in_use.insert(uid);
                (uid, true)
            }
            None => (self.base + start, false),
        };
        drop(in_use);
        if !owned {
            tracing::warn!(
                uid,
                "every sandbox uid is in use: two runs share one process count"
            );
        }
        UidLease {
            pool: Arc::clone(self),
            run_as: RunAs {
                uid,
                gid: self.base,
            },
            owned,
        }
    }
}

/// The key's slot in a range of `count`: FNV-1a of its bytes, so the same worktree gets the
/// same uid across restarts (and is not handed over again).
fn slot(key: &Path, count: u32) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    let hash = key
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// What handing the dirs over did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandOver {
    /// Entries looked at.
    pub(crate) entries: u64,
    /// Entries whose owner, group or mode changed.
    pub(crate) changed: u64,
}

/// How a dir is handed to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// The run's own (its worktree, its temp dir): owner and group become the run's, so it may
    /// do what an owner may (`chmod +x`, set times).
    Own,
    /// Shared with the service or other runs (the repository's `objects`, a configured extra):
    /// the owner stays (git's ownership checks and the host's users see what they saw), the
    /// group becomes the runs' and may read and write.
    Group,
}

/// Hands every entry under `dirs` to `run_as` the `share` way (the top of an owned dir and its
/// `.git` only through the group, see [`hand`]). Entries already so are skipped
/// (a task's second run changes only what the service wrote since). Symlinks are never
/// followed; a file with several hard links (its other names may be outside the run's dirs) or
/// with a set-id bit is left as it is.
pub(crate) fn hand_over(
    dirs: &[PathBuf],
    share: Share,
    run_as: RunAs,
) -> Result<HandOver, WalkError> {
    let mut done = HandOver::default();
    for dir in dirs {
        let mut changed = 0;
        done.entries += tree::walk(dir, &mut |node| {
            if hand(node, share, run_as)? {
                changed += 1;
            }
            Ok(())
        })?;
        done.changed += changed;
    }
    Ok(done)
}

/// Group bits a shared file gets: the runs' group may read and write it.
const GROUP_RW: libc::mode_t = 0o060;

/// Hands one entry over; answers whether anything changed.
fn hand(node: &Node<'_>, share: Share, run_as: RunAs) -> std::io::Result<bool> {
    let stat = node.stat;
    let mode = stat.st_mode & 0o7777;
    let set_id = libc::S_ISUID | libc::S_ISGID;
    if !node.is_dir() && (stat.st_nlink > 1 || mode & set_id != 0) {
        return Ok(false);
    }
    // The top of a run's own dir and its `.git` keep their owner: git, run by the service as
    // root, trusts a worktree only when those are root's — and a `.git` the run replaced is
    // then the run's, refused, instead of trusted.
    let share = match share {
        Share::Own if node.depth == 0 || (node.depth == 1 && node.name == c".git") => Share::Group,
        other => other,
    };
    let uid = match share {
        Share::Own => run_as.uid,
        Share::Group => stat.st_uid,
    };
    let wanted_mode = match (node.is_dir(), share) {
        (true, _) => mode | GROUP_RWX,
        (false, Share::Own) => mode,
        (false, Share::Group) => mode | GROUP_RW,
    };
    let is_link = stat.st_mode & libc::S_IFMT == libc::S_IFLNK;
    let mode_right = mode == wanted_mode || is_link;
    if stat.st_uid == uid && stat.st_gid == run_as.gid && mode_right {
        return Ok(false);
    }
    let check = |done: libc::c_int| {
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: fchownat and fchmodat read a NUL-terminated name relative to a directory
    // descriptor the walk holds (a directory is changed through its own descriptor); neither
    // follows a symlink.
    unsafe {
        match node.dir {
            Some(fd) => {
                check(libc::fchown(fd, uid, run_as.gid))?;
                check(libc::fchmod(fd, wanted_mode))?;
            }
            None => {
                let name = node.name.as_ptr();
                check(libc::fchownat(
                    node.parent,
                    name,
                    uid,
                    run_as.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                ))?;
                if !is_link && mode != wanted_mode {
                    check(libc::fchmodat(node.parent, name, wanted_mode, 0))?;
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_parses_uid_and_gid_and_refuses_root() {
        assert_eq!(
            RunAs::parse("1900000007:1900000000"),
            Ok(RunAs {
                uid: 1_900_000_007,
                gid: 1_900_000_000
            })
        );
        assert_eq!(RunAs::parse("5:6").map(RunAs::arg), Ok("5:6".to_owned()));
        for bad in ["0:5", "5:0", "5", "x:5", "5:-1", ":"] {
            assert!(RunAs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn concurrent_runs_get_distinct_uids_and_a_worktree_keeps_its_own() {
        let pool = UidPool::new(1000, 3);
        let a = pool.lease(Path::new("/w/a"));
        let again = pool.lease(Path::new("/w/a"));
        let b = pool.lease(Path::new("/w/b"));
        let uids: HashSet<u32> = [&a, &again, &b].iter().map(|l| l.run_as.uid).collect();
        assert_eq!(uids.len(), 3, "all in use at once, all distinct");
        assert!(uids.iter().all(|uid| (1000..1003).contains(uid)));
        assert!([&a, &again, &b].iter().all(|l| l.run_as.gid == 1000));
        // Past the range, the key's slot is shared rather than refused.
        let shared = pool.lease(Path::new("/w/c"));
        assert!(!shared.owned);
        let first = a.run_as.uid;
        drop((a, again, b, shared));
        assert!(pool.lock().is_empty(), "every lease given back");
        assert_eq!(pool.lease(Path::new("/w/a")).run_as.uid, first, "stable");
    }

    #[test]
    fn hand_over_owns_the_tree_skips_what_is_owned_and_leaves_symlinks_unfollowed() {
        // SAFETY: geteuid only reads the caller's credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: only root may give files away");
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("work");
        std::fs::create_dir_all(top.join("src")).unwrap();
        std::fs::write(top.join(".git"), "gitdir: /repo/.git/worktrees/work\n").unwrap();
        std::fs::write(top.join("src/lib.rs"), "fn main() {}\n").unwrap();
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, "not the run's\n").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        std::fs::hard_link(&outside, top.join("hard")).unwrap();
        let run_as = RunAs {
            uid: 1_900_000_001,
            gid: 1_900_000_000,
        };
        let done = hand_over(std::slice::from_ref(&top), Share::Own, run_as).unwrap();
        assert_eq!(done.entries, 6);
        assert_eq!(done.changed, 5, "top, .git, src, lib.rs, the link itself");
        let meta = std::fs::metadata(top.join("src/lib.rs")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (run_as.uid, run_as.gid));
        assert_eq!(meta.mode() & 0o777, 0o644, "an owned file keeps its mode");
        let meta = std::fs::metadata(&top).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, run_as.gid),
            "the top stays root's"
        );
        assert_eq!(meta.mode() & 0o070, 0o070);
        let meta = std::fs::metadata(top.join(".git")).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o060),
            (0, 0o060),
            ".git stays root's"
        );
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "not followed"
        );
        let again = hand_over(std::slice::from_ref(&top), Share::Own, run_as).unwrap();
        assert_eq!(again.changed, 0, "nothing left to change");

        // A shared dir keeps its owner; the runs' group may write it.
        let shared = root.path().join("cache");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("entry"), "cached\n").unwrap();
        let setuid = shared.join("setuid");
        std::fs::write(&setuid, "").unwrap();
        std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let done = hand_over(std::slice::from_ref(&shared), Share::Group, run_as).unwrap();
        assert_eq!((done.entries, done.changed), (3, 2));
        let meta = std::fs::metadata(shared.join("entry")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, run_as.gid));
        assert_eq!(meta.mode() & 0o060, 0o060);
        let meta = std::fs::metadata(&setuid).unwrap();
        assert_eq!(
            (meta.gid(), meta.mode() & 0o7777),
            (0, 0o4755),
            "set-id left alone"
        );
    }
}
