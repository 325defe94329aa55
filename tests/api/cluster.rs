//! Several nodes as one server: separate processes on one fresh PostgreSQL database and NATS.
//!
//! NATS is the machine's (`SWAPCAST_TEST_NATS_URL`, default `nats://127.0.0.1:4222`), except in
//! the outage test, which starts and stops its own `nats-server`. Like PostgreSQL, an unreachable
//! NATS skips these tests on a laptop and fails them under `CI=true`.

use std::collections::HashSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{create_admin_cli, metric, postgres_db, ChildAdmin, ChildServer, TestDb, PASSWORD};
use crate::wsclient::Client;

const ADMIN: &str = "cluster@swapcast.test";
/// How long a test waits for the cluster to converge before it reports what is missing.
const CONVERGE: Duration = Duration::from_secs(20);

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The machine's NATS, or `None` (with the reason printed) when it is unreachable off CI.
fn shared_nats() -> Option<String> {
    let url = std::env::var("SWAPCAST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let address = url.trim_start_matches("nats://").to_owned();
    match TcpStream::connect(&address) {
        Ok(_) => Some(url),
        Err(e) => {
            assert!(!required(), "NATS at {url} is required here but unreachable: {e}");
            eprintln!("skipping: NATS at {url} is unreachable ({e})");
            None
        }
    }
}

/// A fresh PostgreSQL database with a first admin, and the NATS to share; `None` to skip.
fn cluster_db() -> Option<(TestDb, String)> {
    let nats = shared_nats()?;
    let db = postgres_db()?;
    create_admin_cli(&db.url(), ADMIN);
    Some((db, nats))
}

fn node(db: &TestDb, nats: &str, name: &str) -> ChildServer {
    ChildServer::start_with(&db.url(), &[("SWAPCAST_NATS_URL", nats), ("SWAPCAST_NODE_ID", name)])
}

async fn watch(server: &ChildServer, path: &str) -> Client {
    let url = format!("ws://127.0.0.1:{}{path}", server.port);
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket upgrade");
    Client { socket }
}

/// The ids of the log's station events after `after`, as the admin API lists them.
async fn station_events_after(admin: &ChildAdmin, station: Option<i64>, after: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor = after;
    loop {
        let page = admin.get(&format!("/api/events?after={cursor}&limit=500")).await;
        let items = page["items"].as_array().expect("an event page").clone();
        if items.is_empty() {
            return ids;
        }
        for event in &items {
            cursor = event["event_id"].as_i64().unwrap();
            let of_station = event["station_id"].as_i64();
            if of_station.is_some() && (station.is_none() || of_station == station) {
                ids.push(cursor);
            }
        }
    }
}

/// Reads event ids from `client` until `last` has arrived (or [`CONVERGE`] passed), skipping
/// greetings and snapshots.
async fn ids_until(client: &mut Client, last: i64) -> Vec<i64> {
    let deadline = Instant::now() + CONVERGE;
    let mut seen = Vec::new();
    while seen.last().is_none_or(|id| *id < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(message))) = tokio::time::timeout(left, client.socket.next()).await else {
            break;
        };
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if let Some(id) = value["event_id"].as_i64() {
                if value["action"] != "snapshot" && value["type"] != "connection_established" {
                    seen.push(id);
                }
            }
        }
    }
    seen
}

/// The newest event id, as a connecting client is told it.
async fn last_event_id(server: &ChildServer) -> i64 {
    let mut client = watch(server, "/ws/stations/").await;
    let hello = client.next_json().await;
    hello["last_event_id"]
        .as_i64()
        .expect("the greeting carries last_event_id")
}

async fn add_batteries(admin: &ChildAdmin, station: i64, prefix: &str, n: usize) -> usize {
    let mut created = 0;
    for i in 0..n {
        let reply = admin
            .post(
                &format!("/api/stations/{station}/batteries"),
                json!({"serial": format!("{prefix}-{i}"), "model": "M"}),
            )
            .await;
        if reply.is_ok_and(|r| r.status() == 201) {
            created += 1;
        }
    }
    created
}

