//! Every error of CONTRACT §6, each with the contract's body.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{postgres_db, spawn_app, spawn_app_on};

#[actix_web::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    for raw in ["{", "not json", "{\"name\": \"x\"} trailing", ""] {
        let response = app
            .client
            .post(app.url("/api/stations"))
            .bearer_auth(&app.admin.token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        crate::helpers::TestApp::reply(response)
            .await
            .expect_error(400, "malformed_json");
    }
}

#[actix_web::test]
async fn missing_and_ill_typed_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let station = app.station("S", None).await;
    let cases = [
        ("/api/stations", json!({}), "name"),
        ("/api/stations", json!({"name": 5}), "name"),
        ("/api/stations", json!({"name": "  "}), "name"),
        ("/api/stations", json!({"name": "x", "status": "closed"}), "status"),
        (
            "/api/auth/register",
            json!({"email": "a@b.c", "display_name": "A"}),
            "password",
        ),
        (
            "/api/auth/register",
            json!({"email": "a@b.c", "password": "short", "display_name": "A"}),
            "password",
        ),
        (
            "/api/auth/register",
            json!({"email": "nope", "password": "long enough", "display_name": "A"}),
            "email",
        ),
        ("/api/bookings", json!({"station_id": "one"}), "station_id"),
        ("/api/bookings", json!({}), "station_id"),
        ("/api/notifications", json!({"title": "t", "message": "m"}), "user_id"),
        (
            "/api/notifications",
            json!({"all": true, "title": "t", "message": "m", "level": "loud"}),
            "level",
        ),
    ];
    for (path, body, field) in cases {
        let reply = app
            .post(path, admin, body.clone())
            .await
            .expect_error(422, "validation_failed");
        assert!(reply["error"]["fields"][field].is_string(), "{path} {body}: {reply}");
    }
    let battery_cases = [
        (json!({"model": "M"}), "serial"),
        (json!({"serial": "S 1", "model": "M"}), "serial"),
        (json!({"serial": "S1", "model": "M", "soc": 101}), "soc"),
        (json!({"serial": "S1", "model": "M", "soh": -1}), "soh"),
        (json!({"serial": "S1", "model": "M", "soc": 50.5}), "soc"),
    ];
    for (body, field) in battery_cases {
        let reply = app
            .post(&format!("/api/stations/{station}/batteries"), admin, body.clone())
            .await;
        let reply = reply.expect_error(422, "validation_failed");
        assert!(reply["error"]["fields"][field].is_string(), "{body}: {reply}");
    }
    let battery = app.battery(station, "OK-1").await;
    let reply = app
        .patch(
            &format!("/api/batteries/{battery}"),
            admin,
            json!({"status": "charging"}),
        )
        .await;
    assert!(reply.expect_error(422, "validation_failed")["error"]["fields"]["status"].is_string());
    let reply = app
        .get("/api/stations?limit=501", None)
        .await
        .expect_error(422, "validation_failed");
    assert!(reply["error"]["fields"]["limit"].is_string());
}

#[actix_web::test]
async fn unknown_ids_are_404() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let driver = app.user("user").await;
    app.get("/api/stations/999", None).await.expect_error(404, "not_found");
    app.get("/api/stations/not-a-number", None)
        .await
        .expect_error(404, "not_found");
    app.get("/api/stations/999/batteries", None)
        .await
        .expect_error(404, "not_found");
    app.patch("/api/stations/999", admin, json!({"status": "online"}))
        .await
        .expect_error(404, "not_found");
    app.post(
        "/api/stations/999/batteries",
        admin,
        json!({"serial": "X", "model": "M"}),
    )
    .await
    .expect_error(404, "not_found");
    app.patch("/api/batteries/999", admin, json!({"soc": 5}))
        .await
        .expect_error(404, "not_found");
    app.post("/api/bookings/999/ready", admin, json!({}))
        .await
        .expect_error(404, "not_found");
    app.post("/api/bookings/999/cancel", Some(&driver.token), json!({}))
        .await
        .expect_error(404, "not_found");
    app.post("/api/notifications/999/read", Some(&driver.token), json!({}))
        .await
        .expect_error(404, "not_found");
    app.patch("/api/users/999", admin, json!({"role": "operator"}))
        .await
        .expect_error(404, "not_found");
    app.post(
        "/api/notifications",
        admin,
        json!({"user_id": 999, "title": "t", "message": "m"}),
    )
    .await
    .expect_error(404, "not_found");
    // An unknown station in a booking is 404, not 422.
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": 999}))
        .await
        .expect_error(404, "not_found");
    app.get("/api/no-such-route", None).await.expect_error(404, "not_found");
}

