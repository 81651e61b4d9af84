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

use crate::ops::{free_port, local_ops, sample_repo, start, wait_until, AppReaper};

/// A stranger on the app's port: answers `200 ok` to every request until dropped.
struct Stranger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stranger {
    fn listen(port: u16) -> Stranger {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
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
