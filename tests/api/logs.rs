//! Logs: JSON on request, a request id on every request, and never a token or a password.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{create_admin_cli, fresh_db, ChildAdmin, ChildServer, JWT_SECRET, PASSWORD};
use crate::wsclient::Client;

#[actix_web::test]
async fn logs_carry_request_ids_and_no_secrets() {
    let db = fresh_db();
    let url = db.url();
    create_admin_cli(&url, "logs@swapcast.test");
    let server = ChildServer::start_with(&url, &[("RUST_LOG", "debug"), ("SWAPCAST_LOG_FORMAT", "json")]);
    let admin = ChildAdmin::sign_in(&server, "logs@swapcast.test").await;
    let (http, base) = (admin.http.clone(), admin.address.clone());

    let driver_password = "driver-secret-password-42";
    let register = json!({"email": "driver@swapcast.test", "password": driver_password, "display_name": "D"});
    let registered = http
        .post(format!("{base}/api/auth/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    let request_id = registered
        .headers()
        .get("x-request-id")
        .expect("a request id")
        .to_str()
        .unwrap()
        .to_owned();
    let login = json!({"email": "driver@swapcast.test", "password": driver_password});
    let session: Value = http
        .post(format!("{base}/api/auth/login?cookie=true"))
        .json(&login)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (access, refresh) = (
        session["access_token"].as_str().unwrap().to_owned(),
        session["refresh_token"].as_str().unwrap().to_owned(),
    );
    let rotated: Value = http
        .post(format!("{base}/api/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (access2, refresh2) = (
        rotated["access_token"].as_str().unwrap().to_owned(),
        rotated["refresh_token"].as_str().unwrap().to_owned(),
    );
    // Tokens by query, header and cookie; a wrong password; a bad token.
    http.get(format!("{base}/api/me?token={access2}")).send().await.unwrap();
    http.get(format!("{base}/api/me"))
        .bearer_auth(&access2)
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/api/me"))
        .header("Cookie", format!("swapcast_token={access2}"))
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/api/auth/login"))
        .json(&json!({"email": "driver@swapcast.test", "password": "wrong-password-xyz"}))
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/api/me"))
        .bearer_auth(format!("{access2}x"))
        .send()
        .await
        .unwrap();
    // WebSockets: a token at connect and one in band.
    let (socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/ws/notifications?token={access2}",
        server.port
    ))
    .await
    .unwrap();
    let mut seed = Client { socket };
    seed.next_json().await;
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.port))
        .await
        .unwrap();
    let mut multiplexed = Client { socket };
    multiplexed.next_json().await;
    multiplexed
        .socket
        .send(Message::text(
            json!({"type": "authenticate", "token": access2}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(multiplexed.next_json().await["type"], "authenticated");
    http.post(format!("{base}/api/auth/logout"))
        .json(&json!({"refresh_token": refresh2}))
        .send()
        .await
        .unwrap();
    drop((seed, multiplexed));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let logs = server.logs.lock().unwrap().clone();
    assert!(logs.len() > 10, "too few log lines: {logs:?}");
    for line in &logs {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    let all = logs.join("\n");
    assert!(all.contains(&request_id), "the request id of a response is in the logs");
    assert!(all.contains("websocket opened"));
    let secrets = [
        PASSWORD,
        driver_password,
        "wrong-password-xyz",
        &access,
        &refresh,
        &access2,
        &refresh2,
        &admin.token,
        JWT_SECRET,
    ];
    for secret in secrets {
        assert!(!all.contains(secret), "a secret reached the logs: {}…", &secret[..6]);
    }
}
