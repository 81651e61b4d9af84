//! The one client context every CLI command against a running service shares, so they all
//! behave the same: the URL from `--url` or `GLITCHLAB_URL`, the token from `GLITCHLAB_TOKEN`,
//! one request timeout, `--json` meaning "the service's JSON and nothing else on stdout", the
//! exit codes, id resolution (full id, the web page's 8-character short id, any unique prefix)
//! and money shown in one unit.

use std::time::Duration;

use serde_json::Value;

/// Exit code of a command that succeeded (for `--wait`/`watch`: the task is `done`).
pub const EXIT_OK: u8 = 0;
/// Exit code of an unreachable service, an error answer or a failed local step.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a task that ended `failed`.
pub const EXIT_FAILED: u8 = 2;
/// Exit code of a task that ended `dead_letter`.
pub const EXIT_DEAD_LETTER: u8 = 3;
/// Exit code of a task that ended `cancelled`.
pub const EXIT_CANCELLED: u8 = 4;
/// Exit code of a usage error (clap's and ours: an unknown flag or value, an ambiguous id), as
/// sysexits' `EX_USAGE`, so it never reads as a task outcome.
pub const EXIT_USAGE: u8 = 64;

/// Seconds one request may take when `--timeout` is not given.
const TIMEOUT_SECS_DEFAULT: u64 = 30;
/// Pages of a list read at most to resolve an id prefix (a bounded look-up).
const RESOLVE_PAGES_MAX: usize = 10;
/// Records per page asked for while resolving an id (the service clamps it to its own cap).
const RESOLVE_PAGE_LIMIT: usize = 200;
/// Candidates named at most in an "ambiguous id" message.
const AMBIGUOUS_SHOWN_MAX: usize = 10;
/// Length of a full UUID in its text form: such an id is used as it is.
const UUID_TEXT_LEN: usize = 36;
/// Micro-tokens per token: the ledger counts micro-tokens, people read tokens.
pub const MICROS_PER_TOKEN: i128 = 1_000_000;

/// Flags every command against a running service takes (before or after its subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the running service.
    #[arg(
        long,
        global = true,
        env = "GLITCHLAB_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    pub url: String,
    /// Print the service's JSON, and nothing else, on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds one request may take, connecting included.
    #[arg(long, global = true, env = "GLITCHLAB_TIMEOUT", default_value_t = TIMEOUT_SECS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Why a CLI command stopped: a usage error (exit 64) or a failure (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The command was used wrongly: a bad value, an ambiguous id.
    #[error("{0}")]
    Usage(String),
    /// The service was unreachable or refused, or a local step failed.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code this error ends the command with.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_ERROR,
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Failed(message)
    }
}

/// A connection to a running service: base URL, bounded HTTP client with the bearer token, and
/// whether output is JSON.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `--json`: the service's JSON only on stdout.
    pub json: bool,
}

impl Client {
    /// The context of one command; a URL that does not parse is a usage error.
    pub fn new(args: &ClientArgs) -> Result<Client, CliError> {
        let base = args.url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base)
            .map_err(|error| CliError::Usage(format!("bad --url `{}`: {error}", args.url)))?;
        let http = super::http_client(Duration::from_secs(args.timeout))?;
        Ok(Client {
            http,
            base,
            json: args.json,
        })
    }

    /// The full URL of a service path (`/v1/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client (for streams).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` with query pairs (those with a value); the JSON answer.
    pub async fn get_with(
        &self,
        path: &str,
        pairs: &[(&str, Option<String>)],
    ) -> Result<Value, CliError> {
        let mut url = reqwest::Url::parse(&self.url(path))
            .map_err(|error| CliError::Usage(format!("bad URL {}: {error}", self.url(path))))?;
        for (key, value) in pairs {
            if let Some(value) = value {
                url.query_pairs_mut().append_pair(key, value);
            }
        }
        Ok(super::call(self.http.get(url.clone()), url.as_str()).await?)
    }

    /// `GET path`; the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        Ok(super::call(self.http.get(&url), &url).await?)
    }

    /// `POST path` with a JSON body; the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let url = self.url(path);
        Ok(super::call(self.http.post(&url).json(body), &url).await?)
    }

    /// `DELETE path`; the JSON answer.
    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        Ok(super::call(self.http.delete(&url), &url).await?)
    }

    /// The full id `given` stands for among the records of `collection` (`tasks`, `deploys`,
    /// `incidents`): a full UUID as it is; otherwise the one record whose id starts with it or
    /// ends with it (the web page's short id is the last 8 characters), looked up in at most
    /// [`RESOLVE_PAGES_MAX`] pages. Two or more is a usage error naming them; none leaves the id
    /// as given, for the service to answer its own "not found".
    pub async fn resolve(&self, collection: &str, given: &str) -> Result<String, CliError> {
        let wanted = given.trim().to_ascii_lowercase();
        if wanted.is_empty() {
            return Err(CliError::Usage("an id cannot be empty".into()));
        }
        if wanted.len() == UUID_TEXT_LEN && uuid::Uuid::parse_str(&wanted).is_ok() {
            return Ok(wanted);
        }
        let ids = self.list_ids(collection).await?;
        let matches: Vec<&String> = ids
            .iter()
            .filter(|id| id.starts_with(&wanted) || id.ends_with(&wanted))
            .collect();
        match matches.as_slice() {
            [] => Ok(given.to_owned()),
            [one] => Ok((*one).clone()),
            many => {
                let shown: Vec<&str> = many
                    .iter()
                    .take(AMBIGUOUS_SHOWN_MAX)
                    .map(|id| id.as_str())
                    .collect();
                let more = many.len().saturating_sub(AMBIGUOUS_SHOWN_MAX);
                let tail = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                Err(CliError::Usage(format!(
                    "`{given}` is ambiguous: it matches {} {collection}: {}{tail}",
                    many.len(),
                    shown.join(", ")
                )))
            }
        }
    }

    /// The ids of the newest records of `collection`, following `next_cursor` for at most
    /// [`RESOLVE_PAGES_MAX`] pages.
    async fn list_ids(&self, collection: &str) -> Result<Vec<String>, CliError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..RESOLVE_PAGES_MAX {
            // Tasks' pages default to the service's own cap (a larger `limit` is refused there).
            let limit = (collection != "tasks").then(|| RESOLVE_PAGE_LIMIT.to_string());
            let pairs = [("limit", limit), ("cursor", cursor.clone())];
            let page = self.get_with(&format!("/v1/{collection}"), &pairs).await?;
            let records = page[collection].as_array().into_iter().flatten();
            ids.extend(records.filter_map(|r| r["id"].as_str().map(str::to_owned)));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        Ok(ids)
    }
}

