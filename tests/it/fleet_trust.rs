//! Issue 30, with real parts: a `nats-server` with the `authorization` block of docs/fleet.md
//! (a `control` user, one user per factory limited to what a factory needs, and a `rogue` user
//! with a factory's permissions but no factory key), the service and factory processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glitchlab::model::fleet::trust::{FactoryKey, Kind};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    enrol, fleet_config, free_port, nats_server_available, placements, task, wait_until, Factory,
    Nats, Running, LEASE_SECS,
};
use crate::helpers::{git, git_repo, Options, Service};

/// The NATS password of `user` in these tests.
fn password(user: &str) -> String {
    format!("pw-{user}-0d5e")
}

/// A factory user's permissions, as docs/fleet.md documents them: pull jobs, renew and hand
/// back deliveries, read the buckets, write its own registry entry, publish results, output and
/// requests to the control plane, and read replies on its own inbox only.
fn factory_user(user: &str) -> String {
    let kv = [
        "glitchlab_factories",
        "glitchlab_classes",
        "glitchlab_control",
    ];
    let mut publish = vec![
        "$JS.API.INFO".to_owned(),
        "$JS.API.STREAM.INFO.glitchlab_jobs".to_owned(),
        "$JS.API.CONSUMER.INFO.glitchlab_jobs.*".to_owned(),
        "$JS.API.CONSUMER.MSG.NEXT.glitchlab_jobs.*".to_owned(),
        "$JS.ACK.glitchlab_jobs.>".to_owned(),
        format!("$KV.glitchlab_factories.{user}"),
        "glitchlab.results.>".to_owned(),
        "glitchlab.output.>".to_owned(),
        "glitchlab.control.>".to_owned(),
    ];
    for bucket in kv {
        publish.push(format!("$JS.API.STREAM.INFO.KV_{bucket}"));
        publish.push(format!("$JS.API.DIRECT.GET.KV_{bucket}.>"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.KV_{bucket}"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.KV_{bucket}.>"));
    }
    let publish: Vec<String> = publish.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "    {{ user: \"{user}\", password: \"{}\", permissions: {{\n      publish: {{ allow: [{}] }},\n      subscribe: {{ allow: [\"_INBOX_{user}.>\", \"glitchlab.stop.>\"] }}\n    }} }}\n",
        password(user),
        publish.join(", ")
    )
}

/// The server's config: JetStream under `dir`, the control plane's user, `factories`' users and
/// `rogue`.
fn auth_config(port: u16, dir: &Path, factories: &[&str]) -> String {
    let mut users = format!(
        "    {{ user: \"control\", password: \"{}\", permissions: {{ publish: \">\", subscribe: \">\" }} }}\n",
        password("control")
    );
    for user in factories.iter().chain(&["rogue"]) {
        users.push_str(&factory_user(user));
    }
    format!(
        "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\nauthorization {{\n  users: [\n{users}  ]\n}}\n",
        dir.display()
    )
}

/// A NATS server with authorization on; its `url` is the control plane's (with its user).
fn start_authed(root: &Path, factories: &[&str]) -> Nats {
    let port = free_port();
    let dir = root.join("nats");
    std::fs::create_dir_all(&dir).unwrap();
    let config = root.join("nats.conf");
    std::fs::write(&config, auth_config(port, &dir, factories)).unwrap();
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("nats.log")).unwrap())
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nats {
        url: user_url(port, "control"),
        port,
        dir,
        process: Some(Running(child)),
    }
}

fn user_url(port: u16, user: &str) -> String {
    format!("nats://{user}:{}@127.0.0.1:{port}", password(user))
}

/// A factory on the authed server as its own NATS user, with a key the service issued.
async fn start_factory(root: &Path, nats: &Nats, service: &Service, name: &str) -> Factory {
    let key = enrol(service, name).await;
    Factory::launch(root, &user_url(nats.port, name), name, &key, &[])
}

/// A client connected as `user` (replies on its own inbox, as its permissions want).
async fn connect_as(nats: &Nats, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .connection_timeout(Duration::from_secs(5))
        .user_and_password(user.to_owned(), password(user))
        .connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .expect("connect")
}

macro_rules! require_nats_here {
    () => {
        if !nats_server_available() {
            eprintln!("SKIPPED: nats-server is not installed (scripts/test installs it)");
            return;
        }
        let _machine = crate::helpers::heavy().await;
    };
}

