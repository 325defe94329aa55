//! The seed endpoints deliver every row of CONTRACT §4.1's event table, with seed 001's exact
//! fields plus `event_id`, to exactly the connections entitled to it.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};
use crate::wsclient::Client;

#[derive(Clone, Copy)]
enum Kind {
    Num,
    Str,
}

/// Asserts the message has exactly these keys, with these JSON types.
#[track_caller]
fn shape(message: &Value, fields: &[(&str, Kind)]) {
    let object = message
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {message}"));
    let mut expected: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "keys of {message}");
    for (name, kind) in fields {
        let ok = match kind {
            Kind::Num => object[*name].is_i64(),
            Kind::Str => object[*name].is_string(),
        };
        assert!(ok, "{name} has the wrong type in {message}");
    }
}

use Kind::{Num, Str};

const INVENTORY: &[(&str, Kind)] = &[
    ("type", Str),
    ("station_id", Num),
    ("station_name", Str),
    ("available_batteries", Num),
    ("booked_batteries", Num),
    ("total_batteries", Num),
    ("timestamp", Str),
    ("action", Str),
    ("event_id", Num),
];

fn booked_fields(with_user: bool) -> Vec<(&'static str, Kind)> {
    let mut fields = vec![
        ("type", Str),
        ("station_id", Num),
        ("station_name", Str),
        ("battery_id", Num),
        ("available_batteries", Num),
        ("booked_batteries", Num),
        ("total_batteries", Num),
        ("timestamp", Str),
        ("event_id", Num),
    ];
    if with_user {
        fields.push(("user", Str));
    }
    fields
}

/// Reads one message, which must be of the given type.
async fn expect(client: &mut Client, kind: &str) -> Value {
    let message = client.next_json().await;
    assert_eq!(message["type"], kind, "{message}");
    message
}

struct Watchers {
    s1_anon: Client,
    s1_admin: Client,
    s1_operator: Client,
    all_anon: Client,
    s2_anon: Client,
    driver: Client,
    other_user: Client,
}

