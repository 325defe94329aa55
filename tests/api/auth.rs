//! Registration, sign-in sessions, token handling (CONTRACT §3).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_on, test_settings, TestApp, TestDb, JWT_SECRET, PASSWORD};

#[actix_web::test]
async fn register_login_me() {
    let app = spawn_app().await;
    let created = app.register("Driver@Swapcast.test").await;
    assert_eq!(
        created["user"]["email"], "driver@swapcast.test",
        "emails are case-insensitive"
    );
    assert_eq!(created["user"]["role"], "user");
    assert!(created["user"].get("password_hash").is_none());

    let login = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": "DRIVER@swapcast.test", "password": PASSWORD}),
        )
        .await
        .expect(200);
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 900);
    assert!(login["refresh_token"].is_string());
    assert_eq!(login["user"]["email"], "driver@swapcast.test");
    let token = login["access_token"].as_str().unwrap();
    let me = app.get("/api/me", Some(token)).await.expect(200);
    assert_eq!(me["email"], "driver@swapcast.test");

    app.post(
        "/api/auth/login",
        None,
        json!({"email": "driver@swapcast.test", "password": "wrong password"}),
    )
    .await
    .expect_error(401, "invalid_credentials");
    app.post(
        "/api/auth/login",
        None,
        json!({"email": "nobody@swapcast.test", "password": PASSWORD}),
    )
    .await
    .expect_error(401, "invalid_credentials");
}

#[actix_web::test]
async fn refresh_tokens_rotate_and_logout_kills_them() {
    let app = spawn_app().await;
    app.register("r@swapcast.test").await;
    let login = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": "r@swapcast.test", "password": PASSWORD}),
        )
        .await
        .expect(200);
    let first = login["refresh_token"].as_str().unwrap();

    let rotated = app
        .post("/api/auth/refresh", None, json!({"refresh_token": first}))
        .await
        .expect(200);
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);
    app.get("/api/me", Some(rotated["access_token"].as_str().unwrap()))
        .await
        .expect(200);
    // A used refresh token is dead.
    app.post("/api/auth/refresh", None, json!({"refresh_token": first}))
        .await
        .expect_error(401, "invalid_token");

    app.post("/api/auth/logout", None, json!({"refresh_token": second}))
        .await
        .expect(204);
    app.post("/api/auth/refresh", None, json!({"refresh_token": second}))
        .await
        .expect_error(401, "invalid_token");
}

fn token_with(claims: Value, secret: &str, alg: Algorithm) -> String {
    encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[actix_web::test]
async fn tokens_are_checked_strictly() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let id = app.admin.id;
    let expired = token_with(
        json!({"sub": id.to_string(), "role": "admin", "iat": now - 100, "exp": now - 10, "sid": 1}),
        JWT_SECRET,
        Algorithm::HS256,
    );
    app.get("/api/me", Some(&expired))
        .await
        .expect_error(401, "token_expired");
    let forged = token_with(
        json!({"sub": id.to_string(), "role": "admin", "iat": now, "exp": now + 60, "sid": 1}),
        "other",
        Algorithm::HS256,
    );
    app.get("/api/me", Some(&forged))
        .await
        .expect_error(401, "invalid_token");
    let other_alg = token_with(
        json!({"sub": id.to_string(), "role": "admin", "iat": now, "exp": now + 60, "sid": 1}),
        JWT_SECRET,
        Algorithm::HS512,
    );
    app.get("/api/me", Some(&other_alg))
        .await
        .expect_error(401, "invalid_token");
    // {"alg":"none"} with the admin's id, unsigned.
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let payload = base64_url(&format!(
        r#"{{"sub":"{id}","role":"admin","iat":{now},"exp":{}}}"#,
        now + 60
    ));
    app.get("/api/me", Some(&format!("{header}.{payload}.")))
        .await
        .expect_error(401, "invalid_token");
}

/// Unpadded base64url, enough for a test token.
fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[actix_web::test]
async fn tokens_come_from_header_query_or_cookie() {
    let app = spawn_app().await;
    let token = &app.admin.token;
    let by_query = app
        .client
        .get(app.url(&format!("/api/me?token={token}")))
        .send()
        .await
        .unwrap();
    TestApp::reply(by_query).await.expect(200);

    let cookie = app.admin_cookie().await;
    assert!(cookie.starts_with("swapcast_token="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let by_cookie = app
        .client
        .get(app.url("/api/me"))
        .header("Cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(TestApp::reply(by_cookie).await.expect(200)["email"], app.admin.email);

    // Without ?cookie=true, no cookie.
    let plain = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": app.admin.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("set-cookie").is_none());
}

#[actix_web::test]
async fn role_changes_and_deactivation_take_effect_at_once() {
    let app = spawn_app().await;
    let user = app.user("user").await;
    app.post("/api/stations", Some(&user.token), json!({"name": "S"}))
        .await
        .expect_error(403, "forbidden");
    app.patch(
        &format!("/api/users/{}", user.id),
        Some(&app.admin.token),
        json!({"role": "admin"}),
    )
    .await
    .expect(200);
    // The same token, the new role: roles are read from the database, not trusted from the token.
    app.post("/api/stations", Some(&user.token), json!({"name": "S"}))
        .await
        .expect(201);
    app.patch(
        &format!("/api/users/{}", user.id),
        Some(&app.admin.token),
        json!({"role": "user"}),
    )
    .await
    .expect(200);
    app.post("/api/stations", Some(&user.token), json!({"name": "S"}))
        .await
        .expect_error(403, "forbidden");

    app.patch(
        &format!("/api/users/{}", user.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect(200);
    app.get("/api/me", Some(&user.token))
        .await
        .expect_error(403, "account_disabled");
    app.post(
        "/api/auth/login",
        None,
        json!({"email": user.email, "password": PASSWORD}),
    )
    .await
    .expect_error(403, "account_disabled");
    // Admins cannot lock themselves out.
    app.patch(
        &format!("/api/users/{}", app.admin.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect_error(409, "cannot_demote_self");
}

#[actix_web::test]
async fn a_generated_secret_survives_restarts() {
    let db = TestDb::Sqlite(tempfile::tempdir().unwrap());
    let url = db.url();
    let first = spawn_app_on(db, |s| s.jwt_secret = None).await;
    let token = first.admin.token.clone();
    // A second server on the same database, also without a configured secret.
    let mut settings = test_settings(&first.db);
    settings.database_url = url;
    settings.jwt_secret = None;
    let second = swapcast::startup::Application::build(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", second.port());
    actix_web::rt::spawn(second.run_until_stopped());
    let me = first
        .client
        .get(format!("{address}/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}
