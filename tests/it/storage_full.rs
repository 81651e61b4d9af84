//! A full disk is a state, not a crash (issue 22): the data dir on a small tmpfs, filled by a
//! filler file and by ordinary submits. Writes answer `507 STORAGE_FULL` with `Retry-After`, reads
//! keep answering, `/readyz` says `storage`, no actor restarts, and once the filler is deleted the
//! service takes work again within seconds without a restart (sled is reopened by its writer:
//! after an I/O error sled 0.34 refuses every write until reopened). A `kill -9` while full and a
//! start on the still-full disk serve reads, then recover by themselves. And a restart with a full
//! queue refuses the next submit from the very first request.
//!
//! The tmpfs tests need root (`mount`); they skip with a message elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, with_config, Service};

/// The tmpfs under the data dir: small enough to fill in seconds.
const TMPFS_SIZE: &str = "size=8m";
/// The storage reserve in these tests (1 MiB of the 8).
const CONFIG: &str = "[storage]\nreserve_bytes = 1048576\n[compass]\nmax_concurrent_tasks = 1\n";
/// Room left beside the filler: the store fills it with submits.
const HEADROOM_BYTES: u64 = 256 * 1024;
/// Most submits a fill sends before the disk must have answered 507.
const FILL_SUBMITS_MAX: usize = 3000;
/// How soon after space returns intake must work again (the brief's bound).
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