/// A micro-token amount as tokens for people: six decimals at most, trailing zeros dropped but
/// two kept (`3800` → `0.0038`, `5000000` → `5.00`); a non-integer is shown as it is.
pub fn tokens(micros: &Value) -> String {
    let Some(value) = micros
        .as_i64()
        .map(i128::from)
        .or_else(|| micros.as_u64().map(i128::from))
    else {
        return if micros.is_null() {
            "-".into()
        } else {
            micros.to_string()
        };
    };
    let sign = if value < 0 { "-" } else { "" };
    let magnitude = value.unsigned_abs();
    let whole = magnitude / MICROS_PER_TOKEN.unsigned_abs();
    let fraction = format!("{:06}", magnitude % MICROS_PER_TOKEN.unsigned_abs());
    let trimmed = fraction.trim_end_matches('0');
    let shown = if trimmed.len() < 2 {
        &fraction[..2]
    } else {
        trimmed
    };
    format!("{sign}{whole}.{shown}")
}

/// Whether stdout is a terminal (a progress line and colour are for people only).
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// The style of a status word: green for a good end, red for a bad one, yellow for waiting on
/// someone. `anstream` drops it when stdout is not a terminal or `NO_COLOR` is set.
pub fn status_style(status: &str) -> anstyle::Style {
    use anstyle::{AnsiColor, Style};
    let colour = match status {
        "done" | "healthy" | "resolved" | "posted" | "landed" => AnsiColor::Green,
        "failed" | "dead_letter" | "rolled_back" | "rejected" | "needs_human" | "voided" => {
            AnsiColor::Red
        }
        "awaiting_approval" | "blocked" | "cancelled" | "pending" | "acknowledged" => {
            AnsiColor::Yellow
        }
        "running" | "queued" | "open" => AnsiColor::Cyan,
        _ => return Style::new(),
    };
    Style::new().fg_color(Some(colour.into())).bold()
}

/// `text` in `style` (the escapes are dropped later when stdout is not a terminal).
pub fn styled(text: &str, style: anstyle::Style) -> String {
    format!("{style}{text}{style:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn micro_tokens_read_as_tokens_with_decimals() {
        assert_eq!(tokens(&json!(3800)), "0.0038");
        assert_eq!(tokens(&json!(5_000_000)), "5.00");
        assert_eq!(tokens(&json!(1_000_000_000)), "1000.00");
        assert_eq!(tokens(&json!(-1_234_567)), "-1.234567");
        assert_eq!(tokens(&json!(1_500_000)), "1.50");
        assert_eq!(tokens(&json!(0)), "0.00");
        assert_eq!(tokens(&Value::Null), "-");
    }

    #[test]
    fn usage_errors_and_failures_have_distinct_exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 64);
        assert_eq!(CliError::from("x".to_owned()).exit_code(), 1);
        let codes = [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_FAILED,
            EXIT_DEAD_LETTER,
            EXIT_CANCELLED,
            EXIT_USAGE,
        ];
        let distinct: std::collections::BTreeSet<u8> = codes.into_iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }
}
