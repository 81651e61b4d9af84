//! Who may do what: roles, the permissions they grant, and a token's record and scopes. Plain
//! data; the ingress (`app::http::auth`) checks them, the store keeps the records.
//!
//! The matrix, each role adding to the one before it:
//!
//! | Role | Adds |
//! |---|---|
//! | `viewer` | every read and every event stream |
//! | `submitter` | submit tasks; cancel and retry its own tasks |
//! | `approver` | approve and reject tasks, deploys and incident steps |
//! | `operator` | request deploys, post alerts, cancel and retry any task |
//! | `admin` | tokens, mint, accounts, transfers; no scope limits |

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest token name.
pub(crate) const TOKEN_NAME_BYTES_MAX: usize = 64;

/// A token's role: what its holder may do. Ordered: each role may do all that the ones before it
/// may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Reads and streams.
    Viewer,
    /// + submits tasks, cancels and retries its own.
    Submitter,
    /// + approves and rejects tasks, deploys and incident steps.
    Approver,
    /// + deploys, alerts, acts on any task.
    Operator,
    /// + tokens, mint, accounts, transfers; no scope limits.
    Admin,
}

impl Role {
    /// Whether this role grants `permission`.
    pub(crate) fn allows(self, permission: Permission) -> bool {
        self >= permission.least_role()
    }

    /// The role's name as the API spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// What a route needs. Each has the least role that grants it ([`Permission::least_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Any read, and the event streams.
    Read,
    /// `POST /v1/tasks`.
    Submit,
    /// Cancel or retry a task the token submitted.
    ActOnOwnTasks,
    /// Approve or reject a task, a deploy or an incident's gated step.
    Approve,
    /// Cancel or retry anyone's task.
    ActOnAnyTask,
    /// Request a deploy.
    Deploy,
    /// Post alerts (the Alertmanager webhook).
    Alert,
    /// Create, list and revoke tokens.
    ManageTokens,
    /// Mint tokens into an account.
    Mint,
    /// Open ledger accounts.
    ManageAccounts,
    /// Move money between accounts (transfers, post, void).
    MoveMoney,
}

impl Permission {
    /// The least role that grants it.
    pub(crate) fn least_role(self) -> Role {
        match self {
            Permission::Read => Role::Viewer,
            Permission::Submit | Permission::ActOnOwnTasks => Role::Submitter,
            Permission::Approve => Role::Approver,
            Permission::ActOnAnyTask | Permission::Deploy | Permission::Alert => Role::Operator,
            Permission::ManageTokens
            | Permission::Mint
            | Permission::ManageAccounts
            | Permission::MoveMoney => Role::Admin,
        }
    }

    /// The permission's name, as a refusal names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Submit => "submit",
            Permission::ActOnOwnTasks => "act_on_own_tasks",
            Permission::Approve => "approve",
            Permission::ActOnAnyTask => "act_on_any_task",
            Permission::Deploy => "deploy",
            Permission::Alert => "alert",
            Permission::ManageTokens => "manage_tokens",
            Permission::Mint => "mint",
            Permission::ManageAccounts => "manage_accounts",
            Permission::MoveMoney => "move_money",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A token as stored: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    /// Unique name; what events and the audit log call its holder.
    pub(crate) name: String,
    /// What it may do.
    pub(crate) role: Role,
    /// Hex SHA-256 of the secret.
    pub(crate) secret_sha256: String,
    /// Accounts its tasks may charge (empty: `user:<name>`; admin: any).
    pub(crate) accounts: Vec<String>,
    /// Globs a task's repository must match (empty: any).
    pub(crate) repos: Vec<String>,
    /// Whether its tasks may choose engines other than the persona files'.
    pub(crate) engines: bool,
    /// When it was made.
    pub(crate) created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Who holds it, as the ingress hands it to handlers.
    pub(crate) fn principal(&self) -> Principal {
        let accounts = if self.accounts.is_empty() {
            vec![format!("user:{}", self.name)]
        } else {
            self.accounts.clone()
        };
        Principal {
            name: self.name.clone(),
            role: self.role,
            accounts,
            repos: self.repos.clone(),
            engines: self.engines,
        }
    }

