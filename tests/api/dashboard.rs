//! The dashboard (`GET /`) and the protocol console (`GET /console`) in a real browser: headless
//! Chromium driven over WebDriver (chromedriver), against the real server. Both are built on the
//! client library the server serves at `/client.js`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them these
//! tests skip with a printed reason, except under `CI=true`, where they fail.
//! `SWAPCAST_SCREENSHOT=path.png` saves a screenshot of the page on a network of 12,000 stations
//! (the README's is made this way).

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
    // A driver watches Uptown: the page counts them, and names them once an admin signs in.
    let watcher = app.user("user").await;
    let (mut watching, _) =
        crate::wsclient::Client::open(&app, &format!("/ws/stations/{uptown}/"), Some(&watcher.token)).await;
    watching.until(|m| m["action"] == "snapshot").await;

    browser.open(&app.url("/")).await;
    assert_eq!(browser.until(CONNECTION, json!([]), &json!("live")).await, "live");
    let viewers = r#"const cell = document.querySelector(`[data-station-id="${arguments[0]}"] [data-field="viewers"]`);
           return cell ? cell.textContent : null;"#;
    assert_eq!(
        browser.until(viewers, json!([uptown]), &json!("1 watching")).await,
        "1 watching",
        "anonymous: the count alone"
    );
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
    assert_eq!(
        browser
            .until(viewers, json!([uptown]), &json!("1 watching: Driver"))
            .await,
        "1 watching: Driver",
        "staff see who"
    );
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

    // Staff announce from the page: the announcement is an event, in the live feed like the others.
    browser
        .eval(
            r#"const form = document.querySelector(`[data-station-id="${arguments[0]}"] [data-action="announce"]`);
               form.message.value = "Closed for maintenance in 10 minutes"; form.level.value = "warning";
               form.requestSubmit(); return true;"#,
            json!([uptown]),
        )
        .await;
    let announced = r#"const li = document.querySelector('#feed li[data-level]');
                       return li ? [li.dataset.level, li.textContent.includes(arguments[0])] : null;"#;
    assert_eq!(
        browser
            .until(
                announced,
                json!(["Closed for maintenance in 10 minutes"]),
                &json!(["warning", true])
            )
            .await,
        json!(["warning", true]),
        "the announcement in the live feed"
    );
    let logged = app.events_after(0).await;
    let announcement = logged
        .iter()
        .find(|e| e["type"] == "station_announcement")
        .expect("logged");
    assert_eq!(
        (&announcement["station_id"], &announcement["payload"]["message"]),
        (&json!(uptown), &json!("Closed for maintenance in 10 minutes"))
    );

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

/// The network's totals as the page shows them, and whether they are its own live sums.
const TOTALS: &str = r##"
    const totals = {source: document.getElementById("totals").dataset.source};
    for (const cell of document.querySelectorAll("#totals [data-total]")) totals[cell.dataset.total] = Number(cell.dataset.value);
    return totals;
"##;
/// How many stations the filters let through, of how many.
const SHOWN: &str = r##"const shown = document.getElementById("shown").dataset;
    return {count: Number(shown.count), of: Number(shown.of)};"##;
/// The ids of the station rows in the DOM, top first.
const ROWS: &str = r##"return [...document.querySelectorAll("#stations [data-station-id]")].map((row) => Number(row.dataset.stationId));"##;
/// Sets a control (the search box, a filter, the sort) as someone would.
const SET: &str = r##"const control = document.getElementById(arguments[0]);
    control.value = arguments[1];
    control.dispatchEvent(new Event(control.tagName === "INPUT" ? "input" : "change"));
    return true;"##;
/// The needs-attention list: its count and the stations it shows, top first.
const ATTENTION: &str = r##"const list = document.getElementById("attention");
    return {count: Number(list.dataset.count),
            shown: [...list.querySelectorAll("[data-attention-id]")].map((li) => Number(li.dataset.attentionId))};"##;

/// What the page's totals should be, from `GET /api/network`.
fn totals_of(network: &Value) -> Value {
    let by_status = &network["stations_by_status"];
    json!({"source": "live", "stations": network["stations"], "online": by_status["online"],
           "offline": by_status["offline"], "maintenance": by_status["maintenance"],
           "available": network["available_batteries"], "booked": network["booked_batteries"],
           "charging": network["charging_batteries"], "total": network["total_batteries"]})
}

const BIG_STATIONS: usize = 12_000;
const BIG_BATTERIES: usize = 36_000;

