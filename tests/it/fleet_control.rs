//! Fleet control with real parts (a real `nats-server -js`, the service, `glitchlab factory`
//! processes; see `fleet.rs` for the harness): a cancel kills the factory's process; a pause
//! costs no delivery and no stage retry; switches put from outside NATS change nothing; per-factory
//! drain; a factory that stops pulling is reported; an 8-slot factory does not idle under load;
//! job refs a killed service left are deleted at its next start.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::fleet::{
    fleet_config, nats_server_available, task, wait_until, Factory, Nats, LEASE_SECS,
};
use crate::helpers::{git, git_repo, group_of_shell, with_config, Options, Service};

/// The variable holding the control key, for the service and the factories.
const KEY_ENV: &str = "GLITCHLAB_TEST_CONTROL_KEY";
/// The key itself.
const KEY: &str = "test-control-key-4c1f";

/// Skips (saying why) without `nats-server`; else holds the machine as a heavy test.
macro_rules! require_nats {
    () => {
        if !nats_server_available() {
            eprintln!("SKIPPED: nats-server is not installed (scripts/test installs it)");
            return;
        }
        let _machine = crate::helpers::heavy().await;
    };
}

/// The service's options: the fleet with a control key (and `extra` config after it).
fn keyed(nats: &Nats, extra: &str) -> Options {
    let config = format!(
        "[fleet]\nnats_url = \"{}\"\nlease_secs = {LEASE_SECS}\ncontrol_key_env = \"{KEY_ENV}\"\n{extra}",
        nats.url
    );
    Options {
        config: Some(config),
        env: vec![(KEY_ENV.into(), KEY.into())],
        ..Default::default()
    }
}

/// A factory following the keyed control plane (issued its factory key by `service`).
async fn keyed_factory(
    root: &Path,
    nats: &Nats,
    service: &Service,
    name: &str,
    slots: usize,
    env: &[(&str, &str)],
) -> Factory {
    let mut all = vec![(KEY_ENV, KEY)];
    all.extend_from_slice(env);
    Factory::start_slots(
        root,
        nats,
        service,
        name,
        slots,
        &["--control-key-env", KEY_ENV],
        &all,
    )
    .await
}

