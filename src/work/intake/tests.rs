//! Intake's per-field parsers, one at a time: what each accepts, what it answers by default, and
//! the code and message of each refusal (the ones clients see in `422`s).

use super::*;
use crate::model::codes;

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
    task.billing.account = account.to_owned();
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

/// Control characters: a line holds none (C0, DEL, C1); lines may hold `\n` and `\t` only.
#[test]
fn text_fields_refuse_control_characters_naming_the_field() {
    for bad in ['\0', '\n', '\t', '\r', '\u{1b}', '\u{7f}', '\u{85}'] {
        let title = format!("Fix{bad}it");
        let (code, message) = refusal(parse_title(title));
        assert_eq!(code, codes::INVALID_FIELD);
        assert_eq!(
            message,
            format!(
                "title must not hold control characters (found U+{:04X})",
                u32::from(bad)
            )
        );
    }
    let lines = "Line one.\n\tIndented line two.\n";
    assert_eq!(parse_description(lines.into()).expect("ok"), lines);
    assert_eq!(parse_verify(lines.into()).expect("ok"), lines);
    assert_eq!(
        parse_acceptance(Some(lines.into())).expect("ok"),
        Some(lines.into())
    );
    assert_eq!(parse_acceptance(None).expect("ok"), None);
    for (bad, code) in [('\0', "0000"), ('\r', "000D"), ('\u{1b}', "001B")] {
        let rule = "must not hold control characters other than newline and tab";
        let text = format!("a{bad}b");
        assert_eq!(
            refusal(parse_description(text.clone())),
            invalid(&format!("description {rule} (found U+{code})"))
        );
        assert_eq!(
            refusal(parse_verify(text.clone())),
            invalid(&format!("verify {rule} (found U+{code})"))
        );
        assert_eq!(
            refusal(parse_acceptance(Some(text))),
            invalid(&format!("acceptance {rule} (found U+{code})"))
        );
    }
    assert_eq!(
        refusal(parse_idempotency_key(Some("k\n1".into()))),
        invalid("idempotency_key must not hold control characters (found U+000A)")
    );
    let caused_by = |incident: &str, deploy: Option<&str>| CausedBy {
        incident: incident.to_owned(),
        deploy: deploy.map(str::to_owned),
    };
    assert!(parse_caused_by(Some(caused_by("inc-1", Some("dep-1")))).is_ok());
    assert_eq!(
        refusal(parse_caused_by(Some(caused_by("inc\0", None)))),
        invalid("caused_by.incident must not hold control characters (found U+0000)")
    );
    assert_eq!(
        refusal(parse_caused_by(Some(caused_by("inc", Some("d\u{7f}"))))),
        invalid("caused_by.deploy must not hold control characters (found U+007F)")
    );
}

#[test]
fn names_refuse_control_characters_before_they_are_looked_up() {
    let providers: BTreeMap<String, ()> = [("local".to_owned(), ())].into_iter().collect();
    let templates: BTreeMap<String, Vec<Stage>> = [("feature".to_owned(), vec![Stage::Implement])]
        .into_iter()
        .collect();
    let apps: BTreeMap<String, ()> = [("web".to_owned(), ())].into_iter().collect();
    let engines = |spec: EngineSpec| EngineOverrides {
        patch: Some(spec),
        ..EngineOverrides::default()
    };
    let script = engines(EngineSpec::Shell {
        command: "set -e\n\tmake\n".into(),
    });
    assert!(parse_engines(Some(script), &providers).is_ok());
    assert_eq!(
        refusal(parse_engines(
            Some(engines(EngineSpec::Shell {
                command: "make\0".into()
            })),
            &providers
        )),
        invalid(
            "engines.patch.command must not hold control characters other than newline and tab \
             (found U+0000)"
        )
    );
    assert_eq!(
        refusal(parse_engines(
            Some(engines(EngineSpec::Openai {
                provider: "lo\ncal".into()
            })),
            &providers
        )),
        invalid("engines.patch.provider must not hold control characters (found U+000A)")
    );
    assert_eq!(
        refusal(parse_kind(Some("feature\0".into()), &templates)),
        invalid("kind must not hold control characters (found U+0000)")
    );
    let plain = [Stage::Implement];
    assert_eq!(
        refusal(parse_deploy(
            Some("web\u{1b}".into()),
            "feature",
            &plain,
            Delivery::Merge,
            &apps
        )),
        invalid("deploy must not hold control characters (found U+001B)")
    );
}