#[actix_web::test]
async fn every_event_reaches_exactly_its_audience_with_seed_fields() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let other = app.user("user").await;
    let s1 = app.station("Downtown Station", Some(&operator)).await;
    let s2 = app.station("Uptown Station", None).await;
    app.battery(s1, "PRE-1").await;

    let (s1_anon, hello) = Client::open(&app, &format!("/ws/stations/{s1}/"), None).await;
    shape(
        &hello,
        &[
            ("type", Str),
            ("message", Str),
            ("station_id", Num),
            ("last_event_id", Num),
        ],
    );
    assert_eq!(hello["message"], format!("Connected to station_{s1}"));
    let mut w = Watchers {
        s1_anon,
        s1_admin: Client::open(&app, &format!("/ws/stations/{s1}"), Some(&app.admin.token))
            .await
            .0,
        s1_operator: Client::open(&app, &format!("/ws/stations/{s1}"), Some(&operator.token))
            .await
            .0,
        all_anon: Client::open(&app, "/ws/stations/", None).await.0,
        s2_anon: Client::open(&app, &format!("/ws/stations/{s2}/"), None).await.0,
        driver: Client::open(&app, "/ws/notifications/", Some(&driver.token)).await.0,
        other_user: Client::open(&app, "/ws/notifications", Some(&other.token)).await.0,
    };

    // Snapshots first: one per station watched, with the position they reflect.
    for client in [&mut w.s1_anon, &mut w.s1_admin, &mut w.s1_operator] {
        let snapshot = expect(client, "inventory_update").await;
        assert_eq!(snapshot["action"], "snapshot");
        assert_eq!(
            (
                snapshot["station_id"].as_i64(),
                snapshot["available_batteries"].as_i64()
            ),
            (Some(s1), Some(1))
        );
        assert!(snapshot["last_event_id"].is_i64());
    }
    let first = expect(&mut w.all_anon, "inventory_update").await;
    let second = expect(&mut w.all_anon, "inventory_update").await;
    assert_eq!(
        (first["station_id"].as_i64(), second["station_id"].as_i64()),
        (Some(s1), Some(s2))
    );
    assert_eq!(expect(&mut w.s2_anon, "inventory_update").await["total_batteries"], 0);

    let mut seen_ids: Vec<Vec<i64>> = vec![Vec::new(); 4];

    // battery added
    let added = app.battery(s1, "NEW-1").await;
    for (i, client) in [&mut w.s1_anon, &mut w.s1_admin, &mut w.s1_operator, &mut w.all_anon]
        .into_iter()
        .enumerate()
    {
        let message = expect(client, "battery_added").await;
        shape(
            &message,
            &[
                ("type", Str),
                ("station_id", Num),
                ("station_name", Str),
                ("battery_id", Num),
                ("available_batteries", Num),
                ("total_batteries", Num),
                ("timestamp", Str),
                ("event_id", Num),
            ],
        );
        assert_eq!(message["battery_id"], added);
        assert_eq!(message["station_name"], "Downtown Station");
        let update = expect(client, "inventory_update").await;
        shape(&update, INVENTORY);
        assert_eq!(update["action"], "add");
        assert_eq!(update["available_batteries"], 2);
        seen_ids[i].extend([
            message["event_id"].as_i64().unwrap(),
            update["event_id"].as_i64().unwrap(),
        ]);
    }

    // battery booked: personal data only for admin and the station's operator
    let booking = app.book(s1, &driver).await;
    let booking_id = booking["id"].as_i64().unwrap();
    for (i, client) in [&mut w.s1_anon, &mut w.s1_admin, &mut w.s1_operator, &mut w.all_anon]
        .into_iter()
        .enumerate()
    {
        let message = expect(client, "battery_booked").await;
        let privileged = i == 1 || i == 2;
        shape(&message, &booked_fields(privileged));
        if privileged {
            assert_eq!(message["user"], driver.email);
        }
        let update = expect(client, "inventory_update").await;
        assert_eq!(
            (update["action"].as_str(), update["booked_batteries"].as_i64()),
            (Some("book"), Some(1))
        );
        seen_ids[i].extend([
            message["event_id"].as_i64().unwrap(),
            update["event_id"].as_i64().unwrap(),
        ]);
    }
    let confirmed = expect(&mut w.driver, "booking_confirmed").await;
    shape(
        &confirmed,
        &[
            ("type", Str),
            ("booking_id", Num),
            ("station_name", Str),
            ("battery_info", Str),
            ("message", Str),
            ("timestamp", Str),
            ("event_id", Num),
        ],
    );
    assert_eq!(confirmed["booking_id"], booking_id);
    assert_eq!(confirmed["message"], "Battery booked successfully at Downtown Station");

    // booking ready: the user only
    app.post(
        &format!("/api/bookings/{booking_id}/ready"),
        Some(&operator.token),
        json!({}),
    )
    .await
    .expect(200);
    let ready = expect(&mut w.driver, "booking_ready").await;
    shape(
        &ready,
        &[
            ("type", Str),
            ("booking_id", Num),
            ("station_name", Str),
            ("message", Str),
            ("timestamp", Str),
            ("event_id", Num),
        ],
    );
    assert_eq!(
        ready["message"],
        "Your battery is ready for collection at Downtown Station"
    );

    // battery collected
    app.post(
        &format!("/api/bookings/{booking_id}/collect"),
        Some(&operator.token),
        json!({}),
    )
    .await
    .expect(200);
    let collected_serial = battery_serial(&app, s1, booking["battery_id"].as_i64().unwrap()).await;
    for (i, client) in [&mut w.s1_anon, &mut w.s1_admin, &mut w.s1_operator, &mut w.all_anon]
        .into_iter()
        .enumerate()
    {
        let message = expect(client, "battery_collected").await;
        shape(&message, &booked_fields(false));
        let update = expect(client, "inventory_update").await;
        assert_eq!(
            (update["action"].as_str(), update["total_batteries"].as_i64()),
            (Some("collect"), Some(1))
        );
        seen_ids[i].extend([
            message["event_id"].as_i64().unwrap(),
            update["event_id"].as_i64().unwrap(),
        ]);
    }

    // return, telemetry, station status
    app.post(
        &format!("/api/stations/{s1}/returns"),
        Some(&operator.token),
        json!({"serial": collected_serial, "soc": 40}),
    )
    .await
    .expect(201);
    app.patch(
        &format!("/api/stations/{s1}"),
        Some(&operator.token),
        json!({"status": "maintenance"}),
    )
    .await
    .expect(200);
    for (i, client) in [&mut w.s1_anon, &mut w.s1_admin, &mut w.s1_operator, &mut w.all_anon]
        .into_iter()
        .enumerate()
    {
        let updated = expect(client, "battery_updated").await;
        shape(
            &updated,
            &[
                ("type", Str),
                ("station_id", Num),
                ("battery_id", Num),
                ("serial", Str),
                ("status", Str),
                ("soc", Num),
                ("soh", Num),
                ("timestamp", Str),
                ("event_id", Num),
            ],
        );
        assert_eq!(
            (updated["status"].as_str(), updated["soc"].as_i64()),
            (Some("charging"), Some(40))
        );
        let update = expect(client, "inventory_update").await;
        assert_eq!(update["action"], "update");
        let status = expect(client, "station_status").await;
        shape(
            &status,
            &[
                ("type", Str),
                ("station_id", Num),
                ("station_name", Str),
                ("status", Str),
                ("message", Str),
                ("timestamp", Str),
                ("event_id", Num),
            ],
        );
        assert_eq!(status["status"], "maintenance");
        for m in [&updated, &update, &status] {
            seen_ids[i].push(m["event_id"].as_i64().unwrap());
        }
    }

    // admin notification: that user only
    app.post(
        "/api/notifications",
        Some(&app.admin.token),
        json!({"user_id": driver.id, "title": "System Update", "message": "New features available!"}),
    )
    .await
    .expect(201);
    let note = expect(&mut w.driver, "notification").await;
    shape(
        &note,
        &[
            ("type", Str),
            ("title", Str),
            ("message", Str),
            ("level", Str),
            ("timestamp", Str),
            ("event_id", Num),
        ],
    );
    assert_eq!(note["level"], "info");

    // Nothing leaked: the next message on the uninvolved connections is their own marker.
    app.battery(s2, "MARK-2").await;
    assert_eq!(expect(&mut w.s2_anon, "battery_added").await["station_id"], s2);
    app.post(
        "/api/notifications",
        Some(&app.admin.token),
        json!({"user_id": other.id, "title": "Marker", "message": "m"}),
    )
    .await
    .expect(201);
    assert_eq!(expect(&mut w.other_user, "notification").await["title"], "Marker");
    let marker = expect(&mut w.all_anon, "battery_added").await;
    assert_eq!(marker["station_id"], s2);

    for ids in &seen_ids {
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "event ids not increasing: {ids:?}"
        );
    }
}

