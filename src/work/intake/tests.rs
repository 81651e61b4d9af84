//! Intake's per-field parsers, one at a time: what each accepts, what it answers by default, and
//! the code and message of each refusal (the ones clients see in `422`s).

use super::*;
use crate::model::codes;
use crate::model::task::EngineSpec;

/// The refusal's code and message, for comparing with what a client would read.
fn refusal<T: std::fmt::Debug>(result: Result<T, IntakeError>) -> (&'static str, String) {
    let error = result.expect_err("refused");
    (error.code(), error.to_string())
}

fn invalid(message: &str) -> (&'static str, String) {
    (codes::INVALID_FIELD, message.to_owned())
}

fn bytes(n: usize) -> String {
    "x".repeat(n)
}

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store opens");
    (dir, store)
}

/// A task in `store` paid by `account`.
async fn stored_task(store: &Store, account: &str) -> TaskId {
    let mut task = Task::for_test("t", "d");
    task.account = account.to_owned();
    let event = NewEvent::new("test", "task.submitted", json!({}));
    match store.create_task(task, "digest", event).await {
        Ok(Submission::Created(task)) => task.id,
        other => panic!("expected a new task, got {other:?}"),
    }
}

#[test]
fn title_is_one_to_200_bytes_not_blank() {
    assert_eq!(parse_title("Fix it".into()).expect("ok"), "Fix it");
    assert_eq!(parse_title(bytes(200)).expect("ok").len(), 200);
    assert_eq!(
        refusal(parse_title(String::new())),
        invalid("title must not be empty")
    );
    assert_eq!(
        refusal(parse_title("  \n".into())),
        invalid("title must not be empty")
    );
    assert_eq!(
        refusal(parse_title(bytes(201))),
        invalid("title is longer than 200 bytes")
    );
}

#[test]
fn description_may_be_empty_up_to_64_kib() {
    assert_eq!(parse_description(String::new()).expect("ok"), "");
    assert!(parse_description(bytes(64 * 1024)).is_ok());
    assert_eq!(
        refusal(parse_description(bytes(64 * 1024 + 1))),
        invalid("description is longer than 65536 bytes")
    );
}

#[test]
fn verify_is_one_byte_to_8_kib_not_blank() {
    assert_eq!(parse_verify("true".into()).expect("ok"), "true");
    assert!(parse_verify(bytes(8 * 1024)).is_ok());
    assert_eq!(
        refusal(parse_verify(" ".into())),
        invalid("verify must not be empty")
    );
    assert_eq!(
        refusal(parse_verify(bytes(8 * 1024 + 1))),
        invalid("verify is longer than 8192 bytes")
    );
}

#[test]
fn idempotency_key_is_optional_one_to_200_bytes() {
    assert_eq!(parse_idempotency_key(None).expect("ok"), None);
    assert_eq!(
        parse_idempotency_key(Some("k-1".into())).expect("ok"),
        Some("k-1".into())
    );
    assert_eq!(
        refusal(parse_idempotency_key(Some(String::new()))),
        invalid("idempotency_key must not be empty")
    );
    assert_eq!(
        refusal(parse_idempotency_key(Some(bytes(201)))),
        invalid("idempotency_key is longer than 200 bytes")
    );
}

#[test]
fn max_attempts_is_within_one_and_the_limit() {
    assert_eq!(parse_max_attempts(None, 3, 10).expect("ok"), 3);
    assert_eq!(parse_max_attempts(Some(10), 3, 10).expect("ok"), 10);
    assert_eq!(parse_max_attempts(Some(1), 3, 10).expect("ok"), 1);
    for bad in [0, 11] {
        assert_eq!(
            refusal(parse_max_attempts(Some(bad), 3, 10)),
            invalid("max_attempts must be between 1 and 10")
        );
    }
    // A default out of range (a persona's front matter) is refused the same way.
    assert_eq!(
        refusal(parse_max_attempts(None, 12, 10)),
        invalid("max_attempts must be between 1 and 10")
    );
}

