//! Lossless delivery (CONTRACT §4.2): resuming after an event id, retention, crash safety.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{create_admin_cli, fresh_db, spawn_app, spawn_app_with, ChildAdmin, ChildServer, TestApp};
use crate::wsclient::Client;

/// Every event id of one station in the log, oldest first.
async fn station_event_ids(app: &TestApp, station: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = app.events_after(after).await;
        let Some(last) = page.last() else { return ids };
        after = last["event_id"].as_i64().unwrap();
        ids.extend(
            page.iter()
                .filter(|e| e["station_id"] == station)
                .map(|e| e["event_id"].as_i64().unwrap()),
        );
    }
}

#[actix_web::test]
async fn a_resumed_client_gets_exactly_what_it_missed_while_events_keep_coming() {
    let app = spawn_app().await;
    let watched = app.station("Watched", None).await;
    let other = app.station("Other", None).await;
    let (mut client, _) = Client::open(&app, &format!("/ws/stations/{watched}"), None).await;
    assert_eq!(client.next_json().await["action"], "snapshot");

    const ADDITIONS: usize = 160;
    let done = AtomicUsize::new(0);
    let producer = async {
        for i in 0..ADDITIONS {
            app.battery(watched, &format!("W-{i}")).await;
            if i % 3 == 0 {
                app.battery(other, &format!("O-{i}")).await;
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let consumer = async {
        // Read a few events, then go away.
        let mut received: Vec<i64> = Vec::new();
        while received.len() < 10 {
            received.push(client.next_json().await["event_id"].as_i64().unwrap());
        }
        let last = *received.last().unwrap();
        drop(client);
        // 50 additions (100 visible events) happen while it is away.
        let away_from = done.load(Ordering::SeqCst);
        while done.load(Ordering::SeqCst) < away_from + 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // It comes back while the producer keeps going.
        let (mut back, hello) =
            Client::open(&app, &format!("/ws/stations/{watched}/?last_event_id={last}"), None).await;
        assert!(hello["last_event_id"].as_i64().unwrap() > last);
        while received.len() < ADDITIONS * 2 {
            let message = back.next_json().await;
            assert_ne!(message["action"], "snapshot", "a resumed connection gets no snapshot");
            assert_eq!(message["station_id"], watched, "{message}");
            received.push(message["event_id"].as_i64().unwrap());
        }
        received
    };
    let ((), received) = futures_util::future::join(producer, consumer).await;
    assert_eq!(
        received,
        station_event_ids(&app, watched).await,
        "every event of the station, once, in order"
    );
}

#[actix_web::test]
async fn notification_feeds_resume_too() {
    let app = spawn_app().await;
    let user = app.user("user").await;
    let (mut client, hello) = Client::open(&app, "/ws/notifications/", Some(&user.token)).await;
    let admin = Some(app.admin.token.as_str());
    app.post(
        "/api/notifications",
        admin,
        json!({"user_id": user.id, "title": "one", "message": "m"}),
    )
    .await
    .expect(201);
    let first = client.next_json().await;
    assert_eq!(first["title"], "one");
    assert!(first["event_id"].as_i64().unwrap() > hello["last_event_id"].as_i64().unwrap());
    drop(client);
    for title in ["two", "three"] {
        app.post(
            "/api/notifications",
            admin,
            json!({"user_id": user.id, "title": title, "message": "m"}),
        )
        .await
        .expect(201);
        app.post(
            "/api/notifications",
            admin,
            json!({"all": true, "title": "to all", "message": "m"}),
        )
        .await
        .expect(201);
    }
    let path = format!("/ws/notifications/?last_event_id={}", first["event_id"]);
    let (mut back, _) = Client::open(&app, &path, Some(&user.token)).await;
    let titles: Vec<Value> = back.events(4).await.into_iter().map(|m| m["title"].clone()).collect();
    assert_eq!(titles, [json!("two"), json!("to all"), json!("three"), json!("to all")]);
}

#[actix_web::test]
async fn a_resume_from_before_retention_gets_resume_expired_then_a_snapshot() {
    let app = spawn_app_with(|s| s.event_retention = 1).await;
    let station = app.station("S", None).await;
    app.battery(station, "OLD-1").await;
    let old = app.last_event_id().await;
    // The sweeper prunes every second; wait until the old events are gone.
    let mut pruned = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if app.events_after(0).await.is_empty() {
            pruned = true;
            break;
        }
    }
    assert!(pruned, "events older than the retention were not pruned");
    app.battery(station, "NEW-1").await;

    for query in [format!("last_event_id={}", old - 1), "last_event_id=999999".to_owned()] {
        let (mut client, _) = Client::open(&app, &format!("/ws/stations/{station}?{query}"), None).await;
        let error = client.next_json().await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("resume_expired")),
            "{query}: {error}"
        );
        let snapshot = client.next_json().await;
        assert_eq!(
            (snapshot["action"].as_str(), snapshot["total_batteries"].as_i64()),
            (Some("snapshot"), Some(2))
        );
    }
    let (mut client, _) = Client::open(&app, &format!("/ws/stations/{station}?last_event_id=yesterday"), None).await;
    assert_eq!(client.next_json().await["code"], "invalid_last_event_id");
    assert_eq!(client.next_json().await["action"], "snapshot");
    // A resume from within the retained range still replays.
    let recent = app.last_event_id().await;
    let (mut client, _) = Client::open(
        &app,
        &format!("/ws/stations/{station}?last_event_id={}", recent - 2),
        None,
    )
    .await;
    let replayed = client.events(2).await;
    assert_eq!(replayed[0]["type"], "battery_added");
    assert_eq!(replayed[1]["event_id"], recent);
}

