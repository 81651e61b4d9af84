//! The stored shape of a task: the one place where a record of the `Tasks` tree is defined,
//! versioned, and converted to and from the domain [`Task`].
//!
//! [`Task`]'s serde shape is what HTTP clients see; [`StoredTask`] is what sled keeps. They are
//! separate types on purpose, so that changing one is a decision about the other, taken here in
//! the conversions, and never an accident:
//! - a storage change (a new layout) is a new schema version with its conversion, not an API
//!   change;
//! - an API change to `Task` does not silently rewrite what is on disk: the conversions destructure
//!   both types field by field, so a field added to either fails to compile until this file says
//!   where it goes.
//!
//! Every record is written with its schema version, `{"v":1, ...}`. Records written before
//! versions existed have no `v`; their layout is exactly version 1's (v1 was defined as that
//! layout), so they read as version 0 and decode unchanged. A record from a newer build (a `v`
//! above [`TASK_RECORD_VERSION`]) is refused with [`StoreError::Schema`] rather than misread.
//!
//! The nested value types (`Plan`, `EngineOverrides`, `FailureRecord`, ...) are shared with the
//! model for now; one that needs its own stored shape gets it here, the same way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::task::{
    CausedBy, Delivered, Delivery, EngineOverrides, ErrorInfo, FailureRecord, MergeState, Plan,
    Priority, ReviewPolicy, Stage, Task, TaskBudget, TaskId, TaskStatus,
};
use crate::platform::redact::Redactor;

/// The schema version this build writes (and the newest it reads).
pub(super) const TASK_RECORD_VERSION: u64 = 1;

/// What [`Store`](super::Store) keeps in the `Tasks` tree for one task: schema version 1.
///
/// Field names, defaults and omissions are the layout of records written before versions
/// existed, so those records read as this type (with `v` = 0). Build one with `From<Task>`; read
/// one back with `TryFrom`, which checks the version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTask {
    /// Schema version; absent (0) on records written before versions existed.
    #[serde(default)]
    v: u64,
    id: TaskId,
    title: String,
    description: String,
    repo: String,
    base_branch: String,
    kind: String,
    priority: Priority,
    verify: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acceptance: Option<String>,
    max_attempts: u32,
    engines: EngineOverrides,
    #[serde(default)]
    deps: Vec<TaskId>,
    #[serde(default)]
    blocked_by: Vec<TaskId>,
    #[serde(default)]
    review_policy: ReviewPolicy,
    #[serde(default)]
    delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caused_by: Option<CausedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deploy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    capabilities: Vec<String>,
    #[serde(default)]
    account: String,
    #[serde(default)]
    budget: TaskBudget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_task: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    submitted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reservation: Option<String>,
    #[serde(default)]
    budget_rounds: u32,
    #[serde(default)]
    settled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    status: TaskStatus,
    stage: Option<Stage>,
    stages: Vec<Stage>,
    attempts: u32,
    #[serde(default)]
    stage_retries: u32,
    #[serde(default)]
    reverifications: u32,
    #[serde(default, skip_serializing_if = "MergeState::is_empty")]
    merge: MergeState,
    #[serde(default)]
    failures: Vec<FailureRecord>,
    branch: Option<String>,
    commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivered: Option<Delivered>,
    plan: Option<Plan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feedback: Option<String>,
    error: Option<ErrorInfo>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<Task> for StoredTask {
    fn from(task: Task) -> Self {
        let Task {
            id,
            title,
            description,
            repo,
            base_branch,
            kind,
            priority,
            verify,
            acceptance,
            max_attempts,
            engines,
            deps,
            blocked_by,
            review_policy,
            delivery,
            caused_by,
            deploy,
            capabilities,
            account,
            budget,
            parent_task,
            submitted_by,
            reservation,
            budget_rounds,
            settled,
            idempotency_key,
            status,
            stage,
            stages,
            attempts,
            stage_retries,
            reverifications,
            merge,
            failures,
            branch,
            commit,
            delivered,
            plan,
            feedback,
            error,
            created_at,
            updated_at,
            started_at,
            finished_at,
        } = task;
        Self {
            v: TASK_RECORD_VERSION,
            id,
            title,
            description,
            repo,
            base_branch,
            kind,
            priority,
            verify,
            acceptance,
            max_attempts,
            engines,
            deps,
            blocked_by,
            review_policy,
            delivery,
            caused_by,
            deploy,
            capabilities,
            account,
            budget,
            parent_task,
            submitted_by,
            reservation,
            budget_rounds,
            settled,
            idempotency_key,
            status,
            stage,
            stages,
            attempts,
            stage_retries,
            reverifications,
            merge,
            failures,
            branch,
            commit,
            delivered,
            plan,
            feedback,
            error,
            created_at,
            updated_at,
            started_at,
            finished_at,
        }
    }
}

