//! `GET /metrics`: Prometheus text that parses, with counters that move.

use crate::helpers::{spawn_app, TestApp};
use crate::wsclient::Client;

/// Parses the Prometheus text format: every sample line is `name{labels} value`.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let name_ok = series
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            assert!(name_ok, "bad series: {line}");
            if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
                assert!(labels.ends_with('}'), "bad labels: {line}");
            }
            (
                series.to_owned(),
                value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}")),
            )
        })
        .collect()
}

async fn scrape(app: &TestApp) -> Vec<(String, f64)> {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    samples(&response.text().await.unwrap())
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map_or(0.0, |(_, v)| *v)
}

#[actix_web::test]
async fn metrics_parse_and_move() {
    let app = spawn_app().await;
    let station = app.station("S", None).await;
    let before = scrape(&app).await;
    let (mut client, hello) = Client::open(&app, &format!("/ws/stations/{station}"), None).await;
    client.next_json().await;
    app.battery(station, "M-1").await;
    app.battery(station, "M-2").await;
    client.events(4).await;
    let last = hello["last_event_id"].as_i64().unwrap();
    let (mut resumed, _) = Client::open(&app, &format!("/ws/stations/{station}?last_event_id={last}"), None).await;
    resumed.events(4).await;

    let after = scrape(&app).await;
    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert!(grew("swapcast_events_published_total") >= 4.0);
    assert!(grew("swapcast_messages_delivered_total") >= 4.0);
    assert!(grew("swapcast_publish_to_deliver_seconds_count") >= 4.0);
    assert!(grew("swapcast_resume_replays_total") >= 1.0);
    assert_eq!(value(&after, r#"swapcast_ws_connections{endpoint="station"}"#), 2.0);
    assert!(value(&after, "swapcast_subscriptions") >= 2.0);
    let route = r#"swapcast_http_requests_total{route="/api/stations/{id}/batteries",status="201"}"#;
    assert!(grew(route) >= 2.0, "{route}");
    assert!(value(&after, "swapcast_db_pool_connections") >= 1.0);
    drop((client, resumed));
}

/// Connections that sign in in band (as themselves or as someone else) and hang up at once leave
/// nothing registered behind: the subscription gauges come back to zero.
#[actix_web::test]
async fn connections_that_hang_up_mid_sign_in_leave_no_subscription() {
    let app = spawn_app().await;
    let (a, b) = (app.user("user").await, app.user("user").await);
    for round in 0..40 {
        let (mut client, _) = Client::open(&app, "/ws", Some(&a.token)).await;
        let token = if round % 2 == 0 { &a.token } else { &b.token };
        client
            .send_text(&serde_json::json!({"type": "authenticate", "token": token}).to_string())
            .await;
        if round % 4 < 2 {
            // Gone without a word, some after a moment.
            tokio::time::sleep(std::time::Duration::from_millis(round % 7)).await;
        } else {
            let _ = client.socket.close(None).await;
        }
    }
    let mut waited = 0;
    loop {
        let now = scrape(&app).await;
        let left = (
            value(&now, "swapcast_notification_subscriptions"),
            value(&now, "swapcast_subscriptions"),
        );
        if left == (0.0, 0.0) {
            break;
        }
        waited += 1;
        assert!(waited < 500, "left registered with every connection gone: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