async fn submit(service: &Service, body: &Value) -> String {
    service.submit(body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn factory_view(service: &Service, name: &str) -> Option<Value> {
    let (_, fleet) = service.get("/v1/fleet").await;
    fleet["factories"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .cloned()
}

async fn runs_on(service: &Service, name: &str) -> usize {
    factory_view(service, name)
        .await
        .and_then(|f| f["running"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Whether a job of task `id` waits unclaimed.
async fn waits(service: &Service, id: &str) -> bool {
    let (_, fleet) = service.get("/v1/fleet").await;
    fleet["waiting"]
        .as_array()
        .is_some_and(|w| w.iter().any(|job| job["task_id"] == id))
}

/// Jobs on the fleet's work-queue stream now (published, not yet answered).
async fn jobs_on_the_stream(nats: &Nats) -> u64 {
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let mut stream = jetstream::new(client)
        .get_stream("glitchlab_jobs")
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

/// A bucket the service or a factory makes (waits for it a little).
async fn bucket(js: &jetstream::Context, name: &str) -> jetstream::kv::Store {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match js.get_key_value(name).await {
            Ok(store) => return store,
            Err(error) => assert!(Instant::now() < deadline, "no bucket {name}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until factory `name` says it holds its claims (it heard the pause).
async fn wait_factory_paused(service: &Service, name: &str) {
    wait_until(
        "the factory hears the pause",
        Duration::from_secs(15),
        async || {
            factory_view(service, name)
                .await
                .is_some_and(|f| f["paused"] == true)
        },
    )
    .await;
}

async fn metrics_text(service: &Service) -> String {
    service
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A cancelled task's verify, running on a factory, is killed (its whole process group) within
/// 2 s, and the factory frees the slot.
#[tokio::test]
async fn a_cancel_kills_the_factorys_process_within_two_seconds() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;
    let marker = root.path().join("cancel-marker-7d2e");
    let verify = format!("echo {} >/dev/null; sleep 600", marker.display());
    let id = submit(
        &service,
        &task(&repo, "Cancelled afar", "echo ok > f.txt", &verify),
    )
    .await;
    wait_until(
        "the verify runs on the factory",
        Duration::from_secs(60),
        async || {
            runs_on(&service, "one").await == 1 && {
                let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
                task["stage"] == "verify"
            }
        },
    )
    .await;
    let group = group_of_shell(&marker);
    let (status, _) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let cancelled_at = Instant::now();
    // Killed: no member runs (a zombie left to this container's PID 1 is dead already).
    while glitchlab::platform::process::group_runs(group) {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "the factory's process group {group} still runs 2 s after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "measured: process group gone {:?} after the cancel",
        cancelled_at.elapsed()
    );
    wait_until(
        "the factory frees the slot",
        Duration::from_secs(10),
        async || runs_on(&service, "one").await == 0,
    )
    .await;
}

/// The fleet is paused for longer than a job's whole deadline (its timeout, its leases and the
/// margin: 5 + 3 × 2 + 3 = 14 s; `deadline_margin_secs = 3` instead of the default 30, so the
/// test waits 18 s, not 45). Two jobs wait through it, each held its own way: one already
/// published when the pause came (no factory yet; the control plane's deadline must not count
/// paused time), one asked for after it (held at the job gate, never published). Neither spends
/// a stage retry or a delivery, and after resume both tasks are done.
#[tokio::test]
async fn a_pause_longer_than_a_jobs_deadline_spends_no_retry() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let extra = "max_deliver = 1\ndeadline_margin_secs = 3\n\
                 [engines]\ntimeout_secs = 5\nverify_timeout_secs = 5\n";
    let service = Service::start_with(root.path(), keyed(&nats, extra)).await;
    let body = |n: usize| {
        task(
            &repo,
            &format!("Paused {n}"),
            &format!("echo {n} > p{n}.txt"),
            "true",
        )
    };
    // Published before the pause: no factory is there to claim it.
    let published = submit(&service, &body(0)).await;
    wait_until(
        "the job is published, unclaimed",
        Duration::from_secs(30),
        async || waits(&service, &published).await,
    )
    .await;
    assert_eq!(jobs_on_the_stream(&nats).await, 1, "published");
    let (status, _) = service.post("/v1/fleet/pause", &json!({})).await;
    assert_eq!(status, 200);
    // Asked for after the pause: held at the gate.
    let held = submit(&service, &body(1)).await;
    wait_until(
        "the job is held at the gate",
        Duration::from_secs(30),
        async || {
            let (_, task) = service.get(&format!("/v1/tasks/{held}")).await;
            task["waiting_for"] == "fleet paused" && waits(&service, &held).await
        },
    )
    .await;
    assert_eq!(jobs_on_the_stream(&nats).await, 1, "held, not published");
    let ids = [published, held];
    // Past the 14 s deadline, with room.
    tokio::time::sleep(Duration::from_secs(18)).await;
    for id in &ids {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["status"], "running", "{task:#}");
        assert_eq!(
            task["stage_retries"], 0,
            "a retry spent while paused: {task:#}"
        );
        assert!(waits(&service, id).await, "gone from the line while paused");
    }
    assert_eq!(
        jobs_on_the_stream(&nats).await,
        1,
        "the published job withdrawn, or the held one published"
    );
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;
    wait_factory_paused(&service, "one").await;
    let (status, _) = service.post("/v1/fleet/resume", &json!({})).await;
    assert_eq!(status, 200);
    for id in &ids {
        let task = service
            .wait_finished_within(id, Duration::from_secs(90))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(task["stage_retries"], 0, "{task:#}");
        assert!(
            task["failures"].as_array().is_none_or(Vec::is_empty),
            "{task:#}"
        );
        let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
        for ran in events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "fleet.ran")
        {
            assert_eq!(ran["data"]["delivery"], 1, "a delivery spent: {ran:#}");
        }
    }
}

/// `kv put glitchlab_control paused true`, and a forged signed-looking value, put by a plain NATS
/// client: no factory pauses (tasks finish), the control plane writes its own value back and
/// counts it, and `GET /v1/fleet` says not paused. The API's pause (signed) still holds claims.
#[tokio::test]
async fn switches_put_from_outside_nats_do_not_pause() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;

    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let control = bucket(&jetstream::new(client), "glitchlab_control").await;
    let forged = json!({
        "body": json!({"version": 1_000_000, "paused": true, "factories": {"one": "draining"}}).to_string(),
        "mac": "00".repeat(32),
    });
    control.put("paused", "true".into()).await.unwrap();
    control
        .put("switches", forged.to_string().into())
        .await
        .unwrap();
    let id = submit(
        &service,
        &task(&repo, "Not paused", "echo ok > f.txt", "true"),
    )
    .await;
    let done = service
        .wait_finished_within(&id, Duration::from_secs(90))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let (_, fleet) = service.get("/v1/fleet").await;
    assert_eq!(fleet["paused"], false);
    assert!(
        metrics_text(&service)
            .await
            .contains("glitchlab_fleet_control_overwritten_total"),
        "the overwrite is counted"
    );

    // The signed pause is obeyed: a job waits until resumed.
    let (status, _) = service.post("/v1/fleet/pause", &json!({})).await;
    assert_eq!(status, 200);
    wait_factory_paused(&service, "one").await;
    let id = submit(
        &service,
        &task(&repo, "Paused by the API", "echo ok > g.txt", "true"),
    )
    .await;
    wait_until(
        "the job is published",
        Duration::from_secs(30),
        async || waits(&service, &id).await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waits(&service, &id).await,
        "claimed while paused through the API"
    );
    let (status, _) = service.post("/v1/fleet/resume", &json!({})).await;
    assert_eq!(status, 200);
    let done = service
        .wait_finished_within(&id, Duration::from_secs(90))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    // Who paused and resumed is in the audit log (the NATS puts are not: they changed nothing).
    let (_, audit) = service.get("/v1/audit?principal=bootstrap").await;
    let routes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert!(
        routes.contains(&"/v1/fleet/pause") && routes.contains(&"/v1/fleet/resume"),
        "{audit}"
    );
}

/// With `max_deliver = 1`, the factory running a verify is killed (`kill -9`): the job's only
/// delivery is lost, and the stage hears it when JetStream's advisory says so (after the lease),
/// not at its deadline (600 s of verify timeout + leases + margin); its retry runs on the other
/// factory and the task is done well inside that.
#[tokio::test]
async fn running_out_of_deliveries_is_noticed_when_it_happens() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "max_deliver = 1\n")).await;
    // The factories know `max_deliver = 1` too (a cold one never hands a job back then).
    let args = ["--control-key-env", KEY_ENV, "--max-deliver", "1"];
    let mut factories = Vec::new();
    for name in ["one", "two"] {
        let env = [(KEY_ENV, KEY)];
        factories
            .push(Factory::start_slots(root.path(), &nats, &service, name, 1, &args, &env).await);
    }
    let id = submit(
        &service,
        &task(
            &repo,
            "Lost once",
            "echo ok > f.txt",
            "sleep 4 && test -f f.txt",
        ),
    )
    .await;
    let mut holder = String::new();
    wait_until(
        "a factory runs the verify",
        Duration::from_secs(60),
        async || {
            let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
            if task["stage"] != "verify" {
                return false;
            }
            for name in ["one", "two"] {
                if runs_on(&service, name).await == 1 {
                    holder = name.to_owned();
                    return true;
                }
            }
            false
        },
    )
    .await;
    let killed_at = Instant::now();
    let index = usize::from(holder == "two");
    factories[index].kill_9();
    let task = service
        .wait_finished_within(&id, Duration::from_secs(90))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    eprintln!("measured: done {:?} after the kill", killed_at.elapsed());
    assert!(
        task["stage_retries"].as_u64().unwrap_or(0) >= 1
            || task["failures"].as_array().is_some_and(|f| !f.is_empty()),
        "the lost delivery failed the stage once: {task:#}"
    );
    assert!(
        metrics_text(&service)
            .await
            .contains("glitchlab_fleet_deliveries_exhausted_total 1"),
        "the exhausted job is counted"
    );
}

/// A factory told to drain finishes the verify it runs and takes nothing new until resumed.
#[tokio::test]
async fn a_drained_factory_finishes_its_job_and_takes_no_new_one() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;
    let first = submit(
        &service,
        &task(
            &repo,
            "Drained",
            "echo ok > f.txt",
            "sleep 3 && test -f f.txt",
        ),
    )
    .await;
    wait_until("the verify runs", Duration::from_secs(60), async || {
        let (_, task) = service.get(&format!("/v1/tasks/{first}")).await;
        task["stage"] == "verify" && runs_on(&service, "one").await == 1
    })
    .await;
    let (status, told) = service
        .post("/v1/fleet/factories/one/drain", &json!({}))
        .await;
    assert_eq!((status, &told["told"]), (200, &json!("draining")), "{told}");
    let done = service
        .wait_finished_within(&first, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "the running job finished: {done:#}");
    wait_until(
        "the factory says it drains",
        Duration::from_secs(10),
        async || {
            factory_view(&service, "one").await.is_some_and(|f| {
                f["draining"] == true && f["told"] == "draining" && f["healthy"] == true
            })
        },
    )
    .await;
    let second = submit(
        &service,
        &task(&repo, "After the drain", "echo ok > g.txt", "true"),
    )
    .await;
    wait_until(
        "the job is published",
        Duration::from_secs(30),
        async || waits(&service, &second).await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waits(&service, &second).await,
        "a draining factory took a job"
    );
    let (status, _) = service
        .post("/v1/fleet/factories/one/resume", &json!({}))
        .await;
    assert_eq!(status, 200);
    let done = service
        .wait_finished_within(&second, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let (status, bad) = service
        .post("/v1/fleet/factories/bad%20name/drain", &json!({}))
        .await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (422, &json!("INVALID_FIELD")),
        "{bad}"
    );
}

/// A factory whose pull loop stalls with a free slot (a failpoint holds it before the fetch) is
/// reported unhealthy in `GET /v1/fleet` and `/metrics` within the 10 s bound; the fleet gauges
/// are there.
#[tokio::test]
async fn a_factory_that_stops_pulling_is_reported_unhealthy() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _healthy = keyed_factory(root.path(), &nats, &service, "other", 1, &[]).await;
    let id = submit(&service, &task(&repo, "Stalls", "echo ok > f.txt", "true")).await;
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done");
    let _stalled = keyed_factory(
        root.path(),
        &nats,
        &service,
        "stalled",
        2,
        &[("FAILPOINTS", "factory.pull=return(60000)")],
    )
    .await;
    let started = Instant::now();
    wait_until(
        "the stall is reported",
        Duration::from_secs(20),
        async || {
            factory_view(&service, "stalled").await.is_some_and(|f| {
                f["healthy"] == false
                    && f["unhealthy"]
                        .as_str()
                        .is_some_and(|why| why.contains("no pull"))
            })
        },
    )
    .await;
    eprintln!(
        "measured: stall reported {:?} after the factory started",
        started.elapsed()
    );
    let other = factory_view(&service, "other").await.unwrap();
    assert_eq!(other["healthy"], true, "{other:#}");
    wait_until("the gauges say it", Duration::from_secs(10), async || {
        let text = metrics_text(&service).await;
        text.contains("glitchlab_fleet_factory_healthy{factory=\"stalled\"} 0")
            && text.contains("glitchlab_fleet_factory_healthy{factory=\"other\"} 1")
            && text.contains("glitchlab_fleet_factory_slots{factory=\"stalled\",state=\"free\"} 2")
            && text.contains("glitchlab_fleet_claim_latency_duration_seconds")
    })
    .await;
}

/// 40 jobs on one 8-slot factory — 20 tasks, each an engine job and a one-second verify job,
/// all published by the control plane (since issue 30 a job only runs when the control plane that
/// published it accepts the claim, so the jobs cannot be put on JetStream straight any more):
/// while jobs are left unclaimed, the factory never has a free slot for 10 s, and all 40 are
/// answered (every task is done).
#[tokio::test]
async fn an_8_slot_factory_under_40_jobs_never_idles_with_free_slots() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let config = format!(
        "[fleet]\nnats_url = \"{}\"\nlease_secs = {LEASE_SECS}\n[compass]\nmax_concurrent_tasks = 20\n",
        nats.url
    );
    let service = Service::start_with(root.path(), with_config(&config)).await;
    let _eight = Factory::start_slots(root.path(), &nats, &service, "eight", 8, &[], &[]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = task(
            &repo,
            &format!("Load {i}"),
            &format!("echo ok > load-{i}.txt"),
            "sleep 1",
        );
        ids.push(submit(&service, &body).await);
    }
    let started = Instant::now();
    let (mut idle_since, mut longest) = (None::<Instant>, Duration::ZERO);
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not all 20 tasks finished"
        );
        let (status, fleet) = service.get("/v1/fleet").await;
        let Some(factories) = fleet["factories"].as_array().filter(|_| status == 200) else {
            // The registry did not answer in time (a loaded machine): no sample this round.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let running = factories
            .iter()
            .find(|f| f["name"] == "eight")
            .and_then(|f| f["running"].as_array())
            .map_or(0, Vec::len);
        let unclaimed = fleet["waiting"].as_array().map_or(0, Vec::len);
        if running < 8 && unclaimed > 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            longest = longest.max(since.elapsed());
        } else {
            idle_since = None;
        }
        let mut finished = 0;
        for id in &ids {
            let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
            if ["done", "failed", "cancelled", "dead_letter"]
                .contains(&task["status"].as_str().unwrap_or(""))
            {
                assert_eq!(task["status"], "done", "{task:#}");
                finished += 1;
            }
        }
        if finished == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "measured: 40 jobs in {:?}; longest stretch with a free slot and jobs left: {longest:?}",
        started.elapsed()
    );
    assert!(
        longest < Duration::from_secs(10),
        "idled {longest:?} with free slots"
    );
}