/// The job of `task` a factory runs now, and which factory: once one does.
async fn running_job(service: &Service, task: &str) -> Option<(String, String, u64)> {
    let (_, fleet) = service.get("/v1/fleet").await;
    for factory in fleet["factories"].as_array()? {
        for job in factory["running"].as_array()? {
            if job["task_id"] == task {
                return Some((
                    factory["name"].as_str()?.to_owned(),
                    job["job_id"].as_str()?.to_owned(),
                    job["delivery"].as_u64()?,
                ));
            }
        }
    }
    None
}

fn commits_of(repo: &Path, id: &str) -> usize {
    let grep = format!("--grep=Glitchlab-Task: {id}");
    git(
        repo,
        &["log", "--format=%H", "--fixed-strings", &grep, "main"],
    )
    .lines()
    .count()
}

/// A metric's value in `/metrics` (0 when absent).
async fn metric(service: &Service, series: &str) -> f64 {
    let text = service
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Without credentials nothing connects; a factory needs a key the service issued for its name
/// (names are unique), and one with a key for another name is refused at start.
#[tokio::test]
async fn only_credentialed_clients_and_keyed_factories_get_in() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one", "two"]);
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("nats://127.0.0.1:{}", nats.port));
    let anonymous = tokio::time::timeout(Duration::from_secs(10), anonymous).await;
    assert!(
        !matches!(anonymous, Ok(Ok(_))),
        "a client without credentials connected"
    );
    let wrong = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .user_and_password("one".into(), "wrong".into())
        .connect(format!("nats://127.0.0.1:{}", nats.port));
    let wrong = tokio::time::timeout(Duration::from_secs(10), wrong).await;
    assert!(!matches!(wrong, Ok(Ok(_))), "a wrong password connected");

    let service = Service::start_with(
        root.path(),
        crate::helpers::with_config(&fleet_config(&nats)),
    )
    .await;
    let key = enrol(&service, "one").await;
    let (status, again) = service
        .post("/v1/fleet/factories", &json!({"name": "one"}))
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "FACTORY_EXISTS");
    let (status, bad) = service
        .post("/v1/fleet/factories", &json!({"name": "a.b"}))
        .await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (422, &json!("INVALID_FIELD"))
    );

    // `two` was never issued a key: `one`'s does not make it a factory.
    let refused = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args([
            "factory",
            "--nats",
            &user_url(nats.port, "two"),
            "--name",
            "two",
        ])
        .arg("--data-dir")
        .arg(root.path().join("two"))
        .env("GLITCHLAB_FACTORY_KEY", &key)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused this factory"), "{stderr}");
    assert!(!stderr.contains(&key), "the key was logged: {stderr}");
    let _one = Factory::launch(root.path(), &user_url(nats.port, "one"), "one", &key, &[]);
    wait_until("one is listed", Duration::from_secs(20), async || {
        let (_, fleet) = service.get("/v1/fleet").await;
        fleet["factories"].as_array().unwrap().len() == 1 && fleet["factories"][0]["name"] == "one"
    })
    .await;
}

