//! The disk under the store: which I/O errors are disk faults (full, failing), how much space is
//! free, and the reserve — a ballast file of `[storage] reserve_bytes` in the data dir.
//!
//! Why a ballast: sled needs room to commit anything, its own recovery included (a reopen writes a
//! snapshot). When the disk fills, the writer deletes the ballast: the space it held lets the
//! store reopen and commit the records that must not be lost (task finishes, ledger settlements)
//! while intake stays refused (`507 STORAGE_FULL`). Once the disk has room for the ballast and as
//! much again, it is written back and intake reopens.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The ballast's file name in the data dir.
pub(crate) const RESERVE_FILE: &str = "storage.reserve";
/// The file a recovery probe writes, syncs and removes in the data dir.
const PROBE_FILE: &str = "storage.probe";
/// Its size: one page, enough to learn whether the disk takes a write.
const PROBE_FILE_BYTES: u64 = 4096;
/// The ballast is written in pieces of this size (a bound on the buffer it needs).
const RESERVE_CHUNK_BYTES: usize = 64 * 1024;

/// `ENOSPC`, `EDQUOT`, `EIO` and `EROFS` as Linux numbers them.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const EIO: i32 = 5;
const EROFS: i32 = 30;

/// What kind of disk fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No space (or quota) left: recovers when space returns.
    Full,
    /// The device fails or went read-only: recovers when a probe write succeeds.
    Failed,
}

/// The fault `error` is, if it is one. sled hands its stored error out as a copy that keeps the
/// kind and the `Debug` text but not the OS number, so all three are looked at.
pub(crate) fn classify(error: &io::Error) -> Option<FaultKind> {
    match error.raw_os_error() {
        Some(ENOSPC | EDQUOT) => return Some(FaultKind::Full),
        Some(EIO | EROFS) => return Some(FaultKind::Failed),
        _ => {}
    }
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => return Some(FaultKind::Full),
        io::ErrorKind::ReadOnlyFilesystem => return Some(FaultKind::Failed),
        _ => {}
    }
    let text = format!("{error:?}");
    if text.contains("code: 28,") || text.contains("code: 122,") {
        Some(FaultKind::Full)
    } else if text.contains("code: 5,") || text.contains("code: 30,") {
        Some(FaultKind::Failed)
    } else {
        None
    }
}

/// `error` as the store answers it: `Full` or `Failed` when it is a disk fault, else `Sled`.
pub(crate) fn store_error(error: &io::Error) -> StoreError {
    match classify(error) {
        Some(FaultKind::Full) => StoreError::Full(error.to_string()),
        Some(FaultKind::Failed) => StoreError::Failed(error.to_string()),
        None => StoreError::Sled(error.to_string()),
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: `statvfs` only writes the struct it is given; `path` is a valid C string.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Both are u64 on 64-bit Linux but narrower elsewhere: the conversion is for those.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_bytes) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(blocks.saturating_mul(block_bytes))
}

/// The ballast that keeps `bytes` of the data dir's disk for the store's own recovery, in two
/// files of half each: `storage.reserve`, released when the disk fills while the service runs,
/// and `storage.reserve.start`, released only by a start that finds the disk too full for sled to
/// open (sled writes a snapshot as it opens) — so a `kill -9` on a full disk never leaves a data
/// dir that cannot start.
#[derive(Debug, Clone)]
pub(crate) struct Reserve {
    /// `<data_dir>/storage.reserve`.
    running: PathBuf,
    /// `<data_dir>/storage.reserve.start`.
    start: PathBuf,
    /// Both files together; 0 turns the reserve off.
    bytes: u64,
}

impl Reserve {
    /// The reserve of `bytes` in `data_dir` (not written yet: see [`Reserve::restore`]).
    pub(crate) fn new(data_dir: &Path, bytes: u64) -> Self {
        Self {
            running: data_dir.join(RESERVE_FILE),
            start: data_dir.join(format!("{RESERVE_FILE}.start")),
            bytes,
        }
    }

    /// Bytes free on the reserve's (the data dir's) disk; 0 when that cannot be told.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.running
            .parent()
            .and_then(|dir| free_bytes(dir).ok())
            .unwrap_or(0)
    }

    /// Writes and syncs a small file beside the reserve (then removes it): whether the disk
    /// takes writes again, asked without touching the database.
    pub(crate) fn probe_file(&self) -> io::Result<()> {
        let path = self.running.with_file_name(PROBE_FILE);
        let written = write_zeros(&path, PROBE_FILE_BYTES);
        let _ = fs::remove_file(&path);
        written
    }

    /// Each file's size.
    fn half(&self) -> u64 {
        self.bytes / 2
    }

    fn file_held(&self, path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|meta| meta.len() >= self.half())
    }

    /// Whether the ballast is in place (or the reserve is off): intake may write.
    pub(crate) fn held(&self) -> bool {
        self.bytes == 0 || (self.file_held(&self.running) && self.file_held(&self.start))
    }

    /// Deletes the running half, giving its space to the store; answers whether it freed
    /// anything.
    pub(crate) fn release(&self) -> bool {
        self.release_file(&self.running)
    }

    /// Deletes the start half (at a start that cannot open the store otherwise), and the
    /// running half if it is still there; answers whether it freed anything.
    pub(crate) fn release_for_start(&self) -> bool {
        let running = self.release_file(&self.running);
        self.release_file(&self.start) || running
    }

    fn release_file(&self, path: &Path) -> bool {
        match fs::remove_file(path) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    bytes = self.half(),
                    "storage reserve released: the disk is full; intake is refused until space returns"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Writes the missing halves back when the disk has room for them and as much again;
    /// answers whether the whole ballast is in place now. A write that fails half-way is
    /// removed (it would hold space for nothing).
    pub(crate) fn restore(&self) -> bool {
        if self.held() {
            return true;
        }
        let missing: Vec<&PathBuf> = [&self.start, &self.running]
            .into_iter()
            .filter(|path| !self.file_held(path))
            .collect();
        let Some(dir) = self.running.parent() else {
            return false;
        };
        let needed = self.half().saturating_mul(missing.len() as u64);
        if free_bytes(dir).unwrap_or(0) < needed.saturating_mul(2) {
            return false;
        }
        missing.into_iter().all(|path| self.write_file(path))
    }

    fn write_file(&self, path: &Path) -> bool {
        let partial = path.with_extension("partial");
        let written = write_zeros(&partial, self.half()).and_then(|()| fs::rename(&partial, path));
        match written {
            Ok(()) => true,
            Err(error) => {
                let _ = fs::remove_file(&partial);
                tracing::warn!(%error, "could not write the storage reserve back yet");
                false
            }
        }
    }
}

