//! The web control plane: its session security over plain HTTP, and the page itself driven in a
//! real headless Chromium through WebDriver (`chromedriver`, the `fantoccini` client): log in,
//! watch a task submitted through the API appear on the board without a reload, approve it on its
//! page and see it end `done`; silence an incident's app and signal from the Ops view and expire the
//! silence there. Without `chromium` and `chromedriver` (Debian's `chromium` and
//! `chromium-driver`, which `scripts/test` installs as root) the browser test says so and skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, Options, Service, ADMIN_TOKEN};

const DUMMY_ID: &str = "00000000-0000-0000-0000-000000000001";

/// A client that sends no bearer token: only what a browser would.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Logs in with `token`: (status, the `Set-Cookie` header, body).
async fn login(service: &Service, token: &str) -> (u16, String, Value) {
    let response = plain()
        .post(format!("{}/ui/login", service.base))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cookie, response.json().await.unwrap_or(Value::Null))
}

/// `name=value` of a `Set-Cookie` header, to send back as `Cookie`.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A request with the session cookie (and headers) and nothing else.
async fn with_cookie(
    service: &Service,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = plain()
        .request(method, format!("{}{path}", service.base))
        .header("cookie", cookie);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_page_is_public_and_a_session_is_http_only_csrf_checked_and_ends_at_logout() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;

    // The page and its assets need no token (they hold no data); the API still does.
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = plain()
            .get(format!("{}{path}", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(response.headers().contains_key("content-security-policy"));
    }
    let (status, _, _) = with_cookie(&service, reqwest::Method::GET, "/v1/tasks", "", &[]).await;
    assert_eq!(status, 401);

    // A wrong token opens nothing.
    let (status, cookie, body) = login(&service, "glt_wrong").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    assert!(cookie.is_empty(), "{cookie}");

    // The right one: an HttpOnly, SameSite=Strict cookie (not Secure over plain HTTP), a CSRF token.
    let (status, set_cookie, session) = login(&service, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{session}");
    assert!(set_cookie.starts_with("glitchlab_session="), "{set_cookie}");
    assert!(set_cookie.contains("; HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("; SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    assert_eq!(session["name"], "bootstrap");
    assert_eq!(session["role"], "admin");
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let cookie = pair(&set_cookie);

    // The cookie reads the API like the bearer token, and the page can recover its CSRF token.
    let (status, _, tasks) =
        with_cookie(&service, reqwest::Method::GET, "/v1/tasks", &cookie, &[]).await;
    assert_eq!(status, 200, "{tasks}");
    let (status, _, again) =
        with_cookie(&service, reqwest::Method::GET, "/ui/session", &cookie, &[]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["csrf"], csrf.as_str());

    // A change with the cookie but without the CSRF token, or with another one, is refused.
    let cancel = format!("/v1/tasks/{DUMMY_ID}/cancel");
    let post = reqwest::Method::POST;
    let (status, _, body) = with_cookie(&service, post.clone(), &cancel, &cookie, &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("CSRF_REJECTED")),
        "{body}"
    );
    let wrong = [("x-csrf-token", "0".repeat(64))];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = with_cookie(&service, post.clone(), &cancel, &cookie, &wrong).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("CSRF_REJECTED")),
        "{body}"
    );
    // With it, the request gets through to the handler (no such task).
    let right = [("x-csrf-token", csrf.as_str())];
    let (status, _, body) = with_cookie(&service, post.clone(), &cancel, &cookie, &right).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("TASK_NOT_FOUND")),
        "{body}"
    );
    // A cross-origin page is refused even with the cookie and the token.
    let cross = [
        ("x-csrf-token", csrf.as_str()),
        ("origin", "http://evil.example"),
    ];
    let (status, _, body) = with_cookie(&service, post.clone(), &cancel, &cookie, &cross).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("FORBIDDEN_ORIGIN")),
        "{body}"
    );
    // Logout without the CSRF token is refused too (a page elsewhere cannot log one out).
    let (status, _, _) = with_cookie(&service, post.clone(), "/ui/logout", &cookie, &[]).await;
    assert_eq!(status, 403);

    // Logout ends the session: the cookie is cleared and opens nothing any more.
    let (status, headers, _) =
        with_cookie(&service, post.clone(), "/ui/logout", &cookie, &right).await;
    assert_eq!(status, 204);
    let cleared = headers["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let (status, _, _) =
        with_cookie(&service, reqwest::Method::GET, "/v1/tasks", &cookie, &[]).await;
    assert_eq!(status, 401);

    // A session stands for its token: revoking the token ends it.
    let (status, token) = service
        .post("/v1/tokens", &json!({"name": "viewer1", "role": "viewer"}))
        .await;
    assert_eq!(status, 201, "{token}");
    let (status, set_cookie, _) = login(&service, token["secret"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let viewer = pair(&set_cookie);
    let (status, _, _) =
        with_cookie(&service, reqwest::Method::GET, "/v1/actors", &viewer, &[]).await;
    assert_eq!(status, 200);
    let (status, _) = service.delete("/v1/tokens/viewer1").await;
    assert_eq!(status, 204);
    let (status, _, _) =
        with_cookie(&service, reqwest::Method::GET, "/v1/actors", &viewer, &[]).await;
    assert_eq!(status, 401);
}

/// `program` on the `PATH`, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// A `chromedriver` child, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chromedriver` on a free port and waits until it answers: (child, its URL).
async fn start_driver(chromedriver: &Path, root: &Path) -> (Driver, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(root.join("chromedriver.log")).unwrap();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = plain().get(format!("{url}/status")).send().await {
            if response.status().is_success() {
                return (driver, url);
            }
        }
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A headless Chromium session.
async fn browser(driver: &str, chromium: &Path) -> Client {
    browser_with(driver, chromium, json!({})).await
}

/// A headless Chromium session with more `goog:chromeOptions` (a phone's screen).
async fn browser_with(driver: &str, chromium: &Path, extra: Value) -> Client {
    let mut options = json!({
        "binary": chromium.display().to_string(),
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1600,1000"],
    });
    if let (Some(options), Some(extra)) = (options.as_object_mut(), extra.as_object()) {
        options.extend(extra.clone());
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(driver)
        .await
        .expect("a WebDriver session")
}

/// Where a failed browser test leaves its screenshot: `target/ui-failure.png`.
fn failure_screenshot() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-failure.png")
}

type Step<T> = Result<T, String>;

fn step<T, E: std::fmt::Debug>(what: &str, result: Result<T, E>) -> Step<T> {
    result.map_err(|error| format!("{what}: {error:?}"))
}

/// Waits up to `timeout` for the element `css`.
async fn wait_for(
    client: &Client,
    css: &str,
    timeout: Duration,
) -> Step<fantoccini::elements::Element> {
    step(
        &format!("waiting for `{css}`"),
        client
            .wait()
            .at_most(timeout)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await,
    )
}

#[tokio::test]
async fn the_board_shows_a_task_live_and_approving_it_on_its_page_ends_it_done() {
    let _machine = crate::helpers::heavy().await;
    let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        eprintln!(
            "SKIPPED: the browser test needs `chromium` and `chromedriver` on the PATH (Debian \
             packages chromium and chromium-driver; scripts/test installs them as root)"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (_driver, url) = start_driver(&chromedriver, root.path()).await;
    let client = browser(&url, &chromium).await;

    let outcome = drive(&client, &service, &repo).await;
    if let Err(error) = &outcome {
        let path = failure_screenshot();
        match client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).unwrap();
                eprintln!("screenshot of the failure: {}", path.display());
            }
            Err(error) => eprintln!("no screenshot: {error:?}"),
        }
        let _ = client.close().await;
        panic!("{error}\nservice log:\n{}", service.log());
    }
    client.close().await.unwrap();
}

async fn drive(client: &Client, service: &Service, repo: &Path) -> Step<()> {
    let long = Duration::from_secs(60);
    step(
        "open the page",
        client.goto(&format!("{}/", service.base)).await,
    )?;

    // Log in through the form.
    let token = wait_for(client, "input[name=token]", long).await?;
    step("type the token", token.send_keys(ADMIN_TOKEN).await)?;
    step(
        "submit",
        wait_for(client, "#login-submit", long).await?.click().await,
    )?;
    wait_for(client, "#board section.column[data-status=queued]", long).await?;

    // The session cookie is there but the page's scripts cannot read it.
    let cookies = step("cookies", client.get_all_cookies().await)?;
    let session = cookies
        .iter()
        .find(|cookie| cookie.name() == "glitchlab_session")
        .ok_or("no session cookie")?;
    if session.http_only() != Some(true) {
        return Err(format!("the session cookie is not HttpOnly: {session:?}"));
    }
    let visible = step(
        "document.cookie",
        client.execute("return document.cookie", vec![]).await,
    )?;
    if visible
        .as_str()
        .unwrap_or_default()
        .contains("glitchlab_session")
    {
        return Err(format!("scripts see the session cookie: {visible}"));
    }

    // A task submitted through the API appears on the board without a reload, and moves to
    // awaiting approval.
    let mut body = shell_task(repo, "echo reviewed > reviewed.txt", "true");
    body["title"] = json!("Reviewed in the browser");
    body["review_policy"] = json!("manual");
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    wait_for(client, &format!("#board a.card[data-id='{id}']"), long).await?;
    let waiting = format!("#board section[data-status=awaiting_approval] a.card[data-id='{id}']");
    wait_for(client, &waiting, long).await?;
    maybe_board_screenshot(client, service, repo).await?;

    // Its page: approve, then see it end done.
    click(client, &waiting, long).await?;
    wait_for(client, "#timeline li[data-kind]", long).await?;
    click(client, "#btn-approve", long).await?;
    wait_for_text(client, "#task-status", long, |text| text == "done").await?;
    // The delivered change is on the page's diff.
    wait_for_text(client, "#diff-text", long, |text| {
        text.contains("reviewed.txt")
    })
    .await?;

    // The other views draw from the API: the tree with Compass, the ledger with its chart and the
    // delivered task's charges, ops with its three panels.
    let views = [
        ("tree", "#tree li[data-actor=compass]"),
        ("ledger", "#spend-chart rect"),
        ("ledger", "#balances tr[data-account='agent:patch']"),
        ("ops", "#checks"),
    ];
    for (view, css) in views {
        step(
            "navigate",
            client.goto(&format!("{}/#/{view}", service.base)).await,
        )?;
        wait_for(client, css, long).await?;
    }
    Ok(())
}

/// Clicks the element `css` once it is there, finding it again when the page rebuilt it between
/// the find and the click.
async fn click(client: &Client, css: &str, timeout: Duration) -> Step<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let element = wait_for(client, css, timeout).await?;
        match element.click().await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline && format!("{error:?}").contains("Stale") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(format!("clicking `{css}`: {error:?}")),
        }
    }
}

