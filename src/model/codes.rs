//! The one catalogue of error codes: every stable, machine-readable code the service emits, as an
//! HTTP error answer (`{"error":{"code",...}}`), as the `error.code` of a task or a deploy, or in a
//! stream's `error` event. Each code is a constant here, so a typo at a call site does not compile,
//! and each is documented exactly once in the `## Errors` table of `docs/api.md` (a test checks
//! both that every code string in `src/` is one of these and that the table matches).
//!
//! Codes are part of the API: clients branch on them, so one is never renamed or reused for
//! another meaning; a new one is added here, to that table, and then used.

/// One catalogued code: what it is called, where a client meets it and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    /// The code itself, SCREAMING_SNAKE_CASE, exactly as on the wire.
    pub name: &'static str,
    /// The HTTP statuses it is answered with; empty when it is never an HTTP error answer.
    pub statuses: &'static [u16],
    /// The records that can carry it as their `error.code`; empty when none does.
    pub carriers: &'static [Carrier],
    /// When it is emitted, for the reader of the catalogue (`docs/api.md` says it at length).
    pub meaning: &'static str,
}

/// Where a code is met other than an HTTP error answer, so the catalogue says what clients may
/// find stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// A task: its `error`, its `failures[].error`, and the `code` of a failed `stage.finished`.
    Task,
    /// A deploy record's `error`.
    Deploy,
    /// The `event: error` message that ends a Server-Sent Events stream early.
    Stream,
}

/// Declares each code once: its constant (documented by its meaning) and its catalogue entry.
macro_rules! catalogue {
    ($($name:ident [$($status:literal),*] [$($carrier:ident),*] $meaning:literal;)*) => {
        $(
            #[doc = $meaning]
            pub(crate) const $name: &str = stringify!($name);
        )*

        /// Every code the service emits, in the order of the `## Errors` table of `docs/api.md`.
        pub(crate) const CATALOGUE: &[Code] = &[$(Code {
            name: $name,
            statuses: &[$($status),*],
            carriers: &[$(Carrier::$carrier),*],
            meaning: $meaning,
        }),*];
    };
}

