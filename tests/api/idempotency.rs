//! `Idempotency-Key`: a retry gets the first response and changes nothing a second time.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{kinds, spawn_app, TestApp, TestUser};

async fn keyed_post(app: &TestApp, user: &TestUser, path: &str, key: &str, body: Value) -> crate::helpers::Reply {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    TestApp::reply(response).await
}

#[actix_web::test]
async fn a_retried_booking_returns_the_first_response_and_books_once() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    for i in 0..3 {
        app.battery(station, &format!("IDEM-{i}")).await;
    }
    let before = app.last_event_id().await;
    let body = json!({"station_id": station});
    let first = keyed_post(&app, &driver, "/api/bookings", "key-1", body.clone()).await;
    let retry = keyed_post(&app, &driver, "/api/bookings", "key-1", body.clone()).await;
    assert_eq!(first.status, 201);
    assert_eq!(retry.status, 201);
    assert_eq!(first.body, retry.body);
    assert_eq!(
        retry.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true")
    );

    let mine = app.get("/api/bookings", Some(&driver.token)).await.expect(200);
    assert_eq!(mine["items"].as_array().unwrap().len(), 1, "one booking row");
    assert_eq!(
        kinds(&app.events_after(before).await),
        ["battery_booked", "inventory_update", "booking_confirmed"]
    );

    // The same request serialized again — other spacing, other key order — is the same request.
    let respaced = app
        .client
        .post(app.url("/api/bookings"))
        .bearer_auth(&driver.token)
        .header("Idempotency-Key", "key-1")
        .header("content-type", "application/json")
        .body(format!("{{ \"station_id\" :  {station} }}"))
        .send()
        .await
        .unwrap();
    let respaced = TestApp::reply(respaced).await;
    assert_eq!((respaced.status.as_u16(), &respaced.body), (201, &first.body));

    // The same key for a different request is refused; a new key books again.
    let other = keyed_post(
        &app,
        &driver,
        "/api/bookings",
        "key-1",
        json!({"station_id": station + 1}),
    )
    .await;
    other.expect_error(422, "validation_failed");
    keyed_post(&app, &driver, "/api/bookings", "key-2", body.clone())
        .await
        .expect(201);
    // Keys are per user.
    let someone = app.user("user").await;
    keyed_post(&app, &someone, "/api/bookings", "key-1", body)
        .await
        .expect(201);
}

#[actix_web::test]
async fn concurrent_retries_add_one_battery() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let before = app.last_event_id().await;
    let body = json!({"serial": "ONCE-1", "model": "M"});
    let path = format!("/api/stations/{station}/batteries");
    let replies = join_all((0..8).map(|_| keyed_post(&app, &app.admin, &path, "add-once", body.clone()))).await;
    let first = &replies[0].body;
    for reply in &replies {
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(&reply.body, first);
    }
    let batteries = app.get(&path, None).await.expect(200);
    assert_eq!(batteries["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        kinds(&app.events_after(before).await),
        ["battery_added", "inventory_update"]
    );
}

#[actix_web::test]
async fn failed_requests_are_not_remembered() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    let body = json!({"station_id": station});
    keyed_post(&app, &driver, "/api/bookings", "k", body.clone())
        .await
        .expect_error(409, "no_battery_available");
    app.battery(station, "LATER-1").await;
    keyed_post(&app, &driver, "/api/bookings", "k", body).await.expect(201);
}
