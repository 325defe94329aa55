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
