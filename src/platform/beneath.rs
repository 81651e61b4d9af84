//! File access *beneath* a root directory that never follows a symbolic link: how the service
//! itself reads, writes and removes files inside a task's worktree.
//!
//! A worktree holds the task's repository, and its committed content is hostile: `docs ->
//! /outside` committed, a write to `docs/x` that goes through the path's text lands in
//! `/outside/x`, written by the service with the service's rights. Here every path is resolved
//! relative to an open descriptor of the root, one component at a time or in one `openat2(2)`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no check can be raced by a link swapped in
//! between the check and the use.
//!
//! The rules, the same for every operation:
//!
//! - the path is relative, non-empty, without `..` (refused before any system call);
//! - **no component may be a symbolic link**, not even one that points back inside the root:
//!   whether a link stays inside depends on the link's text and on every directory it passes
//!   through, all of which the hostile content chooses and can change between two looks; a
//!   refusal without exception is the rule that cannot be raced or misjudged (and a repository
//!   that needs its link edited can have it edited by a command engine, inside the sandbox);
//! - a file is written only if it is a regular file with one link (a hard link could share its
//!   content with a file outside), opened without blocking (a FIFO never stalls a thread).
//!
//! On Linux without `openat2` (before 5.6, or a seccomp filter answering `ENOSYS`), each
//! component is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the one before: the same
//! guarantee, one system call per component. The blocking calls run on tokio's blocking pool.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest file read for a caller (a file a model edits): past it the read is refused, so a
/// hostile repository cannot make the service hold gigabytes.
pub(crate) const READ_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The longest relative path accepted (Linux's `PATH_MAX`).
const PATH_BYTES_MAX: usize = 4096;
/// `openat2` answers `EAGAIN` when a rename elsewhere raced its resolution; it is asked again at
/// most this many times.
const RACE_TRIES: usize = 4;
/// Mode of the files created (before the umask).
const FILE_MODE: libc::mode_t = 0o644;
/// Mode of the directories created (before the umask).
const DIR_MODE: libc::mode_t = 0o755;

/// Set once `openat2` answered `ENOSYS`: from then on every path is walked component by component.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How paths are resolved: the one `openat2` (while the kernel has it), or the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
    Openat2,
    /// `openat(2)` with `O_NOFOLLOW`, one component at a time.
    Walk,
}

impl Via {
    fn current() -> Self {
        if NO_OPENAT2.load(Ordering::Relaxed) {
            Self::Walk
        } else {
            Self::Openat2
        }
    }
}

/// Why a file beneath the root could not be reached; each names the relative path asked for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BeneathError {
    /// The path is absolute, empty, too long or has a `..` component.
    #[error(
        "`{path}` is not a relative path beneath the directory (absolute, empty or with `..`)"
    )]
    Outside {
        /// The path asked for.
        path: String,
    },
    /// A component of the path is a symbolic link.
    #[error("`{path}` passes through a symbolic link (`{link}`); refusing to follow it")]
    Link {
        /// The path asked for.
        path: String,
        /// Its first component (with those before it) that is a link.
        link: String,
    },
    /// The file is a regular file with more than one hard link.
    #[error("`{path}` has {links} hard links; refusing to write a file it may share with another")]
    HardLinked {
        /// The path asked for.
        path: String,
        /// How many links the file has.
        links: u64,
    },
    /// Nothing is there (a missing file or directory on the way).
    #[error("`{path}`: no such file or directory")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// Something is there, but not a regular file (a directory, a FIFO, a device), or a
    /// component on the way is not a directory.
    #[error("`{path}` is not a regular file (or a part of it is not a directory)")]
    NotAFile {
        /// The path asked for.
        path: String,
    },
    /// The file is over [`READ_BYTES_MAX`].
    #[error("`{path}` is larger than {max} bytes")]
    TooLarge {
        /// The path asked for.
        path: String,
        /// The limit.
        max: u64,
    },
    /// The file system answered something else (no space, no permission, not UTF-8).
    #[error("`{path}`: {source}")]
    Io {
        /// The path asked for.
        path: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

impl BeneathError {
    /// A refusal of the path itself (outside, through a link, shared by a hard link), as opposed
    /// to a missing or unreadable file: the caller reports it as a refused edit.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Outside { .. } | Self::Link { .. } | Self::HardLinked { .. }
        )
    }
}

