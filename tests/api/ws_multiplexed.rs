//! `/ws` (CONTRACT §4.3): one connection, many channels; in-band authentication; requests.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, TestUser};
use crate::wsclient::Client;

async fn connect(app: &TestApp, user: Option<&TestUser>) -> Client {
    let (client, hello) = Client::open(app, "/ws", user.map(|u| u.token.as_str())).await;
    assert_eq!(hello["message"], "Connected");
    assert!(hello["last_event_id"].is_i64());
    client
}

/// Reads until a message satisfies `pick`, skipping others (auto-subscriptions, snapshots).
async fn until(client: &mut Client, pick: impl Fn(&Value) -> bool) -> Value {
    client.until(pick).await
}

fn typed<'a>(kind: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |m| m["type"] == kind
}

#[actix_web::test]
async fn in_band_authentication_subscribes_automatically() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let own = app.station("Own", Some(&operator)).await;
    let mut client = connect(&app, None).await;
    client.send_text(r#"{"type":"authenticate","token":"garbage"}"#).await;
    assert_eq!(client.next_json().await["type"], "auth_error");
    client
        .send_text(&json!({"type": "authenticate", "token": operator.token}).to_string())
        .await;
    let authenticated = client.next_json().await;
    assert_eq!(authenticated["type"], "authenticated", "{authenticated}");
    assert_eq!(authenticated["user_id"], operator.id);
    assert_eq!(authenticated["role"], "operator");
    assert_eq!(
        authenticated["subscriptions"],
        json!(["notifications", format!("station:{own}")])
    );
    let snapshot = until(&mut client, |m| m["action"] == "snapshot").await;
    assert_eq!(snapshot["channel"], format!("station:{own}"));

    // Renewing the token in band keeps the connection and its subscriptions.
    let fresh = app.login(&operator.email, crate::helpers::PASSWORD).await;
    client
        .send_text(&json!({"type": "authenticate", "token": fresh.token}).to_string())
        .await;
    let renewed = until(&mut client, typed("authenticated")).await;
    assert_eq!(renewed["subscriptions"], authenticated["subscriptions"]);
    app.battery(own, "AFTER-RENEW").await;
    let added = until(&mut client, typed("battery_added")).await;
    assert_eq!(added["channel"], format!("station:{own}"));
}

/// A client that reconnects and signs in in band resumes its automatic subscriptions from where
/// it was (`last_event_id` on `authenticate`, as `?last_event_id` at connect): the missed events,
/// not a snapshot.
#[actix_web::test]
async fn in_band_authentication_resumes_the_automatic_subscriptions() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let own = app.station("Own", Some(&operator)).await;
    let (_, hello) = Client::open(&app, "/ws", None).await;
    let position = hello["last_event_id"].as_i64().unwrap();
    app.battery(own, "MISSED-1").await;
    app.battery(own, "MISSED-2").await;
    let mut client = connect(&app, None).await;
    client
        .send_text(&json!({"type": "authenticate", "token": operator.token, "last_event_id": position}).to_string())
        .await;
    let channel = format!("station:{own}");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let m = until(&mut client, |m| {
            m["channel"] == channel.as_str() && m["type"] != "subscribed"
        })
        .await;
        assert_ne!(m["action"], "snapshot", "a snapshot instead of the replay: {m}");
        seen.push(
            m["event_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("not a replayed event: {m}")),
        );
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen[0] > position, "{seen:?}");
}

