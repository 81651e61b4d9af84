//! `glitchlab ledger balance|history|audit`: reads the ledger of a running service over HTTP
//! (the shared client context). People read amounts in tokens with decimals; `--json` keeps the
//! service's integers (micro-tokens).

use serde_json::Value;

use crate::app::cli::client::{status_style, styled, tokens, CliError, Client, EXIT_OK};
use crate::app::cli::{print_json, LedgerArgs, LedgerCommand};
use crate::model::ledger::validate_id;

/// Runs one `ledger` subcommand; `Ok` is the exit code.
pub async fn run(args: LedgerArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    match args.command {
        LedgerCommand::Balance { account } => {
            let account = checked(&account)?;
            let body = client
                .get(&format!("/v1/ledger/accounts/{account}"))
                .await?;
            if client.json {
                print_json(&body)?;
            } else {
                print_balance(&body);
            }
        }
        LedgerCommand::History {
            account,
            limit,
            cursor,
        } => {
            let account = checked(&account)?;
            let path = format!("/v1/ledger/accounts/{account}/transfers");
            let pairs = [("limit", Some(limit.to_string())), ("cursor", cursor)];
            let page = client.get_with(&path, &pairs).await?;
            if client.json {
                print_json(&page)?;
            } else {
                print_history(account, &page);
            }
        }
        LedgerCommand::Audit => {
            let audit = client.get("/v1/ledger/audit").await?;
            if client.json {
                print_json(&audit)?;
            } else {
                print_audit(&audit);
            }
            if audit["balanced"].as_bool() != Some(true) {
                return Err(CliError::Failed(
                    "the audit found the books unbalanced (see violations)".into(),
                ));
            }
        }
    }
    Ok(EXIT_OK)
}

fn checked(account: &str) -> Result<&str, CliError> {
    validate_id("account", account).map_err(|error| CliError::Usage(error.to_string()))?;
    Ok(account)
}

/// An account in tokens: balance, available, and the four totals.
fn print_balance(account: &Value) {
    anstream::println!("account    {}", account["id"].as_str().unwrap_or("-"));
    anstream::println!("kind       {}", account["kind"].as_str().unwrap_or("-"));
    anstream::println!("balance    {} tokens", tokens(&account["balance"]));
    anstream::println!("available  {} tokens", tokens(&account["available"]));
    anstream::println!(
        "posted     {} in, {} out",
        tokens(&account["credits_posted"]),
        tokens(&account["debits_posted"])
    );
    anstream::println!(
        "pending    {} in, {} out",
        tokens(&account["credits_pending"]),
        tokens(&account["debits_pending"])
    );
}

/// Whether the books balance, what was checked, and each violation.
fn print_audit(audit: &Value) {
    let balanced = audit["balanced"].as_bool() == Some(true);
    let word = if balanced { "balanced" } else { "unbalanced" };
    let style = status_style(if balanced { "done" } else { "failed" });
    anstream::println!(
        "{}: {} accounts and {} transfers checked; {} tokens debited, {} credited",
        styled(word, style),
        audit["accounts_checked"],
        audit["transfers_checked"],
        tokens(&audit["total_debits"]),
        tokens(&audit["total_credits"])
    );
    for violation in audit["violations"].as_array().into_iter().flatten() {
        anstream::println!("  {violation}");
    }
}

/// One line per transfer: when, id, direction (`-` paid, `+` received), amount in tokens,
/// status, counterparty.
fn print_history(account: &str, page: &Value) {
    let empty = Vec::new();
    let transfers = page["transfers"].as_array().unwrap_or(&empty);
    anstream::println!(
        "{:<20} {:<40} {:>20} {:<9} counterparty",
        "created_at",
        "id",
        "tokens",
        "status"
    );
    for transfer in transfers {
        let paid = transfer["debit_account"] == account;
        let (sign, counterparty) = if paid {
            ("-", &transfer["credit_account"])
        } else {
            ("+", &transfer["debit_account"])
        };
        // What moved, once settled; what is reserved (or was asked), before.
        let amount = if transfer["status"] == "posted" {
            &transfer["posted_amount"]
        } else {
            &transfer["amount"]
        };
        let created = transfer["created_at"].as_str().unwrap_or_default();
        let status = transfer["status"].as_str().unwrap_or_default();
        anstream::println!(
            "{:<20} {:<40} {:>20} {} {}",
            created.get(..19).unwrap_or(created),
            transfer["id"].as_str().unwrap_or_default(),
            format!("{sign}{}", tokens(amount)),
            styled(&format!("{status:<9}"), status_style(status)),
            counterparty.as_str().unwrap_or_default(),
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        anstream::println!("more: --cursor {cursor}");
    }
}