catalogue! {
    // Any route.
    INVALID_JSON [400] []
        "The request body is not JSON, is empty, or could not be read.";
    PAYLOAD_TOO_LARGE [413] []
        "The request body is over `server.body_bytes_max`.";
    INVALID_FIELD [422] []
        "The JSON is well-formed but is not an object, or a field (or a query parameter) is \
         missing, unknown, of the wrong type, empty, too long, out of range, or holds a control \
         character.";
    NOT_FOUND [404] []
        "No such route (or an ops record a request needed does not exist).";
    METHOD_NOT_ALLOWED [405] []
        "The route exists but not with this method.";
    UNSUPPORTED_MEDIA_TYPE [415] []
        "A request with a body whose `Content-Type` is not `application/json`; nothing ran.";
    FORBIDDEN_ORIGIN [403] []
        "A browser request whose `Origin` is neither the service's own nor in \
         `server.allowed_origins`; nothing ran.";
    MISDIRECTED_REQUEST [421] []
        "The `Host` header is neither the address the service is served on nor one of \
         `server.hostnames` (DNS rebinding); nothing ran.";
    BODY_TIMEOUT [408] []
        "The request body did not arrive within `server.body_read_timeout_secs`; the connection \
         is closed.";
    STORE_BUSY [503] []
        "The store's write queue (or its readers' pool) stayed full for the whole wait: nothing \
         was written; retry shortly.";
    STORAGE_FULL [507] []
        "The disk holding the store is full (`ENOSPC`, `EDQUOT`), or intake is refused while the \
         `[storage] reserve_bytes` reserve is in use: nothing was written; retry after \
         `Retry-After` (the service recovers by itself once space returns).";
    STORAGE_FAILED [503] []
        "The disk refused a write (`EIO`, `EROFS`): nothing was written; the service reopens the \
         store by itself; retry after `Retry-After`.";
    STORE_TIMEOUT [503] []
        "A write was queued but not answered in time: it may or may not have happened; retry \
         idempotently.";
    INTERNAL [500] [Task]
        "A storage failure or a bug; the cause is only in the service log (on a task: a job \
         panicked or the file system refused).";
    // Who may.
    UNAUTHENTICATED [401] []
        "No `Authorization: Bearer` token, or one that is unknown, revoked or expired.";
    FORBIDDEN [403] []
        "The token is known but its role does not grant the permission the route needs (the \
         message names it).";
    CSRF_REJECTED [403] []
        "A change authenticated by the web session cookie without the session's CSRF token in \
         `x-csrf-token` (or with another one); nothing ran.";
    RATE_LIMITED [429] []
        "The token made more requests than `server.requests_per_sec` and `burst` allow, or the \
         client's address sent more wrong secrets than `server.auth_failures_max` allow; retry \
         after `Retry-After`.";
    TOKEN_EXISTS [409] []
        "A token of that name exists; revoke it first or pick another name.";
    TOKEN_NOT_FOUND [404] []
        "No token of that name.";
    REPO_NOT_ALLOWED [403] []
        "A submission's `repo` matches neither the token's `repos` globs nor `server.repos`.";
    ACCOUNT_NOT_ALLOWED [403] []
        "A submission's `account` is not one the token may charge.";
    ENGINES_NOT_ALLOWED [403] []
        "A submission overrides persona engines, which the token may not (`engines: false`).";
    NOT_OWN_TASK [403] []
        "A cancel or retry of a task another token submitted, by a token that may only act on \
         its own.";
    // Tasks.
    NOT_A_GIT_REPOSITORY [422] []
        "A submission's `repo` is not a directory inside a git repository.";
    NOT_A_WORK_TREE [422] []
        "A submission's `repo` is a bare repository or a path inside a git directory (`.git`): \
         there is no work tree to deliver into.";
    UNKNOWN_BASE_BRANCH [422] []
        "A submission's `repo` has no local branch `base_branch`.";
    UNKNOWN_KIND [422] []
        "A submission's `kind` has no pipeline template.";
    UNKNOWN_PROVIDER [422] []
        "A submission's `openai` engine names a provider that is not configured.";
    UNKNOWN_DEPENDENCY [422] []
        "A submission's `deps` names a task that does not exist.";
    UNKNOWN_APP [422] []
        "A deploy (or a task's `deploy`) names an app that is not in `ops.yaml`.";
    RESERVED_ACCOUNT [422] []
        "A submission's `account` is one of the service's own books (`system:`, `agent:`, \
         `task:`).";
    ACCOUNT_NOT_FOUND [404, 422] []
        "No such ledger account: 404 on the ledger's routes, 422 as the payer of a task or deploy.";
    INSUFFICIENT_FUNDS [402, 422] []
        "The paying account cannot cover the amount: 402 for a task's budget or a deploy's \
         price (nothing is created), 422 for a ledger transfer (nothing changed).";
    IDEMPOTENCY_CONFLICT [409] []
        "A submission's `idempotency_key` was used before with a different body.";
    QUEUE_FULL [429] []
        "`compass.max_queued_tasks` tasks already wait; retry after `Retry-After`.";
    TASK_NOT_FOUND [404] []
        "No task with that id (also for an id that is not a UUID).";
    TASK_FINISHED [409] []
        "A cancel of a task that already ended.";
    TASK_LANDING [409] []
        "A cancel of a task whose change the merge queue is putting on the base now: too late; \
         the task ends `done` (or, if the landing fails, goes on and can be cancelled again).";
    INVALID_TASK_STATUS [409] []
        "A task action (approve, reject, retry) on a task not in a status it applies to.";
    COMPASS_UNAVAILABLE [503] []
        "Compass did not answer a task action in time.";
    PERSONA_UNAVAILABLE [503] [Task]
        "A persona (the Ledger, an Uplink, or a stage's persona) is down or did not answer in \
         time.";
    // Streams and probes.
    TOO_MANY_STREAMS [503] []
        "The limit of open event streams is reached, or the service is stopping.";
    TOO_MANY_SESSIONS [503] []
        "A web login found the session table full of other principals' unexpired sessions.";
    STREAM_FAILED [] [Stream]
        "An event stream could not read the stored log; the stream ends with this error event.";
    METRICS_UNAVAILABLE [503] []
        "This process has no metrics recorder installed.";
    NOT_READY [503] []
        "`/readyz`: an actor is not running, the store writer is stalled or faulted (disk full or \
         failing), or Compass has not loaded its queue yet; any intake route (`POST /v1/tasks`) \
         until that queue is loaded after a start, so the queue bound holds from the first \
         request.";
    // The ledger.
    EXCEEDS_PENDING_AMOUNT [422] []
        "A post of a pending transfer for more than it reserved.";
    AMOUNT_OVERFLOW [422] []
        "An account total would pass 2^64 - 1.";
    TRANSFER_NOT_FOUND [404] []
        "No such ledger transfer.";
    ACCOUNT_EXISTS [409] []
        "The account id exists with another `kind` or `allow_negative`.";
    TRANSFER_EXISTS [409] []
        "The transfer id exists with another body.";
    TRANSFER_NOT_PENDING [409] []
        "A post or void of a transfer that is not pending (already posted or voided).";
    TRANSFER_EXPIRED [409] []
        "A post or void of a pending transfer past its timeout (it has been released).";
    // Ops.
    DEPLOY_NOT_FOUND [404] []
        "No deploy with that id.";
    INCIDENT_NOT_FOUND [404] []
        "No incident with that id.";
    STEP_CHANGED [409] []
        "An approval names a gated step (index, action, digest) that is not the step the \
         incident's runbook has there now (the runbook was edited since it was shown): the \
         incident shows the new step for a fresh decision.";
    INVALID_STATE [409] []
        "An ops record (deploy, incident) is not in a state that allows the action (or an ops \
         action's argument, such as a scale count, is out of range).";
    APP_BUSY [409] []
        "An action on an app (restart, rollback, scale) while a deploy or another action holds \
         it.";
    SILENCE_NOT_FOUND [404] []
        "No silence with that id.";
    TOO_MANY_SILENCES [409] []
        "A new silence while 1,000 are active already: expire one first.";
    DEPLOY_QUEUE_FULL [429] []
        "Too many deploys of the app already wait.";
    COMMAND_DENIED [403] [Deploy]
        "A command the Uplink personas would run is denied by a rule of `ops.yaml`.";
    UNKNOWN_COMMIT [422] [Deploy]
        "The commit or ref to deploy does not resolve in the app's repository.";
    VERIFY_FAILED [] [Task, Deploy]
        "The verify command failed — on the task's branch or on its merge-queue candidate (the \
         base plus the change) — on its last allowed attempt, or on a deploy's commit.";
    PROVIDER_FAILED [] [Deploy]
        "An ops provider command failed or timed out.";
    NO_RELEASE [] [Deploy]
        "The app has no release to go back to (rollback, restart).";
    UNSUPPORTED [] [Deploy]
        "The operation does not apply to the app's provider.";
    IO_FAILED [] [Deploy]
        "The file system refused during an ops operation.";
    DEPLOY_UNHEALTHY [] [Deploy]
        "The release failed its health check (and was rolled back when possible).";
    DEPLOY_INTERRUPTED [] [Deploy]
        "Uplink-Deploy stopped while the deploy ran.";
    PORT_IN_USE [] [Deploy]
        "A `local` deploy found the app's port held by a process that is not the app's running \
         release; the running release was left serving.";
    // Recorded on tasks.
    IMPLEMENT_FAILED [] [Task]
        "The patch engine exited non-zero on the last allowed attempt.";
    NO_CHANGES [] [Task]
        "The patch engine changed nothing (an empty diff against the base) on the last allowed attempt.";
    PERSONA_TIMEOUT [] [Task]
        "The stage's persona did not answer within the stage's call timeout.";
    PIPELINE_FAILED [] [Task]
        "The task's pipeline actor crashed past its restart limit.";
    DEPENDENCY_FAILED [] [Task]
        "A dependency of the task failed, was cancelled or was dead-lettered.";
    POISONED [] [Task]
        "The task's work took the service (or a persona) down too often: its own engine or verify \
         run was in flight at `compass.poison_after` consecutive unclean stops, or its requests crashed a persona past its \
         restart limit.";
    ENGINE_TIMEOUT [] [Task]
        "An engine ran past its timeout and was killed.";
    ENGINE_FAILED [] [Task]
        "An engine could not be started at all.";
    ENGINE_KILLED [] [Task]
        "An engine's process was killed by a signal it did not ask for (OOM killer, an operator).";
    RESOURCE_LIMIT [] [Task]
        "A sandboxed engine or verify command hit one of `engines.limits` (processes, memory, CPU time, file size, open files, disk); the message names it and the run keeps the output.";
    GIT_LOCKED [] [Task]
        "Another git process held a lock through every retry.";
    PLAN_INVALID [] [Task]
        "The planner's engine did not produce a valid plan.";
    TOOL_DENIED [] [Task]
        "The governed executor refused a command; the message names the rule.";
    PROVIDER_UNAVAILABLE [] [Task]
        "The model provider stayed busy or unreachable through every retry.";
    BUDGET_EXCEEDED [] [Task]
        "The task crossed one of its budget caps (`max_tokens`, `max_wall_secs`).";
    EDIT_REFUSED [] [Task]
        "A model asked to edit a path outside the worktree (absolute, `..` or `.git/`), or a \
         path the service would write in the worktree (a model's edit, the builtin note) passes \
         through a symbolic link; nothing was written.";
    PROTECTED_PATH [] [Task]
        "The task's changes touch `[governance] protected_paths`.";
    SECRET_IN_CHANGE [] [Task]
        "The task's change writes a configured secret value (`[governance] secrets`, plain or \
         in an encoding the redactor knows) into a file or a path name, or is too large to be \
         scanned whole; the message names the files, never the value; nothing was committed.";
    GIT_FAILED [] [Task]
        "A git operation (worktree, commit) failed.";
    FLEET_NOT_CONFIGURED [409] []
        "A fleet action on a service without `[fleet] nats_url`: everything runs in-process.";
    FACTORY_EXISTS [409] []
        "`POST /v1/fleet/factories` for a name already issued a key: factory names are unique.";
    FLEET_UNAVAILABLE [503] [Task]
        "On a task: no fleet factory ran its engine or verify command in time (none could \
         serve its capabilities, or every delivery's lease was lost), or one could not run it; \
         transient: the stage is retried. At the ingress: NATS did not answer a fleet request.";
    MERGE_CONFLICT [] [Task]
        "The change no longer applies to the base branch and no attempt is left to make it again \
         on the new base; the branch is kept.";
    DELIVER_FAILED [] [Task]
        "Delivery failed for another reason (local edits in the checkout, the base moved outside \
         glitchlab past `merge_queue.base_moved_max`); the branch is kept.";
    DELIVERY_FAILED [] [Task]
        "`delivery: pull_request` in `fail_fast` mode: a push or a GitHub call failed after the \
         retry ladder (the message names the step), GitHub refused the merge, or the head moved \
         past `github.head_moves_max`; the branch is kept.";
    CHECKS_STALLED [] [Task]
        "A pull request's check never reported within `github.checks_deadline_secs` (the message \
         names it), or `no_checks = \"fail\"` met a head with no check at all.";
    CHECKS_FAILED [] [Task]
        "A pull request's checks were red (failed, cancelled, timed out, `action_required`, \
         stale) on the last allowed attempt; their names and summaries are the feedback.";
    CHANGES_REQUESTED [] [Task]
        "A reviewer requested changes on the pull request's head on the last allowed attempt; \
         the reviews and their comments are the feedback.";
    WEBHOOK_SIGNATURE [401] []
        "`POST /v1/github/webhook`: `X-Hub-Signature-256` is missing or wrong (or no \
         `github.webhook_secret_env` is set); nothing ran.";
    DEPLOY_FAILED [] [Task]
        "The task's deploy did not end healthy (rolled back, failed, rejected, or still waiting \
         after `compass.deploy_wait_secs`).";
    STORE_FAILED [] [Task, Deploy]
        "Durable state could not be read or written while a stage or deploy ran.";
    CANCELLED [] []
        "A job's answer when its task was cancelled under it; never stored (the task is already \
         `cancelled`).";
}

/// The catalogue entry of `name`, if it is a code the service emits: what tests and tools use to
/// tell a code from any other upper-case string.
pub(crate) fn lookup(name: &str) -> Option<&'static Code> {
    CATALOGUE.iter().find(|code| code.name == name)
}

impl Code {
    /// Whether the HTTP edge may answer this code with `status`: what ties the catalogue to the
    /// statuses handlers actually use.
    pub(crate) fn answers_with(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

#[cfg(test)]
mod tests;
