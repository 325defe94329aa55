//! The reference every result is divided by: the leanest broadcast server one would write with
//! tokio and tungstenite — no database, no auth, no event log, no ordering or delivery guarantees,
//! a lagging subscriber simply skips. It speaks just enough of swapcast's protocol for the
//! workloads: a greeting and a snapshot on connect, and two messages per trigger (the
//! `battery_added` and `inventory_update` of a real addition, with the same fields as swapcast's,
//! so a client does the same work per message on either side), broadcast to every subscriber.
//!
//! Triggers come over a WebSocket on `/publish` (one text message per addition, answered with
//! `ok` once broadcast) rather than REST: the baseline's trigger should cost as little as
//! possible, so the ratio shows what swapcast's guarantees cost.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a slow subscriber may fall behind before it skips.
const BACKLOG: usize = 4096;

/// Serves until killed; prints `port=N` once listening (as swapcast's own log line does).
pub async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("baseline listening port={}", listener.local_addr()?.port());
    let (events, _) = broadcast::channel::<Utf8Bytes>(BACKLOG);
    let events = Arc::new(events);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, events.clone()));
    }
}

async fn connection(stream: TcpStream, events: Arc<broadcast::Sender<Utf8Bytes>>) {
    let mut path = String::new();
    // The callback's error type is tungstenite's; this one never fails.
    #[allow(clippy::result_large_err)]
    let remember = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    // Small buffers, as a lean server would configure them (tungstenite's defaults are 128 KiB).
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, remember, Some(config)).await else {
        return;
    };
    if path.starts_with("/publish") {
        let mut k = 0u64;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() {
                k += 1;
                let (event, at) = (2 * k, crate::clock::iso(crate::clock::now_ms()));
                let added = format!(
                    r#"{{"type":"battery_added","station_id":1,"station_name":"Bench Station","battery_id":{k},"available_batteries":{k},"total_batteries":{k},"event_id":{},"timestamp":"{at}"}}"#,
                    event - 1
                );
                let inventory = format!(
                    r#"{{"type":"inventory_update","station_id":1,"station_name":"Bench Station","available_batteries":{k},"booked_batteries":0,"total_batteries":{k},"action":"add","event_id":{event},"timestamp":"{at}"}}"#
                );
                let _ = events.send(added.into());
                let _ = events.send(inventory.into());
                // The answer a REST call would give, so a trigger can wait for it as for swapcast's.
                if ws.send(Message::text("ok")).await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    let mut feed = events.subscribe();
    let greeting = r#"{"type":"connection_established","message":"Connected to station_1","station_id":1}"#;
    let snapshot = r#"{"type":"inventory_update","station_id":1,"action":"snapshot","total_batteries":0}"#;
    if ws.send(Message::text(greeting)).await.is_err() || ws.send(Message::text(snapshot)).await.is_err() {
        return;
    }
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            event = feed.recv() => match event {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = source.next() => match incoming {
                // tungstenite queues the reply to a Close and writes it on the next read, which
                // then ends the stream: reading on completes the handshake as a client expects.
                Some(Ok(Message::Close(_))) => {
                    while let Some(Ok(_)) = source.next().await {}
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
