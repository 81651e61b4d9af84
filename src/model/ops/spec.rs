//! The typed shape of `ops.yaml` and of `runbooks/*.yaml`, and their validation at start.
//!
//! Every struct denies unknown fields: a typo in an ops file stops start-up with the file and the
//! line, instead of silently deploying with a default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Upper bound on any configured wait (drain, build, deploy, check): one day.
pub(crate) const CONFIGURED_TIMEOUT_SECS_MAX: u64 = 24 * 60 * 60;
/// Health check retries allowed at most.
pub(crate) const HEALTH_RETRIES_MAX: u32 = 100;
/// Checks one app may declare at most.
pub(crate) const CHECKS_PER_APP_MAX: usize = 64;
/// Steps one runbook may declare at most.
pub(crate) const RUNBOOK_STEPS_MAX: usize = 32;
/// The longest `wait` step a runbook may ask for.
pub(crate) const WAIT_STEP_SECS_MAX: u64 = 600;

/// `ops.yaml`: the apps glitchlab deploys and watches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsFile {
    /// Apps by name. A name declared twice is refused at its second line: a plain map would keep
    /// the last one silently.
    #[serde(default, deserialize_with = "unique_apps")]
    pub apps: BTreeMap<String, AppSpec>,
    /// Where the `fly` CLI is (default: `fly` on `PATH`); an app's own `fly.binary` wins.
    #[serde(default)]
    pub fly_binary: Option<String>,
    /// How signals become incidents: grouping, correlation, flapping.
    #[serde(default)]
    pub incidents: IncidentPolicy,
}

/// `incidents:` in `ops.yaml` — when a signal joins an open incident instead of opening one, and
/// when an app's incidents stop being answered automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentPolicy {
    /// What makes two signals one incident: `app`, `signal` and label names. An Alertmanager
    /// webhook's `groupKey` is kept on the signal but decides nothing (a key per instance would
    /// split one outage into hundreds of incidents).
    pub group_by: Vec<String>,
    /// A signal for an app with an unresolved incident updated this recently joins that incident,
    /// whatever its signal (one outage, one incident).
    pub correlate_secs: u64,
    /// More incidents than this for one app (any signal) within `flap_window_secs` and the next one
    /// goes to a human: no automatic response, no task.
    pub flap_max: u32,
    /// The flapping window.
    pub flap_window_secs: u64,
    /// Automatic actions (restart, rollback, scale, create_task steps) one app's responses may
    /// start within `actions_window_secs`; past it the next incident, and the next step of a
    /// running response, goes to a human. `0` turns the count budget off.
    pub actions_max: u32,
    /// Micro-tokens of ledger cost (the reservations of the bugfix tasks the responses filed) one
    /// app's automatic actions may run up within `actions_window_secs`; at or past it, no
    /// further automatic action. `0` turns the cost budget off.
    pub actions_cost_max: u64,
    /// The window both action budgets count over (a sliding window: actions older than this no
    /// longer count).
    pub actions_window_secs: u64,
}

impl Default for IncidentPolicy {
    fn default() -> Self {
        Self {
            group_by: vec!["app".into(), "signal".into()],
            correlate_secs: 30,
            flap_max: 3,
            flap_window_secs: 600,
            actions_max: 10,
            actions_cost_max: 50_000_000,
            actions_window_secs: 3600,
        }
    }
}

impl OpsFile {
    /// An app name as a metrics label: itself if this file names it, else `other` (webhooks name
    /// any app they like; labels stay bounded).
    pub(crate) fn app_label<'a>(&self, app: &'a str) -> &'a str {
        if self.apps.contains_key(app) {
            app
        } else {
            "other"
        }
    }
}

/// Deserializes `apps:` refusing a name declared twice. The check runs as the key is read, so
/// serde_yaml_ng marks the error with the line of the second key itself.
fn unique_apps<'de, D>(deserializer: D) -> Result<BTreeMap<String, AppSpec>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserializer.deserialize_map(UniqueKeys::new("app"))
}

/// Deserializes a runbook's `labels:` refusing a label given twice (a map keeps the last).
fn unique_labels<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserializer.deserialize_map(UniqueKeys::new("label"))
}

/// A mapping whose keys are each read once; `noun` names a key in the error.
struct UniqueKeys<V> {
    noun: &'static str,
    values: std::marker::PhantomData<V>,
}

impl<V> UniqueKeys<V> {
    fn new(noun: &'static str) -> Self {
        Self {
            noun,
            values: std::marker::PhantomData,
        }
    }
}

impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for UniqueKeys<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a mapping of {} names", self.noun)
    }

    fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
    where
        A: serde::de::MapAccess<'de>,
    {
        let mut values = BTreeMap::new();
        while let Some(key) = map.next_key_seed(NewKey {
            seen: &values,
            noun: self.noun,
        })? {
            let value = map.next_value::<V>()?;
            values.insert(key, value);
        }
        Ok(values)
    }
}

