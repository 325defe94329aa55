//! Connection hygiene (CONTRACT §4.4) and RFC 6455 behaviour: size limits, rate limits, the
//! bounded outbound queue, fragments, the close handshake, invalid UTF-8, and shutdown.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{create_admin_cli, spawn_app_with, ChildAdmin, ChildServer, TestApp};
use crate::wsclient::Client;

async fn station_client(app: &TestApp, station: i64) -> Client {
    let (mut client, _) = Client::open(app, &format!("/ws/stations/{station}"), None).await;
    assert_eq!(client.next_json().await["action"], "snapshot");
    client
}

#[actix_web::test]
async fn oversize_frames_close_with_1009() {
    let app = spawn_app_with(|s| s.max_frame = 1024).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    client
        .send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000)))
        .await;
    assert_eq!(client.close_code().await, Some(1009));

    // The same limit holds for a message split into small fragments.
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Frame(Frame::message(
            vec![b'x'; 600],
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    client
        .send(Message::Frame(Frame::message(
            vec![b'x'; 600],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(client.close_code().await, Some(1009));
}

#[actix_web::test]
async fn fragmented_text_is_reassembled() {
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Frame(Frame::message(
            br#"{"type":"pi"#.to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    client
        .send(Message::Frame(Frame::message(
            br#"ng","timestamp":"#.to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    client
        .send(Message::Frame(Frame::message(
            br#""t1"}"#.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(client.next_json().await, json!({"type": "pong", "timestamp": "t1"}));
}

#[actix_web::test]
async fn invalid_utf8_closes_with_1007() {
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Frame(Frame::message(
            vec![0x7b, 0xff, 0xfe, 0x7d],
            OpCode::Data(Data::Text),
            true,
        )))
        .await;
    assert_eq!(client.close_code().await, Some(1007));
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Frame(Frame::message(
            vec![0x7b, 0xc3],
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    client
        .send(Message::Frame(Frame::message(
            vec![0x28, 0x7d],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(client.close_code().await, Some(1007));
}

#[actix_web::test]
async fn a_continuation_without_a_start_is_a_protocol_error() {
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Frame(Frame::message(
            b"orphan".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(client.close_code().await, Some(1002));
}

#[actix_web::test]
async fn a_client_close_is_answered_and_nothing_follows() {
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(client.close_code().await, Some(1000));
    // Events after the close are not sent.
    app.battery(station, "AFTER-1").await;
    let rest = tokio::time::timeout(Duration::from_secs(2), client.socket.next())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(rest, Some(Ok(Message::Text(_)))),
        "sent after close: {rest:?}"
    );
}

#[actix_web::test]
async fn floods_are_limited_then_closed_with_1008() {
    let app = spawn_app_with(|s| s.rate_limit = 5).await;
    let station = app.station("S", None).await;
    let client = station_client(&app, station).await;
    let (mut tx, mut rx) = client.socket.split();
    let flood = async move {
        // 100 messages per second (20× the limit) for at most 8 seconds.
        for _ in 0..800 {
            if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let watch = async move {
        let (mut limited, mut close) = (false, None);
        let started = Instant::now();
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
            match message {
                Message::Text(text) if text.contains("rate_limited") => limited = true,
                Message::Close(frame) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        (limited, close, started.elapsed())
    };
    let (_, (limited, close, after)) = futures_util::future::join(flood, watch).await;
    assert!(limited, "no rate_limited error before the close");
    assert_eq!(close, Some(1008));
    assert!(after >= Duration::from_secs(3), "closed after only {after:?}");
}

/// The resident memory of a process, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A reader that stops reading is closed with 1013 once its queue is full; the server's memory
/// stays bounded, a healthy reader beside it receives every event, and the stuck one resumes
/// without losing any. The server runs as its own process so its memory can be read.
#[actix_web::test]
async fn a_stuck_reader_is_closed_with_1013_and_nobody_else_waits() {
    const ADDITIONS: usize = 2500; // two events each: 5,000 events
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stuck.db").display());
    create_admin_cli(&url, "stuck@swapcast.test");
    // The server waits a minute (not two seconds) for the cut-off client to read its Close and
    // hang up: the client below starts reading the moment it is cut off, well within that, so
    // nothing here races the linger.
    let server = ChildServer::start_with(&url, &[("SWAPCAST_CLOSE_LINGER", "60")]);
    let admin = ChildAdmin::sign_in(&server, "stuck@swapcast.test").await;
    let station = admin.station("S").await;
    let feed = format!("ws://127.0.0.1:{}/ws/stations/{station}", server.port);

    // The stuck client: a tiny receive buffer, and it reads nothing after its snapshot.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
    let (stuck, _) = tokio_tungstenite::client_async(feed.clone(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut stuck = Client { socket: stuck };
    stuck.events(2).await;
    let (healthy, _) = tokio_tungstenite::connect_async(feed.clone()).await.unwrap();
    let mut healthy = Client { socket: healthy };
    healthy.events(2).await;

    let rss_before = rss_kib(server.child.id());
    let healthy_reader = async move {
        let mut ids = Vec::with_capacity(ADDITIONS * 2);
        while ids.len() < ADDITIONS * 2 {
            let message = healthy.next_json().await;
            ids.push(message["event_id"].as_i64().expect("an event"));
        }
        ids
    };
    let writers = async {
        let workers = (0..8).map(|w| {
            let admin = &admin;
            async move {
                for i in (w..ADDITIONS).step_by(8) {
                    let body = json!({"serial": format!("FLOOD-{i}"), "model": "M"});
                    let reply = admin
                        .post(&format!("/api/stations/{station}/batteries"), body)
                        .await
                        .unwrap();
                    assert_eq!(reply.status(), 201);
                }
            }
        });
        join_all(workers).await;
    };
    // The stuck client starts reading once the server has cut it off (its metric says so): what
    // the kernel still holds for it, then the Close — all within the minute's linger.
    let stuck_reader = async {
        let metrics = format!("{}/metrics", server.address());
        loop {
            let text = admin.http.get(&metrics).send().await.unwrap().text().await.unwrap();
            let closes = text
                .lines()
                .find(|l| l.starts_with("swapcast_slow_consumer_closes_total"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0);
            if closes >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = Vec::new();
        let code = loop {
            let message = stuck.next().await;
            if let Some(code) = message.get("close") {
                break code.as_u64();
            }
            got.push(message["event_id"].as_i64().expect("an event"));
        };
        (got, code)
    };
    let (ids, (), (got, code)) = futures_util::future::join3(healthy_reader, writers, stuck_reader).await;
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "the healthy reader missed or reordered events"
    );
    let grown = rss_kib(server.child.id()).saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "the server grew by {grown} KiB while a reader was stuck"
    );
    assert_eq!(code, Some(1013));
    assert!(got.len() < ADDITIONS * 2, "the stuck reader was never cut off");
    let mut got = got;

    // It resumes from the last event it has and receives everything it missed, once.
    let last = *got.last().expect("some events before the cut");
    let (resumed, _) = tokio_tungstenite::connect_async(format!("{feed}?last_event_id={last}"))
        .await
        .unwrap();
    let mut resumed = Client { socket: resumed };
    assert_eq!(resumed.next_json().await["type"], "connection_established");
    while got.len() < ADDITIONS * 2 {
        got.push(resumed.next_json().await["event_id"].as_i64().expect("an event"));
    }
    assert_eq!(
        got, ids,
        "after resuming, the stuck reader has every event once, in order"
    );
}

/// SIGTERM: every client gets 1001 and the process exits 0.
#[actix_web::test]
async fn sigterm_closes_every_connection_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(&format!("sqlite://{}", dir.path().join("term.db").display()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let url = format!("ws://127.0.0.1:{}/ws/stations/", server.port);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = socket.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains("connection_established"));
        clients.push(Client { socket });
    }
    server.signal("TERM");
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001));
    }
    assert_eq!(server.exit_code().await, Some(0), "exit after SIGTERM");
}

/// A message of exactly the limit (64 KiB), sent in 1,300-byte fragments, is accepted whole.
#[actix_web::test]
async fn a_message_at_the_limit_in_small_fragments_is_accepted() {
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut client = station_client(&app, station).await;
    let head = r#"{"type":"ping","timestamp":""#;
    let tail = r#""}"#;
    let pad = "t".repeat(64 * 1024 - head.len() - tail.len());
    let message = format!("{head}{pad}{tail}").into_bytes();
    assert_eq!(message.len(), 64 * 1024);
    let chunks: Vec<&[u8]> = message.chunks(1300).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        client
            .send(Message::Frame(Frame::message(
                chunk.to_vec(),
                opcode,
                i + 1 == chunks.len(),
            )))
            .await;
    }
    let pong = client.next_json().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["timestamp"].as_str().map(str::len), Some(pad.len()));
}

/// The server pings every heartbeat; a peer that answers stays, a silent one is dropped after
/// three heartbeats.
#[actix_web::test]
async fn silent_peers_are_dropped_and_live_ones_kept() {
    let app = spawn_app_with(|s| s.heartbeat = 1).await;
    let station = app.station("S", None).await;
    let mut silent = station_client(&app, station).await;
    let mut live = station_client(&app, station).await;
    // The live client reads (and so answers pings) for five heartbeats; the silent one does not.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(500), live.socket.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 3, "only {pings} pings in 5 s");
    // The silent client finds its connection gone: pings were queued, then the stream ended.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.socket.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break true,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the silent peer was not dropped");
    app.battery(station, "STILL-LIVE").await;
    assert_eq!(live.next_json().await["type"], "battery_added");
}

/// Sends `request` over a fresh connection and reads until the server closes it (bounded).
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection after answering")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upgrade request the app does not turn into a WebSocket gets the app's HTTP answer, and the
/// connection is closed after it.
#[actix_web::test]
async fn upgrade_requests_that_are_not_websocket_handshakes_get_an_http_answer() {
    let app = spawn_app_with(|_| {}).await;
    // A WebSocket endpoint without the handshake's key and version.
    let answer = raw_exchange(
        &app,
        b"GET /ws/stations/ HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A well-formed handshake on a route that is not a WebSocket: the route's own answer.
    let answer = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(answer.contains("ok"), "{answer}");
    // The server goes on serving.
    let reply = app.get("/healthz", None).await;
    assert_eq!(reply.status, 200);
}

/// A client may send its first frame in the same packet as the handshake: the session reads it.
#[actix_web::test]
async fn a_frame_sent_with_the_handshake_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|_| {}).await;
    let station = app.station("S", None).await;
    let mut bytes = format!(
        "GET /ws/stations/{station}/ HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    // A masked text frame, as clients must send.
    let payload = br#"{"type":"ping","timestamp":"first"}"#;
    let mask = [7u8, 1, 9, 3];
    bytes.extend([0x81, 0x80 | payload.len() as u8]);
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(r#""type":"pong""#) && Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(read > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..read]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 101"), "{seen}");
    assert!(seen.contains(r#"{"type":"pong","timestamp":"first"}"#), "{seen}");
}