/// Runs the CLI and asserts it succeeded; returns what it printed.
fn swapcast_cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[actix_web::test]
async fn the_dashboard_keeps_twelve_thousand_stations_live_with_few_rows_in_the_dom() {
    let Some(browser) = Browser::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gogoro.db").display());
    let (stations, batteries) = (BIG_STATIONS.to_string(), BIG_BATTERIES.to_string());
    let out = dir.path().to_str().unwrap();
    swapcast_cli(&[
        "generate-network",
        "--stations",
        &stations,
        "--batteries",
        &batteries,
        "--out",
        out,
    ]);
    let (stations_csv, batteries_csv) = (format!("{out}/stations.csv"), format!("{out}/batteries.csv"));
    let report = swapcast_cli(&[
        "import",
        "--database-url",
        &url,
        "--stations",
        &stations_csv,
        "--batteries",
        &batteries_csv,
    ]);
    assert!(report.contains(&format!("{BIG_STATIONS} stations")), "{report}");
    create_admin_cli(&url, "gogoro@swapcast.test");
    let server = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&server, "gogoro@swapcast.test").await;
    let network = admin.get("/api/network").await;
    assert_eq!(network["stations"], BIG_STATIONS);
    assert_eq!(network["total_batteries"], BIG_BATTERIES);
    let offline = network["stations_by_status"]["offline"].as_i64().unwrap();
    assert!(offline > 0, "the made-up network has offline stations: {network}");

    browser.open(&format!("{}/", server.address())).await;
    assert_eq!(browser.until(CONNECTION, json!([]), &json!("live")).await, "live");
    // The whole network, summed by the page itself, equals the server's totals. Reading 12,000
    // stations (a snapshot and 24 pages) may take a while on a busy machine: a few rounds of patience.
    let want = totals_of(&network);
    let mut shown = Value::Null;
    for _ in 0..4 {
        shown = browser.until(TOTALS, json!([]), &want).await;
        if shown == want {
            break;
        }
    }
    assert_eq!(shown, want);
    let all = json!({"count": BIG_STATIONS, "of": BIG_STATIONS});
    assert_eq!(browser.until(SHOWN, json!([]), &all).await, all);
    let marker = browser.eval("window.__same_page = true; return true;", json!([])).await;
    assert_eq!(marker, true);

    // Only the rows on screen are in the DOM, at the top of the list and in its middle.
    let rows = browser.eval(ROWS, json!([])).await;
    let first_rows = rows.as_array().unwrap().clone();
    assert!(
        !first_rows.is_empty() && first_rows.len() < 200,
        "{} rows in the DOM",
        first_rows.len()
    );
    browser
        .eval(
            r##"const viewport = document.getElementById("viewport");
               viewport.scrollTop = viewport.scrollHeight / 2; return true;"##,
            json!([]),
        )
        .await;
    let moved = r##"const rows = [...document.querySelectorAll("#stations [data-station-id]")];
        return rows.length > 0 && rows.length < 200 && rows[0].dataset.stationId !== String(arguments[0]);"##;
    assert_eq!(
        browser.until(moved, json!([first_rows[0]]), &json!(true)).await,
        true,
        "scrolled halfway, other rows (and still few) are drawn"
    );

    // Search: one station's name narrows the list to it.
    let listed = admin
        .get("/api/stations?status=online&sort=name&limit=2&q=GoStation%2004")
        .await;
    let (target, other) = (&listed["items"][0], &listed["items"][1]);
    let (target_id, other_id) = (target["id"].as_i64().unwrap(), other["id"].as_i64().unwrap());
    let target_name = target["name"].as_str().unwrap();
    let other_name = other["name"].as_str().unwrap();
    browser.eval(SET, json!(["search", target_name])).await;
    let one = json!({"count": 1, "of": BIG_STATIONS});
    assert_eq!(browser.until(SHOWN, json!([]), &one).await, one);
    assert_eq!(
        browser.until(ROWS, json!([]), &json!([target_id])).await,
        json!([target_id])
    );
    assert_eq!(
        browser.eval(CARD, json!([target_id])).await,
        card(target_name, "online", 3, 0, 3)
    );
    // The address matches too, case aside.
    let address = target["address"].as_str().unwrap().to_uppercase();
    browser.eval(SET, json!(["search", address])).await;
    let by_address = r##"return document.querySelector(`#stations [data-station-id="${arguments[0]}"]`) !== null
        && Number(document.getElementById("shown").dataset.count) < arguments[1];"##;
    assert_eq!(
        browser
            .until(by_address, json!([target_id, BIG_STATIONS]), &json!(true))
            .await,
        true,
        "a search by address finds the station"
    );
    browser.eval(SET, json!(["search", ""])).await;
    assert_eq!(browser.until(SHOWN, json!([]), &all).await, all);

    // The status filter: exactly the network's offline stations, and only they are drawn.
    browser.eval(SET, json!(["status-filter", "offline"])).await;
    let offline_shown = json!({"count": offline, "of": BIG_STATIONS});
    assert_eq!(browser.until(SHOWN, json!([]), &offline_shown).await, offline_shown);
    let statuses = r##"return [...new Set([...document.querySelectorAll("#stations [data-field=status]")].map((b) => b.textContent))];"##;
    assert_eq!(
        browser.until(statuses, json!([]), &json!(["offline"])).await,
        json!(["offline"])
    );
    browser.eval(SET, json!(["status-filter", "all"])).await;
    let none = json!({"count": 0, "of": BIG_STATIONS});
    browser.eval(SET, json!(["availability-filter", "none"])).await;
    assert_eq!(
        browser.until(SHOWN, json!([]), &none).await,
        none,
        "every station has batteries"
    );
    browser.eval(SET, json!(["availability-filter", "any"])).await;
    assert_eq!(browser.until(SHOWN, json!([]), &all).await, all);

    // Most available first: the server's first, then, once a battery is added elsewhere, that station.
    browser.eval(SET, json!(["sort", "-available"])).await;
    let most = admin.get("/api/stations?sort=-available&limit=1").await["items"][0]["id"].clone();
    let first_row = "return Number(document.querySelector('#stations [data-station-id]').dataset.stationId);";
    assert_eq!(browser.until(first_row, json!([]), &most).await, most);
    let attention_before = browser.eval(ATTENTION, json!([])).await;
    let made = admin
        .post(
            &format!("/api/stations/{target_id}/batteries"),
            json!({"serial": "GG-LIVE-1", "model": "Gogoro Smartscooter Battery V3"}),
        )
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    assert_eq!(
        browser.until(first_row, json!([]), &json!(target_id)).await,
        json!(target_id),
        "the station with a fourth battery moves to the top"
    );
    assert_eq!(
        browser
            .until(CARD, json!([target_id]), &card(target_name, "online", 4, 0, 4))
            .await,
        card(target_name, "online", 4, 0, 4)
    );

    // Another station goes offline: its row, the totals and the needs-attention list follow.
    let patched = admin
        .http
        .patch(format!("{}/api/stations/{other_id}", admin.address))
        .bearer_auth(&admin.token)
        .json(&json!({"status": "offline"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    browser.eval(SET, json!(["search", other_name])).await;
    assert_eq!(
        browser
            .until(CARD, json!([other_id]), &card(other_name, "offline", 3, 0, 3))
            .await,
        card(other_name, "offline", 3, 0, 3)
    );
    let network = admin.get("/api/network").await;
    assert_eq!(network["stations_by_status"]["offline"], offline + 1);
    assert_eq!(network["available_batteries"], BIG_BATTERIES + 1);
    let want = totals_of(&network);
    assert_eq!(browser.until(TOTALS, json!([]), &want).await, want);
    let attention_count = attention_before["count"].as_i64().unwrap() + 1;
    let on_top = r##"const list = document.getElementById("attention");
        const first = list.querySelector("[data-attention-id]");
        return {count: Number(list.dataset.count), first: first && Number(first.dataset.attentionId),
                reason: first && first.dataset.reason};"##;
    let want = json!({"count": attention_count, "first": other_id, "reason": "offline"});
    assert_eq!(browser.until(on_top, json!([]), &want).await, want);
    let shown = browser.eval(ATTENTION, json!([])).await;
    assert_eq!(
        shown["shown"].as_array().map(Vec::len),
        Some(50),
        "the list shows its first 50"
    );

    // The chart: an hour of minutes, the import's events and the live ones counted, and the
    // network's available batteries as now.
    let chart = r##"const chart = document.getElementById("chart");
        return {minutes: chart.querySelectorAll('[data-series="events"] rect').length,
                counted: Number(chart.dataset.eventsHour) >= arguments[0],
                available: Number(chart.dataset.available)};"##;
    let events: i64 = network["events_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum();
    let want = json!({"minutes": 60, "counted": true, "available": BIG_BATTERIES + 1});
    assert_eq!(browser.until(chart, json!([events]), &want).await, want);
    assert_eq!(
        browser.eval("return window.__same_page === true;", json!([])).await,
        true,
        "no reload"
    );

    // The README's screenshot: the whole network, most available first, on a taller window
    // (still with few rows drawn).
    browser.eval(SET, json!(["search", ""])).await;
    assert_eq!(browser.until(SHOWN, json!([]), &all).await, all);
    browser
        .command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1280, "height": 1000})),
        )
        .await;
    let few = r##"const rows = document.querySelectorAll("#stations [data-station-id]").length;
        return rows > 10 && rows < 200;"##;
    assert_eq!(browser.until(few, json!([]), &json!(true)).await, true);
    browser.screenshot_if_asked().await;
}

