//! Hostile peers (CONTRACT §3.1): cross-site writes with the session cookie.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// A request with the admin's session cookie, from `origin` (and `referer`), as a browser sends it.
async fn with_cookie(
    app: &TestApp,
    cookie: &str,
    method: Method,
    path: &str,
    origin: Option<&str>,
    referer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("cookie", cookie.split(';').next().unwrap());
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(referer) = referer {
        request = request.header("referer", referer);
    }
    if let Some(body) = body {
        // What a cross-site form or a no-preflight fetch can send.
        request = request.header("content-type", "text/plain").body(body.to_owned());
    }
    let reply = TestApp::reply(request.send().await.unwrap()).await;
    (reply.status.as_u16(), reply.body)
}

#[actix_web::test]
async fn cookie_writes_from_other_origins_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let cookie = app.admin_cookie().await;
    let own = app.address.clone();
    let before = app.get("/api/stations", None).await.expect(200)["items"]
        .as_array()
        .unwrap()
        .len();
    let events_before = app.last_event_id().await;
    let station = r#"{"name":"Evil"}"#;
    let everyone = r#"{"all":true,"title":"Urgent","message":"Sign in again at evil.example"}"#;
    for (path, body) in [("/api/stations", station), ("/api/notifications", everyone)] {
        for (origin, referer) in [
            (Some("http://evil.example"), None),
            // Another port of the same host is another origin; SameSite would not stop it.
            (Some("http://127.0.0.1:1"), None),
            (None, Some("http://evil.example/page")),
            (None, None),
        ] {
            let (status, body) = with_cookie(&app, &cookie, Method::POST, path, origin, referer, Some(body)).await;
            assert_eq!(status, 403, "{path} from {origin:?}/{referer:?}: {body}");
            assert_eq!(body["error"]["code"], "cross_site_request", "{body}");
        }
    }
    let after = app.get("/api/stations", None).await.expect(200)["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "no station was made");
    assert_eq!(app.last_event_id().await, events_before, "nothing was announced");

    // From this server's own pages the cookie works, by Origin or by Referer; reads need neither.
    let (status, body) = with_cookie(
        &app,
        &cookie,
        Method::POST,
        "/api/stations",
        Some(&own),
        None,
        Some(station),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let referer = format!("{own}/");
    let (status, _) = with_cookie(
        &app,
        &cookie,
        Method::POST,
        "/api/stations",
        None,
        Some(&referer),
        Some(station),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = with_cookie(
        &app,
        &cookie,
        Method::GET,
        "/api/me",
        Some("http://evil.example"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // A bearer token is never attached by a browser on its own: not affected.
    let bearer = app
        .client
        .post(app.url("/api/stations"))
        .bearer_auth(&app.admin.token)
        .header("origin", "http://evil.example")
        .json(&json!({"name": "Scripted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 201);
    // `logout?all=true` by cookie is a write like any other.
    let (status, body) = with_cookie(
        &app,
        &cookie,
        Method::POST,
        "/api/auth/logout?all=true",
        Some("http://evil.example"),
        None,
        Some("{}"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    app.get("/api/me", Some(&app.admin.token)).await.expect(200);
}

/// After `SWAPCAST_LOGIN_ATTEMPTS` failed sign-ins one account is refused with 429 and
/// `Retry-After` — the right password too — while other accounts sign in as before.
#[actix_web::test]
async fn password_guessing_is_throttled_per_account() {
    let app = crate::helpers::spawn_app_with(|s| s.login_attempts = 3).await;
    let victim = app.user("user").await;
    let bystander = app.user("user").await;
    let login = |email: String, password: &'static str| {
        let app = &app;
        async move {
            app.post("/api/auth/login", None, json!({"email": email, "password": password}))
                .await
        }
    };
    for _ in 0..3 {
        login(victim.email.clone(), "wrong password")
            .await
            .expect_error(401, "invalid_credentials");
    }
    let throttled = login(victim.email.to_uppercase(), crate::helpers::PASSWORD).await;
    let retry_after: u64 = throttled.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 0 && retry_after <= 15 * 60, "{retry_after}");
    throttled.expect_error(429, "too_many_attempts");
    login(bystander.email.clone(), crate::helpers::PASSWORD)
        .await
        .expect(200);
    // An email nobody has is throttled the same way: the answers tell no accounts apart.
    for _ in 0..3 {
        login("nobody@swapcast.test".into(), "guess")
            .await
            .expect_error(401, "invalid_credentials");
    }
    login("nobody@swapcast.test".into(), "guess")
        .await
        .expect_error(429, "too_many_attempts");
}

/// Pings and binary frames count against the rate limit like any message: a flood of them is
/// told `rate_limited`, and not every ping gets its pong.
#[actix_web::test]
async fn pings_and_binary_frames_count_against_the_rate_limit() {
    use tokio_tungstenite::tungstenite::Message;
    let app = crate::helpers::spawn_app_with(|s| s.rate_limit = 5).await;
    for flood in [Message::Ping(vec![1].into()), Message::Binary(vec![1, 2, 3].into())] {
        let mut client = crate::wsclient::Client::connect(&app, "/ws").await;
        assert_eq!(client.next_json().await["type"], "connection_established");
        for _ in 0..60 {
            client.send(flood.clone()).await;
        }
        // Unlimited, the flood gets only pongs and seed errors (never `rate_limited`), and this
        // waits out the client's patience and fails.
        loop {
            let message = client.next().await;
            assert!(message.get("close").is_none(), "{flood:?}: closed before being told");
            if message["code"] == "rate_limited" {
                break;
            }
        }
    }
}

/// Past `SWAPCAST_MAX_CONNECTIONS_PER_IP` a WebSocket is refused with 1013 (its only frame); a
/// connection that ends gives its place back.
#[actix_web::test]
async fn connections_per_address_are_bounded() {
    use crate::wsclient::Client;
    let app = crate::helpers::spawn_app_with(|s| s.max_connections_per_ip = 2).await;
    let mut first = Client::connect(&app, "/ws/stations/").await;
    assert_eq!(first.next_json().await["type"], "connection_established");
    let mut second = Client::connect(&app, "/ws").await;
    assert_eq!(second.next_json().await["type"], "connection_established");
    let mut third = Client::connect(&app, "/ws").await;
    assert_eq!(third.next().await["close"], 1013, "the Close is the only frame");
    // The first one leaves (a close handshake); its place comes back once its session ends.
    first.send(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    first.close_code().await;
    let mut admitted = false;
    for _ in 0..100 {
        let mut again = Client::connect(&app, "/ws").await;
        if again.next().await["type"] == "connection_established" {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted, "the place was never given back");
}

/// A signing secret too short to resist an offline guess is refused at start, with a message
/// that says what to do.
#[test]
fn a_short_jwt_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .env("SWAPCAST_BIND", "127.0.0.1:0")
        .env("SWAPCAST_JWT_SECRET", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("at least 32"), "{said}");
}

/// NATS credentials in `SWAPCAST_NATS_URL` never reach the log.
#[test]
fn nats_credentials_are_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    // Nothing listens on port 9: the node serves and says it is still connecting.
    // At debug level too: the NATS client's own lines would name its servers, credentials included.
    let server = crate::helpers::ChildServer::start_with(
        &url,
        &[
            ("SWAPCAST_NATS_URL", "nats://svc:hunter2@127.0.0.1:9"),
            ("RUST_LOG", "debug"),
        ],
    );
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains("backplane not connected yet"), "{logs}");
    assert!(logs.contains("svc@127.0.0.1:9"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}

/// A body that trickles in is cut off (408) rather than holding a connection open for ever.
#[actix_web::test]
async fn a_body_that_never_arrives_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"email\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&answer).contains("request_timeout") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 30 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// Guesses sent together cannot pass the limit while they wait for a hash: each takes its attempt
/// before its password is checked.
#[actix_web::test]
async fn concurrent_guesses_get_no_more_than_the_limit() {
    let app = crate::helpers::spawn_app_with(|s| s.login_attempts = 3).await;
    let victim = app.user("user").await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(30));
    let guesses = (0..30).map(|i| {
        let (app, email, barrier) = (&app, victim.email.clone(), barrier.clone());
        async move {
            barrier.wait().await;
            app.post(
                "/api/auth/login",
                None,
                json!({"email": email, "password": format!("guess {i}")}),
            )
            .await
        }
    });
    let replies = futures_util::future::join_all(guesses).await;
    let checked = replies.iter().filter(|r| r.status.as_u16() == 401).count();
    assert!(checked <= 3, "{checked} passwords were checked; the limit is 3");
    for reply in &replies {
        assert!([401, 429, 503].contains(&reply.status.as_u16()), "{}", reply.body);
    }
    app.post(
        "/api/auth/login",
        None,
        json!({"email": victim.email, "password": crate::helpers::PASSWORD}),
    )
    .await
    .expect_error(429, "too_many_attempts");
}

/// Another site can neither sign a browser into an account (a cookie from `login?cookie=true`)
/// nor sign a dashboard out by clearing its cookie.
#[actix_web::test]
async fn sign_in_and_sign_out_from_another_site_are_refused() {
    let app = spawn_app().await;
    let login = app
        .client
        .post(app.url("/api/auth/login?cookie=true"))
        .header("origin", "http://evil.example")
        .json(&json!({"email": app.admin.email, "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(login.headers().get("set-cookie").is_none());
    TestApp::reply(login).await.expect_error(403, "cross_site_request");
    let cookie = app.admin_cookie().await;
    let (status, body) = with_cookie(
        &app,
        &cookie,
        Method::POST,
        "/api/auth/logout",
        Some("http://evil.example"),
        None,
        Some(r#"{"refresh_token":"x"}"#),
    )
    .await;
    assert_eq!(status, 403, "{body}");
}

/// A fragmented message of endless empty fragments is cut off (1008): empty fragments reach
/// neither the size limit nor, one by one, the rate limit.
#[actix_web::test]
async fn a_flood_of_empty_fragments_is_closed() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    let mut client = crate::wsclient::Client::connect(&app, "/ws").await;
    assert_eq!(client.next_json().await["type"], "connection_established");
    client
        .send(Message::Frame(Frame::message(
            Vec::new(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    for _ in 0..5_000 {
        let fragment = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        if futures_util::SinkExt::send(&mut client.socket, Message::Frame(fragment))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(client.close_code().await, Some(1008));
}