#[tokio::test]
async fn ids_refuse_control_characters() {
    let (_dir, store) = store().await;
    let id = stored_task(&store, "user:local").await;
    assert_eq!(
        refusal(parse_deps(&store, Some(vec![format!("{id}\0")])).await),
        invalid("deps must not hold control characters (found U+0000)")
    );
    assert_eq!(
        refusal(parse_parent_task(&store, Some(format!("{id}\n"))).await),
        invalid("parent_task must not hold control characters (found U+000A)")
    );
}

#[test]
fn printable_replaces_what_a_field_would_refuse() {
    assert_eq!(
        printable("a\u{1b}[31mb\tc", Text::Line),
        "a\u{fffd}[31mb\u{fffd}c"
    );
    assert_eq!(
        printable("a\u{1b}[31mb\tc\n\r", Text::Lines),
        "a\u{fffd}[31mb\tc\n\u{fffd}"
    );
}

/// What `git check-ref-format --branch` accepts, and no revision syntax.
#[test]
fn base_branch_is_a_branch_name_not_a_revision() {
    for good in [
        "main",
        "feature/login-form",
        "release-1.2",
        "user@example",
        "a.b/c_d",
        "Upper/Case",
    ] {
        assert_eq!(
            parse_base_branch(Some(good.into())).expect("ok"),
            good,
            "{good}"
        );
    }
    for (bad, why) in [
        ("main~1", "it must not contain `~`"),
        ("main^", "it must not contain `^`"),
        ("main^{commit}", "it must not contain `^`"),
        ("@{-1}", "it must not contain `@{`"),
        ("main@{yesterday}", "it must not contain `@{`"),
        ("main..dev", "it must not contain `..`"),
        ("main:README.md", "it must not contain `:`"),
        ("-main", "it must not start with `-`"),
        ("@", "`@` and `HEAD` name no branch"),
        ("HEAD", "`@` and `HEAD` name no branch"),
        ("a b", "it must not contain ` `"),
        ("a*", "it must not contain `*`"),
        ("a?", "it must not contain `?`"),
        ("a[1]", "it must not contain `[`"),
        ("a\\b", "it must not contain `\\`"),
        ("a//b", "it must not contain `//`"),
        ("/main", "it must not start with `/` or end with `/` or `.`"),
        ("main/", "it must not start with `/` or end with `/` or `.`"),
        ("main.", "it must not start with `/` or end with `/` or `.`"),
        (
            "feature/.hidden",
            "no part of it may start with `.` or end with `.lock` (`.hidden`)",
        ),
        (
            "main.lock",
            "no part of it may start with `.` or end with `.lock` (`main.lock`)",
        ),
    ] {
        assert_eq!(
            refusal(parse_base_branch(Some(bad.into()))),
            invalid(&format!("base_branch `{bad}` is not a branch name: {why}")),
            "{bad}"
        );
    }
    assert_eq!(
        refusal(parse_base_branch(Some("ma\0in".into()))),
        invalid("base_branch must not hold control characters (found U+0000)")
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

/// A repository at `<root>/<name>` on `main` with one commit; its path as text.
async fn repository(root: &Path, name: &str, timeout: Duration) -> String {
    let path = root.join(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    let git = Git::new(&path, timeout);
    git.run(&["init", "-q", "-b", "main"]).await.expect("init");
    git.run(&["commit", "-q", "--allow-empty", "-m", "initial"])
        .await
        .expect("commit");
    path.display().to_string()
}

/// `path`'s real path, as intake stores it.
fn real(path: &str) -> String {
    std::fs::canonicalize(path)
        .expect("exists")
        .display()
        .to_string()
}

#[tokio::test]
async fn repo_is_an_absolute_git_repository_with_the_branch() {
    let timeout = Duration::from_secs(30);
    let checks = RepoChecks::default();
    let root = tempfile::tempdir().expect("temp dir");
    let repo = repository(root.path(), "repo", timeout).await;
    let plain = root.path().display().to_string();

    assert_eq!(
        refusal(parse_repo("relative/path".into(), "main", &checks, timeout).await),
        invalid("repo must be an absolute path or a git URL (file://, ssh://, https://), got `relative/path`")
    );
    assert_eq!(
        refusal(parse_repo(plain.clone(), "main", &checks, timeout).await),
        (
            codes::NOT_A_GIT_REPOSITORY,
            format!("{plain} is not a git repository")
        )
    );
    assert_eq!(
        refusal(parse_repo("/definitely/not/here".into(), "main", &checks, timeout).await),
        (
            codes::NOT_A_GIT_REPOSITORY,
            "/definitely/not/here is not a git repository".to_owned()
        )
    );
    assert_eq!(
        refusal(parse_repo(repo.clone(), "dev", &checks, timeout).await),
        (
            codes::UNKNOWN_BASE_BRANCH,
            format!("{repo} has no branch `dev`")
        )
    );
    let top = real(&repo);
    assert_eq!(checks.recently_found(&top, "main"), None);
    assert_eq!(
        parse_repo(repo.clone(), "main", &checks, timeout)
            .await
            .expect("ok"),
        top
    );
    assert_eq!(
        checks.recently_found(&top, "main"),
        Some(top.clone()),
        "a pair found is remembered"
    );
    assert_eq!(checks.recently_found(&top, "dev"), None, "refusals are not");
}

/// One repository is one repository whatever path names it: a symlink to it, a subdirectory,
/// `..` and a trailing `/` all answer the work tree's real top level, and the cache entry is the
/// real path's.
#[tokio::test]
async fn repo_is_stored_as_the_real_top_level_of_its_work_tree() {
    let timeout = Duration::from_secs(30);
    let checks = RepoChecks::default();
    let root = tempfile::tempdir().expect("temp dir");
    let repo = repository(root.path(), "repo", timeout).await;
    let top = real(&repo);
    std::fs::create_dir_all(format!("{repo}/src/deep")).expect("mkdir");
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&repo, &link).expect("symlink");
    let link = link.display().to_string();
    for name in [
        repo.clone(),
        format!("{repo}/"),
        format!("{repo}/src/deep"),
        format!("{repo}/src/../src/deep/.."),
        link.clone(),
        format!("{link}/src"),
    ] {
        assert_eq!(
            parse_repo(name.clone(), "main", &checks, timeout)
                .await
                .expect("ok"),
            top,
            "{name}"
        );
    }
    assert_eq!(checks.recently_found(&top, "main"), Some(top.clone()));
    assert_eq!(
        checks.recently_found(&real(&format!("{repo}/src")), "main"),
        Some(top.clone()),
        "the subdirectory's real path is remembered with its top level"
    );
    assert_eq!(
        checks.recently_found(&link, "main"),
        None,
        "never a symlink's"
    );
}

/// A bare repository and a git directory have no work tree to deliver into: refused with a hint
/// rather than opened as if they were the repository.
#[tokio::test]
async fn repo_must_be_a_work_tree_not_a_git_dir_or_a_bare_repository() {
    let timeout = Duration::from_secs(30);
    let checks = RepoChecks::default();
    let root = tempfile::tempdir().expect("temp dir");
    let repo = repository(root.path(), "repo", timeout).await;
    let top = real(&repo);
    for inside in [format!("{repo}/.git"), format!("{repo}/.git/refs/heads")] {
        assert_eq!(
            refusal(parse_repo(inside.clone(), "main", &checks, timeout).await),
            (
                codes::NOT_A_WORK_TREE,
                format!(
                    "{inside} is inside a git directory, not a work tree: name its work tree, \
                     {top}"
                )
            )
        );
    }
    let bare = root.path().join("bare.git").display().to_string();
    Git::new(root.path(), timeout)
        .run(&["clone", "-q", "--bare", &repo, &bare])
        .await
        .expect("bare clone");
    assert_eq!(
        refusal(parse_repo(bare.clone(), "main", &checks, timeout).await),
        (
            codes::NOT_A_WORK_TREE,
            format!(
                "{bare} is a bare repository: a task needs a work tree to deliver into; name a \
                 clone with a checkout"
            )
        )
    );
    // git's answer is the same where gix cannot tell.
    assert_eq!(
        Git::new(format!("{repo}/.git"), timeout).location().await,
        Location::GitDir { work_tree: None }
    );
    assert_eq!(Git::new(&bare, timeout).location().await, Location::Bare);
    assert_eq!(
        Git::new(format!("{repo}/.git/.."), timeout)
            .location()
            .await,
        Location::WorkTree(PathBuf::from(&top))
    );
    assert_eq!(
        Git::new(root.path(), timeout).location().await,
        Location::Outside
    );
}

#[tokio::test]
async fn repo_is_one_line() {
    let checks = RepoChecks::default();
    let refused = parse_repo("/tmp/x\0y".into(), "main", &checks, Duration::from_secs(1)).await;
    assert_eq!(
        refusal(refused),
        invalid("repo must not hold control characters (found U+0000)")
    );
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

/// The service's own books never pay for a task, whoever names them: the submission or the
/// parent task it inherits from.
#[tokio::test]
async fn account_is_never_one_of_the_services_own() {
    let (_dir, store) = store().await;
    let local = "user:local";
    for account in [
        "system:mint",
        "system:revenue",
        "agent:patch",
        "task:0190e4b2-0000-7000-8000-000000000000",
        "SYSTEM:mint",
        "Agent:planner",
    ] {
        let (code, message) =
            refusal(parse_account(&store, Some(account.into()), None, local).await);
        assert_eq!(code, codes::RESERVED_ACCOUNT, "{account}");
        assert!(message.starts_with(&format!("account `{account}` is one of the service's own")));
    }
    // A legacy parent paid by one (intake never stored such a task) does not hand it down.
    let parent = stored_task(&store, "agent:patch").await;
    assert_eq!(
        refusal(parse_account(&store, None, Some(parent), local).await).0,
        codes::RESERVED_ACCOUNT
    );
    for fine in ["user:alice", "team:agents", "project:system"] {
        assert_eq!(
            parse_account(&store, Some(fine.into()), None, local)
                .await
                .expect("ok"),
            fine
        );
    }
}

/// A submission's free text is redacted before anything looks at it; names are not (they are
/// checked against what exists).
#[test]
fn a_submission_is_redacted_field_by_field() {
    let secret = "s3cr3t-value-42";
    let redactor = Redactor::new([("TOKEN".to_owned(), secret.to_owned())]);
    let with_secret = |prefix: &str| format!("{prefix} {secret}");
    let request = SubmitTaskRequest {
        title: with_secret("title"),
        description: with_secret("description"),
        repo: with_secret("/repo"),
        base_branch: Some("main".into()),
        kind: None,
        priority: None,
        verify: with_secret("test -n"),
        max_attempts: None,
        engines: Some(EngineOverrides {
            planner: Some(EngineSpec::Openai {
                provider: "local".into(),
            }),
            patch: Some(EngineSpec::Shell {
                command: with_secret("echo"),
            }),
            circuit: None,
        }),
        idempotency_key: Some(with_secret("key")),
        deps: None,
        review_policy: None,
        delivery: None,
        pull_request: None,
        caused_by: Some(CausedBy {
            incident: with_secret("incident"),
            deploy: Some(with_secret("deploy")),
        }),
        deploy: None,
        capabilities: None,
        account: None,
        budget: None,
        parent_task: None,
        acceptance: Some(with_secret("acceptance")),
    };
    let redacted = redact_submission(&redactor, request.clone());
    let marker = "[REDACTED:TOKEN]";
    assert_eq!(redacted.title, format!("title {marker}"));
    assert_eq!(redacted.description, format!("description {marker}"));
    assert_eq!(redacted.verify, format!("test -n {marker}"));
    assert_eq!(redacted.acceptance, Some(format!("acceptance {marker}")));
    assert_eq!(redacted.idempotency_key, Some(format!("key {marker}")));
    assert_eq!(
        redacted.caused_by,
        Some(CausedBy {
            incident: format!("incident {marker}"),
            deploy: Some(format!("deploy {marker}")),
        })
    );
    assert_eq!(
        redacted.engines.as_ref().and_then(|e| e.patch.clone()),
        Some(EngineSpec::Shell {
            command: format!("echo {marker}")
        })
    );
    assert_eq!(
        redacted.engines.as_ref().and_then(|e| e.planner.clone()),
        Some(EngineSpec::Openai {
            provider: "local".into()
        })
    );
    assert_eq!(
        redacted.repo, request.repo,
        "a name is checked, not redacted"
    );
    // The digest is of the redacted body: nothing of the secret is kept with the key.
    assert_ne!(digest_of(&redacted), digest_of(&request));
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