/// Writes `bytes` zero bytes to a new file at `path` and syncs it (real blocks: a sparse file
/// would reserve nothing).
fn write_zeros(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let chunk = vec![0_u8; RESERVE_CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        let piece =
            usize::try_from(left).map_or(RESERVE_CHUNK_BYTES, |l| l.min(RESERVE_CHUNK_BYTES));
        file.write_all(&chunk[..piece])?;
        left -= piece as u64;
    }
    file.sync_all()
}

/// Files sled leaves behind when a write of its own was cut off (a full disk, a crash): a
/// snapshot it never finished (`snap.*.generating`, which sled would read as the newest snapshot
/// and fail on), or an empty `conf` (which sled rewrites when missing). Moved into
/// `<db>/../db.aside/` with a log line each, never deleted; answers how many were moved.
pub(crate) fn move_aside_partial_files(db: &Path) -> io::Result<usize> {
    let Ok(entries) = fs::read_dir(db) else {
        return Ok(0);
    };
    let aside = db.with_file_name("db.aside");
    let mut moved = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let length = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let partial_snapshot = name.starts_with("snap.") && name.ends_with(".generating");
        // sled refuses a conf of 8 bytes or less as corrupt; it writes a new one when none exists.
        let empty_conf = name == "conf" && length <= 8;
        if !partial_snapshot && !empty_conf {
            continue;
        }
        fs::create_dir_all(&aside)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let target = aside.join(format!("{name}.{stamp}"));
        fs::rename(entry.path(), &target)?;
        tracing::warn!(
            file = %entry.path().display(),
            bytes = length,
            moved_to = %target.display(),
            "moved aside a partial file sled left behind (a write cut off by a full disk or a crash)"
        );
        moved += 1;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_faults_are_told_apart_from_other_errors() {
        let full = io::Error::from_raw_os_error(ENOSPC);
        assert_eq!(classify(&full), Some(FaultKind::Full));
        // sled's clone of its stored error: the kind and the Debug text, no OS number.
        let copied = io::Error::new(full.kind(), format!("{full:?}"));
        assert_eq!(classify(&copied), Some(FaultKind::Full));
        let failed = io::Error::from_raw_os_error(EIO);
        let copied = io::Error::new(failed.kind(), format!("{failed:?}"));
        assert_eq!(classify(&copied), Some(FaultKind::Failed));
        assert_eq!(
            classify(&io::Error::from_raw_os_error(EROFS)),
            Some(FaultKind::Failed)
        );
        assert_eq!(classify(&io::Error::other("could not acquire lock")), None);
        assert_eq!(classify(&io::Error::from_raw_os_error(2)), None);
    }

    #[test]
    fn partial_sled_files_are_moved_aside_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("glitchlab-aside-{}", std::process::id()));
        let db = dir.join("db");
        fs::create_dir_all(&db).unwrap();
        fs::write(db.join("snap.00000000000012AB.generating"), b"").unwrap();
        fs::write(db.join("snap.00000000000012AA"), b"a complete snapshot").unwrap();
        fs::write(db.join("conf"), b"").unwrap();
        fs::write(db.join("db"), b"log").unwrap();
        assert_eq!(move_aside_partial_files(&db).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(&db)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["db", "snap.00000000000012AA"]);
        assert_eq!(fs::read_dir(dir.join("db.aside")).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reserve_is_written_released_and_written_back() {
        let dir = std::env::temp_dir().join(format!("glitchlab-reserve-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let reserve = Reserve::new(&dir, 100_000);
        assert!(!reserve.held());
        assert!(reserve.restore());
        assert_eq!(fs::metadata(dir.join(RESERVE_FILE)).unwrap().len(), 50_000);
        assert_eq!(
            fs::metadata(dir.join("storage.reserve.start"))
                .unwrap()
                .len(),
            50_000
        );
        assert!(reserve.release());
        assert!(!reserve.held());
        assert!(
            dir.join("storage.reserve.start").exists(),
            "a running fault keeps the start half"
        );
        assert!(reserve.restore());
        assert!(reserve.release_for_start());
        assert!(!dir.join("storage.reserve.start").exists());
        assert!(reserve.restore());
        assert!(Reserve::new(&dir, 0).held(), "a reserve of 0 is off");
        fs::remove_dir_all(&dir).unwrap();
    }
}
