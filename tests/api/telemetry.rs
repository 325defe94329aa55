//! Telemetry in batches (CONTRACT §5 v2): each reading judged alone and refused by its index, the
//! rest applied in one change, one `battery_updated` per battery that changed and one
//! `inventory_update` per station whose counts changed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{kinds, spawn_app, TestApp};

/// A battery at `station` that a driver collected and brought back: charging, at soc 30.
async fn charging(app: &TestApp, station: i64, serial: &str) {
    let admin = Some(app.admin.token.as_str());
    app.battery(station, serial).await;
    let driver = app.user("user").await;
    let booking = app.book(station, &driver).await;
    app.post(&format!("/api/bookings/{}/collect", booking["id"]), admin, json!({}))
        .await
        .expect(200);
    app.post(
        &format!("/api/stations/{station}/returns"),
        admin,
        json!({"serial": serial, "soc": 30}),
    )
    .await
    .expect(201);
}

async fn batteries(app: &TestApp, station: i64) -> Vec<Value> {
    app.get(&format!("/api/stations/{station}/batteries"), Some(&app.admin.token))
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn raw(app: &TestApp, body: String) -> crate::helpers::Reply {
    let response = app
        .client
        .post(app.url("/api/telemetry"))
        .bearer_auth(&app.admin.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    TestApp::reply(response).await
}

fn codes(report: &Value) -> Vec<(u64, String)> {
    report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap().to_owned()))
        .collect()
}