/// A tmpfs mounted at a test's data dir, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a small tmpfs at `dir`, or says why it cannot (not root, no `mount`).
    fn mount(dir: &Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: reads the effective user id.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir)
            .status();
        match mounted {
            Ok(status) if status.success() => Some(Self(dir.to_path_buf())),
            other => {
                eprintln!("skipped: cannot mount a tmpfs here ({other:?})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a filler file at `path` until the disk is full, then gives `headroom` bytes back.
fn fill(path: &Path, headroom: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![7_u8; 64 * 1024];
    let mut written = 0_u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = file.flush();
    file.set_len(written.saturating_sub(headroom)).unwrap();
}

/// A task that holds the only slot (so every other task stays `queued`, and writes no
/// worktree).
fn sleeper(repo: &Path) -> Value {
    shell_task(repo, "sleep 600", "true")
}

fn queued_task(repo: &Path, n: usize) -> Value {
    let mut task = shell_task(repo, "true", "true");
    task["title"] = json!(format!("filling task {n}"));
    task["description"] = json!("x".repeat(2000));
    task
}

/// Submits until the store answers 507; answers the acknowledged ids and the 507's headers and
/// body.
async fn submit_until_full(
    service: &Service,
    repo: &Path,
) -> (Vec<String>, reqwest::header::HeaderMap, Value) {
    let mut acknowledged = Vec::new();
    for n in 0..FILL_SUBMITS_MAX {
        let (status, headers, body) = service.post_full("/v1/tasks", &queued_task(repo, n)).await;
        match status {
            201 => acknowledged.push(body["id"].as_str().unwrap().to_owned()),
            507 => return (acknowledged, headers, body),
            // The reopen after the fault may answer one write 503 before the reserve is counted.
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected answer {other}: {body}\n{}", service.log()),
        }
    }
    panic!(
        "the disk never answered full after {FILL_SUBMITS_MAX} submits\n{}",
        service.log()
    );
}

/// Every actor's restart count, which must stay 0 through a full disk.
async fn restarts(service: &Service) -> Vec<(String, u64)> {
    let (status, actors) = service.get("/v1/actors").await;
    assert_eq!(status, 200);
    actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["restarts"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(_, restarts)| *restarts > 0)
        .collect()
}

/// Submits every 100 ms until one is accepted; answers how long that took.
async fn submit_until_accepted(service: &Service, repo: &Path) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = service.post("/v1/tasks", &queued_task(repo, 0)).await;
        if status == 201 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "intake did not come back within {RECOVERY_LIMIT:?} of space returning: {status} {body}\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the store answers reads and that every acknowledged task is there, once.
async fn assert_all_present(service: &Service, acknowledged: &[String]) {
    let (status, _) = service.get("/v1/tasks?limit=10").await;
    assert_eq!(status, 200, "listing tasks is a read");
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?limit=1000&cursor={c}"),
            None => "/v1/tasks?limit=1000".to_owned(),
        };
        let (status, page) = service.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for task in page["tasks"].as_array().unwrap() {
            let id = task["id"].as_str().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "task {id} listed twice");
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    for id in acknowledged {
        assert!(seen.contains(id), "acknowledged task {id} is missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers_without_a_restart() {
    let _heavy = crate::helpers::heavy().await;
    let root = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&root.path().join("data")) else {
        return;
    };
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(CONFIG)).await;
    let pid = service.pid();
    service.submit(&sleeper(&repo)).await;
    let filler = root.path().join("data").join("filler");
    fill(&filler, HEADROOM_BYTES);

    let (mut acknowledged, headers, body) = submit_until_full(&service, &repo).await;
    assert_eq!(body["error"]["code"], "STORAGE_FULL", "{body}");
    assert!(
        headers.contains_key("retry-after"),
        "507 carries Retry-After"
    );
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    let message = ready["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("storage (full"), "{ready}");
    assert_all_present(&service, &acknowledged).await;
    assert_eq!(service.pid(), pid);
    assert_eq!(service.get("/healthz").await.0, 200, "the process is alive");
    assert_eq!(
        restarts(&service).await,
        Vec::<(String, u64)>::new(),
        "no actor restarted"
    );

    assert!(metrics_text(&service)
        .await
        .contains("glitchlab_store_full 1"));

    std::fs::remove_file(&filler).unwrap();
    let recovery = submit_until_accepted(&service, &repo).await;
    eprintln!("intake came back {recovery:?} after the filler was deleted");
    let (status, body) = service.post("/v1/tasks", &queued_task(&repo, 1)).await;
    assert_eq!(status, 201, "{body}");
    acknowledged.push(body["id"].as_str().unwrap().to_owned());
    assert_all_present(&service, &acknowledged).await;
    assert_eq!(
        restarts(&service).await,
        Vec::<(String, u64)>::new(),
        "no actor restarted"
    );
    let started = Instant::now();
    while service.get("/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "/readyz stayed 503\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        service.log().contains("reopened after a disk fault"),
        "sled was reopened"
    );
    assert!(metrics_text(&service)
        .await
        .contains("glitchlab_store_full 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_disk_serves_reads_and_recovers_by_itself() {
    let _heavy = crate::helpers::heavy().await;
    let root = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&root.path().join("data")) else {
        return;
    };
    let repo = git_repo(root.path());
    let mut service = Service::start_with(root.path(), with_config(CONFIG)).await;
    service.submit(&sleeper(&repo)).await;
    let filler = root.path().join("data").join("filler");
    fill(&filler, HEADROOM_BYTES);
    let (acknowledged, _, _) = submit_until_full(&service, &repo).await;
    // Whatever the reserve left: gone too, so the next start finds the disk completely full.
    fill(&root.path().join("data").join("filler-2"), 0);
    service.kill_9();

    let mut service = Service::start_with(root.path(), with_config(CONFIG)).await;
    assert_all_present(&service, &acknowledged).await;
    let (status, body) = service.post("/v1/tasks", &queued_task(&repo, 0)).await;
    assert!(
        matches!(status, 507 | 503),
        "intake is refused on a full disk: {status} {body}"
    );
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");

    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(root.path().join("data").join("filler-2")).unwrap();
    let recovery = submit_until_accepted(&service, &repo).await;
    eprintln!("intake came back {recovery:?} after space returned (no restart)");
    let log = service.log();
    eprintln!(
        "the start needed its reserve: {}",
        log.contains("opening the store with the reserve")
    );
    assert_all_present(&service, &acknowledged).await;
    // And the next start is an ordinary one: nothing to delete by hand.
    service.terminate(Duration::from_secs(30));
    let service = Service::start_with(root.path(), with_config(CONFIG)).await;
    assert_all_present(&service, &acknowledged).await;
    let (status, body) = service.post("/v1/tasks", &queued_task(&repo, 2)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_full_queue_refuses_from_the_first_request() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[compass]\nmax_concurrent_tasks = 1\nmax_queued_tasks = 3\n";
    let mut service = Service::start_with(root.path(), with_config(config)).await;
    service.submit(&sleeper(&repo)).await;
    let mut queued = 0;
    let started = Instant::now();
    while queued < 3 && started.elapsed() < Duration::from_secs(30) {
        let (status, body) = service.post("/v1/tasks", &queued_task(&repo, queued)).await;
        match status {
            201 => queued += 1,
            // The sleeper is not taken off the queue yet: its place counts a little longer.
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(queued, 3);
    let (status, _) = service.post("/v1/tasks", &queued_task(&repo, 9)).await;
    assert_eq!(status, 429, "the queue is full");
    service.terminate(Duration::from_secs(30));

    // The queue load made much slower than a submission waits for it (5 s), as 100,000 tasks
    // make it.
    let slow_reload = crate::helpers::Options {
        env: vec![("FAILPOINTS".into(), "compass.reload=return(15000)".into())],
        ..with_config(config)
    };
    let service = Service::start_with(root.path(), slow_reload).await;
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queue (loading)"),
        "{ready}"
    );
    let (status, headers, body) = service
        .post_full("/v1/tasks", &queued_task(&repo, 10))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("NOT_READY")),
        "the first submit after the restart: {body}"
    );
    assert!(headers.contains_key("retry-after"));
    // Once loaded: the bound holds; never a 201.
    let started = Instant::now();
    loop {
        let (status, body) = service.post("/v1/tasks", &queued_task(&repo, 11)).await;
        let code = body["error"]["code"].as_str().unwrap_or_default();
        match (status, code) {
            (429, "QUEUE_FULL") => break,
            (503, "NOT_READY") if started.elapsed() < Duration::from_secs(30) => {}
            _ => panic!("submit after the restart: {status} {body}"),
        }
    }
    let metrics = crate::helpers::client()
        .get(format!("{}/metrics", service.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("glitchlab_queue_reload_seconds"),
        "{metrics}"
    );
    assert!(service.log().contains("compass loaded the queue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_snapshot_left_by_a_cut_off_start_is_moved_aside() {
    let root = tempfile::tempdir().unwrap();
    let mut service = Service::start(root.path()).await;
    let (status, _) = service.get("/v1/tasks").await;
    assert_eq!(status, 200);
    service.terminate(Duration::from_secs(30));
    // What a start on a full disk left before this fix: a 0-byte snapshot sled never finished,
    // newer than every other, which sled then read as corrupt at every start.
    let db = root.path().join("data").join("db");
    std::fs::write(db.join("snap.FFFFFFFFFFFFFFF0.generating"), b"").unwrap();
    std::fs::write(db.join("snap.FFFFFFFFFFFFFFF1.generating"), b"half a snap").unwrap();

    let service = Service::start(root.path()).await;
    let (status, body) = service.get("/v1/tasks").await;
    assert_eq!(status, 200, "{body}");
    assert!(service
        .log()
        .contains("moved aside a partial file sled left behind"));
    let aside = root.path().join("data").join("db.aside");
    assert_eq!(
        std::fs::read_dir(aside).unwrap().count(),
        2,
        "both kept, not deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_answers_503_and_the_store_reopens_when_it_heals() {
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join("disk-fails");
    let options = crate::helpers::Options {
        env: vec![(
            "FAILPOINTS".into(),
            format!("store.eio=return({})", marker.display()),
        )],
        ..with_config(CONFIG)
    };
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), options).await;
    let first = service.submit(&queued_task(&repo, 0)).await;
    std::fs::write(&marker, b"").unwrap();

    let (status, headers, body) = service.post_full("/v1/tasks", &queued_task(&repo, 1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("STORAGE_FAILED")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("storage (failed"),
        "{ready}"
    );
    let (status, _) = service
        .get(&format!("/v1/tasks/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "reads go on");

    std::fs::remove_file(&marker).unwrap();
    let recovery = submit_until_accepted(&service, &repo).await;
    eprintln!("writes came back {recovery:?} after the disk healed");
    assert_eq!(
        restarts(&service).await,
        Vec::<(String, u64)>::new(),
        "no actor restarted"
    );
    assert!(service.log().contains("reopened after a disk fault"));
}

async fn metrics_text(service: &Service) -> String {
    crate::helpers::client()
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