/// What a path beneath the root is, looked at without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (not followed).
    Link,
    /// Anything else (a FIFO, a socket, a device).
    Other,
}

/// Reads `relative` beneath `root` as UTF-8 text (at most [`READ_BYTES_MAX`] bytes).
pub(crate) async fn read_to_string(root: &Path, relative: &str) -> Result<String, BeneathError> {
    let (root, relative) = (root.to_path_buf(), relative.to_owned());
    blocking(relative.clone(), move || {
        read_sync(&root, &relative, Via::current())
    })
    .await
}

/// Writes `bytes` to `relative` beneath `root` (created or truncated), creating the missing
/// directories on the way.
pub(crate) async fn write(root: &Path, relative: &str, bytes: Vec<u8>) -> Result<(), BeneathError> {
    let (root, relative) = (root.to_path_buf(), relative.to_owned());
    blocking(relative.clone(), move || {
        write_sync(&root, &relative, &bytes, Via::current())
    })
    .await
}

/// Removes the file `relative` beneath `root` (a link is refused, not removed; a directory is
/// not a file).
pub(crate) async fn remove_file(root: &Path, relative: &str) -> Result<(), BeneathError> {
    let (root, relative) = (root.to_path_buf(), relative.to_owned());
    blocking(relative.clone(), move || {
        remove_sync(&root, &relative, Via::current())
    })
    .await
}

/// What `relative` beneath `root` is (`None`: nothing), its last component not followed; a link
/// *before* the last component is refused.
pub(crate) async fn kind(root: &Path, relative: &str) -> Result<Option<Kind>, BeneathError> {
    let (root, relative) = (root.to_path_buf(), relative.to_owned());
    blocking(relative.clone(), move || {
        kind_sync(&root, &relative, Via::current())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    relative: String,
    work: impl FnOnce() -> Result<T, BeneathError> + Send + 'static,
) -> Result<T, BeneathError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BeneathError::Io {
            path: relative,
            source: io::Error::other(error.to_string()),
        })?
}

/// A relative path checked and split into its components, with the root opened.
struct Target<'a> {
    via: Cell<Via>,
    shown: &'a str,
    root: OwnedFd,
    parts: Vec<CString>,
}