/// A key not seen yet in the mapping being read.
struct NewKey<'a, V> {
    seen: &'a BTreeMap<String, V>,
    noun: &'static str,
}

impl<'de, V> serde::de::DeserializeSeed<'de> for NewKey<'_, V> {
    type Value = String;

    fn deserialize<D>(self, deserializer: D) -> Result<String, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        deserializer.deserialize_str(self)
    }
}

impl<V> serde::de::Visitor<'_> for NewKey<'_, V> {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {} name", self.noun)
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<String, E> {
        if self.seen.contains_key(key) {
            return Err(E::custom(format_args!(
                "{} `{key}` is declared twice (a second declaration would replace the first)",
                self.noun
            )));
        }
        Ok(key.to_owned())
    }
}

/// How an app is deployed and operated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Releases run as supervised processes on this host.
    Local,
    /// The fly.io CLI.
    Fly,
    /// User-given shell commands.
    Command,
}

/// One app of `ops.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's git repository on this host: releases are its commits.
    pub repo: PathBuf,
    /// The branch a deploy without a commit takes its head from.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Must exit 0 on a commit (in an export of it) before that commit deploys.
    #[serde(default = "default_verify")]
    pub verify: String,
    /// How verify may take at most.
    #[serde(default = "default_verify_timeout_secs")]
    pub verify_timeout_secs: u64,
    /// Which provider deploys it.
    pub provider: ProviderKind,
    /// Settings of the `local` provider.
    #[serde(default)]
    pub local: Option<LocalSpec>,
    /// Settings of the `fly` provider.
    #[serde(default)]
    pub fly: Option<FlySpec>,
    /// Settings of the `command` provider.
    #[serde(default)]
    pub command: Option<CommandSpecs>,
    /// How to tell that a release is healthy; without it the provider's status decides.
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// A hook run before a deploy replaces the running release.
    #[serde(default)]
    pub drain: Option<DrainSpec>,
    /// Burn-in: which deploys wait for a human.
    #[serde(default)]
    pub gates: GatesSpec,
    /// Periodic read-only checks (Uplink-Watch).
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// The ledger account that pays for the app's deploys and actions (default: a delivering
    /// task's account, else `ledger.local_account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Names the app had before: at start, a running release recorded under one of them is
    /// carried over to this name (adopted, not restarted). Without it, a release of a name that
    /// left `ops.yaml` is stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_names: Vec<String>,
}

fn default_branch() -> String {
    "main".into()
}

fn default_verify() -> String {
    "true".into()
}

fn default_verify_timeout_secs() -> u64 {
    600
}

/// `local:` — build and start commands of a release on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// Run once in the release directory before it starts.
    #[serde(default = "default_build")]
    pub build: String,
    /// Starts the app (a long-running process); `PORT` is set.
    pub start: String,
    /// The port handed to the app as `PORT`.
    pub port: u16,
    /// How long `build` may take.
    #[serde(default = "default_build_timeout_secs")]
    pub build_timeout_secs: u64,
    /// After SIGTERM, how long the old release may take to exit before SIGKILL.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

fn default_build() -> String {
    "true".into()
}

fn default_build_timeout_secs() -> u64 {
    300
}

fn default_stop_grace_ms() -> u64 {
    2000
}

/// `fly:` — the fly.io app behind this app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlySpec {
    /// The fly app name (`--app`).
    pub app: String,
    /// The CLI to run (default: the top-level `fly_binary`, else `fly`).
    #[serde(default)]
    pub binary: Option<String>,
    /// A `fly.toml` path inside the release (`--config`).
    #[serde(default)]
    pub config: Option<String>,
    /// How long one fly command may take.
    #[serde(default = "default_fly_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_fly_timeout_secs() -> u64 {
    600
}

/// `command:` — shell commands that deploy and operate the app. `GLITCHLAB_COMMIT`,
/// `GLITCHLAB_RELEASE_DIR` and `GLITCHLAB_APP` are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpecs {
    /// Deploys the commit.
    pub deploy: String,
    /// Puts the given (earlier) commit back.
    pub rollback: String,
    /// Exits 0 while the app runs.
    #[serde(default)]
    pub status: Option<String>,
    /// Restarts the running release.
    #[serde(default)]
    pub restart: Option<String>,
    /// Scales to `GLITCHLAB_COUNT` instances.
    #[serde(default)]
    pub scale: Option<String>,
    /// Prints recent log lines.
    #[serde(default)]
    pub logs: Option<String>,
    /// How long one command may take.
    #[serde(default = "default_fly_timeout_secs")]
    pub timeout_secs: u64,
}

/// `health:` — an HTTP probe with retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// The URL to GET.
    pub url: String,
    /// The status that means healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// One probe's timeout.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Probes before giving up.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause between probes.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_expect_status() -> u16 {
    200
}