/// A hard kill at any moment loses no committed event and emits none without its row; after a
/// restart, a client that resumes gets every event it missed.
#[actix_web::test]
async fn a_killed_server_loses_nothing_it_committed() {
    // SQLite by default, PostgreSQL under SWAPCAST_TEST_DATABASE=postgres, like the rest.
    let db = fresh_db();
    let url = db.url();
    create_admin_cli(&url, "crash@swapcast.test");
    let server = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&server, "crash@swapcast.test").await;
    let station = admin.station("Crash").await;
    let ws = format!("ws://127.0.0.1:{}/ws/stations/{station}", server.port);
    let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
    let mut watcher = Client { socket };
    watcher.events(2).await; // greeting and snapshot

    // 200 additions one at a time; the server is SIGKILLed while they are being made.
    let mut created = Vec::new();
    let mut failed = 0;
    for i in 0..200 {
        if i == 100 {
            let pid = server.child.id();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(3));
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            });
        }
        let reply = admin
            .post(
                &format!("/api/stations/{station}/batteries"),
                json!({"serial": format!("K-{i}"), "model": "M"}),
            )
            .await;
        match reply {
            Ok(r) if r.status() == 201 => created.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()),
            _ => failed += 1,
        }
    }
    assert!(
        failed > 0 && created.len() >= 100,
        "the kill did not land mid-burst ({} created)",
        created.len()
    );
    // What the watcher saw before the kill.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut watcher.socket),
    )
    .await
    {
        seen.push(
            serde_json::from_str::<Value>(&text).unwrap()["event_id"]
                .as_i64()
                .unwrap(),
        );
    }
    drop(server);

    // Restart on the same database.
    let server = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&server, "crash@swapcast.test").await;
    let events = admin.get("/api/events?limit=500").await;
    let events = events["items"].as_array().unwrap().clone();
    let added: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "battery_added")
        .map(|e| e["payload"]["battery_id"].as_i64().unwrap())
        .collect();
    let batteries = admin.get(&format!("/api/stations/{station}/batteries?limit=500")).await;
    let rows: HashSet<i64> = batteries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    for id in &created {
        assert_eq!(
            added.iter().filter(|a| *a == id).count(),
            1,
            "battery {id} got 201 but has no single battery_added"
        );
    }
    let added_set: HashSet<i64> = added.iter().copied().collect();
    assert_eq!(added_set, rows, "every event has its row and every row its event");
    assert_eq!(added.len(), added_set.len(), "no event twice");

    // The watcher resumes on the new process and receives every event it missed.
    let last = seen.last().copied().unwrap_or(0);
    let ws = format!(
        "ws://127.0.0.1:{}/ws/stations/{station}?last_event_id={last}",
        server.port
    );
    let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
    let mut watcher = Client { socket };
    assert_eq!(watcher.next_json().await["type"], "connection_established");
    let all: Vec<i64> = events.iter().map(|e| e["event_id"].as_i64().unwrap()).collect();
    let missed: Vec<i64> = all.iter().copied().filter(|id| *id > last).collect();
    let mut resumed = Vec::new();
    while resumed.len() < missed.len() {
        resumed.push(watcher.next_json().await["event_id"].as_i64().unwrap());
    }
    assert_eq!(resumed, missed);
}

