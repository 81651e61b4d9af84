//! The docs run as written: the fenced `sh` blocks of the README's two walkthroughs and of
//! docs/api.md are taken out of the Markdown and run by `sh -eu` against a live service started
//! here (its address and token in `GLITCHLAB_URL`/`GLITCHLAB_TOKEN`, the binary on `PATH`), so a
//! command that fails — a missing bearer header (curl fails on an HTTP error status here), a
//! commit without a git identity, a CLI that ignores `GLITCHLAB_URL` — fails the test. The only
//! rewrites: `glitchlab serve` lines go (the test starts the service), `/tmp/` is the test's temp
//! dir and the sample app's port `8081` a free one.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Options, Service, ADMIN_TOKEN};
use crate::ops::{free_port, start, AppReaper};

/// How long one section's commands may run before they are killed and the test fails.
const SECTION_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the sample app may take to exit after the walkthrough stopped it.
const APP_EXIT_WAIT: Duration = Duration::from_secs(10);
/// The sample app's port in the README and examples/ops.yaml.
const DOCS_APP_PORT: &str = "8081";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_doc(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// The fenced `sh` blocks of `markdown`: all of them, or those of the `## heading` section.
fn sh_blocks(markdown: &str, heading: Option<&str>) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut in_section = heading.is_none();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        if let Some(text) = block.as_mut() {
            if line.starts_with("```") {
                blocks.push(std::mem::take(text));
                block = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if let (Some(heading), Some(title)) = (heading, line.strip_prefix("## ")) {
            in_section = title.trim() == heading;
        } else if in_section && line.trim_end() == "```sh" {
            block = Some(String::new());
        }
    }
    blocks
}

/// A block as the test runs it (see the module comment).
fn runnable(block: &str, tmp: &Path, port: Option<u16>) -> String {
    let text = block
        .lines()
        .filter(|line| !line.trim_start().starts_with("glitchlab serve"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("/tmp/", &format!("{}/", tmp.display()));
    match port {
        Some(port) => text.replace(DOCS_APP_PORT, &port.to_string()),
        None => text,
    }
}

/// Runs `script` with `sh -eu` from the repository's root against `base`, with no git identity
/// but the one the script sets itself and a `curl` that fails on an HTTP error status; killed
/// (its whole process group) past [`SECTION_TIMEOUT`]. Whether it succeeded, and its output.
fn run_script(script: &str, base: &str, tmp: &Path) -> (bool, String) {
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let git_config = home.join("gitconfig");
    std::fs::write(&git_config, "[user]\n\tuseConfigOnly = true\n").unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_glitchlab")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = tmp.join("docs-run.log");
    let prelude = "curl() { command curl --fail-with-body \"$@\"; }\n";
    let mut child = Command::new("sh")
        .arg("-euc")
        .arg(format!("{prelude}{script}"))
        .current_dir(repo_root())
        .env("PATH", path)
        .env("HOME", &home)
        .env("GIT_CONFIG_GLOBAL", &git_config)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GLITCHLAB_URL", base)
        .env("GLITCHLAB_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("GLITCHLAB_TIMEOUT")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("EMAIL")
        .env_remove("GIT_AUTHOR_NAME")
        .env_remove("GIT_AUTHOR_EMAIL")
        .env_remove("GIT_COMMITTER_NAME")
        .env_remove("GIT_COMMITTER_EMAIL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SECTION_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let group = i32::try_from(child.id()).unwrap();
            // SAFETY: signalling the process group this test started for the script.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    match status {
        Some(status) => (status.success(), format!("{status}\n{output}")),
        None => (false, format!("killed after {SECTION_TIMEOUT:?}\n{output}")),
    }
}

/// Runs the blocks of one section in one shell (its variables carry from block to block).
async fn run_section(blocks: &[String], base: &str, tmp: &Path, port: Option<u16>) {
    let script: Vec<String> = blocks.iter().map(|b| runnable(b, tmp, port)).collect();
    let script = script.join("\n");
    let (base, dir) = (base.to_owned(), tmp.to_path_buf());
    let (ok, output) = tokio::task::spawn_blocking({
        let script = script.clone();
        move || run_script(&script, &base, &dir)
    })
    .await
    .unwrap();
    assert!(
        ok,
        "the docs' commands failed:\n{script}\n---- output:\n{output}"
    );
}

/// The README's walkthrough, then docs/api.md's `sh` examples (the task routes with curl and the
/// bearer header, the ledger CLI) against the same service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_and_the_api_examples_run_as_written() {
    let root = tempfile::tempdir().unwrap();
    let tmp = root.path().join("tmp");
    let service_root = root.path().join("service");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&service_root).unwrap();
    let service = Service::start_in_process(&service_root, Options::default()).await;

    let walkthrough = sh_blocks(&read_doc("README.md"), Some("Walkthrough"));
    assert_eq!(
        walkthrough.len(),
        1,
        "the README's walkthrough is one sh block"
    );
    run_section(&walkthrough, &service.base, &tmp, None).await;
    let hello = std::fs::read_to_string(tmp.join("demo/hello.txt")).unwrap();
    assert_eq!(hello, "hello\n");

    let api = sh_blocks(&read_doc("docs/api.md"), None);
    let curls = api.iter().filter(|b| b.contains("curl ")).count();
    assert!(
        curls >= 2 && api.len() >= 3,
        "docs/api.md's sh blocks: {api:#?}"
    );
    run_section(&api, &service.base, &tmp, None).await;
}

/// The README's ops walkthrough: deploy, approve, a rolled-back release, a killed app brought
/// back, and the clean-up, which leaves no sample app running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_ops_walkthrough_runs_as_written_and_leaves_nothing_running() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let tmp: PathBuf = root.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let port = free_port();
    let blocks = sh_blocks(&read_doc("README.md"), Some("Ops walkthrough"));
    assert_eq!(
        blocks.len(),
        1,
        "the README's ops walkthrough is one sh block"
    );
    // What comes before `glitchlab serve` (the app's repository) runs before the service starts.
    let (before, after) = blocks[0]
        .split_once("\nglitchlab serve")
        .expect("the ops walkthrough starts the service");
    let nowhere = "http://127.0.0.1:9";
    run_section(&[before.to_owned()], nowhere, &tmp, Some(port)).await;
    let ops_yaml = runnable(&read_doc("examples/ops.yaml"), &tmp, Some(port));
    let service = start(root.path(), &ops_yaml, Vec::new()).await;
    let after = format!("glitchlab serve{after}");
    run_section(&[after], &service.base, &tmp, Some(port)).await;

    let deadline = Instant::now() + APP_EXIT_WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the sample app still answers on {port} after the walkthrough's clean-up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
