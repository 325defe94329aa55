//! The dashboard (`GET /`) in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against the real server.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them these
//! tests skip with a printed reason, except under `CI=true`, where they fail.
//! `SWAPCAST_SCREENSHOT=path.png` saves a screenshot of the page (the README's is made this way).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{create_admin_cli, spawn_app, ChildAdmin, ChildServer, PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show a change before the test calls it stuck.
const PATIENCE: Duration = Duration::from_secs(15);

/// One headless Chromium session.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver_url: String,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a browser, or `None` (printed) when they are not installed off CI.
    async fn start() -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|path| !std::path::Path::new(path).exists())
            .collect();
        if !missing.is_empty() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "{missing:?} required here (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipping: {missing:?} not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let http = reqwest::Client::new();
        let driver_url = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1200,800"]
            }
        }}});
        let created: Value = http
            .post(format!("{driver_url}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session: {created}"))
            .to_owned();
        Some(Browser {
            http,
            session,
            driver_url,
            driver,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(reply["value"]["error"].is_null(), "WebDriver {path}: {reply}");
        reply["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn eval(&self, script: &str, args: Value) -> Value {
        let body = json!({"script": script, "args": args});
        self.command(reqwest::Method::POST, "/execute/sync", Some(body)).await
    }

    /// Evaluates `script` until it returns `want` or [`PATIENCE`] runs out; returns the last value.
    async fn until(&self, script: &str, args: Value, want: &Value) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script, args.clone()).await;
            if &value == want || Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot_if_asked(&self) {
        if let Ok(path) = std::env::var("SWAPCAST_SCREENSHOT") {
            use base64::Engine;
            let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(png.as_str().unwrap())
                .unwrap();
            std::fs::write(path, png).unwrap();
        }
    }
}

impl Drop for Browser {
    /// Ends the session (which quits the browser) with a plain HTTP request, as `drop` cannot
    /// await; then stops chromedriver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.driver_url.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = TcpStream::connect(&address) {
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A station card's numbers and status, as the page shows them (null while it has no card).
const CARD: &str = r#"
    const card = document.querySelector(`[data-station-id="${arguments[0]}"]`);
    if (!card) return null;
    const field = (name) => card.querySelector(`[data-field="${name}"]`).textContent;
    return {name: field("name"), status: field("status"), available: field("available"),
            booked: field("booked"), total: field("total")};
"#;
const CONNECTION: &str = r#"return document.getElementById("connection").dataset.state;"#;
const FEED_IDS: &str = r##"return [...document.querySelectorAll("#feed li")].map((li) => Number(li.dataset.eventId)).sort((a, b) => a - b);"##;

fn card(name: &str, status: &str, available: u32, booked: u32, total: u32) -> Value {
    json!({"name": name, "status": status, "available": available.to_string(),
           "booked": booked.to_string(), "total": total.to_string()})
}

#[actix_web::test]
async fn the_dashboard_shows_stations_and_changes_without_a_reload() {
    let Some(browser) = Browser::start().await else { return };
    let app = spawn_app().await;
    let downtown = app.station("Downtown", None).await;
    app.battery(downtown, "D-1").await;
    let uptown = app.station("Uptown", None).await;

    browser.open(&app.url("/")).await;
    assert_eq!(browser.until(CONNECTION, json!([]), &json!("live")).await, "live");
    let shown = browser
        .until(CARD, json!([downtown]), &card("Downtown", "online", 1, 0, 1))
        .await;
    assert_eq!(shown, card("Downtown", "online", 1, 0, 1));
    let shown = browser
        .until(CARD, json!([uptown]), &card("Uptown", "online", 0, 0, 0))
        .await;
    assert_eq!(shown, card("Uptown", "online", 0, 0, 0));
    let marker = browser.eval("window.__same_page = true; return true;", json!([])).await;
    assert_eq!(marker, true);

    // Changes made elsewhere appear without a reload.
    app.battery(downtown, "D-2").await;
    let shown = browser
        .until(CARD, json!([downtown]), &card("Downtown", "online", 2, 0, 2))
        .await;
    assert_eq!(
        shown,
        card("Downtown", "online", 2, 0, 2),
        "the count follows a REST change"
    );
    let driver = app.user("user").await;
    app.book(downtown, &driver).await;
    let shown = browser
        .until(CARD, json!([downtown]), &card("Downtown", "online", 1, 1, 2))
        .await;
    assert_eq!(shown, card("Downtown", "online", 1, 1, 2));
    app.patch(
        &format!("/api/stations/{uptown}"),
        Some(&app.admin.token),
        json!({"status": "maintenance"}),
    )
    .await
    .expect(200);
    let shown = browser
        .until(CARD, json!([uptown]), &card("Uptown", "maintenance", 0, 0, 0))
        .await;
    assert_eq!(shown, card("Uptown", "maintenance", 0, 0, 0));
    let feed = browser.eval(FEED_IDS, json!([])).await;
    assert_eq!(
        feed.as_array().map(Vec::len),
        Some(5),
        "two events for the battery and the booking, one for the status: {feed}"
    );
    assert_eq!(
        browser.eval("return window.__same_page === true;", json!([])).await,
        true
    );

    // An admin signs in on the page, adds a battery and changes a status through it.
    browser
        .eval(
            r#"const form = document.getElementById("signin");
               form.email.value = arguments[0]; form.password.value = arguments[1];
               form.requestSubmit(); return true;"#,
            json!([app.admin.email, PASSWORD]),
        )
        .await;
    let manageable = format!(r#"return document.querySelector('[data-station-id="{uptown}"]').dataset.manageable;"#);
    assert_eq!(browser.until(&manageable, json!([]), &json!("true")).await, "true");
    browser
        .eval(
            r#"const form = document.querySelector(`[data-station-id="${arguments[0]}"] [data-action="add-battery"]`);
               form.serial.value = "FROM-PAGE-1"; form.model.value = "Model P"; form.requestSubmit();
               const status = document.querySelector(`[data-station-id="${arguments[0]}"] [data-action="status"]`);
               status.value = "online"; status.dispatchEvent(new Event("change"));
               return true;"#,
            json!([uptown]),
        )
        .await;
    let shown = browser
        .until(CARD, json!([uptown]), &card("Uptown", "online", 1, 0, 1))
        .await;
    assert_eq!(shown, card("Uptown", "online", 1, 0, 1), "the page's own changes, live");
    let batteries = app
        .get(&format!("/api/stations/{uptown}/batteries"), Some(&app.admin.token))
        .await
        .expect(200);
    assert_eq!(batteries["items"][0]["serial"], "FROM-PAGE-1");
    let station = app.get(&format!("/api/stations/{uptown}"), None).await.expect(200);
    assert_eq!(station["status"], "online");

    browser.screenshot_if_asked().await;

    // On a phone's width nothing needs sideways scrolling.
    browser
        .command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 390, "height": 844})),
        )
        .await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth;";
    assert_eq!(
        browser.until(fits, json!([]), &json!(true)).await,
        true,
        "no sideways scrolling at 390 px"
    );
}

