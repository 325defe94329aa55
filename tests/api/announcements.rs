//! Station announcements (CONTRACT §4.5): staff tell everyone watching a station; the message is
//! an event like the others — on every feed of the station, in the log, ordered, replayed.

use serde_json::{json, Value};

use crate::helpers::{kinds, spawn_app, TestApp, TestUser};
use crate::wsclient::Client;

fn path(station: i64) -> String {
    format!("/api/stations/{station}/announcements")
}

/// Reads until a message of `kind` comes, skipping snapshots and the like.
async fn next_of(client: &mut Client, kind: &str) -> Value {
    client.until(|m| m["type"] == kind).await
}

#[actix_web::test]
async fn an_announcement_reaches_every_feed_of_its_station_in_order_with_its_events() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Downtown", Some(&operator)).await;
    let other = app.station("Elsewhere", None).await;
    let (mut seed, _) = Client::open(&app, &format!("/ws/stations/{station}/"), None).await;
    assert_eq!(seed.next_json().await["action"], "snapshot");
    let (mut all, _) = Client::open(&app, "/ws/stations/", None).await;
    let (mut multiplexed, _) = Client::open(&app, "/ws", Some(&driver.token)).await;
    multiplexed
        .send_text(&json!({"type": "subscribe", "channel": format!("station:{station}")}).to_string())
        .await;
    next_of(&mut multiplexed, "subscribed").await;
    let (mut elsewhere, _) = Client::open(&app, &format!("/ws/stations/{other}/"), None).await;

    let answer = app
        .post(
            &path(station),
            Some(&operator.token),
            json!({"message": "Closed for maintenance in 10 minutes", "level": "warning"}),
        )
        .await
        .expect(201);
    assert_eq!(
        (
            &answer["station_id"],
            &answer["station_name"],
            &answer["message"],
            &answer["level"]
        ),
        (
            &json!(station),
            &json!("Downtown"),
            &json!("Closed for maintenance in 10 minutes"),
            &json!("warning")
        )
    );
    app.battery(station, "AFTER-1").await;
    app.battery(other, "OTHER-1").await;

    let logged = app.events_after(0).await;
    let announced = logged
        .iter()
        .find(|e| e["type"] == "station_announcement")
        .expect("in the log");
    let id = announced["event_id"].as_i64().unwrap();
    for (name, client) in [
        ("seed", &mut seed),
        ("all stations", &mut all),
        ("/ws", &mut multiplexed),
    ] {
        let got = next_of(client, "station_announcement").await;
        assert_eq!(got["event_id"], id, "{name}: {got}");
        assert_eq!(got["station_id"], station, "{name}");
        assert_eq!(got["message"], "Closed for maintenance in 10 minutes", "{name}");
        assert_eq!(got["level"], "warning", "{name}");
        assert!(got["timestamp"].is_string(), "{name}");
        if name == "/ws" {
            assert_eq!(got["channel"], format!("station:{station}"));
        }
        let after = client.next_json().await;
        assert_eq!(
            (after["type"].as_str(), after["event_id"].as_i64()),
            (Some("battery_added"), Some(id + 1)),
            "{name}"
        );
    }
    // Another station's watcher hears nothing of it: after its snapshot comes its own station's event.
    assert_eq!(elsewhere.next_json().await["action"], "snapshot");
    let first = elsewhere.next_json().await;
    assert_eq!(
        (first["type"].as_str(), first["station_id"].as_i64()),
        (Some("battery_added"), Some(other)),
        "{first}"
    );
}

#[actix_web::test]
async fn refused_announcements_change_nothing() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let stranger = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("S", Some(&operator)).await;
    let before = app.last_event_id().await;
    let ok = json!({"message": "Hello"});
    let cases: Vec<(Option<&TestUser>, String, Value, u16, &str)> = vec![
        (None, path(station), ok.clone(), 401, "not_authenticated"),
        (Some(&driver), path(station), ok.clone(), 403, "forbidden"),
        (Some(&stranger), path(station), ok.clone(), 403, "forbidden"),
        (Some(&operator), path(999_999), ok.clone(), 404, "not_found"),
        (
            Some(&operator),
            path(station),
            json!({"message": ""}),
            422,
            "validation_failed",
        ),
        (
            Some(&operator),
            path(station),
            json!({"message": "x".repeat(2001)}),
            422,
            "validation_failed",
        ),
        (
            Some(&operator),
            path(station),
            json!({"message": "a\u{0007}b"}),
            422,
            "validation_failed",
        ),
        (
            Some(&operator),
            path(station),
            json!({"message": "Hi", "level": "loud"}),
            422,
            "validation_failed",
        ),
        (
            Some(&operator),
            path(station),
            json!({"message": 5}),
            422,
            "validation_failed",
        ),
        (Some(&operator), path(station), json!({}), 422, "validation_failed"),
    ];
    for (who, at, body, status, code) in cases {
        app.post(&at, who.map(|u| u.token.as_str()), body.clone())
            .await
            .expect_error(status, code);
    }
    let malformed = app
        .client
        .post(app.url(&path(station)))
        .bearer_auth(&operator.token)
        .header("content-type", "application/json")
        .body("{\"message\": ")
        .send()
        .await
        .unwrap();
    TestApp::reply(malformed).await.expect_error(400, "malformed_json");
    assert_eq!(app.last_event_id().await, before, "no event for a refused announcement");
}

