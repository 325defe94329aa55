//! A real WebSocket client over loopback (tokio-tungstenite), as a dashboard or a phone would be.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::TestApp;

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for one message before it calls the server silent.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Client {
    pub socket: Socket,
}

pub fn ws_url(app: &TestApp, path: &str) -> String {
    format!("{}{}", app.address.replacen("http://", "ws://", 1), path)
}

impl Client {
    pub async fn connect(app: &TestApp, path: &str) -> Client {
        Self::connect_with(app, path, &[]).await
    }

    /// Connects with extra request headers (`Authorization`, `Cookie`, `Origin`, …).
    pub async fn connect_with(app: &TestApp, path: &str, headers: &[(&'static str, String)]) -> Client {
        let mut request = ws_url(app, path).into_client_request().unwrap();
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket upgrade");
        Client { socket }
    }

    /// Connects as `token` (in the query string) and reads `connection_established`.
    pub async fn open(app: &TestApp, path: &str, token: Option<&str>) -> (Client, Value) {
        let path = match token {
            Some(token) => format!("{path}{}token={token}", if path.contains('?') { '&' } else { '?' }),
            None => path.to_owned(),
        };
        let mut client = Self::connect(app, &path).await;
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "connection_established", "{hello}");
        (client, hello)
    }

    /// The next server message, or the close frame as `{"close": code}`.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message in time")
                .expect("the stream is open")
                .expect("a valid message");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON from the server"),
                Message::Close(frame) => {
                    return serde_json::json!({"close": frame.map(|f| u16::from(f.code))});
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(_) => panic!("binary message from the server"),
            }
        }
    }

    /// Reads until a message satisfies `pick`, skipping others (snapshots, automatic
    /// subscriptions, other channels' events); at most 50.
    pub async fn until(&mut self, pick: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..50 {
            let message = self.next_json().await;
            if pick(&message) {
                return message;
            }
        }
        panic!("no matching message in 50");
    }

    /// The next message, which must be JSON (not a close).
    pub async fn next_json(&mut self) -> Value {
        let value = self.next().await;
        assert!(value.get("close").is_none(), "closed: {value}");
        value
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let value = self.next().await;
            if let Some(code) = value.get("close") {
                return code.as_u64().map(|c| c as u16);
            }
        }
    }

    /// The next `n` messages whose `type` is not in `skip`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_json().await);
        }
        out
    }

    /// Subscribes a `/ws` connection to `station:{id}` and waits for its snapshot.
    pub async fn subscribe_station(&mut self, station: i64) {
        let channel = format!("station:{station}");
        self.send_text(&serde_json::json!({"type": "subscribe", "channel": channel}).to_string())
            .await;
        self.until(|m| m["action"] == "snapshot" && m["channel"] == channel.as_str())
            .await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    pub async fn send(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }
}
