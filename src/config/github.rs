//! `[github]`: how glitchlab speaks to GitHub for `delivery: pull_request` (docs/github.md).
//!
//! Authentication is a token (`token_env`) or a GitHub App (`app_id`, `private_key_file`,
//! `installation_id`); the secrets are read when they are used, never stored, and registered
//! with the redactor at start ([`GithubConfig::secret_env_names`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::model::pull_request::NoChecksPolicy;

/// The longest wait the config may name for checks: longer is a typo, not a policy.
const CHECKS_DEADLINE_MAX_SECS: u64 = 7 * 24 * 3600;

/// The GitHub section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    /// The REST API's root (tests point it at a fake).
    pub api_url: String,
    /// The environment variable holding a token (classic or fine-grained).
    pub token_env: Option<String>,
    /// A GitHub App's id (with `private_key_file` and `installation_id`).
    pub app_id: Option<u64>,
    /// The App's private key (PEM, PKCS#1 as GitHub hands it out, or PKCS#8).
    pub private_key_file: Option<PathBuf>,
    /// The App's installation on the repositories' owner.
    pub installation_id: Option<u64>,
    /// The environment variable holding the webhook secret (`X-Hub-Signature-256`); unset:
    /// `POST /v1/github/webhook` refuses everything.
    pub webhook_secret_env: Option<String>,
    /// How long a head's checks may stay unreported before the wait ends `CHECKS_STALLED`.
    pub checks_deadline_secs: u64,
    /// What a head with no required checks and no check at all waits for.
    pub no_checks: NoChecksPolicy,
    /// The `wait_secs` of `no_checks`.
    pub no_checks_wait_secs: u64,
    /// How often a waiting delivery polls (a webhook wakes it at once).
    pub poll_ms: u64,
    /// Each API call's timeout.
    pub request_timeout_secs: u64,
    /// Retries of one call (rate limits, 5xx, timeouts) before the step fails.
    pub retries_max: u32,
    /// The least time between two writes to one host (GitHub asks for about a second).
    pub write_spacing_ms: u64,
    /// The least wait after a secondary rate limit without `retry-after` (GitHub: 60 s).
    pub secondary_wait_min_secs: u64,
    /// An App's installation token is renewed this long before it expires.
    pub token_refresh_margin_secs: u64,
    /// Times a head may move under a merge (`409`) and be verified again.
    pub head_moves_max: u32,
    /// `[[github.intake]]`: repositories whose labelled issues become tasks (docs/github.md,
    /// "Issues").
    pub intake: Vec<IntakeRepo>,
}

/// The label that asks glitchlab to take an issue, unless an entry names another.
const INTAKE_LABEL_DEFAULT: &str = "glitchlab";
/// How often an intake repository is polled by default (webhooks act at once).
const INTAKE_POLL_SECS_DEFAULT: u64 = 60;
/// Open tasks per intake repository by default.
const INTAKE_OPEN_TASKS_DEFAULT: usize = 3;
/// Open tasks per intake repository at most: more is a typo, not a policy.
const INTAKE_OPEN_TASKS_MAX: usize = 100;

/// One `[[github.intake]]` entry: issues of `repo` labelled `label` become tasks delivered as pull
/// requests on that repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeRepo {
    /// `owner/name` on GitHub.
    pub repo: String,
    /// The remote glitchlab clones and pushes (the task's `repo`).
    pub git_url: String,
    /// The label that starts a task.
    #[serde(default = "intake_label_default")]
    pub label: String,
    /// The tasks' verify command.
    pub verify: String,
    /// The ledger account that pays (default `ledger.local_account`).
    #[serde(default)]
    pub account: Option<String>,
    /// The tasks' kind (pipeline template; default `feature`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Tasks of this repository open at once; further issues wait in order.
    #[serde(default = "intake_open_tasks_default")]
    pub max_open_tasks: usize,
    /// Seconds between two polls of the repository's labelled issues.
    #[serde(default = "intake_poll_secs_default")]
    pub poll_secs: u64,
    /// The tasks' engines (tests and demos use `shell`; default: each persona's own).
    #[serde(default)]
    pub engines: Option<crate::model::task::EngineOverrides>,
}

fn intake_label_default() -> String {
    INTAKE_LABEL_DEFAULT.into()
}

fn intake_poll_secs_default() -> u64 {
    INTAKE_POLL_SECS_DEFAULT
}

fn intake_open_tasks_default() -> usize {
    INTAKE_OPEN_TASKS_DEFAULT
}