/// Polls `path` on `server` until `accept` holds for its JSON (or [`CONVERGE`] passed).
async fn wait_for(admin: &ChildAdmin, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let value = admin.get(path).await;
        if accept(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn two_nodes_deliver_each_others_events_in_order() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "node-a");
    let b = node(&db, &nats, "node-b");
    for server in [&a, &b] {
        assert_eq!(wait_backplane(server, "ok").await["backplane"], "ok");
    }
    let admin_a = ChildAdmin::sign_in(&a, ADMIN).await;
    let admin_b = ChildAdmin::sign_in(&b, ADMIN).await;
    let east = admin_a.station("East").await;
    let west = admin_b.station("West").await;
    let before = last_event_id(&a).await;

    let mut on_a = watch(&a, &format!("/ws/stations/?last_event_id={before}")).await;
    let mut on_b = watch(&b, &format!("/ws/stations/?last_event_id={before}")).await;
    let mut west_on_a = watch(&a, &format!("/ws/stations/{west}/?last_event_id={before}")).await;

    // Both nodes take writes at once, to both stations.
    let (made_a, made_b) = tokio::join!(
        async { add_batteries(&admin_a, east, "A-E", 25).await + add_batteries(&admin_a, west, "A-W", 5).await },
        async { add_batteries(&admin_b, west, "B-W", 25).await + add_batteries(&admin_b, east, "B-E", 5).await },
    );
    assert_eq!((made_a, made_b), (30, 30));

    let expected = station_events_after(&admin_a, None, before).await;
    assert_eq!(expected.len(), 120, "two events per added battery in the log");
    let last = *expected.last().unwrap();
    assert_eq!(ids_until(&mut on_a, last).await, expected, "node A's subscriber");
    assert_eq!(ids_until(&mut on_b, last).await, expected, "node B's subscriber");
    let west_expected = station_events_after(&admin_a, Some(west), before).await;
    assert_eq!(
        ids_until(&mut west_on_a, *west_expected.last().unwrap()).await,
        west_expected,
        "one station's events, mostly made on node B, on node A"
    );

    // They came over NATS: hardly any had to be read from the log (each node made only half).
    for server in [&a, &b] {
        let from_log = metric(server, "swapcast_events_from_log_total").await;
        assert!(
            from_log < 30.0,
            "{from_log} of 120 events read from the log on {}",
            server.port
        );
    }

    // Each node is ready with its backplane, and the stats are the cluster's.
    for server in [&a, &b] {
        let ready: Value = reqwest::get(format!("{}/readyz", server.address()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["backplane"], "ok", "{ready}");
        assert_eq!(ready["status"], "ready", "{ready}");
    }
    let stats = wait_for(&admin_b, "/api/realtime/stats", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    let nodes: HashSet<&str> = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, HashSet::from(["node-a", "node-b"]), "{stats}");
    assert_eq!(stats["connections"], 3, "A's two watchers and B's one: {stats}");
    assert_eq!(stats["all_stations_viewers"], 2, "{stats}");
    let west_viewers = stats["stations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["station_id"] == west)
        .map(|s| s["viewers"].clone());
    assert_eq!(west_viewers, Some(json!(1)), "{stats}");

    // The system channel says which node it samples.
    let mut system = watch(&b, &format!("/ws?token={}", admin_b.token)).await;
    system.send_text(r#"{"type":"subscribe","channel":"system"}"#).await;
    let sample = loop {
        let message = system.next_json().await;
        if message["type"] == "system_metrics" {
            break message;
        }
    };
    assert_eq!(sample["node"], "node-b", "{sample}");
}

#[actix_web::test]
async fn clients_of_a_killed_node_resume_on_another_and_lose_nothing() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "doomed");
    let b = node(&db, &nats, "survivor");
    let admin_b = ChildAdmin::sign_in(&b, ADMIN).await;
    let station = admin_b.station("Failover").await;
    let before = last_event_id(&b).await;
    let mut watcher = watch(&a, &format!("/ws/stations/{station}/?last_event_id={before}")).await;

    // Writes go on through node B while node A dies under its watcher.
    let writer = async {
        let mut made = 0;
        for round in 0..8 {
            made += add_batteries(&admin_b, station, &format!("F{round}"), 10).await;
        }
        made
    };
    let killer = async {
        let mut seen = Vec::new();
        while seen.len() < 20 {
            match tokio::time::timeout(CONVERGE, watcher.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if let Some(id) = value["event_id"].as_i64() {
                        seen.push(id);
                    }
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("node A's watcher stopped early: {other:?}"),
            }
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &a.child.id().to_string()])
            .status();
        // Whatever was already in flight on the socket still counts as seen.
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(2), watcher.socket.next()).await {
            if let Message::Text(text) = message {
                if let Some(id) = serde_json::from_str::<Value>(&text).unwrap()["event_id"].as_i64() {
                    seen.push(id);
                }
            }
        }
        seen
    };
    let (made, seen_on_a) = tokio::join!(writer, killer);
    assert_eq!(made, 80);
    let expected = station_events_after(&admin_b, Some(station), before).await;
    assert_eq!(expected.len(), 160);
    let resume_from = *seen_on_a.last().unwrap();
    assert!(
        resume_from < *expected.last().unwrap(),
        "node A died before the stream ended"
    );

    let mut resumed = watch(&b, &format!("/ws/stations/{station}/?last_event_id={resume_from}")).await;
    let after_resume = ids_until(&mut resumed, *expected.last().unwrap()).await;
    let mut everything = seen_on_a.clone();
    everything.extend(&after_resume);
    assert_eq!(everything, expected, "seen on A, then on B: all, in order, once");
}