/// A connected rogue (a valid NATS user, no factory key) forges a claim of delivery 99 and an
/// exit-0 result for the verify of a task whose verify fails: the task does not land, and the
/// forgeries are counted and logged on the task.
#[tokio::test]
async fn a_rogue_without_a_factory_key_cannot_land_a_failing_verify() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one"]);
    let repo = git_repo(root.path());
    let service = Service::start_with(
        root.path(),
        crate::helpers::with_config(&fleet_config(&nats)),
    )
    .await;
    let _one = start_factory(root.path(), &nats, &service, "one").await;
    let mut body = task(&repo, "Rogue target", "echo ok > f.txt", "sleep 6; false");
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut job = String::new();
    wait_until("the verify runs", Duration::from_secs(60), async || {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if task["stage"] != "verify" {
            return false;
        }
        match running_job(&service, &id).await {
            Some((_, running, _)) => {
                job = running;
                true
            }
            None => false,
        }
    })
    .await;
    let job_id: Uuid = job.parse().unwrap();
    let rogue = connect_as(&nats, "rogue").await;
    let guessed = FactoryKey::derive("glf_a-guess");
    // A claim of a delivery JetStream never made, in the name of the real factory.
    let claim = json!({
        "job_id": job_id, "delivery": 99, "factory": "one",
        "ack_subject": "$JS.ACK.glitchlab_jobs.jobs-any.99.1.99.0.0",
    });
    let signed = guessed.sign(Kind::Claim, job_id, 99, "one", claim.to_string());
    let answer = rogue
        .request(
            format!("glitchlab.control.claim.{job_id}"),
            serde_json::to_vec(&signed).unwrap().into(),
        )
        .await
        .expect("the control plane answers");
    let verdict: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(verdict["accepted"], false, "{verdict}");
    assert!(verdict["sealed_env"].is_null(), "{verdict}");
    // Exit-0 results: one signed with a guessed key, one unsigned (the old format).
    let result = json!({
        "job_id": job_id, "delivery": 1, "factory": "one", "exit_code": 0, "signal": null,
        "timed_out": false, "stdout": {"text": "ok", "truncated_bytes": 0},
        "stderr": {"text": "", "truncated_bytes": 0}, "duration_ms": 1, "diff": null,
        "failure": null, "placement": "first free factory",
    });
    let js = async_nats::jetstream::new(rogue.clone());
    let forged = guessed.sign(Kind::Result, job_id, 1, "one", result.to_string());
    for payload in [
        serde_json::to_vec(&forged).unwrap(),
        result.to_string().into_bytes(),
    ] {
        js.publish(format!("glitchlab.results.{job_id}"), payload.into())
            .await
            .unwrap()
            .await
            .expect("stored");
    }
    let finished = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    assert_ne!(finished["status"], "done", "{finished:#}");
    assert_eq!(commits_of(&repo, &id), 0, "the forged result landed");
    let claims = metric(&service, "glitchlab_fleet_forgeries_total{kind=\"claim\"}").await;
    let results = metric(&service, "glitchlab_fleet_forgeries_total{kind=\"result\"}").await;
    assert!(
        claims >= 1.0 && results >= 2.0,
        "claims {claims}, results {results}"
    );
    let kinds = service.event_kinds(&id).await;
    let logged = kinds.iter().filter(|k| *k == "fleet.forgery").count();
    assert!(logged >= 3, "{kinds:?}");
}

/// A secret the verify's persona gets: the factory runs with it (sealed to it at claim), and no
/// message on NATS (watched as the control user) nor anything in the NATS store carries it, plain
/// or hex; the output the factory sent was redacted there.
#[tokio::test]
async fn no_secret_crosses_nats_in_clear() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one"]);
    let repo = git_repo(root.path());
    let secret = "s3cr3t-7f41c2-fleet-value";
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/circuit.md"),
        "---\nname: circuit\nrole: verify gate\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, test, sleep, printf]\n---\nYou are Circuit.\n",
    )
    .unwrap();
    let options = Options {
        config: Some(format!(
            "{}[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n",
            fleet_config(&nats)
        )),
        env: vec![("GLITCHLAB_TEST_SECRET".into(), secret.into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let _one = start_factory(root.path(), &nats, &service, "one").await;
    let watcher = connect_as(&nats, "control").await;
    let mut everything = watcher.subscribe(">").await.unwrap();
    let (seen_in, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(message) = everything.next().await {
            let _ = seen_in.send((message.subject.to_string(), message.payload.to_vec()));
        }
    });
    let verify = format!(
        "test ${{#GLITCHLAB_TEST_SECRET}} -eq {} && echo \"key $GLITCHLAB_TEST_SECRET\" && \
         sleep 1 && test -f f.txt",
        secret.len()
    );
    let body = task(&repo, "Sealed secrets", "echo ok > f.txt", &verify);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(90))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert!(placements(&service, &id)
        .await
        .iter()
        .any(|p| p.2 == "verify"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.abort();
    let forms = [secret.as_bytes().to_vec(), hex::encode(secret).into_bytes()];
    let mut messages = 0;
    let mut redacted_output = false;
    while let Ok((subject, payload)) = seen.try_recv() {
        messages += 1;
        for form in &forms {
            assert!(
                !payload.windows(form.len()).any(|w| w == form.as_slice()),
                "the secret crossed NATS on {subject}"
            );
        }
        if subject.starts_with("glitchlab.output.") {
            let chunk: Value = serde_json::from_slice(&payload).unwrap();
            let bytes = hex::decode(chunk["bytes"].as_str().unwrap()).unwrap();
            redacted_output |=
                String::from_utf8_lossy(&bytes).contains("key [REDACTED:GLITCHLAB_TEST_SECRET]");
        }
    }
    assert!(messages > 10, "the watcher saw the traffic: {messages}");
    assert!(redacted_output, "the factory redacted its live output");
    let mut files = 0;
    scan(&nats.dir, &forms, &mut files);
    assert!(files > 0, "the NATS store was scanned");
}

/// Fails if any file under `dir` holds one of `forms`.
fn scan(dir: &Path, forms: &[Vec<u8>], files: &mut usize) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, forms, files);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        *files += 1;
        for form in forms {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                "the secret is stored in {}",
                path.display()
            );
        }
    }
}