impl<'a> Target<'a> {
    fn open(root: &Path, relative: &'a str, via: Via) -> Result<Self, BeneathError> {
        let outside = || BeneathError::Outside {
            path: relative.to_owned(),
        };
        if relative.is_empty() || relative.len() > PATH_BYTES_MAX {
            return Err(outside());
        }
        let mut parts = Vec::new();
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(name) => {
                    parts.push(CString::new(name.as_bytes()).map_err(|_| outside())?);
                }
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(outside())
                }
            }
        }
        if parts.is_empty() {
            return Err(outside());
        }
        // The root itself is the service's own directory: opening it may follow a link.
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
            .map_err(|source| BeneathError::Io {
                path: relative.to_owned(),
                source,
            })?;
        Ok(Self {
            via: Cell::new(via),
            shown: relative,
            root: root.into(),
            parts,
        })
    }

    fn last(&self) -> &CStr {
        // `open` refuses a path without components.
        self.parts.last().map_or(c"", CString::as_c_str)
    }

    /// Opens the path's parent directory, walking component by component; `create` makes the
    /// missing ones (`mkdirat` relative to the directory already open).
    fn parent(&self, create: bool) -> Result<OwnedFd, BeneathError> {
        let mut dir = self.root.try_clone().map_err(|e| self.io(e))?;
        let parents = self.parts.len().saturating_sub(1);
        for (index, name) in self.parts.iter().take(parents).enumerate() {
            let next = match self.step(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Err(error) if create && error.raw_os_error() == Some(libc::ENOENT) => {
                    make_dir(&dir, name).map_err(|e| self.error(index + 1, e))?;
                    self.step(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                }
                other => other,
            };
            dir = next.map_err(|e| self.error(index + 1, e))?;
        }
        Ok(dir)
    }

    /// Opens the path itself with `flags`: in one `openat2` from the root when it can, else (or
    /// when directories must be made first) from its parent.
    fn open_file(&self, flags: libc::c_int, create: bool) -> Result<File, BeneathError> {
        if self.via.get() == Via::Openat2 {
            match openat2(&self.root, &self.joined(self.parts.len()), flags, FILE_MODE) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => self.no_openat2(),
                Err(error) if create && error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(self.error(self.parts.len(), error)),
            }
        }
        let parent = self.parent(create)?;
        self.step(&parent, self.last(), flags, FILE_MODE)
            .map(File::from)
            .map_err(|e| self.error(self.parts.len(), e))
    }

    /// Opens one component `name` of `dir`: `openat2` refusing links and escapes, or (without
    /// it) `openat` with `O_NOFOLLOW`, which for a single component is the same rule.
    fn step(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        if self.via.get() == Via::Openat2 {
            match openat2(dir, name, flags, mode) {
                Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => self.no_openat2(),
                other => return other,
            }
        }
        openat_nofollow(dir, name, flags, mode)
    }

    /// The kernel has no `openat2`: this path and every later one are walked.
    fn no_openat2(&self) {
        NO_OPENAT2.store(true, Ordering::Relaxed);
        self.via.set(Via::Walk);
    }

    /// The first `count` components joined with `/`.
    fn joined(&self, count: usize) -> CString {
        let mut bytes = Vec::new();
        for (index, part) in self.parts.iter().take(count).enumerate() {
            if index > 0 {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(part.as_bytes());
        }
        // The parts hold no NUL (checked in `open`), so neither does their join.
        CString::new(bytes).unwrap_or_default()
    }

    /// Names what went wrong resolving the first `count` components: a link on the way (looked
    /// for again with `lstat` semantics, for the message), a missing part, or the system's answer.
    fn error(&self, count: usize, error: io::Error) -> BeneathError {
        let path = self.shown.to_owned();
        let code = error.raw_os_error().unwrap_or(0);
        if [libc::ELOOP, libc::EXDEV, libc::ENOTDIR, libc::EMLINK].contains(&code) {
            if let Some(link) = self.first_link(count) {
                return BeneathError::Link { path, link };
            }
        }
        match code {
            libc::ENOENT => BeneathError::NotFound { path },
            // ENXIO: a FIFO without a reader or a socket, opened without blocking.
            libc::ENOTDIR | libc::EISDIR | libc::ENXIO => BeneathError::NotAFile { path },
            _ => BeneathError::Io {
                path,
                source: error,
            },
        }
    }

    fn io(&self, source: io::Error) -> BeneathError {
        BeneathError::Io {
            path: self.shown.to_owned(),
            source,
        }
    }

    /// The shortest prefix (of the first `count` components) that is a symbolic link.
    fn first_link(&self, count: usize) -> Option<String> {
        (1..=count.min(self.parts.len())).find_map(|length| {
            let prefix = self.joined(length);
            let stat = stat_at(&self.root, &prefix).ok()?;
            (stat.st_mode & libc::S_IFMT == libc::S_IFLNK)
                .then(|| String::from_utf8_lossy(prefix.as_bytes()).into_owned())
        })
    }
}