/// A `nats-server` of the test's own, on a free port, to stop and start again.
struct OwnNats {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> Option<OwnNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats { port, child: None };
        match nats.resume() {
            Ok(()) => Some(nats),
            Err(e) => {
                assert!(!required(), "nats-server is required here but cannot start: {e}");
                eprintln!("skipping: cannot start nats-server ({e})");
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new(std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `kill -<name>`: `STOP` hangs the server with every connection open, `CONT` lets it go on.
    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("nats-server runs");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn backplane_of(server: &ChildServer) -> Value {
    let ready: Value = reqwest::get(format!("{}/readyz", server.address()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready
}

async fn wait_backplane(server: &ChildServer, state: &str) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let ready = backplane_of(server).await;
        if ready["backplane"] == state || Instant::now() > deadline {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn events_made_while_nats_is_down_reach_other_nodes_in_order() {
    let Some(mut nats) = OwnNats::start() else { return };
    let Some(db) = postgres_db() else { return };
    create_admin_cli(&db.url(), ADMIN);
    let a = node(&db, &nats.url(), "writer");
    let b = node(&db, &nats.url(), "reader");
    let admin_a = ChildAdmin::sign_in(&a, ADMIN).await;
    let station = admin_a.station("Outage").await;
    let before = last_event_id(&a).await;
    let mut on_b = watch(&b, &format!("/ws/stations/{station}/?last_event_id={before}")).await;
    assert_eq!(wait_backplane(&b, "ok").await["backplane"], "ok");
    add_batteries(&admin_a, station, "before", 2).await;

    nats.stop();
    for server in [&a, &b] {
        let ready = wait_backplane(server, "down").await;
        assert_eq!(ready["backplane"], "down", "{ready}");
        assert_eq!(ready["status"], "degraded", "{ready}");
    }
    assert_eq!(add_batteries(&admin_a, station, "during", 10).await, 10);

    nats.resume().unwrap();
    for server in [&a, &b] {
        assert_eq!(wait_backplane(server, "ok").await["backplane"], "ok");
    }
    assert_eq!(add_batteries(&admin_a, station, "after", 3).await, 3);

    let expected = station_events_after(&admin_a, Some(station), before).await;
    assert_eq!(expected.len(), 30, "two events for each of 15 batteries");
    assert_eq!(ids_until(&mut on_b, *expected.last().unwrap()).await, expected);
}

#[actix_web::test]
async fn concurrent_bookings_across_two_nodes_book_each_battery_once() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "left");
    let b = node(&db, &nats, "right");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let station = admin.station("Contested").await;
    assert_eq!(add_batteries(&admin, station, "C", 5).await, 5);

    let drivers = join_all((0..10).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        driver(server, i)
    }))
    .await;
    let attempts = (0..50).map(|i| {
        // Driver i books through node i % 2 — the node that signed them in.
        let (address, token) = &drivers[i % drivers.len()];
        let http = &admin.http;
        async move {
            let reply = http
                .post(format!("{address}/api/bookings"))
                .bearer_auth(token)
                .json(&json!({"station_id": station}))
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.unwrap())
        }
    });
    let mut won = Vec::new();
    for (status, body) in join_all(attempts).await {
        match status {
            201 => won.push(body["battery_id"].as_i64().unwrap()),
            // A driver who holds two already is refused by the booking limit: also a loser here.
            409 => assert!(
                ["no_battery_available", "booking_limit_reached"]
                    .contains(&body["error"]["code"].as_str().unwrap_or("")),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    won.sort();
    won.dedup();
    assert_eq!(won.len(), 5, "each battery booked exactly once");
    let now = admin.get(&format!("/api/stations/{station}")).await;
    assert_eq!(now["available_batteries"], 0);
    assert_eq!(now["booked_batteries"], 5);
}

/// Registers and signs in a driver on `server`; returns the server's address and the token.
async fn driver(server: &ChildServer, i: usize) -> (String, String) {
    let http = reqwest::Client::new();
    let address = server.address();
    let email = format!("driver{i}@swapcast.test");
    let registered = http
        .post(format!("{address}/api/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "display_name": format!("Driver {i}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    (address, ChildAdmin::sign_in(server, &email).await.token)
}

#[actix_web::test]
async fn a_user_disabled_on_one_node_is_cut_off_on_every_node() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "admin-side");
    let b = node(&db, &nats, "driver-side");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let (_, token) = driver(&b, 0).await;
    let mut session = watch(&b, &format!("/ws/notifications/?token={token}")).await;
    assert_eq!(session.next_json().await["type"], "connection_established");
    deactivate(&admin, "driver0@swapcast.test").await;
    assert_eq!(
        session.close_code().await,
        Some(4003),
        "closed on node B as the account is disabled"
    );
}

/// A node that commits and dies before it can publish leaves a hole in the id sequence; the next
/// event over NATS reveals it, and every node reads the missing one from the log before going on.
#[actix_web::test]
async fn an_event_whose_node_died_before_publishing_is_still_delivered_in_order() {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "alive");
    let b = node(&db, &nats, "watching");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let station = admin.station("Orphan").await;
    let before = last_event_id(&b).await;
    let mut on_b = watch(&b, &format!("/ws/stations/{station}/?last_event_id={before}")).await;

    // What the dead node committed: an event in the log that no node was told about.
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    let orphan = diesel::sql_query(format!(
        "WITH bumped AS (UPDATE event_counter SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id) \
         INSERT INTO events (id, kind, station_id, user_id, payload, created_at) \
         SELECT last_id, 'station_status', {station}, NULL, \
         '{{\"type\":\"station_status\",\"station_id\":{station},\"station_name\":\"Orphan\",\"status\":\"maintenance\",\"message\":\"from a dead node\"}}', \
         {now} FROM bumped",
        now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    ))
    .execute(&mut conn)
    .unwrap();
    assert_eq!(orphan, 1);
    assert_eq!(add_batteries(&admin, station, "next", 1).await, 1);

    let expected = station_events_after(&admin, Some(station), before).await;
    assert_eq!(expected.len(), 3, "the orphan, then battery_added and inventory_update");
    assert_eq!(ids_until(&mut on_b, *expected.last().unwrap()).await, expected);
}

/// While NATS is down a node cannot hear the other's changes to users, so its signed-in
/// connections re-check themselves against the database: a user deactivated through node A is
/// still cut off on node B within the contract's second (plus slack), outage or not.
#[actix_web::test]
async fn revocation_reaches_other_nodes_while_nats_is_down() {
    let Some(mut nats) = OwnNats::start() else { return };
    let Some(db) = postgres_db() else { return };
    create_admin_cli(&db.url(), ADMIN);
    let a = node(&db, &nats.url(), "admin-side");
    let b = node(&db, &nats.url(), "driver-side");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let (_, token) = driver(&b, 0).await;
    let mut session = watch(&b, &format!("/ws/stations/?token={token}")).await;
    assert_eq!(session.next_json().await["type"], "connection_established");

    nats.stop();
    for server in [&a, &b] {
        assert_eq!(wait_backplane(server, "down").await["backplane"], "down");
    }
    let since = Instant::now();
    deactivate(&admin, "driver0@swapcast.test").await;
    assert_eq!(
        session.close_code().await,
        Some(4003),
        "closed on node B during the outage"
    );
    assert!(
        since.elapsed() < Duration::from_secs(4),
        "took {:?} with NATS down",
        since.elapsed()
    );
}

/// An admin deactivates the user with this email (on the admin's node).
async fn deactivate(admin: &ChildAdmin, email: &str) {
    let users: Value = admin.get("/api/users?limit=100").await;
    let id = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .map(|u| u["id"].as_i64().unwrap())
        .expect("the user exists");
    let disabled = admin
        .http
        .patch(format!("{}/api/users/{id}", admin.address))
        .bearer_auth(&admin.token)
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
}

async fn opened(server: &ChildServer, path: &str) -> Client {
    let mut client = watch(server, path).await;
    client.until(|m| m["action"] == "snapshot").await;
    client
}

fn signed_in_names(presence: &Value) -> Vec<String> {
    let mut names: Vec<String> = presence["signed_in"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["display_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

/// Presence across nodes (CONTRACT §4.5): a viewer on one node is counted and told to staff on
/// the other, a user on both nodes is one signed-in viewer, a killed node's viewers are gone
/// within 10 s without a false leave for a user still watching elsewhere, and a node that starts
/// again learns who watches on the others.
#[actix_web::test]
async fn presence_is_shared_and_a_killed_node_leaves_no_ghost() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "presence-a");
    let b = node(&db, &nats, "presence-b");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let station = admin.station("Watched").await;
    let presence = format!("/api/stations/{station}/presence");
    let mut staff = watch(&a, &format!("/ws?token={}", admin.token)).await;
    staff.subscribe_station(station).await;

    let (_, token) = driver(&b, 0).await;
    let _on_b = opened(&b, &format!("/ws/stations/{station}/?token={token}")).await;
    let joined = staff.until(|m| m["type"] == "viewer_joined").await;
    assert_eq!(
        (&joined["display_name"], &joined["viewers"]),
        (&json!("Driver 0"), &json!(2)),
        "{joined}"
    );
    // The same driver on node A too, and someone anonymous on B.
    let on_a = opened(&a, &format!("/ws/stations/{station}/?token={token}")).await;
    let _anonymous_b = opened(&b, &format!("/ws/stations/{station}/")).await;
    let seen = wait_for(&admin, &presence, |p| p["viewers"] == 4).await;
    assert_eq!(seen["viewers"], 4, "{seen}");
    assert_eq!(signed_in_names(&seen).len(), 2, "the driver once for two nodes: {seen}");

    let _ = std::process::Command::new("kill")
        .args(["-KILL", &b.child.id().to_string()])
        .status();
    let killed = Instant::now();
    let after = wait_for(&admin, &presence, |p| p["viewers"] == 2).await;
    let took = killed.elapsed();
    assert_eq!(after["viewers"], 2, "node B's viewers are gone: {after}");
    assert!(took < Duration::from_secs(10), "gone after {took:?}");
    // The driver still watches on A: no leave until that connection closes too.
    drop(on_a);
    let left = staff.until(|m| m["type"] == "viewer_left").await;
    assert_eq!(
        (&left["display_name"], &left["viewers"]),
        (&json!("Driver 0"), &json!(1)),
        "one leave, when the driver's last connection closed: {left}"
    );

    // Node B starts again and learns who watches on A; nothing of its earlier life is left.
    let b = node(&db, &nats, "presence-b");
    let admin_b = ChildAdmin::sign_in(&b, ADMIN).await;
    let on_restarted = wait_for(&admin_b, &presence, |p| p["viewers"] == 1).await;
    assert_eq!(on_restarted["viewers"], 1, "{on_restarted}");
    let from_a = wait_for(&admin, &presence, |p| p["viewers"] == 1).await;
    assert_eq!(signed_in_names(&from_a), signed_in_names(&on_restarted));
}

/// A NATS outage longer than presence's time-to-live is no leave and join again for a viewer on
/// another node (CONTRACT §4.5: no false pairs): each node, cut off itself, keeps the others'
/// viewers as last heard, and once NATS is back their whole presence corrects it — a viewer who
/// left meanwhile is a leave then. The outage is a NATS that is gone (connections cut) …
#[actix_web::test]
async fn a_nats_outage_makes_no_false_leave_and_join() {
    outage_makes_no_false_pair(Outage::Stopped).await;
}

/// … or one that hangs with every connection open (a blackholed network): the nodes' clients
/// think they are connected, but nobody hears anybody, this node itself included.
#[actix_web::test]
async fn a_hung_nats_makes_no_false_leave_and_join() {
    outage_makes_no_false_pair(Outage::Hung).await;
}

enum Outage {
    Stopped,
    Hung,
}

async fn outage_makes_no_false_pair(outage: Outage) {
    let Some(mut nats) = OwnNats::start() else { return };
    let Some(db) = postgres_db() else { return };
    create_admin_cli(&db.url(), ADMIN);
    let a = node(&db, &nats.url(), "staff-side");
    let b = node(&db, &nats.url(), "viewer-side");
    let admin = ChildAdmin::sign_in(&a, ADMIN).await;
    let station = admin.station("Cut off").await;
    let presence = format!("/api/stations/{station}/presence");
    let mut staff = watch(&a, &format!("/ws?token={}", admin.token)).await;
    staff.subscribe_station(station).await;
    let (_, token) = driver(&b, 0).await;
    let on_b = opened(&b, &format!("/ws/stations/{station}/?token={token}")).await;
    let joined = staff.until(|m| m["type"] == "viewer_joined").await;
    assert_eq!(joined["viewers"], 2, "{joined}");
    let notice = |m: &Value| {
        let kind = m["type"].as_str().unwrap_or_default();
        kind.starts_with("viewer_") || kind == "station_announcement"
    };

    match outage {
        Outage::Stopped => {
            nats.stop();
            for server in [&a, &b] {
                assert_eq!(wait_backplane(server, "down").await["backplane"], "down");
            }
        }
        Outage::Hung => nats.signal("STOP"),
    }
    // Longer than the time-to-live and its check: a node that expired its peers would have.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let reply = admin
        .post(
            &format!("/api/stations/{station}/announcements"),
            json!({"message": "still here"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let first = staff.until(notice).await;
    assert_eq!(first["type"], "station_announcement", "told before it: {first}");
    assert_eq!(admin.get(&presence).await["viewers"], 2, "kept as last heard");

    match outage {
        Outage::Stopped => {
            nats.resume().unwrap();
            for server in [&a, &b] {
                assert_eq!(wait_backplane(server, "ok").await["backplane"], "ok");
            }
        }
        Outage::Hung => nats.signal("CONT"),
    }
    drop(on_b);
    let left = staff.until(notice).await;
    assert_eq!(
        (&left["type"], &left["display_name"], &left["viewers"]),
        (&json!("viewer_left"), &json!("Driver 0"), &json!(1)),
        "one leave, when the viewer left: {left}"
    );
    let after = wait_for(&admin, &presence, |p| p["viewers"] == 1).await;
    assert_eq!(after["viewers"], 1, "{after}");
    assert!(!signed_in_names(&after).contains(&"Driver 0".to_owned()), "{after}");
}

/// SIGTERM on a node of a cluster: it leaves its NATS subscriptions while its runtime still runs,
/// and exits 0 without a panic (a subscription dropped with the runtime used to panic on its way
/// out, once per subscription).
#[actix_web::test]
async fn a_node_of_a_cluster_stops_cleanly_on_sigterm() {
    let Some((db, nats)) = cluster_db() else { return };
    let mut server = node(&db, &nats, "term");
    let ready = wait_backplane(&server, "ok").await;
    assert_eq!(ready["backplane"], "ok", "{ready}");
    server.signal("TERM");
    assert_eq!(server.exit_code().await, Some(0), "exit after SIGTERM");
    let logs = server.logs.lock().unwrap().clone();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "the node panicked on its way out:\n{}",
        logs.join("\n")
    );
    drop(server);
}

/// A station's name changed on one node (no event) opens changed on the other, which had the
/// station kept from an opening before: the changing node's word over NATS, or its poll of the
/// log, makes it forget.
#[actix_web::test]
async fn a_station_renamed_on_one_node_opens_renamed_on_the_other() {
    let Some((db, nats)) = cluster_db() else { return };
    let a = node(&db, &nats, "node-a");
    let b = node(&db, &nats, "node-b");
    for server in [&a, &b] {
        assert_eq!(wait_backplane(server, "ok").await["backplane"], "ok");
    }
    let admin_a = ChildAdmin::sign_in(&a, ADMIN).await;
    let admin_b = ChildAdmin::sign_in(&b, ADMIN).await;
    let station = admin_a.station("Before").await;
    let name_on_a = || async {
        let mut client = watch(&a, &format!("/ws/stations/{station}/")).await;
        assert_eq!(client.next_json().await["type"], "connection_established");
        let snapshot = client.next_json().await;
        snapshot["station_name"].as_str().unwrap().to_owned()
    };
    assert_eq!(name_on_a().await, "Before");
    assert_eq!(name_on_a().await, "Before");
    let reads = metric(&a, "swapcast_station_snapshot_reads_total").await;
    assert_eq!(reads, 1.0, "the second opening had the station as kept");

    let renamed = admin_b
        .http
        .patch(format!("{}/api/stations/{station}", admin_b.address))
        .bearer_auth(&admin_b.token)
        .json(&json!({"name": "After"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let deadline = Instant::now() + CONVERGE;
    loop {
        let name = name_on_a().await;
        if name == "After" {
            break;
        }
        assert!(Instant::now() < deadline, "node A still opens the station as {name}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}
