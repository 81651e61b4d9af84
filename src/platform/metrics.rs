//! Prometheus metrics: every metric the service exports is named here, once, with what it means,
//! and recorded through the small functions below so that call sites stay one line.
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder): [`install`] sets
//! it up the first time and hands every later caller — a second service started in the same
//! process — the same [`PrometheusHandle`]. `GET /metrics` renders it.
//!
//! Labels are bounded: only names that come from config or from fixed sets (HTTP method and
//! route, task kind and status, persona, engine, app, check, transfer code). Never a task, run,
//! deploy or incident id, and never free text a client sent.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::task::TaskStatus;

/// Counter `{method, route, status}`: HTTP requests answered. `route` is the matched route
/// pattern (`/v1/tasks/{id}`), or `unmatched`.
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "glitchlab_http_requests_total";
/// Histogram `{method, route}`: seconds from a request's arrival to its response.
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "glitchlab_http_request_duration_seconds";
/// Gauge: HTTP connections open (at most `server.max_connections`).
pub(crate) const HTTP_CONNECTIONS: &str = "glitchlab_http_connections";
/// Counter `{reason}`: connections the service closed itself: `header_timeout`,
/// `idle_timeout`, `write_timeout`, `tls_handshake_timeout`, `shed` (an unauthenticated one
/// closed to make room under pressure), `per_ip_limit` (refused: its address held its share).
pub(crate) const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "glitchlab_http_connections_closed_total";
/// Counter `{outcome}`: wrong secrets (bearer or web login) by outcome: `rejected` (answered
/// 401) or `throttled` (answered 429: the address is past `server.auth_failures_max`).
pub(crate) const HTTP_AUTH_FAILURES_TOTAL: &str = "glitchlab_http_auth_failures_total";
/// Counter `{kind}`: tasks created through intake (HTTP or ops); idempotent replays not counted.
pub(crate) const TASKS_SUBMITTED_TOTAL: &str = "glitchlab_tasks_submitted_total";
/// Counter `{status}`: tasks that reached a terminal status (`done`, `failed`, `cancelled`,
/// `dead_letter`); a retried task that ends again counts again.
pub(crate) const TASKS_FINISHED_TOTAL: &str = "glitchlab_tasks_finished_total";
/// Gauge: tasks waiting for a pipeline slot (queued, and running ones waiting to resume).
pub(crate) const TASKS_QUEUED: &str = "glitchlab_tasks_queued";
/// Gauge: pipeline slots in use (a pipeline waiting to be restarted still holds its slot).
pub(crate) const TASKS_RUNNING: &str = "glitchlab_tasks_running";
/// Counter `{persona, engine, status}`: engine runs ended; `status` is [`EngineRun::outcome`](crate::model::task::EngineRun::outcome).
pub(crate) const ENGINE_RUNS_TOTAL: &str = "glitchlab_engine_runs_total";
/// Histogram `{persona, engine}`: wall-clock seconds of an ended engine run.
pub(crate) const ENGINE_RUN_DURATION_SECONDS: &str = "glitchlab_engine_run_duration_seconds";
/// Counter `{persona, direction}`: model tokens used by model-backed engines; `direction` is
/// `input` (prompt) or `output` (completion).
pub(crate) const MODEL_TOKENS_TOTAL: &str = "glitchlab_model_tokens_total";
/// Counter `{actor}`: restarts by Compass after a crash; `actor` is a persona name or `pipeline`.
pub(crate) const ACTOR_RESTARTS_TOTAL: &str = "glitchlab_actor_restarts_total";
/// Counter `{actor}`: give-ups past the restart limit (a persona marked `failed`, a pipeline's
/// task failed with `PIPELINE_FAILED`).
pub(crate) const ACTOR_FAILURES_TOTAL: &str = "glitchlab_actor_failures_total";
/// Counter `{code}`: ledger transfers newly applied (posted or pending; replays not counted), by
/// transfer code (`10` budget, `11` engine run, `12` overrun, ...).
pub(crate) const LEDGER_TRANSFERS_TOTAL: &str = "glitchlab_ledger_transfers_total";
/// Counter `{persona}`: micro-tokens charged for engine runs to `agent:<persona>`.
pub(crate) const LEDGER_CHARGED_MICRO_TOKENS_TOTAL: &str =
    "glitchlab_ledger_charged_micro_tokens_total";
