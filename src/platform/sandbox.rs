//! The sandbox of engine and verify processes: on Linux, Landlock confines them to writing only
//! their worktree, its git directory, a private temp dir and `/dev`; everything else is
//! read-only.
//!
//! Like Codex CLI's Linux sandbox, it works by re-executing this binary: the governed executor
//! runs `glitchlab sandbox-exec --write DIR ... -- sh -c <command>`, which restricts itself with
//! Landlock (a restriction every child inherits and none can lift) and then `exec`s the command.
//! Nothing runs between `fork` and `exec` in the service itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

/// The hidden subcommand that applies the sandbox and execs the command.
pub const SANDBOX_SUBCOMMAND: &str = "sandbox-exec";

/// Exit code of `sandbox-exec` when it cannot confine or start the command.
const SANDBOX_FAILURE_EXIT: i32 = 126;

/// The Landlock ABI this build asks for; older kernels get what they support (best effort).
const LANDLOCK_ABI: ABI = ABI::V3;

pub use crate::config::SandboxMode;

/// Whether this kernel enforces Landlock, found by confining a throwaway thread (Landlock
/// restricts the calling thread only, so the rest of the service is untouched).
pub fn landlock_enforced() -> Result<(), String> {
    let probe = std::thread::spawn(|| {
        let status = ruleset(&[])?;
        match status {
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
            RulesetStatus::NotEnforced => Err("the kernel does not enforce Landlock".to_owned()),
        }
    });
    probe
        .join()
        .unwrap_or_else(|_| Err("the Landlock probe panicked".to_owned()))
}

/// Restricts the calling thread: read everywhere, write only beneath `writable`.
fn ruleset(writable: &[PathBuf]) -> Result<RulesetStatus, String> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(LANDLOCK_ABI))))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, all)))
        .and_then(|r| r.restrict_self())
        .map_err(|error| format!("landlock: {error}"))?;
    Ok(status.ruleset)
}

/// The command line that runs `program args` confined to `writable`.
pub fn wrap(
    exe: &Path,
    writable: &[PathBuf],
    program: &str,
    args: &[String],
) -> (String, Vec<String>) {
    let mut wrapped = vec![SANDBOX_SUBCOMMAND.to_owned()];
    for dir in writable {
        wrapped.push("--write".into());
        wrapped.push(dir.display().to_string());
    }
    wrapped.push("--".into());
    wrapped.push(program.to_owned());
    wrapped.extend(args.iter().cloned());
    (exe.display().to_string(), wrapped)
}

/// `glitchlab sandbox-exec --write DIR ... -- PROGRAM ARGS...`: confine, then exec. Never
/// returns; on failure it exits 126 with the reason on stderr.
pub fn exec_main(args: Vec<OsString>) -> ! {
    use std::os::unix::process::CommandExt;
    let (writable, command) = match parse(args) {
        Ok(parsed) => parsed,
        Err(reason) => fail(&reason),
    };
    match ruleset(&writable) {
        Ok(RulesetStatus::NotEnforced) => fail("the kernel does not enforce Landlock"),
        Ok(_) => {}
        Err(reason) => fail(&reason),
    }
    let Some((program, rest)) = command.split_first() else {
        fail("no command after --");
    };
    let error = std::process::Command::new(program).args(rest).exec();
    fail(&format!(
        "could not start {}: {error}",
        program.to_string_lossy()
    ))
}

fn parse(args: Vec<OsString>) -> Result<(Vec<PathBuf>, Vec<OsString>), String> {
    let mut writable = Vec::new();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--write") => writable.push(PathBuf::from(
                iter.next().ok_or("--write needs a directory")?,
            )),
            Some("--") => return Ok((writable, iter.collect())),
            _ => return Err(format!("unexpected argument {}", arg.to_string_lossy())),
        }
    }
    Err("missing -- before the command".into())
}

fn fail(reason: &str) -> ! {
    eprintln!("glitchlab sandbox: {reason}");
    std::process::exit(SANDBOX_FAILURE_EXIT)
}
