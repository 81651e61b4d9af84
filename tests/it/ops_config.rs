//! Issue 24 (items 4 and 6) against the real service: a `local` deploy is healthy only when the
//! release glitchlab started is what serves its port, and `ops.yaml` is checked strictly at start
//! (types with their line, configured files that must exist, branches that must resolve, renamed
//! apps that keep their release).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::{serve_with_config, serve_with_ops};
use crate::ops::{
    answers_within, commit_all, deploy_healthy, free_port, group_gone, local_ops, recorded_pid,
    sample_repo, service_events, start, wait_for_events, wait_until, AppReaper,
};

/// A stranger on the app's port: answers `200 ok` to every request until dropped.
struct Stranger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stranger {
    fn listen(port: u16) -> Stranger {
        Stranger::serve(TcpListener::bind(("127.0.0.1", port)).unwrap())
    }

    fn serve(listener: TcpListener) -> Stranger {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut request = [0_u8; 2048];
                        let _ = stream.read(&mut request);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Stranger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A deploy onto a port another listener holds (answering 200 on `/health`, so the HTTP check
/// alone passed and the deploy said `healthy`) fails `PORT_IN_USE` before anything is stopped or
/// started, and is never reported healthy; the stranger keeps its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_onto_a_port_another_process_holds_fails_port_in_use() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let _stranger = Stranger::listen(port);
    let service = start(root.path(), &local_ops(&repo, port, 0, ""), Vec::new()).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap();
    let done = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["finished_at"].is_string()
    })
    .await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "PORT_IN_USE", "{done:#}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{done:#}"
    );
    assert!(done["health"].is_null(), "no health check ran: {done:#}");
    assert!(
        !root.path().join("data/releases/web/app.json").exists(),
        "a release was started on a held port"
    );
}

/// A deploy while a stranger listens on the app's port on another loopback address (`[::1]`, next
/// to the running release on `127.0.0.1`) fails `PORT_IN_USE` before the swap: the running
/// release is not stopped and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deploy_leaves_the_running_release_serving() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let service = start(root.path(), &local_ops(&repo, port, 0, ""), Vec::new()).await;
    deploy_healthy(&service, "web").await;
    let first = answers_within(port, Duration::from_secs(10)).await;
    let Ok(listener) = TcpListener::bind(("::1", port)) else {
        eprintln!("skipped: this host has no IPv6 loopback to hold the port on beside the app");
        return;
    };
    let _stranger = Stranger::serve(listener);
    std::fs::write(repo.join("VERSION"), "2\n").unwrap();
    commit_all(&repo, "v2");
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap();
    let done = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["finished_at"].is_string()
    })
    .await;
    assert_eq!(done["error"]["code"], "PORT_IN_USE", "{done:#}");
    assert_eq!(done["status"], "failed", "{done:#}");
    let still = answers_within(port, Duration::from_secs(5)).await;
    assert_eq!(
        still["pid"], first["pid"],
        "the running release was replaced: {still}"
    );
    assert_eq!(still["version"], "1", "{still}");
}

/// A check's `url: 42` (YAML reads it as the text `42`) stops start-up naming the file, the
/// line, the app and the check; it used to pass and then fail every run, restarting a healthy
/// app.
#[test]
fn a_check_url_that_is_not_a_url_stops_start_up_naming_its_line() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let checks =
        "    checks:\n      - {name: web-http, schedule: \"*/5 * * * * *\", kind: http, url: 42}\n";
    let (status, stderr) = serve_with_ops(root.path(), &local_ops(&repo, free_port(), 0, checks));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("ops.yaml: line 12: app `web`: check `web-http`: url `42` must be an http"),
        "{stderr}"
    );
}

/// A typo in an app's `branch:` stops start-up naming the app and the branch (it used to be
/// accepted: the deploy failed, an outage incident and a bugfix task followed).
#[test]
fn an_unknown_branch_stops_start_up() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let ops = local_ops(&repo, free_port(), 0, "").replace("branch: main", "branch: mian");
    let (status, stderr) = serve_with_ops(root.path(), &ops);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("ops.yaml: line 4: app `web`: branch `mian` does not exist in repo"),
        "{stderr}"
    );
}

/// An ops file or a runbooks dir named in the config that does not exist stops start-up with
/// its path (it used to start silently with 0 apps, or 0 runbooks).
#[test]
fn a_configured_ops_file_or_runbooks_dir_that_is_missing_stops_start_up() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("opps.yaml");
    let config = format!("[paths]\nops_file = \"{}\"\n", missing.display());
    let (status, stderr) = serve_with_config(root.path(), &config);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: does not exist", missing.display()))
            && stderr.contains("paths.ops_file"),
        "{stderr}"
    );
    let ops = root.path().join("ops.yaml");
    std::fs::write(&ops, "apps: {}\n").unwrap();
    let missing = root.path().join("runbook");
    let config = format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        ops.display(),
        missing.display()
    );
    let (status, stderr) = serve_with_config(root.path(), &config);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: does not exist", missing.display()))
            && stderr.contains("paths.runbooks_dir"),
        "{stderr}"
    );
}

/// Renaming an app with `previous_names: [old]` keeps its running release across the restart
/// (the same process serves, adopted, not started again); renaming it again without saying so
/// stops the old name's release deliberately (`app.removed_stopped`), not as a stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_names_keep_the_release_across_a_rename_and_restart() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let ops = local_ops(&repo, port, 0, "");
    let mut service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "web").await;
    let first = answers_within(port, Duration::from_secs(10)).await;
    assert!(service.terminate(Duration::from_secs(30)).success());

    let renamed = ops.replace("  web:\n", "  site:\n    previous_names: [web]\n");
    service = start(root.path(), &renamed, Vec::new()).await;
    let again = answers_within(port, Duration::from_secs(10)).await;
    assert_eq!(again["pid"], first["pid"], "a new process serves: {again}");
    // Recovery runs as the service starts: wait for its account.
    wait_for_events(&service, "app.adopted", 1).await;
    let moved = service_events(&service, "app.renamed").await;
    assert_eq!(moved.len(), 1, "{moved:#?}");
    assert_eq!(moved[0]["data"], json!({"from": "web", "to": "site"}));
    let adopted = service_events(&service, "app.adopted").await;
    assert_eq!(adopted.len(), 1, "{adopted:#?}");
    assert_eq!(adopted[0]["data"]["app"], "site", "{adopted:#?}");
    assert!(service_events(&service, "app.started").await.is_empty());
    let group = recorded_pid(root.path(), "site").unwrap();
    assert!(service.terminate(Duration::from_secs(30)).success());

    // Renamed again, without `previous_names`: the release of `site` is stopped on purpose.
    let forgotten = ops.replace("  web:\n", "  shop:\n");
    service = start(root.path(), &forgotten, Vec::new()).await;
    assert!(
        group_gone(group, Duration::from_secs(20)).await,
        "the release of `site` still runs"
    );
    // The event is written once the group is gone: wait for it.
    wait_for_events(&service, "app.removed_stopped", 1).await;
    let stopped = service_events(&service, "app.removed_stopped").await;
    assert_eq!(stopped.len(), 1, "{stopped:#?}");
    assert_eq!(stopped[0]["data"]["app"], "site", "{stopped:#?}");
    assert_eq!(stopped[0]["data"]["process_group"], group, "{stopped:#?}");
    assert!(service_events(&service, "app.unaccounted_stopped")
        .await
        .is_empty());
}