/// The service is killed (`kill -9`) while a verify runs on a factory: its job ref stays in the
/// user's repository; at the next start it is deleted (the resumed task runs a new job, whose
/// ref goes when it ends), and the task finishes.
#[tokio::test]
async fn job_refs_a_killed_service_left_are_deleted_at_its_next_start() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let mut service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let id = submit(
        &service,
        &task(
            &repo,
            "Killed",
            "echo ok > f.txt",
            "sleep 4 && test -f f.txt",
        ),
    )
    .await;
    let job_refs = || {
        git(
            &repo,
            &[
                "for-each-ref",
                "--format=%(refname)",
                "refs/glitchlab/jobs/",
            ],
        )
    };
    wait_until(
        "the verify's job ref is there",
        Duration::from_secs(60),
        async || {
            let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
            task["stage"] == "verify" && !job_refs().is_empty()
        },
    )
    .await;
    let left = job_refs();
    service.kill_9();
    assert_eq!(job_refs(), left, "the kill left the ref");
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let task = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    wait_until("no job ref is left", Duration::from_secs(20), async || {
        job_refs().is_empty()
    })
    .await;
}

/// `glitchlab fleet list|drain|resume|pause` against the real service and a factory: the table
/// shows the factory and its health, drain and resume reach it, a bad name exits 1 with the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_cli_lists_drains_resumes_and_pauses() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 3, &[]).await;
    wait_until(
        "the factory registers",
        Duration::from_secs(20),
        async || factory_view(&service, "one").await.is_some(),
    )
    .await;
    let base = service.base.clone();
    let run = move |args: &'static [&'static str]| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || crate::cli::glitchlab(&base, args))
                .await
                .unwrap()
        }
    };
    let listed = run(&["fleet", "list"]).await;
    let table = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.status.success(), "{table}");
    assert!(
        table.contains("taking jobs")
            && table
                .lines()
                .any(|l| l.starts_with("one") && l.contains(" 3 ") && l.contains("ok")),
        "{table}"
    );
    let drained = run(&["fleet", "drain", "one"]).await;
    assert_eq!(
        String::from_utf8_lossy(&drained.stdout).trim(),
        "one: draining"
    );
    let listed = run(&["fleet", "list", "--json"]).await;
    let fleet: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(fleet["factories"][0]["told"], "draining", "{fleet:#}");
    let resumed = run(&["fleet", "resume", "--factory", "one"]).await;
    assert_eq!(
        String::from_utf8_lossy(&resumed.stdout).trim(),
        "one: active"
    );
    let paused = run(&["fleet", "pause"]).await;
    assert_eq!(
        String::from_utf8_lossy(&paused.stdout).trim(),
        "fleet paused: true"
    );
    let (_, fleet) = service.get("/v1/fleet").await;
    assert_eq!(fleet["paused"], true);
    let resumed = run(&["fleet", "resume"]).await;
    assert_eq!(
        String::from_utf8_lossy(&resumed.stdout).trim(),
        "fleet paused: false"
    );
    let refused = run(&["fleet", "drain", "bad.name"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("INVALID_FIELD"));
}