impl IntakeRepo {
    /// The entry's rules; the message names the entry.
    fn validate(&self, index: usize) -> Result<(), String> {
        let owner_name = self.repo.split_once('/').is_some_and(|(owner, name)| {
            !owner.is_empty() && !name.is_empty() && !name.contains('/')
        });
        let checks = [
            (!owner_name, "repo must be `owner/name`"),
            (self.git_url.trim().is_empty(), "git_url must be set"),
            (self.label.trim().is_empty(), "label must not be empty"),
            (self.verify.trim().is_empty(), "verify must not be empty"),
            (
                !(1..=INTAKE_OPEN_TASKS_MAX).contains(&self.max_open_tasks),
                "max_open_tasks must be between 1 and 100",
            ),
            (self.poll_secs == 0, "poll_secs must be at least 1"),
        ];
        match checks.iter().find(|(broken, _)| *broken) {
            Some((_, reason)) => Err(format!("github.intake[{index}] ({}): {reason}", self.repo)),
            None => Ok(()),
        }
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            token_env: None,
            app_id: None,
            private_key_file: None,
            installation_id: None,
            webhook_secret_env: None,
            checks_deadline_secs: 3600,
            no_checks: NoChecksPolicy::WaitSecs,
            no_checks_wait_secs: 300,
            poll_ms: 10_000,
            request_timeout_secs: 30,
            retries_max: 6,
            write_spacing_ms: 1000,
            secondary_wait_min_secs: 60,
            token_refresh_margin_secs: 300,
            head_moves_max: 5,
            intake: Vec::new(),
        }
    }
}

impl GithubConfig {
    /// Each call's timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Whether any authentication is configured (a pull-request task needs one).
    pub fn has_auth(&self) -> bool {
        self.token_env.is_some() || self.app_id.is_some()
    }

    /// The environment variables whose values are secrets: redacted everywhere.
    pub fn secret_env_names(&self) -> Vec<String> {
        [&self.token_env, &self.webhook_secret_env]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The section's rules, as one message per broken rule.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let app_keys = [
            self.app_id.is_some(),
            self.private_key_file.is_some(),
            self.installation_id.is_some(),
        ];
        let checks = [
            (
                !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://")),
                "github.api_url must be an http(s) URL",
            ),
            (
                app_keys.iter().any(|set| *set) && !app_keys.iter().all(|set| *set),
                "github: an App needs app_id, private_key_file and installation_id",
            ),
            (
                self.token_env.is_some() && self.app_id.is_some(),
                "github: token_env and an App are exclusive",
            ),
            (
                !(1..=CHECKS_DEADLINE_MAX_SECS).contains(&self.checks_deadline_secs),
                "github.checks_deadline_secs must be between 1 and 604800",
            ),
            (
                self.request_timeout_secs == 0 || self.poll_ms == 0,
                "github.request_timeout_secs and poll_ms must be at least 1",
            ),
            (
                self.retries_max > 20,
                "github.retries_max must be at most 20",
            ),
        ];
        if let Some((_, reason)) = checks.iter().find(|(broken, _)| *broken) {
            return Err((*reason).to_owned());
        }
        for (index, entry) in self.intake.iter().enumerate() {
            entry.validate(index)?;
            let twin = self.intake[..index]
                .iter()
                .any(|other| other.repo.eq_ignore_ascii_case(&entry.repo));
            if twin {
                return Err(format!(
                    "github.intake[{index}] ({}): the repository has an entry already",
                    entry.repo
                ));
            }
        }
        if !self.intake.is_empty() && !self.has_auth() {
            return Err("github.intake needs token_env or an App".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_needs_all_three_keys_and_excludes_a_token() {
        let mut config = GithubConfig {
            app_id: Some(1),
            ..GithubConfig::default()
        };
        assert!(config.validate().is_err());
        config.private_key_file = Some("k.pem".into());
        config.installation_id = Some(2);
        assert!(config.validate().is_ok());
        config.token_env = Some("T".into());
        assert!(config.validate().is_err());
        assert!(GithubConfig::default().validate().is_ok());
    }

    #[test]
    fn an_intake_entry_is_validated_by_name() {
        let entry = |repo: &str, open: usize| IntakeRepo {
            repo: repo.into(),
            git_url: "https://github.com/acme/widgets.git".into(),
            label: intake_label_default(),
            verify: "true".into(),
            account: None,
            kind: None,
            max_open_tasks: open,
            poll_secs: 60,
            engines: None,
        };
        let mut config = GithubConfig {
            token_env: Some("T".into()),
            intake: vec![entry("acme/widgets", 3)],
            ..GithubConfig::default()
        };
        assert!(config.validate().is_ok());
        config.intake.push(entry("acme/gadgets", 0));
        let error = config.validate().unwrap_err();
        assert!(error.contains("github.intake[1] (acme/gadgets)"), "{error}");
        assert!(error.contains("max_open_tasks"), "{error}");
        config.intake[1] = entry("nope", 3);
        assert!(config.validate().unwrap_err().contains("owner/name"));
        config.intake[1] = entry("ACME/widgets", 3);
        assert!(config.validate().unwrap_err().contains("an entry already"));
        config.intake.pop();
        config.token_env = None;
        assert!(config.validate().unwrap_err().contains("token_env"));
    }

    #[test]
    fn an_intake_entry_parses_with_its_defaults() {
        let config: GithubConfig = toml::from_str(
            "token_env = \"T\"\n[[intake]]\nrepo = \"acme/widgets\"\ngit_url = \"x\"\nverify = \"true\"\n",
        )
        .unwrap();
        let entry = &config.intake[0];
        assert_eq!(entry.label, "glitchlab");
        assert_eq!(entry.poll_secs, 60);
        assert_eq!(entry.max_open_tasks, 3);
    }
}
