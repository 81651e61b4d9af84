//! Deploy history by app: one app's reads, the cap (never dropping an unfinished deploy), and
//! records stored before the index existed.

use chrono::Utc;

use super::*;
use crate::storage::store::Store;

/// A deploy record of `app` in `status`, created now (ids are UUID v7, so creation order is key
/// order).
fn deploy(app: &str, status: DeployStatus) -> DeployRecord {
    let now = Utc::now();
    DeployRecord {
        id: uuid::Uuid::now_v7().to_string(),
        app: app.to_owned(),
        requested: "main".into(),
        commit: None,
        previous_release: None,
        trigger: "api".into(),
        status,
        gate: "automatic".into(),
        config_digest: "digest".into(),
        stages: Vec::new(),
        health: None,
        rollback: None,
        warnings: Vec::new(),
        error: None,
        incident: None,
        comment: None,
        requested_by: None,
        decided_by: None,
        account: None,
        command_seconds: 0,
        created_at: now,
        updated_at: now,
        finished_at: status.is_terminal().then_some(now),
    }
}

fn ids(records: &[DeployRecord]) -> Vec<String> {
    records.iter().map(|d| d.id.clone()).collect()
}

/// Writes `record` into `OpsDeploys` alone, as the service did before the per-app index.
async fn put_unindexed(store: &Store, record: &DeployRecord) {
    let bytes = serde_json::to_vec(record).unwrap();
    let key = record.id.clone();
    store
        .write(move |batch| {
            batch.insert(Table::OpsDeploys, key.as_bytes(), bytes);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
}

/// How many entries `table` holds.
async fn count(store: &Store, table: Table) -> usize {
    store
        .read(move |snapshot| Ok::<_, StoreError>(snapshot.len(table)))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_apps_history_is_read_through_its_own_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ops = OpsStore::new(&store);
    assert_eq!(ops.index_deploys().await.unwrap(), 0, "nothing to index");
    let mut web = Vec::new();
    let mut api = Vec::new();
    for n in 0..6 {
        let record = deploy(
            if n % 2 == 0 { "web" } else { "api" },
            DeployStatus::Healthy,
        );
        ops.put_deploy(&record).await.unwrap();
        if n % 2 == 0 { &mut web } else { &mut api }.push(record.id.clone());
    }
    // The app "web-2" shares a prefix with "web" but not its index entries.
    ops.put_deploy(&deploy("web-2", DeployStatus::Queued))
        .await
        .unwrap();
    let history = ops.deploy_history("web").await.unwrap();
    assert_eq!(ids(&history.records), web, "only web's, oldest first");
    assert_eq!(history.pruned, PrunedDeploys::default());
    assert_eq!(ids(&ops.deploys_of("api").await.unwrap()), api);
    assert_eq!(ops.deploys_of("web-2").await.unwrap().len(), 1);
    assert!(ops.deploys_of("nope").await.unwrap().is_empty());
    // One index entry per record, plus the marker (no app has dropped anything).
    assert_eq!(count(&store, Table::OpsDeploysByApp).await, 7 + 1);
    // A changed record is read back changed through the index.
    let changed = ops
        .update_deploy(&web[0], |d| d.comment = Some("ok".into()))
        .await
        .unwrap();
    assert!(changed.is_some());
    let first = &ops.deploys_of("web").await.unwrap()[0];
    assert_eq!(first.comment.as_deref(), Some("ok"));
}

#[tokio::test]
async fn the_history_is_capped_but_never_drops_an_unfinished_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ops = OpsStore::new(&store);
    ops.index_deploys().await.unwrap();
    // The oldest deploys still wait or run: older than everything, yet kept.
    let waiting = deploy("web", DeployStatus::AwaitingApproval);
    let queued = deploy("web", DeployStatus::Queued);
    let running = deploy("web", DeployStatus::Running);
    for record in [&waiting, &queued, &running] {
        ops.put_deploy(record).await.unwrap();
    }
    let mut ended = Vec::new();
    for n in 0..DEPLOY_HISTORY_MAX + 10 {
        let status = if n % 3 == 0 {
            DeployStatus::Failed
        } else {
            DeployStatus::Healthy
        };
        let record = deploy("web", status);
        ops.put_deploy(&record).await.unwrap();
        ended.push(record);
    }
    let other = deploy("api", DeployStatus::Healthy);
    ops.put_deploy(&other).await.unwrap();

    let history = ops.deploy_history("web").await.unwrap();
    assert_eq!(history.records.len(), DEPLOY_HISTORY_MAX);
    let kept = ids(&history.records);
    for unfinished in [&waiting, &queued, &running] {
        assert!(
            kept.contains(&unfinished.id),
            "{:?} kept",
            unfinished.status
        );
    }
    // The newest ended ones stay; the oldest 13 went (60 + 3 records, 50 kept).
    let dropped = DEPLOY_HISTORY_MAX + 10 + 3 - DEPLOY_HISTORY_MAX;
    assert_eq!(&kept[3..], &ids(&ended[dropped..]));
    for gone in &ended[..dropped] {
        assert!(
            ops.deploy(&gone.id).await.unwrap().is_none(),
            "record dropped"
        );
    }
    let healthy_dropped = ended[..dropped]
        .iter()
        .filter(|d| d.status == DeployStatus::Healthy)
        .count();
    assert_eq!(history.pruned.count, dropped as u64);
    assert_eq!(history.pruned.healthy, healthy_dropped as u64);
    assert_eq!(
        history.pruned.last_healthy_digest.as_deref(),
        Some("digest")
    );
    assert_eq!(
        history.pruned.newest_created_at,
        Some(ended[dropped - 1].created_at)
    );
    // Another app's history is untouched.
    assert_eq!(ids(&ops.deploys_of("api").await.unwrap()), vec![other.id]);

    // Only unfinished deploys past the cap: none is dropped.
    for _ in 0..DEPLOY_HISTORY_MAX + 5 {
        ops.put_deploy(&deploy("batch", DeployStatus::Queued))
            .await
            .unwrap();
    }
    let history = ops.deploy_history("batch").await.unwrap();
    assert_eq!(history.records.len(), DEPLOY_HISTORY_MAX + 5);
    assert_eq!(history.pruned, PrunedDeploys::default());
}

#[tokio::test]
async fn records_stored_before_the_index_are_found_and_indexed_once() {
    let dir = tempfile::tempdir().unwrap();
    let old_web: Vec<DeployRecord> = (0..DEPLOY_HISTORY_MAX + 5)
        .map(|n| {
            let status = if n == 0 {
                DeployStatus::Queued
            } else {
                DeployStatus::Healthy
            };
            deploy("web", status)
        })
        .collect();
    let old_api = deploy("api", DeployStatus::RolledBack);
    {
        let store = Store::open(dir.path()).unwrap();
        for record in old_web.iter().chain([&old_api]) {
            put_unindexed(&store, record).await;
        }
        // Not indexed yet: reads scan every record, as they used to.
        let ops = OpsStore::new(&store);
        assert_eq!(ids(&ops.deploys_of("web").await.unwrap()), ids(&old_web));
        assert_eq!(ops.deploys_of("api").await.unwrap().len(), 1);
    }
    // The data dir opens again (as after an upgrade) and is indexed at start.
    let store = Store::open(dir.path()).unwrap();
    let ops = OpsStore::new(&store);
    assert_eq!(
        ops.index_deploys().await.unwrap(),
        old_web.len() + 1,
        "every old record indexed"
    );
    assert_eq!(ops.index_deploys().await.unwrap(), 0, "only once");
    let history = ops.deploy_history("web").await.unwrap();
    assert_eq!(history.records.len(), DEPLOY_HISTORY_MAX);
    // The oldest one still waits: kept; the next 5 (ended) were dropped.
    let mut expected = vec![old_web[0].id.clone()];
    expected.extend(ids(&old_web[6..]));
    assert_eq!(ids(&history.records), expected);
    assert_eq!(history.pruned.count, 5);
    assert_eq!(history.pruned.healthy, 5);
    assert_eq!(
        ids(&ops.deploys_of("api").await.unwrap()),
        vec![old_api.id.clone()]
    );
    // New records join the old ones through the index.
    let new = deploy("api", DeployStatus::Queued);
    ops.put_deploy(&new).await.unwrap();
    assert_eq!(
        ids(&ops.deploys_of("api").await.unwrap()),
        vec![old_api.id, new.id]
    );
    assert_eq!(
        count(&store, Table::OpsDeploys).await,
        DEPLOY_HISTORY_MAX + 2
    );
}
