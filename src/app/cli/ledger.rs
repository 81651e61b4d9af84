//! `glitchlab ledger balance|history|audit`: reads the ledger of a running service over HTTP.
//! Every request has a timeout; an unreachable service or an error answer is a clear message and
//! a non-zero exit.

use std::time::Duration;

use serde_json::Value;

use crate::app::cli::{call, http_client, print_json, LedgerArgs, LedgerCommand};
use crate::model::ledger::validate_id;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one `ledger` subcommand; `Err` is the message to print before exiting 1.
pub async fn run(args: LedgerArgs) -> Result<(), String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = args.url.trim_end_matches('/');
    match args.command {
        LedgerCommand::Balance { account } => {
            let account = checked(&account)?;
            let body = get(&client, &format!("{base}/v1/ledger/accounts/{account}")).await?;
            print_json(&body)
        }
        LedgerCommand::History {
            account,
            limit,
            cursor,
            json,
        } => {
            let account = checked(&account)?;
            let mut url = format!("{base}/v1/ledger/accounts/{account}/transfers?limit={limit}");
            if let Some(cursor) = cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page = get(&client, &url).await?;
            if json {
                print_json(&page)
            } else {
                print_history(account, &page);
                Ok(())
            }
        }
        LedgerCommand::Audit => {
            let audit = get(&client, &format!("{base}/v1/ledger/audit")).await?;
            print_json(&audit)?;
            match audit["balanced"].as_bool() {
                Some(true) => Ok(()),
                _ => Err("the audit found the books unbalanced (see violations)".into()),
            }
        }
    }
}

fn checked(account: &str) -> Result<&str, String> {
    validate_id("account", account).map_err(|error| error.to_string())?;
    Ok(account)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    call(client.get(url), url).await
}

/// One line per transfer: when, id, direction (`-` paid, `+` received), amount, status,
/// counterparty.
fn print_history(account: &str, page: &Value) {
    let empty = Vec::new();
    let transfers = page["transfers"].as_array().unwrap_or(&empty);
    println!(
        "{:<20} {:<40} {:>20} {:<9} counterparty",
        "created_at", "id", "amount", "status"
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
        println!(
            "{:<20} {:<40} {:>20} {:<9} {}",
            created.get(..19).unwrap_or(created),
            transfer["id"].as_str().unwrap_or_default(),
            format!("{sign}{amount}"),
            transfer["status"].as_str().unwrap_or_default(),
            counterparty.as_str().unwrap_or_default(),
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
}