async fn battery_serial(app: &TestApp, station: i64, battery: i64) -> String {
    let list = app
        .get(&format!("/api/stations/{station}/batteries"), None)
        .await
        .expect(200);
    let found = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == battery)
        .expect("battery listed")
        .clone();
    found["serial"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn ping_is_answered_and_bad_input_keeps_the_connection() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let (mut client, _) = Client::open(&app, &format!("/ws/stations/{station}"), None).await;
    expect(&mut client, "inventory_update").await;
    client
        .send_text(r#"{"type":"ping","timestamp":"2024-02-27T10:30:00"}"#)
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "timestamp": "2024-02-27T10:30:00"})
    );
    client.send_text(r#"{"type":"ping"}"#).await;
    let pong = client.next_json().await;
    assert!(pong["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{pong}");
    client.send_text("not json").await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "error", "message": "Invalid JSON"})
    );
    client.send_text(r#"{"type":"dance"}"#).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "error", "message": "Unknown message type: dance"})
    );
    // Still open and still live.
    app.battery(station, "STILL-1").await;
    expect(&mut client, "battery_added").await;
}

/// An operator taken off a station stops seeing its bookers' emails from the next event on,
/// without reconnecting; the station's events keep coming in their public form.
#[actix_web::test]
async fn an_operator_taken_off_a_station_stops_seeing_personal_data() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let successor = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Handover", Some(&operator)).await;
    app.battery(station, "H-1").await;
    app.battery(station, "H-2").await;
    let (mut watcher, _) = Client::open(&app, &format!("/ws/stations/{station}"), Some(&operator.token)).await;
    assert_eq!(expect(&mut watcher, "inventory_update").await["action"], "snapshot");

    app.book(station, &driver).await;
    assert_eq!(expect(&mut watcher, "battery_booked").await["user"], driver.email);
    assert_eq!(expect(&mut watcher, "inventory_update").await["action"], "book");

    app.patch(
        &format!("/api/stations/{station}"),
        Some(&app.admin.token),
        json!({"operator_id": successor.id}),
    )
    .await
    .expect(200);
    app.book(station, &driver).await;
    let booked = expect(&mut watcher, "battery_booked").await;
    assert!(booked.get("user").is_none(), "no email after the handover: {booked}");
}