#[test]
fn engines_bound_commands_know_providers_and_keep_circuit_a_judge() {
    let providers: BTreeMap<String, ()> = [("local".to_owned(), ()), ("remote".to_owned(), ())]
        .into_iter()
        .collect();
    let shell = |command: &str| {
        Some(EngineSpec::Shell {
            command: command.to_owned(),
        })
    };
    let openai = |provider: &str| {
        Some(EngineSpec::Openai {
            provider: provider.to_owned(),
        })
    };
    assert_eq!(
        parse_engines(None, &providers).expect("ok"),
        EngineOverrides::default()
    );
    let chosen = EngineOverrides {
        planner: openai("local"),
        patch: shell("./implement.sh"),
        circuit: Some(EngineSpec::Builtin),
    };
    assert_eq!(
        parse_engines(Some(chosen.clone()), &providers).expect("ok"),
        chosen
    );
    let circuit_shell = EngineOverrides {
        circuit: shell("true"),
        ..EngineOverrides::default()
    };
    assert_eq!(
        refusal(parse_engines(Some(circuit_shell), &providers)),
        invalid("engines.circuit must be builtin or openai: its command is `verify`")
    );
    let blank = EngineOverrides {
        patch: shell(" "),
        ..EngineOverrides::default()
    };
    assert_eq!(
        refusal(parse_engines(Some(blank), &providers)),
        invalid("engines.patch.command must not be empty")
    );
    let long = EngineOverrides {
        planner: shell(&bytes(8 * 1024 + 1)),
        ..EngineOverrides::default()
    };
    assert_eq!(
        refusal(parse_engines(Some(long), &providers)),
        invalid("engines.planner.command is longer than 8192 bytes")
    );
    let unknown = EngineOverrides {
        patch: openai("elsewhere"),
        ..EngineOverrides::default()
    };
    assert_eq!(
        refusal(parse_engines(Some(unknown), &providers)),
        (
            codes::UNKNOWN_PROVIDER,
            "engines.patch: no provider `elsewhere`; known: [local, remote]".to_owned()
        )
    );
    // Planner is looked at first.
    let both = EngineOverrides {
        planner: openai("elsewhere"),
        patch: shell(""),
        circuit: None,
    };
    assert_eq!(
        refusal(parse_engines(Some(both), &providers)).0,
        codes::UNKNOWN_PROVIDER
    );
}

#[test]
fn kind_defaults_to_feature_and_must_have_a_template() {
    let templates: BTreeMap<String, Vec<Stage>> = [
        (
            "feature".to_owned(),
            vec![Stage::Plan, Stage::Implement, Stage::Verify, Stage::Deliver],
        ),
        ("docs".to_owned(), vec![Stage::Implement, Stage::Deliver]),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        parse_kind(None, &templates).expect("ok"),
        (
            "feature".to_owned(),
            vec![Stage::Plan, Stage::Implement, Stage::Verify, Stage::Deliver]
        )
    );
    assert_eq!(
        parse_kind(Some("docs".into()), &templates).expect("ok"),
        ("docs".to_owned(), vec![Stage::Implement, Stage::Deliver])
    );
    assert_eq!(
        refusal(parse_kind(Some("magic".into()), &templates)),
        (
            codes::UNKNOWN_KIND,
            "unknown kind `magic`; known kinds: docs, feature".to_owned()
        )
    );
}

#[test]
fn base_branch_defaults_to_main_one_to_200_bytes() {
    assert_eq!(parse_base_branch(None).expect("ok"), "main");
    assert_eq!(parse_base_branch(Some("dev".into())).expect("ok"), "dev");
    assert_eq!(
        refusal(parse_base_branch(Some(String::new()))),
        invalid("base_branch must not be empty")
    );
    assert_eq!(
        refusal(parse_base_branch(Some(bytes(201)))),
        invalid("base_branch is longer than 200 bytes")
    );
}

