//! The store's own tests: task writes through the writer, reads on the blocking pool, group
//! commit under concurrent writers, and sled's lock across reopening.

use std::time::Duration;

use super::*;
use crate::model::task::{Task, TaskStatus};

fn task(key: Option<&str>) -> Task {
    let mut task = Task::for_test("t", "");
    task.spec.idempotency_key = key.map(str::to_owned);
    task
}

fn submitted() -> NewEvent {
    NewEvent::new("test", "task.submitted", serde_json::json!({}))
}

#[tokio::test]
async fn idempotency_key_replays_or_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = task(Some("k"));
    let Submission::Created(created) = store
        .create_task(first.clone(), "d1", submitted())
        .await
        .unwrap()
    else {
        panic!("expected a new task");
    };
    match store
        .create_task(task(Some("k")), "d1", submitted())
        .await
        .unwrap()
    {
        Submission::Replayed(replayed) => assert_eq!(replayed.id, created.id),
        other => panic!("expected a replay, got {other:?}"),
    }
    match store
        .create_task(task(Some("k")), "d2", submitted())
        .await
        .unwrap()
    {
        Submission::KeyConflict(original) => assert_eq!(original, created.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.tasks(10).await.unwrap().len(), 1);
    assert_eq!(store.events(created.id).await.unwrap().len(), 1);
}

/// A new task (without an idempotency key) in `store`.
async fn create(store: &Store) -> Task {
    match store
        .create_task(task(None), "d", submitted())
        .await
        .unwrap()
    {
        Submission::Created(created) => created,
        _ => panic!("expected a new task"),
    }
}

#[tokio::test]
async fn terminal_tasks_never_change_and_events_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let created = create(&store).await;
    let events = [
        NewEvent::new("test", "task.started", serde_json::json!({})),
        NewEvent::new("test", "task.finished", serde_json::json!({})),
    ];
    store
        .update_task(created.id, &events, |t| {
            t.progress.status = TaskStatus::Cancelled
        })
        .await
        .unwrap();
    let refused = store
        .update_task(created.id, &[], |t| t.progress.status = TaskStatus::Running)
        .await;
    assert!(matches!(refused, Err(StoreError::TaskFinished(_))));
    assert_eq!(
        store
            .task(created.id)
            .await
            .unwrap()
            .unwrap()
            .progress
            .status,
        TaskStatus::Cancelled
    );
    let kinds: Vec<String> = store
        .events(created.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["task.submitted", "task.started", "task.finished"]);
    assert!(store.unfinished_tasks().await.unwrap().is_empty());
}

#[tokio::test]
async fn live_subscribers_get_durable_events_and_events_after_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut live = store.subscribe();
    let created = create(&store).await;
    for kind in ["task.started", "task.finished"] {
        let event = NewEvent::new("test", kind, serde_json::json!({}));
        store.append_event(created.id, event).await.unwrap();
    }
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(live.recv().await.unwrap().seq);
    }
    let stored: Vec<u64> = store
        .events(created.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(heard, stored);
    let after_first: Vec<u64> = store
        .events_after(created.id, stored[0])
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(after_first, stored[1..]);
    assert!(store
        .events_after(created.id, u64::MAX)
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn a_held_lock_is_waited_for_and_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let owner = Store::open(dir.path()).unwrap();
    let refused = Store::open_waiting(
        dir.path(),
        Duration::from_millis(150),
        WRITE_QUEUE_MAX,
        Arc::default(),
        super::space::Reserve::new(dir.path(), 0),
    );
    assert!(
        matches!(refused, Err(StoreError::Locked { waited_ms, .. }) if waited_ms >= 150),
        "{:?}",
        refused.err()
    );
    // The owner lets go while the next open is still waiting: that open succeeds.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(owner);
    });
    let reopened = Store::open_waiting(
        dir.path(),
        Duration::from_secs(10),
        WRITE_QUEUE_MAX,
        Arc::default(),
        super::space::Reserve::new(dir.path(), 0),
    );
    releaser.join().unwrap();
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        create(&store).await.id
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unfinished_tasks().await.unwrap()[0].id, id);
    let later = NewEvent::new("test", "task.resumed", serde_json::json!({}));
    store.append_event(id, later).await.unwrap();
    let seqs: Vec<u64> = store
        .events(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(seqs[0] < seqs[1], "{seqs:?}");
}

