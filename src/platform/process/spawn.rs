//! Starting a child without copying the service: a `posix_spawn` (a vfork) wherever the child
//! needs nothing run between fork and exec.
//!
//! The service's own umask is private ([`crate::platform::private`]); the commands it runs get
//! back the one it was started with. Set in the child (`pre_exec`), that makes std `fork`: the
//! service's page tables are copied (about a millisecond at ~50 MB resident, measured as the
//! gap from a git child's fork to its exec) and every page the service writes afterwards takes a
//! copy-on-write fault. Instead, the spawning thread holds the inherited umask for the spawn call
//! only ([`private::hold_inherited_umask`]); a vforked child copies the calling thread's
//! filesystem attributes. std also forks to search a `PATH` the child's environment sets,
//! so a program named without a `/` is looked up in that `PATH` here first.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::process::{Child, Command};

use crate::platform::private::{self, UserUmask};

/// How a child got the umask it runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Umask {
    /// The spawn changed nothing: the service's umask was never made private.
    Unchanged,
    /// The spawning thread held the inherited umask for the call: std may vfork.
    FromThread,
    /// Restored in the forked child (this thread could not have a umask of its own).
    InChild,
}

/// Spawns `command`, the child getting the inherited umask ([`private::hold_inherited_umask`]).
/// Nothing else may have been added to run in the child; see the module doc.
pub(super) fn spawn_with_user_umask(command: &mut Command) -> std::io::Result<(Child, Umask)> {
    spawn_holding(command, private::hold_inherited_umask())
}

fn spawn_holding(command: &mut Command, umask: UserUmask) -> std::io::Result<(Child, Umask)> {
    match umask {
        UserUmask::NotPrivate => Ok((command.spawn()?, Umask::Unchanged)),
        UserUmask::Held(held) => {
            let spawned = command.spawn();
            drop(held);
            Ok((spawned?, Umask::FromThread))
        }
        UserUmask::Unavailable(mask) => {
            restore_in_child(command, mask);
            Ok((command.spawn()?, Umask::InChild))
        }
    }
}

/// Has the child set `mask` itself, between fork and exec.
pub(super) fn restore_in_child(command: &mut Command, mask: libc::mode_t) {
    // SAFETY: umask(2) is async-signal-safe, cannot fail and touches no memory of the parent; it
    // runs in the forked child before exec.
    unsafe {
        command.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// Where `program` is in the child's `path` (its `PATH`), when std would search it itself (and
/// fork for that): a name without a `/`, a `PATH` of absolute dirs. `None` leaves the search to
/// std: a name with a `/`, an empty or relative `PATH` entry met before a match (the child's
/// working dir would count), or no match (std's error then names the program).
pub(super) fn resolve(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.contains('/') || program.is_empty() {
        return None;
    }
    for dir in std::env::split_paths(path?) {
        if !dir.is_absolute() {
            return None;
        }
        let candidate = dir.join(program);
        if is_executable_file(&candidate) {
            return Some(candidate);
        }
    }
    None
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Umask:` of this thread (`/proc/thread-self`) or of the whole process's main thread.
    fn umask_of(which: &str) -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{which}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    /// The child runs with the mask the thread holds; the thread and the process keep theirs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_child_gets_the_held_umask_and_the_service_keeps_its_own() {
        let (thread, process) = (umask_of("thread-self"), umask_of("self"));
        let asked = if thread == 0o027 { 0o037 } else { 0o027 };
        let mut command = Command::new(resolve("sh", std::env::var_os("PATH").as_deref()).unwrap());
        command
            .args(["-c", "umask"])
            .stdout(std::process::Stdio::piped());
        let (child, way) = spawn_holding(&mut command, hold(asked)).unwrap();
        let output = child.wait_with_output().await.unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            u32::from_str_radix(printed.trim(), 8).unwrap(),
            asked,
            "{way:?}"
        );
        assert_eq!(umask_of("thread-self"), thread);
        assert_eq!(umask_of("self"), process);
        // Both ways are right; the fast one is taken wherever the kernel lets a thread unshare.
        assert!(matches!(way, Umask::FromThread | Umask::InChild), "{way:?}");
    }

    /// What `hold_inherited_umask` does, for a mask of the test's choosing (the process's own
    /// inherited umask is set once, by `serve`).
    fn hold(mask: libc::mode_t) -> UserUmask {
        // SAFETY: unshare(CLONE_FS) and umask(2) touch no memory; this test's thread only.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return UserUmask::Unavailable(mask);
        }
        let own = unsafe { libc::umask(mask) };
        UserUmask::Held(private::HeldUmask::new_for_test(own))
    }

    #[test]
    fn a_program_is_found_in_the_childs_path_only_where_std_would_search() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        let path =
            std::env::join_paths(["/nonexistent-glitchlab", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolve("tool", Some(&path)), Some(tool.clone()));
        // Not executable: skipped, as execvp would.
        assert_eq!(resolve("plain", Some(&path)), None);
        // A name with a slash is not searched; no PATH leaves it to std.
        assert_eq!(resolve("./tool", Some(&path)), None);
        assert_eq!(resolve("tool", None), None);
        // A relative entry before the match would be the child's working dir: left to std.
        let relative = std::env::join_paths(["bin", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolve("tool", Some(&relative)), None);
    }
}
