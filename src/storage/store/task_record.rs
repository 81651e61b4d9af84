//! The stored shape of a task: the one place where a record of the `Tasks` tree is defined,
//! versioned, and converted to and from the domain [`Task`].
//!
//! A record is the task's four parts side by side, each under its own key and with its own
//! version, and the record's own version around them (version 2):
//!
//! ```json
//! {"v":2,"id":"…","spec":{…},"spec_v":1,"progress":{…},"progress_v":1,
//!  "billing":{…},"billing_v":1,"outcome":{…},"outcome_v":1}
//! ```
//!
//! A part's stored form is the part's own serde (`model::task`), so adding a field to a part is
//! one edit there (with a serde default so older records read); a change of a part's layout that
//! a default cannot absorb bumps that part's version here, with its reading of the older one.
//!
//! Older records still read: version 1 (`{"v":1, …}`) and version 0 (no `v`, written before
//! versions existed) are the flat layout, exactly the served JSON of [`Task`], and decode as
//! that. A record or a part from a newer build (a version above what this build knows) is refused
//! with [`StoreError::Schema`] rather than misread. A record is rewritten in version 2 by its next
//! change.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::task::{Task, TaskBilling, TaskId, TaskOutcome, TaskProgress, TaskSpec};
use crate::platform::redact::Redactor;

/// The record version this build writes (and the newest it reads).
pub(super) const TASK_RECORD_VERSION: u64 = 2;

/// The newest (and written) version of each part: spec, progress, billing, outcome.
const PART_VERSIONS: [(&str, u64); 4] = [
    ("task spec", 1),
    ("task progress", 1),
    ("task billing", 1),
    ("task outcome", 1),
];

/// What [`Store`](super::Store) keeps in the `Tasks` tree for one task: record version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredTask {
    v: u64,
    id: TaskId,
    spec: TaskSpec,
    spec_v: u64,
    progress: TaskProgress,
    progress_v: u64,
    billing: TaskBilling,
    billing_v: u64,
    outcome: TaskOutcome,
    outcome_v: u64,
}

impl From<Task> for StoredTask {
    fn from(task: Task) -> Self {
        let [spec_v, progress_v, billing_v, outcome_v] = PART_VERSIONS.map(|(_, v)| v);
        Self {
            v: TASK_RECORD_VERSION,
            id: task.id,
            spec: task.spec,
            spec_v,
            progress: task.progress,
            progress_v,
            billing: task.billing,
            billing_v,
            outcome: task.outcome,
            outcome_v,
        }
    }
}

impl TryFrom<StoredTask> for Task {
    type Error = StoreError;

    /// Refuses a record, or a part, of a version this build does not know.
    fn try_from(r: StoredTask) -> Result<Self, Self::Error> {
        if r.v > TASK_RECORD_VERSION {
            return Err(newer_schema("task", r.v, TASK_RECORD_VERSION));
        }
        check_parts([r.spec_v, r.progress_v, r.billing_v, r.outcome_v])?;
        Ok(Task {
            id: r.id,
            spec: r.spec,
            progress: r.progress,
            billing: r.billing,
            outcome: r.outcome,
        })
    }
}

/// The bytes to store for `task`: its record at [`TASK_RECORD_VERSION`], secret values redacted.
pub(super) fn encode(task: &Task, redactor: &Redactor) -> Result<Vec<u8>, StoreError> {
    super::encode(redactor, &StoredTask::from(task.clone()))
}

/// The task a stored record holds, whichever version wrote it (one this build knows).
pub(super) fn decode(bytes: &[u8]) -> Result<Task, StoreError> {
    // One pass for a readable record: one that does not look like version 2 is tried in the
    // flat layout first (what records of earlier builds are).
    if !names_parts(bytes) {
        if let Ok(FlatRecord { v: 0 | 1, task }) = serde_json::from_slice(bytes) {
            return Ok(task);
        }
    }
    let error = match serde_json::from_slice::<StoredTask>(bytes) {
        Ok(record) => return Task::try_from(record),
        Err(error) => error,
    };
    match version_of(bytes) {
        // Versions 0 and 1: the flat layout, which is the served shape of `Task`.
        Some(0 | 1) => Ok(serde_json::from_slice::<Task>(bytes)?),
        // A newer build's layout may not parse as ours: say so, rather than name a field.
        Some(v) if v > TASK_RECORD_VERSION => Err(newer_schema("task", v, TASK_RECORD_VERSION)),
        // Our record version with a part from a newer build in it.
        Some(TASK_RECORD_VERSION) => Err(part_versions(bytes)
            .and_then(|versions| check_parts(versions).err())
            .unwrap_or(StoreError::Codec(error))),
        _ => Err(StoreError::Codec(error)),
    }
}