    /// Whether it has expired at `now`.
    pub(crate) fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The caller of a request, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The token's name.
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
    /// Accounts it may charge.
    pub(crate) accounts: Vec<String>,
    /// Repository globs it may use (empty: any).
    pub(crate) repos: Vec<String>,
    /// Whether it may override persona engines.
    pub(crate) engines: bool,
}

impl Principal {
    /// The caller when `[server] auth = "off"` (loopback only): an admin named `anonymous`.
    pub(crate) fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            accounts: Vec::new(),
            repos: Vec::new(),
            engines: true,
        }
    }

    /// Whether it may `permission`.
    pub(crate) fn may(&self, permission: Permission) -> bool {
        self.role.allows(permission)
    }

    /// Whether its tasks may charge `account`: an admin any, others only their own list.
    pub(crate) fn may_charge(&self, account: &str) -> bool {
        self.role == Role::Admin || self.accounts.iter().any(|a| a == account)
    }

    /// The account its tasks charge when they name none (`None`: the service's default).
    pub(crate) fn default_account(&self) -> Option<&str> {
        match self.role {
            Role::Admin => None,
            _ => self.accounts.first().map(String::as_str),
        }
    }

    /// Whether its tasks may override persona engines.
    pub(crate) fn may_choose_engines(&self) -> bool {
        self.role == Role::Admin || self.engines
    }
}

/// One line of the audit log: a change someone made through the ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the log (increasing, not contiguous).
    pub seq: u64,
    /// When it was answered.
    pub at: DateTime<Utc>,
    /// The token's name (`anonymous` with `auth = "off"`).
    pub principal: String,
    /// The request's method.
    pub method: String,
    /// The route pattern (`/v1/tasks/{id}/approve`).
    pub route: String,
    /// The path as asked (`/v1/tasks/0193.../approve`).
    pub path: String,
    /// The answer's status.
    pub status: u16,
}

/// Checks a token name: short, and from the alphabet of ids (`[a-z0-9._-]`, starting with a
/// letter or digit), since it is a path segment and a label in the audit log.
pub(crate) fn validate_token_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let all_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > TOKEN_NAME_BYTES_MAX || !first_ok || !all_ok {
        return Err(format!(
            "name must be 1..={TOKEN_NAME_BYTES_MAX} bytes of a-z, 0-9, `.`, `_`, `-`, \
             starting with a letter or digit; got `{name}`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_adds_to_the_one_before() {
        use Permission::*;
        let all = [
            Read,
            Submit,
            ActOnOwnTasks,
            Approve,
            ActOnAnyTask,
            Deploy,
            Alert,
            ManageTokens,
            Mint,
            ManageAccounts,
            MoveMoney,
        ];
        let granted = |role: Role| all.iter().filter(|p| role.allows(**p)).count();
        assert_eq!(granted(Role::Viewer), 1);
        assert_eq!(granted(Role::Submitter), 3);
        assert_eq!(granted(Role::Approver), 4);
        assert_eq!(granted(Role::Operator), 7);
        assert_eq!(granted(Role::Admin), all.len());
        assert!(!Role::Submitter.allows(Mint));
        assert!(!Role::Approver.allows(Deploy));
        assert!(Role::Operator.allows(Alert));
    }

    #[test]
    fn a_token_without_accounts_charges_its_own_user_account() {
        let record = TokenRecord {
            name: "ci".into(),
            role: Role::Submitter,
            secret_sha256: String::new(),
            accounts: Vec::new(),
            repos: Vec::new(),
            engines: false,
            created_at: Utc::now(),
            expires_at: None,
        };
        let principal = record.principal();
        assert_eq!(principal.default_account(), Some("user:ci"));
        assert!(principal.may_charge("user:ci"));
        assert!(!principal.may_charge("user:local"));
        assert!(!principal.may_choose_engines());
        assert!(Principal::anonymous().may_charge("user:anyone"));
    }

    #[test]
    fn token_names_are_path_segments() {
        assert!(validate_token_name("ci-bot.2").is_ok());
        for bad in ["", "Admin", "a/b", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_token_name(bad).is_err(), "{bad}");
        }
    }
}