/// Counter `{persona, code}`: engine-run charges the Ledger refused or did not answer (the run
/// stays unpaid; `code` is the error's, e.g. `AMOUNT_OVERFLOW`). Never a silent skip.
pub(crate) const LEDGER_CHARGE_FAILURES_TOTAL: &str = "glitchlab_ledger_charge_failures_total";
/// Counter `{reason}`: tasks ended `POISONED` (`unclean_stops`, `persona_crashes`).
pub(crate) const TASKS_POISONED_TOTAL: &str = "glitchlab_tasks_poisoned_total";
/// Counter `{app, status}`: deploys that ended (`healthy`, `rolled_back`, `failed`, `rejected`).
pub(crate) const DEPLOYS_FINISHED_TOTAL: &str = "glitchlab_deploys_finished_total";
/// Counter `{app, classification}`: incidents opened (a signal attached to an open incident is
/// not one); `classification` is the runbook's, or `none`; an app not in `ops.yaml` is `other`.
pub(crate) const INCIDENTS_OPENED_TOTAL: &str = "glitchlab_incidents_opened_total";
/// Counter `{app}`: signals an active silence quieted (no incident opened or joined); an app
/// not in `ops.yaml` is `other`.
pub(crate) const SIGNALS_SILENCED_TOTAL: &str = "glitchlab_signals_silenced_total";
/// Counter `{app, check, outcome}`: scheduled check runs by outcome (`pass`, `fail`, `skipped`).
pub(crate) const CHECKS_TOTAL: &str = "glitchlab_checks_total";

/// Gauge: 1 while the store writer has been stuck on one group for `storage.stall_secs` (the
/// watchdog's verdict, also `/readyz`'s), else 0.
pub(crate) const STORE_WRITER_STALLED: &str = "glitchlab_store_writer_stalled";
/// Gauge: write jobs waiting in the store writer's queue.
pub(crate) const STORE_WRITE_QUEUE: &str = "glitchlab_store_write_queue";
/// Counter: group commits (one transaction and one flush each).
pub(crate) const STORE_GROUPS_TOTAL: &str = "glitchlab_store_groups_total";
/// Counter: write jobs committed (jobs per group = the group commit's batching).
pub(crate) const STORE_JOBS_TOTAL: &str = "glitchlab_store_jobs_total";
/// Gauge: 1 while the disk is full or the storage reserve is in use (intake answers
/// `507 STORAGE_FULL`), else 0.
pub(crate) const STORE_FULL: &str = "glitchlab_store_full";
/// Gauge: 1 while the disk refuses writes (`EIO`, `EROFS`; writes answer `503 STORAGE_FAILED`).
pub(crate) const STORE_FAILED: &str = "glitchlab_store_failed";
/// Gauge: seconds Compass took at start to load the queue (intake answers `503 NOT_READY` until
/// then); 0 before it has.
pub(crate) const QUEUE_RELOAD_SECONDS: &str = "glitchlab_queue_reload_seconds";

/// Gauge `{class}`: fleet jobs published and not claimed yet, by job class (`any`, or the
/// digest of a capability set: bounded by the capability sets tasks and personas use).
pub(crate) const FLEET_JOBS_WAITING: &str = "glitchlab_fleet_jobs_waiting";
/// Histogram: seconds from a fleet job's publication to its first claim by a factory.
pub(crate) const FLEET_CLAIM_LATENCY_DURATION_SECONDS: &str =
    "glitchlab_fleet_claim_latency_duration_seconds";