#[actix_web::test]
async fn a_batch_applies_each_good_reading_and_refuses_the_rest_by_index() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let here = app.station("Telemetry Here", None).await;
    let there = app.station("Telemetry There", None).await;
    charging(&app, here, "T-C").await;
    app.battery(here, "T-A").await;
    let retired = app.battery(here, "T-R").await;
    app.patch(
        &format!("/api/batteries/{retired}"),
        admin,
        json!({"status": "retired"}),
    )
    .await
    .expect(200);
    app.battery(there, "T-B").await;
    let before = app.get(&format!("/api/stations/{here}"), admin).await.expect(200);
    let mark = app.last_event_id().await;

    let report = app
        .post(
            "/api/telemetry",
            admin,
            json!({"readings": [
                {"serial": "T-A", "soc": 50, "soh": 90},
                {"serial": "NOPE", "soc": 50},
                {"serial": "T-C", "soc": 96},
                {"serial": "T-A", "soc": 101},
                {"serial": "T-R", "soc": 40},
                "not a reading",
                {"serial": "T-A", "soc": 55},
                {"serial": "T-B", "soc": 90, "soh": 98},  // as it was added
                {"serial": "T-A"},
                {"serial": "T-A", "soc": "full"},
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(report["accepted"], 4, "{report}");
    assert_eq!(report["changed"], 2, "{report}");
    let want: Vec<(u64, String)> = [
        (1, "unknown_serial"),
        (3, "out_of_range"),
        (4, "battery_retired"),
        (5, "invalid_reading"),
        (8, "invalid_reading"),
        (9, "invalid_reading"),
    ]
    .iter()
    .map(|(i, c)| (*i, (*c).to_owned()))
    .collect();
    assert_eq!(codes(&report), want, "{report}");

    // The last reading of a battery stands; a charged one became available; the unchanged one and
    // the refused ones are as they were.
    let here_now = batteries(&app, here).await;
    let by_serial = |serial: &str| here_now.iter().find(|b| b["serial"] == serial).unwrap().clone();
    assert_eq!(
        (by_serial("T-A")["soc"].clone(), by_serial("T-A")["soh"].clone()),
        (json!(55), json!(90))
    );
    assert_eq!(by_serial("T-C")["status"], "available");
    assert_eq!(by_serial("T-C")["soc"], 96);
    assert_eq!(by_serial("T-R")["status"], "retired");
    let station = app.get(&format!("/api/stations/{here}"), admin).await.expect(200);
    assert_eq!(
        station["available_batteries"],
        before["available_batteries"].as_i64().unwrap() + 1
    );
    assert_eq!(
        station["charging_batteries"],
        before["charging_batteries"].as_i64().unwrap() - 1
    );

    // One battery_updated per changed battery, one inventory_update for the one station whose
    // counts moved; nothing for the unchanged battery or its station.
    let events = app.all_events_after(mark).await;
    let mut seen = kinds(&events);
    seen.sort_unstable();
    assert_eq!(
        seen,
        vec!["battery_updated", "battery_updated", "inventory_update"],
        "{events:?}"
    );
    let updated: Vec<(&str, i64)> = events
        .iter()
        .filter(|e| e["type"] == "battery_updated")
        .map(|e| {
            (
                e["payload"]["serial"].as_str().unwrap(),
                e["payload"]["soc"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        updated.contains(&("T-A", 55)) && updated.contains(&("T-C", 96)),
        "{updated:?}"
    );
    let inventory = events.iter().find(|e| e["type"] == "inventory_update").unwrap();
    assert_eq!(inventory["station_id"], here);
    assert_eq!(
        inventory["payload"]["available_batteries"],
        station["available_batteries"]
    );

    // The same readings again change nothing and say nothing.
    let mark = app.last_event_id().await;
    let again = app
        .post(
            "/api/telemetry",
            admin,
            json!({"readings": [{"serial": "T-A", "soc": 55, "soh": 90}]}),
        )
        .await
        .expect(200);
    assert_eq!(
        (again["accepted"].clone(), again["changed"].clone()),
        (json!(1), json!(0))
    );
    assert!(app.all_events_after(mark).await.is_empty());
}

#[actix_web::test]
async fn operators_report_on_their_own_stations_and_bad_batches_change_nothing() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let operator = app.user("operator").await;
    let theirs = app.station("Operated", Some(&operator)).await;
    let other = app.station("Not Theirs", None).await;
    app.battery(theirs, "O-1").await;
    app.battery(other, "O-2").await;

    let report = app
        .post(
            "/api/telemetry",
            Some(&operator.token),
            json!({"readings": [{"serial": "O-1", "soc": 40}, {"serial": "O-2", "soc": 40}]}),
        )
        .await
        .expect(200);
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(codes(&report), vec![(1, "forbidden".to_owned())]);
    assert_eq!(batteries(&app, other).await[0]["soc"], 90);

    let driver = app.user("user").await;
    app.post("/api/telemetry", Some(&driver.token), json!({"readings": []}))
        .await
        .expect_error(403, "forbidden");
    app.post("/api/telemetry", None, json!({"readings": []}))
        .await
        .expect_error(401, "not_authenticated");

    let mark = app.last_event_id().await;
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"serial": "O-1", "soc": 1})).collect();
    app.post("/api/telemetry", admin, json!({"readings": too_many}))
        .await
        .expect_error(422, "validation_failed");
    app.post("/api/telemetry", admin, json!({"readings": {"serial": "O-1"}}))
        .await
        .expect_error(422, "validation_failed");
    app.post("/api/telemetry", admin, json!({}))
        .await
        .expect_error(422, "validation_failed");
    let huge = format!(r#"{{"readings":[{{"serial":"{}","soc":1}}]}}"#, "x".repeat(1100 * 1024));
    raw(&app, huge).await.expect_error(413, "payload_too_large");
    // The largest batch a client may send fits: a thousand readings of 64-character serials,
    // every character escaped as JSON allows (here beyond the Basic Multilingual Plane, twelve
    // bytes each) — judged reading by reading, not refused whole.
    let serial = "\\ud83d\\udd0b".repeat(64);
    let readings: Vec<String> = (0..1000)
        .map(|_| format!(r#"{{"serial":"{serial}","soc":100,"soh":100}}"#))
        .collect();
    let largest = format!(r#"{{"readings":[{}]}}"#, readings.join(","));
    assert!(largest.len() > 768 * 1024, "{} bytes", largest.len());
    let judged = raw(&app, largest).await.expect(200);
    assert_eq!(judged["rejected"].as_array().map(Vec::len), Some(1000));
    assert_eq!(judged["rejected"][999]["code"], "unknown_serial");
    raw(&app, "{\"readings\": [".into())
        .await
        .expect_error(400, "malformed_json");
    let empty = app
        .post("/api/telemetry", admin, json!({"readings": []}))
        .await
        .expect(200);
    assert_eq!(empty, json!({"accepted": 0, "changed": 0, "rejected": []}));
    assert!(app.all_events_after(mark).await.is_empty());
    assert_eq!(batteries(&app, theirs).await[0]["soc"], 40);
}

/// A burst far larger than a reader's queue and the kernel's buffers — ten thousand
/// `battery_updated` from ten batches — reaches a reader that reads only once it was all
/// committed: every event, once, in order, and no close. (The reader's channel fell behind and
/// caught up again from the log at its pace; only a reader that stops is closed.)
#[actix_web::test]
async fn a_burst_larger_than_the_queue_reaches_a_late_reader_whole() {
    const BATTERIES: usize = 1000;
    const BATCHES: usize = 10;
    // A heartbeat of ten minutes: the reader's pause below is never taken for a stop.
    let app = crate::helpers::spawn_app_with(|s| {
        s.send_queue = 8;
        s.heartbeat = 600;
    })
    .await;
    let station = app.station("Burst", None).await;
    for chunk in (0..BATTERIES).collect::<Vec<_>>().chunks(50) {
        let serials: Vec<String> = chunk.iter().map(|i| format!("BURST-{i}")).collect();
        futures_util::future::join_all(serials.iter().map(|serial| app.battery(station, serial))).await;
    }
    let mut late = small_buffer_client(&app, &format!("/ws/stations/{station}/")).await;
    assert_eq!(late.next_json().await["type"], "connection_established");
    assert_eq!(late.next_json().await["type"], "inventory_update");

    let mut changed = 0;
    for batch in 0..BATCHES {
        let readings: Vec<Value> = (0..BATTERIES)
            .map(|i| json!({"serial": format!("BURST-{i}"), "soc": 10 + batch}))
            .collect();
        let report = app
            .post("/api/telemetry", Some(&app.admin.token), json!({"readings": readings}))
            .await
            .expect(200);
        changed += report["changed"].as_u64().unwrap() as usize;
    }
    assert_eq!(changed, BATTERIES * BATCHES);

    let mut ids = Vec::with_capacity(changed);
    while ids.len() < changed {
        let message = late.next_json().await;
        assert_eq!(message["type"], "battery_updated", "{message}");
        ids.push(message["event_id"].as_i64().unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "missed, doubled or reordered events"
    );
    late.send_text(r#"{"type":"ping","timestamp":"after"}"#).await;
    assert_eq!(late.next_json().await["type"], "pong");
}

/// A WebSocket client of `path` whose socket has a 4 KiB receive buffer, so what it has not read
/// waits on the server's side.
async fn small_buffer_client(app: &crate::helpers::TestApp, path: &str) -> crate::wsclient::Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (socket, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    crate::wsclient::Client { socket }
}

/// A reader that works through bursts steadily but slowly, with a heartbeat far shorter than
/// that takes: its Pongs come late, behind what it has not read (in the kernels' buffers, which
/// grow to megabytes on loopback). It is never cut off without a
/// Close: it keeps its connection, or is closed with 1013 after what it was sent and resumes —
/// either way every event reaches it once, in order.
#[actix_web::test]
async fn a_slow_steady_reader_is_never_cut_off_without_a_close() {
    const BATTERIES: usize = 300;
    const BATCHES: usize = 6;
    let app = crate::helpers::spawn_app_with(|s| s.heartbeat = 1).await;
    let station = app.station("Slow", None).await;
    for chunk in (0..BATTERIES).collect::<Vec<_>>().chunks(50) {
        let serials: Vec<String> = chunk.iter().map(|i| format!("SLOW-{i}")).collect();
        futures_util::future::join_all(serials.iter().map(|serial| app.battery(station, serial))).await;
    }
    let start = app.last_event_id().await;
    let feed = format!("/ws/stations/{station}/");
    let mut reader = crate::wsclient::Client::connect(&app, &format!("{feed}?last_event_id={start}")).await;
    assert_eq!(reader.next_json().await["type"], "connection_established");
    for batch in 0..BATCHES {
        let readings: Vec<Value> = (0..BATTERIES)
            .map(|i| json!({"serial": format!("SLOW-{i}"), "soc": 10 + batch}))
            .collect();
        app.post("/api/telemetry", Some(&app.admin.token), json!({"readings": readings}))
            .await
            .expect(200);
    }
    let expected = BATTERIES * BATCHES;
    let (mut ids, mut resumes) = (Vec::with_capacity(expected), 0);
    while ids.len() < expected {
        let message = reader.next().await;
        if let Some(code) = message.get("close") {
            assert_eq!(code, 1013, "only a slow consumer's close");
            resumes += 1;
            assert!(resumes < 20, "resumed over and over");
            let last = ids.last().copied().unwrap_or(start);
            reader = crate::wsclient::Client::connect(&app, &format!("{feed}?last_event_id={last}")).await;
            assert_eq!(reader.next_json().await["type"], "connection_established");
            continue;
        }
        assert_eq!(message["type"], "battery_updated", "{message}");
        ids.push(message["event_id"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let want: Vec<i64> = (start + 1..=start + expected as i64).collect();
    assert_eq!(ids, want, "missed, doubled or reordered events");
}