#[tokio::test]
async fn repo_is_an_absolute_git_repository_with_the_branch() {
    let timeout = Duration::from_secs(30);
    let checks = RepoChecks::default();
    let root = tempfile::tempdir().expect("temp dir");
    let repo_path = root.path().join("repo");
    std::fs::create_dir_all(&repo_path).expect("mkdir");
    let git = Git::new(&repo_path, timeout);
    git.run(&["init", "-q", "-b", "main"]).await.expect("init");
    git.run(&["commit", "-q", "--allow-empty", "-m", "initial"])
        .await
        .expect("commit");
    let repo = repo_path.display().to_string();
    let plain = root.path().display().to_string();

    assert_eq!(
        refusal(parse_repo("relative/path".into(), "main", &checks, timeout).await),
        invalid("repo must be an absolute path, got `relative/path`")
    );
    assert_eq!(
        refusal(parse_repo(plain.clone(), "main", &checks, timeout).await),
        (
            codes::NOT_A_GIT_REPOSITORY,
            format!("{plain} is not a git repository")
        )
    );
    assert_eq!(
        refusal(parse_repo(repo.clone(), "dev", &checks, timeout).await),
        (
            codes::UNKNOWN_BASE_BRANCH,
            format!("{repo} has no branch `dev`")
        )
    );
    assert!(!checks.recently_found(&repo, "main"));
    assert_eq!(
        parse_repo(repo.clone(), "main", &checks, timeout)
            .await
            .expect("ok"),
        repo
    );
    assert!(
        checks.recently_found(&repo, "main"),
        "a pair found is remembered"
    );
    assert!(!checks.recently_found(&repo, "dev"), "refusals are not");
}

#[tokio::test]
async fn deps_name_stored_tasks_at_most_64_once_each() {
    let (_dir, store) = store().await;
    let first = stored_task(&store, "user:local").await;
    let second = stored_task(&store, "user:local").await;
    assert_eq!(parse_deps(&store, None).await.expect("ok"), Vec::new());
    assert_eq!(
        parse_deps(
            &store,
            Some(vec![
                first.to_string(),
                second.to_string(),
                first.to_string()
            ])
        )
        .await
        .expect("ok"),
        vec![first, second]
    );
    assert_eq!(
        refusal(parse_deps(&store, Some(vec![first.to_string(); 65])).await),
        invalid("deps lists more than 64 tasks")
    );
    assert_eq!(
        refusal(parse_deps(&store, Some(vec!["nope".into()])).await),
        (
            codes::UNKNOWN_DEPENDENCY,
            "deps names unknown task `nope`".to_owned()
        )
    );
    let missing = TaskId::new();
    // The first unknown one is named, in the order given.
    assert_eq!(
        refusal(parse_deps(&store, Some(vec![missing.to_string(), "nope".into()])).await),
        (
            codes::UNKNOWN_DEPENDENCY,
            format!("deps names unknown task `{missing}`")
        )
    );
}

#[test]
fn deploy_is_named_when_needed_merged_and_known() {
    let apps: BTreeMap<String, ()> = [("web".to_owned(), ())].into_iter().collect();
    let plain = [Stage::Implement, Stage::Deliver];
    let deployed = [Stage::Implement, Stage::Deliver, Stage::Deploy];
    let merge = Delivery::Merge;
    assert_eq!(
        parse_deploy(None, "feature", &plain, merge, &apps).expect("ok"),
        None
    );
    assert_eq!(
        parse_deploy(Some("web".into()), "infra", &deployed, merge, &apps).expect("ok"),
        Some("web".into())
    );
    assert_eq!(
        refusal(parse_deploy(None, "infra", &deployed, merge, &apps)),
        invalid("kind `infra` ends with a deploy stage: name the app (of ops.yaml) in `deploy`")
    );
    assert_eq!(
        refusal(parse_deploy(
            Some("elsewhere".into()),
            "feature",
            &plain,
            Delivery::Branch,
            &apps
        )),
        invalid("`deploy` needs `delivery: merge`: a deploy ships what landed on the base branch")
    );
    assert_eq!(
        refusal(parse_deploy(
            Some("elsewhere".into()),
            "feature",
            &plain,
            merge,
            &apps
        )),
        (
            codes::UNKNOWN_APP,
            "`deploy`: no app `elsewhere` in ops.yaml".to_owned()
        )
    );
}