/// Gauge `{factory, state}`: a registered factory's slots, `used` or `free` (factory names are
/// the operator's, one per machine).
pub(crate) const FLEET_FACTORY_SLOTS: &str = "glitchlab_fleet_factory_slots";
/// Gauge `{factory}`: 1 while a factory is healthy, 0 while it is stalled (a free slot and no
/// pull for 10 s, or no heartbeat for as long).
pub(crate) const FLEET_FACTORY_HEALTHY: &str = "glitchlab_fleet_factory_healthy";
/// Counter: fleet jobs that ran out of deliveries (heard from JetStream's advisory).
pub(crate) const FLEET_DELIVERIES_EXHAUSTED_TOTAL: &str =
    "glitchlab_fleet_deliveries_exhausted_total";
/// Counter: stops sent to factories (a cancelled task's job, a job given up on).
pub(crate) const FLEET_STOPS_TOTAL: &str = "glitchlab_fleet_stops_total";
/// Counter: times the switches found in NATS differed from the control plane's (put from
/// outside, or lost) and were written back.
pub(crate) const FLEET_CONTROL_OVERWRITTEN_TOTAL: &str =
    "glitchlab_fleet_control_overwritten_total";
/// Counter: fleet messages dropped as forged — a hello, claim, lease renewal or result
/// without a valid MAC of a registered factory, or about a delivery JetStream did not make for
/// it (label `kind`).
pub(crate) const FLEET_FORGERIES_TOTAL: &str = "glitchlab_fleet_forgeries_total";

/// Histogram buckets of every `*_duration_seconds` metric: 5 ms (a fast HTTP answer) up to
/// 600 s (the default engine and verify timeout).
pub(crate) const DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (a scrape does
/// it too): keeps the recorder's memory bounded on an unscraped service.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The process's recorder, once installed; `None` if another recorder held the global slot.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global recorder, once; later calls return
/// the same handle. `None` when it could not be installed (another recorder was there first):
/// the service runs on without metrics and says so in the log.
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(build_and_install).as_ref()
}

fn build_and_install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            DURATION_BUCKETS_SECONDS,
        )
        .inspect_err(|error| tracing::error!(%error, "metrics: bad histogram buckets"))
        .ok()?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(error) = ::metrics::set_global_recorder(recorder) {
        tracing::error!(%error, "metrics: another recorder is installed; /metrics is unavailable");
        return None;
    }
    describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "metrics: no upkeep thread; histograms are folded on scrape only");
    }
    Some(handle)
}