fn default_health_timeout_ms() -> u64 {
    1000
}

fn default_retries() -> u32 {
    3
}

fn default_interval_ms() -> u64 {
    500
}

/// `drain:` — a hook before the running release is replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSpec {
    /// Shell command, run in the app's repository.
    pub command: String,
    /// Past this the hook is killed and the deploy goes on with a warning.
    #[serde(default = "default_drain_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_drain_timeout_secs() -> u64 {
    60
}

/// `gates:` — burn-in. See [`crate::work::ops::deploy::gate_for`] for the rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesSpec {
    /// The first N deploys wait for approval.
    #[serde(default)]
    pub approve_first: u32,
    /// From this many healthy deploys on, deploys are automatic even after a config change.
    #[serde(default)]
    pub auto_after: Option<u32>,
}

/// What a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// An HTTP GET (the check's `url`, else the app's health URL).
    Http,
    /// Days left on a TLS certificate.
    TlsExpiry,
    /// Whether the app's process runs.
    Process,
    /// A shell command that must exit 0.
    Command,
    /// Today's ledger spend against the trailing daily average.
    Cost,
}

impl CheckKind {
    /// The signal a failure of this kind raises.
    pub fn signal(self) -> &'static str {
        match self {
            Self::Http => "health_check_failed",
            Self::TlsExpiry => "tls_expiring",
            Self::Process => "process_exited",
            Self::Command => "check_failed",
            Self::Cost => "cost_spike",
        }
    }
}