#[actix_web::test]
async fn announcements_are_replayed_on_resume_in_order() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    app.battery(station, "R-1").await;
    let last = app.last_event_id().await;
    for message in ["First", "Second"] {
        app.post(&path(station), Some(&app.admin.token), json!({"message": message}))
            .await
            .expect(201);
    }
    app.battery(station, "R-2").await;
    let (mut client, _) = Client::open(&app, &format!("/ws/stations/{station}/?last_event_id={last}"), None).await;
    let replayed = client.events(4).await;
    assert_eq!(
        kinds(&replayed),
        [
            "station_announcement",
            "station_announcement",
            "battery_added",
            "inventory_update"
        ]
    );
    assert_eq!(
        (&replayed[0]["message"], &replayed[1]["message"]),
        (&json!("First"), &json!("Second"))
    );
    assert_eq!(replayed[0]["level"], "info", "the default level");
    let ids: Vec<i64> = replayed.iter().map(|e| e["event_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (last + 1..=last + 4).collect::<Vec<_>>());
}

#[actix_web::test]
async fn the_ws_action_announce_is_the_same_for_staff_only() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("S", Some(&operator)).await;
    let (mut staff, _) = Client::open(&app, "/ws", Some(&operator.token)).await;
    let (mut other, _) = Client::open(&app, "/ws", Some(&driver.token)).await;
    let ask = |id: &str, message: &str| {
        json!({"type": "request", "request_id": id, "action": "announce",
               "data": {"station_id": station, "message": message, "level": "error"}})
        .to_string()
    };
    other.send_text(&ask("d1", "Not mine to say")).await;
    let refused = answer(&mut other, "d1").await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    // Bad input over /ws is refused as over REST, and announces nothing.
    for (id, data, code) in [
        ("e1", json!({"station_id": station, "message": ""}), "validation_failed"),
        (
            "e2",
            json!({"station_id": station, "message": "x".repeat(2001)}),
            "validation_failed",
        ),
        (
            "e3",
            json!({"station_id": station, "message": "Hi", "level": "loud"}),
            "validation_failed",
        ),
        ("e4", json!({"station_id": "one", "message": "Hi"}), "validation_failed"),
        ("e5", json!({"station_id": 999_999, "message": "Hi"}), "not_found"),
    ] {
        staff
            .send_text(&json!({"type": "request", "request_id": id, "action": "announce", "data": data}).to_string())
            .await;
        let refused = answer(&mut staff, id).await;
        assert_eq!(refused["error"]["code"], code, "{id}: {refused}");
    }
    staff.send_text(&ask("o1", "Power cut, back in an hour")).await;
    // The response and the event leave on their own paths after the commit: either may come first.
    let (mut done, mut event) = (None, None);
    while done.is_none() || event.is_none() {
        let message = staff
            .until(|m| m["request_id"] == "o1" || m["type"] == "station_announcement")
            .await;
        if message["type"] == "station_announcement" {
            event = Some(message);
        } else {
            done = Some(message);
        }
    }
    let (done, event) = (done.unwrap(), event.unwrap());
    assert_eq!(
        (done["type"].as_str(), done["action"].as_str()),
        (Some("response"), Some("announce")),
        "{done}"
    );
    assert_eq!(done["data"]["message"], "Power cut, back in an hour");
    // The operator is subscribed to their station on sign-in: the event reaches them too.
    assert_eq!(
        (&event["channel"], &event["level"]),
        (&json!(format!("station:{station}")), &json!("error"))
    );
    let logged = app.events_after(0).await;
    assert_eq!(logged.iter().filter(|e| e["type"] == "station_announcement").count(), 1);
}

async fn answer(client: &mut Client, id: &str) -> Value {
    client.until(|m| m["request_id"] == id).await
}

#[actix_web::test]
async fn a_retried_announcement_with_its_key_is_announced_once() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let before = app.last_event_id().await;
    let send = || {
        app.client
            .post(app.url(&path(station)))
            .bearer_auth(&app.admin.token)
            .header("Idempotency-Key", "announce-1")
            .json(&json!({"message": "Once"}))
            .send()
    };
    let first = TestApp::reply(send().await.unwrap()).await;
    let retry = TestApp::reply(send().await.unwrap()).await;
    assert_eq!((first.status.as_u16(), retry.status.as_u16()), (201, 201));
    assert_eq!(first.body, retry.body);
    assert_eq!(kinds(&app.events_after(before).await), ["station_announcement"]);
}
