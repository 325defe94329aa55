//! A network of Gogoro's size on the live feeds (CONTRACT §4.4 v2): 12,000 stations loaded with
//! `swapcast import`, then the all-stations snapshot and a 12,000-event replay to ordinary, slow
//! and many readers at once, and a reader that stops. The one test here that loads the big network.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{create_admin_cli, metric, ChildAdmin, ChildServer};
use crate::wsclient::{Client, Socket};

const STATIONS: usize = 12_000;
const BATTERIES: usize = 36_000;

/// A client on its own TCP socket, with a receive buffer of `buffer` bytes if given.
async fn connect(port: u16, path: &str, buffer: Option<u32>) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (socket, _): (Socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    Client { socket }
}

/// Reads the greeting and a whole snapshot (pausing every `pause_every` messages if asked, as a
/// busy browser tab would), then the live event after it; returns the stations seen and that event.
async fn read_snapshot(
    mut client: Client,
    tagged: bool,
    pause_every: Option<usize>,
    started: &AtomicUsize,
) -> (HashSet<i64>, Value) {
    if tagged {
        client.send_text(r#"{"type":"subscribe","channel":"stations"}"#).await;
    }
    let first = client.next_json().await;
    assert_eq!(first["type"], "connection_established", "{first}");
    read_rows(client, tagged, pause_every, started).await
}

/// The snapshot's rows after the greeting (or `subscribed`), then the live event after them.
async fn read_rows(
    mut client: Client,
    tagged: bool,
    pause_every: Option<usize>,
    started: &AtomicUsize,
) -> (HashSet<i64>, Value) {
    let mut seen = HashSet::new();
    let mut read = 0;
    loop {
        let message = client.next_json().await;
        read += 1;
        if pause_every.is_some_and(|n| read % n == 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match (message["type"].as_str(), message["action"].as_str()) {
            (Some("subscribed"), _) => continue,
            (Some("inventory_update"), Some("snapshot")) => {
                if tagged {
                    assert_eq!(message["channel"], "stations");
                }
                assert!(seen.insert(message["station_id"].as_i64().unwrap()), "a station twice");
                if seen.len() == 1 {
                    started.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => {
                assert_eq!(
                    seen.len(),
                    STATIONS,
                    "the live event came before the whole snapshot: {message}"
                );
                return (seen, message);
            }
        }
    }
}

/// On `/ws`: subscribes to every station, leaves in the middle of the snapshot and subscribes again
/// at once. The first subscription's catch-up must stop at the `unsubscribed`, and the second one
/// gets one whole snapshot of its own, then the live event — nothing twice, nothing late.
async fn resubscribe_mid_snapshot(mut client: Client, started: &AtomicUsize) -> (HashSet<i64>, Value) {
    assert_eq!(client.next_json().await["type"], "connection_established");
    client.send_text(r#"{"type":"subscribe","channel":"stations"}"#).await;
    assert_eq!(client.next_json().await["type"], "subscribed");
    for _ in 0..300 {
        assert_eq!(client.next_json().await["action"], "snapshot");
    }
    client.send_text(r#"{"type":"unsubscribe","channel":"stations"}"#).await;
    client.send_text(r#"{"type":"subscribe","channel":"stations"}"#).await;
    loop {
        let message = client.next_json().await;
        match message["type"].as_str() {
            Some("inventory_update") => assert_eq!(message["action"], "snapshot"),
            Some("unsubscribed") => break,
            _ => panic!("before the unsubscribe's answer: {message}"),
        }
    }
    let again = client.next_json().await;
    assert_eq!(
        again["type"], "subscribed",
        "after unsubscribed, nothing of the old snapshot: {again}"
    );
    read_rows(client, true, None, started).await
}

#[actix_web::test]
async fn twelve_thousand_stations_reach_every_reader_at_its_own_pace() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gogoro.db").display());
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .args(["generate-network", "--stations", &STATIONS.to_string()])
        .args(["--batteries", &BATTERIES.to_string(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let imported = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .args(["import", "--database-url", &url, "--stations"])
        .arg(dir.path().join("stations.csv"))
        .arg("--batteries")
        .arg(dir.path().join("batteries.csv"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&imported.stdout);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert!(report.contains(&format!("{STATIONS} stations")), "{report}");
    assert!(report.contains(&format!("{BATTERIES} batteries")), "{report}");
    create_admin_cli(&url, "big@swapcast.test");
    // A reader that stops is cut off after three heartbeats without progress (15 s here); the
    // others read without stopping, so none comes near it. The stopped one is given a minute to
    // read its Close once cut off.
    let server = ChildServer::start_with(&url, &[("SWAPCAST_HEARTBEAT", "5"), ("SWAPCAST_CLOSE_LINGER", "60")]);
    let admin = ChildAdmin::sign_in(&server, "big@swapcast.test").await;
    let network = admin.get("/api/network").await;
    assert_eq!(network["stations"], STATIONS);
    assert_eq!(network["available_batteries"], BATTERIES);

    // The stopped reader: a 4 KiB receive buffer, and it reads nothing after the greeting.
    let mut stopped = connect(server.port, "/ws/stations/", Some(4096)).await;
    assert_eq!(stopped.next_json().await["type"], "connection_established");

    // At once: plain readers, `/ws` readers, slow readers with a 16 KiB buffer, and replays of
    // the import's 12,000 events from the start of the log.
    const READERS: usize = 25;
    let started = AtomicUsize::new(0);
    let readers = (0..READERS).map(|i| {
        let (port, started) = (server.port, &started);
        async move {
            match i % 4 {
                _ if i == READERS - 1 => {
                    resubscribe_mid_snapshot(connect(port, "/ws", Some(16 * 1024)).await, started).await
                }
                0 => read_snapshot(connect(port, "/ws/stations/", None).await, false, None, started).await,
                1 => read_snapshot(connect(port, "/ws", None).await, true, None, started).await,
                2 => {
                    let client = connect(port, "/ws/stations/", Some(16 * 1024)).await;
                    read_snapshot(client, false, Some(500), started).await
                }
                _ => {
                    let mut client = connect(port, "/ws/stations/?last_event_id=0", Some(16 * 1024)).await;
                    assert_eq!(client.next_json().await["type"], "connection_established");
                    let mut ids = Vec::with_capacity(STATIONS);
                    let mut stations = HashSet::new();
                    loop {
                        let message = client.next_json().await;
                        let id = message["event_id"].as_i64().expect("replayed events have ids");
                        if message["type"] == "battery_added" {
                            assert_eq!(ids.len(), STATIONS, "the live event came before the whole replay");
                            assert!(
                                ids.windows(2).all(|w| w[1] == w[0] + 1),
                                "the replay skipped or reordered"
                            );
                            return (stations, message);
                        }
                        assert_eq!(message["type"], "inventory_update", "{message}");
                        stations.insert(message["station_id"].as_i64().unwrap());
                        ids.push(id);
                        if ids.len() == 1 {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    });
    let live = async {
        // Once every reader has begun its catch-up (so it is registered, and its snapshot's
        // position is fixed), one live change: each must see it right after its catch-up,
        // whatever its pace.
        let give_up = std::time::Instant::now() + Duration::from_secs(300);
        while started.load(Ordering::SeqCst) < READERS {
            assert!(
                std::time::Instant::now() < give_up,
                "readers never began their catch-up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let station = admin.get("/api/stations?limit=1&q=GoStation%2000042").await["items"][0]["id"]
            .as_i64()
            .unwrap();
        let reply = admin
            .post(
                &format!("/api/stations/{station}/batteries"),
                json!({"serial": "LIVE-1", "model": "M"}),
            )
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        station
    };
    let (results, station) = futures_util::future::join(join_all(readers), live).await;
    for (stations, event) in &results {
        assert_eq!(stations.len(), STATIONS);
        assert_eq!(event["type"], "battery_added", "{event}");
        assert_eq!(event["station_id"], station);
    }
    // Twelve snapshot readers, one read of the stations: they were all registered before the
    // live change, and the snapshot is shared by every connection at its position.
    assert_eq!(metric(&server, "swapcast_snapshot_reads_total").await, 1.0);

    // The stopped reader is cut off with 1013 (it never took its snapshot). The wait is bounded
    // only so that a server that never cuts it off fails the test instead of hanging it.
    let give_up = std::time::Instant::now() + Duration::from_secs(300);
    while metric(&server, "swapcast_slow_consumer_closes_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the stopped reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut before_close = 0;
    let code = loop {
        let message = stopped.next().await;
        if let Some(code) = message.get("close") {
            break code.as_u64();
        }
        before_close += 1;
    };
    assert_eq!(code, Some(1013));
    assert!(before_close < STATIONS, "it got everything, so it was not stopped");
}