/// The task's engine runs recorded so far.
async fn run_count(service: &Service, id: &str) -> usize {
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    runs["runs"].as_array().map_or(0, Vec::len)
}

/// When the task's first event of `kind` was recorded.
async fn first_event_at(service: &Service, id: &str, kind: &str) -> Option<String> {
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    events["events"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == kind)
        .and_then(|e| e["ts"].as_str().map(str::to_owned))
}

/// With two factories and the pause on, four submitted tasks start no job for 10 s — no run
/// record, no fleet job, each shows `waiting_for: "fleet paused"` — and after resume all four
/// finish, their jobs released in the order they asked.
#[tokio::test]
async fn with_two_factories_paused_four_tasks_start_no_job_until_resume() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;
    let _two = keyed_factory(root.path(), &nats, &service, "two", 2, &[]).await;
    let (status, _) = service.post("/v1/fleet/pause", &json!({})).await;
    assert_eq!(status, 200);
    wait_factory_paused(&service, "one").await;
    wait_factory_paused(&service, "two").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let body = task(
            &repo,
            &format!("Held {n}"),
            &format!("echo {n} > h{n}.txt"),
            &format!("test -f h{n}.txt"),
        );
        ids.push(submit(&service, &body).await);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    for id in &ids {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["status"], "running", "{task:#}");
        assert_eq!(task["waiting_for"], "fleet paused", "{task:#}");
        assert_eq!(run_count(&service, id).await, 0, "a job ran while paused");
        let kinds = service.event_kinds(id).await;
        assert!(kinds.contains(&"job.waiting".to_owned()), "{kinds:?}");
        assert!(!kinds.contains(&"fleet.ran".to_owned()), "{kinds:?}");
        assert!(waits(&service, id).await, "not listed as waiting");
    }
    let (_, report) = service.get("/v1/report").await;
    let reported: Vec<&Value> = report["waiting"].as_array().unwrap().iter().collect();
    for id in &ids {
        assert!(
            reported
                .iter()
                .any(|w| w["id"] == id.as_str() && w["reason"] == "fleet paused"),
            "{report:#}"
        );
    }
    let (status, _) = service.post("/v1/fleet/resume", &json!({})).await;
    assert_eq!(status, 200);
    for id in &ids {
        let task = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert!(task.get("waiting_for").is_none(), "{task:#}");
        assert!(run_count(&service, id).await > 0);
    }
    // First come, first served: the jobs held first were released first.
    let mut asked = Vec::new();
    let mut released = Vec::new();
    for id in &ids {
        asked.push((first_event_at(&service, id, "job.waiting").await, id));
        released.push((first_event_at(&service, id, "job.released").await, id));
    }
    asked.sort();
    released.sort();
    let order =
        |v: &[(Option<String>, &String)]| v.iter().map(|(_, id)| (*id).clone()).collect::<Vec<_>>();
    assert_eq!(order(&asked), order(&released), "{asked:?} {released:?}");
}