impl TryFrom<StoredTask> for Task {
    type Error = StoreError;

    /// Refuses a record of a schema version this build does not know.
    fn try_from(record: StoredTask) -> Result<Self, Self::Error> {
        let StoredTask {
            v,
            id,
            title,
            description,
            repo,
            base_branch,
            kind,
            priority,
            verify,
            acceptance,
            max_attempts,
            engines,
            deps,
            blocked_by,
            review_policy,
            delivery,
            caused_by,
            deploy,
            capabilities,
            account,
            budget,
            parent_task,
            submitted_by,
            reservation,
            budget_rounds,
            settled,
            idempotency_key,
            status,
            stage,
            stages,
            attempts,
            stage_retries,
            reverifications,
            merge,
            failures,
            branch,
            commit,
            delivered,
            plan,
            feedback,
            error,
            created_at,
            updated_at,
            started_at,
            finished_at,
        } = record;
        // 0: written before versions existed, in version 1's layout.
        if v > TASK_RECORD_VERSION {
            return Err(newer_schema(v));
        }
        Ok(Task {
            id,
            title,
            description,
            repo,
            base_branch,
            kind,
            priority,
            verify,
            acceptance,
            max_attempts,
            engines,
            deps,
            blocked_by,
            review_policy,
            delivery,
            caused_by,
            deploy,
            capabilities,
            account,
            budget,
            parent_task,
            submitted_by,
            reservation,
            budget_rounds,
            settled,
            idempotency_key,
            status,
            stage,
            stages,
            attempts,
            stage_retries,
            reverifications,
            merge,
            failures,
            branch,
            commit,
            delivered,
            plan,
            feedback,
            error,
            created_at,
            updated_at,
            started_at,
            finished_at,
        })
    }
}

/// The bytes to store for `task`: its record at [`TASK_RECORD_VERSION`], secret values redacted.
pub(super) fn encode(task: &Task, redactor: &Redactor) -> Result<Vec<u8>, StoreError> {
    super::encode(redactor, &StoredTask::from(task.clone()))
}

/// The task a stored record holds, whichever version wrote it (one this build knows).
pub(super) fn decode(bytes: &[u8]) -> Result<Task, StoreError> {
    match serde_json::from_slice::<StoredTask>(bytes) {
        Ok(record) => Task::try_from(record),
        // A newer build's layout may not parse as ours: say so, rather than name a field.
        Err(error) => Err(match version_of(bytes) {
            Some(v) if v > TASK_RECORD_VERSION => newer_schema(v),
            _ => StoreError::Codec(error),
        }),
    }
}

/// The record's `v`, if it is a JSON object with a readable one (0 when it has none).
fn version_of(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: u64,
    }
    serde_json::from_slice::<Version>(bytes).ok().map(|r| r.v)
}

