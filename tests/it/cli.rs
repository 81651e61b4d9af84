//! `glitchlab task ...` and `glitchlab tree` against the real service, as an operator runs them.

use std::process::Command;

use crate::helpers::{git_repo, Options, Service, ADMIN_TOKEN};

/// Runs the CLI binary against `base` with the admin token; its output.
pub(crate) fn glitchlab(base: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(args)
        .env("GLITCHLAB_URL", base)
        .env("GLITCHLAB_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_follows_a_task_and_the_exit_code_says_how_it_ended() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let repo_arg = repo.display().to_string();
    let base = service.base.clone();

    let done = tokio::task::spawn_blocking({
        let (base, repo_arg) = (base.clone(), repo_arg.clone());
        move || {
            glitchlab(
                &base,
                &[
                    "task",
                    "submit",
                    "--repo",
                    &repo_arg,
                    "--title",
                    "hello",
                    "--verify",
                    "test -f hello.txt",
                    "--patch-cmd",
                    "echo hi > hello.txt",
                    "--wait",
                ],
            )
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout).to_string();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let id = stdout.lines().next().unwrap().trim().to_owned();
    assert!(stdout.contains("done"), "{stdout}");

    let failing = tokio::task::spawn_blocking({
        let (base, repo_arg) = (base.clone(), repo_arg.clone());
        move || {
            glitchlab(
                &base,
                &[
                    "task",
                    "submit",
                    "--repo",
                    &repo_arg,
                    "--title",
                    "never",
                    "--verify",
                    "false",
                    "--patch-cmd",
                    "echo x > x.txt",
                    "--wait",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        failing.status.code(),
        Some(3),
        "dead_letter is exit 3: {}",
        String::from_utf8_lossy(&failing.stderr)
    );
    assert!(String::from_utf8_lossy(&failing.stderr).contains("VERIFY_FAILED"));

    let listed = tokio::task::spawn_blocking({
        let base = base.clone();
        move || glitchlab(&base, &["task", "list", "--status", "done"])
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id) && !table.contains("never"), "{table}");

    let logs = tokio::task::spawn_blocking({
        let (base, id) = (base.clone(), id.clone());
        move || glitchlab(&base, &["task", "logs", &id])
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("task.finished"));

    let tree = tokio::task::spawn_blocking(move || glitchlab(&base, &["tree"]))
        .await
        .unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout).to_string();
    assert!(tree.starts_with("compass [running"), "{tree}");
    assert!(tree.contains("  patch [running"), "{tree}");
}

/// `task watch` (like `submit --wait`) prints the running commands' live output, line by line
/// and prefixed with the persona, and ends with the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_live_output_of_the_running_commands() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let repo_arg = repo.display().to_string();
    let base = service.base.clone();
    let submitted = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            glitchlab(
                &base,
                &[
                    "task",
                    "submit",
                    "--repo",
                    &repo_arg,
                    "--title",
                    "watched",
                    "--verify",
                    "for i in 1 2 3 4 5; do echo checking $i; sleep 0.2; done; test -f hello.txt",
                    "--patch-cmd",
                    "sleep 1; echo patching; echo hi > hello.txt",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(submitted.status.code(), Some(0));
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    let watched = tokio::task::spawn_blocking(move || glitchlab(&base, &["task", "watch", &id]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&watched.stdout).to_string();
    assert_eq!(watched.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("  patch| patching\n"), "{stdout}");
    for i in 1..=5 {
        assert!(
            stdout.contains(&format!("  circuit| checking {i}\n")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("done"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_and_deploy_commands_read_and_refuse_as_the_service_does() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, posted) = service
        .post(
            "/v1/alerts",
            &serde_json::json!({"app": "web", "signal": "disk_full"}),
        )
        .await;
    assert_eq!(status, 202, "{posted}");
    let id = posted["incidents"][0].as_str().unwrap().to_owned();
    let base = service.base.clone();
    let (listed, shown, deploys, refused) = tokio::task::spawn_blocking(move || {
        (
            glitchlab(&base, &["incident", "list", "--app", "web"]),
            glitchlab(&base, &["incident", "show", &id]),
            glitchlab(&base, &["deploy", "list"]),
            glitchlab(&base, &["deploy", "approve", "no-such-deploy"]),
        )
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.status.success(), "{table}");
    let id = posted["incidents"][0].as_str().unwrap();
    assert!(
        table.contains(id) && table.contains("needs_human"),
        "{table}"
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["id"], id);
    assert!(deploys.status.success());
    assert!(String::from_utf8_lossy(&deploys.stdout).trim().is_empty());
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("DEPLOY_NOT_FOUND"));
}

/// A client command whose reader goes away (`glitchlab task list --json | head -c0`) ends quietly
/// by SIGPIPE, as other Unix tools do, instead of panicking on the write.
#[tokio::test]
async fn a_closed_pipe_ends_a_client_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let root = tempfile::tempdir().unwrap();
    let service = Service::start(root.path()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["task", "list", "--json"])
        .env("GLITCHLAB_URL", &service.base)
        .env("GLITCHLAB_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the command has its answer to write.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        output.status
    );
}

/// A factory name the registry cannot hold as a key is refused before anything connects.
#[test]
fn a_factory_with_an_unusable_name_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args([
            "factory",
            "--nats",
            "nats://127.0.0.1:1",
            "--name",
            "bad name",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--name `bad name`"), "{stderr}");
}