/// Without a fleet, the pause holds in-process jobs too: a task starts no job (no verify, no
/// run at all) until resume, shows why, and a cancel ends its wait at once.
#[tokio::test]
async fn without_a_fleet_the_pause_holds_in_process_jobs_until_resume() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, paused) = service.post("/v1/fleet/pause", &json!({})).await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)), "{paused}");
    let id = submit(
        &service,
        &task(&repo, "Held here", "echo ok > f.txt", "test -f f.txt"),
    )
    .await;
    let doomed = submit(
        &service,
        &task(&repo, "Cancelled while held", "echo ok > g.txt", "true"),
    )
    .await;
    wait_until("the job waits", Duration::from_secs(20), async || {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        task["waiting_for"] == "fleet paused"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "running", "{task:#}");
    assert_eq!(run_count(&service, &id).await, 0, "a job ran while paused");
    let (_, fleet) = service.get("/v1/fleet").await;
    assert_eq!(
        (&fleet["configured"], &fleet["paused"]),
        (&json!(false), &json!(true))
    );
    assert!(waits(&service, &id).await, "{fleet:#}");

    let asked = std::time::Instant::now();
    let (status, _) = service
        .post(&format!("/v1/tasks/{doomed}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let cancelled = service
        .wait_finished_within(&doomed, Duration::from_secs(10))
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(cancelled.get("waiting_for").is_none(), "{cancelled:#}");
    wait_until(
        "the cancelled job leaves the line",
        Duration::from_secs(5),
        async || !waits(&service, &doomed).await,
    )
    .await;

    let (status, _) = service.post("/v1/fleet/resume", &json!({})).await;
    assert_eq!(status, 200);
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let kinds = service.event_kinds(&id).await;
    assert!(kinds.contains(&"job.released".to_owned()), "{kinds:?}");
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    assert!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["persona"] == "circuit"),
        "the verify ran after resume: {runs:#}"
    );
}

