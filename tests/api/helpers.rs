//! `spawn_app` and friends: a running server, its fresh database, and clients for each role.

use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use swapcast::config::Settings;
use swapcast::startup::{self, Application};

pub const JWT_SECRET: &str = "test-secret-not-for-production-0123456789";
pub const PASSWORD: &str = "correct horse battery";

/// A fresh database for one test, dropped with it.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => format!("sqlite://{}", dir.path().join("swapcast.db").display()),
            TestDb::Postgres { admin_url, name } => format!("{admin_url}/{name}"),
        }
    }
}

impl TestDb {
    /// Drops a PostgreSQL test database, closing its connections (a SQLite one goes with its folder).
    pub fn destroy(&self) {
        if let TestDb::Postgres { admin_url, name } = self {
            if let Ok(mut conn) = PgConnection::establish(&format!("{admin_url}/postgres")) {
                // Best effort: a leftover test database is harmless and has a unique name.
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn pg_admin_url() -> String {
    std::env::var("SWAPCAST_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh PostgreSQL database, or `None` (with the reason printed) when PostgreSQL cannot be
/// reached on a developer machine. Under `CI=true`, or when PostgreSQL was asked for, that is a
/// failure instead.
pub fn postgres_db() -> Option<TestDb> {
    let admin_url = pg_admin_url();
    match PgConnection::establish(&format!("{admin_url}/postgres")) {
        Ok(mut conn) => {
            let name = format!(
                "swapcast_test_{}",
                swapcast::auth::tokens::random_secret()[..16].to_owned()
            );
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .expect("create test database");
            Some(TestDb::Postgres { admin_url, name })
        }
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true") || wants_postgres();
            assert!(
                !required,
                "PostgreSQL at {admin_url} is required here but unreachable: {e}"
            );
            eprintln!("skipping: PostgreSQL at {admin_url} is unreachable ({e})");
            None
        }
    }
}

fn wants_postgres() -> bool {
    std::env::var("SWAPCAST_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// The database the suite runs on: SQLite unless `SWAPCAST_TEST_DATABASE=postgres`.
pub fn fresh_db() -> TestDb {
    if wants_postgres() {
        postgres_db().expect("PostgreSQL was asked for")
    } else {
        TestDb::Sqlite(tempfile::tempdir().expect("temp dir"))
    }
}

/// A signed-in user of the running app.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: i64,
    pub email: String,
    pub token: String,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub admin: TestUser,
    pub db: TestDb,
}

pub fn test_settings(db: &TestDb) -> Settings {
    Settings {
        database_url: db.url(),
        bind: "127.0.0.1:0".into(),
        jwt_secret: Some(JWT_SECRET.into()),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(fresh_db(), |_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(fresh_db(), tweak).await
}

/// Starts the server on `db` and signs in a first admin (made by the CLI's own code path).
pub async fn spawn_app_on(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(&db);
    tweak(&mut settings);
    let app = Application::build(settings.clone()).await.expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin_email = "admin@swapcast.test";
    startup::create_admin(&settings, admin_email, PASSWORD.into(), "Admin")
        .await
        .expect("create admin");
    let mut app = TestApp {
        address,
        client,
        admin: TestUser {
            id: 0,
            email: admin_email.into(),
            token: String::new(),
        },
        db,
    };
    app.admin = app.login(admin_email, PASSWORD).await;
    app
}

/// A response's status and JSON body (`Null` when the body is empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts the contract's error body with this status and code.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "unexpected error: {body}");
        assert!(body["error"]["message"].is_string(), "error without message: {body}");
        body
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::reply(request.send().await.expect("request sent")).await
    }

    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn register(&self, email: &str) -> Value {
        self.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "display_name": "Driver"}),
        )
        .await
        .expect(201)
    }

    pub async fn login(&self, email: &str, password: &str) -> TestUser {
        let body = self
            .post("/api/auth/login", None, json!({"email": email, "password": password}))
            .await
            .expect(200);
        TestUser {
            id: body["user"]["id"].as_i64().unwrap(),
            email: email.to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Signs the admin in with `?cookie=true`; returns the whole `Set-Cookie` header.
    pub async fn admin_cookie(&self) -> String {
        let login = self
            .client
            .post(self.url("/api/auth/login?cookie=true"))
            .json(&json!({"email": self.admin.email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        login
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// A new signed-in user with the given role (`user`, `operator`, `admin`).
    pub async fn user(&self, role: &str) -> TestUser {
        let email = format!(
            "{role}-{}@swapcast.test",
            &swapcast::auth::tokens::random_secret()[..10]
        );
        let id = self.register(&email).await["user"]["id"].as_i64().unwrap();
        if role != "user" {
            self.patch(
                &format!("/api/users/{id}"),
                Some(&self.admin.token),
                json!({"role": role}),
            )
            .await
            .expect(200);
        }
        self.login(&email, PASSWORD).await
    }

    pub async fn station(&self, name: &str, operator: Option<&TestUser>) -> i64 {
        let body = json!({"name": name, "address": "1 Main St", "operator_id": operator.map(|o| o.id)});
        self.post("/api/stations", Some(&self.admin.token), body)
            .await
            .expect(201)["id"]
            .as_i64()
            .unwrap()
    }

    pub async fn battery(&self, station: i64, serial: &str) -> i64 {
        let body = json!({"serial": serial, "model": "Tesla Battery - Model 3", "soc": 90, "soh": 98});
        self.post(
            &format!("/api/stations/{station}/batteries"),
            Some(&self.admin.token),
            body,
        )
        .await
        .expect(201)["id"]
            .as_i64()
            .unwrap()
    }

    pub async fn book(&self, station: i64, user: &TestUser) -> Value {
        self.post("/api/bookings", Some(&user.token), json!({"station_id": station}))
            .await
            .expect(201)
    }

    /// The newest event id so far.
    pub async fn last_event_id(&self) -> i64 {
        let mut after = 0;
        loop {
            let page = self
                .get(&format!("/api/events?after={after}&limit=500"), Some(&self.admin.token))
                .await
                .expect(200);
            match page["items"].as_array().unwrap().last() {
                Some(last) => after = last["event_id"].as_i64().unwrap(),
                None => return after,
            }
        }
    }

    /// Every event after `after`, oldest first, however many pages that takes.
    pub async fn all_events_after(&self, mut after: i64) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let page = self.events_after(after).await;
            match page.last() {
                Some(last) => after = last["event_id"].as_i64().unwrap(),
                None => return all,
            }
            all.extend(page);
        }
    }

    /// Events after `after`, oldest first (at most 500).
    pub async fn events_after(&self, after: i64) -> Vec<Value> {
        let page = self
            .get(&format!("/api/events?after={after}&limit=500"), Some(&self.admin.token))
            .await
            .expect(200);
        page["items"].as_array().unwrap().clone()
    }
}

/// Just the `type`s of some events.
pub fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The real binary as a child process, for tests that signal or kill it.
pub struct ChildServer {
    pub child: std::process::Child,
    pub port: u16,
    /// Every line the server logged.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `swapcast serve` on `database_url` and a free loopback port; waits until it listens.
    pub fn start(database_url: &str) -> ChildServer {
        Self::start_with(database_url, &[])
    }

    /// The same, with extra environment (which may override the defaults here).
    pub fn start_with(database_url: &str, env: &[(&str, &str)]) -> ChildServer {
        use std::io::{BufRead, BufReader};
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"));
        command
            .env("DATABASE_URL", database_url)
            .env("SWAPCAST_BIND", "127.0.0.1:0")
            .env("SWAPCAST_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn,swapcast::startup=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = logs.clone();
        std::thread::spawn(move || {
            stderr
                .lines()
                .map_while(Result::ok)
                .for_each(|l| sink.lock().unwrap().push(l))
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("the server logs its port").unwrap();
            let found = port_in(&line);
            logs.lock().unwrap().push(line);
            if let Some(port) = found {
                break port;
            }
        };
        // Keep collecting the log so the server never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        ChildServer { child, port, logs }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for the process to exit after a signal (20 s at most) and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // Best effort: the process may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in the "swapcast is serving" log line, human (`port=N`) or JSON (`"port":N`).
fn port_in(line: &str) -> Option<u16> {
    let rest = line.split("port=").nth(1).or_else(|| line.split("\"port\":").nth(1))?;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// A counter or gauge from a child server's `/metrics`.
pub async fn metric(server: &ChildServer, name: &str) -> f64 {
    metric_at(&format!("{}/metrics", server.address()), name).await
}

/// One value of the Prometheus text at `url` (a `/metrics` address).
pub async fn metric_at(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Runs the CLI's `create-admin` on a database.
pub fn create_admin_cli(database_url: &str, email: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .args(["create-admin", "--email", email, "--database-url", database_url])
        .env("SWAPCAST_ADMIN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A user signed in to a [`ChildServer`]: usually the admin made with [`create_admin_cli`].
pub struct ChildAdmin {
    pub http: reqwest::Client,
    pub address: String,
    pub token: String,
}

impl ChildAdmin {
    pub async fn sign_in(server: &ChildServer, email: &str) -> ChildAdmin {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let address = server.address();
        let login: Value = http
            .post(format!("{address}/api/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().expect("signed in").to_owned();
        ChildAdmin { http, address, token }
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.address))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.address))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub async fn station(&self, name: &str) -> i64 {
        let created: Value = self
            .post("/api/stations", json!({"name": name}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["id"].as_i64().unwrap()
    }
}