fn newer_schema(version: u64) -> StoreError {
    StoreError::Schema {
        record: "task",
        version,
        known: TASK_RECORD_VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::{EngineSpec, PlanStep};

    /// A task record exactly as the code before schema versions wrote it (`serde_json::to_vec`
    /// of the domain `Task`, no `v`): a running task with most optional fields set.
    const LEGACY_RECORD: &str = r#"{"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10","title":"Add a health endpoint","description":"Serve /healthz.","repo":"/srv/repos/demo","base_branch":"main","kind":"feature","priority":"high","verify":"cargo test","acceptance":"GET /healthz answers 200","max_attempts":3,"engines":{"planner":{"kind":"builtin"},"patch":{"kind":"shell","command":"./implement.sh"}},"deps":["01932f6e-7000-7000-8000-000000000001"],"blocked_by":[],"review_policy":"manual","delivery":"merge","caused_by":{"incident":"inc-7","deploy":"dep-3"},"account":"user:local","budget":{"max_cost":5000000,"max_tokens":20000},"parent_task":"01932f6e-7000-7000-8000-000000000002","reservation":"task:01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10:1","budget_rounds":1,"settled":false,"idempotency_key":"key-1","status":"running","stage":"verify","stages":["plan","implement","verify","approve","deliver"],"attempts":2,"stage_retries":1,"reverifications":0,"failures":[{"at":"2024-11-12T10:01:02.123456Z","stage":"verify","attempt":1,"error":{"code":"VERIFY_FAILED","message":"1 test failed"}}],"branch":"glitchlab/01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10","commit":null,"plan":{"summary":"Add /healthz","steps":[{"title":"Add the route","files":["src/main.rs"],"rationale":"probes need it"}],"risk":"low"},"feedback":"test health ... FAILED","error":null,"created_at":"2024-11-12T10:00:00Z","updated_at":"2024-11-12T10:01:02.123456Z","started_at":"2024-11-12T10:00:01Z","finished_at":null}"#;

    /// An old queued task: only the fields records had before `deps`, budgets, ops and retries,
    /// which the old code read with their defaults.
    const LEGACY_MINIMAL_RECORD: &str = r#"{"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b11","title":"t","description":"","repo":"/tmp/repo","base_branch":"main","kind":"feature","priority":"medium","verify":"true","max_attempts":3,"engines":{},"status":"queued","stage":null,"stages":["plan"],"attempts":0,"branch":null,"commit":null,"plan":null,"error":null,"created_at":"2024-11-12T10:00:00Z","updated_at":"2024-11-12T10:00:00Z","started_at":null,"finished_at":null}"#;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn a_record_without_a_version_decodes() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        // The literal is byte for byte what the writer before versions produced: `Task`'s serde.
        assert_eq!(
            serde_json::to_string(&task).expect("serializes"),
            LEGACY_RECORD
        );
        assert_eq!(task.title, "Add a health endpoint");
        assert_eq!(task.priority, Priority::High);
        assert_eq!(task.status, TaskStatus::Running);
        assert_eq!(task.stage, Some(Stage::Verify));
        assert_eq!(task.review_policy, ReviewPolicy::Manual);
        assert_eq!(
            task.engines.patch,
            Some(EngineSpec::Shell {
                command: "./implement.sh".into()
            })
        );
        assert_eq!(task.budget.max_tokens, Some(20_000));
        assert_eq!(task.budget.max_wall_secs, None);
        assert_eq!(task.failures.len(), 1);
        assert_eq!(
            task.failures[0].error.code,
            crate::model::codes::VERIFY_FAILED
        );
        assert_eq!(
            task.plan.as_ref().map(|p| p.steps.clone()),
            Some(vec![PlanStep {
                title: "Add the route".into(),
                files: vec!["src/main.rs".into()],
                rationale: "probes need it".into(),
            }])
        );
        assert_eq!(
            task.caused_by.as_ref().and_then(|c| c.deploy.as_deref()),
            Some("dep-3")
        );
    }

    #[test]
    fn a_minimal_record_without_a_version_decodes_with_defaults() {
        let task = decode(LEGACY_MINIMAL_RECORD.as_bytes()).expect("legacy record decodes");
        assert_eq!(task.status, TaskStatus::Queued);
        assert!(task.deps.is_empty() && task.failures.is_empty());
        assert_eq!(task.delivery, Delivery::Merge);
        assert_eq!(task.account, "");
        assert_eq!(task.budget, TaskBudget::default());
        assert!(!task.settled);
    }

    /// Re-encoding an old record changes nothing but the added version: no field is lost,
    /// renamed or re-shaped, so version 1 is exactly the layout before versions.
    #[test]
    fn a_legacy_record_reencodes_as_version_1_unchanged_otherwise() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        let mut expected = json(LEGACY_RECORD.as_bytes());
        expected["v"] = serde_json::json!(1);
        assert_eq!(
            json(&encode(&task, &Redactor::default()).expect("encodes")),
            expected
        );
    }

    #[test]
    fn records_carry_their_version_and_round_trip() {
        let mut task = Task::for_test("t", "d");
        task.acceptance = Some("it works".into());
        task.record_failure(
            Stage::Verify,
            ErrorInfo::new(crate::model::codes::VERIFY_FAILED, "no"),
        );
        let bytes = encode(&task, &Redactor::default()).expect("encodes");
        assert_eq!(json(&bytes)["v"], serde_json::json!(TASK_RECORD_VERSION));
        assert_eq!(decode(&bytes).expect("decodes"), task);
    }

    /// Today the stored layout (minus `v`) and the served JSON are the same bytes; the day they
    /// part, this test is where that is decided.
    #[test]
    fn version_1_is_the_served_shape_plus_its_version() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        let mut stored = json(&encode(&task, &Redactor::default()).expect("encodes"));
        if let Some(object) = stored.as_object_mut() {
            object.remove("v");
        }
        assert_eq!(stored, serde_json::to_value(&task).expect("serializes"));
    }

    #[test]
    fn a_newer_version_is_refused_not_misread() {
        let mut newer = json(LEGACY_MINIMAL_RECORD.as_bytes());
        newer["v"] = serde_json::json!(2);
        let error = decode(newer.to_string().as_bytes()).expect_err("v2 is refused");
        assert!(
            matches!(error, StoreError::Schema { version: 2, .. }),
            "{error}"
        );
        // A layout ours cannot parse at all is refused for its version too.
        let error = decode(br#"{"v":3,"task":{"id":"x"}}"#).expect_err("v3 is refused");
        assert!(
            matches!(error, StoreError::Schema { version: 3, .. }),
            "{error}"
        );
    }

    /// Through the store: an old record already on disk is served, reloaded at start, and
    /// rewritten in version 1 by its next change.
    #[tokio::test]
    async fn the_store_reads_a_legacy_record_and_rewrites_it_versioned() {
        use super::super::{Store, Table};

        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store opens");
        let legacy = decode(LEGACY_MINIMAL_RECORD.as_bytes()).expect("decodes");
        let id = legacy.id;
        store
            .write(move |batch| {
                batch.insert(
                    Table::Tasks,
                    id.as_bytes(),
                    LEGACY_MINIMAL_RECORD.as_bytes(),
                );
                Ok::<_, StoreError>(())
            })
            .await
            .expect("raw write");
        assert_eq!(store.task(id).await.expect("read"), Some(legacy.clone()));
        assert_eq!(store.tasks(10).await.expect("list"), vec![legacy.clone()]);
        assert_eq!(
            store.unfinished_tasks().await.expect("scan"),
            vec![legacy.clone()]
        );
        let updated = store
            .update_task(id, &[], |task| task.attempts = 1)
            .await
            .expect("update");
        assert_eq!(updated.attempts, 1);
        let raw = store
            .read(move |snapshot| snapshot.get(Table::Tasks, id.as_bytes()))
            .await
            .expect("raw read")
            .expect("present");
        assert_eq!(json(&raw)["v"], serde_json::json!(1));
        assert_eq!(store.task(id).await.expect("read"), Some(updated));
    }

    #[test]
    fn a_damaged_record_is_a_codec_error() {
        let error = decode(br#"{"v":1,"title":"no id"}"#).expect_err("refused");
        assert!(matches!(error, StoreError::Codec(_)), "{error}");
        let error = decode(b"not json").expect_err("refused");
        assert!(matches!(error, StoreError::Codec(_)), "{error}");
    }
}