/// One maintenance check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Unique within the app.
    pub name: String,
    /// Cron with a seconds field: `sec min hour day month weekday [year]`.
    pub schedule: String,
    /// What it looks at.
    pub kind: CheckKind,
    /// `http`: the URL (default: the app's health URL).
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: the expected status (default 200).
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// `tls_expiry`: the host.
    #[serde(default)]
    pub host: Option<String>,
    /// `tls_expiry`: the port (default 443).
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls_expiry`: alert under this many days (default 14).
    #[serde(default)]
    pub min_days: Option<u32>,
    /// `command`: the shell command.
    #[serde(default)]
    pub command: Option<String>,
    /// `cost`: alert when today is over this many times the trailing average (default 2.0).
    #[serde(default)]
    pub factor: Option<f64>,
    /// `cost`: days of the trailing average (default 7).
    #[serde(default)]
    pub days: Option<u32>,
    /// `cost`: spend (micro-tokens) under which today never alerts (default 0).
    #[serde(default)]
    pub floor: Option<u64>,
    /// How long one run may take (default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl CheckSpec {
    /// The parsed schedule (validated at load, so this only fails for a hand-built spec).
    pub fn parsed_schedule(&self) -> Result<cron::Schedule, String> {
        cron::Schedule::from_str(&self.schedule).map_err(|e| e.to_string())
    }
}

/// One incident runbook (`runbooks/*.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// Runbook name.
    pub name: String,
    /// Which signals it handles.
    #[serde(rename = "match")]
    pub matcher: RunbookMatch,
    /// How bad a matched incident is.
    pub classify: Classification,
    /// Ordered response steps.
    pub steps: Vec<RunbookStep>,
}

/// `match:` of a runbook: every given field must agree with the signal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookMatch {
    /// The signal name (`health_check_failed`, an Alertmanager `alertname`, ...).
    pub signal: String,
    /// Only this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Labels the signal must carry with these values; each once.
    #[serde(default, deserialize_with = "unique_labels")]
    pub labels: BTreeMap<String, String>,
}

/// How bad an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Nothing is wrong for users.
    Noise,
    /// Users see it, the app still serves.
    Degradation,
    /// The app does not serve.
    Outage,
}

/// What a runbook step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Restart the running release.
    Restart,
    /// Put the last healthy release back.
    Rollback,
    /// Change the instance count (always gated).
    Scale,
    /// Pause.
    Wait,
    /// Run the app's health check once (with its retries) and record it.
    Check,
    /// File a bugfix task for Compass with `caused_by`.
    CreateTask,
    /// Record and log a notice for humans.
    Notify,
}

impl StepAction {
    /// Whether the step acts on the app or the books (restart, rollback, scale, create_task),
    /// so counts against the app's automatic-action budget; wait, check and notify only look or
    /// tell.
    pub fn acts(self) -> bool {
        matches!(
            self,
            Self::Restart | Self::Rollback | Self::Scale | Self::CreateTask
        )
    }
}

/// One runbook step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookStep {
    /// What to do.
    pub action: StepAction,
    /// Waits for `POST /v1/incidents/{id}/approve` first (scale always does).
    #[serde(default)]
    pub gated: bool,
    /// `wait`: seconds.
    #[serde(default)]
    pub seconds: Option<u64>,
    /// `scale`: instances.
    #[serde(default)]
    pub count: Option<u32>,
    /// `notify` / `create_task`: text.
    #[serde(default)]
    pub message: Option<String>,
}

impl RunbookStep {
    /// Whether a human must approve the step before it runs.
    pub fn needs_approval(&self) -> bool {
        self.gated || self.action == StepAction::Scale
    }
}

/// The digest of an app's settings: "the ops config is unchanged since the last healthy deploy".
pub(crate) fn config_digest(app: &AppSpec) -> String {
    let bytes = serde_json::to_vec(app).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Parses YAML into `T`, reading the whole text as plain YAML first. serde_yaml_ng reads events
/// lazily: a mis-indented line that is not YAML would otherwise surface as the section before it
/// missing a field, at that section's line; read whole first, it is refused at its own line.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_yaml_ng::Error> {
    serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text)?;
    serde_yaml_ng::from_str(text)
}

/// The 1-based line of the first line of `text` that contains `needle` (1 when none does).
pub(crate) fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map_or(1, |index| index + 1)
}

/// The 1-based line of the last of `path` found by looking for each needle at or after the line
/// of the one before: `["apps:", "web:", "health:", "url:"]` finds web's health URL, not the first
/// `url:` of the file. A needle repeated looks past the line of the one before (the second of two
/// declarations). A needle not found ends the walk at the last line found (1 when none).
pub(crate) fn line_of_path(text: &str, path: &[&str]) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    let mut found = None;
    let mut previous = None;
    for needle in path {
        let from = if previous == Some(needle) { at + 1 } else { at };
        previous = Some(needle);
        match (from..lines.len()).find(|index| contains_key(lines[*index], needle)) {
            Some(index) => {
                at = index;
                found = Some(index);
            }
            None => break,
        }
    }
    found.map_or(1, |index| index + 1)
}

/// Whether `line` holds `needle` not as the end of a longer name (`web:` is not in `myweb:`) and
/// is not a comment.
fn contains_key(line: &str, needle: &str) -> bool {
    if line.trim_start().starts_with('#') {
        return false;
    }
    line.match_indices(needle).any(|(index, _)| {
        !line[..index]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// Where a field of an app is, under the app: `health.url` → `health:` then `url:`.
fn field_path(field: &str) -> Vec<String> {
    field.split('.').map(|part| format!("{part}:")).collect()
}

/// Checks what serde cannot: provider sections, schedules, check fields, limits, ports shared by
/// two apps. The error is `line N: app `name`: reason`, N found by walking the text from the app's
/// key down to the offending field.
pub(crate) fn validate_ops(ops: &OpsFile, text: &str) -> Result<(), String> {
    let at = |name: &str, field: &[String], reason: String| {
        let app_key = format!("{name}:");
        let mut path = vec!["apps:", app_key.as_str()];
        path.extend(field.iter().map(String::as_str));
        format!("line {}: app `{name}`: {reason}", line_of_path(text, &path))
    };
    for (name, app) in &ops.apps {
        validate_app(name, app).map_err(|(field, reason)| at(name, &field, reason))?;
    }
    let mut claimed_names: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, app) in &ops.apps {
        for old in &app.previous_names {
            let clash = if ops.apps.contains_key(old) {
                Some(format!("previous name `{old}` is an app of this file"))
            } else {
                claimed_names.insert(old, name).map(|other| {
                    format!("previous name `{old}` is a previous name of app `{other}` too")
                })
            };
            if let Some(reason) = clash {
                return Err(at(name, &field_path("previous_names"), reason));
            }
        }
    }
    let policy = &ops.incidents;
    let budget_on = policy.actions_max > 0 || policy.actions_cost_max > 0;
    if budget_on && policy.actions_window_secs == 0 {
        return Err(format!(
            "line {}: incidents.actions_window_secs must be at least 1 while actions_max or \
             actions_cost_max is on (0 turns those off)",
            line_of_path(text, &["incidents:"])
        ));
    }
    // In file order, so the app refused is the later one, where the operator added it.
    let mut in_file_order: Vec<(usize, &String, &AppSpec)> = ops
        .apps
        .iter()
        .map(|(name, app)| {
            (
                line_of_path(text, &["apps:", &format!("{name}:")]),
                name,
                app,
            )
        })
        .collect();
    in_file_order.sort_by_key(|(line, name, _)| (*line, *name));
    let mut claimed: BTreeMap<(String, u16), (&str, &str)> = BTreeMap::new();
    for (_, name, app) in in_file_order {
        for (field, host, port) in port_claims(app) {
            match claimed.get(&(host.clone(), port)) {
                Some((other, other_field)) if *other != name.as_str() => {
                    return Err(at(
                        name,
                        &field_path(field),
                        format!(
                            "{field} uses port {port}{}, which app `{other}` uses too \
                             ({other_field}): one of them would answer for the other",
                            if host == THIS_HOST {
                                String::new()
                            } else {
                                format!(" of {host}")
                            }
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    claimed.insert((host, port), (name.as_str(), field));
                }
            }
        }
    }
    Ok(())
}

/// The host of a `local.port` and of loopback health URLs.
const THIS_HOST: &str = "this host";

/// The ports an app answers on: its `local.port` on this host, and its health URL's host and
/// port (a loopback host is this host). Two apps sharing one would deploy over each other or be
/// judged by the other's health.
fn port_claims(app: &AppSpec) -> Vec<(&'static str, String, u16)> {
    let mut claims = Vec::new();
    if let (ProviderKind::Local, Some(local)) = (app.provider, &app.local) {
        claims.push(("local.port", THIS_HOST.to_owned(), local.port));
    }
    if let Some((host, port)) = app.health.as_ref().and_then(|h| url_host_port(&h.url)) {
        claims.push(("health.url", host, port));
    }
    claims
}

/// Host and port of an `http(s)://` URL (the scheme's port when none is written); loopback hosts
/// are [`THIS_HOST`].
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    let host = host.to_ascii_lowercase();
    let loopback = host == "localhost" || host == "::1" || host == "0.0.0.0" || host == "::";
    if loopback || host.starts_with("127.") {
        return Some((THIS_HOST.to_owned(), port));
    }
    Some((host, port))
}

/// Whether `name` may name an app (it names a directory under `releases/`).
fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_app(name: &str, app: &AppSpec) -> Result<(), (Vec<String>, String)> {
    let at_app = |reason: String| (Vec::new(), reason);
    if !is_app_name(name) {
        return Err(at_app("app names use letters, digits, `-` and `_`".into()));
    }
    if !app.repo.is_absolute() {
        return Err((field_path("repo"), "repo must be an absolute path".into()));
    }
    match app.provider {
        ProviderKind::Local if app.local.is_none() => {
            return Err((
                field_path("provider"),
                "provider `local` needs a `local:` section".into(),
            ))
        }
        ProviderKind::Fly if app.fly.is_none() => {
            return Err((
                field_path("provider"),
                "provider `fly` needs a `fly:` section".into(),
            ))
        }
        ProviderKind::Command if app.command.is_none() => {
            return Err((
                field_path("provider"),
                "provider `command` needs a `command:` section".into(),
            ))
        }
        _ => {}
    }
    validate_limits(app).map_err(|(field, reason)| (field_path(field), reason))?;
    if let Some(account) = &app.account {
        crate::model::ledger::validate_id("account", account)
            .map_err(|e| (field_path("account"), e.to_string()))?;
    }
    for old in &app.previous_names {
        if old == name || !is_app_name(old) {
            return Err((
                field_path("previous_names"),
                format!(
                    "previous name `{old}` must be another app name (letters, digits, `-`, `_`)"
                ),
            ));
        }
    }
    if app.checks.len() > CHECKS_PER_APP_MAX {
        return Err((
            field_path("checks"),
            format!("at most {CHECKS_PER_APP_MAX} checks"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for check in &app.checks {
        let at_check = |reason: String| {
            let mut path = field_path("checks");
            path.push(format!("name: {}", check.name));
            (path, reason)
        };
        if !seen.insert(check.name.as_str()) {
            // The second declaration: past the first one's line.
            let mut path = field_path("checks");
            path.push(format!("name: {}", check.name));
            path.push(format!("name: {}", check.name));
            return Err((path, format!("check `{}` is declared twice", check.name)));
        }
        validate_check(app, check).map_err(at_check)?;
    }
    Ok(())
}

/// Timeouts and retries within bounds; the error names the field it is about.
fn validate_limits(app: &AppSpec) -> Result<(), (&'static str, String)> {
    let timeouts = [
        ("verify_timeout_secs", app.verify_timeout_secs),
        (
            "drain.timeout_secs",
            app.drain.as_ref().map_or(1, |d| d.timeout_secs),
        ),
        (
            "local.build_timeout_secs",
            app.local.as_ref().map_or(1, |l| l.build_timeout_secs),
        ),
        (
            "fly.timeout_secs",
            app.fly.as_ref().map_or(1, |f| f.timeout_secs),
        ),
        (
            "command.timeout_secs",
            app.command.as_ref().map_or(1, |c| c.timeout_secs),
        ),
    ];
    for (key, value) in timeouts {
        if value == 0 || value > CONFIGURED_TIMEOUT_SECS_MAX {
            return Err((
                key,
                format!("{key} must be within 1..={CONFIGURED_TIMEOUT_SECS_MAX}"),
            ));
        }
    }
    if let Some(health) = &app.health {
        if health.retries == 0 || health.retries > HEALTH_RETRIES_MAX {
            return Err((
                "health.retries",
                format!("health.retries must be within 1..={HEALTH_RETRIES_MAX}"),
            ));
        }
        if health.timeout_ms == 0 || health.timeout_ms > CONFIGURED_TIMEOUT_SECS_MAX * 1000 {
            return Err((
                "health.timeout_ms",
                "health.timeout_ms is out of range".into(),
            ));
        }
        if !is_http_url(&health.url) {
            return Err((
                "health.url",
                format!(
                    "health.url `{}` must be an http:// or https:// URL",
                    health.url
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `url` is an `http://` or `https://` URL (YAML reads `url: 42` as the text `42`).
fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn validate_check(app: &AppSpec, check: &CheckSpec) -> Result<(), String> {
    check
        .parsed_schedule()
        .map_err(|e| format!("check `{}`: schedule `{}`: {e}", check.name, check.schedule))?;
    let missing = |field: &str| {
        format!(
            "check `{}` of kind {} needs `{field}`",
            check.name,
            super::wire_name(&check.kind)
        )
    };
    match check.kind {
        CheckKind::Http if check.url.is_none() && app.health.is_none() => Err(missing("url")),
        CheckKind::Http => match &check.url {
            Some(url) if !is_http_url(url) => Err(format!(
                "check `{}`: url `{url}` must be an http:// or https:// URL",
                check.name
            )),
            _ => Ok(()),
        },
        CheckKind::TlsExpiry if check.host.is_none() => Err(missing("host")),
        CheckKind::Command if check.command.is_none() => Err(missing("command")),
        _ => Ok(()),
    }
}

/// Checks a runbook beyond its shape: at least one step, at most [`RUNBOOK_STEPS_MAX`], waits and
/// scales with their parameters.
pub(crate) fn validate_runbook(runbook: &Runbook, text: &str) -> Result<(), String> {
    let fail = |needle: &str, reason: String| format!("line {}: {reason}", line_of(text, needle));
    if runbook.steps.is_empty() || runbook.steps.len() > RUNBOOK_STEPS_MAX {
        return Err(fail(
            "steps",
            format!("a runbook has 1..={RUNBOOK_STEPS_MAX} steps"),
        ));
    }
    for step in &runbook.steps {
        match step.action {
            StepAction::Wait if step.seconds.is_none_or(|s| s > WAIT_STEP_SECS_MAX) => {
                return Err(fail(
                    "wait",
                    format!("a wait step needs `seconds` within 0..={WAIT_STEP_SECS_MAX}"),
                ))
            }
            StepAction::Scale if step.count.is_none() => {
                return Err(fail("scale", "a scale step needs `count`".into()))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apps:\n  web:\n    repo: /srv/web\n    provider: local\n    local: {start: \"python3 app.py\", port: 8081}\n    checks:\n      - {name: web-health, schedule: \"*/5 * * * * *\", kind: process}\n";

    #[test]
    fn a_good_file_validates() {
        let ops: OpsFile = serde_yaml_ng::from_str(GOOD).unwrap();
        validate_ops(&ops, GOOD).unwrap();
        assert_eq!(ops.apps["web"].branch, "main");
    }

    #[test]
    fn the_shipped_example_validates() {
        let text = include_str!("../../../examples/ops.yaml");
        let ops: OpsFile = serde_yaml_ng::from_str(text).unwrap();
        validate_ops(&ops, text).unwrap();
        assert_eq!(ops.apps["sample"].account.as_deref(), Some("user:local"));
    }

    #[test]
    fn a_bad_account_names_its_line() {
        let text = format!("{GOOD}    account: \"no spaces please\"\n");
        let ops: OpsFile = serde_yaml_ng::from_str(&text).unwrap();
        let error = validate_ops(&ops, &text).unwrap_err();
        assert!(error.contains("account"), "{error}");
        assert!(
            error.starts_with(&format!("line {}", text.lines().count())),
            "{error}"
        );
    }

    #[test]
    fn a_bad_schedule_names_its_line() {
        let text = GOOD.replace("*/5 * * * * *", "every five");
        let ops: OpsFile = serde_yaml_ng::from_str(&text).unwrap();
        let error = validate_ops(&ops, &text).unwrap_err();
        assert!(error.starts_with("line 7:"), "{error}");
    }

    #[test]
    fn a_missing_provider_section_is_refused() {
        let text = GOOD.replace("provider: local", "provider: fly");
        let ops: OpsFile = serde_yaml_ng::from_str(&text).unwrap();
        assert!(validate_ops(&ops, &text).unwrap_err().contains("fly:"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = GOOD
            .replace("branch", "x")
            .replace("provider: local", "provider: local\n    colour: red");
        assert!(serde_yaml_ng::from_str::<OpsFile>(&text).is_err());
    }

    /// `text`'s parse error, or its validation error.
    fn error_of(text: &str) -> String {
        match from_yaml::<OpsFile>(text) {
            Err(error) => {
                let line = error.location().map_or(0, |l| l.line());
                format!("line {line}: {error}")
            }
            Ok(ops) => validate_ops(&ops, text).unwrap_err(),
        }
    }

    const TWO_APPS: &str = "apps:\n  web:\n    repo: /srv/web\n    provider: local\n    local: {start: \"x\", port: 8081}\n  api:\n    repo: /srv/api\n    provider: local\n    local: {start: \"x\", port: 8082}\n";

    /// Issue #16: an app declared twice is refused at the second key's line (a map would keep the
    /// last silently).
    #[test]
    fn a_duplicate_app_key_names_its_line() {
        let text = format!("{TWO_APPS}  web:\n    repo: /srv/other\n    provider: command\n    command: {{deploy: a, rollback: b}}\n");
        let error = error_of(&text);
        assert!(error.starts_with("line 10: "), "{error}");
        assert!(error.contains("app `web` is declared twice"), "{error}");
        assert!(serde_yaml_ng::from_str::<OpsFile>(TWO_APPS).is_ok());
    }

    /// A value of the wrong type is reported at its own line, naming the field.
    #[test]
    fn a_wrong_type_names_its_line_and_field() {
        let text = TWO_APPS.replace("port: 8082", "port: eighty");
        let error = error_of(&text);
        assert!(error.starts_with("line 9: "), "{error}");
        assert!(error.contains("apps.api.local.port"), "{error}");
        // YAML reads `42` as text for a text field: the URL check names the line and the field.
        let text = format!("{TWO_APPS}    health:\n      timeout_ms: 100\n      url: 42\n");
        let error = error_of(&text);
        assert!(
            error.starts_with("line 12: app `api`: health.url `42`"),
            "{error}"
        );
    }

    /// Issue 24: a check's `url: 42` is refused at its line (it used to pass start-up and then
    /// fail every run, restarting a healthy app).
    #[test]
    fn a_check_url_that_is_not_a_url_names_its_line() {
        let text = format!(
            "{GOOD}      - {{name: web-http, schedule: \"* * * * * *\", kind: http, url: 42}}\n"
        );
        let error = error_of(&text);
        assert!(
            error.starts_with("line 8: app `web`: check `web-http`: url `42`"),
            "{error}"
        );
        let good = text.replace("url: 42", "url: \"http://127.0.0.1:8081/\"");
        assert!(validate_ops(&from_yaml(&good).unwrap(), &good).is_ok());
    }

    /// Previous names are other names, each claimed once, none still an app.
    #[test]
    fn previous_names_are_checked() {
        let text = format!("{TWO_APPS}    previous_names: [web]\n");
        let error = error_of(&text);
        assert!(
            error.starts_with("line 10: app `api`: previous name `web`"),
            "{error}"
        );
        let text = format!("{TWO_APPS}    previous_names: [old]\n");
        assert!(validate_ops(&from_yaml(&text).unwrap(), &text).is_ok());
        let text = TWO_APPS.replace(
            "    local: {start: \"x\", port: 8081}\n",
            "    local: {start: \"x\", port: 8081}\n    previous_names: [old]\n",
        );
        let text = format!("{text}    previous_names: [old]\n");
        let error = error_of(&text);
        assert!(
            error.starts_with(
                "line 6: app `web`: previous name `old` is a previous name of app `api` too"
            ),
            "{error}"
        );
    }

    /// A mis-indented line is reported where it is, not at the section it fell into.
    #[test]
    fn a_misindented_line_names_its_own_line() {
        // `health` indented under `local`: an unknown field of `local`, at health's line.
        let text = "apps:\n  web:\n    repo: /srv/web\n    provider: local\n    local:\n      start: x\n      port: 8081\n      health:\n        url: http://127.0.0.1:8081/\n";
        let error = error_of(text);
        assert!(error.starts_with("line 8: "), "{error}");
        assert!(error.contains("unknown field `health`"), "{error}");
        // `provider` one space short of its siblings: not YAML.
        let text = "apps:\n  web:\n    repo: /srv/web\n   provider: local\n    local: {start: x, port: 1}\n";
        let error = error_of(text);
        assert!(error.starts_with("line 4: "), "{error}");
    }

    /// Two apps on one port: by `local.port`, by a health URL on a loopback host, or by one
    /// host and port in both health URLs.
    #[test]
    fn two_apps_on_one_port_are_refused() {
        let text = TWO_APPS.replace("port: 8082", "port: 8081");
        let error = error_of(&text);
        assert!(
            error.starts_with("line 9: app `api`: local.port uses port 8081"),
            "{error}"
        );
        assert!(error.contains("`web`"), "{error}");

        let text = format!("{TWO_APPS}    health: {{url: \"http://localhost:8081/health\"}}\n");
        let error = error_of(&text);
        assert!(
            error.starts_with("line 10: app `api`: health.url uses port 8081"),
            "{error}"
        );

        let text = "apps:\n  a:\n    repo: /srv/a\n    provider: fly\n    fly: {app: a}\n    health: {url: \"https://x.example/health\"}\n  b:\n    repo: /srv/b\n    provider: fly\n    fly: {app: b}\n    health: {url: \"https://X.example:443/up\"}\n";
        let error = error_of(text);
        assert!(
            error.starts_with("line 11: app `b`: health.url uses port 443 of x.example"),
            "{error}"
        );

        // One app's own port and health URL agree; other hosts on one port are fine.
        let text = format!("{TWO_APPS}    health: {{url: \"http://127.0.0.1:8082/health\"}}\n");
        let ops: OpsFile = serde_yaml_ng::from_str(&text).unwrap();
        validate_ops(&ops, &text).unwrap();
        let text = "apps:\n  a:\n    repo: /srv/a\n    provider: fly\n    fly: {app: a}\n    health: {url: \"https://a.example/\"}\n  b:\n    repo: /srv/b\n    provider: fly\n    fly: {app: b}\n    health: {url: \"https://b.example/\"}\n";
        let ops: OpsFile = serde_yaml_ng::from_str(text).unwrap();
        validate_ops(&ops, text).unwrap();
    }

    /// A field's line is found under its own app, not at the first app that has the field.
    #[test]
    fn a_bad_field_of_the_second_app_names_the_second_apps_line() {
        let text = TWO_APPS.replace("/srv/api", "srv/api");
        let error = error_of(&text);
        assert!(error.starts_with("line 7: app `api`: repo"), "{error}");
    }

    #[test]
    fn a_check_declared_twice_names_the_second_line() {
        let text = format!(
            "{GOOD}      - {{name: web-health, schedule: \"* * * * * *\", kind: process}}\n"
        );
        let error = error_of(&text);
        assert!(error.starts_with("line 8: "), "{error}");
    }

    /// A runbook label given twice is refused at its second line.
    #[test]
    fn a_duplicate_runbook_label_names_its_line() {
        let text = "name: x\nmatch:\n  signal: down\n  labels:\n    tier: db\n    tier: web\nclassify: noise\nsteps:\n  - {action: notify}\n";
        let error = from_yaml::<Runbook>(text).unwrap_err();
        assert_eq!(error.location().map(|l| l.line()), Some(6), "{error}");
        assert!(
            error.to_string().contains("label `tier` is declared twice"),
            "{error}"
        );
        let text = text.replace("    tier: web\n", "    zone: a\n");
        assert_eq!(from_yaml::<Runbook>(&text).unwrap().matcher.labels.len(), 2);
    }

    /// A field given twice in one section is refused (serde marks the section's first line).
    #[test]
    fn a_duplicate_field_is_refused() {
        let text = format!("{GOOD}    branch: a\n    branch: b\n");
        let error = error_of(&text);
        assert!(error.contains("duplicate field `branch`"), "{error}");
    }

    /// An action budget needs a window to count in.
    #[test]
    fn an_action_budget_without_a_window_is_refused() {
        let text = format!("{GOOD}incidents: {{actions_window_secs: 0}}\n");
        let ops: OpsFile = from_yaml(&text).unwrap();
        let error = validate_ops(&ops, &text).unwrap_err();
        assert!(error.contains("incidents.actions_window_secs"), "{error}");
        assert!(error.starts_with("line 8:"), "{error}");
        let off = format!(
            "{GOOD}incidents: {{actions_window_secs: 0, actions_max: 0, actions_cost_max: 0}}\n"
        );
        let ops: OpsFile = from_yaml(&off).unwrap();
        validate_ops(&ops, &off).unwrap();
    }

    /// The walk skips comments and longer names that end like the app's.
    #[test]
    fn line_of_path_skips_comments_and_longer_names() {
        let text = "# apps: web: here\napps:\n  myweb:\n    repo: /a\n  web:\n    repo: /b\n";
        assert_eq!(line_of_path(text, &["apps:", "web:", "repo:"]), 6);
        assert_eq!(line_of_path(text, &["apps:", "nope:", "repo:"]), 2);
    }

    #[test]
    fn url_host_port_reads_defaults_and_brackets() {
        assert_eq!(url_host_port("http://a.b/x"), Some(("a.b".into(), 80)));
        assert_eq!(
            url_host_port("https://u@a.b:8443"),
            Some(("a.b".into(), 8443))
        );
        assert_eq!(
            url_host_port("http://[::1]:9/"),
            Some((THIS_HOST.into(), 9))
        );
        assert_eq!(url_host_port("ftp://a"), None);
    }

    #[test]
    fn scale_is_always_gated() {
        let step = RunbookStep {
            action: StepAction::Scale,
            gated: false,
            seconds: None,
            count: Some(2),
            message: None,
        };
        assert!(step.needs_approval());
    }
}