#[actix_web::test]
async fn duplicates_are_409() {
    let app = spawn_app().await;
    app.register("taken@swapcast.test").await;
    let again = json!({"email": "TAKEN@swapcast.test", "password": "long enough", "display_name": "B"});
    app.post("/api/auth/register", None, again)
        .await
        .expect_error(409, "email_taken");
    let station = app.station("S", None).await;
    app.battery(station, "SER-1").await;
    app.post(
        &format!("/api/stations/{station}/batteries"),
        Some(&app.admin.token),
        json!({"serial": "SER-1", "model": "M"}),
    )
    .await
    .expect_error(409, "serial_taken");
}

#[actix_web::test]
async fn other_peoples_things() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user("user").await, app.user("user").await);
    let station = app.station("S", None).await;
    app.battery(station, "OWN-1").await;
    let booking = app.book(station, &alice).await["id"].as_i64().unwrap();
    // Another user's booking → 403.
    app.post(&format!("/api/bookings/{booking}/cancel"), Some(&bob.token), json!({}))
        .await
        .expect_error(403, "forbidden");
    // Another user's notification → 404.
    let note = app
        .post(
            "/api/notifications",
            Some(&app.admin.token),
            json!({"user_id": alice.id, "title": "t", "message": "m"}),
        )
        .await
        .expect(201);
    app.post(
        &format!("/api/notifications/{}/read", note["id"]),
        Some(&bob.token),
        json!({}),
    )
    .await
    .expect_error(404, "not_found");
    // Making a non-operator a station's operator → 422.
    let reply = app
        .patch(
            &format!("/api/stations/{station}"),
            Some(&app.admin.token),
            json!({"operator_id": bob.id}),
        )
        .await;
    assert!(reply.expect_error(422, "validation_failed")["error"]["fields"]["operator_id"].is_string());
}

#[actix_web::test]
async fn oversize_bodies_are_413() {
    let app = spawn_app().await;
    let huge = json!({"name": "x".repeat(70 * 1024)});
    app.post("/api/stations", Some(&app.admin.token), huge)
        .await
        .expect_error(413, "payload_too_large");
}

#[actix_web::test]
async fn bad_tokens_are_401_even_on_public_routes() {
    let app = spawn_app().await;
    let reply = app.call(Method::GET, "/api/stations", Some("garbage"), None).await;
    reply.expect_error(401, "invalid_token");
    let response = app
        .client
        .get(app.url("/api/me"))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    crate::helpers::TestApp::reply(response)
        .await
        .expect_error(401, "invalid_token");
    app.get("/api/me", None).await.expect_error(401, "not_authenticated");
}

#[actix_web::test]
async fn control_characters_are_refused_not_stored() {
    let app = spawn_app().await;
    let register = json!({"email": "a\u{0}@b.c", "password": "long enough", "display_name": "A"});
    app.post("/api/auth/register", None, register)
        .await
        .expect_error(422, "validation_failed");
    app.post("/api/stations", Some(&app.admin.token), json!({"name": "a\u{0}b"}))
        .await
        .expect_error(422, "validation_failed");
    let login = json!({"email": "a\u{0}@b.c", "password": "long enough"});
    app.post("/api/auth/login", None, login)
        .await
        .expect_error(401, "invalid_credentials");
}

/// A database that goes away is a 503 the client may retry, not a 500.
#[actix_web::test]
async fn a_lost_database_is_503() {
    let Some(db) = postgres_db() else { return };
    let app = spawn_app_on(db, |_| {}).await;
    app.get("/readyz", None).await.expect(200);
    // The admin is remembered (the caller cache), so their writes get as far as the writer.
    app.get("/api/me", Some(&app.admin.token)).await.expect(200);
    app.db.destroy();
    app.get("/readyz", None).await.expect_error(503, "service_unavailable");
    app.get("/api/stations", None)
        .await
        .expect_error(503, "service_unavailable");
    // Writes too, through the writer's own connection, however often they are tried.
    for _ in 0..3 {
        app.post(
            "/api/stations",
            Some(&app.admin.token),
            serde_json::json!({"name": "Gone"}),
        )
        .await
        .expect_error(503, "service_unavailable");
    }
}