/// Waits up to `timeout` until the text of the element `css` satisfies `wanted`. Reads it with a
/// script each time: the page rebuilds its elements as events arrive, so a found element may be
/// gone by the time it is read.
async fn wait_for_text(
    client: &Client,
    css: &str,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Step<()> {
    let deadline = Instant::now() + timeout;
    let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null";
    loop {
        let text = step("read text", client.execute(script, vec![json!(css)]).await)?;
        let text = text.as_str().unwrap_or_default().to_owned();
        if wanted(&text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("`{css}` still says `{text}` after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With `GLITCHLAB_UI_SCREENSHOT=<path>`, fills the board a little and saves its screenshot there
/// (how `docs/board.png` is made).
async fn maybe_board_screenshot(client: &Client, service: &Service, repo: &Path) -> Step<()> {
    let Some(path) = std::env::var_os("GLITCHLAB_UI_SCREENSHOT") else {
        return Ok(());
    };
    let mut done = shell_task(repo, "echo hello > hello.txt", "true");
    done["title"] = json!("Add a greeting");
    let done = service.submit(&done).await;
    let mut failing = shell_task(repo, "echo broken > broken.txt", "false");
    failing["title"] = json!("Fix the flaky parser");
    failing["max_attempts"] = json!(1);
    let failing = service.submit(&failing).await;
    let mut slow = shell_task(repo, "sleep 30", "true");
    slow["title"] = json!("Refactor the billing module");
    let slow = service.submit(&slow).await;
    let mut blocked = shell_task(repo, "echo later > later.txt", "true");
    blocked["title"] = json!("Document the new API");
    blocked["deps"] = json!([slow["id"]]);
    service.submit(&blocked).await;
    for task in [&done, &failing] {
        service
            .wait_until_finished(task["id"].as_str().unwrap())
            .await;
    }
    let id = slow["id"].as_str().unwrap();
    wait_for(
        client,
        &format!("#board section[data-status=running] a.card[data-id='{id}']"),
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let png = step("board screenshot", client.screenshot().await)?;
    std::fs::write(&path, png).map_err(|e| e.to_string())?;
    service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    Ok(())
}

/// Logins one viewer makes in a loop: more than the whole session table (1024).
const VIEWER_LOGINS: usize = 1100;

#[tokio::test]
async fn a_viewer_logging_in_again_and_again_never_ends_the_admins_session() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, body) = service
        .post("/v1/tokens", &json!({"name": "looper", "role": "viewer"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let viewer = body["secret"].as_str().unwrap().to_owned();
    let (status, admin_cookie, _) = login(&service, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let admin_cookie = pair(&admin_cookie);
    let (status, first_viewer_cookie, _) = login(&service, &viewer).await;
    assert_eq!(status, 200);
    let first_viewer_cookie = pair(&first_viewer_cookie);
    // One client (a new one per login costs a TLS setup each in a debug build).
    let looper = plain();
    for _ in 0..VIEWER_LOGINS {
        let response = looper
            .post(format!("{}/ui/login", service.base))
            .json(&json!({"token": viewer}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The admin's session is untouched; the viewer's own oldest one made room.
    let (status, _, session) = with_cookie(
        &service,
        reqwest::Method::GET,
        "/ui/session",
        &admin_cookie,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["name"], "bootstrap");
    let (status, _, _) = with_cookie(
        &service,
        reqwest::Method::GET,
        "/v1/tasks",
        &first_viewer_cookie,
        &[],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_ops_view_silences_an_incidents_signal_and_expires_the_silence() {
    let _machine = crate::helpers::heavy().await;
    let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        eprintln!(
            "SKIPPED: the browser test needs `chromium` and `chromedriver` on the PATH (Debian \
             packages chromium and chromium-driver; scripts/test installs them as root)"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let alert = json!({"app": "web", "signal": "disk_full"});
    let (status, posted) = service.post("/v1/alerts", &alert).await;
    assert_eq!(status, 202, "{posted}");
    let (_driver, url) = start_driver(&chromedriver, root.path()).await;
    let client = browser(&url, &chromium).await;

    let mut outcome = silence_in_the_ops_view(&client, &service).await;
    if outcome.is_ok() {
        outcome = own_in_the_ops_view(&client, &service).await;
    }
    if let Err(error) = &outcome {
        if let Ok(png) = client.screenshot().await {
            std::fs::write(failure_screenshot(), png).unwrap();
        }
        let _ = client.close().await;
        panic!("{error}\nservice log:\n{}", service.log());
    }
    client.close().await.unwrap();
}

/// From the incident's card: Acknowledge, Snooze 1 h, Resolve — each checked through the API.
async fn own_in_the_ops_view(client: &Client, service: &Service) -> Step<()> {
    let long = Duration::from_secs(60);
    let (_, listed) = service.get("/v1/incidents").await;
    let id = listed["incidents"][0]["id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let path = format!("/v1/incidents/{id}");
    let card = format!("[data-incident='{id}']");
    let expect = |what: &'static str, ok: fn(&Value) -> bool| {
        let path = path.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (_, incident) = service.get(&path).await;
                if ok(&incident) {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("after {what}: {incident}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    click(client, &format!("{card} button[data-act=ack]"), long).await?;
    expect("Acknowledge", |i| {
        i["status"] == "acknowledged" && i["acknowledged"]["by"] == "bootstrap"
    })
    .await?;
    click(client, &format!("{card} button[data-act=snooze]"), long).await?;
    expect("Snooze", |i| i["snoozed_until"].is_string()).await?;
    click(client, &format!("{card} button[data-act=resolve]"), long).await?;
    expect("Resolve", |i| {
        i["status"] == "resolved" && i["resolved_by"]["by"] == "bootstrap"
    })
    .await
}

/// Logs in, silences the incident's app and signal from its card, checks the API has the
/// silence, then expires it from the silences panel.
async fn silence_in_the_ops_view(client: &Client, service: &Service) -> Step<()> {
    let long = Duration::from_secs(60);
    step(
        "open the page",
        client.goto(&format!("{}/", service.base)).await,
    )?;
    let token = wait_for(client, "input[name=token]", long).await?;
    step("type the token", token.send_keys(ADMIN_TOKEN).await)?;
    click(client, "#login-submit", long).await?;
    wait_for(client, "#board", long).await?;
    step(
        "open ops",
        client.goto(&format!("{}/#/ops", service.base)).await,
    )?;
    click(
        client,
        "[data-incident] button[title^='no new incident']",
        long,
    )
    .await?;
    wait_for(client, "#silences [data-silence]", long).await?;
    let (_, page) = service.get("/v1/silences").await;
    let matchers = &page["silences"][0]["matchers"];
    if matchers != &json!({"app": "web", "signal": "disk_full"}) {
        return Err(format!("the button made {page}"));
    }
    click(client, "#silences [data-silence] button.danger", long).await?;
    wait_for_text(client, "#silences", long, |text| {
        text.contains("No active silences")
    })
    .await?;
    let (_, page) = service.get("/v1/silences").await;
    if page["silences"] != json!([]) {
        return Err(format!("still active after Expire: {page}"));
    }
    Ok(())
}

// ---- #27: the task page, the board, a phone's screen and accessibility ------------------------

/// axe-core, vendored for these tests only and injected through WebDriver, never served by the
/// product (`tests/vendor/axe-core/README.md`).
const AXE_JS: &str = include_str!("../vendor/axe-core/axe.min.js");
/// The digest `tests/vendor/axe-core/README.md` records for `AXE_JS`.
const AXE_SHA256: &str = "e9e5863c33a874f09bc01acd9234b7e3c871479f5eef8802fa582544465e6d01";
/// What a verify command prints while it runs, for the live output to show.
const LIVE_MARKER: &str = "glitchlab-live-marker";
/// Times (one a second) the live-output verify prints [`LIVE_MARKER`] before it ends without
/// its gate: a bound, the test opens the gate as soon as it has seen the output.
const LIVE_PRINTS_MAX: u32 = 120;
/// A phone's screen: an iPhone 12-15's CSS pixels.
const PHONE: (u32, u32) = (390, 844);

/// `chromium` and `chromedriver`, or why the browser test skips.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    match (which("chromium"), which("chromedriver")) {
        (Some(chromium), Some(chromedriver)) => Some((chromium, chromedriver)),
        _ => {
            eprintln!(
                "SKIPPED: the browser test needs `chromium` and `chromedriver` on the PATH (Debian \
                 packages chromium and chromium-driver; scripts/test installs them as root)"
            );
            None
        }
    }
}

/// Runs `body` against the client; on failure saves a screenshot and panics with the service's
/// log.
async fn or_screenshot(client: Client, service: &Service, outcome: Step<()>) {
    if let Err(error) = &outcome {
        if let Ok(png) = client.screenshot().await {
            std::fs::write(failure_screenshot(), png).unwrap();
            eprintln!(
                "screenshot of the failure: {}",
                failure_screenshot().display()
            );
        }
        let _ = client.close().await;
        panic!("{error}\nservice log:\n{}", service.log());
    }
    client.close().await.unwrap();
}

/// Opens the page and logs in through the form with `token`.
async fn log_in_page(client: &Client, service: &Service, token: &str) -> Step<()> {
    let long = Duration::from_secs(60);
    step(
        "open the page",
        client.goto(&format!("{}/", service.base)).await,
    )?;
    let input = wait_for(client, "input[name=token]", long).await?;
    step("type the token", input.send_keys(token).await)?;
    click(client, "#login-submit", long).await?;
    wait_for(client, "#board section.column", long).await?;
    Ok(())
}

/// Navigates to a hash route of the page (no reload) and waits for `css`.
async fn open_view(client: &Client, route: &str, css: &str) -> Step<()> {
    let script = "location.hash = arguments[0]; return true";
    step(
        &format!("go to {route}"),
        client.execute(script, vec![json!(route)]).await,
    )?;
    wait_for(client, css, Duration::from_secs(60)).await?;
    Ok(())
}

/// Tab presses from the element `from` the test allows before `target_id` has the focus.
const TABS_MAX: usize = 60;

/// From the element `from`, Tab moves the focus to the element with id `target_id`: the page
/// works from the keyboard.
async fn keyboard_reaches(client: &Client, from: &str, target_id: &str) -> Step<()> {
    step(
        "focus the start",
        client
            .execute(
                "document.querySelector(arguments[0]).focus(); return true",
                vec![json!(from)],
            )
            .await,
    )?;
    for _ in 0..TABS_MAX {
        let active = step("the focused element", client.active_element().await)?;
        step("press Tab", active.send_keys("\u{e004}").await)?;
        let id = eval(client, "return document.activeElement.id").await?;
        if id == target_id {
            return Ok(());
        }
    }
    Err(format!("{TABS_MAX} Tab presses never reach #{target_id}"))
}

/// Runs `script` and returns its JSON answer.
async fn eval(client: &Client, script: &str) -> Step<Value> {
    step(script, client.execute(script, vec![]).await)
}

#[tokio::test]
async fn the_task_page_streams_live_output_and_shows_the_diff_above_approve() {
    let _machine = crate::helpers::heavy().await;
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (_driver, url) = start_driver(&chromedriver, root.path()).await;
    let client = browser(&url, &chromium).await;
    let outcome = live_output_and_diff(&client, &service, &repo).await;
    or_screenshot(client, &service, outcome).await;
}

async fn live_output_and_diff(client: &Client, service: &Service, repo: &Path) -> Step<()> {
    let long = Duration::from_secs(60);
    log_in_page(client, service, ADMIN_TOKEN).await?;
    // Verify prints (every second, so a page that subscribed late still sees one) and keeps
    // running until the test opens its gate: the text must reach the page while it runs.
    let gate = service.root.join("verify-gate");
    let verify = format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt {LIVE_PRINTS_MAX} ]; do sleep 1; \
         echo {LIVE_MARKER}; i=$((i+1)); done",
        gate.display()
    );
    let mut body = shell_task(repo, "echo reviewed > reviewed.txt", &verify);
    body["review_policy"] = json!("manual");
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    open_view(client, &format!("#/task/{id}"), "#task-status").await?;
    wait_for_text(client, "#live-output", long, |text| {
        text.contains(LIVE_MARKER)
    })
    .await?;
    let (_, now) = service.get(&format!("/v1/tasks/{id}")).await;
    if now["status"] != "running" || now["stage"] != "verify" {
        return Err(format!("the output showed only after verify: {now}"));
    }
    std::fs::write(&gate, "").map_err(|error| format!("opening the verify's gate: {error}"))?;

    // At the gate the diff is on the page, above Approve.
    wait_for_text(client, "#task-status", long, |text| {
        text == "awaiting_approval"
    })
    .await?;
    wait_for_text(client, "#diff-text", long, |text| {
        text.contains("reviewed.txt")
    })
    .await?;
    wait_for(client, "#btn-approve", long).await?;
    let places = eval(
        client,
        "const d = document.querySelector('#diff-text pre').getBoundingClientRect(); \
         const a = document.querySelector('#btn-approve').getBoundingClientRect(); \
         return [d.top, d.height, a.top]",
    )
    .await?;
    let at = |i: usize| places[i].as_f64().unwrap_or(f64::NAN);
    if !(at(1) > 0.0 && at(0) + at(1) <= at(2)) {
        return Err(format!(
            "the diff (top, height) is not above Approve (top): {places}"
        ));
    }

    keyboard_reaches(
        client,
        "#task-head + * a, main p a[href='#/board']",
        "btn-approve",
    )
    .await?;

    // An error shows in the banner, and the next navigation clears it.
    let missing = format!("/v1/tasks/{DUMMY_ID}/cancel");
    let script = "api('POST', arguments[0]).catch(showError); return true";
    step(
        "a refused action",
        client.execute(script, vec![json!(missing)]).await,
    )?;
    wait_for_text(client, "#flash", long, |text| {
        text.contains("TASK_NOT_FOUND")
    })
    .await?;
    click(client, "#nav a[data-view=board]", long).await?;
    wait_for(client, "#board section.column", long).await?;
    let hidden = eval(client, "return document.querySelector('#flash').hidden").await?;
    if hidden != json!(true) {
        return Err("the error banner followed to the board".to_owned());
    }
    Ok(())
}

#[tokio::test]
async fn ended_tasks_offer_only_valid_actions_failed_runs_are_red_and_the_board_filters_in_the_url()
{
    let _machine = crate::helpers::heavy().await;
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (_driver, url) = start_driver(&chromedriver, root.path()).await;
    let client = browser(&url, &chromium).await;
    let outcome = valid_actions_and_board(&client, &service, &repo).await;
    or_screenshot(client, &service, outcome).await;
}

/// A task that fails its only attempt (it ends `failed` or `dead_letter`) and one cancelled while queued behind a dependency.
async fn failed_and_cancelled(service: &Service, repo: &Path) -> (String, String) {
    let mut failing = shell_task(repo, "echo broken > broken.txt", "false");
    failing["title"] = json!("Fix the flaky parser");
    failing["max_attempts"] = json!(1);
    let failing = service.submit(&failing).await;
    let failed = failing["id"].as_str().unwrap().to_owned();
    let mut waiting = shell_task(repo, "echo later > later.txt", "true");
    waiting["title"] = json!("Document the new API");
    waiting["deps"] = json!([failed]);
    let waiting = service.submit(&waiting).await;
    let cancelled = waiting["id"].as_str().unwrap().to_owned();
    let (status, body) = service
        .post(&format!("/v1/tasks/{cancelled}/cancel"), &json!({}))
        .await;
    assert!(status < 300, "{body}");
    service.wait_until_finished(&failed).await;
    service.wait_until_finished(&cancelled).await;
    (failed, cancelled)
}

async fn valid_actions_and_board(client: &Client, service: &Service, repo: &Path) -> Step<()> {
    let long = Duration::from_secs(60);
    let (failed, cancelled) = failed_and_cancelled(service, repo).await;
    log_in_page(client, service, ADMIN_TOKEN).await?;

    // A cancelled task offers nothing: not Retry (the service answers 409), not Cancel.
    open_view(client, &format!("#/task/{cancelled}"), "#task-status").await?;
    wait_for_text(client, "#task-status", long, |text| text == "cancelled").await?;
    wait_for(client, "#runs p, #runs table", long).await?;
    let offered = eval(
        client,
        "return [...document.querySelectorAll('#btn-retry, #btn-cancel, #btn-approve, \
         #btn-reject')].map(b => b.id)",
    )
    .await?;
    if offered != json!([]) {
        return Err(format!("a cancelled task offers {offered}"));
    }

    // A failed (dead-lettered) one offers Retry, and its failed run is red, not a grey "finished".
    open_view(client, &format!("#/task/{failed}"), "#task-status").await?;
    wait_for_text(client, "#task-status", long, |text| {
        text == "failed" || text == "dead_letter"
    })
    .await?;
    wait_for(client, "#btn-retry", long).await?;
    wait_for(client, "#runs tr[data-outcome=failed] .badge", long).await?;
    let colour = eval(
        client,
        "const b = document.querySelector('#runs tr[data-outcome=failed] .badge'); \
         return [b.textContent, getComputedStyle(b).color]",
    )
    .await?;
    let rgb: Vec<u32> = colour[1]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    let red = matches!(rgb[..], [r, g, b] if r >= 120 && g < 80 && b < 80);
    if colour[0] != "failed" || !red {
        return Err(format!("the failed run's badge: {colour}"));
    }

    // Money in one unit, tokens with decimals, exactly; terminal escapes stripped from output.
    let shown = eval(
        client,
        "return [tokens(1500000), tokens(1), tokens(2500000000), tokens(0), tokens(null), \
         plainText('\\x1b[1;31mred\\x1b[0m\\r\\nok')]",
    )
    .await?;
    if shown != json!(["1.50", "0.000001", "2,500.00", "0.00", "–", "red\nok"]) {
        return Err(format!("money and output as the page shows them: {shown}"));
    }

    // Where a task waits, when the task JSON says so (`merge.place`, `merge.held`, `waiting_for`):
    // on its card (and, through the same fields, on its page).
    let waiting = eval(
        client,
        "return card({id: 'x', title: 't', status: 'running', repo: '/r/app', \
         created_at: new Date().toISOString(), waiting_for: 'fleet paused', \
         merge: {place: 2, held: 'the base is red'}}).textContent",
    )
    .await?;
    let waiting = waiting.as_str().unwrap_or_default();
    let notes = [
        "#2 in the merge queue",
        "held: the base is red",
        "waiting for fleet paused",
    ];
    if !notes.iter().all(|note| waiting.contains(note)) {
        return Err(format!("a waiting task's card says {waiting}"));
    }

    // The board: age, repository and cost on each card; the search in the URL survives a reload.
    open_view(
        client,
        "#/board",
        &format!("a.card[data-id='{failed}'] .age"),
    )
    .await?;
    let repo_name = repo.file_name().unwrap().to_string_lossy().into_owned();
    let card = format!("a.card[data-id='{failed}']");
    wait_for_text(client, &card, long, |text| {
        text.contains(&repo_name)
            && text.contains(" ago")
            && text.contains(" tokens")
            && !text.contains("…")
    })
    .await?;
    let search = wait_for(client, "#filter-q", long).await?;
    step("type a search", search.send_keys("flaky").await)?;
    let hash = eval(client, "return location.hash").await?;
    if hash != "#/board?q=flaky" {
        return Err(format!("the search is not in the URL: {hash}"));
    }
    step("reload", client.refresh().await)?;
    wait_for(client, &card, long).await?;
    let shown = eval(
        client,
        "return [document.querySelector('#filter-q').value, \
         document.querySelectorAll('#board a.card').length]",
    )
    .await?;
    if shown != json!(["flaky", 1]) {
        return Err(format!("after a reload the board shows {shown}"));
    }
    submit_through_the_form(client, service, repo).await
}

/// The board's form submits a task (the admin may) and opens its page; a viewer has no form.
async fn submit_through_the_form(client: &Client, service: &Service, repo: &Path) -> Step<()> {
    let long = Duration::from_secs(60);
    click(client, "#new-task summary", long).await?;
    let fields = [
        ("#new-title", "Submitted from the page".to_owned()),
        ("#new-repo", repo.display().to_string()),
        ("#new-verify", "true".to_owned()),
    ];
    for (css, value) in fields {
        let input = wait_for(client, css, long).await?;
        step("type", input.send_keys(&value).await)?;
    }
    click(client, "#submit-task", long).await?;
    wait_for_text(client, "#task-head h1", long, |text| {
        text == "Submitted from the page"
    })
    .await?;
    let (_, page) = service.get("/v1/tasks").await;
    let found = page["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|task| task["title"] == "Submitted from the page" && task["verify"] == "true");
    if !found {
        return Err(format!("the form's task is not in {page}"));
    }
    let (status, token) = service
        .post("/v1/tokens", &json!({"name": "looker", "role": "viewer"}))
        .await;
    assert_eq!(status, 201, "{token}");
    click(client, "#logout", long).await?;
    log_in_page(
        client,
        service,
        token["secret"].as_str().unwrap_or_default(),
    )
    .await?;
    let form = eval(
        client,
        "return document.querySelector('#new-task') === null",
    )
    .await?;
    if form != json!(true) {
        return Err("a viewer is offered the submit form".to_owned());
    }
    Ok(())
}

#[tokio::test]
async fn every_view_fits_a_phone_and_axe_finds_no_serious_violation() {
    let _machine = crate::helpers::heavy().await;
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(AXE_JS.as_bytes()));
    assert_eq!(
        digest, AXE_SHA256,
        "tests/vendor/axe-core/axe.min.js changed"
    );
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, posted) = service
        .post("/v1/alerts", &json!({"app": "web", "signal": "disk_full"}))
        .await;
    assert_eq!(status, 202, "{posted}");
    let (failed, _) = failed_and_cancelled(&service, &repo).await;
    let mut gated = shell_task(&repo, "echo reviewed > reviewed.txt", "true");
    gated["review_policy"] = json!("manual");
    let gated = service.submit(&gated).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    service
        .wait_for_task(&gated, Duration::from_secs(60), |task| {
            task["status"] == "awaiting_approval"
        })
        .await;
    let (_driver, url) = start_driver(&chromedriver, root.path()).await;
    let phone = json!({"mobileEmulation": {"deviceMetrics":
        {"width": PHONE.0, "height": PHONE.1, "pixelRatio": 3.0, "touch": true}}});
    let client = browser_with(&url, &chromium, phone).await;
    let outcome = every_view(&client, &service, &failed, &gated).await;
    or_screenshot(client, &service, outcome).await;
}

async fn every_view(client: &Client, service: &Service, failed: &str, gated: &str) -> Step<()> {
    step(
        "open the page",
        client.goto(&format!("{}/", service.base)).await,
    )?;
    wait_for(client, "input[name=token]", Duration::from_secs(60)).await?;
    // Every view is checked; the failures of all of them are reported together.
    let mut problems: Vec<String> = check_view(client, "the login form")
        .await
        .err()
        .into_iter()
        .collect();
    log_in_page(client, service, ADMIN_TOKEN).await?;
    let gated = format!("#/task/{gated}");
    let failed = format!("#/task/{failed}");
    let views = [
        ("#/board", &["#board a.card"][..]),
        (
            &gated,
            &["#btn-approve", "#diff-text pre", "#timeline li"][..],
        ),
        (&failed, &["#runs tr[data-outcome]"][..]),
        ("#/tree", &["#tree li[data-actor=compass]"][..]),
        ("#/ledger", &["#balances tr[data-account]"][..]),
        ("#/ops", &["#incidents [data-incident]"][..]),
        ("#/fleet", &["#factories h2"][..]),
    ];
    for (route, waits) in views {
        if let Err(error) = open_and_settle(client, route, waits).await {
            problems.push(error);
            continue;
        }
        problems.extend(check_view(client, route).await.err());
        phone_screenshot(client, route).await?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// With `GLITCHLAB_UI_PHONE_SCREENSHOTS=<dir>`, saves each phone view there (to look at them).
async fn phone_screenshot(client: &Client, route: &str) -> Step<()> {
    let Some(dir) = std::env::var_os("GLITCHLAB_UI_PHONE_SCREENSHOTS") else {
        return Ok(());
    };
    let name = route.trim_start_matches("#/").replace('/', "-");
    let name: String = name.chars().take(20).collect();
    let png = step("phone screenshot", client.screenshot().await)?;
    std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).map_err(|e| e.to_string())
}

/// Opens `route` and waits for each of `waits`, then a little for the view's other panels.
async fn open_and_settle(client: &Client, route: &str, waits: &[&str]) -> Step<()> {
    open_view(client, route, waits[0]).await?;
    for css in &waits[1..] {
        wait_for(client, css, Duration::from_secs(60)).await?;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    Ok(())
}

/// The view fits the phone's width (no sideways scrolling) and axe (WCAG 2 A and AA rules) finds
/// no serious or critical violation: contrast, labels, names, keyboard access.
async fn check_view(client: &Client, view: &str) -> Step<()> {
    let injected = eval(client, "return typeof window.axe !== 'undefined'").await?;
    if injected != json!(true) {
        step(
            "inject axe-core",
            client
                .execute(&format!("{AXE_JS}\n;return true"), vec![])
                .await,
        )?;
    }
    let script = "const done = arguments[arguments.length - 1]; \
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}}) \
          .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical') \
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' ' + (n.failureSummary || '').slice(0, 200))})))) \
          .catch(e => done([{id: 'axe-error', nodes: [String(e)]}]))";
    let violations = step("run axe", client.execute_async(script, vec![]).await)?;
    if violations != json!([]) {
        return Err(format!(
            "{view}: axe finds {}",
            serde_json::to_string_pretty(&violations).unwrap_or_default()
        ));
    }
    let size = eval(
        client,
        "return [document.documentElement.scrollWidth, window.innerWidth]",
    )
    .await?;
    let (wide, inner) = (size[0].as_u64().unwrap_or(0), size[1].as_u64().unwrap_or(0));
    // A page wider than the phone makes the mobile browser zoom out: innerWidth grows too.
    if inner == 0 || wide > inner || inner > u64::from(PHONE.0) {
        return Err(format!(
            "{view}: {wide} px wide (viewport {inner} px) on a {} px phone: sideways scrolling",
            PHONE.0
        ));
    }
    Ok(())
}