/// A fresh subscription made while events are being produced: the snapshot carries the position
/// it reflects, the first live event is the very next one, and the counts continue from it.
#[actix_web::test]
async fn the_snapshot_seam_has_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let station = app.station("Busy", None).await;
    let done = AtomicUsize::new(0);
    let producer = async {
        for i in 0..120 {
            app.battery(station, &format!("SEAM-{i}")).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let consumer = async {
        while done.load(Ordering::SeqCst) < 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (client, _) = Client::open(&app, &format!("/ws/stations/{station}"), None).await;
        let available = follow_from_snapshot(client, 120).await;
        assert!(available < 120, "the snapshot should land mid-burst");
    };
    futures_util::future::join(producer, consumer).await;
}

/// Many dashboards opening one station's feed while it changes: each snapshot is read before its
/// subscription is registered, so what commits in between must come from the log — every one of
/// them continues from its own snapshot with no gap and no duplicate.
#[actix_web::test]
async fn fresh_subscriptions_opened_all_through_a_burst_each_continue_from_their_snapshot() {
    const ADDITIONS: usize = 300;
    let app = spawn_app().await;
    let station = app.station("Busy", None).await;
    let done = AtomicUsize::new(0);
    let producer = async {
        for i in 0..ADDITIONS {
            app.battery(station, &format!("BURST-{i}")).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let consumers = (0..60).map(|k| {
        let (app, done) = (&app, &done);
        async move {
            while done.load(Ordering::SeqCst) < 5 + 4 * k {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (client, _) = Client::open(app, &format!("/ws/stations/{station}"), None).await;
            follow_from_snapshot(client, ADDITIONS as i64).await;
        }
    });
    futures_util::future::join(producer, futures_util::future::join_all(consumers)).await;
}

/// Reads a one-station feed's snapshot, then every later event of the station (the only one
/// changing, one battery added at a time) until `total` are available: in order, each id the next
/// one, the counts continuing from the snapshot's. Returns what the snapshot showed available.
async fn follow_from_snapshot(mut client: Client, total: i64) -> i64 {
    let snapshot = client.next_json().await;
    assert_eq!(snapshot["action"], "snapshot");
    let position = snapshot["last_event_id"].as_i64().unwrap();
    let shown = snapshot["available_batteries"].as_i64().unwrap();
    let mut available = shown;
    let mut expected_id = position + 1;
    while available < total {
        let added = client.next_json().await;
        let update = client.next_json().await;
        assert_eq!(
            (added["type"].as_str(), added["event_id"].as_i64()),
            (Some("battery_added"), Some(expected_id)),
            "the event after the snapshot at {position}"
        );
        assert_eq!(update["event_id"], expected_id + 1);
        available += 1;
        assert_eq!(
            update["available_batteries"], available,
            "counts continue from the snapshot"
        );
        expected_id += 2;
    }
    shown
}
