//! `glitchlab task ...` and `glitchlab tree` against the real service, as an operator runs them.

use std::process::Command;

use crate::helpers::{git_repo, Service, ADMIN_TOKEN};

fn glitchlab(base: &str, args: &[&str]) -> std::process::Output {
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
    let service = Service::start(root.path()).await;
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