#[actix_web::test]
async fn who_may_subscribe_to_what() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let user = app.user("user").await;
    let own = app.station("Own", Some(&operator)).await;
    let other = app.station("Other", None).await;
    let callers: [(&str, Option<&TestUser>); 4] = [
        ("anonymous", None),
        ("user", Some(&user)),
        ("operator", Some(&operator)),
        ("admin", Some(&app.admin)),
    ];
    // channel, then who may subscribe (by caller name).
    let table: Vec<(String, &[&str])> = vec![
        ("stations".into(), &["anonymous", "user", "operator", "admin"]),
        (format!("station:{own}"), &["anonymous", "user", "operator", "admin"]),
        (format!("station:{other}"), &["anonymous", "user", "operator", "admin"]),
        ("notifications".into(), &["user", "operator", "admin"]),
        ("system".into(), &["admin"]),
    ];
    let mut failures = Vec::new();
    for (channel, allowed) in &table {
        for (name, caller) in callers {
            let mut client = connect(&app, caller).await;
            client
                .send_text(&json!({"type": "subscribe", "channel": channel}).to_string())
                .await;
            let answer = until(&mut client, |m| {
                m["channel"] == *channel && (m["type"] == "subscribed" || m["type"] == "error")
            })
            .await;
            let ok = if allowed.contains(&name) {
                answer["type"] == "subscribed"
            } else {
                answer["type"] == "error" && answer["code"] == "forbidden"
            };
            if !ok {
                failures.push(format!("{name} → {channel}: {answer}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let mut client = connect(&app, None).await;
    client
        .send_text(r#"{"type":"subscribe","channel":"station:999"}"#)
        .await;
    assert_eq!(until(&mut client, typed("error")).await["code"], "not_found");
    client.send_text(r#"{"type":"subscribe","channel":"weather"}"#).await;
    assert_eq!(until(&mut client, typed("error")).await["code"], "unknown_channel");
    // One spelling per channel, and what is not a name is not echoed as one.
    for (bad, echoed) in [
        (json!("station:01"), json!("station:01")),
        (json!("station:+1"), json!("station:+1")),
        (json!("station:1 "), json!("station:1 ")),
        (json!("station:"), json!("station:")),
        (json!(1), Value::Null),
        (json!({"station": 1}), Value::Null),
    ] {
        client
            .send_text(&json!({"type": "subscribe", "channel": bad}).to_string())
            .await;
        let refused = until(&mut client, typed("error")).await;
        assert_eq!(
            (&refused["code"], &refused["channel"]),
            (&json!("unknown_channel"), &echoed),
            "{bad}: {refused}"
        );
    }
}

#[actix_web::test]
async fn events_carry_their_channel_and_only_subscribed_ones_arrive() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.station("A", None).await,
        app.station("B", None).await,
        app.station("C", None).await,
    );
    let mut client = connect(&app, None).await;
    for station in [a, b] {
        client
            .send_text(&json!({"type": "subscribe", "channel": format!("station:{station}")}).to_string())
            .await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "subscribed", "channel": format!("station:{station}")})
        );
        let snapshot = client.next_json().await;
        assert_eq!(
            (snapshot["channel"].clone(), snapshot["action"].clone()),
            (json!(format!("station:{station}")), json!("snapshot"))
        );
    }
    app.battery(c, "C-1").await;
    app.battery(a, "A-1").await;
    app.battery(b, "B-1").await;
    let got = client.events(4).await;
    let seen: Vec<(Value, Value)> = got.iter().map(|m| (m["channel"].clone(), m["type"].clone())).collect();
    assert_eq!(
        seen,
        [
            (json!(format!("station:{a}")), json!("battery_added")),
            (json!(format!("station:{a}")), json!("inventory_update")),
            (json!(format!("station:{b}")), json!("battery_added")),
            (json!(format!("station:{b}")), json!("inventory_update")),
        ]
    );
    client
        .send_text(&json!({"type": "unsubscribe", "channel": format!("station:{a}")}).to_string())
        .await;
    assert_eq!(client.next_json().await["type"], "unsubscribed");
    app.battery(a, "A-2").await;
    app.battery(b, "B-2").await;
    assert_eq!(client.next_json().await["channel"], format!("station:{b}"));
}

async fn request(client: &mut Client, id: &str, action: &str, data: Value) -> Value {
    client
        .send_text(&json!({"type": "request", "request_id": id, "action": action, "data": data}).to_string())
        .await;
    until(client, |m| m["request_id"] == id).await
}

#[actix_web::test]
async fn actions_answer_like_their_rest_twins() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("S", Some(&operator)).await;
    let mut op = connect(&app, Some(&operator)).await;
    let mut drv = connect(&app, Some(&driver)).await;

    let added = request(
        &mut op,
        "a1",
        "add_battery",
        json!({"station_id": station, "serial": "WS-1", "model": "M", "soc": 80}),
    )
    .await;
    assert_eq!(
        (added["type"].as_str(), added["action"].as_str()),
        (Some("response"), Some("add_battery")),
        "{added}"
    );
    assert_eq!(added["data"]["serial"], "WS-1");
    let dup = request(
        &mut op,
        "a2",
        "add_battery",
        json!({"station_id": station, "serial": "WS-1", "model": "M"}),
    )
    .await;
    assert_eq!(dup["error"]["code"], "serial_taken");
    let bad = request(
        &mut op,
        "a3",
        "add_battery",
        json!({"station_id": station, "serial": "WS-2", "model": "M", "soc": 500}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "validation_failed");
    assert!(bad["error"]["fields"]["soc"].is_string());

    let listed = request(&mut drv, "l1", "list_stations", json!({})).await;
    assert_eq!(listed["data"]["items"][0]["available_batteries"], 1);
    let got = request(&mut drv, "g1", "get_station", json!({"station_id": 999})).await;
    assert_eq!(got["error"]["code"], "not_found");
    let forbidden = request(
        &mut drv,
        "s1",
        "set_station_status",
        json!({"station_id": station, "status": "offline"}),
    )
    .await;
    assert_eq!(forbidden["error"]["code"], "forbidden");

    let booked = request(&mut drv, "b1", "book_battery", json!({"station_id": station})).await;
    let booking = booked["data"]["id"].as_i64().unwrap();
    let none = request(&mut drv, "b2", "book_battery", json!({"station_id": station})).await;
    assert_eq!(none["error"]["code"], "no_battery_available");
    let rest = app
        .post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await;
    assert_eq!(
        rest.expect_error(409, "no_battery_available")["error"]["code"],
        none["error"]["code"]
    );
    for (id, action) in [("r1", "mark_ready"), ("c1", "collect_booking")] {
        let done = request(&mut op, id, action, json!({"booking_id": booking})).await;
        assert_eq!(done["type"], "response", "{done}");
    }
    let cancel = request(&mut drv, "x1", "cancel_booking", json!({"booking_id": booking})).await;
    assert_eq!(cancel["error"]["code"], "invalid_booking_state");
    let status = request(
        &mut op,
        "s2",
        "set_station_status",
        json!({"station_id": station, "status": "maintenance"}),
    )
    .await;
    assert_eq!(status["data"]["status"], "maintenance");
    let unknown = request(&mut op, "u1", "launch_rocket", json!({})).await;
    assert_eq!(unknown["error"]["code"], "validation_failed");
    let mut anonymous = connect(&app, None).await;
    let refused = request(&mut anonymous, "n1", "book_battery", json!({"station_id": station})).await;
    assert_eq!(refused["error"]["code"], "not_authenticated");
}

#[actix_web::test]
async fn a_race_between_socket_and_rest_books_each_battery_once() {
    let app = spawn_app().await;
    let station = app.station("Race", None).await;
    for i in 0..3 {
        app.battery(station, &format!("RACE-{i}")).await;
    }
    let drivers = join_all((0..4).map(|_| app.user("user"))).await;
    let mut sockets = Vec::new();
    for driver in &drivers {
        sockets.push(connect(&app, Some(driver)).await);
    }
    let by_socket = sockets.iter_mut().enumerate().map(|(i, socket)| async move {
        let reply = request(
            socket,
            &format!("race-{i}"),
            "book_battery",
            json!({"station_id": station}),
        )
        .await;
        reply["data"]["battery_id"].as_i64()
    });
    let by_rest = drivers.iter().map(|d| {
        let app = &app;
        async move {
            let reply = app
                .post("/api/bookings", Some(&d.token), json!({"station_id": station}))
                .await;
            reply.body["battery_id"].as_i64()
        }
    });
    let (socket_wins, rest_wins) = futures_util::future::join(join_all(by_socket), join_all(by_rest)).await;
    let mut won: Vec<i64> = socket_wins.into_iter().chain(rest_wins).flatten().collect();
    won.sort();
    assert_eq!(won.len(), 3, "three batteries, three bookings: {won:?}");
    won.dedup();
    assert_eq!(won.len(), 3, "a battery booked twice");
}

#[actix_web::test]
async fn role_changes_and_deactivation_reach_live_connections() {
    let app = spawn_app().await;
    let second_admin = app.user("admin").await;
    let driver = app.user("user").await;
    let station = app.station("S", None).await;
    app.battery(station, "REV-1").await;
    let mut admin_ws = connect(&app, Some(&second_admin)).await;
    until(&mut admin_ws, typed("authenticated")).await;
    admin_ws.send_text(r#"{"type":"subscribe","channel":"system"}"#).await;
    until(&mut admin_ws, |m| m["type"] == "subscribed" && m["channel"] == "system").await;
    admin_ws
        .send_text(&json!({"type": "subscribe", "channel": format!("station:{station}")}).to_string())
        .await;
    until(&mut admin_ws, |m| m["action"] == "snapshot").await;
    let (mut seed, _) = Client::open(&app, &format!("/ws/stations/{station}"), Some(&second_admin.token)).await;
    seed.next_json().await;

    app.patch(
        &format!("/api/users/{}", second_admin.id),
        Some(&app.admin.token),
        json!({"role": "user"}),
    )
    .await
    .expect(200);
    let dropped = tokio::time::timeout(Duration::from_secs(1), until(&mut admin_ws, typed("unsubscribed")))
        .await
        .expect("the subscription was dropped within a second");
    assert_eq!(
        (dropped["channel"].as_str(), dropped["reason"].as_str()),
        (Some("system"), Some("forbidden"))
    );
    // What is still allowed stays, without the personal data a user may not see.
    app.book(station, &driver).await;
    let booked = until(&mut admin_ws, typed("battery_booked")).await;
    assert!(booked.get("user").is_none(), "{booked}");
    let booked = until(&mut seed, typed("battery_booked")).await;
    assert!(booked.get("user").is_none(), "{booked}");

    app.patch(
        &format!("/api/users/{}", second_admin.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect(200);
    for client in [&mut admin_ws, &mut seed] {
        let code = tokio::time::timeout(Duration::from_secs(1), client.close_code())
            .await
            .expect("closed within a second");
        assert_eq!(code, Some(4003));
    }
}

#[actix_web::test]
async fn admins_watch_live_system_metrics() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let mut admin = connect(&app, Some(&app.admin)).await;
    admin.send_text(r#"{"type":"subscribe","channel":"system"}"#).await;
    until(&mut admin, |m| m["type"] == "subscribed" && m["channel"] == "system").await;
    let (mut viewer, _) = Client::open(&app, &format!("/ws/stations/{station}"), None).await;
    viewer.next_json().await;
    // Produce events until a sample arrives that saw them.
    let produce = async {
        for i in 0..150 {
            app.battery(station, &format!("SYS-{i}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let watch = async {
        loop {
            let sample = until(&mut admin, typed("system_metrics")).await;
            if sample["events_per_sec"].as_f64().unwrap_or(0.0) > 0.0 {
                return sample;
            }
        }
    };
    let sample = tokio::select! {
        sample = watch => sample,
        () = produce => panic!("no system_metrics with live numbers in 15 s"),
    };
    assert_eq!(sample["channel"], "system");
    assert!(sample["connections"].as_u64().unwrap() >= 2, "{sample}");
    assert!(sample["subscriptions"].as_u64().unwrap() >= 3, "{sample}");
    assert!(sample["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{sample}");
    assert!(sample["node"].as_str().is_some_and(|n| !n.is_empty()));
}

#[actix_web::test]
async fn admins_read_viewers_per_station() {
    let app = spawn_app().await;
    let (a, b) = (app.station("A", None).await, app.station("B", None).await);
    let mut clients = Vec::new();
    for path in [
        format!("/ws/stations/{a}"),
        format!("/ws/stations/{a}/"),
        format!("/ws/stations/{b}"),
        "/ws/stations/".into(),
    ] {
        let (mut client, _) = Client::open(&app, &path, None).await;
        client.next_json().await;
        clients.push(client);
    }
    let stats = app.get("/api/realtime/stats", Some(&app.admin.token)).await.expect(200);
    assert_eq!(
        stats["stations"],
        json!([{"station_id": a, "viewers": 2}, {"station_id": b, "viewers": 1}])
    );
    assert_eq!(stats["all_stations_viewers"], 1);
    assert_eq!(stats["connections"], 4);
    assert_eq!(stats["nodes"].as_array().unwrap().len(), 1);
    let user = app.user("user").await;
    app.get("/api/realtime/stats", Some(&user.token))
        .await
        .expect_error(403, "forbidden");
    drop(clients);
}

#[actix_web::test]
async fn channels_resume_after_an_event_id_too() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    app.battery(station, "R-1").await;
    let after = app.last_event_id().await;
    app.battery(station, "R-2").await;
    let mut client = connect(&app, None).await;
    let channel = format!("station:{station}");
    client
        .send_text(&json!({"type": "subscribe", "channel": channel, "last_event_id": after}).to_string())
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "subscribed", "channel": channel})
    );
    let replayed = client.events(2).await;
    assert_eq!(
        replayed[0]["type"], "battery_added",
        "a replay, not a snapshot: {}",
        replayed[0]
    );
    assert_eq!(replayed[0]["event_id"], after + 1);
    assert_eq!(replayed[1]["event_id"], after + 2);
    assert!(replayed.iter().all(|m| m["channel"] == channel));
    // And at connect, for the automatic subscriptions.
    let user = app.user("user").await;
    app.post(
        "/api/notifications",
        Some(&app.admin.token),
        json!({"user_id": user.id, "title": "missed", "message": "m"}),
    )
    .await
    .expect(201);
    let path = format!("/ws?last_event_id={after}");
    let (mut back, _) = Client::open(&app, &path, Some(&user.token)).await;
    let missed = until(&mut back, typed("notification")).await;
    assert_eq!(
        (missed["title"].as_str(), missed["channel"].as_str()),
        (Some("missed"), Some("notifications"))
    );
}
