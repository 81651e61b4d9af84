//! Start-up refuses configuration mistakes (issue #16 item 8): the service exits non-zero and
//! names the file, the line and the field, instead of running with a guess.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::git_repo;

/// Runs `glitchlab serve` with `ops_yaml` as its ops file; its exit status and stderr.
pub(crate) fn serve_with_ops(root: &Path, ops_yaml: &str) -> (std::process::ExitStatus, String) {
    let ops_file = root.join("ops.yaml");
    std::fs::write(&ops_file, ops_yaml).unwrap();
    serve_with_config(
        root,
        &format!("[paths]\nops_file = \"{}\"\n", ops_file.display()),
    )
}

/// Runs `glitchlab serve` with `config_toml` as its config file; its exit status and stderr
/// (ended after 60 s if it accepted the config and runs).
pub(crate) fn serve_with_config(
    root: &Path,
    config_toml: &str,
) -> (std::process::ExitStatus, String) {
    let config = root.join("glitchlab.toml");
    std::fs::write(&config, config_toml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(root.join("data"))
        .env_remove("GLITCHLAB_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A service that accepted the file would run for ever: give it a deadline, then end it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_duplicate_app_key_stops_start_up_naming_its_line() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let app = format!(
        "    repo: {}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\"}}\n",
        repo.display()
    );
    let (status, stderr) =
        serve_with_ops(root.path(), &format!("apps:\n  web:\n{app}  web:\n{app}"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("ops.yaml: line 6"), "{stderr}");
    assert!(stderr.contains("app `web` is declared twice"), "{stderr}");
}