/// The `# HELP` lines.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered");
    describe_counter!(FLEET_FORGERIES_TOTAL, "Fleet messages dropped as forged");
    describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, "HTTP request latency");
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open");
    describe_counter!(
        HTTP_CONNECTIONS_CLOSED_TOTAL,
        "HTTP connections closed by a timeout"
    );
    describe_counter!(
        HTTP_AUTH_FAILURES_TOTAL,
        "Wrong secrets, answered 401 (rejected) or 429 (throttled)"
    );
    describe_counter!(TASKS_SUBMITTED_TOTAL, "Tasks created through intake");
    describe_counter!(TASKS_FINISHED_TOTAL, "Tasks that reached a terminal status");
    describe_gauge!(TASKS_QUEUED, "Tasks waiting for a pipeline slot");
    describe_gauge!(TASKS_RUNNING, "Pipeline slots in use");
    describe_counter!(ENGINE_RUNS_TOTAL, "Engine runs ended");
    describe_histogram!(ENGINE_RUN_DURATION_SECONDS, "Engine run wall-clock time");
    describe_counter!(MODEL_TOKENS_TOTAL, "Model tokens used");
    describe_counter!(ACTOR_RESTARTS_TOTAL, "Actor restarts after a crash");
    describe_counter!(
        ACTOR_FAILURES_TOTAL,
        "Actors given up past the restart limit"
    );
    describe_counter!(LEDGER_TRANSFERS_TOTAL, "Ledger transfers applied");
    describe_counter!(
        LEDGER_CHARGED_MICRO_TOKENS_TOTAL,
        "Micro-tokens charged for engine runs"
    );
    describe_counter!(
        LEDGER_CHARGE_FAILURES_TOTAL,
        "Engine-run charges refused or unanswered (runs left unpaid)"
    );
    describe_counter!(TASKS_POISONED_TOTAL, "Tasks ended POISONED");
    describe_counter!(DEPLOYS_FINISHED_TOTAL, "Deploys ended");
    describe_counter!(INCIDENTS_OPENED_TOTAL, "Incidents opened");
    describe_counter!(SIGNALS_SILENCED_TOTAL, "Signals quieted by a silence");
    describe_counter!(CHECKS_TOTAL, "Scheduled check runs");
    describe_gauge!(STORE_WRITER_STALLED, "1 while the store writer is stalled");
    describe_gauge!(
        STORE_FULL,
        "1 while the disk is full or the storage reserve is in use"
    );
    describe_gauge!(STORE_FAILED, "1 while the disk refuses the store's writes");
    describe_gauge!(
        QUEUE_RELOAD_SECONDS,
        "Seconds Compass took at start to load the task queue"
    );
    describe_gauge!(STORE_WRITE_QUEUE, "Write jobs waiting for the store writer");
    describe_counter!(STORE_GROUPS_TOTAL, "Store group commits");
    describe_counter!(STORE_JOBS_TOTAL, "Store write jobs committed");
    describe_gauge!(FLEET_JOBS_WAITING, "Fleet jobs not claimed yet, by class");
    describe_histogram!(
        FLEET_CLAIM_LATENCY_DURATION_SECONDS,
        "Seconds from a fleet job's publication to its claim"
    );
    describe_gauge!(FLEET_FACTORY_SLOTS, "Factory slots, used or free");
    describe_gauge!(
        FLEET_FACTORY_HEALTHY,
        "1 while a factory is healthy, 0 stalled"
    );
    describe_counter!(
        FLEET_DELIVERIES_EXHAUSTED_TOTAL,
        "Fleet jobs that ran out of deliveries"
    );
    describe_counter!(FLEET_STOPS_TOTAL, "Stops sent to factories");
    describe_counter!(
        FLEET_CONTROL_OVERWRITTEN_TOTAL,
        "Fleet switches found changed outside the control plane and written back"
    );
}

/// The Prometheus text exposition of everything recorded so far; `None` without a recorder.
pub(crate) fn render() -> Option<String> {
    HANDLE.get()?.as_ref().map(PrometheusHandle::render)
}

