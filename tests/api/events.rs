//! Every state change writes exactly the events of CONTRACT §4.1, with increasing ids, and a
//! failed operation writes none.

use serde_json::{json, Value};

use crate::helpers::{kinds, spawn_app};

/// The audience of a logged event: ("station", id) or ("user", id).
fn audience(event: &Value) -> (&'static str, i64) {
    match (event["station_id"].as_i64(), event["user_id"].as_i64()) {
        (Some(s), None) => ("station", s),
        (None, Some(u)) => ("user", u),
        other => panic!("event without one audience: {other:?}"),
    }
}

#[actix_web::test]
async fn each_trigger_writes_exactly_its_events() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Downtown Station", Some(&operator)).await;
    let admin = Some(app.admin.token.as_str());
    let op = Some(operator.token.as_str());

    // Each step: the call, then the (type, audience) pairs it must log, in order.
    let mut cursor = app.last_event_id().await;
    let mut all_ids = Vec::new();
    let mut check = |events: Vec<Value>, expected: &[(&str, (&str, i64))]| {
        let got: Vec<(&str, (&str, i64))> = events
            .iter()
            .map(|e| (e["type"].as_str().unwrap(), audience(e)))
            .collect();
        assert_eq!(got, expected, "events: {events:?}");
        all_ids.extend(events.iter().map(|e| e["event_id"].as_i64().unwrap()));
    };
    let s = ("station", station);
    let u = ("user", driver.id);

    let battery = app
        .post(
            &format!("/api/stations/{station}/batteries"),
            op,
            json!({"serial": "B-1", "model": "Tesla Battery - Model 3", "soc": 90}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["available_batteries"], 1);
    assert_eq!(events[0]["payload"]["total_batteries"], 1);
    assert_eq!(events[1]["payload"]["action"], "add");
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("battery_added", s), ("inventory_update", s)]);

    let booking = app.book(station, &driver).await["id"].as_i64().unwrap();
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["user"], driver.email);
    assert_eq!(events[0]["payload"]["battery_id"], battery);
    assert_eq!(events[0]["payload"]["booked_batteries"], 1);
    assert_eq!(events[1]["payload"]["action"], "book");
    assert_eq!(events[2]["payload"]["booking_id"], booking);
    assert_eq!(events[2]["payload"]["battery_info"], "Tesla Battery - Model 3");
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(
        events,
        &[("battery_booked", s), ("inventory_update", s), ("booking_confirmed", u)],
    );

    app.post(&format!("/api/bookings/{booking}/ready"), op, json!({}))
        .await
        .expect(200);
    let events = app.events_after(cursor).await;
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("booking_ready", u)]);

    app.post(&format!("/api/bookings/{booking}/collect"), op, json!({}))
        .await
        .expect(200);
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["booked_batteries"], 0);
    assert_eq!(events[0]["payload"]["total_batteries"], 0);
    assert_eq!(events[1]["payload"]["action"], "collect");
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("battery_collected", s), ("inventory_update", s)]);

    // The driver brings it back: it charges here, then telemetry reports it charged.
    let returned = app
        .post(
            &format!("/api/stations/{station}/returns"),
            op,
            json!({"serial": "B-1", "soc": 20}),
        )
        .await
        .expect(201);
    assert_eq!(returned["status"], "charging");
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["status"], "charging");
    assert_eq!(events[0]["payload"]["serial"], "B-1");
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("battery_updated", s), ("inventory_update", s)]);

    let charged = app
        .patch(&format!("/api/batteries/{battery}"), op, json!({"soc": 96}))
        .await
        .expect(200);
    assert_eq!(charged["status"], "available");
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["soc"], 96);
    assert_eq!(events[1]["payload"]["available_batteries"], 1);
    check(events, &[("battery_updated", s), ("inventory_update", s)]);

    // Cancelling frees the battery.
    let booking = app.book(station, &driver).await["id"].as_i64().unwrap();
    cursor = app.last_event_id().await;
    app.post(
        &format!("/api/bookings/{booking}/cancel"),
        Some(&driver.token),
        json!({}),
    )
    .await
    .expect(200);
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["available_batteries"], 1);
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("inventory_update", s)]);

    app.patch(
        &format!("/api/stations/{station}"),
        op,
        json!({"status": "maintenance"}),
    )
    .await
    .expect(200);
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["status"], "maintenance");
    assert_eq!(events[0]["payload"]["message"], "Station is under maintenance");
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("station_status", s)]);

    // A patch that leaves the status alone announces nothing.
    app.patch(&format!("/api/stations/{station}"), op, json!({"name": "Downtown"}))
        .await
        .expect(200);
    assert!(app.events_after(cursor).await.is_empty());

    app.patch(
        &format!("/api/batteries/{battery}"),
        admin,
        json!({"status": "retired"}),
    )
    .await
    .expect(200);
    let events = app.events_after(cursor).await;
    assert_eq!(events[0]["payload"]["total_batteries"], 0);
    cursor = events.last().unwrap()["event_id"].as_i64().unwrap();
    check(events, &[("inventory_update", s)]);

    app.post(
        "/api/notifications",
        admin,
        json!({"user_id": driver.id, "title": "Hi", "message": "Welcome", "level": "success"}),
    )
    .await
    .expect(201);
    let events = app.events_after(cursor).await;
    assert_eq!(
        events[0]["payload"],
        json!({"type": "notification", "title": "Hi", "message": "Welcome", "level": "success"})
    );
    check(events, &[("notification", u)]);

    assert!(
        all_ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {all_ids:?}"
    );
}

#[actix_web::test]
async fn failed_operations_write_no_events() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let station = app.station("Empty", None).await;
    app.battery(station, "DUP-1").await;
    app.book(station, &driver).await;
    let before = app.last_event_id().await;
    let admin = Some(app.admin.token.as_str());

    app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await
        .expect_error(409, "no_battery_available");
    app.post(
        &format!("/api/stations/{station}/batteries"),
        admin,
        json!({"serial": "DUP-1", "model": "M"}),
    )
    .await
    .expect_error(409, "serial_taken");
    app.post(
        &format!("/api/stations/{station}/batteries"),
        admin,
        json!({"serial": "NEW-1", "model": "M", "soc": 150}),
    )
    .await
    .expect_error(422, "validation_failed");
    app.post(
        &format!("/api/stations/{station}/batteries"),
        Some(&driver.token),
        json!({"serial": "NEW-2", "model": "M"}),
    )
    .await
    .expect_error(403, "forbidden");
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": 9999}))
        .await
        .expect_error(404, "not_found");

    assert_eq!(app.last_event_id().await, before);
    // And no row slipped in either.
    let batteries = app
        .get(&format!("/api/stations/{station}/batteries"), None)
        .await
        .expect(200);
    assert_eq!(batteries["items"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn admins_read_the_event_log_in_pages() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    for i in 0..3 {
        app.battery(station, &format!("P-{i}")).await;
    }
    let first = app.get("/api/events?limit=4", Some(&app.admin.token)).await.expect(200);
    assert_eq!(
        kinds(first["items"].as_array().unwrap()),
        ["battery_added", "inventory_update", "battery_added", "inventory_update"]
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = app
        .get(&format!("/api/events?limit=4&cursor={cursor}"), Some(&app.admin.token))
        .await
        .expect(200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_eq!(rest["items"][0]["event_id"], 5);
}
