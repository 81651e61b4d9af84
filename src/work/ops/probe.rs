//! Probing: an app's health (HTTP with retries, or the provider's status) and the maintenance
//! checks Uplink-Watch runs (`http`, `tls_expiry`, `process`, `command`, `cost`). All read-only,
//! each with a timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::provider::{self, ProviderContext};
use crate::model::ledger::{agent_account, REVENUE_ACCOUNT};
use crate::model::ops::records::{CheckResult, HealthResult, Probe};
use crate::model::ops::spec::{AppSpec, CheckKind, CheckSpec, HealthSpec, ProviderKind};
use crate::model::persona::Persona;
use crate::storage::ledger::{Book, HISTORY_LIMIT_MAX};
use crate::storage::store::Store;

/// A check's run time when its spec gives none.
const CHECK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Days a certificate must have left unless the check says otherwise.
const TLS_MIN_DAYS_DEFAULT: u32 = 14;
/// Trailing days of the cost average unless the check says otherwise.
const COST_DAYS_DEFAULT: u32 = 7;
/// Factor over the trailing average that alerts unless the check says otherwise.
const COST_FACTOR_DEFAULT: f64 = 2.0;
/// Ledger history pages a cost check reads at most.
const COST_PAGES_MAX: usize = 20;
/// Probes of an app's health URL before a running release is adopted (its `timeout_ms` each,
/// `interval_ms` apart): enough for a busy app, short enough not to hold up the start.
const ADOPT_PROBES_MAX: u32 = 3;
/// Without a health URL, how long a running release has to accept a connection on its port to
/// be adopted.
const ADOPT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A `process` check that finds no process looks once more after this (a release may be
/// between its start and its record being written).
const PROCESS_RECHECK_DELAY: Duration = Duration::from_millis(500);

/// The one HTTP client of every probe: building one loads the system's TLS roots, which a probe
/// every few seconds should not repeat.
fn probe_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One HTTP(S) GET with a timeout.
pub(crate) async fn http_probe(url: &str, timeout: Duration, expect_status: u16) -> (Probe, bool) {
    let started = Instant::now();
    let at = Utc::now();
    let outcome = match probe_client() {
        Ok(client) => client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string()),
        Err(error) => Err(format!("no HTTP client: {error}")),
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(status) => (
            Probe {
                at,
                status: Some(status),
                error: (status != expect_status).then(|| format!("expected {expect_status}")),
                duration_ms,
            },
            status == expect_status,
        ),
        Err(error) => (
            Probe {
                at,
                status: None,
                error: Some(error),
                duration_ms,
            },
            false,
        ),
    }
}

/// The health check of a spec: up to `retries` probes, `interval_ms` apart, until one passes.
pub(crate) async fn health(spec: &HealthSpec) -> HealthResult {
    let mut probes = Vec::new();
    let timeout = Duration::from_millis(spec.timeout_ms);
    for attempt in 0..spec.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
        }
        let (probe, passed) = http_probe(&spec.url, timeout, spec.expect_status).await;
        probes.push(probe);
        if passed {
            return HealthResult {
                healthy: true,
                probes,
                target: spec.url.clone(),
            };
        }
    }
    HealthResult {
        healthy: false,
        probes,
        target: spec.url.clone(),
    }
}

/// An app's health: its `health:` probe, else the provider's status.
pub(crate) async fn app_health(ctx: &ProviderContext, name: &str, app: &AppSpec) -> HealthResult {
    if let Some(spec) = &app.health {
        let mut result = health(spec).await;
        if result.healthy {
            owned_by_release(ctx, name, app, &mut result).await;
        }
        return result;
    }
    let started = Instant::now();
    let status = provider::status(ctx, name, app).await;
    HealthResult {
        healthy: status.is_ok(),
        probes: vec![Probe {
            at: Utc::now(),
            status: None,
            error: status.err().map(|e| e.to_string()),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }],
        target: "provider status".into(),
    }
}

