//! A walk of a directory tree that never follows a symlink below its top: each directory is
//! opened relative to its parent's descriptor with `O_NOFOLLOW`, and each entry is looked at
//! with `AT_SYMLINK_NOFOLLOW`. The sandbox's root helper walks trees a sandboxed command may be
//! changing at the same time (to hand them to the run's uid, to measure them), so a path
//! swapped for a symlink to `/etc` must lead nowhere.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Entries one walk looks at, at most: a walk past it stops with [`WalkError::TooLarge`]
/// (a tree that big is a runaway, or not the run's own).
pub(crate) const WALK_ENTRIES_MAX: u64 = 2_000_000;

/// Directory depth one walk descends, at most (each level holds one descriptor open).
pub(crate) const WALK_DEPTH_MAX: usize = 256;

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalkError {
    /// More entries or deeper than the bounds above.
    #[error("more than {WALK_ENTRIES_MAX} entries or {WALK_DEPTH_MAX} levels under {0}")]
    TooLarge(String),
    /// A system call failed on an entry that is still there.
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
}

/// One entry met by a walk.
pub(crate) struct Node<'a> {
    /// The descriptor of the directory holding the entry (a directory's own: it is changed
    /// through that).
    pub(crate) parent: libc::c_int,
    /// Its name in `parent` (`.` for the top; a directory's own name otherwise).
    pub(crate) name: &'a CStr,
    /// Levels below the top (0: the top itself).
    pub(crate) depth: usize,
    /// Its own descriptor when it is a directory.
    pub(crate) dir: Option<libc::c_int>,
    /// What `fstatat` said of it (not following a symlink).
    pub(crate) stat: &'a libc::stat,
}

impl Node<'_> {
    /// Whether the entry is a directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.stat.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Walks the tree under `top` (a missing `top` is an empty walk), calling `visit` for `top` and
/// every entry beneath it, parents before children. Answers the entries visited. `top` is
/// followed if it is a symlink: the service names it (a configured dir may be a link), and
/// inside the sandbox it is a mount point, which a run cannot swap.
pub(crate) fn walk(
    top: &Path,
    visit: &mut dyn FnMut(&Node<'_>) -> std::io::Result<()>,
) -> Result<u64, WalkError> {
    let io = |what, error| WalkError::Io {
        what,
        path: top.display().to_string(),
        error,
    };
    let path = CString::new(top.as_os_str().as_bytes())
        .map_err(|_| io("path", std::io::ErrorKind::InvalidInput.into()))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: open reads a NUL-terminated path we own.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::NotFound {
            return Ok(0);
        }
        return Err(io("open", error));
    }
    let mut walker = Walker {
        top,
        entries: 0,
        visit,
    };
    walker.directory(fd, c".", 0)?;
    Ok(walker.entries)
}

/// The state of one walk.
struct Walker<'v, 'p> {
    top: &'p Path,
    entries: u64,
    visit: &'v mut dyn FnMut(&Node<'_>) -> std::io::Result<()>,
}

impl Walker<'_, '_> {
    fn error(&self, what: &'static str, name: &CStr, error: std::io::Error) -> WalkError {
        WalkError::Io {
            what,
            path: format!("{}/…/{}", self.top.display(), name.to_string_lossy()),
            error,
        }
    }

    fn count(&mut self) -> Result<(), WalkError> {
        self.entries += 1;
        if self.entries > WALK_ENTRIES_MAX {
            return Err(WalkError::TooLarge(self.top.display().to_string()));
        }
        Ok(())
    }

    /// Visits the directory open as `fd` (owned: closed here), then its entries.
    fn directory(&mut self, fd: libc::c_int, name: &CStr, depth: usize) -> Result<(), WalkError> {
        // SAFETY: fdopendir takes over `fd`; closedir below closes both.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let error = std::io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(self.error("opendir", name, error));
        }
        let result = self.entries_of(stream, fd, name, depth);
        // SAFETY: `stream` came from fdopendir and is closed once.
        unsafe { libc::closedir(stream) };
        result
    }

    fn entries_of(
        &mut self,
        stream: *mut libc::DIR,
        fd: libc::c_int,
        name: &CStr,
        depth: usize,
    ) -> Result<(), WalkError> {
        if depth > WALK_DEPTH_MAX {
            return Err(WalkError::TooLarge(self.top.display().to_string()));
        }
        self.count()?;
        let stat = fstatat(fd, c".").map_err(|e| self.error("stat", name, e))?;
        let node = Node {
            parent: fd,
            name,
            depth,
            dir: Some(fd),
            stat: &stat,
        };
        (self.visit)(&node).map_err(|e| self.error("visit", name, e))?;
        loop {
            // SAFETY: readdir reads the stream we own; its entry lives until the next call.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                return Ok(());
            }
            // SAFETY: d_name of a returned entry is a NUL-terminated name.
            let child = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if child == c"." || child == c".." {
                continue;
            }
            let child = child.to_owned();
            self.entry(fd, &child, depth)?;
        }
    }

    /// Visits one entry of the directory `parent`: a directory is descended into.
    fn entry(&mut self, parent: libc::c_int, name: &CStr, depth: usize) -> Result<(), WalkError> {
        let stat = match fstatat(parent, name) {
            Ok(stat) => stat,
            // Gone meanwhile (the run is still writing): nothing to visit.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(self.error("stat", name, error)),
        };
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            self.count()?;
            let node = Node {
                parent,
                name,
                depth: depth + 1,
                dir: None,
                stat: &stat,
            };
            return match (self.visit)(&node) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(|e| self.error("visit", name, e)),
            };
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat reads a NUL-terminated name relative to a descriptor we hold.
        let fd = unsafe { libc::openat(parent, name.as_ptr(), flags) };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            return match error.raw_os_error() {
                // Gone, or swapped for a symlink or a file meanwhile: not walked.
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR) => Ok(()),
                _ => Err(self.error("open", name, error)),
            };
        }
        self.directory(fd, name, depth + 1)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn fstatat(dir: libc::c_int, name: &CStr) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat writes into the struct we own and reads a NUL-terminated name.
    let done = unsafe { libc::fstatat(dir, name.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

/// Bytes the tree under `top` takes on disk (allocated blocks, so sparse files count what they
/// hold and `fallocate`d ones what they reserve), and its entries.
pub(crate) fn disk_usage(top: &Path) -> Result<(u64, u64), WalkError> {
    let mut bytes: u64 = 0;
    let entries = walk(top, &mut |node| {
        let blocks = u64::try_from(node.stat.st_blocks).unwrap_or(0);
        bytes = bytes.saturating_add(blocks.saturating_mul(512));
        Ok(())
    })?;
    Ok((bytes, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_counts_every_entry_and_never_follows_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("top");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/file"), vec![1u8; 64 * 1024]).unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        let (bytes, entries) = disk_usage(&top).unwrap();
        // top, a, a/b, a/b/file, link
        assert_eq!(entries, 5);
        assert!((64 * 1024..1024 * 1024).contains(&bytes), "{bytes}");
        assert_eq!(disk_usage(&root.path().join("missing")).unwrap(), (0, 0));
        // A top that is a symlink (a configured dir may be) is followed.
        assert_eq!(disk_usage(&top.join("link")).unwrap().1, 2);
    }
}
