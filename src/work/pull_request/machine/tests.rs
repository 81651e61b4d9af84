use super::*;

const AUTO_FAST: Policy = Policy {
    mode: PullRequestMode::FailFast,
    merge: PullRequestMerge::Auto,
    head_moves_max: 2,
};

/// Every row of the machine: (policy, state, observation) → (state', action).
#[test]
fn the_lifecycle_table() {
    let best_effort = Policy {
        mode: PullRequestMode::BestEffort,
        ..AUTO_FAST
    };
    let no_merge = Policy {
        merge: PullRequestMerge::None,
        ..AUTO_FAST
    };
    let failed = |code: &'static str, message: &str| Action::Fail {
        code,
        message: message.into(),
    };
    use Observation as O;
    use PrState as S;
    let rows: Vec<(Policy, S, O, S, Action)> = vec![
        (
            AUTO_FAST,
            S::Start,
            O::Pushed,
            S::Pushed,
            Action::FindOrOpen,
        ),
        (
            AUTO_FAST,
            S::Pushed,
            O::PrReady { merged: None },
            S::PrOpen,
            Action::AwaitChecks,
        ),
        (
            AUTO_FAST,
            S::Merging,
            O::PrReady {
                merged: Some("m1".into()),
            },
            S::Merged,
            Action::Done {
                merged: Some("m1".into()),
            },
        ),
        (
            AUTO_FAST,
            S::PrOpen,
            O::Checks(ChecksVerdict::Pending(vec!["ci".into()])),
            S::WaitingChecks,
            Action::AwaitChecks,
        ),
        (
            AUTO_FAST,
            S::WaitingChecks,
            O::Checks(ChecksVerdict::Green),
            S::WaitingReview,
            Action::ReadReviews,
        ),
        (
            AUTO_FAST,
            S::WaitingChecks,
            O::Checks(ChecksVerdict::Red("ci failed".into())),
            S::ChangesNeeded,
            Action::FeedBack {
                code: codes::CHECKS_FAILED,
                text: "ci failed".into(),
            },
        ),
        (
            AUTO_FAST,
            S::WaitingChecks,
            O::Checks(ChecksVerdict::Stalled("ci".into())),
            S::Failed,
            failed(codes::CHECKS_STALLED, "ci"),
        ),
        (
            best_effort,
            S::WaitingChecks,
            O::Checks(ChecksVerdict::Stalled("ci".into())),
            S::Failed,
            Action::BranchOnly {
                code: codes::CHECKS_STALLED,
                message: "ci".into(),
            },
        ),
        (
            AUTO_FAST,
            S::WaitingReview,
            O::Reviews(ReviewsVerdict::Satisfied),
            S::Merging,
            Action::Merge,
        ),
        (
            no_merge,
            S::WaitingReview,
            O::Reviews(ReviewsVerdict::Satisfied),
            S::GreenOpen,
            Action::Done { merged: None },
        ),
        (
            AUTO_FAST,
            S::WaitingReview,
            O::Reviews(ReviewsVerdict::Awaiting),
            S::WaitingReview,
            Action::AwaitReviews,
        ),
        (
            AUTO_FAST,
            S::WaitingReview,
            O::Reviews(ReviewsVerdict::ChangesRequested("fix x".into())),
            S::ChangesNeeded,
            Action::FeedBack {
                code: codes::CHANGES_REQUESTED,
                text: "fix x".into(),
            },
        ),
        (
            AUTO_FAST,
            S::Merging,
            O::Merge(MergeAnswer::Merged("m2".into())),
            S::Merged,
            Action::Done {
                merged: Some("m2".into()),
            },
        ),
        (
            AUTO_FAST,
            S::Merging,
            O::Merge(MergeAnswer::HeadMoved { moves: 1 }),
            S::WaitingChecks,
            Action::AwaitChecks,
        ),
        (
            AUTO_FAST,
            S::Merging,
            O::Merge(MergeAnswer::HeadMoved { moves: 3 }),
            S::Failed,
            failed(
                codes::DELIVERY_FAILED,
                "the head moved under the merge 3 times",
            ),
        ),
        (
            AUTO_FAST,
            S::Merging,
            O::Merge(MergeAnswer::Refused("blocked".into())),
            S::Failed,
            failed(codes::DELIVERY_FAILED, "merge refused: blocked"),
        ),
        (
            AUTO_FAST,
            S::Start,
            O::StepFailed {
                step: "push".into(),
                message: "refused".into(),
            },
            S::Failed,
            failed(codes::DELIVERY_FAILED, "push failed: refused"),
        ),
        (
            best_effort,
            S::Pushed,
            O::StepFailed {
                step: "open the pull request".into(),
                message: "503".into(),
            },
            S::Failed,
            Action::BranchOnly {
                code: codes::DELIVERY_FAILED,
                message: "open the pull request failed: 503".into(),
            },
        ),
    ];
    for (policy, state, observation, next, action) in rows {
        let seen = format!("{state:?} + {observation:?}");
        assert_eq!(step(&policy, state, observation), (next, action), "{seen}");
    }
}