/// Writes through the writer from many tasks at once: all are durable, and the writer shares
/// flushes between them (fewer groups than jobs) — the group commit the load relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_group_commits() {
    const WRITERS: usize = 64;
    const EVENTS_EACH: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let created = create(&store).await;
    let groups_before = store.writer_health().groups();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            for n in 0..EVENTS_EACH {
                let data = serde_json::json!({"writer": writer, "n": n});
                let event = NewEvent::new("test", "test.event", data);
                store.append_event(created.id, event).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let jobs = WRITERS * EVENTS_EACH;
    assert_eq!(store.events(created.id).await.unwrap().len(), jobs + 1);
    let groups = store.writer_health().groups() - groups_before;
    assert!(
        groups < jobs as u64,
        "{jobs} concurrent writes took {groups} group commits: no batching"
    );
}

/// A job that refuses (returns `Err`) or panics leaves none of its writes, and the writer goes on
/// serving the jobs after it.
#[tokio::test]
async fn a_refused_or_panicking_job_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let refused: Result<(), StoreError> = store
        .write(|batch| {
            batch.insert(Table::Idempotency, b"refused".to_vec(), b"x".to_vec());
            Err(StoreError::Closed)
        })
        .await;
    assert!(matches!(refused, Err(StoreError::Closed)));
    let panicked: Result<(), StoreError> = store
        .write(|batch| {
            batch.insert(Table::Idempotency, b"panicked".to_vec(), b"x".to_vec());
            panic!("a bug in a job");
        })
        .await;
    assert!(matches!(panicked, Err(StoreError::Closed)), "{panicked:?}");
    let kept: Result<(), StoreError> = store
        .write(|batch| {
            batch.insert(Table::Idempotency, b"kept".to_vec(), b"x".to_vec());
            Ok(())
        })
        .await;
    assert!(kept.is_ok());
    let present = store
        .read(|snapshot| {
            Ok::<_, StoreError>(["refused", "panicked", "kept"].map(|key| {
                snapshot
                    .contains(Table::Idempotency, key.as_bytes())
                    .unwrap()
            }))
        })
        .await
        .unwrap();
    assert_eq!(present, [false, false, true]);
}