#[actix_web::test]
async fn a_dropped_dashboard_resumes_with_last_event_id_and_misses_nothing() {
    let Some(browser) = Browser::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dash.db").display());
    create_admin_cli(&url, "dash@swapcast.test");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let first = ChildServer::start_with(&url, &[("SWAPCAST_BIND", &bind)]);
    let admin = ChildAdmin::sign_in(&first, "dash@swapcast.test").await;
    let station = admin.station("Harbour").await;
    browser.open(&format!("http://{bind}/")).await;
    assert_eq!(browser.until(CONNECTION, json!([]), &json!("live")).await, "live");
    assert_eq!(
        browser
            .until(CARD, json!([station]), &card("Harbour", "online", 0, 0, 0))
            .await,
        card("Harbour", "online", 0, 0, 0)
    );

    browser.eval("window.__same_page = true; return true;", json!([])).await;

    // The page's server dies; changes are made through another node on the same database.
    drop(first);
    assert_eq!(
        browser.until(CONNECTION, json!([]), &json!("reconnecting")).await,
        "reconnecting"
    );
    let other = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&other, "dash@swapcast.test").await;
    for serial in ["GAP-1", "GAP-2"] {
        let made = admin
            .post(
                &format!("/api/stations/{station}/batteries"),
                json!({"serial": serial, "model": "M"}),
            )
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
    }
    let missed: Vec<i64> = admin.get("/api/events?after=0&limit=500").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "battery_added" || e["type"] == "inventory_update")
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(missed.len(), 4);

    // The page's server comes back; the page resumes and shows what it missed, in its feed too
    // (a fresh snapshot would update the counts but list no events).
    let _back = ChildServer::start_with(&url, &[("SWAPCAST_BIND", &bind)]);
    assert_eq!(
        browser
            .until(CARD, json!([station]), &card("Harbour", "online", 2, 0, 2))
            .await,
        card("Harbour", "online", 2, 0, 2)
    );
    assert_eq!(browser.eval(CONNECTION, json!([])).await, "live");
    assert_eq!(browser.eval(FEED_IDS, json!([])).await, json!(missed));
    assert_eq!(
        browser.eval("return window.__same_page === true;", json!([])).await,
        true,
        "no reload"
    );
}