fn read_sync(root: &Path, relative: &str, via: Via) -> Result<String, BeneathError> {
    let target = Target::open(root, relative, via)?;
    let file = target.open_file(libc::O_RDONLY | libc::O_NONBLOCK, false)?;
    let meta = file.metadata().map_err(|e| target.io(e))?;
    if !meta.is_file() {
        return Err(BeneathError::NotAFile {
            path: relative.to_owned(),
        });
    }
    let too_large = || BeneathError::TooLarge {
        path: relative.to_owned(),
        max: READ_BYTES_MAX,
    };
    if meta.len() > READ_BYTES_MAX {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(READ_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| target.io(e))?;
    if bytes.len() as u64 > READ_BYTES_MAX {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| target.io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn write_sync(root: &Path, relative: &str, bytes: &[u8], via: Via) -> Result<(), BeneathError> {
    use std::os::unix::fs::MetadataExt;
    let target = Target::open(root, relative, via)?;
    // Not truncated at open: a file shared by a hard link is refused before it is touched.
    let mut file = target.open_file(libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK, true)?;
    let meta = file.metadata().map_err(|e| target.io(e))?;
    if !meta.is_file() {
        return Err(BeneathError::NotAFile {
            path: relative.to_owned(),
        });
    }
    if meta.nlink() > 1 {
        return Err(BeneathError::HardLinked {
            path: relative.to_owned(),
            links: meta.nlink(),
        });
    }
    file.set_len(0).map_err(|e| target.io(e))?;
    file.write_all(bytes).map_err(|e| target.io(e))
}

fn remove_sync(root: &Path, relative: &str, via: Via) -> Result<(), BeneathError> {
    let target = Target::open(root, relative, via)?;
    let parent = target.parent(false)?;
    match kind_of(&parent, target.last()).map_err(|e| target.error(target.parts.len(), e))? {
        Kind::File => {}
        Kind::Link => {
            return Err(BeneathError::Link {
                path: relative.to_owned(),
                link: relative.to_owned(),
            })
        }
        Kind::Dir | Kind::Other => {
            return Err(BeneathError::NotAFile {
                path: relative.to_owned(),
            })
        }
    }
    // SAFETY: unlinkat(2) reads the NUL-terminated name and uses an open directory descriptor;
    // flags 0 removes a non-directory entry of that directory itself, following nothing.
    let done = unsafe { libc::unlinkat(parent.as_raw_fd(), target.last().as_ptr(), 0) };
    if done != 0 {
        return Err(target.error(target.parts.len(), io::Error::last_os_error()));
    }
    Ok(())
}

fn kind_sync(root: &Path, relative: &str, via: Via) -> Result<Option<Kind>, BeneathError> {
    let target = Target::open(root, relative, via)?;
    let parent = match target.parent(false) {
        Ok(parent) => parent,
        Err(BeneathError::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    match kind_of(&parent, target.last()) {
        Ok(kind) => Ok(Some(kind)),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(target.error(target.parts.len(), error)),
    }
}

/// What `name` in `dir` is, the name itself not followed.
fn kind_of(dir: &OwnedFd, name: &CStr) -> io::Result<Kind> {
    let stat = stat_at(dir, name)?;
    Ok(match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Link,
        _ => Kind::Other,
    })
}

/// `fstatat(dir, path, AT_SYMLINK_NOFOLLOW)`.
fn stat_at(dir: &OwnedFd, path: &CStr) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat(2) writes one `struct stat` into the buffer given, reads the NUL-terminated
    // path and uses an open descriptor; the buffer is only read after it answered 0.
    let done = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            path.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat(2) answered 0, so it filled the whole struct.
    Ok(unsafe { stat.assume_init() })
}

/// `openat2(dir, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, asked again (bounded)
/// when a concurrent rename made the kernel answer `EAGAIN`.
fn openat2(
    dir: &OwnedFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let creates = flags & libc::O_CREAT != 0;
    // SAFETY: `open_how` is three integers (libc marks it non-exhaustive, so it cannot be
    // built field by field); all zeroes is a valid value, and the fields are then set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags | libc::O_CLOEXEC).map_err(io::Error::other)?;
    how.mode = if creates { u64::from(mode) } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    for _ in 0..RACE_TRIES {
        // SAFETY: openat2(2) reads the NUL-terminated path and one `open_how` of the size
        // given, and uses an open directory descriptor; it returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                std::ptr::from_ref(&how),
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            return owned(fd);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EAGAIN) {
            return Err(error);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// `openat(dir, name, flags | O_NOFOLLOW)`: a link as `name` fails with `ELOOP`.
fn openat_nofollow(
    dir: &OwnedFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: openat(2) reads the NUL-terminated name and uses an open directory descriptor;
    // it returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    owned(libc::c_long::from(fd))
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `mkdirat(dir, name)`; one that exists already (made by a racing writer) is fine, and is then
/// opened without following like any other.
fn make_dir(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: mkdirat(2) reads the NUL-terminated name and uses an open directory descriptor;
    // it never follows a link as its last component.
    let done = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), DIR_MODE) };
    if done != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EEXIST) {
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const BOTH: [Via; 2] = [Via::Openat2, Via::Walk];

    /// A root `<tmp>/root` and a directory `<tmp>/outside` next to it.
    fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        (tmp, root, outside)
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn plain_files_are_written_read_and_removed() {
        for via in BOTH {
            let (_tmp, root, _) = dirs();
            write_sync(&root, "a.txt", b"one two", via).unwrap();
            assert_eq!(read_sync(&root, "a.txt", via).unwrap(), "one two");
            write_sync(&root, "./a.txt", b"three", via).unwrap();
            assert_eq!(
                read_sync(&root, "a.txt", via).unwrap(),
                "three",
                "{via:?} truncates"
            );
            assert_eq!(kind_sync(&root, "a.txt", via).unwrap(), Some(Kind::File));
            remove_sync(&root, "a.txt", via).unwrap();
            assert_eq!(kind_sync(&root, "a.txt", via).unwrap(), None);
            assert!(matches!(
                read_sync(&root, "a.txt", via),
                Err(BeneathError::NotFound { .. })
            ));
        }
        if NO_OPENAT2.load(Ordering::Relaxed) {
            eprintln!("this kernel has no openat2: the `Openat2` cases were walked too");
        }
    }

    #[test]
    fn missing_directories_are_created() {
        for via in BOTH {
            let (_tmp, root, _) = dirs();
            write_sync(&root, "a/b/c/d.md", b"deep", via).unwrap();
            assert_eq!(
                std::fs::read_to_string(root.join("a/b/c/d.md")).unwrap(),
                "deep"
            );
            assert_eq!(kind_sync(&root, "a/b", via).unwrap(), Some(Kind::Dir));
            assert_eq!(kind_sync(&root, "a/x/y", via).unwrap(), None);
        }
    }

    #[test]
    fn a_linked_directory_pointing_out_is_refused_and_nothing_is_written_outside() {
        for via in BOTH {
            let (_tmp, root, outside) = dirs();
            symlink(&outside, root.join("docs")).unwrap();
            let error = write_sync(&root, "docs/x", b"out", via).unwrap_err();
            assert_eq!(
                error.to_string(),
                "`docs/x` passes through a symbolic link (`docs`); refusing to follow it",
                "{via:?}"
            );
            assert!(error.is_refusal());
            let error = write_sync(&root, "docs/new/deeper/x", b"out", via).unwrap_err();
            assert!(
                matches!(error, BeneathError::Link { ref link, .. } if link == "docs"),
                "{error}"
            );
            assert!(empty(&outside), "{via:?} wrote outside");
            std::fs::write(outside.join("secret"), "s").unwrap();
            assert!(matches!(
                read_sync(&root, "docs/secret", via),
                Err(BeneathError::Link { .. })
            ));
            assert!(matches!(
                remove_sync(&root, "docs/secret", via),
                Err(BeneathError::Link { .. })
            ));
            assert!(matches!(
                kind_sync(&root, "docs/secret", via),
                Err(BeneathError::Link { .. })
            ));
            assert_eq!(kind_sync(&root, "docs", via).unwrap(), Some(Kind::Link));
            assert!(outside.join("secret").exists());
        }
    }

    #[test]
    fn a_linked_file_is_refused_for_read_write_and_remove() {
        for via in BOTH {
            let (_tmp, root, outside) = dirs();
            std::fs::write(outside.join("target"), "kept").unwrap();
            symlink(outside.join("target"), root.join("a.txt")).unwrap();
            // A dangling link would be created through by a plain open with O_CREAT.
            symlink(outside.join("made"), root.join("dangling")).unwrap();
            for path in ["a.txt", "dangling"] {
                let error = write_sync(&root, path, b"x", via).unwrap_err();
                assert!(
                    matches!(error, BeneathError::Link { .. }),
                    "{via:?}: {error}"
                );
            }
            assert!(matches!(
                read_sync(&root, "a.txt", via),
                Err(BeneathError::Link { .. })
            ));
            assert!(matches!(
                remove_sync(&root, "a.txt", via),
                Err(BeneathError::Link { .. })
            ));
            assert_eq!(
                std::fs::read_to_string(outside.join("target")).unwrap(),
                "kept"
            );
            assert!(!outside.join("made").exists());
            assert!(
                root.join("a.txt").symlink_metadata().is_ok(),
                "the link stays"
            );
        }
    }

    /// Even a link that resolves inside the root is refused: whether it stays inside depends on
    /// its text and on every directory it passes through, which the hostile content controls
    /// and can change between a check and the use; a refusal without exception cannot be raced.
    #[test]
    fn a_link_that_stays_inside_is_refused_too() {
        for via in BOTH {
            let (_tmp, root, _) = dirs();
            std::fs::create_dir_all(root.join("real")).unwrap();
            std::fs::write(root.join("real/file"), "inside").unwrap();
            symlink("real", root.join("alias")).unwrap();
            symlink("file", root.join("real/alias")).unwrap();
            for path in ["alias/file", "real/alias"] {
                assert!(
                    matches!(read_sync(&root, path, via), Err(BeneathError::Link { .. })),
                    "{via:?} {path}"
                );
                assert!(matches!(
                    write_sync(&root, path, b"x", via),
                    Err(BeneathError::Link { .. })
                ));
            }
            assert_eq!(
                std::fs::read_to_string(root.join("real/file")).unwrap(),
                "inside"
            );
        }
    }

    #[test]
    fn dot_dot_absolute_and_empty_paths_are_refused_before_any_call() {
        for via in BOTH {
            let (_tmp, root, outside) = dirs();
            for path in [
                "../outside/x",
                "a/../../outside/x",
                "a/..",
                "/tmp/x",
                "",
                ".",
            ] {
                let error = write_sync(&root, path, b"x", via).unwrap_err();
                assert!(
                    matches!(error, BeneathError::Outside { .. }) && error.is_refusal(),
                    "{via:?} {path}: {error}"
                );
                assert!(matches!(
                    read_sync(&root, path, via),
                    Err(BeneathError::Outside { .. })
                ));
            }
            assert!(empty(&outside));
            assert!(empty(&root), "no directory was made on the way");
        }
    }

    #[test]
    fn a_hard_linked_file_is_not_written() {
        for via in BOTH {
            let (_tmp, root, outside) = dirs();
            std::fs::write(outside.join("shared"), "kept").unwrap();
            if std::fs::hard_link(outside.join("shared"), root.join("shared")).is_err() {
                eprintln!("skipped: no hard links across these directories");
                return;
            }
            let error = write_sync(&root, "shared", b"x", via).unwrap_err();
            assert!(
                matches!(error, BeneathError::HardLinked { links: 2, .. }),
                "{error}"
            );
            assert_eq!(
                std::fs::read_to_string(outside.join("shared")).unwrap(),
                "kept"
            );
        }
    }

    #[test]
    fn a_fifo_or_a_directory_is_not_a_file_and_never_blocks() {
        for via in BOTH {
            let (_tmp, root, _) = dirs();
            let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
            // SAFETY: mkfifo(3) reads a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
            std::fs::create_dir_all(root.join("dir")).unwrap();
            for path in ["fifo", "dir"] {
                assert!(matches!(
                    read_sync(&root, path, via),
                    Err(BeneathError::NotAFile { .. })
                ));
            }
            for path in ["dir", "fifo"] {
                assert!(matches!(
                    write_sync(&root, path, b"x", via),
                    Err(BeneathError::NotAFile { .. })
                ));
            }
            assert_eq!(kind_sync(&root, "fifo", via).unwrap(), Some(Kind::Other));
        }
    }

    #[test]
    fn a_file_past_the_read_limit_is_refused() {
        let (_tmp, root, _) = dirs();
        let file = File::create(root.join("big")).unwrap();
        file.set_len(READ_BYTES_MAX + 1).unwrap();
        assert!(matches!(
            read_sync(&root, "big", Via::Openat2),
            Err(BeneathError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn the_async_calls_run_on_the_blocking_pool() {
        let (_tmp, root, outside) = dirs();
        symlink(&outside, root.join(".glitchlab")).unwrap();
        write(&root, "notes/a.md", b"note".to_vec()).await.unwrap();
        assert_eq!(read_to_string(&root, "notes/a.md").await.unwrap(), "note");
        assert_eq!(kind(&root, ".glitchlab").await.unwrap(), Some(Kind::Link));
        assert!(write(&root, ".glitchlab/notes/a.md", b"x".to_vec())
            .await
            .unwrap_err()
            .is_refusal());
        remove_file(&root, "notes/a.md").await.unwrap();
        assert!(empty(&outside));
    }
}