/// A `local` app's passing health result stays passing only when the app's running release is
/// the process listening on its port ([`provider::release_serves`]); otherwise a last probe
/// saying who serves instead turns it unhealthy. Other providers' results are left as they are.
async fn owned_by_release(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    result: &mut HealthResult,
) {
    let (ProviderKind::Local, Some(local)) = (app.provider, &app.local) else {
        return;
    };
    let started = Instant::now();
    if let Err(error) = provider::release_serves(ctx, name, local.port).await {
        result.healthy = false;
        result.probes.push(Probe {
            at: Utc::now(),
            status: None,
            error: Some(format!("answered, but not by this release: {error}")),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
}

/// Whether the app's running release may be adopted as the release `current`: its record names
/// a process that still runs with the recorded start time, on the port `ops.yaml` gives now, of
/// release `current`, and the app itself answers — its `health` URL passes (up to
/// [`ADOPT_PROBES_MAX`] probes), or without one it accepts a connection on its port. Returns the
/// record of the adopted release, or why it may not be adopted.
pub(crate) async fn adoptable(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    current: &str,
) -> Result<provider::LocalProcess, String> {
    let local = provider::local_of(app).map_err(|e| e.to_string())?;
    let record =
        provider::read_process(&ctx.data_dir, name).ok_or("no record of a running release")?;
    if !record.runs() {
        return Err(format!(
            "the recorded process {} no longer runs",
            record.pid
        ));
    }
    if record.release != current {
        return Err(format!(
            "release {} runs, but the current release is {current}",
            record.release
        ));
    }
    if record.port != local.port {
        return Err(format!(
            "it was started on port {}, ops.yaml now says {}",
            record.port, local.port
        ));
    }
    let answered = match &app.health {
        Some(spec) => {
            let mut spec = spec.clone();
            spec.retries = spec.retries.clamp(1, ADOPT_PROBES_MAX);
            let result = health(&spec).await;
            result.healthy.then_some(()).ok_or_else(|| {
                let last = result.probes.last().and_then(|p| p.error.clone());
                format!(
                    "{} did not pass: {}",
                    result.target,
                    last.unwrap_or_default()
                )
            })
        }
        None => {
            let address = ("127.0.0.1", local.port);
            match tokio::time::timeout(
                ADOPT_CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("port {} refused: {error}", local.port)),
                Err(_) => Err(format!("port {} did not answer", local.port)),
            }
        }
    };
    answered.map(|()| record)
}

/// Runs one check and returns its result (never an error: a check that cannot run fails).
pub(crate) async fn run_check(
    ctx: &ProviderContext,
    store: &Store,
    name: &str,
    app: &AppSpec,
    check: &CheckSpec,
) -> CheckResult {
    let started = Instant::now();
    let timeout = check
        .timeout_ms
        .map_or(CHECK_TIMEOUT_DEFAULT, Duration::from_millis);
    let verdict = tokio::time::timeout(timeout, run_kind(ctx, store, name, app, check, timeout))
        .await
        .unwrap_or_else(|_| Err(format!("check did not finish within {timeout:?}")));
    let (outcome, detail) = match verdict {
        Ok(detail) => ("pass", detail),
        Err(detail) => ("fail", detail),
    };
    CheckResult {
        app: name.to_owned(),
        check: check.name.clone(),
        kind: check.kind,
        outcome: outcome.into(),
        detail,
        at: Utc::now(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

async fn run_kind(
    ctx: &ProviderContext,
    store: &Store,
    name: &str,
    app: &AppSpec,
    check: &CheckSpec,
    timeout: Duration,
) -> Result<String, String> {
    match check.kind {
        CheckKind::Http => http_check(app, check, timeout).await,
        CheckKind::TlsExpiry => tls_check(ctx, check, timeout).await,
        CheckKind::Process => process_check(ctx, name, app).await,
        CheckKind::Command => {
            let line = check.command.as_deref().unwrap_or("false");
            ctx.shell_ok(&check.name, line, &app.repo, Vec::new(), timeout)
                .await
                .map_err(|e| e.to_string())
        }
        CheckKind::Cost => cost_check(store, check).await,
    }
}

async fn http_check(app: &AppSpec, check: &CheckSpec, timeout: Duration) -> Result<String, String> {
    let url = check
        .url
        .clone()
        .or_else(|| app.health.as_ref().map(|h| h.url.clone()))
        .ok_or("no url")?;
    let expect = check
        .expect_status
        .or_else(|| app.health.as_ref().map(|h| h.expect_status))
        .unwrap_or(200);
    let (probe, passed) = http_probe(&url, timeout, expect).await;
    let seen = format!(
        "GET {url}: {}",
        probe.status.map_or_else(
            || probe.error.clone().unwrap_or_default(),
            |s| s.to_string()
        )
    );
    if passed {
        Ok(seen)
    } else {
        Err(seen)
    }
}

async fn process_check(ctx: &ProviderContext, name: &str, app: &AppSpec) -> Result<String, String> {
    match provider::status(ctx, name, app).await {
        Ok(detail) => Ok(detail),
        Err(_) => {
            tokio::time::sleep(PROCESS_RECHECK_DELAY).await;
            provider::status(ctx, name, app)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

async fn tls_check(
    ctx: &ProviderContext,
    check: &CheckSpec,
    timeout: Duration,
) -> Result<String, String> {
    let host = check.host.as_deref().unwrap_or("localhost");
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return Err(format!("`{host}` is not a host name"));
    }
    let port = check.port.unwrap_or(443);
    let line = format!(
        "openssl s_client -connect {host}:{port} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -enddate"
    );
    let text = ctx
        .shell_ok("openssl", &line, Path::new("/"), Vec::new(), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let not_after =
        parse_enddate(&text).ok_or_else(|| format!("no certificate date in `{text}`"))?;
    let days = (not_after - Utc::now()).num_days();
    let min_days = i64::from(check.min_days.unwrap_or(TLS_MIN_DAYS_DEFAULT));
    let detail = format!("certificate of {host}:{port} expires {not_after} ({days} days left)");
    if days < min_days {
        Err(format!("{detail}; under {min_days} days"))
    } else {
        Ok(detail)
    }
}

/// Parses `notAfter=Jun  1 12:00:00 2030 GMT` as openssl prints it.
pub(crate) fn parse_enddate(text: &str) -> Option<DateTime<Utc>> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("notAfter="))?;
    let value = value.trim().trim_end_matches("GMT").trim();
    let normalized = value.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&normalized, "%b %d %H:%M:%S %Y")
        .ok()
        .map(|naive| naive.and_utc())
}

/// Today's ledger spend (what agents earned from tasks) against the trailing daily average.
async fn cost_check(store: &Store, check: &CheckSpec) -> Result<String, String> {
    cost_check_at(store, check, Utc::now()).await
}

/// [`cost_check`] with "today" being `now`'s day.
async fn cost_check_at(
    store: &Store,
    check: &CheckSpec,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let days = check.days.unwrap_or(COST_DAYS_DEFAULT).max(1);
    let factor = check.factor.unwrap_or(COST_FACTOR_DEFAULT);
    let floor = check.floor.unwrap_or(0);
    let spend = daily_spend(store, days, now)
        .await
        .map_err(|e| format!("cannot read the ledger: {e}"))?;
    let today = spend.first().copied().unwrap_or(0);
    let trailing: u64 = spend.iter().skip(1).sum();
    let average = trailing as f64 / f64::from(days);
    let detail = format!("today {today} micro-tokens; trailing {days}-day average {average:.0}");
    if today > floor && today as f64 > average * factor {
        Err(format!("{detail}; over {factor}× the average"))
    } else {
        Ok(detail)
    }
}

/// The accounts spending lands in: every persona's `agent:<persona>` (engine runs are charged
/// there) and `system:revenue`.
fn spend_accounts() -> impl Iterator<Item = String> {
    Persona::ALL
        .into_iter()
        .map(|persona| agent_account(persona.name()))
        .chain(std::iter::once(REVENUE_ACCOUNT.to_owned()))
}

/// Spend per day, today first, for today and the `days` before it (read-only; bounded pages).
async fn daily_spend(
    store: &Store,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<u64>, crate::model::ledger::LedgerError> {
    let book = Book::new(store);
    let mut spend = vec![0u64; days as usize + 1];
    let today = now.date_naive();
    for account in spend_accounts() {
        if book.account(&account).await?.is_none() {
            continue;
        }
        let mut cursor: Option<String> = None;
        for _ in 0..COST_PAGES_MAX {
            let page = book
                .history(&account, HISTORY_LIMIT_MAX, cursor.as_deref())
                .await?;
            let mut older_than_window = false;
            for transfer in page
                .transfers
                .iter()
                .filter(|t| t.credit_account == account)
            {
                let day = transfer
                    .settled_at
                    .unwrap_or(transfer.created_at)
                    .date_naive();
                let age = (today - day).num_days();
                match usize::try_from(age) {
                    Ok(index) if index < spend.len() => spend[index] += transfer.posted_amount,
                    _ => older_than_window = true,
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() || older_than_window {
                break;
            }
        }
    }
    Ok(spend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ledger::test_support::Books;

    #[test]
    fn openssl_enddate_parses() {
        let date = parse_enddate("notAfter=Jun  1 12:00:00 2030 GMT\n").unwrap();
        assert_eq!(date.to_rfc3339(), "2030-06-01T12:00:00+00:00");
        assert!(parse_enddate("garbage").is_none());
    }

    fn cost_spec(factor: f64) -> CheckSpec {
        serde_json::from_value(serde_json::json!({
            "name": "spend", "schedule": "0 * * * * *", "kind": "cost", "factor": factor, "days": 7
        }))
        .unwrap()
    }

    /// Charges `amount` to Patch's agent account at `at`, as an engine run's charge would be.
    async fn charge(book: &Books, id: &str, amount: u64, at: DateTime<Utc>) {
        use crate::model::ledger::{NewTransfer, MINT_ACCOUNT};
        let transfer = NewTransfer::posted(
            id,
            MINT_ACCOUNT,
            &agent_account(Persona::Patch.name()),
            amount,
            9,
        );
        book.apply_transfer(&transfer, at).await.unwrap();
    }

    #[tokio::test]
    async fn the_cost_check_compares_today_with_the_trailing_average_of_agent_charges() {
        use crate::model::ledger::builtin_accounts;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let book = Books::new(&store);
        for account in builtin_accounts(&crate::model::ledger::LedgerConfig::default()) {
            book.create_account(&account).await.unwrap();
        }
        assert!(
            cost_check(&store, &cost_spec(2.0)).await.is_ok(),
            "no spend at all"
        );

        let now = Utc::now();
        for day in 1..=3 {
            charge(
                &book,
                &format!("old-{day}"),
                100,
                now - chrono::Duration::days(day),
            )
            .await;
        }
        // Ten days ago: outside the 7-day window.
        charge(
            &book,
            "ancient",
            1_000_000,
            now - chrono::Duration::days(10),
        )
        .await;
        charge(&book, "today-1", 50, now).await;
        let spend = daily_spend(&store, 7, now).await.unwrap();
        assert_eq!(spend, vec![50, 100, 100, 100, 0, 0, 0, 0]);
        // Average 300 / 7 ≈ 43: 50 is under 2×, over 1×.
        assert!(cost_check_at(&store, &cost_spec(2.0), now).await.is_ok());
        assert!(cost_check_at(&store, &cost_spec(1.0), now).await.is_err());
        charge(&book, "today-2", 150, now).await;
        let verdict = cost_check_at(&store, &cost_spec(2.0), now).await;
        assert!(
            verdict.as_ref().is_err_and(|d| d.contains("today 200")),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn https_health_urls_are_probed_over_tls() {
        // A listener that records the first byte the probe sends: 0x16 opens a TLS handshake.
        // (A build without TLS never connects to an https URL at all.)
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let first_byte = std::thread::spawn(move || {
            use std::io::Read;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return None,
                }
            };
            stream.set_nonblocking(false).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).ok()?;
            Some(byte[0])
        });
        let url = format!("https://127.0.0.1:{port}/health");
        let (_, healthy) = http_probe(&url, Duration::from_secs(3), 200).await;
        assert!(!healthy, "the listener never answers");
        assert_eq!(first_byte.join().unwrap(), Some(0x16));
    }

    #[tokio::test]
    async fn an_unreachable_url_is_unhealthy_within_its_retries() {
        let spec = HealthSpec {
            url: "http://127.0.0.1:9/health".into(),
            expect_status: 200,
            timeout_ms: 200,
            retries: 2,
            interval_ms: 10,
        };
        let result = health(&spec).await;
        assert!(!result.healthy);
        assert_eq!(result.probes.len(), 2);
    }
}
