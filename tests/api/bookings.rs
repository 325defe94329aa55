//! Booking: the double-booking race, the lifecycle's rules, and expiry.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{kinds, postgres_db, spawn_app, spawn_app_on, spawn_app_with, TestApp};

/// 50 concurrent bookings for 5 available batteries: exactly 5 win, 45 get 409, and every
/// battery is booked once.
async fn race(app: TestApp) {
    let station = app.station("Race", None).await;
    for i in 0..5 {
        app.battery(station, &format!("R-{i}")).await;
    }
    let drivers = join_all((0..10).map(|_| app.user("user"))).await;
    let before = app.last_event_id().await;
    let attempts = (0..50).map(|i| {
        let token = drivers[i % drivers.len()].token.clone();
        let app = &app;
        async move {
            app.post("/api/bookings", Some(&token), json!({"station_id": station}))
                .await
        }
    });
    let replies = join_all(attempts).await;
    let mut won = Vec::new();
    for reply in replies {
        match reply.status.as_u16() {
            201 => won.push(reply.body["battery_id"].as_i64().unwrap()),
            409 => assert_eq!(reply.body["error"]["code"], "no_battery_available"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    won.sort();
    won.dedup();
    assert_eq!(won.len(), 5, "each battery booked exactly once");
    let events = app.events_after(before).await;
    assert_eq!(kinds(&events).iter().filter(|k| **k == "battery_booked").count(), 5);
    let station_now = app.get(&format!("/api/stations/{station}"), None).await.expect(200);
    assert_eq!(station_now["available_batteries"], 0);
    assert_eq!(station_now["booked_batteries"], 5);
}

#[actix_web::test]
async fn concurrent_bookings_book_each_battery_once() {
    race(spawn_app_with(no_booking_limit).await).await;
}

#[actix_web::test]
async fn concurrent_bookings_book_each_battery_once_on_postgres() {
    let Some(db) = postgres_db() else { return };
    race(spawn_app_on(db, no_booking_limit).await).await;
}

/// Ten drivers make fifty attempts: the race is for batteries, not for a driver's places.
fn no_booking_limit(settings: &mut swapcast::config::Settings) {
    settings.max_active_bookings = 0;
}

#[actix_web::test]
async fn lifecycle_refuses_wrong_states() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    app.battery(station, "L-1").await;
    let admin = Some(app.admin.token.as_str());
    let booking = app.book(station, &driver).await["id"].as_i64().unwrap();

    app.post(&format!("/api/bookings/{booking}/ready"), admin, json!({}))
        .await
        .expect(200);
    app.post(&format!("/api/bookings/{booking}/ready"), admin, json!({}))
        .await
        .expect_error(409, "invalid_booking_state");
    let cancelled = app
        .post(
            &format!("/api/bookings/{booking}/cancel"),
            Some(&driver.token),
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelled_at"].is_string());
    app.post(&format!("/api/bookings/{booking}/collect"), admin, json!({}))
        .await
        .expect_error(409, "invalid_booking_state");
    app.post(&format!("/api/bookings/{booking}/cancel"), admin, json!({}))
        .await
        .expect_error(409, "invalid_booking_state");

    // A collected battery cannot get telemetry until it is returned, nor be returned twice.
    let booking = app.book(station, &driver).await;
    let battery = booking["battery_id"].as_i64().unwrap();
    app.post(&format!("/api/bookings/{}/collect", booking["id"]), admin, json!({}))
        .await
        .expect(200);
    app.patch(&format!("/api/batteries/{battery}"), admin, json!({"soc": 50}))
        .await
        .expect_error(409, "battery_not_at_station");
    app.post(
        &format!("/api/stations/{station}/returns"),
        admin,
        json!({"serial": "L-1", "soc": 30}),
    )
    .await
    .expect(201);
    app.post(
        &format!("/api/stations/{station}/returns"),
        admin,
        json!({"serial": "L-1", "soc": 30}),
    )
    .await
    .expect_error(409, "battery_not_collected");
    app.post(
        &format!("/api/stations/{station}/returns"),
        admin,
        json!({"serial": "NOPE", "soc": 30}),
    )
    .await
    .expect_error(404, "not_found");
}

#[actix_web::test]
async fn a_battery_returns_to_another_station() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let (a, b) = (app.station("A", None).await, app.station("B", None).await);
    app.battery(a, "MOVE-1").await;
    let booking = app.book(a, &driver).await;
    let admin = Some(app.admin.token.as_str());
    app.post(&format!("/api/bookings/{}/collect", booking["id"]), admin, json!({}))
        .await
        .expect(200);
    let returned = app
        .post(
            &format!("/api/stations/{b}/returns"),
            admin,
            json!({"serial": "MOVE-1", "soc": 10}),
        )
        .await
        .expect(201);
    assert_eq!(returned["station_id"], b);
    let at_b = app.get(&format!("/api/stations/{b}"), None).await.expect(200);
    assert_eq!(
        (at_b["available_batteries"].as_i64(), at_b["total_batteries"].as_i64()),
        (Some(0), Some(1))
    );
    let at_a = app.get(&format!("/api/stations/{a}"), None).await.expect(200);
    assert_eq!(at_a["total_batteries"], 0);
}

#[actix_web::test]
async fn stations_that_are_not_online_take_no_bookings() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    app.battery(station, "OFF-1").await;
    app.patch(
        &format!("/api/stations/{station}"),
        Some(&app.admin.token),
        json!({"status": "offline"}),
    )
    .await
    .expect(200);
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await
        .expect_error(409, "station_unavailable");
}

#[actix_web::test]
async fn uncollected_bookings_expire_and_free_their_battery() {
    let app = spawn_app_with(|s| s.booking_hold = 1).await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    app.battery(station, "EXP-1").await;
    let booking = app.book(station, &driver).await["id"].as_i64().unwrap();
    let before = app.last_event_id().await;

    let mut status = String::new();
    for _ in 0..50 {
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        let mine = app.get("/api/bookings", Some(&driver.token)).await.expect(200);
        status = mine["items"][0]["status"].as_str().unwrap().to_owned();
        if status == "expired" {
            break;
        }
    }
    assert_eq!(status, "expired", "booking {booking} did not expire");
    let events = app.events_after(before).await;
    assert_eq!(kinds(&events), ["inventory_update"]);
    assert_eq!(events[0]["payload"]["available_batteries"], 1);
    // The freed battery can be booked again.
    app.book(station, &driver).await;
}

#[actix_web::test]
async fn users_list_their_own_bookings_and_admins_all() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user("user").await, app.user("user").await);
    let station = app.station("S", None).await;
    for i in 0..3 {
        app.battery(station, &format!("LIST-{i}")).await;
    }
    app.book(station, &alice).await;
    app.book(station, &bob).await;
    let second_of_alice = app.book(station, &alice).await["id"].clone();

    let own = app.get("/api/bookings", Some(&alice.token)).await.expect(200);
    let own = own["items"].as_array().unwrap();
    assert_eq!(own.len(), 2);
    assert_eq!(own[0]["id"], second_of_alice, "newest first");
    assert!(own.iter().all(|b| b["user_id"] == alice.id));

    let all = app.get("/api/bookings", Some(&app.admin.token)).await.expect(200);
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let bobs = app
        .get(&format!("/api/bookings?user_id={}", bob.id), Some(&app.admin.token))
        .await
        .expect(200);
    assert_eq!(bobs["items"].as_array().unwrap().len(), 1);
    let confirmed = app
        .get("/api/bookings?status=confirmed", Some(&app.admin.token))
        .await
        .expect(200);
    assert_eq!(confirmed["items"].as_array().unwrap().len(), 3);
    app.get("/api/bookings?status=lost", Some(&app.admin.token))
        .await
        .expect_error(422, "validation_failed");
}