/// The `method` label: the standard methods by name, anything else `other` (a client can send
/// any token as a method).
pub(crate) fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Records one answered HTTP request; `route` is the matched pattern, never the raw path.
pub(crate) fn http_request(method: &str, route: Option<&str>, status: u16, elapsed: Duration) {
    let method = method_label(method);
    let route = route.unwrap_or("unmatched").to_owned();
    ::metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    ::metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

/// One open HTTP connection, counted in `glitchlab_http_connections` until dropped (however its
/// task ends, aborts included).
pub(crate) struct HttpConnection;

impl HttpConnection {
    /// Counts a connection that was just accepted.
    pub(crate) fn opened() -> Self {
        ::metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
        Self
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        ::metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// Records a connection the service closed itself, by `reason` (a fixed set).
pub(crate) fn http_connection_closed(reason: &'static str) {
    ::metrics::counter!(HTTP_CONNECTIONS_CLOSED_TOTAL, "reason" => reason).increment(1);
}

/// Records a wrong secret's outcome (`rejected` or `throttled`).
pub(crate) fn auth_failure(outcome: &'static str) {
    ::metrics::counter!(HTTP_AUTH_FAILURES_TOTAL, "outcome" => outcome).increment(1);
}

/// Records a task created through intake, by kind (one of the config's templates).
pub(crate) fn task_submitted(kind: &str) {
    ::metrics::counter!(TASKS_SUBMITTED_TOTAL, "kind" => kind.to_owned()).increment(1);
}

/// The wire name of a task status, as a label.
pub(crate) fn status_label(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued => "queued",
        TaskStatus::Blocked => "blocked",
        TaskStatus::Running => "running",
        TaskStatus::AwaitingApproval => "awaiting_approval",
        TaskStatus::Done => "done",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::DeadLetter => "dead_letter",
    }
}

/// Publishes how many tasks ended in `status` since start (the store counts them as it
/// commits; `/metrics` copies the counts in before it renders).
pub(crate) fn tasks_finished(status: TaskStatus, total: u64) {
    ::metrics::counter!(TASKS_FINISHED_TOTAL, "status" => status_label(status)).absolute(total);
}

/// Sets the queue gauges to Compass's current counts.
pub(crate) fn task_gauges(queued: usize, running: usize) {
    ::metrics::gauge!(TASKS_QUEUED).set(gauge_value(queued));
    ::metrics::gauge!(TASKS_RUNNING).set(gauge_value(running));
}

/// Publishes the store's disk state: full (or reserve in use) and failed, each 1 or 0.
pub(crate) fn store_fault(full: bool, failed: bool) {
    ::metrics::gauge!(STORE_FULL).set(if full { 1.0 } else { 0.0 });
    ::metrics::gauge!(STORE_FAILED).set(if failed { 1.0 } else { 0.0 });
}

/// Publishes how long Compass took to load the queue at start.
pub(crate) fn queue_reloaded(elapsed: Duration) {
    ::metrics::gauge!(QUEUE_RELOAD_SECONDS).set(elapsed.as_secs_f64());
}

/// Publishes the store writer's state: stalled (the watchdog's verdict), jobs waiting, and groups
/// and jobs committed since start.
pub(crate) fn store_writer(stalled: bool, queued: usize, groups: u64, jobs: u64) {
    ::metrics::gauge!(STORE_WRITER_STALLED).set(if stalled { 1.0 } else { 0.0 });
    ::metrics::gauge!(STORE_WRITE_QUEUE).set(gauge_value(queued));
    ::metrics::counter!(STORE_GROUPS_TOTAL).absolute(groups);
    ::metrics::counter!(STORE_JOBS_TOTAL).absolute(jobs);
}

/// A count as a gauge value (exact below 2^53, far above any queue bound).
fn gauge_value(count: usize) -> f64 {
    u32::try_from(count).map_or(f64::from(u32::MAX), f64::from)
}

/// Records an ended engine run: its outcome (a label such as `ok` or `timed_out`), its duration
/// and the model tokens it used (`(input, output)`).
pub(crate) fn engine_run(
    persona: &str,
    engine: &str,
    outcome: &'static str,
    duration: Duration,
    tokens: Option<(u64, u64)>,
) {
    let (persona, engine) = (persona.to_owned(), engine.to_owned());
    ::metrics::counter!(ENGINE_RUNS_TOTAL, "persona" => persona.clone(), "engine" => engine.clone(), "status" => outcome)
        .increment(1);
    ::metrics::histogram!(ENGINE_RUN_DURATION_SECONDS, "persona" => persona.clone(), "engine" => engine)
        .record(duration.as_secs_f64());
    if let Some((input, output)) = tokens {
        ::metrics::counter!(MODEL_TOKENS_TOTAL, "persona" => persona.clone(), "direction" => "input")
            .increment(input);
        ::metrics::counter!(MODEL_TOKENS_TOTAL, "persona" => persona, "direction" => "output")
            .increment(output);
    }
}

/// Records a restart of `actor` (a persona's name, or `pipeline`).
pub(crate) fn actor_restarted(actor: &'static str) {
    ::metrics::counter!(ACTOR_RESTARTS_TOTAL, "actor" => actor).increment(1);
}

/// Records a give-up on `actor` (a persona's name, or `pipeline`) past its restart limit.
pub(crate) fn actor_failed(actor: &'static str) {
    ::metrics::counter!(ACTOR_FAILURES_TOTAL, "actor" => actor).increment(1);
}

/// Records a transfer the Ledger applied, by its code.
pub(crate) fn ledger_transfer(code: u16) {
    ::metrics::counter!(LEDGER_TRANSFERS_TOTAL, "code" => code.to_string()).increment(1);
}

/// Records an engine run's charge to `agent:<persona>`.
pub(crate) fn ledger_charged(persona: &str, micro_tokens: u64) {
    ::metrics::counter!(LEDGER_CHARGED_MICRO_TOKENS_TOTAL, "persona" => persona.to_owned())
        .increment(micro_tokens);
}

/// Records an engine-run charge that failed: the run is unpaid. `code` is the error's code.
pub(crate) fn ledger_charge_failed(persona: &str, code: &'static str) {
    ::metrics::counter!(LEDGER_CHARGE_FAILURES_TOTAL, "persona" => persona.to_owned(), "code" => code)
        .increment(1);
}

/// Records a task ended `POISONED`; `reason` is `unclean_stops` or `persona_crashes`.
pub(crate) fn task_poisoned(reason: &'static str) {
    ::metrics::counter!(TASKS_POISONED_TOTAL, "reason" => reason).increment(1);
}

/// Records a deploy that ended in `status` (its wire name).
pub(crate) fn deploy_finished(app: &str, status: &str) {
    ::metrics::counter!(DEPLOYS_FINISHED_TOTAL, "app" => app.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// Records a newly opened incident. `app` is a bounded label: an app `ops.yaml` names, else
/// `other` ([`crate::model::ops::spec::OpsFile::app_label`]).
pub(crate) fn incident_opened(app: &str, classification: &str) {
    ::metrics::counter!(INCIDENTS_OPENED_TOTAL, "app" => app.to_owned(), "classification" => classification.to_owned())
        .increment(1);
}

/// Records a signal a silence quieted. `app` is a bounded label, as in [`incident_opened`].
pub(crate) fn signal_silenced(app: &str) {
    ::metrics::counter!(SIGNALS_SILENCED_TOTAL, "app" => app.to_owned()).increment(1);
}

/// Records one scheduled check run (app and check come from `ops.yaml`; `outcome` is `pass`,
/// `fail` or `skipped`, anything else counted as `other`).
pub(crate) fn check_finished(app: &str, check: &str, outcome: &str) {
    let outcome = match outcome {
        "pass" => "pass",
        "fail" => "fail",
        "skipped" => "skipped",
        _ => "other",
    };
    ::metrics::counter!(CHECKS_TOTAL, "app" => app.to_owned(), "check" => check.to_owned(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("POST"), "POST");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other");
    }

    #[test]
    fn status_labels_are_the_wire_names() {
        for status in [
            TaskStatus::Queued,
            TaskStatus::Blocked,
            TaskStatus::Running,
            TaskStatus::AwaitingApproval,
            TaskStatus::Done,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::DeadLetter,
        ] {
            assert_eq!(status_label(status), crate::model::ops::wire_name(&status));
        }
    }

    #[test]
    fn install_twice_gives_the_same_recorder() {
        let first = install().map(|h| h as *const PrometheusHandle);
        let second = install().map(|h| h as *const PrometheusHandle);
        assert!(first.is_some());
        assert_eq!(first, second);
        // A code no other test uses: unit tests share the process's recorder.
        ledger_transfer(65_535);
        let text = render().unwrap_or_default();
        assert!(
            text.lines()
                .any(|line| line == "glitchlab_ledger_transfers_total{code=\"65535\"} 1"),
            "{text}"
        );
    }
}