fn check(name: &str, head: &str, conclusion: Option<&str>) -> CheckView {
    CheckView {
        name: name.into(),
        head_sha: head.into(),
        completed: conclusion.is_some(),
        conclusion: conclusion.map(str::to_owned),
        detail: format!("{name} detail"),
    }
}

fn waited(elapsed: u64, no_checks: NoChecksPolicy) -> Waited {
    Waited {
        elapsed: Duration::from_secs(elapsed),
        deadline: Duration::from_secs(100),
        no_checks,
        no_checks_wait: Duration::from_secs(30),
    }
}

/// One row of the checks table: required names, checks, the wait, and what the verdict must be.
type CheckRow = (
    Vec<String>,
    Vec<CheckView>,
    Waited,
    Box<dyn Fn(&ChecksVerdict) -> bool>,
);

/// What counts as green: exactly the head, required checks only when some are required,
/// cancelled / timed out / action_required / stale / skipped never pass, a deadline stalls.
#[test]
fn the_checks_table() {
    use ChecksVerdict as V;
    let ci = || vec!["ci".to_owned()];
    let none: Vec<String> = Vec::new();
    let wait = NoChecksPolicy::WaitSecs;
    let is_red = |v: &V| matches!(v, V::Red(_));
    let rows: Vec<CheckRow> = vec![
        (
            ci(),
            vec![check("ci", "h", Some("success"))],
            waited(0, wait),
            Box::new(|v| *v == V::Green),
        ),
        // A green run on another commit is stale: the required check is still pending.
        (
            ci(),
            vec![check("ci", "old", Some("success"))],
            waited(0, wait),
            Box::new(|v| *v == V::Pending(vec!["ci".into()])),
        ),
        (
            ci(),
            vec![check("ci", "h", None)],
            waited(0, wait),
            Box::new(|v| *v == V::Pending(vec!["ci".into()])),
        ),
        (
            ci(),
            vec![check("ci", "h", None)],
            waited(100, wait),
            Box::new(|v| matches!(v, V::Stalled(m) if m.contains("ci"))),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("cancelled"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("action_required"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("timed_out"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("stale"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("skipped"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            ci(),
            vec![check("ci", "h", Some("failure"))],
            waited(0, wait),
            Box::new(|v| matches!(v, V::Red(t) if t.contains("ci detail"))),
        ),
        // A failing check that is not required does not block a required green one.
        (
            ci(),
            vec![
                check("ci", "h", Some("success")),
                check("lint", "h", Some("failure")),
            ],
            waited(0, wait),
            Box::new(|v| *v == V::Green),
        ),
        // None required: every check on the head counts.
        (
            none.clone(),
            vec![check("lint", "h", Some("failure"))],
            waited(0, wait),
            Box::new(is_red),
        ),
        (
            none.clone(),
            vec![
                check("lint", "h", Some("neutral")),
                check("opt", "h", Some("skipped")),
            ],
            waited(0, wait),
            Box::new(|v| *v == V::Green),
        ),
        (
            none.clone(),
            vec![check("lint", "h", None)],
            waited(0, wait),
            Box::new(|v| *v == V::Pending(vec!["lint".into()])),
        ),
        // No check at all: the no_checks policy.
        (
            none.clone(),
            vec![],
            waited(0, wait),
            Box::new(|v| *v == V::Pending(Vec::new())),
        ),
        (
            none.clone(),
            vec![],
            waited(30, wait),
            Box::new(|v| *v == V::Green),
        ),
        (
            none.clone(),
            vec![],
            waited(0, NoChecksPolicy::Pass),
            Box::new(|v| *v == V::Green),
        ),
        (
            none.clone(),
            vec![check("x", "old", Some("success"))],
            waited(0, NoChecksPolicy::Fail),
            Box::new(|v| matches!(v, V::Stalled(_))),
        ),
    ];
    for (index, (required, checks, waited, expected)) in rows.into_iter().enumerate() {
        let verdict = judge_checks("h", &required, &checks, &waited);
        assert!(expected(&verdict), "row {index}: {verdict:?}");
    }
}