/// A record in the flat layout of versions 0 and 1 (the served shape of `Task`), with its `v`.
#[derive(Deserialize)]
struct FlatRecord {
    #[serde(default)]
    v: u64,
    #[serde(flatten)]
    task: Task,
}

/// Whether the record looks like version 2 by its first key: `v` when written as is, `billing`
/// when written through the redactor (its JSON objects sort their keys). A flat record starts
/// with neither; a wrong guess costs only a second parse.
fn names_parts(bytes: &[u8]) -> bool {
    bytes.starts_with(br#"{"v":2,"#) || bytes.starts_with(br#"{"billing":"#)
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

/// Refuses a part whose version is newer than this build knows.
fn check_parts(versions: [u64; 4]) -> Result<(), StoreError> {
    for ((part, known), version) in PART_VERSIONS.into_iter().zip(versions) {
        if version > known {
            return Err(newer_schema(part, version, known));
        }
    }
    Ok(())
}

/// The part versions of a version 2 record whose parts may not parse.
fn part_versions(bytes: &[u8]) -> Option<[u64; 4]> {
    #[derive(Deserialize)]
    struct Versions {
        spec_v: u64,
        progress_v: u64,
        billing_v: u64,
        outcome_v: u64,
    }
    let r: Versions = serde_json::from_slice(bytes).ok()?;
    Some([r.spec_v, r.progress_v, r.billing_v, r.outcome_v])
}

fn newer_schema(record: &'static str, version: u64, known: u64) -> StoreError {
    StoreError::Schema {
        record,
        version,
        known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::{
        Delivered, Delivery, EngineSpec, ErrorInfo, PlanStep, Priority, ReviewPolicy, Stage,
        TaskBudget, TaskStatus,
    };

    /// A task record exactly as the code before schema versions wrote it (`serde_json::to_vec`
    /// of the domain `Task`, no `v`): a running task with most optional fields set.
    const LEGACY_RECORD: &str = r#"{"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10","title":"Add a health endpoint","description":"Serve /healthz.","repo":"/srv/repos/demo","base_branch":"main","kind":"feature","priority":"high","verify":"cargo test","acceptance":"GET /healthz answers 200","max_attempts":3,"engines":{"planner":{"kind":"builtin"},"patch":{"kind":"shell","command":"./implement.sh"}},"deps":["01932f6e-7000-7000-8000-000000000001"],"blocked_by":[],"review_policy":"manual","delivery":"merge","caused_by":{"incident":"inc-7","deploy":"dep-3"},"account":"user:local","budget":{"max_cost":5000000,"max_tokens":20000},"parent_task":"01932f6e-7000-7000-8000-000000000002","reservation":"task:01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10:1","budget_rounds":1,"settled":false,"idempotency_key":"key-1","status":"running","stage":"verify","stages":["plan","implement","verify","approve","deliver"],"attempts":2,"stage_retries":1,"reverifications":0,"failures":[{"at":"2024-11-12T10:01:02.123456Z","stage":"verify","attempt":1,"error":{"code":"VERIFY_FAILED","message":"1 test failed"}}],"branch":"glitchlab/01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b10","commit":null,"plan":{"summary":"Add /healthz","steps":[{"title":"Add the route","files":["src/main.rs"],"rationale":"probes need it"}],"risk":"low"},"feedback":"test health ... FAILED","error":null,"created_at":"2024-11-12T10:00:00Z","updated_at":"2024-11-12T10:01:02.123456Z","started_at":"2024-11-12T10:00:01Z","finished_at":null}"#;

    /// An old queued task: only the fields records had before `deps`, budgets, ops and retries,
    /// which the old code read with their defaults.
    const LEGACY_MINIMAL_RECORD: &str = r#"{"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b11","title":"t","description":"","repo":"/tmp/repo","base_branch":"main","kind":"feature","priority":"medium","verify":"true","max_attempts":3,"engines":{},"status":"queued","stage":null,"stages":["plan"],"attempts":0,"branch":null,"commit":null,"plan":null,"error":null,"created_at":"2024-11-12T10:00:00Z","updated_at":"2024-11-12T10:00:00Z","started_at":null,"finished_at":null}"#;

    /// A done task exactly as the build before parts wrote it (record version 1, flat).
    const V1_RECORD: &str = r#"{"v":1,"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b12","title":"Fix the build","description":"It is red.","repo":"/srv/repos/demo","base_branch":"main","kind":"bugfix","priority":"medium","verify":"true","max_attempts":3,"engines":{},"deps":[],"blocked_by":[],"review_policy":"auto","delivery":"merge","capabilities":["os:linux"],"account":"user:local","budget":{"max_cost":1000},"submitted_by":"ci","reservation":"task:x:1","budget_rounds":1,"settled":true,"status":"done","stage":"deliver","stages":["implement","verify","deliver"],"attempts":1,"stage_retries":0,"reverifications":0,"merge":{"verified_tree":"abc","queued_at":"2026-11-12T10:00:03Z"},"failures":[],"branch":"glitchlab/01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b12","commit":"4b825dc642cb6eb9a060e54bf8d69288fbee4904","delivered":"landed","plan":null,"error":null,"created_at":"2026-11-12T10:00:00Z","updated_at":"2026-11-12T10:00:05Z","started_at":"2026-11-12T10:00:01Z","finished_at":"2026-11-12T10:00:05Z"}"#;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn a_record_without_a_version_decodes() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        // The literal is what the writer before versions produced (`Task`'s serde, which is
        // still the served shape: the same keys and values; only their order follows the parts).
        assert_eq!(
            serde_json::to_value(&task).expect("serializes"),
            json(LEGACY_RECORD.as_bytes())
        );
        assert_eq!(task.spec.title, "Add a health endpoint");
        assert_eq!(task.spec.priority, Priority::High);
        assert_eq!(task.progress.status, TaskStatus::Running);
        assert_eq!(task.progress.stage, Some(Stage::Verify));
        assert_eq!(task.spec.review_policy, ReviewPolicy::Manual);
        assert_eq!(
            task.spec.engines.patch,
            Some(EngineSpec::Shell {
                command: "./implement.sh".into()
            })
        );
        assert_eq!(task.billing.budget.max_tokens, Some(20_000));
        assert_eq!(task.billing.budget.max_wall_secs, None);
        assert_eq!(task.progress.failures.len(), 1);
        assert_eq!(
            task.progress.failures[0].error.code,
            crate::model::codes::VERIFY_FAILED
        );
        assert_eq!(
            task.progress.plan.as_ref().map(|p| p.steps.clone()),
            Some(vec![PlanStep {
                title: "Add the route".into(),
                files: vec!["src/main.rs".into()],
                rationale: "probes need it".into(),
            }])
        );
        assert_eq!(
            task.spec
                .caused_by
                .as_ref()
                .and_then(|c| c.deploy.as_deref()),
            Some("dep-3")
        );
    }

    #[test]
    fn a_minimal_record_without_a_version_decodes_with_defaults() {
        let task = decode(LEGACY_MINIMAL_RECORD.as_bytes()).expect("legacy record decodes");
        assert_eq!(task.progress.status, TaskStatus::Queued);
        assert!(task.spec.deps.is_empty() && task.progress.failures.is_empty());
        assert_eq!(task.spec.delivery, Delivery::Merge);
        assert_eq!(task.billing.account, "");
        assert_eq!(task.billing.budget, TaskBudget::default());
        assert!(!task.billing.settled);
    }

    /// Re-encoding an old record loses, renames and re-shapes nothing: its fields are spread
    /// over the four parts, each part carries its version, and merging the parts back gives the
    /// old record.
    #[test]
    fn a_legacy_record_reencodes_as_version_2_in_parts_unchanged_otherwise() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        let stored = json(&encode(&task, &Redactor::default()).expect("encodes"));
        assert_eq!(stored["v"], serde_json::json!(2));
        let mut merged = serde_json::Map::new();
        merged.insert("id".into(), stored["id"].clone());
        for (part, known) in PART_VERSIONS.iter().map(|(name, v)| (&name[5..], *v)) {
            assert_eq!(
                stored[format!("{part}_v")],
                serde_json::json!(known),
                "{part}"
            );
            let fields = stored[part].as_object().expect("a part is an object");
            for (key, value) in fields {
                assert!(
                    merged.insert(key.clone(), value.clone()).is_none(),
                    "{key} twice"
                );
            }
        }
        assert_eq!(
            serde_json::Value::Object(merged),
            json(LEGACY_RECORD.as_bytes())
        );
    }

    /// A record written by the build before parts (`"v":1`, the flat layout) still reads.
    #[test]
    fn a_version_1_record_decodes() {
        let task = decode(V1_RECORD.as_bytes()).expect("v1 record decodes");
        assert_eq!(task.id.to_string(), "01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b12");
        assert_eq!(task.progress.status, TaskStatus::Done);
        assert_eq!(task.outcome.delivered, Some(Delivered::Landed));
        assert_eq!(
            task.outcome.commit.as_deref(),
            Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
        );
        assert_eq!(task.spec.capabilities, vec!["os:linux".to_owned()]);
        assert_eq!(task.billing.reservation.as_deref(), Some("task:x:1"));
        assert!(task.billing.settled);
        assert_eq!(task.progress.merge.verified_tree.as_deref(), Some("abc"));
        assert_eq!(task.spec.submitted_by.as_deref(), Some("ci"));
        let mut served = json(V1_RECORD.as_bytes());
        if let Some(object) = served.as_object_mut() {
            object.remove("v");
        }
        assert_eq!(serde_json::to_value(&task).expect("serializes"), served);
    }

    #[test]
    fn records_carry_their_version_and_round_trip() {
        let mut task = Task::for_test("t", "d");
        task.spec.acceptance = Some("it works".into());
        task.record_failure(
            Stage::Verify,
            ErrorInfo::new(crate::model::codes::VERIFY_FAILED, "no"),
        );
        let bytes = encode(&task, &Redactor::default()).expect("encodes");
        assert_eq!(json(&bytes)["v"], serde_json::json!(TASK_RECORD_VERSION));
        assert_eq!(decode(&bytes).expect("decodes"), task);
    }

    /// Which layout is tried first is only a guess from the first key: records of every layout,
    /// written with and without the redactor, read the same whatever the guess.
    #[test]
    fn the_first_guess_never_decides_what_a_record_reads_as() {
        let task = decode(V1_RECORD.as_bytes()).expect("decodes");
        assert!(!names_parts(V1_RECORD.as_bytes()));
        assert!(!names_parts(LEGACY_RECORD.as_bytes()));
        let plain = encode(&task, &Redactor::default()).expect("encodes");
        assert!(names_parts(&plain));
        // Through a `Value` (what the redactor does): keys sorted, `billing` first.
        let sorted = serde_json::to_vec(&json(&plain)).expect("encodes");
        assert!(names_parts(&sorted));
        let flat_sorted = serde_json::to_vec(&json(V1_RECORD.as_bytes())).expect("encodes");
        assert!(!names_parts(&flat_sorted));
        for bytes in [
            &plain,
            &sorted,
            &flat_sorted,
            &V1_RECORD.as_bytes().to_vec(),
        ] {
            assert_eq!(decode(bytes).expect("decodes"), task);
        }
        // A v2 record that does not start as expected is still read as version 2.
        let mut reordered = String::from(r#"{"id":"#);
        let text = String::from_utf8(plain.clone()).expect("utf-8");
        let id_start = text.find(r#","id":"#).expect("id");
        reordered.push_str(&text[id_start + 6..text.len() - 1]);
        reordered.push_str(r#","v":2}"#);
        assert!(!names_parts(reordered.as_bytes()));
        assert_eq!(decode(reordered.as_bytes()).expect("decodes"), task);
    }

    /// The served JSON stays the flat layout clients always read, whatever the stored one is.
    #[test]
    fn the_served_shape_is_the_flat_version_1_layout() {
        let task = decode(LEGACY_RECORD.as_bytes()).expect("legacy record decodes");
        let served = serde_json::to_value(&task).expect("serializes");
        assert_eq!(served, json(LEGACY_RECORD.as_bytes()));
        let again: Task = serde_json::from_value(served).expect("reads back");
        assert_eq!(again, task);
    }

    #[test]
    fn a_newer_version_is_refused_not_misread() {
        let task = decode(LEGACY_MINIMAL_RECORD.as_bytes()).expect("decodes");
        let mut newer = json(&encode(&task, &Redactor::default()).expect("encodes"));
        newer["v"] = serde_json::json!(3);
        let error = decode(newer.to_string().as_bytes()).expect_err("v3 is refused");
        assert!(
            matches!(
                error,
                StoreError::Schema {
                    record: "task",
                    version: 3,
                    known: 2
                }
            ),
            "{error}"
        );
        // A flat record claiming a newer version is refused too, not read as version 1.
        let mut flat = json(LEGACY_MINIMAL_RECORD.as_bytes());
        flat["v"] = serde_json::json!(4);
        let error = decode(flat.to_string().as_bytes()).expect_err("v4 is refused");
        assert!(
            matches!(error, StoreError::Schema { version: 4, .. }),
            "{error}"
        );
        // A part from a newer build is refused for that part, parseable or not.
        let mut part = json(&encode(&task, &Redactor::default()).expect("encodes"));
        part["billing_v"] = serde_json::json!(2);
        let error = decode(part.to_string().as_bytes()).expect_err("billing v2 is refused");
        assert!(
            matches!(
                error,
                StoreError::Schema {
                    record: "task billing",
                    version: 2,
                    known: 1
                }
            ),
            "{error}"
        );
        part["billing"] = serde_json::json!({"account": 7});
        let error = decode(part.to_string().as_bytes()).expect_err("billing v2 is refused");
        assert!(
            matches!(
                error,
                StoreError::Schema {
                    record: "task billing",
                    version: 2,
                    ..
                }
            ),
            "{error}"
        );
        // A layout ours cannot parse at all is refused for its version too.
        let error = decode(br#"{"v":5,"task":{"id":"x"}}"#).expect_err("v5 is refused");
        assert!(
            matches!(error, StoreError::Schema { version: 5, .. }),
            "{error}"
        );
    }

    /// Through the store: an old record already on disk is served, reloaded at start, and
    /// rewritten in version 2 by its next change.
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
            .update_task(id, &[], |task| task.progress.attempts = 1)
            .await
            .expect("update");
        assert_eq!(updated.progress.attempts, 1);
        let raw = store
            .read(move |snapshot| snapshot.get(Table::Tasks, id.as_bytes()))
            .await
            .expect("raw read")
            .expect("present");
        assert_eq!(json(&raw)["v"], serde_json::json!(2));
        assert_eq!(store.task(id).await.expect("read"), Some(updated));
    }

    #[test]
    fn a_damaged_record_is_a_codec_error() {
        let error = decode(br#"{"v":1,"title":"no id"}"#).expect_err("refused");
        assert!(matches!(error, StoreError::Codec(_)), "{error}");
        let error = decode(br#"{"v":2,"id":"01932f6e-8c1a-7b3e-9a55-2f0c6d8e4b12","spec_v":1,"progress_v":1,"billing_v":1,"outcome_v":1}"#).expect_err("refused");
        assert!(matches!(error, StoreError::Codec(_)), "{error}");
        let error = decode(b"not json").expect_err("refused");
        assert!(matches!(error, StoreError::Codec(_)), "{error}");
    }
}
