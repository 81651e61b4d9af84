//! `glitchlab task ...` and `glitchlab tree` against the real service, as an operator runs them.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{git_repo, shell_task, Options, Service, ADMIN_TOKEN};

/// Runs the CLI binary against `base` with the admin token; its output.
pub(crate) fn glitchlab(base: &str, args: &[&str]) -> std::process::Output {
    glitchlab_with(base, args, &[])
}

/// [`glitchlab`] with more environment variables (`NO_COLOR`, `CLICOLOR_FORCE`); the colour
/// variables of the test's own environment are removed first.
pub(crate) fn glitchlab_with(
    base: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_glitchlab"));
    command
        .args(args)
        .env("GLITCHLAB_URL", base)
        .env("GLITCHLAB_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
    command.envs(env.iter().copied()).output().unwrap()
}

/// Runs the CLI off the test's runtime.
async fn run_cli(base: &str, args: &[&str]) -> std::process::Output {
    let base = base.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        glitchlab(&base, &args)
    })
    .await
    .unwrap()
}

/// The one JSON document on a command's stdout (anything else beside it fails the test).
fn only_json(what: &str, output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{what}: {:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{what}: stdout is not one JSON document ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
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

/// Every command against a running service reads `GLITCHLAB_URL` (nothing listens on the default
/// port here) and with `--json` prints one JSON document and nothing else on stdout;
/// `submit --json --wait` prints exactly one, the final task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_honours_glitchlab_url_and_prints_only_json() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let base = service.base.clone();
    let repo_arg = repo.display().to_string();
    let submit = [
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
        "--json",
        "--wait",
    ];
    let finished = only_json("submit --json --wait", &run_cli(&base, &submit).await);
    assert_eq!(finished["status"], "done", "{finished:#}");
    let id = finished["id"].as_str().unwrap().to_owned();
    let (status, posted) = service
        .post(
            "/v1/alerts",
            &serde_json::json!({"app": "web", "signal": "disk_full"}),
        )
        .await;
    assert_eq!(status, 202, "{posted}");
    let incident = posted["incidents"][0].as_str().unwrap().to_owned();
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "task", "submit", "--repo", &repo_arg, "--title", "t", "--verify", "true",
        ],
        vec!["task", "list"],
        vec!["task", "show", &id],
        vec!["task", "logs", &id],
        vec!["task", "runs", &id],
        vec!["task", "diff", &id],
        vec!["tree"],
        vec!["ledger", "balance", "user:local"],
        vec!["ledger", "history", "user:local"],
        vec!["ledger", "audit"],
        vec!["deploy", "list"],
        vec!["incident", "list"],
        vec!["incident", "show", &incident],
        vec!["silence", "list"],
        vec!["fleet", "list"],
    ];
    for mut command in commands {
        command.push("--json");
        let what = command.join(" ");
        only_json(&what, &run_cli(&base, &command).await);
    }
    // `ops deploy` reaches the same service: its refusal is the service's, not a connection error.
    let ops = run_cli(&base, &["ops", "deploy", "no-such-app", "--json"]).await;
    let stderr = String::from_utf8_lossy(&ops.stderr);
    assert_eq!(ops.status.code(), Some(1), "{stderr}");
    assert!(
        ops.stdout.is_empty() && !stderr.contains("cannot reach"),
        "{stderr}"
    );
    let human = run_cli(&base, &["ledger", "balance", "user:local"]).await;
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    assert!(
        human.contains("balance") && human.contains(" tokens") && human.contains('.'),
        "money in tokens with decimals: {human}"
    );
}

/// A usage error — clap's own or an unknown filter value — exits 64, never 2 (a failed task);
/// `--help` exits 0.
#[test]
fn usage_errors_exit_64_and_unknown_filters_are_refused() {
    let nowhere = "http://127.0.0.1:9";
    for args in [
        vec!["task", "list", "--status", "bogus"],
        vec!["deploy", "list", "--status", "bogus"],
        vec!["incident", "list", "--status", "bogus"],
        vec!["task", "frobnicate"],
        vec!["task", "show"],
        vec!["task", "list", "--no-such-flag"],
        vec![
            "task",
            "submit",
            "--repo",
            "/x",
            "--title",
            "t",
            "--verify",
            "true",
            "--review-policy",
            "later",
        ],
        vec!["completions", "tcsh"],
    ] {
        let output = glitchlab(nowhere, &args);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        glitchlab(nowhere, &["task", "--help"]).status.code(),
        Some(0)
    );
    let bash = glitchlab(nowhere, &["completions", "bash"]);
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("_glitchlab"));
    let fish = glitchlab(nowhere, &["completions", "fish"]);
    assert!(String::from_utf8_lossy(&fish.stdout).contains("complete -c glitchlab"));
}