#[tokio::test]
async fn parent_task_names_a_stored_task() {
    let (_dir, store) = store().await;
    let parent = stored_task(&store, "user:local").await;
    assert_eq!(parse_parent_task(&store, None).await.expect("ok"), None);
    assert_eq!(
        parse_parent_task(&store, Some(parent.to_string()))
            .await
            .expect("ok"),
        Some(parent)
    );
    let missing = TaskId::new();
    assert_eq!(
        refusal(parse_parent_task(&store, Some(missing.to_string())).await),
        (
            codes::UNKNOWN_DEPENDENCY,
            format!("deps names unknown task `{missing}`")
        )
    );
}

#[tokio::test]
async fn account_is_given_else_the_parents_else_local_and_valid() {
    let (_dir, store) = store().await;
    let parent = stored_task(&store, "team:ops").await;
    let legacy_parent = stored_task(&store, "").await;
    let local = "user:local";
    assert_eq!(
        parse_account(&store, Some("team:web".into()), Some(parent), local)
            .await
            .expect("ok"),
        "team:web"
    );
    assert_eq!(
        parse_account(&store, None, Some(parent), local)
            .await
            .expect("ok"),
        "team:ops"
    );
    assert_eq!(
        parse_account(&store, None, None, local).await.expect("ok"),
        "user:local"
    );
    assert_eq!(
        refusal(parse_account(&store, Some("no spaces".into()), None, local).await),
        invalid("account may only hold letters, digits and `:_.@-`")
    );
    assert_eq!(
        refusal(parse_account(&store, None, Some(legacy_parent), local).await),
        invalid("account must be 1 to 128 bytes")
    );
}

#[test]
fn budget_reserves_at_least_one_and_passes_the_limits() {
    assert_eq!(
        parse_budget(None, 500).expect("ok"),
        TaskBudget {
            max_cost: 500,
            max_tokens: None,
            max_wall_secs: None,
        }
    );
    let request = BudgetRequest {
        max_cost: Some(7),
        max_tokens: Some(1000),
        max_wall_secs: Some(60),
    };
    assert_eq!(
        parse_budget(Some(request), 500).expect("ok"),
        TaskBudget {
            max_cost: 7,
            max_tokens: Some(1000),
            max_wall_secs: Some(60),
        }
    );
    let free = BudgetRequest {
        max_cost: Some(0),
        ..BudgetRequest::default()
    };
    assert_eq!(
        refusal(parse_budget(Some(free), 500)),
        invalid("budget.max_cost must be at least 1")
    );
    assert_eq!(
        refusal(parse_budget(None, 0)),
        invalid("budget.max_cost must be at least 1")
    );
}

#[test]
fn a_manual_review_gates_delivery() {
    let stages = vec![Stage::Plan, Stage::Implement, Stage::Verify, Stage::Deliver];
    assert_eq!(with_review(stages.clone(), ReviewPolicy::Auto), stages);
    assert_eq!(
        with_review(stages, ReviewPolicy::Manual),
        vec![
            Stage::Plan,
            Stage::Implement,
            Stage::Verify,
            Stage::Approve,
            Stage::Deliver
        ]
    );
    assert_eq!(
        with_review(vec![Stage::Implement], ReviewPolicy::Manual),
        vec![Stage::Implement, Stage::Approve]
    );
}
