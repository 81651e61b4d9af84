//! The ops org's machinery, below the three Uplink actors: how a deploy request is admitted
//! ([`admission`]), how releases are put on a target
//! ([`provider`]), how health and checks are probed ([`probe`]), how signals become incidents
//! ([`incident`]), how a deploy runs ([`deploy`]) and what ops work costs ([`billing`]). What
//! `ops.yaml` says and what ops records are plain data in [`crate::model::ops`].
//!
//! Nothing here holds actor state: the actors own the decisions (queues, locks, dedup) and run
//! the functions here in spawned jobs.

pub(crate) mod admission;
pub(crate) mod billing;
pub(crate) mod deploy;
pub(crate) mod incident;
pub(crate) mod probe;
pub(crate) mod provider;
pub(crate) mod renamed;

use crate::model::ops::error::OpsError;

/// Bytes of a command's stdout and of its stderr kept from an ops command.
pub(crate) const OUTPUT_BYTES_MAX: usize = 16 * 1024;
/// Bytes of command output copied into a record's detail.
pub(crate) const DETAIL_BYTES_MAX: usize = 2 * 1024;

/// Commands the Uplink personas never run, whatever their persona file says: they would read or
/// change secrets, or open a shell on a production machine.
pub(crate) const ALWAYS_DENIED: [&str; 4] =
    ["fly secrets", "fly ssh", "flyctl secrets", "flyctl ssh"];

/// Refuses a command line that contains a denied command (as whole words, in order).
pub(crate) fn check_allowed(command_line: &str, deny: &[String]) -> Result<(), OpsError> {
    let words: Vec<&str> = command_line
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
        .filter(|w| !w.is_empty())
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .collect();
    let rules = ALWAYS_DENIED
        .iter()
        .map(|rule| (*rule).to_owned())
        .chain(deny.iter().cloned());
    for rule in rules {
        let rule_words: Vec<&str> = rule.split_whitespace().collect();
        if !rule_words.is_empty() && words.windows(rule_words.len()).any(|w| w == rule_words) {
            return Err(OpsError::Denied {
                rule,
                command: command_line.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fly_secrets_and_ssh_are_denied() {
        assert!(check_allowed("fly secrets list --app x", &[]).is_err());
        assert!(check_allowed("/usr/local/bin/fly ssh console", &[]).is_err());
        assert!(check_allowed("true && flyctl secrets set A=b", &[]).is_err());
        assert!(check_allowed("fly deploy --strategy rolling", &[]).is_ok());
        assert!(check_allowed("rm -rf /", &["rm -rf".into()]).is_err());
    }
}