/// A task is found by the web page's short id (its last 8 characters) and by any unique prefix
/// (8 characters when it is the only task of its minute); a prefix two tasks share is a usage
/// error naming both. `task logs` prints each event's time; output to a pipe or with `NO_COLOR`
/// has no escapes, and colour appears only when forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_resolve_by_short_id_or_unique_prefix_and_logs_print_times() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let base = service.base.clone();
    let first = service
        .submit(&shell_task(&repo, "echo a > a.txt", "test -f a.txt"))
        .await;
    let first = first["id"].as_str().unwrap().to_owned();
    service.wait_until_finished(&first).await;
    let by_prefix = run_cli(&base, &["task", "show", &first[..8], "--json"]).await;
    assert_eq!(
        only_json("8-character prefix", &by_prefix)["id"],
        first.as_str()
    );

    let second = service
        .submit(&shell_task(&repo, "echo b > b.txt", "test -f b.txt"))
        .await;
    let second = second["id"].as_str().unwrap().to_owned();
    service.wait_until_finished(&second).await;
    let short = &second[second.len() - 8..];
    let by_short = run_cli(&base, &["task", "show", short, "--json"]).await;
    assert_eq!(only_json("short id", &by_short)["id"], second.as_str());
    let shared = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared >= 1, "{first} {second}");
    let unique = run_cli(&base, &["task", "show", &second[..=shared], "--json"]).await;
    assert_eq!(only_json("unique prefix", &unique)["id"], second.as_str());
    let ambiguous = run_cli(&base, &["task", "show", &first[..shared]]).await;
    let stderr = String::from_utf8_lossy(&ambiguous.stderr);
    assert_eq!(ambiguous.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("ambiguous") && stderr.contains(&first) && stderr.contains(&second),
        "{stderr}"
    );

    let logs = run_cli(&base, &["task", "logs", short]).await;
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(logs.contains("task.finished"), "{logs}");
    for line in logs.lines() {
        let at = line.get(..23).unwrap_or_default();
        assert!(
            chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.3f").is_ok(),
            "every event line starts with its time: {line}"
        );
    }
    let (base2, id2) = (base.clone(), second.clone());
    let (piped, no_color, forced) = tokio::task::spawn_blocking(move || {
        let show = ["task", "show", id2.as_str()];
        (
            glitchlab_with(&base2, &show, &[]),
            glitchlab_with(&base2, &show, &[("NO_COLOR", "1")]),
            glitchlab_with(&base2, &show, &[("CLICOLOR_FORCE", "1")]),
        )
    })
    .await
    .unwrap();
    for (what, output) in [("piped", &piped), ("NO_COLOR", &no_color)] {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("done") && !text.contains('\u{1b}'),
            "{what}: {text:?}"
        );
    }
    let text = String::from_utf8_lossy(&forced.stdout);
    assert!(
        text.contains("\u{1b}["),
        "CLICOLOR_FORCE colours the status: {text:?}"
    );
}

/// `submit --review-policy manual` parks the task at its approval gate; `task diff` shows what
/// approving lands, `task runs` what ran, and `task approve` by short id delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_user_can_review_the_diff_and_approve() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let base = service.base.clone();
    let repo_arg = repo.display().to_string();
    let submitted = run_cli(
        &base,
        &[
            "task",
            "submit",
            "--repo",
            &repo_arg,
            "--title",
            "reviewed",
            "--verify",
            "test -f review.txt",
            "--patch-cmd",
            "echo reviewed > review.txt",
            "--review-policy",
            "manual",
        ],
    )
    .await;
    assert!(submitted.status.success());
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if task["status"] == "awaiting_approval" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{task:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let short = id[id.len() - 8..].to_owned();
    let diff = run_cli(&base, &["task", "diff", &short]).await;
    let text = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(
        text.contains("+reviewed") && text.contains("review.txt"),
        "{text}"
    );
    let runs = run_cli(&base, &["task", "runs", &short]).await;
    let table = String::from_utf8_lossy(&runs.stdout).to_string();
    assert!(
        table.contains("patch") && table.contains("circuit") && table.contains("total cost"),
        "{table}"
    );
    let shown = run_cli(&base, &["task", "show", &short]).await;
    let summary = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        summary.contains("awaiting_approval") && summary.contains("reviewed"),
        "{summary}"
    );
    let approved = run_cli(&base, &["task", "approve", &short]).await;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
}

/// On a terminal (a pty from util-linux `script`), `task watch` shows its progress as one line
/// redrawn in place and colours the status; the same command on a pipe printed plain lines
/// above. Skips, saying why, where `script` is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_watch_draws_a_progress_line_in_colour() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` (a pty for the CLI) is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "sleep 2; echo a > a.txt",
            "test -f a.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let base = service.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        let bin = env!("CARGO_BIN_EXE_glitchlab");
        Command::new("script")
            .args(["-qec", &format!("{bin} task watch {id}"), "/dev/null"])
            .env("GLITCHLAB_URL", &base)
            .env("GLITCHLAB_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}");
    assert!(text.contains("\u{1b}["), "escapes on a terminal: {text:?}");
    // (`script` turns every newline into `\r\n`: only the erase-line escape says "redrawn".)
    assert!(
        text.contains("\u{1b}[2K"),
        "a line redrawn in place: {text:?}"
    );
    assert!(text.contains("done"), "{text:?}");
}