/// A group's inserts and removals land in every table they name, the last write of a key wins,
/// and all of it is on disk: what the commit's per-table sled batches (staged without reading the
/// values they replace) must keep.
#[tokio::test]
async fn a_group_writes_and_removes_across_tables_and_the_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [
        Table::Idempotency,
        Table::LedgerExpiry,
        Table::GithubDeliveries,
    ];
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write(move |batch| {
                for table in tables {
                    batch.insert(table, b"old".to_vec(), b"1".to_vec());
                    batch.insert(table, b"gone".to_vec(), b"1".to_vec());
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        // Several jobs in flight at once share groups; each stages in all three tables.
        let mut jobs = tokio::task::JoinSet::new();
        for n in 0..16u8 {
            let store = store.clone();
            jobs.spawn(async move {
                store
                    .write(move |batch| {
                        for table in tables {
                            batch.insert(table, vec![b'k', n], vec![n]);
                            batch.insert(table, b"old".to_vec(), b"2".to_vec());
                            batch.remove(table, b"gone".to_vec());
                            // Written, then removed, in one job: absent.
                            batch.insert(table, vec![b'x', n], vec![n]);
                            batch.remove(table, vec![b'x', n]);
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await
            });
        }
        while let Some(done) = jobs.join_next().await {
            done.unwrap().unwrap();
        }
    }
    // Reopened from disk: what the groups wrote is what is there.
    let store = Store::open(dir.path()).unwrap();
    let seen = store
        .read(move |snapshot| {
            let mut seen = Vec::new();
            for table in tables {
                let values: Vec<(Vec<u8>, Vec<u8>)> = snapshot
                    .iter(table)
                    .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()?;
                seen.push(values);
            }
            Ok::<_, StoreError>(seen)
        })
        .await
        .unwrap();
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> =
        (0..16u8).map(|n| (vec![b'k', n], vec![n])).collect();
    expected.push((b"old".to_vec(), b"2".to_vec()));
    expected.sort();
    for (table, values) in tables.iter().zip(seen) {
        assert_eq!(values, expected, "{table:?}");
    }
}

/// Keys written ascending (as ids and sequence numbers are: every split is at the right edge),
/// descending and scattered, some removed again (nodes shrink and merge), read back whole and in
/// order, point by point and by range, before and after a reopen: the tree's shape under the
/// store's writes, whatever the vendored sled's split rule.
#[tokio::test]
async fn a_table_written_in_every_order_reads_back_whole_after_a_reopen() {
    use std::collections::BTreeMap;
    const KEYS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for n in 0..KEYS {
        // Ascending, as growing ids are; descending below them; scattered across both.
        let ascending = [b"b".as_slice(), &n.to_be_bytes()].concat();
        let descending = [b"a".as_slice(), &(KEYS - n).to_be_bytes()].concat();
        let scattered = [
            b"c".as_slice(),
            &n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes(),
        ]
        .concat();
        for key in [ascending, descending, scattered] {
            writes.push((key, Some(n.to_be_bytes().to_vec())));
        }
        // Every third ascending key written so far is removed again: nodes shrink and merge.
        if n % 3 == 2 {
            writes.push(([b"b".as_slice(), &(n - 1).to_be_bytes()].concat(), None));
        }
    }
    for (key, value) in &writes {
        match value {
            Some(value) => model.insert(key.clone(), value.clone()),
            None => model.remove(key),
        };
    }
    let expected: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    let read_all = |store: Store| async move {
        store
            .read(|snapshot| {
                let all: Vec<(Vec<u8>, Vec<u8>)> = snapshot
                    .iter(Table::Idempotency)
                    .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()?;
                let ascending: Vec<Vec<u8>> = snapshot
                    .range(Table::Idempotency, b"b".to_vec()..b"c".to_vec())
                    .keys()
                    .map(|key| key.map(|k| k.to_vec()))
                    .collect::<Result<_, _>>()?;
                let newest = snapshot.get(
                    Table::Idempotency,
                    &[b"b".as_slice(), &(KEYS - 1).to_be_bytes()].concat(),
                )?;
                Ok::<_, StoreError>((all, ascending, newest.map(|v| v.to_vec())))
            })
            .await
            .unwrap()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        // In jobs of 64 writes, one after another: a removal comes after the write it removes.
        for chunk in writes.chunks(64) {
            let chunk = chunk.to_vec();
            store
                .write(move |batch| {
                    for (key, value) in chunk {
                        match value {
                            Some(value) => batch.insert(Table::Idempotency, key, value),
                            None => batch.remove(Table::Idempotency, key),
                        }
                    }
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
        }
        let (all, ascending, newest) = read_all(store).await;
        assert_eq!(all, expected);
        assert_eq!(
            ascending.len(),
            expected.iter().filter(|(k, _)| k[0] == b'b').count()
        );
        assert_eq!(newest, Some((KEYS - 1).to_be_bytes().to_vec()));
    }
    let (all, ascending, newest) = read_all(Store::open(dir.path()).unwrap()).await;
    assert_eq!(all, expected);
    assert!(ascending.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(newest, Some((KEYS - 1).to_be_bytes().to_vec()));
}

/// In a debug build, sled on an async worker thread is a bug the store catches.
#[cfg(debug_assertions)]
#[tokio::test]
#[should_panic(expected = "sled called on an async runtime thread")]
async fn sled_on_an_async_worker_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let _ = Snapshot::new(&store.shared.slot.current().unwrap());
}

/// Whatever a writer hands the store — a task's text, an event's payload, an engine run's output
/// — no secret value reaches sled, nor a live subscriber; numbers and the records' shape stay.
#[tokio::test]
async fn secret_values_never_reach_sled_or_subscribers() {
    use crate::model::task::{CapturedOutput, EngineRun, RunStatus, Stage};
    use crate::platform::redact::Redactor;

    let secret = "hunter2-7f3a9c-very-secret";
    let dir = tempfile::tempdir().unwrap();
    let redactor = Redactor::new([("TOKEN".to_owned(), secret.to_owned())]);
    let store = Store::open_redacting(dir.path(), WRITE_QUEUE_MAX, Arc::new(redactor)).unwrap();
    let mut live = store.subscribe();
    let mut task = Task::for_test(&format!("rotate {secret}"), &format!("it is {secret}"));
    task.spec.verify = format!("test -n {secret}");
    task.spec.max_attempts = 7;
    let event = NewEvent::new(
        "test",
        "task.submitted",
        serde_json::json!({"title": task.spec.title, "n": 7}),
    );
    let Submission::Created(created) = store.create_task(task, "d", event).await.unwrap() else {
        panic!("expected a new task");
    };
    let run = EngineRun {
        id: uuid::Uuid::now_v7(),
        task_id: created.id,
        persona: "patch".into(),
        engine: "shell".into(),
        stage: Stage::Implement,
        attempt: 1,
        command: Some(format!("echo {secret}")),
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        stdout: CapturedOutput {
            text: format!("{secret}\n{}\n", hex::encode(secret)),
            truncated_bytes: 0,
        },
        stderr: CapturedOutput::default(),
        duration_ms: 12,
        tokens: None,
        prompt_digest: None,
        sandbox: None,
        cost: None,
        started_at: chrono::Utc::now(),
        status: RunStatus::Running,
    };
    store.start_run(&run).await.unwrap();
    let finished = EngineRun {
        status: RunStatus::Finished,
        ..run
    };
    store.record_run(&finished).await.unwrap();
    let changed = store
        .update_task(created.id, &[], move |t| {
            t.progress.feedback = Some(format!("verify said {secret}"));
        })
        .await
        .unwrap();
    assert!(changed.progress.feedback.is_some());

    let raw: Vec<u8> = store
        .read(|snapshot| {
            let mut raw = Vec::new();
            for table in Table::ALL {
                for value in snapshot.iter(table).values() {
                    raw.extend_from_slice(&value?);
                }
            }
            Ok::<_, StoreError>(raw)
        })
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("[REDACTED:TOKEN]"));
    for form in [secret.to_owned(), hex::encode(secret)] {
        assert!(!raw.contains(&form), "{form} is in sled: {raw}");
    }
    let stored = store.task(created.id).await.unwrap().unwrap();
    assert_eq!(stored.spec.title, "rotate [REDACTED:TOKEN]");
    assert_eq!(stored.spec.verify, "test -n [REDACTED:TOKEN]");
    assert_eq!(stored.spec.max_attempts, 7);
    let runs = store.runs(created.id).await.unwrap();
    assert_eq!(runs[0].command.as_deref(), Some("echo [REDACTED:TOKEN]"));
    assert_eq!(runs[0].duration_ms, 12);
    let published = live.recv().await.unwrap();
    assert_eq!(
        published.data,
        serde_json::json!({"title": "rotate [REDACTED:TOKEN]", "n": 7})
    );
}

/// A run of `task_id` written `running` (the process started and never ended).
fn running_run(task_id: crate::model::task::TaskId) -> crate::model::task::EngineRun {
    use crate::model::task::{CapturedOutput, EngineRun, RunStatus, Stage};
    EngineRun {
        id: uuid::Uuid::now_v7(),
        task_id,
        persona: "patch".into(),
        engine: "shell".into(),
        stage: Stage::Implement,
        attempt: 1,
        command: Some("sleep 30".into()),
        exit_code: None,
        signal: None,
        timed_out: false,
        stdout: CapturedOutput::default(),
        stderr: CapturedOutput::default(),
        duration_ms: 0,
        tokens: None,
        prompt_digest: None,
        sandbox: None,
        cost: None,
        started_at: chrono::Utc::now(),
        status: RunStatus::Running,
    }
}

#[tokio::test]
async fn an_unclean_stop_counts_only_against_a_task_whose_run_was_in_flight() {
    use crate::model::task::Stage;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (
        crate::model::task::TaskId::new(),
        crate::model::task::TaskId::new(),
    );
    let running = vec![(a, Stage::Implement, 1), (b, Stage::Implement, 1)];
    let count = |stops: &[StopsInFlight], id| {
        let found = stops.iter().find(|s| s.task_id == id).unwrap();
        (found.count, found.runs.len())
    };

    // Stop 1: both tasks running, only a's run in flight.
    let first = running_run(a);
    store.start_run(&first).await.unwrap();
    assert_eq!(store.interrupt_open_runs().await.unwrap(), 1);
    assert!(!store.take_clean_stop().await.unwrap());
    let stops = store.count_unclean_stops(running.clone()).await.unwrap();
    assert_eq!(count(&stops, a), (1, 1));
    assert_eq!(count(&stops, b), (0, 0), "b merely was running");

    // Stop 2: a's run had finished (no run open): it does not count, and the chain is broken.
    let stops = store.count_unclean_stops(running.clone()).await.unwrap();
    assert_eq!(count(&stops, a), (0, 0));

    // Stops 3 and 4 with a run in flight each: two in a row, naming both runs.
    for expected in 1..=2 {
        store.start_run(&running_run(a)).await.unwrap();
        store.interrupt_open_runs().await.unwrap();
        let stops = store.count_unclean_stops(running.clone()).await.unwrap();
        assert_eq!(count(&stops, a), (expected, expected as usize));
    }

    // A clean stop drops the runs it left open: they are no evidence at the next unclean one.
    store.start_run(&running_run(b)).await.unwrap();
    store.interrupt_open_runs().await.unwrap();
    store.mark_clean_stop().await.unwrap();
    assert!(store.take_clean_stop().await.unwrap());
    let stops = store.count_unclean_stops(running).await.unwrap();
    assert_eq!(count(&stops, b), (0, 0));
}

#[tokio::test]
async fn the_compact_queue_holds_every_unfinished_task_and_is_built_once_for_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, ended) = (
        create(&store).await,
        create(&store).await,
        create(&store).await,
    );
    store
        .update_task(b.id, &[], |t| t.progress.status = TaskStatus::Running)
        .await
        .unwrap();
    store
        .update_task(ended.id, &[], |t| t.progress.status = TaskStatus::Done)
        .await
        .unwrap();
    let status_of = |queued: &[QueuedTask]| -> Vec<(crate::model::task::TaskId, TaskStatus)> {
        let mut pairs: Vec<_> = queued.iter().map(|q| (q.id, q.status)).collect();
        pairs.sort_by_key(|(id, _)| *id);
        pairs
    };
    let mut expected = vec![(a.id, TaskStatus::Queued), (b.id, TaskStatus::Running)];
    expected.sort_by_key(|(id, _)| *id);
    // A fresh store has no marker: the first load builds the index (nothing missing).
    let first = store.queued_tasks().await.unwrap();
    assert_eq!(status_of(&first), expected);
    let queued_a = first.iter().find(|q| q.id == a.id).unwrap();
    assert_eq!(queued_a.priority, a.spec.priority);
    // From now on every task write keeps it: a new task is in, an ended one out.
    let c = create(&store).await;
    store
        .update_task(a.id, &[], |t| t.progress.status = TaskStatus::Cancelled)
        .await
        .unwrap();
    let mut expected = vec![(b.id, TaskStatus::Running), (c.id, TaskStatus::Queued)];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(status_of(&store.queued_tasks().await.unwrap()), expected);
    // A store written before the index existed (no entries, no marker) is indexed at its first
    // load from the records, as they are.
    store
        .write(|batch| {
            let keys: Vec<Vec<u8>> = batch
                .committed()
                .iter(Table::QueueIndex)
                .keys()
                .map(|key| key.map(|k| k.to_vec()))
                .collect::<Result<_, _>>()?;
            for key in keys {
                batch.remove(Table::QueueIndex, key);
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(status_of(&store.queued_tasks().await.unwrap()), expected);
    drop(store);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(status_of(&reopened.queued_tasks().await.unwrap()), expected);
}