/// The frames the console shows, newest first: `[direction, text]`.
const FRAMES: &str =
    r##"return [...document.querySelectorAll("#frames li")].map((li) => [li.dataset.direction, li.textContent]);"##;
/// Fills a field of the console.
const FILL: &str = r##"const field = document.getElementById(arguments[0]);
    if (!field) return false;
    field.value = arguments[1];
    return true;"##;
/// Clicks a button of the console.
const CLICK: &str = r##"const button = document.getElementById(arguments[0]);
    if (!button) return false;
    button.click();
    return true;"##;
/// Whether a frame seen so far matches: its direction, and text it contains.
const SAW: &str = r##"return [...document.querySelectorAll("#frames li")]
    .some((li) => li.dataset.direction === arguments[0] && li.textContent.includes(arguments[1]));"##;

/// The protocol console (`/console`), built on the client library in a real browser: it signs in
/// with a token, subscribes, sends requests and raw messages, and shows every frame both ways.
#[actix_web::test]
async fn the_console_shows_every_frame_both_ways() {
    let Some(browser) = Browser::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    create_admin_cli(&url, "console@swapcast.test");
    let server = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&server, "console@swapcast.test").await;
    let station = admin.station("Consoled").await;
    browser.open(&format!("{}/console", server.address())).await;
    let yes = json!(true);
    assert_eq!(browser.until(FILL, json!(["token", admin.token]), &yes).await, yes);
    browser.eval(FILL, json!(["path", "/ws"])).await;
    browser.eval(CLICK, json!(["connect"])).await;
    let state = r#"return document.getElementById("state").dataset.state;"#;
    assert_eq!(browser.until(state, json!([]), &json!("open")).await, "open");
    // The in-band sign-in went out and was answered.
    assert_eq!(browser.until(SAW, json!(["out", "\"authenticate\""]), &yes).await, yes);
    assert_eq!(browser.until(SAW, json!(["in", "\"authenticated\""]), &yes).await, yes);

    let channel = format!("station:{station}");
    browser.eval(FILL, json!(["channel", channel])).await;
    browser.eval(CLICK, json!(["subscribe"])).await;
    assert_eq!(browser.until(SAW, json!(["in", "\"snapshot\""]), &yes).await, yes);
    admin
        .post(
            &format!("/api/stations/{station}/batteries"),
            json!({"serial": "CONSOLE-1", "model": "M"}),
        )
        .await
        .unwrap();
    assert_eq!(browser.until(SAW, json!(["in", "\"battery_added\""]), &yes).await, yes);

    // A request and its answer, shown as the client resolved it.
    browser
        .eval(FILL, json!(["data", format!("{{\"station_id\":{station}}}")]))
        .await;
    browser.eval(FILL, json!(["action", "get_station"])).await;
    browser.eval(CLICK, json!(["send"])).await;
    let result = r#"const r = document.getElementById("result"); return r.dataset.ok === "true" && r.textContent.includes("Consoled");"#;
    assert_eq!(browser.until(result, json!([]), &yes).await, yes);
    // An error, typed with the contract's code.
    browser.eval(FILL, json!(["data", "{\"station_id\":999999}"])).await;
    browser.eval(CLICK, json!(["send"])).await;
    let failed = r#"const r = document.getElementById("result"); return r.dataset.ok === "false" && r.textContent.includes("not_found");"#;
    assert_eq!(browser.until(failed, json!([]), &yes).await, yes);
    // A raw message the client would never send, and the server's answer to it.
    browser.eval(FILL, json!(["raw", "{not json"])).await;
    browser.eval(CLICK, json!(["send-raw"])).await;
    assert_eq!(browser.until(SAW, json!(["in", "Invalid JSON"]), &yes).await, yes);
    // A channel refused leaves the list of channels held, so it can be tried again.
    browser.eval(FILL, json!(["channel", "nonsense"])).await;
    browser.eval(CLICK, json!(["subscribe"])).await;
    assert_eq!(browser.until(SAW, json!(["in", "unknown_channel"]), &yes).await, yes);
    let held = r##"return [...document.querySelectorAll("#channels li")].map((li) => li.textContent).join(",");"##;
    assert_eq!(browser.until(held, json!([]), &json!(channel)).await, json!(channel));
    let frames = browser.eval(FRAMES, json!([])).await;
    assert!(frames.as_array().is_some_and(|f| f.len() >= 8), "{frames}");
}

/// `/client.js` is the client library's own file, byte for byte: one source for the npm package
/// and the pages.
#[actix_web::test]
async fn the_client_library_is_served_from_its_one_source() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/client.js")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/swapcast.js")).unwrap();
    assert_eq!(response.text().await.unwrap(), source);
    for page in ["/", "/console"] {
        let html = app
            .client
            .get(app.url(page))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains(r#"from "/client.js""#), "{page} is built on the client");
    }
}