/// A task needing a capability no live factory offers shows it on the task and in the report.
#[tokio::test]
async fn a_job_no_factory_can_serve_shows_why_on_the_task_and_in_the_report() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), keyed(&nats, "")).await;
    let _one = keyed_factory(root.path(), &nats, &service, "one", 2, &[]).await;
    wait_until(
        "the factory registers",
        Duration::from_secs(20),
        async || factory_view(&service, "one").await.is_some(),
    )
    .await;
    let mut gpu = task(&repo, "Needs a GPU", "echo ok > gpu.txt", "true");
    gpu["capabilities"] = json!(["has:gpu"]);
    let id = submit(&service, &gpu).await;
    wait_until("the task shows why", Duration::from_secs(30), async || {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        task["waiting_for"] == "no factory with has:gpu"
    })
    .await;
    let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "running", "{task:#}");
    assert!(task["waiting_since"].is_string(), "{task:#}");
    let (_, report) = service.get("/v1/report").await;
    assert!(
        report["waiting"].as_array().unwrap().iter().any(|w| {
            w["id"] == id.as_str()
                && w["reason"] == "no factory with has:gpu"
                && w["since"].is_string()
        }),
        "{report:#}"
    );
    let (status, _) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let ended = service
        .wait_finished_within(&id, Duration::from_secs(10))
        .await;
    assert!(ended.get("waiting_for").is_none(), "{ended:#}");
}
