//! WebSocket authentication: refusals arrive as close codes after the upgrade (4001, 4002, 4003,
//! 4004); tokens come from the header, the query or the cookie; cookies only from allowed origins.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, JWT_SECRET};
use crate::wsclient::Client;

/// A path, its request headers, and the close code it must get.
type Refusal = (String, Vec<(&'static str, String)>, u16);

async fn close_code_of(app: &crate::helpers::TestApp, path: &str, headers: &[(&'static str, String)]) -> Option<u16> {
    let mut client = Client::connect_with(app, path, headers).await;
    client.close_code().await
}

#[actix_web::test]
async fn refusals_are_close_codes_after_the_upgrade() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: serde_json::Value, secret: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let id = app.admin.id.to_string();
    let expired = sign(
        json!({"sub": id, "role": "admin", "iat": now - 100, "exp": now - 10, "sid": 1}),
        JWT_SECRET,
    );
    let forged = sign(
        json!({"sub": id, "role": "admin", "iat": now, "exp": now + 100, "sid": 1}),
        "not-the-secret",
    );
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIiwiaWF0IjoxLCJleHAiOjk5OTk5OTk5OTl9.";

    let cases: Vec<Refusal> = vec![
        ("/ws/notifications/".into(), vec![], 4001),
        (format!("/ws/notifications/?token={forged}"), vec![], 4001),
        (format!("/ws/notifications/?token={unsigned}"), vec![], 4001),
        (
            "/ws/notifications/".into(),
            vec![("authorization", format!("Bearer {expired}"))],
            4002,
        ),
        (format!("/ws/stations/{station}/?token={expired}"), vec![], 4002),
        // A bad token closes even a public feed rather than falling back to anonymous.
        (format!("/ws/stations/?token={forged}"), vec![], 4001),
        ("/ws/stations/999/".into(), vec![], 4004),
        ("/ws/stations/not-a-number/".into(), vec![], 4004),
    ];
    for (path, headers, code) in cases {
        assert_eq!(close_code_of(&app, &path, &headers).await, Some(code), "{path}");
    }
    // The header works as well as the query.
    let mut client = Client::connect_with(
        &app,
        "/ws/notifications",
        &[("authorization", format!("Bearer {}", app.admin.token))],
    )
    .await;
    assert_eq!(client.next_json().await["user_id"], app.admin.id);
}

#[actix_web::test]
async fn private_deployments_close_anonymous_station_feeds() {
    let app = spawn_app_with(|s| s.public_feeds = false).await;
    let station = app.station("S", None).await;
    assert_eq!(
        close_code_of(&app, &format!("/ws/stations/{station}"), &[]).await,
        Some(4001)
    );
    let (_, hello) = Client::open(&app, &format!("/ws/stations/{station}"), Some(&app.admin.token)).await;
    assert_eq!(hello["station_id"], station);
}

#[actix_web::test]
async fn deactivated_users_are_refused_with_4003() {
    let app = spawn_app().await;
    let user = app.user("user").await;
    app.patch(
        &format!("/api/users/{}", user.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect(200);
    assert_eq!(
        close_code_of(&app, &format!("/ws/notifications?token={}", user.token), &[]).await,
        Some(4003)
    );
}

#[actix_web::test]
async fn cookies_work_from_the_own_origin_only() {
    let app = spawn_app_with(|s| s.allowed_origins = vec!["https://dashboard.example".into()]).await;
    let cookie = app.admin_cookie().await.split(';').next().unwrap().to_owned();
    let own_origin = app.address.clone();

    let mut same_site = Client::connect_with(
        &app,
        "/ws/notifications/",
        &[("cookie", cookie.clone()), ("origin", own_origin)],
    )
    .await;
    assert_eq!(same_site.next_json().await["user_id"], app.admin.id);
    let mut allowed = Client::connect_with(
        &app,
        "/ws/notifications/",
        &[
            ("cookie", cookie.clone()),
            ("origin", "https://dashboard.example".into()),
        ],
    )
    .await;
    assert_eq!(allowed.next_json().await["type"], "connection_established");
    let foreign = [
        ("cookie", cookie.clone()),
        ("origin", "https://evil.example".to_owned()),
    ];
    assert_eq!(close_code_of(&app, "/ws/notifications/", &foreign).await, Some(4003));
    // The same foreign page with an explicit token is fine: no ambient credential was abused.
    let explicit = [
        ("origin", "https://evil.example".to_owned()),
        ("authorization", format!("Bearer {}", app.admin.token)),
    ];
    let mut client = Client::connect_with(&app, "/ws/notifications/", &explicit).await;
    assert_eq!(client.next_json().await["type"], "connection_established");
}

#[actix_web::test]
async fn operators_see_personal_data_of_their_own_stations_only() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let own = app.station("Own", Some(&operator)).await;
    let other = app.station("Other", None).await;
    app.battery(own, "OWN-1").await;
    app.battery(other, "OTHER-1").await;
    let (mut op_all, _) = Client::open(&app, "/ws/stations/", Some(&operator.token)).await;
    let (mut admin_all, _) = Client::open(&app, "/ws/stations/", Some(&app.admin.token)).await;
    for client in [&mut op_all, &mut admin_all] {
        client.events(2).await; // the two snapshots
    }
    app.book(own, &driver).await;
    app.book(other, &driver).await;
    let seen: Vec<_> = op_all
        .events(4)
        .await
        .into_iter()
        .filter(|m| m["type"] == "battery_booked")
        .collect();
    assert_eq!(seen[0]["user"], driver.email);
    assert!(seen[1].get("user").is_none(), "{}", seen[1]);
    let seen: Vec<_> = admin_all
        .events(4)
        .await
        .into_iter()
        .filter(|m| m["type"] == "battery_booked")
        .collect();
    assert!(seen.iter().all(|m| m["user"] == driver.email));
}