fn signal(factory: &Factory, signal: i32) {
    let pid = i32::try_from(factory.process.as_ref().unwrap().0.id()).unwrap();
    // SAFETY: a signal to our own child process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The factory running a verify is SIGSTOPped past its lease: the job moves to the other one;
/// SIGCONTed while the successor runs, its late result (and renewals) change nothing: the
/// successor's answer is the one accepted, the task lands once.
#[tokio::test]
async fn a_factory_stopped_past_its_lease_changes_nothing_when_it_wakes() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one", "two"]);
    let repo = git_repo(root.path());
    let service = Service::start_with(
        root.path(),
        crate::helpers::with_config(&fleet_config(&nats)),
    )
    .await;
    let factories = [
        start_factory(root.path(), &nats, &service, "one").await,
        start_factory(root.path(), &nats, &service, "two").await,
    ];
    let (holder, id) = stall_the_verify_holder(root.path(), &service, &repo, &factories).await;
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let placed = placements(&service, &id).await;
    let verify: Vec<_> = placed.iter().filter(|p| p.2 == "verify").collect();
    assert_eq!(verify.len(), 1, "{placed:?}");
    assert_ne!(
        verify[0].0, holder,
        "the successor's answer counts: {placed:?}"
    );
    assert!(verify[0].1 >= 2, "{placed:?}");
    assert_eq!(commits_of(&repo, &id), 1);
    // The woken factory did answer, late: fenced off, not applied.
    let holder_log = root.path().join(format!("{holder}.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !service.log().contains("fenced off") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let factory_log = std::fs::read_to_string(&holder_log).unwrap_or_default();
    assert!(
        service.log().contains("fenced off"),
        "no late result was fenced off; the stalled factory's log:\n{factory_log}\nthe service's \
         fleet lines:\n{}",
        service
            .log()
            .lines()
            .filter(|l| l.contains("fleet"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let verify_runs = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit" && r["stage"] == "verify")
        .count();
    assert_eq!(verify_runs, 1);
}

/// Runs a task whose verify the first factory to take it runs while a marker file says so; stops
/// that factory (SIGSTOP) until the other runs a redelivery, then wakes it (SIGCONT): the
/// stalled factory's name, and the task's id.
async fn stall_the_verify_holder(
    root: &Path,
    service: &Service,
    repo: &Path,
    factories: &[Factory],
) -> (String, String) {
    let marker = root.join("verify-started");
    let verify = format!("touch {}; sleep 5 && test -f f.txt", marker.display());
    let body = task(
        repo,
        "Survives a stalled factory",
        "echo ok > f.txt",
        &verify,
    );
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut holder = String::new();
    wait_until(
        "a factory runs the verify",
        Duration::from_secs(60),
        async || {
            if !marker.exists() {
                return false;
            }
            match running_job(service, &id).await {
                Some((factory, _, _)) => {
                    holder = factory;
                    true
                }
                None => false,
            }
        },
    )
    .await;
    let stalled = factories.iter().find(|f| f.name == holder).unwrap();
    signal(stalled, libc::SIGSTOP);
    wait_until(
        "the other factory runs a redelivery",
        Duration::from_secs(LEASE_SECS * 4),
        async || {
            // A poll: an answer without the list (a loaded machine's timeout) is "not yet".
            let (_, fleet) = service.get("/v1/fleet").await;
            fleet["factories"].as_array().is_some_and(|factories| {
                factories.iter().any(|factory| {
                    factory["name"] != holder.as_str()
                        && factory["running"].as_array().is_some_and(|jobs| {
                            jobs.iter().any(|job| {
                                job["task_id"] == id.as_str() && job["delivery"].as_u64() >= Some(2)
                            })
                        })
                })
            })
        },
    )
    .await;
    signal(stalled, libc::SIGCONT);
    (holder, id)
}

/// As above, and once the woken factory's late answer is fenced off, the successor is killed:
/// the job is still in the stream (the late answer acknowledged nothing), so a third delivery
/// finishes it well before the stage's deadline; one commit.
#[tokio::test]
async fn a_late_answer_does_not_remove_the_job_its_successor_runs() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one", "two"]);
    let repo = git_repo(root.path());
    let service = Service::start_with(
        root.path(),
        crate::helpers::with_config(&fleet_config(&nats)),
    )
    .await;
    let mut factories = vec![
        start_factory(root.path(), &nats, &service, "one").await,
        start_factory(root.path(), &nats, &service, "two").await,
    ];
    let (holder, id) = stall_the_verify_holder(root.path(), &service, &repo, &factories).await;
    wait_until(
        "the late result is fenced off",
        Duration::from_secs(20),
        async || {
            service
                .log()
                .contains("fenced off the result of a lost delivery")
        },
    )
    .await;
    let killed_at = Instant::now();
    factories
        .iter_mut()
        .find(|f| f.name != holder)
        .unwrap()
        .kill_9();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    // A lease, a third delivery's 5 s verify, and a margin: not the stage's deadline.
    assert!(killed_at.elapsed() < Duration::from_secs(LEASE_SECS + 5 + 15));
    let placed = placements(&service, &id).await;
    let verify: Vec<_> = placed.iter().filter(|p| p.2 == "verify").collect();
    assert_eq!(verify.len(), 1, "{placed:?}");
    assert_eq!(
        verify[0].0, holder,
        "the woken factory took the third delivery"
    );
    assert!(verify[0].1 >= 3, "{placed:?}");
    assert_eq!(commits_of(&repo, &id), 1);
}

/// A factory whose `--lease-secs` (or `--max-deliver`) differs from the control plane's consumers
/// refuses to start, saying why.
#[tokio::test]
async fn a_lease_mismatch_refuses_to_start_the_factory() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one"]);
    let service = Service::start_with(
        root.path(),
        crate::helpers::with_config(&fleet_config(&nats)),
    )
    .await;
    let key = enrol(&service, "one").await;
    for (flag, value, said) in [
        (
            "--lease-secs",
            (LEASE_SECS + 4).to_string(),
            "lease mismatch",
        ),
        ("--max-deliver", "9".to_owned(), "max_deliver mismatch"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
            .args([
                "factory",
                "--nats",
                &user_url(nats.port, "one"),
                "--name",
                "one",
            ])
            .args([flag, &value, "--data-dir"])
            .arg(root.path().join("one"))
            .env("GLITCHLAB_FACTORY_KEY", &key)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{stderr}");
    }
}

/// A class consumer an earlier run of the service made with another lease is updated to the
/// lease configured now at the class's next job; a factory (which learns the lease at start)
/// serves it, and the task lands.
#[tokio::test]
async fn a_consumer_made_with_another_lease_is_updated_and_served() {
    require_nats_here!();
    let root = tempfile::tempdir().unwrap();
    let nats = start_authed(root.path(), &["one"]);
    let repo = git_repo(root.path());
    let config = fleet_config(&nats);
    let mut service = Service::start_with(root.path(), crate::helpers::with_config(&config)).await;
    let key = enrol(&service, "one").await;
    let first = task(&repo, "Makes the consumer", "echo 1 > a.txt", "true");
    let id = service.submit(&first).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the job is published",
        Duration::from_secs(30),
        async || {
            let (_, fleet) = service.get("/v1/fleet").await;
            fleet["waiting"]
                .as_array()
                .unwrap()
                .iter()
                .any(|job| job["task_id"] == id.as_str())
        },
    )
    .await;
    let (status, _) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    service.terminate(Duration::from_secs(30));

    let longer = config.replace(
        &format!("lease_secs = {LEASE_SECS}"),
        &format!("lease_secs = {}", LEASE_SECS + 4),
    );
    assert_ne!(longer, config);
    let service = Service::start_with(root.path(), crate::helpers::with_config(&longer)).await;
    let log = std::fs::File::create(root.path().join("one.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args([
            "factory",
            "--nats",
            &user_url(nats.port, "one"),
            "--name",
            "one",
        ])
        .arg("--data-dir")
        .arg(root.path().join("one"))
        .env("GLITCHLAB_FACTORY_KEY", &key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _one = Running(child);
    assert!(line.contains("ready"), "{line}");
    let second = task(
        &repo,
        "Runs on the updated consumer",
        "echo 2 > b.txt",
        "test -f b.txt",
    );
    let id = service.submit(&second).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if task["status"] == "done" || Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let factory_log = std::fs::read_to_string(root.path().join("one.log")).unwrap();
    let fleet_lines: Vec<String> = service
        .log()
        .lines()
        .filter(|l| l.contains("fleet") || l.contains("consumer"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        done["status"],
        "done",
        "{}\n{factory_log}\n{}",
        done["stage"],
        fleet_lines.join("\n")
    );
    assert_eq!(git(&repo, &["show", "main:b.txt"]), "2");
}
